//! The store conformance suite on SQLite (in memory), plus SQLite-only checks.
#![allow(clippy::expect_used, reason = "test code")]

use store::Store;
use store_sqlite::SqliteStore;

async fn fresh() -> Option<((), SqliteStore)> {
    let store = SqliteStore::memory().expect("open");
    store.migrate().await.expect("migrate");
    Some(((), store))
}

store::conformance_tests!(fresh());

#[tokio::test]
async fn data_survives_reopening_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("isthmus.db");
    let id = {
        let store = SqliteStore::open(&path).unwrap();
        store.migrate().await.unwrap();
        store.mv_insert("person").await.unwrap()
    };
    let reopened = SqliteStore::open(&path).unwrap();
    reopened.migrate().await.unwrap();
    assert_eq!(reopened.mv_get(id).await.unwrap().map(|mv| mv.object_type), Some("person".to_string()));
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("isthmus.db");
    let store = SqliteStore::open(&path).unwrap();
    store.migrate().await.unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("INSERT INTO schema_version (version) VALUES (99)", []).unwrap();
    }
    let err = store.migrate().await.unwrap_err();
    assert!(matches!(err, store::StoreError::TooNew { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("upgrade Isthmus"));
}

#[tokio::test]
async fn lookups_on_unindexed_attributes_are_refused_clearly() {
    let store = SqliteStore::memory().unwrap().index_only(["sourceAnchor".to_string()].into());
    store.migrate().await.unwrap();
    let err = store.mv_find("person", "mail", &[model::AttrValue::string("a")], store::Matching::Exact).await.unwrap_err();
    assert_eq!(err.to_string(), "conflict: attribute mail is not indexed for lookups; add it to the store's index list");
}

#[tokio::test]
async fn renames_follow_references_held_in_attributes_left_out_of_the_index_list() {
    let store = SqliteStore::memory().unwrap().index_only(["sourceAnchor".to_string()].into());
    store.migrate().await.unwrap();
    store::testkit::renames_follow_references(&store).await;
}

/// A database from before reference rows were kept for every attribute gets them on upgrade, so
/// renames imported afterwards still re-point references held in unlisted attributes.
#[tokio::test]
async fn upgrading_a_version_1_database_indexes_its_references() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("isthmus.db");
    let store = SqliteStore::open(&path).unwrap().index_only(["sourceAnchor".to_string()].into());
    store.migrate().await.unwrap();
    let connector = model::ConnectorId("ad".into());
    let run = store.run_start(&connector, "full-import", 1).await.unwrap();
    let group = model::Attributes::new().with("member", model::AttrValue::Reference("CN=Ann,OU=A".into()));
    let changes = [
        store::ImportChange::Upsert {
            anchor: model::Anchor(vec![1]),
            dn: "CN=g,OU=A".into(),
            object_type: "group".into(),
            attributes: group,
        },
        store::ImportChange::Upsert {
            anchor: model::Anchor(vec![2]),
            dn: "CN=Ann,OU=A".into(),
            object_type: "user".into(),
            attributes: model::Attributes::new(),
        },
    ];
    store.commit_import_page(&connector, run, &changes, None).await.unwrap();
    {
        // Back to version 1: no reference rows for unlisted attributes, no reference index.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DELETE FROM cs_values WHERE attribute = 'member'; DROP INDEX cs_values_reference; \
             DROP TABLE service_state; DROP INDEX cs_objects_connector; DROP INDEX cs_objects_unanchored; DROP INDEX cs_objects_dn_link; DROP INDEX cs_objects_link; \
             CREATE INDEX cs_objects_link ON cs_objects(link); DELETE FROM schema_version WHERE version >= 2;",
        )
        .unwrap();
    }
    let upgraded = SqliteStore::open(&path).unwrap().index_only(["sourceAnchor".to_string()].into());
    upgraded.migrate().await.unwrap();
    let rename = [store::ImportChange::Modify { anchor: model::Anchor(vec![2]), dn: "CN=Ann,OU=B".into(), changes: vec![] }];
    let counts = upgraded.commit_import_page(&connector, run, &rename, None).await.unwrap();
    assert_eq!(counts.updates, 2, "Ann renamed and the group re-pointed");
    let g = upgraded.cs_by_anchor(&connector, &model::Anchor(vec![1])).await.unwrap().unwrap();
    assert_eq!(g.attributes.get("member"), &[model::AttrValue::Reference("CN=Ann,OU=B".into())]);
}

/// One runner per database file: a second handle (another process) is refused while the first
/// holds the claim, and may claim once the first is gone.
#[tokio::test]
async fn one_runner_per_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let first = SqliteStore::open(&path).unwrap();
    first.migrate().await.unwrap();
    first.claim_runner(1).await.unwrap();
    first.claim_runner(2).await.expect("the holder may claim again");
    let second = SqliteStore::open(&path).unwrap();
    let refused = second.claim_runner(3).await.expect_err("a second runner is refused");
    assert!(matches!(refused, store::StoreError::Busy(_)), "{refused}");
    second.runs(1).await.expect("reading is not refused");
    drop(first);
    second.claim_runner(4).await.expect("free once the first is gone");
}

#[tokio::test]
async fn the_database_files_are_the_owners_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("isthmus.db");
    let store = SqliteStore::open(&path).unwrap();
    store.migrate().await.unwrap();
    store.mv_insert("person").await.unwrap();
    let mode = |suffix: &str| std::fs::metadata(format!("{}{suffix}", path.display())).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(""), mode("-wal")), (0o600, 0o600));
    drop(store);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _store = SqliteStore::open(&path).unwrap();
    assert_eq!(mode(""), 0o600, "an older, wider file is narrowed");
}
