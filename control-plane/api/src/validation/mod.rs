//! Upstream validation of objects (`k8s.io/kubernetes/pkg/apis/*/validation`), with upstream's
//! messages.
//!
//! kubectl prints the causes of a 422 one per line (`* spec.containers[0].image: Required
//! value`), and users search for those texts, so every check here emits the field path, reason
//! and message upstream would. Values inside messages are rendered the way Go's `field.Error`
//! renders them (`%q` for strings, `%#v` for maps and selectors), see [`go`].
//!
//! Entry points: [`validate_create`] and [`validate_update`] (which also runs the create checks
//! on the new object, as upstream's `ValidateUpdate` strategies do), plus
//! [`check_node_ports`] for the node-port range the apiserver enforces when it allocates.
//! Objects are expected to be defaulted first ([`crate::defaults`]), as upstream validates after
//! defaulting.
//!
//! Module layout: [`names`] (name and label syntax), [`quantity`] (resource quantities),
//! `meta` (ObjectMeta), `pod` (pod specs and templates), `workloads` (apps, batch, autoscaling,
//! policy), `core` (services, config, storage, nodes), `cluster` (RBAC, certificates,
//! networking, storage classes, leases), `cron` (CronJob schedules).

mod cluster;
mod core;
mod cron;
pub(crate) mod go;
mod meta;
pub mod names;
mod pod;
pub mod quantity;
mod workloads;

use serde_json::Value;

use crate::registry::ResourceType;
use crate::status::{ApiError, Cause};

/// The causes found so far, with the constructors of upstream's `field.Error` types.
#[derive(Debug, Default)]
pub(crate) struct Errs(pub Vec<Cause>);

impl Errs {
    /// `Required value` (`detail` may be empty).
    pub fn required(&mut self, field: impl Into<String>, detail: &str) {
        let msg = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        self.0.push(Cause::new("FieldValueRequired", field, msg));
    }

    /// `Invalid value: <value as Go renders it>: detail`.
    pub fn invalid(&mut self, field: impl Into<String>, value: &Value, detail: &str) {
        self.0.push(Cause::invalid(field, value, detail));
    }

    /// `Invalid value` with a value already rendered (maps, structs).
    pub fn invalid_raw(&mut self, field: impl Into<String>, rendered: &str, detail: &str) {
        self.0.push(Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {rendered}: {detail}"),
        ));
    }

    pub fn not_supported(&mut self, field: impl Into<String>, value: &Value, supported: &[&str]) {
        self.0.push(Cause::not_supported(field, value, supported));
    }

    pub fn duplicate(&mut self, field: impl Into<String>, value: &Value) {
        self.0.push(Cause::duplicate(field, value));
    }

    pub fn duplicate_raw(&mut self, field: impl Into<String>, rendered: &str) {
        self.0.push(Cause::new(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {rendered}"),
        ));
    }

    pub fn forbidden(&mut self, field: impl Into<String>, detail: &str) {
        self.0.push(Cause::forbidden(field, detail));
    }

    pub fn not_found(&mut self, field: impl Into<String>, value: &Value) {
        self.0.push(Cause::new(
            "FieldValueNotFound",
            field,
            format!("Not found: {}", go::value(value)),
        ));
    }

    /// `Too long: may not be more than N bytes`.
    pub fn too_long(&mut self, field: impl Into<String>, max: usize) {
        let unit = if max == 1 { "byte" } else { "bytes" };
        self.0.push(Cause::new(
            "FieldValueTooLong",
            field,
            format!("Too long: may not be more than {max} {unit}"),
        ));
    }

    /// One `Invalid value` per message of a syntax check.
    pub fn invalid_each(&mut self, field: &str, value: &Value, msgs: Vec<String>) {
        for m in msgs {
            self.invalid(field, value, &m);
        }
    }

    /// `must be greater than or equal to 0` for a negative number.
    pub fn nonnegative(&mut self, field: &str, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_i64) {
            if n < 0 {
                self.invalid(field, &Value::from(n), "must be greater than or equal to 0");
            }
        }
    }

    /// `Invalid value: <new>: field is immutable` unless both are equal.
    pub fn immutable(&mut self, field: &str, new: Option<&Value>, old: Option<&Value>) {
        if !semantic_eq(new, old) {
            self.0.push(Cause::new(
                "FieldValueInvalid",
                field,
                format!(
                    "Invalid value: {}: field is immutable",
                    go::value(new.unwrap_or(&Value::Null))
                ),
            ));
        }
    }
}

/// `spec.selector: Invalid value: v1.LabelSelector{…}: field is immutable`.
pub(crate) fn immutable_selector(e: &mut Errs, new: &Value, old: &Value) {
    let (n, o) = (new.pointer("/spec/selector"), old.pointer("/spec/selector"));
    if !semantic_eq(n, o) {
        let rendered = match n.filter(|v| !v.is_null()) {
            Some(sel) => go::label_selector(sel),
            None => "null".into(),
        };
        e.invalid_raw("spec.selector", &rendered, "field is immutable");
    }
}

/// Go's `apiequality.Semantic.DeepEqual` on JSON: absent, `null`, empty strings, empty lists
/// and empty maps are all the zero value.
pub(crate) fn semantic_eq(a: Option<&Value>, b: Option<&Value>) -> bool {
    fn is_zero(v: Option<&Value>) -> bool {
        match v {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(m)) => m.values().all(|x| is_zero(Some(x))),
            Some(Value::Bool(b)) => !b,
            Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        }
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            x.keys().chain(y.keys()).all(|k| semantic_eq(x.get(k), y.get(k)))
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| semantic_eq(Some(p), Some(q)))
        }
        (Some(x), Some(y)) if !is_zero(Some(x)) || !is_zero(Some(y)) => x == y,
        _ => is_zero(a) && is_zero(b),
    }
}

/// A string field (`""` when absent or not a string).
pub(crate) fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// The elements of an array field (none when absent).
pub(crate) fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn object_name(obj: &Value) -> &str {
    s(obj, "/metadata/name")
}

#[allow(clippy::result_large_err)]
fn finish(rt: &ResourceType, obj: &Value, errs: Errs) -> Result<(), ApiError> {
    if errs.0.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt, object_name(obj), errs.0))
    }
}

/// The create checks of one kind, without the wrapping into an error.
fn create_causes(rt: &ResourceType, obj: &Value) -> Errs {
    let mut e = Errs::default();
    meta::object_meta(&mut e, rt, obj);
    match (rt.group, rt.kind) {
        ("", "Pod") => pod::pod(&mut e, obj),
        ("", "ReplicationController") => workloads::replication_controller(&mut e, obj),
        ("", "Service") => core::service(&mut e, obj),
        ("", "ConfigMap") => core::config_map(&mut e, obj),
        ("", "Secret") => core::secret(&mut e, obj),
        ("", "Namespace") => {}
        ("", "Node") => core::node(&mut e, obj),
        ("", "PersistentVolumeClaim") => core::pvc(&mut e, obj),
        ("", "PersistentVolume") => core::pv(&mut e, obj),
        ("", "Endpoints") => core::endpoints(&mut e, obj),
        ("", "ResourceQuota") => core::resource_quota(&mut e, obj),
        ("", "Event") => core::event(&mut e, obj),
        ("apps", "Deployment") => workloads::deployment(&mut e, obj),
        ("apps", "ReplicaSet") => workloads::replica_set(&mut e, obj),
        ("apps", "StatefulSet") => workloads::stateful_set(&mut e, obj),
        ("apps", "DaemonSet") => workloads::daemon_set(&mut e, obj),
        ("batch", "Job") => workloads::job(&mut e, obj),
        ("batch", "CronJob") => workloads::cron_job(&mut e, obj),
        ("autoscaling", "HorizontalPodAutoscaler") => workloads::hpa(&mut e, obj),
        ("policy", "PodDisruptionBudget") => workloads::pdb(&mut e, obj),
        ("rbac.authorization.k8s.io", "Role") => cluster::role(&mut e, obj, true),
        ("rbac.authorization.k8s.io", "ClusterRole") => cluster::role(&mut e, obj, false),
        ("rbac.authorization.k8s.io", "RoleBinding") => cluster::role_binding(&mut e, obj, true),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => cluster::role_binding(&mut e, obj, false),
        ("certificates.k8s.io", "CertificateSigningRequest") => cluster::csr(&mut e, obj),
        ("networking.k8s.io", "NetworkPolicy") => cluster::network_policy(&mut e, obj),
        ("networking.k8s.io", "Ingress") => cluster::ingress(&mut e, obj),
        ("networking.k8s.io", "IngressClass") => cluster::ingress_class(&mut e, obj),
        ("storage.k8s.io", "StorageClass") => cluster::storage_class(&mut e, obj),
        ("discovery.k8s.io", "EndpointSlice") => cluster::endpoint_slice(&mut e, obj),
        ("coordination.k8s.io", "Lease") => cluster::lease(&mut e, obj),
        _ => {}
    }
    e
}

/// Validates a new object (after defaulting), as upstream's `Validate` strategies do.
/// The error is the 422 `Invalid` Status with one cause per problem.
#[allow(clippy::result_large_err)] // ApiError is the crate's error type; callers return it as is.
pub fn validate_create(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    finish(rt, obj, create_causes(rt, obj))
}

/// Validates an update: the new object on its own, then what may not change (immutable
/// metadata, selectors, most of a pod's spec, a Service's cluster IP, `immutable`
/// ConfigMaps and Secrets, …).
#[allow(clippy::result_large_err)]
pub fn validate_update(rt: &ResourceType, new: &Value, old: &Value) -> Result<(), ApiError> {
    let mut e = create_causes(rt, new);
    meta::object_meta_update(&mut e, new, old);
    match (rt.group, rt.kind) {
        ("", "Pod") => pod::pod_update(&mut e, new, old),
        ("", "Service") => core::service_update(&mut e, new, old),
        ("", "ConfigMap") => core::config_map_update(&mut e, new, old),
        ("", "Secret") => core::secret_update(&mut e, new, old),
        ("", "PersistentVolumeClaim") => core::pvc_update(&mut e, new, old),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => immutable_selector(&mut e, new, old),
        ("apps", "StatefulSet") => workloads::stateful_set_update(&mut e, new, old),
        ("batch", "Job") => workloads::job_update(&mut e, new, old),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            cluster::role_binding_update(&mut e, new, old)
        }
        ("storage.k8s.io", "StorageClass") => cluster::storage_class_update(&mut e, new, old),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            e.immutable("spec", new.pointer("/spec"), old.pointer("/spec"))
        }
        _ => {}
    }
    finish(rt, new, e)
}

/// The node-port range check the apiserver applies when it allocates a Service's node ports
/// (`spec.ports[0].nodePort: Invalid value: 3333: provided port is not in the valid range. The
/// range of valid ports is 30000-32767`).
#[allow(clippy::result_large_err)]
pub fn check_node_ports(
    rt: &ResourceType,
    service: &Value,
    range: std::ops::RangeInclusive<i64>,
) -> Result<(), ApiError> {
    let mut e = Errs::default();
    for (i, p) in arr(service, "/spec/ports").iter().enumerate() {
        if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
            if n != 0 && !range.contains(&n) {
                e.invalid(
                    format!("spec.ports[{i}].nodePort"),
                    &Value::from(n),
                    &format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        range.start(),
                        range.end()
                    ),
                );
            }
        }
    }
    finish(rt, service, e)
}

#[cfg(test)]
mod tests;
