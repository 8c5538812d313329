//! Shared by the connector's integration tests: settings for a test DC, fresh OUs, import loops.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use connector_api::Connector;
use connector_ldap::{Bind, Flavour, LdapConfig};
use model::{ConnectorId, CsObject, ImportChange};
use store::{CsQuery, Store};
use store_sqlite::SqliteStore;
use testkit::samba::{AdAdmin, SambaDc};
use testkit::slapd::Slapd;

/// The connector settings for a test DC: LDAPS, its CA, Administrator.
pub fn config(dc: &SambaDc) -> LdapConfig {
    let bind = Bind::Simple { dn: dc.admin_dn(), password: dc.config().admin_password.clone().into() };
    let mut config = LdapConfig::new(&dc.config().realm.to_lowercase(), Flavour::ActiveDirectory, &dc.ip().to_string(), bind);
    config.ca_file = Some(dc.ca_pem().to_path_buf());
    config
}

/// The generic connector's settings for a test slapd: LDAPS, its CA, the root DN.
pub fn ldap_config(slapd: &Slapd) -> LdapConfig {
    let bind = Bind::Simple { dn: testkit::slapd::ADMIN_DN.into(), password: testkit::slapd::ADMIN_PASSWORD.to_string().into() };
    let host = slapd.ldaps_url().trim_start_matches("ldaps://").to_string();
    let mut config = LdapConfig::new("openldap", Flavour::Generic, &host, bind);
    config.ca_file = Some(slapd.ca_pem().to_path_buf());
    config
}

/// All changes of a delta import from `watermark`, its last watermark, and whether it was
/// complete (a presence pass: what it did not name is gone).
pub async fn delta_pages(connector: &Connector, watermark: &[u8]) -> (Vec<ImportChange>, Vec<u8>, bool) {
    let mut changes = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    let mut last = watermark.to_vec();
    let mut complete = false;
    loop {
        let page = connector.import.delta_page(watermark, cursor.as_deref()).await.expect("delta import page");
        changes.extend(page.changes);
        complete |= page.complete;
        if let Some(mark) = page.watermark {
            assert!(page.next.is_none() || !complete, "a complete delta gives its watermark on the last page only");
            last = mark;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return (changes, last, complete),
        }
    }
}

/// What a connector space holds after applying `imports` in order, each `(changes, sweeps)`
/// (a full import, or a complete delta, deletes what it did not name): anchor → DN, type, attributes.
pub async fn connector_space(imports: &[(&[ImportChange], bool)]) -> Vec<(Vec<u8>, String, String, model::Attributes)> {
    let store = SqliteStore::memory().unwrap();
    store.migrate().await.unwrap();
    let id = ConnectorId("ad".into());
    for (number, (changes, sweeps)) in imports.iter().enumerate() {
        let run = store.run_start(&id, "import", number as i64 + 1).await.unwrap();
        let counts = store.commit_import_page(&id, run, changes, None).await.unwrap();
        assert_eq!(counts.missed, 0, "every delta change is for an object the connector space holds");
        if *sweeps {
            store.obsolete_unseen(&id, run).await.unwrap();
        }
    }
    let objects: Vec<CsObject> = store.cs_list(&id, &CsQuery::default()).await.unwrap();
    let mut held: Vec<_> = objects
        .into_iter()
        .filter(|cs| cs.pending_import != Some(model::PendingImport::Delete))
        .map(|cs| {
            // Multi-valued attributes are sets: compare them in a fixed order.
            let attributes = cs.attributes.iter().map(|(name, values)| {
                let mut values = values.to_vec();
                values.sort();
                (name.to_string(), values)
            });
            (cs.anchor.unwrap().0, cs.dn.to_lowercase(), cs.object_type, attributes.collect::<model::Attributes>())
        })
        .collect();
    held.sort_by(|a, b| a.0.cmp(&b.0));
    held
}

/// A new OU with a unique name (tests may share one attached DC, `ISTHMUS_TEST_SAMBA_DIR`).
pub async fn fresh_ou(admin: &mut AdAdmin, prefix: &str, parent: Option<&str>) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    admin.create_ou(&format!("{prefix}-{}-{nanos}", std::process::id()), parent).await.unwrap()
}

/// The upsert of the object at `dn` (case-insensitive), if any.
pub fn upsert_of<'a>(changes: &'a [ImportChange], dn: &str) -> Option<&'a ImportChange> {
    changes.iter().find(|change| matches!(change, ImportChange::Upsert { dn: found, .. } if found.eq_ignore_ascii_case(dn)))
}

/// The anchor of the object at `dn` in `changes`.
pub fn anchor_of(changes: &[ImportChange], dn: &str) -> model::Anchor {
    match upsert_of(changes, dn) {
        Some(ImportChange::Upsert { anchor, .. }) => anchor.clone(),
        _ => panic!("{dn} is not in the import"),
    }
}
