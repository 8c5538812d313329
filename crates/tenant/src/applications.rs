//! App registrations through Graph: `/v1.0/applications` — create, list, get, update, delete,
//! `addPassword` (the secret shown once) and `removePassword`; `web` and `publicClient` redirect
//! URIs, `isFallbackPublicClient` (a public client: no secret, user flows only) and
//! `keyCredentials` (certificates for `private_key_jwt`). Every write is audited.
//!
//! The registration the token endpoint reads stays in `apps` (with `app_redirects`,
//! `app_certificates`, `app_passwords`); the application object keeps what Graph shows. App
//! roles are granted on service principals (`service_principals`); an application made here
//! starts with none.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::odata::GraphError;
use crate::permissions::Area;
use crate::{Access, AppState, db};

/// Days a secret from `addPassword` lives unless `endDateTime` says otherwise (Entra: 2 years).
const PASSWORD_DAYS: i64 = 730;
/// Most secrets and certificates one application holds.
const MAX_CREDENTIALS: usize = 16;
/// Most redirect URIs of one kind.
const MAX_REDIRECTS: usize = 256;

/// The application object of an app registered outside Graph (the bootstrap admin app, the
/// quickstart's, a test's): what Graph shows for it.
pub(crate) fn object_for(sql: &mut dyn crate::sql::Sql, client_id: &str, name: &str, public: bool) -> Result<(), db::DbError> {
    let document = json!({"displayName": name, "signInAudience": "AzureADMyOrg", "isFallbackPublicClient": public,
                          "web": {"redirectUris": []}, "publicClient": {"redirectUris": []},
                          "passwordCredentials": if public { json!([]) } else { json!([{"keyId": null, "displayName": "the secret given when it was registered"}]) },
                          "keyCredentials": [], "createdDateTime": crate::now_rfc3339()});
    db::insert_application(sql, &crate::crypto::new_guid(), client_id, &document.to_string())
}

/// What a create or update may set.
struct Settings {
    display_name: Option<String>,
    web: Option<Vec<String>>,
    public_client: Option<Vec<String>>,
    fallback_public: Option<bool>,
    certificates: Option<Vec<Certificate>>,
}

/// A certificate of `keyCredentials`.
struct Certificate {
    sha256: String,
    sha1: String,
    /// Base64 DER.
    der: String,
    name: String,
}

fn redirect_list(body: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, GraphError> {
    let Some(value) = body.get(name) else { return Ok(None) };
    let bad = || GraphError::bad_request(format!("{name} must be {{\"redirectUris\": [absolute URIs]}}."));
    let object = value.as_object().ok_or_else(bad)?;
    if let Some(other) = object.keys().find(|key| *key != "redirectUris") {
        return Err(GraphError::bad_request(format!("Invalid property '{other}' in {name}.")));
    }
    let uris = object.get("redirectUris").and_then(Value::as_array).ok_or_else(bad)?;
    if uris.len() > MAX_REDIRECTS {
        return Err(GraphError::bad_request(format!("At most {MAX_REDIRECTS} redirect URIs in {name}.")));
    }
    let mut out = Vec::new();
    for uri in uris {
        let text = uri.as_str().ok_or_else(bad)?;
        let parsed = url::Url::parse(text).map_err(|err| GraphError::bad_request(format!("Redirect URI {text:?}: {err}.")))?;
        let loopback = parsed.scheme() == "http" && matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        if text.len() > 256
            || !(parsed.scheme() == "https"
                || loopback
                || (name == "publicClient" && !matches!(parsed.scheme(), "http" | "javascript" | "data")))
            || !parsed.username().is_empty()
            || parsed.password().is_some()
            || parsed.fragment().is_some()
        {
            return Err(GraphError::bad_request(format!(
                "Redirect URI {text:?} is not allowed: https (or http on loopback), at most 256 characters, no userinfo or fragment."
            )));
        }
        out.push(text.to_string());
    }
    Ok(Some(out))
}

fn certificates(body: &Map<String, Value>) -> Result<Option<Vec<Certificate>>, GraphError> {
    let Some(value) = body.get("keyCredentials") else { return Ok(None) };
    let list = value.as_array().ok_or_else(|| GraphError::bad_request("keyCredentials must be an array."))?;
    if list.len() > MAX_CREDENTIALS {
        return Err(GraphError::bad_request(format!("At most {MAX_CREDENTIALS} keyCredentials.")));
    }
    let mut out = Vec::new();
    for (index, item) in list.iter().enumerate() {
        let bad = |why: &str| GraphError::bad_request(format!("keyCredentials[{index}]: {why}."));
        let item = item.as_object().ok_or_else(|| bad("not an object"))?;
        if item.get("type").and_then(Value::as_str) != Some("AsymmetricX509Cert")
            || item.get("usage").and_then(Value::as_str) != Some("Verify")
        {
            return Err(bad("only type AsymmetricX509Cert with usage Verify is supported"));
        }
        let der = item
            .get("key")
            .and_then(Value::as_str)
            .and_then(|key| base64::engine::general_purpose::STANDARD.decode(key).ok())
            .ok_or_else(|| bad("key must be the certificate's DER, base64"))?;
        let parsed = rustls::pki_types::CertificateDer::from(der.as_slice());
        webpki::EndEntityCert::try_from(&parsed).map_err(|_| bad("key is not an X.509 certificate"))?;
        let name = item.get("displayName").and_then(Value::as_str).unwrap_or_default().chars().take(256).collect();
        let (sha256, sha1) = crate::crypto::thumbprints(&der);
        out.push(Certificate { sha256, sha1, der: base64::engine::general_purpose::STANDARD.encode(&der), name });
    }
    Ok(Some(out))
}

fn settings(body: Map<String, Value>) -> Result<Settings, GraphError> {
    const KNOWN: &[&str] = &["displayName", "web", "publicClient", "isFallbackPublicClient", "keyCredentials", "signInAudience"];
    if let Some(other) = body.keys().find(|key| !KNOWN.contains(&key.as_str())) {
        return Err(GraphError::bad_request(format!("Invalid property '{other}'.")));
    }
    let display_name = match body.get("displayName") {
        None => None,
        Some(Value::String(name)) if !name.trim().is_empty() && name.chars().count() <= 256 => Some(name.clone()),
        Some(_) => return Err(GraphError::bad_request("displayName must be 1 to 256 characters.")),
    };
    if let Some(audience) = body.get("signInAudience")
        && audience.as_str() != Some("AzureADMyOrg")
    {
        return Err(GraphError::bad_request("signInAudience: only AzureADMyOrg (this tenant) is supported."));
    }
    let fallback_public = match body.get("isFallbackPublicClient") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(flag)) => Some(*flag),
        Some(_) => return Err(GraphError::bad_request("isFallbackPublicClient must be true or false.")),
    };
    Ok(Settings {
        display_name,
        web: redirect_list(&body, "web")?,
        public_client: redirect_list(&body, "publicClient")?,
        fallback_public,
        certificates: certificates(&body)?,
    })
}

/// The document Graph shows (without secrets or keys).
fn shown(object_id: &str, client_id: &str, data: &str) -> Value {
    let mut value: Value = serde_json::from_str(data).unwrap_or_else(|_| json!({}));
    value["id"] = Value::String(object_id.to_string());
    value["appId"] = Value::String(client_id.to_string());
    value
}

fn context(headers: &HeaderMap) -> String {
    format!("{}/v1.0/$metadata#applications", crate::graph::base_url(headers))
}

/// Applies `settings` to the stored registration and document, in one transaction.
fn apply(sql: &mut dyn crate::sql::Sql, client_id: &str, document: &mut Value, settings: &Settings) -> Result<(), db::DbError> {
    if let Some(name) = &settings.display_name {
        document["displayName"] = Value::String(name.clone());
    }
    if let Some(web) = &settings.web {
        document["web"] = json!({"redirectUris": web});
    }
    if let Some(public) = &settings.public_client {
        document["publicClient"] = json!({"redirectUris": public});
    }
    if settings.web.is_some() || settings.public_client.is_some() {
        let mut all: Vec<String> =
            document["web"]["redirectUris"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
        all.extend(document["publicClient"]["redirectUris"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string));
        db::set_app_redirects(sql, client_id, &all)?;
    }
    if let Some(flag) = settings.fallback_public {
        document["isFallbackPublicClient"] = Value::Bool(flag);
        sql.execute("UPDATE apps SET public_client = ?2 WHERE client_id = ?1", &[client_id.into(), i64::from(flag).into()])?;
    }
    if let Some(list) = &settings.certificates {
        let stored: Vec<(String, String, String)> =
            list.iter().map(|cert| (cert.sha256.clone(), cert.sha1.clone(), cert.der.clone())).collect();
        db::set_app_certificates(sql, client_id, &stored)?;
        document["keyCredentials"] = Value::Array(
            list.iter()
                .map(|cert| {
                    json!({"keyId": cert.sha256.get(..32).unwrap_or_default(), "type": "AsymmetricX509Cert", "usage": "Verify",
                           "displayName": cert.name, "customKeyIdentifier": cert.sha1.to_uppercase(), "key": null})
                })
                .collect(),
        );
    }
    Ok(())
}

/// `POST /v1.0/applications`.
pub async fn create(state: AppState, access: Access, headers: HeaderMap, body: crate::graph::Body) -> Result<Response, GraphError> {
    access.require(Area::ApplicationsWrite)?;
    let settings = settings(crate::graph::body_object(body)?)?;
    let name = settings.display_name.clone().ok_or_else(|| GraphError::bad_request("Property 'displayName' is required."))?;
    let (object_id, client_id) = (crate::crypto::new_guid(), crate::crypto::new_guid());
    let mut document = json!({"displayName": name, "signInAudience": "AzureADMyOrg", "isFallbackPublicClient": false,
                              "web": {"redirectUris": []}, "publicClient": {"redirectUris": []},
                              "passwordCredentials": [], "keyCredentials": [], "createdDateTime": crate::now_rfc3339()});
    let (object, client) = (object_id.clone(), client_id.clone());
    let stored = state
        .db
        .call(move |sql| {
            db::insert_app(sql, &client, &name, &[], &[])?;
            apply(sql, &client, &mut document, &settings)?;
            db::insert_application(sql, &object, &client, &document.to_string())?;
            Ok(document)
        })
        .await?;
    state.record("Directory", "add application".into(), access.caller.clone(), client_id.clone(), "success").await;
    let mut body = shown(&object_id, &client_id, &stored.to_string());
    body["@odata.context"] = Value::String(format!("{}/$entity", context(&headers)));
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1.0/applications`.
pub async fn list(state: AppState, access: Access, headers: HeaderMap) -> Result<Response, GraphError> {
    access.require(Area::ApplicationsRead)?;
    let rows = state.db.read(db::applications).await?;
    let value: Vec<Value> = rows.iter().map(|(object, client, data)| shown(object, client, data)).collect();
    Ok(Json(json!({"@odata.context": context(&headers), "value": value})).into_response())
}

async fn find(state: &AppState, key: &str) -> Result<(String, String, String), GraphError> {
    let lookup = key.to_string();
    state.db.read(move |sql| db::application(sql, &lookup)).await?.ok_or_else(|| GraphError::not_found(key))
}

/// `GET /v1.0/applications/{id}` (the object id, or the appId).
pub async fn get(state: AppState, access: Access, key: String) -> Result<Response, GraphError> {
    access.require(Area::ApplicationsRead)?;
    let (object, client, data) = find(&state, &key).await?;
    Ok(Json(shown(&object, &client, &data)).into_response())
}

/// `PATCH /v1.0/applications/{id}`.
pub async fn update(state: AppState, access: Access, key: String, body: crate::graph::Body) -> Result<Response, GraphError> {
    access.require(Area::ApplicationsWrite)?;
    let settings = settings(crate::graph::body_object(body)?)?;
    let (object, client, data) = find(&state, &key).await?;
    if settings.fallback_public == Some(true) && !data_value(&data)["passwordCredentials"].as_array().is_none_or(Vec::is_empty) {
        return Err(GraphError::bad_request("A public client holds no secrets: remove its passwordCredentials first."));
    }
    let (object_for_db, client_for_db) = (object.clone(), client.clone());
    state
        .db
        .call(move |sql| {
            let mut document = data_value(&data);
            apply(sql, &client_for_db, &mut document, &settings)?;
            db::update_application(sql, &object_for_db, &document.to_string())
        })
        .await?;
    state.record("Directory", "update application".into(), access.caller.clone(), client, "success").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn data_value(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|_| json!({}))
}

/// `DELETE /v1.0/applications/{id}`: the app, its secrets, certificates, redirect URIs and
/// refresh tokens.
pub async fn delete(state: AppState, access: Access, key: String) -> Result<Response, GraphError> {
    access.require(Area::ApplicationsWrite)?;
    let (_, client, _) = find(&state, &key).await?;
    let target = client.clone();
    state.db.call(move |sql| db::delete_app(sql, &target)).await?;
    state.record("Directory", "delete application".into(), access.caller.clone(), client, "success").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1.0/applications/{id}/addPassword`: a new client secret, shown once (`secretText`).
pub async fn add_password(state: AppState, access: Access, key: String, body: crate::graph::Body) -> Result<Response, GraphError> {
    access.require(Area::ApplicationsWrite)?;
    let request = crate::graph::body_object(body)?;
    let credential = match request.get("passwordCredential") {
        None => Map::new(),
        Some(Value::Object(credential)) => credential.clone(),
        Some(_) => return Err(GraphError::bad_request("passwordCredential must be an object.")),
    };
    let name: String = credential.get("displayName").and_then(Value::as_str).unwrap_or_default().chars().take(256).collect();
    let now = crate::unix_now();
    let expires = match credential.get("endDateTime").and_then(Value::as_str) {
        None => now + PASSWORD_DAYS * 86_400,
        Some(text) => time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map(|when| when.unix_timestamp())
            .ok()
            .filter(|when| *when > now && *when <= now + PASSWORD_DAYS * 86_400)
            .ok_or_else(|| GraphError::bad_request("endDateTime must be an RFC 3339 time in the next two years."))?,
    };
    let (object, client, data) = find(&state, &key).await?;
    let mut document = data_value(&data);
    if document["isFallbackPublicClient"] == Value::Bool(true) {
        return Err(GraphError::bad_request("A public client (isFallbackPublicClient) holds no secrets."));
    }
    if document["passwordCredentials"].as_array().is_some_and(|list| list.len() >= MAX_CREDENTIALS) {
        return Err(GraphError::bad_request(format!("At most {MAX_CREDENTIALS} secrets; remove one first.")));
    }
    let (secret, key_id) = (crate::crypto::new_secret(), crate::crypto::new_guid());
    let hash = base64::engine::general_purpose::STANDARD.encode(crate::crypto::secret_hash(&secret));
    let shown_credential = json!({"keyId": key_id, "displayName": name, "hint": secret.chars().take(3).collect::<String>(),
                                  "startDateTime": crate::rfc3339(now), "endDateTime": crate::rfc3339(expires)});
    if let Some(list) = document["passwordCredentials"].as_array_mut() {
        list.push(shown_credential.clone());
    } else {
        document["passwordCredentials"] = json!([shown_credential.clone()]);
    }
    let (client_for_db, id_for_db) = (client.clone(), key_id.clone());
    state
        .db
        .call(move |sql| {
            db::insert_app_password(sql, &client_for_db, &id_for_db, &hash, expires)?;
            db::update_application(sql, &object, &document.to_string())
        })
        .await?;
    state.record("Directory", "add application secret".into(), access.caller.clone(), client, "success").await;
    let mut answer = shown_credential;
    answer["secretText"] = Value::String(secret.to_string());
    Ok(Json(answer).into_response())
}

/// `POST /v1.0/applications/{id}/removePassword` with `{"keyId": …}`.
pub async fn remove_password(state: AppState, access: Access, key: String, body: crate::graph::Body) -> Result<Response, GraphError> {
    access.require(Area::ApplicationsWrite)?;
    let request = crate::graph::body_object(body)?;
    let key_id = request.get("keyId").and_then(Value::as_str).ok_or_else(|| GraphError::bad_request("keyId is required."))?.to_string();
    let (object, client, data) = find(&state, &key).await?;
    let mut document = data_value(&data);
    if let Some(list) = document["passwordCredentials"].as_array_mut() {
        list.retain(|credential| credential["keyId"].as_str() != Some(key_id.as_str()));
    }
    let (client_for_db, id_for_db) = (client.clone(), key_id.clone());
    let removed = state
        .db
        .call(move |sql| {
            let removed = db::delete_app_password(sql, &client_for_db, &id_for_db)?;
            db::update_application(sql, &object, &document.to_string())?;
            Ok(removed)
        })
        .await?;
    if !removed {
        return Err(GraphError::not_found(&key_id));
    }
    state.record("Directory", "remove application secret".into(), access.caller.clone(), client, "success").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
