//! Smoke tests of the OpenLDAP kit: slapd starts with syncprov and the Samba password schema,
//! answers LDAPS with a certificate we verify, and bulk-loads generated directories.

use ldap3::Scope;
use testkit::available;
use testkit::directory::{GenConfig, generate, write_openldap_ldif};
use testkit::slapd::{SUFFIX, Slapd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slapd_answers_with_syncprov_and_holds_nt_hashes() {
    let Some(slapd) = available(Slapd::start()) else {
        return;
    };
    println!("slapd pid {} at {} ready after {:?}", slapd.pid(), slapd.ldaps_url(), slapd.ready_after);
    let mut admin = slapd.admin().await.unwrap();
    let hash = "4A2CEABD3F7D938BC0E1A72860609B5E";
    let dn = admin.create_person("alice", "alice@example.test", "Al1ce!Secret", Some(hash)).await.unwrap();
    let group = admin.create_group("staff", &[&dn]).await.unwrap();

    let conn = admin.conn();
    let found = conn.search(SUFFIX, Scope::Subtree, "(uid=alice)", &["sambaNTPassword", "entryUUID"]).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].attrs["sambaNTPassword"], vec![hash]);
    assert_eq!(found[0].attrs["entryUUID"][0].len(), 36);
    let members = conn.search(&group, Scope::Base, "(objectClass=groupOfNames)", &["member"]).await.unwrap();
    assert_eq!(members[0].attrs["member"], vec![dn.clone()]);

    // syncprov advertises the RFC 4533 sync request control.
    let root = conn.search("", Scope::Base, "(objectClass=*)", &["supportedControl"]).await.unwrap();
    assert!(root[0].attrs["supportedControl"].iter().any(|oid| oid == "1.3.6.1.4.1.4203.1.9.1.1"), "{:?}", root[0].attrs);

    let mut user_conn = testkit::ldap::Connection::connect(&slapd.ldaps_url(), Some(slapd.ca_pem()), false).await.unwrap();
    user_conn.bind(&dn, "Al1ce!Secret").await.unwrap();
    let mut wrong = testkit::ldap::Connection::connect(&slapd.ldap_url(), Some(slapd.ca_pem()), true).await.unwrap();
    let err = wrong.bind(&dn, "nope").await.unwrap_err().to_string();
    assert!(err.contains("49"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_directory_bulk_loads() {
    let directory = generate(&GenConfig { users: 300, groups: 12, contacts: 7, ..GenConfig::default() });
    let ldif = tempfile::NamedTempFile::new().unwrap();
    let mut out = std::io::BufWriter::new(ldif.reopen().unwrap());
    write_openldap_ldif(&directory, SUFFIX, &mut out).unwrap();
    drop(out);
    let Some(slapd) = available(Slapd::start_with_ldif(Some(ldif.path()))) else {
        return;
    };
    let mut admin = slapd.admin().await.unwrap();
    let people =
        admin.conn().search(&format!("ou=people,{SUFFIX}"), Scope::OneLevel, "(objectClass=inetOrgPerson)", &["1.1"]).await.unwrap();
    assert_eq!(people.len(), 300);
    let all_staff =
        admin.conn().search(&format!("cn=All Staff,ou=groups,{SUFFIX}"), Scope::Base, "(objectClass=*)", &["member"]).await.unwrap();
    assert_eq!(all_staff[0].attrs["member"].len(), 300);
}

#[test]
fn dropping_slapd_stops_it() {
    let Some(slapd) = available(Slapd::start()) else {
        return;
    };
    let pid = slapd.pid();
    drop(slapd);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "slapd {pid} still runs");
}
