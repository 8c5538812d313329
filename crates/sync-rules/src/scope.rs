//! Scoping-filter evaluation: is an object in a rule's scope?
//!
//! Groups are OR-ed, clauses inside a group AND-ed; no groups means every object.
//! Comparisons are on the values' text, ignoring case (directory attributes such as
//! `isCriticalSystemObject` come back as `TRUE`), numerically when both sides are whole numbers.
//! On a multi-valued attribute a positive operator holds when **any** value matches and a
//! negative one (`NOT…`) when **no** value matches; an absent attribute matches only the
//! negative operators and `ISNULL`.

use model::{AttrValue, Attributes};

use crate::{Condition, Operator};

/// True when `attributes` is in the scope described by `groups`.
/// `is_member_of(group_dn)` answers ISMEMBEROF clauses.
pub fn in_scope(groups: &[Vec<Condition>], attributes: &Attributes, is_member_of: &dyn Fn(&str) -> bool) -> bool {
    groups.is_empty() || groups.iter().any(|group| group.iter().all(|condition| holds(condition, attributes, is_member_of)))
}

/// Whether one clause holds.
pub fn holds(condition: &Condition, attributes: &Attributes, is_member_of: &dyn Fn(&str) -> bool) -> bool {
    let values = attributes.get(&condition.attribute);
    let wanted = condition.value.as_str();
    let any = |test: &dyn Fn(&AttrValue) -> bool| values.iter().any(test);
    match condition.operator {
        Operator::IsNull => values.is_empty(),
        Operator::IsNotNull => !values.is_empty(),
        Operator::Equal | Operator::IsIn => any(&|value| compare(value, wanted) == Some(std::cmp::Ordering::Equal)),
        Operator::NotEqual | Operator::IsNotIn => !any(&|value| compare(value, wanted) == Some(std::cmp::Ordering::Equal)),
        Operator::LessThan => any(&|value| compare(value, wanted) == Some(std::cmp::Ordering::Less)),
        Operator::LessThanOrEqual => {
            any(&|value| matches!(compare(value, wanted), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)))
        }
        Operator::GreaterThan => any(&|value| compare(value, wanted) == Some(std::cmp::Ordering::Greater)),
        Operator::GreaterThanOrEqual => {
            any(&|value| matches!(compare(value, wanted), Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)))
        }
        Operator::Contains => any(&|value| folded(value).contains(&wanted.to_lowercase())),
        Operator::NotContains => !any(&|value| folded(value).contains(&wanted.to_lowercase())),
        Operator::StartsWith => any(&|value| folded(value).starts_with(&wanted.to_lowercase())),
        Operator::NotStartsWith => !any(&|value| folded(value).starts_with(&wanted.to_lowercase())),
        Operator::EndsWith => any(&|value| folded(value).ends_with(&wanted.to_lowercase())),
        Operator::NotEndsWith => !any(&|value| folded(value).ends_with(&wanted.to_lowercase())),
        Operator::IsBitSet => any(&|value| bit_set(value, wanted)),
        Operator::IsNotBitSet => !any(&|value| bit_set(value, wanted)),
        Operator::IsMemberOf => is_member_of(wanted),
        Operator::IsNotMemberOf => !is_member_of(wanted),
    }
}

fn folded(value: &AttrValue) -> String {
    value.to_string().to_lowercase()
}

fn compare(value: &AttrValue, wanted: &str) -> Option<std::cmp::Ordering> {
    let number = match value {
        AttrValue::Integer(number) => Some(*number),
        AttrValue::String(text) => text.trim().parse().ok(),
        _ => None,
    };
    if let (Some(number), Ok(wanted_number)) = (number, wanted.trim().parse::<i64>()) {
        return Some(number.cmp(&wanted_number));
    }
    if let AttrValue::Binary(_) = value {
        return None;
    }
    Some(folded(value).cmp(&wanted.to_lowercase()))
}

fn bit_set(value: &AttrValue, flag: &str) -> bool {
    let Ok(flag) = flag.trim().parse::<i64>() else {
        return false;
    };
    let number = match value {
        AttrValue::Integer(number) => *number,
        AttrValue::String(text) => match text.trim().parse::<i64>() {
            Ok(number) => number,
            Err(_) => return false,
        },
        _ => return false,
    };
    number & flag != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(attribute: &str, operator: &str, value: &str) -> Condition {
        Condition { attribute: attribute.into(), operator: Operator::parse(operator).unwrap(), value: value.into() }
    }

    fn user() -> Attributes {
        let mut attributes = Attributes::new()
            .with("sAMAccountName", AttrValue::string("ann"))
            .with("userAccountControl", AttrValue::Integer(514))
            .with("isCriticalSystemObject", AttrValue::string("FALSE"))
            .with("adminDescription", AttrValue::string("Group_x"))
            .with("whenCreatedYear", AttrValue::string("2019"));
        attributes.set("proxyAddresses", vec![AttrValue::string("SMTP:ann@corp.example"), AttrValue::string("smtp:a@mail.example")]);
        attributes
    }

    #[test]
    fn every_operator_table() {
        let member_of = |dn: &str| dn.eq_ignore_ascii_case("CN=Pilot,DC=corp");
        let cases: &[(&str, &str, &str, bool)] = &[
            ("sAMAccountName", "EQUAL", "ANN", true),
            ("sAMAccountName", "EQUAL", "bob", false),
            ("sAMAccountName", "NOTEQUAL", "bob", true),
            ("missing", "NOTEQUAL", "x", true),
            ("missing", "EQUAL", "x", false),
            ("isCriticalSystemObject", "NOTEQUAL", "TRUE", true),
            ("whenCreatedYear", "LESSTHAN", "2020", true),
            ("whenCreatedYear", "LESSTHAN_OR_EQUAL", "2019", true),
            ("whenCreatedYear", "GREATERTHAN", "2019", false),
            ("whenCreatedYear", "GREATERTHAN_OR_EQUAL", "2019", true),
            ("userAccountControl", "GREATERTHAN", "99", true), // numeric, not "514" < "99" as text
            ("sAMAccountName", "CONTAINS", "N", true),
            ("sAMAccountName", "NOTCONTAINS", "z", true),
            ("adminDescription", "STARTSWITH", "group_", true),
            ("adminDescription", "NOTSTARTSWITH", "User_", true),
            ("sAMAccountName", "ENDSWITH", "nn", true),
            ("sAMAccountName", "NOTENDSWITH", "nn", false),
            ("missing", "ISNULL", "", true),
            ("sAMAccountName", "ISNOTNULL", "", true),
            ("proxyAddresses", "ISIN", "smtp:a@mail.example", true),
            ("proxyAddresses", "ISNOTIN", "smtp:a@mail.example", false),
            ("proxyAddresses", "STARTSWITH", "smtp:a@", true),
            ("userAccountControl", "ISBITSET", "2", true),
            ("userAccountControl", "ISNOTBITSET", "2", false),
            ("userAccountControl", "ISBITNOTSET", "16", true),
            ("missing", "ISNOTBITSET", "2", true),
            ("x", "ISMEMBEROF", "cn=pilot,dc=corp", true),
            ("x", "ISNOTMEMBEROF", "CN=Pilot,DC=corp", false),
        ];
        for (attribute, operator, value, expected) in cases {
            let clause = condition(attribute, operator, value);
            assert_eq!(holds(&clause, &user(), &member_of), *expected, "{attribute} {operator} {value}");
        }
    }

    #[test]
    fn groups_are_or_of_ands_and_empty_means_all() {
        let no_member = |_: &str| false;
        assert!(in_scope(&[], &user(), &no_member));
        let disabled_or_ann = vec![
            vec![condition("userAccountControl", "ISNOTBITSET", "2"), condition("sAMAccountName", "EQUAL", "ann")],
            vec![condition("sAMAccountName", "EQUAL", "ann")],
        ];
        assert!(in_scope(&disabled_or_ann, &user(), &no_member), "second group holds");
        let both_fail = vec![vec![condition("userAccountControl", "ISNOTBITSET", "2")], vec![condition("sAMAccountName", "EQUAL", "x")]];
        assert!(!in_scope(&both_fail, &user(), &no_member));
    }
}
