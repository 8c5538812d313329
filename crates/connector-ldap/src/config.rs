//! What an LDAP connector is told: where the directory is, how to reach and trust it, how to
//! bind, and which part of it is in scope. Deserializable (a `[[connector]]` table of the config
//! file); [`LdapConfig::validate`] names every problem before anything connects.

use std::path::PathBuf;

use serde::Deserialize;
use zeroize::Zeroizing;

/// Which kind of server: decides the anchor, the delta mechanism and the schema source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavour {
    /// Windows AD or Samba AD DC: objectGUID anchor, DirSync deltas, schema read from the directory.
    ActiveDirectory,
    /// OpenLDAP and other RFC servers: entryUUID anchor, RFC 4533 syncrepl deltas.
    Generic,
}

/// How a generic LDAP connector finds changes (Active Directory always uses DirSync).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaMode {
    /// RFC 4533 syncrepl when the server offers it (OpenLDAP's syncprov overlay), else
    /// modify timestamps.
    #[default]
    Auto,
    /// RFC 4533 content synchronization, refreshOnly, with the cookie kept as the watermark.
    Syncrepl,
    /// `modifyTimestamp` at or after the last import's start (less an overlap), then a presence
    /// pass over every entry's entryUUID to find deletes and moves.
    ModifyTimestamp,
}

/// Where the directory sits in a sync cycle (Entra's order: sources are imported and synced
/// first, targets exported first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectorRole {
    /// An on-premises source of identities (the usual case).
    #[default]
    Source,
    /// A directory Isthmus provisions into.
    Target,
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// `ldaps://` (TLS from the first byte); the default.
    #[default]
    Ldaps,
    /// `ldap://` upgraded with StartTLS before anything else is sent.
    StartTls,
    /// `ldap://` in clear text: passwords and hashes cross the network readable. Only for lab
    /// setups on a trusted wire.
    DangerPlaintext,
}

/// How the connector authenticates.
#[derive(Clone, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Bind {
    /// No bind (anonymous reads; rarely enough).
    Anonymous,
    /// LDAP simple bind over the protected connection.
    Simple {
        /// The bind DN (AD also takes `user@domain`).
        dn: String,
        /// Its password; wiped from memory when dropped, never logged.
        password: Zeroizing<String>,
    },
    /// SASL EXTERNAL: the identity of the TLS client certificate (OpenLDAP).
    SaslExternal,
}

impl std::fmt::Debug for Bind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bind::Anonymous => f.write_str("Anonymous"),
            Bind::Simple { dn, .. } => f.debug_struct("Simple").field("dn", dn).field("password", &"<redacted>").finish(),
            Bind::SaslExternal => f.write_str("SaslExternal"),
        }
    }
}

/// One LDAP connector's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// The connector id (rules and the store use it), e.g. the forest's DNS name.
    pub id: String,
    /// Server kind.
    pub flavour: Flavour,
    /// Source (default) or target.
    #[serde(default)]
    pub role: ConnectorRole,
    /// Host name or address (and `:port` if not the default).
    pub host: String,
    /// Connection protection.
    #[serde(default)]
    pub transport: Transport,
    /// PEM file of the CA(s) to trust; without it, the system's trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. Defeats TLS against an active attacker; for labs only.
    #[serde(default)]
    pub danger_accept_invalid_certs: bool,
    /// Authentication.
    pub bind: Bind,
    /// Naming contexts (domain partitions) to read; empty: the server's default naming context.
    #[serde(default)]
    pub naming_contexts: Vec<String>,
    /// Object types to import: default `user`, `group`, `contact`, `inetOrgPerson` for AD (an
    /// entry's type is its most specific class); `inetOrgPerson`, `posixAccount`,
    /// `groupOfNames`, `groupOfUniqueNames`, `posixGroup` for generic LDAP (an entry's type is
    /// the first of these it has, so a person with posixAccount is an inetOrgPerson).
    #[serde(default)]
    pub object_types: Vec<String>,
    /// Attributes to read; empty: all user attributes (`*`).
    #[serde(default)]
    pub attributes: Vec<String>,
    /// OU filtering: only objects under these containers are in scope (empty: the whole naming context).
    #[serde(default)]
    pub include_ous: Vec<String>,
    /// OU filtering: objects under these containers are out of scope (wins over `include_ous`).
    #[serde(default)]
    pub exclude_ous: Vec<String>,
    /// Group-based (pilot) filtering, Active Directory only: only direct members of this group
    /// are in scope (not members of nested groups, and not the group itself), as in Entra
    /// Connect. Applied with the other filters; the group's OU need not be in scope.
    #[serde(default)]
    pub pilot_group: Option<String>,
    /// Search page size (AD's default MaxPageSize is 1,000).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Password hash sync from this directory (`isthmus phs run`): generic LDAP servers give
    /// `sambaNTPassword`; Active Directory will give hashes over MS-DRSR.
    #[serde(default)]
    pub password_hash_sync: bool,
    /// Read `member` (when listed in `attributes`) in ranges of this many values per request
    /// (`member;range=0-1499` …), bounding the size of one answer. AD ranges past its
    /// MaxValRange (1,500) by itself; the connector completes ranged values either way.
    #[serde(default)]
    pub range_size: Option<u32>,
    /// Seconds one LDAP operation may take before the connection counts as lost.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Generic LDAP: how deltas are found.
    #[serde(default)]
    pub delta: DeltaMode,
    /// Generic LDAP with `delta = "modify-timestamp"`: seconds subtracted from the last
    /// import's start when asking for changed entries; must exceed the clock difference
    /// between this machine and the server (and replication delay between servers).
    #[serde(default = "default_overlap")]
    pub timestamp_overlap_seconds: u64,
    /// Active Directory: minutes between presence checks, a paged read of every in-scope
    /// object's objectGUID at the end of a delta import; objects it does not find are deleted.
    /// DirSync returns deleted objects (tombstones) only to accounts that may list
    /// `CN=Deleted Objects` (Samba: administrators only), so for the least-privileged sync
    /// account this check is how deletions are seen. 0 checks on every delta import.
    #[serde(default = "default_presence_check")]
    pub presence_check_minutes: u64,
}

fn default_presence_check() -> u64 {
    30
}

fn default_overlap() -> u64 {
    300
}

fn default_page_size() -> u32 {
    500
}

fn default_timeout() -> u64 {
    120
}

impl LdapConfig {
    /// A configuration with defaults: LDAPS, system trust, whole default naming context.
    pub fn new(id: &str, flavour: Flavour, host: &str, bind: Bind) -> Self {
        LdapConfig {
            id: id.into(),
            flavour,
            role: ConnectorRole::Source,
            host: host.into(),
            transport: Transport::Ldaps,
            ca_file: None,
            danger_accept_invalid_certs: false,
            bind,
            naming_contexts: Vec::new(),
            object_types: Vec::new(),
            attributes: Vec::new(),
            include_ous: Vec::new(),
            exclude_ous: Vec::new(),
            pilot_group: None,
            page_size: default_page_size(),
            password_hash_sync: false,
            range_size: None,
            timeout_seconds: default_timeout(),
            presence_check_minutes: default_presence_check(),
            delta: DeltaMode::Auto,
            timestamp_overlap_seconds: default_overlap(),
        }
    }

    /// Every problem with the settings, each naming the setting; empty when usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.id.trim().is_empty() {
            problems.push("`id` is empty".to_string());
        }
        if self.host.trim().is_empty() || self.host.contains("://") || self.host.contains('/') {
            problems.push(format!("`host` must be a host name or address with an optional :port, got {:?}", self.host));
        }
        if self.page_size == 0 || self.page_size > 100_000 {
            problems.push(format!("`page_size` must be 1–100000, got {}", self.page_size));
        }
        if self.range_size.is_some_and(|size| size < 2) {
            problems.push("`range_size` must be at least 2".to_string());
        }
        if self.flavour == Flavour::ActiveDirectory && self.delta != DeltaMode::Auto {
            problems.push("`delta` applies to generic LDAP only (Active Directory deltas use DirSync)".to_string());
        }
        if self.timestamp_overlap_seconds > 7 * 24 * 3600 {
            problems.push(format!("`timestamp_overlap_seconds` must be at most a week, got {}", self.timestamp_overlap_seconds));
        }
        if self.timeout_seconds == 0 {
            problems.push("`timeout_seconds` must be at least 1".to_string());
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            problems.push(format!("`ca_file` {} is not a readable file", ca.display()));
        }
        if self.transport == Transport::DangerPlaintext && self.danger_accept_invalid_certs {
            problems.push("`danger_accept_invalid_certs` makes no sense with `transport = \"danger-plaintext\"`".to_string());
        }
        if matches!(self.bind, Bind::SaslExternal) && self.transport == Transport::DangerPlaintext {
            problems.push("SASL EXTERNAL needs TLS (a client certificate)".to_string());
        }
        if let Bind::Simple { dn, password } = &self.bind
            && (dn.is_empty() || password.is_empty())
        {
            problems.push("a simple bind needs both `dn` and `password` (an empty password is an anonymous bind)".to_string());
        }
        if let Some(group) = &self.pilot_group {
            if self.flavour != Flavour::ActiveDirectory {
                problems.push("`pilot_group` applies to Active Directory only".to_string());
            }
            if let Err(err) = model::Dn::parse(group) {
                problems.push(format!("`pilot_group`: {group:?} is not a DN: {err}"));
            }
        }
        for (setting, dns) in
            [("include_ous", &self.include_ous), ("exclude_ous", &self.exclude_ous), ("naming_contexts", &self.naming_contexts)]
        {
            for dn in dns {
                if let Err(err) = model::Dn::parse(dn) {
                    problems.push(format!("`{setting}`: {dn:?} is not a DN: {err}"));
                }
            }
        }
        problems
    }

    /// The object types in scope, with the flavour's defaults.
    pub fn object_types(&self) -> Vec<String> {
        if !self.object_types.is_empty() {
            return self.object_types.clone();
        }
        let defaults: &[&str] = match self.flavour {
            Flavour::ActiveDirectory => &["user", "group", "contact", "inetOrgPerson"],
            Flavour::Generic => &["inetOrgPerson", "posixAccount", "groupOfNames", "groupOfUniqueNames", "posixGroup"],
        };
        defaults.iter().map(|name| name.to_string()).collect()
    }

    /// Attributes to ask for: the configured ones (all user attributes when none) and `needed`.
    pub fn requested_attributes(&self, needed: &[&str]) -> Vec<String> {
        let mut attributes = self.attributes.clone();
        if attributes.is_empty() {
            attributes.push("*".into());
        }
        for needed in needed {
            if !attributes.iter().any(|name| name.eq_ignore_ascii_case(needed)) {
                attributes.push(needed.to_string());
            }
        }
        attributes
    }

    /// Search bases: the included OUs, or else the naming contexts.
    pub fn search_bases(&self, naming_contexts: &[String]) -> Vec<String> {
        if self.include_ous.is_empty() { naming_contexts.to_vec() } else { self.include_ous.clone() }
    }

    /// Whether an object at `dn` is in scope: under a search base and under no excluded OU.
    pub fn in_scope(&self, naming_contexts: &[String], dn: &str) -> bool {
        let Ok(dn) = model::Dn::parse(dn) else { return false };
        let within = |bases: &[String]| bases.iter().any(|base| model::Dn::parse(base).is_ok_and(|base| dn.is_within(&base)));
        within(&self.search_bases(naming_contexts)) && !within(&self.exclude_ous)
    }

    /// The URL to connect to.
    pub fn url(&self) -> String {
        match self.transport {
            Transport::Ldaps => format!("ldaps://{}", self.host),
            Transport::StartTls | Transport::DangerPlaintext => format!("ldap://{}", self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_the_setting() {
        let mut config = LdapConfig::new(
            "",
            Flavour::ActiveDirectory,
            "ldaps://dc1",
            Bind::Simple { dn: "x".into(), password: Zeroizing::new(String::new()) },
        );
        config.include_ous = vec!["not a dn".into()];
        config.page_size = 0;
        let problems = config.validate().join("\n");
        for expected in ["`id`", "`host`", "`page_size`", "simple bind", "`include_ous`"] {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
        let good = LdapConfig::new("corp", Flavour::Generic, "127.0.0.1:636", Bind::Anonymous);
        assert!(good.validate().is_empty());
        assert_eq!(good.url(), "ldaps://127.0.0.1:636");
    }

    #[test]
    fn the_password_stays_out_of_debug_output() {
        let bind = Bind::Simple { dn: "CN=sync".into(), password: Zeroizing::new("hunter2".into()) };
        assert!(!format!("{bind:?}").contains("hunter2"));
    }

    #[test]
    fn parses_from_toml_and_rejects_unknown_settings() {
        let config: LdapConfig = toml::from_str(
            "id = 'corp'\nflavour = 'active-directory'\nhost = 'dc1.corp'\ntransport = 'start-tls'\n[bind]\nmethod = 'simple'\ndn = 'a'\npassword = 'b'\n",
        )
        .unwrap();
        assert_eq!((config.transport, config.page_size), (Transport::StartTls, 500));
        let err = toml::from_str::<LdapConfig>("id = 'x'\nflavour = 'generic'\nhost = 'h'\ncolour = 1\n[bind]\nmethod = 'anonymous'\n")
            .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
