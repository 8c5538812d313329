//! Versioned migrations of the PostgreSQL schema; a database from a newer program is refused.
//! An advisory lock serialises migrations of several processes starting at once.

use store::{Result, StoreError};
use tokio_postgres::Client;

use crate::backend;

const STEPS: &[&str] = &[
    "CREATE TABLE mv_objects (
        id BIGSERIAL PRIMARY KEY,
        object_type TEXT NOT NULL,
        attributes TEXT NOT NULL
     );
     CREATE TABLE cs_objects (
        id BIGSERIAL PRIMARY KEY,
        connector TEXT NOT NULL,
        anchor BYTEA,
        dn TEXT NOT NULL,
        dn_folded TEXT NOT NULL,
        object_type TEXT NOT NULL,
        attributes TEXT NOT NULL,
        link BIGINT REFERENCES mv_objects(id) ON DELETE SET NULL,
        pending_import TEXT,
        pending_export TEXT,
        error_stage TEXT,
        error_code TEXT,
        error_message TEXT,
        seen_run BIGINT
     );
     CREATE UNIQUE INDEX cs_objects_anchor ON cs_objects(connector, anchor) WHERE anchor IS NOT NULL;
     CREATE INDEX cs_objects_dn ON cs_objects(connector, dn_folded);
     CREATE INDEX cs_objects_link ON cs_objects(link);
     CREATE INDEX cs_objects_pending_import ON cs_objects(connector, id) WHERE pending_import IS NOT NULL;
     CREATE INDEX cs_objects_pending_export ON cs_objects(connector, id) WHERE pending_export IS NOT NULL;
     CREATE TABLE cs_values (
        cs_id BIGINT NOT NULL REFERENCES cs_objects(id) ON DELETE CASCADE,
        attribute TEXT NOT NULL,
        exact TEXT NOT NULL,
        folded TEXT NOT NULL
     );
     CREATE INDEX cs_values_owner ON cs_values(cs_id);
     CREATE INDEX cs_values_exact ON cs_values(attribute, exact);
     CREATE INDEX cs_values_folded ON cs_values(attribute, folded);
     CREATE TABLE mv_values (
        mv_id BIGINT NOT NULL REFERENCES mv_objects(id) ON DELETE CASCADE,
        attribute TEXT NOT NULL,
        exact TEXT NOT NULL,
        folded TEXT NOT NULL
     );
     CREATE INDEX mv_values_owner ON mv_values(mv_id);
     CREATE INDEX mv_values_exact ON mv_values(attribute, exact);
     CREATE INDEX mv_values_folded ON mv_values(attribute, folded);
     CREATE TABLE watermarks (connector TEXT PRIMARY KEY, value BYTEA NOT NULL);
     CREATE TABLE runs (
        id BIGSERIAL PRIMARY KEY,
        connector TEXT NOT NULL,
        step TEXT NOT NULL,
        started BIGINT NOT NULL,
        finished BIGINT,
        status TEXT NOT NULL,
        adds BIGINT NOT NULL,
        updates BIGINT NOT NULL,
        deletes BIGINT NOT NULL,
        errors BIGINT NOT NULL
     );",
    // 2: references by target, so an imported rename finds the objects naming the old DN
    // without reading the whole connector space.
    "CREATE INDEX cs_values_reference ON cs_values(folded) WHERE left(folded, 2) = 'r:';",
    // 3: services' own state (password hash sync's watermarks), apart from connectors'.
    "CREATE TABLE service_state (service TEXT NOT NULL, key TEXT NOT NULL, value BYTEA NOT NULL, PRIMARY KEY (service, key));",
    // 4: a connector's objects in id order, so a full sync's page (`connector = ? AND id > ?
    // ORDER BY id LIMIT n`) is an index range, not a sort of every remaining row per page
    // (quadratic in the connector space's size).
    "CREATE INDEX cs_objects_connector ON cs_objects(connector, id);",
    // 5: reference rows (a group's members: most rows of a large directory) leave the
    // attribute lookups, which never search them: a connector space finds referrers through
    // `cs_values_reference`, and the metaverse keeps none unless its attribute is listed
    // (`drop_unlisted_metaverse_references` runs with this step).
    "DROP INDEX cs_values_exact;
     DROP INDEX cs_values_folded;
     CREATE INDEX cs_values_exact ON cs_values(attribute, exact) WHERE left(folded, 2) <> 'r:';
     CREATE INDEX cs_values_folded ON cs_values(attribute, folded) WHERE left(folded, 2) <> 'r:';",
    // 6: objects without an anchor (exports not yet confirmed), few at any time: an import
    // asks whether the connector has any before searching one by DN for each new object.
    "CREATE INDEX cs_objects_unanchored ON cs_objects(connector, dn_folded) WHERE anchor IS NULL;",
];

/// The newest schema version this program knows.
pub const VERSION: i64 = STEPS.len() as i64;

/// An arbitrary constant naming Isthmus's migration lock.
const LOCK_KEY: i64 = 0x1574_4d05;

pub(crate) async fn migrate(client: &mut Client) -> Result<()> {
    let tx = client.transaction().await.map_err(backend)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await.map_err(backend)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").await.map_err(backend)?;
    let current: i64 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[]).await.map_err(backend)?.get(0);
    if current > VERSION {
        return Err(StoreError::TooNew { found: current, supported: VERSION });
    }
    for (index, step) in STEPS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(step).await.map_err(backend)?;
        if index + 1 == 5 {
            drop_unlisted_metaverse_references(&tx).await?;
        }
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&(index as i64 + 1)]).await.map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}

/// Removes the metaverse's reference rows of attributes the store's index list leaves out
/// (schema step 5); with no list, every attribute stays indexed.
async fn drop_unlisted_metaverse_references(tx: &tokio_postgres::Transaction<'_>) -> Result<()> {
    let (service, key) = crate::INDEX_STATE;
    let stored = tx
        .query_opt("SELECT value FROM service_state WHERE service = $1 AND key = $2", &[&service, &key])
        .await
        .map_err(backend)?
        .map(|row| row.get::<_, Vec<u8>>(0));
    let Some(stored) = stored else { return Ok(()) };
    let listed: Vec<String> = store::codec::name_set_from_bytes(&stored).into_iter().collect();
    tx.execute("DELETE FROM mv_values WHERE left(folded, 2) = 'r:' AND NOT (attribute = ANY($1))", &[&listed]).await.map_err(backend)?;
    Ok(())
}
