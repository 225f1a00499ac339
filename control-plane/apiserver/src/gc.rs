//! Cascading deletion: owner references, the `foregroundDeletion` and `orphan` finalizers, and
//! namespace termination.
//!
//! Upstream runs these as the garbage collector and namespace controllers. Here they are one
//! small task fed by the object verbs (every delete and every mark-for-deletion is reported on a
//! channel) plus a start-up sweep, so that `kubectl delete deployment` removes its ReplicaSets
//! and Pods and `kubectl delete namespace` returns, with or without other controllers running.
//! The work is level-triggered: each event re-reads the world, so a lost event only delays work
//! until the next sweep.

use std::sync::Arc;
use std::time::Duration;

use keel_api::client::ListParams;
use keel_api::registry::{ResourceType, RESOURCES};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::objects::{
    is_being_deleted, object_name, object_namespace, object_uid, Deleted, Objects, Propagation, WriteCtx,
};

pub enum GcEvent {
    /// An object is gone: delete its dependents (background cascade).
    Deleted { rt: &'static ResourceType, obj: Value },
    /// An object has a deletionTimestamp: finish foreground/orphan deletion or namespace termination.
    MarkedForDeletion {
        rt: &'static ResourceType,
        obj: Value,
        propagation: Propagation,
    },
}

/// Starts the collector for `objects`.
pub fn spawn(objects: Arc<Objects>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    if objects.gc.set(tx).is_err() {
        return;
    }
    tokio::spawn(async move {
        sweep(&objects).await;
        while let Some(ev) = rx.recv().await {
            match ev {
                GcEvent::Deleted { rt, obj } => {
                    delete_dependents(&objects, rt, &obj, Propagation::Background).await
                }
                GcEvent::MarkedForDeletion { rt, obj, .. } => {
                    let objects = objects.clone();
                    tokio::spawn(async move { finish(&objects, rt, obj).await });
                }
            }
        }
    });
}

/// Resumes work left over from before a restart: objects being deleted.
async fn sweep(objects: &Arc<Objects>) {
    for rt in stored_types() {
        for obj in list_filtered(objects, rt, None, is_being_deleted).await {
            let objects = objects.clone();
            tokio::spawn(async move { finish(&objects, rt, obj).await });
        }
    }
}

/// The objects of `rt` in `scope` that `keep` accepts, read a page at a time: a whole list of
/// thousands of pods as `Value`s is hundreds of megabytes, and these look for a few objects.
async fn list_filtered(
    objects: &Objects,
    rt: &'static ResourceType,
    scope: Option<&str>,
    keep: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut params = ListParams {
        limit: Some(500),
        ..Default::default()
    };
    loop {
        let Ok(page) = objects.list(rt, scope, &params).await else {
            break;
        };
        out.extend(page.items.into_iter().filter(|o| keep(o)));
        match page.continue_token {
            Some(token) => params.continue_token = Some(token),
            None => break,
        }
    }
    out
}

/// The resource types that are stored, once each (the storage version).
fn stored_types() -> impl Iterator<Item = &'static ResourceType> {
    RESOURCES
        .iter()
        .filter(|r| r.is_stored() && r.version == r.storage_version)
}

fn is_owned_by(obj: &Value, uid: &str) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

/// The objects that name `owner` in their ownerReferences.
async fn dependents(objects: &Objects, owner: &Value) -> Vec<(&'static ResourceType, Value)> {
    let uid = object_uid(owner).to_string();
    let ns = object_namespace(owner);
    let scope = (!ns.is_empty()).then_some(ns);
    let mut out = Vec::new();
    for rt in stored_types() {
        if scope.is_some() && !rt.namespaced {
            continue;
        }
        out.extend(
            list_filtered(objects, rt, scope, |o| is_owned_by(o, &uid))
                .await
                .into_iter()
                .map(|o| (rt, o)),
        );
    }
    out
}

async fn delete_dependents(
    objects: &Objects,
    _rt: &'static ResourceType,
    owner: &Value,
    propagation: Propagation,
) {
    let policy = match propagation {
        Propagation::Foreground => "Foreground",
        _ => "Background",
    };
    for (rt, dep) in dependents(objects, owner).await {
        let ns = object_namespace(&dep).to_string();
        let ns = (!ns.is_empty()).then_some(ns);
        let mut ctx = WriteCtx::default();
        let opts = json!({"propagationPolicy": policy});
        match objects
            .delete(rt, ns.as_deref(), object_name(&dep), &opts, &mut ctx)
            .await
        {
            Ok(Deleted::Gone(_) | Deleted::Pending(_)) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(kind = rt.kind, name = object_name(&dep), error = %e, "cascading delete failed")
            }
        }
    }
}

async fn orphan_dependents(objects: &Objects, owner: &Value) {
    let uid = object_uid(owner).to_string();
    for (rt, dep) in dependents(objects, owner).await {
        let ns = object_namespace(&dep).to_string();
        let ns = (!ns.is_empty()).then_some(ns);
        let uid = uid.clone();
        let result = objects
            .modify(rt, ns.as_deref(), object_name(&dep), move |o| {
                if let Some(refs) = o
                    .pointer_mut("/metadata/ownerReferences")
                    .and_then(Value::as_array_mut)
                {
                    refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
                }
                let empty = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty);
                if empty {
                    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("ownerReferences");
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = result
            .map(|_| ())
            .or_else(|e| if e.code == 404 { Ok(()) } else { Err(e) })
        {
            tracing::warn!(kind = rt.kind, error = %e, "orphaning a dependent failed");
        }
    }
}

/// Removes one finalizer from an object (which deletes it if it was the last).
async fn remove_finalizer(
    objects: &Objects,
    rt: &'static ResourceType,
    obj: &Value,
    finalizer: &'static str,
) {
    let ns = object_namespace(obj).to_string();
    let ns = (!ns.is_empty()).then_some(ns);
    let result = objects
        .modify(rt, ns.as_deref(), object_name(obj), |o| {
            if let Some(f) = o
                .pointer_mut("/metadata/finalizers")
                .and_then(Value::as_array_mut)
            {
                f.retain(|x| x.as_str() != Some(finalizer));
            }
            Ok(())
        })
        .await;
    if let Err(e) = result {
        if e.code != 404 {
            tracing::warn!(kind = rt.kind, name = object_name(obj), error = %e, "removing finalizer failed");
        }
    }
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == f))
}

/// Drives one object that is being deleted to its end.
async fn finish(objects: &Arc<Objects>, rt: &'static ResourceType, obj: Value) {
    if rt.kind == "Namespace" {
        terminate_namespace(objects, rt, &obj).await;
        return;
    }
    if has_finalizer(&obj, "orphan") {
        orphan_dependents(objects, &obj).await;
        remove_finalizer(objects, rt, &obj, "orphan").await;
    }
    if has_finalizer(&obj, "foregroundDeletion") {
        // Delete dependents, wait until they are gone, then let the owner go.
        let mut delay = Duration::from_millis(50);
        loop {
            let deps = dependents(objects, &obj).await;
            if deps.is_empty() {
                break;
            }
            delete_dependents(objects, rt, &obj, Propagation::Foreground).await;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        remove_finalizer(objects, rt, &obj, "foregroundDeletion").await;
    }
}

/// Deletes everything in a namespace, then the namespace.
async fn terminate_namespace(objects: &Arc<Objects>, rt: &'static ResourceType, ns_obj: &Value) {
    let ns = object_name(ns_obj).to_string();
    let mut delay = Duration::from_millis(20);
    loop {
        let mut remaining = 0;
        for t in stored_types().filter(|t| t.namespaced) {
            let Ok(list) = objects.list(t, Some(&ns), &ListParams::default()).await else {
                remaining += 1;
                continue;
            };
            for o in list.items {
                remaining += 1;
                if is_being_deleted(&o) && t.kind != "Pod" {
                    continue;
                }
                let mut ctx = WriteCtx::default();
                let _ = objects
                    .delete(
                        t,
                        Some(&ns),
                        object_name(&o),
                        &json!({"propagationPolicy": "Background"}),
                        &mut ctx,
                    )
                    .await;
            }
        }
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    let result = objects
        .modify(rt, None, &ns, |o| {
            if let Some(f) = o.pointer_mut("/spec/finalizers").and_then(Value::as_array_mut) {
                f.retain(|x| x.as_str() != Some("kubernetes"));
            }
            Ok(())
        })
        .await;
    if let Err(e) = result {
        if e.code != 404 {
            tracing::warn!(namespace = %ns, error = %e, "finishing namespace termination failed");
        }
    }
}
