//! A running node's shared state: its settings, coordinator, clients and counters. Must not
//! hold per-connection state (that is [`crate::resp::client`]).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use crate::striped::Counter;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::resp::client::ClientInfo;
use crate::shutdown::Shutdown;

/// Server-wide counters, as INFO `stats` reports them.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted since start.
    pub connections_received: Counter,
    /// Connections refused because `max-clients` was reached.
    pub rejected_connections: Counter,
    /// Commands executed.
    pub commands_processed: Counter,
    /// Bytes read from clients.
    pub net_input_bytes: Counter,
    /// Bytes written to clients.
    pub net_output_bytes: Counter,
    /// Reads that found a live value.
    pub keyspace_hits: Counter,
    /// Reads that found nothing.
    pub keyspace_misses: Counter,
    /// Error replies sent.
    pub error_replies: Counter,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(c: &Counter, n: u64) {
        c.add(n);
    }
}

/// Everything a connection or background worker needs from its node.
pub struct Node {
    /// Validated settings.
    pub config: Config,
    /// Reads and writes of keys.
    pub coord: Coordinator,
    /// The node-wide stop signal.
    pub shutdown: Shutdown,
    /// Counters.
    pub stats: Stats,
    /// Open client connections by id, for CLIENT LIST and INFO.
    pub clients: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
    /// Source of client ids.
    pub next_client_id: AtomicU64,
    /// When the node started.
    pub started: Instant,
    /// A random id of this process run (INFO `run_id`).
    pub run_id: String,
    /// The TCP port actually bound (the configured one, or the OS's pick for port 0).
    pub bound_port: AtomicU64,
}

impl Node {
    /// A node over `coord`, not yet listening.
    pub fn new(config: Config, coord: Coordinator, shutdown: Shutdown) -> Node {
        let run_id = (0..40)
            .map(|_| char::from_digit(rand::random_range(0..16u32), 16).unwrap_or('0'))
            .collect();
        Node {
            bound_port: AtomicU64::new(u64::from(config.port)),
            config,
            coord,
            shutdown,
            stats: Stats::default(),
            clients: Mutex::new(BTreeMap::new()),
            next_client_id: AtomicU64::new(1),
            started: Instant::now(),
            run_id,
        }
    }

    /// The open clients, in id order.
    pub fn client_list(&self) -> Vec<Arc<ClientInfo>> {
        self.clients
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many clients are connected.
    pub fn client_count(&self) -> usize {
        self.clients.lock().map(|m| m.len()).unwrap_or(0)
    }
}
