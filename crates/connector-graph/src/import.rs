//! Import: full rounds and deltas of users, groups and contacts through `delta()`.

use std::sync::Arc;

use connector_api::{BoxFuture, ConnectorError, Import, ImportPage};
use model::{Anchor, AttrValue, Attributes, ImportChange};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{Client, error_of};
use crate::dn_of;

/// The collections, in import order.
const STREAMS: [(&str, &str); 3] = [("users", "user"), ("groups", "group"), ("contacts", "contact")];

#[derive(Debug, Serialize, Deserialize)]
struct Watermark {
    kind: String,
    /// The delta links of users, groups and contacts.
    links: Vec<String>,
}

const WATERMARK_KIND: &str = "graph-delta-v1";

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    /// Index into [`STREAMS`].
    stream: usize,
    /// The next page's link, if the stream has begun.
    next: Option<String>,
    /// Delta links gathered (full import) or to store (delta).
    links: Vec<String>,
}

pub(crate) struct GraphImport {
    pub client: Arc<Client>,
}

fn to_values(value: &Value) -> Vec<AttrValue> {
    match value {
        Value::String(text) => vec![AttrValue::string(text.clone())],
        Value::Bool(flag) => vec![AttrValue::Boolean(*flag)],
        Value::Number(number) => number.as_i64().map(AttrValue::Integer).into_iter().collect(),
        Value::Array(items) => items.iter().flat_map(to_values).collect(),
        _ => Vec::new(),
    }
}

/// An object of the API as a full-state change; `members` are member ids (groups).
fn upsert(object_type: &str, object: &Value, members: Option<Vec<String>>) -> Option<ImportChange> {
    let id = object.get("id").and_then(Value::as_str)?;
    let mut attributes = Attributes::new();
    for (name, value) in object.as_object()? {
        if name == "id" || name.starts_with('@') || name.contains('@') {
            continue;
        }
        let values = match (name.as_str(), value) {
            // References to other objects, as the connector space holds them.
            ("manager", Value::String(id)) => vec![AttrValue::Reference(dn_of(id))],
            _ => to_values(value),
        };
        if !values.is_empty() {
            attributes.set(name.clone(), values);
        }
    }
    if let Some(members) = members
        && !members.is_empty()
    {
        attributes.set("members", members.iter().map(|id| AttrValue::Reference(dn_of(id))).collect());
    }
    // What the directory quarantined (duplicate values, an unverified UPN suffix) is reported as
    // what the sync wrote, so the sync does not write it again every cycle; the conflicts are
    // kept for people to see.
    if let Some(upn) = object.get("onPremisesUserPrincipalName").and_then(Value::as_str) {
        attributes.set("userPrincipalName", vec![AttrValue::string(upn)]);
    }
    let conflicts: Vec<&Value> = object.get("onPremisesProvisioningErrors").and_then(Value::as_array).into_iter().flatten().collect();
    if !conflicts.is_empty() {
        let mut proxies = attributes.get("proxyAddresses").to_vec();
        let mut shown = Vec::new();
        for conflict in conflicts {
            let property = conflict["propertyCausingError"].as_str().unwrap_or("unknown");
            let value = conflict["value"].as_str().unwrap_or_default();
            if property == "ProxyAddresses" {
                proxies.push(AttrValue::string(value));
            }
            shown.push(AttrValue::string(format!("{property} {value} is already used by another object (quarantined)")));
        }
        if !proxies.is_empty() {
            attributes.set("proxyAddresses", proxies);
        }
        attributes.set("provisioningErrors", shown);
    }
    Some(ImportChange::Upsert { anchor: Anchor(id.as_bytes().to_vec()), dn: dn_of(id), object_type: object_type.into(), attributes })
}

fn removed(object: &Value) -> Option<ImportChange> {
    object.get("@removed")?;
    let id = object.get("id").and_then(Value::as_str)?;
    Some(ImportChange::Delete { anchor: Anchor(id.as_bytes().to_vec()) })
}

impl GraphImport {
    async fn page(&self, link: &str) -> Result<Value, ConnectorError> {
        let answer = self.client.send(Method::GET, link, None).await?;
        if !answer.status.is_success() {
            return Err(match error_of(&format!("GET {link}"), &answer) {
                ConnectorError::Rejected { message, .. } if answer.status.as_u16() == 400 && link.contains("deltatoken") => {
                    ConnectorError::WatermarkExpired(message)
                }
                ConnectorError::Rejected { message, .. } => ConnectorError::Unavailable(message),
                other => other,
            });
        }
        Ok(answer.body)
    }

    /// A group's current member ids.
    async fn members(&self, group: &str) -> Result<Vec<String>, ConnectorError> {
        let mut ids = Vec::new();
        let mut next = Some(format!("/groups/{group}/members?$select=id"));
        while let Some(link) = next {
            let body = self.page(&link).await?;
            ids.extend(body["value"].as_array().into_iter().flatten().filter_map(|member| member["id"].as_str().map(str::to_string)));
            next = body["@odata.nextLink"].as_str().map(str::to_string);
        }
        Ok(ids)
    }

    async fn run(&self, cursor: Cursor, full: bool) -> Result<ImportPage, ConnectorError> {
        let mut cursor = cursor;
        let Some((segment, object_type)) = STREAMS.get(cursor.stream).copied() else {
            return Err(ConnectorError::Config("an import cursor past the last stream".into()));
        };
        let top = self.client.config.page_size;
        let link = match cursor.next.take() {
            Some(link) => link,
            None if full => format!("/{segment}/delta()?$top={top}"),
            None => cursor
                .links
                .get(cursor.stream)
                .cloned()
                .ok_or_else(|| ConnectorError::WatermarkExpired("the watermark lacks a delta link".into()))?,
        };
        let body = self.page(&link).await?;
        let mut changes = Vec::new();
        for object in body["value"].as_array().into_iter().flatten() {
            if let Some(delete) = removed(object) {
                changes.push(delete);
                continue;
            }
            let members = if segment != "groups" {
                None
            } else if full {
                // The first round lists every member.
                Some(
                    object["members@delta"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|member| member.get("@removed").is_none())
                        .filter_map(|member| member["id"].as_str().map(str::to_string))
                        .collect(),
                )
            } else {
                let id = object["id"].as_str().unwrap_or_default();
                Some(self.members(id).await?)
            };
            changes.extend(upsert(object_type, object, members));
        }
        if let Some(next) = body["@odata.nextLink"].as_str() {
            cursor.next = Some(next.to_string());
        } else {
            let delta = body["@odata.deltaLink"]
                .as_str()
                .ok_or_else(|| ConnectorError::Unavailable(format!("{segment}: a delta round ended without @odata.deltaLink")))?;
            if full {
                cursor.links.push(delta.to_string());
            } else if let Some(slot) = cursor.links.get_mut(cursor.stream) {
                *slot = delta.to_string();
            }
            cursor.stream += 1;
            if cursor.stream >= STREAMS.len() {
                let watermark = serde_json::to_vec(&Watermark { kind: WATERMARK_KIND.into(), links: cursor.links.clone() })
                    .map_err(|err| ConnectorError::Config(err.to_string()))?;
                return Ok(ImportPage { changes, next: None, watermark: Some(watermark), complete: false });
            }
        }
        let next = serde_json::to_vec(&cursor).map_err(|err| ConnectorError::Config(err.to_string()))?;
        Ok(ImportPage { changes, next: Some(next), watermark: None, complete: false })
    }
}

fn cursor_from(bytes: &[u8]) -> Result<Cursor, ConnectorError> {
    serde_json::from_slice(bytes).map_err(|err| ConnectorError::Config(format!("not an import cursor of this connector: {err}")))
}

impl Import for GraphImport {
    fn full_page<'a>(&'a self, cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>> {
        Box::pin(async move {
            let cursor = match cursor {
                Some(bytes) => cursor_from(bytes)?,
                None => Cursor { stream: 0, next: None, links: Vec::new() },
            };
            self.run(cursor, true).await
        })
    }

    fn delta_page<'a>(&'a self, watermark: &'a [u8], cursor: Option<&'a [u8]>) -> BoxFuture<'a, Result<ImportPage, ConnectorError>> {
        Box::pin(async move {
            let cursor = match cursor {
                Some(bytes) => cursor_from(bytes)?,
                None => {
                    let stored: Watermark = serde_json::from_slice(watermark)
                        .ok()
                        .filter(|mark: &Watermark| mark.kind == WATERMARK_KIND && mark.links.len() == STREAMS.len())
                        .ok_or_else(|| {
                            ConnectorError::WatermarkExpired("the stored watermark is not a delta watermark of this connector".into())
                        })?;
                    Cursor { stream: 0, next: None, links: stored.links }
                }
            };
            self.run(cursor, false).await
        })
    }
}
