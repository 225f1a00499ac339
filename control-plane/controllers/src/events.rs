//! Recording `core/v1` Events about objects, as upstream's event recorder writes them, so that
//! `kubectl describe` and `kubectl get events` show what the controllers did.
//!
//! Recording is best effort: a failed write is logged and otherwise ignored, never a reason to
//! fail a reconcile.

use keel_api::client::{ApiClient, WriteOptions};
use keel_api::registry::ResourceType;
use serde_json::{json, Value};

/// `Normal` or `Warning`.
pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// Writes one Event about `involved` from `component`.
pub async fn record(
    client: &dyn ApiClient,
    events: &'static ResourceType,
    component: &str,
    involved: &Value,
    type_: &str,
    reason: &str,
    message: &str,
) {
    let event = event_object(component, involved, type_, reason, message);
    let ns = event
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Err(e) = client.create(events, ns, event, WriteOptions::default()).await {
        tracing::debug!(reason, error = %e, "could not record an event");
    }
}

/// The Event object (named `<object>.<hex nanoseconds>` as upstream names them).
pub fn event_object(component: &str, involved: &Value, type_: &str, reason: &str, message: &str) -> Value {
    let meta = involved.get("metadata").cloned().unwrap_or(json!({}));
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("unknown");
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let nanos = jiff::Timestamp::now().as_nanosecond();
    let salt: u16 = rand::random();
    let now = keel_api::time::now_rfc3339();
    let mut involved_ref = json!({
        "kind": involved.get("kind").cloned().unwrap_or(json!("")),
        "apiVersion": involved.get("apiVersion").cloned().unwrap_or(json!("")),
        "name": name,
    });
    for (from, to) in [
        ("namespace", "namespace"),
        ("uid", "uid"),
        ("resourceVersion", "resourceVersion"),
    ] {
        if let Some(v) = meta.get(from) {
            involved_ref[to] = v.clone();
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{name}.{:x}{salt:04x}", nanos), "namespace": ns},
        "involvedObject": involved_ref,
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": component,
        "reportingInstance": "",
    })
}
