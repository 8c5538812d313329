//! The scheduler: an initial cycle, then a delta cycle every interval (Entra's default: 30
//! minutes), until shutdown. A failed cycle is logged and retried at the next tick.

use std::time::Duration;

use store::Store;

use crate::Runner;

/// Entra's default cycle interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// Runs cycles until `shutdown` resolves; returns how many cycles ran.
pub async fn run<S: Store>(runner: &Runner<S>, interval: Duration, shutdown: impl std::future::Future<Output = ()>) -> u64 {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cycles = 0u64;
    loop {
        tokio::select! {
            _ = &mut shutdown => return cycles,
            _ = ticker.tick() => {
                let initial = cycles == 0;
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
    }
}
