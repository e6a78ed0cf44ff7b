//! The cluster: who the members are, where each partition lives, and the messages nodes
//! exchange. Must not know RESP or commands; the coordinator uses it to reach replicas.
//!
//! Membership is a versioned member table spread by [`gossip`] and changed only on an
//! operator's word (a node started with seeds asks to join; `DYNKV.LEAVE`, `DYNKV.REMOVE`
//! and `DYNKV.WEIGHT` change members), kept in the store so a restart comes back with the
//! same ring.

pub mod gossip;
pub mod health;
pub mod membership;
pub mod messages;

pub use membership::{MemberInfo, MemberRecord, MemberState, Membership, View};
