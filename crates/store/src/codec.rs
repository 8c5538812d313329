//! A text encoding of attribute values, attribute sets, MV attributes with lineage and pending
//! exports, shared by adapters that store them as JSON text; and the index keys used for join
//! lookups. Decoding never panics: bad input is a [`StoreError::Corrupt`] naming what was wrong.

use std::collections::BTreeMap;

use model::{
    AttrChange, AttrValue, Attributes, ConnectorId, CsId, ErrorStage, Lineage, MvAttribute, MvId, ObjectError, PendingExport, PendingImport,
};

use crate::{ExportKind, Matching, Result, StoreError};

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

/// The stored JSON shapes, written and read through serde without an intermediate tree (a
/// large directory's attributes are most of a sync's allocations otherwise). Keys are in
/// sorted order, as the text has always been written.
mod wire {
    use serde::{Deserialize, Serialize};

    /// One value: `{"s": text}`, `{"i": n}`, `{"b": flag}`, `{"x": hex}`, `{"r": target DN}`,
    /// `{"m": MV id}` (the metaverse's references; earlier versions wrote them as `{"r": "id"}`).
    #[derive(Serialize, Deserialize)]
    pub(super) enum Value<S> {
        #[serde(rename = "s")]
        String(S),
        #[serde(rename = "i")]
        Integer(i64),
        #[serde(rename = "b")]
        Boolean(bool),
        #[serde(rename = "x")]
        Binary(S),
        #[serde(rename = "r")]
        Reference(S),
        #[serde(rename = "m")]
        MvReference(i64),
    }

    /// An MV attribute as earlier versions wrote it: its lineage in full, and values.
    #[derive(Serialize, Deserialize)]
    pub(super) struct MvAttribute<S> {
        pub(super) l: Vec<Lineage<S>>,
        pub(super) v: Vec<Value<S>>,
    }

    /// An MV object's attributes: each contributor once (`$by`), each attribute naming its
    /// contributors by position (`l`) beside its values. An object's 30-odd attributes come
    /// from two or three rules, so this is a quarter of the size of writing the lineage out.
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct MvObject<S: Ord> {
        #[serde(rename = "$a")]
        pub(super) attributes: std::collections::BTreeMap<S, MvValues<S>>,
        #[serde(rename = "$by")]
        pub(super) contributors: Vec<Lineage<S>>,
    }

    /// An MV attribute's contributors (positions in `$by`) and values.
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct MvValues<S> {
        pub(super) l: Vec<u32>,
        pub(super) v: Vec<Value<S>>,
    }

    /// One contributor of an MV attribute.
    #[derive(Serialize, Deserialize, PartialEq)]
    pub(super) struct Lineage<S> {
        pub(super) c: S,
        pub(super) cs: i64,
        pub(super) p: i32,
        pub(super) rule: S,
    }

    /// An attribute change: exactly one of the names, and the values unless it clears.
    #[derive(Serialize, Deserialize)]
    pub(super) struct Change<S> {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub(super) add: Option<S>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub(super) clear: Option<S>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub(super) delete: Option<S>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub(super) replace: Option<S>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub(super) values: Option<Vec<Value<S>>>,
    }

    /// A pending export.
    #[derive(Serialize, Deserialize)]
    pub(super) struct Export<S> {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub(super) changes: Option<Vec<Change<S>>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub(super) dn: Option<S>,
        pub(super) op: S,
    }
}

type Text<'a> = std::borrow::Cow<'a, str>;

fn value_out(value: &AttrValue) -> wire::Value<Text<'_>> {
    match value {
        AttrValue::String(text) => wire::Value::String(Text::Borrowed(text)),
        AttrValue::Integer(number) => wire::Value::Integer(*number),
        AttrValue::Boolean(flag) => wire::Value::Boolean(*flag),
        AttrValue::Binary(bytes) => wire::Value::Binary(Text::Owned(hex(bytes))),
        AttrValue::Reference(target) => wire::Value::Reference(Text::Borrowed(target)),
        AttrValue::MvReference(id) => wire::Value::MvReference(id.0),
    }
}

fn value_in(value: wire::Value<String>, space: Space) -> Result<AttrValue> {
    Ok(match (value, space) {
        (wire::Value::String(text), _) => AttrValue::String(text),
        (wire::Value::Integer(number), _) => AttrValue::Integer(number),
        (wire::Value::Boolean(flag), _) => AttrValue::Boolean(flag),
        (wire::Value::Binary(text), _) => AttrValue::Binary(unhex(&text)?),
        (wire::Value::Reference(target), Space::Connector) => AttrValue::Reference(target),
        (wire::Value::MvReference(id), Space::Metaverse) => AttrValue::MvReference(MvId(id)),
        // Written by versions that kept the metaverse's references as text.
        (wire::Value::Reference(id), Space::Metaverse) => {
            AttrValue::MvReference(MvId(id.parse().map_err(|_| corrupt(format!("a metaverse reference {id:?} is not an MV id")))?))
        }
        (wire::Value::MvReference(id), Space::Connector) => {
            return Err(corrupt(format!("a metaverse reference (MV id {id}) in a connector space's values")));
        }
    })
}

fn values_out(values: &[AttrValue]) -> Vec<wire::Value<Text<'_>>> {
    values.iter().map(value_out).collect()
}

fn values_in(values: Vec<wire::Value<String>>, space: Space) -> Result<Vec<AttrValue>> {
    values.into_iter().map(|value| value_in(value, space)).collect()
}

fn to_text(value: &impl serde::Serialize) -> String {
    // Serializing these shapes (strings, numbers, maps with string keys) cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// An attribute set as JSON text.
pub fn attributes_to_text(attributes: &Attributes) -> String {
    let map: BTreeMap<&str, Vec<wire::Value<Text<'_>>>> = attributes.iter().map(|(name, values)| (name, values_out(values))).collect();
    to_text(&map)
}

/// Decodes [`attributes_to_text`].
pub fn attributes_from_text(text: &str) -> Result<Attributes> {
    let map: BTreeMap<String, Vec<wire::Value<String>>> =
        serde_json::from_str(text).map_err(|err| corrupt(format!("attributes: {err}")))?;
    map.into_iter().map(|(name, values)| Ok((name, values_in(values, Space::Connector)?))).collect()
}

/// MV attributes with lineage as JSON text ([`wire::MvObject`]: each contributor once).
pub fn mv_attributes_to_text(attributes: &BTreeMap<String, MvAttribute>) -> String {
    let mut contributors: Vec<wire::Lineage<Text<'_>>> = Vec::new();
    let attributes: BTreeMap<Text<'_>, wire::MvValues<Text<'_>>> = attributes
        .iter()
        .map(|(name, attribute)| {
            let l = attribute
                .lineage
                .iter()
                .map(|lineage| {
                    let contributor = wire::Lineage {
                        c: Text::Borrowed(lineage.connector.0.as_str()),
                        cs: lineage.cs_id.0,
                        p: lineage.precedence,
                        rule: Text::Borrowed(lineage.rule.as_str()),
                    };
                    let at = contributors.iter().position(|known| *known == contributor).unwrap_or_else(|| {
                        contributors.push(contributor);
                        contributors.len() - 1
                    });
                    u32::try_from(at).unwrap_or(u32::MAX)
                })
                .collect();
            (Text::Borrowed(name.as_str()), wire::MvValues { l, v: values_out(&attribute.values) })
        })
        .collect();
    to_text(&wire::MvObject { attributes, contributors })
}

/// An MV object's values without their lineage (what its lookup index holds).
pub fn mv_values(attributes: &BTreeMap<String, MvAttribute>) -> Attributes {
    let mut values = Attributes::new();
    for (name, attribute) in attributes {
        values.set(name.clone(), attribute.values.clone());
    }
    values
}

fn lineage_in(item: wire::Lineage<String>) -> Lineage {
    Lineage { rule: item.rule, precedence: item.p, connector: ConnectorId(item.c), cs_id: CsId(item.cs) }
}

/// MV attributes from [`mv_attributes_to_text`], or from the shape earlier versions wrote (each
/// attribute with its lineage in full). Text in the current shape (it opens with `{"$a":`, which
/// no attribute is named) that does not parse is reported as such, not as the earlier shape.
pub fn mv_attributes_from_text(text: &str) -> Result<BTreeMap<String, MvAttribute>> {
    let parsed = serde_json::from_str::<wire::MvObject<String>>(text);
    if let Err(err) = &parsed
        && text.starts_with(r#"{"$a":"#)
    {
        return Err(corrupt(format!("MV attributes: {err}")));
    }
    if let Ok(object) = parsed {
        let contributors: Vec<Lineage> = object.contributors.into_iter().map(lineage_in).collect();
        return object
            .attributes
            .into_iter()
            .map(|(name, attribute)| {
                let lineage = attribute
                    .l
                    .iter()
                    .map(|at| {
                        usize::try_from(*at)
                            .ok()
                            .and_then(|at| contributors.get(at).cloned())
                            .ok_or_else(|| corrupt(format!("MV attribute {name}: contributor {at} of {}", contributors.len())))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((name, MvAttribute { values: values_in(attribute.v, Space::Metaverse)?, lineage }))
            })
            .collect();
    }
    let map: BTreeMap<String, wire::MvAttribute<String>> =
        serde_json::from_str(text).map_err(|err| corrupt(format!("MV attributes: {err}")))?;
    map.into_iter()
        .map(|(name, attribute)| {
            let lineage = attribute.l.into_iter().map(lineage_in).collect();
            Ok((name, MvAttribute { values: values_in(attribute.v, Space::Metaverse)?, lineage }))
        })
        .collect()
}

fn change_out(change: &AttrChange) -> wire::Change<Text<'_>> {
    let mut out = wire::Change { add: None, clear: None, delete: None, replace: None, values: None };
    match change {
        AttrChange::Replace(name, values) => (out.replace, out.values) = (Some(Text::Borrowed(name)), Some(values_out(values))),
        AttrChange::Add(name, values) => (out.add, out.values) = (Some(Text::Borrowed(name)), Some(values_out(values))),
        AttrChange::Delete(name, values) => (out.delete, out.values) = (Some(Text::Borrowed(name)), Some(values_out(values))),
        AttrChange::Clear(name) => out.clear = Some(Text::Borrowed(name)),
    }
    out
}

fn change_in(change: wire::Change<String>) -> Result<AttrChange> {
    let values =
        |values: Option<Vec<wire::Value<String>>>| values_in(values.ok_or_else(|| corrupt("a change without values"))?, Space::Connector);
    Ok(match change {
        wire::Change { replace: Some(name), values: list, .. } => AttrChange::Replace(name, values(list)?),
        wire::Change { add: Some(name), values: list, .. } => AttrChange::Add(name, values(list)?),
        wire::Change { delete: Some(name), values: list, .. } => AttrChange::Delete(name, values(list)?),
        wire::Change { clear: Some(name), .. } => AttrChange::Clear(name),
        _ => return Err(corrupt("an attribute change names no attribute")),
    })
}

fn changes_out(changes: &[AttrChange]) -> Option<Vec<wire::Change<Text<'_>>>> {
    Some(changes.iter().map(change_out).collect())
}

/// A pending export as JSON text.
pub fn export_to_text(export: &PendingExport) -> String {
    let out = match export {
        PendingExport::Add(list) => wire::Export { changes: changes_out(list), dn: None, op: Text::Borrowed("add") },
        PendingExport::Update(list) => wire::Export { changes: changes_out(list), dn: None, op: Text::Borrowed("update") },
        PendingExport::Rename { new_dn, changes: list } => {
            wire::Export { changes: changes_out(list), dn: Some(Text::Borrowed(new_dn)), op: Text::Borrowed("rename") }
        }
        PendingExport::Delete => wire::Export { changes: None, dn: None, op: Text::Borrowed("delete") },
    };
    to_text(&out)
}

/// Decodes [`export_to_text`].
pub fn export_from_text(text: &str) -> Result<PendingExport> {
    let export: wire::Export<String> = serde_json::from_str(text).map_err(|err| corrupt(format!("pending export: {err}")))?;
    let changes = |changes: Option<Vec<wire::Change<String>>>| -> Result<Vec<AttrChange>> {
        changes.ok_or_else(|| corrupt("changes are not a list"))?.into_iter().map(change_in).collect()
    };
    Ok(match kind_of_op(&export.op)? {
        ExportKind::Add => PendingExport::Add(changes(export.changes)?),
        ExportKind::Update => PendingExport::Update(changes(export.changes)?),
        ExportKind::Rename => {
            PendingExport::Rename { new_dn: export.dn.ok_or_else(|| corrupt("rename without dn"))?, changes: changes(export.changes)? }
        }
        ExportKind::Delete => PendingExport::Delete,
    })
}

/// What the pending export [`export_to_text`] wrote does, reading only its `op` (the changes
/// are skipped, not decoded).
pub fn export_kind(text: &str) -> Result<ExportKind> {
    #[derive(serde::Deserialize)]
    struct Op<'a> {
        #[serde(borrow)]
        op: std::borrow::Cow<'a, str>,
    }
    let parsed: Op<'_> = serde_json::from_str(text).map_err(|err| corrupt(format!("pending export: {err}")))?;
    kind_of_op(&parsed.op)
}

/// A stored export's `op`, read.
fn kind_of_op(op: &str) -> Result<ExportKind> {
    Ok(match op {
        "add" => ExportKind::Add,
        "update" => ExportKind::Update,
        "rename" => ExportKind::Rename,
        "delete" => ExportKind::Delete,
        other => return Err(corrupt(format!("unknown pending export \"{other}\""))),
    })
}

/// The columns that hold what a sync decides about a CS object, as adapters store them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateColumns {
    /// The DN folded to lower case (for lookups by DN).
    pub dn_folded: String,
    /// The MV object's id.
    pub link: Option<i64>,
    /// [`import_to_code`].
    pub pending_import: Option<&'static str>,
    /// [`export_to_text`].
    pub pending_export: Option<String>,
    /// [`error_stage_text`], the error's code and message.
    pub error: (Option<String>, Option<String>, Option<String>),
}

/// [`StateColumns`] of `object`.
pub fn state_columns(object: &model::CsObject) -> StateColumns {
    StateColumns {
        dn_folded: object.dn.to_lowercase(),
        link: object.link.map(|mv| mv.0),
        pending_import: object.pending_import.map(import_to_code),
        pending_export: object.pending_export.as_ref().map(export_to_text),
        error: (
            object.error.as_ref().map(error_stage_text),
            object.error.as_ref().map(|error| error.code.clone()),
            object.error.as_ref().map(|error| error.message.clone()),
        ),
    }
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
        AttrValue::MvReference(id) => format!("r:{}", id.0),
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

/// Refuses a lookup on an attribute the store's index list (`None`: every attribute) leaves out.
pub fn check_indexed(listed: Option<&std::collections::BTreeSet<String>>, attribute: &str) -> Result<()> {
    match listed {
        Some(set) if !set.contains(attribute) => {
            Err(StoreError::Conflict(format!("attribute {attribute} is not indexed for lookups; add it to the store's index list")))
        }
        _ => Ok(()),
    }
}

/// The lookup-index rows an MV object should have, as (attribute, exact key) → folded key.
pub fn mv_index_rows<'a>(
    attributes: &'a BTreeMap<String, MvAttribute>,
    listed: Option<&std::collections::BTreeSet<String>>,
) -> BTreeMap<(&'a str, String), String> {
    let mut rows = BTreeMap::new();
    for (name, attribute) in attributes {
        for value in attribute.values.iter().filter(|value| indexes(Space::Metaverse, listed, name, value)) {
            rows.insert((name.as_str(), index_key(value, Matching::Exact)), index_key(value, Matching::IgnoreCase));
        }
    }
    rows
}

/// The lookup-index rows (attribute, exact key, folded key) that attributes newly added to the
/// index list need for one stored object (`text` as the adapter keeps it); a connector
/// space's references are there already.
pub fn rows_for_newly_listed(
    space: Space,
    text: &str,
    added: &std::collections::BTreeSet<String>,
) -> Result<Vec<(String, String, String)>> {
    let attributes = match space {
        Space::Metaverse => mv_values(&mv_attributes_from_text(text)?),
        Space::Connector => attributes_from_text(text)?,
    };
    let mut rows = Vec::new();
    for (name, values) in attributes.iter().filter(|(name, _)| added.contains(*name)) {
        let already = |value: &AttrValue| space == Space::Connector && matches!(value, AttrValue::Reference(_));
        for value in values.iter().filter(|value| !already(value)) {
            rows.push((name.to_string(), index_key(value, Matching::Exact), index_key(value, Matching::IgnoreCase)));
        }
    }
    Ok(rows)
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
        assert_eq!(export_kind(&export_to_text(&export)).unwrap(), crate::ExportKind::Rename);
        assert_eq!(export_kind(&export_to_text(&PendingExport::Delete)).unwrap(), crate::ExportKind::Delete);
        assert_eq!(export_kind(&export_to_text(&PendingExport::Add(vec![]))).unwrap(), crate::ExportKind::Add);
        assert_eq!(export_kind(&export_to_text(&PendingExport::Update(vec![]))).unwrap(), crate::ExportKind::Update);
        assert!(export_kind("{\"op\":\"explode\"}").is_err());
        assert!(export_kind("{\"changes\":[]}").is_err());

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

    /// The text is what earlier versions wrote (keys sorted), so stored rows read back and an
    /// unchanged object encodes to the same text (which lets updates skip index work).
    #[test]
    fn the_stored_text_keeps_its_shape() {
        let mut attributes = Attributes::new().with("b", AttrValue::Binary(vec![1, 171]));
        attributes.set(
            "a",
            vec![AttrValue::string("x\"y"), AttrValue::Integer(-3), AttrValue::Boolean(true), AttrValue::Reference("CN=R".into())],
        );
        assert_eq!(attributes_to_text(&attributes), r#"{"a":[{"s":"x\"y"},{"i":-3},{"b":true},{"r":"CN=R"}],"b":[{"x":"01ab"}]}"#);
        let mut mv = BTreeMap::new();
        let lineage = vec![Lineage { rule: "In".into(), precedence: 7, connector: ConnectorId("ad".into()), cs_id: CsId(3) }];
        mv.insert("mail".to_string(), MvAttribute { values: vec![AttrValue::string("m")], lineage: lineage.clone() });
        let other = Lineage { rule: "Other".into(), precedence: 9, connector: ConnectorId("hr".into()), cs_id: CsId(4) };
        mv.insert("title".to_string(), MvAttribute { values: vec![AttrValue::string("t")], lineage: vec![other, lineage[0].clone()] });
        let text = mv_attributes_to_text(&mv);
        assert_eq!(
            text,
            r#"{"$a":{"mail":{"l":[0],"v":[{"s":"m"}]},"title":{"l":[1,0],"v":[{"s":"t"}]}},"$by":[{"c":"ad","cs":3,"p":7,"rule":"In"},{"c":"hr","cs":4,"p":9,"rule":"Other"}]}"#,
            "each contributor once"
        );
        assert_eq!(mv_attributes_from_text(&text).unwrap(), mv);
        // The shape earlier versions wrote: every attribute with its lineage in full.
        let earlier = r#"{"mail":{"l":[{"c":"ad","cs":3,"p":7,"rule":"In"}],"v":[{"s":"m"}]},"title":{"l":[{"c":"hr","cs":4,"p":9,"rule":"Other"},{"c":"ad","cs":3,"p":7,"rule":"In"}],"v":[{"s":"t"}]}}"#;
        assert_eq!(mv_attributes_from_text(earlier).unwrap(), mv, "read as written by an earlier version");
        assert_eq!(mv_attributes_from_text("{}").unwrap(), BTreeMap::new());
        let out_of_range = r#"{"$a":{"mail":{"l":[2],"v":[{"s":"m"}]}},"$by":[]}"#;
        assert!(matches!(mv_attributes_from_text(out_of_range), Err(StoreError::Corrupt(_))), "a contributor that is not there");
        let bad_value = r#"{"$a":{"mail":{"l":[0],"v":[{"q":1}]}},"$by":[{"c":"ad","cs":3,"p":7,"rule":"In"}]}"#;
        match mv_attributes_from_text(bad_value) {
            Err(StoreError::Corrupt(message)) => assert!(message.contains("unknown variant `q`"), "the current shape's error: {message}"),
            other => panic!("a bad value in the current shape: {other:?}"),
        }
        let rename = PendingExport::Rename {
            new_dn: "CN=N".into(),
            changes: vec![AttrChange::Replace("a".into(), vec![AttrValue::Integer(1)]), AttrChange::Clear("b".into())],
        };
        assert_eq!(export_to_text(&rename), r#"{"changes":[{"replace":"a","values":[{"i":1}]},{"clear":"b"}],"dn":"CN=N","op":"rename"}"#);
        assert_eq!(export_to_text(&PendingExport::Delete), r#"{"op":"delete"}"#);
        assert_eq!(
            export_to_text(&PendingExport::Add(vec![AttrChange::Add("m".into(), vec![]), AttrChange::Delete("n".into(), vec![])])),
            r#"{"changes":[{"add":"m","values":[]},{"delete":"n","values":[]}],"op":"add"}"#
        );
    }

    /// The metaverse's references are MV ids (`{"m": id}`); earlier versions wrote them as
    /// text (`{"r": "id"}`), which still reads as the same reference. A connector space holds
    /// DNs only: an MV id there, or a text reference in the metaverse that is no id, is
    /// reported as corrupt rather than read as something else.
    #[test]
    fn metaverse_references_are_ids_and_earlier_text_ones_still_read() {
        let lineage = vec![Lineage { rule: "In".into(), precedence: 7, connector: ConnectorId("ad".into()), cs_id: CsId(3) }];
        let mut mv = BTreeMap::new();
        mv.insert("manager".to_string(), MvAttribute { values: vec![AttrValue::MvReference(MvId(42))], lineage });
        let text = mv_attributes_to_text(&mv);
        assert_eq!(text, r#"{"$a":{"manager":{"l":[0],"v":[{"m":42}]}},"$by":[{"c":"ad","cs":3,"p":7,"rule":"In"}]}"#);
        assert_eq!(mv_attributes_from_text(&text).unwrap(), mv);
        let earlier = r#"{"manager":{"l":[{"c":"ad","cs":3,"p":7,"rule":"In"}],"v":[{"r":"42"}]}}"#;
        assert_eq!(mv_attributes_from_text(earlier).unwrap(), mv, "written by an earlier version");
        let not_an_id = r#"{"manager":{"l":[],"v":[{"r":"CN=Boss,DC=x"}]}}"#;
        assert!(matches!(mv_attributes_from_text(not_an_id), Err(StoreError::Corrupt(_))));
        assert!(matches!(attributes_from_text(r#"{"manager":[{"m":42}]}"#), Err(StoreError::Corrupt(_))));
        assert_eq!(index_key(&AttrValue::MvReference(MvId(42)), Matching::Exact), "r:42", "the key earlier rows were indexed by");
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = AttrValue> {
        use proptest::prelude::*;
        prop_oneof![
            any::<String>().prop_map(AttrValue::String),
            any::<i64>().prop_map(AttrValue::Integer),
            any::<bool>().prop_map(AttrValue::Boolean),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(AttrValue::Binary),
            any::<String>().prop_map(AttrValue::Reference),
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_attributes_round_trip(entries in proptest::collection::btree_map(".{0,8}", proptest::collection::vec(any_value(), 0..4), 0..5)) {
            let mut attributes = Attributes::new();
            for (name, values) in entries {
                attributes.set(name, values);
            }
            proptest::prop_assert_eq!(attributes_from_text(&attributes_to_text(&attributes)).unwrap(), attributes);
        }

        #[test]
        fn any_metaverse_object_round_trips(
            entries in proptest::collection::btree_map(".{0,8}", (proptest::collection::vec(0usize..4, 0..3), proptest::collection::vec(proptest::prelude::any::<i64>(), 0..3), ".{0,4}"), 0..5)
        ) {
            // Contributors from a small pool, so that several attributes share one.
            let pool: Vec<Lineage> = (0..4)
                .map(|n| Lineage { rule: format!("rule {}", n % 2), precedence: n, connector: ConnectorId(format!("c{n}")), cs_id: CsId(i64::from(n)) })
                .collect();
            let mv: BTreeMap<String, MvAttribute> = entries
                .into_iter()
                .map(|(name, (contributors, ids, text))| {
                    let mut values: Vec<AttrValue> = ids.into_iter().map(|id| AttrValue::MvReference(MvId(id))).collect();
                    values.push(AttrValue::String(text));
                    (name, MvAttribute { values, lineage: contributors.into_iter().map(|n| pool[n].clone()).collect() })
                })
                .collect();
            proptest::prop_assert_eq!(mv_attributes_from_text(&mv_attributes_to_text(&mv)).unwrap(), mv);
        }

        #[test]
        fn any_export_round_trips(name in ".{0,8}", dn in ".{0,12}", values in proptest::collection::vec(any_value(), 0..4), kind in 0u8..4) {
            let changes = vec![AttrChange::Add(name.clone(), values.clone()), AttrChange::Clear(name.clone())];
            let export = match kind {
                0 => PendingExport::Add(changes),
                1 => PendingExport::Update(changes),
                2 => PendingExport::Rename { new_dn: dn, changes },
                _ => PendingExport::Delete,
            };
            proptest::prop_assert_eq!(export_from_text(&export_to_text(&export)).unwrap(), export);
        }

        #[test]
        fn any_text_decodes_or_is_corrupt(text in ".{0,40}") {
            for result in [attributes_from_text(&text).map(|_| ()), mv_attributes_from_text(&text).map(|_| ()), export_from_text(&text).map(|_| ())] {
                if let Err(err) = result {
                    proptest::prop_assert!(matches!(err, StoreError::Corrupt(_)));
                }
            }
        }
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
        assert!(
            mv_attributes_from_text("{\"a\": {\"v\": [], \"l\": [{\"c\": \"ad\", \"cs\": 1, \"p\": 4294967296, \"rule\": \"r\"}]}}")
                .is_err()
        );
        assert!(export_from_text("{\"op\":\"add\",\"changes\":[{\"values\":[]}]}").is_err(), "a change naming nothing");
        assert!(export_from_text("{\"op\":\"add\",\"changes\":[{\"add\":\"m\"}]}").is_err(), "an add without values");
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
