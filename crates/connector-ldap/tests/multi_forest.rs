//! Two AD forests (two Samba DCs, two realms) into one metaverse: the same person in both is one
//! metaverse object, joined by mail, with attributes from each forest by precedence; and the
//! account-resource topology, a linked mailbox joined to its account by
//! msExchMasterAccountSid ↔ objectSid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use model::{AttrValue, ConnectorId};
use store::{CsQuery, Store};
use store_sqlite::SqliteStore;
use sync_rules::RuleSet;
use sync_runner::{Runner, RunnerConfig, Step};
use testkit::samba::{AdUser, SambaConfig, SambaDc};

const RULES: &str = r#"
[[rule]]
name = "In from CORP - person"
direction = "inbound"
connector = "corp.example.test"
source_type = "user"
target_type = "person"
link_type = "provision"
precedence = 10
scope = [[{ attribute = "mail", operator = "ISNOTNULL" }]]
join = [[{ source = "mail", target = "mail" }]]
[[rule.flow]]
target = "mail"
expression = 'LCase([mail])'
[[rule.flow]]
target = "department"
direct = "department"
[[rule.flow]]
target = "corpSam"
direct = "sAMAccountName"

[[rule]]
name = "In from FABRIKAM - person"
direction = "inbound"
connector = "fabrikam.example.test"
source_type = "user"
target_type = "person"
link_type = "provision"
precedence = 20
scope = [[{ attribute = "mail", operator = "ISNOTNULL" }]]
join = [[{ source = "mail", target = "mail" }]]
[[rule.flow]]
target = "mail"
expression = 'LCase([mail])'
[[rule.flow]]
target = "department"
direct = "department"
[[rule.flow]]
target = "fabrikamSam"
direct = "sAMAccountName"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_forests_join_into_one_metaverse_object() {
    let fabrikam_config = SambaConfig::forest("FABRIKAM.EXAMPLE.TEST", "FABRIKAM");
    let (corp, fabrikam) = std::thread::scope(|scope| {
        let corp = scope.spawn(SambaDc::start_default);
        let fabrikam = scope.spawn(|| SambaDc::start(&fabrikam_config));
        (corp.join().unwrap(), fabrikam.join().unwrap())
    });
    let (Some(corp), Some(fabrikam)) = (testkit::available(corp), testkit::available(fabrikam)) else { return };

    let mut corp_admin = corp.admin().await.unwrap();
    let corp_ou = common::fresh_ou(&mut corp_admin, "Staff", None).await;
    let mut fab_admin = fabrikam.admin().await.unwrap();
    let fab_ou = common::fresh_ou(&mut fab_admin, "Staff", None).await;
    let both = |sam: &str, ou: &str, mail: &str| AdUser {
        parent_dn: Some(ou.to_string()),
        mail: Some(mail.to_string()),
        ..AdUser::with_password(sam, "example.test", "Str0ng!Pass.1")
    };
    // Hana has an account in each forest (different sAMAccountNames, one mail address).
    let hana_corp = corp_admin.create_user(&both("hana", &corp_ou, "Hana.Berg@example.test")).await.unwrap();
    corp_admin.conn().replace(&hana_corp, "department", &["Finance"]).await.unwrap();
    let hana_fab = fab_admin.create_user(&both("hberg", &fab_ou, "hana.berg@example.test")).await.unwrap();
    fab_admin.conn().replace(&hana_fab, "department", &["Treasury"]).await.unwrap();
    // Ivo exists only in FABRIKAM.
    fab_admin.create_user(&both("ivo", &fab_ou, "ivo@example.test")).await.unwrap();

    let store = SqliteStore::memory().unwrap();
    store.migrate().await.unwrap();
    let mut runner = Runner::new(store, RuleSet::parse(RULES).unwrap(), RunnerConfig::default());
    for (dc, ou) in [(&corp, &corp_ou), (&fabrikam, &fab_ou)] {
        let mut config = common::config(dc);
        config.include_ous = vec![ou.clone()];
        runner.add_connector(connector_ldap::open(config).await.unwrap());
    }
    let (corp_id, fab_id) = (ConnectorId("corp.example.test".into()), ConnectorId("fabrikam.example.test".into()));
    for id in [&corp_id, &fab_id] {
        runner.run_step(id, Step::FullImport).await.unwrap();
        runner.run_step(id, Step::FullSync).await.unwrap();
    }

    let corp_cs = runner.store().cs_list(&corp_id, &CsQuery::default()).await.unwrap();
    let fab_cs = runner.store().cs_list(&fab_id, &CsQuery::default()).await.unwrap();
    let link = |objects: &[model::CsObject], dn: &str| {
        objects.iter().find(|cs| cs.dn.eq_ignore_ascii_case(dn)).and_then(|cs| cs.link).expect("joined to the metaverse")
    };
    let hana = link(&corp_cs, &hana_corp);
    assert_eq!(link(&fab_cs, &hana_fab), hana, "both accounts join one metaverse object (mail, case-insensitive)");
    let ivo = link(&fab_cs, &format!("CN=ivo,{fab_ou}"));
    assert_ne!(ivo, hana, "a person in one forest only is a separate object");

    let mv = runner.store().mv_get(hana).await.unwrap().expect("hana in the metaverse");
    let value = |name: &str| mv.attributes.get(name).map(|attribute| attribute.values.clone()).unwrap_or_default();
    assert_eq!(value("mail"), [AttrValue::string("hana.berg@example.test")]);
    assert_eq!(value("department"), [AttrValue::string("Finance")], "the forest with the lower precedence number wins");
    assert_eq!(value("corpSam"), [AttrValue::string("hana")]);
    assert_eq!(value("fabrikamSam"), [AttrValue::string("hberg")], "each forest contributes what only it has");
}

const ACCOUNT_RESOURCE_RULES: &str = r#"
[[rule]]
name = "In from CORP (account forest) - person"
direction = "inbound"
connector = "corp.example.test"
source_type = "user"
target_type = "person"
link_type = "provision"
precedence = 10
[[rule.flow]]
target = "objectSid"
direct = "objectSid"
[[rule.flow]]
target = "accountName"
direct = "sAMAccountName"

[[rule]]
name = "In from FABRIKAM (resource forest) - linked mailbox"
direction = "inbound"
connector = "fabrikam.example.test"
source_type = "user"
target_type = "person"
link_type = "join"
precedence = 20
scope = [[{ attribute = "msExchMasterAccountSid", operator = "ISNOTNULL" }]]
join = [[{ source = "msExchMasterAccountSid", target = "objectSid" }]]
[[rule.flow]]
target = "mail"
direct = "mail"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_mailbox_joins_its_account_by_master_account_sid() {
    let fabrikam_config = SambaConfig::forest("FABRIKAM.EXAMPLE.TEST", "FABRIKAM");
    let (corp, fabrikam) = std::thread::scope(|scope| {
        let corp = scope.spawn(SambaDc::start_default);
        let fabrikam = scope.spawn(|| SambaDc::start(&fabrikam_config));
        (corp.join().unwrap(), fabrikam.join().unwrap())
    });
    let (Some(corp), Some(fabrikam)) = (testkit::available(corp), testkit::available(fabrikam)) else { return };

    // The account forest: Kai signs in here.
    let mut corp_admin = corp.admin().await.unwrap();
    let corp_ou = common::fresh_ou(&mut corp_admin, "Accounts", None).await;
    let kai = corp_admin
        .create_user(&AdUser { parent_dn: Some(corp_ou.clone()), ..AdUser::with_password("kai", "corp.example.test", "Str0ng!Pass.1") })
        .await
        .unwrap();
    let found = corp_admin.conn().search(&kai, ldap3::Scope::Base, "(objectClass=*)", &["objectSid"]).await.unwrap();
    let sid = found[0].bin_attrs.get("objectSid").and_then(|values| values.first()).cloned().expect("kai's objectSid");

    // The resource forest: Kai's mailbox lives on a disabled user that names his account's SID.
    let mut fab_admin = fabrikam.admin().await.unwrap();
    fab_admin.add_exchange_master_account_sid().await.unwrap();
    let fab_ou = common::fresh_ou(&mut fab_admin, "Mailboxes", None).await;
    let mailbox = AdUser {
        parent_dn: Some(fab_ou.clone()),
        mail: Some("kai@example.test".into()),
        password: None,
        ..AdUser::with_password("kai-mbx", "fabrikam.example.test", "unused")
    };
    let kai_mbx = fab_admin.create_user(&mailbox).await.unwrap();
    fab_admin.conn().modify(&kai_mbx, vec![ldap3::Mod::Replace(b"msExchMasterAccountSid".to_vec(), [sid.clone()].into())]).await.unwrap();
    // A mailbox whose account is not synced stays a disconnector.
    let orphan = AdUser {
        parent_dn: Some(fab_ou.clone()),
        mail: Some("orphan@example.test".into()),
        password: None,
        ..AdUser::with_password("orphan-mbx", "fabrikam.example.test", "unused")
    };
    let orphan = fab_admin.create_user(&orphan).await.unwrap();
    let mut other_sid = sid.clone();
    if let Some(last) = other_sid.last_mut() {
        *last ^= 0x55;
    }
    fab_admin.conn().modify(&orphan, vec![ldap3::Mod::Replace(b"msExchMasterAccountSid".to_vec(), [other_sid].into())]).await.unwrap();

    let store = SqliteStore::memory().unwrap();
    store.migrate().await.unwrap();
    let mut runner = Runner::new(store, RuleSet::parse(ACCOUNT_RESOURCE_RULES).unwrap(), RunnerConfig::default());
    for (dc, ou) in [(&corp, &corp_ou), (&fabrikam, &fab_ou)] {
        let mut config = common::config(dc);
        config.include_ous = vec![ou.clone()];
        runner.add_connector(connector_ldap::open(config).await.unwrap());
    }
    let (corp_id, fab_id) = (ConnectorId("corp.example.test".into()), ConnectorId("fabrikam.example.test".into()));
    for id in [&corp_id, &fab_id] {
        runner.run_step(id, Step::FullImport).await.unwrap();
        runner.run_step(id, Step::FullSync).await.unwrap();
    }

    let fab_cs = runner.store().cs_list(&fab_id, &CsQuery::default()).await.unwrap();
    let held = |dn: &str| fab_cs.iter().find(|cs| cs.dn.eq_ignore_ascii_case(dn)).expect("imported").clone();
    assert_eq!(held(&kai_mbx).attributes.get("msExchMasterAccountSid"), &[AttrValue::Binary(sid.clone())], "read as a SID, exactly");
    let corp_cs = runner.store().cs_by_dn(&corp_id, &kai).await.unwrap().expect("kai imported");
    let person = corp_cs.link.expect("kai projected");
    assert_eq!(held(&kai_mbx).link, Some(person), "the linked mailbox joins its account's metaverse object");
    assert_eq!(held(&orphan).link, None, "no account with that SID: no join");
    let mv = runner.store().mv_get(person).await.unwrap().expect("kai in the metaverse");
    let value = |name: &str| mv.attributes.get(name).map(|attribute| attribute.values.clone()).unwrap_or_default();
    assert_eq!(value("accountName"), [AttrValue::string("kai")], "from the account forest");
    assert_eq!(value("mail"), [AttrValue::string("kai@example.test")], "from the resource forest");
}
