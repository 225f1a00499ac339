//! The values the store hands out: key-values, watch events, list pages.
//!
//! Keys are `Arc<str>` and values [`Bytes`], so cloning a [`KeyValue`] or an [`Event`] only bumps
//! reference counts: one stored value is shared by the live state, the history, every list result
//! and every watcher it is delivered to.

use std::num::NonZeroUsize;
use std::sync::Arc;

use bytes::Bytes;

/// A key with its value and revisions (etcd's `mvccpb.KeyValue`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Arc<str>,
    pub value: Bytes,
    /// The revision of the write that created the key (stays the same across updates).
    pub create_revision: u64,
    /// The revision of the write that produced this value.
    pub mod_revision: u64,
}

/// One change to a key, as delivered by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A create (`prev` is `None`) or an update (`prev` is the value before).
    Put { kv: KeyValue, prev: Option<KeyValue> },
    /// A delete at `revision`; `prev` is the value the key had.
    Delete { prev: KeyValue, revision: u64 },
}

impl Event {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> u64 {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    /// Whether the event created its key (a put with no value before it).
    pub fn is_create(&self) -> bool {
        matches!(self, Event::Put { kv, .. } if kv.create_revision == kv.mod_revision)
    }

    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
}

/// The result of a successful delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    /// The key's value just before the delete.
    pub prev: KeyValue,
    /// The revision of the delete.
    pub revision: u64,
}

/// How to read a range of keys (see [`Store::list`](crate::Store::list)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Read as of this revision instead of the current one. To read page after page of one
    /// consistent list, pass the [`ListPage::revision`] of the first page.
    pub revision: Option<u64>,
    /// Return only keys strictly greater than this one (the last key of the previous page).
    pub start_after: Option<String>,
    /// Return at most this many items.
    pub limit: Option<NonZeroUsize>,
}

/// One page of a [`Store::list`](crate::Store::list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    /// The items, sorted by key.
    pub items: Vec<KeyValue>,
    /// The revision the page was read at.
    pub revision: u64,
    /// Whether keys after the last item remain (only possible with a `limit`).
    pub more: bool,
}
