//! The embedded backend: the whole store in this process, durable in a data directory.
//!
//! # Shape
//!
//! * The state (live keys, their recent versions, the event history) lives in memory in one
//!   [`Mvcc`] behind an `RwLock`. Reads (`get`, `list`, watch replay) take the read lock briefly and
//!   never touch the disk. Ten thousand 3 KB objects are ~30 MB. A value is copied once on the way
//!   in, into an allocation of its exact size, and from then on shared (reference counted) by the
//!   state, the history, list results and every watcher. The history is bounded both in revisions
//!   and in bytes ([`Options`]), and compacted automatically.
//! * All writes go through one **committer thread**. It takes every request waiting in its queue
//!   (group commit), decides each against the state plus the earlier requests of the same batch
//!   (assigning consecutive revisions), appends their records to the write-ahead log ([`wal`]) with
//!   one `write` and one `fdatasync`, and only then applies them to the in-memory state, answers the
//!   callers and publishes the events to watchers. So nothing a reader can see is lost by a crash,
//!   and a writer is answered only when its write is on disk. A thread, not a task: `fdatasync`
//!   blocks, and the committer must not starve the async runtime or be starved by it.
//! * When the log segment passes `Options::segment_bytes`, the committer starts a new segment and a
//!   background thread writes a [`snapshot`] of the live keys at the revision just before it; once
//!   that is durable the older segments and snapshots are deleted. Restart time and disk use stay
//!   bounded by one snapshot plus about one segment.
//! * Recovery loads the newest snapshot, replays the segments after it, truncates a torn tail, and
//!   carries on appending to the last segment.
//!
//! If a log write or sync fails the store stops accepting writes ([`StoreError::Closed`]): after a
//! failed `fdatasync` the file's contents are unknown, and guessing is how databases lose data.
//!
//! Why not a database crate (redb, sled, rocksdb): the access pattern is an append-only log plus
//! an in-memory index, which is exactly what a log gives with one sync per batch; a B-tree
//! database would add write amplification and a second cache without buying anything, since the
//! whole state must be in memory anyway to serve MVCC lists and watch replays cheaply.

mod snapshot;
mod sys;
mod wal;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::mvcc::{Change, Mvcc};
use crate::watch::Watchers;
use crate::{
    BoxFuture, Deleted, Event, KeyValue, ListOptions, ListPage, Result, Store, StoreError, WatchStream,
};

/// Tuning of an [`EmbeddedStore`]. `Options::default()` suits a control plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many revisions of history to keep for MVCC reads and watch replays (at least).
    /// Older history is compacted automatically. Default 10,000.
    pub history_revisions: u64,
    /// The most value bytes the history may hold beyond the live state; older history is
    /// compacted to stay within it (large objects shorten the history). Default 256 MiB.
    pub history_bytes: u64,
    /// Size of a write-ahead log segment; passing it starts a new segment and a snapshot.
    /// Default 64 MiB.
    pub segment_bytes: u64,
    /// How many undelivered events a watcher may have before it is terminated with
    /// [`StoreError::WatchLagged`]. Default 1,024.
    pub watch_buffer: usize,
    /// The most writes committed with one `fdatasync`. Default 512.
    pub max_batch: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history_revisions: 10_000,
            history_bytes: 256 << 20,
            segment_bytes: 64 << 20,
            watch_buffer: 1024,
            max_batch: 512,
        }
    }
}

/// The embedded store. Cheap to share as `Arc<dyn Store>`; dropping the last handle stops the
/// committer thread (after the batch in flight) and ends all watch streams.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<Request>>,
    committer: Option<JoinHandle<()>>,
}

struct Shared {
    state: RwLock<Mvcc>,
    watchers: Arc<Watchers>,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Mvcc> {
        // A panic under the lock is a bug; serving on beats turning it into a panic in every caller.
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Mvcc> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

enum Op {
    Create { value: Bytes },
    Update { value: Bytes, expected: Option<u64> },
    Delete { expected: Option<u64> },
}

enum Outcome {
    Put(KeyValue),
    Deleted(Deleted),
}

struct Request {
    key: Arc<str>,
    op: Op,
    reply: oneshot::Sender<Result<Outcome>>,
}

impl Request {
    /// Roughly how many log bytes the request takes.
    fn size(&self) -> usize {
        let value = match &self.op {
            Op::Create { value } | Op::Update { value, .. } => value.len(),
            Op::Delete { .. } => 0,
        };
        self.key.len() + value + 32
    }
}

/// A batch stops taking more requests once it holds this many bytes: one `fdatasync` should not
/// wait for an unbounded write, and the record buffer stays small.
const MAX_BATCH_BYTES: usize = 8 << 20;

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, recovering its state from the snapshot and
    /// the log. Fails if another store has the directory open.
    ///
    /// Blocking (it reads the data directory); call it before serving, or from `spawn_blocking`.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let lock = lock_dir(&dir)?;
        remove_temporaries(&dir)?;
        let recovered = recover(&dir, &options)?;
        tracing::info!(
            dir = %dir.display(),
            revision = recovered.state.current_revision(),
            keys = recovered.state.live_keys(),
            truncated_tail = recovered.truncated_tail,
            "embedded store opened"
        );
        let shared = Arc::new(Shared {
            state: RwLock::new(recovered.state),
            watchers: Arc::new(Watchers::new(options.watch_buffer)),
        });
        let (tx, rx) = mpsc::channel(options.max_batch.max(1) * 4);
        let committer = Committer {
            shared: shared.clone(),
            requests: rx,
            log: recovered.log,
            dir,
            options,
            snapshotter: None,
            failed: None,
            _lock: lock,
        };
        let handle = std::thread::Builder::new()
            .name("keel-store-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| StoreError::io("starting the store's committer thread", e))?;
        Ok(EmbeddedStore {
            shared,
            requests: Some(tx),
            committer: Some(handle),
        })
    }

    /// How many watchers are currently registered (for metrics and tests).
    pub fn watcher_count(&self) -> usize {
        self.shared.watchers.len()
    }

    /// The oldest revision still readable (history before it has been compacted).
    pub fn compacted_revision(&self) -> u64 {
        self.shared.read().compacted_revision()
    }

    /// Values are copied into an allocation of their exact size: a caller's `Bytes` may be a
    /// slice of a larger buffer (a whole request body) or carry spare capacity, and the store
    /// keeps values for a long time.
    fn own(value: Bytes) -> Bytes {
        Bytes::copy_from_slice(&value)
    }

    async fn submit(&self, key: &str, op: Op) -> Result<Outcome> {
        let closed = || StoreError::Closed {
            reason: "the store has shut down".into(),
        };
        let requests = self.requests.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key: key.into(),
            op,
            reply,
        };
        requests.send(request).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(handle) = self.committer.take() {
            if handle.join().is_err() {
                tracing::error!("the store's committer thread panicked");
            }
        }
    }
}

impl Store for EmbeddedStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        let kv = self.shared.read().get(key);
        Box::pin(async move { Ok(kv) })
    }

    fn list<'a>(&'a self, prefix: &'a str, options: ListOptions) -> BoxFuture<'a, Result<ListPage>> {
        let page = self.shared.read().list(prefix, &options);
        Box::pin(async move { page })
    }

    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move {
            match self
                .submit(
                    key,
                    Op::Create {
                        value: Self::own(value),
                    },
                )
                .await?
            {
                Outcome::Put(kv) => Ok(kv),
                Outcome::Deleted(_) => Err(unexpected_outcome()),
            }
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected_mod_revision: Option<u64>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move {
            let op = Op::Update {
                value: Self::own(value),
                expected: expected_mod_revision,
            };
            match self.submit(key, op).await? {
                Outcome::Put(kv) => Ok(kv),
                Outcome::Deleted(_) => Err(unexpected_outcome()),
            }
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected_mod_revision: Option<u64>,
    ) -> BoxFuture<'a, Result<Deleted>> {
        Box::pin(async move {
            let op = Op::Delete {
                expected: expected_mod_revision,
            };
            match self.submit(key, op).await? {
                Outcome::Deleted(deleted) => Ok(deleted),
                Outcome::Put(_) => Err(unexpected_outcome()),
            }
        })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after_revision: u64) -> BoxFuture<'a, Result<WatchStream>> {
        // Register first, then read the replay: see `watch` for why this gives no gap.
        let registration = self.shared.watchers.register(prefix);
        let replay = self.shared.read().events_after(prefix, after_revision);
        Box::pin(async move {
            let stream: WatchStream = Box::pin(registration.into_stream(replay?, after_revision));
            Ok(stream)
        })
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<u64>> {
        let revision = self.shared.read().current_revision();
        Box::pin(async move { Ok(revision) })
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<()>> {
        let result = {
            let mut state = self.shared.write();
            let current = state.current_revision();
            if revision > current {
                Err(StoreError::FutureRevision {
                    requested: revision,
                    current,
                })
            } else {
                state.compact(revision);
                Ok(())
            }
        };
        Box::pin(async move { result })
    }
}

fn unexpected_outcome() -> StoreError {
    StoreError::Closed {
        reason: "internal error: the committer answered a different operation".into(),
    }
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    sys::try_lock_exclusive(&file).map_err(|e| {
        StoreError::io(
            format!("locking {} (is another store using it?)", dir.display()),
            e,
        )
    })?;
    Ok(file)
}

fn remove_temporaries(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.ends_with(".tmp")) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
        }
    }
    Ok(())
}

struct Recovered {
    state: Mvcc,
    log: wal::SegmentWriter,
    truncated_tail: bool,
}

/// Rebuilds the state from the newest snapshot and the log after it (see the module docs).
fn recover(dir: &Path, options: &Options) -> Result<Recovered> {
    let snapshots = snapshot::list(dir)?;
    let mut state = match snapshots.last() {
        Some(&rev) => {
            let (revision, items) = snapshot::read(&dir.join(snapshot::snapshot_name(rev)))?;
            Mvcc::from_snapshot(revision, items)
        }
        None => Mvcc::default(),
    };
    let base = state.current_revision();
    let segments = wal::list_segments(dir)?;
    // Segments wholly covered by the snapshot: the next one starts at or before base + 1.
    let first_needed = segments.windows(2).take_while(|w| w[1] <= base + 1).count();
    let mut log = None;
    let mut truncated_tail = false;
    for (i, &first) in segments.iter().enumerate().skip(first_needed) {
        let path = dir.join(wal::segment_name(first));
        let scan = wal::read_segment(&path, |revision, change| {
            let current = state.current_revision();
            if revision <= current {
                return Ok(());
            }
            if revision != current + 1 {
                return Err(StoreError::Corrupt {
                    path: path.clone(),
                    reason: format!("revision {revision} follows {current}: the log has a gap"),
                });
            }
            state.apply(change);
            Ok(())
        })?;
        let is_last = i + 1 == segments.len();
        if let wal::SegmentEnd::Damaged { reason } = &scan.end {
            if !is_last {
                return Err(StoreError::Corrupt {
                    path,
                    reason: reason.clone(),
                });
            }
            tracing::warn!(path = %path.display(), %reason, "truncating the torn tail of the log");
            truncated_tail = true;
        }
        if is_last {
            log = Some(wal::SegmentWriter::reopen(
                dir,
                first,
                scan.valid_len,
                options.segment_bytes,
            )?);
        }
    }
    let log = match log {
        Some(log) => log,
        None => wal::SegmentWriter::create(dir, state.current_revision() + 1, options.segment_bytes)?,
    };
    if log.first_revision() > state.current_revision() + 1 {
        return Err(StoreError::Corrupt {
            path: dir.join(wal::segment_name(log.first_revision())),
            reason: format!(
                "the log starts at revision {} but the state before it ends at {}",
                log.first_revision(),
                state.current_revision()
            ),
        });
    }
    remove_obsolete(dir, base)?;
    let current = state.current_revision();
    state.compact(current.saturating_sub(options.history_revisions));
    state.compact_to_bounds(options.history_revisions, options.history_bytes);
    Ok(Recovered {
        state,
        log,
        truncated_tail,
    })
}

/// Removes the snapshots older than the one at `snapshot_revision` and the log segments it covers.
fn remove_obsolete(dir: &Path, snapshot_revision: u64) -> Result<()> {
    if snapshot_revision == 0 {
        return Ok(());
    }
    let segments = wal::list_segments(dir)?;
    let covered = segments
        .windows(2)
        .take_while(|w| w[1] <= snapshot_revision + 1)
        .count();
    let mut paths: Vec<PathBuf> = segments[..covered]
        .iter()
        .map(|&first| dir.join(wal::segment_name(first)))
        .collect();
    paths.extend(
        snapshot::list(dir)?
            .into_iter()
            .filter(|&rev| rev < snapshot_revision)
            .map(|rev| dir.join(snapshot::snapshot_name(rev))),
    );
    for path in &paths {
        fs::remove_file(path).map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
    }
    if !paths.is_empty() {
        wal::sync_dir(dir)?;
    }
    Ok(())
}

/// The single writer: see the module documentation.
struct Committer {
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Request>,
    log: wal::SegmentWriter,
    dir: PathBuf,
    options: Options,
    snapshotter: Option<JoinHandle<()>>,
    /// Set once a log write failed; every later write is refused with this reason.
    failed: Option<String>,
    _lock: File,
}

/// A request that passed its preconditions, waiting for its batch to be durable.
struct Accepted {
    change: Change,
    outcome: Outcome,
    reply: oneshot::Sender<Result<Outcome>>,
}

impl Committer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(self.options.max_batch);
        let mut records = Vec::new();
        while let Some(first) = self.requests.blocking_recv() {
            let mut bytes = first.size();
            batch.push(first);
            while batch.len() < self.options.max_batch && bytes < MAX_BATCH_BYTES {
                match self.requests.try_recv() {
                    Ok(request) => {
                        bytes += request.size();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut batch, &mut records);
            // Do not keep the buffer of an exceptionally large batch around.
            if records.capacity() > MAX_BATCH_BYTES {
                records = Vec::new();
            }
        }
        self.join_snapshotter();
        self.shared.watchers.close_all();
        tracing::debug!("store committer stopped");
    }

    fn commit(&mut self, batch: &mut Vec<Request>, records: &mut Vec<u8>) {
        if let Some(reason) = &self.failed {
            for request in batch.drain(..) {
                let _ = request.reply.send(Err(StoreError::Closed {
                    reason: reason.clone(),
                }));
            }
            return;
        }
        records.clear();
        let (base, accepted) = self.decide(batch, records);
        if accepted.is_empty() {
            return;
        }
        if self.log.len() > 0 && self.log.len() >= self.options.segment_bytes {
            if let Err(e) = self.rotate(base) {
                self.fail(accepted, e);
                return;
            }
        }
        if let Err(e) = self.log.append_durable(records) {
            self.fail(accepted, e);
            return;
        }
        let mut events: Vec<Event> = Vec::with_capacity(accepted.len());
        {
            let mut state = self.shared.write();
            for a in &accepted {
                events.push(state.apply(a.change.clone()));
            }
        }
        for a in accepted {
            let _ = a.reply.send(Ok(a.outcome));
        }
        self.shared.watchers.publish(&events);
        // Compaction (every ~1/8 of the history, a pass over the oldest events under the write
        // lock) comes after the answers, off the writers' latency.
        self.shared
            .write()
            .compact_to_bounds(self.options.history_revisions, self.options.history_bytes);
    }

    /// Checks each request against the state and the batch's earlier requests; answers the ones
    /// that fail, encodes the others. Returns the revision before the batch and the accepted ones.
    fn decide(&self, batch: &mut Vec<Request>, records: &mut Vec<u8>) -> (u64, Vec<Accepted>) {
        let state = self.shared.read();
        let base = state.current_revision();
        let mut next = base + 1;
        let mut overlay: HashMap<Arc<str>, Option<KeyValue>> = HashMap::new();
        let mut accepted = Vec::with_capacity(batch.len());
        for request in batch.drain(..) {
            let current = match overlay.get(&request.key) {
                Some(kv) => kv.clone(),
                None => state.get(&request.key),
            };
            match decide_one(&request.key, request.op, current, next) {
                Ok((change, outcome)) => {
                    let after = match &outcome {
                        Outcome::Put(kv) => Some(kv.clone()),
                        Outcome::Deleted(_) => None,
                    };
                    overlay.insert(request.key, after);
                    wal::encode(records, next, &change);
                    accepted.push(Accepted {
                        change,
                        outcome,
                        reply: request.reply,
                    });
                    next += 1;
                }
                Err(e) => {
                    let _ = request.reply.send(Err(e));
                }
            }
        }
        (base, accepted)
    }

    /// Starts a new log segment at `base + 1` and snapshots the state at `base` in the background.
    fn rotate(&mut self, base: u64) -> Result<()> {
        self.join_snapshotter();
        let items = self.shared.read().live_items();
        self.log.rotate(base + 1)?;
        let dir = self.dir.clone();
        let handle = std::thread::Builder::new()
            .name("keel-store-snapshot".into())
            .spawn(move || match snapshot::write(&dir, base, &items) {
                Ok(path) => {
                    tracing::info!(path = %path.display(), revision = base, keys = items.len(), "store snapshot written");
                    if let Err(e) = remove_obsolete(&dir, base) {
                        tracing::warn!(error = %e, "could not remove files covered by a snapshot");
                    }
                }
                Err(e) => tracing::error!(error = %e, "writing a store snapshot failed; the log keeps growing"),
            });
        match handle {
            Ok(handle) => self.snapshotter = Some(handle),
            Err(e) => tracing::error!(error = %e, "could not start the snapshot thread"),
        }
        Ok(())
    }

    fn join_snapshotter(&mut self) {
        if let Some(handle) = self.snapshotter.take() {
            if handle.join().is_err() {
                tracing::error!("the store's snapshot thread panicked");
            }
        }
    }

    fn fail(&mut self, accepted: Vec<Accepted>, error: StoreError) {
        tracing::error!(%error, "the store's write-ahead log failed; refusing further writes");
        let reason = format!("write-ahead log failed: {error}");
        for a in accepted {
            let _ = a.reply.send(Err(StoreError::Closed {
                reason: reason.clone(),
            }));
        }
        self.failed = Some(reason);
    }
}

/// Applies the preconditions of one request to the key's current value.
fn decide_one(key: &Arc<str>, op: Op, current: Option<KeyValue>, revision: u64) -> Result<(Change, Outcome)> {
    let check = |current: Option<KeyValue>, expected: Option<u64>| -> Result<KeyValue> {
        let current = current.ok_or_else(|| StoreError::NotFound { key: key.to_string() })?;
        match expected {
            Some(expected) if expected != current.mod_revision => Err(StoreError::Conflict {
                key: key.to_string(),
                expected,
                current: Box::new(current),
            }),
            _ => Ok(current),
        }
    };
    match op {
        Op::Create { value } => {
            if current.is_some() {
                return Err(StoreError::AlreadyExists { key: key.to_string() });
            }
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: revision,
                mod_revision: revision,
            };
            let change = Change::Put {
                key: key.clone(),
                value,
                create_revision: revision,
            };
            Ok((change, Outcome::Put(kv)))
        }
        Op::Update { value, expected } => {
            let current = check(current, expected)?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: current.create_revision,
                mod_revision: revision,
            };
            let change = Change::Put {
                key: key.clone(),
                value,
                create_revision: current.create_revision,
            };
            Ok((change, Outcome::Put(kv)))
        }
        Op::Delete { expected } => {
            let prev = check(current, expected)?;
            let change = Change::Delete { key: key.clone() };
            Ok((change, Outcome::Deleted(Deleted { prev, revision })))
        }
    }
}
