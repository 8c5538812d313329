//! A thin LDAP client for seeding test servers: `ldap3` with errors that name the operation and DN.
//!
//! This is test plumbing, not the connector: it has no paging, retries or schema knowledge.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};

use crate::{Error, Result};

/// An open, possibly bound, LDAP connection.
#[derive(Debug)]
pub struct Connection {
    ldap: ldap3::Ldap,
}

/// One attribute of an entry to add: a name and its values.
pub type Attr = (String, Vec<Vec<u8>>);

/// Builds an [`Attr`] from string values.
pub fn attr(name: &str, values: &[&str]) -> Attr {
    (name.to_string(), values.iter().map(|value| value.as_bytes().to_vec()).collect())
}

impl Connection {
    /// Connects to `url` (`ldap://`, `ldaps://`), trusting only the CA in `ca_pem` for TLS.
    /// `starttls` upgrades an `ldap://` connection before anything else is sent.
    pub async fn connect(url: &str, ca_pem: Option<&Path>, starttls: bool) -> Result<Self> {
        let mut settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(10)).set_starttls(starttls);
        if let Some(ca_pem) = ca_pem {
            settings = settings.set_config(crate::tls::client_config(ca_pem)?);
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, url)
            .await
            .map_err(|err| Error::Ldap { operation: format!("connect {url}"), message: err.to_string() })?;
        ldap3::drive!(conn);
        Ok(Connection { ldap })
    }

    /// Simple bind; a wrong password is an error carrying the server's diagnostic (e.g. AD's `data 52e`).
    pub async fn bind(&mut self, dn: &str, password: &str) -> Result<()> {
        let res = self.ldap.simple_bind(dn, password).await;
        check(format!("bind {dn}"), res)
    }

    /// Adds an entry.
    pub async fn add(&mut self, dn: &str, attrs: Vec<Attr>) -> Result<()> {
        let attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> =
            attrs.into_iter().map(|(name, values)| (name.into_bytes(), values.into_iter().collect())).collect();
        let res = self.ldap.add(dn, attrs).await;
        check(format!("add {dn}"), res)
    }

    /// Applies modifications (`Mod::Replace`, `Mod::Add`, `Mod::Delete`) to an entry.
    pub async fn modify(&mut self, dn: &str, mods: Vec<Mod<Vec<u8>>>) -> Result<()> {
        let res = self.ldap.modify(dn, mods).await;
        check(format!("modify {dn}"), res)
    }

    /// Replaces one attribute with string values.
    pub async fn replace(&mut self, dn: &str, name: &str, values: &[&str]) -> Result<()> {
        let values = values.iter().map(|value| value.as_bytes().to_vec()).collect();
        self.modify(dn, vec![Mod::Replace(name.as_bytes().to_vec(), values)]).await
    }

    /// Deletes an entry.
    pub async fn delete(&mut self, dn: &str) -> Result<()> {
        let res = self.ldap.delete(dn).await;
        check(format!("delete {dn}"), res)
    }

    /// Renames or moves an entry.
    pub async fn rename(&mut self, dn: &str, new_rdn: &str, new_parent: Option<&str>) -> Result<()> {
        let res = self.ldap.modifydn(dn, new_rdn, true, new_parent).await;
        check(format!("rename {dn}"), res)
    }

    /// Searches and returns all entries (no paging: keep result sets small).
    pub async fn search(&mut self, base: &str, scope: Scope, filter: &str, attrs: &[&str]) -> Result<Vec<SearchEntry>> {
        let operation = format!("search {base} {filter}");
        let res = self.ldap.search(base, scope, filter, attrs.to_vec()).await;
        let (entries, _res) = res.and_then(|search| search.success()).map_err(|err| Error::Ldap { operation, message: err.to_string() })?;
        Ok(entries.into_iter().map(SearchEntry::construct).collect())
    }

    /// Closes the connection politely.
    pub async fn unbind(mut self) -> Result<()> {
        self.ldap.unbind().await.map_err(|err| Error::Ldap { operation: "unbind".into(), message: err.to_string() })
    }
}

fn check(operation: String, res: ldap3::result::Result<ldap3::LdapResult>) -> Result<()> {
    res.and_then(|res| res.success()).map(|_| ()).map_err(|err| Error::Ldap { operation, message: err.to_string() })
}
