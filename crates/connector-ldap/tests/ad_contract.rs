//! The connector contract suite against a real Samba AD domain controller.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use connector_api::testkit::Fixture;
use connector_api::{BoxFuture, Connector};
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

async fn fixture() -> Option<(SambaDc, Connector, AdFixture)> {
    let dc = testkit::available(SambaDc::start_default())?;
    let mut admin = dc.admin().await.unwrap();
    let ou = common::fresh_ou(&mut admin, "Contract", None).await;
    let mut config = common::config(&dc);
    config.include_ous = vec![ou.clone()];
    let connector = connector_ldap::open(config).await.unwrap();
    Some((dc, connector, AdFixture { admin, ou }))
}

connector_api::contract_tests!(fixture());
