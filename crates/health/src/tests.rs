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

mod alerting {
    use super::*;
    use crate::alerts::{self, Change, Condition, Signals};

    fn active(id: &str, received: i64) -> Received {
        Received { report: report(id, Mode::Active), received }
    }

    fn ids(conditions: &[Condition]) -> Vec<(&str, &str)> {
        conditions.iter().map(|condition| (condition.id, condition.subject.as_str())).collect()
    }

    #[test]
    fn every_condition_names_a_catalog_entry_with_a_remedy() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in alerts::CATALOG {
            assert!(seen.insert(kind.id), "{} twice", kind.id);
            assert!(!kind.remedy.is_empty() && !kind.title.is_empty(), "{}", kind.id);
        }
        assert!(alerts::kind("sync-not-reporting").is_some() && alerts::kind("nope").is_none());
    }

    #[test]
    fn conditions_from_what_the_tenant_knows() {
        let quiet = Signals { now: 10_000, servers: &[], last_password_sync: None, sync_sign_in: None };
        assert!(alerts::conditions(&quiet).is_empty(), "nothing known, nothing wrong");

        // A healthy server reporting on time.
        let healthy = [active("a", 9_000)];
        assert!(
            alerts::conditions(&Signals { now: 10_000, servers: &healthy, last_password_sync: Some(9_500), sync_sign_in: None }).is_empty()
        );

        // Silent for more than two intervals (2 × 1800 s): not reporting (and nothing else about it).
        let silent = [active("a", 10_000 - 3_601)];
        let found = alerts::conditions(&Signals { now: 10_000, servers: &silent, last_password_sync: None, sync_sign_in: None });
        assert_eq!(ids(&found), vec![("sync-not-reporting", "a")]);

        // A long interval (3 h): reporting, but the data is older than 2 hours.
        let mut slow = active("a", 10_000 - 7_300);
        slow.report.interval_seconds = 3 * 3600;
        let found = alerts::conditions(&Signals { now: 10_000, servers: &[slow], last_password_sync: None, sync_sign_in: None });
        assert_eq!(ids(&found), vec![("health-data-stale", "a")]);

        // The last cycle's steps: an unreachable AD on import, the cloud export at the threshold.
        let mut troubled = active("a", 9_900);
        let step = |connector: &str, step: StepKind, status: StepStatus| StepSummary {
            connector: connector.into(),
            step,
            status,
            adds: 0,
            updates: 0,
            deletes: 0,
            errors: 0,
        };
        troubled.report.cycle.outcome = CycleOutcome::CompletedWithIssues;
        troubled.report.cycle.steps = vec![
            step("ad", StepKind::DeltaImport, StepStatus::StoppedConnectorUnavailable),
            step("tenant", StepKind::Export, StepStatus::StoppedDeletionThreshold),
            step("ldap", StepKind::Export, StepStatus::StoppedConnectorUnavailable),
            step("hr", StepKind::FullSync, StepStatus::CompletedErrors),
        ];
        let found = alerts::conditions(&Signals { now: 10_000, servers: &[troubled], last_password_sync: None, sync_sign_in: None });
        assert_eq!(ids(&found), vec![("deletion-threshold-reached", "tenant"), ("export-failed", "ldap"), ("import-failed", "ad")]);

        // A failed cycle; two active servers; a staging one is neither.
        let mut failed = active("a", 9_900);
        failed.report.cycle.outcome = CycleOutcome::Failed;
        failed.report.cycle.message = Some("store unreachable".into());
        let standby = Received { report: report("s", Mode::Staging), received: 1 };
        let found = alerts::conditions(&Signals {
            now: 10_000,
            servers: &[failed, active("b", 9_950), standby],
            last_password_sync: None,
            sync_sign_in: None,
        });
        assert_eq!(ids(&found), vec![("competing-active-servers", "a, b"), ("cycle-failed", "a")]);
        assert_eq!(found[1].detail, "store unreachable");

        // Password hash sync silent for more than 120 minutes after it had called.
        let found =
            alerts::conditions(&Signals { now: 10_000, servers: &healthy, last_password_sync: Some(10_000 - 7_201), sync_sign_in: None });
        assert_eq!(ids(&found), vec![("password-sync-heartbeat-skipped", "")]);

        // The sync app refused after its last accepted sign-in; accepted again, nothing.
        let sign_ins = |refused, accepted| Some(alerts::SignIns { client_id: "app".into(), refused, accepted });
        let check = |sign_in_state| {
            alerts::conditions(&Signals { now: 10_000, servers: &healthy, last_password_sync: None, sync_sign_in: sign_in_state })
        };
        assert_eq!(ids(&check(sign_ins(Some(9_000), Some(8_000)))), vec![("tenant-authentication-failed", "app")]);
        assert_eq!(ids(&check(sign_ins(Some(9_000), None))), vec![("tenant-authentication-failed", "app")]);
        assert!(check(sign_ins(Some(9_000), Some(9_500))).is_empty());
        assert!(check(sign_ins(None, Some(9_500))).is_empty());
    }

    #[test]
    fn alerts_raise_once_stay_open_and_resolve_when_the_cause_goes() {
        let holding = |detail: &str| vec![Condition { id: "import-failed", subject: "ad".into(), detail: detail.into() }];
        let (open, changes) = alerts::advance(&[], &holding("first"), 100);
        assert_eq!(open.len(), 1);
        assert!(matches!(&changes[..], [Change::Raised(alert)] if alert.title == "Import from ad failed" && alert.raised == 100));

        // Still holding: no new change (no notification storm), last seen and detail move on.
        let (open, changes) = alerts::advance(&open, &holding("again"), 200);
        assert!(changes.is_empty());
        assert_eq!((open[0].raised, open[0].last_seen, open[0].detail.as_str()), (100, 200, "again"));

        // Gone: resolved at that time, and no longer open.
        let (after, changes) = alerts::advance(&open, &[], 300);
        assert!(after.is_empty());
        assert!(matches!(&changes[..], [Change::Resolved(alert)] if alert.resolved == Some(300) && alert.raised == 100));

        // Back again later: a new alert.
        let (_, changes) = alerts::advance(&after, &holding("third"), 400);
        assert!(matches!(&changes[..], [Change::Raised(alert)] if alert.raised == 400));

        // A condition of an unknown kind is ignored rather than raised half-described.
        let unknown = [Condition { id: "made-up", subject: String::new(), detail: String::new() }];
        assert_eq!(alerts::advance(&[], &unknown, 1), (vec![], vec![]));
    }
}
