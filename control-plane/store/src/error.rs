//! The store's error type, shared by all backends.
//!
//! The variants are the outcomes a caller must tell apart (the API server maps each to a
//! Kubernetes `Status`): precondition failures carry what the caller needs to answer without a
//! second read (a conflict carries the current value), history errors carry the revisions involved.

use std::path::PathBuf;

use crate::KeyValue;

/// The result type of every store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` of a key that exists.
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },

    /// `update` or `delete` of a key that does not exist.
    #[error("key {key:?} not found")]
    NotFound { key: String },

    /// A compare-and-swap precondition failed; `current` is the key's value now.
    #[error("conflict on key {key:?}: expected mod revision {expected}, current is {}", current.mod_revision)]
    Conflict {
        key: String,
        expected: u64,
        current: Box<KeyValue>,
    },

    /// The requested revision is older than the retained history (HTTP: 410 Gone / Expired).
    #[error("revision {requested} has been compacted; the oldest available revision is {compacted}")]
    Compacted { requested: u64, compacted: u64 },

    /// The requested revision is newer than the store's current revision.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision { requested: u64, current: u64 },

    /// A watcher did not consume its events fast enough and was terminated; the client should
    /// list again and watch from the list's revision.
    #[error("watcher fell behind and was terminated; last event delivered was at revision {last_revision}")]
    WatchLagged { last_revision: u64 },

    /// The store has been shut down, or an earlier I/O failure made it stop accepting writes.
    #[error("store is closed: {reason}")]
    Closed { reason: String },

    /// An I/O operation on the store's files failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A file of the data directory is damaged in a way that recovery must not paper over.
    #[error("corrupt store file {}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    /// The backend could not be reached or answered unexpectedly (used by remote backends).
    #[error("store backend unavailable: {reason}")]
    Unavailable { reason: String },
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}
