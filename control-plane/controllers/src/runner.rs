//! The one controller runner every controller shares, after kube-rs's `Controller`.
//!
//! A controller is a primary kind, the kinds it owns, and a `reconcile(obj, ctx)` function that
//! reads the world and makes it right, returning [`Action::Done`] or [`Action::RequeueAfter`].
//! The runner does everything else:
//!
//! * the events of the primary kind and of the kinds it watches, from the shared
//!   [`Informers`] (one [`ApiClient::watch`] per kind for all controllers); an owned object's
//!   event is mapped to its controller owner (`ownerReferences[controller=true]` of the primary
//!   kind). After a gap the watch replays every object as `ADDED`, so a gap only delays work;
//! * a work queue of object keys: a key is queued at most once, a key being reconciled is never
//!   handed to a second worker (an event meanwhile re-queues it when the first finishes), errors
//!   back off exponentially per key;
//! * a periodic resync of every primary object, so that even a lost event is repaired.
//!
//! Reconcile gets the primary object freshly read from the API, not from a cache: writes the
//! previous pass made are always visible, which removes the need for upstream's "expectations"
//! bookkeeping at the cost of one read per pass.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::client::{ApiClient, WatchEventKind};
use keel_api::registry::ResourceType;
use keel_api::status::ApiError;
use serde_json::Value;
use tokio::sync::{broadcast, Notify};

use crate::informers::{Informers, Shared};

/// The key of an object: namespace (for namespaced kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        ObjectRef {
            namespace: namespace.filter(|n| !n.is_empty()).map(str::to_string),
            name: name.to_string(),
        }
    }

    /// The key of an object from its metadata.
    pub fn from_object(obj: &Value) -> Option<Self> {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str)?;
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
        Some(ObjectRef::new(ns, name))
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next event (or resync).
    Done,
    /// Look again after this long, even without an event.
    RequeueAfter(Duration),
}

/// Why a reconcile failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API: {0}")]
    Api(#[from] ApiError),
    #[error("invalid {field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("the resource registry has no {0}")]
    MissingResource(&'static str),
}

/// Maps an event's object to the primary keys it concerns.
pub type Mapper = Arc<dyn Fn(&Value) -> Vec<ObjectRef> + Send + Sync>;

/// What runs for a key whose primary object no longer exists (most controllers need nothing:
/// the garbage collector removes what they owned).
pub type Cleanup<C> = Arc<
    dyn Fn(ObjectRef, Arc<C>) -> keel_api::client::BoxFuture<'static, Result<Action, Error>> + Send + Sync,
>;

/// A controller: a primary kind, the kinds it watches, and how many workers reconcile.
pub struct Controller {
    name: &'static str,
    informers: Arc<Informers>,
    primary: &'static ResourceType,
    feeds: Vec<(broadcast::Receiver<Shared>, Mapper, bool)>,
    workers: usize,
    resync: Duration,
}

impl Controller {
    /// A controller of `primary`, fed by `informers` (subscribed now; the caller starts them
    /// once every controller is built).
    pub fn new(name: &'static str, informers: &Arc<Informers>, primary: &'static ResourceType) -> Self {
        let mapper: Mapper = Arc::new(|obj: &Value| ObjectRef::from_object(obj).into_iter().collect());
        Controller {
            name,
            informers: informers.clone(),
            primary,
            feeds: vec![(informers.subscribe(primary), mapper, true)],
            workers: 4,
            resync: Duration::from_secs(300),
        }
    }

    /// Also watch `rt`, whose objects are owned (as controller) by the primary kind.
    pub fn owns(self, rt: &'static ResourceType) -> Self {
        let owner_kind = self.primary.kind;
        let owner_group = self.primary.group;
        self.watches(
            rt,
            Arc::new(move |obj: &Value| {
                controller_owner(obj, owner_group, owner_kind)
                    .map(|name| {
                        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
                        vec![ObjectRef::new(ns, name)]
                    })
                    .unwrap_or_default()
            }),
        )
    }

    /// Also watch `rt`, mapping each of its objects to primary keys with `mapper`.
    pub fn watches(mut self, rt: &'static ResourceType, mapper: Mapper) -> Self {
        let rx = self.informers.subscribe(rt);
        self.feeds.push((rx, mapper, false));
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    pub fn resync(mut self, every: Duration) -> Self {
        self.resync = every;
        self
    }

    /// Runs until `shutdown` completes.
    pub async fn run<C, F, Fut>(self, reconcile: F, ctx: Arc<C>, shutdown: impl Future<Output = ()> + Send)
    where
        C: Send + Sync + 'static,
        F: Fn(Arc<Value>, Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, Error>> + Send + 'static,
    {
        self.run_with_cleanup(reconcile, None, ctx, shutdown).await
    }

    /// [`Controller::run`], calling `cleanup` for keys whose primary object is gone.
    pub async fn run_with_cleanup<C, F, Fut>(
        self,
        reconcile: F,
        cleanup: Option<Cleanup<C>>,
        ctx: Arc<C>,
        shutdown: impl Future<Output = ()> + Send,
    ) where
        C: Send + Sync + 'static,
        F: Fn(Arc<Value>, Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, Error>> + Send + 'static,
    {
        let queue = Arc::new(WorkQueue::default());
        let known: Arc<Mutex<HashSet<ObjectRef>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();

        // Every feed maps events to keys; the primary's also keeps the set of keys for resyncs.
        for (rx, mapper, primary) in self.feeds {
            let track = primary.then(|| known.clone());
            tasks.spawn(feed(self.name, rx, mapper, queue.clone(), track, known.clone()));
        }
        {
            let queue = queue.clone();
            let every = self.resync;
            let known = known.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let keys: Vec<ObjectRef> = lock(&known).iter().cloned().collect();
                    for k in keys {
                        queue.add(k);
                    }
                }
            });
        }
        let reconcile = Arc::new(reconcile);
        for _ in 0..self.workers {
            tasks.spawn(worker(
                self.name,
                self.informers.client().clone(),
                self.primary,
                queue.clone(),
                reconcile.clone(),
                cleanup.clone(),
                ctx.clone(),
            ));
        }
        shutdown.await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// The name of the controller owner of `obj` if it is of the given group and kind.
pub fn controller_owner<'a>(obj: &'a Value, group: &str, kind: &str) -> Option<&'a str> {
    let refs = obj.pointer("/metadata/ownerReferences")?.as_array()?;
    refs.iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .filter(|r| {
            let api_version = r.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            let (g, _) = keel_api::registry::split_api_version(api_version);
            g == group && r.get("kind").and_then(Value::as_str) == Some(kind)
        })
        .and_then(|r| r.get("name").and_then(Value::as_str))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn worker<C, F, Fut>(
    name: &'static str,
    client: Arc<dyn ApiClient>,
    primary: &'static ResourceType,
    queue: Arc<WorkQueue>,
    reconcile: Arc<F>,
    cleanup: Option<Cleanup<C>>,
    ctx: Arc<C>,
) where
    C: Send + Sync + 'static,
    F: Fn(Arc<Value>, Arc<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    loop {
        let key = queue.pop().await;
        let result = match client.get(primary, key.namespace.clone(), key.name.clone()).await {
            Ok(obj) => reconcile(Arc::new(obj), ctx.clone()).await,
            // Gone: owned objects are the garbage collector's; some controllers clean up more.
            Err(e) if e.code == 404 => match &cleanup {
                Some(f) => f(key.clone(), ctx.clone()).await,
                None => Ok(Action::Done),
            },
            Err(e) => Err(Error::Api(e)),
        };
        match result {
            Ok(action) => {
                queue.forget_failures(&key);
                if let Action::RequeueAfter(d) = action {
                    queue.add_after(key.clone(), d);
                }
            }
            Err(e) => {
                let delay = queue.backoff(&key);
                // Conflicts are the normal price of optimistic concurrency.
                if matches!(&e, Error::Api(a) if a.code == 409) {
                    tracing::debug!(controller = name, key = %key, error = %e, "reconcile conflict, retrying");
                } else {
                    tracing::warn!(controller = name, key = %key, error = %e, retry_in = ?delay, "reconcile failed");
                }
                queue.add_after(key.clone(), delay);
            }
        }
        queue.done(&key);
    }
}

/// Feeds one subscription into the queue.
async fn feed(
    name: &'static str,
    mut rx: broadcast::Receiver<Shared>,
    mapper: Mapper,
    queue: Arc<WorkQueue>,
    track: Option<Arc<Mutex<HashSet<ObjectRef>>>>,
    known: Arc<Mutex<HashSet<ObjectRef>>>,
) {
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Missed events: look at everything again.
                tracing::warn!(controller = name, missed = n, "fell behind the watch; resyncing");
                let keys: Vec<ObjectRef> = lock(&known).iter().cloned().collect();
                for k in keys {
                    queue.add(k);
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if let Some(track) = &track {
            if let Some(key) = ObjectRef::from_object(&ev.object) {
                let mut known = lock(track);
                if ev.kind == WatchEventKind::Deleted {
                    known.remove(&key);
                } else {
                    known.insert(key);
                }
            }
        }
        for key in mapper(&ev.object) {
            queue.add(key);
        }
    }
}

fn backoff_delay(failures: u32) -> Duration {
    let ms = 50u64.saturating_mul(1u64 << failures.min(10));
    Duration::from_millis(ms.min(30_000))
}

/// Keys waiting for a worker, without duplicates.
#[derive(Default)]
struct WorkQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    order: VecDeque<ObjectRef>,
    queued: HashSet<ObjectRef>,
    active: HashSet<ObjectRef>,
    /// Keys that were added while being reconciled: queued again when that pass ends.
    dirty: HashSet<ObjectRef>,
    failures: HashMap<ObjectRef, u32>,
}

impl WorkQueue {
    fn add(&self, key: ObjectRef) {
        let mut s = lock(&self.state);
        if s.queued.contains(&key) {
            return;
        }
        if s.active.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        s.queued.insert(key.clone());
        s.order.push_back(key);
        drop(s);
        self.ready.notify_one();
    }

    fn add_after(self: &Arc<Self>, key: ObjectRef, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    async fn pop(&self) -> ObjectRef {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = lock(&self.state);
                if let Some(key) = s.order.pop_front() {
                    s.queued.remove(&key);
                    s.active.insert(key.clone());
                    let more = !s.order.is_empty();
                    drop(s);
                    if more {
                        self.ready.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    fn done(&self, key: &ObjectRef) {
        let mut s = lock(&self.state);
        s.active.remove(key);
        if s.dirty.remove(key) {
            drop(s);
            self.add(key.clone());
        }
    }

    fn backoff(&self, key: &ObjectRef) -> Duration {
        let mut s = lock(&self.state);
        let n = s.failures.entry(key.clone()).or_insert(0);
        *n += 1;
        backoff_delay(*n)
    }

    fn forget_failures(&self, key: &ObjectRef) {
        lock(&self.state).failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ObjectRef {
        ObjectRef::new(Some("default"), n)
    }

    #[tokio::test]
    async fn queue_deduplicates_and_holds_back_active_keys() {
        let q = WorkQueue::default();
        q.add(key("a"));
        q.add(key("a"));
        q.add(key("b"));
        assert_eq!(q.pop().await, key("a"));
        // "a" is being reconciled: a new event marks it dirty rather than queueing it twice.
        q.add(key("a"));
        assert_eq!(q.pop().await, key("b"));
        assert!(lock(&q.state).order.is_empty());
        q.done(&key("a"));
        assert_eq!(q.pop().await, key("a"));
        q.done(&key("a"));
        q.done(&key("b"));
        assert!(lock(&q.state).order.is_empty());
    }

    #[test]
    fn owner_mapping_needs_the_controller_flag_and_kind() {
        let pod = serde_json::json!({"metadata": {"namespace": "ns", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "other", "uid": "1"},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "2", "controller": true}
        ]}});
        assert_eq!(controller_owner(&pod, "apps", "ReplicaSet"), Some("web"));
        assert_eq!(controller_owner(&pod, "", "ReplicationController"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff_delay(1) < backoff_delay(2));
        assert_eq!(backoff_delay(40), Duration::from_secs(30));
    }
}
