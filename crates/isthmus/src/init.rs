//! `isthmus init`: writes a sync server's configuration from flags (express: one forest, the
//! default rules, the objectGUID / mS-DS-ConsistencyGuid anchor), after checking that it works —
//! the forest can be reached, bound to and read with DirSync; the tenant signs the app in and
//! lets it read the directory; the forest's domain is routable and verified in the tenant. Every
//! check is printed; the file is written only when none failed (warnings do not stop it).

use std::path::PathBuf;

use anyhow::Context;
use connector_api::ConnectorError;

/// Options of `isthmus init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The configuration file to write (it must not exist).
    #[arg(long, default_value = "isthmus.toml")]
    pub config: PathBuf,
    /// The domain controller (host or address, `:port` if not 636).
    #[arg(long)]
    pub ad_host: String,
    /// The CA that issued the DC's LDAPS certificate (PEM); default: the system's roots.
    #[arg(long)]
    pub ad_ca: Option<PathBuf>,
    /// The account that reads the directory (needs "Replicating Directory Changes").
    #[arg(long)]
    pub ad_user: String,
    /// The environment variable that holds that account's password (never a flag: shells log flags).
    #[arg(long, default_value = "ISTHMUS_AD_PASSWORD")]
    pub ad_password_env: String,
    /// Only these OUs (repeat); default: the whole domain.
    #[arg(long)]
    pub ou: Vec<String>,
    /// The tenant's base URL, e.g. `https://tenant.example:8443`.
    #[arg(long)]
    pub tenant_url: String,
    /// The tenant (its id or a domain).
    #[arg(long)]
    pub tenant: String,
    /// The sync app's client id (role OnPremDirectorySynchronization.ReadWrite.All).
    #[arg(long)]
    pub client_id: String,
    /// The environment variable that holds the sync app's secret.
    #[arg(long, default_value = "ISTHMUS_CLIENT_SECRET")]
    pub client_secret_env: String,
    /// The CA of a self-hosted tenant's HTTPS certificate (PEM).
    #[arg(long)]
    pub tenant_ca: Option<PathBuf>,
    /// The SQLite database the configuration names.
    #[arg(long, default_value = "isthmus.db")]
    pub db: PathBuf,
}

fn check(ok: bool, line: &str) -> bool {
    println!("  {} {line}", if ok { "ok  " } else { "FAIL" });
    ok
}

fn warn(line: &str) {
    println!("  warn {line}");
}

/// Runs the checks and writes the file.
pub async fn run(args: &InitArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.config.exists(), "{} already exists; remove it or give --config another path", args.config.display());
    let ad_password = zeroize::Zeroizing::new(
        std::env::var(&args.ad_password_env).with_context(|| format!("set {} to the AD account's password", args.ad_password_env))?,
    );
    let client_secret = zeroize::Zeroizing::new(
        std::env::var(&args.client_secret_env).with_context(|| format!("set {} to the sync app's secret", args.client_secret_env))?,
    );
    let ad_id = "ad".to_string();
    let bind = connector_ldap::Bind::Simple { dn: args.ad_user.clone(), password: ad_password.clone() };
    let mut ad = connector_ldap::LdapConfig::new(&ad_id, connector_ldap::Flavour::ActiveDirectory, &args.ad_host, bind);
    ad.ca_file = args.ad_ca.clone();
    ad.include_ous = args.ou.clone();
    let graph = connector_graph::GraphConfig {
        id: "tenant".into(),
        authority: args.tenant_url.trim_end_matches('/').to_string(),
        graph: format!("{}/v1.0", args.tenant_url.trim_end_matches('/')),
        tenant: args.tenant.clone(),
        client_id: args.client_id.clone(),
        client_secret: client_secret.clone(),
        ca_file: args.tenant_ca.clone(),
        page_size: 200,
        attempts: 3,
    };

    println!("Checking the on-premises directory at {}:", args.ad_host);
    let mut failed = false;
    let mut domain = None;
    match connector_ldap::open(ad.clone()).await {
        Ok(connector) => {
            check(true, &format!("LDAPS, the CA and the bind as {} work", args.ad_user));
            domain = connector.info.parameters.get("Domain.FQDN").map(ToString::to_string);
            match connector.import.full_page(None).await {
                Ok(page) => {
                    check(true, &format!("DirSync and reading objects work ({} on the first page)", page.changes.len()));
                }
                Err(err) => failed |= !check(false, &format!("reading the directory: {err}")),
            }
        }
        Err(ConnectorError::Config(why)) => failed |= !check(false, &why),
        Err(err) => failed |= !check(false, &format!("cannot reach {}: {err}", args.ad_host)),
    }
    if let Some(domain) = &domain {
        let labels: Vec<&str> = domain.split('.').collect();
        let non_routable = labels.len() < 2
            || ["local", "lan", "internal", "corp", "home", "localdomain"].contains(&labels.last().copied().unwrap_or_default());
        if non_routable {
            warn(&format!(
                "the forest's domain {domain} is not routable: it cannot be verified in a tenant; users' UPNs will get the tenant's initial domain unless you add a routable UPN suffix (or sync another attribute as the UPN)"
            ));
        }
    }

    println!("Checking the tenant at {}:", args.tenant_url);
    match connector_graph::open(graph.clone()).await {
        Ok(_) => {
            check(true, &format!("the app {} signs in", args.client_id));
        }
        Err(err) => failed |= !check(false, &err.to_string()),
    }
    if !failed && let Some(domain) = &domain {
        match verified_domains(&graph).await {
            Ok(verified) if verified.iter().any(|known| known.eq_ignore_ascii_case(domain)) => {
                check(true, &format!("{domain} is a verified domain of the tenant"));
            }
            Ok(verified) => warn(&format!(
                "{domain} is not verified in the tenant (verified: {}); users will get the initial domain until it is",
                verified.join(", ")
            )),
            Err(err) => failed |= !check(false, &format!("reading the tenant's domains: {err}")),
        }
    }
    anyhow::ensure!(!failed, "nothing written: fix what failed above and run init again");

    let text = render(args, &ad_id, &ad_password, &client_secret);
    write_private(&args.config, &text).with_context(|| format!("write {}", args.config.display()))?;
    println!(
        "Wrote {} (mode 0600): express settings — one forest, Entra Connect's default rules, objectGUID / mS-DS-ConsistencyGuid as the anchor.",
        args.config.display()
    );
    println!("Next: isthmus sync run --config {} --full", args.config.display());
    Ok(())
}

async fn verified_domains(graph: &connector_graph::GraphConfig) -> anyhow::Result<Vec<String>> {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(ca) = &graph.ca_file {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?).tls_built_in_root_certs(false);
    }
    let http = builder.build()?;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", graph.client_id.as_str()),
        ("client_secret", graph.client_secret.as_str()),
        ("scope", "https://graph.microsoft.com/.default"),
    ];
    let token: serde_json::Value = http
        .post(format!("{}/{}/oauth2/v2.0/token", graph.authority, graph.tenant))
        .form(&form)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = token["access_token"].as_str().unwrap_or_default();
    let domains: serde_json::Value =
        http.get(format!("{}/domains", graph.graph)).bearer_auth(token).send().await?.error_for_status()?.json().await?;
    Ok(domains["value"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|domain| domain["isVerified"] == true)
        .filter_map(|domain| domain["id"].as_str().map(str::to_string))
        .collect())
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            '\n' => vec!['\\', 'n'],
            other => vec![other],
        })
        .collect();
    format!("\"{escaped}\"")
}

fn render(args: &InitArgs, ad_id: &str, ad_password: &str, client_secret: &str) -> String {
    let mut text = format!(
        "# Written by isthmus init: express settings.\n[store]\nsqlite = {}\n\n[sync]\ndefault_rules = true\n\n",
        quote(&args.db.display().to_string())
    );
    text.push_str(&format!("[[connector]]\nid = {}\nflavour = \"active-directory\"\nhost = {}\n", quote(ad_id), quote(&args.ad_host)));
    if let Some(ca) = &args.ad_ca {
        text.push_str(&format!("ca_file = {}\n", quote(&ca.display().to_string())));
    }
    if !args.ou.is_empty() {
        let ous: Vec<String> = args.ou.iter().map(|ou| quote(ou)).collect();
        text.push_str(&format!("include_ous = [{}]\n", ous.join(", ")));
    }
    text.push_str(&format!("[connector.bind]\nmethod = \"simple\"\ndn = {}\npassword = {}\n\n", quote(&args.ad_user), quote(ad_password)));
    let base = args.tenant_url.trim_end_matches('/');
    text.push_str(&format!(
        "[[graph]]\nid = \"tenant\"\nauthority = {}\ngraph = {}\ntenant = {}\nclient_id = {}\nclient_secret = {}\n",
        quote(base),
        quote(&format!("{base}/v1.0")),
        quote(&args.tenant),
        quote(&args.client_id),
        quote(client_secret)
    ));
    if let Some(ca) = &args.tenant_ca {
        text.push_str(&format!("ca_file = {}\n", quote(&ca.display().to_string())));
    }
    text
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}
