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
}
