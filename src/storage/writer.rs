//! A writer: group commit. Must not be called from anywhere but [`super::Store`]; a
//! writer holds the store's write lock for each batch, so its transaction is the only
//! LMDB write transaction of the process meanwhile.
//!
//! It takes one queued operation, then every other already queued (up to a bound; the
//! writer thread of `fsync = always` may wait a little for more, see [`Pacing`]), applies
//! them in order in one transaction (each sees the ones before it), commits once, and only
//! then acknowledges them all. Plain puts of one key are combined: the key's latest version
//! is kept in memory and stored once per batch (see [`Held`]). When the map is full it aborts, doubles the map and replays
//! the batch's changes, which were computed once and kept as encoded puts.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::queue::Receiver;
use super::{Inner, Turn, keys, record, tree};
use crate::error::StoreError;
use crate::version::SiblingSet;

/// Most operations folded into one transaction.
const MAX_BATCH: usize = 1024;
/// The map never grows past this (virtual address space is the limit, not the disk).
const MAX_MAP_SIZE: usize = 1 << 44;

/// What to do with one key's record.
#[derive(Debug, Clone)]
pub enum Change {
    /// Leave the record as it is.
    Keep,
    /// Store this sibling set.
    Put(SiblingSet),
    /// Delete the record.
    Remove,
    /// Store this sibling set, held for these owners that are down (sloppy quorum): a
    /// hint for each owner is written in the same transaction, for hinted handoff.
    PutHinted(SiblingSet, Vec<u64>),
    /// A hint for `owner` was delivered: drop it, and the record too when this node is
    /// not one of the key's home replicas.
    HandedOff {
        /// The owner that now holds the record.
        owner: u64,
        /// Whether to delete the record as well.
        remove_record: bool,
    },
}

/// A queued write: its computation, and the caller's end, which it tells the outcome.
pub(crate) trait Job: Send {
    /// Computes one change per key from the keys' current sets and the batch's time (µs
    /// since the Unix epoch, read once per group commit). Called at most once.
    fn apply(&mut self, sets: Vec<Option<SiblingSet>>, now_us: u64) -> Vec<Change>;
    /// [`Job::apply`] for a job of one key, without the vectors. The key's set is lent:
    /// the job may take it only when its change stores or removes the record (a put, a
    /// hinted put, a removal); otherwise it must leave it where it is, since the writer
    /// may hold no other copy of it.
    fn apply_one(&mut self, set: &mut Option<SiblingSet>, now_us: u64) -> Change {
        self.apply(vec![set.clone()], now_us)
            .into_iter()
            .next()
            .unwrap_or(Change::Keep)
    }
    /// Reports how the write ended: after its commit, or as soon as it failed.
    fn finish(self: Box<Self>, outcome: Result<(), StoreError>);
}

pub(crate) enum WriteOp {
    Update {
        keys: Vec<Bytes>,
        job: Box<dyn Job>,
    },
    /// An update of one key (the usual write), without a vector of one.
    UpdateOne {
        key: Bytes,
        job: Box<dyn Job>,
    },
    /// Remove every record; siblings written before `before_ms` are not stored again.
    Clear {
        before_ms: u64,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Recompute the anti-entropy trees of partitions `from..to` from their records and
    /// record the rebuild's progress, in one transaction.
    RebuildTree {
        from: u16,
        to: u16,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Only commit (storing the pending tree changes, which are due).
    StoreTrees {
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// Whom a batch tells its outcome once it has committed (or failed).
enum Ack {
    Job(Box<dyn Job>),
    Done(oneshot::Sender<Result<(), StoreError>>),
}

impl Ack {
    fn send(self, outcome: Result<(), StoreError>) {
        match self {
            Ack::Job(job) => job.finish(outcome),
            Ack::Done(done) => {
                let _ = done.send(outcome);
            }
        }
    }
}

/// An encoded change, kept so a batch can be replayed after the map grows, and logged
/// so a crash can redo it (see [`super::wal`]).
pub(crate) enum Logged {
    /// Store a record: LMDB key, encoded record.
    Put(Vec<u8>, Vec<u8>),
    /// Delete a record: LMDB key.
    Delete(Vec<u8>),
    /// Store a hint: hint key.
    PutHint(Vec<u8>),
    /// Delete a hint: hint key.
    DeleteHint(Vec<u8>),
    /// Remove every record and hint, and record the flush time.
    Clear(u64),
    /// Recompute a partition's tree from its records.
    RebuildTree(u16),
}

/// The databases a logged change writes.
#[derive(Clone, Copy)]
pub(crate) struct Dbs {
    pub(crate) data: super::Db,
    pub(crate) meta: super::Db,
    pub(crate) hints: super::Db,
    pub(crate) trees: super::Db,
}

impl Dbs {
    fn of(inner: &Inner) -> Dbs {
        Dbs {
            data: inner.data,
            meta: inner.meta,
            hints: inner.hints,
            trees: inner.trees,
        }
    }
}

/// Redoes the commits of a crashed node's log (see [`super::wal::restore`]) in `wtxn`,
/// in order. The records' tree changes are stored unless the trees were already behind
/// (then the store rebuilds them anyway).
pub(crate) fn redo<'e>(
    dbs: &Dbs,
    wtxn: heed::RwTxn<'e>,
    commits: &[Vec<Logged>],
) -> Result<heed::RwTxn<'e>, heed::Error> {
    let mut txn = Txn {
        wtxn,
        deltas: tree::Deltas::default(),
    };
    for l in commits.iter().flatten() {
        apply_logged(dbs, &mut txn, l, None)?;
    }
    if dbs.meta.get(&txn.wtxn, super::TREES_BEHIND)?.is_none() {
        tree::flush(&dbs.trees, &mut txn.wtxn, &mut txn.deltas)?;
    }
    Ok(txn.wtxn)
}

/// The write transaction of a batch, with the tree changes the batch has made so far:
/// they are summed per tree node and written once, just before the commit, so a batch
/// of many writes to one partition updates its leaf and root once, not once per write.
struct Txn<'e> {
    wtxn: heed::RwTxn<'e>,
    deltas: tree::Deltas,
}

impl<'e> Txn<'e> {
    fn begin(inner: &'e Inner) -> Result<Txn<'e>, heed::Error> {
        Ok(Txn {
            wtxn: inner.env.write_txn()?,
            deltas: tree::Deltas::default(),
        })
    }
}

/// The writer on a thread of its own, for `fsync = always`: a commit waits for the disk,
/// and that wait must not hold up a thread that serves clients.
pub(crate) fn run_thread(inner: Arc<Inner>, mut rx: Receiver<WriteOp>) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(MAX_BATCH);
    let mut pacing = Pacing::default();
    while let Some(op) = rx.blocking_recv() {
        batch.push(op);
        rx.take_up_to(&mut batch, MAX_BATCH);
        if let Some((want, until)) = pacing.wait(batch.len()) {
            rx.gather(&mut batch, want, MAX_BATCH, until);
        }
        let size = batch.len();
        let started = Instant::now();
        let turn = inner.write_lock.blocking();
        if finish_batch(&inner, &mut rx, &mut batch, turn) {
            return;
        }
        pacing.committed(size, started.elapsed());
    }
}

/// When the writer thread waits for more writes before it commits.
///
/// Under a steady load, writers whose acknowledgements went out together come back
/// together, but not all before the next commit starts: the first to arrive find the
/// writer idle and get a commit (a whole flush) of their own, and the rest wait for the
/// next one. The batches alternate between a few writes and many (a quarter of the commits
/// held one write in a benchmark of 50 clients). So a batch that starts below three
/// quarters of the last two batches' mean waits for the rest, for at most two thirds of a
/// commit's time (a moving average): a write that waits that long would otherwise wait for
/// a whole commit more. A single client's batches are of one write and never wait.
#[derive(Debug, Default)]
struct Pacing {
    /// Sizes of the last two batches.
    last: [usize; 2],
    /// Moving average of a batch's commit time (its flush, and a checkpoint when one
    /// came due, included).
    commit: Duration,
}

impl Pacing {
    /// How many writes a batch of `have` should wait for, and until when; `None`: commit now.
    fn wait(&self, have: usize) -> Option<(usize, Instant)> {
        let want = (self.last[0] + self.last[1]) * 3 / 8;
        (have < want).then(|| (want, Instant::now() + self.commit * 2 / 3))
    }

    /// Notes a commit of `size` writes that took `took`.
    fn committed(&mut self, size: usize, took: Duration) {
        self.last = [self.last[1], size];
        // Bounded, so that one stalled flush cannot make the writer wait long.
        let took = took.min(Duration::from_millis(10));
        self.commit = (self.commit * 7 + took) / 8;
    }
}

/// The writer as a task among the connections, for `fsync = everysec | no` (a commit
/// that does not wait for the disk takes microseconds, less than handing each write to
/// another thread and back) and for `fsync = always` with one client thread (the loop
/// stops during the flush, as Redis's does; see the module docs of [`super`]). Writes
/// queued while other tasks ran share one commit.
pub(crate) async fn run_task(inner: Arc<Inner>, mut rx: Receiver<WriteOp>) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(MAX_BATCH);
    while let Some(op) = rx.recv().await {
        batch.push(op);
        // Let the other ready connections queue their writes into this batch.
        tokio::task::yield_now().await;
        let turn = inner.write_lock.turn().await;
        if finish_batch(&inner, &mut rx, &mut batch, turn) {
            return;
        }
    }
}

/// A client thread's acknowledger (see the module docs of [`super`]): finishes the writes
/// the writer thread committed, on the thread that submitted them, a queueful at a time.
/// Ends when the store's writes and this thread's handle on it are gone.
pub(crate) async fn run_acker(mut rx: Receiver<(Box<dyn Job>, Result<(), StoreError>)>) {
    let mut done = Vec::new();
    while let Some(first) = rx.recv().await {
        done.push(first);
        rx.take_up_to(&mut done, MAX_BATCH);
        for (job, outcome) in done.drain(..) {
            job.finish(outcome);
        }
    }
}

/// Adds what is already queued to `batch` and commits it, holding the write lock `turn`;
/// true when the writer must stop.
fn finish_batch(inner: &Inner, rx: &mut Receiver<WriteOp>, batch: &mut Vec<WriteOp>, turn: Turn<'_>) -> bool {
    rx.take_up_to(batch, MAX_BATCH);
    let close = commit_batch(inner, batch);
    // A due checkpoint of the log runs once the batch is acknowledged, before the next.
    if let Some(wal) = &inner.wal {
        let mut wal = super::lock(wal);
        if close.is_none() && wal.due(&inner.env) && wal.ready(&inner.env) {
            if let Err(e) = wal.checkpoint(&inner.env, || Ok(())) {
                // The next commit retries it before it is acknowledged.
                tracing::error!("checkpoint failed: {e}");
            }
        }
    }
    drop(turn);
    match close {
        Some(done) => {
            let _ = done.send(());
            true
        }
        None => false,
    }
}

/// Applies and commits one batch, acknowledging each operation; returns the Close
/// acknowledgement if the batch asked the writer to stop (operations after it are refused).
fn commit_batch(inner: &Inner, batch: &mut Vec<WriteOp>) -> Option<oneshot::Sender<()>> {
    let mut acks = Vec::with_capacity(batch.len());
    let mut close = None;
    let started = std::time::Instant::now();
    let result = apply_all(inner, batch, &mut acks, &mut close);
    inner.stats.max_batch.fetch_max(acks.len() as u64, Ordering::Relaxed);
    if !acks.is_empty() {
        ::metrics::histogram!(crate::metrics::COMMIT_BATCH).record(acks.len() as f64);
        ::metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    }
    match result {
        Ok(()) => {
            for a in acks {
                a.send(Ok(()));
            }
        }
        Err(e) => {
            inner.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
            tracing::error!("write transaction failed: {e}");
            for a in acks {
                a.send(Err(clone_err(&e)));
            }
        }
    }
    close
}

fn apply_all(
    inner: &Inner,
    batch: &mut Vec<WriteOp>,
    acks: &mut Vec<Ack>,
    close: &mut Option<oneshot::Sender<()>>,
) -> Result<(), StoreError> {
    let mut log: Vec<Logged> = Vec::new();
    let mut txn = Txn::begin(inner)?;
    let now_us = crate::clock::now_us();
    // The newest flush, this batch's included: what is older is not stored again.
    let mut flushed_before = inner.flushed_before.load(Ordering::Acquire);
    let mut held = Held::default();
    for op in batch.drain(..) {
        if close.is_some() {
            // Writes queued behind Close are refused, never half-applied.
            match op {
                WriteOp::Update { job, .. } | WriteOp::UpdateOne { job, .. } => job.finish(Err(StoreError::Closed)),
                WriteOp::Clear { done, .. } | WriteOp::RebuildTree { done, .. } | WriteOp::StoreTrees { done } => {
                    let _ = done.send(Err(StoreError::Closed));
                }
                WriteOp::Close { .. } => {}
            }
            continue;
        }
        match op {
            WriteOp::Close { done } => *close = Some(done),
            WriteOp::StoreTrees { done } => acks.push(Ack::Done(done)),
            WriteOp::Clear { before_ms, done } => {
                txn = flush_held(inner, txn, &mut log, &mut held)?;
                acks.push(Ack::Done(done));
                flushed_before = flushed_before.max(before_ms);
                let from = log.len();
                log.push(Logged::Clear(flushed_before));
                txn = replay_on_full(inner, txn, &log, from, None)?;
            }
            WriteOp::RebuildTree { from: first, to, done } => {
                txn = flush_held(inner, txn, &mut log, &mut held)?;
                acks.push(Ack::Done(done));
                let from = log.len();
                log.extend((first..to).map(Logged::RebuildTree));
                txn = replay_on_full(inner, txn, &log, from, None)?;
            }
            WriteOp::UpdateOne { key, mut job } => {
                let now = now_us.max(flushed_before.saturating_mul(1000));
                let (next, outcome) =
                    update_one(inner, txn, &mut log, &mut held, &key, &mut *job, now, flushed_before)?;
                txn = next;
                match outcome {
                    Ok(()) => acks.push(Ack::Job(job)),
                    // One unreadable record fails its own operation, not the batch.
                    Err(e) => job.finish(Err(e)),
                }
            }
            WriteOp::Update { keys: ks, mut job } if ks.len() == 1 => {
                let now = now_us.max(flushed_before.saturating_mul(1000));
                let (next, outcome) =
                    update_one(inner, txn, &mut log, &mut held, &ks[0], &mut *job, now, flushed_before)?;
                txn = next;
                match outcome {
                    Ok(()) => acks.push(Ack::Job(job)),
                    // One unreadable record fails its own operation, not the batch.
                    Err(e) => job.finish(Err(e)),
                }
            }
            WriteOp::Update { keys: ks, mut job } => {
                txn = flush_held(inner, txn, &mut log, &mut held)?;
                let mut lkeys = Vec::with_capacity(ks.len());
                let mut sets = Vec::with_capacity(ks.len());
                let mut failed = None;
                for k in &ks {
                    let lk = keys::encode(k);
                    match inner.data.get(&txn.wtxn, &lk) {
                        Ok(Some(bytes)) => match record::decode(bytes) {
                            Ok((_, set)) => sets.push(Some(set)),
                            Err(e) => failed = Some(e),
                        },
                        Ok(None) => sets.push(None),
                        Err(e) => failed = Some(e.into()),
                    }
                    lkeys.push(lk);
                }
                if let Some(e) = failed {
                    // One unreadable record fails its own operation, not the batch.
                    job.finish(Err(e));
                    continue;
                }
                // A write made here is dated no earlier than the newest flush (this
                // node's clock may be behind the one that chose the flush's time).
                let changes = job.apply(sets, now_us.max(flushed_before.saturating_mul(1000)));
                for ((k, lk), change) in ks.iter().zip(lkeys).zip(changes) {
                    txn = write_through(inner, txn, &mut log, lk, k, forget_flushed(change, flushed_before))?;
                }
                acks.push(Ack::Job(job));
            }
        }
    }
    txn = flush_held(inner, txn, &mut log, &mut held)?;
    // Held from before the commit until the pending tree changes are updated (see
    // `tree::Pending`); a reader of the trees waits at most one commit.
    let mut pending = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
    // Store the pending tree changes when they are due, and on close.
    let store_all = pending.flagged && (close.is_some() || pending.due());
    if log.is_empty() && !store_all {
        txn.wtxn.abort();
        return Ok(());
    }
    loop {
        // The tree changes go in last; a full map replays everything, trees too.
        let trees = if store_all {
            let mut carry = pending.deltas().clone();
            settle(&mut carry, &log);
            txn.deltas.absorb(&carry);
            tree::flush(&inner.trees, &mut txn.wtxn, &mut txn.deltas)
                .and_then(|()| inner.meta.delete(&mut txn.wtxn, super::TREES_BEHIND).map(|_| ()))
        } else if !txn.deltas.is_empty() && !pending.flagged {
            inner.meta.put(&mut txn.wtxn, super::TREES_BEHIND, &[1])
        } else {
            Ok(())
        };
        match trees {
            Ok(()) => {}
            Err(heed::Error::Mdb(heed::MdbError::MapFull)) => {
                txn.wtxn.abort();
                txn = grow_and_replay(inner, &log)?;
                continue;
            }
            Err(e) => return Err(map_err(inner, e)),
        }
        match txn.wtxn.commit() {
            Ok(()) => {
                if store_all {
                    pending.stored();
                } else {
                    settle(pending.deltas_mut(), &log);
                    pending.add(&txn.deltas);
                }
                inner.flushed_before.fetch_max(flushed_before, Ordering::AcqRel);
                inner.stats.commits.add(1);
                drop(pending);
                // With a log, LMDB committed without flushing: one flush of the log makes
                // the batch durable before it is acknowledged.
                return match &inner.wal {
                    Some(wal) => make_durable(inner, &mut super::lock(wal), &log),
                    None => Ok(()),
                };
            }
            Err(heed::Error::Mdb(heed::MdbError::MapFull)) => txn = grow_and_replay(inner, &log)?,
            Err(e) => return Err(map_err(inner, e)),
        }
    }
}

/// Writes a committed batch's changes to the log and flushes it, or, when the log cannot
/// take them (it failed before, or is full), checkpoints (the writer holds the lock).
fn make_durable(inner: &Inner, wal: &mut super::wal::Wal, log: &[Logged]) -> Result<(), StoreError> {
    match wal.write(&[log]) {
        Ok(true) => Ok(()),
        Ok(false) => wal.checkpoint(&inner.env, || Ok(())),
        Err(e) => Err(e),
    }
    .map_err(|e| store_err(inner, e))
}

/// Drops from tree changes made before a batch what the batch's clears and tree
/// rebuilds have made obsolete: a rebuilt tree counts every record as it now is.
fn settle(deltas: &mut tree::Deltas, log: &[Logged]) {
    for l in log {
        match l {
            Logged::Clear(_) => deltas.clear(),
            Logged::RebuildTree(p) => deltas.forget_partition(*p),
            _ => {}
        }
    }
}

/// Records a batch has written but not yet put into LMDB, by LMDB key: a key written
/// again and again in one batch (a hot key) is decoded once, and encoded, hashed and put
/// once, when the batch flushes it, not once per write. Every write still sees the ones
/// before it, and all are acknowledged only after the commit, so nobody can tell.
type Held = ahash::AHashMap<Vec<u8>, HeldRecord>;

/// A record held back by [`Held`].
struct HeldRecord {
    /// The user key (a long key is stored in the record).
    key: Bytes,
    /// The latest version.
    set: SiblingSet,
    /// The tree contribution of the record in the transaction, which the held one will
    /// replace (0 for none).
    stored_hash: u128,
    /// Whether `set` differs from the record in the transaction (a held record that is
    /// stored already needs no put when the batch flushes).
    dirty: bool,
}

/// Puts every held record into the transaction (before anything that reads the
/// transaction's records or writes several keys, and before the commit).
fn flush_held<'e>(
    inner: &'e Inner,
    mut txn: Txn<'e>,
    log: &mut Vec<Logged>,
    held: &mut Held,
) -> Result<Txn<'e>, StoreError> {
    for (lk, h) in held.drain() {
        if !h.dirty {
            continue;
        }
        let full = keys::needs_full_key(&h.key).then_some(&h.key[..]);
        let from = log.len();
        log.push(Logged::Put(lk, record::encode(full, &h.set)));
        txn = replay_on_full(inner, txn, log, from, Some(h.stored_hash))?;
    }
    Ok(txn)
}

/// Applies a one-key update: its current set is the held one or the stored one. A plain
/// put of the result is held (see [`Held`]); any other change is written through, after
/// the held version when the change leaves the record in place. The first put of a stored
/// key in a batch is written at once, where the read left the cursor, so it costs one
/// B-tree search instead of two (a write to a random key is seldom repeated within a
/// batch), and then held as stored. A held set is lent to the job, not copied (see
/// [`Job::apply_one`]). Returns the transaction and the operation's own outcome; an
/// `Err` fails the batch.
#[allow(clippy::too_many_arguments)]
fn update_one<'e>(
    inner: &'e Inner,
    mut txn: Txn<'e>,
    log: &mut Vec<Logged>,
    held: &mut Held,
    key: &Bytes,
    job: &mut dyn Job,
    now_us: u64,
    flushed_before: u64,
) -> Result<(Txn<'e>, Result<(), StoreError>), StoreError> {
    let lookup = keys::StackKey::new(key);
    let decide = |job: &mut dyn Job, current: &mut Option<SiblingSet>| {
        forget_flushed(job.apply_one(current, now_us), flushed_before)
    };
    // What became of a held set lent to the job.
    enum Lent {
        /// Settled in place; true when the job stored a new version.
        Held(bool),
        /// To be written through; the lent set, unless the job took it.
        Through(Change, Option<SiblingSet>),
    }
    let lent = held.get_mut(lookup.as_slice()).map(|h| {
        let mut current = Some(std::mem::take(&mut h.set));
        match decide(job, &mut current) {
            Change::Put(set) => {
                h.set = set;
                h.dirty = true;
                Ok(Lent::Held(true))
            }
            Change::Keep => match current {
                Some(set) => {
                    h.set = set;
                    Ok(Lent::Held(false))
                }
                None => Err(lent_set_lost()),
            },
            change => Ok(Lent::Through(change, current)),
        }
    });
    match lent.transpose()? {
        Some(Lent::Held(wrote)) => {
            if wrote {
                inner.stats.writes.add(1);
            }
            return Ok((txn, Ok(())));
        }
        Some(Lent::Through(change, current)) => {
            let Some((lk, h)) = held.remove_entry(lookup.as_slice()) else {
                return Err(lent_set_lost());
            };
            let replaces = matches!(change, Change::Put(_) | Change::PutHinted(..) | Change::Remove);
            match current {
                // The change leaves the record in place (a delivered hint): store the
                // held version first if the transaction does not have it yet.
                Some(set) if h.dirty && !replaces => {
                    let full = keys::needs_full_key(key).then_some(&key[..]);
                    let from = log.len();
                    log.push(Logged::Put(lk.clone(), record::encode(full, &set)));
                    txn = replay_on_full(inner, txn, log, from, Some(h.stored_hash))?;
                }
                None if h.dirty && !replaces => return Err(lent_set_lost()),
                // Replaced or removed: the held version need not be stored on the way (the
                // tree change is read from the transaction, so it still adds up).
                _ => {}
            }
            txn = write_through(inner, txn, log, lk, key, change)?;
            return Ok((txn, Ok(())));
        }
        None => {}
    }
    let lk = lookup.as_slice().to_vec();
    let exact = (Bound::Included(&lk[..]), Bound::Included(&lk[..]));
    let mut cursor = inner
        .data
        .range_mut(&mut txn.wtxn, &exact)
        .map_err(|e| map_err(inner, e))?;
    let read = match cursor.next() {
        Some(Ok((_, bytes))) => record::decode(bytes).map(|(_, set)| (Some(set), Some(tree::record_hash(&lk, bytes)))),
        None => Ok((None, None)),
        Some(Err(e)) => Err(e.into()),
    };
    let (mut current, hash) = match read {
        Ok(r) => r,
        Err(e) => {
            drop(cursor);
            return Ok((txn, Err(e)));
        }
    };
    let change = decide(job, &mut current);
    match (change, hash) {
        (Change::Put(set), Some(old)) => {
            let full = keys::needs_full_key(key).then_some(&key[..]);
            let bytes = record::encode(full, &set);
            let new = tree::record_hash(&lk, &bytes);
            // SAFETY: nothing read through the cursor is still borrowed (the set and hash
            // above are owned), and the cursor sits on `lk`.
            let put = unsafe { cursor.put_current(&lk, &bytes) };
            drop(cursor);
            log.push(Logged::Put(lk.clone(), bytes));
            match put {
                Ok(_) => txn.deltas.add(&lk, old ^ new),
                Err(heed::Error::Mdb(heed::MdbError::MapFull)) => {
                    txn.wtxn.abort();
                    // The replay makes this put and its tree change again.
                    txn = grow_and_replay(inner, log)?;
                }
                Err(e) => return Err(map_err(inner, e)),
            }
            inner.stats.writes.add(1);
            let record = HeldRecord {
                key: key.clone(),
                set,
                stored_hash: new,
                dirty: false,
            };
            held.insert(lk, record);
        }
        (Change::Put(set), None) => {
            drop(cursor);
            let record = HeldRecord {
                key: key.clone(),
                set,
                stored_hash: 0,
                dirty: true,
            };
            held.insert(lk, record);
            inner.stats.writes.add(1);
        }
        (change, _) => {
            drop(cursor);
            txn = write_through(inner, txn, log, lk, key, change)?;
        }
    }
    Ok((txn, Ok(())))
}

/// A job kept a held set it was lent without replacing the record (see
/// [`Job::apply_one`]): the batch fails rather than lose that version.
fn lent_set_lost() -> StoreError {
    StoreError::Failed("a write kept the version it was lent without replacing it".into())
}

/// Logs and applies `change` to the record under `lk` (user key `key`) in the
/// transaction.
fn write_through<'e>(
    inner: &'e Inner,
    txn: Txn<'e>,
    log: &mut Vec<Logged>,
    lk: Vec<u8>,
    key: &[u8],
    change: Change,
) -> Result<Txn<'e>, StoreError> {
    let full = keys::needs_full_key(key).then_some(key);
    let from = log.len();
    match change {
        Change::Keep => return Ok(txn),
        Change::Put(set) => log.push(Logged::Put(lk, record::encode(full, &set))),
        Change::PutHinted(set, owners) => {
            for owner in owners {
                log.push(Logged::PutHint(hint_key(&lk, owner)));
            }
            log.push(Logged::Put(lk, record::encode(full, &set)));
        }
        Change::Remove => log.push(Logged::Delete(lk)),
        Change::HandedOff { owner, remove_record } => {
            // The record stays while it is still held for another owner.
            let held_for_others = other_hints(inner, &txn.wtxn, &lk, owner).map_err(|e| map_err(inner, e))?;
            log.push(Logged::DeleteHint(hint_key(&lk, owner)));
            if remove_record && !held_for_others {
                log.push(Logged::Delete(lk));
            }
        }
    }
    inner.stats.writes.add(1);
    replay_on_full(inner, txn, log, from, None)
}

/// `change` without the siblings written before the newest flush; a set left with none
/// is removed.
fn forget_flushed(change: Change, flushed_before: u64) -> Change {
    match change {
        Change::Put(mut set) => match set.forget_written_before(flushed_before) {
            true => Change::Put(set),
            false => Change::Remove,
        },
        Change::PutHinted(mut set, owners) => match set.forget_written_before(flushed_before) {
            true => Change::PutHinted(set, owners),
            false => Change::Remove,
        },
        other => other,
    }
}

/// Applies the logged changes from index `from` on; if the map is full, grows it and
/// replays the whole log. `known_old`: the tree contribution of the record the first of
/// them replaces, when the caller has just read it in this transaction.
fn replay_on_full<'e>(
    inner: &'e Inner,
    mut txn: Txn<'e>,
    log: &[Logged],
    from: usize,
    known_old: Option<u128>,
) -> Result<Txn<'e>, StoreError> {
    for (i, l) in log[from..].iter().enumerate() {
        match apply_logged(&Dbs::of(inner), &mut txn, l, known_old.filter(|_| i == 0)) {
            Ok(()) => {}
            Err(heed::Error::Mdb(heed::MdbError::MapFull)) => {
                txn.wtxn.abort();
                return grow_and_replay(inner, log);
            }
            Err(e) => return Err(map_err(inner, e)),
        }
    }
    Ok(txn)
}

/// Whether the record under `lmdb_key` is also held as a hint for an owner other than `owner`.
fn other_hints(inner: &Inner, wtxn: &heed::RwTxn<'_>, lmdb_key: &[u8], owner: u64) -> Result<bool, heed::Error> {
    for entry in inner.hints.prefix_iter(wtxn, lmdb_key)? {
        let (hk, _) = entry?;
        if hk.len() == lmdb_key.len() + 8 && hk[lmdb_key.len()..] != owner.to_be_bytes() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The key of a hint: the record's LMDB key, then the owner.
pub(crate) fn hint_key(lmdb_key: &[u8], owner: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(lmdb_key.len() + 8);
    k.extend_from_slice(lmdb_key);
    k.extend_from_slice(&owner.to_be_bytes());
    k
}

/// Grows the map and replays `log` into a fresh transaction, growing again until it fits.
fn grow_and_replay<'e>(inner: &'e Inner, log: &[Logged]) -> Result<Txn<'e>, StoreError> {
    'grow: loop {
        grow(inner)?;
        let mut txn = Txn::begin(inner)?;
        for l in log {
            match apply_logged(&Dbs::of(inner), &mut txn, l, None) {
                Ok(()) => {}
                Err(heed::Error::Mdb(heed::MdbError::MapFull)) => {
                    txn.wtxn.abort();
                    continue 'grow;
                }
                Err(e) => return Err(map_err(inner, e)),
            }
        }
        return Ok(txn);
    }
}

/// Applies one change; a record's change moves its anti-entropy tree in the same
/// transaction (the old contribution is read from the transaction itself, so a replay
/// after the map grew computes the same tree, unless the caller has just read it: `known_old`).
fn apply_logged(dbs: &Dbs, txn: &mut Txn<'_>, l: &Logged, known_old: Option<u128>) -> Result<(), heed::Error> {
    let Txn { wtxn, deltas } = txn;
    match l {
        Logged::Put(k, v) => {
            let old = match known_old {
                Some(h) => h,
                None => old_hash(dbs, wtxn, k)?,
            };
            dbs.data.put(wtxn, k, v)?;
            deltas.add(k, old ^ tree::record_hash(k, v));
            Ok(())
        }
        Logged::Delete(k) => {
            let old = old_hash(dbs, wtxn, k)?;
            if dbs.data.delete(wtxn, k)? {
                deltas.add(k, old);
            }
            Ok(())
        }
        Logged::PutHint(k) => dbs.hints.put(wtxn, k, &[]),
        Logged::DeleteHint(k) => dbs.hints.delete(wtxn, k).map(|_| ()),
        Logged::Clear(before_ms) => {
            deltas.clear();
            dbs.data.clear(wtxn)?;
            dbs.hints.clear(wtxn)?;
            dbs.trees.clear(wtxn)?;
            dbs.meta.put(wtxn, super::FLUSHED_BEFORE, &before_ms.to_be_bytes())
        }
        Logged::RebuildTree(p) => {
            // The rebuild reads the records as they are now, changes of this batch
            // included: drop their pending deltas or they would count twice.
            deltas.forget_partition(*p);
            tree::rebuild_partition(&dbs.data, &dbs.trees, wtxn, *p)?;
            let mut progress = vec![tree::TREE_FORMAT];
            progress.extend_from_slice(&(u32::from(*p) + 1).to_be_bytes());
            dbs.meta.put(wtxn, super::TREE_PROGRESS, &progress)
        }
    }
}

/// The tree contribution of the record now under `k` (0 when there is none).
fn old_hash(dbs: &Dbs, wtxn: &heed::RwTxn<'_>, k: &[u8]) -> Result<u128, heed::Error> {
    Ok(dbs.data.get(wtxn, k)?.map_or(0, |old| tree::record_hash(k, old)))
}

/// Doubles the map. Waits for every read transaction to end (LMDB requires that none be
/// open) by taking the read gate exclusively.
fn grow(inner: &Inner) -> Result<(), StoreError> {
    let _gate = inner.gate.write();
    let new_size = inner.map_size.load(Ordering::Acquire).saturating_mul(2);
    if new_size > MAX_MAP_SIZE {
        return Err(StoreError::DiskFull);
    }
    // SAFETY: no transaction is open: readers are excluded by the gate, this thread is
    // the only writer and has aborted its transaction before calling, and a log's pin is
    // released by its checkpoint before the resize (and taken again after it).
    let resize = || unsafe { inner.env.resize(new_size) }.map_err(StoreError::Lmdb);
    match &inner.wal {
        Some(wal) => super::lock(wal).checkpoint(&inner.env, resize)?,
        None => resize()?,
    }
    inner.map_size.store(new_size, Ordering::Release);
    inner.stats.map_resizes.fetch_add(1, Ordering::Relaxed);
    tracing::info!(new_size, "LMDB map grown");
    Ok(())
}

/// Classifies a failed write. LMDB reports a short write on a full file system as EIO, so
/// an I/O error is taken for a full disk when the data directory has no room left.
fn map_err(inner: &Inner, e: heed::Error) -> StoreError {
    let code = match &e {
        heed::Error::Io(io) => io.raw_os_error(),
        heed::Error::Mdb(heed::MdbError::Other(code)) => Some(*code),
        _ => None,
    };
    match code {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull,
        Some(libc::EIO) if disk_nearly_full(inner.env.path()) => StoreError::DiskFull,
        _ => StoreError::Lmdb(e),
    }
}

/// [`map_err`] for a store error: an LMDB or I/O error is classified, others kept.
fn store_err(inner: &Inner, e: StoreError) -> StoreError {
    match e {
        StoreError::Lmdb(e) => map_err(inner, e),
        other => other,
    }
}

/// Whether the file system holding `dir` has less than a few pages free.
fn disk_nearly_full(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    (st.f_bavail as u64).saturating_mul(st.f_frsize as u64) < 1024 * 1024
}

/// The error each operation of a failed batch receives (errors are not `Clone`).
fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::DiskFull => StoreError::DiskFull,
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod pacing_tests {
    use super::*;

    #[test]
    fn a_batch_waits_only_when_it_starts_well_below_the_recent_batches() {
        let mut p = Pacing::default();
        // Nothing known yet: commit at once.
        assert!(p.wait(1).is_none());
        // One client writing in turn: batches of one never wait.
        p.committed(1, Duration::from_micros(150));
        p.committed(1, Duration::from_micros(150));
        assert!(p.wait(1).is_none());
        // Alternating 2 and 46 under 48 writers: a batch of 2 waits for 18, one of 18
        // does not.
        for _ in 0..20 {
            p.committed(2, Duration::from_micros(160));
            p.committed(46, Duration::from_micros(160));
        }
        let before = Instant::now();
        let (want, until) = p.wait(2).expect("a small batch waits");
        let after = Instant::now();
        assert_eq!(want, 18);
        // Two thirds of the average commit (160 µs, less what the average still owes
        // to its start at zero).
        assert!(until >= before + Duration::from_micros(100), "{:?}", until - before);
        assert!(until <= after + Duration::from_micros(107), "{:?}", until - after);
        assert!(p.wait(18).is_none());
        // One stalled flush moves the bound by at most an eighth of 10 ms.
        p.committed(24, Duration::from_secs(3));
        let before = Instant::now();
        let (_, until) = p.wait(1).expect("waits");
        assert!(until < before + Duration::from_millis(1) + (Instant::now() - before));
    }
}
