//! Alerts, after Entra Connect Health's catalog for sync: the catalog as a data table
//! ([`CATALOG`]), the conditions that hold at an instant given what the tenant knows
//! ([`conditions`]), and the state machine that turns conditions into raised, still-open and
//! resolved alerts ([`advance`]). Pure: the time and every signal are given.
//!
//! Not yet wired to storage, notification or display (the tenant does that next); the
//! conditions that need signals the tenant does not have yet (pass-through agents, certificates,
//! authentication failures seen by the sync server) come with those signals.

use crate::{CycleOutcome, Mode, Received, StepKind, StepStatus, SyncServers};

/// How bad an alert is (Connect Health's stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Sync or sign-in is affected now.
    Error,
    /// Something will go wrong if left.
    Warning,
}

/// One kind of alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertKind {
    /// Stable identifier (API, CLI, notification subjects, Prometheus rules).
    pub id: &'static str,
    /// How bad.
    pub severity: Severity,
    /// The title shown to operators; `{subject}` is replaced by the alert's subject.
    pub title: &'static str,
    /// What to do.
    pub remedy: &'static str,
}

/// Every alert the tenant raises about sync.
pub const CATALOG: &[AlertKind] = &[
    AlertKind {
        id: "sync-not-reporting",
        severity: Severity::Error,
        title: "Sync server {subject} is not reporting",
        remedy: "No cycle report for two intervals: check that `isthmus sync serve` runs and can reach the tenant (`isthmus sync status`).",
    },
    AlertKind {
        id: "health-data-stale",
        severity: Severity::Warning,
        title: "Health data from sync server {subject} is older than 2 hours",
        remedy: "The last report is more than two hours old; with a longer interval this is expected, otherwise see sync-not-reporting.",
    },
    AlertKind {
        id: "cycle-failed",
        severity: Severity::Error,
        title: "The last sync cycle of server {subject} failed",
        remedy: "See the server's log and `isthmus history`; the next cycle retries.",
    },
    AlertKind {
        id: "import-failed",
        severity: Severity::Error,
        title: "Import from {subject} failed",
        remedy: "The directory could not be reached: check its servers, the network and the connector's account.",
    },
    AlertKind {
        id: "export-failed",
        severity: Severity::Error,
        title: "Export to {subject} failed",
        remedy: "The directory could not be reached during the export: check its servers, the network and the connector's account.",
    },
    AlertKind {
        id: "deletion-threshold-reached",
        severity: Severity::Error,
        title: "Export to {subject} was stopped: the accidental-delete threshold was reached",
        remedy: "Review the deletes with `isthmus plan`; if they are intended, run `isthmus sync run --allow-deletes` once or raise the threshold.",
    },
    AlertKind {
        id: "competing-active-servers",
        severity: Severity::Error,
        title: "More than one active sync server reports to this tenant ({subject})",
        remedy: "Only one server may export: put the others in staging mode (`[sync] staging = true`) or stop them.",
    },
    AlertKind {
        id: "tenant-authentication-failed",
        severity: Severity::Error,
        title: "The sync service could not sign in to the tenant ({subject})",
        remedy: "The sync app's credential was refused: check the secret the sync server uses (ISTHMUS_CLIENT_SECRET or its certificate) against the app's credentials (`isthmus tenant app list`).",
    },
    AlertKind {
        id: "password-sync-heartbeat-skipped",
        severity: Severity::Error,
        title: "Password hash synchronization heartbeat was skipped in the last 120 minutes",
        remedy: "Password hash sync has not called the tenant for two hours: check that `sync serve` runs with password_hash_sync and its replication rights.",
    },
];

/// The kind named `id`.
pub fn kind(id: &str) -> Option<&'static AlertKind> {
    CATALOG.iter().find(|kind| kind.id == id)
}

/// Seconds without a password hash sync heartbeat before the alert (Entra: 120 minutes).
pub const PASSWORD_SYNC_SILENCE: i64 = 120 * 60;

/// Seconds after which health data is stale (Entra: 2 hours).
pub const STALE_AFTER: i64 = 2 * 3600;

/// A condition that holds now: an alert kind about one subject (a server, a connector).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Condition {
    /// [`AlertKind::id`].
    pub id: &'static str,
    /// What it is about (`""` for the tenant as a whole).
    pub subject: String,
    /// Facts for people (which step, since when).
    pub detail: String,
}

/// What the tenant knows when it evaluates.
#[derive(Debug, Clone)]
pub struct Signals<'a> {
    /// Unix seconds.
    pub now: i64,
    /// Each server's last report.
    pub servers: &'a [Received],
    /// The last password hash sync call (heartbeat), Unix seconds.
    pub last_password_sync: Option<i64>,
    /// The sync app's sign-ins: its client id, its last refused and last accepted sign-in.
    pub sync_sign_in: Option<SignIns>,
}

/// An app's last refused and last accepted sign-in, Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIns {
    /// The app's client id.
    pub client_id: String,
    /// The last refused sign-in.
    pub refused: Option<i64>,
    /// The last accepted sign-in.
    pub accepted: Option<i64>,
}

/// The conditions that hold at `signals.now`, sorted.
pub fn conditions(signals: &Signals<'_>) -> Vec<Condition> {
    let mut found = Vec::new();
    let mut add = |id: &'static str, subject: &str, detail: String| found.push(Condition { id, subject: subject.to_string(), detail });
    for server in signals.servers.iter().filter(|server| server.report.mode == Mode::Active) {
        let id = &server.report.server.id;
        let silent = signals.now.saturating_sub(server.received);
        if !server.reporting(signals.now) {
            add("sync-not-reporting", id, format!("last report {silent} s ago (interval {} s)", server.report.interval_seconds));
            continue;
        }
        if silent > STALE_AFTER {
            add("health-data-stale", id, format!("last report {silent} s ago"));
        }
        let cycle = &server.report.cycle;
        if cycle.outcome == CycleOutcome::Failed {
            add("cycle-failed", id, cycle.message.clone().unwrap_or_default());
        }
        for step in &cycle.steps {
            let import = matches!(step.step, StepKind::FullImport | StepKind::DeltaImport);
            match step.status {
                StepStatus::StoppedConnectorUnavailable if import => add("import-failed", &step.connector, format!("server {id}")),
                StepStatus::StoppedConnectorUnavailable if step.step == StepKind::Export => {
                    add("export-failed", &step.connector, format!("server {id}"))
                }
                StepStatus::StoppedDeletionThreshold => add("deletion-threshold-reached", &step.connector, format!("server {id}")),
                _ => {}
            }
        }
    }
    let view = SyncServers::of(signals.servers, signals.now);
    if !view.competing_active.is_empty() {
        add("competing-active-servers", &view.competing_active.join(", "), String::new());
    }
    // The sync app refused since it last signed in: its credential no longer works.
    if let Some(sign_ins) = &signals.sync_sign_in
        && let Some(refused) = sign_ins.refused
        && sign_ins.accepted.is_none_or(|accepted| refused > accepted)
    {
        add("tenant-authentication-failed", &sign_ins.client_id, format!("refused {} s ago", signals.now.saturating_sub(refused)));
    }
    // Password hash sync is expected once it has called at all: silence after that is the alert.
    if let Some(last) = signals.last_password_sync
        && signals.now.saturating_sub(last) > PASSWORD_SYNC_SILENCE
    {
        add("password-sync-heartbeat-skipped", "", format!("last heartbeat {} s ago", signals.now.saturating_sub(last)));
    }
    found.sort();
    found.dedup_by(|a, b| a.id == b.id && a.subject == b.subject);
    found
}

/// An alert, open or resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// [`AlertKind::id`].
    pub id: String,
    /// What it is about.
    pub subject: String,
    /// From the catalog.
    pub severity: Severity,
    /// The catalog's title with the subject in it.
    pub title: String,
    /// The latest facts.
    pub detail: String,
    /// When it was first seen (raised), Unix seconds.
    pub raised: i64,
    /// When its condition was last seen to hold.
    pub last_seen: i64,
    /// When it resolved (its condition no longer held).
    pub resolved: Option<i64>,
}

/// What changed in one evaluation (what notifications are sent for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A condition began to hold.
    Raised(Alert),
    /// An open alert's condition no longer holds.
    Resolved(Alert),
}

/// One evaluation: the open alerts before, the conditions now → the open alerts after and the
/// changes. An open alert whose condition still holds stays open (last seen and detail
/// updated, no change reported: no notification storm); one whose condition is gone resolves.
pub fn advance(open: &[Alert], now_holding: &[Condition], now: i64) -> (Vec<Alert>, Vec<Change>) {
    let mut after = Vec::new();
    let mut changes = Vec::new();
    for alert in open {
        match now_holding.iter().find(|condition| condition.id == alert.id && condition.subject == alert.subject) {
            Some(condition) => after.push(Alert { last_seen: now, detail: condition.detail.clone(), ..alert.clone() }),
            None => changes.push(Change::Resolved(Alert { resolved: Some(now), ..alert.clone() })),
        }
    }
    for condition in now_holding {
        if open.iter().any(|alert| alert.id == condition.id && alert.subject == condition.subject) {
            continue;
        }
        let Some(kind) = kind(condition.id) else { continue };
        let alert = Alert {
            id: condition.id.to_string(),
            subject: condition.subject.clone(),
            severity: kind.severity,
            title: kind.title.replace("{subject}", &condition.subject),
            detail: condition.detail.clone(),
            raised: now,
            last_seen: now,
            resolved: None,
        };
        changes.push(Change::Raised(alert.clone()));
        after.push(alert);
    }
    (after, changes)
}
