//! The `pods/eviction` subresource (`policy/v1 Eviction`): a pod deletion that honours the
//! PodDisruptionBudget selecting the pod, as upstream's `EvictionREST` does — what `kubectl
//! drain` relies on.
//!
//! * A pod that cannot count toward a budget (Pending, Succeeded, Failed, or already being
//!   deleted) is deleted right away.
//! * Otherwise the budgets of its namespace whose selectors match it are found: none → deleted;
//!   more than one → 500 (upstream does not support it either); one → the budget is checked
//!   and charged: not yet observed by the disruption controller (`observedGeneration` behind)
//!   or without disruptions left → 429 `TooManyRequests` "Cannot evict pod as it would violate
//!   the pod's disruption budget." with a `DisruptionBudget` cause saying why (the client
//!   retries: `kubectl drain` every 5 s). Else `disruptionsAllowed` is decremented and the pod is
//!   recorded in `disruptedPods` (so the controller does not count it healthy until it sees it
//!   go) in one compare-and-swap of the budget's status, retried on conflicts; then the pod is
//!   deleted with the eviction's `deleteOptions`.
//! * A pod that is not Ready while its budget is satisfied (or whose budget says
//!   `unhealthyPodEvictionPolicy: AlwaysAllow`) is deleted without charging the budget, with a
//!   resourceVersion precondition so that it cannot have become Ready meanwhile.
//! * `dryRun` (query or `deleteOptions.dryRun`) checks everything and writes nothing.

use keel_api::registry::{self, ResourceType};
use keel_api::selector::LabelSelector;
use keel_api::status::{ApiError, ApiResult, Cause, Details};
use keel_api::time;
use serde_json::{json, Value};

use crate::objects::{object_name, Objects, WriteCtx};

/// How many conflicting writes of the budget's status an eviction retries.
const RETRIES: usize = 10;

/// Upstream's bound on `disruptedPods` (evictions the controller has not confirmed yet).
const MAX_DISRUPTED_PODS: usize = 2000;

const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn budgets_rt() -> ApiResult<&'static ResourceType> {
    registry::find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("the registry has no poddisruptionbudgets"))
}

/// 429 without `retryAfterSeconds` (client-go would otherwise wait and retry by itself).
fn too_many_requests(message: &str, cause: String) -> ApiError {
    ApiError::new(429, "TooManyRequests", message).with_details(Details {
        causes: vec![Cause::new("DisruptionBudget", "", cause)],
        ..Default::default()
    })
}

fn forbidden(pdb: &str, why: &str) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!("poddisruptionbudget.policy {pdb:?} is forbidden: {why}"),
    )
    .with_details(Details {
        name: pdb.to_string(),
        group: "policy".into(),
        kind: "poddisruptionbudget".into(),
        ..Default::default()
    })
}

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Pods whose eviction never needs a budget's permission.
fn can_ignore_budget(pod: &Value) -> bool {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
    matches!(phase, "Pending" | "Succeeded" | "Failed") || crate::objects::is_being_deleted(pod)
}

/// What charging a budget decided.
#[derive(Debug, PartialEq)]
pub enum Charge {
    /// Decrement `disruptionsAllowed` and record the pod: the new status.
    Decrement(Value),
    /// Delete without charging, on condition the pod is unchanged (it is not Ready).
    Unhealthy,
}

/// Checks a budget for evicting `pod` (`checkAndDecrement` and the unhealthy-pod policy).
pub fn charge(pdb: &Value, pod: &Value, now: &str) -> ApiResult<Charge> {
    let name = object_name(pdb);
    let ready = is_ready(pod);
    let policy = pdb
        .pointer("/spec/unhealthyPodEvictionPolicy")
        .and_then(Value::as_str)
        .unwrap_or("IfHealthyBudget");
    let (current, desired) = (
        int(pdb, "/status/currentHealthy"),
        int(pdb, "/status/desiredHealthy"),
    );
    if !ready && (policy == "AlwaysAllow" || (current >= desired && desired > 0)) {
        return Ok(Charge::Unhealthy);
    }
    if int(pdb, "/status/observedGeneration") < int(pdb, "/metadata/generation") {
        return Err(too_many_requests(
            VIOLATION,
            format!("The disruption budget {name} is still being processed by the server."),
        ));
    }
    let allowed = int(pdb, "/status/disruptionsAllowed");
    if allowed < 0 {
        return Err(forbidden(name, "pdb disruptions allowed is negative"));
    }
    let disrupted = pdb
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
        .map_or(0, |m| m.len());
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(forbidden(
            name,
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Err(too_many_requests(
            VIOLATION,
            format!("The disruption budget {name} needs {desired} healthy pods and has {current} currently"),
        ));
    }
    let mut status = pdb.get("status").cloned().unwrap_or(json!({}));
    status["disruptionsAllowed"] = json!(allowed - 1);
    if allowed - 1 == 0 {
        if let Some(cs) = status.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter(|c| c["type"] == "DisruptionAllowed") {
                if c["status"] != "False" {
                    c["lastTransitionTime"] = json!(now);
                }
                c["status"] = json!("False");
                c["reason"] = json!("InsufficientPods");
                c["message"] = json!("");
            }
        }
    }
    let pod_name = object_name(pod).to_string();
    if !status.get("disruptedPods").is_some_and(Value::is_object) {
        status["disruptedPods"] = json!({});
    }
    status["disruptedPods"][pod_name] = json!(now);
    Ok(Charge::Decrement(status))
}

/// The budgets of the pod's namespace that select it.
async fn budgets_of(objects: &Objects, ns: &str, pod: &Value) -> ApiResult<Vec<Value>> {
    let list = objects.list(budgets_rt()?, Some(ns), &Default::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|pdb| {
            LabelSelector::from_json(pdb.pointer("/spec/selector")).is_ok_and(|s| s.matches_object(pod))
        })
        .collect())
}

/// Evicts pod `ns/name` as the Eviction `eviction` asks.
pub async fn evict(
    objects: &Objects,
    pods: &'static ResourceType,
    ns: &str,
    name: &str,
    eviction: &Value,
    ctx: &mut WriteCtx,
) -> ApiResult<()> {
    let body_name = eviction
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let mut options = eviction
        .get("deleteOptions")
        .filter(|o| o.is_object())
        .cloned()
        .unwrap_or(json!({}));
    if options
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|d| d == "All"))
    {
        ctx.dry_run = true;
    }
    let pod = objects.get(pods, Some(ns), name).await?;
    if !can_ignore_budget(&pod) {
        let budgets = budgets_of(objects, ns, &pod).await?;
        if budgets.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(first) = budgets.first() {
            let pdb_name = object_name(first).to_string();
            if charge_budget(objects, ns, &pdb_name, &pod, ctx.dry_run).await? == Charge::Unhealthy {
                let rv = pod
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                if !options.get("preconditions").is_some_and(Value::is_object) {
                    options["preconditions"] = json!({});
                }
                if options["preconditions"].get("resourceVersion").is_none() {
                    options["preconditions"]["resourceVersion"] = rv;
                }
            }
        }
    }
    objects.delete(pods, Some(ns), name, &options, ctx).await?;
    Ok(())
}

/// Charges the budget `ns/pdb_name` for evicting `pod`, retrying conflicting writes.
async fn charge_budget(
    objects: &Objects,
    ns: &str,
    pdb_name: &str,
    pod: &Value,
    dry_run: bool,
) -> ApiResult<Charge> {
    let rt = budgets_rt()?;
    for _ in 0..RETRIES {
        let pdb = objects.get(rt, Some(ns), pdb_name).await?;
        let decision = charge(&pdb, pod, &time::now_rfc3339())?;
        let Charge::Decrement(status) = &decision else {
            return Ok(decision);
        };
        if dry_run {
            return Ok(decision);
        }
        let mut updated = pdb.clone();
        updated["status"] = status.clone();
        let mut ctx = WriteCtx {
            field_manager: Some("kube-apiserver".into()),
            ..WriteCtx::default()
        };
        match objects
            .update(rt, Some(ns), pdb_name, updated, Some("status"), &mut ctx)
            .await
        {
            Ok(_) => return Ok(decision),
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(rt, pdb_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(allowed: i64, current: i64, desired: i64) -> Value {
        json!({"metadata": {"name": "web", "generation": 1},
            "spec": {"minAvailable": desired, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"observedGeneration": 1, "disruptionsAllowed": allowed, "currentHealthy": current,
                "desiredHealthy": desired, "expectedPods": 3,
                "conditions": [{"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods",
                    "message": "", "lastTransitionTime": "t0", "observedGeneration": 1}]}})
    }

    fn pod(ready: bool) -> Value {
        json!({"metadata": {"name": "web-1"}, "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn allowed_disruptions_are_charged_and_recorded() {
        let Ok(Charge::Decrement(s)) = charge(&pdb(1, 3, 2), &pod(true), "t1") else {
            panic!("expected a decrement");
        };
        assert_eq!(s["disruptionsAllowed"], 0);
        assert_eq!(s["disruptedPods"]["web-1"], "t1");
        assert_eq!(s["conditions"][0]["status"], "False");
        assert_eq!(s["conditions"][0]["reason"], "InsufficientPods");
        assert_eq!(s["conditions"][0]["lastTransitionTime"], "t1");
        let Ok(Charge::Decrement(s)) = charge(&pdb(2, 4, 2), &pod(true), "t1") else {
            panic!("expected a decrement");
        };
        assert_eq!(s["disruptionsAllowed"], 1);
        assert_eq!(s["conditions"][0]["status"], "True");
    }

    #[test]
    fn exhausted_budgets_answer_429_with_the_cause() {
        let e = charge(&pdb(0, 2, 2), &pod(true), "t1")
            .err()
            .map(|e| e.to_status());
        let Some(s) = e else { panic!("expected an error") };
        assert_eq!(s["code"], 429);
        assert_eq!(s["reason"], "TooManyRequests");
        assert_eq!(s["message"], VIOLATION);
        assert_eq!(s["details"]["causes"][0]["reason"], "DisruptionBudget");
        assert_eq!(
            s["details"]["causes"][0]["message"],
            "The disruption budget web needs 2 healthy pods and has 2 currently"
        );
        assert!(s["details"].get("retryAfterSeconds").is_none());
    }

    #[test]
    fn unobserved_generations_and_negative_budgets_refuse() {
        let mut p = pdb(1, 3, 2);
        p["metadata"]["generation"] = json!(2);
        let e = charge(&p, &pod(true), "t1").err().map(|e| e.to_status());
        assert_eq!(
            e.map(|s| s["details"]["causes"][0]["message"].clone()),
            Some(json!(
                "The disruption budget web is still being processed by the server."
            ))
        );
        let e = charge(&pdb(-1, 3, 2), &pod(true), "t1").err();
        assert_eq!(e.map(|e| e.code), Some(403));
    }

    #[test]
    fn unready_pods_of_a_healthy_budget_go_free() {
        assert_eq!(charge(&pdb(0, 2, 2), &pod(false), "t1"), Ok(Charge::Unhealthy));
        // The budget is short: an unready pod still needs a disruption.
        assert!(charge(&pdb(0, 1, 2), &pod(false), "t1").is_err());
        let mut always = pdb(0, 1, 2);
        always["spec"]["unhealthyPodEvictionPolicy"] = json!("AlwaysAllow");
        assert_eq!(charge(&always, &pod(false), "t1"), Ok(Charge::Unhealthy));
    }
}
