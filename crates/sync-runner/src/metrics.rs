//! The sync server's metrics, kept by a cycle observer ([`SyncMetrics`]): cycles by kind and
//! outcome, steps by connector, step and status, objects changed per step, step durations, the
//! end of the last cycle and of the last successful one, the interval, the deletion threshold,
//! whether the last cycle stopped at it, and staging mode. Families of `prometheus-client`,
//! registered in the registry the service serves; labels are connector ids and step and status
//! names, never object data.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::StepStatus;
use crate::scheduler::{CycleObserver, FinishedCycle};
use crate::status::CycleKind;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CycleLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabels {
    connector: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    connector: String,
    step: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    connector: String,
    step: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    connector: String,
    step: &'static str,
    change: &'static str,
}

/// The sync server's metric families; tell it of each cycle as a [`CycleObserver`].
#[derive(Debug)]
pub struct SyncMetrics {
    cycles: Family<CycleLabels, Counter>,
    steps: Family<StatusLabels, Counter>,
    objects: Family<ChangeLabels, Counter>,
    durations: Family<StepLabels, Histogram>,
    pending: Family<ConnectorLabels, Gauge>,
    last_cycle: Gauge,
    last_success: Gauge,
    interval: Gauge,
    threshold: Gauge,
    threshold_exceeded: Gauge,
    staging: Gauge,
}

/// Step durations from a tenth of a second to about three hours.
fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.1, 3.0, 12)
}

impl SyncMetrics {
    /// Registers the families in `registry` (names prefixed `isthmus_sync_`).
    pub fn register(registry: &mut Registry) -> Arc<SyncMetrics> {
        let metrics = SyncMetrics {
            cycles: Family::default(),
            steps: Family::default(),
            objects: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
            pending: Family::default(),
            last_cycle: Gauge::default(),
            last_success: Gauge::default(),
            interval: Gauge::default(),
            threshold: Gauge::default(),
            threshold_exceeded: Gauge::default(),
            staging: Gauge::default(),
        };
        let sync = registry.sub_registry_with_prefix("isthmus_sync");
        sync.register("cycles", "Sync cycles finished, by kind (full, delta) and outcome", metrics.cycles.clone());
        sync.register("steps", "Run-profile steps finished, by connector, step and status", metrics.steps.clone());
        sync.register(
            "objects",
            "Objects a step changed, by connector, step and change (add, update, delete, error)",
            metrics.objects.clone(),
        );
        sync.register(
            "pending_exports",
            "Objects waiting to be exported after the last cycle, by connector (held in staging mode, in error, or left by a stopped export)",
            metrics.pending.clone(),
        );
        sync.register_with_unit(
            "step_duration",
            "How long steps ran, by connector and step",
            prometheus_client::registry::Unit::Seconds,
            metrics.durations.clone(),
        );
        for (name, help, gauge) in [
            ("last_cycle_end", "When the last cycle ended, Unix seconds (0: none yet)", &metrics.last_cycle),
            ("last_success_end", "When the last cycle whose every step succeeded ended, Unix seconds (0: none yet)", &metrics.last_success),
            ("interval", "Seconds between scheduled cycles", &metrics.interval),
        ] {
            sync.register_with_unit(name, help, prometheus_client::registry::Unit::Seconds, gauge.clone());
        }
        for (name, help, gauge) in [
            ("deletion_threshold", "The accidental-delete threshold in force (0: off)", &metrics.threshold),
            (
                "deletion_threshold_exceeded",
                "1 when an export of the last cycle stopped at the deletion threshold",
                &metrics.threshold_exceeded,
            ),
            ("staging", "1 in staging mode (exports held)", &metrics.staging),
        ] {
            sync.register(name, help, gauge.clone());
        }
        Arc::new(metrics)
    }

    fn record(&self, cycle: &FinishedCycle<'_>) {
        let kind = match cycle.kind {
            CycleKind::Full => "full",
            CycleKind::Delta => "delta",
        };
        let outcome = cycle.outcome();
        let label = match outcome {
            health::CycleOutcome::Success => "success",
            health::CycleOutcome::CompletedWithIssues => "completed-with-issues",
            health::CycleOutcome::Failed => "failed",
        };
        self.cycles.get_or_create(&CycleLabels { kind, outcome: label }).inc();
        self.last_cycle.set(cycle.finished);
        if outcome == health::CycleOutcome::Success {
            self.last_success.set(cycle.finished);
        }
        self.interval.set(i64::try_from(cycle.interval.as_secs()).unwrap_or(i64::MAX));
        self.threshold.set(cycle.deletion_threshold.and_then(|threshold| i64::try_from(threshold).ok()).unwrap_or(0));
        self.staging.set(i64::from(cycle.staging));
        let mut exceeded = false;
        for step in cycle.result.unwrap_or_default() {
            let name = step.step.name();
            let connector = step.connector.0.clone();
            exceeded |= step.status == StepStatus::StoppedDeletionThreshold;
            self.steps.get_or_create(&StatusLabels { connector: connector.clone(), step: name, status: step.status.name() }).inc();
            for (change, count) in
                [("add", step.counts.adds), ("update", step.counts.updates), ("delete", step.counts.deletes), ("error", step.counts.errors)]
            {
                self.objects.get_or_create(&ChangeLabels { connector: connector.clone(), step: name, change }).inc_by(count);
            }
            self.durations.get_or_create(&StepLabels { connector, step: name }).observe(step.elapsed.as_secs_f64());
        }
        self.threshold_exceeded.set(i64::from(exceeded));
        for (connector, count) in cycle.pending_exports {
            self.pending.get_or_create(&ConnectorLabels { connector: connector.0.clone() }).set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
    }
}

impl CycleObserver for SyncMetrics {
    fn counts_pending_exports(&self) -> bool {
        true
    }

    fn finished<'a>(&'a self, cycle: FinishedCycle<'a>) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        self.record(&cycle);
        Box::pin(async {})
    }
}
