//! The in-memory multi-version state: live keys, their recent versions, and the event history.
//!
//! This is pure data structure code, with no I/O and no locking, so that it can be tested on its
//! own and reused by any backend that keeps its state in memory.
//!
//! Shape:
//! * `keys`: a `BTreeMap` (sorted, for prefix ranges and pagination) from each key to its
//!   versions in revision order. A version is a value or a tombstone (delete). Only versions that
//!   a read at a retained revision can still see are kept, so almost every key has exactly one.
//! * `events`: one [`Event`] per revision in `(compacted, current]`, in order. Revision `r` lives at
//!   index `r - compacted - 1`, so replaying a watch is a slice, not a search.
//!
//! Compaction to revision `c` drops the events up to `c` and, for each key those events touched,
//! the versions that no read at `c` or later can see. Its cost is proportional to the history
//! dropped, not to the number of keys.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::{Event, KeyValue, ListOptions, ListPage, Result, StoreError};

/// One write, as decided by a backend's write path and recorded in its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Put {
        key: Arc<str>,
        value: Bytes,
        create_revision: u64,
    },
    Delete {
        key: Arc<str>,
    },
}

#[derive(Clone, Debug)]
struct Version {
    mod_revision: u64,
    create_revision: u64,
    /// `None` is a tombstone: the key was deleted at `mod_revision`.
    value: Option<Bytes>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Mvcc {
    keys: BTreeMap<Arc<str>, Vec<Version>>,
    events: VecDeque<Event>,
    current: u64,
    compacted: u64,
    live: usize,
    /// Value bytes introduced by the retained events: what the history costs in memory beyond
    /// the live state.
    history_bytes: u64,
}

impl Mvcc {
    /// A state whose history starts at `revision` with the given live keys (a snapshot).
    pub(crate) fn from_snapshot(revision: u64, items: impl IntoIterator<Item = KeyValue>) -> Self {
        let mut keys = BTreeMap::new();
        for kv in items {
            keys.insert(
                kv.key,
                vec![Version {
                    mod_revision: kv.mod_revision,
                    create_revision: kv.create_revision,
                    value: Some(kv.value),
                }],
            );
        }
        Mvcc {
            live: keys.len(),
            keys,
            events: VecDeque::new(),
            current: revision,
            compacted: revision,
            history_bytes: 0,
        }
    }

    pub(crate) fn current_revision(&self) -> u64 {
        self.current
    }

    pub(crate) fn compacted_revision(&self) -> u64 {
        self.compacted
    }

    /// How many keys exist now.
    pub(crate) fn live_keys(&self) -> usize {
        self.live
    }

    /// How many revisions of history are retained.
    pub(crate) fn history_len(&self) -> u64 {
        self.current - self.compacted
    }

    /// Compacts just enough that at most `max_revisions` of history remain and the retained
    /// events hold at most `max_bytes` of values, with hysteresis: nothing happens until a bound
    /// is exceeded by an eighth, and then the history is cut to seven eighths of the byte bound,
    /// so that the work is done in occasional chunks rather than on every write.
    pub(crate) fn compact_to_bounds(&mut self, max_revisions: u64, max_bytes: u64) {
        let over_revisions = self.history_len() > max_revisions.saturating_add(max_revisions / 8);
        let over_bytes = self.history_bytes > max_bytes.saturating_add(max_bytes / 8);
        if !over_revisions && !over_bytes {
            return;
        }
        let mut target = self.current.saturating_sub(max_revisions).max(self.compacted);
        let byte_goal = max_bytes - max_bytes / 8;
        if self.history_bytes > byte_goal {
            let mut bytes = self.history_bytes;
            let mut revision = self.compacted;
            for event in &self.events {
                if bytes <= byte_goal {
                    break;
                }
                bytes -= event_bytes(event);
                revision = event.revision();
            }
            target = target.max(revision);
        }
        self.compact(target);
    }

    pub(crate) fn get(&self, key: &str) -> Option<KeyValue> {
        let (key, versions) = self.keys.get_key_value(key)?;
        let latest = versions.last()?;
        to_kv(key, latest)
    }

    /// Every live key-value, in key order (what a snapshot holds).
    pub(crate) fn live_items(&self) -> Vec<KeyValue> {
        let mut items = Vec::with_capacity(self.live);
        for (key, versions) in &self.keys {
            if let Some(kv) = versions.last().and_then(|v| to_kv(key, v)) {
                items.push(kv);
            }
        }
        items
    }

    pub(crate) fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage> {
        let revision = match options.revision {
            Some(r) => {
                self.check_readable(r)?;
                r
            }
            None => self.current,
        };
        let start = match options.start_after.as_deref() {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let limit = options.limit.map_or(usize::MAX, |l| l.get());
        let mut items = Vec::new();
        let mut more = false;
        let range = self
            .keys
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix));
        for (key, versions) in range {
            let Some(kv) = visible_at(versions, revision).and_then(|v| to_kv(key, v)) else {
                continue;
            };
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(kv);
        }
        Ok(ListPage {
            items,
            revision,
            more,
        })
    }

    /// The retained events after `after` for keys under `prefix`.
    pub(crate) fn events_after(&self, prefix: &str, after: u64) -> Result<Vec<Event>> {
        if after < self.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: self.compacted,
            });
        }
        // `after - compacted` events precede the first one wanted.
        let skip = usize::try_from(after - self.compacted).unwrap_or(usize::MAX);
        Ok(self
            .events
            .iter()
            .skip(skip)
            .filter(|e| e.key().starts_with(prefix))
            .cloned()
            .collect())
    }

    /// Applies `change` as revision `current + 1` and returns its event.
    pub(crate) fn apply(&mut self, change: Change) -> Event {
        let revision = self.current + 1;
        let event = match change {
            Change::Put {
                key,
                value,
                create_revision,
            } => {
                let versions = self.keys.entry(key.clone()).or_default();
                let prev = versions.last().and_then(|v| to_kv(&key, v));
                if prev.is_none() {
                    self.live += 1;
                }
                versions.push(Version {
                    mod_revision: revision,
                    create_revision,
                    value: Some(value.clone()),
                });
                Event::Put {
                    kv: KeyValue {
                        key,
                        value,
                        create_revision,
                        mod_revision: revision,
                    },
                    prev,
                }
            }
            Change::Delete { key } => {
                let versions = self.keys.entry(key.clone()).or_default();
                let prev = versions.last().and_then(|v| to_kv(&key, v));
                match prev {
                    Some(prev) => {
                        self.live -= 1;
                        versions.push(Version {
                            mod_revision: revision,
                            create_revision: prev.create_revision,
                            value: None,
                        });
                        Event::Delete { prev, revision }
                    }
                    // The write path never deletes a missing key; record it as an empty delete
                    // rather than corrupting the revision sequence.
                    None => Event::Delete {
                        prev: KeyValue {
                            key,
                            value: Bytes::new(),
                            create_revision: 0,
                            mod_revision: 0,
                        },
                        revision,
                    },
                }
            }
        };
        self.current = revision;
        self.history_bytes += event_bytes(&event);
        self.events.push_back(event.clone());
        event
    }

    /// Drops history older than `revision` (clamped to the current revision).
    pub(crate) fn compact(&mut self, revision: u64) {
        let revision = revision.min(self.current);
        while self.compacted < revision {
            let Some(event) = self.events.pop_front() else {
                break;
            };
            self.compacted += 1;
            self.history_bytes -= event_bytes(&event);
            let key = event.key();
            let Some(versions) = self.keys.get_mut(key) else {
                continue;
            };
            // Keep the newest version visible at `revision` and everything after it.
            let visible = versions.iter().rposition(|v| v.mod_revision <= revision);
            if let Some(i) = visible {
                versions.drain(..i);
                if versions.first().is_some_and(|v| v.value.is_none()) {
                    versions.remove(0);
                }
            }
            if versions.is_empty() {
                self.keys.remove(key);
            }
        }
        self.compacted = revision.max(self.compacted);
    }

    fn check_readable(&self, revision: u64) -> Result<()> {
        if revision < self.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        if revision > self.current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: self.current,
            });
        }
        Ok(())
    }
}

/// The memory an event adds to the history: its new value (a delete adds nothing).
fn event_bytes(event: &Event) -> u64 {
    match event {
        Event::Put { kv, .. } => kv.value.len() as u64 + kv.key.len() as u64,
        Event::Delete { prev, .. } => prev.key.len() as u64,
    }
}

fn visible_at(versions: &[Version], revision: u64) -> Option<&Version> {
    versions.iter().rev().find(|v| v.mod_revision <= revision)
}

fn to_kv(key: &Arc<str>, version: &Version) -> Option<KeyValue> {
    Some(KeyValue {
        key: key.clone(),
        value: version.value.clone()?,
        create_revision: version.create_revision,
        mod_revision: version.mod_revision,
    })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    fn put(key: &str, value: &str, create_revision: u64) -> Change {
        Change::Put {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision,
        }
    }

    #[test]
    fn list_at_old_revision_sees_old_values_and_deleted_keys() {
        let mut m = Mvcc::default();
        m.apply(put("/a", "1", 1)); // rev 1
        m.apply(put("/b", "1", 2)); // rev 2
        m.apply(put("/a", "2", 1)); // rev 3
        m.apply(Change::Delete { key: "/b".into() }); // rev 4
        let at2 = m
            .list(
                "/",
                &ListOptions {
                    revision: Some(2),
                    ..Default::default()
                },
            )
            .unwrap();
        let vals: Vec<_> = at2.items.iter().map(|kv| (&*kv.key, kv.value.clone())).collect();
        assert_eq!(vals, vec![("/a", Bytes::from("1")), ("/b", Bytes::from("1"))]);
        let now = m.list("/", &ListOptions::default()).unwrap();
        assert_eq!(now.revision, 4);
        assert_eq!(now.items.len(), 1);
        assert_eq!(now.items[0].value, Bytes::from("2"));
        assert_eq!(m.live_keys(), 1);
    }

    #[test]
    fn compaction_drops_only_invisible_versions() {
        let mut m = Mvcc::default();
        m.apply(put("/a", "1", 1)); // 1
        m.apply(put("/b", "1", 2)); // 2
        m.apply(Change::Delete { key: "/b".into() }); // 3
        m.apply(put("/a", "2", 1)); // 4
        m.compact(3);
        assert_eq!(m.compacted_revision(), 3);
        assert!(matches!(
            m.list(
                "",
                &ListOptions {
                    revision: Some(2),
                    ..Default::default()
                }
            ),
            Err(StoreError::Compacted {
                requested: 2,
                compacted: 3
            })
        ));
        let at3 = m
            .list(
                "",
                &ListOptions {
                    revision: Some(3),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(at3.items.len(), 1);
        assert_eq!(at3.items[0].value, Bytes::from("1"));
        // The deleted key and its tombstone are gone entirely.
        assert!(!m.keys.contains_key("/b"));
        assert_eq!(m.events_after("", 3).unwrap().len(), 1);
        assert_eq!(m.history_len(), 1);
    }

    #[test]
    fn history_is_bounded_by_revisions_and_bytes() {
        let mut m = Mvcc::default();
        let big = "x".repeat(1000);
        for i in 0..100u64 {
            m.apply(put(&format!("/k/{}", i % 10), &big, i + 1));
        }
        // Within both bounds (hysteresis included): nothing happens.
        m.compact_to_bounds(90, 1 << 20);
        assert_eq!(m.compacted_revision(), 0);
        // Over the revision bound: cut to exactly the bound.
        m.compact_to_bounds(50, 1 << 20);
        assert_eq!(m.history_len(), 50);
        // Over the byte bound (~50 KB held, 20 KB allowed): cut to at most 7/8 of it.
        m.compact_to_bounds(50, 20_000);
        assert!(m.history_bytes <= 17_500, "{}", m.history_bytes);
        assert!(
            m.history_len() >= 16,
            "only what is needed is dropped: {}",
            m.history_len()
        );
        // The live state is untouched.
        assert_eq!(m.live_items().len(), 10);
        let all: u64 = m.events.iter().map(event_bytes).sum();
        assert_eq!(all, m.history_bytes, "the byte count follows the events");
    }

    #[test]
    fn pagination_with_limit_reports_more() {
        let mut m = Mvcc::default();
        for (i, k) in ["/p/a", "/p/b", "/p/c", "/q/a"].iter().enumerate() {
            m.apply(put(k, "v", i as u64 + 1));
        }
        let limit = NonZeroUsize::new(2);
        let p1 = m
            .list(
                "/p/",
                &ListOptions {
                    limit,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(p1.more);
        assert_eq!(p1.items.len(), 2);
        let p2 = m
            .list(
                "/p/",
                &ListOptions {
                    limit,
                    start_after: Some("/p/b".into()),
                    revision: Some(p1.revision),
                },
            )
            .unwrap();
        assert!(!p2.more);
        assert_eq!(&*p2.items[0].key, "/p/c");
        assert_eq!(p2.items.len(), 1);
    }
}
