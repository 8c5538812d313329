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
