//! The LMDB store: the only module that imports `heed`. Must not know about commands,
//! replicas or the network: it reads and writes sibling sets under user keys.
//!
//! Reads run on the caller's thread in short read transactions. Writes go to a writer
//! ([`writer`]) that batches concurrent writes into one transaction (group commit) and
//! acknowledges each only after its transaction committed under the fsync setting.
//!
//! With `fsync = always`, LMDB commits without flushing, and the write-ahead log ([`wal`])
//! makes each commit durable with one flush instead of LMDB's two; LMDB's file is flushed
//! at the log's checkpoints. Every commit waits for the disk, so writes should share
//! commits:
//! - With several client threads, one writer on a thread of its own commits them all.
//!   It hands the acknowledgements of a client thread's writes to that thread's
//!   acknowledger task, which wakes their connections there: waking a task of another
//!   thread costs a system call, so a commit then wakes each client thread once instead
//!   of each write's connection.
//! - With one client thread, that thread commits its own writes, as Redis's event loop
//!   does with `appendfsync always`: its loop stops during the flush, the requests that
//!   come meanwhile are read together after it and share the next commit, and no write
//!   crosses threads. A writer thread would leave the loop waiting for the network
//!   during each flush, waking for every few requests, and hand every write over twice;
//!   on two cores that cost about a fifth of the throughput of SETs from 50 clients. Reads
//!   on that thread wait for a flush in progress, as they do in Redis.
//!
//! Otherwise (`fsync = everysec | no`) each client thread (a single-threaded runtime, see `resp::listener`) gets a writer task of its own for the
//! writes submitted there, so a write never crosses threads; their transactions take
//! turns on one lock (LMDB has one write transaction at a time anyway). Writes from
//! elsewhere (background tasks, internode requests) go to the node-wide writer.

mod keys;
mod queue;
mod record;
mod snapshot;
pub mod tree;
mod wal;
mod writer;

use std::cell::RefCell;
use std::future::Future;
use std::ops::Bound;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use heed::types::Bytes as RawBytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, FlagSetMode, WithTls};
use tokio::sync::oneshot;

use crate::config::Fsync;
use crate::error::StoreError;
use crate::ring::PARTITIONS;
use crate::version::{Sibling, SiblingSet};

pub use keys::INLINE_MAX;
pub use snapshot::ReadRun;
pub use writer::Change;

use writer::WriteOp;

/// Metadata key of the tree rebuild's progress: the tree format, then the first partition
/// whose tree is not yet rebuilt (u32, big endian; `PARTITIONS` when done).
const TREE_PROGRESS: &[u8] = b"tree-progress";
/// Metadata key of the newest FLUSHALL's time (ms since the Unix epoch, u64 big endian):
/// siblings written before it are never stored again (see [`Store::clear`]).
const FLUSHED_BEFORE: &[u8] = b"flushed-before";
/// Metadata key present while the stored anti-entropy trees are behind their records
/// (tree changes pending in memory, see [`tree::Pending`]): a store opened with it
/// rebuilds its trees.
const TREES_BEHIND: &[u8] = b"trees-behind";
/// A tree rebuild step stops adding partitions past this many records...
const REBUILD_RECORDS: usize = 4096;
/// ... or this many partitions.
const REBUILD_PARTITIONS: u16 = 1024;

/// Counters the store keeps for INFO and metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Committed write transactions (striped: every thread's writer adds to it).
    pub commits: crate::striped::Counter,
    /// Writes applied (one per key change; striped, as it is added to per write).
    pub writes: crate::striped::Counter,
    /// Largest number of operations seen in one group commit.
    pub max_batch: AtomicU64,
    /// Times the LMDB map was grown.
    pub map_resizes: AtomicU64,
    /// Failed commits (disk full, I/O errors).
    pub failed_commits: AtomicU64,
    /// Records removed by the expiry and tombstone sweep.
    pub reaped: AtomicU64,
}

/// An LMDB database of raw byte keys and values.
pub(crate) type Db = Database<RawBytes, RawBytes>;

/// Locks a mutex, taking it over from a thread that panicked holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Inner {
    env: Env<WithTls>,
    /// The redo log (`fsync = always`): commits are made durable by it (see [`wal`]).
    wal: Option<Mutex<wal::Wal>>,
    /// The data directory's lock (see [`wal::lock_dir`]), held while the store is open.
    _dir_lock: std::fs::File,
    data: Database<RawBytes, RawBytes>,
    meta: Database<RawBytes, RawBytes>,
    /// Hints: which records this node holds for owners that were down (`lmdb key | owner`).
    hints: Database<RawBytes, RawBytes>,
    /// Anti-entropy trees, one per partition (see [`tree`]).
    trees: Database<RawBytes, RawBytes>,
    /// Partitions below this one have a tree that matches their records; the rest wait
    /// for the background rebuild ([`PARTITIONS`] when every tree is sound).
    tree_ready_below: AtomicU32,
    /// Tree changes committed but not yet stored in `trees`.
    pending: Mutex<tree::Pending>,
    /// The newest FLUSHALL's time, as committed (see [`Store::clear`]).
    flushed_before: AtomicU64,
    /// Shared by read transactions, taken exclusively to resize the map (LMDB requires
    /// that no transaction be open in the process during a resize). Leaked (a kilobyte
    /// per store opened) so that a run of reads can keep its share in thread-local
    /// storage (see [`snapshot`]).
    gate: &'static crate::striped::Gate,
    /// Held by a writer for a whole batch, map growth included, and by every other write
    /// transaction: a resize must never meet another thread's open write transaction.
    write_lock: WriteTurn,
    map_size: AtomicUsize,
    stats: StoreStats,
    closed: AtomicBool,
    /// Distinguishes stores in the per-thread writer table (addresses can be reused).
    id: u64,
    /// Whether client threads get writers of their own (not with `fsync = always` and
    /// several client threads, where they get acknowledgers instead).
    local_writers: bool,
    /// Every per-thread writer's queue, so `close` can stop them all.
    locals: Mutex<Vec<queue::Sender<WriteOp>>>,
}

/// The write lock. Writer tasks queue for it first-come first-served without blocking
/// their thread (which meanwhile serves its other connections); a writer that just
/// committed queues behind the ones already waiting, so no thread's writes wait for
/// several rounds of another's. The writer thread (`fsync = always`) and the rare
/// metadata writes take the lock itself, blocking.
#[derive(Default)]
pub(crate) struct WriteTurn {
    lock: Mutex<()>,
    queue: tokio::sync::Mutex<()>,
}

/// A held [`WriteTurn`].
pub(crate) struct Turn<'a> {
    // Fields drop in order: the lock, then the place in the queue (waking the next).
    _guard: std::sync::MutexGuard<'a, ()>,
    _queued: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl WriteTurn {
    /// Waits for the lock by blocking this thread (writer thread, rare metadata writes).
    pub(crate) fn blocking(&self) -> Turn<'_> {
        Turn {
            _guard: self.lock.lock().unwrap_or_else(|p| p.into_inner()),
            _queued: None,
        }
    }

    /// Waits for the lock as a task, in arrival order among tasks.
    pub(crate) async fn turn(&self) -> Turn<'_> {
        let queued = self.queue.lock().await;
        Turn {
            // Free unless a blocking holder (a metadata write) has it: a short wait.
            _guard: self.lock.lock().unwrap_or_else(|p| p.into_inner()),
            _queued: Some(queued),
        }
    }
}

thread_local! {
    /// This thread's writers, by store id (see the module docs).
    static LOCAL_WRITERS: RefCell<Vec<(u64, queue::Sender<WriteOp>)>> = const { RefCell::new(Vec::new()) };
    /// This thread's acknowledgers, by store id (see the module docs).
    static ACKERS: RefCell<Vec<(u64, AckSink)>> = const { RefCell::new(Vec::new()) };
}

/// The queue of a client thread's acknowledger: writes finished by the writer thread, with
/// how they ended.
type AckSink = Arc<queue::Sender<(Box<dyn writer::Job>, Result<(), StoreError>)>>;

/// Acknowledgements queued for one acknowledger at most; beyond, the writer answers them
/// itself.
const ACK_QUEUE: usize = 4096;

/// Queue depth of each writer.
const WRITER_QUEUE: usize = 4096;

/// A handle on the node's LMDB environment; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    tx: queue::Sender<WriteOp>,
    threads: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

/// One record met by a scan.
#[derive(Debug, Clone)]
pub struct ScanItem {
    /// The user key.
    pub key: Bytes,
    /// Its stored sibling set.
    pub set: SiblingSet,
}

/// Figures about the environment for INFO.
#[derive(Debug, Clone, Copy)]
pub struct EnvFigures {
    /// Current map size in bytes.
    pub map_size: usize,
    /// Bytes of the map in use (last page number times page size).
    pub used_bytes: usize,
    /// Records in the data database (live or not).
    pub records: u64,
}

impl Store {
    /// Opens (creating if needed) the environment under `dir`, starts the writer thread
    /// and, for `fsync = everysec`, the once-a-second syncer. It takes the directory's
    /// lock first (a second process is refused), and after an unclean stop with a
    /// write-ahead log it restores the log's checkpoint and redoes the logged commits.
    /// `client_threads` is the number of client threads: with `fsync = always` and one,
    /// that thread commits its own writes (see the module docs).
    pub fn open(dir: &Path, fsync: Fsync, initial_map_size: usize, client_threads: usize) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Lmdb(heed::Error::Io(e)))?;
        let dir_lock = wal::lock_dir(dir)?;
        // After a crash with a log, LMDB's file is first taken back to the log's checkpoint.
        let restored = wal::restore(dir)?;
        let page = 4096usize;
        let mut map_size = initial_map_size.div_ceil(page) * page;
        // An existing environment may already be larger than the configured start, and
        // redoing a log needs room beyond it.
        if let Ok(meta) = std::fs::metadata(dir.join("data.mdb")) {
            let redo = restored.as_ref().map_or(0, |r| 4 * r.bytes + (16 << 20));
            while (map_size as u64) < meta.len() + redo {
                map_size *= 2;
            }
        }
        let mut opts = EnvOpenOptions::new();
        opts.map_size(map_size).max_dbs(8).max_readers(4096);
        // Opened with LMDB's own flushes, so the set-up below (and the redo of a log) is
        // durable by itself; NO_SYNC is set once it is committed. Until a new checkpoint
        // replaces the restored one, that is the only commit: LMDB never reuses the pages
        // of the last committed state, so a crash meanwhile finds the restored state whole.
        // SAFETY: the environment is opened once per process (the node owns its dir).
        let env = unsafe { opts.open(dir)? };
        let mut wtxn = env.write_txn()?;
        let data: Db = env.create_database(&mut wtxn, Some("data"))?;
        let meta: Db = env.create_database(&mut wtxn, Some("meta"))?;
        let hints: Db = env.create_database(&mut wtxn, Some("hints"))?;
        let trees: Db = env.create_database(&mut wtxn, Some("trees"))?;
        if let Some(r) = &restored {
            let dbs = writer::Dbs {
                data,
                meta,
                hints,
                trees,
            };
            wtxn = writer::redo(&dbs, wtxn, &r.commits)?;
        }
        // Trees built by this release are sound; an empty store has sound (empty) trees;
        // otherwise (a store from before trees, or of another tree format) a background
        // rebuild resumes where it stopped.
        if meta.get(&wtxn, TREES_BEHIND)?.is_some() {
            // The node stopped with tree changes only in memory: rebuild every tree.
            tracing::warn!("anti-entropy trees are behind their records after an unclean stop; rebuilding them");
            meta.delete(&mut wtxn, TREES_BEHIND)?;
            meta.delete(&mut wtxn, TREE_PROGRESS)?;
        }
        let ready = match meta.get(&wtxn, TREE_PROGRESS)? {
            Some([tree::TREE_FORMAT, below @ ..]) => below
                .try_into()
                .map(u32::from_be_bytes)
                .unwrap_or(0)
                .min(u32::from(PARTITIONS)),
            _ if data.len(&wtxn)? == 0 => {
                trees.clear(&mut wtxn)?;
                let mut progress = vec![tree::TREE_FORMAT];
                progress.extend_from_slice(&u32::from(PARTITIONS).to_be_bytes());
                meta.put(&mut wtxn, TREE_PROGRESS, &progress)?;
                u32::from(PARTITIONS)
            }
            _ => 0,
        };
        let flushed_before = match meta.get(&wtxn, FLUSHED_BEFORE)? {
            Some(v) => v.try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        };
        wtxn.commit()?;
        // SAFETY: no other thread sets flags. With `fsync = always` the log makes each
        // commit durable before it is acknowledged, and a checkpoint's state is restored
        // after a crash (see [`wal`]); otherwise NO_SYNC only weakens durability, as the
        // `fsync` setting asks.
        unsafe { env.set_flags(EnvFlags::NO_SYNC, FlagSetMode::Enable)? };
        let wal = match fsync {
            Fsync::Always => Some(Mutex::new(wal::Wal::start(dir, &env, restored.as_ref())?)),
            _ => {
                if let Some(r) = &restored {
                    wal::remove(dir, r)?;
                }
                None
            }
        };
        let inner = Arc::new(Inner {
            env,
            wal,
            _dir_lock: dir_lock,
            data,
            meta,
            hints,
            trees,
            tree_ready_below: AtomicU32::new(ready),
            pending: Mutex::new(tree::Pending::default()),
            flushed_before: AtomicU64::new(flushed_before),
            gate: Box::leak(Box::default()),
            write_lock: WriteTurn::default(),
            map_size: AtomicUsize::new(map_size),
            stats: StoreStats::default(),
            closed: AtomicBool::new(false),
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(1);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
            local_writers: fsync != Fsync::Always || client_threads <= 1,
            locals: Mutex::new(Vec::new()),
        });
        let (tx, rx) = queue::channel(WRITER_QUEUE);
        let mut threads = Vec::new();
        let w = inner.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if fsync != Fsync::Always => {
                rt.spawn(writer::run_task(w, rx));
            }
            _ => threads.push(
                std::thread::Builder::new()
                    .name("dynkv-writer".into())
                    .spawn(move || writer::run_thread(w, rx))
                    .map_err(|e| StoreError::Lmdb(heed::Error::Io(e)))?,
            ),
        }
        if fsync == Fsync::Everysec {
            let s = inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("dynkv-syncer".into())
                    .spawn(move || {
                        let mut ticks = 0u32;
                        while !s.closed.load(Ordering::Acquire) {
                            // Sync about once a second; wake often so close is not delayed.
                            std::thread::sleep(Duration::from_millis(100));
                            ticks += 1;
                            if ticks % 10 == 0 {
                                if let Err(e) = s.env.force_sync() {
                                    tracing::error!("background fsync failed: {e}");
                                }
                            }
                        }
                    })
                    .map_err(|e| StoreError::Lmdb(heed::Error::Io(e)))?,
            );
        }
        Ok(Store {
            inner,
            tx,
            threads: Arc::new(std::sync::Mutex::new(threads)),
        })
    }

    /// This node's persistent id: read from the metadata database, or, the first time the
    /// data directory is used, `wanted` (a replacement taking over a node's place) or
    /// drawn at random, and stored durably. A directory that already has another id than
    /// `wanted` is refused.
    pub fn node_id(&self, wanted: Option<u64>) -> Result<u64, StoreError> {
        const KEY: &[u8] = b"node-id";
        if let Some(v) = self.meta_get(KEY)? {
            let bytes: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("node-id".into()))?;
            let id = u64::from_be_bytes(bytes);
            if let Some(w) = wanted.filter(|w| *w != id) {
                return Err(StoreError::Failed(format!(
                    "the data directory belongs to node {id:016x}, not {w:016x}"
                )));
            }
            return Ok(id);
        }
        let id = wanted.unwrap_or_else(|| {
            loop {
                let id: u64 = rand::random();
                if id != 0 {
                    break id;
                }
            }
        });
        self.meta_put(KEY, &id.to_be_bytes())?;
        Ok(id)
    }

    /// A value of the node metadata database (node id, member list, ...).
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|rtxn| Ok(self.inner.meta.get(rtxn, key)?.map(|v| v.to_vec())))
    }

    /// Stores a metadata value durably, in its own transaction (metadata changes are rare;
    /// LMDB serializes this transaction with the writer's).
    pub fn meta_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let _turn = self.inner.write_lock.blocking();
        let mut wtxn = self.inner.env.write_txn()?;
        self.inner.meta.put(&mut wtxn, key, value)?;
        wtxn.commit()?;
        self.inner.sync()
    }

    /// The store's counters.
    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// Starts a run of reads on this thread that share one read transaction (see
    /// [`ReadRun`]); the caller must drop it before yielding to other tasks.
    pub fn read_run(&self) -> ReadRun {
        ReadRun::start(self.inner.id)
    }

    /// The time a read judges expiries by (ms since the Unix epoch): one clock reading
    /// per run of reads (see [`ReadRun`]), the clock now outside a run.
    pub fn read_time_ms(&self) -> u64 {
        snapshot::time_ms(self.inner.id)
    }

    fn read<T>(&self, f: impl FnOnce(&heed::RoTxn<'_, WithTls>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        snapshot::read(&self.inner, f)
    }

    /// Runs `f` in a read transaction begun now, never a run's older one: readers of the
    /// trees must see the commits of the pending changes they hold.
    fn read_fresh<T>(
        &self,
        f: impl FnOnce(&heed::RoTxn<'_, WithTls>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _gate = self.inner.gate.read();
        let rtxn = self.inner.env.read_txn()?;
        f(&rtxn)
    }

    /// The stored sibling set of `key`, if any (expired or dead sets included: callers
    /// decide liveness with the time they read at).
    pub fn get(&self, key: &[u8]) -> Result<Option<SiblingSet>, StoreError> {
        let lkey = keys::StackKey::new(key);
        self.read(|rtxn| match self.inner.data.get(rtxn, lkey.as_slice())? {
            Some(bytes) => Ok(Some(record::decode(bytes)?.1)),
            None => Ok(None),
        })
    }

    /// The live winner of `key` at `now_ms` and how many siblings are live, decoding only
    /// what a plain read needs; `None` when the key has no record.
    pub fn get_winner(&self, key: &[u8], now_ms: u64) -> Result<Option<(Option<Sibling>, usize)>, StoreError> {
        let lkey = keys::StackKey::new(key);
        self.read(|rtxn| match self.inner.data.get(rtxn, lkey.as_slice())? {
            Some(bytes) => Ok(Some(record::skim(bytes, now_ms)?)),
            None => Ok(None),
        })
    }

    /// Visits up to `budget` records from scan position `cursor` (0 = the start) up to
    /// position `end` (exclusive; 0 = the end of the key space), in key order, and returns
    /// them with the position to resume from: `end` when the range is done. A resume
    /// position never splits the records of one position, so no record present for a
    /// whole iteration is missed and none is returned twice by one pass.
    pub fn scan(&self, cursor: u64, end: u64, budget: usize) -> Result<(u64, Vec<ScanItem>), StoreError> {
        let start = keys::position_start(cursor);
        self.read(|rtxn| {
            let mut out = Vec::new();
            let mut last_pos = None;
            for entry in self
                .inner
                .data
                .range(rtxn, &(Bound::Included(start.as_slice()), Bound::Unbounded))?
            {
                let (lkey, bytes) = entry?;
                let pos = keys::position(lkey);
                if end != 0 && pos >= end {
                    return Ok((end, out));
                }
                if out.len() >= budget.max(1) && last_pos != Some(pos) {
                    return Ok((pos, out));
                }
                last_pos = Some(pos);
                out.push(item(lkey, bytes)?);
            }
            Ok((end, out))
        })
    }

    /// Up to `limit` hints after position `after` (exclusive; empty = from the start):
    /// each the owner it is held for, the user key, and the record's current set (`None`
    /// when the record is gone). Returns them with the position to continue from.
    pub fn hints(&self, after: &[u8], limit: usize) -> Result<(Vec<Hint>, Vec<u8>), StoreError> {
        self.read(|rtxn| {
            let mut out = Vec::new();
            let mut last = after.to_vec();
            let lower = if after.is_empty() {
                Bound::Unbounded
            } else {
                Bound::Excluded(after)
            };
            for entry in self.inner.hints.range(rtxn, &(lower, Bound::Unbounded))? {
                let (hk, _) = entry?;
                last = hk.to_vec();
                let Some((lkey, owner)) = split_hint_key(hk) else {
                    continue;
                };
                let (key, set) = match self.inner.data.get(rtxn, lkey)? {
                    Some(bytes) => {
                        let it = item(lkey, bytes)?;
                        (it.key, Some(it.set))
                    }
                    None => (
                        keys::inline_key(lkey).map(Bytes::copy_from_slice).unwrap_or_default(),
                        None,
                    ),
                };
                out.push(Hint { owner, key, set });
                if out.len() >= limit {
                    break;
                }
            }
            Ok((out, last))
        })
    }

    /// Hints pending, per owner.
    pub fn hint_counts(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        self.read(|rtxn| {
            let mut counts: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
            for entry in self.inner.hints.iter(rtxn)? {
                let (hk, _) = entry?;
                if let Some((_, owner)) = split_hint_key(hk) {
                    *counts.entry(owner).or_default() += 1;
                }
            }
            Ok(counts.into_iter().collect())
        })
    }

    /// Figures about the environment for INFO.
    pub fn figures(&self) -> Result<EnvFigures, StoreError> {
        let info = self.inner.env.info();
        let records = self.read(|rtxn| Ok(self.inner.data.len(rtxn)?))?;
        Ok(EnvFigures {
            map_size: info.map_size,
            used_bytes: (info.last_page_number + 1) * 4096,
            records,
        })
    }

    /// Queues `f` to run over the current sets of `keys` inside the writer's
    /// transaction, storing the changes it returns (one per key, in order). Returns once
    /// the operation is queued, with a future that resolves to `f`'s result after the
    /// transaction committed under the fsync setting. Operations apply in the order they
    /// were queued, and each read-and-write is atomic against every other write here, so a
    /// caller may queue several before awaiting any (pipelining into one group commit).
    /// `f` also gets the group commit's time in µs since the Unix epoch (one clock
    /// reading per batch, not per write).
    pub async fn submit_many<T, F>(&self, keys: Vec<Bytes>, f: F) -> Result<Committed<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Vec<Option<SiblingSet>>, u64) -> (Vec<Change>, T) + Send + 'static,
    {
        let (done, wait) = oneshot::channel();
        let job = Submitted::new(Many(f), done, self.acker());
        self.send(WriteOp::Update { keys, job }).await?;
        Ok(Committed { wait })
    }

    /// [`Store::submit_many`] for one key. `f` is lent the key's set: it may take it only
    /// when the change it returns stores or removes the record (`Put`, `PutHinted`,
    /// `Remove`), and must leave it otherwise; a write that breaks this fails its batch.
    pub async fn submit_one<T, F>(&self, key: Bytes, f: F) -> Result<Committed<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Option<SiblingSet>, u64) -> (Change, T) + Send + 'static,
    {
        let (done, wait) = oneshot::channel();
        let job = Submitted::new(One(f), done, self.acker());
        self.send(WriteOp::UpdateOne { key, job }).await?;
        Ok(Committed { wait })
    }

    /// [`Store::submit_many`], then waits for the commit.
    pub async fn update_many<T, F>(&self, keys: Vec<Bytes>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Vec<Option<SiblingSet>>) -> (Vec<Change>, T) + Send + 'static,
    {
        self.submit_many(keys, move |sets, _| f(sets)).await?.await
    }

    /// [`Store::update_many`] for one key.
    pub async fn update<T, F>(&self, key: Bytes, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Option<SiblingSet>) -> (Change, T) + Send + 'static,
    {
        self.submit_one(key, move |set, _| f(set.clone())).await?.await
    }

    /// Whether every partition's anti-entropy tree matches its records (false while a
    /// rebuild is under way).
    pub fn trees_ready(&self) -> bool {
        self.inner.tree_ready_below.load(Ordering::Acquire) >= u32::from(PARTITIONS)
    }

    /// Partitions whose tree still waits for the rebuild.
    pub fn trees_pending(&self) -> u32 {
        u32::from(PARTITIONS).saturating_sub(self.inner.tree_ready_below.load(Ordering::Acquire))
    }

    /// Rebuilds the trees of the next partitions that need it, in one write transaction
    /// queued like any write, and bounded: up to [`REBUILD_RECORDS`] records or
    /// [`REBUILD_PARTITIONS`] partitions (at least one). Returns false once every tree is
    /// sound.
    pub async fn rebuild_tree_step(&self) -> Result<bool, StoreError> {
        let below = self.inner.tree_ready_below.load(Ordering::Acquire);
        if below >= u32::from(PARTITIONS) {
            return Ok(false);
        }
        let from = below as u16;
        // Size the step with a read-only count of the records ahead (keys only).
        let to = self.read(|rtxn| {
            let mut records = 0usize;
            let mut to = from;
            while to < PARTITIONS && (to == from || records < REBUILD_RECORDS) && to - from < REBUILD_PARTITIONS {
                records += self.inner.data.prefix_iter(rtxn, &to.to_be_bytes())?.count();
                to += 1;
            }
            Ok(to)
        })?;
        let (done, wait) = oneshot::channel();
        self.tx
            .send(WriteOp::RebuildTree { from, to, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)??;
        self.inner.tree_ready_below.store(u32::from(to), Ordering::Release);
        if to == PARTITIONS {
            tracing::info!("anti-entropy trees rebuilt");
        }
        Ok(true)
    }

    /// Stores the pending anti-entropy tree changes if they are due. A writer stores them
    /// with its next commit anyway; this is for a node that has stopped writing, so that a
    /// crash later does not cost a rebuild of every tree.
    pub async fn store_due_trees(&self) -> Result<(), StoreError> {
        let due = {
            let pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.flagged && pending.due()
        };
        if !due {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(WriteOp::StoreTrees { done })
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Every partition's non-zero tree root, in partition order.
    pub fn tree_roots(&self) -> Result<Vec<(u16, u128)>, StoreError> {
        let pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        self.read_fresh(|rtxn| Ok(tree::roots(&self.inner.trees, rtxn, &pending)?))
    }

    /// The non-zero tree leaves of these partitions: (partition, leaf, hash).
    pub fn tree_leaves(&self, partitions: &[u16]) -> Result<Vec<(u16, u8, u128)>, StoreError> {
        let pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        self.read_fresh(|rtxn| {
            let mut out = Vec::new();
            for &p in partitions {
                out.extend(
                    tree::leaves(&self.inner.trees, rtxn, &pending, p)?
                        .into_iter()
                        .map(|(l, h)| (p, l, h)),
                );
            }
            Ok(out)
        })
    }

    /// The records of these tree leaves: each LMDB key with its tree contribution.
    pub fn leaf_records(&self, leaves: &[(u16, u8)]) -> Result<Vec<(Vec<u8>, u128)>, StoreError> {
        self.read(|rtxn| {
            let mut out = Vec::new();
            for &(p, l) in leaves {
                out.extend(tree::leaf_records(&self.inner.data, rtxn, p, l)?);
            }
            Ok(out)
        })
    }

    /// The records stored under these LMDB keys (as [`Store::leaf_records`] names them).
    pub fn records_at(&self, lmdb_keys: &[Vec<u8>]) -> Result<Vec<Option<ScanItem>>, StoreError> {
        self.read(|rtxn| {
            let mut out = Vec::with_capacity(lmdb_keys.len());
            for lk in lmdb_keys {
                out.push(match self.inner.data.get(rtxn, lk)? {
                    Some(bytes) => Some(item(lk, bytes)?),
                    None => None,
                });
            }
            Ok(out)
        })
    }

    /// For each key: the tree contribution of its stored record (`None` when it has none),
    /// and whether this node holds a hint for it (for any owner).
    pub fn hashes_and_hints(&self, keys: &[Bytes]) -> Result<Vec<(Option<u128>, bool)>, StoreError> {
        self.read(|rtxn| {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let lk = keys::encode(key);
                let hash = self.inner.data.get(rtxn, &lk)?.map(|b| tree::record_hash(&lk, b));
                let mut hinted = false;
                for entry in self.inner.hints.prefix_iter(rtxn, &lk)? {
                    let (hk, _) = entry?;
                    if hk.len() == lk.len() + 8 {
                        hinted = true;
                        break;
                    }
                }
                out.push((hash, hinted));
            }
            Ok(out)
        })
    }

    /// Removes every record, durably.
    ///
    /// `before_ms` is the FLUSHALL's time: from then on no sibling written before it is
    /// stored (a late copy of one is dropped on arrival), and writes made here are dated
    /// no earlier than it. A cluster gives every node the same time, so a write still
    /// replicating, a repair or an anti-entropy push from a node not flushed yet cannot
    /// bring a flushed key back. The time is kept across restarts.
    pub async fn clear(&self, before_ms: u64) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        // Through this thread's writer like the caller's other writes, so a pipelined
        // FLUSHALL and the writes after it commit in the order they were sent.
        self.send(WriteOp::Clear { before_ms, done }).await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a write operation on this thread's writer (see the module docs).
    async fn send(&self, op: WriteOp) -> Result<(), StoreError> {
        // The usual case, without cloning the queue's handle: this thread's writer exists
        // and has room.
        let id = self.inner.id;
        let op = LOCAL_WRITERS.with(|w| match w.borrow().iter().find(|(i, _)| *i == id) {
            Some((_, tx)) if !self.inner.closed.load(Ordering::Acquire) => match tx.try_send(op) {
                Ok(()) => None,
                Err(queue::TrySendError::Full(op) | queue::TrySendError::Closed(op)) => Some(op),
            },
            _ => Some(op),
        });
        let Some(op) = op else {
            return Ok(());
        };
        let op = match self.local_writer() {
            Some(local) => match local.send(op).await {
                Ok(()) => return Ok(()),
                Err(queue::SendError(op)) => {
                    // Its runtime is gone (a test's, say): forget it, use the node-wide one.
                    LOCAL_WRITERS.with(|w| w.borrow_mut().retain(|(id, _)| *id != self.inner.id));
                    op
                }
            },
            None => op,
        };
        self.tx.send(op).await.map_err(|_| StoreError::Closed)
    }

    /// This thread's writer, started on first use when the thread runs a single-threaded
    /// runtime (a client thread); `None` means the node-wide writer.
    fn local_writer(&self) -> Option<queue::Sender<WriteOp>> {
        let id = self.inner.id;
        if !self.inner.local_writers {
            return None;
        }
        if self.inner.closed.load(Ordering::Acquire) {
            LOCAL_WRITERS.with(|w| w.borrow_mut().retain(|(i, _)| *i != id));
            return None;
        }
        if let Some(tx) = LOCAL_WRITERS.with(|w| w.borrow().iter().find(|(i, _)| *i == id).map(|(_, tx)| tx.clone())) {
            return Some(tx);
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        if rt.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return None;
        }
        let (tx, rx) = queue::channel(WRITER_QUEUE);
        let mut locals = self.inner.locals.lock().unwrap_or_else(|p| p.into_inner());
        if self.inner.closed.load(Ordering::Acquire) {
            return None;
        }
        locals.push(tx.clone());
        drop(locals);
        rt.spawn(writer::run_task(self.inner.clone(), rx));
        LOCAL_WRITERS.with(|w| w.borrow_mut().push((id, tx.clone())));
        Some(tx)
    }

    /// This thread's acknowledger, started on first use when the writer runs on a thread
    /// of its own and this thread runs a single-threaded runtime (a client thread).
    fn acker(&self) -> Option<AckSink> {
        if self.inner.local_writers {
            return None;
        }
        let id = self.inner.id;
        if self.inner.closed.load(Ordering::Acquire) {
            ACKERS.with(|a| a.borrow_mut().retain(|(i, _)| *i != id));
            return None;
        }
        let found = ACKERS.with(|a| a.borrow().iter().find(|(i, _)| *i == id).map(|(_, s)| s.clone()));
        match found {
            Some(sink) if !sink.is_closed() => return Some(sink),
            // Its runtime is gone (a test's, say): start one on the current runtime.
            Some(_) => ACKERS.with(|a| a.borrow_mut().retain(|(i, _)| *i != id)),
            None => {}
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        if rt.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return None;
        }
        let (tx, rx) = queue::channel(ACK_QUEUE);
        rt.spawn(writer::run_acker(rx));
        let sink = Arc::new(tx);
        ACKERS.with(|a| a.borrow_mut().push((id, sink.clone())));
        Some(sink)
    }

    /// Finishes queued writes, stops the writer, and syncs the environment to disk.
    /// Later writes fail with [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        let locals = {
            let mut l = self.inner.locals.lock().unwrap_or_else(|p| p.into_inner());
            self.inner.closed.store(true, Ordering::Release);
            std::mem::take(&mut *l)
        };
        for tx in locals.iter().chain(std::iter::once(&self.tx)) {
            let (done, wait) = oneshot::channel();
            if tx.send(WriteOp::Close { done }).await.is_ok() {
                let _ = wait.await;
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let _turn = self.inner.write_lock.blocking();
        self.inner.sync()
    }
}

impl Inner {
    /// Makes every commit so far durable: a checkpoint of the log, or a flush of LMDB.
    /// The caller holds the write lock.
    fn sync(&self) -> Result<(), StoreError> {
        match &self.wal {
            Some(wal) => lock(wal).checkpoint(&self.env, || Ok(())),
            None => Ok(self.env.force_sync()?),
        }
    }
}

/// A record this node holds for an owner that was down when it was written.
#[derive(Debug, Clone)]
pub struct Hint {
    /// The node the record belongs to.
    pub owner: u64,
    /// The user key (empty if the record is gone and its key was a digest).
    pub key: Bytes,
    /// The record's current set, or `None` if it is gone.
    pub set: Option<SiblingSet>,
}

fn split_hint_key(hk: &[u8]) -> Option<(&[u8], u64)> {
    let at = hk.len().checked_sub(8)?;
    let (lkey, owner) = hk.split_at(at);
    Some((lkey, u64::from_be_bytes(owner.try_into().ok()?)))
}

/// A queued write: a future that resolves to the write's result once its transaction is
/// committed under the fsync setting.
pub struct Committed<T> {
    wait: oneshot::Receiver<Result<T, StoreError>>,
}

impl<T> Future for Committed<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.wait)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}

/// The [`writer::Job`] of [`Store::submit_many`] (computation [`Many`]) and of
/// [`Store::submit_one`] ([`One`]): the caller's computation, its result once computed,
/// and the caller's end, which gets the result after the commit.
struct Submitted<C, T> {
    f: Option<C>,
    result: Option<T>,
    done: oneshot::Sender<Result<T, StoreError>>,
    /// The submitting thread's acknowledger, when the writer runs on another thread.
    route: Option<AckSink>,
}

/// A computation over several keys' sets.
struct Many<F>(F);
/// A computation over one key's set, lent (see [`Store::submit_one`]).
struct One<F>(F);

impl<C, T> Submitted<C, T> {
    fn new(f: C, done: oneshot::Sender<Result<T, StoreError>>, route: Option<AckSink>) -> Box<Submitted<C, T>> {
        Box::new(Submitted {
            f: Some(f),
            result: None,
            done,
            route,
        })
    }

    /// Runs the computation (once; `None` after that) and keeps its result for `answer`.
    fn compute<R>(&mut self, run: impl FnOnce(C) -> (R, T)) -> Option<R> {
        let (out, result) = run(self.f.take()?);
        self.result = Some(result);
        Some(out)
    }

    /// Tells the caller how its write ended.
    fn answer(self, outcome: Result<(), StoreError>) {
        let result = self.result;
        let _ = self.done.send(outcome.and_then(|()| result.ok_or(StoreError::Closed)));
    }
}

impl<C, T> Submitted<C, T>
where
    Submitted<C, T>: writer::Job + 'static,
{
    /// Tells the caller how its write ended: through the submitting thread's acknowledger
    /// if it has one, else directly (also when that acknowledger is full or gone).
    fn finish_routed(mut self: Box<Self>, outcome: Result<(), StoreError>) {
        if let Some(route) = self.route.take() {
            match route.try_send((self, outcome)) {
                Ok(()) => {}
                Err(queue::TrySendError::Full((job, outcome)) | queue::TrySendError::Closed((job, outcome))) => {
                    job.finish(outcome);
                }
            }
            return;
        }
        self.answer(outcome);
    }
}

impl<F, T> writer::Job for Submitted<Many<F>, T>
where
    T: Send + 'static,
    F: FnOnce(Vec<Option<SiblingSet>>, u64) -> (Vec<Change>, T) + Send + 'static,
{
    fn apply(&mut self, sets: Vec<Option<SiblingSet>>, now_us: u64) -> Vec<Change> {
        self.compute(|Many(f)| f(sets, now_us)).unwrap_or_default()
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        self.finish_routed(outcome);
    }
}

impl<F, T> writer::Job for Submitted<One<F>, T>
where
    T: Send + 'static,
    F: FnOnce(&mut Option<SiblingSet>, u64) -> (Change, T) + Send + 'static,
{
    fn apply(&mut self, mut sets: Vec<Option<SiblingSet>>, now_us: u64) -> Vec<Change> {
        let mut set = sets.pop().flatten();
        vec![self.apply_one(&mut set, now_us)]
    }

    fn apply_one(&mut self, set: &mut Option<SiblingSet>, now_us: u64) -> Change {
        self.compute(|One(f)| f(set, now_us)).unwrap_or(Change::Keep)
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        self.finish_routed(outcome);
    }
}

/// The tree contribution `set` would have if stored under `key` (what
/// [`Store::hashes_and_hints`] reports for a record holding exactly `set`).
pub fn record_hash_of(key: &[u8], set: &SiblingSet) -> u128 {
    let lk = keys::encode(key);
    let full = keys::needs_full_key(key).then_some(key);
    tree::record_hash(&lk, &record::encode(full, set))
}

fn item(lkey: &[u8], bytes: &[u8]) -> Result<ScanItem, StoreError> {
    let (full, set) = record::decode(bytes)?;
    let key = match (keys::inline_key(lkey), full) {
        (_, Some(k)) => k,
        (Some(k), None) => Bytes::copy_from_slice(k),
        (None, None) => return Err(StoreError::Corrupt("digest key without full key".into())),
    };
    Ok(ScanItem { key, set })
}

#[cfg(test)]
mod tests;
