//! The NetworkPolicy table of each node: the control plane resolves every policy that selects
//! one of the node's pods into addresses and port numbers, and pushes the result down the session
//! as level-triggered `PolicyTable` snapshots (on connect and whenever it changes). The node
//! knows no labels: it filters what it forwards by the IPs and ports listed here.
//!
//! Upstream's semantics, per pod of this node:
//! * it is isolated for ingress (egress) when a policy of its namespace selects it and that
//!   policy's `policyTypes` holds `Ingress` (`Egress`); absent types default to `Ingress`, plus
//!   `Egress` when the policy has egress rules;
//! * what an isolated pod may receive (send) is the union of the ingress (egress) rules of the
//!   policies selecting it; a rule lists peers (`podSelector` in the policy's namespace,
//!   `namespaceSelector`, both together, `ipBlock` with `except`; none = everyone) and ports
//!   (number, range with `endPort`, or name; none = every port).
//!
//! Named ports are resolved against the destination pod's containers: the local pod for ingress,
//! the peer pod for egress (an `ipBlock` peer has no names). Pods that resolve a rule's ports
//! differently get separate [`PolicyRule`]s, so every rule the node sees has numeric ports only.
//! Pods count once they have an IPv4 `status.podIP`, until they finish; host-network pods are
//! neither selected nor peers (their address is the node's).
//!
//! The feed has the shape of [`crate::service_table::feed`]: list policies, pods and namespaces,
//! send if different, watch all three from the list's version (only the policies while there
//! are none), list again on the first change.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use keel_api::client::ListParams;
use keel_api::registry;
use keel_api::selector::LabelSelector;
use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::{ControlMessage, PolicyPeer, PolicyPort, PolicyRule, PolicyTable};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::gate::{stopped, until_changed, Gate};
use crate::session::Outbound;

/// The shortest time between two lists for one node.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// How long to wait after a failed list or watch.
const RETRY: Duration = Duration::from_secs(1);
/// The label upstream puts on every namespace (and we assume even where it is missing).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn items(list: &Value) -> &[Value] {
    list["items"].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A pod that takes part in policy: it has an address and is not on the host network.
struct Pod<'a> {
    namespace: &'a str,
    node: &'a str,
    ip: Ipv4Addr,
    object: &'a Value,
}

impl<'a> Pod<'a> {
    fn of(object: &'a Value) -> Option<Pod<'a>> {
        if object.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        if matches!(str_at(object, "/status/phase"), "Succeeded" | "Failed") {
            return None;
        }
        Some(Pod {
            namespace: str_at(object, "/metadata/namespace"),
            node: str_at(object, "/spec/nodeName"),
            ip: str_at(object, "/status/podIP").parse().ok()?,
            object,
        })
    }

    /// The number of the container port called `name` with `protocol`.
    fn named_port(&self, name: &str, protocol: &str) -> Option<u32> {
        ["/spec/containers", "/spec/initContainers"]
            .iter()
            .filter_map(|p| self.object.pointer(p).and_then(Value::as_array))
            .flatten()
            .filter_map(|c| c["ports"].as_array())
            .flatten()
            .find(|p| p["name"].as_str() == Some(name) && p["protocol"].as_str().unwrap_or("TCP") == protocol)
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|n| u32::try_from(n).ok())
    }
}

/// One entry of a rule's `ports`, before named ports are resolved.
enum PortSpec {
    /// Every port of the protocol (`port` absent).
    Any(String),
    Number(String, u32, u32),
    Name(String, String),
    /// Not a port (the API validates ports; should one slip through, it allows nothing rather
    /// than leave the rule without ports, which would allow every port).
    Invalid,
}

impl PortSpec {
    fn parse(p: &Value) -> PortSpec {
        Self::try_parse(p).unwrap_or(PortSpec::Invalid)
    }

    fn try_parse(p: &Value) -> Option<PortSpec> {
        let protocol = p["protocol"].as_str().unwrap_or("TCP").to_string();
        let end = p["endPort"]
            .as_u64()
            .and_then(|e| u32::try_from(e).ok())
            .unwrap_or(0);
        match &p["port"] {
            Value::Null => Some(PortSpec::Any(protocol)),
            Value::Number(n) => Some(PortSpec::Number(protocol, u32::try_from(n.as_u64()?).ok()?, end)),
            Value::String(s) => match s.parse::<u32>() {
                Ok(n) => Some(PortSpec::Number(protocol, n, end)),
                Err(_) => Some(PortSpec::Name(protocol, s.clone())),
            },
            _ => None,
        }
    }
}

/// `specs` in numbers for traffic to `dest` (`None`: an address outside any pod).
fn resolve(specs: &[PortSpec], dest: Option<&Pod>) -> Vec<PolicyPort> {
    let mut out: Vec<PolicyPort> = specs
        .iter()
        .filter_map(|s| match s {
            PortSpec::Any(protocol) => Some(port(protocol, 0, 0)),
            PortSpec::Number(protocol, n, end) => Some(port(protocol, *n, if end > n { *end } else { 0 })),
            PortSpec::Name(protocol, name) => dest
                .and_then(|d| d.named_port(name, protocol))
                .map(|n| port(protocol, n, 0)),
            PortSpec::Invalid => None,
        })
        .collect();
    out.sort_by(|a, b| (&a.protocol, a.port, a.end_port).cmp(&(&b.protocol, b.port, b.end_port)));
    out.dedup();
    out
}

fn port(protocol: &str, port: u32, end_port: u32) -> PolicyPort {
    PolicyPort {
        protocol: protocol.to_string(),
        port,
        end_port,
    }
}

/// A rule's peer: a pod, or an address block.
enum Peer<'a> {
    Pod(&'a Pod<'a>),
    Block(PolicyPeer),
}

impl Peer<'_> {
    fn to_proto(&self) -> PolicyPeer {
        match self {
            Peer::Pod(p) => PolicyPeer {
                cidr: format!("{}/32", p.ip),
                except: Vec::new(),
            },
            Peer::Block(b) => b.clone(),
        }
    }
}

/// Everything a node's table is computed from.
struct World<'a> {
    pods: Vec<Pod<'a>>,
    /// Namespace name → its labels (with `kubernetes.io/metadata.name`).
    namespaces: HashMap<&'a str, Map<String, Value>>,
}

impl<'a> World<'a> {
    fn new(pods: &'a [Value], namespaces: &'a [Value]) -> Self {
        let namespaces = namespaces
            .iter()
            .map(|n| {
                let name = str_at(n, "/metadata/name");
                let mut labels = n
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                labels
                    .entry(NAMESPACE_NAME_LABEL)
                    .or_insert_with(|| Value::String(name.to_string()));
                (name, labels)
            })
            .collect();
        World {
            pods: pods.iter().filter_map(Pod::of).collect(),
            namespaces,
        }
    }

    /// The peers of one `from`/`to` list of a policy in `namespace`.
    fn peers(&self, namespace: &str, list: Option<&Vec<Value>>) -> Vec<Peer<'_>> {
        let Some(list) = list.filter(|l| !l.is_empty()) else {
            return vec![Peer::Block(PolicyPeer {
                cidr: "0.0.0.0/0".into(),
                except: Vec::new(),
            })];
        };
        let mut out = Vec::new();
        for peer in list {
            if let Some(block) = peer.get("ipBlock").filter(|b| b.is_object()) {
                let cidr = block["cidr"].as_str().unwrap_or_default();
                if cidr.contains('.') {
                    out.push(Peer::Block(PolicyPeer {
                        cidr: cidr.to_string(),
                        except: block["except"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .filter(|e| e.contains('.'))
                            .map(str::to_string)
                            .collect(),
                    }));
                }
                continue;
            }
            let ns_sel = peer.get("namespaceSelector").filter(|s| !s.is_null());
            let pod_sel = peer.get("podSelector").filter(|s| !s.is_null());
            if ns_sel.is_none() && pod_sel.is_none() {
                continue;
            }
            let Ok(pods) = pod_sel.map_or(Ok(LabelSelector::everything()), |s| {
                LabelSelector::from_json(Some(s))
            }) else {
                continue;
            };
            let namespaces = match ns_sel.map(|s| LabelSelector::from_json(Some(s))) {
                None => None,
                Some(Ok(s)) => Some(s),
                Some(Err(_)) => continue,
            };
            for p in &self.pods {
                let ns_ok = match &namespaces {
                    None => p.namespace == namespace,
                    Some(sel) => self
                        .namespaces
                        .get(p.namespace)
                        .is_some_and(|l| sel.matches(Some(l))),
                };
                if ns_ok && pods.matches_object(p.object) {
                    out.push(Peer::Pod(p));
                }
            }
        }
        out
    }
}

/// Items grouped by the ports a rule resolves to for them: key → (ports, items).
type Groups<T> = BTreeMap<Vec<(String, u32, u32)>, (Vec<PolicyPort>, Vec<T>)>;

/// Groups `peers` into (ports, peers) by how the rule's ports resolve for them.
fn egress_groups(specs: &[PortSpec], peers: &[Peer]) -> Groups<PolicyPeer> {
    let mut groups: Groups<PolicyPeer> = BTreeMap::new();
    for peer in peers {
        let dest = match peer {
            Peer::Pod(p) => Some(*p),
            Peer::Block(_) => None,
        };
        let ports = resolve(specs, dest);
        let key = ports
            .iter()
            .map(|p| (p.protocol.clone(), p.port, p.end_port))
            .collect();
        groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(peer.to_proto());
    }
    groups
}

fn sorted_peers(mut peers: Vec<PolicyPeer>) -> Vec<PolicyPeer> {
    peers.sort_by(|a, b| (&a.cidr, &a.except).cmp(&(&b.cidr, &b.except)));
    peers.dedup();
    peers
}

/// `node`'s policy table from the items of policy, pod and namespace lists (version 0).
pub(crate) fn table(policies: &[Value], pods: &[Value], namespaces: &[Value], node: &str) -> PolicyTable {
    let world = World::new(pods, namespaces);
    let mut policies: Vec<&Value> = policies.iter().collect();
    policies.sort_by_key(|p| (str_at(p, "/metadata/namespace"), str_at(p, "/metadata/name")));
    let mut t = PolicyTable::default();
    for policy in policies {
        let namespace = str_at(policy, "/metadata/namespace");
        let name = format!("{namespace}/{}", str_at(policy, "/metadata/name"));
        let spec = &policy["spec"];
        let selector = match spec.get("podSelector").filter(|s| !s.is_null()) {
            None => LabelSelector::everything(),
            Some(s) => match LabelSelector::from_json(Some(s)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(policy = %name, error = %e, "NetworkPolicy with an invalid podSelector ignored");
                    continue;
                }
            },
        };
        let targets: Vec<&Pod> = world
            .pods
            .iter()
            .filter(|p| p.node == node && p.namespace == namespace && selector.matches_object(p.object))
            .collect();
        if targets.is_empty() {
            continue;
        }
        let rules = |key: &str| spec[key].as_array().map(Vec::as_slice).unwrap_or_default();
        let types: Vec<&str> = match spec["policyTypes"].as_array().filter(|t| !t.is_empty()) {
            Some(t) => t.iter().filter_map(Value::as_str).collect(),
            None if rules("egress").is_empty() => vec!["Ingress"],
            None => vec!["Ingress", "Egress"],
        };
        let specs_of = |rule: &Value| -> Vec<PortSpec> {
            rule["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(PortSpec::parse)
                .collect()
        };
        if types.contains(&"Ingress") {
            t.ingress_isolated
                .extend(targets.iter().map(|p| p.ip.to_string()));
            for rule in rules("ingress") {
                let specs = specs_of(rule);
                let peers = sorted_peers(
                    world
                        .peers(namespace, rule["from"].as_array())
                        .iter()
                        .map(Peer::to_proto)
                        .collect(),
                );
                if peers.is_empty() {
                    continue;
                }
                // Named ports are the local pod's: group the targets by what they resolve to.
                let mut groups: Groups<String> = BTreeMap::new();
                for target in &targets {
                    let ports = resolve(&specs, Some(target));
                    let key = ports
                        .iter()
                        .map(|p| (p.protocol.clone(), p.port, p.end_port))
                        .collect();
                    groups
                        .entry(key)
                        .or_insert_with(|| (ports, Vec::new()))
                        .1
                        .push(target.ip.to_string());
                }
                for (ports, mut pods) in groups.into_values() {
                    if !specs.is_empty() && ports.is_empty() {
                        continue; // only names these pods do not have
                    }
                    pods.sort();
                    t.ingress.push(PolicyRule {
                        policy: name.clone(),
                        pods,
                        peers: peers.clone(),
                        ports,
                    });
                }
            }
        }
        if types.contains(&"Egress") {
            let mut pods: Vec<String> = targets.iter().map(|p| p.ip.to_string()).collect();
            pods.sort();
            t.egress_isolated.extend(pods.iter().cloned());
            for rule in rules("egress") {
                let specs = specs_of(rule);
                let peers = world.peers(namespace, rule["to"].as_array());
                for (ports, peers) in egress_groups(&specs, &peers).into_values() {
                    if !specs.is_empty() && ports.is_empty() {
                        continue;
                    }
                    t.egress.push(PolicyRule {
                        policy: name.clone(),
                        pods: pods.clone(),
                        peers: sorted_peers(peers),
                        ports,
                    });
                }
            }
        }
    }
    for list in [&mut t.ingress_isolated, &mut t.egress_isolated] {
        list.sort();
        list.dedup();
    }
    t
}

/// Feeds `out` with `node`'s policy table until it closes or the gate shuts down.
pub(crate) async fn feed(gate: Arc<Gate>, node: String, out: Outbound) {
    let (Some(policies), Some(namespaces)) = (
        registry::find("networking.k8s.io", "v1", "networkpolicies"),
        registry::find("", "v1", "namespaces"),
    ) else {
        tracing::warn!("the registry has no networkpolicies or namespaces: no policy table for nodes");
        return;
    };
    let kinds = [policies, gate.kinds.pods, namespaces];
    let mut shutdown = gate.shutdown.clone();
    let mut last_sent: Option<PolicyTable> = None;
    let mut next_list = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_list) => {}
            _ = out.closed() => return,
            _ = stopped(&mut shutdown) => return,
        }
        next_list = Instant::now() + MIN_INTERVAL;
        // Without policies, pods and namespaces decide nothing: they are not listed (every
        // node's feed listing every pod made a thousand nodes connecting cost a thousand lists
        // of all pods).
        let lists = match gate.client.list(kinds[0], None, ListParams::default()).await {
            Ok(p) if items(&p).is_empty() => Ok(vec![p.clone(), p.clone(), p]),
            Ok(p) => futures::future::try_join_all(
                kinds[1..]
                    .iter()
                    .map(|k| gate.client.list(k, None, ListParams::default())),
            )
            .await
            .map(|mut rest| {
                rest.insert(0, p);
                rest
            }),
            Err(e) => Err(e),
        };
        let lists = match lists {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "listing network policies for the node failed");
                next_list = Instant::now() + RETRY;
                continue;
            }
        };
        let version = |l: &Value| str_at(l, "/metadata/resourceVersion").parse::<u64>().unwrap_or(0);
        let from = lists.iter().map(version).min().unwrap_or(0);
        let mut current = table(items(&lists[0]), items(&lists[1]), items(&lists[2]), &node);
        if last_sent.as_ref() != Some(&current) {
            let sent = current.clone();
            current.version = lists.iter().map(version).max().unwrap_or(0);
            let msg = ControlMessage {
                msg: Some(ControlMsg::Policies(current)),
            };
            if out.send(Ok(msg)).await.is_err() {
                return;
            }
            tracing::debug!(
                node = %node,
                ingress = sent.ingress.len(),
                egress = sent.egress.len(),
                "sent policy table"
            );
            last_sent = Some(sent);
        }
        let params = ListParams {
            resource_version: Some(from.to_string()),
            ..Default::default()
        };
        // Without policies, pods and namespaces change nothing: watch the policies alone.
        let watched = if items(&lists[0]).is_empty() {
            &kinds[..1]
        } else {
            &kinds[..]
        };
        let watches =
            futures::future::try_join_all(watched.iter().map(|k| gate.client.watch(k, None, params.clone())))
                .await;
        let mut events = match watches {
            Ok(w) => futures::stream::select_all(w),
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "watching network policies for the node failed");
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

    fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name, "labels": labels},
               "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                   {"name": "http", "containerPort": if name.starts_with("alt") { 8081 } else { 8080 }},
                   {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
               "status": {"phase": "Running", "podIP": ip}})
    }

    fn world() -> (Vec<Value>, Vec<Value>) {
        let mut host = pod("default", "host", "n1", "192.168.50.11", json!({"app": "web"}));
        host["spec"]["hostNetwork"] = json!(true);
        let mut pending = pod("default", "pending", "n1", "", json!({"app": "web"}));
        pending["status"] = json!({"phase": "Pending"});
        let mut done = pod("default", "done", "n2", "10.244.2.9", json!({"role": "client"}));
        done["status"]["phase"] = json!("Succeeded");
        let pods = vec![
            pod("default", "web-1", "n1", "10.244.1.2", json!({"app": "web"})),
            pod("default", "alt-web", "n1", "10.244.1.3", json!({"app": "web"})),
            pod("default", "web-2", "n2", "10.244.2.2", json!({"app": "web"})),
            pod(
                "default",
                "client-1",
                "n1",
                "10.244.1.4",
                json!({"role": "client"}),
            ),
            pod(
                "default",
                "client-2",
                "n2",
                "10.244.2.3",
                json!({"role": "client"}),
            ),
            pod("default", "other", "n2", "10.244.2.4", json!({"role": "other"})),
            pod("team", "t-client", "n2", "10.244.2.5", json!({"role": "client"})),
            pod("team", "t-other", "n1", "10.244.1.5", json!({})),
            pod("lab", "l-client", "n2", "10.244.2.6", json!({"role": "client"})),
            host,
            pending,
            done,
        ];
        let namespaces = vec![
            json!({"metadata": {"name": "default"}}),
            json!({"metadata": {"name": "team", "labels": {"team": "a"}}}),
            json!({"metadata": {"name": "lab"}}),
        ];
        (pods, namespaces)
    }

    fn policy(ns: &str, name: &str, spec: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
    }

    /// A rule as (pods, peers, ports) in text.
    fn rules(rs: &[PolicyRule]) -> Vec<(String, String, String)> {
        rs.iter()
            .map(|r| {
                let peers: Vec<String> = r
                    .peers
                    .iter()
                    .map(|p| {
                        if p.except.is_empty() {
                            p.cidr.clone()
                        } else {
                            format!("{}-{}", p.cidr, p.except.join("-"))
                        }
                    })
                    .collect();
                let ports: Vec<String> = r
                    .ports
                    .iter()
                    .map(|p| match (p.port, p.end_port) {
                        (0, _) => p.protocol.clone(),
                        (n, 0) => format!("{}:{n}", p.protocol),
                        (n, e) => format!("{}:{n}-{e}", p.protocol),
                    })
                    .collect();
                (r.pods.join(","), peers.join(","), ports.join(","))
            })
            .collect()
    }

    fn s(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    struct Case {
        name: &'static str,
        policies: Vec<Value>,
        node: &'static str,
        ingress_isolated: &'static [&'static str],
        egress_isolated: &'static [&'static str],
        ingress: Vec<(String, String, String)>,
        egress: Vec<(String, String, String)>,
    }

    #[test]
    fn selectors_resolve_to_the_nodes_addresses() {
        let web = json!({"matchLabels": {"app": "web"}});
        let cases = vec![
            Case {
                name: "default deny ingress isolates the namespace's local pods, allows nothing",
                policies: vec![policy(
                    "default",
                    "deny",
                    json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
                )],
                node: "n1",
                ingress_isolated: &["10.244.1.2", "10.244.1.3", "10.244.1.4"],
                egress_isolated: &[],
                ingress: vec![],
                egress: vec![],
            },
            Case {
                name: "a policy selecting only other nodes' pods is not this node's business",
                policies: vec![policy(
                    "team",
                    "deny",
                    json!({"podSelector": {"matchLabels": {"role": "client"}}}),
                )],
                node: "n1",
                ingress_isolated: &[],
                egress_isolated: &[],
                ingress: vec![],
                egress: vec![],
            },
            Case {
                name: "podSelector peers are the namespace's pods on every node",
                policies: vec![policy(
                    "default",
                    "from-clients",
                    json!({"podSelector": web,
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
                )],
                node: "n2",
                ingress_isolated: &["10.244.2.2"],
                egress_isolated: &[],
                ingress: vec![s("10.244.2.2", "10.244.1.4/32,10.244.2.3/32", "")],
                egress: vec![],
            },
            Case {
                name: "namespaceSelector alone: every pod of the matching namespaces",
                policies: vec![policy(
                    "default",
                    "from-team",
                    json!({"podSelector": web,
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}]}),
                )],
                node: "n2",
                ingress_isolated: &["10.244.2.2"],
                egress_isolated: &[],
                ingress: vec![s("10.244.2.2", "10.244.1.5/32,10.244.2.5/32", "")],
                egress: vec![],
            },
            Case {
                name: "namespaceSelector and podSelector together; the name label is implied",
                policies: vec![policy(
                    "default",
                    "both",
                    json!({"podSelector": web,
                    "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["lab", "team"]}]},
                                           "podSelector": {"matchLabels": {"role": "client"}}}]}]}),
                )],
                node: "n2",
                ingress_isolated: &["10.244.2.2"],
                egress_isolated: &[],
                ingress: vec![s("10.244.2.2", "10.244.2.5/32,10.244.2.6/32", "")],
                egress: vec![],
            },
            Case {
                name: "ipBlock with except, ports with ranges and protocols, empty from = everyone",
                policies: vec![policy(
                    "default",
                    "blocks",
                    json!({"podSelector": web, "ingress": [
                    {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.50.0/24", "fd00::/8"]}},
                              {"ipBlock": {"cidr": "fd00::/8"}}],
                     "ports": [{"port": 80}, {"protocol": "UDP", "port": 5000, "endPort": 5010}]},
                    {"ports": [{"protocol": "SCTP"}]}]}),
                )],
                node: "n2",
                ingress_isolated: &["10.244.2.2"],
                egress_isolated: &[],
                ingress: vec![
                    s(
                        "10.244.2.2",
                        "192.168.0.0/16-192.168.50.0/24",
                        "TCP:80,UDP:5000-5010",
                    ),
                    s("10.244.2.2", "0.0.0.0/0", "SCTP"),
                ],
                egress: vec![],
            },
            Case {
                name: "named ingress ports resolve per local pod (two pods, two numbers)",
                policies: vec![policy(
                    "default",
                    "named",
                    json!({"podSelector": web, "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                     "ports": [{"port": "http"}, {"port": "nope"}]}]}),
                )],
                node: "n1",
                ingress_isolated: &["10.244.1.2", "10.244.1.3"],
                egress_isolated: &[],
                ingress: vec![
                    s("10.244.1.2", "10.244.1.4/32,10.244.2.3/32", "TCP:8080"),
                    s("10.244.1.3", "10.244.1.4/32,10.244.2.3/32", "TCP:8081"),
                ],
                egress: vec![],
            },
            Case {
                name: "egress rules default the policy types; named ports resolve per peer",
                policies: vec![policy(
                    "default",
                    "out",
                    json!({"podSelector": {"matchLabels": {"role": "client"}}, "egress": [
                    {"to": [{"podSelector": web}, {"ipBlock": {"cidr": "10.96.0.0/12"}}],
                     "ports": [{"port": "http"}, {"protocol": "UDP", "port": 53}]}]}),
                )],
                node: "n1",
                ingress_isolated: &["10.244.1.4"],
                egress_isolated: &["10.244.1.4"],
                ingress: vec![],
                egress: vec![
                    s("10.244.1.4", "10.244.1.2/32,10.244.2.2/32", "TCP:8080,UDP:53"),
                    s("10.244.1.4", "10.244.1.3/32", "TCP:8081,UDP:53"),
                    s("10.244.1.4", "10.96.0.0/12", "UDP:53"),
                ],
            },
            Case {
                name: "egress-only policy types: deny all egress, ingress untouched; unions across policies",
                policies: vec![
                    policy(
                        "default",
                        "a-deny-out",
                        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
                    ),
                    policy("default", "b-in", json!({"podSelector": web, "ingress": [{}]})),
                ],
                node: "n1",
                ingress_isolated: &["10.244.1.2", "10.244.1.3"],
                egress_isolated: &["10.244.1.2", "10.244.1.3", "10.244.1.4"],
                ingress: vec![s("10.244.1.2,10.244.1.3", "0.0.0.0/0", "")],
                egress: vec![],
            },
            Case {
                name: "a rule whose only port is not a port allows nothing (not every port)",
                policies: vec![policy(
                    "default",
                    "bad-port",
                    json!({"podSelector": web,
                    "ingress": [{"ports": [{"port": -1}]}, {"ports": [{"port": 81}, {"port": true}]}]}),
                )],
                node: "n2",
                ingress_isolated: &["10.244.2.2"],
                egress_isolated: &[],
                ingress: vec![s("10.244.2.2", "0.0.0.0/0", "TCP:81")],
                egress: vec![],
            },
            Case {
                name: "a selector matching no pod allows nothing (the rule is dropped)",
                policies: vec![policy(
                    "default",
                    "none",
                    json!({"podSelector": web,
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "ghost"}}}]}]}),
                )],
                node: "n1",
                ingress_isolated: &["10.244.1.2", "10.244.1.3"],
                egress_isolated: &[],
                ingress: vec![],
                egress: vec![],
            },
        ];
        let (pods, namespaces) = world();
        for c in cases {
            let t = table(&c.policies, &pods, &namespaces, c.node);
            assert_eq!(
                t.ingress_isolated, c.ingress_isolated,
                "{}: ingress isolated",
                c.name
            );
            assert_eq!(
                t.egress_isolated, c.egress_isolated,
                "{}: egress isolated",
                c.name
            );
            assert_eq!(rules(&t.ingress), c.ingress, "{}: ingress rules", c.name);
            assert_eq!(rules(&t.egress), c.egress, "{}: egress rules", c.name);
            assert!(t
                .ingress
                .iter()
                .chain(&t.egress)
                .all(|r| r.policy.starts_with("default/")));
        }
    }
}
