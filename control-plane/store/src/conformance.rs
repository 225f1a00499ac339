//! The conformance suite: what every [`Store`] backend must do, as functions over `&dyn Store`.
//!
//! Each check panics (with a message saying what broke) when the backend misbehaves, so a
//! backend's test file is one `#[tokio::test]` per check, or a single call to [`run_all`]. The
//! checks only use keys under the prefix they are given and only revisions they created
//! themselves, so they can share one store, even one that holds other data; give each check its
//! own prefix.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use keel_store::embedded::{EmbeddedStore, Options};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let options = Options { watch_buffer: 64, ..Options::default() };
//! let store = EmbeddedStore::open(dir.path(), options).unwrap();
//! // 200 events overflow a watch buffer of 64.
//! keel_store::conformance::run_all(&store, "/conformance/", 200).await;
//! # }
//! ```

use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::{Event, KeyValue, ListOptions, Store, StoreError, WatchStream};

const WAIT: Duration = Duration::from_secs(10);

fn val(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Runs every check, each under its own sub-prefix of `prefix`. `overflow` must exceed the
/// backend's per-watcher buffer (see [`slow_watcher_is_terminated`]).
pub async fn run_all(store: &dyn Store, prefix: &str, overflow: usize) {
    create_get_and_revisions(store, &format!("{prefix}create/")).await;
    compare_and_swap(store, &format!("{prefix}cas/")).await;
    concurrent_updates_have_one_winner(store, &format!("{prefix}race/")).await;
    concurrent_writes_get_dense_revisions(store, &format!("{prefix}dense/")).await;
    list_at_revision(store, &format!("{prefix}mvcc/")).await;
    pagination_is_consistent(store, &format!("{prefix}pages/")).await;
    watch_replays_then_follows(store, &format!("{prefix}watch/")).await;
    watch_from_future_revision(store, &format!("{prefix}future/")).await;
    history_replays_to_the_current_state(store, &format!("{prefix}history/")).await;
    compaction_expires_old_revisions(store, &format!("{prefix}compact/")).await;
    slow_watcher_is_terminated(store, &format!("{prefix}slow/"), overflow).await;
}

/// The next item of a watch stream, failing the test if none comes in time.
pub async fn next_event(stream: &mut WatchStream) -> Event {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended unexpectedly"),
        Err(_) => panic!("no watch event within {WAIT:?}"),
    }
}

/// Create, get, `AlreadyExists`, and one revision per successful write (none for a failed one).
pub async fn create_get_and_revisions(store: &dyn Store, prefix: &str) {
    let key = format!("{prefix}a");
    let before = store.current_revision().await.unwrap();
    assert_eq!(
        store.get(&key).await.unwrap(),
        None,
        "a key never written must not exist"
    );

    let created = store.create(&key, val("v1")).await.unwrap();
    assert_eq!(created.mod_revision, before + 1, "a write gets the next revision");
    assert_eq!(created.create_revision, created.mod_revision);
    assert_eq!(&*created.key, key);
    assert_eq!(store.current_revision().await.unwrap(), before + 1);
    assert_eq!(
        store.get(&key).await.unwrap(),
        Some(created.clone()),
        "read your write"
    );

    let again = store.create(&key, val("v2")).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "create of existing key: {again:?}"
    );
    assert_eq!(
        store.current_revision().await.unwrap(),
        before + 1,
        "a failed write must not consume a revision"
    );
    assert_eq!(store.get(&key).await.unwrap().map(|kv| kv.value), Some(val("v1")));

    let empty = store
        .create(&format!("{prefix}empty"), Bytes::new())
        .await
        .unwrap();
    assert_eq!(empty.mod_revision, before + 2);
    assert_eq!(
        store
            .get(&format!("{prefix}empty"))
            .await
            .unwrap()
            .map(|kv| kv.value),
        Some(Bytes::new()),
        "an empty value is a value"
    );
}

/// Conditional update and delete on `mod_revision`, `Conflict` and `NotFound`.
pub async fn compare_and_swap(store: &dyn Store, prefix: &str) {
    let key = format!("{prefix}k");
    let v1 = store.create(&key, val("1")).await.unwrap();

    let v2 = store.update(&key, val("2"), Some(v1.mod_revision)).await.unwrap();
    assert_eq!(
        v2.create_revision, v1.create_revision,
        "update keeps create_revision"
    );
    assert_eq!(v2.mod_revision, v1.mod_revision + 1);

    match store.update(&key, val("stale"), Some(v1.mod_revision)).await {
        Err(StoreError::Conflict {
            expected, current, ..
        }) => {
            assert_eq!(expected, v1.mod_revision);
            assert_eq!(*current, v2, "a conflict carries the current value");
        }
        other => panic!("stale update must conflict, got {other:?}"),
    }
    let v3 = store.update(&key, val("3"), None).await.unwrap();
    assert_eq!(v3.mod_revision, v2.mod_revision + 1, "unconditional update");

    let missing = format!("{prefix}missing");
    let r = store.update(&missing, val("x"), None).await;
    assert!(
        matches!(r, Err(StoreError::NotFound { .. })),
        "update of missing key: {r:?}"
    );
    let r = store.delete(&missing, None).await;
    assert!(
        matches!(r, Err(StoreError::NotFound { .. })),
        "delete of missing key: {r:?}"
    );

    let r = store.delete(&key, Some(v2.mod_revision)).await;
    assert!(
        matches!(r, Err(StoreError::Conflict { .. })),
        "stale delete: {r:?}"
    );
    let deleted = store.delete(&key, Some(v3.mod_revision)).await.unwrap();
    assert_eq!(deleted.prev, v3, "delete returns the last value");
    assert_eq!(deleted.revision, v3.mod_revision + 1);
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert_eq!(store.current_revision().await.unwrap(), deleted.revision);

    let again = store.create(&key, val("new life")).await.unwrap();
    assert_eq!(
        again.create_revision,
        deleted.revision + 1,
        "a re-created key is a new key"
    );
}

/// Sixteen concurrent compare-and-swaps from the same revision: exactly one wins.
pub async fn concurrent_updates_have_one_winner(store: &dyn Store, prefix: &str) {
    let key = format!("{prefix}counter");
    let start = store.create(&key, val("0")).await.unwrap();
    let attempts = (0..16).map(|i| store.update(&key, val(&format!("writer {i}")), Some(start.mod_revision)));
    let results = futures::future::join_all(attempts).await;
    let winners: Vec<&KeyValue> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one CAS must win: {results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, StoreError::Conflict { .. }),
                "losers must see Conflict, got {e}"
            );
        }
    }
    assert_eq!(store.get(&key).await.unwrap().as_ref(), Some(winners[0]));
}

/// Concurrent writes get distinct revisions with no holes, each matching what a read returns.
pub async fn concurrent_writes_get_dense_revisions(store: &dyn Store, prefix: &str) {
    let before = store.current_revision().await.unwrap();
    let keys: Vec<String> = (0..64).map(|i| format!("{prefix}{i:02}")).collect();
    let results = futures::future::join_all(keys.iter().map(|k| store.create(k, val(k)))).await;
    let mut revisions: Vec<u64> = results.into_iter().map(|r| r.unwrap().mod_revision).collect();
    revisions.sort_unstable();
    let want: Vec<u64> = (before + 1..=before + 64).collect();
    assert_eq!(revisions, want, "64 writes take the next 64 revisions, once each");
    let page = store.list(prefix, ListOptions::default()).await.unwrap();
    assert_eq!(page.items.len(), 64);
    assert!(page.items.iter().all(|kv| kv.value == val(&kv.key)));
}

/// `list` at an older revision sees the key space as it was.
pub async fn list_at_revision(store: &dyn Store, prefix: &str) {
    let a = format!("{prefix}a");
    let b = format!("{prefix}b");
    let c = format!("{prefix}c");
    store.create(&a, val("a1")).await.unwrap();
    let b1 = store.create(&b, val("b1")).await.unwrap();
    let then = b1.mod_revision;
    store.update(&a, val("a2"), None).await.unwrap();
    store.delete(&b, None).await.unwrap();
    store.create(&c, val("c1")).await.unwrap();
    // A key just outside the prefix must never show up.
    store
        .create(&format!("{}x", prefix.trim_end_matches('/')), val("outside"))
        .await
        .unwrap();

    let old = store
        .list(
            prefix,
            ListOptions {
                revision: Some(then),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(old.revision, then);
    let old_items: Vec<(&str, Bytes)> = old.items.iter().map(|kv| (&*kv.key, kv.value.clone())).collect();
    assert_eq!(old_items, vec![(a.as_str(), val("a1")), (b.as_str(), val("b1"))]);
    assert!(!old.more);

    let now = store.list(prefix, ListOptions::default()).await.unwrap();
    assert_eq!(now.revision, store.current_revision().await.unwrap());
    let now_items: Vec<(&str, Bytes)> = now.items.iter().map(|kv| (&*kv.key, kv.value.clone())).collect();
    assert_eq!(now_items, vec![(a.as_str(), val("a2")), (c.as_str(), val("c1"))]);

    let future = now.revision + 100;
    let r = store
        .list(
            prefix,
            ListOptions {
                revision: Some(future),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(r, Err(StoreError::FutureRevision { .. })),
        "list in the future: {r:?}"
    );
}

/// Paging with `limit` and `start_after` at the first page's revision gives one consistent list,
/// even while the keys change between pages.
pub async fn pagination_is_consistent(store: &dyn Store, prefix: &str) {
    let keys: Vec<String> = (0..25).map(|i| format!("{prefix}{i:03}")).collect();
    for k in &keys {
        store.create(k, val("original")).await.unwrap();
    }
    let limit = NonZeroUsize::new(10);
    let first = store
        .list(
            prefix,
            ListOptions {
                limit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(first.items.len(), 10);
    assert!(first.more);
    let revision = first.revision;

    // Changes after the first page must not leak into the later ones.
    store.update(&keys[20], val("changed"), None).await.unwrap();
    store.delete(&keys[15], None).await.unwrap();
    store.create(&format!("{prefix}0125"), val("new")).await.unwrap();

    let mut seen: Vec<KeyValue> = first.items.clone();
    let mut more = first.more;
    while more {
        let last = seen.last().map(|kv| kv.key.to_string());
        let page = store
            .list(
                prefix,
                ListOptions {
                    revision: Some(revision),
                    start_after: last,
                    limit,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            page.revision, revision,
            "later pages are read at the first page's revision"
        );
        assert!(page.items.len() <= 10);
        more = page.more;
        seen.extend(page.items);
    }
    let seen_keys: Vec<&str> = seen.iter().map(|kv| &*kv.key).collect();
    let want: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(seen_keys, want, "all 25 original keys, in order, once");
    assert!(seen.iter().all(|kv| kv.value == val("original")));
}

/// A watch replays history after its revision, then follows live writes under its prefix only.
pub async fn watch_replays_then_follows(store: &dyn Store, prefix: &str) {
    let a = format!("{prefix}a");
    let start = store.current_revision().await.unwrap();
    let created = store.create(&a, val("1")).await.unwrap();
    let updated = store.update(&a, val("2"), None).await.unwrap();
    store
        .create(&format!("{}-other/a", prefix.trim_end_matches('/')), val("x"))
        .await
        .unwrap();

    let mut watch = store.watch(prefix, start).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        Event::Put {
            kv: created.clone(),
            prev: None
        },
        "replay starts right after the given revision"
    );
    assert_eq!(
        next_event(&mut watch).await,
        Event::Put {
            kv: updated.clone(),
            prev: Some(created.clone())
        }
    );

    // Live events, including ones outside the prefix that must be skipped.
    store
        .create(&format!("{}-other/b", prefix.trim_end_matches('/')), val("x"))
        .await
        .unwrap();
    let b = store.create(&format!("{prefix}b"), val("b")).await.unwrap();
    let deleted = store.delete(&a, None).await.unwrap();
    assert_eq!(next_event(&mut watch).await, Event::Put { kv: b, prev: None });
    assert_eq!(
        next_event(&mut watch).await,
        Event::Delete {
            prev: updated.clone(),
            revision: deleted.revision
        }
    );

    // Watching from the middle of the history starts exactly there.
    let mut late = store.watch(prefix, created.mod_revision).await.unwrap();
    assert_eq!(next_event(&mut late).await.revision(), updated.mod_revision);
}

/// Under concurrent, conflicting writes, the watch history is exactly the successful writes, each
/// once, in revision order, with correct previous values, and replaying it over a list at the
/// starting revision yields the current list.
pub async fn history_replays_to_the_current_state(store: &dyn Store, prefix: &str) {
    use std::collections::BTreeMap;

    let start = store.current_revision().await.unwrap();
    let base = store
        .list(
            prefix,
            ListOptions {
                revision: Some(start),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut watch = store.watch(prefix, start).await.unwrap();

    // Eight writers, each a small deterministic pseudo-random walk over the same ten keys.
    let writer = |seed: u64| async move {
        let mut x = seed;
        let mut done = Vec::new();
        for step in 0..40 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("{prefix}{}", (x >> 33) % 10);
            let value = val(&format!("w{seed}-{step}"));
            let result = match store.get(&key).await.unwrap() {
                None => store.create(&key, value).await.map(|kv| kv.mod_revision),
                Some(kv) if ((x >> 20) & 3) == 0 => store
                    .delete(&key, Some(kv.mod_revision))
                    .await
                    .map(|d| d.revision),
                Some(kv) => store
                    .update(&key, value, Some(kv.mod_revision))
                    .await
                    .map(|kv| kv.mod_revision),
            };
            match result {
                Ok(revision) => done.push(revision),
                Err(
                    StoreError::Conflict { .. }
                    | StoreError::NotFound { .. }
                    | StoreError::AlreadyExists { .. },
                ) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        done
    };
    // The watch is read while the writes happen (a watcher that waits would rightly be cut off
    // as too slow); a last marker write tells the reader where the history ends.
    let end_key = format!("{prefix}~end");
    let writes = async {
        let mut written: Vec<u64> = futures::future::join_all((1..=8).map(writer)).await.concat();
        written.push(store.create(&end_key, val("end")).await.unwrap().mod_revision);
        written.sort_unstable();
        written
    };
    let read = async {
        let mut events = Vec::new();
        loop {
            let event = next_event(&mut watch).await;
            let end = event.key() == end_key;
            events.push(event);
            if end {
                return events;
            }
        }
    };
    let (written, events) = futures::join!(writes, read);
    assert!(written.len() > 1, "some writes must succeed");

    let mut state: BTreeMap<String, KeyValue> = base
        .items
        .into_iter()
        .map(|kv| (kv.key.to_string(), kv))
        .collect();
    let mut seen: Vec<u64> = Vec::new();
    for event in events {
        assert!(
            seen.last().is_none_or(|&last| event.revision() > last),
            "events in revision order"
        );
        seen.push(event.revision());
        match event {
            Event::Put { kv, prev } => {
                assert_eq!(
                    prev.as_ref(),
                    state.get(&*kv.key),
                    "prev of {} at {}",
                    kv.key,
                    kv.mod_revision
                );
                state.insert(kv.key.to_string(), kv);
            }
            Event::Delete { prev, revision } => {
                assert_eq!(
                    Some(&prev),
                    state.get(&*prev.key),
                    "prev of the delete at {revision}"
                );
                state.remove(&*prev.key);
            }
        }
    }
    assert_eq!(seen, written, "one event per successful write, nothing else");
    let now = store.list(prefix, ListOptions::default()).await.unwrap();
    let replayed: Vec<KeyValue> = state.into_values().collect();
    assert_eq!(
        replayed, now.items,
        "the history replayed over the old list is the current list"
    );
}

/// A watch from a revision not reached yet delivers only events after it.
pub async fn watch_from_future_revision(store: &dyn Store, prefix: &str) {
    let now = store.current_revision().await.unwrap();
    let mut watch = store.watch(prefix, now + 2).await.unwrap();
    store.create(&format!("{prefix}1"), val("1")).await.unwrap();
    store.create(&format!("{prefix}2"), val("2")).await.unwrap();
    let third = store.create(&format!("{prefix}3"), val("3")).await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!(
        event.revision(),
        third.mod_revision,
        "events up to the watch revision are skipped"
    );
}

/// After `compact(r)`: reads at `r` and watches after `r` work, anything older is `Compacted`.
pub async fn compaction_expires_old_revisions(store: &dyn Store, prefix: &str) {
    let key = format!("{prefix}k");
    let v1 = store.create(&key, val("1")).await.unwrap();
    let v2 = store.update(&key, val("2"), None).await.unwrap();
    let v3 = store.update(&key, val("3"), None).await.unwrap();
    store.compact(v2.mod_revision).await.unwrap();

    let r = store
        .list(
            prefix,
            ListOptions {
                revision: Some(v1.mod_revision),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(r, Err(StoreError::Compacted { requested, .. }) if requested == v1.mod_revision),
        "reading compacted history: {r:?}"
    );
    let at = store
        .list(
            prefix,
            ListOptions {
                revision: Some(v2.mod_revision),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(at.items.first().map(|kv| kv.value.clone()), Some(val("2")));

    let r = store.watch(prefix, v1.mod_revision).await;
    assert!(
        matches!(r, Err(StoreError::Compacted { .. })),
        "watching from compacted history must fail"
    );
    let mut watch = store.watch(prefix, v2.mod_revision).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), v3.mod_revision);

    // Compacting again to the same or an older revision is harmless; the future is refused.
    store.compact(v2.mod_revision).await.unwrap();
    store.compact(v1.mod_revision).await.unwrap();
    let future = store.current_revision().await.unwrap() + 10;
    let r = store.compact(future).await;
    assert!(
        matches!(r, Err(StoreError::FutureRevision { .. })),
        "compact in the future: {r:?}"
    );
    assert_eq!(
        store.get(&key).await.unwrap(),
        Some(v3),
        "compaction keeps the live state"
    );
}

/// A watcher that does not read is terminated with `WatchLagged` once more than its buffer of
/// events piles up, without slowing the writers or other watchers. `overflow` must exceed the
/// backend's per-watcher buffer.
pub async fn slow_watcher_is_terminated(store: &dyn Store, prefix: &str, overflow: usize) {
    let start = store.current_revision().await.unwrap();
    let mut slow = store.watch(prefix, start).await.unwrap();
    let mut fast = store.watch(prefix, start).await.unwrap();
    let mut fast_seen = 0usize;
    for i in 0..overflow {
        store.create(&format!("{prefix}{i:06}"), val("x")).await.unwrap();
        // The fast watcher keeps up as the writes happen.
        let event = next_event(&mut fast).await;
        assert_eq!(event.key(), format!("{prefix}{i:06}"));
        fast_seen += 1;
    }
    assert_eq!(fast_seen, overflow);

    let mut delivered = 0usize;
    loop {
        match tokio::time::timeout(WAIT, slow.next()).await {
            Ok(Some(Ok(_))) => delivered += 1,
            Ok(Some(Err(StoreError::WatchLagged { last_revision }))) => {
                assert_eq!(
                    last_revision,
                    start + delivered as u64,
                    "reports what it delivered"
                );
                break;
            }
            Ok(Some(Err(e))) => panic!("slow watcher failed with the wrong error: {e}"),
            Ok(None) => panic!("slow watcher ended without an error after {delivered} events"),
            Err(_) => panic!("slow watcher was never terminated ({delivered} events delivered)"),
        }
    }
    assert!(
        delivered < overflow,
        "the slow watcher cannot have received every event"
    );
    assert!(
        tokio::time::timeout(WAIT, slow.next())
            .await
            .ok()
            .flatten()
            .is_none(),
        "a terminated watch ends after its error"
    );
}
