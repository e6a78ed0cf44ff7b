//! The error types of the library. Must not depend on how errors are shown to clients
//! beyond their `Display` text, which follows Redis's wording where Redis has one.

use thiserror::Error;

/// A failure of the local LMDB store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// LMDB reported an error (I/O, corruption check, limits).
    #[error("storage error: {0}")]
    Lmdb(#[from] heed::Error),
    /// The disk is full: the write was not applied and nothing on disk changed.
    #[error("disk full: write not applied")]
    DiskFull,
    /// A stored record could not be decoded (never expected; the record is left untouched).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A write transaction failed; nothing of it was applied.
    #[error("{0}")]
    Failed(String),
    /// The store is shutting down and takes no more writes.
    #[error("store is shutting down")]
    Closed,
}

/// A failure of a coordinated request, as the coordinator reports it.
#[derive(Debug, Error)]
pub enum CoordError {
    /// The local replica failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Too few replicas answered in time; names each failed replica and its cause.
    #[error("quorum not met for {op}: {got} of {needed} replicas answered{causes}")]
    Quorum {
        /// "read" or "write".
        op: &'static str,
        /// Replicas needed.
        needed: usize,
        /// Replicas that succeeded.
        got: usize,
        /// `; node <id>: <cause>` for each failed replica.
        causes: String,
    },
    /// A peer could not be reached or answered with an error.
    #[error("{0}")]
    Peer(String),
}

impl CoordError {
    /// A quorum error listing each failed replica's cause.
    pub fn quorum(op: &'static str, needed: usize, got: usize, failed: Vec<(u64, String)>) -> CoordError {
        let causes = failed
            .iter()
            .map(|(n, e)| format!("; node {n:016x}: {e}"))
            .collect::<String>();
        CoordError::Quorum {
            op,
            needed,
            got,
            causes,
        }
    }
}
