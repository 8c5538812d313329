//! A real Samba Active Directory domain controller per test.
//!
//! Provisioning takes seconds, so a domain is provisioned once per realm into a shared template
//! folder (under [`crate::shared_dir`], guarded by a file lock across test processes) and each
//! test copies it into a temporary folder of its own. Each copy gets its own loopback address, its
//! own `smb.conf` and its own TLS certificate (issued for that address), and runs as
//! `samba -i -M single`. Two realms give two independent forests that can run side by side.
//!
//! Copies of one template share the domain SID and object GUIDs of the provisioned objects; tests
//! that need two distinct forests use two realms.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ldap3::{Mod, Scope};
use tempfile::TempDir;

use crate::ldap::{Connection, attr};
use crate::net::{LoopbackAddr, answers};
use crate::process::{ServerProcess, run};
use crate::tls::{TlsFiles, issue_server_cert};
use crate::{Error, Result, io_err};

/// Bump when provisioning options change, so stale shared templates are not reused.
const TEMPLATE_FORMAT: u32 = 1;

/// The domain a template is provisioned with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SambaConfig {
    /// Kerberos realm / DNS domain in upper case, e.g. `CORP.EXAMPLE.TEST`.
    pub realm: String,
    /// NetBIOS domain name, e.g. `CORP`.
    pub domain: String,
    /// The Administrator's password.
    pub admin_password: String,
}

impl Default for SambaConfig {
    fn default() -> Self {
        SambaConfig::forest("CORP.EXAMPLE.TEST", "CORP")
    }
}

impl SambaConfig {
    /// A forest with the kit's standard Administrator password.
    pub fn forest(realm: &str, domain: &str) -> Self {
        SambaConfig { realm: realm.to_ascii_uppercase(), domain: domain.to_ascii_uppercase(), admin_password: "Adm1n!Pass.Test".into() }
    }

    /// The domain's base DN, e.g. `DC=corp,DC=example,DC=test`.
    pub fn base_dn(&self) -> String {
        self.realm.to_ascii_lowercase().split('.').map(|label| format!("DC={label}")).collect::<Vec<_>>().join(",")
    }
}

/// A provisioned (and possibly bulk-loaded) domain, ready to be copied for each DC.
#[derive(Debug, Clone)]
pub struct SambaTemplate {
    dir: PathBuf,
    config: SambaConfig,
}

impl SambaTemplate {
    /// The shared template for `config`, provisioned on first use (by whichever process gets the lock).
    pub fn shared(config: &SambaConfig) -> Result<Self> {
        let root = crate::shared_dir().join("samba");
        std::fs::create_dir_all(&root).map_err(io_err("create template folder", &root))?;
        let name = format!("{}-{}-v{TEMPLATE_FORMAT}", config.realm.to_ascii_lowercase(), samba_version()?);
        let dir = root.join(&name);
        let lock_path = root.join(format!("{name}.lock"));
        let lock = std::fs::File::create(&lock_path).map_err(io_err("create template lock", &lock_path))?;
        lock.lock().map_err(io_err("lock template", &lock_path))?;
        if !dir.join("provisioned").exists() {
            Self::provision_into(&dir, config)?;
        }
        Ok(SambaTemplate { dir, config: config.clone() })
    }

    /// Provisions a fresh domain into `dir` (removed first if present).
    pub fn provision_into(dir: &Path, config: &SambaConfig) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io_err("remove old template", dir))?;
        }
        let started = Instant::now();
        run(Command::new("samba-tool").args([
            "domain",
            "provision",
            &format!("--realm={}", config.realm),
            &format!("--domain={}", config.domain),
            "--server-role=dc",
            "--dns-backend=NONE",
            "--use-rfc2307",
            "--host-name=DC1",
            &format!("--adminpass={}", config.admin_password),
            &format!("--targetdir={}", dir.display()),
            // Provisioning needs an existing interface; each copy gets its own address later.
            "--option=interfaces=127.0.0.1",
            "--option=bind interfaces only=yes",
            &format!("--option=log file={}/log.%m", dir.display()),
        ]))?;
        let marker = dir.join("provisioned");
        std::fs::write(&marker, format!("{} ms\n", started.elapsed().as_millis())).map_err(io_err("mark template", &marker))?;
        tracing::info!(realm = %config.realm, ms = started.elapsed().as_millis() as u64, "provisioned Samba template");
        Ok(SambaTemplate { dir: dir.to_path_buf(), config: config.clone() })
    }

    /// An existing template folder, e.g. one that `cargo xtask gen-directory` bulk-loaded.
    pub fn at(dir: &Path, config: SambaConfig) -> Self {
        SambaTemplate { dir: dir.to_path_buf(), config }
    }

    /// A copy of this template in `dir` (which must not exist yet), to bulk-load without
    /// touching the shared one.
    pub fn copy_to(&self, dir: &Path) -> Result<SambaTemplate> {
        run(Command::new("cp").arg("-a").arg(&self.dir).arg(dir))?;
        Ok(SambaTemplate { dir: dir.to_path_buf(), config: self.config.clone() })
    }

    /// Adds the entries of an LDIF file offline (`ldbadd` on `sam.ldb`), before any DC starts from it.
    ///
    /// ldb's `batch_mode` drops the per-entry sub-transactions; measured 3.5 times faster on
    /// 4,000 users (8.7 s against 30 s). The whole file is still one transaction.
    pub fn load_ldif(&self, ldif: &Path) -> Result<()> {
        let sam = self.dir.join("private").join("sam.ldb");
        run(Command::new("ldbadd").args(["-o", "batch_mode", "-H"]).arg(&sam).arg(ldif))?;
        Ok(())
    }

    /// The template folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A running Samba AD DC on its own loopback address; stopped and deleted on drop.
#[derive(Debug)]
pub struct SambaDc {
    lifetime: Lifetime,
    config: SambaConfig,
    tls: TlsFiles,
    /// How long the DC took from spawn until LDAP and LDAPS accepted connections.
    pub ready_after: Duration,
}

/// Who stops the DC.
#[derive(Debug)]
enum Lifetime {
    /// Started by this handle; stopped and deleted on drop.
    Owned {
        // Field order is drop order: stop the process before releasing the address and folder.
        process: ServerProcess,
        addr: LoopbackAddr,
        dir: TempDir,
    },
    /// A long-running DC started elsewhere (`cargo xtask samba-dc`); left running.
    Attached { dir: PathBuf, ip: std::net::Ipv4Addr },
}

/// Names a running DC's folder (from `cargo xtask samba-dc`) for tests to use instead of starting their own.
pub const ATTACH_ENV: &str = "ISTHMUS_TEST_SAMBA_DIR";

impl SambaDc {
    /// A DC of the default forest `CORP.EXAMPLE.TEST`.
    pub fn start_default() -> Result<Self> {
        Self::start(&SambaConfig::default())
    }

    /// A DC for `config`, copied from the shared template — or, when [`ATTACH_ENV`] names the
    /// folder of a running DC of the same realm, that DC.
    pub fn start(config: &SambaConfig) -> Result<Self> {
        if let Some(dir) = std::env::var_os(ATTACH_ENV) {
            let dir = PathBuf::from(dir);
            if let Some(attached) = Self::attach(&dir, config)? {
                return Ok(attached);
            }
        }
        Self::start_from(&SambaTemplate::shared(config)?)
    }

    /// Uses the running DC in `dir` if it serves `config`'s realm.
    fn attach(dir: &Path, config: &SambaConfig) -> Result<Option<Self>> {
        let smb_conf = dir.join("etc").join("smb.conf");
        let text = std::fs::read_to_string(&smb_conf).map_err(io_err("read smb.conf of the DC to attach to", &smb_conf))?;
        let setting = |name: &str| {
            text.lines().find_map(|line| {
                line.trim().strip_prefix(name).and_then(|rest| rest.trim_start().strip_prefix('=')).map(|value| value.trim().to_string())
            })
        };
        if setting("realm").as_deref() != Some(config.realm.as_str()) {
            return Ok(None);
        }
        let ip: std::net::Ipv4Addr = setting("interfaces")
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| Error::NoAddress(format!("{} has no single IPv4 `interfaces` line", smb_conf.display())))?;
        if !answers(ip, 636) {
            return Err(Error::NotReady {
                server: "samba (attached)",
                seconds: 0,
                log: format!("nothing answers on {ip}:636; is `cargo xtask samba-dc` still running?"),
            });
        }
        let tls_dir = dir.join("tls");
        let tls = TlsFiles { ca_pem: tls_dir.join("ca.pem"), cert_pem: tls_dir.join("cert.pem"), key_pem: tls_dir.join("key.pem") };
        Ok(Some(SambaDc {
            lifetime: Lifetime::Attached { dir: dir.to_path_buf(), ip },
            config: config.clone(),
            tls,
            ready_after: Duration::ZERO,
        }))
    }

    /// A DC copied from `template`.
    pub fn start_from(template: &SambaTemplate) -> Result<Self> {
        let addr = LoopbackAddr::reserve()?;
        let dir = tempfile::Builder::new().prefix("isthmus-samba-").tempdir().map_err(io_err("create DC folder", std::env::temp_dir()))?;
        let root = dir.path();
        run(Command::new("cp").arg("-a").arg(template.dir.join(".")).arg(root))?;
        let config = template.config.clone();
        let dns_name = format!("dc1.{}", config.realm.to_ascii_lowercase());
        let tls = issue_server_cert(&root.join("tls"), &dns_name, addr.ip())?;
        let smb_conf = root.join("etc").join("smb.conf");
        std::fs::write(&smb_conf, smb_conf_text(root, &config, addr.ip(), &tls)).map_err(io_err("write smb.conf", &smb_conf))?;

        let mut command = Command::new("samba");
        command.arg("-i").arg("-M").arg("single").arg("-s").arg(&smb_conf);
        let mut process = ServerProcess::spawn("samba", command, &root.join("samba.out"))?;
        let ip = addr.ip();
        let ready_after = process
            .wait_until(Duration::from_secs(60), || answers(ip, 389) && answers(ip, 636))
            .map_err(|err| with_samba_log(err, root))?;
        tracing::info!(%ip, pid = process.pid(), ms = ready_after.as_millis() as u64, "Samba DC ready");
        Ok(SambaDc { lifetime: Lifetime::Owned { process, addr, dir }, config, tls, ready_after })
    }

    /// The DC's loopback address.
    pub fn ip(&self) -> std::net::Ipv4Addr {
        match &self.lifetime {
            Lifetime::Owned { addr, .. } => addr.ip(),
            Lifetime::Attached { ip, .. } => *ip,
        }
    }
    /// `ldap://<ip>`.
    pub fn ldap_url(&self) -> String {
        format!("ldap://{}", self.ip())
    }
    /// `ldaps://<ip>`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://{}", self.ip())
    }
    /// The CA that issued the DC's LDAPS certificate.
    pub fn ca_pem(&self) -> &Path {
        &self.tls.ca_pem
    }
    /// The domain configuration.
    pub fn config(&self) -> &SambaConfig {
        &self.config
    }
    /// The domain's base DN.
    pub fn base_dn(&self) -> String {
        self.config.base_dn()
    }
    /// The Administrator's DN.
    pub fn admin_dn(&self) -> String {
        format!("CN=Administrator,CN=Users,{}", self.base_dn())
    }
    /// The DC's data folder (smb.conf under `etc/`, databases under `private/`).
    pub fn dir(&self) -> &Path {
        match &self.lifetime {
            Lifetime::Owned { dir, .. } => dir.path(),
            Lifetime::Attached { dir, .. } => dir,
        }
    }
    /// The samba process id, when this handle started it.
    pub fn pid(&self) -> Option<u32> {
        match &self.lifetime {
            Lifetime::Owned { process, .. } => Some(process.pid()),
            Lifetime::Attached { .. } => None,
        }
    }
    /// The DC's log output so far.
    pub fn log(&self) -> String {
        match &self.lifetime {
            Lifetime::Owned { process, .. } => process.log(),
            Lifetime::Attached { dir, .. } => crate::process::tail_of_file(&dir.join("samba.out")),
        }
    }
    /// True when this handle attached to a DC started elsewhere (see [`ATTACH_ENV`]).
    pub fn is_attached(&self) -> bool {
        matches!(self.lifetime, Lifetime::Attached { .. })
    }

    /// Grants `trustee_dn` a control access right on the domain root with `samba-tool dsacl`:
    /// `get-changes` ("Replicating Directory Changes"), `get-changes-all` ("… All"), as an
    /// administrator delegates them to Entra Connect's AD DS connector account.
    pub fn grant_on_domain_root(&self, trustee_dn: &str, right: &str) -> Result<()> {
        run(Command::new("samba-tool")
            .args(["dsacl", "set", "-H", &self.ldap_url(), "--action=allow"])
            .arg(format!("--car={right}"))
            .arg(format!("--objectdn={}", self.base_dn()))
            .arg(format!("--trusteedn={trustee_dn}"))
            .arg("--username=Administrator")
            .arg(format!("--password={}", self.config.admin_password)))?;
        Ok(())
    }

    /// Adds one ACE, in SDDL (e.g. `(OA;CIIO;WP;<attribute>;<class>;<SID>)`), to the security
    /// descriptor of `object_dn` with `samba-tool dsacl`, as an administrator delegates a right
    /// on an OU.
    pub fn grant_sddl(&self, object_dn: &str, ace: &str) -> Result<()> {
        run(Command::new("samba-tool")
            .args(["dsacl", "set", "-H", &self.ldap_url()])
            .arg(format!("--sddl={ace}"))
            .arg(format!("--objectdn={object_dn}"))
            .arg("--username=Administrator")
            .arg(format!("--password={}", self.config.admin_password)))?;
        Ok(())
    }

    /// An LDAPS connection bound as Administrator, with seeding helpers.
    pub async fn admin(&self) -> Result<AdAdmin> {
        let mut conn = self.connect_ldaps().await?;
        conn.bind(&self.admin_dn(), &self.config.admin_password).await?;
        Ok(AdAdmin { conn, base_dn: self.base_dn() })
    }

    /// An unbound LDAPS connection that trusts the DC's CA.
    pub async fn connect_ldaps(&self) -> Result<Connection> {
        // The listener is up before the LDAP server task is; retry the first connection briefly.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match Connection::connect(&self.ldaps_url(), Some(self.ca_pem()), false).await {
                Ok(conn) => return Ok(conn),
                Err(err) if Instant::now() > deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

fn smb_conf_text(root: &Path, config: &SambaConfig, ip: std::net::Ipv4Addr, tls: &TlsFiles) -> String {
    let root = root.display();
    format!(
        "[global]\n\
         \tnetbios name = DC1\n\
         \trealm = {realm}\n\
         \tworkgroup = {domain}\n\
         \tserver role = active directory domain controller\n\
         \tserver services = s3fs, rpc, nbt, wrepl, ldap, cldap, kdc, drepl, winbindd, ntp_signd, kcc\n\
         \tinterfaces = {ip}\n\
         \tbind interfaces only = yes\n\
         \tprivate dir = {root}/private\n\
         \tlock directory = {root}\n\
         \tstate directory = {root}/state\n\
         \tcache directory = {root}/cache\n\
         \tbinddns dir = {root}/bind-dns\n\
         \tpid directory = {root}\n\
         \tncalrpc dir = {root}/ncalrpc\n\
         \twinbindd socket directory = {root}/winbindd\n\
         \tntp signd socket directory = {root}/ntp_signd\n\
         \tlog file = {root}/log.%m\n\
         \tlogging = file\n\
         \tlog level = 1\n\
         \tidmap_ldb:use rfc2307 = yes\n\
         \tdsdb:schema update allowed = yes\n\
         \ttls enabled = yes\n\
         \ttls keyfile = {key}\n\
         \ttls certfile = {cert}\n\
         \ttls cafile = {ca}\n\
         \n[sysvol]\n\tpath = {root}/state/sysvol\n\tread only = No\n\
         \n[netlogon]\n\tpath = {root}/state/sysvol/{dns}/scripts\n\tread only = No\n",
        realm = config.realm,
        domain = config.domain,
        dns = config.realm.to_ascii_lowercase(),
        key = tls.key_pem.display(),
        cert = tls.cert_pem.display(),
        ca = tls.ca_pem.display(),
    )
}

fn with_samba_log(err: Error, root: &Path) -> Error {
    match err {
        Error::NotReady { server, seconds, log } => {
            let samba_log = crate::process::tail_of_file(&root.join("log.samba"));
            Error::NotReady { server, seconds, log: format!("{log}\n--- log.samba ---\n{samba_log}") }
        }
        other => other,
    }
}

fn samba_version() -> Result<String> {
    let out = run(Command::new("samba").arg("--version"))?;
    Ok(out.trim().trim_start_matches("Version ").replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_"))
}

/// `userAccountControl` bits used by the helpers.
pub mod uac {
    /// ACCOUNTDISABLE.
    pub const ACCOUNT_DISABLE: u32 = 0x0002;
    /// NORMAL_ACCOUNT.
    pub const NORMAL_ACCOUNT: u32 = 0x0200;
    /// DONT_EXPIRE_PASSWORD.
    pub const DONT_EXPIRE_PASSWORD: u32 = 0x1_0000;
}

/// A user to create in AD. Unset fields are left out of the entry.
#[derive(Debug, Clone, Default)]
pub struct AdUser {
    /// `sAMAccountName`, also the `cn`.
    pub sam: String,
    /// `givenName`.
    pub given_name: Option<String>,
    /// `sn`.
    pub surname: Option<String>,
    /// `userPrincipalName`.
    pub upn: Option<String>,
    /// `mail`.
    pub mail: Option<String>,
    /// `employeeID`.
    pub employee_id: Option<String>,
    /// Initial password; the account is enabled only when one is given.
    pub password: Option<String>,
    /// Parent DN; `CN=Users,<base>` when unset.
    pub parent_dn: Option<String>,
}

impl AdUser {
    /// A user with a password, UPN `<sam>@<upn_suffix>` and mail the same.
    pub fn with_password(sam: &str, upn_suffix: &str, password: &str) -> Self {
        AdUser {
            sam: sam.to_string(),
            given_name: Some(sam.to_string()),
            surname: Some("Test".into()),
            upn: Some(format!("{sam}@{upn_suffix}")),
            mail: Some(format!("{sam}@{upn_suffix}")),
            password: Some(password.to_string()),
            ..AdUser::default()
        }
    }
}

/// An Administrator LDAPS session with helpers that seed and change AD objects.
#[derive(Debug)]
pub struct AdAdmin {
    conn: Connection,
    base_dn: String,
}

/// `unicodePwd` value: the password in double quotes, UTF-16LE.
pub fn unicode_pwd(password: &str) -> Vec<u8> {
    format!("\"{password}\"").encode_utf16().flat_map(|unit| unit.to_le_bytes()).collect()
}

impl AdAdmin {
    /// The raw connection, for anything the helpers do not cover.
    pub fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Creates `OU=<name>` under `parent_dn` (the domain root when `None`); returns its DN.
    pub async fn create_ou(&mut self, name: &str, parent_dn: Option<&str>) -> Result<String> {
        let dn = format!("OU={name},{}", parent_dn.unwrap_or(&self.base_dn));
        self.conn.add(&dn, vec![attr("objectClass", &["organizationalUnit"]), attr("ou", &[name])]).await?;
        Ok(dn)
    }

    /// Creates a user; returns its DN.
    pub async fn create_user(&mut self, user: &AdUser) -> Result<String> {
        let parent = user.parent_dn.clone().unwrap_or_else(|| format!("CN=Users,{}", self.base_dn));
        let dn = format!("CN={},{parent}", user.sam);
        let mut attrs = vec![attr("objectClass", &["user"]), attr("sAMAccountName", &[&user.sam])];
        for (name, value) in [
            ("givenName", &user.given_name),
            ("sn", &user.surname),
            ("userPrincipalName", &user.upn),
            ("mail", &user.mail),
            ("employeeID", &user.employee_id),
        ] {
            if let Some(value) = value {
                attrs.push(attr(name, &[value]));
            }
        }
        let uac = match &user.password {
            Some(password) => {
                attrs.push(("unicodePwd".into(), vec![unicode_pwd(password)]));
                uac::NORMAL_ACCOUNT
            }
            None => uac::NORMAL_ACCOUNT | uac::ACCOUNT_DISABLE,
        };
        attrs.push(attr("userAccountControl", &[&uac.to_string()]));
        self.conn.add(&dn, attrs).await?;
        Ok(dn)
    }

    /// Creates a global security group with `members` (DNs; groups nest); returns its DN.
    pub async fn create_group(&mut self, name: &str, parent_dn: Option<&str>, members: &[&str]) -> Result<String> {
        let parent = parent_dn.map(str::to_string).unwrap_or_else(|| format!("CN=Users,{}", self.base_dn));
        let dn = format!("CN={name},{parent}");
        let mut attrs = vec![
            attr("objectClass", &["group"]),
            attr("sAMAccountName", &[name]),
            // GLOBAL_GROUP | SECURITY_ENABLED
            attr("groupType", &["-2147483646"]),
        ];
        if !members.is_empty() {
            attrs.push(attr("member", members));
        }
        self.conn.add(&dn, attrs).await?;
        Ok(dn)
    }

    /// Adds members to a group.
    pub async fn add_members(&mut self, group_dn: &str, members: &[&str]) -> Result<()> {
        let values = members.iter().map(|dn| dn.as_bytes().to_vec()).collect();
        self.conn.modify(group_dn, vec![Mod::Add(b"member".to_vec(), values)]).await
    }

    /// Removes members from a group.
    pub async fn remove_members(&mut self, group_dn: &str, members: &[&str]) -> Result<()> {
        let values = members.iter().map(|dn| dn.as_bytes().to_vec()).collect();
        self.conn.modify(group_dn, vec![Mod::Delete(b"member".to_vec(), values)]).await
    }

    /// Extends the schema with Exchange's `msExchMasterAccountSid` (a SID-syntax attribute users
    /// may carry), for account-resource forest tests; Samba ships no Exchange schema. Once per
    /// domain: a second call is an error (the attribute exists).
    pub async fn add_exchange_master_account_sid(&mut self) -> Result<()> {
        let schema = format!("CN=Schema,CN=Configuration,{}", self.base_dn);
        let dn = format!("CN=ms-Exch-Master-Account-Sid,{schema}");
        let attrs = vec![
            attr("objectClass", &["attributeSchema"]),
            attr("lDAPDisplayName", &["msExchMasterAccountSid"]),
            // An OID of our own (Samba's test arc); Exchange's real one is not needed to test joins.
            attr("attributeID", &["1.3.6.1.4.1.7165.4.255.1"]),
            attr("attributeSyntax", &["2.5.5.17"]),
            attr("oMSyntax", &["4"]),
            attr("isSingleValued", &["TRUE"]),
        ];
        self.conn.add(&dn, attrs).await?;
        self.schema_update_now().await?;
        let user_class = format!("CN=User,{schema}");
        self.conn.modify(&user_class, vec![Mod::Add(b"mayContain".to_vec(), [b"msExchMasterAccountSid".to_vec()].into())]).await?;
        self.schema_update_now().await
    }

    async fn schema_update_now(&mut self) -> Result<()> {
        self.conn.modify("", vec![Mod::Add(b"schemaUpdateNow".to_vec(), [b"1".to_vec()].into())]).await
    }

    /// Creates a mail contact; returns its DN.
    pub async fn create_contact(&mut self, cn: &str, parent_dn: Option<&str>, mail: &str) -> Result<String> {
        let parent = parent_dn.map(str::to_string).unwrap_or_else(|| format!("CN=Users,{}", self.base_dn));
        let dn = format!("CN={cn},{parent}");
        self.conn.add(&dn, vec![attr("objectClass", &["contact"]), attr("mail", &[mail]), attr("displayName", &[cn])]).await?;
        Ok(dn)
    }

    /// Sets a user's password (an administrative reset).
    pub async fn set_password(&mut self, dn: &str, password: &str) -> Result<()> {
        self.conn.modify(dn, vec![Mod::Replace(b"unicodePwd".to_vec(), [unicode_pwd(password)].into())]).await
    }

    /// Sets the ACCOUNTDISABLE bit.
    pub async fn disable(&mut self, dn: &str) -> Result<()> {
        let flags = self.user_account_control(dn).await?;
        self.set_uac(dn, flags | uac::ACCOUNT_DISABLE).await
    }

    /// Clears the ACCOUNTDISABLE bit.
    pub async fn enable(&mut self, dn: &str) -> Result<()> {
        let flags = self.user_account_control(dn).await?;
        self.set_uac(dn, flags & !uac::ACCOUNT_DISABLE).await
    }

    /// Sets `accountExpires` to a moment in the past (1 January 2000).
    pub async fn expire(&mut self, dn: &str) -> Result<()> {
        // FILETIME of 2000-01-01T00:00:00Z.
        self.conn.replace(dn, "accountExpires", &["125911584000000000"]).await
    }

    /// Sets `pwdLastSet` to 0: the user must change the password at next logon.
    pub async fn require_password_change(&mut self, dn: &str) -> Result<()> {
        self.conn.replace(dn, "pwdLastSet", &["0"]).await
    }

    /// Locks the account out: sets the domain lockout threshold to 3 and binds with a wrong
    /// password until AD locks it (`lockoutTime` set).
    pub async fn lock_out(&mut self, dn: &str, ldaps_url: &str, ca_pem: &Path) -> Result<()> {
        let base_dn = self.base_dn.clone();
        self.conn.replace(&base_dn, "lockoutThreshold", &["3"]).await?;
        for _ in 0..4 {
            let mut conn = Connection::connect(ldaps_url, Some(ca_pem), false).await?;
            let _wrong = conn.bind(dn, "not-the-password-0!").await;
        }
        let entries = self.conn.search(dn, Scope::Base, "(objectClass=*)", &["lockoutTime"]).await?;
        let locked = entries
            .first()
            .and_then(|entry| entry.attrs.get("lockoutTime"))
            .and_then(|values| values.first())
            .is_some_and(|value| value != "0");
        if locked { Ok(()) } else { Err(Error::Ldap { operation: format!("lock out {dn}"), message: "lockoutTime was not set".into() }) }
    }

    /// The object's SID in its text form (`S-1-5-21-…`).
    pub async fn sid_of(&mut self, dn: &str) -> Result<String> {
        let entries = self.conn.search(dn, Scope::Base, "(objectClass=*)", &["objectSid"]).await?;
        let raw = entries.first().and_then(|entry| entry.bin_attrs.get("objectSid")).and_then(|values| values.first());
        raw.and_then(|raw| sync_expr::functions::sid_string(raw))
            .ok_or_else(|| Error::Ldap { operation: format!("read objectSid of {dn}"), message: "missing or malformed".into() })
    }

    /// Reads `userAccountControl`.
    pub async fn user_account_control(&mut self, dn: &str) -> Result<u32> {
        let entries = self.conn.search(dn, Scope::Base, "(objectClass=*)", &["userAccountControl"]).await?;
        entries
            .first()
            .and_then(|entry| entry.attrs.get("userAccountControl"))
            .and_then(|values| values.first())
            .and_then(|value| value.parse::<i64>().ok())
            .map(|value| value as u32)
            .ok_or_else(|| Error::Ldap { operation: format!("read userAccountControl of {dn}"), message: "missing".into() })
    }

    async fn set_uac(&mut self, dn: &str, flags: u32) -> Result<()> {
        self.conn.replace(dn, "userAccountControl", &[&flags.to_string()]).await
    }
}
