//! `isthmus sync run` end to end with real servers: people in a Samba AD domain provisioned into
//! OpenLDAP by the rules of a configuration file, then a change carried by a delta cycle.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::process::Command;

use testkit::samba::{AdUser, SambaDc};
use testkit::slapd::{SUFFIX, Slapd};

const RULES: &str = r#"
[[rule]]
name = "In from AD - person"
direction = "inbound"
connector = "corp"
source_type = "user"
target_type = "person"
link_type = "provision"
precedence = 10
scope = [[{ attribute = "mail", operator = "ISNOTNULL" }]]
join = [[{ source = "sAMAccountName", target = "uid" }]]
[[rule.flow]]
target = "uid"
direct = "sAMAccountName"
[[rule.flow]]
target = "sn"
direct = "sn"
[[rule.flow]]
target = "mail"
expression = 'LCase([mail])'
[[rule.flow]]
target = "title"
direct = "title"

[[rule]]
name = "Out to OpenLDAP - person"
direction = "outbound"
connector = "ldap"
source_type = "person"
target_type = "inetOrgPerson"
link_type = "provision"
precedence = 10
join = [[{ source = "uid", target = "uid" }]]
[[rule.flow]]
target = "dn"
expression = '"uid=" & [uid] & ",ou=people,dc=example,dc=test"'
[[rule.flow]]
target = "uid"
direct = "uid"
[[rule.flow]]
target = "cn"
direct = "uid"
[[rule.flow]]
target = "sn"
direct = "sn"
[[rule.flow]]
target = "mail"
direct = "mail"
[[rule.flow]]
target = "title"
direct = "title"
"#;

fn isthmus(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_isthmus")).args(args).output().expect("run isthmus");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_run_provisions_ad_people_into_openldap() {
    let (dc, slapd) = std::thread::scope(|scope| {
        let dc = scope.spawn(SambaDc::start_default);
        let slapd = scope.spawn(Slapd::start);
        (dc.join().unwrap(), slapd.join().unwrap())
    });
    let (Some(dc), Some(slapd)) = (testkit::available(dc), testkit::available(slapd)) else { return };
    let mut ad = dc.admin().await.unwrap();
    let ou = ad.create_ou(&format!("Sync-{}", std::process::id()), None).await.unwrap();
    for sam in ["ann", "bob"] {
        let user = AdUser { parent_dn: Some(ou.clone()), ..AdUser::with_password(sam, "corp.example.test", "Str0ng!Pass.1") };
        let dn = ad.create_user(&user).await.unwrap();
        ad.conn().replace(&dn, "title", &["Engineer"]).await.unwrap();
    }
    // No mail: out of the rules' scope, never provisioned.
    let nomail = AdUser { parent_dn: Some(ou.clone()), mail: None, ..AdUser::with_password("cid", "corp.example.test", "Str0ng!Pass.1") };
    ad.create_user(&nomail).await.unwrap();

    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("rules.toml"), RULES).unwrap();
    let ldap_host = slapd.ldaps_url().trim_start_matches("ldaps://").to_string();
    let config = format!(
        r#"[store]
sqlite = "state.db"

[sync]
rules = ["rules.toml"]

[[connector]]
id = "corp"
flavour = "active-directory"
host = "{dc_host}"
ca_file = "{dc_ca}"
include_ous = ["{ou}"]
[connector.bind]
method = "simple"
dn = "{dc_admin}"
password = "{dc_password}"

[[connector]]
id = "ldap"
flavour = "generic"
role = "target"
host = "{ldap_host}"
ca_file = "{ldap_ca}"
include_ous = ["ou=people,{SUFFIX}"]
[connector.bind]
method = "simple"
dn = "{ldap_admin}"
password = "{ldap_password}"
"#,
        dc_host = dc.ip(),
        dc_ca = dc.ca_pem().display(),
        dc_admin = dc.admin_dn(),
        dc_password = dc.config().admin_password,
        ldap_ca = slapd.ca_pem().display(),
        ldap_admin = testkit::slapd::ADMIN_DN,
        ldap_password = testkit::slapd::ADMIN_PASSWORD,
    );
    let config_path = folder.path().join("isthmus.toml");
    std::fs::write(&config_path, config).unwrap();
    let config_arg = config_path.to_str().unwrap();

    let (ok, out, err) = isthmus(&["check-config", config_arg]);
    assert!(ok && out.contains("2 connector(s), 2 rule(s)"), "{out}\n{err}");

    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg, "--full"]);
    assert!(ok, "the first cycle failed:\n{out}\n{err}");
    let mut ldap = slapd.admin().await.unwrap();
    let people = |entries: Vec<ldap3::SearchEntry>| {
        let mut found: Vec<(String, String)> = entries
            .into_iter()
            .map(|entry| (entry.attrs["uid"][0].clone(), entry.attrs.get("title").map(|title| title[0].clone()).unwrap_or_default()))
            .collect();
        found.sort();
        found
    };
    let base = format!("ou=people,{SUFFIX}");
    let found = ldap.conn().search(&base, ldap3::Scope::OneLevel, "(objectClass=inetOrgPerson)", &["uid", "title"]).await.unwrap();
    assert_eq!(people(found), [("ann".to_string(), "Engineer".to_string()), ("bob".to_string(), "Engineer".to_string())], "{out}");

    // A change in AD reaches OpenLDAP with a delta cycle (DirSync in, modify out).
    ad.conn().replace(&format!("CN=bob,{ou}"), "title", &["Manager"]).await.unwrap();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(ok, "the delta cycle failed:\n{out}\n{err}");
    assert!(out.contains("== delta cycle"), "{out}");
    let found = ldap.conn().search(&base, ldap3::Scope::OneLevel, "(objectClass=inetOrgPerson)", &["uid", "title"]).await.unwrap();
    let db = folder.path().join("state.db");
    let (_, objects, _) = isthmus(&["cs", "search", "--db", db.to_str().unwrap(), "--connector", "ldap"]);
    assert_eq!(
        people(found),
        [("ann".to_string(), "Engineer".to_string()), ("bob".to_string(), "Manager".to_string())],
        "{out}\n{objects}"
    );

    // One run profile of one connector.
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg, "--step", "full-import", "--connector", "corp"]);
    assert!(ok && out.contains("== full-import of corp") && out.contains("full import"), "{out}\n{err}");
    let (ok, _, err) = isthmus(&["sync", "run", "--config", config_arg, "--step", "fullimport", "--connector", "corp"]);
    assert!(!ok && err.contains("is not one of full-import"), "{err}");
    let (ok, _, err) = isthmus(&["sync", "run", "--config", config_arg, "--step", "export", "--connector", "nope"]);
    assert!(!ok && err.contains("no connector \"nope\""), "{err}");

    // The operator tools read the same state.
    let (ok, out, _) = isthmus(&["history", "--db", db.to_str().unwrap()]);
    assert!(ok && out.contains("delta-import"), "{out}");

    // A server that cannot be reached stops the cycle with a clear error and a failing exit code.
    slapd_stopped_fails(config_arg, slapd).await;
}

async fn slapd_stopped_fails(config_arg: &str, mut slapd: Slapd) {
    slapd.stop();
    let (ok, out, err) = isthmus(&["sync", "run", "--config", config_arg]);
    assert!(!ok, "a cycle with a connector down must fail:\n{out}");
    assert!(err.contains("connector ldap") || err.contains("ldap"), "{err}");
}
