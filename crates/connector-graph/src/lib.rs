//! The cloud connector: users, groups (with members) and organizational contacts through a
//! Microsoft Graph-compatible API — Isthmus's own tenant, and written to Graph's contract so it
//! would talk to Microsoft Graph too.
//!
//! - Authentication: client credentials (`{authority}/{tenant}/oauth2/v2.0/token`, scope
//!   `https://graph.microsoft.com/.default`), the token reused until a minute before it expires.
//! - Import: a full import is the first round of `users/delta()`, `groups/delta()` (with each
//!   group's `members@delta`) and `contacts/delta()`; its watermark is the three delta links. A
//!   delta import follows them: changed objects come whole (a changed group's members are read
//!   again), deleted ones as deletes.
//! - Export: create (`POST`, the new id is the anchor), update (`PATCH`; `member` changes as
//!   `members/$ref` adds and removes), delete.
//! - Transient failures (429, 503, 504, a lost connection) are retried with back-off, honouring
//!   `Retry-After`; a 4xx about one object is that object's error.
//!
//! Anchors are object ids; DNs are `objectId=<id>`; group members are references to such DNs.
//! Knows no store and no engine.

mod client;
mod export;
mod import;

use std::path::PathBuf;
use std::sync::Arc;

use connector_api::{Connector, ConnectorError, ConnectorInfo, Role};
use model::ConnectorId;
use serde::Deserialize;
use zeroize::Zeroizing;

/// One Graph connector's settings (a `[[connector]]` table with `kind = "graph"`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// The connector id rules use, e.g. `tenant`.
    pub id: String,
    /// The sign-in authority host, e.g. `https://127.0.0.1:8443` (or `https://login.microsoftonline.com`).
    pub authority: String,
    /// The Graph base URL, e.g. `https://127.0.0.1:8443/v1.0` (or `https://graph.microsoft.com/v1.0`).
    pub graph: String,
    /// The tenant: its id or a domain.
    pub tenant: String,
    /// The app (client) id.
    pub client_id: String,
    /// Its secret; wiped from memory when dropped, never logged.
    pub client_secret: Zeroizing<String>,
    /// PEM file of the CA to trust (a self-hosted tenant); without it, the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Objects per page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Tries of a request that fails transiently (429, 503, 504, a lost connection).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

fn default_page_size() -> u32 {
    200
}

fn default_attempts() -> u32 {
    5
}

impl std::fmt::Debug for GraphConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphConfig")
            .field("id", &self.id)
            .field("authority", &self.authority)
            .field("graph", &self.graph)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

impl GraphConfig {
    /// Every problem with the settings, each naming the setting.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [("authority", &self.authority), ("graph", &self.graph)] {
            if !value.starts_with("https://") {
                problems.push(format!("`{name}` must be an https:// URL, got {value:?}"));
            }
        }
        for (name, value) in [("id", &self.id), ("tenant", &self.tenant), ("client_id", &self.client_id)] {
            if value.trim().is_empty() {
                problems.push(format!("`{name}` is empty"));
            }
        }
        if self.client_secret.is_empty() {
            problems.push("`client_secret` is empty".into());
        }
        if !(1..=999).contains(&self.page_size) {
            problems.push(format!("`page_size` must be 1–999, got {}", self.page_size));
        }
        if self.attempts == 0 || self.attempts > 20 {
            problems.push(format!("`attempts` must be 1–20, got {}", self.attempts));
        }
        problems
    }
}

/// Checks the settings, signs in once (so mistakes show at once) and returns the connector.
pub async fn open(config: GraphConfig) -> Result<Connector, ConnectorError> {
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(ConnectorError::Config(format!("connector {}: {}", config.id, problems.join("; "))));
    }
    let client = Arc::new(client::Client::new(config)?);
    client.token().await?;
    let id = ConnectorId(client.config.id.clone());
    let mut parameters = std::collections::BTreeMap::new();
    parameters.insert("Connector.ID".to_string(), sync_expr::Value::str(id.0.clone()));
    Ok(Connector {
        info: ConnectorInfo { id, kind: "graph".into(), role: Role::Target, parameters },
        import: Box::new(import::GraphImport { client: client.clone() }),
        export: Some(Box::new(export::GraphExport { client })),
    })
}

/// What the tenant says about the sourceAnchor of synced objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorCheck {
    /// The tenant had none: this server's choice is now stored there.
    Stored,
    /// The tenant holds the same choice.
    Same,
    /// The tenant holds another (set by the sync server that synced its objects first).
    Different(String),
}

/// Compares `anchor` (an attribute name) with the `anchorAttribute` the tenant keeps in
/// `/directory/onPremisesSynchronization` and, when the tenant has none yet and `store` is
/// true, stores it there with this client's version: the tenant remembers the anchor, and a
/// new sync server reads it (Entra Connect does the same at install).
pub async fn check_anchor(config: &GraphConfig, anchor: &str, store: bool) -> Result<AnchorCheck, ConnectorError> {
    let client = client::Client::new(config.clone())?;
    let settings = sync_settings(&client).await?;
    let id = settings.get("id").and_then(serde_json::Value::as_str).unwrap_or(config.tenant.as_str()).to_string();
    match settings.pointer("/configuration/anchorAttribute").and_then(serde_json::Value::as_str) {
        Some(held) if held.eq_ignore_ascii_case(anchor) => Ok(AnchorCheck::Same),
        Some(held) => Ok(AnchorCheck::Different(held.to_string())),
        None if !store => Ok(AnchorCheck::Same),
        None => {
            let body = serde_json::json!({"configuration": {
                "anchorAttribute": anchor,
                "synchronizationClientVersion": format!("isthmus {}", env!("CARGO_PKG_VERSION")),
                "applicationId": config.client_id,
            }});
            let path = format!("/directory/onPremisesSynchronization/{id}");
            client.object_call(reqwest::Method::PATCH, &path, Some(&body)).await?;
            Ok(AnchorCheck::Stored)
        }
    }
}

async fn sync_settings(client: &client::Client) -> Result<serde_json::Value, ConnectorError> {
    let answer = client.send(reqwest::Method::GET, "/directory/onPremisesSynchronization", None).await?;
    if !answer.status.is_success() {
        return Err(client::error_of("GET /directory/onPremisesSynchronization", &answer));
    }
    Ok(answer.body.pointer("/value/0").cloned().unwrap_or_default())
}

/// The sync schedule settings the tenant keeps for its sync servers
/// (`/directory/onPremisesSynchronization` → `configuration`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantSchedule {
    /// `synchronizationInterval` as the tenant writes it (ISO 8601, e.g. `PT30M`).
    pub interval: Option<String>,
    /// `accidentalDeletionPrevention.synchronizationPreventionType`: `disabled`,
    /// `enabledForCount` or `enabledForPercentage`.
    pub prevention: Option<String>,
    /// `accidentalDeletionPrevention.alertThreshold`.
    pub threshold: Option<u64>,
}

/// Reads [`TenantSchedule`].
pub async fn tenant_schedule(config: &GraphConfig) -> Result<TenantSchedule, ConnectorError> {
    let client = client::Client::new(config.clone())?;
    let settings = sync_settings(&client).await?;
    let text = |pointer: &str| settings.pointer(pointer).and_then(serde_json::Value::as_str).map(str::to_string);
    Ok(TenantSchedule {
        interval: text("/configuration/synchronizationInterval"),
        prevention: text("/configuration/accidentalDeletionPrevention/synchronizationPreventionType"),
        threshold: settings.pointer("/configuration/accidentalDeletionPrevention/alertThreshold").and_then(serde_json::Value::as_u64),
    })
}

/// The anchor attribute the tenant remembers, if a sync server stored one.
pub async fn tenant_anchor(config: &GraphConfig) -> Result<Option<String>, ConnectorError> {
    let client = client::Client::new(config.clone())?;
    let settings = sync_settings(&client).await?;
    Ok(settings.pointer("/configuration/anchorAttribute").and_then(serde_json::Value::as_str).map(str::to_string))
}

/// An app-only access token for the tenant `config` names (client credentials), for
/// administrative calls such as registering a pass-through agent.
pub async fn app_token(config: &GraphConfig) -> Result<zeroize::Zeroizing<String>, ConnectorError> {
    client::Client::new(config.clone())?.token().await
}

/// Sends a finished cycle's report to the tenant (`POST /isthmus/v1/syncReports`); returns the
/// ids of the active servers reporting to it when there is more than one (empty otherwise).
pub async fn send_sync_report(config: &GraphConfig, report: &health::SyncReport) -> Result<Vec<String>, ConnectorError> {
    let client = client::Client::new(config.clone())?;
    let url = format!("{}/isthmus/v1/syncReports", config.authority.trim_end_matches('/'));
    let body = serde_json::to_value(report).map_err(|err| ConnectorError::Config(format!("a sync report: {err}")))?;
    let answer = client.send(reqwest::Method::POST, &url, Some(&body)).await?;
    if !answer.status.is_success() {
        return Err(client::error_of(&format!("POST {url}"), &answer));
    }
    Ok(answer.body["competingActiveServers"].as_array().into_iter().flatten().filter_map(|id| id.as_str().map(str::to_string)).collect())
}

/// One user's credential for password hash sync.
#[derive(Debug, Clone)]
pub struct CredentialUpdate {
    /// The user's `onPremisesImmutableId` in the tenant.
    pub immutable_id: String,
    /// `phs::SyncedCredential::to_wire()`.
    pub credential: zeroize::Zeroizing<String>,
    /// "User must change password at next logon".
    pub must_change: bool,
    /// Times the password was seen in leaks, when it is on the tenant's list.
    pub leaked: Option<u64>,
}

/// The tenant's password-hash-sync endpoints over one client: it signs in once and keeps the
/// token for every call of a pass (a pass asks one range per hash prefix).
pub struct HashSyncEndpoints {
    client: client::Client,
    authority: String,
}

impl HashSyncEndpoints {
    /// A handle for the tenant `config` names.
    pub fn new(config: &GraphConfig) -> Result<Self, ConnectorError> {
        Ok(HashSyncEndpoints {
            client: client::Client::new(config.clone())?,
            authority: config.authority.trim_end_matches('/').to_string(),
        })
    }

    /// The k-anonymity range of the tenant's leaked-hash list under a 5-hex-digit prefix:
    /// (suffix, times seen) pairs; `None` when the tenant has no list.
    pub async fn leaked_range(&self, prefix: &str) -> Result<Option<Vec<(String, u64)>>, ConnectorError> {
        let url = format!("{}/isthmus/v1/leakedCredentials/range/{prefix}", self.authority);
        let answer = self.client.send(reqwest::Method::GET, &url, None).await?;
        if answer.status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.status.is_success() {
            return Err(client::error_of(&format!("GET {url}"), &answer));
        }
        Ok(Some(
            answer.body["value"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|item| Some((item["suffix"].as_str()?.to_string(), item["count"].as_u64()?)))
                .collect(),
        ))
    }

    /// Sends credentials to the tenant's password-hash-sync endpoint, 1,000 per request; returns
    /// each user's status (`Success`, `NoTargetConnection`, `FilteredByTarget`) by immutable id.
    pub async fn send_credentials(&self, updates: &[CredentialUpdate]) -> Result<Vec<(String, String)>, ConnectorError> {
        let url = format!("{}/isthmus/v1/passwordHashSync", self.authority);
        let mut statuses = Vec::with_capacity(updates.len());
        // Nothing to send still calls once: the tenant takes an empty batch as the heartbeat.
        let chunks: Vec<&[CredentialUpdate]> = if updates.is_empty() { vec![&[]] } else { updates.chunks(1000).collect() };
        for chunk in chunks {
            let items: Vec<serde_json::Value> = chunk
                .iter()
                .map(|update| {
                    serde_json::json!({"onPremisesImmutableId": update.immutable_id, "credential": update.credential.as_str(),
                                       "forceChangePasswordNextSignIn": update.must_change, "leakedCount": update.leaked})
                })
                .collect();
            let body = serde_json::json!({ "value": items });
            let answer = self.client.object_call(reqwest::Method::POST, &url, Some(&body)).await?;
            for status in answer.body["value"].as_array().into_iter().flatten() {
                let id = status["onPremisesImmutableId"].as_str().unwrap_or_default().to_string();
                statuses.push((id, status["status"].as_str().unwrap_or("Unknown").to_string()));
            }
        }
        Ok(statuses)
    }
}

/// The DN of an object with `id`.
pub fn dn_of(id: &str) -> String {
    format!("objectId={id}")
}

/// The id in a DN made by [`dn_of`] (or the value itself).
pub fn id_of(dn: &str) -> &str {
    dn.strip_prefix("objectId=").or_else(|| dn.strip_prefix("objectid=")).unwrap_or(dn)
}
