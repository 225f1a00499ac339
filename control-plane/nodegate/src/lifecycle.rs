//! Node lifecycle: marks nodes whose Lease stopped being renewed as unreachable, and undoes
//! that when they come back (what upstream's node-lifecycle controller does).
//!
//! Level-triggered: every tick it lists Nodes and Leases and makes each Node right, whatever it
//! missed. Staleness is measured on *this process's* clock, from when it last saw a Lease's
//! `renewTime` change (as upstream does with its probe timestamps): no dependence on clock skew
//! between machines, and a freshly started control plane gives every node a full grace period
//! to reconnect before calling it lost.
//!
//! * Lease stale → the kubelet-owned conditions become `Unknown` (`NodeStatusUnknown`,
//!   "Kubelet stopped posting node status.") and the taints `node.kubernetes.io/unreachable`
//!   `NoSchedule` and `NoExecute` are added.
//! * Lease fresh again → the node's session is asked to post its status again (it restores
//!   `Ready`), and once `Ready` is `True` the unreachable taints are removed.
//! * A node that posts `Ready` `False` itself gets the `node.kubernetes.io/not-ready`
//!   `NoSchedule` and `NoExecute` taints instead (removed when it is `Ready` again), so its
//!   pods are evicted after their not-ready toleration, as upstream's taint-based evictions do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keel_api::client::{ListParams, WriteOptions};
use keel_api::status::ApiResult;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::gate::Gate;
use crate::node_status::{KUBELET_CONDITIONS, LEASE_NAMESPACE};

pub(crate) const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
pub(crate) const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
const UNKNOWN_REASON: &str = "NodeStatusUnknown";
const UNKNOWN_MESSAGE: &str = "Kubelet stopped posting node status.";

/// Sets every kubelet-owned condition to `Unknown`. Returns whether anything changed.
pub(crate) fn mark_conditions_unknown(conditions: &mut Vec<Value>, now: &str) -> bool {
    let mut changed = false;
    for kind in KUBELET_CONDITIONS {
        match conditions.iter_mut().find(|c| c["type"] == kind) {
            Some(c) if c["status"] == "Unknown" && c["reason"] == UNKNOWN_REASON => {}
            Some(c) => {
                c["status"] = json!("Unknown");
                c["reason"] = json!(UNKNOWN_REASON);
                c["message"] = json!(UNKNOWN_MESSAGE);
                c["lastTransitionTime"] = json!(now);
                changed = true;
            }
            None => {
                conditions.push(json!({
                    "type": kind,
                    "status": "Unknown",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                    "reason": UNKNOWN_REASON,
                    "message": UNKNOWN_MESSAGE,
                }));
                changed = true;
            }
        }
    }
    changed
}

/// Adds `key`'s `NoSchedule` and `NoExecute` taints if missing (the `NoExecute` one with its
/// `timeAdded`, from which tolerations count). Returns whether anything changed.
fn add_condition_taints(taints: &mut Vec<Value>, key: &str, now: &str) -> bool {
    let mut changed = false;
    for effect in ["NoSchedule", "NoExecute"] {
        if !taints.iter().any(|t| t["key"] == key && t["effect"] == effect) {
            let mut t = json!({"key": key, "effect": effect});
            if effect == "NoExecute" {
                t["timeAdded"] = json!(now);
            }
            taints.push(t);
            changed = true;
        }
    }
    changed
}

/// Sets a pod's `Ready` condition to False (upstream's MarkPodsNotReady, so that Services stop
/// sending it traffic). Returns whether anything changed.
pub(crate) fn mark_pod_not_ready(conditions: &mut [Value], now: &str) -> bool {
    match conditions.iter_mut().find(|c| c["type"] == "Ready") {
        Some(c) if c["status"] != "False" => {
            c["status"] = json!("False");
            c["lastTransitionTime"] = json!(now);
            true
        }
        _ => false,
    }
}

/// Marks every pod bound to the unreachable node `name` not ready.
async fn mark_pods_not_ready(gate: &Gate, name: &str, now: &str) -> ApiResult<()> {
    let params = ListParams {
        field_selector: Some(format!("spec.nodeName={name}")),
        ..Default::default()
    };
    let pods = gate.client.list(gate.kinds.pods, None, params).await?;
    for pod in pods["items"].as_array().into_iter().flatten() {
        let mut pod = pod.clone();
        let Some(conditions) = pod
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        if !mark_pod_not_ready(conditions, now) {
            continue;
        }
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        let pod_name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        tracing::info!(node = name, pod = %pod_name, "marking a pod of an unreachable node not ready");
        gate.client
            .update(
                gate.kinds.pods,
                ns,
                pod,
                Some("status".into()),
                WriteOptions::default(),
            )
            .await?;
    }
    Ok(())
}

/// Removes `key`'s taints. Returns whether anything changed.
fn remove_condition_taints(taints: &mut Vec<Value>, key: &str) -> bool {
    let before = taints.len();
    taints.retain(|t| t["key"] != key);
    taints.len() != before
}

/// The taints a node whose `Ready` condition says `ready` should carry: none of the two for
/// `True`, not-ready for `False`, unreachable otherwise (`Unknown`). `Some` with the new list
/// when it differs from `taints`.
pub(crate) fn condition_taints(taints: &[Value], ready: &str, now: &str) -> Option<Vec<Value>> {
    let mut t = taints.to_vec();
    let changed = match ready {
        "True" => {
            remove_condition_taints(&mut t, UNREACHABLE_TAINT)
                | remove_condition_taints(&mut t, NOT_READY_TAINT)
        }
        "False" => {
            remove_condition_taints(&mut t, UNREACHABLE_TAINT)
                | add_condition_taints(&mut t, NOT_READY_TAINT, now)
        }
        _ => {
            remove_condition_taints(&mut t, NOT_READY_TAINT)
                | add_condition_taints(&mut t, UNREACHABLE_TAINT, now)
        }
    };
    changed.then_some(t)
}

/// Writes a node's taints (no `spec.taints` at all when none are left, as Go's omitempty).
async fn write_taints(gate: &Gate, mut node: Value, taints: Vec<Value>) -> ApiResult<()> {
    if taints.is_empty() {
        if let Some(spec) = node["spec"].as_object_mut() {
            spec.remove("taints");
        }
    } else {
        node["spec"]["taints"] = Value::Array(taints);
    }
    gate.client
        .update(gate.kinds.nodes, None, node, None, WriteOptions::default())
        .await?;
    Ok(())
}

fn ready_status(node: &Value) -> &str {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
}

/// When this process last saw each node's Lease change.
#[derive(Default)]
struct Observed {
    by_node: HashMap<String, (String, Instant)>,
}

impl Observed {
    /// Records the Lease's current renewTime and returns how long ago it last changed.
    fn age(&mut self, node: &str, renew_time: &str, now: Instant) -> Duration {
        let entry = self
            .by_node
            .entry(node.to_string())
            .or_insert_with(|| (renew_time.to_string(), now));
        if entry.0 != renew_time {
            *entry = (renew_time.to_string(), now);
        }
        now.duration_since(entry.1)
    }
}

/// Runs until the gate shuts down.
pub(crate) async fn run(gate: Arc<Gate>) {
    let period = (gate.grace_period / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut observed = Observed::default();
    let mut shutdown = gate.shutdown.clone();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = crate::gate::stopped(&mut shutdown) => return,
        }
        if let Err(e) = reconcile_all(&gate, &mut observed).await {
            tracing::warn!(error = %e, "node lifecycle: listing nodes or leases failed");
        }
    }
}

async fn reconcile_all(gate: &Gate, observed: &mut Observed) -> ApiResult<()> {
    let nodes = gate
        .client
        .list(gate.kinds.nodes, None, ListParams::default())
        .await?;
    let leases = gate
        .client
        .list(
            gate.kinds.leases,
            Some(LEASE_NAMESPACE.to_string()),
            ListParams::default(),
        )
        .await?;
    let renew_times: HashMap<&str, &str> = leases["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some((
                l.pointer("/metadata/name")?.as_str()?,
                l.pointer("/spec/renewTime")?.as_str()?,
            ))
        })
        .collect();
    let now = Instant::now();
    let items = nodes["items"].as_array().cloned().unwrap_or_default();
    observed.by_node.retain(|name, _| {
        items
            .iter()
            .any(|n| n.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
    });
    for node in items {
        let Some(name) = node.pointer("/metadata/name").and_then(Value::as_str) else {
            continue;
        };
        let renew = renew_times.get(name).copied().unwrap_or("");
        let stale = observed.age(name, renew, now) > gate.grace_period;
        if let Err(e) = reconcile_node(gate, name, &node, stale).await {
            tracing::warn!(node = name, error = %e, "node lifecycle: update failed; retrying next tick");
        }
    }
    Ok(())
}

async fn reconcile_node(gate: &Gate, name: &str, node: &Value, stale: bool) -> ApiResult<()> {
    let now = keel_api::time::now_rfc3339();
    let taints: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if stale {
        let mut conditions: Vec<Value> = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut node = node.clone();
        if mark_conditions_unknown(&mut conditions, &now) {
            tracing::warn!(
                node = name,
                "node stopped renewing its lease; marking it NotReady (Unknown)"
            );
            node["status"]["conditions"] = Value::Array(conditions);
            node = gate
                .client
                .update(
                    gate.kinds.nodes,
                    None,
                    node,
                    Some("status".into()),
                    WriteOptions::default(),
                )
                .await?;
            gate.request_status_repost(name);
        }
        if let Some(taints) = condition_taints(&taints, "Unknown", &now) {
            tracing::info!(node = name, "tainting unreachable node");
            write_taints(gate, node, taints).await?;
        }
        return mark_pods_not_ready(gate, name, &now).await;
    }
    let ready = ready_status(node);
    if ready == "True" || ready == "False" {
        if let Some(new) = condition_taints(&taints, ready, &now) {
            if ready == "True" {
                tracing::info!(node = name, "node is back; removing unreachable/not-ready taints");
            } else {
                tracing::warn!(node = name, "node reports NotReady; tainting it not-ready");
            }
            write_taints(gate, node.clone(), new).await?;
        }
    }
    if ready != "True" {
        // The lease is fresh but the status may still say what we wrote while it was stale:
        // ask the node's session to post its real status.
        gate.request_status_repost(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_marking_is_idempotent() {
        let mut cs = vec![
            json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
                                 "lastTransitionTime": "t0", "lastHeartbeatTime": "t0"}),
        ];
        assert!(mark_conditions_unknown(&mut cs, "t1"));
        assert_eq!(cs.len(), 4);
        assert_eq!(cs[0]["status"], "Unknown");
        assert_eq!(cs[0]["reason"], "NodeStatusUnknown");
        assert_eq!(cs[0]["message"], "Kubelet stopped posting node status.");
        assert_eq!(cs[0]["lastTransitionTime"], "t1");
        assert_eq!(cs[0]["lastHeartbeatTime"], "t0");
        assert!(!mark_conditions_unknown(&mut cs, "t2"));
    }

    #[test]
    fn pods_of_lost_nodes_turn_not_ready_once() {
        let mut cs = vec![
            json!({"type": "Initialized", "status": "True"}),
            json!({"type": "Ready", "status": "True", "lastTransitionTime": "t0"}),
        ];
        assert!(mark_pod_not_ready(&mut cs, "t1"));
        assert_eq!(cs[1]["status"], "False");
        assert_eq!(cs[1]["lastTransitionTime"], "t1");
        assert_eq!(cs[0]["status"], "True");
        assert!(!mark_pod_not_ready(&mut cs, "t2"));
        assert!(!mark_pod_not_ready(&mut [], "t2"));
    }

    #[test]
    fn ready_status_picks_the_condition_taints() {
        let own = json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"});
        let not_ready = condition_taints(std::slice::from_ref(&own), "False", "t1").unwrap_or_default();
        assert_eq!(not_ready.len(), 3);
        assert!(not_ready
            .iter()
            .any(|t| t["key"] == NOT_READY_TAINT && t["effect"] == "NoExecute" && t["timeAdded"] == "t1"));
        assert_eq!(condition_taints(&not_ready, "False", "t2"), None);
        // Lost after being not ready: the NoExecute taint swaps to unreachable.
        let lost = condition_taints(&not_ready, "Unknown", "t3").unwrap_or_default();
        assert!(lost.iter().all(|t| t["key"] != NOT_READY_TAINT));
        assert!(lost
            .iter()
            .any(|t| t["key"] == UNREACHABLE_TAINT && t["effect"] == "NoExecute" && t["timeAdded"] == "t3"));
        assert_eq!(condition_taints(&lost, "True", "t4"), Some(vec![own.clone()]));
        assert_eq!(condition_taints(&[own], "True", "t4"), None);
    }

    #[test]
    fn taints_are_added_once_and_removed_alone() {
        let mut ts = vec![json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"})];
        assert!(add_condition_taints(&mut ts, UNREACHABLE_TAINT, "t1"));
        assert!(!add_condition_taints(&mut ts, UNREACHABLE_TAINT, "t2"));
        assert_eq!(ts.len(), 3);
        assert_eq!(ts[2]["effect"], "NoExecute");
        assert_eq!(ts[2]["timeAdded"], "t1");
        assert!(remove_condition_taints(&mut ts, UNREACHABLE_TAINT));
        assert_eq!(
            ts,
            vec![json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"})]
        );
        assert!(!remove_condition_taints(&mut ts, UNREACHABLE_TAINT));
    }

    #[test]
    fn age_counts_from_the_last_observed_change() {
        let mut o = Observed::default();
        let t0 = Instant::now();
        assert_eq!(o.age("n", "r1", t0), Duration::ZERO);
        assert_eq!(
            o.age("n", "r1", t0 + Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(o.age("n", "r2", t0 + Duration::from_secs(6)), Duration::ZERO);
        assert_eq!(
            o.age("n", "r2", t0 + Duration::from_secs(9)),
            Duration::from_secs(3)
        );
    }
}
