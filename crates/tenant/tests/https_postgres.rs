//! The tenant's HTTPS suite (`suite/https.rs`) with the directory in PostgreSQL (a private
//! server per test), plus what only PostgreSQL allows: several tenant processes on one database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

const POSTGRES: bool = true;

include!("suite/https.rs");
include!("suite/security.rs");
include!("suite/oidc.rs");

/// One tenant process of a shared database: its own state folder (its own TLS certificate), the
/// directory, identity and signing key from PostgreSQL.
struct Process {
    base: String,
    tenant: Tenant,
    bootstrap: Option<tenant::BootstrapApp>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn process(url: &str, roots: &mut Vec<reqwest::Certificate>) -> Process {
    let dir = tempfile::tempdir().unwrap();
    let mut config = TenantConfig::new(dir.path().join("state"), vec!["127.0.0.1:0".parse().unwrap()]);
    config.password_iterations = 1_000;
    config.lockout_threshold = 3;
    config.lockout_seconds = 30;
    config.postgres = Some(url.to_string());
    let (tenant, bootstrap) = Tenant::open(config).await.unwrap();
    roots.push(reqwest::Certificate::from_pem(&std::fs::read(&tenant.ca_pem).unwrap()).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // `bind` consumes a tenant: open a second handle on the same folder and database for the test's own use.
    let (bound, serve) = tenant
        .bind(async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    tokio::spawn(serve);
    let mut again = TenantConfig::new(dir.path().join("state"), vec![]);
    again.postgres = Some(url.to_string());
    let (handle, none) = Tenant::open(again).await.unwrap();
    assert!(none.is_none());
    Process { base: format!("https://127.0.0.1:{}", bound[0].port()), tenant: handle, bootstrap, _dir: dir, _stop: stop }
}

async fn token_at(client: &reqwest::Client, base: &str, domain: &str, (id, secret): (&str, &str)) -> String {
    let body: Value = client
        .post(format!("{base}/{domain}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap_or_else(|| panic!("no token: {body}")).to_string()
}

async fn send(client: &reqwest::Client, method: reqwest::Method, url: String, token: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
}

async fn sign_in(client: &reqwest::Client, base: &str, domain: &str, app: &str, upn: &str, password: &str) -> (StatusCode, Value) {
    let response = client
        .post(format!("{base}/{domain}/oauth2/v2.0/token"))
        .form(&[("grant_type", "password"), ("client_id", app), ("username", upn), ("password", password), ("scope", "openid User.Read")])
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_tenant_processes_share_one_postgresql() {
    use reqwest::Method;
    let server = testkit::postgres::Postgres::start().expect("this test needs PostgreSQL");
    let mut roots = Vec::new();
    let (a, b) = (process(server.url(), &mut roots).await, process(server.url(), &mut roots).await);
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    for root in roots {
        builder = builder.add_root_certificate(root);
    }
    let client = builder.build().unwrap();

    // One tenant: the same identity, one admin app (made by the first process only).
    assert_eq!((a.tenant.tenant_id(), a.tenant.initial_domain()), (b.tenant.tenant_id(), b.tenant.initial_domain()));
    let admin = a.bootstrap.as_ref().expect("the first process makes the admin app");
    assert!(b.bootstrap.is_none(), "the second process finds it");
    let domain = a.tenant.initial_domain().to_string();
    let admin = (admin.client_id.as_str(), admin.client_secret.as_str());
    let reader = b.tenant.register_public_app("public client").await.unwrap();

    // A token from one process is good at the other: one signing key.
    let token_a = token_at(&client, &a.base, &domain, admin).await;
    let (status, created) = send(&client, Method::POST, format!("{}/v1.0/users", a.base), &token_a, Some(user("ann", &domain))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, read) = send(&client, Method::GET, format!("{}/v1.0/users/ann@{domain}", b.base), &token_a, None).await;
    assert_eq!((status, &read["id"]), (StatusCode::OK, &created["id"]), "written by A, read at B with A's token");

    // The same UPN created at both at once: exactly one wins, the other is told why.
    let token_b = token_at(&client, &b.base, &domain, admin).await;
    for round in 0..8 {
        let nickname = format!("race{round}");
        let (first, second) = tokio::join!(
            send(&client, Method::POST, format!("{}/v1.0/users", a.base), &token_a, Some(user(&nickname, &domain))),
            send(&client, Method::POST, format!("{}/v1.0/users", b.base), &token_b, Some(user(&nickname, &domain))),
        );
        let mut statuses = [first.0, second.0];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::CREATED, StatusCode::BAD_REQUEST], "round {round}: {first:?} {second:?}");
        let loser = if first.0 == StatusCode::CREATED { second.1 } else { first.1 };
        assert!(loser["error"]["message"].as_str().unwrap().contains("userPrincipalName"), "{loser}");
    }

    // Smart lockout counts failures at every process.
    let upn = format!("ann@{domain}");
    for at in [&a.base, &b.base, &a.base] {
        let (status, _) = sign_in(&client, at, &domain, &reader, &upn, "wrong").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (_, error) = sign_in(&client, &b.base, &domain, &reader, &upn, "Str0ng!Pass").await;
    assert_eq!(error["error_codes"][0].as_i64(), Some(50053), "locked at B after failures at A and B: {error}");

    // A domain verified through one process is usable at the other within its refresh.
    a.tenant.verify_domain_by_override("fabrikam.test", "test").await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) =
            send(&client, Method::POST, format!("{}/v1.0/users", b.base), &token_b, Some(user("bob", "fabrikam.test"))).await;
        if status == StatusCode::CREATED {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "B never learnt of the domain: {status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // A delta round started at A continues at B and sees writes of both.
    let (_, first) = send(&client, Method::GET, format!("{}/v1.0/users/delta()", a.base), &token_a, None).await;
    let mut link = first["@odata.deltaLink"].as_str().unwrap().replace(&a.base, &b.base);
    let (status, _) =
        send(&client, Method::PATCH, format!("{}/v1.0/users/bob@fabrikam.test", a.base), &token_a, Some(json!({"displayName": "Bob B"})))
            .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(&client, Method::DELETE, format!("{}/v1.0/users/race0@{domain}", b.base), &token_b, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut seen = Vec::new();
    loop {
        let (status, page) = send(&client, Method::GET, link.clone(), &token_b, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(page["value"].as_array().unwrap().iter().cloned());
        match page["@odata.nextLink"].as_str() {
            Some(next) => link = next.to_string(),
            None => break,
        }
    }
    assert!(seen.iter().any(|change| change["displayName"] == "Bob B"), "{seen:?}");
    assert!(seen.iter().any(|change| change.get("@removed").is_some()), "{seen:?}");
    drop(server);
}
