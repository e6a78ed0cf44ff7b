//! Merkle anti-entropy: a background worker that compares this node's partition trees
//! with each other replica's and exchanges only the records that differ, merging them as
//! replicas do. Repairs what hinted handoff cannot: a lost hint, a replaced disk, a write
//! a replica missed while it timed out. Must not decide liveness or placement: it moves
//! sibling sets, and merging them is idempotent.
//!
//! One exchange with a peer walks down only where hashes differ: group hashes of 256
//! partitions (one message of a few KB), then the roots of the partitions in differing
//! groups, their leaves, the keys of differing leaves, and finally the differing records
//! in both directions. Its cost grows with the difference, not with the data. Every
//! message is counted against a byte rate ([`Throttle`]), so anti-entropy never takes
//! more than its configured share of the network and of the disk reads behind it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use super::Coordinator;
use crate::cluster::messages::{self, Request, Response};
use crate::cluster::{MemberInfo, View};
use crate::error::StoreError;
use crate::metrics as m;
use crate::ring::PARTITIONS;
use crate::shutdown::Shutdown;
use crate::storage::{Change, Store, record_hash_of};
use crate::version::NodeId;
use crate::version::SiblingSet;

/// Partitions per leaves request.
const PARTITIONS_PER_STEP: usize = 64;
/// Leaves per keys request.
const LEAVES_PER_STEP: usize = 256;
/// Records per fetch or merge message.
const RECORDS_PER_STEP: usize = 256;
/// A fetch answer or a merge message stops growing past this many bytes of records.
const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Pause after each tree rebuild step (one bounded write transaction), so that client
/// writes queued meanwhile go first.
const REBUILD_PAUSE: Duration = Duration::from_millis(5);

/// Why an exchange stopped.
#[derive(Debug, Error)]
pub enum AeError {
    /// The peer did not answer, or answered with an error.
    #[error("peer: {0}")]
    Peer(String),
    /// The local store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The peer answered something that does not fit the request.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// This node's trees are still being rebuilt.
    #[error("anti-entropy trees are being rebuilt")]
    NotReady,
}

/// The other side of an exchange: sends one encoded request, returns the encoded response.
pub trait Remote {
    /// One round trip.
    fn call(&self, request: Bytes) -> impl std::future::Future<Output = Result<Bytes, String>> + Send;
}

/// A peer reached through the coordinator's internode connections.
pub struct PeerRemote {
    coord: Coordinator,
    member: MemberInfo,
}

impl PeerRemote {
    /// The peer `member`, reached from `coord`.
    pub fn new(coord: Coordinator, member: MemberInfo) -> PeerRemote {
        PeerRemote { coord, member }
    }
}

impl Remote for PeerRemote {
    async fn call(&self, request: Bytes) -> Result<Bytes, String> {
        self.coord.call_bytes(&self.member, request, 10).await
    }
}

/// A byte-rate limit shared by everything anti-entropy sends and receives.
pub struct Throttle {
    bytes_per_sec: f64,
    next: tokio::sync::Mutex<Instant>,
}

impl Throttle {
    /// At most `bytes_per_sec` on average (0: no limit).
    pub fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            bytes_per_sec: bytes_per_sec as f64,
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    /// Accounts for `bytes` and waits until the rate allows them.
    pub async fn take(&self, bytes: usize) {
        if self.bytes_per_sec <= 0.0 {
            return;
        }
        let wait = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            // Idle time banks at most a second of credit.
            let floor = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
            *next = (*next).max(floor) + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            next.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// What one exchange did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Partitions whose roots differed.
    pub partitions: usize,
    /// Leaves whose hashes differed.
    pub leaves: usize,
    /// Records fetched from the peer.
    pub fetched: usize,
    /// Records sent to the peer.
    pub pushed: usize,
    /// Local records the fetched ones changed.
    pub repaired: usize,
    /// Bytes of requests sent.
    pub bytes_sent: usize,
    /// Bytes of responses received.
    pub bytes_received: usize,
    /// Requests sent.
    pub round_trips: usize,
}

/// A bitmap of partitions (bit `p` set for partition `p`).
pub fn bitmap(partitions: &[u16]) -> Vec<u8> {
    let mut bm = vec![0u8; usize::from(PARTITIONS) / 8];
    for &p in partitions {
        if let Some(b) = bm.get_mut(usize::from(p) / 8) {
            *b |= 1 << (p % 8);
        }
    }
    bm
}

fn in_bitmap(bm: &[u8], p: u16) -> bool {
    bm.get(usize::from(p) / 8).is_some_and(|b| b & (1 << (p % 8)) != 0)
}

/// Group sizes of the descent: 64 groups of 256 partitions, then groups of 16, then
/// single partitions. Each step sends only the children of the groups that differed, so
/// a few differing keys cost a few KB of hashes, not one hash per partition.
const GROUP_SIZES: [u16; 3] = [256, 16, 1];

/// Every partition's root (zero where none is stored), restricted to the partitions in `bm`.
fn root_table(roots: &[(u16, u128)], bm: &[u8]) -> Vec<u128> {
    let mut table = vec![0u128; usize::from(PARTITIONS)];
    for &(p, h) in roots {
        if in_bitmap(bm, p) {
            table[usize::from(p)] = h;
        }
    }
    table
}

/// The hash of group `index` of `size` partitions: the XOR of its roots.
fn group_hash(table: &[u128], size: u16, index: u16) -> u128 {
    let start = usize::from(index) * usize::from(size);
    table
        .get(start..start + usize::from(size))
        .map_or(0, |roots| roots.iter().fold(0, |a, b| a ^ b))
}

struct Session<'a, R: Remote> {
    remote: &'a R,
    throttle: &'a Throttle,
    report: Report,
}

impl<R: Remote> Session<'_, R> {
    async fn ask(&mut self, req: &Request) -> Result<Response, AeError> {
        let bytes = messages::encode(req);
        self.throttle.take(bytes.len()).await;
        self.report.bytes_sent += bytes.len();
        self.report.round_trips += 1;
        let answer = self.remote.call(bytes).await.map_err(AeError::Peer)?;
        self.report.bytes_received += answer.len();
        self.throttle.take(answer.len()).await;
        match messages::decode::<Response>(&answer) {
            Ok(Response::Error(e)) => Err(AeError::Peer(e)),
            Ok(r) => Ok(r),
            Err(e) => Err(AeError::Protocol(e.to_string())),
        }
    }
}

/// Compares the trees of the partitions in `shared` with `remote`'s and exchanges the
/// records that differ in both directions, so that afterwards both hold the merge of
/// both versions of every key that differed.
pub async fn exchange(
    local: &Store,
    remote: &impl Remote,
    shared: &[u16],
    view: (u64, u8),
    throttle: &Throttle,
) -> Result<Report, AeError> {
    if !local.trees_ready() {
        return Err(AeError::NotReady);
    }
    let mut s = Session {
        remote,
        throttle,
        report: Report::default(),
    };
    let bm = bitmap(shared);
    let table = root_table(&local.tree_roots()?, &bm);
    // Descend from 64 groups to single partitions, only into groups that differ.
    let mut candidates: Vec<u16> = (0..PARTITIONS / GROUP_SIZES[0]).collect();
    let mut differing = Vec::new();
    for (level, &size) in GROUP_SIZES.iter().enumerate() {
        let groups: Vec<(u16, u128)> = candidates.iter().map(|&g| (g, group_hash(&table, size, g))).collect();
        let differ = match s
            .ask(&Request::AeGroups {
                view,
                partitions: bm.clone(),
                size,
                groups,
            })
            .await?
        {
            Response::Differ(d) => d,
            other => return Err(AeError::Protocol(format!("{other:?}"))),
        };
        // Candidates are ascending: a binary search checks the answer cheaply.
        if differ.iter().any(|g| candidates.binary_search(g).is_err()) {
            return Err(AeError::Protocol("a group that was not asked about differs".into()));
        }
        match GROUP_SIZES.get(level + 1) {
            Some(&next) => {
                let fan = size / next;
                candidates = differ.iter().flat_map(|&g| g * fan..(g + 1) * fan).collect();
            }
            None => differing = differ.into_iter().filter(|&p| in_bitmap(&bm, p)).collect(),
        }
        if candidates.is_empty() {
            break;
        }
    }
    s.report.partitions = differing.len();
    for chunk in differing.chunks(PARTITIONS_PER_STEP) {
        let theirs = match s
            .ask(&Request::AeLeaves {
                partitions: chunk.to_vec(),
            })
            .await?
        {
            Response::Leaves(l) => l,
            other => return Err(AeError::Protocol(format!("{other:?}"))),
        };
        let mine = local.tree_leaves(chunk)?.into_iter().map(|(p, l, h)| ((p, l), h));
        let theirs = theirs
            .into_iter()
            .filter(|(p, _, _)| chunk.contains(p))
            .map(|(p, l, h)| ((p, l), h));
        let leaves: Vec<(u16, u8)> = differing_entries(mine, theirs).into_iter().map(|(k, _, _)| k).collect();
        s.report.leaves += leaves.len();
        for lchunk in leaves.chunks(LEAVES_PER_STEP) {
            sync_leaves(local, &mut s, lchunk).await?;
        }
    }
    Ok(s.report)
}

/// The entries whose hashes differ between two lists of (name, hash), with this node's
/// hash and the peer's (0 where one side has no entry), in name order.
fn differing_entries<K: Ord>(
    mine: impl IntoIterator<Item = (K, u128)>,
    theirs: impl IntoIterator<Item = (K, u128)>,
) -> Vec<(K, u128, u128)> {
    let mut all: std::collections::BTreeMap<K, (u128, u128)> = std::collections::BTreeMap::new();
    for (k, h) in mine {
        all.entry(k).or_default().0 = h;
    }
    for (k, h) in theirs {
        all.entry(k).or_default().1 = h;
    }
    all.into_iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(k, (a, b))| (k, a, b))
        .collect()
}

/// Exchanges the differing records of some leaves.
async fn sync_leaves<R: Remote>(local: &Store, s: &mut Session<'_, R>, leaves: &[(u16, u8)]) -> Result<(), AeError> {
    let theirs = match s
        .ask(&Request::AeKeys {
            leaves: leaves.to_vec(),
        })
        .await?
    {
        Response::KeyHashes(k) => k,
        other => return Err(AeError::Protocol(format!("{other:?}"))),
    };
    let mine = local.leaf_records(leaves)?;
    let theirs = theirs.into_iter().map(|(k, h)| (k.to_vec(), h));
    let mut fetch = Vec::new();
    let mut push = Vec::new();
    for (k, a, b) in differing_entries(mine, theirs) {
        if b != 0 {
            fetch.push(Bytes::from(k.clone()));
        }
        // Where this node had nothing, the fetched version is what the peer has.
        if a != 0 {
            push.push((k, b));
        }
    }
    // Fetch first: what is pushed afterwards is the merge of both versions.
    let mut rest = &fetch[..];
    while !rest.is_empty() {
        let ask = &rest[..rest.len().min(RECORDS_PER_STEP)];
        let records = match s.ask(&Request::AeFetch { keys: ask.to_vec() }).await? {
            Response::Records(r) => r,
            other => return Err(AeError::Protocol(format!("{other:?}"))),
        };
        if records.is_empty() || records.len() > ask.len() {
            return Err(AeError::Protocol(format!(
                "{} records for {} keys",
                records.len(),
                ask.len()
            )));
        }
        rest = &rest[records.len()..];
        let mut items = Vec::with_capacity(records.len());
        for (key, set) in records.into_iter().flatten() {
            let set = SiblingSet::decode(&set).map_err(|e| AeError::Protocol(format!("bad sibling set: {e}")))?;
            items.push((key, set));
        }
        s.report.fetched += items.len();
        s.report.repaired += merge_many(local, items).await?;
    }
    // Push this node's (now merged) copies of every differing key it holds, unless the
    // merge made it equal to the peer's (the peer's version was newer).
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for chunk in push.chunks(RECORDS_PER_STEP) {
        let lkeys: Vec<Vec<u8>> = chunk.iter().map(|(k, _)| k.clone()).collect();
        for (item, (_, theirs)) in local.records_at(&lkeys)?.into_iter().zip(chunk) {
            let Some(item) = item else { continue };
            if record_hash_of(&item.key, &item.set) == *theirs {
                continue;
            }
            let set = Bytes::from(item.set.to_bytes());
            batch_bytes += item.key.len() + set.len();
            batch.push((item.key, set));
            if batch.len() >= RECORDS_PER_STEP || batch_bytes >= MAX_MESSAGE_BYTES {
                push_batch(s, std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
        }
    }
    if !batch.is_empty() {
        push_batch(s, batch).await?;
    }
    Ok(())
}

async fn push_batch<R: Remote>(s: &mut Session<'_, R>, items: Vec<(Bytes, Bytes)>) -> Result<(), AeError> {
    let n = items.len();
    match s.ask(&Request::AeMerge { items }).await? {
        Response::Ack => {
            s.report.pushed += n;
            Ok(())
        }
        other => Err(AeError::Protocol(format!("{other:?}"))),
    }
}

/// Merges each (key, set) into this node's copy, durably, in one queued write; returns
/// how many copies changed.
pub async fn merge_many(store: &Store, items: Vec<(Bytes, SiblingSet)>) -> Result<usize, StoreError> {
    if items.is_empty() {
        return Ok(0);
    }
    let (keys, sets): (Vec<Bytes>, Vec<SiblingSet>) = items.into_iter().unzip();
    store
        .update_many(keys, move |current| {
            let mut changed = 0;
            let changes = current
                .into_iter()
                .zip(sets)
                .map(|(cur, set)| match cur {
                    Some(mut c) => {
                        let before = c.clone();
                        c.merge(&set);
                        if c == before {
                            Change::Keep
                        } else {
                            changed += 1;
                            Change::Put(c)
                        }
                    }
                    None => {
                        changed += 1;
                        Change::Put(set)
                    }
                })
                .collect();
            (changes, changed)
        })
        .await
}

/// Serves the anti-entropy and reaping requests of a peer from the local store, for a
/// node whose membership view is `view` (fingerprint, N), counting repairs in `stats`;
/// `None` for any other request.
pub async fn serve(store: &Store, req: &Request, view: (u64, u8), stats: &AeStats) -> Option<Response> {
    let failed = |e: StoreError| Response::Error(e.to_string());
    let not_ready = || Response::Error(AeError::NotReady.to_string());
    let other_view = || Response::Error("membership views differ; try again once they agree".into());
    Some(match req {
        Request::AeGroups { view: theirs, .. } | Request::ReapCheck { view: theirs, .. } if *theirs != view => {
            other_view()
        }
        Request::AeGroups {
            partitions,
            size,
            groups,
            ..
        } => {
            if !store.trees_ready() {
                return Some(not_ready());
            }
            if !GROUP_SIZES.contains(size) || groups.len() > usize::from(PARTITIONS) {
                return Some(Response::Error("bad anti-entropy group request".into()));
            }
            match store.tree_roots() {
                Ok(roots) => {
                    let table = root_table(&roots, partitions);
                    let differ = groups
                        .iter()
                        .filter(|&&(g, h)| group_hash(&table, *size, g) != h)
                        .map(|&(g, _)| g)
                        .collect();
                    Response::Differ(differ)
                }
                Err(e) => failed(e),
            }
        }
        Request::AeLeaves { partitions } => {
            if !store.trees_ready() {
                return Some(not_ready());
            }
            match store.tree_leaves(&partitions[..partitions.len().min(PARTITIONS_PER_STEP)]) {
                Ok(l) => Response::Leaves(l),
                Err(e) => failed(e),
            }
        }
        Request::AeKeys { leaves } => match store.leaf_records(&leaves[..leaves.len().min(LEAVES_PER_STEP)]) {
            Ok(k) => Response::KeyHashes(k.into_iter().map(|(k, h)| (Bytes::from(k), h)).collect()),
            Err(e) => failed(e),
        },
        Request::AeFetch { keys } => {
            let keys: Vec<Vec<u8>> = keys.iter().take(RECORDS_PER_STEP).map(|k| k.to_vec()).collect();
            match store.records_at(&keys) {
                Ok(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    let mut bytes = 0;
                    for it in items {
                        if bytes >= MAX_MESSAGE_BYTES {
                            break;
                        }
                        out.push(it.map(|it| {
                            let set = Bytes::from(it.set.to_bytes());
                            bytes += it.key.len() + set.len();
                            (it.key, set)
                        }));
                    }
                    Response::Records(out)
                }
                Err(e) => failed(e),
            }
        }
        Request::AeMerge { items } => {
            let mut decoded = Vec::with_capacity(items.len());
            for (k, set) in items {
                match SiblingSet::decode(set) {
                    Ok(s) => decoded.push((k.clone(), s)),
                    Err(e) => return Some(Response::Error(format!("bad sibling set: {e}"))),
                }
            }
            match merge_many(store, decoded).await {
                Ok(changed) => {
                    stats.keys_repaired.fetch_add(changed as u64, Ordering::Relaxed);
                    ::metrics::counter!(m::AE_KEYS_REPAIRED).increment(changed as u64);
                    Response::Ack
                }
                Err(e) => failed(e),
            }
        }
        Request::ReapCheck { keys, .. } => match store.hashes_and_hints(keys) {
            Ok(v) => Response::ReapState(v),
            Err(e) => failed(e),
        },
        Request::Reap { items } => match super::reap::reap_local(store, items.clone()).await {
            Ok(n) => Response::Count(n, 0),
            Err(e) => failed(e),
        },
        _ => return None,
    })
}

/// Counters of the anti-entropy worker, for INFO.
#[derive(Debug, Default)]
pub struct AeStats {
    /// Exchanges completed.
    pub exchanges: std::sync::atomic::AtomicU64,
    /// Exchanges that failed.
    pub failed: std::sync::atomic::AtomicU64,
    /// Local records changed by anti-entropy (versions fetched here or pushed by a peer).
    pub keys_repaired: std::sync::atomic::AtomicU64,
    /// Records sent to peers.
    pub keys_pushed: std::sync::atomic::AtomicU64,
    /// Bytes of anti-entropy requests sent.
    pub bytes_sent: std::sync::atomic::AtomicU64,
}

/// The partitions both this node and `peer` replicate (as home replicas).
/// Takes everything from one view: the partition list and the fingerprint sent with it
/// must describe the same placement, or a node that learned a member in between would
/// exchange partitions it does not replicate.
pub fn shared_partitions(view: &View, n: usize, me: NodeId, peer: NodeId) -> Vec<u16> {
    (0..PARTITIONS)
        .filter(|&p| {
            let home = view.placement().replicas(p, n);
            let mut has_me = false;
            let mut has_peer = false;
            for id in home {
                has_me |= id == me;
                has_peer |= id == peer;
            }
            has_me && has_peer
        })
        .collect()
}

/// Rebuilds missing trees, then runs one exchange every `interval`, with the next peer
/// in turn that the failure detector calls up, until shutdown.
pub async fn run(coord: Coordinator, shutdown: Shutdown, interval: Duration, throttle: Throttle) {
    let store = coord.store().clone();
    while !shutdown.is_triggered() {
        match store.rebuild_tree_step().await {
            Ok(true) => tokio::time::sleep(REBUILD_PAUSE).await,
            Ok(false) => break,
            Err(e) => {
                tracing::error!("anti-entropy tree rebuild failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let Some(cluster) = coord.cluster() else {
        return;
    };
    let stats = coord.ae_stats();
    let mut turn = 0usize;
    let mut tick = shutdown.ticker(interval);
    // The first tick is immediate: skip it, so a node starts exchanging one interval
    // after it started (it has learned its peers by then).
    if !tick.next().await {
        return;
    }
    while tick.next().await {
        let view = cluster.membership.view();
        let peers: Vec<MemberInfo> = view
            .members()
            .iter()
            .filter(|mm| mm.id != coord.node_id())
            .cloned()
            .collect();
        if peers.is_empty() {
            continue;
        }
        turn = turn.wrapping_add(1);
        let peer = peers[turn % peers.len()].clone();
        if !cluster.health.is_up(peer.id, Instant::now()) {
            continue;
        }
        let n = cluster.configured.n.min(view.members().len()).max(1);
        let shared = shared_partitions(&view, n, coord.node_id(), peer.id);
        if shared.is_empty() {
            continue;
        }
        let started = Instant::now();
        let remote = PeerRemote::new(coord.clone(), peer.clone());
        let fingerprint = (view.fingerprint(), n.min(usize::from(u8::MAX)) as u8);
        let result = exchange(&store, &remote, &shared, fingerprint, &throttle).await;
        match result {
            Ok(r) => {
                stats.exchanges.fetch_add(1, Ordering::Relaxed);
                stats.keys_repaired.fetch_add(r.repaired as u64, Ordering::Relaxed);
                stats.keys_pushed.fetch_add(r.pushed as u64, Ordering::Relaxed);
                stats.bytes_sent.fetch_add(r.bytes_sent as u64, Ordering::Relaxed);
                ::metrics::counter!(m::AE_EXCHANGES, "outcome" => "ok").increment(1);
                ::metrics::counter!(m::AE_KEYS_REPAIRED).increment(r.repaired as u64);
                ::metrics::counter!(m::AE_BYTES, "direction" => "sent").increment(r.bytes_sent as u64);
                ::metrics::counter!(m::AE_BYTES, "direction" => "received").increment(r.bytes_received as u64);
                if r.fetched + r.pushed > 0 {
                    tracing::info!(
                        peer = %format!("{:016x}", peer.id),
                        partitions = r.partitions,
                        fetched = r.fetched,
                        pushed = r.pushed,
                        repaired = r.repaired,
                        bytes = r.bytes_sent + r.bytes_received,
                        ms = started.elapsed().as_millis() as u64,
                        "anti-entropy exchange repaired replicas"
                    );
                }
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                ::metrics::counter!(m::AE_EXCHANGES, "outcome" => "failed").increment(1);
                tracing::debug!(peer = %format!("{:016x}", peer.id), "anti-entropy exchange failed: {e}");
            }
        }
    }
}
