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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keel_proto::{NodeEvent, PodStatusReport};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::lifecycle::{sleep_or_stop, ContainerTask, Resume, StopSignal};
use super::manager::{Desired, Shared};
use super::record::{self, PodRecord, RunRecord, SandboxRecord};
use super::status::{self, ContainerView, PodView, State, Transitions};
use crate::net::network_agent;
use crate::runtime::process::ProcRef;
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
    /// The sandbox process as recorded for the next agent.
    sandbox_ref: Mutex<Option<SandboxRecord>>,
    pod_ip: Mutex<String>,
    dir: PathBuf,
    /// The running containers, by name, as recorded for the next agent.
    runs: Mutex<BTreeMap<String, RunRecord>>,
    start_time: SystemTime,
    /// Set once the pod is torn down: nothing is recorded any more.
    closed: AtomicBool,
    boot_id: String,
    /// When this worker got the pod, and how long its sandbox and network took (for the
    /// console line that says how fast a pod came up).
    pub arrived: std::time::Instant,
    pub setup_timing: Mutex<String>,
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
        self.persist();
        self.changed.notify_one();
    }

    /// Records (or, with `None`, forgets) the running run of container `name`.
    pub fn set_run(&self, name: &str, run: Option<RunRecord>) {
        {
            let mut runs = lock(&self.runs);
            match run {
                Some(r) => runs.insert(name.to_string(), r),
                None => runs.remove(name),
            };
        }
        self.persist();
    }

    /// Writes the pod's record for an agent that starts after this one.
    fn persist(&self) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let r = PodRecord {
            boot_id: self.boot_id.clone(),
            uid: self.uid.clone(),
            start_time: Some(self.start_time),
            pod_ip: lock(&self.pod_ip).clone(),
            sandbox: *lock(&self.sandbox_ref),
            views: lock(&self.views).clone(),
            init_views: lock(&self.init_views).clone(),
            runs: lock(&self.runs).clone(),
        };
        let _ = std::fs::create_dir_all(&self.dir);
        if let Err(e) = record::save(&self.dir, &r) {
            eprintln!("keel: pod {}: recording its state: {e}", self.uid);
        }
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

    pub fn setup_timing(&self) -> String {
        lock(&self.setup_timing).clone()
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
        let node_resolv = std::fs::read_to_string(&self.shared.settings.resolv_conf).unwrap_or_default();
        let resolv = crate::net::dns::pod_resolv_conf(
            d.pod.spec.dns_policy.as_deref(),
            d.pod.spec.dns_config.as_ref(),
            &d.pod.metadata.namespace,
            d.pod.spec.host_network,
            &node_resolv,
        );
        std::fs::write(etc.join("resolv.conf"), resolv)
    }
}

/// The worker of one pod. `rx` carries the latest desired state, `None` once it left the set.
/// `record` is what an earlier agent of this boot left of the pod: its processes are adopted.
pub async fn run(
    shared: Arc<Shared>,
    first: Arc<Desired>,
    mut rx: watch::Receiver<Option<Arc<Desired>>>,
    record: Option<PodRecord>,
) {
    let uid = first.pod.metadata.uid.clone();
    let view_of = |c: &super::spec::Container| {
        let image = Reference::parse(&c.image)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| c.image.clone());
        ContainerView::new(&c.name, &image)
    };
    let mut views: Vec<ContainerView> = first.pod.spec.containers.iter().map(view_of).collect();
    let mut init_views: Vec<ContainerView> = first.pod.spec.init_containers.iter().map(view_of).collect();
    // A record whose containers are not the pod's (same uid, so it cannot happen) is ignored.
    let same = |a: &[ContainerView], b: &[ContainerView]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.name == y.name)
    };
    let record = record
        .map(|mut r| {
            // A record from the control plane's status (after a reboot) runs init containers
            // again and may not know every image yet.
            if r.init_views.is_empty() {
                r.init_views = init_views.clone();
            }
            for (v, fresh) in r.views.iter_mut().zip(&views) {
                if v.image.is_empty() {
                    v.image = fresh.image.clone();
                }
            }
            r
        })
        .filter(|r| same(&r.views, &views) && same(&r.init_views, &init_views));
    if let Some(r) = &record {
        views = r.views.clone();
        init_views = r.init_views.clone();
    }
    let start_time = record
        .as_ref()
        .and_then(|r| r.start_time)
        .unwrap_or_else(SystemTime::now);
    let ctx = Arc::new(PodCtx {
        dir: shared.settings.pods_dir.join(&uid),
        shared: shared.clone(),
        uid: uid.clone(),
        desired: Mutex::new(first),
        views: Mutex::new(views),
        init_views: Mutex::new(init_views),
        changed: Notify::new(),
        sandbox: Mutex::new(None),
        sandbox_ref: Mutex::new(None),
        pod_ip: Mutex::new(String::new()),
        runs: Mutex::new(BTreeMap::new()),
        start_time,
        closed: AtomicBool::new(false),
        boot_id: crate::runtime::process::boot_id(),
        arrived: std::time::Instant::now(),
        setup_timing: Mutex::new(String::new()),
    });
    let mut reporter = Reporter {
        transitions: Transitions::default(),
        start_time,
    };
    let (stop_tx, stop_rx) = watch::channel::<Option<Duration>>(None);
    let mut setup = tokio::spawn(setup(ctx.clone(), stop_rx, record));
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
                    Some(d) => {
                        let old = ctx.desired();
                        let changed = old.resolved != d.resolved
                            || old.pod.metadata.labels != d.pod.metadata.labels
                            || old.pod.metadata.annotations != d.pod.metadata.annotations;
                        *lock(&ctx.desired) = d;
                        if changed && set_up.is_some() {
                            // ConfigMaps, Secrets or metadata changed: running containers see it.
                            super::volumes::refresh(&ctx.desired().pod, ctx.pod_dir());
                        }
                    }
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
    ctx.closed.store(true, Ordering::SeqCst);
    shared.cgroups.remove(&uid, None);
    super::volumes::unmount_all(&ctx.dir);
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
    *lock(&ctx.sandbox_ref) = None;
    ctx.persist();
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
///
/// With a `record` from an earlier agent, the recorded sandbox (if it still runs) is adopted
/// with its address and /etc files, and each container resumes from its record: a running one
/// is adopted, a finished one stays finished, one between runs runs again. A pod whose sandbox
/// is gone loses its containers (they cannot live without its namespaces) and gets a new one.
async fn setup(
    ctx: Arc<PodCtx>,
    mut stop: StopSignal,
    record: Option<PodRecord>,
) -> (Option<Sandbox>, Vec<JoinHandle<()>>) {
    if ctx.desired().pod.metadata.deletion_timestamp.is_none() && record.is_none() {
        // A fresh pod: its record exists before any of its processes.
        ctx.persist();
    }
    let key = ctx.desired().pod.key();
    let netns = ctx.wants_netns();
    let adopted = record
        .as_ref()
        .and_then(|r| r.sandbox)
        .and_then(|s| Sandbox::adopt(s.proc, s.netns));
    let mut runs = record.as_ref().map(|r| r.runs.clone()).unwrap_or_default();
    if record.is_some() && adopted.is_none() && !runs.is_empty() {
        eprintln!("keel: pod {key}: its sandbox is gone; stopping its containers");
        ctx.shared.cgroups.kill_pod(&ctx.uid);
    }
    if ctx.desired().pod.metadata.deletion_timestamp.is_some() {
        // Being deleted: nothing starts; what still runs is adopted to be stopped.
        if let Some(s) = &adopted {
            *lock(&ctx.sandbox) = Some((s.pid, s.netns));
        }
        let names: Vec<(bool, usize, String)> = {
            let pod = &ctx.desired().pod;
            let regular = pod
                .spec
                .containers
                .iter()
                .enumerate()
                .map(|(i, c)| (false, i, c.name.clone()));
            pod.spec
                .init_containers
                .iter()
                .enumerate()
                .map(|(i, c)| (true, i, c.name.clone()))
                .chain(regular)
                .collect()
        };
        let tasks = names
            .into_iter()
            .filter_map(|(init, index, name)| {
                let r = runs.remove(&name)?;
                let task = ContainerTask {
                    ctx: ctx.clone(),
                    index,
                    init,
                    stop: stop.clone(),
                };
                Some(tokio::spawn(task.run(Resume::Adopt(r))))
            })
            .collect();
        return (adopted, tasks);
    }
    let t_sandbox = std::time::Instant::now();
    let mut slot = if adopted.is_none() {
        let slots = ctx.shared.start_slots.clone();
        tokio::select! {
            p = slots.acquire_owned() => p.ok(),
            _ = stop.wait_for(Option::is_some) => return (None, Vec::new()),
        }
    } else {
        None
    };
    let sandbox = match adopted {
        Some(s) => {
            *lock(&ctx.pod_ip) = record.as_ref().map(|r| r.pod_ip.clone()).unwrap_or_default();
            Some(s)
        }
        None => match Sandbox::start(&ctx.desired().pod.hostname(), netns).await {
            Ok(s) => Some(s),
            Err(e) => {
                // Containers then run in the node's namespaces; say so, keep going.
                ctx.event("Warning", "FailedCreatePodSandBox", e.to_string());
                eprintln!("keel: pod {key}: {e}");
                None
            }
        },
    };
    let sandbox_ms = t_sandbox.elapsed().as_millis();
    let t_network = std::time::Instant::now();
    let attached = netns && !lock(&ctx.pod_ip).is_empty();
    if let (Some(s), true, false) = (&sandbox, netns, attached) {
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
                    // Waiting for the network does not hold up other pods' sandboxes.
                    slot = None;
                    if sleep_or_stop(backoff, &mut stop).await {
                        return (sandbox, Vec::new());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    if !attached {
        if let Err(e) = ctx.write_etc() {
            ctx.event(
                "Warning",
                "FailedCreatePodSandBox",
                format!("writing the pod's /etc files: {e}"),
            );
        }
    }
    drop(slot);
    *lock(&ctx.setup_timing) = format!(
        "sandbox {sandbox_ms} ms, network and /etc {} ms",
        t_network.elapsed().as_millis()
    );
    if let Some(s) = &sandbox {
        *lock(&ctx.sandbox) = Some((s.pid, s.netns));
        *lock(&ctx.sandbox_ref) = ProcRef::of(s.pid).map(|proc| SandboxRecord { proc, netns: s.netns });
        ctx.persist();
        ctx.changed.notify_one();
    }
    let resumed = record.is_some();
    // Init containers, one after the other, each to success (or the pod fails).
    let inits = ctx.desired().pod.spec.init_containers.clone();
    if !inits.is_empty() && !resumed {
        ctx.set_waiting_all("PodInitializing");
    }
    for (index, c) in inits.iter().enumerate() {
        let resume = resume_of(&ctx, true, index, &c.name, &mut runs, resumed);
        if let Resume::Continue(v) = &resume {
            if matches!(v.state, State::Terminated { exit_code: 0, .. }) {
                continue;
            }
        }
        let task = ContainerTask {
            ctx: ctx.clone(),
            index,
            init: true,
            stop: stop.clone(),
        };
        let _ = tokio::spawn(task.run(resume)).await;
        let succeeded = matches!(
            ctx.view(true, index).map(|v| v.state),
            Some(State::Terminated { exit_code: 0, .. })
        );
        if !succeeded {
            return (sandbox, Vec::new());
        }
    }
    let tasks = resume_all(&ctx, &stop, runs, resumed);
    (sandbox, tasks)
}

/// What container `name` resumes from.
fn resume_of(
    ctx: &PodCtx,
    init: bool,
    index: usize,
    name: &str,
    runs: &mut BTreeMap<String, RunRecord>,
    resumed: bool,
) -> Resume {
    if let Some(r) = runs.remove(name) {
        return Resume::Adopt(r);
    }
    match ctx.view(init, index) {
        Some(v) if resumed && (!v.container_id.is_empty() || matches!(v.state, State::Terminated { .. })) => {
            Resume::Continue(Box::new(v))
        }
        _ => Resume::Fresh,
    }
}

/// Starts (or resumes) the task of every regular container.
fn resume_all(
    ctx: &Arc<PodCtx>,
    stop: &StopSignal,
    mut runs: BTreeMap<String, RunRecord>,
    resumed: bool,
) -> Vec<JoinHandle<()>> {
    let names: Vec<String> = ctx
        .desired()
        .pod
        .spec
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect();
    names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let resume = resume_of(ctx, false, index, name, &mut runs, resumed);
            tokio::spawn(
                ContainerTask {
                    ctx: ctx.clone(),
                    index,
                    init: false,
                    stop: stop.clone(),
                }
                .run(resume),
            )
        })
        .collect()
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
