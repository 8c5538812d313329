//! How an imported change alters a CS object: the decision every adapter applies inside its
//! import transaction, kept here so SQLite and PostgreSQL cannot drift apart.

use model::{AttrChange, Attributes, CsObject, PendingImport};

/// The object after an upsert of the full imported state, or `None` when nothing changed.
pub fn apply_upsert(existing: &CsObject, dn: &str, object_type: &str, attributes: &Attributes) -> Option<CsObject> {
    let same_dn = existing.dn == dn;
    if same_dn
        && existing.object_type == object_type
        && &existing.attributes == attributes
        && existing.pending_import != Some(PendingImport::Delete)
    {
        return None;
    }
    let mut updated = existing.clone();
    updated.pending_import = Some(if existing.object_type != object_type {
        PendingImport::DeleteAdd
    } else {
        match existing.pending_import {
            Some(PendingImport::Add) => PendingImport::Add,
            Some(PendingImport::DeleteAdd) => PendingImport::DeleteAdd,
            _ => PendingImport::Update,
        }
    });
    updated.dn = dn.to_string();
    updated.object_type = object_type.to_string();
    updated.attributes = attributes.clone();
    Some(updated)
}

/// The object after an imported delete, or `None` when it is already marked.
pub fn apply_delete(existing: &CsObject) -> Option<CsObject> {
    if existing.pending_import == Some(PendingImport::Delete) {
        return None;
    }
    let mut updated = existing.clone();
    updated.pending_import = Some(PendingImport::Delete);
    Some(updated)
}

/// The object after attribute-level changes (a [`model::ImportChange::Modify`]), or `None` when
/// nothing changed.
pub fn apply_modify(existing: &CsObject, dn: &str, changes: &[AttrChange]) -> Option<CsObject> {
    let mut attributes = existing.attributes.clone();
    attributes.apply(changes);
    apply_upsert(existing, dn, &existing.object_type, &attributes)
}
