//! The failure detector's probe: a few times a second, ping every other member so that a
//! silent peer is noticed (and a returning one taken back) even when no client request
//! goes its way. Must not decide anything itself: the outcomes feed [`Health`] through
//! [`Coordinator::call`].
//!
//! [`Health`]: crate::cluster::health::Health

use std::time::Duration;

use super::Coordinator;
use crate::cluster::messages::Request;
use crate::shutdown::Shutdown;

/// Time between probe rounds.
const INTERVAL: Duration = Duration::from_millis(250);

/// Probes every other member until shutdown.
pub async fn run(coord: Coordinator, shutdown: Shutdown) {
    let Some(cluster) = coord.cluster() else {
        return;
    };
    let me = coord.node_id();
    let membership = cluster.membership.clone();
    let mut tick = shutdown.ticker(INTERVAL);
    while tick.next().await {
        let view = membership.view();
        for m in view.reachable().iter().filter(|m| m.id != me) {
            let (coord, m) = (coord.clone(), m.clone());
            // Each probe on its own, so one hung peer does not delay the others.
            tokio::spawn(async move {
                let _ = coord.call(&m, &Request::Ping).await;
            });
        }
    }
}
