//! What password hash sync needs to know of an Active Directory forest before it replicates
//! over MS-DRSR (crate `drsr`, joined to this by the binary): the account's `sAMAccountName`
//! and NetBIOS domain (NTLM names accounts so), the domain naming contexts, and whether the
//! account holds "Replicating Directory Changes" and "… All" on each domain root — read from the
//! root's DACL (readable by authenticated users) against the account's SID and `tokenGroups`,
//! so a missing right is named before the DC refuses with a bare "access denied".

use connector_api::ConnectorError;
use ldap3::Scope;
use ldap3::controls::RawControl;

use crate::config::{Bind, Flavour, LdapConfig};
use crate::session::{Session, raw_values};

/// A control access right by name and GUID (text and the 16 bytes of its NDR form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlRight {
    /// Its display name and GUID, for messages.
    pub name: &'static str,
    /// The GUID as stored in an object ACE.
    pub guid: [u8; 16],
}

/// "Replicating Directory Changes" (1131f6aa-9c07-11d1-f79f-00c04fc2dcd2).
pub const GET_CHANGES: ControlRight = ControlRight {
    name: "Replicating Directory Changes (DS-Replication-Get-Changes, 1131f6aa-9c07-11d1-f79f-00c04fc2dcd2)",
    guid: [0xaa, 0xf6, 0x31, 0x11, 0x07, 0x9c, 0xd1, 0x11, 0xf7, 0x9f, 0x00, 0xc0, 0x4f, 0xc2, 0xdc, 0xd2],
};
/// "Replicating Directory Changes All" (1131f6ad-9c07-11d1-f79f-00c04fc2dcd2).
pub const GET_CHANGES_ALL: ControlRight = ControlRight {
    name: "Replicating Directory Changes All (DS-Replication-Get-Changes-All, 1131f6ad-9c07-11d1-f79f-00c04fc2dcd2)",
    guid: [0xad, 0xf6, 0x31, 0x11, 0x07, 0x9c, 0xd1, 0x11, 0xf7, 0x9f, 0x00, 0xc0, 0x4f, 0xc2, 0xdc, 0xd2],
};

/// The account and forest as replication sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationAccount {
    /// The account's sAMAccountName.
    pub sam_account_name: String,
    /// Its domain's NetBIOS name.
    pub netbios_domain: String,
    /// The domain naming contexts to replicate (the connector's, or the default one).
    pub naming_contexts: Vec<String>,
    /// (naming context, right) pairs the account lacks.
    pub missing: Vec<(String, ControlRight)>,
}

/// The LDAP control asking for the DACL only of `nTSecurityDescriptor` (SD_FLAGS = 4).
fn dacl_only() -> RawControl {
    RawControl { ctype: "1.2.840.113556.1.4.801".into(), crit: true, val: Some(vec![0x30, 0x03, 0x02, 0x01, 0x04]) }
}

fn text(entry: &ldap3::SearchEntry, name: &str) -> Option<String> {
    raw_values(entry, name).first().map(|value| String::from_utf8_lossy(value).into_owned())
}

fn escape_filter(value: &str) -> String {
    value.chars().fold(String::new(), |mut out, c| {
        match c {
            '*' | '(' | ')' | '\\' | '\0' => out.push_str(&format!("\\{:02x}", c as u32)),
            other => out.push(other),
        }
        out
    })
}

/// Finds the connector's account, its domain and rights.
pub async fn replication_account(config: LdapConfig) -> Result<ReplicationAccount, ConnectorError> {
    if config.flavour != Flavour::ActiveDirectory {
        return Err(ConnectorError::Config("replication over MS-DRSR is for Active Directory connectors".into()));
    }
    let Bind::Simple { dn: bind_name, .. } = &config.bind else {
        return Err(ConnectorError::Config(
            "password hash sync from Active Directory needs a bind account with a password (NTLM authenticates the replication)".into(),
        ));
    };
    let bind_name = bind_name.clone();
    let session = Session::new(config)?;
    let root = session
        .read("", "(objectClass=*)", &["defaultNamingContext".to_string(), "configurationNamingContext".to_string()])
        .await?
        .ok_or_else(|| ConnectorError::Unavailable("no rootDSE".into()))?;
    let default_nc =
        text(&root, "defaultNamingContext").ok_or_else(|| ConnectorError::Config("the rootDSE names no defaultNamingContext".into()))?;
    let config_nc = text(&root, "configurationNamingContext").unwrap_or_default();
    let naming_contexts =
        if session.config.naming_contexts.is_empty() { vec![default_nc.clone()] } else { session.config.naming_contexts.clone() };

    // The account: by DN, by UPN (user@domain) or by DOMAIN\user.
    let wanted = ["sAMAccountName".to_string(), "objectSid".to_string()];
    let account = if bind_name.contains('=') {
        session.read(&bind_name, "(objectClass=*)", &wanted).await?
    } else {
        let filter = match bind_name.split_once('\\') {
            Some((_, sam)) => format!("(sAMAccountName={})", escape_filter(sam)),
            // AD also binds `sam@dns-domain` for accounts without a userPrincipalName (the
            // implicit UPN: built-in accounts such as Administrator have none).
            None => match bind_name.rsplit_once('@') {
                Some((sam, suffix)) if suffix.eq_ignore_ascii_case(&dns_name(&default_nc)) => format!(
                    "(|(userPrincipalName={})(&(sAMAccountName={})(!(userPrincipalName=*))))",
                    escape_filter(&bind_name),
                    escape_filter(sam)
                ),
                _ => format!("(userPrincipalName={})", escape_filter(&bind_name)),
            },
        };
        session.search(&default_nc, Scope::Subtree, &filter, &wanted, Vec::new()).await?.0.into_iter().next()
    }
    .ok_or_else(|| ConnectorError::Config(format!("the bind account {bind_name} was not found in {default_nc}")))?;
    let sam_account_name =
        text(&account, "sAMAccountName").ok_or_else(|| ConnectorError::Config(format!("{} has no sAMAccountName", account.dn)))?;
    let mut sids: Vec<Vec<u8>> = raw_values(&account, "objectSid").iter().map(|sid| sid.to_vec()).collect();
    // tokenGroups: every group the account is in, transitively, builtin ones included.
    if let Some(groups) = session.read(&account.dn, "(objectClass=*)", &["tokenGroups".to_string()]).await? {
        sids.extend(raw_values(&groups, "tokenGroups").iter().map(|sid| sid.to_vec()));
    }
    sids.push(vec![1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]); // Everyone
    sids.push(vec![1, 1, 0, 0, 0, 0, 0, 5, 11, 0, 0, 0]); // Authenticated Users

    let netbios_domain = session
        .search(
            &format!("CN=Partitions,{config_nc}"),
            Scope::OneLevel,
            &format!("(&(objectClass=crossRef)(nCName={}))", escape_filter(&default_nc)),
            &["nETBIOSName".to_string()],
            Vec::new(),
        )
        .await?
        .0
        .first()
        .and_then(|entry| text(entry, "nETBIOSName"))
        .ok_or_else(|| ConnectorError::Config(format!("no NetBIOS name found for {default_nc} under CN=Partitions")))?;

    let mut missing = Vec::new();
    for nc in &naming_contexts {
        let (entries, _) =
            session.search(nc, Scope::Base, "(objectClass=*)", &["nTSecurityDescriptor".to_string()], vec![dacl_only()]).await?;
        let descriptor = entries.first().and_then(|entry| raw_values(entry, "nTSecurityDescriptor").first().map(|sd| sd.to_vec()));
        for right in [GET_CHANGES, GET_CHANGES_ALL] {
            let granted = descriptor.as_deref().is_some_and(|sd| grants_control_right(sd, &sids, &right.guid));
            if !granted {
                missing.push((nc.clone(), right));
            }
        }
    }
    Ok(ReplicationAccount { sam_account_name, netbios_domain, naming_contexts, missing })
}

/// ADS_RIGHT_DS_CONTROL_ACCESS.
const CONTROL_ACCESS: u32 = 0x100;
/// GENERIC_ALL and its object-specific spelling, which include every control access right.
const GENERIC_ALL: u32 = 0x1000_0000;
const DS_ALL: u32 = 0x000f_01ff;
/// ACE flag: applies to children only.
const INHERIT_ONLY: u8 = 0x08;

/// Whether the self-relative security descriptor `sd` grants the control access right `right`
/// to a token holding `sids`: the first ACE that decides (deny or allow, in DACL order, as AD
/// evaluates a canonical DACL) wins. Malformed input grants nothing.
pub fn grants_control_right(sd: &[u8], sids: &[Vec<u8>], right: &[u8; 16]) -> bool {
    let u16_at = |at: usize| sd.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| sd.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let Some(dacl) = u32_at(16).map(|offset| offset as usize).filter(|offset| *offset != 0) else { return false };
    let (Some(_acl_size), Some(count)) = (u16_at(dacl + 2), u16_at(dacl + 4)) else { return false };
    let mut at = dacl + 8;
    for _ in 0..count {
        let (Some(&ace_type), Some(&flags), Some(size)) = (sd.get(at), sd.get(at + 1), u16_at(at + 2)) else { return false };
        let size = usize::from(size);
        let Some(ace) = sd.get(at..at + size).filter(|_| size >= 8) else { return false };
        at += size;
        if flags & INHERIT_ONLY != 0 {
            continue;
        }
        let mask = u32::from_le_bytes([ace[4], ace[5], ace[6], ace[7]]);
        let (allow, sid, object_type) = match ace_type {
            0 | 1 => (ace_type == 0, &ace[8..], None),
            5 | 6 => {
                let Some(object_flags) = ace.get(8..12).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])) else { return false };
                let mut body = 12;
                let object_type = if object_flags & 1 != 0 {
                    let guid = ace.get(body..body + 16);
                    body += 16;
                    guid
                } else {
                    None
                };
                if object_flags & 2 != 0 {
                    body += 16;
                }
                let Some(sid) = ace.get(body..) else { return false };
                (ace_type == 5, sid, object_type)
            }
            _ => continue,
        };
        let covers = mask & (GENERIC_ALL) != 0
            || mask & DS_ALL == DS_ALL
            || (mask & CONTROL_ACCESS != 0 && object_type.is_none_or(|guid| guid == right));
        if !covers || !sids.iter().any(|held| sid_matches(sid, held)) {
            continue;
        }
        return allow;
    }
    false
}

/// Whether `ace_sid` (the ACE's tail, possibly longer than the SID) is `held`.
fn sid_matches(ace_sid: &[u8], held: &[u8]) -> bool {
    let Some(&sub_authorities) = ace_sid.get(1) else { return false };
    let length = 8 + 4 * usize::from(sub_authorities);
    ace_sid.get(..length) == Some(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(rid: u32) -> Vec<u8> {
        let mut out = vec![1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0];
        out.extend_from_slice(&rid.to_le_bytes());
        out
    }

    fn object_ace(allow: bool, flags: u8, mask: u32, right: Option<&[u8; 16]>, trustee: &[u8]) -> Vec<u8> {
        let mut body = mask.to_le_bytes().to_vec();
        body.extend_from_slice(&u32::from(right.is_some()).to_le_bytes());
        if let Some(guid) = right {
            body.extend_from_slice(guid);
        }
        body.extend_from_slice(trustee);
        let mut ace = vec![if allow { 5 } else { 6 }, flags];
        ace.extend_from_slice(&((4 + body.len()) as u16).to_le_bytes());
        ace.extend_from_slice(&body);
        ace
    }

    fn descriptor(aces: &[Vec<u8>]) -> Vec<u8> {
        let mut sd = vec![1, 0, 0x04, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0];
        let size: usize = 8 + aces.iter().map(Vec::len).sum::<usize>();
        sd.extend_from_slice(&[4, 0]);
        sd.extend_from_slice(&(size as u16).to_le_bytes());
        sd.extend_from_slice(&(aces.len() as u16).to_le_bytes());
        sd.extend_from_slice(&[0, 0]);
        for ace in aces {
            sd.extend_from_slice(ace);
        }
        sd
    }

    #[test]
    fn object_aces_grant_the_right_they_name_to_the_sids_they_name() {
        let me = sid(1105);
        let sd = descriptor(&[object_ace(true, 0, CONTROL_ACCESS, Some(&GET_CHANGES.guid), &me)]);
        assert!(grants_control_right(&sd, std::slice::from_ref(&me), &GET_CHANGES.guid));
        assert!(!grants_control_right(&sd, std::slice::from_ref(&me), &GET_CHANGES_ALL.guid), "another right");
        assert!(!grants_control_right(&sd, &[sid(1106)], &GET_CHANGES.guid), "another account");
        let inherit_only = descriptor(&[object_ace(true, INHERIT_ONLY, CONTROL_ACCESS, Some(&GET_CHANGES.guid), &me)]);
        assert!(!grants_control_right(&inherit_only, std::slice::from_ref(&me), &GET_CHANGES.guid), "children only");
        let denied = descriptor(&[
            object_ace(false, 0, CONTROL_ACCESS, Some(&GET_CHANGES.guid), &me),
            object_ace(true, 0, CONTROL_ACCESS, None, &me),
        ]);
        assert!(!grants_control_right(&denied, std::slice::from_ref(&me), &GET_CHANGES.guid), "deny first wins");
        assert!(grants_control_right(&denied, std::slice::from_ref(&me), &GET_CHANGES_ALL.guid), "all rights, no object type");
    }

    proptest::proptest! {
        #[test]
        fn any_descriptor_bytes_are_read_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..160)) {
            let _ = grants_control_right(&bytes, &[sid(1)], &GET_CHANGES.guid);
            let mut with_dacl = descriptor(&[]);
            with_dacl.extend_from_slice(&bytes);
            with_dacl[24] = 3;
            let _ = grants_control_right(&with_dacl, &[sid(1)], &GET_CHANGES.guid);
        }
    }
}

/// The DNS name of a domain naming context: `DC=corp,DC=example` → `corp.example`.
fn dns_name(naming_context: &str) -> String {
    naming_context
        .split(',')
        .filter_map(|part| part.trim().split_once('='))
        .filter(|(kind, _)| kind.trim().eq_ignore_ascii_case("DC"))
        .map(|(_, label)| label.trim())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod dns_name_tests {
    #[test]
    fn a_naming_context_names_its_dns_domain() {
        assert_eq!(super::dns_name("DC=corp,DC=example"), "corp.example");
        assert_eq!(super::dns_name("dc=Sub, DC=corp,DC=example"), "Sub.corp.example");
        assert_eq!(super::dns_name("CN=Configuration,DC=corp,DC=example"), "corp.example");
    }
}
