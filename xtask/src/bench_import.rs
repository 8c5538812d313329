//! `cargo xtask bench-import`: full import of a bulk-loaded Samba template through the AD
//! connector, and of a bulk-loaded slapd through the generic LDAP connector, each next to
//! `ldapsearch` paging through the same entries over LDAPS (the floor).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use testkit::samba::{SambaConfig, SambaDc, SambaTemplate};
use testkit::slapd::{Slapd, SlapdOptions};

/// Options of `bench-import`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Samba template folder loaded by `cargo xtask gen-directory --samba-template`.
    #[arg(long)]
    samba_template: Option<PathBuf>,
    /// An OpenLDAP LDIF written by `cargo xtask gen-directory` (`openldap.ldif`), loaded into a
    /// fresh slapd with `slapadd` before the run.
    #[arg(long)]
    openldap_ldif: Option<PathBuf>,
    /// Its realm.
    #[arg(long, default_value = "CORP.EXAMPLE.TEST")]
    realm: String,
    /// Search page size for both.
    #[arg(long, default_value_t = 1000)]
    page_size: u32,
}

/// Runs the benchmarks asked for and prints one line per measurement.
pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.samba_template.is_some() || args.openldap_ldif.is_some(), "give --samba-template, --openldap-ldif or both");
    if let Some(template) = &args.samba_template {
        samba(args, template)?;
    }
    if let Some(ldif) = &args.openldap_ldif {
        openldap(args, ldif)?;
    }
    Ok(())
}

fn samba(args: &Args, template: &std::path::Path) -> anyhow::Result<()> {
    let config = SambaConfig::forest(&args.realm, args.realm.split('.').next().unwrap_or("CORP"));
    let template = SambaTemplate::at(template, config.clone());
    let dc = SambaDc::start_from(&template)?;
    let bind = connector_ldap::Bind::Simple { dn: dc.admin_dn(), password: config.admin_password.clone().into() };
    let mut settings =
        connector_ldap::LdapConfig::new(&config.realm.to_lowercase(), connector_ldap::Flavour::ActiveDirectory, &dc.ip().to_string(), bind);
    settings.ca_file = Some(dc.ca_pem().to_path_buf());
    settings.page_size = args.page_size;
    connector_import("AD connector", settings)?;

    // The floor: the same filter and every attribute, paged, over LDAPS, output discarded.
    let login = ["-D", &dc.admin_dn(), "-w", &config.admin_password, "-b", &dc.base_dn()].map(String::from);
    ldapsearch(&dc.ldaps_url(), dc.ca_pem(), &login, AD_FILTER, &["*"], args.page_size).map(|_| ())
}

/// What the AD connector imports, as an LDAP filter (the floor's search).
pub(crate) const AD_FILTER: &str =
    "(&(|(objectClass=user)(objectClass=group)(objectClass=contact)(objectClass=inetOrgPerson))(!(objectClass=computer)))";

fn openldap(args: &Args, ldif: &std::path::Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let slapd = Slapd::start_with(SlapdOptions { syncprov: true, session_log: Some(10_000) }, Some(ldif))?;
    println!("slapd loaded {} with slapadd and started in {:.1} s", ldif.display(), started.elapsed().as_secs_f64());
    let bind =
        connector_ldap::Bind::Simple { dn: testkit::slapd::ADMIN_DN.into(), password: testkit::slapd::ADMIN_PASSWORD.to_string().into() };
    let host = slapd.ldaps_url().trim_start_matches("ldaps://").to_string();
    let mut settings = connector_ldap::LdapConfig::new("openldap", connector_ldap::Flavour::Generic, &host, bind);
    settings.ca_file = Some(slapd.ca_pem().to_path_buf());
    settings.page_size = args.page_size;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let watermark = connector_import_on(&runtime, "generic LDAP connector", settings.clone())?;
    runtime.block_on(deltas(&slapd, settings, watermark))?;

    let filter = "(|(objectClass=inetOrgPerson)(objectClass=posixAccount)(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))";
    let login = ["-D", testkit::slapd::ADMIN_DN, "-w", testkit::slapd::ADMIN_PASSWORD, "-b", testkit::slapd::SUFFIX].map(String::from);
    ldapsearch(&slapd.ldaps_url(), slapd.ca_pem(), &login, filter, &["*", "entryUUID"], args.page_size).map(|_| ())
}

/// Two syncrepl deltas after the full import: 100 people changed (the session log names the
/// changes), then a renamed OU (a presence pass over every entry).
async fn deltas(slapd: &Slapd, settings: connector_ldap::LdapConfig, watermark: Vec<u8>) -> anyhow::Result<()> {
    let connector = connector_ldap::open(settings).await?;
    let mut admin = slapd.admin().await?;
    let people = admin
        .conn()
        .search(&format!("ou=people,{}", testkit::slapd::SUFFIX), ldap3::Scope::OneLevel, "(objectClass=inetOrgPerson)", &["1.1"])
        .await?;
    for entry in people.iter().take(100) {
        admin.conn().replace(&entry.dn, "title", &["Benchmarked"]).await?;
    }
    let (changes, watermark, complete, seconds) = delta(&connector, &watermark).await?;
    println!("syncrepl delta after 100 modifies: {changes} changes, complete={complete}, {seconds:.2} s");
    admin.conn().rename(&format!("ou=groups,{}", testkit::slapd::SUFFIX), "ou=teams", None).await?;
    let (changes, _, complete, seconds) = delta(&connector, &watermark).await?;
    println!("syncrepl delta after an OU rename (presence pass): {changes} changes, complete={complete}, {seconds:.1} s");
    Ok(())
}

/// One delta import: changes, the last watermark, whether it was complete, seconds.
async fn delta(connector: &connector_api::Connector, watermark: &[u8]) -> anyhow::Result<(usize, Vec<u8>, bool, f64)> {
    let started = Instant::now();
    let (mut changes, mut last, mut complete) = (0usize, watermark.to_vec(), false);
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = connector.import.delta_page(watermark, cursor.as_deref()).await?;
        changes += page.changes.len();
        complete |= page.complete;
        if let Some(mark) = page.watermark {
            last = mark;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok((changes, last, complete, started.elapsed().as_secs_f64())),
        }
    }
}

/// A full import through the connector, pages counted, changes dropped.
fn connector_import(name: &str, settings: connector_ldap::LdapConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    connector_import_on(&runtime, name, settings).map(|_| ())
}

/// A full import on `runtime`; returns its watermark.
fn connector_import_on(runtime: &tokio::runtime::Runtime, name: &str, settings: connector_ldap::LdapConfig) -> anyhow::Result<Vec<u8>> {
    let (objects, pages, seconds, watermark) = runtime.block_on(async {
        let started = Instant::now();
        let connector = connector_ldap::open(settings).await?;
        let (mut objects, mut pages) = (0usize, 0usize);
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = connector.import.full_page(cursor.as_deref()).await?;
            objects += page.changes.len();
            pages += 1;
            match page.next {
                Some(next) => cursor = Some(next),
                None => {
                    let watermark = page.watermark.unwrap_or_default();
                    return anyhow::Ok((objects, pages, started.elapsed().as_secs_f64(), watermark));
                }
            }
        }
    })?;
    println!("{name} full import: {objects} objects in {pages} pages, {seconds:.1} s ({:.0} objects/s)", objects as f64 / seconds);
    Ok(watermark)
}

/// `ldapsearch` paging through `filter` over LDAPS, output counted and discarded: the seconds it took.
pub(crate) fn ldapsearch(
    url: &str,
    ca: &std::path::Path,
    login: &[String],
    filter: &str,
    attributes: &[&str],
    page_size: u32,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = Command::new("ldapsearch")
        .env("LDAPTLS_CACERT", ca)
        .args(["-LLL", "-x", "-H", url])
        .args(login)
        .args(["-E", &format!("pr={page_size}/noprompt"), filter])
        .args(attributes)
        .output()
        .context("run ldapsearch")?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(output.status.success(), "ldapsearch failed: {}", String::from_utf8_lossy(&output.stderr));
    let entries = output.stdout.split(|&byte| byte == b'\n').filter(|line| line.starts_with(b"dn:")).count();
    println!("ldapsearch paging: {entries} entries, {seconds:.1} s ({:.0} entries/s)", entries as f64 / seconds);
    Ok(seconds)
}
