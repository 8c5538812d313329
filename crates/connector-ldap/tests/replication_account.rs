//! Against a real Samba AD DC: what password hash sync learns of its replication account over
//! LDAP — its sAMAccountName and NetBIOS domain, and which of the two replication rights it
//! lacks on the domain root, as the account itself can read them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use connector_ldap::replication::{GET_CHANGES, GET_CHANGES_ALL};
use connector_ldap::{Bind, replication_account};
use testkit::samba::{AdUser, SambaDc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_missing_replication_rights_are_named_until_granted() {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let mut admin = dc.admin().await.unwrap();
    let dn = admin.create_user(&AdUser::with_password("isthmus-sync", "corp.example.test", "Sync!Acc0unt-1")).await.unwrap();
    let base = dc.base_dn();
    let missing_of = |account: &connector_ldap::ReplicationAccount| {
        account.missing.iter().map(|(nc, right)| (nc.clone(), right.name)).collect::<Vec<_>>()
    };
    // Named by DN, by UPN and as DOMAIN\user: the same account.
    for name in [dn.clone(), "isthmus-sync@corp.example.test".to_string(), "CORP\\isthmus-sync".to_string()] {
        let mut config = common::config(&dc);
        config.bind = Bind::Simple { dn: name.clone(), password: "Sync!Acc0unt-1".to_string().into() };
        let account = replication_account(config).await.unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!((account.sam_account_name.as_str(), account.netbios_domain.as_str()), ("isthmus-sync", "CORP"), "{name}");
        assert_eq!(account.naming_contexts, vec![base.clone()]);
        assert_eq!(missing_of(&account), vec![(base.clone(), GET_CHANGES.name), (base.clone(), GET_CHANGES_ALL.name)], "{name}");
    }
    let mut config = common::config(&dc);
    config.bind = Bind::Simple { dn: dn.clone(), password: "Sync!Acc0unt-1".to_string().into() };
    dc.grant_on_domain_root(&dn, "get-changes").unwrap();
    assert_eq!(missing_of(&replication_account(config.clone()).await.unwrap()), vec![(base.clone(), GET_CHANGES_ALL.name)]);
    dc.grant_on_domain_root(&dn, "get-changes-all").unwrap();
    assert!(replication_account(config).await.unwrap().missing.is_empty());
    // Administrator holds both through its groups (tokenGroups: Administrators, Domain Admins).
    assert!(replication_account(common::config(&dc)).await.unwrap().missing.is_empty());
    // An unknown account is named.
    let mut config = common::config(&dc);
    config.bind = Bind::Simple { dn: "CORP\\nobody".into(), password: "x".to_string().into() };
    assert!(replication_account(config).await.is_err());
}
