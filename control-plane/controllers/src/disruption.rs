//! PodDisruptionBudgets: how many of the pods a budget selects are healthy, how many must be,
//! and so how many voluntary disruptions (evictions) are allowed now — upstream's disruption
//! controller.
//!
//! The primary kind is PodDisruptionBudget; pod events map to the budgets whose selectors match
//! the pod now or matched it when last seen (the map of selectors is kept from the budget
//! watch). Each pass computes, as upstream does:
//!
//! * `expectedPods`: with an integer `minAvailable`, the number of selected pods; with a
//!   percentage or with `maxUnavailable`, the sum of the scales of the pods' controllers
//!   (ReplicationController, ReplicaSet — or its Deployment —, StatefulSet). A pod without a
//!   controller then makes the budget fail safe: no disruption allowed, condition `SyncFailed`.
//! * `desiredHealthy` from `minAvailable` (percentages rounded up) or `expectedPods -
//!   maxUnavailable`;
//! * `currentHealthy`: selected pods that are Ready, not being deleted, and not recently evicted
//!   (`disruptedPods`, written by the eviction subresource before it deletes a pod, so that a
//!   second eviction cannot count a pod whose deletion this controller has not seen yet; an
//!   entry older than two minutes whose pod still exists is dropped with a `NotDeleted` event);
//! * `disruptionsAllowed = currentHealthy - desiredHealthy` (never negative, 0 without expected
//!   pods) and the `DisruptionAllowed` condition (`SufficientPods`/`InsufficientPods`).
//!
//! The eviction side (checking and decrementing `disruptionsAllowed`) lives in the API server,
//! where the pod is deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_api::client::{ListParams, WriteOptions};
use keel_api::selector::LabelSelector;
use serde_json::{json, Map, Value};

use crate::events;
use crate::pods;
use crate::runner::{Action, Error, Mapper, ObjectRef};
use crate::selecting::SelectorIndex;
use crate::Context;

const COMPONENT: &str = "controllermanager";

/// How long an eviction recorded in `disruptedPods` waits for the pod's deletion to show up.
const DELETION_TIMEOUT_SECONDS: i64 = 120;

/// Which budgets select which pods, maintained from the watches.
#[derive(Default)]
pub struct Budgets {
    index: SelectorIndex,
}

/// A budget's selector (`{}` selects every pod of the namespace in policy/v1).
fn selector_of(pdb: &Value) -> Result<LabelSelector, Error> {
    LabelSelector::from_json(pdb.pointer("/spec/selector")).map_err(|e| Error::Invalid {
        field: "spec.selector",
        message: e.message().to_string(),
    })
}

impl Budgets {
    /// The mapper of budget events: remembers the selector and names the budget.
    pub fn budget_mapper(self: &Arc<Self>) -> Mapper {
        let me = self.clone();
        Arc::new(move |pdb: &Value| {
            let Some(key) = ObjectRef::from_object(pdb) else {
                return Vec::new();
            };
            let selector = selector_of(pdb).ok().filter(|_| !pods::is_terminating(pdb));
            me.index.set(&key, selector);
            vec![key]
        })
    }

    /// The mapper of pod events: the budgets selecting the pod now or before.
    pub fn pod_mapper(self: &Arc<Self>) -> Mapper {
        let me = self.clone();
        Arc::new(move |pod: &Value| me.index.selecting(pod))
    }
}

/// `intstr.GetScaledValueFromIntOrPercent(v, total, roundUp=true)`.
pub fn scaled_value(v: &Value, total: i64) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("invalid value for IntOrString: {n}")),
        Value::String(s) => {
            let Some(p) = s.strip_suffix('%') else {
                return Err(
                    "invalid value for IntOrString: invalid type: string is not a percentage".to_string(),
                );
            };
            let p: i64 = p
                .parse()
                .map_err(|_| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            Ok((p * total + 99) / 100)
        }
        other => Err(format!("invalid value for IntOrString: {other}")),
    }
}

/// The scale of the controllers of `pods` (each counted once), as upstream's
/// `getExpectedScale`.
async fn expected_scale(ctx: &Context, ns: Option<String>, pods: &[Value]) -> Result<i64, String> {
    let k = &ctx.kinds;
    let mut scales: BTreeMap<String, i64> = BTreeMap::new();
    for pod in pods {
        let Some(cref) = pods::controller_ref(pod) else {
            return Err(format!("found no controller ref for pod {:?}", pods::name(pod)));
        };
        let kind = cref.get("kind").and_then(Value::as_str).unwrap_or("");
        let api_version = cref.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let name = cref.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        let uid = cref.get("uid").and_then(Value::as_str).unwrap_or("");
        let (group, _) = keel_api::registry::split_api_version(api_version);
        if scales.contains_key(uid) {
            continue;
        }
        let rt = match (group, kind) {
            ("apps", "ReplicaSet") => k.replica_sets,
            ("", "ReplicationController") => k.replication_controllers,
            ("apps", "StatefulSet") => k.stateful_sets,
            _ => return Err(format!("found no controllers for pod {:?}", pods::name(pod))),
        };
        let owner = match ctx.client.get(rt, ns.clone(), name).await {
            Ok(o) if pods::uid(&o) == uid => o,
            Ok(_) => return Err(format!("found no controllers for pod {:?}", pods::name(pod))),
            Err(e) if e.code == 404 => {
                return Err(format!("found no controllers for pod {:?}", pods::name(pod)))
            }
            Err(e) => return Err(e.to_string()),
        };
        // A ReplicaSet of a Deployment counts with the Deployment's scale.
        let (key, obj) = match pods::controller_ref(&owner) {
            Some(d)
                if rt.kind == "ReplicaSet" && d.get("kind").and_then(Value::as_str) == Some("Deployment") =>
            {
                let dname = d.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                match ctx.client.get(k.deployments, ns.clone(), dname).await {
                    Ok(dep) => (pods::uid(&dep).to_string(), dep),
                    Err(e) if e.code == 404 => {
                        return Err(format!("found no controllers for pod {:?}", pods::name(pod)))
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            _ => (uid.to_string(), owner),
        };
        let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        scales.insert(uid.to_string(), 0);
        scales.insert(key, replicas);
    }
    Ok(scales.values().sum())
}

/// What a pass computed.
#[derive(Debug, PartialEq)]
pub struct Health {
    pub expected: i64,
    pub desired: i64,
    pub current: i64,
    pub disrupted: Map<String, Value>,
    /// When the earliest kept `disruptedPods` entry expires (seconds from now).
    pub recheck_in: Option<i64>,
    /// Pods evicted long ago that still exist.
    pub not_deleted: Vec<String>,
}

/// Healthy pods and the `disruptedPods` entries to keep (`countHealthyPods` and
/// `buildDisruptedPodMap`).
pub fn count_healthy(
    pods: &[Value],
    disrupted: Option<&Map<String, Value>>,
    now: i64,
) -> (i64, Map<String, Value>, Option<i64>, Vec<String>) {
    let mut kept = Map::new();
    let mut recheck: Option<i64> = None;
    let mut not_deleted = Vec::new();
    let mut healthy = 0;
    for pod in pods {
        if pods::is_terminating(pod) {
            continue;
        }
        let name = pods::name(pod);
        if let Some(t) = disrupted.and_then(|d| d.get(name)) {
            let at = t
                .as_str()
                .and_then(keel_api::time::parse)
                .map(|t| t.as_second())
                .unwrap_or(0);
            let expires = at + DELETION_TIMEOUT_SECONDS;
            if expires > now {
                kept.insert(name.to_string(), t.clone());
                let left = expires - now;
                recheck = Some(recheck.map_or(left, |r| r.min(left)));
                continue;
            }
            not_deleted.push(name.to_string());
        }
        if pods::is_ready(pod) {
            healthy += 1;
        }
    }
    (healthy, kept, recheck, not_deleted)
}

async fn compute(ctx: &Context, pdb: &Value, pods: &[Value], now: i64) -> Result<Health, String> {
    let ns = pods::namespace(pdb);
    let min = pdb.pointer("/spec/minAvailable").filter(|v| !v.is_null());
    let max = pdb.pointer("/spec/maxUnavailable").filter(|v| !v.is_null());
    let (expected, desired) = match (max, min) {
        (Some(max), _) => {
            let expected = expected_scale(ctx, ns, pods).await?;
            let unavailable = scaled_value(max, expected)?;
            (expected, (expected - unavailable).max(0))
        }
        (None, Some(Value::Number(n))) => (pods.len() as i64, n.as_i64().unwrap_or(0)),
        (None, Some(min)) => {
            let expected = expected_scale(ctx, ns, pods).await?;
            (expected, scaled_value(min, expected)?)
        }
        (None, None) => (0, 0),
    };
    let (current, disrupted, recheck_in, not_deleted) = count_healthy(
        pods,
        pdb.pointer("/status/disruptedPods").and_then(Value::as_object),
        now,
    );
    Ok(Health {
        expected,
        desired,
        current,
        disrupted,
        recheck_in,
        not_deleted,
    })
}

/// `apimeta.SetStatusCondition`: the transition time moves only when the status changes.
pub fn set_condition(conditions: &mut Vec<Value>, mut c: Value, now: &str) {
    match conditions.iter_mut().find(|x| x["type"] == c["type"]) {
        Some(old) => {
            c["lastTransitionTime"] = if old["status"] == c["status"] {
                old.get("lastTransitionTime").cloned().unwrap_or(json!(now))
            } else {
                json!(now)
            };
            *old = c;
        }
        None => {
            c["lastTransitionTime"] = json!(now);
            conditions.push(c);
        }
    }
}

/// The `DisruptionAllowed` condition for `allowed` disruptions.
pub fn allowed_condition(allowed: i64, observed_generation: i64) -> Value {
    let (status, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    json!({
        "type": "DisruptionAllowed",
        "status": status,
        "reason": reason,
        "message": "",
        "observedGeneration": observed_generation,
    })
}

fn conditions_of(pdb: &Value) -> Vec<Value> {
    pdb.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The status a pass writes, from what it computed.
pub fn status_for(pdb: &Value, h: &Health, now: &str) -> Value {
    let generation = pods::generation(pdb);
    let allowed = if h.expected <= 0 {
        0
    } else {
        (h.current - h.desired).max(0)
    };
    let mut conditions = conditions_of(pdb);
    set_condition(&mut conditions, allowed_condition(allowed, generation), now);
    let mut status = json!({
        "observedGeneration": generation,
        "disruptionsAllowed": allowed,
        "currentHealthy": h.current,
        "desiredHealthy": h.desired,
        "expectedPods": h.expected,
        "conditions": conditions,
    });
    if !h.disrupted.is_empty() {
        status["disruptedPods"] = Value::Object(h.disrupted.clone());
    }
    status
}

/// Fail safe: nothing may be disrupted while the budget cannot be computed.
fn failed_status(pdb: &Value, message: &str, now: &str) -> Value {
    let mut status = pdb.get("status").cloned().unwrap_or(json!({}));
    if !status.is_object() {
        status = json!({});
    }
    let observed = status
        .get("observedGeneration")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut conditions = conditions_of(pdb);
    set_condition(
        &mut conditions,
        json!({
            "type": "DisruptionAllowed",
            "status": "False",
            "reason": "SyncFailed",
            "message": message,
            "observedGeneration": observed,
        }),
        now,
    );
    status["disruptionsAllowed"] = json!(0);
    status["conditions"] = Value::Array(conditions);
    status
}

/// Whether two statuses differ other than by condition transition times.
fn same_status(a: Option<&Value>, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(c) = c.as_object_mut() {
                    c.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    a.is_some_and(|a| strip(a) == strip(b))
}

/// One pass over a budget.
pub async fn reconcile(pdb: Arc<Value>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pods::is_terminating(&pdb) {
        return Ok(Action::Done);
    }
    let ns = pods::namespace(&pdb);
    let now = jiff::Timestamp::now();
    let now_s = keel_api::time::format_rfc3339(now);
    let (status, recheck) = match selector_of(&pdb) {
        Err(e) => (failed_status(&pdb, &e.to_string(), &now_s), None),
        Ok(selector) => {
            let list = ctx
                .client
                .list(
                    ctx.kinds.pods,
                    ns.clone(),
                    ListParams {
                        label_selector: Some(selector.to_string()),
                        ..Default::default()
                    },
                )
                .await?;
            let pods: Vec<Value> = list
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| selector.matches_object(p))
                .collect();
            if pods.is_empty() && pdb.pointer("/status/expectedPods").and_then(Value::as_i64) != Some(0) {
                ctx.record(
                    COMPONENT,
                    &pdb,
                    events::NORMAL,
                    "NoPods",
                    "No matching pods found",
                );
            }
            match compute(&ctx, &pdb, &pods, now.as_second()).await {
                Ok(h) => {
                    for p in &h.not_deleted {
                        let message = format!(
                            "Pod {}/{p} was expected to be deleted but it wasn't",
                            ns.as_deref().unwrap_or("")
                        );
                        ctx.record(COMPONENT, &pdb, events::WARNING, "NotDeleted", &message);
                    }
                    (status_for(&pdb, &h, &now_s), h.recheck_in)
                }
                Err(message) => {
                    ctx.record(
                        COMPONENT,
                        &pdb,
                        events::WARNING,
                        "CalculateExpectedPodCountFailed",
                        &format!("Failed to calculate the number of expected pods: {message}"),
                    );
                    (failed_status(&pdb, &message, &now_s), None)
                }
            }
        }
    };
    if !same_status(pdb.get("status"), &status) {
        let mut updated = (*pdb).clone();
        updated["status"] = status;
        ctx.client
            .update(
                ctx.kinds.pod_disruption_budgets,
                ns,
                updated,
                Some("status".into()),
                WriteOptions::default(),
            )
            .await?;
    }
    Ok(match recheck {
        Some(s) => Action::RequeueAfter(Duration::from_secs(s.max(1) as u64)),
        None => Action::Done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, deleting: bool) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "ns"},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        p
    }

    #[test]
    fn percentages_round_up_and_integers_pass_through() {
        assert_eq!(scaled_value(&json!(2), 10), Ok(2));
        assert_eq!(scaled_value(&json!("50%"), 3), Ok(2));
        assert_eq!(scaled_value(&json!("34%"), 3), Ok(2));
        assert_eq!(scaled_value(&json!("100%"), 3), Ok(3));
        assert_eq!(scaled_value(&json!("0%"), 3), Ok(0));
        assert!(scaled_value(&json!("5"), 3).is_err());
    }

    #[test]
    fn healthy_pods_exclude_unready_deleting_and_recently_disrupted() {
        let t0 = keel_api::time::parse("2026-01-01T00:00:00Z")
            .map(|t| t.as_second())
            .unwrap_or(0);
        let pods = vec![
            pod("a", true, false),
            pod("b", false, false),
            pod("c", true, true),
            pod("d", true, false),
            pod("e", true, false),
        ];
        let disrupted =
            json!({"d": "2026-01-01T00:00:00Z", "e": "2025-12-31T23:50:00Z", "gone": "2026-01-01T00:00:00Z"});
        let (healthy, kept, recheck, not_deleted) = count_healthy(&pods, disrupted.as_object(), t0 + 30);
        // a is healthy; d was just evicted; e was evicted 10 minutes ago and is still here.
        assert_eq!(healthy, 2);
        assert_eq!(
            kept,
            json!({"d": "2026-01-01T00:00:00Z"})
                .as_object()
                .cloned()
                .unwrap_or_default()
        );
        assert_eq!(recheck, Some(90));
        assert_eq!(not_deleted, vec!["e".to_string()]);
    }

    #[test]
    fn status_allows_the_surplus_and_keeps_transition_times() {
        let pdb = json!({"metadata": {"name": "b", "generation": 2}, "status": {"conditions": [
            {"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods", "lastTransitionTime": "t0"}]}});
        let h = Health {
            expected: 3,
            desired: 2,
            current: 3,
            disrupted: Map::new(),
            recheck_in: None,
            not_deleted: vec![],
        };
        let s = status_for(&pdb, &h, "t1");
        assert_eq!(s["disruptionsAllowed"], 1);
        assert_eq!(s["observedGeneration"], 2);
        assert_eq!(s["conditions"][0]["lastTransitionTime"], "t0");
        assert!(s.get("disruptedPods").is_none());
        let short = Health { current: 2, ..h };
        let s = status_for(&pdb, &short, "t1");
        assert_eq!(s["disruptionsAllowed"], 0);
        assert_eq!(s["conditions"][0]["status"], "False");
        assert_eq!(s["conditions"][0]["reason"], "InsufficientPods");
        assert_eq!(s["conditions"][0]["lastTransitionTime"], "t1");
        let none = Health {
            expected: 0,
            desired: 0,
            current: 2,
            disrupted: Map::new(),
            recheck_in: None,
            not_deleted: vec![],
        };
        assert_eq!(status_for(&pdb, &none, "t1")["disruptionsAllowed"], 0);
    }
}
