//! Export steps: pending exports to the connected directory, unless staging mode holds them or
//! the accidental-delete threshold stops the whole export.

use connector_api::{ConnectorError, ExportRequest, Unapplied, UnappliedReason};
use futures_util::StreamExt as _;
use model::{AttrChange, AttrValue, Attributes, ConnectorId, CsObject, ErrorStage, ObjectError, PendingExport, PendingImport};
use store::{CsQuery, ExportKind, RunCounts, Store};

use crate::{Runner, RunnerError};

const PAGE: usize = 1000;

pub(crate) async fn run<S: Store>(runner: &Runner<S>, id: &ConnectorId) -> Result<(crate::StepStatus, RunCounts, String), RunnerError> {
    let connector = runner.connector(id)?;
    let Some(export) = &connector.export else {
        return Err(RunnerError::Unsupported { connector: id.0.clone(), step: "export", why: "it is read-only".into() });
    };
    // Planned from summaries (kind and whether the object exists there); the changes are read
    // page by page as they go out, so memory does not grow with the backlog.
    let pending = runner.store.cs_pending_exports(id).await?;
    let mut planned = RunCounts::default();
    for summary in &pending {
        match summary.kind {
            ExportKind::Add => planned.adds += 1,
            ExportKind::Delete => planned.deletes += 1,
            ExportKind::Update | ExportKind::Rename => planned.updates += 1,
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
        return Ok((crate::StepStatus::StagingNoExport, planned, detail));
    }
    if let Some(threshold) = runner.deletion_threshold()
        && planned.deletes > threshold
        && !runner.deletes_allowed_once.swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        tracing::warn!(connector = %id, deletes = planned.deletes, threshold, "accidental-delete threshold exceeded; nothing exported");
        let detail = format!(
            "{} pending deletes exceed the threshold of {threshold}; nothing was exported. Review them with `isthmus plan`, then run `isthmus sync run --allow-deletes` once (the approval is used up by that export)",
            planned.deletes
        );
        return Ok((crate::StepStatus::StoppedDeletionThreshold, RunCounts::default(), detail));
    }
    let mut counts = RunCounts::default();
    let mut deletes = Vec::new();
    for summary in pending.iter().filter(|summary| summary.kind == ExportKind::Delete) {
        if summary.anchored {
            deletes.push(summary.id);
        } else {
            // Never created in the directory: nothing to delete there.
            runner.store.cs_delete(summary.id).await?;
        }
    }
    runner.progress.total((deletes.len() + pending.iter().filter(|summary| summary.kind != ExportKind::Delete).count()) as u64);
    // Deletes go first (all of them), so an add that reuses a deleted object's unique values
    // (a UPN, an address) finds them free; then the rest, a page at a time.
    for ids in deletes.chunks(PAGE) {
        let mut queue = Vec::new();
        for cs_id in ids {
            if let Some(cs) = runner.store.cs_get(*cs_id).await?
                && let Some(change @ PendingExport::Delete) = cs.pending_export.clone()
            {
                queue.push((cs, change));
            }
        }
        export_queue(runner, id, export.as_ref(), &queue, &mut counts).await?;
    }
    let mut after = None;
    loop {
        let page = runner.store.cs_list(id, &CsQuery { pending_export: true, after, limit: PAGE, ..CsQuery::default() }).await?;
        after = page.last().map(|cs| cs.id);
        let done = page.len() < PAGE;
        let queue: Vec<(CsObject, PendingExport)> = page
            .into_iter()
            .filter_map(|cs| match cs.pending_export.clone() {
                // A delete the first phase did not manage stays for the next run.
                Some(PendingExport::Delete) | None => None,
                Some(change) => Some((cs, change)),
            })
            .collect();
        export_queue(runner, id, export.as_ref(), &queue, &mut counts).await?;
        if done {
            break;
        }
    }
    Ok((
        crate::status_of(counts),
        counts,
        format!("{} exported, {} rejected", counts.adds + counts.updates + counts.deletes, counts.errors),
    ))
}

/// Exports `queue` in chunks, several in flight (a connector may send a chunk in one request);
/// results are recorded in order, each object on its own. After a failure no new chunk
/// starts, those in flight are recorded, and the failure is returned.
async fn export_queue<S: Store>(
    runner: &Runner<S>,
    id: &ConnectorId,
    export: &dyn connector_api::Export,
    queue: &[(CsObject, PendingExport)],
    counts: &mut RunCounts,
) -> Result<(), RunnerError> {
    let concurrency = runner.config.export_concurrency.max(1);
    let mut chunks = queue.chunks(EXPORT_CHUNK);
    let mut in_flight = futures_util::stream::FuturesOrdered::new();
    let mut failure = None;
    loop {
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
        // One chunk's results are one unit of work (each object's record still on its own
        // within it: a failed one does not undo the others).
        runner.store.begin_unit().await?;
        for ((cs, change), result) in chunk.iter().cloned().zip(outcomes) {
            if let Err(err) = apply_result(runner, id, cs, change, result, counts).await {
                failure.get_or_insert(err);
            }
        }
        runner.store.commit_unit().await?;
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Most exports handed to a connector at once (Graph's `$batch` limit).
const EXPORT_CHUNK: usize = 20;

/// The attributes after an export that applied `changes` except `left`: what the directory
/// holds now, as far as the export knows. A value of an `Add` left out is not there; a value of
/// a `Delete` left out is still there; an attribute of a `Replace` or `Clear` left out keeps
/// its earlier values.
fn applied(before: &Attributes, changes: &[AttrChange], left: &[AttrChange]) -> Attributes {
    let mut after = before.clone();
    after.apply(changes);
    for change in left {
        match change {
            AttrChange::Add(name, values) => after.apply(&[AttrChange::Delete(name.clone(), values.clone())]),
            AttrChange::Delete(name, values) => {
                let still: Vec<AttrValue> = values.iter().filter(|value| before.get(name).contains(value)).cloned().collect();
                after.apply(&[AttrChange::Add(name.clone(), still)]);
            }
            AttrChange::Replace(name, _) | AttrChange::Clear(name) => {
                let earlier = before.get(name).to_vec();
                if earlier.is_empty() {
                    after.apply(&[AttrChange::Clear(name.clone())]);
                } else {
                    after.set(name.clone(), earlier);
                }
            }
        }
    }
    after
}

/// Records what one export did to its connector-space object: only what the directory
/// confirmed; what it left stays pending (and visible).
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
            let left = outcome.left.clone();
            let left_changes = left.as_ref().map_or(&[][..], |left| left.changes.as_slice());
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
                            tracing::info!(connector = %id, dn = cs.dn, name = cs.label(), matched = other.dn, "the directory matched the add to an existing object");
                            runner.store.cs_delete(other.id).await?;
                        } else {
                            let message = format!(
                                "the directory matched this add to {}, which is already joined to another metaverse object",
                                other.dn
                            );
                            cs.error = Some(ObjectError {
                                stage: ErrorStage::Export,
                                code: "matched-joined-object".into(),
                                message,
                                target: None,
                            });
                            runner.store.cs_update(&cs).await?;
                            counts.errors += 1;
                            return Ok(());
                        }
                    }
                    if outcome.anchor.is_some() {
                        cs.anchor = outcome.anchor;
                    }
                    cs.attributes = applied(&cs.attributes, &changes, left_changes);
                    counts.adds += 1;
                }
                PendingExport::Update(changes) => {
                    cs.attributes = applied(&cs.attributes, &changes, left_changes);
                    counts.updates += 1;
                }
                PendingExport::Rename { new_dn, changes } => {
                    cs.dn = new_dn;
                    cs.attributes = applied(&cs.attributes, &changes, left_changes);
                    counts.updates += 1;
                }
            }
            cs.pending_export = None;
            cs.error = None;
            let mut stop = None;
            if let Some(Unapplied { changes: rest, reason }) = left {
                // What is left stays pending, and the next sync of the object computes it
                // again from current values (a reference then names the created object).
                cs.pending_export = Some(PendingExport::Update(rest));
                if cs.pending_import.is_none() {
                    cs.pending_import = Some(PendingImport::Update);
                }
                match reason {
                    UnappliedReason::WaitingForReferences => {
                        tracing::debug!(connector = %id, dn = cs.dn, "references left for a later cycle");
                    }
                    UnappliedReason::Failed(ConnectorError::Rejected { code, message }) => {
                        tracing::warn!(connector = %id, dn = cs.dn, name = cs.label(), code, "export applied in part");
                        let message = format!("exported in part; the rest stays pending: {message}");
                        cs.error = Some(ObjectError { stage: ErrorStage::Export, code, message, target: None });
                        counts.errors += 1;
                    }
                    UnappliedReason::Failed(source) => {
                        tracing::warn!(connector = %id, dn = cs.dn, name = cs.label(), "export applied in part: {source}");
                        stop = Some(RunnerError::Connector { connector: id.0.clone(), source });
                    }
                }
            }
            runner.store.cs_update(&cs).await?;
            if let Some(err) = stop {
                return Err(err);
            }
        }
        Err(ConnectorError::Rejected { code, message }) => {
            tracing::warn!(connector = %id, dn = cs.dn, name = cs.label(), code, "export rejected");
            cs.error = Some(ObjectError { stage: ErrorStage::Export, code, message, target: None });
            runner.store.cs_update(&cs).await?;
            counts.errors += 1;
        }
        Err(source) => return Err(RunnerError::Connector { connector: id.0.clone(), source }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(names: &[&str]) -> Vec<AttrValue> {
        names.iter().map(|name| AttrValue::Reference((*name).into())).collect()
    }

    #[test]
    fn applied_keeps_only_what_the_directory_took() {
        let mut before = Attributes::new();
        before.set("members", refs(&["a", "b", "x"]));
        before.set("displayName", vec![AttrValue::string("old")]);
        let changes = vec![
            AttrChange::Replace("members".into(), refs(&["a", "b", "c", "d"])),
            AttrChange::Replace("displayName".into(), vec![AttrValue::string("new")]),
            AttrChange::Replace("mail".into(), vec![AttrValue::string("m@example.com")]),
        ];
        // c was not added, x not removed, the mail not written.
        let left = vec![
            AttrChange::Add("members".into(), refs(&["c"])),
            AttrChange::Delete("members".into(), refs(&["x"])),
            AttrChange::Clear("mail".into()),
        ];
        let after = applied(&before, &changes, &left);
        let mut members: Vec<String> = after.get("members").iter().map(ToString::to_string).collect();
        members.sort();
        assert_eq!(members, ["a", "b", "d", "x"]);
        assert_eq!(after.get("displayName"), [AttrValue::string("new")]);
        assert!(after.get("mail").is_empty(), "the mail was never written");
        // Nothing left: everything asked for.
        let all = applied(&before, &changes, &[]);
        assert_eq!(all.get("members").len(), 4);
        // A Delete left for a value that was not there before adds nothing.
        let after =
            applied(&before, &[AttrChange::Delete("members".into(), refs(&["q"]))], &[AttrChange::Delete("members".into(), refs(&["q"]))]);
        assert_eq!(after.get("members").len(), 3);
        // A Replace left keeps the earlier values.
        let after = applied(&before, &changes, &[AttrChange::Replace("displayName".into(), vec![])]);
        assert_eq!(after.get("displayName"), [AttrValue::string("old")]);
    }
}
