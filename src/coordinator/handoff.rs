//! Hinted handoff: a background worker that hands the records this node holds for down
//! owners (sloppy quorum) back to them once they answer again. Throttled, restartable
//! (hints are in LMDB), and a hint is dropped only after the owner acknowledged the
//! record durably and only if the record did not change meanwhile; the record itself is
//! dropped then too when this node is not one of the key's home replicas. Must not
//! deliver to an owner the failure detector calls down.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Coordinator;
use crate::ring::partition_of;
use crate::shutdown::Shutdown;
use crate::storage::Change;

/// Time between handoff rounds.
const INTERVAL: Duration = Duration::from_millis(500);
/// Most hints examined per round: bounds the work and the traffic of one round.
const PER_ROUND: usize = 256;

/// Delivers hints until shutdown.
pub async fn run(coord: Coordinator, shutdown: Shutdown) {
    let Some(cluster) = coord.cluster() else {
        return;
    };
    let health = cluster.health.clone();
    let membership = cluster.membership.clone();
    let mut cursor: Vec<u8> = Vec::new();
    let mut tick = shutdown.ticker(INTERVAL);
    while tick.next().await {
        let (hints, next) = match coord.store().hints(&cursor, PER_ROUND) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("reading hints failed: {e}");
                continue;
            }
        };
        // Start over from the beginning once a pass reached the end.
        cursor = if hints.len() < PER_ROUND { Vec::new() } else { next };
        let mut per_owner: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
        for hint in hints {
            let owner = hint.owner;
            let Some(set) = hint.set else {
                // The record is gone (flushed or reaped): nothing left to deliver.
                let _ = coord
                    .store()
                    .update(hint.key, move |cur| match cur {
                        None => (
                            Change::HandedOff {
                                owner,
                                remove_record: false,
                            },
                            (),
                        ),
                        Some(_) => (Change::Keep, ()),
                    })
                    .await;
                continue;
            };
            let view = membership.view();
            if view.member(owner).is_none() || !health.is_up(owner, Instant::now()) {
                continue;
            }
            if coord.replica_put(owner, hint.key.clone(), &set, None).await.is_err() {
                continue;
            }
            let home = view.replicas(partition_of(&hint.key), coord.quorum().n);
            let remove_record = !home.contains(&coord.node_id());
            let delivered = set;
            let handed = coord
                .store()
                .update(hint.key, move |cur| {
                    if cur.as_ref() == Some(&delivered) {
                        (Change::HandedOff { owner, remove_record }, true)
                    } else {
                        // Written again meanwhile: keep the hint, deliver the new version later.
                        (Change::Keep, false)
                    }
                })
                .await;
            if let Ok(true) = handed {
                *per_owner.entry(owner).or_default() += 1;
                coord.stats().hints_delivered.fetch_add(1, Ordering::Relaxed);
                ::metrics::counter!(crate::metrics::HINTS_DELIVERED, "peer" => format!("{owner:016x}")).increment(1);
            }
        }
        // One line per owner and round, never one per record.
        for (owner, n) in per_owner {
            tracing::info!(peer = format!("{owner:016x}"), records = n, "hinted handoff delivered");
        }
    }
}
