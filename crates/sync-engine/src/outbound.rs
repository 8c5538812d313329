//! Outbound synchronization (MV → CS): provisioning, deprovisioning and export attribute flow
//! for one MV object and one target connector, ending in a pending export.
//!
//! Export changes are computed against the CS object's *imported* values, so an export that
//! has not been confirmed by an import yet is computed again on the next sync (Entra's export
//! memory and confirming import).

use std::collections::BTreeMap;

use model::{AttrChange, AttrValue, Attributes, ConnectorId, CsId, CsObject, MvId, MvObject, ObjectError, PendingExport};
use sync_expr::Value;
use sync_expr::time::DateTime;
use sync_rules::{Direction, LinkType, Rule, RuleSet, scope};

use crate::flow::{self, Contribution, FlowEnv, Resolved};
use crate::inbound::sync_error;
use crate::values::{ObjectSource, Produced};

/// The outbound rules for `connector` whose scope holds for `mv`, by precedence.
pub fn rules_in_scope<'r>(rules: &'r RuleSet, mv: &MvObject, connector: &ConnectorId) -> Vec<&'r Rule> {
    let attributes = mv.plain_attributes();
    rules
        .rules()
        .iter()
        .filter(|rule| rule.direction == Direction::Outbound && &rule.connector == connector && rule.source_type == mv.object_type)
        .filter(|rule| scope::in_scope(&rule.scope, &attributes, &|_| false))
        .collect()
}

/// Whether some outbound rule provisions MV objects of this one's type into `connector`.
fn provisions_into(rules: &RuleSet, mv: &MvObject, connector: &ConnectorId) -> bool {
    rules.rules().iter().any(|rule| {
        rule.direction == Direction::Outbound
            && &rule.connector == connector
            && rule.source_type == mv.object_type
            && rule.link_type == LinkType::Provision
    })
}

/// A lookup of existing CS objects an MV object could join to before anything is provisioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundJoinQuery {
    /// The CS object type.
    pub cs_type: String,
    /// `(CS attribute, MV values, case-sensitive)`; all must match.
    pub clauses: Vec<(String, Vec<AttrValue>, bool)>,
}

/// Everything outbound sync reads for one MV object and one connector.
pub struct OutboundInput<'a> {
    /// The rules.
    pub rules: &'a RuleSet,
    /// The MV object.
    pub mv: &'a MvObject,
    /// The target connector.
    pub connector: &'a ConnectorId,
    /// The connector's CS object joined to `mv`, if any.
    pub joined: Option<&'a CsObject>,
    /// Disconnectors of the connector found by the join queries of [`join_queries`] (in order);
    /// empty when the caller did not look (e.g. `joined` is set).
    pub join_candidates: &'a [Vec<CsId>],
    /// `%Name%` parameters of the connector.
    pub parameters: &'a BTreeMap<String, Value>,
    /// Turns an MV reference (an MV id) into the DN of the connector's CS object joined to it.
    pub resolve_reference: &'a dyn Fn(MvId) -> Option<String>,
    /// The run's start.
    pub now: DateTime,
    /// Randomness.
    pub random: &'a mut dyn FnMut() -> u64,
}

/// What outbound sync decided for one MV object and connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundDecision {
    /// Nothing to do.
    Nothing,
    /// Join the MV object to an existing disconnector of the connector, and export these changes to it.
    Join {
        /// The disconnector.
        cs: CsId,
        /// Its pending export (may be `None`: already equal).
        export: Option<PendingExport>,
    },
    /// Create an export object (no anchor until an import confirms it).
    Provision {
        /// The rule that provisions.
        rule: String,
        /// CS object type.
        object_type: String,
        /// DN.
        dn: String,
        /// Initial attributes; the pending export is `Add` of them.
        attributes: Attributes,
    },
    /// Export these changes to the joined object.
    Export(PendingExport),
    /// Delete the joined object (its provisioning rule is out of scope, or the MV object is gone) and disconnect it.
    Deprovision(CsId),
    /// A per-object error (on the MV object's export side); nothing is exported.
    Error(ObjectError),
}

/// The join lookups to run before calling [`sync_outbound`] for an MV object without a joined
/// CS object in `connector` (empty when no rule in scope joins).
pub fn join_queries(rules: &RuleSet, mv: &MvObject, connector: &ConnectorId) -> Vec<Option<OutboundJoinQuery>> {
    let Some(rule) = rules_in_scope(rules, mv, connector).into_iter().find(|rule| !rule.join.is_empty()) else {
        return Vec::new();
    };
    rule.join
        .iter()
        .map(|group| {
            let mut clauses = Vec::new();
            for clause in group {
                let values = mv.values(&clause.source);
                if values.is_empty() {
                    return None;
                }
                clauses.push((clause.target.clone(), values.to_vec(), clause.case_sensitive));
            }
            Some(OutboundJoinQuery { cs_type: rule.target_type.clone(), clauses })
        })
        .collect()
}

/// Decides provisioning and computes the export for one MV object and connector.
pub fn sync_outbound(mut input: OutboundInput<'_>) -> OutboundDecision {
    let in_scope = rules_in_scope(input.rules, input.mv, input.connector);
    let provisioning = in_scope.iter().find(|rule| rule.link_type == LinkType::Provision).copied();
    match input.joined {
        Some(cs) => {
            if provisioning.is_none() && !in_scope.iter().any(|rule| rule.link_type == LinkType::StickyJoin) {
                // Only a connector that outbound rules provision objects of this type into
                // deletes them again; join rules alone (a writeback to the source directory)
                // never delete what they did not create.
                if provisions_into(input.rules, input.mv, input.connector) {
                    return OutboundDecision::Deprovision(cs.id);
                }
                if in_scope.is_empty() {
                    return OutboundDecision::Nothing;
                }
            }
            match desired(&mut input, &in_scope, false) {
                Err(error) => OutboundDecision::Error(error),
                Ok(targets) => export_for(cs, &targets).map_or(OutboundDecision::Nothing, OutboundDecision::Export),
            }
        }
        None => {
            let Some(rule) = provisioning.or_else(|| in_scope.iter().find(|rule| !rule.join.is_empty()).copied()) else {
                return OutboundDecision::Nothing;
            };
            // A join to an existing object (e.g. a cloud object with the same immutable id) comes first.
            for (index, candidates) in input.join_candidates.iter().enumerate() {
                match candidates.as_slice() {
                    [] => {}
                    [only] => {
                        return match desired(&mut input, &in_scope, false) {
                            Err(error) => OutboundDecision::Error(error),
                            Ok(_) => OutboundDecision::Join { cs: *only, export: None },
                        };
                    }
                    many => {
                        return OutboundDecision::Error(sync_error(
                            "ambiguous-join",
                            format!(
                                "outbound join group {} of \"{}\" matches {} objects in {}",
                                index + 1,
                                rule.name,
                                many.len(),
                                input.connector
                            ),
                        ));
                    }
                }
            }
            if rule.link_type != LinkType::Provision {
                return OutboundDecision::Nothing;
            }
            match desired(&mut input, &in_scope, true) {
                Err(error) => OutboundDecision::Error(error),
                Ok(targets) => {
                    let mut attributes = Attributes::new();
                    let mut dn = None;
                    for (name, resolved) in targets {
                        if let Resolved::Set(values, _) = resolved {
                            if name == "dn" {
                                dn = values.first().map(ToString::to_string);
                            } else {
                                attributes.set(name, values);
                            }
                        }
                    }
                    OutboundDecision::Provision {
                        rule: rule.name.clone(),
                        object_type: rule.target_type.clone(),
                        dn: dn.unwrap_or_else(|| format!("CN={{{}}}", input.mv.id.0)),
                        attributes,
                    }
                }
            }
        }
    }
}

/// The pending export that brings `cs` to `targets`, or `None` when it already matches.
fn export_for(cs: &CsObject, targets: &BTreeMap<String, Resolved<String>>) -> Option<PendingExport> {
    let mut changes = Vec::new();
    let mut new_dn = None;
    for (name, resolved) in targets {
        if name == "dn" {
            if let Resolved::Set(values, _) = resolved
                && let Some(dn) = values.first().map(ToString::to_string)
                && model::Dn::parse(&dn).ok() != model::Dn::parse(&cs.dn).ok()
            {
                new_dn = Some(dn);
            }
            continue;
        }
        let current = cs.attributes.get(name);
        match resolved {
            Resolved::Set(values, _) if !same_values(current, values) => changes.push(AttrChange::Replace(name.clone(), values.clone())),
            Resolved::Remove if !current.is_empty() => changes.push(AttrChange::Clear(name.clone())),
            _ => {}
        }
    }
    match (new_dn, changes.is_empty()) {
        (Some(new_dn), _) => Some(PendingExport::Rename { new_dn, changes }),
        (None, true) => None,
        (None, false) => Some(PendingExport::Update(changes)),
    }
}

/// Multi-valued attributes compare as sets (directories do not keep value order).
fn same_values(current: &[AttrValue], wanted: &[AttrValue]) -> bool {
    current.len() == wanted.len() && wanted.iter().all(|value| current.contains(value))
}

/// Target attribute values from the rules in scope; a flow error is an object error (nothing exported).
fn desired(input: &mut OutboundInput<'_>, in_scope: &[&Rule], creating: bool) -> Result<BTreeMap<String, Resolved<String>>, ObjectError> {
    let attributes = input.mv.plain_attributes();
    let source = ObjectSource { attributes: &attributes, dn: None };
    let mut contributions: BTreeMap<String, Vec<Contribution<String>>> = BTreeMap::new();
    let mut env = FlowEnv { parameters: input.parameters, now: input.now, random: &mut *input.random };
    for rule in in_scope {
        for flow in &rule.flows {
            if flow.apply_once && !creating {
                continue;
            }
            let produced = flow::evaluate(flow, &source, &mut env)
                .map_err(|message| sync_error("flow-error", format!("rule \"{}\", flow to {}: {message}", rule.name, flow.target)))?;
            let produced = match produced {
                Produced::Values(values) => {
                    let translated: Vec<AttrValue> = values
                        .into_iter()
                        .filter_map(|value| match value {
                            // A reference an outbound flow produced names an MV object (the id
                            // expressions see as text); it becomes the DN of that object's
                            // counterpart in the target space, or waits until there is one.
                            AttrValue::Reference(mv_id) => {
                                mv_id.parse::<i64>().ok().and_then(|id| (input.resolve_reference)(MvId(id))).map(AttrValue::Reference)
                            }
                            AttrValue::MvReference(id) => (input.resolve_reference)(id).map(AttrValue::Reference),
                            other => Some(other),
                        })
                        .collect();
                    if translated.is_empty() { Produced::Null } else { Produced::Values(translated) }
                }
                other => other,
            };
            contributions.entry(flow.target.clone()).or_default().push(Contribution {
                precedence: rule.precedence,
                merge: flow.merge,
                produced,
                origin: rule.name.clone(),
            });
        }
    }
    Ok(contributions.into_iter().map(|(target, list)| (target, flow::resolve(list))).collect())
}
