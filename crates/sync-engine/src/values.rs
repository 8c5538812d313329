//! Conversions between stored attribute values ([`model::AttrValue`]) and expression values
//! ([`sync_expr::Value`]), and the adapters that let expressions read CS and MV objects.

use model::{AttrValue, Attributes};
use sync_expr::Value;

/// An attribute's stored values as one expression value (`Null`, single, or `Multi`).
pub fn to_expr(values: &[AttrValue]) -> Value {
    match values {
        [] => Value::Null,
        [single] => one_to_expr(single),
        many => Value::Multi(many.iter().map(one_to_expr).collect()),
    }
}

fn one_to_expr(value: &AttrValue) -> Value {
    match value {
        AttrValue::String(text) => Value::Str(text.clone()),
        AttrValue::Integer(number) => Value::Num(*number),
        AttrValue::Boolean(flag) => Value::Bool(*flag),
        AttrValue::Binary(bytes) => Value::Bin(bytes.clone()),
        AttrValue::Reference(target) => Value::Ref(target.clone()),
        // Expressions see references as text: an MV reference as its id, which an outbound
        // flow's result turns back into the target's DN (`outbound::desired`).
        AttrValue::MvReference(id) => Value::Ref(id.0.to_string()),
    }
}

/// What a flow produced, in the terms attribute flow cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Produced {
    /// Values to contribute (never empty).
    Values(Vec<AttrValue>),
    /// `NULL`: nothing; a lower-precedence rule may contribute.
    Null,
    /// `AuthoritativeNull`: remove, and stop lower-precedence rules.
    AuthoritativeNull,
    /// `IgnoreThisFlow`: leave the target as it is.
    Ignore,
}

/// Converts an expression result.
pub fn from_expr(value: Value) -> Produced {
    match value {
        Value::AuthoritativeNull => Produced::AuthoritativeNull,
        Value::IgnoreThisFlow => Produced::Ignore,
        other => {
            let mut values = Vec::new();
            push_values(other, &mut values);
            if values.is_empty() { Produced::Null } else { Produced::Values(values) }
        }
    }
}

fn push_values(value: Value, out: &mut Vec<AttrValue>) {
    match value {
        Value::Null | Value::AuthoritativeNull | Value::IgnoreThisFlow => {}
        // Directories hold no empty strings: "" contributes nothing (e.g. `Left(NULL, 448)`).
        Value::Str(text) if text.is_empty() => {}
        Value::Str(text) => out.push(AttrValue::String(text)),
        Value::Num(number) => out.push(AttrValue::Integer(number)),
        Value::Bool(flag) => out.push(AttrValue::Boolean(flag)),
        Value::Bin(bytes) => out.push(AttrValue::Binary(bytes)),
        Value::Ref(target) => out.push(AttrValue::Reference(target)),
        Value::Date(instant) => out.push(AttrValue::String(instant.to_string())),
        Value::Multi(values) => values.into_iter().for_each(|value| push_values(value, out)),
    }
}

/// A constant flow's literal: `True`/`False` become booleans, whole numbers integers, the rest text.
pub fn constant(text: &str) -> AttrValue {
    match text {
        "True" | "true" | "TRUE" => AttrValue::Boolean(true),
        "False" | "false" | "FALSE" => AttrValue::Boolean(false),
        _ => text.parse().map_or_else(|_| AttrValue::String(text.to_string()), AttrValue::Integer),
    }
}

/// An object's attributes as an expression source; `[dn]` reads its DN (as text; `CRef([dn])` makes it a reference).
pub struct ObjectSource<'a> {
    /// The attributes.
    pub attributes: &'a Attributes,
    /// The DN, if the object has one.
    pub dn: Option<&'a str>,
}

impl sync_expr::Source for ObjectSource<'_> {
    fn attribute(&self, name: &str) -> Value {
        match (name, self.dn) {
            ("dn", Some(dn)) if self.attributes.get("dn").is_empty() => Value::Str(dn.to_string()),
            _ => to_expr(self.attributes.get(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expression_results_become_values() {
        assert_eq!(from_expr(Value::str("")), Produced::Null, "empty text is no value");
        assert_eq!(
            from_expr(Value::Multi(vec![Value::str("a"), Value::str(""), Value::Null])),
            Produced::Values(vec![AttrValue::string("a")])
        );
        assert_eq!(from_expr(Value::AuthoritativeNull), Produced::AuthoritativeNull);
        assert_eq!(from_expr(Value::IgnoreThisFlow), Produced::Ignore);
        assert_eq!(from_expr(Value::Num(5)), Produced::Values(vec![AttrValue::Integer(5)]));
        assert_eq!(constant("True"), AttrValue::Boolean(true));
        assert_eq!(constant("42"), AttrValue::Integer(42));
        assert_eq!(constant("User"), AttrValue::string("User"));
    }
}
