//! Graph's error shape: `{"error":{"code","message","innerError":{"date","request-id"}}}` with
//! `application/json`, as `msgraph-sdk` parses it; and the token endpoint's AADSTS errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A Graph API error.
#[derive(Debug, Clone)]
pub struct GraphError {
    /// HTTP status.
    pub status: StatusCode,
    /// Graph's code, e.g. `Request_BadRequest`, `Request_ResourceNotFound`.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// Seconds to wait (429): sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl GraphError {
    /// 429: too many writes; try again after `seconds`.
    pub fn throttled(seconds: u64) -> Self {
        GraphError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "TooManyRequests",
            message: format!("Too many requests; retry after {seconds} second(s)."),
            retry_after: Some(seconds),
        }
    }

    /// An error with its own status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        GraphError { status, code, message: message.into(), retry_after: None }
    }

    /// 400 `Request_BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        GraphError { status: StatusCode::BAD_REQUEST, code: "Request_BadRequest", message: message.into(), retry_after: None }
    }

    /// 404 `Request_ResourceNotFound`.
    pub fn not_found(what: &str) -> Self {
        GraphError {
            status: StatusCode::NOT_FOUND,
            code: "Request_ResourceNotFound",
            message: format!("Resource '{what}' does not exist or one of its queried reference-property objects are not present."),
            retry_after: None,
        }
    }

    /// 401 `InvalidAuthenticationToken`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        GraphError { status: StatusCode::UNAUTHORIZED, code: "InvalidAuthenticationToken", message: message.into(), retry_after: None }
    }

    /// 403 `Authorization_RequestDenied`.
    pub fn denied() -> Self {
        GraphError {
            status: StatusCode::FORBIDDEN,
            code: "Authorization_RequestDenied",
            message: "Insufficient privileges to complete the operation.".into(),
            retry_after: None,
        }
    }

    /// 500 with the request id to look for in the log (the cause is logged, not shown).
    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        let id = crate::crypto::new_guid();
        tracing::error!(request = id, "{err}");
        GraphError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "Service_InternalServerError",
            message: format!("internal error (request {id})"),
            retry_after: None,
        }
    }
}

impl From<crate::db::DbError> for GraphError {
    fn from(err: crate::db::DbError) -> Self {
        match err {
            crate::db::DbError::Conflict(message) => GraphError::bad_request(message),
            other => GraphError::internal(&other),
        }
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "innerError": {"date": crate::now_rfc3339(), "request-id": crate::crypto::new_guid()},
        }});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = axum::http::HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert("retry-after", value);
        }
        response
    }
}

/// A token-endpoint error: `{"error","error_description":"AADSTS…","error_codes":[…]}`.
#[derive(Debug, Clone)]
pub struct TokenEndpointError {
    /// HTTP status (400 or 401).
    pub status: StatusCode,
    /// OAuth error, e.g. `invalid_client`.
    pub error: &'static str,
    /// The AADSTS number.
    pub code: u32,
    /// For people.
    pub description: String,
}

impl TokenEndpointError {
    /// A 400 with `error` and `AADSTS{code}: {description}`.
    pub fn new(error: &'static str, code: u32, description: impl Into<String>) -> Self {
        TokenEndpointError { status: StatusCode::BAD_REQUEST, error, code, description: description.into() }
    }

    /// The tenant's own failure (a database, signing): logged, and answered without its cause.
    pub fn unavailable(err: &dyn std::fmt::Display) -> Self {
        tracing::error!("{err}");
        TokenEndpointError::new("temporarily_unavailable", 50000, "There was an error issuing a token.")
    }
}

impl IntoResponse for TokenEndpointError {
    fn into_response(self) -> Response {
        let trace = crate::crypto::new_guid();
        let body = json!({
            "error": self.error,
            "error_description": format!("AADSTS{}: {} Trace ID: {trace}", self.code, self.description),
            "error_codes": [self.code],
            "timestamp": crate::now_rfc3339(),
            "trace_id": trace,
            "correlation_id": crate::crypto::new_guid(),
        });
        (self.status, axum::Json(body)).into_response()
    }
}
