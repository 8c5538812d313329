//! Sign-in of users: the resource-owner password grant (ROPC) and refresh tokens, for cloud-only
//! users whose password is kept in the tenant (PBKDF2), with **smart lockout**: after
//! `lockout_threshold` failed attempts in a row an account is locked for `lockout_seconds`,
//! before any password is checked, so guessing cannot continue and (for pass-through later) never
//! reaches on-premises AD. Every attempt is audited (without the password).
//!
//! Tokens for users: an access token (`scp`), an ID token (`aud` = the client, `oid`, `sub`,
//! `preferred_username`, `name`, `tid`), `client_info` (`{"uid","utid"}`, base64url) and a
//! refresh token (a signed JWT bound to the user and the client, 90 days).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};

use crate::AppState;
use crate::db::{self, Kind};
use crate::odata::TokenEndpointError;

/// The fields of a user grant.
pub struct UserGrant {
    /// The public client's id.
    pub client_id: String,
    /// Requested scopes.
    pub scope: String,
    /// The UPN.
    pub username: String,
    /// The password (ROPC).
    pub password: zeroize::Zeroizing<String>,
    /// The refresh token (refresh grant).
    pub refresh_token: zeroize::Zeroizing<String>,
}

/// What a sign-in method says about a password.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The password is right.
    Valid,
    /// The password is right by the synced hash, because the method's own check was not
    /// reachable (pass-through's automatic fallback).
    ValidByFallback,
    /// The method refuses the sign-in with its own error (an on-premises account state, or a
    /// retryable failure of its machinery) and the outcome the sign-in log records; it does not
    /// count toward smart lockout.
    Refused(TokenEndpointError, &'static str),
    /// The password is wrong (or the user cannot sign in this way).
    Invalid,
    /// The method cannot decide now (an agent or a federation server is down).
    Unavailable(String),
}

/// How the users of a domain prove their password: the seam where password hash sync and
/// pass-through authentication plug in, chosen per domain (`Tenant::set_sign_in_method`).
/// Smart lockout runs before any method, so no method sees a locked-out guesser.
pub trait SignInMethod: Send + Sync {
    /// For the audit log.
    fn name(&self) -> &'static str;
    /// Checks `password` for `user` (a Graph document).
    fn verify<'a>(
        &'a self,
        state: &'a AppState,
        user: &'a serde_json::Map<String, Value>,
        password: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send + 'a>>;
}

/// Passwords kept in the tenant: for a user with a credential from password hash sync, that
/// one (MD4 of the typed password, Entra's transform, compared); for cloud-only users their own
/// PBKDF2-HMAC-SHA256 password. (Entra's managed domains work the same way.)
pub struct CloudPassword;

impl SignInMethod for CloudPassword {
    fn name(&self) -> &'static str {
        "cloud password"
    }

    fn verify<'a>(
        &'a self,
        state: &'a AppState,
        user: &'a serde_json::Map<String, Value>,
        password: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send + 'a>> {
        Box::pin(async move {
            let id = user.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            let lookup = id.clone();
            let synced = match state.db.read(move |conn| db::synced_credential(conn, &lookup)).await {
                Ok(synced) => synced,
                Err(err) => return Verdict::Unavailable(err.to_string()),
            };
            if let Some(synced) = synced {
                let Ok(credential) = phs::SyncedCredential::from_wire(&synced.credential) else {
                    return Verdict::Unavailable(format!("the synced credential of {id} is corrupt"));
                };
                let password = zeroize::Zeroizing::new(password.to_string());
                let matched = tokio::task::spawn_blocking(move || credential.verify_password(&password)).await.unwrap_or(false);
                return if matched { Verdict::Valid } else { Verdict::Invalid };
            }
            let credential = match state.db.read(move |conn| db::credential(conn, &id)).await {
                Ok(credential) => credential,
                Err(err) => return Verdict::Unavailable(err.to_string()),
            };
            let password = zeroize::Zeroizing::new(password.to_string());
            let iterations = state.password_iterations;
            let matched = tokio::task::spawn_blocking(move || match credential {
                Some(credential) => crate::crypto::password_matches(&password, &credential.salt, credential.iterations, &credential.hash),
                None => {
                    // No cloud password (a synced user before hash sync): same work, same answer.
                    let _ = crate::crypto::password_hash(&password, iterations);
                    false
                }
            })
            .await
            .unwrap_or(false);
            if matched { Verdict::Valid } else { Verdict::Invalid }
        })
    }
}

/// Users of federated domains sign in at their federation service, not here.
pub struct FederatedElsewhere;

impl SignInMethod for FederatedElsewhere {
    fn name(&self) -> &'static str {
        "federated"
    }

    fn verify<'a>(
        &'a self,
        _state: &'a AppState,
        _user: &'a serde_json::Map<String, Value>,
        _password: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send + 'a>> {
        Box::pin(async { Verdict::Invalid })
    }
}

fn bad_credentials() -> TokenEndpointError {
    TokenEndpointError::new("invalid_grant", 50126, "Error validating credentials due to invalid username or password.")
}

/// Checks a user's password for `client_id` (`flow` names the flow in the audit trail): the app
/// must exist, smart lockout first, then the domain's sign-in method, then the account state.
pub async fn authenticate(
    state: &AppState,
    flow: &str,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<serde_json::Map<String, Value>, TokenEndpointError> {
    let grant = UserGrant {
        client_id: client_id.to_string(),
        scope: String::new(),
        username: username.to_string(),
        password: zeroize::Zeroizing::new(password.to_string()),
        refresh_token: zeroize::Zeroizing::new(String::new()),
    };
    let client_id = grant.client_id.clone();
    let app = state.db.read(move |conn| db::app(conn, &client_id)).await.map_err(|err| TokenEndpointError::unavailable(&err))?;
    if app.is_none() {
        return Err(TokenEndpointError::new(
            "unauthorized_client",
            700016,
            format!("Application with identifier '{}' was not found in the directory.", grant.client_id),
        ));
    }
    let key = grant.username.to_lowercase();
    let (lookup, now) = (key.clone(), crate::unix_now());
    let entry = state.db.read(move |sql| db::lockout_entry(sql, &lookup)).await.map_err(|err| TokenEndpointError::unavailable(&err))?;
    let entry = entry.or_else(|| state.failures.unknown_entry(&key));
    if let Some(left) = entry.and_then(|(_, until)| Some(until - now).filter(|left| *left > 0)) {
        state.record("SignIn", flow.to_string(), key.clone(), grant.client_id.clone(), "locked").await;
        return Err(TokenEndpointError::new(
            "invalid_grant",
            50053,
            format!("Your account is locked because of too many failed sign-in attempts; try again in {} seconds.", left.max(1)),
        ));
    }
    let username = grant.username.clone();
    let found =
        state.db.read(move |conn| db::get(conn, Kind::User, &username)).await.map_err(|err| TokenEndpointError::unavailable(&err))?;
    let domain = grant.username.rsplit_once('@').map(|(_, domain)| domain.to_string()).unwrap_or_default();
    let method = state.sign_in_method(&domain);
    let verdict = match &found {
        Some(user) => method.verify(state, user, &grant.password).await,
        None => {
            // No such user: the same answer after about the same work (no user enumeration).
            let (password, iterations) = (grant.password.clone(), state.password_iterations);
            let _ = tokio::task::spawn_blocking(move || crate::crypto::password_hash(&password, iterations)).await;
            Verdict::Invalid
        }
    };
    let mut method_name = method.name().to_string();
    let user = match (verdict, found) {
        (Verdict::Valid, Some(user)) => user,
        (Verdict::ValidByFallback, Some(user)) => {
            method_name = format!("{}, fallback to the synced hash", method.name());
            user
        }
        (Verdict::Refused(refusal, outcome), _) => {
            state.record("SignIn", format!("{flow} ({})", method.name()), key.clone(), grant.client_id.clone(), outcome).await;
            return Err(refusal);
        }
        (Verdict::Unavailable(why), _) => {
            state.record("SignIn", format!("{flow} ({})", method.name()), key.clone(), grant.client_id.clone(), "method unavailable").await;
            return Err(TokenEndpointError::new("temporarily_unavailable", 80001, format!("The sign-in method is not available: {why}")));
        }
        (_, found) => {
            let (lookup, threshold, duration) = (key.clone(), state.lockout_threshold, state.lockout_duration.as_secs() as i64);
            // Only users have lockout rows: a name that is no user is counted in memory.
            let locked = if found.is_some() {
                state
                    .db
                    .call(move |sql| db::lockout_fail(sql, &lookup, crate::unix_now(), threshold, duration))
                    .await
                    .map_err(|err| TokenEndpointError::unavailable(&err))?
            } else {
                state.failures.unknown_failed(&lookup, crate::unix_now(), threshold, duration)
            };
            state
                .record(
                    "SignIn",
                    format!("{flow} ({})", method.name()),
                    key.clone(),
                    grant.client_id.clone(),
                    if locked { "bad password, now locked" } else { "bad password" },
                )
                .await;
            return Err(bad_credentials());
        }
    };
    if user.get("accountEnabled").and_then(Value::as_bool) != Some(true) {
        state.record("SignIn", flow.to_string(), key.clone(), grant.client_id.clone(), "disabled").await;
        return Err(TokenEndpointError::new("invalid_grant", 50057, "The user account is disabled."));
    }
    // A password found on the leaked list blocks the sign-in when the tenant says so.
    let id = user.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    if state.block_leaked {
        let lookup = id.clone();
        if state.db.read(move |conn| db::is_risky(conn, &lookup)).await.map_err(|err| TokenEndpointError::unavailable(&err))? {
            state.record("SignIn", flow.to_string(), key.clone(), grant.client_id.clone(), "blocked: leaked password").await;
            return Err(TokenEndpointError::new(
                "invalid_grant",
                53003,
                "Access has been blocked: this account's password is on a list of leaked passwords. Change it on-premises.",
            ));
        }
    }
    // A temporary password synced from on-premises signs in only to be changed.
    let synced = state.db.read(move |conn| db::synced_credential(conn, &id)).await.map_err(|err| TokenEndpointError::unavailable(&err))?;
    // Under the cloud password policy, a synced password checked here expires after the
    // domain's validity period (pass-through checks on-premises, where AD's own expiry applies).
    if method.name() == CloudPassword.name()
        && let Some(synced) = &synced
    {
        let validity = state.verified_domain(&domain).and_then(|known| known.password_validity_days);
        let policies = user.get("passwordPolicies").and_then(Value::as_str);
        if crate::hashsync::password_expired(policies, synced.synced_at, validity, crate::unix_now()) {
            state.record("SignIn", flow.to_string(), key.clone(), grant.client_id.clone(), "password expired (cloud policy)").await;
            return Err(TokenEndpointError::new(
                "invalid_grant",
                50055,
                "The password is expired under the cloud password policy: change it on-premises.",
            ));
        }
    }
    if synced.is_some_and(|synced| synced.must_change) {
        state.record("SignIn", flow.to_string(), key.clone(), grant.client_id.clone(), "password must change").await;
        return Err(TokenEndpointError::new(
            "invalid_grant",
            50055,
            "The password is expired: the user must change it (set on-premises at the next logon).",
        ));
    }
    if entry.is_some() {
        let lookup = key.clone();
        state.db.call(move |sql| db::lockout_clear(sql, &lookup)).await.map_err(|err| TokenEndpointError::unavailable(&err))?;
    }
    state.record("SignIn", format!("{flow} ({method_name})"), key.clone(), grant.client_id.clone(), "success").await;
    Ok(user)
}

/// The password grant.
pub async fn password_grant(state: &AppState, grant: &UserGrant) -> Result<Value, TokenEndpointError> {
    let user = authenticate(state, "password", &grant.client_id, &grant.username, &grant.password).await?;
    user_tokens(
        state,
        &user,
        TokenRequest { client_id: &grant.client_id, scope: &grant.scope, nonce: None, family: None, auth_time: Some(crate::unix_now()) },
    )
    .await
}

/// The refresh-token grant: a new set of tokens while the user still exists and is enabled.
pub async fn refresh_grant(state: &AppState, grant: &UserGrant) -> Result<Value, TokenEndpointError> {
    let invalid = || TokenEndpointError::new("invalid_grant", 9002313, "Invalid request. The refresh token is malformed or not valid.");
    let claims = state.signing.verify(&grant.refresh_token, crate::unix_now()).map_err(|_| invalid())?;
    if claims.get("typ").and_then(Value::as_str) != Some("refresh")
        || claims.get("tid").and_then(Value::as_str) != Some(state.identity.tenant_id.as_str())
    {
        return Err(invalid());
    }
    if claims.get("azp").and_then(Value::as_str) != Some(grant.client_id.as_str()) {
        return Err(TokenEndpointError::new("invalid_grant", 70000, "The refresh token was issued to a different client."));
    }
    // Used once: a second use is a replay, and revokes every token of the sign-in.
    let token_id = claims.get("jti").and_then(Value::as_str).unwrap_or_default().to_string();
    let now = crate::unix_now();
    let family = match state
        .db
        .call(move |sql| db::redeem_refresh(sql, &token_id, now))
        .await
        .map_err(|err| TokenEndpointError::unavailable(&err))?
    {
        db::Redeemed::Rotate(family) => family,
        db::Redeemed::Replayed => {
            let oid = claims.get("oid").and_then(Value::as_str).unwrap_or_default().to_string();
            state.record("SignIn", "refresh token".into(), oid, grant.client_id.clone(), "replayed: sign-in revoked").await;
            return Err(TokenEndpointError::new(
                "invalid_grant",
                70008,
                "The refresh token was already used; every token of this sign-in is revoked.",
            ));
        }
        db::Redeemed::Invalid => {
            return Err(TokenEndpointError::new("invalid_grant", 70008, "The refresh token has expired or been revoked."));
        }
    };
    let oid = claims.get("oid").and_then(Value::as_str).unwrap_or_default().to_string();
    let user = state.db.read(move |conn| db::get(conn, Kind::User, &oid)).await.map_err(|err| TokenEndpointError::unavailable(&err))?;
    let Some(user) = user.filter(|user| user.get("accountEnabled").and_then(Value::as_bool) == Some(true)) else {
        return Err(TokenEndpointError::new("invalid_grant", 50057, "The user account is disabled or deleted."));
    };
    let request = TokenRequest { client_id: &grant.client_id, scope: &grant.scope, nonce: None, family: Some(family), auth_time: None };
    user_tokens(state, &user, request).await
}

/// What tokens to issue to a signed-in user.
pub(crate) struct TokenRequest<'a> {
    /// The client they are for.
    pub client_id: &'a str,
    /// The scopes asked for: `offline_access` brings a refresh token.
    pub scope: &'a str,
    /// The authorize request's `nonce`, carried into the ID token.
    pub nonce: Option<&'a str>,
    /// A refresh being rotated: the family the new refresh token joins.
    pub family: Option<String>,
    /// When the user entered their password, for the ID token's `auth_time`.
    pub auth_time: Option<i64>,
}

/// Access and ID tokens for `user`, and a refresh token when `offline_access` was asked for (or
/// a refresh is being rotated): recorded by its id in its family, so that a replay of a used
/// one revokes the family and an administrator or a password change can revoke them all.
pub(crate) async fn user_tokens(
    state: &AppState,
    user: &serde_json::Map<String, Value>,
    request: TokenRequest<'_>,
) -> Result<Value, TokenEndpointError> {
    let now = crate::unix_now();
    let client_id = request.client_id;
    let (oid, upn) = (
        user.get("id").and_then(Value::as_str).unwrap_or_default(),
        user.get("userPrincipalName").and_then(Value::as_str).unwrap_or_default(),
    );
    let tid = state.identity.tenant_id.as_str();
    let issuer = crate::oauth::issuer(state);
    let offline = request.family.is_some() || request.scope.split_whitespace().any(|scope| scope == "offline_access");
    let scopes: Vec<&str> =
        request.scope.split_whitespace().filter(|scope| !["openid", "profile", "offline_access", "email"].contains(scope)).collect();
    let granted = if scopes.is_empty() { "User.Read".to_string() } else { scopes.join(" ") };
    let access = json!({"aud": "https://graph.microsoft.com", "iss": issuer, "iat": now, "nbf": now, "exp": now + 3600, "tid": tid, "oid": oid, "sub": oid,
                        "upn": upn, "azp": client_id, "appid": client_id, "scp": granted, "idtyp": "user", "ver": "2.0"});
    let mut id = json!({"aud": client_id, "iss": issuer, "iat": now, "nbf": now, "exp": now + 3600, "tid": tid, "oid": oid, "sub": oid,
                        "preferred_username": upn, "name": user.get("displayName").cloned().unwrap_or(Value::Null), "ver": "2.0"});
    if let Some(nonce) = request.nonce.filter(|nonce| !nonce.is_empty()) {
        id["nonce"] = Value::String(nonce.to_string());
    }
    if let Some(auth_time) = request.auth_time {
        id["auth_time"] = Value::from(auth_time);
    }
    let sign = |claims: &Value| state.signing.sign(claims).map_err(|err| TokenEndpointError::unavailable(&err));
    let access_token = sign(&access)?;
    // at_hash (OIDC Core §3.1.3.6): the left half of the access token's SHA-256 (ES256).
    let digest = ring::digest::digest(&ring::digest::SHA256, access_token.as_bytes());
    id["at_hash"] = Value::String(B64URL.encode(&digest.as_ref()[..16]));
    let mut body = json!({
        "token_type": "Bearer",
        "scope": if offline { format!("{granted} offline_access") } else { granted.clone() },
        "expires_in": 3600,
        "ext_expires_in": 3600,
        "access_token": access_token,
        "id_token": sign(&id)?,
        "client_info": B64URL.encode(json!({"uid": oid, "utid": tid}).to_string()),
    });
    if offline {
        let (token_id, family) = (crate::crypto::new_guid(), request.family.unwrap_or_else(crate::crypto::new_guid));
        let expires = now + REFRESH_SECONDS;
        let refresh =
            json!({"typ": "refresh", "jti": token_id, "iat": now, "nbf": now, "exp": expires, "tid": tid, "oid": oid, "azp": client_id});
        let (stored_id, user_id, client) = (token_id.clone(), oid.to_string(), client_id.to_string());
        state
            .db
            .call(move |sql| db::insert_refresh(sql, &stored_id, &family, &user_id, &client, expires))
            .await
            .map_err(|err| TokenEndpointError::unavailable(&err))?;
        body["refresh_token"] = Value::String(sign(&refresh)?);
    }
    Ok(body)
}

/// How long a refresh token lives (Entra: 90 days).
const REFRESH_SECONDS: i64 = 90 * 24 * 3600;
