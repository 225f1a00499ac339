//! `ValidatePodSpec` and friends: containers, ports, probes, resources, volumes, tolerations;
//! pod updates (`ValidatePodUpdate`) and pod templates.

use std::collections::HashSet;

use serde_json::Value;

use super::meta::labels;
use super::names::{
    is_dns1123_label, is_dns1123_subdomain, is_qualified_name, is_valid_label_value, is_valid_port_name,
    is_valid_port_num,
};
use super::quantity::Quantity;
use super::{arr, go, s, semantic_eq, Errs};

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// A pod (create).
pub(super) fn pod(e: &mut Errs, obj: &Value) {
    match obj.get("spec") {
        Some(spec) if spec.is_object() => pod_spec(e, spec, "spec"),
        _ => e.required("spec", ""),
    }
}

/// A pod template (`ValidatePodTemplateSpec`) at `path` (e.g. `spec.template`).
pub(super) fn template(e: &mut Errs, tpl: Option<&Value>, path: &str) {
    template_with_volumes(e, tpl, path, &[]);
}

/// A pod template whose mounts may also name volumes from elsewhere (a StatefulSet's
/// `volumeClaimTemplates`).
pub(super) fn template_with_volumes(e: &mut Errs, tpl: Option<&Value>, path: &str, extra: &[String]) {
    let Some(tpl) = tpl.filter(|t| t.is_object()) else {
        e.required(path, "");
        return;
    };
    labels(
        e,
        &format!("{path}.metadata.labels"),
        tpl.pointer("/metadata/labels"),
    );
    match tpl.get("spec") {
        Some(spec) if spec.is_object() => pod_spec_with(e, spec, &format!("{path}.spec"), extra),
        _ => e.required(format!("{path}.spec"), ""),
    }
}

/// `ValidatePodSpec` at `path`.
pub(super) fn pod_spec(e: &mut Errs, spec: &Value, path: &str) {
    pod_spec_with(e, spec, path, &[]);
}

fn pod_spec_with(e: &mut Errs, spec: &Value, path: &str, extra_volumes: &[String]) {
    let mut volumes = volumes(e, spec, path);
    volumes.extend(extra_volumes.iter().cloned());
    let containers = arr(spec, "/containers");
    let mut names: HashSet<String> = HashSet::new();
    if containers.is_empty() {
        e.required(format!("{path}.containers"), "");
    }
    for (i, c) in arr(spec, "/initContainers").iter().enumerate() {
        container(
            e,
            c,
            &format!("{path}.initContainers[{i}]"),
            &volumes,
            &mut names,
            true,
        );
    }
    for (i, c) in containers.iter().enumerate() {
        container(
            e,
            c,
            &format!("{path}.containers[{i}]"),
            &volumes,
            &mut names,
            false,
        );
    }

    match s(spec, "/restartPolicy") {
        "Always" | "OnFailure" | "Never" => {}
        "" => e.required(format!("{path}.restartPolicy"), ""),
        other => e.not_supported(
            format!("{path}.restartPolicy"),
            &Value::from(other),
            &["Always", "OnFailure", "Never"],
        ),
    }
    match s(spec, "/dnsPolicy") {
        "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None" => {}
        "" => e.required(format!("{path}.dnsPolicy"), ""),
        other => e.not_supported(
            format!("{path}.dnsPolicy"),
            &Value::from(other),
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        ),
    }
    labels(e, &format!("{path}.nodeSelector"), spec.get("nodeSelector"));
    for key in ["serviceAccountName", "nodeName"] {
        let v = s(spec, &format!("/{key}"));
        if !v.is_empty() {
            e.invalid_each(&format!("{path}.{key}"), &Value::from(v), is_dns1123_subdomain(v));
        }
    }
    for key in ["hostname", "subdomain"] {
        let v = s(spec, &format!("/{key}"));
        if !v.is_empty() {
            e.invalid_each(&format!("{path}.{key}"), &Value::from(v), is_dns1123_label(v));
        }
    }
    e.nonnegative(
        &format!("{path}.terminationGracePeriodSeconds"),
        spec.get("terminationGracePeriodSeconds"),
    );
    if let Some(ads) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64) {
        if !(1..=i64::from(i32::MAX)).contains(&ads) {
            e.invalid(
                format!("{path}.activeDeadlineSeconds"),
                &Value::from(ads),
                "must be between 1 and 2147483647, inclusive",
            );
        }
    }
    tolerations(e, arr(spec, "/tolerations"), &format!("{path}.tolerations"));
    host_ports(e, spec, path);
}

/// `AccumulateUniqueHostPorts` (a host port is used once per protocol and host IP) and
/// `validateHostNetwork` (with the host's network, container and host ports are the same).
fn host_ports(e: &mut Errs, spec: &Value, path: &str) {
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    let mut seen = HashSet::new();
    for key in ["containers", "initContainers"] {
        for (i, c) in arr(spec, &format!("/{key}")).iter().enumerate() {
            for (j, p) in arr(c, "/ports").iter().enumerate() {
                let base = format!("{path}.{key}[{i}].ports[{j}]");
                let host = p.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
                let container = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if host_network && key == "containers" && host != container {
                    e.invalid(
                        format!("{base}.containerPort"),
                        &Value::from(container),
                        "must match `hostPort` when `hostNetwork` is true",
                    );
                }
                if host == 0 {
                    continue;
                }
                let id = format!("{}/{}/{host}", s(p, "/protocol"), s(p, "/hostIP"));
                if !seen.insert(id.clone()) {
                    e.duplicate(format!("{base}.hostPort"), &Value::from(id));
                }
            }
        }
    }
}

/// Volume names (unique DNS labels); returns the set of names for the mounts to refer to.
fn volumes(e: &mut Errs, spec: &Value, path: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for (i, v) in arr(spec, "/volumes").iter().enumerate() {
        let base = format!("{path}.volumes[{i}]");
        let field = format!("{base}.name");
        let name = s(v, "/name");
        if name.is_empty() {
            e.required(&field, "");
        } else {
            e.invalid_each(&field, &Value::from(name), is_dns1123_label(name));
            if !names.insert(name.to_string()) {
                e.duplicate(&field, &Value::from(name));
            }
        }
        volume_source(e, v, &base);
    }
    names
}

/// Volume sources in the order upstream's `validateVolumeSource` checks them.
const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gitRepo",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "flocker",
    "persistentVolumeClaim",
    "rbd",
    "quobyte",
    "cephfs",
    "cinder",
    "flexVolume",
    "downwardAPI",
    "fc",
    "azureFile",
    "vsphereVolume",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "scaleIO",
    "configMap",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

const FILE_MODE_MSG: &str = "must be a number between 0 and 0777 (octal), both inclusive";

fn file_mode(e: &mut Errs, src: &Value, field: &str) {
    if let Some(m) = src.get("defaultMode").and_then(Value::as_i64) {
        if !(0..=0o777).contains(&m) {
            e.invalid(field, &Value::from(m), FILE_MODE_MSG);
        }
    }
}

/// One source per volume, and the required fields of the common sources.
fn volume_source(e: &mut Errs, v: &Value, base: &str) {
    let present: Vec<&str> = VOLUME_SOURCES
        .iter()
        .copied()
        .filter(|k| v.get(*k).is_some_and(|x| !x.is_null()))
        .collect();
    for extra in present.iter().skip(1) {
        e.forbidden(
            format!("{base}.{extra}"),
            "may not specify more than 1 volume type",
        );
    }
    let Some(kind) = present.first() else {
        e.required(base, "must specify a volume type");
        return;
    };
    let src = &v[*kind];
    let at = |k: &str| format!("{base}.{kind}.{k}");
    match *kind {
        "hostPath" => {
            if s(src, "/path").is_empty() {
                e.required(at("path"), "");
            }
            let t = s(src, "/type");
            const TYPES: &[&str] = &[
                "",
                "BlockDevice",
                "CharDevice",
                "Directory",
                "DirectoryOrCreate",
                "File",
                "FileOrCreate",
                "Socket",
            ];
            if !TYPES.contains(&t) {
                e.not_supported(at("type"), &Value::from(t), TYPES);
            }
        }
        "secret" => {
            if s(src, "/secretName").is_empty() {
                e.required(at("secretName"), "");
            }
            file_mode(e, src, &at("defaultMode"));
        }
        "configMap" => {
            if s(src, "/name").is_empty() {
                e.required(at("name"), "");
            }
            file_mode(e, src, &at("defaultMode"));
        }
        "persistentVolumeClaim" if s(src, "/claimName").is_empty() => {
            e.required(at("claimName"), "");
        }
        "nfs" => {
            if s(src, "/server").is_empty() {
                e.required(at("server"), "");
            }
            let p = s(src, "/path");
            if p.is_empty() {
                e.required(at("path"), "");
            } else if !p.starts_with('/') {
                e.invalid(at("path"), &Value::from(p), "must be an absolute path");
            }
        }
        "downwardAPI" | "projected" => file_mode(e, src, &at("defaultMode")),
        _ => {}
    }
}

fn container(
    e: &mut Errs,
    c: &Value,
    path: &str,
    volumes: &HashSet<String>,
    names: &mut HashSet<String>,
    init: bool,
) {
    let name = s(c, "/name");
    if name.is_empty() {
        e.required(format!("{path}.name"), "");
    } else {
        e.invalid_each(
            &format!("{path}.name"),
            &Value::from(name),
            is_dns1123_label(name),
        );
        if !names.insert(name.to_string()) {
            e.duplicate(format!("{path}.name"), &Value::from(name));
        }
    }
    let image = s(c, "/image");
    if image.is_empty() {
        e.required(format!("{path}.image"), "");
    } else if image.trim() != image {
        e.invalid(
            format!("{path}.image"),
            &Value::from(image),
            "must not have leading or trailing whitespace",
        );
    }
    match s(c, "/imagePullPolicy") {
        "Always" | "IfNotPresent" | "Never" => {}
        "" => e.required(format!("{path}.imagePullPolicy"), ""),
        other => e.not_supported(
            format!("{path}.imagePullPolicy"),
            &Value::from(other),
            &["Always", "IfNotPresent", "Never"],
        ),
    }
    match s(c, "/terminationMessagePolicy") {
        "File" | "FallbackToLogsOnError" => {}
        "" => e.required(format!("{path}.terminationMessagePolicy"), ""),
        other => e.not_supported(
            format!("{path}.terminationMessagePolicy"),
            &Value::from(other),
            &["File", "FallbackToLogsOnError"],
        ),
    }
    ports(e, arr(c, "/ports"), &format!("{path}.ports"));
    env(e, arr(c, "/env"), &format!("{path}.env"));
    for (i, m) in arr(c, "/volumeMounts").iter().enumerate() {
        let base = format!("{path}.volumeMounts[{i}]");
        let n = s(m, "/name");
        if n.is_empty() {
            e.required(format!("{base}.name"), "");
        } else if !volumes.contains(n) {
            e.not_found(format!("{base}.name"), &Value::from(n));
        }
        if s(m, "/mountPath").is_empty() {
            e.required(format!("{base}.mountPath"), "");
        }
    }
    resources(e, c.get("resources"), &format!("{path}.resources"));
    let sidecar = init && s(c, "/restartPolicy") == "Always";
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(p) = c.get(key).filter(|p| p.is_object()) else {
            continue;
        };
        let field = format!("{path}.{key}");
        if init && !sidecar {
            e.forbidden(
                &field,
                "may not be set for init containers without restartPolicy=Always",
            );
            continue;
        }
        probe(e, p, &field, key != "readinessProbe");
    }
    if init {
        let rp = s(c, "/restartPolicy");
        if !rp.is_empty() && rp != "Always" {
            e.not_supported(format!("{path}.restartPolicy"), &Value::from(rp), &["Always"]);
        }
    } else if !s(c, "/restartPolicy").is_empty() {
        e.forbidden(
            format!("{path}.restartPolicy"),
            "may not be set for non-init containers",
        );
    }
}

fn ports(e: &mut Errs, list: &[Value], path: &str) {
    let mut names = HashSet::new();
    for (i, p) in list.iter().enumerate() {
        let base = format!("{path}[{i}]");
        let name = s(p, "/name");
        if !name.is_empty() {
            let msgs = is_valid_port_name(name);
            if !msgs.is_empty() {
                e.invalid_each(&format!("{base}.name"), &Value::from(name), msgs);
            } else if !names.insert(name.to_string()) {
                e.duplicate(format!("{base}.name"), &Value::from(name));
            }
        }
        match p.get("containerPort").and_then(Value::as_i64) {
            None | Some(0) => e.required(format!("{base}.containerPort"), ""),
            Some(n) => e.invalid_each(
                &format!("{base}.containerPort"),
                &Value::from(n),
                is_valid_port_num(n),
            ),
        }
        if let Some(h) = p.get("hostPort").and_then(Value::as_i64).filter(|h| *h != 0) {
            e.invalid_each(&format!("{base}.hostPort"), &Value::from(h), is_valid_port_num(h));
        }
        protocol(e, p, &format!("{base}.protocol"));
    }
}

pub(super) fn protocol(e: &mut Errs, p: &Value, field: &str) {
    match s(p, "/protocol") {
        "" => e.required(field, ""),
        x if PROTOCOLS.contains(&x) => {}
        x => e.not_supported(field, &Value::from(x), PROTOCOLS),
    }
}

fn env(e: &mut Errs, list: &[Value], path: &str) {
    for (i, v) in list.iter().enumerate() {
        let field = format!("{path}[{i}].name");
        let name = s(v, "/name");
        if name.is_empty() {
            e.required(&field, "");
            continue;
        }
        let ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !name.as_bytes()[0].is_ascii_digit();
        if !ok {
            e.invalid(
                &field,
                &Value::from(name),
                "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')",
            );
        }
    }
}

const STANDARD_CONTAINER_RESOURCES: &[&str] = &["cpu", "memory", "ephemeral-storage"];

fn resource_name_ok(name: &str) -> bool {
    STANDARD_CONTAINER_RESOURCES.contains(&name)
        || name.starts_with("hugepages-")
        || (name.contains('/') && is_qualified_name(name).is_empty())
}

/// `ValidateResourceRequirements`: names, non-negative quantities, requests ≤ limits.
fn resources(e: &mut Errs, res: Option<&Value>, path: &str) {
    let Some(res) = res else { return };
    let limits = res.get("limits").and_then(Value::as_object);
    let requests = res.get("requests").and_then(Value::as_object);
    for (kind, map) in [("limits", limits), ("requests", requests)] {
        let Some(map) = map else { continue };
        for (name, q) in map {
            let field = format!("{path}.{kind}[{name}]");
            if !resource_name_ok(name) {
                e.invalid(
                    &field,
                    &Value::from(name.as_str()),
                    "must be a standard resource for containers",
                );
            }
            match Quantity::from_value(q) {
                None => e.invalid(&field, q, super::quantity::FORMAT_ERROR),
                Some(v) if v.is_negative() => e.invalid(
                    &field,
                    &Value::from(go::int_or_string(q)),
                    "must be greater than or equal to 0",
                ),
                Some(_) => {}
            }
        }
    }
    if let (Some(requests), Some(limits)) = (requests, limits) {
        for (name, req) in requests {
            let Some(lim) = limits.get(name) else { continue };
            let (Some(r), Some(l)) = (Quantity::from_value(req), Quantity::from_value(lim)) else {
                continue;
            };
            let overcommit = STANDARD_CONTAINER_RESOURCES.contains(&name.as_str());
            if !overcommit && r != l {
                e.invalid(
                    format!("{path}.requests"),
                    &Value::from(go::int_or_string(req)),
                    &format!("must be equal to {name} limit of {}", go::int_or_string(lim)),
                );
            } else if r > l {
                e.invalid(
                    format!("{path}.requests"),
                    &Value::from(go::int_or_string(req)),
                    &format!(
                        "must be less than or equal to {name} limit of {}",
                        go::int_or_string(lim)
                    ),
                );
            }
        }
    }
}

/// `validateProbe` + `validateHandler`; liveness and startup probes need `successThreshold: 1`.
fn probe(e: &mut Errs, p: &Value, path: &str, single_success: bool) {
    let handlers: Vec<&str> = ["exec", "httpGet", "tcpSocket", "grpc"]
        .into_iter()
        .filter(|h| p.get(*h).is_some_and(|v| !v.is_null()))
        .collect();
    match handlers.as_slice() {
        [] => e.required(path, "must specify a handler type"),
        [one] => handler(e, p, one, path),
        [first, rest @ ..] => {
            handler(e, p, first, path);
            for h in rest {
                e.forbidden(format!("{path}.{h}"), "may not specify more than 1 handler type");
            }
        }
    }
    for key in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        e.nonnegative(&format!("{path}.{key}"), p.get(key));
    }
    if single_success {
        if let Some(n) = p.get("successThreshold").and_then(Value::as_i64) {
            if n != 1 {
                e.invalid(format!("{path}.successThreshold"), &Value::from(n), "must be 1");
            }
        }
    }
    if let Some(t) = p.get("terminationGracePeriodSeconds").and_then(Value::as_i64) {
        if t <= 0 {
            e.invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                &Value::from(t),
                "must be greater than 0",
            );
        }
    }
}

fn handler(e: &mut Errs, p: &Value, kind: &str, path: &str) {
    let h = &p[kind];
    let base = format!("{path}.{kind}");
    match kind {
        "exec" => {
            if arr(h, "/command").is_empty() {
                e.required(format!("{base}.command"), "");
            }
        }
        "httpGet" => {
            if s(h, "/path").is_empty() {
                e.required(format!("{base}.path"), "");
            }
            port_num_or_name(e, h.get("port"), &format!("{base}.port"));
            match s(h, "/scheme") {
                "HTTP" | "HTTPS" => {}
                other => e.not_supported(format!("{base}.scheme"), &Value::from(other), &["HTTP", "HTTPS"]),
            }
        }
        "tcpSocket" => port_num_or_name(e, h.get("port"), &format!("{base}.port")),
        _ => {
            if let Some(n) = h.get("port").and_then(Value::as_i64) {
                e.invalid_each(&format!("{base}.port"), &Value::from(n), is_valid_port_num(n));
            }
        }
    }
}

/// `ValidatePortNumOrName`.
pub(super) fn port_num_or_name(e: &mut Errs, port: Option<&Value>, field: &str) {
    match port {
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(0);
            e.invalid_each(field, &Value::from(n), is_valid_port_num(n));
        }
        Some(Value::String(name)) if !name.is_empty() => {
            e.invalid_each(field, &Value::from(name.as_str()), is_valid_port_name(name));
        }
        _ => e.required(field, ""),
    }
}

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// `validateTaintEffect`: one of the three effects (empty allowed where the caller says so).
pub(super) fn taint_effect(e: &mut Errs, effect: &str, allow_empty: bool, field: &str) {
    if effect.is_empty() {
        if !allow_empty {
            e.required(field, "");
        }
        return;
    }
    if !TAINT_EFFECTS.contains(&effect) {
        e.not_supported(field, &Value::from(effect), TAINT_EFFECTS);
    }
}

/// `ValidateTolerations`.
fn tolerations(e: &mut Errs, list: &[Value], path: &str) {
    for (i, t) in list.iter().enumerate() {
        let base = format!("{path}[{i}]");
        let key = s(t, "/key");
        if !key.is_empty() {
            e.invalid_each(&format!("{base}.key"), &Value::from(key), is_qualified_name(key));
        }
        let op = s(t, "/operator");
        if key.is_empty() && op != "Exists" {
            e.invalid(
                format!("{base}.operator"),
                &Value::from(op),
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            );
        }
        let effect = s(t, "/effect");
        if t.get("tolerationSeconds").is_some_and(|v| !v.is_null()) && effect != "NoExecute" {
            e.invalid(
                format!("{base}.effect"),
                &Value::from(effect),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            );
        }
        let value = s(t, "/value");
        match op {
            "" | "Equal" => {
                e.invalid_each(
                    &format!("{base}.value"),
                    &Value::from(value),
                    is_valid_label_value(value),
                );
            }
            "Exists" => {
                if !value.is_empty() {
                    e.invalid(
                        format!("{base}.operator"),
                        &Value::from(value),
                        "value must be empty when `operator` is 'Exists'",
                    );
                }
            }
            other => e.not_supported(
                format!("{base}.operator"),
                &Value::from(other),
                &["Equal", "Exists"],
            ),
        }
        taint_effect(e, effect, true, &format!("{base}.effect"));
    }
}

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// `ValidatePodUpdate`: only images, `activeDeadlineSeconds`, added tolerations, removed
/// scheduling gates and a few more may change.
pub(super) fn pod_update(e: &mut Errs, new: &Value, old: &Value) {
    let (Some(new_spec), Some(old_spec)) = (new.get("spec"), old.get("spec")) else {
        return;
    };
    let mut munged = new_spec.clone();
    for key in ["containers", "initContainers"] {
        let old_list = arr(old_spec, &format!("/{key}"));
        if let Some(Value::Array(list)) = munged.get_mut(key) {
            if list.len() == old_list.len() {
                for (c, o) in list.iter_mut().zip(old_list) {
                    if let (Some(c), Some(img)) = (c.as_object_mut(), o.get("image")) {
                        c.insert("image".into(), img.clone());
                    }
                }
            }
        }
    }
    if let Some(m) = munged.as_object_mut() {
        for key in ["activeDeadlineSeconds", "tolerations", "schedulingGates"] {
            match old_spec.get(key) {
                Some(v) => m.insert(key.into(), v.clone()),
                None => m.remove(key),
            };
        }
        // Binding an unscheduled pod sets nodeName once (upstream does it through the
        // binding subresource); moving a scheduled pod stays forbidden.
        if s(old_spec, "/nodeName").is_empty() {
            match old_spec.get("nodeName") {
                Some(v) => m.insert("nodeName".into(), v.clone()),
                None => m.remove("nodeName"),
            };
        }
        if old_spec
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|t| t < 0)
        {
            if let Some(v) = old_spec.get("terminationGracePeriodSeconds") {
                m.insert("terminationGracePeriodSeconds".into(), v.clone());
            }
        }
    }
    if !semantic_eq(Some(&munged), Some(old_spec)) {
        let mut changed: Vec<String> = Vec::new();
        if let (Some(a), Some(b)) = (munged.as_object(), old_spec.as_object()) {
            for k in a.keys().chain(b.keys()) {
                if !semantic_eq(a.get(k), b.get(k)) && !changed.contains(k) {
                    changed.push(k.clone());
                }
            }
        }
        let diff = changed
            .iter()
            .map(|k| format!("  spec.{k}"))
            .collect::<Vec<_>>()
            .join("\n");
        e.forbidden("spec", &format!("{POD_UPDATE_FORBIDDEN}\n{diff}"));
    }
    // Only additions to the tolerations: every old toleration must still be there, and an
    // existing NoExecute one may only shorten its tolerationSeconds.
    let new_tol = arr(new_spec, "/tolerations");
    for old_t in arr(old_spec, "/tolerations") {
        let kept = new_tol.iter().any(|t| {
            let same = |k: &str| semantic_eq(t.get(k), old_t.get(k));
            same("key") && same("operator") && same("value") && same("effect")
        });
        if !kept {
            e.forbidden(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            );
            break;
        }
    }
}
