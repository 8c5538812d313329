//! Distinguished names (RFC 4514): parse, compare, escape.
//!
//! Comparison is case-insensitive on attribute types and values (the directory servers we
//! talk to compare DNs that way for the attributes used in naming). Values keep their case for display.

use std::fmt;

/// One relative distinguished name: `type=value` (multi-valued RDNs keep each pair in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rdn {
    /// `(attribute type, unescaped value)` pairs; usually one.
    pub pairs: Vec<(String, String)>,
}

/// A parsed distinguished name, most specific RDN first.
#[derive(Debug, Clone, Eq)]
pub struct Dn {
    rdns: Vec<Rdn>,
}

/// Why a string is not a distinguished name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnError {
    /// An RDN has no `=`.
    #[error("RDN {index} (`{text}`) has no '='")]
    MissingEquals {
        /// 0-based RDN position.
        index: usize,
        /// The RDN text.
        text: String,
    },
    /// An attribute type is empty or has characters other than letters, digits, '-' and '.'.
    #[error("RDN {index} has a bad attribute type `{attr_type}`")]
    BadType {
        /// 0-based RDN position.
        index: usize,
        /// The type as written.
        attr_type: String,
    },
    /// A `\` escape is cut off or not two hex digits / a special character.
    #[error("bad escape at byte {offset}")]
    BadEscape {
        /// Byte offset in the input.
        offset: usize,
    },
    /// Escaped bytes do not form UTF-8.
    #[error("escaped value of RDN {index} is not UTF-8")]
    NotUtf8 {
        /// 0-based RDN position.
        index: usize,
    },
}

impl Dn {
    /// The empty DN (the root DSE).
    pub fn root() -> Self {
        Dn { rdns: Vec::new() }
    }

    /// Parses an RFC 4514 string.
    pub fn parse(text: &str) -> Result<Self, DnError> {
        if text.trim().is_empty() {
            return Ok(Dn::root());
        }
        let mut rdns = Vec::new();
        for (index, (start, rdn_text)) in split_unescaped(text, &[',', ';']).into_iter().enumerate() {
            let mut pairs = Vec::new();
            for (pair_start, pair) in split_unescaped(rdn_text, &['+']) {
                let offset = start + pair_start;
                let Some(eq) = pair.find('=') else {
                    return Err(DnError::MissingEquals { index, text: rdn_text.to_string() });
                };
                let attr_type = pair[..eq].trim();
                if attr_type.is_empty() || !attr_type.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                    return Err(DnError::BadType { index, attr_type: attr_type.to_string() });
                }
                let value = unescape(&pair[eq + 1..], offset + eq + 1, index)?;
                pairs.push((attr_type.to_string(), value));
            }
            rdns.push(Rdn { pairs });
        }
        Ok(Dn { rdns })
    }

    /// The RDNs, most specific first.
    pub fn rdns(&self) -> &[Rdn] {
        &self.rdns
    }

    /// The parent DN, or `None` for the root.
    pub fn parent(&self) -> Option<Dn> {
        (!self.rdns.is_empty()).then(|| Dn { rdns: self.rdns[1..].to_vec() })
    }

    /// True when `self` is `ancestor` or lies under it.
    pub fn is_within(&self, ancestor: &Dn) -> bool {
        self.rdns.len() >= ancestor.rdns.len()
            && self.rdns[self.rdns.len() - ancestor.rdns.len()..].iter().zip(&ancestor.rdns).all(|(ours, theirs)| rdn_eq(ours, theirs))
    }
}

impl PartialEq for Dn {
    fn eq(&self, other: &Self) -> bool {
        self.rdns.len() == other.rdns.len() && self.rdns.iter().zip(&other.rdns).all(|(a, b)| rdn_eq(a, b))
    }
}

fn rdn_eq(a: &Rdn, b: &Rdn) -> bool {
    a.pairs.len() == b.pairs.len()
        && a.pairs.iter().zip(&b.pairs).all(|((ta, va), (tb, vb))| ta.eq_ignore_ascii_case(tb) && va.to_lowercase() == vb.to_lowercase())
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, rdn) in self.rdns.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            for (pair_index, (attr_type, value)) in rdn.pairs.iter().enumerate() {
                if pair_index > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{attr_type}={}", escape_value(value))?;
            }
        }
        Ok(())
    }
}

/// Escapes an attribute value for use in a DN (RFC 4514 section 2.4).
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if index == 0 => out.push_str("\\#"),
            ' ' if index == 0 || index == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
    out
}

/// Splits at separators that are not escaped; returns each part with its byte offset.
fn split_unescaped<'a>(text: &'a str, separators: &[char]) -> Vec<(usize, &'a str)> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (offset, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if separators.contains(&c) {
            parts.push((start, &text[start..offset]));
            start = offset + 1;
        }
    }
    parts.push((start, &text[start..]));
    parts
}

fn unescape(raw: &str, base_offset: usize, index: usize) -> Result<String, DnError> {
    // Leading spaces are insignificant; trailing ones are too unless escaped.
    let trimmed_start = raw.len() - raw.trim_start().len();
    let raw = &raw[trimmed_start..];
    let base_offset = base_offset + trimmed_start;
    let mut bytes = Vec::with_capacity(raw.len());
    let mut chars = raw.char_indices().peekable();
    let mut significant_len = 0;
    while let Some((offset, c)) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            if c != ' ' {
                significant_len = bytes.len();
            }
            continue;
        }
        let Some((_, first)) = chars.next() else {
            return Err(DnError::BadEscape { offset: base_offset + offset });
        };
        if first.is_ascii_hexdigit() {
            let second = chars.next().map(|(_, c)| c).filter(char::is_ascii_hexdigit);
            let Some(second) = second else {
                return Err(DnError::BadEscape { offset: base_offset + offset });
            };
            let hex = [first as u8, second as u8];
            let text = std::str::from_utf8(&hex).map_err(|_| DnError::BadEscape { offset: base_offset + offset })?;
            let byte = u8::from_str_radix(text, 16).map_err(|_| DnError::BadEscape { offset: base_offset + offset })?;
            bytes.push(byte);
        } else if " \"#+,;<=>\\".contains(first) {
            bytes.push(first as u8);
        } else {
            return Err(DnError::BadEscape { offset: base_offset + offset });
        }
        significant_len = bytes.len();
    }
    bytes.truncate(significant_len);
    String::from_utf8(bytes).map_err(|_| DnError::NotUtf8 { index })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escapes_and_round_trips() {
        let dn = Dn::parse(r"CN=Smith\, John+employeeNumber=7,OU=Sales\2BMarketing, DC=corp,DC=example").unwrap();
        assert_eq!(dn.rdns()[0].pairs, vec![("CN".into(), "Smith, John".into()), ("employeeNumber".into(), "7".into())]);
        assert_eq!(dn.rdns()[1].pairs[0].1, "Sales+Marketing");
        assert_eq!(dn.to_string(), r"CN=Smith\, John+employeeNumber=7,OU=Sales\+Marketing,DC=corp,DC=example");
        assert_eq!(Dn::parse(&dn.to_string()).unwrap(), dn);
    }

    #[test]
    fn compares_case_insensitively_and_knows_ancestry() {
        let user = Dn::parse("cn=Ann,ou=People,dc=Example,dc=Test").unwrap();
        let base = Dn::parse("DC=example,DC=test").unwrap();
        assert!(user.is_within(&base));
        assert!(!base.is_within(&user));
        assert_eq!(user.parent().unwrap(), Dn::parse("OU=people,DC=example,DC=test").unwrap());
        assert_ne!(user, base);
    }

    #[test]
    fn multibyte_hex_escapes_become_utf8() {
        let dn = Dn::parse(r"CN=M\C3\BCller,DC=test").unwrap();
        assert_eq!(dn.rdns()[0].pairs[0].1, "Müller");
    }

    #[test]
    fn bad_input_names_the_problem() {
        assert_eq!(Dn::parse("CN=a,nonsense").unwrap_err(), DnError::MissingEquals { index: 1, text: "nonsense".into() });
        assert!(matches!(Dn::parse("C N=a").unwrap_err(), DnError::BadType { index: 0, .. }));
        assert_eq!(Dn::parse(r"CN=a\").unwrap_err(), DnError::BadEscape { offset: 4 });
        assert_eq!(Dn::parse(r"CN=a\zz").unwrap_err(), DnError::BadEscape { offset: 4 });
        assert_eq!(Dn::parse(r"CN=\FF").unwrap_err(), DnError::NotUtf8 { index: 0 });
    }

    #[test]
    fn escape_handles_leading_trailing_and_specials() {
        assert_eq!(escape_value("#a "), r"\#a\ ");
        assert_eq!(escape_value("a=b;c"), r"a\=b\;c");
        let dn = Dn::parse(&format!("CN={},DC=x", escape_value(" padded, value "))).unwrap();
        assert_eq!(dn.rdns()[0].pairs[0].1, " padded, value ");
    }

    /// Every value survives escape → parse, for a spread of awkward characters (a small exhaustive property).
    #[test]
    fn escape_then_parse_is_identity() {
        let alphabet = [' ', '#', ',', '+', '"', '\\', '<', '>', ';', '=', 'a', 'Z', 'é', '\0'];
        for first in alphabet {
            for second in alphabet {
                for third in alphabet {
                    let value: String = [first, second, third].iter().collect();
                    let dn = Dn::parse(&format!("CN={}", escape_value(&value))).unwrap();
                    assert_eq!(dn.rdns()[0].pairs[0].1, value, "value {value:?}");
                }
            }
        }
    }
}
