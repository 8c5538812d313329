//! Directory objects as the sync engine sees them: values, attributes, connector-space (CS)
//! objects, metaverse (MV) objects, their links, pending changes and errors.
//!
//! These types carry data only. What happens to them (scope, join, flow) is `sync-engine`'s
//! business; where they are kept is the store's.

use std::collections::BTreeMap;
use std::fmt;

/// Identifies a connector (one connected directory), e.g. `corp.example.test` or `tenant`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectorId(pub String);

impl fmt::Display for ConnectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies a connector-space object (assigned by the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CsId(pub i64);

/// Identifies a metaverse object (assigned by the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MvId(pub i64);

impl fmt::Display for CsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cs:{}", self.0)
    }
}

impl fmt::Display for MvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mv:{}", self.0)
    }
}

/// The immutable identity of an object in its connected directory (objectGUID, entryUUID, Graph id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Anchor(pub Vec<u8>);

/// One attribute value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttrValue {
    /// Text.
    String(String),
    /// A 64-bit integer.
    Integer(i64),
    /// A boolean.
    Boolean(bool),
    /// Bytes, kept exact (objectGUID, objectSid, mS-DS-ConsistencyGuid).
    Binary(Vec<u8>),
    /// A connector space's reference to another object of the same space: its DN.
    Reference(String),
    /// The metaverse's reference to another metaverse object. Flows translate between the two
    /// (an inbound flow's DN to the MV object its CS object is joined to, an outbound flow's MV
    /// object to the DN of the object joined to it in the target space).
    MvReference(MvId),
}

impl AttrValue {
    /// Text value.
    pub fn string(text: impl Into<String>) -> Self {
        AttrValue::String(text.into())
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::String(text) | AttrValue::Reference(text) => f.write_str(text),
            AttrValue::Integer(number) => write!(f, "{number}"),
            AttrValue::MvReference(id) => write!(f, "{}", id.0),
            AttrValue::Boolean(flag) => write!(f, "{flag}"),
            AttrValue::Binary(bytes) => bytes.iter().try_for_each(|byte| write!(f, "{byte:02x}")),
        }
    }
}

/// Attribute name → values (empty lists are never stored). Names are kept as the schema spells them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes(BTreeMap<String, Vec<AttrValue>>);

impl Attributes {
    /// No attributes.
    pub fn new() -> Self {
        Attributes::default()
    }

    /// The values of `name` (empty when absent).
    pub fn get(&self, name: &str) -> &[AttrValue] {
        self.0.get(name).map_or(&[], Vec::as_slice)
    }

    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&AttrValue> {
        self.get(name).first()
    }

    /// Sets `name` to `values`; an empty list removes the attribute.
    pub fn set(&mut self, name: impl Into<String>, values: Vec<AttrValue>) {
        let name = name.into();
        if values.is_empty() {
            self.0.remove(&name);
        } else {
            self.0.insert(name, values);
        }
    }

    /// Builder form of [`Attributes::set`] with one value.
    pub fn with(mut self, name: &str, value: AttrValue) -> Self {
        self.set(name, vec![value]);
        self
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) -> Option<Vec<AttrValue>> {
        self.0.remove(name)
    }

    /// Attribute names and values, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[AttrValue])> {
        self.0.iter().map(|(name, values)| (name.as_str(), values.as_slice()))
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The changes that turn `self` into `target`, attribute by attribute (replace semantics).
    pub fn diff(&self, target: &Attributes) -> Vec<AttrChange> {
        let mut changes = Vec::new();
        for (name, values) in &target.0 {
            if self.0.get(name) != Some(values) {
                changes.push(AttrChange::Replace(name.clone(), values.clone()));
            }
        }
        for name in self.0.keys() {
            if !target.0.contains_key(name) {
                changes.push(AttrChange::Clear(name.clone()));
            }
        }
        changes
    }

    /// Applies changes in order.
    pub fn apply(&mut self, changes: &[AttrChange]) {
        for change in changes {
            match change {
                AttrChange::Replace(name, values) => self.set(name.clone(), values.clone()),
                AttrChange::Clear(name) => {
                    self.0.remove(name);
                }
                AttrChange::Add(name, values) => {
                    let entry = self.0.entry(name.clone()).or_default();
                    for value in values {
                        if !entry.contains(value) {
                            entry.push(value.clone());
                        }
                    }
                }
                AttrChange::Delete(name, values) => {
                    if let Some(entry) = self.0.get_mut(name) {
                        entry.retain(|value| !values.contains(value));
                        if entry.is_empty() {
                            self.0.remove(name);
                        }
                    }
                }
            }
        }
    }
}

impl FromIterator<(String, Vec<AttrValue>)> for Attributes {
    fn from_iter<T: IntoIterator<Item = (String, Vec<AttrValue>)>>(iter: T) -> Self {
        let mut attributes = Attributes::new();
        for (name, values) in iter {
            attributes.set(name, values);
        }
        attributes
    }
}

/// A change to one attribute: the unit of imports and exports (never whole-object replacement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrChange {
    /// Set the attribute to exactly these values.
    Replace(String, Vec<AttrValue>),
    /// Add these values (multi-valued attributes, e.g. group members).
    Add(String, Vec<AttrValue>),
    /// Remove these values.
    Delete(String, Vec<AttrValue>),
    /// Remove the attribute.
    Clear(String),
}

impl AttrChange {
    /// The attribute the change is about.
    pub fn name(&self) -> &str {
        match self {
            AttrChange::Replace(name, _) | AttrChange::Add(name, _) | AttrChange::Delete(name, _) | AttrChange::Clear(name) => name,
        }
    }
}

/// One change read by an import from a connected directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportChange {
    /// The object as the directory has it now (full state): added when unknown, updated when changed.
    Upsert {
        /// Anchor.
        anchor: Anchor,
        /// DN.
        dn: String,
        /// Object type.
        object_type: String,
        /// All imported attributes.
        attributes: Attributes,
    },
    /// Attribute-level changes to an object the connector space already holds (delta imports
    /// that report value changes, such as AD DirSync's incremental member values). `dn` is the
    /// object's DN now. Meaningless for an object the connector space does not hold: the store
    /// counts it as missed, and the runner then asks for a full import. With no changes it says
    /// "still there, at `dn`" (a presence pass, see the connector API's `ImportPage::complete`).
    Modify {
        /// Anchor.
        anchor: Anchor,
        /// DN.
        dn: String,
        /// The changes, applied in order.
        changes: Vec<AttrChange>,
    },
    /// Gone from the directory (or out of the connector's scope).
    Delete {
        /// Anchor.
        anchor: Anchor,
    },
}

/// What an import staged on a CS object and sync has not processed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingImport {
    /// A new object.
    Add,
    /// Changed attributes or DN.
    Update,
    /// Gone from the connected directory (or out of scope there).
    Delete,
    /// Deleted and re-added (e.g. its object type changed): processed as a fresh object.
    DeleteAdd,
}

/// What sync staged for export to the connected directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingExport {
    /// Create the object with these attributes.
    Add(Vec<AttrChange>),
    /// Change these attributes.
    Update(Vec<AttrChange>),
    /// Move or rename to this DN (with attribute changes, if any).
    Rename {
        /// The new DN.
        new_dn: String,
        /// Attribute changes that go with it.
        changes: Vec<AttrChange>,
    },
    /// Delete the object.
    Delete,
}

/// A per-object problem; the object carries it until a later run succeeds. The run goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    /// Where it happened.
    pub stage: ErrorStage,
    /// A short, stable code (e.g. `ambiguous-join`, `flow-error`, `export-rejected`).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// For an outbound error: the connector whose object it is about (the error is over when
    /// outbound sync to that connector decides anything else).
    pub target: Option<ConnectorId>,
}

/// The run step in which an [`ObjectError`] arose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStage {
    /// Reading from the connected directory.
    Import,
    /// Scope, join, projection or attribute flow.
    Sync,
    /// What to write to another connector (outbound sync): provisioning, join, export values.
    Outbound,
    /// Writing to the connected directory.
    Export,
}

/// A connector-space object: the engine's copy of one object of a connected directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsObject {
    /// Store id.
    pub id: CsId,
    /// The connector whose space holds it.
    pub connector: ConnectorId,
    /// Identity in the connected directory; `None` for an export object not yet confirmed by import.
    pub anchor: Option<Anchor>,
    /// Distinguished name (or the connector's equivalent path).
    pub dn: String,
    /// Object type in the connected directory (`user`, `group`, `contact`, `inetOrgPerson` …).
    pub object_type: String,
    /// Current attribute values as last imported (or, for export objects, as provisioned).
    pub attributes: Attributes,
    /// The MV object it is joined to; `None` means a disconnector.
    pub link: Option<MvId>,
    /// Import not yet processed by sync.
    pub pending_import: Option<PendingImport>,
    /// Export not yet confirmed.
    pub pending_export: Option<PendingExport>,
    /// The last per-object error, if any.
    pub error: Option<ObjectError>,
}

impl CsObject {
    /// A name for people: the first of userPrincipalName, mail, displayName, cn, uid it has.
    /// Cloud objects' DNs are ids (`objectId=…`, or `CN={7}` before their first export), so
    /// logs and operator tools show this beside the DN.
    pub fn label(&self) -> Option<String> {
        // An object not yet exported holds its values in the pending add.
        let pending = match &self.pending_export {
            Some(PendingExport::Add(changes)) => changes.as_slice(),
            _ => &[],
        };
        ["userPrincipalName", "mail", "displayName", "cn", "uid"].iter().find_map(|name| {
            let stored = self.attributes.get(name).first().map(ToString::to_string);
            let added = || {
                pending.iter().find_map(|change| match change {
                    AttrChange::Replace(attribute, values) | AttrChange::Add(attribute, values) if attribute.eq_ignore_ascii_case(name) => {
                        values.first().map(ToString::to_string)
                    }
                    _ => None,
                })
            };
            stored.or_else(added).filter(|label| !label.is_empty())
        })
    }
}

/// Which rule put a value on an MV attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// Rule name.
    pub rule: String,
    /// Rule precedence (lower wins).
    pub precedence: i32,
    /// The contributing connector.
    pub connector: ConnectorId,
    /// The contributing CS object.
    pub cs_id: CsId,
}

/// An MV attribute's values and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MvAttribute {
    /// The values.
    pub values: Vec<AttrValue>,
    /// The contributors (one for `Update` merges, several for `Merge`).
    pub lineage: Vec<Lineage>,
}

/// A metaverse object: the one identity that CS objects of several connectors join to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MvObject {
    /// Store id.
    pub id: MvId,
    /// `person` or `group` (Entra's MV types), or another configured type.
    pub object_type: String,
    /// Attribute name → values with lineage.
    pub attributes: BTreeMap<String, MvAttribute>,
}

impl MvObject {
    /// The values of `name` (empty when absent).
    pub fn values(&self, name: &str) -> &[AttrValue] {
        self.attributes.get(name).map_or(&[], |attribute| attribute.values.as_slice())
    }

    /// The attributes without lineage.
    pub fn plain_attributes(&self) -> Attributes {
        self.attributes.iter().map(|(name, attribute)| (name.clone(), attribute.values.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> AttrValue {
        AttrValue::string(text)
    }

    #[test]
    fn an_object_is_labelled_by_its_name_stored_or_about_to_be_exported() {
        let mut cs = CsObject {
            id: CsId(1),
            connector: ConnectorId("tenant".into()),
            anchor: None,
            dn: "CN={7}".into(),
            object_type: "user".into(),
            attributes: Attributes::new(),
            link: None,
            pending_import: None,
            pending_export: None,
            error: None,
        };
        assert_eq!(cs.label(), None);
        cs.pending_export = Some(PendingExport::Add(vec![
            AttrChange::Replace("displayName".into(), vec![s("Ann Lee")]),
            AttrChange::Replace("userPrincipalName".into(), vec![s("ann@corp")]),
        ]));
        assert_eq!(cs.label().as_deref(), Some("ann@corp"), "the UPN first, from the pending add");
        cs.attributes = Attributes::new().with("mail", s("ann.lee@corp"));
        assert_eq!(cs.label().as_deref(), Some("ann@corp"), "by name order, the pending UPN before a stored mail");
        cs.attributes = Attributes::new().with("userPrincipalName", s("stored@corp"));
        assert_eq!(cs.label().as_deref(), Some("stored@corp"), "a stored value before a pending one of the same name");
    }

    #[test]
    fn diff_then_apply_reaches_the_target() {
        let before = Attributes::new().with("mail", s("a@x")).with("sn", s("Lee")).with("title", s("Eng"));
        let after = Attributes::new().with("mail", s("b@x")).with("sn", s("Lee")).with("givenName", s("Ann"));
        let changes = before.diff(&after);
        assert_eq!(
            changes,
            vec![
                AttrChange::Replace("givenName".into(), vec![s("Ann")]),
                AttrChange::Replace("mail".into(), vec![s("b@x")]),
                AttrChange::Clear("title".into()),
            ]
        );
        let mut patched = before.clone();
        patched.apply(&changes);
        assert_eq!(patched, after);
        assert!(after.diff(&after).is_empty());
    }

    #[test]
    fn value_changes_add_and_delete_members() {
        let mut group = Attributes::new();
        group.set("member", vec![AttrValue::Reference("CN=a".into())]);
        group.apply(&[
            AttrChange::Add("member".into(), vec![AttrValue::Reference("CN=b".into()), AttrValue::Reference("CN=a".into())]),
            AttrChange::Delete("member".into(), vec![AttrValue::Reference("CN=a".into())]),
        ]);
        assert_eq!(group.get("member"), &[AttrValue::Reference("CN=b".into())]);
        group.apply(&[AttrChange::Delete("member".into(), vec![AttrValue::Reference("CN=b".into())])]);
        assert!(group.is_empty(), "an attribute without values is gone");
    }

    #[test]
    fn empty_set_removes() {
        let mut attributes = Attributes::new().with("mail", s("a@x"));
        attributes.set("mail", vec![]);
        assert!(attributes.get("mail").is_empty());
        assert_eq!(attributes.len(), 0);
    }
}
