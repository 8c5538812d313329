// The tenant attacked from outside: what the sync role, other roles, unauthenticated callers and
// slow clients must not be able to do. Included by `https.rs` and `https_postgres.rs` after
// `suite/https.rs`, whose helpers it uses.

/// Every path the sync service writes by, tried against a cloud-only Global Administrator and a
/// cloud-only user: none changes them, and their owners' passwords keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_role_writes_only_what_it_owns() {
    let tenant = start().await;
    let (admin, sync) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await);
    use reqwest::Method;
    let global = "62e90394-69f5-4237-9190-012177145e10";
    let (_, gina) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("gina", &tenant.domain))).await;
    let gina_id = gina["id"].as_str().unwrap().to_string();
    let reference = |id: &str| json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{id}")});
    let (status, _) = tenant.call(Method::POST, &format!("/v1.0/directoryRoles/{global}/members/$ref"), &admin, Some(reference(&gina_id))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, carl) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("carl", &tenant.domain))).await;
    let carl_id = carl["id"].as_str().unwrap().to_string();
    let (_, team) = tenant
        .call(Method::POST, "/v1.0/groups", &admin, Some(json!({"displayName": "Team", "mailEnabled": false, "mailNickname": "team", "securityEnabled": true})))
        .await;
    let team_id = team["id"].as_str().unwrap().to_string();

    // PATCH: the takeover of the finding (anchor + synced flag, then a hash), a password, anything.
    let takeovers = [
        json!({"onPremisesImmutableId": "Z2luYQ==", "onPremisesSyncEnabled": true}),
        json!({"onPremisesSyncEnabled": true}),
        json!({"onPremisesImmutableId": "Z2luYQ=="}),
        json!({"passwordProfile": {"password": "Att4cker!Pass", "forceChangePasswordNextSignIn": false}}),
        json!({"displayName": "Owned"}),
    ];
    for id in [&gina_id, &carl_id] {
        for body in &takeovers {
            let (status, error) = tenant.call(Method::PATCH, &format!("/v1.0/users/{id}"), &sync, Some(body.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "PATCH {body} on {id}: {error}");
        }
        // The same through $batch.
        let batch = json!({"requests": [{"id": "1", "method": "PATCH", "url": format!("/users/{id}"), "body": takeovers[0]}]});
        let (_, answer) = tenant.call(Method::POST, "/v1.0/$batch", &sync, Some(batch)).await;
        assert_eq!(answer["responses"][0]["status"], 400, "{answer}");
        let (status, _) = tenant.call(Method::DELETE, &format!("/v1.0/users/{id}"), &sync, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "the sync deletes only what it owns");
    }
    // Group writes: members and properties of a cloud-only group.
    let (status, _) = tenant.call(Method::POST, &format!("/v1.0/groups/{team_id}/members/$ref"), &sync, Some(reference(&carl_id))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = tenant.call(Method::PATCH, &format!("/v1.0/groups/{team_id}"), &sync, Some(json!({"description": "owned"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Creates: never a cloud-only object, never a password.
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(user("mallory", &tenant.domain))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no cloud-only user from the sync");
    let mut with_password = synced_user("mona", &tenant.domain, "bW9uYQ==");
    with_password["passwordProfile"] = json!({"password": "Att4cker!Pass"});
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(with_password)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no password from the sync");
    // A hard match prepared by an administrator never takes over a role holder.
    let (status, _) = tenant.call(Method::PATCH, &format!("/v1.0/users/{gina_id}"), &admin, Some(json!({"onPremisesImmutableId": "Z2luYQ=="}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut hard = synced_user("gina2", &tenant.domain, "Z2luYQ==");
    hard["displayName"] = json!("Attacker");
    let (status, error) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(hard)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("Admin Role Conflict"), "{error}");
    // Nor does an update that would complete that prepared hard match (the join path).
    let (status, error) =
        tenant.call(Method::PATCH, &format!("/v1.0/users/{gina_id}"), &sync, Some(json!({"onPremisesSyncEnabled": true, "displayName": "Owned"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("Admin Role Conflict"), "{error}");
    // A prepared hard match on a user without a role is the sync's to complete, unless the
    // tenant blocks taking cloud objects over.
    let (status, _) = tenant.call(Method::PATCH, &format!("/v1.0/users/{carl_id}"), &admin, Some(json!({"onPremisesImmutableId": "Y2FybA=="}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let settings = format!("/v1.0/directory/onPremisesSynchronization/{}", tenant.tenant_id);
    let block = |on: bool| json!({"features": {"blockCloudObjectTakeoverThroughHardMatchEnabled": on}});
    let (status, _) = tenant.call(Method::PATCH, &settings, &admin, Some(block(true))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, error) =
        tenant.call(Method::PATCH, &format!("/v1.0/users/{carl_id}"), &sync, Some(json!({"onPremisesSyncEnabled": true}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "blocked: {error}");
    let (status, _) = tenant.call(Method::PATCH, &settings, &admin, Some(block(false))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, error) =
        tenant.call(Method::PATCH, &format!("/v1.0/users/{carl_id}"), &sync, Some(json!({"onPremisesSyncEnabled": true}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "the prepared hard match: {error}");
    // Hash sync to the (still cloud-only) administrator's anchor: nothing to take.
    let wire = phs::SyncedCredential::new(&phs::NtHash::of_password("Att4cker!Pass")).to_wire();
    let (_, answer) = tenant
        .call(Method::POST, "/isthmus/v1/passwordHashSync", &sync, Some(json!({"value": [{"onPremisesImmutableId": "Z2luYQ==", "credential": wire}]})))
        .await;
    assert_eq!(answer["value"][0]["status"], "NoTargetConnection", "{answer}");
    let client = tenant.public.clone();
    let (status, _) = tenant.password_grant(&client, &format!("gina@{}", tenant.domain), "Att4cker!Pass").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the attacker's password does not sign in");
    let (status, tokens) = tenant.password_grant(&client, &format!("gina@{}", tenant.domain), "Str0ng!Pass").await;
    assert_eq!(status, StatusCode::OK, "the owner's does: {tokens}");
    let (_, gina_now) = tenant.call(Method::GET, &format!("/v1.0/users/{gina_id}"), &admin, None).await;
    assert_eq!((gina_now["displayName"].as_str(), gina_now["onPremisesSyncEnabled"].as_bool()), (Some("User gina"), None), "{gina_now}");

    // On what it owns, the sync keeps its anchor and its flag, and a synced user holds no role.
    let (status, sam) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("sam", &tenant.domain, "c2Ft"))).await;
    assert_eq!(status, StatusCode::CREATED, "{sam}");
    let sam_path = format!("/v1.0/users/{}", sam["id"].as_str().unwrap());
    for body in [json!({"onPremisesImmutableId": "b3RoZXI="}), json!({"onPremisesSyncEnabled": false})] {
        let (status, _) = tenant.call(Method::PATCH, &sam_path, &sync, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (status, _) = tenant.call(Method::PATCH, &sam_path, &sync, Some(json!({"onPremisesImmutableId": "c2Ft", "displayName": "Sam"}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "the same anchor and the sync's own attributes are fine");
    let (status, error) =
        tenant.call(Method::POST, &format!("/v1.0/directoryRoles/{global}/members/$ref"), &admin, Some(reference(sam["id"].as_str().unwrap()))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("cloud-only"), "{error}");
}

/// Hash sync's parameters are what Entra sends: a costly iteration count would make every
/// sign-in check of that user a denial of service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_sync_takes_only_entras_parameters() {
    let tenant = start().await;
    let sync = tenant.token(&tenant.sync).await;
    use reqwest::Method;
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("ida", &tenant.domain, "aWRh"))).await;
    assert_eq!(status, StatusCode::CREATED);
    let good = phs::SyncedCredential::new(&phs::NtHash::of_password("Pass!word1")).to_wire();
    for iterations in ["1000000", "999", "1001"] {
        let costly = good.replace(",1000,", &format!(",{iterations},"));
        let (status, error) = tenant
            .call(Method::POST, "/isthmus/v1/passwordHashSync", &sync, Some(json!({"value": [{"onPremisesImmutableId": "aWRh", "credential": costly}]})))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{iterations}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().contains("must be 1000"), "{error}");
    }
    let (_, answer) = tenant
        .call(Method::POST, "/isthmus/v1/passwordHashSync", &sync, Some(json!({"value": [{"onPremisesImmutableId": "aWRh", "credential": good}]})))
        .await;
    assert_eq!(answer["value"][0]["status"], "Success", "{answer}");
}

/// A registration sent twice (a retry after a lost answer) is one agent: one row, one
/// revocation; a revoked agent's key does not register again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_key_registers_one_agent() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    use reqwest::Method;
    let key = pta::key_to_text(&pta::AgentKey::from_bytes([77; 32]).public());
    let registration = || {
        let tls_key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default().serialize_request(&tls_key).unwrap().pem().unwrap();
        json!({"csr": csr, "encryptionKey": key, "machineName": "dc1", "version": "1"})
    };
    let agents = "/isthmus/v1/passThroughAuthentication/agents";
    let (status, first) = tenant.call(Method::POST, agents, &admin, Some(registration())).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = tenant.call(Method::POST, agents, &admin, Some(registration())).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["agentId"], first["agentId"], "the same agent");
    assert_ne!(again["certificate"], first["certificate"], "with the new certificate");
    let (_, list) = tenant.call(Method::GET, agents, &admin, None).await;
    assert_eq!(list["value"].as_array().unwrap().len(), 1, "{list}");
    let (status, _) = tenant.call(Method::DELETE, &format!("{agents}/{}", first["agentId"].as_str().unwrap()), &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, error) = tenant.call(Method::POST, agents, &admin, Some(registration())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("revoked"), "{error}");
}

/// Graph takes only access tokens whose audience is Graph: a user's ID token (audience: the
/// client) and refresh token (no audience) are not callers — 401, not 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_graph_access_tokens_are_bearers() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    use reqwest::Method;
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("uma", &tenant.domain))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, tokens) = tenant.password_grant(&tenant.public, &format!("uma@{}", tenant.domain), "Str0ng!Pass").await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    for kind in ["id_token", "refresh_token"] {
        let token = tokens[kind].as_str().unwrap();
        for path in ["/v1.0/users", "/v1.0/organization", "/isthmus/v1/passThroughAuthentication/agents"] {
            let (status, error) = tenant.call(Method::GET, path, token, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{kind} on {path}: {error}");
        }
    }
    let (status, _) = tenant.call(Method::GET, "/v1.0/users", tokens["access_token"].as_str().unwrap(), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the user's access token is a caller, without directory roles");
}

/// Every route that takes a token, called by an app holding each role of the permission table
/// (and one holding none): refused (403) exactly when the table does not name the role. Ids are
/// of nothing, so an allowed call ends in a 404 or 400 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_requires_the_permissions_graph_documents() {
    let tenant = start().await;
    let nothing = "00000000-0000-4000-8000-000000000000";
    let mut refused = 0;
    for (role, app) in &tenant.role_apps {
        let token = tenant.token(app).await;
        for (method, path, area) in tenant::permissions::ROUTES {
            let filled = if path.starts_with("/isthmus/v1/leakedCredentials") {
                path.replace("{id}", "ABCDE")
            } else if path.starts_with("/v1.0/domains/") {
                path.replace("{id}", "nowhere.example")
            } else {
                path.replace("{id}", nothing).replace("{member}", nothing)
            };
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let body = matches!(method, reqwest::Method::POST | reqwest::Method::PATCH).then(|| json!({}));
            let (status, answer) = tenant.call(method.clone(), &filled, &token, body).await;
            let allowed = tenant::permissions::needed(*area).contains(&role.as_str());
            if allowed {
                assert!(!matches!(status, StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED), "{role:?} {method} {filled}: {status} {answer}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role:?} {method} {filled}: {answer}");
                refused += 1;
            }
        }
    }
    assert!(refused > 100, "the walk refused {refused} calls");
    // The finding: an app with only User.ReadWrite.All adds no domain, changes no sync setting,
    // creates no group and reads no sign-in log.
    let (_, user_admin) = tenant.role_apps.iter().find(|(role, _)| role == "User.ReadWrite.All").unwrap();
    let token = tenant.token(user_admin).await;
    use reqwest::Method;
    for (method, path, body) in [
        (Method::POST, "/v1.0/domains".to_string(), Some(json!({"id": "evil.example"}))),
        (Method::PATCH, format!("/v1.0/directory/onPremisesSynchronization/{}", tenant.tenant_id), Some(json!({"features": {"blockSoftMatchEnabled": false}}))),
        (Method::POST, "/v1.0/groups".to_string(), Some(json!({"displayName": "G", "mailEnabled": false, "mailNickname": "g", "securityEnabled": true}))),
        (Method::GET, "/v1.0/auditLogs/signIns".to_string(), None),
    ] {
        let (status, _) = tenant.call(method.clone(), &path, &token, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
    }
}

/// The finding: unknown 100 KB client ids and sign-ins of names that are no user grew the
/// database without bound. Now identifiers are checked before anything is written, a source
/// gets 429 after its failures of the minute, and failures leave bounded rows only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_callers_cannot_fill_the_disk() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    let database = tenant._dir.path().join("state").join("tenant.db");
    // The database and its write-ahead log (writes land there until a checkpoint).
    let size = || {
        let wal = std::path::PathBuf::from(format!("{}-wal", database.display()));
        [&database, &wal].iter().map(|path| std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)).sum::<u64>()
    };
    let before = size();
    let huge = "a".repeat(100 * 1024);
    let url = format!("{}/{}/oauth2/v2.0/token", tenant.base, tenant.domain);
    let mut statuses = std::collections::BTreeMap::new();
    let mut retry_after = None;
    for n in 0..200 {
        let form: Vec<(&str, String)> = if n % 2 == 0 {
            vec![("grant_type", "client_credentials".into()), ("client_id", huge.clone()), ("client_secret", "x".into()), ("scope", "x/.default".into())]
        } else {
            vec![
                ("grant_type", "password".into()),
                ("client_id", tenant.public.clone()),
                ("username", format!("nobody{n}@{}", tenant.domain)),
                ("password", "Wrong!Pass1".into()),
                ("scope", "openid".into()),
            ]
        };
        let response = tenant.client.post(&url).form(&form).send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response.headers().get("retry-after").and_then(|value| value.to_str().ok()).map(str::to_string);
        }
        *statuses.entry(response.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&429).copied(), Some(200 - tenant::limits::FAILURES_PER_SOURCE as usize), "{statuses:?}");
    let wait: u64 = retry_after.expect("429 says when to come back").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let (status, log) = tenant.call(reqwest::Method::GET, "/v1.0/auditLogs/signIns?$top=999", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    let rows = log["value"].as_array().unwrap();
    assert!(rows.len() <= tenant::limits::FAILURES_PER_SOURCE as usize, "{} rows", rows.len());
    assert!(!log.to_string().contains(&"a".repeat(300)), "no client id of 100 KB is kept");
    if !POSTGRES {
        let grown = size().saturating_sub(before);
        eprintln!("200 hostile token requests: tenant.db and its WAL grew by {grown} bytes; {statuses:?}");
        assert!(grown < 512 * 1024, "tenant.db and its WAL grew by {grown} bytes");
    }
}

/// A TLS connection to the tenant, for requests written by hand.
async fn raw_tls(tenant: &Running) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(testkit::tls::client_config(&tenant.ca_pem).unwrap());
    let addr = tenant.base.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Slow clients: half-sent requests are closed after the header timeout, at the connection
/// limit new clients wait instead of being lost (and are served once the slow ones are gone),
/// and an oversized header gets 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_clients_do_not_hold_the_server() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tenant = start_tweaked(None, None, tenant::resilience::MatchPolicy::default(), |config| {
        config.header_timeout = std::time::Duration::from_secs(1);
        config.max_connections = 8;
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut tls = raw_tls(&tenant).await;
        tls.write_all(b"GET /v1.0/users HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
        tls.flush().await.unwrap();
        slow.push(tls);
    }
    // Every slot is held: this client waits in the queue, then is served.
    let admin = tenant.token(&tenant.admin).await;
    let (status, _) = tenant.call(reqwest::Method::GET, "/v1.0/organization", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    for mut tls in slow {
        let mut buffer = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(20), tls.read_to_end(&mut buffer)).await;
        assert!(read.is_ok(), "the server closes a half-sent request");
        let text = String::from_utf8_lossy(&buffer);
        assert!(!text.contains("200 OK"), "{text}");
    }
    let mut tls = raw_tls(&tenant).await;
    let request = format!("GET /v1.0/users HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n", "a".repeat(500 * 1024));
    let _ = tls.write_all(request.as_bytes()).await;
    let mut buffer = vec![0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), tls.read(&mut buffer)).await.unwrap().unwrap_or(0);
    let head = String::from_utf8_lossy(&buffer[..read]);
    assert!(head.starts_with("HTTP/1.1 431"), "{head:?}");
}

/// Graph's property limits, from the resource tables: a 3 MB displayName (stored before) and
/// over-long list values are refused, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_limits_are_graphs() {
    let tenant = start().await;
    let (admin, sync) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await);
    use reqwest::Method;
    let mut huge = user("hugo", &tenant.domain);
    huge["displayName"] = json!("x".repeat(3 * 1024 * 1024));
    let (status, error) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(huge)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"]["message"].as_str().unwrap().contains("'displayName' of resource 'User': longer than 256 characters"), "{error}");
    let mut at_limit = user("hugo", &tenant.domain);
    at_limit["displayName"] = json!("é".repeat(256));
    let (status, created) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(at_limit)).await;
    assert_eq!(status, StatusCode::CREATED, "256 characters (512 bytes) are fine: {created}");
    let mut synced = synced_user("sid", &tenant.domain, "c2lk");
    synced["proxyAddresses"] = json!([format!("smtp:{}@x.example", "a".repeat(2000))]);
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced.clone())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the sync's values have limits too");
    synced["proxyAddresses"] = json!((0..1001).map(|n| format!("smtp:a{n}@x.example")).collect::<Vec<_>>());
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = tenant
        .call(Method::PATCH, &format!("/v1.0/users/{}", created["id"].as_str().unwrap()), &admin, Some(json!({"jobTitle": "j".repeat(129)})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "updates too");
    // Nesting a body cannot deepen the server's recursion: a clear 400.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let response = tenant.client.post(format!("{}/v1.0/users", tenant.base)).bearer_auth(&admin).body(deep).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (_, listed) = tenant.call(Method::GET, "/v1.0/users?$select=displayName", &admin, None).await;
    assert_eq!(listed["value"].as_array().unwrap().len(), 1, "only the good user was stored: {listed:.200}");
}

/// Query options the tenant does not serve are refused with Graph's error, not ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_query_options_are_refused() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    for path in [
        "/v1.0/users?$orderby=displayName",
        "/v1.0/users?$count=true",
        "/v1.0/users?$expand=manager",
        "/v1.0/groups?$search=%22displayName:staff%22",
        "/v1.0/users?$skip=5",
        "/v1.0/users/delta()?$filter=mail%20eq%20'x'",
        "/v1.0/contacts/00000000-0000-4000-8000-000000000000?$top=2",
    ] {
        let (status, error) = tenant.call(reqwest::Method::GET, path, &admin, None).await;
        assert_eq!((status, error["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("Request_UnsupportedQuery")), "{path}: {error}");
    }
    let (status, _) = tenant.call(reqwest::Method::GET, "/v1.0/users?$top=5&$select=displayName&api-version=1.6", &admin, None).await;
    assert_eq!(status, StatusCode::OK, "supported options, and parameters that are not query options, still work");
}

/// The token-theft finding end to end: with `http://localhost/callback` registered, hostile
/// redirect URIs get the error page on GET, and a correct password posted with them yields no
/// redirect, so no code ever leaves for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_redirect_uris_never_receive_a_code() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    let (status, _) = tenant.call(reqwest::Method::POST, "/v1.0/users", &admin, Some(user("vic", &tenant.domain))).await;
    assert_eq!(status, StatusCode::CREATED);
    let browser = browser(&tenant);
    let challenge = challenge();
    let authorize = format!("{}/{}/oauth2/v2.0/authorize", tenant.base, tenant.domain);
    let upn = format!("vic@{}", tenant.domain);
    for hostile in [
        "http://localhost:1@evil.example/callback",
        "http://localhost@evil.example/callback",
        "http://localhost:1/callback#x",
        "http://localhost.evil.example/callback",
        "http://localhost:1\\@evil.example/callback",
        "http://localhost:1/%2e%2e/callback",
        "https://localhost:1/callback",
        "http://localhost:1/callback/..%2f..%2fother",
    ] {
        let query = [
            ("client_id", tenant.reader.0.as_str()),
            ("response_type", "code"),
            ("redirect_uri", hostile),
            ("scope", "openid"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let page = browser.get(&authorize).query(&query).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::BAD_REQUEST, "{hostile}");
        let mut form: Vec<(&str, &str)> = query.to_vec();
        form.extend([("username", upn.as_str()), ("password", "Str0ng!Pass")]);
        let posted = browser.post(&authorize).form(&form).send().await.unwrap();
        assert!(posted.headers().get("location").is_none(), "{hostile}: redirected");
        assert!(!posted.text().await.unwrap().contains("code="), "{hostile}");
    }
}

/// Refresh tokens as Entra and the OAuth 2.0 Security BCP keep them: only with
/// `offline_access`, and revoked by an administrator's `revokeSignInSessions`, a password reset
/// and a changed synced password (not by the same hash sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_end_with_revocation_and_password_changes() {
    let tenant = start().await;
    let (admin, sync) = (tenant.token(&tenant.admin).await, tenant.token(&tenant.sync).await);
    use reqwest::Method;
    let (_, rita) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("rita", &tenant.domain))).await;
    let upn = format!("rita@{}", tenant.domain);
    let token_url = format!("{}/{}/oauth2/v2.0/token", tenant.base, tenant.domain);
    let sign_in = |username: String, password: &'static str, scope: &'static str| {
        let request = tenant.client.post(&token_url).form(&[
            ("grant_type", "password".to_string()),
            ("client_id", tenant.public.clone()),
            ("username", username),
            ("password", password.to_string()),
            ("scope", scope.to_string()),
        ]);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let refresh = |token: &str| {
        let request = tenant.client.post(&token_url).form(&[
            ("grant_type", "refresh_token"),
            ("client_id", tenant.public.as_str()),
            ("refresh_token", token),
            ("scope", "User.Read offline_access"),
        ]);
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let online = sign_in(upn.clone(), "Str0ng!Pass", "openid User.Read").await;
    assert!(online["access_token"].is_string() && online["refresh_token"].is_null(), "no offline_access, no refresh token: {online}");
    let offline = sign_in(upn.clone(), "Str0ng!Pass", "openid User.Read offline_access").await;
    let token = offline["refresh_token"].as_str().expect("offline_access brings a refresh token").to_string();
    let (status, revoked) =
        tenant.call(Method::POST, &format!("/v1.0/users/{}/revokeSignInSessions", rita["id"].as_str().unwrap()), &admin, None).await;
    assert_eq!((status, &revoked["value"]), (StatusCode::OK, &json!(true)), "{revoked}");
    let (status, error) = refresh(&token).await;
    assert_eq!((status, error["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "revoked by the administrator");
    let offline = sign_in(upn.clone(), "Str0ng!Pass", "openid offline_access").await;
    let token = offline["refresh_token"].as_str().unwrap().to_string();
    let reset = json!({"passwordProfile": {"password": "N3w!Passw0rd", "forceChangePasswordNextSignIn": false}});
    let (status, _) = tenant.call(Method::PATCH, &format!("/v1.0/users/{upn}"), &admin, Some(reset)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = refresh(&token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "revoked by the password reset");

    // A synced user: the same hash again keeps the sign-in, a changed one ends it.
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &sync, Some(synced_user("sal", &tenant.domain, "c2Fs"))).await;
    assert_eq!(status, StatusCode::CREATED);
    let send = |password: &str| {
        let wire = phs::SyncedCredential::new(&phs::NtHash::of_password(password)).to_wire();
        json!({"value": [{"onPremisesImmutableId": "c2Fs", "credential": wire}]})
    };
    let first = send("Synced!Pass1");
    tenant.call(Method::POST, "/isthmus/v1/passwordHashSync", &sync, Some(first.clone())).await;
    let offline = sign_in(format!("sal@{}", tenant.domain), "Synced!Pass1", "openid offline_access").await;
    let token = offline["refresh_token"].as_str().unwrap_or_else(|| panic!("{offline}")).to_string();
    tenant.call(Method::POST, "/isthmus/v1/passwordHashSync", &sync, Some(first)).await;
    let (status, rotated) = refresh(&token).await;
    assert_eq!(status, StatusCode::OK, "the same hash again: {rotated}");
    tenant.call(Method::POST, "/isthmus/v1/passwordHashSync", &sync, Some(send("Synced!Pass2"))).await;
    let (status, _) = refresh(rotated["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a changed on-premises password ends the sign-in");
}
