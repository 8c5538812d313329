//! Smoke test of the PostgreSQL kit: a private cluster starts, takes a connection and a query,
//! and stops when dropped.

use testkit::available;
use testkit::postgres::Postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_cluster_answers_queries_and_stops_on_drop() {
    let Some(pg) = available(Postgres::start()) else {
        return;
    };
    println!("postgres pid {:?} at {} ready after {:?}", pg.pid(), pg.url(), pg.ready_after());
    let (client, connection) = tokio_postgres::connect(pg.url(), tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute("CREATE TABLE t (id int primary key, name text not null)").await.unwrap();
    client.execute("INSERT INTO t VALUES ($1, $2), ($3, $4)", &[&1i32, &"one", &2i32, &"two"]).await.unwrap();
    let rows = client.query("SELECT name FROM t ORDER BY id", &[]).await.unwrap();
    let names: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(names, ["one", "two"]);
    let err = client.execute("INSERT INTO t VALUES (1, 'dup')", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION));
    drop(client);
    let _ = driver.await;
    if let Some(pid) = pg.pid() {
        drop(pg);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "postgres {pid} still runs");
    }
}
