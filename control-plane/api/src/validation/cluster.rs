//! RBAC, certificates, networking, storage classes, endpoint slices and leases.

use serde_json::Value;

use super::names::{is_dns1123_subdomain, is_qualified_name, is_valid_port_num};
use super::{arr, go, s, semantic_eq, Errs};

/// `ValidatePolicyRule` for every rule of a Role or ClusterRole.
pub(super) fn role(e: &mut Errs, role: &Value, namespaced: bool) {
    for (i, rule) in arr(role, "/rules").iter().enumerate() {
        let base = format!("rules[{i}]");
        if arr(rule, "/verbs").is_empty() {
            e.required(format!("{base}.verbs"), "verbs must contain at least one value");
        }
        let urls = arr(rule, "/nonResourceURLs");
        if !urls.is_empty() {
            if namespaced {
                e.invalid_raw(
                    format!("{base}.nonResourceURLs"),
                    &go::string_slice(urls),
                    "namespaced rules cannot apply to non-resource URLs",
                );
            }
            if !arr(rule, "/apiGroups").is_empty()
                || !arr(rule, "/resources").is_empty()
                || !arr(rule, "/resourceNames").is_empty()
            {
                e.invalid_raw(
                    format!("{base}.nonResourceURLs"),
                    &go::string_slice(urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            continue;
        }
        if arr(rule, "/apiGroups").is_empty() {
            e.required(
                format!("{base}.apiGroups"),
                "resource rules must supply at least one api group",
            );
        }
        if arr(rule, "/resources").is_empty() {
            e.required(
                format!("{base}.resources"),
                "resource rules must supply at least one resource",
            );
        }
    }
}

/// `ValidateRoleBinding` / `ValidateClusterRoleBinding`.
pub(super) fn role_binding(e: &mut Errs, rb: &Value, namespaced: bool) {
    let group = s(rb, "/roleRef/apiGroup");
    if group != "rbac.authorization.k8s.io" {
        e.not_supported(
            "roleRef.apiGroup",
            &Value::from(group),
            &["rbac.authorization.k8s.io"],
        );
    }
    let kind = s(rb, "/roleRef/kind");
    if namespaced {
        if kind != "Role" && kind != "ClusterRole" {
            e.not_supported("roleRef.kind", &Value::from(kind), &["Role", "ClusterRole"]);
        }
    } else if kind != "ClusterRole" {
        e.not_supported("roleRef.kind", &Value::from(kind), &["ClusterRole"]);
    }
    if s(rb, "/roleRef/name").is_empty() {
        e.required("roleRef.name", "");
    }
    for (i, subj) in arr(rb, "/subjects").iter().enumerate() {
        let base = format!("subjects[{i}]");
        let name = s(subj, "/name");
        if name.is_empty() {
            e.required(format!("{base}.name"), "");
        }
        match s(subj, "/kind") {
            "ServiceAccount" => {
                if !name.is_empty() {
                    e.invalid_each(
                        &format!("{base}.name"),
                        &Value::from(name),
                        is_dns1123_subdomain(name),
                    );
                }
                let group = s(subj, "/apiGroup");
                if !group.is_empty() {
                    e.not_supported(format!("{base}.apiGroup"), &Value::from(group), &[""]);
                }
                if !namespaced && s(subj, "/namespace").is_empty() {
                    e.required(format!("{base}.namespace"), "");
                }
            }
            "User" | "Group" => {
                let group = s(subj, "/apiGroup");
                if group != "rbac.authorization.k8s.io" {
                    e.not_supported(
                        format!("{base}.apiGroup"),
                        &Value::from(group),
                        &["rbac.authorization.k8s.io"],
                    );
                }
            }
            other => e.not_supported(
                format!("{base}.kind"),
                &Value::from(other),
                &["ServiceAccount", "User", "Group"],
            ),
        }
    }
}

pub(super) fn role_binding_update(e: &mut Errs, new: &Value, old: &Value) {
    if !semantic_eq(new.get("roleRef"), old.get("roleRef")) {
        let r = new.get("roleRef").unwrap_or(&Value::Null);
        e.invalid_raw(
            "roleRef",
            &format!(
                "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
                go::quote(s(r, "/apiGroup")),
                go::quote(s(r, "/kind")),
                go::quote(s(r, "/name"))
            ),
            "cannot change roleRef",
        );
    }
}

/// CertificateSigningRequests: a request and a signer.
pub(super) fn csr(e: &mut Errs, csr: &Value) {
    if s(csr, "/spec/request").is_empty() {
        e.required("spec.request", "");
    }
    let signer = s(csr, "/spec/signerName");
    if signer.is_empty() {
        e.required("spec.signerName", "");
    } else if !signer.contains('/') {
        e.invalid(
            "spec.signerName",
            &Value::from(signer),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        );
    }
}

fn ports_of(e: &mut Errs, ports: &[Value], path: &str) {
    for (i, p) in ports.iter().enumerate() {
        let base = format!("{path}[{i}]");
        if let Some(proto) = p.get("protocol").and_then(Value::as_str) {
            if !["SCTP", "TCP", "UDP"].contains(&proto) {
                e.not_supported(
                    format!("{base}.protocol"),
                    &Value::from(proto),
                    &["SCTP", "TCP", "UDP"],
                );
            }
        }
        if let Some(n) = p.get("port").and_then(Value::as_i64) {
            e.invalid_each(&format!("{base}.port"), &Value::from(n), is_valid_port_num(n));
        }
    }
}

/// `ValidateNetworkPolicy`: policy types and ports.
pub(super) fn network_policy(e: &mut Errs, np: &Value) {
    let types = arr(np, "/spec/policyTypes");
    for (i, t) in types.iter().enumerate() {
        let t = t.as_str().unwrap_or("");
        if t != "Ingress" && t != "Egress" {
            e.not_supported(
                format!("spec.policyTypes[{i}]"),
                &Value::from(t),
                &["Ingress", "Egress"],
            );
        }
    }
    if types.len() > 2 {
        e.forbidden("spec.policyTypes", "may not specify more than two policyTypes");
    }
    for dir in ["ingress", "egress"] {
        for (i, rule) in arr(np, &format!("/spec/{dir}")).iter().enumerate() {
            ports_of(e, arr(rule, "/ports"), &format!("spec.{dir}[{i}].ports"));
        }
    }
}

fn ingress_backend(e: &mut Errs, b: &Value, path: &str) {
    let service = b.get("service").filter(|v| !v.is_null());
    let resource = b.get("resource").filter(|v| !v.is_null());
    match (service, resource) {
        (Some(_), Some(_)) => e.invalid_raw(
            path,
            "networking.IngressBackend{…}",
            "cannot set both resource and service backends",
        ),
        (None, None) => e.invalid_raw(
            path,
            "networking.IngressBackend{…}",
            "resource or service backend is required",
        ),
        (Some(svc), None) => {
            let name = s(svc, "/name");
            if name.is_empty() {
                e.required(format!("{path}.service.name"), "");
            }
            let port_name = s(svc, "/port/name");
            let port_num = svc.pointer("/port/number").and_then(Value::as_i64).unwrap_or(0);
            if port_name.is_empty() && port_num == 0 {
                e.required(format!("{path}.service.port"), "port name or number is required");
            }
        }
        (None, Some(_)) => {}
    }
}

/// `ValidateIngressSpec`: hosts, paths and backends.
pub(super) fn ingress(e: &mut Errs, ing: &Value) {
    let rules = arr(ing, "/spec/rules");
    let default = ing.pointer("/spec/defaultBackend").filter(|v| !v.is_null());
    if rules.is_empty() && default.is_none() {
        e.invalid_raw(
            "spec",
            "[]networking.IngressRule(nil)",
            "either `defaultBackend` or `rules` must be specified",
        );
    }
    if let Some(b) = default {
        ingress_backend(e, b, "spec.defaultBackend");
    }
    for (i, r) in rules.iter().enumerate() {
        let host = s(r, "/host");
        if !host.is_empty() {
            let check = host.strip_prefix("*.").unwrap_or(host);
            e.invalid_each(
                &format!("spec.rules[{i}].host"),
                &Value::from(host),
                is_dns1123_subdomain(check),
            );
        }
        for (j, p) in arr(r, "/http/paths").iter().enumerate() {
            let base = format!("spec.rules[{i}].http.paths[{j}]");
            let kind = s(p, "/pathType");
            match kind {
                "" => e.required(format!("{base}.pathType"), "pathType must be specified"),
                "Exact" | "Prefix" => {
                    let path = s(p, "/path");
                    if !path.starts_with('/') {
                        e.invalid(
                            format!("{base}.path"),
                            &Value::from(path),
                            "must be an absolute path",
                        );
                    }
                }
                "ImplementationSpecific" => {}
                other => e.not_supported(
                    format!("{base}.pathType"),
                    &Value::from(other),
                    &["Exact", "ImplementationSpecific", "Prefix"],
                ),
            }
            ingress_backend(
                e,
                p.get("backend").unwrap_or(&Value::Null),
                &format!("{base}.backend"),
            );
        }
    }
}

pub(super) fn ingress_class(e: &mut Errs, ic: &Value) {
    let controller = s(ic, "/spec/controller");
    if controller.is_empty() {
        e.required("spec.controller", "");
    } else if controller.len() > 250 {
        e.too_long("spec.controller", 250);
    }
}

/// `ValidateStorageClass`.
pub(super) fn storage_class(e: &mut Errs, sc: &Value) {
    let provisioner = s(sc, "/provisioner");
    if provisioner.is_empty() {
        e.required("provisioner", "");
    } else {
        e.invalid_each(
            "provisioner",
            &Value::from(provisioner),
            is_qualified_name(&provisioner.to_lowercase()),
        );
    }
    if let Some(p) = sc.get("reclaimPolicy").and_then(Value::as_str) {
        if p != "Delete" && p != "Retain" {
            e.not_supported("reclaimPolicy", &Value::from(p), &["Delete", "Retain"]);
        }
    }
    if let Some(m) = sc.get("volumeBindingMode").and_then(Value::as_str) {
        if m != "Immediate" && m != "WaitForFirstConsumer" {
            e.not_supported(
                "volumeBindingMode",
                &Value::from(m),
                &["Immediate", "WaitForFirstConsumer"],
            );
        }
    }
}

pub(super) fn storage_class_update(e: &mut Errs, new: &Value, old: &Value) {
    for key in ["parameters", "provisioner", "reclaimPolicy"] {
        if !semantic_eq(new.get(key), old.get(key)) {
            e.forbidden(key, &format!("updates to {key} are forbidden."));
        }
    }
    e.immutable(
        "volumeBindingMode",
        new.get("volumeBindingMode"),
        old.get("volumeBindingMode"),
    );
}

/// `ValidateEndpointSlice`.
pub(super) fn endpoint_slice(e: &mut Errs, es: &Value) {
    match s(es, "/addressType") {
        "IPv4" | "IPv6" | "FQDN" => {}
        "" => e.required("addressType", ""),
        other => e.not_supported("addressType", &Value::from(other), &["FQDN", "IPv4", "IPv6"]),
    }
    for (i, ep) in arr(es, "/endpoints").iter().enumerate() {
        let addrs = arr(ep, "/addresses");
        if addrs.is_empty() {
            e.required(
                format!("endpoints[{i}].addresses"),
                "must contain at least 1 address",
            );
        }
    }
    ports_of(e, arr(es, "/ports"), "ports");
}

/// `ValidateLease`: positive duration, non-negative transitions.
pub(super) fn lease(e: &mut Errs, l: &Value) {
    if let Some(d) = l.pointer("/spec/leaseDurationSeconds").and_then(Value::as_i64) {
        if d <= 0 {
            e.invalid(
                "spec.leaseDurationSeconds",
                &Value::from(d),
                "must be greater than 0",
            );
        }
    }
    e.nonnegative("spec.leaseTransitions", l.pointer("/spec/leaseTransitions"));
}
