//! dynkv's fault-injection harness: real processes in real network namespaces, real
//! faults (SIGKILL + restart, SIGSTOP/SIGCONT, isolation, majority/minority splits,
//! one-way loss), concurrent clients recording every request, and checkers over the
//! history (set workload with siblings, registers, convergence, availability).
//!
//! Replicas must converge on their own (hinted handoff, anti-entropy) within a scenario's
//! passive timeout after the final heal, and every key must end on exactly N nodes; no
//! read is sent before that is checked. Read repair is tried only after a failure, to
//! tell the report whether reads would have fixed what the nodes did not. Every member
//! must also end with its ring stable and every transfer finished.
//!
//! Membership changes run under the same clients: nodes beyond the initial ones start
//! with `--join`, members leave with `DYNKV.LEAVE`, and [`ring`] waits for what the nodes
//! report (the checks then cover the members that remain).
//!
//! Needs root and iproute2 (`ip`); nothing else. A run prints `DYNKV_FAULT_SEED=...`;
//! setting that variable replays the same schedule; `DYNKV_FAULT_SOAK=1` runs longer.

#![allow(dead_code)]

pub mod check;
pub mod client;
pub mod cluster;
pub mod history;
pub mod net;
pub mod ring;
pub mod schedule;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use check::{ConvReport, Copy, RegView, SetView};
use client::{Reply, sibling_set};
use cluster::{FaultCluster, FaultSetup};
use history::{FaultKind, FaultSpan, Op};
use schedule::Step;
use workload::{Clients, Workload};

/// The seed: `DYNKV_FAULT_SEED` if set, else fresh from the clock; printed either way.
pub fn seed() -> u64 {
    let seed = match std::env::var("DYNKV_FAULT_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("DYNKV_FAULT_SEED={s} is not a u64")),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64;
            t ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    eprintln!("DYNKV_FAULT_SEED={seed}  (set this variable to replay the schedule)");
    seed
}

/// Whether `DYNKV_FAULT_SOAK=1`.
pub fn soak() -> bool {
    std::env::var("DYNKV_FAULT_SOAK").is_ok_and(|v| v == "1")
}

/// One run: a cluster, clients, a fault schedule, then heal and check.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Printed in the report.
    pub name: String,
    /// The cluster.
    pub setup: FaultSetup,
    /// The clients.
    pub workload: Workload,
    /// Seed of the clients' key choice (and of the schedule, when random).
    pub seed: u64,
    /// Healthy running before the first fault.
    pub warmup: Duration,
    /// The faults, in order; each step is repaired before the next.
    pub steps: Vec<Step>,
    /// Healthy time between steps.
    pub quiet: Duration,
    /// Clients keep running this long after the final heal.
    pub cooldown: Duration,
    /// Longest wait, after the cooldown, for hints to drain and then for every replica
    /// to agree with every key on exactly N nodes, on their own: no key is read until then.
    pub passive_timeout: Duration,
    /// Only after a failure to converge on its own: how long the keys still apart are read
    /// through every node (read repair), to report whether reads would have fixed them.
    pub repair_timeout: Duration,
}

impl Scenario {
    /// Defaults for a 5-node N=3 R=2 W=2 cluster with these steps.
    pub fn new(name: &str, seed: u64, steps: Vec<Step>) -> Scenario {
        Scenario {
            name: name.into(),
            setup: FaultSetup::new(5),
            workload: Workload::default(),
            seed,
            warmup: Duration::from_millis(1500),
            steps,
            quiet: Duration::from_millis(700),
            cooldown: Duration::from_millis(1000),
            passive_timeout: Duration::from_secs(10),
            repair_timeout: Duration::from_secs(10),
        }
    }
}

/// What a run measured (the checks already passed when it is returned).
#[derive(Debug)]
pub struct RunReport {
    /// Every request.
    pub history: Vec<Op>,
    /// Every fault and when.
    pub spans: Vec<FaultSpan>,
    /// Availability per category: (acknowledged, tried).
    pub availability: BTreeMap<&'static str, (usize, usize)>,
    /// How long after the final heal every replica agreed (on its own, no key read).
    pub converged_after: Duration,
    /// Anti-entropy totals over the nodes (since each node's last start).
    pub antientropy: AeTotals,
}

/// Sums of the anti-entropy counters of INFO cluster over the nodes that answered.
#[derive(Debug, Default, Clone, Copy)]
pub struct AeTotals {
    /// `antientropy_exchanges`.
    pub exchanges: u64,
    /// `antientropy_failed`.
    pub failed: u64,
    /// `antientropy_keys_repaired`.
    pub repaired: u64,
    /// `antientropy_keys_pushed`.
    pub pushed: u64,
    /// `antientropy_bytes_sent`.
    pub bytes_sent: u64,
}

impl AeTotals {
    /// The totals now.
    pub fn read(c: &FaultCluster) -> AeTotals {
        AeTotals {
            exchanges: sum_field(c, "antientropy_exchanges").unwrap_or(0),
            failed: sum_field(c, "antientropy_failed").unwrap_or(0),
            repaired: sum_field(c, "antientropy_keys_repaired").unwrap_or(0),
            pushed: sum_field(c, "antientropy_keys_pushed").unwrap_or(0),
            bytes_sent: sum_field(c, "antientropy_bytes_sent").unwrap_or(0),
        }
    }
}

/// The numeric INFO cluster field `field` of node i.
pub fn node_field(c: &FaultCluster, i: usize, field: &str) -> Option<u64> {
    c.info(i, "cluster", field)?.parse().ok()
}

/// The sum of an INFO cluster field over the members; `None` when none reports it.
fn sum_field(c: &FaultCluster, field: &str) -> Option<u64> {
    c.members()
        .into_iter()
        .filter_map(|i| node_field(c, i, field))
        .fold(None, |acc, v| Some(acc.unwrap_or(0) + v))
}

/// INFO lines about failure detection, handoff, anti-entropy and the ring (for the
/// report), per member.
fn node_figures(c: &FaultCluster) -> String {
    let mut out = String::new();
    for i in c.members() {
        let Some(text) = c.info_text(i, "all") else {
            let _ = writeln!(out, "  node {i}: INFO failed");
            continue;
        };
        let fields: Vec<&str> = text
            .lines()
            .filter(|l| {
                [
                    "hint",
                    "sloppy",
                    "peers",
                    "quorum_failures",
                    "read_repairs",
                    "antientropy",
                    "tombstones",
                    "ring_state",
                    "members_",
                    "transfer_",
                    "handover",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            })
            .collect();
        let _ = writeln!(out, "  node {i}: {}", fields.join(" "));
    }
    out
}

/// Every member's own copy of every key (in the order of `c.members()`).
fn snapshot(c: &FaultCluster, keys: &[String]) -> BTreeMap<String, Vec<Copy>> {
    let mut conns: Vec<_> = c.members().into_iter().map(|i| (i, c.conn(i))).collect();
    keys.iter()
        .map(|k| {
            let copies = conns
                .iter_mut()
                .map(|(i, conn)| match conn.call(&[b"DYNKV.LOCAL", k.as_bytes()]) {
                    Reply::Ok(r) => match sibling_set(&r) {
                        Ok(c) => c,
                        Err(e) => Some((format!("<node {i}: {e}>"), vec![])),
                    },
                    other => Some((format!("<node {i}: {other:?}>"), vec![])),
                })
                .collect();
            (k.clone(), copies)
        })
        .collect()
}

/// Every holder of every key agrees and every key is on exactly `n` nodes.
fn settled(conv: &ConvReport, n: usize) -> bool {
    conv.converged() && conv.not_on(n).is_empty()
}

/// The keys still apart (diverged or not on `n` nodes), each with every node's copy.
fn apart(conv: &ConvReport, snap: &BTreeMap<String, Vec<Copy>>, n: usize) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, copies) in &conv.diverged {
        out.insert(k.clone(), format!("copies differ: {copies:?}"));
    }
    for (k, held) in conv.not_on(n) {
        out.entry(k.clone())
            .or_insert_with(|| format!("on {held} nodes, not {n}: {:?}", snap.get(&k)));
    }
    out
}

fn dump_history(name: &str, history: &[Op], spans: &[FaultSpan]) -> String {
    let path = std::env::temp_dir().join(format!("dynkv-fault-{}-{name}.history", std::process::id()));
    let mut s = String::new();
    for f in spans {
        let _ = writeln!(s, "FAULT {:?} {}..{} ms", f.kind, f.start_ms, f.end_ms);
    }
    for o in history {
        let _ = writeln!(
            s,
            "{:>7}..{:<7} c{} n{} {:?} {} {} {:?}",
            o.start_ms, o.end_ms, o.client, o.node, o.kind, o.key, o.value, o.outcome
        );
    }
    let _ = std::fs::write(&path, s);
    path.display().to_string()
}

/// A scenario in progress: the cluster with the clients running, and the faults so far.
/// [`run`] drives one through the scenario's steps; a test whose faults depend on what
/// the nodes report injects and repairs them itself, then calls [`Run::finish`].
pub struct Run<'a> {
    s: &'a Scenario,
    started: Instant,
    t0: Instant,
    /// The cluster.
    pub c: FaultCluster,
    clients: Vec<Clients>,
    /// The number the next client gets (workload clients and [`Run::write_once`]).
    next_client: usize,
    /// Numbers of the workload clients (each has a register key).
    reg_clients: Vec<usize>,
    spans: Vec<FaultSpan>,
    open: Vec<(FaultKind, u64)>,
    extra_ops: Vec<Op>,
    extra_keys: Vec<String>,
}

impl<'a> Run<'a> {
    /// Starts the cluster and the clients, and lets them run for the warmup.
    pub fn start(s: &'a Scenario) -> Run<'a> {
        let started = Instant::now();
        let c = FaultCluster::start(s.setup.clone());
        let nodes: Vec<_> = c.members().into_iter().map(|i| (i, c.nodes[i].addr())).collect();
        let t0 = Instant::now();
        let count = s.workload.clients;
        let clients = Clients::start(&s.workload, count, 0, &nodes, t0, s.seed);
        std::thread::sleep(s.warmup);
        Run {
            s,
            started,
            t0,
            c,
            clients: vec![clients],
            next_client: count,
            reg_clients: (0..count).collect(),
            spans: Vec::new(),
            open: Vec::new(),
            extra_ops: Vec::new(),
            extra_keys: Vec::new(),
        }
    }

    /// Milliseconds since the clients started (the history's clock).
    pub fn ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// Starts `count` more workload clients (numbered after every client so far) over
    /// `nodes` in turn; they run, and are checked, like the first ones.
    pub fn add_clients(&mut self, count: usize, nodes: &[usize]) {
        let first = self.next_client;
        let addrs: Vec<_> = nodes.iter().map(|&i| (i, self.c.nodes[i].addr())).collect();
        let seed = self.s.seed ^ (first as u64).wrapping_mul(0xa076_1d64_78bd_642f);
        self.clients
            .push(Clients::start(&self.s.workload, count, first, &addrs, self.t0, seed));
        self.reg_clients.extend(first..first + count);
        self.next_client += count;
        eprintln!(
            "[{:>6} ms] clients {first}..{} started on nodes {nodes:?}",
            self.ms(),
            first + count
        );
    }

    /// The keys the checks cover so far: the set keys, every workload client's register
    /// key and the keys of [`Run::write_once`].
    pub fn keys(&self) -> Vec<String> {
        let mut keys = workload::set_keys(self.s.workload.set_keys);
        keys.extend(self.reg_clients.iter().map(|&c| workload::reg_key(c)));
        keys.extend(self.extra_keys.iter().cloned());
        keys
    }

    /// Injects a fault; it is in force until [`Run::repair`] (or the final heal).
    pub fn inject(&mut self, f: FaultKind) {
        eprintln!("[{:>6} ms] inject {f:?}", self.ms());
        schedule::inject(&mut self.c, &f);
        let at = self.ms();
        self.open.push((f, at));
    }

    /// Repairs a fault in force and records its span.
    pub fn repair(&mut self, f: &FaultKind) {
        let at = self
            .open
            .iter()
            .position(|(o, _)| o == f)
            .unwrap_or_else(|| panic!("{f:?} is not in force"));
        let (f, start_ms) = self.open.remove(at);
        schedule::repair(&mut self.c, &f);
        let end_ms = self.ms();
        eprintln!("[{end_ms:>6} ms] repaired {f:?}");
        self.spans.push(FaultSpan {
            kind: f,
            start_ms,
            end_ms,
        });
    }

    /// Writes `SET key 1` once for each key, through the nodes `via` in turn, recorded
    /// like the clients' writes (as one more client, with register semantics: the key
    /// must end holding 1 if acknowledged); the keys are checked with the workload's.
    /// Returns how many were acknowledged.
    pub fn write_once(&mut self, keys: &[String], via: &[usize]) -> usize {
        let client = self.next_client;
        self.next_client += 1;
        let mut conns: Vec<_> = via
            .iter()
            .map(|&i| (i, client::Conn::new(self.c.nodes[i].addr(), self.s.workload.timeout)))
            .collect();
        let mut acked = 0;
        for (n, key) in keys.iter().enumerate() {
            let (node, conn) = &mut conns[n % via.len()];
            let start_ms = self.ms();
            let reply = conn.call(&[b"SET", key.as_bytes(), b"1"]);
            let outcome = match reply {
                Reply::Ok(_) => history::Outcome::Ok,
                Reply::Err(e) => history::Outcome::Err(e),
                Reply::Unknown(e) => history::Outcome::Unknown(e),
                Reply::NotSent(e) => history::Outcome::NotSent(e),
            };
            acked += usize::from(outcome.ok());
            self.extra_ops.push(Op {
                client,
                node: *node,
                kind: history::Kind::Set,
                key: key.clone(),
                value: "1".into(),
                start_ms,
                end_ms: self.ms(),
                outcome,
            });
        }
        self.extra_keys.extend(keys.iter().cloned());
        acked
    }

    /// Repairs what is still in force, heals everything, stops the clients after the
    /// cooldown and checks the history and the replicas; panics with the checkers'
    /// findings (and where the history was written) when an acknowledged write is lost,
    /// a register is wrong, or the replicas do not converge on their own with every key
    /// on exactly N nodes within the passive timeout.
    pub fn finish(mut self) -> RunReport {
        let s = self.s;
        let open: Vec<FaultKind> = self.open.iter().map(|(f, _)| f.clone()).collect();
        for f in &open {
            self.repair(f);
        }
        let c = &mut self.c;
        c.heal_everything();
        let healed = Instant::now();
        eprintln!("[{:>6} ms] healed; cooldown", self.t0.elapsed().as_millis());
        std::thread::sleep(s.cooldown);
        let keys = self.keys();
        let mut history: Vec<Op> = self.clients.drain(..).flat_map(Clients::stop).collect();
        history.append(&mut self.extra_ops);
        history.sort_by_key(|o| (o.start_ms, o.client));
        let spans = self.spans;
        let c = &self.c;
        let n = s.setup.nrw.0;
        let passive_until = healed + s.cooldown + s.passive_timeout;
        let since_heal = || healed.elapsed().as_secs_f64();

        // Hints drained (when the binary reports them).
        let mut report = String::new();
        let hints_after = match sum_field(c, "hints_pending") {
            None => "not reported by this binary".to_string(),
            Some(_) => loop {
                let h = sum_field(c, "hints_pending").unwrap_or(0);
                if h == 0 {
                    break format!("drained {:.1} s after heal", since_heal());
                }
                if Instant::now() >= passive_until {
                    break format!("{h} still pending {:.1} s after heal", since_heal());
                }
                std::thread::sleep(Duration::from_millis(200));
            },
        };
        let _ = writeln!(report, "hints: {hints_after}");

        // Every handoff finished: every member reports a stable ring (no member joining or
        // leaving) and has pulled every partition it gained in the last change.
        let mut rings = ring::infos(c);
        while !ring::all_finished(&rings) && Instant::now() < passive_until {
            std::thread::sleep(Duration::from_millis(200));
            rings = ring::infos(c);
        }
        let handoffs_finished = ring::all_finished(&rings);
        let _ = writeln!(
            report,
            "ring: {} {:.1} s after heal",
            if handoffs_finished {
                "stable on every member, every transfer finished,"
            } else {
                "NOT SETTLED"
            },
            since_heal()
        );
        let _ = write!(report, "{}", ring::table(&rings));

        // Convergence on the nodes' own (hinted handoff, anti-entropy): nothing reads a
        // key here, DYNKV.LOCAL only looks at each node's copy.
        let mut snap = snapshot(c, &keys);
        let mut conv = check::check_convergence(&snap);
        while !settled(&conv, n) && Instant::now() < passive_until {
            std::thread::sleep(Duration::from_millis(250));
            snap = snapshot(c, &keys);
            conv = check::check_convergence(&snap);
        }
        let converged_after = healed.elapsed();
        let on_own = settled(&conv, n);
        let mut apart_on_own = BTreeMap::new();
        if on_own {
            let _ = writeln!(
                report,
                "convergence: converged on its own {:.1} s after heal ({} keys, each on exactly N={n} nodes)",
                converged_after.as_secs_f64(),
                keys.len()
            );
        } else {
            apart_on_own = apart(&conv, &snap, n);
            let _ = writeln!(
                report,
                "convergence: NOT CONVERGED on its own {:.1} s after heal; {} of {} keys apart \
                 (the copies of nodes {:?} in that order, None = holds none):",
                since_heal(),
                apart_on_own.len(),
                keys.len(),
                c.members()
            );
            for (k, what) in &apart_on_own {
                let _ = writeln!(report, "  {k}: {what}");
            }
            // Diagnostic only: would reads (read repair) bring them together?
            let help_until = Instant::now() + s.repair_timeout;
            loop {
                for i in c.members() {
                    let mut conn = c.conn(i);
                    for k in apart_on_own.keys() {
                        let _ = conn.call(&[b"SIBLINGS", k.as_bytes()]);
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
                snap = snapshot(c, &keys);
                conv = check::check_convergence(&snap);
                if settled(&conv, n) || Instant::now() >= help_until {
                    break;
                }
            }
            let _ = writeln!(
                report,
                "  then read repair (every such key read through every node): {}",
                if settled(&conv, n) {
                    format!("converged {:.1} s after heal", since_heal())
                } else {
                    format!(
                        "still apart {:.1} s after heal: {:?}",
                        since_heal(),
                        apart(&conv, &snap, n)
                    )
                }
            );
        }
        let ae = AeTotals::read(c);
        let _ = writeln!(
            report,
            "anti-entropy (sums since each node's last start): {} exchanges, {} failed, {} keys repaired, \
             {} pushed, {} bytes sent",
            ae.exchanges, ae.failed, ae.repaired, ae.pushed, ae.bytes_sent
        );

        // Final reads through every node, plus every holder's own copy.
        let mut set_views = Vec::new();
        let mut reg_views = Vec::new();
        let mut read_failures = Vec::new();
        for i in c.members() {
            let mut conn = c.conn(i);
            for k in &keys {
                let sib = match conn.call(&[b"SIBLINGS", k.as_bytes()]) {
                    Reply::Ok(r) => sibling_set(&r).unwrap_or_else(|e| panic!("{e}")).unwrap_or_default().1,
                    other => {
                        read_failures.push(format!("SIBLINGS {k} via node {i}: {other:?}"));
                        continue;
                    }
                };
                let source = format!("SIBLINGS via node {i}");
                if k.starts_with("set:") {
                    set_views.push(SetView {
                        source,
                        key: k.clone(),
                        values: sib,
                    });
                } else {
                    let get = match conn.call(&[b"GET", k.as_bytes()]) {
                        Reply::Ok(crate::common::Resp::Bulk(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                        Reply::Ok(crate::common::Resp::Nil) => None,
                        other => {
                            read_failures.push(format!("GET {k} via node {i}: {other:?}"));
                            continue;
                        }
                    };
                    reg_views.push(RegView {
                        source,
                        key: k.clone(),
                        get: Some(get),
                        siblings: sib,
                    });
                }
            }
        }
        let members = c.members();
        for (k, copies) in snapshot(c, &keys) {
            for (&i, copy) in members.iter().zip(copies) {
                let Some((_, values)) = copy else { continue };
                let source = format!("DYNKV.LOCAL on node {i}");
                if k.starts_with("set:") {
                    set_views.push(SetView {
                        source,
                        key: k.clone(),
                        values,
                    });
                } else {
                    reg_views.push(RegView {
                        source,
                        key: k.clone(),
                        get: None,
                        siblings: values,
                    });
                }
            }
        }
        let sets = check::check_sets(&history, &set_views);
        let regs = check::check_registers(&history, &reg_views);
        let availability = check::availability(&history, &spans);
        let writes = history.iter().filter(|o| o.kind.is_write()).count();
        let acked = history.iter().filter(|o| o.kind.is_write() && o.outcome.ok()).count();
        let _ = writeln!(
            report,
            "ops: {} ({} writes, {} acknowledged); set adds: {} acknowledged of {} sent, {} unacknowledged present",
            history.len(),
            writes,
            acked,
            sets.acked,
            sets.attempted,
            sets.unacked_present
        );
        for f in &spans {
            let _ = writeln!(report, "fault {:?}: {}..{} ms", f.kind, f.start_ms, f.end_ms);
        }
        let _ = write!(
            report,
            "availability of writes:\n{}",
            check::availability_table(&availability)
        );
        let _ = write!(report, "INFO after the run:\n{}", node_figures(c));
        let _ = writeln!(report, "wall time {:.1} s", self.started.elapsed().as_secs_f64());
        eprintln!("==== fault run `{}` (seed {}) ====\n{report}", s.name, s.seed);

        let mut failures = Vec::new();
        if !read_failures.is_empty() {
            failures.push(format!("final reads failed: {read_failures:#?}"));
        }
        for ((source, key), lost) in &sets.lost {
            let ops: Vec<&Op> = history
                .iter()
                .filter(|o| o.key == *key && lost.contains(&o.value))
                .collect();
            failures.push(format!(
                "LOST acknowledged set elements in {key} ({source}): {lost:?}\n  their adds: {ops:#?}"
            ));
        }
        for ((source, key), p) in &sets.phantoms {
            failures.push(format!("PHANTOM set elements in {key} ({source}): {p:?}"));
        }
        if !sets.unread.is_empty() {
            failures.push(format!("set keys never read back: {:?}", sets.unread));
        }
        for v in &regs {
            let tail: Vec<&Op> = history
                .iter()
                .filter(|o| o.key == v.key && o.kind == history::Kind::Set)
                .rev()
                .take(6)
                .collect();
            failures.push(format!(
                "REGISTER {} ({}): {}\n  last writes: {tail:#?}",
                v.key, v.source, v.detail
            ));
        }
        if !handoffs_finished {
            failures.push(format!(
                "handoffs not finished within {:?} after the cooldown (every member: ring_state:stable, \
                 no member joining or leaving, transfer_partitions_done = transfer_partitions_total):\n{}",
                s.passive_timeout,
                ring::table(&rings)
            ));
        }
        if !on_own {
            failures.push(format!(
                "replicas did not converge on their own (every key on exactly N={n} nodes, holders agreeing) \
                 within {:?} after the cooldown: {apart_on_own:#?}",
                s.passive_timeout
            ));
        }
        if !failures.is_empty() {
            let path = dump_history(&s.name, &history, &spans);
            for node in c.nodes.iter().filter(|n| n.member()) {
                eprintln!("--- node {} log tail ---\n{}", node.index, node.log_tail(30));
            }
            panic!(
                "fault run `{}` failed (replay with DYNKV_FAULT_SEED={}; full history in {path}):\n{}",
                s.name,
                s.seed,
                failures.join("\n")
            );
        }
        RunReport {
            history,
            spans,
            availability,
            converged_after,
            antientropy: ae,
        }
    }
}

/// Runs a scenario's steps (each step's faults injected together, held, repaired, then
/// the quiet time), then [`Run::finish`].
pub fn run(s: &Scenario) -> RunReport {
    let mut r = Run::start(s);
    for (n, step) in s.steps.iter().enumerate() {
        eprintln!("[{:>6} ms] step {n}: {:?} for {} ms", r.ms(), step.faults, step.hold_ms);
        for f in &step.faults {
            r.inject(f.clone());
        }
        std::thread::sleep(Duration::from_millis(step.hold_ms));
        for f in &step.faults {
            r.repair(f);
        }
        std::thread::sleep(s.quiet);
    }
    r.finish()
}
