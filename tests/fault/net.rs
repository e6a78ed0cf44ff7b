//! Real network partitions: one network namespace per node, joined to a bridge by a veth
//! pair, with the test process (root namespace) reaching every node through `SUBNET.254` on
//! the bridge. Only iproute2 (`ip`) is used:
//! - `isolate(i)` takes node i's veth down: every packet to and from it is dropped.
//! - `split(a, b)` and `drop_from(to, from)` add policy-routing rules inside the receiving
//!   namespaces (`ip rule add from PEER iif eth0 blackhole`): packets *arriving* from the
//!   other side are dropped silently (peers see timeouts, not resets). A split installs
//!   them on both sides; `drop_from` alone is one-way loss. The client address `.254` is
//!   never dropped, so a client can still talk to a node on the minority side.
//!
//! Names carry the pid and a per-process sequence number (`dkf<pid>x<seq>...`), so parallel
//! tests never collide; [`Net`] removes everything it created on drop (also on panic), and
//! [`Net::create`] first sweeps leftovers of dead earlier runs.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Every name this harness creates starts with this.
pub const PREFIX: &str = "dkf";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `ip args...`; the error carries the command and its stderr.
pub fn ip<S: AsRef<str>>(args: &[S]) -> Result<String, String> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let out = Command::new("ip")
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2 is needed: apt-get install iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must<S: AsRef<str>>(args: &[S]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// The pid embedded in one of our names (`dkf<pid>x...`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('x') {
        return None;
    }
    digits.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes the namespaces and links that dead earlier runs of this harness left behind.
pub fn sweep_leftovers() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if owner_pid(name).is_some_and(|p| !pid_alive(p)) {
                eprintln!("fault net: removing leftover namespace {name}");
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for line in list.lines() {
            // "7: dkf123x0b: <...>" or "8: dkf123x0v1@if2: <...>"
            let Some(name) = line.split(": ").nth(1) else { continue };
            let name = name.split('@').next().unwrap_or(name);
            if owner_pid(name).is_some_and(|p| !pid_alive(p)) {
                eprintln!("fault net: removing leftover link {name}");
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// A bridge plus one namespace per node; removed on drop.
pub struct Net {
    tag: String,
    /// First three octets of the subnet, e.g. `10.37.2`.
    pub subnet: String,
    nodes: usize,
    made_bridge: bool,
    made_ns: Vec<String>,
    /// Nodes whose veth is down.
    isolated: BTreeSet<usize>,
    /// (receiving node, dropped source node) rules in force.
    drops: BTreeSet<(usize, usize)>,
}

impl Net {
    /// Creates the bridge and `nodes` namespaces (node i gets `SUBNET.(i+1)`); panics with a
    /// clear message when not root or `ip netns` does not work (the tests need root: CI
    /// runs as root).
    pub fn create(nodes: usize) -> Net {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert!(
            euid == 0,
            "the fault tests need root (network namespaces, veth links, policy routes); euid is {euid}. \
             Run them as root (CI does)."
        );
        if let Err(e) = ip(&["netns", "list"]) {
            panic!("the fault tests need `ip netns` (iproute2, as root): {e}");
        }
        sweep_leftovers();
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{pid}x{seq}");
        assert!(tag.len() + 3 <= 15, "interface name too long: {tag}");
        let subnet = pick_subnet(pid, seq);
        let mut net = Net {
            tag,
            subnet,
            nodes,
            made_bridge: false,
            made_ns: Vec::new(),
            isolated: BTreeSet::new(),
            drops: BTreeSet::new(),
        };
        let br = net.bridge();
        if let Err(e) = ip(&["link", "add", &br, "type", "bridge"]) {
            panic!("cannot create a bridge (the fault tests need root and iproute2): {e}");
        }
        net.made_bridge = true;
        must(&["link", "set", &br, "up"]);
        must(&["addr", "add", &format!("{}.254/24", net.subnet), "dev", &br]);
        for i in 0..nodes {
            let ns = net.ns(i);
            if let Err(e) = ip(&["netns", "add", &ns]) {
                panic!("cannot create network namespace {ns} (root needed): {e}");
            }
            net.made_ns.push(ns.clone());
            let veth = net.veth(i);
            must(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            must(&["link", "set", &veth, "master", &br, "up"]);
            must(&["-n", &ns, "addr", "add", &format!("{}/24", net.addr(i)), "dev", "eth0"]);
            must(&["-n", &ns, "link", "set", "eth0", "up"]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            // Let rules placed before the local table drop arriving packets: move the
            // local lookup from priority 0 to 1000 (inside this namespace only).
            must(&["-n", &ns, "rule", "add", "pref", "1000", "lookup", "local"]);
            must(&["-n", &ns, "rule", "del", "pref", "0"]);
        }
        net
    }

    /// The bridge's name.
    pub fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    /// Node i's namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Node i's veth (root side).
    pub fn veth(&self, i: usize) -> String {
        format!("{}v{i}", self.tag)
    }

    /// Node i's address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        format!("{}.{}", self.subnet, i + 1).parse().expect("address")
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes
    }

    /// Takes node i's link down: it neither sends nor receives anything (clients included).
    pub fn isolate(&mut self, i: usize) {
        must(&["link", "set", &self.veth(i), "down"]);
        self.isolated.insert(i);
    }

    /// Brings node i's link back up.
    pub fn heal(&mut self, i: usize) {
        must(&["link", "set", &self.veth(i), "up"]);
        self.isolated.remove(&i);
    }

    /// Node `to` drops every packet arriving from node `from` (one-way loss).
    pub fn drop_from(&mut self, to: usize, from: usize) {
        if self.drops.insert((to, from)) {
            must(&self.rule_args("add", to, from));
        }
    }

    /// Undoes [`Net::drop_from`].
    pub fn undrop(&mut self, to: usize, from: usize) {
        if self.drops.remove(&(to, from)) {
            must(&self.rule_args("del", to, from));
        }
    }

    fn rule_args(&self, verb: &str, to: usize, from: usize) -> Vec<String> {
        let pref = (100 + from).to_string();
        let (ns, src) = (self.ns(to), self.addr(from).to_string());
        [
            "-n",
            &ns,
            "rule",
            verb,
            "from",
            &src,
            "iif",
            "eth0",
            "blackhole",
            "pref",
            &pref,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Cuts every path between a side and b side, both ways (clients still reach both).
    pub fn split(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.drop_from(x, y);
                self.drop_from(y, x);
            }
        }
    }

    /// Removes every rule and brings every link up.
    pub fn heal_all(&mut self) {
        for (to, from) in self.drops.clone() {
            self.undrop(to, from);
        }
        for i in self.isolated.clone() {
            self.heal(i);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.made_ns {
            // Deleting the namespace deletes its eth0, hence the veth pair, and its rules.
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("fault net cleanup: {e}");
            }
        }
        for i in 0..self.nodes {
            let _ = ip(&["link", "del", &self.veth(i)]);
        }
        if self.made_bridge
            && let Err(e) = ip(&["link", "del", &self.bridge()])
        {
            eprintln!("fault net cleanup: {e}");
        }
    }
}

/// A /24 inside 10.0.0.0/8 from the pid and sequence number that no route of the root
/// namespace covers yet.
fn pick_subnet(pid: u32, seq: u32) -> String {
    let routes = ip(&["-4", "route", "show"]).unwrap_or_default();
    let second = 20 + pid % 200;
    for k in 0..250 {
        let third = (seq * 7 + k) % 250 + 1;
        let s = format!("10.{second}.{third}");
        if !routes.contains(&format!("{s}.0/24")) && !routes.contains(&format!("10.{second}.0.0/16")) {
            return s;
        }
    }
    panic!("no free 10.{second}.x.0/24 subnet in the root namespace");
}
