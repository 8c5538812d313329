//! The connector contract suite against Isthmus's own tenant over HTTPS, and the connector's
//! own checks: users and groups with members, member changes both ways, bad credentials.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use connector_api::testkit::{Fixture, delta_import, full_import};
use connector_api::{BoxFuture, Connector, ExportRequest};
use connector_graph::{GraphConfig, dn_of};
use model::{AttrChange, AttrValue, Attributes, ImportChange, PendingExport};
use serde_json::{Value, json};

struct Running {
    base: String,
    domain: String,
    ca: std::path::PathBuf,
    admin: (String, String),
    sync: (String, String),
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn tenant() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tenant::TenantConfig::new(dir.path().join("state"), vec!["127.0.0.1:0".parse().unwrap()]);
    config.password_iterations = 1_000;
    let (tenant, bootstrap) = tenant::Tenant::open(config).await.unwrap();
    let admin = bootstrap.unwrap();
    let sync = tenant.register_app("sync", &[tenant::SYNC_ROLE, "Directory.ReadWrite.All"]).await.unwrap();
    let (domain, ca) = (tenant.initial_domain().to_string(), tenant.ca_pem.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, serve) = tenant
        .bind(async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    tokio::spawn(serve);
    Running {
        base: format!("https://127.0.0.1:{}", bound[0].port()),
        domain,
        ca,
        admin: (admin.client_id.clone(), admin.client_secret.to_string()),
        sync: (sync.client_id.clone(), sync.client_secret.to_string()),
        _dir: dir,
        _stop: stop,
    }
}

fn config(running: &Running) -> GraphConfig {
    GraphConfig {
        id: "tenant".into(),
        authority: running.base.clone(),
        graph: format!("{}/v1.0", running.base),
        tenant: running.domain.clone(),
        client_id: running.sync.0.clone(),
        client_secret: running.sync.1.clone().into(),
        ca_file: Some(running.ca.clone()),
        page_size: 2,
        attempts: 3,
    }
}

/// Changes the tenant behind the connector's back, as its admin.
struct TenantFixture {
    http: reqwest::Client,
    base: String,
    token: String,
    /// The test's name for an object → the id the tenant gave it.
    ids: BTreeMap<String, String>,
}

impl TenantFixture {
    async fn new(running: &Running) -> Self {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&running.ca).unwrap()).unwrap();
        let http = reqwest::Client::builder().add_root_certificate(ca).use_rustls_tls().build().unwrap();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", running.admin.0.as_str()),
            ("client_secret", running.admin.1.as_str()),
            ("scope", "x/.default"),
        ];
        let token: Value = http
            .post(format!("{}/{}/oauth2/v2.0/token", running.base, running.domain))
            .form(&form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        TenantFixture { http, base: running.base.clone(), token: token["access_token"].as_str().unwrap().to_string(), ids: BTreeMap::new() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}/v1.0{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert!(response.status().is_success(), "{} {path}", response.status());
        let text = response.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

impl Fixture for TenantFixture {
    fn create<'a>(&'a mut self, dn: &'a str, _object_type: &'a str, attributes: Attributes) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut body = json!({"displayName": dn});
            for (name, values) in attributes.iter() {
                body[name] = Value::String(values.first().map(ToString::to_string).unwrap_or_default());
            }
            let created = self.call(reqwest::Method::POST, "/contacts", Some(body)).await;
            self.ids.insert(dn.to_string(), created["id"].as_str().unwrap().to_string());
        })
    }

    fn modify<'a>(&'a mut self, dn: &'a str, attribute: &'a str, value: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let id = self.ids[dn].clone();
            self.call(reqwest::Method::PATCH, &format!("/contacts/{id}"), Some(json!({attribute: value}))).await;
        })
    }

    fn delete<'a>(&'a mut self, dn: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let id = self.ids[dn].clone();
            self.call(reqwest::Method::DELETE, &format!("/contacts/{id}"), None).await;
        })
    }

    fn new_object(&self, name: &str) -> (String, String) {
        (name.to_string(), "contact".into())
    }

    fn free_attribute(&self) -> &str {
        "displayName"
    }

    fn imported_dn(&self, dn: &str) -> String {
        self.ids.get(dn).map(|id| dn_of(id)).unwrap_or_else(|| dn.to_string())
    }
}

async fn fixture() -> Option<((Running, ()), Connector, TenantFixture)> {
    let running = tenant().await;
    let connector = connector_graph::open(config(&running)).await.unwrap();
    let fixture = TenantFixture::new(&running).await;
    Some(((running, ()), connector, fixture))
}

connector_api::contract_tests!(fixture());

fn upsert<'a>(changes: &'a [ImportChange], id: &str) -> Option<&'a Attributes> {
    changes.iter().find_map(|change| match change {
        ImportChange::Upsert { dn, attributes, .. } if *dn == dn_of(id) => Some(attributes),
        _ => None,
    })
}

/// The add of a synced user the tenant takes.
fn new_user(domain: &str, nickname: &str) -> ExportRequest {
    ExportRequest {
        dn: format!("CN={nickname}"),
        object_type: "user".into(),
        anchor: None,
        change: PendingExport::Add(vec![
            AttrChange::Replace("accountEnabled".into(), vec![AttrValue::Boolean(true)]),
            AttrChange::Replace("displayName".into(), vec![AttrValue::string(nickname)]),
            AttrChange::Replace("mailNickname".into(), vec![AttrValue::string(nickname)]),
            AttrChange::Replace("userPrincipalName".into(), vec![AttrValue::string(format!("{nickname}@{domain}"))]),
            AttrChange::Replace("onPremisesImmutableId".into(), vec![AttrValue::string(format!("anchor-{nickname}"))]),
            AttrChange::Replace("onPremisesSyncEnabled".into(), vec![AttrValue::Boolean(true)]),
            AttrChange::Replace("proxyAddresses".into(), vec![AttrValue::string(format!("SMTP:{nickname}@{domain}"))]),
        ]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_groups_and_members_both_ways() {
    let running = tenant().await;
    let connector = connector_graph::open(config(&running)).await.unwrap();
    let export = connector.export.as_ref().unwrap();
    let user = |nickname: &str| new_user(&running.domain, nickname);
    let ann = String::from_utf8(export.export(&user("ann")).await.unwrap().anchor.unwrap().0).unwrap();
    let bob = String::from_utf8(export.export(&user("bob")).await.unwrap().anchor.unwrap().0).unwrap();
    let group = ExportRequest {
        dn: "CN=staff".into(),
        object_type: "group".into(),
        anchor: None,
        change: PendingExport::Add(vec![
            AttrChange::Replace("displayName".into(), vec![AttrValue::string("Staff")]),
            AttrChange::Replace("mailEnabled".into(), vec![AttrValue::Boolean(false)]),
            AttrChange::Replace("mailNickname".into(), vec![AttrValue::string("staff")]),
            AttrChange::Replace("securityEnabled".into(), vec![AttrValue::Boolean(true)]),
            AttrChange::Replace("member".into(), vec![AttrValue::Reference(dn_of(&ann))]),
        ]),
    };
    let staff = String::from_utf8(export.export(&group).await.unwrap().anchor.unwrap().0).unwrap();

    let (full, watermark) = full_import(&connector).await;
    assert_eq!(upsert(&full, &ann).unwrap().get("proxyAddresses"), &[AttrValue::string(format!("SMTP:ann@{}", running.domain))]);
    assert_eq!(upsert(&full, &staff).unwrap().get("members"), &[AttrValue::Reference(dn_of(&ann))], "members as references");

    // Member changes and a property change, exported as value deltas.
    let update = ExportRequest {
        dn: dn_of(&staff),
        object_type: "group".into(),
        anchor: Some(model::Anchor(staff.clone().into_bytes())),
        change: PendingExport::Update(vec![
            AttrChange::Add("members".into(), vec![AttrValue::Reference(dn_of(&bob))]),
            AttrChange::Delete("member".into(), vec![AttrValue::Reference(dn_of(&ann))]),
            AttrChange::Replace("description".into(), vec![AttrValue::string("everyone")]),
        ]),
    };
    export.export(&update).await.unwrap();
    let (delta, watermark) = delta_import(&connector, &watermark).await;
    let staff_now = upsert(&delta, &staff).expect("the group changed");
    assert_eq!(staff_now.get("members"), &[AttrValue::Reference(dn_of(&bob))]);
    assert_eq!(staff_now.get("description"), &[AttrValue::string("everyone")]);

    // A delete reaches the tenant and comes back as a delete.
    let delete = ExportRequest {
        dn: dn_of(&bob),
        object_type: "user".into(),
        anchor: Some(model::Anchor(bob.clone().into_bytes())),
        change: PendingExport::Delete,
    };
    export.export(&delete).await.unwrap();
    export.export(&delete).await.expect("deleting what is gone is done");
    let (delta, _) = delta_import(&connector, &watermark).await;
    assert!(delta.iter().any(|change| matches!(change, ImportChange::Delete { anchor } if anchor.0 == bob.as_bytes())), "{delta:#?}");

    // A duplicate UPN from the sync is quarantined by the tenant, not refused; the next import
    // reports what the sync wrote, with the conflict for people to see.
    // (Another on-premises object — another anchor — with ann's UPN: not a match, a conflict.)
    let mut other = user("ann");
    if let PendingExport::Add(changes) = &mut other.change {
        changes.retain(|change| !matches!(change, AttrChange::Replace(name, _) if name == "onPremisesImmutableId"));
        changes.push(AttrChange::Replace("onPremisesImmutableId".into(), vec![AttrValue::string("anchor-ann-twin")]));
    }
    let twin = String::from_utf8(export.export(&other).await.expect("resiliency: the write succeeds").anchor.unwrap().0).unwrap();
    assert_ne!(twin, ann, "a second object, not a match");
    let (full, _) = full_import(&connector).await;
    let twin = upsert(&full, &twin).unwrap();
    assert_eq!(twin.get("userPrincipalName"), &[AttrValue::string(format!("ann@{}", running.domain))], "no churn: what the sync wrote");
    assert!(twin.get("provisioningErrors").iter().any(|error| error.to_string().contains("UserPrincipalName")), "{twin:?}");

    // A refusal is one object's error.
    let incomplete = ExportRequest {
        dn: "CN=nobody".into(),
        object_type: "user".into(),
        anchor: None,
        change: PendingExport::Add(vec![AttrChange::Replace("accountEnabled".into(), vec![AttrValue::Boolean(true)])]),
    };
    let refused = export.export(&incomplete).await;
    assert!(matches!(&refused, Err(connector_api::ConnectorError::Rejected { .. })), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_of_exports_gives_one_result_per_object() {
    let running = tenant().await;
    let connector = connector_graph::open(config(&running)).await.unwrap();
    let export = connector.export.as_ref().unwrap();
    let user = |nickname: &str| new_user(&running.domain, nickname);
    let incomplete = ExportRequest {
        dn: "CN=nobody".into(),
        object_type: "user".into(),
        anchor: None,
        change: PendingExport::Add(vec![AttrChange::Replace("accountEnabled".into(), vec![AttrValue::Boolean(true)])]),
    };
    let gone = ExportRequest {
        dn: "CN=gone".into(),
        object_type: "user".into(),
        anchor: Some(model::Anchor(b"00000000-0000-0000-0000-000000000000".to_vec())),
        change: PendingExport::Delete,
    };
    let chunk = [user("carol"), incomplete, user("dave"), gone];
    let results = export.export_many(&chunk).await;
    assert_eq!(results.len(), 4, "{results:?}");
    let carol = String::from_utf8(results[0].as_ref().unwrap().anchor.clone().unwrap().0).unwrap();
    assert!(matches!(&results[1], Err(connector_api::ConnectorError::Rejected { .. })), "{:?}", results[1]);
    let dave = String::from_utf8(results[2].as_ref().unwrap().anchor.clone().unwrap().0).unwrap();
    assert!(results[3].is_ok(), "deleting what is gone is done: {:?}", results[3]);
    assert_ne!(carol, dave);

    // Each anchor is the object the tenant made for that request.
    let (full, _) = full_import(&connector).await;
    assert_eq!(upsert(&full, &carol).unwrap().get("displayName"), &[AttrValue::string("carol")]);
    assert_eq!(upsert(&full, &dave).unwrap().get("displayName"), &[AttrValue::string("dave")]);

    // Updates and deletes of a chunk, with one for an object the tenant does not have.
    let update = |id: &str, name: &str| ExportRequest {
        dn: dn_of(id),
        object_type: "user".into(),
        anchor: Some(model::Anchor(id.as_bytes().to_vec())),
        change: PendingExport::Update(vec![AttrChange::Replace("displayName".into(), vec![AttrValue::string(name)])]),
    };
    let delete = ExportRequest {
        dn: dn_of(&dave),
        object_type: "user".into(),
        anchor: Some(model::Anchor(dave.clone().into_bytes())),
        change: PendingExport::Delete,
    };
    let results = export.export_many(&[update(&carol, "Carol C"), update("11111111-1111-1111-1111-111111111111", "x"), delete]).await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(results[1].is_err(), "an update of a missing object fails on its own: {:?}", results[1]);
    assert!(results[2].is_ok(), "{:?}", results[2]);
    let (full, _) = full_import(&connector).await;
    assert_eq!(upsert(&full, &carol).unwrap().get("displayName"), &[AttrValue::string("Carol C")]);
    assert!(upsert(&full, &dave).is_none(), "dave is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_configuration_error() {
    let running = tenant().await;
    let mut wrong = config(&running);
    wrong.client_secret = "not-the-secret".to_string().into();
    let err = connector_graph::open(wrong).await.err().expect("refused");
    assert!(matches!(err, connector_api::ConnectorError::Config(_)), "{err}");
    assert!(!format!("{:?}", config(&running)).contains(&running.sync.1), "the secret stays out of Debug output");
}

/// The group add of `members`.
fn new_group(nickname: &str, members: Vec<AttrValue>) -> ExportRequest {
    ExportRequest {
        dn: format!("CN={nickname}"),
        object_type: "group".into(),
        anchor: None,
        change: PendingExport::Add(vec![
            AttrChange::Replace("displayName".into(), vec![AttrValue::string(nickname)]),
            AttrChange::Replace("mailEnabled".into(), vec![AttrValue::Boolean(false)]),
            AttrChange::Replace("mailNickname".into(), vec![AttrValue::string(nickname)]),
            AttrChange::Replace("securityEnabled".into(), vec![AttrValue::Boolean(true)]),
            AttrChange::Replace("onPremisesImmutableId".into(), vec![AttrValue::string(format!("anchor-{nickname}"))]),
            AttrChange::Replace("members".into(), members),
        ]),
    }
}

/// An export the tenant takes only in part says exactly what it did not take: a member the
/// tenant does not have (refused), a member not created yet (waiting), never reported as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_export_says_exactly_what_was_left() {
    let running = tenant().await;
    let connector = connector_graph::open(config(&running)).await.unwrap();
    let export = connector.export.as_ref().unwrap();
    let mut users = Vec::new();
    for index in 0..25 {
        let outcome = export.export(&new_user(&running.domain, &format!("u{index}"))).await.unwrap();
        users.push(String::from_utf8(outcome.anchor.unwrap().0).unwrap());
    }
    let missing = "22222222-2222-2222-2222-222222222222".to_string();
    let placeholder = AttrValue::Reference("CN={42}".into());

    // Only references to objects not created yet: the group is made, the members wait.
    let outcome = export.export(&new_group("waiting", vec![placeholder.clone()])).await.unwrap();
    let left = outcome.left.expect("the member is left");
    assert_eq!(left.reason, connector_api::UnappliedReason::WaitingForReferences);
    assert_eq!(left.changes, vec![AttrChange::Add("members".into(), vec![placeholder.clone()])]);
    assert!(outcome.anchor.is_some(), "the group exists");

    // 25 real members (two chunks), one the tenant does not have, one not created yet.
    let mut members: Vec<AttrValue> = users.iter().map(|id| AttrValue::Reference(dn_of(id))).collect();
    members.insert(7, AttrValue::Reference(dn_of(&missing)));
    members.push(placeholder.clone());
    let outcome = export.export(&new_group("partial", members)).await.unwrap();
    let group = String::from_utf8(outcome.anchor.clone().unwrap().0).unwrap();
    let left = outcome.left.expect("two members are left");
    assert!(matches!(left.reason, connector_api::UnappliedReason::Failed(connector_api::ConnectorError::Rejected { .. })), "{left:?}");
    assert_eq!(left.changes, vec![AttrChange::Add("members".into(), vec![placeholder.clone(), AttrValue::Reference(dn_of(&missing))])]);
    let (full, _) = full_import(&connector).await;
    assert_eq!(upsert(&full, &group).unwrap().get("members").len(), 25, "every real member was added");

    // An update that replaces the members: removals and additions, one refused.
    let update = ExportRequest {
        dn: dn_of(&group),
        object_type: "group".into(),
        anchor: Some(model::Anchor(group.clone().into_bytes())),
        change: PendingExport::Update(vec![AttrChange::Replace(
            "members".into(),
            vec![AttrValue::Reference(dn_of(&users[0])), AttrValue::Reference(dn_of(&missing))],
        )]),
    };
    let outcome = export.export(&update).await.unwrap();
    let left = outcome.left.expect("the missing member is left");
    assert_eq!(left.changes, vec![AttrChange::Add("members".into(), vec![AttrValue::Reference(dn_of(&missing))])]);
    let (full, _) = full_import(&connector).await;
    assert_eq!(upsert(&full, &group).unwrap().get("members"), &[AttrValue::Reference(dn_of(&users[0]))]);

    // Everything taken: nothing left.
    let outcome = export.export(&new_group("whole", vec![AttrValue::Reference(dn_of(&users[1]))])).await.unwrap();
    assert_eq!(outcome.left, None);
}
