//! Run-time values of the expression language.
//!
//! A value is single (string, number, boolean, binary, date-time, reference) or multi-valued.
//! `Null` is "nothing to contribute"; `AuthoritativeNull` and `IgnoreThisFlow` are the two
//! special results that attribute flow treats differently (see [`crate::FlowOutcome`]).

use std::fmt;

use crate::time::DateTime;

/// A value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// A string.
    Str(String),
    /// A 64-bit integer.
    Num(i64),
    /// A boolean.
    Bool(bool),
    /// Bytes (objectGUID, objectSid, mS-DS-ConsistencyGuid …).
    Bin(Vec<u8>),
    /// A UTC date-time.
    Date(DateTime),
    /// A reference to another object, by DN.
    Ref(String),
    /// Several values of one attribute.
    Multi(Vec<Value>),
    /// `AuthoritativeNull`: remove the value and stop lower-precedence rules from contributing.
    AuthoritativeNull,
    /// `IgnoreThisFlow`: contribute nothing and leave the target alone.
    IgnoreThisFlow,
}

impl Value {
    /// A string value.
    pub fn str(text: impl Into<String>) -> Self {
        Value::Str(text.into())
    }

    /// A multi-valued string value.
    pub fn strs(texts: &[&str]) -> Self {
        Value::Multi(texts.iter().map(|text| Value::Str(text.to_string())).collect())
    }

    /// True for `Null` and an empty multi-value.
    pub fn is_null(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Multi(values) => values.is_empty(),
            _ => false,
        }
    }

    /// The name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Str(_) => "string",
            Value::Num(_) => "number",
            Value::Bool(_) => "boolean",
            Value::Bin(_) => "binary",
            Value::Date(_) => "date-time",
            Value::Ref(_) => "reference",
            Value::Multi(_) => "multi-valued",
            Value::AuthoritativeNull => "AuthoritativeNull",
            Value::IgnoreThisFlow => "IgnoreThisFlow",
        }
    }

    /// The values as a list: a multi-value's items, one item, or none for `Null`.
    pub fn into_list(self) -> Vec<Value> {
        match self {
            Value::Multi(values) => values,
            Value::Null => Vec::new(),
            other => vec![other],
        }
    }
}

impl fmt::Display for Value {
    /// The value as `CStr` would give it; binary as upper-case hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => Ok(()),
            Value::Str(text) | Value::Ref(text) => f.write_str(text),
            Value::Num(number) => write!(f, "{number}"),
            Value::Bool(true) => f.write_str("True"),
            Value::Bool(false) => f.write_str("False"),
            Value::Bin(bytes) => bytes.iter().try_for_each(|byte| write!(f, "{byte:02X}")),
            Value::Date(instant) => write!(f, "{instant}"),
            Value::Multi(values) => {
                for (index, value) in values.iter().enumerate() {
                    if index > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{value}")?;
                }
                Ok(())
            }
            Value::AuthoritativeNull => f.write_str("AuthoritativeNull"),
            Value::IgnoreThisFlow => f.write_str("IgnoreThisFlow"),
        }
    }
}
