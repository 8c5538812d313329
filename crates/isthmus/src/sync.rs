//! `isthmus sync run`: one sync cycle (or one run profile of one connector) of the connectors a
//! configuration file names, with the state in its SQLite or PostgreSQL store; and
//! `isthmus check-config`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use store::Store;
use sync_runner::{Runner, StepReport};

use crate::config::Config;

/// Options of `isthmus sync run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, default_value = "isthmus.toml")]
    pub config: PathBuf,
    /// A full cycle (full imports and full syncs) instead of a delta cycle. The first cycle of
    /// a new store, or of a connector without a watermark, imports in full anyway.
    #[arg(long, conflicts_with = "step")]
    pub full: bool,
    /// Run one profile of one connector instead of a cycle: full-import, delta-import,
    /// full-sync, delta-sync or export (with --connector).
    #[arg(long, requires = "connector", value_parser = parse_step)]
    pub step: Option<sync_runner::Step>,
    /// The connector of --step.
    #[arg(long, requires = "step")]
    pub connector: Option<String>,
    /// Let this run's export go ahead although its deletes exceed the accidental-delete
    /// threshold (after reviewing them with `isthmus plan`); used up by that export.
    #[arg(long)]
    pub allow_deletes: bool,
}

fn parse_step(text: &str) -> Result<sync_runner::Step, String> {
    sync_runner::Step::parse(text).ok_or_else(|| format!("{text:?} is not one of full-import, delta-import, full-sync, delta-sync, export"))
}

/// Options of `isthmus sync serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(long, default_value = "isthmus.toml")]
    pub config: PathBuf,
    /// Minutes between scheduled delta cycles (Entra's default: 30).
    #[arg(long, default_value_t = 30)]
    pub interval_minutes: u64,
    /// Near-real-time mode: every this many seconds, a delta import of each source directory;
    /// when it finds changes, a delta cycle runs at once (an on-premises change reaches the cloud
    /// within seconds).
    #[arg(long)]
    pub near_real_time_seconds: Option<u64>,
    /// Minutes between password hash sync passes, when a connector has password_hash_sync
    /// (Entra's default: 2). In near-real-time mode an on-premises change (a password change
    /// sets pwdLastSet) also starts a pass at once.
    #[arg(long, default_value_t = 2)]
    pub password_sync_minutes: u64,
}

/// `isthmus sync serve`: an initial cycle, then delta cycles on schedule (and on change in
/// near-real-time mode) until Ctrl-C or SIGTERM; one cycle at a time.
pub async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let rules = config.rules()?;
    if let Some(path) = &config.store.sqlite {
        let store = store_sqlite::SqliteStore::open(path).with_context(|| format!("open {}", path.display()))?;
        serve_with(store, &config, rules, args).await
    } else {
        let url = config.store.postgres.as_deref().unwrap_or_default();
        let store = store_postgres::PostgresStore::connect(url).await.context("connect to PostgreSQL ([store] postgres)")?;
        serve_with(store, &config, rules, args).await
    }
}

async fn serve_with<S: Store>(store: S, config: &Config, rules: sync_rules::RuleSet, args: &ServeArgs) -> anyhow::Result<()> {
    let runner = build(store, config, rules).await?;
    let interval = std::time::Duration::from_secs(args.interval_minutes.max(1) * 60);
    let poll = args.near_real_time_seconds.map(|seconds| std::time::Duration::from_secs(seconds.max(1)));
    let sources: Vec<model::ConnectorId> = config
        .connectors
        .iter()
        .filter(|connector| connector.role == connector_ldap::ConnectorRole::Source)
        .map(|connector| model::ConnectorId(connector.id.clone()))
        .collect();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("watch SIGTERM")?;
    println!(
        "== serving: a delta cycle every {} min{}",
        args.interval_minutes.max(1),
        poll.map_or(String::new(), |poll| format!(", near-real-time polling every {} s", poll.as_secs()))
    );
    let password_sync = !config.sync.staging && config.connectors.iter().any(|connector| connector.password_hash_sync);
    let password_interval = std::time::Duration::from_secs(args.password_sync_minutes.max(1) * 60);
    if password_sync {
        println!("   password hash sync every {} min", args.password_sync_minutes.max(1));
    }
    let hash_pass = |reason: &'static str| {
        let store = runner.store();
        async move {
            tracing::debug!(reason, "password hash sync pass");
            if let Err(err) = crate::phs_cmd::pass(store, config, false).await {
                eprintln!("password hash sync failed: {err:#}");
            }
        }
    };
    let mut initial = true;
    let mut next_cycle = tokio::time::Instant::now();
    let mut next_hashes = tokio::time::Instant::now() + password_interval;
    loop {
        let now = tokio::time::Instant::now();
        if password_sync && !initial && now >= next_hashes {
            hash_pass("schedule").await;
            next_hashes = tokio::time::Instant::now() + password_interval;
        }
        let mut due = initial || now >= next_cycle;
        if !due && let Some(poll) = poll {
            // Cheap check of the sources; a change makes a cycle due at once.
            for source in &sources {
                match runner.run_step(source, sync_runner::Step::DeltaImport).await {
                    Ok(report) if report.counts.adds + report.counts.updates + report.counts.deletes > 0 => {
                        tracing::info!(connector = source.0, "changes on-premises; running a cycle now");
                        due = true;
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(connector = source.0, "near-real-time poll: {err}"),
                }
            }
            if due && password_sync {
                // A changed password shows as a changed pwdLastSet: its hash goes first.
                hash_pass("on-premises change").await;
                next_hashes = tokio::time::Instant::now() + password_interval;
            }
            if !due {
                let wait = poll.min(next_cycle.min(next_hashes).saturating_duration_since(tokio::time::Instant::now()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = tokio::signal::ctrl_c() => break,
                    _ = terminate.recv() => break,
                }
            }
        }
        if due {
            let started = Instant::now();
            match runner.run_cycle(initial).await {
                Ok(reports) => {
                    print_reports(&reports);
                    println!("   cycle done in {:.1} s", started.elapsed().as_secs_f64());
                }
                Err(err) => eprintln!("cycle failed: {err:#}"),
            }
            if initial && password_sync {
                hash_pass("initial").await;
                next_hashes = tokio::time::Instant::now() + password_interval;
            }
            initial = false;
            next_cycle = tokio::time::Instant::now() + interval;
            continue;
        }
        let wake = if password_sync { next_cycle.min(next_hashes) } else { next_cycle };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    println!("stopped");
    Ok(())
}

/// With the default rules, the tenant must anchor on what this configuration does: the first
/// server stores its choice in the tenant, later ones (a rebuild, a staging server) are held to it.
async fn check_anchor(config: &Config) -> anyhow::Result<()> {
    let (true, Some(cloud)) = (config.sync.default_rules, config.graphs.first()) else { return Ok(()) };
    let options = config.default_options()?;
    let ours = options.source_anchor.name();
    let check = connector_graph::check_anchor(cloud, ours, !config.sync.staging)
        .await
        .with_context(|| format!("read the tenant's sync settings through connector {}", cloud.id))?;
    match check {
        connector_graph::AnchorCheck::Stored => println!("   the tenant now remembers the source anchor: {ours}"),
        connector_graph::AnchorCheck::Same => {}
        connector_graph::AnchorCheck::Different(held) => anyhow::bail!(
            "the tenant's synced objects are anchored on {held} (stored there by the sync server that synced them first), \
             but [sync] source_anchor is {ours}: set source_anchor = \"{held}\" — the anchor of synced objects never changes"
        ),
    }
    Ok(())
}

/// The runner with every configured connector opened.
async fn build<S: Store>(store: S, config: &Config, rules: sync_rules::RuleSet) -> anyhow::Result<Runner<S>> {
    check_anchor(config).await?;
    store.migrate().await.context("create or check the database schema")?;
    let mut runner = Runner::new(store, rules, config.runner());
    // One runner per database: a second `sync run` or `sync serve` stops here, before it
    // connects to anything.
    runner.claim().await.context("take the sync database")?;
    runner.set_progress(std::sync::Arc::new(crate::progress::Bars::default()));
    for connector in &config.connectors {
        let opened = connector_ldap::open(connector.clone()).await.with_context(|| format!("connector {}", connector.id))?;
        runner.add_connector(opened);
    }
    for graph in &config.graphs {
        let opened = connector_graph::open(graph.clone()).await.with_context(|| format!("connector {}", graph.id))?;
        runner.add_connector(opened);
    }
    Ok(runner)
}

/// `isthmus check-config`: reads the file and the rule files, checks every setting; connects to nothing.
pub fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let rules = config.rules()?;
    println!(
        "{}: {} connector(s), {} rule(s), store {}; all checked",
        path.display(),
        config.connectors.len() + config.graphs.len(),
        rules.rules().len(),
        if config.store.sqlite.is_some() { "SQLite" } else { "PostgreSQL" }
    );
    Ok(())
}

/// `isthmus sync run`.
pub async fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let rules = config.rules()?;
    if let Some(path) = &config.store.sqlite {
        let store = store_sqlite::SqliteStore::open(path).with_context(|| format!("open {}", path.display()))?;
        cycle(store, &config, rules, args).await
    } else {
        let url = config.store.postgres.as_deref().unwrap_or_default();
        let store = store_postgres::PostgresStore::connect(url).await.context("connect to PostgreSQL ([store] postgres)")?;
        cycle(store, &config, rules, args).await
    }
}

async fn cycle<S: Store>(store: S, config: &Config, rules: sync_rules::RuleSet, args: &RunArgs) -> anyhow::Result<()> {
    if let Some(id) = &args.connector {
        let known = config.connectors.iter().any(|connector| &connector.id == id) || config.graphs.iter().any(|graph| &graph.id == id);
        anyhow::ensure!(known, "no connector {id:?} in {}", args.config.display());
    }
    let runner = build(store, config, rules).await?;
    if args.allow_deletes {
        println!("   deletes over the threshold are allowed for this run's export");
        runner.allow_deletes_once();
    }
    let started = Instant::now();
    let reports = match (args.step, &args.connector) {
        (Some(step), Some(id)) => {
            println!("== {} of {id}", step.name());
            vec![runner.run_step(&model::ConnectorId(id.clone()), step).await.with_context(|| format!("{} of {id}", step.name()))?]
        }
        _ => {
            println!("== {} cycle", if args.full { "full" } else { "delta" });
            runner.run_cycle(args.full).await.context("sync cycle")?
        }
    };
    print_reports(&reports);
    println!("   {:.1} s", started.elapsed().as_secs_f64());
    let stopped: Vec<String> = reports
        .iter()
        .filter(|report| report.status.starts_with("stopped"))
        .map(|report| format!("{} {}: {}", report.connector.0, report.step.name(), report.detail))
        .collect();
    anyhow::ensure!(stopped.is_empty(), "{} step(s) stopped:\n  {}", stopped.len(), stopped.join("\n  "));
    Ok(())
}

/// One line per step.
pub fn print_reports(reports: &[StepReport]) {
    for report in reports {
        println!(
            "   {:<18} {:<13} {:<24} adds {:>5}  updates {:>5}  deletes {:>5}  errors {:>3}   {}",
            report.connector.0,
            report.step.name(),
            report.status,
            report.counts.adds,
            report.counts.updates,
            report.counts.deletes,
            report.counts.errors,
            report.detail
        );
    }
}
