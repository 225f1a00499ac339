//! DaemonSets: one pod on every node that should run it, after upstream's daemon controller.
//!
//! * A node should run the pod if it matches the template's `nodeSelector` and required node
//!   affinity and every `NoSchedule`/`NoExecute` taint is tolerated — counting the tolerations
//!   upstream adds to daemon pods (not-ready, unreachable, pressure conditions, unschedulable).
//! * Pods are created unscheduled with a required node affinity on `metadata.name` (as upstream
//!   does since 1.12), so the scheduler binds them; a pod's node is its `nodeName` or that
//!   affinity target. Failed pods are replaced, extra pods and pods on nodes that should not run
//!   one are deleted.
//! * Each template version is a ControllerRevision `<ds>-<hash>`; pods carry the hash as
//!   `controller-revision-hash`. `RollingUpdate` replaces old pods `maxUnavailable` at a time
//!   (not-yet-available old pods first); `OnDelete` waits for the user.
//! * Node events are mapped to every DaemonSet, but only when something that matters (labels,
//!   taints, schedulability) changed, so heartbeats cost nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use keel_api::client::{ListParams, WriteOptions};
use serde_json::{json, Value};

use crate::deployment::template_hash;
use crate::events;
use crate::pods;
use crate::runner::{Action, Error, Mapper, ObjectRef};
use crate::Context;

const COMPONENT: &str = "daemonset-controller";
pub const HASH_LABEL: &str = "controller-revision-hash";
const GENERATION_LABEL: &str = "pod-template-generation";

/// The DaemonSets known from the watch, so that node events can be mapped to all of them.
#[derive(Default)]
pub struct Known {
    sets: Mutex<HashSet<ObjectRef>>,
    nodes: Mutex<HashMap<String, Value>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Known {
    pub fn daemonset_mapper(self: &Arc<Self>) -> Mapper {
        let me = self.clone();
        Arc::new(move |ds: &Value| {
            if let Some(k) = ObjectRef::from_object(ds) {
                let mut sets = lock(&me.sets);
                if pods::is_terminating(ds) {
                    sets.remove(&k);
                } else {
                    sets.insert(k.clone());
                }
                return vec![k];
            }
            Vec::new()
        })
    }

    /// Every DaemonSet, when a node appears, goes, or changes labels, taints or schedulability.
    pub fn node_mapper(self: &Arc<Self>) -> Mapper {
        let me = self.clone();
        Arc::new(move |node: &Value| {
            let name = pods::name(node).to_string();
            let signature = json!([
                node.pointer("/metadata/labels"),
                node.pointer("/spec/taints"),
                node.pointer("/spec/unschedulable"),
                node.pointer("/metadata/deletionTimestamp"),
            ]);
            let changed = lock(&me.nodes).insert(name, signature.clone()) != Some(signature);
            if changed {
                lock(&me.sets).iter().cloned().collect()
            } else {
                Vec::new()
            }
        })
    }
}

/// The tolerations upstream adds to every daemon pod.
fn daemon_tolerations(template: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = template
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        if !out.iter().any(|t| t["key"] == key && t["effect"] == effect) {
            out.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if template.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    out
}

fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    tolerations.iter().any(|t| {
        let effect = s(t, "effect");
        if !effect.is_empty() && effect != s(taint, "effect") {
            return false;
        }
        let exists = s(t, "operator") == "Exists";
        if s(t, "key").is_empty() {
            return exists;
        }
        s(t, "key") == s(taint, "key") && (exists || s(t, "value") == s(taint, "value"))
    })
}

fn expression_matches(expr: &Value, value: Option<&str>) -> bool {
    let values: Vec<&str> = expr
        .get("values")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let num = |v: &str| v.parse::<i64>().ok();
    match (expr.get("operator").and_then(Value::as_str).unwrap_or(""), value) {
        ("In", Some(v)) => values.contains(&v),
        ("NotIn", Some(v)) => !values.contains(&v),
        ("NotIn", None) | ("DoesNotExist", None) | ("Exists", Some(_)) => true,
        ("Gt", Some(v)) => {
            matches!((num(v), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a > b)
        }
        ("Lt", Some(v)) => {
            matches!((num(v), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

fn term_matches(term: &Value, node: &Value) -> bool {
    let labels = node.pointer("/metadata/labels");
    let exprs = term.get("matchExpressions").and_then(Value::as_array);
    let fields = term.get("matchFields").and_then(Value::as_array);
    if exprs.is_none_or(|e| e.is_empty()) && fields.is_none_or(|f| f.is_empty()) {
        return false;
    }
    exprs.into_iter().flatten().all(|e| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        expression_matches(e, labels.and_then(|l| l.get(key)).and_then(Value::as_str))
    }) && fields.into_iter().flatten().all(|f| {
        f.get("key").and_then(Value::as_str) == Some("metadata.name")
            && expression_matches(f, Some(pods::name(node)))
    })
}

/// Whether a daemon pod of `template` belongs on `node`.
pub fn should_run(template: &Value, node: &Value) -> bool {
    if pods::is_terminating(node) {
        return false;
    }
    let labels = node.pointer("/metadata/labels");
    let selector_ok = template
        .pointer("/spec/nodeSelector")
        .and_then(Value::as_object)
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v)));
    let affinity_ok = template
        .pointer(
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
        )
        .and_then(Value::as_array)
        .is_none_or(|terms| terms.iter().any(|t| term_matches(t, node)));
    if !selector_ok || !affinity_ok {
        return false;
    }
    let tolerations = daemon_tolerations(template);
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| {
            matches!(
                t.get("effect").and_then(Value::as_str),
                Some("NoSchedule" | "NoExecute")
            )
        })
        .all(|t| tolerates(&tolerations, t))
}

/// The node a daemon pod is for: its `nodeName`, else its `metadata.name` affinity.
pub fn target_node(pod: &Value) -> Option<String> {
    if let Some(n) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Some(n.to_string());
    }
    let terms = pod
        .pointer(
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
        )?
        .as_array()?;
    terms.iter().find_map(|t| {
        t.get("matchFields")?.as_array()?.iter().find_map(|f| {
            (f.get("key").and_then(Value::as_str) == Some("metadata.name")
                && f.get("operator").and_then(Value::as_str) == Some("In"))
            .then(|| f.pointer("/values/0").and_then(Value::as_str).map(str::to_string))
            .flatten()
        })
    })
}

/// The pod for `node`: the template, pinned to the node by affinity, with upstream's labels and
/// tolerations.
fn daemon_pod(ctx: &Context, ds: &Value, node: &str, hash: &str) -> Value {
    let mut pod = crate::replicaset::pod_from_template(ctx.kinds.daemon_sets, ds);
    let labels = &mut pod["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    labels[HASH_LABEL] = json!(hash);
    labels[GENERATION_LABEL] = json!(pods::generation(ds).to_string());
    let template = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
    pod["spec"]["tolerations"] = json!(daemon_tolerations(&template));
    let pin = json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]});
    let terms = pod
        .pointer(
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
        )
        .and_then(Value::as_array)
        .cloned();
    // Upstream replaces any metadata.name fields with the target and keeps label expressions.
    let terms: Vec<Value> = match terms {
        Some(ts) if !ts.is_empty() => ts
            .into_iter()
            .map(|mut t| {
                t["matchFields"] = pin["matchFields"].clone();
                t
            })
            .collect(),
        _ => vec![pin],
    };
    if !pod["spec"]["affinity"].is_object() {
        pod["spec"]["affinity"] = json!({});
    }
    if !pod["spec"]["affinity"]["nodeAffinity"].is_object() {
        pod["spec"]["affinity"]["nodeAffinity"] = json!({});
    }
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] =
        json!({"nodeSelectorTerms": terms});
    pod
}

/// Makes sure a ControllerRevision of the current template exists and is the newest; prunes old
/// ones beyond `revisionHistoryLimit`.
pub(crate) async fn sync_revisions(
    ctx: &Context,
    owner_rt: &'static keel_api::registry::ResourceType,
    ds: &Value,
    hash: &str,
    in_use: &HashSet<String>,
) -> Result<(), Error> {
    let rt = ctx.kinds.controller_revisions;
    let ns = pods::namespace(ds);
    let list = ctx.client.list(rt, ns.clone(), ListParams::default()).await?;
    let uid = pods::uid(ds);
    let mut owned: Vec<Value> = list
        .get("items")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|r| pods::controller_uid(r) == Some(uid))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let max = owned
        .iter()
        .filter_map(|r| r.get("revision").and_then(Value::as_i64))
        .max()
        .unwrap_or(0);
    let name = format!("{}-{hash}", pods::name(ds));
    match owned.iter().find(|r| pods::name(r) == name) {
        Some(current) => {
            if current.get("revision").and_then(Value::as_i64).unwrap_or(0) < max {
                let mut updated = current.clone();
                updated["revision"] = json!(max + 1);
                ctx.client
                    .update(rt, ns.clone(), updated, None, WriteOptions::default())
                    .await?;
            }
        }
        None => {
            let mut template = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
            template["$patch"] = json!("replace");
            let mut labels = ds
                .pointer("/spec/template/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            labels[HASH_LABEL] = json!(hash);
            let rev = json!({
                "apiVersion": "apps/v1",
                "kind": "ControllerRevision",
                "metadata": {"name": name, "namespace": ns, "labels": labels,
                             "ownerReferences": [pods::owner_reference(owner_rt, ds)]},
                "data": {"spec": {"template": template}},
                "revision": max + 1,
            });
            match ctx
                .client
                .create(rt, ns.clone(), rev, WriteOptions::default())
                .await
            {
                Ok(r) => owned.push(r),
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let limit = ds
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_i64)
        .unwrap_or(10)
        .max(0) as usize;
    let mut old: Vec<&Value> = owned
        .iter()
        .filter(|r| pods::name(r) != name)
        .filter(|r| {
            !in_use.contains(
                r.pointer(&format!("/metadata/labels/{HASH_LABEL}"))
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            )
        })
        .collect();
    if old.len() > limit {
        old.sort_by_key(|r| r.get("revision").and_then(Value::as_i64).unwrap_or(0));
        let excess = old.len() - limit;
        for r in old.into_iter().take(excess) {
            let _ = ctx
                .client
                .delete(rt, ns.clone(), pods::name(r).to_string(), Value::Null)
                .await;
        }
    }
    Ok(())
}

/// One reconcile pass of a DaemonSet.
pub async fn reconcile(ds: Arc<Value>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pods::is_terminating(&ds) {
        return Ok(Action::Done);
    }
    let ns = pods::namespace(&ds);
    let template = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(
        &template,
        ds.pointer("/status/collisionCount").and_then(Value::as_i64),
    );
    let nodes_list = ctx
        .client
        .list(ctx.kinds.nodes, None, ListParams::default())
        .await?;
    let nodes = nodes_list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let pods_list = ctx
        .client
        .list(ctx.kinds.pods, ns.clone(), ListParams::default())
        .await?;
    let uid = pods::uid(&ds);
    let mut by_node: HashMap<String, Vec<Value>> = HashMap::new();
    for p in pods_list
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if pods::controller_uid(p) == Some(uid) && !pods::is_terminating(p) {
            if let Some(n) = target_node(p) {
                by_node.entry(n).or_default().push(p.clone());
            }
        }
    }
    let in_use: HashSet<String> = by_node
        .values()
        .flatten()
        .filter_map(|p| {
            p.pointer(&format!("/metadata/labels/{HASH_LABEL}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    sync_revisions(&ctx, ctx.kinds.daemon_sets, &ds, &hash, &in_use).await?;

    let now = jiff::Timestamp::now();
    let min_ready = ds
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut create_on: Vec<String> = Vec::new();
    let mut doomed: Vec<Value> = Vec::new();
    let (mut desired, mut current, mut misscheduled, mut ready, mut available, mut updated) =
        (0, 0, 0, 0, 0, 0);
    let mut old_available: Vec<Value> = Vec::new();
    let mut old_unavailable: Vec<Value> = Vec::new();
    let mut unavailable = 0i64;
    for node in &nodes {
        let name = pods::name(node).to_string();
        let mut here = by_node.remove(&name).unwrap_or_default();
        if should_run(&template, node) {
            desired += 1;
            // Failed pods are replaced.
            let (failed, mut live): (Vec<Value>, Vec<Value>) =
                here.into_iter().partition(|p| pods::phase(p) == "Failed");
            doomed.extend(failed);
            if live.is_empty() {
                create_on.push(name);
                unavailable += 1;
                continue;
            }
            // One pod per node: keep the oldest.
            live.sort_by_key(|p| {
                p.pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            });
            doomed.extend(live.drain(1..));
            let pod = &live[0];
            current += 1;
            let is_available = pods::is_available(pod, min_ready, now);
            if pods::is_ready(pod) {
                ready += 1;
            }
            if is_available {
                available += 1;
            } else {
                unavailable += 1;
            }
            let current_hash = pod
                .pointer(&format!("/metadata/labels/{HASH_LABEL}"))
                .and_then(Value::as_str)
                == Some(hash.as_str());
            if current_hash {
                updated += 1;
            } else if is_available {
                old_available.push(pod.clone());
            } else {
                old_unavailable.push(pod.clone());
            }
        } else {
            if !here.is_empty() {
                misscheduled += 1;
            }
            doomed.append(&mut here);
        }
    }
    // Pods for nodes that no longer exist.
    for (_, mut rest) in by_node {
        doomed.append(&mut rest);
    }
    // Rolling update: replace old pods, unavailable ones first, within maxUnavailable.
    if ds.pointer("/spec/updateStrategy/type").and_then(Value::as_str) != Some("OnDelete") {
        doomed.append(&mut old_unavailable);
        let max_unavailable = match ds.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(1),
            Some(Value::String(s)) => s
                .strip_suffix('%')
                .and_then(|p| p.parse::<i64>().ok())
                .map(|p| ((p * desired + 99) / 100).max(1))
                .unwrap_or(1),
            _ => 1,
        };
        let budget = (max_unavailable - unavailable).max(0) as usize;
        doomed.extend(old_available.into_iter().take(budget));
    }

    let created = join_all(create_on.iter().map(|node| {
        let pod = daemon_pod(&ctx, &ds, node, &hash);
        ctx.client
            .create(ctx.kinds.pods, ns.clone(), pod, WriteOptions::default())
    }))
    .await;
    let mut failure = None;
    for r in created {
        match r {
            Ok(p) => ctx.record(
                COMPONENT,
                &ds,
                events::NORMAL,
                "SuccessfulCreate",
                &format!("Created pod: {}", pods::name(&p)),
            ),
            Err(e) => {
                let message = format!("Error creating: {}", e.message);
                ctx.record(COMPONENT, &ds, events::WARNING, "FailedCreate", &message);
                failure = Some(message);
            }
        }
    }
    let deleted = join_all(doomed.iter().map(|p| {
        ctx.client
            .delete(ctx.kinds.pods, ns.clone(), pods::name(p).to_string(), Value::Null)
    }))
    .await;
    for (p, r) in doomed.iter().zip(deleted) {
        match r {
            Ok(_) => ctx.record(
                COMPONENT,
                &ds,
                events::NORMAL,
                "SuccessfulDelete",
                &format!("Deleted pod: {}", pods::name(p)),
            ),
            Err(e) if e.code == 404 => {}
            Err(e) => failure = Some(format!("Error deleting: {}", e.message)),
        }
    }

    let mut status = ds
        .get("status")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    status["desiredNumberScheduled"] = json!(desired);
    status["currentNumberScheduled"] = json!(current);
    status["numberMisscheduled"] = json!(misscheduled);
    status["numberReady"] = json!(ready);
    status["numberAvailable"] = json!(available);
    status["numberUnavailable"] = json!((desired - available).max(0));
    status["updatedNumberScheduled"] = json!(updated);
    status["observedGeneration"] = json!(pods::generation(&ds));
    if let Some(s) = status.as_object_mut() {
        if s.get("numberAvailable") == Some(&json!(0)) {
            s.remove("numberAvailable");
        }
        if s.get("numberUnavailable") == Some(&json!(0)) {
            s.remove("numberUnavailable");
        }
    }
    if ds.get("status") != Some(&status) {
        let mut updated_ds = (*ds).clone();
        updated_ds["status"] = status;
        ctx.client
            .update(
                ctx.kinds.daemon_sets,
                ns,
                updated_ds,
                Some("status".into()),
                WriteOptions::default(),
            )
            .await?;
    }
    if let Some(message) = failure {
        return Err(Error::Invalid {
            field: "pods",
            message,
        });
    }
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_chosen_by_selector_and_taints_with_daemon_tolerations() {
        let template = json!({"spec": {"nodeSelector": {"role": "worker"}}});
        let worker = json!({"metadata": {"name": "w", "labels": {"role": "worker"}}});
        let other = json!({"metadata": {"name": "o", "labels": {"role": "db"}}});
        let tainted = json!({"metadata": {"name": "t", "labels": {"role": "worker"}},
            "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}});
        let not_ready = json!({"metadata": {"name": "n", "labels": {"role": "worker"}},
            "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}], "unschedulable": true}});
        assert!(should_run(&template, &worker));
        assert!(!should_run(&template, &other));
        assert!(!should_run(&template, &tainted));
        assert!(should_run(&template, &not_ready));
    }

    #[test]
    fn target_node_comes_from_name_or_affinity() {
        let pinned = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n7"]}]}]}}}}});
        assert_eq!(target_node(&pinned).as_deref(), Some("n7"));
        let bound = json!({"spec": {"nodeName": "n3"}});
        assert_eq!(target_node(&bound).as_deref(), Some("n3"));
    }
}
