//! dynkv's fault-injection harness: real processes in real network namespaces, real
//! faults (SIGKILL + restart, SIGSTOP/SIGCONT, isolation, majority/minority splits,
//! one-way loss), concurrent clients recording every request, and checkers over the
//! history (set workload with siblings, registers, convergence, availability).
//!
//! Needs root and iproute2 (`ip`); nothing else. A run prints `DYNKV_FAULT_SEED=...`;
//! setting that variable replays the same schedule; `DYNKV_FAULT_SOAK=1` runs longer.

#![allow(dead_code)]

pub mod check;
pub mod client;
pub mod cluster;
pub mod history;
pub mod net;
pub mod schedule;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use check::{Copy, RegView, SetView};
use client::{Reply, sibling_set};
use cluster::{FaultCluster, FaultSetup};
use history::{FaultSpan, Op};
use schedule::Step;
use workload::{Clients, Workload};

/// Whether convergence must come from the nodes themselves (hinted handoff, anti-entropy)
/// and every key must end on exactly N nodes. Off until the store promises it; set
/// `DYNKV_FAULT_STRICT=1` to require it now.
pub fn strict() -> bool {
    std::env::var("DYNKV_FAULT_STRICT").is_ok_and(|v| v == "1")
}

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
    /// Longest wait for hints to drain, then for replicas to agree on their own.
    pub passive_timeout: Duration,
    /// Longest further wait for replicas to agree while every key is read (read repair).
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
            repair_timeout: Duration::from_secs(20),
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
    /// Seconds from the final heal until every replica agreed, and how.
    pub converge: String,
}

/// Sum of INFO fields named like `hints_pending*` over the nodes; `None` when no node
/// reports such a field (a binary without hinted handoff).
fn hints_pending(c: &FaultCluster) -> Option<u64> {
    let mut any = false;
    let mut sum = 0;
    for i in 0..c.nodes.len() {
        let Some(text) = c.info_text(i, "all") else { continue };
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(':')
                && k.starts_with("hints_pending")
            {
                any = true;
                sum += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    any.then_some(sum)
}

/// INFO lines about failure detection and handoff (for the report), per node.
fn handoff_figures(c: &FaultCluster) -> String {
    let mut out = String::new();
    for i in 0..c.nodes.len() {
        let Some(text) = c.info_text(i, "all") else {
            let _ = writeln!(out, "  node {i}: INFO failed");
            continue;
        };
        let fields: Vec<&str> = text
            .lines()
            .filter(|l| {
                ["hint", "sloppy", "peers", "quorum_failures", "read_repairs"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect();
        let _ = writeln!(out, "  node {i}: {}", fields.join(" "));
    }
    out
}

/// Every node's own copy of every key.
fn snapshot(c: &FaultCluster, keys: &[String]) -> BTreeMap<String, Vec<Copy>> {
    let mut conns: Vec<_> = (0..c.nodes.len()).map(|i| c.conn(i)).collect();
    keys.iter()
        .map(|k| {
            let copies = conns
                .iter_mut()
                .enumerate()
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

/// Runs a scenario; panics with the checkers' findings (and where the history was written)
/// when an acknowledged write is lost, a register is wrong or replicas do not converge.
pub fn run(s: &Scenario) -> RunReport {
    let started = Instant::now();
    let mut c = FaultCluster::start(s.setup.clone());
    let addrs: Vec<_> = c.nodes.iter().map(|n| n.addr()).collect();
    let t0 = Instant::now();
    let ms = |t0: Instant| t0.elapsed().as_millis() as u64;
    let clients = Clients::start(&s.workload, &addrs, t0, s.seed);
    std::thread::sleep(s.warmup);
    let mut spans = Vec::new();
    for (n, step) in s.steps.iter().enumerate() {
        eprintln!("[{:>6} ms] step {n}: {:?} for {} ms", ms(t0), step.faults, step.hold_ms);
        let mut open = Vec::new();
        for f in &step.faults {
            schedule::inject(&mut c, f);
            open.push((f.clone(), ms(t0)));
        }
        std::thread::sleep(Duration::from_millis(step.hold_ms));
        for (f, start) in open {
            schedule::repair(&mut c, &f);
            spans.push(FaultSpan {
                kind: f,
                start_ms: start,
                end_ms: ms(t0),
            });
        }
        std::thread::sleep(s.quiet);
    }
    c.heal_everything();
    let healed = Instant::now();
    eprintln!("[{:>6} ms] healed; cooldown", ms(t0));
    std::thread::sleep(s.cooldown);
    let history = clients.stop();

    // Hints drained (when the binary reports them).
    let mut report = String::new();
    let hints = hints_pending(&c);
    let drain_deadline = Instant::now() + s.passive_timeout;
    let hints_after = match hints {
        None => "not reported by this binary".to_string(),
        Some(_) => loop {
            let h = hints_pending(&c).unwrap_or(0);
            if h == 0 {
                break format!("drained {:.1} s after heal", healed.elapsed().as_secs_f64());
            }
            if Instant::now() >= drain_deadline {
                break format!("{h} still pending {:.1} s after heal", healed.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(200));
        },
    };
    let _ = writeln!(report, "hints: {hints_after}");

    // Convergence: first on the nodes' own (handoff, anti-entropy), then helped by one
    // read of every key through every node (read repair), as a client would.
    let mut keys = workload::set_keys(s.workload.set_keys);
    keys.extend((0..s.workload.clients).map(workload::reg_key));
    let passive_until = healed + s.cooldown + s.passive_timeout;
    let mut conv = check::check_convergence(&snapshot(&c, &keys));
    while !conv.converged() && Instant::now() < passive_until {
        std::thread::sleep(Duration::from_millis(250));
        conv = check::check_convergence(&snapshot(&c, &keys));
    }
    let mut how = if conv.converged() {
        format!(
            "converged on its own {:.1} s after heal",
            healed.elapsed().as_secs_f64()
        )
    } else {
        String::new()
    };
    if !conv.converged() {
        let unconverged: Vec<String> = conv.diverged.keys().cloned().collect();
        let _ = writeln!(
            report,
            "not converged on its own {:.1} s after heal; each node's copy (None = holds none):",
            healed.elapsed().as_secs_f64()
        );
        for (k, copies) in &conv.diverged {
            let _ = writeln!(report, "  {k}: {copies:?}");
        }
        let help_until = Instant::now() + s.repair_timeout;
        loop {
            for i in 0..c.nodes.len() {
                let mut conn = c.conn(i);
                for k in &unconverged {
                    let _ = conn.call(&[b"SIBLINGS", k.as_bytes()]);
                }
            }
            std::thread::sleep(Duration::from_millis(300));
            conv = check::check_convergence(&snapshot(&c, &keys));
            if conv.converged() || Instant::now() >= help_until {
                break;
            }
        }
        if conv.converged() {
            how = format!(
                "converged after read repair {:.1} s after heal",
                healed.elapsed().as_secs_f64()
            );
        }
    }
    let holders_off = conv.not_on(s.setup.nrw.0);
    let _ = writeln!(
        report,
        "convergence: {}; keys not on exactly N={} nodes: {holders_off:?}",
        if how.is_empty() { "NOT CONVERGED" } else { &how },
        s.setup.nrw.0
    );

    // Final reads through every node, plus every holder's own copy.
    let mut set_views = Vec::new();
    let mut reg_views = Vec::new();
    let mut read_failures = Vec::new();
    for i in 0..c.nodes.len() {
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
    for (k, copies) in snapshot(&c, &keys) {
        for (i, copy) in copies.into_iter().enumerate() {
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
    let _ = write!(
        report,
        "availability of writes:\n{}",
        check::availability_table(&availability)
    );
    let _ = write!(report, "INFO after the run:\n{}", handoff_figures(&c));
    let _ = writeln!(report, "wall time {:.1} s", started.elapsed().as_secs_f64());
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
    if !conv.converged() {
        failures.push(format!("replicas NOT CONVERGED: {:#?}", conv.diverged));
    }
    if strict() {
        if !how.starts_with("converged on its own") {
            failures.push("strict: replicas did not converge without read repair".into());
        }
        if !holders_off.is_empty() {
            failures.push(format!("strict: keys not on exactly N nodes: {holders_off:?}"));
        }
    }
    if !failures.is_empty() {
        let path = dump_history(&s.name, &history, &spans);
        for n in &c.nodes {
            eprintln!("--- node {} log tail ---\n{}", n.index, n.log_tail(30));
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
        converge: how,
    }
}
