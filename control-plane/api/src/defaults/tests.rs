//! Fixture tests: `fixtures/defaults/*.json` hold an object as a client sends it and the object
//! upstream stores.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::*;
use crate::registry::find;

#[test]
fn fixtures_default_as_upstream() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/defaults");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "fixtures missing");
    for file in files {
        let fx: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let r = &fx["resource"];
        let rt = find(
            r["group"].as_str().unwrap(),
            r["version"].as_str().unwrap(),
            r["plural"].as_str().unwrap(),
        )
        .unwrap();
        let mut obj = fx["input"].clone();
        if fx["create"].as_bool().unwrap() {
            apply_create_defaults(rt, &mut obj);
        } else {
            apply_defaults(rt, &mut obj);
        }
        assert_eq!(obj, fx["expected"], "{}", file.display());
        // Defaulting is idempotent.
        let mut again = obj.clone();
        apply_defaults(rt, &mut again);
        assert_eq!(again, obj, "{}: not idempotent", file.display());
    }
}

#[test]
fn image_pull_policy_follows_the_tag() {
    for (image, want) in [
        ("nginx", "Always"),
        ("nginx:latest", "Always"),
        ("nginx:1.25", "IfNotPresent"),
        ("localhost:5000/app", "Always"),
        ("localhost:5000/app:v1", "IfNotPresent"),
        ("app@sha256:0123", "IfNotPresent"),
    ] {
        assert_eq!(pod::default_pull_policy(image), want, "{image}");
    }
}

#[test]
fn qos_classes() {
    let pod = |res: Value| {
        json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": res}]}})
            .as_object()
            .cloned()
            .unwrap()
    };
    assert_eq!(pod::qos_class(&pod(json!({}))), "BestEffort");
    assert_eq!(
        pod::qos_class(&pod(json!({"requests": {"cpu": "100m"}}))),
        "Burstable"
    );
    assert_eq!(
        pod::qos_class(&pod(json!({"limits": {"cpu": "1", "memory": "1Gi"},
            "requests": {"cpu": "1", "memory": "1Gi"}}))),
        "Guaranteed"
    );
    assert_eq!(
        pod::qos_class(&pod(json!({"limits": {"cpu": "1", "memory": "1Gi"},
            "requests": {"cpu": "500m", "memory": "1Gi"}}))),
        "Burstable"
    );
}

#[test]
fn non_objects_are_left_alone() {
    let pods = find("", "v1", "pods").unwrap();
    let mut v = json!("not an object");
    apply_create_defaults(pods, &mut v);
    assert_eq!(v, json!("not an object"));
    let mut p = json!({"spec": "garbage"});
    apply_create_defaults(pods, &mut p);
    assert_eq!(p["status"]["phase"], "Pending");
}

#[test]
fn service_updates_keep_allocations() {
    let svcs = find("", "v1", "services").unwrap();
    let old = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.7",
        "clusterIPs": ["10.96.0.7"], "ports": [{"name": "http", "port": 80, "nodePort": 30080},
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}});
    let mut new = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort",
        "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30099}]}});
    apply_update_defaults(svcs, &mut new, &old);
    assert_eq!(new["spec"]["clusterIP"], "10.96.0.7");
    assert_eq!(new["spec"]["clusterIPs"], json!(["10.96.0.7"]));
    assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
    assert_eq!(new["spec"]["ports"][1]["nodePort"], 30099);
    assert_eq!(new["spec"]["ports"][0]["targetPort"], 8080);
    // Switching to ClusterIP drops nothing it did not ask for and carries no node port.
    let mut cip = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80}]}});
    apply_update_defaults(svcs, &mut cip, &old);
    assert_eq!(cip["spec"]["clusterIP"], "10.96.0.7");
    assert!(cip["spec"]["ports"][0].get("nodePort").is_none());
}
