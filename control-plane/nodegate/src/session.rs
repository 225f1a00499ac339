//! `Session`: one long-lived stream per node over mutual TLS.
//!
//! The node's identity comes from its client certificate only (CN `system:node:<name>`, O
//! `system:nodes`), never from a message: every write below is keyed by that name, so a node can
//! touch only its own Node, Lease, events and the pods bound to it.
//!
//! The node sends a `NodeReport` first and whenever something changes, then a `Heartbeat`
//! every `heartbeat_seconds`. Reports create or update the Node (status through the `status`
//! subresource, as the kubelet does); heartbeats renew the Lease. The status is also posted
//! again when the lifecycle loop overwrote it while the node was away, and at least every
//! [`STATUS_REFRESH`] so `lastHeartbeatTime` stays meaningful.

use std::sync::Arc;
use std::time::Duration;

use keel_api::client::{Patch, WriteOptions};
use keel_api::status::{ApiError, ApiResult};
use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::node_message::Msg as NodeMsg;
use keel_proto::{ControlMessage, NodeEvent, NodeMessage, NodeReport, PodStatusReport, Welcome};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use crate::gate::Gate;
use crate::node_status::{self, Transitions, LEASE_NAMESPACE};

/// The status is posted again at least this often while the node is connected.
const STATUS_REFRESH: Duration = Duration::from_secs(60);

pub(crate) type Outbound = mpsc::Sender<Result<ControlMessage, Status>>;

/// The Welcome for a node: its name, the heartbeat interval and its pod CIDR if assigned.
pub(crate) async fn welcome(gate: &Gate, node: &str) -> (ControlMessage, String) {
    let pod_cidr = match gate.client.get(gate.kinds.nodes, None, node.to_string()).await {
        Ok(n) => n
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Err(_) => String::new(),
    };
    (welcome_message(gate, node, &pod_cidr), pod_cidr)
}

fn welcome_message(gate: &Gate, node: &str, pod_cidr: &str) -> ControlMessage {
    ControlMessage {
        msg: Some(ControlMsg::Welcome(Welcome {
            node_name: node.to_string(),
            heartbeat_seconds: gate.heartbeat_seconds,
            pod_cidr: pod_cidr.to_string(),
        })),
    }
}

/// What one session knows about its node.
struct NodeSession {
    gate: Arc<Gate>,
    node: String,
    uid: String,
    last_report: Option<NodeReport>,
    transitions: Transitions,
    last_status_post: Option<Instant>,
    out: Outbound,
    /// The pod CIDR the node was last told (Welcome), and the one its Node holds.
    told_cidr: String,
    pod_cidr: String,
    /// The overlay endpoint this session wrote to the Node's annotations.
    overlay_written: Option<(String, String)>,
}

/// Serves one session until the node goes away or the gate shuts down.
pub(crate) async fn run(
    gate: Arc<Gate>,
    node: String,
    told_cidr: String,
    mut inbound: Streaming<NodeMessage>,
    out: Outbound,
) {
    let mut shutdown = gate.shutdown.clone();
    let mut s = NodeSession {
        gate,
        node,
        uid: String::new(),
        last_report: None,
        transitions: Transitions::new(),
        last_status_post: None,
        out: out.clone(),
        pod_cidr: told_cidr.clone(),
        told_cidr,
        overlay_written: None,
    };
    tracing::info!(node = %s.node, "node session opened");
    let stream_generation = s.gate.streams.attach(&s.node, out.clone());
    let feeder = tokio::spawn(crate::pods::feed(s.gate.clone(), s.node.clone(), out.clone()));
    let peers = tokio::spawn(crate::peers::feed(s.gate.clone(), s.node.clone(), out.clone()));
    let services = tokio::spawn(crate::service_table::feed(
        s.gate.clone(),
        s.node.clone(),
        out.clone(),
    ));
    let policies = tokio::spawn(crate::policy_table::feed(
        s.gate.clone(),
        s.node.clone(),
        out.clone(),
    ));
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = crate::gate::stopped(&mut shutdown) => {
                let _ = out.send(Err(Status::unavailable("the control plane is shutting down"))).await;
                break;
            }
        };
        match msg {
            Ok(Some(NodeMessage { msg: Some(m) })) => s.handle(m).await,
            Ok(Some(NodeMessage { msg: None })) => {}
            Ok(None) => {
                tracing::info!(node = %s.node, "node closed its session");
                break;
            }
            Err(status) => {
                tracing::info!(node = %s.node, error = %status.message(), "node session broke");
                break;
            }
        }
    }
    s.gate.streams.detach(&s.node, stream_generation);
    feeder.abort();
    peers.abort();
    services.abort();
    policies.abort();
}

impl NodeSession {
    async fn handle(&mut self, m: NodeMsg) {
        let result = match m {
            NodeMsg::Report(r) => self.on_report(r).await,
            NodeMsg::Heartbeat(_) => self.on_heartbeat().await,
            NodeMsg::PodStatus(p) => self.on_pod_status(p).await,
            NodeMsg::Event(e) => self.on_event(e).await,
            NodeMsg::Usage(u) => {
                self.gate.usage.record(&self.node, &u);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(node = %self.node, error = %e, "node session: API write failed");
        }
    }

    async fn on_report(&mut self, report: NodeReport) -> ApiResult<()> {
        self.last_report = Some(report);
        let status = self.sync_status().await;
        let lease = self.renew_lease().await;
        status.and(lease)
    }

    /// Registers the Node if this session has not yet, then posts the last report's status.
    async fn sync_status(&mut self) -> ApiResult<()> {
        let Some(report) = self.last_report.clone() else {
            return Ok(());
        };
        if self.uid.is_empty() {
            self.register(&report).await?;
        }
        if self.pod_cidr.is_empty() && self.gate.pod_cidrs.is_some() {
            let g = &self.gate;
            let node = g.client.get(g.kinds.nodes, None, self.node.clone()).await?;
            self.pod_cidr = self.ensure_pod_cidr(&node).await?;
        }
        if self.pod_cidr != self.told_cidr {
            // A second Welcome: the node learns its pod CIDR without reconnecting.
            let msg = welcome_message(&self.gate, &self.node, &self.pod_cidr);
            if self.out.send(Ok(msg)).await.is_ok() {
                self.told_cidr = self.pod_cidr.clone();
            }
        }
        self.post_status().await?;
        self.ensure_overlay(&report).await
    }

    /// Records the node's overlay endpoint on its Node (annotations), when it reported one that
    /// differs from what this session last wrote.
    async fn ensure_overlay(&mut self, report: &NodeReport) -> ApiResult<()> {
        let Some(o) = report.overlay.as_ref().filter(|o| !o.address.is_empty()) else {
            return Ok(());
        };
        let wanted = (o.address.clone(), o.vtep_mac.clone());
        if self.overlay_written.as_ref() == Some(&wanted) {
            return Ok(());
        }
        let g = &self.gate;
        let patch = json!({"metadata": {"annotations": {
            node_status::OVERLAY_ADDRESS_ANNOTATION: wanted.0,
            node_status::VTEP_MAC_ANNOTATION: wanted.1,
        }}});
        g.client
            .patch(
                g.kinds.nodes,
                None,
                self.node.clone(),
                Patch::Merge(patch),
                None,
                WriteOptions::default(),
            )
            .await?;
        tracing::info!(node = %self.node, address = %wanted.0, "recorded overlay endpoint");
        self.overlay_written = Some(wanted);
        Ok(())
    }

    /// The Node's pod CIDR, allocating one if the gate does IPAM and it has none.
    async fn ensure_pod_cidr(&self, node: &Value) -> ApiResult<String> {
        let current = node
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let g = &self.gate;
        let Some(cidrs) = g.pod_cidrs.filter(|_| current.is_empty()) else {
            return Ok(current.to_string());
        };
        let _serialised = g.ipam_lock.lock().await;
        let nodes = g.client.list(g.kinds.nodes, None, Default::default()).await?;
        let used: std::collections::HashSet<String> = nodes["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| {
                n.pointer("/spec/podCIDR")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        let Some(cidr) = cidrs.first_free(&used) else {
            tracing::warn!(node = %self.node, "no free pod CIDR left in the cluster range");
            return Ok(String::new());
        };
        g.client
            .patch(
                g.kinds.nodes,
                None,
                self.node.clone(),
                Patch::Merge(json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})),
                None,
                WriteOptions::default(),
            )
            .await?;
        tracing::info!(node = %self.node, pod_cidr = %cidr, "allocated pod CIDR");
        Ok(cidr)
    }

    /// Creates the Node if it does not exist, else learns its uid and condition history.
    async fn register(&mut self, report: &NodeReport) -> ApiResult<()> {
        let g = &self.gate;
        let now = keel_api::time::now_rfc3339();
        let mut created_now = false;
        let existing = match g.client.get(g.kinds.nodes, None, self.node.clone()).await {
            Ok(n) => n,
            Err(e) if e.code == 404 => {
                let obj = node_status::node_json(&self.node, report, &now);
                match g
                    .client
                    .create(g.kinds.nodes, None, obj, WriteOptions::default())
                    .await
                {
                    Ok(created) => {
                        tracing::info!(node = %self.node, "registered node");
                        created_now = true;
                        created
                    }
                    // Raced with another session of the same node: use theirs.
                    Err(e) if e.code == 409 => g.client.get(g.kinds.nodes, None, self.node.clone()).await?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        self.uid = existing
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.transitions = node_status::transitions_of(&existing);
        self.announce_boot(&existing, report, created_now).await;
        self.ensure_labels(&existing, report).await
    }

    /// Events for a node that (re)started, as the kubelet posts them, and the boot phases as
    /// an annotation ([`node_status::BOOT_PHASES_ANNOTATION`]). Best effort: failures are logged.
    async fn announce_boot(&self, node: &Value, report: &NodeReport, created_now: bool) {
        let boot_id = report
            .system_info
            .as_ref()
            .map(|s| s.boot_id.as_str())
            .unwrap_or_default();
        let known_boot = node
            .pointer("/status/nodeInfo/bootID")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let rebooted = !created_now && !known_boot.is_empty() && known_boot != boot_id;
        if !(created_now || rebooted) {
            return;
        }
        if rebooted {
            let msg = format!("Node {} has been rebooted, boot id: {boot_id}", self.node);
            self.log_failure(self.node_event("Warning", "Rebooted", &msg).await);
        }
        let phases = node_status::boot_phases_text(&report.boot_phases);
        let msg = if phases.is_empty() {
            "Starting keel node agent.".to_string()
        } else {
            format!("Starting keel node agent; boot phases: {phases}")
        };
        self.log_failure(self.node_event("Normal", "Starting", &msg).await);
        if !phases.is_empty() {
            let g = &self.gate;
            let patch = json!({"metadata": {"annotations": {node_status::BOOT_PHASES_ANNOTATION: phases}}});
            let r = g
                .client
                .patch(
                    g.kinds.nodes,
                    None,
                    self.node.clone(),
                    Patch::Merge(patch),
                    None,
                    WriteOptions::default(),
                )
                .await;
            self.log_failure(r.map(|_| ()));
        }
    }

    fn log_failure(&self, r: ApiResult<()>) {
        if let Err(e) = r {
            tracing::warn!(node = %self.node, error = %e, "node session: API write failed");
        }
    }

    async fn node_event(&self, kind: &str, reason: &str, message: &str) -> ApiResult<()> {
        self.on_event(NodeEvent {
            r#type: kind.into(),
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        })
        .await
    }

    async fn ensure_labels(&self, node: &Value, report: &NodeReport) -> ApiResult<()> {
        let wanted = node_status::node_labels(&self.node, &node_status::arch_of(report));
        let labels = node.pointer("/metadata/labels");
        let missing: serde_json::Map<String, Value> = wanted
            .into_iter()
            .filter(|(k, v)| labels.and_then(|l| l.get(k)) != Some(v))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let g = &self.gate;
        g.client
            .patch(
                g.kinds.nodes,
                None,
                self.node.clone(),
                Patch::Merge(json!({"metadata": {"labels": missing}})),
                None,
                WriteOptions::default(),
            )
            .await
            .map(|_| ())
    }

    async fn post_status(&mut self) -> ApiResult<()> {
        let Some(report) = &self.last_report else {
            return Ok(());
        };
        let now = keel_api::time::now_rfc3339();
        let status = node_status::status_json(&self.node, report, &self.transitions, &now);
        let g = &self.gate;
        let updated = match g
            .client
            .patch(
                g.kinds.nodes,
                None,
                self.node.clone(),
                Patch::Merge(json!({"status": status})),
                Some("status".into()),
                WriteOptions::default(),
            )
            .await
        {
            Ok(u) => u,
            Err(e) if e.code == 404 => {
                // `kubectl delete node` while the node runs: register it again on the next
                // heartbeat, as the kubelet does.
                tracing::info!(node = %self.node, "the Node object was deleted; registering it again");
                self.uid.clear();
                self.transitions.clear();
                self.pod_cidr.clear();
                self.overlay_written = None;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.transitions = node_status::transitions_of(&updated);
        self.last_status_post = Some(Instant::now());
        Ok(())
    }

    async fn on_heartbeat(&mut self) -> ApiResult<()> {
        if self.last_report.is_none() {
            tracing::debug!(node = %self.node, "heartbeat before the first report; ignored");
            return Ok(());
        }
        // A failed registration or status write is retried here, not only on the next report.
        let due = self
            .last_status_post
            .is_none_or(|t| t.elapsed() >= STATUS_REFRESH);
        let status = if self.gate.take_status_repost(&self.node) || due || self.uid.is_empty() {
            self.sync_status().await
        } else {
            Ok(())
        };
        // The Lease is the liveness signal: renew it even if the status write failed.
        let lease = self.renew_lease().await;
        status.and(lease)
    }

    async fn renew_lease(&mut self) -> ApiResult<()> {
        let g = &self.gate;
        let now = keel_api::time::now_rfc3339_micros();
        let patch = json!({"spec": {
            "holderIdentity": self.node,
            "leaseDurationSeconds": node_status::LEASE_DURATION_SECONDS,
            "renewTime": now,
        }});
        let ns = Some(LEASE_NAMESPACE.to_string());
        match g
            .client
            .patch(
                g.kinds.leases,
                ns.clone(),
                self.node.clone(),
                Patch::Merge(patch),
                None,
                WriteOptions::default(),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => {
                // The Lease goes with its Node (owner reference): post the status at once, which
                // finds out whether the Node is gone too and registers it again if so.
                self.last_status_post = None;
                let lease = node_status::lease_json(&self.node, &self.uid, &now);
                match g
                    .client
                    .create(g.kinds.leases, ns, lease, WriteOptions::default())
                    .await
                {
                    Ok(_) | Err(ApiError { code: 409, .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A pod's status, accepted only for pods bound to this node. A pod reported `gone` that
    /// is being deleted is removed for good (grace period 0): nothing of it runs any more.
    async fn on_pod_status(&self, p: PodStatusReport) -> ApiResult<()> {
        let g = &self.gate;
        let pod = match g
            .client
            .get(g.kinds.pods, Some(p.namespace.clone()), p.name.clone())
            .await
        {
            Ok(pod) => pod,
            Err(e) if e.code == 404 => return Ok(()), // already gone
            Err(e) => return Err(e),
        };
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let bound_here = pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(self.node.as_str());
        let same_pod = p.uid.is_empty() || p.uid == uid;
        if !bound_here || !same_pod {
            tracing::warn!(
                node = %self.node,
                pod = %format!("{}/{}", p.namespace, p.name),
                "node reported status of a pod not bound to it; ignored"
            );
            return Ok(());
        }
        if !p.status_json.is_empty() {
            let status: Value = serde_json::from_slice(&p.status_json)
                .map_err(|e| ApiError::bad_request(format!("pod status from node is not JSON: {e}")))?;
            g.client
                .patch(
                    g.kinds.pods,
                    Some(p.namespace.clone()),
                    p.name.clone(),
                    Patch::Merge(json!({"status": status})),
                    Some("status".into()),
                    WriteOptions::default(),
                )
                .await?;
        }
        if p.gone {
            if pod.pointer("/metadata/deletionTimestamp").is_none() {
                tracing::warn!(node = %self.node, pod = %p.name, "node reported a pod gone that is not being deleted; ignored");
                return Ok(());
            }
            let options = json!({
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid},
            });
            match g
                .client
                .delete(g.kinds.pods, Some(p.namespace), p.name, options)
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// An event about the node itself (empty name) or one of its pods.
    async fn on_event(&self, e: NodeEvent) -> ApiResult<()> {
        let g = &self.gate;
        let (namespace, involved) = if e.name.is_empty() || (e.name == self.node && e.namespace.is_empty()) {
            (
                "default".to_string(),
                json!({"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self.node}),
            )
        } else {
            let pod = g
                .client
                .get(g.kinds.pods, Some(e.namespace.clone()), e.name.clone())
                .await?;
            if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(self.node.as_str()) {
                tracing::warn!(node = %self.node, "node sent an event about a pod not bound to it; ignored");
                return Ok(());
            }
            (
                e.namespace.clone(),
                json!({
                    "apiVersion": "v1",
                    "kind": if e.kind.is_empty() { "Pod" } else { e.kind.as_str() },
                    "namespace": e.namespace,
                    "name": e.name,
                    "uid": pod.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                }),
            )
        };
        let now = keel_api::time::now_rfc3339();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let involved_name = involved["name"].as_str().unwrap_or_default().to_string();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{involved_name}.{stamp:x}"), "namespace": namespace},
            "involvedObject": involved,
            "reason": e.reason,
            "message": e.message,
            "type": if e.r#type == "Warning" { "Warning" } else { "Normal" },
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        g.client
            .create(g.kinds.events, Some(namespace), event, WriteOptions::default())
            .await
            .map(|_| ())
    }
}
