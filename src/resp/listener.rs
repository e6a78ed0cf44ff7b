//! The RESP listener: accepts connections within `max-clients`, spawns one task per
//! connection, and on shutdown stops accepting and waits for connections to finish.
//! Must not parse or run commands.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::ClientInfo;
use super::connection;
use crate::node::{Node, Stats};

/// How long shutdown waits for open connections to finish their current requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts clients until shutdown, then waits for the connections to end.
pub async fn run(node: Arc<Node>, listener: TcpListener) {
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
        conns.spawn(async move {
            connection::serve(node.clone(), socket, info).await;
            if let Ok(mut m) = node.clients.lock() {
                m.remove(&id);
            }
            drop(permit);
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
        conns.abort_all();
    }
}
