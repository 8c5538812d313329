//! Real servers for tests: a Samba AD domain controller, OpenLDAP `slapd`, and PostgreSQL.
//!
//! Each server runs on a loopback address (`127.0.0.x`), in a temporary folder of its own,
//! as a child process that is stopped by PID when its handle is dropped (also while a test panics).
//! Seeding helpers add OUs, users, groups and contacts over LDAP/LDAPS.
//! [`directory`] generates deterministic synthetic directories for benchmarks.
//!
//! What this crate does not do: it knows nothing of the sync engine, stores or connectors.
//! It is a dev-dependency of the crates under test and of `xtask`, never a runtime dependency.
//!
//! Availability policy ([`available`]): when a server cannot start, a test fails under `CI=true`
//! with the server's own error output; elsewhere it is skipped with the reason printed.

pub mod directory;
pub mod dns;
pub mod ldap;
mod net;
pub mod postgres;
mod process;
pub mod samba;
pub mod slapd;
pub mod tls;

use std::path::{Path, PathBuf};

pub use net::LoopbackAddr;

/// Why a test server could not be started or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A program the server needs is not installed.
    #[error("`{program}` is not installed ({hint})")]
    MissingProgram {
        /// The program looked for.
        program: String,
        /// What to install.
        hint: &'static str,
    },
    /// A setup command exited with an error; `output` is what it printed.
    #[error("`{command}` failed with {status}:\n{output}")]
    CommandFailed {
        /// The command line that ran.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr.
        output: String,
    },
    /// The server process started but did not answer in time, or died; `log` is its output.
    #[error("{server} did not become ready within {seconds} s:\n{log}")]
    NotReady {
        /// Which server.
        server: &'static str,
        /// How long we waited.
        seconds: u64,
        /// The server's own log output.
        log: String,
    },
    /// No free loopback address or port could be found.
    #[error("no free loopback address: {0}")]
    NoAddress(String),
    /// A client tool the test drives is not installed.
    #[error("missing test client: {0}")]
    MissingTool(String),
    /// A file-system operation failed.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An LDAP operation failed.
    #[error("LDAP {operation} failed: {message}")]
    Ldap {
        /// The operation, with the DN it concerned.
        operation: String,
        /// The server's answer.
        message: String,
    },
    /// Certificate generation failed.
    #[error("test certificate: {0}")]
    Certificate(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// True when running under CI (`CI=true`), where a server that cannot start is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Applies the availability policy to a server start.
///
/// Returns the server when it started. When it did not: panics under `CI=true`, with the
/// server's own error output; otherwise prints why and returns `None` so the test can return early.
///
/// ```no_run
/// let Some(dc) = testkit::available(testkit::samba::SambaDc::start_default()) else { return };
/// ```
#[track_caller]
pub fn available<T>(started: Result<T>) -> Option<T> {
    available_when(in_ci(), started)
}

#[track_caller]
fn available_when<T>(ci: bool, started: Result<T>) -> Option<T> {
    match started {
        Ok(server) => Some(server),
        Err(err) if ci => panic!("test server could not start (CI=true, so this fails): {err}"),
        Err(err) => {
            eprintln!("SKIPPED: test server could not start: {err}");
            None
        }
    }
}

pub(crate) fn io_err(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}

/// The folder where templates shared by all tests of a run are kept.
///
/// `ISTHMUS_TESTKIT_DIR` overrides it; the default is `$TMPDIR/isthmus-testkit`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("ISTHMUS_TESTKIT_DIR").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("isthmus-testkit"))
}

/// Prometheus's `promtool` (Debian's `prometheus` package). An error (the server-missing kind,
/// for [`available`]) when it is not installed.
pub fn promtool() -> Result<PathBuf> {
    let candidate = PathBuf::from("/usr/bin/promtool");
    match std::process::Command::new(&candidate).arg("--version").output() {
        Ok(output) if output.status.success() => Ok(candidate),
        _ => Err(Error::MissingTool("no /usr/bin/promtool (Debian's prometheus package; scripts/test-all installs it)".into())),
    }
}

/// Runs `promtool check metrics` on an exposition body; `Err` with promtool's complaint.
pub fn promtool_check_metrics(promtool: &std::path::Path, body: &str) -> std::result::Result<(), String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|err| err.to_string())?;
    child.stdin.take().ok_or("no stdin")?.write_all(body.as_bytes()).map_err(|err| err.to_string())?;
    let output = child.wait_with_output().map_err(|err| err.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    }
}

/// The Python interpreter that has Microsoft's client libraries (`msal`, `azure-identity`,
/// `msgraph-sdk`): `ISTHMUS_PYTHON`, else the virtualenv `scripts/test-all` makes in
/// `target/pyclients`. An error (the server-missing kind, for [`available`]) when neither has them.
pub fn python_clients() -> Result<PathBuf> {
    let candidate = std::env::var_os("ISTHMUS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyclients/bin/python"));
    let probe = std::process::Command::new(&candidate).args(["-c", "import msal, azure.identity, msgraph"]).output();
    match probe {
        Ok(output) if output.status.success() => Ok(candidate),
        Ok(output) => Err(Error::MissingTool(format!(
            "{} lacks msal/azure-identity/msgraph-sdk (run scripts/test-all, or set ISTHMUS_PYTHON): {}",
            candidate.display(),
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or_default()
        ))),
        Err(err) => Err(Error::MissingTool(format!(
            "no Python with Microsoft's client libraries at {} ({err}); run scripts/test-all or set ISTHMUS_PYTHON",
            candidate.display()
        ))),
    }
}

/// An HTTPS client that trusts only the CA in `ca_pem` (a self-hosted tenant's), with no proxy
/// settings from the environment.
pub fn https_client(ca_pem: &Path) -> Result<reqwest::Client> {
    let pem = std::fs::read(ca_pem).map_err(|source| Error::Io { what: "read the CA certificate", path: ca_pem.to_path_buf(), source })?;
    let certificate = reqwest::Certificate::from_pem(&pem).map_err(|err| Error::Certificate(format!("{}: {err}", ca_pem.display())))?;
    reqwest::Client::builder()
        .add_root_certificate(certificate)
        .tls_built_in_root_certs(false)
        .no_proxy()
        .use_rustls_tls()
        .build()
        .map_err(|err| Error::Certificate(format!("an HTTPS client trusting {}: {err}", ca_pem.display())))
}

/// An app's access token from the tenant's token endpoint (`token_url`) by the client
/// credentials grant; an error saying what the tenant answered otherwise.
pub async fn client_credentials_token(http: &reqwest::Client, token_url: &str, client_id: &str, secret: &str) -> Result<String> {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", secret),
        ("scope", "https://graph.microsoft.com/.default"),
    ];
    let answer = http.post(token_url).form(&form).send().await.map_err(|err| Error::MissingTool(format!("{token_url}: {err}")))?;
    let body: serde_json::Value = answer.json().await.map_err(|err| Error::MissingTool(format!("{token_url}: {err}")))?;
    body["access_token"].as_str().map(str::to_string).ok_or_else(|| Error::MissingTool(format!("{token_url} gave no token: {body}")))
}

/// The Python interpreter of [`python_clients`] when it also has the OpenID Connect relying-party
/// libraries `authlib` and `oic` (pyoidc) that `scripts/test-all` installs.
pub fn oidc_python() -> Result<PathBuf> {
    let python = python_clients()?;
    let probe = std::process::Command::new(&python).args(["-c", "import authlib, oic"]).output();
    match probe {
        Ok(output) if output.status.success() => Ok(python),
        _ => Err(Error::MissingTool(format!("{} lacks authlib/oic (run scripts/test-all)", python.display()))),
    }
}

/// The folder whose `node_modules` has the Node `openid-client` package (`ISTHMUS_JS_CLIENTS`,
/// else `target/jsclients`, which `scripts/test-all` fills with npm), checked by importing it.
pub fn js_clients() -> Result<PathBuf> {
    let folder = std::env::var_os("ISTHMUS_JS_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/jsclients"));
    let probe = std::process::Command::new("node")
        .current_dir(&folder)
        .args(["--input-type=module", "-e", "await import('openid-client')"])
        .output();
    match probe {
        Ok(output) if output.status.success() => Ok(folder),
        Ok(output) => Err(Error::MissingTool(format!(
            "no openid-client under {} (run scripts/test-all, or set ISTHMUS_JS_CLIENTS): {}",
            folder.display(),
            String::from_utf8_lossy(&output.stderr).lines().next().unwrap_or_default()
        ))),
        Err(err) => Err(Error::MissingTool(format!("node is not installed ({err}); run scripts/test-all"))),
    }
}

/// The resource-owner password grant through Microsoft's Python `msal` (a public client of
/// `authority_base/tenant`, trusting `ca`, with no proxy settings from the environment): the
/// JSON line the script prints, `{"user": <preferred_username or null>, "error": <error or null>}`.
/// MSAL asks for user-realm discovery on port 443 whatever the authority's port, so
/// `authority_base` is the tenant's `https://<address>` on 443.
pub fn msal_ropc(
    python: &Path,
    authority_base: &str,
    tenant: &str,
    client_id: &str,
    ca: &Path,
    user: &str,
    password: &str,
) -> Result<String> {
    const SCRIPT: &str = r#"
import json, sys, msal, requests
base443, domain, client_id, ca, user, password = sys.argv[1:7]
session = requests.Session()
session.verify = ca
session.trust_env = False
app = msal.PublicClientApplication(client_id, authority=f"{base443}/{domain}", instance_discovery=False, http_client=session)
result = app.acquire_token_by_username_password(user, password, scopes=["User.Read"])
print(json.dumps({"user": result.get("id_token_claims", {}).get("preferred_username"), "error": result.get("error")}))
"#;
    let ca = ca.display().to_string();
    let args = ["-c", SCRIPT, authority_base, tenant, client_id, &ca, user, password];
    let output =
        std::process::Command::new(python).args(args).output().map_err(|err| Error::MissingTool(format!("{}: {err}", python.display())))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(Error::CommandFailed {
            command: format!("{} -c <msal ROPC> … {user}", python.display()),
            status: output.status.to_string(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
        });
    }
    Ok(stdout.lines().last().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Result<()> {
        Err(Error::NotReady { server: "synthetic server of a unit test", seconds: 60, log: "ldb: unable to open sam.ldb".into() })
    }

    #[test]
    fn in_ci_a_server_that_cannot_start_fails_the_test_with_its_log() {
        // The panic is the expected outcome; keep its message and backtrace out of the test log.
        std::panic::set_hook(Box::new(|_| {}));
        let outcome = std::panic::catch_unwind(|| available_when(true, failed()));
        drop(std::panic::take_hook());
        let message = outcome.expect_err("must panic under CI").downcast::<String>().map(|text| *text).unwrap_or_default();
        assert!(message.contains("CI=true, so this fails"), "{message}");
        assert!(message.contains("ldb: unable to open sam.ldb"), "the server's own output is in the failure: {message}");
    }

    #[test]
    fn outside_ci_it_skips() {
        assert_eq!(available_when(false, failed()), None);
        assert_eq!(available_when(false, Ok(7)), Some(7));
    }
}
