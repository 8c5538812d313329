//! The pass-through authentication agent, and the administrator's calls about agents.
//!
//! [`register`] makes the agent's TLS key (ECDSA P-256) and X25519 key, sends a certificate
//! request and the public key with an administrator's bearer token, and keeps the issued
//! certificate in the state folder (keys 0600, written atomically). [`run`] then opens only
//! outbound HTTPS to the tenant with that certificate (mutual TLS): several long-polls at once
//! take sign-ins, each password is opened with the agent's key (the previous key too, for work
//! sealed just before a renewal) and checked by the [`PasswordCheck`] the caller gives (the
//! binary's is an LDAPS bind to a DC), and the outcome goes back. The certificate and both keys
//! are renewed when a sixth of the certificate's life is left. A tenant that refuses the agent
//! (revoked, expired) stops it with [`AgentError::Refused`].
//!
//! Knows no LDAP and no tenant internals: only the agent protocol (`pta`) over HTTPS.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Checks a user's password on-premises.
pub trait PasswordCheck: Send + Sync + 'static {
    /// The outcome, and for the log which server said it (never the password).
    fn check<'a>(&'a self, user: &'a str, password: &'a str) -> Pin<Box<dyn Future<Output = (pta::Outcome, String)> + Send + 'a>>;
}

/// Why the agent cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file of the state folder.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state folder is not usable as it is.
    #[error("{0}")]
    State(String),
    /// Keys, certificates or TLS settings.
    #[error("{0}")]
    Crypto(String),
    /// The tenant could not be reached.
    #[error("cannot reach the tenant: {0}")]
    Unreachable(String),
    /// The tenant answered with an error.
    #[error("the tenant refused ({status}): {message}")]
    Tenant {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The tenant no longer accepts this agent.
    #[error("the tenant refuses this agent (revoked, or its certificate expired): {0}; register it again")]
    Refused(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
    move |source| AgentError::Io { what, path: path.to_path_buf(), source }
}

fn crypto(what: &str) -> impl FnOnce(&dyn std::fmt::Display) -> AgentError + '_ {
    move |err| AgentError::Crypto(format!("{what}: {err}"))
}

/// Where the tenant is and how to trust it.
#[derive(Debug, Clone)]
pub struct TenantEndpoint {
    /// Its base URL, `https://tenant.example`.
    pub url: String,
    /// The CA its HTTPS certificate chains to (a self-hosted tenant).
    pub ca_file: Option<PathBuf>,
}

/// What `register` leaves in the state folder (`agent.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AgentFile {
    agent_id: String,
    tenant_url: String,
    machine_name: String,
    issued_at: i64,
    not_after: i64,
}

const AGENT_FILE: &str = "agent.json";
const TLS_CERT: &str = "agent-cert.pem";
const TLS_KEY: &str = "agent-key.pem";
const ENCRYPTION_KEY: &str = "encryption.key";
const PREVIOUS_ENCRYPTION_KEY: &str = "encryption.previous.key";
const TENANT_CA: &str = "tenant-ca.pem";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_secs() as i64).unwrap_or(0)
}

/// A Unix time as RFC 3339, for messages.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), AgentError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io("write", &temporary))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(io("write", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io("replace", path))
}

fn random32() -> Result<[u8; 32], AgentError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| AgentError::Crypto("the system random generator failed".into()))?;
    Ok(bytes)
}

/// A new TLS key and its certificate request, and a new X25519 key.
fn new_keys() -> Result<(rcgen::KeyPair, String, pta::AgentKey), AgentError> {
    let tls_key = rcgen::KeyPair::generate().map_err(|err| crypto("make the agent's TLS key")(&err))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Isthmus pass-through agent");
    let csr = params.serialize_request(&tls_key).and_then(|csr| csr.pem()).map_err(|err| crypto("make the certificate request")(&err))?;
    Ok((tls_key, csr, pta::AgentKey::from_bytes(random32()?)))
}

fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, AgentError> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca {
        let bad = |err: &dyn std::fmt::Display| AgentError::Crypto(format!("{}: {err}", path.display()));
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|err| bad(&err))? {
            roots.add(cert.map_err(|err| bad(&err))?).map_err(|err| bad(&err))?;
        }
        if roots.is_empty() {
            return Err(bad(&"holds no certificate"));
        }
    }
    Ok(roots)
}

/// An HTTPS client for the tenant: plain (administrators) or with the agent's certificate.
fn http_client(ca: Option<&Path>, identity: Option<(&[u8], &[u8])>) -> Result<reqwest::Client, AgentError> {
    use rustls::pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| crypto("TLS settings")(&err))?
        .with_root_certificates(roots(ca)?);
    let config = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| crypto("the agent certificate")(&err))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| crypto("the agent key")(&err))?;
            builder.with_client_auth_cert(chain, key).map_err(|err| crypto("the agent certificate and key")(&err))?
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|err| crypto("HTTP client")(&err))
}

async fn refused(response: reqwest::Response) -> AgentError {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let message = body.pointer("/error/message").and_then(serde_json::Value::as_str).unwrap_or("no message").to_string();
    AgentError::Tenant { status, message }
}

/// An administrator's call to the tenant with `token`.
pub async fn admin_call(
    tenant: &TenantEndpoint,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, AgentError> {
    let http = http_client(tenant.ca_file.as_deref(), None)?;
    let url = format!("{}{path}", tenant.url.trim_end_matches('/'));
    let mut request = http.request(method, &url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|err| AgentError::Unreachable(format!("{url}: {err}")))?;
    if !response.status().is_success() {
        return Err(refused(response).await);
    }
    Ok(response.json().await.unwrap_or(serde_json::Value::Null))
}

/// Registers an agent with an administrator's `token`, keeping its identity in `dir`; returns
/// the agent's id and when its certificate expires.
pub async fn register(tenant: &TenantEndpoint, token: &str, dir: &Path, machine_name: &str) -> Result<(String, i64), AgentError> {
    use std::os::unix::fs::PermissionsExt as _;
    if dir.join(AGENT_FILE).exists() {
        return Err(AgentError::State(format!("{} already holds a registered agent; use another folder", dir.display())));
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io("chmod", dir))?;
    let (tls_key, csr, encryption) = new_keys()?;
    let registration = pta::Registration {
        csr,
        encryption_key: pta::key_to_text(&encryption.public()),
        machine_name: machine_name.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let body = serde_json::to_value(&registration).map_err(|err| AgentError::State(err.to_string()))?;
    let answer = admin_call(tenant, token, reqwest::Method::POST, "/isthmus/v1/passThroughAuthentication/agents", Some(body)).await?;
    let registered: pta::Registered =
        serde_json::from_value(answer).map_err(|err| AgentError::Unreachable(format!("the registration answer: {err}")))?;
    write_private(&dir.join(TLS_KEY), tls_key.serialize_pem().as_bytes())?;
    write_private(&dir.join(ENCRYPTION_KEY), encryption.to_bytes().as_slice())?;
    std::fs::write(dir.join(TLS_CERT), &registered.certificate).map_err(io("write", &dir.join(TLS_CERT)))?;
    if let Some(ca) = &tenant.ca_file {
        std::fs::copy(ca, dir.join(TENANT_CA)).map_err(io("copy", ca))?;
    }
    let file = AgentFile {
        agent_id: registered.agent_id.clone(),
        tenant_url: tenant.url.trim_end_matches('/').to_string(),
        machine_name: machine_name.to_string(),
        issued_at: now(),
        not_after: registered.not_after,
    };
    write_private(&dir.join(AGENT_FILE), &serde_json::to_vec_pretty(&file).map_err(|err| AgentError::State(err.to_string()))?)?;
    Ok((registered.agent_id, registered.not_after))
}

/// The agent's identity, swapped whole when the certificate is renewed.
struct Identity {
    file: AgentFile,
    http: reqwest::Client,
    current: pta::AgentKey,
    previous: Option<pta::AgentKey>,
}

struct Agent {
    dir: PathBuf,
    identity: std::sync::RwLock<Arc<Identity>>,
    checker: Arc<dyn PasswordCheck>,
    renewing: tokio::sync::Mutex<()>,
}

fn read_key(path: &Path) -> Result<Option<pta::AgentKey>, AgentError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes: [u8; 32] = bytes.try_into().map_err(|_| AgentError::State(format!("{} is not a 32-byte key", path.display())))?;
            Ok(Some(pta::AgentKey::from_bytes(bytes)))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io("read", path)(err)),
    }
}

fn load_identity(dir: &Path) -> Result<Identity, AgentError> {
    let path = dir.join(AGENT_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|err| AgentError::State(format!("read {} (run `isthmus pta-agent register` first): {err}", path.display())))?;
    let file: AgentFile =
        serde_json::from_str(&text).map_err(|err| AgentError::State(format!("{} is not an agent file: {err}", path.display())))?;
    let cert = std::fs::read(dir.join(TLS_CERT)).map_err(io("read", &dir.join(TLS_CERT)))?;
    let key = zeroize::Zeroizing::new(std::fs::read(dir.join(TLS_KEY)).map_err(io("read", &dir.join(TLS_KEY)))?);
    let ca = dir.join(TENANT_CA);
    let http = http_client(ca.exists().then_some(ca.as_path()), Some((&cert, &key)))?;
    let current = read_key(&dir.join(ENCRYPTION_KEY))?
        .ok_or_else(|| AgentError::State(format!("{} is missing", dir.join(ENCRYPTION_KEY).display())))?;
    let previous = read_key(&dir.join(PREVIOUS_ENCRYPTION_KEY))?;
    Ok(Identity { file, http, current, previous })
}

fn renewal_due(file: &AgentFile) -> bool {
    let life = (file.not_after - file.issued_at).max(6);
    now() >= file.not_after - life / 6
}

impl Agent {
    fn identity(&self) -> Arc<Identity> {
        self.identity.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn url(identity: &Identity, path: &str) -> String {
        format!("{}/isthmus/v1/passThroughAuthentication/agent/{path}", identity.file.tenant_url)
    }

    /// Renews the certificate and keys when a sixth of the certificate's life is left.
    async fn renew_if_due(&self) -> Result<(), AgentError> {
        if !renewal_due(&self.identity().file) {
            return Ok(());
        }
        let _one = self.renewing.lock().await;
        let identity = self.identity();
        if !renewal_due(&identity.file) {
            return Ok(());
        }
        let (tls_key, csr, encryption) = new_keys()?;
        let renewal = pta::Renewal { csr, encryption_key: pta::key_to_text(&encryption.public()) };
        let response = identity
            .http
            .post(Self::url(&identity, "renew"))
            .json(&renewal)
            .send()
            .await
            .map_err(|err| AgentError::Unreachable(format!("renew the certificate: {err}")))?;
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        let registered: pta::Registered =
            response.json().await.map_err(|err| AgentError::Unreachable(format!("the renewal answer: {err}")))?;
        let dir = &self.dir;
        write_private(&dir.join(PREVIOUS_ENCRYPTION_KEY), identity.current.to_bytes().as_slice())?;
        write_private(&dir.join(TLS_KEY), tls_key.serialize_pem().as_bytes())?;
        write_private(&dir.join(TLS_CERT), registered.certificate.as_bytes())?;
        write_private(&dir.join(ENCRYPTION_KEY), encryption.to_bytes().as_slice())?;
        let file = AgentFile { issued_at: now(), not_after: registered.not_after, ..identity.file.clone() };
        write_private(&dir.join(AGENT_FILE), &serde_json::to_vec_pretty(&file).map_err(|err| AgentError::State(err.to_string()))?)?;
        let renewed = load_identity(dir)?;
        *self.identity.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(renewed);
        tracing::info!(until = %rfc3339(registered.not_after), "certificate renewed");
        Ok(())
    }

    /// One worker: poll, check, answer, until the tenant refuses the agent.
    async fn work(self: Arc<Self>) -> AgentError {
        let mut backoff = Duration::from_millis(500);
        loop {
            if let Err(err) = self.renew_if_due().await {
                tracing::warn!("{err}");
            }
            let identity = self.identity();
            let response = match identity.http.post(Self::url(&identity, "poll")).send().await {
                Ok(response) => response,
                Err(err) => {
                    tracing::warn!("cannot reach the tenant: {err}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            match response.status().as_u16() {
                200 => {}
                204 => {
                    backoff = Duration::from_millis(500);
                    continue;
                }
                401 | 403 => return AgentError::Refused(refused(response).await.to_string()),
                _ => {
                    tracing::warn!("polling failed: {}; retrying in {backoff:?}", refused(response).await);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
            backoff = Duration::from_millis(500);
            let work: pta::Work = match response.json().await {
                Ok(work) => work,
                Err(err) => {
                    tracing::warn!("the tenant sent work that is not valid: {err}");
                    continue;
                }
            };
            let answer = self.check(&identity, &work).await;
            let request = work.request_id.clone();
            match identity.http.post(Self::url(&identity, "answer")).json(&answer).send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => tracing::warn!(request, "the answer was not taken: {}", refused(response).await),
                Err(err) => tracing::warn!(request, "the answer could not be sent: {err}"),
            }
        }
    }

    async fn check(&self, identity: &Identity, work: &pta::Work) -> pta::Answer {
        let answer =
            |outcome: pta::Outcome, detail: String| pta::Answer { request_id: work.request_id.clone(), outcome, detail: Some(detail) };
        if work.expires_at < now() {
            return answer(pta::Outcome::InvalidRequest, "the request had expired when it arrived".into());
        }
        let context = work.context(&identity.file.agent_id);
        let Ok(sealed) = work.sealed() else { return answer(pta::Outcome::DecryptFailed, "the sealed password is not base64".into()) };
        let opened = identity.current.open(&context, &sealed).or_else(|err| match &identity.previous {
            Some(previous) => previous.open(&context, &sealed),
            None => Err(err),
        });
        let plain = match opened {
            Ok(plain) => plain,
            Err(err) => {
                tracing::warn!(request = %work.request_id, "cannot open the password: {err}");
                return answer(pta::Outcome::DecryptFailed, err.to_string());
            }
        };
        let Ok(password) = std::str::from_utf8(&plain) else {
            return answer(pta::Outcome::InvalidRequest, "the password is not UTF-8".into());
        };
        let (outcome, detail) = self.checker.check(&work.user_principal_name, password).await;
        tracing::info!(request = %work.request_id, user = %work.user_principal_name, ?outcome, "checked");
        answer(outcome, detail)
    }
}

/// The agent's id in `dir`.
pub fn agent_id(dir: &Path) -> Result<String, AgentError> {
    Ok(load_identity(dir)?.file.agent_id)
}

pub mod metrics;

/// Takes sign-ins with `workers` long-polls at once until the tenant refuses the agent (the
/// error says why); the caller stops it earlier by dropping the future.
pub async fn run(dir: &Path, checker: Arc<dyn PasswordCheck>, workers: usize) -> AgentError {
    let identity = match load_identity(dir) {
        Ok(identity) => identity,
        Err(err) => return err,
    };
    let agent = Arc::new(Agent {
        dir: dir.to_path_buf(),
        identity: std::sync::RwLock::new(Arc::new(identity)),
        checker,
        renewing: tokio::sync::Mutex::new(()),
    });
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        set.spawn(agent.clone().work());
    }
    match set.join_next().await {
        Some(Ok(err)) => err,
        Some(Err(err)) => AgentError::State(format!("a worker failed: {err}")),
        None => AgentError::State("no workers".into()),
    }
}
