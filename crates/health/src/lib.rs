//! Health monitoring's vocabulary, shared by the sync server and the tenant.
//!
//! After every cycle a sync server sends the tenant a [`SyncReport`] (what Entra's sync does:
//! the tenant's `onPremisesLastSyncDateTime` comes from it). One definition serves both ends,
//! with a version field, so they cannot drift. [`SyncServers`] is what the tenant concludes
//! from the last report of each server it has heard from: when the directory was last synced,
//! whether sync is on, and whether more than one server is exporting to it at once (Entra
//! allows one active server per tenant; the others must be in staging mode).
//!
//! Pure: times are Unix seconds given by the caller.

use serde::{Deserialize, Serialize};

pub mod alerts;

/// The report format this build writes. A tenant refuses reports of a later version.
pub const REPORT_VERSION: u32 = 1;

/// The most steps one report may carry (a cycle runs five steps per connector at most).
pub const MAX_STEPS: usize = 500;

/// Longest text field of a report (server name, connector id, message), in characters.
pub const MAX_TEXT: usize = 1024;

/// What a sync server tells the tenant after each cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncReport {
    /// [`REPORT_VERSION`] of the sender.
    pub version: u32,
    /// Which server.
    pub server: Server,
    /// Active (exports) or staging (imports and syncs, exports held).
    pub mode: Mode,
    /// Seconds between scheduled cycles.
    pub interval_seconds: u64,
    /// The deletion threshold in force (`None`: off).
    pub deletion_threshold: Option<u64>,
    /// The cycle just finished.
    pub cycle: Cycle,
}

/// A sync server's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// Stable for the server's store: generated once and kept there.
    pub id: String,
    /// The machine's host name.
    pub host: String,
    /// The `isthmus` version.
    pub product_version: String,
}

/// Whether a server exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Exports to the connected directories.
    Active,
    /// Staging mode: everything but the exports.
    Staging,
}

/// One finished cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cycle {
    /// Full (initial) or delta.
    pub kind: CycleKind,
    /// When it started, Unix seconds.
    pub started: i64,
    /// When it finished, Unix seconds.
    pub finished: i64,
    /// How it ended.
    pub outcome: CycleOutcome,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Its steps, in order.
    pub steps: Vec<StepSummary>,
}

/// Full or delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CycleKind {
    /// Full imports and full syncs.
    Full,
    /// Delta imports and delta syncs.
    Delta,
}

/// How a cycle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CycleOutcome {
    /// Every step ran and every object went through.
    Success,
    /// Every step ran; some objects had errors, or a step stopped (a directory unreachable,
    /// the deletion threshold, staging).
    CompletedWithIssues,
    /// The cycle stopped (an error that is not one object's).
    Failed,
}

/// A run-profile step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepKind {
    /// Full import.
    FullImport,
    /// Delta import.
    DeltaImport,
    /// Full synchronization.
    FullSync,
    /// Delta synchronization.
    DeltaSync,
    /// Export.
    Export,
}

/// How a step ended (the run history's statuses; the sync runner's own type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepStatus {
    /// Every object went through.
    Success,
    /// It ran to the end; some objects were rejected (per-object errors).
    CompletedErrors,
    /// Staging mode: the export was held.
    StagingNoExport,
    /// The export would delete more than the threshold allows: nothing exported.
    StoppedDeletionThreshold,
    /// The directory could not be reached; the last committed page stays, the next run goes on.
    StoppedConnectorUnavailable,
}

impl StepStatus {
    /// The name in run history, the CLI and the status channel.
    pub fn name(self) -> &'static str {
        match self {
            StepStatus::Success => "success",
            StepStatus::CompletedErrors => "completed-errors",
            StepStatus::StagingNoExport => "staging-no-export",
            StepStatus::StoppedDeletionThreshold => "stopped-deletion-threshold-exceeded",
            StepStatus::StoppedConnectorUnavailable => "stopped-connector-unavailable",
        }
    }

    /// Whether the step stopped before doing its work (a cycle reports it, a command fails).
    pub fn stopped(self) -> bool {
        matches!(self, StepStatus::StoppedDeletionThreshold | StepStatus::StoppedConnectorUnavailable)
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One step of a cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepSummary {
    /// The connector's id.
    pub connector: String,
    /// Which step.
    pub step: StepKind,
    /// How it ended.
    pub status: StepStatus,
    /// Objects added.
    pub adds: u64,
    /// Objects updated.
    pub updates: u64,
    /// Objects deleted.
    pub deletes: u64,
    /// Objects in error.
    pub errors: u64,
}

/// Why a report is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportProblem {
    /// A later format than this build reads.
    Version(u32),
    /// A field out of bounds.
    Field(&'static str),
}

impl std::fmt::Display for ReportProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReportProblem::Version(version) => write!(f, "report version {version} is newer than this tenant reads ({REPORT_VERSION})"),
            ReportProblem::Field(field) => write!(f, "{field} is missing, too long or out of range"),
        }
    }
}

impl SyncReport {
    /// Checks what a parser cannot: the version, text lengths, the step count, times in order.
    pub fn check(&self) -> Result<(), ReportProblem> {
        if self.version > REPORT_VERSION || self.version == 0 {
            return Err(ReportProblem::Version(self.version));
        }
        let text = |value: &str, field: &'static str, empty_ok: bool| {
            if (!empty_ok && value.trim().is_empty()) || value.chars().count() > MAX_TEXT || value.chars().any(char::is_control) {
                Err(ReportProblem::Field(field))
            } else {
                Ok(())
            }
        };
        text(&self.server.id, "server.id", false)?;
        text(&self.server.host, "server.host", true)?;
        text(&self.server.product_version, "server.productVersion", true)?;
        if let Some(message) = &self.cycle.message
            && message.chars().count() > MAX_TEXT
        {
            return Err(ReportProblem::Field("cycle.message"));
        }
        if self.cycle.steps.len() > MAX_STEPS {
            return Err(ReportProblem::Field("cycle.steps"));
        }
        for step in &self.cycle.steps {
            text(&step.connector, "cycle.steps.connector", false)?;
        }
        if self.cycle.finished < self.cycle.started || self.cycle.started < 0 {
            return Err(ReportProblem::Field("cycle.finished"));
        }
        if self.interval_seconds == 0 {
            return Err(ReportProblem::Field("intervalSeconds"));
        }
        Ok(())
    }
}

/// A report as the tenant keeps it: the last one of each server, and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Received {
    /// The report.
    pub report: SyncReport,
    /// When the tenant received it, Unix seconds (the tenant's clock, not the server's).
    pub received: i64,
}

impl Received {
    /// Whether the server is still reporting at `now`: its last report came within two of its
    /// intervals (Entra Connect Health's "sync service not reporting" condition, reversed).
    pub fn reporting(&self, now: i64) -> bool {
        let window = i64::try_from(self.report.interval_seconds.saturating_mul(2)).unwrap_or(i64::MAX);
        now.saturating_sub(self.received) <= window
    }
}

/// What the tenant concludes from the servers' last reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncServers {
    /// When an active server last reported a finished cycle (`onPremisesLastSyncDateTime`), by
    /// the tenant's clock: a server's clock may be off.
    pub last_sync: Option<i64>,
    /// Whether any active server has ever reported (`onPremisesSyncEnabled`).
    pub sync_enabled: bool,
    /// Ids of the active servers still reporting, when there is more than one (sorted):
    /// two servers exporting to one tenant overwrite each other.
    pub competing_active: Vec<String>,
}

impl SyncServers {
    /// From the last report of each server.
    pub fn of(servers: &[Received], now: i64) -> SyncServers {
        let active = || servers.iter().filter(|server| server.report.mode == Mode::Active);
        let last_sync = active().map(|server| server.received).max();
        let mut competing: Vec<String> =
            active().filter(|server| server.reporting(now)).map(|server| server.report.server.id.clone()).collect();
        competing.sort();
        competing.dedup();
        if competing.len() < 2 {
            competing.clear();
        }
        SyncServers { last_sync, sync_enabled: active().next().is_some(), competing_active: competing }
    }
}

#[cfg(test)]
mod tests;
