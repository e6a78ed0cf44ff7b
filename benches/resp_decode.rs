//! Micro-benchmarks of the RESP request parser.
//!
//! In the main crate the import is:
//! `use dynkv::resp::parser::{Limits, RequestParser};`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput};
use dynkv::resp::parser::{Limits, RequestParser};

/// Encodes one request as a RESP array of bulk strings.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Benchmarks parsing every request out of `input` with a fresh parser.
fn bench_input(c: &mut Criterion, name: &str, input: &[u8], requests: usize) {
    let mut group = c.benchmark_group("resp_decode");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function(name, |b| {
        b.iter_batched_ref(
            || BytesMut::from(input),
            |buf| {
                let mut parser = RequestParser::new(Limits::default());
                let mut n = 0;
                while let Ok(Some(args)) = parser.parse(buf) {
                    black_box(&args);
                    n += 1;
                }
                assert_eq!(n, requests);
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_input(c, "get", &encode(&[b"GET", b"key:000001"]), 1);

    let value = vec![b'v'; 100];
    let set = encode(&[b"SET", b"key:000001", &value]);
    bench_input(c, "set_100b", &set, 1);

    let batch: Vec<u8> = (0..16)
        .flat_map(|i| encode(&[b"SET", format!("key:{i:06}").as_bytes(), &value]))
        .collect();
    bench_input(c, "pipeline_16_set", &batch, 16);

    let big = vec![b'x'; 1 << 20];
    bench_input(c, "bulk_1mib", &encode(&[b"SET", b"big", &big]), 1);
}

criterion::criterion_group!(resp, benches);
criterion::criterion_main!(resp);
