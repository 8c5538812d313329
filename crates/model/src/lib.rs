//! The vocabulary every Isthmus crate shares: distinguished names, attribute values,
//! connector-space and metaverse objects, pending changes and per-object errors.
//!
//! Pure: no I/O, no async, no clock, no randomness, no serialization formats. Wire formats
//! (LDAP, JSON) convert to and from these types at the edges.

pub mod dn;
pub mod object;

pub use dn::{Dn, DnError, Rdn};
pub use object::{
    Anchor, AttrChange, AttrValue, Attributes, ConnectorId, CsId, CsObject, ErrorStage, ImportChange, Lineage, MvAttribute, MvId, MvObject,
    ObjectError, PendingExport, PendingImport,
};
