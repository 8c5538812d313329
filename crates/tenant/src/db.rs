//! The directory's storage: objects as JSON documents of their Graph properties, each with a
//! change sequence number (for delta queries; deletes are kept as tombstones), users' password
//! hashes apart from the documents, app registrations, domains, the audit trail, smart-lockout
//! counters and authorization codes.
//!
//! Two databases hold it: SQLite (a file in the state folder; one process) and PostgreSQL
//! (several tenant processes behind one database). The queries are written once, through
//! [`Sql`]. Every [`Db::call`] is one transaction; writers are serialized (SQLite's write lock,
//! a PostgreSQL advisory lock), so uniqueness checks and change numbers hold across processes.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use serde_json::{Map, Value};

use crate::sql::{Dialect, PgConn, PgTx, Row, Sql, SqliteTx};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A unique index refused a row (the caller says which value).
    #[error("duplicate value: {0}")]
    Unique(String),
    /// A value that must be unique is taken (e.g. a userPrincipalName).
    #[error("{0}")]
    Conflict(String),
    /// A stored document is not JSON (corruption), or a column is not what it should be.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database cannot be used as configured.
    #[error("database: {0}")]
    Config(String),
}

/// Object kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A user.
    User,
    /// A group.
    Group,
    /// An organizational contact.
    Contact,
}

impl Kind {
    /// The stored name, also the end of `#microsoft.graph.<name>` (contacts: `orgContact`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Group => "group",
            Kind::Contact => "contact",
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        match name {
            "user" => Some(Kind::User),
            "group" => Some(Kind::Group),
            "contact" => Some(Kind::Contact),
            _ => None,
        }
    }
}

/// A stored password hash.
#[derive(Debug, Clone)]
pub struct Credential {
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// PBKDF2-HMAC-SHA256 output.
    pub hash: Vec<u8>,
    /// Iterations.
    pub iterations: u32,
}

/// The database, shared by the request handlers.
#[derive(Clone)]
pub struct Db {
    backend: Arc<Backend>,
}

enum Backend {
    /// One connection (SQLite serializes writes anyway).
    Sqlite(Mutex<Connection>),
    /// A small pool.
    Postgres(Box<PgPool>),
}

struct PgPool {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<PgConn>>,
    permits: tokio::sync::Semaphore,
}

/// Connections a tenant process keeps to PostgreSQL.
const PG_POOL: usize = 8;

/// The advisory lock that serializes directory writes across tenant processes.
const WRITE_LOCK: i64 = 0x6973_7468_6d75_7301;

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    upn TEXT UNIQUE COLLATE NOCASE,
    data TEXT NOT NULL,
    seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS objects_kind_id ON objects(kind, id);
CREATE INDEX IF NOT EXISTS objects_kind_seq ON objects(kind, seq);
CREATE INDEX IF NOT EXISTS objects_immutable ON objects(kind, json_extract(data, '$.onPremisesImmutableId'));
CREATE INDEX IF NOT EXISTS objects_cloud_only ON objects(kind) WHERE json_extract(data, '$.onPremisesImmutableId') IS NULL;
-- The few objects with quarantined values (re-checked after deletes and UPN/address changes).
CREATE INDEX IF NOT EXISTS objects_provisioning_errors ON objects(id)
    WHERE deleted = 0 AND json_extract(data, '$.onPremisesProvisioningErrors') IS NOT NULL;
CREATE INDEX IF NOT EXISTS objects_wanted_upn ON objects(id)
    WHERE deleted = 0 AND kind = 'user' AND lower(json_extract(data, '$.onPremisesUserPrincipalName')) <> lower(json_extract(data, '$.userPrincipalName'));
CREATE TABLE IF NOT EXISTS credentials (
    user_id TEXT PRIMARY KEY,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    iterations INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS apps (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    roles TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters (name, value) VALUES ('seq', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
CREATE INDEX IF NOT EXISTS members_member ON members(member_id);
CREATE TABLE IF NOT EXISTS member_log (
    seq INTEGER NOT NULL,
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    removed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS member_log_group ON member_log(group_id, seq);
CREATE TABLE IF NOT EXISTS app_redirects (
    client_id TEXT NOT NULL,
    uri TEXT NOT NULL,
    PRIMARY KEY (client_id, uri)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    category TEXT NOT NULL,
    activity TEXT NOT NULL,
    actor TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    verified INTEGER NOT NULL,
    authentication TEXT NOT NULL,
    code TEXT NOT NULL,
    initial INTEGER NOT NULL DEFAULT 0
);
-- Every live object's proxyAddresses, so uniqueness checks use an index.
CREATE TABLE IF NOT EXISTS proxies (
    address TEXT NOT NULL COLLATE NOCASE,
    object_id TEXT NOT NULL,
    PRIMARY KEY (address, object_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS proxies_object ON proxies(object_id);
-- Kept by the writes themselves now (as on PostgreSQL), no longer by triggers.
DROP TRIGGER IF EXISTS objects_proxies_insert;
DROP TRIGGER IF EXISTS objects_proxies_update;
-- A database from before the table: fill it once.
INSERT OR IGNORE INTO proxies SELECT address.value, objects.id FROM objects, json_each(objects.data, '$.proxyAddresses') AS address
    WHERE objects.deleted = 0 AND NOT EXISTS (SELECT 1 FROM proxies);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS lockout (user_key TEXT PRIMARY KEY, failures INTEGER NOT NULL, locked_until INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS auth_codes (code_hash TEXT PRIMARY KEY, grant_data TEXT NOT NULL, expires INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS refresh_tokens (id TEXT PRIMARY KEY, family TEXT NOT NULL, user_id TEXT NOT NULL, client_id TEXT NOT NULL,
    expires INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX IF NOT EXISTS refresh_tokens_user ON refresh_tokens (user_id);
CREATE TABLE IF NOT EXISTS browser_sessions (id_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, auth_time BIGINT NOT NULL, expires BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS app_certificates (client_id TEXT NOT NULL, sha256 TEXT NOT NULL, sha1 TEXT NOT NULL, der TEXT NOT NULL, PRIMARY KEY (client_id, sha256));
CREATE TABLE IF NOT EXISTS assertion_ids (id_hash TEXT PRIMARY KEY, expires BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS applications (object_id TEXT PRIMARY KEY, client_id TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS service_principals (object_id TEXT PRIMARY KEY, client_id TEXT NOT NULL UNIQUE, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS app_passwords (client_id TEXT NOT NULL, key_id TEXT NOT NULL, hash TEXT NOT NULL, expires BIGINT NOT NULL,
    PRIMARY KEY (client_id, key_id));
CREATE INDEX IF NOT EXISTS browser_sessions_user ON browser_sessions (user_id);
CREATE TABLE IF NOT EXISTS role_members (role_id TEXT NOT NULL, member_id TEXT NOT NULL, PRIMARY KEY (role_id, member_id));
CREATE INDEX IF NOT EXISTS role_members_member ON role_members(member_id);
CREATE TABLE IF NOT EXISTS synced_credentials (user_id TEXT PRIMARY KEY, credential TEXT NOT NULL, must_change INTEGER NOT NULL, synced_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS risky_users (user_id TEXT PRIMARY KEY, leaked_count INTEGER NOT NULL, detected_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS domain_settings (name TEXT PRIMARY KEY COLLATE NOCASE, method TEXT, validity_days INTEGER);
CREATE TABLE IF NOT EXISTS pta_agents (id TEXT PRIMARY KEY, machine TEXT NOT NULL, version TEXT NOT NULL, encryption_key TEXT NOT NULL,
    registered_at INTEGER NOT NULL, registered_by TEXT NOT NULL, not_after INTEGER NOT NULL, revoked_at INTEGER);
CREATE TABLE IF NOT EXISTS pta_certs (fingerprint TEXT PRIMARY KEY, agent_id TEXT NOT NULL, not_after INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sync_servers (id TEXT PRIMARY KEY, report TEXT NOT NULL, received INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS health_alerts (id TEXT NOT NULL, subject TEXT NOT NULL, raised INTEGER NOT NULL, severity TEXT NOT NULL,
    title TEXT NOT NULL, detail TEXT NOT NULL, last_seen INTEGER NOT NULL, resolved INTEGER, PRIMARY KEY (id, subject, raised));
";

const POSTGRES_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS objects (
    id TEXT COLLATE "C" PRIMARY KEY,
    kind TEXT NOT NULL,
    upn TEXT,
    data TEXT NOT NULL,
    seq BIGINT NOT NULL,
    deleted BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS objects_upn ON objects (lower(upn));
CREATE INDEX IF NOT EXISTS objects_kind_id ON objects (kind, id);
CREATE INDEX IF NOT EXISTS objects_kind_seq ON objects (kind, seq);
CREATE INDEX IF NOT EXISTS objects_immutable ON objects (kind, ((data::jsonb) ->> 'onPremisesImmutableId'));
CREATE INDEX IF NOT EXISTS objects_cloud_only ON objects (kind) WHERE ((data::jsonb) ->> 'onPremisesImmutableId') IS NULL;
CREATE INDEX IF NOT EXISTS objects_provisioning_errors ON objects (id)
    WHERE deleted = 0 AND ((data::jsonb) ->> 'onPremisesProvisioningErrors') IS NOT NULL;
CREATE INDEX IF NOT EXISTS objects_wanted_upn ON objects (id)
    WHERE deleted = 0 AND kind = 'user' AND lower(((data::jsonb) ->> 'onPremisesUserPrincipalName')) <> lower(((data::jsonb) ->> 'userPrincipalName'));
CREATE TABLE IF NOT EXISTS credentials (user_id TEXT PRIMARY KEY, salt BYTEA NOT NULL, hash BYTEA NOT NULL, iterations BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS apps (client_id TEXT PRIMARY KEY, name TEXT NOT NULL, secret_hash BYTEA NOT NULL, roles TEXT NOT NULL);
ALTER TABLE apps ADD COLUMN IF NOT EXISTS public_client BIGINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO counters (name, value) VALUES ('seq', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS members (group_id TEXT NOT NULL, member_id TEXT NOT NULL, PRIMARY KEY (group_id, member_id));
CREATE INDEX IF NOT EXISTS members_member ON members (member_id);
CREATE TABLE IF NOT EXISTS member_log (seq BIGINT NOT NULL, group_id TEXT NOT NULL, member_id TEXT NOT NULL, removed BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS member_log_group ON member_log (group_id, seq);
CREATE TABLE IF NOT EXISTS app_redirects (client_id TEXT NOT NULL, uri TEXT NOT NULL, PRIMARY KEY (client_id, uri));
CREATE TABLE IF NOT EXISTS audit (
    seq BIGSERIAL PRIMARY KEY,
    time TEXT NOT NULL,
    category TEXT NOT NULL,
    activity TEXT NOT NULL,
    actor TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY,
    verified BIGINT NOT NULL,
    authentication TEXT NOT NULL,
    code TEXT NOT NULL,
    initial BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS domains_name ON domains (lower(name));
CREATE TABLE IF NOT EXISTS proxies (address TEXT NOT NULL, object_id TEXT NOT NULL, PRIMARY KEY (address, object_id));
CREATE INDEX IF NOT EXISTS proxies_address ON proxies (lower(address));
CREATE INDEX IF NOT EXISTS proxies_object ON proxies (object_id);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS lockout (user_key TEXT PRIMARY KEY, failures BIGINT NOT NULL, locked_until BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS auth_codes (code_hash TEXT PRIMARY KEY, grant_data TEXT NOT NULL, expires BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS refresh_tokens (id TEXT PRIMARY KEY, family TEXT NOT NULL, user_id TEXT NOT NULL, client_id TEXT NOT NULL,
    expires BIGINT NOT NULL, used BIGINT NOT NULL DEFAULT 0, revoked BIGINT NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX IF NOT EXISTS refresh_tokens_user ON refresh_tokens (user_id);
CREATE TABLE IF NOT EXISTS browser_sessions (id_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, auth_time BIGINT NOT NULL, expires BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS app_certificates (client_id TEXT NOT NULL, sha256 TEXT NOT NULL, sha1 TEXT NOT NULL, der TEXT NOT NULL, PRIMARY KEY (client_id, sha256));
CREATE TABLE IF NOT EXISTS assertion_ids (id_hash TEXT PRIMARY KEY, expires BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS applications (object_id TEXT PRIMARY KEY, client_id TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS service_principals (object_id TEXT PRIMARY KEY, client_id TEXT NOT NULL UNIQUE, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS app_passwords (client_id TEXT NOT NULL, key_id TEXT NOT NULL, hash TEXT NOT NULL, expires BIGINT NOT NULL,
    PRIMARY KEY (client_id, key_id));
CREATE INDEX IF NOT EXISTS browser_sessions_user ON browser_sessions (user_id);
CREATE TABLE IF NOT EXISTS role_members (role_id TEXT NOT NULL, member_id TEXT NOT NULL, PRIMARY KEY (role_id, member_id));
CREATE INDEX IF NOT EXISTS role_members_member ON role_members (member_id);
CREATE TABLE IF NOT EXISTS synced_credentials (user_id TEXT PRIMARY KEY, credential TEXT NOT NULL, must_change BIGINT NOT NULL, synced_at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS risky_users (user_id TEXT PRIMARY KEY, leaked_count BIGINT NOT NULL, detected_at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS domain_settings (name TEXT PRIMARY KEY, method TEXT, validity_days BIGINT);
CREATE TABLE IF NOT EXISTS pta_agents (id TEXT PRIMARY KEY, machine TEXT NOT NULL, version TEXT NOT NULL, encryption_key TEXT NOT NULL,
    registered_at BIGINT NOT NULL, registered_by TEXT NOT NULL, not_after BIGINT NOT NULL, revoked_at BIGINT);
CREATE TABLE IF NOT EXISTS pta_certs (fingerprint TEXT PRIMARY KEY, agent_id TEXT NOT NULL, not_after BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS sync_servers (id TEXT PRIMARY KEY, report TEXT NOT NULL, received BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS health_alerts (id TEXT NOT NULL, subject TEXT NOT NULL, raised BIGINT NOT NULL, severity TEXT NOT NULL,
    title TEXT NOT NULL, detail TEXT NOT NULL, last_seen BIGINT NOT NULL, resolved BIGINT, PRIMARY KEY (id, subject, raised));
"#;

/// Creates `path` with mode 0600 when missing, and narrows it and SQLite's companion files to
/// 0600 when they exist (SQLite creates the companions with the main file's mode).
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

impl Db {
    /// Opens (creating) the SQLite database file, readable by its owner only (0600: it holds
    /// password hashes and the token-signing key), as are its WAL and shared-memory files.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        owner_only(path).map_err(|err| DbError::Config(format!("{}: {err}", path.display())))?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SQLITE_SCHEMA)?;
        // Added after the first release: public clients (no secret, user flows only).
        let has_public = conn.prepare("SELECT 1 FROM pragma_table_info('apps') WHERE name = 'public_client'")?.exists([])?;
        if !has_public {
            conn.execute_batch("ALTER TABLE apps ADD COLUMN public_client INTEGER NOT NULL DEFAULT 0")?;
        }
        Ok(Db { backend: Arc::new(Backend::Sqlite(Mutex::new(conn))) })
    }

    /// Connects to PostgreSQL at `url` (e.g. `postgresql://isthmus@127.0.0.1:5432/tenant`) and
    /// creates the schema if it is not there. Plain TCP is only accepted to a loopback address
    /// or a Unix socket unless the URL says `sslmode=disable` (TLS to PostgreSQL is not built yet).
    pub async fn connect_postgres(url: &str) -> Result<Self, DbError> {
        let config: tokio_postgres::Config = url.parse().map_err(|err| DbError::Config(format!("PostgreSQL URL: {err}")))?;
        let explicit_plain = url.contains("sslmode=disable");
        for host in config.get_hosts() {
            let local = match host {
                tokio_postgres::config::Host::Unix(_) => true,
                tokio_postgres::config::Host::Tcp(name) => {
                    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
                }
            };
            if !local && !explicit_plain {
                return Err(DbError::Config(format!(
                    "refusing a plain-text connection to PostgreSQL host {host:?}: TLS is not supported yet; use a loopback address or a \
                     Unix socket, or add sslmode=disable to accept the risk"
                )));
            }
        }
        let pool = PgPool { config, idle: Mutex::new(Vec::new()), permits: tokio::sync::Semaphore::new(PG_POOL) };
        let db = Db { backend: Arc::new(Backend::Postgres(Box::new(pool))) };
        // Several processes may start together: the schema is made under the write lock.
        db.call(|sql| sql.batch(POSTGRES_SCHEMA)).await?;
        Ok(db)
    }

    /// The dialect of this database.
    pub fn dialect(&self) -> Dialect {
        match &*self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `work` in one transaction that may write, off the async threads: committed when it
    /// returns `Ok`, rolled back otherwise. Writers are serialized, across processes too.
    pub async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        self.run(Mode::Serialized, work).await
    }

    /// Runs `work` that only reads. On PostgreSQL each statement stands alone (no transaction,
    /// not serialized with writers: reads scale with processes); on SQLite it is one transaction.
    pub async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        self.run(Mode::Unserialized, work).await
    }

    /// Runs one statement that conflicts with nothing (appending an audit record) without
    /// waiting for the writers' lock.
    pub async fn append<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        self.run(Mode::Unserialized, work).await
    }

    async fn run<T: Send + 'static>(
        &self,
        mode: Mode,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let backend = self.backend.clone();
        let failed = |err: tokio::task::JoinError| DbError::Config(format!("database task failed: {err}"));
        match &*self.backend {
            Backend::Sqlite(_) => tokio::task::spawn_blocking(move || {
                let Backend::Sqlite(conn) = &*backend else { unreachable_backend() };
                let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let behavior = match mode {
                    Mode::Serialized => rusqlite::TransactionBehavior::Immediate,
                    Mode::Unserialized => rusqlite::TransactionBehavior::Deferred,
                };
                let tx = guard.transaction_with_behavior(behavior)?;
                let out = work(&mut SqliteTx(&tx))?;
                tx.commit()?;
                Ok(out)
            })
            .await
            .map_err(failed)?,
            Backend::Postgres(pool) => {
                let _permit = pool.permits.acquire().await.map_err(|err| DbError::Config(err.to_string()))?;
                let reused = pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
                let mut conn = match reused.filter(|conn| !conn.client.is_closed()) {
                    Some(conn) => conn,
                    None => {
                        let (client, connection) = pool.config.connect(tokio_postgres::NoTls).await.map_err(crate::sql::postgres_error)?;
                        tokio::spawn(async move {
                            if let Err(err) = connection.await {
                                tracing::warn!("PostgreSQL connection ended: {err}");
                            }
                        });
                        PgConn::new(client)
                    }
                };
                let runtime = tokio::runtime::Handle::current();
                let (conn, reusable, out) = tokio::task::spawn_blocking(move || {
                    let (reusable, out) = pg_run(&mut conn, runtime, mode, work);
                    (conn, reusable, out)
                })
                .await
                .map_err(failed)?;
                if reusable && !conn.client.is_closed() {
                    pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(conn);
                }
                out
            }
        }
    }
}

/// How a piece of work meets the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One transaction, serialized with every other writer (of every process).
    Serialized,
    /// Reads, or a lone append: no writers' lock.
    Unserialized,
}

fn unreachable_backend() -> ! {
    panic!("the backend of a database never changes")
}

/// Runs `work` on a PostgreSQL connection; also says whether the connection may be reused (a
/// transaction that could not be rolled back leaves it unusable).
fn pg_run<T>(
    conn: &mut PgConn,
    runtime: tokio::runtime::Handle,
    mode: Mode,
    work: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>,
) -> (bool, Result<T, DbError>) {
    if mode == Mode::Unserialized {
        return (true, work(&mut PgTx { conn, runtime }));
    }
    // One round trip: begin, and wait for the writers' lock (released at commit or rollback).
    let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})");
    if let Err(err) = runtime.block_on(conn.client.batch_execute(&begin)) {
        let reusable = runtime.block_on(conn.client.batch_execute("ROLLBACK")).is_ok();
        return (reusable, Err(crate::sql::postgres_error(err)));
    }
    let mut tx = PgTx { conn, runtime: runtime.clone() };
    match work(&mut tx) {
        Ok(out) => match runtime.block_on(tx.conn.client.batch_execute("COMMIT")) {
            Ok(()) => (true, Ok(out)),
            Err(err) => (false, Err(crate::sql::postgres_error(err))),
        },
        Err(err) => (runtime.block_on(tx.conn.client.batch_execute("ROLLBACK")).is_ok(), Err(err)),
    }
}

fn next_seq(sql: &mut dyn Sql) -> Result<i64, DbError> {
    let row = sql
        .query_opt("UPDATE counters SET value = value + 1 WHERE name = 'seq' RETURNING value", &[])?
        .ok_or_else(|| DbError::Corrupt("the change counter is missing".into()))?;
    row.int(0)
}

fn parse(id: &str, text: &str) -> Result<Map<String, Value>, DbError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(DbError::Corrupt(format!("stored object {id} is not a JSON object"))),
    }
}

fn upn_conflict(upn: Option<String>) -> DbError {
    DbError::Conflict(format!(
        "Another object with the same value for property userPrincipalName already exists: {}",
        upn.unwrap_or_default()
    ))
}

/// Case-insensitive equality of `column` with parameter `?n`, using the column's index.
fn nocase(dialect: Dialect, column: &str, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => format!("{column} = ?{n} COLLATE NOCASE"),
        Dialect::Postgres => format!("lower({column}) = lower(?{n})"),
    }
}

/// A string property of the JSON document.
fn json_text(dialect: Dialect, property: &str) -> String {
    match dialect {
        Dialect::Sqlite => format!("json_extract(data, '$.{property}')"),
        Dialect::Postgres => format!("((data::jsonb) ->> '{property}')"),
    }
}

/// Rewrites the object's rows in the proxy-address index.
fn index_proxies(sql: &mut dyn Sql, id: &str, data: Option<&Map<String, Value>>) -> Result<(), DbError> {
    sql.execute("DELETE FROM proxies WHERE object_id = ?1", &[id.into()])?;
    let addresses = data.and_then(|data| data.get("proxyAddresses")).and_then(Value::as_array);
    for address in addresses.into_iter().flatten().filter_map(Value::as_str) {
        sql.execute("INSERT INTO proxies (address, object_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING", &[address.into(), id.into()])?;
    }
    Ok(())
}

/// Inserts a new object (its `id` is in `data`); a user's UPN must be free.
pub fn insert(sql: &mut dyn Sql, kind: Kind, data: &Map<String, Value>, credential: Option<&Credential>) -> Result<(), DbError> {
    let id = data.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let upn = data.get("userPrincipalName").and_then(Value::as_str).map(str::to_string);
    let seq = next_seq(sql)?;
    let inserted = sql.execute(
        "INSERT INTO objects (id, kind, upn, data, seq) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[id.as_str().into(), kind.name().into(), upn.clone().into(), Value::Object(data.clone()).to_string().into(), seq.into()],
    );
    match inserted {
        Ok(_) => {}
        Err(DbError::Unique(_)) => return Err(upn_conflict(upn)),
        Err(err) => return Err(err),
    }
    index_proxies(sql, &id, Some(data))?;
    if let Some(credential) = credential {
        sql.execute(
            "INSERT INTO credentials (user_id, salt, hash, iterations) VALUES (?1, ?2, ?3, ?4)",
            &[id.as_str().into(), (&credential.salt).into(), (&credential.hash).into(), credential.iterations.into()],
        )?;
    }
    Ok(())
}

fn object_of(row: &Row) -> Result<Map<String, Value>, DbError> {
    parse(&row.text(0)?, &row.text(1)?)
}

/// One live object by id (or, for users, by userPrincipalName).
pub fn get(sql: &mut dyn Sql, kind: Kind, key: &str) -> Result<Option<Map<String, Value>>, DbError> {
    let by_id =
        sql.query_opt("SELECT id, data FROM objects WHERE kind = ?1 AND deleted = 0 AND id = ?2", &[kind.name().into(), key.into()])?;
    let found = match by_id {
        Some(row) => Some(row),
        None if kind == Kind::User => {
            let query = format!("SELECT id, data FROM objects WHERE kind = ?1 AND deleted = 0 AND {}", nocase(sql.dialect(), "upn", 2));
            sql.query_opt(&query, &[kind.name().into(), key.into()])?
        }
        None => None,
    };
    found.as_ref().map(object_of).transpose()
}

/// Live objects after `after` (by id), at most `limit`, for which `keep` holds.
pub fn list(
    sql: &mut dyn Sql,
    kind: Kind,
    after: Option<&str>,
    limit: usize,
    keep: &dyn Fn(&Map<String, Value>) -> bool,
) -> Result<Vec<Map<String, Value>>, DbError> {
    const PAGE: i64 = 500;
    let mut out = Vec::new();
    let mut cursor = after.unwrap_or("").to_string();
    loop {
        let rows = sql.query(
            "SELECT id, data FROM objects WHERE kind = ?1 AND deleted = 0 AND id > ?2 ORDER BY id LIMIT ?3",
            &[kind.name().into(), cursor.as_str().into(), PAGE.into()],
        )?;
        let full = rows.len() as i64 == PAGE;
        for row in &rows {
            cursor = row.text(0)?;
            let object = object_of(row)?;
            if keep(&object) {
                out.push(object);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        if !full {
            return Ok(out);
        }
    }
}

/// Live objects of a kind found by an indexed lookup: `lookup` is one of the [`Lookup`]s.
pub fn find(sql: &mut dyn Sql, kind: Kind, lookup: Lookup<'_>) -> Result<Vec<Map<String, Value>>, DbError> {
    let dialect = sql.dialect();
    let immutable = json_text(dialect, "onPremisesImmutableId");
    let rows = match lookup {
        Lookup::ImmutableId(anchor) => sql.query(
            &format!("SELECT id, data FROM objects WHERE kind = ?1 AND {immutable} = ?2 AND deleted = 0"),
            &[kind.name().into(), anchor.into()],
        )?,
        Lookup::Upn(upn) => sql.query(
            &format!("SELECT id, data FROM objects WHERE kind = ?1 AND {} AND deleted = 0", nocase(dialect, "upn", 2)),
            &[kind.name().into(), upn.into()],
        )?,
        Lookup::WithoutImmutableId => sql.query(
            &format!("SELECT id, data FROM objects WHERE kind = ?1 AND {immutable} IS NULL AND deleted = 0"),
            &[kind.name().into()],
        )?,
    };
    rows.iter().map(object_of).collect()
}

/// How [`find`] looks objects up; each has an index.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    /// By `onPremisesImmutableId`.
    ImmutableId(&'a str),
    /// By user principal name, case-insensitively.
    Upn(&'a str),
    /// Those without an `onPremisesImmutableId` (cloud objects; few in a synced tenant).
    WithoutImmutableId,
}

/// Whether a live object other than `except` has this userPrincipalName (any case).
pub fn upn_taken(sql: &mut dyn Sql, upn: &str, except: &str) -> Result<bool, DbError> {
    let query = format!("SELECT 1 FROM objects WHERE deleted = 0 AND {} AND id <> ?2", nocase(sql.dialect(), "upn", 1));
    Ok(sql.query_opt(&query, &[upn.into(), except.into()])?.is_some())
}

/// Whether a live object other than `except` has this proxy address (any case).
pub fn proxy_taken(sql: &mut dyn Sql, address: &str, except: &str) -> Result<bool, DbError> {
    let query = format!("SELECT 1 FROM proxies WHERE {} AND object_id <> ?2 LIMIT 1", nocase(sql.dialect(), "address", 1));
    Ok(sql.query_opt(&query, &[address.into(), except.into()])?.is_some())
}

/// A stored object: its id, kind and document.
pub type Stored = (String, Kind, Map<String, Value>);

/// Live objects whose stored values may differ from what the sync wanted: a recorded
/// provisioning error, or a user whose UPN is not the on-premises one. (id, kind, document).
pub fn with_provisioning_differences(sql: &mut dyn Sql) -> Result<Vec<Stored>, DbError> {
    let dialect = sql.dialect();
    let (errors, wanted, upn) = (
        json_text(dialect, "onPremisesProvisioningErrors"),
        json_text(dialect, "onPremisesUserPrincipalName"),
        json_text(dialect, "userPrincipalName"),
    );
    // Two selects, each the WHERE of a partial index (objects_provisioning_errors,
    // objects_wanted_upn), so only quarantined objects are read, not the whole directory.
    let query = format!(
        "SELECT id, data, kind FROM objects WHERE deleted = 0 AND {errors} IS NOT NULL \
         UNION SELECT id, data, kind FROM objects WHERE deleted = 0 AND kind = 'user' AND lower({wanted}) <> lower({upn})"
    );
    let mut out = Vec::new();
    for row in sql.query(&query, &[])? {
        let Some(kind) = Kind::from_name(&row.text(2)?) else { continue };
        out.push((row.text(0)?, kind, object_of(&row)?));
    }
    Ok(out)
}

/// Replaces an object's document (a PATCH already merged); `false` when it does not exist.
pub fn update(sql: &mut dyn Sql, kind: Kind, data: &Map<String, Value>) -> Result<bool, DbError> {
    let id = data.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let upn = data.get("userPrincipalName").and_then(Value::as_str).map(str::to_string);
    let seq = next_seq(sql)?;
    let changed = sql.execute(
        "UPDATE objects SET data = ?3, upn = ?4, seq = ?5 WHERE kind = ?1 AND id = ?2 AND deleted = 0",
        &[kind.name().into(), id.as_str().into(), Value::Object(data.clone()).to_string().into(), upn.clone().into(), seq.into()],
    );
    let changed = match changed {
        Ok(changed) => changed,
        Err(DbError::Unique(_)) => return Err(upn_conflict(upn)),
        Err(err) => return Err(err),
    };
    if changed > 0 {
        index_proxies(sql, &id, Some(data))?;
    }
    Ok(changed > 0)
}

/// Replaces a user's password hash.
pub fn set_credential(sql: &mut dyn Sql, user_id: &str, credential: &Credential) -> Result<(), DbError> {
    sql.execute("DELETE FROM credentials WHERE user_id = ?1", &[user_id.into()])?;
    sql.execute(
        "INSERT INTO credentials (user_id, salt, hash, iterations) VALUES (?1, ?2, ?3, ?4)",
        &[user_id.into(), (&credential.salt).into(), (&credential.hash).into(), credential.iterations.into()],
    )?;
    Ok(())
}

/// Deletes an object (kept as a tombstone for delta queries), taking it out of every group
/// (and a group's members out of it); `false` when it does not exist.
pub fn delete(sql: &mut dyn Sql, kind: Kind, id: &str) -> Result<bool, DbError> {
    let seq = next_seq(sql)?;
    let changed = sql.execute(
        "UPDATE objects SET deleted = 1, upn = NULL, seq = ?3 WHERE kind = ?1 AND id = ?2 AND deleted = 0",
        &[kind.name().into(), id.into(), seq.into()],
    )?;
    if changed > 0 {
        index_proxies(sql, id, None)?;
        sql.execute("DELETE FROM credentials WHERE user_id = ?1", &[id.into()])?;
        let groups = sql.query("SELECT group_id FROM members WHERE member_id = ?1", &[id.into()])?;
        for group in groups {
            log_member(sql, &group.text(0)?, id, true)?;
        }
        sql.execute("DELETE FROM members WHERE member_id = ?1 OR group_id = ?1", &[id.into()])?;
        sql.execute("DELETE FROM role_members WHERE member_id = ?1", &[id.into()])?;
        sql.execute("DELETE FROM synced_credentials WHERE user_id = ?1", &[id.into()])?;
        sql.execute("DELETE FROM risky_users WHERE user_id = ?1", &[id.into()])?;
    }
    Ok(changed > 0)
}

/// Records a membership change and moves the group forward in the change order.
fn log_member(sql: &mut dyn Sql, group: &str, member: &str, removed: bool) -> Result<(), DbError> {
    let seq = next_seq(sql)?;
    sql.execute(
        "INSERT INTO member_log (seq, group_id, member_id, removed) VALUES (?1, ?2, ?3, ?4)",
        &[seq.into(), group.into(), member.into(), removed.into()],
    )?;
    sql.execute("UPDATE objects SET seq = ?2 WHERE id = ?1", &[group.into(), seq.into()])?;
    Ok(())
}

/// The kind of a live object by id.
pub fn kind_of(sql: &mut dyn Sql, id: &str) -> Result<Option<Kind>, DbError> {
    let row = sql.query_opt("SELECT kind FROM objects WHERE id = ?1 AND deleted = 0", &[id.into()])?;
    Ok(match row {
        Some(row) => Kind::from_name(&row.text(0)?),
        None => None,
    })
}

/// Adds `member` to `group`; `false` when it already was one.
pub fn add_member(sql: &mut dyn Sql, group: &str, member: &str) -> Result<bool, DbError> {
    let added = sql
        .execute("INSERT INTO members (group_id, member_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING", &[group.into(), member.into()])?
        > 0;
    if added {
        log_member(sql, group, member, false)?;
    }
    Ok(added)
}

/// Removes `member` from `group`; `false` when it was not one.
pub fn remove_member(sql: &mut dyn Sql, group: &str, member: &str) -> Result<bool, DbError> {
    let removed = sql.execute("DELETE FROM members WHERE group_id = ?1 AND member_id = ?2", &[group.into(), member.into()])? > 0;
    if removed {
        log_member(sql, group, member, true)?;
    }
    Ok(removed)
}

/// A group's members: (id, kind, document), by id.
pub fn members(sql: &mut dyn Sql, group: &str) -> Result<Vec<(String, String, String)>, DbError> {
    let rows = sql.query(
        "SELECT o.id, o.kind, o.data FROM members m JOIN objects o ON o.id = m.member_id WHERE m.group_id = ?1 AND o.deleted = 0 ORDER BY o.id",
        &[group.into()],
    )?;
    rows.iter().map(|row| Ok((row.text(0)?, row.text(1)?, row.text(2)?))).collect()
}

/// Membership changes of `group` in `(since, upto]`, the last per member: (member id, removed).
pub fn member_changes(sql: &mut dyn Sql, group: &str, since: i64, upto: i64) -> Result<Vec<(String, bool)>, DbError> {
    let rows = sql.query(
        "SELECT member_id, removed FROM member_log l WHERE group_id = ?1 AND seq > ?2 AND seq <= ?3 \
         AND seq = (SELECT MAX(seq) FROM member_log x WHERE x.group_id = l.group_id AND x.member_id = l.member_id AND x.seq <= ?3) ORDER BY member_id",
        &[group.into(), since.into(), upto.into()],
    )?;
    rows.iter().map(|row| Ok((row.text(0)?, row.bool(1)?))).collect()
}

/// The newest change number.
pub fn current_seq(sql: &mut dyn Sql) -> Result<i64, DbError> {
    match sql.query_opt("SELECT value FROM counters WHERE name = 'seq'", &[])? {
        Some(row) => row.int(0),
        None => Ok(0),
    }
}

/// One changed object of a delta round.
#[derive(Debug, Clone)]
pub struct Changed {
    /// Its change number.
    pub seq: i64,
    /// Its id.
    pub id: String,
    /// Deleted since.
    pub deleted: bool,
    /// Its document (live objects).
    pub data: Map<String, Value>,
}

/// Objects of `kind` changed in `(after, upto]` (tombstones only when `with_deleted`), by change
/// number, at most `limit`.
pub fn changed(sql: &mut dyn Sql, kind: Kind, after: i64, upto: i64, with_deleted: bool, limit: usize) -> Result<Vec<Changed>, DbError> {
    let rows = sql.query(
        "SELECT seq, id, deleted, data FROM objects WHERE kind = ?1 AND seq > ?2 AND seq <= ?3 AND (deleted = 0 OR ?4 = 1) ORDER BY seq LIMIT ?5",
        &[kind.name().into(), after.into(), upto.into(), with_deleted.into(), (limit as i64).into()],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let (seq, id, deleted) = (row.int(0)?, row.text(1)?, row.bool(2)?);
        let data = if deleted { Map::new() } else { parse(&id, &row.text(3)?)? };
        out.push(Changed { seq, id, deleted, data });
    }
    Ok(out)
}

/// A user's password hash.
pub fn credential(sql: &mut dyn Sql, user_id: &str) -> Result<Option<Credential>, DbError> {
    let Some(row) = sql.query_opt("SELECT salt, hash, iterations FROM credentials WHERE user_id = ?1", &[user_id.into()])? else {
        return Ok(None);
    };
    let iterations = u32::try_from(row.int(2)?).map_err(|_| DbError::Corrupt(format!("iterations of {user_id}")))?;
    Ok(Some(Credential { salt: row.blob(0)?, hash: row.blob(1)?, iterations }))
}

/// Registers an app with a secret (stored as its SHA-256) and app roles.
pub fn insert_app(sql: &mut dyn Sql, client_id: &str, name: &str, secret_hash: &[u8], roles: &[String]) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO apps (client_id, name, secret_hash, roles) VALUES (?1, ?2, ?3, ?4)",
        &[client_id.into(), name.into(), secret_hash.into(), serde_json::to_string(roles).unwrap_or_else(|_| "[]".into()).into()],
    )?;
    Ok(())
}

/// Registers a public client: no secret, no app roles, user flows only.
pub fn insert_public_app(sql: &mut dyn Sql, client_id: &str, name: &str) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO apps (client_id, name, secret_hash, roles, public_client) VALUES (?1, ?2, ?3, '[]', 1)",
        &[client_id.into(), name.into(), Vec::<u8>::new().as_slice().into()],
    )?;
    Ok(())
}

/// A registered application.
#[derive(Debug, Clone)]
pub struct AppRecord {
    /// SHA-256 of its secret (empty for a public client).
    pub secret_hash: Vec<u8>,
    /// Its application roles.
    pub roles: Vec<String>,
    /// A public client (a native or single-page app): it cannot keep a secret, has none, and
    /// uses only user flows.
    pub public_client: bool,
}

/// An app by client id.
pub fn app(sql: &mut dyn Sql, client_id: &str) -> Result<Option<AppRecord>, DbError> {
    let Some(row) = sql.query_opt("SELECT secret_hash, roles, public_client FROM apps WHERE client_id = ?1", &[client_id.into()])? else {
        return Ok(None);
    };
    Ok(Some(AppRecord {
        secret_hash: row.blob(0)?,
        roles: serde_json::from_str(&row.text(1)?).unwrap_or_default(),
        public_client: row.int(2)? != 0,
    }))
}

/// Number of registered apps.
pub fn app_count(sql: &mut dyn Sql) -> Result<i64, DbError> {
    sql.query_opt("SELECT COUNT(*) FROM apps", &[])?.map_or(Ok(0), |row| row.int(0))
}

/// A domain of the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// `contoso.example`.
    pub name: String,
    /// Proven by DNS (the initial domain always is).
    pub verified: bool,
    /// `Managed` or `Federated`.
    pub authentication: String,
    /// The TXT record value that proves ownership (`MS=ms12345678`).
    pub code: String,
    /// The tenant's initial domain.
    pub initial: bool,
    /// Synced users of this (managed) domain sign in through pass-through agents.
    pub pass_through: bool,
    /// Days a cloud-checked password stays valid (`passwordValidityPeriodInDays`); `None`:
    /// never expires (Graph's 2147483647).
    pub password_validity_days: Option<u32>,
}

/// Every domain.
pub fn domains(sql: &mut dyn Sql) -> Result<Vec<Domain>, DbError> {
    let rows = sql.query(
        "SELECT d.name, d.verified, d.authentication, d.code, d.initial, m.method, m.validity_days FROM domains d \
         LEFT JOIN domain_settings m ON lower(m.name) = lower(d.name) ORDER BY d.initial DESC, d.name",
        &[],
    )?;
    rows.iter()
        .map(|row| {
            Ok(Domain {
                name: row.text(0)?,
                verified: row.bool(1)?,
                authentication: row.text(2)?,
                code: row.text(3)?,
                initial: row.bool(4)?,
                pass_through: row.opt_text(5)?.as_deref() == Some(PASS_THROUGH),
                password_validity_days: match row.0.get(6) {
                    Some(crate::sql::SqlValue::Null) | None => None,
                    Some(_) => u32::try_from(row.int(6)?).ok(),
                },
            })
        })
        .collect()
}

/// The stored method of a domain whose managed users sign in through pass-through agents.
pub const PASS_THROUGH: &str = "PassThrough";

/// Stores a domain's own settings: how its synced users' passwords are checked (through
/// pass-through agents, or against the synced or cloud password), and the cloud password
/// validity period (`None`: never expires).
pub fn set_domain_settings(sql: &mut dyn Sql, domain: &str, pass_through: bool, validity_days: Option<u32>) -> Result<(), DbError> {
    sql.execute("DELETE FROM domain_settings WHERE lower(name) = lower(?1)", &[domain.into()])?;
    let method: Option<String> = pass_through.then(|| PASS_THROUGH.to_string());
    let validity = validity_days.map_or(crate::sql::SqlValue::Null, |days| i64::from(days).into());
    sql.execute(
        "INSERT INTO domain_settings (name, method, validity_days) VALUES (?1, ?2, ?3)",
        &[domain.into(), method.into(), validity],
    )?;
    Ok(())
}

/// A registered pass-through agent.
#[derive(Debug, Clone)]
pub struct AgentRow {
    /// Its id (a GUID).
    pub id: String,
    /// Its computer's name.
    pub machine: String,
    /// Its version.
    pub version: String,
    /// Its X25519 public key (base64).
    pub encryption_key: String,
    /// Registered when (Unix seconds).
    pub registered_at: i64,
    /// By whom (the admin's app or user id).
    pub registered_by: String,
    /// Its current certificate's expiry (Unix seconds).
    pub not_after: i64,
    /// Revoked when, if it was.
    pub revoked_at: Option<i64>,
}

const AGENT_COLUMNS: &str = "id, machine, version, encryption_key, registered_at, registered_by, not_after, revoked_at";

fn agent_row(row: &Row) -> Result<AgentRow, DbError> {
    Ok(AgentRow {
        id: row.text(0)?,
        machine: row.text(1)?,
        version: row.text(2)?,
        encryption_key: row.text(3)?,
        registered_at: row.int(4)?,
        registered_by: row.text(5)?,
        not_after: row.int(6)?,
        revoked_at: match row.0.get(7) {
            Some(crate::sql::SqlValue::Null) | None => None,
            Some(_) => Some(row.int(7)?),
        },
    })
}

/// Every registered agent, revoked ones too.
pub fn agents(sql: &mut dyn Sql) -> Result<Vec<AgentRow>, DbError> {
    sql.query(&format!("SELECT {AGENT_COLUMNS} FROM pta_agents ORDER BY registered_at, id"), &[])?.iter().map(agent_row).collect()
}

/// Agents that may take sign-ins at `now`: not revoked, certificate not expired.
pub fn active_agents(sql: &mut dyn Sql, now: i64) -> Result<Vec<AgentRow>, DbError> {
    sql.query(&format!("SELECT {AGENT_COLUMNS} FROM pta_agents WHERE revoked_at IS NULL AND not_after > ?1 ORDER BY id"), &[now.into()])?
        .iter()
        .map(agent_row)
        .collect()
}

/// The active agent a client certificate (SHA-256 fingerprint, hex) belongs to.
pub fn agent_by_certificate(sql: &mut dyn Sql, fingerprint: &str, now: i64) -> Result<Option<AgentRow>, DbError> {
    let columns = AGENT_COLUMNS.split(", ").map(|column| format!("a.{column}")).collect::<Vec<_>>().join(", ");
    sql.query_opt(
        &format!(
            "SELECT {columns} FROM pta_certs c JOIN pta_agents a ON a.id = c.agent_id \
             WHERE c.fingerprint = ?1 AND c.not_after > ?2 AND a.revoked_at IS NULL"
        ),
        &[fingerprint.into(), now.into()],
    )?
    .map(|row| agent_row(&row))
    .transpose()
}

/// The agent registered with this encryption key (revoked or not): a key is one agent's.
pub fn agent_by_key(sql: &mut dyn Sql, encryption_key: &str) -> Result<Option<AgentRow>, DbError> {
    sql.query_opt(
        &format!("SELECT {AGENT_COLUMNS} FROM pta_agents WHERE encryption_key = ?1 ORDER BY registered_at DESC LIMIT 1"),
        &[encryption_key.into()],
    )?
    .map(|row| agent_row(&row))
    .transpose()
}

/// Registers an agent with its first certificate.
pub fn insert_agent(sql: &mut dyn Sql, agent: &AgentRow, fingerprint: &str) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO pta_agents (id, machine, version, encryption_key, registered_at, registered_by, not_after) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &[
            agent.id.as_str().into(),
            agent.machine.as_str().into(),
            agent.version.as_str().into(),
            agent.encryption_key.as_str().into(),
            agent.registered_at.into(),
            agent.registered_by.as_str().into(),
            agent.not_after.into(),
        ],
    )?;
    sql.execute(
        "INSERT INTO pta_certs (fingerprint, agent_id, not_after) VALUES (?1, ?2, ?3)",
        &[fingerprint.into(), agent.id.as_str().into(), agent.not_after.into()],
    )?;
    Ok(())
}

/// A renewed certificate and key: the old certificate stays good for `grace_until` at most
/// (the agent's other connections switch over), the new one until `not_after`.
pub fn renew_agent(
    sql: &mut dyn Sql,
    id: &str,
    encryption_key: &str,
    fingerprint: &str,
    not_after: i64,
    grace_until: i64,
) -> Result<(), DbError> {
    sql.execute(
        "UPDATE pta_certs SET not_after = CASE WHEN not_after < ?2 THEN not_after ELSE ?2 END WHERE agent_id = ?1",
        &[id.into(), grace_until.into()],
    )?;
    sql.execute(
        "INSERT INTO pta_certs (fingerprint, agent_id, not_after) VALUES (?1, ?2, ?3)",
        &[fingerprint.into(), id.into(), not_after.into()],
    )?;
    sql.execute(
        "UPDATE pta_agents SET encryption_key = ?2, not_after = ?3 WHERE id = ?1",
        &[id.into(), encryption_key.into(), not_after.into()],
    )?;
    Ok(())
}

/// Revokes an agent (its certificates stop working at once); false when there is no such agent.
pub fn revoke_agent(sql: &mut dyn Sql, id: &str, now: i64) -> Result<bool, DbError> {
    Ok(sql.execute("UPDATE pta_agents SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", &[id.into(), now.into()])? > 0)
}

/// Adds a domain; a conflict when it exists.
pub fn insert_domain(sql: &mut dyn Sql, domain: &Domain) -> Result<(), DbError> {
    let inserted = sql.execute(
        "INSERT INTO domains (name, verified, authentication, code, initial) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        &[
            domain.name.as_str().into(),
            domain.verified.into(),
            domain.authentication.as_str().into(),
            domain.code.as_str().into(),
            domain.initial.into(),
        ],
    )?;
    if inserted == 0 {
        return Err(DbError::Conflict(format!("The domain {} already exists.", domain.name)));
    }
    Ok(())
}

/// Updates a domain's verification and authentication type.
pub fn update_domain(sql: &mut dyn Sql, domain: &Domain) -> Result<(), DbError> {
    sql.execute(
        "UPDATE domains SET verified = ?2, authentication = ?3 WHERE lower(name) = lower(?1)",
        &[domain.name.as_str().into(), domain.verified.into(), domain.authentication.as_str().into()],
    )?;
    Ok(())
}

/// Removes a domain; refused while a live user's UPN uses it.
pub fn delete_domain(sql: &mut dyn Sql, name: &str) -> Result<bool, DbError> {
    let pattern = format!("%@{}", name.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let users = sql
        .query_opt(
            "SELECT COUNT(*) FROM objects WHERE kind = 'user' AND deleted = 0 AND lower(upn) LIKE ?1 ESCAPE '\\'",
            &[pattern.into()],
        )?
        .map_or(Ok(0), |row| row.int(0))?;
    if users > 0 {
        return Err(DbError::Conflict(format!("The domain {name} is used by {users} user(s); change their userPrincipalName first.")));
    }
    Ok(sql.execute("DELETE FROM domains WHERE lower(name) = lower(?1) AND initial = 0", &[name.into()])? > 0)
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Order of recording.
    pub seq: i64,
    /// RFC 3339.
    pub time: String,
    /// `SignIn` or `Directory`.
    pub category: String,
    /// What happened: `create User`, `password sign-in` …
    pub activity: String,
    /// Who: an app id or a UPN.
    pub actor: String,
    /// What it happened to.
    pub target: String,
    /// `success`, `bad password` …
    pub outcome: String,
}

/// Appends an audit record.
pub fn insert_audit(sql: &mut dyn Sql, record: &AuditRecord) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO audit (time, category, activity, actor, target, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        &[
            record.time.as_str().into(),
            record.category.as_str().into(),
            record.activity.as_str().into(),
            record.actor.as_str().into(),
            record.target.as_str().into(),
            record.outcome.as_str().into(),
        ],
    )?;
    Ok(())
}

/// Audit records of `category`, newest first, older than `before` (a seq), at most `limit`.
pub fn audit(sql: &mut dyn Sql, category: &str, before: Option<i64>, limit: usize) -> Result<Vec<AuditRecord>, DbError> {
    let rows = sql.query(
        "SELECT seq, time, category, activity, actor, target, outcome FROM audit WHERE category = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
        &[category.into(), before.unwrap_or(i64::MAX).into(), (limit as i64).into()],
    )?;
    rows.iter()
        .map(|row| {
            Ok(AuditRecord {
                seq: row.int(0)?,
                time: row.text(1)?,
                category: row.text(2)?,
                activity: row.text(3)?,
                actor: row.text(4)?,
                target: row.text(5)?,
                outcome: row.text(6)?,
            })
        })
        .collect()
}

/// Registers a redirect URI for an app.
pub fn insert_app_redirect(sql: &mut dyn Sql, client_id: &str, uri: &str) -> Result<(), DbError> {
    sql.execute("INSERT INTO app_redirects (client_id, uri) VALUES (?1, ?2) ON CONFLICT DO NOTHING", &[client_id.into(), uri.into()])?;
    Ok(())
}

/// An app's redirect URIs; `None` when the app does not exist.
pub fn app_redirects(sql: &mut dyn Sql, client_id: &str) -> Result<Option<Vec<String>>, DbError> {
    if app(sql, client_id)?.is_none() {
        return Ok(None);
    }
    let rows = sql.query("SELECT uri FROM app_redirects WHERE client_id = ?1", &[client_id.into()])?;
    Ok(Some(rows.iter().map(|row| row.text(0)).collect::<Result<_, _>>()?))
}

/// A synced user's credential from password hash sync (its wire form), whether the user must
/// change it at the next sign-in, and when it came (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedCredentialRow {
    /// `v1;PPH1_MD4,…;`.
    pub credential: String,
    /// "User must change password at next logon" was set on-premises.
    pub must_change: bool,
    /// When it was stored.
    pub synced_at: i64,
}

/// Stores (replacing) the synced credential of `user_id`.
pub fn set_synced_credential(sql: &mut dyn Sql, user_id: &str, row: &SyncedCredentialRow) -> Result<(), DbError> {
    sql.execute("DELETE FROM synced_credentials WHERE user_id = ?1", &[user_id.into()])?;
    sql.execute(
        "INSERT INTO synced_credentials (user_id, credential, must_change, synced_at) VALUES (?1, ?2, ?3, ?4)",
        &[user_id.into(), row.credential.as_str().into(), row.must_change.into(), row.synced_at.into()],
    )?;
    Ok(())
}

/// The synced credential of `user_id`, if password hash sync sent one.
pub fn synced_credential(sql: &mut dyn Sql, user_id: &str) -> Result<Option<SyncedCredentialRow>, DbError> {
    let row = sql.query_opt("SELECT credential, must_change, synced_at FROM synced_credentials WHERE user_id = ?1", &[user_id.into()])?;
    row.map(|row| Ok(SyncedCredentialRow { credential: row.text(0)?, must_change: row.bool(1)?, synced_at: row.int(2)? })).transpose()
}

/// Marks `user_id` as having a leaked password (`Some(times seen)`), or clears the mark.
pub fn set_leaked(sql: &mut dyn Sql, user_id: &str, leaked: Option<u64>, now: i64) -> Result<(), DbError> {
    sql.execute("DELETE FROM risky_users WHERE user_id = ?1", &[user_id.into()])?;
    if let Some(count) = leaked {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        sql.execute(
            "INSERT INTO risky_users (user_id, leaked_count, detected_at) VALUES (?1, ?2, ?3)",
            &[user_id.into(), count.into(), now.into()],
        )?;
    }
    Ok(())
}

/// Users whose synced password is on the leaked list: (id, userPrincipalName, times seen, when found).
pub fn risky_users(sql: &mut dyn Sql) -> Result<Vec<(String, String, i64, i64)>, DbError> {
    let rows = sql.query(
        "SELECT r.user_id, COALESCE(o.upn, ''), r.leaked_count, r.detected_at FROM risky_users r JOIN objects o ON o.id = r.user_id WHERE o.deleted = 0 ORDER BY r.user_id",
        &[],
    )?;
    rows.iter().map(|row| Ok((row.text(0)?, row.text(1)?, row.int(2)?, row.int(3)?))).collect()
}

/// Whether `user_id` is flagged for a leaked password.
pub fn is_risky(sql: &mut dyn Sql, user_id: &str) -> Result<bool, DbError> {
    Ok(sql.query_opt("SELECT 1 FROM risky_users WHERE user_id = ?1", &[user_id.into()])?.is_some())
}

/// Assigns directory role `role` to user `member`; `false` when it already holds it.
pub fn add_role_member(sql: &mut dyn Sql, role: &str, member: &str) -> Result<bool, DbError> {
    Ok(sql
        .execute("INSERT INTO role_members (role_id, member_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING", &[role.into(), member.into()])?
        > 0)
}

/// Takes directory role `role` from `member`; `false` when it did not hold it.
pub fn remove_role_member(sql: &mut dyn Sql, role: &str, member: &str) -> Result<bool, DbError> {
    Ok(sql.execute("DELETE FROM role_members WHERE role_id = ?1 AND member_id = ?2", &[role.into(), member.into()])? > 0)
}

/// The holders of a directory role: (id, userPrincipalName).
pub fn role_members(sql: &mut dyn Sql, role: &str) -> Result<Vec<(String, String)>, DbError> {
    let rows = sql.query(
        "SELECT o.id, COALESCE(o.upn, '') FROM role_members r JOIN objects o ON o.id = r.member_id WHERE r.role_id = ?1 AND o.deleted = 0 ORDER BY o.id",
        &[role.into()],
    )?;
    rows.iter().map(|row| Ok((row.text(0)?, row.text(1)?))).collect()
}

/// Whether an object holds any directory role.
pub fn holds_a_role(sql: &mut dyn Sql, id: &str) -> Result<bool, DbError> {
    Ok(sql.query_opt("SELECT 1 FROM role_members WHERE member_id = ?1 LIMIT 1", &[id.into()])?.is_some())
}

/// A setting shared by every process of the tenant (its identity, the token-signing key).
pub fn setting(sql: &mut dyn Sql, name: &str) -> Result<Option<Vec<u8>>, DbError> {
    sql.query_opt("SELECT value FROM settings WHERE name = ?1", &[name.into()])?.map(|row| row.blob(0)).transpose()
}

/// Stores a setting unless one is there already; returns the stored value (the first writer wins).
pub fn setting_or_insert(sql: &mut dyn Sql, name: &str, value: &[u8]) -> Result<Vec<u8>, DbError> {
    sql.execute("INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING", &[name.into(), value.into()])?;
    setting(sql, name)?.ok_or_else(|| DbError::Corrupt(format!("setting {name} vanished")))
}

/// Stores a setting, replacing any value.
pub fn set_setting(sql: &mut dyn Sql, name: &str, value: &[u8]) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        &[name.into(), value.into()],
    )?;
    Ok(())
}

/// Smart lockout: `user`'s failures in a row and until when (Unix seconds; 0: not) it is locked.
pub fn lockout_entry(sql: &mut dyn Sql, user: &str) -> Result<Option<(i64, i64)>, DbError> {
    sql.query_opt("SELECT failures, locked_until FROM lockout WHERE user_key = ?1", &[user.into()])?
        .map(|row| Ok((row.int(0)?, row.int(1)?)))
        .transpose()
}

/// Smart lockout: counts a failure at `now`; locks for `duration` seconds at `threshold`.
/// Returns whether the account is now locked.
pub fn lockout_fail(sql: &mut dyn Sql, user: &str, now: i64, threshold: u32, duration: i64) -> Result<bool, DbError> {
    let row = sql.query_opt("SELECT failures, locked_until FROM lockout WHERE user_key = ?1", &[user.into()])?;
    let failures = match row {
        // A lock that has run out starts a new count.
        Some(row) if row.int(1)? != 0 && row.int(1)? <= now => 1,
        Some(row) => row.int(0)? + 1,
        None => 1,
    };
    let locked = failures >= i64::from(threshold);
    let until = if locked { now + duration } else { 0 };
    sql.execute("DELETE FROM lockout WHERE user_key = ?1", &[user.into()])?;
    sql.execute(
        "INSERT INTO lockout (user_key, failures, locked_until) VALUES (?1, ?2, ?3)",
        &[user.into(), failures.into(), until.into()],
    )?;
    Ok(locked)
}

/// Retention: drops audit records older than `audit_before` (RFC 3339, compared as text: every
/// record's time has the same form) and smart-lockout locks that have run out (a lock that has
/// run out counts the same as none). Returns how many of each went.
pub fn prune(sql: &mut dyn Sql, audit_before: &str, now: i64) -> Result<(u64, u64), DbError> {
    let audit = sql.execute("DELETE FROM audit WHERE time < ?1", &[audit_before.into()])?;
    let locks = sql.execute("DELETE FROM lockout WHERE locked_until <> 0 AND locked_until <= ?1", &[now.into()])?;
    sql.execute("DELETE FROM refresh_tokens WHERE expires <= ?1", &[now.into()])?;
    sql.execute("DELETE FROM browser_sessions WHERE expires <= ?1", &[now.into()])?;
    Ok((audit, locks))
}

/// Smart lockout: a success clears the count.
pub fn lockout_clear(sql: &mut dyn Sql, user: &str) -> Result<(), DbError> {
    sql.execute("DELETE FROM lockout WHERE user_key = ?1", &[user.into()])?;
    Ok(())
}

/// Keeps an authorization code's grant (by the code's hash) until `expires`; drops expired ones.
pub fn insert_code(sql: &mut dyn Sql, code_hash: &str, grant: &str, expires: i64, now: i64) -> Result<(), DbError> {
    sql.execute("DELETE FROM auth_codes WHERE expires <= ?1", &[now.into()])?;
    sql.execute(
        "INSERT INTO auth_codes (code_hash, grant_data, expires) VALUES (?1, ?2, ?3)",
        &[code_hash.into(), grant.into(), expires.into()],
    )?;
    Ok(())
}

/// Takes (removes) an authorization code's grant if it has not expired: a code is used once,
/// whichever process redeems it.
pub fn take_code(sql: &mut dyn Sql, code_hash: &str, now: i64) -> Result<Option<String>, DbError> {
    let row = sql.query_opt("DELETE FROM auth_codes WHERE code_hash = ?1 RETURNING grant_data, expires", &[code_hash.into()])?;
    Ok(match row {
        Some(row) if row.int(1)? > now => Some(row.text(0)?),
        _ => None,
    })
}

/// Records an issued refresh token (by its id) in its family (a sign-in and its rotations).
pub fn insert_refresh(sql: &mut dyn Sql, id: &str, family: &str, user_id: &str, client_id: &str, expires: i64) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO refresh_tokens (id, family, user_id, client_id, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[id.into(), family.into(), user_id.into(), client_id.into(), expires.into()],
    )?;
    Ok(())
}

/// What redeeming a refresh token found.
#[derive(Debug, PartialEq, Eq)]
pub enum Redeemed {
    /// It was live and is now used: rotate (its family).
    Rotate(String),
    /// It was used before: a replay — its whole family is now revoked.
    Replayed,
    /// Unknown, revoked or expired.
    Invalid,
}

/// Redeems refresh token `id` once: marks it used, or on a second use revokes its family
/// (OAuth 2.0 Security BCP: refresh token rotation with reuse detection).
pub fn redeem_refresh(sql: &mut dyn Sql, id: &str, now: i64) -> Result<Redeemed, DbError> {
    let Some(row) = sql.query_opt("SELECT family, expires, used, revoked FROM refresh_tokens WHERE id = ?1", &[id.into()])? else {
        return Ok(Redeemed::Invalid);
    };
    let (family, expires, used, revoked) = (row.text(0)?, row.int(1)?, row.int(2)? != 0, row.int(3)? != 0);
    if revoked || expires <= now {
        return Ok(Redeemed::Invalid);
    }
    if used {
        sql.execute("UPDATE refresh_tokens SET revoked = 1 WHERE family = ?1", &[family.as_str().into()])?;
        return Ok(Redeemed::Replayed);
    }
    if sql.execute("UPDATE refresh_tokens SET used = 1 WHERE id = ?1 AND used = 0", &[id.into()])? != 1 {
        sql.execute("UPDATE refresh_tokens SET revoked = 1 WHERE family = ?1", &[family.as_str().into()])?;
        return Ok(Redeemed::Replayed);
    }
    Ok(Redeemed::Rotate(family))
}

/// Revokes every refresh token and browser session of a user (password change, disable, an
/// administrator's `revokeSignInSessions`). Returns how many refresh tokens were live.
pub fn revoke_user_refresh(sql: &mut dyn Sql, user_id: &str) -> Result<u64, DbError> {
    sql.execute("DELETE FROM browser_sessions WHERE user_id = ?1", &[user_id.into()])?;
    sql.execute("UPDATE refresh_tokens SET revoked = 1 WHERE user_id = ?1 AND revoked = 0", &[user_id.into()])
}

/// A service principal for an app: (object id, client id, created).
pub fn insert_service_principal(sql: &mut dyn Sql, object_id: &str, client_id: &str, created: &str) -> Result<bool, DbError> {
    Ok(sql.execute(
        "INSERT INTO service_principals (object_id, client_id, created) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        &[object_id.into(), client_id.into(), created.into()],
    )? == 1)
}

/// An app's service principal, with what its app holds.
#[derive(Debug, Clone)]
pub struct ServicePrincipalRow {
    /// Its object id.
    pub object_id: String,
    /// The app's client id.
    pub client_id: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// The app's name.
    pub name: String,
    /// The app's roles, JSON.
    pub roles: String,
}

/// Service principals, all or one by object id or client id.
pub fn service_principals(sql: &mut dyn Sql, key: Option<&str>) -> Result<Vec<ServicePrincipalRow>, DbError> {
    let base =
        "SELECT s.object_id, s.client_id, s.created, a.name, a.roles FROM service_principals s JOIN apps a ON a.client_id = s.client_id";
    let rows = match key {
        Some(key) => sql.query(&format!("{base} WHERE s.object_id = ?1 OR s.client_id = ?1"), &[key.into()])?,
        None => sql.query(&format!("{base} ORDER BY s.object_id"), &[])?,
    };
    rows.iter()
        .map(|row| {
            Ok(ServicePrincipalRow {
                object_id: row.text(0)?,
                client_id: row.text(1)?,
                created: row.text(2)?,
                name: row.text(3)?,
                roles: row.text(4)?,
            })
        })
        .collect()
}

/// Replaces an app's application roles.
pub fn set_app_roles(sql: &mut dyn Sql, client_id: &str, roles: &[String]) -> Result<(), DbError> {
    sql.execute(
        "UPDATE apps SET roles = ?2 WHERE client_id = ?1",
        &[client_id.into(), serde_json::to_string(roles).unwrap_or_else(|_| "[]".into()).into()],
    )?;
    Ok(())
}

/// An application object (Graph's `/applications`): its object id, client id and document.
pub fn insert_application(sql: &mut dyn Sql, object_id: &str, client_id: &str, data: &str) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO applications (object_id, client_id, data) VALUES (?1, ?2, ?3)",
        &[object_id.into(), client_id.into(), data.into()],
    )?;
    Ok(())
}

/// Replaces an application object's document.
pub fn update_application(sql: &mut dyn Sql, object_id: &str, data: &str) -> Result<(), DbError> {
    sql.execute("UPDATE applications SET data = ?2 WHERE object_id = ?1", &[object_id.into(), data.into()])?;
    Ok(())
}

/// An application by object id or client id: (object id, client id, document).
pub fn application(sql: &mut dyn Sql, key: &str) -> Result<Option<(String, String, String)>, DbError> {
    sql.query_opt("SELECT object_id, client_id, data FROM applications WHERE object_id = ?1 OR client_id = ?1", &[key.into()])?
        .map(|row| Ok((row.text(0)?, row.text(1)?, row.text(2)?)))
        .transpose()
}

/// Every application object, by object id.
pub fn applications(sql: &mut dyn Sql) -> Result<Vec<(String, String, String)>, DbError> {
    sql.query("SELECT object_id, client_id, data FROM applications ORDER BY object_id", &[])?
        .iter()
        .map(|row| Ok((row.text(0)?, row.text(1)?, row.text(2)?)))
        .collect()
}

/// Deletes an app with everything it holds (object, registration, secrets, certificates,
/// redirect URIs, refresh tokens). False when there was no such app.
pub fn delete_app(sql: &mut dyn Sql, client_id: &str) -> Result<bool, DbError> {
    for table in ["applications", "service_principals", "app_passwords", "app_certificates", "app_redirects", "refresh_tokens"] {
        sql.execute(&format!("DELETE FROM {table} WHERE client_id = ?1"), &[client_id.into()])?;
    }
    Ok(sql.execute("DELETE FROM apps WHERE client_id = ?1", &[client_id.into()])? > 0)
}

/// Replaces an app's redirect URIs.
pub fn set_app_redirects(sql: &mut dyn Sql, client_id: &str, uris: &[String]) -> Result<(), DbError> {
    sql.execute("DELETE FROM app_redirects WHERE client_id = ?1", &[client_id.into()])?;
    for uri in uris {
        insert_app_redirect(sql, client_id, uri)?;
    }
    Ok(())
}

/// Replaces an app's certificates: (SHA-256 hex, SHA-1 hex, base64 DER) each.
pub fn set_app_certificates(sql: &mut dyn Sql, client_id: &str, certificates: &[(String, String, String)]) -> Result<(), DbError> {
    sql.execute("DELETE FROM app_certificates WHERE client_id = ?1", &[client_id.into()])?;
    for (sha256, sha1, der) in certificates {
        insert_app_certificate(sql, client_id, sha256, sha1, der)?;
    }
    Ok(())
}

/// Adds a client secret (its SHA-256, base64) valid until `expires`.
pub fn insert_app_password(sql: &mut dyn Sql, client_id: &str, key_id: &str, hash: &str, expires: i64) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO app_passwords (client_id, key_id, hash, expires) VALUES (?1, ?2, ?3, ?4)",
        &[client_id.into(), key_id.into(), hash.into(), expires.into()],
    )?;
    Ok(())
}

/// Removes a client secret; false when the app has no such key.
pub fn delete_app_password(sql: &mut dyn Sql, client_id: &str, key_id: &str) -> Result<bool, DbError> {
    Ok(sql.execute("DELETE FROM app_passwords WHERE client_id = ?1 AND key_id = ?2", &[client_id.into(), key_id.into()])? > 0)
}

/// An app's client secrets: (SHA-256 base64, expiry).
pub fn app_passwords(sql: &mut dyn Sql, client_id: &str) -> Result<Vec<(String, i64)>, DbError> {
    sql.query("SELECT hash, expires FROM app_passwords WHERE client_id = ?1", &[client_id.into()])?
        .iter()
        .map(|row| Ok((row.text(0)?, row.int(1)?)))
        .collect()
}

/// Adds a certificate (DER, base64 in the table) an app proves itself with; thumbprints in hex.
pub fn insert_app_certificate(sql: &mut dyn Sql, client_id: &str, sha256: &str, sha1: &str, der_base64: &str) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO app_certificates (client_id, sha256, sha1, der) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        &[client_id.into(), sha256.into(), sha1.into(), der_base64.into()],
    )?;
    Ok(())
}

/// An app's certificate (base64 DER) by its SHA-256 or SHA-1 thumbprint (hex, lower case).
pub fn app_certificate(sql: &mut dyn Sql, client_id: &str, thumbprint: &str) -> Result<Option<String>, DbError> {
    sql.query_opt(
        "SELECT der FROM app_certificates WHERE client_id = ?1 AND (sha256 = ?2 OR sha1 = ?2)",
        &[client_id.into(), thumbprint.into()],
    )?
    .map(|row| row.text(0))
    .transpose()
}

/// Records a client assertion's `jti` until it expires; false when it was seen before (a replay).
pub fn first_use_of_assertion(sql: &mut dyn Sql, id_hash: &str, expires: i64, now: i64) -> Result<bool, DbError> {
    sql.execute("DELETE FROM assertion_ids WHERE expires <= ?1", &[now.into()])?;
    Ok(sql.execute(
        "INSERT INTO assertion_ids (id_hash, expires) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        &[id_hash.into(), expires.into()],
    )? == 1)
}

/// Keeps a browser session (by its id's hash) until `expires`; drops expired ones.
pub fn insert_session(sql: &mut dyn Sql, id_hash: &str, user_id: &str, auth_time: i64, expires: i64) -> Result<(), DbError> {
    sql.execute("DELETE FROM browser_sessions WHERE expires <= ?1", &[auth_time.into()])?;
    sql.execute(
        "INSERT INTO browser_sessions (id_hash, user_id, auth_time, expires) VALUES (?1, ?2, ?3, ?4)",
        &[id_hash.into(), user_id.into(), auth_time.into(), expires.into()],
    )?;
    Ok(())
}

/// A live browser session: its user and when they signed in.
pub fn session(sql: &mut dyn Sql, id_hash: &str, now: i64) -> Result<Option<(String, i64)>, DbError> {
    sql.query_opt("SELECT user_id, auth_time FROM browser_sessions WHERE id_hash = ?1 AND expires > ?2", &[id_hash.into(), now.into()])?
        .map(|row| Ok((row.text(0)?, row.int(1)?)))
        .transpose()
}

/// Ends a browser session.
pub fn delete_session(sql: &mut dyn Sql, id_hash: &str) -> Result<bool, DbError> {
    Ok(sql.execute("DELETE FROM browser_sessions WHERE id_hash = ?1", &[id_hash.into()])? > 0)
}

impl Db {
    /// Whether this is the PostgreSQL backend (for tests and logs).
    pub fn is_postgres(&self) -> bool {
        self.dialect() == Dialect::Postgres
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn addresses(db: &Db, id: &str) -> Vec<String> {
        let id = id.to_string();
        db.read(move |sql| {
            let rows = sql.query("SELECT address FROM proxies WHERE object_id = ?1 ORDER BY address", &[id.as_str().into()])?;
            rows.iter().map(|row| row.text(0)).collect()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn proxy_addresses_follow_writes_and_are_filled_in_for_an_older_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenant.db");
        let db = Db::open(&path).unwrap();
        let mut object = Map::new();
        object.insert("id".into(), Value::String("u1".into()));
        object.insert("proxyAddresses".into(), serde_json::json!(["SMTP:a@x.test", "smtp:b@x.test"]));
        let stored = object.clone();
        db.call(move |sql| insert(sql, Kind::User, &stored, None)).await.unwrap();
        assert_eq!(addresses(&db, "u1").await, ["SMTP:a@x.test", "smtp:b@x.test"]);
        object.insert("proxyAddresses".into(), serde_json::json!(["SMTP:c@x.test"]));
        let stored = object.clone();
        assert!(db.call(move |sql| update(sql, Kind::User, &stored)).await.unwrap());
        assert_eq!(addresses(&db, "u1").await, ["SMTP:c@x.test"]);
        assert!(db.read(|sql| proxy_taken(sql, "smtp:C@X.TEST", "other")).await.unwrap(), "addresses compare without case");
        assert!(!db.read(|sql| proxy_taken(sql, "smtp:C@X.TEST", "u1")).await.unwrap(), "an object does not conflict with itself");
        // A database written before the table existed.
        db.call(|sql| sql.execute("DELETE FROM proxies", &[])).await.unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(addresses(&db, "u1").await, ["SMTP:c@x.test"], "filled in on open");
        assert!(db.call(|sql| delete(sql, Kind::User, "u1")).await.unwrap());
        assert!(addresses(&db, "u1").await.is_empty(), "a deleted object frees its addresses");
    }

    #[tokio::test]
    async fn a_failed_call_leaves_nothing_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("tenant.db")).unwrap();
        let mut object = Map::new();
        object.insert("id".into(), Value::String("u1".into()));
        object.insert("userPrincipalName".into(), Value::String("a@x.test".into()));
        let stored = object.clone();
        let before = db.read(current_seq).await.unwrap();
        let failed = db
            .call(move |sql| {
                insert(sql, Kind::User, &stored, None)?;
                Err::<(), _>(DbError::Conflict("refused after the insert".into()))
            })
            .await;
        assert!(failed.is_err());
        assert!(db.read(|sql| get(sql, Kind::User, "u1")).await.unwrap().is_none(), "the insert was rolled back");
        assert_eq!(db.read(current_seq).await.unwrap(), before, "so was its change number");
    }

    #[tokio::test]
    async fn lockout_counts_locks_and_starts_over_after_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("tenant.db")).unwrap();
        assert!(!db.call(|sql| lockout_fail(sql, "a@x", 100, 3, 60)).await.unwrap());
        assert!(!db.call(|sql| lockout_fail(sql, "a@x", 101, 3, 60)).await.unwrap());
        assert!(db.call(|sql| lockout_fail(sql, "a@x", 102, 3, 60)).await.unwrap(), "the third failure locks");
        assert_eq!(db.read(|sql| lockout_entry(sql, "a@x")).await.unwrap(), Some((3, 162)));
        assert!(!db.call(|sql| lockout_fail(sql, "a@x", 200, 3, 60)).await.unwrap(), "after the lock the count starts over");
        db.call(|sql| lockout_clear(sql, "a@x")).await.unwrap();
        assert_eq!(db.read(|sql| lockout_entry(sql, "a@x")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_database_files_are_the_owners_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenant.db");
        let db = Db::open(&path).unwrap();
        db.call(|sql| set_setting(sql, "x", b"y")).await.unwrap();
        let mode = |suffix: &str| std::fs::metadata(format!("{}{suffix}", path.display())).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(""), mode("-wal")), (0o600, 0o600));
        drop(db);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _db = Db::open(&path).unwrap();
        assert_eq!(mode(""), 0o600, "an older, wider file is narrowed");
    }

    #[tokio::test]
    async fn retention_drops_old_audit_records_and_run_out_locks_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("tenant.db")).unwrap();
        for time in ["2026-10-01T00:00:00Z", "2026-11-20T12:00:00Z"] {
            let record = AuditRecord {
                seq: 0,
                time: time.into(),
                category: "SignIn".into(),
                activity: "x".into(),
                actor: "a".into(),
                target: "t".into(),
                outcome: "bad password".into(),
            };
            db.call(move |sql| insert_audit(sql, &record)).await.unwrap();
        }
        db.call(|sql| lockout_fail(sql, "run-out@x", 100, 1, 60)).await.unwrap();
        db.call(|sql| lockout_fail(sql, "locked@x", 1_000, 1, 60)).await.unwrap();
        db.call(|sql| lockout_fail(sql, "counting@x", 100, 5, 60)).await.unwrap();
        let removed = db.call(|sql| prune(sql, "2026-11-01T00:00:00Z", 500)).await.unwrap();
        assert_eq!(removed, (1, 1));
        let left = db.read(|sql| audit(sql, "SignIn", None, 10)).await.unwrap();
        assert_eq!(left.iter().map(|record| record.time.as_str()).collect::<Vec<_>>(), ["2026-11-20T12:00:00Z"]);
        assert_eq!(db.read(|sql| lockout_entry(sql, "run-out@x")).await.unwrap(), None);
        assert_eq!(db.read(|sql| lockout_entry(sql, "locked@x")).await.unwrap(), Some((1, 1_060)), "a lock still on stays");
        assert_eq!(db.read(|sql| lockout_entry(sql, "counting@x")).await.unwrap(), Some((1, 0)), "so does a count");
    }

    #[tokio::test]
    async fn a_code_is_taken_once_and_not_after_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("tenant.db")).unwrap();
        db.call(|sql| insert_code(sql, "k1", "grant one", 700, 100)).await.unwrap();
        db.call(|sql| insert_code(sql, "k2", "grant two", 150, 100)).await.unwrap();
        assert_eq!(db.call(|sql| take_code(sql, "k1", 200)).await.unwrap().as_deref(), Some("grant one"));
        assert_eq!(db.call(|sql| take_code(sql, "k1", 200)).await.unwrap(), None, "used once");
        assert_eq!(db.call(|sql| take_code(sql, "k2", 200)).await.unwrap(), None, "expired");
    }
}
