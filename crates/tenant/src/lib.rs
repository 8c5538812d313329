//! The cloud tenant: a self-hostable equivalent of the Entra ID side that Isthmus syncs into —
//! a Graph-compatible directory API (`graph`) and sign-in endpoints shaped like the Microsoft
//! identity platform's (`oauth`), over HTTPS only (`state` makes a local CA on first start).
//!
//! Built so far: users (create, read, list with paging and `$select`, update, delete), app
//! registrations with client secrets, the client-credentials grant, OpenID discovery, JWKS and
//! user-realm discovery, role checks on every Graph call, an audit trail in the log. State in
//! SQLite (`db`).
//!
//! Knows no sync engine and no on-premises directory.

mod applications;
mod audit;
mod authorize;
mod batch;
pub mod client_auth;
pub mod crypto;
pub mod db;
pub mod dns;
mod domains;
pub mod filter;
mod graph;
mod hashsync;
pub mod limits;
mod oauth;
pub mod odata;
mod onprem;
pub mod openapi;
pub mod passthrough;
pub mod permissions;
pub mod resilience;
mod roles;
mod service_principals;
pub use service_principals::GRAPH_APP_ID;
mod health_alerts;
pub mod metrics;
pub mod signin;
pub mod sql;
pub mod state;
mod sync_reports;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;

use crate::odata::GraphError;

/// How often a process behind PostgreSQL re-reads the domain list that others may change.
const DOMAIN_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Largest request body accepted (Graph's own limit is 4 MB).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// How to run a tenant.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// The state folder (created on first start).
    pub state_dir: PathBuf,
    /// The tenant's short name: the initial domain is `<name>.isthmus.local`.
    pub name: String,
    /// Addresses to listen on (HTTPS).
    pub listen: Vec<SocketAddr>,
    /// Extra host names and addresses for the generated certificate.
    pub hosts: Vec<String>,
    /// PBKDF2 iterations for users' passwords (600,000, OWASP's figure for PBKDF2-HMAC-SHA256).
    pub password_iterations: u32,
    /// Smart lockout: failed sign-ins in a row that lock an account (Entra's default: 10).
    pub lockout_threshold: u32,
    /// Smart lockout: how long a locked account stays locked (Entra's default: 60 seconds).
    pub lockout_seconds: u64,
    /// Directory writes allowed per second (bursts of up to one second's worth); over it, 429
    /// with `Retry-After`. `None`: no limit.
    pub write_limit: Option<u32>,
    /// The DNS resolver domain verification asks; `None`: the first of `/etc/resolv.conf`.
    pub dns_resolver: Option<SocketAddr>,
    /// Lab override of domain verification: these domains (lower case) verify without a DNS
    /// lookup. For test forests whose names no public DNS serves; every use is audited as
    /// such and the server warns at start.
    pub lab_verified_domains: Vec<String>,
    /// How the sync service's creates match existing objects (soft and hard match).
    pub match_policy: resilience::MatchPolicy,
    /// Keep the directory in PostgreSQL at this URL instead of SQLite in the state folder
    /// (several tenant processes may share it).
    pub postgres: Option<String>,
    /// An offline list of leaked NT hashes (the Pwned Passwords NTLM file, sorted by hash)
    /// that password hash sync checks users against, by k-anonymity ranges.
    pub leaked_list: Option<PathBuf>,
    /// Refuse the sign-in of users whose synced password is on the leaked list (otherwise
    /// they are only flagged as risky users).
    pub block_leaked: bool,
    /// Pass-through authentication's timings and agent certificate lifetime.
    pub pta: passthrough::PtaSettings,
    /// Days the audit and sign-in logs keep a record (Entra keeps 30 on its free tier).
    pub audit_retention_days: u32,
    /// A client must send a request's headers within this long (also the idle limit of a
    /// kept-alive connection); then the connection is closed.
    pub header_timeout: std::time::Duration,
    /// Connections served at once; beyond, new ones wait in the listen queue (backpressure).
    pub max_connections: usize,
    /// The authority clients reach the tenant at (`https://login.example.com`): the issuer of
    /// every token and the base of discovery's endpoints, whatever `Host` a request names.
    /// `None`: `https://<first --host, or the first listen address>[:port]`.
    pub public_url: Option<String>,
}

/// Largest request head (request line and headers) taken; larger: 431.
pub const MAX_HEADERS: usize = 64 * 1024;

impl TenantConfig {
    /// Defaults for a tenant in `state_dir` listening on `listen`.
    pub fn new(state_dir: PathBuf, listen: Vec<SocketAddr>) -> Self {
        TenantConfig {
            state_dir,
            name: "contoso".into(),
            listen,
            hosts: Vec::new(),
            password_iterations: 600_000,
            lockout_threshold: 10,
            lockout_seconds: 60,
            write_limit: None,
            dns_resolver: None,
            lab_verified_domains: Vec::new(),
            match_policy: resilience::MatchPolicy::default(),
            postgres: None,
            leaked_list: None,
            block_leaked: false,
            pta: passthrough::PtaSettings::default(),
            audit_retention_days: 30,
            header_timeout: std::time::Duration::from_secs(30),
            max_connections: 10_000,
            public_url: None,
        }
    }
}

/// Why the tenant cannot run.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The state folder.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The database.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// A listening address.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

#[derive(Clone)]
/// What request handlers (and sign-in methods) share; opaque outside the crate.
pub struct AppState {
    inner: Arc<Shared>,
}

/// The tenant's shared state behind [`AppState`].
pub struct Shared {
    identity: state::Identity,
    signing: crypto::SigningKey,
    db: db::Db,
    password_iterations: u32,
    lockout_threshold: u32,
    lockout_duration: std::time::Duration,
    throttle: Option<std::sync::Mutex<Bucket>>,
    domain_cache: std::sync::RwLock<Vec<db::Domain>>,
    dns_resolver: Option<SocketAddr>,
    /// [`TenantConfig::lab_verified_domains`].
    lab_verified_domains: Vec<String>,
    match_policy: resilience::MatchPolicy,
    /// `/directory/onPremisesSynchronization` (its features steer matching).
    sync_settings: std::sync::RwLock<serde_json::Value>,
    /// The leaked-hash list, if one is loaded.
    leaked: Option<std::sync::Mutex<phs::leaked::LeakedList<std::fs::File>>>,
    /// Refuse sign-ins of users flagged by it.
    block_leaked: bool,
    /// Sign-in methods chosen per domain (lower case); the rest follow `authenticationType`.
    methods: std::sync::RwLock<std::collections::HashMap<String, Arc<dyn signin::SignInMethod>>>,
    /// The CA of pass-through agents' client certificates.
    pta_ca: passthrough::AgentCa,
    /// Pass-through sign-ins waiting for agents.
    pta_hub: passthrough::Hub,
    /// Pass-through timings.
    pta_settings: passthrough::PtaSettings,
    /// Pass-through's automatic fallback to synced hashes, after this long without agents.
    pta_fallback: std::sync::RwLock<Option<std::time::Duration>>,
    /// Failed sign-ins per source and the audit budget for them.
    failures: limits::FailureLimits,
    /// How long audit records are kept.
    audit_retention: std::time::Duration,
    /// The authority (`https://host[:port]`, no trailing slash), fixed when the listeners bind.
    authority: std::sync::OnceLock<String>,
    /// Counters for the metrics listener (kept whether or not one serves them).
    metrics: Arc<metrics::TenantMetrics>,
}

/// A token bucket for directory writes.
struct Bucket {
    rate: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.inner
    }
}

impl Shared {
    /// Takes one write from the bucket, or says how long to wait (429).
    fn admit_write(&self) -> Result<(), GraphError> {
        let Some(bucket) = &self.throttle else { return Ok(()) };
        let mut bucket = bucket.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(bucket.last).as_secs_f64() * bucket.rate;
        bucket.tokens = (bucket.tokens + refill).min(bucket.rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) / bucket.rate).ceil().max(1.0) as u64;
            Err(GraphError::throttled(wait))
        }
    }

    /// Writes an audit record (and the `audit` log line); never a secret in it.
    /// Every field is bounded; failed sign-ins (which anyone can cause) take from a per-minute
    /// budget, and those over it are summed up in one record the next minute.
    pub(crate) async fn record(&self, category: &'static str, activity: String, actor: String, target: String, outcome: &'static str) {
        let (activity, actor, target) = (
            limits::bounded(&activity, limits::MAX_AUDIT_FIELD),
            limits::bounded(&actor, limits::MAX_AUDIT_FIELD),
            limits::bounded(&target, limits::MAX_AUDIT_FIELD),
        );
        tracing::info!(target: "audit", category, activity, actor, subject = target, outcome, "audit");
        let mut records = Vec::new();
        let mut this_one = true;
        if category == "SignIn" && outcome != "success" {
            let (budget, summary) = self.failures.audit(unix_now());
            if let Some((minute, count)) = summary {
                records.push(db::AuditRecord {
                    seq: 0,
                    time: rfc3339(minute * 60 + 59),
                    category: category.into(),
                    activity: format!(
                        "{count} failed sign-in(s) not recorded one by one (over {} a minute)",
                        limits::AUDITED_FAILURES_PER_MINUTE
                    ),
                    actor: String::new(),
                    target: String::new(),
                    outcome: "failures summed up".into(),
                });
            }
            this_one = budget == limits::AuditBudget::Write;
        }
        if this_one {
            records.push(db::AuditRecord {
                seq: 0,
                time: now_rfc3339(),
                category: category.into(),
                activity,
                actor,
                target,
                outcome: outcome.into(),
            });
        }
        if records.is_empty() {
            return;
        }
        if let Err(err) = self
            .db
            .append(move |conn| {
                for record in &records {
                    db::insert_audit(conn, record)?;
                }
                Ok(())
            })
            .await
        {
            tracing::error!("audit record not stored: {err}");
        }
    }

    /// The tenant's verified domains (users' UPNs must use one).
    fn domains(&self) -> Vec<String> {
        self.all_domains().into_iter().filter(|domain| domain.verified).map(|domain| domain.name).collect()
    }

    /// What the duplicate-attribute and UPN-suffix checks need.
    fn resilience_domains(&self) -> resilience::Domains {
        resilience::Domains {
            initial: self.identity.initial_domain.clone(),
            verified: self.domains().iter().map(|domain| domain.to_lowercase()).collect(),
        }
    }

    /// Restores quarantined values whose conflicts are gone (after deletes, renames, verified domains).
    pub(crate) async fn recheck_conflicts(&self) {
        let domains = self.resilience_domains();
        match self.db.call(move |conn| resilience::recheck(conn, &domains)).await {
            Ok(0) => {}
            Ok(changed) => tracing::info!(changed, "quarantined values restored"),
            Err(err) => tracing::error!("re-checking provisioning conflicts failed: {err}"),
        }
    }

    /// How the sync's creates match: the process's settings and the tenant's features.
    pub(crate) fn effective_match_policy(&self) -> resilience::MatchPolicy {
        onprem::policy(&self.sync_settings.read().unwrap_or_else(|poisoned| poisoned.into_inner()), self.match_policy)
    }

    /// Whether a tenant feature (`/directory/onPremisesSynchronization`) is on.
    pub(crate) fn sync_feature(&self, name: &str) -> bool {
        self.sync_settings.read().unwrap_or_else(|poisoned| poisoned.into_inner())["features"][name].as_bool() == Some(true)
    }

    /// Keeps the sync settings just stored.
    pub(crate) fn set_sync_settings(&self, settings: serde_json::Value) {
        *self.sync_settings.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = settings;
    }

    /// Evaluates the health alerts now (raised and resolved ones are logged).
    pub(crate) async fn evaluate_health(&self) {
        let now = unix_now();
        if let Err(err) = self.db.call(move |sql| health_alerts::evaluate(sql, now)).await {
            tracing::error!("evaluating health alerts failed: {err}");
        }
    }

    /// Applies retention: audit records older than the retention, locks that have run out.
    pub(crate) async fn prune(&self) {
        let now = unix_now();
        let before = rfc3339(now - self.audit_retention.as_secs() as i64);
        match self.db.call(move |conn| db::prune(conn, &before, now)).await {
            Ok((0, 0)) => {}
            Ok((audit, locks)) => tracing::info!(audit, locks, "retention: old audit records and run-out locks removed"),
            Err(err) => tracing::error!("retention failed: {err}"),
        }
    }

    /// Every domain, verified or not.
    fn all_domains(&self) -> Vec<db::Domain> {
        self.domain_cache.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The sign-in method of a domain: one set for it, else by its authentication type and
    /// password validation.
    fn sign_in_method(&self, domain: &str) -> Arc<dyn signin::SignInMethod> {
        let chosen = self.methods.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&domain.to_lowercase()).cloned();
        chosen.unwrap_or_else(|| match self.verified_domain(domain) {
            Some(known) if known.authentication == "Federated" => Arc::new(signin::FederatedElsewhere),
            Some(known) if known.pass_through => Arc::new(passthrough::PassThrough),
            _ => Arc::new(signin::CloudPassword),
        })
    }

    /// `Managed` or `Federated` for a verified domain of the tenant; `None` for any other.
    fn authentication_of(&self, domain: &str) -> Option<String> {
        self.verified_domain(domain).map(|known| known.authentication)
    }

    /// A verified domain of the tenant by name.
    fn verified_domain(&self, domain: &str) -> Option<db::Domain> {
        self.all_domains().into_iter().find(|known| known.verified && known.name.eq_ignore_ascii_case(domain))
    }

    /// After how long without agents pass-through falls back to synced hashes (`None`: never).
    pub(crate) fn pta_fallback(&self) -> Option<std::time::Duration> {
        *self.pta_fallback.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn set_pta_fallback(&self, after: Option<std::time::Duration>) {
        *self.pta_fallback.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = after;
    }
}

/// The caller of a Graph request, from its bearer token.
pub(crate) struct Access {
    /// Who (the app id), for the audit trail.
    pub caller: String,
    roles: Vec<String>,
}

impl Access {
    /// Needs one of the roles `area` asks for (`permissions::PERMISSIONS`), else 403.
    pub(crate) fn require(&self, area: permissions::Area) -> Result<(), GraphError> {
        let needed = permissions::needed(area);
        if self.roles.iter().any(|role| needed.contains(&role.as_str())) { Ok(()) } else { Err(GraphError::denied()) }
    }

    /// The caller is the sync service: it may write the attributes synced from on-premises.
    fn is_sync(&self) -> bool {
        self.roles.iter().any(|role| role == SYNC_ROLE)
    }
}

/// The app role of the sync service (Isthmus's Graph connector): only it writes objects synced
/// from on-premises, as only Entra Connect's account does in Entra.
pub const SYNC_ROLE: &str = "OnPremDirectorySynchronization.ReadWrite.All";

impl FromRequestParts<AppState> for Access {
    type Rejection = GraphError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, GraphError> {
        let claims = bearer_claims(state, &parts.headers)?;
        let caller = claims.get("appid").and_then(|id| id.as_str()).unwrap_or_default().to_string();
        let roles = claims
            .get("roles")
            .and_then(|roles| roles.as_array())
            .map(|roles| roles.iter().filter_map(|role| role.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        Ok(Access { caller, roles })
    }
}

/// The tenant's authority: the configured public URL, else `https://` the first certificate
/// host name (or the listener's own address) on the first listener on port 443 (or the first
/// listener), its port shown unless 443.
fn authority(config: &TenantConfig, bound: &[SocketAddr]) -> String {
    if let Some(url) = &config.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let chosen = bound.iter().find(|addr| addr.port() == 443).or(bound.first()).copied();
    let port = chosen.map_or(443, |addr| addr.port());
    let host = match (config.hosts.first(), chosen) {
        (Some(host), _) => host.clone(),
        (None, Some(addr)) if !addr.ip().is_unspecified() => match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        },
        _ => "127.0.0.1".to_string(),
    };
    if port == 443 { format!("https://{host}") } else { format!("https://{host}:{port}") }
}

impl Shared {
    /// The authority tokens are issued by (`https://host[:port]`).
    pub(crate) fn authority(&self) -> &str {
        self.authority.get().map_or("https://127.0.0.1", String::as_str)
    }
}

/// The audiences of Graph access tokens: its resource URI and its application id.
pub const GRAPH_AUDIENCES: &[&str] = &["https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000"];

/// The claims of the request's bearer token, checked: signed by this tenant, current, for it,
/// an access token whose audience is this API.
pub(crate) fn bearer_claims(state: &AppState, headers: &HeaderMap) -> Result<serde_json::Value, GraphError> {
    let header = headers.get("authorization").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let Some(token) = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")) else {
        return Err(GraphError::unauthenticated("Access token is empty."));
    };
    let claims = state
        .signing
        .verify(token.trim(), unix_now())
        .map_err(|err| GraphError::unauthenticated(format!("Access token validation failure: {err}.")))?;
    if claims.get("tid").and_then(|tid| tid.as_str()) != Some(state.identity.tenant_id.as_str()) {
        return Err(GraphError::unauthenticated("Access token validation failure: the token is for another tenant."));
    }
    // Only an access token for this API: an ID token (its audience is the client), a refresh
    // token (no audience) or a token for another resource is not a caller.
    if !claims.get("aud").and_then(|aud| aud.as_str()).is_some_and(|aud| GRAPH_AUDIENCES.contains(&aud)) {
        return Err(GraphError::unauthenticated("Access token validation failure. Invalid audience."));
    }
    if !matches!(claims.get("idtyp").and_then(|kind| kind.as_str()), Some("app" | "user")) || claims.get("typ").is_some() {
        return Err(GraphError::unauthenticated("Access token validation failure: not an access token."));
    }
    Ok(claims)
}

/// The routes of one collection: list, create, get, update, delete, and delta for users and groups.
fn collection_routes(resource: &'static graph::Resource) -> Router<AppState> {
    let segment = resource.segment();
    let mut router = Router::new()
        .route(
            &format!("/v1.0/{segment}"),
            get(move |State(state): State<AppState>, access: Access, headers: HeaderMap, Query(query): Query<graph::ListQuery>| {
                graph::list(resource, state, access, headers, query)
            })
            .post(move |State(state): State<AppState>, access: Access, headers: HeaderMap, body: graph::Body| {
                graph::create(resource, state, access, headers, body)
            }),
        )
        .route(
            &format!("/v1.0/{segment}/{{key}}"),
            get(
                move |State(state): State<AppState>,
                      access: Access,
                      headers: HeaderMap,
                      Path(key): Path<String>,
                      Query(query): Query<graph::ListQuery>| {
                    graph::get_one(resource, state, access, headers, key, query)
                },
            )
            .patch(move |State(state): State<AppState>, access: Access, Path(key): Path<String>, body: graph::Body| {
                graph::update(resource, state, access, key, body)
            })
            .delete(move |State(state): State<AppState>, access: Access, Path(key): Path<String>| {
                graph::delete(resource, state, access, key)
            }),
        );
    if resource.has_delta() {
        let handler = move |State(state): State<AppState>, access: Access, headers: HeaderMap, Query(query): Query<graph::ListQuery>| {
            graph::delta(resource, state, access, headers, query)
        };
        router = router.route(&format!("/v1.0/{segment}/delta()"), get(handler)).route(&format!("/v1.0/{segment}/delta"), get(handler));
    }
    router
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_secs() as i64).unwrap_or(0)
}

/// A Unix time as RFC 3339 (UTC, seconds); empty when out of range.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|when| when.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Now as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|now| now.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// A prepared tenant: state loaded, ready to serve.
pub struct Tenant {
    config: TenantConfig,
    app: AppState,
    tls: Arc<rustls::ServerConfig>,
    /// The CA certificate clients should trust.
    pub ca_pem: PathBuf,
}

/// A tenant serving in the background (tests, benchmarks, embedded use): where it listens, and
/// the switch that stops it (sending on it, or dropping it).
pub struct Running {
    /// The bound addresses, in the order of [`TenantConfig::listen`].
    pub addrs: Vec<SocketAddr>,
    /// `https://<first address>` (its host is 127.0.0.1 when it listens on a loopback or any address).
    pub base: String,
    /// The CA certificate clients should trust.
    pub ca_pem: PathBuf,
    /// Stops the tenant.
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// The first app registration, made when the tenant is new: its secret is shown once.
pub struct BootstrapApp {
    /// The application (client) id.
    pub client_id: String,
    /// Its secret.
    pub client_secret: zeroize::Zeroizing<String>,
}

impl Tenant {
    /// Loads (or creates) the tenant in `config.state_dir`. A new tenant gets an admin app with
    /// `Directory.ReadWrite.All`, returned with its secret.
    pub async fn open(config: TenantConfig) -> Result<(Tenant, Option<BootstrapApp>), TenantError> {
        // The certificate made on first start covers the --host names and the addresses listened on.
        let mut names = config.hosts.clone();
        for addr in &config.listen {
            let ip = addr.ip();
            if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
                names.push(ip.to_string());
            }
        }
        let loaded = state::open(&config.state_dir, &names)?;
        for name in &loaded.uncovered {
            tracing::warn!(
                name,
                "the tenant's HTTPS certificate ({}) does not cover this name; clients reaching it so will refuse the connection \
                 (a certificate is made on first start only: remove tls/server.pem and tls/server.key to have one made for the \
                 current names, signed by the same CA)",
                loaded.cert_pem.display()
            );
        }
        let db = match &config.postgres {
            Some(url) => db::Db::connect_postgres(url).await?,
            None => db::Db::open(&loaded.db_path)?,
        };
        // The identity and the signing key are shared through the database: the first process
        // of a new tenant makes them (or moves an older tenant's files in), the others read them.
        let identity_candidate = loaded.legacy_identity.clone().unwrap_or_else(|| state::new_identity(&config.name));
        let identity_json = serde_json::to_vec(&identity_candidate).unwrap_or_default();
        let key_candidate = match &loaded.legacy_signing {
            Some(pkcs8) => pkcs8.clone(),
            None => zeroize::Zeroizing::new(crypto::SigningKey::generate_pkcs8().map_err(db::DbError::Config)?),
        };
        let app = BootstrapApp { client_id: crypto::new_guid(), client_secret: crypto::new_secret() };
        let (client_id, hash) = (app.client_id.clone(), crypto::secret_hash(&app.client_secret));
        let (identity_json, key_pkcs8, made_app) = db
            .call(move |sql| {
                let identity = db::setting_or_insert(sql, "identity", &identity_json)?;
                let key = zeroize::Zeroizing::new(db::setting_or_insert(sql, "signing_key", &key_candidate)?);
                let made_app = db::app_count(sql)? == 0;
                if made_app {
                    db::insert_app(sql, &client_id, "Isthmus admin", &hash, &["Directory.ReadWrite.All".to_string()])?;
                    applications::object_for(sql, &client_id, "Isthmus admin", false)?;
                }
                Ok((identity, key, made_app))
            })
            .await?;
        let bootstrap = made_app.then_some(app);
        if loaded.legacy_identity.is_some() || loaded.legacy_signing.is_some() {
            state::forget_legacy(&config.state_dir);
        }
        let identity: state::Identity =
            serde_json::from_slice(&identity_json).map_err(|err| db::DbError::Corrupt(format!("the tenant identity setting: {err}")))?;
        let signing =
            crypto::SigningKey::from_pkcs8(&key_pkcs8).map_err(|err| db::DbError::Corrupt(format!("the signing key setting: {err}")))?;
        let initial = db::Domain {
            name: identity.initial_domain.clone(),
            verified: true,
            authentication: "Managed".into(),
            code: String::new(),
            initial: true,
            pass_through: false,
            password_validity_days: None,
        };
        let domains = db
            .call(move |conn| {
                if !db::domains(conn)?.iter().any(|domain| domain.initial) {
                    db::insert_domain(conn, &initial)?;
                }
                db::domains(conn)
            })
            .await?;
        let sync_settings = db.read(onprem::load).await?;
        let leaked = match &config.leaked_list {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|err| db::DbError::Config(format!("the leaked-credential list {}: {err}", path.display())))?;
                let list =
                    phs::leaked::LeakedList::new(&path.display().to_string(), file).map_err(|err| db::DbError::Config(err.to_string()))?;
                Some(std::sync::Mutex::new(list))
            }
            None => None,
        };
        let pta_ca = passthrough::AgentCa::load_or_create(&db, &identity.tenant_id).await?;
        let pta_fallback = db
            .read(|sql| db::setting(sql, "pta_fallback_seconds"))
            .await?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        let tls = state::server_config(&loaded.cert_pem, &loaded.key_pem, Some(&pta_ca.cert_der))?;
        let app = AppState {
            inner: Arc::new(Shared {
                identity,
                signing,
                db,
                password_iterations: config.password_iterations,
                lockout_threshold: config.lockout_threshold.max(1),
                lockout_duration: std::time::Duration::from_secs(config.lockout_seconds),
                throttle: config.write_limit.filter(|limit| *limit > 0).map(|limit| {
                    std::sync::Mutex::new(Bucket { rate: f64::from(limit), tokens: f64::from(limit), last: std::time::Instant::now() })
                }),
                domain_cache: std::sync::RwLock::new(domains),
                methods: std::sync::RwLock::new(std::collections::HashMap::new()),
                dns_resolver: config.dns_resolver.or_else(dns::system_resolver),
                lab_verified_domains: config.lab_verified_domains.iter().map(|name| name.to_lowercase()).collect(),
                match_policy: config.match_policy,
                sync_settings: std::sync::RwLock::new(sync_settings),
                leaked,
                block_leaked: config.block_leaked,
                pta_ca,
                pta_hub: passthrough::Hub::new(config.pta),
                pta_settings: config.pta,
                pta_fallback: std::sync::RwLock::new(pta_fallback),
                failures: limits::FailureLimits::default(),
                audit_retention: std::time::Duration::from_secs(u64::from(config.audit_retention_days.max(1)) * 86_400),
                authority: std::sync::OnceLock::new(),
                metrics: Arc::default(),
            }),
        };
        if app.db.is_postgres() {
            // Other processes may verify or add domains: refresh the cache every few seconds.
            let weak = Arc::downgrade(&app.inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(DOMAIN_REFRESH).await;
                    let Some(shared) = weak.upgrade() else { break };
                    match shared.db.read(|sql| Ok((db::domains(sql)?, onprem::load(sql)?))).await {
                        Ok((domains, settings)) => {
                            *shared.domain_cache.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = domains;
                            *shared.sync_settings.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = settings;
                        }
                        Err(err) => tracing::warn!("refreshing the domain list and sync settings failed: {err}"),
                    }
                }
            });
        }
        Ok((Tenant { config, app, tls, ca_pem: loaded.ca_pem }, bootstrap))
    }

    /// Registers an app with `roles` (for tests and the CLI); returns its id and secret.
    pub async fn register_app(&self, name: &str, roles: &[&str]) -> Result<BootstrapApp, TenantError> {
        let app = BootstrapApp { client_id: crypto::new_guid(), client_secret: crypto::new_secret() };
        let (client_id, hash, name) = (app.client_id.clone(), crypto::secret_hash(&app.client_secret), name.to_string());
        let roles: Vec<String> = roles.iter().map(|role| role.to_string()).collect();
        self.app
            .db
            .call(move |conn| {
                db::insert_app(conn, &client_id, &name, &hash, &roles)?;
                applications::object_for(conn, &client_id, &name, false)
            })
            .await?;
        Ok(app)
    }

    /// Adds `name` as a verified domain without the DNS check — an administrator's override
    /// (for labs and demos), logged and audited as such.
    pub async fn verify_domain_by_override(&self, name: &str, who: &str) -> Result<(), TenantError> {
        let domain = db::Domain {
            name: name.to_lowercase(),
            verified: true,
            authentication: "Managed".into(),
            code: String::new(),
            initial: false,
            pass_through: false,
            password_validity_days: None,
        };
        let stored = domain.clone();
        self.app
            .db
            .call(move |conn| match db::insert_domain(conn, &stored) {
                Err(db::DbError::Conflict(_)) => db::update_domain(conn, &stored),
                other => other,
            })
            .await?;
        let domains = self.app.db.call(|conn| db::domains(conn)).await?;
        *self.app.domain_cache.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = domains;
        self.app.recheck_conflicts().await;
        tracing::warn!(domain = domain.name, by = who, "domain verified by administrator override, without DNS");
        self.app
            .record("Directory", "verify domain (administrator override, no DNS)".into(), who.to_string(), domain.name, "success")
            .await;
        Ok(())
    }

    /// Registers a certificate (DER) an app may prove itself with (`private_key_jwt`).
    pub async fn add_app_certificate(&self, client_id: &str, der: &[u8]) -> Result<(), TenantError> {
        use base64::Engine as _;
        let (sha256, sha1) = crypto::thumbprints(der);
        let (client_id, encoded) = (client_id.to_string(), base64::engine::general_purpose::STANDARD.encode(der));
        self.app.db.call(move |conn| db::insert_app_certificate(conn, &client_id, &sha256, &sha1, &encoded)).await?;
        Ok(())
    }

    /// Registers a public client (a native or single-page app): no secret, user flows only.
    /// Returns its client id.
    pub async fn register_public_app(&self, name: &str) -> Result<String, TenantError> {
        let (client_id, name) = (crypto::new_guid(), name.to_string());
        let id = client_id.clone();
        self.app
            .db
            .call(move |conn| {
                db::insert_public_app(conn, &id, &name)?;
                applications::object_for(conn, &id, &name, true)
            })
            .await?;
        Ok(client_id)
    }

    /// Registers a redirect URI for an app (the authorization-code flow sends codes only there).
    pub async fn register_app_redirect(&self, client_id: &str, uri: &str) -> Result<(), TenantError> {
        let (client_id, uri) = (client_id.to_string(), uri.to_string());
        self.app.db.call(move |conn| db::insert_app_redirect(conn, &client_id, &uri)).await?;
        Ok(())
    }

    /// Chooses how the users of `domain` prove their password (password hash sync,
    /// pass-through …); without a choice a domain follows its authentication type.
    pub fn set_sign_in_method(&self, domain: &str, method: Arc<dyn signin::SignInMethod>) {
        self.app.methods.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(domain.to_lowercase(), method);
    }

    /// The tenant's metric families, to register in a metrics listener's registry.
    pub fn metrics(&self) -> Arc<metrics::TenantMetrics> {
        self.app.metrics.clone()
    }

    /// The tenant id.
    pub fn tenant_id(&self) -> &str {
        &self.app.identity.tenant_id
    }

    /// The initial domain.
    pub fn initial_domain(&self) -> &str {
        &self.app.identity.initial_domain
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        for resource in [&graph::USERS, &graph::GROUPS, &graph::CONTACTS] {
            router = router.merge(collection_routes(resource));
        }
        let routes: Router = router
            .route(
                "/v1.0/auditLogs/directoryAudits",
                get(|State(state): State<AppState>, access: Access, headers: HeaderMap, Query(query): Query<audit::AuditQuery>| {
                    audit::list(state, access, headers, query, "Directory")
                }),
            )
            .route(
                "/v1.0/auditLogs/signIns",
                get(|State(state): State<AppState>, access: Access, headers: HeaderMap, Query(query): Query<audit::AuditQuery>| {
                    audit::list(state, access, headers, query, "SignIn")
                }),
            )
            .route(
                "/v1.0/organization",
                get(|State(state): State<AppState>, access: Access, headers: HeaderMap| audit::organization(state, access, headers)),
            )
            .route(
                "/isthmus/v1/leakedCredentials/range/{prefix}",
                get(|State(state): State<AppState>, access: Access, Path(prefix): Path<String>| {
                    hashsync::leaked_range(state, access, prefix)
                }),
            )
            .route(
                "/v1.0/identityProtection/riskyUsers",
                get(|State(state): State<AppState>, access: Access, headers: HeaderMap| hashsync::risky_users(state, access, headers)),
            )
            .route(
                "/isthmus/v1/passwordHashSync",
                post(|State(state): State<AppState>, access: Access, body: graph::Body| hashsync::receive(state, access, body)),
            )
            .route(
                "/isthmus/v1/health/alerts",
                get(|State(state): State<AppState>, access: Access, Query(query): Query<std::collections::HashMap<String, String>>| {
                    health_alerts::list(state, access, query)
                }),
            )
            .route(
                "/isthmus/v1/syncReports",
                post(|State(state): State<AppState>, access: Access, body: graph::Body| sync_reports::receive(state, access, body)),
            )
            .route(
                "/isthmus/v1/passThroughAuthentication",
                get(|State(state): State<AppState>, headers: HeaderMap| passthrough::list(state, headers)).patch(
                    |State(state): State<AppState>, headers: HeaderMap, body: bytes::Bytes| {
                        passthrough::update_settings(state, headers, body)
                    },
                ),
            )
            .route(
                "/isthmus/v1/passThroughAuthentication/agents",
                get(|State(state): State<AppState>, headers: HeaderMap| passthrough::list(state, headers)).post(
                    |State(state): State<AppState>, headers: HeaderMap, body: bytes::Bytes| passthrough::register(state, headers, body),
                ),
            )
            .route(
                "/isthmus/v1/passThroughAuthentication/agents/{id}",
                delete(|State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>| passthrough::revoke(state, headers, id)),
            )
            .route(
                "/isthmus/v1/passThroughAuthentication/agent/poll",
                post(|State(state): State<AppState>, agent: passthrough::Agent| passthrough::poll(state, agent)),
            )
            .route(
                "/isthmus/v1/passThroughAuthentication/agent/answer",
                post(|State(state): State<AppState>, agent: passthrough::Agent, body: bytes::Bytes| {
                    passthrough::answer(state, agent, body)
                }),
            )
            .route(
                "/isthmus/v1/passThroughAuthentication/agent/renew",
                post(|State(state): State<AppState>, agent: passthrough::Agent, body: bytes::Bytes| passthrough::renew(state, agent, body)),
            )
            .route("/v1.0/directoryRoles", get(|access: Access, headers: HeaderMap| roles::list(access, headers)))
            .route("/v1.0/directoryRoles/{id}", get(|access: Access, Path(id): Path<String>| roles::get(access, id)))
            .route(
                "/v1.0/directoryRoles/{id}/members",
                get(|State(state): State<AppState>, access: Access, headers: HeaderMap, Path(id): Path<String>| {
                    roles::members(state, access, headers, id)
                }),
            )
            .route(
                "/v1.0/directoryRoles/{id}/members/$ref",
                post(|State(state): State<AppState>, access: Access, Path(id): Path<String>, body: graph::Body| {
                    roles::add_member(state, access, id, body)
                }),
            )
            .route(
                "/v1.0/directoryRoles/{id}/members/{member}/$ref",
                delete(|State(state): State<AppState>, access: Access, Path((id, member)): Path<(String, String)>| {
                    roles::remove_member(state, access, id, member)
                }),
            )
            .route(
                "/v1.0/directory/onPremisesSynchronization",
                get(|State(state): State<AppState>, access: Access, headers: HeaderMap| onprem::list(state, access, headers)),
            )
            .route(
                "/v1.0/directory/onPremisesSynchronization/{id}",
                get(|State(state): State<AppState>, access: Access, Path(id): Path<String>| onprem::get(state, access, id)).patch(
                    |State(state): State<AppState>, access: Access, Path(id): Path<String>, body: graph::Body| {
                        onprem::update(state, access, id, body)
                    },
                ),
            )
            .route(
                "/v1.0/domains",
                get(|State(state): State<AppState>, access: Access, headers: HeaderMap| domains::list(state, access, headers))
                    .post(|State(state): State<AppState>, access: Access, body: graph::Body| domains::create(state, access, body)),
            )
            .route(
                "/v1.0/domains/{name}",
                get(|State(state): State<AppState>, access: Access, Path(name): Path<String>| domains::get(state, access, name))
                    .patch(|State(state): State<AppState>, access: Access, Path(name): Path<String>, body: graph::Body| {
                        domains::update(state, access, name, body)
                    })
                    .delete(|State(state): State<AppState>, access: Access, Path(name): Path<String>| domains::delete(state, access, name)),
            )
            .route(
                "/v1.0/domains/{name}/verificationDnsRecords",
                get(|State(state): State<AppState>, access: Access, Path(name): Path<String>| {
                    domains::verification_records(state, access, name)
                }),
            )
            .route(
                "/v1.0/domains/{name}/verify",
                post(|State(state): State<AppState>, access: Access, Path(name): Path<String>| domains::verify(state, access, name)),
            )
            .route(
                "/v1.0/applications",
                get(|State(state): State<AppState>, access: Access, headers: HeaderMap| applications::list(state, access, headers)).post(
                    |State(state): State<AppState>, access: Access, headers: HeaderMap, body: graph::Body| {
                        applications::create(state, access, headers, body)
                    },
                ),
            )
            .route(
                "/v1.0/applications/{key}",
                get(|State(state): State<AppState>, access: Access, Path(key): Path<String>| applications::get(state, access, key))
                    .patch(|State(state): State<AppState>, access: Access, Path(key): Path<String>, body: graph::Body| {
                        applications::update(state, access, key, body)
                    })
                    .delete(|State(state): State<AppState>, access: Access, Path(key): Path<String>| {
                        applications::delete(state, access, key)
                    }),
            )
            .route(
                "/v1.0/applications/{key}/addPassword",
                post(|State(state): State<AppState>, access: Access, Path(key): Path<String>, body: graph::Body| {
                    applications::add_password(state, access, key, body)
                }),
            )
            .route(
                "/v1.0/applications/{key}/removePassword",
                post(|State(state): State<AppState>, access: Access, Path(key): Path<String>, body: graph::Body| {
                    applications::remove_password(state, access, key, body)
                }),
            )
            .route(
                "/v1.0/servicePrincipals",
                get(
                    |State(state): State<AppState>,
                     access: Access,
                     headers: HeaderMap,
                     Query(query): Query<service_principals::PrincipalQuery>| {
                        service_principals::list(state, access, headers, query)
                    },
                )
                .post(|State(state): State<AppState>, access: Access, body: graph::Body| service_principals::create(state, access, body)),
            )
            .route(
                "/v1.0/servicePrincipals/{key}",
                get(|State(state): State<AppState>, access: Access, Path(key): Path<String>| service_principals::get(state, access, key)),
            )
            .route(
                "/v1.0/servicePrincipals/{key}/appRoleAssignedTo",
                get(|State(state): State<AppState>, access: Access, headers: HeaderMap, Path(key): Path<String>| {
                    service_principals::assignments(state, access, headers, key)
                })
                .post(|State(state): State<AppState>, access: Access, Path(key): Path<String>, body: graph::Body| {
                    service_principals::grant(state, access, key, body)
                }),
            )
            .route(
                "/v1.0/servicePrincipals/{key}/appRoleAssignedTo/{assignment}",
                delete(|State(state): State<AppState>, access: Access, Path((key, assignment)): Path<(String, String)>| {
                    service_principals::revoke(state, access, key, assignment)
                }),
            )
            .route(
                "/v1.0/servicePrincipals/{key}/appRoleAssignments",
                get(|State(state): State<AppState>, access: Access, headers: HeaderMap, Path(key): Path<String>| {
                    service_principals::assignments(state, access, headers, key)
                }),
            )
            .route(
                "/v1.0/users/{key}/revokeSignInSessions",
                post(|State(state): State<AppState>, access: Access, headers: HeaderMap, Path(key): Path<String>| {
                    graph::revoke_sign_in_sessions(state, access, headers, key)
                }),
            )
            .route(
                "/v1.0/groups/{key}/members",
                get(|State(state): State<AppState>, access: Access, headers: HeaderMap, Path(key): Path<String>| {
                    graph::list_members(state, access, headers, key)
                }),
            )
            .route(
                "/v1.0/groups/{key}/members/$ref",
                post(|State(state): State<AppState>, access: Access, Path(key): Path<String>, body: graph::Body| {
                    graph::add_member(state, access, key, body)
                }),
            )
            .route(
                "/v1.0/groups/{key}/members/{member}/$ref",
                delete(|State(state): State<AppState>, access: Access, Path((key, member)): Path<(String, String)>| {
                    graph::remove_member(state, access, key, member)
                }),
            )
            .route("/{tenant}/v2.0/.well-known/openid-configuration", get(oauth::openid_configuration))
            .route("/{tenant}//v2.0/.well-known/openid-configuration", get(oauth::openid_configuration))
            .route("/{tenant}/discovery/v2.0/keys", get(oauth::jwks))
            .route("/{tenant}/oauth2/v2.0/token", axum::routing::post(oauth::token))
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize::show).post(authorize::submit))
            .route(
                "/{tenant}/oauth2/v2.0/logout",
                get(
                    |State(state): State<AppState>,
                     Path(tenant): Path<String>,
                     headers: HeaderMap,
                     Query(params): Query<authorize::LogoutParams>| async move {
                        authorize::logout(&state, &tenant, &headers, params).await
                    },
                )
                .post(
                    |State(state): State<AppState>,
                     Path(tenant): Path<String>,
                     headers: HeaderMap,
                     axum::Form(params): axum::Form<authorize::LogoutParams>| async move {
                        authorize::logout(&state, &tenant, &headers, params).await
                    },
                ),
            )
            .route("/common/userrealm/{upn}", get(oauth::user_realm))
            .route("/oidc/userinfo", get(oauth::userinfo).post(oauth::userinfo))
            .fallback(|| async { GraphError::bad_request("Invalid request: no such resource or method.") })
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.app.clone());
        let inner = routes.clone();
        routes.route(
            "/v1.0/$batch",
            post(move |headers: HeaderMap, body: graph::Body| batch::run(inner.clone(), headers, body))
                .layer(DefaultBodyLimit::max(MAX_BODY)),
        )
    }

    /// Binds and serves on the current tokio runtime until [`Running::stop`] fires or drops.
    pub async fn spawn(self) -> Result<Running, TenantError> {
        let ca_pem = self.ca_pem.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addrs, serve) = self
            .bind(async move {
                let _ = stopped.await;
            })
            .await?;
        tokio::spawn(serve);
        let first = addrs.first().copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 443)));
        let host = if first.ip().is_unspecified() || first.ip().is_loopback() { "127.0.0.1".to_string() } else { first.ip().to_string() };
        Ok(Running { addrs, base: format!("https://{host}:{}", first.port()), ca_pem, stop })
    }

    /// Binds every listen address; returns the bound addresses (port 0 gets a free port) and a
    /// future that serves until `shutdown` completes.
    pub async fn bind(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(Vec<SocketAddr>, impl std::future::Future<Output = ()>), TenantError> {
        let mut listeners = Vec::new();
        for addr in &self.config.listen {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| TenantError::Listen { addr: *addr, source })?;
            listeners.push(listener);
        }
        let bound: Vec<SocketAddr> = listeners.iter().filter_map(|listener| listener.local_addr().ok()).collect();
        let _ = self.app.authority.set(authority(&self.config, &bound));
        let router = self.router();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let app = self.app.clone();
        let (header_timeout, permits) =
            (self.config.header_timeout, Arc::new(tokio::sync::Semaphore::new(self.config.max_connections.max(1))));
        let serve = async move {
            let mut tasks = Vec::new();
            // Retention, at start and every ten minutes; health alerts evaluated every minute (a
            // server that stops reporting raises its alert even when nobody looks).
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(600));
                let mut health = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = every.tick() => app.prune().await,
                        _ = health.tick() => app.evaluate_health().await,
                        _ = stop.changed() => break,
                    }
                }
            }));
            for listener in listeners {
                let (router, acceptor, mut stop, permits) = (router.clone(), acceptor.clone(), stop_rx.clone(), permits.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        // At the connection limit, stop accepting: clients wait in the listen
                        // queue instead of the server spinning or failing.
                        let permit = tokio::select! {
                            permit = permits.clone().acquire_owned() => permit,
                            _ = stop.changed() => break,
                        };
                        let Ok(permit) = permit else { break };
                        let accepted = tokio::select! {
                            accepted = listener.accept() => accepted,
                            _ = stop.changed() => break,
                        };
                        let (tcp, peer) = match accepted {
                            Ok(accepted) => accepted,
                            Err(err) => {
                                // Out of file descriptors (or another passing error): wait
                                // instead of spinning on the error.
                                tracing::warn!("accept failed: {err}");
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                                continue;
                            }
                        };
                        let (router, acceptor) = (router.clone(), acceptor.clone());
                        tokio::spawn(async move {
                            let _permit = permit;
                            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(err)) => {
                                    tracing::debug!(%peer, "TLS handshake failed: {err}");
                                    return;
                                }
                                Err(_) => return,
                            };
                            // A pass-through agent's client certificate (verified against
                            // the agent CA by rustls) goes with every request of the connection.
                            let client_cert = passthrough::PeerCertificate(
                                tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|cert| Arc::new(cert.to_vec())),
                            );
                            let router = tower::ServiceExt::map_request(
                                router,
                                move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                                    request.extensions_mut().insert(client_cert.clone());
                                    request.extensions_mut().insert(limits::PeerAddr(peer));
                                    request
                                },
                            );
                            let service = TowerToHyperService::new(router);
                            let connection = hyper::server::conn::http1::Builder::new()
                                .timer(hyper_util::rt::TokioTimer::new())
                                .header_read_timeout(header_timeout)
                                .max_buf_size(MAX_HEADERS)
                                .serve_connection(TokioIo::new(tls), service);
                            if let Err(err) = connection.await {
                                tracing::debug!(%peer, "connection: {err}");
                            }
                        });
                    }
                }));
            }
            shutdown.await;
            let _ = stop_tx.send(true);
            for task in tasks {
                let _ = task.await;
            }
        };
        Ok((bound, serve))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_is_the_public_url_or_the_443_listener_by_its_host_name() {
        let config = |hosts: &[&str], public: Option<&str>| {
            let mut config = TenantConfig::new(PathBuf::from("x"), Vec::new());
            config.hosts = hosts.iter().map(|host| host.to_string()).collect();
            config.public_url = public.map(str::to_string);
            config
        };
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert_eq!(authority(&config(&[], Some("https://login.example/")), &[addr("0.0.0.0:443")]), "https://login.example");
        assert_eq!(authority(&config(&["login.example"], None), &[addr("0.0.0.0:443")]), "https://login.example");
        assert_eq!(authority(&config(&[], None), &[addr("127.0.0.1:8443")]), "https://127.0.0.1:8443");
        assert_eq!(authority(&config(&[], None), &[addr("0.0.0.0:8443")]), "https://127.0.0.1:8443");
        assert_eq!(authority(&config(&[], None), &[addr("[::1]:9443")]), "https://[::1]:9443");
        assert_eq!(
            authority(&config(&["127.0.0.12"], None), &[addr("127.0.0.1:39133"), addr("127.0.0.12:443")]),
            "https://127.0.0.12",
            "the host name goes with the 443 listener, not another listener's port"
        );
    }
}
