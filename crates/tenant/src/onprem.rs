//! `/v1.0/directory/onPremisesSynchronization`: the tenant's directory-synchronization settings,
//! as Graph shapes them — what a sync server stores in the tenant so that the next one (a
//! rebuild, a staging server) finds it: the `anchorAttribute` it anchors users on, its
//! application id and version, and the tenant's **features** (`blockSoftMatchEnabled`,
//! `blockCloudObjectTakeoverThroughHardMatchEnabled`, `softMatchOnUpnEnabled` … which the
//! tenant's matching obeys).
//!
//! The anchor attribute, once set, never changes (Entra: the anchor can only be chosen at
//! install), except the supported migration from `objectGUID` to `mS-DS-ConsistencyGuid` (whose
//! values start as the objectGUID, so no immutableId changes).

use axum::Json;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::odata::GraphError;
use crate::permissions::Area;
use crate::{Access, AppState, db};

/// The settings row.
const SETTING: &str = "onPremisesSynchronization";

/// Graph's `onPremisesDirectorySynchronizationFeature` flags (all booleans).
const FEATURES: &[&str] = &[
    "blockCloudObjectTakeoverThroughHardMatchEnabled",
    "blockSoftMatchEnabled",
    "bypassDirSyncOverridesEnabled",
    "cloudPasswordPolicyForPasswordSyncedUsersEnabled",
    "concurrentCredentialUpdateEnabled",
    "concurrentOrgIdProvisioningEnabled",
    "deviceWritebackEnabled",
    "directoryExtensionsEnabled",
    "fopeConflictResolutionEnabled",
    "groupWriteBackEnabled",
    "passwordSyncEnabled",
    "passwordWritebackEnabled",
    "quarantineUponProxyAddressesConflictEnabled",
    "quarantineUponUpnConflictEnabled",
    "softMatchOnUpnEnabled",
    "synchronizeUpnForManagedUsersEnabled",
    "unifiedGroupWritebackEnabled",
    "userForcePasswordChangeOnLogonEnabled",
    "userWritebackEnabled",
];

/// Graph's `onPremisesDirectorySynchronizationConfiguration` properties this tenant keeps.
const CONFIGURATION: &[&str] = &[
    "anchorAttribute",
    "applicationId",
    "synchronizationClientVersion",
    "synchronizationInterval",
    "customerRequestedSynchronizationInterval",
    "accidentalDeletionPrevention",
];

/// A new tenant's settings: Entra's defaults (both resiliency quarantines and UPN soft match on).
fn initial() -> Value {
    let mut features = Map::new();
    for name in FEATURES {
        let on =
            matches!(*name, "quarantineUponProxyAddressesConflictEnabled" | "quarantineUponUpnConflictEnabled" | "softMatchOnUpnEnabled");
        features.insert((*name).to_string(), Value::Bool(on));
    }
    json!({
        "configuration": {
            "anchorAttribute": null,
            "applicationId": null,
            "synchronizationClientVersion": null,
            "synchronizationInterval": "PT30M",
            "customerRequestedSynchronizationInterval": null,
            "accidentalDeletionPrevention": {"synchronizationPreventionType": "enabledForCount", "alertThreshold": 500}
        },
        "features": features,
    })
}

/// The stored settings (the initial ones when none are stored).
pub(crate) fn load(sql: &mut dyn crate::sql::Sql) -> Result<Value, db::DbError> {
    Ok(match db::setting(sql, SETTING)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|err| db::DbError::Corrupt(format!("the {SETTING} setting: {err}")))?,
        None => initial(),
    })
}

/// The match policy the features ask for, on top of the process's own settings.
pub(crate) fn policy(settings: &Value, base: crate::resilience::MatchPolicy) -> crate::resilience::MatchPolicy {
    let flag = |name: &str| settings["features"][name].as_bool();
    crate::resilience::MatchPolicy {
        block_soft_match: base.block_soft_match || flag("blockSoftMatchEnabled") == Some(true),
        block_hard_match_takeover: base.block_hard_match_takeover || flag("blockCloudObjectTakeoverThroughHardMatchEnabled") == Some(true),
        no_soft_match_on_upn: base.no_soft_match_on_upn || flag("softMatchOnUpnEnabled") == Some(false),
    }
}

fn document(state: &AppState, settings: &Value) -> Value {
    let mut document = settings.clone();
    document["id"] = Value::String(state.identity.tenant_id.clone());
    document
}

/// `GET /v1.0/directory/onPremisesSynchronization`: a collection of the one object.
pub async fn list(state: AppState, access: Access, headers: HeaderMap) -> Result<Response, GraphError> {
    access.require(Area::SyncSettingsRead)?;
    let settings = state.db.read(load).await?;
    let context = format!("{}/v1.0/$metadata#directory/onPremisesSynchronization", crate::graph::base_url(&headers));
    Ok(Json(json!({"@odata.context": context, "value": [document(&state, &settings)]})).into_response())
}

/// `GET /v1.0/directory/onPremisesSynchronization/{id}`.
pub async fn get(state: AppState, access: Access, id: String) -> Result<Response, GraphError> {
    access.require(Area::SyncSettingsRead)?;
    if !id.eq_ignore_ascii_case(&state.identity.tenant_id) {
        return Err(GraphError::not_found(&id));
    }
    let settings = state.db.read(load).await?;
    Ok(Json(document(&state, &settings)).into_response())
}

/// What a PATCH sets: configuration properties and features.
type Changes = (Map<String, Value>, Map<String, Value>);

/// Checks a PATCH body against Graph's shape; returns what it sets.
fn checked(body: Map<String, Value>) -> Result<Changes, GraphError> {
    let mut configuration = Map::new();
    let mut features = Map::new();
    for (name, value) in body {
        match (name.as_str(), value) {
            ("configuration", Value::Object(fields)) => {
                for (field, value) in fields {
                    if !CONFIGURATION.contains(&field.as_str()) {
                        return Err(GraphError::bad_request(format!("Invalid property '{field}' in configuration.")));
                    }
                    let ok = match field.as_str() {
                        "accidentalDeletionPrevention" => check_prevention(&value),
                        _ => value.is_string() || value.is_null(),
                    };
                    if !ok {
                        return Err(GraphError::bad_request(format!("Invalid value for property '{field}' in configuration.")));
                    }
                    configuration.insert(field, value);
                }
            }
            ("features", Value::Object(fields)) => {
                for (field, value) in fields {
                    if !FEATURES.contains(&field.as_str()) {
                        return Err(GraphError::bad_request(format!("Invalid property '{field}' in features.")));
                    }
                    if !value.is_boolean() {
                        return Err(GraphError::bad_request(format!("Feature '{field}' must be true or false.")));
                    }
                    features.insert(field, value);
                }
            }
            ("configuration" | "features", _) => return Err(GraphError::bad_request(format!("Property '{name}' must be an object."))),
            ("id", _) => return Err(GraphError::bad_request("Property 'id' is read-only.")),
            _ => return Err(GraphError::bad_request(format!("Invalid property '{name}'."))),
        }
    }
    Ok((configuration, features))
}

fn check_prevention(value: &Value) -> bool {
    let Some(fields) = value.as_object() else { return false };
    fields.iter().all(|(name, value)| match name.as_str() {
        "synchronizationPreventionType" => {
            matches!(value.as_str(), Some("disabled" | "enabledForCount" | "enabledForPercentage"))
        }
        "alertThreshold" => value.as_i64().is_some_and(|threshold| threshold >= 0),
        _ => false,
    })
}

/// Whether the anchor attribute may go from `from` to `to`.
fn anchor_change_allowed(from: Option<&str>, to: Option<&str>) -> bool {
    match (from, to) {
        (None, _) => true,
        (Some(from), Some(to)) if from.eq_ignore_ascii_case(to) => true,
        (Some(from), Some(to)) => from.eq_ignore_ascii_case("objectGUID") && to.eq_ignore_ascii_case("mS-DS-ConsistencyGuid"),
        (Some(_), None) => false,
    }
}

/// `PATCH /v1.0/directory/onPremisesSynchronization/{id}`.
pub async fn update(state: AppState, access: Access, id: String, body: crate::graph::Body) -> Result<Response, GraphError> {
    access.require(Area::SyncSettingsWrite)?;
    if !id.eq_ignore_ascii_case(&state.identity.tenant_id) {
        return Err(GraphError::not_found(&id));
    }
    let (configuration, features) = checked(crate::graph::body_object(body)?)?;
    let outcome = state
        .db
        .call(move |sql| {
            let mut settings = load(sql)?;
            if let Some(wanted) = configuration.get("anchorAttribute") {
                let current = settings["configuration"]["anchorAttribute"].as_str().map(str::to_string);
                if !anchor_change_allowed(current.as_deref(), wanted.as_str()) {
                    return Ok(Err(format!(
                        "The anchor attribute is {} and cannot be changed to {wanted}: objects synced so far are anchored on it.",
                        current.unwrap_or_default()
                    )));
                }
            }
            for (name, value) in configuration {
                settings["configuration"][name] = value;
            }
            for (name, value) in features {
                settings["features"][name] = value;
            }
            let bytes = serde_json::to_vec(&settings).unwrap_or_default();
            sql.execute("DELETE FROM settings WHERE name = ?1", &[SETTING.into()])?;
            sql.execute("INSERT INTO settings (name, value) VALUES (?1, ?2)", &[SETTING.into(), bytes.as_slice().into()])?;
            Ok(Ok(settings))
        })
        .await?;
    let settings = outcome.map_err(GraphError::bad_request)?;
    state.set_sync_settings(settings);
    state.record("Directory", "update onPremisesSynchronization".into(), access.caller.clone(), id, "success").await;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anchor_attribute_is_set_once_except_for_the_consistency_guid_migration() {
        assert!(anchor_change_allowed(None, Some("objectGUID")));
        assert!(anchor_change_allowed(Some("objectGUID"), Some("objectguid")));
        assert!(anchor_change_allowed(Some("objectGUID"), Some("mS-DS-ConsistencyGuid")));
        assert!(!anchor_change_allowed(Some("mS-DS-ConsistencyGuid"), Some("objectGUID")));
        assert!(!anchor_change_allowed(Some("objectGUID"), Some("employeeID")));
        assert!(!anchor_change_allowed(Some("objectGUID"), None));
    }

    #[test]
    fn features_drive_the_match_policy() {
        let mut settings = initial();
        let base = crate::resilience::MatchPolicy::default();
        assert_eq!(policy(&settings, base), base, "Entra's defaults block nothing");
        settings["features"]["blockSoftMatchEnabled"] = Value::Bool(true);
        settings["features"]["softMatchOnUpnEnabled"] = Value::Bool(false);
        let chosen = policy(&settings, base);
        assert!(chosen.block_soft_match && chosen.no_soft_match_on_upn && !chosen.block_hard_match_takeover);
    }

    #[test]
    fn bodies_are_checked_against_graphs_shape() {
        let body = |value: Value| value.as_object().cloned().unwrap_or_default();
        assert!(checked(body(json!({"features": {"blockSoftMatchEnabled": true}}))).is_ok());
        assert!(checked(body(json!({"features": {"blockSoftMatchEnabled": "yes"}}))).is_err());
        assert!(checked(body(json!({"features": {"noSuchFeature": true}}))).is_err());
        assert!(checked(body(json!({"configuration": {"anchorAttribute": 5}}))).is_err());
        assert!(checked(body(json!({"configuration": {"accidentalDeletionPrevention": {"alertThreshold": -1}}}))).is_err());
        assert!(checked(body(json!({"configuration": {"accidentalDeletionPrevention": {"alertThreshold": 10}}}))).is_ok());
        assert!(checked(body(json!({"somethingElse": {}}))).is_err());
    }
}
