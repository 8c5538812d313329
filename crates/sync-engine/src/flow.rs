//! Attribute flow shared by both directions: evaluate a rule's flows against a source object,
//! then resolve the contributions to one target attribute by precedence and merge type.
//!
//! Resolution (lower precedence number first):
//! - `Update`/`Replace`: the first contribution with values wins; `AuthoritativeNull` removes the
//!   value and stops lower rules; `NULL` lets lower rules contribute (none left: the value is
//!   removed); `IgnoreThisFlow` contributes nothing and, if nobody else does, keeps the target as it is.
//! - `Merge`/`MergeCaseInsensitive`: the union of all contributions (duplicates removed, ignoring
//!   case for the latter) down to the first `AuthoritativeNull`.

use std::collections::BTreeMap;

use model::AttrValue;
use sync_expr::Value;
use sync_expr::time::DateTime;
use sync_rules::{Flow, FlowSource, MergeType};

use crate::values::{ObjectSource, Produced, constant, from_expr};

/// What a flow evaluation may read besides the source object.
pub struct FlowEnv<'a> {
    /// `%Name%` parameters of the rule's connector.
    pub parameters: &'a BTreeMap<String, Value>,
    /// The run's start, for `Now()`.
    pub now: DateTime,
    /// Randomness for `Guid()`/`RandomNum()`.
    pub random: &'a mut dyn FnMut() -> u64,
}

/// Evaluates one flow; an `Err` is the flow's error text (the object gets it; the run goes on).
pub fn evaluate(flow: &Flow, source: &ObjectSource<'_>, env: &mut FlowEnv<'_>) -> Result<Produced, String> {
    match &flow.source {
        FlowSource::Direct(attribute) => Ok(match sync_expr::Source::attribute(source, attribute) {
            Value::Null => Produced::Null,
            value => from_expr(value),
        }),
        FlowSource::Constant(text) => Ok(Produced::Values(vec![constant(text)])),
        FlowSource::Expression(expression) => {
            let mut expr_env = sync_expr::Env { source, parameters: env.parameters, now: env.now, random: &mut *env.random };
            expression.evaluate(&mut expr_env).map(from_expr).map_err(|err| err.to_string())
        }
    }
}

/// One rule's contribution to one target attribute.
#[derive(Debug, Clone)]
pub struct Contribution<T> {
    /// The rule's precedence.
    pub precedence: i32,
    /// The flow's merge type.
    pub merge: MergeType,
    /// What it produced.
    pub produced: Produced,
    /// Who contributed (lineage), carried through.
    pub origin: T,
}

/// The outcome for one target attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved<T> {
    /// Set these values, contributed by these origins.
    Set(Vec<AttrValue>, Vec<T>),
    /// Remove the attribute.
    Remove,
    /// Leave the target as it is.
    Keep,
}

/// Resolves contributions to one attribute (any order; sorted here by precedence).
pub fn resolve<T: Clone>(mut contributions: Vec<Contribution<T>>) -> Resolved<T> {
    contributions.sort_by_key(|contribution| contribution.precedence);
    let Some(first) = contributions.first() else { return Resolved::Keep };
    let merge = first.merge;
    let mut saw_ignore = false;
    match merge {
        MergeType::Update | MergeType::Replace => {
            for contribution in contributions {
                match contribution.produced {
                    Produced::Values(values) => return Resolved::Set(values, vec![contribution.origin]),
                    Produced::AuthoritativeNull => return Resolved::Remove,
                    Produced::Null => {}
                    Produced::Ignore => saw_ignore = true,
                }
            }
        }
        MergeType::Merge | MergeType::MergeCaseInsensitive => {
            let mut union: Vec<AttrValue> = Vec::new();
            let mut origins = Vec::new();
            for contribution in contributions {
                match contribution.produced {
                    Produced::Values(values) => {
                        let mut added = false;
                        for value in values {
                            let duplicate = union.iter().any(|kept| same(kept, &value, merge == MergeType::MergeCaseInsensitive));
                            if !duplicate {
                                union.push(value);
                                added = true;
                            }
                        }
                        if added {
                            origins.push(contribution.origin);
                        }
                    }
                    Produced::AuthoritativeNull => break,
                    Produced::Null => {}
                    Produced::Ignore => saw_ignore = true,
                }
            }
            if !union.is_empty() {
                return Resolved::Set(union, origins);
            }
        }
    }
    if saw_ignore { Resolved::Keep } else { Resolved::Remove }
}

fn same(a: &AttrValue, b: &AttrValue, ignore_case: bool) -> bool {
    match (a, b) {
        (AttrValue::String(a), AttrValue::String(b)) if ignore_case => a.to_lowercase() == b.to_lowercase(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(precedence: i32, merge: MergeType, produced: Produced) -> Contribution<i32> {
        Contribution { precedence, merge, produced, origin: precedence }
    }

    fn values(texts: &[&str]) -> Produced {
        Produced::Values(texts.iter().map(|text| AttrValue::string(*text)).collect())
    }

    #[test]
    fn precedence_and_special_nulls_table() {
        use MergeType::Update as U;
        type Case = (&'static str, Vec<Contribution<i32>>, Resolved<i32>);
        let cases: Vec<Case> = vec![
            (
                "lower number wins",
                vec![c(20, U, values(&["b"])), c(10, U, values(&["a"]))],
                Resolved::Set(vec![AttrValue::string("a")], vec![10]),
            ),
            (
                "NULL lets a lower rule contribute",
                vec![c(10, U, Produced::Null), c(20, U, values(&["b"]))],
                Resolved::Set(vec![AttrValue::string("b")], vec![20]),
            ),
            ("NULL everywhere removes", vec![c(10, U, Produced::Null), c(20, U, Produced::Null)], Resolved::Remove),
            (
                "AuthoritativeNull stops lower rules",
                vec![c(10, U, Produced::AuthoritativeNull), c(20, U, values(&["b"]))],
                Resolved::Remove,
            ),
            ("IgnoreThisFlow alone keeps the target", vec![c(10, U, Produced::Ignore), c(20, U, Produced::Null)], Resolved::Keep),
            (
                "IgnoreThisFlow does not block lower rules",
                vec![c(10, U, Produced::Ignore), c(20, U, values(&["b"]))],
                Resolved::Set(vec![AttrValue::string("b")], vec![20]),
            ),
            ("no contributions keep", vec![], Resolved::Keep),
        ];
        for (name, contributions, expected) in cases {
            assert_eq!(resolve(contributions), expected, "{name}");
        }
    }

    #[test]
    fn merge_types() {
        let merged = resolve(vec![
            c(10, MergeType::Merge, values(&["SMTP:a@x", "smtp:b@x"])),
            c(20, MergeType::Merge, values(&["smtp:a@x", "smtp:b@x", "smtp:c@x"])),
        ]);
        assert_eq!(
            merged,
            Resolved::Set(["SMTP:a@x", "smtp:b@x", "smtp:a@x", "smtp:c@x"].iter().map(|v| AttrValue::string(*v)).collect(), vec![10, 20])
        );
        let folded = resolve(vec![
            c(10, MergeType::MergeCaseInsensitive, values(&["SMTP:a@x"])),
            c(20, MergeType::MergeCaseInsensitive, values(&["smtp:a@x", "smtp:c@x"])),
        ]);
        assert_eq!(folded, Resolved::Set(vec![AttrValue::string("SMTP:a@x"), AttrValue::string("smtp:c@x")], vec![10, 20]));
        let stopped = resolve(vec![
            c(10, MergeType::Merge, values(&["a"])),
            c(15, MergeType::Merge, Produced::AuthoritativeNull),
            c(20, MergeType::Merge, values(&["b"])),
        ]);
        assert_eq!(stopped, Resolved::Set(vec![AttrValue::string("a")], vec![10]));
    }
}
