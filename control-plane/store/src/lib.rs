//! The store: keys, bytes, revisions and watches.
//!
//! Everything the control plane persists goes through the [`Store`] trait. The store knows nothing
//! about Kubernetes kinds or HTTP; it holds opaque values ([`bytes::Bytes`]) under string keys such
//! as `/registry/core/pods/default/web-0`, and it follows etcd's data model so that an etcd backend
//! maps onto it one to one:
//!
//! * one global **revision** counter, starting at 1 for the first write and increasing by exactly
//!   one for every successful create, update or delete (the API server uses it as `resourceVersion`);
//! * every key carries the revision that created it and the revision that last modified it;
//! * updates and deletes can be made conditional on the key's `mod_revision` (compare-and-swap);
//! * reads are MVCC: a [`list`](Store::list) can read the whole key space *as of* an older revision,
//!   which is what makes paginated lists (Kubernetes continue tokens) consistent;
//! * a [`watch`](Store::watch) replays the retained history after a revision and then follows live
//!   writes; history is bounded, and asking for compacted history fails with
//!   [`StoreError::Compacted`] (the API server turns it into `410 Gone`).
//!
//! The trait is object safe (`Arc<dyn Store>`), because the server picks its backend at run time;
//! its methods therefore return boxed futures instead of being `async fn`.
//!
//! Backends: [`embedded::EmbeddedStore`] (the default; in memory with a write-ahead log and
//! snapshots in a data directory). The backend-independent test suite lives in `conformance`
//! (behind the `conformance` cargo feature) so that every backend is held to the same semantics.

mod error;
mod kv;
mod mvcc;
mod watch;

pub mod embedded;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub use error::{Result, StoreError};
pub use kv::{Deleted, Event, KeyValue, ListOptions, ListPage};

/// A boxed, `Send` future: what every [`Store`] method returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The events of one watch, in revision order.
///
/// The stream ends (`None`) when the store shuts down. It yields one `Err` and then ends when the
/// watcher is terminated, for example [`StoreError::WatchLagged`] when its consumer fell too far
/// behind; the client is expected to list again and watch from the list's revision.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

/// A versioned key-value store with compare-and-swap writes, MVCC reads and watches.
///
/// Semantics every backend must provide (checked by the conformance suite):
///
/// * the current revision increases by exactly one per successful write, and a write's revision
///   is the key's new `mod_revision` (for a delete: the revision of the [`Deleted`] result);
/// * a write is reported successful only once it is durable;
/// * reads after a successful write observe it (read-your-writes, linearizable in one process);
/// * results of [`list`](Store::list) are sorted by key.
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`, or `None` if it does not exist.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>>;

    /// The keys starting with `prefix` (all keys for `""`), sorted by key, as of
    /// `options.revision` (default: the current revision).
    ///
    /// Fails with [`StoreError::Compacted`] if that revision is older than the retained history
    /// and with [`StoreError::FutureRevision`] if it is newer than the current revision.
    fn list<'a>(&'a self, prefix: &'a str, options: ListOptions) -> BoxFuture<'a, Result<ListPage>>;

    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if it exists.
    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<KeyValue>>;

    /// Replaces the value of an existing `key`.
    ///
    /// With `expected_mod_revision`, the update happens only if the key's current `mod_revision`
    /// equals it, else it fails with [`StoreError::Conflict`] carrying the current value. Fails
    /// with [`StoreError::NotFound`] if the key does not exist.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected_mod_revision: Option<u64>,
    ) -> BoxFuture<'a, Result<KeyValue>>;

    /// Deletes `key` and returns its last value, with the same preconditions as
    /// [`update`](Store::update).
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected_mod_revision: Option<u64>,
    ) -> BoxFuture<'a, Result<Deleted>>;

    /// Watches the keys starting with `prefix`, delivering every event with a revision greater
    /// than `after_revision`: first the retained history, then live writes.
    ///
    /// Fails with [`StoreError::Compacted`] if events after `after_revision` are no longer
    /// retained. `after_revision` may be in the future: events up to it are then skipped.
    fn watch<'a>(&'a self, prefix: &'a str, after_revision: u64) -> BoxFuture<'a, Result<WatchStream>>;

    /// The revision of the latest successful write (0 for an empty, never written store).
    fn current_revision(&self) -> BoxFuture<'_, Result<u64>>;

    /// Discards history older than `revision`: reads at `revision` and watches after it still
    /// work, anything older fails with [`StoreError::Compacted`]. Compacting to a revision that is
    /// already compacted is a no-op; a revision above the current one fails with
    /// [`StoreError::FutureRevision`]. Backends also compact on their own to bound their history.
    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<()>>;
}
