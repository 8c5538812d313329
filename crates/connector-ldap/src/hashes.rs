//! Password hash sync's source for generic LDAP servers: Samba's `sambaNTPassword` (the NT hash
//! as 32 hex digits, on `sambaSamAccount` entries), read over the connector's encrypted
//! connection with its account, which must be allowed to read it. The import never reads it;
//! only this does, and the values go straight into zeroizing [`phs::NtHash`]es.
//!
//! Active Directory never gives hashes over LDAP: its source is MS-DRSR (crate `drsr`).

use connector_api::ConnectorError;
use ldap3::Scope;
use model::Anchor;

use crate::config::{Flavour, LdapConfig};
use crate::session::{Session, raw_values};

/// One account's hash.
#[derive(Debug, Clone)]
pub struct HashRecord {
    /// The entry's anchor (entryUUID), as the connector space knows it.
    pub anchor: Anchor,
    /// Its DN.
    pub dn: String,
    /// Its NT hash.
    pub nt: phs::NtHash,
    /// `sambaAcctFlags` holds `D` (disabled).
    pub disabled: bool,
}

/// Every in-scope `sambaSamAccount` with an NT hash (entries whose hash is not 32 hex digits
/// are skipped with a warning naming them, never the value).
pub async fn read_nt_hashes(config: LdapConfig) -> Result<Vec<HashRecord>, ConnectorError> {
    if config.flavour == Flavour::ActiveDirectory {
        return Err(ConnectorError::Config("Active Directory does not give password hashes over LDAP: they are read over MS-DRSR".into()));
    }
    let session = Session::new(config)?;
    let root = session
        .read("", "(objectClass=*)", &["namingContexts".to_string()])
        .await?
        .ok_or_else(|| ConnectorError::Unavailable("no rootDSE".into()))?;
    let naming_contexts = if session.config.naming_contexts.is_empty() {
        raw_values(&root, "namingContexts").iter().map(|value| String::from_utf8_lossy(value).into_owned()).collect()
    } else {
        session.config.naming_contexts.clone()
    };
    let attributes: Vec<String> = ["entryUUID", "sambaNTPassword", "sambaAcctFlags"].map(String::from).to_vec();
    let mut out = Vec::new();
    for base in session.config.search_bases(&naming_contexts) {
        let mut cookie = Vec::new();
        loop {
            let (entries, next) = session
                .search_page(&base, Scope::Subtree, "(&(objectClass=sambaSamAccount)(sambaNTPassword=*))", &attributes, cookie)
                .await?;
            for entry in entries {
                if !session.config.in_scope(&naming_contexts, &entry.dn) {
                    continue;
                }
                let Some(uuid) = raw_values(&entry, "entryUUID").first().and_then(|text| crate::generic::uuid_bytes(text)) else {
                    continue;
                };
                let hash = raw_values(&entry, "sambaNTPassword")
                    .first()
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(phs::NtHash::from_hex);
                let Some(nt) = hash else {
                    tracing::warn!(dn = entry.dn, "sambaNTPassword is not 32 hex digits; this account's password is not synced");
                    continue;
                };
                let disabled = raw_values(&entry, "sambaAcctFlags").first().is_some_and(|flags| flags.contains(&b'D'));
                out.push(HashRecord { anchor: Anchor(uuid), dn: entry.dn, nt, disabled });
            }
            if next.is_empty() {
                break;
            }
            cookie = next;
        }
    }
    Ok(out)
}
