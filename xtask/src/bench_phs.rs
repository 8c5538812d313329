//! `cargo xtask bench-phs`: password hash sync, timed.
//!
//! Throughput (with `--samba-template`): a DC started from a bulk-loaded template whose people
//! get NT hashes (set offline-fast through `ldbmodify` with Samba's bypass-password-hash control:
//! the template's accounts have no passwords), a replication account holding only the two
//! replication rights, and the DRSR client's full pass over the domain — hashes/s, objects/s and
//! this process's peak RSS — then an incremental pass with nothing changed; sample hashes are
//! checked against MD4 of the passwords set.
//!
//! Latency (unless `--changes 0`): a small domain, the tenant in this process, and the release
//! `isthmus sync serve` in near-real-time mode with password hash sync; each change sets a
//! person's password over LDAPS and polls the token endpoint until the new password signs in —
//! median and p99 over the series.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use testkit::samba::{AdUser, SambaConfig, SambaDc, SambaTemplate};

/// Options of `bench-phs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Samba template loaded by `cargo xtask gen-directory --samba-template` (its people get
    /// NT hashes); without it, the throughput part is skipped.
    #[arg(long)]
    samba_template: Option<PathBuf>,
    /// Password changes to time end to end (0 skips that part).
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Near-real-time polling interval in seconds.
    #[arg(long, default_value_t = 1)]
    poll_seconds: u64,
}

/// Runs the benchmark.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if let Some(template) = &args.samba_template {
        runtime.block_on(throughput(template))?;
    }
    if args.changes > 0 {
        let isthmus = std::env::current_exe()?.with_file_name("isthmus");
        anyhow::ensure!(isthmus.exists(), "{} is missing: cargo build --release -p isthmus first", isthmus.display());
        runtime.block_on(latency(args, &isthmus))?;
    }
    Ok(())
}

fn password_of(cn: &str) -> String {
    format!("Bench-{cn}!")
}

/// Gives every person of the running DC an NT hash (MD4 of [`password_of`] their CN) through
/// `ldbmodify` on its database with the bypass-password-hash control; returns their DNs.
fn set_hashes(dc: &SambaDc) -> anyhow::Result<Vec<String>> {
    let sam = dc.dir().join("private").join("sam.ldb");
    let listing = Command::new("ldbsearch")
        .arg("-H")
        .arg(&sam)
        .args(["(&(objectCategory=person)(objectClass=user)(!(isCriticalSystemObject=TRUE)))", "dn"])
        .output()
        .context("run ldbsearch")?;
    anyhow::ensure!(listing.status.success(), "ldbsearch: {}", String::from_utf8_lossy(&listing.stderr));
    let dns: Vec<String> =
        String::from_utf8_lossy(&listing.stdout).lines().filter_map(|line| line.strip_prefix("dn: ")).map(str::to_string).collect();
    // One ldbmodify (one transaction) per chunk: 100,000 changes in one overflow TDB's recovery area.
    let file = dc.dir().join("bench-hashes.ldif");
    let started = Instant::now();
    for chunk in dns.chunks(5_000) {
        let mut ldif = String::new();
        for dn in chunk {
            let cn = dn.split(',').next().and_then(|rdn| rdn.strip_prefix("CN=")).unwrap_or(dn);
            let hash = phs::NtHash::of_password(&password_of(cn));
            ldif.push_str(&format!(
                "dn: {dn}\nchangetype: modify\nreplace: unicodePwd\nunicodePwd:: {}\n\n",
                base64::engine::general_purpose::STANDARD.encode(hash.as_bytes())
            ));
        }
        std::fs::write(&file, ldif)?;
        let modified = Command::new("ldbmodify")
            .arg("-H")
            .arg(&sam)
            .arg("--controls=local_oid:1.3.6.1.4.1.7165.4.3.12:0")
            .arg(&file)
            .output()
            .context("run ldbmodify")?;
        anyhow::ensure!(modified.status.success(), "ldbmodify: {}", String::from_utf8_lossy(&modified.stderr));
    }
    std::fs::remove_file(&file)?;
    println!("NT hashes set on {} people in {:.1} s", dns.len(), started.elapsed().as_secs_f64());
    Ok(dns)
}

async fn throughput(template: &Path) -> anyhow::Result<()> {
    let config = SambaConfig::forest("CORP.EXAMPLE.TEST", "CORP");
    let started = Instant::now();
    let dc = SambaDc::start_from(&SambaTemplate::at(template, config.clone()))?;
    println!("DC started from the template in {:.1} s", started.elapsed().as_secs_f64());
    let people = set_hashes(&dc)?;
    let mut ad = dc.admin().await?;
    let account = ad.create_user(&AdUser::with_password("isthmus-phs", &config.realm.to_lowercase(), "Sync!Acc0unt-1")).await?;
    dc.grant_on_domain_root(&account, "get-changes")?;
    dc.grant_on_domain_root(&account, "get-changes-all")?;
    let credentials = drsr::ntlm::Credentials::with_password("isthmus-phs", &config.domain, "Sync!Acc0unt-1");
    let host = std::net::IpAddr::V4(dc.ip());
    let base = dc.base_dn();

    let started = Instant::now();
    let mut last = Instant::now();
    let mut on_page = |count: usize| {
        if last.elapsed() > Duration::from_secs(10) {
            println!("   … {count} objects after {:.0} s", started.elapsed().as_secs_f64());
            last = Instant::now();
        }
    };
    let full = drsr::hashes::read_hashes(host, &credentials, &base, None, &mut on_page).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rss = crate::bench_hybrid::own_peak_rss_kib();
    // Spot checks: every 997th person's hash is MD4 of the password set.
    let mut checked = 0;
    for dn in people.iter().step_by(997) {
        let account = full.accounts.iter().find(|account| account.dn.eq_ignore_ascii_case(dn)).with_context(|| format!("{dn} not read"))?;
        let cn = dn.split(',').next().and_then(|rdn| rdn.strip_prefix("CN=")).unwrap_or(dn);
        anyhow::ensure!(*account.nt_hash == *phs::NtHash::of_password(&password_of(cn)).as_bytes(), "{dn}: wrong hash");
        checked += 1;
    }
    println!(
        "DRSR full pass: {} objects, {} NT hashes in {seconds:.1} s = {:.0} hashes/s ({:.0} objects/s); peak RSS of this process {} MiB; {checked} hashes spot-checked",
        full.objects,
        full.accounts.len(),
        full.accounts.len() as f64 / seconds,
        full.objects as f64 / seconds,
        rss / 1024
    );
    let started = Instant::now();
    let quiet = drsr::hashes::read_hashes(host, &credentials, &base, Some(&full.watermark), &mut |_| {}).await?;
    println!(
        "DRSR incremental pass, nothing changed: {} objects, {} hashes in {:.2} s",
        quiet.objects,
        quiet.accounts.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn latency(args: &Args, isthmus: &Path) -> anyhow::Result<()> {
    let config = SambaConfig::forest("CORP.EXAMPLE.TEST", "CORP");
    let dc = SambaDc::start(&config)?;
    let domain = config.realm.to_lowercase();
    let mut ad = dc.admin().await?;
    let ou = ad.create_ou("BenchPhs", None).await?;
    let person = ad.create_user(&AdUser { parent_dn: Some(ou.clone()), ..AdUser::with_password("pat", &domain, "Bench!Pass.0") }).await?;
    let account = ad.create_user(&AdUser::with_password("isthmus-phs", &domain, "Sync!Acc0unt-1")).await?;
    dc.grant_on_domain_root(&account, "get-changes")?;
    dc.grant_on_domain_root(&account, "get-changes-all")?;

    let folder = tempfile::tempdir()?;
    let mut tenant_config = tenant::TenantConfig::new(folder.path().join("tenant"), vec!["127.0.0.1:0".parse()?]);
    // Polling with a password not synced yet fails sign-ins on purpose: no lockout here.
    tenant_config.lockout_threshold = u32::MAX;
    let (tenant, _) = tenant::Tenant::open(tenant_config).await?;
    tenant.verify_domain_by_override(&domain, "bench-phs").await?;
    let sync = tenant.register_app("Isthmus sync", &[tenant::SYNC_ROLE]).await?;
    let public = tenant.register_public_app("a public client").await?;
    let (initial, ca) = (tenant.initial_domain().to_string(), tenant.ca_pem.clone());
    let running = tenant.spawn().await?;
    let (_stop, base) = (running.stop, running.base);
    let http =
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca)?)?).use_rustls_tls().build()?;
    let config_path = folder.path().join("isthmus.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"[store]
sqlite = "isthmus.db"

[sync]
default_rules = true
source_anchor = "objectGUID"

[[connector]]
id = "{domain}"
flavour = "active-directory"
host = "{host}"
ca_file = "{dc_ca}"
include_ous = ["{ou}"]
password_hash_sync = true
[connector.bind]
method = "simple"
dn = "{account}"
password = "Sync!Acc0unt-1"

[[graph]]
id = "tenant"
authority = "{base}"
graph = "{base}/v1.0"
tenant = "{initial}"
client_id = "{client_id}"
client_secret = "{client_secret}"
ca_file = "{tenant_ca}"
"#,
            host = dc.ip(),
            dc_ca = dc.ca_pem().display(),
            client_id = sync.client_id,
            client_secret = &*sync.client_secret,
            tenant_ca = ca.display(),
        ),
    )?;
    let log = folder.path().join("serve.log");
    let mut serve = Command::new(isthmus)
        .args(["sync", "serve", "--config", config_path.to_str().context("a UTF-8 path")?, "--interval-minutes", "60"])
        .args(["--password-sync-minutes", "60", "--near-real-time-seconds", &args.poll_seconds.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let signs_in = |password: String| {
        let form = [
            ("grant_type", "password".to_string()),
            ("client_id", public.clone()),
            ("username", format!("pat@{domain}")),
            ("password", password),
            ("scope", "openid".to_string()),
        ];
        let request = http.post(format!("{base}/{initial}/oauth2/v2.0/token")).form(&form);
        async move { request.send().await.is_ok_and(|response| response.status().is_success()) }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !signs_in("Bench!Pass.0".into()).await {
        anyhow::ensure!(Instant::now() < deadline, "the first password never arrived:\n{}", std::fs::read_to_string(&log)?);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut latencies = Vec::new();
    for n in 1..=args.changes {
        let password = format!("Bench!Pass.{n}");
        let started = Instant::now();
        ad.set_password(&person, &password).await?;
        while !signs_in(password.clone()).await {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "change {n} never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies.push(started.elapsed().as_secs_f64());
    }
    let _ = Command::new("kill").args(["-TERM", &serve.id().to_string()]).status();
    let _ = serve.wait();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "password change on-premises → cloud sign-in ({} s polling): {} changes, median {:.2} s, p99 {:.2} s, min {:.2} s, max {:.2} s",
        args.poll_seconds,
        latencies.len(),
        at(0.5),
        at(0.99),
        latencies[0],
        latencies[latencies.len() - 1]
    );
    Ok(())
}
