//! `cargo xtask bench-sync`: a full sync cycle (full import, full sync, export, confirming
//! import) of a generated forest from an in-memory AD-shaped directory into an in-memory cloud
//! directory, through the real runner, the default rules and a real store. Prints objects per
//! second per step and the process's peak RSS. Build with `--release`.

use std::time::Instant;

use anyhow::Context;
use connector_api::Role;
use connector_memory::MemoryDirectory;
use store::{CsQuery, Store};
use sync_runner::{Runner, RunnerConfig, Step};

/// Entra's limit on a synced group's members (`Count([member]) >= 250000` in the default rules).
const GROUP_MEMBER_LIMIT: usize = 250_000;

/// Options of `bench-sync`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// People.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Groups.
    #[arg(long, default_value_t = 1_000)]
    groups: usize,
    /// `sqlite` (a file in a temp folder) or `postgres` (a private cluster from the test kit).
    #[arg(long, default_value = "sqlite")]
    store: String,
}

/// Runs the benchmark.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match args.store.as_str() {
            "sqlite" => {
                let dir = tempfile_dir()?;
                let store = store_sqlite::SqliteStore::open(&dir.join("bench.db"))?;
                let result = bench(args, store, StoreKind::File(dir.clone())).await;
                // Removed whether the run succeeded or not: a million users' store is 15 GiB.
                std::fs::remove_dir_all(&dir).ok();
                result
            }
            "postgres" => {
                let server = testkit::postgres::Postgres::start()?;
                let store = store_postgres::PostgresStore::connect(server.url()).await?;
                bench(args, store, StoreKind::Postgres(server.url().to_string())).await
            }
            other => anyhow::bail!("--store must be sqlite or postgres, not {other}"),
        }
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("isthmus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// Where the store keeps its data, for its size on disk.
enum StoreKind {
    /// A folder holding the SQLite database and its WAL.
    File(std::path::PathBuf),
    /// A PostgreSQL server's URL.
    Postgres(String),
}

impl StoreKind {
    async fn size(&self) -> anyhow::Result<String> {
        Ok(match self {
            StoreKind::File(dir) => {
                let mut bytes = 0u64;
                for entry in std::fs::read_dir(dir)? {
                    bytes += entry?.metadata()?.len();
                }
                format!("{} MiB (the database file and its WAL)", bytes / (1024 * 1024))
            }
            StoreKind::Postgres(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                let bytes: i64 = client.query_one("SELECT pg_database_size(current_database())", &[]).await?.get(0);
                format!("{} MiB (pg_database_size)", bytes / (1024 * 1024))
            }
        })
    }
}

async fn bench<S: Store>(args: &Args, store: S, kind: StoreKind) -> anyhow::Result<()> {
    store.migrate().await?;
    let started = Instant::now();
    let directory = dirgen::generate(&dirgen::GenConfig {
        users: args.users,
        groups: args.groups,
        contacts: 0,
        domains: vec!["corp.example.test".into()],
        seed: 7,
    });
    let ad = MemoryDirectory::new();
    let mut users = Vec::new();
    for (dn, object_type, attributes) in dirgen::ad_objects(&directory, "DC=corp,DC=example,DC=test", 7) {
        let anchor = ad.put(&dn, &object_type, attributes);
        if object_type == "user" && users.len() < 100 {
            users.push(anchor);
        }
    }
    let memberships: usize = directory.groups.iter().map(|group| group.people.len() + group.groups.len()).sum();
    // The default rules filter a group of 250,000 members or more from the cloud, as Entra's
    // "In from AD - Group Common" does (at a million users the all-staff group is one).
    let oversized = directory.groups.iter().filter(|group| group.people.len() + group.groups.len() >= GROUP_MEMBER_LIMIT).count();
    let expected = args.users + args.groups - oversized;
    eprintln!(
        "generated {} users, {} groups ({memberships} memberships) in {:.1} s",
        args.users,
        args.groups,
        started.elapsed().as_secs_f64()
    );
    let cloud = MemoryDirectory::new();
    let rules = sync_rules::defaults::ad_to_cloud(&["corp.example.test"], "tenant").map_err(|errors| anyhow::anyhow!("{errors:?}"))?;
    let mut runner = Runner::new(store, rules, RunnerConfig { deletion_threshold: None, ..RunnerConfig::default() });
    let mut ad_connector = ad.connector("corp.example.test", Role::Source, 1000);
    ad_connector.info.parameters.insert("Domain.FQDN".into(), sync_expr::Value::str("corp.example.test"));
    for name in ["Domain.Netbios", "Forest.Netbios"] {
        ad_connector.info.parameters.insert(name.into(), sync_expr::Value::str("CORP"));
    }
    ad_connector.info.parameters.insert("Forest.FQDN".into(), sync_expr::Value::str("corp.example.test"));
    runner.add_connector(ad_connector);
    runner.add_connector(cloud.connector("tenant", Role::Target, 1000));
    let objects = (args.users + args.groups) as f64;
    let ad_id = model::ConnectorId("corp.example.test".into());
    let tenant_id = model::ConnectorId("tenant".into());
    // What the generator and both in-memory directories hold before any step: each step's
    // peak above it is the runner's and the store's.
    let baseline = rss_kib("VmRSS");
    eprintln!("resident before the first step (generator and directories): {} MiB", baseline / 1024);
    // A step's peak includes what stays resident after it (the in-memory cloud directory filling
    // during the export): the last column tells the two apart.
    println!("| step | seconds | objects/s | peak RSS above the directories (MiB) | resident after the step, above them (MiB) |");
    println!("|---|---|---|---|---|");
    let total = Instant::now();
    for (connector, step) in [
        (&ad_id, Step::FullImport),
        (&tenant_id, Step::FullImport),
        (&ad_id, Step::FullSync),
        (&tenant_id, Step::FullSync),
        (&tenant_id, Step::Export),
        (&tenant_id, Step::DeltaImport),
    ] {
        reset_peak_rss();
        let started = Instant::now();
        let report = runner.run_step(connector, step).await?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(report.counts.errors == 0, "{} {}: {} errors ({})", connector.0, step.name(), report.counts.errors, report.detail);
        let above = rss_kib("VmHWM").saturating_sub(baseline) / 1024;
        let kept = rss_kib("VmRSS").saturating_sub(baseline) / 1024;
        println!("| {} {} | {seconds:.1} | {:.0} | {above} | {kept} |", connector.0, step.name(), objects / seconds.max(0.001));
    }
    let seconds = total.elapsed().as_secs_f64();
    println!("| whole cycle | {seconds:.1} | {:.0} | | |", objects / seconds);
    if oversized > 0 {
        println!("{oversized} group(s) of {GROUP_MEMBER_LIMIT} members or more: filtered from the cloud by the default rules");
    }
    if cloud.len() != expected {
        // What the store says about the difference: the cloud's objects still pending export
        // or in error, and how many objects each side holds.
        for (label, query) in [
            ("pending export", CsQuery { pending_export: true, limit: 10, ..CsQuery::default() }),
            ("with an error", CsQuery { with_error: true, limit: 10, ..CsQuery::default() }),
        ] {
            for cs in runner.store().cs_list(&tenant_id, &query).await? {
                eprintln!(
                    "tenant object {label}: {} {} link {:?} export {:?} error {:?}",
                    cs.id.0,
                    cs.dn,
                    cs.link,
                    cs.pending_export.map(|export| format!("{export:?}").chars().take(200).collect::<String>()),
                    cs.error
                );
            }
        }
        let (mut ad_objects, mut unlinked, mut after) = (0usize, 0usize, None);
        loop {
            let page = runner.store().cs_list(&ad_id, &CsQuery { after, limit: 10_000, ..CsQuery::default() }).await?;
            after = page.last().map(|cs| cs.id);
            ad_objects += page.len();
            for cs in page.iter().filter(|cs| cs.link.is_none()) {
                unlinked += 1;
                eprintln!("AD object without an MV object: {} {} ({})", cs.id.0, cs.dn, cs.object_type);
            }
            if page.len() < 10_000 {
                break;
            }
        }
        anyhow::bail!(
            "the cloud holds {} objects, expected {}; the AD connector space holds {ad_objects}, {unlinked} of them without an MV object",
            cloud.len(),
            expected
        );
    }
    println!("peak RSS of the process during the first cycle's last step: {} MiB", rss_kib("VmHWM") / 1024);
    // The first export leaves references to objects created in the same export (managers,
    // members in chunks still in flight) for the next cycle, as Entra's export does.
    let started = Instant::now();
    let reports = runner.run_cycle(false).await?;
    let settled: u64 = reports.iter().filter(|report| report.step == Step::Export).map(|report| report.counts.updates).sum();
    println!("| second cycle (delta: {settled} references left by the first export) | {:.1} | | | |", started.elapsed().as_secs_f64());
    // A delta cycle after 100 users changed on-premises: it must cost what changed, not the store.
    for anchor in &users {
        ad.modify(anchor, &[model::AttrChange::Replace("title".into(), vec![model::AttrValue::string("Changed by the benchmark")])]);
    }
    let started = Instant::now();
    let reports = runner.run_cycle(false).await?;
    let seconds = started.elapsed().as_secs_f64();
    let exported: u64 = reports.iter().filter(|report| report.step == Step::Export).map(|report| report.counts.updates).sum();
    anyhow::ensure!(exported == users.len() as u64, "the delta cycle exported {exported} updates, expected {}", users.len());
    println!("| delta cycle, {} users changed | {seconds:.2} | | | |", users.len());
    println!("store on disk: {}", kind.size().await?);
    Ok(())
}

/// Starts a new peak-RSS (VmHWM) measurement (Linux: `clear_refs` 5).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").ok();
}

/// A resident-set figure of the process from /proc (`VmRSS` now, `VmHWM` peak), in KiB.
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}
