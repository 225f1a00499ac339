//! The embedded backend against the backend-independent conformance suite.

use keel_store::conformance;
use keel_store::embedded::{EmbeddedStore, Options};

const WATCH_BUFFER: usize = 64;

fn open() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        watch_buffer: WATCH_BUFFER,
        ..Options::default()
    };
    let store = EmbeddedStore::open(dir.path(), options).unwrap();
    (dir, store)
}

#[tokio::test]
async fn create_get_and_revisions() {
    let (_dir, store) = open();
    conformance::create_get_and_revisions(&store, "/t/").await;
}

#[tokio::test]
async fn compare_and_swap() {
    let (_dir, store) = open();
    conformance::compare_and_swap(&store, "/t/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_have_one_winner() {
    let (_dir, store) = open();
    conformance::concurrent_updates_have_one_winner(&store, "/t/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_get_dense_revisions() {
    let (_dir, store) = open();
    conformance::concurrent_writes_get_dense_revisions(&store, "/t/").await;
}

#[tokio::test]
async fn list_at_revision() {
    let (_dir, store) = open();
    conformance::list_at_revision(&store, "/t/").await;
}

#[tokio::test]
async fn pagination_is_consistent() {
    let (_dir, store) = open();
    conformance::pagination_is_consistent(&store, "/t/").await;
}

#[tokio::test]
async fn watch_replays_then_follows() {
    let (_dir, store) = open();
    conformance::watch_replays_then_follows(&store, "/t/").await;
}

#[tokio::test]
async fn watch_from_future_revision() {
    let (_dir, store) = open();
    conformance::watch_from_future_revision(&store, "/t/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_replays_to_the_current_state() {
    let (_dir, store) = open();
    conformance::history_replays_to_the_current_state(&store, "/t/").await;
}

#[tokio::test]
async fn compaction_expires_old_revisions() {
    let (_dir, store) = open();
    conformance::compaction_expires_old_revisions(&store, "/t/").await;
}

#[tokio::test]
async fn slow_watcher_is_terminated() {
    let (_dir, store) = open();
    use keel_store::Store;
    conformance::slow_watcher_is_terminated(&store, "/t/", WATCH_BUFFER * 3).await;
    // Dropped watchers are swept out by the next write.
    store.create("/elsewhere", bytes::Bytes::new()).await.unwrap();
    assert_eq!(
        store.watcher_count(),
        0,
        "both watchers are gone once their streams are dropped or cut"
    );
}

#[tokio::test]
async fn all_checks_share_one_store() {
    let (_dir, store) = open();
    conformance::run_all(&store, "/registry/conformance/", WATCH_BUFFER * 3).await;
}

/// A thousand watchers of one prefix each get every event, in order (the fan-out is shared, not
/// a bottleneck that drops or reorders).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watchers_see_every_event() {
    use keel_store::Store;
    let (_dir, store) = open();
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(store);
    let mut watchers = Vec::new();
    for _ in 0..1000 {
        let mut stream = store.watch("/pods/", 0).await.unwrap();
        watchers.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            while revisions.len() < 20 {
                revisions.push(conformance::next_event(&mut stream).await.revision());
            }
            revisions
        }));
    }
    for i in 0..20 {
        store
            .create(&format!("/pods/{i}"), bytes::Bytes::from(vec![b'x'; 3000]))
            .await
            .unwrap();
        store
            .create(&format!("/other/{i}"), bytes::Bytes::new())
            .await
            .unwrap();
    }
    let want: Vec<u64> = (0..20).map(|i| 2 * i + 1).collect();
    for w in watchers {
        assert_eq!(w.await.unwrap(), want);
    }
}
