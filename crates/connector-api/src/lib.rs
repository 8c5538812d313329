//! The connector port: a [`Connector`] is a struct of capabilities — every connector can be
//! read ([`Import`]); writing ([`Export`]) is optional. The runner checks capabilities when the
//! configuration loads, and adds paging, retries, progress and logging around them, once.
//!
//! Traits are object-safe (`dyn`), with boxed futures ([`BoxFuture`]): connectors are chosen at
//! run time from configuration. Knows no store, no engine, no wire protocol.

#[cfg(feature = "testkit")]
pub mod testkit;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use model::{Anchor, AttrChange, ConnectorId, ImportChange, PendingExport};

/// A boxed, `Send` future, the return type of connector operations.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a connector can tell about itself.
#[derive(Debug, Clone)]
pub struct ConnectorInfo {
    /// The id rules and the store use.
    pub id: ConnectorId,
    /// Kind, e.g. `ldap`, `graph`, `memory`.
    pub kind: String,
    /// Which side it is on: sources are imported and synced first, targets exported first (Entra's cycle order).
    pub role: Role,
    /// `%Name%` parameters its rules may read (`Domain.FQDN`, `Connector.ID` …).
    pub parameters: BTreeMap<String, sync_expr::Value>,
}

/// Where a connector sits in a sync cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An on-premises source (AD, LDAP, HR).
    Source,
    /// The cloud target.
    Target,
}

/// A connector: its description and capabilities.
pub struct Connector {
    /// Description.
    pub info: ConnectorInfo,
    /// Reading; every connector has it.
    pub import: Box<dyn Import>,
    /// Writing; `None` for read-only sources.
    pub export: Option<Box<dyn Export>>,
}

/// One page of an import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportPage {
    /// The changes.
    pub changes: Vec<ImportChange>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Vec<u8>>,
    /// The watermark to store with this page (delta imports: after every page; full imports: on the last page).
    pub watermark: Option<Vec<u8>>,
    /// Set by a delta import that named every object in scope, changed ones as upserts or
    /// modifies and unchanged ones as modifies without changes (a presence pass: a server that
    /// cannot list deletes, such as an RFC 4533 present phase): after the last page, objects
    /// it did not name are deleted, as after a full import. The watermark of the last page is
    /// stored only once that is done.
    pub complete: bool,
}

/// Reading a connected directory.
pub trait Import: Send + Sync {
    /// One page of a full import; `cursor` is `None` on the first call.
    fn full_page<'a>(&'a self, cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>>;

    /// One page of changes since `watermark`. [`ConnectorError::WatermarkExpired`] means: run a full import.
    fn delta_page<'a>(&'a self, watermark: &'a [u8], cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>>;
}

/// One change to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    /// The object's DN in the connected directory (for an add: the DN to create).
    pub dn: String,
    /// Its type.
    pub object_type: String,
    /// Its anchor; `None` for an add.
    pub anchor: Option<Anchor>,
    /// What to do.
    pub change: PendingExport,
}

/// What an export did. An export the directory applied only in part (it created the group
/// but refused some members, the connection broke between two requests, a reference names an
/// object the directory does not have yet) is still an outcome: [`ExportOutcome::left`] says
/// exactly what did not reach the directory, so the runner records only what did and keeps
/// the rest pending. Nothing not confirmed by the directory may be reported as done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOutcome {
    /// The anchor the directory gave a new object (adds).
    pub anchor: Option<Anchor>,
    /// The part of the change the directory did not apply; `None` when all of it was.
    pub left: Option<Unapplied>,
}

impl ExportOutcome {
    /// Everything was applied; no new anchor.
    pub fn done() -> Self {
        ExportOutcome::default()
    }

    /// Everything was applied to a new object with this anchor.
    pub fn created(anchor: Anchor) -> Self {
        ExportOutcome { anchor: Some(anchor), left: None }
    }
}

/// The part of an export the directory did not apply, relative to the change asked for: values
/// of an `Add` not added, of a `Delete` not removed, and attributes of a `Replace`/`Clear`
/// left as they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unapplied {
    /// What did not reach the directory.
    pub changes: Vec<AttrChange>,
    /// Why.
    pub reason: UnappliedReason,
}

/// Why part of an export was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnappliedReason {
    /// The values refer to objects the directory does not have yet (created by a later
    /// export): not an error; a later cycle sends them.
    WaitingForReferences,
    /// The directory refused or could not be reached for this part.
    Failed(ConnectorError),
}

/// Writing to a connected directory.
pub trait Export: Send + Sync {
    /// Applies one change.
    fn export<'a>(&'a self, request: &'a ExportRequest) -> BoxFuture<'a, Result<ExportOutcome, ConnectorError>>;

    /// Applies several changes of different objects, one result per request in order. A
    /// connector whose directory takes several writes at once (Graph's `$batch`) sends them
    /// together; by default they go one by one.
    fn export_many<'a>(&'a self, requests: &'a [ExportRequest]) -> BoxFuture<'a, Vec<Result<ExportOutcome, ConnectorError>>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(requests.len());
            for request in requests {
                results.push(self.export(request).await);
            }
            results
        })
    }
}

/// Why a connector operation failed, grouped by what the runner does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    /// The directory cannot be reached or the connection broke: stop this step, keep the last
    /// committed watermark, retry on the next run.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// The stored watermark is no longer valid: run a full import.
    #[error("the watermark expired: {0}")]
    WatermarkExpired(String),
    /// The directory refused this one object (bad value, schema violation, permission denied):
    /// the object gets the error, the run goes on.
    #[error("{code}: {message}")]
    Rejected {
        /// Short stable code, e.g. `schema-violation`, `permission-denied`, `already-exists`.
        code: String,
        /// The directory's explanation.
        message: String,
    },
    /// The connector is configured wrongly: stop, tell the operator.
    #[error("connector configuration: {0}")]
    Config(String),
}
