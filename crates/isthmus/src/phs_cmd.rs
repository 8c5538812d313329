//! `isthmus phs run`: one pass of password hash sync. For every `[[connector]]` with
//! `password_hash_sync = true`, read the NT hashes (Active Directory: over MS-DRSR with the
//! connector's account, which needs the two replication rights — only accounts whose password
//! changed since the last pass, unless `--full`; generic LDAP: `sambaNTPassword`), keep the
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
    /// Read every account's hash, not only those changed since the last pass (Active Directory).
    #[arg(long)]
    pub full: bool,
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
        store.migrate().await.context("create or check the database schema")?;
        pass(&store, &config, args.full).await
    } else {
        let url = config.store.postgres.as_deref().unwrap_or_default();
        let store = store_postgres::PostgresStore::connect(url).await.context("connect to PostgreSQL ([store] postgres)")?;
        store.migrate().await.context("create or check the database schema")?;
        pass(&store, &config, args.full).await
    }
}

/// One account's hash as a source gave it.
struct Candidate {
    anchor: model::Anchor,
    dn: String,
    nt: phs::NtHash,
    /// Disabled, when the source said; otherwise the connector space says.
    disabled: Option<bool>,
}

/// Where password hash sync keeps its progress for one AD naming context: a pseudo-connector
/// of the store (its watermark and run history), never holding a secret.
fn state_id(connector: &str, naming_context: &str) -> ConnectorId {
    ConnectorId(format!("{connector}#password-hash-sync#{naming_context}"))
}

/// The stored state: the DRSR watermark and the accounts read before they were in the cloud
/// (sent once they are).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct AdState {
    watermark: Option<String>,
    #[serde(default)]
    pending: Vec<String>,
}

/// The AD accounts of one pass, with what to store once they are sent.
struct AdRead {
    candidates: Vec<Candidate>,
    /// Accounts outside the connector's OU filter (never synced, so never pending).
    out_of_scope: usize,
    /// (state id, naming context, state) per naming context.
    states: Vec<(ConnectorId, String, AdState)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Reads the hashes of an Active Directory connector over MS-DRSR: what changed since each
/// naming context's watermark, plus accounts read earlier that have reached the cloud since.
async fn read_ad<S: Store>(store: &S, connector: &connector_ldap::LdapConfig, cloud: &str, full: bool) -> anyhow::Result<AdRead> {
    let account = connector_ldap::replication_account(connector.clone())
        .await
        .with_context(|| format!("find the replication account of {} over LDAP", connector.id))?;
    if !account.missing.is_empty() {
        let lacking: Vec<String> = account.missing.iter().map(|(nc, right)| format!("{} on {nc}", right.name)).collect();
        anyhow::bail!(
            "the account {}\\{} of connector {} may not read password hashes: it lacks {}. Grant these rights on the domain root, \
             as Entra Connect's AD DS connector account has them",
            account.netbios_domain,
            account.sam_account_name,
            connector.id,
            lacking.join(" and ")
        );
    }
    let connector_ldap::Bind::Simple { password, .. } = &connector.bind else {
        anyhow::bail!("connector {}: password hash sync from Active Directory needs a bind account with a password", connector.id);
    };
    let credentials = drsr::ntlm::Credentials::with_password(&account.sam_account_name, &account.netbios_domain, password);
    let host = connector.host.rsplit_once(':').map_or(connector.host.as_str(), |(host, _)| host).trim_matches(['[', ']']);
    let ip = tokio::net::lookup_host((host, drsr::epm::EPM_PORT))
        .await
        .with_context(|| format!("resolve {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to no address"))?
        .ip();
    let mut candidates = Vec::new();
    let mut out_of_scope = 0;
    let mut states = Vec::new();
    for nc in &account.naming_contexts {
        let id = state_id(&connector.id, nc);
        let stored: AdState = match store.watermark(&id).await? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => AdState::default(),
        };
        let since = if full { None } else { stored.watermark.as_deref().and_then(drsr::hashes::Watermark::from_text) };
        let progress = crate::progress::spinner(&connector.id, "password hashes");
        let mut on_page = |count: usize| progress.set_position(count as u64);
        let pass = drsr::hashes::read_hashes(ip, &credentials, nc, since.as_ref(), &mut on_page)
            .await
            .with_context(|| format!("replicate password hashes of {nc} from {host}"))?;
        progress.finish_and_clear();
        let mut seen = std::collections::HashSet::new();
        for account in pass.accounts {
            if !connector.in_scope(std::slice::from_ref(nc), &account.dn) {
                out_of_scope += 1;
                continue;
            }
            let anchor = model::Anchor(account.guid.to_vec());
            seen.insert(hex(&anchor.0));
            candidates.push(Candidate {
                anchor,
                dn: account.dn,
                nt: phs::NtHash::from_bytes(*account.nt_hash),
                disabled: account.user_account_control.map(|uac| uac & 2 != 0),
            });
        }
        // Accounts read before they were in the cloud: once one is, read them all again (a
        // full pass keeps only those).
        let mut ready_pending = std::collections::HashSet::new();
        for anchor in stored.pending.iter().filter(|anchor| !seen.contains(*anchor)) {
            if cloud_anchor(store, &ConnectorId(connector.id.clone()), &model::Anchor(unhex(anchor)), cloud).await?.is_some() {
                ready_pending.insert(anchor.clone());
            }
        }
        if since.is_some() && !ready_pending.is_empty() {
            let again = drsr::hashes::read_hashes(ip, &credentials, nc, None, &mut |_| {})
                .await
                .with_context(|| format!("replicate password hashes of {nc} from {host}"))?;
            for account in again.accounts.into_iter().filter(|account| ready_pending.contains(&hex(&account.guid))) {
                candidates.push(Candidate {
                    anchor: model::Anchor(account.guid.to_vec()),
                    dn: account.dn,
                    nt: phs::NtHash::from_bytes(*account.nt_hash),
                    disabled: account.user_account_control.map(|uac| uac & 2 != 0),
                });
            }
        }
        let still_pending = stored.pending.into_iter().filter(|anchor| !ready_pending.contains(anchor) && !seen.contains(anchor)).collect();
        states.push((id, nc.clone(), AdState { watermark: Some(pass.watermark.to_text()), pending: still_pending }));
    }
    Ok(AdRead { candidates, out_of_scope, states })
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// One pass over every connector with password hash sync on (also what `sync serve` runs
/// on its schedule). A staging server must not call it.
pub async fn pass<S: Store>(store: &S, config: &Config, full: bool) -> anyhow::Result<()> {
    let rules = config.rules()?;
    let cloud = config.graphs.first().context("password hash sync needs a [[graph]] connector (the tenant)")?;
    let no_groups = |_: &model::CsObject, _: &str| false;
    // Ranges of the tenant's leaked list by prefix; `None` inside: the tenant has no list.
    let mut ranges: std::collections::HashMap<String, Option<Vec<(String, u64)>>> = std::collections::HashMap::new();
    let mut list_loaded = true;
    let endpoints = connector_graph::HashSyncEndpoints::new(cloud).with_context(|| format!("connector {}", cloud.id))?;
    for connector in config.connectors.iter().filter(|connector| connector.password_hash_sync) {
        let id = ConnectorId(connector.id.clone());
        let mut skipped = 0;
        let (records, ad) = if connector.flavour == connector_ldap::Flavour::ActiveDirectory {
            let read = read_ad(store, connector, &cloud.id, full).await?;
            skipped = read.out_of_scope;
            (read.candidates, Some(read.states))
        } else {
            let records =
                connector_ldap::read_nt_hashes(connector.clone()).await.with_context(|| format!("read hashes from {}", connector.id))?;
            let candidates = records
                .into_iter()
                .map(|record| Candidate { anchor: record.anchor, dn: record.dn, nt: record.nt, disabled: Some(record.disabled) })
                .collect();
            (candidates, None)
        };
        let mut tally = Tally { read: records.len() + skipped, out_of_scope: skipped, ..Tally::default() };
        let mut updates = Vec::new();
        let mut pending = Vec::new();
        for record in records {
            let Some(cs) = store.cs_by_anchor(&id, &record.anchor).await? else {
                tally.not_in_cloud += 1;
                pending.push((hex(&record.anchor.0), record.dn.clone()));
                continue;
            };
            let disabled = record.disabled.unwrap_or_else(|| match cs.attributes.get("userAccountControl").first() {
                Some(AttrValue::Integer(uac)) => uac & 2 != 0,
                Some(AttrValue::String(uac)) => uac.parse::<i64>().is_ok_and(|uac| uac & 2 != 0),
                _ => false,
            });
            if disabled {
                tally.disabled += 1;
                continue;
            }
            let password_sync = sync_engine::inbound::rules_in_scope(&rules, &cs, &no_groups).iter().any(|rule| rule.password_sync);
            if !password_sync {
                tally.out_of_scope += 1;
                continue;
            }
            let Some(immutable_id) = cloud_anchor(store, &id, &record.anchor, &cloud.id).await? else {
                tally.not_in_cloud += 1;
                pending.push((hex(&record.anchor.0), record.dn.clone()));
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
        if let Some(states) = ad {
            save_states(store, states, &pending, &tally).await?;
        }
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

/// The cloud user's immutable id for the on-premises object `anchor` of `connector`, when the
/// object is joined to one (linked to an MV object a `cloud` CS object is linked to).
async fn cloud_anchor<S: Store>(store: &S, connector: &ConnectorId, anchor: &model::Anchor, cloud: &str) -> anyhow::Result<Option<String>> {
    let Some(mv) = store.cs_by_anchor(connector, anchor).await?.and_then(|cs| cs.link) else { return Ok(None) };
    let linked = store.cs_linked_to(mv).await?;
    Ok(linked.iter().find(|cs| cs.connector.0 == cloud).and_then(|cloud_cs| {
        match cloud_cs.attributes.get("onPremisesImmutableId").first() {
            Some(AttrValue::String(anchor)) => Some(anchor.clone()),
            _ => None,
        }
    }))
}

/// Records the pass (run history) and each naming context's new watermark and pending accounts,
/// once the tenant has taken the hashes: a failed send leaves the old watermark, so the next
/// pass reads the same changes again.
async fn save_states<S: Store>(
    store: &S,
    states: Vec<(ConnectorId, String, AdState)>,
    pending: &[(String, String)],
    tally: &Tally,
) -> anyhow::Result<()> {
    let now = unix_now();
    for (id, nc, mut state) in states {
        let suffix = nc.to_lowercase();
        for (anchor, dn) in pending {
            if dn.to_lowercase().ends_with(&suffix) && !state.pending.contains(anchor) {
                state.pending.push(anchor.clone());
            }
        }
        let bytes = serde_json::to_vec(&state).context("encode the password hash sync state")?;
        let run = store.run_start(&id, "password-hash-sync", now).await?;
        store.commit_import_page(&id, run, &[], Some(&bytes)).await?;
        let counts = store::RunCounts { adds: 0, updates: tally.synced as u64, deletes: 0, errors: tally.refused as u64 };
        store.run_finish(run, unix_now(), "success", counts).await?;
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
}
