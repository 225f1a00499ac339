//! Recovery of the embedded store: reopening a data directory after the store went away without
//! any shutdown step, with damaged log tails, across log rotation and snapshots.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use keel_store::embedded::{EmbeddedStore, Options};
use keel_store::{KeyValue, ListOptions, Store, StoreError};

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(dir, Options::default()).unwrap()
}

async fn everything(store: &dyn Store) -> Vec<KeyValue> {
    store.list("", ListOptions::default()).await.unwrap().items
}

/// Creates, updates and deletes a mix of keys; returns the revision reached.
async fn write_mix(store: &dyn Store, n: usize) -> u64 {
    for i in 0..n {
        let key = format!("/k/{i:04}");
        store
            .create(&key, Bytes::from(format!("value {i}")))
            .await
            .unwrap();
        if i % 3 == 0 {
            store
                .update(&key, Bytes::from(format!("updated {i}")), None)
                .await
                .unwrap();
        }
        if i % 5 == 0 {
            store.delete(&key, None).await.unwrap();
        }
    }
    store.current_revision().await.unwrap()
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    found.sort();
    found
}

/// The offset just past the last non-zero byte of `path` (the end of the written records).
fn written_end(path: &Path) -> usize {
    let data = fs::read(path).unwrap();
    data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

#[tokio::test]
async fn reopen_restores_state_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let revision = write_mix(&store, 60).await;
    let before = everything(&store).await;
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.current_revision().await.unwrap(), revision);
    assert_eq!(everything(&store).await, before);
    // History survives too: a watch from the start replays every write.
    let replay = store.watch("", 0).await;
    assert!(
        replay.is_ok(),
        "history since the last snapshot is retained: {:?}",
        replay.err()
    );
    // And revisions carry on from where they were.
    let next = store.create("/after", Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(next.mod_revision, revision + 1);
}

#[tokio::test]
async fn torn_last_record_is_dropped_and_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..10 {
        store
            .create(&format!("/k/{i}"), Bytes::from(format!("value {i}")))
            .await
            .unwrap();
    }
    drop(store);

    // Damage the last record, as a crash in the middle of writing it would.
    let segment = files(dir.path(), "wal-").pop().unwrap();
    let end = written_end(&segment);
    let mut data = fs::read(&segment).unwrap();
    data[end - 1] ^= 0x55;
    fs::write(&segment, &data).unwrap();

    let store = open(dir.path());
    assert_eq!(
        store.current_revision().await.unwrap(),
        9,
        "the torn 10th write is gone"
    );
    assert_eq!(store.get("/k/9").await.unwrap(), None);
    assert!(store.get("/k/8").await.unwrap().is_some());
    let redo = store.create("/k/9", Bytes::from_static(b"again")).await.unwrap();
    assert_eq!(redo.mod_revision, 10);
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.current_revision().await.unwrap(), 10);
    assert_eq!(
        store.get("/k/9").await.unwrap().map(|kv| kv.value),
        Some(Bytes::from_static(b"again"))
    );
}

#[tokio::test]
async fn garbage_after_the_last_record_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let revision = write_mix(&store, 20).await;
    let before = everything(&store).await;
    drop(store);

    let garbage: [&[u8]; 2] = [
        // A plausible header with a wrong checksum, and a short payload.
        &[0x17, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3],
        // A length of almost 4 GiB: recovery must not try to read (or allocate) it.
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 9],
    ];
    for garbage in garbage {
        let segment = files(dir.path(), "wal-").pop().unwrap();
        let end = written_end(&segment);
        let mut data = fs::read(&segment).unwrap();
        data.truncate(end);
        data.extend_from_slice(garbage);
        fs::write(&segment, &data).unwrap();

        let store = open(dir.path());
        assert_eq!(store.current_revision().await.unwrap(), revision);
        assert_eq!(everything(&store).await, before);
    }
}

#[tokio::test]
async fn rotation_snapshots_and_bounds_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_bytes: 4096,
        history_revisions: 100,
        ..Options::default()
    };
    let store = EmbeddedStore::open(dir.path(), options.clone()).unwrap();
    let revision = write_mix(&store, 400).await;
    let before = everything(&store).await;
    drop(store); // waits for the snapshot in flight

    let snapshots = files(dir.path(), "snap-");
    let segments = files(dir.path(), "wal-");
    assert_eq!(snapshots.len(), 1, "older snapshots are removed: {snapshots:?}");
    assert!(
        segments.len() <= 2,
        "segments covered by the snapshot are removed: {segments:?}"
    );

    let store = EmbeddedStore::open(dir.path(), options).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), revision);
    assert_eq!(everything(&store).await, before);
    let r = store.watch("", 1).await;
    assert!(
        matches!(r, Err(StoreError::Compacted { .. })),
        "history before the snapshot is gone"
    );
    assert!(store.compacted_revision() >= revision - 100 - 100 / 8);
}

#[tokio::test]
async fn damage_inside_an_older_segment_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..10 {
        store
            .create(&format!("/k/{i}"), Bytes::from(vec![b'v'; 100]))
            .await
            .unwrap();
    }
    drop(store);

    // Reopen with tiny segments so the next write rotates, and make the snapshot of revision 10
    // fail (its temporary name is taken by a directory), so the first segment stays needed.
    let blocker = dir.path().join("snap-00000000000000000010.snap.tmp");
    let tiny = Options {
        segment_bytes: 1,
        ..Options::default()
    };
    let store = EmbeddedStore::open(dir.path(), tiny).unwrap();
    fs::create_dir(&blocker).unwrap();
    store
        .create("/k/10", Bytes::from_static(b"in the second segment"))
        .await
        .unwrap();
    drop(store);
    fs::remove_dir(&blocker).unwrap();

    let segments = files(dir.path(), "wal-");
    assert_eq!(segments.len(), 2, "{segments:?}");
    assert!(files(dir.path(), "snap-").is_empty());
    // Both segments together are a valid log.
    let store = open(dir.path());
    assert_eq!(store.current_revision().await.unwrap(), 11);
    drop(store);

    let older = &segments[0];
    let mut data = fs::read(older).unwrap();
    data[20] ^= 0xff;
    fs::write(older, &data).unwrap();
    match EmbeddedStore::open(dir.path(), Options::default()) {
        Err(StoreError::Corrupt { path, .. }) => assert_eq!(&path, older),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opening over a damaged older segment must fail"),
    }
}

#[tokio::test]
async fn a_data_directory_has_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let second = EmbeddedStore::open(dir.path(), Options::default());
    assert!(
        matches!(second, Err(StoreError::Io { .. })),
        "second open must fail"
    );
    drop(store);
    EmbeddedStore::open(dir.path(), Options::default()).unwrap();
}

#[tokio::test]
async fn watches_end_when_the_store_shuts_down() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut watch = store.watch("/", 0).await.unwrap();
    drop(store);
    assert!(watch.next().await.is_none());
}
