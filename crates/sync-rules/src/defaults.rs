//! The out-of-box rule set (`defaults/ad-to-cloud.toml`), generated for a set of AD connectors
//! and one cloud connector, with Entra's precedence layout: rules are numbered from 100 in
//! template order, and inside each template rule the AD connectors follow in the order they
//! were added. Each AD rule's name gets the connector id in parentheses.
//!
//! Replacement rules are added beside the defaults with a lower precedence (custom rules
//! should use precedences below 100), never by editing the template.

use model::ConnectorId;

use crate::{Direction, RuleError, RuleSet, file};

/// The template text.
pub const AD_TO_CLOUD: &str = include_str!("../defaults/ad-to-cloud.toml");

/// Entra Connect's "Out to AD - User ImmutableId": when the anchor is mS-DS-ConsistencyGuid,
/// the value in use (objectGUID until the attribute is set) is written back to the user in the
/// forest that contributed it, so the anchor survives a move to another forest.
const CONSISTENCY_GUID_WRITEBACK: &str = r#"
[[rule]]
name = "Out to AD - User ImmutableId"
direction = "outbound"
connector = "{connector}"
source_type = "person"
target_type = "user"
link_type = "join"
precedence = 190
scope = [[
  { attribute = "sourceObjectType", operator = "EQUAL", value = "User" },
  { attribute = "sourceAnchorForest", operator = "EQUAL", value = "{connector}" },
]]

[[rule.flow]]
target = "mS-DS-ConsistencyGuid"
direct = "sourceAnchorBinary"
"#;

/// Where users' sourceAnchor (the cloud's onPremisesImmutableId) comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SourceAnchor {
    /// `mS-DS-ConsistencyGuid`, falling back to `objectGUID`, written back (Entra's default).
    #[default]
    ConsistencyGuid,
    /// `objectGUID` (older installations; no writeback).
    ObjectGuid,
    /// Another attribute: a string as it is (checked against Entra's rules for a custom source
    /// attribute), anything else in base64.
    Attribute(String),
}

impl SourceAnchor {
    /// From the attribute's name (what the tenant stores as `anchorAttribute`).
    pub fn from_name(name: &str) -> Result<SourceAnchor, String> {
        if name.eq_ignore_ascii_case("mS-DS-ConsistencyGuid") {
            return Ok(SourceAnchor::ConsistencyGuid);
        }
        if name.eq_ignore_ascii_case("objectGUID") {
            return Ok(SourceAnchor::ObjectGuid);
        }
        if name.eq_ignore_ascii_case("userPrincipalName") || name.eq_ignore_ascii_case("mail") || name.eq_ignore_ascii_case("targetAddress")
        {
            return Err(format!("{name} cannot be the sourceAnchor: it holds '@' and changes with renames"));
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("{name:?} is not an attribute name"));
        }
        Ok(SourceAnchor::Attribute(name.to_string()))
    }

    /// The attribute's name.
    pub fn name(&self) -> &str {
        match self {
            SourceAnchor::ConsistencyGuid => "mS-DS-ConsistencyGuid",
            SourceAnchor::ObjectGuid => "objectGUID",
            SourceAnchor::Attribute(name) => name,
        }
    }

    fn joins(&self) -> String {
        match self {
            SourceAnchor::ConsistencyGuid => r#"[
  [{ source = "mS-DS-ConsistencyGuid", target = "sourceAnchorBinary" }],
  [{ source = "objectGUID", target = "sourceAnchorBinary" }],
]"#
            .to_string(),
            other => format!(r#"[[{{ source = "{}", target = "sourceAnchorBinary" }}]]"#, other.name()),
        }
    }

    fn binary(&self) -> String {
        match self {
            SourceAnchor::ConsistencyGuid => "IIF(IsPresent([mS-DS-ConsistencyGuid]), [mS-DS-ConsistencyGuid], [objectGUID])".to_string(),
            other => format!("[{}]", other.name()),
        }
    }

    fn text(&self) -> String {
        match self {
            SourceAnchor::Attribute(name) => {
                format!("IIF(IsString([{name}]), CheckSourceAnchor(CStr([{name}])), ConvertToBase64([{name}]))")
            }
            other => format!("ConvertToBase64({})", other.binary()),
        }
    }
}

/// Choices an installation makes about the default rules (Entra Connect's custom install).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultOptions {
    /// Users' sourceAnchor.
    pub source_anchor: SourceAnchor,
    /// The AD attribute the cloud userPrincipalName comes from: `userPrincipalName`, or an
    /// alternate login ID such as `mail`.
    pub upn_attribute: String,
}

impl Default for DefaultOptions {
    fn default() -> Self {
        DefaultOptions { source_anchor: SourceAnchor::ConsistencyGuid, upn_attribute: "userPrincipalName".into() }
    }
}

/// The default rules for AD connectors `ad_connectors` (in the order they were added) syncing
/// into the cloud connector `cloud`, with Entra's default choices.
pub fn ad_to_cloud(ad_connectors: &[&str], cloud: &str) -> Result<RuleSet, Vec<RuleError>> {
    ad_to_cloud_with(ad_connectors, cloud, &DefaultOptions::default())
}

/// The default rules with an installation's choices.
pub fn ad_to_cloud_with(ad_connectors: &[&str], cloud: &str, options: &DefaultOptions) -> Result<RuleSet, Vec<RuleError>> {
    if options.upn_attribute.is_empty() || !options.upn_attribute.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(vec![RuleError { rule: None, message: format!("upn_attribute {:?} is not an attribute name", options.upn_attribute) }]);
    }
    if let SourceAnchor::Attribute(name) = &options.source_anchor
        && let Err(message) = SourceAnchor::from_name(name)
    {
        return Err(vec![RuleError { rule: None, message }]);
    }
    let mut template = AD_TO_CLOUD.to_string();
    if options.source_anchor == SourceAnchor::ConsistencyGuid {
        template.push_str(CONSISTENCY_GUID_WRITEBACK);
    }
    let template = template
        .replace("{user_anchor_joins}", &options.source_anchor.joins())
        .replace("{anchor_binary}", &options.source_anchor.binary())
        .replace("{anchor_text}", &options.source_anchor.text())
        .replace("{upn_attribute}", &options.upn_attribute);
    for id in ad_connectors.iter().chain([&cloud]) {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(vec![RuleError { rule: None, message: format!("connector id \"{id}\" must be letters, digits, '.', '_' or '-'") }]);
        }
    }
    if ad_connectors.is_empty() {
        return Err(vec![RuleError { rule: None, message: "the default rules need at least one AD connector".into() }]);
    }
    let cloud_id = ConnectorId(cloud.to_string());
    let mut ad_rules = Vec::new();
    let mut cloud_rules = Vec::new();
    for (index, connector) in ad_connectors.iter().enumerate() {
        let text = template.replace("{connector}", connector).replace("{cloud}", cloud);
        for mut rule in RuleSet::parse(&text)?.rules {
            if rule.connector == cloud_id {
                if index == 0 {
                    cloud_rules.push(rule);
                }
                continue;
            }
            rule.name = format!("{} ({connector})", rule.name);
            ad_rules.push((rule.precedence, index, rule));
        }
    }
    // Template precedence first, then connector order.
    ad_rules.sort_by_key(|(precedence, index, _)| (*precedence, *index));
    let mut next = 100;
    let mut rules = Vec::new();
    for (_, _, mut rule) in ad_rules {
        rule.precedence = next;
        next += 1;
        rules.push(rule);
    }
    for mut rule in cloud_rules {
        if rule.direction == Direction::Inbound {
            rule.precedence = next;
            next += 1;
        }
        rules.push(rule);
    }
    file::finish(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FlowSource, LinkType};

    #[test]
    fn one_forest() {
        let set = ad_to_cloud(&["corp.example.test"], "tenant").unwrap();
        let join = set.get("In from AD - User Join (corp.example.test)").unwrap();
        assert_eq!(join.precedence, 100);
        assert_eq!(join.link_type, LinkType::Provision);
        assert_eq!(join.join.len(), 2, "consistency GUID first, then objectGUID");
        assert_eq!(join.join[0][0].source, "mS-DS-ConsistencyGuid");
        let enabled = set.get("In from AD - User AccountEnabled (corp.example.test)").unwrap();
        assert!(enabled.password_sync);
        assert_eq!(enabled.precedence, 102);
        let out = set.get("Out to Cloud - User Join").unwrap();
        assert_eq!(out.direction, Direction::Outbound);
        assert!(matches!(out.flows[0].source, FlowSource::Expression(_)));
        let cloud_in = set.get("In from Cloud - User Join").unwrap();
        assert!(cloud_in.join[0][0].case_sensitive);
        assert!(cloud_in.precedence > set.get("In from AD - Group Common (corp.example.test)").unwrap().precedence);
    }

    #[test]
    fn two_forests_interleave_inside_each_group() {
        let set = ad_to_cloud(&["corp", "fabrikam"], "tenant").unwrap();
        let precedence = |name: &str| set.get(name).map(|rule| rule.precedence);
        assert_eq!(precedence("In from AD - User Join (corp)"), Some(100));
        assert_eq!(precedence("In from AD - User Join (fabrikam)"), Some(101));
        assert_eq!(precedence("In from AD - InetOrgPerson Join (corp)"), Some(102));
        assert_eq!(precedence("In from AD - InetOrgPerson Join (fabrikam)"), Some(103));
        assert_eq!(set.rules().iter().filter(|rule| rule.name.starts_with("In from Cloud - User Join")).count(), 1);
    }

    fn flow_text(set: &RuleSet, rule: &str, target: &str) -> String {
        let rule = set.get(rule).unwrap_or_else(|| panic!("no rule {rule}"));
        let flow = rule.flows.iter().find(|flow| flow.target == target).unwrap_or_else(|| panic!("no flow to {target}"));
        match &flow.source {
            FlowSource::Expression(expr) => expr.text().to_string(),
            FlowSource::Direct(name) => format!("direct {name}"),
            FlowSource::Constant(value) => format!("constant {value}"),
        }
    }

    #[test]
    fn the_consistency_guid_anchor_is_written_back_to_the_forest_that_gave_it() {
        let set = ad_to_cloud(&["corp", "fabrikam"], "tenant").unwrap();
        for forest in ["corp", "fabrikam"] {
            let writeback = set.get(&format!("Out to AD - User ImmutableId ({forest})")).unwrap();
            assert_eq!((writeback.direction, writeback.link_type), (Direction::Outbound, LinkType::Join));
            assert_eq!(writeback.scope[0][1].value, forest, "only the contributing forest's object");
            assert_eq!(
                flow_text(&set, &format!("Out to AD - User ImmutableId ({forest})"), "mS-DS-ConsistencyGuid"),
                "direct sourceAnchorBinary"
            );
            assert_eq!(flow_text(&set, &format!("In from AD - User Join ({forest})"), "sourceAnchorForest"), format!("constant {forest}"));
        }
    }

    #[test]
    fn an_installation_chooses_the_anchor_and_the_upn_attribute() {
        let options = DefaultOptions { source_anchor: SourceAnchor::ObjectGuid, upn_attribute: "mail".into() };
        let set = ad_to_cloud_with(&["corp"], "tenant", &options).unwrap();
        let join = set.get("In from AD - User Join (corp)").unwrap();
        assert_eq!((join.join.len(), join.join[0][0].source.as_str()), (1, "objectGUID"));
        assert!(set.get("Out to AD - User ImmutableId (corp)").is_none(), "no writeback without the consistency GUID");
        assert!(flow_text(&set, "In from AD - User Common (corp)", "sourceAnchor").ends_with("NULL, ConvertToBase64([objectGUID]))"));
        assert!(flow_text(&set, "In from AD - User Common (corp)", "userPrincipalName").contains("IIF(IsPresent([mail]), [mail],"));
        assert!(
            flow_text(&set, "In from AD - User AccountEnabled (corp)", "userPrincipalName").starts_with("IIF(IsPresent([mail]), [mail],")
        );
        assert_eq!(
            flow_text(&set, "In from AD - Group Join (corp)", "sourceAnchor"),
            "ConvertToBase64(IIF(IsPresent([mS-DS-ConsistencyGuid]), [mS-DS-ConsistencyGuid], [objectGUID]))",
            "groups keep their own anchor"
        );

        let custom = DefaultOptions { source_anchor: SourceAnchor::from_name("employeeID").unwrap(), ..DefaultOptions::default() };
        let set = ad_to_cloud_with(&["corp"], "tenant", &custom).unwrap();
        assert!(
            flow_text(&set, "In from AD - User Common (corp)", "sourceAnchor")
                .ends_with("NULL, IIF(IsString([employeeID]), CheckSourceAnchor(CStr([employeeID])), ConvertToBase64([employeeID])))")
        );
        assert!(SourceAnchor::from_name("mail").is_err() && SourceAnchor::from_name("bad name").is_err());
        assert_eq!(SourceAnchor::from_name("ms-ds-consistencyguid").unwrap(), SourceAnchor::ConsistencyGuid);
        let bad = DefaultOptions { upn_attribute: "x]".into(), ..DefaultOptions::default() };
        assert!(ad_to_cloud_with(&["corp"], "tenant", &bad).unwrap_err()[0].message.contains("upn_attribute"));
    }

    #[test]
    fn bad_connector_ids_are_refused() {
        let err = ad_to_cloud(&["corp\"x"], "tenant").unwrap_err();
        assert_eq!(err[0].message, "connector id \"corp\"x\" must be letters, digits, '.', '_' or '-'");
        assert!(ad_to_cloud(&[], "tenant").is_err());
    }
}
