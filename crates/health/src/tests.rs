//! Tests of the report contract (wire form, checks, hostile text) and of the tenant's view of its servers.

use proptest::prelude::*;

use super::*;

fn report(id: &str, mode: Mode) -> SyncReport {
    SyncReport {
        version: REPORT_VERSION,
        server: Server { id: id.into(), host: "sync-1".into(), product_version: "0.3.0".into() },
        mode,
        interval_seconds: 1800,
        deletion_threshold: Some(500),
        cycle: Cycle {
            kind: CycleKind::Delta,
            started: 1_000,
            finished: 1_060,
            outcome: CycleOutcome::Success,
            message: None,
            steps: vec![StepSummary {
                connector: "ad".into(),
                step: StepKind::DeltaImport,
                status: StepStatus::Success,
                adds: 1,
                updates: 2,
                deletes: 0,
                errors: 0,
            }],
        },
    }
}

#[test]
fn the_wire_form_is_camel_case_and_round_trips() {
    let sent = report("a", Mode::Staging);
    let text = serde_json::to_string(&sent).unwrap();
    for field in
        ["\"intervalSeconds\":1800", "\"productVersion\"", "\"mode\":\"staging\"", "\"step\":\"deltaImport\"", "\"kind\":\"delta\""]
    {
        assert!(text.contains(field), "{field} in {text}");
    }
    assert!(!text.contains("message"), "no message when there is none: {text}");
    assert_eq!(serde_json::from_str::<SyncReport>(&text).unwrap(), sent);
}

#[test]
fn unknown_fields_and_values_are_refused() {
    let mut value = serde_json::to_value(report("a", Mode::Active)).unwrap();
    value["surprise"] = serde_json::json!(1);
    assert!(serde_json::from_value::<SyncReport>(value).is_err(), "unknown field");
    let mut value = serde_json::to_value(report("a", Mode::Active)).unwrap();
    value["mode"] = serde_json::json!("both");
    assert!(serde_json::from_value::<SyncReport>(value).is_err(), "unknown mode");
}

#[test]
fn checks_refuse_what_the_parser_lets_through() {
    assert_eq!(report("a", Mode::Active).check(), Ok(()));
    let mut later = report("a", Mode::Active);
    later.version = REPORT_VERSION + 1;
    assert_eq!(later.check(), Err(ReportProblem::Version(REPORT_VERSION + 1)));
    let mut blank = report(" ", Mode::Active);
    assert_eq!(blank.check(), Err(ReportProblem::Field("server.id")));
    blank.server.id = "x".repeat(MAX_TEXT + 1);
    assert_eq!(blank.check(), Err(ReportProblem::Field("server.id")));
    let mut control = report("a", Mode::Active);
    control.server.host = "evil\nhost".into();
    assert_eq!(control.check(), Err(ReportProblem::Field("server.host")));
    let mut backwards = report("a", Mode::Active);
    backwards.cycle.finished = backwards.cycle.started - 1;
    assert_eq!(backwards.check(), Err(ReportProblem::Field("cycle.finished")));
    let mut many = report("a", Mode::Active);
    many.cycle.steps = vec![many.cycle.steps[0].clone(); MAX_STEPS + 1];
    assert_eq!(many.check(), Err(ReportProblem::Field("cycle.steps")));
    let mut never = report("a", Mode::Active);
    never.interval_seconds = 0;
    assert_eq!(never.check(), Err(ReportProblem::Field("intervalSeconds")));
}

#[test]
fn the_tenant_view_of_its_servers() {
    let at = |report: SyncReport, received: i64| Received { report, received };
    assert_eq!(SyncServers::of(&[], 0), SyncServers { last_sync: None, sync_enabled: false, competing_active: vec![] });

    // A staging server alone: sync is not on, and nothing was synced.
    let staging = at(report("s", Mode::Staging), 5_000);
    let view = SyncServers::of(std::slice::from_ref(&staging), 5_000);
    assert_eq!((view.last_sync, view.sync_enabled), (None, false));

    // An active server beside it: its report's arrival is the last sync; no competition.
    let active = at(report("a", Mode::Active), 6_000);
    let view = SyncServers::of(&[staging.clone(), active.clone()], 6_100);
    assert_eq!((view.last_sync, view.sync_enabled, view.competing_active.len()), (Some(6_000), true, 0));

    // A second active server: both reporting within two intervals → competing.
    let second = at(report("b", Mode::Active), 6_500);
    let view = SyncServers::of(&[staging.clone(), second.clone(), active.clone()], 6_600);
    assert_eq!(view.competing_active, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(view.last_sync, Some(6_500));

    // The first one silent for more than two intervals (decommissioned): no longer competing.
    let later = 6_000 + 2 * 1800 + 1;
    assert!(!active.reporting(later) && second.reporting(later));
    assert!(SyncServers::of(&[staging, second, active], later).competing_active.is_empty());
}

proptest! {
    #[test]
    fn any_report_round_trips(
        id in "[a-z0-9-]{1,40}",
        host in "\\PC{0,60}",
        interval in 1u64..1_000_000,
        started in 0i64..4_000_000_000,
        length in 0i64..100_000,
        counts in proptest::collection::vec((0u64..1_000_000, 0u64..1_000_000), 0..12),
    ) {
        let mut sent = report(&id, Mode::Active);
        sent.server.host = host;
        sent.interval_seconds = interval;
        sent.cycle.started = started;
        sent.cycle.finished = started + length;
        sent.cycle.steps = counts
            .into_iter()
            .map(|(adds, errors)| StepSummary {
                connector: "ad".into(),
                step: StepKind::Export,
                status: StepStatus::CompletedErrors,
                adds,
                updates: 0,
                deletes: 0,
                errors,
            })
            .collect();
        let text = serde_json::to_string(&sent).unwrap();
        prop_assert_eq!(serde_json::from_str::<SyncReport>(&text).unwrap(), sent);
    }

    #[test]
    fn arbitrary_text_never_panics_the_parser(text in "\\PC{0,400}") {
        let _ = serde_json::from_str::<SyncReport>(&text);
    }
}
