//! Loopback addresses and ports for test servers.
//!
//! Samba listens on fixed ports (389, 636, 88, 445 …), so each domain controller gets a
//! loopback address of its own. Addresses are handed out across processes through lock files
//! under [`crate::shared_dir`], so parallel test binaries never pick the same one.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

use crate::{Error, Result, io_err};

/// A loopback address reserved for one server; released (and removed from `lo` if we added it) on drop.
#[derive(Debug)]
pub struct LoopbackAddr {
    ip: Ipv4Addr,
    _lock: File,
    added_to_lo: bool,
}

impl LoopbackAddr {
    /// Reserves a free address in 127.0.0.10–127.0.0.250 and makes sure it exists on `lo`.
    pub fn reserve() -> Result<Self> {
        let dir = crate::shared_dir().join("addresses");
        std::fs::create_dir_all(&dir).map_err(io_err("create address lock folder", &dir))?;
        for last in 10..=250u8 {
            let ip = Ipv4Addr::new(127, 0, 0, last);
            let path = dir.join(format!("{ip}.lock"));
            let lock =
                OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err("open address lock", &path))?;
            if lock.try_lock().is_err() {
                continue;
            }
            // Something outside our locks (a leftover server) may still hold the LDAP port.
            if TcpListener::bind((ip, 0)).is_err() || std::net::TcpStream::connect((ip, 389)).is_ok() {
                continue;
            }
            let added_to_lo = ensure_on_lo(ip)?;
            return Ok(LoopbackAddr { ip, _lock: lock, added_to_lo });
        }
        Err(Error::NoAddress("all of 127.0.0.10-250 are taken".into()))
    }

    /// The address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

impl Drop for LoopbackAddr {
    fn drop(&mut self) {
        if self.added_to_lo {
            let _ = Command::new("ip").args(["addr", "del", &format!("{}/32", self.ip), "dev", "lo"]).output();
        }
    }
}

/// Adds `ip/32` to `lo` unless it is there; returns whether we added it.
fn ensure_on_lo(ip: Ipv4Addr) -> Result<bool> {
    let shown = crate::process::run(Command::new("ip").args(["-4", "addr", "show", "dev", "lo"]))?;
    if shown.contains(&format!("inet {ip}/")) {
        return Ok(false);
    }
    match crate::process::run(Command::new("ip").args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])) {
        Ok(_) => Ok(true),
        // Another process added it between our look and our add.
        Err(Error::CommandFailed { output, .. }) if output.contains("File exists") => Ok(false),
        Err(err) => Err(err),
    }
}

/// A TCP port on `ip` that was free a moment ago (bind to port 0, read, release).
pub(crate) fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let listener = TcpListener::bind((ip, 0)).map_err(|err| Error::NoAddress(format!("bind {ip}:0: {err}")))?;
    listener.local_addr().map(|addr| addr.port()).map_err(|err| Error::NoAddress(err.to_string()))
}

/// True when something accepts TCP connections on `ip:port`.
pub(crate) fn answers(ip: Ipv4Addr, port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&(ip, port).into(), std::time::Duration::from_millis(200)).is_ok()
}
