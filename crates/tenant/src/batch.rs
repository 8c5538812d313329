//! JSON `$batch` (`POST /v1.0/$batch`): up to 20 requests in one, each run through the same
//! routes (and checks, and throttle) as if it came alone, with the caller's token. Requests run
//! in order; one whose `dependsOn` failed answers 424 without running.

use axum::Json;
use axum::Router;
use axum::body::Body as HttpBody;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tower::ServiceExt as _;

use crate::odata::GraphError;

/// Most requests in one batch (Graph's limit).
pub const MAX_REQUESTS: usize = 20;

/// Runs a batch against `routes`.
pub async fn run(
    routes: Router,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match execute(routes, headers, body).await {
        Ok(responses) => Json(json!({"responses": responses})).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn execute(
    routes: Router,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Vec<Value>, GraphError> {
    let body = body.map_err(|rejection| GraphError::bad_request(rejection.body_text()))?;
    let batch: Value =
        serde_json::from_slice(&body).map_err(|err| GraphError::bad_request(format!("Unable to read JSON request payload: {err}")))?;
    let requests =
        batch.get("requests").and_then(Value::as_array).ok_or_else(|| GraphError::bad_request("A batch needs a 'requests' array."))?;
    if requests.len() > MAX_REQUESTS {
        return Err(GraphError::bad_request(format!("A batch holds at most {MAX_REQUESTS} requests; this one has {}.", requests.len())));
    }
    let mut ids = std::collections::BTreeSet::new();
    for request in requests {
        let id =
            request.get("id").and_then(Value::as_str).ok_or_else(|| GraphError::bad_request("Every batch request needs a string 'id'."))?;
        if !ids.insert(id) {
            return Err(GraphError::bad_request(format!("Batch request id '{id}' appears twice.")));
        }
    }
    let mut outcomes: Vec<(String, u16)> = Vec::new();
    let mut responses = Vec::new();
    for request in requests {
        let id = request.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let depends: Vec<String> = request
            .get("dependsOn")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(|item| item.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let failed_dependency =
            depends.iter().find(|dependency| !outcomes.iter().any(|(done, status)| done == *dependency && *status < 400));
        let (status, response_headers, response_body) = match failed_dependency {
            Some(dependency) => (
                424,
                json!({}),
                error_body("Request_FailedDependency", &format!("Request '{dependency}' it depends on failed or has not run.")),
            ),
            None => match one(&routes, &headers, request).await {
                Ok(answer) => answer,
                Err(err) => (err.status.as_u16(), json!({"content-type": "application/json"}), error_body(err.code, &err.message)),
            },
        };
        outcomes.push((id.clone(), status));
        let mut response = json!({"id": id, "status": status, "headers": response_headers});
        if !response_body.is_null() {
            response["body"] = response_body;
        }
        responses.push(response);
    }
    Ok(responses)
}

fn error_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "innerError": {"date": crate::now_rfc3339(), "request-id": crate::crypto::new_guid()}}})
}

/// Runs one request of the batch through the routes.
async fn one(routes: &Router, outer: &HeaderMap, request: &Value) -> Result<(u16, Value, Value), GraphError> {
    let method = request.get("method").and_then(Value::as_str).unwrap_or_default().to_ascii_uppercase();
    let method = match method.as_str() {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PATCH" => Method::PATCH,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        other => return Err(GraphError::bad_request(format!("Unsupported method '{other}' in a batch request."))),
    };
    let url = request.get("url").and_then(Value::as_str).unwrap_or_default();
    let path = url.strip_prefix("https://graph.microsoft.com").unwrap_or(url);
    let path = path.strip_prefix("/v1.0").unwrap_or(path);
    if !path.starts_with('/') || path.starts_with("/$batch") || path.contains("://") {
        return Err(GraphError::bad_request(format!("Invalid batch request url '{url}': give a path such as /users.")));
    }
    let mut builder = Request::builder().method(method).uri(format!("/v1.0{path}"));
    for name in ["authorization", "host"] {
        if let Some(value) = outer.get(name) {
            builder = builder.header(name, value);
        }
    }
    let body = match request.get("body") {
        None | Some(Value::Null) => HttpBody::empty(),
        Some(body) => {
            builder = builder.header("content-type", "application/json");
            HttpBody::from(body.to_string())
        }
    };
    let inner = builder.body(body).map_err(|err| GraphError::bad_request(format!("Invalid batch request: {err}")))?;
    let response = routes.clone().oneshot(inner).await.map_err(|err| GraphError::internal(&err))?;
    let status = response.status();
    let mut headers = Map::new();
    for name in ["content-type", "location", "retry-after"] {
        if let Some(value) = response.headers().get(name).and_then(|value| value.to_str().ok()) {
            headers.insert(name.into(), Value::String(value.to_string()));
        }
    }
    let bytes = axum::body::to_bytes(response.into_body(), crate::MAX_BODY).await.map_err(|err| GraphError::internal(&err))?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok((if status == StatusCode::OK { 200 } else { status.as_u16() }, Value::Object(headers), body))
}
