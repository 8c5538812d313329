//! Pass-through authentication: the tenant's half.
//!
//! **Agents.** An administrator's bearer token registers an agent (`POST
//! /isthmus/v1/passThroughAuthentication/agents`): the agent sends a PKCS#10 request for its own
//! TLS key and an X25519 public key; the tenant's agent CA (kept in the database, so every tenant
//! process shares it) issues a client certificate (subject: the tenant id and the agent id, client
//! authentication only). Every later call is made over mutual TLS with that certificate: the
//! HTTPS listener asks for (and verifies against the agent CA) a client certificate, and
//! [`Agent`] finds the active agent by the certificate's SHA-256 fingerprint. Revoking an agent
//! stops its certificates at once; renewal (`…/agent/renew`) issues a new certificate for a new
//! key and keeps the old one working for five minutes while the agent's connections switch.
//!
//! **Sign-ins.** For a synced user of a domain whose `passwordValidation` is `PassThrough`, the
//! token endpoint (after smart lockout) calls [`PassThrough`]: the password is sealed separately
//! to each live agent's key ([`pta::seal`], bound to the request, agent, user and expiry) and
//! held only in memory; the [`Hub`] hands the request to the first agent that long-polls
//! (`…/agent/poll`), which gets only its own ciphertext. If that agent does not answer within the
//! lease, or answers that it could not check (no DC, could not decrypt), another agent that has
//! not tried gets it; the sign-in waits at most the timeout, then fails with a retryable error.
//! Nothing about a request is written to disk, and it is forgotten when answered or abandoned.
//!
//! **Fallback.** An administrator switches a domain back to password hash sync at any time
//! (`passwordValidation`); optionally (`automaticFallbackSeconds`), when no agent has been seen
//! for that long, users with a synced hash sign in with it (Entra has only the manual switch).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::db::{self, AgentRow};
use crate::odata::{GraphError, TokenEndpointError};
use crate::signin::{SignInMethod, Verdict};
use crate::{AppState, crypto, unix_now};

/// Entra's limit of agents per tenant.
pub const MAX_AGENTS: usize = 40;

/// Sign-ins waiting for agents at once; beyond it new ones are refused at once (retryable)
/// rather than queued, so a flood cannot grow the tenant's memory without bound.
pub const MAX_PENDING: usize = 10_000;

/// Timings of pass-through sign-ins (defaults in [`PtaSettings::default`]).
#[derive(Debug, Clone, Copy)]
pub struct PtaSettings {
    /// How long a sign-in waits for an agent's answer in all.
    pub timeout: Duration,
    /// How long one agent may hold a request before another gets it.
    pub lease: Duration,
    /// How long an agent's poll waits for work before it returns empty.
    pub poll_wait: Duration,
    /// How long after its last poll an agent still counts as connected.
    pub alive: Duration,
    /// Lifetime of agent certificates (Entra renews 30 days before expiry; agents here renew
    /// when a sixth of the lifetime is left, 30 days of the default 180).
    pub certificate_lifetime: Duration,
}

impl Default for PtaSettings {
    fn default() -> Self {
        PtaSettings {
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(4),
            poll_wait: Duration::from_secs(10),
            alive: Duration::from_secs(15),
            certificate_lifetime: Duration::from_secs(180 * 24 * 3600),
        }
    }
}

/// The client certificate of a connection (DER), put on every request by the listener.
#[derive(Clone, Default)]
pub struct PeerCertificate(pub Option<Arc<Vec<u8>>>);

/// SHA-256 of a certificate, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    crate::crypto::hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// The agent CA: issues and (through the listener) verifies agent certificates.
pub struct AgentCa {
    /// Its certificate (PEM), given to agents.
    pub cert_pem: String,
    /// Its certificate (DER), the root the listener verifies client certificates with.
    pub cert_der: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// What the database keeps of the agent CA (setting `pta_ca`).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredCa {
    cert: String,
    key: zeroize::Zeroizing<String>,
}

impl AgentCa {
    /// Reads the agent CA from the database, making it on a tenant's first start.
    pub async fn load_or_create(db: &db::Db, tenant_id: &str) -> Result<AgentCa, db::DbError> {
        let candidate = new_ca(tenant_id).map_err(db::DbError::Config)?;
        let stored = db.call(move |sql| db::setting_or_insert(sql, "pta_ca", &candidate)).await?;
        let stored: StoredCa =
            serde_json::from_slice(&stored).map_err(|err| db::DbError::Corrupt(format!("the agent CA setting: {err}")))?;
        let corrupt = |err: rcgen::Error| db::DbError::Corrupt(format!("the agent CA setting: {err}"));
        let key = rcgen::KeyPair::from_pem(&stored.key).map_err(corrupt)?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&stored.cert, key).map_err(corrupt)?;
        use rustls::pki_types::pem::PemObject as _;
        let cert_der = rustls::pki_types::CertificateDer::from_pem_slice(stored.cert.as_bytes())
            .map_err(|err| db::DbError::Corrupt(format!("the agent CA certificate: {err}")))?
            .to_vec();
        Ok(AgentCa { cert_pem: stored.cert, cert_der, issuer })
    }

    /// Issues an agent's client certificate for the key of `csr_pem` (whose signature proves
    /// the agent holds it). Only the key is taken from the request: subject, usage and
    /// lifetime are the tenant's.
    fn issue(
        &self,
        csr_pem: &str,
        tenant_id: &str,
        agent_id: &str,
        lifetime: Duration,
        now: i64,
    ) -> Result<(String, Vec<u8>, i64), String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|err| format!("the certificate request is not a valid, self-signed PKCS#10 request: {err}"))?;
        let not_after = now + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, tenant_id);
        params.distinguished_name.push(rcgen::DnType::CommonName, agent_id);
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = time::OffsetDateTime::from_unix_timestamp(now - 60).map_err(|err| err.to_string())?;
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).map_err(|err| err.to_string())?;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&crypto::random_bytes(16)));
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).map_err(|err| format!("issuing the certificate failed: {err}"))?;
        Ok((cert.pem(), cert.der().to_vec(), not_after))
    }
}

fn new_ca(tenant_id: &str) -> Result<Vec<u8>, String> {
    let key = rcgen::KeyPair::generate().map_err(|err| err.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, tenant_id);
    params.distinguished_name.push(rcgen::DnType::CommonName, "Isthmus pass-through agent CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365 * 20);
    let cert = params.self_signed(&key).map_err(|err| err.to_string())?;
    serde_json::to_vec(&StoredCa { cert: cert.pem(), key: zeroize::Zeroizing::new(key.serialize_pem()) }).map_err(|err| err.to_string())
}

/// The caller of an agent endpoint: an active agent, by its client certificate.
pub struct Agent {
    /// Its registration.
    pub row: AgentRow,
    /// The certificate's fingerprint.
    pub fingerprint: String,
}

impl FromRequestParts<AppState> for Agent {
    type Rejection = GraphError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, GraphError> {
        let peer = parts.extensions.get::<PeerCertificate>().and_then(|peer| peer.0.clone());
        let Some(der) = peer else {
            tracing::warn!(path = %parts.uri.path(), "pass-through agent call without a client certificate");
            return Err(GraphError::unauthenticated("A pass-through agent certificate is required (mutual TLS)."));
        };
        let fingerprint = fingerprint(&der);
        let lookup = fingerprint.clone();
        let row = state.db.read(move |sql| db::agent_by_certificate(sql, &lookup, unix_now())).await?;
        match row {
            Some(row) => Ok(Agent { row, fingerprint }),
            None => {
                tracing::warn!(certificate = %fingerprint, path = %parts.uri.path(), "pass-through call refused: the certificate belongs to no active agent (revoked, renewed or unknown)");
                state
                    .record(
                        "PassThrough",
                        "agent call refused".into(),
                        fingerprint.clone(),
                        parts.uri.path().to_string(),
                        "unknown or revoked agent",
                    )
                    .await;
                Err(GraphError::new(
                    StatusCode::FORBIDDEN,
                    "Authorization_RequestDenied",
                    "This agent is not registered or has been revoked.",
                ))
            }
        }
    }
}

/// The administrator of a registration, listing or revocation: an app with
/// `Directory.ReadWrite.All` (reads: `Directory.Read.All`), or a user holding Global
/// Administrator or Hybrid Identity Administrator. Returns who, for the audit trail.
async fn admin(state: &AppState, parts_headers: &axum::http::HeaderMap, write: bool) -> Result<String, GraphError> {
    const ADMIN_ROLES: [&str; 2] = ["62e90394-69f5-4237-9190-012177145e10", "8ac3fc64-6eca-42ea-9e69-59f4c7b60eb2"];
    let claims = crate::bearer_claims(state, parts_headers)?;
    if claims.get("idtyp").and_then(Value::as_str) == Some("user") {
        let oid = claims.get("oid").and_then(Value::as_str).unwrap_or_default().to_string();
        let lookup = oid.clone();
        let holds = state
            .db
            .read(move |sql| {
                for role in ADMIN_ROLES {
                    if db::role_members(sql, role)?.iter().any(|(id, _)| *id == lookup) {
                        return Ok(true);
                    }
                }
                Ok(false)
            })
            .await?;
        return if holds { Ok(oid) } else { Err(GraphError::denied()) };
    }
    let roles: Vec<&str> =
        claims.get("roles").and_then(Value::as_array).map(|roles| roles.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let allowed =
        crate::permissions::needed(if write { crate::permissions::Area::AgentsWrite } else { crate::permissions::Area::AgentsRead });
    if roles.iter().any(|role| allowed.contains(role)) {
        Ok(claims.get("appid").and_then(Value::as_str).unwrap_or_default().to_string())
    } else {
        Err(GraphError::denied())
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, GraphError> {
    serde_json::from_slice(body).map_err(|err| GraphError::bad_request(format!("The {what} is not valid: {err}.")))
}

fn check_encryption_key(text: &str) -> Result<(), GraphError> {
    let key = pta::key_from_text(text)
        .ok_or_else(|| GraphError::bad_request("encryptionKey must be 32 bytes of base64 (an X25519 public key)."))?;
    // A seal with any ephemeral key fails exactly for low-order (non-contributory) keys.
    pta::seal(&key, [7; 32], b"probe", b"probe")
        .map(|_| ())
        .map_err(|_| GraphError::bad_request("encryptionKey is not a usable X25519 public key."))
}

/// `POST /isthmus/v1/passThroughAuthentication/agents`: registers an agent.
pub async fn register(state: AppState, headers: axum::http::HeaderMap, body: bytes::Bytes) -> Result<Response, GraphError> {
    let who = admin(&state, &headers, true).await?;
    let request: pta::Registration = parse_body(&body, "registration")?;
    check_encryption_key(&request.encryption_key)?;
    if request.machine_name.trim().is_empty() || request.machine_name.len() > 255 || request.version.len() > 64 {
        return Err(GraphError::bad_request("machineName (1–255 characters) and version (at most 64) are required."));
    }
    let now = unix_now();
    let key = request.encryption_key.trim().to_string();
    let (active, known) = state.db.read(move |sql| Ok((db::active_agents(sql, now)?, db::agent_by_key(sql, &key)?))).await?;
    // A key is one agent's: the same registration sent again (a retry after a lost answer)
    // gets the same agent with a fresh certificate, never a second agent sharing the key.
    match known {
        Some(agent) if agent.revoked_at.is_some() => {
            return Err(GraphError::bad_request(
                "This encryption key belonged to a revoked agent; the agent must generate a new key to register again.",
            ));
        }
        Some(agent) => {
            let (certificate, der, not_after) = state
                .pta_ca
                .issue(&request.csr, &state.identity.tenant_id, &agent.id, state.pta_settings.certificate_lifetime, now)
                .map_err(GraphError::bad_request)?;
            let (id, key, print) = (agent.id.clone(), agent.encryption_key.clone(), fingerprint(&der));
            state.db.call(move |sql| db::renew_agent(sql, &id, &key, &print, not_after, now + 300)).await?;
            state.record("PassThrough", format!("register agent again on {}", agent.machine), who, agent.id.clone(), "success").await;
            let registered = pta::Registered { agent_id: agent.id, certificate, ca_certificate: state.pta_ca.cert_pem.clone(), not_after };
            return Ok((StatusCode::OK, Json(registered)).into_response());
        }
        None => {}
    }
    if active.len() >= MAX_AGENTS {
        return Err(GraphError::bad_request(format!("A tenant has at most {MAX_AGENTS} pass-through agents; revoke one first.")));
    }
    let agent_id = crypto::new_guid();
    let (certificate, der, not_after) = state
        .pta_ca
        .issue(&request.csr, &state.identity.tenant_id, &agent_id, state.pta_settings.certificate_lifetime, now)
        .map_err(GraphError::bad_request)?;
    let row = AgentRow {
        id: agent_id.clone(),
        machine: request.machine_name.trim().to_string(),
        version: request.version.clone(),
        encryption_key: request.encryption_key.trim().to_string(),
        registered_at: now,
        registered_by: who.clone(),
        not_after,
        revoked_at: None,
    };
    let print = fingerprint(&der);
    state
        .db
        .call(move |sql| {
            if db::agent_by_key(sql, &row.encryption_key)?.is_some() {
                return Err(db::DbError::Conflict("The same agent registered concurrently; send the registration again.".into()));
            }
            db::insert_agent(sql, &row, &print)
        })
        .await?;
    state.record("PassThrough", format!("register agent on {}", request.machine_name.trim()), who, agent_id.clone(), "success").await;
    let registered = pta::Registered { agent_id, certificate, ca_certificate: state.pta_ca.cert_pem.clone(), not_after };
    Ok((StatusCode::CREATED, Json(registered)).into_response())
}

/// `POST /isthmus/v1/passThroughAuthentication/agent/renew` (mutual TLS).
pub async fn renew(state: AppState, agent: Agent, body: bytes::Bytes) -> Result<Response, GraphError> {
    let request: pta::Renewal = parse_body(&body, "renewal")?;
    check_encryption_key(&request.encryption_key)?;
    let now = unix_now();
    let (certificate, der, not_after) = state
        .pta_ca
        .issue(&request.csr, &state.identity.tenant_id, &agent.row.id, state.pta_settings.certificate_lifetime, now)
        .map_err(GraphError::bad_request)?;
    let (id, key, print) = (agent.row.id.clone(), request.encryption_key.trim().to_string(), fingerprint(&der));
    state.db.call(move |sql| db::renew_agent(sql, &id, &key, &print, not_after, now + 300)).await?;
    state.record("PassThrough", "renew agent certificate".into(), agent.row.id.clone(), agent.row.id.clone(), "success").await;
    let registered = pta::Registered { agent_id: agent.row.id, certificate, ca_certificate: state.pta_ca.cert_pem.clone(), not_after };
    Ok(Json(registered).into_response())
}

/// `GET /isthmus/v1/passThroughAuthentication/agents`: every agent with its health.
pub async fn list(state: AppState, headers: axum::http::HeaderMap) -> Result<Response, GraphError> {
    admin(&state, &headers, false).await?;
    let rows = state.db.read(db::agents).await?;
    let now = unix_now();
    let health = state.pta_hub.health();
    let values: Vec<Value> = rows
        .iter()
        .map(|row| {
            let seen = health.get(&row.id);
            let status = if row.revoked_at.is_some() {
                "revoked"
            } else if row.not_after <= now {
                "expired"
            } else if seen.is_some_and(|seen| seen.connected) {
                "active"
            } else {
                "inactive"
            };
            json!({
                "id": row.id,
                "machineName": row.machine,
                "version": row.version,
                "status": status,
                "registeredDateTime": crate::rfc3339(row.registered_at),
                "registeredBy": row.registered_by,
                "certificateExpiryDateTime": crate::rfc3339(row.not_after),
                "revokedDateTime": row.revoked_at.map(crate::rfc3339),
                "lastSeenDateTime": seen.and_then(|seen| seen.last_seen).map(crate::rfc3339),
                "requestsServed": seen.map_or(0, |seen| seen.served),
                "errors": seen.map_or(0, |seen| seen.errors),
            })
        })
        .collect();
    let fallback = state.pta_fallback().map(|after| after.as_secs());
    Ok(Json(json!({"value": values, "automaticFallbackSeconds": fallback})).into_response())
}

/// `DELETE /isthmus/v1/passThroughAuthentication/agents/{id}`: revokes an agent.
pub async fn revoke(state: AppState, headers: axum::http::HeaderMap, id: String) -> Result<Response, GraphError> {
    let who = admin(&state, &headers, true).await?;
    let target = id.clone();
    let revoked = state.db.call(move |sql| db::revoke_agent(sql, &target, unix_now())).await?;
    if !revoked {
        return Err(GraphError::not_found(&id));
    }
    state.pta_hub.forget(&id);
    state.record("PassThrough", "revoke agent".into(), who, id, "success").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PATCH /isthmus/v1/passThroughAuthentication` with `{"automaticFallbackSeconds": N | null}`.
pub async fn update_settings(state: AppState, headers: axum::http::HeaderMap, body: bytes::Bytes) -> Result<Response, GraphError> {
    let who = admin(&state, &headers, true).await?;
    let body: serde_json::Map<String, Value> = parse_body(&body, "settings")?;
    for (key, value) in &body {
        match (key.as_str(), value) {
            ("automaticFallbackSeconds", Value::Null) => {}
            ("automaticFallbackSeconds", value) if value.as_u64().is_some_and(|seconds| (1..=86_400 * 30).contains(&seconds)) => {}
            ("automaticFallbackSeconds", _) => {
                return Err(GraphError::bad_request("automaticFallbackSeconds must be null (off) or 1 to 2592000 seconds."));
            }
            (other, _) => return Err(GraphError::bad_request(format!("Invalid property '{other}' (only automaticFallbackSeconds)."))),
        }
    }
    if let Some(value) = body.get("automaticFallbackSeconds") {
        let stored = value.as_u64().map(|seconds| seconds.to_string()).unwrap_or_default();
        let bytes = stored.clone().into_bytes();
        state.db.call(move |sql| db::set_setting(sql, "pta_fallback_seconds", &bytes)).await?;
        state.set_pta_fallback(value.as_u64().map(Duration::from_secs));
        state
            .record(
                "PassThrough",
                format!("set automatic fallback to {}", if stored.is_empty() { "off".into() } else { format!("{stored} s") }),
                who,
                "tenant".into(),
                "success",
            )
            .await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /isthmus/v1/passThroughAuthentication/agent/poll` (mutual TLS): the next sign-in for
/// this agent, or 204 after the poll wait.
pub async fn poll(state: AppState, agent: Agent) -> Result<Response, GraphError> {
    let wait = state.pta_settings.poll_wait;
    match state.pta_hub.next(&agent.row.id, wait).await {
        Some(work) => Ok(Json(work).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `POST /isthmus/v1/passThroughAuthentication/agent/answer` (mutual TLS).
pub async fn answer(state: AppState, agent: Agent, body: bytes::Bytes) -> Result<Response, GraphError> {
    let answer: pta::Answer = match serde_json::from_slice(&body) {
        Ok(answer) => answer,
        Err(err) => {
            tracing::warn!(agent = %agent.row.id, "malformed pass-through answer refused: {err}");
            state.pta_hub.count_error(&agent.row.id);
            return Err(GraphError::bad_request(format!("The answer is not valid: {err}.")));
        }
    };
    match state.pta_hub.deliver(&agent.row.id, answer) {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(refused) => {
            tracing::warn!(agent = %agent.row.id, "pass-through answer refused: {refused}");
            state.record("PassThrough", "agent answer refused".into(), agent.row.id.clone(), refused.to_string(), "refused").await;
            Err(GraphError::new(StatusCode::CONFLICT, "Request_BadRequest", refused.to_string()))
        }
    }
}

/// Why an answer was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No such request waits (finished, expired, or never made): a late or replayed answer.
    #[error("no sign-in request {0} is waiting (answered already, timed out, or unknown)")]
    Unknown(String),
    /// The request was never given to this agent.
    #[error("sign-in request {0} was not given to this agent")]
    NotGiven(String),
    /// This agent answered it already.
    #[error("this agent already answered sign-in request {0} (replay)")]
    Replayed(String),
}

/// An agent's health as the hub sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Health {
    /// Last poll or answer (Unix seconds).
    pub last_seen: Option<i64>,
    /// Polled within the alive window.
    pub connected: bool,
    /// Answers given.
    pub served: u64,
    /// Answers that were failures of the agent, and malformed messages.
    pub errors: u64,
}

struct Presence {
    last_seen: Instant,
    last_seen_unix: i64,
    served: u64,
    errors: u64,
}

struct Pending {
    user_principal_name: String,
    expires_at: i64,
    sealed: HashMap<String, String>,
    tried: HashSet<String>,
    answered: HashSet<String>,
    leased: Option<(String, Instant)>,
    answers: tokio::sync::mpsc::UnboundedSender<(String, pta::Answer)>,
}

#[derive(Default)]
struct HubState {
    queue: VecDeque<String>,
    pending: HashMap<String, Pending>,
    presence: HashMap<String, Presence>,
    last_agent_seen: Option<Instant>,
}

/// The queue between sign-ins and agents (in memory: passwords are never stored).
pub struct Hub {
    state: Mutex<HubState>,
    work: tokio::sync::Notify,
    settings: PtaSettings,
    started: Instant,
}

/// Why no agent answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// No agent is connected.
    NoAgent,
    /// Agents were asked; none answered in time.
    Timeout,
    /// Every agent that could be asked failed; the last failure.
    Failed(pta::Outcome),
    /// Too many sign-ins are waiting already.
    Busy,
}

impl Hub {
    /// An empty hub.
    pub fn new(settings: PtaSettings) -> Hub {
        Hub { state: Mutex::new(HubState::default()), work: tokio::sync::Notify::new(), settings, started: Instant::now() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn seen(state: &mut HubState, agent: &str) {
        let now = Instant::now();
        state.last_agent_seen = Some(now);
        let presence =
            state.presence.entry(agent.to_string()).or_insert(Presence { last_seen: now, last_seen_unix: 0, served: 0, errors: 0 });
        presence.last_seen = now;
        presence.last_seen_unix = unix_now();
    }

    /// Each agent's health, by id.
    pub fn health(&self) -> HashMap<String, Health> {
        let state = self.lock();
        state
            .presence
            .iter()
            .map(|(id, presence)| {
                let health = Health {
                    last_seen: Some(presence.last_seen_unix),
                    connected: presence.last_seen.elapsed() < self.settings.alive,
                    served: presence.served,
                    errors: presence.errors,
                };
                (id.clone(), health)
            })
            .collect()
    }

    /// How long since any agent was last seen (since the tenant started, if none was).
    pub fn unreachable_for(&self) -> Duration {
        self.lock().last_agent_seen.unwrap_or(self.started).elapsed()
    }

    /// Drops a revoked agent from the connected set.
    pub fn forget(&self, agent: &str) {
        self.lock().presence.remove(agent);
    }

    fn count_error(&self, agent: &str) {
        if let Some(presence) = self.lock().presence.get_mut(agent) {
            presence.errors += 1;
        }
    }

    /// The connected agents among `agents`.
    fn connected<'a>(&self, agents: &'a [AgentRow]) -> Vec<&'a AgentRow> {
        let state = self.lock();
        agents
            .iter()
            .filter(|agent| state.presence.get(&agent.id).is_some_and(|presence| presence.last_seen.elapsed() < self.settings.alive))
            .collect()
    }

    /// The next request for `agent`, waiting up to `wait`.
    async fn next(&self, agent: &str, wait: Duration) -> Option<pta::Work> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                Self::seen(&mut state, agent);
                let found = state.queue.iter().position(|id| {
                    state.pending.get(id).is_some_and(|pending| pending.sealed.contains_key(agent) && !pending.tried.contains(agent))
                });
                if let Some(index) = found
                    && let Some(id) = state.queue.remove(index)
                    && let Some(pending) = state.pending.get_mut(&id)
                {
                    pending.tried.insert(agent.to_string());
                    pending.leased = Some((agent.to_string(), Instant::now()));
                    return Some(pta::Work {
                        request_id: id,
                        user_principal_name: pending.user_principal_name.clone(),
                        sealed_password: pending.sealed.get(agent).cloned().unwrap_or_default(),
                        expires_at: pending.expires_at,
                    });
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                Self::seen(&mut self.lock(), agent);
                return None;
            }
        }
    }

    /// Takes an agent's answer to the request waiting for it.
    fn deliver(&self, agent: &str, answer: pta::Answer) -> Result<(), Refused> {
        let mut state = self.lock();
        Self::seen(&mut state, agent);
        let id = answer.request_id.clone();
        let Some(pending) = state.pending.get_mut(&id) else { return Err(Refused::Unknown(id)) };
        if !pending.tried.contains(agent) {
            return Err(Refused::NotGiven(id));
        }
        if !pending.answered.insert(agent.to_string()) {
            return Err(Refused::Replayed(id));
        }
        let failed = answer.outcome.is_retryable();
        let _ = pending.answers.send((agent.to_string(), answer));
        if let Some(presence) = state.presence.get_mut(agent) {
            presence.served += 1;
            if failed {
                presence.errors += 1;
            }
        }
        Ok(())
    }

    /// Asks the connected agents among `agents` to check `password` for `upn`.
    pub async fn check(&self, agents: &[AgentRow], upn: &str, password: &str) -> Result<(String, pta::Answer), NoAnswer> {
        let connected = self.connected(agents);
        if connected.is_empty() {
            return Err(NoAnswer::NoAgent);
        }
        let request_id = crypto::new_guid();
        let expires_at = unix_now() + i64::try_from(self.settings.timeout.as_secs()).unwrap_or(60) + 1;
        let mut sealed = HashMap::new();
        for agent in &connected {
            let Some(key) = pta::key_from_text(&agent.encryption_key) else { continue };
            let ephemeral: [u8; 32] = crypto::random_bytes(32).try_into().unwrap_or([0; 32]);
            let context = pta::context(&request_id, &agent.id, upn, expires_at);
            if let Ok(bytes) = pta::seal(&key, ephemeral, &context, password.as_bytes()) {
                sealed.insert(agent.id.clone(), pta::sealed_to_text(&bytes));
            }
        }
        if sealed.is_empty() {
            return Err(NoAnswer::NoAgent);
        }
        let (answers, mut received) = tokio::sync::mpsc::unbounded_channel();
        {
            let mut state = self.lock();
            if state.pending.len() >= MAX_PENDING {
                tracing::warn!(waiting = state.pending.len(), "pass-through queue full: sign-in refused");
                return Err(NoAnswer::Busy);
            }
            state.pending.insert(
                request_id.clone(),
                Pending {
                    user_principal_name: upn.to_string(),
                    expires_at,
                    sealed,
                    tried: HashSet::new(),
                    answered: HashSet::new(),
                    leased: None,
                    answers,
                },
            );
            state.queue.push_back(request_id.clone());
        }
        let _forget = Forget { hub: self, id: request_id.clone() };
        self.work.notify_waiters();
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let mut last_failure = None;
        loop {
            let lease_check = tokio::time::Instant::now() + self.settings.lease.min(Duration::from_millis(500));
            let wake = lease_check.min(deadline);
            match tokio::time::timeout_at(wake, received.recv()).await {
                Ok(Some((agent, answer))) => {
                    if !answer.outcome.is_retryable() {
                        return Ok((agent, answer));
                    }
                    tracing::warn!(%agent, request = %request_id, outcome = ?answer.outcome, detail = answer.detail.as_deref().unwrap_or(""), "a pass-through agent could not check the password; asking another");
                    last_failure = Some(answer.outcome);
                    if !self.requeue(&request_id, true) {
                        return Err(NoAnswer::Failed(answer.outcome));
                    }
                }
                Ok(None) => return Err(NoAnswer::Timeout),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(last_failure.map_or(NoAnswer::Timeout, NoAnswer::Failed));
                }
                Err(_) => {
                    self.requeue(&request_id, false);
                }
            }
        }
    }

    /// Puts a request back for an agent that has not tried it: at once after a failed answer
    /// (`failed`), or when the agent holding it has let its lease run out. False when every
    /// agent it was sealed for has tried.
    fn requeue(&self, id: &str, failed: bool) -> bool {
        let mut state = self.lock();
        let Some(pending) = state.pending.get_mut(id) else { return false };
        let untried = pending.sealed.keys().any(|agent| !pending.tried.contains(agent));
        let expired = pending.leased.as_ref().is_some_and(|(_, since)| since.elapsed() >= self.settings.lease);
        if !(failed || expired) {
            return true;
        }
        if let Some((agent, _)) = pending.leased.take()
            && expired
            && !failed
        {
            tracing::warn!(%agent, request = %id, "a pass-through agent did not answer within its lease; asking another");
        }
        if untried && !state.queue.iter().any(|queued| queued == id) {
            state.queue.push_front(id.to_string());
            drop(state);
            self.work.notify_waiters();
        }
        untried
    }
}

/// Forgets a request when its sign-in is done (answered, failed, or abandoned by the client).
struct Forget<'a> {
    hub: &'a Hub,
    id: String,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.pending.remove(&self.id);
        state.queue.retain(|queued| queued != &self.id);
    }
}

/// The sign-in method of pass-through domains.
pub struct PassThrough;

impl SignInMethod for PassThrough {
    fn name(&self) -> &'static str {
        "pass-through"
    }

    fn verify<'a>(
        &'a self,
        state: &'a AppState,
        user: &'a serde_json::Map<String, Value>,
        password: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send + 'a>> {
        Box::pin(async move {
            let synced = user.get("onPremisesSyncEnabled").and_then(Value::as_bool) == Some(true)
                || user.get("onPremisesImmutableId").and_then(Value::as_str).is_some_and(|id| !id.is_empty());
            if !synced {
                // Cloud-only users of the domain keep their cloud password.
                return crate::signin::CloudPassword.verify(state, user, password).await;
            }
            let upn = user
                .get("onPremisesUserPrincipalName")
                .and_then(Value::as_str)
                .filter(|upn| !upn.is_empty())
                .or_else(|| user.get("userPrincipalName").and_then(Value::as_str))
                .unwrap_or_default()
                .to_string();
            let now = unix_now();
            let agents = match state.db.read(move |sql| db::active_agents(sql, now)).await {
                Ok(agents) => agents,
                Err(err) => return Verdict::Unavailable(err.to_string()),
            };
            match state.pta_hub.check(&agents, &upn, password).await {
                Ok((agent, answer)) => {
                    tracing::debug!(%agent, outcome = ?answer.outcome, "pass-through answer");
                    match answer.outcome {
                        pta::Outcome::Valid => Verdict::Valid,
                        pta::Outcome::BadPassword => Verdict::Invalid,
                        outcome => refusal(outcome),
                    }
                }
                Err(NoAnswer::NoAgent) => {
                    if let Some(after) = state.pta_fallback()
                        && state.pta_hub.unreachable_for() >= after
                    {
                        let id = user.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                        let has_hash = state.db.read(move |sql| db::synced_credential(sql, &id)).await.ok().flatten().is_some();
                        if has_hash {
                            tracing::warn!(user = %upn, "no pass-through agent reachable: automatic fallback to the synced password hash");
                            return match crate::signin::CloudPassword.verify(state, user, password).await {
                                Verdict::Valid => Verdict::ValidByFallback,
                                other => other,
                            };
                        }
                    }
                    Verdict::Refused(
                        TokenEndpointError::new(
                            "temporarily_unavailable",
                            80001,
                            "No pass-through authentication agent is available to validate the password. Try again later.",
                        ),
                        "no pass-through agent",
                    )
                }
                Err(NoAnswer::Timeout) => Verdict::Refused(
                    TokenEndpointError::new(
                        "temporarily_unavailable",
                        80002,
                        "The password validation request to the pass-through agents timed out. Try again.",
                    ),
                    "pass-through timed out",
                ),
                Err(NoAnswer::Failed(outcome)) => refusal(outcome),
                Err(NoAnswer::Busy) => Verdict::Refused(
                    TokenEndpointError::new(
                        "temporarily_unavailable",
                        80005,
                        "Too many sign-ins are waiting for the pass-through agents. Try again.",
                    ),
                    "refused by the sign-in method",
                ),
            }
        })
    }
}

fn refusal(outcome: pta::Outcome) -> Verdict {
    Verdict::Refused(TokenEndpointError::new(outcome.oauth_error(), outcome.code(), outcome.message()), outcome.audit())
}
