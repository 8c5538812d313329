//! Client authentication at the token endpoint, on every grant (RFC 6749 §2.3): a confidential
//! client proves itself with its secret — `client_secret_post` (form) or `client_secret_basic`
//! (HTTP Basic, each part form-urlencoded) — or with a certificate, `private_key_jwt` (RFC 7523:
//! a `client_assertion` signed RS256 or PS256 by a certificate registered for the app, named by
//! its `x5t#S256` or `x5t` thumbprint, as MSAL sends it; audience the token endpoint, issuer and
//! subject the client, used once) — on client credentials, password, authorization code and
//! refresh grants alike; a public client (a native or single-page app, registered as such)
//! has no secret, presents none, and may use only user flows. The client id is checked to be a
//! GUID before anything is looked up.

use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::AppState;
use crate::odata::TokenEndpointError;

/// The client of a token request, authenticated.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its client id.
    pub id: String,
    /// Its application roles (client credentials).
    pub roles: Vec<String>,
    /// A public client: no secret was (or could be) checked.
    pub public: bool,
}

/// The client's claimed identity and credential, from the form and the `Authorization` header.
pub struct Presented {
    /// The client id.
    pub id: String,
    /// The secret, if one was presented.
    pub secret: Option<Zeroizing<String>>,
    /// A signed client assertion (`private_key_jwt`), if one was presented.
    pub assertion: Option<Zeroizing<String>>,
}

/// The one `client_assertion_type` there is.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The client's form fields.
pub struct ClientFields<'a> {
    /// `client_id`.
    pub id: Option<&'a str>,
    /// `client_secret`.
    pub secret: Option<&'a str>,
    /// `client_assertion_type`.
    pub assertion_type: Option<&'a str>,
    /// `client_assertion`.
    pub assertion: Option<&'a str>,
}

fn invalid_request(message: &str) -> TokenEndpointError {
    TokenEndpointError::new("invalid_request", 900144, message.to_string())
}

fn invalid_client(code: u32, message: &str) -> TokenEndpointError {
    let mut err = TokenEndpointError::new("invalid_client", code, message.to_string());
    err.status = StatusCode::UNAUTHORIZED;
    err
}

/// Form-urlencoding's decoding (`+` is a space), as RFC 6749 §2.3.1 asks for Basic's parts.
fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(index + 1..index + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 2;
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).ok()
}

/// Reads who the client says it is: the form's `client_id`/`client_secret`, or HTTP Basic —
/// never both ways of authenticating, and a form `client_id` beside Basic must agree.
pub fn presented(headers: &HeaderMap, fields: &ClientFields<'_>) -> Result<Presented, TokenEndpointError> {
    let (form_id, form_secret) = (fields.id.filter(|id| !id.is_empty()), fields.secret);
    if let Some(assertion) = fields.assertion.filter(|assertion| !assertion.is_empty()) {
        if fields.assertion_type != Some(JWT_BEARER) {
            return Err(invalid_request("client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer."));
        }
        if form_secret.is_some() || headers.contains_key(axum::http::header::AUTHORIZATION) {
            return Err(invalid_request("The request uses more than one method of client authentication."));
        }
        // The client id, when the form leaves it out, is the assertion's subject (checked
        // against the signed claims afterwards).
        let claimed = unverified_claims(assertion).and_then(|claims| claims.get("sub").and_then(|sub| sub.as_str()).map(str::to_string));
        let id = form_id.map(str::to_string).or(claimed).unwrap_or_default();
        if !crate::limits::valid_client_id(&id) {
            return Err(TokenEndpointError::new(
                "unauthorized_client",
                700016,
                "The client_id is not a valid application identifier (a GUID).",
            ));
        }
        return Ok(Presented { id, secret: None, assertion: Some(Zeroizing::new(assertion.to_string())) });
    }
    let basic = headers.get(axum::http::header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(|value| {
        let (scheme, rest) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("basic").then(|| rest.trim().to_string())
    });
    let presented = match basic {
        Some(encoded) => {
            if form_secret.is_some() {
                return Err(invalid_request("The request uses more than one method of client authentication."));
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .map(Zeroizing::new)
                .ok_or_else(|| invalid_client(7000215, "The Authorization header is not valid Basic client authentication."))?;
            let (id, secret) = decoded
                .split_once(':')
                .and_then(|(id, secret)| Some((form_decode(id)?, form_decode(secret)?)))
                .ok_or_else(|| invalid_client(7000215, "The Authorization header is not valid Basic client authentication."))?;
            if form_id.is_some_and(|form_id| form_id != id) {
                return Err(invalid_request("The client_id of the form and of the Authorization header differ."));
            }
            Presented { id, secret: Some(Zeroizing::new(secret)), assertion: None }
        }
        None => Presented {
            id: form_id.unwrap_or_default().to_string(),
            secret: form_secret.map(|secret| Zeroizing::new(secret.to_string())),
            assertion: None,
        },
    };
    if !crate::limits::valid_client_id(&presented.id) {
        return Err(TokenEndpointError::new(
            "unauthorized_client",
            700016,
            "The client_id is not a valid application identifier (a GUID).",
        ));
    }
    Ok(presented)
}

/// Authenticates the presented client for `grant`. An app holding the sync role has its
/// accepted and refused sign-ins recorded for the health alert on them.
pub async fn authenticate(state: &AppState, presented: &Presented, grant: &str) -> Result<Client, TokenEndpointError> {
    let lookup = presented.id.clone();
    let app = state.db.read(move |conn| crate::db::app(conn, &lookup)).await.map_err(|err| TokenEndpointError::unavailable(&err))?;
    let Some(app) = app else {
        return Err(TokenEndpointError::new(
            "unauthorized_client",
            700016,
            format!("Application with identifier '{}' was not found in the directory.", presented.id),
        ));
    };
    let sync_app = app.roles.iter().any(|role| role == crate::SYNC_ROLE);
    let result = check_credential(state, presented, grant, app).await;
    if sync_app {
        match &result {
            Ok(_) => crate::health_alerts::record_sync_sign_in(state, presented.id.clone(), true, crate::unix_now()).await,
            // A refused credential (not a malformed request) is the alert's signal.
            Err(err) if err.error == "invalid_client" => {
                crate::health_alerts::record_sync_sign_in(state, presented.id.clone(), false, crate::unix_now()).await
            }
            Err(_) => {}
        }
    }
    result
}

/// Checks the credential `presented` for the registered `app`.
async fn check_credential(
    state: &AppState,
    presented: &Presented,
    grant: &str,
    app: crate::db::AppRecord,
) -> Result<Client, TokenEndpointError> {
    let client = Client { id: presented.id.clone(), roles: app.roles.clone(), public: app.public_client };
    if app.public_client {
        if presented.secret.is_some() || presented.assertion.is_some() {
            return Err(invalid_client(700025, "Client is public so neither 'client_assertion' nor 'client_secret' should be presented."));
        }
        if grant == "client_credentials" {
            return Err(TokenEndpointError::new(
                "unauthorized_client",
                700016,
                "A public client cannot use the client credentials grant: it has no secret.",
            ));
        }
        return Ok(client);
    }
    if let Some(assertion) = &presented.assertion {
        verify_assertion(state, &client.id, assertion).await?;
        return Ok(client);
    }
    let Some(secret) = &presented.secret else {
        return Err(invalid_client(
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    let presented_hash = crate::crypto::secret_hash(secret);
    if crate::crypto::same(&presented_hash, &app.secret_hash) {
        return Ok(client);
    }
    // Secrets added through Graph's addPassword, each with its expiry.
    let lookup = client.id.clone();
    let passwords =
        state.db.read(move |conn| crate::db::app_passwords(conn, &lookup)).await.map_err(|err| TokenEndpointError::unavailable(&err))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&presented_hash);
    if let Some((_, expires)) = passwords.iter().find(|(hash, _)| crate::crypto::same(hash.as_bytes(), encoded.as_bytes())) {
        if *expires <= crate::unix_now() {
            return Err(invalid_client(7000222, "The provided client secret keys are expired."));
        }
        return Ok(client);
    }
    Err(invalid_client(
        7000215,
        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
    ))
}

/// A JWT's claims, not verified (to find whose it is).
fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    let body = token.split('.').nth(1)?;
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).ok()?).ok()
}

fn bad_assertion(code: u32, why: &str) -> TokenEndpointError {
    invalid_client(code, &format!("The client assertion is not valid: {why}."))
}

/// Checks a `private_key_jwt` client assertion of `client_id`: the certificate its header names
/// is registered for the app and signed it (RS256 or PS256), it is for this tenant's token
/// endpoint, from and about the client, current, and not seen before.
async fn verify_assertion(state: &AppState, client_id: &str, assertion: &str) -> Result<(), TokenEndpointError> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    let mut parts = assertion.split('.');
    let (Some(header), Some(body), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad_assertion(700027, "it is not a signed JWT"));
    };
    let header: serde_json::Value = B64URL
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| bad_assertion(700027, "its header is not JSON"))?;
    let algorithm: &dyn rustls::pki_types::SignatureVerificationAlgorithm = match header.get("alg").and_then(|alg| alg.as_str()) {
        Some("RS256") => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        Some("PS256") => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        other => return Err(bad_assertion(700027, &format!("the algorithm {other:?} is not RS256 or PS256"))),
    };
    let thumbprint = header
        .get("x5t#S256")
        .or_else(|| header.get("x5t"))
        .and_then(|value| value.as_str())
        // MSAL pads the thumbprint's base64url; RFC 7515 does not: either is taken.
        .and_then(|value| B64URL.decode(value.trim_end_matches('=')).ok())
        .map(|bytes| crate::crypto::hex(&bytes))
        .ok_or_else(|| bad_assertion(700027, "its header names no certificate (x5t#S256 or x5t)"))?;
    let (lookup, print) = (client_id.to_string(), thumbprint.clone());
    let stored = state
        .db
        .read(move |sql| crate::db::app_certificate(sql, &lookup, &print))
        .await
        .map_err(|err| TokenEndpointError::unavailable(&err))?;
    let der = stored
        .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
        .ok_or_else(|| bad_assertion(700027, &format!("no certificate with thumbprint {thumbprint} is registered for the application")))?;
    let signature = B64URL.decode(signature).map_err(|_| bad_assertion(700027, "its signature is not base64url"))?;
    let der = rustls::pki_types::CertificateDer::from(der);
    let certificate =
        webpki::EndEntityCert::try_from(&der).map_err(|_| bad_assertion(700027, "the registered certificate cannot be read"))?;
    let signed = format!("{}.{body}", assertion.split('.').next().unwrap_or_default());
    certificate
        .verify_signature(algorithm, signed.as_bytes(), &signature)
        .map_err(|_| bad_assertion(700027, "its signature does not verify with the registered certificate"))?;
    let claims: serde_json::Value = B64URL
        .decode(body)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| bad_assertion(700027, "its claims are not JSON"))?;
    let text = |name: &str| claims.get(name).and_then(|value| value.as_str());
    if text("iss") != Some(client_id) || text("sub") != Some(client_id) {
        return Err(bad_assertion(700021, "iss and sub must both be the client id"));
    }
    let audiences: Vec<String> = {
        let authority = state.authority();
        let mut names = vec![state.identity.tenant_id.clone()];
        names.extend(state.domains());
        let mut audiences: Vec<String> = names.iter().map(|name| format!("{authority}/{name}/oauth2/v2.0/token")).collect();
        audiences.push(crate::oauth::issuer(state));
        audiences
    };
    let aud_ok = match claims.get("aud") {
        Some(serde_json::Value::String(aud)) => audiences.iter().any(|known| known.eq_ignore_ascii_case(aud)),
        Some(serde_json::Value::Array(list)) => {
            list.iter().filter_map(|aud| aud.as_str()).any(|aud| audiences.iter().any(|known| known.eq_ignore_ascii_case(aud)))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(bad_assertion(700022, "its audience is not this tenant's token endpoint"));
    }
    let now = crate::unix_now();
    // NumericDate may have a fraction (MSAL sends one).
    let seconds = |name: &str| claims.get(name).and_then(|value| value.as_i64().or_else(|| value.as_f64().map(|value| value as i64)));
    let exp = seconds("exp").ok_or_else(|| bad_assertion(700024, "it has no exp"))?;
    let nbf = seconds("nbf").unwrap_or(0);
    if now > exp + 300 || now + 300 < nbf || exp - now > 86_400 {
        return Err(bad_assertion(700024, "it is not within its valid time range (at most a day)"));
    }
    let jti = text("jti").filter(|jti| !jti.is_empty()).ok_or_else(|| bad_assertion(700027, "it has no jti"))?;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::crypto::secret_hash(&format!("{client_id} {jti}")));
    let first = state
        .db
        .call(move |sql| crate::db::first_use_of_assertion(sql, &key, exp + 300, now))
        .await
        .map_err(|err| TokenEndpointError::unavailable(&err))?;
    if !first {
        return Err(bad_assertion(700027, "it was used before (a replay)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    fn basic(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        headers.insert(axum::http::header::AUTHORIZATION, format!("Basic {encoded}").parse().unwrap());
        headers
    }

    #[test]
    fn basic_and_post_are_read_and_never_both() {
        let form =
            |id: Option<&'static str>, secret: Option<&'static str>| ClientFields { id, secret, assertion_type: None, assertion: None };
        let from_basic = presented(&basic(&format!("{ID}:s%3Ac+r%25t")), &form(None, None)).unwrap();
        assert_eq!((from_basic.id.as_str(), from_basic.secret.as_deref().map(String::as_str)), (ID, Some("s:c r%t")));
        let from_form = presented(&HeaderMap::new(), &form(Some(ID), Some("x"))).unwrap();
        assert_eq!(from_form.secret.as_deref().map(String::as_str), Some("x"));
        assert!(presented(&basic(&format!("{ID}:x")), &form(None, Some("y"))).is_err(), "both methods");
        assert!(presented(&basic(&format!("{ID}:x")), &form(Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1"), None)).is_err(), "ids differ");
        assert!(presented(&basic("no-colon"), &form(None, None)).is_err());
        assert!(presented(&basic("short:x"), &form(None, None)).is_err(), "not a GUID");
        assert!(presented(&HeaderMap::new(), &form(None, None)).is_err(), "no client at all");
        let with_assertion = ClientFields { id: Some(ID), secret: Some("x"), assertion_type: Some(JWT_BEARER), assertion: Some("a.b.c") };
        assert!(presented(&HeaderMap::new(), &with_assertion).is_err(), "a secret beside an assertion");
        let wrong_type = ClientFields { id: Some(ID), secret: None, assertion_type: Some("saml"), assertion: Some("a.b.c") };
        assert!(presented(&HeaderMap::new(), &wrong_type).is_err());
    }
}
