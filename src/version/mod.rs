//! Causal versioning for dynkv values.
//!
//! Every stored key is a *sibling set* (a DVV-set, also known as a dotted
//! causal container): a causal context, i.e. a [`VersionVector`] over node
//! ids, plus one or more [`Sibling`]s. Each sibling carries the [`Dot`]
//! `(node, counter)` of the write that created it, its wall-clock write time,
//! an optional absolute expiry and a tombstone flag.
//!
//! Why this design:
//! * Version vectors name *nodes* (coordinators), never clients, so their
//!   size is bounded by the cluster size rather than the client population.
//! * Dots let the set tell precisely which concurrent writes a client has
//!   already seen: a write that carries context `C` removes exactly the
//!   siblings covered by `C` and keeps every concurrent one.
//! * [`SiblingSet::merge`] is a lattice join (commutative, associative,
//!   idempotent), so anti-entropy, read repair and hinted handoff can apply
//!   replica states in any order, any number of times, and still converge.
//!
//! The module is split into:
//! * `vector`: [`Dot`], [`VersionVector`] and the printable client context
//!   token ([`VersionVector::to_token`] / [`VersionVector::from_token`]);
//! * `sibling_set`: [`Sibling`], [`NewSibling`], [`SiblingSet`] with the
//!   write / merge / live / winner rules;
//! * `codec`: the versioned binary on-disk / on-wire encoding
//!   ([`SiblingSet::encode`] / [`SiblingSet::decode`]).

mod codec;
mod sibling_set;
mod vector;

pub use codec::{DecodeError, FORMAT_VERSION, skim_winner};
pub use sibling_set::{NewSibling, Sibling, SiblingSet};
pub use vector::{ContextError, Dot, NodeId, VersionVector};
