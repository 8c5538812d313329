//! Service principals and application-role grants through Graph, enough to give an app the
//! roles its client-credentials tokens carry: `POST /v1.0/servicePrincipals` (`{"appId"}`) makes
//! an app's service principal; the tenant's built-in **Microsoft Graph** service principal
//! (appId `00000003-0000-0000-c000-000000000000`) lists the application roles this API knows as
//! `appRoles`; `POST …/{graph}/appRoleAssignedTo` (`{principalId, resourceId, appRoleId}`)
//! grants one, `DELETE …/{graph}/appRoleAssignedTo/{id}` takes it back; an app's grants are
//! listed at `…/{sp}/appRoleAssignments`. A grant takes effect in the app's next token. Granting
//! needs `AppRoleAssignment.ReadWrite.All` (or `Directory.ReadWrite.All`) and never comes from
//! the sync service; every grant is audited.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::odata::GraphError;
use crate::permissions::Area;
use crate::{Access, AppState, db};

/// Microsoft Graph's application id.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// Microsoft Graph's ids of the application roles this API shares with it (scripts usually look
/// roles up by value; where they use Microsoft's ids, those work here too).
const MICROSOFT_IDS: &[(&str, &str)] = &[
    ("7ab1d382-f21e-4acd-a863-ba3e13f7da61", "Directory.Read.All"),
    ("19dbc75e-c2e2-444c-a770-ec69d8559fc7", "Directory.ReadWrite.All"),
    ("df021288-bdef-4463-88db-98f22de89214", "User.Read.All"),
    ("741f803b-c850-494e-b5df-cde7c675a1ca", "User.ReadWrite.All"),
    ("5b567255-7703-4780-807c-7be8301ae99b", "Group.Read.All"),
    ("62a82d76-70ea-41e2-9197-370581804d09", "Group.ReadWrite.All"),
    ("9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30", "Application.Read.All"),
    ("1bfefb4e-e0b5-418b-a88f-73c46d2cc8e9", "Application.ReadWrite.All"),
    ("06b708a9-e830-4db3-a914-8e69da51d44f", "AppRoleAssignment.ReadWrite.All"),
    ("9e3f62cf-ca93-4989-b6ce-bf83c28f9fe8", "RoleManagement.ReadWrite.Directory"),
];

/// A GUID-shaped id derived from `text` (stable across tenants and versions).
fn derived_guid(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let hex = crate::crypto::hex(&digest.as_ref()[..16]);
    format!("{}-{}-4{}-8{}-{}", &hex[..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}

/// Every application role of this API (each role the permission table names): (id, value);
/// Microsoft's id where it has one, else one derived from the value (Isthmus's own roles, such
/// as the sync service's, and those not listed above).
pub fn app_roles() -> Vec<(String, &'static str)> {
    crate::permissions::all_roles()
        .into_iter()
        .map(|value| {
            let id = MICROSOFT_IDS
                .iter()
                .find(|(_, known)| *known == value)
                .map_or_else(|| derived_guid(&format!("isthmus-app-role:{value}")), |(id, _)| id.to_string());
            (id, value)
        })
        .collect()
}

/// The Graph service principal's object id in this tenant (derived from the tenant id).
fn graph_object_id(state: &AppState) -> String {
    derived_guid(&format!("graph-sp:{}", state.identity.tenant_id))
}

/// Whether `key` (an object id or an appId) names Microsoft Graph's service principal.
fn is_graph(state: &AppState, key: &str) -> bool {
    key == graph_object_id(state) || key == GRAPH_APP_ID
}

fn graph_principal(state: &AppState) -> Value {
    let roles: Vec<Value> = app_roles()
        .iter()
        .map(
            |(id, value)| json!({"id": id, "value": value, "displayName": value, "allowedMemberTypes": ["Application"], "isEnabled": true}),
        )
        .collect();
    json!({"id": graph_object_id(state), "appId": GRAPH_APP_ID, "displayName": "Microsoft Graph", "servicePrincipalType": "Application", "appRoles": roles})
}

fn principal_value(row: &db::ServicePrincipalRow) -> Value {
    json!({"id": row.object_id, "appId": row.client_id, "createdDateTime": row.created, "displayName": row.name, "servicePrincipalType": "Application", "appRoles": []})
}

fn context(headers: &HeaderMap, what: &str) -> String {
    format!("{}/v1.0/$metadata#{what}", crate::graph::base_url(headers))
}

/// Query of the list: `$filter=appId eq '…'` only.
#[derive(Debug, serde::Deserialize)]
pub struct PrincipalQuery {
    #[serde(rename = "$filter")]
    filter: Option<String>,
}

/// `GET /v1.0/servicePrincipals` (`$filter=appId eq '…'`).
pub async fn list(state: AppState, access: Access, headers: HeaderMap, query: PrincipalQuery) -> Result<Response, GraphError> {
    access.require(Area::ApplicationsRead)?;
    let wanted = match query.filter.as_deref() {
        None => None,
        Some(filter) => {
            Some(filter.trim().strip_prefix("appId eq '").and_then(|rest| rest.strip_suffix('\'')).map(str::to_string).ok_or_else(
                || GraphError::new(StatusCode::BAD_REQUEST, "Request_UnsupportedQuery", "Only $filter=appId eq '…' is supported here."),
            )?)
        }
    };
    let mut values = Vec::new();
    if wanted.as_deref().is_none_or(|app| app == GRAPH_APP_ID) {
        values.push(graph_principal(&state));
    }
    let key = wanted.clone();
    let rows = state.db.read(move |sql| db::service_principals(sql, key.as_deref())).await?;
    values.extend(rows.iter().map(principal_value));
    Ok(Json(json!({"@odata.context": context(&headers, "servicePrincipals"), "value": values})).into_response())
}

/// `POST /v1.0/servicePrincipals` with `{"appId": …}`: the app's service principal.
pub async fn create(state: AppState, access: Access, body: crate::graph::Body) -> Result<Response, GraphError> {
    access.require(Area::ApplicationsWrite)?;
    let body = crate::graph::body_object(body)?;
    if let Some(other) = body.keys().find(|key| *key != "appId") {
        return Err(GraphError::bad_request(format!("Invalid property '{other}'.")));
    }
    let app_id = body.get("appId").and_then(Value::as_str).ok_or_else(|| GraphError::bad_request("appId is required."))?.to_string();
    let (object_id, now) = (crate::crypto::new_guid(), crate::now_rfc3339());
    let (lookup, object, created) = (app_id.clone(), object_id.clone(), now.clone());
    let made = state
        .db
        .call(move |sql| {
            if db::app(sql, &lookup)?.is_none() {
                return Ok(None);
            }
            Ok(Some(db::insert_service_principal(sql, &object, &lookup, &created)?))
        })
        .await?;
    match made {
        None => Err(GraphError::not_found(&app_id)),
        Some(false) => Err(GraphError::new(
            StatusCode::CONFLICT,
            "Request_MultipleObjectsWithSameKeyValue",
            "The service principal of this application already exists.",
        )),
        Some(true) => {
            state.record("Directory", "add service principal".into(), access.caller.clone(), app_id.clone(), "success").await;
            let key = app_id.clone();
            let rows = state.db.read(move |sql| db::service_principals(sql, Some(&key))).await?;
            let value = rows.first().map(principal_value).unwrap_or(Value::Null);
            Ok((StatusCode::CREATED, Json(value)).into_response())
        }
    }
}

/// `GET /v1.0/servicePrincipals/{id}` (object id or appId).
pub async fn get(state: AppState, access: Access, key: String) -> Result<Response, GraphError> {
    access.require(Area::ApplicationsRead)?;
    if is_graph(&state, &key) {
        return Ok(Json(graph_principal(&state)).into_response());
    }
    let lookup = key.clone();
    let rows = state.db.read(move |sql| db::service_principals(sql, Some(&lookup))).await?;
    rows.first().map(|row| Json(principal_value(row)).into_response()).ok_or_else(|| GraphError::not_found(&key))
}

fn assignment_id(principal: &str, role_id: &str) -> String {
    derived_guid(&format!("assignment:{principal}:{role_id}"))
}

fn assignment(state: &AppState, principal: &db::ServicePrincipalRow, role: &str) -> Option<Value> {
    let roles = app_roles();
    let (role_id, _) = roles.iter().find(|(_, value)| *value == role)?;
    Some(
        json!({"id": assignment_id(&principal.object_id, role_id), "appRoleId": role_id, "principalId": principal.object_id, "principalDisplayName": principal.name,
                "principalType": "ServicePrincipal", "resourceId": graph_object_id(state), "resourceDisplayName": "Microsoft Graph"}),
    )
}

fn roles_of(principal: &db::ServicePrincipalRow) -> Vec<String> {
    serde_json::from_str(&principal.roles).unwrap_or_default()
}

/// `GET /v1.0/servicePrincipals/{id}/appRoleAssignedTo` (on Graph: every grant) and
/// `…/appRoleAssignments` (on an app: its grants).
pub async fn assignments(state: AppState, access: Access, headers: HeaderMap, key: String) -> Result<Response, GraphError> {
    access.require(Area::ApplicationsRead)?;
    let graph = is_graph(&state, &key);
    let lookup = (!graph).then(|| key.clone());
    let rows = state.db.read(move |sql| db::service_principals(sql, lookup.as_deref())).await?;
    if !graph && rows.is_empty() {
        return Err(GraphError::not_found(&key));
    }
    let values: Vec<Value> =
        rows.iter().flat_map(|row| roles_of(row).into_iter().filter_map(|role| assignment(&state, row, &role))).collect();
    Ok(Json(json!({"@odata.context": context(&headers, "appRoleAssignments"), "value": values})).into_response())
}

fn require_grant(access: &Access) -> Result<(), GraphError> {
    if access.is_sync() {
        return Err(GraphError::denied());
    }
    access.require(Area::AppRoleAssignmentsWrite)
}

/// `POST /v1.0/servicePrincipals/{graph}/appRoleAssignedTo`.
pub async fn grant(state: AppState, access: Access, key: String, body: crate::graph::Body) -> Result<Response, GraphError> {
    require_grant(&access)?;
    let body = crate::graph::body_object(body)?;
    let text = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
    let graph = graph_object_id(&state);
    if !is_graph(&state, &key) {
        return Err(GraphError::bad_request("Application roles are granted on the Microsoft Graph service principal (this API's)."));
    }
    if text("resourceId").as_deref() != Some(graph.as_str()) {
        return Err(GraphError::bad_request(format!("resourceId must be the Microsoft Graph service principal, {graph}.")));
    }
    let role_id = text("appRoleId").ok_or_else(|| GraphError::bad_request("appRoleId is required."))?;
    let role = app_roles()
        .into_iter()
        .find(|(id, _)| id.eq_ignore_ascii_case(&role_id))
        .map(|(_, value)| value.to_string())
        .ok_or_else(|| GraphError::bad_request(format!("appRoleId {role_id} is not an application role of this API.")))?;
    let principal = text("principalId").ok_or_else(|| GraphError::bad_request("principalId is required."))?;
    let (lookup, wanted) = (principal.clone(), role.clone());
    let found = state
        .db
        .call(move |sql| {
            let Some(row) = db::service_principals(sql, Some(&lookup))?.into_iter().next() else { return Ok(None) };
            let mut roles = roles_of(&row);
            if !roles.contains(&wanted) {
                roles.push(wanted.clone());
                db::set_app_roles(sql, &row.client_id, &roles)?;
            }
            Ok(Some(row))
        })
        .await?
        .ok_or_else(|| GraphError::not_found(&principal))?;
    state.record("Directory", format!("grant application role {role}"), access.caller.clone(), found.client_id.clone(), "success").await;
    let value = assignment(&state, &found, &role).unwrap_or(Value::Null);
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

/// `DELETE /v1.0/servicePrincipals/{graph}/appRoleAssignedTo/{assignment}`.
pub async fn revoke(state: AppState, access: Access, key: String, assignment: String) -> Result<Response, GraphError> {
    require_grant(&access)?;
    if !is_graph(&state, &key) {
        return Err(GraphError::not_found(&key));
    }
    let target = assignment.clone();
    let removed = state
        .db
        .call(move |sql| {
            let known = app_roles();
            for row in db::service_principals(sql, None)? {
                let roles = roles_of(&row);
                let kept: Vec<String> = roles
                    .iter()
                    .filter(|role| {
                        known.iter().find(|(_, value)| value == role).is_none_or(|(id, _)| assignment_id(&row.object_id, id) != target)
                    })
                    .cloned()
                    .collect();
                if kept.len() != roles.len() {
                    db::set_app_roles(sql, &row.client_id, &kept)?;
                    return Ok(Some(row.client_id));
                }
            }
            Ok(None)
        })
        .await?
        .ok_or_else(|| GraphError::not_found(&assignment))?;
    state.record("Directory", "remove application role grant".into(), access.caller.clone(), removed, "success").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
