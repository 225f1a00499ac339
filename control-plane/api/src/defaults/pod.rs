//! Defaults of pod specs (`SetObjectDefaults_Pod` / `_PodTemplate` of `pkg/apis/core/v1`), of
//! pods only (`SetDefaults_Pod`), and the admission plugins that fill in pods on create
//! (ServiceAccount, Priority, DefaultTolerationSeconds) plus the pod strategy's initial status.

use serde_json::{json, Map, Value};

use super::{child, set_if_empty, set_if_unset};
use crate::validation::quantity::{compare, Quantity};

/// Defaults of a `PodSpec`, wherever it appears (pods and every workload template).
pub(super) fn pod_spec(spec: &mut Map<String, Value>) {
    set_if_empty(spec, "dnsPolicy", json!("ClusterFirst"));
    set_if_empty(spec, "restartPolicy", json!("Always"));
    set_if_unset(spec, "securityContext", json!({}));
    set_if_unset(spec, "terminationGracePeriodSeconds", json!(30));
    set_if_empty(spec, "schedulerName", json!("default-scheduler"));
    // v1 conversion keeps the deprecated `serviceAccount` in step with `serviceAccountName`.
    let sa_name = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if sa_name.is_empty() {
        if let Some(old) = spec
            .get("serviceAccount")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            let old = old.to_string();
            spec.insert("serviceAccountName".into(), json!(old));
        }
    } else {
        let name = sa_name.to_string();
        spec.insert("serviceAccount".into(), json!(name));
    }
    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        for v in volumes.iter_mut().filter_map(Value::as_object_mut) {
            volume(v);
        }
    }
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(key) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
}

/// The source fields of a volume; a volume with none of them becomes an `emptyDir`.
const VOLUME_NON_SOURCE_FIELDS: &[&str] = &["name"];

fn volume(v: &mut Map<String, Value>) {
    let has_source = v
        .iter()
        .any(|(k, val)| !VOLUME_NON_SOURCE_FIELDS.contains(&k.as_str()) && !val.is_null());
    if !has_source {
        v.insert("emptyDir".into(), json!({}));
    }
    if let Some(h) = child(v, "hostPath") {
        set_if_unset(h, "type", json!(""));
    }
    for key in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = child(v, key) {
            set_if_unset(s, "defaultMode", json!(420));
        }
    }
    if let Some(d) = child(v, "downwardAPI") {
        field_refs_in_items(d);
    }
    if let Some(Value::Array(sources)) = child(v, "projected").and_then(|p| p.get_mut("sources")) {
        for s in sources.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(d) = child(s, "downwardAPI") {
                field_refs_in_items(d);
            }
            if let Some(t) = child(s, "serviceAccountToken") {
                set_if_unset(t, "expirationSeconds", json!(3600));
            }
        }
    }
    if let Some(i) = child(v, "iscsi") {
        set_if_empty(i, "iscsiInterface", json!("default"));
    }
    if let Some(r) = child(v, "rbd") {
        set_if_empty(r, "pool", json!("rbd"));
        set_if_empty(r, "user", json!("admin"));
        set_if_empty(r, "keyring", json!("/etc/ceph/keyring"));
    }
    if let Some(spec) = child(v, "ephemeral")
        .and_then(|e| child(e, "volumeClaimTemplate"))
        .and_then(|t| child(t, "spec"))
    {
        set_if_unset(spec, "volumeMode", json!("Filesystem"));
        if let Some(res) = child(spec, "resources") {
            for key in ["limits", "requests"] {
                if let Some(list) = res.get_mut(key) {
                    crate::validation::quantity::canonicalize_list(list);
                }
            }
        }
    }
}

fn field_refs_in_items(d: &mut Map<String, Value>) {
    if let Some(Value::Array(items)) = d.get_mut("items") {
        for it in items.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(f) = child(it, "fieldRef") {
                set_if_empty(f, "apiVersion", json!("v1"));
            }
        }
    }
}

/// `:latest` or no tag (and no digest) pulls `Always`, anything else `IfNotPresent`.
pub(super) fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    // The tag is what follows the last ':' after the last '/' (a ':' before it is a port).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn container(c: &mut Map<String, Value>) {
    if c.get("imagePullPolicy")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        let policy = default_pull_policy(image);
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    // A Go struct value: the apiserver always serialises it, empty or not.
    set_if_unset(c, "resources", json!({}));
    if let Some(res) = child(c, "resources") {
        for key in ["limits", "requests"] {
            if let Some(list) = res.get_mut(key) {
                crate::validation::quantity::canonicalize_list(list);
            }
        }
    }
    set_if_empty(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_if_empty(c, "terminationMessagePolicy", json!("File"));
    if let Some(Value::Array(ports)) = c.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_if_empty(p, "protocol", json!("TCP"));
        }
    }
    if let Some(Value::Array(env)) = c.get_mut("env") {
        for e in env.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(f) = child(e, "valueFrom").and_then(|v| child(v, "fieldRef")) {
                set_if_empty(f, "apiVersion", json!("v1"));
            }
        }
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = child(c, key) {
            probe(p);
        }
    }
    if let Some(l) = child(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(g) = child(l, hook).and_then(|h| child(h, "httpGet")) {
                http_get(g);
            }
        }
    }
}

fn probe(p: &mut Map<String, Value>) {
    for (key, default) in [
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ] {
        let zero = p.get(key).and_then(Value::as_i64).unwrap_or(0) == 0;
        if zero {
            p.insert(key.into(), json!(default));
        }
    }
    if let Some(g) = child(p, "httpGet") {
        http_get(g);
    }
    if let Some(g) = child(p, "grpc") {
        set_if_unset(g, "service", json!(""));
    }
}

fn http_get(g: &mut Map<String, Value>) {
    set_if_empty(g, "path", json!("/"));
    set_if_empty(g, "scheme", json!("HTTP"));
}

/// `SetDefaults_Pod`: requests default to limits, service links on, host-network ports.
pub(super) fn pod_only(spec: &mut Map<String, Value>) {
    for key in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(key) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                requests_from_limits(c);
            }
        }
    }
    set_if_unset(spec, "enableServiceLinks", json!(true));
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        for key in ["containers", "initContainers"] {
            if let Some(Value::Array(cs)) = spec.get_mut(key) {
                for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(Value::Array(ports)) = c.get_mut("ports") {
                        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                            let host = p.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
                            if host == 0 {
                                if let Some(cp) = p.get("containerPort").cloned() {
                                    p.insert("hostPort".into(), cp);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn requests_from_limits(c: &mut Map<String, Value>) {
    let Some(res) = child(c, "resources") else {
        return;
    };
    let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    let requests = res.entry("requests").or_insert_with(|| json!({}));
    if requests.is_null() {
        *requests = json!({});
    }
    if let Some(req) = requests.as_object_mut() {
        for (k, v) in limits {
            req.entry(k).or_insert(v);
        }
    }
}

/// What the admission chain and the pod strategy add to a new pod.
pub(super) fn pod_create(pod: &mut Map<String, Value>) {
    if let Some(spec) = child(pod, "spec") {
        // ServiceAccount admission.
        if spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            spec.insert("serviceAccountName".into(), json!("default"));
            spec.insert("serviceAccount".into(), json!("default"));
        }
        // Priority admission.
        if spec.get("priority").is_none_or(Value::is_null) {
            let priority = match spec.get("priorityClassName").and_then(Value::as_str) {
                Some("system-node-critical") => 2_000_001_000,
                Some("system-cluster-critical") => 2_000_000_000,
                _ => 0,
            };
            spec.insert("priority".into(), json!(priority));
        }
        set_if_unset(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
        default_toleration_seconds(spec, DEFAULT_TOLERATION_SECONDS, DEFAULT_TOLERATION_SECONDS);
    }
    let qos = qos_class(pod);
    let status = pod.entry("status").or_insert_with(|| json!({}));
    if let Some(s) = status.as_object_mut() {
        set_if_empty(s, "phase", json!("Pending"));
        s.insert("qosClass".into(), json!(qos));
    } else {
        *status = json!({"phase": "Pending", "qosClass": qos});
    }
}

/// Upstream's `--default-not-ready-toleration-seconds` and `--default-unreachable-toleration-seconds`.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// The DefaultTolerationSeconds admission plugin: tolerate not-ready and unreachable nodes
/// for `not_ready` and `unreachable` seconds (300 s each by default) unless the pod already
/// says otherwise.
pub fn default_toleration_seconds(spec: &mut Map<String, Value>, not_ready: i64, unreachable: i64) {
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if tolerations.is_null() {
        *tolerations = json!([]);
    }
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for (key, seconds) in [
        ("node.kubernetes.io/not-ready", not_ready),
        ("node.kubernetes.io/unreachable", unreachable),
    ] {
        let tolerated = list.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let e = t.get("effect").and_then(Value::as_str).unwrap_or("");
            (k == key || k.is_empty()) && (e == "NoExecute" || e.is_empty())
        });
        if !tolerated {
            list.push(json!({
                "key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds
            }));
        }
    }
}

/// `qos.GetPodQOS`: Guaranteed when every container has equal CPU and memory requests and
/// limits, BestEffort when none has any, Burstable otherwise.
pub(super) fn qos_class(pod: &Map<String, Value>) -> &'static str {
    let spec = pod.get("spec");
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.and_then(|s| s.get(*k)).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any_set = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        let nonzero = |m: Option<&Map<String, Value>>, k: &str| {
            m.and_then(|m| m.get(k))
                .and_then(Quantity::from_value)
                .is_some_and(|q| !q.is_zero())
        };
        for k in ["cpu", "memory"] {
            if nonzero(requests, k) || nonzero(limits, k) {
                any_set = true;
            }
            if !nonzero(limits, k) {
                guaranteed = false;
            }
            if let (Some(r), Some(l)) = (requests.and_then(|m| m.get(k)), limits.and_then(|m| m.get(k))) {
                if compare(r, l) != Some(std::cmp::Ordering::Equal) {
                    guaranteed = false;
                }
            }
        }
    }
    if !any_set {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}
