//! `isthmus preview`'s answer: what a sync would do to one connector-space object, computed by
//! running the sync step's own code for that object over an [`Overlay`] of the store — reads go
//! to the real store (SQLite or PostgreSQL), writes stay in memory — and reporting the writes it
//! made. So ISMEMBEROF memberships, references, joins, projection, lifetime and outbound
//! decisions are exactly a real run's, and nothing is changed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use model::{Anchor, AttrValue, ConnectorId, CsId, CsObject, MvId, MvObject, ObjectError};
use store::{CsQuery, ImportChange, ImportCounts, Matching, NewCsObject, RunCounts, RunRecord, Store, StoreError};

/// What a sync would do to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The object as it is.
    pub object: CsObject,
    /// The inbound rules in scope for it (precedence, name).
    pub rules_in_scope: Vec<(i32, String)>,
    /// Connector-space objects the sync would change, add (`before` none) or delete (`after` none).
    pub cs_changes: Vec<(Option<CsObject>, Option<CsObject>)>,
    /// Metaverse objects it would change, project (`before` none) or delete (`after` none).
    pub mv_changes: Vec<(Option<MvObject>, Option<MvObject>)>,
    /// The object's metaverse object after the sync (changed or not), if it is joined to one.
    pub metaverse: Option<MvObject>,
}

/// Ids the overlay gives objects a sync would create (far above any stored id).
const FIRST_NEW_ID: i64 = i64::MAX / 2;

#[derive(Default)]
struct Changes {
    /// Changed or new CS objects; `None`: deleted.
    cs: BTreeMap<CsId, Option<CsObject>>,
    /// Changed or new MV objects; `None`: deleted.
    mv: BTreeMap<MvId, Option<MvObject>>,
    next: i64,
}

/// A store whose reads see the real store with this overlay's writes applied, and whose writes
/// stay in memory. Only what a sync step calls is supported; imports and run history are refused.
pub struct Overlay<'s, S: Store> {
    inner: &'s S,
    changes: Mutex<Changes>,
}

fn refused(what: &str) -> StoreError {
    StoreError::Conflict(format!("a preview does not {what}"))
}

impl<'s, S: Store> Overlay<'s, S> {
    /// An empty overlay over `inner`.
    pub fn new(inner: &'s S) -> Self {
        Overlay { inner, changes: Mutex::new(Changes { next: FIRST_NEW_ID, ..Changes::default() }) }
    }

    fn with<T>(&self, work: impl FnOnce(&mut Changes) -> T) -> T {
        work(&mut self.changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The overlay's view of a CS object the inner store returned.
    fn cs_view(&self, object: Option<CsObject>) -> Option<CsObject> {
        let object = object?;
        self.with(|changes| match changes.cs.get(&object.id) {
            Some(changed) => changed.clone(),
            None => Some(object),
        })
    }

    /// The changes against the real store: (before, after) per object.
    pub async fn changes(
        &self,
    ) -> Result<(Vec<(Option<CsObject>, Option<CsObject>)>, Vec<(Option<MvObject>, Option<MvObject>)>), StoreError> {
        let (cs, mv) = self.with(|changes| (changes.cs.clone(), changes.mv.clone()));
        let mut cs_changes = Vec::new();
        for (id, after) in cs {
            let before = if id.0 >= FIRST_NEW_ID { None } else { self.inner.cs_get(id).await? };
            if before != after {
                cs_changes.push((before, after));
            }
        }
        let mut mv_changes = Vec::new();
        for (id, after) in mv {
            let before = if id.0 >= FIRST_NEW_ID { None } else { self.inner.mv_get(id).await? };
            if before != after {
                mv_changes.push((before, after));
            }
        }
        Ok((cs_changes, mv_changes))
    }
}

impl<S: Store> Store for Overlay<'_, S> {
    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(())
    }

    // A preview leaves the lookup index as the real runs keep it.
    async fn index_attributes(&self, _attributes: &std::collections::BTreeSet<String>) -> Result<u64, StoreError> {
        Ok(0)
    }

    // The overlay's writes are all in memory: a unit of work changes nothing.
    async fn begin_unit(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn commit_unit(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn rollback_unit(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn cs_get(&self, id: CsId) -> Result<Option<CsObject>, StoreError> {
        if let Some(changed) = self.with(|changes| changes.cs.get(&id).cloned()) {
            return Ok(changed);
        }
        self.inner.cs_get(id).await
    }

    async fn cs_by_anchor(&self, connector: &ConnectorId, anchor: &Anchor) -> Result<Option<CsObject>, StoreError> {
        let found = self.inner.cs_by_anchor(connector, anchor).await?;
        Ok(self.cs_view(found))
    }

    async fn cs_by_dn(&self, connector: &ConnectorId, dn: &str) -> Result<Option<CsObject>, StoreError> {
        let wanted = model::Dn::parse(dn).ok();
        let added = self.with(|changes| {
            changes
                .cs
                .range(CsId(FIRST_NEW_ID)..)
                .filter_map(|(_, object)| object.clone())
                .find(|object| &object.connector == connector && model::Dn::parse(&object.dn).ok() == wanted && wanted.is_some())
        });
        if added.is_some() {
            return Ok(added);
        }
        let found = self.inner.cs_by_dn(connector, dn).await?;
        Ok(self.cs_view(found))
    }

    async fn cs_insert(&self, object: NewCsObject) -> Result<CsId, StoreError> {
        Ok(self.with(|changes| {
            let id = CsId(changes.next);
            changes.next += 1;
            let created = CsObject {
                id,
                connector: object.connector,
                anchor: object.anchor,
                dn: object.dn,
                object_type: object.object_type,
                attributes: object.attributes,
                link: object.link,
                pending_import: object.pending_import,
                pending_export: object.pending_export,
                error: None,
            };
            changes.cs.insert(id, Some(created));
            id
        }))
    }

    async fn cs_update(&self, object: &CsObject) -> Result<(), StoreError> {
        self.with(|changes| changes.cs.insert(object.id, Some(object.clone())));
        Ok(())
    }

    async fn cs_update_state(&self, object: &CsObject) -> Result<(), StoreError> {
        let mut current = self.cs_get(object.id).await?.ok_or_else(|| StoreError::NotFound(object.id.to_string()))?;
        current.dn = object.dn.clone();
        current.link = object.link;
        current.pending_import = object.pending_import;
        current.pending_export = object.pending_export.clone();
        current.error = object.error.clone();
        self.cs_update(&current).await
    }

    async fn cs_delete(&self, id: CsId) -> Result<(), StoreError> {
        self.with(|changes| changes.cs.insert(id, None));
        Ok(())
    }

    async fn cs_list(&self, connector: &ConnectorId, query: &CsQuery) -> Result<Vec<CsObject>, StoreError> {
        let listed = self.inner.cs_list(connector, query).await?;
        Ok(listed.into_iter().filter_map(|object| self.cs_view(Some(object))).collect())
    }

    async fn cs_links_by_dn(&self, connector: &ConnectorId, dns: &[String]) -> Result<Vec<(String, MvId)>, StoreError> {
        let mut found = Vec::new();
        for dn in dns {
            if let Some(link) = self.cs_by_dn(connector, dn).await?.and_then(|object| object.link) {
                found.push((dn.to_lowercase(), link));
            }
        }
        Ok(found)
    }

    async fn cs_dns_by_link(&self, connector: &ConnectorId, mvs: &[MvId]) -> Result<Vec<(MvId, String)>, StoreError> {
        let mut found = Vec::new();
        for mv in mvs {
            if let Some(object) = self.cs_linked_to(*mv).await?.into_iter().find(|object| &object.connector == connector) {
                found.push((*mv, object.dn));
            }
        }
        Ok(found)
    }

    async fn cs_linked_to(&self, mv: MvId) -> Result<Vec<CsObject>, StoreError> {
        let stored = if mv.0 >= FIRST_NEW_ID { Vec::new() } else { self.inner.cs_linked_to(mv).await? };
        Ok(self.with(|changes| {
            let mut linked: Vec<CsObject> = stored
                .into_iter()
                .filter_map(|object| match changes.cs.get(&object.id) {
                    Some(changed) => changed.clone(),
                    None => Some(object),
                })
                .filter(|object| object.link == Some(mv))
                .collect();
            for object in changes.cs.values().flatten() {
                if object.link == Some(mv) && !linked.iter().any(|known| known.id == object.id) {
                    linked.push(object.clone());
                }
            }
            linked.sort_by_key(|object| object.id);
            linked
        }))
    }

    async fn cs_linked_to_many(&self, mvs: &[MvId]) -> Result<Vec<CsObject>, StoreError> {
        let mut linked = Vec::new();
        for mv in store::ids_in_order(mvs) {
            linked.extend(self.cs_linked_to(mv).await?);
        }
        Ok(linked)
    }

    async fn cs_find(
        &self,
        connector: &ConnectorId,
        object_type: &str,
        attribute: &str,
        values: &[AttrValue],
        matching: Matching,
    ) -> Result<Vec<CsId>, StoreError> {
        let found = self.inner.cs_find(connector, object_type, attribute, values, matching).await?;
        // Objects this preview joined are no longer disconnectors.
        Ok(self.with(|changes| {
            found
                .into_iter()
                .filter(|id| changes.cs.get(id).is_none_or(|changed| changed.as_ref().is_some_and(|cs| cs.link.is_none())))
                .collect()
        }))
    }

    async fn cs_pending_exports(&self, _connector: &ConnectorId) -> Result<Vec<store::PendingSummary>, StoreError> {
        Err(refused("plan an export"))
    }

    async fn cs_clear_pending_import(&self, ids: &[CsId]) -> Result<(), StoreError> {
        for id in ids {
            if let Some(mut object) = self.cs_get(*id).await? {
                object.pending_import = None;
                self.cs_update(&object).await?;
            }
        }
        Ok(())
    }

    async fn cs_set_error(&self, id: CsId, error: Option<&ObjectError>) -> Result<(), StoreError> {
        if let Some(mut object) = self.cs_get(id).await? {
            object.error = error.cloned();
            self.cs_update(&object).await?;
        }
        Ok(())
    }

    async fn commit_import_page(
        &self,
        _connector: &ConnectorId,
        _run: i64,
        _changes: &[ImportChange],
        _watermark: Option<&[u8]>,
    ) -> Result<ImportCounts, StoreError> {
        Err(refused("import"))
    }

    async fn obsolete_unseen(&self, _connector: &ConnectorId, _import_run: i64) -> Result<u64, StoreError> {
        Err(refused("import"))
    }

    async fn service_state(&self, service: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.service_state(service, key).await
    }

    async fn set_service_state(&self, _service: &str, _key: &str, _value: &[u8]) -> Result<(), StoreError> {
        Err(refused("change a service's state"))
    }

    async fn watermark(&self, connector: &ConnectorId) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.watermark(connector).await
    }

    async fn clear_watermark(&self, _connector: &ConnectorId) -> Result<(), StoreError> {
        Err(refused("change a watermark"))
    }

    async fn mv_get(&self, id: MvId) -> Result<Option<MvObject>, StoreError> {
        if let Some(changed) = self.with(|changes| changes.mv.get(&id).cloned()) {
            return Ok(changed);
        }
        self.inner.mv_get(id).await
    }

    async fn mv_get_many(&self, ids: &[MvId]) -> Result<Vec<MvObject>, StoreError> {
        let mut found = Vec::new();
        for id in store::ids_in_order(ids) {
            found.extend(self.mv_get(id).await?);
        }
        Ok(found)
    }

    async fn mv_insert(&self, object_type: &str) -> Result<MvId, StoreError> {
        Ok(self.with(|changes| {
            let id = MvId(changes.next);
            changes.next += 1;
            changes.mv.insert(id, Some(MvObject { id, object_type: object_type.to_string(), attributes: BTreeMap::new() }));
            id
        }))
    }

    async fn mv_update(&self, object: &MvObject) -> Result<(), StoreError> {
        self.with(|changes| changes.mv.insert(object.id, Some(object.clone())));
        Ok(())
    }

    async fn mv_delete(&self, id: MvId) -> Result<(), StoreError> {
        self.with(|changes| changes.mv.insert(id, None));
        Ok(())
    }

    async fn mv_find(&self, object_type: &str, attribute: &str, values: &[AttrValue], matching: Matching) -> Result<Vec<MvId>, StoreError> {
        let found = self.inner.mv_find(object_type, attribute, values, matching).await?;
        Ok(self.with(|changes| found.into_iter().filter(|id| !matches!(changes.mv.get(id), Some(None))).collect()))
    }

    async fn mv_list(&self, after: Option<MvId>, limit: usize) -> Result<Vec<MvId>, StoreError> {
        self.inner.mv_list(after, limit).await
    }

    async fn claim_runner(&self, _now: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn run_start(&self, _connector: &ConnectorId, _step: &str, _started: i64) -> Result<i64, StoreError> {
        Err(refused("record run history"))
    }

    async fn run_finish(&self, _id: i64, _finished: i64, _status: &str, _counts: RunCounts) -> Result<(), StoreError> {
        Err(refused("record run history"))
    }

    async fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        self.inner.runs(limit).await
    }

    async fn runs_prune(&self, _before: i64) -> Result<u64, StoreError> {
        Err(refused("change run history"))
    }
}
