//! The control plane at scale: a release `keel-server` (API, node gate, scheduler, controllers)
//! with 1,000 hollow nodes (`keel-node hollow`, one process, the real node protocol) on this
//! machine, driven through kube-rs.
//!
//! In one run: the hollow nodes join and go Ready; bare pods are created as fast as the API
//! takes them and the scheduler's bind rate is measured from a watch (each pod's first event with
//! `spec.nodeName`); then a Deployment of 10,000 replicas, timed from its creation to every pod
//! bound and to every pod Running (the hollow nodes report it); then that Deployment is scaled
//! so that 30,000 pods run on the nodes, and the resident memory of `keel-server` and of the
//! hollow process are read from `/proc`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::Client;
use serde_json::json;

use crate::api::{memory, Clients, Server};

/// The namespace every pod of the benchmark lives in.
const NAMESPACE: &str = "bench";
const IMAGE: &str = "registry.k8s.io/pause:3.10";

/// How big a run is.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub nodes: usize,
    /// Bare pods created at full speed for the scheduling throughput.
    pub bare_pods: usize,
    /// The Deployment timed from creation to all bound and all Running.
    pub deployment: usize,
    /// Pods running at the end (the Deployment is scaled up to make up the difference).
    pub total: usize,
    /// The longest any one phase may take before it is reported as missed.
    pub phase_timeout: Duration,
}

impl Scale {
    pub fn full() -> Scale {
        Scale {
            nodes: 1000,
            bare_pods: 5000,
            deployment: 10_000,
            total: 30_000,
            phase_timeout: Duration::from_secs(180),
        }
    }

    pub fn quick() -> Scale {
        Scale {
            nodes: 100,
            bare_pods: 1000,
            deployment: 1000,
            total: 3000,
            phase_timeout: Duration::from_secs(90),
        }
    }
}

/// What was measured; `None` where a phase did not finish in time.
#[derive(Debug, Default)]
pub struct Figures {
    pub nodes_ready: Option<Duration>,
    pub bare_created_per_s: f64,
    /// Pods bound per second between the 10th and the 90th percentile of the bind times.
    pub bind_per_s_sustained: f64,
    /// From the first create to the last bind.
    pub bind_per_s_overall: f64,
    pub deployment_bound: Option<Duration>,
    pub deployment_running: Option<Duration>,
    pub total_running: Option<Duration>,
    pub running_at_end: usize,
    pub server_rss: u64,
    pub server_peak: u64,
    pub hollow_rss: u64,
    pub hollow_peak: u64,
    /// How often the benchmark's own pod watch was cut off and taken up again after a list.
    pub relists: usize,
}

/// `keel-node` for the hollow nodes: `$KEEL_NODE_BIN`, else the release build, else debug.
pub fn node_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KEEL_NODE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("keel-node");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("keel-node is not built: run `cargo build --release -p keel-node` (make bench-control does)")
}

/// A `keel-node hollow` process, killed when dropped.
pub struct Hollow {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Hollow {
    pub fn start(
        binary: &Path,
        server_binary: &Path,
        server: &Server,
        count: usize,
    ) -> anyhow::Result<Hollow> {
        let server_cmd = |args: &[&str]| -> anyhow::Result<String> {
            let out = Command::new(server_binary)
                .arg("--data-dir")
                .arg(server.data_dir())
                .args(args)
                .output()
                .with_context(|| format!("running keel-server {args:?}"))?;
            if !out.status.success() {
                bail!("keel-server {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let token = server_cmd(&[
            "token",
            "create",
            "--server",
            &format!("127.0.0.1:{}", server.port),
        ])?;
        let ca_hash = server_cmd(&["ca-hash"])?;
        let mut child = Command::new(binary)
            .args([
                "hollow",
                "--server",
                &format!("https://127.0.0.1:{}", server.node_port),
            ])
            .args([
                "--token",
                &token,
                "--ca-hash",
                &ca_hash,
                "--count",
                &count.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} hollow", binary.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().context("hollow stderr")?;
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lock(&sink).push(line);
            }
        });
        Ok(Hollow { child, lines })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn tail(&self) -> String {
        let l = lock(&self.lines);
        l[l.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Hollow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// When pods were first seen bound and Running, per group (the name up to its first `-`).
#[derive(Default)]
struct Tracker {
    bound: HashSet<String>,
    running: HashSet<String>,
    bind_times: HashMap<String, Vec<Instant>>,
    running_counts: HashMap<String, usize>,
}

impl Tracker {
    fn see(&mut self, pod: &Pod, now: Instant) {
        let Some(name) = pod.metadata.name.as_deref() else {
            return;
        };
        let group = name.split('-').next().unwrap_or_default().to_string();
        let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        if bound && self.bound.insert(name.to_string()) {
            self.bind_times.entry(group.clone()).or_default().push(now);
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if running && self.running.insert(name.to_string()) {
            *self.running_counts.entry(group).or_default() += 1;
        }
    }

    fn bound(&self, group: &str) -> usize {
        self.bind_times.get(group).map_or(0, Vec::len)
    }

    fn running(&self, group: &str) -> usize {
        self.running_counts.get(group).copied().unwrap_or(0)
    }
}

/// Lists every pod of the namespace into the tracker (seen now); returns the list's version.
async fn relist(api: &Api<Pod>, tracker: &Mutex<Tracker>) -> Option<String> {
    let mut params = ListParams::default().limit(2000);
    loop {
        let page = api.list(&params).await.ok()?;
        let now = Instant::now();
        {
            let mut t = lock(tracker);
            for p in &page.items {
                t.see(p, now);
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => return page.metadata.resource_version,
        }
    }
}

/// Follows every pod of the namespace for as long as the run lasts. A watch that ends or is
/// cut off (a watcher that falls behind is) is taken up again after a list, so no pod is
/// missed; pods first seen in such a list count as seen then (`Figures::relists` says how often
/// that happened).
async fn track(api: Api<Pod>, tracker: Arc<Mutex<Tracker>>, relists: Arc<AtomicUsize>) {
    let mut rv = match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(l) => l.metadata.resource_version.unwrap_or_default(),
        Err(_) => "0".into(),
    };
    loop {
        let wp = WatchParams::default().timeout(290);
        let mut stream = match api.watch(&wp, &rv).await {
            Ok(s) => s.boxed(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut cut_off = true;
        loop {
            match stream.try_next().await {
                Ok(Some(WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p))) => {
                    if let Some(v) = p.metadata.resource_version.clone() {
                        rv = v;
                    }
                    lock(&tracker).see(&p, Instant::now());
                }
                Ok(Some(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                Ok(None) => {
                    cut_off = false;
                    break;
                }
                Ok(Some(WatchEvent::Error(_))) | Err(_) => break,
            }
        }
        if cut_off {
            relists.fetch_add(1, Ordering::Relaxed);
            if let Some(v) = relist(&api, &tracker).await {
                rv = v;
            }
        }
    }
}

/// Waits until `f` holds, checking every 50 ms; the time it took, or `None` after `timeout`.
async fn until(start: Instant, timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_spec() -> serde_json::Value {
    json!({
        "containers": [{
            "name": "pause",
            "image": IMAGE,
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}
        }],
        "terminationGracePeriodSeconds": 0
    })
}

fn bare_pod(i: usize) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("bare-{i}"), "labels": {"bench": "bare"}},
        "spec": pod_spec(),
    }))?)
}

fn deployment(replicas: usize) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "big"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"bench": "big"}},
            "template": {"metadata": {"labels": {"bench": "big"}}, "spec": pod_spec()},
        },
    }))?)
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Runs the whole scenario; `progress` gets a line per step.
pub async fn measure(
    server: &mut Server,
    server_binary: &Path,
    node_binary: &Path,
    scale: Scale,
    progress: impl Fn(&str),
) -> anyhow::Result<Figures> {
    let clients: Clients = server.wait_ready().await?;
    let admin: Client = clients.client()?;
    let mut f = Figures::default();

    let ns: Api<Namespace> = Api::all(admin.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
    )
    .await
    .context("creating the namespace")?;

    // 1. The hollow nodes.
    progress(&format!("starting {} hollow nodes", scale.nodes));
    let t = Instant::now();
    let hollow = Hollow::start(node_binary, server_binary, server, scale.nodes)?;
    let nodes: Api<Node> = Api::all(admin.clone());
    loop {
        let ready = match nodes.list(&ListParams::default()).await {
            Ok(l) => l.items.iter().filter(|n| node_ready(n)).count(),
            Err(_) => 0,
        };
        if ready >= scale.nodes {
            f.nodes_ready = Some(t.elapsed());
            break;
        }
        if t.elapsed() > scale.phase_timeout {
            bail!(
                "only {ready} of {} hollow nodes Ready after {:?}; hollow:\n{}\nserver:\n{}",
                scale.nodes,
                scale.phase_timeout,
                hollow.tail(),
                server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    progress(&format!(
        "{} nodes Ready in {:.1} s",
        scale.nodes,
        t.elapsed().as_secs_f64()
    ));

    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let relists = Arc::new(AtomicUsize::new(0));
    let watcher = tokio::spawn(track(
        Api::namespaced(clients.client()?, NAMESPACE),
        tracker.clone(),
        relists.clone(),
    ));
    // Let the watch open before the first pod.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. Scheduling throughput: bare pods created as fast as the API takes them.
    progress(&format!("creating {} bare pods", scale.bare_pods));
    let writers = clients.many(8)?;
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let api: Api<Pod> = Api::namespaced(writers[w % writers.len()].clone(), NAMESPACE);
        let next = next.clone();
        let n = scale.bare_pods;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                api.create(&PostParams::default(), &bare_pod(i)?)
                    .await
                    .with_context(|| format!("creating bare-{i}"))?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let created = t.elapsed();
    f.bare_created_per_s = scale.bare_pods as f64 / created.as_secs_f64();
    let all_bound = until(t, scale.phase_timeout, || {
        lock(&tracker).bound("bare") >= scale.bare_pods
    })
    .await;
    {
        let tr = lock(&tracker);
        let mut times = tr.bind_times.get("bare").cloned().unwrap_or_default();
        times.sort();
        if times.len() >= 10 {
            let lo = times.len() / 10;
            let hi = times.len() * 9 / 10;
            let span = times[hi].saturating_duration_since(times[lo]).as_secs_f64();
            if span > 0.0 {
                f.bind_per_s_sustained = (hi - lo) as f64 / span;
            }
            if let Some(last) = times.last() {
                f.bind_per_s_overall = times.len() as f64 / last.saturating_duration_since(t).as_secs_f64();
            }
        }
    }
    let bound = lock(&tracker).bound("bare");
    progress(&format!(
        "bare pods: created in {:.1} s, {bound} bound in {}",
        created.as_secs_f64(),
        all_bound.map_or("(timeout)".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    ));

    // 3. A 10,000-replica Deployment: created → all bound → all Running.
    progress(&format!("creating a Deployment of {} replicas", scale.deployment));
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NAMESPACE);
    let t = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment(scale.deployment)?)
        .await
        .context("creating the Deployment")?;
    f.deployment_bound = until(t, scale.phase_timeout, || {
        lock(&tracker).bound("big") >= scale.deployment
    })
    .await;
    f.deployment_running = until(t, scale.phase_timeout, || {
        lock(&tracker).running("big") >= scale.deployment
    })
    .await;
    let (bound, running) = {
        let tr = lock(&tracker);
        (tr.bound("big"), tr.running("big"))
    };
    progress(&format!(
        "deployment: {bound} bound ({}), {running} Running after {:.1} s",
        f.deployment_bound
            .map_or("not all".into(), |d| format!("all in {:.1} s", d.as_secs_f64())),
        t.elapsed().as_secs_f64()
    ));

    // 4. Up to the total: the Deployment scaled, every pod Running, then memory.
    let replicas = scale.total.saturating_sub(scale.bare_pods);
    progress(&format!(
        "scaling the Deployment to {replicas} ({} pods in all)",
        scale.total
    ));
    let t = Instant::now();
    let scaled = deployments
        .patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await;
    match scaled {
        Ok(_) => {
            f.total_running = until(t, scale.phase_timeout, || {
                let tr = lock(&tracker);
                tr.running("big") + tr.running("bare") >= scale.total
            })
            .await
        }
        // An overloaded server is a result too: say so and still read the memory.
        Err(e) => progress(&format!("scaling the Deployment failed: {e}")),
    }
    {
        let tr = lock(&tracker);
        f.running_at_end = tr.running("big") + tr.running("bare");
    }
    // Let the writes of the last status reports settle before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    (f.server_rss, f.server_peak) = memory(server.pid())?;
    (f.hollow_rss, f.hollow_peak) = memory(hollow.pid())?;
    progress(&format!(
        "{} pods Running; keel-server RSS {} MiB, hollow RSS {} MiB",
        f.running_at_end,
        f.server_rss >> 20,
        f.hollow_rss >> 20
    ));
    f.relists = relists.load(Ordering::Relaxed);
    watcher.abort();
    drop(hollow);
    Ok(f)
}
