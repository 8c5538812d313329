//! The audit trail of sign-ins and directory writes, kept in the tenant's database and read
//! through Graph's `auditLogs` (newest first, paged), and the `organization` resource.

use axum::Json;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::db;
use crate::odata::GraphError;
use crate::{Access, AppState};

/// `$top`, `$skiptoken`.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    #[serde(rename = "$top")]
    top: Option<String>,
    #[serde(rename = "$skiptoken")]
    skiptoken: Option<String>,
}

/// `GET /v1.0/auditLogs/{directoryAudits,signIns}`.
pub async fn list(
    state: AppState,
    access: Access,
    headers: HeaderMap,
    query: AuditQuery,
    category: &'static str,
) -> Result<Response, GraphError> {
    access.require(crate::permissions::Area::AuditLogsRead)?;
    let top = match &query.top {
        None => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|top| (1..=999).contains(top))
            .ok_or_else(|| GraphError::bad_request(format!("Invalid value '{text}' for $top.")))?,
    };
    let before = match &query.skiptoken {
        None => None,
        Some(token) => Some(token.parse::<i64>().map_err(|_| GraphError::bad_request("Invalid $skiptoken."))?),
    };
    let mut records = state.db.read(move |conn| db::audit(conn, category, before, top + 1)).await?;
    let more = records.len() > top;
    records.truncate(top);
    let values: Vec<Value> = records
        .iter()
        .map(|record| {
            if category == "SignIn" {
                json!({"id": record.seq.to_string(), "createdDateTime": record.time, "userPrincipalName": record.actor, "appId": record.target,
                       "clientAppUsed": record.activity, "status": {"errorCode": if record.outcome == "success" { 0 } else { 1 }, "failureReason": record.outcome}})
            } else {
                json!({"id": record.seq.to_string(), "activityDateTime": record.time, "category": "DirectoryManagement", "activityDisplayName": record.activity,
                       "result": if record.outcome == "success" { "success" } else { "failure" }, "resultReason": record.outcome,
                       "initiatedBy": {"app": {"appId": record.actor}}, "targetResources": [{"id": record.target}]})
            }
        })
        .collect();
    let base = crate::graph::base_url(&headers);
    let segment = if category == "SignIn" { "signIns" } else { "directoryAudits" };
    let mut body = json!({"@odata.context": format!("{base}/v1.0/$metadata#auditLogs/{segment}"), "value": values});
    if more && let Some(last) = records.last() {
        body["@odata.nextLink"] = Value::String(format!("{base}/v1.0/auditLogs/{segment}?$top={top}&$skiptoken={}", last.seq));
    }
    Ok(Json(body).into_response())
}

/// `GET /v1.0/organization`.
pub async fn organization(state: AppState, access: Access, headers: HeaderMap) -> Result<Response, GraphError> {
    access.require(crate::permissions::Area::OrganizationRead)?;
    let domains: Vec<Value> = state
        .all_domains()
        .iter()
        .filter(|domain| domain.verified)
        .map(|domain| json!({"name": domain.name, "isDefault": domain.initial, "isInitial": domain.initial, "type": domain.authentication}))
        .collect();
    let last_password_sync = state
        .db
        .read(|sql| crate::db::setting(sql, crate::hashsync::LAST_PASSWORD_SYNC))
        .await?
        .and_then(|value| String::from_utf8(value).ok()?.parse::<i64>().ok())
        .map(crate::rfc3339);
    let (last_sync, sync_enabled) = crate::sync_reports::organization_fields(&state).await?;
    let org = json!({"id": state.identity.tenant_id, "displayName": state.identity.initial_domain, "verifiedDomains": domains,
                     "onPremisesSyncEnabled": sync_enabled, "onPremisesLastSyncDateTime": last_sync,
                     "onPremisesLastPasswordSyncDateTime": last_password_sync, "tenantType": "AAD"});
    Ok(Json(json!({"@odata.context": format!("{}/v1.0/$metadata#organization", crate::graph::base_url(&headers)), "value": [org]}))
        .into_response())
}
