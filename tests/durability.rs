//! Durability against the real binary: acknowledged writes survive SIGKILL (fsync=always)
//! and SIGTERM; SHUTDOWN exits cleanly; the LMDB map grows past its initial size; a full
//! disk gives clean errors and no corruption.
//!
//! The checkers record every write with its outcome and check the whole history after
//! the restart: each key holds its last acknowledged value, or the one write that was in
//! flight when the process died (each writer has at most one request outstanding).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Raw, Resp, Server, encode, info_u64};
use rand::{Rng, SeedableRng};

const WRITERS: usize = 8;
const KEYS_PER_WRITER: usize = 16;

/// What a key's history allows it to hold after a crash.
#[derive(Debug, Clone, Default)]
struct KeyState {
    /// Last value whose write was acknowledged (or read back after a restart).
    acked: Option<String>,
    /// A write sent but not acknowledged (the connection died first): `Some(None)` is a
    /// DEL.
    in_flight: Option<Option<String>>,
    /// How many writes were acknowledged in this round.
    acks: u64,
}

type History = Arc<Mutex<HashMap<String, KeyState>>>;

/// Runs `WRITERS` threads, each SETting its own keys round-robin with increasing values
/// until `stop` is set or its connection fails. Returns the threads.
/// How the writers choose keys and values.
#[derive(Debug, Clone, Copy)]
struct Workload {
    /// Each writer cycles over this many keys; 0 = a new key for every write.
    keys_per_writer: usize,
    /// Values are padded to this many bytes.
    value_len: usize,
    /// Every n-th operation is a DEL instead of a SET (0 = never).
    del_every: u64,
}

const SMALL: Workload = Workload {
    keys_per_writer: KEYS_PER_WRITER,
    value_len: 0,
    del_every: 5,
};

fn start_writers(
    addr: std::net::SocketAddr,
    round: usize,
    history: &History,
    stop: &Arc<AtomicBool>,
    load: Workload,
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..WRITERS)
        .map(|w| {
            let history = history.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let Ok(mut conn) = Raw::try_connect(addr) else {
                    return 0;
                };
                conn.set_timeout(Duration::from_secs(30));
                let mut acked = 0u64;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = if load.keys_per_writer == 0 {
                        format!("w{w}:r{round}:s{seq}")
                    } else {
                        format!("w{w}:k{}", seq as usize % load.keys_per_writer)
                    };
                    let is_del = load.del_every > 0 && seq % load.del_every == load.del_every - 1;
                    let value = if is_del {
                        None
                    } else {
                        let mut v = format!("r{round}:s{seq}:");
                        while v.len() < load.value_len {
                            v.push_str(&format!("{w}{seq}"));
                        }
                        Some(v)
                    };
                    history.lock().expect("lock").entry(key.clone()).or_default().in_flight = Some(value.clone());
                    let req = match &value {
                        Some(v) => encode(&[b"SET", key.as_bytes(), v.as_bytes()]),
                        None => encode(&[b"DEL", key.as_bytes()]),
                    };
                    let sent = conn.send(&req);
                    let reply = sent.and_then(|_| conn.read_reply());
                    let mut h = history.lock().expect("lock");
                    let st = h.get_mut(&key).expect("entry");
                    match reply {
                        Ok(Resp::Simple(s)) if s == "OK" && value.is_some() => {
                            st.acked = value;
                            st.in_flight = None;
                            st.acks += 1;
                            acked += 1;
                        }
                        Ok(Resp::Int(n @ (0 | 1))) if value.is_none() => {
                            assert_eq!(
                                n == 1,
                                st.acked.is_some(),
                                "DEL {key} answered {n} but its last acknowledged value is {:?}",
                                st.acked
                            );
                            st.acked = None;
                            st.in_flight = None;
                            st.acks += 1;
                            acked += 1;
                        }
                        Ok(Resp::Error(_)) => {
                            // Refused (e.g. the store is closing): not applied, but an
                            // error reply does not prove that; keep it as in flight.
                            return acked;
                        }
                        Ok(other) => panic!("SET {key}: unexpected reply {other:?}"),
                        Err(_) => return acked,
                    }
                    seq += 1;
                }
                acked
            })
        })
        .collect()
}

/// Checks every key against its history after a restart; then makes what was read the
/// new acknowledged state (it is durable now). Returns the number of keys checked.
fn check_history(s: &Server, history: &History, what: &str) -> usize {
    let mut r = s.raw();
    let mut h = history.lock().expect("lock");
    let mut bad = Vec::new();
    for (key, st) in h.iter_mut() {
        let got = match r.cmd(&[b"GET", key.as_bytes()]) {
            Resp::Bulk(b) => Some(String::from_utf8(b).expect("utf-8 value")),
            Resp::Nil => None,
            other => panic!("GET {key}: {other:?}"),
        };
        let allowed = got == st.acked || st.in_flight.as_ref() == Some(&got);
        if !allowed {
            let short = |v: &Option<String>| v.as_ref().map(|s| s.chars().take(24).collect::<String>());
            bad.push(format!(
                "{key}: read {:?}, last acknowledged {:?}, in flight {:?}",
                short(&got),
                short(&st.acked),
                st.in_flight.as_ref().map(short)
            ));
        }
        st.acked = got;
        st.in_flight = None;
        st.acks = 0;
    }
    assert!(
        bad.is_empty(),
        "{what}: {} keys lost acknowledged writes:\n{}",
        bad.len(),
        bad.join("\n")
    );
    h.len()
}

#[test]
fn sigkill_keeps_acknowledged_writes() {
    let seed: u64 = std::env::var("DYNKV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("sigkill_keeps_acknowledged_writes: seed {seed} (DYNKV_TEST_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut s = Server::start(&["--fsync", "always"]);
    let history: History = Arc::default();
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = start_writers(s.addr(), round, &history, &stop, SMALL);
        let kill_after = Duration::from_millis(rng.random_range(800..2000));
        std::thread::sleep(kill_after);
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        let acked: u64 = writers.into_iter().map(|w| w.join().expect("writer thread")).sum();
        assert!(
            acked > 50,
            "round {round}: only {acked} writes acknowledged in {kill_after:?}"
        );
        s.start_again();
        let keys = check_history(&s, &history, &format!("round {round} (seed {seed})"));
        assert_eq!(keys, WRITERS * KEYS_PER_WRITER);
        eprintln!("round {round}: {acked} acknowledged writes, killed after {kill_after:?}");
    }
    s.stop();
}

fn sigterm_under_load(fsync: &str) {
    let mut s = Server::start(&["--fsync", fsync]);
    let history: History = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(s.addr(), 0, &history, &stop, SMALL);
    std::thread::sleep(Duration::from_millis(1000));
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(common::EXIT_TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    let acked: u64 = writers.into_iter().map(|w| w.join().expect("writer thread")).sum();
    assert!(
        status.success(),
        "fsync={fsync}: SIGTERM under load: exit {status:?}\n{}",
        s.log()
    );
    assert!(acked > 50, "fsync={fsync}: only {acked} writes acknowledged");
    s.start_again();
    check_history(&s, &history, &format!("after SIGTERM, fsync={fsync}"));
    s.stop();
}

#[test]
fn sigterm_while_writing_exits_zero_and_keeps_writes() {
    sigterm_under_load("always");
}

#[test]
fn sigterm_while_writing_keeps_writes_with_fsync_no() {
    // Without fsync a crash may lose writes, but a clean stop must not.
    sigterm_under_load("no");
    sigterm_under_load("everysec");
}

#[test]
fn sigkill_while_the_map_grows() {
    // Unique keys with 20 KB values from a 1 MiB map: the map is grown several times
    // while writers run, and the process is killed in the middle of it.
    let mut s = Server::start(&["--fsync", "always", "--initial-map-size", "1048576"]);
    let history: History = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = Workload {
        keys_per_writer: 0,
        value_len: 20 * 1024,
        del_every: 0,
    };
    let writers = start_writers(s.addr(), 0, &history, &stop, load);
    std::thread::sleep(Duration::from_millis(2000));
    let resizes = info_u64(&mut s.raw(), "persistence", "lmdb_map_resizes");
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    let acked: u64 = writers.into_iter().map(|w| w.join().expect("writer thread")).sum();
    eprintln!("{acked} writes acknowledged, {resizes} map resizes before the kill");
    assert!(resizes > 0, "the map never grew ({acked} writes of 20 KB)");
    s.start_again();
    let keys = check_history(&s, &history, "after SIGKILL during map growth");
    assert!(keys as u64 >= acked);
    s.stop();
}

#[test]
fn sigterm_does_not_wait_for_stalled_clients() {
    let mut s = Server::start(&[]);
    let mut stalled = s.raw();
    stalled
        .send(b"*2\r\n$3\r\nGET\r\n$10\r\nab")
        .expect("send half a frame");
    let mut idle = s.raw();
    assert_eq!(idle.cmd(&[b"PING"]), Resp::Simple("PONG".into()));
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(common::EXIT_TIMEOUT);
    assert!(status.success(), "exit {status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} with an idle and a stalled client",
        t.elapsed()
    );
}

#[test]
fn siblings_and_node_identity_survive_restarts() {
    let mut s = Server::start(&[]);
    let mut r = s.raw();
    let node_id = |r: &mut Raw| {
        let text = common::info(r, "server");
        common::info_field(&text, "node_id").expect("node_id in INFO server")
    };
    let siblings = |r: &mut Raw, k: &[u8]| -> (Vec<u8>, Vec<Vec<u8>>) {
        let reply = r.cmd(&[b"SIBLINGS", k]);
        let items = reply.items();
        let vals = items[1].items().iter().map(Resp::bytes).collect();
        (items[0].bytes(), vals)
    };
    let id = node_id(&mut r);
    assert_eq!(r.cmd(&[b"SET", b"k", b"a"]), Resp::Simple("OK".into()));
    let (ctx1, _) = siblings(&mut r, b"k");
    assert_eq!(r.cmd(&[b"SET", b"k", b"b"]), Resp::Simple("OK".into()));
    assert_eq!(r.cmd(&[b"RESOLVE", b"k", &ctx1, b"c"]), Resp::Simple("OK".into()));
    drop(r);
    s.restart();
    let mut r = s.raw();
    assert_eq!(node_id(&mut r), id, "node id changed across a restart");
    let (ctx2, mut vals) = siblings(&mut r, b"k");
    vals.sort();
    assert_eq!(vals, vec![b"b".to_vec(), b"c".to_vec()], "siblings lost");
    // The restarted node continues its version counters: a sequential write after the
    // restart supersedes everything, and a pre-restart context is still concurrent.
    assert_eq!(r.cmd(&[b"SET", b"k2", b"x"]), Resp::Simple("OK".into()));
    let (old2, _) = siblings(&mut r, b"k2");
    drop(r);
    s.kill9();
    s.start_again();
    let mut r = s.raw();
    assert_eq!(node_id(&mut r), id, "node id changed across a crash");
    assert_eq!(r.cmd(&[b"SET", b"k2", b"y"]), Resp::Simple("OK".into()));
    assert_eq!(siblings(&mut r, b"k2").1, vec![b"y".to_vec()]);
    assert_eq!(r.cmd(&[b"RESOLVE", b"k2", &old2, b"z"]), Resp::Simple("OK".into()));
    let (_, mut vals) = siblings(&mut r, b"k2");
    vals.sort();
    assert_eq!(
        vals,
        vec![b"y".to_vec(), b"z".to_vec()],
        "a write made after the crash was treated as covered by an older context: the \
         node reused version counters"
    );
    assert_eq!(r.cmd(&[b"RESOLVE", b"k", &ctx2, b"d"]), Resp::Simple("OK".into()));
    assert_eq!(siblings(&mut r, b"k").1, vec![b"d".to_vec()]);
    drop(r);
    s.stop();
}

#[test]
fn shutdown_command_closes_without_reply_and_exits_zero() {
    let mut s = Server::start(&[]);
    let mut r = s.raw();
    assert_eq!(r.cmd(&[b"SET", b"kept", b"yes"]), Resp::Simple("OK".into()));
    // Refused variants reply and do nothing.
    assert_eq!(
        r.cmd(&[b"SHUTDOWN", b"ABORT"]),
        Resp::Error("ERR No shutdown in progress.".into())
    );
    assert_eq!(r.cmd(&[b"SHUTDOWN", b"BOGUS"]), Resp::Error("ERR syntax error".into()));
    let mut other = s.raw();
    r.send(&encode(&[b"SHUTDOWN"])).expect("send SHUTDOWN");
    let (got, eof) = r.read_to_eof(Duration::from_secs(10));
    assert!(
        got.is_empty(),
        "SHUTDOWN must not reply, got {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(eof, "SHUTDOWN must close the connection");
    // Other connections are closed too.
    let (_, eof) = other.read_to_eof(Duration::from_secs(15));
    assert!(eof, "other connections stay open after SHUTDOWN");
    let status = s.wait_exit(common::EXIT_TIMEOUT);
    assert!(status.success(), "SHUTDOWN: exit {status:?}\n{}", s.log());
    s.start_again();
    let mut r = s.raw();
    assert_eq!(r.cmd(&[b"GET", b"kept"]), Resp::bulk("yes"));
    s.stop();
}

/// A 100 KB value derived from its index, so any mix-up shows.
fn value_of(i: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

fn check_values(s: &Server, keys: &[(String, Vec<u8>)], what: &str) {
    let mut r = s.raw();
    for (k, v) in keys {
        match r.cmd(&[b"GET", k.as_bytes()]) {
            Resp::Bulk(b) => assert!(&b == v, "{what}: {k} has a different value"),
            other => panic!("{what}: GET {k}: {other:?}"),
        }
    }
}

/// Writes 30 MB from a 1 MiB map while two threads keep reading (GET and SCAN): the
/// map must grow without losing or mixing values, and without stalling the readers.
fn map_growth(fsync: &str) {
    let mut s = Server::start(&["--initial-map-size", "1048576", "--fsync", fsync]);
    let mut r = s.raw();
    let len = 100 * 1024;
    let n = 300; // 30 MB
    let mut written = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    assert_eq!(r.cmd(&[b"SET", b"probe", b"p"]), Resp::Simple("OK".into()));
    let readers: Vec<_> = (0..2)
        .map(|t| {
            let stop = stop.clone();
            let addr = s.addr();
            std::thread::spawn(move || {
                let mut c = Raw::connect(addr);
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if t == 0 {
                        // Pipelined, so the GETs share a read transaction (a run of
                        // reads) while the map grows.
                        let get = encode(&[b"GET", b"probe"]);
                        c.send(&get.repeat(8)).expect("send");
                        for _ in 0..8 {
                            assert_eq!(c.read_reply().expect("reply"), Resp::bulk("p"));
                        }
                    } else {
                        let reply = c.cmd(&[b"SCAN", b"0", b"COUNT", b"5"]);
                        assert!(matches!(reply, Resp::Array(_)), "SCAN: {reply:?}");
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let mut batch = Vec::new();
        for &i in chunk {
            let k = format!("big:{i}");
            let v = value_of(i, len);
            batch.extend(encode(&[b"SET", k.as_bytes(), &v]));
            written.push((k, v));
        }
        r.send(&batch).expect("send");
        for &i in chunk {
            let reply = r.read_reply().expect("reply");
            assert_eq!(reply, Resp::Simple("OK".into()), "SET big:{i}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in readers {
        let reads = t.join().expect("reader thread");
        assert!(reads > 0);
    }
    check_values(&s, &written, "before restart");
    let resizes = info_u64(&mut r, "persistence", "lmdb_map_resizes");
    assert!(resizes > 0, "lmdb_map_resizes = {resizes} after 30 MB");
    let map = info_u64(&mut r, "memory", "lmdb_map_size");
    assert!(map >= 30 * 1024 * 1024, "lmdb_map_size = {map}");
    assert_eq!(info_u64(&mut r, "persistence", "lmdb_failed_commits"), 0);
    drop(r);
    s.restart();
    check_values(&s, &written, "after restart");
    // And it keeps growing after a restart.
    let mut r = s.raw();
    for i in n..n + 50 {
        let k = format!("big:{i}");
        let v = value_of(i, len);
        assert_eq!(r.cmd(&[b"SET", k.as_bytes(), &v]), Resp::Simple("OK".into()));
        written.push((k, v));
    }
    check_values(&s, &written, "after growing again");
    drop(r);
    s.stop();
}

#[test]
fn map_grows_past_its_initial_size() {
    map_growth("always");
}

#[test]
fn map_grows_with_fsync_no() {
    map_growth("no");
}

/// A tmpfs mounted for one test; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test needs root: it mounts a small tmpfs to fill the disk (run the \
             tests as root, as CI does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "this test needs root and mount(8): mount -t tmpfs failed ({st})"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

#[test]
fn disk_full_gives_clean_errors_and_no_corruption() {
    let fs = Tmpfs::mount("24m");
    let data = fs.path().join("data");
    let mut s = Server::start_with(common::Setup {
        data_dir: Some(data),
        ..common::Setup::args(&["--initial-map-size", "1048576"])
    });
    let mut r = s.raw();
    let len = 100 * 1024;
    let mut acked = Vec::new();
    let mut error = None;
    for i in 0..1000 {
        let k = format!("fill:{i}");
        let v = value_of(i, len);
        match r.cmd(&[b"SET", k.as_bytes(), &v]) {
            Resp::Simple(ok) if ok == "OK" => acked.push((k, v)),
            Resp::Error(e) => {
                error = Some(e);
                break;
            }
            other => panic!("SET {k}: {other:?}"),
        }
    }
    let error = error.expect("24 MB tmpfs never filled after 100 MB of writes");
    eprintln!("disk full after {} writes: {error}", acked.len());
    assert!(acked.len() > 20, "only {} writes fit in 24 MB", acked.len());
    assert!(
        error.starts_with("ERR ")
            && (error.contains("disk full") || error.contains("storage"))
            && !error.contains('\n'),
        "unclean disk-full error: {error:?}"
    );
    // Checked last, so that the durability checks below run either way: a full disk
    // corrupts nothing, and an error that says so misleads operators and clients.
    let misleading = error.to_ascii_lowercase().contains("corrupt");
    // The server still serves reads of earlier keys, on this and new connections.
    assert_eq!(r.cmd(&[b"PING"]), Resp::Simple("PONG".into()));
    check_values(&s, &acked, "after disk full");
    // Further writes fail cleanly too, and do not hang.
    let more = value_of(5000, len);
    match r.cmd(&[b"SET", b"fill:more", &more]) {
        Resp::Error(e) => assert!(e.starts_with("ERR "), "{e}"),
        Resp::Simple(_) => acked.push(("fill:more".into(), more)),
        other => panic!("{other:?}"),
    }
    assert!(info_u64(&mut r, "persistence", "lmdb_failed_commits") >= 1);
    drop(r);
    s.restart();
    check_values(&s, &acked, "after restart on a full disk");
    let mut r = s.raw();
    let dbsize = match r.cmd(&[b"DBSIZE"]) {
        Resp::Int(n) => n as usize,
        other => panic!("DBSIZE {other:?}"),
    };
    assert_eq!(dbsize, acked.len(), "keys appeared or vanished");
    drop(r);
    s.stop();
    drop(s);
    drop(fs);
    assert!(
        !misleading,
        "a full disk is reported as corruption: {error:?} (nothing was corrupt: every \
         acknowledged key read back after the restart)"
    );
}
