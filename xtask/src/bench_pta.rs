//! `cargo xtask bench-pta`: pass-through authentication, timed.
//!
//! A Samba AD DC, the tenant in this process (HTTPS on loopback), and release `isthmus
//! pta-agent` processes. First the floor: a bare LDAPS simple bind of a user on a kept
//! connection, one at a time (median, p99). Then ROPC sign-ins of synced users of a pass-through
//! domain through the token endpoint: one at a time for the latency (median, p99, and what it
//! adds over the bare bind), and with many in flight for sign-ins/s, with one agent and with
//! three.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use testkit::samba::{AdUser, SambaDc};

/// Options of `bench-pta`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sign-ins (and bare binds) timed one at a time.
    #[arg(long, default_value_t = 300)]
    sequential: usize,
    /// Sign-ins for the throughput runs.
    #[arg(long, default_value_t = 2000)]
    total: usize,
    /// Sign-ins in flight during the throughput runs.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Users signing in (round robin).
    #[arg(long, default_value_t = 50)]
    users: usize,
}

const PASSWORD: &str = "Bench!Pta.123";

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the benchmark.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let isthmus = std::env::current_exe()?.with_file_name("isthmus");
    anyhow::ensure!(isthmus.exists(), "{} is missing: cargo build --release -p isthmus first", isthmus.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(bench(args, &isthmus))
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

async fn bench(args: &Args, isthmus: &std::path::Path) -> anyhow::Result<()> {
    let dc = SambaDc::start_default()?;
    let folder = tempfile::tempdir()?;
    let realm = dc.config().realm.to_lowercase();
    let mut config = tenant::TenantConfig::new(folder.path().join("tenant"), vec!["127.0.0.1:0".parse()?]);
    config.lockout_threshold = u32::MAX;
    let (tenant, bootstrap) = tenant::Tenant::open(config).await?;
    let admin = bootstrap.context("a new tenant has its admin app")?;
    let sync = tenant.register_app("Isthmus sync", &[tenant::SYNC_ROLE]).await?;
    let public = tenant.register_public_app("bench client").await?;
    tenant.verify_domain_by_override(&realm, "bench-pta").await?;
    let running = tenant.spawn().await?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&running.ca_pem)?)?)
        .use_rustls_tls()
        .pool_max_idle_per_host(64)
        .build()?;
    let base = running.base.clone();
    let token = |client_id: String, secret: String| {
        let (http, url) = (http.clone(), format!("{base}/{realm}/oauth2/v2.0/token"));
        async move {
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", client_id.as_str()),
                ("client_secret", secret.as_str()),
                ("scope", "https://graph.microsoft.com/.default"),
            ];
            let body: Value = http.post(url).form(&form).send().await?.json().await?;
            anyhow::Ok(body["access_token"].as_str().context("a token")?.to_string())
        }
    };
    let admin_token = token(admin.client_id.clone(), admin.client_secret.to_string()).await?;
    let sync_token = token(sync.client_id.clone(), sync.client_secret.to_string()).await?;
    let response = http
        .patch(format!("{base}/v1.0/domains/{realm}"))
        .bearer_auth(&admin_token)
        .json(&json!({"passwordValidation": "PassThrough"}))
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "switching the domain to pass-through: {}", response.text().await?);

    let mut ad = dc.admin().await?;
    let mut users = Vec::new();
    for index in 0..args.users.max(1) {
        let sam = format!("pta{index:04}");
        ad.create_user(&AdUser::with_password(&sam, &realm, PASSWORD)).await?;
        let user = json!({"accountEnabled": true, "displayName": sam, "mailNickname": sam, "userPrincipalName": format!("{sam}@{realm}"),
                          "onPremisesImmutableId": format!("{sam}-anchor"), "onPremisesSyncEnabled": true});
        let response = http.post(format!("{base}/v1.0/users")).bearer_auth(&sync_token).json(&user).send().await?;
        anyhow::ensure!(response.status().is_success(), "creating {sam}: {}", response.text().await?);
        users.push(format!("{sam}@{realm}"));
    }
    println!("Samba AD DC {}, tenant {base}, {} users", dc.ip(), users.len());

    // The floor: a bare bind on a kept LDAPS connection.
    let mut ldap = testkit::ldap::Connection::connect(&dc.ldaps_url(), Some(dc.ca_pem()), false).await?;
    for user in users.iter().take(50) {
        ldap.bind(user, PASSWORD).await?;
    }
    let mut binds = Vec::new();
    for index in 0..args.sequential {
        let started = Instant::now();
        ldap.bind(&users[index % users.len()], PASSWORD).await?;
        binds.push(started.elapsed());
    }
    let (bind_median, bind_p99) = percentiles(binds);
    println!("bare LDAPS bind: median {bind_median:.2} ms, p99 {bind_p99:.2} ms ({} binds)", args.sequential);
    // The DC's own ceiling: bare binds on as many connections as sign-ins in flight.
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let per_connection = args.total / args.concurrency.max(1);
    for connection in 0..args.concurrency.max(1) {
        let (url, ca, users) = (dc.ldaps_url(), dc.ca_pem().to_path_buf(), users.clone());
        set.spawn(async move {
            let mut ldap = testkit::ldap::Connection::connect(&url, Some(&ca), false).await?;
            for index in 0..per_connection {
                ldap.bind(&users[(connection + index) % users.len()], PASSWORD).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = set.join_next().await {
        result??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let binds = per_connection * args.concurrency.max(1);
    println!("bare LDAPS binds, {} connections: {binds} in {elapsed:.2} s = {:.0} binds/s", args.concurrency, binds as f64 / elapsed);

    let sign_in = |user: String| {
        let (http, url, client) = (http.clone(), format!("{base}/{realm}/oauth2/v2.0/token"), public.clone());
        async move {
            let form = [
                ("grant_type", "password"),
                ("client_id", client.as_str()),
                ("username", user.as_str()),
                ("password", PASSWORD),
                ("scope", "openid User.Read"),
            ];
            let response = http.post(url).form(&form).send().await?;
            let status = response.status();
            let body = response.text().await?;
            anyhow::ensure!(status.is_success(), "{user}: {body}");
            anyhow::Ok(())
        }
    };

    let mut agents = Vec::new();
    for count in [1usize, 3] {
        while agents.len() < count {
            let name = format!("agent-{}", agents.len() + 1);
            let dir = folder.path().join(&name);
            let output = Command::new(isthmus)
                .args(["pta-agent", "register", "--tenant-url", &base, "--tenant", &realm, "--client-id", &admin.client_id])
                .args(["--tenant-ca", running.ca_pem.to_str().context("path")?, "--state-dir", dir.to_str().context("path")?])
                .args(["--machine-name", &name])
                .env("ISTHMUS_CLIENT_SECRET", admin.client_secret.as_str())
                .output()?;
            anyhow::ensure!(output.status.success(), "register {name}: {}", String::from_utf8_lossy(&output.stderr));
            let child = Command::new(isthmus)
                .args(["pta-agent", "run", "--state-dir", dir.to_str().context("path")?, "--workers", "16"])
                .args(["--dc", &dc.ldaps_url(), "--dc-ca", dc.ca_pem().to_str().context("path")?])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            agents.push(Agent(child));
        }
        // Until every agent answers (the first sign-ins also warm the connections).
        let started = Instant::now();
        loop {
            let list: Value = http
                .get(format!("{base}/isthmus/v1/passThroughAuthentication/agents"))
                .bearer_auth(&admin_token)
                .send()
                .await?
                .json()
                .await?;
            let active = list["value"].as_array().map_or(0, |agents| agents.iter().filter(|agent| agent["status"] == "active").count());
            if active >= count {
                break;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the agents never connected: {list}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for user in users.iter().take(32) {
            sign_in(user.clone()).await?;
        }
        let mut latencies = Vec::new();
        for index in 0..args.sequential {
            let started = Instant::now();
            sign_in(users[index % users.len()].clone()).await?;
            latencies.push(started.elapsed());
        }
        let (median, p99) = percentiles(latencies);
        println!(
            "{count} agent(s), one at a time: median {median:.2} ms, p99 {p99:.2} ms — over the bare bind: +{:.2} ms median, +{:.2} ms p99",
            median - bind_median,
            p99 - bind_p99
        );
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let mut next = 0usize;
        let mut done = 0usize;
        while done < args.total {
            while set.len() < args.concurrency && next < args.total {
                set.spawn(sign_in(users[next % users.len()].clone()));
                next += 1;
            }
            if let Some(result) = set.join_next().await {
                result??;
                done += 1;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{count} agent(s), {} in flight: {} sign-ins in {elapsed:.2} s = {:.0} sign-ins/s",
            args.concurrency,
            args.total,
            args.total as f64 / elapsed
        );
    }
    drop(agents);
    let _ = running.stop.send(());
    Ok(())
}
