//! Failure detection: this node's own view of which peers answer. Fed by the outcome of
//! every internode request and by a periodic probe; a peer that has answered nothing for
//! `down_after` while requests to it were failing is down, and it is up again as soon as
//! one request succeeds. Must not change membership: a down node stays a member, and the
//! view only steers sloppy quorums. Time comes in as a parameter so tests control it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::version::NodeId;

#[derive(Debug, Clone, Copy)]
struct Peer {
    /// When the peer last answered.
    last_ok: Instant,
    /// When requests to it started failing, if they are failing now.
    failing_since: Option<Instant>,
}

/// Which peers answer, as this node sees them.
#[derive(Debug)]
pub struct Health {
    down_after: Duration,
    peers: Mutex<AHashMap<NodeId, Peer>>,
}

impl Health {
    /// A detector that calls a peer down after `down_after` without an answer.
    pub fn new(down_after: Duration) -> Health {
        Health {
            down_after,
            peers: Mutex::new(AHashMap::new()),
        }
    }

    /// Records a successful exchange with `peer` at `now`.
    pub fn success(&self, peer: NodeId, now: Instant) {
        if let Ok(mut m) = self.peers.lock() {
            let was_down = m.get(&peer).is_some_and(|p| is_down(p, now, self.down_after));
            m.insert(
                peer,
                Peer {
                    last_ok: now,
                    failing_since: None,
                },
            );
            if was_down {
                tracing::info!(peer = format!("{peer:016x}"), "peer is up again");
            }
        }
    }

    /// Records a failed exchange (timeout, refused, closed) with `peer` at `now`.
    pub fn failure(&self, peer: NodeId, now: Instant) {
        if let Ok(mut m) = self.peers.lock() {
            let p = m.entry(peer).or_insert(Peer {
                last_ok: now,
                failing_since: None,
            });
            let was_down = is_down(p, now, self.down_after);
            p.failing_since.get_or_insert(now);
            if !was_down && is_down(p, now, self.down_after) {
                tracing::warn!(peer = format!("{peer:016x}"), "peer is down");
            }
        }
    }

    /// Whether `peer` is up at `now` (peers never heard of are up).
    pub fn is_up(&self, peer: NodeId, now: Instant) -> bool {
        self.peers
            .lock()
            .map(|m| m.get(&peer).is_none_or(|p| !is_down(p, now, self.down_after)))
            .unwrap_or(true)
    }

    /// The peers that are down at `now`.
    pub fn down(&self, now: Instant) -> Vec<NodeId> {
        self.peers
            .lock()
            .map(|m| {
                let mut v: Vec<NodeId> = m
                    .iter()
                    .filter(|(_, p)| is_down(p, now, self.down_after))
                    .map(|(id, _)| *id)
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default()
    }
}

fn is_down(p: &Peer, now: Instant, down_after: Duration) -> bool {
    // Down when it is failing now and has not answered for `down_after`.
    p.failing_since.is_some() && now.saturating_duration_since(p.last_ok) >= down_after
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_silence_up_on_first_answer() {
        let h = Health::new(Duration::from_secs(2));
        let t0 = Instant::now();
        assert!(h.is_up(7, t0), "unknown peers are up");
        h.success(7, t0);
        h.failure(7, t0 + Duration::from_millis(500));
        assert!(h.is_up(7, t0 + Duration::from_millis(1900)));
        assert!(!h.is_up(7, t0 + Duration::from_millis(2100)));
        assert_eq!(h.down(t0 + Duration::from_secs(3)), vec![7]);
        h.success(7, t0 + Duration::from_secs(4));
        assert!(h.is_up(7, t0 + Duration::from_secs(4)));
        assert!(h.down(t0 + Duration::from_secs(4)).is_empty());
    }

    #[test]
    fn silence_without_failures_is_not_down() {
        let h = Health::new(Duration::from_secs(2));
        let t0 = Instant::now();
        h.success(1, t0);
        assert!(
            h.is_up(1, t0 + Duration::from_secs(60)),
            "an idle peer is not a failed peer"
        );
    }

    #[test]
    fn a_peer_that_never_answered_goes_down_after_the_window() {
        let h = Health::new(Duration::from_secs(2));
        let t0 = Instant::now();
        h.failure(9, t0);
        assert!(h.is_up(9, t0 + Duration::from_secs(1)));
        assert!(!h.is_up(9, t0 + Duration::from_secs(2)));
    }
}
