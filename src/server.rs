//! Starts a node from a [`Config`] and runs it until shutdown: opens the store, binds the
//! listener, starts the background workers, and on shutdown drains connections and closes
//! the store. Must not parse commands or flags.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;

use bytes::Bytes;

use crate::cluster::health::Health;
use crate::cluster::messages;
use crate::cluster::{MemberInfo, Membership, gossip};
use crate::config::Config;
use crate::coordinator::{ClusterLink, Coordinator, PeerLimits, Quorum};

/// Most internode requests in flight from this node to any one peer.
const PEER_IN_FLIGHT: usize = 2048;
/// Most quorum rounds one node runs at once; more wait their turn before their deadline starts.
const QUORUM_ROUNDS: usize = 256;
use crate::error::StoreError;
use crate::internode::PeerHandler;
use crate::node::Node;
use crate::resp::listener;
use crate::rpc::{Pool, RpcConfig};
use crate::shutdown::Shutdown;
use crate::storage::Store;

/// Why a node could not start or stop cleanly.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The store could not be opened or closed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The cluster settings could not be used.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Every two seconds, sets the gauges that describe state rather than events: clients,
/// LMDB sizes, hints pending per peer, peers up and down.
async fn publish_gauges(node: Arc<Node>, shutdown: Shutdown) {
    use crate::metrics as m;
    let mut tick = shutdown.ticker(Duration::from_secs(2));
    let mut peers_with_hints: Vec<u64> = Vec::new();
    while tick.next().await {
        ::metrics::gauge!(m::CLIENTS).set(node.client_count() as f64);
        let store = node.coord.store();
        if let Ok(f) = store.figures() {
            ::metrics::gauge!(m::LMDB_MAP_BYTES).set(f.map_size as f64);
            ::metrics::gauge!(m::LMDB_USED_BYTES).set(f.used_bytes as f64);
        }
        let counts = store.hint_counts().unwrap_or_default();
        // Peers whose hints all drained go back to zero rather than vanishing.
        for peer in &peers_with_hints {
            if !counts.iter().any(|(p, _)| p == peer) {
                ::metrics::gauge!(m::HINTS_PENDING, "peer" => format!("{peer:016x}")).set(0.0);
            }
        }
        for (peer, n) in &counts {
            ::metrics::gauge!(m::HINTS_PENDING, "peer" => format!("{peer:016x}")).set(*n as f64);
        }
        peers_with_hints = counts.into_iter().map(|(p, _)| p).collect();
        if let Some(c) = node.coord.cluster() {
            let members = c.membership.view().members().len().saturating_sub(1);
            let down = c.health.down(std::time::Instant::now()).len();
            ::metrics::gauge!(m::PEERS, "state" => "up").set(members.saturating_sub(down) as f64);
            ::metrics::gauge!(m::PEERS, "state" => "down").set(down as f64);
        }
    }
}

/// Runs a node until `shutdown` is triggered (by a signal, or the SHUTDOWN command).
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ServerError> {
    let store = Store::open(&config.data_dir, config.fsync, config.initial_map_size, config.threads)?;
    let node_id = store.node_id(config.node_id)?;
    let addr = format!("{}:{}", config.bind, config.port);
    let listener = TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    let mut peers = None;
    let mut link = None;
    if config.clustered() {
        let caddr = format!("{}:{}", config.bind, config.internode_port());
        let peer_listener = TcpListener::bind(&caddr).await.map_err(|source| ServerError::Bind {
            addr: caddr.clone(),
            source,
        })?;
        let me = MemberInfo {
            id: node_id,
            client_addr: local.to_string(),
            cluster_addr: peer_listener.local_addr().map(|a| a.to_string()).unwrap_or(caddr),
            weight: config.weight,
        };
        let membership = Arc::new(
            Membership::new(me.clone(), gossip::load_records(&store))
                .map_err(|e| ServerError::Cluster(e.to_string()))?,
        );
        let rpc_config = RpcConfig::new(Bytes::from(config.cluster_secret.clone().unwrap_or_default()));
        let identity = messages::encode_identity(&me);
        let pool = Pool::new(rpc_config.clone(), identity.clone());
        link = Some(ClusterLink {
            membership: membership.clone(),
            pool: pool.clone(),
            configured: Quorum {
                n: config.n,
                r: config.r,
                w: config.w,
            },
            timeout: Duration::from_millis(config.request_timeout_ms),
            health: Arc::new(Health::new(Duration::from_millis(config.failure_timeout_ms))),
            in_flight: PeerLimits::new(PEER_IN_FLIGHT),
            ops: Arc::new(tokio::sync::Semaphore::new(QUORUM_ROUNDS)),
        });
        peers = Some((peer_listener, rpc_config, identity, membership, pool));
    }
    let coord = Coordinator::new(node_id, store.clone(), link);
    let ae = tokio::spawn(crate::coordinator::antientropy::run(
        coord.clone(),
        shutdown.clone(),
        Duration::from_millis(config.anti_entropy_interval_ms),
        crate::coordinator::antientropy::Throttle::new(config.anti_entropy_bytes_per_sec),
    ));
    let sweep = tokio::spawn(crate::sweep::run(
        coord.clone(),
        shutdown.clone(),
        Duration::from_millis(config.expire_sweep_interval_ms),
        config.expire_sweep_keys,
        config.tombstone_grace_secs.saturating_mul(1000),
    ));
    if let Some(addr) = config.metrics_addr {
        // A node without its metrics endpoint still serves clients: say so loudly.
        match crate::metrics::install(addr).await {
            Ok(()) => tracing::info!("metrics on http://{addr}/metrics"),
            Err(e) => tracing::error!("metrics endpoint {addr} not started: {e}"),
        }
    }
    let node = Arc::new(Node::new(config, coord, shutdown.clone()));
    let gauges = tokio::spawn(publish_gauges(node.clone(), shutdown.clone()));
    node.bound_port.store(u64::from(local.port()), Ordering::Relaxed);
    let mut background = Vec::new();
    if let Some((peer_listener, rpc_config, identity, membership, pool)) = peers {
        tracing::info!("internode port {}", membership.me().cluster_addr);
        let handler = Arc::new(PeerHandler::new(node.clone()));
        let stop = shutdown.clone();
        background.push(tokio::spawn(crate::rpc::serve(
            peer_listener,
            rpc_config,
            identity,
            handler,
            async move { stop.wait().await },
        )));
        background.push(tokio::spawn(crate::coordinator::probe::run(
            node.coord.clone(),
            shutdown.clone(),
        )));
        background.push(tokio::spawn(crate::coordinator::handoff::run(
            node.coord.clone(),
            shutdown.clone(),
        )));
        background.push(tokio::spawn(crate::coordinator::rebalance::run(
            node.coord.clone(),
            shutdown.clone(),
            crate::coordinator::antientropy::Throttle::new(node.config.transfer_bytes_per_sec),
        )));
        background.push(tokio::spawn(gossip::run(
            membership,
            pool,
            node.config.seeds.clone(),
            store.clone(),
            shutdown.clone(),
            Duration::from_millis(node.config.request_timeout_ms),
        )));
    }
    tracing::info!(
        node_id = format!("{node_id:016x}"),
        "dynkv listening on {local}, data in {}, fsync {}",
        node.config.data_dir.display(),
        node.config.fsync.as_str()
    );
    listener::run(node.clone(), listener).await;
    let _ = sweep.await;
    let _ = ae.await;
    let _ = gauges.await;
    for task in background {
        let _ = task.await;
    }
    store.close().await?;
    tracing::info!("dynkv stopped cleanly");
    Ok(())
}
