//! One pod on this node, from the first time it is desired to the moment it is gone.
//!
//! The worker writes the pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, starts the
//! sandbox, starts one [`ContainerTask`] per container and turns their states into the pod
//! status whenever one changes. When the pod leaves the desired set, or is being deleted
//! (`deletionTimestamp`), it stops the containers with the grace period, stops the sandbox,
//! removes the pod's cgroups and files, and — for a deletion — reports the pod `gone` so the
//! control plane can remove the object.
//!
//! Network: a pod gets its own network namespace (held by the sandbox, loopback up) attached to
//! the node's pod network (`crate::net::network_agent::attach`: a veth from `cni0`, an address
//! from the node's pod CIDR) before its containers start; `hostNetwork` pods share the node's
//! network and report the node's address as `podIP`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keel_proto::{NodeEvent, PodStatusReport};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::lifecycle::{sleep_or_stop, ContainerTask, StopSignal};
use super::manager::{Desired, Shared};
use super::status::{self, ContainerView, PodView, State, Transitions};
use crate::net::network_agent;
use crate::runtime::reference::Reference;
use crate::runtime::sandbox::Sandbox;

/// What the pod's tasks share.
pub struct PodCtx {
    pub shared: Arc<Shared>,
    pub uid: String,
    desired: Mutex<Arc<Desired>>,
    views: Mutex<Vec<ContainerView>>,
    init_views: Mutex<Vec<ContainerView>>,
    changed: Notify,
    sandbox: Mutex<Option<(i32, bool)>>,
    pod_ip: Mutex<String>,
    dir: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl PodCtx {
    pub fn desired(&self) -> Arc<Desired> {
        lock(&self.desired).clone()
    }

    fn views_of(&self, init: bool) -> &Mutex<Vec<ContainerView>> {
        if init {
            &self.init_views
        } else {
            &self.views
        }
    }

    pub fn view(&self, init: bool, i: usize) -> Option<ContainerView> {
        lock(self.views_of(init)).get(i).cloned()
    }

    pub fn update_view(&self, init: bool, i: usize, f: impl FnOnce(&mut ContainerView)) {
        if let Some(v) = lock(self.views_of(init)).get_mut(i) {
            f(v);
        }
        self.changed.notify_one();
    }

    pub fn event(&self, kind: &str, reason: &str, message: String) {
        let d = self.desired();
        self.shared.outbox.event(NodeEvent {
            namespace: d.pod.metadata.namespace.clone(),
            name: d.pod.metadata.name.clone(),
            uid: d.pod.metadata.uid.clone(),
            kind: "Pod".into(),
            r#type: kind.into(),
            reason: reason.into(),
            message,
        });
    }

    /// The node's address for `hostNetwork` pods (and when the node runs pods without the pod
    /// network); else the pod network's address, empty until attached.
    pub fn pod_ip(&self) -> String {
        if self.wants_netns() {
            lock(&self.pod_ip).clone()
        } else {
            self.shared.settings.host_ip.clone()
        }
    }

    /// Whether the pod gets its own network namespace on the pod network.
    pub fn wants_netns(&self) -> bool {
        self.shared.settings.pod_network && !self.desired().pod.spec.host_network
    }

    pub fn sandbox_pid(&self) -> Option<i32> {
        lock(&self.sandbox).map(|(pid, _)| pid)
    }

    pub fn sandbox_netns(&self) -> bool {
        lock(&self.sandbox).is_some_and(|(_, n)| n)
    }

    /// Regular containers wait with `reason` (e.g. PodInitializing while init containers run).
    fn set_waiting_all(&self, reason: &str) {
        for v in lock(&self.views).iter_mut() {
            v.state = State::waiting(reason, None);
        }
        self.changed.notify_one();
    }

    pub fn pod_dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn container_dir(&self, name: &str, run: u32) -> PathBuf {
        self.dir.join("containers").join(format!("{name}-{run}"))
    }

    pub fn log_path(&self, name: &str, run: u32) -> PathBuf {
        let m = &self.desired().pod.metadata;
        self.shared
            .settings
            .log_dir
            .join(format!("{}_{}_{}", m.namespace, m.name, m.uid))
            .join(name)
            .join(format!("{run}.log"))
    }

    pub fn etc_files(&self) -> Vec<(String, PathBuf)> {
        ["hosts", "hostname", "resolv.conf"]
            .iter()
            .map(|n| (n.to_string(), self.dir.join("etc").join(n)))
            .collect()
    }

    fn write_etc(&self) -> std::io::Result<()> {
        let d = self.desired();
        let etc = self.dir.join("etc");
        std::fs::create_dir_all(&etc)?;
        let host = d.pod.hostname();
        let ip = self.pod_ip();
        let mut hosts = String::from(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        if !ip.is_empty() {
            hosts.push_str(&format!("{ip}\t{host}\n"));
        }
        std::fs::write(etc.join("hosts"), hosts)?;
        std::fs::write(etc.join("hostname"), format!("{host}\n"))?;
        let resolv = std::fs::read_to_string(&self.shared.settings.resolv_conf).unwrap_or_default();
        std::fs::write(etc.join("resolv.conf"), resolv)
    }
}

/// The worker of one pod. `rx` carries the latest desired state, `None` once it left the set.
pub async fn run(shared: Arc<Shared>, first: Arc<Desired>, mut rx: watch::Receiver<Option<Arc<Desired>>>) {
    let uid = first.pod.metadata.uid.clone();
    let view_of = |c: &super::spec::Container| {
        let image = Reference::parse(&c.image)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| c.image.clone());
        ContainerView::new(&c.name, &image)
    };
    let views = first.pod.spec.containers.iter().map(view_of).collect();
    let init_views: Vec<ContainerView> = first.pod.spec.init_containers.iter().map(view_of).collect();
    let ctx = Arc::new(PodCtx {
        dir: shared.settings.pods_dir.join(&uid),
        shared: shared.clone(),
        uid: uid.clone(),
        desired: Mutex::new(first),
        views: Mutex::new(views),
        init_views: Mutex::new(init_views),
        changed: Notify::new(),
        sandbox: Mutex::new(None),
        pod_ip: Mutex::new(String::new()),
    });
    let mut reporter = Reporter {
        transitions: Transitions::default(),
        start_time: SystemTime::now(),
    };
    let (stop_tx, stop_rx) = watch::channel::<Option<Duration>>(None);
    let mut setup = tokio::spawn(setup(ctx.clone(), stop_rx));
    let mut set_up: Option<(Option<Sandbox>, Vec<JoinHandle<()>>)> = None;
    let mut released = false;
    reporter.send(&ctx, false);

    // Running: follow the desired state and report changes. A pod that has finished for good
    // (Succeeded/Failed) gives its sandbox and pod IP back at once, as the kubelet does.
    let deleting = loop {
        let deleting = ctx.desired().pod.metadata.deletion_timestamp.is_some();
        if deleting {
            break true;
        }
        tokio::select! {
            r = rx.changed() => {
                let next = if r.is_ok() { rx.borrow_and_update().clone() } else { None };
                match next {
                    Some(d) => *lock(&ctx.desired) = d,
                    None => break false,
                }
            }
            _ = ctx.changed.notified() => {
                let phase = reporter.send(&ctx, false);
                let terminal = phase == "Succeeded" || phase == "Failed";
                if let (true, false, Some((sandbox, _))) = (terminal, released, set_up.as_mut()) {
                    released = true;
                    release(&ctx, sandbox.take()).await;
                    reporter.send(&ctx, false);
                }
            }
            r = &mut setup, if set_up.is_none() => {
                set_up = Some(r.unwrap_or_default());
                ctx.changed.notify_one();
            }
        }
    };

    // Stopping: containers first (graceful), then the sandbox and the pod's leftovers.
    let grace = Duration::from_secs(ctx.desired().pod.grace_seconds());
    let _ = stop_tx.send(Some(grace));
    let (sandbox, tasks) = match set_up {
        Some(x) => x,
        None => setup.await.unwrap_or_default(),
    };
    for t in tasks {
        let _ = t.await;
    }
    if !released {
        release(&ctx, sandbox).await;
    }
    shared.cgroups.remove(&uid, None);
    let _ = std::fs::remove_dir_all(&ctx.dir);
    reporter.send(&ctx, deleting);

    // Keep answering until the control plane drops the pod from the set.
    if deleting {
        while rx.changed().await.is_ok() {
            if rx.borrow_and_update().is_none() {
                break;
            }
        }
    }
    shared.outbox.forget(&uid);
}

/// Stops the sandbox and gives the pod's address back to the pod network.
async fn release(ctx: &PodCtx, sandbox: Option<Sandbox>) {
    if let Some(s) = sandbox {
        s.stop().await;
    }
    *lock(&ctx.sandbox) = None;
    if ctx.wants_netns() {
        if let Err(e) = network_agent::detach(ctx.uid.clone()).await {
            eprintln!(
                "keel: pod {}: detaching from the pod network: {e}",
                ctx.desired().pod.key()
            );
        }
    }
}

/// Brings the pod up: sandbox, its place on the pod network (retried with back-off until the
/// network can take it, as the kubelet waits for CNI), /etc files, then the containers.
/// Gives up when the pod is being stopped. Returns what the teardown must stop.
async fn setup(ctx: Arc<PodCtx>, mut stop: StopSignal) -> (Option<Sandbox>, Vec<JoinHandle<()>>) {
    if ctx.desired().pod.metadata.deletion_timestamp.is_some() {
        return (None, Vec::new());
    }
    let key = ctx.desired().pod.key();
    let netns = ctx.wants_netns();
    let sandbox = match Sandbox::start(&ctx.desired().pod.hostname(), netns).await {
        Ok(s) => Some(s),
        Err(e) => {
            // Containers then run in the node's namespaces; say so, keep going.
            ctx.event("Warning", "FailedCreatePodSandBox", e.to_string());
            eprintln!("keel: pod {key}: {e}");
            None
        }
    };
    if let (Some(s), true) = (&sandbox, netns) {
        let mut backoff = Duration::from_secs(1);
        let mut said = String::new();
        loop {
            let ns = PathBuf::from(format!("/proc/{}/ns/net", s.pid));
            match network_agent::attach(ns, ctx.uid.clone()).await {
                Ok(ip) => {
                    *lock(&ctx.pod_ip) = ip.ip.to_string();
                    break;
                }
                Err(e) => {
                    let msg = format!("attaching the pod to the pod network: {e}");
                    if msg != said {
                        ctx.event("Warning", "FailedCreatePodSandBox", msg.clone());
                        eprintln!("keel: pod {key}: {msg}; retrying");
                        said = msg;
                    }
                    if sleep_or_stop(backoff, &mut stop).await {
                        return (sandbox, Vec::new());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    if let Err(e) = ctx.write_etc() {
        ctx.event(
            "Warning",
            "FailedCreatePodSandBox",
            format!("writing the pod's /etc files: {e}"),
        );
    }
    if let Some(s) = &sandbox {
        *lock(&ctx.sandbox) = Some((s.pid, s.netns));
        ctx.changed.notify_one();
    }
    // Init containers, one after the other, each to success (or the pod fails).
    if !ctx.desired().pod.spec.init_containers.is_empty() {
        ctx.set_waiting_all("PodInitializing");
    }
    for index in 0..ctx.desired().pod.spec.init_containers.len() {
        let task = ContainerTask {
            ctx: ctx.clone(),
            index,
            init: true,
            stop: stop.clone(),
        };
        let _ = tokio::spawn(task.run()).await;
        let succeeded = matches!(
            ctx.view(true, index).map(|v| v.state),
            Some(State::Terminated { exit_code: 0, .. })
        );
        if !succeeded {
            return (sandbox, Vec::new());
        }
    }
    let tasks = (0..ctx.desired().pod.spec.containers.len())
        .map(|index| {
            tokio::spawn(
                ContainerTask {
                    ctx: ctx.clone(),
                    index,
                    init: false,
                    stop: stop.clone(),
                }
                .run(),
            )
        })
        .collect();
    (sandbox, tasks)
}

struct Reporter {
    transitions: Transitions,
    start_time: SystemTime,
}

impl Reporter {
    /// Reports the pod's status; returns its phase.
    fn send(&mut self, ctx: &PodCtx, gone: bool) -> String {
        let d = ctx.desired();
        let views: Vec<ContainerView> = lock(&ctx.views).clone();
        let init_views: Vec<ContainerView> = lock(&ctx.init_views).clone();
        let ip = ctx.pod_ip();
        let v = PodView {
            policy: d.pod.restart_policy(),
            containers: &views,
            init_containers: &init_views,
            host_ip: &ctx.shared.settings.host_ip,
            pod_ip: &ip,
            start_time: Some(self.start_time),
            sandbox_ready: ctx.sandbox_pid().is_some(),
            failure: None,
        };
        let status = status::pod_status(&v, &mut self.transitions, SystemTime::now());
        ctx.shared.outbox.status(PodStatusReport {
            namespace: d.pod.metadata.namespace.clone(),
            name: d.pod.metadata.name.clone(),
            uid: ctx.uid.clone(),
            status_json: serde_json::to_vec(&status).unwrap_or_default(),
            gone,
        });
        status["phase"].as_str().unwrap_or_default().to_string()
    }
}
