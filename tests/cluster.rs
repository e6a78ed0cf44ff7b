//! The replicated cluster, end to end: real `dynkv` processes on loopback joined by
//! `--seeds`, driven through every node. Placement (each key on exactly N local stores,
//! the ones CLUSTER SLOTS names), routing of single- and multi-key commands, cluster-wide
//! SCAN/KEYS/DBSIZE/FLUSHALL, siblings across replicas, late delivery and read repair,
//! quorum failures that answer instead of hanging, refused configurations and peers,
//! garbage on the internode port, and `dynkv dev-cluster`.
//!
//! The tests that run clusters take a process-wide lock: on a 2-core machine several
//! clusters at once would turn the timing assertions (quorum deadlines) into noise.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{
    Cluster, ClusterSetup, PortMode, Raw, Resp, Server, Setup, eventually, free_port, info_u64, keyslot, known_nodes,
    local_copy, pipeline, slot_layout,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// One cluster test at a time (a failed test must not block the others).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn req(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

fn ok(r: &Resp, what: &str) {
    assert_eq!(*r, Resp::Simple("OK".into()), "{what}");
}

fn int(r: Resp, what: &str) -> i64 {
    match r {
        Resp::Int(n) => n,
        other => panic!("{what}: expected an integer, got {other:?}"),
    }
}

fn text_set(r: &Resp) -> BTreeSet<String> {
    r.items().iter().map(Resp::text).collect()
}

/// Every key through SCAN with COUNT 50 on `raw` (and how many calls it took).
fn scan_all(raw: &mut Raw) -> (Vec<String>, usize) {
    let mut cursor = b"0".to_vec();
    let mut keys = Vec::new();
    for calls in 1..=10_000 {
        let reply = raw.cmd(&[b"SCAN", &cursor, b"COUNT", b"50"]);
        let parts = reply.items();
        cursor = parts[0].bytes();
        keys.extend(parts[1].items().iter().map(Resp::text));
        if cursor == b"0" {
            return (keys, calls);
        }
    }
    panic!("SCAN did not finish in 10000 calls");
}

/// Writes 300 keys through every node in turn and checks placement, reads, multi-key
/// commands, SCAN/KEYS/DBSIZE and FLUSHALL through every node.
fn keyspace_across(nodes: usize) {
    let _g = serial();
    let c = Cluster::start(nodes);
    let keys: Vec<String> = (0..300).map(|i| format!("key:{i}")).collect();
    let value = |i: usize| format!("value-{i}").into_bytes();

    // Writes through varied nodes (key i through node i % nodes), pipelined per node.
    for n in 0..nodes {
        let reqs: Vec<_> = (0..keys.len())
            .filter(|i| i % nodes == n)
            .map(|i| req(&[b"SET", keys[i].as_bytes(), &value(i)]))
            .collect();
        for r in pipeline(&mut c.raw(n), &reqs) {
            ok(&r, &format!("SET through node {n}"));
        }
    }

    // Every node reports the same layout; every slot has exactly N = 3 replicas.
    let layout = slot_layout(&mut c.raw(0));
    for i in 1..nodes {
        assert!(
            slot_layout(&mut c.raw(i)) == layout,
            "node {i} reports another CLUSTER SLOTS"
        );
    }
    assert!(layout.iter().all(|r| r.len() == 3), "a slot without exactly 3 replicas");
    let index: HashMap<u16, usize> = (0..nodes).map(|i| (c.node(i).port(), i)).collect();
    let mut raw0 = c.raw(0);
    let expected_holders: Vec<BTreeSet<usize>> = keys
        .iter()
        .map(|k| {
            let slot = keyslot(&mut raw0, k.as_bytes());
            layout[slot].iter().map(|p| index[p]).collect()
        })
        .collect();

    // Each key is in exactly 3 local stores (the replicas CLUSTER SLOTS names), with the
    // written value; the third replica's copy may land just after the W=2 acknowledgement.
    let local_requests: Vec<_> = keys.iter().map(|k| req(&[b"DYNKV.LOCAL", k.as_bytes()])).collect();
    let mut holders: Vec<BTreeSet<usize>> = Vec::new();
    let placed = eventually(Duration::from_secs(3), || {
        holders = vec![BTreeSet::new(); keys.len()];
        for n in 0..nodes {
            for (i, r) in pipeline(&mut c.raw(n), &local_requests).into_iter().enumerate() {
                match r {
                    Resp::Nil => {}
                    Resp::Array(v) => {
                        let vals: Vec<Vec<u8>> = v[1].items().iter().map(Resp::bytes).collect();
                        assert_eq!(vals, vec![value(i)], "node {n}'s copy of {}", keys[i]);
                        holders[i].insert(n);
                    }
                    other => panic!("DYNKV.LOCAL {}: {other:?}", keys[i]),
                }
            }
        }
        holders == expected_holders
    });
    if !placed {
        let wrong: Vec<_> = (0..keys.len())
            .filter(|&i| holders[i] != expected_holders[i])
            .take(10)
            .map(|i| (&keys[i], &holders[i], &expected_holders[i]))
            .collect();
        panic!("keys not on exactly their 3 replicas (key, held by, CLUSTER SLOTS says): {wrong:?}");
    }
    if nodes > 3 {
        let used: BTreeSet<usize> = holders.iter().flatten().copied().collect();
        assert_eq!(
            used.len(),
            nodes,
            "with {nodes} nodes every node should hold some of 300 keys"
        );
    }

    // Reads through every node return the written value.
    let gets: Vec<_> = keys.iter().map(|k| req(&[b"GET", k.as_bytes()])).collect();
    for n in 0..nodes {
        for (i, r) in pipeline(&mut c.raw(n), &gets).into_iter().enumerate() {
            assert_eq!(r, Resp::bulk(value(i)), "GET {} through node {n}", keys[i]);
        }
    }

    // Multi-key commands over keys of many partitions, through different nodes.
    let multi: Vec<String> = (0..24).map(|i| format!("multi:{i}")).collect();
    let masters: BTreeSet<u16> = multi
        .iter()
        .map(|k| layout[keyslot(&mut raw0, k.as_bytes())][0])
        .collect();
    assert!(masters.len() >= 2, "the multi-key test keys should span coordinators");
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    let vals: Vec<String> = (0..multi.len()).map(|i| format!("m{i}")).collect();
    for (k, v) in multi.iter().zip(&vals) {
        mset.push(k.as_bytes());
        mset.push(v.as_bytes());
    }
    ok(&c.raw(0).cmd(&mset), "MSET through node 0");
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    for (i, k) in multi.iter().enumerate() {
        mget.push(k.as_bytes());
        if i == 5 {
            mget.push(b"multi:missing");
        }
    }
    let got = c.raw(1 % nodes).cmd(&mget);
    let mut want: Vec<Resp> = vals.iter().map(Resp::bulk).collect();
    want.insert(6, Resp::Nil);
    assert_eq!(got, Resp::Array(want), "MGET through node 1");
    let mut exists: Vec<&[u8]> = vec![b"EXISTS"];
    exists.extend(multi.iter().map(|k| k.as_bytes()));
    exists.push(b"multi:missing");
    exists.push(multi[3].as_bytes());
    assert_eq!(
        int(c.raw(2 % nodes).cmd(&exists), "EXISTS"),
        multi.len() as i64 + 1,
        "EXISTS counts every present key, duplicates included"
    );
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend(multi[..12].iter().map(|k| k.as_bytes()));
    del.push(b"multi:missing");
    assert_eq!(int(c.raw(nodes - 1).cmd(&del), "DEL"), 12, "DEL through the last node");
    let mut exists: Vec<&[u8]> = vec![b"EXISTS"];
    exists.extend(multi.iter().map(|k| k.as_bytes()));
    assert_eq!(int(c.raw(0).cmd(&exists), "EXISTS after DEL"), 12);
    let got = c.raw(nodes - 1).cmd(&mget);
    let mut want: Vec<Resp> = vals
        .iter()
        .enumerate()
        .map(|(i, v)| if i < 12 { Resp::Nil } else { Resp::bulk(v) })
        .collect();
    want.insert(6, Resp::Nil);
    assert_eq!(got, Resp::Array(want), "MGET after DEL");

    // The cluster's key set, through SCAN, KEYS and DBSIZE of any node.
    let all: BTreeSet<String> = keys.iter().chain(&multi[12..]).cloned().collect();
    let (scanned, calls) = scan_all(&mut c.raw(0));
    let scanned_set: BTreeSet<String> = scanned.iter().cloned().collect();
    assert_eq!(
        scanned_set.len(),
        all.len(),
        "SCAN through node 0 found another number of keys"
    );
    assert!(scanned_set == all, "SCAN through node 0 returned another key set");
    assert!(
        calls >= 3,
        "SCAN COUNT 50 over {} keys took only {calls} calls",
        all.len()
    );
    for n in 0..nodes {
        let mut raw = c.raw(n);
        let keys_reply = raw.cmd(&[b"KEYS", b"*"]);
        assert_eq!(
            keys_reply.items().len(),
            all.len(),
            "KEYS * through node {n} (duplicates?)"
        );
        assert!(text_set(&keys_reply) == all, "KEYS * through node {n}");
        assert_eq!(
            int(raw.cmd(&[b"DBSIZE"]), "DBSIZE"),
            all.len() as i64,
            "DBSIZE through node {n}"
        );
    }

    // FLUSHALL through one node empties every node.
    ok(&c.raw(1 % nodes).cmd(&[b"FLUSHALL"]), "FLUSHALL");
    for n in 0..nodes {
        let mut raw = c.raw(n);
        assert_eq!(
            int(raw.cmd(&[b"DBSIZE"]), "DBSIZE"),
            0,
            "DBSIZE through node {n} after FLUSHALL"
        );
        assert_eq!(raw.cmd(&[b"KEYS", b"*"]), Resp::Array(vec![]), "KEYS * on node {n}");
        let left = pipeline(&mut raw, &local_requests)
            .into_iter()
            .filter(|r| *r != Resp::Nil)
            .count();
        assert_eq!(left, 0, "node {n} still holds {left} local copies after FLUSHALL");
        assert_eq!(
            raw.cmd(&[b"GET", b"key:7"]),
            Resp::Nil,
            "GET on node {n} after FLUSHALL"
        );
    }
}

#[test]
fn three_nodes_place_route_and_scan_every_key() {
    keyspace_across(3);
}

#[test]
fn five_nodes_place_route_and_scan_every_key() {
    keyspace_across(5);
}

#[test]
fn concurrent_resolves_through_two_nodes_become_siblings_everywhere() {
    let _g = serial();
    let c = Cluster::start(3);
    let k: &[u8] = b"sib:k";
    ok(&c.raw(0).cmd(&[b"SET", k, b"v0"]), "SET through node 0");
    let s = c.raw(0).cmd(&[b"SIBLINGS", k]);
    let ctx = s.items()[0].bytes();
    assert_eq!(s.items()[1], Resp::Array(vec![Resp::bulk("v0")]), "SIBLINGS after SET");

    // Two clients resolve with the same context through two different nodes.
    ok(&c.raw(1).cmd(&[b"RESOLVE", k, &ctx, b"left"]), "RESOLVE through node 1");
    ok(
        &c.raw(2).cmd(&[b"RESOLVE", k, &ctx, b"right"]),
        "RESOLVE through node 2",
    );
    let both: BTreeSet<String> = ["left".to_string(), "right".to_string()].into();
    let s = c.raw(0).cmd(&[b"SIBLINGS", k]);
    assert!(
        text_set(&s.items()[1]) == both,
        "SIBLINGS through node 0 should show both concurrent values: {s:?}"
    );
    let merged_ctx = s.items()[0].bytes();
    let mut seen = Vec::new();
    let converged = eventually(Duration::from_secs(3), || {
        seen = (0..3).map(|i| c.local(i, k)).collect();
        seen.iter().all(|l| {
            l.as_ref().is_some_and(|(_, v)| {
                v.iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect::<BTreeSet<_>>()
                    == both
            })
        })
    });
    assert!(
        converged,
        "every replica should hold both siblings within 3 s: {seen:?}"
    );

    // Resolving with the merged context collapses the siblings on every replica.
    ok(
        &c.raw(1).cmd(&[b"RESOLVE", k, &merged_ctx, b"merged"]),
        "RESOLVE with the merged context",
    );
    let collapsed = eventually(Duration::from_secs(3), || {
        seen = (0..3).map(|i| c.local(i, k)).collect();
        seen.iter()
            .all(|l| l.as_ref().is_some_and(|(_, v)| *v == [b"merged".to_vec()]))
    });
    assert!(collapsed, "every replica should hold only the merged value: {seen:?}");
    let s = c.raw(2).cmd(&[b"SIBLINGS", k]);
    assert_eq!(s.items()[1], Resp::Array(vec![Resp::bulk("merged")]));
    assert_eq!(c.raw(0).cmd(&[b"GET", k]), Resp::bulk("merged"));
}

#[test]
fn a_paused_replica_does_not_block_w2_writes_and_catches_up() {
    let _g = serial();
    let c = Cluster::start(3);
    let k: &[u8] = b"pause:k";
    ok(&c.raw(0).cmd(&[b"SET", b"warm", b"1"]), "warm-up SET");
    c.node(2).signal(libc::SIGSTOP);
    let t = Instant::now();
    let r = c.raw(0).cmd(&[b"SET", k, b"v"]);
    let took = t.elapsed();
    let r_get = c.raw(1).cmd(&[b"GET", k]);
    c.node(2).signal(libc::SIGCONT);
    ok(&r, "SET with W=2 while one replica is paused");
    assert!(
        took < Duration::from_millis(900),
        "SET waited for the paused replica: {took:?}"
    );
    assert_eq!(r_get, Resp::bulk("v"), "GET with R=2 while one replica is paused");
    // The put queued in the paused node's socket is applied once it runs again.
    let caught_up = eventually(Duration::from_secs(3), || {
        c.local(2, k).is_some_and(|(_, v)| v == [b"v".to_vec()])
    });
    assert!(
        caught_up,
        "the resumed replica never applied the write: {:?}",
        c.local(2, k)
    );
}

/// A 3-node cluster (anti-entropy off) where node 2 missed the write of `k` = "v": it was
/// killed during the write and restarted on its data (SIGSTOP is not enough: the put waits in its socket
/// and is applied on SIGCONT, see the test above). Returns once node 0 reaches node 2
/// again (a probe write through node 0 lands on node 2).
fn cluster_with_a_stale_replica(k: &[u8]) -> Cluster {
    // Anti-entropy would repair node 2 before the read does: keep it out of the way.
    let mut c = Cluster::start_with(ClusterSetup::new(3).args(&["--anti-entropy-interval-ms", "3600000"]));
    c.node_mut(2).kill9();
    let t = Instant::now();
    ok(
        &c.raw(0).cmd(&[b"SET", k, b"v"]),
        "SET with W=2 while one replica is down",
    );
    assert!(t.elapsed() < Duration::from_secs(2), "SET took {:?}", t.elapsed());
    c.node_mut(2).start_again();
    c.wait_known(3, common::JOIN_TIMEOUT);
    let mut probe = 0;
    let reachable = eventually(Duration::from_secs(6), || {
        probe += 1;
        let key = format!("probe:{probe}");
        ok(&c.raw(0).cmd(&[b"SET", key.as_bytes(), b"p"]), "probe SET");
        std::thread::sleep(Duration::from_millis(100));
        c.local(2, key.as_bytes()).is_some()
    });
    assert!(reachable, "node 0 did not reach the restarted node 2 within 6 s");
    assert_eq!(c.local(2, k), None, "the restarted replica cannot have the write yet");
    c
}

/// Node 2's copy of `k` becomes "v" within 3 s, and node 0 counted a read repair.
fn assert_repaired(c: &Cluster, k: &[u8], before: u64, how: &str) {
    let repaired = eventually(Duration::from_secs(3), || {
        c.local(2, k).is_some_and(|(_, v)| v == [b"v".to_vec()])
    });
    assert!(
        repaired,
        "{how}: the stale replica was not repaired within 3 s: {:?}",
        c.local(2, k)
    );
    // The repair is visible on node 2 (committed) a little before node 2's acknowledgement
    // (after its log flush) reaches node 0, which counts it then.
    let mut after = before;
    let counted = eventually(Duration::from_secs(2), || {
        after = info_u64(&mut c.raw(0), "stats", "read_repairs");
        after > before
    });
    assert!(
        counted,
        "{how}: read_repairs on the reading coordinator: {before} -> {after}"
    );
}

#[test]
fn a_read_repairs_a_stale_replica_among_the_first_r_answers() {
    let _g = serial();
    let c = cluster_with_a_stale_replica(b"repair:k");
    // Node 1 (up to date) is paused, so node 0's R=2 read is answered by itself and by
    // the stale node 2.
    let before = info_u64(&mut c.raw(0), "stats", "read_repairs");
    c.node(1).signal(libc::SIGSTOP);
    let r = c.raw(0).cmd(&[b"GET", b"repair:k"]);
    c.node(1).signal(libc::SIGCONT);
    assert_eq!(r, Resp::bulk("v"), "GET through node 0");
    assert_repaired(&c, b"repair:k", before, "stale replica within R");
}

#[test]
fn a_read_repairs_a_stale_replica_that_answers_after_the_quorum() {
    let _g = serial();
    let c = cluster_with_a_stale_replica(b"repair:k");
    // The stale node 2 is paused while node 0 reads (R=2: node 0 and node 1 answer), then
    // resumed well within the request timeout (1 s): the coordinator keeps listening
    // until the deadline and must repair the late, stale answer.
    let before = info_u64(&mut c.raw(0), "stats", "read_repairs");
    c.node(2).signal(libc::SIGSTOP);
    let t = Instant::now();
    let r = c.raw(0).cmd(&[b"GET", b"repair:k"]);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    c.node(2).signal(libc::SIGCONT);
    assert_eq!(r, Resp::bulk("v"), "GET through node 0");
    assert!(
        took < Duration::from_millis(800),
        "the read waited for the paused replica: {took:?}"
    );
    assert_repaired(&c, b"repair:k", before, "stale replica answering after R");
}

#[test]
fn writes_without_a_quorum_fail_in_time_instead_of_hanging() {
    let _g = serial();
    let timeout_ms = 500;
    let mut c = Cluster::start_with(ClusterSetup::new(3).timeout_ms(timeout_ms));
    ok(&c.raw(0).cmd(&[b"SET", b"q:k", b"before"]), "SET with every node up");
    let limit = Duration::from_millis(2 * timeout_ms + 500);
    let check = |raw: &mut Raw, args: &[&[u8]], what: &str| {
        raw.set_timeout(Duration::from_secs(10));
        let t = Instant::now();
        let r = raw.cmd(args);
        let took = t.elapsed();
        match &r {
            Resp::Error(e) => assert!(
                e.to_lowercase().contains("quorum"),
                "{what}: error without 'quorum': {e}"
            ),
            other => panic!("{what}: expected a quorum error, got {other:?}"),
        }
        assert!(took <= limit, "{what}: answered after {took:?} (limit {limit:?})");
    };
    // Two of three replicas silent (paused): deadlines must fire.
    c.node(1).signal(libc::SIGSTOP);
    c.node(2).signal(libc::SIGSTOP);
    let mut raw = c.raw(0);
    check(&mut raw, &[b"SET", b"q:k", b"v"], "SET, two replicas paused");
    check(&mut raw, &[b"GET", b"q:k"], "GET, two replicas paused");
    check(
        &mut raw,
        &[b"SET", b"q:k", b"x", b"XX"],
        "SET XX (reads first), two replicas paused",
    );
    let quorum_failures = info_u64(&mut raw, "stats", "quorum_failures");
    assert!(quorum_failures >= 3, "quorum_failures: {quorum_failures}");
    // Two of three replicas dead: connections are refused, still an error.
    c.node_mut(1).kill9();
    c.node_mut(2).kill9();
    check(&mut raw, &[b"SET", b"q:k", b"w"], "SET, two replicas dead");
    check(&mut raw, &[b"GET", b"q:k"], "GET, two replicas dead");
    assert_eq!(
        raw.cmd(&[b"PING"]),
        Resp::Simple("PONG".into()),
        "the survivor keeps serving"
    );
}

/// Runs `dynkv server` with `args` and returns (exit status, output) once it exits.
fn run_refused(args: &[&str]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().to_string();
    let data = dir.path().join("data");
    let mut child = Command::new(common::bin())
        .args(["server", "--bind", "127.0.0.1", "--port", &port, "--data-dir"])
        .arg(&data)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dynkv");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dynkv {args:?} kept running instead of refusing its configuration");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut out)
        .expect("read");
    (status, out)
}

#[test]
fn invalid_quorum_settings_are_refused_at_startup() {
    let (st, out) = run_refused(&["--r", "4"]);
    assert!(!st.success(), "--r 4 with n=3 accepted: {out}");
    assert!(out.contains("invalid setting r"), "the message should name r: {out}");
    let (st, out) = run_refused(&["--n", "3", "--w", "5"]);
    assert!(!st.success(), "--w 5 accepted: {out}");
    assert!(out.contains("invalid setting w"), "the message should name w: {out}");
    let (st, out) = run_refused(&["--seeds", "127.0.0.1:7001"]);
    assert!(!st.success(), "--seeds without --cluster-secret accepted: {out}");
    assert!(
        out.contains("cluster-secret"),
        "the message should name cluster-secret: {out}"
    );
}

#[test]
fn a_node_with_the_wrong_secret_never_joins() {
    let _g = serial();
    let c = Cluster::start(3);
    let cport = free_port().to_string();
    let intruder = Server::start_with(Setup {
        port: PortMode::Pick,
        ..Setup::args(&[
            "--cluster-port",
            &cport,
            "--seeds",
            &c.seeds(),
            "--cluster-secret",
            "not-the-secret",
        ])
    });
    // Discovery retries unknown seeds every 200 ms: 3 s is many attempts.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        for i in 0..3 {
            assert_eq!(known_nodes(c.node(i)), Some(3), "node {i} let the intruder in");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(known_nodes(&intruder), Some(1), "the intruder learned members");
    for i in 0..3 {
        let log = c.node(i).log();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("handshake refused"))
            .collect();
        assert!(!refused.is_empty(), "node {i} logged no refused handshake:\n{log}");
        assert!(
            refused
                .iter()
                .any(|l| l.contains("wrong secret") && l.contains("peer=127.0.0.1:")),
            "node {i}'s warning should name the peer address and the reason: {refused:?}"
        );
    }
    // The cluster still works.
    ok(&c.raw(0).cmd(&[b"SET", b"after", b"1"]), "SET after the intruder");
    assert_eq!(c.raw(2).cmd(&[b"GET", b"after"]), Resp::bulk("1"));
}

/// The client half of the internode handshake (see src/rpc/wire.rs), done by hand.
fn handshake(addr: SocketAddr, secret: &[u8]) -> TcpStream {
    use hmac::{Hmac, Mac};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let nonce: [u8; 32] = rand::random();
    let mut hello = b"DYNKV\x01".to_vec();
    hello.extend_from_slice(&nonce);
    s.write_all(&hello).expect("hello");
    let mut server_hello = [0u8; 38];
    s.read_exact(&mut server_hello).expect("server hello");
    assert_eq!(&server_hello[..6], b"DYNKV\x01");
    let identity = b"test-client";
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac");
    mac.update(b"dynkv-rpc");
    mac.update(b"C");
    mac.update(&nonce);
    mac.update(&server_hello[6..]);
    mac.update(identity);
    let mut msg = (identity.len() as u32).to_le_bytes().to_vec();
    msg.extend_from_slice(identity);
    msg.extend_from_slice(&mac.finalize().into_bytes());
    s.write_all(&msg).expect("proof");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("server identity length");
    let mut rest = vec![0u8; u32::from_le_bytes(len) as usize + 32];
    s.read_exact(&mut rest).expect("server identity and proof");
    s
}

/// Whether the server closes `s` within 5 s (after reading whatever it sends).
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return false;
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn garbage_on_the_internode_port_closes_only_that_connection() {
    let _g = serial();
    let c = Cluster::start_with(ClusterSetup::new(3).nrw(3, 2, 3));
    let iaddr = SocketAddr::from(([127, 0, 0, 1], c.cluster_ports[0]));
    let connect = || TcpStream::connect_timeout(&iaddr, Duration::from_secs(5)).expect("connect internode");

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let mut huge_identity = b"DYNKV\x01".to_vec();
    huge_identity.extend_from_slice(&[7u8; 32]);
    huge_identity.extend_from_slice(&u32::MAX.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", garbage),
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: dynkv\r\n\r\n".to_vec()),
        ("a RESP command", b"*1\r\n$4\r\nPING\r\n".to_vec()),
        ("a huge identity length", huge_identity),
    ];
    for (what, bytes) in &cases {
        let mut s = connect();
        let _ = s.write_all(bytes);
        assert!(closed_by_server(&mut s), "{what}: the internode connection stayed open");
    }
    // Silence: the handshake deadline (2 s) closes the connection.
    let mut s = connect();
    assert!(
        closed_by_server(&mut s),
        "a silent connection stayed open past the handshake deadline"
    );

    // After a correct handshake: a frame of garbage is answered (an error response with the
    // request id), and a huge length prefix or an unknown frame kind closes the connection.
    let secret = c.setup.secret.clone();
    let mut s = handshake(iaddr, secret.as_bytes());
    let payload = b"\xff\xfe not a request";
    let mut frame = ((9 + payload.len()) as u32).to_le_bytes().to_vec();
    frame.push(1);
    frame.extend_from_slice(&42u64.to_le_bytes());
    frame.extend_from_slice(payload);
    s.write_all(&frame).expect("frame");
    let mut head = [0u8; 13];
    s.read_exact(&mut head).expect("a response to a garbage request");
    assert_eq!(head[4], 2, "response kind");
    assert_eq!(
        u64::from_le_bytes(head[5..13].try_into().expect("8 bytes")),
        42,
        "response id"
    );
    s.write_all(&u32::MAX.to_le_bytes()).expect("huge length");
    assert!(
        closed_by_server(&mut s),
        "a frame length of 4 GiB did not close the connection"
    );
    let mut s = handshake(iaddr, secret.as_bytes());
    let mut frame = 9u32.to_le_bytes().to_vec();
    frame.push(77);
    frame.extend_from_slice(&1u64.to_le_bytes());
    s.write_all(&frame).expect("frame");
    assert!(
        closed_by_server(&mut s),
        "an unknown frame kind did not close the connection"
    );

    // The node still serves clients and peers: a W=3 write through it and through another.
    ok(
        &c.raw(0).cmd(&[b"SET", b"after:garbage", b"1"]),
        "W=3 SET through node 0",
    );
    ok(
        &c.raw(1).cmd(&[b"SET", b"after:garbage:2", b"2"]),
        "W=3 SET through node 1",
    );
    for i in 0..3 {
        assert_eq!(
            c.local(i, b"after:garbage").map(|l| l.1),
            Some(vec![b"1".to_vec()]),
            "node {i}"
        );
    }
    assert_eq!(known_nodes(c.node(0)), Some(3));
}

/// A running `dynkv dev-cluster` and the node pids it printed; everything is killed on
/// drop if the test fails midway.
struct DevCluster {
    child: Option<Child>,
    node_pids: Vec<i32>,
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for &pid in &self.node_pids {
            // SAFETY: kill(2) on a pid that our dev-cluster child started and printed.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn port_free(p: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
}

#[test]
fn dev_cluster_starts_three_nodes_and_stops_them_on_ctrl_c() {
    let _g = serial();
    let base = (0..200)
        .map(|i| 20000 + ((std::process::id() as u16).wrapping_mul(7) % 30000) + i * 37)
        .find(|&b| (0..3).all(|i| port_free(b + i) && port_free(b + i + 10000)))
        .expect("3 free port pairs");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(common::bin())
        .args([
            "dev-cluster",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(dir.path().join("dev"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dev-cluster");
    let stdout = child.stdout.take().expect("stdout");
    let pid = child.id() as i32;
    let mut guard = DevCluster {
        child: Some(child),
        node_pids: Vec::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lines.iter().any(|l: &String| l.contains("Ctrl-C stops")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("dev-cluster did not print its banner in 15 s: {lines:?}"),
        }
    }
    for l in &lines {
        if let Some(p) = l.split("pid ").nth(1) {
            let p: i32 = p.trim_end_matches(')').trim().parse().expect("pid");
            guard.node_pids.push(p);
        }
    }
    assert_eq!(guard.node_pids.len(), 3, "three node lines with pids: {lines:?}");
    for i in 0..3u16 {
        let port = (base + i).to_string();
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("node {}: redis-cli -p {port}", i + 1))),
            "no line for node {} on port {port}: {lines:?}",
            i + 1
        );
    }

    let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], base + i));
    let joined = eventually(Duration::from_secs(15), || {
        (0..3).all(|i| {
            Raw::try_connect(addr(i)).is_ok_and(|mut r| {
                matches!(r.cmd(&[b"CLUSTER", b"INFO"]), Resp::Bulk(b) if String::from_utf8_lossy(&b).contains("cluster_known_nodes:3"))
            })
        })
    });
    assert!(joined, "the dev cluster's nodes did not learn each other");
    ok(
        &Raw::connect(addr(0)).cmd(&[b"SET", b"dev:k", b"hello"]),
        "SET through node 1",
    );
    assert_eq!(
        Raw::connect(addr(2)).cmd(&[b"GET", b"dev:k"]),
        Resp::bulk("hello"),
        "GET through node 3"
    );
    let holders = (0..3)
        .filter(|&i| local_copy(&mut Raw::connect(addr(i)), b"dev:k").is_some())
        .count();
    assert!(holders >= 2, "the key should be on at least W=2 nodes, found {holders}");

    // Ctrl-C: every child exits and frees its ports within 15 s.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let t = Instant::now();
    let mut child = guard.child.take().expect("child");
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if t.elapsed() > Duration::from_secs(20) {
            guard.child = Some(child);
            panic!("dev-cluster did not exit within 20 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "dev-cluster exited with {status:?}");
    let mut rest: Vec<String> = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        rest.push(l);
    }
    let freed = eventually(Duration::from_secs(15).saturating_sub(t.elapsed()), || {
        (0..3).all(|i| port_free(base + i) && port_free(base + i + 10000))
    });
    assert!(freed, "ports still in use after dev-cluster stopped: {rest:?}");
    for &p in &guard.node_pids {
        // SAFETY: signal 0 only checks that the pid exists.
        let alive = unsafe { libc::kill(p, 0) } == 0;
        assert!(!alive, "node pid {p} still exists after dev-cluster exited: {rest:?}");
    }
    assert!(
        t.elapsed() <= Duration::from_secs(15),
        "stopping took {:?}",
        t.elapsed()
    );
    let stopped = rest.iter().filter(|l| l.contains("stopped")).count();
    assert_eq!(
        stopped, 3,
        "each node should be reported stopped (not killed): {rest:?}"
    );
    guard.node_pids.clear();
}

fn cluster_field(raw: &mut Raw, field: &str) -> u64 {
    info_u64(raw, "cluster", field)
}

/// Sloppy quorum and hinted handoff: with an owner paused, writes still succeed, fallbacks
/// keep hints; a fallback killed with SIGKILL comes back with its hints (they are in
/// LMDB), and once the owner answers again every hint is delivered and dropped, leaving
/// every key on exactly N nodes.
#[test]
fn hints_survive_a_crash_of_the_fallback_and_reach_the_owner() {
    let _g = serial();
    let mut c = Cluster::start_with(ClusterSetup::new(4).timeout_ms(500));
    let owner = 3;
    c.node(owner).signal(libc::SIGSTOP);
    let seen_down = eventually(Duration::from_secs(8), || {
        (0..3).all(|i| cluster_field(&mut c.raw(i), "peers_down") == 1)
    });
    assert!(seen_down, "the paused node was never seen down");
    let keys: Vec<Vec<u8>> = (0..60).map(|i| format!("hint:{i}").into_bytes()).collect();
    for (i, k) in keys.iter().enumerate() {
        let v = format!("v{i}");
        ok(
            &c.raw(i % 3).cmd(&[b"SET", k, v.as_bytes()]),
            "SET while an owner is paused",
        );
    }
    let pending: Vec<u64> = (0..3).map(|i| cluster_field(&mut c.raw(i), "hints_pending")).collect();
    assert!(pending.iter().sum::<u64>() > 0, "no hints were stored: {pending:?}");
    let sloppy: u64 = (0..3).map(|i| cluster_field(&mut c.raw(i), "sloppy_writes")).sum();
    assert!(sloppy > 0, "no write was counted as sloppy");

    // Crash the fallback holding the most hints; it restarts with all of them.
    let fallback = (0..3).max_by_key(|&i| pending[i]).unwrap_or(0);
    c.node_mut(fallback).kill9();
    c.node_mut(fallback).start_again();
    let after_restart = cluster_field(&mut c.raw(fallback), "hints_pending");
    assert_eq!(after_restart, pending[fallback], "hints lost in the crash");

    c.node(owner).signal(libc::SIGCONT);
    let drained = eventually(Duration::from_secs(20), || {
        (0..4).all(|i| cluster_field(&mut c.raw(i), "hints_pending") == 0)
    });
    assert!(drained, "hints were not handed off after the owner came back");
    assert!(
        cluster_field(&mut c.raw(fallback), "hints_delivered") > 0,
        "the restarted fallback delivered nothing"
    );
    for (i, k) in keys.iter().enumerate() {
        let holders = (0..4).filter(|&n| c.local(n, k).is_some()).count();
        assert_eq!(
            holders,
            3,
            "key {} held by {holders} nodes after handoff",
            String::from_utf8_lossy(k)
        );
        assert_eq!(c.raw(i % 4).cmd(&[b"GET", k]), Resp::bulk(format!("v{i}")));
    }
}

/// SCAN, KEYS and DBSIZE still see every key while a node is down: each partition is read
/// from a home replica that answers, not from a fallback that holds only recent writes.
#[test]
fn scan_and_dbsize_cover_the_cluster_while_a_node_is_down() {
    let _g = serial();
    let mut c = Cluster::start_with(ClusterSetup::new(4).timeout_ms(500));
    let reqs: Vec<Vec<Vec<u8>>> = (0..200)
        .map(|i| req(&[b"SET", format!("scan:{i}").as_bytes(), b"v"]))
        .collect();
    for r in pipeline(&mut c.raw(0), &reqs) {
        ok(&r, "SET");
    }
    c.node(3).signal(libc::SIGSTOP);
    let seen_down = eventually(Duration::from_secs(8), || {
        cluster_field(&mut c.raw(0), "peers_down") == 1
    });
    assert!(seen_down, "node 3 never seen down");
    assert_eq!(c.raw(0).cmd(&[b"DBSIZE"]), Resp::Int(200));
    let mut seen = BTreeSet::new();
    let mut cursor = b"0".to_vec();
    loop {
        let r = c.raw(1).cmd(&[b"SCAN", &cursor, b"COUNT", b"50"]);
        let items = r.items();
        let Resp::Bulk(next) = &items[0] else {
            panic!("SCAN reply: {r:?}");
        };
        for k in items[1].items() {
            if let Resp::Bulk(k) = k {
                seen.insert(k.clone());
            }
        }
        if next.as_slice() == b"0" {
            break;
        }
        cursor = next.clone();
    }
    assert_eq!(seen.len(), 200, "SCAN with a node down saw {} keys", seen.len());
    c.node(3).signal(libc::SIGCONT);
    c.node_mut(3).stop();
}
