// OpenID Connect as relying parties expect it: what discovery promises is served, the
// authorize endpoint answers in the client's response mode, errors reach the client with its
// state, userinfo. Included by `https.rs` and `https_postgres.rs` after `suite/https.rs`.

/// A browser that does not follow redirects, and a PKCE challenge.
fn browser(tenant: &Running) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&tenant.ca_pem).unwrap()).unwrap();
    reqwest::Client::builder().add_root_certificate(ca).use_rustls_tls().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn challenge() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, b"verifier-verifier-verifier-verifier-verifier"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_promises_only_what_is_served() {
    let tenant = start().await;
    let url = format!("{}/{}/v2.0/.well-known/openid-configuration", tenant.base, tenant.tenant_id);
    let document: Value = tenant.client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(document["response_types_supported"], json!(["code"]));
    assert_eq!(document["subject_types_supported"], json!(["public"]));
    assert_eq!(document["token_endpoint_auth_methods_supported"], json!(["client_secret_post", "client_secret_basic"]));
    assert_eq!(document["response_modes_supported"], json!(["query", "fragment", "form_post"]));
    let userinfo = document["userinfo_endpoint"].as_str().unwrap();
    let response = tenant.client.get(userinfo).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "userinfo is served, and needs a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_answers_in_the_response_mode_and_errors_reach_the_client() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    let (status, _) = tenant.call(reqwest::Method::POST, "/v1.0/users", &admin, Some(user("olga", &tenant.domain))).await;
    assert_eq!(status, StatusCode::CREATED);
    let browser = browser(&tenant);
    let authorize = format!("{}/{}/oauth2/v2.0/authorize", tenant.base, tenant.domain);
    let challenge = challenge();
    let redirect = "http://localhost:7777/cb".replace("/cb", "/callback");
    let base = |extra: &[(&'static str, &'static str)]| {
        let mut query: Vec<(&str, String)> = vec![
            ("client_id", tenant.public.clone()),
            ("response_type", "code".into()),
            ("redirect_uri", redirect.clone()),
            ("scope", "openid".into()),
            ("state", "st-1".into()),
            ("code_challenge", challenge.clone()),
            ("code_challenge_method", "S256".into()),
        ];
        for (name, value) in extra {
            query.retain(|(known, _)| known != name);
            if !value.is_empty() {
                query.push((name, value.to_string()));
            }
        }
        query
    };
    // Errors after the client and its redirect URI are known go to the client, with its state.
    for (extra, error) in [
        (vec![("prompt", "none")], "login_required"),
        (vec![("code_challenge", "")], "invalid_request"),
        (vec![("response_type", "token")], "unsupported_response_type"),
        (vec![("response_mode", "web_message")], "invalid_request"),
    ] {
        let response = browser.get(&authorize).query(&base(&extra)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "{extra:?}");
        let location = response.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(&format!("{redirect}?error={error}&")) && location.ends_with("&state=st-1"), "{extra:?}: {location}");
    }
    // login_hint fills in the user name.
    let page = browser.get(&authorize).query(&base(&[("login_hint", "olga@x.example")])).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("value=\"olga@x.example\""), "{page}");
    let upn = format!("olga@{}", tenant.domain);
    let sign_in = |extra: Vec<(&'static str, &'static str)>| {
        let mut form = base(&extra);
        form.push(("username", upn.clone()));
        form.push(("password", "Str0ng!Pass".into()));
        browser.post(&authorize).form(&form).send()
    };
    let fragment = sign_in(vec![("response_mode", "fragment")]).await.unwrap();
    let location = fragment.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&format!("{redirect}#code=")) && location.ends_with("&state=st-1"), "{location}");
    let posted = sign_in(vec![("response_mode", "form_post")]).await.unwrap();
    assert_eq!(posted.status(), StatusCode::OK);
    let policy = posted.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(policy.contains("script-src 'sha256-") && policy.contains("form-action http://localhost:7777"), "{policy}");
    let html = posted.text().await.unwrap();
    assert!(html.contains(&format!("action=\"{redirect}\"")) && html.contains("name=\"code\"") && html.contains("value=\"st-1\""), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_answers_for_a_users_access_token_only() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    let (_, una) = tenant.call(reqwest::Method::POST, "/v1.0/users", &admin, Some(user("una", &tenant.domain))).await;
    let (status, tokens) = tenant.password_grant(&tenant.public, &format!("una@{}", tenant.domain), "Str0ng!Pass").await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let url = format!("{}/oidc/userinfo", tenant.base);
    let info: Value = tenant.client.get(&url).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["sub"], claims(tokens["id_token"].as_str().unwrap())["sub"], "{info}");
    assert_eq!((info["sub"].clone(), info["name"].as_str()), (una["id"].clone(), Some("User una")));
    for token in [admin.as_str(), tokens["id_token"].as_str().unwrap(), tokens["refresh_token"].as_str().unwrap()] {
        let response = tenant.client.post(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "an app token, an ID token and a refresh token are refused");
    }
}

/// The issuer is the tenant's authority whatever `Host` a request names; multi-tenant discovery
/// gives Microsoft's `{tenantid}` template; unknown tenant segments are 404 everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_is_pinned_and_unknown_tenants_are_not_found() {
    let tenant = start().await;
    let issuer = format!("{}/{}/v2.0", tenant.base, tenant.tenant_id);
    for segment in [tenant.tenant_id.as_str(), tenant.domain.as_str()] {
        let url = format!("{}/{segment}/v2.0/.well-known/openid-configuration", tenant.base);
        let document: Value = tenant.client.get(&url).header("host", "evil.example").send().await.unwrap().json().await.unwrap();
        assert_eq!(document["issuer"].as_str(), Some(issuer.as_str()), "{segment}: {document}");
        assert!(document["token_endpoint"].as_str().unwrap().starts_with(&tenant.base), "{document}");
    }
    for multi in ["common", "organizations"] {
        let url = format!("{}/{multi}/v2.0/.well-known/openid-configuration", tenant.base);
        let document: Value = tenant.client.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(document["issuer"].as_str(), Some(format!("{}/{{tenantid}}/v2.0", tenant.base).as_str()), "{document}");
    }
    let response = tenant
        .client
        .post(format!("{}/{}/oauth2/v2.0/token", tenant.base, tenant.domain))
        .header("host", "evil.example")
        .form(&[("grant_type", "client_credentials"), ("client_id", &tenant.admin.0), ("client_secret", &tenant.admin.1), ("scope", "https://graph.microsoft.com/.default")])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(claims(body["access_token"].as_str().unwrap())["iss"].as_str(), Some(issuer.as_str()), "a token minted with a forged Host");
    for path in ["nowhere.example/discovery/v2.0/keys", "nowhere.example/v2.0/.well-known/openid-configuration"] {
        let response = tenant.client.get(format!("{}/{path}", tenant.base)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
}
