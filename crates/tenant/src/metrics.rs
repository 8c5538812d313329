//! The tenant's metrics (`prometheus-client` families), kept as requests are served and
//! registered by the binary in the registry its metrics listener serves: token requests by
//! grant and outcome, sign-in failures by AADSTS code (50053 is a locked account, 50126 a wrong
//! password), password hash sync calls, credentials and the last heartbeat, sync reports.
//! Labels are grant names, OAuth error names and codes from this crate, never request data.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    grant: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    code: u32,
}

/// The tenant's metric families.
#[derive(Debug, Default)]
pub struct TenantMetrics {
    tokens: Family<TokenLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    password_sync_calls: Counter,
    password_sync_credentials: Counter,
    password_sync_last: Gauge,
    sync_reports: Counter,
}

/// The grants the token endpoint knows, as label values (anything else: `unsupported`).
const GRANTS: [&str; 4] = ["client_credentials", "password", "refresh_token", "authorization_code"];

impl TenantMetrics {
    /// Registers the families in `registry` (names prefixed `isthmus_tenant_`).
    pub fn register(&self, registry: &mut Registry) {
        let tenant = registry.sub_registry_with_prefix("isthmus_tenant");
        tenant.register(
            "token_requests",
            "Token endpoint requests, by grant and outcome (issued, or the OAuth error)",
            self.tokens.clone(),
        );
        tenant.register(
            "sign_in_failures",
            "Refused token requests by AADSTS code (50053: account locked; 50126: wrong credentials)",
            self.failures.clone(),
        );
        tenant.register(
            "password_sync_calls",
            "Password hash sync calls (a call without credentials is the heartbeat)",
            self.password_sync_calls.clone(),
        );
        tenant.register("password_sync_credentials", "Credentials password hash sync sent", self.password_sync_credentials.clone());
        tenant.register_with_unit(
            "password_sync_last_call",
            "When password hash sync last called, Unix seconds (0: not since the tenant started)",
            prometheus_client::registry::Unit::Seconds,
            self.password_sync_last.clone(),
        );
        tenant.register("sync_reports", "Cycle reports received from sync servers", self.sync_reports.clone());
    }

    /// A token request ended: issued, or refused with `error` and AADSTS `code`.
    pub(crate) fn token(&self, grant: &str, refused: Option<(&'static str, u32)>) {
        let grant = GRANTS.into_iter().find(|known| *known == grant).unwrap_or("unsupported");
        match refused {
            None => {
                self.tokens.get_or_create(&TokenLabels { grant, outcome: "issued" }).inc();
            }
            Some((error, code)) => {
                self.tokens.get_or_create(&TokenLabels { grant, outcome: error }).inc();
                self.failures.get_or_create(&FailureLabels { code }).inc();
            }
        }
    }

    /// Password hash sync called with `credentials` items at `now`.
    pub(crate) fn password_sync(&self, credentials: usize, now: i64) {
        self.password_sync_calls.inc();
        self.password_sync_credentials.inc_by(credentials as u64);
        self.password_sync_last.set(now);
    }

    /// A sync server reported a cycle.
    pub(crate) fn sync_report(&self) {
        self.sync_reports.inc();
    }
}
