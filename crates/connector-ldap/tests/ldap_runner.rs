//! The generic LDAP connector under the real runner and store: a server lost in the middle of
//! an import keeps the last committed watermark and the next run carries on; exports the server
//! refuses mark their objects and the rest go through.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use connector_api::{ConnectorError, ExportRequest, Role};
use connector_memory::MemoryDirectory;
use model::{AttrChange, AttrValue, Attributes, ConnectorId, ErrorStage, PendingExport};
use store::{CsQuery, Store};
use store_sqlite::SqliteStore;
use sync_rules::RuleSet;
use sync_runner::{Runner, RunnerConfig, Step};
use testkit::slapd::{SUFFIX, Slapd, SlapdOptions};

const RULES: &str = r#"
[[rule]]
name = "In from HR - person"
direction = "inbound"
connector = "hr"
source_type = "worker"
target_type = "person"
link_type = "provision"
precedence = 10
join = [[{ source = "uid", target = "uid" }]]
[[rule.flow]]
target = "uid"
direct = "uid"
[[rule.flow]]
target = "sn"
direct = "sn"

[[rule]]
name = "Out to OpenLDAP - person"
direction = "outbound"
connector = "openldap"
source_type = "person"
target_type = "inetOrgPerson"
link_type = "provision"
precedence = 10
join = [[{ source = "uid", target = "uid" }]]
[[rule.flow]]
target = "dn"
expression = '"uid=" & [uid] & ",ou=people,dc=example,dc=test"'
[[rule.flow]]
target = "uid"
direct = "uid"
[[rule.flow]]
target = "cn"
direct = "uid"
[[rule.flow]]
target = "sn"
direct = "sn"
"#;

async fn runner(slapd: &Slapd, page_size: u32) -> Runner<SqliteStore> {
    let store = SqliteStore::memory().unwrap();
    store.migrate().await.unwrap();
    let mut runner = Runner::new(store, RuleSet::parse(RULES).unwrap(), RunnerConfig::default());
    let mut config = common::ldap_config(slapd);
    config.page_size = page_size;
    runner.add_connector(connector_ldap::open(config).await.unwrap());
    runner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_keeps_the_watermark_and_the_next_run_carries_on() {
    let Some(mut slapd) = testkit::available(Slapd::start_with(SlapdOptions { syncprov: true, session_log: Some(1000) }, None)) else {
        return;
    };
    let mut admin = slapd.admin().await.unwrap();
    let mut people = Vec::new();
    for number in 0..12 {
        people.push(admin.create_person(&format!("p{number:02}"), &format!("p{number}@example.test"), "Secret.1", None).await.unwrap());
    }
    let runner = runner(&slapd, 5).await;
    let id = ConnectorId("openldap".into());
    runner.run_step(&id, Step::FullImport).await.unwrap();
    let first = runner.store().watermark(&id).await.unwrap().expect("a full import stores a watermark");

    // The server goes away before a delta: the step fails as a whole, nothing moves.
    admin.conn().replace(&people[0], "mail", &["moved@example.test"]).await.unwrap();
    slapd.stop();
    let report = runner.run_step(&id, Step::DeltaImport).await.unwrap();
    assert_eq!(report.status, sync_runner::StepStatus::StoppedConnectorUnavailable, "{}", report.detail);
    assert_eq!(runner.store().watermark(&id).await.unwrap().as_ref(), Some(&first), "the watermark stays");

    // It comes back: the same connector reconnects and the delta sees the change.
    slapd.resume().unwrap();
    runner.run_step(&id, Step::DeltaImport).await.unwrap();
    let held = runner.store().cs_by_dn(&id, &people[0]).await.unwrap().expect("p00");
    assert_eq!(held.attributes.get("mail"), &[AttrValue::string("moved@example.test")]);
    let second = runner.store().watermark(&id).await.unwrap().expect("watermark");
    assert_ne!(second, first, "the delta advanced the watermark");

    // Lost between pages of a full import: the pages already read are committed without a
    // watermark, the next page fails, and the stored watermark is still the last good one.
    let connector = connector_ldap::open({
        let mut config = common::ldap_config(&slapd);
        config.page_size = 5;
        config
    })
    .await
    .unwrap();
    let run = runner.store().run_start(&id, "full-import", 99).await.unwrap();
    let page = connector.import.full_page(None).await.unwrap();
    assert_eq!((page.changes.len(), page.watermark.is_none()), (5, true), "a first page of five, no watermark yet");
    runner.store().commit_import_page(&id, run, &page.changes, page.watermark.as_deref()).await.unwrap();
    slapd.stop();
    let lost = connector.import.full_page(page.next.as_deref()).await;
    assert!(matches!(lost, Err(ConnectorError::Unavailable(_))), "{lost:?}");
    assert_eq!(runner.store().watermark(&id).await.unwrap(), Some(second), "still the last committed watermark");
    slapd.resume().unwrap();
    let report = runner.run_step(&id, Step::FullImport).await.unwrap();
    assert!(report.detail.contains("0 not seen"), "a repeated full import finds everything: {}", report.detail);
    assert_eq!(runner.store().cs_list(&id, &CsQuery::default()).await.unwrap().len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_exports_mark_their_objects_and_the_rest_go_through() {
    let Some(slapd) = testkit::available(Slapd::start_with(SlapdOptions::default(), None)) else { return };
    let mut runner = runner(&slapd, 500).await;
    let hr = MemoryDirectory::new();
    let worker = |uid: &str, sn: Option<&str>| {
        let mut attributes = Attributes::new().with("uid", AttrValue::string(uid));
        if let Some(sn) = sn {
            attributes.set("sn", vec![AttrValue::string(sn)]);
        }
        attributes
    };
    hr.put("CN=w1,OU=HR", "worker", worker("w1", Some("One")));
    hr.put("CN=w2,OU=HR", "worker", worker("w2", None));
    hr.put("CN=w3,OU=HR", "worker", worker("w3", Some("Three")));
    runner.add_connector(hr.connector("hr", Role::Source, 10));

    let reports = runner.run_cycle(true).await.unwrap();
    let export = reports.iter().find(|report| report.connector.0 == "openldap" && report.step == Step::Export).expect("export step");
    assert_eq!(export.status, sync_runner::StepStatus::CompletedErrors, "{}", export.detail);
    let id = ConnectorId("openldap".into());
    let objects = runner.store().cs_list(&id, &CsQuery::default()).await.unwrap();
    let refused: Vec<_> = objects.iter().filter(|cs| cs.error.is_some()).collect();
    assert_eq!(refused.len(), 1, "only the person without a surname");
    let error = refused[0].error.as_ref().unwrap();
    assert_eq!((error.stage, error.code.as_str()), (ErrorStage::Export, "schema-violation"), "{}", error.message);
    assert!(refused[0].dn.starts_with("uid=w2,"), "{}", refused[0].dn);
    let mut admin = slapd.admin().await.unwrap();
    let found = admin.conn().search(&format!("ou=people,{SUFFIX}"), ldap3::Scope::OneLevel, "(uid=*)", &["uid"]).await.unwrap();
    assert_eq!(found.len(), 2, "w1 and w3 were written");

    // A bind that may only read: every write is refused as permission-denied, per object.
    let reader = admin.create_person("reader", "reader@example.test", "Read.Only.1", None).await.unwrap();
    let mut config = common::ldap_config(&slapd);
    config.bind = connector_ldap::Bind::Simple { dn: reader, password: "Read.Only.1".to_string().into() };
    let read_only = connector_ldap::open(config).await.unwrap();
    let request = ExportRequest {
        dn: format!("uid=w9,ou=people,{SUFFIX}"),
        object_type: "inetOrgPerson".into(),
        anchor: None,
        change: PendingExport::Add(vec![
            AttrChange::Replace("sn".into(), vec![AttrValue::string("Nine")]),
            AttrChange::Replace("cn".into(), vec![AttrValue::string("w9")]),
        ]),
    };
    let refused = read_only.export.as_ref().unwrap().export(&request).await;
    assert!(matches!(&refused, Err(ConnectorError::Rejected { code, .. }) if code == "permission-denied"), "{refused:?}");
}
