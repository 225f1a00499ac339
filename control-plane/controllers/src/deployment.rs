//! Deployments: one ReplicaSet per pod template, rolled between with `RollingUpdate`
//! (`maxSurge`/`maxUnavailable`) or `Recreate`, following upstream's deployment controller so that
//! `kubectl rollout status|history|undo|pause|resume` and `kubectl set image` work unchanged.
//!
//! * The ReplicaSet of a template is `<deployment>-<pod-template-hash>`, the hash a short
//!   encoding of an FNV-1a digest of the template (and `status.collisionCount`), also put on the
//!   ReplicaSet's selector and template as the `pod-template-hash` label. The ReplicaSet "of" the
//!   current template is found by that label or by comparing templates without it, so a
//!   `rollout undo` (which copies an old ReplicaSet's template back) reuses the old ReplicaSet.
//! * Revisions: `deployment.kubernetes.io/revision` on each ReplicaSet (the new one gets the
//!   highest old revision plus one, `revision-history` keeps what a reused one had before) and on
//!   the Deployment; other Deployment annotations (`kubernetes.io/change-cause`) are copied onto
//!   the ReplicaSets, which is what `rollout history` prints.
//! * Each pass: claim ReplicaSets, then either scale (paused, or `spec.replicas` changed) or
//!   roll, then clean up history beyond `revisionHistoryLimit` once complete, then write the
//!   status with upstream's `Available`/`Progressing` conditions and reasons.
//!
//! Two deliberate differences from upstream: scaling a deployment in the middle of a rollout
//! is simpler than upstream's proportional split (additions go to the newest ReplicaSet,
//! removals come from the oldest first), and `maxSurge` is checked against the pods that may
//! still exist (per ReplicaSet the larger of `spec.replicas` and `status.replicas`), so a
//! scaled-down ReplicaSet's surplus pods count until they are gone and the surge bound holds
//! for real pods, not only for the ReplicaSets' specs.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use keel_api::client::{ListParams, Patch, WriteOptions};
use keel_api::selector::LabelSelector;
use serde_json::{json, Map, Value};

use crate::events;
use crate::pods;
use crate::runner::{Action, Error};
use crate::Context;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
const COMPONENT: &str = "deployment-controller";

/// Deployment annotations that are not copied onto ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

// ------------------------------------------------------------------------------------ helpers

fn spec_replicas(obj: &Value) -> i64 {
    obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
}

fn status_i64(obj: &Value, field: &str) -> i64 {
    obj.pointer(&format!("/status/{field}"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

pub fn revision(obj: &Value) -> i64 {
    annotation(obj, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn created(obj: &Value) -> (String, String) {
    (
        obj.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        pods::name(obj).to_string(),
    )
}

fn is_rolling(d: &Value) -> bool {
    d.pointer("/spec/strategy/type").and_then(Value::as_str) != Some("Recreate")
}

/// An int-or-percent against a total (upstream's `GetScaledValueFromIntOrPercent`).
fn scaled(v: Option<&Value>, default: &str, total: i64, round_up: bool) -> i64 {
    let v = v.cloned().unwrap_or(json!(default));
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if round_up => (p * total + 99) / 100,
            Some(p) => p * total / 100,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

/// (maxSurge, maxUnavailable) resolved against the replicas, as `ResolveFenceposts`.
pub fn fenceposts(d: &Value) -> (i64, i64) {
    if !is_rolling(d) {
        return (0, 0);
    }
    let replicas = spec_replicas(d);
    let ru = d.pointer("/spec/strategy/rollingUpdate");
    let surge = scaled(ru.and_then(|r| r.get("maxSurge")), "25%", replicas, true);
    let mut unavailable = scaled(ru.and_then(|r| r.get("maxUnavailable")), "25%", replicas, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

fn max_unavailable(d: &Value) -> i64 {
    let replicas = spec_replicas(d);
    if !is_rolling(d) || replicas == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas)
}

fn canonical_hash(v: &Value, h: &mut u32) {
    fn feed(h: &mut u32, bytes: &[u8]) {
        for b in bytes {
            *h ^= u32::from(*b);
            *h = h.wrapping_mul(0x0100_0193);
        }
    }
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            feed(h, b"{");
            for k in keys {
                feed(h, k.as_bytes());
                feed(h, b":");
                canonical_hash(&m[k], h);
                feed(h, b",");
            }
            feed(h, b"}");
        }
        Value::Array(a) => {
            feed(h, b"[");
            for x in a {
                canonical_hash(x, h);
                feed(h, b",");
            }
            feed(h, b"]");
        }
        other => feed(h, other.to_string().as_bytes()),
    }
}

/// Drops nulls and empty objects and arrays, recursively: the same template read back from a
/// Go client (`creationTimestamp: null`, `resources: {}`) compares equal, as upstream compares
/// typed structs.
fn normalized(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let out: Map<String, Value> = m
                .iter()
                .filter_map(|(k, v)| normalized(v).map(|v| (k.clone(), v)))
                .collect();
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(a) => {
            let out: Vec<Value> = a.iter().map(|v| normalized(v).unwrap_or(json!({}))).collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other.clone()),
    }
}

fn without_hash_label(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(HASH_LABEL);
    }
    normalized(&t).unwrap_or(json!({}))
}

/// The `pod-template-hash` of a template: FNV-1a over its canonical JSON (keys sorted, the hash
/// label itself left out) and the collision count, written in upstream's safe alphabet.
pub fn template_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    canonical_hash(&without_hash_label(template), &mut h);
    if let Some(c) = collision_count {
        canonical_hash(&json!(c), &mut h);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

fn templates_equal(a: &Value, b: &Value) -> bool {
    without_hash_label(a) == without_hash_label(b)
}

/// The annotations a ReplicaSet gets from its Deployment.
fn copied_annotations(d: &Value) -> Map<String, Value> {
    d.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------ the pass

/// The ReplicaSets of one deployment during a pass, kept current as the pass writes them.
struct State {
    d: Value,
    rss: Vec<Value>,
    new: Option<usize>,
    /// A `Progressing` condition the pass wants to record (reason, message).
    progress: Option<(&'static str, String)>,
}

impl State {
    fn new_rs(&self) -> Option<&Value> {
        self.new.map(|i| &self.rss[i])
    }

    fn old_indices(&self) -> Vec<usize> {
        (0..self.rss.len()).filter(|i| Some(*i) != self.new).collect()
    }

    fn total_spec(&self) -> i64 {
        self.rss.iter().map(spec_replicas).sum()
    }

    /// Pods that may exist: per ReplicaSet the larger of what it wants and what it has (a
    /// ReplicaSet scaled down still has its surplus pods until its controller deletes them).
    fn total_possible(&self) -> i64 {
        self.rss
            .iter()
            .map(|rs| spec_replicas(rs).max(status_i64(rs, "replicas")))
            .sum()
    }
}

/// One reconcile pass of a Deployment.
pub async fn reconcile(d: Arc<Value>, ctx: Arc<Context>) -> Result<Action, Error> {
    let selector = match LabelSelector::from_json(d.pointer("/spec/selector")) {
        Ok(s) if !s.is_everything() => s,
        _ => {
            tracing::warn!(
                deployment = pods::name(&d),
                "invalid or empty selector; not managing"
            );
            return Ok(Action::Done);
        }
    };
    let rss = claim_replica_sets(&ctx, &d, &selector).await?;
    let mut st = State {
        d: (*d).clone(),
        rss,
        new: None,
        progress: None,
    };
    if pods::is_terminating(&d) {
        st.new = find_new(&st.d, &st.rss);
        return write_status(&ctx, &mut st).await;
    }
    let paused = d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
    let scaling = {
        st.new = find_new(&st.d, &st.rss);
        st.rss.iter().filter(|rs| spec_replicas(rs) > 0).any(|rs| {
            annotation(rs, DESIRED_REPLICAS)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v != spec_replicas(&st.d))
        })
    };
    if paused || scaling {
        sync_revision(&ctx, &mut st, false).await?;
        scale(&ctx, &mut st).await?;
        if paused {
            cleanup(&ctx, &mut st).await;
        }
        return write_status(&ctx, &mut st).await;
    }
    if is_rolling(&d) {
        rollout_rolling(&ctx, &mut st).await
    } else {
        rollout_recreate(&ctx, &mut st).await
    }
}

/// The deployment's ReplicaSets: owned ones that match, plus adopted orphans; owned ones that
/// stopped matching are released.
async fn claim_replica_sets(ctx: &Context, d: &Value, selector: &LabelSelector) -> Result<Vec<Value>, Error> {
    let rt = ctx.kinds.replica_sets;
    let list = ctx
        .client
        .list(rt, pods::namespace(d), ListParams::default())
        .await?;
    let uid = pods::uid(d);
    let mut out = Vec::new();
    for rs in list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let matches = selector.matches_object(&rs);
        match pods::controller_uid(&rs) {
            Some(u) if u == uid => {
                if matches {
                    out.push(rs);
                } else if !pods::is_terminating(d) {
                    let patch = json!({"metadata": {"ownerReferences": null, "resourceVersion": rs.pointer("/metadata/resourceVersion")}});
                    let _ = ctx
                        .client
                        .patch(
                            rt,
                            pods::namespace(&rs),
                            pods::name(&rs).to_string(),
                            Patch::Merge(patch),
                            None,
                            WriteOptions::default(),
                        )
                        .await;
                }
            }
            None if matches && !pods::is_terminating(d) && !pods::is_terminating(&rs) => {
                let mut refs = rs
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                refs.push(pods::owner_reference(ctx.kinds.deployments, d));
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.pointer("/metadata/resourceVersion")}});
                if let Ok(adopted) = ctx
                    .client
                    .patch(
                        rt,
                        pods::namespace(&rs),
                        pods::name(&rs).to_string(),
                        Patch::Merge(patch),
                        None,
                        WriteOptions::default(),
                    )
                    .await
                {
                    out.push(adopted);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The ReplicaSet of the current template (the oldest, if several match).
fn find_new(d: &Value, rss: &[Value]) -> Option<usize> {
    let template = d.pointer("/spec/template").unwrap_or(&Value::Null);
    let hash = template_hash(
        template,
        d.pointer("/status/collisionCount").and_then(Value::as_i64),
    );
    let mut candidates: Vec<usize> = (0..rss.len())
        .filter(|i| {
            let rs = &rss[*i];
            let label = rs
                .pointer(&format!("/spec/template/metadata/labels/{HASH_LABEL}"))
                .and_then(Value::as_str);
            label == Some(hash.as_str())
                || templates_equal(rs.pointer("/spec/template").unwrap_or(&Value::Null), template)
        })
        .collect();
    candidates.sort_by_key(|i| created(&rss[*i]));
    candidates.first().copied()
}

/// Brings revisions up to date (and creates the new ReplicaSet when `create`).
async fn sync_revision(ctx: &Context, st: &mut State, create: bool) -> Result<(), Error> {
    let max_old = st
        .old_indices()
        .into_iter()
        .map(|i| revision(&st.rss[i]))
        .max()
        .unwrap_or(0);
    let new_revision = max_old + 1;
    match st.new {
        Some(i) => {
            let rs = &st.rss[i];
            let mut updated = rs.clone();
            let current = revision(rs);
            let annotations = updated["metadata"]
                .as_object_mut()
                .map(|m| m.entry("annotations").or_insert(json!({})));
            if let Some(Value::Object(a)) = annotations {
                for (k, v) in copied_annotations(&st.d) {
                    a.insert(k, v);
                }
                if current < new_revision {
                    if current > 0 {
                        let history = a
                            .get(REVISION_HISTORY)
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        let history = if history.is_empty() {
                            current.to_string()
                        } else {
                            format!("{history},{current}")
                        };
                        a.insert(REVISION_HISTORY.into(), json!(history));
                    }
                    a.insert(REVISION.into(), json!(new_revision.to_string()));
                }
            }
            let min_ready = st.d.pointer("/spec/minReadySeconds").cloned();
            if updated.pointer("/spec/minReadySeconds") != min_ready.as_ref() {
                updated["spec"]["minReadySeconds"] = min_ready.unwrap_or(json!(0));
            }
            if updated != *rs {
                let written = ctx
                    .client
                    .update(
                        ctx.kinds.replica_sets,
                        pods::namespace(rs),
                        updated,
                        None,
                        WriteOptions::default(),
                    )
                    .await?;
                st.rss[i] = written;
            }
            if !has_condition(&st.d, "Progressing") {
                st.progress = Some((
                    "FoundNewReplicaSet",
                    format!("Found new replica set \"{}\"", pods::name(&st.rss[i])),
                ));
            }
        }
        None if create => {
            let rs = create_new(ctx, st, new_revision).await?;
            st.progress = Some((
                "NewReplicaSetCreated",
                format!("Created new replica set \"{}\"", pods::name(&rs)),
            ));
            st.rss.push(rs);
            st.new = Some(st.rss.len() - 1);
        }
        None => {}
    }
    // The deployment's own revision annotation follows the new ReplicaSet's.
    if let Some(rs) = st.new_rs() {
        let rev = annotation(rs, REVISION).unwrap_or("").to_string();
        if !rev.is_empty() && annotation(&st.d, REVISION) != Some(rev.as_str()) {
            let mut d = st.d.clone();
            if let Some(m) = d["metadata"].as_object_mut() {
                let a = m.entry("annotations").or_insert(json!({}));
                if !a.is_object() {
                    *a = json!({});
                }
                a[REVISION] = json!(rev);
            }
            st.d = ctx
                .client
                .update(
                    ctx.kinds.deployments,
                    pods::namespace(&d),
                    d,
                    None,
                    WriteOptions::default(),
                )
                .await?;
        }
    }
    Ok(())
}

async fn create_new(ctx: &Context, st: &mut State, new_revision: i64) -> Result<Value, Error> {
    let d = &st.d;
    let collision = d.pointer("/status/collisionCount").and_then(Value::as_i64);
    let mut template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template, collision);
    if !template.get("metadata").is_some_and(Value::is_object) {
        template["metadata"] = json!({});
    }
    if !template["metadata"].get("labels").is_some_and(Value::is_object) {
        template["metadata"]["labels"] = json!({});
    }
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
    if !selector.get("matchLabels").is_some_and(Value::is_object) {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let replicas = new_rs_replicas(d, st.total_possible(), 0);
    let (surge, _) = fenceposts(d);
    let mut annotations = copied_annotations(d);
    annotations.insert(REVISION.into(), json!(new_revision.to_string()));
    annotations.insert(DESIRED_REPLICAS.into(), json!(spec_replicas(d).to_string()));
    annotations.insert(MAX_REPLICAS.into(), json!((spec_replicas(d) + surge).to_string()));
    let name = format!("{}-{hash}", pods::name(d));
    let mut rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "labels": template["metadata"]["labels"].clone(),
            "annotations": annotations,
            "ownerReferences": [pods::owner_reference(ctx.kinds.deployments, d)],
        },
        "spec": {
            "replicas": replicas,
            "minReadySeconds": d.pointer("/spec/minReadySeconds").cloned().unwrap_or(json!(0)),
            "selector": selector,
            "template": template,
        },
    });
    let ns = pods::namespace(d);
    if let Some(ns) = &ns {
        rs["metadata"]["namespace"] = json!(ns);
    }
    match ctx
        .client
        .create(ctx.kinds.replica_sets, ns.clone(), rs, WriteOptions::default())
        .await
    {
        Ok(created) => {
            if replicas > 0 {
                let message = format!("Scaled up replica set {name} from 0 to {replicas}");
                ctx.record(COMPONENT, d, events::NORMAL, "ScalingReplicaSet", &message);
            }
            Ok(created)
        }
        Err(e) if e.code == 409 && e.reason == "AlreadyExists" => {
            // Someone else's ReplicaSet has our name: bump the collision count and try again.
            let existing = ctx
                .client
                .get(ctx.kinds.replica_sets, ns.clone(), name.clone())
                .await?;
            if pods::controller_uid(&existing) == Some(pods::uid(d))
                && templates_equal(
                    existing.pointer("/spec/template").unwrap_or(&Value::Null),
                    d.pointer("/spec/template").unwrap_or(&Value::Null),
                )
            {
                return Ok(existing);
            }
            let mut updated = d.clone();
            updated["status"]["collisionCount"] = json!(collision.unwrap_or(0) + 1);
            ctx.client
                .update(
                    ctx.kinds.deployments,
                    ns,
                    updated,
                    Some("status".into()),
                    WriteOptions::default(),
                )
                .await?;
            Err(Error::Invalid {
                field: "status.collisionCount",
                message: format!("replica set name {name} is taken; collision count raised"),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// How many replicas the new ReplicaSet should have now (upstream's `NewRSNewReplicas`).
fn new_rs_replicas(d: &Value, total_spec: i64, new_current: i64) -> i64 {
    let replicas = spec_replicas(d);
    if !is_rolling(d) {
        return replicas;
    }
    let (surge, _) = fenceposts(d);
    let max_total = replicas + surge;
    if total_spec >= max_total {
        return new_current;
    }
    let up = (max_total - total_spec).min(replicas - new_current).max(0);
    new_current + up
}

/// Sets a ReplicaSet's replicas (and the desired/max annotations); records the event.
async fn scale_rs(ctx: &Context, st: &mut State, i: usize, to: i64) -> Result<bool, Error> {
    let rs = &st.rss[i];
    let from = spec_replicas(rs);
    let desired = spec_replicas(&st.d).to_string();
    let max = (spec_replicas(&st.d) + fenceposts(&st.d).0).to_string();
    let annotations_ok = annotation(rs, DESIRED_REPLICAS) == Some(desired.as_str())
        && annotation(rs, MAX_REPLICAS) == Some(max.as_str());
    if from == to && annotations_ok {
        return Ok(false);
    }
    let patch = json!({
        "metadata": {"annotations": {DESIRED_REPLICAS: desired, MAX_REPLICAS: max}},
        "spec": {"replicas": to},
    });
    let written = ctx
        .client
        .patch(
            ctx.kinds.replica_sets,
            pods::namespace(rs),
            pods::name(rs).to_string(),
            Patch::Merge(patch),
            None,
            WriteOptions::default(),
        )
        .await?;
    if from != to {
        let direction = if to > from { "up" } else { "down" };
        let message = format!(
            "Scaled {direction} replica set {} from {from} to {to}",
            pods::name(&written)
        );
        ctx.record(COMPONENT, &st.d, events::NORMAL, "ScalingReplicaSet", &message);
    }
    st.rss[i] = written;
    Ok(from != to)
}

/// Scaling outside a rollout (paused, or `spec.replicas` changed).
async fn scale(ctx: &Context, st: &mut State) -> Result<(), Error> {
    let replicas = spec_replicas(&st.d);
    let mut active: Vec<usize> = (0..st.rss.len())
        .filter(|i| spec_replicas(&st.rss[*i]) > 0)
        .collect();
    if active.len() <= 1 {
        let target = match (active.first(), st.new) {
            (Some(i), _) => Some(*i),
            (None, Some(n)) => Some(n),
            (None, None) => (0..st.rss.len()).max_by_key(|i| created(&st.rss[*i])),
        };
        if let Some(i) = target {
            scale_rs(ctx, st, i, replicas).await?;
        }
        return Ok(());
    }
    if let Some(n) = st.new {
        let new = &st.rss[n];
        if spec_replicas(new) == replicas && status_i64(new, "availableReplicas") == replicas {
            for i in st.old_indices() {
                if spec_replicas(&st.rss[i]) > 0 {
                    scale_rs(ctx, st, i, 0).await?;
                }
            }
            return Ok(());
        }
    }
    if !is_rolling(&st.d) {
        return Ok(());
    }
    let allowed = replicas + fenceposts(&st.d).0;
    let current: i64 = active.iter().map(|i| spec_replicas(&st.rss[*i])).sum();
    let mut delta = allowed - current;
    if delta > 0 {
        let target = st.new.unwrap_or_else(|| {
            active
                .iter()
                .copied()
                .max_by_key(|i| created(&st.rss[*i]))
                .unwrap_or(0)
        });
        let to = spec_replicas(&st.rss[target]) + delta;
        scale_rs(ctx, st, target, to).await?;
    } else if delta < 0 {
        // Oldest first, the new ReplicaSet last.
        active.sort_by_key(|i| (Some(*i) == st.new, created(&st.rss[*i])));
        for i in active {
            if delta == 0 {
                break;
            }
            let have = spec_replicas(&st.rss[i]);
            let cut = have.min(-delta);
            scale_rs(ctx, st, i, have - cut).await?;
            delta += cut;
        }
    }
    Ok(())
}

async fn rollout_rolling(ctx: &Context, st: &mut State) -> Result<Action, Error> {
    sync_revision(ctx, st, true).await?;
    let Some(n) = st.new else {
        return write_status(ctx, st).await;
    };
    let replicas = spec_replicas(&st.d);
    // Scale the new ReplicaSet up as far as maxSurge allows (or down to the target).
    let current = spec_replicas(&st.rss[n]);
    let target = if current > replicas {
        replicas
    } else {
        new_rs_replicas(&st.d, st.total_possible(), current)
    };
    if scale_rs(ctx, st, n, target).await? {
        return write_status(ctx, st).await;
    }
    // Scale old ReplicaSets down as far as maxUnavailable allows.
    if scale_down_old(ctx, st).await? {
        return write_status(ctx, st).await;
    }
    if complete(&st.d, &calculate_status(st)) {
        cleanup(ctx, st).await;
    }
    write_status(ctx, st).await
}

/// Upstream's `reconcileOldReplicaSets`: first unhealthy old replicas, then healthy ones while
/// enough stay available.
async fn scale_down_old(ctx: &Context, st: &mut State) -> Result<bool, Error> {
    let Some(n) = st.new else { return Ok(false) };
    let mut old = st.old_indices();
    let old_count: i64 = old.iter().map(|i| spec_replicas(&st.rss[*i])).sum();
    if old_count == 0 {
        return Ok(false);
    }
    let replicas = spec_replicas(&st.d);
    let min_available = replicas - max_unavailable(&st.d);
    let new_unavailable = spec_replicas(&st.rss[n]) - status_i64(&st.rss[n], "availableReplicas");
    let max_scaled_down = st.total_spec() - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Ok(false);
    }
    old.sort_by_key(|i| created(&st.rss[*i]));
    let mut changed = false;
    // Unhealthy replicas first: they cost no availability.
    let mut cleaned = 0;
    for &i in &old {
        if cleaned >= max_scaled_down {
            break;
        }
        let have = spec_replicas(&st.rss[i]);
        let available = status_i64(&st.rss[i], "availableReplicas");
        if have == 0 || have <= available {
            continue;
        }
        let cut = (max_scaled_down - cleaned).min(have - available);
        changed |= scale_rs(ctx, st, i, have - cut).await?;
        cleaned += cut;
    }
    // Then healthy ones, as long as the available total stays at least minAvailable.
    let available_total: i64 = st.rss.iter().map(|rs| status_i64(rs, "availableReplicas")).sum();
    if available_total > min_available {
        let mut budget = available_total - min_available;
        for &i in &old {
            if budget <= 0 {
                break;
            }
            let have = spec_replicas(&st.rss[i]);
            if have == 0 {
                continue;
            }
            let cut = have.min(budget);
            changed |= scale_rs(ctx, st, i, have - cut).await?;
            budget -= cut;
        }
    }
    Ok(changed)
}

async fn rollout_recreate(ctx: &Context, st: &mut State) -> Result<Action, Error> {
    sync_revision(ctx, st, false).await?;
    let mut scaled = false;
    for i in st.old_indices() {
        if spec_replicas(&st.rss[i]) > 0 {
            scaled |= scale_rs(ctx, st, i, 0).await?;
        }
    }
    if scaled {
        return write_status(ctx, st).await;
    }
    // Wait until no pod of an old ReplicaSet is left running.
    let old_uids: Vec<String> = st
        .old_indices()
        .iter()
        .map(|i| pods::uid(&st.rss[*i]).to_string())
        .collect();
    if !old_uids.is_empty() {
        let list = ctx
            .client
            .list(ctx.kinds.pods, pods::namespace(&st.d), ListParams::default())
            .await?;
        let running = list.get("items").and_then(Value::as_array).is_some_and(|items| {
            items.iter().any(|p| {
                !pods::is_terminal(p)
                    && pods::controller_uid(p).is_some_and(|u| old_uids.iter().any(|o| o == u))
            })
        });
        if running {
            write_status(ctx, st).await?;
            return Ok(Action::RequeueAfter(Duration::from_secs(1)));
        }
    }
    if st.new.is_none() {
        sync_revision(ctx, st, true).await?;
    }
    if let Some(n) = st.new {
        let replicas = spec_replicas(&st.d);
        scale_rs(ctx, st, n, replicas).await?;
    }
    if complete(&st.d, &calculate_status(st)) {
        cleanup(ctx, st).await;
    }
    write_status(ctx, st).await
}

/// Deletes the oldest fully scaled-down ReplicaSets beyond `revisionHistoryLimit`.
async fn cleanup(ctx: &Context, st: &mut State) {
    let limit =
        st.d.pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_i64)
            .unwrap_or(10)
            .max(0);
    let mut old: Vec<usize> = st
        .old_indices()
        .into_iter()
        .filter(|i| !pods::is_terminating(&st.rss[*i]))
        .collect();
    let excess = old.len() as i64 - limit;
    if excess <= 0 {
        return;
    }
    old.sort_by_key(|i| (revision(&st.rss[*i]), created(&st.rss[*i])));
    let doomed: Vec<Value> = old
        .into_iter()
        .map(|i| st.rss[i].clone())
        .filter(|rs| {
            spec_replicas(rs) == 0
                && status_i64(rs, "replicas") == 0
                && status_i64(rs, "observedGeneration") >= pods::generation(rs)
        })
        .take(excess as usize)
        .collect();
    let results = join_all(doomed.iter().map(|rs| {
        ctx.client.delete(
            ctx.kinds.replica_sets,
            pods::namespace(rs),
            pods::name(rs).to_string(),
            json!({"propagationPolicy": "Background"}),
        )
    }))
    .await;
    for (rs, r) in doomed.iter().zip(results) {
        match r {
            Ok(_) => st.rss.retain(|x| pods::uid(x) != pods::uid(rs)),
            Err(e) => tracing::debug!(rs = pods::name(rs), error = %e, "could not delete an old replica set"),
        }
    }
    st.new = find_new(&st.d, &st.rss);
}

// ------------------------------------------------------------------------------------- status

fn calculate_status(st: &State) -> Value {
    let sum = |f: &str| -> i64 { st.rss.iter().map(|rs| status_i64(rs, f)).sum() };
    let available = sum("availableReplicas");
    let total_spec = st.total_spec();
    let mut status = json!({
        "observedGeneration": pods::generation(&st.d),
        "replicas": sum("replicas"),
        "updatedReplicas": st.new_rs().map(|rs| status_i64(rs, "replicas")).unwrap_or(0),
        "readyReplicas": sum("readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": (total_spec - available).max(0),
    });
    if let Some(c) = st.d.pointer("/status/collisionCount") {
        status["collisionCount"] = c.clone();
    }
    status
}

/// Upstream's `DeploymentComplete`.
fn complete(d: &Value, status: &Value) -> bool {
    let replicas = spec_replicas(d);
    let get = |f: &str| status.get(f).and_then(Value::as_i64).unwrap_or(0);
    get("updatedReplicas") == replicas
        && get("replicas") == replicas
        && get("availableReplicas") == replicas
        && get("observedGeneration") >= pods::generation(d)
}

/// Upstream's `DeploymentProgressing`: some number moved the right way since the last status.
fn progressing(d: &Value, new: &Value) -> bool {
    let old = |f: &str| status_i64(d, f);
    let new_ = |f: &str| new.get(f).and_then(Value::as_i64).unwrap_or(0);
    new_("updatedReplicas") > old("updatedReplicas")
        || (new_("replicas") - new_("updatedReplicas")) < (old("replicas") - old("updatedReplicas"))
        || new_("readyReplicas") > old("readyReplicas")
        || new_("availableReplicas") > old("availableReplicas")
}

fn has_condition(d: &Value, kind: &str) -> bool {
    condition(d.pointer("/status/conditions"), kind).is_some()
}

fn condition<'a>(conditions: Option<&'a Value>, kind: &str) -> Option<&'a Value> {
    conditions?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

/// Sets a condition as upstream's `SetDeploymentCondition`: same status and reason = no change;
/// same status keeps the transition time.
fn set_condition(
    conditions: &mut Vec<Value>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) {
    let existing = conditions
        .iter()
        .position(|c| c.get("type").and_then(Value::as_str) == Some(kind));
    let mut transition = now.to_string();
    if let Some(i) = existing {
        let c = &conditions[i];
        let same_status = c.get("status").and_then(Value::as_str) == Some(status);
        if same_status
            && c.get("reason").and_then(Value::as_str) == Some(reason)
            && reason != "ReplicaSetUpdated"
        {
            return;
        }
        if same_status {
            transition = c
                .get("lastTransitionTime")
                .and_then(Value::as_str)
                .unwrap_or(now)
                .to_string();
        }
        conditions.remove(i);
    }
    conditions.push(json!({
        "type": kind,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }));
}

/// Computes and writes the status; re-queues a rollout in progress for its deadline.
async fn write_status(ctx: &Context, st: &mut State) -> Result<Action, Error> {
    let d = &st.d;
    let mut status = calculate_status(st);
    let now = keel_api::time::now_rfc3339();
    let mut conditions: Vec<Value> = d
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let replicas = spec_replicas(d);
    let available = status["availableReplicas"].as_i64().unwrap_or(0);
    if available >= replicas - max_unavailable(d) {
        set_condition(
            &mut conditions,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            &now,
        );
    } else {
        set_condition(
            &mut conditions,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            &now,
        );
    }
    let paused = d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
    let current_reason = condition(d.pointer("/status/conditions"), "Progressing")
        .and_then(|c| c.get("reason"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let deadline = d
        .pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(600);
    let mut requeue = None;
    let new_name = st
        .new_rs()
        .map(|rs| pods::name(rs).to_string())
        .unwrap_or_default();
    if paused {
        if current_reason != "DeploymentPaused" {
            set_condition(
                &mut conditions,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
                &now,
            );
        }
    } else if current_reason == "DeploymentPaused" {
        set_condition(
            &mut conditions,
            "Progressing",
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed",
            &now,
        );
    } else {
        if let Some((reason, message)) = st.progress.take() {
            set_condition(&mut conditions, "Progressing", "True", reason, &message, &now);
        }
        let already_complete =
            status["replicas"] == status["updatedReplicas"] && current_reason == "NewReplicaSetAvailable";
        if !already_complete && st.new.is_some() {
            if complete(d, &status) {
                let message = format!("ReplicaSet \"{new_name}\" has successfully progressed.");
                set_condition(
                    &mut conditions,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &message,
                    &now,
                );
            } else if progressing(d, &status) {
                let message = format!("ReplicaSet \"{new_name}\" is progressing.");
                set_condition(
                    &mut conditions,
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &message,
                    &now,
                );
                requeue = Some(deadline);
            } else {
                let last_update = condition(Some(&json!(conditions)), "Progressing")
                    .and_then(|c| c.get("lastUpdateTime"))
                    .and_then(Value::as_str)
                    .map(keel_api::time::seconds_since);
                match last_update {
                    Some(age) if age > deadline => {
                        let message = format!("ReplicaSet \"{new_name}\" has timed out progressing.");
                        set_condition(
                            &mut conditions,
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            &message,
                            &now,
                        );
                    }
                    Some(age) => requeue = Some(deadline - age + 1),
                    None => requeue = Some(deadline),
                }
            }
        }
    }
    // Upstream lists Available before Progressing.
    conditions.sort_by_key(|c| match c.get("type").and_then(Value::as_str) {
        Some("Available") => 0,
        Some("Progressing") => 1,
        _ => 2,
    });
    if !conditions.is_empty() {
        status["conditions"] = json!(conditions);
    }
    if d.get("status") != Some(&status) {
        tracing::debug!(deployment = pods::name(d), old = ?d.get("status"), new = %status, "writing status");
        let mut updated = d.clone();
        updated["status"] = status;
        st.d = ctx
            .client
            .update(
                ctx.kinds.deployments,
                pods::namespace(d),
                updated,
                Some("status".into()),
                WriteOptions::default(),
            )
            .await?;
    }
    Ok(match requeue {
        Some(s) => Action::RequeueAfter(Duration::from_secs(s.max(1) as u64)),
        None => Action::Done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, strategy: Value) -> Value {
        json!({"metadata": {"name": "web", "generation": 1}, "spec": {"replicas": replicas, "strategy": strategy,
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailable_down() {
        let d = deploy(10, json!({"type": "RollingUpdate"}));
        assert_eq!(fenceposts(&d), (3, 2));
        let d = deploy(
            3,
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}),
        );
        assert_eq!(fenceposts(&d), (0, 1));
        let d = deploy(3, json!({"type": "Recreate"}));
        assert_eq!(max_unavailable(&d), 0);
    }

    #[test]
    fn hash_ignores_key_order_and_the_hash_label() {
        let a = json!({"metadata": {"labels": {"app": "web", "tier": "x"}}, "spec": {"containers": []}});
        let b = json!({"spec": {"containers": []}, "metadata": {"labels": {"tier": "x", "app": "web", HASH_LABEL: "zzz"}}});
        assert_eq!(template_hash(&a, None), template_hash(&b, None));
        assert_ne!(template_hash(&a, None), template_hash(&a, Some(1)));
        assert!(templates_equal(&a, &b));
        let from_go = json!({"metadata": {"creationTimestamp": null, "labels": {"app": "web", "tier": "x"}},
            "spec": {"containers": [], "securityContext": {}}});
        assert!(templates_equal(&a, &from_go));
        assert_eq!(template_hash(&a, None), template_hash(&from_go, None));
        let c = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}});
        assert_ne!(template_hash(&a, None), template_hash(&c, None));
        assert!(template_hash(&a, None)
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
    }

    #[test]
    fn new_replica_set_grows_within_max_surge() {
        let d = deploy(
            4,
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
        );
        // 4 old + 0 new: one surge pod allowed.
        assert_eq!(new_rs_replicas(&d, 4, 0), 1);
        // Already at 5 in total: no growth.
        assert_eq!(new_rs_replicas(&d, 5, 1), 1);
        // Old ones gone: fill up to the target, never beyond.
        assert_eq!(new_rs_replicas(&d, 2, 2), 4);
        let r = deploy(4, json!({"type": "Recreate"}));
        assert_eq!(new_rs_replicas(&r, 4, 0), 4);
    }

    #[test]
    fn complete_needs_every_count_and_the_generation() {
        let d = deploy(2, json!({}));
        let s = json!({"updatedReplicas": 2, "replicas": 2, "availableReplicas": 2, "observedGeneration": 1});
        assert!(complete(&d, &s));
        let s = json!({"updatedReplicas": 2, "replicas": 3, "availableReplicas": 2, "observedGeneration": 1});
        assert!(!complete(&d, &s));
    }
}
