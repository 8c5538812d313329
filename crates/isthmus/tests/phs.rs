//! Password hash sync end to end with real servers: people in OpenLDAP (with `sambaNTPassword`)
//! synced into the tenant by `isthmus sync run`, their hashes sent by `isthmus phs run`, and
//! then signing in to the tenant with their on-premises passwords; a password changed
//! on-premises replaces the old one; a disabled account's hash is not synced; a password on the
//! tenant's leaked-credential list is flagged (and, as this tenant is set, blocked).
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::process::Command;

use serde_json::Value;
use testkit::slapd::{SUFFIX, Slapd};

fn isthmus(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_isthmus")).args(args).output().expect("run isthmus");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

const RULES: &str = r#"
[[rule]]
name = "In from LDAP - person"
direction = "inbound"
connector = "ldap"
source_type = "inetOrgPerson"
target_type = "person"
link_type = "provision"
precedence = 10
password_sync = true
join = [[{ source = "uid", target = "accountName" }]]
[[rule.flow]]
target = "accountName"
direct = "uid"
[[rule.flow]]
target = "mail"
expression = 'LCase([mail])'
[[rule.flow]]
target = "displayName"
direct = "cn"

[[rule]]
name = "Out to Cloud - user"
direction = "outbound"
connector = "tenant"
source_type = "person"
target_type = "user"
link_type = "provision"
precedence = 10
join = [[{ source = "accountName", target = "onPremisesImmutableId", case_sensitive = true }]]
[[rule.flow]]
target = "onPremisesImmutableId"
direct = "accountName"
[[rule.flow]]
target = "onPremisesSyncEnabled"
constant = "True"
[[rule.flow]]
target = "accountEnabled"
constant = "True"
[[rule.flow]]
target = "userPrincipalName"
direct = "mail"
[[rule.flow]]
target = "mailNickname"
direct = "accountName"
[[rule.flow]]
target = "displayName"
direct = "displayName"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_premises_passwords_sign_in_to_the_tenant_after_hash_sync() {
    let Some(slapd) = testkit::available(Slapd::start()) else { return };
    let folder = tempfile::tempdir().unwrap();
    let mut config = tenant::TenantConfig::new(folder.path().join("tenant"), vec!["127.0.0.1:0".parse().unwrap()]);
    config.password_iterations = 1_000;
    // A leaked-hash list in the Pwned Passwords NTLM format, sorted: "password" and others.
    let mut leaked: Vec<String> = ["password", "123456", "qwerty", "letmein"]
        .iter()
        .enumerate()
        .map(|(n, password)| format!("{}:{}", &*phs::NtHash::of_password(password).to_hex(), 1000 + n))
        .collect();
    leaked.sort();
    let list = folder.path().join("pwned-ntlm.txt");
    std::fs::write(&list, leaked.join("\r\n") + "\r\n").unwrap();
    config.leaked_list = Some(list);
    config.block_leaked = true;
    let (tenant, bootstrap) = tenant::Tenant::open(config).await.unwrap();
    let admin = bootstrap.unwrap();
    let sync = tenant.register_app("Isthmus sync", &[tenant::SYNC_ROLE]).await.unwrap();
    let public = tenant.register_public_app("a public client").await.unwrap();
    let (domain, ca) = (tenant.initial_domain().to_string(), tenant.ca_pem.clone());
    let running = tenant.spawn().await.unwrap();
    let (_stop, base) = (running.stop, running.base);
    let http = testkit::https_client(&ca).unwrap();
    let sign_in = |user: &str, password: &str| {
        let form = [
            ("grant_type", "password".to_string()),
            ("client_id", public.clone()),
            ("username", format!("{user}@{domain}")),
            ("password", password.to_string()),
            ("scope", "openid User.Read".to_string()),
        ];
        let request = http.post(format!("{base}/{domain}/oauth2/v2.0/token")).form(&form);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };

    // On-premises: two people with NT hashes, one of them disabled.
    let mut ldap = slapd.admin().await.unwrap();
    let nt = |password: &str| phs::NtHash::of_password(password).to_hex().to_string();
    let ada = ldap.create_person("ada", &format!("ada@{domain}"), "x", Some(&nt("Ldap!Pass1"))).await.unwrap();
    let ben = ldap.create_person("ben", &format!("ben@{domain}"), "x", Some(&nt("Ben!Pass1"))).await.unwrap();
    ldap.conn().replace(&ben, "sambaAcctFlags", &["[UD         ]"]).await.unwrap();
    let cay = ldap.create_person("cay", &format!("cay@{domain}"), "x", Some(&nt("password"))).await.unwrap();

    std::fs::write(folder.path().join("rules.toml"), RULES).unwrap();
    let config = format!(
        r#"[store]
sqlite = "state.db"

[sync]
rules = ["rules.toml"]

[[connector]]
id = "ldap"
flavour = "generic"
host = "{ldap_host}"
ca_file = "{ldap_ca}"
include_ous = ["ou=people,{SUFFIX}"]
password_hash_sync = true
[connector.bind]
method = "simple"
dn = "{ldap_admin}"
password = "{ldap_password}"

[[graph]]
id = "tenant"
authority = "{base}"
graph = "{base}/v1.0"
tenant = "{domain}"
client_id = "{client_id}"
client_secret = "{client_secret}"
ca_file = "{tenant_ca}"
"#,
        ldap_host = slapd.ldaps_url().trim_start_matches("ldaps://"),
        ldap_ca = slapd.ca_pem().display(),
        ldap_admin = testkit::slapd::ADMIN_DN,
        ldap_password = testkit::slapd::ADMIN_PASSWORD,
        client_id = sync.client_id,
        client_secret = &*sync.client_secret,
        tenant_ca = ca.display(),
    );
    let config_path = folder.path().join("isthmus.toml");
    std::fs::write(&config_path, config).unwrap();
    let config_arg = config_path.to_str().unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg, "--full"]);
    assert!(ok, "{out}\n{err}");
    let (status, _) = sign_in("ada", "Ldap!Pass1").await;
    assert_eq!(status, 400, "no password before hash sync");

    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("3 hashes read, 2 sent, 2 synced; skipped: 1 disabled"), "{out}");
    assert!(
        out.contains("1 account(s) with a password on the leaked-credential list") && out.contains(&cay),
        "the report names cay:\n{out}"
    );
    let (status, tokens) = sign_in("ada", "Ldap!Pass1").await;
    assert_eq!(status, 200, "the on-premises password signs in: {tokens}");
    assert!(!out.contains(&nt("Ldap!Pass1")) && !err.contains(&nt("Ldap!Pass1")), "never a hash in the output");
    let (status, _) = sign_in("ben", "Ben!Pass1").await;
    assert_eq!(status, 400, "a disabled account's hash is not synced");
    let token_url = format!("{base}/{domain}/oauth2/v2.0/token");
    let admin_token = testkit::client_credentials_token(&http, &token_url, &admin.client_id, &admin.client_secret).await.unwrap();
    let risky = || {
        let request = http.get(format!("{base}/v1.0/identityProtection/riskyUsers")).bearer_auth(&admin_token);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let flagged = risky().await;
    assert_eq!(flagged["value"].as_array().map(Vec::len), Some(1), "{flagged}");
    assert_eq!(flagged["value"][0]["userPrincipalName"], format!("cay@{domain}"));
    let (status, error) = sign_in("cay", "password").await;
    assert_eq!((status, error["error_codes"][0].as_i64()), (400, Some(53003)), "a leaked password is blocked: {error}");

    // The password changes on-premises: the next pass replaces it.
    ldap.conn().replace(&ada, "sambaNTPassword", &[&nt("Changed!Pass2")]).await.unwrap();
    ldap.conn().replace(&cay, "sambaNTPassword", &[&nt("Not!Leaked3")]).await.unwrap();
    let (ok, out, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(sign_in("ada", "Ldap!Pass1").await.0, 400, "the old password stops working");
    assert_eq!(sign_in("ada", "Changed!Pass2").await.0, 200, "the new one works");
    assert_eq!(sign_in("cay", "Not!Leaked3").await.0, 200, "a new password that is not leaked clears the flag");
    assert_eq!(risky().await["value"].as_array().map(Vec::len), Some(0));

    // A staging server syncs no passwords.
    let staged = std::fs::read_to_string(&config_path).unwrap().replace("[sync]\n", "[sync]\nstaging = true\n");
    std::fs::write(&config_path, staged).unwrap();
    let (ok, _, err) = isthmus(&["phs", "run", "--config", config_arg]);
    assert!(!ok && err.contains("staging server syncs no passwords"), "{err}");
}
