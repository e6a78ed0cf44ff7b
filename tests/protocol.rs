//! The wire protocol, byte for byte, over raw TCP: RESP and inline requests, pipelining,
//! Redis's protocol errors (reply, then close), limits, slow and hostile clients, and
//! many concurrent connections.

mod common;

use std::time::{Duration, Instant};

use common::{Raw, Resp, Server, encode, info_u64};
use rand::{Rng, SeedableRng};

/// Sends `input` on a fresh connection and expects exactly `reply` followed by a close.
fn expect_error_and_close(s: &Server, input: &[u8], reply: &[u8]) {
    let mut r = Raw::connect(s.addr());
    r.send(input).expect("send");
    let (got, eof) = r.read_to_eof(Duration::from_secs(5));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(reply),
        "reply to {:?}",
        String::from_utf8_lossy(&input[..input.len().min(60)])
    );
    assert!(eof, "the server must close the connection after a protocol error");
    assert_alive(s);
}

/// A fresh connection answers PING.
fn assert_alive(s: &Server) {
    let mut r = Raw::connect(s.addr());
    r.set_timeout(Duration::from_secs(5));
    r.send(b"*1\r\n$4\r\nPING\r\n").expect("send PING");
    assert_eq!(
        r.read_exact_bytes(7).expect("PONG"),
        b"+PONG\r\n",
        "server no longer answers PING"
    );
}

#[test]
fn ping_bytes() {
    let s = Server::start(&[]);
    let mut r = s.raw();
    r.send(b"*1\r\n$4\r\nPING\r\n").expect("send");
    assert_eq!(r.read_exact_bytes(7).expect("reply"), b"+PONG\r\n");
    r.send(b"*2\r\n$4\r\nPING\r\n$5\r\nhello\r\n").expect("send");
    assert_eq!(r.read_exact_bytes(11).expect("reply"), b"$5\r\nhello\r\n");
    // A frame split across many writes still parses.
    for b in b"*2\r\n$4\r\nECHO\r\n$3\r\nabc\r\n" {
        r.send(&[*b]).expect("send byte");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(r.read_exact_bytes(9).expect("reply"), b"$3\r\nabc\r\n");
}

#[test]
fn inline_requests() {
    let s = Server::start(&[]);
    let mut r = s.raw();
    r.send(b"PING\r\n").expect("send");
    assert_eq!(r.read_exact_bytes(7).expect("reply"), b"+PONG\r\n");
    r.send(b"SET k \"a b\"\r\n").expect("send");
    assert_eq!(r.read_exact_bytes(5).expect("reply"), b"+OK\r\n");
    r.send(b"GET k\r\n").expect("send");
    assert_eq!(r.read_exact_bytes(9).expect("reply"), b"$3\r\na b\r\n");
    // A bare LF ends an inline request too, and empty lines are ignored.
    r.send(b"\r\n\nGET k\n").expect("send");
    assert_eq!(r.read_exact_bytes(9).expect("reply"), b"$3\r\na b\r\n");
    // Escapes inside double quotes.
    r.send(b"SET bin \"x\\x00y\\n\"\r\nSTRLEN bin\r\n").expect("send");
    assert_eq!(r.read_exact_bytes(9).expect("reply"), b"+OK\r\n:4\r\n");
    // Unbalanced quotes: error, then close.
    expect_error_and_close(
        &s,
        b"SET k \"abc\r\n",
        b"-ERR Protocol error: unbalanced quotes in request\r\n",
    );
}

#[test]
fn pipelining_keeps_order() {
    let s = Server::start(&[]);
    let mut r = s.raw();
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for i in 0..100 {
        match i % 4 {
            0 => {
                let v = format!("v{i}");
                batch.extend(encode(&[b"SET", b"pk", v.as_bytes()]));
                expected.push(b"+OK\r\n".to_vec());
            }
            1 => {
                let v = format!("v{}", i - 1);
                batch.extend(encode(&[b"GET", b"pk"]));
                expected.push(format!("${}\r\n{v}\r\n", v.len()).into_bytes());
            }
            2 => {
                let v = format!("e{i}");
                batch.extend(encode(&[b"ECHO", v.as_bytes()]));
                expected.push(format!("${}\r\n{v}\r\n", v.len()).into_bytes());
            }
            _ => {
                batch.extend(encode(&[b"APPEND", b"log", b"x"]));
                expected.push(format!(":{}\r\n", i / 4 + 1).into_bytes());
            }
        }
    }
    r.send(&batch).expect("send pipeline");
    let want: Vec<u8> = expected.concat();
    let got = r.read_exact_bytes(want.len()).expect("100 replies");
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
    // Nothing extra arrives.
    r.set_timeout(Duration::from_millis(200));
    let (extra, _) = r.read_to_eof(Duration::from_millis(200));
    assert!(extra.is_empty(), "unexpected bytes {extra:?}");

    // Inline requests pipeline too.
    let mut r = s.raw();
    r.send(&b"PING\r\n".repeat(100)).expect("send");
    assert_eq!(r.read_exact_bytes(700).expect("replies"), b"+PONG\r\n".repeat(100));
}

#[test]
fn malformed_resp_errors_then_closes() {
    let s = Server::start(&[]);
    expect_error_and_close(
        &s,
        b"*1\r\n+PING\r\n",
        b"-ERR Protocol error: expected '$', got '+'\r\n",
    );
    expect_error_and_close(
        &s,
        b"*2\r\n$4294967296\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    );
    expect_error_and_close(&s, b"*2\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length\r\n");
    expect_error_and_close(
        &s,
        b"*99999999999\r\n",
        b"-ERR Protocol error: invalid multibulk length\r\n",
    );
    expect_error_and_close(&s, b"*abc\r\n", b"-ERR Protocol error: invalid multibulk length\r\n");
    expect_error_and_close(
        &s,
        b"*1\r\n$3\r\nabcXY",
        b"-ERR Protocol error: expected CRLF after bulk\r\n",
    );
    // Replies to requests before the bad one are sent first.
    expect_error_and_close(
        &s,
        b"*1\r\n$4\r\nPING\r\n*1\r\n+PING\r\n",
        b"+PONG\r\n-ERR Protocol error: expected '$', got '+'\r\n",
    );
    // A 40 KB nest of arrays.
    let nested = b"*1\r\n".repeat(10 * 1024);
    let mut r = Raw::connect(s.addr());
    r.send(&nested).expect("send nested");
    let (got, eof) = r.read_to_eof(Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("-ERR Protocol error") && text.ends_with("\r\n") && text.matches("\r\n").count() == 1,
        "nested arrays: {text:?}"
    );
    assert!(eof, "nested arrays: connection not closed");
    assert_alive(&s);
}

#[test]
fn oversized_inline_request() {
    let s = Server::start(&[]);
    let line = vec![b'a'; 70 * 1024];
    expect_error_and_close(&s, &line, b"-ERR Protocol error: too big inline request\r\n");
    // Just under the limit with a newline is an (unknown) command, not a protocol error.
    let mut r = s.raw();
    let mut ok_line = vec![b'a'; 60 * 1024];
    ok_line.extend_from_slice(b"\r\n");
    r.send(&ok_line).expect("send");
    match r.read_reply().expect("reply") {
        Resp::Error(e) => assert!(e.starts_with("ERR unknown command 'aaaa"), "{}", &e[..60]),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.cmd(&[b"PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn stalled_client_does_not_block_others() {
    let s = Server::start(&[]);
    let mut slow = s.raw();
    slow.send(b"*2\r\n$3\r\nGET\r\n$10\r\nab").expect("send half");
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..5 {
        let t = Instant::now();
        let mut other = s.raw();
        assert_eq!(other.cmd(&[b"SET", b"x", b"1"]), Resp::Simple("OK".into()));
        assert_eq!(other.cmd(&[b"PING"]), Resp::Simple("PONG".into()));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "another client waited {:?} behind a stalled one",
            t.elapsed()
        );
    }
    // The stalled client can still finish its request.
    slow.send(b"cdefghij\r\n").expect("send rest");
    assert_eq!(slow.read_reply().expect("reply"), Resp::Nil);
}

#[test]
fn binary_garbage_never_kills_the_server() {
    let s = Server::start(&[]);
    for seed in 1..=8u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut junk = vec![0u8; 8 * 1024];
        if seed % 2 == 0 {
            rng.fill(&mut junk[..]);
        } else {
            // Protocol-looking junk reaches deeper into the parser.
            let alphabet = b"*$+-:\r\n0123456789-\0\xff abcSETGET\"'\\";
            for b in junk.iter_mut() {
                *b = alphabet[rng.random_range(0..alphabet.len())];
            }
        }
        let mut r = Raw::connect(s.addr());
        r.send(&junk)
            .unwrap_or_else(|e| panic!("seed {seed}: send failed: {e}"));
        let _ = r.read_to_eof(Duration::from_millis(300));
        drop(r);
        let mut ok = Raw::connect(s.addr());
        assert_eq!(ok.cmd(&[b"PING"]), Resp::Simple("PONG".into()), "seed {seed}");
    }
    assert_alive(&s);
}

#[test]
fn max_bulk_len_is_enforced() {
    let s = Server::start(&["--max-bulk-len", "1024"]);
    let mut r = s.raw();
    let v = vec![b'x'; 1024];
    assert_eq!(r.cmd(&[b"SET", b"k", &v]), Resp::Simple("OK".into()));
    assert_eq!(r.cmd(&[b"STRLEN", b"k"]), Resp::Int(1024));
    let mut input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2048\r\n".to_vec();
    input.extend(vec![b'y'; 2048]);
    input.extend_from_slice(b"\r\n");
    expect_error_and_close(&s, &input, b"-ERR Protocol error: invalid bulk length\r\n");
    assert_eq!(r.cmd(&[b"STRLEN", b"k"]), Resp::Int(1024));
    // Growing a value past the limit with APPEND is refused.
    match r.cmd(&[b"APPEND", b"k", b"z"]) {
        Resp::Error(e) => assert!(e.contains("proto-max-bulk-len"), "{e}"),
        other => panic!("APPEND past the limit: {other:?}"),
    }
}

#[test]
fn max_clients_refuses_the_sixth() {
    let s = Server::start(&["--max-clients", "5"]);
    let mut first = s.raw();
    // Wait until the readiness probe's connection is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while info_u64(&mut first, "clients", "connected_clients") != 1 {
        assert!(Instant::now() < deadline, "probe connection never released");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut conns = vec![first];
    for _ in 0..4 {
        let mut c = s.raw();
        assert_eq!(c.cmd(&[b"PING"]), Resp::Simple("PONG".into()));
        conns.push(c);
    }
    let mut sixth = Raw::connect(s.addr());
    let (got, eof) = sixth.read_to_eof(Duration::from_secs(5));
    assert_eq!(String::from_utf8_lossy(&got), "-ERR max number of clients reached\r\n");
    assert!(eof, "refused connection must be closed");
    // The five still work.
    for c in &mut conns {
        assert_eq!(c.cmd(&[b"PING"]), Resp::Simple("PONG".into()));
    }
    assert_eq!(info_u64(&mut conns[0], "stats", "rejected_connections"), 1);
    // Closing one frees a slot.
    conns.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Raw::connect(s.addr());
        c.send(b"PING\r\n").expect("send");
        match c.read_line() {
            Ok(l) if l == b"+PONG" => break,
            other => {
                assert!(Instant::now() < deadline, "slot never freed: {other:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let limit = common::raise_fd_limit();
    assert!(limit >= 2200, "open-file limit {limit} too low for this test");
    let s = Server::start(&[]);
    let addr = s.addr();
    let n = 1000;
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for i in 0..n {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
                let mut b = vec![0u8; n];
                s.read_exact(&mut b).await.expect("read");
                b
            }
            let mut sock = TcpStream::connect(addr).await.expect("connect");
            let key = format!("conn:{i}");
            let val = format!("value-{i}");
            sock.write_all(&encode(&[b"SET", key.as_bytes(), val.as_bytes()]))
                .await
                .expect("write");
            assert_eq!(read_n(&mut sock, 5).await, b"+OK\r\n");
            // Everyone is connected at once before anyone reads back.
            barrier.wait().await;
            sock.write_all(&encode(&[b"GET", key.as_bytes()])).await.expect("write");
            let want = format!("${}\r\n{val}\r\n", val.len());
            assert_eq!(read_n(&mut sock, want.len()).await, want.as_bytes());
            barrier.wait().await;
        }));
    }
    let all = async {
        barrier.wait().await;
        let connected = tokio::task::spawn_blocking(move || {
            let mut r = Raw::connect(addr);
            info_u64(&mut r, "clients", "connected_clients")
        })
        .await
        .expect("info");
        assert!(connected > n as u64, "connected_clients = {connected}");
        barrier.wait().await;
        for t in tasks {
            t.await.expect("client task");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("1000 clients did not finish within 60 s");
    let mut r = s.raw();
    assert_eq!(r.cmd(&[b"DBSIZE"]), Resp::Int(n as i64));
}

#[test]
fn long_write_pipelines_and_quit() {
    let s = Server::start(&[]);
    let mut r = s.raw();
    // More writes in one pipeline than a connection keeps in flight, ending with reads.
    let n = 3000;
    let mut batch = Vec::new();
    for i in 0..n {
        let k = format!("p:{}", i % 50);
        let v = format!("{i}");
        batch.extend(encode(&[b"SET", k.as_bytes(), v.as_bytes()]));
    }
    for j in 0..50 {
        batch.extend(encode(&[b"GET", format!("p:{j}").as_bytes()]));
    }
    r.send(&batch).expect("send");
    for i in 0..n {
        assert_eq!(r.read_reply().expect("reply"), Resp::Simple("OK".into()), "SET #{i}");
    }
    for j in 0..50 {
        let last = n - 50 + j;
        assert_eq!(
            r.read_reply().expect("reply"),
            Resp::bulk(last.to_string()),
            "GET p:{j} after the pipeline"
        );
    }
    // QUIT answers +OK and closes; requests after it in the same write are not run.
    r.send(b"*1\r\n$4\r\nQUIT\r\n*3\r\n$3\r\nSET\r\n$5\r\nafter\r\n$1\r\n1\r\n")
        .expect("send");
    let (got, eof) = r.read_to_eof(Duration::from_secs(5));
    assert_eq!(String::from_utf8_lossy(&got), "+OK\r\n");
    assert!(eof, "QUIT must close the connection");
    let mut r = s.raw();
    assert_eq!(r.cmd(&[b"EXISTS", b"after"]), Resp::Int(0));
}

#[test]
fn declared_sizes_do_not_reserve_memory() {
    // Many clients declare huge bulks and argument counts, then stall: the server must
    // not reserve memory for what has not arrived (cf. Redis CVE-2021-32675).
    let s = Server::start(&[]);
    let rss = |r: &mut Raw| info_u64(r, "memory", "used_memory_rss");
    let mut probe = s.raw();
    let before = rss(&mut probe);
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut r = Raw::connect(s.addr());
        if i % 2 == 0 {
            r.send(b"*2\r\n$3\r\nGET\r\n$500000000\r\nabc").expect("send");
        } else {
            r.send(b"*1000000\r\n$3\r\nGET\r\n").expect("send");
        }
        stalled.push(r);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(probe.cmd(&[b"PING"]), Resp::Simple("PONG".into()));
    let after = rss(&mut probe);
    let grown = after.saturating_sub(before);
    assert!(
        grown < 256 * 1024 * 1024,
        "200 stalled clients with large declared sizes grew the server by {} MB",
        grown / (1024 * 1024)
    );
}
