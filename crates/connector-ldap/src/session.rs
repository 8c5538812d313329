//! One LDAP connection per connector, opened on first use, verified TLS, bound, and reopened
//! after it breaks; plus the search shapes the connector needs (a page, a base read with
//! attribute range retrieval) and the mapping of LDAP results onto [`ConnectorError`].

use std::sync::Arc;
use std::time::Duration;

use connector_api::ConnectorError;
use ldap3::controls::{PagedResults, RawControl};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapResult, Scope, SearchEntry};

use crate::ber::{self, Item};
use crate::config::{Bind, LdapConfig, Transport};

/// The simple paged results control (RFC 2696).
const PAGED_OID: &str = "1.2.840.113556.1.4.319";

/// The connection of one connector.
pub(crate) struct Session {
    pub config: Arc<LdapConfig>,
    tls: Option<Arc<rustls::ClientConfig>>,
    ldap: tokio::sync::Mutex<Option<Ldap>>,
}

impl Session {
    /// Checks the settings and loads the CA; does not connect yet.
    pub fn new(config: LdapConfig) -> Result<Self, ConnectorError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConnectorError::Config(format!("connector {}: {}", config.id, problems.join("; "))));
        }
        let tls = match &config.ca_file {
            Some(path) => Some(client_config(path)?),
            None => None,
        };
        if config.danger_accept_invalid_certs {
            tracing::warn!(connector = %config.id, "TLS certificate verification is OFF (danger_accept_invalid_certs)");
        }
        if config.transport == Transport::DangerPlaintext {
            tracing::warn!(connector = %config.id, "LDAP traffic is NOT encrypted (transport = danger-plaintext)");
        }
        Ok(Session { config: Arc::new(config), tls, ldap: tokio::sync::Mutex::new(None) })
    }

    /// How long one operation may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.timeout_seconds)
    }

    /// A handle on the open, bound connection (opening it if needed).
    pub async fn ldap(&self) -> Result<Ldap, ConnectorError> {
        let mut slot = self.ldap.lock().await;
        if let Some(ldap) = slot.as_mut()
            && !ldap.is_closed()
        {
            return Ok(ldap.clone());
        }
        let ldap = self.connect().await?;
        *slot = Some(ldap.clone());
        Ok(ldap)
    }

    /// Drops the connection (after a transport error) so that the next call opens a new one.
    pub async fn forget(&self) {
        if let Some(mut ldap) = self.ldap.lock().await.take() {
            let _ = ldap.unbind().await;
        }
    }

    async fn connect(&self) -> Result<Ldap, ConnectorError> {
        let config = &self.config;
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(Duration::from_secs(config.timeout_seconds.min(30)))
            .set_starttls(config.transport == Transport::StartTls)
            .set_no_tls_verify(config.danger_accept_invalid_certs);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let url = config.url();
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &url)
            .await
            .map_err(|err| ConnectorError::Unavailable(format!("cannot connect to {url}: {err}")))?;
        ldap3::drive!(conn);
        let bound = match &config.bind {
            Bind::Anonymous => None,
            Bind::Simple { dn, password } => Some((dn.as_str(), ldap.with_timeout(self.timeout()).simple_bind(dn, password).await)),
            Bind::SaslExternal => Some(("SASL EXTERNAL", ldap.with_timeout(self.timeout()).sasl_external_bind().await)),
        };
        if let Some((who, result)) = bound {
            let result = result.map_err(|err| ConnectorError::Unavailable(format!("bind to {url}: {err}")))?;
            if result.rc != 0 {
                return Err(ConnectorError::Config(format!("{url} refused the bind as {who}: {} ({})", result.text.trim(), result.rc)));
            }
        }
        tracing::debug!(connector = %config.id, url, "connected");
        Ok(ldap)
    }

    /// One search request (one page when `controls` hold a paging control).
    pub async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: &[String],
        controls: Vec<RawControl>,
    ) -> Result<(Vec<SearchEntry>, LdapResult), ConnectorError> {
        let (entries, result) = self.search_raw(base, scope, filter, attributes, controls).await?;
        if result.rc != 0 {
            return Err(search_error(base, &result));
        }
        let entries = entries.into_iter().filter(|entry| !entry.is_ref() && !entry.is_intermediate()).map(SearchEntry::construct).collect();
        Ok((entries, result))
    }

    /// One page of a paged subtree or one-level search from `cookie` (empty: the first page);
    /// the entries and the cookie of the next page (empty after the last).
    pub async fn search_page(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: &[String],
        cookie: Vec<u8>,
    ) -> Result<(Vec<SearchEntry>, Vec<u8>), ConnectorError> {
        let control: RawControl = PagedResults { size: self.config.page_size as i32, cookie }.into();
        let (entries, result) = self.search(base, scope, filter, attributes, vec![control]).await?;
        Ok((entries, paged_cookie(&result)?.unwrap_or_default()))
    }

    /// Every entry of a paged search (for bounded reads: a subtree, the schema).
    pub async fn search_all(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: &[String],
    ) -> Result<Vec<SearchEntry>, ConnectorError> {
        let mut all = Vec::new();
        let mut cookie = Vec::new();
        loop {
            let (entries, next) = self.search_page(base, scope, filter, attributes, cookie).await?;
            all.extend(entries);
            if next.is_empty() {
                return Ok(all);
            }
            cookie = next;
        }
    }

    /// The outcome of a write: done, refused by the server (a per-object error), or the
    /// connection lost (forgotten, so the next call reconnects).
    pub async fn check(&self, operation: &str, outcome: ldap3::result::Result<LdapResult>) -> Result<(), ConnectorError> {
        match outcome {
            Ok(result) if result.rc == 0 => Ok(()),
            Ok(result) => Err(result_error(operation, &result)),
            Err(err) => Err(self.lost(format!("{operation}: {err}")).await),
        }
    }

    /// A call that failed on the wire: the connection is forgotten (the next call reconnects).
    async fn lost(&self, message: String) -> ConnectorError {
        self.forget().await;
        ConnectorError::Unavailable(message)
    }

    /// One search request as the server answered it: entries with their controls, intermediate
    /// messages and referrals, and the result whatever its code (a lost connection is an error).
    pub async fn search_raw(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: &[String],
        controls: Vec<RawControl>,
    ) -> Result<(Vec<ldap3::ResultEntry>, LdapResult), ConnectorError> {
        let mut ldap = self.ldap().await?;
        let timeout = self.timeout();
        // A stream without adapters: `Ldap::search` drops intermediate messages, which carry
        // content synchronization's Sync Info (deleted entryUUIDs among them).
        let outcome = async {
            let mut stream =
                ldap.with_controls(controls).with_timeout(timeout).streaming_search(base, scope, filter, attributes.to_vec()).await?;
            let mut entries = Vec::new();
            while let Some(entry) = stream.next().await? {
                entries.push(entry);
            }
            Ok::<_, ldap3::LdapError>((entries, stream.finish().await))
        }
        .await;
        match outcome {
            Ok(found) => Ok(found),
            Err(err) => Err(self.lost(format!("search {base}: {err}")).await),
        }
    }

    /// Reads one object, completing range-retrieved attributes; `None` when it does not exist.
    pub async fn read(&self, base: &str, filter: &str, attributes: &[String]) -> Result<Option<SearchEntry>, ConnectorError> {
        let entry = match self.search(base, Scope::Base, filter, attributes, Vec::new()).await {
            Ok((mut entries, _)) => entries.pop(),
            Err(ConnectorError::Rejected { code, .. }) if code == "no-such-object" => None,
            Err(err) => return Err(err),
        };
        match entry {
            Some(mut entry) => {
                self.complete_ranges(&mut entry).await?;
                Ok(Some(entry))
            }
            None => Ok(None),
        }
    }

    /// AD returns at most MaxValRange (1,500) values of a multi-valued attribute per read, as
    /// `member;range=0-1499`; this reads the rest (`member;range=1500-*` …) and files all values
    /// under the plain name.
    pub async fn complete_ranges(&self, entry: &mut SearchEntry) -> Result<(), ConnectorError> {
        let ranged: Vec<String> = entry.attrs.keys().chain(entry.bin_attrs.keys()).filter(|key| key.contains(";range=")).cloned().collect();
        for key in ranged {
            let Some((name, (_, mut high))) = parse_range(&key) else { continue };
            merge(entry, &key, name);
            let mut rounds = 0;
            while let Some(last) = high {
                rounds += 1;
                if rounds > 100_000 {
                    return Err(ConnectorError::Unavailable(format!("range retrieval of {name} on {} does not end", entry.dn)));
                }
                let wanted = [format!("{name};range={}-*", last + 1)];
                let (mut found, _) = self.search(&entry.dn, Scope::Base, "(objectClass=*)", &wanted, Vec::new()).await?;
                let Some(mut next) = found.pop() else { break };
                let Some(next_key) = next.attrs.keys().chain(next.bin_attrs.keys()).find(|key| parse_range(key).is_some()).cloned() else {
                    break;
                };
                high = parse_range(&next_key).and_then(|(_, (_, high))| high);
                if let Some(values) = next.attrs.remove(&next_key) {
                    entry.attrs.entry(name.to_string()).or_default().extend(values);
                }
                if let Some(values) = next.bin_attrs.remove(&next_key) {
                    entry.bin_attrs.entry(name.to_string()).or_default().extend(values);
                }
            }
        }
        Ok(())
    }
}

/// Moves the values under `key` (`member;range=0-1499`) to `name` (`member`).
fn merge(entry: &mut SearchEntry, key: &str, name: &str) {
    if let Some(values) = entry.attrs.remove(key) {
        entry.attrs.entry(name.to_string()).or_default().extend(values);
    }
    if let Some(values) = entry.bin_attrs.remove(key) {
        entry.bin_attrs.entry(name.to_string()).or_default().extend(values);
    }
}

/// `member;range=0-1499` → (`member`, (0, Some(1499))); `member;range=1500-*` → (…, None).
pub(crate) fn parse_range(key: &str) -> Option<(&str, (u64, Option<u64>))> {
    let (name, range) = key.split_once(";range=")?;
    let (low, high) = range.split_once('-')?;
    let low = low.parse().ok()?;
    let high = if high == "*" { None } else { Some(high.parse().ok()?) };
    Some((name, (low, high)))
}

/// The paged-results cookie of a search result; `None` on the last page.
fn paged_cookie(result: &LdapResult) -> Result<Option<Vec<u8>>, ConnectorError> {
    let Some(value) = result.ctrls.iter().find(|control| control.1.ctype == PAGED_OID).and_then(|control| control.1.val.as_deref()) else {
        return Ok(None);
    };
    match ber::read_sequence(value).map_err(|err| ConnectorError::Unavailable(format!("paged-results response: {err}")))?.as_slice() {
        [Item::Integer(_), Item::Bytes(cookie)] => Ok((!cookie.is_empty()).then(|| cookie.clone())),
        _ => Err(ConnectorError::Unavailable("paged-results response has an unexpected shape".into())),
    }
}

/// Maps a failed LDAP result onto what the runner does about it.
pub(crate) fn result_error(operation: &str, result: &LdapResult) -> ConnectorError {
    let message = format!("{operation}: {} (LDAP {})", result.text.trim(), result.rc);
    let code = match result.rc {
        // busy, unavailable, unwilling-to-perform-due-to-load … : try again next run.
        51 | 52 | 81 | 85 | 91 => return ConnectorError::Unavailable(message),
        8 | 13 | 48 | 49 => return ConnectorError::Config(message),
        68 => "already-exists",
        50 => "permission-denied",
        32 => "no-such-object",
        20 => "value-exists",
        16 => "no-such-attribute",
        17 | 18 | 19 | 21 | 34 | 64 | 65 | 67 | 69 => "schema-violation",
        53 => "unwilling-to-perform",
        66 => "not-allowed-on-non-leaf",
        _ => "ldap-error",
    };
    ConnectorError::Rejected { code: code.into(), message }
}

fn search_error(base: &str, result: &LdapResult) -> ConnectorError {
    result_error(&format!("search {base}"), result)
}

pub(crate) fn client_config(path: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, ConnectorError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |err: &dyn std::fmt::Display| ConnectorError::Config(format!("ca_file {}: {err}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|err| bad(&err))? {
        roots.add(cert.map_err(|err| bad(&err))?).map_err(|err| bad(&err))?;
    }
    if roots.is_empty() {
        return Err(bad(&"holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| bad(&err))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Values of one attribute of a raw entry, text or binary, under any capitalisation.
pub(crate) fn raw_values<'a>(entry: &'a SearchEntry, name: &str) -> Vec<&'a [u8]> {
    let text =
        entry.attrs.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name)).flat_map(|(_, values)| values.iter().map(String::as_bytes));
    let binary =
        entry.bin_attrs.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name)).flat_map(|(_, values)| values.iter().map(Vec::as_slice));
    text.chain(binary).collect()
}

/// Removes one attribute from a raw entry (any capitalisation), returning its values as bytes.
pub(crate) fn take_values(entry: &mut SearchEntry, name: &str) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    let keys: Vec<String> = entry.attrs.keys().filter(|key| key.eq_ignore_ascii_case(name)).cloned().collect();
    for key in keys {
        values.extend(entry.attrs.remove(&key).unwrap_or_default().into_iter().map(String::into_bytes));
    }
    let keys: Vec<String> = entry.bin_attrs.keys().filter(|key| key.eq_ignore_ascii_case(name)).cloned().collect();
    for key in keys {
        values.extend(entry.bin_attrs.remove(&key).unwrap_or_default());
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("member;range=0-1499"), Some(("member", (0, Some(1499)))));
        assert_eq!(parse_range("member;range=1500-*"), Some(("member", (1500, None))));
        assert_eq!(parse_range("member"), None);
        assert_eq!(parse_range("member;range=x-1"), None);
    }

    #[test]
    fn result_codes_map_to_what_the_runner_does() {
        let result = |rc| LdapResult { rc, matched: String::new(), text: "why".into(), refs: vec![], ctrls: vec![] };
        assert!(matches!(result_error("add", &result(68)), ConnectorError::Rejected { code, .. } if code == "already-exists"));
        assert!(matches!(result_error("add", &result(50)), ConnectorError::Rejected { code, .. } if code == "permission-denied"));
        assert!(matches!(result_error("add", &result(65)), ConnectorError::Rejected { code, .. } if code == "schema-violation"));
        assert!(matches!(result_error("search", &result(52)), ConnectorError::Unavailable(_)));
        assert!(matches!(result_error("bind", &result(49)), ConnectorError::Config(_)));
    }
}
