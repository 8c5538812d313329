//! The sync runner: drives the pure engine (`sync-engine`) over a store (`store::Store`) and
//! connectors (`connector-api`), one run-profile step at a time — full/delta import, full/delta
//! sync, export — and whole cycles in Entra's order, with staging mode and the accidental-delete
//! threshold. [`scheduler`] repeats cycles, [`status`] says what it is doing and [`control`] is
//! the local channel `isthmus sync status|start|scheduler` talk to.
//!
//! It owns orchestration and I/O; decisions are the engine's. It depends on ports only: the
//! binary picks the store and connector adapters.

pub mod control;
mod explain;
mod export;
mod import;
pub mod metrics;
pub mod scheduler;
pub mod status;
mod sync;

pub use explain::{Explanation, Overlay};

use std::collections::BTreeMap;

use connector_api::{Connector, ConnectorError, Role};
use model::ConnectorId;
use store::{RunCounts, Store, StoreError};
use sync_rules::RuleSet;

/// A run-profile step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read everything; objects not seen are obsoleted.
    FullImport,
    /// Read changes since the watermark (a full import when there is none or it expired).
    DeltaImport,
    /// Re-evaluate every CS object of the connector against the rules.
    FullSync,
    /// Evaluate CS objects with pending imports.
    DeltaSync,
    /// Write pending exports.
    Export,
}

impl Step {
    /// The name used in run history and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Step::FullImport => "full-import",
            Step::DeltaImport => "delta-import",
            Step::FullSync => "full-sync",
            Step::DeltaSync => "delta-sync",
            Step::Export => "export",
        }
    }

    /// Parses [`Step::name`].
    pub fn parse(name: &str) -> Option<Step> {
        [Step::FullImport, Step::DeltaImport, Step::FullSync, Step::DeltaSync, Step::Export].into_iter().find(|step| step.name() == name)
    }
}

/// Run settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Staging mode: import and sync, never export.
    pub staging: bool,
    /// Stop an export that would delete more objects than this (Entra's default: 500). `None` disables it.
    pub deletion_threshold: Option<u64>,
    /// Export chunks a connector is given at once (each up to 20 objects; results are still
    /// recorded in order). 1 sends one chunk at a time.
    pub export_concurrency: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig { staging: false, deletion_threshold: Some(500), export_concurrency: 4 }
    }
}

/// How a step ended: the run history's vocabulary, shared with the reports to the tenant.
pub use health::StepStatus;

/// Success, or completed with per-object errors.
fn status_of(counts: RunCounts) -> StepStatus {
    if counts.errors > 0 { StepStatus::CompletedErrors } else { StepStatus::Success }
}

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// Connector.
    pub connector: ConnectorId,
    /// Step.
    pub step: Step,
    /// How it ended.
    pub status: StepStatus,
    /// Counts.
    pub counts: RunCounts,
    /// A line for people, e.g. why the step stopped.
    pub detail: String,
    /// How long it ran (wall time).
    pub elapsed: std::time::Duration,
}

/// Why a step could not run at all (per-object problems are counted, not raised).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No connector with this id is configured.
    #[error("no connector \"{0}\" is configured")]
    UnknownConnector(String),
    /// The connector cannot do this step (e.g. export on a read-only source).
    #[error("connector \"{connector}\" cannot {step}: {why}")]
    Unsupported {
        /// Connector.
        connector: String,
        /// Step.
        step: &'static str,
        /// Why.
        why: String,
    },
    /// The connector space holds no such object.
    #[error("connector \"{connector}\" has no object {dn}")]
    NoObject {
        /// Connector.
        connector: String,
        /// The DN asked for.
        dn: String,
    },
    /// The connector failed as a whole (not one object).
    #[error("connector \"{connector}\": {source}")]
    Connector {
        /// Connector.
        connector: String,
        /// The error.
        source: ConnectorError,
    },
}

/// Group memberships for ISMEMBEROF scoping clauses, read once per step from the connector
/// spaces: connector → group DN (lower case) → member DNs (lower case). Every user of scoping
/// outside a sync step (password hash sync, previews) loads them the same way.
#[derive(Debug, Clone, Default)]
pub struct Memberships(BTreeMap<ConnectorId, BTreeMap<String, std::collections::BTreeSet<String>>>);

impl Memberships {
    /// Reads the groups that the inbound rules' ISMEMBEROF clauses name.
    pub async fn load<S: Store>(store: &S, rules: &RuleSet) -> Result<Memberships, StoreError> {
        let mut memberships = Memberships::default();
        for rule in rules.rules().iter().filter(|rule| rule.direction == sync_rules::Direction::Inbound) {
            for condition in rule.scope.iter().flatten() {
                if !matches!(condition.operator, sync_rules::Operator::IsMemberOf | sync_rules::Operator::IsNotMemberOf) {
                    continue;
                }
                let group = store.cs_by_dn(&rule.connector, &condition.value).await?;
                let members = group.map_or_else(std::collections::BTreeSet::new, |group| {
                    group.attributes.get("member").iter().map(|value| value.to_string().to_lowercase()).collect()
                });
                memberships.0.entry(rule.connector.clone()).or_default().insert(condition.value.to_lowercase(), members);
            }
        }
        Ok(memberships)
    }

    /// Whether `cs` is a member of `group` (a DN an ISMEMBEROF clause names).
    pub fn member_of(&self, cs: &model::CsObject, group: &str) -> bool {
        self.0
            .get(&cs.connector)
            .and_then(|groups| groups.get(&group.to_lowercase()))
            .is_some_and(|members| members.contains(&cs.dn.to_lowercase()))
    }
}

/// The store's service-state name under which each connector's `%Parameters%` are kept.
pub const PARAMETERS: &str = "connector-parameters";

/// Current time for run history and `Now()`; injected so tests control it.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn unix_seconds(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_seconds(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
    }
}

/// What a step reports while it runs, for progress bars. Every method does nothing by default.
pub trait Progress: Send + Sync {
    /// A step began.
    fn step_started(&self, _connector: &ConnectorId, _step: Step) {}
    /// The step now knows how many objects it will handle.
    fn total(&self, _total: u64) {}
    /// `count` more objects handled.
    fn advanced(&self, _count: u64) {}
    /// The step ended (also when it stopped).
    fn step_finished(&self, _report: &StepReport) {}
}

struct Silent;

impl Progress for Silent {}

/// The runner: a store, rules, connectors, settings.
pub struct Runner<S: Store> {
    store: S,
    rules: RuleSet,
    connectors: BTreeMap<ConnectorId, Connector>,
    /// Connector ids in the order they were added (Entra orders rules and steps by it).
    order: Vec<ConnectorId>,
    config: RunnerConfig,
    clock: Box<dyn Clock>,
    /// The admin's approval for one export over the deletion threshold; consumed by that export.
    deletes_allowed_once: std::sync::atomic::AtomicBool,
    /// Told how steps advance.
    pub(crate) progress: std::sync::Arc<dyn Progress>,
    /// Whether this runner holds the store's runner claim (taken before its first step).
    claimed: tokio::sync::OnceCell<()>,
    /// The deletion threshold in force (0: off); starts as the config's, settings may change it.
    threshold: std::sync::atomic::AtomicU64,
    /// Connectors whose `%Parameters%` this runner has kept in the store (they do not change
    /// while a connector is open: once is enough, not every step or near-real-time poll).
    parameters_kept: std::sync::Mutex<std::collections::BTreeSet<ConnectorId>>,
}

impl<S: Store> Runner<S> {
    /// A runner over `store` with `rules`.
    pub fn new(store: S, rules: RuleSet, config: RunnerConfig) -> Self {
        let threshold = std::sync::atomic::AtomicU64::new(config.deletion_threshold.unwrap_or(0));
        Runner {
            store,
            rules,
            connectors: BTreeMap::new(),
            order: Vec::new(),
            config,
            clock: Box::new(SystemClock),
            deletes_allowed_once: std::sync::atomic::AtomicBool::new(false),
            progress: std::sync::Arc::new(Silent),
            claimed: tokio::sync::OnceCell::new(),
            threshold,
            parameters_kept: std::sync::Mutex::default(),
        }
    }

    /// Each connector's objects waiting to be exported (held in staging mode, in error, or left
    /// by a stopped export); a connector whose count cannot be read is left out (logged).
    pub async fn pending_exports(&self) -> Vec<(ConnectorId, u64)> {
        let mut counts = Vec::new();
        for id in self.connectors.keys() {
            match self.store.cs_pending_exports(id).await {
                Ok(pending) => counts.push((id.clone(), pending.len() as u64)),
                Err(err) => tracing::warn!(connector = %id, "counting pending exports: {err}"),
            }
        }
        counts
    }

    /// Whether the runner is in staging mode (exports held).
    pub fn staging(&self) -> bool {
        self.config.staging
    }

    /// The clock's reading, Unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.unix_seconds()
    }

    /// The accidental-delete threshold in force (`None`: off).
    pub fn deletion_threshold(&self) -> Option<u64> {
        Some(self.threshold.load(std::sync::atomic::Ordering::SeqCst)).filter(|threshold| *threshold > 0)
    }

    /// Changes the threshold for the next exports (the tenant's setting changed).
    pub fn set_deletion_threshold(&self, threshold: Option<u64>) {
        self.threshold.store(threshold.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
    }

    /// Reports how steps advance to `progress` (progress bars).
    pub fn set_progress(&mut self, progress: std::sync::Arc<dyn Progress>) {
        self.progress = progress;
    }

    /// Uses another clock (tests).
    pub fn with_clock(mut self, clock: Box<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Adds a connector.
    pub fn add_connector(&mut self, connector: Connector) {
        self.order.push(connector.info.id.clone());
        self.connectors.insert(connector.info.id.clone(), connector);
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Lets the next export that exceeds the deletion threshold go ahead, once (after the admin
    /// reviewed `isthmus plan`). The approval is used up by that export.
    pub fn allow_deletes_once(&self) {
        self.deletes_allowed_once.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Settings (e.g. to flip staging mode); the threshold changes through
    /// [`Runner::set_deletion_threshold`].
    pub fn config_mut(&mut self) -> &mut RunnerConfig {
        &mut self.config
    }

    fn connector(&self, id: &ConnectorId) -> Result<&Connector, RunnerError> {
        self.connectors.get(id).ok_or_else(|| RunnerError::UnknownConnector(id.0.clone()))
    }

    /// Makes this runner the only one of its store (another process gets
    /// [`StoreError::Busy`]) and marks the steps a killed runner left `running` as
    /// `interrupted`. Done before the first step; calling it earlier reports a busy store at start.
    pub async fn claim(&self) -> Result<(), RunnerError> {
        self.claimed
            .get_or_try_init(|| async {
                let interrupted = self.store.claim_runner(self.clock.unix_seconds()).await?;
                // The lookup index holds what these rules join on (brought to it when the rules'
                // join attributes changed since the last run).
                let rebuilt = self.store.index_attributes(&self.rules.join_targets()).await?;
                if rebuilt > 0 {
                    tracing::info!(rows = rebuilt, "the lookup index now holds the rules' join attributes");
                }
                if interrupted > 0 {
                    tracing::warn!(
                        steps = interrupted,
                        "run steps of an earlier runner that stopped without finishing are marked interrupted"
                    );
                }
                Ok::<(), RunnerError>(())
            })
            .await?;
        Ok(())
    }

    /// Keeps the connector's `%Parameters%` (read when it opened) in the store, once per runner,
    /// so that a preview, which connects to nothing, evaluates flows with the same values.
    async fn keep_parameters(&self, id: &ConnectorId) -> Result<(), RunnerError> {
        if self.parameters_kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(id) {
            return Ok(());
        }
        let texts: BTreeMap<&String, &str> = self
            .connector(id)?
            .info
            .parameters
            .iter()
            .filter_map(|(name, value)| match value {
                sync_expr::Value::Str(text) => Some((name, text.as_str())),
                _ => None,
            })
            .collect();
        let bytes = serde_json::to_vec(&texts).map_err(|err| StoreError::Backend(Box::new(err)))?;
        self.store.set_service_state(PARAMETERS, &id.0, &bytes).await?;
        self.parameters_kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id.clone());
        Ok(())
    }

    /// Runs one step on one connector and records it in the run history.
    pub async fn run_step(&self, connector: &ConnectorId, step: Step) -> Result<StepReport, RunnerError> {
        self.connector(connector)?;
        self.claim().await?;
        self.keep_parameters(connector).await?;
        let started = self.clock.unix_seconds();
        let timer = std::time::Instant::now();
        let run = self.store.run_start(connector, step.name(), started).await?;
        tracing::info!(connector = %connector, step = step.name(), "step started");
        self.progress.step_started(connector, step);
        let result = match step {
            Step::FullImport => import::run(self, connector, run, true).await,
            Step::DeltaImport => import::run(self, connector, run, false).await,
            Step::FullSync => sync::run(self, connector, true).await,
            Step::DeltaSync => sync::run(self, connector, false).await,
            Step::Export => export::run(self, connector).await,
        };
        let finished = self.clock.unix_seconds();
        let mut report = self.finish_step(connector, step, run, finished, result).await;
        if let Ok(report) = &mut report {
            report.elapsed = timer.elapsed();
            self.progress.step_finished(report);
        }
        report
    }

    async fn finish_step(
        &self,
        connector: &ConnectorId,
        step: Step,
        run: i64,
        finished: i64,
        result: Result<(StepStatus, RunCounts, String), RunnerError>,
    ) -> Result<StepReport, RunnerError> {
        match result {
            Ok((status, counts, detail)) => {
                self.store.run_finish(run, finished, status.name(), counts).await?;
                tracing::info!(connector = %connector, step = step.name(), status = status.name(), adds = counts.adds, updates = counts.updates, deletes = counts.deletes, errors = counts.errors, "step finished");
                Ok(StepReport { connector: connector.clone(), step, status, counts, detail, elapsed: std::time::Duration::ZERO })
            }
            Err(RunnerError::Connector { connector: name, source: ConnectorError::Unavailable(why) }) => {
                // The last committed page and its watermark stay; the next run continues.
                self.store.run_finish(run, finished, StepStatus::StoppedConnectorUnavailable.name(), RunCounts::default()).await?;
                Ok(StepReport {
                    connector: connector.clone(),
                    step,
                    status: StepStatus::StoppedConnectorUnavailable,
                    counts: RunCounts::default(),
                    detail: format!("{name}: {why}"),
                    elapsed: std::time::Duration::ZERO,
                })
            }
            Err(err) => {
                self.store.run_finish(run, finished, "failed", RunCounts::default()).await?;
                Err(err)
            }
        }
    }

    /// What a sync would do to one connector-space object, without changing anything (the sync
    /// step's own code over an overlay of the store). `parameters` adds `%Parameters%` values
    /// for the object's connector.
    pub async fn explain(
        &self,
        connector: &ConnectorId,
        dn: &str,
        parameters: BTreeMap<String, sync_expr::Value>,
    ) -> Result<Explanation, RunnerError> {
        sync::explain(self, connector, dn, parameters).await
    }

    /// The source connectors (AD forests, LDAP directories), in order.
    pub fn sources(&self) -> Vec<ConnectorId> {
        self.order.iter().filter(|id| self.connectors.get(*id).is_some_and(|c| c.info.role == Role::Source)).cloned().collect()
    }

    /// One connector's part of a cycle: its import, its sync, its export (when it exports) and
    /// the confirming import after an export that changed something.
    pub async fn run_connector_cycle(&self, id: &ConnectorId, initial: bool) -> Result<Vec<StepReport>, RunnerError> {
        let (import_step, sync_step) = if initial { (Step::FullImport, Step::FullSync) } else { (Step::DeltaImport, Step::DeltaSync) };
        let mut reports = vec![self.run_step(id, import_step).await?, self.run_step(id, sync_step).await?];
        if self.connector(id)?.export.is_some() {
            let report = self.run_step(id, Step::Export).await?;
            let changed = report.counts.adds + report.counts.updates + report.counts.deletes > 0;
            reports.push(report);
            if changed {
                reports.push(self.run_step(id, Step::DeltaImport).await?);
            }
        }
        Ok(reports)
    }

    /// One cycle in Entra's order: import sources, import targets, sync sources, sync targets,
    /// export targets, export sources, then a confirming delta import of every connector that exported.
    pub async fn run_cycle(&self, initial: bool) -> Result<Vec<StepReport>, RunnerError> {
        let by_role = |role: Role| {
            self.order.iter().filter(move |id| self.connectors.get(*id).is_some_and(|c| c.info.role == role)).cloned().collect::<Vec<_>>()
        };
        let (sources, targets) = (by_role(Role::Source), by_role(Role::Target));
        let (import_step, sync_step) = if initial { (Step::FullImport, Step::FullSync) } else { (Step::DeltaImport, Step::DeltaSync) };
        let mut reports = Vec::new();
        for id in sources.iter().chain(&targets) {
            reports.push(self.run_step(id, import_step).await?);
        }
        for id in sources.iter().chain(&targets) {
            reports.push(self.run_step(id, sync_step).await?);
        }
        let mut exported = Vec::new();
        for id in targets.iter().chain(&sources) {
            if self.connector(id)?.export.is_none() {
                continue;
            }
            let report = self.run_step(id, Step::Export).await?;
            if report.counts.adds + report.counts.updates + report.counts.deletes > 0 {
                exported.push(id.clone());
            }
            reports.push(report);
        }
        for id in exported {
            reports.push(self.run_step(&id, Step::DeltaImport).await?);
        }
        Ok(reports)
    }
}
