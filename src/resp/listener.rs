//! The RESP listener: accepts connections within `max-clients`, hands each to one of the
//! client threads, and on shutdown stops accepting and waits for connections to finish.
//! Must not parse or run commands.
//!
//! Client threads: `threads` single-threaded runtimes, each with its own event loop, and
//! connections dealt to them in turn. A connection, its replies' wake-ups and (except
//! with `fsync = always` and several client threads) its writes' group commit then stay
//! on one thread; a work-stealing runtime moved them between threads, and the
//! hand-overs cost more than the work of a GET or a SET. Each thread also runs a spinner
//! ([`super::spin`]) that keeps its loop awake briefly between requests that come close
//! together.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;

use super::client::ClientInfo;
use super::connection;
use crate::node::{Node, Stats};

/// How long shutdown waits for open connections to finish their current requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The client threads.
struct ClientThreads {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next: usize,
}

impl ClientThreads {
    /// Starts `n` threads; if none can start, connections run on the caller's runtime.
    fn start(n: usize) -> ClientThreads {
        let mut t = ClientThreads {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
            next: 0,
        };
        for i in 0..n {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("cannot start client thread {i}: {e}");
                    break;
                }
            };
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("dynkv-client-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        tokio::spawn(super::spin::run());
                        let _ = stopped.await;
                    });
                });
            match thread {
                Ok(th) => {
                    t.handles.push(handle);
                    t.stops.push(stop);
                    t.threads.push(th);
                }
                Err(e) => {
                    tracing::error!("cannot start client thread {i}: {e}");
                    break;
                }
            }
        }
        if t.handles.is_empty() {
            t.handles.push(Handle::current());
        }
        t
    }

    /// The thread for the next connection.
    fn pick(&mut self) -> &Handle {
        let h = &self.handles[self.next % self.handles.len()];
        self.next = self.next.wrapping_add(1);
        h
    }

    /// Stops the threads (their connections must have ended) and waits for them.
    async fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for th in self.threads {
            let _ = tokio::task::spawn_blocking(move || th.join()).await;
        }
    }
}

/// Moves an accepted socket to the event loop of the runtime this runs on.
fn rehome(socket: TcpStream) -> std::io::Result<TcpStream> {
    TcpStream::from_std(socket.into_std()?)
}

/// Accepts clients until shutdown, then waits for the connections to end.
pub async fn run(node: Arc<Node>, listener: TcpListener) {
    let mut threads = ClientThreads::start(node.config.threads);
    let permits = Arc::new(Semaphore::new(node.config.max_clients));
    let mut conns = JoinSet::new();
    let mut backoff = Duration::from_millis(1);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = node.shutdown.wait() => break,
        };
        let (mut socket, addr) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(1);
                a
            }
            Err(e) => {
                // Out of file descriptors and the like: wait and retry rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Reap finished connection tasks so the set does not grow.
        while conns.try_join_next().is_some() {}
        Stats::add(&node.stats.connections_received, 1);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            Stats::add(&node.stats.rejected_connections, 1);
            let _ = socket.write_all(b"-ERR max number of clients reached\r\n").await;
            continue;
        };
        let id = node.next_client_id.fetch_add(1, Ordering::Relaxed);
        let laddr = socket.local_addr().unwrap_or(addr);
        let info = Arc::new(ClientInfo::new(id, addr, laddr));
        if let Ok(mut m) = node.clients.lock() {
            m.insert(id, info.clone());
        }
        let node = node.clone();
        conns.spawn_on(
            async move {
                match rehome(socket) {
                    Ok(socket) => connection::serve(node.clone(), socket, info).await,
                    Err(e) => tracing::warn!("cannot hand connection {id} to a client thread: {e}"),
                }
                if let Ok(mut m) = node.clients.lock() {
                    m.remove(&id);
                }
                drop(permit);
            },
            threads.pick(),
        );
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    threads.stop().await;
}
