//! Operator tools over a store: run history, connector-space search, a metaverse object with its
//! lineage, and `plan` — every pending export, like `terraform plan`.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use model::{AttrChange, ConnectorId, CsObject, MvId, PendingExport};
use store::{CsQuery, Store};
use store_sqlite::SqliteStore;

/// Opens an existing database (never creates one: a typo should not make an empty database).
pub async fn open(db: &Path) -> anyhow::Result<SqliteStore> {
    anyhow::ensure!(db.exists(), "{} does not exist (run `isthmus quickstart` or point --db at a database)", db.display());
    let store = SqliteStore::open(db).with_context(|| format!("open {}", db.display()))?;
    store.migrate().await.context("check the database schema")?;
    Ok(store)
}

/// `isthmus history`.
pub async fn history(store: &SqliteStore, limit: usize) -> anyhow::Result<()> {
    println!(
        "{:>5}  {:<18} {:<13} {:<36} {:>6} {:>7} {:>7} {:>6}  {:>5}",
        "run", "connector", "step", "status", "adds", "updates", "deletes", "errors", "secs"
    );
    for run in store.runs(limit).await? {
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
pub async fn cs_search(store: &SqliteStore, args: &SearchArgs) -> anyhow::Result<()> {
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
            print_cs_line(&cs);
            shown += 1;
            if shown >= args.limit {
                break 'pages;
            }
        }
        if done {
            break;
        }
    }
    println!("{shown} object(s)");
    Ok(())
}

/// `isthmus conflicts`: values the cloud directory quarantined (duplicate UPNs and proxy
/// addresses), as the cloud connector imported them (`provisioningErrors`).
pub async fn conflicts(store: &SqliteStore, connector: &str) -> anyhow::Result<()> {
    let connector = ConnectorId(connector.to_string());
    let mut shown = 0;
    let mut after = None;
    loop {
        let page = store.cs_list(&connector, &CsQuery { after, limit: 1000, ..CsQuery::default() }).await?;
        after = page.last().map(|cs| cs.id);
        for cs in &page {
            for conflict in cs.attributes.get("provisioningErrors") {
                let upn = cs.attributes.get("userPrincipalName").first().map(ToString::to_string).unwrap_or_default();
                println!("{}  {}  {upn}: {conflict}", cs.id, cs.dn);
                shown += 1;
            }
        }
        if page.len() < 1000 {
            break;
        }
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
    let error = cs.error.as_ref().map_or(String::new(), |error| format!(" ERROR {}: {}", error.code, error.message));
    println!("{}  {}  ({}, {link}){export}{error}", cs.id, cs.dn, cs.object_type);
}

/// `isthmus mv show`.
pub async fn mv_show(store: &SqliteStore, id: i64) -> anyhow::Result<()> {
    let mv = store.mv_get(MvId(id)).await?.with_context(|| format!("there is no metaverse object {id}"))?;
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
pub async fn plan(store: &SqliteStore, connector: Option<&str>) -> anyhow::Result<()> {
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
                match &cs.pending_export {
                    Some(PendingExport::Add(attribute_changes)) => {
                        adds += 1;
                        println!("+ {connector}: {} ({})", cs.dn, cs.object_type);
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
