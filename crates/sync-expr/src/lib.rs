//! The sync-rule expression language, compatible with Entra Connect's declarative provisioning:
//! [`check`] parses and checks an expression (errors carry line and column), and
//! [`CheckedExpr::evaluate`] computes its value for one object.
//!
//! Pure: no I/O, no clock, no randomness of its own — `Now()`, `Guid()` and `RandomNum()` read
//! what the caller puts in [`Env`]. It knows nothing of sync rules, stores or connectors.
//!
//! The function reference (`docs/expression-functions.md`) is generated from
//! [`functions::FUNCTIONS`] by [`reference_markdown`]; a test keeps it current.

pub mod cert;
mod check;
mod eval;
pub mod functions;
pub mod syntax;
pub mod time;
mod value;

pub use check::{CheckedExpr, Diagnostic, Schema, check};
pub use eval::{Env, EvalError, Source};
pub use value::Value;

/// Renders a value the way the reference's examples show results: strings quoted (`"a"`),
/// `null`, `True`, numbers, `bin:HEX`, `ref:DN`, ISO date-times, `[…]` for multi-values.
pub fn render_value(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Str(text) => format!("{text:?}"),
        Value::Bin(bytes) => format!("bin:{value}", value = Value::Bin(bytes.clone())),
        Value::Ref(dn) => format!("ref:{dn}"),
        Value::Multi(values) => format!("[{}]", values.iter().map(render_value).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

/// The function reference in Markdown, generated from the function table.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Expression functions\n\n\
         <!-- Generated from crates/sync-expr/src/functions.rs by `UPDATE_EXPECT=1 cargo test -p sync-expr`. Do not edit. -->\n\n\
         Expressions follow Entra Connect's declarative-provisioning language: function calls, `[attribute]`, `%Parameter%`,\n\
         `\"strings\"` (write `\"\"` for a quote), numbers (`42`, `&HFF`), `True`/`False`, and the constants `NULL`,\n\
         `AuthoritativeNull`, `IgnoreThisFlow` and `CRLF`. Function and attribute names are case-sensitive.\n\n\
         The operators `& + - * = <> < <= > >=` **all have the same priority and evaluate left to right**:\n\
         `2*5+3` is 13 and `2+5*3` is 21: use parentheses. `&&` and `||` bind loosest (equal among themselves),\n\
         so `[a] = 1 || [b] = 2` compares first, as Entra's own default rules expect.\n\n\
         A function that takes a single value and is given a multi-valued attribute runs once per value;\n\
         Null results are dropped, so `IIF(InStr([proxyAddresses],\"SIP:\")=1,NULL,[proxyAddresses])` removes the SIP addresses.\n\n\
         Every example below runs as a test, against an object with `mail` = `ann@corp.example` and `proxyAddresses` =\n\
         `SMTP:ann@corp.example`, `smtp:ann@mail.example`, `SIP:ann@corp.example`, and `userCertificate` = a test\n\
         certificate (its base64 is `EXAMPLE_CERTIFICATE` in `crates/sync-expr/src/cert.rs`), at `Now()` = 2024-11-25T10:00:00Z.\n",
    );
    let mut categories: Vec<functions::Category> = functions::FUNCTIONS.iter().map(|function| function.category).collect();
    categories.sort();
    categories.dedup();
    for category in categories {
        out.push_str(&format!("\n## {}\n", category.title()));
        for function in functions::FUNCTIONS.iter().filter(|function| function.category == category) {
            out.push_str(&format!("\n### {}\n\n`{}`\n\n{}\n\n", function.name, function.signature, function.summary));
            for (example, result) in function.examples {
                out.push_str(&format!("- `{example}` → `{result}`\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
