//! dynkv nodes living in the namespaces of a [`Net`]: each node binds its namespace's
//! address (same client and internode ports in every namespace), has its own data
//! directory and a log file that survives restarts, and can be killed, restarted, paused
//! and resumed. Dropping the cluster kills every process, then removes the network.
//!
//! Not every node need be a member from the start: [`FaultSetup::initial`] nodes form the
//! cluster, the others wait in their namespaces until [`FaultCluster::join`] starts them
//! with `--join`; a node that left is stopped with [`FaultCluster::retire`]. Healing,
//! waiting and checking concern the members only (see [`FaultCluster::members`]).

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::Conn;
use super::net::Net;
use crate::common::{Resp, bin, info_field};

/// The client port of every node (each lives in its own namespace).
pub const PORT: u16 = 7000;
/// The internode port of every node.
pub const CLUSTER_PORT: u16 = 17000;

/// How the nodes run.
#[derive(Debug, Clone)]
pub struct FaultSetup {
    /// Nodes (namespaces and data directories).
    pub nodes: usize,
    /// Nodes started as the cluster (0..initial); the others join later.
    pub initial: usize,
    /// N, R, W.
    pub nrw: (usize, usize, usize),
    /// `--request-timeout-ms`.
    pub timeout_ms: u64,
    /// Extra flags for every node.
    pub args: Vec<String>,
}

impl FaultSetup {
    /// `nodes` nodes with N=3, R=2, W=2, a 500 ms internode deadline and an anti-entropy
    /// exchange every 250 ms (each node meets each of 4 peers about once a second), so
    /// replicas converge on their own well within a scenario's passive timeout.
    pub fn new(nodes: usize) -> FaultSetup {
        FaultSetup {
            nodes,
            initial: nodes,
            nrw: (3, 2, 2),
            timeout_ms: 500,
            args: ["--anti-entropy-interval-ms", "250"].map(String::from).to_vec(),
        }
    }
}

/// One dynkv process in its namespace.
pub struct FaultNode {
    /// Index in the cluster.
    pub index: usize,
    ns: String,
    addr: SocketAddr,
    args: Vec<String>,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    member: bool,
}

impl FaultNode {
    /// The client address (reachable from the root namespace through the bridge).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The log so far (all incarnations).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the process runs (paused counts as running).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The node id it was given by [`FaultNode::wipe`], if it was wiped.
    pub fn wiped_as(&self) -> Option<&str> {
        let at = self.args.iter().position(|a| a == "--node-id")?;
        self.args.get(at + 1).map(String::as_str)
    }

    /// Whether it is a member: started (as one of the initial nodes or by a join) and
    /// not retired. A member that is down (killed, wiped) is still one.
    pub fn member(&self) -> bool {
        self.member
    }

    /// Whether it is SIGSTOPped.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Spawns the process inside its namespace (setns before exec, so the child's pid is
    /// dynkv's own and signals reach it directly).
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.index);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        let ns_file = File::open(format!("/run/netns/{}", self.ns))
            .or_else(|_| File::open(format!("/var/run/netns/{}", self.ns)))
            .unwrap_or_else(|e| panic!("open namespace {}: {e}", self.ns));
        let fd = ns_file.as_raw_fd();
        let mut cmd = Command::new(bin());
        cmd.args(&self.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // SAFETY: setns(2) is async-signal-safe; `fd` stays open until spawn returns (the
        // file is dropped after) and is close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn dynkv in its namespace"));
        drop(ns_file);
        self.paused = false;
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("node not running").id() as libc::pid_t;
        // SAFETY: kill(2) on our own child.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Waits until it answers PING (bounded); panics with the log tail otherwise.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("node {} exited ({st})\n--- log ---\n{}", self.index, self.log_tail(80));
            }
            let mut c = Conn::new(self.addr, Duration::from_secs(1));
            if matches!(c.call(&[b"PING"]), super::client::Reply::Ok(Resp::Simple(s)) if s == "PONG") {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {} not ready within {timeout:?}\n--- log ---\n{}",
                    self.index,
                    self.log_tail(80)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGKILL, then deletes the data directory (hints, replicas, node id: everything the
    /// node stored); the next start runs with `--node-id id` on the empty directory, so
    /// the node comes back as the same member with an empty disk.
    pub fn wipe(&mut self, id: &str) {
        self.kill9();
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("node {}: remove {}: {e}", self.index, self.data_dir.display()),
        }
        assert!(
            !self.data_dir.exists(),
            "node {}: data directory still there",
            self.index
        );
        match self.args.iter().position(|a| a == "--node-id") {
            Some(at) => self.args[at + 1] = id.to_string(),
            None => self.args.extend(["--node-id".to_string(), id.to_string()]),
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s; reaped either way.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        if self.paused {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                eprintln!("node {}: no exit within 10 s of SIGTERM; SIGKILL", self.index);
                let _ = c.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.wait();
        self.paused = false;
    }

    /// Starts again on the same data directory and waits until it answers.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready(Duration::from_secs(15));
    }

    /// SIGSTOP.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }
}

impl Drop for FaultNode {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() && self.log_path.exists() {
            eprintln!(
                "--- node {} log tail ({}) ---\n{}\n--- end ---",
                self.index,
                self.log_path.display(),
                self.log_tail(60)
            );
        }
    }
}

/// Nodes in namespaces; everything is stopped and removed on drop (nodes first).
pub struct FaultCluster {
    /// The nodes.
    pub nodes: Vec<FaultNode>,
    /// The network (dropped after the nodes).
    pub net: Net,
    /// How the nodes run.
    pub setup: FaultSetup,
    tmp: tempfile::TempDir,
}

impl FaultCluster {
    /// Creates the network, starts every node and waits until each knows all the others.
    pub fn start(setup: FaultSetup) -> FaultCluster {
        crate::common::raise_fd_limit();
        let net = Net::create(setup.nodes);
        let tmp = tempfile::Builder::new()
            .prefix("dynkv-fault-")
            .tempdir()
            .expect("tempdir");
        assert!(
            (1..=setup.nodes).contains(&setup.initial),
            "{} initial nodes of {}",
            setup.initial,
            setup.nodes
        );
        let seeds = (0..setup.initial)
            .map(|i| format!("{}:{PORT}@{CLUSTER_PORT}", net.addr(i)))
            .collect::<Vec<_>>()
            .join(",");
        let secret = format!("fault-secret-{}", std::process::id());
        let mut nodes = Vec::new();
        for i in 0..setup.nodes {
            let dir = tmp.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir).expect("node dir");
            let (n, r, w) = setup.nrw;
            let mut args: Vec<String> = [
                "server",
                "--bind",
                &net.addr(i).to_string(),
                "--port",
                &PORT.to_string(),
                "--cluster-port",
                &CLUSTER_PORT.to_string(),
                "--data-dir",
                &dir.join("data").display().to_string(),
                "--cluster-secret",
                &secret,
                "--n",
                &n.to_string(),
                "--r",
                &r.to_string(),
                "--w",
                &w.to_string(),
                "--request-timeout-ms",
                &setup.timeout_ms.to_string(),
            ]
            .map(String::from)
            .to_vec();
            args.extend(setup.args.iter().cloned());
            if i < setup.initial {
                args.extend(["--seeds".to_string(), seeds.clone()]);
            }
            nodes.push(FaultNode {
                index: i,
                ns: net.ns(i),
                addr: SocketAddr::from((net.addr(i), PORT)),
                args,
                data_dir: dir.join("data"),
                log_path: dir.join("dynkv.log"),
                child: None,
                paused: false,
                member: i < setup.initial,
            });
        }
        let mut c = FaultCluster { nodes, net, setup, tmp };
        for node in c.nodes.iter_mut().filter(|n| n.member) {
            node.spawn();
        }
        for node in c.nodes.iter_mut().filter(|n| n.member) {
            node.wait_ready(Duration::from_secs(15));
        }
        c.wait_known(Duration::from_secs(20));
        eprintln!(
            "fault cluster: {} of {} nodes running on {}.0/24 (namespaces {}..), data in {}",
            c.setup.initial,
            c.nodes.len(),
            c.net.subnet,
            c.net.ns(0),
            c.tmp.path().display()
        );
        c
    }

    /// The members, in index order: the nodes healing, waiting and checking concern.
    pub fn members(&self) -> Vec<usize> {
        self.nodes.iter().filter(|n| n.member).map(|n| n.index).collect()
    }

    /// Starts node i (not yet a member) with `--join` naming every running member, plus
    /// `extra` flags, and waits until it answers PING. It is a member from now on; its
    /// join completes later (see `ring::wait_stable`).
    pub fn join(&mut self, i: usize, extra: &[&str]) {
        assert!(!self.nodes[i].member, "node {i} is already a member");
        let seeds = self
            .nodes
            .iter()
            .filter(|n| n.member && n.running() && !n.paused())
            .map(|n| format!("{}:{PORT}@{CLUSTER_PORT}", self.net.addr(n.index)))
            .collect::<Vec<_>>()
            .join(",");
        assert!(!seeds.is_empty(), "no running member to join through");
        let node = &mut self.nodes[i];
        node.args.extend(["--join".to_string(), seeds]);
        node.args.extend(extra.iter().map(|s| s.to_string()));
        node.member = true;
        node.spawn();
        node.wait_ready(Duration::from_secs(15));
    }

    /// Stops node i (SIGTERM) for good: it is no member any more (it left), so healing
    /// does not restart it and the checks skip it.
    pub fn retire(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.stop();
        node.member = false;
    }

    /// Waits until every member reports `cluster_known_nodes` = the number of members;
    /// panics after `timeout`.
    pub fn wait_known(&self, timeout: Duration) {
        let members = self.members();
        let k = members.len() as u64;
        let deadline = Instant::now() + timeout;
        loop {
            let seen: Vec<Option<u64>> = members
                .iter()
                .map(|&i| {
                    self.info_field(i, "cluster", "cluster_known_nodes")
                        .and_then(|v| v.parse().ok())
                })
                .collect();
            if seen.iter().all(|s| *s == Some(k)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes do not all know {k} members within {timeout:?}: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A fresh connection to node i with a 2 s timeout.
    pub fn conn(&self, i: usize) -> Conn {
        Conn::new(self.nodes[i].addr(), Duration::from_secs(2))
    }

    /// One field of `INFO section` (CLUSTER INFO for section "cluster") of node i.
    pub fn info_field(&self, i: usize, section: &str, field: &str) -> Option<String> {
        let text = self.info_text(i, section)?;
        info_field(&text, field)
    }

    /// `INFO section` text of node i (or CLUSTER INFO for "cluster"); `None` on failure.
    pub fn info_text(&self, i: usize, section: &str) -> Option<String> {
        let mut c = self.conn(i);
        let reply = if section == "cluster" {
            c.call(&[b"CLUSTER", b"INFO"])
        } else {
            c.call(&[b"INFO", section.as_bytes()])
        };
        match reply {
            super::client::Reply::Ok(Resp::Bulk(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        }
    }

    /// One field of `INFO section` of node i (always INFO, never CLUSTER INFO).
    pub fn info(&self, i: usize, section: &str, field: &str) -> Option<String> {
        let mut c = self.conn(i);
        match c.call(&[b"INFO", section.as_bytes()]) {
            super::client::Reply::Ok(Resp::Bulk(b)) => info_field(&String::from_utf8_lossy(&b), field),
            _ => None,
        }
    }

    /// Node i's `node_id` (16 hex digits) from INFO; panics if it cannot be read.
    pub fn node_id(&self, i: usize) -> String {
        let id = self
            .info(i, "cluster", "node_id")
            .unwrap_or_else(|| panic!("node {i}: INFO cluster has no node_id"));
        assert!(
            id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "node {i}: node_id {id:?} is not 16 hex digits"
        );
        id
    }

    /// Heals every partition, resumes paused members and restarts killed ones; waits
    /// until all members answer and know each other.
    pub fn heal_everything(&mut self) {
        self.net.heal_all();
        for n in self.nodes.iter_mut().filter(|n| n.member) {
            if n.paused() {
                n.resume();
            }
        }
        for n in self.nodes.iter_mut().filter(|n| n.member) {
            if !n.running() {
                n.restart();
            }
        }
        for n in self.nodes.iter_mut().filter(|n| n.member) {
            n.wait_ready(Duration::from_secs(15));
        }
        self.wait_known(Duration::from_secs(20));
    }

    /// The data directory of node i.
    pub fn data_dir(&self, i: usize) -> &std::path::Path {
        &self.nodes[i].data_dir
    }
}
