//! Directory roles (`/v1.0/directoryRoles`): the administrator roles a cloud user may hold.
//! The tenant knows a few of Entra's built-in roles, each activated with its template id as its
//! id. Holding one keeps a cloud account out of the sync's soft match (Entra's "Existing Admin
//! Role Conflict"): a synced object must never take over an administrator by matching a UPN or
//! an address.
//!
//! Assigning roles needs a directory write role and is refused to the sync service: the sync
//! writes directory objects, never privileges.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::odata::GraphError;
use crate::permissions::Area;
use crate::{Access, AppState, db};

/// The built-in roles: (template id, display name, description).
pub const ROLES: &[(&str, &str, &str)] = &[
    ("62e90394-69f5-4237-9190-012177145e10", "Global Administrator", "Can manage all aspects of the directory."),
    ("e8611ab8-c189-46e8-94e1-60213ab1f814", "Privileged Role Administrator", "Can manage role assignments."),
    ("fe930be7-5e62-47db-91af-98c3a49a38b1", "User Administrator", "Can manage all aspects of users and groups."),
    ("729827e3-9c14-49f7-bb1b-9608f156bbb8", "Helpdesk Administrator", "Can reset passwords for non-administrators."),
    ("8ac3fc64-6eca-42ea-9e69-59f4c7b60eb2", "Hybrid Identity Administrator", "Can manage directory synchronization settings."),
];

fn role(id: &str) -> Result<&'static (&'static str, &'static str, &'static str), GraphError> {
    ROLES.iter().find(|(template, _, _)| template.eq_ignore_ascii_case(id)).ok_or_else(|| GraphError::not_found(id))
}

fn role_value((template, name, description): &(&str, &str, &str)) -> Value {
    json!({"id": template, "roleTemplateId": template, "displayName": name, "description": description})
}

/// `GET /v1.0/directoryRoles`.
pub async fn list(access: Access, headers: HeaderMap) -> Result<Response, GraphError> {
    access.require(Area::RolesRead)?;
    let values: Vec<Value> = ROLES.iter().map(role_value).collect();
    let context = format!("{}/v1.0/$metadata#directoryRoles", crate::graph::base_url(&headers));
    Ok(Json(json!({"@odata.context": context, "value": values})).into_response())
}

/// `GET /v1.0/directoryRoles/{id}`.
pub async fn get(access: Access, id: String) -> Result<Response, GraphError> {
    access.require(Area::RolesRead)?;
    Ok(Json(role_value(role(&id)?)).into_response())
}

/// `GET /v1.0/directoryRoles/{id}/members`.
pub async fn members(state: AppState, access: Access, headers: HeaderMap, id: String) -> Result<Response, GraphError> {
    access.require(Area::RolesRead)?;
    let (template, _, _) = role(&id)?;
    let members = state.db.read(move |sql| db::role_members(sql, template)).await?;
    let values: Vec<Value> =
        members.into_iter().map(|(id, upn)| json!({"@odata.type": "#microsoft.graph.user", "id": id, "userPrincipalName": upn})).collect();
    let context = format!("{}/v1.0/$metadata#directoryObjects", crate::graph::base_url(&headers));
    Ok(Json(json!({"@odata.context": context, "value": values})).into_response())
}

/// Role assignments need `RoleManagement.ReadWrite.Directory` (or `Directory.ReadWrite.All`),
/// and never come from the sync service.
fn require_role_admin(access: &Access) -> Result<(), GraphError> {
    if access.is_sync() {
        return Err(GraphError::denied());
    }
    access.require(Area::RolesWrite)
}

/// `POST /v1.0/directoryRoles/{id}/members/$ref` with `{"@odata.id": ".../directoryObjects/{user}"}`.
pub async fn add_member(state: AppState, access: Access, id: String, body: crate::graph::Body) -> Result<Response, GraphError> {
    require_role_admin(&access)?;
    let (template, name, _) = role(&id)?;
    let member = crate::graph::reference_body(body)?;
    let for_db = member.clone();
    let added = state
        .db
        .call(move |sql| {
            let Some(user) = db::get(sql, db::Kind::User, &for_db)? else { return Ok(None) };
            // A synced account's password and attributes are mastered on-premises: holding a
            // role there would hand the cloud role to whoever controls the on-premises account.
            if user.get("onPremisesSyncEnabled").and_then(serde_json::Value::as_bool) == Some(true) {
                return Ok(Some(Err(())));
            }
            db::add_role_member(sql, template, &for_db).map(|added| Some(Ok(added)))
        })
        .await?;
    match added {
        None => Err(GraphError::not_found(&member)),
        Some(Err(())) => Err(GraphError::bad_request(
            "Administrator roles are held by cloud-only accounts: this user is synchronized from on-premises, \
             where its password and attributes are mastered.",
        )),
        Some(Ok(false)) => Err(GraphError::bad_request(
            "One or more added object references already exist for the following modified properties: 'members'.",
        )),
        Some(Ok(true)) => {
            state.record("Directory", format!("add member to role {name}"), access.caller.clone(), member, "success").await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}

/// `DELETE /v1.0/directoryRoles/{id}/members/{member}/$ref`.
pub async fn remove_member(state: AppState, access: Access, id: String, member: String) -> Result<Response, GraphError> {
    require_role_admin(&access)?;
    let (template, name, _) = role(&id)?;
    let for_db = member.clone();
    if !state.db.call(move |sql| db::remove_role_member(sql, template, &for_db)).await? {
        return Err(GraphError::not_found(&member));
    }
    state.record("Directory", format!("remove member from role {name}"), access.caller.clone(), member, "success").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
