//! Password hash sync as a service: one pass over every hash source (an AD forest read over
//! MS-DRSR, an LDAP directory's `sambaNTPassword`) — read what changed since each partition's
//! watermark, keep the accounts an inbound rule with `password_sync = true` has in scope (with
//! the runner's ISMEMBEROF memberships), that are enabled and joined to a cloud user, derive
//! Entra's credential for each (crate `phs`: only that leaves this machine), check the hash
//! against the tenant's leaked list by k-anonymity, and hand the credentials to the hash sink.
//! Accounts read before they reached the cloud are remembered and read again once they have.
//! Watermarks and that list live in the store's service state, written only after the sink took
//! the credentials (a failed send reads the same changes again). Hashes are zeroized after use.
//!
//! It knows no LDAP, DRSR or HTTP: the sources and the sink are ports the binary fills with
//! adapters. A staging server must not run it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use model::{Anchor, AttrValue, ConnectorId, CsObject};
use store::{RunCounts, Store, StoreError};
use sync_rules::RuleSet;

/// A boxed future, for the `dyn` ports.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The service's name in the store's service state and in run history.
pub const SERVICE: &str = "password-hash-sync";

/// One account's hash as a source gave it.
pub struct HashedAccount {
    /// The account's anchor in its connector space (objectGUID, entryUUID).
    pub anchor: Anchor,
    /// Its DN.
    pub dn: String,
    /// Its NT hash (zeroized on drop).
    pub nt: phs::NtHash,
    /// Disabled, when the source says; otherwise the connector space's userAccountControl does.
    pub disabled: Option<bool>,
}

/// What one read of one partition gave.
pub struct HashRead {
    /// The accounts (all of them, or those changed since the watermark).
    pub accounts: Vec<HashedAccount>,
    /// Where the next incremental read starts; `None` when the source has no watermarks.
    pub watermark: Option<String>,
}

/// A source's failure, in its own words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// Where hashes come from: one connector's directory.
pub trait HashSource: Send + Sync {
    /// The connector whose connector space holds the accounts.
    fn connector(&self) -> &ConnectorId;
    /// The partitions read separately, each with its own watermark (AD: naming contexts);
    /// one, `""`, for a source without.
    fn partitions(&self) -> Vec<String>;
    /// Reads a partition: every account, or (`since`) those changed after that watermark.
    fn read<'a>(&'a self, partition: &'a str, since: Option<&'a str>) -> BoxFuture<'a, Result<HashRead, SourceError>>;
    /// Whether the account at `dn` is in the connector's scope (its OU filter).
    fn in_scope(&self, partition: &str, dn: &str) -> bool;
}

/// One user's credential, ready for the cloud.
pub struct Credential {
    /// The cloud user's `onPremisesImmutableId`.
    pub immutable_id: String,
    /// `phs::SyncedCredential::to_wire()`.
    pub wire: zeroize::Zeroizing<String>,
    /// "User must change password at next logon".
    pub must_change: bool,
    /// Times the password was seen in leaks, when it is on the tenant's list.
    pub leaked: Option<u64>,
}

/// The leaked list's entries under one prefix: (the rest of the hash in hex, times seen).
pub type LeakedRange = Vec<(String, u64)>;

/// A sink's failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Where credentials go: the tenant.
pub trait HashSink: Send + Sync {
    /// The cloud connector (its connector space tells which users exist there).
    fn cloud(&self) -> &ConnectorId;
    /// The leaked list's entries with this 5-hex-digit prefix; `None`: the tenant has no list.
    fn leaked_range<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Option<LeakedRange>, SinkError>>;
    /// Sends credentials; returns (immutable id, status) per user: `Success`,
    /// `NoTargetConnection`, or a refusal.
    fn send<'a>(&'a self, credentials: &'a [Credential]) -> BoxFuture<'a, Result<Vec<(String, String)>, SinkError>>;
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A source failed.
    #[error("connector {connector}: {source}")]
    Source {
        /// The source's connector.
        connector: String,
        /// Its error.
        source: SourceError,
    },
    /// The sink failed.
    #[error("the tenant: {0}")]
    Sink(#[from] SinkError),
}

/// What one pass did for one connector.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// The connector.
    pub connector: String,
    /// Hashes read.
    pub read: usize,
    /// Credentials sent.
    pub sent: usize,
    /// Taken by the tenant.
    pub synced: usize,
    /// Disabled accounts, skipped.
    pub disabled: usize,
    /// Outside the connector's scope or every password-sync rule.
    pub out_of_scope: usize,
    /// Not (yet) a cloud user: remembered, sent once it is.
    pub not_in_cloud: usize,
    /// Refused by the tenant.
    pub refused: usize,
    /// DNs of accounts whose password is on the leaked list.
    pub leaked: Vec<String>,
}

/// The stored state of one partition: the watermark and the accounts read before they were in
/// the cloud (anchors in hex).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct PartitionState {
    watermark: Option<String>,
    #[serde(default)]
    pending: Vec<String>,
}

fn state_key(connector: &ConnectorId, partition: &str) -> String {
    format!("{}#{partition}", connector.0)
}

/// Where earlier versions kept the state: a pseudo-connector's watermark.
fn legacy_id(connector: &ConnectorId, partition: &str) -> ConnectorId {
    ConnectorId(format!("{}#{SERVICE}#{partition}", connector.0))
}

async fn load_state<S: Store>(store: &S, connector: &ConnectorId, partition: &str) -> Result<PartitionState, StoreError> {
    let bytes = match store.service_state(SERVICE, &state_key(connector, partition)).await? {
        Some(bytes) => Some(bytes),
        None => store.watermark(&legacy_id(connector, partition)).await?,
    };
    Ok(bytes.and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// The cloud user's immutable id for the on-premises object `anchor` of `connector`, when the
/// object is joined to one (linked to an MV object a `cloud` CS object is linked to).
async fn cloud_anchor<S: Store>(
    store: &S,
    connector: &ConnectorId,
    anchor: &Anchor,
    cloud: &ConnectorId,
) -> Result<Option<String>, StoreError> {
    let Some(mv) = store.cs_by_anchor(connector, anchor).await?.and_then(|cs| cs.link) else { return Ok(None) };
    let linked = store.cs_linked_to(mv).await?;
    Ok(linked.iter().find(|cs| &cs.connector == cloud).and_then(|cloud_cs| {
        match cloud_cs.attributes.get("onPremisesImmutableId").first() {
            Some(AttrValue::String(anchor)) => Some(anchor.clone()),
            _ => None,
        }
    }))
}

fn disabled_in(cs: &CsObject) -> bool {
    match cs.attributes.get("userAccountControl").first() {
        Some(AttrValue::Integer(uac)) => uac & 2 != 0,
        Some(AttrValue::String(uac)) => uac.parse::<i64>().is_ok_and(|uac| uac & 2 != 0),
        _ => false,
    }
}

/// The accounts of one source's pass, and each partition's state to store once they are sent.
struct SourceRead {
    accounts: Vec<HashedAccount>,
    out_of_scope: usize,
    states: Vec<(String, PartitionState)>,
}

async fn read_source<S: Store>(store: &S, source: &dyn HashSource, cloud: &ConnectorId, full: bool) -> Result<SourceRead, PassError> {
    let connector = source.connector().clone();
    let failed = |source: SourceError| PassError::Source { connector: connector.0.clone(), source };
    let mut read = SourceRead { accounts: Vec::new(), out_of_scope: 0, states: Vec::new() };
    for partition in source.partitions() {
        let stored = load_state(store, &connector, &partition).await?;
        let since = if full { None } else { stored.watermark.clone() };
        let pass = source.read(&partition, since.as_deref()).await.map_err(failed)?;
        let mut seen = HashSet::new();
        for account in pass.accounts {
            if !source.in_scope(&partition, &account.dn) {
                read.out_of_scope += 1;
                continue;
            }
            seen.insert(hex(&account.anchor.0));
            read.accounts.push(account);
        }
        // Accounts read before they were in the cloud: once one is, read them again (a full
        // read already has them).
        let mut ready = HashSet::new();
        for anchor in stored.pending.iter().filter(|anchor| !seen.contains(*anchor)) {
            if cloud_anchor(store, &connector, &Anchor(unhex(anchor)), cloud).await?.is_some() {
                ready.insert(anchor.clone());
            }
        }
        if since.is_some() && !ready.is_empty() {
            let again = source.read(&partition, None).await.map_err(failed)?;
            read.accounts.extend(again.accounts.into_iter().filter(|account| ready.contains(&hex(&account.anchor.0))));
        }
        let pending = stored.pending.into_iter().filter(|anchor| !ready.contains(anchor) && !seen.contains(anchor)).collect();
        read.states.push((partition, PartitionState { watermark: pass.watermark, pending }));
    }
    Ok(read)
}

/// One pass over `sources` into `sink` (`full`: read every account, not only changed ones);
/// `now` is the clock for run history. Returns what it did per connector.
pub async fn pass<S: Store>(
    store: &S,
    rules: &RuleSet,
    sources: &[&dyn HashSource],
    sink: &dyn HashSink,
    full: bool,
    now: &(dyn Fn() -> i64 + Sync),
) -> Result<Vec<Tally>, PassError> {
    let cloud = sink.cloud().clone();
    let memberships = sync_runner::Memberships::load(store, rules).await?;
    let member_of = |cs: &CsObject, group: &str| memberships.member_of(cs, group);
    // Ranges of the tenant's leaked list by prefix; `None` inside: the tenant has no list.
    let mut ranges: HashMap<String, Option<LeakedRange>> = HashMap::new();
    let mut list_loaded = true;
    let mut tallies = Vec::new();
    for source in sources {
        let id = source.connector().clone();
        let run = store.run_start(&id, SERVICE, now()).await?;
        let result = pass_source(store, rules, *source, sink, &cloud, full, &member_of, &mut ranges, &mut list_loaded).await;
        let (status, counts) = match &result {
            Ok(tally) => ("success", RunCounts { adds: 0, updates: tally.synced as u64, deletes: 0, errors: tally.refused as u64 }),
            Err(_) => ("failed", RunCounts::default()),
        };
        store.run_finish(run, now(), status, counts).await?;
        tallies.push(result?);
    }
    Ok(tallies)
}

/// One source's part of a pass.
#[allow(clippy::too_many_arguments, reason = "the pass's state, threaded through one source")]
async fn pass_source<S: Store>(
    store: &S,
    rules: &RuleSet,
    source: &dyn HashSource,
    sink: &dyn HashSink,
    cloud: &ConnectorId,
    full: bool,
    member_of: &(dyn Fn(&CsObject, &str) -> bool + Sync),
    ranges: &mut HashMap<String, Option<LeakedRange>>,
    list_loaded: &mut bool,
) -> Result<Tally, PassError> {
    let id = source.connector().clone();
    let read = read_source(store, source, cloud, full).await?;
    let mut tally = Tally {
        connector: id.0.clone(),
        read: read.accounts.len() + read.out_of_scope,
        out_of_scope: read.out_of_scope,
        ..Tally::default()
    };
    let mut credentials = Vec::new();
    let mut pending: Vec<(String, String)> = Vec::new();
    for account in read.accounts {
        let Some(cs) = store.cs_by_anchor(&id, &account.anchor).await? else {
            tally.not_in_cloud += 1;
            pending.push((hex(&account.anchor.0), account.dn.clone()));
            continue;
        };
        if account.disabled.unwrap_or_else(|| disabled_in(&cs)) {
            tally.disabled += 1;
            continue;
        }
        if !sync_engine::inbound::rules_in_scope(rules, &cs, member_of).iter().any(|rule| rule.password_sync) {
            tally.out_of_scope += 1;
            continue;
        }
        let Some(immutable_id) = cloud_anchor(store, &id, &account.anchor, cloud).await? else {
            tally.not_in_cloud += 1;
            pending.push((hex(&account.anchor.0), account.dn.clone()));
            continue;
        };
        let mut leaked = None;
        if *list_loaded {
            let prefix = account.nt.to_hex()[..5].to_string();
            if !ranges.contains_key(&prefix) {
                let range = sink.leaked_range(&prefix).await?;
                *list_loaded = range.is_some();
                ranges.insert(prefix.clone(), range);
            }
            leaked = ranges.get(&prefix).and_then(Option::as_ref).and_then(|range| phs::leaked::in_range(&account.nt, range));
            if leaked.is_some() {
                tally.leaked.push(account.dn.clone());
            }
        }
        let wire = zeroize::Zeroizing::new(phs::SyncedCredential::new(&account.nt).to_wire());
        credentials.push(Credential { immutable_id, wire, must_change: false, leaked });
    }
    tally.sent = credentials.len();
    let statuses = sink.send(&credentials).await?;
    for (anchor, status) in &statuses {
        match status.as_str() {
            "Success" => tally.synced += 1,
            "NoTargetConnection" => tally.not_in_cloud += 1,
            other => {
                tally.refused += 1;
                tracing::warn!(connector = id.0, anchor, status = other, "password hash not taken");
            }
        }
    }
    // The sink took them: now the watermarks move on.
    save_states(store, &id, read.states, &pending).await?;
    Ok(tally)
}

/// Each partition's new watermark and pending accounts (those whose DN lies in it).
async fn save_states<S: Store>(
    store: &S,
    connector: &ConnectorId,
    states: Vec<(String, PartitionState)>,
    pending: &[(String, String)],
) -> Result<(), StoreError> {
    let by_partition: BTreeMap<String, PartitionState> = states.into_iter().collect();
    for (partition, mut state) in by_partition {
        let suffix = partition.to_lowercase();
        for (anchor, dn) in pending {
            if dn.to_lowercase().ends_with(&suffix) && !state.pending.contains(anchor) {
                state.pending.push(anchor.clone());
            }
        }
        let bytes = serde_json::to_vec(&state).map_err(|err| StoreError::Backend(Box::new(err)))?;
        store.set_service_state(SERVICE, &state_key(connector, &partition), &bytes).await?;
        // Moved out of the pseudo-connector earlier versions used.
        if store.watermark(&legacy_id(connector, &partition)).await?.is_some() {
            store.clear_watermark(&legacy_id(connector, &partition)).await?;
        }
    }
    Ok(())
}
