//! The rule file format (TOML) and the checks that turn it into a [`RuleSet`].
//!
//! ```toml
//! [[rule]]
//! name = "In from AD - User Join"
//! direction = "inbound"            # inbound | outbound
//! connector = "corp.example.test"
//! source_type = "user"             # CS type inbound, MV type outbound
//! target_type = "person"
//! link_type = "provision"          # join | provision | sticky-join
//! precedence = 100                 # lower wins; unique per direction
//! password_sync = false
//! scope = [                        # groups: AND inside, OR across; omit for "all objects"
//!   [ { attribute = "isCriticalSystemObject", operator = "NOTEQUAL", value = "TRUE" } ],
//! ]
//! join = [                         # groups, tried in order
//!   [ { source = "objectGUID", target = "sourceAnchorBinary" } ],
//! ]
//! [[rule.flow]]
//! target = "sourceAnchorBinary"
//! expression = 'IIF(IsPresent([mS-DS-ConsistencyGuid]),[mS-DS-ConsistencyGuid],[objectGUID])'
//! # or: direct = "attribute" / constant = "True"; apply_once = true; merge = "merge-case-insensitive"
//! ```
//!
//! Every problem is reported with the rule's name, and expression problems with their line
//! and column inside the expression; nothing is half-loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use model::ConnectorId;
use serde::Deserialize;

use crate::{Condition, Direction, Flow, FlowSource, JoinCondition, LinkType, MergeType, Operator, Rule, RuleSet};

/// Parameters the rules may use (`%Domain.FQDN%` …); connectors supply their values.
pub const PARAMETERS: &[&str] =
    &["Domain.Netbios", "Domain.FQDN", "Domain.LDAP", "Forest.Netbios", "Forest.FQDN", "Forest.LDAP", "Connector.ID"];

/// A problem in a rule file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleError {
    /// The rule concerned, when known.
    pub rule: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "rule \"{rule}\": {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDto {
    #[serde(default)]
    rule: Vec<RuleDto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDto {
    name: String,
    direction: String,
    connector: String,
    source_type: String,
    target_type: String,
    link_type: String,
    precedence: i32,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    password_sync: bool,
    #[serde(default)]
    scope: Vec<Vec<ConditionDto>>,
    #[serde(default)]
    join: Vec<Vec<JoinDto>>,
    #[serde(default)]
    flow: Vec<FlowDto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionDto {
    attribute: String,
    operator: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinDto {
    source: String,
    target: String,
    #[serde(default)]
    case_sensitive: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowDto {
    target: String,
    direct: Option<String>,
    constant: Option<String>,
    expression: Option<String>,
    #[serde(default)]
    apply_once: bool,
    #[serde(default)]
    merge: Option<String>,
}

impl RuleSet {
    /// Parses and checks a rule file. Disabled rules are left out.
    pub fn parse(text: &str) -> Result<RuleSet, Vec<RuleError>> {
        let dto: FileDto =
            toml::from_str(text).map_err(|err| vec![RuleError { rule: None, message: format!("not a valid rule file: {err}") }])?;
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        for rule in dto.rule.into_iter().filter(|rule| !rule.disabled) {
            match convert(rule) {
                Ok(rule) => rules.push(rule),
                Err(mut rule_errors) => errors.append(&mut rule_errors),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        finish(rules)
    }
}

/// Whole-set checks (unique names and precedences, consistent merge types), then ordering.
pub(crate) fn finish(mut rules: Vec<Rule>) -> Result<RuleSet, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    let mut precedences: BTreeMap<(bool, i32), &str> = BTreeMap::new();
    let mut merges: BTreeMap<(bool, &str, &str), (MergeType, &str)> = BTreeMap::new();
    for rule in &rules {
        if !names.insert(rule.name.as_str()) {
            errors.push(RuleError { rule: Some(rule.name.clone()), message: "the name is used by another rule".into() });
        }
        let inbound = rule.direction == Direction::Inbound;
        if let Some(other) = precedences.insert((inbound, rule.precedence), &rule.name) {
            errors.push(RuleError {
                rule: Some(rule.name.clone()),
                message: format!("precedence {} is also used by \"{other}\"; precedences are unique per direction", rule.precedence),
            });
        }
        for flow in &rule.flows {
            let merge = normalise(flow.merge);
            let key = (inbound, rule.target_type.as_str(), flow.target.as_str());
            match merges.get(&key) {
                Some((other_merge, other_rule)) if *other_merge != merge => errors.push(RuleError {
                    rule: Some(rule.name.clone()),
                    message: format!(
                        "flow to {} uses merge {merge:?} but \"{other_rule}\" uses {other_merge:?}; all rules flowing to one attribute must merge the same way",
                        flow.target
                    ),
                }),
                Some(_) => {}
                None => {
                    merges.insert(key, (merge, &rule.name));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    rules.sort_by_key(|rule| (rule.direction == Direction::Outbound, rule.precedence));
    Ok(RuleSet { rules })
}

fn normalise(merge: MergeType) -> MergeType {
    if merge == MergeType::Replace { MergeType::Update } else { merge }
}

fn convert(dto: RuleDto) -> Result<Rule, Vec<RuleError>> {
    let name = dto.name.trim().to_string();
    let mut errors = Vec::new();
    let mut problem = |message: String| errors.push(RuleError { rule: Some(name.clone()), message });
    if name.is_empty() {
        problem("the name is empty".into());
    }
    let direction = match dto.direction.as_str() {
        "inbound" => Direction::Inbound,
        "outbound" => Direction::Outbound,
        other => {
            problem(format!("direction \"{other}\" is not inbound or outbound"));
            Direction::Inbound
        }
    };
    let link_type = match dto.link_type.as_str() {
        "join" => LinkType::Join,
        "provision" => LinkType::Provision,
        "sticky-join" => LinkType::StickyJoin,
        other => {
            problem(format!("link_type \"{other}\" is not join, provision or sticky-join"));
            LinkType::Join
        }
    };
    for (field, value) in [("connector", &dto.connector), ("source_type", &dto.source_type), ("target_type", &dto.target_type)] {
        if value.trim().is_empty() {
            problem(format!("{field} is empty"));
        }
    }
    let mut scope = Vec::new();
    for (group_index, group) in dto.scope.into_iter().enumerate() {
        if group.is_empty() {
            problem(format!("scope group {} is empty; leave the group out instead", group_index + 1));
        }
        let mut conditions = Vec::new();
        for condition in group {
            let Some(operator) = Operator::parse(&condition.operator) else {
                let known = Operator::ALL.iter().map(|(spelling, _)| *spelling).collect::<Vec<_>>().join(", ");
                problem(format!("scope operator \"{}\" is unknown (known: {known})", condition.operator));
                continue;
            };
            let value = condition.value.unwrap_or_default();
            if operator.takes_value() && value.is_empty() && !matches!(operator, Operator::Equal | Operator::NotEqual) {
                problem(format!("scope clause on {} with {} needs a value", condition.attribute, condition.operator));
            }
            if !operator.takes_value() && !value.is_empty() {
                problem(format!("scope clause on {} with {} takes no value", condition.attribute, condition.operator));
            }
            if matches!(operator, Operator::IsBitSet | Operator::IsNotBitSet) && value.trim().parse::<i64>().is_err() {
                problem(format!("scope clause on {} with {}: \"{value}\" is not a whole number", condition.attribute, condition.operator));
            }
            conditions.push(Condition { attribute: condition.attribute, operator, value });
        }
        scope.push(conditions);
    }
    let mut join = Vec::new();
    for (group_index, group) in dto.join.into_iter().enumerate() {
        if group.is_empty() {
            problem(format!("join group {} is empty", group_index + 1));
        }
        join.push(
            group
                .into_iter()
                .map(|clause| JoinCondition { source: clause.source, target: clause.target, case_sensitive: clause.case_sensitive })
                .collect(),
        );
    }
    let parameters = sync_expr::Schema { attributes: None, parameters: Some(PARAMETERS.iter().map(|name| name.to_string()).collect()) };
    let mut flows = Vec::new();
    let mut targets = BTreeSet::new();
    for flow in dto.flow {
        if !targets.insert(flow.target.clone()) {
            problem(format!("two flows set {}", flow.target));
        }
        let source = match (flow.direct, flow.constant, flow.expression) {
            (Some(attribute), None, None) => FlowSource::Direct(attribute),
            (None, Some(constant), None) => FlowSource::Constant(constant),
            (None, None, Some(expression)) => match sync_expr::check(&expression, &parameters) {
                Ok(checked) => FlowSource::Expression(checked),
                Err(diagnostics) => {
                    for diagnostic in diagnostics {
                        problem(format!("flow to {}: expression error at {}: {}", flow.target, diagnostic.at, diagnostic.message));
                    }
                    continue;
                }
            },
            _ => {
                problem(format!("flow to {} needs exactly one of direct, constant or expression", flow.target));
                continue;
            }
        };
        let merge = match flow.merge.as_deref() {
            None | Some("update") => MergeType::Update,
            Some("merge") => MergeType::Merge,
            Some("merge-case-insensitive") => MergeType::MergeCaseInsensitive,
            Some("replace") => MergeType::Replace,
            Some(other) => {
                problem(format!("flow to {}: merge \"{other}\" is not update, merge, merge-case-insensitive or replace", flow.target));
                MergeType::Update
            }
        };
        flows.push(Flow { target: flow.target, source, apply_once: flow.apply_once, merge });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Rule {
        name,
        direction,
        connector: ConnectorId(dto.connector),
        source_type: dto.source_type,
        target_type: dto.target_type,
        link_type,
        precedence: dto.precedence,
        password_sync: dto.password_sync,
        scope,
        join,
        flows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[rule]]
name = "In - Join"
direction = "inbound"
connector = "ad"
source_type = "user"
target_type = "person"
link_type = "provision"
precedence = 100
scope = [[{ attribute = "isCriticalSystemObject", operator = "NOTEQUAL", value = "TRUE" }],
         [{ attribute = "userAccountControl", operator = "ISBITNOTSET", value = "2" }]]
join = [[{ source = "objectGUID", target = "sourceAnchorBinary" }]]

[[rule.flow]]
target = "displayName"
expression = 'IIF(IsNullOrEmpty([displayName]), [cn], [displayName])'

[[rule.flow]]
target = "accountEnabled"
constant = "True"

[[rule]]
name = "Out - Join"
direction = "outbound"
connector = "tenant"
source_type = "person"
target_type = "user"
link_type = "provision"
precedence = 100

[[rule.flow]]
target = "displayName"
direct = "displayName"
"#;

    fn errors(text: &str) -> Vec<String> {
        match RuleSet::parse(text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn parses_a_good_file() {
        let set = RuleSet::parse(GOOD).unwrap();
        assert_eq!(set.rules().len(), 2);
        let join = set.get("In - Join").unwrap();
        assert_eq!(join.scope.len(), 2);
        assert_eq!(join.scope[1][0].operator, Operator::IsNotBitSet);
        assert_eq!(join.join[0][0].target, "sourceAnchorBinary");
        assert!(matches!(join.flows[0].source, FlowSource::Expression(_)));
        assert_eq!(set.rules()[1].direction, Direction::Outbound, "inbound rules come first");
    }

    #[test]
    fn every_problem_is_reported_with_its_rule() {
        let bad = GOOD
            .replace("NOTEQUAL", "DIFFERS")
            .replace("IIF(IsNullOrEmpty([displayName]), [cn], [displayName])", "IIF(IsNullOrEmpty([displayName]), [cn]")
            .replace("link_type = \"provision\"\nprecedence = 100\nscope", "link_type = \"project\"\nprecedence = 100\nscope");
        let found = errors(&bad);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].starts_with("rule \"In - Join\": link_type \"project\" is not join, provision or sticky-join"));
        assert!(found[1].starts_with("rule \"In - Join\": scope operator \"DIFFERS\" is unknown (known: EQUAL, NOTEQUAL"));
        assert_eq!(found[2], "rule \"In - Join\": flow to displayName: expression error at 1:4: the argument list is not closed with `)`");
    }

    #[test]
    fn set_level_checks() {
        let duplicate = format!("{GOOD}\n{}", GOOD.split("[[rule]]").nth(1).map(|rule| format!("[[rule]]{rule}")).unwrap());
        let found = errors(&duplicate);
        assert_eq!(found[0], "rule \"In - Join\": the name is used by another rule");
        assert!(found[1].contains("precedence 100 is also used by \"In - Join\""), "{found:?}");

        let merge_clash = GOOD.replace(
            "precedence = 100\n\n[[rule.flow]]\ntarget = \"displayName\"\ndirect",
            "precedence = 100\n\n[[rule.flow]]\ntarget = \"displayName\"\nmerge = \"merge\"\ndirect",
        );
        assert_eq!(errors(&merge_clash), Vec::<String>::new(), "different directions do not clash");
        let two_inbound = format!(
            "{GOOD}\n[[rule]]\nname = \"In - Other\"\ndirection = \"inbound\"\nconnector = \"hr\"\nsource_type = \"person\"\ntarget_type = \"person\"\nlink_type = \"join\"\nprecedence = 50\n[[rule.flow]]\ntarget = \"displayName\"\nmerge = \"merge\"\ndirect = \"name\"\n"
        );
        let found = errors(&two_inbound);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("all rules flowing to one attribute must merge the same way"));
    }

    #[test]
    fn malformed_toml_and_unknown_fields_are_named() {
        assert!(
            errors("[[rule]\nname=1")[0].starts_with("not a valid rule file: TOML parse error at line 1"),
            "{:?}",
            errors("[[rule]\nname=1")
        );
        let unknown = GOOD.replace("precedence = 100\nscope", "precedense = 100\nscope");
        assert!(errors(&unknown)[0].contains("unknown field `precedense`"), "{:?}", errors(&unknown));
        let flow_two_sources = GOOD.replace("constant = \"True\"", "constant = \"True\"\ndirect = \"x\"");
        assert_eq!(
            errors(&flow_two_sources),
            vec!["rule \"In - Join\": flow to accountEnabled needs exactly one of direct, constant or expression"]
        );
        let bad_param = GOOD.replace("[cn], [displayName])", "%Domain.Name%, [displayName])");
        assert!(errors(&bad_param)[0].contains("unknown parameter %Domain.Name%"));
        let bitset = GOOD.replace("value = \"2\"", "value = \"two\"");
        assert!(errors(&bitset)[0].contains("\"two\" is not a whole number"));
    }

    #[test]
    fn disabled_rules_are_left_out() {
        let disabled = GOOD.replace("name = \"Out - Join\"", "name = \"Out - Join\"\ndisabled = true");
        assert_eq!(RuleSet::parse(&disabled).unwrap().rules().len(), 1);
    }
}
