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
    assert_eq!(document["token_endpoint_auth_methods_supported"], json!(["client_secret_post", "client_secret_basic", "private_key_jwt"]));
    assert_eq!(document["response_modes_supported"], json!(["query", "fragment", "form_post"]));
    assert!(document["end_session_endpoint"].as_str().unwrap().ends_with("/oauth2/v2.0/logout"), "{document}");
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
    for path in [
        "nowhere.example/discovery/v2.0/keys",
        "nowhere.example/v2.0/.well-known/openid-configuration",
        "nowhere.example/oauth2/v2.0/authorize?client_id=x",
        "nowhere.example/oauth2/v2.0/logout",
    ] {
        let response = tenant.client.get(format!("{}/{path}", tenant.base)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

/// The browser session: after one sign-in, authorize answers without a page (also to
/// `prompt=none`) until `prompt=login`, an exceeded `max_age`, logout or an administrator's
/// revocation; logout returns only to a registered URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_lasts_until_logout_or_revocation() {
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    let (_, sam) = tenant.call(reqwest::Method::POST, "/v1.0/users", &admin, Some(user("sso", &tenant.domain))).await;
    let browser = browser(&tenant);
    let authorize = format!("{}/{}/oauth2/v2.0/authorize", tenant.base, tenant.domain);
    let redirect = "http://localhost/callback";
    let challenge = challenge();
    let query = |extra: &[(&'static str, &'static str)]| {
        let mut query: Vec<(&str, String)> = vec![
            ("client_id", tenant.public.clone()),
            ("response_type", "code".into()),
            ("redirect_uri", redirect.into()),
            ("scope", "openid".into()),
            ("nonce", "nn".into()),
            ("code_challenge", challenge.clone()),
            ("code_challenge_method", "S256".into()),
        ];
        query.extend(extra.iter().map(|(name, value)| (*name, value.to_string())));
        query
    };
    let mut form = query(&[]);
    form.extend([("username", format!("sso@{}", tenant.domain)), ("password", "Str0ng!Pass".into())]);
    // Login CSRF: the form posted from another site starts nothing.
    let forged = browser.post(&authorize).header("origin", "https://evil.example").form(&form).send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(forged.headers().get("set-cookie").is_none() && forged.headers().get("location").is_none());
    let origin = tenant.base.clone();
    let signed_in = browser.post(&authorize).header("origin", origin).form(&form).send().await.unwrap();
    assert_eq!(signed_in.status(), StatusCode::FOUND, "posted from the tenant's own page");
    let set_cookie = signed_in.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.contains("Secure") && set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let with_session = |extra: &[(&'static str, &'static str)]| browser.get(&authorize).query(&query(extra)).header("cookie", cookie.clone()).send();
    let code_of = |response: &reqwest::Response| {
        let location = response.headers().get("location").map(|value| value.to_str().unwrap().to_string()).unwrap_or_default();
        location.split("code=").nth(1).map(|rest| rest.split('&').next().unwrap().to_string())
    };
    // Single sign-on: a code without a page, for prompt=none too.
    for extra in [&[][..], &[("prompt", "none")][..]] {
        let silent = with_session(extra).await.unwrap();
        assert_eq!(silent.status(), StatusCode::FOUND, "{extra:?}");
        let code = code_of(&silent).expect("a code");
        let (_, tokens) = tenant
            .token_request(&[
                ("grant_type", "authorization_code"),
                ("client_id", tenant.public.as_str()),
                ("code", code.as_str()),
                ("redirect_uri", redirect),
                ("code_verifier", "verifier-verifier-verifier-verifier-verifier"),
            ])
            .await;
        let id_token = claims(tokens["id_token"].as_str().unwrap_or_else(|| panic!("{tokens}")));
        assert_eq!((id_token["oid"].clone(), id_token["nonce"].as_str()), (sam["id"].clone(), Some("nn")), "{id_token}");
        assert!(id_token["auth_time"].as_i64().is_some(), "{id_token}");
    }
    // prompt=login and a max_age the session is older than ask for the password again.
    let again = with_session(&[("prompt", "login")]).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "the login page");
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(with_session(&[("max_age", "0")]).await.unwrap().status(), StatusCode::OK);
    let too_old = with_session(&[("max_age", "0"), ("prompt", "none")]).await.unwrap();
    assert!(too_old.headers()["location"].to_str().unwrap().contains("error=login_required"));
    // Logout: only to a registered URI, then the session is gone.
    let logout = format!("{}/{}/oauth2/v2.0/logout", tenant.base, tenant.domain);
    let hostile = browser
        .get(&logout)
        .query(&[("post_logout_redirect_uri", "http://localhost:1@evil.example/callback"), ("client_id", tenant.public.as_str())])
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(hostile.status(), StatusCode::BAD_REQUEST, "never back to an unregistered URI");
    let out = browser
        .get(&logout)
        .query(&[("post_logout_redirect_uri", redirect), ("client_id", tenant.public.as_str()), ("state", "bye")])
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::FOUND);
    assert_eq!(out.headers()["location"].to_str().unwrap(), format!("{redirect}?state=bye"));
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let after = with_session(&[("prompt", "none")]).await.unwrap();
    assert!(after.headers()["location"].to_str().unwrap().contains("error=login_required"), "the session ended at the tenant too");
    // An administrator's revocation ends a session as well.
    let signed_in = browser.post(&authorize).form(&form).send().await.unwrap();
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let (status, _) =
        tenant.call(reqwest::Method::POST, &format!("/v1.0/users/{}/revokeSignInSessions", sam["id"].as_str().unwrap()), &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    let revoked = browser.get(&authorize).query(&query(&[("prompt", "none")])).header("cookie", cookie).send().await.unwrap();
    assert!(revoked.headers()["location"].to_str().unwrap().contains("error=login_required"));
}

/// App registrations through Graph: a web app's secret from addPassword works until removed, a
/// public client signs users in without a secret and gets none, bad redirect URIs and
/// certificates are refused, a deleted app is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_are_registered_through_graph() {
    use reqwest::Method;
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    let (status, web) = tenant
        .call(Method::POST, "/v1.0/applications", &admin, Some(json!({"displayName": "Web app", "web": {"redirectUris": ["https://app.example/cb"]}})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{web}");
    let (id, app_id) = (web["id"].as_str().unwrap().to_string(), web["appId"].as_str().unwrap().to_string());
    assert_ne!(id, app_id, "the object id is not the client id");
    let (status, password) =
        tenant.call(Method::POST, &format!("/v1.0/applications/{id}/addPassword"), &admin, Some(json!({"passwordCredential": {"displayName": "ci"}}))).await;
    assert_eq!(status, StatusCode::OK, "{password}");
    let secret = password["secretText"].as_str().unwrap().to_string();
    let (_, shown) = tenant.call(Method::GET, &format!("/v1.0/applications/{id}"), &admin, None).await;
    assert!(!shown.to_string().contains(&secret), "the secret is shown once: {shown}");
    assert_eq!(shown["passwordCredentials"][0]["hint"].as_str(), Some(&secret[..3]));
    let tenant_ref = &tenant;
    let credentials = |secret: &str| {
        let (app_id, secret) = (app_id.clone(), secret.to_string());
        async move {
            tenant_ref
                .token_request(&[("grant_type", "client_credentials"), ("client_id", &app_id), ("client_secret", &secret), ("scope", "https://graph.microsoft.com/.default")])
                .await
        }
    };
    assert_eq!(credentials(&secret).await.0, StatusCode::OK);
    let (status, _) = tenant.call(Method::POST, &format!("/v1.0/applications/{id}/removePassword"), &admin, Some(json!({"keyId": password["keyId"]}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(credentials(&secret).await.0, StatusCode::UNAUTHORIZED, "a removed secret");

    // A public client: user sign-in without a secret, never a secret.
    let (status, public) = tenant
        .call(Method::POST, "/v1.0/applications", &admin, Some(json!({"displayName": "Desktop app", "isFallbackPublicClient": true,
                                                                     "publicClient": {"redirectUris": ["http://localhost"]}})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{public}");
    let public_id = public["id"].as_str().unwrap();
    let (status, _) = tenant.call(Method::POST, "/v1.0/users", &admin, Some(user("pia", &tenant.domain))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, tokens) = tenant.password_grant(public["appId"].as_str().unwrap(), &format!("pia@{}", tenant.domain), "Str0ng!Pass").await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (status, _) = tenant.call(Method::POST, &format!("/v1.0/applications/{public_id}/addPassword"), &admin, Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a public client gets no secret");

    // Bad input changes nothing.
    for body in [
        json!({"displayName": "x", "web": {"redirectUris": ["http://evil.example/cb"]}}),
        json!({"displayName": "x", "web": {"redirectUris": ["https://user@app.example/cb"]}}),
        json!({"displayName": "x", "web": {"redirectUris": ["https://app.example/cb#frag"]}}),
        json!({"displayName": "x", "keyCredentials": [{"type": "AsymmetricX509Cert", "usage": "Verify", "key": "bm90IGEgY2VydA=="}]}),
        json!({"displayName": ""}),
        json!({"displayName": "x", "requiredResourceAccess": []}),
    ] {
        let (status, error) = tenant.call(Method::POST, "/v1.0/applications", &admin, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
    }
    let (_, listed) = tenant.call(Method::GET, "/v1.0/applications", &admin, None).await;
    let names: Vec<&str> = listed["value"].as_array().unwrap().iter().filter_map(|app| app["displayName"].as_str()).collect();
    assert!(names.contains(&"Isthmus admin") && names.contains(&"Web app") && names.contains(&"Desktop app") && !names.contains(&"x"), "{names:?}");
    let (status, _) = tenant.call(Method::DELETE, &format!("/v1.0/applications/{id}"), &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, error) = credentials("anything").await;
    assert_eq!((status, error["error"].as_str()), (StatusCode::BAD_REQUEST, Some("unauthorized_client")), "a deleted app: {error}");
}

/// Application roles granted through Graph, as `az`/Graph PowerShell scripts do: the app's
/// service principal, the role looked up by value on Microsoft Graph's, an `appRoleAssignedTo`
/// grant that the next token carries, and its removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_roles_are_granted_through_graph() {
    use reqwest::Method;
    let tenant = start().await;
    let admin = tenant.token(&tenant.admin).await;
    let (_, app) = tenant.call(Method::POST, "/v1.0/applications", &admin, Some(json!({"displayName": "reporting daemon"}))).await;
    let app_id = app["appId"].as_str().unwrap().to_string();
    let (_, password) = tenant.call(Method::POST, &format!("/v1.0/applications/{}/addPassword", app["id"].as_str().unwrap()), &admin, Some(json!({}))).await;
    let credentials = (app_id.clone(), password["secretText"].as_str().unwrap().to_string());
    let (status, principal) = tenant.call(Method::POST, "/v1.0/servicePrincipals", &admin, Some(json!({"appId": app_id}))).await;
    assert_eq!(status, StatusCode::CREATED, "{principal}");
    let (status, _) = tenant.call(Method::POST, "/v1.0/servicePrincipals", &admin, Some(json!({"appId": app_id}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "one service principal per app");
    let (_, graph) =
        tenant.call(Method::GET, "/v1.0/servicePrincipals?$filter=appId%20eq%20'00000003-0000-0000-c000-000000000000'", &admin, None).await;
    let graph = &graph["value"][0];
    let role_id = graph["appRoles"].as_array().unwrap().iter().find(|role| role["value"] == "User.Read.All").unwrap()["id"].clone();
    assert_eq!(role_id, "df021288-bdef-4463-88db-98f22de89214", "Microsoft's id for a role Microsoft has");
    let grant = json!({"principalId": principal["id"], "resourceId": graph["id"], "appRoleId": role_id});
    let path = format!("/v1.0/servicePrincipals/{}/appRoleAssignedTo", graph["id"].as_str().unwrap());
    for (who, token) in [("the sync service", tenant.token(&tenant.sync).await), ("a reader", tenant.token(&tenant.reader).await)] {
        let (status, _) = tenant.call(Method::POST, &path, &token, Some(grant.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who} grants no roles");
    }
    let before = tenant.token(&credentials).await;
    assert_eq!(tenant.call(Method::GET, "/v1.0/users", &before, None).await.0, StatusCode::FORBIDDEN);
    let (status, assignment) = tenant.call(Method::POST, &path, &admin, Some(grant)).await;
    assert_eq!(status, StatusCode::CREATED, "{assignment}");
    let after = tenant.token(&credentials).await;
    assert_eq!(claims(&after)["roles"], json!(["User.Read.All"]));
    assert_eq!(tenant.call(Method::GET, "/v1.0/users", &after, None).await.0, StatusCode::OK, "the grant works in the next token");
    assert_eq!(tenant.call(Method::GET, "/v1.0/domains", &after, None).await.0, StatusCode::FORBIDDEN, "and only that role");
    let (_, listed) =
        tenant.call(Method::GET, &format!("/v1.0/servicePrincipals/{}/appRoleAssignments", principal["id"].as_str().unwrap()), &admin, None).await;
    assert_eq!(listed["value"][0]["id"], assignment["id"], "{listed}");
    let (status, _) = tenant.call(Method::DELETE, &format!("{path}/{}", assignment["id"].as_str().unwrap()), &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let revoked = tenant.token(&credentials).await;
    assert_eq!(tenant.call(Method::GET, "/v1.0/users", &revoked, None).await.0, StatusCode::FORBIDDEN, "the grant is gone");
    // Every role the permission table names can be granted.
    let offered: Vec<&str> = graph["appRoles"].as_array().unwrap().iter().filter_map(|role| role["value"].as_str()).collect();
    for role in tenant::permissions::all_roles() {
        assert!(offered.contains(&role), "{role} is not offered");
    }
}
