//! Versioned migrations of the SQLite schema. Each step runs once, in a transaction, and records
//! its number; a database from a newer program is refused rather than touched.

use model::AttrValue;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use store::codec::{self, index_key};
use store::{Matching, Result, StoreError};

use crate::backend;

/// Migration steps; step N brings the schema to version N.
const STEPS: &[&str] = &[
    // 1: connector spaces, metaverse, value indexes, watermarks, run history.
    "CREATE TABLE mv_objects (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        object_type TEXT NOT NULL,
        attributes TEXT NOT NULL
     );
     CREATE TABLE cs_objects (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        connector TEXT NOT NULL,
        anchor BLOB,
        dn TEXT NOT NULL,
        dn_folded TEXT NOT NULL,
        object_type TEXT NOT NULL,
        attributes TEXT NOT NULL,
        link INTEGER REFERENCES mv_objects(id) ON DELETE SET NULL,
        pending_import TEXT,
        pending_export TEXT,
        error_stage TEXT,
        error_code TEXT,
        error_message TEXT,
        seen_run INTEGER
     );
     CREATE UNIQUE INDEX cs_objects_anchor ON cs_objects(connector, anchor) WHERE anchor IS NOT NULL;
     CREATE INDEX cs_objects_dn ON cs_objects(connector, dn_folded);
     CREATE INDEX cs_objects_link ON cs_objects(link);
     CREATE INDEX cs_objects_pending_import ON cs_objects(connector, id) WHERE pending_import IS NOT NULL;
     CREATE INDEX cs_objects_pending_export ON cs_objects(connector, id) WHERE pending_export IS NOT NULL;
     CREATE TABLE cs_values (
        cs_id INTEGER NOT NULL REFERENCES cs_objects(id) ON DELETE CASCADE,
        attribute TEXT NOT NULL,
        exact TEXT NOT NULL,
        folded TEXT NOT NULL
     );
     CREATE INDEX cs_values_owner ON cs_values(cs_id);
     CREATE INDEX cs_values_exact ON cs_values(attribute, exact);
     CREATE INDEX cs_values_folded ON cs_values(attribute, folded);
     CREATE TABLE mv_values (
        mv_id INTEGER NOT NULL REFERENCES mv_objects(id) ON DELETE CASCADE,
        attribute TEXT NOT NULL,
        exact TEXT NOT NULL,
        folded TEXT NOT NULL
     );
     CREATE INDEX mv_values_owner ON mv_values(mv_id);
     CREATE INDEX mv_values_exact ON mv_values(attribute, exact);
     CREATE INDEX mv_values_folded ON mv_values(attribute, folded);
     CREATE TABLE watermarks (connector TEXT PRIMARY KEY, value BLOB NOT NULL);
     CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        connector TEXT NOT NULL,
        step TEXT NOT NULL,
        started INTEGER NOT NULL,
        finished INTEGER,
        status TEXT NOT NULL,
        adds INTEGER NOT NULL,
        updates INTEGER NOT NULL,
        deletes INTEGER NOT NULL,
        errors INTEGER NOT NULL
     );",
    // 2: references by target, so an imported rename finds the objects naming the old DN
    // without reading the whole connector space. Reference values are indexed whatever the
    // store's index list says; `backfill_references` adds those the list had left out.
    "CREATE INDEX cs_values_reference ON cs_values(folded) WHERE substr(folded, 1, 2) = 'r:';",
    // 3: services' own state (password hash sync's watermarks), apart from connectors'.
    "CREATE TABLE service_state (service TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (service, key));",
    // 4: a connector's objects in id order, so a full sync's page (`connector = ? AND id > ?
    // ORDER BY id LIMIT n`) is an index range, not a sort of every remaining row per page
    // (quadratic in the connector space's size).
    "CREATE INDEX cs_objects_connector ON cs_objects(connector, id);",
    // 5: reference rows (a group's members: most rows of a large directory) leave the
    // attribute lookups, which never search them: a connector space finds referrers through
    // `cs_values_reference`, and the metaverse keeps none unless its attribute is listed.
    "DROP INDEX cs_values_exact;
     DROP INDEX cs_values_folded;
     CREATE INDEX cs_values_exact ON cs_values(attribute, exact) WHERE substr(folded, 1, 2) <> 'r:';
     CREATE INDEX cs_values_folded ON cs_values(attribute, folded) WHERE substr(folded, 1, 2) <> 'r:';",
    // 6: objects without an anchor (exports not yet confirmed), few at any time: an import
    // asks whether the connector has any before searching one by DN for each new object.
    "CREATE INDEX cs_objects_unanchored ON cs_objects(connector, dn_folded) WHERE anchor IS NULL;",
    // 7: the reference lookups of a sync (a member's DN → its MV object, an MV object → the
    // target's DN; about three million of each at 100,000 users) answered from the index
    // alone, without reading the row, whose attributes come before `link` and, for a large
    // group, spill into overflow pages. The link index becomes (link, connector, id, dn).
    "CREATE INDEX cs_objects_dn_link ON cs_objects(connector, dn_folded, link) WHERE link IS NOT NULL;
     DROP INDEX cs_objects_link;
     CREATE INDEX cs_objects_link ON cs_objects(link, connector, id, dn);",
];

/// The newest schema version this program knows.
pub const VERSION: i64 = STEPS.len() as i64;

pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)").map_err(backend)?;
    let current: i64 = conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |row| row.get(0)).map_err(backend)?;
    if current > VERSION {
        return Err(StoreError::TooNew { found: current, supported: VERSION });
    }
    for (index, step) in STEPS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(step).map_err(backend)?;
        if index + 1 == 2 {
            backfill_references(&tx)?;
        }
        if index + 1 == 5 {
            drop_unlisted_metaverse_references(&tx)?;
        }
        tx.execute("INSERT INTO schema_version (version) VALUES (?1)", params![index as i64 + 1]).map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

/// Removes the metaverse's reference rows of attributes the store's index list leaves out
/// (schema step 5); with no list, every attribute stays indexed.
fn drop_unlisted_metaverse_references(tx: &Transaction<'_>) -> Result<()> {
    let (service, key) = crate::INDEX_STATE;
    let stored: Option<Vec<u8>> = tx
        .query_row("SELECT value FROM service_state WHERE service = ?1 AND key = ?2", params![service, key], |row| row.get(0))
        .optional()
        .map_err(backend)?;
    let Some(stored) = stored else { return Ok(()) };
    let listed = codec::name_set_from_bytes(&stored);
    let present: Vec<String> = {
        let mut statement = tx.prepare("SELECT DISTINCT attribute FROM mv_values WHERE substr(folded, 1, 2) = 'r:'").map_err(backend)?;
        let rows = statement.query_map([], |row| row.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)?
    };
    for attribute in present.iter().filter(|attribute| !listed.contains(*attribute)) {
        tx.execute("DELETE FROM mv_values WHERE attribute = ?1 AND substr(folded, 1, 2) = 'r:'", params![attribute]).map_err(backend)?;
    }
    Ok(())
}

/// Rewrites the reference rows of every connector-space object, so references in attributes
/// left out of the store's index list can be found by target (schema step 2).
fn backfill_references(tx: &Transaction<'_>) -> Result<()> {
    let mut select = tx.prepare("SELECT id, attributes FROM cs_objects").map_err(backend)?;
    let rows = select.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))).map_err(backend)?;
    let mut clear = tx.prepare("DELETE FROM cs_values WHERE cs_id = ?1 AND substr(folded, 1, 2) = 'r:'").map_err(backend)?;
    let mut insert = tx.prepare("INSERT INTO cs_values (cs_id, attribute, exact, folded) VALUES (?1, ?2, ?3, ?4)").map_err(backend)?;
    for row in rows {
        let (id, text) = row.map_err(backend)?;
        let attributes = codec::attributes_from_text(&text)?;
        clear.execute(params![id]).map_err(backend)?;
        for (name, values) in attributes.iter() {
            for value in values.iter().filter(|value| matches!(value, AttrValue::Reference(_))) {
                insert
                    .execute(params![id, name, index_key(value, Matching::Exact), index_key(value, Matching::IgnoreCase)])
                    .map_err(backend)?;
            }
        }
    }
    Ok(())
}
