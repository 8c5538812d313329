//! `isthmus pta-agent`: the on-premises pass-through authentication agent, and `isthmus pta`,
//! the administrator's view of the agents.
//!
//! `register` signs in as an administrator app (client credentials), makes the agent's TLS key
//! (ECDSA P-256) and X25519 key, sends a certificate request and the public key, and keeps the
//! issued certificate in the state folder (keys 0600). `run` opens only outbound HTTPS to the
//! tenant, with that certificate (mutual TLS): several long-polls at once take sign-ins, each
//! password is opened with the agent's key and checked by a bind to a DC over LDAPS, and the
//! outcome goes back. The certificate is renewed (new keys) when a sixth of its life is left.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// How to reach the tenant as an administrator.
#[derive(Debug, clap::Args)]
pub struct TenantArgs {
    /// The tenant's base URL, e.g. `https://tenant.example:443`.
    #[arg(long)]
    pub tenant_url: String,
    /// The tenant: its id or a verified domain.
    #[arg(long)]
    pub tenant: String,
    /// An app with Directory.ReadWrite.All (its secret comes from --client-secret-env).
    #[arg(long)]
    pub client_id: String,
    /// The environment variable that holds the app's secret (asked for on a terminal).
    #[arg(long, default_value = "ISTHMUS_CLIENT_SECRET")]
    pub client_secret_env: String,
    /// The CA the tenant's HTTPS certificate chains to (a self-hosted tenant).
    #[arg(long)]
    pub tenant_ca: Option<PathBuf>,
}

/// `isthmus pta-agent register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub tenant: TenantArgs,
    /// Where the agent keeps its certificate and keys (created; only its owner may read it).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The name the administrator sees (default: this computer's host name).
    #[arg(long)]
    pub machine_name: Option<String>,
}

/// `isthmus pta-agent run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The folder `register` filled.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// A domain controller, `ldaps://dc1.corp.example` (repeat for failover, in order).
    #[arg(long = "dc", required = true)]
    pub dcs: Vec<String>,
    /// The CA the domain controllers' certificates chain to.
    #[arg(long)]
    pub dc_ca: PathBuf,
    /// Sign-ins checked at once (each holds one long-poll to the tenant).
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Seconds to wait for a domain controller before trying the next.
    #[arg(long, default_value_t = 5)]
    pub dc_timeout_seconds: u64,
}

/// `isthmus pta …` (administrator).
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// List the agents with their health.
    List(TenantArgs),
    /// Revoke an agent: its certificate stops working at once.
    Revoke {
        #[command(flatten)]
        tenant: TenantArgs,
        /// The agent's id.
        id: String,
    },
    /// Automatic fallback to synced hashes when no agent has been reachable this long.
    Fallback {
        #[command(flatten)]
        tenant: TenantArgs,
        /// Seconds without agents before falling back, or `off`.
        after: String,
    },
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

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("write {}", temporary.display()))?;
    file.write_all(contents).and_then(|()| file.sync_all()).with_context(|| format!("write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("replace {}", path.display()))
}

fn random32() -> [u8; 32] {
    let bytes = tenant::crypto::random_bytes(32);
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes);
    out
}

/// A new TLS key and its certificate request, and a new X25519 key.
fn new_keys() -> anyhow::Result<(rcgen::KeyPair, String, pta::AgentKey)> {
    let tls_key = rcgen::KeyPair::generate().context("make the agent's TLS key")?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Isthmus pass-through agent");
    let csr =
        params.serialize_request(&tls_key).context("make the certificate request")?.pem().context("encode the certificate request")?;
    Ok((tls_key, csr, pta::AgentKey::from_bytes(random32())))
}

fn graph_config(args: &TenantArgs) -> anyhow::Result<connector_graph::GraphConfig> {
    let secret = match std::env::var(&args.client_secret_env) {
        Ok(secret) if !secret.is_empty() => zeroize::Zeroizing::new(secret),
        _ if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            zeroize::Zeroizing::new(rpassword::prompt_password("The admin app's secret: ").context("read the secret")?)
        }
        _ => bail!("set {} to the admin app's secret; secrets are never flags", args.client_secret_env),
    };
    let base = args.tenant_url.trim_end_matches('/').to_string();
    Ok(connector_graph::GraphConfig {
        id: "tenant".into(),
        authority: base.clone(),
        graph: format!("{base}/v1.0"),
        tenant: args.tenant.clone(),
        client_id: args.client_id.clone(),
        client_secret: secret,
        ca_file: args.tenant_ca.clone(),
        page_size: 200,
        attempts: 3,
    })
}

fn roots(ca: Option<&Path>) -> anyhow::Result<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca {
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(path).with_context(|| format!("read {}", path.display()))? {
            roots.add(cert.with_context(|| format!("read {}", path.display()))?).with_context(|| format!("{}", path.display()))?;
        }
        anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", path.display());
    }
    Ok(roots)
}

/// An HTTPS client for the tenant: plain (admin calls) or with the agent's certificate.
fn http_client(ca: Option<&Path>, identity: Option<(&[u8], &[u8])>) -> anyhow::Result<reqwest::Client> {
    use rustls::pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS settings")?
        .with_root_certificates(roots(ca)?);
    let config = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .context("the agent certificate")?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem).context("the agent key")?;
            builder.with_client_auth_cert(chain, key).context("the agent certificate and key")?
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .context("HTTP client")
}

async fn admin_call(
    args: &TenantArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<reqwest::Response> {
    let config = graph_config(args)?;
    let token = connector_graph::app_token(&config).await.context("sign in as the admin app")?;
    let http = http_client(args.tenant_ca.as_deref(), None)?;
    let url = format!("{}{path}", args.tenant_url.trim_end_matches('/'));
    let mut request = http.request(method, &url).bearer_auth(token.as_str());
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.with_context(|| format!("call {url}"))
}

async fn refused(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let message = body.pointer("/error/message").and_then(serde_json::Value::as_str).unwrap_or("no message").to_string();
    anyhow::anyhow!("the tenant refused ({status}): {message}")
}

/// `isthmus pta-agent register`.
pub async fn register(args: &RegisterArgs) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = &args.state_dir;
    anyhow::ensure!(!dir.join(AGENT_FILE).exists(), "{} already holds a registered agent; use another folder", dir.display());
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("chmod {}", dir.display()))?;
    let machine = match &args.machine_name {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/etc/hostname").map(|name| name.trim().to_string()).unwrap_or_else(|_| "agent".into()),
    };
    let (tls_key, csr, encryption) = new_keys()?;
    let registration = pta::Registration {
        csr,
        encryption_key: pta::key_to_text(&encryption.public()),
        machine_name: machine.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let body = serde_json::to_value(&registration)?;
    let response = admin_call(&args.tenant, reqwest::Method::POST, "/isthmus/v1/passThroughAuthentication/agents", Some(body)).await?;
    if !response.status().is_success() {
        return Err(refused(response).await.context("register the agent"));
    }
    let registered: pta::Registered = response.json().await.context("read the registration")?;
    write_private(&dir.join(TLS_KEY), tls_key.serialize_pem().as_bytes())?;
    write_private(&dir.join(ENCRYPTION_KEY), encryption.to_bytes().as_slice())?;
    std::fs::write(dir.join(TLS_CERT), &registered.certificate).with_context(|| format!("write {}", dir.join(TLS_CERT).display()))?;
    if let Some(ca) = &args.tenant.tenant_ca {
        std::fs::copy(ca, dir.join(TENANT_CA)).with_context(|| format!("copy {}", ca.display()))?;
    }
    let file = AgentFile {
        agent_id: registered.agent_id.clone(),
        tenant_url: args.tenant.tenant_url.trim_end_matches('/').to_string(),
        machine_name: machine,
        issued_at: now(),
        not_after: registered.not_after,
    };
    write_private(&dir.join(AGENT_FILE), &serde_json::to_vec_pretty(&file)?)?;
    println!("registered pass-through agent {} (certificate valid until {})", registered.agent_id, tenant::rfc3339(registered.not_after));
    Ok(())
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
    checker: connector_ldap::PasswordChecker,
    renewing: tokio::sync::Mutex<()>,
}

fn read_key(path: &Path) -> anyhow::Result<Option<pta::AgentKey>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes: [u8; 32] = bytes.try_into().map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?;
            Ok(Some(pta::AgentKey::from_bytes(bytes)))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("read {}", path.display())),
    }
}

fn load_identity(dir: &Path) -> anyhow::Result<Identity> {
    let path = dir.join(AGENT_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {} (run `isthmus pta-agent register` first)", path.display()))?;
    let file: AgentFile = serde_json::from_str(&text).with_context(|| format!("{} is not an agent file", path.display()))?;
    let cert = std::fs::read(dir.join(TLS_CERT)).with_context(|| format!("read {}", dir.join(TLS_CERT).display()))?;
    let key = zeroize::Zeroizing::new(std::fs::read(dir.join(TLS_KEY)).with_context(|| format!("read {}", dir.join(TLS_KEY).display()))?);
    let ca = dir.join(TENANT_CA);
    let http = http_client(ca.exists().then_some(ca.as_path()), Some((&cert, &key)))?;
    let current = read_key(&dir.join(ENCRYPTION_KEY))?.with_context(|| format!("{} is missing", dir.join(ENCRYPTION_KEY).display()))?;
    let previous = read_key(&dir.join(PREVIOUS_ENCRYPTION_KEY))?;
    Ok(Identity { file, http, current, previous })
}

/// Why a worker stops the agent.
#[derive(Debug)]
enum Fatal {
    /// The tenant no longer knows this agent.
    Refused(String),
}

impl Agent {
    fn identity(&self) -> Arc<Identity> {
        self.identity.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn url(&self, identity: &Identity, path: &str) -> String {
        format!("{}/isthmus/v1/passThroughAuthentication/agent/{path}", identity.file.tenant_url)
    }

    /// Renews the certificate when a sixth of its life is left.
    async fn renew_if_due(&self) -> anyhow::Result<()> {
        let identity = self.identity();
        let life = (identity.file.not_after - identity.file.issued_at).max(6);
        if now() < identity.file.not_after - life / 6 {
            return Ok(());
        }
        let _one = self.renewing.lock().await;
        let identity = self.identity();
        if now() < identity.file.not_after - (identity.file.not_after - identity.file.issued_at).max(6) / 6 {
            return Ok(());
        }
        let (tls_key, csr, encryption) = new_keys()?;
        let renewal = pta::Renewal { csr, encryption_key: pta::key_to_text(&encryption.public()) };
        let response = identity.http.post(self.url(&identity, "renew")).json(&renewal).send().await.context("renew the certificate")?;
        if !response.status().is_success() {
            return Err(refused(response).await.context("renew the certificate"));
        }
        let registered: pta::Registered = response.json().await.context("read the renewal")?;
        let dir = &self.dir;
        write_private(&dir.join(PREVIOUS_ENCRYPTION_KEY), identity.current.to_bytes().as_slice())?;
        write_private(&dir.join(TLS_KEY), tls_key.serialize_pem().as_bytes())?;
        write_private(&dir.join(TLS_CERT), registered.certificate.as_bytes())?;
        write_private(&dir.join(ENCRYPTION_KEY), encryption.to_bytes().as_slice())?;
        let file = AgentFile { issued_at: now(), not_after: registered.not_after, ..identity.file.clone() };
        write_private(&dir.join(AGENT_FILE), &serde_json::to_vec_pretty(&file)?)?;
        let renewed = load_identity(dir)?;
        *self.identity.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(renewed);
        tracing::info!(until = %tenant::rfc3339(registered.not_after), "certificate renewed");
        Ok(())
    }

    /// One worker: poll, check, answer, until the tenant refuses the agent.
    async fn work(self: Arc<Self>) -> Fatal {
        let mut backoff = Duration::from_millis(500);
        loop {
            if let Err(err) = self.renew_if_due().await {
                tracing::warn!("{err:#}");
            }
            let identity = self.identity();
            let response = identity.http.post(self.url(&identity, "poll")).send().await;
            let response = match response {
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
                401 | 403 => {
                    let message = refused(response).await;
                    return Fatal::Refused(format!("{message:#}"));
                }
                _ => {
                    let message = refused(response).await;
                    tracing::warn!("polling failed: {message:#}; retrying in {backoff:?}");
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
            match identity.http.post(self.url(&identity, "answer")).json(&answer).send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => tracing::warn!(request, "the answer was not taken: {:#}", refused(response).await),
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

/// `isthmus pta-agent run`.
pub async fn run(args: &RunArgs) -> anyhow::Result<()> {
    let identity = load_identity(&args.state_dir)?;
    let checker = connector_ldap::PasswordChecker::new(args.dcs.clone(), &args.dc_ca, Duration::from_secs(args.dc_timeout_seconds.max(1)))?;
    let agent_id = identity.file.agent_id.clone();
    let agent = Arc::new(Agent {
        dir: args.state_dir.clone(),
        identity: std::sync::RwLock::new(Arc::new(identity)),
        checker,
        renewing: tokio::sync::Mutex::new(()),
    });
    eprintln!("pass-through agent {agent_id}: {} workers, domain controllers {}", args.workers.max(1), args.dcs.join(", "));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.workers.max(1) {
        workers.spawn(agent.clone().work());
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            eprintln!("stopping");
            Ok(())
        }
        Some(result) = workers.join_next() => match result {
            Ok(Fatal::Refused(why)) => bail!("the tenant refuses this agent (revoked, or its certificate expired): {why}; register it again"),
            Err(err) => bail!("a worker failed: {err}"),
        },
    }
}

/// `isthmus pta …`.
pub async fn admin(command: &AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::List(tenant) => {
            let response = admin_call(tenant, reqwest::Method::GET, "/isthmus/v1/passThroughAuthentication/agents", None).await?;
            if !response.status().is_success() {
                return Err(refused(response).await);
            }
            let body: serde_json::Value = response.json().await.context("read the agent list")?;
            let agents = body["value"].as_array().cloned().unwrap_or_default();
            println!("{:<38} {:<20} {:<9} {:<22} {:>8} {:>7}", "agent", "machine", "status", "last seen", "served", "errors");
            for agent in &agents {
                let text = |key: &str| agent[key].as_str().unwrap_or("-").to_string();
                println!(
                    "{:<38} {:<20} {:<9} {:<22} {:>8} {:>7}",
                    text("id"),
                    text("machineName"),
                    text("status"),
                    text("lastSeenDateTime"),
                    agent["requestsServed"].as_u64().unwrap_or(0),
                    agent["errors"].as_u64().unwrap_or(0)
                );
            }
            match body["automaticFallbackSeconds"].as_u64() {
                Some(seconds) => println!("{} agents; automatic fallback to synced hashes after {seconds} s without agents", agents.len()),
                None => println!("{} agents; automatic fallback off", agents.len()),
            }
            Ok(())
        }
        AdminCommand::Revoke { tenant, id } => {
            let path = format!("/isthmus/v1/passThroughAuthentication/agents/{id}");
            let response = admin_call(tenant, reqwest::Method::DELETE, &path, None).await?;
            if !response.status().is_success() {
                return Err(refused(response).await);
            }
            println!("revoked agent {id}");
            Ok(())
        }
        AdminCommand::Fallback { tenant, after } => {
            let value = if after == "off" {
                serde_json::Value::Null
            } else {
                serde_json::json!(after.parse::<u64>().with_context(|| format!("`{after}` is neither a number of seconds nor `off`"))?)
            };
            let body = serde_json::json!({"automaticFallbackSeconds": value});
            let response = admin_call(tenant, reqwest::Method::PATCH, "/isthmus/v1/passThroughAuthentication", Some(body)).await?;
            if !response.status().is_success() {
                return Err(refused(response).await);
            }
            println!("automatic fallback: {after}");
            Ok(())
        }
    }
}
