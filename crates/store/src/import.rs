//! How an imported change alters a CS object: the decision every adapter applies inside its
//! import transaction, kept here so SQLite and PostgreSQL cannot drift apart.

use std::future::Future;

use model::{Anchor, AttrChange, AttrValue, Attributes, ConnectorId, CsId, CsObject, PendingImport};

use crate::{ImportChange, ImportCounts, NewCsObject, Result, StoreError};

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

/// The renames of one import page, applied as if each had rewritten the referring objects at
/// once, but writing each referring object once per page: a group of 100,000 members is not
/// rewritten for every member renamed.
///
/// Each object the page writes remembers how many renames came before its write: before the
/// write, [`PageRenames::catch_up`] gives it the renames it has not seen (a value delta then
/// applies to the renamed values); after the write, only later renames apply to it (an object
/// the server sent with a stale reference keeps what the server sent, as OpenLDAP without
/// referential integrity does). At the end of the page every object referring to an old name
/// gets the renames it has not seen ([`PageRenames::catch_up`] again).
#[derive(Debug, Default)]
pub struct PageRenames {
    renames: Vec<(String, String)>,
    written: std::collections::HashMap<i64, usize>,
}

impl PageRenames {
    /// No rename yet.
    pub fn is_empty(&self) -> bool {
        self.renames.is_empty()
    }

    /// An object of the page moved from `old_dn` to `new_dn` (after its own write).
    pub fn push(&mut self, old_dn: &str, new_dn: &str) {
        self.renames.push((old_dn.to_string(), new_dn.to_string()));
    }

    /// The page wrote the object `id` now.
    pub fn written(&mut self, id: model::CsId) {
        self.written.insert(id.0, self.renames.len());
    }

    /// The old names, to find referring objects by.
    pub fn old_dns(&self) -> impl Iterator<Item = &str> {
        self.renames.iter().map(|(old, _)| old.as_str())
    }

    /// `object` with the renames of the page it has not seen yet, or `None` when none changes it.
    /// One pass over its values (a group of 100,000 members is read once, not once per rename).
    pub fn catch_up(&self, object: &CsObject) -> Option<CsObject> {
        let seen = self.written.get(&object.id.0).copied().unwrap_or(0);
        let pending = self.renames.get(seen..).unwrap_or_default();
        if pending.is_empty() {
            return None;
        }
        // Old name (lower case) → the positions of its renames, in page order.
        let mut by_old: std::collections::HashMap<String, Vec<usize>> = std::collections::HashMap::new();
        for (position, (old_dn, _)) in pending.iter().enumerate() {
            by_old.entry(old_dn.to_lowercase()).or_default().push(position);
        }
        // A value's final name: its first rename, then any later rename of that new name (A→B, B→C).
        let follow = |value: &str| -> Option<String> {
            let mut current: Option<String> = None;
            let mut after = 0;
            loop {
                let key = current.as_deref().unwrap_or(value).to_lowercase();
                let next = by_old.get(&key).and_then(|positions| positions.iter().copied().find(|position| *position >= after));
                match next {
                    Some(position) => {
                        current = Some(pending[position].1.clone());
                        after = position + 1;
                    }
                    None => return current,
                }
            }
        };
        let mut attributes = object.attributes.clone();
        let mut changed = false;
        let names: Vec<String> = attributes.iter().map(|(name, _)| name.to_string()).collect();
        for name in names {
            let values = attributes.get(&name);
            if !values.iter().any(|value| matches!(value, AttrValue::Reference(_))) {
                continue;
            }
            let mut renamed_any = false;
            let renamed: Vec<AttrValue> = values
                .iter()
                .map(|value| match value {
                    AttrValue::Reference(target) => match follow(target) {
                        Some(new_dn) => {
                            renamed_any = true;
                            AttrValue::Reference(new_dn)
                        }
                        None => value.clone(),
                    },
                    other => other.clone(),
                })
                .collect();
            if renamed_any {
                attributes.set(name, renamed);
                changed = true;
            }
        }
        if !changed {
            return None;
        }
        apply_upsert(object, &object.dn, &object.object_type, &attributes)
    }
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

/// What an adapter does inside one import transaction; [`apply_page`] is the algorithm over it,
/// written once for every adapter. Each method runs in the adapter's open transaction.
pub trait ImportTx {
    /// The connector's object with this anchor.
    fn by_anchor(&mut self, connector: &ConnectorId, anchor: &Anchor) -> impl Future<Output = Result<Option<CsObject>>>;
    /// Whether the connector has any unconfirmed export object (no anchor yet): asked once per
    /// page, so a connector that has none (a source's full import) is not searched by DN for
    /// every new object.
    fn has_export_objects(&mut self, connector: &ConnectorId) -> impl Future<Output = Result<bool>>;
    /// The connector's unconfirmed export object (no anchor yet) with this DN.
    fn export_object_by_dn(&mut self, connector: &ConnectorId, dn: &str) -> impl Future<Output = Result<Option<CsObject>>>;
    /// Creates an object seen by import run `run`.
    fn insert(&mut self, object: &NewCsObject, run: i64) -> impl Future<Output = Result<CsId>>;
    /// Replaces an object's state.
    fn update(&mut self, object: &CsObject) -> impl Future<Output = Result<()>>;
    /// Marks an object as seen by import run `run` (full-import obsoletion).
    fn mark_seen(&mut self, id: CsId, run: i64) -> impl Future<Output = Result<()>>;
    /// Rewrites references to the page's renamed objects in the connector; returns how many
    /// objects changed.
    fn rename_references(&mut self, connector: &ConnectorId, renames: &PageRenames) -> impl Future<Output = Result<u64>>;
    /// Stores the connector's watermark.
    fn set_watermark(&mut self, connector: &ConnectorId, watermark: &[u8]) -> impl Future<Output = Result<()>>;
}

/// An upsert or modify of a known object: the change applied to it (caught up with the page's
/// earlier renames) is written when it changes anything, or when `force` or a catch-up needs it;
/// its rename is remembered and it is marked seen.
#[allow(clippy::too_many_arguments, reason = "the page's state, threaded through one change")]
async fn update_seen<T: ImportTx>(
    tx: &mut T,
    renames: &mut PageRenames,
    counts: &mut ImportCounts,
    existing: CsObject,
    dn: &str,
    run: i64,
    force: bool,
    change: impl FnOnce(&CsObject) -> Option<CsObject>,
) -> Result<()> {
    let caught_up = renames.catch_up(&existing);
    let base = caught_up.as_ref().unwrap_or(&existing);
    match change(base) {
        Some(updated) => {
            tx.update(&updated).await?;
            counts.updates += 1;
        }
        None if force || caught_up.is_some() => {
            tx.update(base).await?;
            counts.updates += 1;
        }
        None => counts.unchanged += 1,
    }
    renames.written(existing.id);
    if !existing.dn.eq_ignore_ascii_case(dn) {
        renames.push(&existing.dn, dn);
    }
    tx.mark_seen(existing.id, run).await
}

/// Applies one import page and its watermark through `tx` (the adapter commits): upserts
/// (an unknown anchor whose DN is an unconfirmed export object confirms it), modifies, deletes,
/// renames followed by references within the page, every object seen marked for obsoletion.
pub async fn apply_page<T: ImportTx>(
    tx: &mut T,
    connector: &ConnectorId,
    run: i64,
    changes: &[ImportChange],
    watermark: Option<&[u8]>,
) -> Result<ImportCounts> {
    let mut counts = ImportCounts::default();
    let mut renames = PageRenames::default();
    // Asked when first needed; an import never adds an object without an anchor, so the
    // answer holds for the page (a confirmation only makes it pessimistic).
    let mut export_objects: Option<bool> = None;
    for change in changes {
        match change {
            ImportChange::Upsert { anchor, dn, object_type, attributes } => {
                if anchor.0.is_empty() {
                    return Err(StoreError::Conflict(format!("imported object {dn} has an empty anchor")));
                }
                let existing = match tx.by_anchor(connector, anchor).await? {
                    Some(existing) => Some(existing),
                    // An unconfirmed export object with this DN is confirmed by the import.
                    None => {
                        let any = match export_objects {
                            Some(any) => any,
                            None => *export_objects.insert(tx.has_export_objects(connector).await?),
                        };
                        let found = if any { tx.export_object_by_dn(connector, dn).await? } else { None };
                        found.map(|mut export_object| {
                            export_object.anchor = Some(anchor.clone());
                            export_object
                        })
                    }
                };
                let Some(existing) = existing else {
                    let new = NewCsObject {
                        connector: connector.clone(),
                        anchor: Some(anchor.clone()),
                        dn: dn.clone(),
                        object_type: object_type.clone(),
                        attributes: attributes.clone(),
                        pending_import: Some(PendingImport::Add),
                        pending_export: None,
                        link: None,
                    };
                    let id = tx.insert(&new, run).await?;
                    renames.written(id);
                    counts.adds += 1;
                    continue;
                };
                // Confirming an export object: written even when the values agree.
                let confirming = existing.pending_export.is_some() && existing.anchor.as_ref() == Some(anchor);
                let change = |base: &CsObject| apply_upsert(base, dn, object_type, attributes);
                update_seen(tx, &mut renames, &mut counts, existing, dn, run, confirming, change).await?;
            }
            ImportChange::Modify { anchor, dn, changes } => {
                let existing =
                    tx.by_anchor(connector, anchor).await?.filter(|existing| existing.pending_import != Some(PendingImport::Delete));
                let Some(existing) = existing else {
                    counts.missed += 1;
                    continue;
                };
                update_seen(tx, &mut renames, &mut counts, existing, dn, run, false, |base| apply_modify(base, dn, changes)).await?;
            }
            ImportChange::Delete { anchor } => {
                let Some(existing) = tx.by_anchor(connector, anchor).await? else {
                    counts.unchanged += 1;
                    continue;
                };
                let caught_up = renames.catch_up(&existing);
                let base = caught_up.as_ref().unwrap_or(&existing);
                match apply_delete(base) {
                    Some(updated) => {
                        tx.update(&updated).await?;
                        counts.deletes += 1;
                    }
                    None if caught_up.is_some() => tx.update(base).await?,
                    None => counts.unchanged += 1,
                }
                renames.written(existing.id);
            }
        }
    }
    if !renames.is_empty() {
        counts.updates += tx.rename_references(connector, &renames).await?;
    }
    if let Some(watermark) = watermark {
        tx.set_watermark(connector, watermark).await?;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: i64, members: &[&str]) -> CsObject {
        CsObject {
            id: model::CsId(id),
            connector: model::ConnectorId("ad".into()),
            anchor: None,
            dn: format!("CN=g{id}"),
            object_type: "group".into(),
            attributes: {
                let mut attributes = Attributes::new();
                attributes.set("member", members.iter().map(|dn| AttrValue::Reference((*dn).to_string())).collect());
                attributes
            },
            link: None,
            pending_import: None,
            pending_export: None,
            error: None,
        }
    }

    fn members(object: &CsObject) -> Vec<String> {
        object.attributes.get("member").iter().map(|value| format!("{value:?}")).collect()
    }

    #[test]
    fn page_renames_follow_chains_case_insensitively_and_respect_writes() {
        let mut renames = PageRenames::default();
        renames.push("CN=A", "CN=B");
        renames.push("cn=b", "CN=C");
        renames.push("CN=X", "CN=Y");
        let caught = renames.catch_up(&group(1, &["cn=a", "CN=Z", "CN=x"])).expect("renamed");
        assert_eq!(members(&caught), members(&group(1, &["CN=C", "CN=Z", "CN=Y"])), "A→B→C, and X→Y");
        assert_eq!(caught.pending_import, Some(PendingImport::Update));
        assert!(renames.catch_up(&group(2, &["CN=Z"])).is_none(), "nothing to rename");
        // Written after the first two renames: only the third applies.
        renames.written(model::CsId(3));
        assert!(renames.catch_up(&group(3, &["CN=A"])).is_none(), "the server's value after the rename stays");
        renames.push("CN=A", "CN=A2");
        let caught = renames.catch_up(&group(3, &["CN=A"])).expect("a later rename applies");
        assert_eq!(members(&caught), members(&group(3, &["CN=A2"])));
    }
}
