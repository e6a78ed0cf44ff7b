//! The background sweep: expired values and tombstones are reaped (records removed) once
//! their grace period has passed, and never before; live keys are never reaped.

mod common;

use std::time::{Duration, Instant};

use common::{Raw, Resp, Server, encode, info_u64, write_temp_file};

/// Starts a server whose sweep runs every 20 ms with the given tombstone grace.
fn server_with_grace(grace_secs: u64) -> (tempfile::TempDir, Server) {
    let (dir, path) = write_temp_file(
        "dynkv.toml",
        &format!("tombstone-grace-secs = {grace_secs}\nexpire-sweep-interval-ms = 20\n"),
    );
    let path = path.to_str().expect("utf-8 path").to_string();
    let s = Server::start(&["--config", &path]);
    (dir, s)
}

/// Sends many requests in one pipeline and checks every reply.
fn pipeline(r: &mut Raw, reqs: &[Vec<Vec<u8>>], want: &Resp) {
    let mut buf = Vec::new();
    for req in reqs {
        let args: Vec<&[u8]> = req.iter().map(|a| a.as_slice()).collect();
        buf.extend(encode(&args));
    }
    r.send(&buf).expect("send pipeline");
    for req in reqs {
        let got = r.read_reply().expect("reply");
        assert_eq!(&got, want, "{:?}", String::from_utf8_lossy(&req[0]));
    }
}

fn set_px(prefix: &str, n: usize, px: &str) -> Vec<Vec<Vec<u8>>> {
    (0..n)
        .map(|i| {
            vec![
                b"SET".to_vec(),
                format!("{prefix}:{i}").into_bytes(),
                b"v".to_vec(),
                b"PX".to_vec(),
                px.as_bytes().to_vec(),
            ]
        })
        .collect()
}

/// Polls `expired_keys` until it reaches `want` (or the deadline); returns the last value.
fn wait_expired(r: &mut Raw, want: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let n = info_u64(r, "stats", "expired_keys");
        if n >= want || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dbsize(r: &mut Raw) -> i64 {
    match r.cmd(&[b"DBSIZE"]) {
        Resp::Int(n) => n,
        other => panic!("DBSIZE: {other:?}"),
    }
}

#[test]
fn sweep_reaps_expired_keys() {
    let (_cfg, mut s) = server_with_grace(0);
    let mut r = s.raw();
    // Keys that must survive: persistent ones and ones with a long TTL.
    pipeline(&mut r, &set_px("long", 100, "600000"), &Resp::Simple("OK".into()));
    for i in 0..100 {
        let k = format!("keep:{i}");
        assert_eq!(r.cmd(&[b"SET", k.as_bytes(), b"v"]), Resp::Simple("OK".into()));
    }
    pipeline(&mut r, &set_px("short", 2000, "100"), &Resp::Simple("OK".into()));
    // (Some short keys may be gone already: no DBSIZE check here.)
    let reaped = wait_expired(&mut r, 2000, Duration::from_secs(5));
    assert_eq!(reaped, 2000, "expired_keys after the sweep");
    assert_eq!(dbsize(&mut r), 200);
    // A little later nothing else has been reaped.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(info_u64(&mut r, "stats", "expired_keys"), 2000);
    for i in [0, 57, 99] {
        let k = format!("long:{i}");
        assert_eq!(r.cmd(&[b"GET", k.as_bytes()]), Resp::bulk("v"));
        let k = format!("keep:{i}");
        assert_eq!(r.cmd(&[b"GET", k.as_bytes()]), Resp::bulk("v"));
    }
    // A reaped key can be written again, and is live.
    assert_eq!(r.cmd(&[b"SET", b"short:7", b"again"]), Resp::Simple("OK".into()));
    assert_eq!(r.cmd(&[b"GET", b"short:7"]), Resp::bulk("again"));
    // Reaped records stay gone after a restart.
    drop(r);
    s.restart();
    let mut r = s.raw();
    assert_eq!(dbsize(&mut r), 201);
    assert_eq!(r.cmd(&[b"GET", b"short:8"]), Resp::Nil);
    s.stop();
}

#[test]
fn sweep_reaps_deleted_keys() {
    let (_cfg, s) = server_with_grace(0);
    let mut r = s.raw();
    let sets: Vec<Vec<Vec<u8>>> = (0..500)
        .map(|i| vec![b"SET".to_vec(), format!("d:{i}").into_bytes(), b"v".to_vec()])
        .collect();
    pipeline(&mut r, &sets, &Resp::Simple("OK".into()));
    assert_eq!(info_u64(&mut r, "stats", "expired_keys"), 0);
    let dels: Vec<Vec<Vec<u8>>> = (0..500)
        .map(|i| vec![b"DEL".to_vec(), format!("d:{i}").into_bytes()])
        .collect();
    pipeline(&mut r, &dels, &Resp::Int(1));
    let reaped = wait_expired(&mut r, 500, Duration::from_secs(5));
    assert_eq!(reaped, 500, "tombstones reaped");
    assert_eq!(dbsize(&mut r), 0);
    // GETDEL and an EXPIRE into the past leave tombstones too.
    assert_eq!(r.cmd(&[b"SET", b"g", b"1"]), Resp::Simple("OK".into()));
    assert_eq!(r.cmd(&[b"GETDEL", b"g"]), Resp::bulk("1"));
    assert_eq!(r.cmd(&[b"SET", b"e", b"1"]), Resp::Simple("OK".into()));
    assert_eq!(r.cmd(&[b"EXPIRE", b"e", b"-1"]), Resp::Int(1));
    assert_eq!(wait_expired(&mut r, 502, Duration::from_secs(5)), 502);
}

#[test]
fn default_grace_keeps_dead_records() {
    // With the default one-hour grace, expired and deleted records are kept (a replica
    // may still need the tombstone), though reads never see them.
    let (_cfg, s) = server_with_grace(3600);
    let mut r = s.raw();
    pipeline(&mut r, &set_px("short", 200, "50"), &Resp::Simple("OK".into()));
    assert_eq!(r.cmd(&[b"SET", b"d", b"v"]), Resp::Simple("OK".into()));
    assert_eq!(r.cmd(&[b"DEL", b"d"]), Resp::Int(1));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(info_u64(&mut r, "stats", "expired_keys"), 0);
    assert_eq!(dbsize(&mut r), 0);
    assert_eq!(r.cmd(&[b"GET", b"short:1"]), Resp::Nil);
    assert_eq!(r.cmd(&[b"GET", b"d"]), Resp::Nil);
}
