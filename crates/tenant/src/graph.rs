//! The Graph-compatible directory API under `/v1.0`: users, groups and organizational contacts
//! (list with `$top`/`$select` and absolute `@odata.nextLink` paging, get — users also by
//! userPrincipalName —, create, update, delete), group members (`members`, `members/$ref`),
//! and delta queries (`users/delta()`, `groups/delta()` with `members@delta`).
//!
//! Every write is checked before anything is stored: unknown properties, wrong JSON types,
//! missing required properties, a UPN whose domain is not the tenant's, a weak password — each
//! is a 400 OData error naming the problem, and nothing changes.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::db::{self, Credential, Kind};
use crate::odata::GraphError;
use crate::permissions::Area;
use crate::{Access, AppState};

/// Properties a user has, with their JSON type; `id` is assigned by the service.
const USER_PROPERTIES: &[(&str, Type)] = &[
    ("accountEnabled", Type::Bool),
    ("displayName", Type::Str(256)),
    ("givenName", Type::Str(64)),
    ("surname", Type::Str(64)),
    ("mail", Type::Str(320)),
    ("mailNickname", Type::Str(64)),
    ("userPrincipalName", Type::Str(1024)),
    ("jobTitle", Type::Str(128)),
    ("department", Type::Str(64)),
    ("companyName", Type::Str(64)),
    ("employeeId", Type::Str(16)),
    ("mobilePhone", Type::Str(64)),
    ("officeLocation", Type::Str(128)),
    ("usageLocation", Type::Str(2)),
    ("preferredLanguage", Type::Str(16)),
    ("businessPhones", Type::StrList(64)),
    ("otherMails", Type::StrList(320)),
    ("proxyAddresses", Type::StrList(1123)),
    ("onPremisesImmutableId", Type::Str(60)),
    ("onPremisesSyncEnabled", Type::Bool),
    ("onPremisesSamAccountName", Type::Str(256)),
    ("onPremisesDomainName", Type::Str(256)),
    ("onPremisesSecurityIdentifier", Type::Str(256)),
    ("onPremisesDistinguishedName", Type::Str(2048)),
    ("onPremisesLastSyncDateTime", Type::Str(64)),
    // The manager's object id (Graph sets it through `manager/$ref`; kept as a property here).
    ("manager", Type::Str(64)),
    ("onPremisesUserPrincipalName", Type::Str(1024)),
    ("onPremisesProvisioningErrors", Type::Objects),
    // `DisablePasswordExpiration` (set by every hash sync unless the cloud policy applies).
    ("passwordPolicies", Type::Str(256)),
    // When the password last changed (for synced users: when its hash arrived).
    ("lastPasswordChangeDateTime", Type::Str(64)),
];

const GROUP_PROPERTIES: &[(&str, Type)] = &[
    ("displayName", Type::Str(256)),
    ("description", Type::Str(1024)),
    ("mailEnabled", Type::Bool),
    ("mailNickname", Type::Str(64)),
    ("securityEnabled", Type::Bool),
    ("groupTypes", Type::StrList(64)),
    ("mail", Type::Str(320)),
    ("proxyAddresses", Type::StrList(1123)),
    ("visibility", Type::Str(16)),
    ("onPremisesImmutableId", Type::Str(60)),
    ("onPremisesSyncEnabled", Type::Bool),
    ("onPremisesSamAccountName", Type::Str(256)),
    ("onPremisesDomainName", Type::Str(256)),
    ("onPremisesSecurityIdentifier", Type::Str(256)),
    ("onPremisesLastSyncDateTime", Type::Str(64)),
    ("onPremisesProvisioningErrors", Type::Objects),
];

const CONTACT_PROPERTIES: &[(&str, Type)] = &[
    ("displayName", Type::Str(256)),
    ("givenName", Type::Str(64)),
    ("surname", Type::Str(64)),
    ("mail", Type::Str(320)),
    ("mailNickname", Type::Str(64)),
    ("companyName", Type::Str(64)),
    ("department", Type::Str(64)),
    ("jobTitle", Type::Str(128)),
    ("proxyAddresses", Type::StrList(1123)),
    ("onPremisesImmutableId", Type::Str(60)),
    ("onPremisesSyncEnabled", Type::Bool),
    ("onPremisesLastSyncDateTime", Type::Str(64)),
    ("onPremisesProvisioningErrors", Type::Objects),
];

/// One kind of directory object as the API shows it.
pub struct Resource {
    kind: Kind,
    /// The collection's path segment: `users`.
    segment: &'static str,
    /// `microsoft.graph.user`.
    odata_type: &'static str,
    /// For messages: `User`.
    noun: &'static str,
    properties: &'static [(&'static str, Type)],
    required: &'static [&'static str],
    /// What reading and writing it needs.
    read: Area,
    write: Area,
}

/// Users.
pub static USERS: Resource = Resource {
    kind: Kind::User,
    segment: "users",
    odata_type: "microsoft.graph.user",
    noun: "User",
    properties: USER_PROPERTIES,
    required: &["accountEnabled", "displayName", "mailNickname", "userPrincipalName"],
    read: Area::UsersRead,
    write: Area::UsersWrite,
};

/// Groups.
pub static GROUPS: Resource = Resource {
    kind: Kind::Group,
    segment: "groups",
    odata_type: "microsoft.graph.group",
    noun: "Group",
    properties: GROUP_PROPERTIES,
    required: &["displayName", "mailEnabled", "mailNickname", "securityEnabled"],
    read: Area::GroupsRead,
    write: Area::GroupsWrite,
};

/// Organizational contacts.
pub static CONTACTS: Resource = Resource {
    kind: Kind::Contact,
    segment: "contacts",
    odata_type: "microsoft.graph.orgContact",
    noun: "Contact",
    properties: CONTACT_PROPERTIES,
    required: &["displayName"],
    read: Area::ContactsRead,
    write: Area::ContactsWrite,
};

fn resource_of(kind: Kind) -> &'static Resource {
    match kind {
        Kind::User => &USERS,
        Kind::Group => &GROUPS,
        Kind::Contact => &CONTACTS,
    }
}

impl Resource {
    /// The collection's path segment.
    pub fn segment(&self) -> &'static str {
        self.segment
    }

    /// The OpenAPI schema name (`User`, `Group`, `Contact`).
    pub fn schema_name(&self) -> &'static str {
        self.noun
    }

    /// Properties required on create.
    pub fn required_properties(&self) -> &'static [&'static str] {
        self.required
    }

    /// Each property with its OpenAPI type.
    pub fn property_types(&self) -> Vec<(&'static str, Value)> {
        self.properties
            .iter()
            .map(|(name, kind)| {
                let schema = match kind {
                    Type::Bool => json!({"type": "boolean", "nullable": true}),
                    Type::Str(max) => json!({"type": "string", "nullable": true, "maxLength": max}),
                    Type::StrList(max) => json!({"type": "array", "items": {"type": "string", "maxLength": max}, "maxItems": MAX_ITEMS}),
                    Type::Objects => json!({"type": "array", "items": {"type": "object"}, "readOnly": true}),
                };
                (*name, schema)
            })
            .collect()
    }

    /// Whether the collection has a delta function.
    pub fn has_delta(&self) -> bool {
        true
    }

    fn property(&self, name: &str) -> Option<Type> {
        self.properties.iter().find(|(known, _)| *known == name).map(|(_, kind)| *kind)
    }
}

/// A property's JSON type; strings with the most characters Graph takes (per value, for lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Bool,
    Str(usize),
    StrList(usize),
    /// Read-only structured values (`onPremisesProvisioningErrors`).
    Objects,
}

/// Most values in one list property.
const MAX_ITEMS: usize = 1000;

impl Type {
    fn describe(self) -> &'static str {
        match self {
            Type::Bool => "true, false or null",
            Type::Str(_) => "a string or null",
            Type::StrList(_) => "an array of strings",
            Type::Objects => "nothing (read-only)",
        }
    }
}

/// What is over Graph's limits in a value of the right type, if anything.
fn too_long(kind: Type, value: &Value) -> Option<String> {
    let over = |text: &str, max: usize| text.chars().nth(max).is_some();
    match (kind, value) {
        (Type::Str(max), Value::String(text)) if over(text, max) => Some(format!("longer than {max} characters")),
        (Type::StrList(_), Value::Array(items)) if items.len() > MAX_ITEMS => Some(format!("more than {MAX_ITEMS} values")),
        (Type::StrList(max), Value::Array(items)) if items.iter().filter_map(Value::as_str).any(|text| over(text, max)) => {
            Some(format!("a value longer than {max} characters"))
        }
        _ => None,
    }
}

fn type_ok(kind: Type, value: &Value) -> bool {
    match kind {
        Type::Bool => value.is_boolean() || value.is_null(),
        Type::Str(_) => value.is_string() || value.is_null(),
        Type::StrList(_) => value.as_array().is_some_and(|items| items.iter().all(Value::is_string)),
        Type::Objects => false,
    }
}

/// `$top`, `$skiptoken`, `$select`, `$deltatoken`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(rename = "$top")]
    top: Option<String>,
    #[serde(rename = "$skiptoken")]
    skiptoken: Option<String>,
    #[serde(rename = "$select")]
    select: Option<String>,
    #[serde(rename = "$deltatoken")]
    deltatoken: Option<String>,
    #[serde(rename = "$filter")]
    filter: Option<String>,
    /// Every other parameter, so that an unsupported query option is refused, not ignored.
    #[serde(flatten)]
    other: std::collections::BTreeMap<String, String>,
}

impl ListQuery {
    /// Refuses query options this request does not serve (`$orderby`, `$count`, `$expand`,
    /// `$search`, …, or a supported one where it does not apply): a client must not get results
    /// it did not ask for without knowing.
    fn only(&self, allowed: &[&str]) -> Result<(), GraphError> {
        let given = [("$top", self.top.is_some()), ("$skiptoken", self.skiptoken.is_some()), ("$select", self.select.is_some())]
            .into_iter()
            .chain([("$deltatoken", self.deltatoken.is_some()), ("$filter", self.filter.is_some())])
            .filter(|(_, present)| *present)
            .map(|(name, _)| name)
            .chain(self.other.keys().map(String::as_str).filter(|name| name.starts_with('$')));
        for name in given {
            if !allowed.contains(&name) {
                return Err(GraphError::new(
                    StatusCode::BAD_REQUEST,
                    "Request_UnsupportedQuery",
                    format!("The query option '{name}' is not supported on this request."),
                ));
            }
        }
        Ok(())
    }
}

/// The `https://host[:port]` clients reached us at, for absolute links.
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get("host").and_then(|host| host.to_str().ok()).unwrap_or("127.0.0.1");
    format!("https://{host}")
}

fn selection(resource: &Resource, select: Option<&str>) -> Result<Option<Vec<String>>, GraphError> {
    let Some(select) = select else { return Ok(None) };
    let mut names = Vec::new();
    for name in select.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        if name != "id" && resource.property(name).is_none() {
            return Err(GraphError::bad_request(format!("Could not find a property named '{name}' on type '{}'.", resource.odata_type)));
        }
        names.push(name.to_string());
    }
    Ok(Some(names))
}

fn project(resource: &Resource, object: &Map<String, Value>, select: Option<&[String]>) -> Value {
    let mut out = Map::new();
    match select {
        None => {
            out.insert("id".into(), object.get("id").cloned().unwrap_or(Value::Null));
            for (name, kind) in resource.properties {
                let empty = if matches!(kind, Type::StrList(_) | Type::Objects) { json!([]) } else { Value::Null };
                out.insert((*name).into(), object.get(*name).cloned().unwrap_or(empty));
            }
        }
        Some(names) => {
            for name in names {
                out.insert(name.clone(), object.get(name).cloned().unwrap_or(Value::Null));
            }
        }
    }
    Value::Object(out)
}

fn page_size(top: Option<&str>) -> Result<usize, GraphError> {
    match top {
        None => Ok(100),
        Some(text) => match text.parse::<usize>() {
            Ok(top) if (1..=999).contains(&top) => Ok(top),
            _ => Err(GraphError::bad_request(format!("Invalid value '{text}' for $top: give 1 to 999."))),
        },
    }
}

/// `GET /v1.0/{collection}`.
pub async fn list(
    resource: &'static Resource,
    state: AppState,
    access: Access,
    headers: HeaderMap,
    query: ListQuery,
) -> Result<Response, GraphError> {
    access.require(resource.read)?;
    query.only(&["$top", "$skiptoken", "$select", "$filter"])?;
    let top = page_size(query.top.as_deref())?;
    let select = selection(resource, query.select.as_deref())?;
    let after = match &query.skiptoken {
        None => None,
        Some(token) => Some(decode_skiptoken(token)?),
    };
    let filter = match &query.filter {
        None => None,
        Some(text) => Some(
            crate::filter::parse(text, &|name| {
                resource.property(name).map(|kind| matches!(kind, Type::StrList(_))).or((name == "id").then_some(false))
            })
            .map_err(|err| GraphError::bad_request(err.to_string()))?,
        ),
    };
    let kind = resource.kind;
    let mut page = state
        .db
        .read(move |conn| {
            db::list(conn, kind, after.as_deref(), top + 1, &|object| filter.as_ref().is_none_or(|filter| filter.matches(object)))
        })
        .await?;
    let more = page.len() > top;
    page.truncate(top);
    let values: Vec<Value> = page.iter().map(|object| project(resource, object, select.as_deref())).collect();
    let base = base_url(&headers);
    let mut body = json!({"@odata.context": format!("{base}/v1.0/$metadata#{}", resource.segment), "value": values});
    if more && let Some(last) = page.last().and_then(|object| object.get("id")).and_then(Value::as_str) {
        let mut link = format!("{base}/v1.0/{}?$top={top}&$skiptoken={}", resource.segment, encode_token(last));
        for (name, value) in [("$select", &query.select), ("$filter", &query.filter)] {
            if let Some(value) = value {
                link.push_str(&format!("&{name}={}", percent_encode(value)));
            }
        }
        body["@odata.nextLink"] = Value::String(link);
    }
    Ok(Json(body).into_response())
}

/// Percent-encodes a query value for a link.
pub(crate) fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn encode_token(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_skiptoken(token: &str) -> Result<String, GraphError> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| GraphError::bad_request("Invalid $skiptoken."))
}

/// Looks an object up by id (users also by userPrincipalName); 404 when missing.
async fn find(state: &AppState, resource: &Resource, key: &str) -> Result<Map<String, Value>, GraphError> {
    let (kind, lookup) = (resource.kind, key.to_string());
    let found = state.db.read(move |conn| db::get(conn, kind, &lookup)).await?;
    found.ok_or_else(|| GraphError::not_found(key))
}

/// `GET /v1.0/{collection}/{key}`.
pub async fn get_one(
    resource: &'static Resource,
    state: AppState,
    access: Access,
    headers: HeaderMap,
    key: String,
    query: ListQuery,
) -> Result<Response, GraphError> {
    access.require(resource.read)?;
    query.only(&["$select"])?;
    let select = selection(resource, query.select.as_deref())?;
    let object = find(&state, resource, &key).await?;
    let mut body = project(resource, &object, select.as_deref());
    body["@odata.context"] = Value::String(format!("{}/v1.0/$metadata#{}/$entity", base_url(&headers), resource.segment));
    Ok(Json(body).into_response())
}

/// A request body, or Graph's error when it could not be read (too large: 413).
pub type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// Reads a request body as a JSON object, with Graph's errors for anything else.
pub(crate) fn body_object(body: Body) -> Result<Map<String, Value>, GraphError> {
    let body = body.map_err(|rejection| GraphError {
        status: rejection.status(),
        code: if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE { "Request_EntityTooLarge" } else { "Request_BadRequest" },
        message: rejection.body_text(),
        retry_after: None,
    })?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GraphError::bad_request("The request body must be a JSON object.")),
        Err(err) => Err(GraphError::bad_request(format!("Unable to read JSON request payload: {err}"))),
    }
}

/// Checks the properties of a create or update; returns a user's password profile, if any.
/// `synced`: written by the sync service, which (as Entra's sync endpoint does) may carry values
/// on-premises allows and Graph's own clients may not, such as a space in a group's mailNickname.
fn check_properties(
    resource: &Resource,
    state: &AppState,
    body: &mut Map<String, Value>,
    synced: bool,
) -> Result<Option<(String, bool)>, GraphError> {
    if let Some(kind) = body.remove("@odata.type")
        && kind.as_str().map(|kind| kind.trim_start_matches('#')) != Some(resource.odata_type)
    {
        return Err(GraphError::bad_request(format!("A resource of type {kind} cannot be written as a {}.", resource.odata_type)));
    }
    let password = if resource.kind == Kind::User { password_profile(body)? } else { None };
    for (name, value) in body.iter() {
        match resource.property(name) {
            None if name == "id" => return Err(GraphError::bad_request("Property 'id' is read-only.")),
            None => return Err(GraphError::bad_request(format!("Invalid property '{name}'."))),
            Some(Type::Objects) => return Err(GraphError::bad_request(format!("Property '{name}' is read-only."))),
            Some(kind) if !type_ok(kind, value) => {
                return Err(GraphError::bad_request(format!("Invalid value for property '{name}': expected {}.", kind.describe())));
            }
            Some(kind) if let Some(why) = too_long(kind, value) => {
                return Err(GraphError::bad_request(format!(
                    "Invalid value specified for property '{name}' of resource '{}': {why}.",
                    resource.noun
                )));
            }
            Some(_) => {}
        }
    }
    // The sync service's UPNs are taken as they come: unverified suffixes and duplicates are
    // handled by `resilience`, as Entra does service-side.
    if let Some(upn) = body.get("userPrincipalName").and_then(Value::as_str)
        && !synced
    {
        check_upn(state, upn)?;
    }
    if let Some(nickname) = body.get("mailNickname").and_then(Value::as_str)
        && (nickname.is_empty()
            || nickname.len() > 64
            || nickname.chars().any(|c| (c.is_whitespace() && !synced) || "@()\\[]\";:<>,".contains(c)))
    {
        return Err(GraphError::bad_request(format!(
            "Invalid value specified for property 'mailNickname' of resource '{}': {nickname:?}.",
            resource.noun
        )));
    }
    Ok(password)
}

fn password_profile(body: &mut Map<String, Value>) -> Result<Option<(String, bool)>, GraphError> {
    match body.remove("passwordProfile") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(mut profile)) => {
            let password = match profile.remove("password") {
                Some(Value::String(password)) => password,
                _ => return Err(GraphError::bad_request("passwordProfile.password must be a string.")),
            };
            let force = profile.remove("forceChangePasswordNextSignIn").and_then(|value| value.as_bool()).unwrap_or(true);
            profile.remove("forceChangePasswordNextSignInWithMfa");
            if let Some(unknown) = profile.keys().next() {
                return Err(GraphError::bad_request(format!("Invalid property '{unknown}' in passwordProfile.")));
            }
            check_password(&password)?;
            Ok(Some((password, force)))
        }
        Some(_) => Err(GraphError::bad_request("passwordProfile must be an object.")),
    }
}

/// A UPN is `local@domain`, the local part of allowed characters, the domain one of the tenant's.
fn check_upn(state: &AppState, upn: &str) -> Result<(), GraphError> {
    let bad = || GraphError::bad_request(format!("Invalid value specified for property 'userPrincipalName' of resource 'User': {upn:?}."));
    let Some((local, domain)) = upn.rsplit_once('@') else { return Err(bad()) };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c.is_ascii_alphanumeric() || "'.-_!#^~&+".contains(c));
    if !local_ok {
        return Err(bad());
    }
    if !state.domains().iter().any(|known| known.eq_ignore_ascii_case(domain)) {
        return Err(GraphError::bad_request(format!(
            "The domain portion of the userPrincipalName property is invalid. You must use one of the verified domain names in your organization: {domain:?}."
        )));
    }
    Ok(())
}

/// Entra's rule: 8 to 256 characters, three of lower case, upper case, digits and symbols.
fn check_password(password: &str) -> Result<(), GraphError> {
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ];
    let length = password.chars().count();
    if !(8..=256).contains(&length) || classes.iter().filter(|class| **class).count() < 3 {
        return Err(GraphError::bad_request(
            "The specified password does not comply with password complexity requirements: 8 to 256 characters, and three of lower case, upper case, digits and symbols.",
        ));
    }
    Ok(())
}

/// `POST /v1.0/{collection}`.
pub async fn create(
    resource: &'static Resource,
    state: AppState,
    access: Access,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GraphError> {
    access.require(resource.write)?;
    state.admit_write()?;
    let mut object = body_object(body)?;
    let password = check_properties(resource, &state, &mut object, access.is_sync())?;
    for required in resource.required {
        if object.get(*required).is_none_or(Value::is_null) {
            return Err(GraphError::bad_request(format!(
                "Property '{required}' is required when creating the {}.",
                resource.noun.to_lowercase()
            )));
        }
    }
    // An administrator may give a cloud user an onPremisesImmutableId (to prepare a hard match,
    // or for a federated domain); only the sync service creates objects synced from on-premises.
    if object.get("onPremisesSyncEnabled").and_then(Value::as_bool) == Some(true) && !access.is_sync() {
        return Err(GraphError::bad_request("Only the directory synchronization service can create objects synced from on-premises."));
    }
    // The sync service creates synced objects only: marked as such, and without a password
    // (passwords reach synced users by password hash sync, never as a cloud password).
    if access.is_sync() {
        if password.is_some() {
            return Err(GraphError::bad_request("The directory synchronization service does not set passwords: password hash sync does."));
        }
        if let Some(refusal) = crate::resilience::sync_patch_refusal(&Map::new(), &object) {
            return Err(GraphError::bad_request(refusal));
        }
        object.insert("onPremisesSyncEnabled".into(), Value::Bool(true));
    }
    let synced = access.is_sync();
    if resource.kind == Kind::User && password.is_none() && !synced {
        return Err(GraphError::bad_request("Property 'passwordProfile' is required when creating a cloud-only user."));
    }
    let id = crate::crypto::new_guid();
    object.insert("id".into(), Value::String(id.clone()));
    let iterations = state.password_iterations;
    // PBKDF2 takes a good part of a core for a while: off the async threads.
    let credential = match password {
        Some((password, _)) => {
            let password = zeroize::Zeroizing::new(password);
            let hashed = tokio::task::spawn_blocking(move || crate::crypto::password_hash(&password, iterations)).await;
            let (salt, hash) = hashed.map_err(|err| GraphError::internal(&err))?;
            Some(Credential { salt, hash, iterations })
        }
        None => None,
    };
    let sync = access.is_sync();
    if sync {
        let write = object.clone();
        crate::resilience::remember_wanted(&write, &mut object);
    }
    let (mut stored, kind, domains, policy) = (object.clone(), resource.kind, state.resilience_domains(), state.effective_match_policy());
    let outcome = state
        .db
        .call(move |conn| {
            if sync {
                match crate::resilience::find_match(conn, kind, &stored, policy)? {
                    crate::resilience::Match::Refused(why) => return Ok(Err(why)),
                    crate::resilience::Match::Existing(mut existing) => {
                        // Hard or soft match: the existing object becomes the synced one.
                        let existing_id = existing.get("id").cloned().unwrap_or(Value::Null);
                        stored.insert("id".into(), existing_id);
                        for (name, value) in stored {
                            existing.insert(name, value);
                        }
                        crate::resilience::adjust(conn, kind, &mut existing, &domains)?;
                        db::update(conn, kind, &existing)?;
                        return Ok(Ok((existing, true)));
                    }
                    crate::resilience::Match::None => crate::resilience::adjust(conn, kind, &mut stored, &domains)?,
                }
            } else if let Some(why) = anchor_taken(conn, kind, &stored)? {
                return Ok(Err(why));
            }
            db::insert(conn, kind, &stored, credential.as_ref())?;
            Ok(Ok((stored, false)))
        })
        .await?;
    let (object, matched) = outcome.map_err(GraphError::bad_request)?;
    let id = object.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let activity = if matched { format!("match {} (sync takes over)", resource.noun) } else { format!("create {}", resource.noun) };
    state.record("Directory", activity, access.caller.clone(), id.clone(), "success").await;
    let mut body = project(resource, &object, None);
    body["@odata.context"] = Value::String(format!("{}/v1.0/$metadata#{}/$entity", base_url(&headers), resource.segment));
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Another live object's hold on this object's onPremisesImmutableId, as Graph words it.
fn anchor_taken(conn: &mut dyn crate::sql::Sql, kind: Kind, object: &Map<String, Value>) -> Result<Option<String>, db::DbError> {
    let Some(anchor) = object.get("onPremisesImmutableId").and_then(Value::as_str) else { return Ok(None) };
    let id = object.get("id").and_then(Value::as_str).unwrap_or_default();
    let others = db::find(conn, kind, db::Lookup::ImmutableId(anchor))?;
    Ok(others
        .iter()
        .any(|other| other.get("id").and_then(Value::as_str) != Some(id))
        .then(|| format!("Another object with the same value for property onPremisesImmutableId already exists: {anchor}")))
}

/// Most references in one `members@odata.bind` (Graph's limit).
const MAX_BIND: usize = 20;

/// Properties cloud admins may still change on an object synced from on-premises.
const CLOUD_MASTERED: &[&str] = &["usageLocation", "preferredLanguage", "otherMails", "mobilePhone", "businessPhones"];

/// Entra's answer when a cloud admin edits what on-premises masters.
fn synced_refusal() -> GraphError {
    GraphError::bad_request(
        "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration.",
    )
}

/// `PATCH /v1.0/{collection}/{key}`.
pub async fn update(resource: &'static Resource, state: AppState, access: Access, key: String, body: Body) -> Result<Response, GraphError> {
    access.require(resource.write)?;
    state.admit_write()?;
    let mut patch = body_object(body)?;
    // Members added with the update (`members@odata.bind`, Graph's bulk add: up to 20).
    let bind = match patch.remove("members@odata.bind") {
        None => Vec::new(),
        Some(_) if resource.kind != Kind::Group => return Err(GraphError::bad_request("Invalid property 'members@odata.bind'.")),
        Some(Value::Array(references)) if references.len() <= MAX_BIND => references
            .iter()
            .map(|reference| {
                reference
                    .as_str()
                    .map(|url| url.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string())
                    .ok_or_else(|| GraphError::bad_request("members@odata.bind holds directoryObjects URLs."))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(GraphError::bad_request(format!("members@odata.bind takes an array of at most {MAX_BIND} references."))),
    };
    // An administrator's password reset: hashed here, stored with the update in one transaction.
    let password = check_properties(resource, &state, &mut patch, access.is_sync())?;
    if access.is_sync() && password.is_some() {
        return Err(GraphError::bad_request("The directory synchronization service does not set passwords: password hash sync does."));
    }
    let credential = match password {
        Some((password, _)) => {
            let (password, iterations) = (zeroize::Zeroizing::new(password), state.password_iterations);
            let hashed = tokio::task::spawn_blocking(move || crate::crypto::password_hash(&password, iterations)).await;
            let (salt, hash) = hashed.map_err(|err| GraphError::internal(&err))?;
            Some(Credential { salt, hash, iterations })
        }
        None => None,
    };
    if patch.contains_key("onPremisesSyncEnabled") && !access.is_sync() {
        return Err(synced_refusal());
    }

    // Only a changed UPN or address can free a value another object has in quarantine (a
    // member add or any other property cannot): re-checking scans every quarantined object.
    let frees_values = patch.keys().any(|name| matches!(name.as_str(), "userPrincipalName" | "proxyAddresses" | "mail"));
    let (kind, lookup, sync, domains) = (resource.kind, key.clone(), access.is_sync(), state.resilience_domains());
    let policy = state.effective_match_policy();
    let updated = state
        .db
        .call(move |conn| {
            let Some(mut object) = db::get(conn, kind, &lookup)? else { return Ok(None) };
            if sync
                && let Some(refusal) = crate::resilience::sync_write_refusal(conn, kind, &object, Some(policy))?
                    .or_else(|| crate::resilience::sync_patch_refusal(&object, &patch))
            {
                return Ok(Some(Err(Some(refusal))));
            }
            let synced = object.get("onPremisesSyncEnabled").and_then(Value::as_bool) == Some(true);
            // A synced user's password is mastered on-premises (no password writeback here).
            if synced
                && !sync
                && (credential.is_some() || !bind.is_empty() || patch.keys().any(|name| !CLOUD_MASTERED.contains(&name.as_str())))
            {
                return Ok(Some(Err(None)));
            }
            let group_id = object.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            for member in &bind {
                // A refused reference rolls the whole update back (an error, not an answer).
                if *member == group_id {
                    return Err(db::DbError::Conflict("A group cannot be a member of itself.".to_string()));
                }
                if db::kind_of(conn, member)?.is_none() {
                    return Err(db::DbError::Conflict(format!(
                        "Resource '{member}' does not exist or one of its queried reference-property objects are not present."
                    )));
                }
                // Already a member: nothing to do (the bulk add is idempotent here).
                db::add_member(conn, &group_id, member)?;
            }
            if sync {
                crate::resilience::remember_wanted(&patch, &mut object);
            }
            let disables = patch.get("accountEnabled") == Some(&Value::Bool(false));
            for (name, value) in patch {
                object.insert(name, value);
            }
            if !sync && let Some(why) = anchor_taken(conn, kind, &object)? {
                return Ok(Some(Err(Some(why))));
            }
            if sync {
                crate::resilience::adjust(conn, kind, &mut object, &domains)?;
            }
            if !db::update(conn, kind, &object)? {
                return Ok(None);
            }
            let id = object.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            if let Some(credential) = &credential {
                db::set_credential(conn, &id, credential)?;
            }
            // A new password or a disabled account ends every sign-in: refresh tokens revoked.
            if kind == Kind::User && (credential.is_some() || disables) {
                db::revoke_user_refresh(conn, &id)?;
            }
            Ok(Some(Ok(object)))
        })
        .await?;
    let object =
        updated.ok_or_else(|| GraphError::not_found(&key))?.map_err(|why| why.map_or_else(synced_refusal, GraphError::bad_request))?;
    // A value this object gave up may free another's quarantine.
    if frees_values {
        state.recheck_conflicts().await;
    }
    state
        .record(
            "Directory",
            format!("update {}", resource.noun),
            access.caller.clone(),
            object.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
            "success",
        )
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /v1.0/{collection}/{key}`.
pub async fn delete(resource: &'static Resource, state: AppState, access: Access, key: String) -> Result<Response, GraphError> {
    access.require(resource.write)?;
    state.admit_write()?;
    let (kind, lookup, sync) = (resource.kind, key.clone(), access.is_sync());
    let deleted = state
        .db
        .call(move |conn| {
            let Some(object) = db::get(conn, kind, &lookup)? else { return Ok(Ok(false)) };
            if sync && let Some(refusal) = crate::resilience::sync_write_refusal(conn, kind, &object, None)? {
                return Ok(Err(GraphError::bad_request(refusal)));
            }
            if object.get("onPremisesSyncEnabled").and_then(Value::as_bool) == Some(true) && !sync {
                return Ok(Err(synced_refusal()));
            }
            let id = object.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            db::delete(conn, kind, &id).map(Ok)
        })
        .await?;
    if !deleted? {
        return Err(GraphError::not_found(&key));
    }
    state.recheck_conflicts().await;
    state.record("Directory", format!("delete {}", resource.noun), access.caller.clone(), key.clone(), "success").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1.0/users/{id}/revokeSignInSessions`: revokes every refresh token of the user (and
/// so every session built on one); Graph answers `{"value": true}`.
pub async fn revoke_sign_in_sessions(state: AppState, access: Access, headers: HeaderMap, key: String) -> Result<Response, GraphError> {
    access.require(Area::UsersRevokeSessions)?;
    let user = find(&state, &USERS, &key).await?;
    let id = user.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let target = id.clone();
    let revoked = state.db.call(move |conn| db::revoke_user_refresh(conn, &target)).await?;
    state.record("Directory", format!("revoke sign-in sessions ({revoked} refresh tokens)"), access.caller.clone(), id, "success").await;
    let context = format!("{}/v1.0/$metadata#Edm.Boolean", base_url(&headers));
    Ok(Json(json!({"@odata.context": context, "value": true})).into_response())
}

/// A member as Graph lists it: the object with its `@odata.type`.
fn member_value(kind: &str, id: &str, data: &str) -> Value {
    let resource = match kind {
        "group" => &GROUPS,
        "contact" => &CONTACTS,
        _ => &USERS,
    };
    let object = match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    };
    let mut value = project(resource, &object, None);
    value["@odata.type"] = Value::String(format!("#{}", resource.odata_type));
    value["id"] = Value::String(id.to_string());
    value
}

/// `GET /v1.0/groups/{id}/members`.
pub async fn list_members(state: AppState, access: Access, headers: HeaderMap, key: String) -> Result<Response, GraphError> {
    access.require(Area::GroupsRead)?;
    let group = find(&state, &GROUPS, &key).await?;
    let id = group.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let members = state.db.read(move |conn| db::members(conn, &id)).await?;
    let values: Vec<Value> = members.iter().map(|(id, kind, data)| member_value(kind, id, data)).collect();
    Ok(Json(json!({"@odata.context": format!("{}/v1.0/$metadata#directoryObjects", base_url(&headers)), "value": values})).into_response())
}

/// The object id a directoryObjects URL names. Any host is accepted
/// (`https://graph.microsoft.com/v1.0/directoryObjects/{id}`): the id is what counts.
pub(crate) fn id_of_reference(url: &str) -> String {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string()
}

/// The id in a `$ref` body, `{"@odata.id": ".../directoryObjects/{id}"}` and nothing else.
pub(crate) fn reference_body(body: Body) -> Result<String, GraphError> {
    let body = body_object(body)?;
    let reference = body
        .get("@odata.id")
        .and_then(Value::as_str)
        .ok_or_else(|| GraphError::bad_request("The request needs an '@odata.id' reference."))?;
    if let Some(other) = body.keys().find(|name| *name != "@odata.id") {
        return Err(GraphError::bad_request(format!("Invalid property '{other}' in a reference.")));
    }
    Ok(id_of_reference(reference))
}

/// `POST /v1.0/groups/{id}/members/$ref` with `{"@odata.id": ".../directoryObjects/{id}"}`.
pub async fn add_member(state: AppState, access: Access, key: String, body: Body) -> Result<Response, GraphError> {
    access.require(Area::GroupMembersWrite)?;
    state.admit_write()?;
    let member = reference_body(body)?;
    let group = find(&state, &GROUPS, &key).await?;
    let group_id = group.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let (group_for_db, member_for_db, sync) = (group_id.clone(), member.clone(), access.is_sync());
    let outcome = state
        .db
        .call(move |conn| {
            if sync && let Some(refusal) = sync_refusal_for_group(conn, &group_for_db)? {
                return Ok(Err(GraphError::bad_request(refusal)));
            }
            if member_for_db == group_for_db {
                return Ok(Err(GraphError::bad_request("A group cannot be a member of itself.")));
            }
            if db::kind_of(conn, &member_for_db)?.is_none() {
                return Ok(Err(GraphError::not_found(&member_for_db)));
            }
            Ok(if db::add_member(conn, &group_for_db, &member_for_db)? {
                Ok(())
            } else {
                Err(GraphError::bad_request(
                    "One or more added object references already exist for the following modified properties: 'members'.",
                ))
            })
        })
        .await?;
    outcome?;
    state.record("Directory", format!("add member {member}"), access.caller.clone(), group_id.clone(), "success").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Why the sync service may not change this group's members (see `resilience::sync_write_refusal`).
fn sync_refusal_for_group(conn: &mut dyn crate::sql::Sql, group: &str) -> Result<Option<String>, db::DbError> {
    match db::get(conn, Kind::Group, group)? {
        Some(object) => crate::resilience::sync_write_refusal(conn, Kind::Group, &object, None),
        None => Ok(None),
    }
}

/// `DELETE /v1.0/groups/{id}/members/{member}/$ref`.
pub async fn remove_member(state: AppState, access: Access, key: String, member: String) -> Result<Response, GraphError> {
    access.require(Area::GroupMembersWrite)?;
    state.admit_write()?;
    let group = find(&state, &GROUPS, &key).await?;
    let group_id = group.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let (group_for_db, member_for_db, sync) = (group_id.clone(), member.clone(), access.is_sync());
    let removed = state
        .db
        .call(move |conn| {
            if sync && let Some(refusal) = sync_refusal_for_group(conn, &group_for_db)? {
                return Ok(Err(GraphError::bad_request(refusal)));
            }
            db::remove_member(conn, &group_for_db, &member_for_db).map(Ok)
        })
        .await??;
    if !removed {
        return Err(GraphError::not_found(&member));
    }
    state.record("Directory", format!("remove member {member}"), access.caller.clone(), group_id.clone(), "success").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Where a delta round stands: changes after `after` up to `upto`, from the round that began
/// at `since` (0: the initial round, which lists objects but no tombstones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeltaState {
    since: i64,
    upto: i64,
    after: i64,
}

impl DeltaState {
    fn encode(self) -> String {
        encode_token(&format!("{}.{}.{}", self.since, self.upto, self.after))
    }

    fn decode(token: &str) -> Option<Self> {
        let text = decode_skiptoken(token).ok()?;
        let mut parts = text.split('.').map(|part| part.parse::<i64>().ok());
        let (Some(Some(since)), Some(Some(upto)), Some(Some(after)), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        (since >= 0 && since <= after.max(since) && after <= upto).then_some(DeltaState { since, upto, after })
    }
}

/// `GET /v1.0/{users|groups}/delta()`: every object on the first round, then what changed
/// (deletes as `@removed`); groups carry `members@delta`. Pages end with an absolute
/// `@odata.nextLink`; the last page of a round with an `@odata.deltaLink`.
pub async fn delta(
    resource: &'static Resource,
    state: AppState,
    access: Access,
    headers: HeaderMap,
    query: ListQuery,
) -> Result<Response, GraphError> {
    access.require(resource.read)?;
    query.only(&["$top", "$skiptoken", "$select", "$deltatoken"])?;
    let top = page_size(query.top.as_deref())?;
    let select = selection(resource, query.select.as_deref())?;
    let token = query.skiptoken.as_deref().or(query.deltatoken.as_deref());
    let start = match token {
        Some(token) => Some(DeltaState::decode(token).ok_or_else(|| GraphError::bad_request("Invalid delta or skip token."))?),
        None => None,
    };
    let from_deltatoken = query.deltatoken.is_some();
    let kind = resource.kind;
    let (state_now, page, member_changes) = state
        .db
        .read(move |conn| {
            let current = db::current_seq(conn)?;
            let round = match start {
                None => DeltaState { since: 0, upto: current, after: 0 },
                // A delta link starts a new round up to now.
                Some(previous) if from_deltatoken => DeltaState { since: previous.upto, upto: current, after: previous.upto },
                Some(paging) => paging,
            };
            let page = db::changed(conn, kind, round.after, round.upto, round.since > 0, top + 1)?;
            let mut members = Vec::new();
            if kind == Kind::Group {
                for changed in page.iter().take(top).filter(|changed| !changed.deleted) {
                    let list: Vec<(String, String, bool)> = if round.since == 0 {
                        db::members(conn, &changed.id)?.into_iter().map(|(id, kind, _)| (id, kind, false)).collect()
                    } else {
                        let mut list = Vec::new();
                        for (member, removed) in db::member_changes(conn, &changed.id, round.since, round.upto)? {
                            let kind = db::kind_of(conn, &member)?.map_or("user", Kind::name).to_string();
                            list.push((member, kind, removed));
                        }
                        list
                    };
                    members.push((changed.id.clone(), list));
                }
            }
            Ok((round, page, members))
        })
        .await?;
    let more = page.len() > top;
    let page = &page[..page.len().min(top)];
    let values: Vec<Value> = page
        .iter()
        .map(|changed| {
            if changed.deleted {
                return json!({"id": changed.id, "@removed": {"reason": "deleted"}});
            }
            let mut value = project(resource, &changed.data, select.as_deref());
            value["id"] = Value::String(changed.id.clone());
            if let Some((_, list)) = member_changes.iter().find(|(group, _)| *group == changed.id) {
                let members: Vec<Value> = list
                    .iter()
                    .map(|(id, kind, removed)| {
                        let odata_type = format!(
                            "#{}",
                            resource_of(match kind.as_str() {
                                "group" => Kind::Group,
                                "contact" => Kind::Contact,
                                _ => Kind::User,
                            })
                            .odata_type
                        );
                        if *removed {
                            json!({"@odata.type": odata_type, "id": id, "@removed": {"reason": "deleted"}})
                        } else {
                            json!({"@odata.type": odata_type, "id": id})
                        }
                    })
                    .collect();
                value["members@delta"] = Value::Array(members);
            }
            value
        })
        .collect();
    let base = base_url(&headers);
    let mut body = json!({"@odata.context": format!("{base}/v1.0/$metadata#{}", resource.segment), "value": values});
    let link = format!("{base}/v1.0/{}/delta()", resource.segment);
    match (more, page.last()) {
        (true, Some(last)) => {
            let next = DeltaState { after: last.seq, ..state_now };
            body["@odata.nextLink"] = Value::String(format!("{link}?$skiptoken={}", next.encode()));
        }
        _ => {
            let done = DeltaState { since: state_now.upto, upto: state_now.upto, after: state_now.upto };
            body["@odata.deltaLink"] = Value::String(format!("{link}?$deltatoken={}", done.encode()));
        }
    }
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_need_three_classes() {
        assert!(check_password("Passw0rd").is_ok());
        assert!(check_password("password").is_err());
        assert!(check_password("Pa1!").is_err(), "too short");
        assert!(check_password("PASSWORD1!").is_ok());
    }

    #[test]
    fn select_names_unknown_properties() {
        assert!(selection(&USERS, Some("id,displayName")).is_ok());
        let err = selection(&GROUPS, Some("displayName,colour")).unwrap_err();
        assert!(err.message.contains("colour"));
    }
}
