//! One client connection's state: what it negotiated (protocol, auth, name) and what
//! CLIENT LIST shows of it. Must not do I/O.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;

/// What others may see of a connection (CLIENT LIST, INFO clients).
#[derive(Debug)]
pub struct ClientInfo {
    /// Unique, increasing id (CLIENT ID).
    pub id: u64,
    /// Peer address.
    pub addr: SocketAddr,
    /// Local address.
    pub laddr: SocketAddr,
    /// Connection time.
    pub created: Instant,
    /// Name set by CLIENT SETNAME or HELLO SETNAME.
    pub name: Mutex<Bytes>,
    /// Library name and version from CLIENT SETINFO.
    pub lib: Mutex<(String, String)>,
    /// Last command: its index in the command table plus one (0 before the first).
    pub last_cmd: AtomicUsize,
    /// Milliseconds since `created` of the last command.
    pub last_active_ms: AtomicU64,
    /// Protocol version in use.
    pub resp: AtomicU64,
}

impl ClientInfo {
    /// A fresh connection's info.
    pub fn new(id: u64, addr: SocketAddr, laddr: SocketAddr) -> ClientInfo {
        ClientInfo {
            id,
            addr,
            laddr,
            created: Instant::now(),
            name: Mutex::new(Bytes::new()),
            lib: Mutex::new((String::new(), String::new())),
            last_cmd: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            resp: AtomicU64::new(2),
        }
    }

    /// The client's name (empty when unset).
    pub fn name(&self) -> Bytes {
        self.name.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Sets the client's name.
    pub fn set_name(&self, name: Bytes) {
        if let Ok(mut n) = self.name.lock() {
            *n = name;
        }
    }

    /// The line CLIENT LIST and CLIENT INFO print, in Redis's field order.
    pub fn line(&self) -> String {
        let age = self.created.elapsed().as_secs();
        let idle_ms =
            (self.created.elapsed().as_millis() as u64).saturating_sub(self.last_active_ms.load(Ordering::Relaxed));
        let (lib_name, lib_ver) = self.lib.lock().map(|l| l.clone()).unwrap_or_default();
        let cmd = match self.last_cmd.load(Ordering::Relaxed) {
            0 => "NULL",
            i => crate::resp::cmd::COMMANDS.get(i - 1).map_or("NULL", |s| s.name),
        };
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 watch=0 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            String::from_utf8_lossy(&self.name()),
            age,
            idle_ms / 1000,
            cmd,
            self.resp.load(Ordering::Relaxed),
            lib_name,
            lib_ver
        )
    }
}

/// The connection-local part of a client's state.
#[derive(Debug)]
pub struct Client {
    /// Shared, listable part.
    pub info: std::sync::Arc<ClientInfo>,
    /// Protocol version (2 or 3).
    pub proto: u8,
    /// Whether AUTH succeeded (or no password is required).
    pub authenticated: bool,
    /// Set by QUIT and SHUTDOWN: close after this reply.
    pub closing: bool,
    /// Set by SHUTDOWN: close without sending this reply (as Redis does).
    pub silent: bool,
}

impl Client {
    /// Records that command `index` (of the command table) is the last one run.
    pub fn touch(&self, index: usize) {
        self.info.last_cmd.store(index + 1, Ordering::Relaxed);
    }

    /// Records that requests arrived at `at` (once per batch read from the socket).
    pub fn active_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.info.created).as_millis() as u64;
        self.info.last_active_ms.store(ms, Ordering::Relaxed);
    }
}
