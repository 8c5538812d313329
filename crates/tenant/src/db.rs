//! The directory's storage (SQLite): objects as JSON documents of their Graph properties, each
//! with a change sequence number (for delta queries; deletes are kept as tombstones), users'
//! password hashes apart from the documents, and app registrations.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A value that must be unique is taken (e.g. a userPrincipalName).
    #[error("{0}")]
    Conflict(String),
    /// A stored document is not JSON (corruption).
    #[error("stored object {0} is corrupt")]
    Corrupt(String),
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
    fn name(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Group => "group",
            Kind::Contact => "contact",
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

/// The database, shared by the request handlers (one connection; SQLite serializes writes anyway).
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
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
";

impl Db {
    /// Opens (creating) the database file.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Db { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `work` on the connection off the async threads.
    pub async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard)
        })
        .await
        .unwrap_or_else(|err| Err(DbError::Conflict(format!("database task failed: {err}"))))
    }
}

fn next_seq(tx: &rusqlite::Transaction<'_>) -> Result<i64, DbError> {
    tx.execute("INSERT INTO counters (name, value) VALUES ('seq', 1) ON CONFLICT(name) DO UPDATE SET value = value + 1", [])?;
    Ok(tx.query_row("SELECT value FROM counters WHERE name = 'seq'", [], |row| row.get(0))?)
}

fn parse(id: &str, text: &str) -> Result<Map<String, Value>, DbError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(DbError::Corrupt(id.to_string())),
    }
}

/// Inserts a new object (its `id` is in `data`); a user's UPN must be free.
pub fn insert(conn: &mut Connection, kind: Kind, data: &Map<String, Value>, credential: Option<&Credential>) -> Result<(), DbError> {
    let tx = conn.transaction()?;
    let id = data.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let upn = data.get("userPrincipalName").and_then(Value::as_str).map(str::to_string);
    let seq = next_seq(&tx)?;
    let inserted = tx.execute(
        "INSERT INTO objects (id, kind, upn, data, seq) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, kind.name(), upn, Value::Object(data.clone()).to_string(), seq],
    );
    match inserted {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(err, _)) if err.code == rusqlite::ErrorCode::ConstraintViolation => {
            return Err(DbError::Conflict(format!(
                "Another object with the same value for property userPrincipalName already exists: {}",
                upn.unwrap_or_default()
            )));
        }
        Err(err) => return Err(err.into()),
    }
    if let Some(credential) = credential {
        tx.execute(
            "INSERT INTO credentials (user_id, salt, hash, iterations) VALUES (?1, ?2, ?3, ?4)",
            params![id, credential.salt, credential.hash, credential.iterations],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// One live object by id (or, for users, by userPrincipalName).
pub fn get(conn: &Connection, kind: Kind, key: &str) -> Result<Option<Map<String, Value>>, DbError> {
    let found: Option<(String, String)> = conn
        .query_row(
            "SELECT id, data FROM objects WHERE kind = ?1 AND deleted = 0 AND (id = ?2 OR upn = ?2 COLLATE NOCASE)",
            params![kind.name(), key],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    found.map(|(id, data)| parse(&id, &data)).transpose()
}

/// Live objects after `after` (by id), at most `limit`, for which `keep` holds.
pub fn list(
    conn: &Connection,
    kind: Kind,
    after: Option<&str>,
    limit: usize,
    keep: &dyn Fn(&Map<String, Value>) -> bool,
) -> Result<Vec<Map<String, Value>>, DbError> {
    let mut statement = conn.prepare_cached("SELECT id, data FROM objects WHERE kind = ?1 AND deleted = 0 AND id > ?2 ORDER BY id")?;
    let mut rows = statement.query(params![kind.name(), after.unwrap_or("")])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let (id, data): (String, String) = (row.get(0)?, row.get(1)?);
        let object = parse(&id, &data)?;
        if keep(&object) {
            out.push(object);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Replaces an object's document (a PATCH already merged); `false` when it does not exist.
pub fn update(conn: &mut Connection, kind: Kind, data: &Map<String, Value>) -> Result<bool, DbError> {
    let tx = conn.transaction()?;
    let id = data.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let upn = data.get("userPrincipalName").and_then(Value::as_str).map(str::to_string);
    let seq = next_seq(&tx)?;
    let changed = tx.execute(
        "UPDATE objects SET data = ?3, upn = ?4, seq = ?5 WHERE kind = ?1 AND id = ?2 AND deleted = 0",
        params![kind.name(), id, Value::Object(data.clone()).to_string(), upn, seq],
    );
    let changed = match changed {
        Ok(changed) => changed,
        Err(rusqlite::Error::SqliteFailure(err, _)) if err.code == rusqlite::ErrorCode::ConstraintViolation => {
            return Err(DbError::Conflict(format!(
                "Another object with the same value for property userPrincipalName already exists: {}",
                upn.unwrap_or_default()
            )));
        }
        Err(err) => return Err(err.into()),
    };
    tx.commit()?;
    Ok(changed > 0)
}

/// Deletes an object (kept as a tombstone for delta queries); `false` when it does not exist.
pub fn delete(conn: &mut Connection, kind: Kind, id: &str) -> Result<bool, DbError> {
    let tx = conn.transaction()?;
    let seq = next_seq(&tx)?;
    let changed = tx.execute(
        "UPDATE objects SET deleted = 1, upn = NULL, seq = ?3 WHERE kind = ?1 AND id = ?2 AND deleted = 0",
        params![kind.name(), id, seq],
    )?;
    tx.execute("DELETE FROM credentials WHERE user_id = ?1", params![id])?;
    tx.commit()?;
    Ok(changed > 0)
}

/// A user's password hash.
pub fn credential(conn: &Connection, user_id: &str) -> Result<Option<Credential>, DbError> {
    Ok(conn
        .query_row("SELECT salt, hash, iterations FROM credentials WHERE user_id = ?1", params![user_id], |row| {
            Ok(Credential { salt: row.get(0)?, hash: row.get(1)?, iterations: row.get(2)? })
        })
        .optional()?)
}

/// Registers an app with a secret (stored as its SHA-256) and app roles.
pub fn insert_app(conn: &Connection, client_id: &str, name: &str, secret_hash: &[u8], roles: &[String]) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO apps (client_id, name, secret_hash, roles) VALUES (?1, ?2, ?3, ?4)",
        params![client_id, name, secret_hash, serde_json::to_string(roles).unwrap_or_else(|_| "[]".into())],
    )?;
    Ok(())
}

/// An app's secret hash and roles.
pub type AppRecord = (Vec<u8>, Vec<String>);

/// An app's secret hash and roles.
pub fn app(conn: &Connection, client_id: &str) -> Result<Option<AppRecord>, DbError> {
    let found: Option<(Vec<u8>, String)> = conn
        .query_row("SELECT secret_hash, roles FROM apps WHERE client_id = ?1", params![client_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(found.map(|(hash, roles)| (hash, serde_json::from_str(&roles).unwrap_or_default())))
}

/// Number of registered apps.
pub fn app_count(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM apps", [], |row| row.get(0))?)
}
