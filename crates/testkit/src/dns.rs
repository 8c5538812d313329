//! A real DNS server per test: `dnsmasq` on 127.0.0.1 and a free UDP port, serving only the
//! TXT records the test gives (no upstream, no hosts file), stopped on drop.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::ServerProcess;
use crate::{Error, Result, io_err};

/// A running dnsmasq.
#[derive(Debug)]
pub struct Dnsmasq {
    process: Option<ServerProcess>,
    dir: TempDir,
    addr: SocketAddr,
}

impl Dnsmasq {
    /// Serves `txt` records (`(name, text)`).
    pub fn start(txt: &[(&str, &str)]) -> Result<Self> {
        let dir =
            tempfile::Builder::new().prefix("isthmus-dns-").tempdir().map_err(io_err("create dnsmasq folder", std::env::temp_dir()))?;
        let ip = Ipv4Addr::LOCALHOST;
        let mut last = None;
        for _ in 0..3 {
            let port = {
                let probe = UdpSocket::bind((ip, 0)).map_err(|err| Error::NoAddress(format!("bind udp {ip}:0: {err}")))?;
                probe.local_addr().map_err(|err| Error::NoAddress(err.to_string()))?.port()
            };
            let addr = SocketAddr::from((ip, port));
            match spawn(&dir, addr, txt) {
                Ok(process) => return Ok(Dnsmasq { process: Some(process), dir, addr }),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| Error::NoAddress("dnsmasq port".into())))
    }

    /// Serves other records from now on, at the same address (a restart: dnsmasq reads TXT
    /// records only when it starts).
    pub fn replace_records(&mut self, txt: &[(&str, &str)]) -> Result<()> {
        self.process = None;
        self.process = Some(spawn(&self.dir, self.addr, txt)?);
        Ok(())
    }

    /// Where it listens (UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn spawn(dir: &TempDir, addr: SocketAddr, txt: &[(&str, &str)]) -> Result<ServerProcess> {
    let program =
        if std::path::Path::new("/usr/sbin/dnsmasq").exists() { PathBuf::from("/usr/sbin/dnsmasq") } else { PathBuf::from("dnsmasq") };
    let mut command = Command::new(program);
    command.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--log-facility=-",
    ]);
    command.arg(format!("--listen-address={}", addr.ip())).arg(format!("--port={}", addr.port())).arg("--user=root");
    command.arg(format!("--pid-file={}", dir.path().join("dnsmasq.pid").display()));
    for (name, text) in txt {
        command.arg(format!("--txt-record={name},{text}"));
    }
    let mut process = ServerProcess::spawn("dnsmasq", command, &dir.path().join("dnsmasq.out"))?;
    process.wait_until(Duration::from_secs(10), || answers_dns(addr))?;
    Ok(process)
}

/// True when a DNS server answers a query for `.` on `addr`.
fn answers_dns(addr: SocketAddr) -> bool {
    let Ok(socket) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else { return false };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    // ID 1, RD, one question: root, type SOA, class IN.
    let query = [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1];
    let mut answer = [0u8; 512];
    socket.send_to(&query, addr).is_ok() && socket.recv_from(&mut answer).is_ok()
}
