//! `ValidateObjectMeta` and `ValidateObjectMetaUpdate`: names, namespaces, labels,
//! annotations, finalizers and owner references.

use serde_json::Value;

use super::names::{
    is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, is_qualified_name, is_valid_label_value,
};
use super::{arr, s, Errs};
use crate::registry::ResourceType;

/// How a kind's names are checked (`ValidateNameFunc` upstream).
#[derive(Clone, Copy)]
enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    PathSegment,
}

fn name_rule(rt: &ResourceType) -> NameRule {
    match (rt.group, rt.kind) {
        ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        ("", "PersistentVolume") => NameRule::PathSegment,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        ("certificates.k8s.io", _) => NameRule::PathSegment,
        ("autoscaling", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

/// `path.IsValidPathSegmentName`.
fn path_segment(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    let mut errs = Vec::new();
    for bad in ["/", "%"] {
        if name.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

/// Runs the name rule; `prefix` is upstream's mode for `generateName` (a trailing dash is
/// allowed since a random suffix follows).
fn check_name(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    let name = if prefix && name.len() > 1 {
        name.strip_suffix('-').unwrap_or(name)
    } else {
        name
    };
    match rule {
        NameRule::Subdomain => is_dns1123_subdomain(name),
        NameRule::Label => is_dns1123_label(name),
        NameRule::Dns1035 => is_dns1035_label(name),
        NameRule::PathSegment => path_segment(name),
    }
}

/// `ValidateLabels` on the map at `field` (keys and values).
pub(super) fn labels(e: &mut Errs, field: &str, map: Option<&Value>) {
    let Some(m) = map.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in m {
        for msg in is_qualified_name(k) {
            e.invalid(field, &Value::from(k.as_str()), &msg);
        }
        let val = v.as_str().unwrap_or("");
        for msg in is_valid_label_value(val) {
            e.invalid(field, &Value::from(val), &msg);
        }
    }
}

const TOTAL_ANNOTATION_SIZE: usize = 256 * 1024;

fn annotations(e: &mut Errs, map: Option<&Value>) {
    let Some(m) = map.and_then(Value::as_object) else {
        return;
    };
    let mut total = 0;
    for (k, v) in m {
        for msg in is_qualified_name(&k.to_lowercase()) {
            e.invalid("metadata.annotations", &Value::from(k.as_str()), &msg);
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE {
        e.too_long("metadata.annotations", TOTAL_ANNOTATION_SIZE);
    }
}

const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

fn finalizers(e: &mut Errs, list: &[Value]) {
    for (i, f) in list.iter().enumerate() {
        let name = f.as_str().unwrap_or("");
        let field = format!("metadata.finalizers[{i}]");
        let msgs = is_qualified_name(name);
        if !msgs.is_empty() {
            e.invalid_each(&field, f, msgs);
        } else if !name.contains('/') && !STANDARD_FINALIZERS.contains(&name) {
            e.invalid(
                &field,
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            );
        }
    }
}

fn owner_references(e: &mut Errs, list: &[Value]) {
    let mut controllers = 0;
    for (i, r) in list.iter().enumerate() {
        let base = format!("metadata.ownerReferences[{i}]");
        for (key, what) in [
            ("apiVersion", "version"),
            ("kind", "kind"),
            ("name", "name"),
            ("uid", "uid"),
        ] {
            if s(r, &format!("/{key}")).is_empty() {
                e.invalid(
                    format!("{base}.{key}"),
                    &Value::from(""),
                    &format!("{what} must not be empty"),
                );
            }
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            controllers += 1;
        }
    }
    if controllers > 1 {
        e.invalid_raw(
            "metadata.ownerReferences",
            "[]v1.OwnerReference{…}",
            "Only one reference can have Controller set to true",
        );
    }
}

/// `ValidateObjectMeta` with the kind's name rule and scope.
pub(super) fn object_meta(e: &mut Errs, rt: &ResourceType, obj: &Value) {
    let rule = name_rule(rt);
    let name = s(obj, "/metadata/name");
    let generate = s(obj, "/metadata/generateName");
    if !generate.is_empty() {
        for msg in check_name(rule, generate, true) {
            e.invalid("metadata.generateName", &Value::from(generate), &msg);
        }
    }
    if name.is_empty() {
        e.required("metadata.name", "name or generateName is required");
    } else {
        for msg in check_name(rule, name, false) {
            e.invalid("metadata.name", &Value::from(name), &msg);
        }
    }
    let ns = s(obj, "/metadata/namespace");
    if rt.namespaced {
        if ns.is_empty() {
            e.required("metadata.namespace", "");
        } else {
            for msg in is_dns1123_label(ns) {
                e.invalid("metadata.namespace", &Value::from(ns), &msg);
            }
        }
    } else if !ns.is_empty() {
        e.forbidden("metadata.namespace", "not allowed on this type");
    }
    labels(e, "metadata.labels", obj.pointer("/metadata/labels"));
    annotations(e, obj.pointer("/metadata/annotations"));
    finalizers(e, arr(obj, "/metadata/finalizers"));
    owner_references(e, arr(obj, "/metadata/ownerReferences"));
}

/// Go's `time.Time.String()` for an RFC 3339 timestamp (`2026-01-10 11:55:00 +0000 UTC`).
fn go_time(v: Option<&Value>) -> String {
    match v.and_then(Value::as_str).and_then(crate::time::parse) {
        Some(t) => t.strftime("%Y-%m-%d %H:%M:%S +0000 UTC").to_string(),
        None => "0001-01-01 00:00:00 +0000 UTC".into(),
    }
}

/// `ValidateObjectMetaUpdate`: name, namespace, uid and creation time never change.
pub(super) fn object_meta_update(e: &mut Errs, new: &Value, old: &Value) {
    for key in ["name", "namespace", "uid"] {
        let ptr = format!("/metadata/{key}");
        let old_v = old.pointer(&ptr);
        let new_v = new.pointer(&ptr);
        // An update that leaves the uid out keeps it (the server fills it from the old object).
        if key == "uid" && new_v.is_none_or(|v| v.as_str() == Some("")) {
            continue;
        }
        e.immutable(&format!("metadata.{key}"), new_v, old_v);
    }
    let new_ct = new.pointer("/metadata/creationTimestamp");
    let old_ct = old.pointer("/metadata/creationTimestamp");
    if new_ct.is_some_and(|v| !v.is_null()) && new_ct != old_ct {
        e.invalid_raw(
            "metadata.creationTimestamp",
            &go_time(new_ct),
            "field is immutable",
        );
    }
}
