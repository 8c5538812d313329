//! Relying-party libraries nobody here wrote, unmodified, against the shipped `isthmus tenant
//! serve`, every app registered through Graph's `/v1.0/applications` (no in-process shortcut):
//! Python `authlib`
//! and `oic` (pyoidc), Node `openid-client` (OpenID-certified). Each discovers the tenant (authlib
//! also through `/organizations` and its `{tenantid}` issuer template),
//! builds the authorization URL (code + PKCE S256, nonce, state), lets a scripted browser sign in
//! on the login page, redeems the code with its client authentication (`client_secret_basic` or
//! `client_secret_post`), validates the ID token its own way (signature from the JWKS, issuer,
//! audience, nonce, `at_hash` where it checks one), refreshes (the old refresh token then
//! refused), reads userinfo and (openid-client) logs out through the end-session endpoint. The scripts print one JSON line the test reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// The scripted browser: the login page's form posted with the user's password; returns the
/// redirect the tenant answers with (the library's callback URL, code and state in it).
const PYTHON: &str = r#"
import json, re, sys, secrets, base64, hashlib, html
import requests

issuer, client_id, secret, redirect, user, password, ca, key_file, cert_file = sys.argv[1:10]
out = {}
browser = requests.Session()
browser.verify = ca
browser.trust_env = False

def sign_in(url):
    page = browser.get(url, allow_redirects=False)
    if page.status_code == 302:
        # The browser session of an earlier sign-in: single sign-on, no page.
        out["single_sign_on"] = out.get("single_sign_on", 0) + 1
        return page.headers["location"]
    assert page.status_code == 200, (page.status_code, page.text[:300])
    fields = {name: html.unescape(value) for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text)}
    fields.update({"username": user, "password": password})
    answer = browser.post(url.split("?")[0], data=fields, allow_redirects=False)
    assert answer.status_code == 302, (answer.status_code, answer.text[:300])
    return answer.headers["location"]

# authlib
from authlib.integrations.requests_client import OAuth2Session
from authlib.common.security import generate_token
from authlib.jose import JsonWebKey, jwt
from authlib.oidc.core import CodeIDToken
meta = browser.get(issuer + "/.well-known/openid-configuration").json()
session = OAuth2Session(client_id, secret, scope="openid profile offline_access", redirect_uri=redirect,
                        code_challenge_method="S256", token_endpoint_auth_method="client_secret_basic")
session.verify = ca
session.trust_env = False
verifier, nonce = generate_token(48), generate_token(20)
url, state = session.create_authorization_url(meta["authorization_endpoint"], nonce=nonce, code_verifier=verifier)
location = sign_in(url)
token = session.fetch_token(meta["token_endpoint"], authorization_response=location, code_verifier=verifier)
keys = JsonWebKey.import_key_set(browser.get(meta["jwks_uri"]).json())
claims = jwt.decode(token["id_token"], keys, claims_cls=CodeIDToken,
                    claims_options={"iss": {"essential": True, "values": [meta["issuer"]]}},
                    claims_params={"nonce": nonce, "client_id": client_id, "access_token": token["access_token"]})
claims.validate(leeway=120)
out["authlib_user"] = claims["preferred_username"]
first_refresh = token["refresh_token"]
renewed = session.refresh_token(meta["token_endpoint"], refresh_token=first_refresh)
out["authlib_rotated"] = renewed["refresh_token"] != first_refresh
try:
    session.refresh_token(meta["token_endpoint"], refresh_token=first_refresh)
    out["authlib_replay"] = "accepted"
except Exception as err:
    out["authlib_replay"] = getattr(err, "error", str(err))
info = session.get(meta["userinfo_endpoint"]).json()
out["authlib_userinfo_sub"] = info.get("sub") == claims["sub"]
wrong = OAuth2Session(client_id, "wrong-secret", scope="openid", redirect_uri=redirect, code_challenge_method="S256",
                      token_endpoint_auth_method="client_secret_post")
wrong.verify = ca
wrong.trust_env = False
verifier = generate_token(48)
url, _ = wrong.create_authorization_url(meta["authorization_endpoint"], nonce=generate_token(20), code_verifier=verifier)
try:
    wrong.fetch_token(meta["token_endpoint"], authorization_response=sign_in(url), code_verifier=verifier)
    out["authlib_wrong_secret"] = "accepted"
except Exception as err:
    out["authlib_wrong_secret"] = getattr(err, "error", str(err))

# Multi-tenant discovery (/organizations), as Microsoft documents it: the issuer is the template
# {tenantid}, filled in with the ID token's tid before authlib validates it.
multi = browser.get(issuer.rsplit("/", 2)[0] + "/organizations/v2.0/.well-known/openid-configuration").json()
verifier, nonce = generate_token(48), generate_token(20)
url, _ = session.create_authorization_url(multi["authorization_endpoint"], nonce=nonce, code_verifier=verifier)
token = session.fetch_token(multi["token_endpoint"], authorization_response=sign_in(url), code_verifier=verifier)
unverified = jwt.decode(token["id_token"], keys)
expected = multi["issuer"].replace("{tenantid}", unverified["tid"])
claims = jwt.decode(token["id_token"], keys, claims_cls=CodeIDToken, claims_options={"iss": {"essential": True, "values": [expected]}},
                    claims_params={"nonce": nonce, "client_id": client_id})
claims.validate(leeway=120)
out["authlib_multi_tenant_issuer"] = multi["issuer"].endswith("/{tenantid}/v2.0") and expected == meta["issuer"]

# private_key_jwt: the same code flow, the client proving itself with its registered certificate.
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography import x509
from cryptography.hazmat.primitives import hashes
certificate = x509.load_pem_x509_certificate(open(cert_file, "rb").read())
x5t = base64.urlsafe_b64encode(certificate.fingerprint(hashes.SHA256())).decode().rstrip("=")
signed = OAuth2Session(client_id, open(key_file).read(), scope="openid", redirect_uri=redirect, code_challenge_method="S256",
                       token_endpoint_auth_method="private_key_jwt")
signed.register_client_auth_method(PrivateKeyJWT(meta["token_endpoint"], headers={"x5t#S256": x5t}))
signed.verify = ca
signed.trust_env = False
verifier = generate_token(48)
url, _ = signed.create_authorization_url(meta["authorization_endpoint"], nonce=generate_token(20), code_verifier=verifier)
token = signed.fetch_token(meta["token_endpoint"], authorization_response=sign_in(url), code_verifier=verifier)
out["authlib_private_key_jwt"] = "id_token" in token

# oic (pyoidc)
from oic.oic import Client
from oic.oic.message import AuthorizationResponse, RegistrationResponse, AccessTokenResponse, OpenIDSchema
from oic.utils.authn.client import CLIENT_AUTHN_METHOD
client = Client(client_authn_method=CLIENT_AUTHN_METHOD, verify_ssl=ca)
client.provider_config(issuer)
client.store_registration_info(RegistrationResponse(client_id=client_id, client_secret=secret, redirect_uris=[redirect],
                                                    token_endpoint_auth_method="client_secret_post"))
verifier = secrets.token_urlsafe(48)
challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
request = client.construct_AuthorizationRequest(request_args={
    "client_id": client_id, "response_type": "code", "scope": ["openid", "offline_access"], "nonce": nonce, "state": state,
    "redirect_uri": redirect, "code_challenge": challenge, "code_challenge_method": "S256"})
location = sign_in(request.request(client.authorization_endpoint))
answer = client.parse_response(AuthorizationResponse, info=location.split("?", 1)[1], sformat="urlencoded")
assert answer["state"] == state
tokens = client.do_access_token_request(state=state, request_args={"code": answer["code"], "code_verifier": verifier, "redirect_uri": redirect},
                                        authn_method="client_secret_post")
assert isinstance(tokens, AccessTokenResponse), tokens
id_token = tokens["id_token"]
out["oic_user"] = id_token["preferred_username"]
out["oic_nonce"] = id_token["nonce"] == nonce
info = client.do_user_info_request(state=state, method="GET")
out["oic_userinfo_sub"] = isinstance(info, OpenIDSchema) and info["sub"] == id_token["sub"]
print(json.dumps(out))
"#;

const NODE: &str = r#"
import * as client from 'openid-client';
const [issuer, clientId, secret, redirect, user, password] = process.argv.slice(2);
const out = {};
async function signIn(url) {
  const page = await fetch(url, { redirect: 'manual' });
  const text = await page.text();
  if (page.status !== 200) throw new Error(`login page ${page.status}: ${text.slice(0, 200)}`);
  const unescape = (value) => value.replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
  const fields = new URLSearchParams();
  for (const [, name, value] of text.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)">/g)) fields.append(name, unescape(value));
  fields.append('username', user);
  fields.append('password', password);
  const answer = await fetch(url.href.split('?')[0], { method: 'POST', body: fields, redirect: 'manual' });
  if (answer.status !== 302) throw new Error(`sign-in ${answer.status}: ${(await answer.text()).slice(0, 200)}`);
  return new URL(answer.headers.get('location'));
}
async function codeFlow(authentication, label) {
  const config = await client.discovery(new URL(issuer), clientId, undefined, authentication);
  const verifier = client.randomPKCECodeVerifier();
  const nonce = client.randomNonce();
  const state = client.randomState();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirect, scope: 'openid profile offline_access', nonce, state,
    code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
  });
  const tokens = await client.authorizationCodeGrant(config, await signIn(url), { pkceCodeVerifier: verifier, expectedNonce: nonce, expectedState: state });
  out[`${label}_user`] = tokens.claims().preferred_username;
  return { config, tokens };
}
const { config, tokens } = await codeFlow(client.ClientSecretBasic(secret), 'basic');
await codeFlow(client.ClientSecretPost(secret), 'post');
const renewed = await client.refreshTokenGrant(config, tokens.refresh_token);
out.rotated = renewed.refresh_token !== tokens.refresh_token;
try {
  await client.refreshTokenGrant(config, tokens.refresh_token);
  out.replay = 'accepted';
} catch (err) {
  out.replay = err.error ?? String(err);
}
const info = await client.fetchUserInfo(config, renewed.access_token, tokens.claims().sub);
out.userinfo_sub = info.sub === tokens.claims().sub;
const endSession = client.buildEndSessionUrl(config, { post_logout_redirect_uri: redirect, id_token_hint: tokens.id_token, state: 'bye' });
const loggedOut = await fetch(endSession, { redirect: 'manual' });
out.logout = loggedOut.headers.get('location');
try {
  await codeFlow(client.ClientSecretPost('wrong-secret'), 'wrong');
  out.wrong_secret = 'accepted';
} catch (err) {
  out.wrong_secret = err.error ?? String(err);
}
console.log(JSON.stringify(out));
"#;

/// `isthmus tenant serve` in a folder of its own, stopped when dropped.
struct Server {
    base: String,
    ca: std::path::PathBuf,
    admin: (String, String),
    domain: String,
    tenant_id: String,
    http: reqwest::Client,
    token: String,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start() -> Server {
        Server::start_at("127.0.0.1", &[]).await
    }

    /// `tenant serve` listening on `ip` (a free port), with `extra` options.
    async fn start_at(ip: &str, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let state = dir.path().join("tenant");
        let child = Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args(["tenant", "serve", "--state", state.to_str().unwrap(), "--listen", &format!("{ip}:{port}")])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("isthmus tenant serve");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect((ip, port)).is_err() || !state.join("admin-app.txt").exists() {
            assert!(std::time::Instant::now() < deadline, "tenant serve did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let bootstrap = std::fs::read_to_string(state.join("admin-app.txt")).unwrap();
        let field = |name: &str| bootstrap.lines().find_map(|line| line.strip_prefix(&format!("{name} = "))).unwrap().to_string();
        let ca = state.join("tls").join("ca.pem");
        let http = testkit::https_client(&ca).unwrap();
        let base = format!("https://{ip}:{port}");
        // The tenant's own names come from Graph: the token endpoint takes `organizations` too.
        let admin = (field("client_id"), field("client_secret"));
        let token =
            testkit::client_credentials_token(&http, &format!("{base}/organizations/oauth2/v2.0/token"), &admin.0, &admin.1).await.unwrap();
        let org: serde_json::Value =
            http.get(format!("{base}/v1.0/organization")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        let tenant_id = org["value"][0]["id"].as_str().unwrap().to_string();
        let domain = org["value"][0]["verifiedDomains"][0]["name"].as_str().unwrap_or_default().to_string();
        Server { base, ca, admin, domain, tenant_id, http, token, dir, child }
    }

    /// A public document of the tenant (discovery), as JSON.
    async fn public_json(&self, path: &str) -> serde_json::Value {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap().json().await.unwrap()
    }

    async fn graph(&self, method: reqwest::Method, path: &str, body: serde_json::Value) -> serde_json::Value {
        let response = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }
}

struct Fixture {
    issuer: String,
    client_id: String,
    secret: String,
    redirect: String,
    upn: String,
    ca: std::path::PathBuf,
    server: Server,
}

impl Fixture {
    /// What every relying-party script takes first: issuer, client id, secret, redirect URI,
    /// user and password.
    fn rp_args(&self) -> Vec<String> {
        [&self.issuer, &self.client_id, &self.secret, &self.redirect, &self.upn, "Str0ng!Pass"].map(str::to_string).to_vec()
    }
}

/// The shipped tenant with a user, and a web app registered through Graph with a secret.
async fn fixture() -> Fixture {
    let server = Server::start().await;
    let redirect = "http://localhost:53117/callback".to_string();
    let app = server
        .graph(
            reqwest::Method::POST,
            "/v1.0/applications",
            serde_json::json!({"displayName": "a web app", "web": {"redirectUris": [redirect]}}),
        )
        .await;
    let password = server
        .graph(reqwest::Method::POST, &format!("/v1.0/applications/{}/addPassword", app["id"].as_str().unwrap()), serde_json::json!({}))
        .await;
    let upn = format!("rp@{}", server.domain);
    server
        .graph(
            reqwest::Method::POST,
            "/v1.0/users",
            serde_json::json!({"accountEnabled": true, "displayName": "Relying Party User", "mailNickname": "rp", "userPrincipalName": upn,
                               "passwordProfile": {"password": "Str0ng!Pass", "forceChangePasswordNextSignIn": false}}),
        )
        .await;
    Fixture {
        issuer: format!("{}/{}/v2.0", server.base, server.tenant_id),
        client_id: app["appId"].as_str().unwrap().to_string(),
        secret: password["secretText"].as_str().unwrap().to_string(),
        redirect,
        upn,
        ca: server.ca.clone(),
        server,
    }
}

fn last_json_line(output: &std::process::Output, who: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{who} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|err| panic!("{who}: {err}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_and_pyoidc_complete_the_code_flow_unmodified() {
    let Some(python) = testkit::available(testkit::oidc_python()) else { return };
    let fx = fixture().await;
    let script = fx.server.dir.path().join("rp.py");
    std::fs::write(&script, PYTHON).unwrap();
    // The same app also proves itself with a certificate (keyCredentials through Graph).
    use base64::Engine as _;
    let (key, cert, der) = openssl_certificate(fx.server.dir.path(), "web-app");
    let key_credential =
        serde_json::json!({"type": "AsymmetricX509Cert", "usage": "Verify", "key": base64::engine::general_purpose::STANDARD.encode(&der)});
    fx.server
        .graph(
            reqwest::Method::PATCH,
            &format!("/v1.0/applications/{}", fx.client_id),
            serde_json::json!({"keyCredentials": [key_credential]}),
        )
        .await;
    let mut args = vec![script.to_str().unwrap().to_string()];
    args.extend(fx.rp_args());
    args.extend([fx.ca.to_str().unwrap(), key.to_str().unwrap(), cert.to_str().unwrap()].map(str::to_string));
    let output = tokio::task::spawn_blocking(move || Command::new(python).args(args).output()).await.unwrap().unwrap();
    let result = last_json_line(&output, "authlib/oic");
    assert_eq!(result["authlib_user"], fx.upn.as_str(), "{result}");
    assert_eq!(result["authlib_rotated"], true, "{result}");
    assert_eq!(result["authlib_replay"], "invalid_grant", "a replayed refresh token: {result}");
    assert_eq!(result["authlib_userinfo_sub"], true, "{result}");
    assert_eq!(result["authlib_wrong_secret"], "invalid_client", "{result}");
    assert_eq!(result["oic_user"], fx.upn.as_str(), "{result}");
    assert_eq!(result["oic_nonce"], true, "{result}");
    assert_eq!(result["oic_userinfo_sub"], true, "{result}");
    assert_eq!(result["single_sign_on"], 4, "the later sign-ins of the same browser: {result}");
    assert_eq!(result["authlib_private_key_jwt"], true, "{result}");
    assert_eq!(result["authlib_multi_tenant_issuer"], true, "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_completes_the_code_flow_unmodified() {
    let Some(folder) = testkit::available(testkit::js_clients()) else { return };
    let fx = fixture().await;
    let script = folder.join(format!("rp-{}.mjs", std::process::id()));
    std::fs::write(&script, NODE).unwrap();
    let mut command = Command::new("node");
    command.current_dir(&folder).env("NODE_EXTRA_CA_CERTS", &fx.ca).arg(&script).args(fx.rp_args());
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let _ = std::fs::remove_file(&script);
    let result = last_json_line(&output, "openid-client");
    assert_eq!((result["basic_user"].as_str(), result["post_user"].as_str()), (Some(fx.upn.as_str()), Some(fx.upn.as_str())), "{result}");
    assert_eq!(result["rotated"], true, "{result}");
    assert_eq!(result["replay"], "invalid_grant", "{result}");
    assert_eq!(result["userinfo_sub"], true, "{result}");
    assert_eq!(result["wrong_secret"], "invalid_client", "{result}");
    assert_eq!(result["logout"], format!("{}?state=bye", fx.redirect), "RP-initiated logout with the ID token as the hint: {result}");
}

/// Entra's own confidential-client method: MSAL's certificate credential (`private_key_jwt`),
/// PS256 with `x5t#S256` and RS256 with an SHA-1 `x5t`; a replayed assertion and an
/// unregistered certificate are refused.
const MSAL_CERTIFICATE: &str = r#"
import json, sys, time, uuid
import msal, requests
from msal.oauth2cli.assertion import JwtAssertionCreator
base, domain, client_id, key_file, cert_file, other_key_file, other_cert_file, sha1, ca = sys.argv[1:10]
session = requests.Session()
session.verify = ca
session.trust_env = False
key, cert = open(key_file).read(), open(cert_file).read()
scope = ["https://graph.microsoft.com/.default"]
out = {}
def token(credential):
    app = msal.ConfidentialClientApplication(client_id, client_credential=credential, authority=f"{base}/{domain}",
                                             instance_discovery=False, http_client=session)
    answer = app.acquire_token_for_client(scope)
    out.setdefault("why", []).append(answer.get("error_description"))
    return "ok" if "access_token" in answer else answer.get("error")
out["ps256"] = token({"private_key": key, "public_certificate": cert})
out["rs256"] = token({"private_key": key, "thumbprint": sha1})
out["unregistered"] = token({"private_key": open(other_key_file).read(), "public_certificate": open(other_cert_file).read()})
endpoint = f"{base}/{domain}/oauth2/v2.0/token"
assertion = JwtAssertionCreator(key, algorithm="RS256", sha1_thumbprint=sha1).create_normal_assertion(audience=endpoint, issuer=client_id)
assertion = assertion.decode() if isinstance(assertion, bytes) else assertion
form = {"grant_type": "client_credentials", "client_id": client_id, "scope": scope[0],
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_assertion": assertion}
out["first"] = session.post(endpoint, data=form).status_code
out["replay"] = session.post(endpoint, data=form).json().get("error")
# The known attacks on client assertions, each made with PyJWT as an attacker would.
import jwt, base64, binascii
x5t = base64.urlsafe_b64encode(binascii.a2b_hex(sha1)).decode().rstrip("=")
def claims(**changes):
    now = int(time.time())
    base = {"aud": endpoint, "iss": client_id, "sub": client_id, "jti": str(uuid.uuid4()), "nbf": now, "exp": now + 600}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}
attacks = {
    "alg_none": jwt.encode(claims(), None, algorithm="none", headers={"x5t": x5t}),
    # (PyJWT refuses to HMAC with a PEM key, so the token is put together by hand.)
    "hs256_with_the_certificate": ".".join([
        base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "x5t": x5t}).encode()).decode().rstrip("="),
        base64.urlsafe_b64encode(json.dumps(claims()).encode()).decode().rstrip("="),
        base64.urlsafe_b64encode(__import__("hmac").new(cert.encode(), b"x", "sha256").digest()).decode().rstrip("=")]),
    "other_audience": jwt.encode(claims(aud="https://evil.example/token"), key, algorithm="RS256", headers={"x5t": x5t}),
    "expired": jwt.encode(claims(exp=int(time.time()) - 3600, nbf=int(time.time()) - 4000), key, algorithm="RS256", headers={"x5t": x5t}),
    "a_year_long": jwt.encode(claims(exp=int(time.time()) + 366 * 86400), key, algorithm="RS256", headers={"x5t": x5t}),
    "subject_not_the_client": jwt.encode(claims(sub="00000000-0000-4000-8000-000000000001"), key, algorithm="RS256", headers={"x5t": x5t}),
    "no_jti": jwt.encode(claims(jti=None), key, algorithm="RS256", headers={"x5t": x5t}),
    "signed_by_a_stranger": jwt.encode(claims(), open(other_key_file).read(), algorithm="RS256", headers={"x5t": x5t}),
}
out["attacks"] = {name: session.post(endpoint, data=dict(form, client_assertion=value)).json().get("error") for name, value in attacks.items()}
print(json.dumps(out))
"#;

fn openssl_certificate(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    use base64::Engine as _;
    let (key, cert) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pem")));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let pem = std::fs::read_to_string(&cert).unwrap();
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    (key, cert, base64::engine::general_purpose::STANDARD.decode(body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msal_certificate_credentials_are_private_key_jwt() {
    use base64::Engine as _;
    let Some(python) = testkit::available(testkit::python_clients()) else { return };
    let server = Server::start().await;
    let dir = server.dir.path().to_path_buf();
    let (key, cert, der) = openssl_certificate(&dir, "daemon");
    let (other_key, other_cert, _) = openssl_certificate(&dir, "stranger");
    let key_credential = serde_json::json!({"type": "AsymmetricX509Cert", "usage": "Verify", "displayName": "daemon",
                                            "key": base64::engine::general_purpose::STANDARD.encode(&der)});
    let app = server
        .graph(
            reqwest::Method::POST,
            "/v1.0/applications",
            serde_json::json!({"displayName": "daemon with a certificate", "keyCredentials": [key_credential]}),
        )
        .await;
    let sha1 = app["keyCredentials"][0]["customKeyIdentifier"].as_str().unwrap().to_string();
    let script = dir.join("cert.py");
    std::fs::write(&script, MSAL_CERTIFICATE).unwrap();
    let paths = [&key, &cert, &other_key, &other_cert].map(|path| path.to_str().unwrap().to_string());
    let args: Vec<String> = [
        script.to_str().unwrap(),
        &server.base,
        &server.domain,
        app["appId"].as_str().unwrap(),
        &paths[0],
        &paths[1],
        &paths[2],
        &paths[3],
        &sha1,
        server.ca.to_str().unwrap(),
    ]
    .map(str::to_string)
    .to_vec();
    let output = tokio::task::spawn_blocking(move || Command::new(python).args(args).output()).await.unwrap().unwrap();
    let result = last_json_line(&output, "msal certificate");
    assert_eq!((result["ps256"].as_str(), result["rs256"].as_str()), (Some("ok"), Some("ok")), "{result}");
    assert_eq!(result["unregistered"], "invalid_client", "{result}");
    assert_eq!((result["first"].as_i64(), result["replay"].as_str()), (Some(200), Some("invalid_client")), "{result}");
    let attacks = result["attacks"].as_object().unwrap();
    assert_eq!(attacks.len(), 8);
    for (attack, error) in attacks {
        assert_eq!(error, "invalid_client", "{attack}: {result}");
    }
}

/// `isthmus tenant app create` makes the sync app (secret in a 0600 file, the sync role granted)
/// and a public client through Graph; an unknown role is refused before anything is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_app_create_makes_the_sync_app_and_a_public_client() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = Server::start().await;
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args(["tenant", "app", "create", "--tenant-url", &server.base, "--tenant", &server.domain, "--client-id", &server.admin.0])
            .arg("--tenant-ca")
            .arg(&server.ca)
            .args(extra)
            .env("ISTHMUS_CLIENT_SECRET", &server.admin.1)
            .output()
            .expect("isthmus tenant app create")
    };
    let file = server.dir.path().join("sync-app.txt");
    let refused = run(&["--name", "typo", "--role", "OnPremDirectorySync.ReadWrite.All", "--secret-file", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("no application role") && err.contains("OnPremDirectorySynchronization.ReadWrite.All"),
        "{err}"
    );
    let apps = server.graph(reqwest::Method::GET, "/v1.0/applications", serde_json::Value::Null).await;
    assert!(!apps.to_string().contains("typo"), "nothing made: {apps}");
    assert!(!file.exists());
    let made =
        run(&["--name", "Isthmus sync", "--role", "OnPremDirectorySynchronization.ReadWrite.All", "--secret-file", file.to_str().unwrap()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let stdout = String::from_utf8_lossy(&made.stdout);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let field = |name: &str| text.lines().find_map(|line| line.strip_prefix(&format!("{name} = "))).unwrap().to_string();
    let (id, secret) = (field("client_id"), field("client_secret"));
    assert!(stdout.contains(&id) && !stdout.contains(&secret), "the secret is never printed: {stdout}");
    let token_url = format!("{}/{}/oauth2/v2.0/token", server.base, server.domain);
    let token = testkit::client_credentials_token(&server.http, &token_url, &id, &secret).await.unwrap();
    use base64::Engine as _;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap())
            .unwrap();
    assert_eq!(claims["roles"], serde_json::json!(["OnPremDirectorySynchronization.ReadWrite.All"]));
    let public = run(&["--name", "Desktop sign-in", "--public", "--redirect-uri", "http://localhost"]);
    let stdout = String::from_utf8_lossy(&public.stdout);
    assert!(public.status.success() && stdout.starts_with("public client "), "{stdout}{}", String::from_utf8_lossy(&public.stderr));
    let without_file = run(&["--name", "careless"]);
    assert!(!without_file.status.success(), "a confidential app needs a place for its secret");
}

/// `tenant serve --listen <address>` makes its certificate for that address too, so clients
/// reaching the tenant there trust it without a `--host` (the start itself signs in there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_covers_the_listen_address() {
    let server = Server::start_at("127.0.0.254", &[]).await;
    let answer = server.http.get(format!("{}/organizations/v2.0/.well-known/openid-configuration", server.base)).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
}

/// `--public-url` is the issuer whatever address the tenant is reached at; bad values of the
/// new options are refused with the option named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_serve_options_public_url_and_limits() {
    let server = Server::start_at(
        "127.0.0.1",
        &["--public-url", "https://login.contoso.example", "--max-connections", "50", "--audit-retention-days", "7"],
    )
    .await;
    let discovery = server.public_json(&format!("/{}/v2.0/.well-known/openid-configuration", server.tenant_id)).await;
    assert_eq!(discovery["issuer"], format!("https://login.contoso.example/{}/v2.0", server.tenant_id));
    assert!(discovery["token_endpoint"].as_str().unwrap().starts_with("https://login.contoso.example/"), "{discovery}");
    for (option, value) in [
        ("--public-url", "http://login.contoso.example"),
        ("--public-url", "https://x.example/path"),
        ("--max-connections", "0"),
        ("--audit-retention-days", "0"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args(["tenant", "serve", "--state", dir.path().join("t").to_str().unwrap(), "--listen", "127.0.0.1:0", option, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && err.contains(option), "{option} {value}: {err}");
    }
}
