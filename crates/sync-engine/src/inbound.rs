//! Inbound synchronization (CS → MV): which rules are in scope, join or projection, and the
//! metaverse attribute values computed from every CS object joined to an MV object.
//!
//! Join is two-step so the engine stays pure: [`plan_join`] says what to look up, the caller
//! finds the candidate MV objects, and [`decide_join`] decides.

use std::collections::BTreeMap;

use model::{AttrValue, ConnectorId, CsId, CsObject, ErrorStage, Lineage, MvAttribute, MvId, MvObject, ObjectError};
use sync_expr::Value;
use sync_expr::time::DateTime;
use sync_rules::{Direction, LinkType, Rule, RuleSet, scope};

use crate::flow::{self, Contribution, FlowEnv, Resolved};
use crate::values::ObjectSource;

/// Answers ISMEMBEROF scoping clauses for a CS object.
pub type MemberOf<'a> = &'a dyn Fn(&CsObject, &str) -> bool;

/// The inbound rules of `cs`'s connector and type whose scope holds for it, by precedence.
pub fn rules_in_scope<'r>(rules: &'r RuleSet, cs: &CsObject, member_of: MemberOf<'_>) -> Vec<&'r Rule> {
    rules
        .rules()
        .iter()
        .filter(|rule| rule.direction == Direction::Inbound && rule.connector == cs.connector && rule.source_type == cs.object_type)
        .filter(|rule| scope::in_scope(&rule.scope, &cs.attributes, &|group| member_of(cs, group)))
        .collect()
}

fn is_joining(rule: &Rule) -> bool {
    !rule.join.is_empty() || rule.link_type == LinkType::Provision
}

/// One join group to look up: MV objects of `mv_type` whose attributes hold these values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinQuery {
    /// The MV object type.
    pub mv_type: String,
    /// `(MV attribute, CS values, case-sensitive)`; all must match.
    pub clauses: Vec<(String, Vec<AttrValue>, bool)>,
}

/// What to do about a disconnector's join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinPlan {
    /// No joining rule is in scope: the object stays a disconnector.
    NotInScope,
    /// Look these groups up (in order) and call [`decide_join`]. A group is `None` when the CS
    /// object lacks one of its attributes (it cannot match).
    Lookup {
        /// The joining rule.
        rule: String,
        /// Its link type.
        link_type: LinkType,
        /// The MV type it targets.
        mv_type: String,
        /// The groups.
        groups: Vec<Option<JoinQuery>>,
    },
    /// A per-object error (e.g. two joining rules in scope).
    Error(ObjectError),
}

/// Plans the join of a disconnector.
pub fn plan_join(rules: &RuleSet, cs: &CsObject, member_of: MemberOf<'_>) -> JoinPlan {
    let in_scope = rules_in_scope(rules, cs, member_of);
    let joining: Vec<&Rule> = in_scope.into_iter().filter(|rule| is_joining(rule)).collect();
    let with_criteria: Vec<&&Rule> = joining.iter().filter(|rule| !rule.join.is_empty()).collect();
    if with_criteria.len() > 1 {
        let names = with_criteria.iter().map(|rule| format!("\"{}\"", rule.name)).collect::<Vec<_>>().join(", ");
        return JoinPlan::Error(sync_error("join-rule-conflict", format!("more than one rule with join criteria is in scope: {names}")));
    }
    let Some(rule) = with_criteria.first().map(|rule| **rule).or_else(|| joining.first().copied()) else {
        return JoinPlan::NotInScope;
    };
    let groups = rule
        .join
        .iter()
        .map(|group| {
            let mut clauses = Vec::new();
            for clause in group {
                let values = cs.attributes.get(&clause.source);
                if values.is_empty() {
                    return None;
                }
                clauses.push((clause.target.clone(), values.to_vec(), clause.case_sensitive));
            }
            Some(JoinQuery { mv_type: rule.target_type.clone(), clauses })
        })
        .collect();
    JoinPlan::Lookup { rule: rule.name.clone(), link_type: rule.link_type, mv_type: rule.target_type.clone(), groups }
}

/// An MV object a join group found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The MV object.
    pub mv: MvId,
    /// It already has a connector from the same connector space.
    pub taken_by_same_connector: bool,
}

/// The join outcome for a disconnector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinDecision {
    /// Link to this MV object.
    Join(MvId),
    /// Create an MV object of this type and link to it.
    Project(String),
    /// Stay a disconnector.
    Disconnector,
    /// A per-object error: ambiguous join.
    Error(ObjectError),
}

/// Decides a join from the candidates of each group (same order as the plan's groups).
///
/// The first group with exactly one candidate wins. A group with several candidates moves on,
/// as in Entra; but if no group then finds exactly one, the object is not projected (which
/// would create a duplicate identity): it gets an `ambiguous-join` error instead.
pub fn decide_join(plan: &JoinPlan, candidates: &[Vec<Candidate>]) -> JoinDecision {
    let JoinPlan::Lookup { link_type, mv_type, groups, rule } = plan else {
        return match plan {
            JoinPlan::Error(error) => JoinDecision::Error(error.clone()),
            _ => JoinDecision::Disconnector,
        };
    };
    let mut ambiguous = None;
    for (index, group) in groups.iter().enumerate() {
        if group.is_none() {
            continue;
        }
        let found = candidates.get(index).map_or(&[][..], Vec::as_slice);
        match found {
            [only] if only.taken_by_same_connector => {
                return JoinDecision::Error(sync_error(
                    "ambiguous-join",
                    format!("join group {} of \"{rule}\" matches {}, which already has an object of this connector", index + 1, only.mv),
                ));
            }
            [only] => return JoinDecision::Join(only.mv),
            [] => {}
            many => {
                ambiguous.get_or_insert_with(|| {
                    let ids = many.iter().map(|candidate| candidate.mv.to_string()).collect::<Vec<_>>().join(", ");
                    format!("join group {} of \"{rule}\" matches {} objects: {ids}", index + 1, many.len())
                });
            }
        }
    }
    if let Some(message) = ambiguous {
        return JoinDecision::Error(sync_error("ambiguous-join", message));
    }
    let any_criteria_present = groups.is_empty() || groups.iter().any(Option::is_some);
    if *link_type == LinkType::Provision && any_criteria_present {
        JoinDecision::Project(mv_type.clone())
    } else {
        JoinDecision::Disconnector
    }
}

/// Whether a joined CS object keeps its link: some joining rule is still in scope. An object
/// no inbound rule of its connector and type speaks of was joined by outbound provisioning; its
/// link lasts until the outbound rule deprovisions it (a provisioned target object without a
/// matching inbound join rule stays joined).
/// When it returns false the caller disconnects the object.
pub fn keeps_link(rules: &RuleSet, cs: &CsObject, member_of: MemberOf<'_>) -> bool {
    let inbound_rules = rules.for_connector(Direction::Inbound, &cs.connector).filter(|rule| rule.source_type == cs.object_type);
    if inbound_rules.count() == 0 {
        return true;
    }
    rules_in_scope(rules, cs, member_of).iter().any(|rule| is_joining(rule) || rule.link_type == LinkType::StickyJoin)
}

/// Whether an MV object survives: some joined CS object has a `Provision` or `StickyJoin` rule in scope.
pub fn mv_survives(rules: &RuleSet, joined: &[&CsObject], member_of: MemberOf<'_>) -> bool {
    joined.iter().any(|cs| {
        rules_in_scope(rules, cs, member_of).iter().any(|rule| matches!(rule.link_type, LinkType::Provision | LinkType::StickyJoin))
    })
}

/// Everything inbound attribute flow reads.
pub struct InboundInput<'a> {
    /// The rules.
    pub rules: &'a RuleSet,
    /// The MV object as it is now (empty attributes when just projected).
    pub mv: &'a MvObject,
    /// True when the MV object is created by this sync (apply-once flows run only then).
    pub is_new: bool,
    /// Every CS object linked to it, from every connector.
    pub joined: &'a [&'a CsObject],
    /// ISMEMBEROF answers.
    pub member_of: MemberOf<'a>,
    /// `%Name%` parameters per connector.
    pub parameters: &'a BTreeMap<ConnectorId, BTreeMap<String, Value>>,
    /// Turns a reference value of a connector space (a DN) into the MV object it is joined to.
    pub resolve_reference: &'a dyn Fn(&ConnectorId, &str) -> Option<MvId>,
    /// The run's start.
    pub now: DateTime,
    /// Randomness.
    pub random: &'a mut dyn FnMut() -> u64,
}

/// The MV attributes inbound flow computed, and per-object flow errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundResult {
    /// The new attribute set with lineage.
    pub attributes: BTreeMap<String, MvAttribute>,
    /// Flow errors, on the CS object whose rule failed.
    pub errors: Vec<(CsId, ObjectError)>,
}

impl InboundResult {
    /// True when the attributes differ from `mv`'s (lineage included).
    pub fn changes(&self, mv: &MvObject) -> bool {
        self.attributes != mv.attributes
    }
}

/// Computes the MV object's attributes from all its joined CS objects.
pub fn flow_inbound(input: InboundInput<'_>) -> InboundResult {
    let empty = BTreeMap::new();
    let mut contributions: BTreeMap<String, Vec<Contribution<Lineage>>> = BTreeMap::new();
    let mut errors = Vec::new();
    for cs in input.joined {
        let parameters = input.parameters.get(&cs.connector).unwrap_or(&empty);
        let source = ObjectSource { attributes: &cs.attributes, dn: Some(&cs.dn) };
        let mut env = FlowEnv { parameters, now: input.now, random: &mut *input.random };
        for rule in rules_in_scope(input.rules, cs, input.member_of) {
            if rule.target_type != input.mv.object_type {
                continue;
            }
            for flow in &rule.flows {
                if flow.apply_once && !input.is_new {
                    continue;
                }
                let produced = match flow::evaluate(flow, &source, &mut env) {
                    Ok(produced) => translate_references(produced, &cs.connector, input.resolve_reference),
                    Err(message) => {
                        errors
                            .push((cs.id, sync_error("flow-error", format!("rule \"{}\", flow to {}: {message}", rule.name, flow.target))));
                        crate::values::Produced::Ignore
                    }
                };
                let origin =
                    Lineage { rule: rule.name.clone(), precedence: rule.precedence, connector: cs.connector.clone(), cs_id: cs.id };
                contributions.entry(flow.target.clone()).or_default().push(Contribution {
                    precedence: rule.precedence,
                    merge: flow.merge,
                    produced,
                    origin,
                });
            }
        }
    }
    let mut attributes = BTreeMap::new();
    for (target, target_contributions) in contributions {
        match flow::resolve(target_contributions) {
            Resolved::Set(values, lineage) => {
                attributes.insert(target, MvAttribute { values, lineage });
            }
            Resolved::Remove => {}
            Resolved::Keep => {
                if let Some(current) = input.mv.attributes.get(&target) {
                    attributes.insert(target, current.clone());
                }
            }
        }
    }
    InboundResult { attributes, errors }
}

/// CS references (DNs) become MV references; unresolved ones are dropped until
/// the referenced object is joined (like Entra's placeholders).
fn translate_references(
    produced: crate::values::Produced,
    connector: &ConnectorId,
    resolve: &dyn Fn(&ConnectorId, &str) -> Option<MvId>,
) -> crate::values::Produced {
    use crate::values::Produced;
    let Produced::Values(values) = produced else { return produced };
    let translated: Vec<AttrValue> = values
        .into_iter()
        .filter_map(|value| match value {
            AttrValue::Reference(dn) => resolve(connector, &dn).map(AttrValue::MvReference),
            other => Some(other),
        })
        .collect();
    if translated.is_empty() { Produced::Null } else { Produced::Values(translated) }
}

pub(crate) fn sync_error(code: &str, message: String) -> ObjectError {
    ObjectError { stage: ErrorStage::Sync, code: code.to_string(), message, target: None }
}
