//! Export: create, update (properties by `PATCH`; members added 20 at a time with
//! `members@odata.bind`, removed by `$ref`), delete. An export of several requests reports
//! exactly what the directory did not take (members refused, a connection lost after the
//! object was written, references to objects not created yet) in [`ExportOutcome::left`].

use std::sync::Arc;

use base64::Engine as _;
use connector_api::{BoxFuture, ConnectorError, Export, ExportOutcome, ExportRequest, Unapplied, UnappliedReason};
use model::{Anchor, AttrChange, AttrValue, PendingExport};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::{dn_of, id_of};

pub(crate) struct GraphExport {
    pub client: Arc<Client>,
}

/// Graph properties that hold collections (every other property holds one value).
const COLLECTIONS: &[&str] = &["proxyAddresses", "otherMails", "businessPhones", "groupTypes", "imAddresses"];

fn json_of(value: &AttrValue) -> Value {
    match value {
        AttrValue::String(text) => Value::String(text.clone()),
        AttrValue::Reference(dn) => Value::String(id_of(dn).to_string()),
        AttrValue::Integer(number) => json!(number),
        AttrValue::Boolean(flag) => Value::Bool(*flag),
        AttrValue::Binary(bytes) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        // Outbound flows turn the metaverse's references into DNs before a connector sees them.
        AttrValue::MvReference(id) => json!(id.0),
    }
}

fn property_value(name: &str, values: &[AttrValue]) -> Value {
    if COLLECTIONS.contains(&name) {
        Value::Array(values.iter().map(json_of).collect())
    } else {
        values.first().map(json_of).unwrap_or(Value::Null)
    }
}

fn collection(object_type: &str) -> Result<&'static str, ConnectorError> {
    match object_type {
        "user" => Ok("users"),
        "group" => Ok("groups"),
        "contact" => Ok("contacts"),
        other => Err(ConnectorError::Rejected {
            code: "unsupported-type".into(),
            message: format!("the cloud directory has no object type {other:?}"),
        }),
    }
}

/// Whether `id` is an object id (a GUID).
fn is_object_id(id: &str) -> bool {
    id.len() == 36
        && id.chars().enumerate().all(|(index, c)| if [8, 13, 18, 23].contains(&index) { c == '-' } else { c.is_ascii_hexdigit() })
}

/// A group's members (`members`, Graph's name; `member` as LDAP says it).
fn is_members(name: &str) -> bool {
    name == "members" || name == "member"
}

/// Changes split for the API: a property patch, and member ids to add, to remove, or to have.
struct Split {
    patch: Map<String, Value>,
    add: Vec<String>,
    remove: Vec<String>,
    replace: Option<Vec<String>>,
    /// The name the changes give the members attribute (`members`, or `member`).
    member_name: String,
    /// Members to add or have that name an object not created in the cloud yet (its
    /// connector-space DN is not an object id): they are left for a later cycle, and said so.
    waiting: Vec<AttrValue>,
}

/// Splits changes into a property patch and member adds/removes (member ids).
fn split(changes: &[AttrChange]) -> Split {
    let mut split =
        Split { patch: Map::new(), add: Vec::new(), remove: Vec::new(), replace: None, member_name: "members".into(), waiting: Vec::new() };
    // Ids of the values; those without one go to `waiting` (adds) or are dropped (a removal of an
    // object the cloud does not have is already true).
    let ids = |values: &[AttrValue], waiting: Option<&mut Vec<AttrValue>>| {
        let mut ids = Vec::new();
        let mut waiting = waiting;
        for value in values {
            let id = match value {
                AttrValue::Reference(dn) | AttrValue::String(dn) => id_of(dn).to_string(),
                other => other.to_string(),
            };
            if is_object_id(&id) {
                ids.push(id);
            } else if let Some(waiting) = waiting.as_mut() {
                waiting.push(value.clone());
            }
        }
        ids
    };
    for change in changes {
        if is_members(change.name()) {
            split.member_name = change.name().to_string();
        }
        match change {
            AttrChange::Add(name, values) if is_members(name) => {
                let found = ids(values, Some(&mut split.waiting));
                split.add.extend(found);
            }
            AttrChange::Delete(name, values) if is_members(name) => {
                let found = ids(values, None);
                split.remove.extend(found);
            }
            AttrChange::Replace(name, values) if is_members(name) => {
                split.waiting.clear();
                split.replace = Some(ids(values, Some(&mut split.waiting)));
            }
            AttrChange::Clear(name) if is_members(name) => {
                split.waiting.clear();
                split.replace = Some(Vec::new());
            }
            AttrChange::Replace(name, values) | AttrChange::Add(name, values) => {
                split.patch.insert(name.clone(), property_value(name, values));
            }
            AttrChange::Clear(name) | AttrChange::Delete(name, _) => {
                split.patch.insert(name.clone(), if COLLECTIONS.contains(&name.as_str()) { json!([]) } else { Value::Null });
            }
        }
    }
    split
}

/// Member changes the directory did not take, and the first reason.
struct MembersLeft {
    add: Vec<String>,
    remove: Vec<String>,
    error: ConnectorError,
}

impl Split {
    /// What of the member changes did not reach the directory: `left` (failed, with its reason)
    /// and the references still waiting for their objects. `None` when everything was applied.
    fn unapplied(&self, left: Option<MembersLeft>) -> Option<Unapplied> {
        let mut changes = Vec::new();
        let mut waiting = self.waiting.clone();
        let reason = match left {
            Some(left) => {
                waiting.extend(left.add.iter().map(|id| AttrValue::Reference(dn_of(id))));
                if !left.remove.is_empty() {
                    changes.push(AttrChange::Delete(
                        self.member_name.clone(),
                        left.remove.iter().map(|id| AttrValue::Reference(dn_of(id))).collect(),
                    ));
                }
                UnappliedReason::Failed(left.error)
            }
            None => UnappliedReason::WaitingForReferences,
        };
        if !waiting.is_empty() {
            changes.insert(0, AttrChange::Add(self.member_name.clone(), waiting));
        }
        (!changes.is_empty()).then_some(Unapplied { changes, reason })
    }
}

impl GraphExport {
    /// Adds and removes members; every change the directory did not take is in the error.
    async fn members(&self, group: &str, add: &[String], remove: &[String]) -> Result<(), MembersLeft> {
        let base = self.client.config.graph.trim_end_matches('/').to_string();
        let mut first_refusal: Option<ConnectorError> = None;
        let mut not_added: Vec<String> = Vec::new();
        let mut not_removed: Vec<String> = Vec::new();
        // Adds go 20 at a time (`members@odata.bind`, Graph's bulk add); a chunk the directory
        // refuses (one is a member already, one does not exist) goes again one by one, so each
        // member is added or refused on its own.
        let mut single = Vec::new();
        let chunks: Vec<&[String]> = add.chunks(20).collect();
        for (index, chunk) in chunks.iter().enumerate() {
            let references: Vec<String> = chunk.iter().map(|member| format!("{base}/directoryObjects/{member}")).collect();
            let body = json!({ "members@odata.bind": references });
            match self.client.object_call(Method::PATCH, &format!("/groups/{group}"), Some(&body)).await {
                Ok(_) => {}
                Err(ConnectorError::Rejected { .. }) => single.extend_from_slice(chunk),
                Err(error) => {
                    let add = chunks[index..].iter().flat_map(|chunk| chunk.iter()).chain(&single).cloned().collect();
                    return Err(MembersLeft { add, remove: remove.to_vec(), error });
                }
            }
        }
        for (index, member) in single.iter().enumerate() {
            let body = json!({"@odata.id": format!("{base}/directoryObjects/{member}")});
            match self.client.object_call(Method::POST, &format!("/groups/{group}/members/$ref"), Some(&body)).await {
                Ok(_) => {}
                Err(ConnectorError::Rejected { code, .. }) if code == "already-exists" => {}
                Err(error @ ConnectorError::Rejected { .. }) => {
                    tracing::warn!(connector = self.client.config.id, group, member, "member not added: {error}");
                    not_added.push(member.clone());
                    first_refusal.get_or_insert(error);
                }
                Err(error) => {
                    not_added.extend_from_slice(&single[index..]);
                    return Err(MembersLeft { add: not_added, remove: remove.to_vec(), error });
                }
            }
        }
        // Removals go 20 at a time in one `$batch`; what a batch could not settle (throttled,
        // no answer, the batch refused as a whole) goes again one by one below.
        let mut again: Vec<String> = Vec::new();
        for chunk in remove.chunks(20) {
            if chunk.len() == 1 {
                again.extend_from_slice(chunk);
                continue;
            }
            let requests: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(index, member)| json!({"id": index.to_string(), "method": "DELETE", "url": format!("/groups/{group}/members/{member}/$ref")}))
                .collect();
            let mut settled = vec![false; chunk.len()];
            if let Ok(answer) = self.client.send(Method::POST, "/$batch", Some(&json!({"requests": requests}))).await
                && answer.status.is_success()
            {
                for response in answer.body["responses"].as_array().into_iter().flatten() {
                    let Some(index) = response["id"].as_str().and_then(|id| id.parse::<usize>().ok()).filter(|index| *index < chunk.len())
                    else {
                        continue;
                    };
                    match response["status"].as_u64() {
                        // Removed, or not a member any more.
                        Some(200..=299 | 404) => settled[index] = true,
                        Some(429 | 503 | 504) | None => {}
                        Some(status) => {
                            let status = reqwest::StatusCode::from_u16(u16::try_from(status).unwrap_or(400))
                                .unwrap_or(reqwest::StatusCode::BAD_REQUEST);
                            let answer = crate::client::Answer { status, body: response["body"].clone() };
                            let error = crate::client::error_of(&format!("remove member {} of {group}", chunk[index]), &answer);
                            tracing::warn!(connector = self.client.config.id, group, member = chunk[index], "member not removed: {error}");
                            not_removed.push(chunk[index].clone());
                            first_refusal.get_or_insert(error);
                            settled[index] = true;
                        }
                    }
                }
            }
            again.extend(chunk.iter().zip(settled).filter(|(_, settled)| !settled).map(|(member, _)| member.clone()));
        }
        for (index, member) in again.iter().enumerate() {
            match self.client.object_call(Method::DELETE, &format!("/groups/{group}/members/{member}/$ref"), None).await {
                Ok(_) => {}
                Err(ConnectorError::Rejected { code, .. }) if code == "no-such-object" => {}
                Err(error @ ConnectorError::Rejected { .. }) => {
                    tracing::warn!(connector = self.client.config.id, group, member, "member not removed: {error}");
                    not_removed.push(member.clone());
                    first_refusal.get_or_insert(error);
                }
                Err(error) => {
                    not_removed.extend_from_slice(&again[index..]);
                    return Err(MembersLeft { add: not_added, remove: not_removed, error });
                }
            }
        }
        match first_refusal {
            None => Ok(()),
            Some(error) => Err(MembersLeft { add: not_added, remove: not_removed, error }),
        }
    }

    /// Makes the members exactly `wanted`.
    async fn set_members(&self, group: &str, wanted: &[String]) -> Result<(), MembersLeft> {
        let current = self.current_members(group).await.map_err(|error| MembersLeft { add: wanted.to_vec(), remove: Vec::new(), error })?;
        let add: Vec<String> = wanted.iter().filter(|id| !current.contains(*id)).cloned().collect();
        let remove: Vec<String> = current.iter().filter(|id| !wanted.contains(*id)).cloned().collect();
        self.members(group, &add, &remove).await
    }

    /// A group's member ids, every page.
    async fn current_members(&self, group: &str) -> Result<std::collections::HashSet<String>, ConnectorError> {
        let mut ids = std::collections::HashSet::new();
        let mut next = format!("/groups/{group}/members?$select=id");
        loop {
            let answer = self.client.object_call(Method::GET, &next, None).await?;
            ids.extend(
                answer.body["value"].as_array().into_iter().flatten().filter_map(|member| member["id"].as_str().map(str::to_string)),
            );
            match answer.body["@odata.nextLink"].as_str() {
                Some(link) => next = link.to_string(),
                None => return Ok(ids),
            }
        }
    }

    async fn run(&self, request: &ExportRequest) -> Result<ExportOutcome, ConnectorError> {
        let segment = collection(&request.object_type)?;
        let anchor_id = request.anchor.as_ref().map(|anchor| String::from_utf8_lossy(&anchor.0).into_owned());
        match &request.change {
            PendingExport::Add(changes) => {
                let split = split(changes);
                let mut body = split.patch.clone();
                body.retain(|_, value| !value.is_null());
                body.insert(
                    "@odata.type".into(),
                    Value::String(format!("#microsoft.graph.{}", if segment == "contacts" { "orgContact" } else { &request.object_type })),
                );
                let answer = self.client.object_call(Method::POST, &format!("/{segment}"), Some(&Value::Object(body))).await?;
                let id = answer.body["id"]
                    .as_str()
                    .ok_or_else(|| ConnectorError::Unavailable(format!("POST /{segment} answered without an id")))?
                    .to_string();
                let members: Vec<String> = split.replace.clone().unwrap_or_default().into_iter().chain(split.add.iter().cloned()).collect();
                // The object exists now: members that could not be added stay pending (the
                // outcome says which), never a reason to lose the new object's anchor.
                let left = if members.is_empty() { None } else { self.members(&id, &members, &[]).await.err() };
                Ok(ExportOutcome { anchor: Some(Anchor(id.into_bytes())), left: split.unapplied(left) })
            }
            PendingExport::Update(changes) | PendingExport::Rename { changes, .. } => {
                let id = anchor_id.unwrap_or_else(|| id_of(&request.dn).to_string());
                let split = split(changes);
                if !split.patch.is_empty() {
                    self.client.object_call(Method::PATCH, &format!("/{segment}/{id}"), Some(&Value::Object(split.patch.clone()))).await?;
                }
                // The properties are written: from here on, what fails is left pending.
                let mut left = None;
                if let Some(wanted) = &split.replace {
                    left = self.set_members(&id, wanted).await.err();
                }
                if left.is_none() {
                    left = self.members(&id, &split.add, &split.remove).await.err();
                } else if let Some(left) = left.as_mut() {
                    left.add.extend(split.add.iter().cloned());
                    left.remove.extend(split.remove.iter().cloned());
                }
                Ok(ExportOutcome { anchor: None, left: split.unapplied(left) })
            }
            PendingExport::Delete => {
                let id = anchor_id.unwrap_or_else(|| id_of(&request.dn).to_string());
                match self.client.object_call(Method::DELETE, &format!("/{segment}/{id}"), None).await {
                    Err(ConnectorError::Rejected { code, .. }) if code == "no-such-object" => Ok(ExportOutcome::done()),
                    other => other.map(|_| ExportOutcome::done()),
                }
            }
        }
    }
}

impl GraphExport {
    /// The `$batch` request for an export that needs one call, or `None` (member changes,
    /// renames: those go alone).
    fn batch_item(index: usize, request: &ExportRequest) -> Result<Option<Value>, ConnectorError> {
        let segment = collection(&request.object_type)?;
        let id = request
            .anchor
            .as_ref()
            .map(|anchor| String::from_utf8_lossy(&anchor.0).into_owned())
            .unwrap_or_else(|| id_of(&request.dn).to_string());
        Ok(match &request.change {
            PendingExport::Add(changes) => {
                let Split { patch: mut body, add, remove, replace, waiting, .. } = split(changes);
                if !add.is_empty() || !remove.is_empty() || !waiting.is_empty() || replace.is_some_and(|members| !members.is_empty()) {
                    return Ok(None);
                }
                body.retain(|_, value| !value.is_null());
                body.insert(
                    "@odata.type".into(),
                    Value::String(format!("#microsoft.graph.{}", if segment == "contacts" { "orgContact" } else { &request.object_type })),
                );
                Some(
                    json!({"id": index.to_string(), "method": "POST", "url": format!("/{segment}"), "headers": {"Content-Type": "application/json"}, "body": body}),
                )
            }
            PendingExport::Update(changes) => {
                let Split { patch, add, remove, replace, waiting, .. } = split(changes);
                if !add.is_empty() || !remove.is_empty() || !waiting.is_empty() || replace.is_some() || patch.is_empty() {
                    return Ok(None);
                }
                Some(
                    json!({"id": index.to_string(), "method": "PATCH", "url": format!("/{segment}/{id}"), "headers": {"Content-Type": "application/json"}, "body": patch}),
                )
            }
            PendingExport::Delete => Some(json!({"id": index.to_string(), "method": "DELETE", "url": format!("/{segment}/{id}")})),
            PendingExport::Rename { .. } => None,
        })
    }

    async fn many(&self, requests: &[ExportRequest]) -> Vec<Result<ExportOutcome, ConnectorError>> {
        let mut results: Vec<Option<Result<ExportOutcome, ConnectorError>>> = requests.iter().map(|_| None).collect();
        let mut batch = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            match Self::batch_item(index, request) {
                Ok(Some(item)) => batch.push(item),
                Ok(None) => {}
                Err(err) => results[index] = Some(Err(err)),
            }
        }
        if batch.len() > 1 {
            match self.client.send(Method::POST, "/$batch", Some(&json!({"requests": batch}))).await {
                Ok(answer) if answer.status.is_success() => {
                    for response in answer.body["responses"].as_array().into_iter().flatten() {
                        let Some(index) =
                            response["id"].as_str().and_then(|id| id.parse::<usize>().ok()).filter(|index| *index < requests.len())
                        else {
                            continue;
                        };
                        // An answer without a status is retried alone.
                        let Some(status) = response["status"].as_u64().and_then(|status| u16::try_from(status).ok()) else {
                            continue;
                        };
                        let request = &requests[index];
                        results[index] = match status {
                            200..=299 => Some(Ok(ExportOutcome {
                                anchor: matches!(request.change, PendingExport::Add(_))
                                    .then(|| response["body"]["id"].as_str().map(|id| Anchor(id.as_bytes().to_vec())))
                                    .flatten(),
                                left: None,
                            })),
                            404 if request.change == PendingExport::Delete => Some(Ok(ExportOutcome::done())),
                            // Throttled or failing inside the batch: that one goes alone, with retries.
                            429 | 503 | 504 => None,
                            _ => {
                                let status = reqwest::StatusCode::from_u16(status).unwrap_or(reqwest::StatusCode::BAD_REQUEST);
                                let answer = crate::client::Answer { status, body: response["body"].clone() };
                                Some(Err(crate::client::error_of(&format!("$batch item for {}", request.dn), &answer)))
                            }
                        };
                    }
                }
                // The batch as a whole failed: every item goes alone.
                Ok(_) | Err(_) => {}
            }
        }
        let mut out = Vec::with_capacity(requests.len());
        for (request, result) in requests.iter().zip(results) {
            out.push(match result {
                Some(result) => result,
                None => self.run(request).await,
            });
        }
        out
    }
}

impl Export for GraphExport {
    fn export<'a>(&'a self, request: &'a ExportRequest) -> BoxFuture<'a, Result<ExportOutcome, ConnectorError>> {
        Box::pin(self.run(request))
    }

    /// Simple creates, updates and deletes of a chunk go together in one `$batch`; the rest
    /// (member changes, renames, anything the batch could not do) one by one.
    fn export_many<'a>(&'a self, requests: &'a [ExportRequest]) -> BoxFuture<'a, Vec<Result<ExportOutcome, ConnectorError>>> {
        Box::pin(self.many(requests))
    }
}
