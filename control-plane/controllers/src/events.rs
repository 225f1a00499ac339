//! Recording `core/v1` Events about objects, as upstream's event recorder writes them, so that
//! `kubectl describe` and `kubectl get events` show what the controllers did.
//!
//! Recording is best effort: a failed write is logged and otherwise ignored, never a reason to
//! fail a reconcile. As upstream's recorder (`EventSourceObjectSpamFilter`), each component may
//! write 25 Events about one object at once and one more every 5 minutes; the rest are dropped
//! (a ReplicaSet scaled to 10,000 replicas writes 25 `SuccessfulCreate` Events, not 10,000).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use keel_api::client::{ApiClient, WriteOptions};
use keel_api::registry::ResourceType;
use serde_json::{json, Value};

/// Events one component may write about one object at once (upstream's spam filter burst).
const SPAM_BURST: f64 = 25.0;
/// … and the time it takes to earn one more (upstream: 1/300 per second).
const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Objects whose buckets are remembered at most (upstream: an LRU of 4096).
const SPAM_KEYS: usize = 4096;

/// Token buckets by `component/kind/namespace/name/uid`.
static SPAM: LazyLock<Mutex<HashMap<String, (f64, Instant)>>> = LazyLock::new(Default::default);

/// Whether `component` may write one more Event about `involved` now (takes a token if so).
fn allowed(component: &str, involved: &Value, now: Instant) -> bool {
    let s = |ptr: &str| involved.pointer(ptr).and_then(Value::as_str).unwrap_or("");
    let key = format!(
        "{component}/{}/{}/{}/{}",
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name"),
        s("/metadata/uid")
    );
    let refill = |tokens: f64, since: Instant| {
        (tokens + now.saturating_duration_since(since).as_secs_f64() / SPAM_REFILL.as_secs_f64())
            .min(SPAM_BURST)
    };
    let mut buckets = SPAM.lock().unwrap_or_else(|p| p.into_inner());
    if buckets.len() >= SPAM_KEYS && !buckets.contains_key(&key) {
        // Forget the objects whose buckets are full again; if that is not enough, all of them.
        buckets.retain(|_, (t, at)| refill(*t, *at) < SPAM_BURST);
        if buckets.len() >= SPAM_KEYS {
            buckets.clear();
        }
    }
    let (tokens, at) = buckets.entry(key).or_insert((SPAM_BURST, now));
    let available = refill(*tokens, *at);
    *at = now;
    if available >= 1.0 {
        *tokens = available - 1.0;
        true
    } else {
        *tokens = available;
        false
    }
}

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
    if !allowed(component, involved, Instant::now()) {
        tracing::debug!(reason, "event dropped by the spam filter");
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spam_filter_allows_a_burst_per_object_then_one_per_five_minutes() {
        let rs = json!({"kind": "ReplicaSet", "metadata": {"namespace": "spam", "name": "big", "uid": "u1"}});
        let other =
            json!({"kind": "ReplicaSet", "metadata": {"namespace": "spam", "name": "small", "uid": "u2"}});
        let t = Instant::now();
        let allowed_now = (0..100).filter(|_| allowed("test-spam", &rs, t)).count();
        assert_eq!(allowed_now, 25);
        assert!(
            allowed("test-spam", &other, t),
            "another object has its own bucket"
        );
        assert!(allowed("other-component", &rs, t), "another component too");
        assert!(!allowed("test-spam", &rs, t + Duration::from_secs(299)));
        assert!(allowed("test-spam", &rs, t + Duration::from_secs(600)));
    }
}
