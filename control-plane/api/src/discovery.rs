//! Discovery documents: how clients learn which resources the server has.
//!
//! Two generations of the format are served, both derived from [`crate::registry::RESOURCES`]
//! so they can never disagree with routing:
//!
//! * **Aggregated discovery** (`apidiscovery.k8s.io/v2`, `APIGroupDiscoveryList`): one document
//!   for `/api` (the core group) and one for `/apis` (every named group), each listing all
//!   versions and resources. kubectl asks for it first and recognises it by the *response
//!   Content-Type* `application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`, which
//!   the apiserver sets.
//! * **Legacy discovery**: `/api` (`APIVersions`), `/apis` (`APIGroupList`), `/apis/{group}`
//!   (`APIGroup`) and one `APIResourceList` per group version (`/api/v1`, `/apis/{g}/{v}`).
//!   kubectl falls back to it, and `drain` and `auth can-i` call `/api/v1` directly.
//!
//! Subresources answer with their own kind where upstream does: `deployments/scale` is
//! `autoscaling/v1 Scale` and `pods/eviction` is `policy/v1 Eviction` (kubectl breaks otherwise).
//!
//! The `metrics.k8s.io/v1beta1` group (for `kubectl top`) is served by whoever computes metrics,
//! so it appears only when the caller says it is available ([`METRICS_RESOURCES`] describes it).

use serde_json::{json, Map, Value};

use crate::registry::{self, ResourceType, Subresource, Verbs};

/// The `metrics.k8s.io/v1beta1` resources (`kubectl top`), served only when metrics are
/// available; not part of [`registry::RESOURCES`] because nothing stores them.
pub static METRICS_RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "metrics.k8s.io",
        version: "v1beta1",
        kind: "NodeMetrics",
        plural: "nodes",
        singular: "",
        namespaced: false,
        short_names: &[],
        categories: &[],
        verbs: Verbs::ReadOnly,
        subresources: &[],
        storage_version: "v1beta1",
    },
    ResourceType {
        group: "metrics.k8s.io",
        version: "v1beta1",
        kind: "PodMetrics",
        plural: "pods",
        singular: "",
        namespaced: true,
        short_names: &[],
        categories: &[],
        verbs: Verbs::ReadOnly,
        subresources: &[],
        storage_version: "v1beta1",
    },
];

/// Every resource served, in discovery order, with or without the metrics group.
fn served(metrics: bool) -> impl Iterator<Item = &'static ResourceType> {
    let extra: &'static [ResourceType] = if metrics { METRICS_RESOURCES } else { &[] };
    registry::RESOURCES.iter().chain(extra.iter())
}

/// The served (group, version) pairs in discovery order; a group's first version is preferred.
fn group_versions(metrics: bool) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in served(metrics) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The named groups (not core) in discovery order, each with its versions (preferred first).
fn named_groups(metrics: bool) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for (g, v) in group_versions(metrics) {
        if g.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(name, _)| *name == g) {
            Some((_, versions)) => versions.push(v),
            None => out.push((g, vec![v])),
        }
    }
    out
}

/// The resources of one group version, sorted by plural name as upstream lists them.
fn resources_of(metrics: bool, group: &str, version: &str) -> Vec<&'static ResourceType> {
    let mut rs: Vec<&'static ResourceType> = served(metrics)
        .filter(|r| r.group == group && r.version == version)
        .collect();
    rs.sort_by_key(|r| r.plural);
    rs
}

fn group_version_string(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregated discovery (apidiscovery.k8s.io/v2)
// ---------------------------------------------------------------------------------------------

/// The Content-Type the apiserver must answer aggregated discovery with.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// `GET /api` as `APIGroupDiscoveryList`: the core group only.
pub fn aggregated_core() -> Value {
    discovery_list(vec![aggregated_group("", &["v1"], false)])
}

/// `GET /apis` as `APIGroupDiscoveryList`: every named group, with `metrics.k8s.io` only when
/// `metrics` is true.
pub fn aggregated_groups(metrics: bool) -> Value {
    let items = named_groups(metrics)
        .into_iter()
        .map(|(g, versions)| aggregated_group(g, &versions, metrics))
        .collect();
    discovery_list(items)
}

fn discovery_list(items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

fn aggregated_group(group: &str, versions: &[&str], metrics: bool) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = resources_of(metrics, group, v)
                .into_iter()
                .map(aggregated_resource)
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({
        "metadata": {"name": group, "creationTimestamp": null},
        "versions": versions,
    })
}

fn aggregated_resource(r: &ResourceType) -> Value {
    let mut o = Map::new();
    o.insert("resource".into(), json!(r.plural));
    o.insert(
        "responseKind".into(),
        json!({"group": "", "version": "", "kind": r.kind}),
    );
    o.insert(
        "scope".into(),
        json!(if r.namespaced { "Namespaced" } else { "Cluster" }),
    );
    o.insert("singularResource".into(), json!(singular(r)));
    o.insert("verbs".into(), json!(r.verbs.names()));
    if !r.short_names.is_empty() {
        o.insert("shortNames".into(), json!(r.short_names));
    }
    if !r.categories.is_empty() {
        o.insert("categories".into(), json!(r.categories));
    }
    if !r.subresources.is_empty() {
        let subs: Vec<Value> = sorted_subresources(r)
            .into_iter()
            .map(|s| {
                json!({
                    "subresource": s.name,
                    "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                    "verbs": s.verbs,
                })
            })
            .collect();
        o.insert("subresources".into(), Value::Array(subs));
    }
    Value::Object(o)
}

fn sorted_subresources(r: &ResourceType) -> Vec<&'static Subresource> {
    let mut subs: Vec<&'static Subresource> = r.subresources.iter().collect();
    subs.sort_by_key(|s| s.name);
    subs
}

/// The singular name; metrics resources have none upstream, so fall back to the kind.
fn singular(r: &ResourceType) -> String {
    if r.singular.is_empty() {
        r.kind.to_lowercase()
    } else {
        r.singular.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy discovery
// ---------------------------------------------------------------------------------------------

/// `GET /api` as `APIVersions`. `server_address` (`host:port` as clients reach the server) fills
/// `serverAddressByClientCIDRs`; pass `None` to leave the list out.
pub fn api_versions(server_address: Option<&str>) -> Value {
    let mut o = json!({"kind": "APIVersions", "versions": ["v1"]});
    if let Some(addr) = server_address {
        o["serverAddressByClientCIDRs"] = json!([{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]);
    }
    o
}

/// `GET /apis` as `APIGroupList`.
pub fn api_group_list(metrics: bool) -> Value {
    let groups: Vec<Value> = named_groups(metrics)
        .into_iter()
        .map(|(g, versions)| api_group_body(g, &versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}` as `APIGroup`, or `None` when the group is not served.
pub fn api_group(group: &str, metrics: bool) -> Option<Value> {
    let (g, versions) = named_groups(metrics).into_iter().find(|(g, _)| *g == group)?;
    let mut body = api_group_body(g, &versions);
    if let Value::Object(m) = &mut body {
        let mut o = Map::new();
        o.insert("kind".into(), json!("APIGroup"));
        o.insert("apiVersion".into(), json!("v1"));
        o.append(m);
        return Some(Value::Object(o));
    }
    None
}

fn api_group_body(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = vs.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": vs, "preferredVersion": preferred})
}

/// `GET /api/v1` or `GET /apis/{group}/{version}` as `APIResourceList`, or `None` when the group
/// version is not served. Subresources are listed as `pods/log`, `deployments/scale`, …
pub fn api_resource_list(group: &str, version: &str, metrics: bool) -> Option<Value> {
    let rs = resources_of(metrics, group, version);
    if rs.is_empty() {
        return None;
    }
    let mut entries: Vec<(String, Value)> = Vec::new();
    for r in rs {
        let mut o = Map::new();
        o.insert("name".into(), json!(r.plural));
        o.insert("singularName".into(), json!(singular(r)));
        o.insert("namespaced".into(), json!(r.namespaced));
        o.insert("kind".into(), json!(r.kind));
        o.insert("verbs".into(), json!(r.verbs.names()));
        if !r.short_names.is_empty() {
            o.insert("shortNames".into(), json!(r.short_names));
        }
        if !r.categories.is_empty() {
            o.insert("categories".into(), json!(r.categories));
        }
        entries.push((r.plural.to_string(), Value::Object(o)));
        for s in sorted_subresources(r) {
            let name = format!("{}/{}", r.plural, s.name);
            let mut o = Map::new();
            o.insert("name".into(), json!(name));
            o.insert("singularName".into(), json!(""));
            o.insert("namespaced".into(), json!(r.namespaced));
            if !s.group.is_empty() || !s.version.is_empty() {
                o.insert("group".into(), json!(s.group));
                o.insert("version".into(), json!(s.version));
            }
            o.insert("kind".into(), json!(s.kind));
            o.insert("verbs".into(), json!(s.verbs));
            entries.push((name, Value::Object(o)));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let resources: Vec<Value> = entries.into_iter().map(|(_, v)| v).collect();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version_string(group, version),
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_resource<'a>(doc: &'a Value, group: &str, version: &str, plural: &str) -> &'a Value {
        let item = doc["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == group)
            .unwrap_or_else(|| panic!("group {group:?} missing"));
        let v = item["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"] == version)
            .unwrap();
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == plural)
            .unwrap_or_else(|| panic!("{plural} missing"))
    }

    #[test]
    fn aggregated_core_lists_only_core() {
        let doc = aggregated_core();
        assert_eq!(doc["kind"], "APIGroupDiscoveryList");
        assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2");
        let items = doc["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"]["name"], "");
        let pods = find_resource(&doc, "", "v1", "pods");
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["singularResource"], "pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert_eq!(pods["responseKind"]["kind"], "Pod");
        let eviction = pods["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "eviction")
            .unwrap();
        assert_eq!(
            eviction["responseKind"],
            json!({"group": "policy", "version": "v1", "kind": "Eviction"})
        );
        let nodes = find_resource(&doc, "", "v1", "nodes");
        assert_eq!(nodes["scope"], "Cluster");
    }

    #[test]
    fn aggregated_scale_is_autoscaling_v1() {
        let doc = aggregated_groups(false);
        let d = find_resource(&doc, "apps", "v1", "deployments");
        let subs = d["subresources"].as_array().unwrap();
        assert_eq!(subs[0]["subresource"], "scale");
        assert_eq!(
            subs[0]["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        assert_eq!(
            subs[1]["responseKind"],
            json!({"group": "", "version": "", "kind": "Deployment"})
        );
        assert_eq!(d["verbs"].as_array().unwrap().len(), 8);
        // no core group in /apis
        assert!(doc["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["metadata"]["name"] != ""));
    }

    #[test]
    fn autoscaling_prefers_v2_and_lists_both() {
        let doc = aggregated_groups(false);
        let item = doc["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "autoscaling")
            .unwrap();
        let versions: Vec<&str> = item["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_str().unwrap())
            .collect();
        assert_eq!(versions, ["v2", "v1"]);
        let list = api_group_list(false);
        let g = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "autoscaling")
            .unwrap();
        assert_eq!(g["preferredVersion"]["groupVersion"], "autoscaling/v2");
        assert_eq!(g["versions"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn metrics_only_when_served() {
        let has_metrics = |doc: &Value| {
            doc["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["metadata"]["name"] == "metrics.k8s.io")
        };
        assert!(!has_metrics(&aggregated_groups(false)));
        let doc = aggregated_groups(true);
        assert!(has_metrics(&doc));
        let pods = find_resource(&doc, "metrics.k8s.io", "v1beta1", "pods");
        assert_eq!(pods["responseKind"]["kind"], "PodMetrics");
        assert_eq!(pods["verbs"], json!(["get", "list"]));
        let nodes = find_resource(&doc, "metrics.k8s.io", "v1beta1", "nodes");
        assert_eq!(nodes["scope"], "Cluster");
        assert!(api_resource_list("metrics.k8s.io", "v1beta1", false).is_none());
        assert!(api_resource_list("metrics.k8s.io", "v1beta1", true).is_some());
        assert!(api_group("metrics.k8s.io", false).is_none());
        let list = api_group_list(true);
        assert!(list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "metrics.k8s.io"));
    }

    #[test]
    fn legacy_core_resource_list_has_subresources() {
        let doc = api_resource_list("", "v1", false).unwrap();
        assert_eq!(doc["kind"], "APIResourceList");
        assert_eq!(doc["groupVersion"], "v1");
        let rs = doc["resources"].as_array().unwrap();
        let names: Vec<&str> = rs.iter().map(|r| r["name"].as_str().unwrap()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        let eviction = rs.iter().find(|r| r["name"] == "pods/eviction").unwrap();
        assert_eq!(eviction["group"], "policy");
        assert_eq!(eviction["version"], "v1");
        assert_eq!(eviction["kind"], "Eviction");
        assert_eq!(eviction["verbs"], json!(["create"]));
        assert_eq!(eviction["namespaced"], true);
        let log = rs.iter().find(|r| r["name"] == "pods/log").unwrap();
        assert!(log.get("group").is_none());
        assert_eq!(log["kind"], "Pod");
        let pods = rs.iter().find(|r| r["name"] == "pods").unwrap();
        assert_eq!(pods["singularName"], "pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
    }

    #[test]
    fn legacy_apps_scale() {
        let doc = api_resource_list("apps", "v1", false).unwrap();
        assert_eq!(doc["groupVersion"], "apps/v1");
        let scale = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(
            (&scale["group"], &scale["version"], &scale["kind"]),
            (&json!("autoscaling"), &json!("v1"), &json!("Scale"))
        );
        assert!(api_resource_list("apps", "v2", false).is_none());
    }

    #[test]
    fn legacy_versions_and_groups() {
        let v = api_versions(Some("127.0.0.1:6443"));
        assert_eq!(v["versions"], json!(["v1"]));
        assert_eq!(
            v["serverAddressByClientCIDRs"][0]["serverAddress"],
            "127.0.0.1:6443"
        );
        assert!(api_versions(None).get("serverAddressByClientCIDRs").is_none());
        let groups = api_group_list(false);
        assert_eq!(groups["kind"], "APIGroupList");
        let apps = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "apps")
            .unwrap();
        assert_eq!(
            apps["preferredVersion"],
            json!({"groupVersion": "apps/v1", "version": "v1"})
        );
        let g = api_group("apps", false).unwrap();
        assert_eq!(g["kind"], "APIGroup");
        assert_eq!(g["name"], "apps");
        assert!(api_group("nope", false).is_none());
        // every named group version of the registry is in the list
        for (g, v) in registry::group_versions() {
            if g.is_empty() {
                continue;
            }
            let gv = format!("{g}/{v}");
            assert!(
                groups["groups"].as_array().unwrap().iter().any(|e| e["versions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["groupVersion"] == gv.as_str())),
                "{gv} missing"
            );
        }
    }
}
