//! The receiving end of password hash sync: `POST /isthmus/v1/passwordHashSync`, for the sync
//! service only. Each item names a synced user by its `onPremisesImmutableId` and carries the
//! credential the sync server derived on-premises (`phs`: PBKDF2 over the NT hash, never the NT
//! hash itself). The whole batch is checked before anything is stored, and stored in one
//! transaction; the answer gives each user a status in Entra's vocabulary (`Success`,
//! `NoTargetConnection`, `FilteredByTarget` for a temporary password while the tenant feature
//! `userForcePasswordChangeOnLogonEnabled` is off). Nothing of a credential is logged.
//!
//! Sign-in then checks a synced user's password against it (see `signin::CloudPassword`): MD4 of
//! the typed password, the same transform, a constant-time compare.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::odata::GraphError;
use crate::{Access, AppState, db};

/// Most users in one request.
pub const MAX_BATCH: usize = 1000;

struct Item {
    anchor: String,
    credential: String,
    must_change: bool,
    /// Times the password was seen in leaks (the sync server checked it against this tenant's
    /// list by k-anonymity range); `None`: not on the list.
    leaked: Option<u64>,
}

fn checked(body: serde_json::Map<String, Value>) -> Result<Vec<Item>, GraphError> {
    if let Some(other) = body.keys().find(|name| *name != "value") {
        return Err(GraphError::bad_request(format!("Invalid property '{other}'.")));
    }
    let Some(Value::Array(items)) = body.get("value") else {
        return Err(GraphError::bad_request("The body needs a 'value' array of users."));
    };
    if items.len() > MAX_BATCH {
        return Err(GraphError::bad_request(format!("At most {MAX_BATCH} users per request, got {}.", items.len())));
    }
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Some(item) = item.as_object() else { return Err(GraphError::bad_request(format!("value[{index}] is not an object."))) };
        if let Some(other) = item
            .keys()
            .find(|name| !["onPremisesImmutableId", "credential", "forceChangePasswordNextSignIn", "leakedCount"].contains(&name.as_str()))
        {
            return Err(GraphError::bad_request(format!("Invalid property '{other}' in value[{index}].")));
        }
        let anchor = item
            .get("onPremisesImmutableId")
            .and_then(Value::as_str)
            .filter(|anchor| !anchor.is_empty())
            .ok_or_else(|| GraphError::bad_request(format!("value[{index}] needs an onPremisesImmutableId.")))?;
        let credential = item
            .get("credential")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request(format!("value[{index}] needs a credential.")))?;
        phs::SyncedCredential::from_wire(credential).map_err(|err| GraphError::bad_request(format!("value[{index}]: {err}")))?;
        let must_change = match item.get("forceChangePasswordNextSignIn") {
            None => false,
            Some(Value::Bool(flag)) => *flag,
            Some(_) => return Err(GraphError::bad_request(format!("value[{index}].forceChangePasswordNextSignIn must be true or false."))),
        };
        let leaked = match item.get("leakedCount") {
            None | Some(Value::Null) => None,
            Some(count) => {
                Some(count.as_u64().ok_or_else(|| GraphError::bad_request(format!("value[{index}].leakedCount must be a count.")))?)
            }
        };
        out.push(Item { anchor: anchor.to_string(), credential: credential.to_string(), must_change, leaked });
    }
    Ok(out)
}

/// The setting holding the Unix time of the last password hash sync call (the heartbeat).
pub(crate) const LAST_PASSWORD_SYNC: &str = "lastPasswordSync";

/// A user's `passwordPolicies` after a hash sync: `DisablePasswordExpiration` added (`never`)
/// or removed, the other policies kept; `None` when none is left.
pub(crate) fn password_policies(current: Option<&str>, never: bool) -> Option<String> {
    const NEVER: &str = "DisablePasswordExpiration";
    let mut policies: Vec<&str> = current
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|policy| !policy.is_empty() && !policy.eq_ignore_ascii_case(NEVER))
        .collect();
    if never {
        policies.push(NEVER);
    }
    (!policies.is_empty()).then(|| policies.join(", "))
}

/// Whether a cloud-checked password has expired: the user is not marked
/// `DisablePasswordExpiration`, the domain's validity period is finite, and that many days have
/// passed since `last_change` (Unix seconds).
pub(crate) fn password_expired(policies: Option<&str>, last_change: i64, validity_days: Option<u32>, now: i64) -> bool {
    let never = policies.unwrap_or_default().split(',').any(|policy| policy.trim().eq_ignore_ascii_case("DisablePasswordExpiration"));
    match validity_days {
        Some(days) if !never => now >= last_change.saturating_add(i64::from(days) * 86_400),
        _ => false,
    }
}

/// `POST /isthmus/v1/passwordHashSync`. An empty `value` is a heartbeat.
pub async fn receive(state: AppState, access: Access, body: crate::graph::Body) -> Result<Response, GraphError> {
    access.require(crate::permissions::Area::PasswordHashSync)?;
    state.admit_write()?;
    let items = checked(crate::graph::body_object(body)?)?;
    let count = items.len();
    let now = crate::unix_now();
    // Temporary passwords ("must change at next logon") sync only with the tenant feature on.
    let temporary_allowed = state.sync_feature("userForcePasswordChangeOnLogonEnabled");
    // Without the cloud password policy, a synced password never expires in the cloud: every
    // hash sync marks the user DisablePasswordExpiration; with it, the next sync removes the mark.
    let cloud_policy = state.sync_feature("cloudPasswordPolicyForPasswordSyncedUsersEnabled");
    let statuses = state
        .db
        .call(move |sql| {
            // Every call, an empty one included, is password hash sync's heartbeat.
            db::set_setting(sql, LAST_PASSWORD_SYNC, now.to_string().as_bytes())?;
            let mut statuses = Vec::with_capacity(items.len());
            for item in items {
                let found = db::find(sql, db::Kind::User, db::Lookup::ImmutableId(&item.anchor))?;
                let target = found.into_iter().find(|user| user.get("onPremisesSyncEnabled").and_then(Value::as_bool) == Some(true));
                let Some(id) = target.as_ref().and_then(|user| user.get("id")).and_then(Value::as_str) else {
                    statuses.push(json!({"onPremisesImmutableId": item.anchor, "status": "NoTargetConnection"}));
                    continue;
                };
                if let Some(user) = &target
                    && let Some(reason) = crate::resilience::sync_write_refusal(sql, db::Kind::User, user, None)?
                {
                    statuses.push(json!({"onPremisesImmutableId": item.anchor, "id": id, "status": "FilteredByTarget", "reason": reason}));
                    continue;
                }
                if item.must_change && !temporary_allowed {
                    statuses.push(json!({"onPremisesImmutableId": item.anchor, "id": id, "status": "FilteredByTarget",
                                         "reason": "Temporary passwords are not synced (userForcePasswordChangeOnLogonEnabled is off)."}));
                    continue;
                }
                // A changed password ends the user's sign-ins (the same one sent again does not).
                let changed = db::synced_credential(sql, id)?.is_none_or(|old| old.credential != item.credential);
                let row = db::SyncedCredentialRow { credential: item.credential, must_change: item.must_change, synced_at: now };
                db::set_synced_credential(sql, id, &row)?;
                if changed {
                    db::revoke_user_refresh(sql, id)?;
                }
                if let Some(mut user) = target.clone() {
                    user.insert("lastPasswordChangeDateTime".into(), Value::String(crate::rfc3339(now)));
                    let policies = password_policies(user.get("passwordPolicies").and_then(Value::as_str), !cloud_policy);
                    user.insert("passwordPolicies".into(), policies.map_or(Value::Null, Value::String));
                    db::update(sql, db::Kind::User, &user)?;
                }
                // A password on the leaked list flags the user; a new one that is not clears it.
                db::set_leaked(sql, id, item.leaked, now)?;
                statuses.push(json!({"onPremisesImmutableId": item.anchor, "id": id, "status": "Success"}));
            }
            Ok(statuses)
        })
        .await?;
    let stored = statuses.iter().filter(|status| status["status"] == "Success").count();
    state.metrics.password_sync(count, now);
    state
        .record("Directory", format!("password hash sync ({stored} of {count} users)"), access.caller.clone(), String::new(), "success")
        .await;
    Ok(Json(json!({"value": statuses})).into_response())
}

/// `GET /isthmus/v1/leakedCredentials/range/{prefix}`: the k-anonymity range of the tenant's
/// leaked-hash list under a 5-hex-digit prefix (sync service only); 404 when no list is loaded.
pub async fn leaked_range(state: AppState, access: Access, prefix: String) -> Result<Response, GraphError> {
    access.require(crate::permissions::Area::PasswordHashSync)?;
    let Some(list) = state.leaked.as_ref() else {
        return Err(GraphError::not_found("leakedCredentials (no leaked-credential list is loaded)"));
    };
    let range = {
        let list = list.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        list.range(&prefix)
    };
    let range = range.map_err(|err| match err {
        phs::leaked::LeakedError::Prefix(_) => GraphError::bad_request(err.to_string()),
        other => GraphError::internal(&other),
    })?;
    let value: Vec<Value> = range.into_iter().map(|(suffix, count)| json!({"suffix": suffix, "count": count})).collect();
    Ok(Json(json!({ "value": value })).into_response())
}

/// `GET /v1.0/identityProtection/riskyUsers`: users whose synced password is on the leaked list.
pub async fn risky_users(state: AppState, access: Access, headers: axum::http::HeaderMap) -> Result<Response, GraphError> {
    access.require(crate::permissions::Area::RiskyUsersRead)?;
    let users = state.db.read(db::risky_users).await?;
    let value: Vec<Value> = users
        .into_iter()
        .map(|(id, upn, count, detected)| {
            let when = crate::rfc3339(detected);
            json!({"id": id, "userPrincipalName": upn, "riskLevel": "high", "riskState": "atRisk", "riskDetail": "none",
                   "riskEventTypes": ["leakedCredentials"], "leakedCount": count, "riskLastUpdatedDateTime": when})
        })
        .collect();
    let context = format!("{}/v1.0/$metadata#identityProtection/riskyUsers", crate::graph::base_url(&headers));
    Ok(Json(json!({"@odata.context": context, "value": value})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_batch_is_checked_whole() {
        let good = phs::SyncedCredential::new(&phs::NtHash::of_password("x")).to_wire();
        assert_eq!(
            checked(body(json!({"value": [{"onPremisesImmutableId": "a", "credential": good}]}))).map(|items| items.len()).ok(),
            Some(1)
        );
        for (bad, why) in [
            (json!({"value": [{"onPremisesImmutableId": "a", "credential": "v1;PPH1_MD4,zz,1,zz;"}]}), "value[0]"),
            (json!({"value": [{"credential": good}]}), "onPremisesImmutableId"),
            (json!({"value": [{"onPremisesImmutableId": "a", "credential": good, "nt": "x"}]}), "Invalid property 'nt'"),
            (
                json!({"value": [{"onPremisesImmutableId": "a", "credential": good, "forceChangePasswordNextSignIn": "yes"}]}),
                "true or false",
            ),
            (json!({"value": [{"onPremisesImmutableId": "a", "credential": good, "leakedCount": "many"}]}), "leakedCount"),
            (json!({"users": []}), "Invalid property"),
            (json!({"value": 5}), "'value' array"),
        ] {
            let err = checked(body(bad.clone())).err().map(|err| err.message).unwrap_or_default();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn hash_sync_marks_or_unmarks_never_expiring_passwords() {
        assert_eq!(password_policies(None, true).as_deref(), Some("DisablePasswordExpiration"));
        assert_eq!(password_policies(Some("DisablePasswordExpiration"), true).as_deref(), Some("DisablePasswordExpiration"));
        assert_eq!(password_policies(Some("DisablePasswordExpiration"), false), None);
        assert_eq!(
            password_policies(Some("DisableStrongPassword, DisablePasswordExpiration"), false).as_deref(),
            Some("DisableStrongPassword")
        );
        assert_eq!(
            password_policies(Some("DisableStrongPassword"), true).as_deref(),
            Some("DisableStrongPassword, DisablePasswordExpiration")
        );
    }

    #[test]
    fn a_password_expires_only_under_the_cloud_policy_with_a_finite_period() {
        let day = 86_400;
        assert!(!password_expired(Some("DisablePasswordExpiration"), 0, Some(1), 10 * day), "marked never");
        assert!(!password_expired(None, 0, None, 10 * day), "the domain never expires passwords");
        assert!(!password_expired(None, 0, Some(90), 89 * day));
        assert!(password_expired(None, 0, Some(90), 90 * day));
        assert!(password_expired(Some("DisableStrongPassword"), 0, Some(1), 2 * day));
    }
}
