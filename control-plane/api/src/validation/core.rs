//! core/v1 kinds other than pods: Services, ConfigMaps, Secrets, Nodes, volumes and claims,
//! Endpoints, quotas.

use std::collections::HashSet;
use std::net::IpAddr;

use base64::Engine as _;
use serde_json::Value;

use super::meta::labels;
use super::names::{
    is_config_map_key, is_dns1123_label, is_dns1123_subdomain, is_qualified_name, is_valid_label_value,
    is_valid_port_num,
};
use super::pod::{port_num_or_name, protocol, taint_effect};
use super::quantity::Quantity;
use super::{arr, go, s, semantic_eq, Errs};

const IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const MAX_SECRET_SIZE: usize = 1024 * 1024;

fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

fn service_port_key(p: &Value) -> String {
    format!(
        "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
        go::quote(s(p, "/protocol")),
        p.get("port").and_then(Value::as_i64).unwrap_or(0)
    )
}

/// `ValidateService`.
pub(super) fn service(e: &mut Errs, svc: &Value) {
    let kind = s(svc, "/spec/type");
    let cluster_ip = s(svc, "/spec/clusterIP");
    let headless = cluster_ip == "None";
    let ports = arr(svc, "/spec/ports");
    match kind {
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName" => {}
        "" => e.required("spec.type", ""),
        other => e.not_supported(
            "spec.type",
            &Value::from(other),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ),
    }
    if kind == "ExternalName" {
        let name = s(svc, "/spec/externalName");
        if name.is_empty() {
            e.required("spec.externalName", "");
        } else {
            let trimmed = name.strip_suffix('.').unwrap_or(name);
            e.invalid_each(
                "spec.externalName",
                &Value::from(name),
                is_dns1123_subdomain(trimmed),
            );
        }
        if !cluster_ip.is_empty() {
            e.forbidden("spec.clusterIPs", "may not be set for ExternalName services");
        }
    } else if ports.is_empty() && !headless {
        e.required("spec.ports", "");
    }
    let ips: Vec<&str> = match svc.pointer("/spec/clusterIPs").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list.iter().map(|v| v.as_str().unwrap_or("")).collect(),
        _ if !cluster_ip.is_empty() => vec![cluster_ip],
        _ => Vec::new(),
    };
    if kind != "ExternalName" {
        for (i, ip) in ips.iter().enumerate() {
            if !(is_ip(ip) || (i == 0 && *ip == "None")) {
                e.invalid(format!("spec.clusterIPs[{i}]"), &Value::from(*ip), IP_MSG);
            }
        }
    }
    let require_name = ports.len() > 1;
    let mut names = HashSet::new();
    let mut seen_ports = HashSet::new();
    let mut node_ports = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let base = format!("spec.ports[{i}]");
        let name = s(p, "/name");
        if name.is_empty() {
            if require_name {
                e.required(format!("{base}.name"), "");
            }
        } else {
            e.invalid_each(
                &format!("{base}.name"),
                &Value::from(name),
                is_dns1123_label(name),
            );
            if !names.insert(name.to_string()) {
                e.duplicate(format!("{base}.name"), &Value::from(name));
            }
        }
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        e.invalid_each(
            &format!("{base}.port"),
            &Value::from(port),
            is_valid_port_num(port),
        );
        protocol(e, p, &format!("{base}.protocol"));
        if !(headless && p.get("targetPort").is_none()) {
            port_num_or_name(e, p.get("targetPort"), &format!("{base}.targetPort"));
        }
        let node_port = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
        if node_port != 0 {
            if kind == "ClusterIP" {
                e.forbidden(
                    format!("{base}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                );
            } else {
                e.invalid_each(
                    &format!("{base}.nodePort"),
                    &Value::from(node_port),
                    is_valid_port_num(node_port),
                );
            }
            if !node_ports.insert((node_port, s(p, "/protocol").to_string())) {
                e.duplicate(format!("{base}.nodePort"), &Value::from(node_port));
            }
        }
        if !seen_ports.insert((port, s(p, "/protocol").to_string())) {
            e.duplicate_raw(&base, &service_port_key(p));
        }
    }
    labels(e, "spec.selector", svc.pointer("/spec/selector"));
    match s(svc, "/spec/sessionAffinity") {
        "ClientIP" | "None" => {}
        "" => e.required("spec.sessionAffinity", ""),
        other => e.not_supported("spec.sessionAffinity", &Value::from(other), &["ClientIP", "None"]),
    }
    for (i, ip) in arr(svc, "/spec/externalIPs").iter().enumerate() {
        let ip = ip.as_str().unwrap_or("");
        if !is_ip(ip) {
            e.invalid(format!("spec.externalIPs[{i}]"), &Value::from(ip), IP_MSG);
        }
    }
    let externally = kind == "NodePort"
        || kind == "LoadBalancer"
        || (kind == "ClusterIP" && !arr(svc, "/spec/externalIPs").is_empty());
    let etp = s(svc, "/spec/externalTrafficPolicy");
    if !externally {
        if !etp.is_empty() {
            e.invalid(
                "spec.externalTrafficPolicy",
                &Value::from(etp),
                "may only be set for externally-accessible services",
            );
        }
    } else if etp.is_empty() {
        e.required("spec.externalTrafficPolicy", "");
    } else if etp != "Cluster" && etp != "Local" {
        e.not_supported(
            "spec.externalTrafficPolicy",
            &Value::from(etp),
            &["Cluster", "Local"],
        );
    }
    if kind != "ExternalName" {
        match s(svc, "/spec/internalTrafficPolicy") {
            "Cluster" | "Local" => {}
            "" => e.required("spec.internalTrafficPolicy", ""),
            other => e.not_supported(
                "spec.internalTrafficPolicy",
                &Value::from(other),
                &["Cluster", "Local"],
            ),
        }
    }
    if let Some(policy) = svc.pointer("/spec/ipFamilyPolicy").and_then(Value::as_str) {
        if !["SingleStack", "PreferDualStack", "RequireDualStack"].contains(&policy) {
            e.not_supported(
                "spec.ipFamilyPolicy",
                &Value::from(policy),
                &["PreferDualStack", "RequireDualStack", "SingleStack"],
            );
        }
    }
    for (i, f) in arr(svc, "/spec/ipFamilies").iter().enumerate() {
        let f = f.as_str().unwrap_or("");
        if f != "IPv4" && f != "IPv6" {
            e.not_supported(
                format!("spec.ipFamilies[{i}]"),
                &Value::from(f),
                &["IPv4", "IPv6"],
            );
        }
    }
}

/// `ValidateServiceUpdate`: the cluster IP of a service that has one never changes.
pub(super) fn service_update(e: &mut Errs, new: &Value, old: &Value) {
    let old_type = s(old, "/spec/type");
    let new_type = s(new, "/spec/type");
    let old_ip = s(old, "/spec/clusterIP");
    if old_type != "ExternalName" && new_type != "ExternalName" && !old_ip.is_empty() {
        e.immutable(
            "spec.clusterIP",
            new.pointer("/spec/clusterIP"),
            old.pointer("/spec/clusterIP"),
        );
    }
}

fn base64_len(v: &Value) -> usize {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .map_or(0, |b| b.len())
}

/// `ValidateConfigMap`: keys, no key in both bags, at most 1 MiB.
pub(super) fn config_map(e: &mut Errs, cm: &Value) {
    let data = cm.get("data").and_then(Value::as_object);
    let binary = cm.get("binaryData").and_then(Value::as_object);
    let mut total = 0;
    if let Some(d) = data {
        for (k, v) in d {
            let field = format!("data[{k}]");
            e.invalid_each(&field, &Value::from(k.as_str()), is_config_map_key(k));
            if binary.is_some_and(|b| b.contains_key(k)) {
                e.invalid(
                    &field,
                    &Value::from(k.as_str()),
                    "duplicate of key present in binaryData",
                );
            }
            total += v.as_str().map_or(0, str::len);
        }
    }
    if let Some(b) = binary {
        for (k, v) in b {
            let field = format!("binaryData[{k}]");
            e.invalid_each(&field, &Value::from(k.as_str()), is_config_map_key(k));
            if data.is_some_and(|d| d.contains_key(k)) {
                e.invalid(
                    &field,
                    &Value::from(k.as_str()),
                    "duplicate of key present in data",
                );
            }
            total += base64_len(v);
        }
    }
    if total > MAX_SECRET_SIZE {
        e.too_long("", MAX_SECRET_SIZE);
    }
}

fn immutable_bags(e: &mut Errs, new: &Value, old: &Value, bags: &[&str]) {
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    if new.get("immutable").and_then(Value::as_bool) != Some(true) {
        e.forbidden("immutable", "field is immutable when `immutable` is set");
    }
    for bag in bags {
        if !semantic_eq(new.get(*bag), old.get(*bag)) {
            e.forbidden(*bag, "field is immutable when `immutable` is set");
        }
    }
}

pub(super) fn config_map_update(e: &mut Errs, new: &Value, old: &Value) {
    immutable_bags(e, new, old, &["data", "binaryData"]);
}

/// `ValidateSecret`: keys, size, and the keys each secret type requires.
pub(super) fn secret(e: &mut Errs, secret: &Value) {
    let data = secret.get("data").and_then(Value::as_object);
    let mut total = 0;
    if let Some(d) = data {
        for (k, v) in d {
            e.invalid_each(
                &format!("data[{k}]"),
                &Value::from(k.as_str()),
                is_config_map_key(k),
            );
            total += base64_len(v);
        }
    }
    if let Some(d) = secret.get("stringData").and_then(Value::as_object) {
        for (k, v) in d {
            e.invalid_each(
                &format!("data[{k}]"),
                &Value::from(k.as_str()),
                is_config_map_key(k),
            );
            total += v.as_str().map_or(0, str::len);
        }
    }
    if total > MAX_SECRET_SIZE {
        e.too_long("data", MAX_SECRET_SIZE);
    }
    let has = |k: &str| {
        data.is_some_and(|d| d.contains_key(k))
            || secret.pointer("/stringData").and_then(|d| d.get(k)).is_some()
    };
    match s(secret, "/type") {
        "kubernetes.io/service-account-token" => {
            let name = secret
                .pointer("/metadata/annotations")
                .and_then(|a| a.get("kubernetes.io/service-account.name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if name.is_empty() {
                e.required("metadata.annotations[kubernetes.io/service-account.name]", "");
            }
        }
        "kubernetes.io/dockercfg" if !has(".dockercfg") => e.required("data[.dockercfg]", ""),
        "kubernetes.io/dockerconfigjson" if !has(".dockerconfigjson") => {
            e.required("data[.dockerconfigjson]", "")
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            e.required("data[username]", "");
            e.required("data[password]", "");
        }
        "kubernetes.io/ssh-auth" if !has("ssh-privatekey") => e.required("data[ssh-privatekey]", ""),
        "kubernetes.io/tls" => {
            if !has("tls.crt") {
                e.required("data[tls.crt]", "");
            }
            if !has("tls.key") {
                e.required("data[tls.key]", "");
            }
        }
        _ => {}
    }
}

pub(super) fn secret_update(e: &mut Errs, new: &Value, old: &Value) {
    e.immutable("type", new.get("type"), old.get("type"));
    immutable_bags(e, new, old, &["data"]);
}

fn taint_string(t: &Value) -> String {
    format!(
        "core.Taint{{Key:{}, Value:{}, Effect:{}, TimeAdded:(*v1.Time)(nil)}}",
        go::quote(s(t, "/key")),
        go::quote(s(t, "/value")),
        go::quote(s(t, "/effect"))
    )
}

/// `ValidateNode`: taints (key, value, effect, unique per key and effect), pod CIDRs.
pub(super) fn node(e: &mut Errs, node: &Value) {
    let mut seen = HashSet::new();
    for (i, t) in arr(node, "/spec/taints").iter().enumerate() {
        let base = format!("spec.taints[{i}]");
        let key = s(t, "/key");
        e.invalid_each(&format!("{base}.key"), &Value::from(key), is_qualified_name(key));
        let value = s(t, "/value");
        let msgs = is_valid_label_value(value);
        if !msgs.is_empty() {
            e.invalid(format!("{base}.value"), &Value::from(value), &msgs.join(";"));
        }
        let effect = s(t, "/effect");
        taint_effect(e, effect, false, &format!("{base}.effect"));
        if !seen.insert((key.to_string(), effect.to_string())) {
            e.duplicate_raw(
                &base,
                &format!(
                    "{}: taints must be unique by key and effect pair",
                    taint_string(t)
                ),
            );
        }
    }
    for (i, cidr) in arr(node, "/spec/podCIDRs").iter().enumerate() {
        let c = cidr.as_str().unwrap_or("");
        let ok = c
            .split_once('/')
            .is_some_and(|(ip, bits)| is_ip(ip) && bits.parse::<u8>().is_ok_and(|b| b <= 128));
        if !ok {
            e.invalid(
                format!("spec.podCIDRs[{i}]"),
                &Value::from(c),
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            );
        }
    }
}

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

fn access_modes(e: &mut Errs, spec: &Value, field: &str, required_detail: &str) {
    let modes = arr(spec, "/accessModes");
    if modes.is_empty() {
        e.required(field, required_detail);
    }
    for m in modes {
        let m = m.as_str().unwrap_or("");
        if !ACCESS_MODES.contains(&m) {
            e.not_supported(field, &Value::from(m), ACCESS_MODES);
        }
    }
}

/// `ValidatePersistentVolumeClaim`.
pub(super) fn pvc(e: &mut Errs, pvc: &Value) {
    let spec = pvc.get("spec").unwrap_or(&Value::Null);
    access_modes(e, spec, "spec.accessModes", "at least 1 access mode is required");
    match spec.pointer("/resources/requests/storage") {
        None => e.required("spec.resources[storage]", ""),
        Some(q) => match Quantity::from_value(q) {
            Some(v) if v.is_negative() || v.is_zero() => e.invalid(
                "spec.resources[storage]",
                &Value::from(go::int_or_string(q)),
                "must be greater than zero",
            ),
            Some(_) => {}
            None => e.invalid("spec.resources[storage]", q, super::quantity::FORMAT_ERROR),
        },
    }
    if let Some(mode) = spec.get("volumeMode").and_then(Value::as_str) {
        if mode != "Block" && mode != "Filesystem" {
            e.not_supported("spec.volumeMode", &Value::from(mode), &["Block", "Filesystem"]);
        }
    }
}

pub(super) fn pvc_update(e: &mut Errs, new: &Value, old: &Value) {
    let strip = |v: &Value, binding: bool| {
        let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(m) = spec.as_object_mut() {
            if let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
                r.remove("requests");
            }
            if binding {
                m.remove("volumeName");
            }
        }
        spec
    };
    let binding = s(old, "/spec/volumeName").is_empty();
    if !semantic_eq(Some(&strip(new, binding)), Some(&strip(old, binding))) {
        e.forbidden(
            "spec",
            "spec is immutable after creation except resources.requests for bound claims",
        );
    }
}

const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "nfs",
    "iscsi",
    "local",
    "csi",
    "fc",
    "rbd",
    "cephfs",
    "glusterfs",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "vsphereVolume",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "quobyte",
    "flocker",
    "flexVolume",
    "photonPersistentDisk",
];

/// `ValidatePersistentVolume` (the parts that do not depend on a volume plugin).
pub(super) fn pv(e: &mut Errs, pv: &Value) {
    let spec = pv.get("spec").unwrap_or(&Value::Null);
    access_modes(e, spec, "spec.accessModes", "");
    let cap = spec.get("capacity").and_then(Value::as_object);
    match cap {
        None => e.required("spec.capacity", ""),
        Some(c) if c.is_empty() => e.required("spec.capacity", ""),
        Some(c) => {
            if !c.contains_key("storage") || c.len() > 1 {
                e.not_supported(
                    "spec.capacity",
                    &Value::from(format!("{:?}", c.keys().collect::<Vec<_>>())),
                    &["storage"],
                );
            }
        }
    }
    if let Some(p) = spec.get("persistentVolumeReclaimPolicy").and_then(Value::as_str) {
        if !["Delete", "Recycle", "Retain"].contains(&p) {
            e.not_supported(
                "spec.persistentVolumeReclaimPolicy",
                &Value::from(p),
                &["Delete", "Recycle", "Retain"],
            );
        }
    }
    let sources = VOLUME_SOURCES
        .iter()
        .filter(|k| spec.get(**k).is_some_and(|v| !v.is_null()))
        .count();
    if sources == 0 {
        e.required("spec", "must specify a volume type");
    } else if sources > 1 {
        e.forbidden("spec", "may not specify more than 1 volume type");
    }
}

/// `ValidateEndpoints`: addresses are IPs, ports are valid (named when there are several).
pub(super) fn endpoints(e: &mut Errs, ep: &Value) {
    for (i, ss) in arr(ep, "/subsets").iter().enumerate() {
        for key in ["addresses", "notReadyAddresses"] {
            for (j, a) in arr(ss, &format!("/{key}")).iter().enumerate() {
                let ip = s(a, "/ip");
                if !is_ip(ip) {
                    e.invalid(format!("subsets[{i}].{key}[{j}].ip"), &Value::from(ip), IP_MSG);
                }
            }
        }
        let ports = arr(ss, "/ports");
        for (j, p) in ports.iter().enumerate() {
            let base = format!("subsets[{i}].ports[{j}]");
            let name = s(p, "/name");
            if name.is_empty() && ports.len() > 1 {
                e.required(format!("{base}.name"), "");
            } else if !name.is_empty() {
                e.invalid_each(
                    &format!("{base}.name"),
                    &Value::from(name),
                    is_dns1123_label(name),
                );
            }
            let n = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            e.invalid_each(&format!("{base}.port"), &Value::from(n), is_valid_port_num(n));
            protocol(e, p, &format!("{base}.protocol"));
        }
    }
}

/// `ValidateResourceQuota`: the hard limits are non-negative quantities.
pub(super) fn resource_quota(e: &mut Errs, q: &Value) {
    if let Some(hard) = q.pointer("/spec/hard").and_then(Value::as_object) {
        for (k, v) in hard {
            let field = format!("spec.hard[{k}]");
            match Quantity::from_value(v) {
                None => e.invalid(&field, v, super::quantity::FORMAT_ERROR),
                Some(x) if x.is_negative() => e.invalid(
                    &field,
                    &Value::from(go::int_or_string(v)),
                    "must be greater than or equal to 0",
                ),
                Some(_) => {}
            }
        }
    }
}

/// `ValidateEvent` (core/v1): the involved object lives in the event's namespace; events about
/// cluster-scoped objects go to `default` (or no namespace).
pub(super) fn event(e: &mut Errs, ev: &Value) {
    let ns = s(ev, "/metadata/namespace");
    let involved = s(ev, "/involvedObject/namespace");
    let ok = if involved.is_empty() {
        ns.is_empty() || ns == "default"
    } else {
        ns == involved
    };
    if !ok {
        e.invalid(
            "involvedObject.namespace",
            &Value::from(involved),
            "does not match event.namespace",
        );
    }
}
