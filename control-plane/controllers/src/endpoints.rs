//! Endpoints: for every Service with a selector, an Endpoints object of the same name listing
//! the IPs of the pods it selects — ready ones under `addresses`, the others under
//! `notReadyAddresses` (all under `addresses` with `publishNotReadyAddresses`) — with the
//! Service's ports resolved against each pod (named `targetPort`s looked up in its containers).
//! Pods with the same resolved ports share a subset, as upstream packs them.
//!
//! The primary kind is Service; pod events are mapped to the Services whose selectors match
//! the pod now or matched it when last seen (so a relabelled pod leaves its old Services). The
//! map of selectors is kept from the Service watch. Services without a selector are left alone
//! (their Endpoints are the user's), and the Endpoints of a deleted Service are deleted.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_api::client::{ListParams, WriteOptions};
use keel_api::selector::LabelSelector;
use serde_json::{json, Value};

use crate::pods;
use crate::runner::{Action, Cleanup, Error, Mapper, ObjectRef};
use crate::selecting::SelectorIndex;
use crate::Context;

/// Which Services select which pods, maintained from the watches.
#[derive(Default)]
pub struct Selectors {
    index: SelectorIndex,
}

impl Selectors {
    /// The mapper of Service events: remembers the selector, and names the Service itself.
    pub fn service_mapper(self: &Arc<Self>) -> Mapper {
        let me = self.clone();
        Arc::new(move |svc: &Value| {
            let Some(key) = ObjectRef::from_object(svc) else {
                return Vec::new();
            };
            let selector = svc
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(LabelSelector::from_map);
            me.index
                .set(&key, selector.filter(|_| !pods::is_terminating(svc)));
            vec![key]
        })
    }

    /// The mapper of pod events: the Services selecting the pod now or before.
    pub fn pod_mapper(self: &Arc<Self>) -> Mapper {
        let me = self.clone();
        Arc::new(move |pod: &Value| me.index.selecting(pod))
    }
}

/// Deletes the Endpoints of a Service that is gone (only those this controller manages: ones
/// whose Service had a selector are recreated on every pass, so any left over is stale).
pub fn cleanup() -> Cleanup<Context> {
    Arc::new(|key: ObjectRef, ctx: Arc<Context>| {
        Box::pin(async move {
            match ctx
                .client
                .delete(
                    ctx.kinds.endpoints,
                    key.namespace.clone(),
                    key.name.clone(),
                    Value::Null,
                )
                .await
            {
                Ok(_) => Ok(Action::Done),
                Err(e) if e.code == 404 => Ok(Action::Done),
                Err(e) => Err(e.into()),
            }
        })
    })
}

/// Resolves a Service port's `targetPort` against a pod.
fn resolve_port(pod: &Value, svc_port: &Value) -> Option<i64> {
    let proto = svc_port.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
    match svc_port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => {
            if let Ok(n) = name.parse::<i64>() {
                return Some(n);
            }
            pod.pointer("/spec/containers")?.as_array()?.iter().find_map(|c| {
                c.get("ports")?.as_array()?.iter().find_map(|p| {
                    let p_proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    (p.get("name").and_then(Value::as_str) == Some(name.as_str()) && p_proto == proto)
                        .then(|| p.get("containerPort").and_then(Value::as_i64))
                        .flatten()
                })
            })
        }
        _ => svc_port.get("port").and_then(Value::as_i64),
    }
}

#[derive(Default)]
struct Subset {
    ports: Vec<Value>,
    ready: Vec<Value>,
    not_ready: Vec<Value>,
}

/// The `subsets` of a Service's Endpoints, from the pods of its namespace.
pub fn subsets(svc: &Value, all_pods: &[Value]) -> Vec<Value> {
    let Some(sel) = svc.pointer("/spec/selector").and_then(Value::as_object) else {
        return Vec::new();
    };
    let selector = LabelSelector::from_map(sel);
    let publish_not_ready = svc
        .pointer("/spec/publishNotReadyAddresses")
        .and_then(Value::as_bool)
        == Some(true);
    let svc_ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Ports (as JSON) → the subset of the pods that resolve to them.
    let mut groups: BTreeMap<String, Subset> = BTreeMap::new();
    for pod in all_pods {
        if !selector.matches_object(pod) || pods::is_terminal(pod) {
            continue;
        }
        if pods::is_terminating(pod) && !publish_not_ready {
            continue;
        }
        let ip = pod.pointer("/status/podIP").and_then(Value::as_str).unwrap_or("");
        if ip.is_empty() {
            continue;
        }
        let mut ports: Vec<Value> = svc_ports
            .iter()
            .filter_map(|sp| {
                let port = resolve_port(pod, sp)?;
                let mut p =
                    json!({"port": port, "protocol": sp.get("protocol").cloned().unwrap_or(json!("TCP"))});
                if let Some(n) = sp
                    .get("name")
                    .filter(|n| n.as_str().is_some_and(|s| !s.is_empty()))
                {
                    p["name"] = n.clone();
                }
                if let Some(a) = sp.get("appProtocol") {
                    p["appProtocol"] = a.clone();
                }
                Some(p)
            })
            .collect();
        ports.sort_by_key(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["port"].as_i64().unwrap_or(0),
            )
        });
        let mut address = json!({
            "ip": ip,
            "targetRef": {"kind": "Pod", "namespace": pod.pointer("/metadata/namespace"), "name": pods::name(pod), "uid": pods::uid(pod)},
        });
        if let Some(node) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            address["nodeName"] = json!(node);
        }
        // A pod whose subdomain is this Service gets its own DNS name through it.
        let hostname = pod
            .pointer("/spec/hostname")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !hostname.is_empty() && pod.pointer("/spec/subdomain") == svc.pointer("/metadata/name") {
            address["hostname"] = json!(hostname);
        }
        let key = Value::Array(ports.clone()).to_string();
        let entry = groups.entry(key).or_insert_with(|| Subset {
            ports,
            ..Default::default()
        });
        if publish_not_ready || pods::is_ready(pod) {
            entry.ready.push(address);
        } else {
            entry.not_ready.push(address);
        }
    }
    let by_ip = |a: &Value| a["ip"].as_str().unwrap_or("").to_string();
    groups
        .into_values()
        .map(
            |Subset {
                 ports,
                 mut ready,
                 mut not_ready,
             }| {
                ready.sort_by_key(by_ip);
                not_ready.sort_by_key(by_ip);
                let mut s = json!({});
                if !ready.is_empty() {
                    s["addresses"] = json!(ready);
                }
                if !not_ready.is_empty() {
                    s["notReadyAddresses"] = json!(not_ready);
                }
                if !ports.is_empty() {
                    s["ports"] = json!(ports);
                }
                s
            },
        )
        .collect()
}

/// One reconcile pass of a Service's Endpoints.
pub async fn reconcile(svc: Arc<Value>, ctx: Arc<Context>) -> Result<Action, Error> {
    if svc.pointer("/spec/selector").and_then(Value::as_object).is_none() {
        return Ok(Action::Done);
    }
    let ns = pods::namespace(&svc);
    let name = pods::name(&svc).to_string();
    let list = ctx
        .client
        .list(ctx.kinds.pods, ns.clone(), ListParams::default())
        .await?;
    let all = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let subsets = subsets(&svc, &all);
    let mut labels = svc.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    if svc.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None") {
        labels["service.kubernetes.io/headless"] = json!("");
    }
    let existing = match ctx
        .client
        .get(ctx.kinds.endpoints, ns.clone(), name.clone())
        .await
    {
        Ok(e) => Some(e),
        Err(e) if e.code == 404 => None,
        Err(e) => return Err(e.into()),
    };
    match existing {
        Some(mut ep) => {
            let current_subsets = ep.get("subsets").cloned().unwrap_or(json!([]));
            let current_labels = ep.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            if current_subsets == json!(subsets) && current_labels == labels {
                return Ok(Action::Done);
            }
            ep["subsets"] = json!(subsets);
            ep["metadata"]["labels"] = labels;
            ctx.client
                .update(ctx.kinds.endpoints, ns, ep, None, WriteOptions::default())
                .await?;
        }
        None => {
            let ep = json!({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "subsets": subsets,
            });
            ctx.client
                .create(ctx.kinds.endpoints, ns, ep, WriteOptions::default())
                .await?;
        }
    }
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, app: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        })
    }

    #[test]
    fn ready_and_not_ready_addresses_with_named_ports() {
        let svc = json!({"metadata": {"name": "web", "namespace": "ns"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}});
        let pods = vec![
            pod("b", "10.0.0.2", true, "web"),
            pod("a", "10.0.0.1", true, "web"),
            pod("c", "10.0.0.3", false, "web"),
            pod("other", "10.0.0.9", true, "db"),
            pod("noip", "", true, "web"),
        ];
        let s = subsets(&svc, &pods);
        assert_eq!(s.len(), 1);
        let ips: Vec<&str> = s[0]["addresses"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["ip"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(ips, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(s[0]["notReadyAddresses"][0]["ip"], "10.0.0.3");
        assert_eq!(
            s[0]["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        );
        assert_eq!(s[0]["addresses"][0]["targetRef"]["name"], "a");
        assert_eq!(s[0]["addresses"][0]["nodeName"], "n1");
        assert!(s[0]["addresses"][0].get("hostname").is_none());
    }

    #[test]
    fn pods_of_the_service_subdomain_carry_their_hostname() {
        let svc = json!({"metadata": {"name": "db", "namespace": "ns"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"}}});
        let mut member = pod("db-0", "10.0.0.1", true, "db");
        member["spec"]["hostname"] = json!("db-0");
        member["spec"]["subdomain"] = json!("db");
        let mut elsewhere = pod("db-x", "10.0.0.2", true, "db");
        elsewhere["spec"]["hostname"] = json!("db-x");
        elsewhere["spec"]["subdomain"] = json!("other");
        let s = subsets(&svc, &[member, elsewhere]);
        assert_eq!(s[0]["addresses"][0]["hostname"], "db-0");
        assert!(s[0]["addresses"][1].get("hostname").is_none());
    }
}
