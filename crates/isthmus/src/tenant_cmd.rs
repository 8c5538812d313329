//! `isthmus tenant serve`: the cloud tenant over HTTPS until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

/// Options of `isthmus tenant serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The state folder (created on first start: CA, certificate, signing key, database).
    #[arg(long, default_value = "isthmus-tenant")]
    pub state: PathBuf,
    /// Address to listen on (HTTPS); repeat for several.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: Vec<SocketAddr>,
    /// The tenant's short name: its initial domain is `<name>.isthmus.local` (first start only).
    #[arg(long, default_value = "contoso")]
    pub name: String,
    /// Extra host names or addresses for the generated certificate (first start only).
    #[arg(long)]
    pub host: Vec<String>,
    /// Directory writes allowed per second; more get 429 with Retry-After (default: no limit).
    #[arg(long)]
    pub write_limit: Option<u32>,
    /// Smart lockout: failed sign-ins in a row that lock an account.
    #[arg(long, default_value_t = 10)]
    pub lockout_threshold: u32,
    /// Smart lockout: seconds an account stays locked.
    #[arg(long, default_value_t = 60)]
    pub lockout_seconds: u64,
    /// The DNS resolver (ip:port) domain verification asks; default: the first of /etc/resolv.conf.
    #[arg(long)]
    pub dns_resolver: Option<SocketAddr>,
    /// Never let the sync take over a cloud-only object by matching its UPN or primary SMTP
    /// (also a tenant feature: blockSoftMatchEnabled in /v1.0/directory/onPremisesSynchronization).
    #[arg(long)]
    pub block_soft_match: bool,
    /// Never let the sync take over a cloud object through its onPremisesImmutableId.
    #[arg(long)]
    pub block_hard_match_takeover: bool,
    /// Keep the directory in PostgreSQL instead of SQLite in the state folder, e.g.
    /// postgresql://isthmus@127.0.0.1/tenant; several `tenant serve` processes may share it.
    /// Read from the ISTHMUS_TENANT_POSTGRES environment variable when not given (keeps a
    /// password out of the process list).
    #[arg(long)]
    pub postgres: Option<String>,
    /// A leaked NT-hash list (the Pwned Passwords NTLM file, sorted by hash) that password hash
    /// sync checks users against, by k-anonymity ranges.
    #[arg(long)]
    pub leaked_list: Option<PathBuf>,
    /// Refuse the sign-in of users whose synced password is on that list (default: flag only).
    #[arg(long)]
    pub block_leaked_credentials: bool,
    /// Pass-through: seconds a sign-in waits for an agent's answer in all.
    #[arg(long, default_value_t = 10)]
    pub pta_timeout_seconds: u64,
    /// Pass-through: days an agent certificate lives (agents renew with a sixth left).
    #[arg(long, default_value_t = 180)]
    pub pta_certificate_days: u64,
    /// Days the audit and sign-in logs keep a record (older ones are removed every ten minutes).
    #[arg(long, default_value_t = 30)]
    pub audit_retention_days: u32,
    /// The URL clients reach the tenant at (e.g. https://login.contoso.example): the issuer of
    /// every token and the base of discovery, whatever Host a request names. Default:
    /// https://<first --host, or the first --listen address>[:port].
    #[arg(long)]
    pub public_url: Option<String>,
    /// Connections served at once; beyond, new clients wait in the listen queue.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// LAB ONLY: let this domain (repeat) be verified without its DNS TXT record, for test
    /// forests no public DNS serves. Every such verification is audited as a lab override.
    #[arg(long = "lab-verify-domain")]
    pub lab_verify_domains: Vec<String>,
    /// Serve metrics (`GET /metrics`, for Prometheus) on this address, e.g. 127.0.0.1:9465; off
    /// unless given. Plain HTTP on its own listener: keep it on loopback or a monitoring network.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

/// Runs the tenant.
pub async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let mut config = tenant::TenantConfig::new(args.state.clone(), args.listen.clone());
    config.name = args.name.clone();
    config.hosts = args.host.clone();
    config.write_limit = args.write_limit;
    config.lockout_threshold = args.lockout_threshold;
    config.lockout_seconds = args.lockout_seconds;
    config.dns_resolver = args.dns_resolver;
    for domain in &args.lab_verify_domains {
        eprintln!("warning: lab override: {domain} can be verified without its DNS record (never on a production tenant)");
    }
    config.lab_verified_domains = args.lab_verify_domains.clone();
    config.match_policy = tenant::resilience::MatchPolicy {
        block_soft_match: args.block_soft_match,
        block_hard_match_takeover: args.block_hard_match_takeover,
        no_soft_match_on_upn: false,
    };
    config.leaked_list = args.leaked_list.clone();
    config.block_leaked = args.block_leaked_credentials;
    anyhow::ensure!((1..=3650).contains(&args.audit_retention_days), "--audit-retention-days must be 1 to 3650");
    config.audit_retention_days = args.audit_retention_days;
    anyhow::ensure!(args.max_connections >= 1, "--max-connections must be at least 1");
    config.max_connections = args.max_connections;
    if let Some(url) = &args.public_url {
        let parsed = url::Url::parse(url).with_context(|| format!("--public-url {url}"))?;
        anyhow::ensure!(
            parsed.scheme() == "https" && parsed.host_str().is_some() && parsed.path() == "/" && parsed.query().is_none(),
            "--public-url must be https://host[:port] with nothing after it, got {url}"
        );
        config.public_url = Some(url.trim_end_matches('/').to_string());
    }
    anyhow::ensure!((2..=120).contains(&args.pta_timeout_seconds), "--pta-timeout-seconds must be 2 to 120");
    anyhow::ensure!((1..=3650).contains(&args.pta_certificate_days), "--pta-certificate-days must be 1 to 3650");
    config.pta.timeout = std::time::Duration::from_secs(args.pta_timeout_seconds);
    config.pta.lease = config.pta.lease.min(config.pta.timeout / 2);
    config.pta.certificate_lifetime = std::time::Duration::from_secs(args.pta_certificate_days * 86_400);
    config.postgres = args.postgres.clone().or_else(|| std::env::var("ISTHMUS_TENANT_POSTGRES").ok().filter(|url| !url.is_empty()));
    let (tenant, bootstrap) = tenant::Tenant::open(config).await.with_context(|| format!("open the tenant in {}", args.state.display()))?;
    println!("tenant {} ({})", tenant.tenant_id(), tenant.initial_domain());
    println!("CA certificate for clients: {}", tenant.ca_pem.display());
    if let Some(app) = bootstrap {
        // User sign-ins (MSAL's PublicClientApplication, native apps) need a public client: one
        // comes with a new tenant.
        let public = tenant.register_public_app("Isthmus sign-in (public client)").await.context("register the public client")?;
        let file = args.state.join("admin-app.txt");
        let text = format!("client_id = {}\nclient_secret = {}\npublic_client_id = {public}\n", app.client_id, &*app.client_secret);
        write_private(&file, &text).with_context(|| format!("write {}", file.display()))?;
        println!(
            "new tenant: admin app {} (Directory.ReadWrite.All); its secret is in {} (shown once, keep it safe)",
            app.client_id,
            file.display()
        );
        println!("new tenant: public client {public} for user sign-ins (no secret: MSAL's PublicClientApplication, native apps)");
    }
    let metrics = match &args.metrics_listen {
        Some(address) => {
            let mut registry = telemetry::registry();
            tenant.metrics().register(&mut registry);
            let listening = telemetry::start(address, registry).await?;
            println!("metrics on http://{}/metrics", listening.address);
            Some(listening)
        }
        None => None,
    };
    let domain = tenant.initial_domain().to_string();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("watch SIGTERM")?;
    let (bound, serve) = tenant
        .bind(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        })
        .await?;
    for addr in &bound {
        println!("listening on https://{addr}  (authority https://{addr}/{domain}, Graph https://{addr}/v1.0)");
    }
    serve.await;
    drop(metrics);
    println!("stopped");
    Ok(())
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

/// Options of `isthmus tenant app create`.
#[derive(Debug, clap::Args)]
pub struct AppCreateArgs {
    #[command(flatten)]
    pub tenant: crate::pta_agent::TenantArgs,
    /// The app's display name.
    #[arg(long)]
    pub name: String,
    /// An application role to grant, by name (repeat): OnPremDirectorySynchronization.ReadWrite.All
    /// for the sync service, Directory.ReadWrite.All for an administrator, …
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// A public client (a native or desktop app, MSAL's PublicClientApplication): no secret, user
    /// sign-ins only.
    #[arg(long)]
    pub public: bool,
    /// A redirect URI for sign-ins (repeat): https, or http on loopback.
    #[arg(long = "redirect-uri")]
    pub redirect_uris: Vec<String>,
    /// Where to write the new app's id and secret (mode 0600; secrets are never printed).
    /// Required unless --public.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
}

/// `isthmus tenant app create`: an app registration through Graph, its secret, its service
/// principal and its role grants — what an operator needs for the sync app or a client.
pub async fn app_create(args: &AppCreateArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    anyhow::ensure!(args.public || args.secret_file.is_some(), "give --secret-file (where the new secret goes) or --public");
    anyhow::ensure!(!args.public || args.roles.is_empty(), "a public client holds no application roles (they are for apps with a secret)");
    if let Some(file) = &args.secret_file {
        anyhow::ensure!(!file.exists(), "{} exists; give a new file for the secret", file.display());
    }
    let admin = crate::tenant_admin::Admin::sign_in(&args.tenant).await?;
    let call = |method: reqwest::Method, path: String, body: Option<serde_json::Value>| {
        let admin = &admin;
        async move { admin.call(method, &path, body).await }
    };
    // Every role is checked before anything is made.
    let graph =
        call(reqwest::Method::GET, "/v1.0/servicePrincipals?$filter=appId%20eq%20'00000003-0000-0000-c000-000000000000'".into(), None)
            .await?;
    let graph = graph["value"][0].clone();
    let offered: Vec<(String, String)> = graph["appRoles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|role| Some((role["value"].as_str()?.to_string(), role["id"].as_str()?.to_string())))
        .collect();
    let mut grants = Vec::new();
    for role in &args.roles {
        let Some((_, id)) = offered.iter().find(|(value, _)| value.eq_ignore_ascii_case(role)) else {
            let names: Vec<&str> = offered.iter().map(|(value, _)| value.as_str()).collect();
            anyhow::bail!("no application role {role:?}; the tenant offers: {}", names.join(", "));
        };
        grants.push((role.clone(), id.clone()));
    }
    let redirects = serde_json::json!({"redirectUris": args.redirect_uris});
    let mut body = serde_json::json!({"displayName": args.name, "isFallbackPublicClient": args.public});
    body[if args.public { "publicClient" } else { "web" }] = redirects;
    let app = call(reqwest::Method::POST, "/v1.0/applications".into(), Some(body)).await?;
    let (object_id, app_id) = (app["id"].as_str().unwrap_or_default().to_string(), app["appId"].as_str().unwrap_or_default().to_string());
    if let Some(file) = &args.secret_file {
        let password = call(
            reqwest::Method::POST,
            format!("/v1.0/applications/{object_id}/addPassword"),
            Some(serde_json::json!({"passwordCredential": {"displayName": "isthmus tenant app create"}})),
        )
        .await?;
        let secret = zeroize::Zeroizing::new(password["secretText"].as_str().unwrap_or_default().to_string());
        let text = zeroize::Zeroizing::new(format!("client_id = {app_id}\nclient_secret = {}\n", &*secret));
        write_private(file, &text).with_context(|| format!("write {}", file.display()))?;
    }
    if !grants.is_empty() {
        let principal = call(reqwest::Method::POST, "/v1.0/servicePrincipals".into(), Some(serde_json::json!({"appId": app_id}))).await?;
        let graph_id = graph["id"].as_str().unwrap_or_default();
        for (role, id) in &grants {
            let grant = serde_json::json!({"principalId": principal["id"], "resourceId": graph_id, "appRoleId": id});
            call(reqwest::Method::POST, format!("/v1.0/servicePrincipals/{graph_id}/appRoleAssignedTo"), Some(grant))
                .await
                .with_context(|| format!("grant {role}"))?;
        }
    }
    let roles = if args.roles.is_empty() { "no roles".to_string() } else { args.roles.join(", ") };
    match &args.secret_file {
        Some(file) => println!("app {app_id} ({}): {roles}; its id and secret are in {}", args.name, file.display()),
        None => println!("public client {app_id} ({}): user sign-ins, no secret", args.name),
    }
    Ok(())
}
