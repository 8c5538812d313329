//! The evaluator: a checked expression plus an environment (the source object, parameters,
//! the run's clock reading and a random source) → a [`Value`].
//!
//! Multi-valued semantics: where a function takes a single value and gets a multi-valued one,
//! it runs once per value and the results form a multi-value (Null results are dropped), so
//! `Trim([proxyAddresses])` trims each value. Operators do the same; two multi-valued operands
//! pair their values by position.

use std::collections::BTreeMap;

use crate::functions::{self, Kind, Param, Services};
use crate::syntax::{BinOp, Constant, Expr, LineCol, Span};
use crate::time::DateTime;
use crate::value::Value;

/// Where attribute values come from.
pub trait Source {
    /// The attribute's current value (`Value::Null` when absent).
    fn attribute(&self, name: &str) -> Value;
    /// The value last confirmed by an import (for `ImportedValue`); by default the current value.
    fn imported_value(&self, name: &str) -> Value {
        self.attribute(name)
    }
}

impl Source for BTreeMap<String, Value> {
    fn attribute(&self, name: &str) -> Value {
        self.get(name).cloned().unwrap_or(Value::Null)
    }
}

/// Everything an evaluation may read.
pub struct Env<'a> {
    /// The object whose attributes `[name]` reads.
    pub source: &'a dyn Source,
    /// `%Name%` parameters (e.g. `Domain.Netbios`).
    pub parameters: &'a BTreeMap<String, Value>,
    /// What `Now()` returns: the start of the run.
    pub now: DateTime,
    /// Randomness for `Guid()` and `RandomNum()`.
    pub random: &'a mut dyn FnMut() -> u64,
}

/// Why an evaluation failed; the object gets this as its error, the run goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct EvalError {
    /// What went wrong, prefixed with the function's name (except for `Error(…)`'s own message).
    pub message: String,
    /// Where in the expression.
    pub at: LineCol,
}

pub(crate) fn evaluate(text: &str, expr: &Expr, env: &mut Env<'_>) -> Result<Value, EvalError> {
    let mut evaluator = Evaluator { text, env, variables: Vec::new() };
    evaluator.eval(expr)
}

struct Evaluator<'t, 'e, 'a> {
    text: &'t str,
    env: &'e mut Env<'a>,
    variables: Vec<(String, Value)>,
}

impl Evaluator<'_, '_, '_> {
    fn error(&self, span: Span, message: impl Into<String>) -> EvalError {
        EvalError { message: message.into(), at: span.line_col(self.text) }
    }

    fn eval(&mut self, expr: &Expr) -> Result<Value, EvalError> {
        match expr {
            Expr::Str(text, _) => Ok(Value::Str(text.clone())),
            Expr::Num(number, _) => Ok(Value::Num(*number)),
            Expr::Bool(flag, _) => Ok(Value::Bool(*flag)),
            Expr::Constant(constant, _) => Ok(match constant {
                Constant::Null => Value::Null,
                Constant::AuthoritativeNull => Value::AuthoritativeNull,
                Constant::IgnoreThisFlow => Value::IgnoreThisFlow,
                Constant::Crlf => Value::str("\r\n"),
            }),
            Expr::Attribute(name, _) => Ok(self.env.source.attribute(name)),
            Expr::Parameter(name, span) => {
                self.env.parameters.get(name).cloned().ok_or_else(|| self.error(*span, format!("parameter %{name}% has no value")))
            }
            Expr::Variable(name, span) => self
                .variables
                .iter()
                .rev()
                .find(|(bound, _)| bound == name)
                .map(|(_, value)| value.clone())
                .ok_or_else(|| self.error(*span, format!("${name} is not bound"))),
            Expr::Negate(operand, span) => {
                let value = self.eval(operand)?;
                broadcast(&[value], &[Param::Single], |args| match &args[0] {
                    Value::Null => Ok(Value::Null),
                    Value::Num(number) => Ok(Value::Num(number.wrapping_neg())),
                    other => Err(format!("cannot negate {}", other.type_name())),
                })
                .map_err(|message| self.error(*span, message))
            }
            Expr::Binary { op, left, right, span } => {
                let (left, right) = (self.eval(left)?, self.eval(right)?);
                broadcast(&[left, right], &[Param::Single, Param::Single], |args| binary(*op, &args[0], &args[1]))
                    .map_err(|message| self.error(*span, format!("`{}`: {message}", op.symbol())))
            }
            Expr::Call { name, args, span } => self.call(name, args, *span),
        }
    }

    fn call(&mut self, name: &str, args: &[Expr], span: Span) -> Result<Value, EvalError> {
        let Some(function) = functions::lookup(name) else {
            return Err(self.error(span, format!("unknown function {name}")));
        };
        match function.kind {
            Kind::Special => self.special(name, args, span),
            Kind::Plain(implementation) => {
                let values = args.iter().map(|arg| self.eval(arg)).collect::<Result<Vec<_>, _>>()?;
                let mut services = Services { now: self.env.now, random: &mut *self.env.random };
                broadcast(&values, function.params, |call_args| implementation(call_args, &mut services)).map_err(|message| {
                    if name == "Error" { self.error(span, message) } else { self.error(span, format!("{name}: {message}")) }
                })
            }
        }
    }

    fn special(&mut self, name: &str, args: &[Expr], span: Span) -> Result<Value, EvalError> {
        match name {
            "IIF" => {
                let condition = self.eval(&args[0])?;
                if let Value::Multi(_) = condition {
                    let (then_value, else_value) = (self.eval(&args[1])?, self.eval(&args[2])?);
                    return broadcast(&[condition, then_value, else_value], &[Param::Single; 3], |values| {
                        Ok(if functions::truthy(&values[0])? { values[1].clone() } else { values[2].clone() })
                    })
                    .map_err(|message| self.error(span, format!("IIF: {message}")));
                }
                let chosen = functions::truthy(&condition).map_err(|message| self.error(span, format!("IIF: {message}")))?;
                self.eval(if chosen { &args[1] } else { &args[2] })
            }
            "ImportedValue" => match &args[0] {
                Expr::Str(attribute, _) => Ok(self.env.source.imported_value(attribute)),
                _ => Err(self.error(span, "ImportedValue takes the attribute name as a string literal")),
            },
            "Select" | "Where" | "With" => {
                let Expr::Variable(variable, _) = &args[0] else {
                    return Err(self.error(span, format!("{name}: the first argument must be a $variable")));
                };
                let source = self.eval(&args[1])?;
                if name == "With" {
                    self.variables.push((variable.clone(), source));
                    let result = self.eval(&args[2]);
                    self.variables.pop();
                    return result;
                }
                let mut results = Vec::new();
                for item in source.into_list() {
                    self.variables.push((variable.clone(), item.clone()));
                    let outcome = self.eval(&args[2]);
                    self.variables.pop();
                    let outcome = outcome?;
                    if name == "Select" {
                        results.extend(outcome.into_list());
                    } else if functions::truthy(&outcome).map_err(|message| self.error(span, format!("Where: {message}")))? {
                        results.push(item);
                    }
                }
                Ok(if results.is_empty() { Value::Null } else { Value::Multi(results) })
            }
            other => Err(self.error(span, format!("{other} has no evaluator"))),
        }
    }
}

/// Runs `apply` once, or once per value where a [`Param::Single`] argument is multi-valued.
fn broadcast(args: &[Value], params: &[Param], mut apply: impl FnMut(&[Value]) -> Result<Value, String>) -> Result<Value, String> {
    let mode = |index: usize| params.get(index).or(params.last()).copied().unwrap_or(Param::Whole);
    let mut length = None;
    for (index, arg) in args.iter().enumerate() {
        if let (Param::Single, Value::Multi(values)) = (mode(index), arg) {
            match length {
                None => length = Some(values.len()),
                Some(seen) if seen != values.len() => {
                    return Err(format!("multi-valued arguments have different numbers of values ({seen} and {})", values.len()));
                }
                Some(_) => {}
            }
        }
    }
    let Some(length) = length else {
        return apply(args);
    };
    let mut results = Vec::new();
    let mut call_args = args.to_vec();
    for position in 0..length {
        for (index, arg) in args.iter().enumerate() {
            if let (Param::Single, Value::Multi(values)) = (mode(index), arg) {
                call_args[index] = values[position].clone();
            }
        }
        results.extend(apply(&call_args)?.into_list());
    }
    Ok(if results.is_empty() { Value::Null } else { Value::Multi(results) })
}

fn binary(op: BinOp, left: &Value, right: &Value) -> Result<Value, String> {
    use std::cmp::Ordering;
    match op {
        BinOp::Concat => {
            if left.is_null() && right.is_null() {
                return Ok(Value::Null);
            }
            Ok(Value::Str(format!("{}{}", concat_text(left)?, concat_text(right)?)))
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul => {
            let (Some(a), Some(b)) = (arithmetic_operand(left)?, arithmetic_operand(right)?) else {
                return Ok(Value::Null);
            };
            let result = match op {
                BinOp::Add => a.checked_add(b),
                BinOp::Sub => a.checked_sub(b),
                _ => a.checked_mul(b),
            };
            result.map(Value::Num).ok_or_else(|| format!("{a} {} {b} overflows", op.symbol()))
        }
        BinOp::And => Ok(Value::Bool(functions::truthy(left)? && functions::truthy(right)?)),
        BinOp::Or => Ok(Value::Bool(functions::truthy(left)? || functions::truthy(right)?)),
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let Some(ordering) = compare(left, right)? else {
                // A comparison with Null is false, its negation true.
                return Ok(Value::Bool(op == BinOp::Ne));
            };
            Ok(Value::Bool(match op {
                BinOp::Eq => ordering == Ordering::Equal,
                BinOp::Ne => ordering != Ordering::Equal,
                BinOp::Lt => ordering == Ordering::Less,
                BinOp::Le => ordering != Ordering::Greater,
                BinOp::Gt => ordering == Ordering::Greater,
                _ => ordering != Ordering::Less,
            }))
        }
    }
}

fn concat_text(value: &Value) -> Result<String, String> {
    match value {
        Value::Null => Ok(String::new()),
        Value::Str(_) | Value::Ref(_) | Value::Num(_) | Value::Bool(_) | Value::Date(_) => Ok(value.to_string()),
        other => Err(format!("cannot concatenate {}", other.type_name())),
    }
}

fn arithmetic_operand(value: &Value) -> Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Num(number) => Ok(Some(*number)),
        Value::Str(text) => text.trim().parse().map(Some).map_err(|_| format!("\"{text}\" is not a number")),
        other => Err(format!("{} is not a number", other.type_name())),
    }
}

fn compare(left: &Value, right: &Value) -> Result<Option<std::cmp::Ordering>, String> {
    Ok(Some(match (left, right) {
        (Value::Null, _) | (_, Value::Null) => return Ok(None),
        (Value::Num(a), Value::Num(b)) => a.cmp(b),
        (Value::Num(a), Value::Str(text)) => match text.trim().parse::<i64>() {
            Ok(b) => a.cmp(&b),
            Err(_) => a.to_string().cmp(text),
        },
        (Value::Str(text), Value::Num(b)) => match text.trim().parse::<i64>() {
            Ok(a) => a.cmp(b),
            Err(_) => text.cmp(&b.to_string()),
        },
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Bool(a), Value::Str(text)) | (Value::Str(text), Value::Bool(a)) => {
            let b = functions::truthy(&Value::Str(text.clone()))?;
            if matches!(left, Value::Bool(_)) { a.cmp(&b) } else { b.cmp(a) }
        }
        (Value::Date(a), Value::Date(b)) => a.cmp(b),
        (Value::Bin(a), Value::Bin(b)) => a.cmp(b),
        (Value::Ref(a), Value::Ref(b)) => a.to_lowercase().cmp(&b.to_lowercase()),
        (a @ (Value::Str(_) | Value::Ref(_) | Value::Date(_)), b @ (Value::Str(_) | Value::Ref(_) | Value::Date(_))) => {
            a.to_string().cmp(&b.to_string())
        }
        (a, b) => {
            return Err(format!("cannot compare {} with {}", a.type_name(), b.type_name()));
        }
    }))
}
