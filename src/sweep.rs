//! The expiry and tombstone sweep: a background loop that walks the store a bounded number
//! of records per tick, counts dead and conflicted records, and hands records that have
//! been dead (every sibling a tombstone or expired) for longer than the grace period to
//! the reaper, which removes them once every replica holds them. Must not decide liveness
//! differently from reads: it uses the same `SiblingSet::is_dead`.

use std::time::Duration;

use crate::coordinator::Coordinator;
use crate::shutdown::Shutdown;
use crate::version::SiblingSet;

/// When a dead set became dead: the newest tombstone write or expiry among its siblings.
pub fn dead_since(set: &SiblingSet) -> u64 {
    set.siblings()
        .iter()
        .map(|s| {
            if s.tombstone {
                s.written_at_ms
            } else {
                s.expires_at_ms.unwrap_or(u64::MAX)
            }
        })
        .max()
        .unwrap_or(0)
}

/// Runs the sweep until shutdown: every `interval`, examines up to `budget` records and
/// removes those dead for at least `grace_ms`.
pub async fn run(coord: Coordinator, shutdown: Shutdown, interval: Duration, budget: usize, grace_ms: u64) {
    let mut cursor = 0u64;
    // Counts over the current full pass of the store, published when the pass ends.
    let (mut dead, mut conflicted) = (0u64, 0u64);
    let mut tick = shutdown.ticker(interval);
    while tick.next().await {
        if let Err(e) = coord.store().store_due_trees().await {
            tracing::error!("storing the anti-entropy trees failed: {e}");
        }
        let (next, items) = match coord.store().scan(cursor, 0, budget) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("expiry sweep scan failed: {e}");
                continue;
            }
        };
        let now = crate::clock::now_ms();
        for it in &items {
            if it.set.is_dead(now) {
                dead += 1;
            } else if it.set.live(now).nth(1).is_some() {
                conflicted += 1;
            }
        }
        if next == 0 {
            ::metrics::gauge!(crate::metrics::TOMBSTONES).set(dead as f64);
            ::metrics::gauge!(crate::metrics::KEYS_WITH_SIBLINGS).set(conflicted as f64);
            (dead, conflicted) = (0, 0);
        }
        cursor = next;
        let due: Vec<_> = items
            .into_iter()
            .filter(|it| it.set.is_dead(now) && dead_since(&it.set).saturating_add(grace_ms) <= now)
            .collect();
        if due.is_empty() {
            continue;
        }
        // Removed only where every replica agrees (and only if unchanged since the scan).
        if let Err(e) = crate::coordinator::reap::reap(&coord, due).await {
            tracing::error!("reaping dead records failed: {e}");
        }
    }
}
