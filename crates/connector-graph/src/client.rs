//! HTTP to the Graph-compatible API: the client-credentials token (cached), requests with
//! retries honouring `Retry-After`, and the mapping of answers onto [`ConnectorError`].

use std::time::{Duration, Instant};

use connector_api::ConnectorError;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::GraphConfig;

pub(crate) struct Client {
    pub config: GraphConfig,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<(zeroize::Zeroizing<String>, Instant)>>,
}

/// What an answer was.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Client {
    pub fn new(config: GraphConfig) -> Result<Self, ConnectorError> {
        let mut builder =
            reqwest::Client::builder().use_rustls_tls().timeout(Duration::from_secs(60)).pool_idle_timeout(Duration::from_secs(30));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|err| ConnectorError::Config(format!("ca_file {}: {err}", path.display())))?;
            let ca =
                reqwest::Certificate::from_pem(&pem).map_err(|err| ConnectorError::Config(format!("ca_file {}: {err}", path.display())))?;
            builder = builder.add_root_certificate(ca).tls_built_in_root_certs(false);
        }
        let http = builder.build().map_err(|err| ConnectorError::Config(format!("HTTP client: {err}")))?;
        Ok(Client { config, http, token: tokio::sync::Mutex::new(None) })
    }

    /// A valid access token (signing in when there is none or it is about to expire).
    pub async fn token(&self) -> Result<zeroize::Zeroizing<String>, ConnectorError> {
        let mut slot = self.token.lock().await;
        if let Some((token, expires)) = slot.as_ref()
            && *expires > Instant::now() + Duration::from_secs(60)
        {
            return Ok(token.clone());
        }
        let url = format!("{}/{}/oauth2/v2.0/token", self.config.authority.trim_end_matches('/'), self.config.tenant);
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.config.client_id.as_str()),
            ("client_secret", self.config.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ];
        let response =
            self.http.post(&url).form(&form).send().await.map_err(|err| ConnectorError::Unavailable(format!("sign in at {url}: {err}")))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|err| ConnectorError::Unavailable(format!("sign in at {url}: {err}")))?;
        if !status.is_success() {
            let why = body.get("error_description").and_then(Value::as_str).unwrap_or("no description");
            return Err(if status.is_server_error() {
                ConnectorError::Unavailable(format!("sign in: {why}"))
            } else {
                ConnectorError::Config(format!("the tenant refused the connector's credentials: {why}"))
            });
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| ConnectorError::Unavailable("sign in: no access_token".into()))?;
        let lifetime = body.get("expires_in").and_then(|value| value.as_u64().or_else(|| value.as_str()?.parse().ok())).unwrap_or(300);
        let token = zeroize::Zeroizing::new(token.to_string());
        *slot = Some((token.clone(), Instant::now() + Duration::from_secs(lifetime)));
        Ok(token)
    }

    /// The absolute URL of a Graph path (`/users`) or a link the API gave.
    pub fn url(&self, path_or_link: &str) -> String {
        if path_or_link.starts_with("https://") {
            path_or_link.to_string()
        } else {
            format!("{}{path_or_link}", self.config.graph.trim_end_matches('/'))
        }
    }

    /// One request, retried on 429/503/504 and lost connections (waiting `Retry-After`, or
    /// 1, 2, 4 … seconds), up to the configured attempts.
    pub async fn send(&self, method: Method, path_or_link: &str, body: Option<&Value>) -> Result<Answer, ConnectorError> {
        let url = self.url(path_or_link);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.token().await?;
            let mut request = self.http.request(method.clone(), &url).bearer_auth(token.as_str());
            if let Some(body) = body {
                request = request.json(body);
            }
            let (wait, why) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response.headers().get("retry-after").and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
                    if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT) {
                        (retry_after.unwrap_or(1 << attempt.min(5)), format!("{method} {url}: {status}"))
                    } else {
                        let text = response.text().await.map_err(|err| ConnectorError::Unavailable(format!("{method} {url}: {err}")))?;
                        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
                        return Ok(Answer { status, body });
                    }
                }
                Err(err) => (1 << attempt.min(5), format!("{method} {url}: {err}")),
            };
            if attempt >= self.config.attempts {
                return Err(ConnectorError::Unavailable(format!("{why} (after {attempt} tries)")));
            }
            tracing::debug!(connector = self.config.id, attempt, wait, "{why}; retrying");
            tokio::time::sleep(Duration::from_secs(wait.min(60))).await;
        }
    }

    /// A request whose failure is about one object: 4xx → `Rejected` with Graph's code.
    pub async fn object_call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, ConnectorError> {
        let answer = self.send(method.clone(), path, body).await?;
        if answer.status.is_success() {
            return Ok(answer);
        }
        Err(error_of(&format!("{method} {path}"), &answer))
    }
}

/// Maps an error answer onto what the runner does about it.
pub(crate) fn error_of(operation: &str, answer: &Answer) -> ConnectorError {
    let code = answer.body.pointer("/error/code").and_then(Value::as_str).unwrap_or("unknown");
    let message = answer.body.pointer("/error/message").and_then(Value::as_str).unwrap_or("no message");
    let text = format!("{operation}: {} {code}: {message}", answer.status.as_u16());
    match answer.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ConnectorError::Config(format!("{text} (check the app's roles)")),
        status if status.is_server_error() => ConnectorError::Unavailable(text),
        StatusCode::NOT_FOUND => ConnectorError::Rejected { code: "no-such-object".into(), message: text },
        _ if message.contains("already exist") => ConnectorError::Rejected { code: "already-exists".into(), message: text },
        _ => ConnectorError::Rejected { code: code.to_string(), message: text },
    }
}
