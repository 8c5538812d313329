//! `cargo xtask gen-directory`: writes `ad.ldif` and `openldap.ldif` for a synthetic directory and,
//! with `--samba-template`, provisions a Samba domain there and bulk-loads it offline.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use testkit::directory::{GenConfig, generate, write_ad_ldif, write_openldap_ldif};
use testkit::samba::{SambaConfig, SambaTemplate};

/// Options of `gen-directory`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of people.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Number of groups.
    #[arg(long, default_value_t = 50)]
    groups: usize,
    /// Number of contacts.
    #[arg(long, default_value_t = 100)]
    contacts: usize,
    /// UPN/mail domains, comma-separated.
    #[arg(long, default_value = "corp.example.test", value_delimiter = ',')]
    domains: Vec<String>,
    /// Seed; the same seed gives the same directory.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output folder for the LDIF files.
    #[arg(long, default_value = "target/directory")]
    out: PathBuf,
    /// Also provision a Samba domain into this folder and load the AD LDIF into it offline.
    #[arg(long)]
    samba_template: Option<PathBuf>,
    /// Realm of that Samba domain.
    #[arg(long, default_value = "CORP.EXAMPLE.TEST")]
    realm: String,
}

/// Runs the generator.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let config =
        GenConfig { users: args.users, groups: args.groups, contacts: args.contacts, domains: args.domains.clone(), seed: args.seed };
    let started = Instant::now();
    let directory = generate(&config);
    eprintln!(
        "generated {} people, {} groups, {} contacts in {:.1} s",
        directory.people.len(),
        directory.groups.len(),
        directory.contacts.len(),
        started.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let samba = SambaConfig::forest(&args.realm, args.realm.split('.').next().unwrap_or("CORP"));
    let ad_path = args.out.join("ad.ldif");
    write_file(&ad_path, |out| write_ad_ldif(&directory, &samba.base_dn(), out))?;
    let ol_path = args.out.join("openldap.ldif");
    write_file(&ol_path, |out| write_openldap_ldif(&directory, testkit::slapd::SUFFIX, out))?;
    eprintln!("wrote {} and {}", ad_path.display(), ol_path.display());

    if let Some(template_dir) = &args.samba_template {
        anyhow::ensure!(!template_dir.exists(), "{} already exists; remove it or pick another folder", template_dir.display());
        let started = Instant::now();
        let template = SambaTemplate::shared(&samba)?.copy_to(template_dir)?;
        let entries = directory.people.len() + directory.groups.len() + directory.contacts.len();
        eprintln!(
            "copied the {} template in {:.1} s; loading {entries} entries with ldbadd (slow for large directories: see docs/testing.md) …",
            samba.realm,
            started.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        template.load_ldif(&ad_path)?;
        eprintln!("loaded in {:.1} s; start DCs from it with SambaTemplate::at", started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn write_file(path: &PathBuf, write: impl FnOnce(&mut BufWriter<std::fs::File>) -> std::io::Result<()>) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    write(&mut out).with_context(|| format!("write {}", path.display()))?;
    out.flush().with_context(|| format!("write {}", path.display()))?;
    Ok(())
}
