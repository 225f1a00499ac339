//! Rows of the remaining groups: coordination, rbac, certificates, discovery, networking,
//! storage.

use serde_json::{json, Value};

use super::core::slice_list;
use super::{arr, format_label_selector, str_of, str_opt, Printer};

pub(super) fn lease(p: &Printer, l: &Value) -> Vec<Value> {
    vec![
        json!(str_of(l, "/metadata/name")),
        json!(str_of(l, "/spec/holderIdentity")),
        json!(p.age(l)),
    ]
}

/// RoleBindings and ClusterRoleBindings: ROLE as `Kind/name`, wide USERS, GROUPS and
/// SERVICEACCOUNTS (`namespace/name`).
pub(super) fn role_binding(p: &Printer, rb: &Value) -> Vec<Value> {
    let mut users = Vec::new();
    let mut groups = Vec::new();
    let mut sas = Vec::new();
    for s in arr(rb, "/subjects") {
        match str_of(s, "/kind") {
            "User" => users.push(str_of(s, "/name").to_string()),
            "Group" => groups.push(str_of(s, "/name").to_string()),
            "ServiceAccount" => sas.push(format!("{}/{}", str_of(s, "/namespace"), str_of(s, "/name"))),
            _ => {}
        }
    }
    vec![
        json!(str_of(rb, "/metadata/name")),
        json!(format!(
            "{}/{}",
            str_of(rb, "/roleRef/kind"),
            str_of(rb, "/roleRef/name")
        )),
        json!(p.age(rb)),
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(sas.join(", ")),
    ]
}

/// `extractCSRStatus`: `Pending`, `Approved`, `Denied`, plus `,Failed` and `,Issued`.
fn csr_condition(csr: &Value) -> String {
    let conditions = arr(csr, "/status/conditions");
    let has = |t: &str| conditions.iter().any(|c| str_of(c, "/type") == t);
    let mut status = if has("Denied") {
        "Denied".to_string()
    } else if has("Approved") {
        "Approved".to_string()
    } else {
        "Pending".to_string()
    };
    if has("Failed") {
        status.push_str(",Failed");
    }
    if !str_of(csr, "/status/certificate").is_empty() {
        status.push_str(",Issued");
    }
    status
}

pub(super) fn certificate_signing_request(p: &Printer, csr: &Value) -> Vec<Value> {
    let signer = match str_of(csr, "/spec/signerName") {
        "" => "<none>",
        s => s,
    };
    let duration = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map_or_else(|| "<none>".to_string(), super::human);
    vec![
        json!(str_of(csr, "/metadata/name")),
        json!(p.age(csr)),
        json!(signer),
        json!(str_of(csr, "/spec/username")),
        json!(duration),
        json!(csr_condition(csr)),
    ]
}

/// EndpointSlices: ADDRESSTYPE, PORTS (`80,443` or names, `*` for all), ENDPOINTS (addresses).
pub(super) fn endpoint_slice(p: &Printer, es: &Value) -> Vec<Value> {
    let ports: Vec<String> = arr(es, "/ports")
        .iter()
        .map(|port| match port.get("port").and_then(Value::as_i64) {
            Some(n) => n.to_string(),
            None => match str_opt(port, "/name") {
                Some(name) => name.to_string(),
                None => "*".to_string(),
            },
        })
        .collect();
    let addresses: Vec<String> = arr(es, "/endpoints")
        .iter()
        .flat_map(|e| arr(e, "/addresses").iter())
        .map(|a| a.as_str().unwrap_or("").to_string())
        .collect();
    vec![
        json!(str_of(es, "/metadata/name")),
        json!(str_of(es, "/addressType")),
        json!(slice_list(ports, 3)),
        json!(slice_list(addresses, 3)),
        json!(p.age(es)),
    ]
}

/// `formatHosts`: up to three rule hosts, `*` when none names one.
fn ingress_hosts(rules: &[Value]) -> String {
    const MAX: usize = 3;
    let mut list: Vec<&str> = Vec::new();
    let mut more = false;
    for r in rules {
        if list.len() == MAX {
            more = true;
        }
        let host = str_of(r, "/host");
        if !more && !host.is_empty() {
            list.push(host);
        }
    }
    if list.is_empty() {
        return "*".into();
    }
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", rules.len() - MAX)
    } else {
        ret
    }
}

pub(super) fn ingress(p: &Printer, ing: &Value) -> Vec<Value> {
    let class = str_opt(ing, "/spec/ingressClassName").unwrap_or("<none>");
    let mut addresses: Vec<&str> = arr(ing, "/status/loadBalancer/ingress")
        .iter()
        .filter_map(|i| {
            let ip = str_of(i, "/ip");
            if !ip.is_empty() {
                Some(ip)
            } else {
                str_opt(i, "/hostname").filter(|h| !h.is_empty())
            }
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    let ports = if arr(ing, "/spec/tls").is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        json!(str_of(ing, "/metadata/name")),
        json!(class),
        json!(ingress_hosts(arr(ing, "/spec/rules"))),
        json!(addresses.join(",")),
        json!(ports),
        json!(p.age(ing)),
    ]
}

pub(super) fn ingress_class(p: &Printer, ic: &Value) -> Vec<Value> {
    let parameters = match ic.pointer("/spec/parameters") {
        Some(par) if par.is_object() => {
            let mut s = str_of(par, "/kind").to_string();
            if let Some(g) = str_opt(par, "/apiGroup") {
                s = format!("{s}.{g}");
            }
            format!("{s}/{}", str_of(par, "/name"))
        }
        _ => "<none>".into(),
    };
    vec![
        json!(str_of(ic, "/metadata/name")),
        json!(str_of(ic, "/spec/controller")),
        json!(parameters),
        json!(p.age(ic)),
    ]
}

pub(super) fn network_policy(p: &Printer, np: &Value) -> Vec<Value> {
    // The pod selector is a value, not a pointer, upstream: absent means `{}` (everything).
    let empty = json!({});
    let selector = np.pointer("/spec/podSelector").unwrap_or(&empty);
    vec![
        json!(str_of(np, "/metadata/name")),
        json!(format_label_selector(Some(selector))),
        json!(p.age(np)),
    ]
}

pub(super) fn storage_class(p: &Printer, sc: &Value) -> Vec<Value> {
    let annotations = sc.pointer("/metadata/annotations");
    let is_default = [
        "storageclass.kubernetes.io/is-default-class",
        "storageclass.beta.kubernetes.io/is-default-class",
    ]
    .iter()
    .any(|k| annotations.and_then(|a| a.get(*k)).and_then(Value::as_str) == Some("true"));
    let mut name = str_of(sc, "/metadata/name").to_string();
    if is_default {
        name.push_str(" (default)");
    }
    vec![
        json!(name),
        json!(str_of(sc, "/provisioner")),
        json!(str_opt(sc, "/reclaimPolicy").unwrap_or("Delete")),
        json!(str_opt(sc, "/volumeBindingMode").unwrap_or("Immediate")),
        json!(sc
            .get("allowVolumeExpansion")
            .and_then(Value::as_bool)
            .unwrap_or(false)),
        json!(p.age(sc)),
    ]
}
