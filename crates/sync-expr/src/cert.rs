//! The certificate functions (`Cert*`, `IsCert`): facts read from an X.509 certificate given as
//! DER bytes (`userCertificate`) or base64 text, shaped as .NET's `X509Certificate2` shows them
//! (Entra Connect's functions are thin wrappers over it): names most-specific first
//! (`CN=Ann, O=Contoso, C=US`), serial numbers and thumbprints as upper-case hex.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::Digest as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::ToDer as _;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::X509Name;

use crate::functions::Services;
use crate::time::DateTime;
use crate::value::Value;

/// The test certificate of the function reference's examples (`userCertificate` of the sample
/// object): ECDSA P-256, subject `CN=Ann Example, O=Contoso, C=US`, issuer
/// `CN=Contoso Issuing CA, O=Contoso, C=US`, serial `0123456789ABCDEF`, valid 2024-01-01 to
/// 2034-01-01, alternative names `ann@corp.example` (e-mail and UPN), `ann.corp.example`,
/// `https://corp.example/ann`; critical basicConstraints and keyUsage.
pub const EXAMPLE_CERTIFICATE: &str = "MIIB9DCCAZqgAwIBAgIIASNFZ4mrze8wCgYIKoZIzj0EAwIwPDELMAkGA1UEBhMCVVMxEDAOBgNVBAoMB0NvbnRvc28xGzAZBgNVBAMMEkNvbnRvc28gSXNzdWluZyBDQTAeFw0yNDAxMDEwMDAwMDBaFw0zNDAxMDEwMDAwMDBaMDUxCzAJBgNVBAYTAlVTMRAwDgYDVQQKDAdDb250b3NvMRQwEgYDVQQDDAtBbm4gRXhhbXBsZTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABEccPnWMSQQoW7p+UxGO0PUkresHV9Jb0vjnsNdt+nFM3VIPesqKi5F6zDf1HejwybvjrYWDgucC3CWhLQn3qFijgYwwgYkwaQYDVR0RBGIwYIEQYW5uQGNvcnAuZXhhbXBsZYIQYW5uLmNvcnAuZXhhbXBsZaAgBgorBgEEAYI3FAIDoBIMEGFubkBjb3JwLmV4YW1wbGWGGGh0dHBzOi8vY29ycC5leGFtcGxlL2FubjAMBgNVHRMBAf8EAjAAMA4GA1UdDwEB/wQEAwIHgDAKBggqhkjOPQQDAgNIADBFAiEA66/10jb5pmipdH4tlPwzk8fPl3rh70bB3Z3eMqrPn2oCIGALbo4UVvoqPa4HsKHM2c3NyPc5kHlbHFV/1irWv7cm";

/// The certificate's DER bytes; `None` for Null.
fn der(value: &Value) -> Result<Option<Vec<u8>>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bin(bytes) => Ok(Some(bytes.clone())),
        Value::Str(text) => {
            let compact: String = text.split_whitespace().collect();
            let body = compact.strip_prefix("-----BEGINCERTIFICATE-----").and_then(|rest| rest.strip_suffix("-----ENDCERTIFICATE-----"));
            BASE64.decode(body.unwrap_or(&compact)).map(Some).map_err(|err| format!("certificate text is not base64: {err}"))
        }
        other => Err(format!("a certificate must be binary or base64 text, not {}", other.type_name())),
    }
}

/// Runs `read` on the parsed certificate; Null in, Null out.
fn with_cert(value: &Value, read: impl FnOnce(&X509Certificate<'_>, &[u8]) -> Result<Value, String>) -> Result<Value, String> {
    let Some(bytes) = der(value)? else { return Ok(Value::Null) };
    let (_, cert) = X509Certificate::from_der(&bytes).map_err(|err| format!("not an X.509 certificate ({} bytes: {err})", bytes.len()))?;
    read(&cert, &bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02X}")).collect()
}

/// Short names .NET uses for name attributes.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "SERIALNUMBER",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "S",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "T",
        "2.5.4.42" => "G",
        "2.5.4.43" => "I",
        "1.2.840.113549.1.9.1" => "E",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// A name as .NET's `X500DistinguishedName.Name`: most specific RDN first, `, `-separated,
/// values with special characters in double quotes.
fn name_text(name: &X509Name<'_>) -> String {
    let mut parts = Vec::new();
    for rdn in name.iter_rdn() {
        let pairs: Vec<String> = rdn
            .iter()
            .map(|attribute| {
                let oid = attribute.attr_type().to_id_string();
                let kind = short_name(&oid).map_or_else(|| format!("OID.{oid}"), str::to_string);
                let value = attribute.as_str().map_or_else(|_| format!("#{}", hex(attribute.attr_value().data)), str::to_string);
                let quoted = if value.chars().any(|c| ",+=\"\n<>#;".contains(c)) || value.starts_with(' ') || value.ends_with(' ') {
                    format!("\"{}\"", value.replace('"', "\"\""))
                } else {
                    value
                };
                format!("{kind}={quoted}")
            })
            .collect();
        parts.push(pairs.join(" + "));
    }
    parts.reverse();
    parts.join(", ")
}

/// The first value of attribute `oid` in `name`.
fn name_attribute(name: &X509Name<'_>, oid: &str) -> Option<String> {
    name.iter_attributes()
        .find(|attribute| attribute.attr_type().to_id_string() == oid)
        .and_then(|attribute| attribute.as_str().ok())
        .map(str::to_string)
}

fn alternative_names<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a GeneralName<'a>> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().collect(),
        _ => Vec::new(),
    }
}

/// The UTF8String inside an otherName value (UPNs: `[0] EXPLICIT UTF8String`).
fn other_name_text(mut bytes: &[u8]) -> Option<String> {
    for _ in 0..4 {
        let (&tag, rest) = bytes.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let (len, rest) = if len < 0x80 {
            (usize::from(len), rest)
        } else {
            let count = usize::from(len & 0x7f);
            if count == 0 || count > 2 || rest.len() < count {
                return None;
            }
            (rest[..count].iter().fold(0usize, |acc, &byte| acc << 8 | usize::from(byte)), &rest[count..])
        };
        let content = rest.get(..len)?;
        if tag == 0x0c {
            return String::from_utf8(content.to_vec()).ok();
        }
        bytes = content;
    }
    None
}

const UPN_OID: &str = "1.3.6.1.4.1.311.20.2.3";

pub(crate) fn is_cert(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Bool(match der(&args[0]) {
        Ok(Some(bytes)) => X509Certificate::from_der(&bytes).is_ok(),
        _ => false,
    }))
}

pub(crate) fn subject(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |cert, _| Ok(Value::Str(name_text(cert.subject()))))
}

pub(crate) fn issuer(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |cert, _| Ok(Value::Str(name_text(cert.issuer()))))
}

pub(crate) fn thumbprint(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |_, der| Ok(Value::Str(hex(&sha1::Sha1::digest(der)))))
}

pub(crate) fn serial_number(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |cert, _| Ok(Value::Str(hex(cert.raw_serial()))))
}

pub(crate) fn version(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |cert, _| Ok(Value::Num(i64::from(cert.version().0) + 1)))
}

pub(crate) fn not_before(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |cert, _| date(cert.validity().not_before.timestamp()))
}

pub(crate) fn not_after(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |cert, _| date(cert.validity().not_after.timestamp()))
}

fn date(unix: i64) -> Result<Value, String> {
    DateTime::from_unix_seconds(unix).map(Value::Date).ok_or_else(|| format!("certificate date {unix} is out of range"))
}

pub(crate) fn format(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |_, _| Ok(Value::str("X509")))
}

pub(crate) fn friendly_name(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    // A friendly name lives in a certificate store, not in the certificate.
    with_cert(&args[0], |_, _| Ok(Value::str("")))
}

pub(crate) fn key_algorithm(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |cert, _| Ok(Value::Str(cert.public_key().algorithm.algorithm.to_id_string())))
}

pub(crate) fn key_algorithm_params(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |cert, _| {
        Ok(Value::Str(match &cert.public_key().algorithm.parameters {
            Some(parameters) => hex(&parameters.to_der_vec().map_err(|err| format!("key algorithm parameters: {err}"))?),
            None => String::new(),
        }))
    })
}

pub(crate) fn public_key_parameters_oid(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |cert, _| {
        let algorithm = &cert.public_key().algorithm;
        // Elliptic-curve keys name their curve; other keys carry the algorithm's own OID.
        let curve = algorithm.parameters.as_ref().and_then(|parameters| parameters.as_oid().ok()).map(|oid| oid.to_id_string());
        Ok(Value::Str(curve.unwrap_or_else(|| algorithm.algorithm.to_id_string())))
    })
}

pub(crate) fn signature_algorithm_oid(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |cert, _| Ok(Value::Str(cert.signature_algorithm.algorithm.to_id_string())))
}

pub(crate) fn name_oid(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    // .NET's X500DistinguishedName carries no OID of its own.
    with_cert(&args[0], |_, _| Ok(Value::Null))
}

pub(crate) fn extension_oids(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    with_cert(&args[0], |cert, _| {
        let oids: Vec<Value> = cert
            .extensions()
            .iter()
            .filter(|extension| extension.critical)
            .map(|extension| Value::Str(extension.oid.to_id_string()))
            .collect();
        Ok(if oids.is_empty() { Value::Null } else { Value::Multi(oids) })
    })
}

pub(crate) fn name_info(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let kind = match &args[1] {
        Value::Str(kind) => kind.clone(),
        other => return Err(format!("the name type must be a string, not {}", other.type_name())),
    };
    let for_issuer = match &args[2] {
        Value::Bool(flag) => *flag,
        Value::Null => false,
        Value::Str(text) if text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false") => text.eq_ignore_ascii_case("true"),
        other => return Err(format!("includesIssuerName must be a boolean, not {}", other.type_name())),
    };
    with_cert(&args[0], |cert, _| {
        let name = if for_issuer { cert.issuer() } else { cert.subject() };
        let alternative = if for_issuer { Vec::new() } else { alternative_names(cert) };
        let first_alternative = |pick: &dyn Fn(&GeneralName<'_>) -> Option<String>| alternative.iter().find_map(|general| pick(general));
        let found = match kind.as_str() {
            "SimpleName" => ["2.5.4.3", "2.5.4.11", "2.5.4.10", "1.2.840.113549.1.9.1"].iter().find_map(|oid| name_attribute(name, oid)),
            "EmailName" => name_attribute(name, "1.2.840.113549.1.9.1").or_else(|| {
                first_alternative(&|general| match general {
                    GeneralName::RFC822Name(mail) => Some(mail.to_string()),
                    _ => None,
                })
            }),
            "UpnName" => first_alternative(&|general| match general {
                GeneralName::OtherName(oid, value) if oid.to_id_string() == UPN_OID => other_name_text(value),
                _ => None,
            }),
            "DnsName" | "DnsFromAlternativeName" => first_alternative(&|general| match general {
                GeneralName::DNSName(dns) => Some(dns.to_string()),
                _ => None,
            })
            .or_else(|| if kind == "DnsName" { name_attribute(name, "2.5.4.3") } else { None }),
            "UrlName" => first_alternative(&|general| match general {
                GeneralName::URI(uri) => Some(uri.to_string()),
                _ => None,
            }),
            other => {
                return Err(format!(
                    "unknown name type \"{other}\" (SimpleName, EmailName, UpnName, DnsName, DnsFromAlternativeName, UrlName)"
                ));
            }
        };
        Ok(Value::Str(found.unwrap_or_default()))
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::functions::{FUNCTIONS, Kind};

    proptest! {
        /// Any bytes, and any mangling of a real certificate, give a value or an error: never a panic.
        #[test]
        fn certificate_functions_never_panic(
            noise in prop::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..504,
            flip in 0usize..504,
        ) {
            let real = BASE64.decode(EXAMPLE_CERTIFICATE).unwrap_or_default();
            let mut mangled = real.clone();
            if let Some(byte) = mangled.get_mut(flip) {
                *byte ^= 0x5a;
            }
            mangled.truncate(cut.max(1));
            let mut random = || 4;
            let Some(now) = DateTime::from_unix_seconds(0) else { return Ok(()) };
            let mut services = Services { now, random: &mut random };
            for input in [Value::Bin(noise.clone()), Value::Bin(mangled), Value::Str(String::from_utf8_lossy(&noise).into_owned())] {
                for function in FUNCTIONS.iter().filter(|function| function.name.starts_with("Cert") || function.name == "IsCert") {
                    let Kind::Plain(run) = function.kind else { continue };
                    let args = [input.clone(), Value::str("UpnName"), Value::Bool(false)];
                    let _ = run(&args[..function.min_args], &mut services);
                }
            }
        }
    }

    #[test]
    fn other_names() {
        assert_eq!(other_name_text(&[0xa0, 0x05, 0x0c, 0x03, b'a', b'@', b'b']), Some("a@b".into()));
        assert_eq!(other_name_text(&[0x0c, 0x05, b'a']), None, "a length past the end");
    }
}
