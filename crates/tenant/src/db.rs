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
    /// The stored name, also the end of `#microsoft.graph.<name>` (contacts: `orgContact`).
    pub fn name(self) -> &'static str {
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
CREATE INDEX IF NOT EXISTS objects_immutable ON objects(kind, json_extract(data, '$.onPremisesImmutableId'));
CREATE INDEX IF NOT EXISTS objects_cloud_only ON objects(kind) WHERE json_extract(data, '$.onPremisesImmutableId') IS NULL;
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
-- Every live object's proxyAddresses, kept by triggers, so uniqueness checks use an index.
CREATE TABLE IF NOT EXISTS proxies (
    address TEXT NOT NULL COLLATE NOCASE,
    object_id TEXT NOT NULL,
    PRIMARY KEY (address, object_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS proxies_object ON proxies(object_id);
CREATE TRIGGER IF NOT EXISTS objects_proxies_insert AFTER INSERT ON objects BEGIN
    INSERT OR IGNORE INTO proxies SELECT value, NEW.id FROM json_each(NEW.data, '$.proxyAddresses') WHERE NEW.deleted = 0;
END;
CREATE TRIGGER IF NOT EXISTS objects_proxies_update AFTER UPDATE OF data, deleted ON objects BEGIN
    DELETE FROM proxies WHERE object_id = NEW.id;
    INSERT OR IGNORE INTO proxies SELECT value, NEW.id FROM json_each(NEW.data, '$.proxyAddresses') WHERE NEW.deleted = 0;
END;
-- A database from before the table: fill it once.
INSERT OR IGNORE INTO proxies SELECT address.value, objects.id FROM objects, json_each(objects.data, '$.proxyAddresses') AS address
    WHERE objects.deleted = 0 AND NOT EXISTS (SELECT 1 FROM proxies);
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

/// Live objects of a kind found by an indexed lookup: `lookup` is one of the [`Lookup`]s.
pub fn find(conn: &Connection, kind: Kind, lookup: Lookup<'_>) -> Result<Vec<Map<String, Value>>, DbError> {
    let (sql, value) = match lookup {
        Lookup::ImmutableId(anchor) => (
            "SELECT id, data FROM objects WHERE kind = ?1 AND json_extract(data, '$.onPremisesImmutableId') = ?2 AND deleted = 0",
            Some(anchor),
        ),
        Lookup::Upn(upn) => ("SELECT id, data FROM objects WHERE kind = ?1 AND upn = ?2 COLLATE NOCASE AND deleted = 0", Some(upn)),
        Lookup::WithoutImmutableId => (
            "SELECT id, data FROM objects WHERE kind = ?1 AND json_extract(data, '$.onPremisesImmutableId') IS NULL AND deleted = 0 \
             AND ?2 IS NULL",
            None,
        ),
    };
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params![kind.name(), value])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let (id, data): (String, String) = (row.get(0)?, row.get(1)?);
        out.push(parse(&id, &data)?);
    }
    Ok(out)
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

/// Deletes an object (kept as a tombstone for delta queries), taking it out of every group
/// (and a group's members out of it); `false` when it does not exist.
pub fn delete(conn: &mut Connection, kind: Kind, id: &str) -> Result<bool, DbError> {
    let tx = conn.transaction()?;
    let seq = next_seq(&tx)?;
    let changed = tx.execute(
        "UPDATE objects SET deleted = 1, upn = NULL, seq = ?3 WHERE kind = ?1 AND id = ?2 AND deleted = 0",
        params![kind.name(), id, seq],
    )?;
    if changed > 0 {
        tx.execute("DELETE FROM credentials WHERE user_id = ?1", params![id])?;
        let groups: Vec<String> = tx
            .prepare("SELECT group_id FROM members WHERE member_id = ?1")?
            .query_map(params![id], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        for group in groups {
            log_member(&tx, &group, id, true)?;
        }
        tx.execute("DELETE FROM members WHERE member_id = ?1 OR group_id = ?1", params![id])?;
    }
    tx.commit()?;
    Ok(changed > 0)
}

/// Records a membership change and moves the group forward in the change order.
fn log_member(tx: &rusqlite::Transaction<'_>, group: &str, member: &str, removed: bool) -> Result<(), DbError> {
    let seq = next_seq(tx)?;
    tx.execute("INSERT INTO member_log (seq, group_id, member_id, removed) VALUES (?1, ?2, ?3, ?4)", params![seq, group, member, removed])?;
    tx.execute("UPDATE objects SET seq = ?2 WHERE id = ?1", params![group, seq])?;
    Ok(())
}

/// The kind of a live object by id.
pub fn kind_of(conn: &Connection, id: &str) -> Result<Option<Kind>, DbError> {
    let kind: Option<String> =
        conn.query_row("SELECT kind FROM objects WHERE id = ?1 AND deleted = 0", params![id], |row| row.get(0)).optional()?;
    Ok(kind.and_then(|kind| match kind.as_str() {
        "user" => Some(Kind::User),
        "group" => Some(Kind::Group),
        "contact" => Some(Kind::Contact),
        _ => None,
    }))
}

/// Adds `member` to `group`; `false` when it already was one.
pub fn add_member(conn: &mut Connection, group: &str, member: &str) -> Result<bool, DbError> {
    let tx = conn.transaction()?;
    let added = tx.execute("INSERT OR IGNORE INTO members (group_id, member_id) VALUES (?1, ?2)", params![group, member])? > 0;
    if added {
        log_member(&tx, group, member, false)?;
    }
    tx.commit()?;
    Ok(added)
}

/// Removes `member` from `group`; `false` when it was not one.
pub fn remove_member(conn: &mut Connection, group: &str, member: &str) -> Result<bool, DbError> {
    let tx = conn.transaction()?;
    let removed = tx.execute("DELETE FROM members WHERE group_id = ?1 AND member_id = ?2", params![group, member])? > 0;
    if removed {
        log_member(&tx, group, member, true)?;
    }
    tx.commit()?;
    Ok(removed)
}

/// A group's members: (id, kind, document), by id.
pub fn members(conn: &Connection, group: &str) -> Result<Vec<(String, String, String)>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT o.id, o.kind, o.data FROM members m JOIN objects o ON o.id = m.member_id WHERE m.group_id = ?1 AND o.deleted = 0 ORDER BY o.id",
    )?;
    let rows = statement.query_map(params![group], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Membership changes of `group` in `(since, upto]`, the last per member: (member id, removed).
pub fn member_changes(conn: &Connection, group: &str, since: i64, upto: i64) -> Result<Vec<(String, bool)>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT member_id, removed FROM member_log l WHERE group_id = ?1 AND seq > ?2 AND seq <= ?3 \
         AND seq = (SELECT MAX(seq) FROM member_log x WHERE x.group_id = l.group_id AND x.member_id = l.member_id AND x.seq <= ?3) ORDER BY member_id",
    )?;
    let rows = statement.query_map(params![group, since, upto], |row| Ok((row.get(0)?, row.get::<_, bool>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest change number.
pub fn current_seq(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.query_row("SELECT COALESCE((SELECT value FROM counters WHERE name = 'seq'), 0)", [], |row| row.get(0))?)
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
pub fn changed(conn: &Connection, kind: Kind, after: i64, upto: i64, with_deleted: bool, limit: usize) -> Result<Vec<Changed>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, id, deleted, data FROM objects WHERE kind = ?1 AND seq > ?2 AND seq <= ?3 AND (deleted = 0 OR ?4) ORDER BY seq LIMIT ?5",
    )?;
    let rows = statement.query_map(params![kind.name(), after, upto, with_deleted, limit as i64], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, bool>(2)?, row.get::<_, String>(3)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, id, deleted, data) = row?;
        let data = if deleted { Map::new() } else { parse(&id, &data)? };
        out.push(Changed { seq, id, deleted, data });
    }
    Ok(out)
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
}

/// Every domain.
pub fn domains(conn: &Connection) -> Result<Vec<Domain>, DbError> {
    let mut statement =
        conn.prepare_cached("SELECT name, verified, authentication, code, initial FROM domains ORDER BY initial DESC, name")?;
    let rows = statement.query_map([], |row| {
        Ok(Domain { name: row.get(0)?, verified: row.get(1)?, authentication: row.get(2)?, code: row.get(3)?, initial: row.get(4)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Adds a domain; a conflict when it exists.
pub fn insert_domain(conn: &Connection, domain: &Domain) -> Result<(), DbError> {
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO domains (name, verified, authentication, code, initial) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![domain.name, domain.verified, domain.authentication, domain.code, domain.initial],
    )?;
    if inserted == 0 {
        return Err(DbError::Conflict(format!("The domain {} already exists.", domain.name)));
    }
    Ok(())
}

/// Updates a domain's verification and authentication type.
pub fn update_domain(conn: &Connection, domain: &Domain) -> Result<(), DbError> {
    conn.execute(
        "UPDATE domains SET verified = ?2, authentication = ?3 WHERE name = ?1",
        params![domain.name, domain.verified, domain.authentication],
    )?;
    Ok(())
}

/// Removes a domain; refused while a live user's UPN uses it.
pub fn delete_domain(conn: &Connection, name: &str) -> Result<bool, DbError> {
    let users: i64 = conn.query_row(
        "SELECT COUNT(*) FROM objects WHERE kind = 'user' AND deleted = 0 AND upn LIKE ?1 ESCAPE '\\'",
        params![format!("%@{}", name.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))],
        |row| row.get(0),
    )?;
    if users > 0 {
        return Err(DbError::Conflict(format!("The domain {name} is used by {users} user(s); change their userPrincipalName first.")));
    }
    Ok(conn.execute("DELETE FROM domains WHERE name = ?1 AND initial = 0", params![name])? > 0)
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
pub fn insert_audit(conn: &Connection, record: &AuditRecord) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO audit (time, category, activity, actor, target, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![record.time, record.category, record.activity, record.actor, record.target, record.outcome],
    )?;
    Ok(())
}

/// Audit records of `category`, newest first, older than `before` (a seq), at most `limit`.
pub fn audit(conn: &Connection, category: &str, before: Option<i64>, limit: usize) -> Result<Vec<AuditRecord>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, time, category, activity, actor, target, outcome FROM audit WHERE category = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
    )?;
    let rows = statement.query_map(params![category, before.unwrap_or(i64::MAX), limit as i64], |row| {
        Ok(AuditRecord {
            seq: row.get(0)?,
            time: row.get(1)?,
            category: row.get(2)?,
            activity: row.get(3)?,
            actor: row.get(4)?,
            target: row.get(5)?,
            outcome: row.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Registers a redirect URI for an app.
pub fn insert_app_redirect(conn: &Connection, client_id: &str, uri: &str) -> Result<(), DbError> {
    conn.execute("INSERT OR IGNORE INTO app_redirects (client_id, uri) VALUES (?1, ?2)", params![client_id, uri])?;
    Ok(())
}

/// An app's redirect URIs; `None` when the app does not exist.
pub fn app_redirects(conn: &Connection, client_id: &str) -> Result<Option<Vec<String>>, DbError> {
    if app(conn, client_id)?.is_none() {
        return Ok(None);
    }
    let mut statement = conn.prepare_cached("SELECT uri FROM app_redirects WHERE client_id = ?1")?;
    let rows = statement.query_map(params![client_id], |row| row.get(0))?;
    Ok(Some(rows.collect::<Result<_, _>>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(db: &Db, id: &str) -> Vec<String> {
        let conn = db.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut statement = conn.prepare("SELECT address FROM proxies WHERE object_id = ?1 ORDER BY address").unwrap();
        statement.query_map(params![id], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn proxy_addresses_follow_writes_and_are_filled_in_for_an_older_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenant.db");
        let db = Db::open(&path).unwrap();
        let mut object = Map::new();
        object.insert("id".into(), Value::String("u1".into()));
        object.insert("proxyAddresses".into(), serde_json::json!(["SMTP:a@x.test", "smtp:b@x.test"]));
        {
            let mut conn = db.conn.lock().unwrap();
            insert(&mut conn, Kind::User, &object, None).unwrap();
        }
        assert_eq!(addresses(&db, "u1"), ["SMTP:a@x.test", "smtp:b@x.test"]);
        object.insert("proxyAddresses".into(), serde_json::json!(["SMTP:c@x.test"]));
        {
            let mut conn = db.conn.lock().unwrap();
            assert!(update(&mut conn, Kind::User, &object).unwrap());
        }
        assert_eq!(addresses(&db, "u1"), ["SMTP:c@x.test"]);
        {
            let conn = db.conn.lock().unwrap();
            let found: i64 = conn.query_row("SELECT count(*) FROM proxies WHERE address = 'smtp:C@X.TEST'", [], |row| row.get(0)).unwrap();
            assert_eq!(found, 1, "addresses compare without case");
            // A database written before the table existed.
            conn.execute("DELETE FROM proxies", []).unwrap();
        }
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(addresses(&db, "u1"), ["SMTP:c@x.test"], "filled in on open");
        {
            let mut conn = db.conn.lock().unwrap();
            assert!(delete(&mut conn, Kind::User, "u1").unwrap());
        }
        assert!(addresses(&db, "u1").is_empty(), "a deleted object frees its addresses");
    }
}
