//! Fixture tests: `fixtures/validation/*.json` hold objects (defaulted first, as the server
//! does) and the causes upstream reports for them, in order.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::*;
use crate::defaults::{apply_create_defaults, apply_defaults};
use crate::registry::find;

fn resource(fx: &Value) -> &'static ResourceType {
    let r = &fx["resource"];
    find(
        r["group"].as_str().unwrap(),
        r["version"].as_str().unwrap(),
        r["plural"].as_str().unwrap(),
    )
    .unwrap()
}

#[test]
fn fixtures_report_upstream_causes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/validation");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "fixtures missing");
    for file in files {
        let fx: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let rt = resource(&fx);
        let defaults = fx["defaults"].as_bool().unwrap_or(true);
        let mut obj = fx["object"].clone();
        let result = match fx["op"].as_str().unwrap() {
            "create" => {
                if defaults {
                    apply_create_defaults(rt, &mut obj);
                }
                validate_create(rt, &obj)
            }
            "update" => {
                let mut old = fx["old"].clone();
                if defaults {
                    apply_defaults(rt, &mut obj);
                    apply_defaults(rt, &mut old);
                }
                validate_update(rt, &obj, &old)
            }
            other => panic!("{}: op {other}", file.display()),
        };
        let want: Vec<(String, String)> = fx["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c[0].as_str().unwrap().to_string(),
                    c[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
        match result {
            Ok(()) => assert!(want.is_empty(), "{}: valid, expected {want:?}", file.display()),
            Err(err) => {
                assert_eq!((err.code, err.reason), (422, "Invalid"), "{}", file.display());
                let got: Vec<(String, String)> = err
                    .details
                    .as_ref()
                    .unwrap()
                    .causes
                    .iter()
                    .map(|c| (c.field.clone(), c.message.clone()))
                    .collect();
                assert_eq!(got, want, "{}", file.display());
                if let Some(m) = fx.get("message").and_then(Value::as_str) {
                    assert_eq!(err.message, m, "{}", file.display());
                }
            }
        }
    }
}

#[test]
fn seed_node_port_out_of_range() {
    let svcs = find("", "v1", "services").unwrap();
    let svc = json!({"metadata": {"name": "myweb", "namespace": "default"},
        "spec": {"type": "NodePort", "ports": [{"port": 8080, "targetPort": 8080, "nodePort": 3333}]}});
    let err = check_node_ports(svcs, &svc, 30000..=32767).unwrap_err();
    assert_eq!(err.code, 422);
    assert_eq!(
        err.message,
        "Service \"myweb\" is invalid: spec.ports[0].nodePort: Invalid value: 3333: provided port is not in the valid range. The range of valid ports is 30000-32767"
    );
    let ok = json!({"metadata": {"name": "w"}, "spec": {"ports": [{"port": 80, "nodePort": 30080}, {"port": 81}]}});
    assert!(check_node_ports(svcs, &ok, 30000..=32767).is_ok());
}

#[test]
fn semantic_equality_treats_empty_as_unset() {
    assert!(semantic_eq(None, Some(&json!(null))));
    assert!(semantic_eq(Some(&json!({"a": []})), Some(&json!({}))));
    assert!(semantic_eq(Some(&json!({"a": ""})), None));
    assert!(!semantic_eq(Some(&json!({"a": "x"})), Some(&json!({}))));
    assert!(!semantic_eq(Some(&json!([1])), Some(&json!([2]))));
}

#[test]
fn every_seed_manifest_kind_validates_when_well_formed() {
    let cases = [
        (
            "",
            "v1",
            "pods",
            json!({"metadata": {"name": "nginx", "namespace": "default"},
            "spec": {"containers": [{"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}]}]}}),
        ),
        (
            "",
            "v1",
            "services",
            json!({"metadata": {"name": "myweb", "namespace": "default"},
            "spec": {"type": "NodePort", "selector": {"app": "myweb"}, "ports": [{"port": 8080, "nodePort": 30001}]}}),
        ),
        (
            "apps",
            "v1",
            "daemonsets",
            json!({"metadata": {"name": "agent", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "a", "image": "busybox"}]}}}}),
        ),
        (
            "apps",
            "v1",
            "statefulsets",
            json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"serviceName": "nginx", "replicas": 3, "selector": {"matchLabels": {"app": "nginx"}},
            "template": {"metadata": {"labels": {"app": "nginx"}}, "spec": {"containers": [{"name": "nginx", "image": "nginx",
            "volumeMounts": [{"name": "www", "mountPath": "/usr/share/nginx/html"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}}]}}),
        ),
        (
            "",
            "v1",
            "secrets",
            json!({"metadata": {"name": "mysecret", "namespace": "default"},
            "type": "Opaque", "data": {"username": "YWRtaW4=", "password": "MWYyZDFlMmU2N2Rm"}}),
        ),
        (
            "",
            "v1",
            "persistentvolumes",
            json!({"metadata": {"name": "pv001"},
            "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Recycle", "nfs": {"path": "/data/pv1", "server": "192.168.66.100"}}}),
        ),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            json!({"metadata": {"name": "read-pods", "namespace": "default"},
            "subjects": [{"kind": "User", "name": "jane", "apiGroup": "rbac.authorization.k8s.io"}],
            "roleRef": {"kind": "Role", "name": "pod-reader", "apiGroup": "rbac.authorization.k8s.io"}}),
        ),
        (
            "autoscaling",
            "v1",
            "horizontalpodautoscalers",
            json!({"metadata": {"name": "php-apache", "namespace": "default"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "php-apache"},
            "minReplicas": 1, "maxReplicas": 10, "targetCPUUtilizationPercentage": 50}}),
        ),
        (
            "networking.k8s.io",
            "v1",
            "ingresses",
            json!({"metadata": {"name": "ing", "namespace": "default"},
            "spec": {"rules": [{"host": "foo.bar.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "nginx-svc", "port": {"number": 80}}}}]}}]}}),
        ),
        (
            "storage.k8s.io",
            "v1",
            "storageclasses",
            json!({"metadata": {"name": "standard"}, "provisioner": "kubernetes.io/no-provisioner"}),
        ),
        (
            "coordination.k8s.io",
            "v1",
            "leases",
            json!({"metadata": {"name": "node1", "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": "node1", "leaseDurationSeconds": 40}}),
        ),
        (
            "certificates.k8s.io",
            "v1",
            "certificatesigningrequests",
            json!({"metadata": {"name": "node-csr-abc"},
            "spec": {"request": "LS0tLS1CRUdJTg==", "signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": ["client auth"]}}),
        ),
    ];
    for (g, v, plural, obj) in cases {
        let rt = find(g, v, plural).unwrap();
        let mut obj = obj;
        apply_create_defaults(rt, &mut obj);
        if let Err(e) = validate_create(rt, &obj) {
            panic!("{plural}: {}", e.message);
        }
    }
}

#[test]
fn malformed_objects_never_panic() {
    let shapes = [
        json!(null),
        json!("text"),
        json!([1, 2]),
        json!({"metadata": "x", "spec": 5, "status": []}),
        json!({"metadata": {"name": 7, "labels": [1], "annotations": "a"},
            "spec": {"containers": "c", "template": {"spec": {"containers": [1, null, {"ports": "p"}]}},
            "selector": {"matchExpressions": [{"operator": 3}]}, "ports": [{"port": "x", "nodePort": "y"}],
            "replicas": "three", "schedule": 5, "taints": [{"effect": 1}], "rules": [5],
            "resources": {"requests": {"storage": {"x": 1}}, "limits": [1]}, "volumes": [{"name": "v", "secret": 1}]},
            "data": {"k": 5}, "subsets": [{"addresses": [1]}], "roleRef": 3, "subjects": [{"kind": 1}]}),
    ];
    for rt in crate::registry::RESOURCES.iter() {
        for shape in &shapes {
            let mut obj = shape.clone();
            apply_create_defaults(rt, &mut obj);
            let _ = validate_create(rt, &obj);
            let _ = validate_update(rt, &obj, shape);
            let _ = crate::table::table(rt, std::slice::from_ref(&obj), &crate::table::ListMeta::default());
            let mut upd = shape.clone();
            crate::defaults::apply_update_defaults(rt, &mut upd, &obj);
        }
    }
}
