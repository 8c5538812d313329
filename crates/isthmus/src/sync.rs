//! `isthmus sync run`: one sync cycle (or one run profile of one connector) of the connectors a
//! configuration file names, with the state in its SQLite or PostgreSQL store; and
//! `isthmus check-config`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use store::Store;
use sync_runner::Clock;
use sync_runner::{Runner, StepReport};

use crate::config::{Config, with_store};

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
    /// Minutes between scheduled delta cycles. Default: the tenant's synchronizationInterval
    /// (`/directory/onPremisesSynchronization`; Entra's default 30), read before every cycle;
    /// giving it here overrides the tenant (a customized interval).
    #[arg(long)]
    pub interval_minutes: Option<u64>,
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
    /// Start with scheduled cycles off (only the initial cycle and `isthmus sync start` run
    /// until `isthmus sync scheduler enable`).
    #[arg(long)]
    pub scheduler_disabled: bool,
    /// Serve metrics (OpenMetrics text, `GET /metrics`, for Prometheus) on this address, for
    /// example 127.0.0.1:9464; off unless given. Plain HTTP on its own listener: keep it on
    /// loopback or a monitoring network.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

/// `isthmus sync serve`: an initial cycle, then delta cycles on schedule (and on change in
/// near-real-time mode, and on `sync start`) until Ctrl-C or SIGTERM; one cycle at a time.
pub async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = std::sync::Arc::new(Config::load(&args.config)?);
    let rules = config.rules()?;
    let opened = config.store.open(true).await?;
    // Password hash sync keeps its own handle on the store (it runs between cycles).
    let hashes = config.store.open(true).await?;
    with_store!(opened, |store| with_store!(hashes, |hash_store| serve_with(store, hash_store, config.clone(), rules, args).await))
}

/// Password hash sync as the scheduler's side task.
struct PasswordSync<S> {
    store: S,
    config: std::sync::Arc<Config>,
    every: std::time::Duration,
}

impl<S: Store + Sync> sync_runner::scheduler::SideTask for PasswordSync<S> {
    fn every(&self) -> std::time::Duration {
        self.every
    }

    fn run<'a>(&'a self, reason: &'static str) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            tracing::debug!(reason, "password hash sync pass");
            if let Err(err) = crate::phs_cmd::pass(&self.store, &self.config, false).await {
                eprintln!("password hash sync failed: {err:#}");
            }
        })
    }
}

/// This sync server's identity for its reports to the tenant: an id generated once and kept in
/// the store (a rebuilt server on a new store is a new server), the host name, the version.
async fn server_identity<S: Store>(store: &S) -> anyhow::Result<health::Server> {
    const SERVICE: &str = "sync-server";
    let id = match store.service_state(SERVICE, "id").await.context("read the server id")? {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => {
            let mut bytes = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| anyhow::anyhow!("no randomness for the server id"))?;
            let id: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            store.set_service_state(SERVICE, "id", id.as_bytes()).await.context("keep the server id")?;
            id
        }
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|name| name.trim().to_string()).unwrap_or_default();
    Ok(health::Server { id, host, product_version: env!("CARGO_PKG_VERSION").to_string() })
}

/// Reports each finished cycle to the tenant (`onPremisesLastSyncDateTime`, health).
struct TenantReporter {
    graph: connector_graph::GraphConfig,
    server: health::Server,
}

impl TenantReporter {
    async fn send(&self, cycle: sync_runner::scheduler::FinishedCycle<'_>) {
        let report = cycle.report(self.server.clone());
        match connector_graph::send_sync_report(&self.graph, &report).await {
            Ok(competing) if competing.is_empty() => tracing::debug!("cycle reported to the tenant"),
            Ok(competing) => eprintln!(
                "warning: {} active sync servers report to this tenant ({}); only one may export — put the others in staging mode",
                competing.len(),
                competing.join(", ")
            ),
            Err(err) => eprintln!("warning: the cycle's report to the tenant failed: {err}"),
        }
    }
}

impl sync_runner::scheduler::CycleObserver for TenantReporter {
    fn finished<'a>(
        &'a self,
        cycle: sync_runner::scheduler::FinishedCycle<'a>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.send(cycle))
    }
}

/// The interval and threshold from the tenant's sync settings, read before every cycle.
struct TenantSettings {
    graph: connector_graph::GraphConfig,
    /// `--interval-minutes`: overrides the tenant.
    interval: Option<std::time::Duration>,
    /// The configuration file's threshold, used when the tenant cannot be read.
    fallback_threshold: Option<u64>,
    announced: std::sync::Mutex<Option<sync_runner::scheduler::Timing>>,
}

impl sync_runner::scheduler::Settings for TenantSettings {
    fn refresh(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<sync_runner::scheduler::Timing>> + Send + '_>> {
        Box::pin(async move {
            let (interval, threshold, source) = match connector_graph::tenant_schedule(&self.graph).await {
                Ok(tenant) => {
                    let interval = self.interval.or_else(|| {
                        tenant
                            .interval
                            .as_deref()
                            .and_then(sync_runner::scheduler::parse_iso_duration)
                            .filter(|interval| !interval.is_zero())
                    });
                    let threshold = match (tenant.prevention.as_deref(), tenant.threshold) {
                        (Some("disabled"), _) => None,
                        (Some("enabledForPercentage"), _) => {
                            tracing::warn!(
                                "the tenant's deletion prevention is a percentage, which Isthmus does not support yet: using [sync] deletion_threshold"
                            );
                            self.fallback_threshold
                        }
                        (_, Some(threshold)) => Some(threshold).filter(|threshold| *threshold > 0),
                        _ => self.fallback_threshold,
                    };
                    (interval.unwrap_or(sync_runner::scheduler::DEFAULT_INTERVAL), threshold, "the tenant's settings")
                }
                Err(err) => {
                    tracing::warn!("reading the tenant's sync settings: {err}; keeping the current interval and threshold");
                    return None;
                }
            };
            let mut announced = self.announced.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if *announced != Some((interval, threshold)) {
                println!(
                    "   cycle interval {} min{}, deletion threshold {} ({source})",
                    interval.as_secs() / 60,
                    if self.interval.is_some() { " (--interval-minutes)" } else { "" },
                    threshold.map_or("off".to_string(), |threshold| threshold.to_string())
                );
                *announced = Some((interval, threshold));
            }
            Some((interval, threshold))
        })
    }
}

async fn serve_with<S: Store + Sync + 'static, H: Store + Sync + 'static>(
    store: S,
    hash_store: H,
    config: std::sync::Arc<Config>,
    rules: sync_rules::RuleSet,
    args: &ServeArgs,
) -> anyhow::Result<()> {
    let mut runner = build(store, &config, rules).await?;
    let board = std::sync::Arc::new(sync_runner::status::Board::new(
        std::sync::Arc::new(crate::progress::Bars::default()),
        env!("CARGO_PKG_VERSION"),
    ));
    runner.set_progress(board.clone());
    if args.scheduler_disabled {
        board.set_scheduler_enabled(false);
    }
    let interval = args.interval_minutes.map(|minutes| std::time::Duration::from_secs(minutes.max(1) * 60));
    let mut schedule = sync_runner::scheduler::Schedule::every(interval.unwrap_or(sync_runner::scheduler::DEFAULT_INTERVAL));
    schedule.near_real_time = args.near_real_time_seconds.map(|seconds| std::time::Duration::from_secs(seconds.max(1)));
    schedule.settings = config.graphs.first().map(|graph| {
        std::sync::Arc::new(TenantSettings {
            graph: graph.clone(),
            interval,
            fallback_threshold: config.runner().deletion_threshold,
            announced: std::sync::Mutex::new(None),
        }) as std::sync::Arc<dyn sync_runner::scheduler::Settings>
    });
    let password_sync = !config.sync.staging && config.connectors.iter().any(|connector| connector.password_hash_sync);
    if password_sync {
        let every = std::time::Duration::from_secs(args.password_sync_minutes.max(1) * 60);
        schedule.side_tasks.push(std::sync::Arc::new(PasswordSync { store: hash_store, config: config.clone(), every }));
        println!("   password hash sync every {} min", args.password_sync_minutes.max(1));
    }
    schedule.on_cycle = Some(print_reports);
    if let Some(graph) = config.graphs.first() {
        let server = server_identity(runner.store()).await?;
        println!(
            "   sync server {} ({}), reporting each cycle to the tenant",
            server.id,
            if config.sync.staging { "staging" } else { "active" }
        );
        schedule.observers.push(std::sync::Arc::new(TenantReporter { graph: graph.clone(), server }));
    }
    let metrics = match &args.metrics_listen {
        Some(address) => {
            let mut registry = telemetry::registry();
            schedule.observers.push(sync_runner::metrics::SyncMetrics::register(&mut registry));
            let listening = telemetry::start(address, registry).await?;
            println!("   metrics on http://{}/metrics", listening.address);
            Some(listening)
        }
        None => None,
    };
    let (requests, receiver) = tokio::sync::mpsc::channel(8);
    let connectors: Vec<model::ConnectorId> =
        config.connectors.iter().map(|c| c.id.clone()).chain(config.graphs.iter().map(|g| g.id.clone())).map(model::ConnectorId).collect();
    let socket = config.control_socket();
    let control = sync_runner::control::listen(&socket, board.clone(), requests, connectors)?;
    println!(
        "== serving{}; control channel {}",
        schedule.near_real_time.map_or(String::new(), |poll| format!(": near-real-time polling every {} s", poll.as_secs())),
        socket.display()
    );
    let history_days = config.sync.history_days;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("watch SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    let retention = async {
        // Run-history retention, hourly (and at start).
        loop {
            if history_days > 0 {
                let cut = sync_runner::Clock::unix_seconds(&sync_runner::SystemClock) - i64::from(history_days) * 86_400;
                match runner.store().runs_prune(cut).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, days = history_days, "run history older than the retention removed"),
                    Err(err) => tracing::warn!("run-history retention: {err}"),
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    };
    tokio::select! {
        _ = sync_runner::scheduler::run(&runner, schedule, board, receiver, shutdown) => {}
        () = retention => {}
    }
    control.abort();
    drop(metrics);
    let _ = std::fs::remove_file(&socket);
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
    runner.claim().await.context("take the sync store")?;
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
    with_store!(config.store.open(true).await?, |store| cycle(store, &config, rules, args).await)
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
            let begun = runner.now();
            let result = runner.run_cycle(args.full).await;
            // A whole cycle is reported to the tenant, as `sync serve`'s are.
            if let Some(graph) = config.graphs.first() {
                let finished = result.as_deref().map_err(ToString::to_string);
                let kind = if args.full { sync_runner::status::CycleKind::Full } else { sync_runner::status::CycleKind::Delta };
                let cycle = sync_runner::scheduler::FinishedCycle::new(
                    &runner,
                    kind,
                    begun,
                    sync_runner::scheduler::DEFAULT_INTERVAL,
                    &[],
                    finished.as_deref().map_err(String::as_str),
                );
                TenantReporter { graph: graph.clone(), server: server_identity(runner.store()).await? }.send(cycle).await;
            }
            result.context("sync cycle")?
        }
    };
    print_reports(&reports);
    println!("   {:.1} s", started.elapsed().as_secs_f64());
    let stopped: Vec<String> = reports
        .iter()
        .filter(|report| report.status.stopped())
        .map(|report| format!("{} {}: {}", report.connector.0, report.step.name(), report.detail))
        .collect();
    anyhow::ensure!(stopped.is_empty(), "{} step(s) stopped:\n  {}", stopped.len(), stopped.join("\n  "));
    let rejected: u64 = reports.iter().map(|report| report.counts.errors).sum();
    if rejected > 0 {
        let connectors: std::collections::BTreeSet<&str> =
            reports.iter().filter(|report| report.counts.errors > 0).map(|report| report.connector.0.as_str()).collect();
        anyhow::bail!(
            "the run ended with {rejected} object error(s) in {}: see `isthmus cs search --config {} --connector <id> --errors`",
            connectors.into_iter().collect::<Vec<_>>().join(", "),
            args.config.display()
        );
    }
    println!("   done: every step succeeded");
    Ok(())
}

/// One line per step.
pub fn print_reports(reports: &[StepReport]) {
    for report in reports {
        println!(
            "   {:<18} {:<13} {:<24} adds {:>5}  updates {:>5}  deletes {:>5}  errors {:>3}   {}",
            report.connector.0,
            report.step.name(),
            report.status.name(),
            report.counts.adds,
            report.counts.updates,
            report.counts.deletes,
            report.counts.errors,
            report.detail
        );
    }
}

/// Options of `isthmus sync status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The configuration file of the running `sync serve`.
    #[arg(long, default_value = "isthmus.toml")]
    pub config: PathBuf,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// Options of `isthmus sync start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The configuration file of the running `sync serve`.
    #[arg(long, default_value = "isthmus.toml")]
    pub config: PathBuf,
    /// A full cycle (full imports and syncs) instead of a delta cycle.
    #[arg(long)]
    pub full: bool,
    /// Only this connector's import, sync and export.
    #[arg(long)]
    pub connector: Option<String>,
}

/// `isthmus sync scheduler enable|disable`.
#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    /// enable or disable.
    #[arg(value_parser = ["enable", "disable"])]
    pub switch: String,
    /// The configuration file of the running `sync serve`.
    #[arg(long, default_value = "isthmus.toml")]
    pub config: PathBuf,
}

async fn control(config: &std::path::Path, request: sync_runner::control::Request) -> anyhow::Result<sync_runner::control::Answer> {
    let config = Config::load(config)?;
    let answer = sync_runner::control::call(&config.control_socket(), &request).await?;
    if let sync_runner::control::Answer::Error { message } = &answer {
        anyhow::bail!("the sync server refused: {message}");
    }
    Ok(answer)
}

fn when(unix: i64) -> String {
    let ago = Clock::unix_seconds(&sync_runner::SystemClock) - unix;
    if ago >= 0 { format!("{ago} s ago") } else { format!("in {} s", -ago) }
}

/// `isthmus sync status`.
pub async fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let sync_runner::control::Answer::Status(status) = control(&args.config, sync_runner::control::Request::Status).await? else {
        anyhow::bail!("the sync server answered something other than its status");
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("sync server: pid {}, version {}, {} cycle(s) since start", status.pid, status.version, status.cycles);
    println!(
        "scheduler:   {}, a delta cycle every {} min{}; deletion threshold {}",
        if status.scheduler_enabled { "enabled" } else { "DISABLED" },
        status.interval_seconds / 60,
        status.next_cycle.map_or(String::new(), |next| format!(", next {}", when(next))),
        status.deletion_threshold.map_or("off".to_string(), |threshold| threshold.to_string())
    );
    match &status.current {
        None => println!("state:       idle"),
        Some(cycle) => {
            println!(
                "state:       running a {:?} cycle{} (started {}, {} step(s) done)",
                cycle.kind,
                cycle.connector.as_ref().map_or(String::new(), |id| format!(" of {id}")),
                when(cycle.started),
                cycle.steps.len()
            );
            if let Some(step) = &cycle.current {
                let elapsed = (Clock::unix_seconds(&sync_runner::SystemClock) - step.started).max(0) as u64;
                let progress = match step.total {
                    Some(total) if total > 0 && step.done > 0 => {
                        let eta = elapsed * total.saturating_sub(step.done) / step.done;
                        format!("{}/{total} objects, eta {eta} s", step.done)
                    }
                    Some(total) => format!("{}/{total} objects", step.done),
                    None => format!("{} objects so far", step.done),
                };
                println!("step:        {} {}: {progress} ({elapsed} s)", step.connector, step.step);
            }
        }
    }
    if let Some(last) = &status.last {
        println!(
            "last cycle:  {:?}{}, {} (finished {}){}",
            last.kind,
            last.connector.as_ref().map_or(String::new(), |id| format!(" of {id}")),
            last.outcome,
            last.finished.map_or("-".to_string(), when),
            last.error.as_ref().map_or(String::new(), |error| format!(": {error}"))
        );
        for step in &last.steps {
            println!(
                "   {:<18} {:<13} {:<24} adds {:>5}  updates {:>5}  deletes {:>5}  errors {:>3}   {}",
                step.connector, step.step, step.status, step.adds, step.updates, step.deletes, step.errors, step.detail
            );
        }
    }
    Ok(())
}

/// `isthmus sync start`.
pub async fn start(args: &StartArgs) -> anyhow::Result<()> {
    let request = sync_runner::control::Request::Start { full: args.full, connector: args.connector.clone() };
    if let sync_runner::control::Answer::Ok { message } = control(&args.config, request).await? {
        println!("{message}");
    }
    Ok(())
}

/// `isthmus sync scheduler enable|disable`.
pub async fn scheduler(args: &SchedulerArgs) -> anyhow::Result<()> {
    let request = sync_runner::control::Request::Scheduler { enabled: args.switch == "enable" };
    if let sync_runner::control::Answer::Ok { message } = control(&args.config, request).await? {
        println!("{message}");
    }
    Ok(())
}
