//! A text encoding of attribute values, attribute sets, MV attributes with lineage and pending
//! exports, shared by adapters that store them as JSON text; and the index keys used for join
//! lookups. Decoding never panics: bad input is a [`StoreError::Corrupt`] naming what was wrong.

use std::collections::BTreeMap;

use model::{
    AttrChange, AttrValue, Attributes, ConnectorId, CsId, ErrorStage, Lineage, MvAttribute, ObjectError, PendingExport, PendingImport,
};
use serde_json::{Map, Value as Json, json};

use crate::{Matching, Result, StoreError};

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return Err(corrupt(format!("bad hex \"{text}\"")));
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&text[index..index + 2], 16).map_err(|_| corrupt(format!("bad hex \"{text}\""))))
        .collect()
}

/// One value as JSON: `{"s": text}`, `{"i": n}`, `{"b": flag}`, `{"x": hex}`, `{"r": target}`.
pub fn value_to_json(value: &AttrValue) -> Json {
    match value {
        AttrValue::String(text) => json!({ "s": text }),
        AttrValue::Integer(number) => json!({ "i": number }),
        AttrValue::Boolean(flag) => json!({ "b": flag }),
        AttrValue::Binary(bytes) => json!({ "x": hex(bytes) }),
        AttrValue::Reference(target) => json!({ "r": target }),
    }
}

/// Decodes [`value_to_json`].
pub fn value_from_json(json: &Json) -> Result<AttrValue> {
    let object =
        json.as_object().filter(|object| object.len() == 1).ok_or_else(|| corrupt(format!("value {json} is not a one-key object")))?;
    let (kind, inner) = object.iter().next().ok_or_else(|| corrupt("empty value"))?;
    let text = || inner.as_str().map(str::to_string).ok_or_else(|| corrupt(format!("value {json} should hold text")));
    Ok(match kind.as_str() {
        "s" => AttrValue::String(text()?),
        "r" => AttrValue::Reference(text()?),
        "x" => AttrValue::Binary(unhex(&text()?)?),
        "i" => AttrValue::Integer(inner.as_i64().ok_or_else(|| corrupt(format!("value {json} should hold a whole number")))?),
        "b" => AttrValue::Boolean(inner.as_bool().ok_or_else(|| corrupt(format!("value {json} should hold true or false")))?),
        other => return Err(corrupt(format!("unknown value kind \"{other}\""))),
    })
}

fn values_to_json(values: &[AttrValue]) -> Json {
    Json::Array(values.iter().map(value_to_json).collect())
}

fn values_from_json(json: &Json) -> Result<Vec<AttrValue>> {
    json.as_array().ok_or_else(|| corrupt(format!("{json} is not a list of values")))?.iter().map(value_from_json).collect()
}

/// An attribute set as JSON text.
pub fn attributes_to_text(attributes: &Attributes) -> String {
    let map: Map<String, Json> = attributes.iter().map(|(name, values)| (name.to_string(), values_to_json(values))).collect();
    Json::Object(map).to_string()
}

/// Decodes [`attributes_to_text`].
pub fn attributes_from_text(text: &str) -> Result<Attributes> {
    let json: Json = serde_json::from_str(text).map_err(|err| corrupt(format!("attributes: {err}")))?;
    let map = json.as_object().ok_or_else(|| corrupt("attributes are not an object"))?;
    map.iter().map(|(name, values)| Ok((name.clone(), values_from_json(values)?))).collect()
}

/// MV attributes with lineage as JSON text.
pub fn mv_attributes_to_text(attributes: &BTreeMap<String, MvAttribute>) -> String {
    let map: Map<String, Json> = attributes
        .iter()
        .map(|(name, attribute)| {
            let lineage: Vec<Json> = attribute
                .lineage
                .iter()
                .map(|lineage| json!({ "rule": lineage.rule, "p": lineage.precedence, "c": lineage.connector.0, "cs": lineage.cs_id.0 }))
                .collect();
            (name.clone(), json!({ "v": values_to_json(&attribute.values), "l": lineage }))
        })
        .collect();
    Json::Object(map).to_string()
}

/// Decodes [`mv_attributes_to_text`].
/// An MV object's values without their lineage (what its lookup index holds).
pub fn mv_values(attributes: &BTreeMap<String, MvAttribute>) -> Attributes {
    let mut values = Attributes::new();
    for (name, attribute) in attributes {
        values.set(name.clone(), attribute.values.clone());
    }
    values
}

/// MV attributes from [`mv_attributes_to_text`].
pub fn mv_attributes_from_text(text: &str) -> Result<BTreeMap<String, MvAttribute>> {
    let json: Json = serde_json::from_str(text).map_err(|err| corrupt(format!("MV attributes: {err}")))?;
    let map = json.as_object().ok_or_else(|| corrupt("MV attributes are not an object"))?;
    let mut attributes = BTreeMap::new();
    for (name, entry) in map {
        let values = values_from_json(&entry["v"])?;
        let mut lineage = Vec::new();
        for item in entry["l"].as_array().ok_or_else(|| corrupt(format!("lineage of {name} is not a list")))? {
            lineage.push(Lineage {
                rule: item["rule"].as_str().ok_or_else(|| corrupt("lineage rule"))?.to_string(),
                precedence: item["p"].as_i64().and_then(|p| i32::try_from(p).ok()).ok_or_else(|| corrupt("lineage precedence"))?,
                connector: ConnectorId(item["c"].as_str().ok_or_else(|| corrupt("lineage connector"))?.to_string()),
                cs_id: CsId(item["cs"].as_i64().ok_or_else(|| corrupt("lineage cs id"))?),
            });
        }
        attributes.insert(name.clone(), MvAttribute { values, lineage });
    }
    Ok(attributes)
}

fn change_to_json(change: &AttrChange) -> Json {
    match change {
        AttrChange::Replace(name, values) => json!({ "replace": name, "values": values_to_json(values) }),
        AttrChange::Add(name, values) => json!({ "add": name, "values": values_to_json(values) }),
        AttrChange::Delete(name, values) => json!({ "delete": name, "values": values_to_json(values) }),
        AttrChange::Clear(name) => json!({ "clear": name }),
    }
}

fn change_from_json(json: &Json) -> Result<AttrChange> {
    let name = |key: &str| json[key].as_str().map(str::to_string);
    if let Some(name) = name("replace") {
        return Ok(AttrChange::Replace(name, values_from_json(&json["values"])?));
    }
    if let Some(name) = name("add") {
        return Ok(AttrChange::Add(name, values_from_json(&json["values"])?));
    }
    if let Some(name) = name("delete") {
        return Ok(AttrChange::Delete(name, values_from_json(&json["values"])?));
    }
    if let Some(name) = name("clear") {
        return Ok(AttrChange::Clear(name));
    }
    Err(corrupt(format!("unknown attribute change {json}")))
}

fn changes_to_json(changes: &[AttrChange]) -> Json {
    Json::Array(changes.iter().map(change_to_json).collect())
}

fn changes_from_json(json: &Json) -> Result<Vec<AttrChange>> {
    json.as_array().ok_or_else(|| corrupt("changes are not a list"))?.iter().map(change_from_json).collect()
}

/// A pending export as JSON text.
pub fn export_to_text(export: &PendingExport) -> String {
    match export {
        PendingExport::Add(changes) => json!({ "op": "add", "changes": changes_to_json(changes) }),
        PendingExport::Update(changes) => json!({ "op": "update", "changes": changes_to_json(changes) }),
        PendingExport::Rename { new_dn, changes } => json!({ "op": "rename", "dn": new_dn, "changes": changes_to_json(changes) }),
        PendingExport::Delete => json!({ "op": "delete" }),
    }
    .to_string()
}

/// Decodes [`export_to_text`].
pub fn export_from_text(text: &str) -> Result<PendingExport> {
    let json: Json = serde_json::from_str(text).map_err(|err| corrupt(format!("pending export: {err}")))?;
    Ok(match json["op"].as_str() {
        Some("add") => PendingExport::Add(changes_from_json(&json["changes"])?),
        Some("update") => PendingExport::Update(changes_from_json(&json["changes"])?),
        Some("rename") => PendingExport::Rename {
            new_dn: json["dn"].as_str().ok_or_else(|| corrupt("rename without dn"))?.to_string(),
            changes: changes_from_json(&json["changes"])?,
        },
        Some("delete") => PendingExport::Delete,
        _ => return Err(corrupt(format!("unknown pending export {json}"))),
    })
}

/// A pending import as a short code.
pub fn import_to_code(pending: PendingImport) -> &'static str {
    match pending {
        PendingImport::Add => "add",
        PendingImport::Update => "update",
        PendingImport::Delete => "delete",
        PendingImport::DeleteAdd => "delete-add",
    }
}

/// Decodes [`import_to_code`].
pub fn import_from_code(code: &str) -> Result<PendingImport> {
    Ok(match code {
        "add" => PendingImport::Add,
        "update" => PendingImport::Update,
        "delete" => PendingImport::Delete,
        "delete-add" => PendingImport::DeleteAdd,
        other => return Err(corrupt(format!("unknown pending import \"{other}\""))),
    })
}

/// The stored form of an error's stage (and, for an outbound error, its target connector):
/// `import`, `sync`, `export` or `outbound:<connector>`.
pub fn error_stage_text(error: &ObjectError) -> String {
    match (error.stage, &error.target) {
        (ErrorStage::Import, _) => "import".into(),
        (ErrorStage::Sync, _) => "sync".into(),
        (ErrorStage::Export, _) => "export".into(),
        (ErrorStage::Outbound, Some(target)) => format!("outbound:{}", target.0),
        (ErrorStage::Outbound, None) => "outbound:".into(),
    }
}

/// An error from its stored columns ([`error_stage_text`], code, message). Errors stored by
/// earlier versions as `sync` with a code `outbound-…` and a message `to <connector>: …` are
/// read as the outbound errors they were.
pub fn error_from_columns(stage: &str, code: String, message: String) -> Result<ObjectError> {
    let simple = |stage| Ok(ObjectError { stage, code: code.clone(), message: message.clone(), target: None });
    match stage {
        "import" => simple(ErrorStage::Import),
        "export" => simple(ErrorStage::Export),
        "sync" => match (code.strip_prefix("outbound-"), message.strip_prefix("to ").and_then(|rest| rest.split_once(": "))) {
            (Some(code), Some((target, message))) => Ok(ObjectError {
                stage: ErrorStage::Outbound,
                code: code.to_string(),
                message: message.to_string(),
                target: Some(ConnectorId(target.to_string())),
            }),
            _ => simple(ErrorStage::Sync),
        },
        other => match other.strip_prefix("outbound:") {
            Some(target) => Ok(ObjectError {
                stage: ErrorStage::Outbound,
                code,
                message,
                target: (!target.is_empty()).then(|| ConnectorId(target.to_string())),
            }),
            None => Err(corrupt(format!("unknown error stage \"{other}\""))),
        },
    }
}

/// The index key of a value for join lookups: exact, or folded to lower case for text when
/// `matching` ignores case (binary and numbers always compare exactly).
pub fn index_key(value: &AttrValue, matching: Matching) -> String {
    let fold = matching == Matching::IgnoreCase;
    match value {
        AttrValue::String(text) if fold => format!("s:{}", text.to_lowercase()),
        AttrValue::String(text) => format!("s:{text}"),
        AttrValue::Reference(target) if fold => format!("r:{}", target.to_lowercase()),
        AttrValue::Reference(target) => format!("r:{target}"),
        AttrValue::Integer(number) => format!("i:{number}"),
        AttrValue::Boolean(flag) => format!("b:{flag}"),
        AttrValue::Binary(bytes) => format!("x:{}", hex(bytes)),
    }
}

/// Which lookup index a value row is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// `cs_values`: the listed attributes, and every reference (an imported rename finds the
    /// objects that name the old DN by it).
    Connector,
    /// `mv_values`: the listed attributes only (nothing looks metaverse references up by
    /// target; a group's members would otherwise be a row each).
    Metaverse,
}

/// Whether the lookup index of `space` holds a row for `name`'s `value`, given the store's
/// index list (`None`: every attribute).
pub fn indexes(space: Space, listed: Option<&std::collections::BTreeSet<String>>, name: &str, value: &AttrValue) -> bool {
    listed.is_none_or(|set| set.contains(name)) || (space == Space::Connector && matches!(value, AttrValue::Reference(_)))
}

/// An attribute name and one of its values.
pub type NamedValue<'a> = (&'a str, &'a AttrValue);

/// The index rows an update must delete and insert, as (attribute, value) pairs: values of
/// `old` that `new` lacks, and values of `new` that `old` lacks (compared by exact index key).
/// Renaming one member of a large group touches two rows instead of rewriting all of them.
pub fn value_changes<'a>(old: &'a Attributes, new: &'a Attributes) -> (Vec<NamedValue<'a>>, Vec<NamedValue<'a>>) {
    use std::collections::BTreeSet;
    let keys = |attributes: &Attributes, name: &str| -> BTreeSet<String> {
        attributes.get(name).iter().map(|value| index_key(value, Matching::Exact)).collect()
    };
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for (name, values) in old.iter() {
        let kept = keys(new, name);
        removed.extend(values.iter().filter(|value| !kept.contains(&index_key(value, Matching::Exact))).map(|value| (name, value)));
    }
    for (name, values) in new.iter() {
        let had = keys(old, name);
        added.extend(values.iter().filter(|value| !had.contains(&index_key(value, Matching::Exact))).map(|value| (name, value)));
    }
    (removed, added)
}

/// A set of attribute names as stored (one per line).
pub fn name_set_to_bytes(names: &std::collections::BTreeSet<String>) -> Vec<u8> {
    names.iter().map(String::as_str).collect::<Vec<_>>().join("\n").into_bytes()
}

/// The set [`name_set_to_bytes`] wrote.
pub fn name_set_from_bytes(bytes: &[u8]) -> std::collections::BTreeSet<String> {
    String::from_utf8_lossy(bytes).lines().filter(|name| !name.is_empty()).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_and_earlier_outbound_errors_are_read_as_such() {
        let outbound = ObjectError {
            stage: ErrorStage::Outbound,
            code: "source-anchor-changed".into(),
            message: "the sourceAnchor attribute has changed".into(),
            target: Some(ConnectorId("tenant".into())),
        };
        let stored = error_stage_text(&outbound);
        assert_eq!(stored, "outbound:tenant");
        assert_eq!(error_from_columns(&stored, outbound.code.clone(), outbound.message.clone()).unwrap(), outbound);
        let legacy =
            error_from_columns("sync", "outbound-source-anchor-changed".into(), "to tenant: the sourceAnchor attribute has changed".into());
        assert_eq!(legacy.unwrap(), outbound, "as stored before the stage existed");
        let flow = error_from_columns("sync", "flow-error".into(), "to be or not".into()).unwrap();
        assert_eq!((flow.stage, flow.target), (ErrorStage::Sync, None));
        assert!(error_from_columns("later", "x".into(), "y".into()).is_err());
    }

    #[test]
    fn round_trips() {
        let mut attributes = Attributes::new().with("objectGUID", AttrValue::Binary(vec![0, 255, 16]));
        attributes.set("proxyAddresses", vec![AttrValue::string("SMTP:a@x"), AttrValue::string("smtp:\"quoted\"\n")]);
        attributes.set("uac", vec![AttrValue::Integer(-2147483646)]);
        attributes.set("enabled", vec![AttrValue::Boolean(false)]);
        attributes.set("manager", vec![AttrValue::Reference("CN=Boss,DC=x".into())]);
        assert_eq!(attributes_from_text(&attributes_to_text(&attributes)).unwrap(), attributes);

        let export = PendingExport::Rename {
            new_dn: "CN=New".into(),
            changes: vec![
                AttrChange::Replace("a".into(), vec![AttrValue::Integer(1)]),
                AttrChange::Add("m".into(), vec![AttrValue::Reference("CN=x".into())]),
                AttrChange::Delete("m".into(), vec![AttrValue::Reference("CN=y".into())]),
                AttrChange::Clear("b".into()),
            ],
        };
        assert_eq!(export_from_text(&export_to_text(&export)).unwrap(), export);
        assert_eq!(export_from_text(&export_to_text(&PendingExport::Delete)).unwrap(), PendingExport::Delete);

        let mut mv = BTreeMap::new();
        mv.insert(
            "mail".to_string(),
            MvAttribute {
                values: vec![AttrValue::string("a@x")],
                lineage: vec![Lineage { rule: "r".into(), precedence: 100, connector: ConnectorId("ad".into()), cs_id: CsId(7) }],
            },
        );
        assert_eq!(mv_attributes_from_text(&mv_attributes_to_text(&mv)).unwrap(), mv);
    }

    #[test]
    fn bad_input_is_corrupt_not_a_panic() {
        for text in [
            "",
            "[]",
            "{\"a\": 1}",
            "{\"a\": [{\"z\": 1}]}",
            "{\"a\": [{\"x\": \"abc\"}]}",
            "{\"a\": [{\"i\": \"1\"}]}",
            "{\"a\": [{\"s\": 1, \"r\": 2}]}",
        ] {
            let err = attributes_from_text(text).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{text}: {err}");
        }
        assert!(export_from_text("{\"op\":\"explode\"}").unwrap_err().to_string().contains("unknown pending export"));
        assert!(import_from_code("maybe").is_err());
        assert!(mv_attributes_from_text("{\"a\": {\"v\": [], \"l\": [{\"rule\": 1}]}}").is_err());
    }

    #[test]
    fn value_changes_name_only_what_differs() {
        let mut old = Attributes::new().with("mail", AttrValue::string("a@x"));
        old.set("member", vec![AttrValue::Reference("CN=a".into()), AttrValue::Reference("CN=b".into())]);
        let mut new = old.clone();
        new.set("member", vec![AttrValue::Reference("CN=a".into()), AttrValue::Reference("CN=c".into())]);
        new.set("title", vec![AttrValue::string("t")]);
        let (removed, added) = value_changes(&old, &new);
        assert_eq!(removed, vec![("member", &AttrValue::Reference("CN=b".into()))]);
        assert_eq!(added, vec![("member", &AttrValue::Reference("CN=c".into())), ("title", &AttrValue::string("t"))]);
        let empty = Attributes::new();
        let (removed, added) = value_changes(&new, &empty);
        assert_eq!((removed.len(), added.len()), (4, 0));
    }

    #[test]
    fn index_keys_fold_text_only() {
        assert_eq!(index_key(&AttrValue::string("Ann@X"), Matching::IgnoreCase), "s:ann@x");
        assert_eq!(index_key(&AttrValue::string("Ann@X"), Matching::Exact), "s:Ann@X");
        assert_eq!(index_key(&AttrValue::Binary(vec![0xAB]), Matching::IgnoreCase), "x:ab");
    }
}
