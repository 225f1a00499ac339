//! The seam between the API server and `keel-api`'s pure machinery: everything the server calls
//! about selectors, schemas, patches, defaults and validation goes through here, so the rest of
//! the server reads as Kubernetes semantics, not as a list of library calls.

use keel_api::registry::ResourceType;
use keel_api::schema::Gvk;
use keel_api::status::ApiResult;
use serde_json::Value;

pub use keel_api::schema::FieldValidation;
pub use keel_api::selector::{FieldSelector, LabelSelector};

fn gvk(rt: &ResourceType) -> Gvk<'static> {
    Gvk::new(rt.group, rt.version, rt.kind)
}

/// Unknown fields per `fieldValidation`: the warnings to send, or the Strict error; unknown
/// fields are pruned either way (upstream never stores them).
pub fn check_unknown_fields(
    rt: &ResourceType,
    obj: &mut Value,
    mode: FieldValidation,
) -> ApiResult<Vec<String>> {
    keel_api::schema::validate_and_prune(gvk(rt), None, obj, mode)
}

/// The string form (`app=web,tier in (a,b)`) of a structured `LabelSelector`.
pub fn label_selector_to_string(selector: &Value) -> String {
    LabelSelector::from_json(Some(selector))
        .map(|s| s.to_string())
        .unwrap_or_default()
}

pub fn json_patch(current: &Value, ops: &Value) -> ApiResult<Value> {
    keel_api::patch::json_patch(current, &serde_json::to_vec(ops).unwrap_or_default())
}

pub fn merge_patch(current: &Value, patch: &Value) -> ApiResult<Value> {
    keel_api::patch::merge_patch(current, &serde_json::to_vec(patch).unwrap_or_default())
}

/// Strategic merge patch; `subresource` picks the schema (`scale` patches an autoscaling/v1 Scale).
pub fn strategic_merge_patch(
    rt: &ResourceType,
    subresource: Option<&str>,
    current: &Value,
    patch: &Value,
) -> ApiResult<Value> {
    let gvk = match subresource {
        Some("scale") => Gvk::new("autoscaling", "v1", "Scale"),
        _ => gvk(rt),
    };
    keel_api::patch::strategic_merge_patch(current, patch, gvk)
}

/// The DefaultTolerationSeconds admission plugin with this cluster's settings (the generic
/// defaults then find the tolerations present and add none of their own).
fn admit_tolerations(rt: &ResourceType, obj: &mut Value, config: &crate::Config) {
    if rt.group.is_empty() && rt.kind == "Pod" {
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            keel_api::defaults::default_toleration_seconds(
                spec,
                config.default_not_ready_toleration_seconds,
                config.default_unreachable_toleration_seconds,
            );
        }
    }
}

/// Defaults of a create (including the create-only ones: admission, initial status).
pub fn apply_create_defaults(rt: &ResourceType, obj: &mut Value, config: &crate::Config) {
    admit_tolerations(rt, obj, config);
    keel_api::defaults::apply_create_defaults(rt, obj);
}

/// Defaults of an update, carrying over what the old object had allocated (a Service's IPs
/// and node ports when a `kubectl replace` leaves them out).
pub fn apply_update_defaults(rt: &ResourceType, new: &mut Value, old: &Value, config: &crate::Config) {
    admit_tolerations(rt, new, config);
    keel_api::defaults::apply_update_defaults(rt, new, old);
    // `kubectl taint … key-` of the last taint, or a patch with `taints: []`, leaves no
    // `spec.taints` behind, as Go's omitempty encoding does upstream.
    if rt.kind == "Node"
        && new
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
    {
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("taints");
        }
    }
}

pub fn validate_create(rt: &ResourceType, obj: &Value) -> ApiResult<()> {
    keel_api::validation::validate_create(rt, obj)
}

pub fn validate_update(rt: &ResourceType, new: &Value, old: &Value) -> ApiResult<()> {
    keel_api::validation::validate_update(rt, new, old)
}
