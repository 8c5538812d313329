//! Attribute syntaxes: how a value on the wire becomes a typed [`AttrValue`] and back.
//!
//! Active Directory's schema is read from the directory (`attributeSyntax` of every
//! `attributeSchema` object), so every attribute gets its declared type; a generic LDAP server
//! uses a built-in table of the common attributes. A value that does not fit its declared syntax
//! is kept as text, never dropped.

use std::collections::HashMap;

use model::{AttrValue, Attributes};

/// How an attribute's values are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// Text (the default).
    String,
    /// A 64-bit integer (AD Integer and Large Integer, LDAP INTEGER).
    Integer,
    /// `TRUE` / `FALSE`.
    Boolean,
    /// Bytes kept exact (octet strings, SIDs, GUIDs).
    Binary,
    /// A DN referring to another object.
    Dn,
}

/// Attribute syntaxes by (case-insensitive) name.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    syntaxes: HashMap<String, Syntax>,
    /// Attributes never imported (lower case): not replicated, constructed, back-links, and
    /// security descriptors. They differ per DC or change without a replicated change, so a
    /// delta could never keep them right.
    skipped: std::collections::HashSet<String>,
}

const BUILTIN: &[(&str, Syntax)] = &[
    ("objectGUID", Syntax::Binary),
    ("objectSid", Syntax::Binary),
    ("mS-DS-ConsistencyGuid", Syntax::Binary),
    ("msExchMasterAccountSid", Syntax::Binary),
    ("msExchMailboxGuid", Syntax::Binary),
    ("sIDHistory", Syntax::Binary),
    ("thumbnailPhoto", Syntax::Binary),
    ("jpegPhoto", Syntax::Binary),
    ("userCertificate", Syntax::Binary),
    ("userSMIMECertificate", Syntax::Binary),
    ("member", Syntax::Dn),
    ("uniqueMember", Syntax::Dn),
    ("memberOf", Syntax::Dn),
    ("manager", Syntax::Dn),
    ("directReports", Syntax::Dn),
    ("managedBy", Syntax::Dn),
    ("owner", Syntax::Dn),
    ("seeAlso", Syntax::Dn),
    ("secretary", Syntax::Dn),
    ("roleOccupant", Syntax::Dn),
    ("userAccountControl", Syntax::Integer),
    ("groupType", Syntax::Integer),
    ("pwdLastSet", Syntax::Integer),
    ("accountExpires", Syntax::Integer),
    ("lockoutTime", Syntax::Integer),
    ("primaryGroupID", Syntax::Integer),
    ("sAMAccountType", Syntax::Integer),
    ("uSNChanged", Syntax::Integer),
    ("uidNumber", Syntax::Integer),
    ("gidNumber", Syntax::Integer),
    ("shadowLastChange", Syntax::Integer),
    ("shadowExpire", Syntax::Integer),
    ("uniqueIdentifier", Syntax::String),
    ("isDeleted", Syntax::Boolean),
    ("isCriticalSystemObject", Syntax::Boolean),
    ("showInAdvancedViewOnly", Syntax::Boolean),
    ("msExchHideFromAddressLists", Syntax::Boolean),
];

/// Password material never imported into a connector space, whoever may read it. (Password
/// hashes travel only through the password-hash-sync path, transformed.)
const SECRETS: &[&str] = &[
    "userPassword",
    "authPassword",
    "sambaNTPassword",
    "sambaLMPassword",
    "unicodePwd",
    "dBCSPwd",
    "supplementalCredentials",
    "krbPrincipalKey",
];

impl Schema {
    /// The built-in table (generic LDAP servers, and the fallback for anything AD did not say).
    pub fn builtin() -> Self {
        let mut schema = Schema::default();
        for (name, syntax) in BUILTIN {
            schema.set(name, *syntax);
        }
        for secret in SECRETS {
            schema.skip(secret);
        }
        schema
    }

    /// Declares `name`'s syntax.
    pub fn set(&mut self, name: &str, syntax: Syntax) {
        self.syntaxes.insert(name.to_ascii_lowercase(), syntax);
    }

    /// Declares an AD attribute from its `attributeSyntax` OID.
    pub fn set_ad(&mut self, name: &str, attribute_syntax: &str) {
        let syntax = match attribute_syntax {
            "2.5.5.1" => Syntax::Dn,
            "2.5.5.8" => Syntax::Boolean,
            "2.5.5.9" | "2.5.5.16" => Syntax::Integer,
            "2.5.5.10" | "2.5.5.17" => Syntax::Binary,
            _ => Syntax::String,
        };
        self.set(name, syntax);
    }

    /// Marks an AD attribute as not imported when its `systemFlags` say not replicated (0x1) or
    /// constructed (0x4), or its `linkID` is odd (a back-link such as `memberOf`).
    pub fn set_ad_flags(&mut self, name: &str, system_flags: i64, link_id: Option<i64>) {
        // objectGUID is flagged as not replicated (each object gets it once), but it is the anchor.
        if name.eq_ignore_ascii_case("objectGUID") {
            return;
        }
        if system_flags & 0x5 != 0 || link_id.is_some_and(|id| id % 2 == 1) {
            self.skipped.insert(name.to_ascii_lowercase());
        }
    }

    /// Marks an attribute as not imported.
    pub fn skip(&mut self, name: &str) {
        self.skipped.insert(name.to_ascii_lowercase());
    }

    /// True when `name` (or `name;range=…`) is imported.
    pub fn imported(&self, name: &str) -> bool {
        let base = name.split(';').next().unwrap_or(name);
        !self.skipped.contains(&base.to_ascii_lowercase())
    }

    /// `name`'s syntax; text when unknown.
    pub fn syntax(&self, name: &str) -> Syntax {
        self.syntaxes.get(&name.to_ascii_lowercase()).copied().unwrap_or(Syntax::String)
    }

    /// Number of attributes known.
    pub fn len(&self) -> usize {
        self.syntaxes.len()
    }

    /// True when nothing is known.
    pub fn is_empty(&self) -> bool {
        self.syntaxes.is_empty()
    }

    /// Types one wire value of `name`.
    pub fn value(&self, name: &str, raw: Vec<u8>) -> AttrValue {
        let syntax = self.syntax(name);
        if syntax == Syntax::Binary {
            return AttrValue::Binary(raw);
        }
        let text = match String::from_utf8(raw) {
            Ok(text) => text,
            Err(err) => return AttrValue::Binary(err.into_bytes()),
        };
        match syntax {
            Syntax::Integer => text.trim().parse().map(AttrValue::Integer).unwrap_or(AttrValue::String(text)),
            Syntax::Boolean if text.eq_ignore_ascii_case("TRUE") => AttrValue::Boolean(true),
            Syntax::Boolean if text.eq_ignore_ascii_case("FALSE") => AttrValue::Boolean(false),
            Syntax::Dn => AttrValue::Reference(text),
            _ => AttrValue::String(text),
        }
    }

    /// Types all values of an entry (ldap3 splits them into text and binary maps).
    pub fn attributes(&self, entry: ldap3::SearchEntry) -> Attributes {
        let mut attributes = Attributes::new();
        let text = entry.attrs.into_iter().map(|(name, values)| (name, values.into_iter().map(String::into_bytes).collect::<Vec<_>>()));
        for (name, values) in text.chain(entry.bin_attrs) {
            if !self.imported(&name) {
                continue;
            }
            // ldap3 may file some values of one attribute as text and others as binary.
            let mut all = attributes.get(&name).to_vec();
            all.extend(values.into_iter().map(|raw| self.value(&name, raw)));
            attributes.set(name, all);
        }
        attributes
    }
}

/// A value as the directory wants it written.
pub fn wire(value: &AttrValue) -> Vec<u8> {
    match value {
        AttrValue::String(text) | AttrValue::Reference(text) => text.as_bytes().to_vec(),
        AttrValue::Integer(number) => number.to_string().into_bytes(),
        AttrValue::Boolean(flag) => {
            if *flag {
                b"TRUE".to_vec()
            } else {
                b"FALSE".to_vec()
            }
        }
        AttrValue::Binary(bytes) => bytes.clone(),
        // Outbound flows turn the metaverse's references into DNs before a connector sees them.
        AttrValue::MvReference(id) => id.0.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn typed_values() {
        let mut schema = Schema::builtin();
        schema.set_ad("msDS-cloudExtensionAttribute1", "2.5.5.12");
        assert_eq!(schema.value("userAccountControl", b"512".to_vec()), AttrValue::Integer(512));
        assert_eq!(schema.value("useraccountcontrol", b"-2147483646".to_vec()), AttrValue::Integer(-2_147_483_646));
        assert_eq!(schema.value("userAccountControl", b"lots".to_vec()), AttrValue::string("lots"), "kept as text, not dropped");
        assert_eq!(schema.value("objectGUID", b"abc".to_vec()), AttrValue::Binary(b"abc".to_vec()), "binary even when it looks like text");
        assert_eq!(schema.value("member", b"CN=a,DC=x".to_vec()), AttrValue::Reference("CN=a,DC=x".into()));
        assert_eq!(schema.value("isDeleted", b"TRUE".to_vec()), AttrValue::Boolean(true));
        assert_eq!(schema.value("description", vec![0xff, 0xfe]), AttrValue::Binary(vec![0xff, 0xfe]), "non-UTF-8 text stays exact");
        assert_eq!(schema.syntax("msDS-cloudExtensionAttribute1"), Syntax::String);
        schema.set_ad_flags("uSNChanged", 19, None);
        schema.set_ad_flags("memberOf", 16, Some(3));
        schema.set_ad_flags("member", 16, Some(2));
        schema.set_ad_flags("parentGUID", 0x0800_0014, None);
        assert!(!schema.imported("usnchanged") && !schema.imported("memberOf") && !schema.imported("parentGUID"));
        assert!(schema.imported("member") && schema.imported("member;range=0-1499") && schema.imported("mail"));
        assert!(!schema.imported("userPassword") && !schema.imported("sambantpassword"), "password material is never imported");
    }

    proptest! {
        #[test]
        fn wire_round_trips_through_the_schema(value in prop_oneof![
            any::<i64>().prop_map(|n| ("userAccountControl", AttrValue::Integer(n))),
            any::<bool>().prop_map(|b| ("isDeleted", AttrValue::Boolean(b))),
            prop::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| ("objectSid", AttrValue::Binary(bytes))),
            "[^\u{0}]{0,20}".prop_map(|text| ("description", AttrValue::String(text))),
        ]) {
            let (name, value) = value;
            prop_assert_eq!(Schema::builtin().value(name, wire(&value)), value);
        }
    }
}
