//! Whole-runner scenarios: the real runner over SQLite (in memory) and two in-memory
//! directories, through full cycles: provisioning, idempotent re-runs, deltas, deletes,
//! the deletion threshold, staging mode, rejected exports, connector outages, join
//! ambiguity, scope changes and hard matching.
#![allow(clippy::expect_used, reason = "test code")]

use connector_api::Role;
use connector_memory::MemoryDirectory;
use model::{AttrChange, AttrValue, Attributes, ConnectorId, ErrorStage};
use store::{CsQuery, Store};
use store_sqlite::SqliteStore;
use sync_rules::RuleSet;
use sync_runner::scheduler::Schedule;
use sync_runner::{Runner, RunnerConfig, Step, StepReport};

const RULES: &str = r#"
[[rule]]
name = "In from source - Join"
direction = "inbound"
connector = "src"
source_type = "user"
target_type = "person"
link_type = "provision"
precedence = 10
scope = [[{ attribute = "status", operator = "NOTEQUAL", value = "hidden" }]]
join = [[{ source = "employeeID", target = "employeeID" }]]
[[rule.flow]]
target = "employeeID"
direct = "employeeID"
[[rule.flow]]
target = "displayName"
direct = "displayName"
[[rule.flow]]
target = "mail"
expression = 'LCase([mail])'
[[rule.flow]]
target = "manager"
direct = "manager"

[[rule]]
name = "In from target - Join"
direction = "inbound"
connector = "dst"
source_type = "account"
target_type = "person"
link_type = "join"
precedence = 20
join = [[{ source = "employeeNumber", target = "employeeID", case_sensitive = true }]]

[[rule]]
name = "Out to target - Join"
direction = "outbound"
connector = "dst"
source_type = "person"
target_type = "account"
link_type = "provision"
precedence = 10
join = [[{ source = "employeeID", target = "employeeNumber", case_sensitive = true }]]
[[rule.flow]]
target = "dn"
expression = '"CN=" & [employeeID] & ",OU=Cloud"'
[[rule.flow]]
target = "employeeNumber"
direct = "employeeID"
[[rule.flow]]
target = "displayName"
direct = "displayName"
[[rule.flow]]
target = "mail"
direct = "mail"
[[rule.flow]]
target = "manager"
direct = "manager"
"#;

struct World {
    runner: Runner<SqliteStore>,
    src: MemoryDirectory,
    dst: MemoryDirectory,
}

async fn world(config: RunnerConfig) -> World {
    let store = SqliteStore::memory().expect("store");
    store.migrate().await.expect("migrate");
    let mut runner = Runner::new(store, RuleSet::parse(RULES).expect("rules"), config);
    let (src, dst) = (MemoryDirectory::new(), MemoryDirectory::new());
    runner.add_connector(src.connector("src", Role::Source, 2));
    runner.add_connector(dst.connector("dst", Role::Target, 2));
    World { runner, src, dst }
}

fn person(id: &str, name: &str, manager: Option<&str>) -> Attributes {
    let mut attributes = Attributes::new()
        .with("employeeID", AttrValue::string(id))
        .with("displayName", AttrValue::string(name))
        .with("mail", AttrValue::string(format!("{id}@Corp.Example")));
    if let Some(manager) = manager {
        attributes.set("manager", vec![AttrValue::Reference(manager.into())]);
    }
    attributes
}

fn seed(src: &MemoryDirectory) -> Vec<model::Anchor> {
    vec![
        src.put("CN=E1,OU=Staff", "user", person("E1", "Ann Boss", None)),
        src.put("CN=E2,OU=Staff", "user", person("E2", "Bob Report", Some("CN=E1,OU=Staff"))),
        src.put("CN=E3,OU=Staff", "user", person("E3", "Cleo Third", None)),
    ]
}

fn status(reports: &[StepReport], connector: &str, step: Step) -> String {
    reports
        .iter()
        .filter(|report| report.connector.0 == connector && report.step == step)
        .map(|report| report.status.name().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn dst_attribute(dst: &MemoryDirectory, dn: &str, name: &str) -> Vec<AttrValue> {
    dst.find_dn(dn).map(|(_, _, attributes)| attributes.get(name).to_vec()).unwrap_or_default()
}

#[tokio::test]
async fn initial_cycle_provisions_and_a_second_cycle_changes_nothing() {
    let world = world(RunnerConfig::default()).await;
    seed(&world.src);
    let reports = world.runner.run_cycle(true).await.expect("cycle");
    assert_eq!(status(&reports, "dst", Step::Export), "success");
    assert_eq!(world.dst.len(), 3);
    assert_eq!(dst_attribute(&world.dst, "CN=E1,OU=Cloud", "mail"), vec![AttrValue::string("e1@corp.example")]);
    assert_eq!(
        dst_attribute(&world.dst, "CN=E2,OU=Cloud", "manager"),
        vec![AttrValue::Reference("CN=E1,OU=Cloud".into())],
        "references follow joins"
    );
    let export = reports.iter().find(|report| report.step == Step::Export).expect("export report");
    assert_eq!(export.counts.adds, 3);
    assert!(
        reports.iter().any(|report| report.connector.0 == "dst" && report.step == Step::DeltaImport),
        "a confirming import follows the export"
    );

    let dst_id = ConnectorId("dst".into());
    let confirmed = world.runner.store().cs_list(&dst_id, &CsQuery::default()).await.expect("list");
    assert_eq!(confirmed.len(), 3);
    assert!(confirmed.iter().all(|cs| cs.anchor.is_some() && cs.pending_export.is_none() && cs.link.is_some()), "{confirmed:#?}");

    let exports_before = world.dst.export_count();
    let again = world.runner.run_cycle(false).await.expect("delta cycle");
    assert_eq!(world.dst.export_count(), exports_before, "nothing to export the second time: {again:#?}");
    let history = world.runner.store().runs(100).await.expect("history");
    assert!(history.iter().all(|run| run.finished.is_some()), "every step is recorded as finished");
}

#[tokio::test]
async fn deltas_flow_through_and_deletes_deprovision() {
    let world = world(RunnerConfig::default()).await;
    let anchors = seed(&world.src);
    world.runner.run_cycle(true).await.expect("initial");

    world.src.modify(&anchors[2], &[AttrChange::Replace("displayName".into(), vec![AttrValue::string("Cleo Renamed")])]);
    world.src.delete(&anchors[1]);
    let reports = world.runner.run_cycle(false).await.expect("delta");
    assert_eq!(dst_attribute(&world.dst, "CN=E3,OU=Cloud", "displayName"), vec![AttrValue::string("Cleo Renamed")]);
    assert!(world.dst.find_dn("CN=E2,OU=Cloud").is_none(), "the deleted source's target object is deleted");
    let sync = reports.iter().find(|report| report.connector.0 == "src" && report.step == Step::DeltaSync).expect("sync report");
    assert!(sync.counts.deletes >= 1, "{sync:?}");
    assert_eq!(world.dst.len(), 2);
}

#[tokio::test]
async fn deletion_threshold_stops_the_whole_export_until_allowed() {
    let world = world(RunnerConfig { deletion_threshold: Some(1), ..RunnerConfig::default() }).await;
    let anchors = seed(&world.src);
    world.runner.run_cycle(true).await.expect("initial");
    world.src.modify(&anchors[0], &[AttrChange::Replace("displayName".into(), vec![AttrValue::string("Ann Changed")])]);
    world.src.delete(&anchors[1]);
    world.src.delete(&anchors[2]);

    let reports = world.runner.run_cycle(false).await.expect("delta");
    let export = reports.iter().find(|report| report.connector.0 == "dst" && report.step == Step::Export).expect("export");
    assert_eq!(export.status, sync_runner::StepStatus::StoppedDeletionThreshold);
    assert!(export.detail.starts_with("2 pending deletes exceed the threshold of 1; nothing was exported"), "{}", export.detail);
    assert_eq!(world.dst.len(), 3, "nothing deleted");
    assert_eq!(
        dst_attribute(&world.dst, "CN=E1,OU=Cloud", "displayName"),
        vec![AttrValue::string("Ann Boss")],
        "no other change exported either"
    );

    world.runner.allow_deletes_once();
    let reports = world.runner.run_cycle(false).await.expect("allowed");
    assert_eq!(status(&reports, "dst", Step::Export), "success");
    assert_eq!(world.dst.len(), 1);
    assert_eq!(dst_attribute(&world.dst, "CN=E1,OU=Cloud", "displayName"), vec![AttrValue::string("Ann Changed")]);

    // The approval was used up: the next mass delete is stopped again.
    let more: Vec<_> = (4..7).map(|n| world.src.put(&format!("CN=E{n},OU=Staff"), "user", person(&format!("E{n}"), "New", None))).collect();
    world.runner.run_cycle(false).await.expect("adds");
    assert_eq!(world.dst.len(), 4);
    for anchor in &more {
        world.src.delete(anchor);
    }
    let reports = world.runner.run_cycle(false).await.expect("second mass delete");
    assert_eq!(status(&reports, "dst", Step::Export), "stopped-deletion-threshold-exceeded");
    assert_eq!(world.dst.len(), 4);
}

#[tokio::test]
async fn staging_mode_syncs_but_never_exports() {
    let mut world = world(RunnerConfig { staging: true, ..RunnerConfig::default() }).await;
    seed(&world.src);
    let reports = world.runner.run_cycle(true).await.expect("staging cycle");
    let export = reports.iter().find(|report| report.connector.0 == "dst" && report.step == Step::Export).expect("export");
    assert_eq!(export.status, sync_runner::StepStatus::StagingNoExport);
    assert_eq!(export.counts.adds, 3, "the report says what would be exported");
    assert!(export.detail.contains("3 exports held (3 adds, 0 updates, 0 deletes)"), "{}", export.detail);
    assert!(world.dst.is_empty());

    world.runner.config_mut().staging = false;
    world.runner.run_cycle(false).await.expect("switched over");
    assert_eq!(world.dst.len(), 3);
}

#[tokio::test]
async fn a_rejected_export_marks_one_object_and_the_rest_go_through() {
    let world = world(RunnerConfig::default()).await;
    seed(&world.src);
    world.dst.reject_exports_to("CN=E2,OU=Cloud", "schema-violation", "displayName too long");
    let reports = world.runner.run_cycle(true).await.expect("cycle");
    assert_eq!(status(&reports, "dst", Step::Export), "completed-errors");
    assert_eq!(world.dst.len(), 2);
    let failed = world.runner.store().cs_by_dn(&ConnectorId("dst".into()), "CN=E2,OU=Cloud").await.expect("lookup").expect("export object");
    let error = failed.error.expect("error recorded");
    assert_eq!((error.stage, error.code.as_str()), (ErrorStage::Export, "schema-violation"));
    assert!(failed.pending_export.is_some(), "kept for the next export");
}

#[tokio::test]
async fn an_unreachable_directory_stops_the_step_and_the_next_run_continues() {
    let world = world(RunnerConfig::default()).await;
    let anchors = seed(&world.src);
    world.runner.run_cycle(true).await.expect("initial");
    let src_id = ConnectorId("src".into());
    let watermark = world.runner.store().watermark(&src_id).await.expect("watermark");

    world.src.modify(&anchors[0], &[AttrChange::Replace("displayName".into(), vec![AttrValue::string("Ann Later")])]);
    world.src.set_unavailable(true);
    let report = world.runner.run_step(&src_id, Step::DeltaImport).await.expect("step runs");
    assert_eq!(report.status, sync_runner::StepStatus::StoppedConnectorUnavailable);
    assert_eq!(world.runner.store().watermark(&src_id).await.expect("watermark"), watermark, "the last committed watermark stays");

    world.src.set_unavailable(false);
    world.runner.run_cycle(false).await.expect("recovered");
    assert_eq!(dst_attribute(&world.dst, "CN=E1,OU=Cloud", "displayName"), vec![AttrValue::string("Ann Later")]);
}

#[tokio::test]
async fn an_ambiguous_join_is_an_object_error_not_a_failed_run() {
    let world = world(RunnerConfig::default()).await;
    seed(&world.src);
    world.src.put("CN=E1 twin,OU=Staff", "user", person("E1", "Ann Twin", None));
    let reports = world.runner.run_cycle(true).await.expect("cycle");
    assert_eq!(status(&reports, "src", Step::FullSync), "completed-errors");
    let twin = world.runner.store().cs_by_dn(&ConnectorId("src".into()), "CN=E1 twin,OU=Staff").await.expect("lookup").expect("twin");
    assert_eq!(twin.error.expect("error").code, "ambiguous-join");
    assert_eq!(world.dst.len(), 3, "everyone else is provisioned");
}

#[tokio::test]
async fn leaving_scope_deprovisions() {
    let world = world(RunnerConfig::default()).await;
    let anchors = seed(&world.src);
    world.runner.run_cycle(true).await.expect("initial");
    world.src.modify(&anchors[2], &[AttrChange::Replace("status".into(), vec![AttrValue::string("hidden")])]);
    world.runner.run_cycle(false).await.expect("delta");
    assert!(world.dst.find_dn("CN=E3,OU=Cloud").is_none());
    let cs =
        world.runner.store().cs_by_anchor(&ConnectorId("src".into()), &anchors[2]).await.expect("lookup").expect("kept as disconnector");
    assert_eq!(cs.link, None);
}

#[tokio::test]
async fn an_existing_target_object_is_hard_matched_not_duplicated() {
    let world = world(RunnerConfig::default()).await;
    seed(&world.src);
    let legacy = world.dst.put(
        "CN=legacy-e1,OU=Cloud",
        "account",
        Attributes::new().with("employeeNumber", AttrValue::string("E1")).with("displayName", AttrValue::string("Old Name")),
    );
    world.runner.run_cycle(true).await.expect("cycle");
    assert_eq!(world.dst.len(), 3, "E1 matched the existing object");
    let (anchor, _, attributes) = world.dst.find_dn("CN=E1,OU=Cloud").expect("the matched object, renamed by the dn flow");
    assert_eq!(anchor, legacy, "the same object, not a new one");
    assert_eq!(attributes.get("displayName"), &[AttrValue::string("Ann Boss")]);
}

fn board() -> std::sync::Arc<sync_runner::status::Board> {
    struct Quiet;
    impl sync_runner::Progress for Quiet {}
    std::sync::Arc::new(sync_runner::status::Board::new(std::sync::Arc::new(Quiet), "test"))
}

#[tokio::test]
async fn the_scheduler_runs_cycles_until_shutdown() {
    let world = world(RunnerConfig::default()).await;
    seed(&world.src);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (_requests, receiver) = tokio::sync::mpsc::channel(4);
    let stopper = async move {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let _ = stop.send(());
    };
    let (cycles, ()) = tokio::join!(
        sync_runner::scheduler::run(&world.runner, Schedule::every(std::time::Duration::from_millis(40)), board(), receiver, async move {
            let _ = stopped.await;
        }),
        stopper
    );
    assert!(cycles >= 2, "{cycles} cycles");
    assert_eq!(world.dst.len(), 3);
}

#[tokio::test]
async fn the_scheduler_runs_a_cycle_on_demand_between_ticks() {
    let world = world(RunnerConfig::default()).await;
    let anchors = seed(&world.src);
    let (src, dst) = (world.src.clone(), world.dst.clone());
    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = async {
        // The first tick runs the initial cycle at once; the next is an hour away.
        while dst.len() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        src.modify(&anchors[0], &[AttrChange::Replace("displayName".into(), vec![AttrValue::string("On Demand")])]);
        requests.send(sync_runner::scheduler::CycleRequest { initial: false, connector: None }).await.expect("request");
        while dst_attribute(&dst, "CN=E1,OU=Cloud", "displayName") != vec![AttrValue::string("On Demand")] {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let _ = stop.send(());
    };
    let (cycles, ()) = tokio::join!(
        sync_runner::scheduler::run(&world.runner, Schedule::every(std::time::Duration::from_secs(3600)), board(), receiver, async move {
            let _ = stopped.await;
        }),
        driver
    );
    assert_eq!(cycles, 2, "the initial cycle and the requested one");
}

/// A source whose delta speaks of an object it never showed in a full import.
struct StrayDelta;

impl connector_api::Import for StrayDelta {
    fn full_page<'a>(
        &'a self,
        _cursor: Option<&'a [u8]>,
    ) -> connector_api::BoxFuture<'a, Result<connector_api::ImportPage, connector_api::ConnectorError>> {
        Box::pin(async { Ok(connector_api::ImportPage { changes: vec![], next: None, watermark: Some(b"w1".to_vec()), complete: false }) })
    }

    fn delta_page<'a>(
        &'a self,
        _watermark: &'a [u8],
        _cursor: Option<&'a [u8]>,
    ) -> connector_api::BoxFuture<'a, Result<connector_api::ImportPage, connector_api::ConnectorError>> {
        Box::pin(async {
            let stray = model::ImportChange::Modify {
                anchor: model::Anchor(vec![7; 16]),
                dn: "CN=stray".into(),
                changes: vec![AttrChange::Replace("mail".into(), vec![AttrValue::string("s@x")])],
            };
            Ok(connector_api::ImportPage { changes: vec![stray], next: None, watermark: Some(b"w2".to_vec()), complete: false })
        })
    }
}

#[tokio::test]
async fn a_delta_about_an_unknown_object_makes_the_next_import_full() {
    let store = SqliteStore::memory().expect("store");
    store.migrate().await.expect("migrate");
    let mut runner = Runner::new(store, RuleSet::parse(RULES).expect("rules"), RunnerConfig::default());
    let info = connector_api::ConnectorInfo {
        id: ConnectorId("src".into()),
        kind: "test".into(),
        role: Role::Source,
        parameters: Default::default(),
    };
    runner.add_connector(connector_api::Connector { info, import: Box::new(StrayDelta), export: None });
    let src = ConnectorId("src".into());
    runner.run_step(&src, Step::FullImport).await.expect("full");
    assert_eq!(runner.store().watermark(&src).await.expect("watermark").as_deref(), Some(&b"w1"[..]));
    let report = runner.run_step(&src, Step::DeltaImport).await.expect("delta");
    assert!(report.detail.contains("1 missed"), "{}", report.detail);
    assert_eq!(runner.store().watermark(&src).await.expect("watermark"), None, "the watermark is forgotten: the next import is full");
    assert!(runner.store().cs_by_anchor(&src, &model::Anchor(vec![7; 16])).await.expect("get").is_none(), "nothing half-made");
}

/// A source whose delta cannot list deletes and names what is still there instead.
struct PresenceDelta;

fn presence_user(byte: u8) -> model::ImportChange {
    model::ImportChange::Upsert {
        anchor: model::Anchor(vec![byte; 16]),
        dn: format!("CN=u{byte}"),
        object_type: "user".into(),
        attributes: model::Attributes::new().with("mail", AttrValue::string(format!("u{byte}@x"))),
    }
}

impl connector_api::Import for PresenceDelta {
    fn full_page<'a>(
        &'a self,
        _cursor: Option<&'a [u8]>,
    ) -> connector_api::BoxFuture<'a, Result<connector_api::ImportPage, connector_api::ConnectorError>> {
        Box::pin(async {
            let changes = vec![presence_user(1), presence_user(2), presence_user(3)];
            Ok(connector_api::ImportPage { changes, next: None, watermark: Some(b"w1".to_vec()), complete: false })
        })
    }

    fn delta_page<'a>(
        &'a self,
        _watermark: &'a [u8],
        cursor: Option<&'a [u8]>,
    ) -> connector_api::BoxFuture<'a, Result<connector_api::ImportPage, connector_api::ConnectorError>> {
        Box::pin(async move {
            // Page one: a changed object; page two: the presence pass, moving one object.
            if cursor.is_none() {
                let mut changed = presence_user(3);
                if let model::ImportChange::Upsert { attributes, .. } = &mut changed {
                    attributes.set("mail", vec![AttrValue::string("new@x")]);
                }
                return Ok(connector_api::ImportPage { changes: vec![changed], next: Some(vec![1]), watermark: None, complete: false });
            }
            let present = model::ImportChange::Modify { anchor: model::Anchor(vec![1; 16]), dn: "CN=u1,OU=moved".into(), changes: vec![] };
            Ok(connector_api::ImportPage { changes: vec![present], next: None, watermark: Some(b"w2".to_vec()), complete: true })
        })
    }
}

#[tokio::test]
async fn a_complete_delta_deletes_what_it_did_not_name() {
    let store = SqliteStore::memory().expect("store");
    store.migrate().await.expect("migrate");
    let mut runner = Runner::new(store, RuleSet::parse(RULES).expect("rules"), RunnerConfig::default());
    let info = connector_api::ConnectorInfo {
        id: ConnectorId("src".into()),
        kind: "test".into(),
        role: Role::Source,
        parameters: Default::default(),
    };
    runner.add_connector(connector_api::Connector { info, import: Box::new(PresenceDelta), export: None });
    let src = ConnectorId("src".into());
    runner.run_step(&src, Step::FullImport).await.expect("full");
    let report = runner.run_step(&src, Step::DeltaImport).await.expect("delta");
    assert!(report.detail.contains("1 not seen"), "{}", report.detail);
    let get = |byte: u8| {
        let store = runner.store();
        async move { store.cs_by_anchor(&src_id(), &model::Anchor(vec![byte; 16])).await.expect("get").expect("held") }
    };
    assert_eq!(get(2).await.pending_import, Some(model::PendingImport::Delete), "u2 was not named: deleted");
    let u1 = get(1).await;
    assert_eq!((u1.dn.as_str(), u1.pending_import == Some(model::PendingImport::Delete)), ("CN=u1,OU=moved", false));
    assert_eq!(get(3).await.attributes.get("mail"), &[AttrValue::string("new@x")]);
    assert_eq!(runner.store().watermark(&src).await.expect("watermark").as_deref(), Some(&b"w2"[..]), "stored after the sweep");
}

fn src_id() -> ConnectorId {
    ConnectorId("src".into())
}

#[tokio::test]
async fn an_export_that_reached_the_directory_but_not_the_store_is_adopted() {
    // Staging holds the adds: the state of a server stopped after writing to the directory but
    // before recording the exports.
    let mut world = world(RunnerConfig { staging: true, ..RunnerConfig::default() }).await;
    seed(&world.src);
    world.runner.run_cycle(true).await.expect("staging cycle");
    let dst_id = ConnectorId("dst".into());
    let held = world.runner.store().cs_list(&dst_id, &CsQuery::default()).await.expect("list");
    assert!(held.iter().all(|cs| cs.anchor.is_none() && cs.pending_export.is_some()), "three unconfirmed adds: {held:#?}");
    // The directory already has them (one with a stale title the export must still fix).
    for cs in &held {
        let mut attributes = Attributes::new();
        if let Some(model::PendingExport::Add(changes)) = &cs.pending_export {
            attributes.apply(changes);
        }
        if cs.dn == "CN=E3,OU=Cloud" {
            attributes.set("displayName", vec![AttrValue::string("Stale Name")]);
        }
        world.dst.put(&cs.dn, &cs.object_type, attributes);
    }

    world.runner.config_mut().staging = false;
    let reports = world.runner.run_cycle(false).await.expect("cycle after the restart");
    assert_eq!(status(&reports, "dst", Step::Export), "success", "{reports:#?}");
    assert_eq!(world.dst.len(), 3, "adopted, not added twice");
    assert_eq!(dst_attribute(&world.dst, "CN=E3,OU=Cloud", "displayName"), vec![AttrValue::string("Cleo Third")], "and brought up to date");
    let adopted = world.runner.store().cs_list(&dst_id, &CsQuery::default()).await.expect("list");
    assert_eq!(adopted.len(), 3, "no duplicate connector-space objects: {adopted:#?}");
    assert!(
        adopted.iter().all(|cs| cs.anchor.is_some() && cs.pending_export.is_none() && cs.error.is_none() && cs.link.is_some()),
        "{adopted:#?}"
    );
}

/// A cloud-like target that already holds an unjoined object and, like a cloud soft match,
/// answers an add with that object's anchor.
struct MatchingTarget;

fn matched_anchor() -> model::Anchor {
    model::Anchor(b"cloud-object-1".to_vec())
}

impl connector_api::Import for MatchingTarget {
    fn full_page<'a>(
        &'a self,
        _cursor: Option<&'a [u8]>,
    ) -> connector_api::BoxFuture<'a, Result<connector_api::ImportPage, connector_api::ConnectorError>> {
        Box::pin(async {
            let existing = model::ImportChange::Upsert {
                anchor: matched_anchor(),
                dn: "CN=cloud-only".into(),
                object_type: "account".into(),
                attributes: model::Attributes::new().with("displayName", AttrValue::string("Cloud Only")),
            };
            Ok(connector_api::ImportPage { changes: vec![existing], next: None, watermark: Some(b"t1".to_vec()), complete: false })
        })
    }

    fn delta_page<'a>(
        &'a self,
        _watermark: &'a [u8],
        _cursor: Option<&'a [u8]>,
    ) -> connector_api::BoxFuture<'a, Result<connector_api::ImportPage, connector_api::ConnectorError>> {
        Box::pin(async { Ok(connector_api::ImportPage { changes: vec![], next: None, watermark: Some(b"t2".to_vec()), complete: false }) })
    }
}

impl connector_api::Export for MatchingTarget {
    fn export<'a>(
        &'a self,
        _request: &'a connector_api::ExportRequest,
    ) -> connector_api::BoxFuture<'a, Result<connector_api::ExportOutcome, connector_api::ConnectorError>> {
        Box::pin(async { Ok(connector_api::ExportOutcome::created(matched_anchor())) })
    }
}

#[tokio::test]
async fn an_add_the_directory_matches_to_an_unjoined_object_takes_its_place() {
    let store = SqliteStore::memory().expect("store");
    store.migrate().await.expect("migrate");
    let mut runner = Runner::new(store, RuleSet::parse(RULES).expect("rules"), RunnerConfig::default());
    let src = MemoryDirectory::new();
    src.put("CN=E1,OU=Staff", "user", person("E1", "Ann Boss", None));
    runner.add_connector(src.connector("src", Role::Source, 10));
    let info = connector_api::ConnectorInfo {
        id: ConnectorId("dst".into()),
        kind: "test".into(),
        role: Role::Target,
        parameters: Default::default(),
    };
    runner.add_connector(connector_api::Connector { info, import: Box::new(MatchingTarget), export: Some(Box::new(MatchingTarget)) });
    let reports = runner.run_cycle(true).await.expect("the cycle runs: no duplicate anchor");
    assert_eq!(status(&reports, "dst", Step::Export), "success", "{reports:#?}");
    let dst = ConnectorId("dst".into());
    let objects = runner.store().cs_list(&dst, &CsQuery::default()).await.expect("list");
    assert_eq!(objects.len(), 1, "the unjoined copy gave way: {objects:#?}");
    assert_eq!(objects[0].anchor.as_ref(), Some(&matched_anchor()));
    assert!(objects[0].link.is_some(), "and the matched object is joined");
}

/// A target that takes a while per chunk and counts how many chunks it holds at once; from
/// call `fail_from` on it is down.
#[derive(Default)]
struct SlowTarget {
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    calls: std::sync::atomic::AtomicUsize,
    succeeded: std::sync::atomic::AtomicUsize,
    fail_from: Option<usize>,
}

impl connector_api::Import for SlowTarget {
    fn full_page<'a>(
        &'a self,
        _cursor: Option<&'a [u8]>,
    ) -> connector_api::BoxFuture<'a, Result<connector_api::ImportPage, connector_api::ConnectorError>> {
        Box::pin(async { Ok(connector_api::ImportPage { changes: vec![], next: None, watermark: Some(b"w".to_vec()), complete: false }) })
    }

    fn delta_page<'a>(
        &'a self,
        _watermark: &'a [u8],
        _cursor: Option<&'a [u8]>,
    ) -> connector_api::BoxFuture<'a, Result<connector_api::ImportPage, connector_api::ConnectorError>> {
        Box::pin(async { Ok(connector_api::ImportPage { changes: vec![], next: None, watermark: Some(b"w".to_vec()), complete: false }) })
    }
}

impl connector_api::Export for SlowTarget {
    fn export<'a>(
        &'a self,
        request: &'a connector_api::ExportRequest,
    ) -> connector_api::BoxFuture<'a, Result<connector_api::ExportOutcome, connector_api::ConnectorError>> {
        Box::pin(async move { Ok(connector_api::ExportOutcome::created(model::Anchor(request.dn.clone().into_bytes()))) })
    }

    fn export_many<'a>(
        &'a self,
        requests: &'a [connector_api::ExportRequest],
    ) -> connector_api::BoxFuture<'a, Vec<Result<connector_api::ExportOutcome, connector_api::ConnectorError>>> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            let call = self.calls.fetch_add(1, SeqCst);
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            self.in_flight.fetch_sub(1, SeqCst);
            if self.fail_from.is_some_and(|from| call >= from) {
                return requests.iter().map(|_| Err(connector_api::ConnectorError::Unavailable("down".into()))).collect();
            }
            self.succeeded.fetch_add(requests.len(), SeqCst);
            requests
                .iter()
                .map(|request| Ok(connector_api::ExportOutcome::created(model::Anchor(request.dn.clone().into_bytes()))))
                .collect()
        })
    }
}

async fn slow_world(target: std::sync::Arc<SlowTarget>, concurrency: usize, people: usize) -> Runner<SqliteStore> {
    let store = SqliteStore::memory().expect("store");
    store.migrate().await.expect("migrate");
    let config = RunnerConfig { export_concurrency: concurrency, ..RunnerConfig::default() };
    let mut runner = Runner::new(store, RuleSet::parse(RULES).expect("rules"), config);
    let src = MemoryDirectory::new();
    for n in 0..people {
        src.put(&format!("CN=E{n},OU=Staff"), "user", person(&format!("E{n}"), "Someone", None));
    }
    runner.add_connector(src.connector("src", Role::Source, 50));
    struct Shared(std::sync::Arc<SlowTarget>);
    impl connector_api::Import for Shared {
        fn full_page<'a>(
            &'a self,
            cursor: Option<&'a [u8]>,
        ) -> connector_api::BoxFuture<'a, Result<connector_api::ImportPage, connector_api::ConnectorError>> {
            self.0.full_page(cursor)
        }
        fn delta_page<'a>(
            &'a self,
            watermark: &'a [u8],
            cursor: Option<&'a [u8]>,
        ) -> connector_api::BoxFuture<'a, Result<connector_api::ImportPage, connector_api::ConnectorError>> {
            self.0.delta_page(watermark, cursor)
        }
    }
    impl connector_api::Export for Shared {
        fn export<'a>(
            &'a self,
            request: &'a connector_api::ExportRequest,
        ) -> connector_api::BoxFuture<'a, Result<connector_api::ExportOutcome, connector_api::ConnectorError>> {
            self.0.export(request)
        }
        fn export_many<'a>(
            &'a self,
            requests: &'a [connector_api::ExportRequest],
        ) -> connector_api::BoxFuture<'a, Vec<Result<connector_api::ExportOutcome, connector_api::ConnectorError>>> {
            self.0.export_many(requests)
        }
    }
    let info = connector_api::ConnectorInfo {
        id: ConnectorId("dst".into()),
        kind: "test".into(),
        role: Role::Target,
        parameters: Default::default(),
    };
    runner.add_connector(connector_api::Connector {
        info,
        import: Box::new(Shared(target.clone())),
        export: Some(Box::new(Shared(target))),
    });
    runner
}

#[tokio::test]
async fn export_chunks_go_several_at_a_time_within_the_bound() {
    use std::sync::atomic::Ordering::SeqCst;
    let target = std::sync::Arc::new(SlowTarget::default());
    let runner = slow_world(target.clone(), 3, 200).await;
    let reports = runner.run_cycle(true).await.expect("cycle");
    assert_eq!(status(&reports, "dst", Step::Export), "success", "{reports:#?}");
    assert_eq!(target.calls.load(SeqCst), 10, "200 adds in chunks of 20");
    assert_eq!(target.most.load(SeqCst), 3, "three chunks in flight at once, never more");
    let objects = runner.store().cs_list(&ConnectorId("dst".into()), &CsQuery::default()).await.expect("list");
    assert_eq!(objects.len(), 200);
    assert!(objects.iter().all(|cs| cs.anchor.is_some() && cs.pending_export.is_none()), "every result recorded");
}

#[tokio::test]
async fn after_a_failed_chunk_no_new_chunk_starts_and_those_in_flight_are_recorded() {
    use std::sync::atomic::Ordering::SeqCst;
    let target = std::sync::Arc::new(SlowTarget { fail_from: Some(2), ..SlowTarget::default() });
    let runner = slow_world(target.clone(), 2, 200).await;
    let reports = runner.run_cycle(true).await.expect("cycle");
    assert_eq!(status(&reports, "dst", Step::Export), "stopped-connector-unavailable", "{reports:#?}");
    assert!(target.calls.load(SeqCst) <= 4, "no chunk starts after the failure: {} calls", target.calls.load(SeqCst));
    let objects = runner.store().cs_list(&ConnectorId("dst".into()), &CsQuery::default()).await.expect("list");
    let exported = objects.iter().filter(|cs| cs.anchor.is_some()).count();
    assert_eq!(exported, target.succeeded.load(SeqCst), "what reached the directory reached the store");
    assert_eq!(exported, 40, "the two chunks before the failure");
}

/// Records what the runner reports of its progress.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl sync_runner::Progress for Recorder {
    fn step_started(&self, connector: &ConnectorId, step: Step) {
        self.0.lock().expect("lock").push(format!("start {} {}", connector.0, step.name()));
    }
    fn total(&self, total: u64) {
        self.0.lock().expect("lock").push(format!("total {total}"));
    }
    fn advanced(&self, count: u64) {
        self.0.lock().expect("lock").push(format!("advanced {count}"));
    }
    fn step_finished(&self, report: &StepReport) {
        self.0.lock().expect("lock").push(format!("finish {} {}", report.connector.0, report.step.name()));
    }
}

#[tokio::test]
async fn progress_is_reported_step_by_step() {
    let mut world = world(RunnerConfig::default()).await;
    seed(&world.src);
    let recorder = std::sync::Arc::new(Recorder::default());
    world.runner.set_progress(recorder.clone());
    world.runner.run_cycle(true).await.expect("cycle");
    let events = recorder.0.lock().expect("lock").clone();
    let count = |prefix: &str| events.iter().filter(|event| event.starts_with(prefix)).count();
    assert_eq!(count("start "), count("finish "), "every step started is finished: {events:?}");
    let import = events.iter().position(|event| event == "start src full-import").expect("import started");
    let advanced: u64 = events[import..]
        .iter()
        .take_while(|event| !event.starts_with("finish"))
        .filter_map(|event| event.strip_prefix("advanced ").and_then(|n| n.parse::<u64>().ok()))
        .sum();
    assert_eq!(advanced, 3, "three imported objects, page by page: {events:?}");
    let export = events.iter().position(|event| event == "start dst export").expect("export started");
    assert_eq!(events[export + 1], "total 3", "the export knows its size: {events:?}");
    assert_eq!(events[export + 2], "advanced 3");
}

/// A target that, while `refusing` is set, writes everything of an export but the manager and
/// says so (as a directory refusing one reference of a multi-request export).
struct RefusesManager {
    inner: Box<dyn connector_api::Export>,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl connector_api::Export for RefusesManager {
    fn export<'a>(
        &'a self,
        request: &'a connector_api::ExportRequest,
    ) -> connector_api::BoxFuture<'a, Result<connector_api::ExportOutcome, connector_api::ConnectorError>> {
        Box::pin(async move {
            if !self.refusing.load(std::sync::atomic::Ordering::SeqCst) {
                return self.inner.export(request).await;
            }
            let mut request = request.clone();
            let mut left = Vec::new();
            if let model::PendingExport::Add(changes) | model::PendingExport::Update(changes) = &mut request.change {
                left = changes.iter().filter(|change| change.name() == "manager").cloned().collect();
                changes.retain(|change| change.name() != "manager");
            }
            let mut outcome = self.inner.export(&request).await?;
            if !left.is_empty() {
                outcome.left = Some(connector_api::Unapplied {
                    changes: left,
                    reason: connector_api::UnappliedReason::Failed(connector_api::ConnectorError::Rejected {
                        code: "no-such-object".into(),
                        message: "the manager is unknown".into(),
                    }),
                });
            }
            Ok(outcome)
        })
    }
}

/// An export the directory applies in part is recorded exactly: the part left stays pending
/// and visible, the connector space never claims it, and the next delta cycle (nothing changed
/// at the source) sends it.
#[tokio::test]
async fn a_partial_export_is_recorded_exactly_and_the_next_delta_cycle_sends_the_rest() {
    let store = SqliteStore::memory().expect("store");
    store.migrate().await.expect("migrate");
    let mut runner = Runner::new(store, RuleSet::parse(RULES).expect("rules"), RunnerConfig::default());
    let (src, dst) = (MemoryDirectory::new(), MemoryDirectory::new());
    seed(&src);
    runner.add_connector(src.connector("src", Role::Source, 10));
    let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut target = dst.connector("dst", Role::Target, 10);
    let inner = target.export.take().expect("the memory directory writes");
    target.export = Some(Box::new(RefusesManager { inner, refusing: refusing.clone() }));
    runner.add_connector(target);

    let reports = runner.run_cycle(true).await.expect("first cycle");
    assert_eq!(status(&reports, "dst", Step::Export), "completed-errors", "{reports:#?}");
    assert_eq!(dst.len(), 3);
    assert!(dst_attribute(&dst, "CN=E2,OU=Cloud", "manager").is_empty(), "the directory has no manager");
    let dst_id = ConnectorId("dst".into());
    let bob = runner.store().cs_by_dn(&dst_id, "CN=E2,OU=Cloud").await.expect("read").expect("bob");
    assert!(bob.attributes.get("manager").is_empty(), "the connector space does not claim the manager: {bob:#?}");
    assert_eq!(
        bob.pending_export,
        Some(model::PendingExport::Update(vec![AttrChange::Replace(
            "manager".into(),
            vec![AttrValue::Reference("CN=E1,OU=Cloud".into())]
        )])),
        "the rest stays pending"
    );
    let error = bob.error.expect("and visible");
    assert_eq!((error.stage, error.code.as_str()), (ErrorStage::Export, "no-such-object"));
    assert!(bob.anchor.is_some(), "the object itself was created");

    // The directory takes it now; nothing changed at the source.
    refusing.store(false, std::sync::atomic::Ordering::SeqCst);
    let reports = runner.run_cycle(false).await.expect("delta cycle");
    assert_eq!(status(&reports, "dst", Step::Export), "success", "{reports:#?}");
    assert_eq!(dst_attribute(&dst, "CN=E2,OU=Cloud", "manager"), vec![AttrValue::Reference("CN=E1,OU=Cloud".into())]);
    let bob = runner.store().cs_by_dn(&dst_id, "CN=E2,OU=Cloud").await.expect("read").expect("bob");
    assert!(bob.pending_export.is_none() && bob.error.is_none(), "{bob:#?}");
    assert_eq!(dst.len(), 3, "nothing added twice");
}

#[tokio::test]
async fn explain_says_what_a_sync_would_do_and_changes_nothing() {
    let world = world(RunnerConfig::default()).await;
    let anchors = seed(&world.src);
    world.runner.run_cycle(true).await.expect("initial cycle");
    world.src.modify(&anchors[1], &[AttrChange::Replace("displayName".into(), vec![AttrValue::string("Bob Renamed")])]);
    world.runner.run_step(&ConnectorId("src".into()), Step::DeltaImport).await.expect("import");
    let src = ConnectorId("src".into());
    let runs_before = world.runner.store().runs(100).await.expect("runs").len();
    let explanation = world.runner.explain(&src, "CN=E2,OU=Staff", Default::default()).await.expect("explain");
    assert_eq!(explanation.rules_in_scope, vec![(10, "In from source - Join".to_string())]);
    let mv = explanation.metaverse.clone().expect("joined");
    assert_eq!(mv.attributes["displayName"].values, vec![AttrValue::string("Bob Renamed")]);
    assert_eq!(mv.attributes["manager"].values.len(), 1, "the reference resolves as in a run: {mv:?}");
    let (before, after) =
        explanation.cs_changes.iter().find(|(_, after)| after.as_ref().is_some_and(|cs| cs.connector.0 == "dst")).expect("dst change");
    assert!(before.as_ref().is_some_and(|cs| cs.pending_export.is_none()));
    assert!(
        matches!(&after.as_ref().expect("after").pending_export, Some(model::PendingExport::Update(changes)) if changes.iter().any(|change| matches!(change, AttrChange::Replace(name, values) if name == "displayName" && values == &vec![AttrValue::string("Bob Renamed")]))),
        "{after:?}"
    );
    // Nothing was written: the store still has the pending import and no pending export.
    let stored = world.runner.store().cs_by_dn(&src, "CN=E2,OU=Staff").await.expect("read").expect("object");
    assert!(stored.pending_import.is_some(), "still pending for the real sync");
    let pending = world
        .runner
        .store()
        .cs_list(&ConnectorId("dst".into()), &CsQuery { pending_export: true, ..CsQuery::default() })
        .await
        .expect("list");
    assert!(pending.is_empty(), "{pending:?}");
    assert_eq!(world.runner.store().runs(100).await.expect("runs").len(), runs_before, "no run recorded");
    // The same object's real sync does what the explanation said.
    world.runner.run_step(&src, Step::DeltaSync).await.expect("sync");
    let pending = world
        .runner
        .store()
        .cs_list(&ConnectorId("dst".into()), &CsQuery { pending_export: true, ..CsQuery::default() })
        .await
        .expect("list");
    assert_eq!(pending.len(), 1);
    assert_eq!(&pending[0].pending_export, &after.as_ref().expect("after").pending_export);
    let missing = world.runner.explain(&src, "CN=Nobody", Default::default()).await.expect_err("no such object");
    assert!(missing.to_string().contains("has no object CN=Nobody"), "{missing}");
}

/// A reference to an object projected later in the same sync page resolves in that sync: a
/// flow that met an unresolved reference during the page's inbound work is computed again in
/// its metaverse work (a flow with every reference resolved is not).
#[tokio::test]
async fn a_reference_to_an_object_later_in_the_page_resolves_in_the_same_sync() {
    let world = world(RunnerConfig::default()).await;
    world.src.put("CN=E2,OU=Staff", "user", person("E2", "Bob Report", Some("CN=E9,OU=Staff")));
    world.src.put("CN=E9,OU=Staff", "user", person("E9", "Zed Boss", None));
    let src = ConnectorId("src".into());
    world.runner.run_step(&src, Step::FullImport).await.expect("import");
    let report_cs = world.runner.store().cs_by_dn(&src, "CN=E2,OU=Staff").await.expect("read").expect("imported");
    let boss_cs = world.runner.store().cs_by_dn(&src, "CN=E9,OU=Staff").await.expect("read").expect("imported");
    assert!(report_cs.id < boss_cs.id, "the report comes first in the page, so its first flow cannot resolve its manager");
    world.runner.run_step(&src, Step::FullSync).await.expect("sync");
    let link = |dn: &'static str| {
        let store = world.runner.store();
        let src = src.clone();
        async move { store.cs_by_dn(&src, dn).await.expect("read").and_then(|cs| cs.link).expect("joined") }
    };
    let (report_mv, boss_mv) = (link("CN=E2,OU=Staff").await, link("CN=E9,OU=Staff").await);
    let report = world.runner.store().mv_get(report_mv).await.expect("read").expect("projected");
    assert_eq!(report.attributes.get("manager").map(|attribute| attribute.values.clone()), Some(vec![AttrValue::MvReference(boss_mv)]));
}

/// `Guid()` in an outbound flow gives each provisioned object its own value within one run
/// (each outbound decision draws its own seed from the run's random source).
#[tokio::test]
async fn an_outbound_guid_differs_from_object_to_object() {
    let rules = RULES.replacen(
        "[[rule.flow]]\ntarget = \"employeeNumber\"\ndirect = \"employeeID\"",
        "[[rule.flow]]\ntarget = \"employeeNumber\"\ndirect = \"employeeID\"\n[[rule.flow]]\ntarget = \"initialSecret\"\nexpression = 'Guid()'",
        1,
    );
    assert_ne!(rules, RULES, "the outbound rule gained a Guid() flow");
    let store = SqliteStore::memory().expect("store");
    store.migrate().await.expect("migrate");
    let mut runner = Runner::new(store, RuleSet::parse(&rules).expect("rules"), RunnerConfig::default());
    let (src, dst) = (MemoryDirectory::new(), MemoryDirectory::new());
    runner.add_connector(src.connector("src", Role::Source, 2));
    runner.add_connector(dst.connector("dst", Role::Target, 2));
    seed(&src);
    // One sync of the source: its outbound decisions provision the three (no later sync redoes them).
    let source = ConnectorId("src".into());
    runner.run_step(&source, Step::FullImport).await.expect("import");
    runner.run_step(&source, Step::FullSync).await.expect("sync");
    let provisioned = runner.store().cs_list(&ConnectorId("dst".into()), &CsQuery::default()).await.expect("list");
    let secrets: std::collections::BTreeSet<Vec<AttrValue>> = provisioned
        .iter()
        .map(|cs| match &cs.pending_export {
            Some(model::PendingExport::Add(changes)) => changes
                .iter()
                .find_map(|change| match change {
                    AttrChange::Replace(name, values) if name == "initialSecret" => Some(values.clone()),
                    _ => None,
                })
                .unwrap_or_default(),
            other => panic!("{} should be a pending add, not {other:?}", cs.dn),
        })
        .collect();
    assert_eq!((provisioned.len(), secrets.len()), (3, 3), "three objects, three values: {secrets:?}");
    assert!(secrets.iter().all(|values| values.len() == 1), "each has one: {secrets:?}");
}

#[tokio::test]
async fn the_metrics_count_exports_held_in_staging_mode_until_they_go() {
    let mut world = world(RunnerConfig { staging: true, ..RunnerConfig::default() }).await;
    seed(&world.src);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = sync_runner::metrics::SyncMetrics::register(&mut registry);
    let pending_dst = |registry: &prometheus_client::registry::Registry| -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text.lines().find(|line| line.starts_with("isthmus_sync_pending_exports{connector=\"dst\"}")).unwrap_or_default().to_string()
    };
    for (staging, expected) in [(true, "3"), (false, "0")] {
        world.runner.config_mut().staging = staging;
        let reports = world.runner.run_cycle(staging).await.expect("cycle");
        let pending = world.runner.pending_exports().await;
        let cycle = sync_runner::scheduler::FinishedCycle::new(
            &world.runner,
            sync_runner::status::CycleKind::Delta,
            1,
            std::time::Duration::from_secs(60),
            &pending,
            Ok(&reports),
        );
        sync_runner::scheduler::CycleObserver::finished(&*metrics, cycle).await;
        assert_eq!(pending_dst(&registry), format!("isthmus_sync_pending_exports{{connector=\"dst\"}} {expected}"), "staging {staging}");
    }
    assert_eq!(world.dst.len(), 3);
}
