//! The store port: what the sync runner needs from persistent state — connector spaces,
//! the metaverse, watermarks and run history — as one trait, [`Store`], with one conformance
//! suite ([`testkit`], feature `testkit`) that every adapter runs (SQLite, PostgreSQL).
//!
//! Every method is atomic. [`Store::commit_import_page`] applies one import page *and* its
//! watermark in one transaction, so a crash at any point resumes from the last committed page
//! without loss or duplication.
//!
//! This crate knows no SQL and no I/O library; adapters do. [`codec`] is the shared encoding
//! of attribute values for adapters that keep them as text.

pub mod codec;
pub mod import;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::future::Future;

pub use model::ImportChange;
use model::{Anchor, AttrValue, Attributes, ConnectorId, CsId, CsObject, MvId, MvObject, ObjectError, PendingExport, PendingImport};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object does not exist (it may have been deleted by another process).
    #[error("{0} not found")]
    NotFound(String),
    /// A uniqueness rule was broken (e.g. two CS objects with one anchor in a connector).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data could not be decoded (written by a newer version, or damaged).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The database is at a schema version this program does not know.
    #[error("database schema version {found} is newer than this program's {supported}; upgrade Isthmus")]
    TooNew {
        /// Version in the database.
        found: i64,
        /// Newest version this program knows.
        supported: i64,
    },
    /// Another runner (another process) works on this state now; two would interleave their
    /// writes to one connector space.
    #[error("another sync runner is using this database now: {0}")]
    Busy(String),
    /// The database itself failed (connection lost, disk full …); retrying later may help.
    #[error("database error: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A CS object to create (the store assigns the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCsObject {
    /// Connector.
    pub connector: ConnectorId,
    /// Anchor, `None` for an export object.
    pub anchor: Option<Anchor>,
    /// DN.
    pub dn: String,
    /// Object type.
    pub object_type: String,
    /// Attributes.
    pub attributes: Attributes,
    /// Pending import.
    pub pending_import: Option<PendingImport>,
    /// Pending export.
    pub pending_export: Option<PendingExport>,
    /// Link.
    pub link: Option<MvId>,
}

/// What an import page did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// New CS objects.
    pub adds: u64,
    /// Changed CS objects.
    pub updates: u64,
    /// CS objects marked deleted.
    pub deletes: u64,
    /// Changes that changed nothing.
    pub unchanged: u64,
    /// Attribute-level changes ([`ImportChange::Modify`]) for objects the connector space does
    /// not hold: the delta and the connector space disagree, and a full import must follow.
    pub missed: u64,
}

/// Which CS objects to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsQuery {
    /// Only objects with a pending import.
    pub pending_import: bool,
    /// Only objects with a pending export.
    pub pending_export: bool,
    /// Only objects with an error.
    pub with_error: bool,
    /// Only ids greater than this (paging).
    pub after: Option<CsId>,
    /// At most this many (0 = no limit).
    pub limit: usize,
}

/// A run-profile step in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Id (assigned by the store).
    pub id: i64,
    /// Connector the step ran on.
    pub connector: ConnectorId,
    /// Step kind, e.g. `full-import`, `delta-sync`, `export`.
    pub step: String,
    /// Start, as Unix seconds.
    pub started: i64,
    /// End, as Unix seconds; `None` while running.
    pub finished: Option<i64>,
    /// Outcome, e.g. `success`, `completed-errors`, `stopped-deletion-threshold-exceeded`.
    pub status: String,
    /// Counts: adds, updates, deletes, errors.
    pub counts: RunCounts,
}

/// Numbers of a run step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Objects added.
    pub adds: u64,
    /// Objects updated.
    pub updates: u64,
    /// Objects deleted.
    pub deletes: u64,
    /// Per-object errors.
    pub errors: u64,
}

/// `ids` in order, each once: how the set-based reads (`mv_get_many`, `cs_linked_to_many`) go
/// through what they are asked.
pub fn ids_in_order(ids: &[MvId]) -> Vec<MvId> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What a pending export does, without its changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// Create the object.
    Add,
    /// Change values.
    Update,
    /// Rename (and maybe change values).
    Rename,
    /// Delete the object.
    Delete,
}

/// One pending export as an export plans it: which object, what kind, and whether the object
/// exists in the directory (has an anchor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingSummary {
    /// The CS object.
    pub id: CsId,
    /// What its export does.
    pub kind: ExportKind,
    /// The directory has it (it has an anchor).
    pub anchored: bool,
}

/// How a join lookup compares values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// Exactly (binary values always match exactly).
    Exact,
    /// Text ignoring case.
    IgnoreCase,
}

/// The persistent state of the sync engine.
///
/// Futures are `Send` so runners can move work between threads.
pub trait Store: Send + Sync {
    /// Creates or upgrades the schema.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;

    /// From now on, keeps lookup-index rows (what [`Store::cs_find`] and [`Store::mv_find`]
    /// search) only for these attributes, and for every reference (renames search those): the
    /// rules' join attributes. When the store was indexed for another set, the index is brought
    /// to this one first (rows of attributes no longer listed removed, rows of newly listed ones
    /// written from the stored objects); returns how many rows that changed. The set is kept in
    /// the store, so every later handle and process indexes the same. A lookup on an attribute
    /// outside the set is refused.
    fn index_attributes(&self, attributes: &std::collections::BTreeSet<String>) -> impl Future<Output = Result<u64>> + Send;

    /// Opens a unit of work on this handle: every call until [`Store::commit_unit`] is part of
    /// one transaction, so a crash (or [`Store::rollback_unit`]) leaves none of them. Each call
    /// stays atomic within it. Units do not nest; other handles see the writes only at commit.
    fn begin_unit(&self) -> impl Future<Output = Result<()>> + Send;
    /// Commits the open unit of work.
    fn commit_unit(&self) -> impl Future<Output = Result<()>> + Send;
    /// Abandons the open unit of work's writes (after an error).
    fn rollback_unit(&self) -> impl Future<Output = Result<()>> + Send;

    /// A CS object by id.
    fn cs_get(&self, id: CsId) -> impl Future<Output = Result<Option<CsObject>>> + Send;
    /// A CS object by anchor within a connector.
    fn cs_by_anchor(&self, connector: &ConnectorId, anchor: &Anchor) -> impl Future<Output = Result<Option<CsObject>>> + Send;
    /// A CS object by DN within a connector (case-insensitive).
    fn cs_by_dn(&self, connector: &ConnectorId, dn: &str) -> impl Future<Output = Result<Option<CsObject>>> + Send;
    /// Creates a CS object.
    fn cs_insert(&self, object: NewCsObject) -> impl Future<Output = Result<CsId>> + Send;
    /// Replaces a CS object's state (all fields but id and connector).
    fn cs_update(&self, object: &CsObject) -> impl Future<Output = Result<()>> + Send;
    /// Writes what a sync decides about a CS object — DN, link, pending import and export,
    /// error — and leaves its anchor, type and attributes as stored (a sync never changes
    /// imported values, so it neither encodes nor compares them).
    fn cs_update_state(&self, object: &CsObject) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a CS object.
    fn cs_delete(&self, id: CsId) -> impl Future<Output = Result<()>> + Send;
    /// Lists a connector's CS objects by id.
    fn cs_list(&self, connector: &ConnectorId, query: &CsQuery) -> impl Future<Output = Result<Vec<CsObject>>> + Send;
    /// Of `dns` (any case), those naming an object of `connector` that is joined to an MV
    /// object: (the DN in lower case, that MV object). Reads no attributes (reference
    /// resolution: a group's members).
    fn cs_links_by_dn(&self, connector: &ConnectorId, dns: &[String]) -> impl Future<Output = Result<Vec<(String, MvId)>>> + Send;
    /// Of `mvs`, those an object of `connector` is joined to: (the MV object, that object's DN).
    /// Reads no attributes (outbound references).
    fn cs_dns_by_link(&self, connector: &ConnectorId, mvs: &[MvId]) -> impl Future<Output = Result<Vec<(MvId, String)>>> + Send;
    /// CS objects linked to an MV object.
    fn cs_linked_to(&self, mv: MvId) -> impl Future<Output = Result<Vec<CsObject>>> + Send;
    /// CS objects linked to any of `mvs`, ordered by (link, id): a sync page's one read of
    /// every object joined to the MV objects it touched.
    fn cs_linked_to_many(&self, mvs: &[MvId]) -> impl Future<Output = Result<Vec<CsObject>>> + Send;
    /// Disconnectors of a connector and type whose attribute holds one of `values`.
    fn cs_find(
        &self,
        connector: &ConnectorId,
        object_type: &str,
        attribute: &str,
        values: &[AttrValue],
        matching: Matching,
    ) -> impl Future<Output = Result<Vec<CsId>>> + Send;
    /// Every pending export of a connector, summarized, in id order (an export counts and
    /// orders its work without holding every change in memory).
    fn cs_pending_exports(&self, connector: &ConnectorId) -> impl Future<Output = Result<Vec<PendingSummary>>> + Send;
    /// Marks CS objects' pending imports as processed (the end of a sync page).
    fn cs_clear_pending_import(&self, ids: &[CsId]) -> impl Future<Output = Result<()>> + Send;
    /// Sets or clears a CS object's error.
    fn cs_set_error(&self, id: CsId, error: Option<&ObjectError>) -> impl Future<Output = Result<()>> + Send;

    /// Applies one import page and the watermark that follows it, atomically. Upserted objects
    /// are marked as seen by `run` (see [`Store::obsolete_unseen`]). An upsert whose anchor is
    /// unknown but whose DN belongs to an unconfirmed export object confirms that object.
    fn commit_import_page(
        &self,
        connector: &ConnectorId,
        run: i64,
        changes: &[ImportChange],
        watermark: Option<&[u8]>,
    ) -> impl Future<Output = Result<ImportCounts>> + Send;
    /// Marks every imported CS object of a connector that `import_run` did not see as deleted
    /// (the end of a full import: obsoletion); returns how many.
    fn obsolete_unseen(&self, connector: &ConnectorId, import_run: i64) -> impl Future<Output = Result<u64>> + Send;
    /// A service's own small state (password hash sync's replication watermarks), by key;
    /// never a secret.
    fn service_state(&self, service: &str, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// Replaces a service's state under `key`.
    fn set_service_state(&self, service: &str, key: &str, value: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// The connector's last committed watermark.
    fn watermark(&self, connector: &ConnectorId) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// Forgets the watermark (the next delta import becomes a full one).
    fn clear_watermark(&self, connector: &ConnectorId) -> impl Future<Output = Result<()>> + Send;

    /// An MV object by id.
    fn mv_get(&self, id: MvId) -> impl Future<Output = Result<Option<MvObject>>> + Send;
    /// The MV objects of `ids` that exist, in id order (a sync page's one read of them).
    fn mv_get_many(&self, ids: &[MvId]) -> impl Future<Output = Result<Vec<MvObject>>> + Send;
    /// Creates an empty MV object.
    fn mv_insert(&self, object_type: &str) -> impl Future<Output = Result<MvId>> + Send;
    /// Replaces an MV object's attributes.
    fn mv_update(&self, object: &MvObject) -> impl Future<Output = Result<()>> + Send;
    /// Deletes an MV object (links to it are cleared).
    fn mv_delete(&self, id: MvId) -> impl Future<Output = Result<()>> + Send;
    /// MV objects of a type whose attribute holds one of `values`.
    fn mv_find(
        &self,
        object_type: &str,
        attribute: &str,
        values: &[AttrValue],
        matching: Matching,
    ) -> impl Future<Output = Result<Vec<MvId>>> + Send;
    /// MV ids after `after`, at most `limit` (0 = all).
    fn mv_list(&self, after: Option<MvId>, limit: usize) -> impl Future<Output = Result<Vec<MvId>>> + Send;

    /// Makes this handle the only sync runner of the state for as long as it lives (a second
    /// process gets [`StoreError::Busy`]), then marks the run steps a runner left `running`
    /// (it was killed) as `interrupted`, finished at `now`; returns how many. Calling it again
    /// on the same handle only marks.
    fn claim_runner(&self, now: i64) -> impl Future<Output = Result<u64>> + Send;
    /// Records the start of a run step; returns its id.
    fn run_start(&self, connector: &ConnectorId, step: &str, started: i64) -> impl Future<Output = Result<i64>> + Send;
    /// Records the end of a run step.
    fn run_finish(&self, id: i64, finished: i64, status: &str, counts: RunCounts) -> impl Future<Output = Result<()>> + Send;
    /// The newest run steps first.
    fn runs(&self, limit: usize) -> impl Future<Output = Result<Vec<RunRecord>>> + Send;
    /// Removes finished run steps that started before `before` (run-history retention); a
    /// step still running is kept. Returns how many were removed.
    fn runs_prune(&self, before: i64) -> impl Future<Output = Result<u64>> + Send;
}
