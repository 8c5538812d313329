//! The connector contract suite against a real OpenLDAP slapd (syncprov with a session log).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use connector_api::testkit::Fixture;
use connector_api::{BoxFuture, Connector};
use model::Attributes;
use testkit::ldap::attr;
use testkit::slapd::{OpenLdapAdmin, Slapd, SlapdOptions};

struct LdapFixture {
    admin: OpenLdapAdmin,
}

impl Fixture for LdapFixture {
    fn create<'a>(&'a mut self, dn: &'a str, object_type: &'a str, attributes: Attributes) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let rdn = dn.split(',').next().unwrap().split_once('=').unwrap().1.to_string();
            let mut attrs = vec![attr("objectClass", &[object_type]), attr("cn", &[&rdn])];
            for (name, values) in attributes.iter() {
                let values: Vec<String> = values.iter().map(ToString::to_string).collect();
                attrs.push(attr(name, &values.iter().map(String::as_str).collect::<Vec<_>>()));
            }
            if !attrs.iter().any(|(name, _)| name == "sn") {
                attrs.push(attr("sn", &["Contract"]));
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
        (format!("cn={name},ou=people,{}", testkit::slapd::SUFFIX), "inetOrgPerson".into())
    }

    /// `sn` is mandatory for a person: an export that sets it makes a valid entry.
    fn free_attribute(&self) -> &str {
        "sn"
    }
}

async fn fixture() -> Option<(Slapd, Connector, LdapFixture)> {
    let slapd = testkit::available(Slapd::start_with(SlapdOptions { syncprov: true, session_log: Some(1000) }, None))?;
    let admin = slapd.admin().await.unwrap();
    let connector = connector_ldap::open(common::ldap_config(&slapd)).await.unwrap();
    Some((slapd, connector, LdapFixture { admin }))
}

connector_api::contract_tests!(fixture());
