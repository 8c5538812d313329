//! Export steps: pending exports to the connected directory, unless staging mode holds them or
//! the accidental-delete threshold stops the whole export.

use connector_api::{ConnectorError, ExportRequest};
use futures_util::StreamExt as _;
use model::{ConnectorId, CsObject, ErrorStage, ObjectError, PendingExport};
use store::{CsQuery, RunCounts, Store};

use crate::{Runner, RunnerError};

const PAGE: usize = 1000;

pub(crate) async fn run<S: Store>(runner: &Runner<S>, id: &ConnectorId) -> Result<(String, RunCounts, String), RunnerError> {
    let connector = runner.connector(id)?;
    let Some(export) = &connector.export else {
        return Err(RunnerError::Unsupported { connector: id.0.clone(), step: "export", why: "it is read-only".into() });
    };
    let mut pending = Vec::new();
    let mut after = None;
    loop {
        let page = runner.store.cs_list(id, &CsQuery { pending_export: true, after, limit: PAGE, ..CsQuery::default() }).await?;
        after = page.last().map(|cs| cs.id);
        let done = page.len() < PAGE;
        pending.extend(page);
        if done {
            break;
        }
    }
    let mut planned = RunCounts::default();
    for cs in &pending {
        match cs.pending_export {
            Some(PendingExport::Add(_)) => planned.adds += 1,
            Some(PendingExport::Delete) => planned.deletes += 1,
            Some(_) => planned.updates += 1,
            None => {}
        }
    }
    if runner.config.staging {
        let detail = format!(
            "staging mode: {} exports held ({} adds, {} updates, {} deletes); see `isthmus plan`",
            pending.len(),
            planned.adds,
            planned.updates,
            planned.deletes
        );
        return Ok(("staging-no-export".into(), planned, detail));
    }
    if let Some(threshold) = runner.config.deletion_threshold
        && planned.deletes > threshold
        && !runner.deletes_allowed_once.swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        tracing::warn!(connector = %id, deletes = planned.deletes, threshold, "accidental-delete threshold exceeded; nothing exported");
        let detail = format!(
            "{} pending deletes exceed the threshold of {threshold}; nothing was exported. Review them with `isthmus plan`, then run `isthmus sync run --allow-deletes` once (the approval is used up by that export)",
            planned.deletes
        );
        return Ok(("stopped-deletion-threshold-exceeded".into(), RunCounts::default(), detail));
    }
    let mut counts = RunCounts::default();
    // Exports go in chunks (a connector may send a chunk in one request); results are applied
    // in order, each object on its own.
    let mut queue: Vec<(CsObject, PendingExport)> = Vec::new();
    for cs in pending {
        let Some(change) = cs.pending_export.clone() else { continue };
        if change == PendingExport::Delete && cs.anchor.is_none() {
            // Never created in the directory: nothing to delete there.
            runner.store.cs_delete(cs.id).await?;
            continue;
        }
        queue.push((cs, change));
    }
    // Deletes go first (all of them), so an add that reuses a deleted object's unique values
    // (a UPN, an address) finds them free; within each phase several chunks are in flight.
    runner.progress.total(queue.len() as u64);
    let (deletes, others): (Vec<_>, Vec<_>) = queue.into_iter().partition(|(_, change)| *change == PendingExport::Delete);
    let concurrency = runner.config.export_concurrency.max(1);
    for phase in [deletes, others] {
        let mut chunks = phase.chunks(EXPORT_CHUNK);
        let mut in_flight = futures_util::stream::FuturesOrdered::new();
        let mut failure = None;
        loop {
            // Keep `concurrency` chunks in flight until a failure; after one, start no more.
            while failure.is_none() && in_flight.len() < concurrency {
                let Some(chunk) = chunks.next() else { break };
                let requests: Vec<ExportRequest> = chunk
                    .iter()
                    .map(|(cs, change)| ExportRequest {
                        dn: cs.dn.clone(),
                        object_type: cs.object_type.clone(),
                        anchor: cs.anchor.clone(),
                        change: change.clone(),
                    })
                    .collect();
                in_flight.push_back(async move { (chunk, export.export_many(&requests).await) });
            }
            // Every result is recorded, in order (what reached the directory must reach the
            // store), and the chunks in flight finish, before a failure of the step is reported.
            let Some((chunk, outcomes)) = in_flight.next().await else { break };
            runner.progress.advanced(chunk.len() as u64);
            for ((cs, change), result) in chunk.iter().cloned().zip(outcomes) {
                if let Err(err) = apply_result(runner, id, cs, change, result, &mut counts).await {
                    failure.get_or_insert(err);
                }
            }
        }
        if let Some(err) = failure {
            return Err(err);
        }
    }
    let status = if counts.errors > 0 { "completed-errors" } else { "success" };
    Ok((status.into(), counts, format!("{} exported, {} rejected", counts.adds + counts.updates + counts.deletes, counts.errors)))
}

/// Most exports handed to a connector at once (Graph's `$batch` limit).
const EXPORT_CHUNK: usize = 20;

/// Records what one export did to its connector-space object.
async fn apply_result<S: Store>(
    runner: &Runner<S>,
    id: &ConnectorId,
    mut cs: CsObject,
    change: PendingExport,
    result: Result<connector_api::ExportOutcome, ConnectorError>,
    counts: &mut RunCounts,
) -> Result<(), RunnerError> {
    match result {
        Ok(outcome) => {
            match change {
                PendingExport::Delete => {
                    runner.store.cs_delete(cs.id).await?;
                    counts.deletes += 1;
                    return Ok(());
                }
                PendingExport::Add(changes) => {
                    if let Some(anchor) = &outcome.anchor
                        && let Some(other) = runner.store.cs_by_anchor(id, anchor).await?
                        && other.id != cs.id
                    {
                        // The directory matched the add to an object it already had (a
                        // cloud soft or hard match). An unjoined copy in the connector space
                        // gives way; one joined elsewhere is this object's error.
                        if other.link.is_none() {
                            tracing::info!(connector = %id, dn = cs.dn, matched = other.dn, "the directory matched the add to an existing object");
                            runner.store.cs_delete(other.id).await?;
                        } else {
                            let message = format!(
                                "the directory matched this add to {}, which is already joined to another metaverse object",
                                other.dn
                            );
                            cs.error = Some(ObjectError { stage: ErrorStage::Export, code: "matched-joined-object".into(), message });
                            runner.store.cs_update(&cs).await?;
                            counts.errors += 1;
                            return Ok(());
                        }
                    }
                    if outcome.anchor.is_some() {
                        cs.anchor = outcome.anchor;
                    }
                    cs.attributes.apply(&changes);
                    counts.adds += 1;
                }
                PendingExport::Update(changes) => {
                    cs.attributes.apply(&changes);
                    counts.updates += 1;
                }
                PendingExport::Rename { new_dn, changes } => {
                    cs.dn = new_dn;
                    cs.attributes.apply(&changes);
                    counts.updates += 1;
                }
            }
            cs.pending_export = None;
            cs.error = None;
            runner.store.cs_update(&cs).await?;
        }
        Err(ConnectorError::Rejected { code, message }) => {
            tracing::warn!(connector = %id, dn = cs.dn, code, "export rejected");
            cs.error = Some(ObjectError { stage: ErrorStage::Export, code, message });
            runner.store.cs_update(&cs).await?;
            counts.errors += 1;
        }
        Err(source) => return Err(RunnerError::Connector { connector: id.0.clone(), source }),
    }
    Ok(())
}
