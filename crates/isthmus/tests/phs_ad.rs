//! Password hash sync from a real Samba AD DC over MS-DRSR, end to end, with a least-privileged
//! account: people synced by `isthmus sync run` with the default rules, their hashes replicated
//! by `isthmus phs run` with an account holding only the two replication rights (refused, naming
//! the right, while it holds one), then signing in to the tenant with their on-premises
//! passwords through the token endpoint and through Microsoft's Python `msal` (ROPC); a changed
//! password replaces the old one on the next (incremental) pass; a disabled account is refused;
//! an account that reaches the cloud after its hash was read gets it on a later pass; a
//! password on the tenant's leaked list is flagged.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::process::Command;

use serde_json::Value;
use testkit::samba::{AdUser, SambaDc};

fn isthmus(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_isthmus")).args(args).output().expect("run isthmus");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// A Samba DC with people in an OU and a replication account holding "Replicating Directory
/// Changes" only; a tenant (also on 443 of its own loopback address) with a leaked-hash list;
/// a configuration that syncs the OU with password hash sync on, as that account.
struct Fixture {
    dc: SambaDc,
    python: std::path::PathBuf,
    address: testkit::LoopbackAddr,
    folder: tempfile::TempDir,
    http: reqwest::Client,
    base: String,
    initial: String,
    ca: std::path::PathBuf,
    public_client: String,
    admin_app: (String, String),
    ad: testkit::samba::AdAdmin,
    ou: String,
    realm: String,
    people: Vec<String>,
    account: String,
    config_path: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Fixture {
    /// ROPC at the token endpoint as `<sam>@<initial domain>` (the AD realm is not a verified
    /// domain here, so synced UPNs move to the initial domain).
    async fn sign_in(&self, sam: &str, password: &str) -> (u16, Value) {
        let form = [
            ("grant_type", "password".to_string()),
            ("client_id", self.public_client.clone()),
            ("username", format!("{sam}@{}", self.initial)),
            ("password", password.to_string()),
            ("scope", "openid User.Read".to_string()),
        ];
        let response = self.http.post(format!("{}/{}/oauth2/v2.0/token", self.base, self.initial)).form(&form).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    }

    /// A person in the synced OU.
    fn person(&self, sam: &str, password: &str) -> AdUser {
        AdUser { parent_dn: Some(self.ou.clone()), ..AdUser::with_password(sam, &self.realm, password) }
    }

    /// Waits (90 s at most) until `sam` signs in with `password`; how long it took.
    async fn wait_for_sign_in(&self, sam: &str, password: &str) -> std::time::Duration {
        let started = std::time::Instant::now();
        loop {
            if self.sign_in(sam, password).await.0 == 200 {
                return started.elapsed();
            }
            let errors = std::fs::read_to_string(self.folder.path().join("serve.err")).unwrap_or_default();
            assert!(started.elapsed() < std::time::Duration::from_secs(90), "{sam} never signed in with {password}:\n{errors}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    fn config_arg(&self) -> &str {
        self.config_path.to_str().unwrap()
    }
}

async fn setup() -> Option<Fixture> {
    let dc = testkit::available(SambaDc::start_default())?;
    let python = testkit::available(testkit::python_clients())?;
    // The tenant also listens on 443 of a loopback address of its own (MSAL's user-realm
    // discovery drops the authority's port).
    let address = testkit::available(testkit::LoopbackAddr::reserve())?;
    let folder = tempfile::tempdir().unwrap();
    let on443 = std::net::SocketAddr::from((address.ip(), 443));
    let mut config = tenant::TenantConfig::new(folder.path().join("tenant"), vec!["127.0.0.1:0".parse().unwrap(), on443]);
    config.hosts = vec![address.ip().to_string()];
    config.password_iterations = 1_000;
    let list = folder.path().join("pwned-ntlm.txt");
    let mut leaked: Vec<String> =
        ["password", "Leaked!Pass9"].iter().map(|password| format!("{}:42", &*phs::NtHash::of_password(password).to_hex())).collect();
    leaked.sort();
    std::fs::write(&list, leaked.join("\r\n") + "\r\n").unwrap();
    config.leaked_list = Some(list);
    let (tenant, bootstrap) = tenant::Tenant::open(config).await.unwrap();
    let admin_app = bootstrap.unwrap();
    let sync = tenant.register_app("Isthmus sync", &[tenant::SYNC_ROLE]).await.unwrap();
    let public = tenant.register_public_app("a public client").await.unwrap();
    let (initial, ca) = (tenant.initial_domain().to_string(), tenant.ca_pem.clone());
    let running = tenant.spawn().await.unwrap();
    let (stop, base) = (running.stop, running.base);
    let http = testkit::https_client(&ca).unwrap();
    // On-premises: people in an OU; the replication account elsewhere, with one right of two.
    let realm = dc.config().realm.to_lowercase();
    let mut ad = dc.admin().await.unwrap();
    let ou = ad.create_ou("PhsPeople", None).await.unwrap();
    let person = |sam: &str, password: &str| AdUser { parent_dn: Some(ou.clone()), ..AdUser::with_password(sam, &realm, password) };
    let hana = ad.create_user(&person("hana", "Hana!Pass.1")).await.unwrap();
    let ivo = ad.create_user(&person("ivo", "Ivo!Pass.1")).await.unwrap();
    ad.create_user(&person("kim", "Leaked!Pass9")).await.unwrap();
    let account = ad.create_user(&AdUser::with_password("isthmus-sync", &realm, "Sync!Acc0unt-1")).await.unwrap();
    dc.grant_on_domain_root(&account, "get-changes").unwrap();

    let state = folder.path().join("sync");
    std::fs::create_dir_all(&state).unwrap();
    let config_path = state.join("isthmus.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"[store]
sqlite = "isthmus.db"

[sync]
default_rules = true
source_anchor = "objectGUID"

[[connector]]
id = "{realm}"
flavour = "active-directory"
host = "{dc_host}"
ca_file = "{dc_ca}"
include_ous = ["{ou}"]
password_hash_sync = true
[connector.bind]
method = "simple"
dn = "{account}"
password = "Sync!Acc0unt-1"

[[graph]]
id = "tenant"
authority = "{base}"
graph = "{base}/v1.0"
tenant = "{initial}"
client_id = "{client_id}"
client_secret = "{client_secret}"
ca_file = "{tenant_ca}"
"#,
            dc_host = dc.ip(),
            dc_ca = dc.ca_pem().display(),
            client_id = sync.client_id,
            client_secret = &*sync.client_secret,
            tenant_ca = ca.display(),
        ),
    )
    .unwrap();
    Some(Fixture {
        dc,
        python,
        address,
        folder,
        http,
        base,
        initial,
        ca,
        public_client: public.clone(),
        admin_app: (admin_app.client_id.clone(), admin_app.client_secret.to_string()),
        ad,
        ou,
        realm,
        people: vec![hana, ivo],
        account,
        config_path,
        _stop: stop,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_passwords_replicated_over_drsr_sign_in_to_the_tenant() {
    let Some(mut fx) = setup().await else { return };
    let (hana, ivo) = (fx.people[0].clone(), fx.people[1].clone());
    let (initial, ca, address, python) = (fx.initial.clone(), fx.ca.clone(), fx.address.ip(), fx.python.clone());
    let config_path = fx.config_path.clone();
    let config_arg = config_path.to_str().unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg, "--full"]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(fx.sign_in("hana", "Hana!Pass.1").await.0, 400, "no password before hash sync");

    // One right of two: refused, naming the missing one.
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(!ok, "{out}");
    assert!(err.contains("lacks Replicating Directory Changes All (DS-Replication-Get-Changes-All"), "{err}");
    assert!(!err.contains("lacks Replicating Directory Changes (DS"), "only the missing right: {err}");

    // A built-in account named by its implicit UPN (sam@dns-domain; it has no
    // userPrincipalName), as `sync run` accepts it: found, and it holds both rights.
    let admin_config = config_path.with_file_name("administrator.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let text = text
        .replace(&format!("dn = \"{}\"", fx.account), &format!("dn = \"Administrator@{}\"", fx.realm))
        .replace("password = \"Sync!Acc0unt-1\"", &format!("password = \"{}\"", fx.dc.config().admin_password))
        .replace("sqlite = \"isthmus.db\"", "sqlite = \"administrator.db\"");
    std::fs::write(&admin_config, text).unwrap();
    let (ok, out, err) = isthmus(&["phs", "run", "--config", admin_config.to_str().unwrap()]);
    assert!(!err.contains("was not found"), "{out}\n{err}");
    assert!(ok, "{out}\n{err}");

    fx.dc.grant_on_domain_root(&fx.account, "get-changes-all").unwrap();
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("3 sent, 3 synced"), "{out}");
    assert!(out.contains("1 account(s) with a password on the leaked-credential list") && out.contains("CN=kim"), "{out}");
    let (status, tokens) = fx.sign_in("hana", "Hana!Pass.1").await;
    assert_eq!(status, 200, "the AD password signs in: {tokens}");
    for secret in [phs::NtHash::of_password("Hana!Pass.1").to_hex().to_string(), "Hana!Pass.1".to_string()] {
        assert!(!out.contains(&secret) && !err.contains(&secret), "never a hash or password in the output");
    }

    // Microsoft's msal signs in with the synced password (ROPC), as with any Entra tenant.
    let msal = |user: String, password: &'static str| {
        let (python, base443, initial, client, ca) =
            (python.clone(), format!("https://{address}"), initial.clone(), fx.public_client.clone(), ca.clone());
        async move {
            let line = tokio::task::spawn_blocking(move || testkit::msal_ropc(&python, &base443, &initial, &client, &ca, &user, password))
                .await
                .unwrap()
                .unwrap();
            serde_json::from_str::<Value>(&line).unwrap()
        }
    };
    let result = msal(format!("hana@{initial}"), "Hana!Pass.1").await;
    assert_eq!(result["user"], format!("hana@{initial}"), "{result}");

    // The leaked password is flagged in the tenant.
    let token: Value = fx
        .http
        .post(format!("{}/{initial}/oauth2/v2.0/token", fx.base))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", fx.admin_app.0.as_str()),
            ("client_secret", fx.admin_app.1.as_str()),
            ("scope", "x/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let risky: Value = fx
        .http
        .get(format!("{}/v1.0/identityProtection/riskyUsers", fx.base))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let flagged: Vec<&str> = risky["value"].as_array().unwrap().iter().filter_map(|user| user["userPrincipalName"].as_str()).collect();
    assert_eq!(flagged, vec![format!("kim@{initial}").as_str()], "{risky}");

    // A password changed on-premises: the next pass is incremental and carries only it.
    fx.ad.set_password(&hana, "Hana!Changed.2").await.unwrap();
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("1 hashes read, 1 sent, 1 synced"), "only the changed account: {out}");
    assert_eq!(fx.sign_in("hana", "Hana!Pass.1").await.0, 400, "the old password stops working");
    assert_eq!(fx.sign_in("hana", "Hana!Changed.2").await.0, 200, "the new one works");
    let result = msal(format!("hana@{initial}"), "Hana!Pass.1").await;
    assert_eq!(result["error"], "invalid_grant", "{result}");

    // A disabled account is refused once the disable is synced.
    assert_eq!(fx.sign_in("ivo", "Ivo!Pass.1").await.0, 200);
    fx.ad.conn().replace(&ivo, "userAccountControl", &["514"]).await.unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    let (status, refused) = fx.sign_in("ivo", "Ivo!Pass.1").await;
    assert_eq!(status, 400, "{refused}");

    // An account whose hash is read before it reaches the cloud gets it once it has.
    let lee = fx.ad.create_user(&fx.person("lee", "Lee!Pass.1")).await.unwrap();
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("1 not in the cloud yet"), "{out}");
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(fx.sign_in("lee", "Lee!Pass.1").await.0, 400, "synced, no password yet");
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(fx.sign_in("lee", "Lee!Pass.1").await.0, 200, "sent once in the cloud: {out}");
    assert!(!lee.is_empty());

    // A full resync on demand reads every account again.
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg, "--full"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("3 synced"), "hana, kim and lee (ivo is disabled): {out}");
}

/// `sync serve` runs password hash sync after its first cycle, and in near-real-time mode an
/// on-premises password change (a changed pwdLastSet) starts a pass at once: the new password
/// works in the cloud within seconds, long before the hourly schedule would run one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_serve_carries_a_password_change_within_seconds() {
    let Some(mut fx) = setup().await else { return };
    fx.dc.grant_on_domain_root(&fx.account, "get-changes-all").unwrap();
    let log = fx.folder.path().join("serve.log");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["sync", "serve", "--config", fx.config_arg(), "--interval-minutes", "60", "--password-sync-minutes", "60"])
        .args(["--near-real-time-seconds", "1"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(fx.folder.path().join("serve.err")).unwrap())
        .spawn()
        .unwrap();
    fx.wait_for_sign_in("hana", "Hana!Pass.1").await;
    let hana = fx.people[0].clone();
    fx.ad.set_password(&hana, "Hana!Changed.2").await.unwrap();
    let latency = fx.wait_for_sign_in("hana", "Hana!Changed.2").await;
    println!("a password changed on-premises signed in to the cloud after {:.1} s (1 s polling)", latency.as_secs_f64());
    assert_eq!(fx.sign_in("hana", "Hana!Pass.1").await.0, 400, "the old password no longer works");
    assert!(Command::new("kill").args(["-TERM", &serve.id().to_string()]).status().unwrap().success());
    let status = serve.wait().unwrap();
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(status.success() && output.contains("password hash sync every 60 min"), "{output}");
}
