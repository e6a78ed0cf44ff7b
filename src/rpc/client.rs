//! The client side: a pool of one persistent, multiplexed connection per peer address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ahash::AHashMap;
use bytes::Bytes;
use rand::Rng;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use super::wire::{self, Frame, KIND_REQUEST, KIND_RESPONSE};
use super::{FRAME_HEADER, Identity, RpcConfig, RpcError};

/// Capacity of a connection's queue of requests waiting for the writer task.
const WRITE_QUEUE: usize = 1024;

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the maps stay consistent per operation).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pool of one persistent multiplexed connection per peer address. Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("peers", &lock(&self.inner.peers).len())
            .finish()
    }
}

/// State shared by every clone of a [`Pool`].
struct PoolInner {
    cfg: RpcConfig,
    my_identity: Identity,
    peers: Mutex<AHashMap<SocketAddr, Peer>>,
}

/// Outcome of a connect attempt, broadcast to every call waiting for it.
type ConnectResult = Option<Result<Arc<Conn>, RpcError>>;

/// What the pool knows about one peer address.
struct Peer {
    state: PeerState,
    /// Consecutive failed connect attempts, reset by a successful one.
    failures: u32,
}

/// Connection state of one peer address.
enum PeerState {
    /// No connection and no attempt under way.
    Idle,
    /// A connect attempt is under way; its result arrives on the channel.
    Connecting(watch::Receiver<ConnectResult>),
    /// A connection (possibly closed since; checked on use).
    Connected(Arc<Conn>),
    /// The last connect attempt failed; no new attempt before `until`.
    Backoff { until: Instant },
}

impl Pool {
    /// A pool presenting `my_identity` in its handshakes, with no connections yet.
    pub fn new(cfg: RpcConfig, my_identity: Identity) -> Pool {
        Pool {
            inner: Arc::new(PoolInner {
                cfg,
                my_identity,
                peers: Mutex::new(AHashMap::new()),
            }),
        }
    }

    /// Sends `request` to the peer at `addr` and waits for its response, at most `timeout` in all (connect +
    /// handshake + round trip).
    ///
    /// Connects lazily and reuses the connection; concurrent calls share it, told apart by request ids. If the
    /// connection breaks, pending calls fail at once with [`RpcError::Closed`] and the next call reconnects. After a
    /// failed connect attempt further attempts to that peer wait an exponentially growing backoff
    /// (`backoff_min` .. `backoff_max`); a call during the backoff fails at once with [`RpcError::Backoff`].
    pub async fn call(&self, addr: SocketAddr, request: Bytes, timeout: Duration) -> Result<Bytes, RpcError> {
        if FRAME_HEADER + request.len() > self.inner.cfg.frame_limit() {
            return Err(RpcError::FrameTooBig);
        }
        let round_trip = async {
            let conn = self.connection(addr).await?;
            conn.call(request).await
        };
        tokio::time::timeout(timeout, round_trip)
            .await
            .unwrap_or(Err(RpcError::Timeout))
    }

    /// The identity the peer at `addr` presented in its last handshake, if connected.
    pub fn peer_identity(&self, addr: SocketAddr) -> Option<Identity> {
        match lock(&self.inner.peers).get(&addr) {
            Some(Peer {
                state: PeerState::Connected(conn),
                ..
            }) if conn.is_open() => Some(conn.identity.clone()),
            _ => None,
        }
    }

    /// Connects (if needed) and returns the peer's identity: used to learn who is at a seed address.
    pub async fn handshake(&self, addr: SocketAddr, timeout: Duration) -> Result<Identity, RpcError> {
        let conn = tokio::time::timeout(timeout, self.connection(addr))
            .await
            .unwrap_or(Err(RpcError::Timeout))?;
        Ok(conn.identity.clone())
    }

    /// Number of calls to `addr` waiting for a response on the current connection (tests only).
    #[cfg(test)]
    pub(crate) fn pending_calls(&self, addr: SocketAddr) -> usize {
        match lock(&self.inner.peers).get(&addr) {
            Some(Peer {
                state: PeerState::Connected(conn),
                ..
            }) => lock(&conn.shared.pending).len(),
            _ => 0,
        }
    }

    /// An open connection to `addr`: the existing one, or the result of a (shared) connect attempt.
    async fn connection(&self, addr: SocketAddr) -> Result<Arc<Conn>, RpcError> {
        let mut rx = {
            let mut peers = lock(&self.inner.peers);
            let peer = peers.entry(addr).or_insert(Peer {
                state: PeerState::Idle,
                failures: 0,
            });
            match &peer.state {
                PeerState::Connected(conn) if conn.is_open() => return Ok(conn.clone()),
                PeerState::Backoff { until } if Instant::now() < *until => return Err(RpcError::Backoff),
                // (An attempt whose task died without reporting counts as no attempt.)
                PeerState::Connecting(rx) if rx.has_changed().is_ok() => rx.clone(),
                _ => {
                    // Idle, closed connection, or expired backoff: start an attempt that outlives this call, so a
                    // caller giving up does not abandon it halfway and others can wait for it.
                    let (tx, rx) = watch::channel(None);
                    peer.state = PeerState::Connecting(rx.clone());
                    tokio::spawn(connect_task(self.inner.clone(), addr, tx));
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or(Err(RpcError::Closed)),
            Err(_) => Err(RpcError::Closed),
        }
    }
}

/// Connects to `addr`, records the outcome in the pool (connection, or backoff) and broadcasts it.
async fn connect_task(pool: Arc<PoolInner>, addr: SocketAddr, tx: watch::Sender<ConnectResult>) {
    let result = connect(&pool.cfg, &pool.my_identity, addr).await;
    {
        let mut peers = lock(&pool.peers);
        let peer = peers.entry(addr).or_insert(Peer {
            state: PeerState::Idle,
            failures: 0,
        });
        match &result {
            Ok(conn) => {
                peer.failures = 0;
                peer.state = PeerState::Connected(conn.clone());
            }
            Err(e) => {
                peer.failures = peer.failures.saturating_add(1);
                let delay = backoff_delay(&pool.cfg, peer.failures);
                debug!(peer = %addr, error = %e, backoff = ?delay, "internode connect failed");
                let now = Instant::now();
                peer.state = PeerState::Backoff {
                    until: now.checked_add(delay).unwrap_or(now),
                };
            }
        }
    }
    let _ = tx.send(Some(result));
}

/// Backoff after the `failures`-th consecutive failure: `backoff_min * 2^(failures-1)`, capped at `backoff_max`,
/// minus up to a quarter of jitter so peers restarting together do not reconnect in lockstep.
fn backoff_delay(cfg: &RpcConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = cfg.backoff_min.saturating_mul(1 << exp).min(cfg.backoff_max);
    base.mul_f64(rand::rng().random_range(0.75..=1.0))
}

/// Opens a TCP connection to `addr`, runs the client handshake and starts the connection's tasks.
async fn connect(cfg: &RpcConfig, my_identity: &Identity, addr: SocketAddr) -> Result<Arc<Conn>, RpcError> {
    let mut stream = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(RpcError::Connect(e.to_string())),
        Err(_) => {
            return Err(RpcError::Connect(format!(
                "connect timed out after {:?}",
                cfg.connect_timeout
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let handshake = wire::client_handshake(&mut stream, &cfg.secret, my_identity);
    let identity = tokio::time::timeout(cfg.handshake_timeout, handshake)
        .await
        .unwrap_or(Err(RpcError::Timeout))?;
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Frame>(WRITE_QUEUE);
    let shared = Arc::new(Shared {
        open: AtomicBool::new(true),
        pending: Mutex::new(AHashMap::new()),
    });
    let writer = tokio::spawn(wire::write_loop(wr, rx));
    tokio::spawn(read_loop(
        BufReader::with_capacity(64 * 1024, rd),
        shared.clone(),
        writer,
        cfg.frame_limit(),
        addr,
    ));
    Ok(Arc::new(Conn {
        tx,
        shared,
        identity,
        next_id: AtomicU64::new(1),
    }))
}

/// One live connection as seen by callers. Dropping the last handle closes the writer's queue, which shuts the
/// connection down.
struct Conn {
    tx: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
    identity: Identity,
    next_id: AtomicU64,
}

/// Connection state shared with the reader task.
struct Shared {
    open: AtomicBool,
    /// Calls waiting for their response, by request id.
    pending: Mutex<AHashMap<u64, oneshot::Sender<Bytes>>>,
}

impl Shared {
    /// Marks the connection closed and fails every pending call (their senders are dropped).
    fn close(&self) {
        let mut pending = lock(&self.pending);
        self.open.store(false, Ordering::Release);
        pending.clear();
    }
}

/// Removes a call's pending entry when the call ends, including when it is cancelled by its timeout.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.id);
    }
}

impl Conn {
    /// Whether the connection is still usable.
    fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Sends one request on this connection and waits for its response.
    async fn call(&self, request: Bytes) -> Result<Bytes, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.shared.pending);
            if !self.is_open() {
                return Err(RpcError::Closed);
            }
            pending.insert(id, tx);
        }
        let _guard = PendingGuard {
            shared: &self.shared,
            id,
        };
        let frame = Frame {
            kind: KIND_REQUEST,
            id,
            payload: request,
        };
        self.tx.send(frame).await.map_err(|_| RpcError::Closed)?;
        rx.await.map_err(|_| RpcError::Closed)
    }
}

/// Reads responses and hands each to its waiting call; on any error or end of stream closes the connection.
async fn read_loop(
    mut rd: BufReader<OwnedReadHalf>,
    shared: Arc<Shared>,
    mut writer: JoinHandle<std::io::Result<()>>,
    limit: usize,
    addr: SocketAddr,
) {
    loop {
        let frame = tokio::select! {
            frame = wire::read_frame(&mut rd, limit) => frame,
            _ = &mut writer => {
                debug!(peer = %addr, "internode connection writer ended");
                break;
            }
        };
        match frame {
            Ok(Frame {
                kind: KIND_RESPONSE,
                id,
                payload,
            }) => {
                // A response to a call that already gave up (timeout) finds no entry and is dropped.
                if let Some(waiter) = lock(&shared.pending).remove(&id) {
                    let _ = waiter.send(payload);
                }
            }
            Ok(frame) => {
                debug!(peer = %addr, kind = frame.kind, "internode server sent a request frame; closing");
                break;
            }
            Err(e) => {
                debug!(peer = %addr, error = %e, "internode connection closed");
                break;
            }
        }
    }
    shared.close();
    writer.abort();
}
