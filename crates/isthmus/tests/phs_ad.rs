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

const MSAL: &str = r#"
import json, sys, msal, requests
base443, domain, client_id, ca, user, password = sys.argv[1:7]
session = requests.Session()
session.verify = ca
session.trust_env = False
app = msal.PublicClientApplication(client_id, authority=f"{base443}/{domain}", instance_discovery=False, http_client=session)
result = app.acquire_token_by_username_password(user, password, scopes=["User.Read"])
print(json.dumps({"user": result.get("id_token_claims", {}).get("preferred_username"), "error": result.get("error")}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_passwords_replicated_over_drsr_sign_in_to_the_tenant() {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let Some(python) = testkit::available(testkit::python_clients()) else { return };
    // The tenant also listens on 443 of a loopback address of its own (MSAL's user-realm
    // discovery drops the authority's port).
    let Some(address) = testkit::available(testkit::LoopbackAddr::reserve()) else { return };
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
    let public = tenant.register_app("a public client", &["Directory.Read.All"]).await.unwrap();
    let (initial, ca) = (tenant.initial_domain().to_string(), tenant.ca_pem.clone());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, serve) = tenant
        .bind(async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    tokio::spawn(serve);
    let base = format!("https://127.0.0.1:{}", bound[0].port());
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .use_rustls_tls()
        .build()
        .unwrap();
    // The AD realm is not a verified domain here, so synced UPNs move to the initial domain.
    let sign_in = |sam: &str, password: &str| {
        let form = [
            ("grant_type", "password".to_string()),
            ("client_id", public.client_id.clone()),
            ("username", format!("{sam}@{initial}")),
            ("password", password.to_string()),
            ("scope", "openid User.Read".to_string()),
        ];
        let request = http.post(format!("{base}/{initial}/oauth2/v2.0/token")).form(&form);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };

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
    let config_arg = config_path.to_str().unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg, "--full"]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(sign_in("hana", "Hana!Pass.1").await.0, 400, "no password before hash sync");

    // One right of two: refused, naming the missing one.
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(!ok, "{out}");
    assert!(err.contains("lacks Replicating Directory Changes All (DS-Replication-Get-Changes-All"), "{err}");
    assert!(!err.contains("lacks Replicating Directory Changes (DS"), "only the missing right: {err}");

    dc.grant_on_domain_root(&account, "get-changes-all").unwrap();
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("3 sent, 3 synced"), "{out}");
    assert!(out.contains("1 account(s) with a password on the leaked-credential list") && out.contains("CN=kim"), "{out}");
    let (status, tokens) = sign_in("hana", "Hana!Pass.1").await;
    assert_eq!(status, 200, "the AD password signs in: {tokens}");
    for secret in [phs::NtHash::of_password("Hana!Pass.1").to_hex().to_string(), "Hana!Pass.1".to_string()] {
        assert!(!out.contains(&secret) && !err.contains(&secret), "never a hash or password in the output");
    }

    // Microsoft's msal signs in with the synced password (ROPC), as with any Entra tenant.
    let script = folder.path().join("msal_ropc.py");
    std::fs::write(&script, MSAL).unwrap();
    let msal = |user: String, password: &'static str| {
        let args: Vec<String> = [
            script.to_str().unwrap(),
            &format!("https://{}", address.ip()),
            &initial,
            &public.client_id,
            ca.to_str().unwrap(),
            &user,
            password,
        ]
        .map(str::to_string)
        .to_vec();
        let python = python.clone();
        async move {
            let output = tokio::task::spawn_blocking(move || Command::new(python).args(args).output()).await.unwrap().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(output.status.success(), "msal failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
            serde_json::from_str::<Value>(stdout.lines().last().unwrap_or_default()).unwrap()
        }
    };
    let result = msal(format!("hana@{initial}"), "Hana!Pass.1").await;
    assert_eq!(result["user"], format!("hana@{initial}"), "{result}");

    // The leaked password is flagged in the tenant.
    let token: Value = http
        .post(format!("{base}/{initial}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", admin_app.client_id.as_str()),
            ("client_secret", admin_app.client_secret.as_str()),
            ("scope", "x/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let risky: Value = http
        .get(format!("{base}/v1.0/identityProtection/riskyUsers"))
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
    ad.set_password(&hana, "Hana!Changed.2").await.unwrap();
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("1 hashes read, 1 sent, 1 synced"), "only the changed account: {out}");
    assert_eq!(sign_in("hana", "Hana!Pass.1").await.0, 400, "the old password stops working");
    assert_eq!(sign_in("hana", "Hana!Changed.2").await.0, 200, "the new one works");
    let result = msal(format!("hana@{initial}"), "Hana!Pass.1").await;
    assert_eq!(result["error"], "invalid_grant", "{result}");

    // A disabled account is refused once the disable is synced.
    assert_eq!(sign_in("ivo", "Ivo!Pass.1").await.0, 200);
    ad.conn().replace(&ivo, "userAccountControl", &["514"]).await.unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    let (status, refused) = sign_in("ivo", "Ivo!Pass.1").await;
    assert_eq!(status, 400, "{refused}");

    // An account whose hash is read before it reaches the cloud gets it once it has.
    let lee = ad.create_user(&person("lee", "Lee!Pass.1")).await.unwrap();
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("1 not in the cloud yet"), "{out}");
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(sign_in("lee", "Lee!Pass.1").await.0, 400, "synced, no password yet");
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(sign_in("lee", "Lee!Pass.1").await.0, 200, "sent once in the cloud: {out}");
    assert!(!lee.is_empty());

    // A full resync on demand reads every account again.
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg, "--full"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("3 synced"), "hana, kim and lee (ivo is disabled): {out}");
}
