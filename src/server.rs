//! Starts a node from a [`Config`] and runs it until shutdown: opens the store, binds the
//! listener, starts the background workers, and on shutdown drains connections and closes
//! the store. Must not parse commands or flags.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::error::StoreError;
use crate::node::Node;
use crate::resp::listener;
use crate::shutdown::Shutdown;
use crate::storage::Store;

/// Why a node could not start or stop cleanly.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The store could not be opened or closed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs a node until `shutdown` is triggered (by a signal, or the SHUTDOWN command).
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ServerError> {
    let store = Store::open(&config.data_dir, config.fsync, config.initial_map_size)?;
    let node_id = store.node_id()?;
    let coord = Coordinator::new(node_id, store.clone());
    let addr = format!("{}:{}", config.bind, config.port);
    let listener = TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    // Single-node: a cluster of one keeps dead records only for the configured grace.
    let sweep = tokio::spawn(crate::sweep::run(
        coord.clone(),
        shutdown.clone(),
        Duration::from_millis(config.expire_sweep_interval_ms),
        config.expire_sweep_keys,
        config.tombstone_grace_secs.saturating_mul(1000),
    ));
    let node = Arc::new(Node::new(config, coord, shutdown.clone()));
    node.bound_port.store(u64::from(local.port()), Ordering::Relaxed);
    tracing::info!(
        node_id = format!("{node_id:016x}"),
        "dynkv listening on {local}, data in {}, fsync {}",
        node.config.data_dir.display(),
        node.config.fsync.as_str()
    );
    listener::run(node.clone(), listener).await;
    let _ = sweep.await;
    store.close().await?;
    tracing::info!("dynkv stopped cleanly");
    Ok(())
}
