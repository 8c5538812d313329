//! What `isthmus init` asks of an Active Directory forest before it chooses the sourceAnchor
//! (Entra Connect's setup asks the same): is `mS-DS-ConsistencyGuid` already in use by some
//! object (then another tool owns it, and objectGUID is the safe anchor), and may the sync
//! account write it (the consistency-GUID anchor is written back)?

use connector_api::ConnectorError;
use ldap3::Scope;

use crate::config::LdapConfig;
use crate::session::{Session, raw_values};

/// The answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorProbe {
    /// Some object in scope already has an `mS-DS-ConsistencyGuid`.
    pub consistency_guid_in_use: bool,
    /// The account may write `mS-DS-ConsistencyGuid` on a user in scope (read from that
    /// user's `allowedAttributesEffective`); `None` when there is no user to ask about.
    pub can_write_consistency_guid: Option<bool>,
}

/// Asks the forest; reads one page at most per question.
pub async fn probe_anchor(config: LdapConfig) -> Result<AnchorProbe, ConnectorError> {
    let (session, naming_contexts) = open(config).await?;
    let mut probe = AnchorProbe { consistency_guid_in_use: false, can_write_consistency_guid: None };
    for base in session.config.search_bases(&naming_contexts) {
        let (in_use, _) = session.search_page(&base, Scope::Subtree, "(mS-DS-ConsistencyGuid=*)", &["1.1".to_string()], Vec::new()).await?;
        probe.consistency_guid_in_use |= !in_use.is_empty();
        if probe.can_write_consistency_guid.is_none() {
            let filter = "(&(objectCategory=person)(objectClass=user)(!(isCriticalSystemObject=TRUE)))";
            let (users, _) =
                session.search_page(&base, Scope::Subtree, filter, &["allowedAttributesEffective".to_string()], Vec::new()).await?;
            if let Some(user) = users.first() {
                let writable = raw_values(user, "allowedAttributesEffective");
                probe.can_write_consistency_guid =
                    Some(writable.iter().any(|name| String::from_utf8_lossy(name).eq_ignore_ascii_case("mS-DS-ConsistencyGuid")));
            }
        }
    }
    Ok(probe)
}

/// The UPN suffixes of the users in scope with how many users use each (Entra Connect's wizard
/// lists them, because only a verified suffix keeps its users' UPNs in the cloud), and the
/// users without a userPrincipalName. Reads page by page, keeping only the counts.
pub async fn upn_suffixes(config: LdapConfig) -> Result<UpnSuffixes, ConnectorError> {
    let (session, naming_contexts) = open(config).await?;
    let mut found = UpnSuffixes::default();
    let filter = "(&(objectCategory=person)(objectClass=user)(!(isCriticalSystemObject=TRUE)))";
    for base in session.config.search_bases(&naming_contexts) {
        let mut cookie = Vec::new();
        loop {
            let (users, next) = session.search_page(&base, Scope::Subtree, filter, &["userPrincipalName".to_string()], cookie).await?;
            for user in &users {
                match raw_values(user, "userPrincipalName").first().map(|value| String::from_utf8_lossy(value).into_owned()) {
                    Some(upn) => match upn.rsplit_once('@') {
                        Some((_, suffix)) if !suffix.is_empty() => *found.suffixes.entry(suffix.to_lowercase()).or_default() += 1,
                        _ => found.without_upn += 1,
                    },
                    None => found.without_upn += 1,
                }
            }
            if next.is_empty() {
                break;
            }
            cookie = next;
        }
    }
    Ok(found)
}

/// What [`upn_suffixes`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpnSuffixes {
    /// Suffix (lower case) → users with it.
    pub suffixes: std::collections::BTreeMap<String, u64>,
    /// Users with no (or a malformed) userPrincipalName.
    pub without_upn: u64,
}

/// A session and the naming contexts in scope (the configured ones, else the default one).
async fn open(config: LdapConfig) -> Result<(Session, Vec<String>), ConnectorError> {
    let session = Session::new(config)?;
    let root = session
        .read("", "(objectClass=*)", &["defaultNamingContext".to_string()])
        .await?
        .ok_or_else(|| ConnectorError::Unavailable("no rootDSE".into()))?;
    let default_nc = raw_values(&root, "defaultNamingContext")
        .first()
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .ok_or_else(|| ConnectorError::Config("the rootDSE names no defaultNamingContext".into()))?;
    let naming_contexts = if session.config.naming_contexts.is_empty() { vec![default_nc] } else { session.config.naming_contexts.clone() };
    Ok((session, naming_contexts))
}
