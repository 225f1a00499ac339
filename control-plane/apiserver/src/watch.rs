//! Watch events and continue tokens.
//!
//! A store event becomes a Kubernetes watch event after selector filtering, with upstream's rule
//! for objects that move in or out of a selection: an update that makes an object match is
//! `ADDED`, one that makes it stop matching is `DELETED` (carrying the new state).

use base64::Engine;
use keel_api::client::{WatchEvent, WatchEventKind};
use keel_api::registry::ResourceType;
use keel_api::status::{ApiError, ApiResult};
use keel_store::Event;
use serde_json::{json, Value};

use crate::machinery::{FieldSelector, LabelSelector};
use crate::objects::{decode, set_resource_version};

pub fn translate(
    rt: &ResourceType,
    ev: &Event,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> ApiResult<Option<WatchEvent>> {
    let matches = |o: &Value| labels.matches_object(o) && fields.matches(o);
    match ev {
        Event::Put { kv, prev } => {
            let object = decode(rt, kv)?;
            let now = matches(&object);
            let before = match prev {
                Some(p) => Some(matches(&decode(rt, p)?)),
                None => None,
            };
            let kind = match (before, now) {
                (None, true) => WatchEventKind::Added,
                (Some(true), true) => WatchEventKind::Modified,
                (Some(false), true) => WatchEventKind::Added,
                (Some(true), false) => WatchEventKind::Deleted,
                (_, false) => return Ok(None),
            };
            Ok(Some(WatchEvent { kind, object }))
        }
        Event::Delete { prev, revision } => {
            let mut object = decode(rt, prev)?;
            if !matches(&object) {
                return Ok(None);
            }
            set_resource_version(&mut object, *revision);
            Ok(Some(WatchEvent {
                kind: WatchEventKind::Deleted,
                object,
            }))
        }
    }
}

/// Upstream's continue token: base64 of `{"v":"meta.k8s.io/v1","rv":<rev>,"start":"<key>\u0000"}`
/// where `start` is the key (relative to the list's prefix) to continue after.
pub fn encode_continue(revision: u64, last_key: &str) -> String {
    let body = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": format!("{last_key}\u{0}")});
    base64::engine::general_purpose::URL_SAFE.encode(body.to_string())
}

/// Returns the revision to read at and the relative key to continue after.
pub fn decode_continue(token: &str) -> ApiResult<(u64, String)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if v.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
        return Err(bad());
    }
    let rv = v
        .get("rv")
        .and_then(Value::as_u64)
        .filter(|r| *r > 0)
        .ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    let start = start.strip_suffix('\u{0}').unwrap_or(start);
    if start.contains("..") || start.starts_with('/') {
        return Err(bad());
    }
    Ok((rv, start.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "default/web-3");
        assert_eq!(decode_continue(&t).unwrap(), (42, "default/web-3".to_string()));
        assert!(decode_continue("garbage").is_err());
    }
}
