//! The Kubernetes REST API over HTTPS.
//!
//! Layers, from the wire inwards:
//!
//! * [`http`]: TLS, HTTP/1.1 and HTTP/2, authentication, content negotiation (JSON, YAML,
//!   server-side Tables), request bodies (JSON, YAML, protobuf), streaming watches. The only
//!   module that knows wire formats.
//! * [`authz`]: who may do what: RBAC authorization of every HTTP request (upstream's rules and
//!   403 texts, over an in-memory index of the RBAC objects), impersonation, escalation
//!   prevention and the bootstrap policy. In-process clients are the control plane, not authorized.
//! * [`route`]: the URL grammar.
//! * [`objects`]: the verbs on stored objects (Kubernetes object semantics over the store), which
//!   the in-process [`client::InProcessClient`] exposes to controllers unchanged.
//! * [`strategy`], [`alloc`], [`gc`]: per-kind rules, Service IP/port allocation, and cascading
//!   deletion (owner references, finalizers, namespace termination).
//! * [`machinery`]: the seam to `keel-api`'s pure functions.

pub mod alloc;
pub mod authn;
pub mod authz; // RBAC authorization and impersonation of HTTP requests
pub mod binding; // pods/binding, for HTTP and the in-process client
pub mod bootstrap;
pub mod client;
pub mod eviction;
pub mod gc;
pub mod http;
mod machinery;
mod metrics; // metrics.k8s.io from a MetricsSource
pub mod objects;
mod protobuf;
mod reviews;
pub mod route;
mod strategy;
pub mod streams; // pods/log, exec, attach, portforward through the node gate
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

pub use alloc::Cidr;
pub use objects::Objects;

/// Cluster-wide settings the API server needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the API is served (for the `kubernetes` Endpoints and cluster-info).
    pub advertise: SocketAddr,
    pub service_cidr: Cidr,
    pub node_port_range: (u16, u16),
    pub cluster_domain: String,
    /// Where `metrics.k8s.io` comes from (the node gate's usage samples); not served if `None`.
    pub metrics: Option<Arc<dyn keel_api::metrics::MetricsSource>>,
    /// How long pods tolerate `node.kubernetes.io/not-ready:NoExecute` unless they say
    /// otherwise (the DefaultTolerationSeconds admission plugin; upstream's flag of that name).
    pub default_not_ready_toleration_seconds: i64,
    /// The same for `node.kubernetes.io/unreachable:NoExecute`.
    pub default_unreachable_toleration_seconds: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            advertise: SocketAddr::from(([127, 0, 0, 1], 6443)),
            service_cidr: Cidr::parse("10.96.0.0/12").unwrap_or(Cidr {
                base: std::net::Ipv4Addr::new(10, 96, 0, 0),
                prefix: 12,
            }),
            node_port_range: (30000, 32767),
            cluster_domain: "cluster.local".into(),
            metrics: None,
            default_not_ready_toleration_seconds: keel_api::defaults::DEFAULT_TOLERATION_SECONDS,
            default_unreachable_toleration_seconds: keel_api::defaults::DEFAULT_TOLERATION_SECONDS,
        }
    }
}

/// The API server's state: objects over a store, plus authentication.
pub struct ApiServer {
    pub objects: Arc<Objects>,
    pub authn: authn::Authenticator,
    /// Reaches pods' nodes for `pods/log`, `exec`, `attach`, `portforward` (the node gate).
    pub streams: Option<Arc<dyn keel_api::streams::PodStreams>>,
}
