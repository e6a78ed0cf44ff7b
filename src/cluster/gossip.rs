//! Membership gossip: now and again, this node sends its member table to one member
//! picked at random (and to every seed it has not met yet: that is how a new node asks
//! to join) and merges the table it gets back, so that every change spreads to all
//! members within a few rounds. Gossip travels over the internode transport, whose
//! handshake proves the cluster secret both ways: a node without the secret can neither
//! join nor change the table. The table is kept in the store so that a restart (even of
//! the whole cluster) comes back with the same ring. Must not route requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::IndexedRandom;

use super::membership::{MemberRecord, MemberState};
use super::messages::{self, Request, Response};
use super::{MemberInfo, Membership};
use crate::rpc::{Pool, RpcError};
use crate::shutdown::Shutdown;
use crate::storage::Store;

/// Metadata key of the persisted member table.
const RECORDS_KEY: &[u8] = b"member-records";
/// Metadata key of the member list kept before member records (read once, on upgrade).
const OLD_MEMBERS_KEY: &[u8] = b"members";
/// Time between gossip rounds while nothing changes.
const QUIET_ROUND: Duration = Duration::from_millis(1000);
/// Time between rounds while the table is changing or seeds are unmet.
const BUSY_ROUND: Duration = Duration::from_millis(200);

/// The internode address of a seed given as `host:port` (cluster port = port + 10000)
/// or `host:port@clusterport`.
pub fn seed_cluster_addr(seed: &str) -> Option<String> {
    match seed.split_once('@') {
        Some((client, cport)) => {
            let (host, _) = client.rsplit_once(':')?;
            let cport: u16 = cport.parse().ok()?;
            Some(format!("{host}:{cport}"))
        }
        None => {
            let (host, port) = seed.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            Some(format!("{host}:{}", port.checked_add(10000)?))
        }
    }
}

/// Resolves an address string to a socket address.
pub async fn resolve(addr: &str) -> Option<SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Some(a);
    }
    tokio::net::lookup_host(addr).await.ok()?.next()
}

/// The member table kept in the store: the records, or a member list from before
/// records (its members were all serving: they come back active), or nothing.
pub fn load_records(store: &Store) -> Vec<MemberRecord> {
    if let Ok(Some(bytes)) = store.meta_get(RECORDS_KEY) {
        return messages::decode(&bytes).unwrap_or_default();
    }
    match store.meta_get(OLD_MEMBERS_KEY) {
        Ok(Some(bytes)) => messages::decode::<Vec<MemberInfo>>(&bytes)
            .unwrap_or_default()
            .iter()
            .map(MemberRecord::active)
            .collect(),
        _ => Vec::new(),
    }
}

fn save_records(store: &Store, records: &[MemberRecord]) {
    if let Err(e) = store.meta_put(RECORDS_KEY, &messages::encode(&records.to_vec())) {
        tracing::error!("cannot persist the member table: {e}");
    }
}

/// Sends this node's table to `addr` and merges the answer; returns whether the view
/// changed.
async fn exchange(membership: &Membership, pool: &Pool, addr: SocketAddr, timeout: Duration) -> Result<bool, RpcError> {
    let req = Request::Gossip {
        records: membership.view().records().to_vec(),
    };
    let bytes = pool.call(addr, messages::encode(&req), timeout).await?;
    match messages::decode::<Response>(&bytes) {
        Ok(Response::Members(records)) => Ok(membership.merge(&records)),
        _ => Ok(false),
    }
}

/// Runs gossip until shutdown.
pub async fn run(
    membership: Arc<Membership>,
    pool: Pool,
    seeds: Vec<String>,
    store: Store,
    shutdown: Shutdown,
    timeout: Duration,
) {
    let seed_addrs: Vec<String> = seeds.iter().filter_map(|s| seed_cluster_addr(s)).collect();
    if seed_addrs.iter().all(|s| *s == membership.me().cluster_addr) {
        membership.allow_alone();
    }
    let mut saved = membership.view().records().to_vec();
    save_records(&store, &saved);
    // Seeds that refused our handshake, warned about once until they accept.
    let mut refused: ahash::AHashSet<String> = ahash::AHashSet::new();
    loop {
        let view = membership.view();
        let me = membership.me().id;
        let mut busy = false;
        // Seeds not met yet: ask them to join (send our table, take theirs).
        for seed in &seed_addrs {
            if *seed == membership.me().cluster_addr || view.records().iter().any(|r| &r.addr.value.1 == seed) {
                continue;
            }
            busy = true;
            let Some(addr) = resolve(seed).await else {
                continue;
            };
            match exchange(&membership, &pool, addr, timeout).await {
                Ok(_) => {
                    refused.remove(seed);
                }
                Err(RpcError::Refused) => {
                    if refused.insert(seed.clone()) {
                        tracing::warn!(
                            seed,
                            "seed refused the internode handshake: is the cluster secret the same?"
                        );
                    }
                }
                Err(e) => tracing::debug!(seed, "seed not reachable yet: {e}"),
            }
        }
        // One member at random (removed members hear nothing more).
        let peers: Vec<&MemberRecord> = view
            .records()
            .iter()
            .filter(|r| r.id != me && r.state() != MemberState::Removed)
            .collect();
        let pick = peers.choose(&mut rand::rng()).map(|r| r.addr.value.1.clone());
        if let Some(addr) = pick {
            if let Some(addr) = resolve(&addr).await {
                busy |= exchange(&membership, &pool, addr, timeout).await.unwrap_or(false);
            }
        }
        let now = membership.view();
        if now.records() != saved.as_slice() {
            saved = now.records().to_vec();
            save_records(&store, &saved);
            busy = true;
        }
        busy |= now.in_transition();
        let pause = if busy { BUSY_ROUND } else { QUIET_ROUND };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_addresses() {
        assert_eq!(seed_cluster_addr("127.0.0.1:7001").as_deref(), Some("127.0.0.1:17001"));
        assert_eq!(
            seed_cluster_addr("10.0.0.1:7001@9000").as_deref(),
            Some("10.0.0.1:9000")
        );
        assert_eq!(seed_cluster_addr("127.0.0.1:60000"), None);
        assert_eq!(seed_cluster_addr("nonsense"), None);
    }
}
