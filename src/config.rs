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
    /// Threads that run connections and commands (the LMDB writer has its own).
    pub threads: usize,
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
    /// Threads for connections and commands (default: half the cores, at least 1).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl Config {
    /// Builds the configuration: defaults, then the file named by `--config`, then flags.
    pub fn load(args: &ServerArgs) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(path) = &args.config {
            cfg.apply_file(&read_file(path)?);
        }
        cfg.apply_args(args);
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
            threads
        );
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
            threads
        );
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
        if self.expire_sweep_keys == 0 || self.expire_sweep_interval_ms == 0 {
            return bad("expire-sweep", "keys and interval must be positive");
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

/// Half the cores, at least one: the other half is left to the LMDB writer thread, the
/// kernel's network stack and anything co-located (a benchmark client, a sidecar).
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
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
}
