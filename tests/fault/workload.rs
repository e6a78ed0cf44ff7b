//! The clients: each thread talks to one node (of the clients started together, the i-th
//! talks to the (i mod k)-th of the k nodes given) and, in turn, adds a unique element to
//! a set key (SIBLINGS → union of every sibling + element → RESOLVE with the context) and
//! writes the next number to its own register key (SET). Every request is recorded with
//! its outcome.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::client::{Conn, Reply, sibling_set};
use super::history::{Kind, Op, Outcome};

/// The set keys.
pub fn set_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("set:{i}")).collect()
}

/// Client c's register key.
pub fn reg_key(c: usize) -> String {
    format!("reg:{c}")
}

/// Running clients; [`Clients::stop`] joins them and returns the merged history.
pub struct Clients {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Vec<Op>>>,
}

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Client threads.
    pub clients: usize,
    /// Set keys shared by all clients.
    pub set_keys: usize,
    /// Pause between two rounds of one client (keeps a 2-core machine breathing).
    pub pause: Duration,
    /// Socket timeout of every request.
    pub timeout: Duration,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            clients: 5,
            set_keys: 3,
            pause: Duration::from_millis(15),
            timeout: Duration::from_secs(2),
        }
    }
}

fn outcome(r: &Reply) -> Outcome {
    match r {
        Reply::Ok(_) => Outcome::Ok,
        Reply::Err(e) => Outcome::Err(e.clone()),
        Reply::Unknown(e) => Outcome::Unknown(e.clone()),
        Reply::NotSent(e) => Outcome::NotSent(e.clone()),
    }
}

impl Clients {
    /// Starts `count` clients numbered `first..first + count` (the number names the
    /// client's register key and its set elements, so it must be unique in a run) over
    /// `nodes` (index, client address) in turn; times are measured from `t0`.
    pub fn start(
        w: &Workload,
        count: usize,
        first: usize,
        nodes: &[(usize, SocketAddr)],
        t0: Instant,
        seed: u64,
    ) -> Clients {
        assert!(!nodes.is_empty(), "clients need a node to talk to");
        let stop = Arc::new(AtomicBool::new(false));
        let keys = set_keys(w.set_keys);
        let handles = (first..first + count)
            .map(|c| {
                let (node, addr) = nodes[(c - first) % nodes.len()];
                let mut conn = Conn::new(addr, w.timeout);
                let (stop, keys, pause) = (stop.clone(), keys.clone(), w.pause);
                let mut rng = super::schedule::Rng::new(seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9));
                std::thread::Builder::new()
                    .name(format!("fault-client-{c}"))
                    .spawn(move || {
                        let mut hist = Vec::new();
                        let ms = || t0.elapsed().as_millis() as u64;
                        let reg = reg_key(c);
                        let mut seq = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            seq += 1;
                            // Set workload: read, union, add, resolve.
                            let key = &keys[rng.below(keys.len() as u64) as usize];
                            let start = ms();
                            let read = conn.call(&[b"SIBLINGS", key.as_bytes()]);
                            hist.push(Op {
                                client: c,
                                node,
                                kind: Kind::Read,
                                key: key.clone(),
                                value: String::new(),
                                start_ms: start,
                                end_ms: ms(),
                                outcome: outcome(&read),
                            });
                            if let Reply::Ok(r) = &read {
                                let (ctx, values) = sibling_set(r)
                                    .unwrap_or_else(|e| panic!("SIBLINGS {key}: {e}"))
                                    .unwrap_or_default();
                                let element = format!("c{c}e{seq}");
                                let mut union: std::collections::BTreeSet<&str> =
                                    values.iter().flat_map(|v| super::check::elements(v)).collect();
                                union.insert(&element);
                                let joined = union.into_iter().collect::<Vec<_>>().join(",");
                                let start = ms();
                                let res = conn.call(&[b"RESOLVE", key.as_bytes(), ctx.as_bytes(), joined.as_bytes()]);
                                hist.push(Op {
                                    client: c,
                                    node,
                                    kind: Kind::Add,
                                    key: key.clone(),
                                    value: element,
                                    start_ms: start,
                                    end_ms: ms(),
                                    outcome: outcome(&res),
                                });
                            }
                            // Register workload: the next number.
                            let value = seq.to_string();
                            let start = ms();
                            let res = conn.call(&[b"SET", reg.as_bytes(), value.as_bytes()]);
                            hist.push(Op {
                                client: c,
                                node,
                                kind: Kind::Set,
                                key: reg.clone(),
                                value,
                                start_ms: start,
                                end_ms: ms(),
                                outcome: outcome(&res),
                            });
                            if matches!(res, Reply::NotSent(_)) {
                                // The node is unreachable: do not spin on refused connects.
                                std::thread::sleep(Duration::from_millis(200));
                            }
                            std::thread::sleep(pause);
                        }
                        hist
                    })
                    .expect("spawn client")
            })
            .collect();
        Clients { stop, handles }
    }

    /// Stops every client and returns the whole history (ordered by start time).
    pub fn stop(self) -> Vec<Op> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Op> = self
            .handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread panicked"))
            .collect();
        all.sort_by_key(|o| (o.start_ms, o.client));
        all
    }
}
