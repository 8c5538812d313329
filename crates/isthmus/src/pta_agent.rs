//! `isthmus pta-agent` (the on-premises pass-through agent) and `isthmus pta` (the
//! administrator's view of the agents): command-line glue. The agent itself is the `pta-agent`
//! crate; its password check here is `connector_ldap::PasswordChecker` (an LDAPS bind to a DC).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

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
    /// Serve metrics (`GET /metrics`, for Prometheus) on this address, e.g. 127.0.0.1:9466; off
    /// unless given (the agent takes no other inbound connection). Plain HTTP: keep it on loopback.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

/// `isthmus pta …` (administrator).
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// List the agents with their health.
    List {
        #[command(flatten)]
        tenant: TenantArgs,
        /// Print JSON (the tenant's agent objects) instead of a table.
        #[arg(long)]
        json: bool,
    },
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

/// The admin app's token (client credentials).
pub(crate) async fn admin_token(args: &TenantArgs) -> anyhow::Result<(pta_agent::TenantEndpoint, zeroize::Zeroizing<String>)> {
    let secret = match std::env::var(&args.client_secret_env) {
        Ok(secret) if !secret.is_empty() => zeroize::Zeroizing::new(secret),
        _ if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            zeroize::Zeroizing::new(rpassword::prompt_password("The admin app's secret: ").context("read the secret")?)
        }
        _ => bail!("set {} to the admin app's secret; secrets are never flags", args.client_secret_env),
    };
    let base = args.tenant_url.trim_end_matches('/').to_string();
    let config = connector_graph::GraphConfig {
        id: "tenant".into(),
        authority: base.clone(),
        graph: format!("{base}/v1.0"),
        tenant: args.tenant.clone(),
        client_id: args.client_id.clone(),
        client_secret: secret,
        ca_file: args.tenant_ca.clone(),
        page_size: 200,
        attempts: 3,
    };
    let token = connector_graph::app_token(&config).await.context("sign in as the admin app")?;
    Ok((pta_agent::TenantEndpoint { url: base, ca_file: args.tenant_ca.clone() }, token))
}

/// `isthmus pta-agent register`.
pub async fn register(args: &RegisterArgs) -> anyhow::Result<()> {
    let machine = match &args.machine_name {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/etc/hostname").map(|name| name.trim().to_string()).unwrap_or_else(|_| "agent".into()),
    };
    let (tenant, token) = admin_token(&args.tenant).await?;
    let (id, not_after) = pta_agent::register(&tenant, &token, &args.state_dir, &machine).await.context("register the agent")?;
    println!("registered pass-through agent {id} (certificate valid until {})", pta_agent::rfc3339(not_after));
    Ok(())
}

/// The LDAPS bind check, as the agent's password check.
struct LdapCheck(connector_ldap::PasswordChecker);

impl pta_agent::PasswordCheck for LdapCheck {
    fn check<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (pta::Outcome, String)> + Send + 'a>> {
        Box::pin(self.0.check(user, password))
    }
}

/// `isthmus pta-agent run`.
pub async fn run(args: &RunArgs) -> anyhow::Result<()> {
    let checker = connector_ldap::PasswordChecker::new(args.dcs.clone(), &args.dc_ca, Duration::from_secs(args.dc_timeout_seconds.max(1)))?;
    let id = pta_agent::agent_id(&args.state_dir)?;
    eprintln!("pass-through agent {id}: {} workers, domain controllers {}", args.workers.max(1), args.dcs.join(", "));
    let mut check: Arc<dyn pta_agent::PasswordCheck> = Arc::new(LdapCheck(checker));
    let _metrics = match &args.metrics_listen {
        Some(address) => {
            let mut registry = telemetry::registry();
            let metrics = pta_agent::metrics::AgentMetrics::register(&mut registry);
            check = Arc::new(pta_agent::metrics::Measured { inner: check, metrics });
            let listening = telemetry::start(address, registry).await?;
            eprintln!("metrics on http://{}/metrics", listening.address);
            Some(listening)
        }
        None => None,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            eprintln!("stopping");
            Ok(())
        }
        err = pta_agent::run(&args.state_dir, check, args.workers) => Err(err.into()),
    }
}

/// `isthmus pta …`.
pub async fn admin(command: &AdminCommand) -> anyhow::Result<()> {
    const AGENTS: &str = "/isthmus/v1/passThroughAuthentication/agents";
    match command {
        AdminCommand::List { tenant: args, json } => {
            let (tenant, token) = admin_token(args).await?;
            let body = pta_agent::admin_call(&tenant, &token, reqwest::Method::GET, AGENTS, None).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
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
        AdminCommand::Revoke { tenant: args, id } => {
            let (tenant, token) = admin_token(args).await?;
            pta_agent::admin_call(&tenant, &token, reqwest::Method::DELETE, &format!("{AGENTS}/{id}"), None).await?;
            println!("revoked agent {id}");
            Ok(())
        }
        AdminCommand::Fallback { tenant: args, after } => {
            let value = if after == "off" {
                serde_json::Value::Null
            } else {
                serde_json::json!(after.parse::<u64>().with_context(|| format!("`{after}` is neither a number of seconds nor `off`"))?)
            };
            let (tenant, token) = admin_token(args).await?;
            let body = serde_json::json!({"automaticFallbackSeconds": value});
            pta_agent::admin_call(&tenant, &token, reqwest::Method::PATCH, "/isthmus/v1/passThroughAuthentication", Some(body)).await?;
            println!("automatic fallback: {after}");
            Ok(())
        }
    }
}
