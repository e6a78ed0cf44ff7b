//! Live membership changes on real multi-process clusters: gossip spreads a new member
//! and a weight change; joins and leaves move partitions while clients write, lose
//! nothing, and end with every key on exactly N nodes; a transfer interrupted by a crash
//! resumes where it stopped.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, ClusterSetup, Raw, Resp, eventually, info_field, pipeline};

fn req(args: &[&[u8]]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.to_vec()).collect()
}

fn node_id(raw: &mut Raw) -> String {
    let text = common::info(raw, "cluster");
    info_field(&text, "node_id").expect("node_id in INFO")
}

fn status(raw: &mut Raw) -> String {
    raw.cmd(&[b"DYNKV.STATUS"]).text()
}

/// Waits until every running node in `nodes` reports a stable ring of `members` members.
fn wait_stable(c: &Cluster, nodes: &[usize], members: u64, timeout: Duration) {
    let ok = eventually(timeout, || {
        nodes.iter().all(|&i| {
            let mut r = c.raw(i);
            let s = status(&mut r);
            s.contains("ring stable") && common::known_nodes(c.node(i)) == Some(members)
        })
    });
    if !ok {
        let states: Vec<String> = nodes.iter().map(|&i| status(&mut c.raw(i))).collect();
        panic!(
            "the ring did not settle on {members} members within {timeout:?}:\n{}",
            states.join("\n")
        );
    }
}

/// How many of `nodes` hold each key (DYNKV.LOCAL), and whether every holder has `want`.
fn holders(c: &Cluster, nodes: &[usize], keys: &[String]) -> Vec<usize> {
    let mut count = vec![0; keys.len()];
    for &i in nodes {
        let mut r = c.raw(i);
        let reqs: Vec<_> = keys.iter().map(|k| req(&[b"DYNKV.LOCAL", k.as_bytes()])).collect();
        for (j, got) in pipeline(&mut r, &reqs).into_iter().enumerate() {
            if got != Resp::Nil {
                count[j] += 1;
            }
        }
    }
    count
}

/// Writes `count` keys `prefix:i` (value = key) through node 0 and returns them.
fn fill(c: &Cluster, prefix: &str, count: usize) -> Vec<String> {
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}:{i}")).collect();
    let sets: Vec<_> = keys
        .iter()
        .map(|k| req(&[b"SET", k.as_bytes(), k.as_bytes()]))
        .collect();
    assert!(
        pipeline(&mut c.raw(0), &sets)
            .iter()
            .all(|r| *r == Resp::Simple("OK".into()))
    );
    keys
}

/// Writes keys `writer:*` through node 0 until stopped; returns the keys acknowledged.
fn writer(c: &Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    let addr = c.node(0).addr();
    std::thread::spawn(move || {
        let mut raw = Raw::connect(addr);
        let mut acked = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let k = format!("writer:{i}");
            i += 1;
            if raw.cmd(&[b"SET", k.as_bytes(), k.as_bytes()]) == Resp::Simple("OK".into()) {
                acked.push(k);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        acked
    })
}

/// Every key readable with its value through `via`, and held by exactly `n` of `nodes`.
fn check_all(c: &Cluster, via: usize, nodes: &[usize], keys: &[String], n: usize) {
    let mut r = c.raw(via);
    let gets: Vec<_> = keys.iter().map(|k| req(&[b"GET", k.as_bytes()])).collect();
    for (k, got) in keys.iter().zip(pipeline(&mut r, &gets)) {
        assert_eq!(got, Resp::bulk(k), "GET {k} through node {via}");
    }
    let ok = eventually(Duration::from_secs(30), || {
        holders(c, nodes, keys).iter().all(|&h| h == n)
    });
    if !ok {
        let h = holders(c, nodes, keys);
        let off: Vec<(&String, usize)> = keys.iter().zip(h).filter(|(_, h)| *h != n).take(10).collect();
        panic!("keys not on exactly {n} nodes: {off:?}");
    }
}

#[test]
fn gossip_spreads_a_new_member_and_a_weight_change_within_seconds() {
    let mut c = Cluster::start_with(ClusterSetup::new(3));
    let started = Instant::now();
    let new = c.add_node(&[]);
    let id = node_id(&mut c.raw(new));
    let learned = eventually(Duration::from_secs(5), || {
        (0..3).all(|i| status(&mut c.raw(i)).contains(&id))
    });
    assert!(learned, "the members did not learn the new node within 5 s");
    eprintln!("new member known to all in {:?}", started.elapsed());
    wait_stable(&c, &[0, 1, 2, new], 4, Duration::from_secs(20));
    eprintln!("join complete in {:?}", started.elapsed());
    let t = Instant::now();
    assert_eq!(
        c.raw(1).cmd(&[b"DYNKV.WEIGHT", id.as_bytes(), b"2"]),
        Resp::Simple("OK".into())
    );
    let spread = eventually(Duration::from_secs(5), || {
        (0..4).all(|i| {
            status(&mut c.raw(i)).contains(&format!("{id} ")) && {
                let s = status(&mut c.raw(i));
                s.lines().any(|l| l.contains(&id) && l.contains("target=2"))
            }
        })
    });
    assert!(spread, "the weight change did not reach every node within 5 s");
    eprintln!("weight change known to all in {:?}", t.elapsed());
    wait_stable(&c, &[0, 1, 2, new], 4, Duration::from_secs(20));
    let ring = c.raw(0).cmd(&[b"DYNKV.RING"]).text();
    eprintln!("{ring}");
    let led = |line: &str| -> usize {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix("led="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let heavy = ring.lines().find(|l| l.starts_with(&id)).map(led).unwrap_or(0);
    let others: Vec<usize> = ring.lines().filter(|l| !l.starts_with(&id)).map(led).collect();
    let mean = others.iter().sum::<usize>() as f64 / others.len() as f64;
    assert!(
        heavy as f64 > 1.6 * mean,
        "weight 2 leads {heavy} partitions, the others {others:?}"
    );
    // Unknown nodes and bad weights are refused.
    let bad = c.raw(0).cmd(&[b"DYNKV.WEIGHT", b"00000000000000ab", b"2"]);
    assert!(matches!(bad, Resp::Error(e) if e.contains("no member")));
    let bad = c.raw(0).cmd(&[b"DYNKV.WEIGHT", id.as_bytes(), b"-1"]);
    assert!(matches!(bad, Resp::Error(_)));
}

#[test]
fn a_join_and_a_leave_under_writes_lose_nothing_and_end_on_exactly_n_nodes() {
    let mut c = Cluster::start_with(ClusterSetup::new(3));
    let keys = fill(&c, "k", 3000);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&c, stop.clone());
    let before: Vec<usize> = holders(&c, &[0, 1, 2], &keys);
    assert!(before.iter().all(|&h| h == 3));
    // Join a fourth node.
    let t = Instant::now();
    let new = c.add_node(&[]);
    wait_stable(&c, &[0, 1, 2, new], 4, Duration::from_secs(60));
    eprintln!("join of a 4th node complete in {:?}", t.elapsed());
    let moved = holders(&c, &[new], &keys).iter().sum::<usize>();
    eprintln!(
        "keys on the new node: {moved} of {} (ideal N/(S+1) of the replicas: {:.0})",
        keys.len(),
        keys.len() as f64 * 3.0 * (1.0 / 4.0)
    );
    check_all(&c, 1, &[0, 1, 2, new], &keys, 3);
    // Node 2 leaves.
    let t = Instant::now();
    assert_eq!(c.raw(2).cmd(&[b"DYNKV.LEAVE"]), Resp::Simple("OK".into()));
    wait_stable(&c, &[0, 1, new], 3, Duration::from_secs(60));
    eprintln!("leave complete in {:?}", t.elapsed());
    stop.store(true, Ordering::Relaxed);
    let acked = w.join().expect("writer");
    eprintln!("{} writes acknowledged during the changes", acked.len());
    check_all(&c, new, &[0, 1, new], &keys, 3);
    check_all(&c, 0, &[0, 1, new], &acked, 3);
    // The node that left holds nothing any more.
    let left = eventually(Duration::from_secs(30), || {
        holders(&c, &[2], &keys).iter().all(|&h| h == 0)
    });
    assert!(left, "the node that left still holds records");
}

/// The `bytes` figure of a node's transfer line in DYNKV.STATUS.
fn transfer_bytes(raw: &mut Raw) -> u64 {
    let s = status(raw);
    s.lines()
        .find(|l| l.starts_with("transfer:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words
                .windows(2)
                .find(|w| w[0] == "bytes")
                .and_then(|w| w[1].parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_transfer_killed_midway_resumes_where_it_stopped() {
    let mut c = Cluster::start_with(ClusterSetup::new(3));
    let keys: Vec<String> = (0..2000).map(|i| format!("big:{i}")).collect();
    let value = "v".repeat(200);
    let sets: Vec<_> = keys
        .iter()
        .map(|k| req(&[b"SET", k.as_bytes(), value.as_bytes()]))
        .collect();
    assert!(
        pipeline(&mut c.raw(0), &sets)
            .iter()
            .all(|r| *r == Resp::Simple("OK".into()))
    );
    // A slow pull (about 100 KB/s) so that it can be interrupted.
    let new = c.add_node(&["--transfer-bytes-per-sec", "100000"]);
    let mut seen = 0;
    let midway = eventually(Duration::from_secs(30), || {
        seen = transfer_bytes(&mut c.raw(new));
        seen >= 150_000
    });
    assert!(midway, "the pull never got going ({seen} bytes)");
    c.node_mut(new).kill9();
    assert!(
        !status(&mut c.raw(0)).contains("ring stable"),
        "the join cannot have completed while the new node was pulling"
    );
    c.node_mut(new).start_again();
    let log_has_resume = eventually(Duration::from_secs(10), || {
        c.node(new).log().contains("resuming partition pull")
    });
    assert!(log_has_resume, "the restarted node did not resume its pull");
    let line = c
        .node(new)
        .log()
        .lines()
        .find(|l| l.contains("resuming partition pull"))
        .map(str::to_string)
        .unwrap_or_default();
    let resumed_at: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(resumed_at > 0, "resumed from zero: {line}");
    wait_stable(&c, &[0, 1, 2, new], 4, Duration::from_secs(60));
    let total = transfer_bytes(&mut c.raw(new));
    eprintln!("killed after {seen} bytes seen; resumed at {resumed_at} bytes; {total} bytes in all");
    assert!(total >= resumed_at);
    // Every key survived the interrupted move on exactly N nodes.
    let mut r = c.raw(new);
    let gets: Vec<_> = keys.iter().map(|k| req(&[b"GET", k.as_bytes()])).collect();
    for (k, got) in keys.iter().zip(pipeline(&mut r, &gets)) {
        assert_eq!(got, Resp::bulk(&value), "GET {k}");
    }
    let ok = eventually(Duration::from_secs(30), || {
        holders(&c, &[0, 1, 2, new], &keys).iter().all(|&h| h == 3)
    });
    assert!(ok, "keys not on exactly 3 nodes after the resumed join");
}

/// The keys each of `nodes` holds (DYNKV.LOCAL), as sets of key indices.
fn held_sets(c: &Cluster, nodes: &[usize], keys: &[String]) -> Vec<std::collections::BTreeSet<usize>> {
    nodes
        .iter()
        .map(|&i| {
            let mut r = c.raw(i);
            let reqs: Vec<_> = keys.iter().map(|k| req(&[b"DYNKV.LOCAL", k.as_bytes()])).collect();
            pipeline(&mut r, &reqs)
                .into_iter()
                .enumerate()
                .filter(|(_, got)| *got != Resp::Nil)
                .map(|(j, _)| j)
                .collect()
        })
        .collect()
}

/// One step's figures: copies that appeared on a node that did not hold them before.
struct Step {
    name: &'static str,
    moved: usize,
    ideal: f64,
    min: usize,
    max: usize,
}

fn measure(
    name: &'static str,
    before: &std::collections::BTreeMap<usize, std::collections::BTreeSet<usize>>,
    after: &std::collections::BTreeMap<usize, std::collections::BTreeSet<usize>>,
    ideal: f64,
) -> Step {
    let moved = after
        .iter()
        .map(|(n, held)| held.difference(before.get(n).unwrap_or(&Default::default())).count())
        .sum();
    let sizes: Vec<usize> = after.values().map(|h| h.len()).collect();
    Step {
        name,
        moved,
        ideal,
        min: sizes.iter().copied().min().unwrap_or(0),
        max: sizes.iter().copied().max().unwrap_or(0),
    }
}

fn snapshot(
    c: &Cluster,
    nodes: &[usize],
    keys: &[String],
) -> std::collections::BTreeMap<usize, std::collections::BTreeSet<usize>> {
    nodes.iter().copied().zip(held_sets(c, nodes, keys)).collect()
}

fn replicas_of(ring: &str, id: &str) -> f64 {
    ring.lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("replicas=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Grows 3 -> 5 -> 6, shrinks 6 -> 4, then gives one node weight 2: each step moves about
/// the ideal number of copies, spreads keys evenly, ends with every key on exactly N
/// nodes and readable; a restart of the whole cluster comes back with the same ring.
#[test]
fn growth_and_shrink_move_about_the_ideal_and_a_full_restart_keeps_the_ring() {
    const N: f64 = 3.0;
    let mut c = Cluster::start_with(ClusterSetup::new(3));
    let keys = fill(&c, "g", 3000);
    let total = keys.len() as f64 * N;
    let mut live: Vec<usize> = vec![0, 1, 2];
    let mut steps = Vec::new();

    let before = snapshot(&c, &live, &keys);
    let (a, b) = (c.add_node(&[]), c.add_node(&[]));
    live.extend([a, b]);
    wait_stable(&c, &live, 5, Duration::from_secs(60));
    check_all(&c, 0, &live, &keys, 3);
    steps.push(measure(
        "join 3 -> 5",
        &before,
        &snapshot(&c, &live, &keys),
        total * 2.0 / 5.0,
    ));

    let before = snapshot(&c, &live, &keys);
    let f = c.add_node(&[]);
    live.push(f);
    wait_stable(&c, &live, 6, Duration::from_secs(60));
    check_all(&c, f, &live, &keys, 3);
    steps.push(measure(
        "join 5 -> 6",
        &before,
        &snapshot(&c, &live, &keys),
        total / 6.0,
    ));

    let before = snapshot(&c, &live, &keys);
    for leaver in [1, a] {
        assert_eq!(c.raw(leaver).cmd(&[b"DYNKV.LEAVE"]), Resp::Simple("OK".into()));
    }
    live.retain(|n| *n != 1 && *n != a);
    wait_stable(&c, &live, 4, Duration::from_secs(60));
    check_all(&c, 0, &live, &keys, 3);
    let gone = eventually(Duration::from_secs(30), || {
        held_sets(&c, &[1, a], &keys).iter().all(|h| h.is_empty())
    });
    assert!(gone, "the nodes that left still hold records");
    steps.push(measure(
        "leave 6 -> 4",
        &before,
        &snapshot(&c, &live, &keys),
        total * 2.0 / 6.0,
    ));
    for leaver in [1, a] {
        c.node_mut(leaver).stop();
    }

    let before = snapshot(&c, &live, &keys);
    let heavy = node_id(&mut c.raw(f));
    let ring_before = c.raw(0).cmd(&[b"DYNKV.RING"]).text();
    assert_eq!(
        c.raw(0).cmd(&[b"DYNKV.WEIGHT", heavy.as_bytes(), b"2"]),
        Resp::Simple("OK".into())
    );
    wait_stable(&c, &live, 4, Duration::from_secs(60));
    check_all(&c, 0, &live, &keys, 3);
    let ring_after = c.raw(0).cmd(&[b"DYNKV.RING"]).text();
    let gained = replicas_of(&ring_after, &heavy) - replicas_of(&ring_before, &heavy);
    let after = snapshot(&c, &live, &keys);
    steps.push(measure(
        "weight 1 -> 2 (4 nodes)",
        &before,
        &after,
        keys.len() as f64 * gained / 16384.0,
    ));
    let heavy_keys = after.get(&f).map_or(0, |h| h.len());

    eprintln!("| change | copies moved | ideal | moved/ideal | min keys/node | max keys/node |");
    eprintln!("|---|---|---|---|---|---|");
    for s in &steps {
        eprintln!(
            "| {} | {} | {:.0} | {:.3} | {} | {} |",
            s.name,
            s.moved,
            s.ideal,
            s.moved as f64 / s.ideal,
            s.min,
            s.max
        );
    }
    eprintln!("weight-2 node holds {heavy_keys} keys; ring after:\n{ring_after}");
    for s in &steps {
        let ratio = s.moved as f64 / s.ideal;
        assert!(
            (0.8..1.2).contains(&ratio),
            "{}: moved {} vs ideal {:.0}",
            s.name,
            s.moved,
            s.ideal
        );
    }
    for s in &steps[..3] {
        assert!(
            s.max as f64 <= 1.25 * s.min as f64,
            "{}: spread {}..{}",
            s.name,
            s.min,
            s.max
        );
    }

    // The whole cluster stops and starts again: same ring, same data.
    for &n in &live {
        c.node_mut(n).stop();
    }
    for &n in &live {
        c.node_mut(n).start_again();
    }
    wait_stable(&c, &live, 4, Duration::from_secs(30));
    let ring_restarted = c.raw(f).cmd(&[b"DYNKV.RING"]).text();
    assert_eq!(ring_restarted, ring_after, "the ring changed across a full restart");
    check_all(&c, f, &live, &keys, 3);
}

/// A node that died for good is removed by an operator: its partitions are rebuilt on
/// the others from the surviving replicas, and every key ends on exactly N nodes.
#[test]
fn removing_a_dead_node_rebuilds_its_replicas_from_the_others() {
    let mut c = Cluster::start_with(ClusterSetup::new(4).args(&["--failure-timeout-ms", "1000"]));
    let keys = fill(&c, "r", 2000);
    let dead = node_id(&mut c.raw(3));
    c.node_mut(3).kill9();
    let seen_down = eventually(Duration::from_secs(10), || {
        (0..3).all(|i| {
            status(&mut c.raw(i))
                .lines()
                .any(|l| l.trim_start().starts_with(&dead) && l.ends_with("down"))
        })
    });
    assert!(seen_down, "the dead node was never seen down");
    let t = Instant::now();
    assert_eq!(
        c.raw(1).cmd(&[b"DYNKV.REMOVE", dead.as_bytes()]),
        Resp::Simple("OK".into())
    );
    wait_stable(&c, &[0, 1, 2], 3, Duration::from_secs(60));
    eprintln!("removal complete in {:?}", t.elapsed());
    assert!(
        status(&mut c.raw(0))
            .lines()
            .any(|l| l.trim_start().starts_with(&dead) && l.contains("state=removed")),
        "the dead node is not shown removed"
    );
    check_all(&c, 2, &[0, 1, 2], &keys, 3);
    // A second removal of the same node is refused.
    let again = c.raw(0).cmd(&[b"DYNKV.REMOVE", dead.as_bytes()]);
    assert!(matches!(again, Resp::Error(e) if e.contains("removed")));
}
