//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Every write records which manager set which fields, as upstream's structured-merge-diff
//! does: an `Update` entry for ordinary writes (create, update, patch), an `Apply` entry for
//! server-side apply. An apply merges the applier's intent into the live object by the schema's
//! list semantics (`x-kubernetes-list-type` map/set/atomic), removes fields the applier owned
//! before and no longer mentions (unless someone else owns them too), and fails with a 409
//! naming each field another manager owns with a different value — unless `force` transfers
//! ownership.
//!
//! Field sets are kept as sets of *leaf paths*, each a list of path elements in the FieldsV1
//! spelling: `f:<field>` for a field, `k:{"name":"x"}` for an element of a keyed list,
//! `v:<json>` for a member of a set, and `.` for "the element itself". FieldsV1 is the tree of
//! those paths.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::registry::ResourceType;
use crate::schema::{schemas, Gvk, ListType, Node};
use crate::status::{ApiError, Cause};

type Path = Vec<String>;
/// Leaf path → the value there (`Null` for `.` markers).
type Leaves = BTreeMap<Path, Value>;

/// Metadata fields nobody manages.
const UNMANAGED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

fn root(rt: &ResourceType) -> Option<Node<'static>> {
    schemas().root(Gvk::new(rt.group, rt.version, rt.kind))
}

/// The leaf paths of an object (what a manager who wrote it all would own).
fn leaves(rt: &ResourceType, obj: &Value, with_status: bool) -> Leaves {
    let mut out = Leaves::new();
    let Some(map) = obj.as_object() else { return out };
    let node = root(rt);
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => continue,
            "status" if !with_status => continue,
            "metadata" => {
                if let Some(m) = v.as_object() {
                    let meta_node = node.and_then(|n| n.field("metadata"));
                    let mut filtered = Map::new();
                    for (mk, mv) in m {
                        if !UNMANAGED_META.contains(&mk.as_str()) {
                            filtered.insert(mk.clone(), mv.clone());
                        }
                    }
                    let mut path = vec!["f:metadata".to_string()];
                    object_leaves(&filtered, meta_node, &mut path, &mut out);
                }
                continue;
            }
            _ => {}
        }
        let mut path = vec![format!("f:{k}")];
        field_leaves(v, node, k, &mut path, &mut out);
    }
    out
}

fn object_leaves(map: &Map<String, Value>, node: Option<Node<'_>>, path: &mut Path, out: &mut Leaves) {
    for (k, v) in map {
        path.push(format!("f:{k}"));
        field_leaves(v, node, k, path, out);
        path.pop();
    }
}

/// The leaves under field `name` (value `v`) of an object whose schema is `parent`.
fn field_leaves(v: &Value, parent: Option<Node<'_>>, name: &str, path: &mut Path, out: &mut Leaves) {
    let node = parent.and_then(|p| p.field(name));
    let list_type = parent.map(|p| p.field_meta(name).list_type).unwrap_or_default();
    match v {
        Value::Object(m) if !m.is_empty() && node.is_some_and(|n| !n.accepts_anything()) => {
            let before = out.len();
            object_leaves(m, node, path, out);
            if out.len() == before {
                out.insert(path.clone(), v.clone());
            }
        }
        Value::Array(items) if !items.is_empty() => match list_type {
            ListType::Map(keys) if items.iter().all(Value::is_object) => {
                let item_node = node.and_then(|n| n.items());
                for item in items {
                    let Some(obj) = item.as_object() else { continue };
                    path.push(key_element(obj, &keys));
                    path.push(".".into());
                    out.insert(path.clone(), Value::Null);
                    path.pop();
                    object_leaves(obj, item_node, path, out);
                    path.pop();
                }
            }
            ListType::Set => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone(), Value::Null);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone(), v.clone());
            }
        },
        _ => {
            out.insert(path.clone(), v.clone());
        }
    }
}

fn key_element(obj: &Map<String, Value>, keys: &[&str]) -> String {
    let mut k = Map::new();
    for key in keys {
        match obj.get(*key) {
            Some(v) => {
                k.insert((*key).to_string(), v.clone());
            }
            // A port's protocol defaults to TCP, and upstream's apply keys ports by the
            // defaulted value, so an intent that leaves it out names the same element.
            None if *key == "protocol" => {
                k.insert("protocol".into(), Value::String("TCP".into()));
            }
            None => {}
        }
    }
    format!("k:{}", Value::Object(k))
}

// ------------------------------------------------------------------------------- FieldsV1

fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for el in p {
            let entry = cur.entry(el.clone()).or_insert_with(|| json!({}));
            cur = match entry {
                Value::Object(m) => m,
                _ => unreachable!("entries are objects"),
            };
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn walk(m: &Map<String, Value>, path: &mut Path, out: &mut BTreeSet<Path>) {
        for (k, child) in m {
            path.push(k.clone());
            match child.as_object() {
                Some(c) if !c.is_empty() => walk(c, path, out),
                _ => {
                    out.insert(path.clone());
                }
            }
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    if let Some(m) = v.as_object() {
        walk(m, &mut Vec::new(), &mut out);
    }
    out
}

struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: Option<String>,
    time: Value,
    fields: BTreeSet<Path>,
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e.get("manager").and_then(Value::as_str).unwrap_or("").to_string(),
                    operation: e
                        .get("operation")
                        .and_then(Value::as_str)
                        .unwrap_or("Update")
                        .to_string(),
                    api_version: e
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                    time: e.get("time").cloned().unwrap_or(Value::Null),
                    fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(s) = e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn entry_index(
    entries: &[Entry],
    manager: &str,
    operation: &str,
    subresource: Option<&str>,
) -> Option<usize> {
    entries.iter().position(|e| {
        e.manager == manager && e.operation == operation && e.subresource.as_deref() == subresource
    })
}

/// Records an ordinary write (`Update`) by `manager`: it now owns every field whose value it
/// set or changed, taken away from other managers; fields that disappeared belong to nobody.
pub fn record_update(
    rt: &ResourceType,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let with_status = subresource == Some("status");
    let old_leaves = old.map(|o| leaves(rt, o, with_status)).unwrap_or_default();
    let new_leaves = leaves(rt, new, with_status);
    let changed: BTreeSet<Path> = new_leaves
        .iter()
        .filter(|(p, v)| old_leaves.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .collect();
    let removed: BTreeSet<Path> = old_leaves
        .keys()
        .filter(|p| !new_leaves.contains_key(*p))
        .cloned()
        .collect();
    let mut entries = read_entries(old.unwrap_or(new));
    if changed.is_empty() && removed.is_empty() {
        write_entries(new, entries);
        return;
    }
    for e in entries.iter_mut() {
        e.fields.retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    let api_version = rt.api_version();
    match entry_index(&entries, manager, "Update", subresource) {
        Some(i) => {
            entries[i].fields.extend(changed);
            entries[i].time = json!(now);
            entries[i].api_version = api_version;
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version,
            subresource: subresource.map(str::to_string),
            time: json!(now),
            fields: changed,
        }),
    }
    write_entries(new, entries);
}

/// Server-side apply of `intent` by `manager` onto `live` (`None`: the object does not exist
/// yet). Returns the new object with its managedFields, or a 409 listing the conflicts.
pub fn apply(
    rt: &ResourceType,
    live: Option<&Value>,
    intent: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    let applied = leaves(rt, intent, false);
    let empty = json!({});
    let live_obj = live.unwrap_or(&empty);
    let live_leaves = leaves(rt, live_obj, false);
    let mut entries = read_entries(live_obj);

    // Conflicts: another manager owns a field the intent sets to a different value.
    let mut conflicts: Vec<(String, String, Path)> = Vec::new();
    for e in &entries {
        if e.manager == manager && e.operation == "Apply" {
            continue;
        }
        for p in e.fields.intersection(&applied.keys().cloned().collect()) {
            if live_leaves.get(p) != applied.get(p) && p.last().map(String::as_str) != Some(".") {
                conflicts.push((e.manager.clone(), e.api_version.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(rt, intent, &conflicts));
    }

    // Merge the intent into the live object.
    let node = root(rt);
    let mut merged = merge(live_obj, intent, node);
    // Fields this manager applied before and no longer mentions, owned by nobody else, go.
    let previous = entry_index(&entries, manager, "Apply", None)
        .map(|i| entries[i].fields.clone())
        .unwrap_or_default();
    let others: BTreeSet<Path> = entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    for p in previous
        .iter()
        .filter(|p| !applied.contains_key(*p) && !others.contains(*p))
    {
        remove_path(&mut merged, p);
    }

    // Ownership: the applier owns what it applied; forced fields leave their old owners.
    let changed: BTreeSet<Path> = applied
        .iter()
        .filter(|(p, v)| live_leaves.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .collect();
    for e in entries.iter_mut() {
        if e.manager == manager && e.operation == "Apply" {
            continue;
        }
        e.fields.retain(|p| !changed.contains(p));
    }
    let api_version = rt.api_version();
    let fields: BTreeSet<Path> = applied.keys().cloned().collect();
    match entry_index(&entries, manager, "Apply", None) {
        Some(i) => {
            entries[i].fields = fields;
            entries[i].time = json!(now);
            entries[i].api_version = api_version;
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            api_version,
            subresource: None,
            time: json!(now),
            fields,
        }),
    }
    write_entries(&mut merged, entries);
    Ok(merged)
}

fn conflict_error(rt: &ResourceType, intent: &Value, conflicts: &[(String, String, Path)]) -> ApiError {
    let name = intent
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let causes: Vec<Cause> = conflicts
        .iter()
        .map(|(m, av, p)| {
            Cause::new(
                "FieldManagerConflict",
                render_path(p),
                format!("conflict with {m:?} using {av}"),
            )
        })
        .collect();
    let message = if conflicts.len() == 1 {
        let (m, av, p) = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: conflict with {m:?} using {av}: {}",
            render_path(p)
        )
    } else {
        let mut by_manager: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (m, av, p) in conflicts {
            by_manager
                .entry((m.clone(), av.clone()))
                .or_default()
                .push(render_path(p));
        }
        let parts: Vec<String> = by_manager
            .iter()
            .map(|((m, av), ps)| {
                format!(
                    "conflicts with {m:?} using {av}:\n{}",
                    ps.iter().map(|p| format!("- {p}")).collect::<Vec<_>>().join("\n")
                )
            })
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            parts.join("\n")
        )
    };
    let mut e = ApiError::new(409, "Conflict", message);
    e.details = Some(Box::new(crate::status::Details {
        name: name.to_string(),
        group: rt.group.to_string(),
        kind: rt.plural.to_string(),
        causes,
        retry_after_seconds: None,
    }));
    e
}

/// `.spec.template.spec.containers[name="nginx"].image`
fn render_path(p: &Path) -> String {
    let mut s = String::new();
    for el in p {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(k) {
                let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", inner.join(",")));
            }
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// Structured merge of `intent` onto `live`.
fn merge(live: &Value, intent: &Value, node: Option<Node<'_>>) -> Value {
    match (live, intent) {
        (Value::Object(l), Value::Object(i)) => {
            let mut out = l.clone();
            for (k, iv) in i {
                let child = node.and_then(|n| n.field(k));
                let list_type = node.map(|n| n.field_meta(k).list_type).unwrap_or_default();
                let merged = match (l.get(k), iv) {
                    (Some(Value::Array(la)), Value::Array(ia)) => merge_list(la, ia, list_type, child),
                    (Some(lv @ Value::Object(_)), Value::Object(_))
                        if child.is_some_and(|c| !c.accepts_anything())
                            || k == "metadata"
                            || k == "labels"
                            || k == "annotations" =>
                    {
                        merge(lv, iv, child)
                    }
                    _ => iv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        _ => intent.clone(),
    }
}

fn merge_list(live: &[Value], intent: &[Value], list_type: ListType<'_>, node: Option<Node<'_>>) -> Value {
    match list_type {
        ListType::Map(keys) => {
            let item_node = node.and_then(|n| n.items());
            let key_of = |v: &Value| v.as_object().map(|o| key_element(o, &keys));
            let mut out: Vec<Value> = live.to_vec();
            for item in intent {
                let k = key_of(item);
                match out.iter().position(|l| key_of(l) == k) {
                    Some(i) => out[i] = merge(&out[i], item, item_node),
                    None => out.push(item.clone()),
                }
            }
            Value::Array(out)
        }
        ListType::Set => {
            let mut out: Vec<Value> = live.to_vec();
            for item in intent {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Value::Array(out)
        }
        ListType::Atomic => Value::Array(intent.to_vec()),
    }
}

/// Removes the field, element or member a leaf path points at.
fn remove_path(obj: &mut Value, path: &Path) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if last == "." {
        // The element itself: remove it from its list.
        if let Some((elem, list_path)) = parents.split_last() {
            if let Some(Value::Array(list)) = walk_mut(obj, list_path) {
                list.retain(|item| !element_matches(item, elem));
            }
        }
        return;
    }
    if let Some(v) = last.strip_prefix("v:") {
        if let Some(Value::Array(list)) = walk_mut(obj, parents) {
            list.retain(|item| *item != serde_json::from_str::<Value>(v).unwrap_or(Value::Null));
        }
        return;
    }
    if let (Some(f), Some(Value::Object(m))) = (last.strip_prefix("f:"), walk_mut(obj, parents)) {
        m.remove(f);
    }
}

fn element_matches(item: &Value, el: &str) -> bool {
    match (
        el.strip_prefix("k:")
            .and_then(|k| serde_json::from_str::<Value>(k).ok()),
        item.as_object(),
    ) {
        (Some(Value::Object(keys)), Some(o)) => keys.iter().all(|(k, v)| o.get(k) == Some(v)),
        _ => false,
    }
}

fn walk_mut<'a>(mut cur: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    for el in path {
        cur = if let Some(f) = el.strip_prefix("f:") {
            cur.as_object_mut()?.get_mut(f)?
        } else if el.starts_with("k:") {
            cur.as_array_mut()?.iter_mut().find(|i| element_matches(i, el))?
        } else {
            return None;
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "nginx", "image": image}]}}}})
    }

    #[test]
    fn apply_conflicts_with_another_managers_field_unless_forced() {
        let rt = find("apps", "v1", "deployments").unwrap();
        let mut live = deploy(2, "nginx:1");
        record_update(rt, None, &mut live, "kubectl-client-side-apply", None, "t0");
        let err = apply(rt, Some(&live), &deploy(3, "nginx:1"), "kubectl", false, "t1").unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.message, "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas");
        assert_eq!(
            err.to_status()["details"]["causes"][0]["reason"],
            "FieldManagerConflict"
        );
        // Same values: no conflict, shared ownership.
        let same = apply(rt, Some(&live), &deploy(2, "nginx:1"), "kubectl", false, "t1").unwrap();
        assert_eq!(same["spec"]["replicas"], 2);
        let forced = apply(rt, Some(&live), &deploy(3, "nginx:2"), "kubectl", true, "t2").unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        assert_eq!(
            forced["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert!(managers.contains(&"kubectl"));
    }

    #[test]
    fn apply_removes_fields_it_no_longer_mentions_and_merges_keyed_lists() {
        let rt = find("apps", "v1", "deployments").unwrap();
        let mut first = deploy(2, "nginx:1");
        first["metadata"]["labels"]["extra"] = json!("x");
        let live = apply(rt, None, &first, "mgr", false, "t0").unwrap();
        assert_eq!(live["metadata"]["labels"]["extra"], "x");
        let second = deploy(2, "nginx:1");
        let after = apply(rt, Some(&live), &second, "mgr", false, "t1").unwrap();
        assert!(after["metadata"]["labels"].get("extra").is_none(), "{after}");
        // A sidecar added by another manager survives this manager's apply.
        let mut other = after.clone();
        other["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "busybox"}));
        record_update(rt, Some(&after), &mut other, "someone", None, "t2");
        let again = apply(rt, Some(&other), &deploy(2, "nginx:9"), "mgr", false, "t3").unwrap();
        let names: Vec<&str> = again["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["nginx", "side"]);
        assert_eq!(
            again["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:9"
        );
    }

    #[test]
    fn fields_v1_round_trips() {
        let rt = find("apps", "v1", "deployments").unwrap();
        let paths: BTreeSet<Path> = leaves(rt, &deploy(1, "x"), false).into_keys().collect();
        let v = to_fields_v1(&paths);
        assert!(
            v["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"]["."].is_object(),
            "{v}"
        );
        assert_eq!(from_fields_v1(&v), paths);
    }
}
