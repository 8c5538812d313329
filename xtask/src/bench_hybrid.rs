//! `cargo xtask bench-hybrid`: the whole hybrid path, timed. A Samba AD DC (a bulk-loaded
//! template, or the test kit's small one with a few people added), the tenant in this process
//! (HTTPS, SQLite), and the release `isthmus` binary syncing the forest into it with the default
//! rules: the initial sync's wall time, objects/s and the sync process's peak RSS, each step
//! against the floor (`ldapsearch` paging through the same entries from the same DC, measured in
//! the same run); a delta cycle after a batch of changes, end to end; then `isthmus sync serve`
//! in near-real-time mode and the latency from an AD change to its arrival in the tenant over a
//! series of changes (median, p99).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use testkit::samba::{AdUser, SambaConfig, SambaDc, SambaTemplate};

/// Options of `bench-hybrid`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Samba template loaded by `cargo xtask gen-directory --samba-template` (default: the
    /// test kit's empty domain with `--people` added).
    #[arg(long)]
    samba_template: Option<PathBuf>,
    /// People to add to the default domain.
    #[arg(long, default_value_t = 20)]
    people: usize,
    /// Changes to time in near-real-time mode (0 skips that part).
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Users changed at once before the timed delta cycle (0 skips that part).
    #[arg(long, default_value_t = 100)]
    delta_changes: usize,
    /// Near-real-time polling interval in seconds.
    #[arg(long, default_value_t = 1)]
    poll_seconds: u64,
    /// The source anchor (`objectGUID` leaves out the consistency-GUID writeback to AD, which a
    /// large Samba directory takes a long time to write).
    #[arg(long, default_value = "mS-DS-ConsistencyGuid")]
    source_anchor: String,
}

/// Runs the benchmark.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let isthmus = std::env::current_exe()?.with_file_name("isthmus");
    anyhow::ensure!(isthmus.exists(), "{} is missing: cargo build --release -p isthmus first", isthmus.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(bench(args, &isthmus))
}

/// One `isthmus` run under `/usr/bin/time`: (success, stdout, stderr, seconds, peak RSS in KiB).
fn timed(isthmus: &Path, arguments: &[&str]) -> anyhow::Result<(bool, String, String, f64, u64)> {
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("maxrss-kib=%M")
        .arg(isthmus)
        .args(arguments)
        .env("RUST_LOG", "warn")
        .output()
        .context("run isthmus under /usr/bin/time")?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let rss = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("maxrss-kib="))
        .filter_map(|kib| kib.trim().parse().ok())
        .next_back()
        .unwrap_or(0);
    Ok((output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), stderr, seconds, rss))
}

async fn bench(args: &Args, isthmus: &Path) -> anyhow::Result<()> {
    let config = SambaConfig::forest("CORP.EXAMPLE.TEST", "CORP");
    let dc = match &args.samba_template {
        Some(dir) => SambaDc::start_from(&SambaTemplate::at(dir, config.clone()))?,
        None => SambaDc::start(&config)?,
    };
    let domain = config.realm.to_lowercase();
    let mut ad = dc.admin().await?;
    let ou = ad.create_ou(&format!("Bench-{}", std::process::id()), None).await?;
    let mut probes = Vec::new();
    let probe_count = if args.samba_template.is_some() { 1 } else { args.people.max(1) }.max(args.delta_changes);
    for n in 0..probe_count {
        let user = AdUser { parent_dn: Some(ou.clone()), ..AdUser::with_password(&format!("probe{n}"), &domain, "Str0ng!Pass.1") };
        probes.push(ad.create_user(&user).await?);
    }

    // The tenant, with the forest's domain verified and an app for the sync.
    let folder = tempfile::tempdir()?;
    let tenant_config = tenant::TenantConfig::new(folder.path().join("tenant"), vec!["127.0.0.1:0".parse()?]);
    let (tenant, bootstrap) = tenant::Tenant::open(tenant_config).await?;
    let admin = bootstrap.context("a new tenant has an admin app")?;
    tenant.verify_domain_by_override(&domain, "bench-hybrid").await?;
    let sync = tenant.register_app("Isthmus sync", &[tenant::SYNC_ROLE]).await?;
    let (initial, ca) = (tenant.initial_domain().to_string(), tenant.ca_pem.clone());
    let running = tenant.spawn().await?;
    let (_stop, base) = (running.stop, running.base);
    let http =
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca)?)?).use_rustls_tls().build()?;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", admin.client_id.as_str()),
        ("client_secret", admin.client_secret.as_str()),
        ("scope", "x/.default"),
    ];
    let token: Value = http.post(format!("{base}/{initial}/oauth2/v2.0/token")).form(&form).send().await?.json().await?;
    let token = token["access_token"].as_str().context("an admin token")?.to_string();

    let config_path = folder.path().join("isthmus.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"[store]
sqlite = "isthmus.db"

[sync]
default_rules = true
deletion_threshold = 0
source_anchor = "{source_anchor}"

[[connector]]
id = "{domain}"
flavour = "active-directory"
host = "{host}"
ca_file = "{dc_ca}"
[connector.bind]
method = "simple"
dn = "{dc_admin}"
password = "{dc_password}"

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
            dc_admin = dc.admin_dn(),
            dc_password = config.admin_password,
            client_id = sync.client_id,
            client_secret = &*sync.client_secret,
            tenant_ca = ca.display(),
            source_anchor = args.source_anchor,
        ),
    )?;
    let config_arg = config_path.to_str().context("a UTF-8 path")?;

    // The floor: the entries the connector imports, paged over LDAPS from the same DC.
    let login = ["-D", &dc.admin_dn(), "-w", &config.admin_password, "-b", &dc.base_dn()].map(String::from);
    let floor = crate::bench_import::ldapsearch(&dc.ldaps_url(), dc.ca_pem(), &login, crate::bench_import::AD_FILTER, &["*"], 1000)?;

    // The initial sync: a full cycle, and the delta cycle that exports the group members.
    let (ok, out, err, full_seconds, full_rss) = timed(isthmus, &["sync", "run", "--config", config_arg, "--full"])?;
    anyhow::ensure!(ok, "the initial cycle failed:\n{out}\n{err}");
    let (ok, out2, err, second_seconds, second_rss) = timed(isthmus, &["sync", "run", "--config", config_arg])?;
    anyhow::ensure!(ok, "the second cycle failed:\n{out2}\n{err}");
    // The second cycle's confirming import brings the groups back with their members; a third
    // cycle syncs them, and only then is the initial sync settled (nothing pending).
    let (ok, out3, err, third_seconds, _) = timed(isthmus, &["sync", "run", "--config", config_arg])?;
    anyhow::ensure!(ok, "the third cycle failed:\n{out3}\n{err}");
    let imported: u64 = out
        .lines()
        .find(|line| line.contains(&domain) && line.contains("full-import"))
        .and_then(|line| line.split("adds").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    println!("{out}{out2}{out3}");
    println!(
        "initial sync: {imported} AD objects; full cycle {full_seconds:.1} s ({:.0} objects/s, peak RSS {} MiB), second cycle {second_seconds:.1} s (peak RSS {} MiB), third cycle {third_seconds:.1} s; tenant process peak RSS {} MiB",
        imported as f64 / full_seconds,
        full_rss / 1024,
        second_rss / 1024,
        own_peak_rss_kib() / 1024
    );
    let initial_runs = print_against_floor(isthmus, config_arg, floor, full_seconds + second_seconds + third_seconds, 0)?;

    // The DC may have closed the admin connection while it sat idle through the initial sync.
    let mut ad = dc.admin().await?;
    if args.delta_changes > 0 {
        // A batch of changes, then one delta cycle timed from its start to the last change
        // readable through Graph.
        for (n, probe) in probes.iter().take(args.delta_changes).enumerate() {
            ad.conn().replace(probe, "title", &[format!("Delta {n}").as_str()]).await?;
        }
        let started = Instant::now();
        let (ok, out, err, seconds, rss) = timed(isthmus, &["sync", "run", "--config", config_arg])?;
        anyhow::ensure!(ok, "the delta cycle failed:\n{out}\n{err}");
        println!("{out}");
        print_against_floor(isthmus, config_arg, floor, seconds, initial_runs)?;
        for (n, probe) in probes.iter().take(args.delta_changes).enumerate() {
            let title = job_title(&http, &base, &token, probe, &domain).await?;
            anyhow::ensure!(
                title == format!("Delta {n}").as_str(),
                "change {n} is not in the tenant after the delta cycle: jobTitle {title}"
            );
        }
        println!(
            "delta cycle after {} changed users: {seconds:.2} s for `isthmus sync run` (peak RSS {} MiB), {:.2} s until every change was read back through Graph",
            args.delta_changes.min(probes.len()),
            rss / 1024,
            started.elapsed().as_secs_f64()
        );
    }

    if args.changes == 0 {
        return Ok(());
    }
    // Near-real-time mode: `sync serve` polls DirSync every few seconds and runs a cycle on change.
    let log = folder.path().join("serve.log");
    let mut serve = Command::new(isthmus)
        .args(["sync", "serve", "--config", config_arg, "--interval-minutes", "60"])
        .args(["--near-real-time-seconds", &args.poll_seconds.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Its first cycle is a full one; wait for it (as `isthmus sync status` reports it) before
    // timing changes.
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let status = Command::new(isthmus).args(["sync", "status", "--config", config_arg, "--json"]).output()?;
        let cycles = serde_json::from_slice::<Value>(&status.stdout).ok().and_then(|status| status["cycles"].as_u64()).unwrap_or(0);
        if cycles >= 1 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "sync serve never finished its first cycle:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut latencies = Vec::new();
    for n in 0..args.changes {
        let probe = &probes[n % probes.len()];
        let title = format!("Title {n}");
        let started = Instant::now();
        ad.conn().replace(probe, "title", &[title.as_str()]).await?;
        loop {
            if job_title(&http, &base, &token, probe, &domain).await? == title.as_str() {
                break;
            }
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
        "near-real-time ({} s polling): {} changes, latency median {:.2} s, p99 {:.2} s, min {:.2} s, max {:.2} s",
        args.poll_seconds,
        latencies.len(),
        at(0.5),
        at(0.99),
        latencies[0],
        latencies[latencies.len() - 1]
    );
    Ok(())
}

/// A probe user's `jobTitle` as Graph returns it (the user named by its DN's CN, `probe<n>`).
async fn job_title(http: &reqwest::Client, base: &str, token: &str, probe_dn: &str, domain: &str) -> anyhow::Result<Value> {
    let sam = probe_dn.split(',').next().and_then(|rdn| rdn.strip_prefix("CN=")).unwrap_or("probe0");
    let user: Value =
        http.get(format!("{base}/v1.0/users/{sam}@{domain}?$select=jobTitle")).bearer_auth(token).send().await?.json().await?;
    Ok(user["jobTitle"].clone())
}

/// Each step run after the first `skip` (from `isthmus history`, 1-second resolution) against
/// the floor, and `total` seconds against it; the number of runs so far.
fn print_against_floor(isthmus: &Path, config: &str, floor: f64, total: f64, skip: usize) -> anyhow::Result<usize> {
    let output = Command::new(isthmus).args(["history", "--config", config, "--json", "--limit", "100"]).output()?;
    anyhow::ensure!(output.status.success(), "isthmus history failed: {}", String::from_utf8_lossy(&output.stderr));
    let history: Value = serde_json::from_slice(&output.stdout)?;
    let mut runs: Vec<&Value> = history["value"].as_array().context("a history")?.iter().collect();
    runs.reverse();
    let count = runs.len();
    println!("{:<22} {:<13} {:>8} {:>8} {:>8} {:>9}", "connector", "step", "adds", "updates", "seconds", "× floor");
    for run in runs.into_iter().skip(skip) {
        let seconds = run["finished"].as_i64().unwrap_or(0) - run["started"].as_i64().unwrap_or(0);
        println!(
            "{:<22} {:<13} {:>8} {:>8} {:>8} {:>9.2}",
            run["connector"].as_str().unwrap_or("?"),
            run["step"].as_str().unwrap_or("?"),
            run["adds"].as_u64().unwrap_or(0),
            run["updates"].as_u64().unwrap_or(0),
            seconds,
            seconds as f64 / floor
        );
    }
    println!("these cycles: {total:.1} s = {:.2} × the ldapsearch floor ({floor:.1} s)", total / floor);
    Ok(count)
}

/// This process's peak RSS (the tenant runs here), from /proc.
pub(crate) fn own_peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find_map(|line| line.strip_prefix("VmHWM:")?.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}
