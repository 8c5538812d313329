//! The function table: every built-in function's name, signature, documentation, examples and
//! implementation. `docs/expression-functions.md` is generated from [`FUNCTIONS`] (`cargo xtask
//! codegen`), and the examples run as tests, so the reference cannot drift from the code.
//!

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::cert;
use crate::time::{self, DateTime};
use crate::value::Value;

/// How an argument is passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// A single value; a multi-valued argument makes the function run once per value.
    Single,
    /// The whole value, single or multi-valued.
    Whole,
}

/// What the evaluator does with a call.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Arguments are evaluated, then the function runs (per value where [`Param::Single`] meets a multi-value).
    Plain(fn(&[Value], &mut Services<'_>) -> Result<Value, String>),
    /// The evaluator implements it itself: lazy or variable-binding functions (`IIF`, `Select`, `Where`, `With`, `ImportedValue`).
    Special,
}

/// Access to the clock and to randomness, provided by the caller (the crate reads neither).
pub struct Services<'a> {
    /// The current instant.
    pub now: DateTime,
    /// A source of random 64-bit numbers.
    pub random: &'a mut dyn FnMut() -> u64,
}

/// Functions grouped as in the Entra Connect reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// CertSubject, CertThumbprint, …
    Certificate,
    /// CBool, CDate, …
    Conversion,
    /// DateAdd, Now, …
    DateTime,
    /// DNComponent, …
    Directory,
    /// IsPresent, IsBitSet, …
    Evaluation,
    /// BitAnd, …
    Math,
    /// Count, Join, …
    MultiValued,
    /// IIF, Switch, …
    ProgramFlow,
    /// Left, Trim, …
    Text,
}

impl Category {
    /// The heading used in the reference.
    pub fn title(self) -> &'static str {
        match self {
            Category::Certificate => "Certificate",
            Category::Conversion => "Conversion",
            Category::DateTime => "Date and time",
            Category::Directory => "Directory",
            Category::Evaluation => "Evaluation",
            Category::Math => "Math",
            Category::MultiValued => "Multi-valued",
            Category::ProgramFlow => "Program flow",
            Category::Text => "Text",
        }
    }
}

/// One built-in function.
#[derive(Debug, Clone, Copy)]
pub struct Function {
    /// Name, case-sensitive.
    pub name: &'static str,
    /// Signature in the reference's notation, e.g. `str Left(str value, num n)`.
    pub signature: &'static str,
    /// Group in the reference.
    pub category: Category,
    /// What it does, one or two sentences.
    pub summary: &'static str,
    /// Argument modes; the last repeats for variadic functions.
    pub params: &'static [Param],
    /// Fewest arguments.
    pub min_args: usize,
    /// Most arguments; `None` for variadic.
    pub max_args: Option<usize>,
    /// `(expression, result)` pairs; they are tests and appear in the reference.
    /// The result is rendered by `crate::render_value`; `error: …` means evaluation fails with that text.
    pub examples: &'static [(&'static str, &'static str)],
    /// Implementation.
    pub kind: Kind,
}

/// Looks a function up by its exact name.
pub fn lookup(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|function| function.name == name)
}

use Category as C;
use Param::{Single as S, Whole as W};

macro_rules! f {
    ($name:literal, $sig:literal, $cat:expr, $summary:literal, [$($param:expr),*], $min:expr, $max:expr, [$(($ex:literal, $res:literal)),* $(,)?], $kind:expr) => {
        Function { name: $name, signature: $sig, category: $cat, summary: $summary, params: &[$($param),*], min_args: $min, max_args: $max, examples: &[$(($ex, $res)),*], kind: $kind }
    };
}

/// Every built-in function, in reference order.
pub static FUNCTIONS: &[Function] = &[
    // Certificate (DER bytes such as `userCertificate`, or base64 text)
    f!(
        "CertExtensionOids",
        "mvstr CertExtensionOids(bin certificate)",
        C::Certificate,
        "The OIDs of the certificate's critical extensions.",
        [S],
        1,
        Some(1),
        [("CertExtensionOids([userCertificate])", "[\"2.5.29.19\", \"2.5.29.15\"]")],
        Kind::Plain(cert::extension_oids)
    ),
    f!(
        "CertFormat",
        "str CertFormat(bin certificate)",
        C::Certificate,
        "The certificate's format: `X509`.",
        [S],
        1,
        Some(1),
        [("CertFormat([userCertificate])", "\"X509\"")],
        Kind::Plain(cert::format)
    ),
    f!(
        "CertFriendlyName",
        "str CertFriendlyName(bin certificate)",
        C::Certificate,
        "The friendly name: empty, since it belongs to a certificate store, not to the certificate.",
        [S],
        1,
        Some(1),
        [("CertFriendlyName([userCertificate])", "\"\"")],
        Kind::Plain(cert::friendly_name)
    ),
    f!(
        "CertHashString",
        "str CertHashString(bin certificate)",
        C::Certificate,
        "The SHA-1 hash of the certificate, upper-case hex (the same as `CertThumbprint`).",
        [S],
        1,
        Some(1),
        [("CertHashString([userCertificate])", "\"1921B89CDECC3E526655D2616707EC719BC5FC90\"")],
        Kind::Plain(cert::thumbprint)
    ),
    f!(
        "CertIssuer",
        "str CertIssuer(bin certificate)",
        C::Certificate,
        "The issuer's name, most specific part first.",
        [S],
        1,
        Some(1),
        [("CertIssuer([userCertificate])", "\"CN=Contoso Issuing CA, O=Contoso, C=US\"")],
        Kind::Plain(cert::issuer)
    ),
    f!(
        "CertIssuerDN",
        "str CertIssuerDN(bin certificate)",
        C::Certificate,
        "The issuer's distinguished name (as `CertIssuer`).",
        [S],
        1,
        Some(1),
        [("CertIssuerDN([userCertificate])", "\"CN=Contoso Issuing CA, O=Contoso, C=US\"")],
        Kind::Plain(cert::issuer)
    ),
    f!(
        "CertIssuerOid",
        "str CertIssuerOid(bin certificate)",
        C::Certificate,
        "The OID of the issuer name object: Null, as in .NET, where a name carries none.",
        [S],
        1,
        Some(1),
        [("CertIssuerOid([userCertificate])", "null")],
        Kind::Plain(cert::name_oid)
    ),
    f!(
        "CertKeyAlgorithm",
        "str CertKeyAlgorithm(bin certificate)",
        C::Certificate,
        "The public key's algorithm OID.",
        [S],
        1,
        Some(1),
        [("CertKeyAlgorithm([userCertificate])", "\"1.2.840.10045.2.1\"")],
        Kind::Plain(cert::key_algorithm)
    ),
    f!(
        "CertKeyAlgorithmParams",
        "str CertKeyAlgorithmParams(bin certificate)",
        C::Certificate,
        "The public key's algorithm parameters, DER in upper-case hex (an elliptic curve names its curve).",
        [S],
        1,
        Some(1),
        [("CertKeyAlgorithmParams([userCertificate])", "\"06082A8648CE3D030107\"")],
        Kind::Plain(cert::key_algorithm_params)
    ),
    f!(
        "CertNameInfo",
        "str CertNameInfo(bin certificate, str nameType, bool includesIssuerName)",
        C::Certificate,
        "A name from the subject (or the issuer): `SimpleName` (the common name), `EmailName`, `UpnName`, `DnsName`, `DnsFromAlternativeName`, `UrlName`; empty when the certificate has none.",
        [S, S, S],
        3,
        Some(3),
        [
            ("CertNameInfo([userCertificate], \"UpnName\", False)", "\"ann@corp.example\""),
            ("CertNameInfo([userCertificate], \"DnsName\", False)", "\"ann.corp.example\""),
            ("CertNameInfo([userCertificate], \"SimpleName\", True)", "\"Contoso Issuing CA\""),
            ("CertNameInfo([userCertificate], \"UrlName\", False)", "\"https://corp.example/ann\"")
        ],
        Kind::Plain(cert::name_info)
    ),
    f!(
        "CertNotAfter",
        "dt CertNotAfter(bin certificate)",
        C::Certificate,
        "The end of the certificate's validity (UTC).",
        [S],
        1,
        Some(1),
        [("CertNotAfter([userCertificate])", "2034-01-01T00:00:00Z")],
        Kind::Plain(cert::not_after)
    ),
    f!(
        "CertNotBefore",
        "dt CertNotBefore(bin certificate)",
        C::Certificate,
        "The start of the certificate's validity (UTC).",
        [S],
        1,
        Some(1),
        [("CertNotBefore([userCertificate])", "2024-01-01T00:00:00Z")],
        Kind::Plain(cert::not_before)
    ),
    f!(
        "CertPublicKeyOid",
        "str CertPublicKeyOid(bin certificate)",
        C::Certificate,
        "The public key's OID (its algorithm).",
        [S],
        1,
        Some(1),
        [("CertPublicKeyOid([userCertificate])", "\"1.2.840.10045.2.1\"")],
        Kind::Plain(cert::key_algorithm)
    ),
    f!(
        "CertPublicKeyParametersOid",
        "str CertPublicKeyParametersOid(bin certificate)",
        C::Certificate,
        "The OID of the public key's parameters: the curve of an elliptic-curve key, else the algorithm.",
        [S],
        1,
        Some(1),
        [("CertPublicKeyParametersOid([userCertificate])", "\"1.2.840.10045.3.1.7\"")],
        Kind::Plain(cert::public_key_parameters_oid)
    ),
    f!(
        "CertSerialNumber",
        "str CertSerialNumber(bin certificate)",
        C::Certificate,
        "The serial number, upper-case hex.",
        [S],
        1,
        Some(1),
        [("CertSerialNumber([userCertificate])", "\"0123456789ABCDEF\"")],
        Kind::Plain(cert::serial_number)
    ),
    f!(
        "CertSignatureAlgorithmOid",
        "str CertSignatureAlgorithmOid(bin certificate)",
        C::Certificate,
        "The OID of the algorithm the issuer signed with.",
        [S],
        1,
        Some(1),
        [("CertSignatureAlgorithmOid([userCertificate])", "\"1.2.840.10045.4.3.2\"")],
        Kind::Plain(cert::signature_algorithm_oid)
    ),
    f!(
        "CertSubject",
        "str CertSubject(bin certificate)",
        C::Certificate,
        "The subject's name, most specific part first, as .NET shows it.",
        [S],
        1,
        Some(1),
        [
            ("CertSubject([userCertificate])", "\"CN=Ann Example, O=Contoso, C=US\""),
            (
                "CertSubject(\"AAAA\")",
                "error: CertSubject: not an X.509 certificate (3 bytes: Parsing Error: Der(UnexpectedTag { expected: Some(Tag(16)), actual: Tag(0) }))"
            )
        ],
        Kind::Plain(cert::subject)
    ),
    f!(
        "CertSubjectNameDN",
        "str CertSubjectNameDN(bin certificate)",
        C::Certificate,
        "The subject's distinguished name (as `CertSubject`).",
        [S],
        1,
        Some(1),
        [("CertSubjectNameDN([userCertificate])", "\"CN=Ann Example, O=Contoso, C=US\"")],
        Kind::Plain(cert::subject)
    ),
    f!(
        "CertSubjectNameOid",
        "str CertSubjectNameOid(bin certificate)",
        C::Certificate,
        "The OID of the subject name object: Null, as in .NET.",
        [S],
        1,
        Some(1),
        [("CertSubjectNameOid([userCertificate])", "null")],
        Kind::Plain(cert::name_oid)
    ),
    f!(
        "CertThumbprint",
        "str CertThumbprint(bin certificate)",
        C::Certificate,
        "The thumbprint: the SHA-1 hash of the DER certificate, upper-case hex.",
        [S],
        1,
        Some(1),
        [("CertThumbprint([userCertificate])", "\"1921B89CDECC3E526655D2616707EC719BC5FC90\"")],
        Kind::Plain(cert::thumbprint)
    ),
    f!(
        "CertVersion",
        "num CertVersion(bin certificate)",
        C::Certificate,
        "The X.509 version (3 for v3).",
        [S],
        1,
        Some(1),
        [("CertVersion([userCertificate])", "3")],
        Kind::Plain(cert::version)
    ),
    f!(
        "IsCert",
        "bool IsCert(bin certificate)",
        C::Certificate,
        "True when the value (DER bytes, or base64 text) is an X.509 certificate.",
        [S],
        1,
        Some(1),
        [("IsCert([userCertificate])", "True"), ("IsCert(\"not a certificate\")", "False")],
        Kind::Plain(cert::is_cert)
    ),
    // Conversion
    f!(
        "CBool",
        "bool CBool(exp value)",
        C::Conversion,
        "True when the value is non-zero (numbers), `True` (strings, any case) or a non-zero number string.",
        [S],
        1,
        Some(1),
        [
            ("CBool(5)", "True"),
            ("CBool(0)", "False"),
            ("CBool(\"true\")", "True"),
            ("CBool(\"maybe\")", "error: CBool: \"maybe\" is not a boolean")
        ],
        Kind::Plain(cbool)
    ),
    f!(
        "CDate",
        "dt CDate(str value)",
        C::Conversion,
        "Parses a date, an optional time (24-hour or with AM/PM) and an optional zone (`Z`, `+hh`, `-h`, `+hh:mm`); returns UTC. No zone means UTC. Also reads LDAP generalized time.",
        [S],
        1,
        Some(1),
        [
            ("CDate(\"2013-01-10 4:00 PM -8\")", "2013-01-11T00:00:00Z"),
            ("CDate(\"20140905081453.0Z\")", "2014-09-05T08:14:53Z"),
            ("CDate(\"soon\")", "error: CDate: \"soon\" is not a date")
        ],
        Kind::Plain(cdate)
    ),
    f!(
        "CGuid",
        "bin CGuid(str value)",
        C::Conversion,
        "Parses a GUID written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` or in braces into its 16 bytes (Windows byte order).",
        [S],
        1,
        Some(1),
        [("CGuid(\"{00112233-4455-6677-8899-aabbccddeeff}\")", "bin:33221100554477668899AABBCCDDEEFF")],
        Kind::Plain(cguid)
    ),
    f!(
        "CNum",
        "num CNum(str value)",
        C::Conversion,
        "Parses a whole number (decimal, or hex written `&H…`).",
        [S],
        1,
        Some(1),
        [("CNum(\" 42 \")", "42"), ("CNum(\"&H10\")", "16"), ("CNum(\"4.2\")", "error: CNum: \"4.2\" is not a whole number")],
        Kind::Plain(cnum)
    ),
    f!(
        "CRef",
        "ref CRef(str dn)",
        C::Conversion,
        "Turns a DN string into a reference.",
        [S],
        1,
        Some(1),
        [("CRef(\"CN=Joe,DC=corp\")", "ref:CN=Joe,DC=corp")],
        Kind::Plain(cref)
    ),
    f!(
        "CStr",
        "str CStr(num|ref|bool|str value)",
        C::Conversion,
        "The value as a string; booleans as `True`/`False`.",
        [S],
        1,
        Some(1),
        [("CStr(12)", "\"12\""), ("CStr(1=1)", "\"True\"")],
        Kind::Plain(cstr)
    ),
    f!(
        "ConvertFromBase64",
        "str ConvertFromBase64(str value [, enum Unicode|ASCII|UTF8])",
        C::Conversion,
        "Decodes base64 to text; the bytes are read as UTF-16LE (`Unicode`, the default), ASCII or UTF-8.",
        [S, S],
        1,
        Some(2),
        [
            ("ConvertFromBase64(\"SABlAGwAbABvACAAdwBvAHIAbABkACEA\")", "\"Hello world!\""),
            ("ConvertFromBase64(\"SGVsbG8=\", \"UTF8\")", "\"Hello\"")
        ],
        Kind::Plain(from_base64)
    ),
    f!(
        "ConvertToBase64",
        "str ConvertToBase64(str|bin value)",
        C::Conversion,
        "Encodes text as UTF-16LE and then base64; binary values (such as objectGUID) are encoded as their bytes.",
        [S],
        1,
        Some(1),
        [
            ("ConvertToBase64(\"Hello world!\")", "\"SABlAGwAbABvACAAdwBvAHIAbABkACEA\""),
            ("ConvertToBase64(CGuid(\"00112233-4455-6677-8899-aabbccddeeff\"))", "\"MyIRAFVEd2aImaq7zN3u/w==\"")
        ],
        Kind::Plain(to_base64)
    ),
    f!(
        "ConvertFromUTF8Hex",
        "str ConvertFromUTF8Hex(str hex)",
        C::Conversion,
        "Decodes hex digits of UTF-8 bytes to text.",
        [S],
        1,
        Some(1),
        [("ConvertFromUTF8Hex(\"48656C6C6F20776F726C6421\")", "\"Hello world!\"")],
        Kind::Plain(from_utf8_hex)
    ),
    f!(
        "ConvertToUTF8Hex",
        "str ConvertToUTF8Hex(str value)",
        C::Conversion,
        "Encodes text as upper-case hex of its UTF-8 bytes (the Entra DN format).",
        [S],
        1,
        Some(1),
        [("ConvertToUTF8Hex(\"Hello world!\")", "\"48656C6C6F20776F726C6421\"")],
        Kind::Plain(to_utf8_hex)
    ),
    f!(
        "StringFromGuid",
        "str StringFromGuid(bin guid)",
        C::Conversion,
        "Formats 16 GUID bytes as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (lower case, Windows byte order).",
        [S],
        1,
        Some(1),
        [("StringFromGuid(CGuid(\"00112233-4455-6677-8899-AABBCCDDEEFF\"))", "\"00112233-4455-6677-8899-aabbccddeeff\"")],
        Kind::Plain(string_from_guid)
    ),
    f!(
        "StringFromSid",
        "str StringFromSid(bin sid)",
        C::Conversion,
        "Formats a binary SID as `S-1-…`.",
        [S],
        1,
        Some(1),
        [("StringFromSid(ConvertFromBase64Bytes(\"AQUAAAAAAAUVAAAAAQAAAAIAAAADAAAA6AMAAA==\"))", "\"S-1-5-21-1-2-3-1000\"")],
        Kind::Plain(string_from_sid)
    ),
    f!(
        "ConvertFromBase64Bytes",
        "bin ConvertFromBase64Bytes(str value)",
        C::Conversion,
        "Isthmus extension: decodes base64 to bytes (the inverse of `ConvertToBase64` on binary values).",
        [S],
        1,
        Some(1),
        [("ConvertFromBase64Bytes(\"AAH/\")", "bin:0001FF")],
        Kind::Plain(from_base64_bytes)
    ),
    // Date and time
    f!(
        "DateAdd",
        "dt DateAdd(str interval, num n, dt date)",
        C::DateTime,
        "Adds `n` intervals: `yyyy` years, `q` quarters, `m` months, `y`/`d`/`w` days, `ww` weeks, `h` hours, `n` minutes, `s` seconds.",
        [S, S, S],
        3,
        Some(3),
        [
            ("DateAdd(\"m\", 1, CDate(\"2024-01-31\"))", "2024-02-29T00:00:00Z"),
            ("DateAdd(\"ww\", -1, CDate(\"2024-01-08\"))", "2024-01-01T00:00:00Z"),
            ("DateAdd(\"yyyy\", 1, DateFromNum(129699324000000000))", "2013-01-01T23:00:00Z")
        ],
        Kind::Plain(date_add)
    ),
    f!(
        "DateFromNum",
        "dt DateFromNum(num filetime)",
        C::DateTime,
        "Turns an AD FILETIME (100-ns intervals since 1601) into a date-time.",
        [S],
        1,
        Some(1),
        [("DateFromNum(129699324000000000)", "2012-01-01T23:00:00Z")],
        Kind::Plain(date_from_num)
    ),
    f!(
        "FormatDateTime",
        "str FormatDateTime(dt date, str format)",
        C::DateTime,
        ".NET custom format: `yyyy yy MM M dd d HH H hh h mm m ss s f…fffffff tt`; quoted text and other characters are literal.",
        [S, S],
        2,
        Some(2),
        [("FormatDateTime(CDate(\"2014-09-05 08:14:53\"), \"yyyyMMddHHmmss.0Z\")", "\"20140905081453.0Z\"")],
        Kind::Plain(format_date_time)
    ),
    f!(
        "Now",
        "dt Now()",
        C::DateTime,
        "The current date-time (the start of the sync run, the same for every object in it).",
        [],
        0,
        Some(0),
        [("Now()", "2024-11-25T10:00:00Z")],
        Kind::Plain(now)
    ),
    f!(
        "NumFromDate",
        "num NumFromDate(dt date)",
        C::DateTime,
        "Turns a date-time into an AD FILETIME.",
        [S],
        1,
        Some(1),
        [("NumFromDate(CDate(\"2012-01-01 23:00\"))", "129699324000000000")],
        Kind::Plain(num_from_date)
    ),
    // Directory
    f!(
        "DNComponent",
        "str DNComponent(ref dn, num n)",
        C::Directory,
        "The value of the n-th RDN counted from the left, 1-based; Null when there is none.",
        [S, S],
        2,
        Some(2),
        [
            ("DNComponent(CRef(\"CN=Joe,OU=Sales,DC=corp\"), 1)", "\"Joe\""),
            ("DNComponent(\"CN=Joe,OU=Sales,DC=corp\", 2)", "\"Sales\""),
            ("DNComponent(\"CN=Joe\", 5)", "null")
        ],
        Kind::Plain(dn_component)
    ),
    f!(
        "DNComponentRev",
        "str DNComponentRev(ref dn, num n [, enum DC])",
        C::Directory,
        "The value of the n-th RDN counted from the right, 1-based; with `\"DC\"`, `dc=` components are skipped.",
        [S, S, S],
        2,
        Some(3),
        [
            ("DNComponentRev(\"CN=Joe,OU=Sales,OU=EU,DC=corp,DC=com\", 1)", "\"com\""),
            ("DNComponentRev(\"CN=Joe,OU=Sales,OU=EU,DC=corp,DC=com\", 1, \"DC\")", "\"EU\"")
        ],
        Kind::Plain(dn_component_rev)
    ),
    f!(
        "EscapeDNComponent",
        "str EscapeDNComponent(str rdn)",
        C::Directory,
        "Escapes the value of an RDN for use in a DN (RFC 4514); text before the first `=` is kept as the attribute type.",
        [S],
        1,
        Some(1),
        [("EscapeDNComponent(\"CN=Smith, John\")", "\"CN=Smith\\\\, John\""), ("EscapeDNComponent(\"#1 a+b\")", "\"\\\\#1 a\\\\+b\"")],
        Kind::Plain(escape_dn_component)
    ),
    // Evaluation
    f!(
        "IsBitSet",
        "bool IsBitSet(num value, num flag)",
        C::Evaluation,
        "True when any bit of `flag` is set in `value` (the flag is a bit value, not an index).",
        [S, S],
        2,
        Some(2),
        [("IsBitSet(&HF, 4)", "True"), ("IsBitSet(512, 2)", "False")],
        Kind::Plain(is_bit_set)
    ),
    f!(
        "IsDate",
        "bool IsDate(var value)",
        C::Evaluation,
        "True when `CDate` would succeed.",
        [S],
        1,
        Some(1),
        [("IsDate(\"2024-01-01\")", "True"), ("IsDate(\"no\")", "False")],
        Kind::Plain(is_date)
    ),
    f!(
        "IsEmpty",
        "bool IsEmpty(var value)",
        C::Evaluation,
        "True when the value is present but an empty string.",
        [W],
        1,
        Some(1),
        [("IsEmpty(\"\")", "True"), ("IsEmpty(NULL)", "False")],
        Kind::Plain(is_empty)
    ),
    f!(
        "IsGuid",
        "bool IsGuid(str value)",
        C::Evaluation,
        "True when `CGuid` would succeed.",
        [S],
        1,
        Some(1),
        [("IsGuid(\"{00112233-4455-6677-8899-aabbccddeeff}\")", "True"), ("IsGuid(\"0011\")", "False")],
        Kind::Plain(is_guid)
    ),
    f!(
        "IsNull",
        "bool IsNull(var value)",
        C::Evaluation,
        "True when the attribute is absent.",
        [W],
        1,
        Some(1),
        [("IsNull([missing])", "True"), ("IsNull(\"\")", "False")],
        Kind::Plain(is_null)
    ),
    f!(
        "IsNullOrEmpty",
        "bool IsNullOrEmpty(var value)",
        C::Evaluation,
        "True when the attribute is absent or an empty string.",
        [W],
        1,
        Some(1),
        [("IsNullOrEmpty(\"\")", "True"), ("IsNullOrEmpty([mail])", "False")],
        Kind::Plain(is_null_or_empty)
    ),
    f!(
        "IsNumeric",
        "bool IsNumeric(var value)",
        C::Evaluation,
        "True when `CNum` would succeed.",
        [S],
        1,
        Some(1),
        [("IsNumeric(\"12\")", "True"), ("IsNumeric(\"1x\")", "False")],
        Kind::Plain(is_numeric)
    ),
    f!(
        "IsPresent",
        "bool IsPresent(var value)",
        C::Evaluation,
        "True when the value is neither absent nor an empty string; the inverse of `IsNullOrEmpty`.",
        [W],
        1,
        Some(1),
        [("IsPresent([mail])", "True"), ("IsPresent([missing])", "False")],
        Kind::Plain(is_present)
    ),
    f!(
        "IsString",
        "bool IsString(var value)",
        C::Evaluation,
        "True when `CStr` would succeed.",
        [S],
        1,
        Some(1),
        [("IsString(1)", "True"), ("IsString(NULL)", "False")],
        Kind::Plain(is_string)
    ),
    // Math
    f!("BitAnd", "num BitAnd(num a, num b)", C::Math, "Bitwise AND.", [S, S], 2, Some(2), [("BitAnd(&HF, 6)", "6")], Kind::Plain(bit_and)),
    f!("BitOr", "num BitOr(num a, num b)", C::Math, "Bitwise OR.", [S, S], 2, Some(2), [("BitOr(512, 2)", "514")], Kind::Plain(bit_or)),
    f!(
        "RandomNum",
        "num RandomNum(num start, num end)",
        C::Math,
        "A random whole number from `start` to `end`, both included.",
        [S, S],
        2,
        Some(2),
        [("RandomNum(5, 5)", "5"), ("RandomNum(5, 1)", "error: RandomNum: start 5 is after end 1")],
        Kind::Plain(random_num)
    ),
    // Multi-valued
    f!(
        "Contains",
        "num Contains(mvstr values, str search [, enum CaseInsensitive|CaseSensitive])",
        C::MultiValued,
        "The 1-based index of the first value containing `search`, 0 if none. Case-sensitive unless told otherwise; references must match exactly.",
        [W, S, S],
        2,
        Some(3),
        [
            ("Contains([proxyAddresses], \"SMTP:\")", "1"),
            ("Contains([proxyAddresses], \"sip:\", \"CaseInsensitive\")", "3"),
            ("Contains([proxyAddresses], \"x400\")", "0")
        ],
        Kind::Plain(contains)
    ),
    f!(
        "Count",
        "num Count(mvstr values)",
        C::MultiValued,
        "The number of values; 0 when absent.",
        [W],
        1,
        Some(1),
        [("Count([proxyAddresses])", "3"), ("Count([missing])", "0")],
        Kind::Plain(count)
    ),
    f!(
        "Item",
        "var Item(mvstr values, num index)",
        C::MultiValued,
        "The value at a 1-based index; out of bounds is an error, except on an absent attribute, which gives Null.",
        [W, S],
        2,
        Some(2),
        [
            ("Item([proxyAddresses], 2)", "\"smtp:ann@mail.example\""),
            ("Item([proxyAddresses], 9)", "error: Item: index 9 is outside 1..3"),
            ("Item([missing], 1)", "null")
        ],
        Kind::Plain(item)
    ),
    f!(
        "ItemOrNull",
        "var ItemOrNull(mvstr values, num index)",
        C::MultiValued,
        "The value at a 1-based index; Null when out of bounds.",
        [W, S],
        2,
        Some(2),
        [("ItemOrNull([proxyAddresses], 9)", "null")],
        Kind::Plain(item_or_null)
    ),
    f!(
        "Join",
        "str Join(mvstr values [, str delimiter])",
        C::MultiValued,
        "Joins values with `delimiter` (a space by default; `\"\"` for none).",
        [W, S],
        1,
        Some(2),
        [
            ("Join([proxyAddresses], \",\")", "\"SMTP:ann@corp.example,smtp:ann@mail.example,SIP:ann@corp.example\""),
            ("Join(Split(\"a b\", \" \"))", "\"a b\"")
        ],
        Kind::Plain(join)
    ),
    f!(
        "RemoveDuplicates",
        "mvstr RemoveDuplicates(mvstr values)",
        C::MultiValued,
        "The values with exact duplicates removed, first occurrence kept.",
        [W],
        1,
        Some(1),
        [("RemoveDuplicates(Split(\"a,b,a\", \",\"))", "[\"a\", \"b\"]")],
        Kind::Plain(remove_duplicates)
    ),
    f!(
        "Split",
        "mvstr Split(str value, str delimiter [, num limit])",
        C::MultiValued,
        "Splits at a single-character delimiter, into at most `limit` parts when given.",
        [S, S, S],
        2,
        Some(3),
        [
            ("Split(\"a,b,c\", \",\")", "[\"a\", \"b\", \"c\"]"),
            ("Split(\"a,b,c\", \",\", 2)", "[\"a\", \"b,c\"]"),
            ("Split(\"a\", \"::\")", "error: Split: the delimiter must be one character, not \"::\"")
        ],
        Kind::Plain(split)
    ),
    // Program flow
    f!(
        "Coalesce",
        "var Coalesce(var value, …)",
        C::ProgramFlow,
        "Isthmus extension: the first argument that is present (not Null, not an empty string).",
        [W],
        1,
        None,
        [("Coalesce([missing], \"\", [mail])", "\"ann@corp.example\"")],
        Kind::Plain(coalesce)
    ),
    f!(
        "CheckSourceAnchor",
        "str CheckSourceAnchor(str value)",
        C::ProgramFlow,
        "Isthmus extension: the value, when Entra would take it as the sourceAnchor from a custom source attribute (fewer than 60 characters, each one other than a-z, A-Z, 0-9 counting as 3; none of \\ ! # $ % & * + / = ? ^ ` { } | ~ < > ( ) ' ; : , [ ] \" @ _); otherwise an error on the object that names the problem. Null stays Null.",
        [S],
        1,
        Some(1),
        [
            ("CheckSourceAnchor(\"E-12345\")", "\"E-12345\""),
            (
                "CheckSourceAnchor(\"ann@corp\")",
                "error: CheckSourceAnchor: the sourceAnchor \"ann@corp\" contains '@', which Entra does not allow"
            ),
            (
                "CheckSourceAnchor(\"x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x\")",
                "error: CheckSourceAnchor: the sourceAnchor \"x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x\" counts 61 characters (each one other than a-z, A-Z, 0-9 counts 3); it must be fewer than 60"
            ),
        ],
        Kind::Plain(check_source_anchor)
    ),
    f!(
        "Error",
        "void Error(str message)",
        C::ProgramFlow,
        "Stops the flow with a custom error on the object.",
        [S],
        1,
        Some(1),
        [("Error(\"no anchor\")", "error: no anchor")],
        Kind::Plain(error)
    ),
    f!(
        "IIF",
        "var IIF(exp condition, var then, var else)",
        C::ProgramFlow,
        "`then` when the condition is true, else `else`; only the chosen branch is evaluated (unless the condition is multi-valued, which pairs values).",
        [S, W, W],
        3,
        Some(3),
        [
            ("IIF(IsPresent([mail]), [mail], Error(\"no mail\"))", "\"ann@corp.example\""),
            (
                "IIF(InStr([proxyAddresses], \"SIP:\") = 1, NULL, [proxyAddresses])",
                "[\"SMTP:ann@corp.example\", \"smtp:ann@mail.example\"]"
            )
        ],
        Kind::Special
    ),
    f!(
        "ImportedValue",
        "var ImportedValue(str attributeName)",
        C::ProgramFlow,
        "The attribute's value as last confirmed by an import (not a pending export). The name is a string literal.",
        [S],
        1,
        Some(1),
        [("ImportedValue(\"mail\")", "\"ann@corp.example\"")],
        Kind::Special
    ),
    f!(
        "Select",
        "mvattr Select($item, mvattr values, exp transform)",
        C::ProgramFlow,
        "Maps every value through `transform`, with `$item` bound to the value; Null results are dropped.",
        [W, W, W],
        3,
        Some(3),
        [("Select($p, [proxyAddresses], LCase($p))", "[\"smtp:ann@corp.example\", \"smtp:ann@mail.example\", \"sip:ann@corp.example\"]")],
        Kind::Special
    ),
    f!(
        "Switch",
        "var Switch(exp condition1, var value1, …)",
        C::ProgramFlow,
        "The value paired with the first true condition; Null when none is true. All arguments are evaluated; an unpaired argument is an error.",
        [W],
        2,
        None,
        [
            ("Switch(1=2, \"a\", 2=2, \"b\")", "\"b\""),
            ("Switch(1=2, \"a\")", "null"),
            ("Switch(True, \"a\", False)", "error: Switch: arguments must come in condition/value pairs, got 3")
        ],
        Kind::Plain(switch)
    ),
    f!(
        "Where",
        "mvattr Where($item, mvattr values, exp condition)",
        C::ProgramFlow,
        "The values for which `condition` is true, with `$item` bound to each value.",
        [W, W, W],
        3,
        Some(3),
        [("Where($p, [proxyAddresses], Left($p, 5) = \"smtp:\")", "[\"smtp:ann@mail.example\"]")],
        Kind::Special
    ),
    f!(
        "With",
        "var With($var, exp value, exp body)",
        C::ProgramFlow,
        "Evaluates `value` once, binds it to `$var` and evaluates `body`.",
        [W, W, W],
        3,
        Some(3),
        [("With($m, LCase([mail]), $m & \";\" & $m)", "\"ann@corp.example;ann@corp.example\"")],
        Kind::Special
    ),
    // Text
    f!(
        "Format",
        "str Format(str template, var value, …)",
        C::Text,
        "Isthmus extension: replaces `{0}`, `{1}` … in the template with the values; `{{` and `}}` are literal braces.",
        [S, W],
        1,
        None,
        [("Format(\"{1}, {0}\", \"Ann\", \"Lee\")", "\"Lee, Ann\""), ("Format(\"{2}\", 1)", "error: Format: {2} has no value (1 given)")],
        Kind::Plain(format_fn)
    ),
    f!("Guid", "str Guid()", C::Text, "A new random GUID string.", [], 0, Some(0), [("Len(Guid())", "36")], Kind::Plain(guid)),
    f!(
        "InStr",
        "num InStr(str value, str match [, num start [, enum vbTextCompare|vbBinaryCompare]])",
        C::Text,
        "The 1-based position of `match` at or after `start`, 0 if absent; `vbTextCompare` ignores case.",
        [S, S, S, S],
        2,
        Some(4),
        [
            ("InStr(\"The quick brown fox\", \"quick\")", "5"),
            ("InStr(\"abcabc\", \"B\", 3, \"vbTextCompare\")", "5"),
            ("InStr(\"abc\", \"z\")", "0")
        ],
        Kind::Plain(instr)
    ),
    f!(
        "InStrRev",
        "num InStrRev(str value, str match [, num start [, enum vbTextCompare|vbBinaryCompare]])",
        C::Text,
        "The 1-based position of the last `match` that ends at or before `start` (default: the end), 0 if absent.",
        [S, S, S, S],
        2,
        Some(4),
        [("InStrRev(\"abbcdbbbef\", \"bb\")", "7"), ("InStrRev(\"abbcdbbbef\", \"bb\", 6)", "2")],
        Kind::Plain(instr_rev)
    ),
    f!("LCase", "str LCase(str value)", C::Text, "Lower case.", [S], 1, Some(1), [("LCase(\"AbC\")", "\"abc\"")], Kind::Plain(lcase)),
    f!(
        "Left",
        "str Left(str value, num n)",
        C::Text,
        "The first `n` characters; `n` = 0 gives \"\", `n` < 0 gives the input, Null gives \"\".",
        [S, S],
        2,
        Some(2),
        [("Left(\"John Doe\", 3)", "\"Joh\""), ("Left(\"John\", -1)", "\"John\""), ("Left(NULL, 2)", "\"\"")],
        Kind::Plain(left)
    ),
    f!("Len", "num Len(str value)", C::Text, "The number of characters.", [S], 1, Some(1), [("Len(\"Åsa\")", "3")], Kind::Plain(len)),
    f!(
        "LTrim",
        "str LTrim(str value)",
        C::Text,
        "Removes leading white space.",
        [S],
        1,
        Some(1),
        [("LTrim(\"  a \")", "\"a \"")],
        Kind::Plain(ltrim)
    ),
    f!(
        "Mid",
        "str Mid(str value, num start, num n)",
        C::Text,
        "`n` characters from the 1-based `start`. `n` = 0 gives \"\"; `n` < 0, `start` ≤ 0 or `start` past the end give the input; Null gives \"\".",
        [S, S, S],
        3,
        Some(3),
        [("Mid(\"John Doe\", 3, 5)", "\"hn Do\""), ("Mid(\"John\", 9, 1)", "\"John\""), ("Mid(\"John\", 2, 0)", "\"\"")],
        Kind::Plain(mid)
    ),
    f!(
        "PadLeft",
        "str PadLeft(str value, num length, str padChar)",
        C::Text,
        "Pads on the left with `padChar` to `length` characters; Null gives \"\".",
        [S, S, S],
        3,
        Some(3),
        [("PadLeft(\"7\", 3, \"0\")", "\"007\"")],
        Kind::Plain(pad_left)
    ),
    f!(
        "PadRight",
        "str PadRight(str value, num length, str padChar)",
        C::Text,
        "Pads on the right with `padChar` to `length` characters; Null gives \"\".",
        [S, S, S],
        3,
        Some(3),
        [("PadRight(\"7\", 3, \"_\")", "\"7__\"")],
        Kind::Plain(pad_right)
    ),
    f!(
        "PCase",
        "str PCase(str value)",
        C::Text,
        "Capitalises the first letter of each word and lower-cases the rest; words in all capitals are left alone.",
        [S],
        1,
        Some(1),
        [("PCase(\"hello wORLD from NASA\")", "\"Hello World From NASA\"")],
        Kind::Plain(pcase)
    ),
    f!(
        "Replace",
        "str Replace(str value, str old, str new)",
        C::Text,
        "Replaces every `old` with `new`; `\\n`, `\\r` and `\\t` in `old` and `new` mean newline, carriage return and tab.",
        [S, S, S],
        3,
        Some(3),
        [("Replace(\"a-b-c\", \"-\", \".\")", "\"a.b.c\""), ("Replace(\"a b\", \" \", \"\\n\")", "\"a\\nb\"")],
        Kind::Plain(replace)
    ),
    f!(
        "ReplaceChars",
        "str ReplaceChars(str value, str pattern)",
        C::Text,
        "Replaces single characters per a `a:b,c:d` pattern (the target may be longer or empty); white space in the pattern is ignored.",
        [S, S],
        2,
        Some(2),
        [
            ("ReplaceChars(\"Åsa Öst\", \"Å:A, Ö:O\")", "\"Asa Ost\""),
            ("ReplaceChars(\"ä\", \"ä:ae\")", "\"ae\""),
            ("ReplaceChars(\"a\", \"ab:c\")", "error: ReplaceChars: \"ab:c\" must map exactly one character")
        ],
        Kind::Plain(replace_chars)
    ),
    f!(
        "Right",
        "str Right(str value, num n)",
        C::Text,
        "The last `n` characters; same rules as `Left`.",
        [S, S],
        2,
        Some(2),
        [("Right(\"John Doe\", 3)", "\"Doe\"")],
        Kind::Plain(right)
    ),
    f!(
        "RTrim",
        "str RTrim(str value)",
        C::Text,
        "Removes trailing white space.",
        [S],
        1,
        Some(1),
        [("RTrim(\" a  \")", "\" a\"")],
        Kind::Plain(rtrim)
    ),
    f!(
        "Trim",
        "str Trim(str value)",
        C::Text,
        "Removes leading and trailing white space; on a multi-valued attribute, from each value.",
        [S],
        1,
        Some(1),
        [("Trim(\"  a b \")", "\"a b\"")],
        Kind::Plain(trim)
    ),
    f!(
        "UCase",
        "str UCase(str value)",
        C::Text,
        "Upper case.",
        [S],
        1,
        Some(1),
        [("UCase(\"straße\")", "\"STRASSE\"")],
        Kind::Plain(ucase)
    ),
    f!(
        "Word",
        "str Word(str value, num n, str delimiters)",
        C::Text,
        "The n-th word (1-based), where any character of `delimiters` separates words and runs of them count once; \"\" when there is no such word or `n` < 1.",
        [S, S, S],
        3,
        Some(3),
        [
            ("Word(\"The quick brown fox\", 3, \" \")", "\"brown\""),
            ("Word(\"a,,b;c\", 2, \",;\")", "\"b\""),
            ("Word(\"a b\", 0, \" \")", "\"\"")
        ],
        Kind::Plain(word)
    ),
];

// ---- coercions -------------------------------------------------------------------------

fn text(value: &Value, what: &str) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Str(text) | Value::Ref(text) => Ok(Some(text.clone())),
        Value::Num(_) | Value::Bool(_) | Value::Date(_) => Ok(Some(value.to_string())),
        other => Err(format!("{what} must be a string, not {}", other.type_name())),
    }
}

fn text_or_empty(value: &Value, what: &str) -> Result<String, String> {
    Ok(text(value, what)?.unwrap_or_default())
}

fn number(value: &Value, what: &str) -> Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Num(number) => Ok(Some(*number)),
        Value::Str(text) => parse_number(text).map(Some).ok_or_else(|| format!("{what} must be a number, not \"{text}\"")),
        other => Err(format!("{what} must be a number, not {}", other.type_name())),
    }
}

fn required_number(value: &Value, what: &str) -> Result<i64, String> {
    number(value, what)?.ok_or_else(|| format!("{what} must be a number, not null"))
}

fn parse_number(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Some(hex) = text.strip_prefix("&H").or_else(|| text.strip_prefix("&h")) {
        return u64::from_str_radix(hex, 16).ok().map(|value| value as i64);
    }
    text.parse().ok()
}

fn boolean(value: &Value) -> Result<Option<bool>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(flag) => Ok(Some(*flag)),
        Value::Num(number) => Ok(Some(*number != 0)),
        Value::Str(text) => {
            let trimmed = text.trim();
            if trimmed.eq_ignore_ascii_case("true") {
                Ok(Some(true))
            } else if trimmed.eq_ignore_ascii_case("false") {
                Ok(Some(false))
            } else {
                parse_number(trimmed).map(|number| Some(number != 0)).ok_or_else(|| format!("\"{text}\" is not a boolean"))
            }
        }
        other => Err(format!("{} is not a boolean", other.type_name())),
    }
}

fn date(value: &Value, what: &str) -> Result<Option<DateTime>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Date(instant) => Ok(Some(*instant)),
        Value::Str(text) if what.is_empty() => time::parse(text).map(Some).ok_or_else(|| format!("\"{text}\" is not a date")),
        Value::Str(text) => time::parse(text).map(Some).ok_or_else(|| format!("{what}: \"{text}\" is not a date")),
        other => Err(format!("{what} must be a date-time, not {}", other.type_name())),
    }
}

fn bytes(value: &Value, what: &str) -> Result<Option<Vec<u8>>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bin(bytes) => Ok(Some(bytes.clone())),
        other => Err(format!("{what} must be binary, not {}", other.type_name())),
    }
}

fn arg(args: &[Value], index: usize) -> &Value {
    args.get(index).unwrap_or(&Value::Null)
}

/// Converts to a boolean for conditions (`IIF`, `Switch`, `Where`, `&&`, `||`); Null is false.
pub(crate) fn truthy(value: &Value) -> Result<bool, String> {
    Ok(boolean(value)?.unwrap_or(false))
}

// ---- conversion ------------------------------------------------------------------------

fn cbool(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(boolean(&args[0])?.map_or(Value::Null, Value::Bool))
}

fn cdate(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(date(&args[0], "")?.map_or(Value::Null, Value::Date))
}

fn parse_guid(text: &str) -> Option<Vec<u8>> {
    let inner = text.trim();
    let inner = inner.strip_prefix('{').and_then(|rest| rest.strip_suffix('}')).unwrap_or(inner);
    let groups: Vec<&str> = inner.split('-').collect();
    if groups.iter().map(|group| group.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut raw = Vec::with_capacity(16);
    for index in 0..16 {
        raw.push(u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?);
    }
    // The first three groups are little-endian in the byte form.
    raw[0..4].reverse();
    raw[4..6].reverse();
    raw[6..8].reverse();
    Some(raw)
}

fn cguid(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    match text(&args[0], "value")? {
        None => Ok(Value::Null),
        Some(text) => parse_guid(&text).map(Value::Bin).ok_or_else(|| format!("\"{text}\" is not a GUID")),
    }
}

fn cnum(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    match &args[0] {
        Value::Str(text) => parse_number(text).map(Value::Num).ok_or_else(|| format!("\"{text}\" is not a whole number")),
        Value::Bool(flag) => Ok(Value::Num(i64::from(*flag))),
        other => Ok(number(other, "value")?.map_or(Value::Null, Value::Num)),
    }
}

fn cref(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(text(&args[0], "dn")?.map_or(Value::Null, Value::Ref))
}

fn cstr(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(text(&args[0], "value")?.map_or(Value::Null, Value::Str))
}

fn from_base64(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(encoded) = text(&args[0], "value")? else {
        return Ok(Value::Null);
    };
    let raw = BASE64.decode(encoded.trim()).map_err(|err| format!("\"{encoded}\" is not base64: {err}"))?;
    let encoding = text(arg(args, 1), "encoding")?.unwrap_or_else(|| "Unicode".into());
    let decoded = match encoding.as_str() {
        "Unicode" => {
            if raw.len() % 2 != 0 {
                return Err("the bytes are not UTF-16 (odd length)".into());
            }
            let units: Vec<u16> = raw.chunks_exact(2).map(|pair| u16::from_le_bytes([pair[0], pair[1]])).collect();
            String::from_utf16(&units).map_err(|_| "the bytes are not UTF-16".to_string())?
        }
        "UTF8" => String::from_utf8(raw).map_err(|_| "the bytes are not UTF-8".to_string())?,
        "ASCII" => {
            if !raw.is_ascii() {
                return Err("the bytes are not ASCII".into());
            }
            raw.iter().map(|&byte| byte as char).collect()
        }
        other => {
            return Err(format!("unknown encoding \"{other}\" (Unicode, ASCII or UTF8)"));
        }
    };
    Ok(Value::Str(decoded))
}

fn from_base64_bytes(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(encoded) = text(&args[0], "value")? else {
        return Ok(Value::Null);
    };
    BASE64.decode(encoded.trim()).map(Value::Bin).map_err(|err| format!("\"{encoded}\" is not base64: {err}"))
}

fn to_base64(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    match &args[0] {
        Value::Null => Ok(Value::Null),
        Value::Bin(raw) => Ok(Value::Str(BASE64.encode(raw))),
        other => {
            let text = text_or_empty(other, "value")?;
            let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
            Ok(Value::Str(BASE64.encode(utf16)))
        }
    }
}

fn from_utf8_hex(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(hex) = text(&args[0], "value")? else {
        return Ok(Value::Null);
    };
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return Err(format!("\"{hex}\" is not hex bytes"));
    }
    let raw = (0..hex.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&hex[index..index + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("\"{hex}\" is not hex bytes"))?;
    String::from_utf8(raw).map(Value::Str).map_err(|_| format!("\"{hex}\" is not UTF-8"))
}

fn to_utf8_hex(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(text(&args[0], "value")?.map_or(Value::Null, |text| Value::Str(text.bytes().map(|byte| format!("{byte:02X}")).collect())))
}

/// Formats 16 GUID bytes (Windows byte order) as a lower-case GUID string.
pub fn guid_string(raw: &[u8]) -> Option<String> {
    if raw.len() != 16 {
        return None;
    }
    let hex = |range: std::ops::Range<usize>, reverse: bool| {
        let mut part = raw[range].to_vec();
        if reverse {
            part.reverse();
        }
        part.iter().map(|byte| format!("{byte:02x}")).collect::<String>()
    };
    Some(format!("{}-{}-{}-{}-{}", hex(0..4, true), hex(4..6, true), hex(6..8, true), hex(8..10, false), hex(10..16, false)))
}

fn string_from_guid(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(raw) = bytes(&args[0], "guid")? else {
        return Ok(Value::Null);
    };
    guid_string(&raw).map(Value::Str).ok_or_else(|| format!("a GUID has 16 bytes, not {}", raw.len()))
}

/// Formats a binary SID (revision, count, 6-byte authority, little-endian sub-authorities) in
/// its text form, `S-1-5-21-…`; `None` when the bytes are not a SID.
pub fn sid_string(raw: &[u8]) -> Option<String> {
    if raw.len() < 8 || raw.len() != 8 + 4 * usize::from(raw[1]) {
        return None;
    }
    let authority = raw[2..8].iter().fold(0u64, |acc, &byte| acc << 8 | u64::from(byte));
    let mut text = format!("S-{}-{authority}", raw[0]);
    for chunk in raw[8..].chunks_exact(4) {
        text.push_str(&format!("-{}", u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])));
    }
    Some(text)
}

fn string_from_sid(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(raw) = bytes(&args[0], "sid")? else {
        return Ok(Value::Null);
    };
    sid_string(&raw).map(Value::Str).ok_or_else(|| format!("{} bytes are not a SID", raw.len()))
}

// ---- date and time ---------------------------------------------------------------------

fn date_add(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let interval = text_or_empty(&args[0], "interval")?;
    let count = required_number(&args[1], "n")?;
    let Some(start) = date(&args[2], "date")? else {
        return Ok(Value::Null);
    };
    const SECOND: i64 = 10_000_000;
    let result = match interval.as_str() {
        "yyyy" => count.checked_mul(12).and_then(|months| start.add_months(months)),
        "q" => count.checked_mul(3).and_then(|months| start.add_months(months)),
        "m" => start.add_months(count),
        "y" | "d" | "w" => count.checked_mul(86_400 * SECOND).and_then(|ticks| start.add_ticks(ticks)),
        "ww" => count.checked_mul(7 * 86_400 * SECOND).and_then(|ticks| start.add_ticks(ticks)),
        "h" => count.checked_mul(3600 * SECOND).and_then(|ticks| start.add_ticks(ticks)),
        "n" => count.checked_mul(60 * SECOND).and_then(|ticks| start.add_ticks(ticks)),
        "s" => count.checked_mul(SECOND).and_then(|ticks| start.add_ticks(ticks)),
        other => return Err(format!("unknown interval \"{other}\"")),
    };
    result.map(Value::Date).ok_or_else(|| "the result is outside years 1-9999".into())
}

fn date_from_num(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(filetime) = number(&args[0], "filetime")? else {
        return Ok(Value::Null);
    };
    DateTime::from_filetime(filetime).map(Value::Date).ok_or_else(|| format!("{filetime} is outside years 1-9999"))
}

fn format_date_time(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(instant) = date(&args[0], "date")? else {
        return Ok(Value::Null);
    };
    Ok(Value::Str(time::format(instant, &text_or_empty(&args[1], "format")?)))
}

fn now(_: &[Value], services: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Date(services.now))
}

fn num_from_date(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(date(&args[0], "date")?.map_or(Value::Null, |instant| Value::Num(instant.to_filetime())))
}

// ---- directory -------------------------------------------------------------------------

fn rdn_values(dn_text: &str) -> Result<Vec<(String, String)>, String> {
    let dn = model::Dn::parse(dn_text).map_err(|err| format!("\"{dn_text}\" is not a DN: {err}"))?;
    Ok(dn.rdns().iter().filter_map(|rdn| rdn.pairs.first().cloned()).collect())
}

fn dn_component(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(dn) = text(&args[0], "dn")? else {
        return Ok(Value::Null);
    };
    let index = required_number(&args[1], "n")?;
    let rdns = rdn_values(&dn)?;
    Ok(usize::try_from(index - 1).ok().and_then(|index| rdns.get(index)).map_or(Value::Null, |(_, value)| Value::Str(value.clone())))
}

fn dn_component_rev(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(dn) = text(&args[0], "dn")? else {
        return Ok(Value::Null);
    };
    let index = required_number(&args[1], "n")?;
    let skip_dc = match text(arg(args, 2), "option")? {
        None => false,
        Some(option) if option.eq_ignore_ascii_case("DC") => true,
        Some(other) => return Err(format!("unknown option \"{other}\" (only \"DC\")")),
    };
    let rdns: Vec<(String, String)> =
        rdn_values(&dn)?.into_iter().filter(|(attr_type, _)| !(skip_dc && attr_type.eq_ignore_ascii_case("dc"))).collect();
    Ok(usize::try_from(index - 1)
        .ok()
        .and_then(|index| rdns.iter().rev().nth(index))
        .map_or(Value::Null, |(_, value)| Value::Str(value.clone())))
}

fn escape_dn_component(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(rdn) = text(&args[0], "rdn")? else {
        return Ok(Value::Null);
    };
    let escaped = match rdn.split_once('=') {
        Some((attr_type, value))
            if !attr_type.is_empty() && attr_type.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
        {
            format!("{attr_type}={}", model::dn::escape_value(value))
        }
        _ => model::dn::escape_value(&rdn),
    };
    Ok(Value::Str(escaped))
}

// ---- evaluation ------------------------------------------------------------------------

fn is_bit_set(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let (Some(value), Some(flag)) = (number(&args[0], "value")?, number(&args[1], "flag")?) else {
        return Ok(Value::Bool(false));
    };
    Ok(Value::Bool(value & flag != 0))
}

fn is_date(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Bool(matches!(date(&args[0], ""), Ok(Some(_)))))
}

fn is_empty(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Bool(matches!(&args[0], Value::Str(text) if text.is_empty())))
}

fn is_guid(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Bool(matches!(&args[0], Value::Str(text) if parse_guid(text).is_some())))
}

fn is_null(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Bool(args[0].is_null()))
}

fn null_or_empty(value: &Value) -> bool {
    match value {
        Value::Str(text) => text.is_empty(),
        Value::Multi(values) => values.iter().all(null_or_empty),
        other => other.is_null(),
    }
}

fn is_null_or_empty(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Bool(null_or_empty(&args[0])))
}

fn is_present(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Bool(!null_or_empty(&args[0])))
}

fn is_numeric(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Bool(matches!(number(&args[0], ""), Ok(Some(_)))))
}

fn is_string(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Bool(matches!(text(&args[0], ""), Ok(Some(_)))))
}

// ---- math ------------------------------------------------------------------------------

fn bit_and(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Num(required_number(&args[0], "a")? & required_number(&args[1], "b")?))
}

fn bit_or(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Num(required_number(&args[0], "a")? | required_number(&args[1], "b")?))
}

fn random_num(args: &[Value], services: &mut Services<'_>) -> Result<Value, String> {
    let (start, end) = (required_number(&args[0], "start")?, required_number(&args[1], "end")?);
    if start > end {
        return Err(format!("start {start} is after end {end}"));
    }
    let span = (end as i128 - start as i128 + 1) as u128;
    let offset = (u128::from((services.random)()) % span) as i128;
    Ok(Value::Num((start as i128 + offset) as i64))
}

// ---- multi-valued ----------------------------------------------------------------------

fn contains(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(search) = text(&args[1], "search")? else {
        return Ok(Value::Num(0));
    };
    let insensitive = match text(arg(args, 2), "option")?.as_deref() {
        None | Some("CaseSensitive") => false,
        Some("CaseInsensitive") => true,
        Some(other) => {
            return Err(format!("unknown option \"{other}\" (CaseInsensitive or CaseSensitive)"));
        }
    };
    let search_folded = search.to_lowercase();
    for (index, value) in args[0].clone().into_list().iter().enumerate() {
        let found = match value {
            Value::Ref(dn) => dn.eq_ignore_ascii_case(&search),
            other => {
                let candidate = text_or_empty(other, "value")?;
                if insensitive { candidate.to_lowercase().contains(&search_folded) } else { candidate.contains(&search) }
            }
        };
        if found {
            return Ok(Value::Num(index as i64 + 1));
        }
    }
    Ok(Value::Num(0))
}

fn count(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Num(args[0].clone().into_list().len() as i64))
}

fn pick(args: &[Value]) -> Result<(Vec<Value>, i64, Option<Value>), String> {
    let values = args[0].clone().into_list();
    let index = required_number(&args[1], "index")?;
    let picked = usize::try_from(index - 1).ok().and_then(|position| values.get(position).cloned());
    Ok((values, index, picked))
}

fn item(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    if args[0].is_null() {
        return Ok(Value::Null);
    }
    let (values, index, picked) = pick(args)?;
    picked.ok_or_else(|| format!("index {index} is outside 1..{}", values.len()))
}

fn item_or_null(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(pick(args)?.2.unwrap_or(Value::Null))
}

fn join(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    if args[0].is_null() {
        return Ok(Value::Null);
    }
    let delimiter = if args.len() > 1 { text_or_empty(&args[1], "delimiter")? } else { " ".into() };
    let parts = args[0].clone().into_list().iter().map(|value| text_or_empty(value, "value")).collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Str(parts.join(&delimiter)))
}

fn remove_duplicates(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let mut unique: Vec<Value> = Vec::new();
    for value in args[0].clone().into_list() {
        if !unique.contains(&value) {
            unique.push(value);
        }
    }
    Ok(if unique.is_empty() { Value::Null } else { Value::Multi(unique) })
}

fn split(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(value) = text(&args[0], "value")? else {
        return Ok(Value::Null);
    };
    let delimiter = text_or_empty(&args[1], "delimiter")?;
    let mut chars = delimiter.chars();
    let (Some(delimiter_char), None) = (chars.next(), chars.next()) else {
        return Err(format!("the delimiter must be one character, not \"{delimiter}\""));
    };
    let parts: Vec<Value> = match number(arg(args, 2), "limit")? {
        Some(limit) if limit < 1 => return Err(format!("limit must be at least 1, not {limit}")),
        Some(limit) => value.splitn(limit as usize, delimiter_char).map(Value::str).collect(),
        None => value.split(delimiter_char).map(Value::str).collect(),
    };
    Ok(Value::Multi(parts))
}

// ---- program flow ----------------------------------------------------------------------

fn coalesce(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(args.iter().find(|value| !null_or_empty(value)).cloned().unwrap_or(Value::Null))
}

/// Characters Entra refuses in a sourceAnchor taken from a custom attribute.
const ANCHOR_FORBIDDEN: &str = "\\!#$%&*+/=?^`{}|~<>()';:,[]\"@_";

fn check_source_anchor(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(value) = text(&args[0], "value")? else { return Ok(Value::Null) };
    if let Some(bad) = value.chars().find(|c| ANCHOR_FORBIDDEN.contains(*c) || c.is_control()) {
        return Err(format!("the sourceAnchor {value:?} contains {bad:?}, which Entra does not allow"));
    }
    let counted: usize = value.chars().map(|c| if c.is_ascii_alphanumeric() { 1 } else { 3 }).sum();
    if counted >= 60 {
        return Err(format!(
            "the sourceAnchor {value:?} counts {counted} characters (each one other than a-z, A-Z, 0-9 counts 3); it must be fewer than 60"
        ));
    }
    if value.is_empty() {
        return Err("the sourceAnchor is empty".into());
    }
    Ok(Value::Str(value))
}

fn error(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Err(text_or_empty(&args[0], "message")?)
}

fn switch(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    if !args.len().is_multiple_of(2) {
        return Err(format!("arguments must come in condition/value pairs, got {}", args.len()));
    }
    for pair in args.chunks_exact(2) {
        if truthy(&pair[0])? {
            return Ok(pair[1].clone());
        }
    }
    Ok(Value::Null)
}

// ---- text ------------------------------------------------------------------------------

fn format_fn(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let template = text_or_empty(&args[0], "template")?;
    let values = &args[1..];
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let digits: String = std::iter::from_fn(|| chars.next_if(char::is_ascii_digit)).collect();
                if chars.next() != Some('}') || digits.is_empty() {
                    return Err(format!("bad placeholder in \"{template}\": write {{0}}, {{1}} …"));
                }
                let index: usize = digits.parse().map_err(|_| format!("placeholder {{{digits}}} is too large"))?;
                let value = values.get(index).ok_or_else(|| format!("{{{index}}} has no value ({} given)", values.len()))?;
                out.push_str(&value.to_string());
            }
            other => out.push(other),
        }
    }
    Ok(Value::Str(out))
}

fn guid(_: &[Value], services: &mut Services<'_>) -> Result<Value, String> {
    let mut raw: Vec<u8> = (services.random)().to_le_bytes().into_iter().chain((services.random)().to_le_bytes()).collect();
    raw[7] = (raw[7] & 0x0f) | 0x40; // version 4 (the high nibble of the third group)
    raw[8] = (raw[8] & 0x3f) | 0x80; // RFC 4122 variant
    Ok(Value::Str(guid_string(&raw).unwrap_or_default()))
}

fn compare_mode(value: &Value) -> Result<bool, String> {
    match text(value, "compare")?.as_deref() {
        None | Some("vbBinaryCompare") => Ok(false),
        Some("vbTextCompare") => Ok(true),
        Some(other) => Err(format!("unknown compare \"{other}\" (vbTextCompare or vbBinaryCompare)")),
    }
}

fn fold(text: &str, ignore_case: bool) -> Vec<char> {
    if ignore_case { text.chars().flat_map(char::to_lowercase).collect() } else { text.chars().collect() }
}

fn instr(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let haystack = text_or_empty(&args[0], "value")?;
    let needle = text_or_empty(&args[1], "match")?;
    let start = number(arg(args, 2), "start")?.unwrap_or(1);
    if start < 1 {
        return Err(format!("start must be at least 1, not {start}"));
    }
    let ignore_case = compare_mode(arg(args, 3))?;
    let (hay, pin) = (fold(&haystack, ignore_case), fold(&needle, ignore_case));
    let first = (start - 1) as usize;
    if pin.is_empty() {
        return Ok(Value::Num(if first <= hay.len() { start } else { 0 }));
    }
    let found = (first..hay.len().saturating_sub(pin.len() - 1)).find(|&at| hay[at..at + pin.len()] == pin[..]);
    Ok(Value::Num(found.map_or(0, |at| at as i64 + 1)))
}

fn instr_rev(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let haystack = text_or_empty(&args[0], "value")?;
    let needle = text_or_empty(&args[1], "match")?;
    let ignore_case = compare_mode(arg(args, 3))?;
    let (hay, pin) = (fold(&haystack, ignore_case), fold(&needle, ignore_case));
    let end = match number(arg(args, 2), "start")? {
        None | Some(-1) => hay.len(),
        Some(start) if start < 1 => return Err(format!("start must be at least 1, not {start}")),
        Some(start) => (start as usize).min(hay.len()),
    };
    if pin.is_empty() || pin.len() > end {
        return Ok(Value::Num(0));
    }
    let found = (0..=end - pin.len()).rev().find(|&at| hay[at..at + pin.len()] == pin[..]);
    Ok(Value::Num(found.map_or(0, |at| at as i64 + 1)))
}

fn lcase(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(text(&args[0], "value")?.map_or(Value::Null, |text| Value::Str(text.to_lowercase())))
}

fn ucase(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(text(&args[0], "value")?.map_or(Value::Null, |text| Value::Str(text.to_uppercase())))
}

fn left(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let value = text_or_empty(&args[0], "value")?;
    let n = required_number(&args[1], "n")?;
    Ok(Value::Str(if n < 0 { value } else { value.chars().take(n as usize).collect() }))
}

fn right(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let value = text_or_empty(&args[0], "value")?;
    let n = required_number(&args[1], "n")?;
    if n < 0 {
        return Ok(Value::Str(value));
    }
    let length = value.chars().count();
    Ok(Value::Str(value.chars().skip(length.saturating_sub(n as usize)).collect()))
}

fn mid(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let value = text_or_empty(&args[0], "value")?;
    let start = required_number(&args[1], "start")?;
    let n = required_number(&args[2], "n")?;
    let length = value.chars().count() as i64;
    if n == 0 {
        return Ok(Value::str(""));
    }
    if n < 0 || start <= 0 || start > length {
        return Ok(Value::Str(value));
    }
    Ok(Value::Str(value.chars().skip(start as usize - 1).take(n as usize).collect()))
}

fn len(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(Value::Num(text_or_empty(&args[0], "value")?.chars().count() as i64))
}

fn ltrim(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(text(&args[0], "value")?.map_or(Value::Null, |text| Value::str(text.trim_start())))
}

fn rtrim(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(text(&args[0], "value")?.map_or(Value::Null, |text| Value::str(text.trim_end())))
}

fn trim(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    Ok(text(&args[0], "value")?.map_or(Value::Null, |text| Value::str(text.trim())))
}

fn pad(args: &[Value], on_left: bool) -> Result<Value, String> {
    let Some(value) = text(&args[0], "value")? else {
        return Ok(Value::str(""));
    };
    let length = required_number(&args[1], "length")?;
    let pad_text = text_or_empty(&args[2], "padChar")?;
    let mut pad_chars = pad_text.chars();
    let (Some(pad_char), None) = (pad_chars.next(), pad_chars.next()) else {
        return Err(format!("padChar must be one character, not \"{pad_text}\""));
    };
    let missing = usize::try_from(length).unwrap_or(0).saturating_sub(value.chars().count());
    let padding: String = std::iter::repeat_n(pad_char, missing).collect();
    Ok(Value::Str(if on_left { padding + &value } else { value + &padding }))
}

fn pad_left(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    pad(args, true)
}

fn pad_right(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    pad(args, false)
}

fn pcase(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(value) = text(&args[0], "value")? else {
        return Ok(Value::Null);
    };
    let mut out = String::with_capacity(value.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let all_caps = word.chars().any(char::is_alphabetic) && !word.chars().any(char::is_lowercase);
        if all_caps && word.chars().filter(|c| c.is_alphabetic()).count() > 1 {
            out.push_str(word);
        } else {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.extend(chars.flat_map(char::to_lowercase));
            }
        }
        word.clear();
    };
    for c in value.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    Ok(Value::Str(out))
}

fn unescape_controls(text: &str) -> String {
    text.replace("\\n", "\n").replace("\\r", "\r").replace("\\t", "\t")
}

fn replace(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(value) = text(&args[0], "value")? else {
        return Ok(Value::Null);
    };
    let old = unescape_controls(&text_or_empty(&args[1], "old")?);
    if old.is_empty() {
        return Ok(Value::Str(value));
    }
    let new = unescape_controls(&text_or_empty(&args[2], "new")?);
    Ok(Value::Str(value.replace(&old, &new)))
}

fn replace_chars(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let Some(value) = text(&args[0], "value")? else {
        return Ok(Value::Null);
    };
    let pattern = text_or_empty(&args[1], "pattern")?;
    let mut map: Vec<(char, String)> = Vec::new();
    for pair in pattern.split(',') {
        let compact: String = pair.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.is_empty() {
            continue;
        }
        let Some((from, to)) = compact.split_once(':') else {
            return Err(format!("\"{pair}\" must be written source:target"));
        };
        let mut from_chars = from.chars();
        let (Some(source), None) = (from_chars.next(), from_chars.next()) else {
            return Err(format!("\"{pair}\" must map exactly one character"));
        };
        map.push((source, to.to_string()));
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match map.iter().find(|(source, _)| *source == c) {
            Some((_, target)) => out.push_str(target),
            None => out.push(c),
        }
    }
    Ok(Value::Str(out))
}

fn word(args: &[Value], _: &mut Services<'_>) -> Result<Value, String> {
    let value = text_or_empty(&args[0], "value")?;
    let n = required_number(&args[1], "n")?;
    let delimiters = text_or_empty(&args[2], "delimiters")?;
    if n < 1 {
        return Ok(Value::str(""));
    }
    let found = value.split(|c| delimiters.contains(c)).filter(|part| !part.is_empty()).nth(n as usize - 1);
    Ok(Value::str(found.unwrap_or("")))
}
