//! Transport tests, all on 127.0.0.1 ephemeral ports.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use hmac::Mac;

use super::wire::{self, KIND_REQUEST};
use super::*;

const SECRET: &[u8] = b"cluster-secret";
const T: Duration = Duration::from_secs(5);

fn cfg(secret: &'static [u8]) -> RpcConfig {
    RpcConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..RpcConfig::new(Bytes::from_static(secret))
    }
}

/// Echoes requests; `hang` never answers; `slow` answers after 300 ms; `whoami` answers with the caller's identity.
/// Tracks how many requests run at once.
#[derive(Default)]
struct TestHandler {
    running: AtomicUsize,
    max_running: AtomicUsize,
    peers: Mutex<Vec<Identity>>,
    delay: Option<Duration>,
}

impl Handler for TestHandler {
    async fn handle(&self, peer: &Identity, request: Bytes) -> Bytes {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        let response = match &request[..] {
            b"hang" => std::future::pending().await,
            b"slow" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                request
            }
            b"whoami" => {
                self.peers.lock().unwrap().push(peer.clone());
                peer.clone()
            }
            _ => request,
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        response
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(T, self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

async fn start_on<H: Handler>(
    listener: TcpListener,
    cfg: RpcConfig,
    identity: &'static str,
    handler: Arc<H>,
) -> Server {
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        cfg,
        Bytes::from_static(identity.as_bytes()),
        handler,
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

async fn start<H: Handler>(cfg: RpcConfig, identity: &'static str, handler: Arc<H>) -> Server {
    start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), cfg, identity, handler).await
}

fn pool(secret: &'static [u8], identity: &'static str) -> Pool {
    Pool::new(cfg(secret), Bytes::from_static(identity.as_bytes()))
}

/// A raw connection that completed the handshake, for sending hand-made frames.
async fn raw_authenticated(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let id = wire::client_handshake(&mut s, SECRET, b"raw").await.unwrap();
    assert_eq!(&id[..], b"server");
    s
}

/// Whether the server closes `s` (EOF or reset) within a few seconds, draining whatever it sends first.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn frame(len: u32, kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32_le(len);
    b.put_u8(kind);
    b.put_u64_le(id);
    b.put_slice(payload);
    b.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_share_one_connection() {
    let server = start(cfg(SECRET), "server", Arc::new(TestHandler::default())).await;
    let pool = pool(SECRET, "client");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10_000u32 {
        let (pool, addr) = (pool.clone(), server.addr);
        calls.spawn(async move {
            let request = Bytes::from(format!("request-{i}-{}", "x".repeat((i % 97) as usize)));
            let response = pool.call(addr, request.clone(), Duration::from_secs(30)).await.unwrap();
            assert_eq!(response, request);
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    assert_eq!(pool.pending_calls(server.addr), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_open_a_single_connection() {
    let server = start(cfg(SECRET), "server", Arc::new(TestHandler::default())).await;
    // A counting TCP proxy in front of the server.
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let target = server.addr;
    let proxy_task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = proxy.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut outbound = TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    let pool = pool(SECRET, "client");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..500u32 {
        let pool = pool.clone();
        calls.spawn(async move {
            let request = Bytes::from(i.to_string());
            assert_eq!(pool.call(proxy_addr, request.clone(), T).await.unwrap(), request);
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    proxy_task.abort();
    server.stop().await;
}

#[tokio::test]
async fn identities_are_exchanged() {
    let handler = Arc::new(TestHandler::default());
    let server = start(cfg(SECRET), "server", handler.clone()).await;
    let pool = pool(SECRET, "client");
    assert_eq!(pool.peer_identity(server.addr), None);
    assert_eq!(&pool.handshake(server.addr, T).await.unwrap()[..], b"server");
    assert_eq!(pool.peer_identity(server.addr).as_deref(), Some(&b"server"[..]));
    let me = pool.call(server.addr, Bytes::from_static(b"whoami"), T).await.unwrap();
    assert_eq!(&me[..], b"client");
    assert_eq!(
        handler.peers.lock().unwrap().as_slice(),
        &[Bytes::from_static(b"client")]
    );
    server.stop().await;
}

#[tokio::test]
async fn wrong_secret_is_refused_and_server_keeps_serving() {
    let server = start(cfg(SECRET), "server", Arc::new(TestHandler::default())).await;
    let good = pool(SECRET, "good");
    let bad = pool(b"not-the-secret", "bad");
    assert_eq!(good.call(server.addr, Bytes::from_static(b"a"), T).await.unwrap(), "a");
    assert_eq!(
        bad.call(server.addr, Bytes::from_static(b"b"), T).await,
        Err(RpcError::Refused)
    );
    assert_eq!(bad.peer_identity(server.addr), None);
    // The failed attempt starts a backoff: an immediate retry fails fast.
    assert_eq!(
        bad.call(server.addr, Bytes::from_static(b"b"), T).await,
        Err(RpcError::Backoff)
    );
    assert_eq!(bad.handshake(server.addr, T).await, Err(RpcError::Backoff));
    assert_eq!(good.call(server.addr, Bytes::from_static(b"c"), T).await.unwrap(), "c");
    // A new good client still gets in.
    let other = pool(SECRET, "other");
    assert_eq!(other.call(server.addr, Bytes::from_static(b"d"), T).await.unwrap(), "d");
    server.stop().await;
}

#[tokio::test]
async fn garbage_closes_only_its_own_connection() {
    let server = start(cfg(SECRET), "server", Arc::new(TestHandler::default())).await;
    let addr = server.addr;
    let good = pool(SECRET, "good");
    assert_eq!(
        good.call(addr, Bytes::from_static(b"before"), T).await.unwrap(),
        "before"
    );
    // A call in flight across all the garbage: it would fail with Closed if its connection were dropped.
    let slow = {
        let good = good.clone();
        tokio::spawn(async move { good.call(addr, Bytes::from_static(b"slow"), T).await })
    };

    // Random bytes.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let _ = s.write_all(&noise).await;
    assert!(closed_by_server(&mut s).await, "random bytes");

    // Right magic, then an absurd identity length.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&wire::encode_hello(&wire::nonce())).await.unwrap();
    let mut hello = [0u8; 38];
    s.read_exact(&mut hello).await.unwrap();
    s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    assert!(closed_by_server(&mut s).await, "huge identity length");

    // Truncated handshake, then the client half-closes.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"DYN").await.unwrap();
    s.shutdown().await.unwrap();
    assert!(closed_by_server(&mut s).await, "truncated handshake");

    // Sanity: a hand-made valid request on a raw authenticated connection is answered.
    let mut s = raw_authenticated(addr).await;
    s.write_all(&frame(9 + 2, KIND_REQUEST, 77, b"hi")).await.unwrap();
    let mut response = [0u8; 4 + 9 + 2];
    s.read_exact(&mut response).await.unwrap();
    assert_eq!(response.to_vec(), frame(9 + 2, 2, 77, b"hi"));

    // Valid handshake, then a huge declared frame length.
    let mut s = raw_authenticated(addr).await;
    s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    assert!(closed_by_server(&mut s).await, "huge frame length");

    // Valid handshake, then a frame length below the header size.
    let mut s = raw_authenticated(addr).await;
    s.write_all(&frame(5, KIND_REQUEST, 1, b"")).await.unwrap();
    assert!(closed_by_server(&mut s).await, "tiny frame length");

    // Valid handshake, then a truncated frame and end of stream.
    let mut s = raw_authenticated(addr).await;
    let mut truncated = frame(9 + 100, KIND_REQUEST, 1, &[7u8; 100]);
    truncated.truncate(4 + 9 + 10);
    s.write_all(&truncated).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(closed_by_server(&mut s).await, "truncated frame");

    // Valid handshake, then an unknown kind.
    let mut s = raw_authenticated(addr).await;
    s.write_all(&frame(9 + 1, 7, 1, b"x")).await.unwrap();
    assert!(closed_by_server(&mut s).await, "unknown kind");

    // Valid handshake, then a response frame sent to the server.
    let mut s = raw_authenticated(addr).await;
    s.write_all(&frame(9, 2, 1, b"")).await.unwrap();
    assert!(closed_by_server(&mut s).await, "response kind from a client");

    assert_eq!(slow.await.unwrap().unwrap(), "slow");
    assert_eq!(good.call(addr, Bytes::from_static(b"after"), T).await.unwrap(), "after");
    assert_eq!(good.peer_identity(addr).as_deref(), Some(&b"server"[..]));
    server.stop().await;
}

#[tokio::test]
async fn client_closes_on_garbage_from_server() {
    // A "server" that answers the hello with garbage.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n0123456789abcdef0123456789abcdef")
                    .await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
        }
    });
    let pool = pool(SECRET, "client");
    assert!(matches!(
        pool.call(addr, Bytes::from_static(b"x"), T).await,
        Err(RpcError::Protocol(_))
    ));
}

#[tokio::test]
async fn server_restart_fails_fast_then_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = start_on(listener, cfg(SECRET), "server", Arc::new(TestHandler::default())).await;
    let pool = pool(SECRET, "client");
    assert_eq!(pool.call(addr, Bytes::from_static(b"1"), T).await.unwrap(), "1");

    // A call pending when the server goes away fails at once, not at its timeout.
    let pending = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.call(addr, Bytes::from_static(b"hang"), Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let down = Instant::now();
    server.stop().await;
    assert_eq!(pending.await.unwrap(), Err(RpcError::Closed));
    assert!(down.elapsed() < Duration::from_secs(2));

    // While it is down, calls fail fast with Connect or Backoff.
    let mut seen = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let err = pool.call(addr, Bytes::from_static(b"2"), T).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{err:?} took {:?}",
            started.elapsed()
        );
        assert!(
            matches!(err, RpcError::Connect(_) | RpcError::Backoff | RpcError::Closed),
            "{err:?}"
        );
        seen.push(err);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen.iter().any(|e| matches!(e, RpcError::Connect(_))), "{seen:?}");
    assert!(seen.iter().any(|e| matches!(e, RpcError::Backoff)), "{seen:?}");
    assert_eq!(pool.peer_identity(addr), None);

    // Back on the same port: calls succeed again once the backoff expires.
    let listener = TcpListener::bind(addr).await.unwrap();
    let server = start_on(listener, cfg(SECRET), "server-2", Arc::new(TestHandler::default())).await;
    let deadline = Instant::now() + T;
    loop {
        match pool.call(addr, Bytes::from_static(b"3"), T).await {
            Ok(r) => {
                assert_eq!(r, "3");
                break;
            }
            Err(e) => {
                assert!(matches!(e, RpcError::Connect(_) | RpcError::Backoff), "{e:?}");
                assert!(Instant::now() < deadline, "no reconnect");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(pool.peer_identity(addr).as_deref(), Some(&b"server-2"[..]));
    server.stop().await;
}

#[tokio::test]
async fn refused_port_fails_with_connect_then_backoff() {
    // Bind then drop, so the port is (very likely) closed.
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let pool = pool(SECRET, "client");
    assert!(matches!(
        pool.call(addr, Bytes::from_static(b"x"), T).await,
        Err(RpcError::Connect(_))
    ));
    assert_eq!(
        pool.call(addr, Bytes::from_static(b"x"), T).await,
        Err(RpcError::Backoff)
    );
}

#[tokio::test]
async fn hung_handshake_times_out() {
    // Accepts connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let pool = pool(SECRET, "client");
    let started = Instant::now();
    let timeout = Duration::from_millis(300);
    assert_eq!(
        pool.call(addr, Bytes::from_static(b"x"), timeout).await,
        Err(RpcError::Timeout)
    );
    let took = started.elapsed();
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(500),
        "{took:?}"
    );
    let started = Instant::now();
    assert_eq!(pool.handshake(addr, timeout).await, Err(RpcError::Timeout));
    assert!(started.elapsed() < timeout + Duration::from_millis(500));

    // The handshake's own bound ends the attempt even for a patient caller.
    let short = Pool::new(
        RpcConfig {
            handshake_timeout: Duration::from_millis(200),
            ..cfg(SECRET)
        },
        Bytes::from_static(b"client"),
    );
    let started = Instant::now();
    assert_eq!(
        short.call(addr, Bytes::from_static(b"x"), T).await,
        Err(RpcError::Timeout)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn server_drops_client_that_never_finishes_handshake() {
    let server = start(
        RpcConfig {
            handshake_timeout: Duration::from_millis(200),
            ..cfg(SECRET)
        },
        "server",
        Arc::new(TestHandler::default()),
    )
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&wire::MAGIC[..]).await.unwrap(); // magic, but no nonce: then silence
    let started = Instant::now();
    assert!(closed_by_server(&mut s).await);
    assert!(started.elapsed() < Duration::from_secs(2));
    server.stop().await;
}

#[tokio::test]
async fn hung_handler_times_out_and_pool_stays_usable() {
    let server = start(cfg(SECRET), "server", Arc::new(TestHandler::default())).await;
    let pool = pool(SECRET, "client");
    let started = Instant::now();
    let timeout = Duration::from_millis(200);
    assert_eq!(
        pool.call(server.addr, Bytes::from_static(b"hang"), timeout).await,
        Err(RpcError::Timeout)
    );
    assert!(started.elapsed() < timeout + Duration::from_millis(500));
    assert_eq!(
        pool.pending_calls(server.addr),
        0,
        "timed-out call leaves no pending entry"
    );
    assert_eq!(
        pool.call(server.addr, Bytes::from_static(b"ok"), T).await.unwrap(),
        "ok"
    );
    assert!(pool.peer_identity(server.addr).is_some());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_is_bounded_by_back_pressure() {
    let handler = Arc::new(TestHandler {
        delay: Some(Duration::from_millis(50)),
        ..TestHandler::default()
    });
    let server = start(cfg(SECRET), "server", handler.clone()).await;
    let pool = pool(SECRET, "client");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..(4 * MAX_IN_FLIGHT) {
        let (pool, addr) = (pool.clone(), server.addr);
        calls.spawn(async move {
            let request = Bytes::from(i.to_string());
            assert_eq!(
                pool.call(addr, request.clone(), Duration::from_secs(30)).await.unwrap(),
                request
            );
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    let max = handler.max_running.load(Ordering::SeqCst);
    assert!(max <= MAX_IN_FLIGHT, "{max} requests ran at once");
    assert!(max > MAX_IN_FLIGHT / 2, "requests did run concurrently ({max})");
    server.stop().await;
}

#[tokio::test]
async fn oversized_request_is_rejected_locally() {
    let server = start(cfg(SECRET), "server", Arc::new(TestHandler::default())).await;
    let pool = Pool::new(
        RpcConfig {
            max_frame: 1024,
            ..cfg(SECRET)
        },
        Bytes::from_static(b"client"),
    );
    let big = Bytes::from(vec![1u8; 1024]);
    assert_eq!(pool.call(server.addr, big, T).await, Err(RpcError::FrameTooBig));
    let fits = Bytes::from(vec![1u8; 1024 - FRAME_HEADER]);
    assert_eq!(pool.call(server.addr, fits.clone(), T).await.unwrap(), fits);
    server.stop().await;
}

#[tokio::test]
async fn oversized_frame_from_authenticated_client_closes_connection() {
    // max_frame on the server smaller than what the client is configured for.
    let server = start(
        RpcConfig {
            max_frame: 1024,
            ..cfg(SECRET)
        },
        "server",
        Arc::new(TestHandler::default()),
    )
    .await;
    let pool = pool(SECRET, "client");
    assert_eq!(pool.call(server.addr, Bytes::from_static(b"a"), T).await.unwrap(), "a");
    let big = Bytes::from(vec![1u8; 4096]);
    assert_eq!(pool.call(server.addr, big, T).await, Err(RpcError::Closed));
    // The next call reconnects.
    assert_eq!(pool.call(server.addr, Bytes::from_static(b"b"), T).await.unwrap(), "b");
    server.stop().await;
}

#[tokio::test]
async fn large_payloads_round_trip() {
    let server = start(cfg(SECRET), "server", Arc::new(TestHandler::default())).await;
    let pool = pool(SECRET, "client");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..8u8 {
        let (pool, addr) = (pool.clone(), server.addr);
        calls.spawn(async move {
            let payload = Bytes::from(vec![i; 3 * 1024 * 1024 + i as usize]);
            assert_eq!(pool.call(addr, payload.clone(), T).await.unwrap(), payload);
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    server.stop().await;
}

#[test]
fn proofs_depend_on_secret_role_nonces_and_identity() {
    let (c, s) = ([1u8; 32], [2u8; 32]);
    let tag = wire::proof(SECRET, wire::ROLE_CLIENT, &c, &s, b"id")
        .finalize()
        .into_bytes();
    assert!(wire::verify(SECRET, wire::ROLE_CLIENT, &c, &s, b"id", &tag));
    assert!(!wire::verify(b"other", wire::ROLE_CLIENT, &c, &s, b"id", &tag));
    assert!(!wire::verify(SECRET, wire::ROLE_SERVER, &c, &s, b"id", &tag));
    assert!(!wire::verify(SECRET, wire::ROLE_CLIENT, &s, &c, b"id", &tag));
    assert!(!wire::verify(SECRET, wire::ROLE_CLIENT, &c, &s, b"ie", &tag));
    assert!(!wire::verify(SECRET, wire::ROLE_CLIENT, &c, &s, b"id", &tag[..31]));
}
