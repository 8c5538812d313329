//! The vocabulary every Isthmus crate shares: distinguished names and attribute values.
//!
//! Pure: no I/O, no async, no clock, no randomness, no serialization formats. Wire formats
//! (LDAP, JSON) convert to and from these types at the edges.

pub mod dn;

pub use dn::{Dn, DnError, Rdn};
