//! Table-driven patch tests over `fixtures/patch/*.json`.
//!
//! Each case names an `original`, a `patch` (or a `raw` body) and either the `expected` object
//! or the `error` (`code`, optional `reason`, and a `message` the answer must contain).
//! `strategic.json` runs against the synthetic kind of `schema.json` (every strategy on one
//! type); `kubectl.json` holds patches kubectl really sends, against the real v1.32 schemas.

use serde_json::{json, Value};

use super::*;
use crate::schema::SchemaSet;

fn fixture_value(name: &str) -> Value {
    let path = format!("{}/fixtures/patch/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture(name: &str) -> Vec<Value> {
    match fixture_value(name) {
        Value::Array(cases) => cases,
        other => panic!("{name}: expected a list of cases, got {other}"),
    }
}

fn check(case: &Value, got: Result<Value, ApiError>, failures: &mut Vec<String>) {
    let name = case["name"].as_str().unwrap_or("?");
    match (got, case.get("expected"), case.get("error")) {
        (Ok(v), Some(expected), _) => {
            if &v != expected {
                failures.push(format!("{name}:\n  got      {v}\n  expected {expected}"));
            }
        }
        (Err(e), None, Some(err)) => {
            let code_ok = err["code"].as_u64() == Some(u64::from(e.code));
            let reason_ok = err.get("reason").is_none_or(|r| r.as_str() == Some(e.reason));
            let msg_ok = err["message"].as_str().is_some_and(|m| e.message.contains(m));
            if !(code_ok && reason_ok && msg_ok) {
                failures.push(format!("{name}: got error {e:?}, expected {err}"));
            }
        }
        (Ok(v), _, _) => failures.push(format!("{name}: expected an error, got {v}")),
        (Err(e), _, _) => failures.push(format!("{name}: unexpected error {e:?}")),
    }
}

fn case_gvk(case: &Value) -> Gvk<'_> {
    let (group, version) =
        crate::registry::split_api_version(case.get("apiVersion").and_then(Value::as_str).unwrap_or("v1"));
    Gvk::new(
        group,
        version,
        case.get("kind").and_then(Value::as_str).unwrap_or("Pod"),
    )
}

fn body(case: &Value) -> Vec<u8> {
    match case.get("raw").and_then(Value::as_str) {
        Some(raw) => raw.as_bytes().to_vec(),
        None => serde_json::to_vec(&case["patch"]).unwrap(),
    }
}

fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn strategic_merge_patch_semantics() {
    let Value::Object(defs) = fixture_value("schema.json") else {
        panic!("schema.json: expected an object of definitions");
    };
    let set = SchemaSet::from_definitions(defs);
    let root = set
        .root(Gvk::new("test.keel.dev", "v1", "Item"))
        .expect("fixture kind");
    let mut failures = Vec::new();
    let cases = fixture("strategic.json");
    assert!(cases.len() >= 30);
    for case in &cases {
        let (Value::Object(o), Value::Object(p)) = (case["original"].clone(), case["patch"].clone()) else {
            panic!("{}: original and patch must be objects", case["name"]);
        };
        let got = strategic::merge_objects(o, p, Some(root))
            .map(Value::Object)
            .map_err(|e| match e.class() {
                SmpErrorClass::BadRequest => ApiError::bad_request(e.to_string()),
                SmpErrorClass::Unprocessable => rejected(),
                SmpErrorClass::Internal => ApiError::internal(e.to_string()),
            });
        check(case, got, &mut failures);
    }
    report(failures);
}

#[test]
fn kubectl_patches_apply_as_upstream() {
    let mut failures = Vec::new();
    for case in &fixture("kubectl.json") {
        let got = apply(
            PatchType::Strategic,
            &case["original"],
            &body(case),
            case_gvk(case),
        );
        check(case, got, &mut failures);
    }
    report(failures);
}

#[test]
fn json_and_merge_patches() {
    let mut failures = Vec::new();
    for case in &fixture("json.json") {
        let t = match case["type"].as_str() {
            Some("json") => PatchType::Json,
            Some("merge") => PatchType::Merge,
            _ => PatchType::Strategic,
        };
        let got = apply(t, &case["original"], &body(case), case_gvk(case));
        check(case, got, &mut failures);
    }
    report(failures);
}

#[test]
fn content_types() {
    assert_eq!(
        PatchType::from_content_type("application/strategic-merge-patch+json; charset=utf-8"),
        Some(PatchType::Strategic)
    );
    assert_eq!(
        PatchType::from_content_type("application/json-patch+json"),
        Some(PatchType::Json)
    );
    assert_eq!(
        PatchType::from_content_type("application/merge-patch+json"),
        Some(PatchType::Merge)
    );
    assert_eq!(PatchType::from_content_type("application/apply-patch+yaml"), None);
    assert_eq!(PatchType::from_content_type("application/json"), None);
    for t in [PatchType::Json, PatchType::Merge, PatchType::Strategic] {
        assert_eq!(PatchType::from_content_type(t.content_type()), Some(t));
    }
    let e = unsupported_patch_type(true);
    assert_eq!(e.code, 415);
    assert!(e
        .message
        .ends_with("application/apply-patch+yaml, application/strategic-merge-patch+json"));
    assert_eq!(e.to_status()["details"], json!({}));
}

#[test]
fn original_is_never_modified() {
    let original = json!({"metadata": {"name": "a", "finalizers": ["x"]}});
    let before = original.clone();
    let patched = apply(
        PatchType::Strategic,
        &original,
        br#"{"metadata":{"finalizers":["y"]}}"#,
        Gvk::new("", "v1", "ConfigMap"),
    )
    .unwrap();
    assert_eq!(original, before);
    assert_eq!(patched["metadata"]["finalizers"], json!(["y", "x"]));
}
