//! Generic LDAP import (OpenLDAP and RFC servers): entryUUID anchor, paged full import, and
//! delta imports by RFC 4533 content synchronization (refreshOnly, the cookie kept in the
//! watermark) or, for servers without it, by `modifyTimestamp`.
//!
//! Syncrepl deltas run two refreshes per search base: one of the imported objects, one of the
//! containers above them. The server answers a refresh in one of two ways:
//! - a delete phase (OpenLDAP with a session log that still covers the cookie): changed entries
//!   in full, deleted ones by entryUUID — exactly a delta;
//! - a present phase (no session log, or the cookie is older than it): changed entries in full
//!   and the rest only as "still present"; whatever is not named is gone.
//!
//! A present phase, a changed container (a renamed or moved OU changes the DN of everything
//! under it, and the server reports only the OU), and every timestamp delta end with a
//! **presence pass**: a paged read of every object's entryUUID and DN, sent as modifies without
//! changes on a page marked `complete`, so the store moves what moved and deletes what was not
//! named. The new watermark is given only with the last page, so a delta cut short is repeated
//! whole.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use connector_api::{BoxFuture, ConnectorError, Import, ImportPage};
use ldap3::asn1::{PL, TagClass};
use ldap3::controls::RawControl;
use ldap3::{ResultEntry, Scope, SearchEntry};
use model::{Anchor, ImportChange};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::ber::sync;
use crate::config::DeltaMode;
use crate::schema::Schema;
use crate::session::{Session, raw_values, take_values};

/// RFC 4533 OIDs.
const SYNC_REQUEST_OID: &str = "1.3.6.1.4.1.4203.1.9.1.1";
const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
/// e-syncRefreshRequired: the server wants the client to start over.
const SYNC_REFRESH_REQUIRED: u32 = 4096;

/// Containers whose rename or move changes the DNs of the objects below them.
const CONTAINER_FILTER: &str = "(|(objectClass=organizationalUnit)(objectClass=organization)(objectClass=locality)(objectClass=domain))";
const CONTAINERS: &str = "containers:";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
enum Watermark {
    /// One syncrepl cookie (base64) per stream: a search base, and `containers:<base>`.
    #[serde(rename = "ldap-syncrepl-v1")]
    Syncrepl { cookies: Vec<(String, String)> },
    /// The start of the last import, as Unix seconds by this machine's clock.
    #[serde(rename = "ldap-timestamp-v1")]
    Timestamp { since: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
struct FullCursor {
    scope: usize,
    paged: String,
    watermark: Watermark,
}

/// Where a delta import is.
#[derive(Debug, Serialize, Deserialize)]
enum Phase {
    /// The syncrepl refresh of stream `n`.
    Sync(usize),
    /// Timestamp mode: changed entries in search base `scope`.
    Changed { scope: usize, paged: String },
    /// The presence pass through search base `scope`.
    Presence { scope: usize, paged: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct DeltaCursor {
    phase: Phase,
    /// The watermark this delta will store when it ends.
    watermark: Watermark,
    /// A presence pass must follow the refreshes.
    presence: bool,
    /// entryUUIDs (base64) the objects refresh of the current base named as deleted.
    #[serde(default)]
    deleted: Vec<String>,
}

struct Directory {
    naming_contexts: Vec<String>,
    syncrepl: bool,
    schema: Schema,
}

/// The generic LDAP import capability.
pub(crate) struct GenericImport {
    pub session: Arc<Session>,
    directory: OnceCell<Directory>,
}

/// What one syncrepl refresh said.
#[derive(Debug, Default)]
struct Refresh {
    /// Entries added or changed (with their entryUUID from the state control).
    changed: Vec<(Vec<u8>, SearchEntry)>,
    /// entryUUIDs deleted.
    deleted: Vec<Vec<u8>>,
    /// The server used a present phase: entries not named are gone.
    present_phase: bool,
    cookie: Option<Vec<u8>>,
}

impl GenericImport {
    pub fn new(session: Arc<Session>) -> Self {
        GenericImport { session, directory: OnceCell::new() }
    }

    /// Connects, binds and reads the rootDSE, so that configuration mistakes show at once.
    pub async fn check(&self) -> Result<(), ConnectorError> {
        self.directory().await.map(|_| ())
    }

    async fn directory(&self) -> Result<&Directory, ConnectorError> {
        self.directory.get_or_try_init(|| discover(&self.session)).await
    }

    fn syncrepl(&self, directory: &Directory) -> bool {
        match self.session.config.delta {
            DeltaMode::Auto => directory.syncrepl,
            DeltaMode::Syncrepl => true,
            DeltaMode::ModifyTimestamp => false,
        }
    }

    fn filter(&self) -> String {
        let classes: String = self.session.config.object_types().iter().map(|class| format!("(objectClass={class})")).collect();
        format!("(|{classes})")
    }

    fn attributes(&self) -> Vec<String> {
        self.session.config.requested_attributes(&["entryUUID", "objectClass"])
    }

    fn scopes(&self, directory: &Directory) -> Vec<String> {
        self.session.config.search_bases(&directory.naming_contexts)
    }

    fn in_scope(&self, directory: &Directory, dn: &str) -> bool {
        self.session.config.in_scope(&directory.naming_contexts, dn)
    }

    /// The first configured object type the entry has.
    fn object_type(&self, entry: &SearchEntry) -> Option<String> {
        let classes = raw_values(entry, "objectClass");
        self.session
            .config
            .object_types()
            .into_iter()
            .find(|wanted| classes.iter().any(|class| class.eq_ignore_ascii_case(wanted.as_bytes())))
    }

    /// A full-state upsert; `None` (with a warning) for an entry without a usable entryUUID or
    /// of a type not imported.
    fn upsert(&self, directory: &Directory, entry: SearchEntry) -> Option<ImportChange> {
        let object_type = self.object_type(&entry)?;
        let uuid = raw_values(&entry, "entryUUID").first().and_then(|text| uuid_bytes(text));
        let Some(uuid) = uuid else {
            tracing::warn!(connector = %self.session.config.id, dn = entry.dn, "entry without a readable entryUUID; not imported");
            return None;
        };
        let dn = entry.dn.clone();
        let attributes = directory.schema.attributes(entry);
        Some(ImportChange::Upsert { anchor: Anchor(uuid), dn, object_type, attributes })
    }

    /// One page of a paged search; the next paging cookie (empty at the end).
    async fn page(
        &self,
        base: &str,
        filter: &str,
        attributes: &[String],
        paged: &str,
    ) -> Result<(Vec<SearchEntry>, String), ConnectorError> {
        let cookie = B64.decode(paged).map_err(|err| ConnectorError::Config(format!("bad paging cookie in the cursor: {err}")))?;
        let (entries, next) = self.session.search_page(base, Scope::Subtree, filter, attributes, cookie).await?;
        Ok((entries, B64.encode(next)))
    }

    /// One refreshOnly content synchronization of `base` from `cookie` (none: from the start).
    async fn refresh(&self, base: &str, filter: &str, attributes: &[String], cookie: Option<&[u8]>) -> Result<Refresh, ConnectorError> {
        let control = RawControl { ctype: SYNC_REQUEST_OID.into(), crit: true, val: Some(sync::request(cookie)) };
        let (entries, result) = self.session.search_raw(base, Scope::Subtree, filter, attributes, vec![control]).await?;
        if result.rc == SYNC_REFRESH_REQUIRED {
            return Err(ConnectorError::WatermarkExpired(format!("the server wants a full reload of {base}: {}", result.text.trim())));
        }
        if result.rc != 0 {
            let error = crate::session::result_error(&format!("content synchronization of {base}"), &result);
            return Err(match error {
                ConnectorError::Rejected { message, .. } if cookie.is_some() => ConnectorError::WatermarkExpired(message),
                other => other,
            });
        }
        let bad = |what: &str, err: &dyn std::fmt::Display| ConnectorError::Unavailable(format!("{base}: malformed {what}: {err}"));
        let mut refresh = Refresh::default();
        let mut present_seen = false;
        let mut deletes_seen = false;
        for entry in entries {
            if entry.is_intermediate() {
                let Some(value) = intermediate_value(&entry) else { continue };
                match sync::info(&value).map_err(|err| bad("Sync Info message", &err))? {
                    sync::Info::NewCookie(cookie) => refresh.cookie = Some(cookie),
                    sync::Info::PhaseDone { deletes, cookie, .. } => {
                        if deletes {
                            deletes_seen = true
                        } else {
                            present_seen = true
                        }
                        refresh.cookie = cookie.or(refresh.cookie.take());
                    }
                    sync::Info::IdSet { cookie, deletes, uuids } => {
                        if deletes {
                            deletes_seen = true;
                            refresh.deleted.extend(uuids);
                        } else {
                            present_seen = true;
                        }
                        refresh.cookie = cookie.or(refresh.cookie.take());
                    }
                }
                continue;
            }
            if entry.is_ref() {
                continue;
            }
            let state = entry.1.iter().find(|control| control.1.ctype == SYNC_STATE_OID).and_then(|control| control.1.val.clone());
            let Some(state) = state else {
                return Err(ConnectorError::Unavailable(format!("{base}: an entry came without its Sync State control")));
            };
            let (state, uuid, cookie) = sync::state(&state).map_err(|err| bad("Sync State control", &err))?;
            if cookie.is_some() {
                refresh.cookie = cookie;
            }
            match state {
                sync::State::Present => present_seen = true,
                sync::State::Delete => refresh.deleted.push(uuid),
                sync::State::Add | sync::State::Modify => refresh.changed.push((uuid, SearchEntry::construct(entry))),
            }
        }
        let done = result.ctrls.iter().find(|control| control.1.ctype == SYNC_DONE_OID).and_then(|control| control.1.val.as_deref());
        let Some(done) = done else {
            return Err(ConnectorError::Unavailable(format!(
                "{base}: the Sync Done control is missing; is this a content synchronization server?"
            )));
        };
        let (done_cookie, refresh_deletes) = sync::done(done).map_err(|err| bad("Sync Done control", &err))?;
        refresh.cookie = done_cookie.or(refresh.cookie.take());
        // From a cookie, a refresh that did not say it lists deletes is a present phase.
        refresh.present_phase = cookie.is_some() && (present_seen || !(refresh_deletes || deletes_seen));
        Ok(refresh)
    }

    /// A cookie for "now" in `base`: a refresh from the start of a filter that matches nothing.
    async fn current_cookie(&self, base: &str) -> Result<Vec<u8>, ConnectorError> {
        let nothing = "(&(objectClass=isthmusNoSuchClass)(!(objectClass=*)))";
        let refresh = self.refresh(base, nothing, &["1.1".to_string()], None).await?;
        refresh.cookie.ok_or_else(|| ConnectorError::Unavailable(format!("{base}: the content synchronization gave no cookie")))
    }

    async fn full(&self, cursor: Option<&[u8]>) -> Result<ImportPage, ConnectorError> {
        let directory = self.directory().await?;
        let scopes = self.scopes(directory);
        let mut state = match cursor {
            Some(bytes) => serde_json::from_slice::<FullCursor>(bytes)
                .map_err(|err| ConnectorError::Config(format!("not a full-import cursor of this connector: {err}")))?,
            None => FullCursor { scope: 0, paged: String::new(), watermark: self.watermark_now(directory, &scopes).await? },
        };
        let Some(base) = scopes.get(state.scope) else {
            return Ok(ImportPage { changes: Vec::new(), next: None, watermark: Some(encode(&state.watermark)?), complete: false });
        };
        let (entries, next) = self.page(base, &self.filter(), &self.attributes(), &state.paged).await?;
        let changes: Vec<ImportChange> = entries
            .into_iter()
            .filter(|entry| self.in_scope(directory, &entry.dn))
            .filter_map(|entry| self.upsert(directory, entry))
            .collect();
        if next.is_empty() {
            state.scope += 1;
        }
        state.paged = next;
        if state.scope >= scopes.len() {
            return Ok(ImportPage { changes, next: None, watermark: Some(encode(&state.watermark)?), complete: false });
        }
        Ok(ImportPage { changes, next: Some(to_cursor(&state)?), watermark: None, complete: false })
    }

    /// The watermark of an import starting now (taken before reading anything, so changes made
    /// while it reads are seen again by the next delta).
    async fn watermark_now(&self, directory: &Directory, scopes: &[String]) -> Result<Watermark, ConnectorError> {
        if !self.syncrepl(directory) {
            return Ok(Watermark::Timestamp { since: unix_now() });
        }
        let mut cookies = Vec::new();
        for base in scopes {
            // A cookie names a point in the server's change history, whatever the filter.
            let cookie = B64.encode(self.current_cookie(base).await?);
            cookies.push((base.clone(), cookie.clone()));
            cookies.push((format!("{CONTAINERS}{base}"), cookie));
        }
        Ok(Watermark::Syncrepl { cookies })
    }

    async fn delta(&self, watermark: &[u8], cursor: Option<&[u8]>) -> Result<ImportPage, ConnectorError> {
        let directory = self.directory().await?;
        let scopes = self.scopes(directory);
        let mut state = match cursor {
            Some(bytes) => serde_json::from_slice::<DeltaCursor>(bytes)
                .map_err(|err| ConnectorError::Config(format!("not a delta-import cursor of this connector: {err}")))?,
            None => self.start_delta(directory, &scopes, watermark)?,
        };
        let mut changes = Vec::new();
        match &mut state.phase {
            Phase::Sync(stream) => {
                let Watermark::Syncrepl { cookies } = &mut state.watermark else {
                    return Err(ConnectorError::Config("a syncrepl delta cursor without syncrepl cookies".into()));
                };
                let Some((name, cookie)) = cookies.get(*stream).cloned() else {
                    return Err(ConnectorError::Config("a delta cursor past the last stream".into()));
                };
                let cookie = B64.decode(cookie).map_err(|_| ConnectorError::WatermarkExpired("a stored cookie is not base64".into()))?;
                let refresh = match name.strip_prefix(CONTAINERS) {
                    Some(base) => {
                        let refresh = self.refresh(base, CONTAINER_FILTER, &["1.1".to_string()], Some(&cookie)).await?;
                        // A renamed or moved container may have moved everything below it; one
                        // gone (moved out of the base) took everything below it out of scope.
                        let gone = self.containers_gone(base, &refresh.deleted, &state.deleted).await?;
                        if !refresh.changed.is_empty() || gone {
                            tracing::info!(connector = %self.session.config.id, base, "containers changed; checking every object's DN");
                            state.presence = true;
                        }
                        state.deleted.clear();
                        refresh
                    }
                    None => {
                        let refresh = self.refresh(&name, &self.filter(), &self.attributes(), Some(&cookie)).await?;
                        for (uuid, entry) in refresh.changed.iter().cloned() {
                            if !self.in_scope(directory, &entry.dn) {
                                changes.push(ImportChange::Delete { anchor: Anchor(uuid) });
                            } else if let Some(change) = self.upsert(directory, entry) {
                                changes.push(change);
                            }
                        }
                        changes.extend(refresh.deleted.iter().cloned().map(|uuid| ImportChange::Delete { anchor: Anchor(uuid) }));
                        state.deleted = refresh.deleted.iter().map(|uuid| B64.encode(uuid)).collect();
                        refresh
                    }
                };
                if refresh.present_phase {
                    tracing::info!(connector = %self.session.config.id, stream = name, "the server answered with a present phase; a presence pass follows");
                    state.presence = true;
                }
                if let Some(cookie) = refresh.cookie {
                    cookies[*stream].1 = B64.encode(cookie);
                }
                let streams = cookies.len();
                *stream += 1;
                if *stream >= streams {
                    if !state.presence {
                        return Ok(ImportPage { changes, next: None, watermark: Some(encode(&state.watermark)?), complete: false });
                    }
                    state.phase = Phase::Presence { scope: 0, paged: String::new() };
                }
            }
            Phase::Changed { scope, paged } => {
                let Some(base) = scopes.get(*scope) else {
                    return Err(ConnectorError::Config("a delta cursor past the last scope".into()));
                };
                // The cursor holds the new watermark; changes are searched from the stored one.
                let from = generalized_time(state_from(watermark)?.saturating_sub(self.session.config.timestamp_overlap_seconds));
                let filter = format!("(&{}(modifyTimestamp>={from}))", self.filter());
                let (entries, next) = self.page(base, &filter, &self.attributes(), paged).await?;
                changes.extend(
                    entries
                        .into_iter()
                        .filter(|entry| self.in_scope(directory, &entry.dn))
                        .filter_map(|entry| self.upsert(directory, entry)),
                );
                if next.is_empty() {
                    *scope += 1;
                }
                *paged = next;
                if *scope >= scopes.len() {
                    state.phase = Phase::Presence { scope: 0, paged: String::new() };
                }
            }
            Phase::Presence { scope, paged } => {
                let Some(base) = scopes.get(*scope) else {
                    return Err(ConnectorError::Config("a delta cursor past the last scope".into()));
                };
                let wanted = ["entryUUID".to_string(), "objectClass".to_string()];
                let (entries, next) = self.page(base, &self.filter(), &wanted, paged).await?;
                for mut entry in entries {
                    if !self.in_scope(directory, &entry.dn) || self.object_type(&entry).is_none() {
                        continue;
                    }
                    if let Some(uuid) = take_values(&mut entry, "entryUUID").first().and_then(|text| uuid_bytes(text)) {
                        changes.push(ImportChange::Modify { anchor: Anchor(uuid), dn: entry.dn, changes: Vec::new() });
                    }
                }
                if next.is_empty() {
                    *scope += 1;
                }
                *paged = next;
                if *scope >= scopes.len() {
                    return Ok(ImportPage { changes, next: None, watermark: Some(encode(&state.watermark)?), complete: true });
                }
            }
        }
        Ok(ImportPage { changes, next: Some(to_cursor(&state)?), watermark: None, complete: false })
    }

    /// Whether a containers refresh's deletes include a container that really left `base`.
    /// A session log also names as deleted every changed entry that does not match the
    /// containers filter; those are still in the base, or are objects the objects refresh
    /// already deleted (`objects_deleted`, base64).
    async fn containers_gone(&self, base: &str, deleted: &[Vec<u8>], objects_deleted: &[String]) -> Result<bool, ConnectorError> {
        let candidates: Vec<&Vec<u8>> = deleted.iter().filter(|uuid| !objects_deleted.contains(&B64.encode(uuid))).collect();
        for chunk in candidates.chunks(100) {
            let filter: String = chunk.iter().map(|uuid| format!("(entryUUID={})", uuid_text(uuid))).collect();
            let (found, _) = self.session.search(base, Scope::Subtree, &format!("(|{filter})"), &["1.1".to_string()], Vec::new()).await?;
            if found.len() < chunk.len() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads the stored watermark and decides the phases of this delta.
    fn start_delta(&self, directory: &Directory, scopes: &[String], watermark: &[u8]) -> Result<DeltaCursor, ConnectorError> {
        let stored: Watermark = serde_json::from_slice(watermark)
            .map_err(|_| ConnectorError::WatermarkExpired("the stored watermark is not one of this connector".into()))?;
        match stored {
            Watermark::Syncrepl { cookies } => {
                if !self.syncrepl(directory) {
                    return Err(ConnectorError::WatermarkExpired("the delta mode changed since the last import".into()));
                }
                let streams: Vec<String> = scopes.iter().flat_map(|base| [base.clone(), format!("{CONTAINERS}{base}")]).collect();
                if cookies.iter().map(|(stream, _)| stream).ne(streams.iter()) {
                    return Err(ConnectorError::WatermarkExpired("the search bases changed since the last import".into()));
                }
                Ok(DeltaCursor { phase: Phase::Sync(0), watermark: Watermark::Syncrepl { cookies }, presence: false, deleted: Vec::new() })
            }
            Watermark::Timestamp { .. } => {
                if self.syncrepl(directory) {
                    return Err(ConnectorError::WatermarkExpired("the delta mode changed since the last import".into()));
                }
                Ok(DeltaCursor {
                    phase: Phase::Changed { scope: 0, paged: String::new() },
                    watermark: Watermark::Timestamp { since: unix_now() },
                    presence: true,
                    deleted: Vec::new(),
                })
            }
        }
    }
}

/// The `since` of a stored timestamp watermark.
fn state_from(watermark: &[u8]) -> Result<u64, ConnectorError> {
    match serde_json::from_slice(watermark) {
        Ok(Watermark::Timestamp { since }) => Ok(since),
        _ => Err(ConnectorError::WatermarkExpired("the stored watermark is not a timestamp".into())),
    }
}

impl Import for GenericImport {
    fn full_page<'a>(&'a self, cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>> {
        Box::pin(self.full(cursor))
    }

    fn delta_page<'a>(&'a self, watermark: &'a [u8], cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>> {
        Box::pin(self.delta(watermark, cursor))
    }
}

/// Reads the rootDSE: naming contexts and whether content synchronization is offered.
async fn discover(session: &Session) -> Result<Directory, ConnectorError> {
    let wanted = ["namingContexts", "supportedControl"].map(String::from);
    let root = session.read("", "(objectClass=*)", &wanted).await?.ok_or_else(|| ConnectorError::Unavailable("no rootDSE".into()))?;
    let naming_contexts = if session.config.naming_contexts.is_empty() {
        raw_values(&root, "namingContexts").iter().map(|value| String::from_utf8_lossy(value).into_owned()).collect()
    } else {
        session.config.naming_contexts.clone()
    };
    if naming_contexts.is_empty() {
        return Err(ConnectorError::Config("the server's rootDSE names no naming context; set `naming_contexts`".into()));
    }
    let mut syncrepl = raw_values(&root, "supportedControl").iter().any(|oid| *oid == SYNC_REQUEST_OID.as_bytes());
    if syncrepl && session.config.delta != DeltaMode::ModifyTimestamp {
        // OpenLDAP lists the control when the syncprov module is loaded, even for a database
        // without the overlay: ask for a cookie to know.
        let probe = RawControl { ctype: SYNC_REQUEST_OID.into(), crit: true, val: Some(sync::request(None)) };
        let nothing = "(&(objectClass=isthmusNoSuchClass)(!(objectClass=*)))";
        let (_, result) = session.search_raw(&naming_contexts[0], Scope::Base, nothing, &["1.1".to_string()], vec![probe]).await?;
        if result.rc != 0 {
            tracing::info!(connector = %session.config.id, rc = result.rc, text = result.text.trim(), "content synchronization is advertised but refused");
            syncrepl = false;
        }
    }
    if session.config.delta == DeltaMode::Syncrepl && !syncrepl {
        return Err(ConnectorError::Config(format!(
            "`delta = \"syncrepl\"` but the server does not offer content synchronization ({SYNC_REQUEST_OID}); enable OpenLDAP's syncprov overlay or use `delta = \"modify-timestamp\"`"
        )));
    }
    let mut schema = Schema::builtin();
    schema.set("entryUUID", crate::schema::Syntax::String);
    tracing::debug!(connector = %session.config.id, ?naming_contexts, syncrepl, "directory read");
    Ok(Directory { naming_contexts, syncrepl, schema })
}

/// The value of an intermediate response (`[1] responseValue`), if any.
fn intermediate_value(entry: &ResultEntry) -> Option<Vec<u8>> {
    let PL::C(parts) = &entry.0.payload else { return None };
    parts.iter().find(|part| part.class == TagClass::Context && part.id == 1).and_then(|part| match &part.payload {
        PL::P(bytes) => Some(bytes.clone()),
        PL::C(_) => None,
    })
}

/// `5b2c1a3e-...` (RFC 4122 text) → its 16 bytes, the form syncrepl uses.
pub(crate) fn uuid_bytes(text: &[u8]) -> Option<Vec<u8>> {
    let hex: Vec<u8> = text.iter().copied().filter(|byte| *byte != b'-').collect();
    if hex.len() != 32 || text.len() != 36 {
        return None;
    }
    hex.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()).collect()
}

/// 16 bytes → RFC 4122 text (`5b2c1a3e-0f1d-…`).
fn uuid_text(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    if hex.len() != 32 {
        return hex;
    }
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

fn encode(watermark: &Watermark) -> Result<Vec<u8>, ConnectorError> {
    serde_json::to_vec(watermark).map_err(|err| ConnectorError::Config(err.to_string()))
}

fn to_cursor(state: &impl Serialize) -> Result<Vec<u8>, ConnectorError> {
    serde_json::to_vec(state).map_err(|err| ConnectorError::Config(err.to_string()))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// Unix seconds → LDAP GeneralizedTime in UTC (`20261125063000Z`).
fn generalized_time(unix: u64) -> String {
    // Out of the calendar's range only for absurd clocks: then "everything changed".
    let Some(instant) = i64::try_from(unix).ok().and_then(sync_expr::time::DateTime::from_unix_seconds) else {
        return "19700101000000Z".into();
    };
    let (year, month, day, hour, minute, second, _) = instant.parts();
    format!("{year:04}{month:02}{day:02}{hour:02}{minute:02}{second:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalized_times() {
        assert_eq!(generalized_time(0), "19700101000000Z");
        assert_eq!(generalized_time(951_782_400), "20000229000000Z");
        assert_eq!(generalized_time(1_795_588_199), "20261125062959Z");
        assert_eq!(generalized_time(4_107_542_400), "21000301000000Z");
    }

    #[test]
    fn uuids() {
        let bytes = uuid_bytes(b"5b2c1a3e-0f1d-4c3b-9a8e-112233445566").unwrap();
        assert_eq!(bytes[..3], [0x5b, 0x2c, 0x1a]);
        assert_eq!(bytes.len(), 16);
        assert_eq!(uuid_text(&bytes), "5b2c1a3e-0f1d-4c3b-9a8e-112233445566");
        assert_eq!(uuid_bytes(b"5b2c1a3e0f1d4c3b9a8e112233445566"), None, "the text form has dashes");
        assert_eq!(uuid_bytes(b"zz2c1a3e-0f1d-4c3b-9a8e-112233445566"), None);
    }

    #[test]
    fn watermarks_name_their_kind() {
        let mark = Watermark::Timestamp { since: 7 };
        let text = String::from_utf8(encode(&mark).unwrap()).unwrap();
        assert_eq!(text, r#"{"kind":"ldap-timestamp-v1","since":7}"#);
        assert_eq!(serde_json::from_str::<Watermark>(&text).unwrap(), mark);
        assert!(state_from(br#"{"kind":"ad-dirsync-v2","cookies":[]}"#).is_err());
    }
}
