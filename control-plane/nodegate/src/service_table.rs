//! The service table each node programs into its datapath: every Service with a ClusterIP and,
//! per port, the ready endpoints behind it (from the Service's Endpoints object), pushed down
//! the session as level-triggered `ServiceTable` snapshots — on connect and whenever a Service or
//! an Endpoints object changes, and only when the table's content differs from the last one sent.
//!
//! Same shape as [`crate::pods::feed`]: list, send if different, watch from the list's version,
//! list again on the first change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keel_api::client::ListParams;
use keel_api::registry;
use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::{ClusterService, ClusterServicePort, ControlMessage, ServiceEndpoint, ServiceTable};
use serde_json::Value;
use tokio::time::Instant;

use crate::gate::{stopped, until_changed, Gate};
use crate::session::Outbound;

/// The shortest time between two lists for one node.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// How long to wait after a failed list or watch.
const RETRY: Duration = Duration::from_secs(1);

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn items(list: &Value) -> &[Value] {
    list["items"].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The table for `services` and `endpoints` (list items), sorted by namespace and name.
/// Headless services are listed for DNS (`headless`, no ClusterIP); ExternalName services carry
/// their name and no ports.
pub(crate) fn table(services: &[Value], endpoints: &[Value]) -> Vec<ClusterService> {
    let by_name: HashMap<(&str, &str), &Value> = endpoints
        .iter()
        .map(|e| ((str_at(e, "/metadata/namespace"), str_at(e, "/metadata/name")), e))
        .collect();
    let mut out: Vec<ClusterService> = services
        .iter()
        .filter_map(|s| {
            let ip = str_at(s, "/spec/clusterIP");
            let external_name = if str_at(s, "/spec/type") == "ExternalName" {
                str_at(s, "/spec/externalName").trim_end_matches('.').to_string()
            } else {
                String::new()
            };
            let headless = ip == "None";
            if ip.is_empty() && external_name.is_empty() {
                return None;
            }
            let (ns, name) = (str_at(s, "/metadata/namespace"), str_at(s, "/metadata/name"));
            let subsets = by_name
                .get(&(ns, name))
                .and_then(|e| e["subsets"].as_array())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let ports = if external_name.is_empty() {
                s["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let port_name = p["name"].as_str().unwrap_or_default();
                        ClusterServicePort {
                            protocol: p["protocol"].as_str().unwrap_or("TCP").to_string(),
                            port: p["port"].as_u64().unwrap_or(0) as u32,
                            endpoints: endpoints_for(subsets, port_name),
                            node_port: p["nodePort"].as_u64().unwrap_or(0) as u32,
                            name: port_name.to_string(),
                        }
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let affinity_timeout_seconds = if str_at(s, "/spec/sessionAffinity") == "ClientIP" {
                s.pointer("/spec/sessionAffinityConfig/clientIP/timeoutSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(10800) as u32
            } else {
                0
            };
            let addresses = if headless {
                ready_addresses(subsets)
            } else {
                Vec::new()
            };
            Some(ClusterService {
                addresses,
                namespace: ns.to_string(),
                name: name.to_string(),
                cluster_ip: if headless { String::new() } else { ip.to_string() },
                ports,
                external_traffic_local: str_at(s, "/spec/externalTrafficPolicy") == "Local",
                affinity_timeout_seconds,
                headless,
                external_name,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Every ready address of `subsets` once, with port 0 (headless services' DNS records).
fn ready_addresses(subsets: &[Value]) -> Vec<ServiceEndpoint> {
    let mut out: Vec<ServiceEndpoint> = subsets
        .iter()
        .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| {
            Some(ServiceEndpoint {
                ip: a["ip"].as_str()?.to_string(),
                port: 0,
                node_name: a["nodeName"].as_str().unwrap_or_default().to_string(),
                hostname: a["hostname"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.ip.cmp(&b.ip));
    out.dedup_by(|a, b| a.ip == b.ip);
    out
}

/// The ready addresses of `subsets` with the port named `port_name` (or the only port).
fn endpoints_for(subsets: &[Value], port_name: &str) -> Vec<ServiceEndpoint> {
    let mut out = Vec::new();
    for subset in subsets {
        let ports = subset["ports"].as_array().map(Vec::as_slice).unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
            .or_else(|| (ports.len() == 1).then(|| &ports[0]))
            .and_then(|p| p["port"].as_u64());
        let Some(port) = port else { continue };
        for a in subset["addresses"].as_array().into_iter().flatten() {
            if let Some(ip) = a["ip"].as_str() {
                out.push(ServiceEndpoint {
                    ip: ip.to_string(),
                    port: port as u32,
                    node_name: a["nodeName"].as_str().unwrap_or_default().to_string(),
                    hostname: a["hostname"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.ip, a.port).cmp(&(&b.ip, b.port)));
    out
}

/// Feeds `out` with the service table until it closes or the gate shuts down.
pub(crate) async fn feed(gate: Arc<Gate>, node: String, out: Outbound) {
    let (Some(services), Some(endpoints)) = (
        registry::find("", "v1", "services"),
        registry::find("", "v1", "endpoints"),
    ) else {
        tracing::warn!("the registry has no services or endpoints: no service table for nodes");
        return;
    };
    let mut shutdown = gate.shutdown.clone();
    let mut last_sent: Option<Vec<ClusterService>> = None;
    let mut next_list = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_list) => {}
            _ = out.closed() => return,
            _ = stopped(&mut shutdown) => return,
        }
        next_list = Instant::now() + MIN_INTERVAL;
        let lists = futures::future::try_join(
            gate.client.list(services, None, ListParams::default()),
            gate.client.list(endpoints, None, ListParams::default()),
        )
        .await;
        let (svc, eps) = match lists {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "listing services for the node failed");
                next_list = Instant::now() + RETRY;
                continue;
            }
        };
        // Watch from the older of the two versions: nothing in between is missed.
        let version = |l: &Value| str_at(l, "/metadata/resourceVersion").parse::<u64>().unwrap_or(0);
        let from = version(&svc).min(version(&eps));
        let current = table(items(&svc), items(&eps));
        if last_sent.as_ref() != Some(&current) {
            let msg = ControlMessage {
                msg: Some(ControlMsg::Services(ServiceTable {
                    version: version(&svc).max(version(&eps)),
                    services: current.clone(),
                })),
            };
            if out.send(Ok(msg)).await.is_err() {
                return;
            }
            tracing::debug!(node = %node, services = current.len(), "sent service table");
            last_sent = Some(current);
        }
        let params = ListParams {
            resource_version: Some(from.to_string()),
            ..Default::default()
        };
        let watches = futures::future::try_join(
            gate.client.watch(services, None, params.clone()),
            gate.client.watch(endpoints, None, params),
        )
        .await;
        let mut events = match watches {
            Ok((a, b)) => futures::stream::select(a, b),
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "watching services for the node failed");
                next_list = Instant::now() + RETRY;
                continue;
            }
        };
        if !until_changed(&mut events, &out, &mut shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_meet_their_ready_endpoints_by_port_name() {
        let services = vec![
            json!({"metadata": {"namespace": "default", "name": "web"}, "spec": {"clusterIP": "10.96.0.20",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            json!({"metadata": {"namespace": "default", "name": "headless"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
            json!({"metadata": {"namespace": "apps", "name": "solo"}, "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 8080}]}}),
        ];
        let endpoints = vec![
            json!({"metadata": {"namespace": "default", "name": "web"}, "subsets": [{
                "addresses": [{"ip": "10.244.1.3"}, {"ip": "10.244.0.2"}],
                "notReadyAddresses": [{"ip": "10.244.2.9"}],
                "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]}]}),
        ];
        let t = table(&services, &endpoints);
        let names: Vec<&str> = t.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["solo", "headless", "web"]);
        assert!(t[1].headless && t[1].cluster_ip.is_empty());
        assert!(t[1].addresses.is_empty(), "no Endpoints object, no addresses");
        let web = &t[2];
        assert_eq!(web.cluster_ip, "10.96.0.20");
        let http: Vec<(&str, u32)> = web.ports[0]
            .endpoints
            .iter()
            .map(|e| (e.ip.as_str(), e.port))
            .collect();
        assert_eq!(http, [("10.244.0.2", 8080), ("10.244.1.3", 8080)]);
        assert_eq!(web.ports[1].protocol, "UDP");
        assert_eq!(web.ports[1].endpoints[0].port, 5353);
        // No Endpoints object yet: the port is there, with no endpoints.
        assert!(t[0].ports[0].endpoints.is_empty());
        assert_eq!(t[0].ports[0].port, 8080);
    }
    #[test]
    fn node_ports_policies_and_endpoint_details_reach_the_table() {
        let services = vec![
            json!({"metadata": {"namespace": "default", "name": "np"}, "spec": {"clusterIP": "10.96.0.40",
                "type": "NodePort", "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "ports": [{"name": "http", "port": 80, "nodePort": 30001}]}}),
            json!({"metadata": {"namespace": "default", "name": "ext"}, "spec": {"type": "ExternalName",
                "externalName": "example.org."}}),
            json!({"metadata": {"namespace": "default", "name": "plain"}, "spec": {"clusterIP": "10.96.0.41",
                "sessionAffinity": "None", "ports": [{"port": 80}]}}),
        ];
        let mut services = services;
        services
            .push(json!({"metadata": {"namespace": "default", "name": "db"}, "spec": {"clusterIP": "None"}}));
        let endpoints = vec![
            json!({"metadata": {"namespace": "default", "name": "np"}, "subsets": [{
                "addresses": [{"ip": "10.244.1.3", "nodeName": "keel-2", "hostname": "np-0"}],
                "ports": [{"name": "http", "port": 8080}]}]}),
            json!({"metadata": {"namespace": "default", "name": "db"}, "subsets": [{
                "addresses": [{"ip": "10.244.2.5", "hostname": "db-1"}, {"ip": "10.244.1.5", "hostname": "db-0"}],
                "notReadyAddresses": [{"ip": "10.244.3.5"}]}]}),
        ];
        let mut t = table(&services, &endpoints);
        let db = t.remove(0);
        assert!(db.headless && db.ports.is_empty());
        let addrs: Vec<(&str, &str)> = db
            .addresses
            .iter()
            .map(|a| (a.ip.as_str(), a.hostname.as_str()))
            .collect();
        assert_eq!(addrs, [("10.244.1.5", "db-0"), ("10.244.2.5", "db-1")]);
        let names: Vec<&str> = t.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ext", "np", "plain"]);
        assert_eq!(t[0].external_name, "example.org");
        assert!(t[0].ports.is_empty() && t[0].cluster_ip.is_empty() && !t[0].headless);
        let np = &t[1];
        assert!(np.external_traffic_local);
        assert_eq!(np.affinity_timeout_seconds, 60);
        assert_eq!(
            (np.ports[0].node_port, np.ports[0].name.as_str()),
            (30001, "http")
        );
        let ep = &np.ports[0].endpoints[0];
        assert_eq!((ep.node_name.as_str(), ep.hostname.as_str()), ("keel-2", "np-0"));
        assert!(!t[2].external_traffic_local);
        assert_eq!(t[2].affinity_timeout_seconds, 0);
    }
}
