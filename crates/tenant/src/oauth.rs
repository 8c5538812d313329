//! Sign-in endpoints shaped like the Microsoft identity platform's, as `msal` and
//! `azure-identity` need them (see `ms-client-contract.md`): OpenID discovery per tenant, the
//! JWKS, the v2 token endpoint (client credentials) and user-realm discovery.

use axum::Form;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::odata::{GraphError, TokenEndpointError};

/// Lifetime of issued access tokens.
const TOKEN_SECONDS: i64 = 3600;

/// Whether `segment` names this tenant (for other modules).
pub(crate) fn is_tenant_segment(state: &AppState, segment: &str) -> bool {
    is_tenant(state, segment)
}

/// Whether `segment` names this tenant: its id or one of its domains.
fn is_tenant(state: &AppState, segment: &str) -> bool {
    segment.eq_ignore_ascii_case(&state.identity.tenant_id)
        || state.domains().iter().any(|domain| domain.eq_ignore_ascii_case(segment))
        || segment.eq_ignore_ascii_case("organizations")
        || segment.eq_ignore_ascii_case("common")
}

/// The issuer of every token: pinned to the configured authority, never the `Host` header.
pub(crate) fn issuer(state: &AppState) -> String {
    format!("{}/{}/v2.0", state.authority(), state.identity.tenant_id)
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub async fn openid_configuration(State(state): State<AppState>, Path(tenant): Path<String>) -> Response {
    if !is_tenant(&state, &tenant) {
        return GraphError::not_found(&tenant).into_response();
    }
    let base = format!("{}/{tenant}", state.authority());
    // Multi-tenant discovery (`/common`, `/organizations`) gives Microsoft's issuer template,
    // which relying parties fill in with the token's `tid`.
    let issuer = if ["common", "organizations"].iter().any(|multi| tenant.eq_ignore_ascii_case(multi)) {
        format!("{}/{{tenantid}}/v2.0", state.authority())
    } else {
        issuer(&state)
    };
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "userinfo_endpoint": format!("{}/oidc/userinfo", state.authority()),
        "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
        "frontchannel_logout_supported": false,
        // Exactly what is served.
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256"],
        "grant_types_supported": ["client_credentials", "password", "refresh_token", "authorization_code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "nonce", "oid", "tid", "name", "preferred_username", "ver"],
        "prompt_values_supported": ["none", "login", "select_account", "consent"],
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "tenant_region_scope": "WW",
        "cloud_instance_name": "isthmus.local",
    }))
    .into_response()
}

/// `GET`/`POST /oidc/userinfo` (Entra serves it on Graph's host): the signed-in user's claims,
/// for a user's Graph access token; `sub` is the ID token's.
pub async fn userinfo(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let claims = match crate::bearer_claims(&state, &headers) {
        Ok(claims) => claims,
        Err(err) => return err.into_response(),
    };
    if claims.get("idtyp").and_then(Value::as_str) != Some("user") {
        return GraphError::unauthenticated("userinfo needs a user's access token.").into_response();
    }
    let oid = claims.get("oid").and_then(Value::as_str).unwrap_or_default().to_string();
    let lookup = oid.clone();
    let user = match state.db.read(move |conn| crate::db::get(conn, crate::db::Kind::User, &lookup)).await {
        Ok(Some(user)) => user,
        Ok(None) => return GraphError::unauthenticated("The user of this token no longer exists.").into_response(),
        Err(err) => return GraphError::from(err).into_response(),
    };
    let text = |name: &str| user.get(name).cloned().unwrap_or(Value::Null);
    Json(json!({
        "sub": oid,
        "name": text("displayName"),
        "given_name": text("givenName"),
        "family_name": text("surname"),
        "email": text("mail"),
        "preferred_username": text("userPrincipalName"),
    }))
    .into_response()
}

/// `GET /{tenant}/discovery/v2.0/keys`.
pub async fn jwks(State(state): State<AppState>, Path(tenant): Path<String>) -> Response {
    if !is_tenant(&state, &tenant) {
        return GraphError::not_found(&tenant).into_response();
    }
    Json(state.signing.jwks()).into_response()
}

/// The token endpoint's form.
#[derive(Debug, Deserialize)]
pub struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
    scope: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
}

impl Drop for TokenForm {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        for secret in [
            &mut self.password,
            &mut self.client_secret,
            &mut self.client_assertion,
            &mut self.refresh_token,
            &mut self.code,
            &mut self.code_verifier,
        ]
        .into_iter()
        .flatten()
        {
            secret.zeroize();
        }
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`.
/// A source that has used its failed sign-ins of the minute gets 429 before anything is read
/// or written; malformed identifiers are refused before anything is written; each failure
/// counts against the source.
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    peer: Option<axum::Extension<crate::limits::PeerAddr>>,
    Form(form): Form<TokenForm>,
) -> Response {
    let (source, now) = (peer.map(|peer| peer.0.0.ip()), crate::unix_now());
    let grant = form.grant_type.clone().unwrap_or_default();
    if let Some(wait) = state.failures.blocked(source, now) {
        state.metrics.token(&grant, Some(("temporarily_unavailable", 50196)));
        return too_many_failures(wait);
    }
    let answer = match check_identifiers(&form) {
        Ok(()) => issue(&state, &headers, &tenant, form).await,
        Err(err) => Err(err),
    };
    state.metrics.token(&grant, answer.as_ref().err().map(|err| (err.error, err.code)));
    match answer {
        Ok(body) => {
            let mut response = Json(body).into_response();
            let headers = response.headers_mut();
            headers.insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
            headers.insert(axum::http::header::PRAGMA, axum::http::HeaderValue::from_static("no-cache"));
            response
        }
        Err(err) => {
            if err.status.is_client_error() {
                state.failures.failed(source, now);
            }
            err.into_response()
        }
    }
}

/// 429 for a source over its failed sign-ins, with when to come back.
pub(crate) fn too_many_failures(wait: u64) -> Response {
    let mut err = TokenEndpointError::new(
        "temporarily_unavailable",
        50196,
        format!("Too many failed sign-ins from this address; try again in {wait} seconds."),
    );
    err.status = axum::http::StatusCode::TOO_MANY_REQUESTS;
    let mut response = err.into_response();
    response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(wait));
    response
}

/// A username is a UPN within Entra's limits, or nothing is looked up (the client id is checked
/// with the client's authentication).
fn check_identifiers(form: &TokenForm) -> Result<(), TokenEndpointError> {
    if let Some(username) = form.username.as_deref()
        && !crate::limits::valid_username(username)
    {
        return Err(TokenEndpointError::new(
            "invalid_grant",
            50034,
            format!("The username is not a valid user principal name (at most {} characters).", crate::limits::MAX_UPN),
        ));
    }
    Ok(())
}

async fn issue(state: &AppState, headers: &HeaderMap, tenant: &str, form: TokenForm) -> Result<Value, TokenEndpointError> {
    if !is_tenant(state, tenant) {
        return Err(TokenEndpointError::new("invalid_request", 90002, format!("Tenant '{tenant}' not found.")));
    }
    let grant = form.grant_type.as_deref().unwrap_or_default();
    if !["client_credentials", "password", "refresh_token", "authorization_code"].contains(&grant) {
        return Err(TokenEndpointError::new(
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant}'."),
        ));
    }
    // Every grant authenticates its client first: a confidential client by its secret.
    let fields = crate::client_auth::ClientFields {
        id: form.client_id.as_deref(),
        secret: form.client_secret.as_deref(),
        assertion_type: form.client_assertion_type.as_deref(),
        assertion: form.client_assertion.as_deref(),
    };
    let presented = crate::client_auth::presented(headers, &fields)?;
    let client = match crate::client_auth::authenticate(state, &presented, grant).await {
        Ok(client) => client,
        Err(err) => {
            state
                .record("SignIn", format!("client authentication ({grant})"), presented.id.clone(), presented.id.clone(), "client refused")
                .await;
            return Err(err);
        }
    };
    match grant {
        "password" => crate::signin::password_grant(state, &form_fields(&form, &client)).await,
        "refresh_token" => crate::signin::refresh_grant(state, &form_fields(&form, &client)).await,
        "authorization_code" => {
            let field = |value: &Option<String>| value.clone().unwrap_or_default();
            crate::authorize::exchange(state, &client.id, &field(&form.code), &field(&form.redirect_uri), &field(&form.code_verifier)).await
        }
        _ => client_credentials(state, &client, form.scope.clone().unwrap_or_default()).await,
    }
}

/// The client-credentials grant for an authenticated confidential client.
async fn client_credentials(state: &AppState, client: &crate::client_auth::Client, scope: String) -> Result<Value, TokenEndpointError> {
    if !scope.split_whitespace().any(|scope| scope.ends_with("/.default")) {
        return Err(TokenEndpointError::new(
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier."
            ),
        ));
    }
    let client_id = client.id.clone();
    let now = crate::unix_now();
    let claims = json!({
        "aud": "https://graph.microsoft.com",
        "iss": issuer(state),
        "iat": now,
        "nbf": now,
        "exp": now + TOKEN_SECONDS,
        "tid": state.identity.tenant_id,
        "oid": client_id,
        "sub": client_id,
        "appid": client_id,
        "azp": client_id,
        "idtyp": "app",
        "roles": client.roles,
        "ver": "2.0",
    });
    let access_token = state.signing.sign(&claims).map_err(|err| TokenEndpointError::unavailable(&err))?;
    state.record("SignIn", "client credentials".into(), client_id.clone(), client_id.clone(), "success").await;
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": TOKEN_SECONDS,
        "ext_expires_in": TOKEN_SECONDS,
        "scope": scope,
        "access_token": access_token,
    }))
}

/// The user-flow fields of a token request, for its authenticated client.
fn form_fields(form: &TokenForm, client: &crate::client_auth::Client) -> crate::signin::UserGrant {
    crate::signin::UserGrant {
        client_id: client.id.clone(),
        scope: form.scope.clone().unwrap_or_default(),
        username: form.username.clone().unwrap_or_default(),
        password: zeroize::Zeroizing::new(form.password.clone().unwrap_or_default()),
        refresh_token: zeroize::Zeroizing::new(form.refresh_token.clone().unwrap_or_default()),
    }
}

/// `GET /common/userrealm/{upn}?api-version=1.0`: `Managed` for the tenant's domains,
/// `Unknown` otherwise (never 404: MSAL would stop asking for the whole process).
pub async fn user_realm(State(state): State<AppState>, Path(upn): Path<String>) -> Response {
    let domain = upn.rsplit_once('@').map(|(_, domain)| domain.to_lowercase()).unwrap_or_default();
    let account_type = state.authentication_of(&domain).unwrap_or_else(|| "Unknown".into());
    Json(json!({
        "ver": "1.0",
        "account_type": account_type,
        "domain_name": domain,
        "cloud_instance_name": "isthmus.local",
        "cloud_audience_urn": "urn:federation:MicrosoftOnline",
    }))
    .into_response()
}
