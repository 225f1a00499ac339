//! ReplicaSet and ReplicationController: keep `spec.replicas` pods from the template running.
//!
//! One policy for both kinds (they differ only in how the selector is written). Each pass:
//! claim the pods (owned ones whose labels still match, adopt matching orphans, release owned
//! ones that stopped matching), create or delete the difference, then write the status
//! (`replicas`, `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas`,
//! `observedGeneration`, and a `ReplicaFailure` condition while writes fail).
//!
//! Creates are issued in slow-start batches (1, 2, 4, … up to [`MAX_BATCH`] at once) as upstream
//! does, so a template the API rejects costs one failed request, not hundreds; at most
//! [`BURST`] pods are created or deleted per pass, and the pass re-queues itself for the rest.
//! Pods are read from the API on every pass (a list of the namespace), so a pass always sees the
//! pods the previous one created; the burst is large because that list is the expensive part of
//! a pass (a 10,000-replica scale-up is two passes, not twenty).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use keel_api::client::{ListParams, Patch, WriteOptions};
use keel_api::registry::ResourceType;
use keel_api::selector::LabelSelector;
use serde_json::{json, Value};

use crate::events;
use crate::pods;
use crate::runner::{Action, Error};
use crate::Context;

/// The most pods created or deleted in one pass.
pub const BURST: usize = 5000;
/// The most pods created at once (the slow start's batches stop doubling here).
pub const MAX_BATCH: usize = 512;

/// Which of the two kinds a pass is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    ReplicaSet,
    ReplicationController,
}

impl Flavor {
    fn rt(self, ctx: &Context) -> &'static ResourceType {
        match self {
            Flavor::ReplicaSet => ctx.kinds.replica_sets,
            Flavor::ReplicationController => ctx.kinds.replication_controllers,
        }
    }

    fn component(self) -> &'static str {
        match self {
            Flavor::ReplicaSet => "replicaset-controller",
            Flavor::ReplicationController => "replication-controller",
        }
    }

    fn selector(self, obj: &Value) -> Result<LabelSelector, Error> {
        match self {
            Flavor::ReplicaSet => {
                LabelSelector::from_json(obj.pointer("/spec/selector")).map_err(|e| Error::Invalid {
                    field: "spec.selector",
                    message: e.to_string(),
                })
            }
            Flavor::ReplicationController => {
                // An RC without a selector selects its template's labels (upstream defaults it).
                let map = obj
                    .pointer("/spec/selector")
                    .and_then(Value::as_object)
                    .filter(|m| !m.is_empty())
                    .or_else(|| {
                        obj.pointer("/spec/template/metadata/labels")
                            .and_then(Value::as_object)
                    });
                Ok(match map {
                    Some(m) if !m.is_empty() => LabelSelector::from_map(m),
                    _ => LabelSelector::nothing(),
                })
            }
        }
    }
}

/// Time per pod between two passes over one object that found nothing to create or delete, at
/// most [`PACE_MAX`]: a pass lists the namespace's pods, and every status change of one of
/// 10,000 pods would otherwise start another (a small ReplicaSet is not slowed down).
const PACE_PER_POD: Duration = Duration::from_micros(100);
const PACE_MAX: Duration = Duration::from_secs(1);

/// When each object (by uid) may have its next pass.
static NEXT_PASS: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Default::default);

fn next_pass() -> std::sync::MutexGuard<'static, HashMap<String, Instant>> {
    NEXT_PASS.lock().unwrap_or_else(|p| p.into_inner())
}

/// One reconcile pass of a ReplicaSet or ReplicationController.
pub async fn reconcile(rs: Arc<Value>, ctx: Arc<Context>, flavor: Flavor) -> Result<Action, Error> {
    let uid = pods::uid(&rs).to_string();
    if let Some(at) = next_pass().get(&uid).copied() {
        let now = Instant::now();
        if at > now {
            return Ok(Action::RequeueAfter(at - now));
        }
    }
    let result = pass(&rs, ctx, flavor).await;
    let mut paced = next_pass();
    match &result {
        Ok((Action::RequeueAfter(d), _)) if d.is_zero() => {
            paced.remove(&uid);
        }
        _ if rs.pointer("/metadata/deletionTimestamp").is_some() => {
            paced.remove(&uid);
        }
        Ok((_, pods)) | Err((_, pods)) => {
            let gap = (PACE_PER_POD * (*pods).min(1_000_000) as u32).min(PACE_MAX);
            paced.insert(uid, Instant::now() + gap);
        }
    }
    result.map(|(a, _)| a).map_err(|(e, _)| e)
}

/// A pass, and how many pods the object owned in it.
async fn pass(rs: &Arc<Value>, ctx: Arc<Context>, flavor: Flavor) -> Result<(Action, usize), (Error, usize)> {
    let mut owned_count = 0;
    reconcile_once(rs.clone(), ctx, flavor, &mut owned_count)
        .await
        .map(|a| (a, owned_count))
        .map_err(|e| (e, owned_count))
}

async fn reconcile_once(
    rs: Arc<Value>,
    ctx: Arc<Context>,
    flavor: Flavor,
    owned_count: &mut usize,
) -> Result<Action, Error> {
    let rt = flavor.rt(&ctx);
    let ns = pods::namespace(&rs);
    let selector = match flavor.selector(&rs) {
        Ok(s) if !s.is_everything() => s,
        Ok(_) => {
            tracing::debug!(
                kind = rt.kind,
                name = pods::name(&rs),
                "an empty selector selects nothing here"
            );
            return Ok(Action::Done);
        }
        Err(e) => {
            tracing::warn!(kind = rt.kind, name = pods::name(&rs), error = %e, "not managing");
            return Ok(Action::Done);
        }
    };
    let list = ctx
        .client
        .list(ctx.kinds.pods, ns.clone(), ListParams::default())
        .await?;
    let all = match list {
        Value::Object(mut m) => match m.remove("items") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let mut owned = claim_pods(&ctx, rt, &rs, &selector, all).await;
    owned.retain(pods::is_active);
    *owned_count = owned.len();

    let want = rs
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0) as usize;
    let mut failure: Option<(&'static str, String)> = None;
    let mut more = false;
    if rs.pointer("/metadata/deletionTimestamp").is_none() {
        if owned.len() < want {
            let missing = want - owned.len();
            more = missing > BURST;
            let (created, err) = create_pods(&ctx, rt, flavor, &rs, missing.min(BURST)).await;
            owned.extend(created);
            if let Some(e) = err {
                failure = Some(("FailedCreate", e));
            }
        } else if owned.len() > want {
            let surplus = owned.len() - want;
            more = surplus > BURST;
            pods::sort_for_deletion(&mut owned);
            let doomed: Vec<Value> = owned.drain(..surplus.min(BURST)).collect();
            let (kept, err) = delete_pods(&ctx, flavor, &rs, doomed).await;
            owned.extend(kept);
            if let Some(e) = err {
                failure = Some(("FailedDelete", e));
            }
        }
    }

    let now = jiff::Timestamp::now();
    let min_ready = rs
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let status = compute_status(&rs, &owned, min_ready, now, failure.as_ref());
    if rs.get("status") != Some(&status) {
        tracing::debug!(name = pods::name(&rs), new = %status, "writing status");
        let mut updated = (*rs).clone();
        updated["status"] = status;
        ctx.client
            .update(rt, ns, updated, Some("status".into()), WriteOptions::default())
            .await?;
    }
    if let Some((_, message)) = failure {
        return Err(Error::Invalid {
            field: "pods",
            message,
        });
    }
    if more {
        return Ok(Action::RequeueAfter(Duration::ZERO));
    }
    let next = owned
        .iter()
        .filter_map(|p| pods::seconds_to_available(p, min_ready, now))
        .min();
    Ok(match next {
        Some(s) => Action::RequeueAfter(Duration::from_secs(s as u64)),
        None => Action::Done,
    })
}

/// The pods this object controls after adoption and release.
async fn claim_pods(
    ctx: &Context,
    rt: &'static ResourceType,
    owner: &Value,
    selector: &LabelSelector,
    all: Vec<Value>,
) -> Vec<Value> {
    let owner_uid = pods::uid(owner);
    let deleting = pods::is_terminating(owner);
    let mut owned = Vec::new();
    for pod in all {
        let matches = selector.matches_object(&pod);
        match pods::controller_uid(&pod) {
            Some(uid) if uid == owner_uid => {
                if matches {
                    owned.push(pod);
                } else if !deleting {
                    release(ctx, owner_uid, &pod).await;
                }
            }
            Some(_) => {}
            None if matches && !deleting && !pods::is_terminating(&pod) => {
                if let Some(adopted) = adopt(ctx, rt, owner, &pod).await {
                    owned.push(adopted);
                }
            }
            None => {}
        }
    }
    owned
}

/// Adds our controller reference to an orphan (guarded by its resourceVersion).
async fn adopt(ctx: &Context, rt: &'static ResourceType, owner: &Value, pod: &Value) -> Option<Value> {
    let mut refs = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    refs.push(pods::owner_reference(rt, owner));
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": pod.pointer("/metadata/resourceVersion"),
    }});
    match ctx
        .client
        .patch(
            ctx.kinds.pods,
            pods::namespace(pod),
            pods::name(pod).to_string(),
            Patch::Merge(patch),
            None,
            WriteOptions::default(),
        )
        .await
    {
        Ok(p) => {
            tracing::info!(
                owner = pods::name(owner),
                pod = pods::name(pod),
                "adopted an orphan pod"
            );
            Some(p)
        }
        Err(e) => {
            tracing::debug!(pod = pods::name(pod), error = %e, "could not adopt");
            None
        }
    }
}

/// Removes our controller reference from a pod whose labels stopped matching.
async fn release(ctx: &Context, owner_uid: &str, pod: &Value) {
    let refs: Vec<Value> = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let patch = json!({"metadata": {
        "ownerReferences": if refs.is_empty() { Value::Null } else { json!(refs) },
        "resourceVersion": pod.pointer("/metadata/resourceVersion"),
    }});
    if let Err(e) = ctx
        .client
        .patch(
            ctx.kinds.pods,
            pods::namespace(pod),
            pods::name(pod).to_string(),
            Patch::Merge(patch),
            None,
            WriteOptions::default(),
        )
        .await
    {
        tracing::debug!(pod = pods::name(pod), error = %e, "could not release");
    }
}

/// The pod a controller creates from its template.
pub fn pod_from_template(rt: &'static ResourceType, owner: &Value) -> Value {
    let template = owner.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut meta = json!({
        "generateName": format!("{}-", pods::name(owner)),
        "name": pods::generated_name(pods::name(owner)),
        "ownerReferences": [pods::owner_reference(rt, owner)],
    });
    for field in ["labels", "annotations"] {
        if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
            meta[field] = v.clone();
        }
    }
    if let Some(ns) = pods::namespace(owner) {
        meta["namespace"] = json!(ns);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    })
}

/// Creates `n` pods in slow-start batches; stops at the first batch with a failure.
async fn create_pods(
    ctx: &Context,
    rt: &'static ResourceType,
    flavor: Flavor,
    owner: &Value,
    n: usize,
) -> (Vec<Value>, Option<String>) {
    let mut created = Vec::new();
    let mut batch = 1usize;
    let mut left = n;
    while left > 0 {
        let size = batch.min(left);
        let results = join_all((0..size).map(|_| create_one(ctx, rt, owner))).await;
        let mut error = None;
        for r in results {
            match r {
                Ok(pod) => {
                    let message = format!("Created pod: {}", pods::name(&pod));
                    ctx.record(
                        flavor.component(),
                        owner,
                        events::NORMAL,
                        "SuccessfulCreate",
                        &message,
                    );
                    created.push(pod);
                }
                Err(e) => error = Some(e),
            }
        }
        if let Some(e) = error {
            let message = format!("Error creating: {e}");
            ctx.record(
                flavor.component(),
                owner,
                events::WARNING,
                "FailedCreate",
                &message,
            );
            return (created, Some(message));
        }
        left -= size;
        batch = (batch * 2).min(MAX_BATCH);
    }
    (created, None)
}

async fn create_one(ctx: &Context, rt: &'static ResourceType, owner: &Value) -> Result<Value, String> {
    let mut last = String::new();
    // A name collision (5 random characters) is retried with a fresh name.
    for _ in 0..3 {
        let pod = pod_from_template(rt, owner);
        match ctx
            .client
            .create(
                ctx.kinds.pods,
                pods::namespace(owner),
                pod,
                WriteOptions::default(),
            )
            .await
        {
            Ok(p) => return Ok(p),
            Err(e) if e.code == 409 && e.reason == "AlreadyExists" => last = e.message,
            Err(e) => return Err(e.message),
        }
    }
    Err(last)
}

/// Deletes the given pods; returns the ones that could not be deleted.
async fn delete_pods(
    ctx: &Context,
    flavor: Flavor,
    owner: &Value,
    doomed: Vec<Value>,
) -> (Vec<Value>, Option<String>) {
    let mut results = Vec::with_capacity(doomed.len());
    for chunk in doomed.chunks(MAX_BATCH) {
        results.extend(
            join_all(chunk.iter().map(|p| {
                ctx.client.delete(
                    ctx.kinds.pods,
                    pods::namespace(p),
                    pods::name(p).to_string(),
                    json!({"preconditions": {"uid": pods::uid(p)}}),
                )
            }))
            .await,
        );
    }
    let mut kept = Vec::new();
    let mut error = None;
    for (pod, r) in doomed.into_iter().zip(results) {
        match r {
            Ok(_) => {
                let message = format!("Deleted pod: {}", pods::name(&pod));
                ctx.record(
                    flavor.component(),
                    owner,
                    events::NORMAL,
                    "SuccessfulDelete",
                    &message,
                );
            }
            Err(e) if e.code == 404 => {}
            Err(e) => {
                error = Some(format!("Error deleting: {}", e.message));
                kept.push(pod);
            }
        }
    }
    (kept, error)
}

/// The status a pass writes, keeping fields it does not own and condition times that did not
/// change.
pub fn compute_status(
    rs: &Value,
    owned: &[Value],
    min_ready: i64,
    now: jiff::Timestamp,
    failure: Option<&(&'static str, String)>,
) -> Value {
    let template_labels = rs
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    let fully_labeled = owned
        .iter()
        .filter(|p| {
            let labels = p.pointer("/metadata/labels").and_then(Value::as_object);
            template_labels.is_none_or(|t| t.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v)))
        })
        .count();
    let ready = owned.iter().filter(|p| pods::is_ready(p)).count();
    let available = owned
        .iter()
        .filter(|p| pods::is_available(p, min_ready, now))
        .count();
    let mut status = rs
        .get("status")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    status["replicas"] = json!(owned.len());
    status["fullyLabeledReplicas"] = json!(fully_labeled);
    status["readyReplicas"] = json!(ready);
    status["availableReplicas"] = json!(available);
    status["observedGeneration"] = json!(pods::generation(rs));
    let mut conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match failure {
        Some((reason, message)) => {
            let existing = conditions
                .iter_mut()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("ReplicaFailure"));
            match existing {
                Some(c) => {
                    c["reason"] = json!(reason);
                    c["message"] = json!(message);
                }
                None => conditions.push(json!({
                    "type": "ReplicaFailure",
                    "status": "True",
                    "lastTransitionTime": keel_api::time::format_rfc3339(now),
                    "reason": reason,
                    "message": message,
                })),
            }
        }
        None => conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("ReplicaFailure")),
    }
    if let Some(s) = status.as_object_mut() {
        if conditions.is_empty() {
            s.remove("conditions");
        } else {
            s.insert("conditions".into(), json!(conditions));
        }
    }
    status
}
