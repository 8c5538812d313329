//! `isthmus preview`: what a sync would do to one connector-space object — the rules in scope,
//! the join decision, the metaverse values it would compute (old → new, with the contributing
//! rule) and the outbound decision for every target — without changing anything.

use std::collections::BTreeMap;

use anyhow::Context;
use model::{AttrValue, ConnectorId, CsObject, MvId, MvObject};
use store::{Matching, Store};
use sync_engine::inbound::{self, Candidate, InboundInput, JoinDecision, JoinPlan};
use sync_engine::outbound::{self, OutboundDecision, OutboundInput};
use sync_expr::Value;
use sync_rules::{Direction, RuleSet};

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
    /// A rule file (TOML). Either this or --default-rules.
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
        (None, None) => anyhow::bail!("say which rules to preview with: --rules FILE or --default-rules AD:CLOUD"),
    }
}

fn show(values: &[AttrValue]) -> String {
    values.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Runs the preview.
pub async fn run(store: &impl Store, args: &Args) -> anyhow::Result<()> {
    let rules = load_rules(args)?;
    let connector = ConnectorId(args.connector.clone());
    let cs = store.cs_by_dn(&connector, &args.dn).await?.with_context(|| format!("{} has no object {}", args.connector, args.dn))?;
    let mut parameters: BTreeMap<ConnectorId, BTreeMap<String, Value>> = BTreeMap::new();
    let own = parameters.entry(connector.clone()).or_default();
    own.insert("Connector.ID".into(), Value::str(connector.0.clone()));
    for (name, value) in &args.params {
        own.insert(name.clone(), Value::str(value.clone()));
    }
    let member_of = |_: &CsObject, _: &str| false;
    println!(
        "{} ({}) in {}: {}",
        cs.dn,
        cs.object_type,
        connector.0,
        cs.link.map_or("disconnector".to_string(), |mv| format!("joined to {mv}"))
    );
    let in_scope = inbound::rules_in_scope(&rules, &cs, &member_of);
    println!("inbound rules in scope:");
    for rule in &in_scope {
        println!("  [{}] {}", rule.precedence, rule.name);
    }
    if in_scope.is_empty() {
        println!("  (none)");
    }

    // Join or projection.
    let (mv, is_new) = match cs.link {
        Some(id) => (store.mv_get(id).await?.with_context(|| format!("{id} is missing"))?, false),
        None => {
            let plan = inbound::plan_join(&rules, &cs, &member_of);
            let mut candidates = Vec::new();
            if let JoinPlan::Lookup { groups, .. } = &plan {
                for group in groups {
                    let mut found = Vec::new();
                    if let Some(query) = group {
                        let mut ids: Option<Vec<MvId>> = None;
                        for (attribute, values, case_sensitive) in &query.clauses {
                            let matching = if *case_sensitive { Matching::Exact } else { Matching::IgnoreCase };
                            let hits = store.mv_find(&query.mv_type, attribute, values, matching).await?;
                            ids = Some(match ids {
                                None => hits,
                                Some(previous) => previous.into_iter().filter(|id| hits.contains(id)).collect(),
                            });
                        }
                        for id in ids.unwrap_or_default() {
                            let taken = store.cs_linked_to(id).await?.iter().any(|other| other.connector == cs.connector);
                            found.push(Candidate { mv: id, taken_by_same_connector: taken });
                        }
                    }
                    candidates.push(found);
                }
            }
            match inbound::decide_join(&plan, &candidates) {
                JoinDecision::Join(id) => {
                    println!("join: would join {id}");
                    (store.mv_get(id).await?.with_context(|| format!("{id} is missing"))?, false)
                }
                JoinDecision::Project(mv_type) => {
                    println!("join: no match; would project a new {mv_type}");
                    (MvObject { id: MvId(0), object_type: mv_type, attributes: BTreeMap::new() }, true)
                }
                JoinDecision::Disconnector => {
                    println!("join: stays a disconnector; nothing flows");
                    return Ok(());
                }
                JoinDecision::Error(error) => {
                    println!("join: error {}: {}", error.code, error.message);
                    return Ok(());
                }
            }
        }
    };

    // Inbound flow with every joined object (this one as it is now).
    let mut joined: Vec<CsObject> = if is_new { Vec::new() } else { store.cs_linked_to(mv.id).await? };
    joined.retain(|other| other.id != cs.id);
    joined.push(cs.clone());
    let refs: Vec<&CsObject> = joined.iter().collect();
    let resolve = |_: &ConnectorId, _: &str| None;
    let mut random = || 4u64;
    let now = sync_expr::time::DateTime::from_unix_seconds(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
    )
    .unwrap_or(sync_expr::time::DateTime::MIN);
    let result = inbound::flow_inbound(InboundInput {
        rules: &rules,
        mv: &mv,
        is_new,
        joined: &refs,
        member_of: &member_of,
        parameters: &parameters,
        resolve_reference: &resolve,
        now,
        random: &mut random,
    });
    println!("metaverse ({}):", mv.object_type);
    let mut names: Vec<&String> = result.attributes.keys().chain(mv.attributes.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let old = mv.attributes.get(name).map(|attribute| show(&attribute.values)).unwrap_or_default();
        let new = result.attributes.get(name);
        let new_text = new.map(|attribute| show(&attribute.values)).unwrap_or_default();
        let rule = new.and_then(|attribute| attribute.lineage.first()).map_or(String::new(), |lineage| format!("  ← {}", lineage.rule));
        if old == new_text {
            println!("    {name:<28} {new_text}{rule}");
        } else {
            println!("  ~ {name:<28} {old} → {new_text}{rule}");
        }
    }
    for (_, error) in &result.errors {
        println!("  ! {}: {}", error.code, error.message);
    }

    // Outbound to every connector with outbound rules for this MV type.
    let projected = MvObject { id: mv.id, object_type: mv.object_type.clone(), attributes: result.attributes.clone() };
    let mut targets: Vec<ConnectorId> = rules
        .rules()
        .iter()
        .filter(|rule| rule.direction == Direction::Outbound && rule.source_type == projected.object_type)
        .map(|rule| rule.connector.clone())
        .collect();
    targets.dedup();
    for target in targets {
        let target_cs = joined.iter().find(|other| other.connector == target);
        let empty = BTreeMap::new();
        let resolve_outbound = |_: MvId| None;
        let mut random = || 5u64;
        let decision = outbound::sync_outbound(OutboundInput {
            rules: &rules,
            mv: &projected,
            connector: &target,
            joined: target_cs,
            join_candidates: &[],
            parameters: &empty,
            resolve_reference: &resolve_outbound,
            now,
            random: &mut random,
        });
        println!("outbound to {}: {}", target.0, describe(&decision));
    }
    Ok(())
}

fn describe(decision: &OutboundDecision) -> String {
    match decision {
        OutboundDecision::Nothing => "nothing to do".into(),
        OutboundDecision::Join { cs, .. } => format!("would join {cs}"),
        OutboundDecision::Provision { dn, object_type, attributes, .. } => {
            let values: Vec<String> = attributes.iter().map(|(name, values)| format!("{name}={}", show(values))).collect();
            format!("would provision {object_type} {dn} with {}", values.join(", "))
        }
        OutboundDecision::Export(export) => format!("would export {export:?}"),
        OutboundDecision::Deprovision(cs) => format!("would delete {cs}"),
        OutboundDecision::Error(error) => format!("error {}: {}", error.code, error.message),
    }
}
