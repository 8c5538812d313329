//! The connector contract suite on the in-memory connector (the reference every connector is held to).

use connector_api::testkit::Fixture;
use connector_api::{BoxFuture, Connector, Role};
use connector_memory::MemoryDirectory;
use model::{AttrChange, AttrValue, Attributes};

struct MemoryFixture {
    directory: MemoryDirectory,
}

impl Fixture for MemoryFixture {
    fn create<'a>(&'a mut self, dn: &'a str, object_type: &'a str, attributes: Attributes) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.directory.put(dn, object_type, attributes);
        })
    }

    fn modify<'a>(&'a mut self, dn: &'a str, attribute: &'a str, value: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (anchor, _, _) = self.directory.find_dn(dn).unwrap_or_else(|| panic!("{dn} exists"));
            self.directory.modify(&anchor, &[AttrChange::Replace(attribute.to_string(), vec![AttrValue::string(value)])]);
        })
    }

    fn delete<'a>(&'a mut self, dn: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (anchor, _, _) = self.directory.find_dn(dn).unwrap_or_else(|| panic!("{dn} exists"));
            self.directory.delete(&anchor);
        })
    }

    fn new_object(&self, name: &str) -> (String, String) {
        (format!("CN={name},OU=Contract"), "user".to_string())
    }

    fn free_attribute(&self) -> &str {
        "description"
    }
}

async fn fixture() -> Option<((), Connector, MemoryFixture)> {
    let directory = MemoryDirectory::new();
    // Pages of 2, so every check crosses page boundaries.
    let connector = directory.connector("memory", Role::Source, 2);
    Some(((), connector, MemoryFixture { directory }))
}

connector_api::contract_tests!(fixture());
