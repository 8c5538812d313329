//! Lexer and parser: text → [`Expr`] tree with source spans.
//!
//! The grammar is Entra Connect's: function calls, `[attribute]`, `%Parameter%`, `"strings"`
//! (a doubled `""` is a quote), decimal and `&H` hex numbers, `True`/`False`, `$variables`, and
//! the operators `& + - * = <> < <= > >= && ||`. As Entra documents, operators **have equal
//! priority and evaluate left to right** (`2+5*3` is `(2+5)*3`), except `&&` and `||`, which
//! bind loosest (and are equal among themselves). Entra's own out-of-box rules depend on that:
//! `IsPresent([a]) = False || [b] = "x"` must mean `(IsPresent([a]) = False) || ([b] = "x")`.
//!
//! The parser knows nothing of functions or attributes; [`crate::check`] does.

use std::fmt;

/// A byte range in the expression text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// A 1-based line and column (in characters), for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCol {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl fmt::Display for LineCol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl Span {
    /// Where the span starts in `text`.
    pub fn line_col(&self, text: &str) -> LineCol {
        let before = &text[..self.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |tail| tail.chars().count()) + 1;
        LineCol { line, column }
    }
}

/// A binary operator. All have the same priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `&`: string concatenation.
    Concat,
    /// `+`.
    Add,
    /// `-`.
    Sub,
    /// `*`.
    Mul,
    /// `=`.
    Eq,
    /// `<>`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `&&`.
    And,
    /// `||`.
    Or,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Concat => "&",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Eq => "=",
            BinOp::Ne => "<>",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }
}

/// A built-in constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constant {
    /// `NULL`: contributes nothing; a lower-precedence rule may contribute.
    Null,
    /// `AuthoritativeNull`: contributes nothing, and lower-precedence rules may not either.
    AuthoritativeNull,
    /// `IgnoreThisFlow`: contributes nothing and leaves the target value alone.
    IgnoreThisFlow,
    /// `CRLF`: a carriage return and line feed.
    Crlf,
}

/// An expression node.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `"text"`.
    Str(String, Span),
    /// `42`, `&HFF`.
    Num(i64, Span),
    /// `True`, `False`.
    Bool(bool, Span),
    /// `NULL`, `AuthoritativeNull`, `IgnoreThisFlow`, `CRLF`.
    Constant(Constant, Span),
    /// `[attribute]`.
    Attribute(String, Span),
    /// `%Parameter%`.
    Parameter(String, Span),
    /// `$item`, bound by `Select`, `Where` and `With`.
    Variable(String, Span),
    /// `Name(args…)`; `span` covers the name.
    Call {
        /// Function name, case-sensitive.
        name: String,
        /// Arguments.
        args: Vec<Expr>,
        /// The name's span.
        span: Span,
    },
    /// `left op right`.
    Binary {
        /// The operator.
        op: BinOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
        /// The operator's span.
        span: Span,
    },
    /// `-operand`.
    Negate(Box<Expr>, Span),
}

impl Expr {
    /// The node's own span (for calls and operators: the name or symbol).
    pub fn span(&self) -> Span {
        match self {
            Expr::Str(_, span)
            | Expr::Num(_, span)
            | Expr::Bool(_, span)
            | Expr::Constant(_, span)
            | Expr::Attribute(_, span)
            | Expr::Parameter(_, span)
            | Expr::Variable(_, span)
            | Expr::Negate(_, span)
            | Expr::Call { span, .. }
            | Expr::Binary { span, .. } => *span,
        }
    }
}

/// Why an expression does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Str(String),
    Num(i64),
    Ident(String),
    Attribute(String),
    Parameter(String),
    Variable(String),
    Op(BinOp),
    Minus,
    LParen,
    RParen,
    Comma,
}

/// Nesting deeper than this is rejected rather than risking the stack.
const MAX_DEPTH: usize = 200;

/// Parses an expression.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let tokens = lex(text)?;
    let mut parser = Parser { tokens, position: 0, text_len: text.len(), depth: 0 };
    let expr = parser.expr()?;
    match parser.tokens.get(parser.position) {
        None => Ok(expr),
        Some((token, span)) => Err(ParseError { message: format!("unexpected {} after the expression", describe(token)), span: *span }),
    }
}

fn lex(text: &str) -> Result<Vec<(Token, Span)>, ParseError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let single = |token| (token, Span { start, end: start + c.len_utf8() });
        match c {
            '(' | ')' | ',' | '+' | '*' | '=' => {
                chars.next();
                tokens.push(single(match c {
                    '(' => Token::LParen,
                    ')' => Token::RParen,
                    ',' => Token::Comma,
                    '+' => Token::Op(BinOp::Add),
                    '*' => Token::Op(BinOp::Mul),
                    _ => Token::Op(BinOp::Eq),
                }));
            }
            '-' => {
                chars.next();
                tokens.push(single(Token::Minus));
            }
            '<' | '>' => {
                chars.next();
                let next = chars.peek().map(|&(_, next)| next);
                let (op, len) = match (c, next) {
                    ('<', Some('>')) => (BinOp::Ne, 2),
                    ('<', Some('=')) => (BinOp::Le, 2),
                    ('>', Some('=')) => (BinOp::Ge, 2),
                    ('<', _) => (BinOp::Lt, 1),
                    _ => (BinOp::Gt, 1),
                };
                if len == 2 {
                    chars.next();
                }
                tokens.push((Token::Op(op), Span { start, end: start + len }));
            }
            '|' => {
                chars.next();
                if chars.next_if(|&(_, next)| next == '|').is_none() {
                    return Err(ParseError { message: "`|` must be `||`".into(), span: Span { start, end: start + 1 } });
                }
                tokens.push((Token::Op(BinOp::Or), Span { start, end: start + 2 }));
            }
            '&' => {
                chars.next();
                match chars.peek().map(|&(_, next)| next) {
                    Some('&') => {
                        chars.next();
                        tokens.push((Token::Op(BinOp::And), Span { start, end: start + 2 }));
                    }
                    Some('H' | 'h') => {
                        chars.next();
                        let mut digits = String::new();
                        while let Some((_, digit)) = chars.next_if(|&(_, d)| d.is_ascii_hexdigit()) {
                            digits.push(digit);
                        }
                        let end = start + 2 + digits.len();
                        let value = u64::from_str_radix(&digits, 16).map_err(|_| ParseError {
                            message: format!("`&H{digits}` is not a hex number that fits 64 bits"),
                            span: Span { start, end },
                        })?;
                        tokens.push((Token::Num(value as i64), Span { start, end }));
                    }
                    _ => tokens.push(single(Token::Op(BinOp::Concat))),
                }
            }
            '"' => {
                chars.next();
                let mut value = String::new();
                let end = loop {
                    match chars.next() {
                        Some((offset, '"')) => {
                            if chars.next_if(|&(_, next)| next == '"').is_some() {
                                value.push('"');
                            } else {
                                break offset + 1;
                            }
                        }
                        Some((_, other)) => value.push(other),
                        None => {
                            return Err(ParseError {
                                message: "string is not closed with `\"`".into(),
                                span: Span { start, end: text.len() },
                            });
                        }
                    }
                };
                tokens.push((Token::Str(value), Span { start, end }));
            }
            '[' | '%' => {
                chars.next();
                let close = if c == '[' { ']' } else { '%' };
                let mut name = String::new();
                let end = loop {
                    match chars.next() {
                        Some((offset, found)) if found == close => break offset + 1,
                        Some((_, '\n')) => {
                            return Err(ParseError {
                                message: format!("`{c}` is not closed with `{close}` on its line"),
                                span: Span { start, end: start + 1 },
                            });
                        }
                        Some((_, found)) => name.push(found),
                        None => {
                            return Err(ParseError {
                                message: format!("`{c}` is not closed with `{close}`"),
                                span: Span { start, end: start + 1 },
                            });
                        }
                    }
                };
                let name = name.trim().to_string();
                if name.is_empty() {
                    return Err(ParseError { message: format!("empty `{c}{close}`"), span: Span { start, end } });
                }
                tokens.push((if c == '[' { Token::Attribute(name) } else { Token::Parameter(name) }, Span { start, end }));
            }
            '0'..='9' => {
                let mut digits = String::new();
                while let Some((_, digit)) = chars.next_if(|&(_, d)| d.is_ascii_digit()) {
                    digits.push(digit);
                }
                let end = start + digits.len();
                let value = digits
                    .parse::<i64>()
                    .map_err(|_| ParseError { message: format!("`{digits}` does not fit a 64-bit number"), span: Span { start, end } })?;
                tokens.push((Token::Num(value), Span { start, end }));
            }
            '$' => {
                chars.next();
                let name = take_ident(&mut chars);
                let end = start + 1 + name.len();
                if name.is_empty() {
                    return Err(ParseError { message: "`$` must start a variable name".into(), span: Span { start, end: start + 1 } });
                }
                tokens.push((Token::Variable(name), Span { start, end }));
            }
            c if c.is_alphabetic() || c == '_' => {
                let name = take_ident(&mut chars);
                let end = start + name.len();
                tokens.push((Token::Ident(name), Span { start, end }));
            }
            other => {
                return Err(ParseError {
                    message: format!("unexpected character `{other}`"),
                    span: Span { start, end: start + other.len_utf8() },
                });
            }
        }
    }
    Ok(tokens)
}

fn take_ident(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> String {
    let mut name = String::new();
    while let Some((_, c)) = chars.next_if(|&(_, c)| c.is_alphanumeric() || c == '_' || c == '.') {
        name.push(c);
    }
    name
}

fn describe(token: &Token) -> String {
    match token {
        Token::Str(value) => format!("string \"{value}\""),
        Token::Num(value) => format!("number {value}"),
        Token::Ident(name) => format!("`{name}`"),
        Token::Attribute(name) => format!("attribute [{name}]"),
        Token::Parameter(name) => format!("parameter %{name}%"),
        Token::Variable(name) => format!("variable ${name}"),
        Token::Op(op) => format!("operator `{}`", op.symbol()),
        Token::Minus => "operator `-`".into(),
        Token::LParen => "`(`".into(),
        Token::RParen => "`)`".into(),
        Token::Comma => "`,`".into(),
    }
}

struct Parser {
    tokens: Vec<(Token, Span)>,
    position: usize,
    text_len: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&(Token, Span)> {
        self.tokens.get(self.position)
    }

    fn end_span(&self) -> Span {
        Span { start: self.text_len, end: self.text_len }
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let span = self.peek().map_or(self.end_span(), |(_, span)| *span);
            return Err(ParseError { message: format!("expression nests deeper than {MAX_DEPTH} levels"), span });
        }
        // `&&` and `||` bind loosest; everything else shares one priority, left to right.
        let entered = self.depth;
        let mut left = self.chain()?;
        while let Some((Token::Op(op @ (BinOp::And | BinOp::Or)), span)) = self.peek() {
            let (op, span) = (*op, *span);
            self.deeper(span)?;
            self.position += 1;
            let right = self.chain()?;
            left = Expr::Binary { op, left: Box::new(left), right: Box::new(right), span };
        }
        self.depth = entered - 1;
        Ok(left)
    }

    /// One more level of the tree being built: a chain of operators builds a tree as deep as it
    /// is long, and checking and evaluating walk it recursively, so a chain counts toward the
    /// same limit as nesting.
    fn deeper(&mut self, span: Span) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError {
                message: format!("expression nests deeper than {MAX_DEPTH} levels (nesting and chained operators)"),
                span,
            });
        }
        Ok(())
    }

    /// Operands joined by the non-logical operators, all of equal priority, left to right.
    fn chain(&mut self) -> Result<Expr, ParseError> {
        let entered = self.depth;
        let mut left = self.operand()?;
        loop {
            let op = match self.peek() {
                Some((Token::Op(op), span)) if !matches!(op, BinOp::And | BinOp::Or) => (*op, *span),
                Some((Token::Minus, span)) => (BinOp::Sub, *span),
                _ => break,
            };
            self.deeper(op.1)?;
            self.position += 1;
            let right = self.operand()?;
            left = Expr::Binary { op: op.0, left: Box::new(left), right: Box::new(right), span: op.1 };
        }
        self.depth = entered;
        Ok(left)
    }

    fn operand(&mut self) -> Result<Expr, ParseError> {
        let Some((token, span)) = self.tokens.get(self.position).cloned() else {
            return Err(ParseError { message: "the expression ends where a value was expected".into(), span: self.end_span() });
        };
        self.position += 1;
        Ok(match token {
            Token::Str(value) => Expr::Str(value, span),
            Token::Num(value) => Expr::Num(value, span),
            Token::Attribute(name) => Expr::Attribute(name, span),
            Token::Parameter(name) => Expr::Parameter(name, span),
            Token::Variable(name) => Expr::Variable(name, span),
            Token::Minus => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(ParseError { message: format!("expression nests deeper than {MAX_DEPTH} levels"), span });
                }
                let operand = self.operand()?;
                self.depth -= 1;
                match operand {
                    Expr::Num(value, num_span) => Expr::Num(value.wrapping_neg(), Span { start: span.start, end: num_span.end }),
                    other => Expr::Negate(Box::new(other), span),
                }
            }
            Token::LParen => {
                let inner = self.expr()?;
                self.expect_close(span)?;
                inner
            }
            Token::Ident(name) => {
                if let Some((Token::LParen, open)) = self.peek() {
                    let open = *open;
                    self.position += 1;
                    let args = self.arguments(open)?;
                    Expr::Call { name, args, span }
                } else {
                    match name.as_str() {
                        "True" => Expr::Bool(true, span),
                        "False" => Expr::Bool(false, span),
                        "NULL" => Expr::Constant(Constant::Null, span),
                        "AuthoritativeNull" => Expr::Constant(Constant::AuthoritativeNull, span),
                        "IgnoreThisFlow" => Expr::Constant(Constant::IgnoreThisFlow, span),
                        "CRLF" => Expr::Constant(Constant::Crlf, span),
                        _ => {
                            return Err(ParseError {
                                message: format!(
                                    "`{name}` is not a value: write an attribute as [{name}], a parameter as %{name}%, or call {name}(…)"
                                ),
                                span,
                            });
                        }
                    }
                }
            }
            other => {
                return Err(ParseError { message: format!("expected a value, found {}", describe(&other)), span });
            }
        })
    }

    fn arguments(&mut self, open: Span) -> Result<Vec<Expr>, ParseError> {
        let mut args = Vec::new();
        if matches!(self.peek(), Some((Token::RParen, _))) {
            self.position += 1;
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            match self.peek() {
                Some((Token::Comma, _)) => self.position += 1,
                Some((Token::RParen, _)) => {
                    self.position += 1;
                    return Ok(args);
                }
                Some((token, span)) => {
                    return Err(ParseError {
                        message: format!("expected `,` or `)` in the argument list, found {}", describe(token)),
                        span: *span,
                    });
                }
                None => {
                    return Err(ParseError { message: "the argument list is not closed with `)`".into(), span: open });
                }
            }
        }
    }

    fn expect_close(&mut self, open: Span) -> Result<(), ParseError> {
        match self.peek() {
            Some((Token::RParen, _)) => {
                self.position += 1;
                Ok(())
            }
            Some((token, span)) => Err(ParseError { message: format!("expected `)`, found {}", describe(token)), span: *span }),
            None => Err(ParseError { message: "`(` is not closed with `)`".into(), span: open }),
        }
    }
}

/// Renders an expression back to text, fully parenthesised, for diagnostics and tests.
pub fn render(expr: &Expr) -> String {
    match expr {
        Expr::Str(value, _) => format!("\"{}\"", value.replace('"', "\"\"")),
        Expr::Num(value, _) => value.to_string(),
        Expr::Bool(value, _) => if *value { "True" } else { "False" }.to_string(),
        Expr::Constant(constant, _) => match constant {
            Constant::Null => "NULL",
            Constant::AuthoritativeNull => "AuthoritativeNull",
            Constant::IgnoreThisFlow => "IgnoreThisFlow",
            Constant::Crlf => "CRLF",
        }
        .to_string(),
        Expr::Attribute(name, _) => format!("[{name}]"),
        Expr::Parameter(name, _) => format!("%{name}%"),
        Expr::Variable(name, _) => format!("${name}"),
        Expr::Call { name, args, .. } => format!("{name}({})", args.iter().map(render).collect::<Vec<_>>().join(", ")),
        Expr::Binary { op, left, right, .. } => format!("({} {} {})", render(left), op.symbol(), render(right)),
        Expr::Negate(operand, _) => format!("-({})", render(operand)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(text: &str) -> String {
        match parse(text) {
            Ok(expr) => render(&expr),
            Err(err) => format!("error at {}: {}", err.span.line_col(text), err.message),
        }
    }

    #[test]
    fn operators_have_equal_priority_left_to_right() {
        assert_eq!(shape("2*5+3"), "((2 * 5) + 3)");
        assert_eq!(shape("2+5*3"), "((2 + 5) * 3)");
        assert_eq!(shape("2*(5+3)"), "(2 * (5 + 3))");
        // No precedence at all: this is not (a = 1) || (b <> "x").
        // Logical operators bind loosest, and are equal among themselves.
        assert_eq!(shape("[a] = 1 || [b] <> \"x\" && True"), "((([a] = 1) || ([b] <> \"x\")) && True)");
        assert_eq!(shape("1 + 1 = 2 && 2 * 3 + 1 = 7"), "(((1 + 1) = 2) && (((2 * 3) + 1) = 7))");
        assert_eq!(shape("1 - 2 - 3"), "((1 - 2) - 3)");
    }

    #[test]
    fn literals_and_names() {
        assert_eq!(shape("&HFF + &h10"), "(255 + 16)");
        assert_eq!(shape("-5 + -[x]"), "(-5 + -([x]))");
        assert_eq!(shape(r#""say ""hi""""#), r#""say ""hi""""#);
        assert_eq!(shape("IIF(IsPresent([mail]),[mail],NULL)"), "IIF(IsPresent([mail]), [mail], NULL)");
        assert_eq!(shape("%Domain.Netbios% & \"\\\" & [sAMAccountName]"), "((%Domain.Netbios% & \"\\\") & [sAMAccountName])");
        assert_eq!(shape("Select($item, [proxyAddresses], LCase($item))"), "Select($item, [proxyAddresses], LCase($item))");
        assert_eq!(shape("[ms-DS-ConsistencyGuid]"), "[ms-DS-ConsistencyGuid]");
        assert_eq!(shape("Now()"), "Now()");
        assert_eq!(shape("&HFFFFFFFFFFFFFFFF"), "-1");
    }

    #[test]
    fn errors_point_at_line_and_column() {
        assert_eq!(shape("Trim([a]"), "error at 1:5: the argument list is not closed with `)`");
        assert_eq!(shape("\"open"), "error at 1:1: string is not closed with `\"`");
        assert_eq!(shape("Left([a],\n  2) mail"), "error at 2:6: unexpected `mail` after the expression");
        assert_eq!(shape("1 +"), "error at 1:4: the expression ends where a value was expected");
        assert_eq!(
            shape("mail"),
            "error at 1:1: `mail` is not a value: write an attribute as [mail], a parameter as %mail%, or call mail(…)"
        );
        assert_eq!(shape("[]"), "error at 1:1: empty `[]`");
        assert_eq!(shape("1 | 2"), "error at 1:3: `|` must be `||`");
        assert_eq!(shape("F(1 2)"), "error at 1:5: expected `,` or `)` in the argument list, found number 2");
        assert_eq!(shape("99999999999999999999"), "error at 1:1: `99999999999999999999` does not fit a 64-bit number");
        assert_eq!(shape("é ~"), "error at 1:3: unexpected character `~`");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(shape(&deep).contains("nests deeper than 200"));
        let negs = format!("{}1", "-".repeat(10_000));
        assert!(parse(&negs).is_err());
    }
}
