//! The shipped Prometheus rules (`deploy/prometheus/`): `promtool check rules` accepts them,
//! `promtool test rules` proves each fires on its condition and resolves, and every
//! `isthmus_sync_*` or `process_*` series they name is one the sync server exports (read from
//! the same registry `sync serve --metrics-listen` serves, after one recorded cycle).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

#[test]
fn the_shipped_rules_pass_promtool_and_fire_and_resolve() {
    let Some(promtool) = testkit::available(testkit::promtool()) else { return };
    for args in [["check", "rules", "isthmus-sync.rules.yml"], ["test", "rules", "isthmus-sync.rules.test.yml"]] {
        let output = Command::new(&promtool).args(args).current_dir(deploy()).output().unwrap();
        assert!(
            output.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_rules_name_only_series_the_sync_server_exports() {
    let rules = std::fs::read_to_string(deploy().join("isthmus-sync.rules.yml")).unwrap();
    let mut registry = telemetry::registry();
    let metrics = sync_runner::metrics::SyncMetrics::register(&mut registry);
    // One cycle recorded, so that every labelled family has a series.
    let report = sync_runner::StepReport {
        connector: model::ConnectorId("ad".into()),
        step: sync_runner::Step::DeltaImport,
        status: sync_runner::StepStatus::StoppedConnectorUnavailable,
        counts: store::RunCounts::default(),
        detail: String::new(),
        elapsed: std::time::Duration::from_millis(5),
    };
    let reports = [report];
    let cycle = sync_runner::scheduler::FinishedCycle {
        kind: sync_runner::status::CycleKind::Delta,
        started: 1,
        finished: 2,
        interval: std::time::Duration::from_secs(1800),
        deletion_threshold: Some(500),
        staging: false,
        pending_exports: &[(model::ConnectorId("ad".into()), 0)],
        result: Ok(&reports),
    };
    futures_executor(sync_runner::scheduler::CycleObserver::finished(&*metrics, cycle));
    let exported = telemetry::encode(&registry, telemetry::Format::PrometheusText).unwrap();
    let names: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("isthmus_sync_") || word.starts_with("process_"))
        .collect();
    assert!(names.len() >= 6, "{names:?}");
    for name in names {
        assert!(
            exported.lines().any(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))),
            "the rules name {name}, which the sync server does not export:\n{exported}"
        );
    }
}

/// Runs a future that never waits (the metrics observer records synchronously).
fn futures_executor(future: impl std::future::Future<Output = ()>) {
    let mut future = std::pin::pin!(future);
    let waker = std::task::Waker::noop();
    assert!(future.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready());
}
