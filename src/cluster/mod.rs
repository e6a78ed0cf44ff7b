//! The cluster: who the members are, where each partition lives, and the messages nodes
//! exchange. Must not know RESP or commands; the coordinator uses it to reach replicas.
//!
//! Membership here is static: the configured seeds and the peers they know, learned
//! through the internode handshake and kept in the store's metadata so that a restarted
//! node comes back with the same ring. Gossip and live joins replace [`discovery`] later
//! behind the same [`Membership`] interface.

pub mod discovery;
pub mod health;
pub mod membership;
pub mod messages;

pub use membership::{MemberInfo, Membership, View};
