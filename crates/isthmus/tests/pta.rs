//! Pass-through authentication end to end: a real Samba AD DC, the tenant over HTTPS, and three
//! `isthmus pta-agent` processes registered with an admin app. Synced users of a pass-through
//! domain sign in with their AD password (token endpoint and Microsoft's Python `msal`); every
//! AD account state gives its own code at the very next sign-in; agents that hang or die do not
//! lose sign-ins; with none left the error is clear and the automatic fallback signs in with the
//! synced hash; a revoked agent is refused; malformed, replayed and misdirected agent messages
//! are refused; a tampered ciphertext does not open; certificates renew before they expire.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::samba::{AdUser, SambaDc};

const PASSWORD: &str = "Pta!Pass.123";

/// An agent process, killed when dropped.
struct AgentProcess {
    child: Child,
    dir: std::path::PathBuf,
    id: String,
}

impl AgentProcess {
    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal}");
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.err")).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Fixture {
    dc: SambaDc,
    python: std::path::PathBuf,
    address: testkit::LoopbackAddr,
    folder: tempfile::TempDir,
    http: reqwest::Client,
    base: String,
    realm: String,
    ca: std::path::PathBuf,
    public_client: String,
    admin: (String, String),
    sync_token: String,
    admin_token: String,
    ad: testkit::samba::AdAdmin,
    agents: Vec<AgentProcess>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Fixture {
    async fn sign_in(&self, sam: &str, password: &str) -> (u16, Value) {
        let form = [
            ("grant_type", "password".to_string()),
            ("client_id", self.public_client.clone()),
            ("username", format!("{sam}@{}", self.realm)),
            ("password", password.to_string()),
            ("scope", "openid User.Read".to_string()),
        ];
        let response = self.http.post(format!("{}/{}/oauth2/v2.0/token", self.base, self.realm)).form(&form).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    }

    /// The AADSTS code of a refused sign-in (0 when it succeeded).
    async fn code(&self, sam: &str, password: &str) -> u64 {
        let (status, body) = self.sign_in(sam, password).await;
        if status == 200 { 0 } else { body["error_codes"][0].as_u64().unwrap_or_else(|| panic!("{body}")) }
    }

    async fn admin_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.admin_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// A synced user in the tenant for an AD account (as the sync would write it).
    async fn cloud_user(&self, sam: &str) {
        let user = json!({"accountEnabled": true, "displayName": sam, "mailNickname": sam, "userPrincipalName": format!("{sam}@{}", self.realm),
                          "onPremisesImmutableId": format!("{sam}-anchor"), "onPremisesSyncEnabled": true, "onPremisesSamAccountName": sam});
        let response = self.http.post(format!("{}/v1.0/users", self.base)).bearer_auth(&self.sync_token).json(&user).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap());
    }

    /// An AD account with the test password and its synced cloud user.
    async fn person(&mut self, sam: &str) -> String {
        let dn = self.ad.create_user(&AdUser::with_password(sam, &self.realm, PASSWORD)).await.unwrap();
        self.cloud_user(sam).await;
        dn
    }

    fn isthmus(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_isthmus")).args(args).env("ISTHMUS_CLIENT_SECRET", &self.admin.1).output().unwrap()
    }

    fn tenant_args(&self) -> Vec<String> {
        vec![
            "--tenant-url".into(),
            self.base.clone(),
            "--tenant".into(),
            self.realm.clone(),
            "--client-id".into(),
            self.admin.0.clone(),
            "--tenant-ca".into(),
            self.ca.display().to_string(),
        ]
    }

    /// Registers and starts an agent process.
    fn start_agent(&mut self, name: &str) {
        let dir = self.folder.path().join(name);
        let mut args = vec!["pta-agent".to_string(), "register".into()];
        args.extend(self.tenant_args());
        args.extend(["--state-dir".into(), dir.display().to_string(), "--machine-name".into(), name.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = self.isthmus(&args);
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{out}{}", String::from_utf8_lossy(&output.stderr));
        let id = out.split_whitespace().nth(3).unwrap().to_string();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("agent-key.pem")).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "the agent's private key is readable by its owner only");
        let err = std::fs::File::create(dir.join("agent.err")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args([
                "--log",
                "info",
                "pta-agent",
                "run",
                "--state-dir",
                dir.to_str().unwrap(),
                "--workers",
                "4",
                "--dc-timeout-seconds",
                "2",
            ])
            .args(["--dc", "ldaps://127.0.0.1:1", "--dc", &self.dc.ldaps_url()])
            .args(["--dc-ca", self.dc.ca_pem().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        self.agents.push(AgentProcess { child, dir, id });
    }

    /// Waits until every running agent has polled.
    async fn wait_for_agents(&self, count: usize) {
        let started = Instant::now();
        loop {
            let (_, list) = self.admin_call(reqwest::Method::GET, "/isthmus/v1/passThroughAuthentication/agents", None).await;
            let active = list["value"].as_array().unwrap().iter().filter(|agent| agent["status"] == "active").count();
            if active >= count {
                return;
            }
            let logs: Vec<String> = self.agents.iter().map(AgentProcess::stderr).collect();
            assert!(started.elapsed() < Duration::from_secs(30), "{count} agents never connected: {list}\n{}", logs.join("\n"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn samba_tool(&self, args: &[&str]) {
        let sam = self.dc.dir().join("private/sam.ldb");
        let conf = self.dc.dir().join("etc/smb.conf");
        let output =
            Command::new("samba-tool").args(args).args(["-H", sam.to_str().unwrap(), "-s", conf.to_str().unwrap()]).output().unwrap();
        assert!(output.status.success(), "samba-tool {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

async fn setup(settings: tenant::passthrough::PtaSettings) -> Option<Fixture> {
    let dc = testkit::available(SambaDc::start_default())?;
    let python = testkit::available(testkit::python_clients())?;
    let address = testkit::available(testkit::LoopbackAddr::reserve())?;
    let folder = tempfile::tempdir().unwrap();
    let on443 = std::net::SocketAddr::from((address.ip(), 443));
    let mut config = tenant::TenantConfig::new(folder.path().join("tenant"), vec!["127.0.0.1:0".parse().unwrap(), on443]);
    config.hosts = vec![address.ip().to_string()];
    config.password_iterations = 1_000;
    config.lockout_threshold = 100;
    config.pta = settings;
    let (tenant, bootstrap) = tenant::Tenant::open(config).await.unwrap();
    let admin = bootstrap.unwrap();
    let sync = tenant.register_app("Isthmus sync", &[tenant::SYNC_ROLE]).await.unwrap();
    let public = tenant.register_public_app("a public client").await.unwrap();
    let realm = dc.config().realm.to_lowercase();
    tenant.verify_domain_by_override(&realm, "pta test").await.unwrap();
    let running = tenant.spawn().await.unwrap();
    let (ca, base, stop) = (running.ca_pem, running.base, running.stop);
    let http = testkit::https_client(&ca).unwrap();
    let token = |client_id: String, secret: String| {
        let (http, base, realm) = (http.clone(), base.clone(), realm.clone());
        async move {
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", client_id.as_str()),
                ("client_secret", secret.as_str()),
                ("scope", "https://graph.microsoft.com/.default"),
            ];
            let body: Value =
                http.post(format!("{base}/{realm}/oauth2/v2.0/token")).form(&form).send().await.unwrap().json().await.unwrap();
            body["access_token"].as_str().unwrap().to_string()
        }
    };
    let admin_token = token(admin.client_id.clone(), admin.client_secret.to_string()).await;
    let sync_token = token(sync.client_id.clone(), sync.client_secret.to_string()).await;
    let ad = dc.admin().await.unwrap();
    let fx = Fixture {
        dc,
        python,
        address,
        folder,
        http,
        base,
        realm: realm.clone(),
        ca,
        public_client: public.clone(),
        admin: (admin.client_id.clone(), admin.client_secret.to_string()),
        sync_token,
        admin_token,
        ad,
        agents: Vec::new(),
        _stop: stop,
    };
    // The realm's synced users now sign in through the agents.
    let (status, body) =
        fx.admin_call(reqwest::Method::PATCH, &format!("/v1.0/domains/{realm}"), Some(json!({"passwordValidation": "PassThrough"}))).await;
    assert_eq!(status, 204, "{body}");
    let (_, domain) = fx.admin_call(reqwest::Method::GET, &format!("/v1.0/domains/{realm}"), None).await;
    assert_eq!(domain["passwordValidation"], "PassThrough");
    Some(fx)
}

/// A client of the agent endpoints holding its own registered certificate: a fourth "agent"
/// the test drives by hand.
struct HandAgent {
    http: reqwest::Client,
    key: pta::AgentKey,
    id: String,
}

async fn hand_agent(fx: &Fixture) -> HandAgent {
    let tls_key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&tls_key).unwrap().pem().unwrap();
    let key = pta::AgentKey::from_bytes([42; 32]);
    let registration = json!({"csr": csr, "encryptionKey": pta::key_to_text(&key.public()), "machineName": "by-hand", "version": "test"});
    let (status, registered) =
        fx.admin_call(reqwest::Method::POST, "/isthmus/v1/passThroughAuthentication/agents", Some(registration)).await;
    assert_eq!(status, 201, "{registered}");
    let certificate = registered["certificate"].as_str().unwrap().as_bytes();
    let config = testkit::tls::client_config_with_certificate(&fx.ca, certificate, tls_key.serialize_pem().as_bytes()).unwrap();
    let http = reqwest::Client::builder().use_preconfigured_tls(config).build().unwrap();
    HandAgent { http, key, id: registered["agentId"].as_str().unwrap().to_string() }
}

impl HandAgent {
    async fn post(&self, fx: &Fixture, path: &str, body: Option<String>) -> (u16, String) {
        let mut request = self.http.post(format!("{}/isthmus/v1/passThroughAuthentication/agent/{path}", fx.base));
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

fn fast() -> tenant::passthrough::PtaSettings {
    tenant::passthrough::PtaSettings {
        timeout: Duration::from_secs(10),
        lease: Duration::from_secs(2),
        poll_wait: Duration::from_secs(2),
        alive: Duration::from_secs(4),
        certificate_lifetime: Duration::from_secs(3600),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_passwords_and_account_states_through_three_agents() {
    // Certificates live 18 s here: the agents renew theirs after 15 s, while the test runs.
    let Some(mut fx) = setup(tenant::passthrough::PtaSettings { certificate_lifetime: Duration::from_secs(18), ..fast() }).await else {
        return;
    };
    let started = Instant::now();
    for name in ["agent-1", "agent-2", "agent-3"] {
        fx.start_agent(name);
    }
    fx.wait_for_agents(3).await;
    let ann = fx.person("ann").await;

    // The AD password signs in (the first DC listed is down: the agents fail over).
    let (status, tokens) = fx.sign_in("ann", PASSWORD).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(fx.code("ann", "Wrong!Pass.1").await, 50126, "a wrong password");
    assert_eq!(fx.code("ann", "").await, 50126, "an empty password is never an anonymous bind");
    let base443 = format!("https://{}", fx.address.ip());
    let line =
        testkit::msal_ropc(&fx.python, &base443, &fx.realm, &fx.public_client, &fx.ca, &format!("ann@{}", fx.realm), PASSWORD).unwrap();
    let answer: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(answer["user"], format!("ann@{}", fx.realm), "msal ROPC through pass-through: {answer}");

    // Each AD account state, at the very next sign-in.
    fx.samba_tool(&[
        "domain",
        "passwordsettings",
        "set",
        "--account-lockout-threshold=3",
        "--reset-account-lockout-after=30",
        "--account-lockout-duration=30",
    ]);
    let states = ["dis", "lock", "must", "pwexp", "acctexp", "hours", "ws"];
    let mut dns = std::collections::HashMap::new();
    for sam in states {
        dns.insert(sam, fx.person(sam).await);
        assert_eq!(fx.code(sam, PASSWORD).await, 0, "{sam} signs in before its state changes");
    }
    fx.ad.conn().replace(&dns["dis"], "userAccountControl", &["514"]).await.unwrap();
    let mut direct = testkit::ldap::Connection::connect(&fx.dc.ldaps_url(), Some(fx.dc.ca_pem()), false).await.unwrap();
    for _ in 0..3 {
        assert!(direct.bind(&format!("lock@{}", fx.realm), "Wrong!Pass.9").await.is_err());
    }
    fx.ad.conn().replace(&dns["must"], "pwdLastSet", &["0"]).await.unwrap();
    let ldif = fx.folder.path().join("expired.ldif");
    std::fs::write(&ldif, format!("dn: {}\nchangetype: modify\nreplace: pwdLastSet\npwdLastSet: 130000000000000000\n", dns["pwexp"]))
        .unwrap();
    let output = Command::new("ldbmodify")
        .args(["-H", fx.dc.dir().join("private/sam.ldb").to_str().unwrap(), "--controls=local_oid:1.3.6.1.4.1.7165.4.3.12:0"])
        .arg(&ldif)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    fx.ad.conn().replace(&dns["acctexp"], "accountExpires", &["130000000000000000"]).await.unwrap();
    fx.ad.conn().modify(&dns["hours"], vec![ldap3::Mod::Replace(b"logonHours".to_vec(), [vec![0u8; 21]].into())]).await.unwrap();
    fx.ad.conn().replace(&dns["ws"], "userWorkstations", &["NOWHERE"]).await.unwrap();
    let expected =
        [("dis", 50057), ("lock", 50053), ("must", 50055), ("pwexp", 50144), ("acctexp", 80016), ("hours", 80012), ("ws", 80017)];
    for (sam, code) in expected {
        assert_eq!(fx.code(sam, PASSWORD).await, code, "{sam}");
    }
    // Disabling in AD takes effect on the very next sign-in; enabling again restores it.
    fx.ad.conn().replace(&ann, "userAccountControl", &["514"]).await.unwrap();
    assert_eq!(fx.code("ann", PASSWORD).await, 50057, "disabled on-premises a moment ago");
    fx.ad.conn().replace(&ann, "userAccountControl", &["512"]).await.unwrap();
    assert_eq!(fx.code("ann", PASSWORD).await, 0);

    // Bad input on the agent endpoints: no client certificate, malformed, unknown, replayed.
    let (status, _) = fx
        .http
        .post(format!("{}/isthmus/v1/passThroughAuthentication/agent/poll", fx.base))
        .send()
        .await
        .map(|response| (response.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 401, "no client certificate");
    let hand = hand_agent(&fx).await;
    for body in ["{", "[]", r#"{"requestId":"x","outcome":"maybe"}"#, r#"{"requestId":"x","outcome":"valid","password":"p"}"#] {
        let (status, text) = hand.post(&fx, "answer", Some(body.into())).await;
        assert_eq!(status, 400, "{body}: {text}");
    }
    let (status, text) = hand.post(&fx, "answer", Some(r#"{"requestId":"not-a-request","outcome":"valid"}"#.into())).await;
    assert_eq!(status, 409, "an answer to no request: {text}");
    // A client certificate from another CA does not get past TLS.
    let stranger = {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["stranger".to_string()]).unwrap().self_signed(&key).unwrap();
        let config = testkit::tls::client_config_with_certificate(&fx.ca, cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        reqwest::Client::builder().use_preconfigured_tls(config).build().unwrap()
    };
    let refused = stranger.post(format!("{}/isthmus/v1/passThroughAuthentication/agent/poll", fx.base)).send().await;
    assert!(refused.is_err(), "a certificate of another CA is refused in the handshake: {refused:?}");
    // Registrations: a tampered request, an unusable key, a caller who is not an administrator.
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
    let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
    lines[2] = lines[2].chars().rev().collect();
    let good_key = pta::key_to_text(&pta::AgentKey::from_bytes([5; 32]).public());
    for (csr, key, why) in [(lines.join("\n"), good_key.clone(), "PKCS#10"), (csr.clone(), pta::key_to_text(&[0; 32]), "X25519")] {
        let body = json!({"csr": csr, "encryptionKey": key, "machineName": "m", "version": "v"});
        let (status, answer) = fx.admin_call(reqwest::Method::POST, "/isthmus/v1/passThroughAuthentication/agents", Some(body)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.to_string().contains(why), "{answer}");
    }
    let body = json!({"csr": csr, "encryptionKey": good_key, "machineName": "m", "version": "v"});
    let response = fx
        .http
        .post(format!("{}/isthmus/v1/passThroughAuthentication/agents", fx.base))
        .bearer_auth(&fx.sync_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403, "the sync app may not register agents");
    // The hand agent takes real work: only its own ciphertext, which opens with its key only
    // and not once altered. It answers "could not decrypt" (taken), then the same again
    // (a replay, refused), and another agent answers the sign-in instead.
    let done = std::sync::atomic::AtomicBool::new(false);
    let hand_side = async {
        let work = loop {
            let (status, body) = hand.post(&fx, "poll", None).await;
            if status == 200 {
                break serde_json::from_str::<pta::Work>(&body).unwrap();
            }
        };
        let answer = json!({"requestId": work.request_id, "outcome": "decryptFailed"}).to_string();
        let first = hand.post(&fx, "answer", Some(answer.clone())).await;
        let replay = hand.post(&fx, "answer", Some(answer)).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (work, first, replay)
    };
    let sign_in_side = async {
        // Sign-ins until one has been handed to the hand agent (agents take work at random).
        let started = Instant::now();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            assert_eq!(fx.code("ann", PASSWORD).await, 0, "a sign-in the hand agent failed is answered by another agent");
            assert!(started.elapsed() < Duration::from_secs(60), "the hand agent never got work");
        }
    };
    let ((work, first, replay), ()) = tokio::join!(hand_side, sign_in_side);
    assert_eq!(first.0, 204, "{first:?}");
    assert_eq!(replay.0, 409, "a replayed answer: {replay:?}");
    // Refused as a replay, or (when another agent has answered the sign-in meanwhile) as an
    // answer to a request that no longer waits; the tenant suite checks the replay case exactly.
    assert!(replay.1.contains("replay") || replay.1.contains("no sign-in request"), "{replay:?}");
    let sealed = work.sealed().unwrap();
    let context = work.context(&hand.id);
    assert_eq!(hand.key.open(&context, &sealed).unwrap().as_slice(), PASSWORD.as_bytes(), "sealed to this agent's key");
    let mut tampered = sealed.clone();
    tampered[40] ^= 0x01;
    assert_eq!(hand.key.open(&context, &tampered).err(), Some(pta::SealError::Rejected), "a tampered ciphertext does not open");
    assert!(pta::AgentKey::from_bytes([43; 32]).open(&context, &sealed).is_err(), "nor with another key");

    // Revoked: the hand agent and one process are refused at once; the process stops, saying why.
    let (status, _) =
        fx.admin_call(reqwest::Method::DELETE, &format!("/isthmus/v1/passThroughAuthentication/agents/{}", hand.id), None).await;
    assert_eq!(status, 204);
    assert_eq!(hand.post(&fx, "poll", None).await.0, 403, "a revoked agent");
    let revoked = fx.agents[2].id.clone();
    let mut args = vec!["pta".to_string(), "revoke".into()];
    args.extend(fx.tenant_args());
    args.push(revoked.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = fx.isthmus(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let waited = Instant::now();
    loop {
        if let Some(status) = fx.agents[2].child.try_wait().unwrap() {
            assert!(!status.success());
            assert!(fx.agents[2].stderr().contains("the tenant refuses this agent"), "{}", fx.agents[2].stderr());
            break;
        }
        assert!(waited.elapsed() < Duration::from_secs(20), "the revoked agent kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Past the first certificates' lifetime the remaining agents still answer: they renewed.
    let lifetime_end = Duration::from_secs(20);
    if started.elapsed() < lifetime_end {
        tokio::time::sleep(lifetime_end - started.elapsed()).await;
    }
    assert_eq!(fx.code("ann", PASSWORD).await, 0, "after the first certificates expired");
    for agent in &fx.agents[..2] {
        assert!(agent.stderr().contains("certificate renewed"), "{}", agent.stderr());
        assert!(agent.dir.join("encryption.previous.key").exists());
    }
    let mut args = vec!["pta".to_string(), "list".into()];
    args.extend(fx.tenant_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = fx.isthmus(&args);
    let listing = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && listing.contains("revoked") && listing.contains("agent-1") && listing.contains("active"),
        "{listing}"
    );
    for agent in &fx.agents {
        assert!(!agent.stderr().contains(PASSWORD), "never a password in an agent's log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_survive_failing_agents_and_fall_back_to_synced_hashes() {
    let Some(mut fx) = setup(fast()).await else { return };
    for name in ["agent-1", "agent-2", "agent-3"] {
        fx.start_agent(name);
    }
    fx.wait_for_agents(3).await;
    fx.person("bea").await;
    assert_eq!(fx.code("bea", PASSWORD).await, 0);

    // Two agents hang (stopped mid-poll: the tenant may hand them sign-ins they never answer),
    // then die. Every sign-in still succeeds: a request not answered within its lease goes to
    // another agent.
    fx.agents[0].signal("-STOP");
    fx.agents[1].signal("-STOP");
    for attempt in 0..6 {
        assert_eq!(fx.code("bea", PASSWORD).await, 0, "attempt {attempt} with two agents hung");
    }
    fx.agents[0].signal("-KILL");
    fx.agents[1].signal("-KILL");
    for attempt in 0..4 {
        assert_eq!(fx.code("bea", PASSWORD).await, 0, "attempt {attempt} with two agents dead");
    }
    let (_, list) = fx.admin_call(reqwest::Method::GET, "/isthmus/v1/passThroughAuthentication/agents", None).await;
    let served: u64 = list["value"].as_array().unwrap().iter().map(|agent| agent["requestsServed"].as_u64().unwrap()).sum();
    assert!(served >= 11, "health counts every answer: {list}");

    // All three gone: a clear, retryable error (once the tenant has noticed, at once).
    fx.agents[2].signal("-KILL");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, body) = fx.sign_in("bea", PASSWORD).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("temporarily_unavailable")), "{body}");
    assert_eq!(body["error_codes"][0], 80001, "{body}");

    // The automatic fallback (off by default) signs in with the synced hash once agents have
    // been unreachable long enough; a wrong password is still refused.
    let credential = phs::SyncedCredential::derive(&phs::NtHash::of_password(PASSWORD), [7; phs::SALT_LEN], phs::ITERATIONS);
    let body = json!({"value": [{"onPremisesImmutableId": "bea-anchor", "credential": credential.to_wire()}]});
    let response =
        fx.http.post(format!("{}/isthmus/v1/passwordHashSync", fx.base)).bearer_auth(&fx.sync_token).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    assert_eq!(fx.code("bea", PASSWORD).await, 80001, "no fallback unless it is switched on");
    let mut args = vec!["pta".to_string(), "fallback".into()];
    args.extend(fx.tenant_args());
    args.push("1".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = fx.isthmus(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(fx.code("bea", PASSWORD).await, 0, "the synced hash signs in");
    assert_eq!(fx.code("bea", "Wrong!Pass.1").await, 50126);
    let response = fx
        .http
        .get(format!("{}/v1.0/auditLogs/signIns", fx.base))
        .bearer_auth(&fx.admin_token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(response.to_string().contains("fallback to the synced hash"), "the audit says how: {response}");

    // The manual fallback: the domain back on password hash sync.
    let (status, _) = fx
        .admin_call(reqwest::Method::PATCH, &format!("/v1.0/domains/{}", fx.realm), Some(json!({"passwordValidation": "PasswordHashSync"})))
        .await;
    assert_eq!(status, 204);
    assert_eq!(fx.code("bea", PASSWORD).await, 0);
}
