//! A real in-process API (the embedded store in a temp dir, the API server's objects, the
//! garbage collector) for integration tests, plus helpers that make each step one line: wait for
//! a condition with a deadline, play a kubelet that marks pods ready.

#![allow(dead_code)]

pub mod fake;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_api::client::{ApiClient, ListParams, WatchEventKind, WriteOptions};
use keel_api::registry::{self, ResourceType};
use serde_json::{json, Value};
use tokio::sync::watch;

pub struct Cluster {
    pub client: Arc<dyn ApiClient>,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

pub fn rt(group: &str, plural: &str) -> &'static ResourceType {
    registry::find(group, "v1", plural).expect("registry row")
}

impl Cluster {
    pub async fn start() -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("temp dir");
        let store = keel_store::embedded::EmbeddedStore::open(dir.path().join("store"), Default::default())
            .expect("store");
        let objects = Arc::new(keel_apiserver::Objects::new(
            Arc::new(store),
            Arc::new(keel_apiserver::Config::default()),
        ));
        keel_apiserver::gc::spawn(objects.clone());
        keel_apiserver::bootstrap::ensure(&objects)
            .await
            .expect("bootstrap");
        let client: Arc<dyn ApiClient> = Arc::new(keel_apiserver::client::InProcessClient::new(objects));
        let (stop, _) = watch::channel(false);
        Cluster {
            client,
            stop,
            _dir: dir,
        }
    }

    /// A future that completes when the cluster is dropped or stopped.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    pub fn run_controllers(&self) {
        let client = self.client.clone();
        let stopped = self.stopped();
        tokio::spawn(async move {
            keel_controllers::run_all(client, stopped)
                .await
                .expect("controllers")
        });
    }

    /// Plays the kubelet: every pod that appears is marked Running and Ready.
    pub fn run_fake_kubelet(&self) {
        let client = self.client.clone();
        let stopped = self.stopped();
        tokio::spawn(async move {
            tokio::select! {
                _ = stopped => {}
                _ = fake_kubelet(client) => {}
            }
        });
    }

    pub async fn create(&self, group: &str, plural: &str, obj: Value) -> Value {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        self.client
            .create(rt(group, plural), ns, obj, WriteOptions::default())
            .await
            .expect("create")
    }

    pub async fn get(&self, group: &str, plural: &str, ns: &str, name: &str) -> Value {
        self.client
            .get(rt(group, plural), Some(ns.into()), name.into())
            .await
            .expect("get")
    }

    pub async fn list(&self, group: &str, plural: &str, ns: &str) -> Vec<Value> {
        let l = self
            .client
            .list(rt(group, plural), Some(ns.into()), ListParams::default())
            .await
            .expect("list");
        l["items"].as_array().cloned().unwrap_or_default()
    }

    /// A strategic merge patch, retried on conflicts as kubectl users would retry.
    pub async fn patch(&self, group: &str, plural: &str, ns: &str, name: &str, patch: Value) -> Value {
        let mut attempts = 0;
        loop {
            let r = self
                .client
                .patch(
                    rt(group, plural),
                    Some(ns.into()),
                    name.into(),
                    keel_api::client::Patch::Strategic(patch.clone()),
                    None,
                    WriteOptions::default(),
                )
                .await;
            match r {
                Err(e) if e.code == 409 && attempts < 20 => attempts += 1,
                other => return other.expect("patch"),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

static NEXT_IP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(2);

pub fn mark_ready(pod: &mut Value) {
    let now = keel_api::time::now_rfc3339();
    let n = NEXT_IP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    pod["status"]["podIP"] = json!(format!("10.244.{}.{}", n / 250, n % 250 + 1));
    pod["status"]["phase"] = json!("Running");
    pod["status"]["conditions"] = json!([
        {"type": "Ready", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
    ]);
}

/// Marks every pod that appears Running and Ready, with an IP (until the task is dropped).
pub async fn fake_kubelet(client: Arc<dyn ApiClient>) {
    let pods = rt("", "pods");
    loop {
        let Ok(mut stream) = client.watch(pods, None, ListParams::default()).await else {
            continue;
        };
        while let Some(Ok(ev)) = stream.next().await {
            if !matches!(ev.kind, WatchEventKind::Added | WatchEventKind::Modified) {
                continue;
            }
            let mut pod = ev.object;
            if pod.pointer("/metadata/deletionTimestamp").is_some() || keel_controllers::pods::is_ready(&pod)
            {
                continue;
            }
            mark_ready(&mut pod);
            let ns = pod["metadata"]["namespace"].as_str().map(str::to_string);
            let _ = client
                .update(pods, ns, pod, Some("status".into()), WriteOptions::default())
                .await;
        }
    }
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `secs` seconds.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pods of `ns` that are not being deleted, owned by the object with `owner_uid`.
pub fn active_owned<'a>(pods: &'a [Value], owner_uid: &str) -> Vec<&'a Value> {
    pods.iter()
        .filter(|p| keel_controllers::pods::is_active(p))
        .filter(|p| keel_controllers::pods::controller_uid(p) == Some(owner_uid))
        .collect()
}
