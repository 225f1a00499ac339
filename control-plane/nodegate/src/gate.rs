//! The state shared by the gate's handlers, sessions and lifecycle loop.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::client::ApiClient;
use keel_api::registry::{self, ResourceType};
use keel_auth::Pki;
use tokio::sync::watch;

use crate::{Error, PodCidrs};

/// The resource types the gate writes, looked up once in the registry.
pub(crate) struct Kinds {
    pub nodes: &'static ResourceType,
    pub leases: &'static ResourceType,
    pub secrets: &'static ResourceType,
    pub configmaps: &'static ResourceType,
    pub csrs: &'static ResourceType,
    pub pods: &'static ResourceType,
    pub events: &'static ResourceType,
}

impl Kinds {
    pub(crate) fn resolve() -> Result<Kinds, Error> {
        let find = |group: &'static str, version: &'static str, plural: &'static str| {
            registry::find(group, version, plural).ok_or(Error::MissingResource(plural))
        };
        Ok(Kinds {
            nodes: find("", "v1", "nodes")?,
            leases: find("coordination.k8s.io", "v1", "leases")?,
            secrets: find("", "v1", "secrets")?,
            configmaps: find("", "v1", "configmaps")?,
            csrs: find("certificates.k8s.io", "v1", "certificatesigningrequests")?,
            pods: find("", "v1", "pods")?,
            events: find("", "v1", "events")?,
        })
    }
}

pub(crate) struct Gate {
    pub pki: Arc<Pki>,
    pub client: Arc<dyn ApiClient>,
    pub kinds: Kinds,
    pub heartbeat_seconds: u32,
    pub grace_period: Duration,
    pub cluster_name: String,
    /// Node pod CIDR allocation, if the gate does it; the lock serialises allocations.
    pub pod_cidrs: Option<PodCidrs>,
    pub ipam_lock: tokio::sync::Mutex<()>,
    /// The nodes' latest usage samples.
    pub usage: Arc<crate::UsageStore>,
    /// Pending and open streams to nodes (logs, exec, attach, port-forward).
    pub streams: Arc<crate::streams::Streams>,
    /// Becomes `true` when the gate shuts down; sessions and loops end on it.
    pub shutdown: watch::Receiver<bool>,
    /// Every bound pod by node, for the sessions' desired-pods feeds.
    pub pod_index: crate::pods::PodIndex,
    /// Every node's overlay endpoint, for the sessions' peer feeds.
    pub peer_index: crate::peers::PeerIndex,
    /// Nodes whose status the lifecycle loop overwrote; their sessions post it again.
    repost: Mutex<HashSet<String>>,
}

impl Gate {
    pub(crate) fn new(
        pki: Arc<Pki>,
        client: Arc<dyn ApiClient>,
        heartbeat_seconds: u32,
        grace_period: Duration,
        cluster_name: String,
        pod_cidrs: Option<PodCidrs>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Gate, Error> {
        Ok(Gate {
            pki,
            client,
            kinds: Kinds::resolve()?,
            heartbeat_seconds,
            grace_period,
            cluster_name,
            pod_cidrs,
            ipam_lock: tokio::sync::Mutex::new(()),
            usage: Arc::default(),
            streams: Arc::default(),
            shutdown,
            pod_index: Default::default(),
            peer_index: Default::default(),
            repost: Mutex::new(HashSet::new()),
        })
    }

    pub(crate) fn request_status_repost(&self, node: &str) {
        if let Ok(mut set) = self.repost.lock() {
            set.insert(node.to_string());
        }
    }

    /// True (once) if the node's status should be posted again.
    pub(crate) fn take_status_repost(&self, node: &str) -> bool {
        self.repost.lock().map(|mut s| s.remove(node)).unwrap_or(false)
    }
}

/// Completes once the gate is shutting down (or its shutdown sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here, not across the caller's awaits.
    let _ = rx.wait_for(|stop| *stop).await.map(|_| ());
}

/// Waits until `events` reports a change (anything but a bookmark, an error or its end).
/// Returns false when the session's outbound side closed or the gate is shutting down: the
/// caller's feed should end.
pub(crate) async fn until_changed<S>(
    events: &mut S,
    out: &crate::session::Outbound,
    shutdown: &mut watch::Receiver<bool>,
) -> bool
where
    S: futures::Stream<Item = keel_api::status::ApiResult<keel_api::client::WatchEvent>> + Unpin,
{
    use futures::StreamExt;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(e)) if e.kind == keel_api::client::WatchEventKind::Bookmark => continue,
                _ => return true,
            },
            _ = out.closed() => return false,
            _ = stopped(shutdown) => return false,
        }
    }
}

/// Sends a node its snapshot whenever it differs from the last one sent: on connect (once
/// `snapshot` has one), then after each change `changes` signals, at most every `min_interval`
/// so a burst (a Deployment scaling up) becomes one message. Ends when the session's outbound
/// side closes or the gate shuts down.
pub(crate) async fn feed_snapshots<S, T: PartialEq>(
    mut changes: watch::Receiver<S>,
    out: &crate::session::Outbound,
    shutdown: &mut watch::Receiver<bool>,
    min_interval: Duration,
    mut snapshot: impl FnMut() -> Option<(u64, T)>,
    message: impl Fn(u64, &T) -> keel_proto::ControlMessage,
) {
    let mut last_sent: Option<T> = None;
    loop {
        let _ = changes.borrow_and_update();
        if let Some((version, current)) = snapshot() {
            if last_sent.as_ref() != Some(&current) {
                if out.send(Ok(message(version, &current))).await.is_err() {
                    return;
                }
                last_sent = Some(current);
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = out.closed() => return,
            _ = stopped(shutdown) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(min_interval) => {}
            _ = out.closed() => return,
            _ = stopped(shutdown) => return,
        }
    }
}
