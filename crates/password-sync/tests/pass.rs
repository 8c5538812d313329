//! The pass over a real (SQLite) store with in-process source and sink (the ports' own
//! implementations, not stand-ins for a server): what is sent, what waits until its user is in
//! the cloud, watermarks that move only after the sink took the credentials, scoping by the
//! rules (with ISMEMBEROF), disabled accounts, the leaked list, and the move of earlier
//! versions' state out of a pseudo-connector.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::sync::Mutex;

use model::{Anchor, AttrValue, Attributes, ConnectorId};
use password_sync::{BoxFuture, Credential, HashRead, HashSink, HashSource, HashedAccount, LeakedRange, SinkError, SourceError};
use store::{NewCsObject, Store};
use store_sqlite::SqliteStore;

const RULES: &str = r#"
[[rule]]
name = "In from AD - user"
direction = "inbound"
connector = "ad"
source_type = "user"
target_type = "person"
link_type = "provision"
precedence = 10
password_sync = true
scope = [[{ attribute = "ismemberof", operator = "ISMEMBEROF", value = "CN=Pilot,DC=corp" }]]
[[rule.flow]]
target = "displayName"
direct = "cn"
"#;

/// The accounts a directory holds, with a change counter as the watermark.
struct Directory {
    connector: ConnectorId,
    accounts: Mutex<Vec<(u8, String, String, u64)>>,
    reads: Mutex<Vec<Option<String>>>,
}

impl Directory {
    fn new(accounts: &[(u8, &str, &str)]) -> Self {
        Directory {
            connector: ConnectorId("ad".into()),
            accounts: Mutex::new(accounts.iter().map(|(byte, dn, password)| (*byte, dn.to_string(), password.to_string(), 1)).collect()),
            reads: Mutex::new(Vec::new()),
        }
    }

    fn change_password(&self, byte: u8, password: &str) {
        let mut accounts = self.accounts.lock().unwrap();
        let top = accounts.iter().map(|account| account.3).max().unwrap_or(0);
        let account = accounts.iter_mut().find(|account| account.0 == byte).unwrap();
        account.2 = password.to_string();
        account.3 = top + 1;
    }
}

impl HashSource for Directory {
    fn connector(&self) -> &ConnectorId {
        &self.connector
    }
    fn partitions(&self) -> Vec<String> {
        vec!["DC=corp".into()]
    }
    fn read<'a>(&'a self, _partition: &'a str, since: Option<&'a str>) -> BoxFuture<'a, Result<HashRead, SourceError>> {
        Box::pin(async move {
            self.reads.lock().unwrap().push(since.map(str::to_string));
            let after: u64 = since.map_or(0, |since| since.parse().unwrap());
            let accounts = self.accounts.lock().unwrap();
            let top = accounts.iter().map(|account| account.3).max().unwrap_or(0);
            Ok(HashRead {
                accounts: accounts
                    .iter()
                    .filter(|account| account.3 > after)
                    .map(|(byte, dn, password, _)| HashedAccount {
                        anchor: Anchor(vec![*byte; 16]),
                        dn: dn.clone(),
                        nt: phs::NtHash::of_password(password),
                        disabled: None,
                    })
                    .collect(),
                watermark: Some(top.to_string()),
            })
        })
    }
    fn in_scope(&self, _partition: &str, dn: &str) -> bool {
        !dn.contains("OU=Elsewhere")
    }
}

/// The cloud's end: what it was sent, and whether it answers at all.
#[derive(Default)]
struct Cloud {
    sent: Mutex<Vec<(String, String)>>,
    down: Mutex<bool>,
    leaked: Vec<(String, u64)>,
}

impl HashSink for Cloud {
    fn cloud(&self) -> &ConnectorId {
        static TENANT: std::sync::OnceLock<ConnectorId> = std::sync::OnceLock::new();
        TENANT.get_or_init(|| ConnectorId("tenant".into()))
    }
    fn leaked_range<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Option<LeakedRange>, SinkError>> {
        Box::pin(async move {
            Ok(Some(
                self.leaked
                    .iter()
                    .filter(|(hash, _)| hash.starts_with(prefix))
                    .map(|(hash, count)| (hash[5..].to_string(), *count))
                    .collect(),
            ))
        })
    }
    fn send<'a>(&'a self, credentials: &'a [Credential]) -> BoxFuture<'a, Result<Vec<(String, String)>, SinkError>> {
        Box::pin(async move {
            if *self.down.lock().unwrap() {
                return Err(SinkError("the tenant is down".into()));
            }
            let mut sent = self.sent.lock().unwrap();
            Ok(credentials
                .iter()
                .map(|credential| {
                    sent.push((credential.immutable_id.clone(), credential.wire.to_string()));
                    (credential.immutable_id.clone(), "Success".to_string())
                })
                .collect())
        })
    }
}

async fn store() -> SqliteStore {
    let store = SqliteStore::memory().expect("store");
    store.migrate().await.expect("migrate");
    store
}

/// An AD user in the connector space, joined to a cloud user (`in_cloud`) or not.
async fn user(store: &SqliteStore, byte: u8, dn: &str, uac: i64, in_cloud: bool) -> model::MvId {
    let mv = store.mv_insert("person").await.expect("mv");
    let attributes = Attributes::new().with("cn", AttrValue::string(dn)).with("userAccountControl", AttrValue::Integer(uac));
    store
        .cs_insert(NewCsObject {
            connector: ConnectorId("ad".into()),
            anchor: Some(Anchor(vec![byte; 16])),
            dn: dn.into(),
            object_type: "user".into(),
            attributes,
            pending_import: None,
            pending_export: None,
            link: Some(mv),
        })
        .await
        .expect("ad cs");
    if in_cloud {
        join_cloud(store, byte, mv).await;
    }
    mv
}

async fn join_cloud(store: &SqliteStore, byte: u8, mv: model::MvId) {
    store
        .cs_insert(NewCsObject {
            connector: ConnectorId("tenant".into()),
            anchor: Some(Anchor(vec![byte, 0xcc])),
            dn: format!("objectId={byte}"),
            object_type: "user".into(),
            attributes: Attributes::new().with("onPremisesImmutableId", AttrValue::string(format!("immutable-{byte}"))),
            pending_import: None,
            pending_export: None,
            link: Some(mv),
        })
        .await
        .expect("cloud cs");
}

async fn pilot(store: &SqliteStore, members: &[&str]) {
    let mut attributes = Attributes::new();
    attributes.set("member", members.iter().map(|dn| AttrValue::string(*dn)).collect());
    store
        .cs_insert(NewCsObject {
            connector: ConnectorId("ad".into()),
            anchor: Some(Anchor(vec![0xee; 16])),
            dn: "CN=Pilot,DC=corp".into(),
            object_type: "group".into(),
            attributes,
            pending_import: None,
            pending_export: None,
            link: None,
        })
        .await
        .expect("group");
}

fn rules() -> sync_rules::RuleSet {
    sync_rules::RuleSet::parse(RULES).expect("rules")
}

fn now() -> i64 {
    1_000
}

#[tokio::test]
async fn a_pass_sends_what_the_rules_sync_and_remembers_who_is_not_in_the_cloud_yet() {
    let store = store().await;
    let (ann, bob, cy, dee, eve) = ("CN=Ann,DC=corp", "CN=Bob,DC=corp", "CN=Cy,DC=corp", "CN=Dee,DC=corp", "CN=Eve,OU=Elsewhere,DC=corp");
    user(&store, 1, ann, 512, true).await;
    let bob_mv = user(&store, 2, bob, 512, false).await;
    user(&store, 3, cy, 514, true).await; // disabled
    user(&store, 4, dee, 512, true).await; // not in the pilot group
    pilot(&store, &[ann, bob, cy]).await;
    let directory =
        Directory::new(&[(1, ann, "Ann!Pass1"), (2, bob, "Bob!Pass1"), (3, cy, "Cy!Pass1"), (4, dee, "Dee!Pass1"), (5, eve, "Eve!Pass1")]);
    let leaked_hash = phs::NtHash::of_password("Ann!Pass1").to_hex().to_string();
    let cloud = Cloud { leaked: vec![(leaked_hash, 42)], ..Cloud::default() };
    let tallies = password_sync::pass(&store, &rules(), &[&directory], &cloud, false, &now).await.expect("pass");
    let tally = &tallies[0];
    assert_eq!(
        (tally.read, tally.sent, tally.synced, tally.disabled, tally.out_of_scope, tally.not_in_cloud),
        (5, 1, 1, 1, 2, 1),
        "{tally:?}"
    );
    assert_eq!(tally.leaked, vec![ann.to_string()], "Ann's password is on the list");
    let sent = cloud.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "immutable-1");
    assert!(
        !sent[0].1.contains("Ann!Pass1") && sent[0].1 != phs::NtHash::of_password("Ann!Pass1").to_hex().to_string(),
        "only the derived credential leaves"
    );

    // Bob reaches the cloud; nothing changed on-premises: the incremental pass reads him again.
    join_cloud(&store, 2, bob_mv).await;
    let tallies = password_sync::pass(&store, &rules(), &[&directory], &cloud, false, &now).await.expect("second pass");
    assert_eq!(tallies[0].sent, 1, "{:?}", tallies[0]);
    assert_eq!(cloud.sent.lock().unwrap().last().unwrap().0, "immutable-2");
    assert_eq!(directory.reads.lock().unwrap().clone(), vec![None, Some("1".into()), None], "incremental, then a full read for Bob");

    // A third pass with nothing new sends nothing and reads incrementally only.
    let tallies = password_sync::pass(&store, &rules(), &[&directory], &cloud, false, &now).await.expect("third pass");
    assert_eq!((tallies[0].read, tallies[0].sent), (0, 0));
    let history = store.runs(10).await.expect("runs");
    assert!(
        history.iter().all(|run| run.connector.0 == "ad" && run.step == "password-hash-sync" && run.status == "success"),
        "{history:?}"
    );
}

#[tokio::test]
async fn the_watermark_moves_only_after_the_tenant_took_the_credentials() {
    let store = store().await;
    let ann = "CN=Ann,DC=corp";
    user(&store, 1, ann, 512, true).await;
    pilot(&store, &[ann]).await;
    let directory = Directory::new(&[(1, ann, "Ann!Pass1")]);
    let cloud = Cloud::default();
    password_sync::pass(&store, &rules(), &[&directory], &cloud, false, &now).await.expect("pass");
    directory.change_password(1, "Ann!Pass2");
    *cloud.down.lock().unwrap() = true;
    let err = password_sync::pass(&store, &rules(), &[&directory], &cloud, false, &now).await.expect_err("tenant down");
    assert!(err.to_string().contains("the tenant is down"), "{err}");
    *cloud.down.lock().unwrap() = false;
    let tallies = password_sync::pass(&store, &rules(), &[&directory], &cloud, false, &now).await.expect("after the outage");
    assert_eq!(tallies[0].sent, 1, "the change is read again: {:?}", tallies[0]);
    let wire = cloud.sent.lock().unwrap().last().unwrap().1.clone();
    let expected = phs::SyncedCredential::new(&phs::NtHash::of_password("Ann!Pass2")).to_wire();
    assert_ne!(wire, expected, "a fresh salt each time, so compare lengths and the version only");
    assert_eq!(wire.len(), expected.len());
    assert!(store.runs(10).await.expect("runs").iter().any(|run| run.status == "failed"), "the failed pass is in the history");
}

#[tokio::test]
async fn state_kept_by_earlier_versions_in_a_pseudo_connector_is_moved() {
    let store = store().await;
    let ann = "CN=Ann,DC=corp";
    user(&store, 1, ann, 512, true).await;
    pilot(&store, &[ann]).await;
    let legacy = ConnectorId("ad#password-hash-sync#DC=corp".into());
    let run = store.run_start(&legacy, "password-hash-sync", 1).await.expect("run");
    store.commit_import_page(&legacy, run, &[], Some(br#"{"watermark":"1","pending":[]}"#)).await.expect("legacy state");
    let directory = Directory::new(&[(1, ann, "Ann!Pass1")]);
    let cloud = Cloud::default();
    password_sync::pass(&store, &rules(), &[&directory], &cloud, false, &now).await.expect("pass");
    assert_eq!(directory.reads.lock().unwrap().clone(), vec![Some("1".to_string())], "continued from the old watermark");
    assert_eq!(store.watermark(&legacy).await.expect("legacy"), None, "the pseudo-connector's watermark is gone");
    assert!(store.service_state(password_sync::SERVICE, "ad#DC=corp").await.expect("state").is_some());
}
