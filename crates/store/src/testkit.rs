//! The conformance suite every [`Store`] adapter runs. An adapter's test file calls
//! [`conformance_tests!`](crate::conformance_tests) with an async expression that yields
//! `Some((guard, store))`: a fresh, migrated store and whatever must outlive it (its server),
//! or `None` to skip (the test kit's availability policy decides).
//!
//! Each check panics with a message naming what broke.
#![allow(clippy::expect_used, reason = "a test suite: failing loudly is its job")]

use model::{
    Anchor, AttrChange, AttrValue, Attributes, ConnectorId, CsId, CsObject, ErrorStage, Lineage, MvAttribute, MvId, ObjectError,
    PendingExport, PendingImport,
};

use crate::{CsQuery, ImportChange, Matching, NewCsObject, RunCounts, Store, StoreError};

/// Generates one `#[tokio::test]` per check, each on a store made by `$make` (an async expression).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@tests $make; cs_objects, import_pages, import_modify, renames_follow_references, import_confirms_export_object, failed_page_changes_nothing,
            obsoletion, metaverse, disconnector_lookup, updates_keep_the_lookup_index, pending_export_summaries, run_history, run_history_retention, service_state, units_of_work, reference_lookups, index_attributes, interrupted_runs, migrate_is_idempotent);
    };
    (@tests $make:expr; $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                // `_guard` keeps whatever the store needs (e.g. its server) alive until the check ends.
                let Some((_guard, store)) = $make.await else { return };
                $crate::testkit::$check(&store).await;
            }
        )*
    };
}

fn ad() -> ConnectorId {
    ConnectorId("ad".into())
}

fn anchor(byte: u8) -> Anchor {
    Anchor(vec![byte; 16])
}

fn user(byte: u8, dn: &str, mail: &str) -> ImportChange {
    ImportChange::Upsert {
        anchor: anchor(byte),
        dn: dn.into(),
        object_type: "user".into(),
        attributes: Attributes::new().with("mail", AttrValue::string(mail)).with("objectGUID", AttrValue::Binary(vec![byte; 16])),
    }
}

/// Create, read (by id, anchor, DN), update, list with filters and paging, delete.
pub async fn cs_objects(store: &impl Store) {
    let mut attributes = Attributes::new().with("cn", AttrValue::string("Ann"));
    attributes.set("member", vec![AttrValue::Reference("CN=a".into()), AttrValue::Reference("CN=b".into())]);
    let id = store
        .cs_insert(NewCsObject {
            connector: ad(),
            anchor: Some(anchor(1)),
            dn: "CN=Ann,OU=Staff,DC=corp".into(),
            object_type: "user".into(),
            attributes: attributes.clone(),
            pending_import: Some(PendingImport::Add),
            pending_export: None,
            link: None,
        })
        .await
        .expect("insert");
    let got = store.cs_get(id).await.expect("get").expect("present");
    assert_eq!(got.attributes, attributes, "attributes round-trip");
    assert_eq!(got.pending_import, Some(PendingImport::Add));
    assert_eq!(store.cs_by_anchor(&ad(), &anchor(1)).await.expect("by anchor").map(|cs| cs.id), Some(id));
    assert_eq!(
        store.cs_by_anchor(&ConnectorId("other".into()), &anchor(1)).await.expect("by anchor").map(|cs| cs.id),
        None,
        "anchors are per connector"
    );
    assert_eq!(store.cs_by_dn(&ad(), "cn=ann,ou=staff,dc=CORP").await.expect("by dn").map(|cs| cs.id), Some(id), "DN lookup ignores case");

    let mv = store.mv_insert("person").await.expect("mv");
    let mut changed = got.clone();
    changed.link = Some(mv);
    changed.pending_import = None;
    changed.pending_export = Some(PendingExport::Update(vec![model::AttrChange::Clear("cn".into())]));
    changed.dn = "CN=Ann,OU=Moved,DC=corp".into();
    store.cs_update(&changed).await.expect("update");
    assert_eq!(store.cs_get(id).await.expect("get"), Some(changed.clone()));
    let error = ObjectError { stage: ErrorStage::Sync, code: "flow-error".into(), message: "boom".into(), target: None };
    store.cs_set_error(id, Some(&error)).await.expect("set error");
    assert_eq!(store.cs_get(id).await.expect("get").expect("present").error, Some(error.clone()));
    assert_eq!(store.cs_linked_to(mv).await.expect("linked").len(), 1);
    // A sync's write: its decisions land, the stored anchor, type and values stay.
    let mut decided = changed.clone();
    decided.link = None;
    decided.dn = "CN=Ann,OU=Again,DC=corp".into();
    decided.pending_export = Some(PendingExport::Delete);
    decided.pending_import = Some(PendingImport::Update);
    decided.error = None;
    decided.attributes = Attributes::new().with("cn", AttrValue::string("not stored by a sync"));
    decided.object_type = "contact".into();
    store.cs_update_state(&decided).await.expect("update state");
    let stored = store.cs_get(id).await.expect("get").expect("present");
    assert_eq!(
        (stored.link, stored.dn.as_str(), &stored.pending_export, stored.pending_import, &stored.error),
        (None, "CN=Ann,OU=Again,DC=corp", &Some(PendingExport::Delete), Some(PendingImport::Update), &None)
    );
    assert_eq!((&stored.attributes, stored.object_type.as_str(), &stored.anchor), (&changed.attributes, "user", &changed.anchor));
    assert!(store.cs_by_dn(&ad(), "cn=ann,ou=again,dc=corp").await.expect("by dn").is_some(), "the new DN is found");
    assert!(matches!(store.cs_update_state(&CsObject { id: CsId(id.0 + 999), ..decided.clone() }).await, Err(StoreError::NotFound(_))));
    store.cs_update(&CsObject { error: Some(error.clone()), ..changed.clone() }).await.expect("restore");

    for byte in 2..=5u8 {
        store
            .cs_insert(NewCsObject {
                connector: ad(),
                anchor: Some(anchor(byte)),
                dn: format!("CN=u{byte}"),
                object_type: "user".into(),
                attributes: Attributes::new(),
                pending_import: (byte % 2 == 0).then_some(PendingImport::Update),
                pending_export: None,
                link: None,
            })
            .await
            .expect("insert more");
    }
    let all = store.cs_list(&ad(), &CsQuery::default()).await.expect("list");
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|pair| pair[0].id < pair[1].id), "listed by id");
    let pending = store.cs_list(&ad(), &CsQuery { pending_import: true, ..CsQuery::default() }).await.expect("list pending");
    assert_eq!(pending.len(), 2, "only objects with a pending import");
    let exports = store.cs_list(&ad(), &CsQuery { pending_export: true, ..CsQuery::default() }).await.expect("list exports");
    assert_eq!(exports.iter().map(|cs| cs.id).collect::<Vec<_>>(), vec![id]);
    let errors = store.cs_list(&ad(), &CsQuery { with_error: true, ..CsQuery::default() }).await.expect("list errors");
    assert_eq!(errors.len(), 1);
    let pending_ids: Vec<CsId> = pending.iter().map(|cs| cs.id).collect();
    store.cs_clear_pending_import(&pending_ids).await.expect("clear pending imports");
    assert!(store.cs_list(&ad(), &CsQuery { pending_import: true, ..CsQuery::default() }).await.expect("list").is_empty(), "cleared");
    store.cs_clear_pending_import(&[]).await.expect("nothing to clear is fine");
    let page = store.cs_list(&ad(), &CsQuery { after: Some(all[1].id), limit: 2, ..CsQuery::default() }).await.expect("page");
    assert_eq!(page.iter().map(|cs| cs.id).collect::<Vec<_>>(), vec![all[2].id, all[3].id]);

    store.cs_delete(id).await.expect("delete");
    assert_eq!(store.cs_get(id).await.expect("get"), None);
    assert!(matches!(store.cs_delete(id).await, Err(StoreError::NotFound(_))), "deleting twice is NotFound");
}

/// Import pages: adds, unchanged, updates, deletes, counts and watermarks.
pub async fn import_pages(store: &impl Store) {
    assert_eq!(store.watermark(&ad()).await.expect("watermark"), None);
    let run = store.run_start(&ad(), "full-import", 1).await.expect("run");
    let first = [user(1, "CN=a", "a@x"), user(2, "CN=b", "b@x")];
    let counts = store.commit_import_page(&ad(), run, &first, Some(b"cookie-1")).await.expect("page 1");
    assert_eq!((counts.adds, counts.updates, counts.deletes, counts.unchanged), (2, 0, 0, 0));
    assert_eq!(store.watermark(&ad()).await.expect("watermark").as_deref(), Some(&b"cookie-1"[..]));
    let a = store.cs_by_anchor(&ad(), &anchor(1)).await.expect("a").expect("a present");
    assert_eq!(a.pending_import, Some(PendingImport::Add));
    assert_eq!(a.attributes.get("mail"), &[AttrValue::string("a@x")]);

    let again = store.commit_import_page(&ad(), run, &first, Some(b"cookie-2")).await.expect("page 2");
    assert_eq!((again.adds, again.unchanged), (0, 2), "the same data changes nothing");

    // Sync processed the adds.
    for byte in [1, 2] {
        let mut cs = store.cs_by_anchor(&ad(), &anchor(byte)).await.expect("get").expect("present");
        cs.pending_import = None;
        store.cs_update(&cs).await.expect("clear pending");
    }
    let changes = [user(1, "CN=a2", "a@x"), ImportChange::Delete { anchor: anchor(2) }, ImportChange::Delete { anchor: anchor(9) }];
    let counts = store.commit_import_page(&ad(), run, &changes, Some(b"cookie-3")).await.expect("page 3");
    assert_eq!(
        (counts.adds, counts.updates, counts.deletes, counts.unchanged),
        (0, 1, 1, 1),
        "a renamed, b deleted, unknown delete ignored"
    );
    let a = store.cs_by_anchor(&ad(), &anchor(1)).await.expect("a").expect("a present");
    assert_eq!((a.dn.as_str(), a.pending_import), ("CN=a2", Some(PendingImport::Update)));
    let b = store.cs_by_anchor(&ad(), &anchor(2)).await.expect("b").expect("b present until sync");
    assert_eq!(b.pending_import, Some(PendingImport::Delete));

    let retyped =
        [ImportChange::Upsert { anchor: anchor(1), dn: "CN=a2".into(), object_type: "contact".into(), attributes: a.attributes.clone() }];
    store.commit_import_page(&ad(), run, &retyped, None).await.expect("page 4");
    let a = store.cs_by_anchor(&ad(), &anchor(1)).await.expect("a").expect("a present");
    assert_eq!((a.object_type.as_str(), a.pending_import), ("contact", Some(PendingImport::DeleteAdd)), "a type change is delete-add");
    assert_eq!(store.watermark(&ad()).await.expect("watermark").as_deref(), Some(&b"cookie-3"[..]), "no watermark keeps the last one");

    store.clear_watermark(&ad()).await.expect("clear");
    assert_eq!(store.watermark(&ad()).await.expect("watermark"), None);
}

/// Attribute-level import changes: applied to the held object (values added and removed, DN
/// moved), counted as missed when the object is unknown or already deleted.
pub async fn import_modify(store: &impl Store) {
    let run = store.run_start(&ad(), "full-import", 1).await.expect("run");
    let mut group = user(1, "CN=g,OU=A", "g@x");
    if let ImportChange::Upsert { attributes, .. } = &mut group {
        attributes.set("member", vec![AttrValue::Reference("CN=a".into()), AttrValue::Reference("CN=b".into())]);
    }
    store.commit_import_page(&ad(), run, &[group], Some(b"full")).await.expect("full");
    let mut held = store.cs_by_anchor(&ad(), &anchor(1)).await.expect("get").expect("present");
    held.pending_import = None;
    store.cs_update(&held).await.expect("clear pending");

    let changes = [
        ImportChange::Modify {
            anchor: anchor(1),
            dn: "CN=g,OU=B".into(),
            changes: vec![
                AttrChange::Add("member".into(), vec![AttrValue::Reference("CN=c".into())]),
                AttrChange::Delete("member".into(), vec![AttrValue::Reference("CN=a".into())]),
                AttrChange::Replace("mail".into(), vec![AttrValue::string("g2@x")]),
            ],
        },
        ImportChange::Modify { anchor: anchor(7), dn: "CN=unknown".into(), changes: vec![AttrChange::Clear("mail".into())] },
    ];
    let counts = store.commit_import_page(&ad(), run, &changes, Some(b"delta")).await.expect("delta");
    assert_eq!((counts.updates, counts.missed, counts.adds), (1, 1, 0), "one applied, the unknown one missed");
    let changed = store.cs_by_anchor(&ad(), &anchor(1)).await.expect("get").expect("present");
    assert_eq!(changed.dn, "CN=g,OU=B", "the DN follows the move");
    assert_eq!(changed.object_type, held.object_type, "the type is kept");
    assert_eq!(changed.pending_import, Some(PendingImport::Update));
    assert_eq!(changed.attributes.get("member"), &[AttrValue::Reference("CN=b".into()), AttrValue::Reference("CN=c".into())]);
    assert_eq!(changed.attributes.get("mail"), &[AttrValue::string("g2@x")]);
    assert!(store.cs_by_anchor(&ad(), &anchor(7)).await.expect("get").is_none(), "a modify never creates an object");

    let same = [ImportChange::Modify {
        anchor: anchor(1),
        dn: "CN=g,OU=B".into(),
        changes: vec![AttrChange::Add("member".into(), vec![AttrValue::Reference("CN=b".into())])],
    }];
    let counts = store.commit_import_page(&ad(), run, &same, None).await.expect("again");
    assert_eq!(counts.unchanged, 1, "adding a value already held changes nothing");
    store.commit_import_page(&ad(), run, &[ImportChange::Delete { anchor: anchor(1) }], None).await.expect("delete");
    let counts = store.commit_import_page(&ad(), run, &same, None).await.expect("after delete");
    assert_eq!(counts.missed, 1, "a modify of a deleted object is missed, not a resurrection");
}

/// An imported rename (upsert or modify with a new DN) re-points the references other objects
/// of the connector space hold, as the directory did; other connectors are untouched.
pub async fn renames_follow_references(store: &impl Store) {
    let run = store.run_start(&ad(), "full-import", 1).await.expect("run");
    let mut group = user(1, "CN=g,OU=A", "g@x");
    if let ImportChange::Upsert { attributes, .. } = &mut group {
        attributes.set("member", vec![AttrValue::Reference("cn=Bob \\, Jr,OU=A".into()), AttrValue::Reference("CN=c,OU=A".into())]);
        attributes.set("managedBy", vec![AttrValue::Reference("CN=c,OU=A".into())]);
    }
    let bob = user(2, "CN=Bob \\, Jr,OU=A", "b@x");
    let c = user(3, "CN=c,OU=A", "c@x");
    store.commit_import_page(&ad(), run, &[group.clone(), bob, c], None).await.expect("full");
    let other = ConnectorId("other".into());
    store.commit_import_page(&other, run, &[group], None).await.expect("other connector");
    for byte in [1, 2, 3] {
        let mut cs = store.cs_by_anchor(&ad(), &anchor(byte)).await.expect("get").expect("present");
        cs.pending_import = None;
        store.cs_update(&cs).await.expect("clear pending");
    }

    let renames =
        [ImportChange::Modify { anchor: anchor(2), dn: "CN=Bob \\, Jr,OU=B".into(), changes: vec![] }, user(3, "CN=c2,OU=A", "c@x")];
    let counts = store.commit_import_page(&ad(), run, &renames, None).await.expect("renames");
    assert_eq!(counts.updates, 3, "two renamed objects, and the group once for both renames of the page");
    let g = store.cs_by_anchor(&ad(), &anchor(1)).await.expect("get").expect("group");
    assert_eq!(
        g.attributes.get("member"),
        &[AttrValue::Reference("CN=Bob \\, Jr,OU=B".into()), AttrValue::Reference("CN=c2,OU=A".into())],
        "references follow, matched case-insensitively"
    );
    assert_eq!(g.attributes.get("managedBy"), &[AttrValue::Reference("CN=c2,OU=A".into())]);
    assert_eq!(g.pending_import, Some(PendingImport::Update), "sync must see the group's new references");
    let untouched = store.cs_by_anchor(&other, &anchor(1)).await.expect("get").expect("other group");
    assert_eq!(untouched.attributes.get("managedBy"), &[AttrValue::Reference("CN=c,OU=A".into())], "only the same connector space");

    // A member renamed, then removed from the group by a value delta of the same page (which
    // names it by its new DN): the rename reaches the group first, so the removal takes. (A
    // group written after a rename in the same page keeps what the server sent: the generic
    // LDAP import test checks that against OpenLDAP, which does not rewrite references.)
    let page = [
        ImportChange::Modify { anchor: anchor(3), dn: "CN=c3,OU=A".into(), changes: vec![] },
        ImportChange::Modify {
            anchor: anchor(1),
            dn: "CN=g,OU=A".into(),
            changes: vec![AttrChange::Delete("member".into(), vec![AttrValue::Reference("CN=c3,OU=A".into())])],
        },
    ];
    store.commit_import_page(&ad(), run, &page, None).await.expect("rename and removal");
    let g = store.cs_by_anchor(&ad(), &anchor(1)).await.expect("get").expect("group");
    assert_eq!(g.attributes.get("member"), &[AttrValue::Reference("CN=Bob \\, Jr,OU=B".into())], "the removal took");
    assert_eq!(g.attributes.get("managedBy"), &[AttrValue::Reference("CN=c3,OU=A".into())], "the rename reached managedBy");

    // Written after a rename in the same page, an object keeps the references the server sent
    // (a server without referential integrity may still name the old DN); written before it,
    // it follows the rename.
    let mut stale = user(8, "CN=h,OU=A", "h@x");
    if let ImportChange::Upsert { attributes, .. } = &mut stale {
        attributes.set("member", vec![AttrValue::Reference("CN=c3,OU=A".into())]);
    }
    let mut before = user(9, "CN=i,OU=A", "i@x");
    if let ImportChange::Upsert { attributes, .. } = &mut before {
        attributes.set("member", vec![AttrValue::Reference("CN=c3,OU=A".into())]);
    }
    let page = [before, ImportChange::Modify { anchor: anchor(3), dn: "CN=c4,OU=A".into(), changes: vec![] }, stale];
    store.commit_import_page(&ad(), run, &page, None).await.expect("stale reference");
    let h = store.cs_by_anchor(&ad(), &anchor(8)).await.expect("get").expect("h");
    assert_eq!(h.attributes.get("member"), &[AttrValue::Reference("CN=c3,OU=A".into())], "what the server sent after the rename");
    let i = store.cs_by_anchor(&ad(), &anchor(9)).await.expect("get").expect("i");
    assert_eq!(i.attributes.get("member"), &[AttrValue::Reference("CN=c4,OU=A".into())], "written before the rename, it follows");
    let g = store.cs_by_anchor(&ad(), &anchor(1)).await.expect("get").expect("group");
    assert_eq!(g.attributes.get("managedBy"), &[AttrValue::Reference("CN=c4,OU=A".into())], "not written in the page, it follows");
}

/// An import that finds an unconfirmed export object by DN confirms it (anchor set, link kept).
pub async fn import_confirms_export_object(store: &impl Store) {
    let mv = store.mv_insert("person").await.expect("mv");
    let id = store
        .cs_insert(NewCsObject {
            connector: ad(),
            anchor: None,
            dn: "CN=New,OU=Staff,DC=corp".into(),
            object_type: "user".into(),
            attributes: Attributes::new().with("mail", AttrValue::string("new@x")),
            pending_import: None,
            pending_export: Some(PendingExport::Add(vec![])),
            link: Some(mv),
        })
        .await
        .expect("export object");
    let run = store.run_start(&ad(), "delta-import", 1).await.expect("run");
    let counts = store.commit_import_page(&ad(), run, &[user(7, "cn=new,ou=staff,dc=corp", "new@x")], None).await.expect("confirm");
    assert_eq!((counts.adds, counts.updates), (0, 1));
    let confirmed = store.cs_get(id).await.expect("get").expect("same object");
    assert_eq!(confirmed.anchor, Some(anchor(7)));
    assert_eq!(confirmed.link, Some(mv), "the link survives confirmation");
    assert_eq!(store.cs_list(&ad(), &CsQuery::default()).await.expect("list").len(), 1, "no second object");
}

/// A page that fails part-way leaves no trace, and its watermark is not stored.
pub async fn failed_page_changes_nothing(store: &impl Store) {
    let run = store.run_start(&ad(), "delta-import", 1).await.expect("run");
    store.commit_import_page(&ad(), run, &[user(1, "CN=a", "a@x")], Some(b"good")).await.expect("first page");
    let bad = [
        user(2, "CN=b", "b@x"),
        ImportChange::Upsert { anchor: Anchor(vec![]), dn: "CN=c".into(), object_type: "user".into(), attributes: Attributes::new() },
    ];
    let err = store.commit_import_page(&ad(), run, &bad, Some(b"bad")).await.expect_err("an empty anchor is refused");
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(store.cs_by_anchor(&ad(), &anchor(2)).await.expect("lookup"), None, "the page's first change was rolled back");
    assert_eq!(store.watermark(&ad()).await.expect("watermark").as_deref(), Some(&b"good"[..]), "the watermark did not advance");
}

/// A full import obsoletes the imported objects it did not see, and only those.
pub async fn obsoletion(store: &impl Store) {
    let first = store.run_start(&ad(), "full-import", 1).await.expect("run 1");
    store.commit_import_page(&ad(), first, &[user(1, "CN=a", "a@x"), user(2, "CN=b", "b@x")], None).await.expect("run 1 page");
    store
        .cs_insert(NewCsObject {
            connector: ad(),
            anchor: None,
            dn: "CN=pending".into(),
            object_type: "user".into(),
            attributes: Attributes::new(),
            pending_import: None,
            pending_export: Some(PendingExport::Add(vec![])),
            link: None,
        })
        .await
        .expect("export object");
    let second = store.run_start(&ad(), "full-import", 2).await.expect("run 2");
    store.commit_import_page(&ad(), second, &[user(1, "CN=a", "a@x")], None).await.expect("run 2 page");
    assert_eq!(store.obsolete_unseen(&ad(), second).await.expect("obsolete"), 1);
    let b = store.cs_by_anchor(&ad(), &anchor(2)).await.expect("b").expect("present");
    assert_eq!(b.pending_import, Some(PendingImport::Delete));
    let a = store.cs_by_anchor(&ad(), &anchor(1)).await.expect("a").expect("present");
    assert_ne!(a.pending_import, Some(PendingImport::Delete));
    let pending = store.cs_by_dn(&ad(), "CN=pending").await.expect("export object").expect("present");
    assert_eq!(pending.pending_import, None, "unconfirmed export objects are never obsoleted");
    assert_eq!(store.obsolete_unseen(&ad(), second).await.expect("again"), 0, "already marked");

    // A presence pass (modifies without changes) marks objects seen, and may move them.
    let third = store.run_start(&ad(), "delta-import", 3).await.expect("run 3");
    store.commit_import_page(&ad(), third, &[user(3, "CN=c", "c@x")], None).await.expect("run 3 upsert");
    let present = [ImportChange::Modify { anchor: anchor(1), dn: "CN=a,OU=moved".into(), changes: vec![] }];
    let counts = store.commit_import_page(&ad(), third, &present, None).await.expect("run 3 presence");
    assert_eq!(counts.updates, 1, "the move is applied");
    assert_eq!(store.obsolete_unseen(&ad(), third).await.expect("obsolete after presence"), 0, "a and c were named");
    let a = store.cs_by_anchor(&ad(), &anchor(1)).await.expect("a").expect("present");
    assert_eq!((a.dn.as_str(), a.pending_import == Some(PendingImport::Delete)), ("CN=a,OU=moved", false));
    let fourth = store.run_start(&ad(), "delta-import", 4).await.expect("run 4");
    let present = [ImportChange::Modify { anchor: anchor(3), dn: "CN=c".into(), changes: vec![] }];
    assert_eq!(store.commit_import_page(&ad(), fourth, &present, None).await.expect("run 4 presence").unchanged, 1);
    assert_eq!(store.obsolete_unseen(&ad(), fourth).await.expect("obsolete after run 4"), 1, "a was not named");
}

/// MV objects: attributes with lineage, lookups by value, delete clears links, paging.
pub async fn metaverse(store: &impl Store) {
    let id = store.mv_insert("person").await.expect("insert");
    let mut mv = store.mv_get(id).await.expect("get").expect("present");
    assert!(mv.attributes.is_empty());
    let lineage = vec![Lineage { rule: "In from AD - User Join".into(), precedence: 100, connector: ad(), cs_id: CsId(3) }];
    mv.attributes.insert("mail".into(), MvAttribute { values: vec![AttrValue::string("Ann@Corp.Example")], lineage: lineage.clone() });
    mv.attributes
        .insert("sourceAnchorBinary".into(), MvAttribute { values: vec![AttrValue::Binary(vec![1, 2, 3])], lineage: lineage.clone() });
    mv.attributes.insert("sourceAnchor".into(), MvAttribute { values: vec![AttrValue::string("AQID")], lineage });
    store.mv_update(&mv).await.expect("update");
    assert_eq!(store.mv_get(id).await.expect("get"), Some(mv.clone()), "attributes and lineage round-trip");

    let find = |attribute: &'static str, value: AttrValue, matching| async move {
        store.mv_find("person", attribute, &[value], matching).await.expect("find")
    };
    assert_eq!(find("mail", AttrValue::string("ann@corp.example"), Matching::IgnoreCase).await, vec![id]);
    assert_eq!(find("mail", AttrValue::string("ann@corp.example"), Matching::Exact).await, Vec::<MvId>::new());
    assert_eq!(find("sourceAnchorBinary", AttrValue::Binary(vec![1, 2, 3]), Matching::IgnoreCase).await, vec![id]);
    assert_eq!(find("sourceAnchor", AttrValue::string("aqid"), Matching::Exact).await, Vec::<MvId>::new(), "case-sensitive anchors");
    assert_eq!(
        store.mv_find("group", "mail", &[AttrValue::string("Ann@Corp.Example")], Matching::Exact).await.expect("find"),
        Vec::<MvId>::new(),
        "type matters"
    );

    mv.attributes.remove("mail");
    store.mv_update(&mv).await.expect("update");
    assert_eq!(
        find("mail", AttrValue::string("ann@corp.example"), Matching::IgnoreCase).await,
        Vec::<MvId>::new(),
        "index follows updates"
    );
    // Values changed in part (a group's members): the index holds exactly the new ones, and
    // an update with the same values (lineage only) keeps them.
    let member = |n: u8| AttrValue::MvReference(MvId(i64::from(n)));
    let lineage = vec![Lineage { rule: "r".into(), precedence: 1, connector: ad(), cs_id: CsId(3) }];
    mv.attributes.insert("member".into(), MvAttribute { values: vec![member(1), member(2), member(3)], lineage: lineage.clone() });
    store.mv_update(&mv).await.expect("members");
    mv.attributes.insert("member".into(), MvAttribute { values: vec![member(2), member(3), member(4)], lineage });
    store.mv_update(&mv).await.expect("one out, one in");
    for (n, expected) in [(1, vec![]), (2, vec![id]), (3, vec![id]), (4, vec![id])] {
        assert_eq!(find("member", member(n), Matching::Exact).await, expected, "member {n}");
    }
    mv.attributes.get_mut("member").expect("member").lineage[0].precedence = 2;
    store.mv_update(&mv).await.expect("lineage only");
    assert_eq!(find("member", member(4), Matching::Exact).await, vec![id]);
    assert_eq!(store.mv_get(id).await.expect("get"), Some(mv.clone()));

    let cs = store
        .cs_insert(NewCsObject {
            connector: ad(),
            anchor: Some(anchor(1)),
            dn: "CN=a".into(),
            object_type: "user".into(),
            attributes: Attributes::new(),
            pending_import: None,
            pending_export: None,
            link: Some(id),
        })
        .await
        .expect("cs");
    let second = store.mv_insert("group").await.expect("second");
    assert_eq!(store.mv_list(None, 0).await.expect("list"), vec![id, second]);
    assert_eq!(store.mv_list(Some(id), 5).await.expect("page"), vec![second]);
    store.mv_delete(id).await.expect("delete");
    assert_eq!(store.mv_get(id).await.expect("get"), None);
    assert_eq!(store.cs_get(cs).await.expect("cs").expect("present").link, None, "links to a deleted MV object are cleared");
}

/// Outbound join lookups find disconnectors only.
pub async fn disconnector_lookup(store: &impl Store) {
    let cloud = ConnectorId("cloud".into());
    let mv = store.mv_insert("person").await.expect("mv");
    for (byte, link) in [(1u8, None), (2, Some(mv))] {
        store
            .cs_insert(NewCsObject {
                connector: cloud.clone(),
                anchor: Some(anchor(byte)),
                dn: format!("CN={byte}"),
                object_type: "user".into(),
                attributes: Attributes::new().with("onPremisesImmutableId", AttrValue::string("AQID")),
                pending_import: None,
                pending_export: None,
                link,
            })
            .await
            .expect("cs");
    }
    let found = store.cs_find(&cloud, "user", "onPremisesImmutableId", &[AttrValue::string("AQID")], Matching::Exact).await.expect("find");
    assert_eq!(found.len(), 1, "the joined one is not a candidate");
    assert_eq!(store.cs_get(found[0]).await.expect("get").expect("present").link, None);
    assert!(
        store
            .cs_find(&cloud, "user", "onPremisesImmutableId", &[AttrValue::string("aqid")], Matching::Exact)
            .await
            .expect("find")
            .is_empty()
    );

    // A reference value is found through the reference index, exactly or ignoring case, and a
    // text value that spells the same name is not a reference.
    let report = store
        .cs_insert(NewCsObject {
            connector: cloud.clone(),
            anchor: Some(anchor(3)),
            dn: "CN=3".into(),
            object_type: "user".into(),
            attributes: Attributes::new().with("manager", AttrValue::Reference("CN=Boss,OU=A".into())),
            pending_import: None,
            pending_export: None,
            link: None,
        })
        .await
        .expect("cs");
    let cloud = &cloud;
    let by = |value: AttrValue, matching: Matching| async move {
        store.cs_find(cloud, "user", "manager", &[AttrValue::string("unrelated"), value], matching).await.expect("find")
    };
    assert_eq!(by(AttrValue::Reference("CN=Boss,OU=A".into()), Matching::Exact).await, vec![report]);
    assert_eq!(by(AttrValue::Reference("cn=boss,ou=a".into()), Matching::IgnoreCase).await, vec![report]);
    assert_eq!(by(AttrValue::Reference("cn=boss,ou=a".into()), Matching::Exact).await, vec![], "case counts when asked");
    assert_eq!(by(AttrValue::string("CN=Boss,OU=A"), Matching::IgnoreCase).await, vec![], "a text value is not a reference");
}

/// An export's plan: every pending export of the connector, in id order, with its kind and
/// whether the object exists in the directory; other connectors and settled objects are not in it.
pub async fn pending_export_summaries(store: &impl Store) {
    let cloud = ConnectorId("cloud".into());
    let put = |byte: u8, connector: &ConnectorId, anchored: bool, pending: Option<PendingExport>| NewCsObject {
        connector: connector.clone(),
        anchor: anchored.then(|| anchor(byte)),
        dn: format!("CN={byte}"),
        object_type: "user".into(),
        attributes: Attributes::new(),
        pending_import: None,
        pending_export: pending,
        link: None,
    };
    let change = || vec![model::AttrChange::Replace("mail".into(), vec![AttrValue::string("m@x")])];
    let add = store.cs_insert(put(1, &cloud, false, Some(PendingExport::Add(change())))).await.expect("add");
    let update = store.cs_insert(put(2, &cloud, true, Some(PendingExport::Update(change())))).await.expect("update");
    store.cs_insert(put(3, &cloud, true, None)).await.expect("settled");
    let rename = store
        .cs_insert(put(4, &cloud, true, Some(PendingExport::Rename { new_dn: "CN=New".into(), changes: change() })))
        .await
        .expect("rename");
    let delete = store.cs_insert(put(5, &cloud, true, Some(PendingExport::Delete))).await.expect("delete");
    let never_created = store.cs_insert(put(6, &cloud, false, Some(PendingExport::Delete))).await.expect("delete unanchored");
    store.cs_insert(put(7, &ad(), true, Some(PendingExport::Delete))).await.expect("other connector");
    let summary = |id, kind, anchored| crate::PendingSummary { id, kind, anchored };
    assert_eq!(
        store.cs_pending_exports(&cloud).await.expect("summaries"),
        vec![
            summary(add, crate::ExportKind::Add, false),
            summary(update, crate::ExportKind::Update, true),
            summary(rename, crate::ExportKind::Rename, true),
            summary(delete, crate::ExportKind::Delete, true),
            summary(never_created, crate::ExportKind::Delete, false),
        ]
    );
    assert_eq!(store.cs_pending_exports(&ConnectorId("nobody".into())).await.expect("none"), vec![]);
}

/// An update changes the lookup index in exactly the values that changed: old values are no
/// longer found, new ones are, unchanged ones still are.
pub async fn updates_keep_the_lookup_index(store: &impl Store) {
    let cloud = ConnectorId("cloud".into());
    let mut attributes = Attributes::new().with("mail", AttrValue::string("a@x"));
    attributes.set("proxyAddresses", vec![AttrValue::string("smtp:p1@x"), AttrValue::string("smtp:p2@x")]);
    let new = NewCsObject {
        connector: cloud.clone(),
        anchor: Some(anchor(7)),
        dn: "CN=7".into(),
        object_type: "user".into(),
        attributes,
        pending_import: None,
        pending_export: None,
        link: None,
    };
    let id = store.cs_insert(new).await.expect("cs");
    let find = |attribute: &'static str, value: &'static str| {
        let cloud = cloud.clone();
        async move { store.cs_find(&cloud, "user", attribute, &[AttrValue::string(value)], Matching::IgnoreCase).await.expect("find") }
    };
    let mut object = store.cs_get(id).await.expect("get").expect("present");
    object.attributes.set("mail", vec![AttrValue::string("b@x")]);
    object.attributes.set("proxyAddresses", vec![AttrValue::string("smtp:p2@x"), AttrValue::string("smtp:P3@x")]);
    store.cs_update(&object).await.expect("update");
    assert!(find("mail", "a@x").await.is_empty(), "the old value is gone");
    assert_eq!(find("mail", "B@X").await, vec![id]);
    assert!(find("proxyAddresses", "smtp:p1@x").await.is_empty());
    assert_eq!(find("proxyAddresses", "smtp:p2@x").await, vec![id], "an unchanged value is still found");
    assert_eq!(find("proxyAddresses", "smtp:p3@x").await, vec![id]);
    object.attributes.set("proxyAddresses", vec![]);
    store.cs_update(&object).await.expect("clear");
    assert!(find("proxyAddresses", "smtp:p2@x").await.is_empty());
}

/// Run history, newest first.
pub async fn run_history(store: &impl Store) {
    let first = store.run_start(&ad(), "full-import", 100).await.expect("start");
    store.run_finish(first, 160, "success", RunCounts { adds: 5, updates: 0, deletes: 0, errors: 0 }).await.expect("finish");
    let second = store.run_start(&ad(), "delta-sync", 200).await.expect("start");
    let runs = store.runs(10).await.expect("runs");
    assert_eq!(runs.iter().map(|run| run.id).collect::<Vec<_>>(), vec![second, first]);
    assert_eq!(runs[1].finished, Some(160));
    assert_eq!(runs[1].counts.adds, 5);
    assert_eq!((runs[0].finished, runs[0].status.as_str()), (None, "running"));
    assert_eq!(store.runs(1).await.expect("runs").len(), 1);
}

/// The lookup index follows the attribute list: an unlisted attribute is refused, a newly
/// listed one finds objects stored before, references stay findable, and the list holds for a
/// later `migrate` of the same handle.
pub async fn index_attributes(store: &impl Store) {
    let cs = |byte: u8, mail: &str, employee: &str| NewCsObject {
        connector: ad(),
        anchor: Some(anchor(byte)),
        dn: format!("CN={byte}"),
        object_type: "user".into(),
        attributes: Attributes::new()
            .with("mail", AttrValue::string(mail))
            .with("employeeID", AttrValue::string(employee))
            .with("manager", AttrValue::Reference("CN=Boss".into())),
        pending_import: None,
        pending_export: None,
        link: None,
    };
    let find = |attribute: &'static str, value: &'static str| async move {
        store.cs_find(&ad(), "user", attribute, &[AttrValue::string(value)], Matching::IgnoreCase).await
    };
    let only_mail: std::collections::BTreeSet<String> = ["mail".to_string()].into();
    store.cs_insert(cs(1, "ann@x", "E1")).await.expect("before");
    let mv = store.mv_insert("person").await.expect("mv");
    let mut person = store.mv_get(mv).await.expect("get").expect("mv");
    let lineage = vec![Lineage { rule: "r".into(), precedence: 1, connector: ad(), cs_id: CsId(1) }];
    person.attributes.insert("employeeID".into(), MvAttribute { values: vec![AttrValue::string("E1")], lineage: lineage.clone() });
    person.attributes.insert("mail".into(), MvAttribute { values: vec![AttrValue::string("ann@x")], lineage });
    store.mv_update(&person).await.expect("mv values");

    assert!(store.index_attributes(&only_mail).await.expect("narrow") > 0, "rows of employeeID removed");
    store.cs_insert(cs(2, "bob@x", "E2")).await.expect("after");
    assert_eq!(find("mail", "BOB@x").await.expect("listed").len(), 1);
    assert!(find("employeeID", "E2").await.is_err(), "an unlisted attribute is refused, not silently empty");
    assert!(store.mv_find("person", "employeeID", &[AttrValue::string("E1")], Matching::Exact).await.is_err());
    let by_reference = store.cs_find(&ad(), "user", "manager", &[AttrValue::Reference("CN=Boss".into())], Matching::IgnoreCase).await;
    assert!(by_reference.is_err(), "references are kept for renames, but a lookup by them needs the list");
    assert_eq!(store.index_attributes(&only_mail).await.expect("same"), 0, "the same list changes nothing");

    let both: std::collections::BTreeSet<String> = ["mail".to_string(), "employeeID".to_string()].into();
    assert!(store.index_attributes(&both).await.expect("widen") >= 3, "employeeID rows written from the stored objects");
    let mut found = find("employeeID", "e1").await.expect("listed now");
    found.extend(find("employeeID", "e2").await.expect("listed now"));
    assert_eq!(found.len(), 2, "objects stored before and after the narrow list");
    assert_eq!(store.mv_find("person", "employeeID", &[AttrValue::string("E1")], Matching::Exact).await.expect("mv"), vec![mv]);
    store.migrate().await.expect("migrate again");
    assert!(store.cs_find(&ad(), "user", "sn", &[AttrValue::string("x")], Matching::Exact).await.is_err(), "the stored list holds");
}

/// Reference resolution without reading objects: DNs (any case) → MV objects of joined
/// objects, and MV objects → DNs of a connector's joined objects; disconnectors and other
/// connectors are not answers. And a sync page's set-based reads (`cs_linked_to_many`,
/// `mv_get_many`).
pub async fn reference_lookups(store: &impl Store) {
    let (ann_mv, bob_mv, cloud_only) = (
        store.mv_insert("person").await.expect("mv"),
        store.mv_insert("person").await.expect("mv"),
        store.mv_insert("person").await.expect("mv"),
    );
    let put = |byte: u8, connector: &str, dn: &str, link: Option<MvId>| NewCsObject {
        connector: ConnectorId(connector.into()),
        anchor: Some(anchor(byte)),
        dn: dn.into(),
        object_type: "user".into(),
        attributes: Attributes::new(),
        pending_import: None,
        pending_export: None,
        link,
    };
    store.cs_insert(put(1, "ad", "CN=Ann,OU=A", Some(ann_mv))).await.expect("ann");
    store.cs_insert(put(2, "ad", "CN=Bob,OU=A", Some(bob_mv))).await.expect("bob");
    store.cs_insert(put(3, "ad", "CN=Loose,OU=A", None)).await.expect("disconnector");
    store.cs_insert(put(4, "tenant", "objectId=ann", Some(ann_mv))).await.expect("cloud ann");
    store.cs_insert(put(5, "tenant", "objectId=solo", Some(cloud_only))).await.expect("cloud only");
    let dns = ["cn=ANN,ou=a".to_string(), "CN=Loose,OU=A".into(), "CN=Nobody".into(), "CN=Bob,OU=A".into()];
    let mut links = store.cs_links_by_dn(&ad(), &dns).await.expect("links");
    links.sort();
    assert_eq!(links, vec![("cn=ann,ou=a".to_string(), ann_mv), ("cn=bob,ou=a".to_string(), bob_mv)]);
    assert_eq!(store.cs_links_by_dn(&ConnectorId("tenant".into()), &dns).await.expect("other connector"), vec![]);
    let mut dns = store.cs_dns_by_link(&ConnectorId("tenant".into()), &[ann_mv, bob_mv, cloud_only]).await.expect("dns");
    dns.sort();
    assert_eq!(dns, vec![(ann_mv, "objectId=ann".to_string()), (cloud_only, "objectId=solo".to_string())]);
    assert_eq!(store.cs_dns_by_link(&ad(), &[]).await.expect("none asked"), vec![]);

    // A sync page's gather: every object joined to the MV objects asked, by (link, id); the MV
    // objects that exist, in id order, whatever order they were asked in.
    let gone = MvId(cloud_only.0 + 1000);
    let linked = store.cs_linked_to_many(&[cloud_only, ann_mv, gone]).await.expect("linked to many");
    let shape: Vec<(Option<MvId>, String)> = linked.iter().map(|cs| (cs.link, cs.dn.clone())).collect();
    assert_eq!(
        shape,
        vec![(Some(ann_mv), "CN=Ann,OU=A".to_string()), (Some(ann_mv), "objectId=ann".into()), (Some(cloud_only), "objectId=solo".into())]
    );
    assert_eq!(linked[0], store.cs_linked_to(ann_mv).await.expect("linked")[0], "the same objects as one by one");
    assert_eq!(store.cs_linked_to_many(&[]).await.expect("none asked"), vec![]);
    let mut bob = store.mv_get(bob_mv).await.expect("get").expect("bob");
    bob.attributes.insert("displayName".into(), model::MvAttribute { values: vec![AttrValue::string("Bob")], lineage: Vec::new() });
    store.mv_update(&bob).await.expect("update");
    let many = store.mv_get_many(&[cloud_only, gone, bob_mv, ann_mv]).await.expect("get many");
    assert_eq!(many.iter().map(|mv| mv.id).collect::<Vec<_>>(), vec![ann_mv, bob_mv, cloud_only]);
    assert_eq!(many[1], bob, "attributes read as mv_get reads them");
    assert_eq!(store.mv_get_many(&[]).await.expect("none asked"), vec![]);
}

/// A unit of work: rolled back, none of its writes stay; committed, all do; a failed call inside
/// it undoes only itself; units do not nest; commit without one is refused.
pub async fn units_of_work(store: &impl Store) {
    let new = |byte: u8, dn: &str| NewCsObject {
        connector: ad(),
        anchor: Some(anchor(byte)),
        dn: dn.into(),
        object_type: "user".into(),
        attributes: Attributes::new().with("mail", AttrValue::string(format!("{byte}@x"))),
        pending_import: None,
        pending_export: None,
        link: None,
    };
    assert!(store.commit_unit().await.is_err(), "no unit open");
    store.begin_unit().await.expect("begin");
    assert!(store.begin_unit().await.is_err(), "units do not nest");
    let first = store.cs_insert(new(1, "CN=One")).await.expect("insert");
    let mv = store.mv_insert("person").await.expect("mv");
    store.rollback_unit().await.expect("rollback");
    assert_eq!(store.cs_get(first).await.expect("read"), None, "rolled back");
    assert_eq!(store.mv_get(mv).await.expect("read"), None, "rolled back");

    store.begin_unit().await.expect("begin again");
    let second = store.cs_insert(new(2, "CN=Two")).await.expect("insert");
    // A duplicate anchor fails alone; the unit goes on.
    assert!(store.cs_insert(new(2, "CN=Twin")).await.is_err(), "duplicate anchor");
    let mut object = store.cs_get(second).await.expect("read").expect("inside the unit, its own write is seen");
    object.link = Some(store.mv_insert("person").await.expect("mv"));
    store.cs_update(&object).await.expect("update");
    store.commit_unit().await.expect("commit");
    let stored = store.cs_get(second).await.expect("read").expect("committed");
    assert_eq!(stored.link, object.link);
    assert_eq!(store.cs_by_dn(&ad(), "CN=Twin").await.expect("read"), None);
}

/// A service's state: absent, written, replaced; keys and services apart; no connector's watermark.
pub async fn service_state(store: &impl Store) {
    assert_eq!(store.service_state("password-hash-sync", "ad#DC=x").await.expect("read"), None);
    store.set_service_state("password-hash-sync", "ad#DC=x", b"one").await.expect("write");
    store.set_service_state("password-hash-sync", "ad#DC=y", b"other").await.expect("write");
    store.set_service_state("password-hash-sync", "ad#DC=x", b"two").await.expect("replace");
    assert_eq!(store.service_state("password-hash-sync", "ad#DC=x").await.expect("read").as_deref(), Some(&b"two"[..]));
    assert_eq!(store.service_state("password-hash-sync", "ad#DC=y").await.expect("read").as_deref(), Some(&b"other"[..]));
    assert_eq!(store.service_state("another", "ad#DC=x").await.expect("read"), None);
    assert_eq!(store.watermark(&ConnectorId("ad#DC=x".into())).await.expect("watermark"), None);
}

/// Retention removes finished steps older than the cut, never a running one.
pub async fn run_history_retention(store: &impl Store) {
    let old = store.run_start(&ad(), "full-import", 100).await.expect("start");
    store.run_finish(old, 160, "success", RunCounts::default()).await.expect("finish");
    let old_running = store.run_start(&ad(), "export", 150).await.expect("start");
    let new = store.run_start(&ad(), "delta-sync", 500).await.expect("start");
    store.run_finish(new, 510, "success", RunCounts::default()).await.expect("finish");
    assert_eq!(store.runs_prune(400).await.expect("prune"), 1);
    let left: Vec<i64> = store.runs(10).await.expect("runs").iter().map(|run| run.id).collect();
    assert_eq!(left, vec![new, old_running]);
    assert_eq!(store.runs_prune(400).await.expect("prune again"), 0);
}

/// Claiming the runner marks runs a killed runner left `running` as `interrupted`; finished
/// runs keep their status; claiming again changes nothing more.
pub async fn interrupted_runs(store: &impl Store) {
    let done = store.run_start(&ad(), "full-import", 100).await.expect("start");
    store.run_finish(done, 160, "success", RunCounts::default()).await.expect("finish");
    let killed = store.run_start(&ad(), "export", 200).await.expect("start");
    assert_eq!(store.claim_runner(300).await.expect("claim"), 1, "one run was left running");
    let runs = store.runs(10).await.expect("runs");
    let status = |id: i64| runs.iter().find(|run| run.id == id).map(|run| (run.status.clone(), run.finished)).expect("run");
    assert_eq!(status(killed), ("interrupted".to_string(), Some(300)));
    assert_eq!(status(done), ("success".to_string(), Some(160)));
    assert_eq!(store.claim_runner(400).await.expect("claim again"), 0);
}

/// `migrate` twice is harmless.
pub async fn migrate_is_idempotent(store: &impl Store) {
    store.migrate().await.expect("second migrate");
    store.mv_insert("person").await.expect("still works");
}
