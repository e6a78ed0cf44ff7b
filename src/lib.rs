//! dynkv: a Dynamo-style, highly available, replicated key-value store that speaks the
//! Redis protocol.
//!
//! # Layout
//! - [`config`]: settings, defaults, the TOML file and flags, validation.
//! - [`error`]: the library's error types.
//! - [`shutdown`]: the one stop signal every loop takes.
//! - [`clock`]: wall-clock time in the store's units.
//! - [`ring`]: the partition (hash slot) of a key and the preference lists. Pure.
//! - [`version`]: dotted version vectors and sibling sets, and their byte format. Pure.
//! - [`storage`]: the LMDB store (the only module that imports `heed`), group commit,
//!   and the write-ahead log that makes a commit durable with one flush.
//! - [`coordinator`]: reads and writes of keys as decisions over sibling sets, quorum
//!   fan-out over replicas, read repair; background workers: hinted handoff, Merkle
//!   anti-entropy, reaping of dead records, partition transfers on ring changes.
//! - [`cluster`]: the member table, its placements, gossip, failure detection, internode
//!   messages.
//! - [`rpc`]: the internode transport (framing, secret handshake, connection pool).
//! - [`internode`]: what a node answers to its peers.
//! - [`resp`]: the Redis protocol: parser, replies, connections, listener, commands.
//! - [`metrics`]: the names of every Prometheus metric and the exporter.
//! - [`sweep`]: the background walk that counts dead records and hands those past their
//!   grace to the reaper.
//! - [`node`]: a running node's shared state; [`server`] starts and stops one.
//! - [`dev_cluster`]: `dynkv dev-cluster`, a local cluster of real processes.
//! - [`migrate`]: `dynkv migrate`, copying a live Redis's string keys into dynkv.

#![warn(missing_docs)]

pub mod clock;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod dev_cluster;
pub mod error;
pub mod internode;
pub mod metrics;
pub mod migrate;
pub mod node;
pub mod resp;
pub mod ring;
pub mod rpc;
pub mod server;
pub mod shutdown;
pub mod storage;
pub mod striped;
pub mod sweep;
pub mod version;
