//! The member table and the placements computed from it. Must not do I/O: gossip spreads
//! the table and persists it; this module merges tables and keeps views consistent.
//!
//! Each member's record has parts that change independently, each with its own version
//! (the higher wins, ties broken by the writer's id), so an operator's weight change and
//! the node's own progress report never overwrite each other:
//! - `addr`: where it listens (written by the node itself);
//! - `target`: the weight it should have, `None` once an operator asked it to leave or
//!   removed it (written by whichever node took the operator's command);
//! - `current`: the weight it has in the placement that serves reads, `None` until its
//!   join completed and after its leave completed (written by the node that saw the
//!   change complete);
//! - `synced`: the view (fingerprint) whose data this node has finished pulling (its own).
//!
//! Two placements follow: the *read* placement over members with a `current` weight, and
//! the *target* placement over members with a `target` weight. They differ only while
//! data moves: writes go to both, reads to the read placement, and once every target
//! member has synced the view, `current` takes the value of `target` everywhere.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::ring::partition_of;
use crate::ring::placement::{Member, Placement, PlacementError};
use crate::version::NodeId;

/// Where a member listens and how much it weighs: what the other parts of the code use.
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

/// A value with the version that wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Incremented by each change.
    pub version: u64,
    /// The node that wrote this version (breaks ties between concurrent writers).
    pub writer: NodeId,
}

impl<T: PartialEq> Versioned<T> {
    fn new(value: T, writer: NodeId) -> Versioned<T> {
        Versioned {
            value,
            version: 1,
            writer,
        }
    }

    /// Takes `other` if it is newer; true if this changed.
    fn merge(&mut self, other: &Versioned<T>) -> bool
    where
        T: Clone,
    {
        if (other.version, other.writer) > (self.version, self.writer) {
            *self = other.clone();
            true
        } else {
            false
        }
    }

    /// Sets a new value as a change by `writer`; false if the value was already that.
    fn set(&mut self, value: T, writer: NodeId) -> bool {
        if self.value == value {
            return false;
        }
        self.value = value;
        self.version += 1;
        self.writer = writer;
        true
    }
}

/// Everything the cluster knows about one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member's id.
    pub id: NodeId,
    /// (client address, internode address).
    pub addr: Versioned<(String, String)>,
    /// The weight it should have; `None`: leaving or removed.
    pub target: Versioned<Option<f64>>,
    /// The weight it has in the read placement; `None`: not yet joined, or left.
    pub current: Versioned<Option<f64>>,
    /// The view fingerprint whose data it holds (0: none yet).
    pub synced: Versioned<u64>,
}

/// Where a member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Receiving its data; writes reach it, reads do not yet.
    Joining,
    /// Serving (possibly moving to a new weight).
    Active,
    /// Handing its data over; still serving reads.
    Leaving,
    /// Gone; kept so that gossip cannot bring it back.
    Removed,
}

impl MemberState {
    /// Lower-case name for INFO and admin output.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Active => "active",
            MemberState::Leaving => "leaving",
            MemberState::Removed => "removed",
        }
    }
}

impl MemberRecord {
    /// A node's first record of itself: asking to join with `weight`.
    pub fn joining(info: &MemberInfo) -> MemberRecord {
        MemberRecord {
            id: info.id,
            addr: Versioned::new((info.client_addr.clone(), info.cluster_addr.clone()), info.id),
            target: Versioned::new(Some(info.weight), info.id),
            current: Versioned {
                value: None,
                version: 0,
                writer: 0,
            },
            synced: Versioned {
                value: 0,
                version: 0,
                writer: 0,
            },
        }
    }

    /// A member already in the read placement (a member list from before records).
    pub fn active(info: &MemberInfo) -> MemberRecord {
        let mut r = MemberRecord::joining(info);
        r.current = Versioned::new(Some(info.weight), info.id);
        r
    }

    /// Its state.
    pub fn state(&self) -> MemberState {
        match (self.target.value, self.current.value) {
            (Some(_), None) => MemberState::Joining,
            (Some(_), Some(_)) => MemberState::Active,
            (None, Some(_)) => MemberState::Leaving,
            (None, None) => MemberState::Removed,
        }
    }

    /// Its addresses with a weight (the current one, else the target).
    pub fn info(&self) -> MemberInfo {
        MemberInfo {
            id: self.id,
            client_addr: self.addr.value.0.clone(),
            cluster_addr: self.addr.value.1.clone(),
            weight: self.current.value.or(self.target.value).unwrap_or(1.0),
        }
    }

    fn merge(&mut self, other: &MemberRecord) -> bool {
        let a = self.addr.merge(&other.addr);
        let t = self.target.merge(&other.target);
        let c = self.current.merge(&other.current);
        let s = self.synced.merge(&other.synced);
        a || t || c || s
    }

    /// Whether the record is usable (a weight that can be placed).
    fn valid(&self) -> bool {
        let ok = |w: Option<f64>| w.is_none_or(|w| w.is_finite() && w > 0.0);
        self.id != 0 && ok(self.target.value) && ok(self.current.value)
    }
}

/// One consistent snapshot of the member table and its placements.
#[derive(Debug)]
pub struct View {
    records: Vec<MemberRecord>,
    /// Members of the read placement (current weight).
    members: Vec<MemberInfo>,
    /// Members of either placement (not removed).
    reachable: Vec<MemberInfo>,
    placement: Placement,
    target: Placement,
    transition: bool,
    fingerprint: u64,
}

impl View {
    fn new(mut records: Vec<MemberRecord>, me: NodeId) -> Result<View, PlacementError> {
        records.sort_by_key(|r| r.id);
        let place = |weights: Vec<(NodeId, f64)>| {
            let ring: Vec<Member> = weights.into_iter().map(|(id, weight)| Member { id, weight }).collect();
            Placement::new(&ring)
        };
        let current: Vec<(NodeId, f64)> = records
            .iter()
            .filter_map(|r| r.current.value.map(|w| (r.id, w)))
            .collect();
        let target: Vec<(NodeId, f64)> = records
            .iter()
            .filter_map(|r| r.target.value.map(|w| (r.id, w)))
            .collect();
        // Before its first join completes a node serves as a cluster of itself (what it
        // stores meanwhile is handed to the real owners once it has joined).
        let own = || {
            records
                .iter()
                .find(|r| r.id == me)
                .map(|r| vec![(me, r.target.value.or(r.current.value).unwrap_or(1.0))])
                .unwrap_or_else(|| vec![(me, 1.0)])
        };
        // Placement-relevant facts (what the fingerprint covers) are the records alone;
        // the stand-in above only serves requests.
        let transition = target != current;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (label, list) in [(b'c', &current), (b't', &target)] {
            h.update(&[label]);
            for (id, w) in list {
                h.update(&id.to_be_bytes());
                h.update(&w.to_bits().to_be_bytes());
            }
        }
        let current = if current.is_empty() { own() } else { current };
        let target_list = if target.is_empty() { current.clone() } else { target };
        let placement = place(current.clone())?;
        let target = if target_list == current {
            placement.clone()
        } else {
            place(target_list)?
        };
        let members: Vec<MemberInfo> = records
            .iter()
            .filter(|r| placement.contains(r.id))
            .map(|r| {
                let mut i = r.info();
                i.weight = current.iter().find(|(id, _)| *id == r.id).map_or(i.weight, |(_, w)| *w);
                i
            })
            .collect();
        let reachable: Vec<MemberInfo> = records
            .iter()
            .filter(|r| placement.contains(r.id) || target.contains(r.id))
            .map(MemberRecord::info)
            .collect();
        Ok(View {
            records,
            members,
            reachable,
            placement,
            target,
            transition,
            fingerprint: h.digest(),
        })
    }

    /// Members of the read placement, ordered by id.
    pub fn members(&self) -> &[MemberInfo] {
        &self.members
    }

    /// Members of the read or the target placement (joining, active, leaving), by id:
    /// the nodes to probe, gossip with and send writes to.
    pub fn reachable(&self) -> &[MemberInfo] {
        &self.reachable
    }

    /// Every record, removed members included.
    pub fn records(&self) -> &[MemberRecord] {
        &self.records
    }

    /// The record of `id`.
    pub fn record(&self, id: NodeId) -> Option<&MemberRecord> {
        self.records.iter().find(|r| r.id == id)
    }

    /// The member with this id (read or target placement).
    pub fn member(&self, id: NodeId) -> Option<&MemberInfo> {
        self.reachable.iter().find(|m| m.id == id)
    }

    /// Whether data is moving: the target placement differs from the read placement.
    pub fn in_transition(&self) -> bool {
        self.transition
    }

    /// A digest of both placements' members and weights: two nodes with the same
    /// fingerprint place every partition alike. Background work that must agree on
    /// placement (anti-entropy, reaping, transfers) runs only between nodes whose views
    /// match, and a node reports the fingerprint whose data it has pulled.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The placement that serves reads.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The placement data is moving to (equal to [`View::placement`] when none moves).
    pub fn target(&self) -> &Placement {
        &self.target
    }

    /// The first `n` members of the partition's preference list: its replicas.
    pub fn replicas(&self, partition: u16, n: usize) -> Vec<NodeId> {
        self.placement.first_healthy(partition, n, |_| true)
    }

    /// The partition's replicas in the target placement.
    pub fn target_replicas(&self, partition: u16, n: usize) -> Vec<NodeId> {
        self.target.first_healthy(partition, n, |_| true)
    }

    /// The replicas of `key`'s partition.
    pub fn replicas_of_key(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.replicas(partition_of(key), n)
    }

    /// Whether every member of the target placement has pulled this view's data.
    pub fn all_synced(&self) -> bool {
        self.records
            .iter()
            .filter(|r| r.target.value.is_some())
            .all(|r| r.synced.value == self.fingerprint)
    }
}

/// The member table of this node, shared by every task.
#[derive(Debug)]
pub struct Membership {
    me: MemberInfo,
    view: RwLock<Arc<View>>,
    /// Whether this node may act without having heard from any other member (it has no
    /// seed but itself).
    alone_ok: std::sync::atomic::AtomicBool,
}

impl Membership {
    /// Membership from the records this node kept (empty on first start: it then asks
    /// to join with its own record).
    pub fn new(me: MemberInfo, known: Vec<MemberRecord>) -> Result<Membership, PlacementError> {
        let mut records: Vec<MemberRecord> = known.into_iter().filter(MemberRecord::valid).collect();
        match records.iter_mut().find(|r| r.id == me.id) {
            Some(r) => {
                let addr = (me.client_addr.clone(), me.cluster_addr.clone());
                r.addr.set(addr, me.id);
            }
            None => records.push(MemberRecord::joining(&me)),
        }
        let view = View::new(records, me.id)?;
        Ok(Membership {
            me,
            view: RwLock::new(Arc::new(view)),
            alone_ok: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Lets this node act before it has heard from another member (no seed but itself).
    pub fn allow_alone(&self) {
        self.alone_ok.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this node has met its cluster: it knows another member, or may be alone.
    /// Until then it serves no keys (it would answer as a cluster of one) and completes
    /// no join.
    pub fn has_met(&self) -> bool {
        self.alone_ok.load(std::sync::atomic::Ordering::Relaxed)
            || self.view().records().iter().any(|r| r.id != self.me.id)
    }

    /// This node (its addresses; the weight it started with).
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

    /// Applies `change` to a copy of the records and installs the result if it changed
    /// anything and places; returns whether the view changed.
    fn update(&self, change: impl FnOnce(&mut Vec<MemberRecord>) -> bool) -> bool {
        let mut guard = self.view.write().unwrap_or_else(|p| p.into_inner());
        let mut records = guard.records.clone();
        if !change(&mut records) {
            return false;
        }
        match View::new(records, self.me.id) {
            Ok(v) => {
                *guard = Arc::new(v);
                true
            }
            Err(e) => {
                tracing::error!("member table change refused, placement failed: {e}");
                false
            }
        }
    }

    /// Merges records heard from a peer; returns whether the view changed.
    pub fn merge(&self, heard: &[MemberRecord]) -> bool {
        self.update(|records| {
            let mut changed = false;
            for h in heard.iter().filter(|h| h.valid()) {
                match records.iter_mut().find(|r| r.id == h.id) {
                    Some(r) => {
                        let before = r.state();
                        if r.merge(h) {
                            changed = true;
                            if r.state() != before {
                                tracing::info!(
                                    node = format!("{:016x}", r.id),
                                    from = before.as_str(),
                                    to = r.state().as_str(),
                                    "member state changed"
                                );
                            }
                        }
                    }
                    None => {
                        tracing::info!(
                            node = format!("{:016x}", h.id),
                            addr = %h.addr.value.0,
                            state = h.state().as_str(),
                            "member learned"
                        );
                        records.push(h.clone());
                        changed = true;
                    }
                }
            }
            changed
        })
    }

    /// An operator's change of a member's target weight (`None`: leave or remove), made
    /// through this node. False if the member is unknown or already has that target.
    pub fn set_target(&self, id: NodeId, weight: Option<f64>) -> bool {
        if weight.is_some_and(|w| !(w.is_finite() && w > 0.0)) {
            return false;
        }
        let me = self.me.id;
        self.update(|records| match records.iter_mut().find(|r| r.id == id) {
            Some(r) if r.state() != MemberState::Removed => r.target.set(weight, me),
            _ => false,
        })
    }

    /// Records that this node holds the data of the view `fingerprint`.
    pub fn set_synced(&self, fingerprint: u64) -> bool {
        let me = self.me.id;
        self.update(|records| match records.iter_mut().find(|r| r.id == me) {
            Some(r) => r.synced.set(fingerprint, me),
            None => false,
        })
    }

    /// Completes a transition seen complete by this node: every member's current weight
    /// becomes its target. Only if the view is still `fingerprint` and all synced.
    pub fn complete(&self, fingerprint: u64) -> bool {
        let me = self.me.id;
        let view = self.view();
        if view.fingerprint() != fingerprint || !view.all_synced() || !view.in_transition() {
            return false;
        }
        self.update(|records| {
            let mut changed = false;
            for r in records.iter_mut() {
                let target = r.target.value;
                changed |= r.current.set(target, me);
            }
            changed
        })
    }
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
    fn a_join_moves_through_sync_and_completion() {
        let a = Membership::new(info(1), vec![MemberRecord::active(&info(1))]).expect("a");
        assert_eq!(a.view().members().len(), 1);
        let joiner = MemberRecord::joining(&info(2));
        assert!(a.merge(std::slice::from_ref(&joiner)));
        assert!(!a.merge(&[joiner]), "merging the same record twice changes nothing");
        let v = a.view();
        assert!(v.in_transition());
        assert_eq!(v.members().len(), 1, "a joining node serves no reads yet");
        assert_eq!(v.reachable().len(), 2);
        assert!(!v.all_synced());
        assert!(!a.complete(v.fingerprint()));
        // Both report the view synced (node 2 through gossip).
        assert!(a.set_synced(v.fingerprint()));
        let mut rec2 = v.record(2).expect("record").clone();
        rec2.synced.set(v.fingerprint(), 2);
        assert!(a.merge(&[rec2]));
        assert!(a.view().all_synced());
        assert!(a.complete(v.fingerprint()));
        let v = a.view();
        assert!(!v.in_transition());
        assert_eq!(v.members().len(), 2);
        assert_eq!(v.record(2).map(MemberRecord::state), Some(MemberState::Active));
    }

    #[test]
    fn concurrent_parts_do_not_overwrite_each_other() {
        let a = Membership::new(
            info(1),
            vec![MemberRecord::active(&info(1)), MemberRecord::active(&info(2))],
        )
        .expect("a");
        let b = Membership::new(info(2), a.view().records().to_vec()).expect("b");
        // An operator changes node 2's weight through node 1 while node 2 reports progress.
        assert!(a.set_target(2, Some(2.0)));
        assert!(b.set_synced(77));
        assert!(a.merge(b.view().records()));
        assert!(b.merge(a.view().records()));
        for m in [&a, &b] {
            let r = m.view().record(2).expect("record").clone();
            assert_eq!(r.target.value, Some(2.0));
            assert_eq!(r.synced.value, 77);
        }
        assert_eq!(a.view().fingerprint(), b.view().fingerprint());
    }

    #[test]
    fn removed_members_stay_removed_and_bad_records_are_ignored() {
        let a = Membership::new(
            info(1),
            vec![MemberRecord::active(&info(1)), MemberRecord::active(&info(2))],
        )
        .expect("a");
        let old = a.view().record(2).expect("record").clone();
        assert!(a.set_target(2, None));
        let fp = a.view().fingerprint();
        assert!(a.set_synced(fp));
        assert!(a.complete(fp));
        assert_eq!(a.view().record(2).map(MemberRecord::state), Some(MemberState::Removed));
        assert!(!a.merge(&[old]), "an old record cannot bring a removed member back");
        let mut bad = MemberRecord::joining(&info(3));
        bad.target.value = Some(f64::NAN);
        assert!(!a.merge(&[bad]));
        assert!(!a.set_target(1, Some(-1.0)));
        assert_eq!(a.view().members().len(), 1);
    }
}
