//! The connector contract suite against a real Samba AD domain controller.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use connector_api::testkit::Fixture;
use connector_api::{BoxFuture, Connector};
use connector_ldap::{Bind, Flavour, LdapConfig};
use model::Attributes;
use testkit::ldap::attr;
use testkit::samba::{AdAdmin, SambaDc};

struct AdFixture {
    admin: AdAdmin,
    ou: String,
}

impl Fixture for AdFixture {
    fn create<'a>(&'a mut self, dn: &'a str, object_type: &'a str, attributes: Attributes) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut attrs = vec![attr("objectClass", &[object_type])];
            for (name, values) in attributes.iter() {
                let values: Vec<String> = values.iter().map(ToString::to_string).collect();
                attrs.push(attr(name, &values.iter().map(String::as_str).collect::<Vec<_>>()));
            }
            self.admin.conn().add(dn, attrs).await.unwrap();
        })
    }

    fn modify<'a>(&'a mut self, dn: &'a str, attribute: &'a str, value: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.admin.conn().replace(dn, attribute, &[value]).await.unwrap() })
    }

    fn delete<'a>(&'a mut self, dn: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.admin.conn().delete(dn).await.unwrap() })
    }

    fn new_object(&self, name: &str) -> (String, String) {
        (format!("CN={name},{}", self.ou), "contact".into())
    }

    fn free_attribute(&self) -> &str {
        "description"
    }
}

/// The connector settings for a test DC: LDAPS, its CA, Administrator.
pub fn config(dc: &SambaDc) -> LdapConfig {
    let bind = Bind::Simple { dn: dc.admin_dn(), password: dc.config().admin_password.clone().into() };
    let mut config = LdapConfig::new(&dc.config().realm.to_lowercase(), Flavour::ActiveDirectory, &dc.ip().to_string(), bind);
    config.ca_file = Some(dc.ca_pem().to_path_buf());
    config
}

async fn fixture() -> Option<(SambaDc, Connector, AdFixture)> {
    let dc = testkit::available(SambaDc::start_default())?;
    let mut admin = dc.admin().await.unwrap();
    // A fresh OU per test: tests may share one attached DC (ISTHMUS_TEST_SAMBA_DIR).
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let ou = admin.create_ou(&format!("Contract-{}-{nanos}", std::process::id()), None).await.unwrap();
    let mut config = config(&dc);
    config.include_ous = vec![ou.clone()];
    let connector = connector_ldap::open(config).await.unwrap();
    Some((dc, connector, AdFixture { admin, ou }))
}

connector_api::contract_tests!(fixture());
