//! `dynkv migrate`: copies a live Redis's string keys, with their remaining TTLs, into dynkv.
//!
//! The source is walked with `SCAN` (`MATCH`, `COUNT`). Each batch of keys that one `SCAN` call
//! returns is read with one pipeline of `TYPE` + `PTTL` + `GET` per key and written to dynkv
//! with one pipeline of `SET key value [PX ms]`, the TTL being what was left when it was read
//! minus the time the batch has spent in flight. Up to `--parallel` batches are in flight at
//! once, each on its own pair of connections.
//!
//! Batches are folded into the saved state in SCAN order, so the state file's cursor always
//! marks a point before which every key has been handled: a re-run with the same state file
//! resumes there (SCAN may then return a few keys twice; writing them again is harmless). The
//! state file is JSON, replaced atomically (temporary file + rename) after every batch, and
//! removed when the migration completes.
//!
//! Keys of other types are never silently dropped: they are counted per type, listed in the
//! final report (the first [`REPORT_NAMES_PER_TYPE`] of each type), and all written to the
//! skipped-keys file `<state-file>.skipped` (one `TYPE<TAB>key` line each, keys escaped with
//! [`escape_key`]). Keys whose `SET` still fails after [`WRITE_ATTEMPTS`] attempts are written
//! to `<state-file>.failed` and make the command exit non-zero.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How many times a `SET` is attempted before its key is counted as failed.
pub const WRITE_ATTEMPTS: u32 = 4;
/// How many key names per skipped type the final report lists (the skipped-keys file has all).
pub const REPORT_NAMES_PER_TYPE: usize = 100;
/// How often a progress line is printed when stderr is not a terminal.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);
/// The state file format's version.
const STATE_VERSION: u32 = 1;

/// The flags of `dynkv migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// Source Redis: `redis://[[user]:password@]host:port[/db]`.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The dynkv node to write to: `host:port` or a `redis://` URL.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:6379")]
    pub to: String,
    /// Copy only the keys matching this glob pattern (SCAN's MATCH).
    #[arg(long = "match", value_name = "PATTERN")]
    pub pattern: Option<String>,
    /// Keys asked of each SCAN call (its COUNT) and so roughly per batch.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub batch: usize,
    /// Batches in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub parallel: usize,
    /// Where progress is saved after each batch; a re-run with the same file resumes. The
    /// skipped-keys list is written next to it, as `<state-file>.skipped`.
    #[arg(long, value_name = "PATH", default_value = "./dynkv-migrate.state")]
    pub state_file: PathBuf,
    /// Password of the dynkv node (its `requirepass`).
    #[arg(long, value_name = "PASSWORD")]
    pub to_password: Option<String>,
    /// Read at most this many keys a second from the source, to spare a busy Redis (0: no limit).
    #[arg(long, value_name = "KEYS", default_value_t = 0)]
    pub max_rate: u64,
    /// Ignore an existing state file and start from the beginning.
    #[arg(long)]
    pub fresh: bool,
}

/// Why a migration stopped or could not start.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// A flag is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgs(String),
    /// The source Redis could not be connected to (or refused the credentials).
    #[error("cannot reach the source Redis at {addr}: {cause}")]
    SourceUnreachable {
        /// `host:port/db` of the source.
        addr: String,
        /// What the client reported.
        cause: redis::RedisError,
    },
    /// The dynkv node could not be connected to (or refused the credentials).
    #[error("cannot reach dynkv at {addr}: {cause}")]
    TargetUnreachable {
        /// `host:port` of the node.
        addr: String,
        /// What the client reported.
        cause: redis::RedisError,
    },
    /// `--from` and `--to` name the same server.
    #[error("--from and --to are the same server (run_id {0})")]
    SameServer(String),
    /// The source failed or answered something unexpected during the migration.
    #[error("source Redis failed: {0}")]
    Source(String),
    /// dynkv failed (connection lost, timeouts) during the migration, after retries.
    #[error("dynkv failed: {0}")]
    Target(String),
    /// The state file or a file next to it could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The state file is not one this version wrote.
    #[error("{path} is not a dynkv migrate state file ({reason}); remove it or pass --fresh")]
    StateCorrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The state file belongs to a migration with another source or pattern.
    #[error(
        "{path} belongs to another migration (from {saved_from}, match {saved_match}); \
         pass --fresh or another --state-file"
    )]
    StateMismatch {
        /// The state file.
        path: PathBuf,
        /// The source it records.
        saved_from: String,
        /// The pattern it records (`*` for none).
        saved_match: String,
    },
    /// The migration completed but some keys could not be written.
    #[error("{0} key(s) could not be written to dynkv (listed in the report)")]
    KeysFailed(u64),
    /// A signal stopped the migration; the state file holds where to resume.
    #[error("interrupted; run the same command again to resume from {0}")]
    Interrupted(PathBuf),
}

/// Counters saved in the state file: totals over every run of one migration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Keys SCAN returned (a key returned twice counts twice).
    pub scanned: u64,
    /// String keys written to dynkv.
    pub copied: u64,
    /// Bytes of the values written.
    pub bytes: u64,
    /// Keys that expired or were deleted between SCAN and their copy.
    pub expired: u64,
    /// Keys of other types, skipped.
    pub skipped: u64,
    /// Keys whose write failed after every attempt.
    pub failed: u64,
}

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// The source, without its password (`host:port/db`).
    pub from: String,
    /// The MATCH pattern, if any.
    pub pattern: Option<String>,
    /// The SCAN cursor to resume from; every key before it has been handled.
    pub cursor: u64,
    /// Set once the last batch has been folded in (the file is then removed).
    pub complete: bool,
    /// Totals so far.
    pub counters: Counters,
    /// Time spent in earlier runs plus this one, in milliseconds.
    pub elapsed_ms: u64,
}

/// How a migration ended, as shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every key was scanned.
    Complete,
    /// A signal stopped it; it can be resumed.
    Interrupted,
}

/// The final report printed on stdout.
#[derive(Debug, Clone)]
pub struct Report {
    /// How it ended.
    pub status: Status,
    /// `host:port/db` of the source.
    pub from: String,
    /// `host:port` of the dynkv node.
    pub to: String,
    /// The cursor this run resumed from, if it resumed.
    pub resumed_from: Option<u64>,
    /// Totals over every run of this migration.
    pub counters: Counters,
    /// Skipped keys by type: how many (distinct) and the first names, escaped.
    pub skipped: BTreeMap<String, (u64, Vec<String>)>,
    /// Failed keys (escaped) and their last error, the first [`REPORT_NAMES_PER_TYPE`].
    pub failed_keys: Vec<(String, String)>,
    /// Distinct failed keys.
    pub failed_distinct: u64,
    /// Total time over every run.
    pub elapsed: Duration,
    /// Keys and bytes copied by this run, and its duration, for the rate.
    pub run: (u64, u64, Duration),
    /// The skipped-keys file.
    pub skipped_file: PathBuf,
    /// The failed-keys file.
    pub failed_file: PathBuf,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        let status = match self.status {
            Status::Complete => "complete",
            Status::Interrupted => "interrupted (run the same command again to resume)",
        };
        writeln!(f, "dynkv migrate: {status}")?;
        writeln!(f, "{:<18} {}", "from", self.from)?;
        writeln!(f, "{:<18} {}", "to", self.to)?;
        if let Some(cursor) = self.resumed_from {
            writeln!(
                f,
                "{:<18} from cursor {cursor} (totals include earlier runs)",
                "resumed"
            )?;
        }
        writeln!(f, "{:<18} {}", "scanned", c.scanned)?;
        writeln!(f, "{:<18} {}", "copied", c.copied)?;
        writeln!(f, "{:<18} {} ({})", "bytes", c.bytes, HumanBytes(c.bytes))?;
        writeln!(
            f,
            "{:<18} {} (expired or deleted during the copy)",
            "expired", c.expired
        )?;
        writeln!(f, "{:<18} {}", "errors", c.failed)?;
        let distinct: u64 = self.skipped.values().map(|(n, _)| n).sum();
        if distinct == 0 {
            writeln!(f, "{:<18} 0", "skipped")?;
        } else {
            writeln!(
                f,
                "{:<18} {distinct} (keys of other types, all listed in {})",
                "skipped",
                self.skipped_file.display()
            )?;
        }
        for (ty, (n, names)) in &self.skipped {
            writeln!(f, "{:<18} {n}", format!("skipped {ty}"))?;
            for name in names {
                writeln!(f, "  {name}")?;
            }
            if *n > names.len() as u64 {
                writeln!(f, "  ... and {} more", *n - names.len() as u64)?;
            }
        }
        if !self.failed_keys.is_empty() {
            writeln!(f, "{:<18} {}", "failed keys", self.failed_distinct)?;
            for (key, err) in &self.failed_keys {
                writeln!(f, "  {key}: {err}")?;
            }
            if self.failed_distinct > self.failed_keys.len() as u64 {
                writeln!(
                    f,
                    "  ... and {} more (see {})",
                    self.failed_distinct - self.failed_keys.len() as u64,
                    self.failed_file.display()
                )?;
            }
        }
        writeln!(f, "{:<18} {:.1} s", "elapsed", self.elapsed.as_secs_f64())?;
        let (keys, bytes, took) = self.run;
        let secs = took.as_secs_f64().max(0.001);
        writeln!(
            f,
            "{:<18} {:.0} keys/s, {}/s",
            "rate",
            keys as f64 / secs,
            HumanBytes((bytes as f64 / secs) as u64)
        )
    }
}

/// Escapes a key for the report and the skipped-keys file: printable ASCII stays, `\` becomes
/// `\\`, every other byte `\xNN` (so Python's `codecs.escape_decode` reverses it).
pub fn escape_key(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len());
    for &b in key {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// `<path><suffix>`, e.g. `dynkv-migrate.state.skipped`.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MigrateError + '_ {
    move |cause| MigrateError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Writes `bytes` to `path` atomically: a temporary file next to it, fsynced, then renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MigrateError> {
    let tmp = sidecar(path, ".tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_data().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn save_state(path: &Path, state: &State) -> Result<(), MigrateError> {
    let json = serde_json::to_vec_pretty(state).map_err(|e| MigrateError::StateCorrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &json)
}

/// Reads the state file: `None` when there is none.
pub fn load_state(path: &Path) -> Result<Option<State>, MigrateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| MigrateError::StateCorrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if state.version != STATE_VERSION {
        return Err(MigrateError::StateCorrupt {
            path: path.to_path_buf(),
            reason: format!("format version {} (expected {STATE_VERSION})", state.version),
        });
    }
    Ok(Some(state))
}

fn remove_if_exists(path: &Path) -> Result<(), MigrateError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Appends lines to a file next to the state file.
struct Appender {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Appender {
    fn new(path: PathBuf) -> Appender {
        Appender { path, file: None }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), MigrateError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(io_err(&self.path))?;
                self.file.insert(f)
            }
        };
        file.write_all(bytes).map_err(io_err(&self.path))?;
        file.sync_data().map_err(io_err(&self.path))
    }
}

/// Reads a `FIELD<TAB>REST` sidecar file into `field -> set of rest` (empty when missing).
fn read_tabbed(path: &Path) -> Result<BTreeMap<String, BTreeSet<String>>, MigrateError> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some((a, b)) = line.split_once('\t') {
            out.entry(a.to_string()).or_default().insert(b.to_string());
        }
    }
    Ok(out)
}

/// Live counters for the progress display (totals, including earlier runs).
#[derive(Default)]
struct Progress {
    scanned: AtomicU64,
    copied: AtomicU64,
    bytes: AtomicU64,
    expired: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

impl Progress {
    fn from_counters(c: &Counters) -> Progress {
        Progress {
            scanned: AtomicU64::new(c.scanned),
            copied: AtomicU64::new(c.copied),
            bytes: AtomicU64::new(c.bytes),
            expired: AtomicU64::new(c.expired),
            skipped: AtomicU64::new(c.skipped),
            failed: AtomicU64::new(c.failed),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// One line: totals and this run's copy rate.
    fn line(&self, base: (u64, u64), started: Instant) -> String {
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let copied = Self::get(&self.copied);
        let bytes = Self::get(&self.bytes);
        format!(
            "scanned {} | copied {} ({}) | skipped {} | expired {} | errors {} | {:.0} keys/s, {}/s",
            Self::get(&self.scanned),
            copied,
            HumanBytes(bytes),
            Self::get(&self.skipped),
            Self::get(&self.expired),
            Self::get(&self.failed),
            copied.saturating_sub(base.0) as f64 / secs,
            HumanBytes((bytes.saturating_sub(base.1) as f64 / secs) as u64),
        )
    }
}

/// What one batch did.
#[derive(Debug, Default)]
struct BatchOutcome {
    scanned: u64,
    copied: u64,
    bytes: u64,
    expired: u64,
    /// `(type, key)` of each key of another type.
    skipped: Vec<(String, Vec<u8>)>,
    /// `(key, last error)` of each key that could not be written.
    failed: Vec<(Vec<u8>, String)>,
}

/// What one key read from the source turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// A string, with its remaining TTL in ms (`None`: persistent).
    Str { value: Vec<u8>, pttl: Option<u64> },
    /// Expired or deleted since SCAN returned it.
    Gone,
    /// Another type, skipped.
    Other(String),
    /// The source answered an error for this key.
    Error(String),
}

fn reply_text(v: &Value) -> Option<String> {
    match v {
        Value::SimpleString(s) => Some(s.clone()),
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// Classifies the replies to `TYPE`, `PTTL` and `GET` of one key.
fn classify(ty: Value, pttl: Value, get: Value) -> Read {
    let ty = match ty {
        Value::ServerError(e) => return Read::Error(format!("TYPE: {e}")),
        other => match reply_text(&other) {
            Some(t) => t,
            None => return Read::Error(format!("unexpected TYPE reply {other:?}")),
        },
    };
    match ty.as_str() {
        "none" => Read::Gone,
        "string" => {
            let pttl = match pttl {
                Value::Int(n) if n == -2 || n == 0 => return Read::Gone,
                Value::Int(n) if n < 0 => None,
                Value::Int(n) => Some(n.unsigned_abs()),
                Value::ServerError(e) => return Read::Error(format!("PTTL: {e}")),
                other => return Read::Error(format!("unexpected PTTL reply {other:?}")),
            };
            match get {
                Value::BulkString(value) => Read::Str { value, pttl },
                Value::Nil => Read::Gone,
                Value::ServerError(e) => Read::Error(format!("GET: {e}")),
                other => Read::Error(format!("unexpected GET reply {other:?}")),
            }
        }
        other => Read::Other(other.to_string()),
    }
}

/// A string key waiting to be written.
struct Pending {
    key: Vec<u8>,
    value: Vec<u8>,
    pttl: Option<u64>,
    last_error: String,
}

/// Reads one batch of keys from the source and writes its strings to dynkv.
async fn copy_batch(
    mut src: MultiplexedConnection,
    mut dst: MultiplexedConnection,
    keys: Vec<Vec<u8>>,
    progress: Arc<Progress>,
) -> Result<BatchOutcome, MigrateError> {
    let mut out = BatchOutcome {
        scanned: keys.len() as u64,
        ..BatchOutcome::default()
    };
    if keys.is_empty() {
        return Ok(out);
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for k in &keys {
        pipe.cmd("TYPE").arg(k.as_slice());
        pipe.cmd("PTTL").arg(k.as_slice());
        pipe.cmd("GET").arg(k.as_slice());
    }
    let read_at = Instant::now();
    let replies: Vec<Value> = pipe
        .query_async(&mut src)
        .await
        .map_err(|e| MigrateError::Source(e.to_string()))?;
    if replies.len() != keys.len() * 3 {
        return Err(MigrateError::Source(format!(
            "{} replies to a pipeline of {} commands",
            replies.len(),
            keys.len() * 3
        )));
    }
    let mut pending = Vec::new();
    let mut replies = replies.into_iter();
    for key in keys {
        let (Some(ty), Some(pttl), Some(get)) = (replies.next(), replies.next(), replies.next()) else {
            break; // unreachable: the length was checked
        };
        match classify(ty, pttl, get) {
            Read::Str { value, pttl } => pending.push(Pending {
                key,
                value,
                pttl,
                last_error: String::new(),
            }),
            Read::Gone => {
                out.expired += 1;
                Progress::add(&progress.expired, 1);
            }
            Read::Other(ty) => {
                out.skipped.push((ty, key));
                Progress::add(&progress.skipped, 1);
            }
            Read::Error(e) => {
                out.failed.push((key, e));
                Progress::add(&progress.failed, 1);
            }
        }
    }

    let mut last_transport_error = None;
    for attempt in 0..WRITE_ATTEMPTS {
        if pending.is_empty() {
            break;
        }
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100u64 << (2 * attempt))).await;
        }
        // The TTL keeps running while the batch is in flight: write what is left of it.
        let spent = u64::try_from(read_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent = Vec::with_capacity(pending.len());
        for p in pending.drain(..) {
            let px = match p.pttl {
                None => None,
                Some(t) if t <= spent => {
                    out.expired += 1;
                    Progress::add(&progress.expired, 1);
                    continue;
                }
                Some(t) => Some(t - spent),
            };
            let cmd = pipe.cmd("SET").arg(p.key.as_slice()).arg(p.value.as_slice());
            if let Some(px) = px {
                cmd.arg("PX").arg(px);
            }
            sent.push(p);
        }
        if sent.is_empty() {
            break;
        }
        match pipe.query_async::<Vec<Value>>(&mut dst).await {
            Ok(replies) if replies.len() == sent.len() => {
                last_transport_error = None;
                for (mut p, reply) in sent.into_iter().zip(replies) {
                    if let Value::ServerError(e) = reply {
                        p.last_error = e.to_string();
                        pending.push(p);
                    } else {
                        out.copied += 1;
                        out.bytes += p.value.len() as u64;
                        Progress::add(&progress.copied, 1);
                        Progress::add(&progress.bytes, p.value.len() as u64);
                    }
                }
            }
            Ok(replies) => {
                return Err(MigrateError::Target(format!(
                    "{} replies to a pipeline of {} SETs",
                    replies.len(),
                    sent.len()
                )));
            }
            Err(e) => {
                let msg = e.to_string();
                for mut p in sent {
                    p.last_error = msg.clone();
                    pending.push(p);
                }
                last_transport_error = Some(msg);
            }
        }
    }
    if let Some(e) = last_transport_error {
        // The connection itself failed every time: stop here, the state file resumes here.
        return Err(MigrateError::Target(e));
    }
    for p in pending {
        out.failed.push((p.key, p.last_error));
        Progress::add(&progress.failed, 1);
    }
    Ok(out)
}

/// `--to` as connection info: `host:port`, `[v6]:port`, or a `redis://` URL.
pub fn target_info(to: &str, password: Option<&str>) -> Result<ConnectionInfo, MigrateError> {
    let info = if to.contains("://") {
        to.into_connection_info()
            .map_err(|e| MigrateError::InvalidArgs(format!("--to {to}: {e}")))?
    } else {
        let (host, port) = to
            .rsplit_once(':')
            .ok_or_else(|| MigrateError::InvalidArgs(format!("--to {to}: expected host:port")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| MigrateError::InvalidArgs(format!("--to {to}: invalid port")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(MigrateError::InvalidArgs(format!("--to {to}: expected host:port")));
        }
        ConnectionAddr::Tcp(host.to_string(), port)
            .into_connection_info()
            .map_err(|e| MigrateError::InvalidArgs(format!("--to {to}: {e}")))?
    };
    let mut redis_info = info.redis_settings().clone().set_skip_set_lib_name();
    if let Some(pw) = password {
        redis_info = redis_info.set_password(pw);
    }
    Ok(info.set_redis_settings(redis_info))
}

fn conn_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(120)))
}

/// Opens `n` connections and checks the first with PING.
async fn connect(info: &ConnectionInfo, n: usize) -> Result<Vec<MultiplexedConnection>, redis::RedisError> {
    let client = redis::Client::open(info.clone())?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(
            client
                .get_multiplexed_async_connection_with_config(&conn_config())
                .await?,
        );
    }
    if let Some(c) = conns.first_mut() {
        redis::cmd("PING").query_async::<Value>(c).await?;
    }
    Ok(conns)
}

/// The value of `field:` in an INFO reply.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

async fn server_info(conn: &mut MultiplexedConnection) -> String {
    redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(conn)
        .await
        .unwrap_or_default()
}

/// Paces batches to `--max-rate` keys a second.
struct Pacer {
    rate: u64,
    start: Instant,
    keys: u64,
}

impl Pacer {
    /// When a batch of `n` keys may be read.
    fn due(&mut self, n: usize) -> Option<tokio::time::Instant> {
        if self.rate == 0 {
            return None;
        }
        let due = self.start + Duration::from_secs_f64(self.keys as f64 / self.rate as f64);
        self.keys += n as u64;
        Some(due.into())
    }
}

/// The progress display: an indicatif bar on a terminal, a line every few seconds otherwise.
struct ProgressView {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl ProgressView {
    fn start(progress: Arc<Progress>, total: Option<u64>, base: (u64, u64), started: Instant) -> ProgressView {
        let tty = std::io::stderr().is_terminal();
        let bar = if !tty {
            ProgressBar::hidden()
        } else {
            let (bar, template) = match total {
                Some(n) => (
                    ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                    "{spinner} {elapsed_precise} [{bar:30}] {percent:>3}% {msg}",
                ),
                None => (
                    ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                    "{spinner} {elapsed_precise} {msg}",
                ),
            };
            bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
            bar
        };
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            let every = if tty {
                Duration::from_millis(200)
            } else {
                PROGRESS_LINE_EVERY
            };
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let line = progress.line(base, started);
                if tty {
                    shown.set_position(Progress::get(&progress.scanned));
                    shown.set_message(line);
                } else {
                    eprintln!("dynkv migrate: {line}");
                }
            }
        });
        ProgressView { bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// Stops the migration on SIGINT or SIGTERM (in-flight batches finish and are saved); a
/// second signal exits at once.
fn watch_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if n > 0 {
                eprintln!("dynkv migrate: second signal, exiting without saving the last batches");
                std::process::exit(130);
            }
            eprintln!("dynkv migrate: stopping after the batches in flight (signal again to exit now)");
            let _ = tx.send(true);
        }
    });
    rx
}

/// The state of a run: folds finished batches in SCAN order into the state file.
struct Run {
    state_path: PathBuf,
    state: State,
    skipped_file: Appender,
    failed_file: Appender,
    elapsed_before: u64,
    started: Instant,
}

impl Run {
    fn fold(&mut self, cursor_after: u64, out: BatchOutcome) -> Result<(), MigrateError> {
        let mut buf = Vec::new();
        for (ty, key) in &out.skipped {
            buf.extend_from_slice(format!("{ty}\t{}\n", escape_key(key)).as_bytes());
        }
        self.skipped_file.append(&buf)?;
        let mut buf = Vec::new();
        for (key, err) in &out.failed {
            let err = err.replace(['\n', '\r', '\t'], " ");
            buf.extend_from_slice(format!("{}\t{err}\n", escape_key(key)).as_bytes());
        }
        self.failed_file.append(&buf)?;
        let c = &mut self.state.counters;
        c.scanned += out.scanned;
        c.copied += out.copied;
        c.bytes += out.bytes;
        c.expired += out.expired;
        c.skipped += out.skipped.len() as u64;
        c.failed += out.failed.len() as u64;
        self.state.cursor = cursor_after;
        self.save()
    }

    fn save(&mut self) -> Result<(), MigrateError> {
        let run_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.state.elapsed_ms = self.elapsed_before.saturating_add(run_ms);
        save_state(&self.state_path, &self.state)
    }
}

/// Awaits the oldest batch in flight and folds it in.
async fn fold_front(
    run: &mut Run,
    inflight: &mut VecDeque<(u64, JoinHandle<Result<BatchOutcome, MigrateError>>)>,
) -> Result<(), MigrateError> {
    let Some((cursor_after, handle)) = inflight.pop_front() else {
        return Ok(());
    };
    let outcome = handle
        .await
        .map_err(|e| MigrateError::Target(format!("batch task failed: {e}")))??;
    run.fold(cursor_after, outcome)
}

/// Runs `dynkv migrate`: copies, prints the final report on stdout, and fails if any key
/// could not be written, if a server failed, or if a signal stopped it.
pub async fn run(args: MigrateArgs) -> Result<(), MigrateError> {
    if args.batch == 0 || args.batch > 1_000_000 {
        return Err(MigrateError::InvalidArgs("--batch must be 1..=1000000".into()));
    }
    if args.parallel == 0 || args.parallel > 1024 {
        return Err(MigrateError::InvalidArgs("--parallel must be 1..=1024".into()));
    }
    let src_info = args
        .from
        .as_str()
        .into_connection_info()
        .map_err(|e| MigrateError::InvalidArgs(format!("--from: {e}")))?;
    let src_info = src_info.clone().set_redis_settings(
        src_info
            .redis_settings()
            .clone()
            .set_lib_name("dynkv-migrate", env!("CARGO_PKG_VERSION")),
    );
    let from = format!("{}/{}", src_info.addr(), src_info.redis_settings().db());
    let dst_info = target_info(&args.to, args.to_password.as_deref())?;
    let to = dst_info.addr().to_string();

    let mut src = connect(&src_info, args.parallel + 1)
        .await
        .map_err(|cause| MigrateError::SourceUnreachable {
            addr: from.clone(),
            cause,
        })?;
    let dst = connect(&dst_info, args.parallel)
        .await
        .map_err(|cause| MigrateError::TargetUnreachable {
            addr: to.clone(),
            cause,
        })?;
    let mut scan_conn = src.pop().ok_or_else(|| MigrateError::Source("no connection".into()))?;
    let src_server = server_info(&mut scan_conn).await;
    let mut dst_probe = dst
        .first()
        .cloned()
        .ok_or_else(|| MigrateError::Target("no connection".into()))?;
    let dst_server = server_info(&mut dst_probe).await;
    if let (Some(a), Some(b)) = (info_field(&src_server, "run_id"), info_field(&dst_server, "run_id"))
        && a == b
    {
        return Err(MigrateError::SameServer(a));
    }
    if info_field(&dst_server, "dynkv_version").is_none() {
        eprintln!("dynkv migrate: warning: {to} does not look like dynkv (no dynkv_version in INFO)");
    }

    // Resume or start over.
    let state_path = args.state_file.clone();
    let skipped_path = sidecar(&state_path, ".skipped");
    let failed_path = sidecar(&state_path, ".failed");
    let saved = if args.fresh { None } else { load_state(&state_path)? };
    let saved = match saved {
        Some(s) if s.complete => {
            eprintln!(
                "dynkv migrate: {} records a completed migration; starting over",
                state_path.display()
            );
            None
        }
        Some(s) if s.from != from || s.pattern != args.pattern => {
            return Err(MigrateError::StateMismatch {
                path: state_path,
                saved_from: s.from,
                saved_match: s.pattern.unwrap_or_else(|| "*".into()),
            });
        }
        other => other,
    };
    let resumed_from = saved.as_ref().map(|s| s.cursor);
    let state = match saved {
        Some(s) => {
            eprintln!(
                "dynkv migrate: resuming from cursor {} ({} keys scanned so far)",
                s.cursor, s.counters.scanned
            );
            s
        }
        None => {
            remove_if_exists(&skipped_path)?;
            remove_if_exists(&failed_path)?;
            State {
                version: STATE_VERSION,
                from: from.clone(),
                pattern: args.pattern.clone(),
                cursor: 0,
                complete: false,
                counters: Counters::default(),
                elapsed_ms: 0,
            }
        }
    };
    let started = Instant::now();
    let mut run = Run {
        state_path: state_path.clone(),
        elapsed_before: state.elapsed_ms,
        state,
        skipped_file: Appender::new(skipped_path.clone()),
        failed_file: Appender::new(failed_path.clone()),
        started,
    };
    run.save()?;

    let total = if args.pattern.is_none() {
        redis::cmd("DBSIZE").query_async::<u64>(&mut scan_conn).await.ok()
    } else {
        None
    };
    let base = (run.state.counters.copied, run.state.counters.bytes);
    let progress = Arc::new(Progress::from_counters(&run.state.counters));
    let display = ProgressView::start(progress.clone(), total, base, started);
    let mut stop = watch_signals();
    let result = copy_all(&args, &mut run, &mut scan_conn, &src, &dst, &progress, &mut stop).await;
    display.finish();
    let interrupted = match result {
        Ok(interrupted) => interrupted,
        Err(e) => {
            eprintln!(
                "dynkv migrate: stopped; {} holds where to resume ({} keys scanned)",
                state_path.display(),
                run.state.counters.scanned
            );
            return Err(e);
        }
    };

    if !interrupted {
        run.state.complete = true;
        run.save()?;
    }
    // The report: skipped and failed keys from the files, deduplicated (SCAN may repeat keys).
    let skipped_sets = read_tabbed(&skipped_path)?;
    if !interrupted && !skipped_sets.is_empty() {
        let mut text = String::new();
        for (ty, keys) in &skipped_sets {
            for k in keys {
                text.push_str(&format!("{ty}\t{k}\n"));
            }
        }
        write_atomic(&skipped_path, text.as_bytes())?;
    }
    let skipped = skipped_sets
        .into_iter()
        .map(|(ty, keys)| {
            let n = keys.len() as u64;
            (ty, (n, keys.into_iter().take(REPORT_NAMES_PER_TYPE).collect()))
        })
        .collect();
    let failed_sets = read_tabbed(&failed_path)?;
    let failed_distinct = failed_sets.len() as u64;
    let failed_keys = failed_sets
        .into_iter()
        .take(REPORT_NAMES_PER_TYPE)
        .map(|(k, errs)| (k, errs.into_iter().next_back().unwrap_or_default()))
        .collect();
    let run_took = started.elapsed();
    let c = run.state.counters.clone();
    let report = Report {
        status: if interrupted {
            Status::Interrupted
        } else {
            Status::Complete
        },
        from,
        to,
        resumed_from,
        run: (c.copied - base.0, c.bytes - base.1, run_took),
        counters: c,
        skipped,
        failed_keys,
        failed_distinct,
        elapsed: Duration::from_millis(run.state.elapsed_ms),
        skipped_file: skipped_path,
        failed_file: failed_path,
    };
    print!("{report}");
    let _ = std::io::stdout().flush();
    if interrupted {
        return Err(MigrateError::Interrupted(state_path));
    }
    remove_if_exists(&state_path)?;
    if report.counters.failed > 0 {
        return Err(MigrateError::KeysFailed(report.counters.failed));
    }
    Ok(())
}

/// The SCAN loop; `Ok(true)` when a signal stopped it.
async fn copy_all(
    args: &MigrateArgs,
    run: &mut Run,
    scan_conn: &mut MultiplexedConnection,
    src: &[MultiplexedConnection],
    dst: &[MultiplexedConnection],
    progress: &Arc<Progress>,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, MigrateError> {
    let mut inflight = VecDeque::new();
    let mut pacer = Pacer {
        rate: args.max_rate,
        start: Instant::now(),
        keys: 0,
    };
    let mut cursor = run.state.cursor;
    let mut next_conn = 0usize;
    let mut interrupted = false;
    loop {
        if *stop.borrow() {
            interrupted = true;
            break;
        }
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor);
        if let Some(p) = &args.pattern {
            scan.arg("MATCH").arg(p);
        }
        scan.arg("COUNT").arg(args.batch);
        let (next, keys): (u64, Vec<Vec<u8>>) = scan
            .query_async(scan_conn)
            .await
            .map_err(|e| MigrateError::Source(format!("SCAN: {e}")))?;
        Progress::add(&progress.scanned, keys.len() as u64);
        if let Some(due) = pacer.due(keys.len()) {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
        while inflight.len() >= args.parallel {
            fold_front(run, &mut inflight).await?;
        }
        let i = next_conn % dst.len().min(src.len()).max(1);
        next_conn += 1;
        let (Some(s), Some(d)) = (src.get(i), dst.get(i)) else {
            return Err(MigrateError::Source("no connection".into()));
        };
        let task = tokio::spawn(copy_batch(s.clone(), d.clone(), keys, progress.clone()));
        inflight.push_back((next, task));
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    while !inflight.is_empty() {
        fold_front(run, &mut inflight).await?;
    }
    Ok(interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_key_is_reversible_text() {
        assert_eq!(escape_key(b"plain:key-1"), "plain:key-1");
        assert_eq!(escape_key(b"a\\b"), "a\\\\b");
        assert_eq!(escape_key(b"\x00\t\n\xff "), "\\x00\\x09\\x0a\\xff ");
    }

    #[test]
    fn classify_replies() {
        let s = |t: &str| Value::SimpleString(t.into());
        assert_eq!(
            classify(s("string"), Value::Int(-1), Value::BulkString(b"v".to_vec())),
            Read::Str {
                value: b"v".to_vec(),
                pttl: None
            }
        );
        assert_eq!(
            classify(s("string"), Value::Int(1500), Value::BulkString(vec![])),
            Read::Str {
                value: vec![],
                pttl: Some(1500)
            }
        );
        assert_eq!(classify(s("string"), Value::Int(-2), Value::Nil), Read::Gone);
        assert_eq!(classify(s("string"), Value::Int(10), Value::Nil), Read::Gone);
        assert_eq!(classify(s("none"), Value::Int(-2), Value::Nil), Read::Gone);
        assert_eq!(
            classify(s("hash"), Value::Int(-1), Value::Nil),
            Read::Other("hash".into())
        );
    }

    #[test]
    fn target_addresses() {
        let i = target_info("127.0.0.1:7000", Some("pw")).expect("valid");
        assert_eq!(i.addr().to_string(), "127.0.0.1:7000");
        assert_eq!(i.redis_settings().password(), Some("pw"));
        assert_eq!(
            target_info("[::1]:7000", None).expect("valid").addr().to_string(),
            "::1:7000"
        );
        assert!(target_info("localhost", None).is_err());
        assert!(target_info("localhost:x", None).is_err());
        assert_eq!(
            target_info("redis://h:9/", None).expect("valid").addr().to_string(),
            "h:9"
        );
    }

    #[test]
    fn state_round_trip_and_atomic_save() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.state");
        assert_eq!(load_state(&path).expect("missing is fine"), None);
        let st = State {
            version: STATE_VERSION,
            from: "h:1/0".into(),
            pattern: Some("user:*".into()),
            cursor: 42,
            complete: false,
            counters: Counters {
                scanned: 10,
                copied: 7,
                bytes: 70,
                expired: 1,
                skipped: 2,
                failed: 0,
            },
            elapsed_ms: 5,
        };
        save_state(&path, &st).expect("save");
        assert!(!sidecar(&path, ".tmp").exists());
        assert_eq!(load_state(&path).expect("load"), Some(st));
        std::fs::write(&path, b"not json").expect("write");
        assert!(matches!(load_state(&path), Err(MigrateError::StateCorrupt { .. })));
    }

    #[test]
    fn pacer_spreads_keys() {
        let start = Instant::now();
        let mut p = Pacer {
            rate: 100,
            start,
            keys: 0,
        };
        let first = p.due(50).expect("paced");
        let second = p.due(50).expect("paced");
        assert!(second.into_std() - first.into_std() >= Duration::from_millis(499));
        let mut off = Pacer {
            rate: 0,
            start,
            keys: 0,
        };
        assert!(off.due(50).is_none());
    }

    #[test]
    fn info_fields() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\n";
        assert_eq!(info_field(info, "run_id").as_deref(), Some("abc"));
        assert_eq!(info_field(info, "dynkv_version"), None);
    }
}
