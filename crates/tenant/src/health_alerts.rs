//! Health alerts in the tenant: the `health` crate's conditions evaluated over what the tenant
//! knows (each sync server's last report, the password hash sync heartbeat), the open alerts and
//! their history kept in `health_alerts`, and `GET /isthmus/v1/health/alerts`. Evaluated after
//! every sync report, at every read and every minute, so a server that stopped reporting shows
//! as such when anyone looks.

use axum::Json;
use axum::response::{IntoResponse, Response};
use health::alerts::{self, Alert, Change, Severity, Signals};
use serde_json::{Value, json};

use crate::db::DbError;
use crate::odata::GraphError;
use crate::sql::Sql;
use crate::{Access, AppState};

/// The setting holding the sync app's last refused and accepted sign-ins (JSON).
const SYNC_SIGN_IN: &str = "syncSignIn";

/// Records a sign-in of an app holding the sync role, refused or accepted, at `now` (the
/// condition of "the sync service could not sign in").
pub(crate) async fn record_sync_sign_in(state: &AppState, client_id: String, accepted: bool, now: i64) {
    let recorded = state
        .db
        .call(move |sql| {
            let stored = crate::db::setting(sql, SYNC_SIGN_IN)?.and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
            let mut entry = match stored {
                Some(entry) if entry["clientId"] == client_id.as_str() => entry,
                _ => json!({"clientId": client_id}),
            };
            entry[if accepted { "accepted" } else { "refused" }] = json!(now);
            crate::db::set_setting(sql, SYNC_SIGN_IN, entry.to_string().as_bytes())
        })
        .await;
    if let Err(err) = recorded {
        tracing::warn!("recording the sync app's sign-in: {err}");
    }
}

fn sync_sign_ins(sql: &mut dyn Sql) -> Result<Option<alerts::SignIns>, DbError> {
    let Some(entry) = crate::db::setting(sql, SYNC_SIGN_IN)?.and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok()) else {
        return Ok(None);
    };
    Ok(entry["clientId"].as_str().map(|client_id| alerts::SignIns {
        client_id: client_id.to_string(),
        refused: entry["refused"].as_i64(),
        accepted: entry["accepted"].as_i64(),
    }))
}

/// Resolved alerts are kept this long (seconds).
const HISTORY: i64 = 90 * 86_400;

/// The most resolved alerts one answer lists.
const HISTORY_PAGE: i64 = 200;

fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

fn alert_of(row: &crate::sql::Row) -> Result<Alert, DbError> {
    let severity = match row.text(3)?.as_str() {
        "warning" => Severity::Warning,
        _ => Severity::Error,
    };
    Ok(Alert {
        id: row.text(0)?,
        subject: row.text(1)?,
        raised: row.int(2)?,
        severity,
        title: row.text(4)?,
        detail: row.text(5)?,
        last_seen: row.int(6)?,
        resolved: row.opt_int(7)?,
    })
}

const COLUMNS: &str = "id, subject, raised, severity, title, detail, last_seen, resolved";

/// Evaluates the conditions at `now` and stores the outcome; returns what changed.
pub(crate) fn evaluate(sql: &mut dyn Sql, now: i64) -> Result<Vec<Change>, DbError> {
    let servers = crate::sync_reports::servers(sql)?;
    let last_password_sync =
        crate::db::setting(sql, crate::hashsync::LAST_PASSWORD_SYNC)?.and_then(|value| String::from_utf8(value).ok()?.parse::<i64>().ok());
    let sync_sign_in = sync_sign_ins(sql)?;
    let holding = alerts::conditions(&Signals { now, servers: &servers, last_password_sync, sync_sign_in });
    let open: Vec<Alert> = sql
        .query(&format!("SELECT {COLUMNS} FROM health_alerts WHERE resolved IS NULL"), &[])?
        .iter()
        .map(alert_of)
        .collect::<Result<_, _>>()?;
    let (still_open, changes) = alerts::advance(&open, &holding, now);
    for alert in &still_open {
        sql.execute(
            "UPDATE health_alerts SET last_seen = ?1, detail = ?2 WHERE id = ?3 AND subject = ?4 AND raised = ?5",
            &[
                alert.last_seen.into(),
                alert.detail.as_str().into(),
                alert.id.as_str().into(),
                alert.subject.as_str().into(),
                alert.raised.into(),
            ],
        )?;
    }
    for change in &changes {
        match change {
            Change::Raised(alert) => {
                sql.execute(
                    "INSERT INTO health_alerts (id, subject, raised, severity, title, detail, last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT DO NOTHING",
                    &[
                        alert.id.as_str().into(),
                        alert.subject.as_str().into(),
                        alert.raised.into(),
                        severity_name(alert.severity).into(),
                        alert.title.as_str().into(),
                        alert.detail.as_str().into(),
                        alert.last_seen.into(),
                    ],
                )?;
                tracing::warn!(alert = alert.id, subject = alert.subject, "health alert raised: {}", alert.title);
            }
            Change::Resolved(alert) => {
                sql.execute(
                    "UPDATE health_alerts SET resolved = ?1 WHERE id = ?2 AND subject = ?3 AND raised = ?4",
                    &[now.into(), alert.id.as_str().into(), alert.subject.as_str().into(), alert.raised.into()],
                )?;
                tracing::info!(alert = alert.id, subject = alert.subject, "health alert resolved: {}", alert.title);
            }
        }
    }
    sql.execute("DELETE FROM health_alerts WHERE resolved IS NOT NULL AND resolved < ?1", &[(now - HISTORY).into()])?;
    Ok(changes)
}

fn alert_json(alert: &Alert) -> Value {
    json!({
        "id": alert.id,
        "subject": alert.subject,
        "severity": severity_name(alert.severity),
        "title": alert.title,
        "detail": alert.detail,
        "remedy": alerts::kind(&alert.id).map(|kind| kind.remedy),
        "state": if alert.resolved.is_some() { "resolved" } else { "open" },
        "raisedDateTime": crate::rfc3339(alert.raised),
        "lastSeenDateTime": crate::rfc3339(alert.last_seen),
        "resolvedDateTime": alert.resolved.map(crate::rfc3339),
    })
}

/// `GET /isthmus/v1/health/alerts[?state=all]`: the open alerts (evaluated now), or with
/// `state=all` the resolved ones of the last 90 days too (the latest 200), newest first.
pub async fn list(state: AppState, access: Access, query: std::collections::HashMap<String, String>) -> Result<Response, GraphError> {
    access.require(crate::permissions::Area::HealthRead)?;
    let all = match query.get("state").map(String::as_str) {
        None | Some("open") => false,
        Some("all") => true,
        Some(other) => return Err(GraphError::bad_request(format!("state must be open or all, not {other:?}."))),
    };
    let now = crate::unix_now();
    let listed = state
        .db
        .call(move |sql| {
            evaluate(sql, now)?;
            let mut rows =
                sql.query(&format!("SELECT {COLUMNS} FROM health_alerts WHERE resolved IS NULL ORDER BY raised DESC, id, subject"), &[])?;
            if all {
                rows.extend(sql.query(
                    &format!("SELECT {COLUMNS} FROM health_alerts WHERE resolved IS NOT NULL ORDER BY resolved DESC, id, subject LIMIT ?1"),
                    &[HISTORY_PAGE.into()],
                )?);
            }
            rows.iter().map(alert_of).collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(json!({"value": listed.iter().map(alert_json).collect::<Vec<_>>()})).into_response())
}
