//! The store conformance suite on a real PostgreSQL server (a private cluster from the test kit,
//! or the one `ISTHMUS_TEST_POSTGRES_URL` names), plus PostgreSQL-only checks.
#![allow(clippy::expect_used, reason = "test code")]

use store::Store;
use store_postgres::PostgresStore;
use testkit::postgres::Postgres;

/// A private server (stopped when the returned handle drops) and a migrated store on a fresh database.
async fn fresh() -> Option<(Postgres, PostgresStore)> {
    let server = testkit::available(Postgres::start())?;
    let (client, connection) = tokio_postgres::connect(server.url(), tokio_postgres::NoTls).await.expect("admin connect");
    tokio::spawn(connection);
    client.batch_execute("CREATE DATABASE isthmus_test").await.expect("create database");
    let store = PostgresStore::connect(&server.database_url("isthmus_test")).await.expect("connect to test database");
    store.migrate().await.expect("migrate");
    Some((server, store))
}

store::conformance_tests!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_do_not_collide() {
    let Some(server) = testkit::available(Postgres::start()) else { return };
    let (client, connection) = tokio_postgres::connect(server.url(), tokio_postgres::NoTls).await.expect("admin connect");
    tokio::spawn(connection);
    client.batch_execute("CREATE DATABASE isthmus_race").await.expect("create database");
    let url = server.database_url("isthmus_race");
    let (first, second) = (PostgresStore::connect(&url).await.expect("first"), PostgresStore::connect(&url).await.expect("second"));
    let (a, b) = tokio::join!(first.migrate(), second.migrate());
    a.expect("first migrate");
    b.expect("second migrate");
    let (race, race_connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("race connect");
    tokio::spawn(race_connection);
    let steps: i64 = race.query_one("SELECT COUNT(*) FROM schema_version", &[]).await.expect("versions").get(0);
    assert_eq!(steps, store_postgres::SCHEMA_VERSION, "each migration step recorded once");
    first.mv_insert("person").await.expect("usable");
}

#[tokio::test]
async fn plain_text_to_a_remote_host_is_refused() {
    let err = PostgresStore::connect("postgresql://isthmus@db.example.com/isthmus").await.err().expect("refused");
    assert!(err.to_string().contains("refusing a plain-text connection"), "{err}");
}

/// One runner per database: a second session is refused while the first holds the claim; the
/// claim ends with the first session (a killed runner's connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_per_database() {
    let Some(server) = testkit::available(Postgres::start()) else { return };
    let (client, connection) = tokio_postgres::connect(server.url(), tokio_postgres::NoTls).await.expect("admin connect");
    tokio::spawn(connection);
    client.batch_execute("CREATE DATABASE isthmus_claim").await.expect("create database");
    let url = server.database_url("isthmus_claim");
    let first = PostgresStore::connect(&url).await.expect("first");
    first.migrate().await.expect("migrate");
    first.claim_runner(1).await.expect("claim");
    let second = PostgresStore::connect(&url).await.expect("second");
    let refused = second.claim_runner(2).await.expect_err("a second runner is refused");
    assert!(matches!(refused, store::StoreError::Busy(_)), "{refused}");
    drop(first);
    // The session ends asynchronously once its connection task sees the client gone.
    let mut claimed = Err(refused);
    for _ in 0..50 {
        claimed = second.claim_runner(3).await;
        if claimed.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    claimed.expect("free once the first session ended");
}
