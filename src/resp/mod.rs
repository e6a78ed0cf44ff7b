//! The Redis protocol side: the request parser, replies, client connections and the
//! listener, and the commands. Must not touch storage: commands go through the coordinator.

pub mod client;
pub mod cmd;
pub mod connection;
pub mod listener;
pub mod parser;
pub mod reply;
pub mod spin;
