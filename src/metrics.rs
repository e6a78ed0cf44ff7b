//! The only place that names and registers metrics. Every family is `dynkv_*` with HELP
//! text; every latency is a real histogram with buckets fine enough to read p50, p99 and
//! p99.9 (the exporter's summaries keep only the newest samples). Must not decide when
//! anything is counted: callers use the names defined here with the `metrics` macros.

use std::net::SocketAddr;

pub mod commands;
mod http;

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Commands run, by command name.
pub const COMMANDS: &str = "dynkv_commands_total";
/// Time from a command's arrival to its reply being ready, by command name.
pub const COMMAND_SECONDS: &str = "dynkv_command_duration_seconds";
/// HELP text of [`COMMANDS`].
pub const COMMANDS_HELP: &str = "Commands run, by command name.";
/// HELP text of [`COMMAND_SECONDS`].
pub const COMMAND_SECONDS_HELP: &str = "Time from a command's arrival to its reply, by command.";
/// Error replies, by kind (the error code, e.g. ERR, NOAUTH, WRONGPASS, CROSSSLOT).
pub const ERRORS: &str = "dynkv_errors_total";
/// Quorum rounds, by op (read, write) and outcome (met, sloppy, failed).
pub const QUORUMS: &str = "dynkv_quorum_total";
/// Time to reach a quorum, by op.
pub const QUORUM_SECONDS: &str = "dynkv_quorum_duration_seconds";
/// Client requests forwarded to another node.
pub const FORWARDS: &str = "dynkv_forwards_total";
/// Replicas repaired by read repair.
pub const READ_REPAIRS: &str = "dynkv_read_repairs_total";
/// Live siblings seen per read.
pub const SIBLINGS_PER_READ: &str = "dynkv_siblings_per_read";
/// HELP text of [`SIBLINGS_PER_READ`].
pub const SIBLINGS_PER_READ_HELP: &str = "Live siblings seen per read.";
/// Keys holding more than one live sibling (counted by the sweep's last full pass).
pub const KEYS_WITH_SIBLINGS: &str = "dynkv_keys_with_siblings";
/// Hints held for a peer, by peer.
pub const HINTS_PENDING: &str = "dynkv_hints_pending";
/// Hints handed back, by peer.
pub const HINTS_DELIVERED: &str = "dynkv_hints_delivered_total";
/// Writes that went to a fallback node.
pub const SLOPPY_WRITES: &str = "dynkv_sloppy_writes_total";
/// Peers by state (up, down) as this node sees them.
pub const PEERS: &str = "dynkv_peers";
/// Records whose every sibling is a tombstone or expired (sweep's last full pass).
pub const TOMBSTONES: &str = "dynkv_tombstones";
/// Dead records removed by the sweep.
pub const TOMBSTONES_REAPED: &str = "dynkv_tombstones_reaped_total";
/// LMDB map size.
pub const LMDB_MAP_BYTES: &str = "dynkv_lmdb_map_size_bytes";
/// LMDB bytes in use (last page).
pub const LMDB_USED_BYTES: &str = "dynkv_lmdb_used_bytes";
/// Writes per group commit.
pub const COMMIT_BATCH: &str = "dynkv_commit_batch_size";
/// Time of one group commit, including its fsync when `fsync = always`.
pub const COMMIT_SECONDS: &str = "dynkv_commit_duration_seconds";
/// Time of one checkpoint of the write-ahead log (`fsync = always`): LMDB's flush and a
/// fresh log.
pub const CHECKPOINT_SECONDS: &str = "dynkv_checkpoint_duration_seconds";
/// Connected clients.
pub const CLIENTS: &str = "dynkv_connected_clients";
/// Bytes read from clients.
pub const NET_IN: &str = "dynkv_net_input_bytes_total";
/// Bytes written to clients.
pub const NET_OUT: &str = "dynkv_net_output_bytes_total";
/// Records received by partition transfers (ring changes).
pub const TRANSFER_KEYS: &str = "dynkv_transfer_keys_total";
/// Bytes received by partition transfers.
pub const TRANSFER_BYTES: &str = "dynkv_transfer_bytes_total";
/// Anti-entropy exchanges, by outcome (ok, failed).
pub const AE_EXCHANGES: &str = "dynkv_antientropy_exchanges_total";
/// Local records changed by anti-entropy.
pub const AE_KEYS_REPAIRED: &str = "dynkv_antientropy_keys_repaired_total";
/// Anti-entropy bytes, by direction (sent, received).
pub const AE_BYTES: &str = "dynkv_antientropy_bytes_total";

/// Latency buckets: 10 µs to 10 s, about four per decade, so p50/p99/p99.9 of both
/// sub-millisecond hits and fsync-bound writes can be read.
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Starts the Prometheus exporter on `addr` (`/metrics`) and describes every family.
/// Must run inside the Tokio runtime.
pub async fn install(addr: SocketAddr) -> Result<(), InstallError> {
    let listener = http::bind(addr).await?;
    let mut b = PrometheusBuilder::new();
    for name in [QUORUM_SECONDS, COMMIT_SECONDS, CHECKPOINT_SECONDS] {
        b = b.set_buckets_for_metric(Matcher::Full(name.to_string()), LATENCY_BUCKETS)?;
    }
    b = b.set_buckets_for_metric(Matcher::Full(COMMIT_BATCH.to_string()), COUNT_BUCKETS)?;
    let handle = b.install_recorder()?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(http::serve(listener, handle));
    Ok(())
}

/// Why the metrics endpoint did not start.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The exporter refused its configuration or a recorder was already installed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The listener could not bind.
    #[error("cannot listen: {0}")]
    Bind(#[from] std::io::Error),
}

fn describe() {
    // Kept in `commands` and rendered there; described here like every family.
    describe_counter!(COMMANDS, COMMANDS_HELP);
    describe_histogram!(COMMAND_SECONDS, Unit::Seconds, COMMAND_SECONDS_HELP);
    describe_counter!(ERRORS, "Error replies, by kind (the error code).");
    describe_counter!(
        QUORUMS,
        "Quorum rounds by op (read, write) and outcome (met, sloppy, failed)."
    );
    describe_histogram!(
        QUORUM_SECONDS,
        Unit::Seconds,
        "Time to reach a read or write quorum, by op."
    );
    describe_counter!(FORWARDS, "Client requests forwarded to the key's coordinator.");
    describe_counter!(READ_REPAIRS, "Stale or divergent replicas repaired by read repair.");
    describe_histogram!(SIBLINGS_PER_READ, SIBLINGS_PER_READ_HELP);
    describe_gauge!(
        KEYS_WITH_SIBLINGS,
        "Keys holding more than one live sibling (last full sweep)."
    );
    describe_gauge!(HINTS_PENDING, "Records held as hints for a down peer, by peer.");
    describe_counter!(HINTS_DELIVERED, "Hints handed back to their owner, by peer.");
    describe_counter!(
        SLOPPY_WRITES,
        "Writes that went to a fallback because a home replica was down."
    );
    describe_gauge!(PEERS, "Peers by state (up, down) as this node sees them.");
    describe_gauge!(
        TOMBSTONES,
        "Dead records (tombstones and expired values) not yet reaped (last full sweep)."
    );
    describe_counter!(
        TOMBSTONES_REAPED,
        "Dead records (tombstones, expired values) removed once every replica held them."
    );
    describe_gauge!(LMDB_MAP_BYTES, Unit::Bytes, "LMDB map size.");
    describe_gauge!(LMDB_USED_BYTES, Unit::Bytes, "LMDB bytes in use.");
    describe_histogram!(COMMIT_BATCH, "Writes per group commit.");
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Time of one group commit, fsync included."
    );
    describe_histogram!(
        CHECKPOINT_SECONDS,
        Unit::Seconds,
        "Time of one checkpoint of the write-ahead log (fsync = always)."
    );
    describe_gauge!(CLIENTS, "Connected clients.");
    describe_counter!(NET_IN, Unit::Bytes, "Bytes read from clients.");
    describe_counter!(NET_OUT, Unit::Bytes, "Bytes written to clients.");
    describe_counter!(AE_EXCHANGES, "Anti-entropy exchanges with a peer, by outcome.");
    describe_counter!(
        TRANSFER_KEYS,
        "Records received by partition transfers after ring changes."
    );
    describe_counter!(TRANSFER_BYTES, Unit::Bytes, "Bytes received by partition transfers.");

    describe_counter!(
        AE_KEYS_REPAIRED,
        "Local records changed by versions fetched through anti-entropy."
    );
    describe_counter!(AE_BYTES, Unit::Bytes, "Anti-entropy message bytes, by direction.");
}

/// The error kind of an error reply's text: its first word (Redis's error code).
pub fn error_kind(text: &str) -> &str {
    text.split(' ').next().unwrap_or("ERR")
}
