//! Fault injection against real dynkv processes in real network namespaces (needs root
//! and iproute2; CI runs as root): randomized fault schedules plus one small test per
//! fault kind, each checked for lost acknowledged writes (set and register workloads) and
//! for convergence of every replica after healing. See `tests/fault/mod.rs`.
//!
//! `DYNKV_FAULT_SEED=n` replays a randomized run; `DYNKV_FAULT_SOAK=1` runs many more
//! steps; `DYNKV_FAULT_STRICT=1` also requires convergence without read repair and every
//! key on exactly N nodes.

mod common;
mod fault;

use std::sync::{Mutex, MutexGuard};

use fault::history::FaultKind;
use fault::schedule::{self, Step};
use fault::{Scenario, run};

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
