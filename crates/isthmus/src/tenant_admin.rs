//! `isthmus tenant app list|delete` and `isthmus tenant domain …`: an administrator's calls to
//! the tenant's Graph API (through the admin app), printed for people or as JSON.

use anyhow::Context;
use serde_json::{Value, json};

use crate::pta_agent::TenantArgs;

/// `isthmus tenant domain …`.
#[derive(Debug, clap::Subcommand)]
pub enum DomainCommand {
    /// Add a custom domain (unverified); prints the DNS TXT record that proves it is yours.
    Add {
        #[command(flatten)]
        tenant: TenantArgs,
        /// The domain, e.g. corp.example.
        name: String,
    },
    /// Verify a domain: the tenant looks up its TXT record (or a lab override given to `tenant serve`).
    Verify {
        #[command(flatten)]
        tenant: TenantArgs,
        /// The domain.
        name: String,
    },
    /// Show the tenant's domains (or one) with their verification and sign-in method.
    Show {
        #[command(flatten)]
        tenant: TenantArgs,
        /// Only this domain.
        name: Option<String>,
        /// Print JSON (Graph's domain objects) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// How the domain's synced users' passwords are checked: `managed` (synced hashes) or
    /// `pass-through` (on-premises, through the pass-through agents).
    SetAuthentication {
        #[command(flatten)]
        tenant: TenantArgs,
        /// The domain.
        name: String,
        /// managed or pass-through.
        #[arg(value_parser = ["managed", "pass-through"])]
        method: String,
    },
}

/// `isthmus tenant app list`.
#[derive(Debug, clap::Args)]
pub struct AppListArgs {
    #[command(flatten)]
    pub tenant: TenantArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `isthmus tenant app delete`.
#[derive(Debug, clap::Args)]
pub struct AppDeleteArgs {
    #[command(flatten)]
    pub tenant: TenantArgs,
    /// The app's client id (appId).
    pub app_id: String,
}

/// The admin app signed in to the tenant: Graph calls as it.
pub(crate) struct Admin {
    tenant: pta_agent::TenantEndpoint,
    token: zeroize::Zeroizing<String>,
}

impl Admin {
    pub(crate) async fn sign_in(args: &TenantArgs) -> anyhow::Result<Admin> {
        let (tenant, token) = crate::pta_agent::admin_token(args).await?;
        Ok(Admin { tenant, token })
    }

    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        pta_agent::admin_call(&self.tenant, &self.token, method, path, body).await.with_context(|| format!("the tenant refused {path}"))
    }
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or("-").to_string()
}

/// `isthmus tenant app list`: every registration with its kind and the Graph roles it holds.
pub async fn app_list(args: &AppListArgs) -> anyhow::Result<()> {
    let admin = Admin::sign_in(&args.tenant).await?;
    let apps = admin.call(reqwest::Method::GET, "/v1.0/applications", None).await?;
    let principals = admin.call(reqwest::Method::GET, "/v1.0/servicePrincipals", None).await?;
    let graph = principals["value"].as_array().into_iter().flatten().find(|sp| sp["appId"] == tenant::GRAPH_APP_ID).cloned();
    let grants = match &graph {
        Some(graph) => {
            admin.call(reqwest::Method::GET, &format!("/v1.0/servicePrincipals/{}/appRoleAssignedTo", text(graph, "id")), None).await?
        }
        None => json!({"value": []}),
    };
    let role_name = |id: &Value| {
        graph
            .as_ref()
            .and_then(|graph| graph["appRoles"].as_array()?.iter().find(|role| &role["id"] == id)?["value"].as_str().map(str::to_string))
    };
    let mut rows = Vec::new();
    for app in apps["value"].as_array().into_iter().flatten() {
        let principal = principals["value"].as_array().into_iter().flatten().find(|sp| sp["appId"] == app["appId"]);
        let roles: Vec<String> = principal
            .map(|principal| {
                grants["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|grant| grant["principalId"] == principal["id"])
                    .filter_map(|grant| role_name(&grant["appRoleId"]))
                    .collect()
            })
            .unwrap_or_default();
        let public = app["isFallbackPublicClient"] == true;
        let secrets = app["passwordCredentials"].as_array().map_or(0, Vec::len);
        rows.push(
            json!({"appId": app["appId"], "displayName": app["displayName"], "publicClient": public, "secrets": secrets, "roles": roles}),
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json!({"value": rows}))?);
        return Ok(());
    }
    println!("{:<38} {:<32} {:<13} {:>7}  roles", "appId", "name", "kind", "secrets");
    for row in &rows {
        let roles: Vec<&str> = row["roles"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!(
            "{:<38} {:<32} {:<13} {:>7}  {}",
            text(row, "appId"),
            text(row, "displayName"),
            if row["publicClient"] == true { "public" } else { "confidential" },
            row["secrets"],
            if roles.is_empty() { "-".to_string() } else { roles.join(", ") }
        );
    }
    println!("{} app(s)", rows.len());
    Ok(())
}

/// `isthmus tenant app delete`: the registration, its secrets, grants and refresh tokens.
pub async fn app_delete(args: &AppDeleteArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.app_id.eq_ignore_ascii_case(&args.tenant.client_id),
        "{} is the app this command signs in as; delete it with another administrator app",
        args.app_id
    );
    let admin = Admin::sign_in(&args.tenant).await?;
    admin.call(reqwest::Method::DELETE, &format!("/v1.0/applications/{}", args.app_id), None).await?;
    println!("deleted app {} (its secrets, role grants and refresh tokens stop working now)", args.app_id);
    Ok(())
}

fn domain_line(domain: &Value) {
    println!(
        "{:<40} {:<9} {:<10} {:<17} {}",
        text(domain, "id"),
        if domain["isVerified"] == true { "verified" } else { "unverified" },
        text(domain, "authenticationType"),
        text(domain, "passwordValidation"),
        if domain["isInitial"] == true { "initial" } else { "" }
    );
}

/// `isthmus tenant domain …`.
pub async fn domain(command: &DomainCommand) -> anyhow::Result<()> {
    match command {
        DomainCommand::Add { tenant, name } => {
            let admin = Admin::sign_in(tenant).await?;
            admin.call(reqwest::Method::POST, "/v1.0/domains", Some(json!({"id": name}))).await?;
            let records = admin.call(reqwest::Method::GET, &format!("/v1.0/domains/{name}/verificationDnsRecords"), None).await?;
            println!("added {name} (unverified). To verify it, publish this DNS record, then run `isthmus tenant domain verify {name}`:");
            for record in records["value"].as_array().into_iter().flatten() {
                println!("  {}  TXT  \"{}\"  (TTL {})", text(record, "label"), text(record, "text"), record["ttl"]);
            }
        }
        DomainCommand::Verify { tenant, name } => {
            let admin = Admin::sign_in(tenant).await?;
            let domain = admin.call(reqwest::Method::POST, &format!("/v1.0/domains/{name}/verify"), None).await?;
            anyhow::ensure!(domain["isVerified"] == true, "{name} is still unverified");
            println!("{name} is verified: users' UPNs may use it");
        }
        DomainCommand::Show { tenant, name, json } => {
            let admin = Admin::sign_in(tenant).await?;
            let domains: Vec<Value> = match name {
                Some(name) => vec![admin.call(reqwest::Method::GET, &format!("/v1.0/domains/{name}"), None).await?],
                None => admin.call(reqwest::Method::GET, "/v1.0/domains", None).await?["value"].as_array().cloned().unwrap_or_default(),
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&json!({"value": domains}))?);
                return Ok(());
            }
            println!("{:<40} {:<9} {:<10} {:<17}", "domain", "state", "type", "passwords");
            domains.iter().for_each(domain_line);
        }
        DomainCommand::SetAuthentication { tenant, name, method } => {
            let admin = Admin::sign_in(tenant).await?;
            let pass_through = method == "pass-through";
            if pass_through {
                // Entra refuses to turn pass-through on without an agent: sign-ins would fail.
                let agents = admin.call(reqwest::Method::GET, "/isthmus/v1/passThroughAuthentication/agents", None).await?;
                let active = agents["value"].as_array().into_iter().flatten().filter(|agent| agent["status"] == "active").count();
                anyhow::ensure!(
                    active > 0,
                    "no active pass-through agent: register and run one first (`isthmus pta-agent register`, `isthmus pta-agent run`), \
                     or this domain's users could not sign in"
                );
            }
            let body = json!({
                "authenticationType": "Managed",
                "passwordValidation": if pass_through { "PassThrough" } else { "PasswordHashSync" },
            });
            admin.call(reqwest::Method::PATCH, &format!("/v1.0/domains/{name}"), Some(body)).await?;
            let domain = admin.call(reqwest::Method::GET, &format!("/v1.0/domains/{name}"), None).await?;
            domain_line(&domain);
        }
    }
    Ok(())
}

/// `isthmus health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub tenant: TenantArgs,
    /// Resolved alerts of the last 90 days too.
    #[arg(long)]
    pub all: bool,
    /// Print the tenant's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `isthmus health`: the open alerts (evaluated by the tenant now), one line each with its
/// remedy; `--all` adds the resolved ones. Exits 0 whatever the alerts (a monitor reads them).
pub async fn health(args: &HealthArgs) -> anyhow::Result<()> {
    let admin = Admin::sign_in(&args.tenant).await?;
    let path = if args.all { "/isthmus/v1/health/alerts?state=all" } else { "/isthmus/v1/health/alerts" };
    let alerts = admin.call(reqwest::Method::GET, path, None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&alerts)?);
        return Ok(());
    }
    let listed = alerts["value"].as_array().cloned().unwrap_or_default();
    if listed.is_empty() {
        println!("no {}alerts", if args.all { "" } else { "open " });
        return Ok(());
    }
    for alert in &listed {
        println!(
            "{:<8} {:<8} {}  (since {}{})",
            text(alert, "state"),
            text(alert, "severity"),
            text(alert, "title"),
            text(alert, "raisedDateTime"),
            alert["resolvedDateTime"].as_str().map(|at| format!(", resolved {at}")).unwrap_or_default()
        );
        if alert["state"] == "open" {
            if let Some(detail) = alert["detail"].as_str().filter(|detail| !detail.is_empty()) {
                println!("         {detail}");
            }
            println!("         what to do: {}", text(alert, "remedy"));
        }
    }
    Ok(())
}
