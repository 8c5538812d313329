//! How an imported change alters a CS object: the decision every adapter applies inside its
//! import transaction, kept here so SQLite and PostgreSQL cannot drift apart.

use model::{AttrChange, AttrValue, Attributes, CsObject, PendingImport};

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

/// When an import moves an object from `old_dn` to `new_dn`, references to it held by other
/// objects of the same connector space still name `old_dn` (AD and LDAP servers rewrite such
/// references themselves but report no change for the referring objects). This is the referring
/// object with those references renamed, or `None` when it holds none.
pub fn rename_references(referring: &CsObject, old_dn: &str, new_dn: &str) -> Option<CsObject> {
    let old = old_dn.to_lowercase();
    let mut attributes = referring.attributes.clone();
    let mut changed = false;
    let names: Vec<String> = attributes.iter().map(|(name, _)| name.to_string()).collect();
    for name in names {
        let values = attributes.get(&name);
        if !values.iter().any(|value| matches!(value, AttrValue::Reference(target) if target.to_lowercase() == old)) {
            continue;
        }
        let renamed = values
            .iter()
            .map(|value| match value {
                AttrValue::Reference(target) if target.to_lowercase() == old => AttrValue::Reference(new_dn.to_string()),
                other => other.clone(),
            })
            .collect();
        attributes.set(name, renamed);
        changed = true;
    }
    if !changed {
        return None;
    }
    apply_upsert(referring, &referring.dn, &referring.object_type, &attributes)
}
