//! Evictions by `NoExecute` taints, and pods of deleted nodes: what makes workloads move when a
//! node dies (upstream's taint-eviction controller and the orphaned-pod part of pod GC).
//!
//! The primary kind is Node; a pod event maps to the node it is bound to. Each pass over a node
//! looks at its pods: one that does not tolerate a `NoExecute` taint is deleted at once; one that
//! tolerates every such taint, some for `tolerationSeconds` only, is deleted when the first of
//! those runs out (counted from the taint's `timeAdded`) and the pass re-queues itself for then.
//! The node gate adds `node.kubernetes.io/unreachable:NoExecute` to nodes that stop
//! heartbeating and the API server gives pods the default 300 s toleration for it, so pods of a
//! lost node are deleted after five minutes and their controllers replace them elsewhere.
//!
//! When a Node object is deleted, the pods bound to it (finished ones too) are deleted with a
//! zero grace period: no agent is left to confirm their end.

use std::sync::Arc;
use std::time::Duration;

use keel_api::client::ListParams;
use serde_json::{json, Value};

use crate::events;
use crate::pods;
use crate::runner::{Action, Cleanup, Error, Mapper, ObjectRef};
use crate::Context;

const COMPONENT: &str = "taint-eviction-controller";

/// Pod events concern the node the pod is bound to.
pub fn pod_mapper() -> Mapper {
    Arc::new(|pod: &Value| {
        pod.pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(|n| vec![ObjectRef::new(None, n)])
            .unwrap_or_default()
    })
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect = s(toleration, "effect");
    if !effect.is_empty() && effect != s(taint, "effect") {
        return false;
    }
    let exists = s(toleration, "operator") == "Exists";
    if s(toleration, "key").is_empty() {
        return exists;
    }
    s(toleration, "key") == s(taint, "key") && (exists || s(toleration, "value") == s(taint, "value"))
}

/// When a pod must go because of the node's `NoExecute` taints: `Some(0)` now, `Some(n)` in
/// `n` seconds, `None` never.
pub fn eviction_in(pod: &Value, taints: &[Value], now: i64) -> Option<i64> {
    let tolerations: Vec<&Value> = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .map(|t| t.iter().collect())
        .unwrap_or_default();
    let mut soonest: Option<i64> = None;
    for taint in taints.iter().filter(|t| s(t, "effect") == "NoExecute") {
        let matching: Vec<&&Value> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(0);
        }
        // Tolerated forever if any matching toleration has no limit; else the longest limit.
        if matching
            .iter()
            .any(|t| t.get("tolerationSeconds").and_then(Value::as_i64).is_none())
        {
            continue;
        }
        let seconds = matching
            .iter()
            .filter_map(|t| t.get("tolerationSeconds").and_then(Value::as_i64))
            .max()
            .unwrap_or(0)
            .max(0);
        let added = taint
            .get("timeAdded")
            .and_then(Value::as_str)
            .and_then(keel_api::time::parse)
            .map(|t| t.as_second())
            .unwrap_or(now);
        let left = (added + seconds - now).max(0);
        soonest = Some(soonest.map_or(left, |s| s.min(left)));
    }
    soonest
}

async fn pods_on(ctx: &Context, node: &str) -> Result<Vec<Value>, Error> {
    let list = ctx
        .client
        .list(
            ctx.kinds.pods,
            None,
            ListParams {
                field_selector: Some(format!("spec.nodeName={node}")),
                ..Default::default()
            },
        )
        .await?;
    Ok(list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// One pass over a node's pods.
pub async fn reconcile(node: Arc<Value>, ctx: Arc<Context>) -> Result<Action, Error> {
    let taints: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter(|t| s(t, "effect") == "NoExecute")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if taints.is_empty() {
        return Ok(Action::Done);
    }
    let now = jiff::Timestamp::now().as_second();
    let mut next: Option<i64> = None;
    for pod in pods_on(&ctx, pods::name(&node)).await? {
        if pods::is_terminating(&pod) || pods::is_terminal(&pod) {
            continue;
        }
        match eviction_in(&pod, &taints, now) {
            Some(0) => {
                let ns = pods::namespace(&pod);
                let message = format!(
                    "Marking for deletion Pod {}/{}",
                    ns.as_deref().unwrap_or(""),
                    pods::name(&pod)
                );
                match ctx
                    .client
                    .delete(
                        ctx.kinds.pods,
                        ns,
                        pods::name(&pod).to_string(),
                        json!({"preconditions": {"uid": pods::uid(&pod)}}),
                    )
                    .await
                {
                    Ok(_) => ctx.record(COMPONENT, &pod, events::NORMAL, "TaintManagerEviction", &message),
                    Err(e) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(n) => next = Some(next.map_or(n, |m| m.min(n))),
            None => {}
        }
    }
    Ok(match next {
        Some(n) => Action::RequeueAfter(Duration::from_secs(n.max(1) as u64)),
        None => Action::Done,
    })
}

/// A deleted node: its pods go at once.
pub fn cleanup() -> Cleanup<Context> {
    Arc::new(|key: ObjectRef, ctx: Arc<Context>| {
        Box::pin(async move {
            // Finished pods go too (upstream's pod GC deletes every orphaned pod): their logs
            // went with the node, and their controllers have counted them.
            for pod in pods_on(&ctx, &key.name).await? {
                let r = ctx
                    .client
                    .delete(
                        ctx.kinds.pods,
                        pods::namespace(&pod),
                        pods::name(&pod).to_string(),
                        json!({"gracePeriodSeconds": 0, "preconditions": {"uid": pods::uid(&pod)}}),
                    )
                    .await;
                match r {
                    Ok(_) => {}
                    Err(e) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Action::Done)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untolerated_now_limited_later_unlimited_never() {
        let taints = vec![
            json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}),
        ];
        let t0 = keel_api::time::parse("2026-01-01T00:00:00Z")
            .map(|t| t.as_second())
            .unwrap_or(0);
        let plain = json!({"spec": {}});
        assert_eq!(eviction_in(&plain, &taints, t0), Some(0));
        let limited = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}});
        assert_eq!(eviction_in(&limited, &taints, t0 + 100), Some(200));
        assert_eq!(eviction_in(&limited, &taints, t0 + 400), Some(0));
        let forever = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(eviction_in(&forever, &taints, t0), None);
        let no_schedule_only = vec![json!({"key": "x", "effect": "NoSchedule"})];
        assert_eq!(eviction_in(&plain, &no_schedule_only, t0), None);
    }
}
