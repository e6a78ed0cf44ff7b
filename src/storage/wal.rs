//! The redo log of `fsync = always`: one flush per acknowledged commit instead of LMDB's
//! two. Must not be used but by the store's writer, under the store's write lock.
//!
//! LMDB makes a commit durable with two flushes in a row: its pages, then its meta page
//! (a meta page that reached the disk before its pages would point at garbage). Here LMDB
//! commits without flushing, and the commit's changes, already encoded by the writer
//! (`Logged`), are written to the log and flushed once, as Redis's AOF is.
//!
//! Now and then (and when the map grows, and on close) a checkpoint flushes LMDB, copies
//! its two meta pages (those of the flushed state) into the header of a fresh log, and
//! holds a read transaction on that state (a [`Pin`]) until the next checkpoint, so LMDB
//! reuses none of its pages meanwhile. After a crash, [`restore`] writes the saved meta
//! pages back before LMDB opens the file, which brings back exactly the checkpoint's
//! state, whatever LMDB wrote after it; the log's records then redo every acknowledged
//! commit since. A record cut short by the crash (never acknowledged) ends the replay.
//!
//! The log is two files of fixed size, `wal.0` and `wal.1`, written full of zeros once
//! and then only overwritten, never grown: a flush then writes the record and nothing
//! else (a file that grows has its size flushed too, and on ext4 that commits the
//! journal, which also flushes whatever LMDB's file has newly allocated). Checkpoints
//! alternate between the two, each with a generation number one higher, so the other
//! file keeps the previous checkpoint until the new one's header is on disk.
//!
//! Layout, integers little endian: `DYNKVWAL`, a format byte, the generation (u64), the
//! page size (u32), the two meta pages, an xxh3 of all that (u64); then records: body
//! length (u32), xxh3 of the body seeded with the generation (u64, so a record left from
//! an older generation ends the log), body. A body is one commit: a count (u32), then
//! each change as a tag byte and its fields (byte strings as a u32 length and the bytes).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use heed::{Env, WithTls};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::writer::Logged;
use crate::error::StoreError;

/// Names of the two log files in the data directory.
const FILES: [&str; 2] = ["wal.0", "wal.1"];
/// Size of each log file.
const LOG_SIZE: u64 = 8 << 20;
/// Name of the lock file that keeps a second process off the directory.
const LOCK: &str = "dynkv.lock";
const MAGIC: &[u8; 8] = b"DYNKVWAL";
const FORMAT: u8 = 1;
/// Bytes of a header before the meta pages, and of a record before its body.
const HEAD: usize = 21;
const RECORD_HEAD: usize = 12;
/// LMDB's meta page magic, right after the 16-byte page header.
const LMDB_MAGIC: u32 = 0xBEEF_C0DE;
/// A checkpoint is due after this many logged commits (each checkpoint's flush then
/// writes what about 64 commits dirtied: at 256, SET with `fsync always` had a p99 near
/// 4 ms, the log's flushes waiting behind a checkpoint's; at 64 about 1.5 ms)...
const CHECKPOINT_COMMITS: u32 = 64;
/// ... or when the log is three quarters full ...
const CHECKPOINT_BYTES: u64 = LOG_SIZE / 4 * 3;
/// ... or when the file has grown by this many pages (while pinned, LMDB reuses no page
/// freed since the checkpoint, and the next checkpoint flushes every page written since).
const CHECKPOINT_PAGES: usize = 2048;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const PUT_HINT: u8 = 3;
const DELETE_HINT: u8 = 4;
const CLEAR: u8 = 5;
const REBUILD_TREE: u8 = 6;

fn io(e: std::io::Error) -> StoreError {
    StoreError::Lmdb(heed::Error::Io(e))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("write-ahead log: {what}"))
}

/// Takes the data directory's lock, so no second process restores or writes under a
/// running node; held for as long as the returned file is open.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))
        .map_err(io)?;
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; flock has no memory effects.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StoreError::Failed(format!(
            "the data directory {} is in use by another process",
            dir.display()
        )));
    }
    Ok(file)
}

/// The newest checkpoint a directory's log holds, and the commits logged since.
pub(crate) struct Restored {
    /// Each commit's changes, in commit order.
    pub commits: Vec<Vec<Logged>>,
    /// Bytes of log they came from.
    pub bytes: u64,
    /// The checkpoint's generation and file.
    last: (u64, usize),
}

/// If `dir` has a log, writes its newest checkpoint's meta pages back into `data.mdb`
/// (undoing every commit LMDB made after it) and returns the commits to redo. Must run
/// before LMDB opens the directory.
pub(crate) fn restore(dir: &Path) -> Result<Option<Restored>, StoreError> {
    let mut logs = Vec::new();
    for (i, name) in FILES.iter().enumerate() {
        match std::fs::read(dir.join(name)) {
            Ok(bytes) => logs.push((i, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    let newest = logs
        .iter()
        .filter_map(|(i, bytes)| header(bytes).map(|(generation, meta, at)| (generation, *i, bytes, meta, at)))
        .max_by_key(|(generation, ..)| *generation);
    let Some((generation, file, bytes, meta, mut at)) = newest else {
        // Files never given a header (a first start cut short) hold nothing.
        return match logs.iter().all(|(_, b)| b.iter().take(HEAD).all(|&x| x == 0)) {
            true => Ok(None),
            false => Err(corrupt("no sound header in wal.0 or wal.1")),
        };
    };
    let data = OpenOptions::new()
        .write(true)
        .open(dir.join("data.mdb"))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => corrupt("present without data.mdb"),
            _ => io(e),
        })?;
    data.write_all_at(meta, 0).map_err(io)?;
    data.sync_all().map_err(io)?;
    let mut commits = Vec::new();
    while let Some((body, next)) = record(bytes, at, generation) {
        commits.push(decode(body).ok_or_else(|| corrupt("a record with a sound checksum does not decode"))?);
        at = next;
    }
    if !commits.is_empty() {
        tracing::warn!(
            commits = commits.len(),
            "redoing commits from the write-ahead log after an unclean stop"
        );
    }
    Ok(Some(Restored {
        commits,
        bytes: at as u64,
        last: (generation, file),
    }))
}

/// A log file's header, if sound: its generation, meta pages, and where records start.
pub(super) fn header(bytes: &[u8]) -> Option<(u64, &[u8], usize)> {
    if bytes.get(..8)? != MAGIC || *bytes.get(8)? != FORMAT {
        return None;
    }
    let generation = u64::from_le_bytes(bytes.get(9..17)?.try_into().ok()?);
    let page = u32::from_le_bytes(bytes.get(17..21)?.try_into().ok()?) as usize;
    if !(512..=65536).contains(&page) || !page.is_power_of_two() {
        return None;
    }
    let end = HEAD + 2 * page;
    let sum = bytes.get(end..end + 8)?;
    (xxh3_64(&bytes[..end]).to_le_bytes() == sum).then_some((generation, &bytes[HEAD..end], end + 8))
}

/// The body of the record of `generation` at `at` and where the next starts; `None` at
/// the log's end: bytes cut short, a failed checksum, or a record of another generation.
pub(super) fn record(bytes: &[u8], at: usize, generation: u64) -> Option<(&[u8], usize)> {
    let head = bytes.get(at..at.checked_add(RECORD_HEAD)?)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(head[4..].try_into().ok()?);
    let start = at + RECORD_HEAD;
    let body = bytes.get(start..start.checked_add(len)?)?;
    (xxh3_64_with_seed(body, generation) == sum).then_some((body, start + len))
}

/// Appends one commit's changes to `out`.
fn encode(log: &[Logged], out: &mut Vec<u8>) {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.extend_from_slice(&(log.len() as u32).to_le_bytes());
    for l in log {
        match l {
            Logged::Put(k, v) => {
                out.push(PUT);
                bytes(out, k);
                bytes(out, v);
            }
            Logged::Delete(k) => {
                out.push(DELETE);
                bytes(out, k);
            }
            Logged::PutHint(k) => {
                out.push(PUT_HINT);
                bytes(out, k);
            }
            Logged::DeleteHint(k) => {
                out.push(DELETE_HINT);
                bytes(out, k);
            }
            Logged::Clear(before_ms) => {
                out.push(CLEAR);
                out.extend_from_slice(&before_ms.to_le_bytes());
            }
            Logged::RebuildTree(p) => {
                out.push(REBUILD_TREE);
                out.extend_from_slice(&p.to_le_bytes());
            }
        }
    }
}

/// Reads one commit's changes back; `None` if the body is malformed.
fn decode(body: &[u8]) -> Option<Vec<Logged>> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, rest) = self.0.split_at_checked(n)?;
            self.0 = rest;
            Some(head)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn bytes(&mut self) -> Option<Vec<u8>> {
            let n = self.u32()? as usize;
            Some(self.take(n)?.to_vec())
        }
    }
    let mut r = Reader(body);
    let count = r.u32()? as usize;
    // Every change takes at least three bytes: a count beyond that is malformed.
    let mut log = Vec::with_capacity(count.min(body.len() / 3));
    for _ in 0..count {
        let tag = r.take(1)?[0];
        log.push(match tag {
            PUT => Logged::Put(r.bytes()?, r.bytes()?),
            DELETE => Logged::Delete(r.bytes()?),
            PUT_HINT => Logged::PutHint(r.bytes()?),
            DELETE_HINT => Logged::DeleteHint(r.bytes()?),
            CLEAR => Logged::Clear(u64::from_le_bytes(r.take(8)?.try_into().ok()?)),
            REBUILD_TREE => Logged::RebuildTree(u16::from_le_bytes(r.take(2)?.try_into().ok()?)),
            _ => return None,
        });
    }
    r.0.is_empty().then_some(log)
}

/// A read transaction held on one LMDB state, on a thread of its own (the environment's
/// read transactions are bound to their thread), so LMDB keeps that state's pages.
struct Pin {
    release: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Pin {
    /// Pins the newest committed state.
    fn new(env: &Env<WithTls>) -> Result<Pin, StoreError> {
        let env = env.clone();
        let (release, released) = mpsc::channel::<()>();
        let (ready, pinned) = mpsc::channel::<Result<(), heed::Error>>();
        let thread = std::thread::Builder::new()
            .name("dynkv-pin".into())
            .spawn(move || match env.read_txn() {
                Ok(txn) => {
                    let _ = ready.send(Ok(()));
                    // Until the Pin is dropped (its sender closes).
                    let _ = released.recv();
                    drop(txn);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(io)?;
        // Dropped on failure too: its thread has ended or ends at once.
        let pin = Pin {
            release: Some(release),
            thread: Some(thread),
        };
        match pinned.recv() {
            Ok(Ok(())) => Ok(pin),
            Ok(Err(e)) => Err(StoreError::Lmdb(e)),
            Err(_) => Err(StoreError::Failed("the pinning thread died".into())),
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.release = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The open log (see the module docs).
pub(crate) struct Wal {
    files: [File; 2],
    /// The file of the newest checkpoint, its generation, and where its next record goes.
    current: usize,
    generation: u64,
    at: u64,
    /// `data.mdb`, to copy its meta pages from.
    data: File,
    page: usize,
    buf: Vec<u8>,
    commits: u32,
    last_page: usize,
    /// An append failed or a checkpoint did not finish: the log's tail may be torn or the
    /// state not pinned, so the next commit must be made durable by a checkpoint.
    broken: bool,
    pin: Option<Pin>,
    /// A flush of LMDB's file running ahead of a due checkpoint (see [`Wal::ready`]).
    preflush: Option<JoinHandle<()>>,
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Its thread holds the environment, which must close with the store.
        if let Some(t) = self.preflush.take() {
            let _ = t.join();
        }
    }
}

impl Wal {
    /// Starts the log of a just opened environment with a checkpoint, after the one
    /// `restored` came from, if any.
    pub(crate) fn start(dir: &Path, env: &Env<WithTls>, restored: Option<&Restored>) -> Result<Wal, StoreError> {
        let mut created = false;
        let mut open = |name: &str| -> Result<File, StoreError> {
            let path = dir.join(name);
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            if len < LOG_SIZE {
                // Zeros written for real: a hole or an unwritten extent would be
                // allocated by the first flush of each record, committing the journal.
                let zeros = vec![0u8; 1 << 20];
                let mut at = len;
                while at < LOG_SIZE {
                    let n = (LOG_SIZE - at).min(zeros.len() as u64) as usize;
                    file.write_all_at(&zeros[..n], at).map_err(io)?;
                    at += n as u64;
                }
                file.sync_all().map_err(io)?;
                created = true;
            }
            Ok(file)
        };
        let files = [open(FILES[0])?, open(FILES[1])?];
        if created {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        let (generation, current) = restored.map_or((0, 1), |r| r.last);
        let mut wal = Wal {
            files,
            current,
            generation,
            at: LOG_SIZE,
            data: env.try_clone_inner_file().map_err(StoreError::Lmdb)?,
            page: env.stat().page_size as usize,
            buf: Vec::new(),
            commits: 0,
            last_page: 0,
            broken: true,
            pin: None,
            preflush: None,
        };
        wal.checkpoint(env, || Ok(()))?;
        Ok(wal)
    }

    /// Whether a checkpoint is due (see the `CHECKPOINT_*` bounds), or needed to make the
    /// last commit durable after a failure.
    pub(crate) fn due(&self, env: &Env<WithTls>) -> bool {
        self.broken
            || self.commits >= CHECKPOINT_COMMITS
            || self.at >= CHECKPOINT_BYTES
            || env.info().last_page_number.saturating_sub(self.last_page) >= CHECKPOINT_PAGES
    }

    /// Whether a due checkpoint can run now. The first call starts a flush of LMDB's file
    /// on a thread of its own, while the writer goes on; once it is done the checkpoint's
    /// own flush, under the write lock, has only the pages written since, so commits are
    /// held up for a fraction of a millisecond instead of the whole flush.
    pub(crate) fn ready(&mut self, env: &Env<WithTls>) -> bool {
        match &self.preflush {
            Some(t) if t.is_finished() => true,
            Some(_) => false,
            None => {
                let env = env.clone();
                let spawned = std::thread::Builder::new()
                    .name("dynkv-preflush".into())
                    .spawn(move || {
                        if let Err(e) = env.force_sync() {
                            tracing::warn!("flush ahead of a checkpoint failed: {e}");
                        }
                    });
                match spawned {
                    Ok(t) => {
                        self.preflush = Some(t);
                        false
                    }
                    // The checkpoint flushes everything itself.
                    Err(_) => true,
                }
            }
        }
    }

    /// Makes commits LMDB has made durable: writes their changes to the log in commit
    /// order, one record each, and flushes the log once. `Ok(false)`: nothing was
    /// written, as the log failed before (its tail may be torn) or has no room for them;
    /// a checkpoint must make them durable.
    pub(crate) fn write(&mut self, logs: &[&[Logged]]) -> Result<bool, StoreError> {
        if self.broken {
            return Ok(false);
        }
        self.buf.clear();
        let mut records = 0;
        for log in logs.iter().filter(|l| !l.is_empty()) {
            let at = self.buf.len();
            self.buf.extend_from_slice(&[0; RECORD_HEAD]);
            encode(log, &mut self.buf);
            let Ok(len) = u32::try_from(self.buf.len() - at - RECORD_HEAD) else {
                return Ok(false);
            };
            let sum = xxh3_64_with_seed(&self.buf[at + RECORD_HEAD..], self.generation);
            self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
            self.buf[at + 4..at + RECORD_HEAD].copy_from_slice(&sum.to_le_bytes());
            records += 1;
        }
        if records == 0 {
            return Ok(true);
        }
        if self.at + self.buf.len() as u64 > LOG_SIZE {
            return Ok(false);
        }
        let file = &self.files[self.current];
        let written = file
            .write_all_at(&self.buf, self.at)
            .and_then(|()| file.sync_data())
            .map_err(io);
        let len = self.buf.len() as u64;
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        match written {
            Ok(()) => {
                self.commits += records;
                self.at += len;
                Ok(true)
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Flushes LMDB and starts the other log file from its current state, then pins that
    /// state. `between` runs after the old pin is released and before the new one is
    /// taken (the map's resize, which needs no transaction open). The caller holds the
    /// write lock and has no write transaction open.
    pub(crate) fn checkpoint(
        &mut self,
        env: &Env<WithTls>,
        between: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        if let Some(t) = self.preflush.take() {
            let _ = t.join();
        }
        self.broken = true;
        env.force_sync().map_err(StoreError::Lmdb)?;
        let mut meta = vec![0u8; 2 * self.page];
        self.data.read_exact_at(&mut meta, 0).map_err(io)?;
        for p in meta.chunks(self.page) {
            if p.get(16..20).map(|m| u32::from_ne_bytes([m[0], m[1], m[2], m[3]])) != Some(LMDB_MAGIC) {
                return Err(StoreError::Corrupt("data.mdb: a meta page without LMDB's magic".into()));
            }
        }
        let generation = self.generation + 1;
        let mut head = Vec::with_capacity(HEAD + meta.len() + 8);
        head.extend_from_slice(MAGIC);
        head.push(FORMAT);
        head.extend_from_slice(&generation.to_le_bytes());
        head.extend_from_slice(&(self.page as u32).to_le_bytes());
        head.extend_from_slice(&meta);
        let sum = xxh3_64(&head);
        head.extend_from_slice(&sum.to_le_bytes());
        let next = 1 - self.current;
        let file = &self.files[next];
        file.write_all_at(&head, 0)
            .and_then(|()| file.sync_data())
            .map_err(io)?;
        // From here a crash restores this checkpoint: the old state need not be kept.
        self.current = next;
        self.generation = generation;
        self.at = head.len() as u64;
        self.pin = None;
        between()?;
        self.pin = Some(Pin::new(env)?);
        self.commits = 0;
        self.last_page = env.info().last_page_number;
        self.broken = false;
        ::metrics::histogram!(crate::metrics::CHECKPOINT_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Removes the log `restored` came from, once its commits are redone and durable in an
/// environment that runs without a log (`fsync = everysec | no`). The file of the older
/// checkpoint goes first: a log left with only that file would restore a state whose
/// pages LMDB may have reused since.
pub(crate) fn remove(dir: &Path, restored: &Restored) -> Result<(), StoreError> {
    let newest = restored.last.1;
    for file in [1 - newest, newest] {
        match std::fs::remove_file(dir.join(FILES[file])) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_encodes_and_decodes_to_the_same_changes() {
        let log = vec![
            Logged::Put(b"\x00\x01k".to_vec(), vec![7; 300]),
            Logged::Delete(b"gone".to_vec()),
            Logged::PutHint(b"hint".to_vec()),
            Logged::DeleteHint(vec![]),
            Logged::Clear(u64::MAX - 3),
            Logged::RebuildTree(16383),
        ];
        let mut out = Vec::new();
        encode(&log, &mut out);
        let back = decode(&out).expect("decodes");
        let mut again = Vec::new();
        encode(&back, &mut again);
        assert_eq!(out, again);
        assert_eq!(back.len(), 6);
        // Every strict prefix is malformed, as is a trailing byte or an unknown tag.
        for cut in 0..out.len() {
            assert!(decode(&out[..cut]).is_none(), "prefix of {cut} bytes decoded");
        }
        let mut long = out.clone();
        long.push(0);
        assert!(decode(&long).is_none());
        let mut bad = Vec::new();
        encode(&[Logged::Delete(vec![1])], &mut bad);
        bad[4] = 99;
        assert!(decode(&bad).is_none());
    }

    #[test]
    fn a_record_cut_short_or_altered_is_refused() {
        let mut body = Vec::new();
        encode(&[Logged::Put(b"k".to_vec(), b"v".to_vec())], &mut body);
        let mut rec = (body.len() as u32).to_le_bytes().to_vec();
        rec.extend_from_slice(&xxh3_64_with_seed(&body, 7).to_le_bytes());
        rec.extend_from_slice(&body);
        assert_eq!(record(&rec, 0, 7), Some((&body[..], rec.len())));
        // A record of another generation (left from an older use of the file) ends the log.
        assert_eq!(record(&rec, 0, 5), None);
        for cut in 0..rec.len() {
            assert_eq!(record(&rec[..cut], 0, 7), None, "cut at {cut}");
        }
        for i in 0..rec.len() {
            let mut flipped = rec.clone();
            flipped[i] ^= 0x10;
            assert_ne!(record(&flipped, 0, 7), Some((&body[..], rec.len())), "flip at {i}");
        }
        // A declared length near u32::MAX is refused without reading or allocating, and
        // the zeros of an unused tail are no record.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 20]);
        assert_eq!(record(&huge, 0, 7), None);
        assert_eq!(record(&[0; 64], 0, 7), None);
    }
}
