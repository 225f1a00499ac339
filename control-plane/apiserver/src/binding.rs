//! `pods/binding`: a POST of a `Binding` that assigns an unbound pod to a node, as the
//! scheduler does. Shared by the HTTP handler and the in-process client.

use keel_api::registry::ResourceType;
use keel_api::status::{ApiError, ApiResult, Cause};
use serde_json::{json, Value};

use crate::objects::Objects;

/// Binds pod `name` to `binding.target.name`: refused (409) if the pod is already assigned, or
/// if the binding names a `metadata.uid` that is not the pod's (it was deleted and recreated).
pub async fn bind(
    objects: &Objects,
    rt: &'static ResourceType,
    ns: Option<&str>,
    name: &str,
    binding: &Value,
) -> ApiResult<()> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(rt, name, vec![Cause::required("target.name")]));
    }
    let uid = binding
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    objects
        .modify(rt, ns, name, |pod| {
            if let Some(uid) = &uid {
                let actual = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
                if actual != uid {
                    return Err(ApiError::conflict_because(
                        rt,
                        name,
                        &format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                        ),
                    ));
                }
            }
            let current = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !current.is_empty() {
                return Err(ApiError::conflict_because(
                    rt,
                    name,
                    &format!("pod {name} is already assigned to node {current:?}"),
                ));
            }
            pod["spec"]["nodeName"] = json!(node);
            Ok(())
        })
        .await?;
    Ok(())
}

/// The answer to a successful binding.
pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}
