//! `cargo xtask bench-tenant`: the tenant over HTTPS on loopback (release build, SQLite or a
//! private PostgreSQL server, its default 600,000 PBKDF2 iterations): client-credentials tokens/s, password sign-ins/s, and
//! user creates/s through `$batch` (synced users without a password, as the sync connector
//! creates them, and cloud users with one), and the Graph connector's exports one by one and
//! in chunks.

use std::time::Instant;

use anyhow::Context;
use connector_api::ExportRequest;
use model::{AttrChange, AttrValue, PendingExport};
use serde_json::{Value, json};

/// Options of `bench-tenant`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Token requests to time.
    #[arg(long, default_value_t = 2000)]
    tokens: usize,
    /// Password sign-ins to time.
    #[arg(long, default_value_t = 40)]
    sign_ins: usize,
    /// Users to create through $batch (each kind).
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Where the tenant keeps its directory: sqlite or postgres (a private test-kit server).
    #[arg(long, default_value = "sqlite")]
    store: String,
}

/// Runs the benchmark and prints one line per measurement.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = tenant::TenantConfig::new(dir.path().join("state"), vec!["127.0.0.1:0".parse()?]);
    let _server = match args.store.as_str() {
        "sqlite" => None,
        "postgres" => {
            let server = testkit::postgres::Postgres::start()?;
            config.postgres = Some(server.url().to_string());
            Some(server)
        }
        other => anyhow::bail!("--store must be sqlite or postgres, not {other}"),
    };
    println!("tenant store: {}", args.store);
    let (tenant, bootstrap) = tenant::Tenant::open(config).await?;
    let admin = bootstrap.context("a new tenant has an admin app")?;
    let domain = tenant.initial_domain().to_string();
    let sync = tenant.register_app("sync", &[tenant::SYNC_ROLE]).await?;
    // User sign-ins come from a public client (a confidential one would send its secret).
    let public = tenant.register_public_app("bench public client").await?;
    let ca_file = tenant.ca_pem.clone();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_file)?)?;
    let running = tenant.spawn().await?;
    let (_stop, base) = (running.stop, running.base);
    let client = reqwest::Client::builder().add_root_certificate(ca).use_rustls_tls().build()?;
    let token_url = format!("{base}/{domain}/oauth2/v2.0/token");

    // Client credentials.
    let form = [
        ("grant_type", "client_credentials".to_string()),
        ("client_id", admin.client_id.clone()),
        ("client_secret", admin.client_secret.to_string()),
        ("scope", "https://graph.microsoft.com/.default".to_string()),
    ];
    let started = Instant::now();
    let mut token = String::new();
    let sync_form = [
        ("grant_type", "client_credentials".to_string()),
        ("client_id", sync.client_id.clone()),
        ("client_secret", sync.client_secret.to_string()),
        ("scope", "https://graph.microsoft.com/.default".to_string()),
    ];
    for chunk in (0..args.tokens).collect::<Vec<_>>().chunks(args.concurrency) {
        let answers = futures(chunk.len(), || client.post(&token_url).form(&form).send()).await;
        for answer in answers {
            let body: Value = answer?.error_for_status()?.json().await?;
            token = body["access_token"].as_str().unwrap_or_default().to_string();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "client-credentials tokens: {} in {seconds:.2} s ({:.0}/s, {} in flight)",
        args.tokens,
        args.tokens as f64 / seconds,
        args.concurrency
    );

    let sync_token: Value = client.post(&token_url).form(&sync_form).send().await?.error_for_status()?.json().await?;
    let sync_token = sync_token["access_token"].as_str().unwrap_or_default().to_string();

    // Users through $batch: synced (no password, by the sync service), then cloud-only (PBKDF2 each).
    for (kind, with_password) in [("synced", false), ("cloud-only", true)] {
        let token = if with_password { token.clone() } else { sync_token.clone() };
        let count = if with_password { args.users.min(200) } else { args.users };
        let started = Instant::now();
        let mut created = 0;
        let batches: Vec<Value> = (0..count)
            .collect::<Vec<_>>()
            .chunks(20)
            .map(|chunk| {
                let requests: Vec<Value> = chunk
                    .iter()
                    .map(|n| {
                        let nickname = format!("{kind}{n}");
                        let mut body = json!({"accountEnabled": true, "displayName": nickname, "mailNickname": nickname, "userPrincipalName": format!("{nickname}@{domain}")});
                        if with_password {
                            body["passwordProfile"] = json!({"password": "Str0ng!Pass", "forceChangePasswordNextSignIn": false});
                        } else {
                            body["onPremisesImmutableId"] = json!(format!("immutable-{n}"));
                            body["onPremisesSyncEnabled"] = json!(true);
                        }
                        json!({"id": n.to_string(), "method": "POST", "url": "/users", "body": body})
                    })
                    .collect();
                json!({"requests": requests})
            })
            .collect();
        for group in batches.chunks(args.concurrency) {
            let answers = futures(group.len(), {
                let mut index = 0;
                let group = group.to_vec();
                let (client, token, base) = (&client, &token, &base);
                move || {
                    let batch = group[index].clone();
                    index += 1;
                    client.post(format!("{base}/v1.0/$batch")).bearer_auth(token).json(&batch).send()
                }
            })
            .await;
            for answer in answers {
                let body: Value = answer?.error_for_status()?.json().await?;
                created += body["responses"]
                    .as_array()
                    .map_or(0, |responses| responses.iter().filter(|response| response["status"] == 201).count());
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(created == count, "only {created} of {count} {kind} users were created");
        println!("{kind} user creates through $batch: {count} in {seconds:.2} s ({:.0}/s)", count as f64 / seconds);
    }

    // The Graph connector's exports of synced users: one request each, then in chunks of 20
    // (the runner's chunk; the connector sends each chunk as one `$batch`).
    let connector = connector_graph::open(connector_graph::GraphConfig {
        id: "tenant".into(),
        authority: base.clone(),
        graph: format!("{base}/v1.0"),
        tenant: domain.clone(),
        client_id: sync.client_id.clone(),
        client_secret: sync.client_secret.clone(),
        ca_file: Some(ca_file.clone()),
        page_size: 999,
        attempts: 3,
    })
    .await?;
    let export = connector.export.as_ref().context("the Graph connector exports")?;
    let add = |kind: &str, n: usize| ExportRequest {
        dn: format!("CN={kind}{n}"),
        object_type: "user".into(),
        anchor: None,
        change: PendingExport::Add(vec![
            AttrChange::Replace("accountEnabled".into(), vec![AttrValue::Boolean(true)]),
            AttrChange::Replace("displayName".into(), vec![AttrValue::string(format!("{kind}{n}"))]),
            AttrChange::Replace("mailNickname".into(), vec![AttrValue::string(format!("{kind}{n}"))]),
            AttrChange::Replace("userPrincipalName".into(), vec![AttrValue::string(format!("{kind}{n}@{domain}"))]),
            AttrChange::Replace("onPremisesImmutableId".into(), vec![AttrValue::string(format!("{kind}-{n}"))]),
            AttrChange::Replace("onPremisesSyncEnabled".into(), vec![AttrValue::Boolean(true)]),
        ]),
    };
    let single = (args.users / 4).max(1);
    let started = Instant::now();
    for n in 0..single {
        export.export(&add("single", n)).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("connector exports, one request each: {single} in {seconds:.2} s ({:.0}/s)", single as f64 / seconds);
    let requests: Vec<ExportRequest> = (0..args.users).map(|n| add("chunked", n)).collect();
    let started = Instant::now();
    for chunk in requests.chunks(20) {
        for result in export.export_many(chunk).await {
            result?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("connector exports, chunks of 20 ($batch): {} in {seconds:.2} s ({:.0}/s)", args.users, args.users as f64 / seconds);
    // As the runner sends them: four chunks in flight.
    let requests: Vec<ExportRequest> = (0..args.users).map(|n| add("parallel", n)).collect();
    let started = Instant::now();
    for group in requests.chunks(80) {
        let calls: Vec<_> = group.chunks(20).map(|chunk| export.export_many(chunk)).collect();
        for results in futures_util::future::join_all(calls).await {
            for result in results {
                result?;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("connector exports, chunks of 20, 4 in flight: {} in {seconds:.2} s ({:.0}/s)", args.users, args.users as f64 / seconds);

    // Password sign-ins of the cloud-only users.
    let started = Instant::now();
    let sign_ins = args.sign_ins.min(args.users.min(200));
    for chunk in (0..sign_ins).collect::<Vec<_>>().chunks(args.concurrency) {
        let forms: Vec<[(&str, String); 5]> = chunk
            .iter()
            .map(|n| {
                [
                    ("grant_type", "password".to_string()),
                    ("client_id", public.clone()),
                    ("username", format!("cloud-only{n}@{domain}")),
                    ("password", "Str0ng!Pass".to_string()),
                    ("scope", "openid profile User.Read".to_string()),
                ]
            })
            .collect();
        let mut index = 0;
        let answers = futures(forms.len(), || {
            let form = forms[index].clone();
            index += 1;
            client.post(&token_url).form(&form).send()
        })
        .await;
        for answer in answers {
            answer?.error_for_status()?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("password sign-ins (PBKDF2 600,000): {sign_ins} in {seconds:.2} s ({:.1}/s)", sign_ins as f64 / seconds);
    Ok(())
}

/// Starts `count` requests made by `make` and waits for all of them.
async fn futures<F>(count: usize, mut make: impl FnMut() -> F) -> Vec<reqwest::Result<reqwest::Response>>
where
    F: std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static,
{
    let handles: Vec<_> = (0..count).map(|_| tokio::spawn(make())).collect();
    let mut out = Vec::new();
    for handle in handles {
        match handle.await {
            Ok(result) => out.push(result),
            Err(err) => panic!("request task failed: {err}"),
        }
    }
    out
}
