//! Filtering and scoring: what a node must offer a pod, and how well it does.
//!
//! Pods and nodes are compiled once into [`PodInfo`] and [`NodeInfo`] (parsed quantities, label
//! maps, taints), so that checking one pod against a thousand nodes is comparisons only. Each
//! node keeps what the pods placed on it request, updated incrementally as pods come and go.
//!
//! Filters, in upstream's plugin order (the first failing one names the node's reason):
//! NodeUnschedulable, TaintToleration (`NoSchedule`/`NoExecute`; a node whose `Ready` condition
//! is not `True` counts as tainted `node.kubernetes.io/not-ready`, as the node lifecycle
//! controller would taint it), NodeAffinity (`nodeSelector` and required node affinity),
//! NodePorts, NodeResourcesFit. Scores: least allocated (CPU and memory), spreading of one
//! controller's replicas, preferred node affinity, and `PreferNoSchedule` taints.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use serde_json::Value;

use crate::interpod::{Identity, PodAffinity, Violation};
use crate::resources::{pod_request, PodRequest, Resources};

const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Toleration {
    key: String,
    operator_exists: bool,
    value: String,
    effect: String,
}

impl Toleration {
    fn tolerates(&self, t: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != t.effect {
            return false;
        }
        if self.key.is_empty() {
            return self.operator_exists;
        }
        self.key == t.key && (self.operator_exists || self.value == t.value)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn parse(v: &Value) -> Option<Requirement> {
        let key = v.get("key")?.as_str()?.to_string();
        let values: Vec<String> = v
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let first_int = || values.first().and_then(|s| s.parse::<i64>().ok());
        let op = match v.get("operator")?.as_str()? {
            "In" => Op::In(values.clone()),
            "NotIn" => Op::NotIn(values.clone()),
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            "Gt" => Op::Gt(first_int()?),
            "Lt" => Op::Lt(first_int()?),
            _ => return None,
        };
        Some(Requirement { key, op })
    }

    fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::In(vs), Some(v)) => vs.iter().any(|x| x == v),
            (Op::NotIn(vs), Some(v)) => !vs.iter().any(|x| x == v),
            (Op::NotIn(_), None) | (Op::DoesNotExist, None) | (Op::Exists, Some(_)) => true,
            (Op::Gt(n), Some(v)) => v.parse::<i64>().is_ok_and(|x| x > *n),
            (Op::Lt(n), Some(v)) => v.parse::<i64>().is_ok_and(|x| x < *n),
            _ => false,
        }
    }
}

/// One node selector term: all expressions on labels and on fields must hold. A term that
/// does not parse or is empty matches nothing, as upstream treats it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Term {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
    valid: bool,
}

impl Term {
    fn parse(v: &Value) -> Term {
        let parse_all = |field: &str| -> Option<Vec<Requirement>> {
            v.get(field)
                .and_then(Value::as_array)
                .map(|a| a.iter().map(Requirement::parse).collect::<Option<Vec<_>>>())
                .unwrap_or(Some(Vec::new()))
        };
        match (parse_all("matchExpressions"), parse_all("matchFields")) {
            (Some(labels), Some(fields)) => {
                let valid = !(labels.is_empty() && fields.is_empty());
                Term {
                    labels,
                    fields,
                    valid,
                }
            }
            _ => Term {
                labels: Vec::new(),
                fields: Vec::new(),
                valid: false,
            },
        }
    }

    fn matches(&self, node: &NodeInfo) -> bool {
        self.valid
            && self
                .labels
                .iter()
                .all(|r| r.matches(node.labels.get(&r.key).map(String::as_str)))
            && self
                .fields
                .iter()
                .all(|r| r.key == "metadata.name" && r.matches(Some(&node.name)))
    }
}

/// A pod compiled for scheduling.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub request: PodRequest,
    node_selector: Vec<(String, String)>,
    /// Required node affinity: any term must match (`None` = no requirement).
    required: Option<Vec<Term>>,
    preferred: Vec<(i64, Term)>,
    tolerations: Vec<Toleration>,
    pub host_ports: Vec<(String, u16)>,
    /// The uid of the pod's controller, for spreading its replicas.
    pub owner: Option<String>,
    /// Namespace and labels, for other pods' affinity terms.
    pub identity: Arc<Identity>,
    /// Inter-pod affinity and anti-affinity terms, if any.
    pub affinity: Option<Arc<PodAffinity>>,
}

impl PodInfo {
    pub fn new(pod: &Value) -> PodInfo {
        let spec = pod.get("spec");
        let node_selector = spec
            .and_then(|s| s.get("nodeSelector"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let affinity = spec.and_then(|s| s.pointer("/affinity/nodeAffinity"));
        let required = affinity
            .and_then(|a| a.pointer("/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms"))
            .map(|terms| {
                terms
                    .as_array()
                    .map(|t| t.iter().map(Term::parse).collect())
                    .unwrap_or_default()
            });
        let preferred = affinity
            .and_then(|a| a.get("preferredDuringSchedulingIgnoredDuringExecution"))
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        let weight = p.get("weight").and_then(Value::as_i64)?;
                        Some((weight, Term::parse(p.get("preference")?)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let tolerations = spec
            .and_then(|s| s.get("tolerations"))
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                        Toleration {
                            key: s("key"),
                            operator_exists: s("operator") == "Exists",
                            value: s("value"),
                            effect: s("effect"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        PodInfo {
            identity: Arc::new(Identity::of(pod)),
            affinity: PodAffinity::parse(pod).map(Arc::new),
            request: pod_request(pod),
            node_selector,
            required,
            preferred,
            tolerations,
            host_ports: host_ports(pod),
            owner: pod
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .and_then(|refs| {
                    refs.iter()
                        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                })
                .and_then(|r| r.get("uid"))
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }

    fn tolerates(&self, t: &Taint) -> bool {
        self.tolerations.iter().any(|tol| tol.tolerates(t))
    }
}

/// `(protocol, hostPort)` of every container port that asks for one.
pub fn host_ports(pod: &Value) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for list in ["containers", "initContainers"] {
        let containers = pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array);
        for c in containers.into_iter().flatten() {
            for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
                let port = p.get("hostPort").and_then(Value::as_u64).unwrap_or(0);
                if port > 0 && port <= u64::from(u16::MAX) {
                    let proto = p
                        .get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                        .to_string();
                    out.push((proto, port as u16));
                }
            }
        }
    }
    out
}

/// A node as the scheduler sees it, with the running total of what its pods request.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    /// False for a placeholder holding pods of a node not (yet) seen.
    pub known: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub score_requested: Resources,
    pub labels: HashMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: bool,
    pub used_ports: HashMap<(String, u16), u32>,
    pub owner_counts: HashMap<String, u32>,
}

impl NodeInfo {
    pub fn placeholder(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Refreshes the node's own fields from its object, keeping the pod totals.
    pub fn set_node(&mut self, node: &Value) {
        self.known = true;
        self.name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let status = node.get("status");
        let alloc = status
            .and_then(|s| s.get("allocatable"))
            .or_else(|| status.and_then(|s| s.get("capacity")));
        self.allocatable = Resources::from_map(alloc);
        if alloc.and_then(|a| a.get("pods")).is_none() {
            self.allocatable.pods = 110;
        }
        self.labels = node
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        self.taints = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                        Taint {
                            key: s("key"),
                            value: s("value"),
                            effect: s("effect"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.unschedulable = node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true);
        self.ready = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
            })
            .and_then(|c| c.get("status"))
            .and_then(Value::as_str)
            == Some("True");
    }

    /// What about this node matters to scheduling (to tell a heartbeat from a real change).
    pub fn signature(&self) -> (Resources, Vec<Taint>, bool, bool, Vec<(String, String)>) {
        let mut labels: Vec<(String, String)> =
            self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.sort();
        (
            self.allocatable,
            self.taints.clone(),
            self.unschedulable,
            self.ready,
            labels,
        )
    }

    pub fn add_pod(&mut self, pod: &PodInfo) {
        self.requested.add(&pod.request.fit);
        self.score_requested.add(&pod.request.score);
        for p in &pod.host_ports {
            *self.used_ports.entry(p.clone()).or_insert(0) += 1;
        }
        if let Some(o) = &pod.owner {
            *self.owner_counts.entry(o.clone()).or_insert(0) += 1;
        }
    }

    pub fn remove_pod(&mut self, pod: &PodInfo) {
        self.requested.sub(&pod.request.fit);
        self.score_requested.sub(&pod.request.score);
        for p in &pod.host_ports {
            if let Some(n) = self.used_ports.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    self.used_ports.remove(p);
                }
            }
        }
        if let Some(o) = &pod.owner {
            if let Some(n) = self.owner_counts.get_mut(o) {
                *n -= 1;
                if *n == 0 {
                    self.owner_counts.remove(o);
                }
            }
        }
    }

    /// Whether the pod fits; else why not, as upstream's filter plugins say it (the first
    /// failing filter decides, except that every missing resource is named).
    pub fn fits(&self, pod: &PodInfo) -> Result<(), Reasons<'_>> {
        if !self.known {
            return Err(Reasons::one(Reason::NodeNotFound));
        }
        if self.unschedulable && !pod.tolerates(&UNSCHEDULABLE) {
            return Err(Reasons::one(Reason::Unschedulable));
        }
        let not_ready =
            (!self.ready && !self.taints.iter().any(|t| t.key == NOT_READY_TAINT)).then_some(&*NOT_READY);
        for t in self.taints.iter().chain(not_ready) {
            if (t.effect == "NoSchedule" || t.effect == "NoExecute") && !pod.tolerates(t) {
                return Err(Reasons::one(Reason::Taint(t)));
            }
        }
        let selector_ok = pod
            .node_selector
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|x| x == v));
        let affinity_ok = pod
            .required
            .as_ref()
            .is_none_or(|terms| terms.iter().any(|t| t.matches(self)));
        if !selector_ok || !affinity_ok {
            return Err(Reasons::one(Reason::Affinity));
        }
        if pod.host_ports.iter().any(|p| self.used_ports.contains_key(p)) {
            return Err(Reasons::one(Reason::Ports));
        }
        let mut reasons = Reasons::default();
        let want = &pod.request.fit;
        if self.requested.pods + 1 > self.allocatable.pods {
            reasons.push(Reason::TooManyPods);
        }
        if want.milli_cpu > 0 && self.requested.milli_cpu + want.milli_cpu > self.allocatable.milli_cpu {
            reasons.push(Reason::Cpu);
        }
        if want.memory > 0 && self.requested.memory + want.memory > self.allocatable.memory {
            reasons.push(Reason::Memory);
        }
        if want.ephemeral_storage > 0
            && self.requested.ephemeral_storage + want.ephemeral_storage > self.allocatable.ephemeral_storage
        {
            reasons.push(Reason::EphemeralStorage);
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// Least allocated (0–100): the mean free share of CPU and memory after placing the pod.
    pub fn least_allocated(&self, pod: &PodInfo) -> i64 {
        let share = |alloc: i64, used: i64| {
            if alloc <= 0 {
                return 0;
            }
            ((alloc - used).max(0) * 100) / alloc
        };
        let cpu = share(
            self.allocatable.milli_cpu,
            self.score_requested.milli_cpu + pod.request.score.milli_cpu,
        );
        let mem = share(
            self.allocatable.memory,
            self.score_requested.memory + pod.request.score.memory,
        );
        (cpu + mem) / 2
    }

    /// Sum of the weights of the preferred affinity terms the node matches.
    pub fn preferred_weight(&self, pod: &PodInfo) -> i64 {
        pod.preferred
            .iter()
            .filter(|(_, t)| t.matches(self))
            .map(|(w, _)| *w)
            .sum()
    }

    /// How many `PreferNoSchedule` taints the pod does not tolerate.
    pub fn intolerable_preferences(&self, pod: &PodInfo) -> i64 {
        self.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !pod.tolerates(t))
            .count() as i64
    }

    pub fn replicas_of(&self, owner: Option<&String>) -> i64 {
        owner.and_then(|o| self.owner_counts.get(o)).copied().unwrap_or(0) as i64
    }
}

static NOT_READY: LazyLock<Taint> = LazyLock::new(|| Taint {
    key: NOT_READY_TAINT.into(),
    value: String::new(),
    effect: "NoSchedule".into(),
});

static UNSCHEDULABLE: LazyLock<Taint> = LazyLock::new(|| Taint {
    key: UNSCHEDULABLE_TAINT.into(),
    value: String::new(),
    effect: "NoSchedule".into(),
});

/// Why a node does not fit a pod (no allocation: taints are borrowed from the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason<'a> {
    NodeNotFound,
    Unschedulable,
    Taint(&'a Taint),
    Affinity,
    Ports,
    PodAffinity,
    PodAntiAffinity,
    ExistingAntiAffinity,
    TooManyPods,
    Cpu,
    Memory,
    EphemeralStorage,
}

impl std::fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NodeNotFound => f.write_str("node(s) were not found"),
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::Taint(t) => write!(f, "node(s) had untolerated taint {{{}: {}}}", t.key, t.value),
            Reason::Affinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Reason::Ports => f.write_str("node(s) didn't have free ports for the requested pod ports"),
            Reason::PodAffinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::Cpu => f.write_str("Insufficient cpu"),
            Reason::Memory => f.write_str("Insufficient memory"),
            Reason::EphemeralStorage => f.write_str("Insufficient ephemeral-storage"),
        }
    }
}

impl From<Violation> for Reason<'_> {
    fn from(v: Violation) -> Self {
        match v {
            Violation::Affinity => Reason::PodAffinity,
            Violation::AntiAffinity => Reason::PodAntiAffinity,
            Violation::ExistingAntiAffinity => Reason::ExistingAntiAffinity,
        }
    }
}

/// Up to four reasons (a node can lack several resources at once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reasons<'a> {
    items: [Option<Reason<'a>>; 4],
}

impl<'a> Reasons<'a> {
    pub fn one(r: Reason<'a>) -> Self {
        let mut out = Reasons::default();
        out.push(r);
        out
    }

    fn push(&mut self, r: Reason<'a>) {
        if let Some(slot) = self.items.iter_mut().find(|s| s.is_none()) {
            *slot = Some(r);
        }
    }

    fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = Reason<'a>> + '_ {
        self.items.iter().flatten().copied()
    }

    /// The reasons as upstream words them.
    pub fn to_strings(&self) -> Vec<String> {
        self.iter().map(|r| r.to_string()).collect()
    }
}

/// Upstream's `FitError` message: `0/3 nodes are available: 1 node(s) had untolerated taint
/// {a: b}, 2 Insufficient cpu.` (reasons counted, sorted as strings).
pub fn fit_error_message(total_nodes: usize, reasons: &HashMap<Reason<'_>, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{total_nodes} nodes are available.");
    }
    format!("0/{total_nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str, extra: Value) -> NodeInfo {
        let mut n = json!({"metadata": {"name": name, "labels": {"zone": "a", "size": "4"}},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        if let (Some(o), Some(e)) = (n.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        let mut info = NodeInfo::default();
        info.set_node(&n);
        info
    }

    fn pod(spec: Value) -> PodInfo {
        PodInfo::new(&json!({"spec": spec}))
    }

    #[test]
    fn resources_fit_and_accumulate() {
        let mut n = node("n1", "1", json!({}));
        let p = pod(json!({"containers": [{"resources": {"requests": {"cpu": "600m"}}}]}));
        assert_eq!(n.fits(&p), Ok(()));
        n.add_pod(&p);
        assert_eq!(
            n.fits(&p).map_err(|r| r.to_strings()),
            Err(vec!["Insufficient cpu".to_string()])
        );
        n.remove_pod(&p);
        assert_eq!(n.fits(&p), Ok(()));
    }

    #[test]
    fn taints_need_tolerations_and_not_ready_counts_as_a_taint() {
        let n = node(
            "n1",
            "1",
            json!({"spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}}),
        );
        let plain = pod(json!({"containers": []}));
        assert_eq!(
            n.fits(&plain).map_err(|r| r.to_strings()),
            Err(vec!["node(s) had untolerated taint {gpu: yes}".to_string()])
        );
        let tolerant = pod(json!({"containers": [], "tolerations": [{"key": "gpu", "operator": "Exists"}]}));
        assert_eq!(n.fits(&tolerant), Ok(()));
        let mut not_ready = node("n2", "1", json!({}));
        not_ready.ready = false;
        assert_eq!(
            not_ready.fits(&plain).map_err(|r| r.to_strings()),
            Err(vec![
                "node(s) had untolerated taint {node.kubernetes.io/not-ready: }".to_string()
            ])
        );
        let everything = pod(json!({"containers": [], "tolerations": [{"operator": "Exists"}]}));
        assert_eq!(not_ready.fits(&everything), Ok(()));
    }

    #[test]
    fn selectors_and_affinity() {
        let n = node("n1", "1", json!({}));
        assert!(n.fits(&pod(json!({"nodeSelector": {"zone": "a"}}))).is_ok());
        assert!(n.fits(&pod(json!({"nodeSelector": {"zone": "b"}}))).is_err());
        let aff = |expr: Value| {
            pod(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": [expr]}]}}}}),
            )
        };
        assert!(n
            .fits(&aff(json!({"key": "size", "operator": "Gt", "values": ["2"]})))
            .is_ok());
        assert!(n
            .fits(&aff(json!({"key": "zone", "operator": "NotIn", "values": ["a"]})))
            .is_err());
        let by_name = pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}),
        );
        assert!(n.fits(&by_name).is_ok());
        let pref = pod(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution":
            [{"weight": 7, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]}}}),
        );
        assert_eq!(n.preferred_weight(&pref), 7);
    }

    #[test]
    fn unschedulable_nodes_and_host_ports() {
        let n = node("n1", "1", json!({"spec": {"unschedulable": true}}));
        assert_eq!(
            n.fits(&pod(json!({}))).map_err(|r| r.to_strings()),
            Err(vec!["node(s) were unschedulable".to_string()])
        );
        let mut n = node("n2", "1", json!({}));
        let p = pod(json!({"containers": [{"ports": [{"containerPort": 80, "hostPort": 8080}]}]}));
        n.add_pod(&p);
        assert!(n.fits(&p).is_err());
    }

    #[test]
    fn fit_error_reads_like_upstream() {
        let gpu = Taint {
            key: "gpu".into(),
            value: "yes".into(),
            effect: "NoSchedule".into(),
        };
        let mut reasons = HashMap::new();
        reasons.insert(Reason::Cpu, 2);
        reasons.insert(Reason::Taint(&gpu), 1);
        assert_eq!(
            fit_error_message(3, &reasons),
            "0/3 nodes are available: 1 node(s) had untolerated taint {gpu: yes}, 2 Insufficient cpu."
        );
    }
}
