//! Export: create, update (properties by `PATCH`; members added 20 at a time with
//! `members@odata.bind`, removed by `$ref`), delete.

use std::sync::Arc;

use base64::Engine as _;
use connector_api::{BoxFuture, ConnectorError, Export, ExportOutcome, ExportRequest};
use model::{Anchor, AttrChange, AttrValue, PendingExport};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::id_of;

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
}

/// Splits changes into a property patch and member adds/removes (member ids).
fn split(changes: &[AttrChange]) -> Split {
    let (mut patch, mut add, mut remove, mut replace) = (Map::new(), Vec::new(), Vec::new(), None);
    // A reference to an object not created in the cloud yet (its connector-space DN is not an
    // object id) is left for a later cycle, once the import has confirmed that object.
    let ids = |values: &[AttrValue]| {
        values
            .iter()
            .map(|value| match value {
                AttrValue::Reference(dn) | AttrValue::String(dn) => id_of(dn).to_string(),
                other => other.to_string(),
            })
            .filter(|id| is_object_id(id))
            .collect::<Vec<_>>()
    };
    for change in changes {
        match change {
            AttrChange::Add(name, values) if is_members(name) => add.extend(ids(values)),
            AttrChange::Delete(name, values) if is_members(name) => remove.extend(ids(values)),
            AttrChange::Replace(name, values) if is_members(name) => replace = Some(ids(values)),
            AttrChange::Clear(name) if is_members(name) => replace = Some(Vec::new()),
            AttrChange::Replace(name, values) | AttrChange::Add(name, values) => {
                patch.insert(name.clone(), property_value(name, values));
            }
            AttrChange::Clear(name) | AttrChange::Delete(name, _) => {
                patch.insert(name.clone(), if COLLECTIONS.contains(&name.as_str()) { json!([]) } else { Value::Null });
            }
        }
    }
    Split { patch, add, remove, replace }
}

impl GraphExport {
    async fn members(&self, group: &str, add: &[String], remove: &[String]) -> Result<(), ConnectorError> {
        let base = self.client.config.graph.trim_end_matches('/').to_string();
        // Adds go 20 at a time (`members@odata.bind`, Graph's bulk add); a chunk the directory
        // refuses because one is a member already goes again one by one.
        let mut single = Vec::new();
        for chunk in add.chunks(20) {
            let references: Vec<String> = chunk.iter().map(|member| format!("{base}/directoryObjects/{member}")).collect();
            let body = json!({ "members@odata.bind": references });
            match self.client.object_call(Method::PATCH, &format!("/groups/{group}"), Some(&body)).await {
                Err(ConnectorError::Rejected { code, .. }) if code == "already-exists" => single.extend_from_slice(chunk),
                other => {
                    other?;
                }
            }
        }
        for member in &single {
            let body = json!({"@odata.id": format!("{base}/directoryObjects/{member}")});
            match self.client.object_call(Method::POST, &format!("/groups/{group}/members/$ref"), Some(&body)).await {
                Err(ConnectorError::Rejected { code, .. }) if code == "already-exists" => {}
                other => {
                    other?;
                }
            }
        }
        for member in remove {
            match self.client.object_call(Method::DELETE, &format!("/groups/{group}/members/{member}/$ref"), None).await {
                Err(ConnectorError::Rejected { code, .. }) if code == "no-such-object" => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// Makes the members exactly `wanted`.
    async fn set_members(&self, group: &str, wanted: &[String]) -> Result<(), ConnectorError> {
        let answer = self.client.object_call(Method::GET, &format!("/groups/{group}/members?$select=id"), None).await?;
        let current: Vec<String> =
            answer.body["value"].as_array().into_iter().flatten().filter_map(|member| member["id"].as_str().map(str::to_string)).collect();
        let add: Vec<String> = wanted.iter().filter(|id| !current.contains(id)).cloned().collect();
        let remove: Vec<String> = current.iter().filter(|id| !wanted.contains(id)).cloned().collect();
        self.members(group, &add, &remove).await
    }

    async fn run(&self, request: &ExportRequest) -> Result<ExportOutcome, ConnectorError> {
        let segment = collection(&request.object_type)?;
        let anchor_id = request.anchor.as_ref().map(|anchor| String::from_utf8_lossy(&anchor.0).into_owned());
        match &request.change {
            PendingExport::Add(changes) => {
                let Split { patch: mut body, add, replace, .. } = split(changes);
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
                let members: Vec<String> = replace.unwrap_or_default().into_iter().chain(add).collect();
                // The object exists now: a member that cannot be added is retried by the next
                // cycle's export, not a reason to lose the new object's anchor.
                if !members.is_empty()
                    && let Err(err) = self.members(&id, &members, &[]).await
                {
                    tracing::warn!(connector = self.client.config.id, group = id, "members not added yet: {err}");
                }
                Ok(ExportOutcome { anchor: Some(Anchor(id.into_bytes())) })
            }
            PendingExport::Update(changes) | PendingExport::Rename { changes, .. } => {
                let id = anchor_id.unwrap_or_else(|| id_of(&request.dn).to_string());
                let Split { patch, add, remove, replace } = split(changes);
                if !patch.is_empty() {
                    self.client.object_call(Method::PATCH, &format!("/{segment}/{id}"), Some(&Value::Object(patch))).await?;
                }
                if let Some(wanted) = replace {
                    self.set_members(&id, &wanted).await?;
                }
                self.members(&id, &add, &remove).await?;
                Ok(ExportOutcome { anchor: None })
            }
            PendingExport::Delete => {
                let id = anchor_id.unwrap_or_else(|| id_of(&request.dn).to_string());
                match self.client.object_call(Method::DELETE, &format!("/{segment}/{id}"), None).await {
                    Err(ConnectorError::Rejected { code, .. }) if code == "no-such-object" => Ok(ExportOutcome { anchor: None }),
                    other => other.map(|_| ExportOutcome { anchor: None }),
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
                let Split { patch: mut body, add, remove, replace } = split(changes);
                if !add.is_empty() || !remove.is_empty() || replace.is_some_and(|members| !members.is_empty()) {
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
                let Split { patch, add, remove, replace } = split(changes);
                if !add.is_empty() || !remove.is_empty() || replace.is_some() || patch.is_empty() {
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
                            })),
                            404 if request.change == PendingExport::Delete => Some(Ok(ExportOutcome { anchor: None })),
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
