//! `isthmus preview`: what a sync would do to one connector-space object — the rules in scope,
//! the join or projection, the metaverse values (old → new, with the contributing rule), and
//! what every connector space would get (provision, export, delete, errors) — without changing
//! anything. The answer is `sync_runner::Runner::explain`'s: the sync step's own code run over
//! an overlay of the store; this file only prints it.

use std::collections::BTreeMap;

use anyhow::Context;
use model::{AttrChange, AttrValue, ConnectorId, CsObject, MvId, MvObject, PendingExport};
use store::Store;
use sync_expr::Value;
use sync_rules::RuleSet;

/// Options of `isthmus preview`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: crate::ops::StoreArgs,
    /// The object's connector.
    #[arg(long)]
    pub connector: String,
    /// The object's DN.
    #[arg(long)]
    pub dn: String,
    /// A rule file (TOML). Default: the rules of --config's file.
    #[arg(long, conflicts_with = "default_rules")]
    pub rules: Option<std::path::PathBuf>,
    /// The default rules for `AD1,AD2:CLOUD` (the quickstart's are `corp.example.test:tenant`).
    #[arg(long)]
    pub default_rules: Option<String>,
    /// A `%Parameter%` value for the object's connector, e.g. `Domain.FQDN=corp.example.test` (repeatable).
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(name, value)| (name.to_string(), value.to_string())).ok_or_else(|| format!("`{text}` is not NAME=VALUE"))
}

fn load_rules(args: &Args) -> anyhow::Result<RuleSet> {
    match (&args.rules, &args.default_rules) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
            RuleSet::parse(&text).map_err(|errors| {
                anyhow::anyhow!("{}: {}", file.display(), errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
            })
        }
        (None, Some(spec)) => {
            let (ads, cloud) = spec.split_once(':').with_context(|| format!("--default-rules `{spec}` is not AD1,AD2:CLOUD"))?;
            let ads: Vec<&str> = ads.split(',').collect();
            sync_rules::defaults::ad_to_cloud(&ads, cloud)
                .map_err(|errors| anyhow::anyhow!("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
        }
        // The rules of the configuration file the store came from.
        (None, None) if args.store.db.is_none() => {
            crate::config::Config::load(args.store.config.as_deref().unwrap_or(std::path::Path::new("isthmus.toml")))?.rules()
        }
        (None, None) => anyhow::bail!("say which rules to preview with: --rules FILE, --default-rules AD:CLOUD, or --config (its rules)"),
    }
}

fn show(values: &[AttrValue]) -> String {
    values.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

fn mv_name(id: MvId) -> String {
    if id.0 >= i64::MAX / 2 { "a new metaverse object".to_string() } else { id.to_string() }
}

/// Runs the preview: the runner's explanation (the sync step's own code over an overlay of
/// the store), printed.
pub async fn run<S: Store>(store: S, args: &Args) -> anyhow::Result<()> {
    let rules = load_rules(args)?;
    let runner = sync_runner::Runner::new(store, rules, sync_runner::RunnerConfig::default());
    let parameters: BTreeMap<String, Value> = args.params.iter().map(|(name, value)| (name.clone(), Value::str(value.clone()))).collect();
    let explanation = runner.explain(&ConnectorId(args.connector.clone()), &args.dn, parameters).await?;
    let cs = &explanation.object;
    println!(
        "{} ({}) in {}: {}",
        cs.dn,
        cs.object_type,
        cs.connector.0,
        cs.link.map_or("disconnector".to_string(), |mv| format!("joined to {mv}"))
    );
    println!("inbound rules in scope:");
    for (precedence, name) in &explanation.rules_in_scope {
        println!("  [{precedence}] {name}");
    }
    if explanation.rules_in_scope.is_empty() {
        println!("  (none)");
    }
    match &explanation.metaverse {
        Some(mv) => {
            let before = explanation.mv_changes.iter().find(|(_, after)| after.as_ref().is_some_and(|after| after.id == mv.id));
            match before {
                Some((None, _)) => {
                    println!("metaverse: {} ({}) would be projected:", mv_name(mv.id), mv.object_type);
                    print_values(None, mv);
                }
                Some((Some(old), _)) => {
                    println!("metaverse: {} ({}) would change:", mv.id, mv.object_type);
                    print_values(Some(old), mv);
                }
                None => {
                    println!("metaverse: {} ({}) stays as it is:", mv.id, mv.object_type);
                    print_values(Some(mv), mv);
                }
            }
        }
        None => println!("metaverse: not joined; nothing flows"),
    }
    for (before, after) in &explanation.mv_changes {
        if let (Some(old), None) = (before, after) {
            println!("  - {} ({}) would be deleted", old.id, old.object_type);
        }
    }
    println!("connector spaces:");
    for (before, after) in &explanation.cs_changes {
        match (before, after) {
            (None, Some(new)) => println!("  + {}: would provision {} {}{}", new.connector.0, new.object_type, new.dn, export_text(new)),
            (Some(old), Some(new)) => {
                let mut what = Vec::new();
                if old.link != new.link {
                    what.push(match new.link {
                        Some(mv) => format!("would join {}", mv_name(mv)),
                        None => "would be disconnected".to_string(),
                    });
                }
                if old.pending_export != new.pending_export {
                    what.push(format!("would export{}", export_text(new)));
                }
                if old.error != new.error {
                    what.push(match &new.error {
                        Some(error) => format!("error {}: {}", error.code, error.message),
                        None => "its error would clear".to_string(),
                    });
                }
                if old.dn != new.dn {
                    what.push(format!("renamed to {}", new.dn));
                }
                println!("  ~ {}: {} {}", new.connector.0, new.dn, what.join("; "));
            }
            (Some(old), None) => println!("  - {}: {} would be removed from the connector space", old.connector.0, old.dn),
            (None, None) => {}
        }
    }
    if explanation.cs_changes.is_empty() {
        println!("  (no change)");
    }
    Ok(())
}

fn print_values(old: Option<&MvObject>, new: &MvObject) {
    let mut names: Vec<&String> = new.attributes.keys().chain(old.map(|old| old.attributes.keys()).into_iter().flatten()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let before = old.and_then(|old| old.attributes.get(name)).map(|attribute| show(&attribute.values)).unwrap_or_default();
        let attribute = new.attributes.get(name);
        let after = attribute.map(|attribute| show(&attribute.values)).unwrap_or_default();
        let rule =
            attribute.and_then(|attribute| attribute.lineage.first()).map_or(String::new(), |lineage| format!("  ← {}", lineage.rule));
        if before == after {
            println!("      {name:<28} {after}{rule}");
        } else if old.is_some() {
            println!("    ~ {name:<28} {before} → {after}{rule}");
        } else {
            println!("    + {name:<28} {after}{rule}");
        }
    }
}

fn export_text(cs: &CsObject) -> String {
    let changes = |changes: &[AttrChange]| {
        changes
            .iter()
            .map(|change| match change {
                AttrChange::Replace(name, values) => format!("{name}={}", show(values)),
                AttrChange::Add(name, values) => format!("{name}+={}", show(values)),
                AttrChange::Delete(name, values) => format!("{name}-={}", show(values)),
                AttrChange::Clear(name) => format!("{name} cleared"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &cs.pending_export {
        None => String::new(),
        Some(PendingExport::Add(list)) => format!(" (add: {})", changes(list)),
        Some(PendingExport::Update(list)) => format!(" (update: {})", changes(list)),
        Some(PendingExport::Rename { new_dn, changes: list }) => format!(" (rename to {new_dn}: {})", changes(list)),
        Some(PendingExport::Delete) => " (delete)".to_string(),
    }
}
