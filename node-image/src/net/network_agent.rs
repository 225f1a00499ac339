//! The pod network as the agent runs it: one reconcile loop ([`serve`]) fed through the agent's
//! pod link (the pod CIDR from the Welcome, the peer sets from the session; it answers with this
//! node's overlay endpoint, which the session reports at once), and the few process-wide
//! accessors the rest of the agent uses: the report's `NetworkUnavailable` condition
//! ([`network_condition`]), the session's service tables ([`offer_services`]: ClusterIPs in
//! nftables, [`super::services`]; Service names at 10.96.0.10, [`super::dns`]) and, for the pod
//! manager, [`attach`] and [`detach`] of pod sandboxes.
//!
//! The loop is level-triggered: whenever the pod CIDR, the peer set or the service table
//! changes, and every [`RESYNC`] regardless, it applies the whole desired state again
//! ([`NodeNet::apply`] is idempotent), so a device someone deleted comes back.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use keel_proto::{Condition, OverlayEndpoint, OverlayPeers, ServiceTable};
use tokio::sync::watch;

use super::cidr::Cidr;
use super::dns;
use super::overlay::{self, Peer};
use super::pod_network::{find_underlay, NetError, NodeNet, PodIp};
use super::rtnl::mac_string;
use super::services;

/// The cluster's pod range (flannel's and kubeadm's default).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// How often the whole state is applied again when nothing changed.
const RESYNC: Duration = Duration::from_secs(30);
/// How soon after a failure it is tried again.
const RETRY: Duration = Duration::from_secs(2);
/// PID 1 creates this once the datapath modules are loaded.
const MODULES_READY: &str = "/run/keel/modules.ready";

/// What the loop needs from the agent's configuration.
pub struct Settings {
    /// `keel.ip2`'s address: the overlay runs over NIC 1 when there is one.
    pub preferred_ip: Option<Ipv4Addr>,
    /// `/var/lib/keel`: allocations go to `ipam/` below it.
    pub state_dir: PathBuf,
    /// This node's name (its endpoints serve `externalTrafficPolicy: Local` NodePorts).
    pub node_name: String,
}

#[derive(Default)]
struct Status {
    /// The network as last applied successfully; `None` until then or after a failure.
    net: Option<Arc<NodeNet>>,
    endpoint: Option<Ipv4Addr>,
    /// Why it is not up, for the condition's message.
    problem: String,
}

static STATUS: LazyLock<Mutex<Status>> = LazyLock::new(|| Mutex::new(Status::default()));
/// The newest service table from the control plane.
static SERVICES: LazyLock<watch::Sender<Option<Arc<ServiceTable>>>> =
    LazyLock::new(|| watch::Sender::new(None));

/// The node's Service rules as last programmed (later tables are applied as diffs).
static PROGRAMMER: LazyLock<Mutex<services::Programmer>> =
    LazyLock::new(|| Mutex::new(services::Programmer::default()));

/// The version of the last service table programmed (for the console).
static LAST_SERVICES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The session received a service table (ClusterIPs and their endpoints).
pub fn offer_services(t: ServiceTable) {
    SERVICES.send_replace(Some(Arc::new(t)));
}

fn status() -> std::sync::MutexGuard<'static, Status> {
    STATUS.lock().unwrap_or_else(|p| p.into_inner())
}

/// This node's end of the overlay, once known.
fn overlay_endpoint() -> Option<OverlayEndpoint> {
    status().endpoint.map(|a| OverlayEndpoint {
        address: a.to_string(),
        vtep_mac: mac_string(&overlay::vtep_mac(a)),
    })
}

/// `NetworkUnavailable`: False only while the pod network is up.
pub fn network_condition() -> Condition {
    let s = status();
    let (status, reason, message) = match &s.net {
        Some(n) => (
            "False",
            "KeelNetworkReady",
            format!("pod network {} is up (bridge cni0, VXLAN keel.1)", n.pod_cidr),
        ),
        None => ("True", "KeelNetworkNotReady", s.problem.clone()),
    };
    Condition {
        r#type: "NetworkUnavailable".into(),
        status: status.into(),
        reason: reason.into(),
        message,
    }
}

/// Attaches a pod sandbox (its network namespace, e.g. `/proc/PID/ns/net`) to the pod network.
pub async fn attach(netns: PathBuf, pod_uid: String) -> Result<PodIp, NetError> {
    let net = status().net.clone().ok_or(NetError::NotReady)?;
    blocking(move || net.attach(&netns, &pod_uid)).await
}

/// Detaches a pod and frees its address.
pub async fn detach(pod_uid: String) -> Result<Option<Ipv4Addr>, NetError> {
    let net = status().net.clone().ok_or(NetError::NotReady)?;
    blocking(move || net.detach(&pod_uid)).await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(NetError::NotReady))
}

/// Keeps the pod network applied. `pod_cidr` is the node's range as the control plane assigned
/// it (empty until then), `peers` the newest peer set; `overlay` gets this node's endpoint, and
/// is touched again whenever the network goes up or down so that the session reports the
/// changed `NetworkUnavailable` condition at once.
pub async fn serve(
    settings: Settings,
    mut pod_cidr: watch::Receiver<String>,
    mut peers_rx: watch::Receiver<Option<Arc<OverlayPeers>>>,
    overlay: watch::Sender<Option<OverlayEndpoint>>,
) {
    let changed = || {
        overlay.send_replace(overlay_endpoint());
    };
    let cluster: Cidr = match CLUSTER_CIDR.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel: pod network: {e}");
            return;
        }
    };
    wait_for_modules().await;
    start_dns();
    tokio::spawn(super::netpol::serve());
    let mut services_rx = SERVICES.subscribe();
    let mut last_problem = String::new();
    let mut last_peers: Option<Vec<Peer>> = None;
    loop {
        let cidr_text = pod_cidr.borrow_and_update().clone();
        let offered = peers_rx.borrow_and_update().clone();
        let table = services_rx.borrow_and_update().clone();
        let result = reconcile(
            &settings,
            cluster,
            &cidr_text,
            offered.as_deref(),
            table.as_deref(),
            &changed,
        )
        .await;
        let wait = match result {
            Ok((net, peers)) => {
                if last_peers.as_ref() != Some(&peers) {
                    let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
                    eprintln!(
                        "keel: pod network {} up; overlay peers: {}",
                        net.pod_cidr,
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    );
                    last_peers = Some(peers);
                }
                last_problem.clear();
                let was_up = status().net.is_some();
                {
                    let mut s = status();
                    s.net = Some(Arc::new(net));
                    s.problem.clear();
                }
                if !was_up {
                    changed();
                }
                RESYNC
            }
            Err(problem) => {
                if problem != last_problem {
                    eprintln!("keel: pod network: {problem}");
                    last_problem = problem.clone();
                }
                let was_up = {
                    let mut s = status();
                    s.problem = problem;
                    s.net.take().is_some()
                };
                if was_up {
                    changed();
                }
                last_peers = None;
                RETRY
            }
        };
        tokio::select! {
            r = pod_cidr.changed() => if r.is_err() { return },
            _ = peers_rx.changed() => {}
            _ = services_rx.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One pass: find the underlay, report it, and apply the network if the pod CIDR is known.
async fn reconcile(
    settings: &Settings,
    cluster: Cidr,
    cidr_text: &str,
    offered: Option<&OverlayPeers>,
    table: Option<&ServiceTable>,
    changed: &impl Fn(),
) -> Result<(NodeNet, Vec<Peer>), String> {
    let preferred = settings.preferred_ip;
    let underlay = tokio::task::spawn_blocking(move || find_underlay(preferred, cluster))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let new_endpoint = {
        let mut s = status();
        let new = s.endpoint != Some(underlay.address);
        s.endpoint = Some(underlay.address);
        new
    };
    if new_endpoint {
        changed();
    }
    if cidr_text.is_empty() {
        return Err("waiting for the control plane to assign this node a pod CIDR".into());
    }
    let pod_cidr: Cidr = cidr_text
        .parse()
        .map_err(|e| format!("pod CIDR from the control plane: {e}"))?;
    let (peers, bad) = match offered {
        Some(p) => overlay::peers_from(p, Some(underlay.address)),
        None => (Vec::new(), Vec::new()),
    };
    if !bad.is_empty() {
        eprintln!("keel: pod network: ignoring malformed peers {}", bad.join(", "));
    }
    let net = NodeNet {
        cluster,
        pod_cidr,
        underlay,
        ipam_root: settings.state_dir.join("ipam"),
    };
    let (ports, bad) = table
        .map(|t| services::from_proto(t, &settings.node_name))
        .unwrap_or_default();
    if !bad.is_empty() {
        eprintln!(
            "keel: services: not served (malformed or not TCP/UDP): {}",
            bad.join(", ")
        );
    }
    let version = table.map(|t| t.version).unwrap_or(0);
    let (net, peers) = tokio::task::spawn_blocking(move || {
        net.apply(&peers)?;
        let start = std::time::Instant::now();
        PROGRAMMER
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&ports)
            .map_err(|source| NetError::Netlink {
                what: "programming Services (nftables)".into(),
                source,
            })?;
        if LAST_SERVICES.swap(version, std::sync::atomic::Ordering::Relaxed) != version {
            eprintln!(
                "keel: services v{version}: {} service ports programmed in {} ms",
                ports.len(),
                start.elapsed().as_millis()
            );
        }
        Ok::<_, NetError>((net, peers))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    Ok((net, peers))
}

/// Cluster DNS on a thread of its own: the agent's runtime has one thread, and answers should
/// not wait behind pod work.
fn start_dns() {
    let spawned = std::thread::Builder::new().name("dns".into()).spawn(|| {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(serve_dns()),
            Err(e) => eprintln!("keel: cluster DNS: no runtime: {e}"),
        }
    });
    if let Err(e) = spawned {
        eprintln!("keel: cluster DNS: no thread: {e}");
    }
}

/// Cluster DNS at 10.96.0.10 for as long as the agent runs (re-bound after any failure).
async fn serve_dns() {
    let mut last = String::new();
    loop {
        let problem = match tokio::task::spawn_blocking(dns::ensure_address).await {
            Ok(Ok(())) => match tokio::net::UdpSocket::bind((dns::DNS_IP, 53)).await {
                Ok(sock) => match dns::serve(sock, SERVICES.subscribe()).await {
                    Ok(()) => return,
                    Err(e) => format!("serving: {e}"),
                },
                Err(e) => format!("binding {}:53: {e}", dns::DNS_IP),
            },
            Ok(Err(e)) => format!("adding {} to lo: {e}", dns::DNS_IP),
            Err(e) => e.to_string(),
        };
        if problem != last {
            eprintln!("keel: cluster DNS: {problem}");
            last = problem;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// On a Keel node, waits (a while) for PID 1 to have loaded the datapath modules; elsewhere the
/// kernel's own module autoloading serves.
async fn wait_for_modules() {
    if !Path::new("/run/keel").is_dir() {
        return;
    }
    for _ in 0..100 {
        if Path::new(MODULES_READY).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
