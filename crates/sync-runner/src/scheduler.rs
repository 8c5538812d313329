//! The scheduler: an initial cycle, then a delta cycle every interval (Entra's default: 30
//! minutes), plus cycles on demand, until shutdown. A failed cycle is logged and retried at the
//! next tick. On-demand requests that arrive while a cycle runs are merged into one next cycle.

use std::time::Duration;

use store::Store;
use tokio::sync::mpsc;

use crate::Runner;

/// Entra's default cycle interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// A request for a cycle now (`isthmus sync run` against a running scheduler, an admin button).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleRequest {
    /// A full ("initial") cycle rather than a delta one.
    pub initial: bool,
}

/// Runs cycles until `shutdown` resolves; returns how many cycles ran.
pub async fn run<S: Store>(
    runner: &Runner<S>,
    interval: Duration,
    mut requests: mpsc::Receiver<CycleRequest>,
    shutdown: impl std::future::Future<Output = ()>,
) -> u64 {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cycles = 0u64;
    let mut requests_open = true;
    loop {
        let initial = tokio::select! {
            _ = &mut shutdown => return cycles,
            _ = ticker.tick() => cycles == 0,
            request = requests.recv(), if requests_open => match request {
                Some(request) => {
                    // Merge requests that queued up: one cycle serves them all.
                    let mut initial = request.initial || cycles == 0;
                    while let Ok(more) = requests.try_recv() {
                        initial |= more.initial;
                    }
                    initial
                }
                None => {
                    requests_open = false;
                    continue;
                }
            },
        };
        match runner.run_cycle(initial).await {
            Ok(reports) => {
                let errors: u64 = reports.iter().map(|report| report.counts.errors).sum();
                tracing::info!(cycle = cycles + 1, initial, steps = reports.len(), errors, "cycle finished");
            }
            Err(err) => tracing::error!(cycle = cycles + 1, "cycle failed: {err}"),
        }
        cycles += 1;
    }
}
