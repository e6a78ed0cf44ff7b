//! The coordinator: every command's reads and writes of keys go through it. Must not know
//! RESP or command syntax; it speaks sibling sets and write decisions.
//!
//! A write is a *decision* taken over the key's current value (as the coordinator sees
//! it): write nothing, or write one new sibling with either the coordinator's current
//! context (superseding everything it has seen, as SET does) or a context the client gave
//! (RESOLVE). The coordinator assigns the dot on its own replica, in one local transaction
//! with the read the decision saw, then sends the resulting sibling set to the key's other
//! replicas, which merge it; the write is acknowledged after W durable copies. Decisions
//! that depend on the current value are taken over the quorum read (R replicas merged),
//! which is first merged into the coordinator's replica. Reads return after R replies and
//! keep listening until the timeout, then repair every replica that answered with an
//! older or divergent set (read repair). A node without peers is a cluster of one and
//! takes the same path with N = R = W = 1.

pub mod antientropy;
pub mod handoff;
pub mod probe;
pub mod quorum;
pub mod reap;
pub mod rebalance;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::clock;
use crate::cluster::health::Health;
use crate::cluster::messages::{self, Request, Response};
use crate::cluster::{MemberInfo, Membership};
use crate::error::CoordError;
use crate::metrics as m;
use crate::ring::partition_of;
use crate::rpc::Pool;
use crate::storage::{Change, Committed, ScanItem, Store};
use crate::version::{NewSibling, NodeId, SiblingSet, VersionVector};
use quorum::{FanOut, Gathered, deadline_in};

/// Which causal context a new sibling is written with.
#[derive(Debug, Clone)]
pub enum WriteContext {
    /// The coordinating replica's current context: supersedes every sibling it holds.
    Current,
    /// A context a client obtained from `SIBLINGS`: supersedes only what it covers.
    Given(VersionVector),
}

/// What a command decided to do with one key.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Leave the key as it is.
    Nothing,
    /// Write a new sibling.
    Write {
        /// The context it is written with.
        context: WriteContext,
        /// The sibling's payload.
        sibling: NewSibling,
    },
}

impl Decision {
    /// Writes `value` over everything seen, with an optional absolute expiry.
    pub fn put(value: Bytes, expires_at_ms: Option<u64>, now_ms: u64) -> Decision {
        Decision::Write {
            context: WriteContext::Current,
            sibling: NewSibling {
                value,
                written_at_ms: now_ms,
                expires_at_ms,
                tombstone: false,
            },
        }
    }

    /// Deletes the key: a tombstone over everything seen.
    pub fn delete(now_ms: u64) -> Decision {
        Decision::Write {
            context: WriteContext::Current,
            sibling: NewSibling {
                value: Bytes::new(),
                written_at_ms: now_ms,
                expires_at_ms: None,
                tombstone: true,
            },
        }
    }
}

/// A write that was submitted; awaiting it yields the decision function's result once the
/// write is durable at the required number of replicas.
pub enum Pending<T> {
    /// A write this node alone holds: the store's receipt, awaited as it is (the usual
    /// write of a single node, without a boxed future of its own).
    Local(Committed<T>),
    /// Anything else: a local commit followed by replication, say.
    Boxed(Pin<Box<dyn Future<Output = Result<T, CoordError>> + Send>>),
}

impl<T> Pending<T> {
    /// Wraps a future as a pending result.
    pub fn boxed(f: impl Future<Output = Result<T, CoordError>> + Send + 'static) -> Pending<T> {
        Pending::Boxed(Box::pin(f))
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, CoordError>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Pending::Local(c) => Pin::new(c).poll(cx).map_err(CoordError::from),
            Pending::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

/// Replication settings in force (already capped at the member count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    /// Replicas per key.
    pub n: usize,
    /// Replies a read waits for.
    pub r: usize,
    /// Durable acknowledgements a write waits for.
    pub w: usize,
}

/// Counters of the coordinator, for INFO and metrics.
#[derive(Debug, Default)]
pub struct CoordStats {
    /// Client requests sent on to another node because this one is not a replica.
    pub forwards: AtomicU64,
    /// Replicas repaired by read repair.
    pub read_repairs: AtomicU64,
    /// Requests that failed for want of a quorum.
    pub quorum_failures: AtomicU64,
    /// Internode requests served.
    pub peer_requests: AtomicU64,
    /// Writes that went to a fallback because a home replica was down (sloppy quorum).
    pub sloppy_writes: AtomicU64,
    /// Hints handed back to their owners.
    pub hints_delivered: AtomicU64,
}

/// Where one key's copies go now: the first N healthy members of its preference list,
/// and for each fallback among them, the home replica (down) it stands in for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The nodes, best first.
    pub nodes: Vec<NodeId>,
    /// (fallback, owner) pairs.
    pub stand_ins: Vec<(NodeId, NodeId)>,
    /// Nodes the partition is moving to that are not among `nodes`: writes reach them
    /// too (so nothing written during a move falls into a gap), reads do not yet.
    pub extra: Vec<NodeId>,
}

impl Placed {
    /// The home replica `node` stands in for, if it is a fallback.
    pub fn owner_for(&self, node: NodeId) -> Option<NodeId> {
        self.stand_ins.iter().find(|(f, _)| *f == node).map(|(_, o)| *o)
    }
}

/// How this node reaches the rest of its cluster.
pub struct ClusterLink {
    /// Who the members are and where partitions live.
    pub membership: Arc<Membership>,
    /// Connections to peers.
    pub pool: Pool,
    /// Configured N, R, W (capped at the member count when used).
    pub configured: Quorum,
    /// Deadline of one internode request.
    pub timeout: Duration,
    /// Which peers answer, as this node sees them.
    pub health: Arc<Health>,
    /// Requests in flight per peer, bounded.
    pub in_flight: PeerLimits,
    /// Quorum rounds this node runs at once (reads and write replications), each held
    /// until every replica answered or the deadline passed.
    pub ops: Arc<tokio::sync::Semaphore>,
}

/// A bound on the requests in flight to each peer.
#[derive(Debug)]
pub struct PeerLimits {
    limit: usize,
    peers: std::sync::Mutex<ahash::AHashMap<NodeId, Arc<tokio::sync::Semaphore>>>,
}

impl PeerLimits {
    /// At most `limit` requests in flight to any one peer.
    pub fn new(limit: usize) -> PeerLimits {
        PeerLimits {
            limit,
            peers: std::sync::Mutex::new(ahash::AHashMap::new()),
        }
    }

    /// A slot for one request to `peer`, or `None` when all are taken.
    pub fn try_acquire(&self, peer: NodeId) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut m = self.peers.lock().ok()?;
            m.entry(peer)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.limit)))
                .clone()
        };
        sem.try_acquire_owned().ok()
    }
}

/// Where a key's command runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Here: this node is one of the key's replicas.
    Local,
    /// On this member: the first of the key's replicas.
    Forward(MemberInfo),
}

/// Coordinates reads and writes of keys for this node.
#[derive(Clone)]
pub struct Coordinator {
    node_id: NodeId,
    store: Store,
    cluster: Option<Arc<ClusterLink>>,
    stats: Arc<CoordStats>,
    ae: Arc<antientropy::AeStats>,
    rebalance: Arc<rebalance::RebalanceStats>,
}

impl Coordinator {
    /// A coordinator over the local store, writing dots as `node_id`, with peers reached
    /// through `cluster` (none: a cluster of one).
    pub fn new(node_id: NodeId, store: Store, cluster: Option<ClusterLink>) -> Coordinator {
        Coordinator {
            node_id,
            store,
            cluster: cluster.map(Arc::new),
            stats: Arc::new(CoordStats::default()),
            ae: Arc::new(antientropy::AeStats::default()),
            rebalance: Arc::new(rebalance::RebalanceStats::default()),
        }
    }

    /// This node's id (the name in version vectors).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The local store (for INFO figures and background workers).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The cluster link, when this node has peers.
    pub fn cluster(&self) -> Option<&ClusterLink> {
        self.cluster.as_deref()
    }

    /// The coordinator's counters.
    pub fn stats(&self) -> &CoordStats {
        &self.stats
    }

    /// N, R, W in force for the current membership.
    pub fn quorum(&self) -> Quorum {
        match &self.cluster {
            None => Quorum { n: 1, r: 1, w: 1 },
            Some(c) => {
                let members = c.membership.view().members().len().max(1);
                let n = c.configured.n.min(members);
                Quorum {
                    n,
                    r: c.configured.r.min(n),
                    w: c.configured.w.min(n),
                }
            }
        }
    }

    /// This node's membership fingerprint and N: nodes agree on placement when these are
    /// equal (see [`crate::cluster::membership::View::fingerprint`]).
    pub fn view_fingerprint(&self) -> (u64, u8) {
        let n = self.quorum().n.min(usize::from(u8::MAX)) as u8;
        match &self.cluster {
            None => (0, n),
            Some(c) => (c.membership.view().fingerprint(), n),
        }
    }

    /// Where `key`'s copies go now (this node alone without a cluster): the first N
    /// members of its preference list that this node believes up (itself always).
    pub fn placed(&self, key: &[u8]) -> Placed {
        let Some(c) = &self.cluster else {
            return Placed {
                nodes: vec![self.node_id],
                stand_ins: Vec::new(),
                extra: Vec::new(),
            };
        };
        let view = c.membership.view();
        let p = partition_of(key);
        let n = self.quorum().n;
        let now = std::time::Instant::now();
        let me = self.node_id;
        let nodes = view
            .placement()
            .first_healthy(p, n, |id| id == me || c.health.is_up(id, now));
        let home = view.replicas(p, n);
        let fallbacks = nodes.iter().filter(|id| !home.contains(id));
        let missing = home.iter().filter(|id| !nodes.contains(id));
        let stand_ins = fallbacks.copied().zip(missing.copied()).collect();
        let extra = if view.in_transition() {
            let n_target = c.configured.n.min(view.target().members().len()).max(1);
            view.target_replicas(p, n_target)
                .into_iter()
                .filter(|id| !nodes.contains(id) && (*id == me || c.health.is_up(*id, now)))
                .collect()
        } else {
            Vec::new()
        };
        Placed {
            nodes,
            stand_ins,
            extra,
        }
    }

    /// The nodes holding `key` now (see [`Coordinator::placed`]).
    pub fn replicas(&self, key: &[u8]) -> Vec<NodeId> {
        self.placed(key).nodes
    }

    /// Where a command on `key` runs: here when this node is one of the key's first N
    /// healthy nodes, else on the first of them.
    pub fn route(&self, key: &[u8]) -> Route {
        let Some(c) = &self.cluster else {
            return Route::Local;
        };
        let nodes = self.placed(key).nodes;
        if nodes.contains(&self.node_id) {
            return Route::Local;
        }
        match nodes.first().and_then(|id| c.membership.view().member(*id).cloned()) {
            Some(m) => Route::Forward(m),
            None => Route::Local,
        }
    }

    /// Waits for one of the node's quorum slots. Quorum rounds beyond the limit wait here,
    /// before their deadline starts, so that under overload requests queue at the edge
    /// (clients see latency) instead of inside peers, where they would miss deadlines.
    async fn op_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let c = self.cluster.as_ref()?;
        c.ops.clone().acquire_owned().await.ok()
    }

    /// The rebalancer's counters.
    pub fn rebalance_stats(&self) -> &rebalance::RebalanceStats {
        &self.rebalance
    }

    /// The anti-entropy worker's counters.
    pub fn ae_stats(&self) -> &antientropy::AeStats {
        &self.ae
    }

    /// Sends one encoded request to a peer and returns the encoded response, waiting up
    /// to `timeouts` request timeouts (background work that walks the store); the outcome
    /// feeds the failure detector.
    pub async fn call_bytes(&self, member: &MemberInfo, request: Bytes, timeouts: u32) -> Result<Bytes, String> {
        let c = self.cluster.as_ref().ok_or("no cluster")?;
        let addr = resolve(&member.cluster_addr).await.ok_or("unresolvable address")?;
        let result = c.pool.call(addr, request, c.timeout * timeouts).await;
        match &result {
            Ok(_) => c.health.success(member.id, std::time::Instant::now()),
            Err(_) => c.health.failure(member.id, std::time::Instant::now()),
        }
        result.map_err(|e| e.to_string())
    }

    /// Sends one request to a peer and decodes its response; the outcome feeds the
    /// failure detector.
    pub async fn call(&self, member: &MemberInfo, req: &Request) -> Result<Response, String> {
        let c = self.cluster.as_ref().ok_or("no cluster")?;
        let addr = resolve(&member.cluster_addr).await.ok_or("unresolvable address")?;
        // A forwarded command may itself wait for a quorum read and then a quorum write;
        // whole-node requests (scan, count, flush) walk a store.
        let timeout = match req {
            Request::Forward { .. } => c.timeout * 3,
            Request::Scan { .. } | Request::ScanParts { .. } | Request::Count { .. } | Request::Flush { .. } => {
                c.timeout * 10
            }
            _ => c.timeout,
        };
        // Replication to a slow replica is bounded: past the limit a copy fails at once
        // instead of queueing behind thousands of others (the replica then misses writes
        // that read repair restores, rather than the backlog holding memory and delaying
        // every read and ping behind it). Other requests are never refused here.
        let permit = match req {
            Request::Put { .. } => Some(
                c.in_flight
                    .try_acquire(member.id)
                    .ok_or("peer overloaded: too many copies in flight")?,
            ),
            _ => None,
        };
        let result = c.pool.call(addr, messages::encode(req), timeout).await;
        drop(permit);
        match &result {
            Ok(_) => c.health.success(member.id, std::time::Instant::now()),
            Err(_) => c.health.failure(member.id, std::time::Instant::now()),
        }
        let bytes = result.map_err(|e| e.to_string())?;
        match messages::decode::<Response>(&bytes) {
            Ok(Response::Error(e)) => Err(e),
            Ok(r) => Ok(r),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Runs a client command on `member` as its coordinator (one hop); returns the reply
    /// already encoded for protocol `proto`.
    pub async fn forward(&self, member: &MemberInfo, proto: u8, args: Vec<Bytes>) -> Result<Bytes, CoordError> {
        self.stats.forwards.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(m::FORWARDS).increment(1);
        let timeout = self.cluster.as_ref().map_or(Duration::from_secs(1), |c| c.timeout) * 3;
        let deadline_ms = clock::now_ms() + timeout.as_millis() as u64;
        match self
            .call(
                member,
                &Request::Forward {
                    proto,
                    args,
                    deadline_ms,
                },
            )
            .await
        {
            Ok(Response::Reply(b)) => Ok(b),
            Ok(other) => Err(CoordError::Peer(format!("unexpected answer to a forward: {other:?}"))),
            Err(e) => Err(CoordError::Peer(format!(
                "forward to {} failed: {e}",
                member.client_addr
            ))),
        }
    }

    /// This node's own copy of `key`, without asking any other replica.
    pub fn local(&self, key: &[u8]) -> Result<Option<SiblingSet>, CoordError> {
        Ok(self.store.get(key)?)
    }

    /// Merges `set` into this node's copy of `key`, durably; true if the copy changed.
    /// `hint_for`: this node holds the copy as a fallback for that (down) owner.
    pub async fn merge_local(&self, key: Bytes, set: SiblingSet, hint_for: Option<NodeId>) -> Result<bool, CoordError> {
        let store = move |set: SiblingSet| match hint_for {
            Some(owner) => Change::PutHinted(set, vec![owner]),
            None => Change::Put(set),
        };
        // The current set is lent (see `Store::submit_one`): it is left in place when
        // nothing changes, and merged into a copy otherwise.
        Ok(self
            .store
            .submit_one(key, move |cur, _| match cur {
                Some(c) => {
                    let mut merged = c.clone();
                    merged.merge(&set);
                    if merged == *c && hint_for.is_none() {
                        (Change::Keep, false)
                    } else {
                        let changed = merged != *c;
                        (store(merged), changed)
                    }
                }
                None => (store(set), true),
            })
            .await?
            .await?)
    }

    /// The merged sibling set of `key` over R replicas (dead siblings included), or
    /// `None`. Stale replicas seen before the timeout are repaired in the background.
    pub async fn read(&self, key: &[u8]) -> Result<Option<SiblingSet>, CoordError> {
        if self.cluster.is_none() {
            return Ok(self.store.get(key)?);
        }
        let placed = self.placed(key);
        if placed.nodes == [self.node_id] {
            return Ok(self.store.get(key)?);
        }
        self.quorum_read(Bytes::copy_from_slice(key), placed).await
    }

    /// [`Coordinator::read`] reduced to what a plain read answers: the live winner at
    /// `now_ms` and the number of live siblings (0 for a missing key). A key kept only
    /// here is decoded no further than that.
    pub async fn read_winner(
        &self,
        key: &[u8],
        now_ms: u64,
    ) -> Result<(Option<crate::version::Sibling>, usize), CoordError> {
        let placed = self.cluster.as_ref().map(|_| self.placed(key));
        let Some(placed) = placed.filter(|p| p.nodes != [self.node_id]) else {
            return Ok(self.store.get_winner(key, now_ms)?.unwrap_or((None, 0)));
        };
        let set = self.quorum_read(Bytes::copy_from_slice(key), placed).await?;
        let live = set.as_ref().map_or(0, |s| s.live(now_ms).count());
        Ok((set.and_then(|s| s.into_winner(now_ms)), live))
    }

    async fn quorum_read(&self, key: Bytes, placed: Placed) -> Result<Option<SiblingSet>, CoordError> {
        let q = self.quorum();
        let timeout = self.cluster.as_ref().map_or(Duration::from_secs(1), |c| c.timeout);
        let slot = self.op_slot().await;
        let deadline = deadline_in(timeout);
        let me = self.clone();
        let k = key.clone();
        let mut fan = FanOut::start(&placed.nodes, move |node| {
            let me = me.clone();
            let k = k.clone();
            async move { me.replica_get(node, k).await }
        });
        let mut got = Gathered::default();
        let started = std::time::Instant::now();
        let met = fan.gather(q.r, deadline, &mut got).await;
        record_quorum("read", met, &placed, started);
        if !met {
            self.stats.quorum_failures.fetch_add(1, Ordering::Relaxed);
            return Err(CoordError::quorum("read", q.r, got.ok.len(), got.failed));
        }
        let merged = merge_all(got.ok.iter().map(|(_, s)| s));
        // Keep listening until the deadline, then repair every replica that is behind.
        let me = self.clone();
        tokio::spawn(async move {
            let rest = fan.rest(deadline).await;
            drop(slot);
            let mut answers = got.ok;
            answers.extend(rest.ok);
            me.repair(key, answers, &placed).await;
        });
        Ok(merged)
    }

    /// Sends the merge of `answers` to every replica whose answer differs from it.
    async fn repair(&self, key: Bytes, answers: Vec<(NodeId, Option<SiblingSet>)>, placed: &Placed) {
        let Some(merged) = merge_all(answers.iter().map(|(_, s)| s)) else {
            return;
        };
        for (node, set) in answers {
            if set.as_ref() == Some(&merged) {
                continue;
            }
            let hint = placed.owner_for(node);
            let ok = if node == self.node_id {
                self.merge_local(key.clone(), merged.clone(), hint).await.is_ok()
            } else {
                self.replica_put(node, key.clone(), &merged, hint).await.is_ok()
            };
            if ok {
                self.stats.read_repairs.fetch_add(1, Ordering::Relaxed);
                ::metrics::counter!(m::READ_REPAIRS).increment(1);
                tracing::debug!(node = format!("{node:016x}"), "read repair");
            }
        }
    }

    async fn member(&self, node: NodeId) -> Result<MemberInfo, String> {
        let c = self.cluster.as_ref().ok_or("no cluster")?;
        c.membership
            .view()
            .member(node)
            .cloned()
            .ok_or_else(|| format!("unknown member {node:016x}"))
    }

    /// One replica's copy of a key (this node's from the store).
    async fn replica_get(&self, node: NodeId, key: Bytes) -> Result<Option<SiblingSet>, String> {
        if node == self.node_id {
            return self.store.get(&key).map_err(|e| e.to_string());
        }
        let m = self.member(node).await?;
        match self.call(&m, &Request::Get { key }).await? {
            Response::Set(None) => Ok(None),
            Response::Set(Some(b)) => SiblingSet::decode(&b).map(Some).map_err(|e| e.to_string()),
            other => Err(format!("unexpected answer to a read: {other:?}")),
        }
    }

    /// Sends a set to a replica, which merges it durably (as a hint for `hint_for`).
    pub async fn replica_put(
        &self,
        node: NodeId,
        key: Bytes,
        set: &SiblingSet,
        hint_for: Option<NodeId>,
    ) -> Result<(), String> {
        let m = self.member(node).await?;
        let req = Request::Put {
            key,
            set: Bytes::from(set.to_bytes()),
            hint_for,
        };
        match self.call(&m, &req).await? {
            Response::Ack => Ok(()),
            other => Err(format!("unexpected answer to a write: {other:?}")),
        }
    }

    /// Submits a write of one key: `decide` sees the current set and the time, returns a
    /// decision and a result. A `blind` write's decision does not look at the current
    /// value (SET without conditions), so no quorum read precedes it. Returns once the
    /// write is queued locally (writes of one caller apply in submission order); the
    /// returned future resolves when W replicas hold it durably.
    pub async fn submit<T, F>(&self, key: Bytes, blind: bool, decide: F) -> Result<Pending<T>, CoordError>
    where
        T: Send + 'static,
        F: FnOnce(Option<&SiblingSet>, u64) -> (Decision, T) + Send + 'static,
    {
        let replicated = self.cluster.is_some() && self.quorum().n > 1;
        // A single node places every key on itself and holds no hints: nothing to compute.
        let placed = self.cluster.is_some().then(|| self.placed(&key));
        if let (true, false, Some(p)) = (replicated, blind, &placed) {
            self.read_first(&key, p).await?;
        }
        let node = self.node_id;
        let hint = placed.as_ref().and_then(|p| p.owner_for(node));
        let placed = match placed {
            Some(p) if replicated => p,
            // This node alone holds the key: its commit is the whole write.
            _ => {
                let committed = self
                    .store
                    .submit_one(key, move |current, now_us| {
                        let (d, t) = decide(current.as_ref(), now_us / 1000);
                        (apply(node, current, d, hint, now_us), t)
                    })
                    .await?;
                return Ok(Pending::Local(committed));
            }
        };
        let committed = self
            .store
            .submit_one(key.clone(), move |current, now_us| {
                let (d, t) = decide(current.as_ref(), now_us / 1000);
                let change = apply(node, current, d, hint, now_us);
                let written = match &change {
                    Change::Put(set) | Change::PutHinted(set, _) => Some(set.clone()),
                    _ => None,
                };
                (change, (t, written))
            })
            .await?;
        // As in `submit_many`: replicate as soon as the local commit is done.
        let me = self.clone();
        let task = tokio::spawn(async move {
            let (t, written) = committed.await?;
            if let Some(set) = written {
                me.replicate(key, set, &placed).await?;
            }
            Ok(t)
        });
        Ok(Pending::boxed(async move {
            task.await
                .map_err(|e| CoordError::Peer(format!("write task failed: {e}")))?
        }))
    }

    /// Before a write that looks at the current value: brings this node's copy of `key`
    /// up to date from a read quorum, unless this node is its only replica.
    async fn read_first(&self, key: &Bytes, placed: &Placed) -> Result<(), CoordError> {
        if placed.nodes.iter().all(|r| *r == self.node_id) {
            return Ok(());
        }
        if let Some(merged) = self.quorum_read(key.clone(), placed.clone()).await? {
            self.merge_local(key.clone(), merged, placed.owner_for(self.node_id))
                .await?;
        }
        Ok(())
    }

    /// [`Coordinator::submit`] over several keys, decided together atomically on this node.
    pub async fn submit_many<T, F>(
        &self,
        mut keys: Vec<Bytes>,
        blind: bool,
        decide: F,
    ) -> Result<Pending<T>, CoordError>
    where
        T: Send + 'static,
        F: FnOnce(&[Option<SiblingSet>], u64) -> (Vec<Decision>, T) + Send + 'static,
    {
        let replicated = self.cluster.is_some() && self.quorum().n > 1;
        // A single node places every key on itself and holds no hints: nothing to compute.
        let placements: Vec<Placed> = if self.cluster.is_some() {
            keys.iter().map(|k| self.placed(k)).collect()
        } else {
            Vec::new()
        };
        if replicated && !blind {
            for (k, placed) in keys.iter().zip(&placements) {
                self.read_first(k, placed).await?;
            }
        }
        let node = self.node_id;
        let my_hints: Vec<Option<NodeId>> = placements.iter().map(|p| p.owner_for(node)).collect();
        let store_keys = if replicated {
            keys.clone()
        } else {
            std::mem::take(&mut keys)
        };
        let committed = self
            .store
            .submit_many(store_keys, move |sets, now_us| {
                let now = now_us / 1000;
                let (decisions, t) = decide(&sets, now);
                let mut written = Vec::new();
                let changes = sets
                    .into_iter()
                    .zip(decisions)
                    .enumerate()
                    .map(|(i, (mut current, d))| {
                        let change = apply(node, &mut current, d, my_hints.get(i).copied().flatten(), now_us);
                        if let (true, Change::Put(set) | Change::PutHinted(set, _)) = (replicated, &change) {
                            written.push((i, set.clone()));
                        }
                        change
                    })
                    .collect();
                (changes, (t, written))
            })
            .await?;
        if !replicated {
            return Ok(Pending::boxed(async move { Ok(committed.await?.0) }));
        }
        // Replicate as soon as the local commit is done, not when the caller gets round to
        // awaiting: pipelined writes then replicate concurrently (merges commute).
        let me = self.clone();
        let task = tokio::spawn(async move {
            let (t, written) = committed.await?;
            for (i, set) in written {
                me.replicate(keys[i].clone(), set, &placements[i]).await?;
            }
            Ok(t)
        });
        Ok(Pending::boxed(async move {
            task.await
                .map_err(|e| CoordError::Peer(format!("write task failed: {e}")))?
        }))
    }

    /// Sends a set just written here to the key's other nodes (fallbacks hold it as a
    /// hint for the owner they stand in for); returns after W durable copies in all
    /// (this node's counts as one).
    async fn replicate(&self, key: Bytes, set: SiblingSet, placed: &Placed) -> Result<(), CoordError> {
        let q = self.quorum();
        let others: Vec<NodeId> = placed
            .nodes
            .iter()
            .chain(&placed.extra)
            .copied()
            .filter(|r| *r != self.node_id)
            .collect();
        let need = q.w.saturating_sub(1).min(others.len());
        if others.is_empty() {
            return Ok(());
        }
        if !placed.stand_ins.is_empty() {
            self.stats.sloppy_writes.fetch_add(1, Ordering::Relaxed);
            ::metrics::counter!(m::SLOPPY_WRITES).increment(1);
        }
        let timeout = self.cluster.as_ref().map_or(Duration::from_secs(1), |c| c.timeout);
        let slot = self.op_slot().await;
        let me = self.clone();
        let set = Arc::new(set);
        let shared = Arc::new(placed.clone());
        let mut fan = FanOut::start(&others, move |node| {
            let me = me.clone();
            let key = key.clone();
            let set = set.clone();
            let hint = shared.owner_for(node);
            async move { me.replica_put(node, key, &set, hint).await }
        });
        let mut got = Gathered::default();
        let started = std::time::Instant::now();
        let deadline = deadline_in(timeout);
        let met = fan.gather(need, deadline, &mut got).await;
        record_quorum("write", met, placed, started);
        // The slot stays taken until the last copy is acknowledged or timed out, so the
        // copies behind W never pile up without bound at a slow replica.
        tokio::spawn(async move {
            let _ = fan.rest(deadline).await;
            drop(slot);
        });
        if met {
            Ok(())
        } else {
            self.stats.quorum_failures.fetch_add(1, Ordering::Relaxed);
            Err(CoordError::quorum("write", q.w, got.ok.len() + 1, got.failed))
        }
    }

    /// Up to about `count` records from scan position `cursor` over the whole cluster,
    /// and where to resume (0: done). Each partition is read from this node when it is
    /// one of its replicas, else from its first replica.
    pub async fn scan(&self, cursor: u64, count: usize) -> Result<(u64, Vec<ScanItem>), CoordError> {
        let Some(c) = &self.cluster else {
            return Ok(self.store.scan(cursor, 0, count)?);
        };
        let view = c.membership.view();
        let n = self.quorum().n;
        let now = std::time::Instant::now();
        let me = self.node_id;
        // A home replica holds the partition's records: this node if it is one, else the
        // first that answers; a fallback only when no home replica does.
        let source = |p: u16| -> NodeId {
            let home = view.replicas(p, n);
            if home.contains(&me) {
                return me;
            }
            let up = |id: &NodeId| c.health.is_up(*id, now);
            home.iter()
                .copied()
                .find(up)
                .or_else(|| home.first().copied())
                .unwrap_or(me)
        };
        let mut cursor = cursor;
        let mut out = Vec::new();
        loop {
            let p = (cursor >> 50) as u16;
            let src = source(p);
            // The run of following partitions read from the same node.
            let mut q = u32::from(p) + 1;
            while q < 16384 && source(q as u16) == src {
                q += 1;
            }
            let end = if q >= 16384 { 0 } else { u64::from(q) << 50 };
            let budget = count.saturating_sub(out.len()).max(1);
            let (next, items) = if src == self.node_id {
                self.store.scan(cursor, end, budget)?
            } else {
                let m = self.member(src).await.map_err(CoordError::Peer)?;
                let req = Request::Scan {
                    cursor,
                    end,
                    count: budget.min(u32::MAX as usize) as u32,
                };
                match self.call(&m, &req).await.map_err(CoordError::Peer)? {
                    Response::Scan { next, items } => {
                        let mut decoded = Vec::with_capacity(items.len());
                        for (key, set) in items {
                            let set = SiblingSet::decode(&set).map_err(|e| CoordError::Peer(e.to_string()))?;
                            decoded.push(ScanItem { key, set });
                        }
                        (next, decoded)
                    }
                    other => return Err(CoordError::Peer(format!("unexpected answer to a scan: {other:?}"))),
                }
            };
            out.extend(items);
            if next != end {
                return Ok((next, out));
            }
            if end == 0 {
                return Ok((0, out));
            }
            cursor = end;
            if out.len() >= count {
                return Ok((cursor, out));
            }
        }
    }

    /// Records of this node's store from `cursor` up to `end` (0: the end).
    pub fn scan_local(&self, cursor: u64, end: u64, count: usize) -> Result<(u64, Vec<ScanItem>), CoordError> {
        Ok(self.store.scan(cursor, end, count)?)
    }

    /// Up to `count` local records of `partitions` (ascending) from position `cursor`,
    /// and the position to resume from (0 when every partition is done).
    pub fn scan_parts(
        &self,
        partitions: &[u16],
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<ScanItem>), CoordError> {
        let mut out = Vec::new();
        for (i, &p) in partitions.iter().enumerate() {
            let start = u64::from(p) << 50;
            let end = if p + 1 >= crate::ring::PARTITIONS {
                0
            } else {
                u64::from(p + 1) << 50
            };
            if end != 0 && cursor >= end {
                continue;
            }
            let (next, items) = self
                .store
                .scan(start.max(cursor), end, count.saturating_sub(out.len()).max(1))?;
            out.extend(items);
            if next != end {
                return Ok((next, out));
            }
            if out.len() >= count {
                let resume = partitions.get(i + 1).map_or(0, |q| u64::from(*q) << 50);
                return Ok((resume, out));
            }
        }
        Ok((0, out))
    }

    /// Live keys in the given partitions of this node's store, and how many of them
    /// have an expiry.
    pub fn count_local(&self, partitions: &[u16]) -> Result<(u64, u64), CoordError> {
        let now = clock::now_ms();
        let (mut total, mut expiring) = (0, 0);
        for &p in partitions {
            let start = u64::from(p) << 50;
            let end = if p >= 16383 { 0 } else { u64::from(p + 1) << 50 };
            let mut cursor = start;
            loop {
                let (next, items) = self.store.scan(cursor, end, 1000)?;
                for w in items.iter().filter_map(|it| it.set.winner(now)) {
                    total += 1;
                    expiring += u64::from(w.expires_at_ms.is_some());
                }
                if next == end || next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok((total, expiring))
    }

    /// Live keys in the whole cluster, and how many have an expiry: each member counts the
    /// partitions it leads.
    pub async fn count_all(&self) -> Result<(u64, u64), CoordError> {
        let Some(c) = &self.cluster else {
            return self.count_local(&(0..16384u16).collect::<Vec<_>>());
        };
        let view = c.membership.view();
        let now = std::time::Instant::now();
        let me = self.node_id;
        let n = self.quorum().n;
        let (mut total, mut expiring) = (0, 0);
        for m in view.members() {
            let partitions: Vec<u16> = (0..16384u16)
                .filter(|&p| {
                    let home = view.replicas(p, n);
                    let up = |id: &NodeId| *id == me || c.health.is_up(*id, now);
                    home.iter().copied().find(up).or_else(|| home.first().copied()) == Some(m.id)
                })
                .collect();
            if partitions.is_empty() {
                continue;
            }
            let (k, e) = if m.id == self.node_id {
                self.count_local(&partitions)?
            } else {
                match self
                    .call(m, &Request::Count { partitions })
                    .await
                    .map_err(CoordError::Peer)?
                {
                    Response::Count(k, e) => (k, e),
                    other => return Err(CoordError::Peer(format!("unexpected answer to a count: {other:?}"))),
                }
            };
            total += k;
            expiring += e;
        }
        Ok((total, expiring))
    }

    /// Removes every key on this node.
    pub async fn flush_local(&self, before_ms: u64) -> Result<(), CoordError> {
        Ok(self.store.clear(before_ms).await?)
    }

    /// Removes every key of the cluster: every member flushes, all with the same time, so
    /// that no node stores again what was written before it (see `Store::clear`).
    pub async fn flush_all(&self) -> Result<(), CoordError> {
        // Every write acknowledged before this FLUSHALL was dated at most now.
        let before_ms = crate::clock::now_ms() + 1;
        self.flush_local(before_ms).await?;
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        for m in c.membership.view().reachable().iter().filter(|m| m.id != self.node_id) {
            self.call(m, &Request::Flush { before_ms })
                .await
                .map_err(CoordError::Peer)?;
        }
        Ok(())
    }
}

/// Counts a quorum round by outcome (met, sloppy: met with a fallback, failed) and times it.
fn record_quorum(op: &'static str, met: bool, placed: &Placed, started: std::time::Instant) {
    let outcome = match (met, placed.stand_ins.is_empty()) {
        (false, _) => "failed",
        (true, true) => "met",
        (true, false) => "sloppy",
    };
    ::metrics::counter!(m::QUORUMS, "op" => op, "outcome" => outcome).increment(1);
    if met {
        ::metrics::histogram!(m::QUORUM_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
    }
}

/// The DVV merge of every answered set.
fn merge_all<'a>(sets: impl Iterator<Item = &'a Option<SiblingSet>>) -> Option<SiblingSet> {
    let mut merged: Option<SiblingSet> = None;
    for s in sets.flatten() {
        match &mut merged {
            Some(m) => m.merge(s),
            None => merged = Some(s.clone()),
        }
    }
    merged
}

async fn resolve(addr: &str) -> Option<SocketAddr> {
    crate::cluster::gossip::resolve(addr).await
}

/// Turns a decision into the change of the stored record, assigning the new dot; a record
/// written here as a fallback carries a hint for the owner it stands in for. `current` is
/// lent (see `Store::submit_one`): it is taken only when the change writes it.
fn apply(
    node: NodeId,
    current: &mut Option<SiblingSet>,
    decision: Decision,
    hint_for: Option<NodeId>,
    now_us: u64,
) -> Change {
    match decision {
        Decision::Nothing => Change::Keep,
        Decision::Write { context, sibling } => {
            let mut set = current.take().unwrap_or_default();
            match context {
                WriteContext::Current => set.write_current(node, now_us, sibling),
                WriteContext::Given(c) => set.write(&c, node, now_us, sibling),
            };
            match hint_for {
                Some(owner) => Change::PutHinted(set, vec![owner]),
                None => Change::Put(set),
            }
        }
    }
}
