//! Shared by the connector's integration tests: settings for a test DC, fresh OUs, import loops.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use connector_ldap::{Bind, Flavour, LdapConfig};
use model::ImportChange;
use testkit::samba::{AdAdmin, SambaDc};

/// The connector settings for a test DC: LDAPS, its CA, Administrator.
pub fn config(dc: &SambaDc) -> LdapConfig {
    let bind = Bind::Simple { dn: dc.admin_dn(), password: dc.config().admin_password.clone().into() };
    let mut config = LdapConfig::new(&dc.config().realm.to_lowercase(), Flavour::ActiveDirectory, &dc.ip().to_string(), bind);
    config.ca_file = Some(dc.ca_pem().to_path_buf());
    config
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
