//! API level: a real `keel-server` on loopback, driven through `kube` (kube-rs), an independent
//! Kubernetes client, exactly as any program written against Kubernetes would drive it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::Client;

use crate::load::{paced, Limit};
use crate::stats::Latencies;

/// A `keel-server` of the benchmark's own: fresh data directory, free ports, killed when dropped.
pub struct Server {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    /// The node gate's port.
    pub node_port: u16,
    /// How it was started (for a restart).
    binary: PathBuf,
    extra: Vec<String>,
}

/// The server binary: `$KEEL_SERVER_BIN`, else `target/release/keel-server` (what `make
/// bench-api` builds), else the debug build.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KEEL_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("keel-server");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("keel-server is not built: run `cargo build --release -p keel-server` (make bench-api does)")
}

impl Server {
    /// Starts `binary` with `extra` arguments after the ones every run needs.
    pub fn start(binary: &Path, extra: &[String]) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("keel-bench-server-")
            .tempdir()
            .context("temp dir for keel-server")?;
        let ports = keel_lab::ports::free_ports(2).context("free ports")?;
        let log = std::fs::File::create(dir.path().join("server.log")).context("server log")?;
        let child = Command::new(binary)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", ports[0]))
            .arg("--node-listen")
            .arg(format!("127.0.0.1:{}", ports[1]))
            .args(extra)
            .env("KEEL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Server {
            child,
            dir,
            port: ports[0],
            node_port: ports[1],
            binary: binary.to_path_buf(),
            extra: extra.to_vec(),
        })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until the API answers through kube and returns a client factory.
    pub async fn wait_ready(&mut self) -> anyhow::Result<Clients> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().context("server status")? {
                bail!("keel-server exited ({status}) during start:\n{}", self.log_tail());
            }
            if self.kubeconfig().exists() {
                if let Ok(clients) = Clients::from_kubeconfig(&self.kubeconfig()).await {
                    let ns: Api<Namespace> = Api::all(clients.client()?);
                    if ns.get("default").await.is_ok() {
                        return Ok(clients);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("keel-server did not become ready in 60 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes independent kube clients (each with its own connection pool) from one kubeconfig.
pub struct Clients {
    config: kube::Config,
}

impl Clients {
    pub async fn from_kubeconfig(path: &Path) -> anyhow::Result<Clients> {
        let kc = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("reading {}", path.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .context("kubeconfig")?;
        Ok(Clients { config })
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Client::try_from(self.config.clone()).context("building a kube client")
    }

    pub fn many(&self, n: usize) -> anyhow::Result<Vec<Client>> {
        (0..n).map(|_| self.client()).collect()
    }
}

/// Resident and peak resident memory of a process, in bytes, from `/proc/<pid>/status`.
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing in /proc/{pid}/status"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("bad {name} line {line:?}"))?
            .parse()
            .with_context(|| format!("bad {name} line {line:?}"))?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// How hard and how long to push the API.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub clients: usize,
    pub write_rate: f64,
    pub write_time: Duration,
    pub read_rate: f64,
    pub read_time: Duration,
    pub pods: usize,
    pub list_runs: usize,
    pub watchers: usize,
    pub watch_rounds: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            clients: 16,
            write_rate: 500.0,
            write_time: Duration::from_secs(5),
            read_rate: 1_000.0,
            read_time: Duration::from_secs(4),
            pods: 10_000,
            list_runs: 5,
            watchers: 1_000,
            watch_rounds: 5,
        }
    }
}

/// Everything measured at the API level.
pub struct Figures {
    pub rss_idle: u64,
    pub creates: Latencies,
    pub create_rate: f64,
    pub updates: Latencies,
    pub update_rate: f64,
    pub gets: Latencies,
    pub get_rate: f64,
    pub pods_created: usize,
    pub pod_create_time: Duration,
    pub rss_pods: u64,
    /// Typed `Api<Pod>::list` of every pod, end to end (request, transfer, decoding).
    pub list_typed: Latencies,
    /// The same list as raw bytes (the server's share, without client-side decoding).
    pub list_raw: Latencies,
    pub list_bytes: usize,
    /// What `kubectl get pods` asks for: a server-side Table, 500 rows a request, all pages.
    pub list_table: Latencies,
    /// `kubectl get pods -n pods` itself (its own decoding and printing included).
    pub list_kubectl: Latencies,
    /// Resident memory right after the lists (still 10,000 pods stored, no watches yet).
    pub rss_after_lists: u64,
    /// Per delivery: from the write being sent to one watcher receiving its event.
    pub watch_deliveries: Latencies,
    /// Per round: until the last of the watchers received the event.
    pub watch_all: Latencies,
    pub watch_setup: Duration,
    pub rss_peak: u64,
    /// Resident memory at the end, with the watches open.
    pub rss_end: u64,
    /// After a restart over the same data, once the server has settled (every informer, the
    /// scheduler and every watch start over from the full state), and the peak on the way there.
    pub rss_restarted: u64,
    pub rss_restart_peak: u64,
}

fn config_map(name: &str, round: usize) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([("app".to_string(), "bench".to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("round".to_string(), round.to_string()),
            ("payload".to_string(), "x".repeat(512)),
        ])),
        ..Default::default()
    }
}

/// A pod as a user would write it (one container, labels, resources, env), ~1 KB stored.
fn pod(i: usize) -> anyhow::Result<Pod> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("pod-{i:05}"),
            "labels": {"app": "bench", "shard": format!("s{}", i % 16), "tier": "backend"},
            "annotations": {"bench.keel.dev/index": i.to_string()},
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.local/bench/app:1.0",
                "args": ["--listen=:8080", "--verbose"],
                "ports": [{"containerPort": 8080, "name": "http"}],
                "env": [{"name": "INDEX", "value": i.to_string()}, {"name": "MODE", "value": "bench"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5},
            }],
            "terminationGracePeriodSeconds": 5,
        },
    }))
    .context("pod template")
}

async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Runs every API-level measurement against `server`, printing progress to stderr.
pub async fn measure(server: &mut Server, w: Workload) -> anyhow::Result<Figures> {
    let factory = server.wait_ready().await?;
    let (rss_idle, _) = memory(server.pid())?;
    let clients = Arc::new(factory.many(w.clients)?);
    let admin = factory.client()?;
    for ns in ["bench", "pods", "watch"] {
        ensure_namespace(&admin, ns).await?;
    }

    eprintln!(
        "  creates and updates from {} clients at {}/s ...",
        w.clients, w.write_rate
    );
    let create = {
        let clients = clients.clone();
        move |worker: usize, i: u64| {
            let api: Api<ConfigMap> = Api::namespaced(clients[worker].clone(), "bench");
            async move {
                api.create(
                    &PostParams::default(),
                    &config_map(&format!("cm-{worker:02}-{i:05}"), 0),
                )
                .await?;
                Ok(())
            }
        }
    };
    let creates = paced(w.clients, w.write_rate, Limit::For(w.write_time), create).await?;

    // Updates: each client replaces its own object with the resourceVersion it last saw, like a
    // controller writing status.
    let versions: Arc<Vec<Mutex<ConfigMap>>> = Arc::new(
        (0..w.clients)
            .map(|c| Mutex::new(config_map(&format!("upd-{c:02}"), 0)))
            .collect(),
    );
    for (c, slot) in versions.iter().enumerate() {
        let api: Api<ConfigMap> = Api::namespaced(clients[c].clone(), "bench");
        let template = lock(slot).clone();
        *lock(slot) = api.create(&PostParams::default(), &template).await?;
    }
    let update = {
        let clients = clients.clone();
        let versions = versions.clone();
        move |worker: usize, i: u64| {
            let api: Api<ConfigMap> = Api::namespaced(clients[worker].clone(), "bench");
            let versions = versions.clone();
            async move {
                let mut cm = lock(&versions[worker]).clone();
                if let Some(data) = cm.data.as_mut() {
                    data.insert("round".into(), i.to_string());
                }
                let name = format!("upd-{worker:02}");
                let updated = api.replace(&name, &PostParams::default(), &cm).await?;
                *lock(&versions[worker]) = updated;
                Ok(())
            }
        }
    };
    let updates = paced(w.clients, w.write_rate, Limit::For(w.write_time), update).await?;

    eprintln!("  gets from {} clients at {}/s ...", w.clients, w.read_rate);
    let get = {
        let clients = clients.clone();
        move |worker: usize, i: u64| {
            let api: Api<ConfigMap> = Api::namespaced(clients[worker].clone(), "bench");
            let name = format!("upd-{:02}", (worker + i as usize) % clients.len());
            async move {
                api.get(&name).await?;
                Ok(())
            }
        }
    };
    let gets = paced(w.clients, w.read_rate, Limit::For(w.read_time), get).await?;

    eprintln!("  creating {} pods in parallel ...", w.pods);
    let (pods_created, pod_create_time) = create_pods(&clients, "pods", w.pods).await?;
    let (rss_pods, _) = memory(server.pid())?;

    eprintln!("  listing {} pods {} times ...", w.pods, w.list_runs);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "pods");
    let mut list_typed = Latencies::new();
    let mut list_raw = Latencies::new();
    let mut list_bytes = 0;
    for _ in 0..w.list_runs {
        let t = Instant::now();
        let list = pods.list(&ListParams::default()).await?;
        list_typed.push(t.elapsed());
        if list.items.len() != w.pods {
            bail!("listed {} pods, expected {}", list.items.len(), w.pods);
        }
        let t = Instant::now();
        let req = http::Request::get("/api/v1/namespaces/pods/pods")
            .body(Vec::new())
            .context("list request")?;
        let body = admin.request_text(req).await?;
        list_raw.push(t.elapsed());
        list_bytes = body.len();
    }

    eprintln!("  listing them as Tables (kubectl's request) and with kubectl ...");
    let mut list_table = Latencies::new();
    for _ in 0..w.list_runs {
        let t = Instant::now();
        let rows = table_pages(&admin, "/api/v1/namespaces/pods/pods", 500).await?;
        list_table.push(t.elapsed());
        if rows != w.pods {
            bail!("the Table had {rows} rows, expected {}", w.pods);
        }
    }
    let kubectl = keel_lab::kubectl::Kubectl::new(Path::new("kubectl"), &server.kubeconfig())
        .context("kubectl with a fresh HOME")?;
    let mut list_kubectl = Latencies::new();
    for _ in 0..w.list_runs.min(3) {
        let t = Instant::now();
        let out = Command::new(kubectl.binary())
            .args(["get", "pods", "-n", "pods", "--no-headers"])
            .env("HOME", kubectl.home())
            .env("KUBECONFIG", kubectl.kubeconfig())
            .output()
            .context("running kubectl")?;
        list_kubectl.push(t.elapsed());
        let lines = out
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        if !out.status.success() || lines != w.pods {
            bail!(
                "kubectl get pods printed {lines} lines (expected {}): {}",
                w.pods,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let (rss_after_lists, _) = memory(server.pid())?;

    eprintln!("  opening {} watches ...", w.watchers);
    let (watch_deliveries, watch_all, watch_setup) = watch_fan_out(&clients, &admin, w).await?;
    let (rss_end, rss_peak) = memory(server.pid())?;

    eprintln!("  restarting the server over the same data ...");
    let (rss_restarted, rss_restart_peak) = server.restart_and_settle().await?;

    Ok(Figures {
        rss_idle,
        creates: creates.latencies,
        create_rate: creates.rate,
        updates: updates.latencies,
        update_rate: updates.rate,
        gets: gets.latencies,
        get_rate: gets.rate,
        pods_created,
        pod_create_time,
        rss_pods,
        list_typed,
        list_raw,
        list_bytes,
        list_table,
        list_kubectl,
        rss_after_lists,
        watch_deliveries,
        watch_all,
        watch_setup,
        rss_peak,
        rss_end,
        rss_restarted,
        rss_restart_peak,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens `w.watchers` watches on one ConfigMap, then changes it `w.watch_rounds` times and
/// records when each watcher sees each change.
async fn watch_fan_out(
    clients: &Arc<Vec<Client>>,
    admin: &Client,
    w: Workload,
) -> anyhow::Result<(Latencies, Latencies, Duration)> {
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), "watch");
    let target = api
        .create(&PostParams::default(), &config_map("target", 0))
        .await?;
    let from = target
        .metadata
        .resource_version
        .clone()
        .context("created object without resourceVersion")?;

    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let t = Instant::now();
    // Open the watches a few dozen at a time (each is its own connection and TLS handshake).
    let streams = futures::stream::iter(0..w.watchers)
        .map(|i| {
            let api: Api<ConfigMap> = Api::namespaced(clients[i % clients.len()].clone(), "watch");
            let from = from.clone();
            async move {
                let wp = WatchParams::default().fields("metadata.name=target").timeout(280);
                api.watch(&wp, &from)
                    .await
                    .with_context(|| format!("opening watch {i}"))
                    .map(|s| s.boxed())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let watch_setup = t.elapsed();
    let mut tasks = Vec::with_capacity(streams.len());
    for mut stream in streams {
        let seen_tx = seen_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let now = Instant::now();
                match ev {
                    Ok(WatchEvent::Modified(cm)) => {
                        let round = cm
                            .data
                            .as_ref()
                            .and_then(|d| d.get("round"))
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0);
                        if seen_tx.send((round, now)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    drop(seen_tx);

    let mut deliveries = Latencies::new();
    let mut all = Latencies::new();
    for round in 1..=w.watch_rounds {
        let patch = serde_json::json!({"data": {"round": round.to_string()}});
        let sent = Instant::now();
        api.patch("target", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .context("changing the watched object")?;
        let deadline = sent + Duration::from_secs(30);
        let mut got = 0;
        let mut last = sent;
        while got < w.watchers {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, seen_rx.recv()).await {
                Ok(Some((r, at))) if r == round => {
                    got += 1;
                    deliveries.push(at.saturating_duration_since(sent));
                    last = last.max(at);
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("all watches ended; {got} of {} saw round {round}", w.watchers),
                Err(_) => bail!(
                    "only {got} of {} watchers saw round {round} within 30 s",
                    w.watchers
                ),
            }
        }
        all.push(last.saturating_duration_since(sent));
    }
    for t in tasks {
        t.abort();
    }
    Ok((deliveries, all, watch_setup))
}

// ---------------------------------------------------------------------------- memory with pods

/// Creates `n` pods (~1 KB each stored) in namespace `ns`, two requests in flight per client.
/// Returns how many were created and how long it took.
pub async fn create_pods(clients: &[Client], ns: &str, n: usize) -> anyhow::Result<(usize, Duration)> {
    let t = Instant::now();
    let created = futures::stream::iter(0..n)
        .map(|i| {
            let api: Api<Pod> = Api::namespaced(clients[i % clients.len()].clone(), ns);
            async move {
                let p = pod(i)?;
                api.create(&PostParams::default(), &p)
                    .await
                    .with_context(|| format!("creating pod {i}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(clients.len() * 2)
        .try_fold(0usize, |n, ()| async move { Ok(n + 1) })
        .await?;
    Ok((created, t.elapsed()))
}

/// Resident memory of a server of its own holding `pods` pods: idle, then with the pods stored
/// (e.g. with `--no-controllers`, to tell the API's share from the controllers').
pub async fn memory_with_pods(
    binary: &Path,
    extra: &[String],
    pods: usize,
    clients: usize,
) -> anyhow::Result<(u64, u64)> {
    let mut server = Server::start(binary, extra)?;
    let factory = server.wait_ready().await?;
    let (idle, _) = memory(server.pid())?;
    let clients = factory.many(clients)?;
    ensure_namespace(&clients[0], "pods").await?;
    let (created, _) = create_pods(&clients, "pods", pods).await?;
    if created != pods {
        bail!("created {created} pods, expected {pods}");
    }
    let (with_pods, _) = memory(server.pid())?;
    Ok((idle, with_pods))
}

impl Server {
    /// Kills the server (as a crash would) and starts it again over the same data directory and
    /// API port; returns once the API answers and the resident memory has stopped growing
    /// (nothing new for 3 s, at most 60 s), with the memory then and the peak since the start.
    pub async fn restart_and_settle(&mut self) -> anyhow::Result<(u64, u64)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.path().join("server.log"))
            .context("server log")?;
        self.child = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--node-listen")
            .arg(format!("127.0.0.1:{}", self.node_port))
            .args(&self.extra)
            .env("KEEL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("restarting {}", self.binary.display()))?;
        self.wait_ready().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut high = memory(self.pid())?.0;
        let mut grew = Instant::now();
        while Instant::now() < deadline && grew.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (rss, _) = memory(self.pid())?;
            if rss > high + high / 100 {
                grew = Instant::now();
            }
            high = high.max(rss);
        }
        memory(self.pid())
    }
}

/// Lists `path` as a server-side Table in pages of `limit`, as `kubectl get` does; returns the rows.
async fn table_pages(client: &Client, path: &str, limit: usize) -> anyhow::Result<usize> {
    let mut rows = 0;
    let mut token: Option<String> = None;
    loop {
        let mut uri = format!("{path}?limit={limit}");
        if let Some(t) = &token {
            uri.push_str("&continue=");
            for b in t.bytes() {
                match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => uri.push(b as char),
                    _ => uri.push_str(&format!("%{b:02X}")),
                }
            }
        }
        let req = http::Request::get(uri)
            .header(
                "Accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
            )
            .body(Vec::new())
            .context("Table request")?;
        let body = client.request_text(req).await?;
        let page: serde_json::Value = serde_json::from_str(&body).context("Table JSON")?;
        if page["kind"] != "Table" {
            bail!("asked for a Table, got {}", page["kind"]);
        }
        rows += page["rows"].as_array().map_or(0, Vec::len);
        token = page["metadata"]["continue"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            return Ok(rows);
        }
    }
}
