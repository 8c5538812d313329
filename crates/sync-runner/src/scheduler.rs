//! The scheduler: an initial cycle, then a delta cycle every interval (Entra's default: 30
//! minutes), cycles on demand, a near-real-time mode that polls the sources and runs a cycle as
//! soon as they change, and periodic side tasks (password hash sync) between cycles — until
//! shutdown. A failed cycle is logged and retried at the next tick. Requests that arrive while
//! a cycle runs are merged into one next cycle. What it is doing is published on a
//! [`Board`](crate::status::Board) for `isthmus sync status`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use model::ConnectorId;
use store::Store;
use tokio::sync::mpsc;

use crate::status::{Board, CycleKind};
use crate::{Runner, Step};

/// Entra's default cycle interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// A request for a cycle now (`isthmus sync start`, an admin button).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleRequest {
    /// A full ("initial") cycle rather than a delta one.
    pub initial: bool,
    /// Only this connector's steps; `None`: every connector.
    pub connector: Option<ConnectorId>,
}

/// Work done between cycles on its own period (password hash sync every 2 minutes).
pub trait SideTask: Send + Sync {
    /// How often it runs.
    fn every(&self) -> Duration;
    /// One run; `reason` says why (schedule, after the initial cycle, an on-premises change).
    /// Failures are the task's to report.
    fn run<'a>(&'a self, reason: &'static str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// The interval between cycles and the deletion threshold (`None`: off).
pub type Timing = (Duration, Option<u64>);

/// Settings read again before every cycle (the tenant may change them).
pub trait Settings: Send + Sync {
    /// The timing to use now, or `None` to keep the current one.
    fn refresh(&self) -> Pin<Box<dyn Future<Output = Option<Timing>> + Send + '_>>;
}

/// A finished cycle, as the scheduler tells its observers.
#[derive(Debug)]
pub struct FinishedCycle<'a> {
    /// Full or delta.
    pub kind: CycleKind,
    /// When it started and finished, Unix seconds (the runner's clock).
    pub started: i64,
    /// See `started`.
    pub finished: i64,
    /// The interval between scheduled cycles now.
    pub interval: Duration,
    /// The deletion threshold in force.
    pub deletion_threshold: Option<u64>,
    /// Staging mode.
    pub staging: bool,
    /// Each connector's objects waiting to be exported after the cycle (counted only when an
    /// observer asks for them: see [`CycleObserver::counts_pending_exports`]).
    pub pending_exports: &'a [(ConnectorId, u64)],
    /// Its steps, or why it failed.
    pub result: Result<&'a [crate::StepReport], &'a str>,
}

impl<'a> FinishedCycle<'a> {
    /// A cycle `runner` just ran from `started` (its clock): finished now, with the runner's
    /// threshold and staging mode as they are.
    pub fn new<S: Store>(
        runner: &Runner<S>,
        kind: CycleKind,
        started: i64,
        interval: Duration,
        pending_exports: &'a [(ConnectorId, u64)],
        result: Result<&'a [crate::StepReport], &'a str>,
    ) -> FinishedCycle<'a> {
        FinishedCycle {
            kind,
            started,
            finished: runner.now(),
            interval,
            deletion_threshold: runner.deletion_threshold(),
            staging: runner.staging(),
            pending_exports,
            result,
        }
    }

    /// Success (every step succeeded), completed with issues, or failed.
    pub fn outcome(&self) -> health::CycleOutcome {
        match self.result {
            Err(_) => health::CycleOutcome::Failed,
            Ok(reports) if reports.iter().all(|report| report.status == crate::StepStatus::Success) => health::CycleOutcome::Success,
            Ok(_) => health::CycleOutcome::CompletedWithIssues,
        }
    }

    /// The report a sync server sends the tenant (`health::SyncReport`) for this cycle.
    pub fn report(&self, server: health::Server) -> health::SyncReport {
        let steps: Vec<health::StepSummary> = self
            .result
            .map(|reports| {
                reports
                    .iter()
                    .map(|report| health::StepSummary {
                        connector: report.connector.0.clone(),
                        step: match report.step {
                            Step::FullImport => health::StepKind::FullImport,
                            Step::DeltaImport => health::StepKind::DeltaImport,
                            Step::FullSync => health::StepKind::FullSync,
                            Step::DeltaSync => health::StepKind::DeltaSync,
                            Step::Export => health::StepKind::Export,
                        },
                        status: report.status,
                        adds: report.counts.adds,
                        updates: report.counts.updates,
                        deletes: report.counts.deletes,
                        errors: report.counts.errors,
                    })
                    .take(health::MAX_STEPS)
                    .collect()
            })
            .unwrap_or_default();
        let outcome = self.outcome();
        health::SyncReport {
            version: health::REPORT_VERSION,
            server,
            mode: if self.staging { health::Mode::Staging } else { health::Mode::Active },
            interval_seconds: self.interval.as_secs().max(1),
            deletion_threshold: self.deletion_threshold,
            cycle: health::Cycle {
                kind: self.kind,
                started: self.started,
                finished: self.finished.max(self.started),
                outcome,
                message: self.result.err().map(|message| message.chars().take(health::MAX_TEXT).collect()),
                steps,
            },
        }
    }
}

/// Told of every finished cycle (to report it to the tenant). Failures are the observer's to
/// log; a cycle never fails because of one.
pub trait CycleObserver: Send + Sync {
    /// Whether it needs [`FinishedCycle::pending_exports`] (counting them reads every pending
    /// export's summary, so it is done only for an observer that asks).
    fn counts_pending_exports(&self) -> bool {
        false
    }

    /// After `cycle`.
    fn finished<'a>(&'a self, cycle: FinishedCycle<'a>) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// How the scheduler runs.
pub struct Schedule {
    /// Between scheduled delta cycles.
    pub interval: Duration,
    /// Near-real-time mode: delta-import the sources this often; a change starts a cycle.
    pub near_real_time: Option<Duration>,
    /// Side tasks (each on its own period; also run after the initial cycle and, in
    /// near-real-time mode, when the sources changed).
    pub side_tasks: Vec<Arc<dyn SideTask>>,
    /// Where the interval and threshold come from, re-read before every cycle.
    pub settings: Option<Arc<dyn Settings>>,
    /// Told every finished cycle's reports (to print them).
    pub on_cycle: Option<fn(&[crate::StepReport])>,
    /// Told of every finished cycle, after it (to report it to the tenant).
    pub observers: Vec<Arc<dyn CycleObserver>>,
}

impl Schedule {
    /// Cycles every `interval`, nothing else.
    pub fn every(interval: Duration) -> Self {
        Schedule { interval, near_real_time: None, side_tasks: Vec::new(), settings: None, on_cycle: None, observers: Vec::new() }
    }
}

/// Runs cycles until `shutdown` resolves; returns how many cycles ran.
pub async fn run<S: Store>(
    runner: &Runner<S>,
    mut schedule: Schedule,
    board: Arc<Board>,
    mut requests: mpsc::Receiver<CycleRequest>,
    shutdown: impl Future<Output = ()>,
) -> u64 {
    tokio::pin!(shutdown);
    let sources: Vec<ConnectorId> = runner.sources();
    let mut cycles = 0u64;
    let mut requests_open = true;
    let mut next_cycle = tokio::time::Instant::now();
    let mut next_side: Vec<tokio::time::Instant> =
        schedule.side_tasks.iter().map(|task| tokio::time::Instant::now() + task.every()).collect();
    let mut next_poll = schedule.near_real_time.map(|poll| tokio::time::Instant::now() + poll);
    board.set_interval(schedule.interval);
    board.set_threshold(runner.deletion_threshold());
    loop {
        board.set_next_cycle(if board.scheduler_enabled() || cycles == 0 { Some(next_cycle) } else { None });
        let now = tokio::time::Instant::now();
        // Side tasks that are due (never before the initial cycle: they need its objects).
        if cycles > 0 {
            for (task, next) in schedule.side_tasks.iter().zip(next_side.iter_mut()) {
                if now >= *next {
                    task.run("schedule").await;
                    *next = tokio::time::Instant::now() + task.every();
                }
            }
        }
        let scheduled = cycles == 0 || (board.scheduler_enabled() && now >= next_cycle);
        let mut request = scheduled.then_some(CycleRequest { initial: cycles == 0, connector: None });
        if request.is_none()
            && board.scheduler_enabled()
            && let (Some(poll), Some(at)) = (schedule.near_real_time, next_poll)
            && now >= at
        {
            // A cheap look at the sources; a change makes a cycle due at once.
            let mut changed = false;
            for source in &sources {
                match runner.run_step(source, Step::DeltaImport).await {
                    Ok(report) if report.counts.adds + report.counts.updates + report.counts.deletes > 0 => changed = true,
                    Ok(_) => {}
                    Err(err) => tracing::warn!(connector = source.0, "near-real-time poll: {err}"),
                }
            }
            next_poll = Some(tokio::time::Instant::now() + poll);
            if changed {
                tracing::info!("changes on-premises; running a cycle now");
                // A changed password shows as a changed pwdLastSet: its hash goes first.
                for (task, next) in schedule.side_tasks.iter().zip(next_side.iter_mut()) {
                    task.run("on-premises change").await;
                    *next = tokio::time::Instant::now() + task.every();
                }
                request = Some(CycleRequest { initial: false, connector: None });
            }
        }
        if request.is_none() {
            let mut wake = next_cycle;
            if !board.scheduler_enabled() {
                wake = tokio::time::Instant::now() + Duration::from_secs(3600);
            }
            if let Some(at) = next_poll.filter(|_| board.scheduler_enabled()) {
                wake = wake.min(at);
            }
            for next in &next_side {
                wake = wake.min(*next);
            }
            tokio::select! {
                _ = &mut shutdown => return cycles,
                _ = tokio::time::sleep_until(wake) => continue,
                _ = board.changed() => continue,
                received = requests.recv(), if requests_open => match received {
                    Some(first) => {
                        // Merge requests that queued up: one cycle serves them all.
                        let mut merged = first;
                        while let Ok(more) = requests.try_recv() {
                            merged.initial |= more.initial;
                            if merged.connector != more.connector {
                                merged.connector = None;
                            }
                        }
                        request = Some(merged);
                    }
                    None => {
                        requests_open = false;
                        continue;
                    }
                },
            }
        }
        let Some(request) = request else { continue };
        if let Some(settings) = &schedule.settings
            && let Some((interval, threshold)) = settings.refresh().await
        {
            if interval != schedule.interval {
                tracing::info!(minutes = interval.as_secs() / 60, "cycle interval changed by the tenant's settings");
                schedule.interval = interval;
                board.set_interval(interval);
            }
            runner.set_deletion_threshold(threshold);
            board.set_threshold(threshold);
        }
        let initial = request.initial || cycles == 0;
        let kind = if initial { CycleKind::Full } else { CycleKind::Delta };
        board.cycle_started(kind, request.connector.clone());
        let started = runner.now();
        let result = match &request.connector {
            Some(connector) => runner.run_connector_cycle(connector, initial).await,
            None => runner.run_cycle(initial).await,
        };
        match &result {
            Ok(reports) => {
                if let Some(print) = schedule.on_cycle {
                    print(reports);
                }
                let errors: u64 = reports.iter().map(|report| report.counts.errors).sum();
                tracing::info!(cycle = cycles + 1, initial, steps = reports.len(), errors, "cycle finished");
            }
            Err(err) => tracing::error!(cycle = cycles + 1, "cycle failed: {err}"),
        }
        let finished = result.as_deref().map_err(ToString::to_string);
        let pending_exports = if schedule.observers.iter().any(|observer| observer.counts_pending_exports()) {
            runner.pending_exports().await
        } else {
            Vec::new()
        };
        for observer in &schedule.observers {
            let cycle =
                FinishedCycle::new(runner, kind, started, schedule.interval, &pending_exports, finished.as_deref().map_err(String::as_str));
            observer.finished(cycle).await;
        }
        board.cycle_finished(finished);
        if cycles == 0 {
            for (task, next) in schedule.side_tasks.iter().zip(next_side.iter_mut()) {
                task.run("initial").await;
                *next = tokio::time::Instant::now() + task.every();
            }
        }
        cycles += 1;
        if request.connector.is_none() {
            next_cycle = tokio::time::Instant::now() + schedule.interval;
        }
    }
}

/// An ISO 8601 duration as Graph writes `synchronizationInterval` (`PT30M`, `PT1H`, `P1D`,
/// `PT1H30M`, `PT90S`); weeks, months and years are refused.
pub fn parse_iso_duration(text: &str) -> Option<Duration> {
    let rest = text.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((days, time)) => (days, Some(time)),
        None => (rest, None),
    };
    let mut seconds = 0u64;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, u64)]| -> Option<()> {
        let mut number = String::new();
        let mut allowed = units.iter();
        for c in part.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let (_, scale) = allowed.by_ref().find(|(unit, _)| *unit == c)?;
            let value: u64 = number.parse().ok()?;
            seconds = seconds.checked_add(value.checked_mul(*scale)?)?;
            number.clear();
            any = true;
        }
        number.is_empty().then_some(())
    };
    take(days, &[('D', 86_400)])?;
    if let Some(time) = time {
        if time.is_empty() {
            return None;
        }
        take(time, &[('H', 3600), ('M', 60), ('S', 1)])?;
    }
    any.then(|| Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::parse_iso_duration;
    use std::time::Duration;

    #[test]
    fn graph_intervals_parse_and_nonsense_does_not() {
        assert_eq!(parse_iso_duration("PT30M"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_iso_duration("PT1H30M"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_iso_duration("P1D"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_iso_duration("P1DT2S"), Some(Duration::from_secs(86_402)));
        for bad in ["", "P", "PT", "30M", "PT30", "PTM", "PT30M1H", "P1W", "PT-5M", "PT99999999999999999999H"] {
            assert_eq!(parse_iso_duration(bad), None, "{bad}");
        }
    }
}
