//! What controllers need to know about pods and owned objects: activity, readiness and
//! availability from `status.conditions` (which the node agent writes), owner references,
//! upstream's random name suffixes, and the order in which surplus pods are deleted.

use std::cmp::Reverse;

use jiff::Timestamp;
use keel_api::registry::ResourceType;
use serde_json::{json, Value};

/// The alphabet of upstream's generated names (no vowels, no confusable characters).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `n` random characters as `generateName` appends them.
pub fn random_suffix(n: usize) -> String {
    (0..n)
        .map(|_| NAME_ALPHABET[rand::random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
}

/// `<base>-<5 random>`, the base cut so that the whole stays within 63 characters.
pub fn generated_name(base: &str) -> String {
    let mut base = base.to_string();
    if base.len() > 57 {
        base.truncate(57);
    }
    format!("{base}-{}", random_suffix(5))
}

pub fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn namespace(obj: &Value) -> Option<String> {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

pub fn uid(obj: &Value) -> &str {
    obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("")
}

pub fn generation(obj: &Value) -> i64 {
    obj.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

pub fn is_terminating(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

pub fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("")
}

/// Succeeded or Failed: the pod will never run again.
pub fn is_terminal(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// Counts toward a controller's replicas: neither finished nor being deleted.
pub fn is_active(pod: &Value) -> bool {
    !is_terminal(pod) && !is_terminating(pod)
}

fn ready_condition(pod: &Value) -> Option<&Value> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
}

pub fn is_ready(pod: &Value) -> bool {
    ready_condition(pod)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

/// When the pod last became ready, if it is.
pub fn ready_since(pod: &Value) -> Option<Timestamp> {
    let c = ready_condition(pod)?;
    if c.get("status").and_then(Value::as_str) != Some("True") {
        return None;
    }
    c.get("lastTransitionTime")
        .and_then(Value::as_str)
        .and_then(keel_api::time::parse)
        .or(Some(Timestamp::UNIX_EPOCH))
}

/// Ready for at least `min_ready_seconds` (upstream's `IsPodAvailable`).
pub fn is_available(pod: &Value, min_ready_seconds: i64, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(t) => now.as_second() - t.as_second() >= min_ready_seconds,
    }
}

/// Seconds until a ready pod becomes available, if it is ready but not yet available.
pub fn seconds_to_available(pod: &Value, min_ready_seconds: i64, now: Timestamp) -> Option<i64> {
    let t = ready_since(pod)?;
    let left = min_ready_seconds - (now.as_second() - t.as_second());
    (left > 0).then_some(left)
}

/// The controller owner reference of `obj`, if any.
pub fn controller_ref(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// The uid of the controller owner of `obj`, if any.
pub fn controller_uid(obj: &Value) -> Option<&str> {
    controller_ref(obj)
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
}

/// An owner reference to `owner` as its controller.
pub fn owner_reference(rt: &ResourceType, owner: &Value) -> Value {
    json!({
        "apiVersion": rt.api_version(),
        "kind": rt.kind,
        "name": name(owner),
        "uid": uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Sorts pods so that the ones to delete first come first (upstream's `ActivePods` order):
/// unscheduled before scheduled, pending before unknown before running, not ready before ready,
/// ready for less time before more, more restarts before fewer, newer before older.
pub fn sort_for_deletion(pods: &mut [Value]) {
    pods.sort_by_cached_key(|p| {
        let scheduled = !p
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty();
        let phase_rank = match phase(p) {
            "Pending" | "" => 0,
            "Unknown" => 1,
            "Running" => 2,
            _ => 3,
        };
        let ready = is_ready(p);
        let ready_since = ready_since(p).map(|t| t.as_second()).unwrap_or(0);
        let restarts: i64 = p
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        let created = p
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        (
            scheduled,
            phase_rank,
            ready,
            Reverse(ready_since),
            Reverse(restarts),
            Reverse(created),
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, phase: &str, ready: bool, created: &str) -> Value {
        json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready {"True"} else {"False"}, "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]},
        })
    }

    #[test]
    fn deletion_order_prefers_unscheduled_then_not_ready_then_newest() {
        let mut pods = vec![
            pod("running-old", "n1", "Running", true, "2026-01-01T00:00:00Z"),
            pod("running-new", "n1", "Running", true, "2026-01-02T00:00:00Z"),
            pod("notready", "n1", "Running", false, "2026-01-01T00:00:00Z"),
            pod("pending", "", "Pending", false, "2026-01-01T00:00:00Z"),
        ];
        sort_for_deletion(&mut pods);
        let names: Vec<&str> = pods.iter().map(name).collect();
        assert_eq!(names, ["pending", "notready", "running-new", "running-old"]);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = pod("a", "n1", "Running", true, "2026-01-01T00:00:00Z");
        let t0 = ready_since(&p).unwrap_or(Timestamp::UNIX_EPOCH);
        let later = Timestamp::from_second(t0.as_second() + 5).unwrap_or(t0);
        assert!(is_available(&p, 0, t0));
        assert!(!is_available(&p, 10, later));
        assert_eq!(seconds_to_available(&p, 10, later), Some(5));
        assert!(is_available(&p, 5, later));
    }

    #[test]
    fn generated_names_have_five_safe_characters() {
        let n = generated_name("web-5d8f");
        let suffix = n.strip_prefix("web-5d8f-").unwrap_or("");
        assert_eq!(suffix.len(), 5);
        assert!(suffix.bytes().all(|b| NAME_ALPHABET.contains(&b)));
    }
}
