//! Fixture tests: `fixtures/tables/*.json` hold objects and the cells upstream prints for them.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::*;
use crate::registry::find;

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tables")
}

#[test]
fn fixtures_print_upstream_cells() {
    let mut files: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "fixtures missing: {files:?}");
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let fx: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let r = &fx["resource"];
        let rt = find(
            r["group"].as_str().unwrap(),
            r["version"].as_str().unwrap(),
            r["plural"].as_str().unwrap(),
        )
        .unwrap_or_else(|| panic!("{}: unknown resource", file.display()));
        let now: Timestamp = fx["now"].as_str().unwrap().parse().unwrap();
        if let Some(cols) = fx.get("columns") {
            let names: Vec<&str> = columns(rt).iter().map(|c| c.name).collect();
            let want: Vec<&str> = cols
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            assert_eq!(names, want, "{}: columns", file.display());
        }
        for case in fx["cases"].as_array().unwrap() {
            let obj = &case["object"];
            let t = table_at(
                rt,
                std::slice::from_ref(obj),
                &ListMeta::default(),
                TableOptions::default(),
                now,
            );
            let cells = &t["rows"][0]["cells"];
            assert_eq!(
                cells,
                &case["cells"],
                "{}: case {:?}",
                file.display(),
                case.get("name")
            );
            assert_eq!(
                cells.as_array().unwrap().len(),
                columns(rt).len(),
                "{}: one cell per column",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} cases");
}

#[test]
fn every_registry_kind_has_cells_for_every_column() {
    let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    for rt in crate::registry::RESOURCES.iter().filter(|r| r.is_stored()) {
        let obj = json!({"metadata": {"name": "x", "namespace": "default",
            "creationTimestamp": "2025-12-31T23:00:00Z"}});
        let t = table_at(rt, &[obj], &ListMeta::default(), TableOptions::default(), now);
        let n = t["columnDefinitions"].as_array().unwrap().len();
        assert_eq!(
            t["rows"][0]["cells"].as_array().unwrap().len(),
            n,
            "{}",
            rt.plural
        );
    }
}

#[test]
fn table_envelope() {
    let pods = find("", "v1", "pods").unwrap();
    let pod = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Succeeded"}});
    let meta = ListMeta {
        resource_version: "42".into(),
        continue_token: "tok".into(),
        remaining_item_count: Some(3),
    };
    let t = table(pods, std::slice::from_ref(&pod), &meta);
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(
        t["metadata"],
        json!({"resourceVersion": "42", "continue": "tok", "remainingItemCount": 3})
    );
    assert_eq!(t["columnDefinitions"][0]["name"], "Name");
    assert_eq!(t["columnDefinitions"][0]["format"], "name");
    assert_eq!(t["columnDefinitions"][5]["priority"], 1);
    let row = &t["rows"][0];
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(row["object"]["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(row["object"]["metadata"], pod["metadata"]);
    assert_eq!(row["conditions"][0]["reason"], "Succeeded");

    let t = table_with(
        pods,
        std::slice::from_ref(&pod),
        &ListMeta::default(),
        TableOptions {
            include_object: IncludeObject::None,
            no_headers: true,
        },
    );
    assert!(t.get("columnDefinitions").is_none());
    assert!(t["rows"][0].get("object").is_none());
    let t = table_with(
        pods,
        std::slice::from_ref(&pod),
        &ListMeta::default(),
        TableOptions {
            include_object: IncludeObject::Object,
            no_headers: false,
        },
    );
    assert_eq!(t["rows"][0]["object"], pod);
    assert_eq!(table(pods, &[], &ListMeta::default())["rows"], json!([]));
}

#[test]
fn default_and_age_tables() {
    let roles = find("rbac.authorization.k8s.io", "v1", "roles").unwrap();
    let r = json!({"metadata": {"name": "reader", "creationTimestamp": "2025-01-02T03:04:05Z"}});
    let t = table(roles, std::slice::from_ref(&r), &ListMeta::default());
    let names: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Name", "Created At"]);
    assert_eq!(t["rows"][0]["cells"], json!(["reader", "2025-01-02T03:04:05Z"]));
    let t = age_table(&[r], &ListMeta::default(), TableOptions::default());
    assert_eq!(t["columnDefinitions"][1]["name"], "Age");
    assert_eq!(t["rows"][0]["cells"][0], "reader");
}

#[test]
fn descriptions_come_from_the_schema() {
    let pods = find("", "v1", "pods").unwrap();
    let cols = columns(pods);
    assert!(cols[0]
        .description
        .starts_with("Name must be unique within a namespace."));
    assert_eq!(
        cols[5].description,
        "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."
    );
}

#[test]
fn table_writer_writes_the_same_table_row_by_row() {
    let pods = find("", "v1", "pods").unwrap();
    let now: Timestamp = "2025-01-02T03:04:05Z".parse().unwrap();
    let objects = vec![
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "a", "namespace": "ns", "creationTimestamp": "2025-01-01T03:04:05Z",
                            "labels": {"app": "x"}, "resourceVersion": "7"},
               "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": "n1"},
               "status": {"phase": "Running", "podIP": "10.0.0.1",
                          "conditions": [{"type": "Ready", "status": "True"}],
                          "containerStatuses": [{"name": "c", "ready": true, "restartCount": 2}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": []}}),
    ];
    let meta = ListMeta {
        resource_version: "9".into(),
        continue_token: "more".into(),
        remaining_item_count: None,
    };
    for include_object in [
        IncludeObject::None,
        IncludeObject::Metadata,
        IncludeObject::Object,
    ] {
        for no_headers in [false, true] {
            let options = TableOptions {
                include_object,
                no_headers,
            };
            let mut w = TableWriter::new(pods, options).at(now);
            for o in &objects {
                w.push(o);
            }
            assert_eq!(w.len(), 2);
            let bytes = w.finish(&meta);
            let got: Value = serde_json::from_slice(&bytes).unwrap();
            let want = table_at(pods, &objects, &meta, options, now);
            assert_eq!(got, want, "{options:?}");
            // Same keys in the same order as the Value form serializes them.
            assert_eq!(bytes, serde_json::to_vec(&want).unwrap(), "{options:?}");
        }
    }
    let empty = TableWriter::new(pods, TableOptions::default()).finish(&meta);
    let got: Value = serde_json::from_slice(&empty).unwrap();
    assert_eq!(got, table(pods, &[], &meta));
}
