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

/// The default rules for AD connectors `ad_connectors` (in the order they were added) syncing
/// into the cloud connector `cloud`.
pub fn ad_to_cloud(ad_connectors: &[&str], cloud: &str) -> Result<RuleSet, Vec<RuleError>> {
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
        let text = AD_TO_CLOUD.replace("{connector}", connector).replace("{cloud}", cloud);
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

    #[test]
    fn bad_connector_ids_are_refused() {
        let err = ad_to_cloud(&["corp\"x"], "tenant").unwrap_err();
        assert_eq!(err[0].message, "connector id \"corp\"x\" must be letters, digits, '.', '_' or '-'");
        assert!(ad_to_cloud(&[], "tenant").is_err());
    }
}
