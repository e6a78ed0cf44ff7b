//! dynkv's partition function against a real `redis-server`: for thousands of random binary keys
//! (hash tags, empty tags, nested braces, NUL bytes, the empty key) `CLUSTER KEYSLOT` must answer
//! exactly `dynkv::ring::partition_of`, so cluster-aware Redis clients route keys where dynkv
//! expects them. Also checks the published vectors of the Redis Cluster specification.
//!
//! Needs `redis-server` on PATH (Debian package `redis-server`; `scripts/test.sh` installs it).
//! Without it the test fails rather than skips: a skipped compatibility check proves nothing.

use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dynkv::ring::partition_of;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long redis-server may take to answer its first PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Random keys compared.
const KEYS: usize = 3000;

/// A running `redis-server` in cluster mode on a loopback port; dropping it kills the process.
struct RedisServer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers PING. Fails the test with
    /// an install hint if redis-server is not on PATH.
    fn start() -> RedisServer {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("create a temporary directory");
            let port = free_port();
            let log = dir.path().join("redis.log");
            let spawned = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                ])
                .arg("--cluster-config-file")
                .arg(dir.path().join("nodes.conf"))
                .arg("--dir")
                .arg(dir.path())
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(err) if err.kind() == ErrorKind::NotFound => panic!(
                    "redis-server is not on PATH: install it (Debian: apt-get install redis-server; \
                     scripts/test.sh installs it). This test compares dynkv's slots with a real Redis \
                     and must not be skipped."
                ),
                Err(err) => panic!("cannot start redis-server: {err}"),
            };
            let mut server = RedisServer {
                child,
                port,
                log,
                _dir: dir,
            };
            match server.wait_ready() {
                Ok(()) => return server,
                // Most likely another process took the port between free_port() and bind: retry.
                Err(err) => last_error = err,
            }
        }
        panic!("redis-server did not become ready: {last_error}");
    }

    /// Polls PING until it answers, the process exits, or READY_TIMEOUT passes.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "redis-server exited with {status}; log:\n{}",
                    read_log(&self.log)
                ));
            }
            if let Ok(mut con) = self.connection() {
                if redis::cmd("PING")
                    .query::<String>(&mut con)
                    .is_ok_and(|pong| pong == "PONG")
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no PONG within {READY_TIMEOUT:?}; log:\n{}",
                    read_log(&self.log)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new synchronous connection.
    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?.get_connection()
    }

    /// `CLUSTER KEYSLOT` of every key, in one pipeline.
    fn keyslots(&self, keys: &[Vec<u8>]) -> Vec<i64> {
        let mut con = self.connection().expect("connect to redis-server");
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("CLUSTER").arg("KEYSLOT").arg(&key[..]);
        }
        let slots: Vec<i64> = pipe.query(&mut con).expect("pipelined CLUSTER KEYSLOT");
        assert_eq!(slots.len(), keys.len(), "one answer per key");
        slots
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// The server's log, for failure messages.
fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| format!("(no log: {err})"))
}

/// Random binary keys weighted towards the hash-tag edge cases: braces (balanced, empty, nested,
/// unbalanced), NUL bytes, high bytes, and lengths from 0 to 40.
fn random_keys(rng: &mut StdRng, count: usize) -> Vec<Vec<u8>> {
    const SPECIAL: &[u8] = b"{}{}{}\0ab";
    (0..count)
        .map(|_| {
            let len = rng.random_range(0..=40);
            let mut key: Vec<u8> = (0..len)
                .map(|_| match rng.random_range(0..10) {
                    0..=3 => SPECIAL[rng.random_range(0..SPECIAL.len())],
                    4..=6 => rng.random_range(b'a'..=b'z'),
                    _ => rng.random(),
                })
                .collect();
            // A third of the keys get an explicit tag somewhere: `{tag}`, `{}` or `{{tag}}`.
            if rng.random_range(0..3) == 0 {
                let tag: Vec<u8> = (0..rng.random_range(0..6)).map(|_| rng.random()).collect();
                let at = rng.random_range(0..=key.len());
                let wrapped: Vec<u8> = match rng.random_range(0..3) {
                    0 => [b"{".as_slice(), &tag, b"}"].concat(),
                    1 => b"{}".to_vec(),
                    _ => [b"{{".as_slice(), &tag, b"}}"].concat(),
                };
                key.splice(at..at, wrapped);
            }
            key
        })
        .collect()
}

#[test]
fn keyslot_matches_redis_server() {
    let server = RedisServer::start();

    let mut keys: Vec<Vec<u8>> = [
        b"".as_slice(),
        b"123456789",
        b"foo",
        b"bar",
        b"{user1000}.following",
        b"{user1000}.followers",
        b"user1000",
        b"foo{}{bar}",
        b"foo{{bar}}zap",
        b"foo{bar}{zap}",
        b"{",
        b"}",
        b"{}",
        b"}{",
        b"{}}",
        b"{{}}",
        b"a{\0}b",
        b"\0",
        b"\0{\0\0}",
    ]
    .iter()
    .map(|key| key.to_vec())
    .collect();
    keys.extend(random_keys(&mut StdRng::seed_from_u64(0x6b65_7973_6c6f_7473), KEYS));

    let slots = server.keyslots(&keys);
    let mismatches: Vec<String> = keys
        .iter()
        .zip(&slots)
        .filter(|&(key, &slot)| i64::from(partition_of(key)) != slot)
        .map(|(key, slot)| {
            format!(
                "{:?}: redis {slot}, dynkv {}",
                key.escape_ascii().to_string(),
                partition_of(key)
            )
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} keys hash to a different slot than redis-server's CLUSTER KEYSLOT, e.g.:\n{}",
        mismatches.len(),
        keys.len(),
        mismatches.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    let tagged = keys.iter().filter(|key| key.contains(&b'{')).count();
    assert!(
        tagged > KEYS / 3,
        "the random keys exercise hash tags ({tagged} with a brace)"
    );
}

#[test]
fn cluster_spec_vectors() {
    // Redis Cluster specification: CRC16-XMODEM("123456789") = 0x31C3, and 0x31C3 < 16384.
    assert_eq!(crc16_slot(b"123456789"), 0x31C3);
    assert_eq!(partition_of(b"123456789"), 0x31C3);
    // Keys with the same hash tag share a slot: the slot of the tag alone.
    assert_eq!(
        partition_of(b"{user1000}.following"),
        partition_of(b"{user1000}.followers")
    );
    assert_eq!(partition_of(b"{user1000}.following"), partition_of(b"user1000"));
    // An empty tag does not count: the whole key is hashed.
    assert_eq!(partition_of(b"foo{}{bar}"), crc16_slot(b"foo{}{bar}"));
    // Only up to the first `}` after the first `{`: the tag of "foo{{bar}}zap" is "{bar".
    assert_eq!(partition_of(b"foo{{bar}}zap"), partition_of(b"{bar"));
    // Only the first tag: "foo{bar}{zap}" hashes "bar".
    assert_eq!(partition_of(b"foo{bar}{zap}"), partition_of(b"bar"));

    // And redis-server agrees on them.
    let server = RedisServer::start();
    let keys: Vec<Vec<u8>> = [
        b"123456789".as_slice(),
        b"{user1000}.following",
        b"{user1000}.followers",
    ]
    .iter()
    .map(|key| key.to_vec())
    .collect();
    assert_eq!(
        server.keyslots(&keys),
        [
            0x31C3,
            partition_of(b"user1000").into(),
            partition_of(b"user1000").into()
        ]
    );
}

/// CRC16-XMODEM of the whole key mod 16384, written out from the specification (polynomial
/// 0x1021, initial value 0, no reflection), independently of dynkv's implementation.
fn crc16_slot(key: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in key {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}
