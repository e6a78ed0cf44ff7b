//! Where a key lives: its partition (Redis Cluster's hash slot). Pure functions only; must
//! not touch storage or the network.

pub mod partition;
pub mod placement;

pub use partition::{PARTITIONS, partition_of};
