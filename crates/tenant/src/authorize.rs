//! The authorization-code flow with PKCE: `GET /{tenant}/oauth2/v2.0/authorize` shows a simple
//! login page, its POST checks the password (lockout, the domain's sign-in method) and redirects
//! to the app's registered redirect URI with a one-time code; the token endpoint exchanges the
//! code (`grant_type=authorization_code`) for tokens when the `code_verifier` matches the S256
//! challenge.
//!
//! Redirect URIs must be registered for the app (`Tenant::register_app_redirect`) and match
//! exactly; only a registered `http` loopback URI (`localhost`, `127.0.0.1`, `[::1]`) matches on
//! any port (RFC 8252 §7.3), and URIs with userinfo or a fragment never match.
//! Codes live ten minutes in the database (only their SHA-256; any tenant process redeems them)
//! and are used once. The page escapes everything it echoes and
//! forbids framing and scripts.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;
use crate::odata::TokenEndpointError;

/// What an authorization code stands for.
#[derive(Clone, Serialize, Deserialize)]
pub struct Grant {
    client_id: String,
    redirect_uri: String,
    user_id: String,
    scope: String,
    challenge: String,
    /// The authorize request's `nonce`, for the ID token.
    #[serde(default)]
    nonce: Option<String>,
    /// When the user entered their password (Unix seconds), for `auth_time`.
    #[serde(default)]
    auth_time: Option<i64>,
}

/// The browser session's cookie: the tenant's single sign-on, eight hours.
const SESSION_COOKIE: &str = "isthmus_session";
const SESSION_SECONDS: i64 = 8 * 3600;

/// The session id in a request's cookies, if any.
fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|value| value.to_str().ok()).flat_map(|value| value.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == SESSION_COOKIE && !value.is_empty()).then(|| value.to_string())
    })
}

/// The live session of a request's cookie: its user (still enabled) and sign-in time.
async fn current_session(state: &AppState, headers: &axum::http::HeaderMap) -> Option<(serde_json::Map<String, Value>, i64)> {
    let id = session_cookie(headers)?;
    let (key, now) = (code_key(&id), crate::unix_now());
    let (user_id, auth_time) = state.db.read(move |sql| crate::db::session(sql, &key, now)).await.ok()??;
    let user = state.db.read(move |sql| crate::db::get(sql, crate::db::Kind::User, &user_id)).await.ok()??;
    (user.get("accountEnabled").and_then(Value::as_bool) == Some(true)).then_some((user, auth_time))
}

/// How long a code may wait to be redeemed.
const CODE_LIFETIME: i64 = 600;

fn code_key(code: &str) -> String {
    B64URL.encode(crate::crypto::secret_hash(code))
}

/// Stores a grant; returns its one-time code.
async fn issue(state: &AppState, grant: &Grant) -> Result<String, crate::db::DbError> {
    let code = B64URL.encode(crate::crypto::random_bytes(32));
    let (key, data, now) = (code_key(&code), serde_json::to_string(grant).unwrap_or_default(), crate::unix_now());
    state.db.call(move |sql| crate::db::insert_code(sql, &key, &data, now + CODE_LIFETIME, now)).await?;
    Ok(code)
}

/// The grant of `code`, removed (a code is used once); `None` when unknown, used or expired.
async fn take(state: &AppState, code: &str) -> Result<Option<Grant>, crate::db::DbError> {
    let (key, now) = (code_key(code), crate::unix_now());
    let data = state.db.call(move |sql| crate::db::take_code(sql, &key, now)).await?;
    Ok(data.and_then(|data| serde_json::from_str(&data).ok()))
}

/// The authorize request's parameters (query on GET, form on POST).
#[derive(Debug, Deserialize, Default)]
pub struct AuthorizeParams {
    client_id: Option<String>,
    response_type: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    nonce: Option<String>,
    /// `query` (the default for codes), `fragment` or `form_post`.
    response_mode: Option<String>,
    /// `none` (answer without showing anything), `login`, `select_account`, `consent`.
    prompt: Option<String>,
    /// Prefills the user name.
    login_hint: Option<String>,
    /// Seconds since the password was entered beyond which it must be entered again.
    max_age: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Drop for AuthorizeParams {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        if let Some(password) = &mut self.password {
            password.zeroize();
        }
    }
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            other => other.to_string(),
        })
        .collect()
}

fn page(status: StatusCode, body: String) -> Response {
    let mut response = (status, Html(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_page(message: &str) -> Response {
    page(StatusCode::BAD_REQUEST, format!("<!doctype html><title>Sign-in error</title><p>{}</p>", escape(message)))
}

/// Whether `requested` matches one of the app's registered redirect URIs: the exact string of
/// a registered URI, parsed by a real URL parser and refused with userinfo or a fragment; the
/// one freedom (RFC 8252 §7.3) is the port of a registered `http` loopback URI — host exactly
/// `localhost`, `127.0.0.1` or `[::1]`, nothing else in the authority — compared by putting the
/// requested port into the registered URI and comparing the whole string again.
fn redirect_allowed(requested: &str, registered: &[String]) -> bool {
    let Ok(parsed) = url::Url::parse(requested) else { return false };
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.fragment().is_some() || requested.contains('#') {
        return false;
    }
    registered.iter().any(|uri| {
        if uri == requested {
            return true;
        }
        let Ok(mut loopback) = url::Url::parse(uri) else { return false };
        let is_loopback = |url: &url::Url| {
            url.scheme() == "http"
                && url.username().is_empty()
                && url.password().is_none()
                && matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
        };
        if !is_loopback(&loopback) || !is_loopback(&parsed) || loopback.host_str() != parsed.host_str() {
            return false;
        }
        loopback.set_port(parsed.port()).is_ok() && loopback.as_str() == requested
    })
}

/// Where and how the answer of an authorize request goes: the registered redirect URI, in the
/// response mode asked for.
struct Reply {
    redirect_uri: String,
    mode: Mode,
    state: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Query,
    Fragment,
    FormPost,
}

impl Reply {
    /// Sends `fields` (and `state`) to the redirect URI: a 302 with them in the query or the
    /// fragment, or a page that posts them (`form_post`).
    fn send(&self, mut fields: Vec<(&str, String)>) -> Response {
        if let Some(state) = &self.state {
            fields.push(("state", state.clone()));
        }
        let encoded =
            fields.iter().map(|(name, value)| format!("{name}={}", crate::graph::percent_encode(value))).collect::<Vec<_>>().join("&");
        let location = match self.mode {
            Mode::Query => format!("{}{}{encoded}", self.redirect_uri, if self.redirect_uri.contains('?') { '&' } else { '?' }),
            Mode::Fragment => format!("{}#{encoded}", self.redirect_uri),
            Mode::FormPost => return form_post(&self.redirect_uri, &fields),
        };
        match HeaderValue::from_str(&location) {
            Ok(value) => {
                let mut response = StatusCode::FOUND.into_response();
                response.headers_mut().insert(header::LOCATION, value);
                response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Err(_) => error_page("The redirect URI cannot be used."),
        }
    }

    /// An OAuth error for the client, sent to its redirect URI.
    fn error(&self, error: &str, description: &str) -> Response {
        self.send(vec![("error", error.to_string()), ("error_description", description.to_string())])
    }
}

/// The auto-submitting page of `response_mode=form_post`: its one script allowed by hash, the
/// form allowed to post only to the redirect URI's origin.
fn form_post(redirect_uri: &str, fields: &[(&str, String)]) -> Response {
    const SCRIPT: &str = "document.forms[0].submit();";
    let hash = base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(&ring::digest::SHA256, SCRIPT.as_bytes()));
    let origin = url::Url::parse(redirect_uri).map(|url| url.origin().ascii_serialization()).unwrap_or_default();
    let inputs: String = fields
        .iter()
        .map(|(name, value)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(name), escape(value)))
        .collect();
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Signing in</title></head><body>\
         <form method=\"post\" action=\"{}\">{inputs}<noscript><button type=\"submit\">Continue</button></noscript></form>\
         <script>{SCRIPT}</script></body></html>",
        escape(redirect_uri)
    );
    // The login page's headers, its policy widened by exactly this script and this target.
    let mut response = page(StatusCode::OK, body);
    if let Ok(policy) =
        HeaderValue::from_str(&format!("default-src 'none'; script-src 'sha256-{hash}'; form-action {origin}; frame-ancestors 'none'"))
    {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}

/// The page for a tenant segment that names no tenant.
fn tenant_not_found(tenant: &str) -> Response {
    page(
        StatusCode::NOT_FOUND,
        format!("<!doctype html><title>Not found</title><p>{}</p>", escape(&format!("Tenant '{tenant}' not found."))),
    )
}

/// Checks an authorize request. The client and its redirect URI first: until both are known
/// good nothing goes anywhere (an error page); after that, errors go to the client, in its
/// response mode, with its `state` (RFC 6749 §4.1.2.1).
async fn check(state: &AppState, tenant: &str, params: &AuthorizeParams) -> Result<Reply, Response> {
    if !crate::oauth::is_tenant_segment(state, tenant) {
        return Err(tenant_not_found(tenant));
    }
    let client_id = params.client_id.clone().unwrap_or_default();
    let lookup = client_id.clone();
    let redirects = state.db.read(move |conn| crate::db::app_redirects(conn, &lookup)).await.map_err(|err| error_page(&err.to_string()))?;
    let Some(redirects) = redirects else { return Err(error_page(&format!("Application '{client_id}' was not found in the directory."))) };
    let redirect_uri = params.redirect_uri.clone().unwrap_or_default();
    if !redirect_allowed(&redirect_uri, &redirects) {
        return Err(error_page("The redirect URI is not registered for this application."));
    }
    // The login form echoes every parameter, absent ones as empty strings: empty is absent.
    let response_mode = params.response_mode.as_deref().filter(|mode| !mode.is_empty());
    let mode = match response_mode {
        None | Some("query") => Mode::Query,
        Some("fragment") => Mode::Fragment,
        Some("form_post") => Mode::FormPost,
        Some(_) => Mode::Query,
    };
    let reply = Reply { redirect_uri, mode, state: params.state.clone() };
    if let Some(other) = response_mode.filter(|mode| !["query", "fragment", "form_post"].contains(mode)) {
        return Err(reply.error("invalid_request", &format!("The response_mode '{other}' is not supported.")));
    }
    if params.response_type.as_deref() != Some("code") {
        return Err(reply.error("unsupported_response_type", "Only response_type=code is supported."));
    }
    if params.code_challenge.as_deref().is_none_or(str::is_empty) || params.code_challenge_method.as_deref() != Some("S256") {
        return Err(reply.error("invalid_request", "PKCE is required: give code_challenge with code_challenge_method=S256."));
    }
    Ok(reply)
}

fn login_form(params: &AuthorizeParams, message: Option<&str>) -> String {
    let hidden: String = [
        ("client_id", &params.client_id),
        ("response_type", &params.response_type),
        ("redirect_uri", &params.redirect_uri),
        ("scope", &params.scope),
        ("state", &params.state),
        ("code_challenge", &params.code_challenge),
        ("code_challenge_method", &params.code_challenge_method),
        ("nonce", &params.nonce),
        ("response_mode", &params.response_mode),
    ]
    .iter()
    .map(|(name, value)| format!("<input type=\"hidden\" name=\"{name}\" value=\"{}\">", escape(value.as_deref().unwrap_or_default())))
    .collect();
    let message = message.map(|text| format!("<p role=\"alert\">{}</p>", escape(text))).unwrap_or_default();
    let username = escape(params.username.as_deref().or(params.login_hint.as_deref()).unwrap_or_default());
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in</title></head><body><h1>Sign in</h1>{message}\
         <form method=\"post\">{hidden}<label>Username <input name=\"username\" value=\"{username}\" autocomplete=\"username\"></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\"></label>\
         <button type=\"submit\">Sign in</button></form></body></html>"
    )
}

/// `GET /{tenant}/oauth2/v2.0/authorize`: the login page.
pub async fn show(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: axum::http::HeaderMap,
    Query(params): Query<AuthorizeParams>,
) -> Response {
    let reply = match check(&state, &tenant, &params).await {
        Ok(reply) => reply,
        Err(response) => return response,
    };
    let prompt = params.prompt.as_deref().filter(|prompt| !prompt.is_empty());
    let max_age = match params.max_age.as_deref().filter(|age| !age.is_empty()).map(str::parse::<i64>) {
        None => None,
        Some(Ok(age)) if age >= 0 => Some(age),
        Some(_) => return reply.error("invalid_request", "max_age must be a number of seconds."),
    };
    // Single sign-on: a live browser session answers without a page, unless the client asks
    // for the password again (prompt=login or select_account, or a session older than max_age).
    let session = current_session(&state, &headers).await;
    let fresh = |auth_time: i64| max_age.is_none_or(|age| crate::unix_now() - auth_time <= age);
    match (session, prompt) {
        (Some((user, auth_time)), None | Some("none" | "consent")) if fresh(auth_time) => {
            state
                .record(
                    "SignIn",
                    "authorization code (single sign-on)".into(),
                    user_id(&user),
                    params.client_id.clone().unwrap_or_default(),
                    "success",
                )
                .await;
            code_reply(&state, &reply, &params, &user, auth_time).await
        }
        (_, Some("none")) => reply.error("login_required", "The user must sign in: prompt=none was asked and there is no usable session."),
        _ => page(StatusCode::OK, login_form(&params, None)),
    }
}

fn user_id(user: &serde_json::Map<String, Value>) -> String {
    user.get("id").and_then(Value::as_str).unwrap_or_default().to_string()
}

/// A code for `user` sent to the client.
async fn code_reply(
    state: &AppState,
    reply: &Reply,
    params: &AuthorizeParams,
    user: &serde_json::Map<String, Value>,
    auth_time: i64,
) -> Response {
    let grant = Grant {
        client_id: params.client_id.clone().unwrap_or_default(),
        redirect_uri: reply.redirect_uri.clone(),
        user_id: user_id(user),
        scope: params.scope.clone().unwrap_or_default(),
        challenge: params.code_challenge.clone().unwrap_or_default(),
        nonce: params.nonce.clone().filter(|nonce| !nonce.is_empty()),
        auth_time: Some(auth_time),
    };
    match issue(state, &grant).await {
        Ok(code) => reply.send(vec![("code", code)]),
        Err(err) => {
            tracing::error!("authorization code not stored: {err}");
            error_page("The sign-in service is temporarily unavailable; try again.")
        }
    }
}

/// `POST /{tenant}/oauth2/v2.0/authorize`: the login form's answer.
pub async fn submit(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: axum::http::HeaderMap,
    peer: Option<axum::Extension<crate::limits::PeerAddr>>,
    Form(params): Form<AuthorizeParams>,
) -> Response {
    // Login CSRF: a page elsewhere must not post credentials (an attacker's) into the user's
    // browser and so start a session as someone else. Browsers name the posting page's origin.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or_default();
        let same = url::Url::parse(origin).ok().is_some_and(|origin| {
            let authority = match origin.port() {
                Some(port) => format!("{}:{port}", origin.host_str().unwrap_or_default()),
                None => origin.host_str().unwrap_or_default().to_string(),
            };
            origin.scheme() == "https" && authority.eq_ignore_ascii_case(host)
        });
        if !same {
            return page(
                StatusCode::FORBIDDEN,
                "<!doctype html><title>Sign-in refused</title><p>The sign-in form was posted from another site.</p>".into(),
            );
        }
    }
    let (source, now) = (peer.map(|peer| peer.0.0.ip()), crate::unix_now());
    if let Some(wait) = state.failures.blocked(source, now) {
        return crate::oauth::too_many_failures(wait);
    }
    let reply = match check(&state, &tenant, &params).await {
        Ok(reply) => reply,
        Err(response) => return response,
    };
    let client_id = params.client_id.clone().unwrap_or_default();
    let username = params.username.clone().unwrap_or_default();
    if !crate::limits::valid_username(&username) {
        state.failures.failed(source, now);
        return page(StatusCode::OK, login_form(&params, Some("Enter your user name as name@domain.")));
    }
    let password = zeroize::Zeroizing::new(params.password.clone().unwrap_or_default());
    let user = match crate::signin::authenticate(&state, "authorization code", &client_id, &username, &password).await {
        Ok(user) => user,
        Err(err) => {
            state.failures.failed(source, now);
            return page(StatusCode::OK, login_form(&params, Some(&err.description)));
        }
    };
    // The browser session: later authorize requests of any client sign in without a page.
    let session_id = B64URL.encode(crate::crypto::random_bytes(32));
    let (key, user_id, auth_time) = (code_key(&session_id), user_id(&user), crate::unix_now());
    let stored = state.db.call(move |sql| crate::db::insert_session(sql, &key, &user_id, auth_time, auth_time + SESSION_SECONDS)).await;
    let mut response = code_reply(&state, &reply, &params, &user, auth_time).await;
    match stored {
        Ok(()) => {
            let cookie = format!("{SESSION_COOKIE}={session_id}; Path=/; Max-Age={SESSION_SECONDS}; Secure; HttpOnly; SameSite=Lax");
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
        Err(err) => tracing::error!("browser session not stored: {err}"),
    }
    response
}

/// RP-initiated logout's parameters.
#[derive(Debug, Deserialize, Default)]
pub struct LogoutParams {
    post_logout_redirect_uri: Option<String>,
    id_token_hint: Option<String>,
    client_id: Option<String>,
    state: Option<String>,
}

/// `GET`/`POST /{tenant}/oauth2/v2.0/logout` (OpenID Connect RP-initiated logout): ends the
/// browser session; then back to `post_logout_redirect_uri` when it is one of the client's
/// registered redirect URIs (matched as redirect URIs are; the client named by `client_id` or
/// by the `aud` of an `id_token_hint` this tenant signed), else a signed-out page.
pub async fn logout(state: &AppState, tenant: &str, headers: &axum::http::HeaderMap, params: LogoutParams) -> Response {
    if !crate::oauth::is_tenant_segment(state, tenant) {
        return tenant_not_found(tenant);
    }
    let hinted = match params.id_token_hint.as_deref().filter(|hint| !hint.is_empty()) {
        None => None,
        Some(hint) => match state.signing.signed_claims(hint) {
            Ok(claims) if claims.get("tid").and_then(Value::as_str) == Some(state.identity.tenant_id.as_str()) => {
                claims.get("aud").and_then(Value::as_str).map(str::to_string)
            }
            _ => return error_page("The id_token_hint is not an ID token of this tenant."),
        },
    };
    let client = match (params.client_id.as_deref().filter(|id| !id.is_empty()), hinted.as_deref()) {
        (Some(id), Some(aud)) if id != aud => return error_page("The client_id and the id_token_hint name different clients."),
        (Some(id), _) => Some(id.to_string()),
        (None, aud) => aud.map(str::to_string),
    };
    let destination = match params.post_logout_redirect_uri.as_deref().filter(|uri| !uri.is_empty()) {
        None => None,
        Some(uri) => {
            let Some(client) = client else { return error_page("A post_logout_redirect_uri needs the client_id or an id_token_hint.") };
            let lookup = client.clone();
            let registered = state.db.read(move |sql| crate::db::app_redirects(sql, &lookup)).await.ok().flatten().unwrap_or_default();
            if !redirect_allowed(uri, &registered) {
                return error_page("The post_logout_redirect_uri is not registered for this application.");
            }
            Some(uri.to_string())
        }
    };
    if let Some(id) = session_cookie(headers) {
        let key = code_key(&id);
        if let Err(err) = state.db.call(move |sql| crate::db::delete_session(sql, &key)).await {
            tracing::error!("browser session not ended: {err}");
        }
    }
    let mut response = match destination {
        Some(uri) => Reply { redirect_uri: uri, mode: Mode::Query, state: params.state.clone() }.send(Vec::new()),
        None => page(StatusCode::OK, "<!doctype html><title>Signed out</title><p>You have signed out.</p>".to_string()),
    };
    let expired = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax");
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The code exchange of the token endpoint.
pub async fn exchange(
    state: &AppState,
    client_id: &str,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<Value, TokenEndpointError> {
    let invalid =
        |why: &str| TokenEndpointError::new("invalid_grant", 70008, format!("The provided authorization code is invalid: {why}."));
    let grant = take(state, code)
        .await
        .map_err(|err| TokenEndpointError::unavailable(&format!("authorization code lookup failed: {err}")))?
        .ok_or_else(|| invalid("unknown, used or expired"))?;
    if grant.client_id != client_id || grant.redirect_uri != redirect_uri {
        return Err(invalid("issued to another client or redirect URI"));
    }
    let computed = B64URL.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    if !crate::crypto::same(computed.as_bytes(), grant.challenge.as_bytes()) {
        return Err(TokenEndpointError::new(
            "invalid_grant",
            501481,
            "The code_verifier does not match the code_challenge supplied in the authorization request.",
        ));
    }
    let user_id = grant.user_id.clone();
    let user = state
        .db
        .read(move |conn| crate::db::get(conn, crate::db::Kind::User, &user_id))
        .await
        .map_err(|err| TokenEndpointError::unavailable(&err))?;
    let user = user
        .filter(|user| user.get("accountEnabled").and_then(Value::as_bool) == Some(true))
        .ok_or_else(|| invalid("the user is disabled or deleted"))?;
    let request = crate::signin::TokenRequest {
        client_id,
        scope: &grant.scope,
        nonce: grant.nonce.as_deref(),
        family: None,
        auth_time: grant.auth_time,
    };
    crate::signin::user_tokens(state, &user, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_and_escaping() {
        let registered = vec!["http://localhost/callback".to_string(), "https://app.example/cb".to_string()];
        assert!(redirect_allowed("http://localhost:51234/callback", &registered), "any loopback port");
        assert!(redirect_allowed("https://app.example/cb", &registered));
        assert!(!redirect_allowed("https://app.example/cb2", &registered));
        assert!(!redirect_allowed("http://evil.example/callback", &registered));
        assert!(!redirect_allowed("http://localhost:1/other", &registered));
        assert_eq!(escape("<script>\"x\"&'"), "&lt;script&gt;&quot;x&quot;&amp;&#39;");
    }

    /// The hostile forms of the finding and its cousins: none matches `http://localhost/callback`
    /// or `https://app.example/cb`.
    #[test]
    fn hostile_redirect_uris_are_refused() {
        let registered = vec!["http://localhost/callback".to_string(), "https://app.example/cb".to_string(), "http://[::1]/cb".to_string()];
        for hostile in [
            "http://localhost:1@evil.example/callback",
            "http://localhost@evil.example/callback",
            "http://user:pass@localhost/callback",
            "http://localhost.evil.example/callback",
            "http://localhost:1/callback#frag",
            "http://localhost:1/callback/../other",
            "http://localhost:1/%2e%2e/callback",
            "http://localhost:1\\@evil.example/callback",
            "http://localhost:1/callback?x=1",
            "https://localhost:1/callback",
            "http://127.0.0.1:1/callback",
            "https://app.example:8443/cb",
            "https://app.example/cb#x",
            "https://app.example/cb/",
            "https://APP.example/cb",
            "https://app.example.evil/cb",
            "https://evil.example/https://app.example/cb",
            "javascript:alert(1)//https://app.example/cb",
            "http://[::1]:1@evil.example/cb",
            "http://localhost:99999/callback",
            "",
        ] {
            assert!(!redirect_allowed(hostile, &registered), "{hostile}");
        }
        assert!(redirect_allowed("http://[::1]:4321/cb", &registered));
        assert!(redirect_allowed("http://localhost:4321/callback", &registered));
    }

    proptest::proptest! {
        /// Whatever is accepted goes to a registered host, without userinfo or fragment.
        #[test]
        fn anything_accepted_goes_to_a_registered_host(prefix in "[a-z:/@.\\\\%#?0-9\\[\\]]{0,12}", middle in "[a-z:/@.\\\\%#?0-9]{0,12}", suffix in "[a-z:/@.\\\\%#?0-9]{0,12}") {
            let registered = vec!["http://localhost/callback".to_string(), "https://app.example/cb".to_string()];
            for candidate in [
                format!("http://localhost{prefix}/callback"),
                format!("http://{prefix}localhost{middle}/callback{suffix}"),
                format!("https://app.example{prefix}/cb{suffix}"),
                format!("{prefix}https://app.example/cb{middle}"),
            ] {
                if redirect_allowed(&candidate, &registered) {
                    let parsed = url::Url::parse(&candidate).unwrap();
                    proptest::prop_assert!(matches!(parsed.host_str(), Some("localhost" | "app.example")), "{candidate}");
                    proptest::prop_assert!(parsed.username().is_empty() && parsed.password().is_none() && parsed.fragment().is_none(), "{candidate}");
                }
            }
        }
    }
}
