//! The pod manager: takes each `DesiredPods` snapshot (the full set, level-triggered) and makes
//! the node match it — a [`worker`](super::worker) per pod uid, started when a pod appears,
//! told when its spec changes, told to stop when it leaves the set.
//!
//! It outlives sessions: the agent keeps one manager for its lifetime and each session hands it
//! the snapshots it receives and drains its [`Outbox`] of statuses and events. A pod the node
//! cannot understand is reported `Failed` with the reason, and never stops the others.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keel_proto::node_message::Msg;
use keel_proto::PodStatusReport;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::outbox::Outbox;
use super::record::{self, PodRecord};
use super::spec::{Pod, Resolved};
use super::status::{self, PodView, Transitions};
use crate::config::NodeConfig;
use crate::net::network_agent;
use crate::runtime::cgroup::{Cgroups, CGROUP_ROOT};
use crate::runtime::image::{Image, ImageError, PullStats, Registries, Store};
use crate::runtime::process::boot_id;
use crate::runtime::registry::Client;
use crate::runtime::sandbox::Sandbox;

/// Where things live and what the node is.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_name: String,
    pub host_ip: String,
    pub registries: Registries,
    pub images_dir: PathBuf,
    pub pods_dir: PathBuf,
    pub log_dir: PathBuf,
    pub cgroup_root: PathBuf,
    pub resolv_conf: PathBuf,
    /// Give each pod (but `hostNetwork` ones) its own network namespace on the pod network.
    pub pod_network: bool,
}

impl Settings {
    pub fn from_config(cfg: &NodeConfig, node_name: &str, state_dir: &std::path::Path) -> Settings {
        let host_ip = cfg
            .static_ip
            .as_ref()
            .map(|s| s.address.to_string())
            .or_else(|| {
                cfg.interfaces.iter().find_map(|i| {
                    i.ipv4
                        .as_deref()
                        .map(|a| a.split('/').next().unwrap_or(a).to_string())
                })
            })
            .unwrap_or_default();
        Settings {
            node_name: node_name.to_string(),
            host_ip,
            registries: Registries {
                mirrors: cfg.registry_mirrors.clone(),
                insecure: cfg.insecure_registries.clone(),
            },
            images_dir: state_dir.join("images"),
            pods_dir: state_dir.join("pods"),
            log_dir: PathBuf::from("/var/log/pods"),
            cgroup_root: PathBuf::from(CGROUP_ROOT),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            pod_network: true,
        }
    }
}

/// The registry client and the store, used by one pull at a time.
pub struct Puller {
    pub client: Option<Client>,
    pub store: Store,
    /// The images the desired pods name (normalised), which garbage collection keeps.
    pub wanted: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Puller {
    /// Makes `image` available with the pod's registry credentials.
    pub async fn ensure(
        &mut self,
        image: &str,
        policy: Option<&str>,
        registries: &Registries,
        credentials: Vec<(String, String)>,
    ) -> Result<(Image, Option<PullStats>), ImageError> {
        self.collect_garbage_if_full();
        if self.client.is_none() {
            self.client = Some(Client::new()?);
        }
        let Some(client) = self.client.as_mut() else {
            return Err(ImageError::NeverPull(image.to_string()));
        };
        // A registry's credentials also go to its mirrors (the lab's docker.io mirror holds
        // private repositories too), as containerd applies them per image, not per host.
        let mut credentials = credentials;
        for (registry, mirror) in &registries.mirrors {
            let registry = crate::runtime::registry::normalize_host(registry);
            let found = credentials
                .iter()
                .find(|(h, _)| crate::runtime::registry::normalize_host(h) == registry)
                .map(|(_, a)| a.clone());
            if let Some(auth) = found {
                credentials.push((crate::runtime::registry::normalize_host(mirror), auth));
            }
        }
        client.set_credentials(credentials);
        self.store.ensure(client, image, policy, registries).await
    }
}

/// Image garbage collection starts when the image store's filesystem is this full (percent;
/// the kubelet's `imageGCHighThresholdPercent`) …
const IMAGE_GC_HIGH: u64 = 85;

impl Puller {
    /// … and removes every image no desired pod names (the kubelet goes down to its low
    /// threshold, oldest first; on a node whose store is in RAM, all unused images go).
    fn collect_garbage_if_full(&self) {
        let Ok((total, available)) = crate::runtime::sys::fs_space(self.store.root()) else {
            return;
        };
        if total == 0 || (total - available.min(total)) * 100 / total < IMAGE_GC_HIGH {
            return;
        }
        let keep = self
            .wanted
            .lock()
            .map(|w| w.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let (images, layers) = self.store.collect_garbage(&keep);
        eprintln!(
            "keel: image store {}% full: removed {images} unused images ({layers} layers)",
            (total - available.min(total)) * 100 / total
        );
    }
}

/// What every pod worker shares.
pub struct Shared {
    pub settings: Settings,
    pub outbox: Arc<Outbox>,
    pub puller: tokio::sync::Mutex<Puller>,
    pub cgroups: Cgroups,
    /// Pod sandboxes are set up (process, network namespace, pod network) a few at a time, two
    /// per CPU: on a busy node the first pods of a burst then run early, instead of every pod
    /// of the burst finishing together at its end.
    pub start_slots: Arc<tokio::sync::Semaphore>,
}

/// One pod as desired, with what the control plane resolved for it.
#[derive(Debug)]
pub struct Desired {
    pub pod: Pod,
    pub resolved: Resolved,
}

struct Handle {
    tx: watch::Sender<Option<Arc<Desired>>>,
    task: JoinHandle<()>,
}

pub struct Manager {
    shared: Arc<Shared>,
    pods: HashMap<String, Handle>,
    last_version: u64,
    /// What an earlier agent of this boot left (pod records by uid), until the first snapshot
    /// says which pods to adopt; the rest is then stopped.
    records: Option<BTreeMap<String, PodRecord>>,
    /// The images the desired pods name, shared with the puller's garbage collection.
    wanted: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

/// The annotation that makes the agent ask PID 1 (booted with `keel.selftest=kill-agent-on-request`)
/// to kill it, once per value: how tests kill the agent while pods run (the image has no shell).
pub const SELFTEST_KILL_ANNOTATION: &str = "keel.dev/selftest-kill-agent";

impl Manager {
    pub fn new(settings: Settings) -> Manager {
        let wanted = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let shared = Arc::new(Shared {
            outbox: Arc::new(Outbox::default()),
            puller: tokio::sync::Mutex::new(Puller {
                client: None,
                store: Store::new(settings.images_dir.clone()),
                wanted: wanted.clone(),
            }),
            cgroups: Cgroups::new(settings.cgroup_root.clone()),
            start_slots: Arc::new(tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            settings,
        });
        let records = record::load_all(&shared.settings.pods_dir, &boot_id());
        if !records.is_empty() {
            eprintln!(
                "keel: {} pods recorded by an earlier agent; adopting what still runs",
                records.len()
            );
        }
        Manager {
            shared,
            pods: HashMap::new(),
            last_version: 0,
            records: Some(records),
            wanted,
        }
    }

    pub fn outbox(&self) -> Arc<Outbox> {
        self.shared.outbox.clone()
    }

    /// Makes the node's pods match the snapshot (`version`, every pod's JSON).
    pub fn apply(&mut self, version: u64, pods: &[Value]) {
        self.pods.retain(|_, h| !h.task.is_finished());
        let mut seen = std::collections::HashSet::new();
        let mut images = std::collections::BTreeSet::new();
        for json in pods {
            let pod = match Pod::from_value(json) {
                Ok(p) => p,
                Err(e) => {
                    self.report_unusable(json, &e.to_string());
                    continue;
                }
            };
            for c in pod.spec.containers.iter().chain(&pod.spec.init_containers) {
                if let Ok(r) = crate::runtime::reference::Reference::parse(&c.image) {
                    images.insert(r.to_string());
                }
            }
            let uid = pod.metadata.uid.clone();
            seen.insert(uid.clone());
            if let Some(token) = json
                .pointer(&format!(
                    "/metadata/annotations/{}",
                    SELFTEST_KILL_ANNOTATION.replace('/', "~1")
                ))
                .and_then(Value::as_str)
            {
                // PID 1 reads this line (and kills the agent once per token); one write, so
                // that it reaches PID 1 whole.
                let line = format!("keel: selftest: kill the agent ({token})\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            }
            let resolved = pod.resolved.clone();
            let desired = Arc::new(Desired { pod, resolved });
            match self.pods.get(&uid) {
                Some(h) => {
                    let _ = h.tx.send(Some(desired));
                }
                None => {
                    let record = self.records.as_mut().and_then(|r| r.remove(&uid)).or_else(|| {
                        // Created before this boot: it ran here before the reboot.
                        let now = SystemTime::now();
                        let created = desired
                            .pod
                            .metadata
                            .creation_timestamp
                            .as_deref()
                            .and_then(record::parse_rfc3339)?;
                        if created >= record::boot_time(now) {
                            return None;
                        }
                        let names: Vec<String> = desired
                            .pod
                            .spec
                            .containers
                            .iter()
                            .map(|c| c.name.clone())
                            .collect();
                        eprintln!(
                            "keel: pod {}: ran before this boot; starting it again",
                            desired.pod.key()
                        );
                        Some(PodRecord {
                            uid: uid.clone(),
                            ..record::after_reboot(&desired.pod.keel_status, &names, Some(created), now)
                        })
                    });
                    let (tx, rx) = watch::channel(Some(desired.clone()));
                    let task = tokio::spawn(super::worker::run(self.shared.clone(), desired, rx, record));
                    self.pods.insert(uid, Handle { tx, task });
                }
            }
        }
        for (uid, h) in &self.pods {
            if !seen.contains(uid) {
                let _ = h.tx.send(None);
            }
        }
        match self.wanted.lock() {
            Ok(mut w) => *w = images,
            Err(p) => *p.into_inner() = images,
        }
        if let Some(left) = self.records.take() {
            // The first snapshot: what an earlier agent ran and is no longer wanted goes.
            let live: Vec<String> = seen.iter().cloned().collect();
            tokio::spawn(remove_leftovers(self.shared.clone(), left, live));
        }
        if version != self.last_version {
            self.last_version = version;
            eprintln!(
                "keel: desired pods v{}: {} pods ({} workers; agent RSS {} KiB)",
                version,
                seen.len(),
                self.pods.len(),
                rss_kib()
            );
        }
    }

    /// A pod whose JSON the node cannot use: Failed, with the reason, if it can be named.
    fn report_unusable(&self, v: &Value, why: &str) {
        let s = |p: &str| {
            v.pointer(p)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let (ns, name, uid) = (s("/metadata/namespace"), s("/metadata/name"), s("/metadata/uid"));
        eprintln!("keel: cannot run pod {ns}/{name}: {why}");
        if uid.is_empty() || name.is_empty() {
            return;
        }
        let view = PodView {
            policy: super::spec::RestartPolicy::Never,
            containers: &[],
            init_containers: &[],
            host_ip: &self.shared.settings.host_ip,
            pod_ip: "",
            start_time: None,
            sandbox_ready: false,
            failure: Some(("Invalid", why.to_string())),
        };
        let status = status::pod_status(&view, &mut Transitions::default(), SystemTime::now());
        let deleting = v
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|d| !d.is_null());
        self.shared.outbox.status(PodStatusReport {
            namespace: if ns.is_empty() { "default".into() } else { ns },
            name,
            uid,
            status_json: serde_json::to_vec(&status).unwrap_or_default(),
            gone: deleting,
        });
    }
}

/// Stops and removes what an earlier agent left of pods that are no longer desired: their
/// recorded sandboxes, every process in their cgroups (also of pods nobody recorded), their
/// addresses and files.
async fn remove_leftovers(shared: Arc<Shared>, records: BTreeMap<String, PodRecord>, live: Vec<String>) {
    let mut uids: std::collections::BTreeSet<String> = records.keys().cloned().collect();
    uids.extend(shared.cgroups.pods());
    for uid in uids.into_iter().filter(|u| !live.contains(u)) {
        eprintln!("keel: pod {uid}: no longer desired; removing what an earlier agent left");
        shared.cgroups.kill_pod(&uid);
        if let Some(r) = records.get(&uid) {
            if let Some(s) = r.sandbox.and_then(|s| Sandbox::adopt(s.proc, s.netns)) {
                s.stop().await;
            }
            let _ = network_agent::detach(uid.clone()).await;
        }
        // The killed processes leave their cgroups in a moment.
        for _ in 0..50 {
            shared.cgroups.remove(&uid, None);
            if !shared.cgroups.pod_dir(&uid).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        super::volumes::unmount_all(&shared.settings.pods_dir.join(&uid));
        let _ = std::fs::remove_dir_all(shared.settings.pods_dir.join(&uid));
    }
}

/// The agent's resident memory, for the console (a figure worth watching as pods come and go).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The pod manager's loop: snapshots in from `desired`, statuses and events out through `up`;
/// every status again when `sessions` moves (a new session may have missed some). Ends when the
/// session side is gone.
pub async fn serve<S: Snapshot>(
    settings: Settings,
    mut desired: watch::Receiver<Option<Arc<S>>>,
    up: mpsc::Sender<Msg>,
    mut sessions: watch::Receiver<u64>,
) {
    let mut m = Manager::new(settings);
    let outbox = m.outbox();
    let first = desired.borrow_and_update().clone();
    if let Some(set) = first {
        m.apply(set.version(), set.pods());
    }
    loop {
        tokio::select! {
            r = desired.changed() => {
                if r.is_err() {
                    return;
                }
                let set = desired.borrow_and_update().clone();
                if let Some(set) = set {
                    m.apply(set.version(), set.pods());
                }
            }
            r = sessions.changed() => {
                if r.is_err() {
                    return;
                }
                sessions.borrow_and_update();
                outbox.resend_all();
            }
            batch = outbox.next_batch() => {
                for msg in batch {
                    if up.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A desired-pods snapshot as the session decoded it.
pub trait Snapshot: Send + Sync + 'static {
    fn version(&self) -> u64;
    fn pods(&self) -> &[Value];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unusable_pods_are_reported_failed_and_others_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::from_config(&NodeConfig::default(), "n1", dir.path());
        settings.cgroup_root = dir.path().join("cgroup");
        let mut m = Manager::new(settings);
        m.apply(
            1,
            &[
                serde_json::json!({"metadata":{"name":"bad","namespace":"default","uid":"u-bad"},"spec":{"containers":[]}}),
                serde_json::json!("not a pod"),
            ],
        );
        let batch = tokio::time::timeout(Duration::from_secs(5), m.outbox().next_batch())
            .await
            .unwrap();
        assert_eq!(batch.len(), 1);
        let Msg::PodStatus(r) = &batch[0] else {
            panic!("{batch:?}")
        };
        assert_eq!(r.uid, "u-bad");
        let s: serde_json::Value = serde_json::from_slice(&r.status_json).unwrap();
        assert_eq!(s["phase"], "Failed");
        assert_eq!(s["reason"], "Invalid");
        assert!(m.pods.is_empty());
    }
}
