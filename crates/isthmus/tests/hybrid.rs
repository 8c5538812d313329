//! The hybrid path end to end: people and a group in a Samba AD domain synced by `isthmus sync
//! run` with Entra Connect's default rules into Isthmus's tenant over HTTPS, whose custom domain
//! was verified through a real DNS server; then an on-premises change carried by a delta cycle.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::process::Command;

use serde_json::{Value, json};
use testkit::dns::Dnsmasq;
use testkit::samba::{AdUser, SambaConfig, SambaDc};

fn isthmus(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_isthmus")).args(args).output().expect("run isthmus");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

struct Graph {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Graph {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{status} {path}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn status(&self, path: &str) -> reqwest::StatusCode {
        self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap().status()
    }

    /// The one user whose onPremisesSamAccountName is `sam`.
    async fn synced(&self, sam: &str) -> Value {
        let found = self.call(reqwest::Method::GET, &format!("/v1.0/users?$filter=onPremisesSamAccountName eq '{sam}'"), None).await;
        found["value"][0].clone()
    }
}

/// Replaces `from` by `to` in a configuration file.
fn edit(path: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// A Samba DC with three people and a group, a tenant with their domain verified through a real
/// DNS server, and a configuration file for `isthmus sync`: everything a hybrid test needs.
struct Hybrid {
    _dc: SambaDc,
    _dns: Dnsmasq,
    /// The TXT record that verified `domain`.
    dns_code: String,
    ou: String,
    folder: tempfile::TempDir,
    graph: Graph,
    domain: String,
    ad: testkit::samba::AdAdmin,
    people: Vec<String>,
    state: std::path::PathBuf,
    config_path: std::path::PathBuf,
    /// The sync app (id, secret), the tenant's URL, initial domain and CA, the DC's CA and admin.
    sync_app: (String, String),
    base: String,
    initial: String,
    tenant_ca: std::path::PathBuf,
    dc_ca: std::path::PathBuf,
    dc_admin: (String, String),
    dc_host: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn setup() -> Option<Hybrid> {
    let dc = testkit::available(SambaDc::start_default())?;
    let mut dns = testkit::available(Dnsmasq::start(&[]))?;

    // The tenant, with an app for the sync service and one for the admin.
    let folder = tempfile::tempdir().unwrap();
    let mut config = tenant::TenantConfig::new(folder.path().join("tenant"), vec!["127.0.0.1:0".parse().unwrap()]);
    config.dns_resolver = Some(dns.addr());
    let (tenant, bootstrap) = tenant::Tenant::open(config).await.unwrap();
    let admin = bootstrap.unwrap();
    let sync = tenant.register_app("Isthmus sync", &[tenant::SYNC_ROLE]).await.unwrap();
    let (initial, ca) = (tenant.initial_domain().to_string(), tenant.ca_pem.clone());
    let running = tenant.spawn().await.unwrap();
    let (stop, base) = (running.stop, running.base);
    let http = testkit::https_client(&ca).unwrap();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", admin.client_id.as_str()),
        ("client_secret", admin.client_secret.as_str()),
        ("scope", "x/.default"),
    ];
    let token: Value = http.post(format!("{base}/{initial}/oauth2/v2.0/token")).form(&form).send().await.unwrap().json().await.unwrap();
    let graph = Graph { http, base: base.clone(), token: token["access_token"].as_str().unwrap().to_string() };

    // The AD domain's DNS name becomes a verified domain of the tenant.
    let domain = dc.config().realm.to_lowercase();
    graph.call(reqwest::Method::POST, "/v1.0/domains", Some(json!({"id": domain}))).await;
    let records = graph.call(reqwest::Method::GET, &format!("/v1.0/domains/{domain}/verificationDnsRecords"), None).await;
    let code = records["value"][0]["text"].as_str().unwrap().to_string();
    dns.replace_records(&[(domain.as_str(), code.as_str())]).unwrap();
    let dns_code = code.clone();
    graph.call(reqwest::Method::POST, &format!("/v1.0/domains/{domain}/verify"), None).await;

    // On-premises: two people and a group.
    let mut ad = dc.admin().await.unwrap();
    let ou = ad.create_ou(&format!("Hybrid-{}", std::process::id()), None).await.unwrap();
    let mut people = Vec::new();
    for sam in ["hana", "ivo", "kim"] {
        let user = AdUser {
            parent_dn: Some(ou.clone()),
            mail: Some(format!("{sam}@{domain}")),
            ..AdUser::with_password(sam, &domain, "Str0ng!Pass.1")
        };
        people.push(ad.create_user(&user).await.unwrap());
    }
    ad.create_group("Hybrid Staff", Some(&ou), &[&people[0]]).await.unwrap();

    let state = folder.path().join("sync");
    std::fs::create_dir_all(&state).unwrap();
    let config_text = format!(
        r#"[store]
sqlite = "isthmus.db"

[sync]
default_rules = true

[[connector]]
id = "{ad_id}"
flavour = "active-directory"
host = "{dc_host}"
ca_file = "{dc_ca}"
include_ous = ["{ou}"]
[connector.bind]
method = "simple"
dn = "{dc_admin}"
password = "{dc_password}"

[[graph]]
id = "tenant"
authority = "{base}"
graph = "{base}/v1.0"
tenant = "{initial}"
client_id = "{client_id}"
client_secret = "{client_secret}"
ca_file = "{tenant_ca}"
"#,
        ad_id = domain,
        dc_host = dc.ip(),
        dc_ca = dc.ca_pem().display(),
        dc_admin = dc.admin_dn(),
        dc_password = dc.config().admin_password,
        client_id = sync.client_id,
        client_secret = &*sync.client_secret,
        tenant_ca = ca.display(),
    );
    let config_path = state.join("isthmus.toml");
    std::fs::write(&config_path, config_text).unwrap();
    let sync_app = (sync.client_id.clone(), sync.client_secret.to_string());
    let (dc_ca, dc_admin, dc_host) = (dc.ca_pem().to_path_buf(), (dc.admin_dn(), dc.config().admin_password.clone()), dc.ip().to_string());
    Some(Hybrid {
        _dc: dc,
        _dns: dns,
        dns_code,
        ou,
        folder,
        graph,
        domain,
        ad,
        people,
        state,
        config_path,
        sync_app,
        base,
        initial,
        tenant_ca: ca,
        dc_ca,
        dc_admin,
        dc_host,
        _stop: stop,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_people_and_groups_reach_the_tenant_with_the_default_rules() {
    let Some(Hybrid {
        graph,
        domain,
        mut ad,
        people,
        state,
        config_path,
        folder: _folder,
        _dc: _dc_alive,
        _dns: _dns_alive,
        _stop: _tenant_alive,
        ..
    }) = setup().await
    else {
        return;
    };
    // A cloud-only account with kim's UPN is soft-matched: kim takes it over. A cloud group
    // already holds one of hana's addresses: that address is quarantined, not refused.
    let cloud_kim = json!({"accountEnabled": true, "displayName": "Kim (cloud)", "mailNickname": "kimcloud", "userPrincipalName": format!("kim@{domain}"),
                           "passwordProfile": {"password": "Str0ng!Pass", "forceChangePasswordNextSignIn": false}});
    let cloud_kim = graph.call(reqwest::Method::POST, "/v1.0/users", Some(cloud_kim)).await;
    let aliases = json!({"displayName": "Aliases", "mailEnabled": true, "mailNickname": "aliases", "securityEnabled": false,
                         "proxyAddresses": [format!("SMTP:aliases@{domain}"), format!("smtp:hana.alias@{domain}")]});
    let aliases = graph.call(reqwest::Method::POST, "/v1.0/groups", Some(aliases)).await;
    let proxies = [format!("SMTP:hana@{domain}"), format!("smtp:hana.alias@{domain}")];
    ad.conn().replace(&people[0], "proxyAddresses", &proxies.iter().map(String::as_str).collect::<Vec<_>>()).await.unwrap();
    let config_arg = config_path.to_str().unwrap();
    let (ok, out, err) = isthmus(&["check-config", config_arg]);
    assert!(ok, "{out}\n{err}");

    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg, "--full"]);
    assert!(ok, "the first cycle failed:\n{out}\n{err}");
    // Members refer to users created in the same cycle: they are exported once the confirming
    // import has given those users their cloud ids, by the next cycle.
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "the second cycle failed:\n{out}\n{err}");
    let hana = graph.call(reqwest::Method::GET, &format!("/v1.0/users/hana@{domain}"), None).await;
    assert_eq!(hana["onPremisesSyncEnabled"], true, "{hana}\n{out}");
    assert!(
        hana["onPremisesImmutableId"].as_str().is_some_and(|anchor| anchor.len() == 24),
        "the sourceAnchor is the objectGUID in base64: {hana}"
    );
    assert_eq!(hana["onPremisesSamAccountName"], "hana");
    assert_eq!(hana["accountEnabled"], true);
    // The anchor in use (objectGUID) was written back into mS-DS-ConsistencyGuid.
    let entries =
        ad.conn().search(&people[0], ldap3::Scope::Base, "(objectClass=*)", &["objectGUID", "mS-DS-ConsistencyGuid"]).await.unwrap();
    let (guid, consistency) = (&entries[0].bin_attrs["objectGUID"], entries[0].bin_attrs.get("mS-DS-ConsistencyGuid"));
    assert_eq!(consistency, Some(guid), "consistency GUID written back:\n{out}");
    let groups = graph.call(reqwest::Method::GET, "/v1.0/groups?$filter=displayName eq 'Hybrid Staff'", None).await;
    let (_, errors, _) =
        isthmus(&["cs", "search", "--db", state.join("isthmus.db").to_str().unwrap(), "--connector", "tenant", "--errors"]);
    let out = format!("{out}\n{errors}");
    let staff = groups["value"][0]["id"].as_str().unwrap_or_else(|| panic!("the group is in the tenant: {groups}\n{out}")).to_string();
    let members = graph.call(reqwest::Method::GET, &format!("/v1.0/groups/{staff}/members"), None).await;
    assert_eq!(members["value"][0]["id"], hana["id"], "membership follows: {members}");

    // A change on-premises reaches the tenant with the next delta cycle.
    ad.conn().replace(&people[1], "title", &["Director"]).await.unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "the delta cycle failed:\n{out}\n{err}");
    let ivo = graph.call(reqwest::Method::GET, &format!("/v1.0/users/ivo@{domain}"), None).await;
    assert_eq!(ivo["jobTitle"], "Director", "{out}");
    let kim = graph.call(reqwest::Method::GET, &format!("/v1.0/users/kim@{domain}"), None).await;
    assert_eq!((kim["id"].clone(), kim["onPremisesSyncEnabled"].clone()), (cloud_kim["id"].clone(), json!(true)), "soft match: {kim}");

    // The quarantined address is shown by the CLI; it comes back once the group lets it go.
    let db = state.join("isthmus.db");
    let (ok, conflicts, _) = isthmus(&["conflicts", "--db", db.to_str().unwrap()]);
    assert!(ok && conflicts.contains(&format!("hana.alias@{domain}")) && conflicts.contains("1 conflict(s)"), "{conflicts}");
    graph.call(reqwest::Method::DELETE, &format!("/v1.0/groups/{}", aliases["id"].as_str().unwrap()), None).await;
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    let hana = graph.call(reqwest::Method::GET, &format!("/v1.0/users/hana@{domain}"), None).await;
    assert_eq!(hana["proxyAddresses"].as_array().map(Vec::len), Some(2), "the address is back: {hana}");
    let (_, conflicts, _) = isthmus(&["conflicts", "--db", db.to_str().unwrap()]);
    assert!(conflicts.contains("0 conflict(s)"), "{conflicts}");

    // And a further cycle has nothing to do: the tenant's state reads back as what was exported.
    let (ok, out, _) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok && out.lines().filter(|line| line.contains(" export ")).all(|line| line.contains("0 exported")), "no churn:\n{out}");

    // The tenant remembers the anchor; a server configured with another one is refused.
    let settings = graph.call(reqwest::Method::GET, "/v1.0/directory/onPremisesSynchronization", None).await;
    assert_eq!(settings["value"][0]["configuration"]["anchorAttribute"], "mS-DS-ConsistencyGuid", "{settings}");
    let other = config_path.with_file_name("other-anchor.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&config_path)
            .unwrap()
            .replace("default_rules = true", "default_rules = true\nsource_anchor = \"objectGUID\""),
    )
    .unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", other.to_str().unwrap()]);
    assert!(
        !ok && err.contains("anchored on mS-DS-ConsistencyGuid") && err.contains("source_anchor = \"mS-DS-ConsistencyGuid\""),
        "{out}\n{err}"
    );

    // Alternate login ID: the cloud UPN comes from mail.
    ad.conn().replace(&people[1], "mail", &[&format!("ivo.mail@{domain}")]).await.unwrap();
    let alternate = config_path.with_file_name("alternate-id.toml");
    std::fs::write(
        &alternate,
        std::fs::read_to_string(&config_path).unwrap().replace("default_rules = true", "default_rules = true\nupn_attribute = \"mail\""),
    )
    .unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", alternate.to_str().unwrap(), "--full"]);
    assert!(ok, "{out}\n{err}");
    let ivo = graph.call(reqwest::Method::GET, &format!("/v1.0/users/ivo.mail@{domain}"), None).await;
    assert_eq!(ivo["onPremisesSamAccountName"], "ivo", "the UPN is ivo's mail now: {ivo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_serve_in_near_real_time_mode_carries_a_change_without_waiting_for_the_schedule() {
    let Some(Hybrid { graph, domain, mut ad, people, config_path, folder, _dc: _dc_alive, _dns: _dns_alive, _stop: _tenant_alive, .. }) =
        setup().await
    else {
        return;
    };
    let log = folder.path().join("serve.log");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["sync", "serve", "--config", config_path.to_str().unwrap(), "--interval-minutes", "60", "--near-real-time-seconds", "1"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |what: &'static str, check: Box<dyn Fn(&Value) -> bool + Send>, path: String| {
        let graph = &graph;
        async move {
            let started = std::time::Instant::now();
            loop {
                let response = graph.http.get(format!("{}{path}", graph.base)).bearer_auth(&graph.token).send().await.unwrap();
                if response.status().is_success() && check(&response.json().await.unwrap()) {
                    return started.elapsed();
                }
                assert!(started.elapsed() < std::time::Duration::from_secs(90), "{what} never happened");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    wait_for("the initial cycle", Box::new(|user: &Value| user["onPremisesSyncEnabled"] == true), format!("/v1.0/users/ivo@{domain}"))
        .await;
    // Give the initial cycles time to finish (the group members follow in the second).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    ad.conn().replace(&people[1], "title", &["Head of Things"]).await.unwrap();
    let latency = wait_for(
        "the change in the tenant",
        Box::new(|user: &Value| user["jobTitle"] == "Head of Things"),
        format!("/v1.0/users/ivo@{domain}"),
    )
    .await;
    println!("on-premises change reached the tenant after {:.1} s (hourly schedule, 1 s polling)", latency.as_secs_f64());
    assert!(Command::new("kill").args(["-TERM", &serve.id().to_string()]).status().unwrap().success());
    let status = serve.wait().unwrap();
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(status.success() && output.contains("stopped"), "a clean stop on SIGTERM:\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_checks_everything_before_it_writes_a_configuration() {
    let Some(hybrid) = setup().await else { return };
    let config = hybrid.folder.path().join("written.toml");
    let run_init_with = |password: &str, config: &std::path::Path, extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args(["init", "--config", config.to_str().unwrap(), "--ad-host", &hybrid.dc_host, "--ad-ca", hybrid.dc_ca.to_str().unwrap()])
            .args(extra)
            .args([
                "--ad-user",
                &hybrid.dc_admin.0,
                "--tenant-url",
                &hybrid.base,
                "--tenant",
                &hybrid.initial,
                "--client-id",
                &hybrid.sync_app.0,
            ])
            .args(["--tenant-ca", hybrid.tenant_ca.to_str().unwrap(), "--db", hybrid.folder.path().join("init.db").to_str().unwrap()])
            .env("ISTHMUS_AD_PASSWORD", password)
            .env("ISTHMUS_CLIENT_SECRET", &hybrid.sync_app.1)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let run_init = |password: &str| run_init_with(password, &config, &[]);
    let (ok, out, err) = run_init("wrong password");
    assert!(!ok && out.contains("FAIL") && err.contains("nothing written"), "{out}\n{err}");
    assert!(!config.exists(), "nothing written after a failed check");

    let (ok, out, err) = run_init(&hybrid.dc_admin.1);
    assert!(ok, "{out}\n{err}");
    for expected in [
        "the bind as",
        "DirSync and reading objects work",
        "signs in",
        "user(s), verified",
        "the app holds OnPremDirectorySynchronization.ReadWrite.All",
        "no object uses mS-DS-ConsistencyGuid yet",
        "may write mS-DS-ConsistencyGuid",
    ] {
        assert!(out.contains(expected), "{expected} in:\n{out}");
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600, "it holds secrets");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("default_rules = true"), "{written}");
    let (ok, out, err) = isthmus(&["check-config", config.to_str().unwrap()]);
    assert!(ok, "the written file checks:\n{out}\n{err}");
    assert!(written.contains("source_anchor = \"mS-DS-ConsistencyGuid\""), "{written}");
    let (ok, _, err) = run_init(&hybrid.dc_admin.1);
    assert!(!ok && err.contains("already exists"), "never overwritten: {err}");

    // Once the tenant remembers an anchor, a new server follows it, and refuses another.
    let path = format!(
        "/v1.0/directory/onPremisesSynchronization/{}",
        hybrid.graph.call(reqwest::Method::GET, "/v1.0/organization", None).await["value"][0]["id"].as_str().unwrap()
    );
    hybrid.graph.call(reqwest::Method::PATCH, &path, Some(json!({"configuration": {"anchorAttribute": "objectGUID"}}))).await;
    let second = hybrid.folder.path().join("second.toml");
    let (ok, out, err) = run_init_with(&hybrid.dc_admin.1, &second, &[]);
    assert!(ok && out.contains("anchored on objectGUID: this server uses it too"), "{out}\n{err}");
    assert!(std::fs::read_to_string(&second).unwrap().contains("source_anchor = \"objectGUID\""));
    // Pass-through sign-in: no hash sync in the file, and the next steps named.
    let pass_through = hybrid.folder.path().join("pass-through.toml");
    let (ok, out, err) = run_init_with(&hybrid.dc_admin.1, &pass_through, &["--sign-in", "pass-through"]);
    assert!(ok && out.contains("Sign-in: pass-through authentication.") && out.contains("isthmus pta-agent register"), "{out}\n{err}");
    assert!(!std::fs::read_to_string(&pass_through).unwrap().contains("password_hash_sync"), "no hashes synced unless asked");
    let backup = hybrid.folder.path().join("backup.toml");
    let (ok, out, err) = run_init_with(&hybrid.dc_admin.1, &backup, &["--sign-in", "pass-through", "--password-hash-sync-backup"]);
    assert!(ok && std::fs::read_to_string(&backup).unwrap().contains("password_hash_sync = true"), "{out}\n{err}");
    let third = hybrid.folder.path().join("third.toml");
    let (ok, out, _) = run_init_with(&hybrid.dc_admin.1, &third, &["--source-anchor", "mS-DS-ConsistencyGuid", "--upn-attribute", "mail"]);
    assert!(!ok && out.contains("use --source-anchor objectGUID") && !third.exists(), "{out}");

    // Without a terminal, what is missing is named.
    let output = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["init", "--config", hybrid.folder.path().join("fourth.toml").to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("give --ad-host"), "{output:?}");
}

/// The objectGUID of `dn`, as an immutableId (base64 of its 16 bytes).
async fn anchor_of(ad: &mut testkit::samba::AdAdmin, dn: &str) -> String {
    use base64::Engine as _;
    let entries = ad.conn().search(dn, ldap3::Scope::Base, "(objectClass=*)", &["objectGUID"]).await.unwrap();
    let guid = entries[0].bin_attrs["objectGUID"][0].clone();
    base64::engine::general_purpose::STANDARD.encode(guid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_of_on_premises_objects_reaches_the_tenant() {
    let Some(Hybrid {
        graph,
        domain,
        mut ad,
        people,
        config_path,
        ou,
        dns_code,
        initial,
        _dc: dc,
        _dns: mut dns,
        folder: _folder,
        _stop: _tenant_alive,
        ..
    }) = setup().await
    else {
        return;
    };
    let config_arg = config_path.to_str().unwrap();
    let sync = |extra: &[&str]| {
        let mut args = vec!["sync", "run", "--config", config_arg];
        args.extend_from_slice(extra);
        isthmus(&args)
    };
    use reqwest::Method;
    // Hard match: an administrator gave a cloud user ivo's anchor before the first sync.
    let ivo_anchor = anchor_of(&mut ad, &people[1]).await;
    let cloud_ivo = json!({"accountEnabled": true, "displayName": "Ivo (cloud)", "mailNickname": "ivocloud", "userPrincipalName": format!("ivo.cloud@{initial}"),
                           "onPremisesImmutableId": ivo_anchor, "passwordProfile": {"password": "Str0ng!Pass", "forceChangePasswordNextSignIn": false}});
    let cloud_ivo = graph.call(Method::POST, "/v1.0/users", Some(cloud_ivo)).await;
    // A UPN suffix the tenant has not verified; a sub-OU that will move out of scope.
    let uma = ad
        .create_user(&AdUser { parent_dn: Some(ou.clone()), ..AdUser::with_password("uma", "unverified.example", "Str0ng!Pass.1") })
        .await
        .unwrap();
    let movable = ad.create_ou("Movable", Some(&ou)).await.unwrap();
    let otto = ad
        .create_user(&AdUser { parent_dn: Some(movable.clone()), ..AdUser::with_password("otto", &domain, "Str0ng!Pass.1") })
        .await
        .unwrap();

    let (ok, out, err) = sync(&["--full"]);
    assert!(ok, "first cycle:\n{out}\n{err}");
    let (ok, out, err) = sync(&[]);
    assert!(ok, "second cycle:\n{out}\n{err}");
    let ivo = graph.synced("ivo").await;
    assert_eq!((&ivo["id"], &ivo["onPremisesSyncEnabled"]), (&cloud_ivo["id"], &json!(true)), "hard match: {ivo}");
    assert_eq!(ivo["userPrincipalName"], format!("ivo@{domain}"), "on-premises values win: {ivo}");
    let uma_cloud = graph.synced("uma").await;
    assert_eq!(uma_cloud["userPrincipalName"], format!("uma@{initial}"), "an unverified suffix becomes the initial domain: {uma_cloud}");
    assert_eq!(graph.synced("otto").await["accountEnabled"], true);

    // An exported anchor never changes: a new consistency GUID on-premises is an error on the
    // object until the old value is back.
    let db = config_path.with_file_name("isthmus.db");
    let errors = || {
        let (_, out, _) = isthmus(&["cs", "search", "--db", db.to_str().unwrap(), "--connector", "tenant", "--errors"]);
        out
    };
    let original = ad.conn().search(&otto, ldap3::Scope::Base, "(objectClass=*)", &["mS-DS-ConsistencyGuid"]).await.unwrap()[0]
        .bin_attrs["mS-DS-ConsistencyGuid"][0]
        .clone();
    let set_guid = |value: Vec<u8>| ldap3::Mod::Replace(b"mS-DS-ConsistencyGuid".to_vec(), std::collections::HashSet::from([value]));
    ad.conn().modify(&otto, vec![set_guid(vec![0x42; 16])]).await.unwrap();
    let (ok, out, err) = sync(&[]);
    assert!(!ok && err.contains("1 object error(s) in corp.example.test"), "a rejected object fails the run:\n{out}\n{err}");
    let shown = errors();
    assert!(shown.contains("sourceAnchor attribute has changed"), "the changed anchor is an error:\n{shown}\n{out}");
    assert_eq!(graph.synced("otto").await["accountEnabled"], true, "the cloud object stays as it was");
    ad.conn().modify(&otto, vec![set_guid(original)]).await.unwrap();
    let (ok, out, err) = sync(&[]);
    assert!(ok, "{out}\n{err}");
    let shown = errors();
    assert!(!shown.contains("sourceAnchor attribute has changed"), "restored, the error is gone:\n{shown}");

    // Verifying the suffix gives uma her on-premises UPN back.
    graph.call(Method::POST, "/v1.0/domains", Some(json!({"id": "unverified.example"}))).await;
    let records = graph.call(Method::GET, "/v1.0/domains/unverified.example/verificationDnsRecords", None).await;
    let code = records["value"][0]["text"].as_str().unwrap().to_string();
    dns.replace_records(&[(domain.as_str(), dns_code.as_str()), ("unverified.example", code.as_str())]).unwrap();
    graph.call(Method::POST, "/v1.0/domains/unverified.example/verify", None).await;
    assert_eq!(graph.synced("uma").await["userPrincipalName"], "uma@unverified.example", "fixed once the domain is verified");

    // Changes on-premises: a rename with a new UPN, a membership, a disable, a delete, an OU
    // moved out of the synced OU.
    let group = format!("CN=Hybrid Staff,{ou}");
    ad.conn().rename(&people[1], "CN=Ivo Renamed", None).await.unwrap();
    let ivo_dn = format!("CN=Ivo Renamed,{ou}");
    ad.conn().replace(&ivo_dn, "userPrincipalName", &[&format!("ivo.new@{domain}")]).await.unwrap();
    ad.add_members(&group, &[&ivo_dn]).await.unwrap();
    ad.disable(&people[0]).await.unwrap();
    ad.conn().delete(&people[2]).await.unwrap();
    ad.conn().rename(&movable, "OU=Movable", Some(&dc.base_dn())).await.unwrap();
    let (ok, out, err) = sync(&[]);
    assert!(ok, "delta cycle:\n{out}\n{err}");
    let ivo = graph.synced("ivo").await;
    assert_eq!((&ivo["id"], &ivo["userPrincipalName"]), (&cloud_ivo["id"], &json!(format!("ivo.new@{domain}"))), "renamed in place: {ivo}");
    let hana = graph.synced("hana").await;
    assert_eq!(hana["accountEnabled"], false, "disabled: {hana}");
    let staff = graph.call(Method::GET, "/v1.0/groups?$filter=displayName eq 'Hybrid Staff'", None).await;
    let members = graph.call(Method::GET, &format!("/v1.0/groups/{}/members", staff["value"][0]["id"].as_str().unwrap()), None).await;
    let mut ids: Vec<&str> = members["value"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut expected = vec![hana["id"].as_str().unwrap(), ivo["id"].as_str().unwrap()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "ivo joined the group: {members}");
    assert_eq!(graph.status(&format!("/v1.0/users/kim@{domain}")).await, reqwest::StatusCode::NOT_FOUND, "deleted on-premises:\n{out}");
    assert_eq!(graph.status(&format!("/v1.0/users/otto@{domain}")).await, reqwest::StatusCode::NOT_FOUND, "moved out of scope:\n{out}");

    // The accidental-delete threshold stops a mass delete until an administrator allows it.
    edit(&config_path, "default_rules = true", "default_rules = true\ndeletion_threshold = 1");
    ad.conn().delete(&uma).await.unwrap();
    ad.conn().delete(&people[0]).await.unwrap();
    let (ok, out, err) = sync(&[]);
    assert!(!ok && err.contains("exceed the threshold of 1") && err.contains("--allow-deletes"), "stopped:\n{out}\n{err}");
    assert_eq!(graph.synced("hana").await["accountEnabled"], false, "nothing deleted");
    assert_eq!(graph.synced("uma").await["userPrincipalName"], "uma@unverified.example");
    let (ok, out, err) = sync(&["--allow-deletes"]);
    assert!(ok, "allowed once:\n{out}\n{err}");
    assert!(graph.synced("hana").await.is_null() && graph.synced("uma").await.is_null(), "deleted after the approval:\n{out}");

    // Staging mode: everything but the export; the step says what it would have sent.
    edit(&config_path, "default_rules = true", "default_rules = true\nstaging = true");
    ad.conn().replace(&ivo_dn, "title", &["Staged title"]).await.unwrap();
    let (ok, out, err) = sync(&[]);
    assert!(ok && out.contains("staging-no-export"), "staging:\n{out}\n{err}");
    assert!(graph.synced("ivo").await["jobTitle"].is_null(), "nothing exported in staging mode");
    let _ = otto;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_forests_sync_into_one_tenant_and_a_duplicate_upn_is_quarantined_then_released() {
    let Some(Hybrid {
        graph,
        domain,
        mut ad,
        people,
        config_path,
        dns_code,
        initial,
        state,
        _dc: _corp_alive,
        _dns: mut dns,
        folder: _folder,
        _stop: _tenant_alive,
        ..
    }) = setup().await
    else {
        return;
    };
    use reqwest::Method;
    let Some(fabrikam) = testkit::available(SambaDc::start(&SambaConfig::forest("FABRIKAM.EXAMPLE.TEST", "FABRIKAM"))) else { return };
    let fab_domain = fabrikam.config().realm.to_lowercase();
    graph.call(Method::POST, "/v1.0/domains", Some(json!({"id": fab_domain}))).await;
    let records = graph.call(Method::GET, &format!("/v1.0/domains/{fab_domain}/verificationDnsRecords"), None).await;
    let code = records["value"][0]["text"].as_str().unwrap().to_string();
    dns.replace_records(&[(domain.as_str(), dns_code.as_str()), (fab_domain.as_str(), code.as_str())]).unwrap();
    graph.call(Method::POST, &format!("/v1.0/domains/{fab_domain}/verify"), None).await;

    // Fabrikam: one person of its own, and one whose UPN is the same as corp's hana.
    let mut fab = fabrikam.admin().await.unwrap();
    let fab_ou = fab.create_ou(&format!("Fab-{}", std::process::id()), None).await.unwrap();
    fab.create_user(&AdUser { parent_dn: Some(fab_ou.clone()), ..AdUser::with_password("fay", &fab_domain, "Str0ng!Pass.1") })
        .await
        .unwrap();
    let twin = AdUser {
        parent_dn: Some(fab_ou.clone()),
        upn: Some(format!("hana@{domain}")),
        mail: Some(format!("hana.twin@{fab_domain}")),
        ..AdUser::with_password("hanatwin", &fab_domain, "Str0ng!Pass.1")
    };
    fab.create_user(&twin).await.unwrap();
    let second = format!(
        r#"[[connector]]
id = "{fab_domain}"
flavour = "active-directory"
host = "{host}"
ca_file = "{ca}"
include_ous = ["{fab_ou}"]
[connector.bind]
method = "simple"
dn = "{admin}"
password = "{password}"

[[graph]]"#,
        host = fabrikam.ip(),
        ca = fabrikam.ca_pem().display(),
        admin = fabrikam.admin_dn(),
        password = fabrikam.config().admin_password,
    );
    edit(&config_path, "[[graph]]", &second);
    let config_arg = config_path.to_str().unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg, "--full"]);
    assert!(ok, "first cycle:\n{out}\n{err}");
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "second cycle:\n{out}\n{err}");

    // Both forests are in the one tenant.
    assert_eq!(graph.synced("fay").await["userPrincipalName"], format!("fay@{fab_domain}"), "{out}");
    assert_eq!(graph.synced("hana").await["userPrincipalName"], format!("hana@{domain}"));
    // The second holder of hana's UPN is synced with a quarantined one, and the conflict shows.
    let twin_cloud = graph.synced("hanatwin").await;
    let quarantined = twin_cloud["userPrincipalName"].as_str().unwrap_or_default().to_string();
    assert!(quarantined.starts_with("hana+") && quarantined.ends_with(&format!("@{initial}")), "{twin_cloud}");
    let db = state.join("isthmus.db");
    let (ok, conflicts, _) = isthmus(&["conflicts", "--db", db.to_str().unwrap()]);
    assert!(ok && conflicts.contains(&format!("hana@{domain}")) && conflicts.contains("UserPrincipalName"), "{conflicts}");

    // Corp's hana takes another UPN: the quarantine is released.
    ad.conn().replace(&people[0], "userPrincipalName", &[&format!("hana.corp@{domain}")]).await.unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    let twin_cloud = graph.synced("hanatwin").await;
    assert_eq!(twin_cloud["userPrincipalName"], format!("hana@{domain}"), "released: {twin_cloud}\n{out}");
    let (_, conflicts, _) = isthmus(&["conflicts", "--db", db.to_str().unwrap()]);
    assert!(conflicts.contains("0 conflict(s)"), "{conflicts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_source_anchor_is_checked_per_object() {
    let Some(Hybrid {
        graph,
        domain,
        mut ad,
        people,
        config_path,
        state,
        folder: _folder,
        _dc: _dc_alive,
        _dns: _dns_alive,
        _stop: _tenant_alive,
        ..
    }) = setup().await
    else {
        return;
    };
    edit(&config_path, "default_rules = true", "default_rules = true\nsource_anchor = \"employeeID\"");
    ad.conn().replace(&people[0], "employeeID", &["E1001"]).await.unwrap();
    ad.conn().replace(&people[1], "employeeID", &["ivo@corp"]).await.unwrap();
    let config_arg = config_path.to_str().unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg, "--full"]);
    // Objects were rejected: the run says so and exits non-zero (a script or unit notices).
    assert!(!ok && err.contains("object error(s) in") && err.contains("cs search"), "{out}\n{err}");
    assert!(!out.contains("stopped"), "no step stopped: {out}");
    let hana = graph.synced("hana").await;
    assert_eq!(hana["onPremisesImmutableId"], "E1001", "a string anchor is taken as it is: {hana}");
    assert!(graph.synced("ivo").await.is_null(), "an anchor Entra would refuse is not exported");
    assert!(graph.synced("kim").await.is_null(), "no anchor value, not provisioned");
    let (_, errors, _) =
        isthmus(&["cs", "search", "--db", state.join("isthmus.db").to_str().unwrap(), "--connector", "tenant", "--errors"]);
    let (_, ad_errors, _) =
        isthmus(&["cs", "search", "--db", state.join("isthmus.db").to_str().unwrap(), "--connector", &domain, "--errors"]);
    let shown = format!("{errors}\n{ad_errors}");
    assert!(shown.contains("ivo@corp") && shown.contains("'@'"), "the per-object error names the value and the character:\n{shown}");
    let settings = graph.call(reqwest::Method::GET, "/v1.0/directory/onPremisesSynchronization", None).await;
    assert_eq!(settings["value"][0]["configuration"]["anchorAttribute"], "employeeID");
}

/// The sync account as docs/sync.md tells an operator to create it: an ordinary user with
/// "Replicating Directory Changes" (+ "All") on the domain and write access to
/// mS-DS-ConsistencyGuid on users under the synced OU; no administrator rights. Returns its DN
/// and password.
async fn least_privileged_account(dc: &SambaDc, ad: &mut testkit::samba::AdAdmin, ou: &str, domain: &str) -> (String, String) {
    let password = "Sync!Acc0unt.Pass".to_string();
    let account = ad.create_user(&AdUser::with_password("svc-isthmus", domain, &password)).await.unwrap();
    dc.grant_on_domain_root(&account, "get-changes").unwrap();
    dc.grant_on_domain_root(&account, "get-changes-all").unwrap();
    let sid = ad.sid_of(&account).await.unwrap();
    // WP on mS-DS-ConsistencyGuid (23773dc2-…) of user objects (bf967aba-…), inherited.
    dc.grant_sddl(ou, &format!("(OA;CIIO;WP;23773dc2-b63a-11d2-90e1-00c04fd91ab1;bf967aba-0de6-11d0-a285-00aa003049e2;{sid})")).unwrap();
    (account, password)
}

/// With the least-privileged account, the next delta cycle removes a user deleted in AD,
/// removes one moved out of scope and disables one disabled: DirSync does not show that
/// account the deleted user (only administrators may list CN=Deleted Objects on Samba), so the
/// presence check finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_reach_the_tenant_with_the_least_privileged_account() {
    let Some(Hybrid { graph, domain, mut ad, people, config_path, ou, _dc: dc, folder: _folder, _stop: _tenant_alive, .. }) = setup().await
    else {
        return;
    };
    let (account, password) = least_privileged_account(&dc, &mut ad, &ou, &domain).await;
    edit(&config_path, &format!("dn = \"{}\"", dc.admin_dn()), &format!("dn = \"{account}\""));
    edit(&config_path, &format!("password = \"{}\"", dc.config().admin_password), &format!("password = \"{password}\"\n"));
    edit(&config_path, "include_ous = [", "presence_check_minutes = 0\ninclude_ous = [");
    let config_arg = config_path.to_str().unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "first cycle:\n{out}\n{err}");
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "second cycle:\n{out}\n{err}");
    for sam in ["hana", "ivo", "kim"] {
        assert_eq!(graph.synced(sam).await["accountEnabled"], true, "{sam} synced:\n{out}");
    }

    ad.conn().delete(&people[0]).await.unwrap();
    ad.conn().rename(&people[1], "CN=ivo", Some(&format!("CN=Users,{}", dc.base_dn()))).await.unwrap();
    ad.disable(&people[2]).await.unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "delta cycle:\n{out}\n{err}");
    assert!(graph.synced("hana").await.is_null(), "deleted on-premises, deleted in the tenant:\n{out}\n{err}");
    assert!(graph.synced("ivo").await.is_null(), "moved out of scope, deleted in the tenant:\n{out}\n{err}");
    assert_eq!(graph.synced("kim").await["accountEnabled"], false, "disabled:\n{out}\n{err}");
}

/// xorshift64*: the crash test's seeded randomness.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

/// `isthmus sync run`, started and followed until the `nth` (1-based) start of `step` (a piece
/// of its log line, e.g. `connector=tenant step="export"`); `None` (after checking it
/// succeeded) when it ended first. Its log keeps being drained.
fn run_into_step(config: &str, step: &str, nth: usize) -> Option<std::process::Child> {
    use std::io::BufRead as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["sync", "run", "--config", config])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start isthmus");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, seen) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut count = 0;
    while let Ok(line) = seen.recv_timeout(std::time::Duration::from_secs(60)) {
        if line.contains("step started") && line.contains(step) {
            count += 1;
            if count == nth {
                return Some(child);
            }
        }
    }
    let status = child.wait().expect("reap");
    assert!(status.success(), "a run that ended before {step} (#{nth}) failed: {status}");
    None
}

/// `isthmus sync run`, killed with SIGKILL `delay` after the `nth` start of `step`; whether it
/// was killed (a run that ends first must have succeeded).
fn killed_run(config: &str, step: &str, nth: usize, delay: std::time::Duration) -> bool {
    let Some(mut child) = run_into_step(config, step, nth) else { return false };
    std::thread::sleep(delay);
    let killed = child.try_wait().expect("wait").is_none();
    if killed {
        child.kill().expect("SIGKILL");
    }
    let status = child.wait().expect("reap");
    assert!(killed || status.success(), "a run that was not killed failed: {status}");
    killed
}

type Memberships = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// What the tenant holds of the synced objects: users (sam → enabled), groups (name → member
/// sams), contacts (mail), and whatever it holds twice.
#[derive(Debug, PartialEq, Eq, Default)]
struct CloudState {
    users: std::collections::BTreeMap<String, bool>,
    groups: Memberships,
    contacts: std::collections::BTreeSet<String>,
    duplicates: Vec<String>,
}

impl Graph {
    /// Every object of a collection, following nextLink.
    async fn all(&self, path: &str) -> Vec<Value> {
        let mut objects = Vec::new();
        let mut next = Some(path.to_string());
        while let Some(link) = next {
            let page = self.call(reqwest::Method::GET, link.strip_prefix(&self.base).unwrap_or(&link), None).await;
            objects.extend(page["value"].as_array().cloned().unwrap_or_default());
            next = page["@odata.nextLink"].as_str().map(str::to_string);
        }
        objects
    }

    async fn cloud_state(&self) -> CloudState {
        let mut state = CloudState::default();
        let mut sam_of = std::collections::BTreeMap::new();
        for user in self.all("/v1.0/users?$select=id,onPremisesSamAccountName,accountEnabled&$top=100").await {
            let Some(sam) = user["onPremisesSamAccountName"].as_str() else { continue };
            if state.users.insert(sam.to_string(), user["accountEnabled"] == json!(true)).is_some() {
                state.duplicates.push(format!("user {sam}"));
            }
            sam_of.insert(user["id"].as_str().unwrap().to_string(), sam.to_string());
        }
        for group in self.all("/v1.0/groups?$top=100").await {
            if group["onPremisesSyncEnabled"] != json!(true) {
                continue;
            }
            let name = group["displayName"].as_str().unwrap().to_string();
            let members = self.all(&format!("/v1.0/groups/{}/members?$select=id&$top=100", group["id"].as_str().unwrap())).await;
            let sams = members.iter().map(|member| sam_of.get(member["id"].as_str().unwrap()).cloned().unwrap_or_default()).collect();
            if state.groups.insert(name.clone(), sams).is_some() {
                state.duplicates.push(format!("group {name}"));
            }
        }
        for contact in self.all("/v1.0/contacts?$top=100").await {
            let mail = contact["mail"].as_str().unwrap_or_default().to_lowercase();
            if !state.contacts.insert(mail.clone()) {
                state.duplicates.push(format!("contact {mail}"));
            }
        }
        state
    }
}

/// Runs plain `sync run` until a run exports nothing (at most `most` runs); its output.
fn run_until_quiet(config: &str, most: usize) -> String {
    let mut last = String::new();
    for _ in 0..most {
        let (ok, out, err) = isthmus(&["sync", "run", "--config", config]);
        assert!(ok, "a plain run after the kills:\n{out}\n{err}");
        let exports: Vec<&str> = err.lines().filter(|line| line.contains("step finished") && line.contains("step=\"export\"")).collect();
        let quiet = !exports.is_empty() && exports.iter().all(|line| line.contains("adds=0 updates=0 deletes=0"));
        last = format!("{out}\n{err}");
        if quiet {
            return last;
        }
    }
    panic!("still exporting after {most} runs:\n{last}")
}

/// SIGKILL `isthmus sync run` inside each step (import, sync, export, confirming import) of an
/// initial and of a delta cycle, at seeded random moments, against Samba and the tenant; then
/// plain runs until quiet: the tenant (read through Graph) holds exactly what AD holds — every
/// user, every group with every member, every contact, nothing twice — with nothing pending
/// and no step left `running` in the history.
async fn crash_safety(seed: u64) {
    println!("crash test seed {seed}");
    let Some(Hybrid { graph, domain, mut ad, people, config_path, ou, folder: _folder, _dc: _dc_alive, _stop: _tenant_alive, .. }) =
        setup().await
    else {
        return;
    };
    let mut random = Seeded(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let config = config_path.to_str().unwrap().to_string();
    let db = config_path.with_file_name("isthmus.db");
    // On-premises: 100 more people, 5 groups (one of everyone: six chunks of members), 4 contacts.
    let mut sams: Vec<String> = vec!["hana".into(), "ivo".into(), "kim".into()];
    let mut dns: std::collections::BTreeMap<String, String> = sams.iter().cloned().zip(people.iter().cloned()).collect();
    for n in 0..100 {
        let sam = format!("p{n:03}");
        let dn =
            ad.create_user(&AdUser { parent_dn: Some(ou.clone()), ..AdUser::with_password(&sam, &domain, "Str0ng!Pass.1") }).await.unwrap();
        dns.insert(sam.clone(), dn);
        sams.push(sam);
    }
    let mut groups = Memberships::new();
    groups.insert("Hybrid Staff".into(), ["hana".to_string()].into());
    for g in 0..5 {
        let name = format!("Crash Group {g}");
        let members: std::collections::BTreeSet<String> =
            if g == 0 { sams.iter().cloned().collect() } else { sams.iter().filter(|_| random.below(3) == 0).cloned().collect() };
        let member_dns: Vec<&str> = members.iter().map(|sam| dns[sam].as_str()).collect();
        ad.create_group(&name, Some(&ou), &member_dns).await.unwrap();
        groups.insert(name, members);
    }
    let mut contacts = std::collections::BTreeSet::new();
    for c in 0..4 {
        let mail = format!("contact{c}@partner.example");
        ad.create_contact(&format!("Contact {c}"), Some(&ou), &mail).await.unwrap();
        contacts.insert(mail);
    }

    // One runner per database: a second `sync run` while one works stops at once.
    let mut first = run_into_step(&config, "step=\"delta-import\"", 1).expect("the first run reaches its import");
    let (ok, out, err) = isthmus(&["sync", "run", "--config", &config]);
    assert!(!ok && err.contains("another sync runner is using this database now"), "a second runner is refused:\n{out}\n{err}");
    assert!(first.wait().expect("reap").success(), "the first run is not disturbed");

    let mut kills = 0;
    for round in 0..2 {
        if round == 1 {
            // Delta work: people added and deleted, members leaving and joining.
            let mut newcomers = Vec::new();
            for n in 0..5 {
                let sam = format!("q{n}");
                let dn = ad
                    .create_user(&AdUser { parent_dn: Some(ou.clone()), ..AdUser::with_password(&sam, &domain, "Str0ng!Pass.1") })
                    .await
                    .unwrap();
                dns.insert(sam.clone(), dn);
                sams.push(sam.clone());
                newcomers.push(sam);
            }
            for (name, members) in groups.iter_mut().filter(|(name, _)| name.starts_with("Crash Group")) {
                let group_dn = format!("CN={name},{ou}");
                let leaving: Vec<String> = members.iter().filter(|_| random.below(4) == 0).cloned().collect();
                if !leaving.is_empty() {
                    let leaving_dns: Vec<&str> = leaving.iter().map(|sam| dns[sam].as_str()).collect();
                    ad.remove_members(&group_dn, &leaving_dns).await.unwrap();
                    for sam in &leaving {
                        members.remove(sam);
                    }
                }
                let joining_dns: Vec<&str> = newcomers.iter().map(|sam| dns[sam].as_str()).collect();
                ad.add_members(&group_dn, &joining_dns).await.unwrap();
                members.extend(newcomers.iter().cloned());
            }
            for sam in ["p001", "p002"] {
                ad.conn().delete(&dns[sam]).await.unwrap();
                sams.retain(|kept| kept != sam);
                for members in groups.values_mut() {
                    members.remove(sam);
                }
            }
        }
        // Kills inside every step; the tenant export (where memberships were lost) most often.
        let tenant = "connector=tenant step=".to_string();
        let source = format!("connector={domain} step=");
        for _ in 0..5 {
            let (connector, step, nth) = match random.below(8) {
                0 => (&source, "delta-import", 1),
                1 => (&source, "delta-sync", 1),
                2 => (&tenant, "delta-sync", 1),
                3 => (&tenant, "delta-import", 2),
                4 => (&source, "export", 1),
                _ => (&tenant, "export", 1),
            };
            let delay = std::time::Duration::from_millis(random.below(150));
            if killed_run(&config, &format!("{connector}\"{step}\""), nth, delay) {
                kills += 1;
                println!("seed {seed}, round {round}: killed in {connector}{step} (#{nth}) after {delay:?}");
            }
        }
        let log = run_until_quiet(&config, 4);
        let state = graph.cloud_state().await;
        let want = CloudState {
            users: sams.iter().map(|sam| (sam.clone(), true)).collect(),
            groups: groups.clone(),
            contacts: contacts.clone(),
            duplicates: Vec::new(),
        };
        if state != want {
            let missing: Vec<String> = want
                .groups
                .iter()
                .flat_map(|(name, members)| {
                    let held = state.groups.get(name);
                    members.iter().filter(move |sam| !held.is_some_and(|held| held.contains(*sam))).map(move |sam| format!("{name}:{sam}"))
                })
                .collect();
            panic!(
                "seed {seed}, round {round}, {kills} kills: the tenant differs from AD; memberships missing: {missing:?}; users {} of {}; \
                 duplicates {:?}; contacts {:?}\n{log}",
                state.users.len(),
                want.users.len(),
                state.duplicates,
                state.contacts
            );
        }
        let (_, pending, _) = isthmus(&["cs", "search", "--db", db.to_str().unwrap(), "--connector", "tenant", "--pending-export"]);
        assert!(!pending.contains("objectId=") && !pending.contains("CN="), "nothing left pending:\n{pending}");
    }
    let (_, history, _) = isthmus(&["history", "--db", db.to_str().unwrap(), "--limit", "500"]);
    assert!(!history.contains(" running "), "no step stays running:\n{history}");
    assert!(kills > 0 && history.contains("interrupted"), "killed steps are marked interrupted ({kills} kills):\n{history}");
    println!("seed {seed}: {kills} kills; the tenant equals AD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_safety_seed_1() {
    crash_safety(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_safety_seed_2() {
    crash_safety(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_safety_seed_3() {
    crash_safety(3).await;
}
