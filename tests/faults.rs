//! Fault injection against real dynkv processes in real network namespaces (needs root
//! and iproute2; CI runs as root): randomized fault schedules plus one small test per
//! fault kind, each checked for lost acknowledged writes (set and register workloads) and
//! for convergence of every replica after healing, on the nodes' own (hinted handoff,
//! anti-entropy; no read repair) and with every key on exactly N nodes; and the cluster
//! growing 3 → 5 → 6 and shrinking to 4 under the same workload, with a joining node
//! killed mid-pull, ending with every handoff finished. See `tests/fault/mod.rs`.
//!
//! `DYNKV_FAULT_SEED=n` replays a randomized run; `DYNKV_FAULT_SOAK=1` runs many more
//! steps.

mod common;
mod fault;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fault::client::Reply;
use fault::cluster::FaultSetup;
use fault::history::{FaultKind, Op};
use fault::ring::{self, RingInfo};
use fault::schedule::{self, Step};
use fault::{Run, Scenario, node_field, run};

static SERIAL: Mutex<()> = Mutex::new(());

/// One cluster at a time: on 2 cores, two would turn timeouts into noise.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn randomized_fault_schedules_lose_no_acknowledged_write() {
    let _g = serial();
    // Ten independent schedules, each on a fresh cluster and checked on its own; schedule
    // i uses seed + i, so `DYNKV_FAULT_SEED` replays the whole series.
    let seed = fault::seed();
    let steps = if fault::soak() { 20 } else { 3 };
    for i in 0..10u64 {
        let s = seed.wrapping_add(i);
        eprintln!("schedule {} of 10: seed {s}", i + 1);
        let plan = schedule::plan(s, steps, 5);
        let report = run(&Scenario::new(&format!("random-{i}"), s, plan));
        assert!(!report.spans.is_empty());
    }
}

fn one(name: &str, fault: FaultKind) {
    let _g = serial();
    let step = Step {
        faults: vec![fault],
        hold_ms: 4000,
    };
    run(&Scenario::new(name, 1, vec![step]));
}

#[test]
fn isolating_one_node_loses_nothing() {
    one("isolate", FaultKind::Isolate(4));
}

#[test]
fn a_three_two_split_loses_nothing() {
    one("split", FaultKind::Split(vec![3, 4]));
}

#[test]
fn a_paused_node_loses_nothing() {
    one("pause", FaultKind::Pause(2));
}

#[test]
fn a_killed_and_restarted_node_loses_nothing() {
    one("kill", FaultKind::Kill(1));
}

#[test]
fn one_way_loss_loses_nothing() {
    one("one-way", FaultKind::OneWay { to: 0, from: 1 });
}

/// A node is down while the clients write, so writes for it go to fallbacks as hints;
/// then the fallback holding the most of them loses its disk (SIGKILL, data directory
/// deleted, restarted as the same member with `--node-id`): its hints are gone and so are
/// its own replicas. Then the down node comes back. With W=2 and one disk lost, every
/// acknowledged write survives on some node, and anti-entropy alone (no read is sent
/// before the check) must bring every replica to the same sibling set, every key on
/// exactly N nodes, within 21 s of the heal (1 s cooldown with the clients running, then
/// 20 s of passive timeout).
///
/// Besides the usual clients (whose keys every later write refreshes anyway), 100 cold
/// keys are written once while the node is down and never again: for those, only hinted
/// handoff and anti-entropy can bring the copies to the restarted and the wiped node.
#[test]
fn a_wiped_fallback_loses_its_hints_and_anti_entropy_alone_repairs_the_replicas() {
    let _g = serial();
    let mut s = Scenario::new("wipe-fallback", 1, Vec::new());
    s.passive_timeout = Duration::from_secs(20);
    let down = 1;
    let mut r = Run::start(&s);
    let down_id = r.c.node_id(down);
    r.inject(FaultKind::Kill(down));
    let live: Vec<usize> = (0..r.c.nodes.len()).filter(|&i| i != down).collect();
    // Until the others call it down, writes it coordinates fail; after, they go to
    // fallbacks as hints, which is what this test is about.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !live.iter().all(|&i| node_field(&r.c, i, "peers_down") == Some(1)) {
        assert!(
            Instant::now() < deadline,
            "node {down} not reported down by every other node within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("[{:>6} ms] node {down} down for every other node", r.ms());
    let cold: Vec<String> = (0..100).map(|i| format!("cold:{i}")).collect();
    let acked = r.write_once(&cold, &live);
    eprintln!(
        "cold keys: {acked} of {} writes acknowledged with node {down} down",
        cold.len()
    );
    assert!(
        acked * 2 > cold.len(),
        "with one node of five down, most W=2 writes must be acknowledged: {acked} of {}",
        cold.len()
    );
    // The clients keep writing with the node down.
    std::thread::sleep(Duration::from_secs(2));
    let field = format!("hints_pending_{down_id}");
    let hints: Vec<(usize, u64)> = live
        .iter()
        .map(|&i| (i, node_field(&r.c, i, &field).unwrap_or(0)))
        .collect();
    let &(wiped, most) = hints
        .iter()
        .max_by_key(|&&(i, h)| (h, std::cmp::Reverse(i)))
        .expect("live nodes");
    eprintln!("hints for node {down} ({down_id}) per node: {hints:?}; wiping node {wiped}");
    assert!(most > 0, "no fallback holds a hint for node {down}: {hints:?}");
    r.inject(FaultKind::Wipe(wiped));
    std::thread::sleep(Duration::from_secs(1));
    r.repair(&FaultKind::Wipe(wiped));
    eprintln!(
        "node {wiped} back on an empty disk: hints_pending {:?}",
        node_field(&r.c, wiped, "hints_pending")
    );
    std::thread::sleep(s.quiet);
    r.repair(&FaultKind::Kill(down));
    let report = r.finish();
    // The wiped node's own replicas of the cold keys came back; nothing read them and no
    // hint held them, so anti-entropy moved them.
    let ae = report.antientropy;
    assert!(
        ae.repaired + ae.pushed > 0,
        "replicas converged yet anti-entropy reports no record moved: {ae:?}"
    );
}

/// One membership change's figures, for the report.
struct Change {
    name: String,
    /// When it was started and when it was complete, on the history's clock.
    from_ms: u64,
    to_ms: u64,
    extra: String,
    nodes: Vec<(usize, Option<RingInfo>)>,
}

impl Change {
    /// The figures of `nodes` now, for a change started at `from_ms` and complete now.
    fn read(r: &Run, name: &str, from_ms: u64, extra: String, nodes: &[usize]) -> Change {
        let change = Change {
            name: name.into(),
            from_ms,
            to_ms: r.ms(),
            extra,
            nodes: nodes.iter().map(|&i| (i, ring::info(&r.c, i))).collect(),
        };
        eprintln!("[{:>6} ms] {}", r.ms(), change.summary(&[]));
        change
    }

    /// The figures, and the clients' writes while the change was in progress.
    fn summary(&self, history: &[Op]) -> String {
        let during: Vec<&Op> = history
            .iter()
            .filter(|o| o.kind.is_write() && (self.from_ms..self.to_ms).contains(&o.start_ms))
            .collect();
        let writes = if during.is_empty() {
            String::new()
        } else {
            format!(
                "; writes meanwhile: {} of {} acknowledged",
                during.iter().filter(|o| o.outcome.ok()).count(),
                during.len()
            )
        };
        let pulled: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|(i, r)| {
                let r = r.as_ref()?;
                Some(format!(
                    "node {i} {}/{} partitions {} keys {} B",
                    r.partitions_done, r.partitions_total, r.keys, r.bytes
                ))
            })
            .collect();
        format!(
            "{}: {:.1} s{}{writes}; pulled: {}",
            self.name,
            (self.to_ms - self.from_ms) as f64 / 1000.0,
            self.extra,
            pulled.join(", ")
        )
    }
}

/// The membership test: grows 3 → 5 → 6 nodes and shrinks 6 → 4 while the set and
/// register clients run (N=3 R=2 W=2), and SIGKILLs the sixth node halfway through its
/// pull (restarted on its data directory, it resumes). Namespaces exist for 6 nodes from
/// the start; nodes 3, 4 and 5 start with `--join` naming the running members. The first
/// clients talk to nodes 0-2, which run throughout; two more start on node 4 once it is
/// a member; the leavers are nodes 3 and 5 (one told `DYNKV.LEAVE` itself, the other
/// named through node 0), stopped only once they report themselves removed and hold no
/// record of any checked key. 200 cold keys written once before the growth, never again,
/// can reach their final replicas only through the transfers and handovers.
///
/// At the end, besides the usual checks (no lost acknowledged set element, registers
/// valid, every replica converged on its own with every key on exactly N of the 4
/// remaining nodes): every handoff finished (every remaining node reports
/// `ring_state:stable`, nobody joining or leaving, `transfer_partitions_done` =
/// `transfer_partitions_total`).
#[test]
fn growing_3_5_6_and_shrinking_to_4_under_the_workload_loses_nothing() {
    let _g = serial();
    let started = Instant::now();
    let seed = fault::seed();
    let mut s = Scenario::new("grow-shrink", seed, Vec::new());
    s.setup = FaultSetup {
        initial: 3,
        ..FaultSetup::new(6)
    };
    let pause = Duration::from_millis(1500);
    let stable_within = Duration::from_secs(30);
    let mut r = Run::start(&s);
    let cold: Vec<String> = (0..200).map(|i| format!("cold:{i}")).collect();
    let acked = r.write_once(&cold, &[0, 1, 2]);
    assert_eq!(acked, cold.len(), "a healthy 3-node cluster acknowledges every write");
    std::thread::sleep(pause);
    let mut changes = Vec::new();

    // 3 -> 5.
    let t = r.ms();
    eprintln!("[{:>6} ms] nodes 3 and 4 join", r.ms());
    r.c.join(3, &[]);
    r.c.join(4, &[]);
    ring::wait_stable(&r.c, &[0, 1, 2, 3, 4], 5, stable_within);
    changes.push(Change::read(&r, "join 3 -> 5", t, String::new(), &[0, 1, 2, 3, 4]));
    r.add_clients(2, &[4]);
    std::thread::sleep(pause);

    // 5 -> 6, the new node killed halfway through its pull. Its pull is throttled to
    // 10 KB/s so that there is a halfway to catch.
    let t = r.ms();
    eprintln!("[{:>6} ms] node 5 joins (pull throttled to 10 KB/s)", r.ms());
    r.c.join(5, &["--transfer-bytes-per-sec", "10000"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let midway = loop {
        let now = ring::info(&r.c, 5);
        if let Some(i) = now
            .as_ref()
            .filter(|i| i.keys > 0 && i.partitions_done < i.partitions_total)
        {
            break i.clone();
        }
        assert!(
            Instant::now() < deadline,
            "node 5 never seen halfway through its pull within 20 s: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The position is stored just after the figures move: give it a moment.
    std::thread::sleep(Duration::from_millis(200));
    let midway = ring::info(&r.c, 5).unwrap_or(midway);
    let log_before = r.c.nodes[5].log().len();
    r.inject(FaultKind::Kill(5));
    std::thread::sleep(Duration::from_millis(500));
    r.repair(&FaultKind::Kill(5));
    ring::wait_stable(&r.c, &[0, 1, 2, 3, 4, 5], 6, stable_within);
    let resumed = r.c.nodes[5].log()[log_before..]
        .lines()
        .find(|l| l.contains("resuming partition pull"))
        .map(str::to_string);
    eprintln!("node 5 killed at {midway:?}; after restart: {resumed:?}");
    assert!(
        resumed.is_some(),
        "node 5, killed after pulling {} keys, did not resume its pull once restarted",
        midway.keys
    );
    let extra = format!(
        " (SIGKILLed after {}/{} partitions, {} keys, {} B; resumed)",
        midway.partitions_done, midway.partitions_total, midway.keys, midway.bytes
    );
    changes.push(Change::read(&r, "join 5 -> 6", t, extra, &[0, 1, 2, 3, 4, 5]));
    std::thread::sleep(pause);

    // 6 -> 4: node 3 is told to leave, node 5 is named through node 0.
    let t = r.ms();
    let id5 = r.c.node_id(5);
    eprintln!("[{:>6} ms] nodes 3 and 5 ({id5}) leave", r.ms());
    let ok = Reply::Ok(common::Resp::Simple("OK".into()));
    assert_eq!(r.c.conn(3).call(&[b"DYNKV.LEAVE"]), ok, "DYNKV.LEAVE on node 3");
    assert_eq!(
        r.c.conn(0).call(&[b"DYNKV.LEAVE", id5.as_bytes()]),
        ok,
        "DYNKV.LEAVE {id5} through node 0"
    );
    let remaining = [0, 1, 2, 4];
    ring::wait_stable(&r.c, &remaining, 4, stable_within);
    let stable_after = r.ms() - t;
    let emptied = ring::wait_left(&r.c, &[3, 5], &r.keys(), stable_within);
    let extra = format!(
        " (ring stable after {:.1} s; leavers removed and empty {:.1} s later; leavers dropped {:?} records)",
        stable_after as f64 / 1000.0,
        emptied.as_secs_f64(),
        [3, 5].map(|i| ring::info(&r.c, i).map(|x| x.dropped))
    );
    changes.push(Change::read(&r, "leave 6 -> 4", t, extra, &remaining));
    r.c.retire(3);
    r.c.retire(5);
    std::thread::sleep(pause);

    let report = r.finish();
    eprintln!("==== grow-shrink (seed {seed}): per change ====");
    for c in &changes {
        eprintln!("  {}", c.summary(&report.history));
    }
    eprintln!(
        "  converged {:.1} s after the end; wall time {:.1} s",
        report.converged_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The network itself: isolation and rules cut exactly what they should, and everything
/// is gone after the guard drops.
#[test]
fn the_network_cuts_what_it_says_and_cleans_up() {
    let _g = serial();
    let mut net = fault::net::Net::create(2);
    let (ns0, br) = (net.ns(0), net.bridge());
    // Nothing listens on port 9: a reachable peer answers "connection refused" at once,
    // a cut one lets the 1 s timeout expire.
    let probe = |ns: &str, to: std::net::Ipv4Addr| -> bool {
        std::process::Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c"])
            .arg(format!("timeout 1 bash -c '</dev/tcp/{to}/9' 2>&1 | grep -q refused"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    assert!(probe(&net.ns(0), net.addr(1)), "node 0 reaches node 1");
    let from_root = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "timeout 1 bash -c '</dev/tcp/{}/9' 2>&1 | grep -q refused",
            net.addr(1)
        ))
        .status()
        .expect("bash");
    assert!(
        from_root.success(),
        "the root namespace reaches node 1 through the bridge"
    );
    assert!(probe(&net.ns(1), net.addr(0)), "node 1 reaches node 0");
    net.drop_from(1, 0);
    assert!(!probe(&net.ns(0), net.addr(1)), "node 1 drops what node 0 sends");
    assert!(
        !probe(&net.ns(1), net.addr(0)),
        "so node 1 gets no answer from node 0 either"
    );
    net.undrop(1, 0);
    assert!(probe(&net.ns(0), net.addr(1)), "healed");
    net.split(&[0], &[1]);
    assert!(
        !probe(&net.ns(0), net.addr(1)) && !probe(&net.ns(1), net.addr(0)),
        "split"
    );
    net.heal_all();
    net.isolate(1);
    assert!(!probe(&net.ns(0), net.addr(1)), "isolated");
    net.heal(1);
    assert!(probe(&net.ns(0), net.addr(1)), "isolation healed");
    drop(net);
    let list = fault::net::ip(&["netns", "list"]).expect("ip netns list");
    assert!(!list.contains(&ns0), "namespace left behind: {list}");
    let links = fault::net::ip(&["link", "show"]).expect("ip link");
    assert!(!links.contains(&br), "bridge left behind");
}
