//! Static membership discovery: until every seed has answered, and then now and again,
//! ask each seed who it is (internode handshake) and each known member whom it knows, and
//! keep the member list in the store so a restart comes back with the same ring. Must not
//! route requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::messages::{self, Request, Response};
use super::{MemberInfo, Membership};
use crate::rpc::{Pool, RpcError};
use crate::shutdown::Shutdown;
use crate::storage::Store;

/// Metadata key of the persisted member list.
pub const MEMBERS_KEY: &[u8] = b"members";

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

/// The member list persisted in the store, if any.
pub fn load_members(store: &Store) -> Vec<MemberInfo> {
    match store.meta_get(MEMBERS_KEY) {
        Ok(Some(bytes)) => messages::decode(&bytes).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn save_members(store: &Store, members: &[MemberInfo]) {
    if let Err(e) = store.meta_put(MEMBERS_KEY, &messages::encode(&members.to_vec())) {
        tracing::error!("cannot persist the member list: {e}");
    }
}

/// Runs discovery until shutdown.
pub async fn run(
    membership: Arc<Membership>,
    pool: Pool,
    seeds: Vec<String>,
    store: Store,
    shutdown: Shutdown,
    timeout: Duration,
) {
    let seed_addrs: Vec<String> = seeds.iter().filter_map(|s| seed_cluster_addr(s)).collect();
    save_members(&store, membership.view().members());
    // Seeds that refused our handshake, warned about once until they accept.
    let mut refused: ahash::AHashSet<String> = ahash::AHashSet::new();
    loop {
        let mut changed = false;
        let view = membership.view();
        let mut unknown_seed = false;
        for seed in &seed_addrs {
            if *seed == membership.me().cluster_addr || view.members().iter().any(|m| &m.cluster_addr == seed) {
                continue;
            }
            unknown_seed = true;
            let Some(addr) = resolve(seed).await else {
                continue;
            };
            match pool.handshake(addr, timeout).await {
                Ok(identity) => {
                    refused.remove(seed);
                    match messages::decode_identity(&identity) {
                        Ok(info) => changed |= membership.learn([info]),
                        Err(e) => tracing::warn!(seed, "seed sent a bad identity: {e}"),
                    }
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
        for m in view.members().iter().filter(|m| m.id != membership.me().id) {
            let Some(addr) = resolve(&m.cluster_addr).await else {
                continue;
            };
            if let Ok(bytes) = pool.call(addr, messages::encode(&Request::Members), timeout).await {
                if let Ok(Response::Members(list)) = messages::decode::<Response>(&bytes) {
                    changed |= membership.learn(list);
                }
            }
        }
        if changed {
            save_members(&store, membership.view().members());
        }
        let pause = if unknown_seed || changed {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(2)
        };
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
