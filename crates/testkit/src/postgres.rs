//! A private PostgreSQL cluster per test: `initdb` into a temporary folder, `postgres` on a free
//! port of 127.0.0.1, trust authentication for the `postgres` role on loopback only.
//!
//! PostgreSQL refuses to run as root; when the tests run as root, the cluster runs as the
//! `postgres` system user (created by the Debian package). `ISTHMUS_TEST_POSTGRES_URL` points the
//! tests at an already running server instead.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::net::{answers, free_port};
use crate::process::{ServerProcess, run};
use crate::{Error, Result, io_err};

/// A PostgreSQL server for one test.
#[derive(Debug)]
pub struct Postgres {
    url: String,
    // None when the server is external.
    private: Option<PrivateCluster>,
}

#[derive(Debug)]
struct PrivateCluster {
    // Drop order: stop the server, then delete its folder.
    process: ServerProcess,
    _dir: TempDir,
    ready_after: Duration,
}

impl Postgres {
    /// A private cluster, or the server named by `ISTHMUS_TEST_POSTGRES_URL`.
    pub fn start() -> Result<Self> {
        if let Ok(url) = std::env::var("ISTHMUS_TEST_POSTGRES_URL") {
            return Ok(Postgres { url, private: None });
        }
        let bin = bin_dir()?;
        let dir =
            tempfile::Builder::new().prefix("isthmus-pg-").tempdir().map_err(io_err("create PostgreSQL folder", std::env::temp_dir()))?;
        let owner = if running_as_root() { Some(system_user("postgres")?) } else { None };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(io_err("chown", dir.path()))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync", "-D"]).arg(&data);
        as_user(&mut initdb, owner);
        run(&mut initdb)?;

        let ip = Ipv4Addr::LOCALHOST;
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port(ip)?;
            let mut command = Command::new(bin.join("postgres"));
            command.arg("-D").arg(&data).arg("-k").arg(dir.path()).args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-F",
                "-c",
                "max_connections=200",
            ]);
            as_user(&mut command, owner);
            // SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to leave.
            let mut process = ServerProcess::spawn("postgres", command, &dir.path().join("postgres.out"))?.with_stop_signal("INT");
            // A listening port is not enough: during recovery the server refuses sessions
            // ("the database system is starting up"); pg_isready asks the server itself.
            let ready = || {
                answers(ip, port)
                    && Command::new(bin.join("pg_isready"))
                        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                        .status()
                        .is_ok_and(|status| status.success())
            };
            match process.wait_until(Duration::from_secs(30), ready) {
                Ok(ready_after) => {
                    tracing::info!(port, pid = process.pid(), ms = ready_after.as_millis() as u64, "PostgreSQL ready");
                    let url = format!("postgresql://postgres@127.0.0.1:{port}/postgres");
                    return Ok(Postgres { url, private: Some(PrivateCluster { process, _dir: dir, ready_after }) });
                }
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::NoAddress("PostgreSQL port".into())))
    }

    /// A connection URL, e.g. `postgresql://postgres@127.0.0.1:54321/postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of another database on the same server.
    pub fn database_url(&self, database: &str) -> String {
        let base = self.url.split('?').next().unwrap_or(&self.url);
        match base.rfind('/') {
            Some(slash) if slash > base.find("//").map_or(0, |at| at + 1) => format!("{}/{database}", &base[..slash]),
            _ => format!("{base}/{database}"),
        }
    }

    /// The private server's process id (`None` for an external server).
    pub fn pid(&self) -> Option<u32> {
        self.private.as_ref().map(|cluster| cluster.process.pid())
    }

    /// How long the private server took to accept connections.
    pub fn ready_after(&self) -> Option<Duration> {
        self.private.as_ref().map(|cluster| cluster.ready_after)
    }
}

fn as_user(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid).env("HOME", "/tmp");
    }
}

/// `ISTHMUS_TEST_PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin`, else `PATH`.
fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("ISTHMUS_TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()))
        .max();
    match newest {
        Some(version) => Ok(PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"))),
        None => Err(Error::MissingProgram { program: "postgres".into(), hint: "apt-get install postgresql" }),
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// The uid and gid of a system user, from `/etc/passwd`.
fn system_user(name: &str) -> Result<(u32, u32)> {
    let passwd = Path::new("/etc/passwd");
    let text = std::fs::read_to_string(passwd).map_err(io_err("read", passwd))?;
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&name))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .ok_or(Error::MissingProgram { program: format!("system user {name}"), hint: "apt-get install postgresql" })
}
