//! Operator tools over a store: run history, connector-space search, a metaverse object with its
//! lineage, and `plan` — every pending export, like `terraform plan`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context;
use model::{AttrChange, ConnectorId, CsObject, MvId, PendingExport};
use serde_json::{Value, json};
use store::{CsQuery, Store};

/// Which store an operator command reads: the configuration's (SQLite or PostgreSQL), or an
/// SQLite file named directly.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The sync server's configuration file: its `[store]` is read (SQLite or PostgreSQL).
    /// Default: isthmus.toml, unless --db is given.
    #[arg(long, conflicts_with = "db")]
    pub config: Option<PathBuf>,
    /// An SQLite sync database (the quickstart's isthmus-quickstart.db, say).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

impl StoreArgs {
    /// Opens the store (never creates an SQLite file: a typo should not make an empty database).
    pub async fn open(&self) -> anyhow::Result<crate::config::Opened> {
        let store = match &self.db {
            Some(db) => crate::config::StoreConfig { sqlite: Some(db.clone()), postgres: None },
            None => crate::config::Config::load(self.config.as_deref().unwrap_or(std::path::Path::new("isthmus.toml")))?.store,
        };
        store.open(false).await
    }
}

fn cs_json(cs: &CsObject) -> Value {
    let export = match &cs.pending_export {
        None => Value::Null,
        Some(PendingExport::Add(changes)) => json!({"kind": "add", "changes": changes_json(changes)}),
        Some(PendingExport::Update(changes)) => json!({"kind": "update", "changes": changes_json(changes)}),
        Some(PendingExport::Rename { new_dn, changes }) => json!({"kind": "rename", "newDn": new_dn, "changes": changes_json(changes)}),
        Some(PendingExport::Delete) => json!({"kind": "delete"}),
    };
    json!({
        "id": cs.id.0, "connector": cs.connector.0, "dn": cs.dn, "name": cs.label(), "objectType": cs.object_type,
        "joinedTo": cs.link.map(|mv| mv.0), "pendingExport": export,
        "error": cs.error.as_ref().map(|error| json!({"code": error.code, "message": error.message, "target": error.target.as_ref().map(|target| target.0.clone())})),
    })
}

fn changes_json(changes: &[AttrChange]) -> Value {
    let values = |values: &[model::AttrValue]| values.iter().map(ToString::to_string).collect::<Vec<_>>();
    changes
        .iter()
        .map(|change| match change {
            AttrChange::Replace(name, new) => json!({"attribute": name, "op": "replace", "values": values(new)}),
            AttrChange::Add(name, added) => json!({"attribute": name, "op": "add", "values": values(added)}),
            AttrChange::Delete(name, removed) => json!({"attribute": name, "op": "delete", "values": values(removed)}),
            AttrChange::Clear(name) => json!({"attribute": name, "op": "clear", "values": []}),
        })
        .collect()
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `isthmus history`.
pub async fn history(store: &impl Store, limit: usize, as_json: bool) -> anyhow::Result<()> {
    let runs = store.runs(limit).await?;
    if as_json {
        let value: Vec<Value> = runs
            .iter()
            .map(|run| {
                json!({"id": run.id, "connector": run.connector.0, "step": run.step, "status": run.status, "started": run.started,
                       "finished": run.finished, "adds": run.counts.adds, "updates": run.counts.updates,
                       "deletes": run.counts.deletes, "errors": run.counts.errors})
            })
            .collect();
        return print_json(&json!({"value": value}));
    }
    println!(
        "{:>5}  {:<18} {:<13} {:<36} {:>6} {:>7} {:>7} {:>6}  {:>5}",
        "run", "connector", "step", "status", "adds", "updates", "deletes", "errors", "secs"
    );
    for run in runs {
        let seconds = run.finished.map_or("-".to_string(), |finished| (finished - run.started).to_string());
        println!(
            "{:>5}  {:<18} {:<13} {:<36} {:>6} {:>7} {:>7} {:>6}  {:>5}",
            run.id,
            run.connector.0,
            run.step,
            run.status,
            run.counts.adds,
            run.counts.updates,
            run.counts.deletes,
            run.counts.errors,
            seconds
        );
    }
    Ok(())
}

/// Filters of `isthmus cs search`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Connector id.
    #[arg(long)]
    pub connector: String,
    /// Only DNs containing this text (case-insensitive).
    #[arg(long)]
    pub dn_contains: Option<String>,
    /// Only objects with a pending export.
    #[arg(long)]
    pub pending_export: bool,
    /// Only objects with an error.
    #[arg(long)]
    pub errors: bool,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

/// `isthmus cs search`.
pub async fn cs_search(store: &impl Store, args: &SearchArgs, as_json: bool) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let connector = ConnectorId(args.connector.clone());
    let needle = args.dn_contains.as_deref().map(str::to_lowercase);
    let mut shown = 0;
    let mut after = None;
    'pages: loop {
        let query = CsQuery { pending_export: args.pending_export, with_error: args.errors, after, limit: 1000, ..CsQuery::default() };
        let page = store.cs_list(&connector, &query).await?;
        after = page.last().map(|cs| cs.id);
        let done = page.len() < 1000;
        for cs in page {
            if needle.as_ref().is_some_and(|needle| !cs.dn.to_lowercase().contains(needle)) {
                continue;
            }
            if as_json {
                found.push(cs_json(&cs));
            } else {
                print_cs_line(&cs);
            }
            shown += 1;
            if shown >= args.limit {
                break 'pages;
            }
        }
        if done {
            break;
        }
    }
    if as_json {
        return print_json(&json!({"value": found}));
    }
    println!("{shown} object(s)");
    Ok(())
}

/// `isthmus conflicts`: values the cloud directory quarantined (duplicate UPNs and proxy
/// addresses), as the cloud connector imported them (`provisioningErrors`).
pub async fn conflicts(store: &impl Store, connector: &str, as_json: bool) -> anyhow::Result<()> {
    let connector = ConnectorId(connector.to_string());
    let mut found = Vec::new();
    let mut shown = 0;
    let mut after = None;
    loop {
        let page = store.cs_list(&connector, &CsQuery { after, limit: 1000, ..CsQuery::default() }).await?;
        after = page.last().map(|cs| cs.id);
        for cs in &page {
            for conflict in cs.attributes.get("provisioningErrors") {
                let upn = cs.attributes.get("userPrincipalName").first().map(ToString::to_string).unwrap_or_default();
                if as_json {
                    found.push(json!({"id": cs.id.0, "dn": cs.dn, "userPrincipalName": upn, "conflict": conflict.to_string()}));
                } else {
                    println!("{}  {}  {upn}: {conflict}", cs.id, cs.dn);
                }
                shown += 1;
            }
        }
        if page.len() < 1000 {
            break;
        }
    }
    if as_json {
        return print_json(&json!({"value": found}));
    }
    println!("{shown} conflict(s) in {}", connector.0);
    Ok(())
}

fn print_cs_line(cs: &CsObject) {
    let link = cs.link.map_or("disconnector".to_string(), |mv| format!("joined to {mv}"));
    let export = match &cs.pending_export {
        None => String::new(),
        Some(PendingExport::Add(_)) => " [pending add]".into(),
        Some(PendingExport::Update(_)) => " [pending update]".into(),
        Some(PendingExport::Rename { .. }) => " [pending rename]".into(),
        Some(PendingExport::Delete) => " [pending delete]".into(),
    };
    let error = cs.error.as_ref().map_or(String::new(), |error| {
        let target = error.target.as_ref().map_or(String::new(), |target| format!(" (to {target})"));
        format!(" ERROR {}{target}: {}", error.code, error.message)
    });
    let name = cs.label().map_or(String::new(), |label| format!(" \"{label}\""));
    println!("{}  {}{name}  ({}, {link}){export}{error}", cs.id, cs.dn, cs.object_type);
}

/// `isthmus mv show`.
pub async fn mv_show(store: &impl Store, id: i64, as_json: bool) -> anyhow::Result<()> {
    let mv = store.mv_get(MvId(id)).await?.with_context(|| format!("there is no metaverse object {id}"))?;
    if as_json {
        let attributes: serde_json::Map<String, Value> = mv
            .attributes
            .iter()
            .map(|(name, attribute)| {
                let values: Vec<String> = attribute.values.iter().map(ToString::to_string).collect();
                let lineage: Vec<Value> = attribute
                    .lineage
                    .iter()
                    .map(|lineage| json!({"rule": lineage.rule, "precedence": lineage.precedence, "csId": lineage.cs_id.0}))
                    .collect();
                (name.to_string(), json!({"values": values, "lineage": lineage}))
            })
            .collect();
        let connectors: Vec<Value> = store.cs_linked_to(mv.id).await?.iter().map(cs_json).collect();
        return print_json(&json!({"id": mv.id.0, "objectType": mv.object_type, "attributes": attributes, "connectors": connectors}));
    }
    println!("{} ({})", mv.id, mv.object_type);
    for (name, attribute) in &mv.attributes {
        let values: Vec<String> = attribute.values.iter().map(ToString::to_string).collect();
        let lineage: Vec<String> =
            attribute.lineage.iter().map(|lineage| format!("{} [{}] via {}", lineage.rule, lineage.precedence, lineage.cs_id)).collect();
        println!("  {name:<28} {:<50}  ← {}", values.join("; "), lineage.join(", "));
    }
    println!("connectors:");
    for cs in store.cs_linked_to(mv.id).await? {
        print!("  {}: ", cs.connector.0);
        print_cs_line(&cs);
    }
    Ok(())
}

/// `isthmus plan`: every pending export of the given (or every known) connector.
pub async fn plan(store: &impl Store, connector: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let connectors: BTreeSet<String> = match connector {
        Some(connector) => [connector.to_string()].into(),
        None => store.runs(10_000).await?.into_iter().map(|run| run.connector.0).collect(),
    };
    let (mut adds, mut changes, mut deletes) = (0, 0, 0);
    for connector in connectors {
        let id = ConnectorId(connector.clone());
        let mut after = None;
        loop {
            let page = store.cs_list(&id, &CsQuery { pending_export: true, after, limit: 1000, ..CsQuery::default() }).await?;
            after = page.last().map(|cs| cs.id);
            let done = page.len() < 1000;
            for cs in page {
                if as_json {
                    match &cs.pending_export {
                        Some(PendingExport::Add(_)) => adds += 1,
                        Some(PendingExport::Delete) => deletes += 1,
                        Some(_) => changes += 1,
                        None => continue,
                    }
                    found.push(cs_json(&cs));
                    continue;
                }
                match &cs.pending_export {
                    Some(PendingExport::Add(attribute_changes)) => {
                        adds += 1;
                        println!(
                            "+ {connector}: {}{} ({})",
                            cs.dn,
                            cs.label().map_or(String::new(), |label| format!(" \"{label}\"")),
                            cs.object_type
                        );
                        print_changes(attribute_changes);
                    }
                    Some(PendingExport::Update(attribute_changes)) => {
                        changes += 1;
                        println!("~ {connector}: {}", cs.dn);
                        print_changes(attribute_changes);
                    }
                    Some(PendingExport::Rename { new_dn, changes: attribute_changes }) => {
                        changes += 1;
                        println!("~ {connector}: {} → {new_dn}", cs.dn);
                        print_changes(attribute_changes);
                    }
                    Some(PendingExport::Delete) => {
                        deletes += 1;
                        println!("- {connector}: {}", cs.dn);
                    }
                    None => {}
                }
            }
            if done {
                break;
            }
        }
    }
    if as_json {
        return print_json(&json!({"add": adds, "change": changes, "delete": deletes, "value": found}));
    }
    println!("Plan: {adds} to add, {changes} to change, {deletes} to delete.");
    Ok(())
}

fn print_changes(changes: &[AttrChange]) {
    for change in changes {
        let values = |values: &[model::AttrValue]| values.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        match change {
            AttrChange::Replace(name, new) => println!("    {name} = {}", values(new)),
            AttrChange::Add(name, added) => println!("    {name} += {}", values(added)),
            AttrChange::Delete(name, removed) => println!("    {name} -= {}", values(removed)),
            AttrChange::Clear(name) => println!("    {name} cleared"),
        }
    }
}
