//! The configuration file of a sync server (`isthmus.toml`): where its state lives, which rule
//! files it runs, and its connectors. Every problem is reported with the setting it is about,
//! before anything connects.

use std::path::{Path, PathBuf};

use anyhow::Context;
use connector_ldap::LdapConfig;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the state lives.
    pub store: StoreConfig,
    /// The rules and the cycle's safety settings.
    pub sync: SyncConfig,
    /// The connected directories (`[[connector]]` tables).
    #[serde(rename = "connector", default)]
    pub connectors: Vec<LdapConfig>,
    /// The cloud directories (`[[graph]]` tables: a Graph-compatible API).
    #[serde(rename = "graph", default)]
    pub graphs: Vec<connector_graph::GraphConfig>,
    /// The file's folder (relative paths in it are relative to this).
    #[serde(skip)]
    pub folder: PathBuf,
}

/// `[store]`: exactly one of `sqlite` and `postgres`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// An SQLite database file (created when missing), relative to the configuration file.
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL connection string (`host=… user=… dbname=…` or `postgres://…`).
    pub postgres: Option<String>,
}

/// `[sync]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Rule files (TOML), relative to the configuration file; their rules run together.
    #[serde(default)]
    pub rules: Vec<PathBuf>,
    /// Add Entra Connect's out-of-box rules from every Active Directory connector to the one
    /// `[[graph]]` connector.
    #[serde(default)]
    pub default_rules: bool,
    /// Staging mode: import and sync, never export.
    #[serde(default)]
    pub staging: bool,
    /// Stop an export that would delete more objects than this; 0 turns the check off.
    #[serde(default = "default_threshold")]
    pub deletion_threshold: u64,
    /// The default rules' sourceAnchor for users: `mS-DS-ConsistencyGuid` (falling back to
    /// objectGUID and written back; the default), `objectGUID`, or another attribute. Chosen
    /// once: the tenant remembers it, and a sync server with another anchor is refused.
    #[serde(default = "default_anchor")]
    pub source_anchor: String,
    /// The AD attribute the cloud userPrincipalName comes from with the default rules:
    /// `userPrincipalName`, or an alternate login ID such as `mail`.
    #[serde(default = "default_upn_attribute")]
    pub upn_attribute: String,
    /// Export chunks (of up to 20 objects) a connector is given at once.
    #[serde(default = "default_export_concurrency")]
    pub export_concurrency: usize,
    /// The control channel of `sync serve` (a Unix socket `sync status|start|scheduler`
    /// talk to), relative to the configuration file. Default: `isthmus-sync.sock` beside it.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Days the run history keeps a step; older ones are removed after each cycle. 0 keeps all.
    #[serde(default = "default_history_days")]
    pub history_days: u32,
}

fn default_history_days() -> u32 {
    90
}

fn default_export_concurrency() -> usize {
    4
}

fn default_anchor() -> String {
    "mS-DS-ConsistencyGuid".into()
}

fn default_upn_attribute() -> String {
    "userPrincipalName".into()
}

fn default_threshold() -> u64 {
    500
}

impl Config {
    /// Reads and checks `path`; relative paths in it become relative to its folder.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let mut config: Config = toml::from_str(&text).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
        let folder = std::path::absolute(path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new(".")))
            .with_context(|| format!("the folder of {}", path.display()))?;
        let folder = folder.as_path();
        config.folder = folder.to_path_buf();
        if let Some(sqlite) = &mut config.store.sqlite
            && sqlite.is_relative()
        {
            *sqlite = folder.join(&*sqlite);
        }
        for rules in &mut config.sync.rules {
            if rules.is_relative() {
                *rules = folder.join(&*rules);
            }
        }
        for connector in &mut config.connectors {
            if let Some(ca) = &mut connector.ca_file
                && ca.is_relative()
            {
                *ca = folder.join(&*ca);
            }
        }
        for graph in &mut config.graphs {
            if let Some(ca) = &mut graph.ca_file
                && ca.is_relative()
            {
                *ca = folder.join(&*ca);
            }
        }
        let problems = config.problems();
        if !problems.is_empty() {
            anyhow::bail!("{}:\n  {}", path.display(), problems.join("\n  "));
        }
        warn_if_readable_by_others(path, &config);
        Ok(config)
    }

    /// Every problem, each naming its setting.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match (&self.store.sqlite, &self.store.postgres) {
            (Some(_), Some(_)) => problems.push("[store]: give `sqlite` or `postgres`, not both".to_string()),
            (None, None) => problems.push("[store]: give `sqlite = \"file\"` or `postgres = \"…\"`".to_string()),
            _ => {}
        }
        if !(1..=32).contains(&self.sync.export_concurrency) {
            problems.push(format!("[sync] `export_concurrency` must be 1–32, got {}", self.sync.export_concurrency));
        }
        if self.sync.rules.is_empty() && !self.sync.default_rules {
            problems.push("[sync] `rules`: name at least one rule file (or set `default_rules = true`)".to_string());
        }
        if self.connectors.is_empty() {
            problems.push("no [[connector]]".to_string());
        }
        if self.sync.default_rules && self.graphs.len() != 1 {
            problems.push(format!("[sync] `default_rules` needs exactly one [[graph]] connector, found {}", self.graphs.len()));
        }
        let mut ids = std::collections::BTreeSet::new();
        for connector in &self.connectors {
            if !ids.insert(connector.id.to_lowercase()) {
                problems.push(format!("[[connector]] id {:?} appears twice", connector.id));
            }
            problems.extend(connector.validate().into_iter().map(|problem| format!("[[connector]] {}: {problem}", connector.id)));
        }
        for graph in &self.graphs {
            if !ids.insert(graph.id.to_lowercase()) {
                problems.push(format!("connector id {:?} appears twice", graph.id));
            }
            problems.extend(graph.validate().into_iter().map(|problem| format!("[[graph]] {}: {problem}", graph.id)));
        }
        problems
    }

    /// The rules of every rule file, checked, as one set.
    pub fn rules(&self) -> anyhow::Result<sync_rules::RuleSet> {
        let mut sets = Vec::new();
        let mut problems = Vec::new();
        if self.sync.default_rules
            && let Some(cloud) = self.graphs.first()
        {
            let ad: Vec<&str> = self
                .connectors
                .iter()
                .filter(|connector| connector.flavour == connector_ldap::Flavour::ActiveDirectory)
                .map(|connector| connector.id.as_str())
                .collect();
            let options = self.default_options()?;
            match sync_rules::defaults::ad_to_cloud_with(&ad, &cloud.id, &options) {
                Ok(set) => sets.push(set),
                Err(errors) => problems.extend(errors.iter().map(|error| format!("default rules: {error}"))),
            }
        }
        for path in &self.sync.rules {
            let text = std::fs::read_to_string(path).with_context(|| format!("read rule file {}", path.display()))?;
            match sync_rules::RuleSet::parse(&text) {
                Ok(set) => sets.push(set),
                Err(errors) => problems.extend(errors.iter().map(|error| format!("{}: {error}", path.display()))),
            }
        }
        if problems.is_empty() {
            match sync_rules::RuleSet::combine(sets) {
                Ok(rules) => {
                    for rule in rules.rules() {
                        let known = self.connectors.iter().any(|connector| connector.id == rule.connector.0)
                            || self.graphs.iter().any(|graph| graph.id == rule.connector.0);
                        if !known {
                            problems.push(format!("rule {:?} names connector {:?}, which is not configured", rule.name, rule.connector.0));
                        }
                    }
                    if problems.is_empty() {
                        return Ok(rules);
                    }
                }
                Err(errors) => problems.extend(errors.iter().map(ToString::to_string)),
            }
        }
        anyhow::bail!("{} problem(s) in the rules:\n  {}", problems.len(), problems.join("\n  "))
    }

    /// The choices the default rules are made with.
    pub fn default_options(&self) -> anyhow::Result<sync_rules::defaults::DefaultOptions> {
        let source_anchor = sync_rules::defaults::SourceAnchor::from_name(&self.sync.source_anchor)
            .map_err(|why| anyhow::anyhow!("[sync] source_anchor: {why}"))?;
        Ok(sync_rules::defaults::DefaultOptions { source_anchor, upn_attribute: self.sync.upn_attribute.clone() })
    }

    /// Where `sync serve` listens for `sync status|start|scheduler`.
    pub fn control_socket(&self) -> PathBuf {
        let path = self.sync.control_socket.clone().unwrap_or_else(|| PathBuf::from("isthmus-sync.sock"));
        if path.is_relative() { self.folder.join(path) } else { path }
    }

    /// The runner's settings.
    pub fn runner(&self) -> sync_runner::RunnerConfig {
        sync_runner::RunnerConfig {
            staging: self.sync.staging,
            deletion_threshold: (self.sync.deletion_threshold > 0).then_some(self.sync.deletion_threshold),
            export_concurrency: self.sync.export_concurrency,
        }
    }
}

/// A sync store, opened from `[store]`: the one place the adapter is chosen.
pub enum Opened {
    /// `[store] sqlite`.
    Sqlite(store_sqlite::SqliteStore),
    /// `[store] postgres`.
    Postgres(store_postgres::PostgresStore),
}

/// Runs `$body` with `$store` bound to the opened store, whichever adapter it is.
macro_rules! with_store {
    ($opened:expr, |$store:ident| $body:expr) => {
        match $opened {
            $crate::config::Opened::Sqlite($store) => $body,
            $crate::config::Opened::Postgres($store) => $body,
        }
    };
}
pub(crate) use with_store;

impl StoreConfig {
    /// Opens the store and checks (or creates) its schema. `create`: false refuses a missing
    /// SQLite file (an operator tool given a wrong path should not make an empty database).
    pub async fn open(&self, create: bool) -> anyhow::Result<Opened> {
        use store::Store as _;
        let opened = match (&self.sqlite, &self.postgres) {
            (Some(path), _) => {
                anyhow::ensure!(create || path.exists(), "{} does not exist (no sync has run with this configuration yet)", path.display());
                Opened::Sqlite(store_sqlite::SqliteStore::open(path).with_context(|| format!("open {}", path.display()))?)
            }
            (None, Some(url)) => {
                Opened::Postgres(store_postgres::PostgresStore::connect(url).await.context("connect to PostgreSQL ([store] postgres)")?)
            }
            (None, None) => anyhow::bail!("[store]: give `sqlite` or `postgres`"),
        };
        with_store!(&opened, |store| store.migrate().await.context("create or check the database schema")?);
        Ok(opened)
    }
}

/// A configuration holding a password should not be readable by other users.
fn warn_if_readable_by_others(path: &Path, config: &Config) {
    use std::os::unix::fs::PermissionsExt;
    let has_secret = config.connectors.iter().any(|connector| matches!(connector.bind, connector_ldap::Bind::Simple { .. }))
        || !config.graphs.is_empty()
        || config.store.postgres.as_deref().is_some_and(|url| url.contains("password"));
    let mode = std::fs::metadata(path).map(|metadata| metadata.permissions().mode()).unwrap_or(0);
    if has_secret && mode & 0o077 != 0 {
        tracing::warn!(file = %path.display(), mode = format!("{:o}", mode & 0o777), "the configuration holds passwords and other users may read it; chmod 600 it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> anyhow::Result<Config> {
        let folder = tempfile::tempdir()?;
        let path = folder.path().join("isthmus.toml");
        std::fs::write(&path, text)?;
        Config::load(&path)
    }

    #[test]
    fn problems_name_their_setting() {
        let err = load("[store]\n[sync]\nrules = []\n").unwrap_err().to_string();
        for expected in ["[store]", "`rules`", "no [[connector]]"] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
        let unknown = load("[store]\nsqlite = 'a.db'\ncolour = 1\n[sync]\nrules = ['r.toml']\n").unwrap_err().to_string();
        assert!(unknown.contains("colour"), "{unknown}");
        let twice = "[store]\nsqlite = 'a.db'\n[sync]\nrules = ['r.toml']\n\
            [[connector]]\nid = 'x'\nflavour = 'generic'\nhost = 'h'\n[connector.bind]\nmethod = 'anonymous'\n\
            [[connector]]\nid = 'X'\nflavour = 'generic'\nhost = ''\n[connector.bind]\nmethod = 'anonymous'\n";
        let err = load(twice).unwrap_err().to_string();
        assert!(err.contains("appears twice") && err.contains("`host`"), "{err}");
    }

    #[test]
    fn paths_are_relative_to_the_file() {
        let config = load(
            "[store]\nsqlite = 'state/isthmus.db'\n[sync]\nrules = ['rules.toml']\ndeletion_threshold = 0\n\
             [[connector]]\nid = 'x'\nflavour = 'generic'\nhost = 'h'\nrole = 'target'\n[connector.bind]\nmethod = 'anonymous'\n",
        )
        .unwrap();
        assert!(config.store.sqlite.as_ref().unwrap().ends_with("state/isthmus.db") && config.store.sqlite.as_ref().unwrap().is_absolute());
        assert_eq!(config.runner().deletion_threshold, None, "0 turns the threshold off");
        assert_eq!(config.connectors[0].role, connector_ldap::ConnectorRole::Target);
        let err = config.rules().unwrap_err().to_string();
        assert!(err.contains("rules.toml"), "a missing rule file is named: {err}");
    }
}
