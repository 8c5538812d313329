//! What the tenant does with values the sync service writes that it cannot take as they are —
//! as Entra does, service-side:
//!
//! - **UPN suffix**: a userPrincipalName whose domain is not a verified domain of the tenant (or
//!   that has invalid characters) becomes `<mailNickname>@<initial domain>`; the on-premises
//!   value is kept in `onPremisesUserPrincipalName`, and restored once its domain is verified.
//! - **Duplicate attribute resiliency**: a userPrincipalName already used by another object is
//!   quarantined — the object gets `<prefix>+NNNN@<initial domain>` — and a duplicate
//!   `proxyAddresses` value is dropped; each conflict is recorded in
//!   `onPremisesProvisioningErrors` (`PropertyConflict`). The write succeeds, so the sync does
//!   not retry. When the conflict goes away (the other object is deleted or changed, or the
//!   domain verified), [`recheck`] restores the wanted values and clears the error.
//!
//! The values the sync wrote are kept (`onPremisesUserPrincipalName`, and the wanted proxy
//! addresses under an internal key), so re-reading the object tells the sync what it wrote.

use serde_json::{Map, Value, json};

use crate::db::{self, DbError, Kind, proxy_taken, upn_taken};
use crate::sql::Sql;

/// Where the wanted proxy addresses are kept (never shown by the API).
pub(crate) const WANTED_PROXIES: &str = "_wantedProxyAddresses";

/// What the checks need to know about the tenant.
pub(crate) struct Domains {
    /// The initial domain.
    pub initial: String,
    /// Verified domains, lower case.
    pub verified: Vec<String>,
}

fn valid_upn(upn: &str) -> bool {
    match upn.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !upn.chars().any(|c| c.is_whitespace() || c.is_control())
                && local.chars().all(|c| c.is_ascii_alphanumeric() || "'.-_!#^~&+".contains(c))
        }
        None => false,
    }
}

/// Recomputes the effective userPrincipalName and proxyAddresses of a synced object from the
/// values the sync wanted, recording conflicts. `object` must carry its `id`.
pub(crate) fn adjust(conn: &mut dyn Sql, kind: Kind, object: &mut Map<String, Value>, domains: &Domains) -> Result<(), DbError> {
    let id = object.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let now = crate::now_rfc3339();
    let mut errors = Vec::new();
    if kind == Kind::User
        && let Some(wanted) = object.get("onPremisesUserPrincipalName").and_then(Value::as_str).map(str::to_string)
    {
        let domain = wanted.rsplit_once('@').map(|(_, domain)| domain.to_lowercase()).unwrap_or_default();
        let prefix = |upn: &str| {
            upn.split('@')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "'.-_".contains(*c))
                .collect::<String>()
        };
        let mut effective = if valid_upn(&wanted) && domains.verified.contains(&domain) {
            wanted.clone()
        } else {
            // The MOERA: mailNickname (or the UPN's prefix) at the initial domain.
            let nickname = object
                .get("mailNickname")
                .and_then(Value::as_str)
                .map(prefix)
                .filter(|nick| !nick.is_empty())
                .unwrap_or_else(|| prefix(&wanted));
            format!("{nickname}@{}", domains.initial)
        };
        if upn_taken(conn, &effective, &id)? {
            errors.push(json!({"category": "PropertyConflict", "propertyCausingError": "UserPrincipalName", "value": effective, "occurredDateTime": now}));
            let base = prefix(&effective);
            let mut placeholder = None;
            for attempt in 0..50 {
                let digits = crate::crypto::random_bytes(2);
                let number = (u16::from_be_bytes([digits[0], digits[1]]) % 9000 + 1000) as u32 + attempt;
                let candidate = format!("{base}+{number}@{}", domains.initial);
                if !upn_taken(conn, &candidate, &id)? {
                    placeholder = Some(candidate);
                    break;
                }
            }
            effective = placeholder.unwrap_or_else(|| format!("{base}+{}@{}", crate::crypto::new_guid(), domains.initial));
        }
        object.insert("userPrincipalName".into(), Value::String(effective));
    }
    if let Some(wanted) = object.get(WANTED_PROXIES).and_then(Value::as_array).cloned() {
        let mut kept = Vec::new();
        for value in wanted.iter().filter_map(Value::as_str) {
            if proxy_taken(conn, value, &id)? {
                errors.push(json!({"category": "PropertyConflict", "propertyCausingError": "ProxyAddresses", "value": value, "occurredDateTime": now}));
            } else {
                kept.push(Value::String(value.to_string()));
            }
        }
        object.insert("proxyAddresses".into(), Value::Array(kept));
    }
    // A conflict keeps the time it was first seen.
    let previous: Vec<Value> = object.get("onPremisesProvisioningErrors").and_then(Value::as_array).cloned().unwrap_or_default();
    for error in &mut errors {
        if let Some(seen) =
            previous.iter().find(|old| old["propertyCausingError"] == error["propertyCausingError"] && old["value"] == error["value"])
        {
            error["occurredDateTime"] = seen["occurredDateTime"].clone();
        }
    }
    if errors.is_empty() {
        object.remove("onPremisesProvisioningErrors");
    } else {
        object.insert("onPremisesProvisioningErrors".into(), Value::Array(errors));
    }
    Ok(())
}

/// Takes the sync service's wanted values out of a write into the object: the UPN it wrote and
/// its proxy addresses.
pub(crate) fn remember_wanted(write: &Map<String, Value>, object: &mut Map<String, Value>) {
    if let Some(upn) = write.get("userPrincipalName") {
        object.insert("onPremisesUserPrincipalName".into(), upn.clone());
    }
    if let Some(proxies) = write.get("proxyAddresses") {
        object.insert(WANTED_PROXIES.into(), proxies.clone());
    }
}

/// Re-evaluates every synced object whose effective values differ from what the sync wanted
/// (conflicts, unverified suffixes); stores those that change. Returns how many changed.
pub(crate) fn recheck(conn: &mut dyn Sql, domains: &Domains) -> Result<usize, DbError> {
    let mut changed = 0;
    for (id, kind, mut object) in db::with_provisioning_differences(conn)? {
        let before = object.clone();
        adjust(conn, kind, &mut object, domains)?;
        if strip_times(&object) != strip_times(&before) {
            db::update(conn, kind, &object)?;
            tracing::info!(object = id, "provisioning conflicts re-evaluated");
            changed += 1;
        }
    }
    Ok(changed)
}

fn strip_times(object: &Map<String, Value>) -> Map<String, Value> {
    let mut copy = object.clone();
    if let Some(Value::Array(errors)) = copy.get_mut("onPremisesProvisioningErrors") {
        for error in errors {
            if let Some(error) = error.as_object_mut() {
                error.remove("occurredDateTime");
            }
        }
    }
    copy
}

/// Whether the sync service owns an object: it created it or took it over by a match, which
/// marks it `onPremisesSyncEnabled`. Contacts the sync created before the tenant marked every
/// object it creates carry only their anchor (a contact holds no credential).
fn owned_by_sync(kind: Kind, object: &Map<String, Value>) -> bool {
    object.get("onPremisesSyncEnabled").and_then(Value::as_bool) == Some(true)
        || (kind == Kind::Contact && object.get("onPremisesImmutableId").is_some_and(Value::is_string))
}

/// Why the sync service may not write an existing object (update, delete, members, password
/// hash), if it may not: it writes only what it owns, and never an account holding a directory
/// role — so no on-premises change, and no stolen sync credential, reaches a cloud account or
/// an administrator. Every write path of the sync service asks this, in the transaction that
/// writes.
///
/// `hard_match`: for an update, the tenant's policy — an update that joins a cloud object an
/// administrator gave an `onPremisesImmutableId` (to prepare a hard match) is that hard match,
/// allowed unless the policy blocks taking cloud objects over. Deletes and member changes touch
/// only what the sync owns already.
pub(crate) fn sync_write_refusal(
    conn: &mut dyn Sql,
    kind: Kind,
    object: &Map<String, Value>,
    hard_match: Option<MatchPolicy>,
) -> Result<Option<String>, DbError> {
    let id = object.get("id").and_then(Value::as_str).unwrap_or_default();
    let name = object.get("userPrincipalName").or_else(|| object.get("displayName")).and_then(Value::as_str).unwrap_or(id);
    let prepared = object.get("onPremisesImmutableId").is_some_and(Value::is_string);
    let taken_over = match hard_match {
        Some(policy) if prepared && !owned_by_sync(kind, object) => {
            if policy.block_hard_match_takeover {
                return Ok(Some(format!("{name} is a cloud object; taking cloud objects over by hard match is blocked.")));
            }
            true
        }
        _ => false,
    };
    if !taken_over && !owned_by_sync(kind, object) {
        return Ok(Some(format!(
            "The directory synchronization service writes only objects it synchronizes; {name} is a cloud-only object."
        )));
    }
    if kind == Kind::User && db::holds_a_role(conn, id)? {
        return Ok(Some(format!(
            "Existing Admin Role Conflict: {name} holds an administrator role; the directory synchronization service never writes a role holder."
        )));
    }
    Ok(None)
}

/// What an update by the sync service may not change on an object it owns: it stays synced and
/// keeps its anchor (a different anchor would be another on-premises object).
pub(crate) fn sync_patch_refusal(existing: &Map<String, Value>, patch: &Map<String, Value>) -> Option<String> {
    if let Some(enabled) = patch.get("onPremisesSyncEnabled")
        && enabled.as_bool() != Some(true)
    {
        return Some("The directory synchronization service cannot turn synchronization off for an object.".into());
    }
    match (existing.get("onPremisesImmutableId").and_then(Value::as_str), patch.get("onPremisesImmutableId")) {
        (Some(current), Some(wanted)) if wanted.as_str() != Some(current) => {
            Some(format!("The onPremisesImmutableId of a synchronized object cannot change (it is {current})."))
        }
        _ => None,
    }
}

/// How a synced object the sync service creates matches one the tenant already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatchPolicy {
    /// Refuse soft matches (on UPN / primary SMTP) onto cloud-only objects.
    pub block_soft_match: bool,
    /// Refuse taking over a cloud object through its onPremisesImmutableId (hard match).
    pub block_hard_match_takeover: bool,
    /// Soft-match on the primary SMTP address only, not on the UPN (the tenant feature
    /// `softMatchOnUpnEnabled` turned off).
    pub no_soft_match_on_upn: bool,
}

/// What a create by the sync service found.
pub(crate) enum Match {
    /// Nothing: create.
    None,
    /// This existing object (its document): the create becomes an update of it.
    Existing(Map<String, Value>),
    /// A match the tenant's policy forbids.
    Refused(String),
}

fn primary_smtp(object: &Map<String, Value>) -> Option<String> {
    let from_proxies = object.get(WANTED_PROXIES).or_else(|| object.get("proxyAddresses")).and_then(Value::as_array).and_then(|values| {
        values.iter().filter_map(Value::as_str).find(|value| value.starts_with("SMTP:")).map(|value| value[5..].to_lowercase())
    });
    from_proxies.or_else(|| object.get("mail").and_then(Value::as_str).map(str::to_lowercase))
}

/// Hard match on `onPremisesImmutableId` (any object of the kind), then soft match on UPN or
/// primary SMTP onto a cloud-only object (no immutableId, not synced), as Entra matches.
pub(crate) fn find_match(conn: &mut dyn Sql, kind: Kind, wanted: &Map<String, Value>, policy: MatchPolicy) -> Result<Match, DbError> {
    // Indexed lookups: a create must not read the whole tenant.
    if let Some(anchor) = wanted.get("onPremisesImmutableId").and_then(Value::as_str)
        && let Some(found) = db::find(conn, kind, db::Lookup::ImmutableId(anchor))?.into_iter().next()
    {
        if kind == Kind::User
            && let Some(id) = found.get("id").and_then(Value::as_str)
            && db::holds_a_role(conn, id)?
        {
            return Ok(Match::Refused(format!(
                "Existing Admin Role Conflict: the cloud account {} with onPremisesImmutableId {anchor} holds an administrator role; \
                 hard matching never takes over an administrator.",
                found.get("userPrincipalName").and_then(Value::as_str).unwrap_or(id)
            )));
        }
        if policy.block_hard_match_takeover && found.get("onPremisesSyncEnabled").and_then(Value::as_bool) != Some(true) {
            return Ok(Match::Refused(format!(
                "An object with onPremisesImmutableId {anchor} exists and taking cloud objects over by hard match is blocked."
            )));
        }
        return Ok(Match::Existing(found));
    }
    let upn = wanted
        .get("onPremisesUserPrincipalName")
        .or_else(|| wanted.get("userPrincipalName"))
        .and_then(Value::as_str)
        .map(str::to_lowercase);
    let smtp = primary_smtp(wanted);
    let cloud_only = |object: &Map<String, Value>| {
        object.get("onPremisesImmutableId").is_none_or(Value::is_null)
            && object.get("onPremisesSyncEnabled").and_then(Value::as_bool) != Some(true)
    };
    let mut soft = None;
    if let Some(upn) = upn.as_ref().filter(|_| !policy.no_soft_match_on_upn) {
        soft = db::find(conn, kind, db::Lookup::Upn(upn))?.into_iter().find(|object| cloud_only(object));
    }
    if soft.is_none() && smtp.is_some() {
        soft = db::find(conn, kind, db::Lookup::WithoutImmutableId)?
            .into_iter()
            .find(|object| cloud_only(object) && primary_smtp(object) == smtp);
    }
    if let Some(found) = &soft
        && let Some(id) = found.get("id").and_then(Value::as_str)
        && db::holds_a_role(conn, id)?
    {
        return Ok(Match::Refused(format!(
            "Existing Admin Role Conflict: the cloud account {} that this object would soft-match holds an administrator role; \
             soft matching never takes over an administrator.",
            found.get("userPrincipalName").and_then(Value::as_str).unwrap_or(id)
        )));
    }
    match soft {
        Some(found) if policy.block_soft_match => {
            tracing::info!(object = ?found.get("id"), "soft match blocked by the tenant's policy");
            Ok(Match::None)
        }
        Some(found) => Ok(Match::Existing(found)),
        None => Ok(Match::None),
    }
}
