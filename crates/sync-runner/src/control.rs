//! The local control channel of a running scheduler (`isthmus sync status|start|scheduler`): a
//! Unix socket only the service account can use (mode 0600 in a folder it owns, and every
//! connection's peer must run as the same user), one JSON request per line, one JSON answer.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::ConnectorId;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::scheduler::CycleRequest;
use crate::status::{Board, Status};

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// What the server is doing.
    Status,
    /// A cycle now (queued behind a running one).
    Start {
        /// Full rather than delta.
        full: bool,
        /// Only this connector's steps.
        connector: Option<String>,
    },
    /// Scheduled cycles on or off.
    Scheduler {
        /// On.
        enabled: bool,
    },
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    /// The status.
    Status(Box<Status>),
    /// Done.
    Ok {
        /// What was done.
        message: String,
    },
    /// Refused.
    Error {
        /// Why.
        message: String,
    },
}

/// Why the channel could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens at the socket.
    #[error("no `isthmus sync serve` answers at {path} ({why}); is it running with this configuration?")]
    NotRunning {
        /// Socket.
        path: PathBuf,
        /// The OS's reason.
        why: String,
    },
    /// Input or output failed.
    #[error("{0}")]
    Io(String),
}

/// Requests longer than this are refused (a status request is a few dozen bytes).
const MAX_REQUEST: usize = 4096;

/// Listens at `path` until the task is dropped: answers status from `board`, queues cycles on
/// `requests`, flips the scheduler. `connectors` are the ids a start may name.
pub fn listen(
    path: &Path,
    board: Arc<Board>,
    requests: mpsc::Sender<CycleRequest>,
    connectors: Vec<ConnectorId>,
) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let io = |what: &str, err: std::io::Error| ControlError::Io(format!("{what} {}: {err}", path.display()));
    if path.exists() {
        // A socket left by a killed server (the store's runner lock already proved that no
        // other server of this configuration runs).
        std::fs::remove_file(path).map_err(|err| io("remove the stale socket", err))?;
    }
    let listener = UnixListener::bind(path).map_err(|err| io("listen on", err))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|err| io("chmod", err))?;
    let owner = std::fs::metadata(path).map_err(|err| io("stat", err))?.uid();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let (board, requests, connectors) = (board.clone(), requests.clone(), connectors.clone());
            tokio::spawn(async move {
                if let Err(err) = serve(stream, owner, &board, &requests, &connectors).await {
                    tracing::debug!("control channel: {err}");
                }
            });
        }
    });
    Ok(task)
}

async fn serve(
    stream: UnixStream,
    owner: u32,
    board: &Board,
    requests: &mpsc::Sender<CycleRequest>,
    connectors: &[ConnectorId],
) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let (reader, mut writer) = stream.into_split();
    if peer.uid() != owner {
        tracing::warn!(uid = peer.uid(), "control channel: a connection from another user was refused");
        let answer = Answer::Error { message: "only the account that runs the sync service may control it".into() };
        return write(&mut writer, &answer).await;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(reader).take(MAX_REQUEST as u64);
    reader.read_line(&mut line).await?;
    let answer = match serde_json::from_str::<Request>(line.trim()) {
        Err(err) => Answer::Error { message: format!("bad request: {err}") },
        Ok(Request::Status) => Answer::Status(Box::new(board.snapshot())),
        Ok(Request::Scheduler { enabled }) => {
            board.set_scheduler_enabled(enabled);
            tracing::info!(enabled, "scheduler switched by the control channel");
            Answer::Ok { message: format!("scheduler {}", if enabled { "enabled" } else { "disabled" }) }
        }
        Ok(Request::Start { full, connector }) => match connector.map(ConnectorId) {
            Some(id) if !connectors.contains(&id) => Answer::Error { message: format!("no connector {:?} is configured", id.0) },
            connector => {
                let kind = if full { "full" } else { "delta" };
                let scope = connector.as_ref().map_or(String::new(), |id| format!(" of {}", id.0));
                let running = board.snapshot().state == "running";
                match requests.try_send(CycleRequest { initial: full, connector }) {
                    Ok(()) => Answer::Ok {
                        message: format!("{kind} cycle{scope} {}", if running { "queued behind the running cycle" } else { "started" }),
                    },
                    Err(_) => Answer::Ok { message: format!("{kind} cycle{scope} merged with the cycles already queued") },
                }
            }
        },
    };
    write(&mut writer, &answer).await
}

async fn write(writer: &mut tokio::net::unix::OwnedWriteHalf, answer: &Answer) -> std::io::Result<()> {
    let mut text = serde_json::to_string(answer).map_err(std::io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    writer.shutdown().await
}

/// Sends one request to the server listening at `path`.
pub async fn call(path: &Path, request: &Request) -> Result<Answer, ControlError> {
    let mut stream =
        UnixStream::connect(path).await.map_err(|err| ControlError::NotRunning { path: path.to_path_buf(), why: err.to_string() })?;
    let mut text = serde_json::to_string(request).map_err(|err| ControlError::Io(err.to_string()))?;
    text.push('\n');
    stream.write_all(text.as_bytes()).await.map_err(|err| ControlError::Io(err.to_string()))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await.map_err(|err| ControlError::Io(err.to_string()))?;
    serde_json::from_str(line.trim()).map_err(|err| ControlError::Io(format!("an unreadable answer from the server: {err}")))
}
