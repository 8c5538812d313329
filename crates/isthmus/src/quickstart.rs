//! `isthmus quickstart`: a self-contained demonstration of the whole sync path with nothing but
//! this repository — a generated AD-shaped forest in memory, the out-of-box rules, the real
//! runner and a SQLite store on disk, syncing over HTTPS into an embedded tenant (the real
//! tenant service in this process, its own state next to the database) through the Graph
//! connector. Then a few on-premises changes and a delta cycle.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use connector_api::Role;
use connector_memory::MemoryDirectory;
use model::{AttrChange, AttrValue, ConnectorId};
use store::Store;
use store_sqlite::SqliteStore;
use sync_runner::{Runner, RunnerConfig};

/// The AD connector's id in the quickstart.
pub const AD: &str = "corp.example.test";
/// The cloud connector's id in the quickstart.
pub const CLOUD: &str = "tenant";

/// Options of the quickstart.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// SQLite database to create (it must not exist; the operator commands can read it afterwards).
    #[arg(long, default_value = "isthmus-quickstart.db")]
    pub db: std::path::PathBuf,
    /// Number of generated people.
    #[arg(long, default_value_t = 2000)]
    pub users: usize,
    /// Number of generated groups.
    #[arg(long, default_value_t = 100)]
    pub groups: usize,
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.db.exists(), "{} already exists; remove it or pass --db with a new path", args.db.display());
    println!(
        "Isthmus quickstart: {} people, {} groups, 50 contacts from a generated forest into a cloud directory",
        args.users, args.groups
    );
    let ad = MemoryDirectory::new();
    let directory =
        dirgen::generate(&dirgen::GenConfig { users: args.users, groups: args.groups, contacts: 50, domains: vec![AD.into()], seed: 42 });
    for (dn, object_type, attributes) in dirgen::ad_objects(&directory, "DC=corp,DC=example,DC=test", 42) {
        ad.put(&dn, &object_type, attributes);
    }
    let tenant_dir = args.db.with_extension("tenant");
    anyhow::ensure!(!tenant_dir.exists(), "{} already exists; remove it or pass --db with a new path", tenant_dir.display());
    let (graph, _stop) = embedded_tenant(&tenant_dir).await?;
    let runner = build_runner(&args.db, &ad, graph).await?;

    let whole = Instant::now();
    let mut all_reports = Vec::new();
    println!("\n== initial cycle (full import, full sync, export, confirming import)");
    let started = Instant::now();
    let reports = runner.run_cycle(true).await.context("initial cycle")?;
    crate::sync::print_reports(&reports);
    all_reports.extend(reports);
    // Group members that point at users created in the same cycle follow in the next one.
    let reports = runner.run_cycle(false).await.context("second cycle")?;
    crate::sync::print_reports(&reports);
    all_reports.extend(reports);
    println!("   {:.1} s; the cloud directory now holds {} objects", started.elapsed().as_secs_f64(), cloud_objects(&runner).await?);

    println!("\n== on-premises changes: a new title, a disabled account, a deleted account, a new hire");
    let people: Vec<_> = ad.objects().into_iter().filter(|(_, _, object_type, _)| object_type == "user").collect();
    if people.len() >= 3 {
        ad.modify(&people[0].0, &[AttrChange::Replace("title".into(), vec![AttrValue::string("Chief Demo Officer")])]);
        ad.modify(&people[1].0, &[AttrChange::Replace("userAccountControl".into(), vec![AttrValue::Integer(514)])]);
        ad.delete(&people[2].0);
    }
    let mut hire = dirgen::ad_objects(
        &dirgen::generate(&dirgen::GenConfig { users: 1, groups: 0, contacts: 0, domains: vec![AD.into()], seed: 4242 }),
        "DC=corp,DC=example,DC=test",
        4242,
    );
    if let Some((dn, object_type, attributes)) = hire.pop() {
        ad.put(&dn.replace("CN=", "CN=new-"), &object_type, attributes);
    }
    let started = Instant::now();
    let reports = runner.run_cycle(false).await.context("delta cycle")?;
    crate::sync::print_reports(&reports);
    println!("   {:.1} s", started.elapsed().as_secs_f64());
    all_reports.extend(reports);

    if let Some((_, dn, _, _)) = people.first() {
        show_cloud_object(&runner, dn).await?;
    }
    let sum = |what: fn(&sync_runner::StepReport) -> u64| all_reports.iter().map(what).sum::<u64>();
    let stopped = all_reports.iter().filter(|report| report.status.stopped()).count();
    println!("\n== summary");
    println!("   forest      {} people, {} groups, 50 contacts (generated, seed 42)", args.users, args.groups);
    println!("   cloud       {} objects in the tenant", cloud_objects(&runner).await?);
    println!(
        "   steps       {} run: {} adds, {} updates, {} deletes, {} object errors, {} stopped",
        all_reports.len(),
        sum(|report| report.counts.adds),
        sum(|report| report.counts.updates),
        sum(|report| report.counts.deletes),
        sum(|report| report.counts.errors),
        stopped
    );
    println!("   time        {:.1} s", whole.elapsed().as_secs_f64());
    println!("\nThe database is {}. Look around:", args.db.display());
    println!("  isthmus history --db {}", args.db.display());
    println!("  isthmus plan --db {}", args.db.display());
    println!("  isthmus cs search --db {} --connector {CLOUD} --dn-contains {{", args.db.display());
    println!("  isthmus mv show --db {} 1", args.db.display());
    Ok(())
}

/// Starts the tenant in this process on a free loopback port (state in `dir`), with a verified
/// `corp.example.test` (an administrator override: there is no DNS here) and an app for the
/// sync service; returns the Graph connector's settings and what keeps the tenant running.
async fn embedded_tenant(dir: &Path) -> anyhow::Result<(connector_graph::GraphConfig, tokio::sync::oneshot::Sender<()>)> {
    let config = tenant::TenantConfig::new(dir.to_path_buf(), vec!["127.0.0.1:0".parse()?]);
    let (tenant, _) = tenant::Tenant::open(config).await.context("start the embedded tenant")?;
    tenant.verify_domain_by_override(AD, "isthmus quickstart").await?;
    let app = tenant.register_app("Isthmus sync", &[tenant::SYNC_ROLE]).await?;
    let (domain, ca) = (tenant.initial_domain().to_string(), tenant.ca_pem.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, serve) = tenant
        .bind(async move {
            let _ = stopped.await;
        })
        .await?;
    tokio::spawn(serve);
    let base = format!("https://{}", bound.first().context("the tenant listens nowhere")?);
    println!("embedded tenant {domain} at {base} (state in {})", dir.display());
    let graph = connector_graph::GraphConfig {
        id: CLOUD.into(),
        authority: base.clone(),
        graph: format!("{base}/v1.0"),
        tenant: domain,
        client_id: app.client_id.clone(),
        client_secret: app.client_secret.clone(),
        ca_file: Some(ca),
        page_size: 500,
        attempts: 5,
    };
    Ok((graph, stop))
}

/// Objects the tenant holds for the sync (confirmed cloud objects).
async fn cloud_objects(runner: &Runner<SqliteStore>) -> anyhow::Result<usize> {
    let objects = runner.store().cs_list(&ConnectorId(CLOUD.into()), &store::CsQuery::default()).await?;
    Ok(objects.iter().filter(|cs| cs.anchor.is_some()).count())
}

async fn build_runner(db: &Path, ad: &MemoryDirectory, cloud: connector_graph::GraphConfig) -> anyhow::Result<Runner<SqliteStore>> {
    let store = SqliteStore::open(db).with_context(|| format!("open {}", db.display()))?;
    store.migrate().await.context("create the database schema")?;
    let rules = sync_rules::defaults::ad_to_cloud(&[AD], CLOUD).map_err(|errors| anyhow::anyhow!("default rules: {errors:?}"))?;
    let mut runner = Runner::new(store, rules, RunnerConfig::default());
    runner.set_progress(std::sync::Arc::new(crate::progress::Bars::default()));
    let mut ad_connector = ad.connector(AD, Role::Source, 500);
    for (name, value) in [
        ("Domain.FQDN", AD),
        ("Domain.Netbios", "CORP"),
        ("Domain.LDAP", "DC=corp,DC=example,DC=test"),
        ("Forest.FQDN", AD),
        ("Forest.Netbios", "CORP"),
        ("Forest.LDAP", "DC=corp,DC=example,DC=test"),
    ] {
        ad_connector.info.parameters.insert(name.into(), sync_expr::Value::str(value));
    }
    runner.add_connector(ad_connector);
    runner.add_connector(connector_graph::open(cloud).await.context("connect to the embedded tenant")?);
    Ok(runner)
}

async fn show_cloud_object(runner: &Runner<SqliteStore>, ad_dn: &str) -> anyhow::Result<()> {
    let store = runner.store();
    let Some(cs) = store.cs_by_dn(&ConnectorId(AD.into()), ad_dn).await? else { return Ok(()) };
    let Some(mv_id) = cs.link else { return Ok(()) };
    println!("\n== {ad_dn} in the cloud");
    for linked in store.cs_linked_to(mv_id).await?.iter().filter(|cs| cs.connector.0 == CLOUD) {
        println!("   {} ({})", linked.dn, linked.object_type);
        for (name, values) in linked.attributes.iter() {
            let shown: Vec<String> = values.iter().map(ToString::to_string).collect();
            println!("     {name:<30} {}", shown.join("; "));
        }
    }
    Ok(())
}
