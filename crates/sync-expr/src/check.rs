//! The checker: parse, then verify names and shapes before anything runs — unknown functions,
//! wrong argument counts, unbound `$variables`, unknown attributes and parameters (when a
//! schema is given), and bad literal options. Only a [`CheckedExpr`] can be evaluated.

use std::collections::BTreeSet;

use crate::eval::{self, Env, EvalError};
use crate::functions::{self, FUNCTIONS};
use crate::syntax::{self, Expr, LineCol, Span};
use crate::value::Value;

/// What names an expression may use. `None` means "not checked".
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// Attribute names of the source object type (case-sensitive).
    pub attributes: Option<BTreeSet<String>>,
    /// Parameter names (e.g. `Domain.Netbios`).
    pub parameters: Option<BTreeSet<String>>,
}

impl Schema {
    /// A schema that checks attribute and parameter names against these lists.
    pub fn new(attributes: &[&str], parameters: &[&str]) -> Self {
        Schema {
            attributes: Some(attributes.iter().map(|name| name.to_string()).collect()),
            parameters: Some(parameters.iter().map(|name| name.to_string()).collect()),
        }
    }
}

/// One problem found in an expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct Diagnostic {
    /// What is wrong.
    pub message: String,
    /// Where (1-based line and column).
    pub at: LineCol,
    /// The byte range.
    pub span: Span,
}

/// An expression that parsed and passed the checks. Only [`check`] makes one.
#[derive(Debug, Clone)]
pub struct CheckedExpr {
    text: String,
    expr: Expr,
}

impl CheckedExpr {
    /// The source text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The syntax tree.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Evaluates against `env`.
    pub fn evaluate(&self, env: &mut Env<'_>) -> Result<Value, EvalError> {
        eval::evaluate(&self.text, &self.expr, env)
    }
}

/// Literal options some functions accept, checked when written as a string literal:
/// (function, argument index, allowed values).
const OPTIONS: &[(&str, usize, &[&str])] = &[
    ("ConvertFromBase64", 1, &["Unicode", "ASCII", "UTF8"]),
    ("Contains", 2, &["CaseInsensitive", "CaseSensitive"]),
    ("InStr", 3, &["vbTextCompare", "vbBinaryCompare"]),
    ("InStrRev", 3, &["vbTextCompare", "vbBinaryCompare"]),
    ("DNComponentRev", 2, &["DC"]),
    ("DateAdd", 0, &["yyyy", "q", "m", "y", "d", "w", "ww", "h", "n", "s"]),
    ("CertNameInfo", 1, &["SimpleName", "EmailName", "UpnName", "DnsName", "DnsFromAlternativeName", "UrlName"]),
];

/// Parses and checks `text`; every problem found is reported, not just the first.
pub fn check(text: &str, schema: &Schema) -> Result<CheckedExpr, Vec<Diagnostic>> {
    let expr = syntax::parse(text).map_err(|err| vec![Diagnostic { message: err.message, at: err.span.line_col(text), span: err.span }])?;
    let mut checker = Checker { text, schema, diagnostics: Vec::new(), bound: Vec::new() };
    checker.visit(&expr);
    if checker.diagnostics.is_empty() { Ok(CheckedExpr { text: text.to_string(), expr }) } else { Err(checker.diagnostics) }
}

struct Checker<'a> {
    text: &'a str,
    schema: &'a Schema,
    diagnostics: Vec<Diagnostic>,
    bound: Vec<String>,
}

impl Checker<'_> {
    fn report(&mut self, span: Span, message: String) {
        self.diagnostics.push(Diagnostic { message, at: span.line_col(self.text), span });
    }

    fn check_attribute(&mut self, name: &str, span: Span) {
        let Some(known) = &self.schema.attributes else {
            return;
        };
        if known.contains(name) {
            return;
        }
        let message = match known.iter().find(|candidate| candidate.eq_ignore_ascii_case(name)) {
            Some(candidate) => format!("unknown attribute [{name}]; did you mean [{candidate}]? (names are case-sensitive)"),
            None => format!("unknown attribute [{name}]"),
        };
        self.report(span, message);
    }

    fn visit(&mut self, expr: &Expr) {
        match expr {
            Expr::Str(..) | Expr::Num(..) | Expr::Bool(..) | Expr::Constant(..) => {}
            Expr::Attribute(name, span) => self.check_attribute(name, *span),
            Expr::Parameter(name, span) => {
                if let Some(known) = &self.schema.parameters
                    && !known.contains(name)
                {
                    let list = known.iter().map(|name| format!("%{name}%")).collect::<Vec<_>>().join(", ");
                    self.report(*span, format!("unknown parameter %{name}% (known: {list})"));
                }
            }
            Expr::Variable(name, span) => {
                if !self.bound.contains(name) {
                    self.report(*span, format!("${name} is not bound by an enclosing Select, Where or With"));
                }
            }
            Expr::Negate(operand, _) => self.visit(operand),
            Expr::Binary { left, right, .. } => {
                self.visit(left);
                self.visit(right);
            }
            Expr::Call { name, args, span } => self.visit_call(name, args, *span),
        }
    }

    fn visit_call(&mut self, name: &str, args: &[Expr], span: Span) {
        let Some(function) = functions::lookup(name) else {
            let message = match FUNCTIONS.iter().find(|candidate| candidate.name.eq_ignore_ascii_case(name)) {
                Some(candidate) => format!("unknown function {name}; did you mean {}? (names are case-sensitive)", candidate.name),
                None => format!("unknown function {name}"),
            };
            self.report(span, message);
            args.iter().for_each(|arg| self.visit(arg));
            return;
        };
        let count = args.len();
        let arity_ok = count >= function.min_args && function.max_args.is_none_or(|max| count <= max);
        if !arity_ok {
            let expected = match function.max_args {
                Some(max) if max == function.min_args => format!("{max}"),
                Some(max) => format!("{} to {max}", function.min_args),
                None => format!("at least {}", function.min_args),
            };
            let plural = if expected == "1" { "argument" } else { "arguments" };
            self.report(span, format!("{name} takes {expected} {plural}, got {count} ({})", function.signature));
        }
        for (option_function, index, allowed) in OPTIONS {
            if *option_function == name
                && let Some(Expr::Str(value, literal_span)) = args.get(*index)
                && !allowed.contains(&value.as_str())
            {
                self.report(*literal_span, format!("{name}: \"{value}\" is not one of {}", allowed.join(", ")));
            }
        }
        match name {
            "ImportedValue" => match args.first() {
                Some(Expr::Str(attribute, literal_span)) => self.check_attribute(attribute, *literal_span),
                Some(other) => self.report(
                    other.span(),
                    "ImportedValue takes the attribute name as a string literal, e.g. ImportedValue(\"mail\")".into(),
                ),
                None => {}
            },
            "Select" | "Where" | "With" if arity_ok => {
                let Expr::Variable(variable, _) = &args[0] else {
                    self.report(args[0].span(), format!("{name}: the first argument must be a $variable"));
                    args[1..].iter().for_each(|arg| self.visit(arg));
                    return;
                };
                self.visit(&args[1]);
                self.bound.push(variable.clone());
                self.visit(&args[2]);
                self.bound.pop();
            }
            _ => args.iter().for_each(|arg| self.visit(arg)),
        }
    }
}
