//! The connector contract suite (feature `testkit`): what every connector must do, checked the
//! same way for each. A connector's tests provide a [`Fixture`] that changes its directory
//! behind the connector's back; operations the connector lacks (no export) are skipped.
//!
//! Each check panics with a message naming the broken promise.
#![allow(clippy::expect_used, reason = "a test suite: failing loudly is its job")]

use std::collections::BTreeSet;

use model::{AttrChange, AttrValue, Attributes, ImportChange, PendingExport};

use crate::{BoxFuture, Connector, ConnectorError, ExportRequest};

/// Changes a test directory directly (not through the connector).
pub trait Fixture: Send {
    /// Creates an object of `object_type` at `dn` with `attributes`.
    fn create<'a>(&'a mut self, dn: &'a str, object_type: &'a str, attributes: Attributes) -> BoxFuture<'a, ()>;
    /// Replaces one attribute of the object at `dn`.
    fn modify<'a>(&'a mut self, dn: &'a str, attribute: &'a str, value: &'a str) -> BoxFuture<'a, ()>;
    /// Deletes the object at `dn`.
    fn delete<'a>(&'a mut self, dn: &'a str) -> BoxFuture<'a, ()>;
    /// A DN for a new test object named `name`, and its object type (e.g. `user`).
    fn new_object(&self, name: &str) -> (String, String);
    /// An attribute every test object may carry (e.g. `description`).
    fn free_attribute(&self) -> &str;
    /// The DN an import shows for the object created at `dn`: the same, unless the directory
    /// names objects itself (a cloud directory names them by the id it assigns).
    fn imported_dn(&self, dn: &str) -> String {
        dn.to_string()
    }
}

/// All changes of a full import and the watermark of its last page.
pub async fn full_import(connector: &Connector) -> (Vec<ImportChange>, Vec<u8>) {
    let mut changes = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    let mut pages = 0;
    loop {
        let page = connector.import.full_page(cursor.as_deref()).await.expect("full import page");
        pages += 1;
        assert!(pages < 100_000, "full import never ends");
        changes.extend(page.changes);
        match page.next {
            Some(next) => cursor = Some(next),
            None => {
                let watermark = page.watermark.expect("the last page of a full import carries a watermark");
                return (changes, watermark);
            }
        }
    }
}

/// All changes of a delta import from `watermark`, and the last watermark it gave.
pub async fn delta_import(connector: &Connector, watermark: &[u8]) -> (Vec<ImportChange>, Vec<u8>) {
    let mut changes = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    let mut last = watermark.to_vec();
    loop {
        let page = connector.import.delta_page(watermark, cursor.as_deref()).await.expect("delta import page");
        changes.extend(page.changes);
        if let Some(mark) = page.watermark {
            last = mark;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return (changes, last),
        }
    }
}

fn dn_of(change: &ImportChange) -> Option<&str> {
    match change {
        ImportChange::Upsert { dn, .. } | ImportChange::Modify { dn, .. } => Some(dn),
        ImportChange::Delete { .. } => None,
    }
}

/// Full import: every object once, anchors unique and non-empty, a watermark at the end.
pub async fn full_import_sees_every_object_once(connector: &Connector, fixture: &mut dyn Fixture) {
    let mut created = Vec::new();
    for index in 0..5 {
        let (dn, object_type) = fixture.new_object(&format!("contract-full-{index}"));
        fixture.create(&dn, &object_type, Attributes::new()).await;
        created.push(dn);
    }
    let (changes, _) = full_import(connector).await;
    let mut anchors = BTreeSet::new();
    for change in &changes {
        let ImportChange::Upsert { anchor, .. } = change else { panic!("a full import yields only upserts, got {change:?}") };
        assert!(!anchor.0.is_empty(), "empty anchor");
        assert!(anchors.insert(anchor.0.clone()), "anchor seen twice in one full import");
    }
    let dns: BTreeSet<String> = changes.iter().filter_map(dn_of).map(str::to_lowercase).collect();
    for dn in created {
        let imported = fixture.imported_dn(&dn);
        assert!(dns.contains(&imported.to_lowercase()), "{imported} missing from the full import");
    }
}

/// Delta import: nothing after nothing; then an add, a modify and a delete, each seen.
pub async fn delta_import_sees_add_modify_delete(connector: &Connector, fixture: &mut dyn Fixture) {
    let (dn_kept, object_type) = fixture.new_object("contract-delta-kept");
    fixture.create(&dn_kept, &object_type, Attributes::new()).await;
    let (dn_gone, object_type_gone) = fixture.new_object("contract-delta-gone");
    fixture.create(&dn_gone, &object_type_gone, Attributes::new()).await;
    let (changes, watermark) = full_import(connector).await;
    let anchor_of = |dn: &str| {
        changes
            .iter()
            .find_map(|change| match change {
                ImportChange::Upsert { anchor, dn: found, .. } if found.eq_ignore_ascii_case(dn) => Some(anchor.clone()),
                _ => None,
            })
            .expect("object in the full import")
    };
    let (gone_anchor, kept_anchor) = (anchor_of(&fixture.imported_dn(&dn_gone)), anchor_of(&fixture.imported_dn(&dn_kept)));

    let (quiet, watermark) = delta_import(connector, &watermark).await;
    let touched: Vec<_> = quiet.iter().filter(|change| dn_of(change).is_some_and(|dn| dn.starts_with("contract"))).collect();
    assert!(touched.is_empty(), "a delta without changes reports none of ours: {touched:?}");

    let (dn_new, object_type_new) = fixture.new_object("contract-delta-new");
    fixture.create(&dn_new, &object_type_new, Attributes::new()).await;
    let attribute = fixture.free_attribute().to_string();
    fixture.modify(&dn_kept, &attribute, "changed by the contract suite").await;
    fixture.delete(&dn_gone).await;
    let (changes, _) = delta_import(connector, &watermark).await;
    let dn_new = fixture.imported_dn(&dn_new);
    assert!(changes.iter().filter_map(dn_of).any(|dn| dn.eq_ignore_ascii_case(&dn_new)), "the add is seen: {changes:?}");
    // Seen as the object's full state, or as attribute changes that set the new value.
    let modified = changes.iter().find_map(|change| match change {
        ImportChange::Upsert { anchor, attributes, .. } if *anchor == kept_anchor => Some(attributes.get(&attribute).to_vec()),
        ImportChange::Modify { anchor, changes, .. } if *anchor == kept_anchor => {
            let mut attributes = model::Attributes::new();
            attributes.apply(changes);
            Some(attributes.get(&attribute).to_vec())
        }
        _ => None,
    });
    let modified = modified.expect("the modify is seen");
    assert_eq!(modified, [AttrValue::string("changed by the contract suite")]);
    assert!(
        changes.iter().any(|change| matches!(change, ImportChange::Delete { anchor } if *anchor == gone_anchor)),
        "the delete is seen by anchor"
    );
}

/// A watermark the connector cannot use is `WatermarkExpired` (so the runner falls back to a full import).
pub async fn bad_watermark_means_full_import(connector: &Connector, _fixture: &mut dyn Fixture) {
    match connector.import.delta_page(b"\xff not a watermark of this connector \xff", None).await {
        Err(ConnectorError::WatermarkExpired(_)) => {}
        other => panic!("expected WatermarkExpired, got {other:?}"),
    }
}

/// Export: an add returns an anchor the next import shows; update and delete take effect;
/// a refused change is `Rejected`, not a failed run.
pub async fn export_add_update_delete(connector: &Connector, fixture: &mut dyn Fixture) {
    let Some(export) = &connector.export else { return };
    let (dn, object_type) = fixture.new_object("contract-export");
    let attribute = fixture.free_attribute().to_string();
    let add = ExportRequest {
        dn: dn.clone(),
        object_type: object_type.clone(),
        anchor: None,
        change: PendingExport::Add(vec![AttrChange::Replace(attribute.clone(), vec![AttrValue::string("first")])]),
    };
    let outcome = export.export(&add).await.expect("add");
    let anchor = outcome.anchor.expect("an add returns the new object's anchor");
    let (changes, _) = full_import(connector).await;
    let imported = changes.iter().find_map(|change| match change {
        ImportChange::Upsert { anchor: found, attributes, .. } if *found == anchor => Some(attributes.clone()),
        _ => None,
    });
    assert_eq!(imported.expect("the added object is imported under its anchor").get(&attribute), &[AttrValue::string("first")]);

    let update = ExportRequest {
        dn: dn.clone(),
        object_type: object_type.clone(),
        anchor: Some(anchor.clone()),
        change: PendingExport::Update(vec![AttrChange::Replace(attribute.clone(), vec![AttrValue::string("second")])]),
    };
    export.export(&update).await.expect("update");
    let again = export.export(&ExportRequest { change: PendingExport::Add(vec![]), anchor: None, ..update.clone() }).await;
    assert!(matches!(again, Err(ConnectorError::Rejected { .. })), "adding an existing DN is a per-object rejection: {again:?}");
    let delete = ExportRequest { dn, object_type, anchor: Some(anchor.clone()), change: PendingExport::Delete };
    export.export(&delete).await.expect("delete");
    let (changes, _) = full_import(connector).await;
    assert!(
        !changes.iter().any(|change| matches!(change, ImportChange::Upsert { anchor: found, .. } if *found == anchor)),
        "the deleted object is gone"
    );
}

/// Generates one `#[tokio::test]` per contract check; `$fixture` is an async expression giving
/// `Some((guard, connector, fixture))` or `None` to skip.
#[macro_export]
macro_rules! contract_tests {
    ($fixture:expr) => {
        $crate::contract_tests!(@tests $fixture; full_import_sees_every_object_once, delta_import_sees_add_modify_delete,
            bad_watermark_means_full_import, export_add_update_delete);
    };
    (@tests $fixture:expr; $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some((_guard, connector, mut fixture)) = $fixture.await else { return };
                $crate::testkit::$check(&connector, &mut fixture).await;
            }
        )*
    };
}
