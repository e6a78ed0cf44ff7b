//! Reaping dead records (tombstones and expired values) without resurrection: a dead
//! record leaves the cluster only once every home replica of its partition holds exactly
//! the same version and no node holds a hint that could bring an older one back. Must
//! not decide what is dead or when: the sweep does, with the grace period.
//!
//! The key's primary (the first home replica) runs it for the keys its sweep found: it
//! asks every member for its record hash and hints (any member that cannot answer stops
//! the round), then tells each home replica to remove the record if it still has that
//! hash, and removes its own copy last. A replica that missed the removal keeps the
//! tombstone, which anti-entropy spreads back harmlessly until the next round reaps it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Coordinator;
use crate::cluster::messages::{Request, Response};
use crate::error::CoordError;
use crate::metrics as m;
use crate::ring::partition_of;
use crate::storage::{Change, ScanItem, Store, record_hash_of};

/// Removes each key whose record still hashes to the given value (a write since the
/// check changed it, and then it stays); returns how many were removed.
pub async fn remove_if_unchanged(store: &Store, items: Vec<(Bytes, u128)>) -> Result<u64, crate::error::StoreError> {
    if items.is_empty() {
        return Ok(0);
    }
    let (keys, hashes): (Vec<Bytes>, Vec<u128>) = items.into_iter().unzip();
    let names = keys.clone();
    store
        .update_many(keys, move |current| {
            let mut removed = 0u64;
            let changes = current
                .iter()
                .zip(&names)
                .zip(&hashes)
                .map(|((cur, key), h)| match cur {
                    Some(set) if record_hash_of(key, set) == *h => {
                        removed += 1;
                        Change::Remove
                    }
                    _ => Change::Keep,
                })
                .collect();
            (changes, removed)
        })
        .await
}

/// [`remove_if_unchanged`] for dead records, counted as reaped.
pub async fn reap_local(store: &Store, items: Vec<(Bytes, u128)>) -> Result<u64, crate::error::StoreError> {
    let removed = remove_if_unchanged(store, items).await?;
    store.stats().reaped.fetch_add(removed, Ordering::Relaxed);
    ::metrics::counter!(m::TOMBSTONES_REAPED).increment(removed);
    Ok(removed)
}

/// Reaps these dead records (already past their grace) where every replica agrees;
/// returns how many were removed here. Keys this node is not the primary of are left to
/// their primary.
pub async fn reap(coord: &Coordinator, items: Vec<ScanItem>) -> Result<u64, CoordError> {
    let store = coord.store();
    let Some(c) = coord.cluster() else {
        let local = items
            .iter()
            .map(|it| (it.key.clone(), record_hash_of(&it.key, &it.set)));
        return Ok(reap_local(store, local.collect()).await?);
    };
    let view = c.membership.view();
    let n = coord.quorum().n;
    let me = coord.node_id();
    let now = std::time::Instant::now();
    // No reaping while data moves between replicas.
    if view.in_transition() {
        return Ok(0);
    }
    let others: Vec<_> = view.reachable().iter().filter(|mm| mm.id != me).cloned().collect();
    // Every member must answer: a node that is down may hold an older version or a hint.
    // A node that knows fewer members than N has not heard of everyone yet (a fresh or
    // replaced node still learning the cluster): it waits.
    if others.len() + 1 < c.configured.n || others.iter().any(|mm| !c.health.is_up(mm.id, now)) {
        return Ok(0);
    }
    let mut keys = Vec::new();
    let mut hashes = Vec::new();
    let mut homes = Vec::new();
    for it in items {
        let home = view.replicas(partition_of(&it.key), n);
        if home.first() == Some(&me) {
            hashes.push(record_hash_of(&it.key, &it.set));
            keys.push(it.key);
            homes.push(home);
        }
    }
    if keys.is_empty() {
        return Ok(0);
    }
    let mut ok: Vec<bool> = store
        .hashes_and_hints(&keys)?
        .iter()
        .zip(&hashes)
        .map(|((h, hinted), want)| *h == Some(*want) && !hinted)
        .collect();
    for member in &others {
        let state = match coord
            .call(
                member,
                &Request::ReapCheck {
                    view: coord.view_fingerprint(),
                    keys: keys.clone(),
                },
            )
            .await
        {
            Ok(Response::ReapState(v)) if v.len() == keys.len() => v,
            _ => return Ok(0),
        };
        for (i, (hash, hinted)) in state.into_iter().enumerate() {
            if hinted || (homes[i].contains(&member.id) && hash != Some(hashes[i])) {
                ok[i] = false;
            }
        }
    }
    let mut per_replica: BTreeMap<u64, Vec<(Bytes, u128)>> = BTreeMap::new();
    let mut mine = Vec::new();
    for i in (0..keys.len()).filter(|&i| ok[i]) {
        for &h in &homes[i] {
            if h != me {
                per_replica.entry(h).or_default().push((keys[i].clone(), hashes[i]));
            }
        }
        mine.push((keys[i].clone(), hashes[i]));
    }
    if mine.is_empty() {
        return Ok(0);
    }
    for (id, items) in per_replica {
        if let Some(member) = view.member(id) {
            // A replica that misses this keeps its tombstone for a later round.
            let _ = coord.call(member, &Request::Reap { items }).await;
        }
    }
    Ok(reap_local(store, mine).await?)
}
