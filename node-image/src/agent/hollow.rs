//! `keel-node hollow`: many simulated nodes in one process, to measure the control plane at
//! scale on one machine (Kubernetes' kubemark, Keel's way).
//!
//! Each hollow node is the real agent's protocol with a simulated machine behind it: it joins
//! with the bootstrap token and the CA pin ([`super::join`]: its own key, CSR, certificate),
//! then keeps its own mutual-TLS session ([`super::session`]: report first, heartbeats that
//! renew its Lease, desired pods down). Only two things are simulated:
//!
//! * the report ([`super::report::Reporter::simulated`]): a fixed capacity (4 CPUs, 16 GiB,
//!   110 pods), an InternalIP of its own (`100.64.x.y`) and conditions that say Ready;
//! * the pod manager ([`serve_pods`], the [`super::link::PodLink`] end the real pod manager
//!   takes): a pod that arrives goes Running with its containers ready after `--pod-delay`,
//!   with a pod IP from the node's pod CIDR; a pod being deleted is answered `gone`. Statuses
//!   are computed by the real [`crate::pods::status::pod_status`].
//!
//! Everything runs on one shared tokio runtime; per node that is a TLS connection, a few tasks
//! and the pods' small state.
//!
//! ```text
//! keel-node hollow --server https://HOST:PORT --token TOKEN --ca-hash sha256:HEX --count N
//!     [--prefix hollow] [--pod-delay-ms 0] [--threads 2] [--joins-at-once 16]
//! ```

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keel_proto::node_message::Msg as NodeMsg;
use keel_proto::{Condition, NodeAddress, NodeReport, PodStatusReport, Resources, SystemInfo};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::identity::Identity;
use super::join::{self, JoinParams};
use super::link::{self, PodLink, SessionLink};
use super::report::{Reporter, KUBELET_VERSION};
use super::session::{self, Ended};
use super::tls::ServerAddr;
use super::{discard, Backoff, JOIN_RETRY_MAX, JOIN_RETRY_MIN, RECONNECT_MAX, RECONNECT_MIN};
use crate::pods::spec::{Pod, RestartPolicy};
use crate::pods::status::{pod_status, ContainerView, PodView, State, Transitions};

const USAGE: &str = "usage: keel-node hollow --server URL --token TOKEN --ca-hash sha256:HEX --count N \
     [--prefix NAME] [--first I] [--pod-delay-ms MS] [--threads T] [--joins-at-once J]";

/// A hollow node's machine.
const CPU_MILLIS: u64 = 4000;
const MEMORY_BYTES: u64 = 16 << 30;
const STORAGE_BYTES: u64 = 100 << 30;
const MAX_PODS: u32 = 110;

#[derive(Debug, Clone)]
struct Options {
    server: String,
    token: String,
    ca_hash: String,
    count: usize,
    prefix: String,
    /// The index of the first node (names are `<prefix>-<index>`), so that several processes
    /// can share one cluster.
    first: usize,
    pod_delay: Duration,
    threads: usize,
    joins_at_once: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            server: String::new(),
            token: String::new(),
            ca_hash: String::new(),
            count: 1,
            prefix: "hollow".into(),
            first: 0,
            pod_delay: Duration::ZERO,
            threads: 2,
            joins_at_once: 16,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
            let number = |name: &str, v: String| {
                v.parse::<usize>()
                    .map_err(|_| format!("{name} {v:?} is not a number"))
            };
            match a.as_str() {
                "--server" => o.server = value(a)?,
                "--token" => o.token = value(a)?,
                "--ca-hash" => o.ca_hash = value(a)?,
                "--count" => o.count = number(a, value(a)?)?,
                "--prefix" => o.prefix = value(a)?,
                "--first" => o.first = number(a, value(a)?)?,
                "--pod-delay-ms" => o.pod_delay = Duration::from_millis(number(a, value(a)?)? as u64),
                "--threads" => o.threads = number(a, value(a)?)?.max(1),
                "--joins-at-once" => o.joins_at_once = number(a, value(a)?)?.max(1),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if o.server.is_empty() || o.token.is_empty() || o.ca_hash.is_empty() {
            return Err("--server, --token and --ca-hash are required".into());
        }
        Ok(o)
    }
}

pub fn main(args: &[String]) -> ExitCode {
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("keel-node hollow: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel: hollow nodes cannot start their runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(opts))
}

/// What the hollow nodes share.
struct Shared {
    opts: Options,
    addr: ServerAddr,
    joins: Semaphore,
    connected: AtomicUsize,
}

async fn run(opts: Options) -> ExitCode {
    let Some(addr) = ServerAddr::parse(&opts.server) else {
        eprintln!(
            "keel-node hollow: --server {} is not a valid https://HOST[:PORT] URL",
            opts.server
        );
        return ExitCode::from(2);
    };
    eprintln!(
        "keel: starting {} hollow nodes {}-{:04}… against {}",
        opts.count, opts.prefix, opts.first, opts.server
    );
    let shared = Arc::new(Shared {
        joins: Semaphore::new(opts.joins_at_once),
        connected: AtomicUsize::new(0),
        addr,
        opts,
    });
    let mut nodes = tokio::task::JoinSet::new();
    for i in 0..shared.opts.count {
        nodes.spawn(hollow_node(shared.clone(), shared.opts.first + i));
    }
    // Nodes run until the process is killed; a node task only ends if it panicked.
    while let Some(r) = nodes.join_next().await {
        if let Err(e) = r {
            eprintln!("keel: a hollow node stopped: {e}");
        }
    }
    ExitCode::FAILURE
}

/// One hollow node: join, then keep its session (joining again if its certificate is refused).
async fn hollow_node(shared: Arc<Shared>, index: usize) {
    let name = format!("{}-{index:04}", shared.opts.prefix);
    let ip = node_ip(index);
    let reporter = Reporter {
        node_name: name.clone(),
        storage_path: "/".into(),
        machine_id: String::new(),
        preferred_ip: Some(ip),
        boot_phases: vec![],
        simulated: Some(simulated_report(&name, index, ip)),
    };
    let (mut session_link, pod_link) = link::pair();
    tokio::spawn(serve_pods(pod_link, ip, shared.opts.pod_delay));
    loop {
        let id = join_until_done(&shared, &name).await;
        let reason = keep_session(&shared, &id, &reporter, &mut session_link).await;
        eprintln!("keel: hollow node {name}: {reason}; joining again");
    }
}

async fn join_until_done(shared: &Shared, name: &str) -> Identity {
    let o = &shared.opts;
    let params = JoinParams {
        server: &o.server,
        token: &o.token,
        ca_hash: &o.ca_hash,
        node_name: name,
    };
    let mut backoff = Backoff::new(JOIN_RETRY_MIN, JOIN_RETRY_MAX);
    loop {
        let result = {
            // Joins are CPU work on both sides (keys, signatures, handshakes): a few at a time.
            let _permit = shared.joins.acquire().await;
            join::join(&params).await
        };
        match result {
            Ok(id) => return id,
            Err(e) => {
                eprintln!("keel: hollow node {name} could not join: {e}");
                backoff.wait().await;
            }
        }
    }
}

/// Keeps the session up, reconnecting with back-off; returns when the certificate is refused.
async fn keep_session(shared: &Shared, id: &Identity, reporter: &Reporter, link: &mut SessionLink) -> String {
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    loop {
        let mut welcomed = false;
        let ended = session::run(id, &shared.addr, reporter, link, || {
            welcomed = true;
            let n = shared.connected.fetch_add(1, Ordering::Relaxed) + 1;
            if n == shared.opts.count {
                eprintln!("keel: all {n} hollow nodes are connected");
            } else if n.is_multiple_of(100) {
                eprintln!("keel: {n} hollow nodes connected");
            }
        })
        .await;
        if welcomed {
            shared.connected.fetch_sub(1, Ordering::Relaxed);
        }
        match ended {
            Ended::Rejected(reason) => return reason,
            Ended::Broken { reason, established } => {
                if established {
                    backoff.reset();
                    eprintln!("keel: hollow node {} lost its session ({reason})", id.node_name);
                }
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = discard(&mut link.up) => {}
                }
            }
        }
    }
}

/// `100.64.0.1` for node 0, and so on (each node has an address of its own).
fn node_ip(index: usize) -> Ipv4Addr {
    let n = (index as u32).wrapping_add(1) & 0x003f_ffff;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) | n)
}

fn simulated_report(name: &str, index: usize, ip: Ipv4Addr) -> NodeReport {
    let machine_id = format!("{:032x}", 0x6b65_656c_0000_0000_u128 | index as u128);
    let resources = |pods| Resources {
        cpu_millis: CPU_MILLIS,
        memory_bytes: MEMORY_BYTES,
        ephemeral_storage_bytes: STORAGE_BYTES,
        pods,
    };
    let cond = |t: &str, s: &str, reason: &str, message: &str| Condition {
        r#type: t.into(),
        status: s.into(),
        reason: reason.into(),
        message: message.into(),
    };
    NodeReport {
        addresses: vec![
            NodeAddress {
                r#type: "InternalIP".into(),
                address: ip.to_string(),
            },
            NodeAddress {
                r#type: "Hostname".into(),
                address: name.to_string(),
            },
        ],
        capacity: Some(resources(MAX_PODS)),
        allocatable: Some(resources(MAX_PODS)),
        system_info: Some(SystemInfo {
            system_uuid: format!(
                "{}-{}-{}-{}-{}",
                &machine_id[0..8],
                &machine_id[8..12],
                &machine_id[12..16],
                &machine_id[16..20],
                &machine_id[20..32]
            ),
            machine_id,
            boot_id: String::new(),
            kernel_version: "hollow".into(),
            os_image: concat!("Keel ", env!("CARGO_PKG_VERSION"), " (hollow)").into(),
            container_runtime_version: concat!("keel-hollow://", env!("CARGO_PKG_VERSION")).into(),
            kubelet_version: KUBELET_VERSION.into(),
            operating_system: "linux".into(),
            architecture: "amd64".into(),
        }),
        conditions: vec![
            cond(
                "NetworkUnavailable",
                "False",
                "KeelHollowNode",
                "hollow node: simulated pod network",
            ),
            cond("MemoryPressure", "False", "", ""),
            cond("DiskPressure", "False", "", ""),
            cond("PIDPressure", "False", "", ""),
            cond("Ready", "True", "", ""),
        ],
        boot_phases: vec![],
        overlay: None,
    }
}

/// What a hollow node remembers of one pod.
struct HollowPod {
    namespace: String,
    name: String,
    policy: RestartPolicy,
    host_network: bool,
    containers: Vec<ContainerView>,
    init_containers: Vec<ContainerView>,
    transitions: Transitions,
    started: SystemTime,
    /// When its containers run (`None` once they do).
    running_at: Option<Instant>,
    /// Its address in the pod CIDR (offset from the CIDR's base), once it has one.
    ip: Option<u32>,
    deleting: bool,
}

/// The node's pod CIDR as (base, size), from `10.244.3.0/24`.
fn parse_cidr(cidr: &str) -> Option<(u32, u32)> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    if !(1..=30).contains(&len) {
        return None;
    }
    let size = 1u32 << (32 - len);
    Some((u32::from(addr) & !(size - 1), size))
}

/// The simulated runtime of one hollow node: the real pod manager's end of the link.
struct HollowPods {
    node_ip: Ipv4Addr,
    delay: Duration,
    pods: HashMap<String, HollowPod>,
    cidr: Option<(u32, u32)>,
    used: BTreeSet<u32>,
}

impl HollowPods {
    /// Takes a snapshot: new pods start, pods being deleted are answered `gone`, pods no longer
    /// listed are forgotten. Returns the reports to send.
    fn apply(&mut self, pods: &[Value], now: Instant) -> Vec<PodStatusReport> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for v in pods {
            let Some(uid) = v.pointer("/metadata/uid").and_then(Value::as_str) else {
                continue;
            };
            seen.insert(uid.to_string());
            let deleting = v
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null());
            if let Some(p) = self.pods.get_mut(uid) {
                if deleting && !p.deleting {
                    p.deleting = true;
                    out.push(gone(uid, p));
                }
                continue;
            }
            let Ok(spec) = serde_json::from_value::<Pod>(v.clone()) else {
                continue;
            };
            let views = |cs: &[crate::pods::spec::Container]| {
                cs.iter()
                    .map(|c| ContainerView::new(&c.name, &c.image))
                    .collect::<Vec<_>>()
            };
            let mut p = HollowPod {
                namespace: spec.metadata.namespace.clone(),
                name: spec.metadata.name.clone(),
                policy: spec.restart_policy(),
                host_network: spec.spec.host_network,
                containers: views(&spec.spec.containers),
                init_containers: views(&spec.spec.init_containers),
                transitions: Transitions::default(),
                started: SystemTime::now(),
                running_at: Some(now + self.delay),
                ip: None,
                deleting,
            };
            if deleting {
                out.push(gone(uid, &p));
            } else {
                self.assign_ip(&mut p);
                if !self.delay.is_zero() {
                    out.push(self.status(uid, &mut p));
                }
            }
            self.pods.insert(uid.to_string(), p);
        }
        let forgotten: Vec<String> = self.pods.keys().filter(|u| !seen.contains(*u)).cloned().collect();
        for uid in forgotten {
            if let Some(ip) = self.pods.remove(&uid).and_then(|p| p.ip) {
                self.used.remove(&ip);
            }
        }
        out.extend(self.advance(now));
        out
    }

    /// Pods whose time has come go Running (once they have an address).
    fn advance(&mut self, now: Instant) -> Vec<PodStatusReport> {
        let due: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| !p.deleting && p.running_at.is_some_and(|t| t <= now))
            .filter(|(_, p)| p.host_network || p.ip.is_some())
            .map(|(u, _)| u.clone())
            .collect();
        let mut out = Vec::new();
        let at = SystemTime::now();
        for uid in due {
            let Some(mut p) = self.pods.remove(&uid) else {
                continue;
            };
            p.running_at = None;
            for c in &mut p.init_containers {
                c.state = State::Terminated {
                    exit_code: 0,
                    reason: "Completed".into(),
                    message: None,
                    started_at: p.started,
                    finished_at: at,
                    container_id: String::new(),
                };
            }
            for c in &mut p.containers {
                c.state = State::Running { started_at: at };
                c.container_id = format!("keel-hollow://{uid}/{}", c.name);
            }
            out.push(self.status(&uid, &mut p));
            self.pods.insert(uid, p);
        }
        out
    }

    /// When the next pod goes Running.
    fn next_due(&self) -> Option<Instant> {
        self.pods
            .values()
            .filter(|p| !p.deleting && (p.host_network || p.ip.is_some()))
            .filter_map(|p| p.running_at)
            .min()
    }

    /// The pod CIDR arrived or changed: pods without an address get one.
    fn set_cidr(&mut self, cidr: &str) {
        let parsed = parse_cidr(cidr);
        if parsed == self.cidr {
            return;
        }
        self.cidr = parsed;
        self.used.clear();
        let mut pods = std::mem::take(&mut self.pods);
        for p in pods.values_mut() {
            p.ip = None;
            self.assign_ip(p);
        }
        self.pods = pods;
    }

    fn assign_ip(&mut self, p: &mut HollowPod) {
        let Some((_, size)) = self.cidr else { return };
        if p.host_network || p.ip.is_some() {
            return;
        }
        // .0 is the network, .1 the bridge, the last the broadcast.
        if let Some(off) = (2..size.saturating_sub(1)).find(|o| !self.used.contains(o)) {
            self.used.insert(off);
            p.ip = Some(off);
        }
    }

    fn status(&self, uid: &str, p: &mut HollowPod) -> PodStatusReport {
        let pod_ip = if p.host_network {
            self.node_ip.to_string()
        } else {
            match (self.cidr, p.ip) {
                (Some((base, _)), Some(off)) => Ipv4Addr::from(base + off).to_string(),
                _ => String::new(),
            }
        };
        let host_ip = self.node_ip.to_string();
        let view = PodView {
            policy: p.policy,
            containers: &p.containers,
            init_containers: &p.init_containers,
            host_ip: &host_ip,
            pod_ip: &pod_ip,
            start_time: Some(p.started),
            sandbox_ready: p.running_at.is_none(),
            failure: None,
        };
        let status = pod_status(&view, &mut p.transitions, SystemTime::now());
        PodStatusReport {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            uid: uid.to_string(),
            status_json: serde_json::to_vec(&status).unwrap_or_default(),
            gone: false,
        }
    }

    /// Every pod's report again (a new session may have missed some).
    fn all(&mut self) -> Vec<PodStatusReport> {
        let uids: Vec<String> = self.pods.keys().cloned().collect();
        let mut out = Vec::new();
        for uid in uids {
            let Some(mut p) = self.pods.remove(&uid) else {
                continue;
            };
            if p.deleting {
                out.push(gone(&uid, &p));
            } else if p.running_at.is_none() || !self.delay.is_zero() {
                out.push(self.status(&uid, &mut p));
            }
            self.pods.insert(uid, p);
        }
        out
    }
}

/// Nothing of the pod runs any more (a hollow pod stops at once).
fn gone(uid: &str, p: &HollowPod) -> PodStatusReport {
    PodStatusReport {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: uid.to_string(),
        status_json: Vec::new(),
        gone: true,
    }
}

/// Runs a hollow node's pods until the session side goes away.
async fn serve_pods(mut link: PodLink, node_ip: Ipv4Addr, delay: Duration) {
    let mut state = HollowPods {
        node_ip,
        delay,
        pods: HashMap::new(),
        cidr: None,
        used: BTreeSet::new(),
    };
    loop {
        let next = state.next_due();
        let reports = tokio::select! {
            r = link.desired.changed() => {
                if r.is_err() {
                    return;
                }
                let set = link.desired.borrow_and_update().clone();
                match set {
                    Some(set) => state.apply(&set.pods, Instant::now()),
                    None => Vec::new(),
                }
            }
            r = link.pod_cidr.changed() => {
                if r.is_err() {
                    return;
                }
                let cidr = link.pod_cidr.borrow_and_update().clone();
                state.set_cidr(&cidr);
                state.advance(Instant::now())
            }
            r = link.sessions.changed() => {
                if r.is_err() {
                    return;
                }
                link.sessions.borrow_and_update();
                state.all()
            }
            _ = sleep_until(next) => state.advance(Instant::now()),
        };
        for r in reports {
            if link.up.send(NodeMsg::PodStatus(r)).await.is_err() {
                return;
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> HollowPods {
        HollowPods {
            node_ip: Ipv4Addr::new(100, 64, 0, 1),
            delay: Duration::ZERO,
            pods: HashMap::new(),
            cidr: None,
            used: BTreeSet::new(),
        }
    }

    fn pod(uid: &str, deleting: bool) -> Value {
        let mut p = json!({
            "metadata": {"namespace": "default", "name": format!("p-{uid}"), "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "pause"}]}
        });
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        p
    }

    fn status(r: &PodStatusReport) -> Value {
        serde_json::from_slice(&r.status_json).unwrap()
    }

    #[test]
    fn pods_run_once_the_node_has_a_pod_cidr_and_are_answered_gone() {
        let mut s = pods();
        let now = Instant::now();
        assert!(s.apply(&[pod("a", false)], now).is_empty(), "no address yet");
        s.set_cidr("10.244.3.0/24");
        let r = s.advance(now);
        assert_eq!(r.len(), 1);
        let st = status(&r[0]);
        assert_eq!(st["phase"], "Running");
        assert_eq!(st["podIP"], "10.244.3.2");
        assert_eq!(st["hostIP"], "100.64.0.1");
        assert_eq!(st["containerStatuses"][0]["ready"], true);
        assert_eq!(
            st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Ready")
                .unwrap()["status"],
            "True"
        );
        // Nothing new: nothing to say.
        assert!(s.apply(&[pod("a", false)], now).is_empty());
        // A second pod gets the next address.
        let r = s.apply(&[pod("a", false), pod("b", false)], now);
        assert_eq!(status(&r[0])["podIP"], "10.244.3.3");
        // Deleting: gone, once.
        let r = s.apply(&[pod("a", true), pod("b", false)], now);
        assert_eq!(r.len(), 1);
        assert!(r[0].gone && r[0].uid == "a");
        assert!(s.apply(&[pod("a", true), pod("b", false)], now).is_empty());
        // Removed: its address is free again.
        s.apply(&[pod("b", false)], now);
        let r = s.apply(&[pod("b", false), pod("c", false)], now);
        assert_eq!(status(&r[0])["podIP"], "10.244.3.2");
        // A new session hears about every pod again.
        assert_eq!(s.all().len(), 2);
    }

    #[test]
    fn delayed_pods_are_creating_first() {
        let mut s = pods();
        s.delay = Duration::from_secs(5);
        s.set_cidr("10.244.0.0/24");
        let now = Instant::now();
        let r = s.apply(&[pod("a", false)], now);
        assert_eq!(status(&r[0])["phase"], "Pending");
        assert_eq!(
            status(&r[0])["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        assert!(s.advance(now + Duration::from_secs(1)).is_empty());
        assert_eq!(s.next_due(), Some(now + Duration::from_secs(5)));
        let r = s.advance(now + Duration::from_secs(5));
        assert_eq!(status(&r[0])["phase"], "Running");
    }

    #[test]
    fn options_and_addresses() {
        let args: Vec<String> = [
            "--server",
            "https://127.0.0.1:9443",
            "--token",
            "t",
            "--ca-hash",
            "h",
            "--count",
            "7",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = Options::parse(&args).unwrap();
        assert_eq!(o.count, 7);
        assert!(Options::parse(&args[..4]).is_err());
        assert_eq!(node_ip(0), Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(node_ip(300), Ipv4Addr::new(100, 64, 1, 45));
        assert_eq!(
            parse_cidr("10.244.3.0/24"),
            Some((u32::from(Ipv4Addr::new(10, 244, 3, 0)), 256))
        );
        assert_eq!(parse_cidr("nonsense"), None);
    }
}
