//! EndpointSlices (discovery.k8s.io/v1) mirrored from Endpoints: one slice per Endpoints
//! subset, labelled `kubernetes.io/service-name`, owned by the Endpoints object so that it goes
//! when they go. Clients that read slices (kubectl, kube-proxy-like consumers) see the same
//! addresses, readiness and ports as the Endpoints controller computed.

use std::sync::Arc;

use keel_api::client::{ApiClient, ListParams, WriteOptions};
use keel_api::registry::{self, ResourceType};
use serde_json::{json, Value};

use crate::runner::{Action, Error};

const MANAGED_BY: &str = "endpointslice-mirroring-controller.k8s.io";

pub struct Mirror {
    pub client: Arc<dyn ApiClient>,
    endpoints: &'static ResourceType,
    slices: &'static ResourceType,
}

impl Mirror {
    pub fn new(client: Arc<dyn ApiClient>) -> Result<Self, Error> {
        Ok(Mirror {
            client,
            endpoints: registry::find("", "v1", "endpoints").ok_or(Error::MissingResource("endpoints"))?,
            slices: registry::find("discovery.k8s.io", "v1", "endpointslices")
                .ok_or(Error::MissingResource("endpointslices"))?,
        })
    }

    pub fn endpoints(&self) -> &'static ResourceType {
        self.endpoints
    }
}

/// The slices one Endpoints object should have.
fn desired(ep: &Value) -> Vec<Value> {
    let name = ep.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let ns = ep
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let uid = ep.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
    let suffix: String = uid.chars().filter(char::is_ascii_alphanumeric).take(5).collect();
    let subsets = ep
        .get("subsets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let subsets = if subsets.is_empty() {
        vec![json!({})]
    } else {
        subsets
    };
    subsets
        .iter()
        .enumerate()
        .map(|(i, subset)| {
            let slice_name = match (name, i) {
                ("kubernetes", 0) if ns == "default" => "kubernetes".to_string(),
                (_, 0) => format!("{name}-{suffix}"),
                _ => format!("{name}-{suffix}-{i}"),
            };
            let endpoint = |a: &Value, ready: bool| {
                let mut e = json!({
                    "addresses": [a.get("ip").cloned().unwrap_or(Value::Null)],
                    "conditions": {"ready": ready, "serving": ready, "terminating": false},
                });
                for k in ["nodeName", "targetRef", "hostname"] {
                    if let Some(v) = a.get(k) {
                        e[k] = v.clone();
                    }
                }
                e
            };
            let list = |k: &str| subset.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
            let endpoints: Vec<Value> = list("addresses")
                .iter()
                .map(|a| endpoint(a, true))
                .chain(list("notReadyAddresses").iter().map(|a| endpoint(a, false)))
                .collect();
            let ports: Vec<Value> = list("ports")
                .iter()
                .map(|p| {
                    let mut port = json!({"port": p.get("port").cloned().unwrap_or(Value::Null), "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))});
                    port["name"] = p.get("name").cloned().unwrap_or(json!(""));
                    port
                })
                .collect();
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "namespace": ns,
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                    },
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Endpoints", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}],
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            })
        })
        .collect()
}

pub async fn reconcile(ep: Arc<Value>, ctx: Arc<Mirror>) -> Result<Action, Error> {
    if ep
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return Ok(Action::Done);
    }
    let ns = ep
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let name = ep
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let want = desired(&ep);
    let params = ListParams {
        label_selector: Some(format!(
            "kubernetes.io/service-name={name},endpointslice.kubernetes.io/managed-by={MANAGED_BY}"
        )),
        ..Default::default()
    };
    let existing = ctx.client.list(ctx.slices, ns.clone(), params).await?;
    let existing: Vec<Value> = existing
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let opts = || WriteOptions {
        field_manager: Some(MANAGED_BY.into()),
        dry_run: false,
    };
    let name_of = |v: &Value| {
        v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    for slice in &want {
        match existing.iter().find(|e| name_of(e) == name_of(slice)) {
            Some(cur)
                if cur.get("endpoints") == slice.get("endpoints")
                    && cur.get("ports") == slice.get("ports") => {}
            Some(cur) => {
                let mut updated = slice.clone();
                updated["metadata"]["resourceVersion"] = cur
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                match ctx
                    .client
                    .update(ctx.slices, ns.clone(), updated, None, opts())
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {
                        return Ok(Action::RequeueAfter(std::time::Duration::from_millis(100)))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => match ctx
                .client
                .create(ctx.slices, ns.clone(), slice.clone(), opts())
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 409 || e.code == 403 => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    for stale in existing
        .iter()
        .filter(|e| !want.iter().any(|w| name_of(w) == name_of(e)))
    {
        match ctx
            .client
            .delete(ctx.slices, ns.clone(), name_of(stale), Value::Null)
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_become_slices_with_readiness() {
        let ep = json!({"metadata": {"name": "web", "namespace": "default", "uid": "1234abcd-0000"},
            "subsets": [{"addresses": [{"ip": "10.244.1.5", "nodeName": "n1"}], "notReadyAddresses": [{"ip": "10.244.2.7"}],
                         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]});
        let slices = desired(&ep);
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s["metadata"]["name"], "web-1234a");
        assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        assert_eq!(s["endpoints"][0]["conditions"]["ready"], true);
        assert_eq!(s["endpoints"][0]["nodeName"], "n1");
        assert_eq!(s["endpoints"][1]["conditions"]["ready"], false);
        assert_eq!(s["ports"][0]["port"], 8080);
        let empty = desired(&json!({"metadata": {"name": "x", "namespace": "d", "uid": "u"}}));
        assert_eq!(empty.len(), 1, "a Service with no endpoints still has a slice");
        assert_eq!(empty[0]["endpoints"], json!([]));
    }
}
