//! The control-plane side of the node protocol (`proto/node.proto`): a gRPC server on its own
//! listener that nodes dial.
//!
//! * `GetClusterInfo` — unauthenticated, returns the CA so a joining node can check its pin.
//! * `Join` — bootstrap token + CSR in, node client certificate out ([`join`](crate::join)).
//! * `Session` — mutual TLS, one stream per node: reports become the Node object, heartbeats
//!   renew its Lease ([`session`](crate::session)).
//! * Down the session go the node's pods, as full snapshots whenever they change
//!   ([`pods`](crate::pods)).
//! * And the pod overlay's peers: every other node's pod CIDR and VXLAN endpoint
//!   ([`peers`](crate::peers)).
//! * And the service table: every ClusterIP with its ready endpoints, which nodes program as
//!   nftables DNAT ([`service_table`](crate::service_table)).
//! * And the NetworkPolicy table: the node's pods that policies isolate, with the peer
//!   addresses and ports they may talk to ([`policy_table`](crate::policy_table)).
//! * Streams for logs, exec, attach and port-forward: a request down the session, answered by
//!   the node with a `Stream` RPC it opens ([`streams`](crate::streams)).
//! * A lifecycle loop marks nodes with stale Leases unreachable and restores them when they
//!   come back ([`lifecycle`](crate::lifecycle)).
//!
//! Everything the gate writes goes through [`keel_api::client::ApiClient`], the same verbs an
//! out-of-process client has. TLS is the API server's own rustls config (see [`tls`](crate::tls)).
//!
//! Entry point: [`serve`].

mod gate;
mod ipam;
mod join;
mod lifecycle;
mod node_status;
mod peers;
mod pods;
mod policy_table;
mod service;
mod service_table;
mod session;
pub mod streams;
mod tls;
mod usage;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel_api::client::ApiClient;
use keel_auth::Pki;
use keel_proto::node_gate_server::NodeGateServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

pub use ipam::{CidrError, PodCidrs};
pub use streams::Streams;
pub use tls::PeerInfo;
pub use usage::UsageStore;

/// Errors that stop the gate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the resource registry has no {0}")]
    MissingResource(&'static str),
    #[error("node gate transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What the gate needs.
pub struct NodeGateConfig {
    /// The serving TLS config (e.g. `pki.server_tls_config(&[b"h2"])`): client certificates
    /// optional but verified by the cluster CA. ALPN is forced to `h2`.
    pub tls: Arc<rustls::ServerConfig>,
    /// Signs node CSRs and hands out the CA.
    pub pki: Arc<Pki>,
    /// Reads bootstrap-token Secrets, writes Nodes, Leases, CSRs, events, pod statuses.
    pub client: Arc<dyn ApiClient>,
    /// A node whose Lease has not been renewed for this long is marked unreachable (40 s).
    pub grace_period: Duration,
    /// How often nodes heartbeat (10 s); sent to them in the Welcome.
    pub heartbeat_seconds: u32,
    /// Shown to joining nodes.
    pub cluster_name: String,
    /// Where node pod CIDRs come from; `None` if something else assigns `spec.podCIDR`.
    pub pod_cidrs: Option<PodCidrs>,
    /// Where nodes' usage reports go (the API server's `metrics.k8s.io` reads it).
    pub usage: Arc<UsageStore>,
    /// Streams to nodes for logs, exec, attach and port-forward; give the API server a clone.
    pub streams: Arc<Streams>,
}

impl NodeGateConfig {
    /// The defaults: grace period 40 s, heartbeat every 10 s, cluster name `keel`, node pod
    /// CIDRs from `10.244.0.0/16` in `/24`s.
    pub fn new(tls: Arc<rustls::ServerConfig>, pki: Arc<Pki>, client: Arc<dyn ApiClient>) -> Self {
        NodeGateConfig {
            tls,
            pki,
            client,
            grace_period: Duration::from_secs(40),
            heartbeat_seconds: 10,
            cluster_name: "keel".to_string(),
            pod_cidrs: Some(PodCidrs::flannel_default()),
            usage: Arc::new(UsageStore::new()),
            streams: Streams::new(),
        }
    }
}

/// Serves the node gate on `listener` until `shutdown` completes; then stops accepting, ends
/// every node session (nodes reconnect to the next instance by themselves) and returns.
pub async fn serve(
    listener: TcpListener,
    config: NodeGateConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(
        gate::Gate::new(
            config.pki,
            config.client,
            config.heartbeat_seconds.max(1),
            config.grace_period,
            config.cluster_name,
            config.pod_cidrs,
            stop_rx.clone(),
        )
        .map(|mut g| {
            g.usage = config.usage;
            g.streams = config.streams;
            g
        })?,
    );
    let mut tls = (*config.tls).clone();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "node gate listening");
    }
    let incoming = tls::accept_loop(listener, Arc::new(tls), stop_rx.clone());
    let lifecycle = tokio::spawn(lifecycle::run(gate.clone()));

    let mut stop_rx_server = stop_rx;
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(15)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Streams (logs, exec output, port-forward) flow from nodes: with HTTP/2's default 64 KiB
        // windows a node behind a slow link sends one window per round trip.
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .add_service(NodeGateServer::new(service::Service { gate }))
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async move {
            gate::stopped(&mut stop_rx_server).await;
        })
        .await;
    lifecycle.abort();
    tracing::info!("node gate stopped");
    result.map_err(Error::from)
}
