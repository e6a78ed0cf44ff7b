//! Shared helpers for dynkv's integration tests: a [`Server`] guard that runs the real
//! binary on a loopback port with its own data directory, and a raw RESP client
//! ([`Raw`]) for byte-exact protocol checks.
//!
//! Every process a test starts is owned by a `Server`: dropping the guard kills it, and
//! a failing test prints the server's log (stderr is captured into a file).

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first PING.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped server may take to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The dynkv binary built by cargo for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dynkv")
}

/// A port that was free a moment ago (the listener is dropped at once; callers retry
/// when another process takes it first).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Raises this process's open-file soft limit to its hard limit (children inherit it).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        r.rlim_cur
    }
}

/// Where the port comes from.
#[derive(Debug, Clone, Copy)]
pub enum PortMode {
    /// The guard picks a free port and passes `--port`.
    Pick,
    /// The port is set elsewhere (a config file); the guard only waits on it.
    Given(u16),
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Extra flags after `server --bind 127.0.0.1 --port P --data-dir D`.
    pub args: Vec<String>,
    /// Data directory; a fresh temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// Port selection.
    pub port: PortMode,
    /// Password, so that the readiness check and [`Server::client`] can authenticate.
    pub password: Option<String>,
}

impl Setup {
    /// Defaults plus these flags.
    pub fn args(args: &[&str]) -> Setup {
        Setup {
            args: args.iter().map(|s| s.to_string()).collect(),
            data_dir: None,
            port: PortMode::Pick,
            password: None,
        }
    }
}

/// A running dynkv process; killed on drop.
pub struct Server {
    child: Option<Child>,
    port: u16,
    setup: Setup,
    data_dir: PathBuf,
    log_path: PathBuf,
    // Owns the log (and, unless given, the data directory).
    _tmp: tempfile::TempDir,
}

impl Server {
    /// Starts a server with a fresh data directory and these extra flags.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(Setup::args(args))
    }

    /// Starts a server as `setup` says; panics (with the log) if it is not ready in time.
    pub fn start_with(setup: Setup) -> Server {
        Server::try_start_with(setup).unwrap_or_else(|msg| panic!("{msg}"))
    }

    /// Like [`Server::start_with`], but returns the failure (with the log) instead of
    /// panicking, so that a caller can retry with other ports.
    pub fn try_start_with(setup: Setup) -> Result<Server, String> {
        raise_fd_limit();
        let tmp = tempfile::Builder::new()
            .prefix("dynkv-test-")
            .tempdir()
            .expect("tempdir");
        let data_dir = setup.data_dir.clone().unwrap_or_else(|| tmp.path().join("data"));
        let log_path = tmp.path().join("dynkv.log");
        let port = match setup.port {
            PortMode::Pick => free_port(),
            PortMode::Given(p) => p,
        };
        let mut s = Server {
            child: None,
            port,
            setup,
            data_dir,
            log_path,
            _tmp: tmp,
        };
        s.try_launch()?;
        Ok(s)
    }

    /// Spawns the process and waits until it answers PING; retries a port race.
    fn launch(&mut self) {
        if let Err(msg) = self.try_launch() {
            panic!("{msg}");
        }
    }

    /// [`Server::launch`] without the panic.
    fn try_launch(&mut self) -> Result<(), String> {
        for attempt in 0..5 {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .expect("open log");
            let mut cmd = Command::new(bin());
            cmd.arg("server")
                .arg("--bind")
                .arg("127.0.0.1")
                .arg("--data-dir")
                .arg(&self.data_dir);
            if let PortMode::Pick = self.setup.port {
                cmd.arg("--port").arg(self.port.to_string());
            }
            // Test nodes serve metrics only when a test asks: parallel nodes must not all
            // try the default metrics port.
            if !self.setup.args.iter().any(|a| a == "--metrics-addr") {
                cmd.args(["--metrics-addr", "off"]);
            }
            cmd.args(&self.setup.args)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
            let child = cmd.spawn().expect("spawn dynkv");
            self.child = Some(child);
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(status) => {
                    let log = self.log();
                    let raced = log.contains("cannot listen") || log.contains("in use");
                    if raced && matches!(self.setup.port, PortMode::Pick) && attempt < 4 {
                        self.port = free_port();
                        continue;
                    }
                    if let Some(mut c) = self.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    return Err(format!(
                        "dynkv did not become ready (exit: {status:?})\n--- log ---\n{}",
                        log
                    ));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Waits until this guard's own process answers on the port: `+PONG`, then `INFO
    /// server` naming the child's pid (another test's node that took the port first must
    /// not pass for ours; ours then fails to bind, exits, and the caller retries). With a
    /// password set but unknown to the guard, `-NOAUTH` plus the child's "listening on"
    /// log line count instead. Returns the exit status if the process died or the
    /// deadline passed.
    fn wait_ready(&mut self) -> Result<(), Option<ExitStatus>> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            let Some(pid) = self.child.as_ref().map(Child::id) else {
                return Err(None);
            };
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(Some(st));
            }
            if self.answers_as(pid) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(None)
    }

    /// Whether the process listening on the port is `pid` and serves requests.
    fn answers_as(&self, pid: u32) -> bool {
        let Ok(mut raw) = Raw::try_connect(self.addr()) else {
            return false;
        };
        raw.set_timeout(Duration::from_secs(2));
        if let Some(pw) = &self.setup.password {
            if raw.send(&encode(&[b"AUTH", pw.as_bytes()])).is_err() || raw.read_line().is_err() {
                return false;
            }
        }
        if raw.send(b"*1\r\n$4\r\nPING\r\n").is_err() {
            return false;
        }
        match raw.read_line() {
            Ok(line) if line == b"+PONG" => {}
            Ok(line) if line.starts_with(b"-NOAUTH") => {
                let listening = format!("dynkv listening on {}", self.addr());
                return self.log().contains(&listening);
            }
            _ => return false,
        }
        if raw.send(&encode(&[b"INFO", b"server"])).is_err() {
            return false;
        }
        match raw.read_reply() {
            Ok(Resp::Bulk(b)) => info_field(&String::from_utf8_lossy(&b), "process_id") == Some(pid.to_string()),
            _ => false,
        }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A redis-crate connection (authenticated when the setup has a password).
    pub fn client(&self) -> redis::Connection {
        let url = match &self.setup.password {
            Some(pw) => format!("redis://:{pw}@{}/", self.addr()),
            None => format!("redis://{}/", self.addr()),
        };
        let client = redis::Client::open(url).expect("redis url");
        let con = client
            .get_connection_with_timeout(Duration::from_secs(10))
            .expect("connect with the redis crate");
        con.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        con
    }

    /// A raw connection with a 10 s timeout.
    pub fn raw(&self) -> Raw {
        let mut r = Raw::connect(self.addr());
        if let Some(pw) = &self.setup.password {
            let reply = r.cmd(&[b"AUTH", pw.as_bytes()]);
            assert_eq!(reply, Resp::Simple("OK".into()), "AUTH");
        }
        r
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.pid().expect("server not running") as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits for the process to exit (bounded); panics with the log on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("server not running");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("dynkv did not exit within {timeout:?}\n--- log ---\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap the process.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let st = self.wait_exit(EXIT_TIMEOUT);
        assert!(!st.success(), "a SIGKILLed process cannot exit 0");
    }

    /// SIGTERM, wait, and assert a clean exit (status 0).
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let st = self.wait_exit(EXIT_TIMEOUT);
        assert!(
            st.success(),
            "dynkv exited with {st:?} after SIGTERM\n--- log ---\n{}",
            self.log()
        );
    }

    /// Stops (cleanly) if running, then starts again on the same data directory.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.launch();
    }

    /// Adds flags for every later start (a replacement node's `--node-id`, ...).
    pub fn add_args(&mut self, args: &[&str]) {
        self.setup.args.extend(args.iter().map(|s| s.to_string()));
    }

    /// Starts again on the same data directory (the process must have exited).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "server still running");
        self.launch();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- dynkv log ({}) ---\n{}\n--- end of log ---",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// A decoded reply (RESP2 and RESP3).
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    /// `+...`
    Simple(String),
    /// `-...` (the whole line, code included)
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` (or RESP3 `=n` verbatim, format prefix kept)
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` or RESP3 `_`
    Nil,
    /// `*n`, RESP3 `~n` and `>n`
    Array(Vec<Resp>),
    /// RESP3 `%n`
    Map(Vec<(Resp, Resp)>),
    /// RESP3 `,`, `#`, `(`: the raw text
    Other(u8, String),
}

impl Resp {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Resp::Bulk(b) => b.clone(),
            Resp::Simple(s) => s.as_bytes().to_vec(),
            other => panic!("not a string: {other:?}"),
        }
    }

    /// The text of a bulk or simple string.
    pub fn text(&self) -> String {
        String::from_utf8(self.bytes()).expect("utf-8")
    }

    /// An array's items.
    pub fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(v) => v,
            other => panic!("not an array: {other:?}"),
        }
    }

    /// A bulk from bytes.
    pub fn bulk(b: impl AsRef<[u8]>) -> Resp {
        Resp::Bulk(b.as_ref().to_vec())
    }
}

/// Encodes a request as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A raw TCP client: exact bytes out, a small RESP decoder in.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects with a 10 s I/O timeout; panics on failure.
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Connects with a 10 s I/O timeout.
    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Raw> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        let mut r = Raw {
            stream,
            buf: Vec::new(),
        };
        r.set_timeout(Duration::from_secs(10));
        Ok(r)
    }

    /// Closes the connection with a reset, discarding whatever it has not yet delivered: a
    /// request whose outcome is unknown must not reach the server later (a frame still
    /// being retransmitted when a partition heals would apply a write the client saw fail,
    /// after the writes it made since).
    pub fn abort(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }

    /// Sets the read and write timeouts.
    pub fn set_timeout(&mut self, t: Duration) {
        let _ = self.stream.set_read_timeout(Some(t));
        let _ = self.stream.set_write_timeout(Some(t));
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes bytes.
    pub fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b)
    }

    /// Sends one request and reads its reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Resp {
        self.send(&encode(args)).expect("send");
        self.read_reply().expect("read reply")
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by server",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads one line (without CRLF).
    pub fn read_line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact_bytes(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads one reply.
    pub fn read_reply(&mut self) -> std::io::Result<Resp> {
        let line = self.read_line()?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad reply");
        let (&kind, rest) = line.split_first().ok_or_else(bad)?;
        let text = String::from_utf8_lossy(rest).into_owned();
        let num = || text.parse::<i64>().map_err(|_| bad());
        Ok(match kind {
            b'+' => Resp::Simple(text),
            b'-' => Resp::Error(text),
            b':' => Resp::Int(num()?),
            b'_' => Resp::Nil,
            b'$' | b'=' | b'!' => {
                let n = num()?;
                if n < 0 {
                    Resp::Nil
                } else {
                    let mut b = self.read_exact_bytes(n as usize + 2)?;
                    b.truncate(n as usize);
                    if kind == b'!' {
                        Resp::Error(String::from_utf8_lossy(&b).into_owned())
                    } else {
                        Resp::Bulk(b)
                    }
                }
            }
            b'*' | b'~' | b'>' => {
                let n = num()?;
                if n < 0 {
                    Resp::Nil
                } else {
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(self.read_reply()?);
                    }
                    Resp::Array(v)
                }
            }
            b'%' | b'|' => {
                let n = num()?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let k = self.read_reply()?;
                    let val = self.read_reply()?;
                    v.push((k, val));
                }
                if kind == b'|' {
                    // An attribute precedes the real reply.
                    return self.read_reply();
                }
                Resp::Map(v)
            }
            other => Resp::Other(other, text),
        })
    }

    /// Reads until the server closes the connection or `timeout` passes; returns the
    /// bytes read (including any buffered) and whether EOF was seen.
    pub fn read_to_eof(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + timeout;
        let mut out = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (out, false);
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut chunk) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                // A reset after the server closed with unread input still is a close.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    return (out, false);
                }
                Err(_) => return (out, true),
            }
        }
    }
}

/// The text of a redis-crate error as the server sent it (`CODE detail`).
pub fn err_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(c), Some(d)) => format!("{c} {d}"),
        (Some(c), None) => c.to_string(),
        _ => e.to_string(),
    }
}

/// Parses `field:value` from an INFO text.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// `INFO section` over a raw connection, as text.
pub fn info(raw: &mut Raw, section: &str) -> String {
    match raw.cmd(&[b"INFO", section.as_bytes()]) {
        Resp::Bulk(b) => String::from_utf8(b).expect("INFO is utf-8"),
        other => panic!("INFO {section}: {other:?}"),
    }
}

/// A numeric INFO field.
pub fn info_u64(raw: &mut Raw, section: &str, field: &str) -> u64 {
    let text = info(raw, section);
    info_field(&text, field)
        .unwrap_or_else(|| panic!("INFO {section} has no {field}:\n{text}"))
        .parse()
        .unwrap_or_else(|_| panic!("INFO {field} not a number:\n{text}"))
}

/// Writes a file into a fresh temp dir and returns (dir guard, path).
pub fn write_temp_file(name: &str, content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    let mut f = File::create(&path).expect("create");
    f.write_all(content.as_bytes()).expect("write");
    (dir, path)
}

/// How long the members of a new cluster may take to learn each other.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterSetup {
    /// How many nodes.
    pub nodes: usize,
    /// Replicas per key (`--n`).
    pub n: usize,
    /// Read quorum (`--r`).
    pub r: usize,
    /// Write quorum (`--w`).
    pub w: usize,
    /// Internode request deadline (`--request-timeout-ms`).
    pub timeout_ms: u64,
    /// The shared `--cluster-secret`.
    pub secret: String,
    /// Extra flags for every node.
    pub args: Vec<String>,
    /// Give every node its own `--metrics-addr` port (see [`Cluster::metrics_ports`]).
    pub metrics: bool,
}

impl ClusterSetup {
    /// `nodes` nodes with N=3, R=2, W=2 and a 1 s request timeout.
    pub fn new(nodes: usize) -> ClusterSetup {
        ClusterSetup {
            nodes,
            n: 3,
            r: 2,
            w: 2,
            timeout_ms: 1000,
            secret: format!("test-secret-{}", std::process::id()),
            args: Vec::new(),
            metrics: false,
        }
    }

    /// Sets N, R and W.
    pub fn nrw(mut self, n: usize, r: usize, w: usize) -> ClusterSetup {
        (self.n, self.r, self.w) = (n, r, w);
        self
    }

    /// Sets the internode request deadline.
    pub fn timeout_ms(mut self, ms: u64) -> ClusterSetup {
        self.timeout_ms = ms;
        self
    }

    /// Adds flags for every node.
    pub fn args(mut self, args: &[&str]) -> ClusterSetup {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }
}

/// A client port and an internode port, both free a moment ago and distinct from `taken`.
fn free_port_pair(taken: &mut Vec<u16>) -> (u16, u16) {
    let mut pick = || loop {
        let p = free_port();
        if !taken.contains(&p) {
            taken.push(p);
            return p;
        }
    };
    (pick(), pick())
}

/// K real dynkv processes on loopback forming one cluster (each with its own data
/// directory and log); every node is killed when the guard is dropped.
pub struct Cluster {
    /// The nodes, in start order.
    pub nodes: Vec<Server>,
    /// Each node's internode port (same order).
    pub cluster_ports: Vec<u16>,
    /// Each node's metrics port (same order; empty unless `ClusterSetup::metrics`).
    pub metrics_ports: Vec<u16>,
    /// How the cluster was started.
    pub setup: ClusterSetup,
}

impl Cluster {
    /// Starts `nodes` nodes with N=3, R=2, W=2 and waits until every node knows all.
    pub fn start(nodes: usize) -> Cluster {
        Cluster::start_with(ClusterSetup::new(nodes))
    }

    /// Starts a cluster as `setup` says and waits until every node knows every other
    /// (`cluster_known_nodes`); retries a port race with fresh ports.
    pub fn start_with(setup: ClusterSetup) -> Cluster {
        let mut last = String::new();
        for _ in 0..3 {
            let mut taken = Vec::new();
            let ports: Vec<(u16, u16)> = (0..setup.nodes).map(|_| free_port_pair(&mut taken)).collect();
            let metrics_ports: Vec<u16> = if setup.metrics {
                (0..setup.nodes).map(|_| free_port_pair(&mut taken).0).collect()
            } else {
                Vec::new()
            };
            let seeds = ports
                .iter()
                .map(|(p, c)| format!("127.0.0.1:{p}@{c}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut nodes = Vec::new();
            let mut failed = None;
            for (i, &(port, cport)) in ports.iter().enumerate() {
                let mut args: Vec<String> = vec![
                    "--port".into(),
                    port.to_string(),
                    "--cluster-port".into(),
                    cport.to_string(),
                    "--seeds".into(),
                    seeds.clone(),
                    "--cluster-secret".into(),
                    setup.secret.clone(),
                    "--n".into(),
                    setup.n.to_string(),
                    "--r".into(),
                    setup.r.to_string(),
                    "--w".into(),
                    setup.w.to_string(),
                    "--request-timeout-ms".into(),
                    setup.timeout_ms.to_string(),
                ];
                if let Some(m) = metrics_ports.get(i) {
                    args.extend(["--metrics-addr".into(), format!("127.0.0.1:{m}")]);
                }
                args.extend(setup.args.iter().cloned());
                match Server::try_start_with(Setup {
                    args,
                    data_dir: None,
                    port: PortMode::Given(port),
                    password: None,
                }) {
                    Ok(s) => nodes.push(s),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                Some(e) if e.contains("in use") || e.contains("cannot listen") => {
                    last = e;
                    continue;
                }
                Some(e) => panic!("a cluster node did not start: {e}"),
                None => {
                    let c = Cluster {
                        nodes,
                        cluster_ports: ports.iter().map(|p| p.1).collect(),
                        metrics_ports,
                        setup: setup.clone(),
                    };
                    c.wait_known(setup.nodes, JOIN_TIMEOUT);
                    return c;
                }
            }
        }
        panic!("no free ports for the cluster after 3 attempts: {last}");
    }

    /// Starts one more node that joins the cluster through its seeds (same secret and
    /// N/R/W, plus `extra` flags); returns its index. Does not wait for the join to
    /// complete.
    pub fn add_node(&mut self, extra: &[&str]) -> usize {
        let seeds = self.seeds();
        let mut taken: Vec<u16> = self
            .nodes
            .iter()
            .map(|n| n.port())
            .chain(self.cluster_ports.clone())
            .collect();
        let (port, cport) = free_port_pair(&mut taken);
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--cluster-port".into(),
            cport.to_string(),
            "--join".into(),
            seeds,
            "--cluster-secret".into(),
            self.setup.secret.clone(),
            "--n".into(),
            self.setup.n.to_string(),
            "--r".into(),
            self.setup.r.to_string(),
            "--w".into(),
            self.setup.w.to_string(),
            "--request-timeout-ms".into(),
            self.setup.timeout_ms.to_string(),
        ];
        args.extend(self.setup.args.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let node = Server::start_with(Setup {
            args,
            data_dir: None,
            port: PortMode::Given(port),
            password: None,
        });
        self.nodes.push(node);
        self.cluster_ports.push(cport);
        self.nodes.len() - 1
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Server {
        &self.nodes[i]
    }

    /// Node `i`, mutably (to stop, kill or restart it).
    pub fn node_mut(&mut self, i: usize) -> &mut Server {
        &mut self.nodes[i]
    }

    /// The `--seeds` value naming every node (`127.0.0.1:P@CP,...`).
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .zip(&self.cluster_ports)
            .map(|(s, c)| format!("127.0.0.1:{}@{c}", s.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A raw connection to node `i`.
    pub fn raw(&self, i: usize) -> Raw {
        self.nodes[i].raw()
    }

    /// Waits until every node reports `cluster_known_nodes:k`; panics (with the last
    /// CLUSTER INFO of each node) after `timeout`.
    pub fn wait_known(&self, k: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen: Vec<Option<u64>> = self.nodes.iter().map(known_nodes).collect();
            if seen.iter().all(|s| *s == Some(k as u64)) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("cluster did not converge to {k} known nodes within {timeout:?}: {seen:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `i`'s own copy of `key` (`DYNKV.LOCAL`): `None` when it holds none, else
    /// (context, values).
    pub fn local(&self, i: usize, key: &[u8]) -> Option<(String, Vec<Vec<u8>>)> {
        local_copy(&mut self.raw(i), key)
    }
}

/// `cluster_known_nodes` of a node, or `None` if it does not answer.
pub fn known_nodes(s: &Server) -> Option<u64> {
    let mut raw = Raw::try_connect(s.addr()).ok()?;
    raw.set_timeout(Duration::from_secs(2));
    raw.send(&encode(&[b"CLUSTER", b"INFO"])).ok()?;
    match raw.read_reply().ok()? {
        Resp::Bulk(b) => info_field(&String::from_utf8_lossy(&b), "cluster_known_nodes")?
            .parse()
            .ok(),
        _ => None,
    }
}

/// `DYNKV.LOCAL key` over `raw`: `None` for nil, else (context, live values).
pub fn local_copy(raw: &mut Raw, key: &[u8]) -> Option<(String, Vec<Vec<u8>>)> {
    match raw.cmd(&[b"DYNKV.LOCAL", key]) {
        Resp::Nil => None,
        Resp::Array(v) if v.len() == 2 => Some((v[0].text(), v[1].items().iter().map(Resp::bytes).collect())),
        other => panic!("DYNKV.LOCAL {}: unexpected {other:?}", String::from_utf8_lossy(key)),
    }
}

/// Sends every request at once, then reads one reply per request (in order).
pub fn pipeline(raw: &mut Raw, reqs: &[Vec<Vec<u8>>]) -> Vec<Resp> {
    let mut out = Vec::new();
    for r in reqs {
        let args: Vec<&[u8]> = r.iter().map(Vec::as_slice).collect();
        out.extend_from_slice(&encode(&args));
    }
    raw.send(&out).expect("send pipeline");
    (0..reqs.len())
        .map(|_| raw.read_reply().expect("read pipelined reply"))
        .collect()
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes; returns its last
/// answer.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `CLUSTER KEYSLOT key` through `raw`.
pub fn keyslot(raw: &mut Raw, key: &[u8]) -> usize {
    match raw.cmd(&[b"CLUSTER", b"KEYSLOT", key]) {
        Resp::Int(n) => n as usize,
        other => panic!("CLUSTER KEYSLOT: {other:?}"),
    }
}

/// CLUSTER SLOTS as, per slot, the client ports of its replicas (first = the master).
pub fn slot_layout(raw: &mut Raw) -> Vec<Vec<u16>> {
    let mut out = vec![Vec::new(); 16384];
    let reply = raw.cmd(&[b"CLUSTER", b"SLOTS"]);
    for entry in reply.items() {
        let e = entry.items();
        let (Resp::Int(a), Resp::Int(b)) = (&e[0], &e[1]) else {
            panic!("CLUSTER SLOTS entry: {entry:?}");
        };
        let ports: Vec<u16> = e[2..]
            .iter()
            .map(|n| match &n.items()[1] {
                Resp::Int(p) => *p as u16,
                other => panic!("CLUSTER SLOTS port: {other:?}"),
            })
            .collect();
        for slot in *a..=*b {
            assert!(out[slot as usize].is_empty(), "slot {slot} listed twice");
            out[slot as usize] = ports.clone();
        }
    }
    out
}
