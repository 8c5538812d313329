//! Client authentication at the token endpoint, on every grant (RFC 6749 §2.3): a confidential
//! client proves itself with its secret — `client_secret_post` (form) or `client_secret_basic`
//! (HTTP Basic, each part form-urlencoded) — on client credentials, password, authorization code
//! and refresh grants alike; a public client (a native or single-page app, registered as such)
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
pub fn presented(headers: &HeaderMap, form_id: Option<&str>, form_secret: Option<&str>) -> Result<Presented, TokenEndpointError> {
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
            Presented { id, secret: Some(Zeroizing::new(secret)) }
        }
        None => {
            Presented { id: form_id.unwrap_or_default().to_string(), secret: form_secret.map(|secret| Zeroizing::new(secret.to_string())) }
        }
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

/// Authenticates the presented client for `grant`.
pub async fn authenticate(state: &AppState, presented: &Presented, grant: &str) -> Result<Client, TokenEndpointError> {
    let lookup = presented.id.clone();
    let app = state.db.read(move |conn| crate::db::app(conn, &lookup)).await.map_err(|err| {
        tracing::error!("{err}");
        TokenEndpointError::new("temporarily_unavailable", 50000, "There was an error issuing a token.")
    })?;
    let Some(app) = app else {
        return Err(TokenEndpointError::new(
            "unauthorized_client",
            700016,
            format!("Application with identifier '{}' was not found in the directory.", presented.id),
        ));
    };
    let client = Client { id: presented.id.clone(), roles: app.roles.clone(), public: app.public_client };
    if app.public_client {
        if presented.secret.is_some() {
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
    let Some(secret) = &presented.secret else {
        return Err(invalid_client(
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    if !crate::crypto::same(&crate::crypto::secret_hash(secret), &app.secret_hash) {
        return Err(invalid_client(
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        ));
    }
    Ok(client)
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
        let from_basic = presented(&basic(&format!("{ID}:s%3Ac+r%25t")), None, None).unwrap();
        assert_eq!((from_basic.id.as_str(), from_basic.secret.as_deref().map(String::as_str)), (ID, Some("s:c r%t")));
        let from_form = presented(&HeaderMap::new(), Some(ID), Some("x")).unwrap();
        assert_eq!(from_form.secret.as_deref().map(String::as_str), Some("x"));
        assert!(presented(&basic(&format!("{ID}:x")), None, Some("y")).is_err(), "both methods");
        assert!(presented(&basic(&format!("{ID}:x")), Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1"), None).is_err(), "ids differ");
        assert!(presented(&basic("no-colon"), None, None).is_err());
        assert!(presented(&basic("short:x"), None, None).is_err(), "not a GUID");
        assert!(presented(&HeaderMap::new(), None, None).is_err(), "no client at all");
    }
}
