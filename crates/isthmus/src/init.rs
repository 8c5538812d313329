//! `isthmus init`: writes a sync server's configuration from flags (express: one forest, the
//! default rules, the objectGUID / mS-DS-ConsistencyGuid anchor), after checking that it works —
//! the forest can be reached, bound to and read with DirSync; the tenant signs the app in and
//! lets it read the directory; the forest's domain is routable and verified in the tenant. Every
//! check is printed; the file is written only when none failed (warnings do not stop it).

use std::path::PathBuf;

use anyhow::Context;
use connector_api::ConnectorError;

/// Options of `isthmus init`. What is not given is asked for when init runs on a terminal.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The configuration file to write (it must not exist).
    #[arg(long, default_value = "isthmus.toml")]
    pub config: PathBuf,
    /// The domain controller (host or address, `:port` if not 636).
    #[arg(long)]
    pub ad_host: Option<String>,
    /// The CA that issued the DC's LDAPS certificate (PEM); default: the system's roots.
    #[arg(long)]
    pub ad_ca: Option<PathBuf>,
    /// The account that reads the directory (needs "Replicating Directory Changes").
    #[arg(long)]
    pub ad_user: Option<String>,
    /// The environment variable that holds that account's password (never a flag: shells log
    /// flags); on a terminal without it, the password is asked for without echo.
    #[arg(long, default_value = "ISTHMUS_AD_PASSWORD")]
    pub ad_password_env: String,
    /// Only these OUs (repeat); default: the whole domain.
    #[arg(long)]
    pub ou: Vec<String>,
    /// The tenant's base URL, e.g. `https://tenant.example:8443`.
    #[arg(long)]
    pub tenant_url: Option<String>,
    /// The tenant (its id or a domain).
    #[arg(long)]
    pub tenant: Option<String>,
    /// The sync app's client id (role OnPremDirectorySynchronization.ReadWrite.All).
    #[arg(long)]
    pub client_id: Option<String>,
    /// The environment variable that holds the sync app's secret (asked for on a terminal).
    #[arg(long, default_value = "ISTHMUS_CLIENT_SECRET")]
    pub client_secret_env: String,
    /// The CA of a self-hosted tenant's HTTPS certificate (PEM).
    #[arg(long)]
    pub tenant_ca: Option<PathBuf>,
    /// The SQLite database the configuration names.
    #[arg(long, default_value = "isthmus.db")]
    pub db: PathBuf,
    /// Keep the sync state in PostgreSQL at this URL instead of SQLite (`postgresql://user@host/db`;
    /// a password belongs in ~/.pgpass, not here). Checked before the file is written.
    #[arg(long, conflicts_with = "db")]
    pub postgres: Option<String>,
    /// Custom settings instead of express: choose the source anchor and the UPN attribute
    /// (asked for on a terminal, or --source-anchor / --upn-attribute).
    #[arg(long)]
    pub custom: bool,
    /// The source anchor: `auto` (the tenant's, else mS-DS-ConsistencyGuid when no object uses
    /// it yet, else objectGUID), `mS-DS-ConsistencyGuid`, `objectGUID` or an attribute.
    #[arg(long, default_value = "auto")]
    pub source_anchor: String,
    /// The attribute the cloud userPrincipalName comes from (alternate login ID: `mail`).
    #[arg(long, default_value = "userPrincipalName")]
    pub upn_attribute: String,
    /// How users sign in to the cloud: `password-hash-sync` (their password hashes are synced;
    /// Entra's express choice) or `pass-through` (checked on-premises by pass-through agents;
    /// hash sync can stay on as the fallback with --password-hash-sync-backup). Asked on a terminal.
    #[arg(long, value_parser = ["password-hash-sync", "pass-through"])]
    pub sign_in: Option<String>,
    /// With --sign-in pass-through: sync password hashes too, so the tenant can fall back to
    /// them when no agent answers (`isthmus pta fallback`).
    #[arg(long)]
    pub password_hash_sync_backup: bool,
}

fn check(ok: bool, line: &str) -> bool {
    println!("  {} {line}", if ok { "ok  " } else { "FAIL" });
    ok
}

fn warn(line: &str) {
    println!("  warn {line}");
}

fn interactive() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdin())
}

/// `given`, or the answer to `question` on a terminal (`default` on an empty answer).
fn ask(given: &Option<String>, flag: &str, question: &str, default: Option<&str>) -> anyhow::Result<String> {
    if let Some(value) = given {
        return Ok(value.clone());
    }
    anyhow::ensure!(interactive(), "give --{flag} (or run isthmus init on a terminal to be asked)");
    let hint = default.map(|default| format!(" [{default}]")).unwrap_or_default();
    loop {
        print!("{question}{hint}: ");
        std::io::Write::flush(&mut std::io::stdout())?;
        let mut line = String::new();
        anyhow::ensure!(std::io::stdin().read_line(&mut line)? > 0, "no answer for --{flag}");
        let answer = line.trim();
        match (answer.is_empty(), default) {
            (false, _) => return Ok(answer.to_string()),
            (true, Some(default)) => return Ok(default.to_string()),
            (true, None) => println!("  (an answer is needed)"),
        }
    }
}

/// A secret from `env`, or asked for without echo on a terminal.
fn secret(env: &str, question: &str) -> anyhow::Result<zeroize::Zeroizing<String>> {
    if let Ok(value) = std::env::var(env) {
        return Ok(zeroize::Zeroizing::new(value));
    }
    anyhow::ensure!(interactive(), "set {env} ({question}); secrets are never flags");
    Ok(zeroize::Zeroizing::new(rpassword::prompt_password(format!("{question}: ")).context("read the secret")?))
}

/// Every value init needs, given or asked.
struct Answers {
    ad_host: String,
    ad_user: String,
    tenant_url: String,
    tenant: String,
    client_id: String,
    source_anchor: String,
    upn_attribute: String,
    sign_in: String,
}

/// Runs the checks and writes the file.
pub async fn run(args: &InitArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.config.exists(), "{} already exists; remove it or give --config another path", args.config.display());
    if interactive() && (args.ad_host.is_none() || args.tenant_url.is_none()) {
        println!(
            "isthmus init: a sync server for one Active Directory forest and a tenant ({} settings).",
            if args.custom { "custom" } else { "express" }
        );
    }
    let ad_host = ask(&args.ad_host, "ad-host", "Domain controller (host, or host:port when not 636)", None)?;
    let ad_user = ask(&args.ad_user, "ad-user", "Account that reads the directory (user@domain or its DN)", None)?;
    let ad_password = secret(&args.ad_password_env, "Its password")?;
    let tenant_url = ask(&args.tenant_url, "tenant-url", "Tenant URL (https://…)", None)?;
    let tenant = ask(&args.tenant, "tenant", "Tenant (its id or one of its domains)", None)?;
    let client_id = ask(&args.client_id, "client-id", "Sync app's client id", None)?;
    let client_secret = secret(&args.client_secret_env, "Its secret")?;
    let (source_anchor, upn_attribute) = if args.custom && interactive() && args.source_anchor == "auto" {
        (
            ask(&None, "source-anchor", "Source anchor: auto, mS-DS-ConsistencyGuid, objectGUID or an attribute", Some("auto"))?,
            ask(&None, "upn-attribute", "Attribute for the cloud userPrincipalName", Some(&args.upn_attribute))?,
        )
    } else {
        (args.source_anchor.clone(), args.upn_attribute.clone())
    };
    let sign_in = match &args.sign_in {
        Some(method) => method.clone(),
        None if interactive() => loop {
            let answer = ask(&None, "sign-in", "Sign-in method: password-hash-sync or pass-through", Some("password-hash-sync"))?;
            if answer == "password-hash-sync" || answer == "pass-through" {
                break answer;
            }
            println!("  (password-hash-sync or pass-through)");
        },
        None => "password-hash-sync".to_string(),
    };
    if source_anchor != "auto" {
        sync_rules::defaults::SourceAnchor::from_name(&source_anchor).map_err(|why| anyhow::anyhow!("--source-anchor: {why}"))?;
    }
    let answers = Answers { ad_host, ad_user, tenant_url, tenant, client_id, source_anchor, upn_attribute, sign_in };
    let ad_id = "ad".to_string();
    let bind = connector_ldap::Bind::Simple { dn: answers.ad_user.clone(), password: ad_password.clone() };
    let mut ad = connector_ldap::LdapConfig::new(&ad_id, connector_ldap::Flavour::ActiveDirectory, &answers.ad_host, bind);
    let ad_ca = existing_file(args.ad_ca.as_deref(), "--ad-ca")?;
    let tenant_ca = existing_file(args.tenant_ca.as_deref(), "--tenant-ca")?;
    ad.ca_file = ad_ca.clone();
    ad.include_ous = args.ou.clone();
    let graph = connector_graph::GraphConfig {
        id: "tenant".into(),
        authority: answers.tenant_url.trim_end_matches('/').to_string(),
        graph: format!("{}/v1.0", answers.tenant_url.trim_end_matches('/')),
        tenant: answers.tenant.clone(),
        client_id: answers.client_id.clone(),
        client_secret: client_secret.clone(),
        ca_file: tenant_ca.clone(),
        page_size: 200,
        attempts: 3,
    };

    println!("Checking the on-premises directory at {}:", answers.ad_host);
    let mut failed = false;
    let mut domain = None;
    match connector_ldap::open(ad.clone()).await {
        Ok(connector) => {
            check(true, &format!("LDAPS, the CA and the bind as {} work", answers.ad_user));
            domain = connector.info.parameters.get("Domain.FQDN").map(ToString::to_string);
            match connector.import.full_page(None).await {
                Ok(page) => {
                    check(true, &format!("DirSync and reading objects work ({} on the first page)", page.changes.len()));
                }
                Err(err) => failed |= !check(false, &format!("reading the directory: {err}")),
            }
        }
        Err(ConnectorError::Config(why)) => failed |= !check(false, &why),
        Err(err) => failed |= !check(false, &format!("cannot reach {}: {err}", answers.ad_host)),
    }
    let suffixes = if domain.is_some() && !failed {
        match connector_ldap::upn_suffixes(ad.clone()).await {
            Ok(found) => Some(found),
            Err(err) => {
                failed |= !check(false, &format!("reading the users' UPN suffixes: {err}"));
                None
            }
        }
    } else {
        None
    };

    println!("Checking the tenant at {}:", answers.tenant_url);
    let mut token = None;
    match connector_graph::open(graph.clone()).await {
        Ok(_) => {
            check(true, &format!("the app {} signs in", answers.client_id));
            token = connector_graph::app_token(&graph).await.ok();
        }
        Err(err) => failed |= !check(false, &err.to_string()),
    }
    if let Some(token) = &token {
        let roles = token_roles(token);
        if roles.iter().any(|role| role == tenant::SYNC_ROLE) {
            check(true, &format!("the app holds {}", tenant::SYNC_ROLE));
        } else {
            failed |= !check(
                false,
                &format!(
                    "the app {} does not hold {} (it holds: {}); grant it, or make the sync app with \
                     `isthmus tenant app create --name \"Isthmus sync\" --role {} --secret-file sync-app.txt`",
                    answers.client_id,
                    tenant::SYNC_ROLE,
                    if roles.is_empty() { "no roles".to_string() } else { roles.join(", ") },
                    tenant::SYNC_ROLE
                ),
            );
        }
        if let Some(broad) = roles.iter().find(|role| role.ends_with(".ReadWrite.All") && role.as_str() != tenant::SYNC_ROLE) {
            warn(&format!("the app also holds {broad}: the sync needs only {}; a leaked secret would give more away", tenant::SYNC_ROLE));
        }
    }
    if !failed && let Some(found) = &suffixes {
        match tenant_domains(&graph, token.as_deref().map(String::as_str).unwrap_or_default()).await {
            Ok(domains) => {
                println!("UPN suffixes in use on-premises (only a verified suffix keeps its users' UPNs in the cloud):");
                for (suffix, users) in &found.suffixes {
                    match domains.iter().find(|(name, _)| name.eq_ignore_ascii_case(suffix)) {
                        Some((_, true)) => {
                            check(true, &format!("{suffix}: {users} user(s), verified"));
                        }
                        Some((_, false)) => warn(&format!(
                            "{suffix}: {users} user(s), added but NOT verified (`isthmus tenant domain verify {suffix}`); they get the initial domain until it is"
                        )),
                        None => warn(&format!(
                            "{suffix}: {users} user(s), not a domain of the tenant (`isthmus tenant domain add {suffix}`, then verify); they get the initial domain until it is"
                        )),
                    }
                }
                if found.without_upn > 0 {
                    warn(&format!("{} user(s) have no userPrincipalName: they get one in the initial domain", found.without_upn));
                }
            }
            Err(err) => failed |= !check(false, &format!("reading the tenant's domains: {err}")),
        }
    }
    if answers.sign_in == "pass-through" {
        println!(
            "Sign-in: pass-through authentication{}.",
            if args.password_hash_sync_backup { ", password hashes synced as the fallback" } else { "" }
        );
    } else {
        println!("Sign-in: password hash sync (hashes of hashes, transformed on this server, every 2 minutes).");
    }
    // The source anchor: the tenant's, if a sync server stored one; else the consistency GUID
    // unless something already uses it; else objectGUID (Entra Connect's automatic choice).
    let mut anchor = answers.source_anchor.clone();
    if !failed {
        println!("Choosing the source anchor:");
        let held = match connector_graph::tenant_anchor(&graph).await {
            Ok(held) => held,
            Err(err) => {
                failed |= !check(false, &format!("reading the tenant's sync settings: {err}"));
                None
            }
        };
        let probe = match connector_ldap::probe_anchor(ad.clone()).await {
            Ok(probe) => Some(probe),
            Err(err) => {
                failed |= !check(false, &format!("asking the forest about mS-DS-ConsistencyGuid: {err}"));
                None
            }
        };
        match (&held, anchor.as_str()) {
            (Some(held), "auto") => {
                check(true, &format!("the tenant's objects are anchored on {held}: this server uses it too"));
                anchor = held.clone();
            }
            (Some(held), chosen) if !held.eq_ignore_ascii_case(chosen) => {
                failed |= !check(false, &format!("the tenant's objects are anchored on {held}, not {chosen}: use --source-anchor {held}"));
            }
            (None, "auto") => {
                if probe.as_ref().is_some_and(|probe| probe.consistency_guid_in_use) {
                    warn("some objects already have an mS-DS-ConsistencyGuid (another tool uses it): anchoring on objectGUID");
                    anchor = "objectGUID".into();
                } else {
                    check(true, "no object uses mS-DS-ConsistencyGuid yet: anchoring on it (objectGUID written back)");
                    anchor = "mS-DS-ConsistencyGuid".into();
                }
            }
            _ => {
                check(true, &format!("anchoring on {anchor} as asked"));
            }
        };
        if anchor.eq_ignore_ascii_case("mS-DS-ConsistencyGuid") {
            match probe.and_then(|probe| probe.can_write_consistency_guid) {
                Some(true) => {
                    check(true, &format!("{} may write mS-DS-ConsistencyGuid (the anchor's writeback)", answers.ad_user));
                }
                Some(false) => {
                    failed |= !check(
                        false,
                        &format!(
                            "{} may not write mS-DS-ConsistencyGuid on users: grant it \"Write mS-DS-ConsistencyGuid\" on the synced OUs, or choose --source-anchor objectGUID",
                            answers.ad_user
                        ),
                    )
                }
                None => warn("no user in scope to check the mS-DS-ConsistencyGuid write permission on"),
            }
        }
    }
    if let Some(url) = &args.postgres {
        println!("Checking the sync store:");
        let store = crate::config::StoreConfig { sqlite: None, postgres: Some(url.clone()) };
        match store.open(true).await {
            Ok(_) => {
                check(true, "PostgreSQL answers and the sync schema is in place");
            }
            Err(err) => failed |= !check(false, &format!("{err:#}")),
        }
    }
    anyhow::ensure!(!failed, "nothing written: fix what failed above and run init again");

    let db = std::path::absolute(&args.db).with_context(|| format!("--db {}", args.db.display()))?;
    let paths = Paths { db, ad_ca, tenant_ca };
    let text = render(args, &answers, &paths, &anchor, &ad_id, &ad_password, &client_secret);
    write_private(&args.config, &text).with_context(|| format!("write {}", args.config.display()))?;
    println!(
        "Wrote {} (mode 0600): {} settings — one forest, Entra Connect's default rules, {anchor} as the source anchor, {} as the UPN.",
        args.config.display(),
        if args.custom { "custom" } else { "express" },
        answers.upn_attribute
    );
    println!("Next: isthmus sync run --config {} --full   (or run `isthmus sync serve` as a service)", args.config.display());
    if answers.sign_in == "pass-through" {
        println!(
            "Then, for pass-through sign-in: `isthmus pta-agent register` and `isthmus pta-agent run` on (at least) one server near the DCs, \
             and `isthmus tenant domain set-authentication <domain> pass-through` for each verified domain."
        );
    }
    Ok(())
}

/// The tenant's domains with whether each is verified, read with the sync app's `token`.
async fn tenant_domains(graph: &connector_graph::GraphConfig, token: &str) -> anyhow::Result<Vec<(String, bool)>> {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(ca) = &graph.ca_file {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?).tls_built_in_root_certs(false);
    }
    let http = builder.build()?;
    let domains: serde_json::Value =
        http.get(format!("{}/domains", graph.graph)).bearer_auth(token).send().await?.error_for_status()?.json().await?;
    Ok(domains["value"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|domain| Some((domain["id"].as_str()?.to_string(), domain["isVerified"] == true)))
        .collect())
}

/// The application roles an access token carries (its `roles` claim). The token is the
/// tenant's answer to this app, so it is read, not verified: the tenant checks it on every call.
fn token_roles(token: &str) -> Vec<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')) else { return Vec::new() };
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    claims["roles"].as_array().into_iter().flatten().filter_map(|role| role.as_str().map(str::to_string)).collect()
}

/// An existing file (a CA) named by `flag`, made absolute: the configuration file resolves
/// relative paths against its own folder, not the folder init ran in.
fn existing_file(path: Option<&std::path::Path>, flag: &str) -> anyhow::Result<Option<PathBuf>> {
    path.map(|path| std::fs::canonicalize(path).with_context(|| format!("{flag} {}", path.display()))).transpose()
}

/// The file paths the configuration names, absolute.
struct Paths {
    db: PathBuf,
    ad_ca: Option<PathBuf>,
    tenant_ca: Option<PathBuf>,
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

fn render(args: &InitArgs, answers: &Answers, paths: &Paths, anchor: &str, ad_id: &str, ad_password: &str, client_secret: &str) -> String {
    let mut text = format!(
        "# Written by isthmus init.\n[store]\n{}\n\n[sync]\ndefault_rules = true\nsource_anchor = {}\nupn_attribute = {}\n\n",
        match &args.postgres {
            Some(url) => format!("postgres = {}", quote(url)),
            None => format!("sqlite = {}", quote(&paths.db.display().to_string())),
        },
        quote(anchor),
        quote(&answers.upn_attribute)
    );
    text.push_str(&format!("[[connector]]\nid = {}\nflavour = \"active-directory\"\nhost = {}\n", quote(ad_id), quote(&answers.ad_host)));
    if let Some(ca) = &paths.ad_ca {
        text.push_str(&format!("ca_file = {}\n", quote(&ca.display().to_string())));
    }
    if answers.sign_in == "password-hash-sync" || args.password_hash_sync_backup {
        text.push_str("password_hash_sync = true\n");
    }
    if !args.ou.is_empty() {
        let ous: Vec<String> = args.ou.iter().map(|ou| quote(ou)).collect();
        text.push_str(&format!("include_ous = [{}]\n", ous.join(", ")));
    }
    text.push_str(&format!(
        "[connector.bind]\nmethod = \"simple\"\ndn = {}\npassword = {}\n\n",
        quote(&answers.ad_user),
        quote(ad_password)
    ));
    let base = answers.tenant_url.trim_end_matches('/');
    text.push_str(&format!(
        "[[graph]]\nid = \"tenant\"\nauthority = {}\ngraph = {}\ntenant = {}\nclient_id = {}\nclient_secret = {}\n",
        quote(base),
        quote(&format!("{base}/v1.0")),
        quote(&answers.tenant),
        quote(&answers.client_id),
        quote(client_secret)
    ));
    if let Some(ca) = &paths.tenant_ca {
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
