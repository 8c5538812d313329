//! The Graph-compatible directory API under `/v1.0`: users (list with `$top`/`$select` and
//! absolute `@odata.nextLink` paging, get by id or userPrincipalName, create, update, delete).
//!
//! Every write is checked before anything is stored: unknown properties, wrong JSON types,
//! missing required properties, a UPN whose domain is not the tenant's, a weak password — each
//! is a 400 OData error naming the problem, and nothing changes.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::db::{self, Credential, Kind};
use crate::odata::GraphError;
use crate::{Access, AppState};

/// Properties a user has, with their JSON type; `id` is assigned by the service.
const USER_PROPERTIES: &[(&str, Type)] = &[
    ("accountEnabled", Type::Bool),
    ("displayName", Type::Str),
    ("givenName", Type::Str),
    ("surname", Type::Str),
    ("mail", Type::Str),
    ("mailNickname", Type::Str),
    ("userPrincipalName", Type::Str),
    ("jobTitle", Type::Str),
    ("department", Type::Str),
    ("companyName", Type::Str),
    ("employeeId", Type::Str),
    ("mobilePhone", Type::Str),
    ("officeLocation", Type::Str),
    ("usageLocation", Type::Str),
    ("preferredLanguage", Type::Str),
    ("businessPhones", Type::StrList),
    ("otherMails", Type::StrList),
    ("proxyAddresses", Type::StrList),
    ("onPremisesImmutableId", Type::Str),
    ("onPremisesSyncEnabled", Type::Bool),
    ("onPremisesSamAccountName", Type::Str),
    ("onPremisesDomainName", Type::Str),
    ("onPremisesSecurityIdentifier", Type::Str),
    ("onPremisesDistinguishedName", Type::Str),
    ("onPremisesLastSyncDateTime", Type::Str),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Bool,
    Str,
    StrList,
}

fn type_ok(kind: Type, value: &Value) -> bool {
    match kind {
        Type::Bool => value.is_boolean() || value.is_null(),
        Type::Str => value.is_string() || value.is_null(),
        Type::StrList => value.as_array().is_some_and(|items| items.iter().all(Value::is_string)),
    }
}

fn property(name: &str) -> Option<Type> {
    USER_PROPERTIES.iter().find(|(known, _)| *known == name).map(|(_, kind)| *kind)
}

/// `$top`, `$skiptoken`, `$select`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(rename = "$top")]
    top: Option<String>,
    #[serde(rename = "$skiptoken")]
    skiptoken: Option<String>,
    #[serde(rename = "$select")]
    select: Option<String>,
}

/// The `https://host[:port]` clients reached us at, for absolute links.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get("host").and_then(|host| host.to_str().ok()).unwrap_or("127.0.0.1");
    format!("https://{host}")
}

fn selection(select: Option<&str>) -> Result<Option<Vec<String>>, GraphError> {
    let Some(select) = select else { return Ok(None) };
    let mut names = Vec::new();
    for name in select.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        if name != "id" && property(name).is_none() {
            return Err(GraphError::bad_request(format!("Could not find a property named '{name}' on type 'microsoft.graph.user'.")));
        }
        names.push(name.to_string());
    }
    Ok(Some(names))
}

fn project(object: &Map<String, Value>, select: Option<&[String]>) -> Value {
    match select {
        None => {
            let mut out = Map::new();
            out.insert("id".into(), object.get("id").cloned().unwrap_or(Value::Null));
            for (name, _) in USER_PROPERTIES {
                out.insert(
                    (*name).into(),
                    object.get(*name).cloned().unwrap_or(if property(name) == Some(Type::StrList) { json!([]) } else { Value::Null }),
                );
            }
            Value::Object(out)
        }
        Some(names) => {
            let mut out = Map::new();
            for name in names {
                out.insert(name.clone(), object.get(name).cloned().unwrap_or(Value::Null));
            }
            Value::Object(out)
        }
    }
}

/// `GET /v1.0/users`.
pub async fn list_users(
    State(state): State<AppState>,
    access: Access,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response, GraphError> {
    access.require_read()?;
    let top = match &query.top {
        None => 100,
        Some(text) => match text.parse::<usize>() {
            Ok(top) if (1..=999).contains(&top) => top,
            _ => return Err(GraphError::bad_request(format!("Invalid value '{text}' for $top: give 1 to 999."))),
        },
    };
    let select = selection(query.select.as_deref())?;
    let after = match &query.skiptoken {
        None => None,
        Some(token) => Some(decode_skiptoken(token)?),
    };
    let mut page = state.db.call(move |conn| db::list(conn, Kind::User, after.as_deref(), top + 1, &|_| true)).await?;
    let more = page.len() > top;
    page.truncate(top);
    let values: Vec<Value> = page.iter().map(|object| project(object, select.as_deref())).collect();
    let base = base_url(&headers);
    let mut body = json!({"@odata.context": format!("{base}/v1.0/$metadata#users"), "value": values});
    if more && let Some(last) = page.last().and_then(|object| object.get("id")).and_then(Value::as_str) {
        let mut link = format!("{base}/v1.0/users?$top={top}&$skiptoken={}", encode_skiptoken(last));
        if let Some(select) = &query.select {
            link.push_str(&format!("&$select={select}"));
        }
        body["@odata.nextLink"] = Value::String(link);
    }
    Ok(Json(body).into_response())
}

fn encode_skiptoken(last_id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last_id)
}

fn decode_skiptoken(token: &str) -> Result<String, GraphError> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| GraphError::bad_request("Invalid $skiptoken."))
}

/// `GET /v1.0/users/{id or userPrincipalName}`.
pub async fn get_user(
    State(state): State<AppState>,
    access: Access,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, GraphError> {
    access.require_read()?;
    let select = selection(query.select.as_deref())?;
    let lookup = key.clone();
    let found = state.db.call(move |conn| db::get(conn, Kind::User, &lookup)).await?;
    let object = found.ok_or_else(|| GraphError::not_found(&key))?;
    let mut body = project(&object, select.as_deref());
    body["@odata.context"] = Value::String(format!("{}/v1.0/$metadata#users/$entity", base_url(&headers)));
    Ok(Json(body).into_response())
}

/// A request body, or Graph's error when it could not be read (too large: 413).
pub type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// Reads a request body as a JSON object, with Graph's errors for anything else.
fn body_object(body: Body) -> Result<Map<String, Value>, GraphError> {
    let body = body.map_err(|rejection| GraphError {
        status: rejection.status(),
        code: if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE { "Request_EntityTooLarge" } else { "Request_BadRequest" },
        message: rejection.body_text(),
    })?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GraphError::bad_request("The request body must be a JSON object.")),
        Err(err) => Err(GraphError::bad_request(format!("Unable to read JSON request payload: {err}"))),
    }
}

/// Checks properties of a create or update; returns the password profile, if any.
fn check_user_properties(state: &AppState, body: &mut Map<String, Value>) -> Result<Option<(String, bool)>, GraphError> {
    if let Some(kind) = body.remove("@odata.type")
        && kind.as_str() != Some("#microsoft.graph.user")
    {
        return Err(GraphError::bad_request(format!("A resource of type {kind} cannot be written as a user.")));
    }
    let password = match body.remove("passwordProfile") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut profile)) => {
            let password = match profile.remove("password") {
                Some(Value::String(password)) => password,
                _ => return Err(GraphError::bad_request("passwordProfile.password must be a string.")),
            };
            let force = profile.remove("forceChangePasswordNextSignIn").and_then(|value| value.as_bool()).unwrap_or(true);
            profile.remove("forceChangePasswordNextSignInWithMfa");
            if let Some(unknown) = profile.keys().next() {
                return Err(GraphError::bad_request(format!("Invalid property '{unknown}' in passwordProfile.")));
            }
            check_password(&password)?;
            Some((password, force))
        }
        Some(_) => return Err(GraphError::bad_request("passwordProfile must be an object.")),
    };
    for (name, value) in body.iter() {
        match property(name) {
            None if name == "id" => return Err(GraphError::bad_request("Property 'id' is read-only.")),
            None => return Err(GraphError::bad_request(format!("Invalid property '{name}'."))),
            Some(kind) if !type_ok(kind, value) => {
                return Err(GraphError::bad_request(format!("Invalid value for property '{name}': expected {kind:?}.")));
            }
            Some(_) => {}
        }
    }
    if let Some(upn) = body.get("userPrincipalName").and_then(Value::as_str) {
        check_upn(state, upn)?;
    }
    if let Some(nickname) = body.get("mailNickname").and_then(Value::as_str)
        && (nickname.is_empty() || nickname.len() > 64 || nickname.chars().any(|c| c.is_whitespace() || "@()\\[]\";:<>,".contains(c)))
    {
        return Err(GraphError::bad_request(format!(
            "Invalid value specified for property 'mailNickname' of resource 'User': {nickname:?}."
        )));
    }
    Ok(password)
}

/// A UPN is `local@domain`, the local part of allowed characters, the domain one of the tenant's.
fn check_upn(state: &AppState, upn: &str) -> Result<(), GraphError> {
    let bad = || GraphError::bad_request(format!("Invalid value specified for property 'userPrincipalName' of resource 'User': {upn:?}."));
    let Some((local, domain)) = upn.rsplit_once('@') else { return Err(bad()) };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c.is_ascii_alphanumeric() || "'.-_!#^~&+".contains(c));
    if !local_ok {
        return Err(bad());
    }
    if !state.domains().iter().any(|known| known.eq_ignore_ascii_case(domain)) {
        return Err(GraphError::bad_request(format!(
            "The domain portion of the userPrincipalName property is invalid. You must use one of the verified domain names in your organization: {domain:?}."
        )));
    }
    Ok(())
}

/// Entra's rule: 8 to 256 characters, three of lower case, upper case, digits and symbols.
fn check_password(password: &str) -> Result<(), GraphError> {
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ];
    let length = password.chars().count();
    if !(8..=256).contains(&length) || classes.iter().filter(|class| **class).count() < 3 {
        return Err(GraphError::bad_request(
            "The specified password does not comply with password complexity requirements: 8 to 256 characters, and three of lower case, upper case, digits and symbols.",
        ));
    }
    Ok(())
}

/// `POST /v1.0/users`.
pub async fn create_user(State(state): State<AppState>, access: Access, headers: HeaderMap, body: Body) -> Result<Response, GraphError> {
    access.require_write()?;
    let mut object = body_object(body)?;
    let password = check_user_properties(&state, &mut object)?;
    for required in ["accountEnabled", "displayName", "mailNickname", "userPrincipalName"] {
        if object.get(required).is_none_or(Value::is_null) {
            return Err(GraphError::bad_request(format!("Property '{required}' is required when creating the user.")));
        }
    }
    let synced = object.get("onPremisesImmutableId").is_some_and(|id| !id.is_null());
    if password.is_none() && !synced {
        return Err(GraphError::bad_request("Property 'passwordProfile' is required when creating a cloud-only user."));
    }
    let id = crate::crypto::new_guid();
    object.insert("id".into(), Value::String(id.clone()));
    let iterations = state.password_iterations;
    let credential = password.map(|(password, _)| {
        let password = zeroize::Zeroizing::new(password);
        let (salt, hash) = crate::crypto::password_hash(&password, iterations);
        Credential { salt, hash, iterations }
    });
    let stored = object.clone();
    state.db.call(move |conn| db::insert(conn, Kind::User, &stored, credential.as_ref())).await?;
    tracing::info!(target: "audit", operation = "create user", id, by = access.caller, "directory write");
    let mut body = project(&object, None);
    body["@odata.context"] = Value::String(format!("{}/v1.0/$metadata#users/$entity", base_url(&headers)));
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `PATCH /v1.0/users/{id or userPrincipalName}`.
pub async fn update_user(
    State(state): State<AppState>,
    access: Access,
    Path(key): Path<String>,
    body: Body,
) -> Result<Response, GraphError> {
    access.require_write()?;
    let mut patch = body_object(body)?;
    if patch.contains_key("passwordProfile") {
        return Err(GraphError::bad_request("Changing a password through PATCH is not supported yet; delete and create the user."));
    }
    check_user_properties(&state, &mut patch)?;
    let lookup = key.clone();
    let updated = state
        .db
        .call(move |conn| {
            let Some(mut object) = db::get(conn, Kind::User, &lookup)? else { return Ok(None) };
            for (name, value) in patch {
                object.insert(name, value);
            }
            Ok(db::update(conn, Kind::User, &object)?.then_some(object))
        })
        .await?;
    let object = updated.ok_or_else(|| GraphError::not_found(&key))?;
    tracing::info!(target: "audit", operation = "update user", id = ?object.get("id"), by = access.caller, "directory write");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /v1.0/users/{id or userPrincipalName}`.
pub async fn delete_user(State(state): State<AppState>, access: Access, Path(key): Path<String>) -> Result<Response, GraphError> {
    access.require_write()?;
    let lookup = key.clone();
    let deleted = state
        .db
        .call(move |conn| {
            let Some(object) = db::get(conn, Kind::User, &lookup)? else { return Ok(false) };
            let id = object.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            db::delete(conn, Kind::User, &id)
        })
        .await?;
    if !deleted {
        return Err(GraphError::not_found(&key));
    }
    tracing::info!(target: "audit", operation = "delete user", key, by = access.caller, "directory write");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_need_three_classes() {
        assert!(check_password("Passw0rd").is_ok());
        assert!(check_password("password").is_err());
        assert!(check_password("Pa1!").is_err(), "too short");
        assert!(check_password("PASSWORD1!").is_ok());
    }

    #[test]
    fn select_names_unknown_properties() {
        assert!(selection(Some("id,displayName")).is_ok());
        let err = selection(Some("displayName,colour")).unwrap_err();
        assert!(err.message.contains("colour"));
    }
}
