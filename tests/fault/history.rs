//! What the clients did and what faults were in force, as plain data for the checkers.

use std::collections::BTreeSet;

/// What an operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `SIBLINGS key` (a read; the set workload's first step).
    Read,
    /// `RESOLVE key ctx union`: adds `value` (one element) to a set key.
    Add,
    /// `SET key value`: a register write.
    Set,
}

impl Kind {
    /// Whether it writes.
    pub fn is_write(self) -> bool {
        !matches!(self, Kind::Read)
    }
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// An error reply: not acknowledged, but it may have reached a replica.
    Err(String),
    /// Sent, no reply (timeout or broken connection): may or may not have happened.
    Unknown(String),
    /// Never sent: certainly did not happen.
    NotSent(String),
}

impl Outcome {
    /// Acknowledged.
    pub fn ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// Sent, so it may have taken effect (ok, error or unknown).
    pub fn attempted(&self) -> bool {
        !matches!(self, Outcome::NotSent(_))
    }
}

/// One operation of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Client number.
    pub client: usize,
    /// The node the client talks to.
    pub node: usize,
    /// What.
    pub kind: Kind,
    /// The key.
    pub key: String,
    /// Add: the element added; Set: the value written; Read: empty.
    pub value: String,
    /// Milliseconds since the run started, when it was sent.
    pub start_ms: u64,
    /// Milliseconds since the run started, when it ended.
    pub end_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// A fault as the checkers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL (restarted at the end).
    Kill(usize),
    /// SIGKILL and the data directory deleted; repaired by starting it on an empty
    /// directory with its old `--node-id` (the same member, every record and hint lost).
    Wipe(usize),
    /// SIGSTOP (SIGCONT at the end).
    Pause(usize),
    /// veth down: cut from everyone, clients included.
    Isolate(usize),
    /// The listed nodes are cut (both ways) from all others; clients reach every node.
    Split(Vec<usize>),
    /// `to` drops every packet from `from` (one-way loss).
    OneWay {
        /// The receiving node.
        to: usize,
        /// The node whose packets are dropped.
        from: usize,
    },
}

/// A fault and when it was in force (milliseconds since the run started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpan {
    /// What.
    pub kind: FaultKind,
    /// Injected.
    pub start_ms: u64,
    /// Healed.
    pub end_ms: u64,
}

impl FaultSpan {
    /// Whether it was in force at `t`.
    pub fn active(&self, t: u64) -> bool {
        self.start_ms <= t && t < self.end_ms
    }

    /// Nodes this fault takes away from the rest (down, wiped, paused, isolated or the
    /// split's minority); a one-way loss takes none away entirely.
    pub fn cut(&self) -> BTreeSet<usize> {
        match &self.kind {
            FaultKind::Kill(i) | FaultKind::Wipe(i) | FaultKind::Pause(i) | FaultKind::Isolate(i) => [*i].into(),
            FaultKind::Split(side) => side.iter().copied().collect(),
            FaultKind::OneWay { .. } => BTreeSet::new(),
        }
    }
}
