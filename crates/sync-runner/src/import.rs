//! Import steps: pages from the connector into the connector space, each page committed with
//! its watermark; a full import (or a delta that named everything in scope) ends by obsoleting
//! what it did not see, and only then stores its last watermark.
//!
//! The next page is read while the current one is committed (the directory server and the
//! connector's reader work beside the store); a page is still committed before the next one is,
//! so a crash leaves the same state as with one page at a time.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::Poll;

use connector_api::{ConnectorError, ImportPage};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use model::ConnectorId;
use store::{RunCounts, Store};

use crate::{Runner, RunnerError};

type PageResult = Result<ImportPage, ConnectorError>;

/// A page being read: still in flight, or already here.
enum Reading<'a> {
    InFlight(BoxFuture<'a, PageResult>),
    Read(PageResult),
}

impl Reading<'_> {
    async fn page(self) -> PageResult {
        match self {
            Reading::InFlight(future) => future.await,
            Reading::Read(page) => page,
        }
    }
}

/// Runs `work` to its end while the read of the next page goes on beside it (polled first, so
/// that its request leaves before `work` holds the thread).
async fn beside<T>(work: impl Future<Output = T>, next: &mut Option<Reading<'_>>) -> T {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        if let Some(Reading::InFlight(future)) = next
            && let Poll::Ready(page) = Pin::new(future).poll(cx)
        {
            *next = Some(Reading::Read(page));
        }
        work.as_mut().poll(cx)
    })
    .await
}

pub(crate) async fn run<S: Store>(
    runner: &Runner<S>,
    id: &ConnectorId,
    run: i64,
    full: bool,
) -> Result<(crate::StepStatus, RunCounts, String), RunnerError> {
    let connector = runner.connector(id)?;
    let watermark = if full { None } else { runner.store.watermark(id).await? };
    let mut full = full || watermark.is_none();
    let mut counts = RunCounts::default();
    let mut pages = 0u64;
    let mut unchanged = 0u64;
    let mut missed = 0u64;
    let mut complete = false;
    // Held back until the sweep is done when the import sweeps (see below).
    let mut last_watermark: Option<Vec<u8>> = None;
    'restart: loop {
        let read = |cursor: Option<Vec<u8>>, full: bool| -> BoxFuture<'_, PageResult> {
            let watermark = watermark.as_deref();
            async move {
                match (watermark, full) {
                    (Some(watermark), false) => connector.import.delta_page(watermark, cursor.as_deref()).await,
                    _ => connector.import.full_page(cursor.as_deref()).await,
                }
            }
            .boxed()
        };
        let mut next = Some(Reading::InFlight(read(None, full)));
        while let Some(reading) = next.take() {
            let page = match reading.page().await {
                Ok(page) => page,
                Err(ConnectorError::WatermarkExpired(why)) if !full => {
                    tracing::warn!(connector = %id, why, "watermark expired; running a full import instead");
                    full = true;
                    continue 'restart;
                }
                Err(source) => return Err(RunnerError::Connector { connector: id.0.clone(), source }),
            };
            complete |= page.complete;
            // The last page of a sweeping import stores its watermark after the sweep: were the
            // process stopped between the two, the next run must not start past deletes it never saw.
            let sweeps = page.next.is_none() && (full || complete);
            let watermark = if sweeps {
                last_watermark = page.watermark.clone();
                None
            } else {
                page.watermark.as_deref()
            };
            next = page.next.clone().map(|cursor| Reading::InFlight(read(Some(cursor), full)));
            let page_counts = beside(runner.store.commit_import_page(id, run, &page.changes, watermark), &mut next).await?;
            runner.progress.advanced(page.changes.len() as u64);
            counts.adds += page_counts.adds;
            counts.updates += page_counts.updates;
            counts.deletes += page_counts.deletes;
            unchanged += page_counts.unchanged;
            missed += page_counts.missed;
            pages += 1;
            tracing::info!(connector = %id, pages, adds = counts.adds, updates = counts.updates, deletes = counts.deletes, "import progress");
        }
        break;
    }
    let mut detail = format!("{} import, {pages} pages, {unchanged} unchanged", if full { "full" } else { "delta" });
    if full || complete {
        let obsoleted = runner.store.obsolete_unseen(id, run).await?;
        counts.deletes += obsoleted;
        detail.push_str(&format!(", {obsoleted} not seen (pending delete)"));
        if let Some(watermark) = &last_watermark {
            runner.store.commit_import_page(id, run, &[], Some(watermark)).await?;
        }
    }
    if missed > 0 {
        // The delta spoke of objects the connector space does not hold: it and the directory
        // disagree. Forget the watermark so that the next import is a full one and heals it.
        tracing::warn!(connector = %id, missed, "delta changes for objects not in the connector space; the next import will be a full import");
        runner.store.clear_watermark(id).await?;
        detail.push_str(&format!(", {missed} missed (next import: full)"));
    }
    Ok((crate::StepStatus::Success, counts, detail))
}
