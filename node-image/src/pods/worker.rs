//! One pod on this node, from the first time it is desired to the moment it is gone.
//!
//! The worker writes the pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, starts the
//! sandbox, starts one [`ContainerTask`] per container and turns their states into the pod
//! status whenever one changes. When the pod leaves the desired set, or is being deleted
//! (`deletionTimestamp`), it stops the containers with the grace period, stops the sandbox,
//! removes the pod's cgroups and files, and — for a deletion — reports the pod `gone` so the
//! control plane can remove the object.
//!
//! Network, for now: pods share the node's network (`hostNetwork` semantics; `podIP` is the
//! node's address) until the pod network lands; the sandbox can already hold a network
//! namespace with loopback up ([`Settings::private_netns`]) for that work to plug a veth into.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keel_proto::{NodeEvent, PodStatusReport};
use tokio::sync::{watch, Notify};

use super::lifecycle::ContainerTask;
use super::manager::{Desired, Shared};
use super::status::{self, ContainerView, PodView, Transitions};
use crate::runtime::reference::Reference;
use crate::runtime::sandbox::Sandbox;

/// What the pod's tasks share.
pub struct PodCtx {
    pub shared: Arc<Shared>,
    pub uid: String,
    desired: Mutex<Arc<Desired>>,
    views: Mutex<Vec<ContainerView>>,
    changed: Notify,
    sandbox: Mutex<Option<(i32, bool)>>,
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

    pub fn view(&self, i: usize) -> ContainerView {
        lock(&self.views)[i].clone()
    }

    pub fn update_view(&self, i: usize, f: impl FnOnce(&mut ContainerView)) {
        if let Some(v) = lock(&self.views).get_mut(i) {
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

    pub fn pod_ip(&self) -> String {
        // hostNetwork semantics until the pod network exists.
        self.shared.settings.host_ip.clone()
    }

    pub fn sandbox_pid(&self) -> Option<i32> {
        lock(&self.sandbox).map(|(pid, _)| pid)
    }

    pub fn sandbox_netns(&self) -> bool {
        lock(&self.sandbox).is_some_and(|(_, n)| n)
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
    let views = first
        .pod
        .spec
        .containers
        .iter()
        .map(|c| {
            let image = Reference::parse(&c.image)
                .map(|r| r.to_string())
                .unwrap_or_else(|_| c.image.clone());
            ContainerView::new(&c.name, &image)
        })
        .collect();
    let ctx = Arc::new(PodCtx {
        dir: shared.settings.pods_dir.join(&uid),
        shared: shared.clone(),
        uid: uid.clone(),
        desired: Mutex::new(first),
        views: Mutex::new(views),
        changed: Notify::new(),
        sandbox: Mutex::new(None),
    });
    let mut reporter = Reporter {
        transitions: Transitions::default(),
        start_time: SystemTime::now(),
    };
    let (stop_tx, stop_rx) = watch::channel::<Option<Duration>>(None);
    let mut tasks = Vec::new();
    let mut sandbox: Option<Sandbox> = None;

    if ctx.desired().pod.metadata.deletion_timestamp.is_none() {
        if let Err(e) = ctx.write_etc() {
            ctx.event(
                "Warning",
                "FailedCreatePodSandBox",
                format!("writing the pod's /etc files: {e}"),
            );
        }
        match Sandbox::start(&ctx.desired().pod.hostname(), shared.settings.private_netns).await {
            Ok(s) => {
                *lock(&ctx.sandbox) = Some((s.pid, s.netns));
                sandbox = Some(s);
            }
            Err(e) => {
                // Containers then run in the node's UTS/IPC namespaces; say so, keep going.
                ctx.event("Warning", "FailedCreatePodSandBox", e.to_string());
                eprintln!("keel: pod {}: {e}", ctx.desired().pod.key());
            }
        }
        for index in 0..ctx.desired().pod.spec.containers.len() {
            let t = ContainerTask {
                ctx: ctx.clone(),
                index,
                stop: stop_rx.clone(),
            };
            tasks.push(tokio::spawn(t.run()));
        }
    }
    reporter.send(&ctx, false);

    // Running: follow the desired state and report changes.
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
            _ = ctx.changed.notified() => reporter.send(&ctx, false),
        }
    };

    // Stopping: containers first (graceful), then the sandbox and the pod's leftovers.
    let grace = Duration::from_secs(ctx.desired().pod.grace_seconds());
    let _ = stop_tx.send(Some(grace));
    for t in tasks {
        let _ = t.await;
    }
    if let Some(s) = sandbox {
        s.stop().await;
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

struct Reporter {
    transitions: Transitions,
    start_time: SystemTime,
}

impl Reporter {
    fn send(&mut self, ctx: &PodCtx, gone: bool) {
        let d = ctx.desired();
        let views: Vec<ContainerView> = lock(&ctx.views).clone();
        let ip = ctx.pod_ip();
        let v = PodView {
            policy: d.pod.restart_policy(),
            containers: &views,
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
    }
}
