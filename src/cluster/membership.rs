//! The member list and the placement computed from it. Must not do I/O: callers learn
//! members (discovery) and persist them; this module keeps the current view consistent.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::ring::partition_of;
use crate::ring::placement::{Member, Placement, PlacementError};
use crate::version::NodeId;

/// What a member publishes about itself in the internode handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Persistent node id (the name in version vectors and on the ring).
    pub id: NodeId,
    /// Address Redis clients use (`host:port`).
    pub client_addr: String,
    /// Internode address (`host:port`).
    pub cluster_addr: String,
    /// Placement weight.
    pub weight: f64,
}

impl MemberInfo {
    /// The 40-character id Redis Cluster commands show (the node id, zero-padded hex).
    pub fn redis_id(&self) -> String {
        format!("{:040x}", self.id)
    }
}

/// One consistent snapshot of the membership: the members and their placement.
#[derive(Debug)]
pub struct View {
    members: Vec<MemberInfo>,
    placement: Placement,
}

impl View {
    fn new(mut members: Vec<MemberInfo>) -> Result<View, PlacementError> {
        members.sort_by_key(|m| m.id);
        let ring: Vec<Member> = members
            .iter()
            .map(|m| Member {
                id: m.id,
                weight: m.weight,
            })
            .collect();
        let placement = Placement::new(&ring)?;
        Ok(View { members, placement })
    }

    /// Every member, ordered by id.
    pub fn members(&self) -> &[MemberInfo] {
        &self.members
    }

    /// The member with this id.
    pub fn member(&self, id: NodeId) -> Option<&MemberInfo> {
        self.members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .map(|i| &self.members[i])
    }

    /// A digest of who the members are and their weights: two nodes with the same
    /// fingerprint place every partition alike. Background work that must agree on
    /// placement (anti-entropy, reaping) runs only between nodes whose views match.
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for m in &self.members {
            h.update(&m.id.to_be_bytes());
            h.update(&m.weight.to_bits().to_be_bytes());
        }
        h.digest()
    }

    /// The placement of all partitions over these members.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The first `n` healthy members of the partition's preference list: its replicas.
    pub fn replicas(&self, partition: u16, n: usize) -> Vec<NodeId> {
        self.placement.first_healthy(partition, n, |_| true)
    }

    /// The replicas of `key`'s partition.
    pub fn replicas_of_key(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.replicas(partition_of(key), n)
    }
}

/// The current membership of this node's cluster.
#[derive(Debug)]
pub struct Membership {
    me: MemberInfo,
    view: RwLock<Arc<View>>,
}

impl Membership {
    /// Membership with this node and the members it already knew.
    pub fn new(me: MemberInfo, known: Vec<MemberInfo>) -> Result<Membership, PlacementError> {
        let mut members = vec![me.clone()];
        for m in known {
            if valid(&m) && members.iter().all(|x| x.id != m.id) {
                members.push(m);
            }
        }
        Ok(Membership {
            me,
            view: RwLock::new(Arc::new(View::new(members)?)),
        })
    }

    /// This node.
    pub fn me(&self) -> &MemberInfo {
        &self.me
    }

    /// The current view (cheap: an `Arc` clone).
    pub fn view(&self) -> Arc<View> {
        self.view
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Adds or updates members; returns whether the view changed. Addresses of a known
    /// id are updated (a member may move); this node's own entry never changes here.
    pub fn learn(&self, infos: impl IntoIterator<Item = MemberInfo>) -> bool {
        let mut guard = self.view.write().unwrap_or_else(|p| p.into_inner());
        let mut members = guard.members.clone();
        let mut changed = false;
        for m in infos {
            if !valid(&m) || m.id == self.me.id {
                continue;
            }
            match members.iter_mut().find(|x| x.id == m.id) {
                Some(x) if *x == m => {}
                Some(x) => {
                    *x = m;
                    changed = true;
                }
                None => {
                    tracing::info!(node = format!("{:016x}", m.id), addr = %m.client_addr, "member learned");
                    members.push(m);
                    changed = true;
                }
            }
        }
        if !changed {
            return false;
        }
        match View::new(members) {
            Ok(v) => {
                *guard = Arc::new(v);
                true
            }
            Err(e) => {
                tracing::error!("new members refused, placement failed: {e}");
                false
            }
        }
    }
}

fn valid(m: &MemberInfo) -> bool {
    m.id != 0 && m.weight.is_finite() && m.weight > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64) -> MemberInfo {
        MemberInfo {
            id,
            client_addr: format!("127.0.0.1:{}", 7000 + id),
            cluster_addr: format!("127.0.0.1:{}", 17000 + id),
            weight: 1.0,
        }
    }

    #[test]
    fn learning_changes_the_view_once() {
        let m = Membership::new(info(1), vec![]).expect("membership");
        assert_eq!(m.view().members().len(), 1);
        assert!(m.learn([info(2), info(3)]));
        assert!(!m.learn([info(2)]));
        let v = m.view();
        assert_eq!(v.members().len(), 3);
        assert_eq!(v.replicas(0, 3).len(), 3);
        assert_eq!(v.replicas(0, 5).len(), 3);
        assert_eq!(v.member(2).map(|x| x.id), Some(2));
    }

    #[test]
    fn invalid_and_self_entries_are_ignored() {
        let m = Membership::new(info(1), vec![]).expect("membership");
        let mut bad = info(2);
        bad.weight = f64::NAN;
        let mut me = info(1);
        me.client_addr = "elsewhere:1".into();
        assert!(!m.learn([bad, me, info(0)]));
        assert_eq!(m.view().members().len(), 1);
    }
}
