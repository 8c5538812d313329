//! Table-driven tests: every function's examples, operators, multi-valued semantics, the
//! checker's diagnostics, the generated reference, and a property test that nothing panics.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::{Env, Schema, Value, check, functions, render_value, time};

fn sample_object() -> BTreeMap<String, Value> {
    let mut object = BTreeMap::new();
    object.insert("mail".to_string(), Value::str("ann@corp.example"));
    object.insert("proxyAddresses".to_string(), Value::strs(&["SMTP:ann@corp.example", "smtp:ann@mail.example", "SIP:ann@corp.example"]));
    object.insert("userAccountControl".to_string(), Value::Num(514));
    object.insert("objectGUID".to_string(), Value::Bin((0u8..16).collect()));
    object.insert("displayName".to_string(), Value::str("Ann Lee"));
    let certificate =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, crate::cert::EXAMPLE_CERTIFICATE).expect("test certificate");
    object.insert("userCertificate".to_string(), Value::Bin(certificate));
    object
}

/// Evaluates `text` against the sample object; renders the result or `error: …`.
fn run(text: &str) -> String {
    let object = sample_object();
    let mut parameters = BTreeMap::new();
    parameters.insert("Domain.Netbios".to_string(), Value::str("CORP"));
    let mut counter = 0u64;
    let mut random = move || {
        counter += 1;
        counter.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    };
    let mut env = Env {
        source: &object,
        parameters: &parameters,
        now: time::parse("2024-11-25T10:00:00Z").expect("fixed date"),
        random: &mut random,
    };
    match check(text, &Schema::default()) {
        Err(diagnostics) => format!("check: {}", diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
        Ok(checked) => match checked.evaluate(&mut env) {
            Ok(value) => render_value(&value),
            Err(err) => format!("error: {}", err.message),
        },
    }
}

#[test]
fn every_function_has_examples_and_they_hold() {
    let mut failures = Vec::new();
    for function in functions::FUNCTIONS {
        assert!(!function.examples.is_empty(), "{} has no example", function.name);
        for (example, expected) in function.examples {
            let actual = run(example);
            if actual != *expected {
                failures.push(format!("{example}\n    expected {expected}\n    got      {actual}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} example(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_issue_list_of_functions_is_covered() {
    let wanted = [
        "Left",
        "Right",
        "Mid",
        "Trim",
        "LCase",
        "UCase",
        "PCase",
        "IIF",
        "Switch",
        "Join",
        "Split",
        "Item",
        "ItemOrNull",
        "Contains",
        "InStr",
        "Coalesce",
        "IsPresent",
        "IsNullOrEmpty",
        "IsString",
        "IsNumeric",
        "IsGuid",
        "IsDate",
        "BitAnd",
        "BitOr",
        "CStr",
        "CNum",
        "CBool",
        "CDate",
        "CGuid",
        "ConvertToBase64",
        "ConvertFromBase64",
        "ConvertToUTF8Hex",
        "StringFromGuid",
        "StringFromSid",
        "ConvertFromUTF8Hex",
        "DNComponent",
        "DNComponentRev",
        "EscapeDNComponent",
        "Word",
        "Replace",
        "ReplaceChars",
        "RemoveDuplicates",
        "Format",
        "Now",
        "DateAdd",
        "DateFromNum",
        "FormatDateTime",
        "Guid",
        "Error",
        "CheckSourceAnchor",
        "Count",
        "RandomNum",
        "Select",
        "Where",
        "With",
        "ImportedValue",
        "InStrRev",
        "IsBitSet",
        "IsEmpty",
        "IsNull",
        "Len",
        "LTrim",
        "RTrim",
        "PadLeft",
        "PadRight",
        "NumFromDate",
        "CRef",
        // The fact sheet's certificate functions.
        "CertExtensionOids",
        "CertFormat",
        "CertFriendlyName",
        "CertHashString",
        "CertIssuer",
        "CertIssuerDN",
        "CertIssuerOid",
        "CertKeyAlgorithm",
        "CertKeyAlgorithmParams",
        "CertNameInfo",
        "CertNotAfter",
        "CertNotBefore",
        "CertPublicKeyOid",
        "CertPublicKeyParametersOid",
        "CertSerialNumber",
        "CertSignatureAlgorithmOid",
        "CertSubject",
        "CertSubjectNameDN",
        "CertSubjectNameOid",
        "CertThumbprint",
        "CertVersion",
        "IsCert",
    ];
    let missing: Vec<_> = wanted.iter().filter(|name| functions::lookup(name).is_none()).collect();
    assert!(missing.is_empty(), "missing: {missing:?}");
}

#[test]
fn operators_evaluate_left_to_right_with_equal_priority() {
    let cases = [
        ("2*5+3", "13"),
        ("2+5*3", "21"),
        ("2*(5+3)", "16"),
        ("10-2-3", "5"),
        ("\"a\" & 1 & True", "\"a1True\""),
        ("[givenName] & \"x\"", "\"x\""),
        ("[givenName] & [sn]", "null"),
        ("1 = 1 && 2 > 3", "False"),
        ("1 = 2 || 2 >= 2", "True"),
        // Comparisons share the arithmetic operators' priority: this is ((1 + 1) = 2) + 1.
        ("1 + 1 = 2 + 1", "error: `+`: boolean is not a number"),
        ("\"abc\" < \"abd\"", "True"),
        ("\"10\" = 10", "True"),
        ("[missing] = NULL", "False"),
        ("[missing] <> \"x\"", "True"),
        ("[userAccountControl] + 1", "515"),
        ("-[userAccountControl]", "-514"),
        ("[missing] + 1", "null"),
        ("9223372036854775807 + 1", "error: `+`: 9223372036854775807 + 1 overflows"),
        ("\"x\" + 1", "error: `+`: \"x\" is not a number"),
        ("CRLF", "\"\\r\\n\""),
        ("%Domain.Netbios% & \"\\\" & \"ann\"", "\"CORP\\\\ann\""),
        ("%Forest.FQDN%", "error: parameter %Forest.FQDN% has no value"),
        ("[objectGUID] = [objectGUID]", "True"),
        ("[objectGUID] < 1", "error: `<`: cannot compare binary with number"),
    ];
    for (text, expected) in cases {
        assert_eq!(run(text), expected, "{text}");
    }
}

#[test]
fn multi_valued_attributes_apply_per_value() {
    let cases = [
        ("LCase([proxyAddresses])", "[\"smtp:ann@corp.example\", \"smtp:ann@mail.example\", \"sip:ann@corp.example\"]"),
        ("Left([proxyAddresses], 4) = \"SMTP\"", "[True, False, False]"),
        ("[proxyAddresses] & \"!\"", "[\"SMTP:ann@corp.example!\", \"smtp:ann@mail.example!\", \"SIP:ann@corp.example!\"]"),
        ("IIF(Left([proxyAddresses], 5) = \"smtp:\", [proxyAddresses], NULL)", "[\"smtp:ann@mail.example\"]"),
        (
            "Count(Split(\"a,b\", \",\") & [proxyAddresses])",
            "error: `&`: multi-valued arguments have different numbers of values (2 and 3)",
        ),
        ("Join(RemoveDuplicates(LCase(Word([proxyAddresses], 1, \":\"))), \"+\")", "\"smtp+sip\""),
        ("Item([proxyAddresses], Contains([proxyAddresses], \"SMTP:\"))", "\"SMTP:ann@corp.example\""),
    ];
    for (text, expected) in cases {
        assert_eq!(run(text), expected, "{text}");
    }
}

#[test]
fn special_flow_values_are_returned_as_such() {
    assert_eq!(run("IIF(IsPresent([missing]), [missing], AuthoritativeNull)"), "AuthoritativeNull");
    assert_eq!(run("IIF([userAccountControl] = 514, IgnoreThisFlow, 1)"), "IgnoreThisFlow");
    assert_eq!(run("NULL"), "null");
}

#[test]
fn lazy_iif_does_not_evaluate_the_other_branch() {
    assert_eq!(run("IIF(True, 1, Error(\"never\"))"), "1");
    assert_eq!(run("IIF(False, 1, Error(\"chosen\"))"), "error: chosen");
    // Switch evaluates every argument, as Entra does.
    assert_eq!(run("Switch(True, 1, False, Error(\"evaluated\"))"), "error: evaluated");
}

#[test]
fn default_rule_expressions_evaluate() {
    // sourceAnchor from objectGUID when there is no consistency GUID.
    assert_eq!(
        run("IIF(IsPresent([mS-DS-ConsistencyGuid]), [mS-DS-ConsistencyGuid], [objectGUID])"),
        "bin:000102030405060708090A0B0C0D0E0F"
    );
    assert_eq!(run("ConvertToBase64([objectGUID])"), "\"AAECAwQFBgcICQoLDA0ODw==\"");
    // accountEnabled from userAccountControl.
    assert_eq!(run("IIF(BitAnd([userAccountControl], 2) = 0, True, False)"), "False");
    assert_eq!(run("IsBitSet([userAccountControl], 2) = False"), "False");
}

#[test]
fn errors_point_at_line_and_column() {
    assert_eq!(run("Left([mail],\n  Error(\"boom\"))"), "error: boom");
    let object = sample_object();
    let parameters = BTreeMap::new();
    let mut random = || 4u64;
    let mut env =
        Env { source: &object, parameters: &parameters, now: time::DateTime::from_ticks(0).expect("tick 0"), random: &mut random };
    let checked = check("Trim([mail]) &\n   CNum(\"x\")", &Schema::default()).expect("valid");
    let err = checked.evaluate(&mut env).expect_err("CNum fails");
    assert_eq!(err.to_string(), "2:4: CNum: \"x\" is not a whole number");
}

#[test]
fn checker_reports_every_problem_with_position() {
    let schema = Schema::new(&["mail", "proxyAddresses", "sn"], &["Domain.Netbios"]);
    let problems = |text: &str| match check(text, &schema) {
        Ok(_) => Vec::new(),
        Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert_eq!(problems("Trim([mail])"), Vec::<String>::new());
    assert_eq!(
        problems("trim([Mail]) & Left([sn])"),
        vec![
            "1:1: unknown function trim; did you mean Trim? (names are case-sensitive)",
            "1:6: unknown attribute [Mail]; did you mean [mail]? (names are case-sensitive)",
            "1:16: Left takes 2 arguments, got 1 (str Left(str value, num n))",
        ]
    );
    assert_eq!(problems("%Forest.FQDN%"), vec!["1:1: unknown parameter %Forest.FQDN% (known: %Domain.Netbios%)"]);
    assert_eq!(problems("LCase($x)"), vec!["1:7: $x is not bound by an enclosing Select, Where or With"]);
    assert_eq!(problems("Select([mail], [proxyAddresses], 1)"), vec!["1:8: Select: the first argument must be a $variable"]);
    assert_eq!(problems("Select($p, [proxyAddresses], $p) & $p"), vec!["1:36: $p is not bound by an enclosing Select, Where or With"]);
    assert_eq!(
        problems("ImportedValue([mail])"),
        vec!["1:15: ImportedValue takes the attribute name as a string literal, e.g. ImportedValue(\"mail\")"]
    );
    assert_eq!(problems("ImportedValue(\"nope\")"), vec!["1:15: unknown attribute [nope]"]);
    assert_eq!(
        problems("Contains([mail], \"a\", \"IgnoreCase\")"),
        vec!["1:23: Contains: \"IgnoreCase\" is not one of CaseInsensitive, CaseSensitive"]
    );
    assert_eq!(problems("DateAdd(\"days\", 1, Now())"), vec!["1:9: DateAdd: \"days\" is not one of yyyy, q, m, y, d, w, ww, h, n, s"]);
    assert_eq!(
        problems("certThumbprint([mail])"),
        vec!["1:1: unknown function certThumbprint; did you mean CertThumbprint? (names are case-sensitive)"]
    );
    assert_eq!(
        problems("CertNameInfo([mail], \"Upn\", False)"),
        vec!["1:22: CertNameInfo: \"Upn\" is not one of SimpleName, EmailName, UpnName, DnsName, DnsFromAlternativeName, UrlName"]
    );
    assert_eq!(problems("Switch(1)"), vec!["1:1: Switch takes at least 2 arguments, got 1 (var Switch(exp condition1, var value1, …))"]);
    assert_eq!(problems("Now(1)"), vec!["1:1: Now takes 0 arguments, got 1 (dt Now())"]);
    assert_eq!(problems("Trim([mail]"), vec!["1:5: the argument list is not closed with `)`"]);
}

#[test]
fn function_reference_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/expression-functions.md");
    let generated = crate::reference_markdown();
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, &generated).expect("write reference");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == generated, "docs/expression-functions.md is stale: run `UPDATE_EXPECT=1 cargo test -p sync-expr`");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The parser and checker never panic, whatever the input.
    #[test]
    fn check_never_panics_on_any_text(text in "\\PC{0,80}") {
        let _ = check(&text, &Schema::default());
    }

    /// Nor on inputs made of the language's own tokens, which reach deeper into the parser.
    #[test]
    fn check_and_evaluate_never_panic_on_token_soup(parts in proptest::collection::vec(prop_oneof![
        Just("("), Just(")"), Just(","), Just("&"), Just("+"), Just("-"), Just("*"), Just("="), Just("<>"), Just("<="), Just("&&"), Just("||"),
        Just("[mail]"), Just("[proxyAddresses]"), Just("[missing]"), Just("\"x\""), Just("\"\""), Just("1"), Just("0"), Just("-1"), Just("&HFF"),
        Just("True"), Just("NULL"), Just("$p"), Just("%Domain.Netbios%"),
        Just("IIF("), Just("Left("), Just("Mid("), Just("Split("), Just("Join("), Just("Item("), Just("Select($p,"), Just("Where($p,"),
        Just("Switch("), Just("Word("), Just("CNum("), Just("DateAdd(\"d\","), Just("Now()"), Just("Format("), Just("StringFromSid("),
        Just("ConvertFromBase64("), Just("PadLeft("), Just("InStrRev("), Just("RandomNum("), Just("DNComponentRev("),
    ], 0..24)) {
        let text = parts.concat();
        let _ = run(&text);
    }

    /// A value CheckSourceAnchor accepts meets every rule; one it refuses breaks one, and the
    /// error names the value.
    #[test]
    fn check_source_anchor_accepts_exactly_the_valid_values(value in "\\PC{0,40}") {
        let quoted = value.replace('"', "\"\"");
        let result = run(&format!("CheckSourceAnchor(\"{quoted}\")"));
        let counted: usize = value.chars().map(|c| if c.is_ascii_alphanumeric() { 1 } else { 3 }).sum();
        let valid = !value.is_empty() && counted < 60 && !value.chars().any(|c| "\\!#$%&*+/=?^`{}|~<>()';:,[]\"@_".contains(c) || c.is_control());
        if valid {
            prop_assert!(!result.starts_with("error:"), "{} refused: {}", value, result);
        } else {
            prop_assert!(result.starts_with("error: CheckSourceAnchor: the sourceAnchor"), "{} accepted: {}", value, result);
        }
    }

    /// Any rendered (fully parenthesised) tree parses back to the same tree.
    #[test]
    fn render_then_parse_is_stable(left in 0i64..1000, right in 0i64..1000, name in "[a-z]{1,8}") {
        let text = format!("Trim([{name}]) & {left} + ({right} * -{left})");
        let parsed = crate::syntax::parse(&text).expect("valid");
        let rendered = crate::syntax::render(&parsed);
        let reparsed = crate::syntax::parse(&rendered).expect("rendered parses");
        prop_assert_eq!(crate::syntax::render(&reparsed), rendered);
    }
}

#[test]
fn long_operator_chains_are_refused_not_a_stack_overflow() {
    for op in ["+", "&", "&&", "="] {
        let long = vec!["1"; 20_001].join(&format!(" {op} "));
        let err = crate::syntax::parse(&long).expect_err(op);
        assert!(err.message.contains("nests deeper"), "{op}: {}", err.message);
    }
    let mixed = format!("{}1{}", "(1 + ".repeat(150), " + 1)".repeat(150)).replace("(1 + 1", "(1 + 1 + 1 + 1");
    assert!(crate::syntax::parse(&mixed).is_err(), "nesting and chains add up");
    let fine = vec!["1"; 150].join(" + ");
    assert!(crate::syntax::parse(&fine).is_ok(), "a chain of 149 operators is fine");
}
