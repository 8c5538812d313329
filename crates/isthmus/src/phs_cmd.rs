//! `isthmus phs run`: one pass of password hash sync. For every `[[connector]]` with
//! `password_hash_sync = true`, read the NT hashes (generic LDAP: `sambaNTPassword`), keep the
//! accounts that an inbound rule with `password_sync = true` has in scope and that are enabled
//! and joined to a cloud user, derive Entra's credential for each (crate `phs`: only that leaves
//! this machine), and send them to the tenant. When the tenant holds a leaked-credential list,
//! each hash is checked against it by k-anonymity (only a 5-digit prefix of the hash is sent) and
//! the accounts found are reported and flagged. Hashes live in memory only, zeroized after use.
//! A staging server syncs no passwords.

use std::path::PathBuf;

use anyhow::Context;
use model::{AttrValue, ConnectorId};
use store::Store;

use crate::config::Config;

/// Options of `isthmus phs run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, default_value = "isthmus.toml")]
    pub config: PathBuf,
}

/// What one pass did for one connector.
#[derive(Debug, Default)]
struct Tally {
    read: usize,
    sent: usize,
    synced: usize,
    disabled: usize,
    out_of_scope: usize,
    not_in_cloud: usize,
    refused: usize,
    leaked: Vec<String>,
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
    if let Some(path) = &config.store.sqlite {
        let store = store_sqlite::SqliteStore::open(path).with_context(|| format!("open {}", path.display()))?;
        pass(&store, &config).await
    } else {
        let url = config.store.postgres.as_deref().unwrap_or_default();
        let store = store_postgres::PostgresStore::connect(url).await.context("connect to PostgreSQL ([store] postgres)")?;
        pass(&store, &config).await
    }
}

async fn pass<S: Store>(store: &S, config: &Config) -> anyhow::Result<()> {
    let rules = config.rules()?;
    let cloud = config.graphs.first().context("password hash sync needs a [[graph]] connector (the tenant)")?;
    let no_groups = |_: &model::CsObject, _: &str| false;
    // Ranges of the tenant's leaked list by prefix; `None` inside: the tenant has no list.
    let mut ranges: std::collections::HashMap<String, Option<Vec<(String, u64)>>> = std::collections::HashMap::new();
    let mut list_loaded = true;
    let endpoints = connector_graph::HashSyncEndpoints::new(cloud).with_context(|| format!("connector {}", cloud.id))?;
    for connector in config.connectors.iter().filter(|connector| connector.password_hash_sync) {
        let id = ConnectorId(connector.id.clone());
        let records =
            connector_ldap::read_nt_hashes(connector.clone()).await.with_context(|| format!("read hashes from {}", connector.id))?;
        let mut tally = Tally { read: records.len(), ..Tally::default() };
        let mut updates = Vec::new();
        for record in records {
            if record.disabled {
                tally.disabled += 1;
                continue;
            }
            let Some(cs) = store.cs_by_anchor(&id, &record.anchor).await? else {
                tally.not_in_cloud += 1;
                continue;
            };
            let password_sync = sync_engine::inbound::rules_in_scope(&rules, &cs, &no_groups).iter().any(|rule| rule.password_sync);
            if !password_sync {
                tally.out_of_scope += 1;
                continue;
            }
            let Some(mv) = cs.link else {
                tally.not_in_cloud += 1;
                continue;
            };
            let linked = store.cs_linked_to(mv).await?;
            let anchor = linked.iter().find(|cs| cs.connector.0 == cloud.id).and_then(|cloud_cs| {
                match cloud_cs.attributes.get("onPremisesImmutableId").first() {
                    Some(AttrValue::String(anchor)) => Some(anchor.clone()),
                    _ => None,
                }
            });
            let Some(immutable_id) = anchor else {
                tally.not_in_cloud += 1;
                continue;
            };
            let mut leaked = None;
            if list_loaded {
                let prefix = record.nt.to_hex()[..5].to_string();
                if !ranges.contains_key(&prefix) {
                    let range = endpoints.leaked_range(&prefix).await.context("ask the tenant's leaked-credential list")?;
                    list_loaded = range.is_some();
                    ranges.insert(prefix.clone(), range);
                }
                leaked = ranges.get(&prefix).and_then(Option::as_ref).and_then(|range| phs::leaked::in_range(&record.nt, range));
                if leaked.is_some() {
                    tally.leaked.push(record.dn.clone());
                }
            }
            let credential = phs::SyncedCredential::new(&record.nt);
            updates.push(connector_graph::CredentialUpdate {
                immutable_id,
                credential: zeroize::Zeroizing::new(credential.to_wire()),
                must_change: false,
                leaked,
            });
        }
        tally.sent = updates.len();
        let statuses = endpoints.send_credentials(&updates).await.with_context(|| format!("send to {}", cloud.id))?;
        for (anchor, status) in &statuses {
            match status.as_str() {
                "Success" => tally.synced += 1,
                "NoTargetConnection" => tally.not_in_cloud += 1,
                other => {
                    tally.refused += 1;
                    tracing::warn!(connector = connector.id, anchor, status = other, "password hash not taken");
                }
            }
        }
        println!(
            "   {:<18} password hash sync: {} hashes read, {} sent, {} synced; skipped: {} disabled, {} outside password-sync rules, {} not in the cloud yet, {} refused",
            connector.id, tally.read, tally.sent, tally.synced, tally.disabled, tally.out_of_scope, tally.not_in_cloud, tally.refused
        );
        if !tally.leaked.is_empty() {
            println!(
                "   {:<18} {} account(s) with a password on the leaked-credential list (flagged in the tenant):",
                connector.id,
                tally.leaked.len()
            );
            for dn in &tally.leaked {
                println!("      {dn}");
            }
        }
    }
    Ok(())
}
