//! Merkle anti-entropy and tombstone reaping against real multi-process clusters on
//! loopback: replicas that missed writes converge without any read, deletes and expiries
//! never come back when a replica returns without its hints, and a replaced node (empty
//! data directory, same `--node-id`) is refilled.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, ClusterSetup, Raw, Resp, info_u64, pipeline};

/// Fast exchanges so tests take seconds.
const AE: &[&str] = &["--anti-entropy-interval-ms", "100"];

/// One node's own copy of a key: `None` when it holds none, else (context, live values).
type Copy = Option<(String, Vec<Vec<u8>>)>;

fn req(args: &[&[u8]]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.to_vec()).collect()
}

/// Every node's own copy of each key (`None` = holds none).
fn copies(c: &Cluster, keys: &[String]) -> Vec<Vec<Copy>> {
    (0..c.nodes.len())
        .map(|i| {
            let mut raw = c.raw(i);
            let reqs: Vec<_> = keys.iter().map(|k| req(&[b"DYNKV.LOCAL", k.as_bytes()])).collect();
            pipeline(&mut raw, &reqs)
                .into_iter()
                .map(|r| match r {
                    Resp::Nil => None,
                    Resp::Array(v) if v.len() == 2 => {
                        Some((v[0].text(), v[1].items().iter().map(Resp::bytes).collect()))
                    }
                    other => panic!("DYNKV.LOCAL: {other:?}"),
                })
                .collect()
        })
        .collect()
}

/// Waits until `ok` holds for the copies, up to `timeout`; returns the time it took, or
/// panics showing the keys that still disagree.
fn converge(c: &Cluster, keys: &[String], timeout: Duration, ok: impl Fn(&str, &[Copy]) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let all = copies(c, keys);
        let bad: Vec<String> = keys
            .iter()
            .enumerate()
            .filter(|(k, key)| {
                let per_node: Vec<_> = all.iter().map(|node| node[*k].clone()).collect();
                !ok(key, &per_node)
            })
            .map(|(_, key)| key.clone())
            .collect();
        if bad.is_empty() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            let k = keys.iter().position(|k| *k == bad[0]).expect("key");
            let first: Vec<_> = all.iter().map(|node| node[k].clone()).collect();
            panic!(
                "{} keys did not converge within {timeout:?}; first {}: {first:?}",
                bad.len(),
                bad[0]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn all_equal(copies: &[Copy]) -> bool {
    copies.windows(2).all(|w| w[0] == w[1])
}

fn node_id(raw: &mut Raw) -> String {
    let text = common::info(raw, "cluster");
    common::info_field(&text, "node_id").expect("node_id in INFO")
}

/// A replica that was down while keys were written, overwritten and deleted converges
/// with the others through anti-entropy alone: no client reads a key, no hint exists
/// (three nodes, N=3: nobody can stand in).
#[test]
fn anti_entropy_alone_brings_a_replica_that_missed_writes_up_to_date() {
    let mut c = Cluster::start_with(ClusterSetup::new(3).args(AE));
    let keys: Vec<String> = (0..600).map(|i| format!("ae:{i}")).collect();
    let mut raw = c.raw(0);
    let sets: Vec<_> = keys[..300]
        .iter()
        .map(|k| req(&[b"SET", k.as_bytes(), b"before"]))
        .collect();
    assert!(
        pipeline(&mut raw, &sets)
            .iter()
            .all(|r| *r == Resp::Simple("OK".into()))
    );
    c.node_mut(2).kill9();
    // While node 2 is down: new keys, overwrites, deletes, an expiry.
    let mut writes = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        writes.push(match i % 4 {
            0 => req(&[b"SET", k.as_bytes(), format!("after-{i}").as_bytes()]),
            1 => req(&[b"DEL", k.as_bytes()]),
            2 => req(&[b"PEXPIRE", k.as_bytes(), b"600000"]),
            _ => req(&[b"APPEND", k.as_bytes(), b"+x"]),
        });
    }
    for r in pipeline(&mut raw, &writes) {
        assert!(!matches!(r, Resp::Error(_)), "write failed with a node down: {r:?}");
    }
    c.node_mut(2).start_again();
    let took = converge(&c, &keys, Duration::from_secs(30), |_, copies| all_equal(copies));
    let mut r2 = c.raw(2);
    let repaired = info_u64(&mut r2, "cluster", "antientropy_keys_repaired");
    let pushed: u64 = (0..3)
        .map(|i| info_u64(&mut c.raw(i), "cluster", "antientropy_keys_pushed"))
        .sum();
    eprintln!("converged {took:?} after restart; node 2 repaired {repaired} keys, {pushed} pushed in all");
    assert!(
        repaired + pushed > 0,
        "anti-entropy moved nothing, yet replicas converged?"
    );
    assert_eq!(
        info_u64(&mut r2, "stats", "read_repairs"),
        0,
        "convergence must not come from read repair here"
    );
    // And the values are the ones written.
    for (i, k) in keys.iter().enumerate().step_by(37) {
        let got = c.local(2, k.as_bytes());
        match i % 4 {
            0 => assert_eq!(got.map(|g| g.1), Some(vec![format!("after-{i}").into_bytes()])),
            1 if i < 300 => assert_eq!(got.map(|g| g.1), Some(vec![]), "{k} is a tombstone on node 2"),
            _ => {}
        }
    }
}

/// Keys deleted or expired while a replica was down and its fallback then lost every
/// hint stay deleted on every replica and through every read path once the replica
/// returns, and the tombstones are reaped (only) once every replica holds them.
#[test]
fn deletes_and_expiries_never_come_back_when_a_replica_returns_without_hints() {
    let grace = ["--tombstone-grace-secs", "1"];
    let mut c = Cluster::start_with(ClusterSetup::new(4).args(AE).args(&grace));
    let (down, fallback) = (2usize, 3usize);
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.port()).collect();
    let mut raw = c.raw(0);
    let layout = common::slot_layout(&mut raw);
    // Keys whose home replicas are nodes 0, 1 and 2: with node 2 down, node 3 stands in.
    let mut keys = Vec::new();
    let mut i = 0;
    while keys.len() < 200 {
        let k = format!("gone:{i}");
        i += 1;
        let slot = common::keyslot(&mut raw, k.as_bytes());
        let home = &layout[slot];
        if home.contains(&ports[down]) && !home.contains(&ports[fallback]) {
            keys.push(k);
        }
    }
    let sets: Vec<_> = keys.iter().map(|k| req(&[b"SET", k.as_bytes(), b"alive"])).collect();
    assert!(
        pipeline(&mut raw, &sets)
            .iter()
            .all(|r| *r == Resp::Simple("OK".into()))
    );
    converge(&c, &keys, Duration::from_secs(10), |_, copies| {
        copies[..3]
            .iter()
            .all(|c| c.as_ref().is_some_and(|c| c.1 == vec![b"alive".to_vec()]))
    });
    c.node_mut(down).kill9();
    let (deleted, expired) = keys.split_at(keys.len() / 2);
    let mut ops: Vec<_> = deleted.iter().map(|k| req(&[b"DEL", k.as_bytes()])).collect();
    ops.extend(expired.iter().map(|k| req(&[b"PEXPIRE", k.as_bytes(), b"300"])));
    // Until the detector calls node 2 down, W=2 comes from nodes 0 and 1 alone; keep
    // writing until the fallback has taken hints, so the wipe below loses something.
    for r in pipeline(&mut raw, &ops) {
        assert_eq!(r, Resp::Int(1), "DEL/PEXPIRE with a replica down");
    }
    let mut fb = c.raw(fallback);
    let hinted = common::eventually(Duration::from_secs(10), || {
        let again: Vec<_> = deleted.iter().map(|k| req(&[b"DEL", k.as_bytes()])).collect();
        pipeline(&mut raw, &again);
        info_u64(&mut fb, "cluster", "hints_pending") > 0
    });
    assert!(hinted, "the fallback never took a hint for the down node");
    // The fallback loses everything, hints included, and comes back as itself.
    let id = node_id(&mut fb);
    drop(fb);
    c.node_mut(fallback).kill9();
    std::fs::remove_dir_all(c.node(fallback).data_dir()).expect("wipe the fallback");
    c.node_mut(fallback).add_args(&["--node-id", &id]);
    c.node_mut(fallback).start_again();
    assert_eq!(info_u64(&mut c.raw(fallback), "cluster", "hints_pending"), 0);
    // The replica returns with the old live values.
    c.node_mut(down).start_again();
    assert_eq!(
        c.local(down, deleted[0].as_bytes()).map(|c| c.1),
        Some(vec![b"alive".to_vec()]),
        "node 2 still has the value it held before the delete"
    );
    // Every read path, from now on until the end: nothing comes back.
    let reads_nil = |c: &Cluster| {
        for i in 0..4 {
            let mut r = c.raw(i);
            let gets: Vec<_> = keys.iter().map(|k| req(&[b"GET", k.as_bytes()])).collect();
            for (k, got) in keys.iter().zip(pipeline(&mut r, &gets)) {
                assert_eq!(got, Resp::Nil, "GET {k} via node {i} brought a deleted key back");
            }
            let sib: Vec<_> = keys.iter().map(|k| req(&[b"EXISTS", k.as_bytes()])).collect();
            for (k, got) in keys.iter().zip(pipeline(&mut r, &sib)) {
                assert_eq!(got, Resp::Int(0), "EXISTS {k} via node {i}");
            }
        }
    };
    std::thread::sleep(Duration::from_millis(400));
    let start = Instant::now();
    let mut rounds = 0;
    // Reaped everywhere: no node holds any copy. Until then, no live value anywhere
    // but on node 2 before anti-entropy reaches it.
    loop {
        reads_nil(&c);
        rounds += 1;
        let all = copies(&c, &keys);
        let held: usize = all.iter().map(|n| n.iter().filter(|c| c.is_some()).count()).sum();
        for (n, node) in all.iter().enumerate() {
            if n == down {
                continue;
            }
            for (k, copy) in keys.iter().zip(node) {
                assert!(
                    copy.as_ref().is_none_or(|c| c.1.is_empty()),
                    "node {n} holds a live {k}: {copy:?}"
                );
            }
        }
        if held == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(40) {
            let per_node: Vec<usize> = all.iter().map(|n| n.iter().filter(|c| c.is_some()).count()).collect();
            let first: Vec<_> = all.iter().map(|n| n[0].clone()).collect();
            panic!(
                "{held} copies still held after {:?}: per node {per_node:?}; {}: {first:?}",
                start.elapsed(),
                keys[0]
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let reaped: u64 = (0..4).map(|i| info_u64(&mut c.raw(i), "stats", "expired_keys")).sum();
    eprintln!(
        "all {} dead keys reaped on every replica {:?} after the return ({rounds} read rounds); {reaped} records reaped",
        keys.len(),
        start.elapsed()
    );
    assert!(reaped >= 3 * keys.len() as u64);
    // Still nothing after a few more anti-entropy rounds.
    std::thread::sleep(Duration::from_secs(1));
    reads_nil(&c);
    assert!(copies(&c, &keys).iter().all(|n| n.iter().all(Option::is_none)));
}

/// A node replaced by an empty data directory under its old id is refilled by
/// anti-entropy; meanwhile reads through it are correct (R=2 and read repair).
#[test]
fn a_replaced_node_is_refilled_by_anti_entropy() {
    let mut c = Cluster::start_with(ClusterSetup::new(3).args(AE));
    let keys: Vec<String> = (0..3000).map(|i| format!("refill:{i}")).collect();
    let mut raw = c.raw(0);
    let sets: Vec<_> = keys
        .iter()
        .map(|k| req(&[b"SET", k.as_bytes(), format!("v-{k}").as_bytes()]))
        .collect();
    assert!(
        pipeline(&mut raw, &sets)
            .iter()
            .all(|r| *r == Resp::Simple("OK".into()))
    );
    converge(&c, &keys, Duration::from_secs(10), |_, copies| {
        copies.iter().all(|c| c.is_some()) && all_equal(copies)
    });
    let id = node_id(&mut c.raw(2));
    c.node_mut(2).kill9();
    std::fs::remove_dir_all(c.node(2).data_dir()).expect("wipe");
    c.node_mut(2).add_args(&["--node-id", &id]);
    c.node_mut(2).start_again();
    assert_eq!(node_id(&mut c.raw(2)), id, "the replacement took the old id");
    // Until it has heard from a peer it refuses keys rather than answer as a cluster of one.
    c.wait_known(3, common::JOIN_TIMEOUT);
    // Reads through the replacement during the refill are right.
    let mut r2 = c.raw(2);
    let gets: Vec<_> = keys[..300].iter().map(|k| req(&[b"GET", k.as_bytes()])).collect();
    for (k, got) in keys[..300].iter().zip(pipeline(&mut r2, &gets)) {
        assert_eq!(got, Resp::bulk(format!("v-{k}")), "GET {k} through the replacement");
    }
    let took = converge(&c, &keys, Duration::from_secs(60), |_, copies| {
        copies.iter().all(|c| c.is_some()) && all_equal(copies)
    });
    let repaired = info_u64(&mut r2, "cluster", "antientropy_keys_repaired");
    let pushed: u64 = (0..3)
        .map(|i| info_u64(&mut c.raw(i), "cluster", "antientropy_keys_pushed"))
        .sum();
    eprintln!("replacement refilled in {took:?}: repaired {repaired} here, {pushed} pushed in all");
    // At most the 300 keys read went through read repair: anti-entropy did the rest.
    assert!(repaired + pushed >= 2700, "anti-entropy moved {repaired}+{pushed} keys");
    // The old id's directory is refused to another id.
    c.node_mut(2).kill9();
    c.node_mut(2).add_args(&["--node-id", "00000000000000ab"]);
    let mut bad = common::Server::try_start_with(common::Setup {
        args: vec!["--node-id".into(), "00000000000000ab".into()],
        data_dir: Some(c.node(2).data_dir().to_path_buf()),
        port: common::PortMode::Pick,
        password: None,
    });
    match &mut bad {
        Ok(_) => panic!("a data directory of node {id} started as another node"),
        Err(log) => assert!(log.contains("belongs to node"), "{log}"),
    }
}
