//! An in-memory directory ([`MemoryDirectory`]) with a change log, and the connector that
//! reads and writes it. It is the reference connector: the runner's scenario tests, the
//! quickstart and the sync benchmarks use it, and it shows the contract every connector keeps
//! (full pages by anchor, delta pages with a watermark per page, anchors assigned on add,
//! per-object rejections, unavailability).
//!
//! Tests change the directory through the handle while the connector reads it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use connector_api::{BoxFuture, Connector, ConnectorError, ConnectorInfo, Export, ExportOutcome, ExportRequest, Import, ImportPage, Role};
use model::{Anchor, AttrChange, Attributes, ConnectorId, ImportChange, PendingExport};

#[derive(Debug, Clone)]
struct Entry {
    dn: String,
    object_type: String,
    attributes: Attributes,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<Vec<u8>, Entry>,
    /// Lower-case DN → anchor.
    by_dn: BTreeMap<String, Vec<u8>>,
    /// (sequence, anchor) of every change, in order.
    log: Vec<(u64, Vec<u8>)>,
    /// Anchor → the sequence of its last change (a delta names an object once, at its last change).
    last_change: BTreeMap<Vec<u8>, u64>,
    sequence: u64,
    next_anchor: u64,
    rejected: BTreeMap<String, (String, String)>,
    unavailable: bool,
    exports: u64,
}

impl State {
    fn touch(&mut self, anchor: &[u8]) {
        self.sequence += 1;
        self.log.push((self.sequence, anchor.to_vec()));
        self.last_change.insert(anchor.to_vec(), self.sequence);
    }

    fn insert(&mut self, anchor: Vec<u8>, entry: Entry) {
        if let Some(previous) = self.objects.get(&anchor) {
            self.by_dn.remove(&previous.dn.to_lowercase());
        }
        self.by_dn.insert(entry.dn.to_lowercase(), anchor.clone());
        self.objects.insert(anchor, entry);
    }

    fn remove(&mut self, anchor: &[u8]) -> Option<Entry> {
        let entry = self.objects.remove(anchor)?;
        self.by_dn.remove(&entry.dn.to_lowercase());
        Some(entry)
    }

    fn rename(&mut self, anchor: &[u8], new_dn: &str) -> bool {
        let Some(entry) = self.objects.get_mut(anchor) else { return false };
        let old = std::mem::replace(&mut entry.dn, new_dn.to_string());
        self.by_dn.remove(&old.to_lowercase());
        self.by_dn.insert(new_dn.to_lowercase(), anchor.to_vec());
        true
    }

    fn new_anchor(&mut self) -> Vec<u8> {
        self.next_anchor += 1;
        let mut anchor = b"memory:".to_vec();
        anchor.extend_from_slice(&self.next_anchor.to_be_bytes());
        anchor
    }
}

/// A shared handle on an in-memory directory.
#[derive(Debug, Clone, Default)]
pub struct MemoryDirectory {
    state: Arc<Mutex<State>>,
}

impl MemoryDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        MemoryDirectory::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another test thread must not hide this directory's state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds an object, or replaces the one with the same DN; returns its anchor.
    pub fn put(&self, dn: &str, object_type: &str, attributes: Attributes) -> Anchor {
        let mut state = self.lock();
        let existing = state.by_dn.get(&dn.to_lowercase()).cloned();
        let anchor = existing.unwrap_or_else(|| state.new_anchor());
        state.insert(anchor.clone(), Entry { dn: dn.to_string(), object_type: object_type.to_string(), attributes });
        state.touch(&anchor);
        Anchor(anchor)
    }

    /// Changes an object's attributes; false when it does not exist.
    pub fn modify(&self, anchor: &Anchor, changes: &[AttrChange]) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.objects.get_mut(&anchor.0) else { return false };
        entry.attributes.apply(changes);
        state.touch(&anchor.0);
        true
    }

    /// Moves or renames an object; false when it does not exist.
    pub fn rename(&self, anchor: &Anchor, new_dn: &str) -> bool {
        let mut state = self.lock();
        if !state.rename(&anchor.0, new_dn) {
            return false;
        }
        state.touch(&anchor.0);
        true
    }

    /// Deletes an object; false when it does not exist.
    pub fn delete(&self, anchor: &Anchor) -> bool {
        let mut state = self.lock();
        if state.remove(&anchor.0).is_none() {
            return false;
        }
        state.touch(&anchor.0);
        true
    }

    /// Every object: anchor, DN, type, attributes.
    pub fn objects(&self) -> Vec<(Anchor, String, String, Attributes)> {
        self.lock()
            .objects
            .iter()
            .map(|(anchor, entry)| (Anchor(anchor.clone()), entry.dn.clone(), entry.object_type.clone(), entry.attributes.clone()))
            .collect()
    }

    /// The object with this DN (case-insensitive).
    pub fn find_dn(&self, dn: &str) -> Option<(Anchor, String, Attributes)> {
        let state = self.lock();
        let anchor = state.by_dn.get(&dn.to_lowercase())?;
        state.objects.get(anchor).map(|entry| (Anchor(anchor.clone()), entry.object_type.clone(), entry.attributes.clone()))
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes exports to `dn` fail with `code` (e.g. `schema-violation`).
    pub fn reject_exports_to(&self, dn: &str, code: &str, message: &str) {
        self.lock().rejected.insert(dn.to_lowercase(), (code.to_string(), message.to_string()));
    }

    /// Makes every operation fail as if the directory were down (or back up).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// How many exports were applied.
    pub fn export_count(&self) -> u64 {
        self.lock().exports
    }

    /// A connector on this directory, with `page_size` objects per import page.
    pub fn connector(&self, id: &str, role: Role, page_size: usize) -> Connector {
        let info = ConnectorInfo { id: ConnectorId(id.to_string()), kind: "memory".into(), role, parameters: BTreeMap::new() };
        let side = MemoryConnector { directory: self.clone(), page_size: page_size.max(1) };
        Connector { info, import: Box::new(side.clone()), export: Some(Box::new(side)) }
    }
}

#[derive(Debug, Clone)]
struct MemoryConnector {
    directory: MemoryDirectory,
    page_size: usize,
}

fn upsert(anchor: &[u8], entry: &Entry) -> ImportChange {
    ImportChange::Upsert {
        anchor: Anchor(anchor.to_vec()),
        dn: entry.dn.clone(),
        object_type: entry.object_type.clone(),
        attributes: entry.attributes.clone(),
    }
}

fn sequence_of(bytes: &[u8]) -> Result<u64, ConnectorError> {
    let array: [u8; 8] =
        bytes.try_into().map_err(|_| ConnectorError::WatermarkExpired(format!("{} bytes is not a memory watermark", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

impl Import for MemoryConnector {
    fn full_page<'a>(&'a self, cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>> {
        Box::pin(async move {
            let state = self.directory.lock();
            if state.unavailable {
                return Err(ConnectorError::Unavailable("the memory directory is marked unavailable".into()));
            }
            // From just after the cursor's anchor (a range, not a scan from the first object:
            // paging through a million objects would otherwise be quadratic).
            let from = cursor.map_or(Bound::Unbounded, |start| Bound::Excluded(start.to_vec()));
            let mut items = state.objects.range((from, Bound::Unbounded));
            let page: Vec<(&Vec<u8>, &Entry)> = items.by_ref().take(self.page_size).collect();
            let more = items.next().is_some();
            Ok(ImportPage {
                changes: page.iter().map(|(anchor, entry)| upsert(anchor, entry)).collect(),
                next: if more { page.last().map(|(anchor, _)| (*anchor).clone()) } else { None },
                watermark: if more { None } else { Some(state.sequence.to_be_bytes().to_vec()) },
                complete: false,
            })
        })
    }

    fn delta_page<'a>(&'a self, watermark: &'a [u8], cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>> {
        Box::pin(async move {
            let state = self.directory.lock();
            if state.unavailable {
                return Err(ConnectorError::Unavailable("the memory directory is marked unavailable".into()));
            }
            let since = match cursor {
                Some(cursor) => sequence_of(cursor)?,
                None => sequence_of(watermark)?,
            };
            if since > state.sequence {
                return Err(ConnectorError::WatermarkExpired(format!("watermark {since} is ahead of the directory ({})", state.sequence)));
            }
            // Each changed anchor once, at its last change, in change order: the log from just
            // after `since` (the log is in sequence order), skipping changes made again later.
            let start = state.log.partition_point(|(sequence, _)| *sequence <= since);
            let mut changed = state.log[start..]
                .iter()
                .filter(|(sequence, anchor)| state.last_change.get(anchor) == Some(sequence))
                .map(|(sequence, anchor)| (*sequence, anchor));
            let page: Vec<(u64, &Vec<u8>)> = changed.by_ref().take(self.page_size).collect();
            let more = changed.next().is_some();
            let reached = if more { page.last().map_or(since, |(sequence, _)| *sequence) } else { state.sequence };
            let changes = page
                .iter()
                .map(|(_, anchor)| match state.objects.get(*anchor) {
                    Some(entry) => upsert(anchor, entry),
                    None => ImportChange::Delete { anchor: Anchor((*anchor).clone()) },
                })
                .collect();
            Ok(ImportPage {
                changes,
                next: more.then(|| reached.to_be_bytes().to_vec()),
                watermark: Some(reached.to_be_bytes().to_vec()),
                complete: false,
            })
        })
    }
}

impl Export for MemoryConnector {
    fn export<'a>(&'a self, request: &'a ExportRequest) -> BoxFuture<'a, Result<ExportOutcome, ConnectorError>> {
        Box::pin(async move {
            let mut state = self.directory.lock();
            if state.unavailable {
                return Err(ConnectorError::Unavailable("the memory directory is marked unavailable".into()));
            }
            if let Some((code, message)) = state.rejected.get(&request.dn.to_lowercase()) {
                return Err(ConnectorError::Rejected { code: code.clone(), message: message.clone() });
            }
            let not_found = || ConnectorError::Rejected { code: "not-found".into(), message: format!("{} does not exist", request.dn) };
            let outcome = match &request.change {
                PendingExport::Add(changes) => {
                    if state.by_dn.contains_key(&request.dn.to_lowercase()) {
                        return Err(ConnectorError::Rejected { code: "already-exists".into(), message: format!("{} exists", request.dn) });
                    }
                    let mut attributes = Attributes::new();
                    attributes.apply(changes);
                    let anchor = state.new_anchor();
                    state.insert(anchor.clone(), Entry { dn: request.dn.clone(), object_type: request.object_type.clone(), attributes });
                    state.touch(&anchor);
                    ExportOutcome::created(Anchor(anchor))
                }
                PendingExport::Update(changes) | PendingExport::Rename { changes, .. } => {
                    let anchor = request.anchor.as_ref().ok_or_else(not_found)?.0.clone();
                    let entry = state.objects.get_mut(&anchor).ok_or_else(not_found)?;
                    entry.attributes.apply(changes);
                    if let PendingExport::Rename { new_dn, .. } = &request.change {
                        state.rename(&anchor, new_dn);
                    }
                    state.touch(&anchor);
                    ExportOutcome::done()
                }
                PendingExport::Delete => {
                    let anchor = request.anchor.as_ref().ok_or_else(not_found)?.0.clone();
                    state.remove(&anchor).ok_or_else(not_found)?;
                    state.touch(&anchor);
                    ExportOutcome::done()
                }
            };
            state.exports += 1;
            Ok(outcome)
        })
    }
}
