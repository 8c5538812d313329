//! `cargo xtask bench-import`: full import of a bulk-loaded Samba template through the AD
//! connector, next to `ldapsearch` paging through the same entries over LDAPS (the floor).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use testkit::samba::{SambaConfig, SambaDc, SambaTemplate};

/// Options of `bench-import`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Samba template folder loaded by `cargo xtask gen-directory --samba-template`.
    #[arg(long)]
    samba_template: PathBuf,
    /// Its realm.
    #[arg(long, default_value = "CORP.EXAMPLE.TEST")]
    realm: String,
    /// Search page size for both.
    #[arg(long, default_value_t = 1000)]
    page_size: u32,
}

/// Runs the benchmark and prints one line per measurement.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let config = SambaConfig::forest(&args.realm, args.realm.split('.').next().unwrap_or("CORP"));
    let template = SambaTemplate::at(&args.samba_template, config.clone());
    let dc = SambaDc::start_from(&template)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    let bind = connector_ldap::Bind::Simple { dn: dc.admin_dn(), password: config.admin_password.clone().into() };
    let mut settings =
        connector_ldap::LdapConfig::new(&config.realm.to_lowercase(), connector_ldap::Flavour::ActiveDirectory, &dc.ip().to_string(), bind);
    settings.ca_file = Some(dc.ca_pem().to_path_buf());
    settings.page_size = args.page_size;
    let (objects, pages, seconds) = runtime.block_on(async {
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
                None => break,
            }
        }
        anyhow::Ok((objects, pages, started.elapsed().as_secs_f64()))
    })?;
    println!("connector full import: {objects} objects in {pages} pages, {seconds:.1} s ({:.0} objects/s)", objects as f64 / seconds);

    // The floor: the same filter and every attribute, paged, over LDAPS, output discarded.
    let filter = "(&(|(objectClass=user)(objectClass=group)(objectClass=contact)(objectClass=inetOrgPerson))(!(objectClass=computer)))";
    let started = Instant::now();
    let output = Command::new("ldapsearch")
        .env("LDAPTLS_CACERT", dc.ca_pem())
        .args(["-LLL", "-x", "-H", &dc.ldaps_url(), "-D", &dc.admin_dn(), "-w", &config.admin_password, "-b", &dc.base_dn()])
        .args(["-E", &format!("pr={}/noprompt", args.page_size), filter, "*"])
        .output()
        .context("run ldapsearch")?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(output.status.success(), "ldapsearch failed: {}", String::from_utf8_lossy(&output.stderr));
    let entries = output.stdout.split(|&byte| byte == b'\n').filter(|line| line.starts_with(b"dn:")).count();
    println!("ldapsearch paging:     {entries} entries, {seconds:.1} s ({:.0} entries/s)", entries as f64 / seconds);
    Ok(())
}
