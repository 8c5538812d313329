//! A deployment stood up with the shipped `isthmus` binary alone, step for step as
//! docs/deployment.md tells an operator: the tenant (`tenant serve` on 443), the sync app and a
//! public client (`tenant app create`), the forest's domain (`tenant domain add|verify`, the TXT
//! record served by a real DNS server), a least-privileged sync account in AD (`samba-tool
//! dsacl`), `init`, `sync serve` (with `sync status|start|scheduler` and a second writer
//! refused), a synced user signing in with Microsoft's `msal` and the directory read with
//! `msgraph-sdk`; then the domain switched to pass-through (`pta-agent register|run`,
//! `tenant domain set-authentication`) and the user signing in through the agent. Once on an
//! SQLite sync store, once on PostgreSQL. No in-process registration, no database writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::dns::Dnsmasq;
use testkit::samba::{AdUser, SambaDc};

const BIN: &str = env!("CARGO_BIN_EXE_isthmus");

/// Runs the binary with `env`; (success, stdout, stderr).
fn isthmus(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("ISTHMUS_CLIENT_SECRET")
        .env_remove("ISTHMUS_AD_PASSWORD")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let (success, out, err) = isthmus(args, env);
    assert!(success, "isthmus {}:\n{out}\n{err}", args.join(" "));
    out
}

/// A background `isthmus` process, killed when dropped; its output goes to a file.
struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Service {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env_remove("ISTHMUS_CLIENT_SECRET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Service { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The metrics a service serves at the address it printed ("metrics on URL"), checked by promtool.
async fn scrape(service: &Service, promtool: &Path) -> String {
    let url = service
        .log()
        .lines()
        .find_map(|line| line.trim().strip_prefix("metrics on ").map(str::to_string))
        .unwrap_or_else(|| panic!("no metrics address in {}", service.log()));
    let metrics = reqwest::get(&url).await.unwrap().text().await.unwrap();
    testkit::promtool_check_metrics(promtool, &metrics).unwrap_or_else(|complaint| panic!("promtool: {complaint}\n{metrics}"));
    metrics
}

/// The value of the first sample whose line starts with `prefix` (0 when there is none).
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics.lines().find(|line| line.starts_with(prefix)).and_then(|line| line.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn field(text: &str, name: &str) -> String {
    text.lines().find_map(|line| line.strip_prefix(&format!("{name} = "))).unwrap_or_else(|| panic!("{name} in {text}")).to_string()
}

fn msal(python: &Path, base: &str, tenant: &str, client: &str, ca: &Path, user: &str, password: &str) -> Value {
    serde_json::from_str(&testkit::msal_ropc(python, base, tenant, client, ca, user, password).unwrap()).unwrap()
}

const GRAPH_SCRIPT: &str = r#"
import asyncio, json, ssl, sys
import httpx
from azure.identity import ClientSecretCredential
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph import GraphServiceClient, GraphRequestAdapter
from msgraph.graph_request_adapter import options as graph_options
from msgraph_core import GraphClientFactory

base, tenant, client_id, secret, ca, what = sys.argv[1:7]
async def main():
    credential = ClientSecretCredential(tenant, client_id, secret, authority=base, disable_instance_discovery=True, connection_verify=ca)
    auth = AzureIdentityAuthenticationProvider(credential, scopes=["https://graph.microsoft.com/.default"])
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca), timeout=30), options=graph_options)
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = f"{base}/v1.0"
    client = GraphServiceClient(request_adapter=adapter)
    if what == "organization":
        orgs = (await client.organization.get()).value
        last = orgs[0].on_premises_last_sync_date_time
        print(json.dumps([last.isoformat() if last else None, orgs[0].on_premises_sync_enabled]))
        return
    page = await client.users.get()
    users = list(page.value)
    while page.odata_next_link:
        page = await client.users.with_url(page.odata_next_link).get()
        users += page.value
    print(json.dumps(sorted([u.user_principal_name, u.on_premises_sync_enabled] for u in users)))
asyncio.run(main())
"#;

enum SyncStore {
    Sqlite,
    Postgres,
}

async fn deployment(kind: SyncStore) {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let Some(mut dns) = testkit::available(Dnsmasq::start(&[])) else { return };
    let Some(python) = testkit::available(testkit::python_clients()) else { return };
    let postgres = match kind {
        SyncStore::Sqlite => None,
        SyncStore::Postgres => Some(testkit::available(testkit::postgres::Postgres::start()).unwrap_or_else(|| panic!("no PostgreSQL"))),
    };
    let Some(address) = testkit::available(testkit::LoopbackAddr::reserve()) else { return };
    let folder = tempfile::tempdir().unwrap();
    let dir = |name: &str| folder.path().join(name);
    let text = |path: &Path| path.to_str().unwrap().to_string();

    // 1. The tenant, on 443 (MSAL's password flow asks user realm discovery there).
    let state = dir("tenant");
    let base = format!("https://{}", address.ip());
    let tenant_serve = Service::start(
        &[
            "tenant",
            "serve",
            "--state",
            &text(&state),
            "--listen",
            &format!("{}:443", address.ip()),
            "--dns-resolver",
            &dns.addr().to_string(),
            "--lab-verify-domain",
            "lab.example",
            "--metrics-listen",
            &format!("{}:0", address.ip()),
        ],
        &[],
        dir("tenant.log"),
    );
    wait_for("tenant serve", Duration::from_secs(60), || {
        std::net::TcpStream::connect((address.ip(), 443)).is_ok() && state.join("admin-app.txt").exists()
    });
    let bootstrap = std::fs::read_to_string(state.join("admin-app.txt")).unwrap();
    let (admin_id, admin_secret) = (field(&bootstrap, "client_id"), field(&bootstrap, "client_secret"));
    let ca = state.join("tls").join("ca.pem");
    let initial = tenant_serve
        .log()
        .lines()
        .filter(|line| line.starts_with("tenant "))
        .find_map(|line| line.split_once('(').and_then(|(_, rest)| rest.strip_suffix(')')))
        .map(str::to_string);
    let initial = initial.unwrap_or_else(|| panic!("no initial domain in {}", tenant_serve.log()));
    let admin_env = [("ISTHMUS_CLIENT_SECRET", admin_secret.as_str())];
    let tenant_args = ["--tenant-url", &base, "--tenant", &initial, "--client-id", &admin_id, "--tenant-ca", &text(&ca)];
    let admin = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(tenant_args);
        ok(&all, &admin_env)
    };

    // 2. The sync app (one role) and a public client for user sign-ins.
    let sync_file = dir("sync-app.txt");
    admin(&[
        "tenant",
        "app",
        "create",
        "--name",
        "Isthmus sync",
        "--role",
        "OnPremDirectorySynchronization.ReadWrite.All",
        "--secret-file",
        &text(&sync_file),
    ]);
    let sync_app = std::fs::read_to_string(&sync_file).unwrap();
    let (sync_id, sync_secret) = (field(&sync_app, "client_id"), field(&sync_app, "client_secret"));
    let created = admin(&["tenant", "app", "create", "--name", "Sign-in", "--public", "--redirect-uri", "http://localhost"]);
    let public_id = created.split_whitespace().nth(2).unwrap().to_string();
    let apps: Value = serde_json::from_str(&admin(&["tenant", "app", "list", "--json"])).unwrap();
    let sync_row = apps["value"].as_array().unwrap().iter().find(|app| app["appId"] == sync_id.as_str()).unwrap();
    assert_eq!(sync_row["roles"], serde_json::json!(["OnPremDirectorySynchronization.ReadWrite.All"]), "{apps}");
    assert!(
        apps["value"].as_array().unwrap().iter().any(|app| app["appId"] == public_id.as_str() && app["publicClient"] == true),
        "{apps}"
    );

    // An app deleted: gone from the list, its secret no longer signs in.
    let spare_file = dir("spare.txt");
    admin(&["tenant", "app", "create", "--name", "Spare", "--role", "User.Read.All", "--secret-file", &text(&spare_file)]);
    let spare = std::fs::read_to_string(&spare_file).unwrap();
    let spare_id = field(&spare, "client_id");
    admin(&["tenant", "app", "delete", &spare_id]);
    assert!(!admin(&["tenant", "app", "list"]).contains(&spare_id));
    let spare_env = [("ISTHMUS_CLIENT_SECRET", field(&spare, "client_secret"))];
    let spare_env: Vec<(&str, &str)> = spare_env.iter().map(|(key, value)| (*key, value.as_str())).collect();
    let (signed_in, _, err) = isthmus(
        &["tenant", "app", "list", "--tenant-url", &base, "--tenant", &initial, "--client-id", &spare_id, "--tenant-ca", &text(&ca)],
        &spare_env,
    );
    assert!(!signed_in && err.contains("AADSTS700016"), "a deleted app cannot sign in: {err}");
    let (deleted_self, _, err) = isthmus(&[&["tenant", "app", "delete", &admin_id][..], tenant_args.as_ref()].concat(), &admin_env);
    assert!(!deleted_self && err.contains("signs in as"), "{err}");

    // 3. The forest's domain, verified by its TXT record (real DNS); a lab domain by the override.
    let domain = dc.config().realm.to_lowercase();
    let added = admin(&["tenant", "domain", "add", &domain]);
    let code = added.split('"').nth(1).unwrap().to_string();
    assert!(code.starts_with("MS=ms"), "{added}");
    let (refused, _, err) = isthmus(&[&["tenant", "domain", "verify", &domain][..], tenant_args.as_ref()].concat(), &admin_env);
    assert!(!refused && err.contains("Domain verification failed"), "no record yet, not verified: {err}");
    dns.replace_records(&[(domain.as_str(), code.as_str())]).unwrap();
    admin(&["tenant", "domain", "verify", &domain]);
    admin(&["tenant", "domain", "add", "lab.example"]);
    admin(&["tenant", "domain", "verify", "lab.example"]);
    let domains: Value = serde_json::from_str(&admin(&["tenant", "domain", "show", "--json"])).unwrap();
    for name in [domain.as_str(), "lab.example"] {
        let shown = domains["value"].as_array().unwrap().iter().find(|d| d["id"] == name).unwrap();
        assert_eq!(shown["isVerified"], true, "{domains}");
    }

    // 4. On-premises: people, and the sync account with only the two replication rights.
    let mut ad = dc.admin().await.unwrap();
    let ou = ad.create_ou(&format!("Deploy-{}", std::process::id()), None).await.unwrap();
    let person = |sam: &str| AdUser { parent_dn: Some(ou.clone()), ..AdUser::with_password(sam, &domain, "Hana!Pass.1") };
    let hana = ad.create_user(&person("hana")).await.unwrap();
    ad.create_user(&person("ivo")).await.unwrap();
    let service = ad.create_user(&AdUser::with_password("svc-isthmus", &domain, "Svc!Acc0unt-1")).await.unwrap();
    for right in ["get-changes", "get-changes-all"] {
        dc.grant_on_domain_root(&service, right).unwrap();
    }

    // 5. init with the least-privileged account and the sync app.
    let config = dir("isthmus.toml");
    let mut init_args = vec![
        "init".to_string(),
        "--config".into(),
        text(&config),
        "--ad-host".into(),
        dc.ip().to_string(),
        "--ad-ca".into(),
        text(dc.ca_pem()),
        "--ad-user".into(),
        format!("svc-isthmus@{domain}"),
        "--ou".into(),
        ou.clone(),
        "--tenant-url".into(),
        base.clone(),
        "--tenant".into(),
        initial.clone(),
        "--client-id".into(),
        sync_id.clone(),
        "--tenant-ca".into(),
        text(&ca),
        "--source-anchor".into(),
        "objectGUID".into(),
        "--sign-in".into(),
        "password-hash-sync".into(),
    ];
    match &postgres {
        Some(server) => init_args.extend(["--postgres".to_string(), server.url().to_string()]),
        None => init_args.extend(["--db".to_string(), text(&dir("isthmus.db"))]),
    }
    // The admin app (which lacks the sync role) is named as the missing role's holder: refused.
    let args: Vec<&str> = init_args.iter().map(String::as_str).collect();
    let mut wrong = args.clone();
    let at = wrong.iter().position(|arg| *arg == sync_id.as_str()).unwrap();
    wrong[at] = &admin_id;
    let (written, out, err) = isthmus(&wrong, &[("ISTHMUS_AD_PASSWORD", "Svc!Acc0unt-1"), ("ISTHMUS_CLIENT_SECRET", &admin_secret)]);
    assert!(!written && out.contains("does not hold OnPremDirectorySynchronization.ReadWrite.All") && !config.exists(), "{out}\n{err}");
    let out = ok(&args, &[("ISTHMUS_AD_PASSWORD", "Svc!Acc0unt-1"), ("ISTHMUS_CLIENT_SECRET", &sync_secret)]);
    assert!(out.contains(&format!("{domain}: 2 user(s), verified")), "UPN suffixes listed with their state: {out}");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("password_hash_sync = true") && written.contains(&format!("ca_file = \"{}", dc.ca_pem().display())),
        "{written}"
    );

    // The tenant keeps the sync schedule (as Entra does): 45 minutes and a threshold of 250,
    // set through Graph by the administrator.
    let http = testkit::https_client(&ca).unwrap();
    let token =
        testkit::client_credentials_token(&http, &format!("{base}/{initial}/oauth2/v2.0/token"), &admin_id, &admin_secret).await.unwrap();
    let settings: Value = http
        .get(format!("{base}/v1.0/directory/onPremisesSynchronization"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let settings_id = settings["value"][0]["id"].as_str().unwrap().to_string();
    let schedule = serde_json::json!({"configuration": {"synchronizationInterval": "PT45M",
        "accidentalDeletionPrevention": {"synchronizationPreventionType": "enabledForCount", "alertThreshold": 250}}});
    let patched = http
        .patch(format!("{base}/v1.0/directory/onPremisesSynchronization/{settings_id}"))
        .bearer_auth(&token)
        .json(&schedule)
        .send()
        .await
        .unwrap();
    assert!(patched.status().is_success(), "{:?}", patched.text().await);

    // The lab override is in the directory audit log, as such.
    let audits: Value =
        http.get(format!("{base}/v1.0/auditLogs/directoryAudits")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let lab = audits["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|audit| audit["targetResources"][0]["id"] == "lab.example" && audit["activityDisplayName"] != "add domain");
    let lab = lab.unwrap_or_else(|| panic!("no audit of the lab verification: {audits}"));
    assert_eq!(
        (lab["activityDisplayName"].as_str(), lab["result"].as_str()),
        (Some("verify domain (lab override: no DNS lookup)"), Some("success")),
        "{lab}"
    );
    let real = audits["value"].as_array().unwrap().iter().find(|audit| {
        audit["targetResources"][0]["id"] == domain.as_str() && audit["result"] == "success" && audit["activityDisplayName"] != "add domain"
    });
    assert_eq!(real.map(|audit| audit["activityDisplayName"].clone()), Some(Value::from("verify domain")), "{audits}");

    // 6. sync serve; status, start, the scheduler switch; a second writer is refused.
    let config_arg = text(&config);
    let Some(promtool) = testkit::available(testkit::promtool()) else { return };
    let serve = Service::start(
        &["sync", "serve", "--config", &config_arg, "--password-sync-minutes", "60", "--metrics-listen", &format!("{}:0", address.ip())],
        &[],
        dir("serve.log"),
    );
    let status = || -> Option<Value> {
        let (success, out, _) = isthmus(&["sync", "status", "--config", &config_arg, "--json"], &[]);
        success.then(|| serde_json::from_str(&out).unwrap())
    };
    wait_for("the initial cycle", Duration::from_secs(120), || status().is_some_and(|status| status["cycles"].as_u64() >= Some(1)));
    let first = status().unwrap();
    assert_eq!(first["last"]["outcome"], "success", "{first}\n{}", serve.log());
    // The cycle was reported to the tenant: msgraph-sdk reads the organization's sync fields.
    let organization = || -> Value {
        let read = Command::new(&python)
            .args(["-c", GRAPH_SCRIPT, &base, &initial, &admin_id, &admin_secret, &text(&ca), "organization"])
            .output()
            .unwrap();
        serde_json::from_slice(&read.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&read.stderr)))
    };
    let after_first = organization();
    assert_eq!(after_first[1], true, "onPremisesSyncEnabled: {after_first}");
    let first_sync = after_first[0].as_str().unwrap_or_else(|| panic!("no onPremisesLastSyncDateTime: {after_first}")).to_string();
    assert_eq!(first["last"]["kind"], "full");
    assert_eq!(
        (first["interval_seconds"].as_u64(), first["deletion_threshold"].as_u64()),
        (Some(2700), Some(250)),
        "the tenant's schedule: {first}"
    );
    // The control channel is the service account's alone.
    let socket = dir("isthmus-sync.sock");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    let probe = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'{\"op\":\"scheduler\",\"enabled\":false}\\n')\nprint(s.recv(4096))";
    let other = Command::new("runuser").args(["-u", "nobody", "--", "python3", "-c", probe, &text(&socket)]).output().unwrap();
    assert!(!other.status.success() && String::from_utf8_lossy(&other.stderr).contains("PermissionError"), "{other:?}");
    let (second, _, err) = isthmus(&["sync", "run", "--config", &config_arg], &[]);
    assert!(!second && err.contains("one store has one writer") && err.contains(&format!("{}", serve.child.id())), "{err}");
    let human = ok(&["sync", "status", "--config", &config_arg], &[]);
    assert!(human.contains("scheduler:   enabled") && human.contains("last cycle:  Full"), "{human}");
    assert!(ok(&["sync", "scheduler", "disable", "--config", &config_arg], &[]).contains("disabled"));
    assert_eq!(status().unwrap()["scheduler_enabled"], false);
    // (The report's time has a one-second resolution.)
    std::thread::sleep(Duration::from_millis(1100));
    let started = ok(&["sync", "start", "--config", &config_arg], &[]);
    assert!(started.contains("delta cycle"), "{started}");
    wait_for("the requested cycle", Duration::from_secs(60), || status().is_some_and(|status| status["cycles"].as_u64() >= Some(2)));
    assert_eq!(status().unwrap()["last"]["kind"], "delta");
    let second_sync = organization()[0].as_str().unwrap().to_string();
    // The server's metrics: valid for promtool, counting both cycles and the steps' objects.
    let metrics = scrape(&serve, &promtool).await;
    let value = |prefix: &str| sample(&metrics, prefix);
    assert_eq!(value("isthmus_sync_cycles_total{kind=\"full\",outcome=\"success\"}"), 1.0, "{metrics}");
    assert_eq!(value("isthmus_sync_cycles_total{kind=\"delta\",outcome=\"success\"}"), 1.0, "{metrics}");
    assert!(value("isthmus_sync_objects_total{connector=\"ad\",step=\"full-import\",change=\"add\"}") >= 2.0, "hana and ivo: {metrics}");
    assert_eq!(value("isthmus_sync_deletion_threshold "), 250.0, "{metrics}");
    assert_eq!(value("isthmus_sync_interval_seconds "), 2700.0, "{metrics}");
    assert!(value("isthmus_sync_last_success_end_seconds ") > 1.7e9, "{metrics}");
    assert!(value("process_resident_memory_bytes ") > 1e6, "{metrics}");
    assert!(second_sync > first_sync, "onPremisesLastSyncDateTime advances with each cycle: {first_sync} then {second_sync}");

    // The report endpoint from the attacker's side: the administrator's app is not the sync
    // service; the sync app's malformed or oversized reports are refused and change nothing.
    let report_url = format!("{base}/isthmus/v1/syncReports");
    let server_id = serve
        .log()
        .lines()
        .find_map(|line| line.trim().strip_prefix("sync server ").and_then(|rest| rest.split_whitespace().next()).map(str::to_string))
        .unwrap_or_else(|| panic!("no server id in {}", serve.log()));
    let report = |id: &str, mode: &str| {
        serde_json::json!({"version": 1, "server": {"id": id, "host": "rogue", "productVersion": "0"}, "mode": mode,
            "intervalSeconds": 1800, "deletionThreshold": null,
            "cycle": {"kind": "delta", "started": 1, "finished": 2, "outcome": "success", "steps": []}})
    };
    let refused = http.post(&report_url).bearer_auth(&token).json(&report("rogue", "active")).send().await.unwrap();
    assert_eq!(refused.status(), 403, "the administrator is not the sync service");
    let sync_token =
        testkit::client_credentials_token(&http, &format!("{base}/{initial}/oauth2/v2.0/token"), &sync_id, &sync_secret).await.unwrap();
    for (body, why) in [
        (serde_json::json!({"version": 1}), "fields missing"),
        (report("rogue", "both"), "an unknown mode"),
        (report(&"x".repeat(2000), "active"), "an oversized server id"),
        (
            {
                let mut later = report("rogue", "active");
                later["version"] = 2.into();
                later
            },
            "a later version",
        ),
        (
            {
                let mut backwards = report("rogue", "active");
                backwards["cycle"]["finished"] = 0.into();
                backwards
            },
            "time running backwards",
        ),
    ] {
        let answer = http.post(&report_url).bearer_auth(&sync_token).json(&body).send().await.unwrap();
        assert_eq!(answer.status(), 400, "{why}: {:?}", answer.text().await);
    }
    assert_eq!(organization()[0].as_str(), Some(second_sync.as_str()), "refused reports changed nothing");
    // A second active server reporting to the same tenant is named, with this one, to both.
    let answer: Value =
        http.post(&report_url).bearer_auth(&sync_token).json(&report("rogue", "active")).send().await.unwrap().json().await.unwrap();
    let mut expected = vec![server_id.clone(), "rogue".to_string()];
    expected.sort();
    assert_eq!(answer["competingActiveServers"], serde_json::json!(expected), "{answer}");
    // ... and an alert the administrator sees with `isthmus health`.
    let alerts = admin(&["health"]);
    assert!(
        alerts.contains("open     error    More than one active sync server reports to this tenant") && alerts.contains("what to do:"),
        "{alerts}"
    );
    // Staging servers do not compete: the alert resolves.
    let answer: Value =
        http.post(&report_url).bearer_auth(&sync_token).json(&report("rogue", "staging")).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["competingActiveServers"], serde_json::json!([]), "{answer}");
    assert_eq!(admin(&["health"]).trim(), "no open alerts");
    let history = admin(&["health", "--all"]);
    assert!(history.contains("resolved error    More than one active sync server"), "{history}");
    let (refused, _, err) = isthmus(&["sync", "start", "--config", &config_arg, "--connector", "nope"], &[]);
    assert!(!refused && err.contains("no connector \"nope\""), "{err}");
    ok(&["sync", "scheduler", "enable", "--config", &config_arg], &[]);
    let history: Value = serde_json::from_str(&ok(&["history", "--config", &config_arg, "--json"], &[])).unwrap();
    assert!(history["value"].as_array().unwrap().len() >= 10, "{history}");
    let plan: Value = serde_json::from_str(&ok(&["plan", "--config", &config_arg, "--json"], &[])).unwrap();
    assert_eq!(plan["add"], 0, "everything exported: {plan}");
    let search: Value =
        serde_json::from_str(&ok(&["cs", "search", "--config", &config_arg, "--connector", "ad", "--dn-contains", "hana", "--json"], &[]))
            .unwrap();
    let mv = search["value"][0]["joinedTo"].as_i64().unwrap().to_string();
    let shown: Value = serde_json::from_str(&ok(&["mv", "show", "--config", &config_arg, &mv, "--json"], &[])).unwrap();
    assert_eq!(shown["connectors"].as_array().unwrap().len(), 2, "{shown}");
    // The preview runs the sync's own code over the store (either kind) with the config's rules.
    let preview = ok(&["preview", "--config", &config_arg, "--connector", "ad", "--dn", &hana], &[]);
    assert!(
        preview.contains("In from AD - User Join (ad)")
            && preview.contains("stays as it is")
            && preview.contains("connector spaces:\n  (no change)"),
        "{preview}"
    );

    // 7. The synced user signs in with msal (the hash came with the initial cycle's pass);
    //    msgraph-sdk lists the synced users.
    let upn = format!("hana@{domain}");
    wait_for("password hash sync", Duration::from_secs(60), || {
        msal(&python, &base, &initial, &public_id, &ca, &upn, "Hana!Pass.1")["user"] == upn.as_str()
    });
    let listed =
        Command::new(&python).args(["-c", GRAPH_SCRIPT, &base, &initial, &admin_id, &admin_secret, &text(&ca), "users"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(&format!("[\"hana@{domain}\", true]")) && listed.contains(&format!("[\"ivo@{domain}\", true]")), "{listed}");

    // 8. Pass-through: an agent, the domain switched, a password changed on-premises only.
    let agent_dir = dir("agent");
    let (early, _, err) =
        isthmus(&[&["tenant", "domain", "set-authentication", &domain, "pass-through"][..], tenant_args.as_ref()].concat(), &admin_env);
    assert!(!early && err.contains("no active pass-through agent"), "{err}");
    admin(&["pta-agent", "register", "--state-dir", &text(&agent_dir), "--machine-name", "agent-1"]);
    let agent_service = Service::start(
        &[
            "pta-agent",
            "run",
            "--state-dir",
            &text(&agent_dir),
            "--dc",
            &dc.ldaps_url(),
            "--dc-ca",
            &text(dc.ca_pem()),
            "--metrics-listen",
            &format!("{}:0", address.ip()),
        ],
        &[],
        dir("agent.log"),
    );
    wait_for("the agent", Duration::from_secs(30), || admin(&["pta", "list"]).contains(" active "));
    let switched = admin(&["tenant", "domain", "set-authentication", &domain, "pass-through"]);
    assert!(switched.contains("PassThrough"), "{switched}");
    ad.set_password(&hana, "Hana!Changed.2").await.unwrap();
    let result = msal(&python, &base, &initial, &public_id, &ca, &upn, "Hana!Changed.2");
    assert_eq!(result["user"], upn.as_str(), "checked on-premises by the agent: {result}");
    let result = msal(&python, &base, &initial, &public_id, &ca, &upn, "Not!Her.Pass9");
    assert_eq!(result["error"], "invalid_grant", "a wrong password is refused on-premises: {result}");
    let agents: Value = serde_json::from_str(&admin(&["pta", "list", "--json"])).unwrap();
    let agent = agents["value"].as_array().unwrap().iter().find(|agent| agent["machineName"] == "agent-1").unwrap();
    assert!(agent["requestsServed"].as_u64() >= Some(2), "both sign-ins went through the agent: {agents}");
    let back = admin(&["tenant", "domain", "set-authentication", &domain, "managed"]);
    assert!(back.contains("PasswordHashSync"), "{back}");

    // The tenant's metrics: valid for promtool, counting what happened above.
    let metrics = scrape(&tenant_serve, &promtool).await;
    let value = |prefix: &str| sample(&metrics, prefix);
    assert!(value("isthmus_tenant_token_requests_total{grant=\"password\",outcome=\"issued\"}") >= 2.0, "{metrics}");
    assert!(value("isthmus_tenant_token_requests_total{grant=\"password\",outcome=\"invalid_grant\"}") >= 1.0, "{metrics}");
    assert!(value("isthmus_tenant_token_requests_total{grant=\"client_credentials\",outcome=\"issued\"}") >= 5.0, "{metrics}");
    assert!(value("isthmus_tenant_sign_in_failures_total{code=") >= 1.0, "{metrics}");
    assert!(value("isthmus_tenant_password_sync_calls_total ") >= 1.0, "{metrics}");
    assert!(value("isthmus_tenant_sync_reports_total ") >= 2.0, "{metrics}");
    let metrics = scrape(&agent_service, &promtool).await;
    let value = |prefix: &str| sample(&metrics, prefix);
    assert_eq!(value("isthmus_pta_agent_checks_total{outcome=\"valid\"}"), 1.0, "{metrics}");
    assert_eq!(value("isthmus_pta_agent_checks_total{outcome=\"badPassword\"}"), 1.0, "{metrics}");
    assert_eq!(value("isthmus_pta_agent_check_duration_seconds_count "), 2.0, "{metrics}");

    // Debian's Prometheus scrapes the three services: every target up.
    let targets: Vec<String> = [&serve, &tenant_serve, &agent_service]
        .iter()
        .map(|service| {
            let log = service.log();
            let url = log.lines().find_map(|line| line.trim().strip_prefix("metrics on http://")).unwrap().to_string();
            url.trim_end_matches("/metrics").to_string()
        })
        .collect();
    let config = dir("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: isthmus\n    static_configs:\n      - targets: [{}]\n",
            targets.iter().map(|target| format!("'{target}'")).collect::<Vec<_>>().join(", ")
        ),
    )
    .unwrap();
    let prometheus_at = format!("{}:9090", address.ip());
    let prometheus = Command::new("/usr/bin/prometheus")
        .args([
            &format!("--config.file={}", text(&config)),
            &format!("--storage.tsdb.path={}", text(&dir("prometheus-data"))),
            &format!("--web.listen-address={prometheus_at}"),
        ])
        .stdout(std::fs::File::create(dir("prometheus.log")).unwrap())
        .stderr(std::fs::File::create(dir("prometheus.err")).unwrap())
        .spawn()
        .unwrap();
    let prometheus = Killed(prometheus);
    let query = format!("http://{prometheus_at}/api/v1/query?query=up");
    let mut up = Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok(answer) = reqwest::get(&query).await
            && let Ok(body) = answer.json::<Value>().await
        {
            up = body;
            let results = up["data"]["result"].as_array().cloned().unwrap_or_default();
            if results.len() == 3 && results.iter().all(|series| series["value"][1] == "1") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let results = up["data"]["result"].as_array().cloned().unwrap_or_default();
    assert!(
        results.len() == 3 && results.iter().all(|series| series["value"][1] == "1"),
        "Prometheus scrapes all three: {up}\n{}",
        std::fs::read_to_string(dir("prometheus.err")).unwrap_or_default()
    );
    drop(prometheus);

    // A real fault: the domain controller stops (only one this test started: an attached,
    // shared DC is not ours to stop). The next cycle's AD import cannot reach it, and the
    // administrator sees "Import from ad failed" with what to do.
    drop(ad);
    if let Some(pid) = dc.pid() {
        assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
        let (_, out, err) = isthmus(&["sync", "status", "--config", &config_arg, "--json"], &[]);
        let before = serde_json::from_str::<Value>(&out).unwrap_or_else(|_| panic!("sync status: {out}\n{err}\n{}", serve.log()))["cycles"]
            .as_u64()
            .unwrap_or(0);
        ok(&["sync", "start", "--config", &config_arg], &[]);
        wait_for("the cycle without the DC", Duration::from_secs(120), || {
            status().is_some_and(|status| status["cycles"].as_u64() > Some(before))
        });
        let alerts = admin(&["health"]);
        assert!(alerts.contains("open     error    Import from ad failed") && alerts.contains("what to do:"), "{alerts}\n{}", serve.log());
    }
    drop(serve);
    drop(tenant_serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_from_the_shipped_commands_alone_on_sqlite() {
    deployment(SyncStore::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_from_the_shipped_commands_alone_on_postgresql() {
    deployment(SyncStore::Postgres).await;
}
