//! The tenant's half of sync health: `POST /isthmus/v1/syncReports`, where a sync server
//! reports each finished cycle (the contract is `health::SyncReport`), and what the
//! organization shows from the reports (`onPremisesLastSyncDateTime`, `onPremisesSyncEnabled`).
//! The last report of each server is kept, so a second server exporting to the tenant at the
//! same time is seen and named in the answer to both.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::db::DbError;
use crate::odata::GraphError;
use crate::sql::Sql;
use crate::{Access, AppState};

/// The most servers the tenant remembers; a new one beyond it replaces the longest silent.
pub(crate) const MAX_SERVERS: usize = 64;

/// Every server's last report.
pub(crate) fn servers(sql: &mut dyn Sql) -> Result<Vec<health::Received>, DbError> {
    let rows = sql.query("SELECT report, received FROM sync_servers ORDER BY id", &[])?;
    let mut servers = Vec::with_capacity(rows.len());
    for row in rows {
        let text = row.text(0)?;
        // A row this build cannot read (written by a later version) is left out, not fatal.
        match serde_json::from_str::<health::SyncReport>(&text) {
            Ok(report) => servers.push(health::Received { report, received: row.int(1)? }),
            Err(err) => tracing::warn!("a stored sync report does not parse: {err}"),
        }
    }
    Ok(servers)
}

/// Keeps `report` as its server's last, received at `now`.
fn keep(sql: &mut dyn Sql, report: &health::SyncReport, now: i64) -> Result<(), DbError> {
    let text = serde_json::to_string(report).map_err(|err| DbError::Corrupt(err.to_string()))?;
    let known = sql.query_opt("SELECT 1 FROM sync_servers WHERE id = ?1", &[report.server.id.as_str().into()])?.is_some();
    if !known {
        let count = sql.query_opt("SELECT COUNT(*) FROM sync_servers", &[])?.map(|row| row.int(0)).transpose()?.unwrap_or(0);
        if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_SERVERS {
            sql.execute("DELETE FROM sync_servers WHERE id = (SELECT id FROM sync_servers ORDER BY received, id LIMIT 1)", &[])?;
        }
    }
    sql.execute(
        "INSERT INTO sync_servers (id, report, received) VALUES (?1, ?2, ?3) \
         ON CONFLICT (id) DO UPDATE SET report = excluded.report, received = excluded.received",
        &[report.server.id.as_str().into(), text.into(), now.into()],
    )?;
    Ok(())
}

/// `POST /isthmus/v1/syncReports`: the sync service's report of a finished cycle. Answers
/// the active servers competing for the tenant (empty when there is one).
pub async fn receive(state: AppState, access: Access, body: crate::graph::Body) -> Result<Response, GraphError> {
    access.require(crate::permissions::Area::SyncReports)?;
    state.admit_write()?;
    let report: health::SyncReport = serde_json::from_value(Value::Object(crate::graph::body_object(body)?))
        .map_err(|err| GraphError::bad_request(format!("Not a sync report: {err}")))?;
    report.check().map_err(|problem| GraphError::bad_request(format!("Invalid sync report: {problem}.")))?;
    state.metrics.sync_report();
    let now = crate::unix_now();
    let view = state
        .db
        .call(move |sql| {
            keep(sql, &report, now)?;
            crate::health_alerts::evaluate(sql, now)?;
            Ok(health::SyncServers::of(&servers(sql)?, now))
        })
        .await?;
    if !view.competing_active.is_empty() {
        tracing::warn!(servers = ?view.competing_active, "more than one active sync server reports to this tenant");
    }
    Ok(Json(json!({"competingActiveServers": view.competing_active})).into_response())
}

/// The organization's sync fields: (`onPremisesLastSyncDateTime`, `onPremisesSyncEnabled`),
/// null when no active server has reported.
pub(crate) async fn organization_fields(state: &AppState) -> Result<(Value, Value), GraphError> {
    let now = crate::unix_now();
    let view = state.db.read(move |sql| Ok(health::SyncServers::of(&servers(sql)?, now))).await?;
    let last = view.last_sync.map_or(Value::Null, |at| Value::String(crate::rfc3339(at)));
    let enabled = if view.sync_enabled { Value::Bool(true) } else { Value::Null };
    Ok((last, enabled))
}
