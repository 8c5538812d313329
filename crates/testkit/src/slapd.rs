//! A real OpenLDAP `slapd` per test: mdb database, the syncprov overlay (for RFC 4533 syncrepl),
//! and a schema that holds `sambaNTPassword`.
//!
//! Each server gets a temporary folder, two free ports on 127.0.0.1 (LDAP and LDAPS) and a TLS
//! certificate for that address. The suffix and two OUs (`ou=people`, `ou=groups`) are loaded
//! offline with `slapadd` before start, together with any LDIF the test passes (bulk loads).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ldap3::Mod;
use tempfile::TempDir;

use crate::ldap::{Connection, attr};
use crate::net::{answers, free_port};
use crate::process::{ServerProcess, run};
use crate::tls::{TlsFiles, issue_server_cert};
use crate::{Result, io_err};

/// The suffix every test slapd serves.
pub const SUFFIX: &str = "dc=example,dc=test";
/// The root DN.
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=test";
/// The root DN's password.
pub const ADMIN_PASSWORD: &str = "Adm1n!Slapd.Test";

/// A subset of Samba's LDAP schema (OIDs under 1.3.6.1.4.1.7165), enough for password hashes.
const SAMBA_SCHEMA: &str = "\
attributetype ( 1.3.6.1.4.1.7165.2.1.24 NAME 'sambaLMPassword' EQUALITY caseIgnoreIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{32} SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.7165.2.1.25 NAME 'sambaNTPassword' EQUALITY caseIgnoreIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{32} SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.7165.2.1.26 NAME 'sambaAcctFlags' EQUALITY caseIgnoreIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{16} SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.7165.2.1.27 NAME 'sambaPwdLastSet' EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.7165.2.1.20 NAME 'sambaSID' EQUALITY caseIgnoreIA5Match SUBSTR caseExactIA5SubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{64} SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.7165.2.2.6 NAME 'sambaSamAccount' SUP top AUXILIARY MUST ( uid $ sambaSID ) MAY ( cn $ sambaLMPassword $ sambaNTPassword $ sambaPwdLastSet $ sambaAcctFlags $ displayName $ description ) )
";

/// A running slapd; stopped and deleted on drop.
#[derive(Debug)]
pub struct Slapd {
    /// `None` while stopped ([`Slapd::stop`]).
    process: Option<ServerProcess>,
    dir: TempDir,
    port: u16,
    ldaps_port: u16,
    tls: TlsFiles,
    /// How long slapd took from spawn until both ports accepted connections.
    pub ready_after: Duration,
}

/// How a test slapd is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlapdOptions {
    /// Load the syncprov overlay (RFC 4533 content synchronization).
    pub syncprov: bool,
    /// syncprov's session log of this many operations, so refreshes can name deletes instead
    /// of falling back to a present phase. `None`: no session log.
    pub session_log: Option<u32>,
}

impl Default for SlapdOptions {
    fn default() -> Self {
        SlapdOptions { syncprov: true, session_log: None }
    }
}

impl Slapd {
    /// A slapd holding only the suffix, `ou=people` and `ou=groups`.
    pub fn start() -> Result<Self> {
        Self::start_with_ldif(None)
    }

    /// A slapd that also holds the entries of `ldif` (loaded offline with `slapadd -q`).
    pub fn start_with_ldif(ldif: Option<&Path>) -> Result<Self> {
        Self::start_with(SlapdOptions::default(), ldif)
    }

    /// A slapd set up as `options` say, holding the entries of `ldif` too.
    pub fn start_with(options: SlapdOptions, ldif: Option<&Path>) -> Result<Self> {
        let dir =
            tempfile::Builder::new().prefix("isthmus-slapd-").tempdir().map_err(io_err("create slapd folder", std::env::temp_dir()))?;
        let root = dir.path();
        let ip = Ipv4Addr::LOCALHOST;
        let tls = issue_server_cert(&root.join("tls"), "localhost", ip)?;
        let data = root.join("data");
        std::fs::create_dir_all(&data).map_err(io_err("create slapd data folder", &data))?;
        let schema = root.join("samba-subset.schema");
        std::fs::write(&schema, SAMBA_SCHEMA).map_err(io_err("write schema", &schema))?;
        let conf = root.join("slapd.conf");
        std::fs::write(&conf, slapd_conf(root, &schema, &data, &tls, options)).map_err(io_err("write slapd.conf", &conf))?;

        let base = root.join("base.ldif");
        std::fs::write(&base, base_ldif()).map_err(io_err("write base LDIF", &base))?;
        slapadd(&conf, &base)?;
        if let Some(ldif) = ldif {
            slapadd(&conf, ldif)?;
        }

        // Ports are picked free and then handed to slapd; retry if another process won the race.
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port(ip)?;
            let ldaps_port = free_port(ip)?;
            match spawn(root, port, ldaps_port) {
                Ok((process, ready_after)) => {
                    return Ok(Slapd { process: Some(process), dir, port, ldaps_port, tls, ready_after });
                }
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.unwrap_or_else(|| crate::Error::NoAddress("slapd ports".into())))
    }

    /// Stops the server (as a crash or a network cut looks to clients); its data stays.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Starts the stopped server again on the same ports with the same data.
    pub fn resume(&mut self) -> Result<()> {
        if self.process.is_none() {
            let (process, ready_after) = spawn(self.dir.path(), self.port, self.ldaps_port)?;
            self.process = Some(process);
            self.ready_after = ready_after;
        }
        Ok(())
    }

    /// `ldap://127.0.0.1:<port>`.
    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }
    /// `ldaps://127.0.0.1:<port>`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }
    /// The CA that issued slapd's certificate.
    pub fn ca_pem(&self) -> &Path {
        &self.tls.ca_pem
    }
    /// The server's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The slapd process id (0 while stopped).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, ServerProcess::pid)
    }

    /// An LDAPS connection bound as the root DN, with seeding helpers.
    pub async fn admin(&self) -> Result<OpenLdapAdmin> {
        let mut conn = Connection::connect(&self.ldaps_url(), Some(self.ca_pem()), false).await?;
        conn.bind(ADMIN_DN, ADMIN_PASSWORD).await?;
        Ok(OpenLdapAdmin { conn })
    }
}

/// Starts slapd on `root`'s configuration and waits until both ports answer.
fn spawn(root: &Path, port: u16, ldaps_port: u16) -> Result<(ServerProcess, Duration)> {
    let ip = Ipv4Addr::LOCALHOST;
    let mut command = Command::new(slapd_program());
    command
        .arg("-d")
        .arg("0")
        .arg("-h")
        .arg(format!("ldap://{ip}:{port}/ ldaps://{ip}:{ldaps_port}/"))
        .arg("-f")
        .arg(root.join("slapd.conf"));
    let mut process = ServerProcess::spawn("slapd", command, &root.join("slapd.out"))?;
    let ready_after = process.wait_until(Duration::from_secs(30), || answers(ip, port) && answers(ip, ldaps_port))?;
    tracing::info!(port, pid = process.pid(), ms = ready_after.as_millis() as u64, "slapd ready");
    Ok((process, ready_after))
}

fn slapd_program() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/slapd");
    if debian.exists() { debian } else { PathBuf::from("slapd") }
}

fn slapadd(conf: &Path, ldif: &Path) -> Result<()> {
    let program = if Path::new("/usr/sbin/slapadd").exists() { "/usr/sbin/slapadd" } else { "slapadd" };
    run(Command::new(program).arg("-q").arg("-f").arg(conf).arg("-l").arg(ldif))?;
    Ok(())
}

fn slapd_conf(root: &Path, schema: &Path, data: &Path, tls: &TlsFiles, options: SlapdOptions) -> String {
    let mut overlay = String::new();
    if options.syncprov {
        overlay.push_str("overlay syncprov\nsyncprov-checkpoint 100 10\n");
        if let Some(size) = options.session_log {
            overlay.push_str(&format!("syncprov-sessionlog {size}\n"));
        }
    }
    let module = if options.syncprov { "moduleload syncprov\n" } else { "" };
    format!(
        "include /etc/ldap/schema/core.schema\n\
         include /etc/ldap/schema/cosine.schema\n\
         include /etc/ldap/schema/nis.schema\n\
         include /etc/ldap/schema/inetorgperson.schema\n\
         include {schema}\n\
         modulepath /usr/lib/ldap\n\
         moduleload back_mdb\n\
         {module}\
         pidfile {root}/slapd.pid\n\
         argsfile {root}/slapd.args\n\
         TLSCACertificateFile {ca}\n\
         TLSCertificateFile {cert}\n\
         TLSCertificateKeyFile {key}\n\
         sizelimit unlimited\n\
         database mdb\n\
         maxsize 4294967296\n\
         suffix \"{SUFFIX}\"\n\
         rootdn \"{ADMIN_DN}\"\n\
         rootpw {ADMIN_PASSWORD}\n\
         directory {data}\n\
         index objectClass eq\n\
         index entryCSN,entryUUID eq\n\
         index uid,mail eq\n\
         {overlay}",
        schema = schema.display(),
        root = root.display(),
        ca = tls.ca_pem.display(),
        cert = tls.cert_pem.display(),
        key = tls.key_pem.display(),
        data = data.display(),
    )
}

fn base_ldif() -> String {
    format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example Test\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n"
    )
}

/// A root-DN LDAPS session with helpers that seed OpenLDAP.
#[derive(Debug)]
pub struct OpenLdapAdmin {
    conn: Connection,
}

impl OpenLdapAdmin {
    /// The raw connection.
    pub fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Creates an `inetOrgPerson` + `sambaSamAccount` under `ou=people` with `userPassword` and,
    /// when given, `sambaNTPassword` (32 hex digits); returns its DN.
    pub async fn create_person(&mut self, uid: &str, mail: &str, password: &str, nt_hash_hex: Option<&str>) -> Result<String> {
        let dn = format!("uid={uid},ou=people,{SUFFIX}");
        let mut attrs = vec![
            attr("objectClass", &["inetOrgPerson", "sambaSamAccount"]),
            attr("uid", &[uid]),
            attr("cn", &[uid]),
            attr("sn", &["Test"]),
            attr("mail", &[mail]),
            attr("userPassword", &[password]),
            attr("sambaSID", &[&format!("S-1-5-21-1-2-3-{}", rid_for(uid))]),
        ];
        if let Some(hash) = nt_hash_hex {
            attrs.push(attr("sambaNTPassword", &[hash]));
        }
        self.conn.add(&dn, attrs).await?;
        Ok(dn)
    }

    /// Creates a `groupOfNames` under `ou=groups` (it needs at least one member); returns its DN.
    pub async fn create_group(&mut self, cn: &str, members: &[&str]) -> Result<String> {
        let dn = format!("cn={cn},ou=groups,{SUFFIX}");
        self.conn.add(&dn, vec![attr("objectClass", &["groupOfNames"]), attr("cn", &[cn]), attr("member", members)]).await?;
        Ok(dn)
    }

    /// Adds members to a `groupOfNames`.
    pub async fn add_members(&mut self, group_dn: &str, members: &[&str]) -> Result<()> {
        let values = members.iter().map(|dn| dn.as_bytes().to_vec()).collect();
        self.conn.modify(group_dn, vec![Mod::Add(b"member".to_vec(), values)]).await
    }
}

/// A stable relative id for `uid` (FNV-1a), so each seeded account gets its own `sambaSID`.
fn rid_for(uid: &str) -> u32 {
    let hash = uid.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193));
    1000 + hash % 1_000_000_000
}
