//! The Kubernetes v1.32 schemas, loaded once, and what the server derives from them.
//!
//! The definitions are vendored as `schemas/k8s-v1.32-definitions.json.gz` (JSON Schema `$defs`
//! generated from upstream's OpenAPI, see `schemas/NOTICE.md`). One schema set drives several
//! features, which is why it lives in one place:
//!
//! * **unknown-field detection** for `fieldValidation=Strict|Warn` ([`check_unknown_fields`]);
//! * **patch metadata** for strategic merge patch and server-side apply: each list field's patch
//!   strategy, merge key and list type ([`Node::field_meta`], [`patch_meta`]);
//! * the **OpenAPI v3 documents** (`crate::openapi`) that kubectl reads for `explain`, its
//!   field-validation probe and client-side apply.
//!
//! The set is parsed lazily on first use and kept as one `serde_json::Value` tree (a few MB);
//! lookups walk it by reference through [`Node`], a cursor that resolves `$ref`s as it goes, so
//! nothing is copied per request.

// `ApiError` (the crate's error, a full `Status`) is large; answering with it by value is the
// crate-wide convention.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::status::ApiError;

static DEFINITIONS_GZ: &[u8] = include_bytes!("../schemas/k8s-v1.32-definitions.json.gz");

/// A group, version and kind, borrowed (the form objects and the registry carry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gvk<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
}

impl<'a> Gvk<'a> {
    pub fn new(group: &'a str, version: &'a str, kind: &'a str) -> Self {
        Gvk { group, version, kind }
    }
}

/// The loaded definitions, indexed by name and by group/version/kind.
pub struct SchemaSet {
    defs: Map<String, Value>,
    by_gvk: HashMap<(String, String, String), String>,
}

/// Why the vendored schemas could not be read (only a broken build can cause this).
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("decompressing the vendored schemas: {0}")]
    Gzip(#[from] std::io::Error),
    #[error("parsing the vendored schemas: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the vendored schemas have no `$defs` object")]
    NoDefs,
}

/// The process-wide schema set, parsed on first use.
///
/// The data is compiled into the binary and checked by this module's tests, so a failure here
/// is a build defect, not a runtime condition; it panics with the reason.
pub fn schemas() -> &'static SchemaSet {
    static SET: OnceLock<SchemaSet> = OnceLock::new();
    SET.get_or_init(|| match SchemaSet::load(DEFINITIONS_GZ) {
        Ok(set) => set,
        Err(e) => panic!("vendored Kubernetes schemas are unusable: {e}"),
    })
}

impl SchemaSet {
    fn load(gz: &[u8]) -> Result<Self, LoadError> {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut text)?;
        let mut root: Value = serde_json::from_slice(&text)?;
        let defs = match root.get_mut("$defs").map(Value::take) {
            Some(Value::Object(m)) => m,
            _ => return Err(LoadError::NoDefs),
        };
        Ok(SchemaSet::from_definitions(defs))
    }

    /// A schema set from definitions in the same form (`$ref`s as `#/$defs/<name>`), e.g. the
    /// schemas of custom resources or test fixtures.
    pub fn from_definitions(defs: Map<String, Value>) -> Self {
        let mut by_gvk = HashMap::new();
        for (name, def) in &defs {
            for gvk in gvks_of(def) {
                by_gvk
                    .entry((gvk.group.into(), gvk.version.into(), gvk.kind.into()))
                    .or_insert_with(|| name.clone());
            }
        }
        SchemaSet { defs, by_gvk }
    }

    /// All definitions by name (`io.k8s.api.core.v1.Pod`, …).
    pub fn definitions(&self) -> &Map<String, Value> {
        &self.defs
    }

    /// One definition by name.
    pub fn definition(&self, name: &str) -> Option<&Value> {
        self.defs.get(name)
    }

    /// The definition name of a kind (`io.k8s.api.apps.v1.Deployment` for apps/v1 Deployment).
    pub fn name_of(&self, gvk: Gvk<'_>) -> Option<&str> {
        self.by_gvk
            .get(&(gvk.group.into(), gvk.version.into(), gvk.kind.into()))
            .map(String::as_str)
    }

    /// A cursor at the top-level schema of a kind.
    pub fn root(&self, gvk: Gvk<'_>) -> Option<Node<'_>> {
        let def = self.definition(self.name_of(gvk)?)?;
        Some(Node {
            set: self,
            schema: def,
        })
    }

    /// Follows `$ref` (and single-element `allOf`) until a schema with content is reached.
    pub fn resolve<'s>(&'s self, mut schema: &'s Value) -> &'s Value {
        // A bounded loop: the definitions contain no reference cycles without content between.
        for _ in 0..16 {
            if let Some(name) = schema.get("$ref").and_then(Value::as_str).and_then(ref_name) {
                match self.definition(name) {
                    Some(def) => schema = def,
                    None => return schema,
                }
            } else if let Some([only]) = schema.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
                schema = only;
            } else {
                return schema;
            }
        }
        schema
    }
}

/// The definition name a `$ref` points at (`#/$defs/<name>` or `#/components/schemas/<name>`).
pub fn ref_name(reference: &str) -> Option<&str> {
    reference
        .strip_prefix("#/$defs/")
        .or_else(|| reference.strip_prefix("#/components/schemas/"))
        .or_else(|| reference.strip_prefix("#/definitions/"))
}

/// The `x-kubernetes-group-version-kind` entries of a definition.
pub fn gvks_of(def: &Value) -> impl Iterator<Item = Gvk<'_>> {
    def.get("x-kubernetes-group-version-kind")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|g| {
            Some(Gvk {
                group: g.get("group")?.as_str()?,
                version: g.get("version")?.as_str()?,
                kind: g.get("kind")?.as_str()?,
            })
        })
}

/// A position in the schema tree, with `$ref`s resolved.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    set: &'a SchemaSet,
    schema: &'a Value,
}

impl std::fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let desc = self
            .schema
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("");
        write!(f, "Node({})", desc.chars().take(40).collect::<String>())
    }
}

impl<'a> Node<'a> {
    fn at(set: &'a SchemaSet, schema: &'a Value) -> Self {
        Node {
            set,
            schema: set.resolve(schema),
        }
    }

    /// The resolved schema JSON at this position.
    pub fn schema(&self) -> &'a Value {
        self.schema
    }

    fn properties(&self) -> Option<&'a Map<String, Value>> {
        self.schema.get("properties").and_then(Value::as_object)
    }

    /// The unresolved schema of a named property (it carries the `x-kubernetes-*` list metadata).
    fn property(&self, name: &str) -> Option<&'a Value> {
        self.properties()?.get(name)
    }

    /// The schema of a field: a declared property, or the value schema of a map
    /// (`additionalProperties`).
    pub fn field(&self, name: &str) -> Option<Node<'a>> {
        if let Some(p) = self.property(name) {
            return Some(Node::at(self.set, p));
        }
        match self.schema.get("additionalProperties") {
            Some(ap @ Value::Object(_)) => Some(Node::at(self.set, ap)),
            _ => None,
        }
    }

    /// The schema of a list's elements.
    pub fn items(&self) -> Option<Node<'a>> {
        self.schema.get("items").map(|i| Node::at(self.set, i))
    }

    /// Whether any content is accepted here: `x-kubernetes-preserve-unknown-fields`, free-form
    /// objects (RawExtension, FieldsV1) and non-object schemas (IntOrString, Quantity, Time…).
    pub fn accepts_anything(&self) -> bool {
        if self.schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
            return true;
        }
        if self.schema.get("additionalProperties") == Some(&Value::Bool(true)) {
            return true;
        }
        self.properties().is_none()
            && !self
                .schema
                .get("additionalProperties")
                .is_some_and(Value::is_object)
    }

    /// Patch and list metadata of a field of this object.
    pub fn field_meta(&self, name: &str) -> PatchMeta<'a> {
        match self.property(name) {
            Some(p) => {
                let mut meta = PatchMeta::of(p);
                let map_type = p
                    .get("x-kubernetes-map-type")
                    .or_else(|| self.set.resolve(p).get("x-kubernetes-map-type"));
                if map_type.and_then(Value::as_str) == Some("atomic") {
                    meta.atomic_map = true;
                }
                meta
            }
            None => PatchMeta::default(),
        }
    }
}

/// How a list field is merged by strategic merge patch (`x-kubernetes-patch-strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PatchStrategy {
    /// No strategy: a list in the patch replaces the live list; maps merge.
    #[default]
    Default,
    /// `merge`: lists merge element-wise (by merge key, or as a set of scalars).
    Merge,
    /// `replace`: the patch value replaces the live value (maps too).
    Replace,
}

/// Server-side apply's view of a list (`x-kubernetes-list-type`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ListType<'a> {
    /// `atomic` or unspecified: the list is one value.
    #[default]
    Atomic,
    /// `set`: scalars, each owned separately.
    Set,
    /// `map`: objects keyed by `x-kubernetes-list-map-keys`.
    Map(Vec<&'a str>),
}

/// Everything merging needs to know about one field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatchMeta<'a> {
    pub strategy: PatchStrategy,
    /// `retainKeys` was part of the strategy: `$retainKeys` directives apply to the value (or,
    /// for lists, to each element).
    pub retain_keys: bool,
    /// `x-kubernetes-patch-merge-key`, for merged lists of objects.
    pub merge_key: Option<&'a str>,
    pub list_type: ListType<'a>,
    /// `x-kubernetes-map-type: atomic` on the field or its type (`nodeSelector`,
    /// `LabelSelector`…): server-side apply owns the map as one value.
    pub atomic_map: bool,
}

impl<'a> PatchMeta<'a> {
    fn of(prop: &'a Value) -> Self {
        let mut meta = PatchMeta::default();
        if let Some(s) = prop.get("x-kubernetes-patch-strategy").and_then(Value::as_str) {
            for part in s.split(',') {
                match part.trim() {
                    "merge" => meta.strategy = PatchStrategy::Merge,
                    "replace" => meta.strategy = PatchStrategy::Replace,
                    "retainKeys" => meta.retain_keys = true,
                    _ => {}
                }
            }
        }
        meta.merge_key = prop.get("x-kubernetes-patch-merge-key").and_then(Value::as_str);
        meta.list_type = match prop.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(
                prop.get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default(),
            ),
            _ => ListType::Atomic,
        };
        meta
    }
}

/// The patch metadata of the field at `path` (field names; lists are stepped through
/// implicitly) in an object of kind `gvk`, e.g. `["spec","template","spec","containers"]`.
/// `None` when the kind has no schema or the path leaves it.
pub fn patch_meta(gvk: Gvk<'_>, path: &[&str]) -> Option<PatchMeta<'static>> {
    let (last, parents) = path.split_last()?;
    let mut node = schemas().root(gvk)?;
    for name in parents {
        node = step_into(node.field(name)?);
    }
    Some(step_into(node).field_meta(last))
}

/// Steps through list levels to the element schema.
fn step_into(mut node: Node<'_>) -> Node<'_> {
    while let Some(items) = node.items() {
        node = items;
    }
    node
}

// ---------------------------------------------------------------------------------------------
// Unknown fields (fieldValidation)
// ---------------------------------------------------------------------------------------------

/// The `fieldValidation` query parameter of create, update and patch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop them and answer with a `Warning` header for each (upstream's default).
    #[default]
    Warn,
    /// Reject the request with 400 BadRequest.
    Strict,
}

impl FieldValidation {
    /// Parses the query value; absent or empty means `Warn`.
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value.unwrap_or("") {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            "Strict" => Ok(FieldValidation::Strict),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }
}

/// The unknown fields of `obj` against the schema of `gvk`, in document order, with upstream's
/// paths (`spec.containers[0].imagez`). Kinds without a schema have none.
pub fn unknown_fields(gvk: Gvk<'_>, obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(root) = schemas().root(gvk) {
        let mut path = String::new();
        walk_unknown(root, obj, &mut path, &mut out);
    }
    out
}

fn walk_unknown(node: Node<'_>, value: &Value, path: &mut String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if node.accepts_anything() {
                return;
            }
            for (key, child) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match node.field(key) {
                    Some(child_node) => walk_unknown(child_node, child, path, out),
                    None => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            if let Some(item_node) = node.items() {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk_unknown(item_node, item, path, out);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}

/// Drops the fields the schema of `gvk` does not know, as upstream's decoding into typed objects
/// does (`fieldValidation=Ignore|Warn` store the object without them). Kinds without a schema
/// are left untouched.
pub fn prune_unknown_fields(gvk: Gvk<'_>, obj: &mut Value) {
    if let Some(root) = schemas().root(gvk) {
        prune(root, obj);
    }
}

fn prune(node: Node<'_>, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if node.accepts_anything() {
                return;
            }
            map.retain(|key, _| node.field(key).is_some());
            for (key, child) in map.iter_mut() {
                if let Some(child_node) = node.field(key) {
                    prune(child_node, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_node) = node.items() {
                items.iter_mut().for_each(|item| prune(item_node, item));
            }
        }
        _ => {}
    }
}

/// The whole `fieldValidation` step for a create, update or patch of kind `gvk`: reports unknown
/// fields of `obj` (the object to store) and duplicate keys of the raw request `body` (when
/// given) per `mode`, then prunes the unknown fields. `Ok` carries the `Warning` texts (only for
/// `Warn`); `Strict` answers 400 when anything was found.
pub fn validate_and_prune(
    gvk: Gvk<'_>,
    body: Option<&[u8]>,
    obj: &mut Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let warnings = match body {
        Some(b) => check_fields(gvk, b, obj, mode)?,
        None => check_unknown_fields(gvk, obj, mode)?,
    };
    prune_unknown_fields(gvk, obj);
    Ok(warnings)
}

/// Applies `fieldValidation` to a request body of kind `gvk`: `Ok` with the warnings to send
/// (`unknown field "spec.foo"`, one per field, only for `Warn`), or the 400 `Strict` answers with:
/// `Pod in version "v1" cannot be handled as a Pod: strict decoding error: unknown field "…"`.
pub fn check_unknown_fields(
    gvk: Gvk<'_>,
    obj: &Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let problems = unknown_fields(gvk, obj)
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    answer(gvk, problems, mode)
}

/// Like [`check_unknown_fields`], and also reports keys repeated in the raw JSON `body`
/// (`duplicate field "metadata.name"`), which decoding into a `Value` silently collapses.
/// `obj` is `body` decoded.
pub fn check_fields(
    gvk: Gvk<'_>,
    body: &[u8],
    obj: &Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let problems = unknown_fields(gvk, obj)
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .chain(
            duplicate_fields(body)
                .iter()
                .map(|f| format!("duplicate field {f:?}")),
        )
        .collect();
    answer(gvk, problems, mode)
}

fn answer(gvk: Gvk<'_>, problems: Vec<String>, mode: FieldValidation) -> Result<Vec<String>, ApiError> {
    if problems.is_empty() || mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    match mode {
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
            problems.join(", "),
            kind = gvk.kind,
            version = gvk.version,
        ))),
        _ => Ok(problems),
    }
}

/// The paths of keys that occur twice in one JSON object of `body`, in document order
/// (`metadata.name`, `spec.containers[0].image`). A body that is not JSON has none (decoding
/// reports that error elsewhere).
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = DuplicateFinder {
        path: String::new(),
        out: &mut out,
    };
    match serde::de::DeserializeSeed::deserialize(seed, &mut de) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

/// A serde visitor that walks any JSON and records repeated object keys with their paths.
struct DuplicateFinder<'a> {
    path: String,
    out: &'a mut Vec<String>,
}

impl DuplicateFinder<'_> {
    fn child(&mut self, path: String) -> DuplicateFinder<'_> {
        DuplicateFinder { path, out: self.out }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for DuplicateFinder<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DuplicateFinder<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                self.out.push(path.clone());
            }
            map.next_value_seed(self.child(path))?;
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let path = format!("{}[{i}]", self.path);
            if seq.next_element_seed(self.child(path))?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POD: Gvk<'static> = Gvk {
        group: "",
        version: "v1",
        kind: "Pod",
    };
    const DEPLOY: Gvk<'static> = Gvk {
        group: "apps",
        version: "v1",
        kind: "Deployment",
    };

    #[test]
    fn loads_all_definitions_and_indexes_kinds() {
        let s = schemas();
        assert_eq!(s.definitions().len(), 638);
        assert_eq!(s.name_of(POD), Some("io.k8s.api.core.v1.Pod"));
        assert_eq!(s.name_of(DEPLOY), Some("io.k8s.api.apps.v1.Deployment"));
        assert_eq!(
            s.name_of(Gvk::new("autoscaling", "v1", "Scale")),
            Some("io.k8s.api.autoscaling.v1.Scale")
        );
        assert!(s.name_of(Gvk::new("x.io", "v1", "Nope")).is_none());
        // every stored kind of the registry has a schema
        for r in crate::registry::RESOURCES {
            assert!(
                s.name_of(Gvk::new(r.group, r.version, r.kind)).is_some(),
                "{} {}",
                r.api_version(),
                r.kind
            );
        }
    }

    #[test]
    fn resolves_refs_through_properties() {
        let pod = schemas().root(POD).unwrap();
        let container = pod
            .field("spec")
            .and_then(|s| s.field("containers"))
            .and_then(|c| c.items())
            .unwrap();
        assert!(container.schema()["properties"].get("image").is_some());
        let labels = pod.field("metadata").unwrap().field("labels").unwrap();
        assert!(labels.field("anything").is_some());
    }

    #[test]
    fn unknown_fields_have_upstream_paths() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"any": "thing"}, "annotations": {"a": "b"},
                         "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {"f:x": {}}}}]},
            "spec": {
                "containers": [
                    {"name": "a", "image": "x", "resources": {"limits": {"cpu": "1", "memory": 5}},
                     "ports": [{"containerPort": 80, "bogusPort": 1}]},
                    {"name": "b", "imagez": "y", "livenessProbe": {"httpGet": {"port": "http", "path": "/"}}}
                ],
                "foo": {"bar": 1},
                "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1Gi"}}]
            },
            "bogus": true
        });
        assert_eq!(
            unknown_fields(POD, &pod),
            vec![
                "spec.containers[0].ports[0].bogusPort",
                "spec.containers[1].imagez",
                "spec.foo",
                "bogus"
            ]
        );
        let clean = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "creationTimestamp": null},
            "spec": {"replicas": 1, "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
                     "template": {"metadata": {"labels": {"a": "b"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert!(unknown_fields(DEPLOY, &clean).is_empty());
        assert!(unknown_fields(Gvk::new("x.io", "v1", "Crd"), &json!({"a": 1})).is_empty());
    }

    #[test]
    fn strict_and_warn_answers() {
        let pod = json!({"spec": {"containers": [{"name": "a", "imagez": "x"}]}});
        let e = check_unknown_fields(POD, &pod, FieldValidation::Strict).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(e.reason, "BadRequest");
        assert_eq!(
            e.message,
            "Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.containers[0].imagez\""
        );
        let two = json!({"a": 1, "b": 2});
        let e = check_unknown_fields(DEPLOY, &two, FieldValidation::Strict).unwrap_err();
        assert!(e.message.ends_with(
            "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"a\", unknown field \"b\""
        ));
        assert_eq!(
            check_unknown_fields(POD, &pod, FieldValidation::Warn).unwrap(),
            vec!["unknown field \"spec.containers[0].imagez\""]
        );
        assert!(check_unknown_fields(POD, &pod, FieldValidation::Ignore)
            .unwrap()
            .is_empty());
        assert_eq!(FieldValidation::parse(None).unwrap(), FieldValidation::Warn);
        assert_eq!(
            FieldValidation::parse(Some("Strict")).unwrap(),
            FieldValidation::Strict
        );
        assert_eq!(FieldValidation::parse(Some("strict")).unwrap_err().code, 400);
    }

    #[test]
    fn duplicate_fields_are_found_in_the_raw_body() {
        let body = br#"{"metadata":{"name":"a","name":"b"},"spec":{"containers":[{"name":"c","image":"x","image":"y"}],
                        "replicas":1},"spec":{}}"#;
        assert_eq!(
            duplicate_fields(body),
            vec!["metadata.name", "spec.containers[0].image", "spec"]
        );
        assert!(duplicate_fields(br#"{"a":{"b":1},"c":{"b":2}}"#).is_empty());
        assert!(duplicate_fields(b"not json").is_empty());
        let obj: Value = serde_json::from_slice(br#"{"spec":{"bogus":1,"bogus":2}}"#).unwrap();
        let e = check_fields(
            POD,
            br#"{"spec":{"bogus":1,"bogus":2}}"#,
            &obj,
            FieldValidation::Strict,
        )
        .unwrap_err();
        assert!(e.message.ends_with(
            "strict decoding error: unknown field \"spec.bogus\", duplicate field \"spec.bogus\""
        ));
        assert_eq!(
            check_fields(
                POD,
                br#"{"kind":"Pod","kind":"Pod"}"#,
                &json!({"kind": "Pod"}),
                FieldValidation::Warn
            )
            .unwrap(),
            vec!["duplicate field \"kind\""]
        );
    }

    #[test]
    fn unknown_fields_are_pruned_unless_strict() {
        let mut pod = json!({"metadata": {"name": "p", "labels": {"x": "y"}, "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "i", "imagez": "j"}]}, "extra": []});
        let warnings = validate_and_prune(POD, None, &mut pod, FieldValidation::Warn).unwrap();
        assert_eq!(
            warnings,
            vec![
                "unknown field \"metadata.bogus\"",
                "unknown field \"spec.containers[0].imagez\"",
                "unknown field \"extra\""
            ]
        );
        assert_eq!(
            pod,
            json!({"metadata": {"name": "p", "labels": {"x": "y"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}})
        );
        let mut again = json!({"spec": {"nodeName": "n", "nodeNamez": "m"}});
        let body = br#"{"spec":{"nodeName":"n","nodeNamez":"m"}}"#;
        assert!(
            validate_and_prune(POD, Some(body), &mut again, FieldValidation::Ignore)
                .unwrap()
                .is_empty()
        );
        assert_eq!(again, json!({"spec": {"nodeName": "n"}}));
        let mut strict = json!({"spec": {"nodeNamez": "m"}});
        assert_eq!(
            validate_and_prune(POD, None, &mut strict, FieldValidation::Strict)
                .unwrap_err()
                .code,
            400
        );
        let mut crd = json!({"anything": {"goes": 1}});
        prune_unknown_fields(Gvk::new("x.io", "v1", "Thing"), &mut crd);
        assert_eq!(crd, json!({"anything": {"goes": 1}}));
    }

    #[test]
    fn patch_metadata_matches_the_schema() {
        let c = patch_meta(POD, &["spec", "containers"]).unwrap();
        assert_eq!(c.strategy, PatchStrategy::Merge);
        assert_eq!(c.merge_key, Some("name"));
        assert_eq!(c.list_type, ListType::Map(vec!["name"]));
        let ports = patch_meta(POD, &["spec", "containers", "ports"]).unwrap();
        assert_eq!(ports.merge_key, Some("containerPort"));
        assert_eq!(ports.list_type, ListType::Map(vec!["containerPort", "protocol"]));
        let vols = patch_meta(DEPLOY, &["spec", "template", "spec", "volumes"]).unwrap();
        assert_eq!(vols.strategy, PatchStrategy::Merge);
        assert!(vols.retain_keys);
        let strategy = patch_meta(DEPLOY, &["spec", "strategy"]).unwrap();
        assert_eq!(strategy.strategy, PatchStrategy::Default);
        assert!(strategy.retain_keys);
        let fin = patch_meta(POD, &["metadata", "finalizers"]).unwrap();
        assert_eq!(fin.strategy, PatchStrategy::Merge);
        assert_eq!(fin.merge_key, None);
        assert_eq!(fin.list_type, ListType::Set);
        let taints = patch_meta(Gvk::new("", "v1", "Node"), &["spec", "taints"]).unwrap();
        assert_eq!(taints.strategy, PatchStrategy::Default);
        assert_eq!(taints.list_type, ListType::Atomic);
        let pdb = patch_meta(
            Gvk::new("policy", "v1", "PodDisruptionBudget"),
            &["spec", "selector"],
        )
        .unwrap();
        assert_eq!(pdb.strategy, PatchStrategy::Replace);
        assert!(patch_meta(POD, &["spec", "nope", "x"]).is_none());
        assert!(patch_meta(POD, &["spec", "nodeSelector"]).unwrap().atomic_map);
        assert!(patch_meta(DEPLOY, &["spec", "selector"]).unwrap().atomic_map);
        assert!(!patch_meta(DEPLOY, &["spec", "template"]).unwrap().atomic_map);
    }
}
