//! Active Directory import: paged full imports with attribute range retrieval, and delta imports
//! with the DirSync control (1.2.840.113556.1.4.841), as Entra Connect's AD connector does.
//!
//! A full import first asks DirSync for a cookie of "now" (a search that matches nothing), then
//! pages through the scope; changes made during the pages are seen again by the next delta, which
//! is harmless (imports are idempotent). A delta sends the stored cookie per naming context with
//! the incremental-values flag, so a group's member changes arrive as added and removed values
//! (`member;range=1-1`, `member;range=0-0`) rather than the whole list.
//!
//! How DirSync entries become changes:
//! - `isDeleted: TRUE` (a tombstone) → a delete by objectGUID.
//! - `objectClass` present → a new object, whose entry holds all its attributes → full state.
//! - `name` present (rename or move) → the object is read again whole: an upsert when it is in
//!   scope now, a delete when it moved out (OU filtering).
//! - otherwise → attribute changes ([`ImportChange::Modify`]) for objects in scope.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use connector_api::{BoxFuture, ConnectorError, Import, ImportPage};
use ldap3::controls::RawControl;
use ldap3::{Scope, SearchEntry};
use model::{Anchor, AttrChange, Dn, ImportChange};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::ber::{self, Item};
use crate::schema::Schema;
use crate::session::{Session, parse_range, raw_values, take_values};

/// The DirSync control's OID.
pub const DIRSYNC_OID: &str = "1.2.840.113556.1.4.841";
/// DirSync flag: linked-attribute changes as added/removed values.
const INCREMENTAL_VALUES: u32 = 0x8000_0000;
/// How one DirSync attribute becomes a change.
type MakeChange = fn(String, Vec<model::AttrValue>) -> AttrChange;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Watermark {
    kind: String,
    /// (stream, DirSync cookie in base64); per naming context a stream of the imported objects
    /// (named by the naming context) and one of its containers (`containers:<nc>`).
    cookies: Vec<(String, String)>,
    /// When the last presence check began (Unix seconds); 0: never.
    #[serde(default)]
    presence_checked: i64,
}

const WATERMARK_KIND: &str = "ad-dirsync-v2";

/// Prefix of the DirSync stream that watches containers (OUs) of a naming context for renames
/// and moves, which change the DNs of everything under them without reporting those objects.
const CONTAINERS: &str = "containers:";
const CONTAINER_FILTER: &str = "(|(objectClass=organizationalUnit)(objectClass=container))";

/// Where a paged read through the search bases is: base `scope`, paging cookie (base64).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Paging {
    scope: usize,
    paged: String,
}

impl Paging {
    /// The paging cookie to send for the next page of the current base.
    fn cookie(&self) -> Result<Vec<u8>, ConnectorError> {
        B64.decode(&self.paged).map_err(|err| ConnectorError::Config(format!("bad paging cookie in the cursor: {err}")))
    }

    /// After a page: on to the next page of this base, or to the next base when `next_cookie`
    /// is empty. Whether all `bases` are read.
    fn advance(&mut self, next_cookie: Vec<u8>, bases: usize) -> bool {
        if next_cookie.is_empty() {
            self.scope += 1;
            self.paged.clear();
        } else {
            self.paged = B64.encode(next_cookie);
        }
        self.scope >= bases
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct FullCursor {
    at: Paging,
    watermark: Watermark,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeltaCursor {
    nc: usize,
    watermark: Watermark,
    /// The presence check, once the DirSync streams are read and a check is due.
    #[serde(default)]
    presence: Option<PresenceCursor>,
}

/// Where a presence check is, and when it began.
#[derive(Debug, Serialize, Deserialize)]
struct PresenceCursor {
    at: Paging,
    started: i64,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// What the import knows about the directory after its first contact.
struct Directory {
    naming_contexts: Vec<String>,
    schema: Schema,
    /// `%Domain.FQDN%` and friends, for rules.
    parameters: Vec<(String, String)>,
}

/// The pilot group of group-based filtering, as read at the start of the current import.
#[derive(Debug, Clone)]
struct Pilot {
    guid: Vec<u8>,
    /// Its direct members' DNs, lower case.
    members: HashSet<String>,
}

/// The AD import capability.
pub(crate) struct AdImport {
    pub session: Arc<Session>,
    directory: OnceCell<Directory>,
    pilot: std::sync::Mutex<Option<Pilot>>,
}

impl AdImport {
    pub fn new(session: Arc<Session>) -> Self {
        AdImport { session, directory: OnceCell::new(), pilot: std::sync::Mutex::new(None) }
    }

    fn pilot(&self) -> Option<Pilot> {
        self.pilot.lock().map(|pilot| pilot.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Reads the pilot group's members (at the start of every import; by GUID once known, so a
    /// renamed group keeps working).
    async fn refresh_pilot(&self) -> Result<(), ConnectorError> {
        let Some(configured) = &self.session.config.pilot_group else { return Ok(()) };
        let base = match self.pilot() {
            Some(pilot) => format!("<GUID={}>", hex(&pilot.guid)),
            None => configured.clone(),
        };
        let wanted = ["objectGUID".to_string(), "member".to_string()];
        let group = self.session.read(&base, "(objectClass=group)", &wanted).await?;
        let group = group.ok_or_else(|| ConnectorError::Config(format!("pilot_group {configured} does not exist (or is not a group)")))?;
        let guid = raw_values(&group, "objectGUID").first().map(|guid| guid.to_vec()).unwrap_or_default();
        let members = raw_values(&group, "member").iter().map(|dn| String::from_utf8_lossy(dn).to_lowercase()).collect();
        let pilot = Pilot { guid, members };
        tracing::debug!(connector = %self.session.config.id, members = pilot.members.len(), "pilot group read");
        match self.pilot.lock() {
            Ok(mut slot) => *slot = Some(pilot),
            Err(poisoned) => *poisoned.into_inner() = Some(pilot),
        }
        Ok(())
    }

    async fn directory(&self) -> Result<&Directory, ConnectorError> {
        self.directory.get_or_try_init(|| discover(&self.session)).await
    }

    /// Rule parameters: `Domain.FQDN`, `Domain.Netbios`, `Forest.FQDN`, `Forest.Netbios`.
    pub async fn parameters(&self) -> Result<Vec<(String, String)>, ConnectorError> {
        Ok(self.directory().await?.parameters.clone())
    }

    fn filter(&self) -> String {
        let classes: String = self.session.config.object_types().iter().map(|class| format!("(objectClass={class})")).collect();
        // Computers (and managed service accounts) are users to LDAP; they are never synced.
        let filter = format!("(&(|{classes})(!(objectClass=computer)))");
        match self.pilot() {
            // The pilot group's own changes (members added and removed) are needed whatever its type.
            Some(pilot) => format!("(|{filter}(objectGUID={}))", escape_binary(&pilot.guid)),
            None => filter,
        }
    }

    /// The filter of a delta's DirSync search: [`Self::filter`] negated twice, which selects the
    /// same entries. Samba's directory answers an indexed `objectClass` term by reading every
    /// object of the class (a second per 25,000 users) even when DirSync's cookie leaves only a
    /// few changed ones; a negated term is not indexed, so the server walks the changed objects
    /// alone (by uSNChanged) and tests the filter on them. A delta with nothing to return went
    /// from 4.8 s to under 1 s at 110,000 objects (docs/benchmarks.md).
    fn dirsync_filter(&self) -> String {
        format!("(!(!{}))", self.filter())
    }

    fn attributes(&self) -> Vec<String> {
        let mut attributes = self.session.config.requested_attributes(&["objectGUID", "objectClass"]);
        if let Some(size) = self.session.config.range_size {
            // Read linked attributes in explicit ranges (what AD does by itself past MaxValRange).
            for name in attributes.iter_mut() {
                if name.eq_ignore_ascii_case("member") {
                    *name = format!("{name};range=0-{}", size.saturating_sub(1));
                }
            }
        }
        attributes
    }

    /// Search bases: the included OUs, or the naming contexts.
    fn scopes(&self, directory: &Directory) -> Vec<String> {
        self.session.config.search_bases(&directory.naming_contexts)
    }

    fn in_scope(&self, directory: &Directory, dn: &str) -> bool {
        self.session.config.in_scope(&directory.naming_contexts, dn)
            && self.pilot().is_none_or(|pilot| pilot.members.contains(&dn.to_lowercase()))
    }

    /// The configured object type of an entry: its most specific class that is configured.
    fn object_type(&self, entry: &SearchEntry) -> Option<String> {
        let types = self.session.config.object_types();
        let classes = raw_values(entry, "objectClass");
        let last = classes.last()?;
        types.into_iter().find(|configured| configured.as_bytes().eq_ignore_ascii_case(last))
    }

    /// A full-state upsert of a complete entry (ranged values already completed by
    /// [`Session::complete_ranges`]); `None` for objects of types not imported.
    fn upsert(&self, directory: &Directory, entry: SearchEntry) -> Option<ImportChange> {
        let object_type = self.object_type(&entry)?;
        let guid = raw_values(&entry, "objectGUID").first().map(|guid| guid.to_vec())?;
        let dn = entry.dn.clone();
        let attributes = directory.schema.attributes(entry);
        Some(ImportChange::Upsert { anchor: Anchor(guid), dn, object_type, attributes })
    }

    async fn dirsync(
        &self,
        nc: &str,
        cookie: &[u8],
        filter: &str,
        attributes: &[String],
    ) -> Result<(Vec<SearchEntry>, bool, Vec<u8>), ConnectorError> {
        let value = ber::sequence(&[Item::Integer(i64::from(INCREMENTAL_VALUES as i32)), Item::Integer(0), Item::Bytes(cookie.to_vec())]);
        let control = RawControl { ctype: DIRSYNC_OID.into(), crit: true, val: Some(value) };
        let searched = self.session.search(nc, Scope::Subtree, filter, attributes, vec![control]).await;
        let (entries, result) = match searched {
            Ok(found) => found,
            Err(ConnectorError::Rejected { code, message }) if code == "permission-denied" => {
                return Err(ConnectorError::Config(format!(
                    "DirSync on {nc} was refused; the account needs the \"Replicating Directory Changes\" right: {message}"
                )));
            }
            Err(ConnectorError::Rejected { message, .. }) if !cookie.is_empty() => {
                return Err(ConnectorError::WatermarkExpired(format!("the directory refused the stored DirSync cookie: {message}")));
            }
            Err(err) => return Err(err),
        };
        let response = result.ctrls.iter().find(|control| control.1.ctype == DIRSYNC_OID).and_then(|control| control.1.val.as_deref());
        let response = response.ok_or_else(|| ConnectorError::Unavailable(format!("{nc}: the DirSync response control is missing")))?;
        match ber::read_sequence(response).map_err(|err| ConnectorError::Unavailable(format!("DirSync response: {err}")))?.as_slice() {
            [Item::Integer(more), Item::Integer(_), Item::Bytes(cookie)] => Ok((entries, *more != 0, cookie.clone())),
            other => Err(ConnectorError::Unavailable(format!("DirSync response has an unexpected shape: {other:?}"))),
        }
    }

    /// A DirSync cookie for "now" in `nc`, by a DirSync search that matches nothing.
    async fn current_cookie(&self, nc: &str) -> Result<Vec<u8>, ConnectorError> {
        let mut cookie = Vec::new();
        for _ in 0..10_000 {
            let nothing = "(&(objectClass=isthmusNoSuchClass)(!(objectClass=*)))";
            let (_, more, next) = self.dirsync(nc, &cookie, nothing, &["objectGUID".to_string()]).await?;
            cookie = next;
            if !more {
                return Ok(cookie);
            }
        }
        Err(ConnectorError::Unavailable(format!("{nc}: DirSync never finished")))
    }

    async fn full(&self, cursor: Option<&[u8]>) -> Result<ImportPage, ConnectorError> {
        let directory = self.directory().await?;
        let mut state = match cursor {
            Some(bytes) => serde_json::from_slice::<FullCursor>(bytes)
                .map_err(|err| ConnectorError::Config(format!("not a full-import cursor of this connector: {err}")))?,
            None => {
                self.refresh_pilot().await?;
                let mut cookies = Vec::new();
                for nc in &directory.naming_contexts {
                    // A cookie does not depend on the filter: both streams start at "now".
                    let cookie = B64.encode(self.current_cookie(nc).await?);
                    cookies.push((nc.clone(), cookie.clone()));
                    cookies.push((format!("{CONTAINERS}{nc}"), cookie));
                }
                // A full import names every object: it is a presence check of its own.
                let watermark = Watermark { kind: WATERMARK_KIND.into(), cookies, presence_checked: unix_now() };
                FullCursor { at: Paging::default(), watermark }
            }
        };
        let scopes = self.scopes(directory);
        let Some(base) = scopes.get(state.at.scope) else {
            return Ok(ImportPage { changes: Vec::new(), next: None, watermark: Some(encode(&state.watermark)?), complete: false });
        };
        let (entries, next_cookie) =
            self.session.search_page(base, Scope::Subtree, &self.filter(), &self.attributes(), state.at.cookie()?).await?;
        let mut changes = Vec::with_capacity(entries.len());
        for mut entry in entries {
            if !self.in_scope(directory, &entry.dn) {
                continue;
            }
            self.session.complete_ranges(&mut entry).await?;
            if let Some(change) = self.upsert(directory, entry) {
                changes.push(change);
            }
        }
        if state.at.advance(next_cookie, scopes.len()) {
            return Ok(ImportPage { changes, next: None, watermark: Some(encode(&state.watermark)?), complete: false });
        }
        let next = serde_json::to_vec(&state).map_err(|err| ConnectorError::Config(err.to_string()))?;
        Ok(ImportPage { changes, next: Some(next), watermark: None, complete: false })
    }

    async fn delta(&self, watermark: &[u8], cursor: Option<&[u8]>) -> Result<ImportPage, ConnectorError> {
        let directory = self.directory().await?;
        let mut state = match cursor {
            Some(bytes) => serde_json::from_slice::<DeltaCursor>(bytes)
                .map_err(|err| ConnectorError::Config(format!("not a delta-import cursor of this connector: {err}")))?,
            None => {
                let watermark: Watermark =
                    serde_json::from_slice(watermark).ok().filter(|mark: &Watermark| mark.kind == WATERMARK_KIND).ok_or_else(|| {
                        ConnectorError::WatermarkExpired("the stored watermark is not a DirSync watermark of this connector".into())
                    })?;
                let stored: Vec<&str> = watermark.cookies.iter().map(|(stream, _)| stream.as_str()).collect();
                let expected: Vec<String> =
                    directory.naming_contexts.iter().flat_map(|nc| [nc.clone(), format!("{CONTAINERS}{nc}")]).collect();
                if stored != expected.iter().map(String::as_str).collect::<Vec<_>>() {
                    return Err(ConnectorError::WatermarkExpired("the naming contexts changed since the last import".into()));
                }
                self.refresh_pilot().await?;
                DeltaCursor { nc: 0, watermark, presence: None }
            }
        };
        if state.presence.is_some() {
            return self.presence_page(directory, state).await;
        }
        let Some((stream, cookie)) = state.watermark.cookies.get(state.nc).cloned() else {
            return Ok(ImportPage { changes: Vec::new(), next: None, watermark: Some(encode(&state.watermark)?), complete: false });
        };
        let cookie = B64.decode(cookie).map_err(|_| ConnectorError::WatermarkExpired("the stored DirSync cookie is not base64".into()))?;
        let mut changes = Vec::new();
        let (more, next_cookie) = match stream.strip_prefix(CONTAINERS) {
            Some(nc) => {
                let (entries, more, next_cookie) = self.dirsync(nc, &cookie, CONTAINER_FILTER, &["name".to_string()]).await?;
                for entry in &entries {
                    let renamed = !raw_values(entry, "name").is_empty() && raw_values(entry, "objectClass").is_empty();
                    let deleted = raw_values(entry, "isDeleted").first().is_some_and(|flag| flag.eq_ignore_ascii_case(b"TRUE"));
                    if renamed && !deleted {
                        changes.extend(self.subtree(directory, &entry.dn).await?);
                    }
                }
                (more, next_cookie)
            }
            None => {
                let (entries, more, next_cookie) = self.dirsync(&stream, &cookie, &self.dirsync_filter(), &self.attributes()).await?;
                for entry in entries {
                    let pilot =
                        self.pilot().filter(|pilot| raw_values(&entry, "objectGUID").first().is_some_and(|guid| *guid == pilot.guid));
                    if pilot.is_some() {
                        changes.extend(self.pilot_change(directory, &entry).await?);
                    } else if let Some(change) = self.delta_change(directory, entry).await? {
                        changes.push(change);
                    }
                }
                (more, next_cookie)
            }
        };
        state.watermark.cookies[state.nc].1 = B64.encode(next_cookie);
        if !more {
            state.nc += 1;
        }
        let watermark = Some(encode(&state.watermark)?);
        if state.nc >= state.watermark.cookies.len() {
            let now = unix_now();
            let interval = i64::try_from(self.session.config.presence_check_minutes.saturating_mul(60)).unwrap_or(i64::MAX);
            if now.saturating_sub(state.watermark.presence_checked) < interval {
                return Ok(ImportPage { changes, next: None, watermark, complete: false });
            }
            // The DirSync streams are read (and their cookies stored with this page); a
            // presence check follows.
            state.presence = Some(PresenceCursor { at: Paging::default(), started: now });
        }
        let next = serde_json::to_vec(&state).map_err(|err| ConnectorError::Config(err.to_string()))?;
        Ok(ImportPage { changes, next: Some(next), watermark, complete: false })
    }

    /// One page of a presence check: every in-scope object's objectGUID and DN, as modifies
    /// without changes. The last page is marked `complete`, so the runner deletes what the check
    /// did not name (a deletion DirSync did not return, e.g. to a least-privileged account)
    /// and only then stores the watermark with the check's time.
    async fn presence_page(&self, directory: &Directory, mut state: DeltaCursor) -> Result<ImportPage, ConnectorError> {
        let scopes = self.scopes(directory);
        let Some(presence) = state.presence.as_mut() else {
            return Err(ConnectorError::Config("not a presence-check cursor".into()));
        };
        let Some(base) = scopes.get(presence.at.scope) else {
            return Err(ConnectorError::Config("a presence-check cursor past the last scope".into()));
        };
        let wanted = ["objectGUID".to_string(), "objectClass".to_string()];
        let (entries, next_cookie) = self.session.search_page(base, Scope::Subtree, &self.filter(), &wanted, presence.at.cookie()?).await?;
        let mut changes = Vec::with_capacity(entries.len());
        for entry in entries {
            if !self.in_scope(directory, &entry.dn) || self.object_type(&entry).is_none() {
                continue;
            }
            if let Some(guid) = raw_values(&entry, "objectGUID").first() {
                changes.push(ImportChange::Modify { anchor: Anchor(guid.to_vec()), dn: entry.dn.clone(), changes: Vec::new() });
            }
        }
        if presence.at.advance(next_cookie, scopes.len()) {
            state.watermark.presence_checked = presence.started;
            return Ok(ImportPage { changes, next: None, watermark: Some(encode(&state.watermark)?), complete: true });
        }
        let next = serde_json::to_vec(&state).map_err(|err| ConnectorError::Config(err.to_string()))?;
        Ok(ImportPage { changes, next: Some(next), watermark: None, complete: false })
    }

    /// Everything under a renamed or moved container, as it is now: upserts for objects in
    /// scope, deletes for objects the move took out of scope.
    async fn subtree(&self, directory: &Directory, base: &str) -> Result<Vec<ImportChange>, ConnectorError> {
        let mut changes = Vec::new();
        for mut entry in self.session.search_all(base, Scope::Subtree, &self.filter(), &self.attributes()).await? {
            if self.in_scope(directory, &entry.dn) {
                self.session.complete_ranges(&mut entry).await?;
                changes.extend(self.upsert(directory, entry));
            } else if let Some(guid) = raw_values(&entry, "objectGUID").first() {
                changes.push(ImportChange::Delete { anchor: Anchor(guid.to_vec()) });
            }
        }
        Ok(changes)
    }

    /// The pilot group changed: members added come in whole, members removed leave.
    async fn pilot_change(&self, directory: &Directory, entry: &SearchEntry) -> Result<Vec<ImportChange>, ConnectorError> {
        let mut changes = Vec::new();
        let keys: Vec<&String> = entry.attrs.keys().chain(entry.bin_attrs.keys()).collect();
        for key in keys {
            let (added, removed) = match parse_range(key) {
                Some((name, (1, Some(1)))) if name.eq_ignore_ascii_case("member") => (true, false),
                Some((name, (0, Some(0)))) if name.eq_ignore_ascii_case("member") => (false, true),
                // The whole list (a new group, or a server without incremental values).
                None if key.eq_ignore_ascii_case("member") => (true, false),
                _ => continue,
            };
            for dn in raw_values(entry, key) {
                let dn = String::from_utf8_lossy(dn).into_owned();
                let Some(found) = self.session.read(&dn, &self.filter(), &self.attributes()).await? else { continue };
                if added && self.in_scope(directory, &found.dn) {
                    changes.extend(self.upsert(directory, found));
                } else if removed && let Some(guid) = raw_values(&found, "objectGUID").first() {
                    changes.push(ImportChange::Delete { anchor: Anchor(guid.to_vec()) });
                }
            }
        }
        Ok(changes)
    }

    async fn delta_change(&self, directory: &Directory, mut entry: SearchEntry) -> Result<Option<ImportChange>, ConnectorError> {
        let Some(guid) = raw_values(&entry, "objectGUID").first().map(|guid| guid.to_vec()) else {
            tracing::warn!(dn = %entry.dn, "DirSync entry without objectGUID; skipped");
            return Ok(None);
        };
        let anchor = Anchor(guid.clone());
        if raw_values(&entry, "isDeleted").first().is_some_and(|flag| flag.eq_ignore_ascii_case(b"TRUE")) {
            return Ok(Some(ImportChange::Delete { anchor }));
        }
        let created = !raw_values(&entry, "objectClass").is_empty();
        if created || !raw_values(&entry, "name").is_empty() {
            // New (DirSync's entry holds replicated attributes only, some in internal forms), or
            // renamed/moved: read the object whole, and decide scope by where it is now.
            let base = format!("<GUID={}>", hex(&guid));
            return Ok(match self.session.read(&base, &self.filter(), &self.attributes()).await? {
                Some(full) if self.in_scope(directory, &full.dn) => self.upsert(directory, full).or(Some(ImportChange::Delete { anchor })),
                // Created out of scope: nothing to say. Moved out of scope (or gone since): a delete.
                _ if created => None,
                _ => Some(ImportChange::Delete { anchor }),
            });
        }
        if !self.in_scope(directory, &entry.dn) {
            return Ok(None);
        }
        for internal in ["objectGUID", "parentGUID", "instanceType"] {
            take_values(&mut entry, internal);
        }
        let dn = entry.dn.clone();
        let mut changes = Vec::new();
        let keys: Vec<String> = entry.attrs.keys().chain(entry.bin_attrs.keys()).cloned().collect();
        for key in keys {
            let raw = take_values(&mut entry, &key);
            if !directory.schema.imported(&key) {
                continue;
            }
            let (name, change): (&str, MakeChange) = match parse_range(&key) {
                Some((name, (1, Some(1)))) => (name, AttrChange::Add),
                Some((name, (0, Some(0)))) => (name, AttrChange::Delete),
                Some(_) => {
                    tracing::warn!(dn, key, "unexpected ranged attribute in a DirSync entry; skipped");
                    continue;
                }
                None if raw.is_empty() => {
                    changes.push(AttrChange::Clear(key.clone()));
                    continue;
                }
                None => (key.as_str(), AttrChange::Replace),
            };
            let values = raw.into_iter().map(|value| directory.schema.value(name, value)).collect();
            changes.push(change(name.to_string(), values));
        }
        Ok((!changes.is_empty()).then_some(ImportChange::Modify { anchor, dn, changes }))
    }
}

impl Import for AdImport {
    fn full_page<'a>(&'a self, cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>> {
        Box::pin(self.full(cursor))
    }

    fn delta_page<'a>(&'a self, watermark: &'a [u8], cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>> {
        Box::pin(self.delta(watermark, cursor))
    }
}

/// Bytes as an LDAP filter value (`\\01\\ab…`).
fn escape_binary(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("\\{byte:02x}")).collect()
}

fn encode(watermark: &Watermark) -> Result<Vec<u8>, ConnectorError> {
    serde_json::to_vec(watermark).map_err(|err| ConnectorError::Config(err.to_string()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `DC=corp,DC=example,DC=test` → `corp.example.test`.
fn dns_name(dn: &str) -> String {
    Dn::parse(dn)
        .map(|dn| {
            dn.rdns()
                .iter()
                .flat_map(|rdn| rdn.pairs.iter())
                .filter(|(kind, _)| kind.eq_ignore_ascii_case("DC"))
                .map(|(_, value)| value.as_str())
                .collect::<Vec<_>>()
                .join(".")
        })
        .unwrap_or_default()
}

/// Reads the rootDSE (naming contexts), the domains' NetBIOS names and the schema (attribute syntaxes).
async fn discover(session: &Session) -> Result<Directory, ConnectorError> {
    let wanted: Vec<String> =
        ["defaultNamingContext", "schemaNamingContext", "configurationNamingContext", "rootDomainNamingContext"].map(String::from).to_vec();
    let root = session.read("", "(objectClass=*)", &wanted).await?.ok_or_else(|| ConnectorError::Unavailable("no rootDSE".into()))?;
    let first = |name: &str| raw_values(&root, name).first().map(|value| String::from_utf8_lossy(value).into_owned());
    let default_nc =
        first("defaultNamingContext").ok_or_else(|| ConnectorError::Config("the rootDSE names no defaultNamingContext".into()))?;
    let naming_contexts =
        if session.config.naming_contexts.is_empty() { vec![default_nc.clone()] } else { session.config.naming_contexts.clone() };

    let mut parameters = Vec::new();
    let forest = first("rootDomainNamingContext").unwrap_or_else(|| default_nc.clone());
    let domain = naming_contexts.first().cloned().unwrap_or(default_nc);
    parameters.push(("Domain.FQDN".to_string(), dns_name(&domain)));
    parameters.push(("Forest.FQDN".to_string(), dns_name(&forest)));
    if let Some(configuration) = first("configurationNamingContext") {
        for (parameter, nc) in [("Domain.Netbios", &domain), ("Forest.Netbios", &forest)] {
            let filter = format!("(&(objectClass=crossRef)(nCName={}))", ldap3::ldap_escape(nc));
            let partitions = format!("CN=Partitions,{configuration}");
            let (entries, _) = session.search(&partitions, Scope::OneLevel, &filter, &["nETBIOSName".to_string()], Vec::new()).await?;
            if let Some(name) = entries.first().and_then(|entry| raw_values(entry, "nETBIOSName").first().map(|name| name.to_vec())) {
                parameters.push((parameter.to_string(), String::from_utf8_lossy(&name).into_owned()));
            }
        }
    }

    let mut schema = Schema::builtin();
    // Replicated, but an ACL is not identity data, and DirSync returns it in another form.
    schema.skip("nTSecurityDescriptor");
    if let Some(schema_nc) = first("schemaNamingContext") {
        let attributes = ["lDAPDisplayName", "attributeSyntax", "systemFlags", "linkID"].map(String::from);
        for entry in &session.search_all(&schema_nc, Scope::OneLevel, "(objectClass=attributeSchema)", &attributes).await? {
            if let (Some(name), Some(syntax)) = (raw_values(entry, "lDAPDisplayName").first(), raw_values(entry, "attributeSyntax").first())
            {
                let name = String::from_utf8_lossy(name);
                schema.set_ad(&name, &String::from_utf8_lossy(syntax));
                let number = |attribute: &str| {
                    raw_values(entry, attribute).first().and_then(|value| std::str::from_utf8(value).ok()?.trim().parse::<i64>().ok())
                };
                schema.set_ad_flags(&name, number("systemFlags").unwrap_or(0), number("linkID"));
            }
        }
    }
    tracing::debug!(connector = %session.config.id, attributes = schema.len(), "schema read");
    Ok(Directory { naming_contexts, schema, parameters })
}
