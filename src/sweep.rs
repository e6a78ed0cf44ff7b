//! The expiry and tombstone sweep: a background loop that walks the store a bounded number
//! of records per tick and removes records that have been dead (every sibling a tombstone
//! or expired) for longer than the grace period. Must not decide liveness differently from
//! reads: it uses the same `SiblingSet::is_dead`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::coordinator::Coordinator;
use crate::shutdown::Shutdown;
use crate::storage::Change;
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
            .map(|it| it.key)
            .collect();
        if due.is_empty() {
            continue;
        }
        let store = coord.store().clone();
        let reaped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = reaped.clone();
        // Re-checked inside the writer: a write that revived a key since the scan wins.
        let res = store
            .update_many(due, move |sets| {
                let now = crate::clock::now_ms();
                let changes = sets
                    .iter()
                    .map(|s| match s {
                        Some(s) if s.is_dead(now) && dead_since(s).saturating_add(grace_ms) <= now => {
                            counter.fetch_add(1, Ordering::Relaxed);
                            Change::Remove
                        }
                        _ => Change::Keep,
                    })
                    .collect();
                (changes, ())
            })
            .await;
        match res {
            Ok(()) => {
                store
                    .stats()
                    .reaped
                    .fetch_add(reaped.load(Ordering::Relaxed), Ordering::Relaxed);
                ::metrics::counter!(crate::metrics::TOMBSTONES_REAPED).increment(reaped.load(Ordering::Relaxed));
            }
            Err(e) => tracing::error!("expiry sweep removal failed: {e}"),
        }
    }
}
