//! The embedded default store: one SQLite file (or memory), through `rusqlite` with SQLite
//! bundled, WAL journaling, foreign keys on. Calls run inline on the caller's task (they are short).
//!
//! Implements [`store::Store`]; knows nothing of the engine or connectors. Attribute values are
//! kept as JSON text (`store::codec`) with a side table of index keys for join lookups.

mod schema;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use model::{Anchor, AttrValue, Attributes, ConnectorId, CsId, CsObject, MvId, MvObject, ObjectError};
use rusqlite::{Connection, OptionalExtension, Row, params};
use store::codec::{self, Space, index_key};
use store::{CsQuery, ImportChange, ImportCounts, Matching, NewCsObject, Result, RunCounts, RunRecord, StoreError};

/// A SQLite-backed store.
#[derive(Clone)]
pub struct SqliteStore {
    /// A unit of work is open (`BEGIN IMMEDIATE` sent); each call is a savepoint in it.
    in_unit: Arc<std::sync::atomic::AtomicBool>,
    conn: Arc<Mutex<Connection>>,
    /// The attributes the lookup index holds (`None`: all); see `Store::index_attributes`.
    indexed: Arc<std::sync::RwLock<Option<Arc<BTreeSet<String>>>>>,
    /// The database file (`None` in memory).
    path: Option<Arc<std::path::PathBuf>>,
    /// The runner lock file, once claimed; the lock lives as long as the store.
    runner_lock: Arc<Mutex<Option<std::fs::File>>>,
}

/// The file whose lock marks the one sync runner of a database: `<database>.runner.lock`.
fn runner_lock_path(database: &Path) -> std::path::PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".runner.lock");
    std::path::PathBuf::from(name)
}

fn backend(err: rusqlite::Error) -> StoreError {
    StoreError::Backend(Box::new(err))
}

/// Mode 0600 for a new database file; an existing one and its companions narrowed to it.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    for companion in [String::new(), "-wal".into(), "-shm".into()] {
        let file = std::path::PathBuf::from(format!("{}{companion}", path.display()));
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`. Call [`store::Store::migrate`] next.
    /// The file (and SQLite's WAL and shared-memory files) is readable by its owner only.
    pub fn open(path: &Path) -> Result<Self> {
        private_file(path).map_err(|err| StoreError::Backend(Box::new(err)))?;
        let conn = Connection::open(path).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
        // Fewer, larger checkpoints and a 64 MiB page cache: the sync engine touches many rows per run.
        conn.pragma_update(None, "wal_autocheckpoint", 16384).map_err(backend)?;
        conn.pragma_update(None, "cache_size", -65536).map_err(backend)?;
        // Each store call inside a unit of work is a savepoint, whose statement journal (the
        // pages' earlier contents, for a rollback to it) would otherwise be a temporary file
        // written through the kernel (14 % of the export step's samples at 100,000 users; the
        // step's time moved within the machine's noise). It holds only the pages one call
        // changes.
        conn.pragma_update(None, "temp_store", "MEMORY").map_err(backend)?;
        let mut store = Self::with_connection(conn)?;
        store.path = Some(Arc::new(path.to_path_buf()));
        Ok(store)
    }

    /// A private in-memory database (tests, previews).
    pub fn memory() -> Result<Self> {
        Self::with_connection(Connection::open_in_memory().map_err(backend)?)
    }

    fn with_connection(conn: Connection) -> Result<Self> {
        conn.pragma_update(None, "foreign_keys", "ON").map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(backend)?;
        // Query-planner stability: a cached statement is not re-prepared whenever the planner
        // might choose differently (measured: 496k re-prepares in one 10k-user full sync, 18%
        // of its time, for statements whose plan never changed).
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(backend)?;
        // Every hot statement stays prepared (the default cache holds 16).
        conn.set_prepared_statement_cache_capacity(128);
        Ok(SqliteStore {
            in_unit: Arc::default(),
            conn: Arc::new(Mutex::new(conn)),
            indexed: Arc::default(),
            path: None,
            runner_lock: Arc::default(),
        })
    }

    /// Index only these attributes for join lookups (the join attributes of the rules), instead of all.
    /// Lookups on other attributes then fail with a clear error.
    pub fn index_only(self, attributes: BTreeSet<String>) -> Self {
        *self.indexed.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(attributes));
        self
    }

    /// Runs `work` on the connection, inline. SQLite calls here are short (an indexed lookup or a
    /// small transaction), so they run on the calling task: measured, handing each call to
    /// tokio's blocking pool cost more in thread wake-ups than the queries themselves.
    async fn call<T: Send>(&self, work: impl FnOnce(&mut Connection, Option<&BTreeSet<String>>) -> Result<T> + Send) -> Result<T> {
        let indexed = self.indexed.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let mut guard = self.conn.lock().map_err(|_| StoreError::Backend("the SQLite connection lock is poisoned".into()))?;
        work(&mut guard, indexed.as_deref())
    }
}

/// Runs a future whose every step is a synchronous SQLite call (it never waits) to its end.
fn run_now<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => Err(StoreError::Backend("an SQLite import step waited, which it never should".into())),
    }
}

/// The import loop's transaction operations on SQLite (`store::import::apply_page`).
struct SqliteImport<'a> {
    tx: &'a Connection,
    indexed: Option<&'a BTreeSet<String>>,
}

impl store::import::ImportTx for SqliteImport<'_> {
    async fn by_anchor(&mut self, connector: &ConnectorId, anchor: &Anchor) -> Result<Option<CsObject>> {
        Ok(query_cs(self.tx, "connector = ?1 AND anchor = ?2", &[&connector.0, &anchor.0])?.pop())
    }

    async fn has_export_objects(&mut self, connector: &ConnectorId) -> Result<bool> {
        self.tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM cs_objects INDEXED BY cs_objects_unanchored WHERE connector = ?1 AND anchor IS NULL)",
            )
            .map_err(backend)?
            .query_row(params![connector.0], |row| row.get(0))
            .map_err(backend)
    }

    async fn export_object_by_dn(&mut self, connector: &ConnectorId, dn: &str) -> Result<Option<CsObject>> {
        Ok(query_cs(self.tx, "connector = ?1 AND dn_folded = ?2 AND anchor IS NULL", &[&connector.0, &dn.to_lowercase()])?.pop())
    }

    async fn insert(&mut self, object: &NewCsObject, run: i64) -> Result<CsId> {
        insert_cs(self.tx, object, Some(run), self.indexed)
    }

    async fn update(&mut self, object: &CsObject) -> Result<()> {
        update_cs(self.tx, object, self.indexed)
    }

    async fn mark_seen(&mut self, id: CsId, run: i64) -> Result<()> {
        self.tx
            .prepare_cached("UPDATE cs_objects SET seen_run = ?2 WHERE id = ?1")
            .map_err(backend)?
            .execute(params![id.0, run])
            .map_err(backend)?;
        Ok(())
    }

    async fn rename_references(&mut self, connector: &ConnectorId, renames: &store::import::PageRenames) -> Result<u64> {
        rename_references(self.tx, connector, renames, self.indexed)
    }

    async fn set_watermark(&mut self, connector: &ConnectorId, watermark: &[u8]) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO watermarks (connector, value) VALUES (?1, ?2) ON CONFLICT(connector) DO UPDATE SET value = excluded.value",
            )
            .map_err(backend)?
            .execute(params![connector.0, watermark])
            .map_err(backend)?;
        Ok(())
    }
}

const CS_COLUMNS: &str =
    "id, connector, anchor, dn, object_type, attributes, link, pending_import, pending_export, error_stage, error_code, error_message";

fn cs_from_row(row: &Row<'_>) -> rusqlite::Result<Result<CsObject>> {
    let anchor: Option<Vec<u8>> = row.get(2)?;
    let attributes: String = row.get(5)?;
    let pending_import: Option<String> = row.get(7)?;
    let pending_export: Option<String> = row.get(8)?;
    let error_stage: Option<String> = row.get(9)?;
    let error_code: Option<String> = row.get(10)?;
    let error_message: Option<String> = row.get(11)?;
    let id: i64 = row.get(0)?;
    let connector: String = row.get(1)?;
    let dn: String = row.get(3)?;
    let object_type: String = row.get(4)?;
    let link: Option<i64> = row.get(6)?;
    Ok((|| {
        Ok(CsObject {
            id: CsId(id),
            connector: ConnectorId(connector),
            anchor: anchor.map(Anchor),
            dn,
            object_type,
            attributes: codec::attributes_from_text(&attributes)?,
            link: link.map(MvId),
            pending_import: pending_import.as_deref().map(codec::import_from_code).transpose()?,
            pending_export: pending_export.as_deref().map(codec::export_from_text).transpose()?,
            error: match (error_stage.as_deref(), error_code, error_message) {
                (Some(stage), Some(code), Some(message)) => Some(codec::error_from_columns(stage, code, message)?),
                _ => None,
            },
        })
    })())
}

fn query_cs(conn: &Connection, sql_where: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<CsObject>> {
    query_cs_from(conn, "cs_objects", sql_where, args)
}

/// [`query_cs`] from `table` (`cs_objects`, perhaps with an `INDEXED BY`).
fn query_cs_from(conn: &Connection, table: &str, sql_where: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<CsObject>> {
    let sql = format!("SELECT {CS_COLUMNS} FROM {table} WHERE {sql_where}");
    let mut statement = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = statement.query_map(args, cs_from_row).map_err(backend)?;
    let mut objects = Vec::new();
    for row in rows {
        objects.push(row.map_err(backend)??);
    }
    Ok(objects)
}

fn write_cs_values(tx: &Connection, id: i64, attributes: &Attributes, indexed: Option<&BTreeSet<String>>) -> Result<()> {
    tx.prepare_cached("DELETE FROM cs_values WHERE cs_id = ?1").map_err(backend)?.execute(params![id]).map_err(backend)?;
    write_values(tx, Space::Connector, id, attributes.iter(), indexed)
}

/// The table and owner column of a space's lookup index.
fn values_table(space: Space) -> (&'static str, &'static str) {
    match space {
        Space::Connector => ("cs_values", "cs_id"),
        Space::Metaverse => ("mv_values", "mv_id"),
    }
}

fn write_values<'a>(
    tx: &Connection,
    space: Space,
    id: i64,
    attributes: impl Iterator<Item = (&'a str, &'a [AttrValue])>,
    indexed: Option<&BTreeSet<String>>,
) -> Result<()> {
    let (table, column) = values_table(space);
    let sql = format!("INSERT INTO {table} ({column}, attribute, exact, folded) VALUES (?1, ?2, ?3, ?4)");
    let mut statement = tx.prepare_cached(&sql).map_err(backend)?;
    for (name, values) in attributes {
        for value in values.iter().filter(|value| codec::indexes(space, indexed, name, value)) {
            statement
                .execute(params![id, name, index_key(value, Matching::Exact), index_key(value, Matching::IgnoreCase)])
                .map_err(backend)?;
        }
    }
    Ok(())
}

/// Points references to `old_dn` held in the connector space at `new_dn`; returns how many
/// objects changed.
/// At the end of an import page: every object of the connector space referring to an old name
/// of the page gets the renames it has not seen, written once; returns how many changed.
fn rename_references(
    tx: &Connection,
    connector: &ConnectorId,
    renames: &store::import::PageRenames,
    indexed: Option<&BTreeSet<String>>,
) -> Result<u64> {
    let mut referring = std::collections::BTreeMap::new();
    for old_dn in renames.old_dns() {
        let target = index_key(&AttrValue::Reference(old_dn.to_string()), Matching::IgnoreCase);
        let candidates = query_cs(
            tx,
            // `+connector`: drive the query from the reference index, not from every object of the
            // connector.
            "+connector = ?1 AND id IN (SELECT cs_id FROM cs_values WHERE substr(folded, 1, 2) = 'r:' AND folded = ?2)",
            &[&connector.0, &target],
        )?;
        for candidate in candidates {
            referring.entry(candidate.id.0).or_insert(candidate);
        }
    }
    let mut changed = 0;
    for candidate in referring.values() {
        if let Some(updated) = renames.catch_up(candidate) {
            update_cs(tx, &updated, indexed)?;
            changed += 1;
        }
    }
    Ok(changed)
}

fn insert_cs(tx: &Connection, object: &NewCsObject, seen_run: Option<i64>, indexed: Option<&BTreeSet<String>>) -> Result<CsId> {
    if object.anchor.as_ref().is_some_and(|anchor| anchor.0.is_empty()) {
        return Err(StoreError::Conflict(format!("object {} has an empty anchor", object.dn)));
    }
    tx.prepare_cached("INSERT INTO cs_objects (connector, anchor, dn, dn_folded, object_type, attributes, link, pending_import, pending_export, seen_run) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)").map_err(backend)?.execute(params![
            object.connector.0,
            object.anchor.as_ref().map(|anchor| anchor.0.clone()),
            object.dn,
            object.dn.to_lowercase(),
            object.object_type,
            codec::attributes_to_text(&object.attributes),
            object.link.map(|mv| mv.0),
            object.pending_import.map(codec::import_to_code),
            object.pending_export.as_ref().map(codec::export_to_text),
            seen_run,
        ],
    )
    .map_err(|err| match err {
        rusqlite::Error::SqliteFailure(code, _) if code.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Conflict(format!("another object of {} has the anchor of {}", object.connector, object.dn))
        }
        other => backend(other),
    })?;
    let id = tx.last_insert_rowid();
    write_cs_values(tx, id, &object.attributes, indexed)?;
    Ok(CsId(id))
}

fn update_cs(tx: &Connection, object: &CsObject, indexed: Option<&BTreeSet<String>>) -> Result<()> {
    let attributes = codec::attributes_to_text(&object.attributes);
    let state = codec::state_columns(object);
    let previous: Option<String> = tx
        .prepare_cached("SELECT attributes FROM cs_objects WHERE id = ?1")
        .map_err(backend)?
        .query_row(params![object.id.0], |row| row.get(0))
        .optional()
        .map_err(backend)?;
    let Some(previous) = previous else { return Err(StoreError::NotFound(object.id.to_string())) };
    let changed = tx.prepare_cached("UPDATE cs_objects SET anchor = ?2, dn = ?3, dn_folded = ?4, object_type = ?5, attributes = ?6, link = ?7, pending_import = ?8, \
             pending_export = ?9, error_stage = ?10, error_code = ?11, error_message = ?12 WHERE id = ?1").map_err(backend)?.execute(params![
                object.id.0,
                object.anchor.as_ref().map(|anchor| anchor.0.clone()),
                object.dn,
                state.dn_folded,
                object.object_type,
                attributes,
                state.link,
                state.pending_import,
                state.pending_export,
                state.error.0,
                state.error.1,
                state.error.2,
            ],
        )
        .map_err(backend)?;
    if changed == 0 {
        return Err(StoreError::NotFound(object.id.to_string()));
    }
    // The lookup index only changes with the attributes (most updates are links and flags), and
    // then only in the values that differ.
    if previous == attributes {
        return Ok(());
    }
    let previous = codec::attributes_from_text(&previous)?;
    let (removed, added) = codec::value_changes(&previous, &object.attributes);
    let listed = |name: &str, value: &AttrValue| codec::indexes(Space::Connector, indexed, name, value);
    let mut delete = tx.prepare_cached("DELETE FROM cs_values WHERE cs_id = ?1 AND attribute = ?2 AND exact = ?3").map_err(backend)?;
    for (name, value) in removed.into_iter().filter(|(name, value)| listed(name, value)) {
        delete.execute(params![object.id.0, name, index_key(value, Matching::Exact)]).map_err(backend)?;
    }
    let mut insert =
        tx.prepare_cached("INSERT INTO cs_values (cs_id, attribute, exact, folded) VALUES (?1, ?2, ?3, ?4)").map_err(backend)?;
    for (name, value) in added.into_iter().filter(|(name, value)| listed(name, value)) {
        insert
            .execute(params![object.id.0, name, index_key(value, Matching::Exact), index_key(value, Matching::IgnoreCase)])
            .map_err(backend)?;
    }
    Ok(())
}

/// An MV object by id, decoded.
fn get_mv(conn: &Connection, id: MvId) -> Result<Option<MvObject>> {
    let row: Option<(String, String)> = conn
        .prepare_cached("SELECT object_type, attributes FROM mv_objects WHERE id = ?1")
        .map_err(backend)?
        .query_row(params![id.0], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .map_err(backend)?;
    row.map(|(object_type, attributes)| Ok(MvObject { id, object_type, attributes: codec::mv_attributes_from_text(&attributes)? }))
        .transpose()
}

fn find_ids(conn: &Connection, sql: &str, fixed: &[&dyn rusqlite::ToSql], values: &[AttrValue], matching: Matching) -> Result<Vec<i64>> {
    let mut ids = BTreeSet::new();
    let mut statement = conn.prepare_cached(sql).map_err(backend)?;
    for value in values {
        let key = index_key(value, matching);
        let mut args: Vec<&dyn rusqlite::ToSql> = fixed.to_vec();
        args.push(&key);
        let rows = statement.query_map(args.as_slice(), |row| row.get::<_, i64>(0)).map_err(backend)?;
        for row in rows {
            ids.insert(row.map_err(backend)?);
        }
    }
    Ok(ids.into_iter().collect())
}

/// Where the indexed attribute set is kept (`Store::service_state`).
pub(crate) const INDEX_STATE: (&str, &str) = ("store", "indexed-attributes");

/// Brings the lookup index of `space` from `before` (`None`: every attribute) to `after`;
/// returns rows changed. A connector space keeps its reference rows whatever the list says.
fn reindex(tx: &Connection, space: Space, before: Option<&BTreeSet<String>>, after: &BTreeSet<String>) -> Result<u64> {
    let (values, owner) = values_table(space);
    let owners = match space {
        Space::Connector => "cs_objects",
        Space::Metaverse => "mv_objects",
    };
    let mut changed = 0u64;
    let present: Vec<String> = {
        let mut statement = tx.prepare(&format!("SELECT DISTINCT attribute FROM {values}")).map_err(backend)?;
        let rows = statement.query_map([], |row| row.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)?
    };
    let kept_references = if space == Space::Connector { " AND substr(folded, 1, 2) <> 'r:'" } else { "" };
    for attribute in present.iter().filter(|attribute| !after.contains(*attribute)) {
        let sql = format!("DELETE FROM {values} WHERE attribute = ?1{kept_references}");
        changed += tx.execute(&sql, params![attribute]).map_err(backend)? as u64;
    }
    // Rows of newly listed attributes come from the stored objects.
    let added: BTreeSet<String> = match before {
        Some(before) => after.difference(before).cloned().collect(),
        None => BTreeSet::new(),
    };
    if added.is_empty() {
        return Ok(changed);
    }
    let mut select = tx.prepare(&format!("SELECT id, attributes FROM {owners}")).map_err(backend)?;
    let rows = select.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))).map_err(backend)?;
    let mut insert =
        tx.prepare(&format!("INSERT INTO {values} ({owner}, attribute, exact, folded) VALUES (?1, ?2, ?3, ?4)")).map_err(backend)?;
    for row in rows {
        let (id, text) = row.map_err(backend)?;
        for (name, exact, folded) in codec::rows_for_newly_listed(space, &text, &added)? {
            insert.execute(params![id, name, exact, folded]).map_err(backend)?;
            changed += 1;
        }
    }
    Ok(changed)
}

impl store::Store for SqliteStore {
    async fn index_attributes(&self, attributes: &BTreeSet<String>) -> Result<u64> {
        let wanted = attributes.clone();
        let changed = self
            .call(move |conn, _| {
                let tx = conn.savepoint().map_err(backend)?;
                let stored: Option<Vec<u8>> = tx
                    .query_row("SELECT value FROM service_state WHERE service = ?1 AND key = ?2", params![INDEX_STATE.0, INDEX_STATE.1], |row| row.get(0))
                    .optional()
                    .map_err(backend)?;
                let before = stored.map(|bytes| store::codec::name_set_from_bytes(&bytes));
                if before.as_ref() == Some(&wanted) {
                    return Ok(0);
                }
                let changed =
                    reindex(&tx, Space::Connector, before.as_ref(), &wanted)? + reindex(&tx, Space::Metaverse, before.as_ref(), &wanted)?;
                let bytes = store::codec::name_set_to_bytes(&wanted);
                tx.execute(
                    "INSERT INTO service_state (service, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (service, key) DO UPDATE SET value = excluded.value",
                    params![INDEX_STATE.0, INDEX_STATE.1, bytes],
                )
                .map_err(backend)?;
                tx.commit().map_err(backend)?;
                Ok(changed)
            })
            .await?;
        *self.indexed.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(attributes.clone()));
        Ok(changed)
    }

    async fn begin_unit(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.in_unit.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Conflict("a unit of work is already open on this store handle".into()));
        }
        let begun = self.call(|conn, _| conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)).await;
        if begun.is_err() {
            self.in_unit.store(false, Ordering::SeqCst);
        }
        begun
    }

    async fn commit_unit(&self) -> Result<()> {
        if !self.in_unit.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Conflict("no unit of work is open on this store handle".into()));
        }
        self.call(|conn, _| conn.execute_batch("COMMIT").map_err(backend)).await
    }

    async fn rollback_unit(&self) -> Result<()> {
        if !self.in_unit.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.call(|conn, _| conn.execute_batch("ROLLBACK").map_err(backend)).await
    }

    async fn migrate(&self) -> Result<()> {
        let stored = self
            .call(|conn, _| {
                schema::migrate(conn)?;
                conn.query_row(
                    "SELECT value FROM service_state WHERE service = ?1 AND key = ?2",
                    params![INDEX_STATE.0, INDEX_STATE.1],
                    |row| row.get::<_, Vec<u8>>(0),
                )
                .optional()
                .map_err(backend)
            })
            .await?;
        // The index list the store was last given holds for this handle too.
        if let Some(bytes) = stored {
            *self.indexed.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                Some(Arc::new(store::codec::name_set_from_bytes(&bytes)));
        }
        Ok(())
    }

    async fn cs_get(&self, id: CsId) -> Result<Option<CsObject>> {
        self.call(move |conn, _| Ok(query_cs(conn, "id = ?1", &[&id.0])?.pop())).await
    }

    async fn cs_by_anchor(&self, connector: &ConnectorId, anchor: &Anchor) -> Result<Option<CsObject>> {
        let (connector, anchor) = (connector.0.clone(), anchor.0.clone());
        self.call(move |conn, _| Ok(query_cs(conn, "connector = ?1 AND anchor = ?2", &[&connector, &anchor])?.pop())).await
    }

    async fn cs_by_dn(&self, connector: &ConnectorId, dn: &str) -> Result<Option<CsObject>> {
        let (connector, dn) = (connector.0.clone(), dn.to_lowercase());
        self.call(move |conn, _| {
            Ok(query_cs(conn, "connector = ?1 AND dn_folded = ?2 ORDER BY id", &[&connector, &dn])?.into_iter().next())
        })
        .await
    }

    async fn cs_insert(&self, object: NewCsObject) -> Result<CsId> {
        self.call(move |conn, indexed| {
            let tx = conn.savepoint().map_err(backend)?;
            let id = insert_cs(&tx, &object, None, indexed)?;
            tx.commit().map_err(backend)?;
            Ok(id)
        })
        .await
    }

    async fn cs_update(&self, object: &CsObject) -> Result<()> {
        self.call(move |conn, indexed| {
            let tx = conn.savepoint().map_err(backend)?;
            update_cs(&tx, object, indexed)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn cs_update_state(&self, object: &CsObject) -> Result<()> {
        let state = codec::state_columns(object);
        self.call(move |conn, _| {
            let changed = conn
                .prepare_cached(
                    "UPDATE cs_objects SET dn = ?2, dn_folded = ?3, link = ?4, pending_import = ?5, pending_export = ?6, \
                     error_stage = ?7, error_code = ?8, error_message = ?9 WHERE id = ?1",
                )
                .map_err(backend)?
                .execute(params![
                    object.id.0,
                    object.dn,
                    state.dn_folded,
                    state.link,
                    state.pending_import,
                    state.pending_export,
                    state.error.0,
                    state.error.1,
                    state.error.2
                ])
                .map_err(backend)?;
            if changed == 0 { Err(StoreError::NotFound(object.id.to_string())) } else { Ok(()) }
        })
        .await
    }

    async fn cs_delete(&self, id: CsId) -> Result<()> {
        self.call(move |conn, _| {
            match conn.prepare_cached("DELETE FROM cs_objects WHERE id = ?1").map_err(backend)?.execute(params![id.0]).map_err(backend)? {
                0 => Err(StoreError::NotFound(id.to_string())),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn cs_list(&self, connector: &ConnectorId, query: &CsQuery) -> Result<Vec<CsObject>> {
        let (connector, query) = (connector.0.clone(), query.clone());
        self.call(move |conn, _| {
            let mut sql_where = String::from("connector = ?1 AND id > ?2");
            if query.pending_import {
                sql_where.push_str(" AND pending_import IS NOT NULL");
            }
            if query.pending_export {
                sql_where.push_str(" AND pending_export IS NOT NULL");
            }
            if query.with_error {
                sql_where.push_str(" AND error_code IS NOT NULL");
            }
            sql_where.push_str(" ORDER BY id");
            if query.limit > 0 {
                sql_where.push_str(&format!(" LIMIT {}", query.limit));
            }
            let after = query.after.map_or(0, |id| id.0);
            // A pending list reads its partial index, whose size is the work pending (the
            // planner would otherwise walk every object of the connector in id order).
            let table = if query.pending_import {
                "cs_objects INDEXED BY cs_objects_pending_import"
            } else if query.pending_export {
                "cs_objects INDEXED BY cs_objects_pending_export"
            } else {
                "cs_objects"
            };
            query_cs_from(conn, table, &sql_where, &[&connector, &after])
        })
        .await
    }

    async fn cs_links_by_dn(&self, connector: &ConnectorId, dns: &[String]) -> Result<Vec<(String, MvId)>> {
        let (connector, dns) = (connector.0.clone(), dns.to_vec());
        self.call(move |conn, _| {
            let mut statement = conn
                .prepare_cached("SELECT link FROM cs_objects WHERE connector = ?1 AND dn_folded = ?2 AND link IS NOT NULL")
                .map_err(backend)?;
            let mut found = Vec::new();
            for dn in dns {
                let folded = dn.to_lowercase();
                if let Some(link) =
                    statement.query_row(params![connector, folded], |row| row.get::<_, i64>(0)).optional().map_err(backend)?
                {
                    found.push((folded, MvId(link)));
                }
            }
            Ok(found)
        })
        .await
    }

    async fn cs_dns_by_link(&self, connector: &ConnectorId, mvs: &[MvId]) -> Result<Vec<(MvId, String)>> {
        let (connector, mvs) = (connector.0.clone(), mvs.to_vec());
        self.call(move |conn, _| {
            let mut statement =
                conn.prepare_cached("SELECT dn FROM cs_objects WHERE link = ?1 AND connector = ?2 ORDER BY id").map_err(backend)?;
            let mut found = Vec::new();
            for mv in mvs {
                if let Some(dn) =
                    statement.query_row(params![mv.0, connector], |row| row.get::<_, String>(0)).optional().map_err(backend)?
                {
                    found.push((mv, dn));
                }
            }
            Ok(found)
        })
        .await
    }

    async fn cs_linked_to(&self, mv: MvId) -> Result<Vec<CsObject>> {
        self.call(move |conn, _| query_cs(conn, "link = ?1 ORDER BY id", &[&mv.0])).await
    }

    async fn cs_linked_to_many(&self, mvs: &[MvId]) -> Result<Vec<CsObject>> {
        self.call(move |conn, _| {
            let mut linked = Vec::new();
            for mv in store::ids_in_order(mvs) {
                linked.extend(query_cs(conn, "link = ?1 ORDER BY id", &[&mv.0])?);
            }
            Ok(linked)
        })
        .await
    }

    async fn cs_find(
        &self,
        connector: &ConnectorId,
        object_type: &str,
        attribute: &str,
        values: &[AttrValue],
        matching: Matching,
    ) -> Result<Vec<CsId>> {
        let (connector, object_type, attribute, values) =
            (connector.0.clone(), object_type.to_string(), attribute.to_string(), values.to_vec());
        self.call(move |conn, indexed| {
            codec::check_indexed(indexed, &attribute)?;
            let column = if matching == Matching::Exact { "exact" } else { "folded" };
            // The attribute lookups hold no references (schema step 5): those go through the
            // reference index, by folded key, then compared as asked.
            let (references, others): (Vec<AttrValue>, Vec<AttrValue>) =
                values.into_iter().partition(|value| matches!(value, AttrValue::Reference(_)));
            let from = "SELECT DISTINCT o.id FROM cs_values v JOIN cs_objects o ON o.id = v.cs_id \
                 WHERE o.connector = ?1 AND o.object_type = ?2 AND o.link IS NULL AND v.attribute = ?3";
            let fixed: [&dyn rusqlite::ToSql; 3] = [&connector, &object_type, &attribute];
            let mut ids =
                find_ids(conn, &format!("{from} AND substr(v.folded, 1, 2) <> 'r:' AND v.{column} = ?4"), &fixed, &others, matching)?;
            let mut statement = conn
                .prepare_cached(&format!("{from} AND substr(v.folded, 1, 2) = 'r:' AND v.folded = ?4 AND v.{column} = ?5"))
                .map_err(backend)?;
            for value in &references {
                let (folded, key) = (index_key(value, Matching::IgnoreCase), index_key(value, matching));
                let rows = statement
                    .query_map(params![connector, object_type, attribute, folded, key], |row| row.get::<_, i64>(0))
                    .map_err(backend)?;
                for row in rows {
                    ids.push(row.map_err(backend)?);
                }
            }
            ids.sort_unstable();
            ids.dedup();
            Ok(ids.into_iter().map(CsId).collect())
        })
        .await
    }

    async fn cs_pending_exports(&self, connector: &ConnectorId) -> Result<Vec<store::PendingSummary>> {
        self.call(move |conn, _| {
            let mut statement = conn
                .prepare_cached(
                    "SELECT id, anchor IS NOT NULL, pending_export FROM cs_objects INDEXED BY cs_objects_pending_export \
                     WHERE connector = ?1 AND pending_export IS NOT NULL ORDER BY id",
                )
                .map_err(backend)?;
            let rows = statement
                .query_map(params![connector.0], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, bool>(1)?, row.get::<_, String>(2)?)))
                .map_err(backend)?;
            let mut summaries = Vec::new();
            for row in rows {
                let (id, anchored, text) = row.map_err(backend)?;
                summaries.push(store::PendingSummary { id: CsId(id), kind: codec::export_kind(&text)?, anchored });
            }
            Ok(summaries)
        })
        .await
    }

    async fn cs_clear_pending_import(&self, ids: &[CsId]) -> Result<()> {
        let ids = ids.to_vec();
        self.call(move |conn, _| {
            let tx = conn.savepoint().map_err(backend)?;
            {
                let mut statement = tx.prepare_cached("UPDATE cs_objects SET pending_import = NULL WHERE id = ?1").map_err(backend)?;
                for id in &ids {
                    statement.execute(params![id.0]).map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn cs_set_error(&self, id: CsId, error: Option<&ObjectError>) -> Result<()> {
        let error = error.cloned();
        self.call(move |conn, _| {
            let changed = conn
                .prepare_cached("UPDATE cs_objects SET error_stage = ?2, error_code = ?3, error_message = ?4 WHERE id = ?1")
                .map_err(backend)?
                .execute(params![
                    id.0,
                    error.as_ref().map(codec::error_stage_text),
                    error.as_ref().map(|e| e.code.clone()),
                    error.as_ref().map(|e| e.message.clone())
                ])
                .map_err(backend)?;
            if changed == 0 { Err(StoreError::NotFound(id.to_string())) } else { Ok(()) }
        })
        .await
    }

    async fn commit_import_page(
        &self,
        connector: &ConnectorId,
        run: i64,
        changes: &[ImportChange],
        watermark: Option<&[u8]>,
    ) -> Result<ImportCounts> {
        self.call(move |conn, indexed| {
            let tx = conn.savepoint().map_err(backend)?;
            let counts = run_now(store::import::apply_page(&mut SqliteImport { tx: &tx, indexed }, connector, run, changes, watermark))?;
            tx.commit().map_err(backend)?;
            Ok(counts)
        })
        .await
    }

    async fn obsolete_unseen(&self, connector: &ConnectorId, import_run: i64) -> Result<u64> {
        let connector = connector.0.clone();
        self.call(move |conn, _| {
            let changed = conn
                .prepare_cached(
                    "UPDATE cs_objects SET pending_import = 'delete' WHERE connector = ?1 AND anchor IS NOT NULL \
                     AND (seen_run IS NULL OR seen_run < ?2) AND (pending_import IS NULL OR pending_import <> 'delete')",
                )
                .map_err(backend)?
                .execute(params![connector, import_run])
                .map_err(backend)?;
            Ok(changed as u64)
        })
        .await
    }

    async fn service_state(&self, service: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (service, key) = (service.to_string(), key.to_string());
        self.call(move |conn, _| {
            conn.prepare_cached("SELECT value FROM service_state WHERE service = ?1 AND key = ?2")
                .map_err(backend)?
                .query_row(params![service, key], |row| row.get(0))
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn set_service_state(&self, service: &str, key: &str, value: &[u8]) -> Result<()> {
        let (service, key, value) = (service.to_string(), key.to_string(), value.to_vec());
        self.call(move |conn, _| {
            conn.prepare_cached("INSERT INTO service_state (service, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (service, key) DO UPDATE SET value = excluded.value").map_err(backend)?.execute(params![service, key, value],
            )
            .map(|_| ())
            .map_err(backend)
        })
        .await
    }

    async fn watermark(&self, connector: &ConnectorId) -> Result<Option<Vec<u8>>> {
        let connector = connector.0.clone();
        self.call(move |conn, _| {
            conn.prepare_cached("SELECT value FROM watermarks WHERE connector = ?1")
                .map_err(backend)?
                .query_row(params![connector], |row| row.get(0))
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn clear_watermark(&self, connector: &ConnectorId) -> Result<()> {
        let connector = connector.0.clone();
        self.call(move |conn, _| {
            conn.prepare_cached("DELETE FROM watermarks WHERE connector = ?1")
                .map_err(backend)?
                .execute(params![connector])
                .map(|_| ())
                .map_err(backend)
        })
        .await
    }

    async fn mv_get(&self, id: MvId) -> Result<Option<MvObject>> {
        self.call(move |conn, _| get_mv(conn, id)).await
    }

    async fn mv_get_many(&self, ids: &[MvId]) -> Result<Vec<MvObject>> {
        self.call(move |conn, _| {
            let mut found = Vec::new();
            for id in store::ids_in_order(ids) {
                found.extend(get_mv(conn, id)?);
            }
            Ok(found)
        })
        .await
    }

    async fn mv_insert(&self, object_type: &str) -> Result<MvId> {
        let object_type = object_type.to_string();
        self.call(move |conn, _| {
            conn.prepare_cached("INSERT INTO mv_objects (object_type, attributes) VALUES (?1, '{}')")
                .map_err(backend)?
                .execute(params![object_type])
                .map_err(backend)?;
            Ok(MvId(conn.last_insert_rowid()))
        })
        .await
    }

    async fn mv_update(&self, object: &MvObject) -> Result<()> {
        let attributes = codec::mv_attributes_to_text(&object.attributes);
        self.call(move |conn, indexed| {
            let tx = conn.savepoint().map_err(backend)?;
            let changed = tx
                .prepare_cached("UPDATE mv_objects SET object_type = ?2, attributes = ?3 WHERE id = ?1")
                .map_err(backend)?
                .execute(params![object.id.0, object.object_type, attributes])
                .map_err(backend)?;
            if changed == 0 {
                return Err(StoreError::NotFound(object.id.to_string()));
            }
            // The lookup index holds few rows per MV object (the listed attributes): compared
            // with the rows it should hold, only those that differ change, and the previous
            // attributes are never read back.
            let mut wanted = codec::mv_index_rows(&object.attributes, indexed);
            let present: BTreeSet<(String, String)> = {
                let mut select = tx.prepare_cached("SELECT attribute, exact FROM mv_values WHERE mv_id = ?1").map_err(backend)?;
                let rows = select.query_map(params![object.id.0], |row| Ok((row.get(0)?, row.get(1)?))).map_err(backend)?;
                rows.collect::<rusqlite::Result<_>>().map_err(backend)?
            };
            {
                let mut delete =
                    tx.prepare_cached("DELETE FROM mv_values WHERE mv_id = ?1 AND attribute = ?2 AND exact = ?3").map_err(backend)?;
                for (name, exact) in &present {
                    if wanted.remove(&(name.as_str(), exact.clone())).is_none() {
                        delete.execute(params![object.id.0, name, exact]).map_err(backend)?;
                    }
                }
                let mut insert = tx
                    .prepare_cached("INSERT INTO mv_values (mv_id, attribute, exact, folded) VALUES (?1, ?2, ?3, ?4)")
                    .map_err(backend)?;
                for ((name, exact), folded) in &wanted {
                    insert.execute(params![object.id.0, name, exact, folded]).map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn mv_delete(&self, id: MvId) -> Result<()> {
        self.call(move |conn, _| {
            match conn.prepare_cached("DELETE FROM mv_objects WHERE id = ?1").map_err(backend)?.execute(params![id.0]).map_err(backend)? {
                0 => Err(StoreError::NotFound(id.to_string())),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn mv_find(&self, object_type: &str, attribute: &str, values: &[AttrValue], matching: Matching) -> Result<Vec<MvId>> {
        let (object_type, attribute, values) = (object_type.to_string(), attribute.to_string(), values.to_vec());
        self.call(move |conn, indexed| {
            codec::check_indexed(indexed, &attribute)?;
            let column = if matching == Matching::Exact { "exact" } else { "folded" };
            let sql = format!(
                "SELECT DISTINCT m.id FROM mv_values v JOIN mv_objects m ON m.id = v.mv_id WHERE m.object_type = ?1 AND v.attribute = ?2 AND v.{column} = ?3"
            );
            Ok(find_ids(conn, &sql, &[&object_type, &attribute], &values, matching)?.into_iter().map(MvId).collect())
        })
        .await
    }

    async fn mv_list(&self, after: Option<MvId>, limit: usize) -> Result<Vec<MvId>> {
        self.call(move |conn, _| {
            let limit = if limit == 0 { i64::MAX } else { limit as i64 };
            let mut statement = conn.prepare_cached("SELECT id FROM mv_objects WHERE id > ?1 ORDER BY id LIMIT ?2").map_err(backend)?;
            let rows = statement.query_map(params![after.map_or(0, |id| id.0), limit], |row| row.get(0)).map_err(backend)?;
            rows.map(|row| row.map(MvId).map_err(backend)).collect()
        })
        .await
    }

    async fn claim_runner(&self, now: i64) -> Result<u64> {
        if let Some(path) = &self.path {
            let mut held = self.runner_lock.lock().map_err(|_| StoreError::Backend("runner lock poisoned".into()))?;
            if held.is_none() {
                let lock_path = runner_lock_path(path);
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(|err| StoreError::Backend(format!("{}: {err}", lock_path.display()).into()))?;
                match file.try_lock() {
                    Ok(()) => {
                        // Who holds it, for the error a second runner gets.
                        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                        let holder = format!("process {} on {}", std::process::id(), host.trim());
                        let _ = file.set_len(0).and_then(|()| std::io::Write::write_all(&mut &file, holder.as_bytes()));
                        *held = Some(file);
                    }
                    Err(std::fs::TryLockError::WouldBlock) => {
                        let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
                        let holder = if holder.trim().is_empty() { "another process".to_string() } else { holder.trim().to_string() };
                        return Err(StoreError::Busy(format!(
                            "{} is locked by {holder} (a `sync serve` or `sync run` of the same configuration); one store has one writer",
                            lock_path.display()
                        )));
                    }
                    Err(std::fs::TryLockError::Error(err)) => {
                        return Err(StoreError::Backend(format!("lock {}: {err}", lock_path.display()).into()));
                    }
                }
            }
        }
        self.call(move |conn, _| {
            let changed = conn
                .prepare_cached("UPDATE runs SET status = 'interrupted', finished = ?1 WHERE status = 'running' AND finished IS NULL")
                .map_err(backend)?
                .execute(params![now])
                .map_err(backend)?;
            Ok(changed as u64)
        })
        .await
    }

    async fn run_start(&self, connector: &ConnectorId, step: &str, started: i64) -> Result<i64> {
        let (connector, step) = (connector.0.clone(), step.to_string());
        self.call(move |conn, _| {
            conn.prepare_cached("INSERT INTO runs (connector, step, started, status, adds, updates, deletes, errors) VALUES (?1, ?2, ?3, 'running', 0, 0, 0, 0)").map_err(backend)?.execute(params![connector, step, started],
            )
            .map_err(backend)?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn run_finish(&self, id: i64, finished: i64, status: &str, counts: RunCounts) -> Result<()> {
        let status = status.to_string();
        self.call(move |conn, _| {
            let changed = conn
                .prepare_cached(
                    "UPDATE runs SET finished = ?2, status = ?3, adds = ?4, updates = ?5, deletes = ?6, errors = ?7 WHERE id = ?1",
                )
                .map_err(backend)?
                .execute(params![
                    id,
                    finished,
                    status,
                    counts.adds as i64,
                    counts.updates as i64,
                    counts.deletes as i64,
                    counts.errors as i64
                ])
                .map_err(backend)?;
            if changed == 0 { Err(StoreError::NotFound(format!("run {id}"))) } else { Ok(()) }
        })
        .await
    }

    async fn runs_prune(&self, before: i64) -> Result<u64> {
        self.call(move |conn, _| {
            let removed = conn
                .prepare_cached("DELETE FROM runs WHERE started < ?1 AND finished IS NOT NULL")
                .map_err(backend)?
                .execute(params![before])
                .map_err(backend)?;
            Ok(removed as u64)
        })
        .await
    }

    async fn runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        self.call(move |conn, _| {
            let mut statement = conn
                .prepare_cached("SELECT id, connector, step, started, finished, status, adds, updates, deletes, errors FROM runs ORDER BY id DESC LIMIT ?1")
                .map_err(backend)?;
            let rows = statement
                .query_map(params![limit as i64], |row| {
                    Ok(RunRecord {
                        id: row.get(0)?,
                        connector: ConnectorId(row.get(1)?),
                        step: row.get(2)?,
                        started: row.get(3)?,
                        finished: row.get(4)?,
                        status: row.get(5)?,
                        counts: RunCounts {
                            adds: row.get::<_, i64>(6)? as u64,
                            updates: row.get::<_, i64>(7)? as u64,
                            deletes: row.get::<_, i64>(8)? as u64,
                            errors: row.get::<_, i64>(9)? as u64,
                        },
                    })
                })
                .map_err(backend)?;
            rows.map(|row| row.map_err(backend)).collect()
        })
        .await
    }
}
