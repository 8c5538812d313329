//! Password checks against Active Directory by LDAP simple bind, for pass-through agents: the
//! user's own bind over LDAPS (the DC enforces the account's state at that moment: disabled,
//! locked, expired, logon hours, "Log On To"), its result read into a [`pta::Outcome`] through
//! the `data` code of AD's diagnostic. Several DCs, tried in turn from the last one that
//! answered; connections are kept (a bind on a kept connection re-authenticates it) so a check
//! costs one round trip, not a TLS handshake.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use connector_api::ConnectorError;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings};

/// Connections kept per DC.
const KEEP: usize = 32;

/// Checks passwords against a list of domain controllers.
pub struct PasswordChecker {
    dcs: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    idle: Vec<std::sync::Mutex<Vec<Ldap>>>,
    preferred: AtomicUsize,
}

impl PasswordChecker {
    /// `dcs`: `ldaps://` URLs (the password is in the bind, so nothing else is accepted);
    /// `ca_file`: the CA the DCs' certificates chain to.
    pub fn new(dcs: Vec<String>, ca_file: &Path, timeout: Duration) -> Result<Self, ConnectorError> {
        if dcs.is_empty() {
            return Err(ConnectorError::Config("name at least one domain controller (--dc ldaps://…)".into()));
        }
        if let Some(bad) = dcs.iter().find(|url| !url.starts_with("ldaps://")) {
            return Err(ConnectorError::Config(format!(
                "{bad}: domain controllers are reached over LDAPS only (passwords are sent in the bind)"
            )));
        }
        let tls = crate::session::client_config(ca_file)?;
        let idle = dcs.iter().map(|_| std::sync::Mutex::new(Vec::new())).collect();
        Ok(PasswordChecker { dcs, tls: Some(tls), timeout, idle, preferred: AtomicUsize::new(0) })
    }

    /// Checks `password` for `user` (a userPrincipalName or `DOMAIN\sam`). Returns the outcome
    /// and, for the log, which DC said it (or why none could).
    pub async fn check(&self, user: &str, password: &str) -> (pta::Outcome, String) {
        // An empty password makes a simple bind unauthenticated, which AD accepts: never bind.
        if password.is_empty() || user.trim().is_empty() {
            return (pta::Outcome::BadPassword, "empty user or password (not sent to a DC)".into());
        }
        let start = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for step in 0..self.dcs.len() {
            let index = (start + step) % self.dcs.len();
            let url = &self.dcs[index];
            let mut ldap = match self.take(index).await {
                Ok(ldap) => ldap,
                Err(err) => {
                    failures.push(format!("{url}: {err}"));
                    continue;
                }
            };
            match ldap.with_timeout(self.timeout).simple_bind(user, password).await {
                Ok(result) => {
                    let outcome = pta::Outcome::from_bind(result.rc, &result.text);
                    if outcome == pta::Outcome::DcUnreachable {
                        failures.push(format!("{url}: {} ({})", result.text.trim(), result.rc));
                        continue;
                    }
                    self.keep(index, ldap);
                    self.preferred.store(index, Ordering::Relaxed);
                    return (outcome, format!("{url}: result {}", result.rc));
                }
                Err(err) => failures.push(format!("{url}: {err}")),
            }
        }
        (pta::Outcome::DcUnreachable, failures.join("; "))
    }

    async fn take(&self, index: usize) -> Result<Ldap, String> {
        loop {
            let kept = self.idle[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
            match kept {
                Some(mut ldap) => {
                    if !ldap.is_closed() {
                        return Ok(ldap);
                    }
                }
                None => break,
            }
        }
        let mut settings = LdapConnSettings::new().set_conn_timeout(self.timeout);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.dcs[index]).await.map_err(|err| err.to_string())?;
        ldap3::drive!(conn);
        Ok(ldap)
    }

    fn keep(&self, index: usize, ldap: Ldap) {
        let mut idle = self.idle[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < KEEP {
            idle.push(ldap);
        }
    }
}
