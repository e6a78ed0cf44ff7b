//! Moving partitions when the ring changes (a join, a leave, a removal, a weight change).
//! Must not decide membership: operators do, through the member table; this worker moves
//! data so that each change completes without losing a write.
//!
//! While the target placement differs from the read placement, every node pulls the
//! partitions it gains (it is a target replica but not a read replica) from each of
//! their current replicas that answers: a chunked scan of the partition's key range,
//! merged as replicas merge, throttled, with its position kept in the store after every
//! chunk, so that a crash or a dropped connection resumes where it stopped, never from
//! zero. Meanwhile writes reach both old and new replicas (see `Placed::extra`), so no
//! acknowledged write falls into a gap. A node that has pulled everything reports the
//! view synced; once every target member has, any node completes the change (the read
//! placement becomes the target). Then each node hands the records it holds but no
//! longer replicates to their replicas and drops each only after all of them confirmed
//! it durably (records held as hints are left to hinted handoff).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Coordinator;
use super::antientropy::{Throttle, merge_many};
use crate::cluster::View;
use crate::cluster::messages::{self, Request, Response};
use crate::metrics as m;
use crate::ring::{PARTITIONS, partition_of};
use crate::shutdown::Shutdown;
use crate::storage::{ScanItem, record_hash_of};
use crate::version::{NodeId, SiblingSet};

/// Records per pulled chunk.
const CHUNK: u32 = 256;
/// Records examined per drop round.
const DROP_BATCH: usize = 256;
/// Time between rounds.
const ROUND: Duration = Duration::from_millis(200);
/// Metadata key of the pull's position.
const PROGRESS_KEY: &[u8] = b"transfer-progress";

/// Where a pull stands, kept in the store after every chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    /// The view whose partitions are pulled.
    view: u64,
    /// Sources (current replicas) whose part is fully pulled.
    done: Vec<NodeId>,
    /// The source in progress.
    source: NodeId,
    /// Scan position reached in that source's part.
    cursor: u64,
    /// Records and bytes received for this view so far.
    keys: u64,
    bytes: u64,
}

/// Counters of the rebalancer, for INFO and admin status.
#[derive(Debug, Default)]
pub struct RebalanceStats {
    /// Partitions this node gains in the current change.
    pub partitions_total: AtomicU64,
    /// Of those, pulled.
    pub partitions_done: AtomicU64,
    /// Records received by pulls (this change).
    pub keys_in: AtomicU64,
    /// Bytes received by pulls (this change, resumes included).
    pub bytes_in: AtomicU64,
    /// Records handed over and dropped since start.
    pub keys_dropped: AtomicU64,
    /// Milliseconds since the epoch when the current pull started (0: none).
    pub started_ms: AtomicU64,
}

/// N of a placement with `members` members.
fn n_for(coord: &Coordinator, members: usize) -> usize {
    coord.cluster().map_or(1, |c| c.configured.n.min(members).max(1))
}

/// Runs the rebalancer until shutdown.
pub async fn run(coord: Coordinator, shutdown: Shutdown, throttle: Throttle) {
    let Some(cluster) = coord.cluster() else {
        return;
    };
    let membership = cluster.membership.clone();
    let mut drop_cursor = 0u64;
    // The partitions this node does not replicate, for the view they were computed in
    // (recomputed only when the view changes, not every round).
    let mut foreign: Option<(u64, Vec<u16>)> = None;
    let mut tick = shutdown.ticker(ROUND);
    while tick.next().await {
        if !membership.has_met() {
            continue;
        }
        let view = membership.view();
        let fp = view.fingerprint();
        let me = coord.node_id();
        let Some(mine) = view.record(me) else { continue };
        if view.in_transition() {
            if mine.target.value.is_some() && mine.synced.value != fp {
                match pull(&coord, &throttle, &shutdown).await {
                    Ok(true) => {
                        if membership.set_synced(fp) {
                            tracing::info!(view = format!("{fp:016x}"), "partitions pulled; view synced");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("partition pull interrupted: {e}"),
                }
            }
            if membership.complete(fp) {
                tracing::info!(view = format!("{fp:016x}"), "ring change complete");
            }
            continue;
        }
        let n = n_for(&coord, view.members().len());
        let (_, parts) = match &mut foreign {
            Some(f) if f.0 == fp => f,
            slot => slot.insert((
                fp,
                (0..PARTITIONS)
                    .filter(|&p| !view.replicas(p, n).contains(&me))
                    .collect(),
            )),
        };
        match drop_round(&coord, &view, parts, drop_cursor).await {
            Ok(next) => drop_cursor = next,
            Err(e) => tracing::warn!("handing over records failed: {e}"),
        }
    }
}

/// Pulls every partition this node gains in the current view from each of its current
/// replicas; true when every such partition came from at least one of them (false: the
/// view changed meanwhile, shutdown, or a partition had no source answering yet).
async fn pull(coord: &Coordinator, throttle: &Throttle, shutdown: &Shutdown) -> Result<bool, String> {
    let c = coord.cluster().ok_or("no cluster")?;
    let stats = coord.rebalance_stats();
    let view = c.membership.view();
    let fp = view.fingerprint();
    let me = coord.node_id();
    let n_read = n_for(coord, view.members().len());
    let n_target = n_for(coord, view.target().members().len());
    let gained: Vec<u16> = (0..PARTITIONS)
        .filter(|&p| view.target_replicas(p, n_target).contains(&me) && !view.replicas(p, n_read).contains(&me))
        .collect();
    // Each source's part: the gained partitions it replicates now (ascending).
    let mut parts: BTreeMap<NodeId, Vec<u16>> = BTreeMap::new();
    for &p in &gained {
        for s in view.replicas(p, n_read).into_iter().filter(|s| *s != me) {
            parts.entry(s).or_default().push(p);
        }
    }
    let store = coord.store();
    let mut progress: Progress = store
        .meta_get(PROGRESS_KEY)
        .ok()
        .flatten()
        .and_then(|b| messages::decode(&b).ok())
        .filter(|p: &Progress| p.view == fp)
        .unwrap_or(Progress {
            view: fp,
            ..Progress::default()
        });
    let served = |done: &[NodeId]| -> u64 {
        gained
            .iter()
            .filter(|&&p| view.replicas(p, n_read).iter().any(|s| done.contains(s)))
            .count() as u64
    };
    stats.partitions_total.store(gained.len() as u64, Ordering::Relaxed);
    stats.partitions_done.store(served(&progress.done), Ordering::Relaxed);
    stats.keys_in.store(progress.keys, Ordering::Relaxed);
    stats.bytes_in.store(progress.bytes, Ordering::Relaxed);
    if stats.started_ms.load(Ordering::Relaxed) == 0 {
        stats.started_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
    }
    if progress.bytes > 0 {
        tracing::info!(
            partitions = gained.len(),
            sources_done = progress.done.len(),
            bytes = progress.bytes,
            keys = progress.keys,
            "resuming partition pull"
        );
    }
    for (&source, partitions) in &parts {
        if progress.done.contains(&source) {
            continue;
        }
        let Some(member) = view.member(source).cloned() else {
            continue;
        };
        // A source the failure detector calls down is skipped (another replica serves;
        // a removed dead node never will).
        if !c.health.is_up(source, std::time::Instant::now()) {
            continue;
        }
        let mut cursor = if progress.source == source { progress.cursor } else { 0 };
        progress.source = source;
        let mut complete = true;
        loop {
            if shutdown.is_triggered() || c.membership.view().fingerprint() != fp {
                return Ok(false);
            }
            let req = Request::ScanParts {
                partitions: partitions.clone(),
                cursor,
                count: CHUNK,
            };
            let bytes = messages::encode(&req);
            throttle.take(bytes.len()).await;
            let answer = coord.call_bytes(&member, bytes, 10).await;
            let (next, items) = match answer.map(|b| messages::decode::<Response>(&b).map_err(|e| e.to_string())) {
                Ok(Ok(Response::Scan { next, items })) => (next, items),
                other => {
                    tracing::debug!(source = format!("{source:016x}"), "pull chunk failed: {other:?}");
                    complete = false;
                    break;
                }
            };
            let size: usize = items.iter().map(|(k, s)| k.len() + s.len()).sum();
            throttle.take(size).await;
            let mut sets = Vec::with_capacity(items.len());
            for (k, s) in items {
                let set = SiblingSet::decode(&s).map_err(|e| format!("bad sibling set from a source: {e}"))?;
                sets.push((k, set));
            }
            let count = sets.len() as u64;
            merge_many(store, sets).await.map_err(|e| e.to_string())?;
            if count > 0 {
                progress.keys += count;
                progress.bytes += size as u64;
                progress.cursor = next;
                stats.keys_in.store(progress.keys, Ordering::Relaxed);
                stats.bytes_in.store(progress.bytes, Ordering::Relaxed);
                ::metrics::counter!(m::TRANSFER_KEYS).increment(count);
                ::metrics::counter!(m::TRANSFER_BYTES).increment(size as u64);
                let _ = store.meta_put(PROGRESS_KEY, &messages::encode(&progress));
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if complete {
            progress.done.push(source);
            progress.cursor = 0;
            stats.partitions_done.store(served(&progress.done), Ordering::Relaxed);
            let _ = store.meta_put(PROGRESS_KEY, &messages::encode(&progress));
        }
    }
    // Every gained partition must have come from at least one of its current replicas.
    let all = gained.iter().all(|&p| {
        let sources = view.replicas(p, n_read);
        sources.iter().all(|s| *s == me) || sources.iter().any(|s| progress.done.contains(s))
    });
    if all {
        stats.started_ms.store(0, Ordering::Relaxed);
    }
    Ok(all)
}

/// Hands over up to [`DROP_BATCH`] records from `cursor` on that this node holds but does
/// not replicate (and holds no hint for): each goes to every replica of its partition,
/// and is dropped here once all of them confirmed it, if unchanged meanwhile. Returns the
/// position to continue from.
async fn drop_round(coord: &Coordinator, view: &View, foreign_partitions: &[u16], cursor: u64) -> Result<u64, String> {
    let me = coord.node_id();
    let n = n_for(coord, view.members().len());
    let store = coord.store();
    // Only the partitions this node does not replicate are walked (range seeks skip the
    // rest), so a pass costs little when there is nothing to hand over.
    let (next, items) = coord
        .scan_parts(foreign_partitions, cursor, DROP_BATCH)
        .map_err(|e| e.to_string())?;
    let foreign: Vec<ScanItem> = items
        .into_iter()
        .filter(|it| !view.replicas(partition_of(&it.key), n).contains(&me))
        .collect();
    if foreign.is_empty() {
        return Ok(next);
    }
    let keys: Vec<Bytes> = foreign.iter().map(|it| it.key.clone()).collect();
    let hinted = store.hashes_and_hints(&keys).map_err(|e| e.to_string())?;
    let mut per_node: BTreeMap<NodeId, Vec<(Bytes, Bytes)>> = BTreeMap::new();
    let mut candidates = Vec::new();
    for (it, (_, hinted)) in foreign.iter().zip(hinted) {
        if hinted {
            continue;
        }
        for r in view.replicas(partition_of(&it.key), n) {
            per_node
                .entry(r)
                .or_default()
                .push((it.key.clone(), Bytes::from(it.set.to_bytes())));
        }
        candidates.push(it);
    }
    let mut refused: Vec<NodeId> = Vec::new();
    for (node, items) in per_node {
        let Some(member) = view.member(node).cloned() else {
            refused.push(node);
            continue;
        };
        let ok = matches!(
            coord
                .call_bytes(&member, messages::encode(&Request::AeMerge { items }), 10)
                .await
                .map(|b| messages::decode::<Response>(&b).ok()),
            Ok(Some(Response::Ack))
        );
        if !ok {
            refused.push(node);
        }
    }
    let confirmed: Vec<(Bytes, u128)> = candidates
        .into_iter()
        .filter(|it| {
            view.replicas(partition_of(&it.key), n)
                .iter()
                .all(|r| !refused.contains(r))
        })
        .map(|it| (it.key.clone(), record_hash_of(&it.key, &it.set)))
        .collect();
    let dropped = super::reap::remove_if_unchanged(store, confirmed)
        .await
        .map_err(|e| e.to_string())?;
    coord
        .rebalance_stats()
        .keys_dropped
        .fetch_add(dropped, Ordering::Relaxed);
    // Until every replica confirmed, stay on this batch.
    Ok(if refused.is_empty() { next } else { cursor })
}

/// Bytes per second of the pull in progress (0 when none runs).
pub fn pull_rate(stats: &RebalanceStats) -> f64 {
    match stats.started_ms.load(Ordering::Relaxed) {
        0 => 0.0,
        t => {
            let secs = crate::clock::now_ms().saturating_sub(t) as f64 / 1000.0;
            if secs > 0.0 {
                stats.bytes_in.load(Ordering::Relaxed) as f64 / secs
            } else {
                0.0
            }
        }
    }
}
