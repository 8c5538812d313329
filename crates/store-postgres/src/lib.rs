//! The scale-out store: PostgreSQL through `tokio-postgres`, for deployments that outgrow one
//! machine's SQLite file. Same schema shape and semantics as `store-sqlite`, proven by the same
//! conformance suite.
//!
//! Secure default: connections are plain TCP for now, so only a Unix socket or a loopback
//! address is accepted unless the URL says `sslmode=disable` explicitly (the operator then
//! takes responsibility for the network path). TLS to PostgreSQL is a follow-up.
//!
//! Knows nothing of the engine or connectors.

mod schema;

/// The newest schema version this program knows (one per migration step).
pub const SCHEMA_VERSION: i64 = schema::VERSION;

use std::collections::BTreeSet;
use std::sync::Arc;

use model::{Anchor, AttrValue, ConnectorId, CsId, CsObject, MvId, MvObject, ObjectError};
use store::codec::{self, Space, index_key};
use store::{CsQuery, ImportChange, ImportCounts, Matching, NewCsObject, Result, RunCounts, RunRecord, StoreError};
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, NoTls, Row};

/// The advisory lock key of the one sync runner of a database ("isthmus-runner").
const RUNNER_LOCK_KEY: i64 = 0x6973_7468_6d75_7372;

/// A PostgreSQL-backed store.
#[derive(Clone)]
pub struct PostgresStore {
    client: Arc<Mutex<Client>>,
    statements: Arc<Statements>,
    /// A unit of work is open on the connection (`BEGIN` sent): each call is a savepoint in it.
    in_unit: Arc<std::sync::atomic::AtomicBool>,
    /// The last call's savepoint is still open (released by the next call or the commit).
    savepoint_open: Arc<std::sync::atomic::AtomicBool>,
}

/// Runs `$body` (an expression using `$tx: &impl GenericClient`, evaluating to a `Result`)
/// atomically: in its own transaction, or inside an open unit of work as a savepoint that is
/// rolled back when the body fails.
macro_rules! atomically {
    ($store:expr, $client:ident, |$tx:ident| $body:expr) => {{
        if $store.in_unit.load(std::sync::atomic::Ordering::SeqCst) {
            // The savepoint is sent pipelined with the body's first statement, and the previous
            // call's is released in the same batch: no round trip of its own.
            let open = $store.savepoint_open.swap(true, std::sync::atomic::Ordering::SeqCst);
            let start = if open { "RELEASE SAVEPOINT isthmus_call; SAVEPOINT isthmus_call" } else { "SAVEPOINT isthmus_call" };
            let (begun, result) = {
                let $tx = &*$client;
                tokio::join!($tx.batch_execute(start), async { $body })
            };
            begun.map_err(backend)?;
            if result.is_err() {
                $store.savepoint_open.store(false, std::sync::atomic::Ordering::SeqCst);
                $client.batch_execute("ROLLBACK TO SAVEPOINT isthmus_call; RELEASE SAVEPOINT isthmus_call").await.map_err(backend)?;
            }
            result
        } else {
            let transaction = $client.transaction().await.map_err(backend)?;
            let result = {
                let $tx = &transaction;
                async { $body }.await
            };
            if result.is_ok() {
                transaction.commit().await.map_err(backend)?;
            }
            result
        }
    }};
}

/// Prepared statements by SQL text: each is parsed and planned once per connection, not per call
/// (half the round trips of an unprepared query); and the attributes the lookup index holds.
#[derive(Default)]
struct Statements(
    std::sync::Mutex<std::collections::HashMap<String, tokio_postgres::Statement>>,
    /// `None`: every attribute (see `Store::index_attributes`).
    std::sync::RwLock<Option<Arc<std::collections::BTreeSet<String>>>>,
);

impl Statements {
    /// Whether the lookup index of `space` holds this value ([`codec::indexes`]).
    fn indexes(&self, space: Space, name: &str, value: &AttrValue) -> bool {
        let listed = self.1.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        codec::indexes(space, listed.as_deref(), name, value)
    }

    /// Refuses a lookup on an attribute the index does not hold ([`codec::check_indexed`]).
    fn check_indexed(&self, attribute: &str) -> Result<()> {
        codec::check_indexed(self.1.read().unwrap_or_else(|poisoned| poisoned.into_inner()).as_deref(), attribute)
    }

    /// The lookup-index rows an MV object should have ([`codec::mv_index_rows`]).
    fn mv_index_rows<'a>(
        &self,
        attributes: &'a std::collections::BTreeMap<String, model::MvAttribute>,
    ) -> std::collections::BTreeMap<(&'a str, String), String> {
        codec::mv_index_rows(attributes, self.1.read().unwrap_or_else(|poisoned| poisoned.into_inner()).as_deref())
    }

    async fn get(&self, client: &impl GenericClient, sql: &str) -> Result<tokio_postgres::Statement> {
        if let Some(statement) = self.0.lock().map_err(|_| StoreError::Backend("statement cache poisoned".into()))?.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql).await.map_err(backend)?;
        self.0.lock().map_err(|_| StoreError::Backend("statement cache poisoned".into()))?.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

/// Where the indexed attribute set is kept (`Store::service_state`).
pub(crate) const INDEX_STATE: (&str, &str) = ("store", "indexed-attributes");

/// An MV object from a row of (id, object_type, attributes).
fn mv_from_row(row: &Row) -> Result<MvObject> {
    let attributes: &str = row.get(2);
    Ok(MvObject { id: MvId(row.get(0)), object_type: row.get(1), attributes: codec::mv_attributes_from_text(attributes)? })
}

fn backend(err: tokio_postgres::Error) -> StoreError {
    if let Some(db) = err.as_db_error()
        && *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
    {
        return StoreError::Conflict(db.message().to_string());
    }
    StoreError::Backend(Box::new(err))
}

impl PostgresStore {
    /// Connects to `url` (e.g. `postgresql://isthmus@127.0.0.1:5432/isthmus`). Call [`store::Store::migrate`] next.
    pub async fn connect(url: &str) -> Result<Self> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|err| StoreError::Backend(Box::new(err)))?;
        check_transport(url, &config)?;
        if config.get_application_name().is_none() {
            // Names this process in pg_stat_activity (and in a second runner's refusal).
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            config.application_name(format!("isthmus pid {} on {}", std::process::id(), host.trim()));
        }
        let (client, connection) = config.connect(NoTls).await.map_err(backend)?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                eprintln!("PostgreSQL connection ended: {err}");
            }
        });
        Ok(PostgresStore {
            client: Arc::new(Mutex::new(client)),
            statements: Arc::new(Statements::default()),
            in_unit: Arc::default(),
            savepoint_open: Arc::default(),
        })
    }
}

fn check_transport(url: &str, config: &tokio_postgres::Config) -> Result<()> {
    let explicit_plain = url.contains("sslmode=disable");
    for host in config.get_hosts() {
        let local = match host {
            tokio_postgres::config::Host::Unix(_) => true,
            tokio_postgres::config::Host::Tcp(name) => {
                name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
        };
        if !local && !explicit_plain {
            return Err(StoreError::Backend(
                format!("refusing a plain-text connection to PostgreSQL host {host:?}: TLS is not supported yet; use a loopback address or a Unix socket, or add sslmode=disable to accept the risk").into(),
            ));
        }
    }
    Ok(())
}

const CS_COLUMNS: &str =
    "id, connector, anchor, dn, object_type, attributes, link, pending_import, pending_export, error_stage, error_code, error_message";

fn cs_from_row(row: &Row) -> Result<CsObject> {
    let get_err = |err: tokio_postgres::Error| StoreError::Corrupt(err.to_string());
    let attributes: String = row.try_get(5).map_err(get_err)?;
    let pending_import: Option<String> = row.try_get(7).map_err(get_err)?;
    let pending_export: Option<String> = row.try_get(8).map_err(get_err)?;
    let error_stage: Option<String> = row.try_get(9).map_err(get_err)?;
    let error_code: Option<String> = row.try_get(10).map_err(get_err)?;
    let error_message: Option<String> = row.try_get(11).map_err(get_err)?;
    Ok(CsObject {
        id: CsId(row.try_get(0).map_err(get_err)?),
        connector: ConnectorId(row.try_get(1).map_err(get_err)?),
        anchor: row.try_get::<_, Option<Vec<u8>>>(2).map_err(get_err)?.map(Anchor),
        dn: row.try_get(3).map_err(get_err)?,
        object_type: row.try_get(4).map_err(get_err)?,
        attributes: codec::attributes_from_text(&attributes)?,
        link: row.try_get::<_, Option<i64>>(6).map_err(get_err)?.map(MvId),
        pending_import: pending_import.as_deref().map(codec::import_from_code).transpose()?,
        pending_export: pending_export.as_deref().map(codec::export_from_text).transpose()?,
        error: match (error_stage.as_deref(), error_code, error_message) {
            (Some(stage), Some(code), Some(message)) => Some(codec::error_from_columns(stage, code, message)?),
            _ => None,
        },
    })
}

/// At the end of an import page: every object of the connector space referring to an old name
/// of the page gets the renames it has not seen, written once; returns how many changed.
/// The import loop's transaction operations on PostgreSQL (`store::import::apply_page`).
struct PostgresImport<'a, C: GenericClient> {
    client: &'a C,
    st: &'a Statements,
}

impl<C: GenericClient + Sync> store::import::ImportTx for PostgresImport<'_, C> {
    async fn by_anchor(&mut self, connector: &ConnectorId, anchor: &Anchor) -> Result<Option<CsObject>> {
        Ok(query_cs(self.client, self.st, "connector = $1 AND anchor = $2", &[&connector.0, &anchor.0]).await?.pop())
    }

    async fn has_export_objects(&mut self, connector: &ConnectorId) -> Result<bool> {
        let sql = "SELECT EXISTS (SELECT 1 FROM cs_objects WHERE connector = $1 AND anchor IS NULL)";
        Ok(self.client.query_one(&self.st.get(self.client, sql).await?, &[&connector.0]).await.map_err(backend)?.get(0))
    }

    async fn export_object_by_dn(&mut self, connector: &ConnectorId, dn: &str) -> Result<Option<CsObject>> {
        let sql = "connector = $1 AND dn_folded = $2 AND anchor IS NULL";
        Ok(query_cs(self.client, self.st, sql, &[&connector.0, &dn.to_lowercase()]).await?.pop())
    }

    async fn insert(&mut self, object: &NewCsObject, run: i64) -> Result<CsId> {
        insert_cs(self.client, self.st, object, Some(run)).await
    }

    async fn update(&mut self, object: &CsObject) -> Result<()> {
        update_cs(self.client, self.st, object).await
    }

    async fn mark_seen(&mut self, id: CsId, run: i64) -> Result<()> {
        let statement = self.st.get(self.client, "UPDATE cs_objects SET seen_run = $2 WHERE id = $1").await?;
        self.client.execute(&statement, &[&id.0, &run]).await.map_err(backend)?;
        Ok(())
    }

    async fn rename_references(&mut self, connector: &ConnectorId, renames: &store::import::PageRenames) -> Result<u64> {
        rename_references(self.client, self.st, connector, renames).await
    }

    async fn set_watermark(&mut self, connector: &ConnectorId, watermark: &[u8]) -> Result<()> {
        let sql = "INSERT INTO watermarks (connector, value) VALUES ($1, $2) ON CONFLICT (connector) DO UPDATE SET value = excluded.value";
        self.client.execute(sql, &[&connector.0, &watermark]).await.map_err(backend)?;
        Ok(())
    }
}

async fn rename_references(
    client: &impl GenericClient,
    st: &Statements,
    connector: &ConnectorId,
    renames: &store::import::PageRenames,
) -> Result<u64> {
    let mut referring = std::collections::BTreeMap::new();
    for old_dn in renames.old_dns() {
        let target = index_key(&AttrValue::Reference(old_dn.to_string()), Matching::IgnoreCase);
        let candidates = query_cs(
            client,
            st,
            "connector = $1 AND id IN (SELECT cs_id FROM cs_values WHERE left(folded, 2) = 'r:' AND folded = $2)",
            &[&connector.0, &target],
        )
        .await?;
        for candidate in candidates {
            referring.entry(candidate.id.0).or_insert(candidate);
        }
    }
    let mut changed = 0;
    for candidate in referring.values() {
        if let Some(updated) = renames.catch_up(candidate) {
            update_cs(client, st, &updated).await?;
            changed += 1;
        }
    }
    Ok(changed)
}

async fn query_cs(client: &impl GenericClient, st: &Statements, sql_where: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<CsObject>> {
    let sql = format!("SELECT {CS_COLUMNS} FROM cs_objects WHERE {sql_where}");
    let rows = client.query(&st.get(client, &sql).await?, args).await.map_err(backend)?;
    rows.iter().map(cs_from_row).collect()
}

async fn write_values<'a>(
    client: &impl GenericClient,
    st: &Statements,
    table: &str,
    column: &str,
    id: i64,
    attributes: impl Iterator<Item = (&'a str, &'a [AttrValue])>,
) -> Result<()> {
    client.execute(&st.get(client, &format!("DELETE FROM {table} WHERE {column} = $1")).await?, &[&id]).await.map_err(backend)?;
    let (mut names, mut exact, mut folded) = (Vec::new(), Vec::new(), Vec::new());
    for (name, values) in attributes {
        for value in values.iter().filter(|value| st.indexes(Space::Connector, name, value)) {
            names.push(name.to_string());
            exact.push(index_key(value, Matching::Exact));
            folded.push(index_key(value, Matching::IgnoreCase));
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let sql =
        format!("INSERT INTO {table} ({column}, attribute, exact, folded) SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[])");
    client.execute(&st.get(client, &sql).await?, &[&id, &names, &exact, &folded]).await.map_err(backend)?;
    Ok(())
}

async fn insert_cs(client: &impl GenericClient, st: &Statements, object: &NewCsObject, seen_run: Option<i64>) -> Result<CsId> {
    if object.anchor.as_ref().is_some_and(|anchor| anchor.0.is_empty()) {
        return Err(StoreError::Conflict(format!("object {} has an empty anchor", object.dn)));
    }
    let row = client
        .query_one(
            &st.get(client, "INSERT INTO cs_objects (connector, anchor, dn, dn_folded, object_type, attributes, link, pending_import, pending_export, seen_run) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id").await?,
            &[
                &object.connector.0,
                &object.anchor.as_ref().map(|anchor| anchor.0.clone()),
                &object.dn,
                &object.dn.to_lowercase(),
                &object.object_type,
                &codec::attributes_to_text(&object.attributes),
                &object.link.map(|mv| mv.0),
                &object.pending_import.map(codec::import_to_code),
                &object.pending_export.as_ref().map(codec::export_to_text),
                &seen_run,
            ],
        )
        .await
        .map_err(backend)?;
    let id: i64 = row.get(0);
    write_values(client, st, "cs_values", "cs_id", id, object.attributes.iter()).await?;
    Ok(CsId(id))
}

/// The state columns' parameters, in their order (dn_folded, link, pending import and export,
/// error stage, code, message).
fn state_args(state: &codec::StateColumns) -> [&(dyn ToSql + Sync); 7] {
    [&state.dn_folded, &state.link, &state.pending_import, &state.pending_export, &state.error.0, &state.error.1, &state.error.2]
}

async fn update_cs(client: &impl GenericClient, st: &Statements, object: &CsObject) -> Result<()> {
    let attributes = codec::attributes_to_text(&object.attributes);
    let state = codec::state_columns(object);
    // One round trip: the row is updated and its attributes before the update come back (the
    // sub-select reads the row as it was).
    let sql = "UPDATE cs_objects o SET anchor = $2, dn = $3, object_type = $4, attributes = $5, dn_folded = $6, link = $7, \
               pending_import = $8, pending_export = $9, error_stage = $10, error_code = $11, error_message = $12 \
               FROM (SELECT id, attributes FROM cs_objects WHERE id = $1 FOR UPDATE) AS before \
               WHERE o.id = before.id RETURNING before.attributes";
    let anchor = object.anchor.as_ref().map(|anchor| anchor.0.clone());
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![&object.id.0, &anchor, &object.dn, &object.object_type, &attributes];
    args.extend(state_args(&state));
    let previous = client.query_opt(&st.get(client, sql).await?, &args).await.map_err(|err| match err.code() {
        Some(code) if *code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
            StoreError::Conflict(format!("another object of {} has the anchor of {}", object.connector, object.dn))
        }
        _ => backend(err),
    })?;
    let Some(previous) = previous.map(|row| row.get::<_, String>(0)) else { return Err(StoreError::NotFound(object.id.to_string())) };
    // The lookup index only changes with the attributes (most updates are links and flags), and
    // then only in the values that differ.
    if previous == attributes {
        return Ok(());
    }
    let previous = codec::attributes_from_text(&previous)?;
    let (removed, added) = codec::value_changes(&previous, &object.attributes);
    let removed: Vec<_> = removed.into_iter().filter(|(name, value)| st.indexes(Space::Connector, name, value)).collect();
    let added: Vec<_> = added.into_iter().filter(|(name, value)| st.indexes(Space::Connector, name, value)).collect();
    if !removed.is_empty() {
        let names: Vec<&str> = removed.iter().map(|(name, _)| *name).collect();
        let exact: Vec<String> = removed.iter().map(|(_, value)| index_key(value, Matching::Exact)).collect();
        let sql = "DELETE FROM cs_values v USING UNNEST($2::text[], $3::text[]) AS gone(attribute, exact) \
                   WHERE v.cs_id = $1 AND v.attribute = gone.attribute AND v.exact = gone.exact";
        client.execute(&st.get(client, sql).await?, &[&object.id.0, &names, &exact]).await.map_err(backend)?;
    }
    if !added.is_empty() {
        let names: Vec<&str> = added.iter().map(|(name, _)| *name).collect();
        let exact: Vec<String> = added.iter().map(|(_, value)| index_key(value, Matching::Exact)).collect();
        let folded: Vec<String> = added.iter().map(|(_, value)| index_key(value, Matching::IgnoreCase)).collect();
        let sql = "INSERT INTO cs_values (cs_id, attribute, exact, folded) SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[])";
        client.execute(&st.get(client, sql).await?, &[&object.id.0, &names, &exact, &folded]).await.map_err(backend)?;
    }
    Ok(())
}

async fn find_ids(
    client: &impl GenericClient,
    st: &Statements,
    sql: &str,
    fixed: &[&(dyn ToSql + Sync)],
    values: &[AttrValue],
    matching: Matching,
) -> Result<Vec<i64>> {
    let keys: Vec<String> = values.iter().map(|value| index_key(value, matching)).collect();
    let mut args: Vec<&(dyn ToSql + Sync)> = fixed.to_vec();
    args.push(&keys);
    let rows = client.query(&st.get(client, sql).await?, &args).await.map_err(backend)?;
    let ids: BTreeSet<i64> = rows.iter().map(|row| row.get(0)).collect();
    Ok(ids.into_iter().collect())
}

impl store::Store for PostgresStore {
    async fn begin_unit(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let client = self.client.lock().await;
        if self.in_unit.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Conflict("a unit of work is already open on this store handle".into()));
        }
        self.savepoint_open.store(false, Ordering::SeqCst);
        let begun = client.batch_execute("BEGIN").await.map_err(backend);
        if begun.is_err() {
            self.in_unit.store(false, Ordering::SeqCst);
        }
        begun
    }

    async fn commit_unit(&self) -> Result<()> {
        let client = self.client.lock().await;
        if !self.in_unit.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Conflict("no unit of work is open on this store handle".into()));
        }
        client.batch_execute("COMMIT").await.map_err(backend)
    }

    async fn rollback_unit(&self) -> Result<()> {
        let client = self.client.lock().await;
        if !self.in_unit.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        client.batch_execute("ROLLBACK").await.map_err(backend)
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.client.lock().await;
        schema::migrate(&mut client).await?;
        // The index list the store was last given holds for this handle too.
        let row = client
            .query_opt("SELECT value FROM service_state WHERE service = $1 AND key = $2", &[&INDEX_STATE.0, &INDEX_STATE.1])
            .await
            .map_err(backend)?;
        if let Some(row) = row {
            let set = codec::name_set_from_bytes(&row.get::<_, Vec<u8>>(0));
            *self.statements.1.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(set));
        }
        Ok(())
    }

    async fn index_attributes(&self, attributes: &std::collections::BTreeSet<String>) -> Result<u64> {
        let mut client = self.client.lock().await;
        let wanted = attributes.clone();
        let changed = atomically!(self, client, |tx| {
            let stored = tx
                .query_opt("SELECT value FROM service_state WHERE service = $1 AND key = $2", &[&INDEX_STATE.0, &INDEX_STATE.1])
                .await
                .map_err(backend)?
                .map(|row| codec::name_set_from_bytes(&row.get::<_, Vec<u8>>(0)));
            if stored.as_ref() == Some(&wanted) {
                return Ok(0u64);
            }
            let listed: Vec<&str> = wanted.iter().map(String::as_str).collect();
            let mut changed = 0u64;
            // A connector space keeps its references whatever the list says; the metaverse does not.
            for sql in [
                "DELETE FROM cs_values WHERE NOT (attribute = ANY($1)) AND left(folded, 2) <> 'r:'",
                "DELETE FROM mv_values WHERE NOT (attribute = ANY($1))",
            ] {
                changed += tx.execute(sql, &[&listed]).await.map_err(backend)?;
            }
            // Rows of newly listed attributes come from the stored objects.
            let added: BTreeSet<String> = match &stored {
                Some(before) => wanted.difference(before).cloned().collect(),
                None => BTreeSet::new(),
            };
            if !added.is_empty() {
                for (space, owners, values, owner) in
                    [(Space::Connector, "cs_objects", "cs_values", "cs_id"), (Space::Metaverse, "mv_objects", "mv_values", "mv_id")]
                {
                    let rows = tx.query(&format!("SELECT id, attributes FROM {owners}"), &[]).await.map_err(backend)?;
                    for row in rows {
                        let (id, text): (i64, &str) = (row.get(0), row.get(1));
                        let new_rows = codec::rows_for_newly_listed(space, text, &added)?;
                        if !new_rows.is_empty() {
                            changed += new_rows.len() as u64;
                            let names: Vec<&str> = new_rows.iter().map(|(name, _, _)| name.as_str()).collect();
                            let exact: Vec<&str> = new_rows.iter().map(|(_, exact, _)| exact.as_str()).collect();
                            let folded: Vec<&str> = new_rows.iter().map(|(_, _, folded)| folded.as_str()).collect();
                            let sql = format!(
                                "INSERT INTO {values} ({owner}, attribute, exact, folded) SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[])"
                            );
                            tx.execute(&sql, &[&id, &names, &exact, &folded]).await.map_err(backend)?;
                        }
                    }
                }
            }
            let bytes = codec::name_set_to_bytes(&wanted);
            tx.execute(
                "INSERT INTO service_state (service, key, value) VALUES ($1, $2, $3) ON CONFLICT (service, key) DO UPDATE SET value = excluded.value",
                &[&INDEX_STATE.0, &INDEX_STATE.1, &bytes],
            )
            .await
            .map_err(backend)?;
            Ok(changed)
        })?;
        *self.statements.1.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(attributes.clone()));
        Ok(changed)
    }

    async fn cs_get(&self, id: CsId) -> Result<Option<CsObject>> {
        let client = self.client.lock().await;
        Ok(query_cs(&*client, &self.statements, "id = $1", &[&id.0]).await?.pop())
    }

    async fn cs_by_anchor(&self, connector: &ConnectorId, anchor: &Anchor) -> Result<Option<CsObject>> {
        let client = self.client.lock().await;
        Ok(query_cs(&*client, &self.statements, "connector = $1 AND anchor = $2", &[&connector.0, &anchor.0]).await?.pop())
    }

    async fn cs_by_dn(&self, connector: &ConnectorId, dn: &str) -> Result<Option<CsObject>> {
        let client = self.client.lock().await;
        Ok(query_cs(&*client, &self.statements, "connector = $1 AND dn_folded = $2 ORDER BY id", &[&connector.0, &dn.to_lowercase()])
            .await?
            .into_iter()
            .next())
    }

    async fn cs_insert(&self, object: NewCsObject) -> Result<CsId> {
        let mut client = self.client.lock().await;
        atomically!(self, client, |tx| insert_cs(tx, &self.statements, &object, None).await)
    }

    async fn cs_update(&self, object: &CsObject) -> Result<()> {
        let mut client = self.client.lock().await;
        atomically!(self, client, |tx| update_cs(tx, &self.statements, object).await)
    }

    async fn cs_update_state(&self, object: &CsObject) -> Result<()> {
        let state = codec::state_columns(object);
        let client = self.client.lock().await;
        let sql = "UPDATE cs_objects SET dn = $2, dn_folded = $3, link = $4, pending_import = $5, pending_export = $6, \
                   error_stage = $7, error_code = $8, error_message = $9 WHERE id = $1";
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&object.id.0, &object.dn];
        args.extend(state_args(&state));
        let changed = client.execute(&self.statements.get(&*client, sql).await?, &args).await.map_err(backend)?;
        if changed == 0 { Err(StoreError::NotFound(object.id.to_string())) } else { Ok(()) }
    }

    async fn cs_delete(&self, id: CsId) -> Result<()> {
        let client = self.client.lock().await;
        let delete = self.statements.get(&*client, "DELETE FROM cs_objects WHERE id = $1").await?;
        match client.execute(&delete, &[&id.0]).await.map_err(backend)? {
            0 => Err(StoreError::NotFound(id.to_string())),
            _ => Ok(()),
        }
    }

    async fn cs_list(&self, connector: &ConnectorId, query: &CsQuery) -> Result<Vec<CsObject>> {
        let mut sql_where = String::from("connector = $1 AND id > $2");
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
        let client = self.client.lock().await;
        query_cs(&*client, &self.statements, &sql_where, &[&connector.0, &after]).await
    }

    async fn cs_links_by_dn(&self, connector: &ConnectorId, dns: &[String]) -> Result<Vec<(String, MvId)>> {
        let client = self.client.lock().await;
        let folded: Vec<String> = dns.iter().map(|dn| dn.to_lowercase()).collect();
        let sql = "SELECT DISTINCT ON (dn_folded) dn_folded, link FROM cs_objects \
                   WHERE connector = $1 AND dn_folded = ANY($2) AND link IS NOT NULL ORDER BY dn_folded, id";
        let rows = client.query(&self.statements.get(&*client, sql).await?, &[&connector.0, &folded]).await.map_err(backend)?;
        Ok(rows.iter().map(|row| (row.get(0), MvId(row.get(1)))).collect())
    }

    async fn cs_dns_by_link(&self, connector: &ConnectorId, mvs: &[MvId]) -> Result<Vec<(MvId, String)>> {
        let client = self.client.lock().await;
        let ids: Vec<i64> = mvs.iter().map(|mv| mv.0).collect();
        let sql = "SELECT DISTINCT ON (link) link, dn FROM cs_objects WHERE link = ANY($1) AND connector = $2 ORDER BY link, id";
        let rows = client.query(&self.statements.get(&*client, sql).await?, &[&ids, &connector.0]).await.map_err(backend)?;
        Ok(rows.iter().map(|row| (MvId(row.get(0)), row.get(1))).collect())
    }

    async fn cs_linked_to(&self, mv: MvId) -> Result<Vec<CsObject>> {
        let client = self.client.lock().await;
        query_cs(&*client, &self.statements, "link = $1 ORDER BY id", &[&mv.0]).await
    }

    async fn cs_linked_to_many(&self, mvs: &[MvId]) -> Result<Vec<CsObject>> {
        if mvs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = mvs.iter().map(|mv| mv.0).collect();
        let client = self.client.lock().await;
        query_cs(&*client, &self.statements, "link = ANY($1) ORDER BY link, id", &[&ids]).await
    }

    async fn cs_find(
        &self,
        connector: &ConnectorId,
        object_type: &str,
        attribute: &str,
        values: &[AttrValue],
        matching: Matching,
    ) -> Result<Vec<CsId>> {
        self.statements.check_indexed(attribute)?;
        let column = if matching == Matching::Exact { "exact" } else { "folded" };
        // The attribute lookups hold no references (schema step 5): those go through the
        // reference index, by folded key, then compared as asked.
        let (references, others): (Vec<AttrValue>, Vec<AttrValue>) =
            values.iter().cloned().partition(|value| matches!(value, AttrValue::Reference(_)));
        let from = "SELECT DISTINCT o.id FROM cs_values v JOIN cs_objects o ON o.id = v.cs_id \
                    WHERE o.connector = $1 AND o.object_type = $2 AND o.link IS NULL AND v.attribute = $3";
        let client = self.client.lock().await;
        let fixed: [&(dyn ToSql + Sync); 3] = [&connector.0, &object_type, &attribute];
        let mut ids = Vec::new();
        if !others.is_empty() {
            let sql = format!("{from} AND left(v.folded, 2) <> 'r:' AND v.{column} = ANY($4)");
            ids = find_ids(&*client, &self.statements, &sql, &fixed, &others, matching).await?;
        }
        if !references.is_empty() {
            let folded: Vec<String> = references.iter().map(|value| index_key(value, Matching::IgnoreCase)).collect();
            let keys: Vec<String> = references.iter().map(|value| index_key(value, matching)).collect();
            let sql = format!("{from} AND left(v.folded, 2) = 'r:' AND v.folded = ANY($4) AND v.{column} = ANY($5)");
            let rows = client
                .query(&self.statements.get(&*client, &sql).await?, &[&connector.0, &object_type, &attribute, &folded, &keys])
                .await
                .map_err(backend)?;
            ids.extend(rows.iter().map(|row| row.get::<_, i64>(0)));
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids.into_iter().map(CsId).collect())
    }

    async fn cs_pending_exports(&self, connector: &ConnectorId) -> Result<Vec<store::PendingSummary>> {
        let client = self.client.lock().await;
        let sql =
            "SELECT id, anchor IS NOT NULL, pending_export FROM cs_objects WHERE connector = $1 AND pending_export IS NOT NULL ORDER BY id";
        let rows = client.query(&self.statements.get(&*client, sql).await?, &[&connector.0]).await.map_err(backend)?;
        rows.iter()
            .map(|row| {
                let text: &str = row.get(2);
                Ok(store::PendingSummary { id: CsId(row.get(0)), kind: codec::export_kind(text)?, anchored: row.get(1) })
            })
            .collect()
    }

    async fn cs_clear_pending_import(&self, ids: &[CsId]) -> Result<()> {
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let client = self.client.lock().await;
        client.execute("UPDATE cs_objects SET pending_import = NULL WHERE id = ANY($1)", &[&ids]).await.map_err(backend)?;
        Ok(())
    }

    async fn cs_set_error(&self, id: CsId, error: Option<&ObjectError>) -> Result<()> {
        let client = self.client.lock().await;
        let changed = client
            .execute(
                "UPDATE cs_objects SET error_stage = $2, error_code = $3, error_message = $4 WHERE id = $1",
                &[&id.0, &error.map(codec::error_stage_text), &error.map(|e| e.code.clone()), &error.map(|e| e.message.clone())],
            )
            .await
            .map_err(backend)?;
        if changed == 0 { Err(StoreError::NotFound(id.to_string())) } else { Ok(()) }
    }

    async fn commit_import_page(
        &self,
        connector: &ConnectorId,
        run: i64,
        changes: &[ImportChange],
        watermark: Option<&[u8]>,
    ) -> Result<ImportCounts> {
        let mut client = self.client.lock().await;
        atomically!(self, client, |tx| {
            store::import::apply_page(&mut PostgresImport { client: tx, st: &self.statements }, connector, run, changes, watermark).await
        })
    }

    async fn obsolete_unseen(&self, connector: &ConnectorId, import_run: i64) -> Result<u64> {
        let client = self.client.lock().await;
        client
            .execute(
                "UPDATE cs_objects SET pending_import = 'delete' WHERE connector = $1 AND anchor IS NOT NULL \
                 AND (seen_run IS NULL OR seen_run < $2) AND (pending_import IS NULL OR pending_import <> 'delete')",
                &[&connector.0, &import_run],
            )
            .await
            .map_err(backend)
    }

    async fn service_state(&self, service: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let client = self.client.lock().await;
        let row = client
            .query_opt("SELECT value FROM service_state WHERE service = $1 AND key = $2", &[&service, &key])
            .await
            .map_err(backend)?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn set_service_state(&self, service: &str, key: &str, value: &[u8]) -> Result<()> {
        let client = self.client.lock().await;
        client
            .execute(
                "INSERT INTO service_state (service, key, value) VALUES ($1, $2, $3) ON CONFLICT (service, key) DO UPDATE SET value = excluded.value",
                &[&service, &key, &value],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn watermark(&self, connector: &ConnectorId) -> Result<Option<Vec<u8>>> {
        let client = self.client.lock().await;
        let row = client.query_opt("SELECT value FROM watermarks WHERE connector = $1", &[&connector.0]).await.map_err(backend)?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn clear_watermark(&self, connector: &ConnectorId) -> Result<()> {
        let client = self.client.lock().await;
        client.execute("DELETE FROM watermarks WHERE connector = $1", &[&connector.0]).await.map_err(backend)?;
        Ok(())
    }

    async fn mv_get(&self, id: MvId) -> Result<Option<MvObject>> {
        let client = self.client.lock().await;
        let sql = "SELECT id, object_type, attributes FROM mv_objects WHERE id = $1";
        let row = client.query_opt(&self.statements.get(&*client, sql).await?, &[&id.0]).await.map_err(backend)?;
        row.as_ref().map(mv_from_row).transpose()
    }

    async fn mv_get_many(&self, ids: &[MvId]) -> Result<Vec<MvObject>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ids.iter().map(|mv| mv.0).collect();
        let client = self.client.lock().await;
        let sql = "SELECT id, object_type, attributes FROM mv_objects WHERE id = ANY($1) ORDER BY id";
        let rows = client.query(&self.statements.get(&*client, sql).await?, &[&ids]).await.map_err(backend)?;
        rows.iter().map(mv_from_row).collect()
    }

    async fn mv_insert(&self, object_type: &str) -> Result<MvId> {
        let client = self.client.lock().await;
        let insert =
            self.statements.get(&*client, "INSERT INTO mv_objects (object_type, attributes) VALUES ($1, '{}') RETURNING id").await?;
        let row = client.query_one(&insert, &[&object_type]).await.map_err(backend)?;
        Ok(MvId(row.get(0)))
    }

    async fn mv_update(&self, object: &MvObject) -> Result<()> {
        let attributes = codec::mv_attributes_to_text(&object.attributes);
        // The index rows it should hold (few: the listed attributes).
        let wanted = self.statements.mv_index_rows(&object.attributes);
        let names: Vec<&str> = wanted.keys().map(|(name, _)| *name).collect();
        let exact: Vec<&str> = wanted.keys().map(|(_, exact)| exact.as_str()).collect();
        let folded: Vec<&str> = wanted.values().map(String::as_str).collect();
        let mut client = self.client.lock().await;
        let st = &self.statements;
        atomically!(self, client, |tx| {
            let update = st.get(tx, "UPDATE mv_objects SET object_type = $2, attributes = $3 WHERE id = $1").await?;
            let delete = st
                .get(
                    tx,
                    "DELETE FROM mv_values v WHERE v.mv_id = $1 AND NOT EXISTS \
                     (SELECT 1 FROM UNNEST($2::text[], $3::text[]) AS w(attribute, exact) WHERE w.attribute = v.attribute AND w.exact = v.exact)",
                )
                .await?;
            let insert = st
                .get(
                    tx,
                    "INSERT INTO mv_values (mv_id, attribute, exact, folded) \
                     SELECT $1, w.attribute, w.exact, w.folded FROM UNNEST($2::text[], $3::text[], $4::text[]) AS w(attribute, exact, folded) \
                     WHERE NOT EXISTS (SELECT 1 FROM mv_values v WHERE v.mv_id = $1 AND v.attribute = w.attribute AND v.exact = w.exact)",
                )
                .await?;
            // One round trip: the three statements go pipelined, in order; only the rows that
            // differ change and the previous attributes are never read back.
            let update_args: [&(dyn ToSql + Sync); 3] = [&object.id.0, &object.object_type, &attributes];
            let delete_args: [&(dyn ToSql + Sync); 3] = [&object.id.0, &names, &exact];
            let insert_args: [&(dyn ToSql + Sync); 4] = [&object.id.0, &names, &exact, &folded];
            let (updated, deleted, inserted) =
                tokio::join!(tx.execute(&update, &update_args), tx.execute(&delete, &delete_args), tx.execute(&insert, &insert_args));
            if updated.map_err(backend)? == 0 {
                return Err(StoreError::NotFound(object.id.to_string()));
            }
            deleted.map_err(backend)?;
            inserted.map_err(backend)?;
            Ok(())
        })
    }

    async fn mv_delete(&self, id: MvId) -> Result<()> {
        let client = self.client.lock().await;
        let delete = self.statements.get(&*client, "DELETE FROM mv_objects WHERE id = $1").await?;
        match client.execute(&delete, &[&id.0]).await.map_err(backend)? {
            0 => Err(StoreError::NotFound(id.to_string())),
            _ => Ok(()),
        }
    }

    async fn mv_find(&self, object_type: &str, attribute: &str, values: &[AttrValue], matching: Matching) -> Result<Vec<MvId>> {
        self.statements.check_indexed(attribute)?;
        let column = if matching == Matching::Exact { "exact" } else { "folded" };
        let sql = format!(
            "SELECT DISTINCT m.id FROM mv_values v JOIN mv_objects m ON m.id = v.mv_id WHERE m.object_type = $1 AND v.attribute = $2 AND v.{column} = ANY($3)"
        );
        let client = self.client.lock().await;
        Ok(find_ids(&*client, &self.statements, &sql, &[&object_type, &attribute], values, matching).await?.into_iter().map(MvId).collect())
    }

    async fn mv_list(&self, after: Option<MvId>, limit: usize) -> Result<Vec<MvId>> {
        let limit = if limit == 0 { i64::MAX } else { limit as i64 };
        let client = self.client.lock().await;
        let rows = client
            .query("SELECT id FROM mv_objects WHERE id > $1 ORDER BY id LIMIT $2", &[&after.map_or(0, |id| id.0), &limit])
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|row| MvId(row.get(0))).collect())
    }

    async fn claim_runner(&self, now: i64) -> Result<u64> {
        let client = self.client.lock().await;
        // A session lock: held while this connection lives (several calls on one handle take
        // it again, which PostgreSQL counts); a killed runner's connection ends and frees it.
        let held: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&RUNNER_LOCK_KEY]).await.map_err(backend)?.get(0);
        if !held {
            // Name the holder: its session's client address, application and backend.
            let holder = client
                .query_opt(
                    "SELECT a.pid, COALESCE(a.application_name, ''), COALESCE(host(a.client_addr), 'local socket'), a.backend_start::text \
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objid = ($1::bigint & 4294967295)::oid AND l.database = \
                     (SELECT oid FROM pg_database WHERE datname = current_database())",
                    &[&RUNNER_LOCK_KEY],
                )
                .await
                .ok()
                .flatten()
                .map(|row| {
                    let (pid, application, address, since): (i32, String, String, String) =
                        (row.get(0), row.get(1), row.get(2), row.get(3));
                    format!(
                        "backend {pid} ({}from {address}, since {since})",
                        if application.is_empty() { String::new() } else { format!("{application}, ") }
                    )
                })
                .unwrap_or_else(|| "another session".into());
            return Err(StoreError::Busy(format!(
                "the runner lock of this PostgreSQL database is held by {holder} (a `sync serve` or `sync run` of the same store); one store has one writer"
            )));
        }
        let changed = client
            .execute("UPDATE runs SET status = 'interrupted', finished = $1 WHERE status = 'running' AND finished IS NULL", &[&now])
            .await
            .map_err(backend)?;
        Ok(changed)
    }

    async fn run_start(&self, connector: &ConnectorId, step: &str, started: i64) -> Result<i64> {
        let client = self.client.lock().await;
        let row = client
            .query_one(
                "INSERT INTO runs (connector, step, started, status, adds, updates, deletes, errors) VALUES ($1, $2, $3, 'running', 0, 0, 0, 0) RETURNING id",
                &[&connector.0, &step, &started],
            )
            .await
            .map_err(backend)?;
        Ok(row.get(0))
    }

    async fn run_finish(&self, id: i64, finished: i64, status: &str, counts: RunCounts) -> Result<()> {
        let client = self.client.lock().await;
        let changed = client
            .execute(
                "UPDATE runs SET finished = $2, status = $3, adds = $4, updates = $5, deletes = $6, errors = $7 WHERE id = $1",
                &[
                    &id,
                    &finished,
                    &status,
                    &(counts.adds as i64),
                    &(counts.updates as i64),
                    &(counts.deletes as i64),
                    &(counts.errors as i64),
                ],
            )
            .await
            .map_err(backend)?;
        if changed == 0 { Err(StoreError::NotFound(format!("run {id}"))) } else { Ok(()) }
    }

    async fn runs_prune(&self, before: i64) -> Result<u64> {
        let client = self.client.lock().await;
        client.execute("DELETE FROM runs WHERE started < $1 AND finished IS NOT NULL", &[&before]).await.map_err(backend)
    }

    async fn runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        let client = self.client.lock().await;
        let rows = client
            .query(
                "SELECT id, connector, step, started, finished, status, adds, updates, deletes, errors FROM runs ORDER BY id DESC LIMIT $1",
                &[&(limit as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|row| RunRecord {
                id: row.get(0),
                connector: ConnectorId(row.get(1)),
                step: row.get(2),
                started: row.get(3),
                finished: row.get(4),
                status: row.get(5),
                counts: RunCounts {
                    adds: row.get::<_, i64>(6) as u64,
                    updates: row.get::<_, i64>(7) as u64,
                    deletes: row.get::<_, i64>(8) as u64,
                    errors: row.get::<_, i64>(9) as u64,
                },
            })
            .collect())
    }
}
