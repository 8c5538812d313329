//! Graph's `$filter`, the subset directory clients use: `eq`, `ne`, `ge`, `le` comparisons,
//! `startswith(prop, 'text')`, `prop/any(x: x eq 'text')` (or `startswith(x, 'text')`) on
//! multi-valued properties, `and`, `or`, `not` and parentheses. Strings compare without regard
//! to case, as the directory does.
//!
//! Parsed into a tree checked against the resource's properties before anything runs, so an
//! unknown property or a malformed expression is a 400 naming where it went wrong, and the
//! text never reaches SQL (no injection).

use serde_json::{Map, Value};

/// A parse error: what and at which character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid filter clause at character {at}: {message}")]
pub struct FilterError {
    /// 0-based character offset.
    pub at: usize,
    /// What was wrong.
    pub message: String,
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `'text'`.
    Str(String),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// A number.
    Num(f64),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `eq`.
    Eq,
    /// `ne`.
    Ne,
    /// `ge`.
    Ge,
    /// `le`.
    Le,
}

/// A filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `prop op literal`.
    Compare(String, Op, Literal),
    /// `startswith(prop, 'text')`.
    StartsWith(String, String),
    /// `prop/any(x: x eq 'text')` or `prop/any(x: startswith(x, 'text'))`.
    Any(String, Box<AnyTest>),
    /// `a and b`.
    And(Box<Filter>, Box<Filter>),
    /// `a or b`.
    Or(Box<Filter>, Box<Filter>),
    /// `not a`.
    Not(Box<Filter>),
}

/// The test inside `any(...)`.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyTest {
    /// `x eq 'text'`.
    Eq(String),
    /// `startswith(x, 'text')`.
    StartsWith(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Num(f64),
    Open,
    Close,
    Comma,
    Slash,
    Colon,
}

/// Longest filter accepted (Graph's URL limits are of this order).
const MAX_LEN: usize = 4096;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 32;
/// Most `and`/`or` clauses in one filter: each builds a level of the tree that matching walks
/// recursively, so a long chain must not deepen it without bound.
const MAX_CLAUSES: usize = 100;

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            ' ' | '\t' => {
                i += 1;
                continue;
            }
            '(' => tokens.push((start, Token::Open)),
            ')' => tokens.push((start, Token::Close)),
            ',' => tokens.push((start, Token::Comma)),
            '/' => tokens.push((start, Token::Slash)),
            ':' => tokens.push((start, Token::Colon)),
            '\'' => {
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(FilterError { at: start, message: "the string is not closed with '".into() }),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            value.push('\'');
                            i += 2;
                        }
                        Some('\'') => break,
                        Some(other) => {
                            value.push(*other);
                            i += 1;
                        }
                    }
                }
                tokens.push((start, Token::Str(value)));
            }
            c if c.is_ascii_digit() || c == '-' => {
                while i + 1 < chars.len() && (chars[i + 1].is_ascii_digit() || chars[i + 1] == '.') {
                    i += 1;
                }
                let text: String = chars[start..=i].iter().collect();
                let number = text.parse().map_err(|_| FilterError { at: start, message: format!("{text:?} is not a number") })?;
                tokens.push((start, Token::Num(number)));
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == '@' => {
                while i + 1 < chars.len() && (chars[i + 1].is_ascii_alphanumeric() || chars[i + 1] == '_' || chars[i + 1] == '.') {
                    i += 1;
                }
                tokens.push((start, Token::Word(chars[start..=i].iter().collect())));
            }
            other => return Err(FilterError { at: start, message: format!("unexpected character {other:?}") }),
        }
        i += 1;
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    at: usize,
    end: usize,
    known: &'a dyn Fn(&str) -> Option<bool>,
    /// `and`/`or` clauses joined so far.
    clauses: usize,
}

/// Parses `text`; `known(name)` says whether a property exists (`Some(true)` when multi-valued).
pub fn parse(text: &str, known: &dyn Fn(&str) -> Option<bool>) -> Result<Filter, FilterError> {
    if text.len() > MAX_LEN {
        return Err(FilterError { at: MAX_LEN, message: format!("the filter is longer than {MAX_LEN} characters") });
    }
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, at: 0, end: text.chars().count(), known, clauses: 0 };
    let filter = parser.or(0)?;
    if let Some((at, token)) = parser.tokens.get(parser.at) {
        return Err(FilterError { at: *at, message: format!("unexpected {token:?} after a complete expression") });
    }
    Ok(filter)
}

impl Parser<'_> {
    fn position(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |(at, _)| *at)
    }

    fn error(&self, message: impl Into<String>) -> FilterError {
        FilterError { at: self.position(), message: message.into() }
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).map(|(_, token)| token.clone());
        self.at += 1;
        token
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some((_, Token::Word(found))) if found.eq_ignore_ascii_case(word))
    }

    fn expect(&mut self, wanted: Token, what: &str) -> Result<(), FilterError> {
        match self.tokens.get(self.at) {
            Some((_, found)) if *found == wanted => {
                self.at += 1;
                Ok(())
            }
            _ => Err(self.error(format!("expected {what}"))),
        }
    }

    fn another_clause(&mut self) -> Result<(), FilterError> {
        self.clauses += 1;
        if self.clauses > MAX_CLAUSES {
            return Err(self.error(format!("the filter joins more than {MAX_CLAUSES} clauses")));
        }
        Ok(())
    }

    fn or(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.and(depth)?;
        while self.peek_word("or") {
            self.another_clause()?;
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and(depth)?));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.unary(depth)?;
        while self.peek_word("and") {
            self.another_clause()?;
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary(depth)?));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Filter, FilterError> {
        if depth > MAX_DEPTH {
            return Err(self.error("the filter nests too deeply"));
        }
        if self.peek_word("not") {
            self.at += 1;
            return Ok(Filter::Not(Box::new(self.unary(depth + 1)?)));
        }
        if matches!(self.tokens.get(self.at), Some((_, Token::Open))) {
            self.at += 1;
            let inner = self.or(depth + 1)?;
            self.expect(Token::Close, "')'")?;
            return Ok(inner);
        }
        if self.peek_word("startswith") {
            self.at += 1;
            self.expect(Token::Open, "'(' after startswith")?;
            let property = self.property(false)?;
            self.expect(Token::Comma, "','")?;
            let prefix = self.string()?;
            self.expect(Token::Close, "')'")?;
            return Ok(Filter::StartsWith(property, prefix));
        }
        let property_at = self.position();
        let property = self.property(true)?;
        if matches!(self.tokens.get(self.at), Some((_, Token::Slash))) {
            return self.any(property);
        }
        if (self.known)(&property) == Some(true) {
            return Err(FilterError { at: property_at, message: format!("'{property}' is multi-valued; use {property}/any(...)") });
        }
        let op_at = self.position();
        let op = match self.next() {
            Some(Token::Word(op)) => match op.to_ascii_lowercase().as_str() {
                "eq" => Op::Eq,
                "ne" => Op::Ne,
                "ge" => Op::Ge,
                "le" => Op::Le,
                other => {
                    return Err(FilterError { at: op_at, message: format!("unsupported operator {other:?} (eq, ne, ge, le)") });
                }
            },
            _ => return Err(self.error("expected an operator (eq, ne, ge, le)")),
        };
        let literal = match self.next() {
            Some(Token::Str(text)) => Literal::Str(text),
            Some(Token::Num(number)) => Literal::Num(number),
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("false") => Literal::Bool(false),
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("null") => Literal::Null,
            _ => return Err(self.error("expected a value ('text', a number, true, false or null)")),
        };
        Ok(Filter::Compare(property, op, literal))
    }

    /// `/any(x: x eq 'v')` or `/any(x: startswith(x, 'v'))` after a multi-valued property.
    fn any(&mut self, property: String) -> Result<Filter, FilterError> {
        if (self.known)(&property) != Some(true) {
            return Err(self.error(format!("'{property}' is not multi-valued; any() needs a collection")));
        }
        self.at += 1;
        match self.next() {
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("any") => {}
            _ => return Err(self.error("expected any( after '/'")),
        }
        self.expect(Token::Open, "'('")?;
        let variable = match self.next() {
            Some(Token::Word(name)) => name,
            _ => return Err(self.error("expected a range variable")),
        };
        self.expect(Token::Colon, "':'")?;
        let test = if self.peek_word("startswith") {
            self.at += 1;
            self.expect(Token::Open, "'('")?;
            self.variable(&variable)?;
            self.expect(Token::Comma, "','")?;
            AnyTest::StartsWith(self.string()?)
        } else {
            self.variable(&variable)?;
            match self.next() {
                Some(Token::Word(op)) if op.eq_ignore_ascii_case("eq") => {}
                _ => return Err(self.error("expected eq")),
            }
            AnyTest::Eq(self.string()?)
        };
        if matches!(test, AnyTest::StartsWith(_)) {
            self.expect(Token::Close, "')'")?;
        }
        self.expect(Token::Close, "')'")?;
        Ok(Filter::Any(property, Box::new(test)))
    }

    fn variable(&mut self, name: &str) -> Result<(), FilterError> {
        match self.next() {
            Some(Token::Word(found)) if found == name => Ok(()),
            _ => Err(self.error(format!("expected the range variable {name}"))),
        }
    }

    fn property(&mut self, allow_multi: bool) -> Result<String, FilterError> {
        let at = self.position();
        match self.next() {
            Some(Token::Word(name)) => match (self.known)(&name) {
                None => Err(FilterError { at, message: format!("Could not find a property named '{name}'") }),
                Some(true) if !allow_multi => Err(FilterError { at, message: format!("'{name}' is multi-valued; use {name}/any(...)") }),
                Some(_) => Ok(name),
            },
            _ => Err(FilterError { at, message: "expected a property name".into() }),
        }
    }

    fn string(&mut self) -> Result<String, FilterError> {
        match self.next() {
            Some(Token::Str(text)) => Ok(text),
            _ => Err(self.error("expected a 'quoted string'")),
        }
    }
}

impl Filter {
    /// Whether `object` (a Graph document) satisfies the filter.
    pub fn matches(&self, object: &Map<String, Value>) -> bool {
        match self {
            Filter::And(a, b) => a.matches(object) && b.matches(object),
            Filter::Or(a, b) => a.matches(object) || b.matches(object),
            Filter::Not(a) => !a.matches(object),
            Filter::StartsWith(property, prefix) => {
                object.get(property).and_then(Value::as_str).is_some_and(|value| value.to_lowercase().starts_with(&prefix.to_lowercase()))
            }
            Filter::Any(property, test) => object.get(property).and_then(Value::as_array).is_some_and(|values| {
                values.iter().filter_map(Value::as_str).any(|value| match test.as_ref() {
                    AnyTest::Eq(wanted) => value.eq_ignore_ascii_case(wanted) || value.to_lowercase() == wanted.to_lowercase(),
                    AnyTest::StartsWith(prefix) => value.to_lowercase().starts_with(&prefix.to_lowercase()),
                })
            }),
            Filter::Compare(property, op, literal) => {
                let value = object.get(property).unwrap_or(&Value::Null);
                let ordering = compare(value, literal);
                match op {
                    Op::Eq => ordering == Some(std::cmp::Ordering::Equal),
                    Op::Ne => ordering != Some(std::cmp::Ordering::Equal),
                    Op::Ge => matches!(ordering, Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)),
                    Op::Le => matches!(ordering, Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)),
                }
            }
        }
    }
}

fn compare(value: &Value, literal: &Literal) -> Option<std::cmp::Ordering> {
    match (value, literal) {
        (Value::Null, Literal::Null) => Some(std::cmp::Ordering::Equal),
        (Value::String(text), Literal::Str(wanted)) => Some(text.to_lowercase().cmp(&wanted.to_lowercase())),
        (Value::Bool(flag), Literal::Bool(wanted)) => Some(flag.cmp(wanted)),
        (Value::Number(number), Literal::Num(wanted)) => number.as_f64()?.partial_cmp(wanted),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn known(name: &str) -> Option<bool> {
        match name {
            "displayName" | "mail" | "userPrincipalName" | "accountEnabled" | "onPremisesImmutableId" => Some(false),
            "proxyAddresses" => Some(true),
            _ => None,
        }
    }

    fn object() -> Map<String, Value> {
        match json!({"displayName": "Ann O'Neil", "mail": "Ann@Corp.Example", "accountEnabled": true, "onPremisesImmutableId": null,
                     "proxyAddresses": ["SMTP:ann@corp.example", "smtp:ann@mail.example"]})
        {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn evaluates_the_supported_forms() {
        let cases = [
            ("mail eq 'ann@corp.example'", true),
            ("displayName eq 'Ann O''Neil'", true),
            ("startswith(displayName, 'ann')", true),
            ("accountEnabled eq false", false),
            ("accountEnabled eq true and startswith(mail,'bob')", false),
            ("accountEnabled eq true or startswith(mail,'bob')", true),
            ("not (mail eq 'x')", true),
            ("onPremisesImmutableId eq null", true),
            ("proxyAddresses/any(x:x eq 'smtp:ann@mail.example')", true),
            ("proxyAddresses/any(p: startswith(p, 'SMTP:ann@corp'))", true),
            ("proxyAddresses/any(x:x eq 'nope')", false),
            ("displayName ge 'B'", false),
            ("displayName le 'B'", true),
        ];
        for (text, expected) in cases {
            let filter = parse(text, &known).unwrap_or_else(|err| panic!("{text}: {err}"));
            assert_eq!(filter.matches(&object()), expected, "{text}");
        }
    }

    #[test]
    fn long_chains_of_clauses_are_refused() {
        for joiner in [" or ", " and "] {
            let long = vec!["mail eq 'x'"; 150].join(joiner);
            let err = parse(&long, &known).expect_err(joiner).to_string();
            assert!(err.contains("more than 100 clauses"), "{err}");
        }
        assert!(parse(&vec!["mail eq 'x'"; 100].join(" or "), &known).is_ok(), "99 joins are fine");
    }

    #[test]
    fn errors_say_where() {
        let cases = [
            ("colour eq 'red'", 0, "Could not find a property named 'colour'"),
            ("mail eq", 7, "expected a value"),
            ("mail like 'a'", 5, "unsupported operator"),
            ("mail eq 'a", 8, "not closed"),
            ("(mail eq 'a'", 12, "expected ')'"),
            ("mail eq 'a' mail", 12, "unexpected"),
            ("proxyAddresses eq 'a'", 0, "multi-valued"),
            ("mail/any(x:x eq 'a')", 4, "not multi-valued"),
            ("mail eq 'a'; DROP TABLE objects", 11, "unexpected character"),
        ];
        for (text, at, message) in cases {
            let err = parse(text, &known).expect_err(text);
            assert_eq!(err.at, at, "{text}: {err}");
            assert!(err.message.contains(message), "{text}: {err}");
        }
        let deep = format!("{}mail eq 'a'{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep, &known).unwrap_err().message.contains("too deeply"));
    }

    proptest! {
        #[test]
        fn any_text_parses_or_errors_without_panicking(text in "\\PC{0,80}") {
            let _ = parse(&text, &known);
        }

        #[test]
        fn generated_filters_parse_and_evaluate(
            parts in prop::collection::vec((0..4usize, "[a-zA-Z@.' ]{0,12}", any::<bool>()), 1..6),
            joins in prop::collection::vec(any::<bool>(), 6),
        ) {
            let mut text = String::new();
            for (index, (form, value, negate)) in parts.iter().enumerate() {
                if index > 0 {
                    text.push_str(if joins[index] { " and " } else { " or " });
                }
                let quoted = value.replace('\'', "''");
                let clause = match form {
                    0 => format!("mail eq '{quoted}'"),
                    1 => format!("startswith(displayName, '{quoted}')"),
                    2 => format!("proxyAddresses/any(x: x eq '{quoted}')"),
                    _ => format!("accountEnabled eq {negate}"),
                };
                if *negate { text.push_str(&format!("not ({clause})")) } else { text.push_str(&clause) }
            }
            let filter = parse(&text, &known);
            prop_assert!(filter.is_ok(), "{}: {:?}", text, filter);
            if let Ok(filter) = filter {
                let _ = filter.matches(&object());
            }
        }
    }
}
