//! OpenAPI v3 documents: `/openapi/v3` (the index) and one document per group version.
//!
//! kubectl reads these on every `create -f`, `apply`, `edit`, `taint`…: it looks for the PATCH
//! operation of the object's kind, and if that operation lists the `fieldValidation` query
//! parameter it leaves validation to the server (`?fieldValidation=Strict`). Client-side apply
//! also computes its strategic merge patch from `components.schemas` when the PATCH operation
//! accepts `application/strategic-merge-patch+json`, and `kubectl explain` renders the schemas.
//! That is why the documents carry the real v1.32 definitions (from [`crate::schema`]) and why
//! advertising SMP is safe here: the full schemas with their patch metadata are served.
//!
//! Paths come from [`crate::registry`]: collection and item paths (namespaced and, for lists,
//! all-namespaces), and the subresources. Each document only carries the schemas reachable from
//! its own kinds plus the meta types, which keeps `api/v1` well under upstream's size.
//!
//! All documents are built once, on first use, and kept serialized: kubectl fetches them on
//! every command. The `hash` in each `serverRelativeURL` is a content hash, so it changes exactly
//! when a document does; the apiserver can serve hashed URLs as immutable (`ETag` = hash).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::registry::{self, ResourceType, Verbs};
use crate::schema::{self, ref_name, Gvk};

/// One group version's document, serialized.
#[derive(Debug)]
pub struct GvDocument {
    pub group: &'static str,
    pub version: &'static str,
    /// Opaque content hash (upper-case hex), as used in `?hash=`.
    pub hash: String,
    /// The JSON document.
    pub bytes: Vec<u8>,
}

impl GvDocument {
    /// `api/v1` or `apis/apps/v1`: the key in the index and the path under `/openapi/v3/`.
    pub fn path(&self) -> String {
        gv_path(self.group, self.version)
    }
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn documents() -> &'static [GvDocument] {
    static DOCS: OnceLock<Vec<GvDocument>> = OnceLock::new();
    DOCS.get_or_init(|| {
        registry::group_versions()
            .into_iter()
            .map(|(g, v)| {
                let doc = build_document(g, v);
                // Serializing a `Value` cannot fail (all keys are strings).
                let bytes = serde_json::to_vec(&doc).unwrap_or_default();
                GvDocument {
                    group: g,
                    version: v,
                    hash: content_hash(&bytes),
                    bytes,
                }
            })
            .collect()
    })
}

/// `GET /openapi/v3`: `{"paths":{"api/v1":{"serverRelativeURL":"/openapi/v3/api/v1?hash=…"},…}}`.
pub fn index() -> Value {
    let mut paths = Map::new();
    for d in documents() {
        let p = d.path();
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", d.hash)}),
        );
    }
    json!({ "paths": paths })
}

/// The document of one group version, or `None` when it is not served.
pub fn group_version_document(group: &str, version: &str) -> Option<&'static GvDocument> {
    documents()
        .iter()
        .find(|d| d.group == group && d.version == version)
}

/// The document for a path under `/openapi/v3/` (`api/v1`, `apis/apps/v1`; no query).
pub fn document_for_path(path: &str) -> Option<&'static GvDocument> {
    let path = path.trim_matches('/');
    documents().iter().find(|d| d.path() == path)
}

/// A stable 128-bit content hash (two FNV-1a lanes); opaque to clients.
fn content_hash(bytes: &[u8]) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for &byte in bytes {
        a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ u64::from(byte))
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(5);
    }
    format!("{a:016X}{b:016X}")
}

// ---------------------------------------------------------------------------------------------
// Building one document
// ---------------------------------------------------------------------------------------------

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

fn build_document(group: &'static str, version: &'static str) -> Value {
    let set = schema::schemas();
    let mut paths = Map::new();
    let mut roots: BTreeSet<String> = [
        "Status",
        "DeleteOptions",
        "Patch",
        "WatchEvent",
        "APIResourceList",
    ]
    .iter()
    .map(|n| format!("{META}.{n}"))
    .collect();
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    for r in registry::resources_of(group, version) {
        let ctx = ResourceCtx::new(r, &prefix);
        for name in [ctx.kind_def.as_deref(), ctx.list_def.as_deref()]
            .into_iter()
            .flatten()
        {
            roots.insert(name.to_string());
        }
        for s in r.subresources {
            if let Some(n) = set.name_of(sub_gvk(r, s)) {
                roots.insert(n.to_string());
            }
        }
        ctx.add_paths(&mut paths);
    }
    let mut schemas = Map::new();
    for name in reachable(roots) {
        if let Some(def) = set.definition(&name) {
            schemas.insert(name.clone(), convert_definition(def));
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// The definition names reachable from `roots` through `$ref`s, sorted.
fn reachable(roots: BTreeSet<String>) -> BTreeSet<String> {
    let set = schema::schemas();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.into_iter().collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(def) = set.definition(&name) {
            collect_refs(def, &mut todo);
        }
    }
    seen
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == "$ref" {
                    if let Some(name) = child.as_str().and_then(ref_name) {
                        out.push(name.to_string());
                    }
                } else {
                    collect_refs(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, out)),
        _ => {}
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// Turns a JSON-Schema definition into upstream's OpenAPI v3 form: refs into
/// `#/components/schemas/`, `["string","null"]` into `"string"`, `$ref` with siblings wrapped in
/// `allOf`, and no `enum` on `apiVersion`/`kind` of top-level kinds.
fn convert_definition(def: &Value) -> Value {
    let mut out = convert(def);
    if def.get("x-kubernetes-group-version-kind").is_some() {
        if let Some(props) = out.get_mut("properties").and_then(Value::as_object_mut) {
            for field in ["apiVersion", "kind"] {
                if let Some(Value::Object(p)) = props.get_mut(field) {
                    p.remove("enum");
                }
            }
        }
    }
    out
}

fn convert(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut o = Map::new();
            let mut reference = None;
            for (k, child) in m {
                match (k.as_str(), child) {
                    ("$ref", Value::String(r)) => {
                        reference = Some(match ref_name(r) {
                            Some(name) => format!("#/components/schemas/{name}"),
                            None => r.clone(),
                        });
                    }
                    ("type", Value::Array(types)) => {
                        let kept: Vec<&Value> = types.iter().filter(|t| t.as_str() != Some("null")).collect();
                        let t = match kept.as_slice() {
                            [one] => (*one).clone(),
                            many => Value::Array(many.iter().map(|t| (*t).clone()).collect()),
                        };
                        o.insert(k.clone(), t);
                    }
                    // Property names are data, not schema keywords.
                    ("properties", Value::Object(props)) => {
                        let converted = props.iter().map(|(name, p)| (name.clone(), convert(p))).collect();
                        o.insert(k.clone(), Value::Object(converted));
                    }
                    _ => {
                        o.insert(k.clone(), convert(child));
                    }
                }
            }
            match reference {
                Some(r) if o.is_empty() => json!({"$ref": r}),
                Some(r) => {
                    let mut wrapped = Map::new();
                    wrapped.insert("allOf".into(), json!([{"$ref": r}]));
                    wrapped.append(&mut o);
                    Value::Object(wrapped)
                }
                None => Value::Object(o),
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(convert).collect()),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Paths and operations
// ---------------------------------------------------------------------------------------------

fn sub_gvk<'a>(r: &'a ResourceType, s: &'a registry::Subresource) -> Gvk<'a> {
    if s.group.is_empty() && s.version.is_empty() {
        Gvk::new(r.group, r.version, s.kind)
    } else {
        Gvk::new(s.group, s.version, s.kind)
    }
}

/// Subresources that stream or tunnel rather than read/write an object.
fn is_connect(sub: &str) -> bool {
    matches!(sub, "attach" | "exec" | "portforward" | "proxy")
}

struct ResourceCtx<'a> {
    r: &'a ResourceType,
    prefix: &'a str,
    /// `CoreV1`, `AppsV1`, `RbacAuthorizationV1`: the middle of upstream's operation ids.
    op_group: String,
    kind_def: Option<String>,
    list_def: Option<String>,
}

impl<'a> ResourceCtx<'a> {
    fn new(r: &'a ResourceType, prefix: &'a str) -> Self {
        let set = schema::schemas();
        let gvk = Gvk::new(r.group, r.version, r.kind);
        let list_kind = format!("{}List", r.kind);
        ResourceCtx {
            r,
            prefix,
            op_group: op_group(r.group, r.version),
            kind_def: set.name_of(gvk).map(str::to_string),
            list_def: set
                .name_of(Gvk::new(r.group, r.version, &list_kind))
                .map(str::to_string),
        }
    }

    fn gvk(&self) -> Value {
        json!({"group": self.r.group, "version": self.r.version, "kind": self.r.kind})
    }

    fn kind_schema(&self) -> Value {
        self.kind_def
            .as_deref()
            .map(schema_ref)
            .unwrap_or_else(|| json!({"type": "object"}))
    }

    fn list_schema(&self) -> Value {
        self.list_def
            .as_deref()
            .map(schema_ref)
            .unwrap_or_else(|| json!({"type": "object"}))
    }

    fn add_paths(&self, paths: &mut Map<String, Value>) {
        let r = self.r;
        let ns = if r.namespaced { "Namespaced" } else { "" };
        let collection = if r.namespaced {
            format!("{}/namespaces/{{namespace}}/{}", self.prefix, r.plural)
        } else {
            format!("{}/{}", self.prefix, r.plural)
        };
        let item = format!("{collection}/{{name}}");
        let path_params = |with_name: bool| {
            let mut ps = Vec::new();
            if with_name {
                ps.push(path_param("name", &format!("name of the {}", r.kind)));
            }
            if r.namespaced {
                ps.push(path_param(
                    "namespace",
                    "object name and auth scope, such as for teams and projects",
                ));
            }
            ps.push(query_param("pretty", "string"));
            Value::Array(ps)
        };
        let kind = r.kind;
        let g = &self.op_group;

        let mut coll = Map::new();
        match r.verbs {
            Verbs::Crud => {
                coll.insert(
                    "get".into(),
                    self.op(
                        &format!("list{g}{ns}{kind}"),
                        "list",
                        list_params(),
                        None,
                        self.list_schema(),
                    ),
                );
                coll.insert(
                    "post".into(),
                    self.op(
                        &format!("create{g}{ns}{kind}"),
                        "post",
                        write_params(false),
                        Some(json_body(self.kind_schema())),
                        self.kind_schema(),
                    ),
                );
                let mut params = list_params();
                params.extend(delete_params());
                coll.insert(
                    "delete".into(),
                    self.op(
                        &format!("delete{g}Collection{ns}{kind}"),
                        "deletecollection",
                        params,
                        Some(json_body(schema_ref(&format!("{META}.DeleteOptions")))),
                        schema_ref(&format!("{META}.Status")),
                    ),
                );
            }
            Verbs::CreateOnly => {
                coll.insert(
                    "post".into(),
                    self.op(
                        &format!("create{g}{ns}{kind}"),
                        "post",
                        write_params(false),
                        Some(json_body(self.kind_schema())),
                        self.kind_schema(),
                    ),
                );
            }
            Verbs::ReadOnly => {
                coll.insert(
                    "get".into(),
                    self.op(
                        &format!("list{g}{ns}{kind}"),
                        "list",
                        list_params(),
                        None,
                        self.list_schema(),
                    ),
                );
            }
        }
        coll.insert("parameters".into(), path_params(false));
        paths.insert(collection.clone(), Value::Object(coll));

        if r.namespaced && r.verbs != Verbs::CreateOnly {
            let mut all = Map::new();
            all.insert(
                "get".into(),
                self.op(
                    &format!("list{g}{kind}ForAllNamespaces"),
                    "list",
                    list_params(),
                    None,
                    self.list_schema(),
                ),
            );
            all.insert("parameters".into(), json!([query_param("pretty", "string")]));
            paths.insert(format!("{}/{}", self.prefix, r.plural), Value::Object(all));
        }

        if r.verbs == Verbs::CreateOnly {
            return;
        }
        let mut it = Map::new();
        it.insert(
            "get".into(),
            self.op(
                &format!("read{g}{ns}{kind}"),
                "get",
                vec![],
                None,
                self.kind_schema(),
            ),
        );
        if r.verbs == Verbs::Crud {
            it.insert(
                "put".into(),
                self.op(
                    &format!("replace{g}{ns}{kind}"),
                    "put",
                    write_params(false),
                    Some(json_body(self.kind_schema())),
                    self.kind_schema(),
                ),
            );
            it.insert(
                "patch".into(),
                self.op(
                    &format!("patch{g}{ns}{kind}"),
                    "patch",
                    write_params(true),
                    Some(patch_body()),
                    self.kind_schema(),
                ),
            );
            it.insert(
                "delete".into(),
                self.op(
                    &format!("delete{g}{ns}{kind}"),
                    "delete",
                    delete_params(),
                    Some(json_body(schema_ref(&format!("{META}.DeleteOptions")))),
                    schema_ref(&format!("{META}.Status")),
                ),
            );
        }
        it.insert("parameters".into(), path_params(true));
        paths.insert(item.clone(), Value::Object(it));

        for s in r.subresources {
            let gvk = sub_gvk(r, s);
            let body_schema = schema::schemas()
                .name_of(gvk)
                .map(schema_ref)
                .unwrap_or_else(|| json!({"type": "object"}));
            let sub_title = capitalize(s.name);
            let gvk_json = json!({"group": gvk.group, "version": gvk.version, "kind": gvk.kind});
            let mut sp = Map::new();
            for verb in s.verbs {
                let (method, op) = if is_connect(s.name) {
                    let method = if *verb == "create" { "post" } else { "get" };
                    let id = format!("connect{g}{}{ns}{kind}{sub_title}", capitalize(method));
                    (
                        method,
                        operation(&id, "connect", &gvk_json, vec![], None, json!({"type": "string"})),
                    )
                } else {
                    match *verb {
                        "get" => (
                            "get",
                            operation(
                                &format!("read{g}{ns}{kind}{sub_title}"),
                                "get",
                                &gvk_json,
                                vec![],
                                None,
                                if s.name == "log" {
                                    json!({"type": "string"})
                                } else {
                                    body_schema.clone()
                                },
                            ),
                        ),
                        "update" => (
                            "put",
                            operation(
                                &format!("replace{g}{ns}{kind}{sub_title}"),
                                "put",
                                &gvk_json,
                                write_params(false),
                                Some(json_body(body_schema.clone())),
                                body_schema.clone(),
                            ),
                        ),
                        "patch" => (
                            "patch",
                            operation(
                                &format!("patch{g}{ns}{kind}{sub_title}"),
                                "patch",
                                &gvk_json,
                                write_params(true),
                                Some(patch_body()),
                                body_schema.clone(),
                            ),
                        ),
                        "create" => (
                            "post",
                            operation(
                                &format!("create{g}{ns}{kind}{sub_title}"),
                                "post",
                                &gvk_json,
                                write_params(false),
                                Some(json_body(body_schema.clone())),
                                body_schema.clone(),
                            ),
                        ),
                        _ => continue,
                    }
                };
                sp.insert(method.into(), op);
            }
            sp.insert("parameters".into(), path_params(true));
            paths.insert(format!("{item}/{}", s.name), Value::Object(sp));
        }
    }

    fn op(&self, id: &str, action: &str, params: Vec<Value>, body: Option<Value>, response: Value) -> Value {
        operation(id, action, &self.gvk(), params, body, response)
    }
}

fn operation(
    id: &str,
    action: &str,
    gvk: &Value,
    params: Vec<Value>,
    body: Option<Value>,
    response: Value,
) -> Value {
    let mut o = Map::new();
    o.insert("operationId".into(), json!(id));
    if !params.is_empty() {
        o.insert("parameters".into(), Value::Array(params));
    }
    if let Some(b) = body {
        o.insert("requestBody".into(), b);
    }
    let content = json!({
        "application/json": {"schema": response},
        "application/yaml": {"schema": response},
    });
    let mut responses = Map::new();
    responses.insert("200".into(), json!({"description": "OK", "content": content}));
    if action == "post" {
        responses.insert(
            "201".into(),
            json!({"description": "Created", "content": content}),
        );
        responses.insert(
            "202".into(),
            json!({"description": "Accepted", "content": content}),
        );
    }
    if action == "put" || action == "patch" {
        responses.insert(
            "201".into(),
            json!({"description": "Created", "content": content}),
        );
    }
    responses.insert("401".into(), json!({"description": "Unauthorized"}));
    o.insert("responses".into(), Value::Object(responses));
    o.insert("x-kubernetes-action".into(), json!(action));
    o.insert("x-kubernetes-group-version-kind".into(), gvk.clone());
    Value::Object(o)
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "description": description, "required": true,
           "schema": {"type": "string", "uniqueItems": true}})
}

fn query_param(name: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": ty, "uniqueItems": true}})
}

fn list_params() -> Vec<Value> {
    vec![
        query_param("allowWatchBookmarks", "boolean"),
        query_param("continue", "string"),
        query_param("fieldSelector", "string"),
        query_param("labelSelector", "string"),
        query_param("limit", "integer"),
        query_param("resourceVersion", "string"),
        query_param("resourceVersionMatch", "string"),
        query_param("sendInitialEvents", "boolean"),
        query_param("timeoutSeconds", "integer"),
        query_param("watch", "boolean"),
    ]
}

fn write_params(patch: bool) -> Vec<Value> {
    let mut v = vec![
        query_param("dryRun", "string"),
        query_param("fieldManager", "string"),
        query_param("fieldValidation", "string"),
    ];
    if patch {
        v.push(query_param("force", "boolean"));
    }
    v
}

fn delete_params() -> Vec<Value> {
    vec![
        query_param("dryRun", "string"),
        query_param("gracePeriodSeconds", "integer"),
        query_param("ignoreStoreReadErrorWithClusterBreakingPotential", "boolean"),
        query_param("orphanDependents", "boolean"),
        query_param("propagationPolicy", "string"),
    ]
}

fn json_body(schema: Value) -> Value {
    json!({"content": {"*/*": {"schema": schema}}, "required": true})
}

/// The PATCH request body: every patch type the server applies, SMP included (see module docs).
fn patch_body() -> Value {
    let patch = schema_ref(&format!("{META}.Patch"));
    json!({"content": {
        "application/apply-patch+yaml": {"schema": patch},
        "application/json-patch+json": {"schema": patch},
        "application/merge-patch+json": {"schema": patch},
        "application/strategic-merge-patch+json": {"schema": patch},
    }, "required": true})
}

/// `apps` → `AppsV1`, `rbac.authorization.k8s.io` → `RbacAuthorizationV1`, core → `CoreV1`.
fn op_group(group: &str, version: &str) -> String {
    let g = if group.is_empty() {
        "Core".to_string()
    } else {
        group
            .trim_end_matches(".k8s.io")
            .split('.')
            .map(capitalize)
            .collect()
    };
    format!("{g}{}", capitalize(version))
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(group: &str, version: &str) -> Value {
        let d = group_version_document(group, version).unwrap();
        serde_json::from_slice(&d.bytes).unwrap()
    }

    /// What kubectl's field-validation probe does: some PATCH operation names the kind (as a
    /// single object) and lists `fieldValidation` in the query.
    fn probe(doc: &Value, gvk: &Value) -> bool {
        doc["paths"].as_object().unwrap().values().any(|p| {
            let op = &p["patch"];
            op["x-kubernetes-group-version-kind"] == *gvk
                && op["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|q| q["name"] == "fieldValidation" && q["in"] == "query")
                })
        })
    }

    #[test]
    fn index_lists_every_group_version_with_its_hash() {
        let idx = index();
        let paths = idx["paths"].as_object().unwrap();
        assert_eq!(paths.len(), registry::group_versions().len());
        let core = paths["api/v1"]["serverRelativeURL"].as_str().unwrap();
        let d = group_version_document("", "v1").unwrap();
        assert_eq!(core, format!("/openapi/v3/api/v1?hash={}", d.hash));
        assert!(paths.contains_key("apis/apps/v1"));
        assert!(paths.contains_key("apis/autoscaling/v2"));
        assert!(std::ptr::eq(
            document_for_path("/apis/apps/v1").unwrap(),
            group_version_document("apps", "v1").unwrap()
        ));
        assert!(document_for_path("apis/nope/v1").is_none());
    }

    #[test]
    fn hashes_are_stable_and_content_dependent() {
        assert_eq!(content_hash(b"abc"), content_hash(b"abc"));
        assert_ne!(content_hash(b"abc"), content_hash(b"abd"));
        let a = group_version_document("", "v1").unwrap();
        let b = group_version_document("apps", "v1").unwrap();
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.hash.len(), 32);
    }

    #[test]
    fn every_stored_kind_passes_the_field_validation_probe() {
        for r in registry::RESOURCES.iter().filter(|r| r.is_stored()) {
            let d = doc(r.group, r.version);
            let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
            assert!(probe(&d, &gvk), "no PATCH op with fieldValidation for {gvk}");
        }
    }

    #[test]
    fn patch_operation_accepts_all_patch_types() {
        let d = doc("apps", "v1");
        let op = &d["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        let content = op["requestBody"]["content"].as_object().unwrap();
        for t in [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ] {
            assert!(content.contains_key(t), "{t}");
        }
        assert_eq!(op["x-kubernetes-action"], "patch");
        assert!(op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldManager"));
        let scale = &d["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["patch"];
        assert_eq!(
            scale["x-kubernetes-group-version-kind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        assert!(d["paths"]["/apis/apps/v1/deployments"]["get"].is_object());
        assert_eq!(
            d["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]["delete"]["x-kubernetes-action"],
            "deletecollection"
        );
    }

    #[test]
    fn schemas_are_upstream_shaped_and_complete() {
        let d = doc("apps", "v1");
        let schemas = d["components"]["schemas"].as_object().unwrap();
        let deploy = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deploy["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
        );
        assert_eq!(deploy["type"], "object");
        assert!(deploy["properties"]["kind"].get("enum").is_none());
        assert_eq!(deploy["properties"]["kind"]["type"], "string");
        assert_eq!(
            deploy["properties"]["spec"]["allOf"],
            json!([{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}])
        );
        // every $ref resolves inside the document, and none is left in JSON-Schema form
        let text = String::from_utf8(group_version_document("apps", "v1").unwrap().bytes.clone()).unwrap();
        assert!(!text.contains("#/$defs/"));
        assert!(!text.contains("\"null\""));
        let mut refs = Vec::new();
        collect_refs(&d, &mut refs);
        for r in refs {
            assert!(schemas.contains_key(&r), "dangling {r}");
        }
        // reachable types only: no admission or storage types in apps/v1
        assert!(schemas.contains_key("io.k8s.api.core.v1.PodSpec"));
        assert!(schemas.contains_key("io.k8s.api.autoscaling.v1.Scale"));
        assert!(!schemas.keys().any(|k| k.contains("admissionregistration")));
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    }

    #[test]
    fn core_paths_cover_subresources_and_all_namespaces() {
        let d = doc("", "v1");
        let paths = d["paths"].as_object().unwrap();
        assert!(paths.contains_key("/api/v1/pods"));
        assert!(paths.contains_key("/api/v1/nodes/{name}"));
        assert!(!paths.contains_key("/api/v1/namespaces/{namespace}/nodes"));
        let eviction = &paths["/api/v1/namespaces/{namespace}/pods/{name}/eviction"]["post"];
        assert_eq!(
            eviction["x-kubernetes-group-version-kind"],
            json!({"group": "policy", "version": "v1", "kind": "Eviction"})
        );
        let exec = &paths["/api/v1/namespaces/{namespace}/pods/{name}/exec"];
        assert_eq!(exec["get"]["x-kubernetes-action"], "connect");
        assert_eq!(exec["post"]["x-kubernetes-action"], "connect");
        assert_eq!(
            paths["/api/v1/namespaces/{namespace}/pods/{name}/status"]["patch"]["operationId"],
            "patchCoreV1NamespacedPodStatus"
        );
        assert_eq!(op_group("rbac.authorization.k8s.io", "v1"), "RbacAuthorizationV1");
    }
}
