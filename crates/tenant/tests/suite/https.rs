use reqwest::StatusCode;
use serde_json::{Value, json};
use tenant::{Tenant, TenantConfig};

struct Running {
    base: String,
    ca_pem: std::path::PathBuf,
    client: reqwest::Client,
    tenant_id: String,
    domain: String,
    admin: (String, String),
    reader: (String, String),
    sync: (String, String),
    /// A public client (no secret) for user sign-ins.
    public: String,
    /// An app for each role the permission table names, and one (`""`) with none.
    role_apps: Vec<(String, (String, String))>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
    _postgres: Option<testkit::postgres::Postgres>,
}

/// Points `config` at a private PostgreSQL server when this is the PostgreSQL run of the suite.
fn choose_backend(config: &mut TenantConfig) -> Option<testkit::postgres::Postgres> {
    if !POSTGRES {
        return None;
    }
    let server = testkit::postgres::Postgres::start().expect("the PostgreSQL run of the tenant suite needs PostgreSQL");
    config.postgres = Some(server.url().to_string());
    Some(server)
}

async fn start() -> Running {
    start_with(None).await
}

async fn start_with(write_limit: Option<u32>) -> Running {
    start_full(write_limit, None).await
}

async fn start_full(write_limit: Option<u32>, dns: Option<std::net::SocketAddr>) -> Running {
    start_policy(write_limit, dns, tenant::resilience::MatchPolicy::default()).await
}

async fn start_policy(write_limit: Option<u32>, dns: Option<std::net::SocketAddr>, policy: tenant::resilience::MatchPolicy) -> Running {
    start_tweaked(write_limit, dns, policy, |_| {}).await
}

async fn start_tweaked(
    write_limit: Option<u32>,
    dns: Option<std::net::SocketAddr>,
    policy: tenant::resilience::MatchPolicy,
    tweak: impl FnOnce(&mut TenantConfig),
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut config = TenantConfig::new(dir.path().join("state"), vec!["127.0.0.1:0".parse().unwrap()]);
    // Fast hashing for tests; the default is 600,000 iterations.
    config.password_iterations = 1_000;
    config.lockout_threshold = 3;
    config.lockout_seconds = 2;
    config.write_limit = write_limit;
    config.dns_resolver = dns;
    config.match_policy = policy;
    config.pta.poll_wait = std::time::Duration::from_secs(1);
    tweak(&mut config);
    let postgres = choose_backend(&mut config);
    let (tenant, bootstrap) = Tenant::open(config).await.unwrap();
    let admin = bootstrap.expect("a new tenant has an admin app");
    let reader = tenant.register_app("reader", &["Directory.Read.All"]).await.unwrap();
    let sync = tenant.register_app("sync", &[tenant::SYNC_ROLE]).await.unwrap();
    tenant.register_app_redirect(&reader.client_id, "http://localhost/callback").await.unwrap();
    let public = tenant.register_public_app("public client").await.unwrap();
    tenant.register_app_redirect(&public, "http://localhost/callback").await.unwrap();
    let mut role_apps = Vec::new();
    for role in tenant::permissions::all_roles().into_iter().chain([""]) {
        let roles: Vec<&str> = [role].into_iter().filter(|role| !role.is_empty()).collect();
        let app = tenant.register_app(&format!("holds {role}"), &roles).await.unwrap();
        role_apps.push((role.to_string(), (app.client_id.clone(), app.client_secret.to_string())));
    }
    let (tenant_id, domain) = (tenant.tenant_id().to_string(), tenant.initial_domain().to_string());
    let ca_pem = tenant.ca_pem.clone();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_pem).unwrap()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, serve) = tenant
        .bind(async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    tokio::spawn(serve);
    let client = reqwest::Client::builder().add_root_certificate(ca).use_rustls_tls().build().unwrap();
    Running {
        base: format!("https://127.0.0.1:{}", bound[0].port()),
        ca_pem,
        client,
        tenant_id,
        domain,
        admin: (admin.client_id.clone(), admin.client_secret.to_string()),
        reader: (reader.client_id.clone(), reader.client_secret.to_string()),
        sync: (sync.client_id.clone(), sync.client_secret.to_string()),
        public,
        role_apps,
        _dir: dir,
        _stop: stop,
        _postgres: postgres,
    }
}

impl Running {
    async fn token(&self, (id, secret): &(String, String)) -> String {
        let response = self
            .client
            .post(format!("{}/{}/oauth2/v2.0/token", self.base, self.domain))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert!(body["expires_in"].as_i64().unwrap() > 0 && body["token_type"] == "Bearer");
        body["access_token"].as_str().unwrap().to_string()
    }

    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = if path.starts_with("https://") { path.to_string() } else { format!("{}{path}", self.base) };
        let mut request = self.client.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
    }
}

fn user(nickname: &str, domain: &str) -> Value {
    json!({
        "@odata.type": "#microsoft.graph.user",
        "accountEnabled": true,
        "displayName": format!("User {nickname}"),
        "mailNickname": nickname,
        "userPrincipalName": format!("{nickname}@{domain}"),
        "passwordProfile": {"password": "Str0ng!Pass", "forceChangePasswordNextSignIn": false},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_client_credentials() {
    let tenant = start().await;
    for segment in [tenant.domain.as_str(), tenant.tenant_id.as_str()] {
        let response = tenant.client.get(format!("{}/{segment}/v2.0/.well-known/openid-configuration", tenant.base)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let document: Value = response.json().await.unwrap();
        assert_eq!(document["token_endpoint"], format!("{}/{segment}/oauth2/v2.0/token", tenant.base));
        assert_eq!(document["issuer"], format!("{}/{}/v2.0", tenant.base, tenant.tenant_id));
        assert!(document["authorization_endpoint"].as_str().unwrap().starts_with("https://"));
    }
    let doubled =
        tenant.client.get(format!("{}/{}//v2.0/.well-known/openid-configuration", tenant.base, tenant.domain)).send().await.unwrap();
    assert_eq!(doubled.status(), StatusCode::OK, "MSAL's trailing-slash form");
    let keys: Value =
        tenant.client.get(format!("{}/{}/discovery/v2.0/keys", tenant.base, tenant.domain)).send().await.unwrap().json().await.unwrap();
    assert_eq!(keys["keys"][0]["kty"], "EC");

    let token = tenant.token(&tenant.admin).await;
    assert_eq!(token.split('.').count(), 3);
    let bad = tenant
        .client
        .post(format!("{}/{}/oauth2/v2.0/token", tenant.base, tenant.domain))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", tenant.admin.0.as_str()),
            ("client_secret", "wrong"),
            ("scope", "x/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let body: Value = bad.json().await.unwrap();
    assert_eq!((body["error"].as_str(), body["error_codes"][0].as_i64()), (Some("invalid_client"), Some(7000215)));
    assert!(body["error_description"].as_str().unwrap().starts_with("AADSTS7000215"));
    let unknown = tenant
        .client
        .post(format!("{}/nope.example/oauth2/v2.0/token", tenant.base))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);

    let realm: Value = tenant
        .client
        .get(format!("{}/common/userrealm/ann@{}?api-version=1.0", tenant.base, tenant.domain))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(realm["account_type"], "Managed");
    let realm: Value = tenant
        .client
        .get(format!("{}/common/userrealm/ann@elsewhere.example?api-version=1.0", tenant.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(realm["account_type"], "Unknown", "never a 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_crud_paging_and_permissions() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    let reader = tenant.token(&tenant.reader).await;
    use reqwest::Method;

    let (status, created) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("ann", &tenant.domain))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(created.get("passwordProfile").is_none(), "the password never comes back");
    let (status, by_upn) = tenant.call(Method::GET, &format!("/v1.0/users/ann@{}", tenant.domain), &reader, None).await;
    assert_eq!((status, by_upn["id"].as_str()), (StatusCode::OK, Some(id.as_str())));

    for nickname in ["bob", "cid", "dee", "eve"] {
        let (status, body) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user(nickname, &tenant.domain))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // Paging: absolute nextLinks, followed verbatim, until every user is seen once.
    let mut seen = Vec::new();
    let mut next = "/v1.0/users?$top=2&$select=id,userPrincipalName".to_string();
    loop {
        let (status, page) = tenant.call(Method::GET, &next, &reader, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for value in page["value"].as_array().unwrap() {
            assert_eq!(value.as_object().unwrap().len(), 2, "$select: only id and userPrincipalName");
            seen.push(value["userPrincipalName"].as_str().unwrap().to_string());
        }
        match page["@odata.nextLink"].as_str() {
            Some(link) => {
                assert!(link.starts_with("https://"), "{link}");
                next = link.to_string();
            }
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen.len(), 5);
    seen.dedup();
    assert_eq!(seen.len(), 5, "no user twice");

    let (status, _) = tenant.call(Method::PATCH, &format!("/v1.0/users/{id}"), &admin, Some(json!({"jobTitle": "Engineer"}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, ann) = tenant.call(Method::GET, &format!("/v1.0/users/{id}"), &reader, None).await;
    assert_eq!(ann["jobTitle"], "Engineer");

    // A reader cannot write; no token, or a forged one, is refused.
    let (status, body) = tenant.call(Method::POST, "/v1.0/users", &reader, Some(user("zed", &tenant.domain))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("Authorization_RequestDenied")));
    let (status, body) = tenant.call(Method::GET, "/v1.0/users", "", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("InvalidAuthenticationToken")));
    let forged = format!("{}x", &admin[..admin.len() - 1]);
    let (status, _) = tenant.call(Method::GET, "/v1.0/users", &forged, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = tenant.call(Method::DELETE, &format!("/v1.0/users/{id}"), &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = tenant.call(Method::GET, &format!("/v1.0/users/{id}"), &reader, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("Request_ResourceNotFound")));
    assert!(body["error"]["innerError"]["request-id"].is_string());
    // The UPN is free again.
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("ann", &tenant.domain))).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_odata_error_and_changes_nothing() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    use reqwest::Method;

    let mut unknown = user("ann", &tenant.domain);
    unknown["favouriteColour"] = json!("blue");
    let mut wrong_type = user("ann", &tenant.domain);
    wrong_type["accountEnabled"] = json!("yes");
    let mut missing = user("ann", &tenant.domain);
    missing.as_object_mut().unwrap().remove("mailNickname");
    let mut weak = user("ann", &tenant.domain);
    weak["passwordProfile"]["password"] = json!("password");
    let foreign = user("ann", "elsewhere.example");
    let mut bad_upn = user("ann", &tenant.domain);
    bad_upn["userPrincipalName"] = json!(format!("a b@{}", tenant.domain));
    let mut with_id = user("ann", &tenant.domain);
    with_id["id"] = json!("00000000-0000-0000-0000-000000000001");
    let cases = [
        (unknown, "favouriteColour"),
        (wrong_type, "accountEnabled"),
        (missing, "mailNickname"),
        (weak, "complexity"),
        (foreign, "verified domain"),
        (bad_upn, "userPrincipalName"),
        (with_id, "read-only"),
        (json!([1, 2]), "JSON object"),
    ];
    for (body, expected) in cases {
        let (status, error) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert_eq!(error["error"]["code"], "Request_BadRequest");
        assert!(error["error"]["message"].as_str().unwrap().contains(expected), "{expected} in {error}");
    }
    let malformed = tenant
        .client
        .post(format!("{}/v1.0/users", tenant.base))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"displayName\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    // The server answers 413 as soon as it sees the length, and may close the connection while
    // the client is still sending; a client then sees a broken pipe instead. Try a few times.
    // A client of its own: the server closes that connection, which must not be reused.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&tenant.ca_pem).unwrap()).unwrap();
    let lone = reqwest::Client::builder().add_root_certificate(ca).use_rustls_tls().pool_max_idle_per_host(0).build().unwrap();
    let mut answered = None;
    for _ in 0..5 {
        let sent = lone
            .post(format!("{}/v1.0/users", tenant.base))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(format!("{{\"displayName\": \"{}\"}}", "x".repeat(5 * 1024 * 1024)))
            .send()
            .await;
        if let Ok(response) = sent {
            answered = Some(response);
            break;
        }
    }
    let huge = answered.expect("an answer to an oversized body");
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let error: Value = huge.json().await.unwrap();
    assert_eq!(error["error"]["code"], "Request_EntityTooLarge");
    assert_eq!(count(&tenant, &admin).await, 0, "nothing was created");

    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("ann", &tenant.domain))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, error) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("ann", &tenant.domain))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"]["message"].as_str().unwrap().contains("already exists"), "{error}");
    let (status, _) = tenant.call(Method::GET, "/v1.0/users?$top=0", &admin, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = tenant.call(Method::GET, "/v1.0/users?$skiptoken=%%%", &admin, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, error) = tenant.call(Method::PATCH, "/v1.0/users/ann@nowhere", &admin, Some(json!({"jobTitle": "x"}))).await;
    assert_eq!((status, error["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("Request_ResourceNotFound")));
    assert_eq!(count(&tenant, &admin).await, 1);
}

async fn count(tenant: &Running, token: &str) -> usize {
    let (_, page) = tenant.call(reqwest::Method::GET, "/v1.0/users?$top=999", token, None).await;
    page["value"].as_array().unwrap().len()
}

/// Every page of a delta round from `start`: the values and the delta link.
async fn delta_round(tenant: &Running, token: &str, start: &str) -> (Vec<Value>, String) {
    let mut values = Vec::new();
    let mut next = start.to_string();
    loop {
        let (status, page) = tenant.call(reqwest::Method::GET, &next, token, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        values.extend(page["value"].as_array().unwrap().iter().cloned());
        if let Some(link) = page["@odata.nextLink"].as_str() {
            next = link.to_string();
            continue;
        }
        let delta_link = page["@odata.deltaLink"].as_str().expect("a round ends with a delta link");
        assert!(delta_link.starts_with("https://") && delta_link.contains("/delta()?$deltatoken="), "{delta_link}");
        return (values, delta_link.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_members_and_delta_queries() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    use reqwest::Method;
    let mut ids = std::collections::BTreeMap::new();
    for nickname in ["ann", "bob"] {
        let (status, body) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user(nickname, &tenant.domain))).await;
        assert_eq!(status, StatusCode::CREATED);
        ids.insert(nickname, body["id"].as_str().unwrap().to_string());
    }
    let group = json!({"displayName": "Staff", "mailEnabled": false, "mailNickname": "staff", "securityEnabled": true, "@odata.type": "#microsoft.graph.group"});
    let (status, body) = tenant.call(Method::POST, "/v1.0/groups", &admin, Some(group)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let staff = body["id"].as_str().unwrap().to_string();
    let (status, body) = tenant.call(Method::POST, "/v1.0/groups", &admin, Some(json!({"displayName": "No flags"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "required properties: {body}");

    // The first delta rounds: everything, in pages of one.
    let (users, users_link) = delta_round(&tenant, &admin, "/v1.0/users/delta()?$top=1").await;
    assert_eq!(users.len(), 2);
    let reference = |id: &str| json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{id}")});
    let members_ref = format!("/v1.0/groups/{staff}/members/$ref");
    let (status, body) = tenant.call(Method::POST, &members_ref, &admin, Some(reference(&ids["ann"]))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = tenant.call(Method::POST, &members_ref, &admin, Some(reference(&ids["ann"]))).await;
    assert!(status == StatusCode::BAD_REQUEST && body["error"]["message"].as_str().unwrap().contains("already exist"), "{body}");
    let (status, _) = tenant.call(Method::POST, &members_ref, &admin, Some(reference("00000000-0000-4000-8000-000000000000"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = tenant.call(Method::POST, &members_ref, &admin, Some(reference(&staff))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a group is not its own member");
    let (_, members) = tenant.call(Method::GET, &format!("/v1.0/groups/{staff}/members"), &admin, None).await;
    assert_eq!(members["value"][0]["@odata.type"], "#microsoft.graph.user");
    assert_eq!(members["value"][0]["id"].as_str(), Some(ids["ann"].as_str()));
    let (groups, groups_link) = delta_round(&tenant, &admin, "/v1.0/groups/delta()").await;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["members@delta"], json!([{"@odata.type": "#microsoft.graph.user", "id": ids["ann"]}]));

    // Changes: bob updated, ann deleted (and so out of Staff), cid created and added.
    let (status, _) = tenant.call(Method::PATCH, &format!("/v1.0/users/{}", ids["bob"]), &admin, Some(json!({"jobTitle": "Boss"}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = tenant.call(Method::DELETE, &format!("/v1.0/users/{}", ids["ann"]), &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, cid) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("cid", &tenant.domain))).await;
    let cid = cid["id"].as_str().unwrap().to_string();
    let (status, _) = tenant.call(Method::POST, &members_ref, &admin, Some(reference(&cid))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (changes, users_link) = delta_round(&tenant, &admin, &users_link).await;
    let by_id = |id: &str| changes.iter().find(|change| change["id"].as_str() == Some(id)).cloned();
    assert_eq!(changes.len(), 3, "{changes:#?}");
    assert_eq!(by_id(&ids["bob"]).unwrap()["jobTitle"], "Boss");
    assert_eq!(by_id(&ids["ann"]).unwrap()["@removed"]["reason"], "deleted");
    assert_eq!(by_id(&cid).unwrap()["userPrincipalName"], format!("cid@{}", tenant.domain));
    let (group_changes, groups_link) = delta_round(&tenant, &admin, &groups_link).await;
    assert_eq!(group_changes.len(), 1);
    let mut member_delta = group_changes[0]["members@delta"].as_array().unwrap().clone();
    member_delta.sort_by_key(|member| member["id"].as_str().unwrap().to_string());
    let mut expected = vec![
        json!({"@odata.type": "#microsoft.graph.user", "id": ids["ann"], "@removed": {"reason": "deleted"}}),
        json!({"@odata.type": "#microsoft.graph.user", "id": cid}),
    ];
    expected.sort_by_key(|member| member["id"].as_str().unwrap().to_string());
    assert_eq!(member_delta, expected, "member changes as value deltas");

    // Nothing more happened: empty rounds, new links.
    let (nothing, _) = delta_round(&tenant, &admin, &users_link).await;
    assert!(nothing.is_empty(), "{nothing:#?}");
    let (nothing, _) = delta_round(&tenant, &admin, &groups_link).await;
    assert!(nothing.is_empty(), "{nothing:#?}");
    let (status, _) = tenant.call(Method::GET, "/v1.0/users/delta()?$deltatoken=bogus", &admin, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _) = tenant.call(Method::DELETE, &format!("/v1.0/groups/{staff}/members/{cid}/$ref"), &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = tenant.call(Method::DELETE, &format!("/v1.0/groups/{staff}/members/{cid}/$ref"), &admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let contact = json!({"displayName": "Partner", "mail": "partner@example.test", "@odata.type": "#microsoft.graph.orgContact"});
    let (status, body) = tenant.call(Method::POST, "/v1.0/contacts", &admin, Some(contact)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, listed) = tenant.call(Method::GET, "/v1.0/contacts", &admin, None).await;
    assert_eq!(listed["value"][0]["mail"], "partner@example.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_what_they_say_and_bad_ones_are_refused() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    use reqwest::Method;
    for nickname in ["ann", "anna", "bob", "anton"] {
        let mut body = user(nickname, &tenant.domain);
        body["proxyAddresses"] = json!([format!("SMTP:{nickname}@{}", tenant.domain)]);
        let (status, created) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
    }
    let names = |page: &Value| {
        let mut names: Vec<String> =
            page["value"].as_array().unwrap().iter().map(|user| user["mailNickname"].as_str().unwrap().to_string()).collect();
        names.sort();
        names
    };
    // Paged with the filter kept in the next link.
    let mut seen = Vec::new();
    let mut next = "/v1.0/users?$top=1&$filter=startswith(displayName,'user an')".to_string();
    loop {
        let (status, page) = tenant.call(Method::GET, &next, &admin, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(names(&page));
        match page["@odata.nextLink"].as_str() {
            Some(link) => next = link.to_string(),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["ann", "anna", "anton"]);
    let upn = format!("bob@{}", tenant.domain);
    let (_, page) = tenant
        .call(
            Method::GET,
            &format!("/v1.0/users?$filter=userPrincipalName eq '{}' or mailNickname eq 'ann'", upn.to_uppercase()),
            &admin,
            None,
        )
        .await;
    assert_eq!(names(&page), ["ann", "bob"], "eq is case-insensitive");
    let (_, page) = tenant
        .call(Method::GET, &format!("/v1.0/users?$filter=proxyAddresses/any(x:x eq 'smtp:anna@{}')", tenant.domain), &admin, None)
        .await;
    assert_eq!(names(&page), ["anna"]);
    let (status, error) = tenant.call(Method::GET, "/v1.0/users?$filter=colour eq 'red'", &admin, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"]["message"].as_str().unwrap().contains("character 0"), "{error}");
    let (status, _) = tenant.call(Method::GET, "/v1.0/users?$filter=mailNickname eq 'a') or (1 eq 1", &admin, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

impl Running {
    /// A request to the token endpoint with `form`; its status and JSON answer.
    async fn token_request(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let url = format!("{}/{}/oauth2/v2.0/token", self.base, self.domain);
        let response = self.client.post(url).form(form).send().await.unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn password_grant(&self, client: &str, username: &str, password: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/{}/oauth2/v2.0/token", self.base, self.domain))
            .form(&[
                ("grant_type", "password"),
                ("client_id", client),
                ("username", username),
                ("password", password),
                ("scope", "openid profile offline_access User.Read"),
            ])
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }
}

fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let body = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_users_sign_in_with_smart_lockout() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    use reqwest::Method;
    let (_, ann) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("ann", &tenant.domain))).await;
    let upn = format!("ann@{}", tenant.domain);
    let client = tenant.public.clone();

    let (status, tokens) = tenant.password_grant(&client, &upn.to_uppercase(), "Str0ng!Pass").await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let id_token = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!((id_token["aud"].as_str(), id_token["preferred_username"].as_str()), (Some(client.as_str()), Some(upn.as_str())));
    assert_eq!(id_token["oid"], ann["id"]);
    assert_eq!(id_token["tid"].as_str(), Some(tenant.tenant_id.as_str()));
    let client_info: Value = {
        use base64::Engine as _;
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tokens["client_info"].as_str().unwrap()).unwrap())
            .unwrap()
    };
    assert_eq!(client_info, json!({"uid": ann["id"], "utid": tenant.tenant_id}));
    // A user token carries no directory role: Graph refuses it.
    let (status, _) = tenant.call(Method::GET, "/v1.0/users", tokens["access_token"].as_str().unwrap(), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Refresh works while the user is enabled; disabling ends it, and the password grant too.
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let refreshed = |token: String| {
        let (client, tenant) = (client.clone(), &tenant);
        async move {
            let response = tenant
                .client
                .post(format!("{}/{}/oauth2/v2.0/token", tenant.base, tenant.domain))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", client.as_str()),
                    ("refresh_token", token.as_str()),
                    ("scope", "User.Read"),
                ])
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, again) = refreshed(refresh.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let rotated = again["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rotated, refresh, "rotated");
    let (status, third) = refreshed(rotated.clone()).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    // Rotation with reuse detection: a used token replayed revokes the whole sign-in.
    let (status, error) = refreshed(refresh.clone()).await;
    assert_eq!((status, error["error_codes"][0].as_i64()), (StatusCode::BAD_REQUEST, Some(70008)), "{error}");
    let (status, _) = refreshed(third["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the newest token of the replayed family is revoked too");
    let (status, _) = refreshed(format!("{rotated}x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a tampered refresh token");
    // Disabling the account revokes its refresh tokens.
    let (_, fresh) = tenant.password_grant(&client, &upn, "Str0ng!Pass").await;
    let refresh = fresh["refresh_token"].as_str().unwrap().to_string();
    let (status, _) = tenant.call(Method::PATCH, &format!("/v1.0/users/{upn}"), &admin, Some(json!({"accountEnabled": false}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, error) = refreshed(refresh).await;
    assert_eq!((status, error["error_codes"][0].as_i64()), (StatusCode::BAD_REQUEST, Some(70008)), "{error}");
    let (status, error) = tenant.password_grant(&client, &upn, "Str0ng!Pass").await;
    assert_eq!((status, error["error_codes"][0].as_i64()), (StatusCode::BAD_REQUEST, Some(50057)), "{error}");
    let (status, _) = tenant.call(Method::PATCH, &format!("/v1.0/users/{upn}"), &admin, Some(json!({"accountEnabled": true}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Smart lockout: three wrong passwords lock the account, even for the right one, for a while.
    for _ in 0..3 {
        let (status, error) = tenant.password_grant(&client, &upn, "wrong").await;
        assert_eq!(
            (status, error["error"].as_str(), error["error_codes"][0].as_i64()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"), Some(50126))
        );
    }
    let (_, error) = tenant.password_grant(&client, &upn, "Str0ng!Pass").await;
    assert_eq!(error["error_codes"][0].as_i64(), Some(50053), "locked: {error}");
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let (status, _) = tenant.password_grant(&client, &upn, "Str0ng!Pass").await;
    assert_eq!(status, StatusCode::OK, "unlocked after the lockout duration");
    let (_, error) = tenant.password_grant(&client, &format!("nobody@{}", tenant.domain), "x").await;
    assert_eq!(error["error_codes"][0].as_i64(), Some(50126), "an unknown user looks like a wrong password");
    let (_, error) = tenant.password_grant("00000000-0000-4000-8000-000000000009", &upn, "Str0ng!Pass").await;
    assert_eq!(error["error_codes"][0].as_i64(), Some(700016));

    // An administrator resets the password with PATCH: the old one stops working, the new one works.
    let path = format!("/v1.0/users/{upn}");
    let reset = |password: &str| json!({"passwordProfile": {"password": password, "forceChangePasswordNextSignIn": false}});
    let (status, error) = tenant.call(Method::PATCH, &path, &admin, Some(reset("weak"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a weak password is refused: {error}");
    let reader = tenant.token(&tenant.reader).await;
    let (status, _) = tenant.call(Method::PATCH, &path, &reader, Some(reset("N3w!Password"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a reader cannot reset passwords");
    let (status, _) = tenant.password_grant(&client, &upn, "Str0ng!Pass").await;
    assert_eq!(status, StatusCode::OK, "nothing changed so far");
    let (status, _) = tenant.call(Method::PATCH, &path, &admin, Some(reset("N3w!Password"))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = tenant.password_grant(&client, &upn, "Str0ng!Pass").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the old password no longer works");
    let (status, tokens) = tenant.password_grant(&client, &upn, "N3w!Password").await;
    assert_eq!(status, StatusCode::OK, "the new one does: {tokens}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_run_in_order_with_dependencies() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    use reqwest::Method;
    let requests = json!({"requests": [
        {"id": "1", "method": "POST", "url": "/users", "headers": {"Content-Type": "application/json"}, "body": user("b1", &tenant.domain)},
        {"id": "2", "method": "POST", "url": "/users", "body": user("b2", &tenant.domain)},
        {"id": "3", "method": "GET", "url": "/users?$select=userPrincipalName", "dependsOn": ["1", "2"]},
        {"id": "4", "method": "POST", "url": "/users", "body": {"displayName": "incomplete"}},
        {"id": "5", "method": "GET", "url": "/users", "dependsOn": ["4"]},
        {"id": "6", "method": "GET", "url": "/users/nobody@nowhere"},
    ]});
    let (status, body) = tenant.call(Method::POST, "/v1.0/$batch", &admin, Some(requests)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let responses = body["responses"].as_array().unwrap();
    let status_of = |id: &str| responses.iter().find(|response| response["id"] == id).map(|response| response["status"].as_i64().unwrap());
    assert_eq!(
        [status_of("1"), status_of("2"), status_of("3"), status_of("4"), status_of("5"), status_of("6")],
        [Some(201), Some(201), Some(200), Some(400), Some(424), Some(404)]
    );
    let listed = &responses.iter().find(|response| response["id"] == "3").unwrap()["body"]["value"];
    assert_eq!(listed.as_array().unwrap().len(), 2, "the GET saw both creates: {listed}");

    let too_many: Vec<Value> = (0..21).map(|n| json!({"id": n.to_string(), "method": "GET", "url": "/users"})).collect();
    let (status, error) = tenant.call(Method::POST, "/v1.0/$batch", &admin, Some(json!({"requests": too_many}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"]["message"].as_str().unwrap().contains("at most 20"), "{error}");
    let (status, _) = tenant
        .call(
            Method::POST,
            "/v1.0/$batch",
            &admin,
            Some(json!({"requests": [{"id": "a", "method": "GET", "url": "https://evil.example/users"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = tenant
        .call(
            Method::POST,
            "/v1.0/$batch",
            &tenant.token(&tenant.reader).await,
            Some(json!({"requests": [{"id": "a", "method": "POST", "url": "/users", "body": user("b3", &tenant.domain)}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the batch itself succeeds; its request is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_the_limit_get_429_with_retry_after() {
    let tenant = start_with(Some(2)).await;
    let admin = tenant.token(&tenant.admin).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for nickname in ["t1", "t2", "t3", "t4"] {
        let response = tenant
            .client
            .post(format!("{}/v1.0/users", tenant.base))
            .bearer_auth(&admin)
            .json(&user(nickname, &tenant.domain))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response.headers().get("retry-after").and_then(|value| value.to_str().ok()).map(str::to_string);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "TooManyRequests");
        }
    }
    assert_eq!(&statuses[..2], [201, 201], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let (status, _) = tenant.call(reqwest::Method::GET, "/v1.0/users", &admin, None).await;
    assert_eq!(status, StatusCode::OK, "reads are not throttled");
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (status, _) = tenant.call(reqwest::Method::POST, "/v1.0/users", &admin, Some(user("t5", &tenant.domain))).await;
    assert_eq!(status, StatusCode::CREATED, "after Retry-After the write goes through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_domains_are_verified_by_dns_txt_records() {
    let Some(mut dns) = testkit::available(testkit::dns::Dnsmasq::start(&[("contoso.example", "v=spf1 -all")])) else { return };
    let tenant = start_full(None, Some(dns.addr())).await;
    let admin = tenant.token(&tenant.admin).await;
    use reqwest::Method;

    let (_, listed) = tenant.call(Method::GET, "/v1.0/domains", &admin, None).await;
    assert_eq!(listed["value"][0]["id"].as_str(), Some(tenant.domain.as_str()));
    assert_eq!((listed["value"][0]["isInitial"].as_bool(), listed["value"][0]["isVerified"].as_bool()), (Some(true), Some(true)));

    let (status, added) = tenant.call(Method::POST, "/v1.0/domains", &admin, Some(json!({"id": "Contoso.Example"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!((added["id"].as_str(), added["isVerified"].as_bool()), (Some("contoso.example"), Some(false)));
    let (status, _) = tenant.call(Method::POST, "/v1.0/domains", &admin, Some(json!({"id": "contoso.example"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "twice");
    for bad in ["not a domain", "x.isthmus.local", "single"] {
        let (status, _) = tenant.call(Method::POST, "/v1.0/domains", &admin, Some(json!({"id": bad}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // An unverified domain cannot be used yet, and user-realm discovery does not know it.
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("ann", "contoso.example"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, records) = tenant.call(Method::GET, "/v1.0/domains/contoso.example/verificationDnsRecords", &admin, None).await;
    let code = records["value"][0]["text"].as_str().unwrap().to_string();
    assert!(code.starts_with("MS=ms") && code.len() == 13, "{code}");

    // The record is not there yet: verification fails and says what it looked for.
    let (status, error) = tenant.call(Method::POST, "/v1.0/domains/contoso.example/verify", &admin, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"]["message"].as_str().unwrap().contains(&code), "{error}");

    // The owner publishes it; verification passes; users may use the domain.
    dns.replace_records(&[("contoso.example", "v=spf1 -all"), ("contoso.example", &code)]).unwrap();
    let (status, verified) = tenant.call(Method::POST, "/v1.0/domains/contoso.example/verify", &admin, None).await;
    assert_eq!((status, verified["isVerified"].as_bool()), (StatusCode::OK, Some(true)), "{verified}");
    let (status, body) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("ann", "contoso.example"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = tenant.password_grant(&tenant.public, "ann@contoso.example", "Str0ng!Pass").await;
    assert_eq!(status, StatusCode::OK, "a managed domain's cloud user signs in");
    let realm: Value = tenant
        .client
        .get(format!("{}/common/userrealm/ann@contoso.example?api-version=1.0", tenant.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(realm["account_type"], "Managed");
    let (status, _) =
        tenant.call(Method::PATCH, "/v1.0/domains/contoso.example", &admin, Some(json!({"authenticationType": "Federated"}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let realm: Value = tenant
        .client
        .get(format!("{}/common/userrealm/ann@contoso.example?api-version=1.0", tenant.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(realm["account_type"], "Federated");
    let (status, error) = tenant.password_grant(&tenant.public, "ann@contoso.example", "Str0ng!Pass").await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "a federated user signs in at the federation service: {error}"
    );
    let (status, _) = tenant
        .call(Method::PATCH, &format!("/v1.0/domains/{}", tenant.domain), &admin, Some(json!({"authenticationType": "Federated"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the initial domain stays managed");

    // A domain in use cannot be removed; the initial domain never.
    let (status, error) = tenant.call(Method::DELETE, "/v1.0/domains/contoso.example", &admin, None).await;
    assert!(status == StatusCode::BAD_REQUEST && error["error"]["message"].as_str().unwrap().contains("used by 1 user"), "{error}");
    let (status, _) = tenant.call(Method::DELETE, &format!("/v1.0/domains/{}", tenant.domain), &admin, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = tenant.call(Method::DELETE, "/v1.0/users/ann@contoso.example", &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = tenant.call(Method::DELETE, "/v1.0/domains/contoso.example", &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_objects_are_read_only_to_cloud_admins() {
    let tenant = start().await;
    let (admin, sync) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await);
    use reqwest::Method;
    let synced = json!({"accountEnabled": true, "displayName": "Synced Sam", "mailNickname": "sam", "userPrincipalName": format!("sam@{}", tenant.domain),
                        "onPremisesImmutableId": "AAECAwQFBgcICQoLDA0ODw==", "onPremisesSyncEnabled": true, "onPremisesSamAccountName": "sam"});
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(synced.clone())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "only the sync service creates synced objects");
    let (status, created) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let path = format!("/v1.0/users/sam@{}", tenant.domain);
    let (status, error) = tenant.call(Method::PATCH, &path, &admin, Some(json!({"displayName": "Renamed in the cloud"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"]["message"].as_str().unwrap().contains("on-premises mastered"), "{error}");
    let (status, _) = tenant.call(Method::PATCH, &path, &admin, Some(json!({"usageLocation": "NL"}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "cloud-mastered properties stay editable");
    let (status, _) = tenant.call(Method::PATCH, &path, &admin, Some(json!({"onPremisesSyncEnabled": false}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an admin cannot take the object over");
    let (status, _) =
        tenant.call(Method::PATCH, &path, &admin, Some(json!({"passwordProfile": {"password": "Cl0ud!Password"}}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a synced user's password is mastered on-premises");
    let (status, _) = tenant.call(Method::DELETE, &path, &admin, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = tenant.call(Method::PATCH, &path, &sync, Some(json!({"displayName": "Sam Synced"}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "the sync service writes synced attributes");
    let (_, sam) = tenant.call(Method::GET, &path, &admin, None).await;
    assert_eq!((sam["displayName"].as_str(), sam["usageLocation"].as_str()), (Some("Sam Synced"), Some("NL")));
    let (status, _) = tenant.call(Method::DELETE, &path, &sync, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// A sign-in method that cannot decide (an agent that is down).
struct Unreachable;

impl tenant::signin::SignInMethod for Unreachable {
    fn name(&self) -> &'static str {
        "unreachable"
    }

    fn verify<'a>(
        &'a self,
        _state: &'a tenant::AppState,
        _user: &'a serde_json::Map<String, Value>,
        _password: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = tenant::signin::Verdict> + Send + 'a>> {
        Box::pin(async { tenant::signin::Verdict::Unavailable("no agent answered".into()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_method_is_chosen_per_domain() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = TenantConfig::new(dir.path().join("state"), vec!["127.0.0.1:0".parse().unwrap()]);
    config.password_iterations = 1_000;
    let _postgres = choose_backend(&mut config);
    let (tenant, bootstrap) = Tenant::open(config).await.unwrap();
    let admin = bootstrap.unwrap();
    let domain = tenant.initial_domain().to_string();
    tenant.set_sign_in_method(&domain, std::sync::Arc::new(Unreachable));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&tenant.ca_pem).unwrap()).unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, serve) = tenant
        .bind(async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    tokio::spawn(serve);
    let client = reqwest::Client::builder().add_root_certificate(ca).use_rustls_tls().build().unwrap();
    let base = format!("https://127.0.0.1:{}", bound[0].port());
    let token_url = format!("{base}/{domain}/oauth2/v2.0/token");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", admin.client_id.as_str()),
        ("client_secret", &admin.client_secret),
        ("scope", "x/.default"),
    ];
    let token: Value = client.post(&token_url).form(&form).send().await.unwrap().json().await.unwrap();
    let created = client
        .post(format!("{base}/v1.0/users"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .json(&user("ann", &domain))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let upn = format!("ann@{domain}");
    let answer = client
        .post(&token_url)
        .form(&[
            ("grant_type", "password"),
            ("client_id", admin.client_id.as_str()),
            ("client_secret", &admin.client_secret),
            ("username", upn.as_str()),
            ("password", "Str0ng!Pass"),
            ("scope", "User.Read"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let error: Value = answer.json().await.unwrap();
    assert_eq!(error["error"], "temporarily_unavailable", "the domain's method decided, not the cloud password: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_and_directory_writes_are_audited_without_secrets() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    use reqwest::Method;
    let (_, ann) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("ann", &tenant.domain))).await;
    let upn = format!("ann@{}", tenant.domain);
    let (status, _) = tenant.password_grant(&tenant.public, &upn, "Wrong!Pass1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = tenant.password_grant(&tenant.public, &upn, "Str0ng!Pass").await;
    assert_eq!(status, StatusCode::OK);

    let (status, writes) = tenant.call(Method::GET, "/v1.0/auditLogs/directoryAudits", &admin, None).await;
    assert_eq!(status, StatusCode::OK, "{writes}");
    let first = &writes["value"][0];
    assert_eq!((first["activityDisplayName"].as_str(), first["result"].as_str()), (Some("create User"), Some("success")));
    assert_eq!(first["targetResources"][0]["id"], ann["id"]);
    assert_eq!(first["initiatedBy"]["app"]["appId"].as_str(), Some(tenant.admin.0.as_str()));

    let (_, sign_ins) = tenant.call(Method::GET, "/v1.0/auditLogs/signIns?$top=2", &admin, None).await;
    let outcomes: Vec<&str> =
        sign_ins["value"].as_array().unwrap().iter().map(|entry| entry["status"]["failureReason"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["success", "bad password"], "newest first");
    assert!(sign_ins["@odata.nextLink"].is_string(), "the client-credentials sign-in is on the next page");
    let text = format!("{writes}{sign_ins}");
    assert!(
        !text.contains("Str0ng!Pass") && !text.contains("Wrong!Pass1") && !text.contains(&tenant.admin.1),
        "no secret in the audit trail"
    );
    let (_, org) = tenant.call(Method::GET, "/v1.0/organization", &admin, None).await;
    assert_eq!(org["value"][0]["id"].as_str(), Some(tenant.tenant_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_with_pkce_through_the_login_page() {
    use base64::Engine as _;
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    let (_, _) = tenant.call(reqwest::Method::POST, "/v1.0/users", &admin, Some(user("ann", &tenant.domain))).await;
    let upn = format!("ann@{}", tenant.domain);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&tenant.ca_pem).unwrap()).unwrap();
    let browser =
        reqwest::Client::builder().add_root_certificate(ca).use_rustls_tls().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let verifier = "a-long-random-verifier-string-of-43-characters-or-more-0123456789";
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    let authorize = format!("{}/{}/oauth2/v2.0/authorize", tenant.base, tenant.domain);
    let client = tenant.reader.0.clone();
    let redirect = "http://localhost:50505/callback";
    let query = [
        ("client_id", client.as_str()),
        ("response_type", "code"),
        ("redirect_uri", redirect),
        ("scope", "openid profile User.Read"),
        ("state", "<xyz>"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("nonce", "n-0S6_WzA2Mj"),
    ];
    let page = browser.get(&authorize).query(&query).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\">") && html.contains("&lt;xyz&gt;") && !html.contains("<xyz>"), "escaped: {html}");

    let mut form: Vec<(&str, &str)> = query.to_vec();
    form.push(("username", upn.as_str()));
    form.push(("password", "Wrong!Pass1"));
    let wrong = browser.post(&authorize).form(&form).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::OK);
    assert!(wrong.text().await.unwrap().contains("invalid username or password"));
    form.pop();
    form.push(("password", "Str0ng!Pass"));
    let signed_in = browser.post(&authorize).form(&form).send().await.unwrap();
    assert_eq!(signed_in.status(), StatusCode::FOUND);
    let location = signed_in.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(redirect) && location.contains("&state=%3Cxyz%3E"), "{location}");
    let code = location.split("code=").nth(1).unwrap().split('&').next().unwrap().to_string();

    let token_url = format!("{}/{}/oauth2/v2.0/token", tenant.base, tenant.domain);
    let exchange = |verifier: &str| {
        let form = [
            ("grant_type", "authorization_code"),
            ("client_id", client.as_str()),
            ("code", code.as_str()),
            ("redirect_uri", redirect),
            ("code_verifier", verifier),
            ("client_secret", tenant.reader.1.as_str()),
        ]
        .map(|(name, value)| (name.to_string(), value.to_string()));
        let request = tenant.client.post(&token_url).form(&form);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, error) = exchange("not-the-verifier").await;
    assert_eq!((status, error["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "a wrong verifier: {error}");
    // The failed attempt used the code up: a stolen code with a guessed verifier burns it.
    let (status, _) = exchange(verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "codes are used once");

    // Again, properly this time.
    let signed_in = browser.post(&authorize).form(&form).send().await.unwrap();
    let location = signed_in.headers()["location"].to_str().unwrap().to_string();
    let code = location.split("code=").nth(1).unwrap().split('&').next().unwrap().to_string();
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", client.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", redirect),
        ("code_verifier", verifier),
    ];
    // A confidential client's code is worth nothing without its secret (the theft finding):
    // no secret, a wrong one, both methods at once — invalid_client, and the code survives.
    for (secret, basic) in [(None, None), (Some("wrong"), None), (None, Some("wrong")), (Some(tenant.reader.1.as_str()), Some(tenant.reader.1.as_str()))] {
        let mut request = form.to_vec();
        if let Some(secret) = secret {
            request.push(("client_secret", secret));
        }
        let mut post = tenant.client.post(&token_url).form(&request);
        if let Some(basic) = basic {
            post = post.basic_auth(client.as_str(), Some(basic));
        }
        let response = post.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(matches!(body["error"].as_str(), Some("invalid_client" | "invalid_request")), "{secret:?} {basic:?}: {status} {body}");
        assert!(status.is_client_error());
    }
    let tokens: Value =
        tenant.client.post(&token_url).basic_auth(client.as_str(), Some(tenant.reader.1.as_str())).form(&form).send().await.unwrap().json().await.unwrap();
    let id_token = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id_token["preferred_username"].as_str(), Some(upn.as_str()), "{tokens}");
    assert_eq!(id_token["nonce"].as_str(), Some("n-0S6_WzA2Mj"), "the authorize request's nonce: {id_token}");
    assert!(tokens["refresh_token"].is_null(), "no refresh token without offline_access: {tokens}");

    // An unregistered redirect URI gets an error page (nothing goes to it); a missing PKCE
    // challenge is refused before any login, as an error sent to the registered redirect URI.
    let mut evil = query.to_vec();
    evil[2] = ("redirect_uri", "https://evil.example/callback");
    assert_eq!(browser.get(&authorize).query(&evil).send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    let no_pkce: Vec<_> = query.iter().filter(|(name, _)| !name.starts_with("code_challenge")).cloned().collect();
    let refused = browser.get(&authorize).query(&no_pkce).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FOUND);
    let location = refused.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(&format!("{redirect}?error=invalid_request&")) && !location.contains("code="), "{location}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_values_and_unverified_suffixes_are_quarantined_then_restored() {
    let Some(mut dns) = testkit::available(testkit::dns::Dnsmasq::start(&[])) else { return };
    let tenant = start_full(None, Some(dns.addr())).await;
    let (admin, sync) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await);
    use reqwest::Method;
    let domain = tenant.domain.clone();
    // Another synced user (another anchor: no match) holds the UPN and an address the new one wants.
    let mut holder = synced_user("dup", &domain, "aG9sZGVy");
    holder["proxyAddresses"] = json!([format!("smtp:shared@{domain}")]);
    let (status, cloud) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(holder)).await;
    assert_eq!(status, StatusCode::CREATED, "{cloud}");
    let synced = json!({"accountEnabled": true, "displayName": "Dup Synced", "mailNickname": "dupsync", "userPrincipalName": format!("dup@{domain}"),
                        "onPremisesImmutableId": "c3luY2Vk", "onPremisesSyncEnabled": true,
                        "proxyAddresses": [format!("SMTP:dup.synced@{domain}"), format!("smtp:shared@{domain}")]});
    let (status, created) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced)).await;
    assert_eq!(status, StatusCode::CREATED, "the write succeeds: {created}");
    let upn = created["userPrincipalName"].as_str().unwrap();
    assert!(upn.starts_with("dup+") && upn.ends_with(&format!("@{domain}")), "a placeholder UPN: {upn}");
    assert_eq!(created["onPremisesUserPrincipalName"], format!("dup@{domain}"));
    assert_eq!(created["proxyAddresses"], json!([format!("SMTP:dup.synced@{domain}")]), "the duplicate address is dropped");
    let errors: Vec<&str> = created["onPremisesProvisioningErrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["propertyCausingError"].as_str().unwrap())
        .collect();
    assert_eq!(errors, ["UserPrincipalName", "ProxyAddresses"]);
    let id = created["id"].as_str().unwrap().to_string();
    let (status, _) =
        tenant.call(Method::PATCH, &format!("/v1.0/users/{id}"), &sync, Some(json!({"onPremisesProvisioningErrors": []}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "read-only");

    // The conflict goes away: the values come back, the errors go.
    let (status, _) = tenant.call(Method::DELETE, &format!("/v1.0/users/{}", cloud["id"].as_str().unwrap()), &sync, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, restored) = tenant.call(Method::GET, &format!("/v1.0/users/{id}"), &admin, None).await;
    assert_eq!(restored["userPrincipalName"], format!("dup@{domain}"), "{restored}");
    assert_eq!(restored["proxyAddresses"].as_array().unwrap().len(), 2);
    assert_eq!(restored["onPremisesProvisioningErrors"], json!([]));

    // An unverified suffix: the MOERA now, the on-premises UPN once the domain is verified.
    let synced = json!({"accountEnabled": true, "displayName": "Eve", "mailNickname": "eve", "userPrincipalName": "eve@fabrikam.example",
                        "onPremisesImmutableId": "ZXZl", "onPremisesSyncEnabled": true});
    let (status, eve) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced)).await;
    assert_eq!(status, StatusCode::CREATED, "{eve}");
    assert_eq!(eve["userPrincipalName"], format!("eve@{domain}"));
    tenant.call(Method::POST, "/v1.0/domains", &admin, Some(json!({"id": "fabrikam.example"}))).await;
    let (_, records) = tenant.call(Method::GET, "/v1.0/domains/fabrikam.example/verificationDnsRecords", &admin, None).await;
    let code = records["value"][0]["text"].as_str().unwrap().to_string();
    dns.replace_records(&[("fabrikam.example", &code)]).unwrap();
    let (status, _) = tenant.call(Method::POST, "/v1.0/domains/fabrikam.example/verify", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, eve) = tenant.call(Method::GET, &format!("/v1.0/users/{}", eve["id"].as_str().unwrap()), &admin, None).await;
    assert_eq!(eve["userPrincipalName"], "eve@fabrikam.example", "restored once the domain is verified");
}

fn synced_user(nickname: &str, domain: &str, anchor: &str) -> Value {
    json!({"accountEnabled": true, "displayName": format!("{nickname} (synced)"), "mailNickname": nickname, "userPrincipalName": format!("{nickname}@{domain}"),
           "onPremisesImmutableId": anchor, "onPremisesSyncEnabled": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_soft_and_hard_matches_existing_objects() {
    let tenant = start().await;
    let (admin, sync) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await);
    use reqwest::Method;
    let domain = tenant.domain.clone();
    let (_, carl) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("carl", &domain))).await;
    // Soft match on the UPN: the cloud-only account becomes the synced one.
    let (status, matched) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("carl", &domain, "Y2FybA=="))).await;
    assert_eq!(status, StatusCode::CREATED, "{matched}");
    assert_eq!(matched["id"], carl["id"], "the existing account, not a new one");
    assert_eq!((matched["onPremisesSyncEnabled"].as_bool(), matched["onPremisesImmutableId"].as_str()), (Some(true), Some("Y2FybA==")));
    assert_eq!(matched["displayName"], "carl (synced)", "on-premises values win");
    // Soft match on the primary SMTP, for a group.
    let cloud_group = json!({"displayName": "Team", "mailEnabled": true, "mailNickname": "team", "securityEnabled": false, "proxyAddresses": [format!("SMTP:team@{domain}")]});
    let (_, team) = tenant.call(Method::POST, "/v1.0/groups", &admin, Some(cloud_group)).await;
    let synced_group = json!({"displayName": "Team (synced)", "mailEnabled": true, "mailNickname": "team", "securityEnabled": false,
                              "proxyAddresses": [format!("SMTP:team@{domain}")], "onPremisesImmutableId": "dGVhbQ==", "onPremisesSyncEnabled": true});
    let (_, matched) = tenant.call(Method::POST, "/v1.0/groups", &sync, Some(synced_group)).await;
    assert_eq!(matched["id"], team["id"]);
    // Hard match: the same immutableId again (a sync server that lost its state) is the same object.
    let (_, again) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("carl", &domain, "Y2FybA=="))).await;
    assert_eq!(again["id"], carl["id"], "no duplicate: {again}");
    let (_, all) = tenant.call(Method::GET, "/v1.0/users", &admin, None).await;
    assert_eq!(all["value"].as_array().unwrap().len(), 1);
    // An object that is already synced is never soft-matched by another anchor.
    let (_, other) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("carl", &domain, "b3RoZXI="))).await;
    assert_ne!(other["id"], carl["id"]);
    assert!(other["userPrincipalName"].as_str().unwrap().starts_with("carl+"), "its UPN is quarantined instead: {other}");

    // An administrator prepares a hard match by giving a cloud user the on-premises anchor.
    let (_, dora) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("dora", &domain))).await;
    let dora_path = format!("/v1.0/users/{}", dora["id"].as_str().unwrap());
    let (status, error) = tenant.call(Method::PATCH, &dora_path, &admin, Some(json!({"onPremisesImmutableId": "Y2FybA=="}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an anchor another object holds: {error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("onPremisesImmutableId"), "{error}");
    let (status, _) = tenant.call(Method::PATCH, &dora_path, &admin, Some(json!({"onPremisesImmutableId": "ZG9yYQ=="}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, prepared) = tenant.call(Method::GET, &dora_path, &admin, None).await;
    assert_eq!((prepared["onPremisesImmutableId"].as_str(), prepared["onPremisesSyncEnabled"].as_bool()), (Some("ZG9yYQ=="), None));
    let mut renamed = synced_user("dora", &domain, "ZG9yYQ==");
    renamed["userPrincipalName"] = json!(format!("dora.onprem@{domain}"));
    let (_, taken_over) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(renamed)).await;
    assert_eq!(taken_over["id"], dora["id"], "hard match on the anchor, whatever the UPN: {taken_over}");
    assert_eq!(taken_over["userPrincipalName"], format!("dora.onprem@{domain}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_can_block_soft_matching() {
    let policy = tenant::resilience::MatchPolicy { block_soft_match: true, ..Default::default() };
    let tenant = start_policy(None, None, policy).await;
    let (admin, sync) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await);
    use reqwest::Method;
    let (_, carl) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("carl", &tenant.domain))).await;
    let (status, created) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("carl", &tenant.domain, "Y2FybA=="))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(created["id"], carl["id"], "no takeover by soft match");
    assert!(
        created["onPremisesProvisioningErrors"].as_array().is_some_and(|errors| !errors.is_empty()),
        "the UPN conflict is recorded: {created}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_keeps_the_sync_settings_and_its_features_steer_matching() {
    let tenant = start().await;
    let (admin, sync, reader) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await, tenant.token(&tenant.reader).await);
    use reqwest::Method;
    let (status, list) = tenant.call(Method::GET, "/v1.0/directory/onPremisesSynchronization", &reader, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let settings = &list["value"][0];
    assert_eq!(settings["id"].as_str(), Some(tenant.tenant_id.as_str()));
    assert!(settings["configuration"]["anchorAttribute"].is_null(), "nothing chosen yet: {settings}");
    assert_eq!(settings["features"]["softMatchOnUpnEnabled"], true);
    let path = format!("/v1.0/directory/onPremisesSynchronization/{}", tenant.tenant_id);

    // The first sync server stores its anchor; another one cannot change it.
    let anchor = |name: &str| json!({"configuration": {"anchorAttribute": name, "synchronizationClientVersion": "isthmus 0.1"}});
    let (status, _) = tenant.call(Method::PATCH, &path, &reader, Some(anchor("objectGUID"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = tenant.call(Method::PATCH, &path, &sync, Some(anchor("objectGUID"))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, error) = tenant.call(Method::PATCH, &path, &sync, Some(anchor("employeeID"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("cannot be changed"), "{error}");
    let (status, _) = tenant.call(Method::PATCH, &path, &sync, Some(anchor("mS-DS-ConsistencyGuid"))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "the objectGUID to consistency GUID migration is allowed");
    let (_, now) = tenant.call(Method::GET, &path, &reader, None).await;
    assert_eq!(now["configuration"]["anchorAttribute"], "mS-DS-ConsistencyGuid");
    assert_eq!(now["configuration"]["synchronizationClientVersion"], "isthmus 0.1");
    for bad in [json!({"features": {"blockSoftMatchEnabled": "yes"}}), json!({"features": {"nope": true}}), json!({"id": "x"})] {
        let (status, _) = tenant.call(Method::PATCH, &path, &admin, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }

    // Turning soft matching off through the feature: a synced user no longer takes over the
    // cloud account with its UPN.
    let (_, cloud) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("erin", &tenant.domain))).await;
    let (status, _) = tenant.call(Method::PATCH, &path, &admin, Some(json!({"features": {"blockSoftMatchEnabled": true}}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, synced) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("erin", &tenant.domain, "ZXJpbg=="))).await;
    assert_eq!(status, StatusCode::CREATED, "{synced}");
    assert_ne!(synced["id"], cloud["id"], "no soft match: {synced}");
    assert!(synced["userPrincipalName"].as_str().unwrap().starts_with("erin+"), "the UPN is quarantined instead: {synced}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_is_never_soft_matched() {
    let tenant = start().await;
    let (admin, sync, reader) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await, tenant.token(&tenant.reader).await);
    use reqwest::Method;
    let global = "62e90394-69f5-4237-9190-012177145e10";
    let (status, roles) = tenant.call(Method::GET, "/v1.0/directoryRoles", &reader, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(roles["value"].as_array().unwrap().iter().any(|role| role["displayName"] == "Global Administrator" && role["id"] == global));
    let (_, gina) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("gina", &tenant.domain))).await;
    let gina_id = gina["id"].as_str().unwrap().to_string();
    let reference = json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{gina_id}")});
    let members = format!("/v1.0/directoryRoles/{global}/members/$ref");
    for (token, who) in [(&sync, "the sync service"), (&reader, "a reader")] {
        let (status, _) = tenant.call(Method::POST, &members, token, Some(reference.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who} cannot assign roles");
    }
    let (status, _) = tenant.call(Method::POST, &members, &admin, Some(reference.clone())).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = tenant.call(Method::POST, &members, &admin, Some(reference.clone())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "already a member");
    let (status, _) = tenant.call(Method::POST, "/v1.0/directoryRoles/not-a-role/members/$ref", &admin, Some(reference)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, holders) = tenant.call(Method::GET, &format!("/v1.0/directoryRoles/{global}/members"), &reader, None).await;
    assert_eq!(holders["value"][0]["id"], gina_id.as_str());

    // The sync brings a user with gina's UPN: no takeover of an administrator.
    let (status, error) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("gina", &tenant.domain, "Z2luYQ=="))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().starts_with("Existing Admin Role Conflict"), "{error}");
    let (_, still) = tenant.call(Method::GET, &format!("/v1.0/users/{gina_id}"), &admin, None).await;
    assert!(still["onPremisesImmutableId"].is_null(), "the administrator is untouched: {still}");

    // Without the role, the soft match goes ahead.
    let (status, _) = tenant.call(Method::DELETE, &format!("/v1.0/directoryRoles/{global}/members/{gina_id}/$ref"), &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, matched) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("gina", &tenant.domain, "Z2luYQ=="))).await;
    assert_eq!((status, &matched["id"]), (StatusCode::CREATED, &json!(gina_id)), "{matched}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_users_sign_in_with_the_hash_password_hash_sync_sent() {
    let tenant = start().await;
    let (admin, sync) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await);
    use reqwest::Method;
    let (status, sam) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("sam", &tenant.domain, "c2Ft"))).await;
    assert_eq!(status, StatusCode::CREATED, "{sam}");
    let upn = format!("sam@{}", tenant.domain);
    let client = tenant.public.clone();
    let (status, _) = tenant.password_grant(&client, &upn, "On-Prem!Pass1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no credential synced yet");

    let wire = |password: &str| phs::SyncedCredential::new(&phs::NtHash::of_password(password)).to_wire();
    let batch = |items: Value| Some(json!({ "value": items }));
    let (status, _) =
        tenant.call(Method::POST, "/isthmus/v1/passwordHashSync", &admin, batch(json!([{"onPremisesImmutableId": "c2Ft", "credential": wire("x")}]))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only the sync service sends hashes");
    // An empty batch is the heartbeat: the organization shows when password sync last called.
    let last_sync = |org: &Value| org["value"][0]["onPremisesLastPasswordSyncDateTime"].clone();
    let (_, org) = tenant.call(Method::GET, "/v1.0/organization", &admin, None).await;
    assert_eq!(last_sync(&org), Value::Null, "{org}");
    let before = tenant::now_rfc3339();
    let (status, answer) = tenant.call(Method::POST, "/isthmus/v1/passwordHashSync", &sync, batch(json!([]))).await;
    assert_eq!((status, &answer["value"]), (StatusCode::OK, &json!([])), "{answer}");
    let after = tenant::now_rfc3339();
    let (_, org) = tenant.call(Method::GET, "/v1.0/organization", &admin, None).await;
    let beat = last_sync(&org).as_str().map(str::to_string).unwrap_or_default();
    assert!(before <= beat && beat <= after, "the heartbeat's time, between {before} and {after}: {org}");
    // A bad item spoils the batch: nothing is stored.
    let (status, error) = tenant
        .call(
            Method::POST,
            "/isthmus/v1/passwordHashSync",
            &sync,
            batch(json!([{"onPremisesImmutableId": "c2Ft", "credential": wire("On-Prem!Pass1")}, {"onPremisesImmutableId": "x", "credential": "nt:8846F7EA"}])),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("value[1]"), "{error}");
    let (status, _) = tenant.password_grant(&client, &upn, "On-Prem!Pass1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the good item of the refused batch was not stored");

    let (status, answer) = tenant
        .call(
            Method::POST,
            "/isthmus/v1/passwordHashSync",
            &sync,
            batch(json!([{"onPremisesImmutableId": "c2Ft", "credential": wire("On-Prem!Pass1")}, {"onPremisesImmutableId": "bm9ib2R5", "credential": wire("x")}])),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!((answer["value"][0]["status"].as_str(), answer["value"][1]["status"].as_str()), (Some("Success"), Some("NoTargetConnection")));
    let (status, tokens) = tenant.password_grant(&client, &upn, "On-Prem!Pass1").await;
    assert_eq!(status, StatusCode::OK, "the synced password signs in: {tokens}");
    let (status, _) = tenant.password_grant(&client, &upn, "on-prem!pass1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A password changed on-premises replaces the old one.
    tenant.call(Method::POST, "/isthmus/v1/passwordHashSync", &sync, batch(json!([{"onPremisesImmutableId": "c2Ft", "credential": wire("Changed!Pass2")}]))).await;
    let (status, _) = tenant.password_grant(&client, &upn, "On-Prem!Pass1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the old password stops working");
    let (status, _) = tenant.password_grant(&client, &upn, "Changed!Pass2").await;
    assert_eq!(status, StatusCode::OK, "the new one works");

    // A temporary password ("must change at next logon") syncs only with the tenant feature on,
    // and then signs in only to be changed.
    let temporary = batch(json!([{"onPremisesImmutableId": "c2Ft", "credential": wire("Temp!Pass3"), "forceChangePasswordNextSignIn": true}]));
    let (_, answer) = tenant.call(Method::POST, "/isthmus/v1/passwordHashSync", &sync, temporary.clone()).await;
    assert_eq!(answer["value"][0]["status"], "FilteredByTarget");
    let path = format!("/v1.0/directory/onPremisesSynchronization/{}", tenant.tenant_id);
    tenant.call(Method::PATCH, &path, &admin, Some(json!({"features": {"userForcePasswordChangeOnLogonEnabled": true}}))).await;
    let (_, answer) = tenant.call(Method::POST, "/isthmus/v1/passwordHashSync", &sync, temporary).await;
    assert_eq!(answer["value"][0]["status"], "Success");
    let (status, error) = tenant.password_grant(&client, &upn, "Temp!Pass3").await;
    assert_eq!((status, error["error_codes"][0].as_i64()), (StatusCode::BAD_REQUEST, Some(50055)), "{error}");

    // Cloud password expiry: every hash sync marks the user's password as never expiring in the
    // cloud, unless the tenant enforces the cloud policy; then the next sync removes the mark.
    let sam_path = format!("/v1.0/users/{}?$select=passwordPolicies,lastPasswordChangeDateTime", sam["id"].as_str().unwrap());
    let (_, user) = tenant.call(Method::GET, &sam_path, &admin, None).await;
    assert_eq!(user["passwordPolicies"], "DisablePasswordExpiration", "{user}");
    assert!(user["lastPasswordChangeDateTime"].as_str().is_some_and(|at| at.starts_with("20")), "{user}");
    let domain_path = format!("/v1.0/domains/{}", tenant.domain);
    for bad in [json!({"passwordValidityPeriodInDays": 0}), json!({"passwordValidityPeriodInDays": 731}), json!({"passwordValidityPeriodInDays": "90"})] {
        let (status, _) = tenant.call(Method::PATCH, &domain_path, &admin, Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (status, _) = tenant.call(Method::PATCH, &domain_path, &admin, Some(json!({"passwordValidityPeriodInDays": 90}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, domain) = tenant.call(Method::GET, &domain_path, &admin, None).await;
    assert_eq!(domain["passwordValidityPeriodInDays"], 90);
    tenant.call(Method::PATCH, &path, &admin, Some(json!({"features": {"cloudPasswordPolicyForPasswordSyncedUsersEnabled": true}}))).await;
    let (_, answer) =
        tenant.call(Method::POST, "/isthmus/v1/passwordHashSync", &sync, batch(json!([{"onPremisesImmutableId": "c2Ft", "credential": wire("Policy!Pass4")}]))).await;
    assert_eq!(answer["value"][0]["status"], "Success");
    let (_, user) = tenant.call(Method::GET, &sam_path, &admin, None).await;
    assert_eq!(user["passwordPolicies"], Value::Null, "the mark goes with the next sync: {user}");
    let (status, body) = tenant.password_grant(&client, &upn, "Policy!Pass4").await;
    assert_eq!(status, StatusCode::OK, "a password synced today is well inside 90 days: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_in_bulk_with_odata_bind() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    use reqwest::Method;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (_, created) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user(&format!("m{n}"), &tenant.domain))).await;
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    let (_, group) = tenant
        .call(Method::POST, "/v1.0/groups", &admin, Some(json!({"displayName": "Bulk", "mailEnabled": false, "mailNickname": "bulk", "securityEnabled": true})))
        .await;
    let path = format!("/v1.0/groups/{}", group["id"].as_str().unwrap());
    let bind = |ids: &[&str]| json!({"members@odata.bind": ids.iter().map(|id| format!("https://graph.microsoft.com/v1.0/directoryObjects/{id}")).collect::<Vec<_>>()});
    let members = || async { tenant.call(Method::GET, &format!("{path}/members"), &admin, None).await.1["value"].as_array().unwrap().len() };
    // One unknown reference refuses the whole request: nothing is added.
    let (status, error) = tenant.call(Method::PATCH, &path, &admin, Some(bind(&[&ids[0], "00000000-0000-0000-0000-000000000000"]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(members().await, 0, "rolled back");
    let (status, _) = tenant.call(Method::PATCH, &path, &admin, Some(bind(&[&ids[0], &ids[1]]))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(members().await, 2);
    let (status, _) = tenant.call(Method::PATCH, &path, &admin, Some(bind(&[&ids[1], &ids[2]]))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "a member already there is no error");
    assert_eq!(members().await, 3);
    let many: Vec<&str> = std::iter::repeat_n(ids[0].as_str(), 21).collect();
    let (status, _) = tenant.call(Method::PATCH, &path, &admin, Some(bind(&many))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "at most 20 per request");
    let (status, _) = tenant.call(Method::PATCH, &format!("/v1.0/users/{}", ids[0]), &admin, Some(bind(&[&ids[1]]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "users have no members");
}

/// A pass-through agent driven by the test: its own key and certificate from the tenant.
struct TestAgent {
    http: reqwest::Client,
    key: pta::AgentKey,
    id: String,
}

impl TestAgent {
    async fn register(tenant: &Running, admin: &str) -> (StatusCode, Option<TestAgent>) {
        let tls_key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default().serialize_request(&tls_key).unwrap().pem().unwrap();
        // Each agent its own key (a key is one agent's).
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(9);
        let key = pta::AgentKey::from_bytes([NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed); 32]);
        let body = json!({"csr": csr, "encryptionKey": pta::key_to_text(&key.public()), "machineName": "test", "version": "1"});
        let (status, registered) =
            tenant.call(reqwest::Method::POST, "/isthmus/v1/passThroughAuthentication/agents", admin, Some(body)).await;
        if status != StatusCode::CREATED {
            return (status, None);
        }
        let certificate = registered["certificate"].as_str().unwrap().as_bytes();
        let config =
            testkit::tls::client_config_with_certificate(&tenant.ca_pem, certificate, tls_key.serialize_pem().as_bytes()).unwrap();
        let http = reqwest::Client::builder().use_preconfigured_tls(config).build().unwrap();
        (status, Some(TestAgent { http, key, id: registered["agentId"].as_str().unwrap().to_string() }))
    }

    async fn post(&self, tenant: &Running, path: &str, body: Option<Value>) -> (StatusCode, String) {
        let mut request = self.http.post(format!("{}/isthmus/v1/passThroughAuthentication/agent/{path}", tenant.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// Takes the next sign-in, checks the sealed password opens to `expected`, answers `outcome`.
    async fn answer_next(&self, tenant: &Running, expected: &str, outcome: pta::Outcome) {
        loop {
            let (status, body) = self.post(tenant, "poll", None).await;
            if status == StatusCode::NO_CONTENT {
                continue;
            }
            assert_eq!(status, StatusCode::OK, "{body}");
            let work: pta::Work = serde_json::from_str(&body).unwrap();
            let password = self.key.open(&work.context(&self.id), &work.sealed().unwrap()).unwrap();
            assert_eq!(password.as_slice(), expected.as_bytes());
            let (status, body) = self.post(tenant, "answer", Some(json!({"requestId": work.request_id, "outcome": outcome}))).await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_outcomes_reach_the_token_endpoint() {
    let tenant = start().await;
    let (admin, sync, reader) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await, tenant.token(&tenant.reader).await);
    use reqwest::Method;
    let domain_path = format!("/v1.0/domains/{}", tenant.domain);
    for bad in [json!({"passwordValidation": "Sometimes"}), json!({"passwordValidation": 1})] {
        let (status, _) = tenant.call(Method::PATCH, &domain_path, &admin, Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (status, body) = tenant.call(Method::PATCH, &domain_path, &admin, Some(json!({"passwordValidation": "PassThrough"}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, pat) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("pat", &tenant.domain, "cGF0"))).await;
    assert_eq!(status, StatusCode::CREATED, "{pat}");
    let upn = format!("pat@{}", tenant.domain);
    let client = tenant.public.clone();
    let code = |body: &Value| body["error_codes"][0].as_u64().unwrap_or(0);

    let (status, body) = tenant.password_grant(&client, &upn, "Pat!Pass.1").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 80001), "no agent yet: {body}");
    let (status, _) = TestAgent::register(&tenant, &reader).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a reader may not register agents");
    let (_, agent) = TestAgent::register(&tenant, &admin).await;
    let agent = agent.unwrap();
    assert_eq!(agent.post(&tenant, "poll", None).await.0, StatusCode::NO_CONTENT, "no work yet");

    let cases = [
        (pta::Outcome::Valid, 0),
        (pta::Outcome::BadPassword, 50126),
        (pta::Outcome::Disabled, 50057),
        (pta::Outcome::LockedOut, 50053),
        (pta::Outcome::PasswordExpired, 50144),
        (pta::Outcome::MustChangePassword, 50055),
        (pta::Outcome::AccountExpired, 80016),
        (pta::Outcome::LogonHours, 80012),
        (pta::Outcome::Workstation, 80017),
        (pta::Outcome::DcUnreachable, 80007),
    ];
    for (outcome, expected) in cases {
        let (signed_in, ()) = tokio::join!(tenant.password_grant(&client, &upn, "Pat!Pass.1"), agent.answer_next(&tenant, "Pat!Pass.1", outcome));
        let (status, body) = signed_in;
        assert_eq!(code(&body), expected, "{outcome:?}: {body}");
        assert_eq!(status == StatusCode::OK, expected == 0, "{outcome:?}");
        if outcome == pta::Outcome::DcUnreachable {
            assert_eq!(body["error"], "temporarily_unavailable", "retryable: {body}");
        }
    }
    // A second agent: the first answers "cannot decrypt", so the request waits for the second;
    // meanwhile the first agent's replayed answer and an answer by hand to a request the second
    // agent never got are refused, and the tenant keeps serving.
    let (_, second) = TestAgent::register(&tenant, &admin).await;
    let second = second.unwrap();
    assert_eq!(second.post(&tenant, "poll", None).await.0, StatusCode::NO_CONTENT);
    let relay = async {
        let work = loop {
            let (status, body) = agent.post(&tenant, "poll", None).await;
            if status == StatusCode::OK {
                break serde_json::from_str::<pta::Work>(&body).unwrap();
            }
        };
        let answer = json!({"requestId": work.request_id, "outcome": "decryptFailed"});
        assert_eq!(agent.post(&tenant, "answer", Some(answer.clone())).await.0, StatusCode::NO_CONTENT);
        let (status, text) = agent.post(&tenant, "answer", Some(answer)).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(text.contains("replay"), "{text}");
        let (status, text) = second.post(&tenant, "answer", Some(json!({"requestId": work.request_id, "outcome": "valid"}))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(text.contains("not given to this agent"), "{text}");
        second.answer_next(&tenant, "Pat!Pass.1", pta::Outcome::Valid).await;
    };
    let ((status, body), ()) = tokio::join!(tenant.password_grant(&client, &upn, "Pat!Pass.1"), relay);
    assert_eq!(status, StatusCode::OK, "the second agent answered: {body}");

    // Cloud-only users of the domain keep their cloud password.
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("cloudy", &tenant.domain))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = tenant.password_grant(&client, &format!("cloudy@{}", tenant.domain), "Str0ng!Pass").await;
    assert_eq!(status, StatusCode::OK, "no agent asked for a cloud-only user: {body}");

    // Renewal: a new certificate; the old one keeps working a little while.
    let tls_key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&tls_key).unwrap().pem().unwrap();
    let renewal = json!({"csr": csr, "encryptionKey": pta::key_to_text(&pta::AgentKey::from_bytes([10; 32]).public())});
    let (status, body) = agent.post(&tenant, "renew", Some(renewal)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(agent.post(&tenant, "poll", None).await.0, StatusCode::NO_CONTENT, "the old certificate's grace period");
    let (_, list) = tenant.call(Method::GET, "/isthmus/v1/passThroughAuthentication/agents", &admin, None).await;
    let listed = list["value"].as_array().unwrap().iter().find(|listed| listed["id"] == agent.id.as_str()).unwrap();
    assert_eq!((listed["status"].as_str(), listed["requestsServed"].as_u64(), listed["errors"].as_u64()), (Some("active"), Some(11), Some(2)), "{list}");
    let (status, _) = tenant.call(Method::DELETE, &format!("/isthmus/v1/passThroughAuthentication/agents/{}", agent.id), &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(agent.post(&tenant, "poll", None).await.0, StatusCode::FORBIDDEN, "revoked");
    let (status, _) = tenant.call(Method::DELETE, &format!("/isthmus/v1/passThroughAuthentication/agents/{}", agent.id), &admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "revoked already");
    for bad in [json!({"automaticFallbackSeconds": -1}), json!({"automaticFallbackSeconds": "soon"}), json!({"other": 1})] {
        let (status, _) = tenant.call(Method::PATCH, "/isthmus/v1/passThroughAuthentication", &admin, Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_reports_set_the_organizations_sync_fields_and_stay_bounded() {
    let tenant = start().await;
    let (admin, sync) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await);
    use reqwest::Method;
    let report = |id: &str, mode: &str| {
        json!({"version": 1, "server": {"id": id, "host": "h", "productVersion": "0"}, "mode": mode, "intervalSeconds": 1800,
               "deletionThreshold": 500, "cycle": {"kind": "full", "started": 10, "finished": 20, "outcome": "success",
               "steps": [{"connector": "ad", "step": "fullImport", "status": "success", "adds": 1, "updates": 0, "deletes": 0, "errors": 0}]}})
    };
    let fields = |org: &Value| (org["value"][0]["onPremisesSyncEnabled"].clone(), org["value"][0]["onPremisesLastSyncDateTime"].clone());
    let (_, org) = tenant.call(Method::GET, "/v1.0/organization", &admin, None).await;
    assert_eq!(fields(&org), (Value::Null, Value::Null), "nothing reported yet: {org}");

    // A staging server's report does not make sync "on".
    let (status, answer) = tenant.call(Method::POST, "/isthmus/v1/syncReports", &sync, Some(report("standby", "staging"))).await;
    assert_eq!((status, &answer["competingActiveServers"]), (StatusCode::OK, &json!([])), "{answer}");
    let (_, org) = tenant.call(Method::GET, "/v1.0/organization", &admin, None).await;
    assert_eq!(fields(&org), (Value::Null, Value::Null), "{org}");

    // An active one does, at the time the tenant received it.
    let before = tenant::now_rfc3339();
    let (status, _) = tenant.call(Method::POST, "/isthmus/v1/syncReports", &sync, Some(report("primary", "active"))).await;
    assert_eq!(status, StatusCode::OK);
    let after = tenant::now_rfc3339();
    let (_, org) = tenant.call(Method::GET, "/v1.0/organization", &admin, None).await;
    let (enabled, last) = fields(&org);
    let last = last.as_str().unwrap_or_default().to_string();
    assert!(enabled == json!(true) && before <= last && last <= after, "between {before} and {after}: {org}");

    // Another role cannot report; a report with a step the contract does not know is refused.
    let (status, _) = tenant.call(Method::POST, "/isthmus/v1/syncReports", &admin, Some(report("x", "active"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut odd = report("primary", "active");
    odd["cycle"]["steps"][0]["step"] = json!("teleport");
    let (status, _) = tenant.call(Method::POST, "/isthmus/v1/syncReports", &sync, Some(odd)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A flood of made-up active servers does not grow the table past its cap (64): each answer
    // names every competing server the tenant remembers, the reporter always among them.
    let mut remembered = 0;
    for n in 0..70 {
        let id = format!("flood-{n:02}");
        let (status, answer) = tenant.call(Method::POST, "/isthmus/v1/syncReports", &sync, Some(report(&id, "active"))).await;
        assert_eq!(status, StatusCode::OK);
        let competing = answer["competingActiveServers"].as_array().unwrap();
        assert!(competing.iter().any(|known| known == &json!(id)), "{answer}");
        remembered = competing.len();
    }
    // 64 remembered: the 63 or 64 newest active ones, and the staging standby if it was not the
    // one replaced (all reported within the same second here, so ties go by id).
    assert!((63..=64).contains(&remembered), "the cap holds: {remembered} competing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_alerts_raise_from_sync_reports_and_resolve_when_the_cause_goes() {
    let tenant = start().await;
    let (admin, sync) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await);
    use reqwest::Method;
    let report = |status: &str, interval: u64| {
        json!({"version": 1, "server": {"id": "sync-1", "host": "h", "productVersion": "0"}, "mode": "active", "intervalSeconds": interval,
               "deletionThreshold": 500, "cycle": {"kind": "delta", "started": 10, "finished": 20,
               "outcome": if status == "success" { "success" } else { "completedWithIssues" },
               "steps": [{"connector": "corp", "step": "deltaImport", "status": status, "adds": 0, "updates": 0, "deletes": 0, "errors": 0}]}})
    };
    let alerts = |state: &'static str| {
        let tenant = &tenant;
        let admin = admin.clone();
        async move { tenant.call(Method::GET, &format!("/isthmus/v1/health/alerts?state={state}"), &admin, None).await }
    };
    let (status, listed) = alerts("open").await;
    assert_eq!((status, &listed["value"]), (StatusCode::OK, &json!([])), "{listed}");

    // AD unreachable in the last cycle: "Import from corp failed", with its remedy.
    let (status, _) = tenant.call(Method::POST, "/isthmus/v1/syncReports", &sync, Some(report("stoppedConnectorUnavailable", 1800))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = alerts("open").await;
    let open = listed["value"].as_array().unwrap();
    assert_eq!(open.len(), 1, "{listed}");
    assert_eq!((&open[0]["id"], &open[0]["subject"], &open[0]["severity"], &open[0]["state"]), (&json!("import-failed"), &json!("corp"), &json!("error"), &json!("open")));
    assert_eq!(open[0]["title"], "Import from corp failed");
    assert!(open[0]["remedy"].as_str().unwrap().contains("could not be reached"), "{listed}");
    let raised = open[0]["raisedDateTime"].clone();

    // The same fault again: still one alert, raised when it was first seen.
    tenant.call(Method::POST, "/isthmus/v1/syncReports", &sync, Some(report("stoppedConnectorUnavailable", 1800))).await;
    let (_, listed) = alerts("open").await;
    assert_eq!(listed["value"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["value"][0]["raisedDateTime"], raised);

    // Fixed: resolved, in the history only.
    tenant.call(Method::POST, "/isthmus/v1/syncReports", &sync, Some(report("success", 1800))).await;
    let (_, listed) = alerts("open").await;
    assert_eq!(listed["value"], json!([]), "{listed}");
    let (_, history) = alerts("all").await;
    assert_eq!((&history["value"][0]["id"], &history["value"][0]["state"]), (&json!("import-failed"), &json!("resolved")), "{history}");
    assert!(history["value"][0]["resolvedDateTime"].is_string(), "{history}");

    // A server that stops reporting (interval 1 s: silent for more than 2 s) shows at the next read.
    tenant.call(Method::POST, "/isthmus/v1/syncReports", &sync, Some(report("success", 1))).await;
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let (_, listed) = alerts("open").await;
    assert_eq!((&listed["value"][0]["id"], &listed["value"][0]["subject"]), (&json!("sync-not-reporting"), &json!("sync-1")), "{listed}");

    // The sync app's secret refused: "could not sign in"; its right secret again: resolved.
    let refused = tenant
        .client
        .post(format!("{}/{}/oauth2/v2.0/token", tenant.base, tenant.domain))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", tenant.sync.0.as_str()),
            ("client_secret", "not-the-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let (_, listed) = alerts("open").await;
    let failed = listed["value"].as_array().unwrap().iter().find(|alert| alert["id"] == "tenant-authentication-failed").cloned();
    assert_eq!(failed.map(|alert| alert["subject"].clone()), Some(json!(tenant.sync.0)), "{listed}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    tenant.token(&tenant.sync).await;
    let (_, listed) = alerts("open").await;
    assert!(!listed["value"].as_array().unwrap().iter().any(|alert| alert["id"] == "tenant-authentication-failed"), "{listed}");

    // Only readers of the directory see alerts; a bad state is a 400.
    let (status, _) = tenant.call(Method::GET, "/isthmus/v1/health/alerts", &sync, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the sync service does not read alerts");
    let (status, _) = alerts("everything").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
