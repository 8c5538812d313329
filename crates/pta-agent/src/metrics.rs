//! The agent's metrics (`prometheus-client` families): password checks by outcome and how long
//! each took, kept by [`Measured`], a [`PasswordCheck`] around the injected one. Labels are
//! outcome names, never a user or a password. The binary registers them in the registry its
//! metrics listener serves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::PasswordCheck;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The agent's metric families.
#[derive(Debug)]
pub struct AgentMetrics {
    checks: Family<OutcomeLabels, Counter>,
    seconds: Histogram,
}

impl AgentMetrics {
    /// Registers the families in `registry` (names prefixed `isthmus_pta_agent_`).
    pub fn register(registry: &mut Registry) -> Arc<AgentMetrics> {
        // From 5 ms to about 20 s (a bind to a DC, failover included).
        let metrics = Arc::new(AgentMetrics { checks: Family::default(), seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)) });
        let agent = registry.sub_registry_with_prefix("isthmus_pta_agent");
        agent.register(
            "checks",
            "Password checks answered, by outcome (valid, badPassword, lockedOut, dcUnreachable …)",
            metrics.checks.clone(),
        );
        agent.register_with_unit(
            "check_duration",
            "How long the on-premises password check took",
            prometheus_client::registry::Unit::Seconds,
            metrics.seconds.clone(),
        );
        metrics
    }
}

/// The injected password check, measured.
pub struct Measured {
    /// The check itself.
    pub inner: Arc<dyn PasswordCheck>,
    /// Where its outcomes go.
    pub metrics: Arc<AgentMetrics>,
}

impl PasswordCheck for Measured {
    fn check<'a>(&'a self, user: &'a str, password: &'a str) -> Pin<Box<dyn Future<Output = (pta::Outcome, String)> + Send + 'a>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let (outcome, detail) = self.inner.check(user, password).await;
            self.metrics.seconds.observe(started.elapsed().as_secs_f64());
            self.metrics.checks.get_or_create(&OutcomeLabels { outcome: outcome.name() }).inc();
            (outcome, detail)
        })
    }
}
