//! Static volume binding, as upstream's PersistentVolume controller does it: a new
//! PersistentVolume becomes `Available`; a pending PersistentVolumeClaim binds to the smallest
//! Available volume that satisfies it (storage class, access modes, capacity, volume mode), the
//! volume records the claim (`spec.claimRef`) and both turn `Bound`; a volume whose claim is
//! gone turns `Released` (it keeps its data: the Retain policy).
//!
//! Claims are the primary kind; volume events requeue every pending claim of the cluster,
//! because any new volume may be the one a waiting claim needs.

use std::sync::{Arc, Mutex};

use keel_api::client::{ApiClient, ListParams, Patch, WriteOptions};
use keel_api::registry::{self, ResourceType};
use keel_api::validation::quantity::Quantity;
use serde_json::{json, Value};

use crate::runner::{Action, Error, Mapper, ObjectRef};

pub struct Binder {
    pub client: Arc<dyn ApiClient>,
    claims: &'static ResourceType,
    volumes: &'static ResourceType,
    /// Claims waiting for a volume, requeued when volumes change.
    pending: Mutex<Vec<ObjectRef>>,
}

impl Binder {
    pub fn new(client: Arc<dyn ApiClient>) -> Result<Self, Error> {
        let find = |p: &'static str| registry::find("", "v1", p).ok_or(Error::MissingResource(p));
        Ok(Binder {
            client,
            claims: find("persistentvolumeclaims")?,
            volumes: find("persistentvolumes")?,
            pending: Mutex::default(),
        })
    }

    pub fn claims(&self) -> &'static ResourceType {
        self.claims
    }

    pub fn volumes(&self) -> &'static ResourceType {
        self.volumes
    }

    /// Volume events wake every waiting claim.
    pub fn volume_mapper(self: &Arc<Self>) -> Mapper {
        let me = self.clone();
        Arc::new(move |_pv: &Value| me.pending.lock().map(|p| p.clone()).unwrap_or_default())
    }
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn opts() -> WriteOptions {
    WriteOptions {
        field_manager: Some("persistent-volume-binder".into()),
        dry_run: false,
    }
}

/// Whether volume `pv` can serve claim `pvc`.
fn fits(pv: &Value, pvc: &Value) -> bool {
    if str_at(pv, "/spec/storageClassName") != str_at(pvc, "/spec/storageClassName") {
        return false;
    }
    let mode = |v: &Value| match str_at(v, "/spec/volumeMode") {
        "" => "Filesystem".to_string(),
        m => m.to_string(),
    };
    if mode(pv) != mode(pvc) {
        return false;
    }
    let modes = |v: &Value| -> Vec<String> {
        v.pointer("/spec/accessModes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let pv_modes = modes(pv);
    if !modes(pvc).iter().all(|m| pv_modes.contains(m)) {
        return false;
    }
    let need = Quantity::parse(str_at(pvc, "/spec/resources/requests/storage"));
    let have = Quantity::parse(str_at(pv, "/spec/capacity/storage"));
    match (need, have) {
        (Some(n), Some(h)) => h >= n,
        (None, _) => true,
        _ => false,
    }
}

fn capacity(pv: &Value) -> Option<Quantity> {
    Quantity::parse(str_at(pv, "/spec/capacity/storage"))
}

/// A volume's own phase: new ones become Available, those whose claim is gone Released.
pub async fn reconcile_volume(pv: Arc<Value>, ctx: Arc<Binder>) -> Result<Action, Error> {
    let phase = str_at(&pv, "/status/phase");
    let claim_ns = str_at(&pv, "/spec/claimRef/namespace");
    let claim = str_at(&pv, "/spec/claimRef/name");
    let target = if claim.is_empty() {
        (phase == "Pending" || phase.is_empty()).then_some("Available")
    } else if phase == "Bound" {
        let gone = ctx
            .client
            .get(ctx.claims, Some(claim_ns.to_string()), claim.to_string())
            .await
            .is_err_and(|e| e.code == 404);
        gone.then_some("Released")
    } else {
        None
    };
    if let Some(phase) = target {
        let patch = Patch::Merge(json!({"status": {"phase": phase}}));
        let name = str_at(&pv, "/metadata/name").to_string();
        ctx.client
            .patch(ctx.volumes, None, name, patch, Some("status".into()), opts())
            .await?;
    }
    Ok(Action::Done)
}

/// A claim: bind it to the smallest fitting Available volume.
pub async fn reconcile(pvc: Arc<Value>, ctx: Arc<Binder>) -> Result<Action, Error> {
    let ns = str_at(&pvc, "/metadata/namespace").to_string();
    let name = str_at(&pvc, "/metadata/name").to_string();
    let key = ObjectRef::new(Some(&ns), &name);
    let volumes = ctx.client.list(ctx.volumes, None, ListParams::default()).await?;
    let volumes: Vec<Value> = volumes
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();

    if str_at(&pvc, "/status/phase") == "Bound"
        || pvc
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
    {
        if let Ok(mut p) = ctx.pending.lock() {
            p.retain(|k| *k != key);
        }
        return Ok(Action::Done);
    }
    let wanted = str_at(&pvc, "/spec/volumeName");
    let uid = str_at(&pvc, "/metadata/uid");
    let already = volumes.iter().find(|pv| str_at(pv, "/spec/claimRef/uid") == uid);
    let chosen = already.cloned().or_else(|| {
        volumes
            .iter()
            .filter(|pv| str_at(pv, "/spec/claimRef/name").is_empty())
            .filter(|pv| wanted.is_empty() || str_at(pv, "/metadata/name") == wanted)
            .filter(|pv| fits(pv, &pvc))
            .min_by(|a, b| match (capacity(a), capacity(b)) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => std::cmp::Ordering::Equal,
            })
            .cloned()
    });
    let Some(pv) = chosen else {
        if let Ok(mut p) = ctx.pending.lock() {
            if !p.contains(&key) {
                p.push(key);
            }
        }
        return Ok(Action::RequeueAfter(std::time::Duration::from_secs(5)));
    };
    let pv_name = str_at(&pv, "/metadata/name").to_string();
    let claim_ref = json!({"kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": uid, "apiVersion": "v1",
                           "resourceVersion": str_at(&pvc, "/metadata/resourceVersion")});
    ctx.client
        .patch(
            ctx.volumes,
            None,
            pv_name.clone(),
            Patch::Merge(json!({"spec": {"claimRef": claim_ref}})),
            None,
            opts(),
        )
        .await?;
    ctx.client
        .patch(
            ctx.volumes,
            None,
            pv_name.clone(),
            Patch::Merge(json!({"status": {"phase": "Bound"}})),
            Some("status".into()),
            opts(),
        )
        .await?;
    ctx.client
        .patch(
            ctx.claims,
            Some(ns.clone()),
            name.clone(),
            Patch::Merge(json!({"spec": {"volumeName": pv_name}})),
            None,
            opts(),
        )
        .await?;
    let status = json!({"status": {"phase": "Bound", "accessModes": pv.pointer("/spec/accessModes").cloned().unwrap_or(json!([])),
                                    "capacity": pv.pointer("/spec/capacity").cloned().unwrap_or(json!({}))}});
    ctx.client
        .patch(
            ctx.claims,
            Some(ns),
            name,
            Patch::Merge(status),
            Some("status".into()),
            opts(),
        )
        .await?;
    if let Ok(mut p) = ctx.pending.lock() {
        p.retain(|k| *k != key);
    }
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(cap: &str, modes: &[&str]) -> Value {
        json!({"spec": {"capacity": {"storage": cap}, "accessModes": modes}})
    }

    #[test]
    fn claims_fit_by_modes_and_capacity() {
        let pvc = json!({"spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "6Gi"}}}});
        assert!(!fits(&pv("5Gi", &["ReadWriteMany"]), &pvc));
        assert!(!fits(&pv("10Gi", &["ReadWriteOnce"]), &pvc));
        assert!(fits(&pv("10Gi", &["ReadWriteOnce", "ReadWriteMany"]), &pvc));
        assert!(fits(&pv("20Gi", &["ReadWriteMany"]), &pvc));
    }
}
