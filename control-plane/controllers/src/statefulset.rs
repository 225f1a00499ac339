//! StatefulSets: pods with stable names (`<set>-<ordinal>`), stable storage (one claim per
//! volume claim template and ordinal, `<claim>-<set>-<ordinal>`, kept when pods go) and order.
//!
//! * `OrderedReady` (the default) creates ordinal *i* only once every lower ordinal is Running
//!   and Ready, and removes the highest ordinal first, one at a time; `Parallel` does all at once.
//! * Pods get `hostname` = their name and `subdomain` = `serviceName` (stable DNS through a
//!   headless Service), and the labels `statefulset.kubernetes.io/pod-name`,
//!   `apps.kubernetes.io/pod-index` and `controller-revision-hash`.
//! * Template versions are ControllerRevisions (shared with DaemonSets). `RollingUpdate`
//!   replaces pods from the highest ordinal down to `partition`, one at a time and only while
//!   all pods are ready; `OnDelete` waits for the user. Failed pods are replaced.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::future::join_all;
use keel_api::client::{ListParams, WriteOptions};
use serde_json::{json, Value};

use crate::daemonset::{sync_revisions, HASH_LABEL};
use crate::deployment::template_hash;
use crate::events;
use crate::pods;
use crate::runner::{Action, Error};
use crate::Context;

const COMPONENT: &str = "statefulset-controller";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

fn ordinal(set: &str, pod: &Value) -> Option<i64> {
    pods::name(pod).strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn running_and_ready(pod: &Value) -> bool {
    pods::phase(pod) == "Running" && pods::is_ready(pod) && !pods::is_terminating(pod)
}

fn claim_name(template: &Value, set: &str, i: i64) -> String {
    format!("{}-{set}-{i}", pods::name(template))
}

/// The pod of ordinal `i`.
fn pod_for(ctx: &Context, sts: &Value, i: i64, hash: &str) -> Value {
    let set = pods::name(sts);
    let mut pod = crate::replicaset::pod_from_template(ctx.kinds.stateful_sets, sts);
    let name = format!("{set}-{i}");
    pod["metadata"]["name"] = json!(name);
    if let Some(m) = pod["metadata"].as_object_mut() {
        m.remove("generateName");
    }
    if !pod["metadata"]["labels"].is_object() {
        pod["metadata"]["labels"] = json!({});
    }
    pod["metadata"]["labels"][HASH_LABEL] = json!(hash);
    pod["metadata"]["labels"][POD_NAME_LABEL] = json!(name);
    pod["metadata"]["labels"][POD_INDEX_LABEL] = json!(i.to_string());
    pod["spec"]["hostname"] = json!(name);
    if let Some(svc) = sts
        .pointer("/spec/serviceName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        pod["spec"]["subdomain"] = json!(svc);
    }
    let templates = sts
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !templates.is_empty() {
        let mut volumes: Vec<Value> = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
        for t in &templates {
            volumes.retain(|v| v["name"].as_str() != Some(pods::name(t)));
            volumes.push(
                json!({"name": pods::name(t), "persistentVolumeClaim": {"claimName": claim_name(t, set, i)}}),
            );
        }
        pod["spec"]["volumes"] = json!(volumes);
    }
    pod
}

/// Creates the claims of ordinal `i` that do not exist yet.
async fn ensure_claims(ctx: &Context, sts: &Value, i: i64, existing: &HashSet<String>) -> Result<(), Error> {
    let set = pods::name(sts);
    let ns = pods::namespace(sts);
    for t in sts
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = claim_name(t, set, i);
        if existing.contains(&name) {
            continue;
        }
        let mut meta = t
            .get("metadata")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or(json!({}));
        meta["name"] = json!(name);
        let mut labels = sts
            .pointer("/spec/selector/matchLabels")
            .cloned()
            .unwrap_or(json!({}));
        if let Some(extra) = meta.get("labels").and_then(Value::as_object) {
            for (k, v) in extra {
                labels[k] = v.clone();
            }
        }
        meta["labels"] = labels;
        let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
                           "spec": t.get("spec").cloned().unwrap_or(json!({}))});
        match ctx
            .client
            .create(ctx.kinds.claims, ns.clone(), claim, WriteOptions::default())
            .await
        {
            Ok(_) => ctx.record(
                COMPONENT,
                sts,
                events::NORMAL,
                "SuccessfulCreate",
                &format!("create Claim {name} Pod {set}-{i} in StatefulSet {set} success"),
            ),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One reconcile pass of a StatefulSet.
pub async fn reconcile(sts: Arc<Value>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pods::is_terminating(&sts) {
        return Ok(Action::Done);
    }
    let set = pods::name(&sts).to_string();
    let ns = pods::namespace(&sts);
    let replicas = sts
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0);
    let parallel = sts.pointer("/spec/podManagementPolicy").and_then(Value::as_str) == Some("Parallel");
    let template = sts.pointer("/spec/template").cloned().unwrap_or(json!({}));
    // Upstream hashes with a collision count of 0 until one is recorded: hashing "none" on the
    // first pass and the 0 the status then records on later ones made a second revision of an
    // unchanged template, and the rolling update restarted web-0 after the set had started.
    let hash = template_hash(
        &template,
        Some(
            sts.pointer("/status/collisionCount")
                .and_then(Value::as_i64)
                .unwrap_or(0),
        ),
    );
    let update_revision = format!("{set}-{hash}");

    let list = ctx
        .client
        .list(ctx.kinds.pods, ns.clone(), ListParams::default())
        .await?;
    let uid = pods::uid(&sts);
    let mut by_ordinal: HashMap<i64, Value> = HashMap::new();
    for p in list.get("items").and_then(Value::as_array).into_iter().flatten() {
        if pods::controller_uid(p) == Some(uid) {
            if let Some(i) = ordinal(&set, p) {
                by_ordinal.insert(i, p.clone());
            }
        }
    }
    let in_use: HashSet<String> = by_ordinal
        .values()
        .filter_map(|p| {
            p.pointer(&format!("/metadata/labels/{HASH_LABEL}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    sync_revisions(&ctx, ctx.kinds.stateful_sets, &sts, &hash, &in_use).await?;
    let claims_list = ctx
        .client
        .list(ctx.kinds.claims, ns.clone(), ListParams::default())
        .await?;
    let claims: HashSet<String> = claims_list
        .get("items")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|c| pods::name(c).to_string()).collect())
        .unwrap_or_default();

    // Failed pods are replaced; while any pod is terminating, ordered sets wait.
    let mut deletions: Vec<Value> = by_ordinal
        .values()
        .filter(|p| pods::phase(p) == "Failed" && !pods::is_terminating(p))
        .cloned()
        .collect();
    let terminating = by_ordinal.values().any(pods::is_terminating);
    let mut creations: Vec<i64> = Vec::new();
    if deletions.is_empty() && (parallel || !terminating) {
        // Scale up, in order.
        for i in 0..replicas {
            match by_ordinal.get(&i) {
                Some(p) if running_and_ready(p) => {}
                Some(_) if !parallel => break,
                Some(_) => {}
                None => {
                    creations.push(i);
                    if !parallel {
                        break;
                    }
                }
            }
        }
        // Scale down, highest first (once every kept pod is ready, for ordered sets).
        let mut surplus: Vec<i64> = by_ordinal.keys().copied().filter(|i| *i >= replicas).collect();
        surplus.sort_unstable_by(|a, b| b.cmp(a));
        let kept_ready = (0..replicas).all(|i| by_ordinal.get(&i).is_some_and(running_and_ready));
        if creations.is_empty() && !surplus.is_empty() && (parallel || kept_ready) {
            let take = if parallel { surplus.len() } else { 1 };
            deletions.extend(
                surplus
                    .iter()
                    .take(take)
                    .filter_map(|i| by_ordinal.get(i).cloned()),
            );
        }
        // Rolling update: highest ordinal on an old revision, down to the partition.
        let rolling = sts.pointer("/spec/updateStrategy/type").and_then(Value::as_str) != Some("OnDelete");
        let partition = sts
            .pointer("/spec/updateStrategy/rollingUpdate/partition")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if rolling && creations.is_empty() && deletions.is_empty() && kept_ready {
            let stale = (partition..replicas).rev().find(|i| {
                by_ordinal
                    .get(i)
                    .and_then(|p| p.pointer(&format!("/metadata/labels/{HASH_LABEL}")))
                    .and_then(Value::as_str)
                    != Some(hash.as_str())
            });
            if let Some(p) = stale.and_then(|i| by_ordinal.get(&i)) {
                deletions.push(p.clone());
            }
        }
    }
    for i in &creations {
        ensure_claims(&ctx, &sts, *i, &claims).await?;
    }
    let created = join_all(creations.iter().map(|i| {
        let pod = pod_for(&ctx, &sts, *i, &hash);
        ctx.client
            .create(ctx.kinds.pods, ns.clone(), pod, WriteOptions::default())
    }))
    .await;
    for (i, r) in creations.iter().zip(created) {
        match r {
            Ok(_) => ctx.record(
                COMPONENT,
                &sts,
                events::NORMAL,
                "SuccessfulCreate",
                &format!("create Pod {set}-{i} in StatefulSet {set} successful"),
            ),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for p in &deletions {
        match ctx
            .client
            .delete(
                ctx.kinds.pods,
                ns.clone(),
                pods::name(p).to_string(),
                json!({"preconditions": {"uid": pods::uid(p)}}),
            )
            .await
        {
            Ok(_) => ctx.record(
                COMPONENT,
                &sts,
                events::NORMAL,
                "SuccessfulDelete",
                &format!("delete Pod {} in StatefulSet {set} successful", pods::name(p)),
            ),
            Err(e) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }

    // Status, from the pods seen at the start of the pass.
    let live: Vec<&Value> = by_ordinal.values().filter(|p| !pods::is_terminating(p)).collect();
    let current_revision = sts
        .pointer("/status/currentRevision")
        .and_then(Value::as_str)
        .unwrap_or(&update_revision)
        .to_string();
    let rev_of = |p: &Value| {
        format!(
            "{set}-{}",
            p.pointer(&format!("/metadata/labels/{HASH_LABEL}"))
                .and_then(Value::as_str)
                .unwrap_or("")
        )
    };
    let updated = live.iter().filter(|p| rev_of(p) == update_revision).count() as i64;
    let min_ready = sts
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let now = jiff::Timestamp::now();
    // Once every pod runs the update revision, it becomes the current one.
    let current_revision = if updated == replicas && live.len() as i64 == replicas {
        update_revision.clone()
    } else {
        current_revision
    };
    let mut status = sts
        .get("status")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    status["observedGeneration"] = json!(pods::generation(&sts));
    status["replicas"] = json!(live.len());
    status["readyReplicas"] = json!(live.iter().filter(|p| pods::is_ready(p)).count());
    status["availableReplicas"] = json!(live
        .iter()
        .filter(|p| pods::is_available(p, min_ready, now))
        .count());
    status["currentReplicas"] = json!(live.iter().filter(|p| rev_of(p) == current_revision).count());
    status["updatedReplicas"] = json!(updated);
    status["currentRevision"] = json!(current_revision);
    status["updateRevision"] = json!(update_revision);
    if status.get("collisionCount").is_none() {
        status["collisionCount"] = json!(0);
    }
    if sts.get("status") != Some(&status) {
        let mut updated_sts = (*sts).clone();
        updated_sts["status"] = status;
        ctx.client
            .update(
                ctx.kinds.stateful_sets,
                ns,
                updated_sts,
                Some("status".into()),
                WriteOptions::default(),
            )
            .await?;
    }
    Ok(Action::Done)
}
