//! `isthmus phs run`, and the wiring of password hash sync: the `password-sync` service's hash
//! sources filled with adapters — Active Directory over MS-DRSR (`drsr`, with the account and
//! naming contexts `connector_ldap::replication_account` reads; only changes since the last
//! pass unless `--full`), generic LDAP's `sambaNTPassword` (`connector_ldap::read_nt_hashes`) —
//! and its sink, the tenant (`connector_graph::HashSyncEndpoints`). The pass itself (scope,
//! leaked list, state) is the service's. A staging server syncs no passwords.

use std::path::PathBuf;

use anyhow::Context;
use model::ConnectorId;
use password_sync::{BoxFuture, Credential, HashRead, HashSink, HashSource, HashedAccount, LeakedRange, SinkError, SourceError};
use store::Store;

use crate::config::Config;

/// Options of `isthmus phs run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, default_value = "isthmus.toml")]
    pub config: PathBuf,
    /// Read every account's hash, not only those changed since the last pass (Active Directory).
    #[arg(long)]
    pub full: bool,
}

/// `isthmus phs run`.
pub async fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    anyhow::ensure!(!config.sync.staging, "a staging server syncs no passwords ([sync] staging = true)");
    anyhow::ensure!(
        config.connectors.iter().any(|connector| connector.password_hash_sync),
        "no [[connector]] has password_hash_sync = true in {}",
        args.config.display()
    );
    crate::config::with_store!(config.store.open(true).await?, |store| pass(&store, &config, args.full).await)
}

/// An Active Directory forest's hashes over MS-DRSR, one partition per naming context.
struct AdSource {
    connector: ConnectorId,
    config: connector_ldap::LdapConfig,
    credentials: drsr::ntlm::Credentials,
    ip: std::net::IpAddr,
    host: String,
    naming_contexts: Vec<String>,
}

impl AdSource {
    /// Finds the replication account (refusing one without both rights) and the DC's address.
    async fn open(config: &connector_ldap::LdapConfig) -> anyhow::Result<AdSource> {
        let account = connector_ldap::replication_account(config.clone())
            .await
            .with_context(|| format!("find the replication account of {} over LDAP", config.id))?;
        if !account.missing.is_empty() {
            let lacking: Vec<String> = account.missing.iter().map(|(nc, right)| format!("{} on {nc}", right.name)).collect();
            anyhow::bail!(
                "the account {}\\{} of connector {} may not read password hashes: it lacks {}. Grant these rights on the domain root, \
                 as Entra Connect's AD DS connector account has them",
                account.netbios_domain,
                account.sam_account_name,
                config.id,
                lacking.join(" and ")
            );
        }
        let connector_ldap::Bind::Simple { password, .. } = &config.bind else {
            anyhow::bail!("connector {}: password hash sync from Active Directory needs a bind account with a password", config.id);
        };
        let credentials = drsr::ntlm::Credentials::with_password(&account.sam_account_name, &account.netbios_domain, password);
        let host = config.host.rsplit_once(':').map_or(config.host.as_str(), |(host, _)| host).trim_matches(['[', ']']).to_string();
        let ip = tokio::net::lookup_host((host.as_str(), drsr::epm::EPM_PORT))
            .await
            .with_context(|| format!("resolve {host}"))?
            .next()
            .with_context(|| format!("{host} resolves to no address"))?
            .ip();
        Ok(AdSource {
            connector: ConnectorId(config.id.clone()),
            config: config.clone(),
            credentials,
            ip,
            host,
            naming_contexts: account.naming_contexts,
        })
    }
}

impl HashSource for AdSource {
    fn connector(&self) -> &ConnectorId {
        &self.connector
    }

    fn partitions(&self) -> Vec<String> {
        self.naming_contexts.clone()
    }

    fn read<'a>(&'a self, partition: &'a str, since: Option<&'a str>) -> BoxFuture<'a, Result<HashRead, SourceError>> {
        Box::pin(async move {
            let since = since.and_then(drsr::hashes::Watermark::from_text);
            let progress = crate::progress::spinner(&self.connector.0, "password hashes");
            let mut on_page = |count: usize| progress.set_position(count as u64);
            let pass = drsr::hashes::read_hashes(self.ip, &self.credentials, partition, since.as_ref(), &mut on_page)
                .await
                .map_err(|err| SourceError(format!("replicate password hashes of {partition} from {}: {err}", self.host)))?;
            progress.finish_and_clear();
            let accounts = pass
                .accounts
                .into_iter()
                .map(|account| HashedAccount {
                    anchor: model::Anchor(account.guid.to_vec()),
                    dn: account.dn,
                    nt: phs::NtHash::from_bytes(*account.nt_hash),
                    disabled: account.user_account_control.map(|uac| uac & 2 != 0),
                })
                .collect();
            Ok(HashRead { accounts, watermark: Some(pass.watermark.to_text()) })
        })
    }

    fn in_scope(&self, partition: &str, dn: &str) -> bool {
        self.config.in_scope(&[partition.to_string()], dn)
    }
}

/// A generic LDAP directory's `sambaNTPassword` values: always read whole.
struct LdapSource {
    connector: ConnectorId,
    config: connector_ldap::LdapConfig,
}

impl HashSource for LdapSource {
    fn connector(&self) -> &ConnectorId {
        &self.connector
    }

    fn partitions(&self) -> Vec<String> {
        vec![String::new()]
    }

    fn read<'a>(&'a self, _partition: &'a str, _since: Option<&'a str>) -> BoxFuture<'a, Result<HashRead, SourceError>> {
        Box::pin(async move {
            let records =
                connector_ldap::read_nt_hashes(self.config.clone()).await.map_err(|err| SourceError(format!("read hashes: {err}")))?;
            let accounts = records
                .into_iter()
                .map(|record| HashedAccount { anchor: record.anchor, dn: record.dn, nt: record.nt, disabled: Some(record.disabled) })
                .collect();
            Ok(HashRead { accounts, watermark: None })
        })
    }

    fn in_scope(&self, _partition: &str, _dn: &str) -> bool {
        // read_nt_hashes reads only the connector's scope.
        true
    }
}

/// The tenant's password-hash-sync endpoints as the pass's sink.
struct TenantSink {
    cloud: ConnectorId,
    endpoints: connector_graph::HashSyncEndpoints,
}

impl HashSink for TenantSink {
    fn cloud(&self) -> &ConnectorId {
        &self.cloud
    }

    fn leaked_range<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Option<LeakedRange>, SinkError>> {
        Box::pin(async move {
            self.endpoints.leaked_range(prefix).await.map_err(|err| SinkError(format!("ask the tenant's leaked-credential list: {err}")))
        })
    }

    fn send<'a>(&'a self, credentials: &'a [Credential]) -> BoxFuture<'a, Result<Vec<(String, String)>, SinkError>> {
        Box::pin(async move {
            let updates: Vec<connector_graph::CredentialUpdate> = credentials
                .iter()
                .map(|credential| connector_graph::CredentialUpdate {
                    immutable_id: credential.immutable_id.clone(),
                    credential: credential.wire.clone(),
                    must_change: credential.must_change,
                    leaked: credential.leaked,
                })
                .collect();
            self.endpoints.send_credentials(&updates).await.map_err(|err| SinkError(format!("send to {}: {err}", self.cloud.0)))
        })
    }
}

/// One pass over every connector with password hash sync on (also what `sync serve` runs
/// between cycles). A staging server must not call it.
pub async fn pass<S: Store>(store: &S, config: &Config, full: bool) -> anyhow::Result<()> {
    let rules = config.rules()?;
    let cloud = config.graphs.first().context("password hash sync needs a [[graph]] connector (the tenant)")?;
    let sink = TenantSink {
        cloud: ConnectorId(cloud.id.clone()),
        endpoints: connector_graph::HashSyncEndpoints::new(cloud).with_context(|| format!("connector {}", cloud.id))?,
    };
    let mut sources: Vec<Box<dyn HashSource>> = Vec::new();
    for connector in config.connectors.iter().filter(|connector| connector.password_hash_sync) {
        if connector.flavour == connector_ldap::Flavour::ActiveDirectory {
            sources.push(Box::new(AdSource::open(connector).await?));
        } else {
            sources.push(Box::new(LdapSource { connector: ConnectorId(connector.id.clone()), config: connector.clone() }));
        }
    }
    let sources: Vec<&dyn HashSource> = sources.iter().map(AsRef::as_ref).collect();
    let now = || sync_runner::Clock::unix_seconds(&sync_runner::SystemClock);
    let tallies = password_sync::pass(store, &rules, &sources, &sink, full, &now).await?;
    for tally in &tallies {
        println!(
            "   {:<18} password hash sync: {} hashes read, {} sent, {} synced; skipped: {} disabled, {} outside password-sync rules, {} not in the cloud yet, {} refused",
            tally.connector, tally.read, tally.sent, tally.synced, tally.disabled, tally.out_of_scope, tally.not_in_cloud, tally.refused
        );
        if !tally.leaked.is_empty() {
            println!(
                "   {:<18} {} account(s) with a password on the leaked-credential list (flagged in the tenant):",
                tally.connector,
                tally.leaked.len()
            );
            for dn in &tally.leaked {
                println!("      {dn}");
            }
        }
    }
    let refused: usize = tallies.iter().map(|tally| tally.refused).sum();
    anyhow::ensure!(refused == 0, "the tenant refused {refused} password hash(es); the log names each account's anchor and the reason");
    Ok(())
}
