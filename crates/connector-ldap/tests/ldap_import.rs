//! The generic LDAP connector against a real OpenLDAP slapd: typed full imports, syncrepl
//! deltas of every kind of change (with and without a syncprov session log), timestamp deltas
//! on a server without syncprov, and a server lost in the middle of an import.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{anchor_of, connector_space, delta_pages, ldap_config, upsert_of};
use connector_api::testkit::full_import;
use connector_ldap::DeltaMode;
use ldap3::Mod;
use model::{AttrValue, ImportChange};
use testkit::ldap::attr;
use testkit::slapd::{OpenLdapAdmin, SUFFIX, Slapd, SlapdOptions};

const PEOPLE: &str = "ou=people,dc=example,dc=test";

/// A person with posixAccount under `parent`.
async fn posix_person(admin: &mut OpenLdapAdmin, uid: &str, parent: &str, number: u32) -> String {
    let dn = format!("uid={uid},{parent}");
    let attrs = vec![
        attr("objectClass", &["inetOrgPerson", "posixAccount"]),
        attr("uid", &[uid]),
        attr("cn", &[uid]),
        attr("sn", &["Posix"]),
        attr("uidNumber", &[&number.to_string()]),
        attr("gidNumber", &["100"]),
        attr("homeDirectory", &[&format!("/home/{uid}")]),
        attr("userPassword", &["{SSHA}not-a-real-hash"]),
    ];
    admin.conn().add(&dn, attrs).await.unwrap();
    dn
}

struct Seeded {
    alice: String,
    bob: String,
    dave: String,
    staff: String,
    team: String,
}

async fn seed(admin: &mut OpenLdapAdmin) -> Seeded {
    let alice = admin.create_person("alice", "alice@example.test", "Secret.1", Some("8846F7EAEE8FB117AD06BDD830B7586C")).await.unwrap();
    let bob = admin.create_person("bob", "bob@example.test", "Secret.2", None).await.unwrap();
    let dave = admin.create_person("dave", "dave@example.test", "Secret.3", None).await.unwrap();
    let staff = admin.create_group("staff", &[&alice, &bob]).await.unwrap();
    let team = format!("ou=team,{PEOPLE}");
    admin.conn().add(&team, vec![attr("objectClass", &["organizationalUnit"]), attr("ou", &["team"])]).await.unwrap();
    posix_person(admin, "tina", &team, 2001).await;
    let devs = format!("cn=devs,ou=groups,{SUFFIX}");
    let attrs =
        vec![attr("objectClass", &["posixGroup"]), attr("cn", &["devs"]), attr("gidNumber", &["100"]), attr("memberUid", &["tina"])];
    admin.conn().add(&devs, attrs).await.unwrap();
    Seeded { alice, bob, dave, staff, team }
}

/// Full import, a delta of adds, modifies, a rename, member changes and a delete, then a delta
/// after an OU rename: the connector space equals a fresh full import's.
async fn deltas_see_every_kind_of_change(options: SlapdOptions) {
    let Some(slapd) = testkit::available(Slapd::start_with(options, None)) else { return };
    let mut admin = slapd.admin().await.unwrap();
    let seeded = seed(&mut admin).await;
    let connector = connector_ldap::open(ldap_config(&slapd)).await.unwrap();
    assert_eq!(connector.info.kind, "ldap");

    let (full, watermark) = full_import(&connector).await;
    assert!(String::from_utf8_lossy(&watermark).contains("ldap-syncrepl-v1"), "syncprov is there: syncrepl is used");
    let Some(ImportChange::Upsert { anchor, object_type, attributes, .. }) = upsert_of(&full, &seeded.alice) else { panic!("alice") };
    assert_eq!((anchor.0.len(), object_type.as_str()), (16, "inetOrgPerson"), "entryUUID bytes anchor the entry");
    assert_eq!(attributes.get("mail"), &[AttrValue::string("alice@example.test")]);
    assert!(attributes.get("userPassword").is_empty() && attributes.get("sambaNTPassword").is_empty(), "no password material");
    assert_eq!(attributes.get("entryUUID").len(), 1);
    let Some(ImportChange::Upsert { attributes, .. }) = upsert_of(&full, &seeded.staff) else { panic!("staff") };
    assert_eq!(attributes.get("member").len(), 2);
    assert!(attributes.get("member").iter().all(|value| matches!(value, AttrValue::Reference(_))), "members are references");
    let tina = format!("uid=tina,{}", seeded.team);
    let Some(ImportChange::Upsert { object_type, attributes, .. }) = upsert_of(&full, &tina) else { panic!("tina") };
    assert_eq!(object_type, "inetOrgPerson", "a person with posixAccount is a person");
    assert_eq!(attributes.get("uidNumber"), &[AttrValue::Integer(2001)]);
    assert!(attributes.get("objectClass").contains(&AttrValue::string("posixAccount")));
    let Some(ImportChange::Upsert { object_type, attributes, .. }) = upsert_of(&full, &format!("cn=devs,ou=groups,{SUFFIX}")) else {
        panic!("devs")
    };
    assert_eq!((object_type.as_str(), attributes.get("gidNumber")), ("posixGroup", &[AttrValue::Integer(100)][..]));
    assert_eq!(full.len(), 6, "four people, two groups; OUs are not imported");

    // Adds, modifies, a rename, member changes and a delete.
    let carol = admin.create_person("carol", "carol@example.test", "Secret.4", None).await.unwrap();
    admin.conn().replace(&seeded.alice, "mail", &["alice.new@example.test"]).await.unwrap();
    admin.conn().rename(&seeded.bob, "uid=robert", None).await.unwrap();
    let robert = format!("uid=robert,{PEOPLE}");
    admin.add_members(&seeded.staff, &[&carol]).await.unwrap();
    admin.conn().modify(&seeded.staff, vec![Mod::Delete(b"member".to_vec(), [seeded.alice.as_bytes().to_vec()].into())]).await.unwrap();
    admin.conn().delete(&seeded.dave).await.unwrap();

    let (delta, watermark, complete) = delta_pages(&connector, &watermark).await;
    assert_eq!(complete, options.session_log.is_none(), "a present phase (no session log) ends with a presence pass");
    assert!(upsert_of(&delta, &carol).is_some(), "add: {delta:?}");
    assert!(upsert_of(&delta, &robert).is_some(), "rename");
    let Some(ImportChange::Upsert { attributes, .. }) = upsert_of(&delta, &seeded.staff) else { panic!("staff changed") };
    assert_eq!(attributes.get("member").len(), 2, "bob (now robert) and carol");
    let dave = anchor_of(&full, &seeded.dave);
    if options.session_log.is_some() {
        assert!(
            delta.iter().any(|change| matches!(change, ImportChange::Delete { anchor } if *anchor == dave)),
            "the session log names the delete"
        );
    } else {
        let named = delta.iter().any(|change| match change {
            ImportChange::Upsert { anchor, .. } | ImportChange::Modify { anchor, .. } | ImportChange::Delete { anchor } => *anchor == dave,
        });
        assert!(!named, "the presence pass leaves dave out, so the sweep deletes him");
    }

    // An OU rename: only the OU changes on the server; its people move with it.
    admin.conn().rename(&seeded.team, "ou=crew", None).await.unwrap();
    let (after_rename, _, complete) = delta_pages(&connector, &watermark).await;
    assert!(complete, "a changed container makes the delta check every DN");
    let moved = format!("uid=tina,ou=crew,{PEOPLE}");
    assert!(
        after_rename.iter().any(|change| matches!(change, ImportChange::Modify { dn, .. } if dn.eq_ignore_ascii_case(&moved))),
        "tina's new DN is named: {after_rename:?}"
    );

    let (fresh, _) = full_import(&connector).await;
    assert_eq!(
        connector_space(&[(&full, true), (&delta, options.session_log.is_none()), (&after_rename, true)]).await,
        connector_space(&[(&fresh, true)]).await,
        "full import + deltas = a fresh full import"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncrepl_with_a_session_log_names_deletes() {
    deltas_see_every_kind_of_change(SlapdOptions { syncprov: true, session_log: Some(1000) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncrepl_without_a_session_log_falls_back_to_a_presence_pass() {
    deltas_see_every_kind_of_change(SlapdOptions { syncprov: true, session_log: None }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_deltas_where_the_server_has_no_syncprov() {
    let options = SlapdOptions { syncprov: false, session_log: None };
    let Some(slapd) = testkit::available(Slapd::start_with(options, None)) else { return };
    let mut admin = slapd.admin().await.unwrap();
    let seeded = seed(&mut admin).await;

    let mut wanted = ldap_config(&slapd);
    wanted.delta = DeltaMode::Syncrepl;
    let err = connector_ldap::open(wanted).await.err().expect("syncrepl asked of a server without it");
    assert!(err.to_string().contains("syncprov"), "{err}");

    let connector = connector_ldap::open(ldap_config(&slapd)).await.unwrap();
    let (full, watermark) = full_import(&connector).await;
    assert!(String::from_utf8_lossy(&watermark).contains("ldap-timestamp-v1"), "no syncprov: timestamps");
    admin.conn().replace(&seeded.alice, "mail", &["alice.ts@example.test"]).await.unwrap();
    admin.conn().delete(&seeded.dave).await.unwrap();
    admin.conn().rename(&seeded.team, "ou=crew", None).await.unwrap();
    let (delta, _, complete) = delta_pages(&connector, &watermark).await;
    assert!(complete, "timestamp deltas always end with a presence pass");
    let Some(ImportChange::Upsert { attributes, .. }) = upsert_of(&delta, &seeded.alice) else { panic!("alice changed") };
    assert_eq!(attributes.get("mail"), &[AttrValue::string("alice.ts@example.test")]);
    let (fresh, _) = full_import(&connector).await;
    assert_eq!(connector_space(&[(&full, true), (&delta, true)]).await, connector_space(&[(&fresh, true)]).await);
}
