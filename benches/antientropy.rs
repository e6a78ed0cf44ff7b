//! Anti-entropy cost against the size of the difference: two real LMDB stores with
//! 100,000 keys each, of which 0, 10, 100, 1,000 or 10,000 differ, reconciled by one
//! exchange (the production code, `dynkv::coordinator::antientropy::exchange`) over an
//! in-process link that serves each encoded request with the production handler. Prints
//! bytes exchanged, round trips and time per case, and writes
//! `benches/results/antientropy.csv`. Run: `cargo bench --bench antientropy`.
//!
//! The divergent keys are a mix: the peer holds a newer version (half), a key only the
//! peer has (a quarter), and concurrent versions on both sides (a quarter).

use std::time::Instant;

use bytes::Bytes;
use dynkv::config::Fsync;
use dynkv::coordinator::antientropy::{AeStats, Remote, Report, Throttle, exchange, serve};
use dynkv::ring::PARTITIONS;
use dynkv::storage::{Change, Store};
use dynkv::version::{NewSibling, SiblingSet};

const KEYS: usize = 100_000;
const CASES: [usize; 5] = [0, 10, 100, 1_000, 10_000];
const VIEW: (u64, u8) = (0x5eed, 3);

/// The peer: a store answering encoded requests as a node's internode handler does.
struct Local(Store, AeStats);

impl Remote for Local {
    async fn call(&self, request: Bytes) -> Result<Bytes, String> {
        let req = dynkv::cluster::messages::decode(&request).map_err(|e| e.to_string())?;
        let resp = serve(&self.0, &req, VIEW, &self.1)
            .await
            .ok_or("not an anti-entropy request")?;
        Ok(dynkv::cluster::messages::encode(&resp))
    }
}

fn write(set: &mut SiblingSet, node: u64, value: &str) {
    set.write(
        &set.context().clone(),
        node,
        1,
        NewSibling {
            value: Bytes::from(value.to_string()),
            written_at_ms: 1_700_000_000_000,
            expires_at_ms: None,
            tombstone: false,
        },
    );
}

/// Stores `sets` (key, set) on `store`, 1,000 per transaction.
async fn load(store: &Store, sets: Vec<(Bytes, SiblingSet)>) {
    for chunk in sets.chunks(1000) {
        let (keys, sets): (Vec<Bytes>, Vec<SiblingSet>) = chunk.iter().cloned().unzip();
        store
            .update_many(keys, move |_| (sets.into_iter().map(Change::Put).collect(), ()))
            .await
            .expect("load");
    }
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("user:{i:08}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let a = Store::open(dir_a.path(), Fsync::No, 256 << 20, 1).expect("open a");
    let b = Store::open(dir_b.path(), Fsync::No, 256 << 20, 1).expect("open b");
    let base: Vec<(Bytes, SiblingSet)> = (0..KEYS)
        .map(|i| {
            let mut s = SiblingSet::new();
            write(&mut s, 1, &format!("value-{i:08}-{}", "x".repeat(40)));
            (key(i), s)
        })
        .collect();
    let started = Instant::now();
    load(&a, base.clone()).await;
    load(&b, base.clone()).await;
    eprintln!("loaded {KEYS} keys into both stores in {:?}", started.elapsed());
    let all: Vec<u16> = (0..PARTITIONS).collect();
    let throttle = Throttle::new(0);
    let peer = Local(b.clone(), AeStats::default());
    let mut rows = Vec::new();
    let mut next_key = KEYS;
    let mut round = 0usize;
    for &d in &CASES {
        round += 1;
        // Make `d` keys differ, spread over the key space.
        let mut on_b = Vec::new();
        let mut on_a = Vec::new();
        let step = (KEYS / d.max(1)).max(1);
        for j in 0..d {
            let i = (j * step + round) % KEYS;
            let (k, mut s) = base[i].clone();
            match j % 4 {
                0 | 1 => {
                    write(&mut s, 2, &format!("newer-{round}"));
                    on_b.push((k, s));
                }
                2 => {
                    let mut fresh = SiblingSet::new();
                    write(&mut fresh, 2, "only on b");
                    on_b.push((key(next_key), fresh));
                    next_key += 1;
                }
                _ => {
                    let mut sa = s.clone();
                    write(&mut sa, 3, &format!("a-{round}"));
                    write(&mut s, 2, &format!("b-{round}"));
                    on_a.push((k.clone(), sa));
                    on_b.push((k, s));
                }
            }
        }
        // Merge into what each side holds (as a replica would), so earlier rounds' repairs stay.
        for (store, items) in [(&a, on_a), (&b, on_b)] {
            dynkv::coordinator::antientropy::merge_many(store, items)
                .await
                .expect("diverge");
        }
        let t = Instant::now();
        let r: Report = exchange(&a, &peer, &all, VIEW, &throttle).await.expect("exchange");
        let took = t.elapsed();
        assert_eq!(
            a.tree_roots().expect("roots"),
            b.tree_roots().expect("roots"),
            "not converged after d={d}"
        );
        let again = exchange(&a, &peer, &all, VIEW, &throttle).await.expect("exchange");
        assert_eq!(
            (again.fetched, again.pushed),
            (0, 0),
            "a second exchange found more to do"
        );
        rows.push((d, r, took));
    }
    println!(
        "| divergent keys (of {KEYS}) | partitions differing | records fetched | records pushed | round trips | bytes sent | bytes received | bytes total | bytes per divergent key | time (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut csv = String::from("divergent,partitions,fetched,pushed,round_trips,bytes_sent,bytes_received,ms\n");
    for (d, r, took) in &rows {
        let total = r.bytes_sent + r.bytes_received;
        let per = if *d == 0 {
            "-".to_string()
        } else {
            format!("{:.0}", total as f64 / *d as f64)
        };
        let ms = took.as_secs_f64() * 1000.0;
        let fields = [
            d.to_string(),
            r.partitions.to_string(),
            r.fetched.to_string(),
            r.pushed.to_string(),
            r.round_trips.to_string(),
            r.bytes_sent.to_string(),
            r.bytes_received.to_string(),
        ];
        println!("| {} | {total} | {per} | {ms:.1} |", fields.join(" | "));
        csv.push_str(&format!("{},{ms:.1}\n", fields.join(",")));
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/antientropy.csv");
    std::fs::write(&out, csv).expect("write csv");
    eprintln!("wrote {}", out.display());
    a.close().await.expect("close");
    b.close().await.expect("close");
}
