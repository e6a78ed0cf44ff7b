//! Micro-benchmarks for sibling-set merge and the binary codec.
//!
//! In this scratch crate the import path is `dynkv::version::...`; in the
//! main crate it is `dynkv::version::...`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use dynkv::version::{NewSibling, SiblingSet, VersionVector};

/// Realistic node ids and a microsecond wall clock used as counter floor.
const NODES: [u64; 3] = [0x1f2e_3d4c_5b6a_7988, 0x0102_0304_0506_0708, 0x7fff_0000_1234_5678];
const NOW_US: u64 = 1_700_000_000_000_000;
const NOW_MS: u64 = NOW_US / 1000;

fn payload(len: usize) -> NewSibling {
    NewSibling {
        value: Bytes::from(vec![b'x'; len]),
        written_at_ms: NOW_MS,
        expires_at_ms: None,
        tombstone: false,
    }
}

/// A set that has seen one write from each of the three nodes, ending with
/// a single sibling (each write carried the current context).
fn three_node_single(offset: u64) -> SiblingSet {
    let mut s = SiblingSet::new();
    for (i, &n) in NODES.iter().enumerate() {
        let ctx = s.context().clone();
        s.write(&ctx, n, NOW_US + offset + i as u64, payload(16));
    }
    s
}

/// A set with three concurrent siblings, one per node (all blind writes).
fn three_concurrent(offset: u64) -> SiblingSet {
    let mut s = SiblingSet::new();
    for (i, &n) in NODES.iter().enumerate() {
        s.write(&VersionVector::new(), n, NOW_US + offset + i as u64, payload(16));
    }
    s
}

fn bench(c: &mut Criterion) {
    // Two replicas that diverged: same history, then one more write on `b`.
    let a = three_node_single(0);
    let mut b = a.clone();
    let ctx = b.context().clone();
    b.write(&ctx, NODES[1], NOW_US + 100, payload(16));
    c.bench_function("merge/3-node, 1 sibling each", |bench| {
        bench.iter(|| {
            let mut m = black_box(&a).clone();
            m.merge(black_box(&b));
            m
        })
    });

    let x = three_concurrent(0);
    let mut y = three_concurrent(10);
    y.merge(&x);
    c.bench_function("merge/3 concurrent siblings", |bench| {
        bench.iter(|| {
            let mut m = black_box(&x).clone();
            m.merge(black_box(&y));
            m
        })
    });

    let mut s = SiblingSet::new();
    let ctx = three_node_single(0).context().clone();
    s.write(&ctx, NODES[0], NOW_US, payload(100));
    let encoded = s.to_bytes();
    c.bench_function("codec/encode 100-byte value", |bench| {
        let mut buf = Vec::with_capacity(256);
        bench.iter(|| {
            buf.clear();
            black_box(&s).encode(&mut buf);
            buf.len()
        })
    });
    c.bench_function("codec/decode 100-byte value", |bench| {
        bench.iter(|| SiblingSet::decode(black_box(&encoded)))
    });
    let shared = Bytes::from(encoded.clone());
    c.bench_function("codec/decode_shared 100-byte value", |bench| {
        bench.iter(|| SiblingSet::decode_shared(black_box(&shared)))
    });
    c.bench_function("token/roundtrip 3-node context", |bench| {
        bench.iter(|| VersionVector::from_token(black_box(&ctx).to_token().as_bytes()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
