//! What a running scheduler is doing, for `isthmus sync status`: idle or running, the cycle,
//! the step, how far it got (and so an estimate), the last cycle's outcome. The board is the
//! runner's [`Progress`] (forwarding to another, such as progress bars) and the scheduler's
//! switch (enabled or not).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use model::ConnectorId;
use serde::{Deserialize, Serialize};

use crate::{Progress, Step, StepReport};

/// Full or delta (the same type the reports to the tenant carry).
pub use health::CycleKind;

/// The step running now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepNow {
    /// Connector.
    pub connector: String,
    /// Step name (`full-import` …).
    pub step: String,
    /// Objects handled so far.
    pub done: u64,
    /// Objects the step will handle, once known (exports know it, imports do not).
    pub total: Option<u64>,
    /// When the step started (Unix seconds).
    pub started: i64,
}

/// One finished step of a cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepLine {
    /// Connector.
    pub connector: String,
    /// Step name.
    pub step: String,
    /// `success`, `completed-errors`, `stopped-…`.
    pub status: String,
    /// Adds.
    pub adds: u64,
    /// Updates.
    pub updates: u64,
    /// Deletes.
    pub deletes: u64,
    /// Objects in error.
    pub errors: u64,
    /// Why it stopped, when it did.
    pub detail: String,
}

impl From<&StepReport> for StepLine {
    fn from(report: &StepReport) -> Self {
        StepLine {
            connector: report.connector.0.clone(),
            step: report.step.name().to_string(),
            status: report.status.name().to_string(),
            adds: report.counts.adds,
            updates: report.counts.updates,
            deletes: report.counts.deletes,
            errors: report.counts.errors,
            detail: report.detail.clone(),
        }
    }
}

/// A cycle, running or finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cycle {
    /// Full or delta.
    pub kind: CycleKind,
    /// Only this connector's steps, when asked for one.
    pub connector: Option<String>,
    /// Unix seconds.
    pub started: i64,
    /// Unix seconds, once finished.
    pub finished: Option<i64>,
    /// `running`, `success`, `completed-errors` (objects rejected), `stopped` (a step
    /// stopped: threshold, connector unavailable) or `failed`.
    pub outcome: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Steps finished so far.
    pub steps: Vec<StepLine>,
    /// The step running now.
    pub current: Option<StepNow>,
}

/// Everything `sync status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The serving process.
    pub pid: u32,
    /// The version of the serving binary.
    pub version: String,
    /// `running` (a cycle) or `idle`.
    pub state: String,
    /// Whether scheduled (and near-real-time) cycles run; on-demand ones always do.
    pub scheduler_enabled: bool,
    /// Seconds between scheduled cycles.
    pub interval_seconds: u64,
    /// The accidental-delete threshold in force (`None`: off).
    pub deletion_threshold: Option<u64>,
    /// When the next scheduled cycle starts (Unix seconds), if one is scheduled.
    pub next_cycle: Option<i64>,
    /// Cycles run since the server started.
    pub cycles: u64,
    /// The running cycle.
    pub current: Option<Cycle>,
    /// The last finished cycle.
    pub last: Option<Cycle>,
}

struct Inner {
    interval: Duration,
    threshold: Option<u64>,
    next_cycle: Option<i64>,
    cycles: u64,
    current: Option<Cycle>,
    last: Option<Cycle>,
}

/// The live status, shared by the scheduler, the runner (as its progress) and the control channel.
pub struct Board {
    inner: Mutex<Inner>,
    enabled: AtomicBool,
    changed: tokio::sync::Notify,
    forward: std::sync::Arc<dyn Progress>,
    version: String,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
}

impl Board {
    /// A board that also tells `forward` (progress bars) how steps advance; `version` is the
    /// serving binary's.
    pub fn new(forward: std::sync::Arc<dyn Progress>, version: &str) -> Self {
        Board {
            inner: Mutex::new(Inner {
                interval: crate::scheduler::DEFAULT_INTERVAL,
                threshold: None,
                next_cycle: None,
                cycles: 0,
                current: None,
                last: None,
            }),
            enabled: AtomicBool::new(true),
            changed: tokio::sync::Notify::new(),
            forward,
            version: version.to_string(),
        }
    }

    fn with<T>(&self, work: impl FnOnce(&mut Inner) -> T) -> T {
        work(&mut self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Whether scheduled cycles run.
    pub fn scheduler_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// Turns scheduled cycles on or off (a running cycle finishes either way).
    pub fn set_scheduler_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Resolves when the switch changed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    pub(crate) fn set_interval(&self, interval: Duration) {
        self.with(|inner| inner.interval = interval);
    }

    pub(crate) fn set_threshold(&self, threshold: Option<u64>) {
        self.with(|inner| inner.threshold = threshold);
    }

    pub(crate) fn set_next_cycle(&self, at: Option<tokio::time::Instant>) {
        let unix = at.map(|at| unix_now() + at.saturating_duration_since(tokio::time::Instant::now()).as_secs() as i64);
        self.with(|inner| inner.next_cycle = unix);
    }

    pub(crate) fn cycle_started(&self, kind: CycleKind, connector: Option<ConnectorId>) {
        self.with(|inner| {
            inner.current = Some(Cycle {
                kind,
                connector: connector.map(|id| id.0),
                started: unix_now(),
                finished: None,
                outcome: "running".into(),
                error: None,
                steps: Vec::new(),
                current: None,
            });
        });
    }

    pub(crate) fn cycle_finished(&self, result: Result<&[StepReport], String>) {
        self.with(|inner| {
            let Some(mut cycle) = inner.current.take() else { return };
            cycle.finished = Some(unix_now());
            cycle.current = None;
            match result {
                Ok(reports) => {
                    cycle.steps = reports.iter().map(StepLine::from).collect();
                    cycle.outcome = outcome(reports).to_string();
                }
                Err(why) => {
                    cycle.outcome = "failed".into();
                    cycle.error = Some(why);
                }
            }
            inner.cycles += 1;
            inner.last = Some(cycle);
        });
    }

    /// A copy of the status now.
    pub fn snapshot(&self) -> Status {
        self.with(|inner| Status {
            pid: std::process::id(),
            version: self.version.clone(),
            state: if inner.current.is_some() { "running" } else { "idle" }.into(),
            scheduler_enabled: self.scheduler_enabled(),
            interval_seconds: inner.interval.as_secs(),
            deletion_threshold: inner.threshold,
            next_cycle: inner.next_cycle,
            cycles: inner.cycles,
            current: inner.current.clone(),
            last: inner.last.clone(),
        })
    }
}

/// A cycle's outcome from its steps: `stopped` when a step stopped, `completed-errors` when
/// objects were rejected, else `success`.
pub fn outcome(reports: &[StepReport]) -> &'static str {
    if reports.iter().any(|report| report.status.stopped()) {
        "stopped"
    } else if reports.iter().any(|report| report.counts.errors > 0) {
        "completed-errors"
    } else {
        "success"
    }
}

impl Progress for Board {
    fn step_started(&self, connector: &ConnectorId, step: Step) {
        self.with(|inner| {
            if let Some(cycle) = &mut inner.current {
                cycle.current =
                    Some(StepNow { connector: connector.0.clone(), step: step.name().into(), done: 0, total: None, started: unix_now() });
            }
        });
        self.forward.step_started(connector, step);
    }

    fn total(&self, total: u64) {
        self.with(|inner| {
            if let Some(now) = inner.current.as_mut().and_then(|cycle| cycle.current.as_mut()) {
                now.total = Some(total);
            }
        });
        self.forward.total(total);
    }

    fn advanced(&self, count: u64) {
        self.with(|inner| {
            if let Some(now) = inner.current.as_mut().and_then(|cycle| cycle.current.as_mut()) {
                now.done += count;
            }
        });
        self.forward.advanced(count);
    }

    fn step_finished(&self, report: &StepReport) {
        self.with(|inner| {
            if let Some(cycle) = &mut inner.current {
                cycle.current = None;
                cycle.steps.push(StepLine::from(report));
            }
        });
        self.forward.step_finished(report);
    }
}
