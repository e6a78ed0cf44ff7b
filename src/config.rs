//! Settings: their defaults, the TOML file, the command-line flags, and validation.
//! Must not start anything: it only produces a validated [`Config`].

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// When a committed write reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Every group commit is fsynced before its writes are acknowledged (the default).
    Always,
    /// Commits are fsynced by a background task once a second: a crash loses at most ~1 s.
    Everysec,
    /// Never fsync explicitly; the OS writes back when it likes.
    No,
}

impl Fsync {
    /// The name used in flags, the config file and INFO.
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
            Fsync::No => "no",
        }
    }
}

/// A node's validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the RESP listener binds to.
    pub bind: String,
    /// RESP port.
    pub port: u16,
    /// Directory holding the LMDB environment and node metadata.
    pub data_dir: PathBuf,
    /// Durability of acknowledged writes.
    pub fsync: Fsync,
    /// Password that AUTH must present; `None` means no authentication.
    pub requirepass: Option<String>,
    /// Most simultaneous client connections; more are refused with an error.
    pub max_clients: usize,
    /// Largest bulk string a request may carry (Redis `proto-max-bulk-len`).
    pub max_bulk_len: usize,
    /// Most arguments in one request.
    pub max_multibulk_len: usize,
    /// Longest inline (telnet-style) request line.
    pub max_inline_len: usize,
    /// Most memory one request may hold while it is read (Redis's query buffer limit).
    pub max_request_len: usize,
    /// A connection whose unsent replies exceed this many bytes is closed.
    pub max_output_buffer: usize,
    /// Initial LMDB map size in bytes; the map doubles whenever it fills.
    pub initial_map_size: usize,
    /// Most records the expiry sweep examines per tick.
    pub expire_sweep_keys: usize,
    /// Milliseconds between expiry sweep ticks.
    pub expire_sweep_interval_ms: u64,
    /// Seconds a dead record (tombstone or expired value) is kept before it is reaped.
    pub tombstone_grace_secs: u64,
    /// Client threads: each runs its share of the connections on an event loop of its
    /// own, with its own group-commit writer unless `fsync = always`.
    pub threads: usize,
    /// Client addresses (`host:port`, or `host:port@clusterport`) of other members.
    pub seeds: Vec<String>,
    /// Internode port; default: the client port + 10000.
    pub cluster_port: Option<u16>,
    /// Shared secret every member proves at internode connection start.
    pub cluster_secret: Option<String>,
    /// Replicas per key.
    pub n: usize,
    /// Replies a read waits for.
    pub r: usize,
    /// Durable acknowledgements a write waits for.
    pub w: usize,
    /// Deadline of one internode request, in milliseconds.
    pub request_timeout_ms: u64,
    /// This node's placement weight (a node of weight 2 coordinates twice the partitions).
    pub weight: f64,
    /// A peer that has answered nothing for this long (ms) while requests failed is down:
    /// sloppy quorums route around it until it answers again.
    pub failure_timeout_ms: u64,
    /// Where Prometheus scrapes `/metrics`; `None` when turned off.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Milliseconds between anti-entropy exchanges (each with the next peer in turn).
    pub anti_entropy_interval_ms: u64,
    /// Most bytes per second anti-entropy sends and receives (0: unlimited).
    pub anti_entropy_bytes_per_sec: u64,
    /// Most bytes per second a node pulls when partitions move to it (0: unlimited).
    pub transfer_bytes_per_sec: u64,
    /// The node id to use for a fresh data directory (a replaced node taking over its
    /// predecessor's place); `None` draws one.
    pub node_id: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1".into(),
            port: 6379,
            data_dir: PathBuf::from("./dynkv-data"),
            fsync: Fsync::Always,
            requirepass: None,
            max_clients: 10_000,
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: i32::MAX as usize,
            max_inline_len: 64 * 1024,
            max_request_len: 1024 * 1024 * 1024,
            max_output_buffer: 1024 * 1024 * 1024,
            initial_map_size: 256 * 1024 * 1024,
            expire_sweep_keys: 1000,
            expire_sweep_interval_ms: 100,
            tombstone_grace_secs: 3600,
            threads: default_threads(),
            seeds: Vec::new(),
            cluster_port: None,
            cluster_secret: None,
            n: 3,
            r: 2,
            w: 2,
            request_timeout_ms: 1000,
            weight: 1.0,
            failure_timeout_ms: 2000,
            metrics_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9379))),
            anti_entropy_interval_ms: 1000,
            anti_entropy_bytes_per_sec: 8 * 1024 * 1024,
            transfer_bytes_per_sec: 32 * 1024 * 1024,
            node_id: None,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for dynkv.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A setting has a value dynkv cannot run with.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// The setting's name.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// The settings a TOML config file may hold; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    bind: Option<String>,
    port: Option<u16>,
    data_dir: Option<PathBuf>,
    fsync: Option<Fsync>,
    requirepass: Option<String>,
    max_clients: Option<usize>,
    max_bulk_len: Option<usize>,
    max_multibulk_len: Option<usize>,
    max_inline_len: Option<usize>,
    max_request_len: Option<usize>,
    max_output_buffer: Option<usize>,
    initial_map_size: Option<usize>,
    expire_sweep_keys: Option<usize>,
    expire_sweep_interval_ms: Option<u64>,
    tombstone_grace_secs: Option<u64>,
    threads: Option<usize>,
    seeds: Option<Vec<String>>,
    cluster_port: Option<u16>,
    cluster_secret: Option<String>,
    n: Option<usize>,
    r: Option<usize>,
    w: Option<usize>,
    request_timeout_ms: Option<u64>,
    weight: Option<f64>,
    failure_timeout_ms: Option<u64>,
    metrics_addr: Option<String>,
    anti_entropy_interval_ms: Option<u64>,
    anti_entropy_bytes_per_sec: Option<u64>,
    transfer_bytes_per_sec: Option<u64>,
}

/// The flags of `dynkv server`; each overrides the config file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServerArgs {
    /// TOML config file; flags given on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on for Redis clients.
    #[arg(long)]
    pub bind: Option<String>,
    /// Port for Redis clients.
    #[arg(long)]
    pub port: Option<u16>,
    /// Data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Durability: always (ack after fsync), everysec, or no.
    #[arg(long, value_enum)]
    pub fsync: Option<Fsync>,
    /// Require clients to AUTH with this password.
    #[arg(long)]
    pub requirepass: Option<String>,
    /// Most simultaneous client connections.
    #[arg(long)]
    pub max_clients: Option<usize>,
    /// Largest bulk string in a request, in bytes.
    #[arg(long)]
    pub max_bulk_len: Option<usize>,
    /// Initial LMDB map size in bytes (it grows when full).
    #[arg(long)]
    pub initial_map_size: Option<usize>,
    /// Client threads, each with its own event loop (default: one per core but one, at
    /// least one).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Members to join through: client addresses, comma-separated (`host:port` or
    /// `host:port@clusterport`). `--join` is the same flag.
    #[arg(long, alias = "join", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Internode port (default: client port + 10000).
    #[arg(long)]
    pub cluster_port: Option<u16>,
    /// Shared cluster secret (required with --seeds).
    #[arg(long)]
    pub cluster_secret: Option<String>,
    /// Replicas per key (default 3).
    #[arg(long)]
    pub n: Option<usize>,
    /// Replies a read waits for (default 2).
    #[arg(long)]
    pub r: Option<usize>,
    /// Acknowledgements a write waits for (default 2).
    #[arg(long)]
    pub w: Option<usize>,
    /// Deadline of one internode request in milliseconds (default 1000).
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Placement weight of this node (default 1).
    #[arg(long)]
    pub weight: Option<f64>,
    /// Milliseconds without an answer after which a failing peer is routed around (default 2000).
    #[arg(long)]
    pub failure_timeout_ms: Option<u64>,
    /// Address of the Prometheus `/metrics` endpoint (default 127.0.0.1:9379), or `off`.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Seconds a tombstone or expired value is kept, at least, before it is reaped (once
    /// every replica holds it; default 3600).
    #[arg(long)]
    pub tombstone_grace_secs: Option<u64>,
    /// Milliseconds between anti-entropy exchanges (default 1000).
    #[arg(long)]
    pub anti_entropy_interval_ms: Option<u64>,
    /// Most bytes per second anti-entropy moves (default 8388608; 0 = unlimited).
    #[arg(long)]
    pub anti_entropy_bytes_per_sec: Option<u64>,
    /// Most bytes per second pulled when partitions move to this node (default 33554432;
    /// 0 = unlimited).
    #[arg(long)]
    pub transfer_bytes_per_sec: Option<u64>,
    /// Node id (16 hex digits) for a fresh data directory: a replacement node takes the
    /// place of the node it replaces. Refused if the data directory has another id.
    #[arg(long, value_parser = parse_node_id)]
    pub node_id: Option<u64>,
    /// Write logs as JSON lines instead of human-readable text.
    #[arg(long)]
    pub log_json: bool,
}

/// Reads a node id as printed in INFO and logs: 16 hex digits (an optional `0x` prefix);
/// zero is not an id.
pub fn parse_node_id(s: &str) -> Result<u64, String> {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    match u64::from_str_radix(hex, 16) {
        Ok(0) => Err("0 is not a node id".into()),
        Ok(id) if !hex.is_empty() && hex.len() <= 16 => Ok(id),
        _ => Err(format!("{s:?} is not a node id (16 hex digits)")),
    }
}

impl Config {
    /// Builds the configuration: defaults, then the file named by `--config`, then flags.
    pub fn load(args: &ServerArgs) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(path) = &args.config {
            let file = read_file(path)?;
            cfg.apply_file(&file);
            if let Some(m) = &file.metrics_addr {
                cfg.metrics_addr = parse_metrics_addr(m)?;
            }
        }
        cfg.apply_args(args);
        if let Some(m) = &args.metrics_addr {
            cfg.metrics_addr = parse_metrics_addr(m)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_file(&mut self, f: &FileConfig) {
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = &f.$field { self.$field = v.clone(); } )* };
        }
        take!(
            bind,
            port,
            data_dir,
            fsync,
            max_clients,
            max_bulk_len,
            max_multibulk_len,
            max_inline_len,
            max_request_len,
            max_output_buffer,
            initial_map_size,
            expire_sweep_keys,
            expire_sweep_interval_ms,
            tombstone_grace_secs,
            threads,
            seeds,
            n,
            r,
            w,
            request_timeout_ms,
            weight,
            failure_timeout_ms,
            anti_entropy_interval_ms,
            anti_entropy_bytes_per_sec,
            transfer_bytes_per_sec
        );
        if f.cluster_port.is_some() {
            self.cluster_port = f.cluster_port;
        }
        if f.cluster_secret.is_some() {
            self.cluster_secret = f.cluster_secret.clone();
        }
        if f.requirepass.is_some() {
            self.requirepass = f.requirepass.clone();
        }
    }

    fn apply_args(&mut self, a: &ServerArgs) {
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = &a.$field { self.$field = v.clone(); } )* };
        }
        take!(
            bind,
            port,
            data_dir,
            fsync,
            max_clients,
            max_bulk_len,
            initial_map_size,
            threads,
            seeds,
            n,
            r,
            w,
            request_timeout_ms,
            weight,
            failure_timeout_ms,
            tombstone_grace_secs,
            anti_entropy_interval_ms,
            anti_entropy_bytes_per_sec,
            transfer_bytes_per_sec
        );
        if a.node_id.is_some() {
            self.node_id = a.node_id;
        }
        if a.cluster_port.is_some() {
            self.cluster_port = a.cluster_port;
        }
        if a.cluster_secret.is_some() {
            self.cluster_secret = a.cluster_secret.clone();
        }
        if a.requirepass.is_some() {
            self.requirepass = a.requirepass.clone();
        }
    }

    /// Refuses settings dynkv cannot run with, with a message naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |name, reason: &str| {
            Err(ConfigError::Invalid {
                name,
                reason: reason.to_string(),
            })
        };
        if self.max_clients == 0 {
            return bad("max-clients", "must be at least 1");
        }
        if self.max_bulk_len == 0 || self.max_bulk_len > 1 << 32 {
            return bad("max-bulk-len", "must be between 1 and 4294967296");
        }
        if self.max_multibulk_len == 0 {
            return bad("max-multibulk-len", "must be at least 1");
        }
        if self.max_request_len < self.max_bulk_len {
            return bad("max-request-len", "must be at least max-bulk-len");
        }
        if self.max_inline_len < 64 {
            return bad("max-inline-len", "must be at least 64");
        }
        if self.initial_map_size < 1024 * 1024 {
            return bad("initial-map-size", "must be at least 1 MiB");
        }
        if self.anti_entropy_interval_ms == 0 {
            return bad("anti-entropy-interval-ms", "must be positive");
        }
        if self.expire_sweep_keys == 0 || self.expire_sweep_interval_ms == 0 {
            return bad("expire-sweep", "keys and interval must be positive");
        }
        if self.n == 0 || self.n > 16 {
            return bad("n", "must be between 1 and 16");
        }
        if self.r == 0 || self.r > self.n {
            return Err(ConfigError::Invalid {
                name: "r",
                reason: format!("must be between 1 and n ({}), got {}", self.n, self.r),
            });
        }
        if self.w == 0 || self.w > self.n {
            return Err(ConfigError::Invalid {
                name: "w",
                reason: format!("must be between 1 and n ({}), got {}", self.n, self.w),
            });
        }
        if self.failure_timeout_ms == 0 {
            return bad("failure-timeout-ms", "must be positive");
        }
        if self.request_timeout_ms == 0 {
            return bad("request-timeout-ms", "must be positive");
        }
        if !(self.weight.is_finite() && self.weight > 0.0 && self.weight <= 1000.0) {
            return bad("weight", "must be a number in (0, 1000]");
        }
        if !self.seeds.is_empty() && self.cluster_secret.as_deref().is_none_or(str::is_empty) {
            return bad(
                "cluster-secret",
                "is required when seeds are given (every member must share it)",
            );
        }
        if self.clustered() && self.cluster_port.is_none() && self.port > u16::MAX - 10000 {
            return bad("cluster-port", "must be given when port + 10000 exceeds 65535");
        }
        if self.threads == 0 || self.threads > 1024 {
            return bad("threads", "must be between 1 and 1024");
        }
        if matches!(&self.requirepass, Some(p) if p.is_empty()) {
            return bad("requirepass", "must not be empty");
        }
        Ok(())
    }
}

impl Config {
    /// The internode port: the configured one, or the client port + 10000.
    pub fn internode_port(&self) -> u16 {
        self.cluster_port.unwrap_or(self.port.saturating_add(10000))
    }

    /// Whether this node takes part in a cluster (listens for peers).
    pub fn clustered(&self) -> bool {
        !self.seeds.is_empty() || self.cluster_secret.is_some()
    }
}

/// `off` or a socket address.
fn parse_metrics_addr(s: &str) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| ConfigError::Invalid {
        name: "metrics-addr",
        reason: format!("expected HOST:PORT or off, got {s:?}"),
    })
}

/// One client thread per core but one, and at least one. The core left over is for the
/// kernel's network processing, the writer thread and background work: on two cores, two
/// client threads spent more time going to sleep and waking up than serving (see the
/// README's benchmark section).
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_sub(1)
        .max(1)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dynkv.toml");
        std::fs::write(&path, "port = 7000\nbind = \"127.0.0.2\"\nfsync = \"no\"\n").expect("write");
        let args = ServerArgs {
            config: Some(path),
            port: Some(7001),
            ..Default::default()
        };
        let cfg = Config::load(&args).expect("load");
        assert_eq!(cfg.port, 7001);
        assert_eq!(cfg.bind, "127.0.0.2");
        assert_eq!(cfg.fsync, Fsync::No);
        assert_eq!(cfg.max_clients, 10_000);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dynkv.toml");
        std::fs::write(&path, "prot = 7000\n").expect("write");
        let args = ServerArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(matches!(Config::load(&args), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn quorum_settings_are_validated() {
        let bad_r = ServerArgs {
            r: Some(4),
            ..Default::default()
        };
        let err = Config::load(&bad_r).expect_err("r > n must be refused").to_string();
        assert!(err.contains("invalid setting r"), "{err}");
        let seeds_without_secret = ServerArgs {
            seeds: Some(vec!["127.0.0.1:7001".into()]),
            ..Default::default()
        };
        let err = Config::load(&seeds_without_secret)
            .expect_err("secret required")
            .to_string();
        assert!(err.contains("cluster-secret"), "{err}");
        let ok = ServerArgs {
            n: Some(5),
            r: Some(3),
            w: Some(3),
            ..Default::default()
        };
        assert!(Config::load(&ok).is_ok());
    }
}
