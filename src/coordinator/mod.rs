//! The coordinator: every command's reads and writes of keys go through it. Must not know
//! RESP or command syntax; it speaks sibling sets and write decisions.
//!
//! A write is a *decision* taken over the key's current value (as the coordinator sees
//! it): write nothing, or write one new sibling with either the coordinator's current
//! context (superseding everything it has seen, as SET does) or a context the client gave
//! (RESOLVE). The coordinator assigns the dot and stores the result. This shape is what a
//! replicated coordinator runs too: decide on the merged read, apply on the coordinating
//! replica, send the resulting set to the other replicas. Today the node is a cluster of
//! one (N = R = W = 1), so the coordinating replica is the local store.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::clock;
use crate::error::CoordError;
use crate::storage::{Change, ScanItem, Store};
use crate::version::{NewSibling, NodeId, SiblingSet, VersionVector};

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
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T, CoordError>> + Send>>;

/// Coordinates reads and writes of keys for this node.
#[derive(Clone)]
pub struct Coordinator {
    node_id: NodeId,
    store: Store,
}

impl Coordinator {
    /// A coordinator over the local store, writing dots as `node_id`.
    pub fn new(node_id: NodeId, store: Store) -> Coordinator {
        Coordinator { node_id, store }
    }

    /// This node's id (the name in version vectors).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The local store (for INFO figures and background workers).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The merged sibling set of `key` (dead siblings included), or `None`.
    pub async fn read(&self, key: &[u8]) -> Result<Option<SiblingSet>, CoordError> {
        Ok(self.store.get(key)?)
    }

    /// Submits a write of one key: `decide` sees the current set and the time, returns a
    /// decision and a result. Returns once the write is queued (writes of one caller
    /// apply in submission order); the returned future resolves when it is durable.
    pub async fn submit<T, F>(&self, key: Bytes, decide: F) -> Result<Pending<T>, CoordError>
    where
        T: Send + 'static,
        F: FnOnce(Option<&SiblingSet>, u64) -> (Decision, T) + Send + 'static,
    {
        self.submit_many(vec![key], move |sets, now| {
            let (d, t) = decide(sets.first().and_then(|s| s.as_ref()), now);
            (vec![d], t)
        })
        .await
    }

    /// [`Coordinator::submit`] over several keys, decided together atomically on this node.
    pub async fn submit_many<T, F>(&self, keys: Vec<Bytes>, decide: F) -> Result<Pending<T>, CoordError>
    where
        T: Send + 'static,
        F: FnOnce(&[Option<SiblingSet>], u64) -> (Vec<Decision>, T) + Send + 'static,
    {
        let node = self.node_id;
        let committed = self
            .store
            .submit_many(keys, move |sets| {
                let now = clock::now_ms();
                let (decisions, t) = decide(&sets, now);
                let changes = sets
                    .into_iter()
                    .zip(decisions)
                    .map(|(current, d)| apply(node, current, d))
                    .collect();
                (changes, t)
            })
            .await?;
        Ok(Box::pin(async move { Ok(committed.wait().await?) }))
    }

    /// Submits and waits: the common case of one write.
    pub async fn write<T, F>(&self, key: Bytes, decide: F) -> Result<T, CoordError>
    where
        T: Send + 'static,
        F: FnOnce(Option<&SiblingSet>, u64) -> (Decision, T) + Send + 'static,
    {
        self.submit(key, decide).await?.await
    }

    /// Up to `count` records from scan position `cursor`, and where to resume (0: done).
    pub async fn scan(&self, cursor: u64, count: usize) -> Result<(u64, Vec<ScanItem>), CoordError> {
        Ok(self.store.scan(cursor, count)?)
    }

    /// Removes every key.
    pub async fn flush_all(&self) -> Result<(), CoordError> {
        Ok(self.store.clear().await?)
    }
}

/// Turns a decision into the change of the stored record, assigning the new dot.
fn apply(node: NodeId, current: Option<SiblingSet>, decision: Decision) -> Change {
    match decision {
        Decision::Nothing => Change::Keep,
        Decision::Write { context, sibling } => {
            let mut set = current.unwrap_or_default();
            let ctx = match context {
                WriteContext::Current => set.context().clone(),
                WriteContext::Given(c) => c,
            };
            set.write(&ctx, node, clock::now_us(), sibling);
            Change::Put(set)
        }
    }
}
