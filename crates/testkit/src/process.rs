//! Child processes of test servers: started with output to a log file, stopped by PID on drop.
//!
//! Stopping sends SIGTERM (or the server's own fast-shutdown signal), waits up to five seconds, then SIGKILL. Drop runs during unwinding,
//! so a panicking test still stops its servers. A test process killed with SIGKILL cannot run
//! drop; its servers are then left to the machine (their folders are temporary).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result, io_err};

/// A running server process, owned by a test.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    name: &'static str,
    child: Child,
    log_path: PathBuf,
    stop_signal: &'static str,
}

impl ServerProcess {
    /// Starts `command` with stdout and stderr going to `log_path`.
    pub(crate) fn spawn(name: &'static str, mut command: Command, log_path: &Path) -> Result<Self> {
        let log = File::create(log_path).map_err(io_err("create server log", log_path))?;
        let log_err = log.try_clone().map_err(io_err("clone server log", log_path))?;
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = command.spawn().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::MissingProgram {
                program: format!("{:?}", command.get_program()),
                hint: "run scripts/test-all, which installs the test servers",
            },
            _ => Error::Io { what: "start server", path: log_path.to_path_buf(), source },
        })?;
        tracing::debug!(server = name, pid = child.id(), "started");
        Ok(ServerProcess { name, child, log_path: log_path.to_path_buf(), stop_signal: "TERM" })
    }

    /// Uses `signal` (a `kill -s` name such as `INT`) instead of SIGTERM to ask the server to stop.
    pub(crate) fn with_stop_signal(mut self, signal: &'static str) -> Self {
        self.stop_signal = signal;
        self
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's output so far (the tail, if it is long).
    pub(crate) fn log(&self) -> String {
        tail_of_file(&self.log_path)
    }

    /// Errors out if the process has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                Err(Error::NotReady { server: self.name, seconds: 0, log: format!("process exited with {status}\n{}", self.log()) })
            }
            Err(source) => Err(Error::Io { what: "wait for server", path: self.log_path.clone(), source }),
        }
    }

    /// Polls `ready` until it returns true, the process dies, or `timeout` passes.
    pub(crate) fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<Duration> {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            if ready() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(Error::NotReady { server: self.name, seconds: timeout.as_secs(), log: self.log() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-s", self.stop_signal, &pid]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                tracing::debug!(server = self.name, pid, "stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        tracing::warn!(server = self.name, pid, "killed after SIGTERM timeout");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a setup command to completion; its output goes into the error when it fails.
pub(crate) fn run(command: &mut Command) -> Result<String> {
    let rendered = format!("{command:?}");
    let output = command.stdin(Stdio::null()).output().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::MissingProgram {
            program: format!("{:?}", command.get_program()),
            hint: "run scripts/test-all, which installs the test servers",
        },
        _ => Error::Io { what: "run setup command", path: PathBuf::from(format!("{:?}", command.get_program())), source },
    })?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(Error::CommandFailed { command: rendered, status: output.status.to_string(), output: tail(&text) })
    }
}

/// The last 8 KiB of a file, for error messages.
pub(crate) fn tail_of_file(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes)),
        Err(err) => format!("(could not read {}: {err})", path.display()),
    }
}

fn tail(text: &str) -> String {
    const MAX: usize = 8 * 1024;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut start = text.len() - MAX;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}
