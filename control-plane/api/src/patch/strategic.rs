//! Strategic merge patch (`application/strategic-merge-patch+json`) on JSON values.
//!
//! The semantics are upstream's (`apimachinery/pkg/util/strategicpatch`, applied the way the
//! apiserver applies it: parallel delete lists merged, unmatched nulls ignored):
//!
//! * maps merge recursively; `null` deletes a key;
//! * a list field whose schema says `x-kubernetes-patch-strategy: merge` merges element-wise:
//!   objects by `x-kubernetes-patch-merge-key`, scalars as a union (e.g. `finalizers`);
//!   every other list is replaced by the patch's list;
//! * a field with strategy `replace` is replaced whole;
//! * directives: `$patch: replace|delete` in a map, `{"$patch": "delete", <key>: …}` and
//!   `{"$patch": "replace"}` elements in a merged list, `$setElementOrder/<field>` (final order
//!   of a merged list), `$deleteFromPrimitiveList/<field>` (scalars to remove) and
//!   `$retainKeys` (keys to keep, for `retainKeys` fields such as volume sources).
//!
//! The schema is walked alongside the data through [`Node`]; where the data leaves the schema
//! (unknown fields) merging continues without metadata, i.e. lists are replaced.
//!
//! Ordering of merged lists follows upstream: items named in the patch (or in
//! `$setElementOrder`) take the patch's order, items only on the server keep their relative
//! order and are interleaved where the live list had them.
//!
//! One deliberate difference: values new to the object (absent from the original) are merged
//! into an empty value instead of being copied verbatim, so directives and nulls inside them
//! never reach storage.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::schema::{Node, PatchMeta, PatchStrategy};

type Obj = Map<String, Value>;

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList";

/// Why a strategic merge patch could not be applied; the texts are upstream's.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SmpError {
    #[error("invalid patch format of primitive list")]
    PrimitiveListFormat,
    #[error("invalid patch format of retainKeys")]
    RetainKeysFormat,
    #[error("invalid patch format of setElementOrder list")]
    SetElementOrderFormat,
    #[error("lists of lists are not supported")]
    ListOfLists,
    #[error("map: {map} does not contain declared merge key: {key}")]
    NoMergeKey { map: String, key: String },
    #[error("unknown patch type: {kind} in map: {map}")]
    BadPatchType { kind: String, map: String },
    #[error("merging lists cannot yet be specified in the patch")]
    MergeDirectiveInList,
    #[error("cannot merge lists without merge key for {field}")]
    MissingMergeKey { field: String },
    #[error("list element types are not identical: {lists}")]
    MixedElementTypes { lists: String },
    #[error("The order in patch list:\n{patch}\n doesn't match $setElementOrder list:\n{order}\n")]
    OrderMismatch { patch: String, order: String },
}

/// How an error is answered, following the apiserver's classification.
pub(crate) enum SmpErrorClass {
    BadRequest,
    Unprocessable,
    Internal,
}

impl SmpError {
    pub(crate) fn class(&self) -> SmpErrorClass {
        match self {
            SmpError::PrimitiveListFormat | SmpError::RetainKeysFormat | SmpError::SetElementOrderFormat => {
                SmpErrorClass::BadRequest
            }
            SmpError::ListOfLists => SmpErrorClass::Unprocessable,
            _ => SmpErrorClass::Internal,
        }
    }
}

/// Applies `patch` to `original` where both are JSON objects, guided by `schema` (the kind's
/// top-level schema node, or `None` to merge without metadata).
pub fn merge_objects(original: Obj, patch: Obj, schema: Option<Node<'_>>) -> Result<Obj, SmpError> {
    merge_map(original, patch, schema)
}

fn merge_map(mut original: Obj, mut patch: Obj, schema: Option<Node<'_>>) -> Result<Obj, SmpError> {
    if let Some(d) = patch.get(DIRECTIVE) {
        return match d.as_str() {
            Some("replace") => {
                patch.remove(DIRECTIVE);
                Ok(patch)
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(SmpError::BadPatchType {
                kind: go_fmt(d),
                map: go_fmt(&Value::Object(patch.clone())),
            }),
        };
    }
    apply_retain_keys(&mut original, &mut patch)?;
    apply_element_orders(&mut original, &mut patch, schema)?;

    for (k, pv) in patch {
        if k.starts_with(SET_ORDER) {
            // Handled (and removed) above; a malformed key without '/' ends here.
            return Err(SmpError::SetElementOrderFormat);
        }
        let (key, delete_list) = match k.strip_prefix(DELETE_PRIMITIVE) {
            Some(rest) => match rest.strip_prefix('/') {
                Some(field) => (field.to_string(), true),
                None => return Err(SmpError::PrimitiveListFormat),
            },
            None => (k, false),
        };
        if pv.is_null() {
            original.remove(&key);
            continue;
        }
        let meta = schema.map(|s| s.field_meta(&key)).unwrap_or_default();
        let child = schema.and_then(|s| s.field(&key));
        match original.get_mut(&key) {
            None => {
                if !delete_list {
                    let v = fresh_value(pv, &meta, child, &key)?;
                    original.insert(key, v);
                }
            }
            Some(slot) => {
                let ov = slot.take();
                *slot = match (ov, pv) {
                    (Value::Object(o), Value::Object(p)) => {
                        if meta.strategy == PatchStrategy::Replace {
                            Value::Object(p)
                        } else {
                            Value::Object(merge_map(o, p, child)?)
                        }
                    }
                    (Value::Array(o), Value::Array(p)) => {
                        Value::Array(merge_list_field(o, p, &meta, child, delete_list, &key)?)
                    }
                    (ov, pv) => {
                        if delete_list {
                            ov
                        } else {
                            pv
                        }
                    }
                };
            }
        }
    }
    Ok(original)
}

/// A patch value for a key the original lacks: merged into an empty value, so that nulls and
/// directives are resolved rather than stored.
fn fresh_value(
    pv: Value,
    meta: &PatchMeta<'_>,
    child: Option<Node<'_>>,
    field: &str,
) -> Result<Value, SmpError> {
    Ok(match pv {
        Value::Object(p) if meta.strategy != PatchStrategy::Replace => {
            Value::Object(merge_map(Map::new(), p, child)?)
        }
        Value::Array(p) => Value::Array(merge_list_field(Vec::new(), p, meta, child, false, field)?),
        other => other,
    })
}

/// `mergeSliceHandler`: merged lists merge, all others are replaced by the patch.
fn merge_list_field(
    original: Vec<Value>,
    patch: Vec<Value>,
    meta: &PatchMeta<'_>,
    list_schema: Option<Node<'_>>,
    delete_list: bool,
    field: &str,
) -> Result<Vec<Value>, SmpError> {
    if meta.strategy == PatchStrategy::Merge || delete_list {
        let items = list_schema.and_then(|s| s.items());
        merge_slice(original, patch, items, meta.merge_key, delete_list, field)
    } else {
        Ok(patch)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ElementKind {
    Map,
    Scalar,
}

/// The common kind of the elements of the lists, or an error for lists of lists and mixes.
fn element_kind(lists: &[&[Value]]) -> Result<Option<ElementKind>, SmpError> {
    let mut kind: Option<(u8, ElementKind)> = None;
    for list in lists {
        for v in list.iter() {
            let tag = match v {
                Value::Array(_) => return Err(SmpError::ListOfLists),
                Value::Object(_) => (0, ElementKind::Map),
                Value::String(_) => (1, ElementKind::Scalar),
                Value::Number(_) => (2, ElementKind::Scalar),
                Value::Bool(_) => (3, ElementKind::Scalar),
                Value::Null => (4, ElementKind::Scalar),
            };
            match kind {
                None => kind = Some(tag),
                Some(k) if k.0 != tag.0 => {
                    let rendered: Vec<String> =
                        lists.iter().map(|l| go_fmt(&Value::Array(l.to_vec()))).collect();
                    return Err(SmpError::MixedElementTypes {
                        lists: format!("[{}]", rendered.join(" ")),
                    });
                }
                Some(_) => {}
            }
        }
    }
    Ok(kind.map(|k| k.1))
}

fn merge_slice(
    original: Vec<Value>,
    patch: Vec<Value>,
    items: Option<Node<'_>>,
    merge_key: Option<&str>,
    delete_list: bool,
    field: &str,
) -> Result<Vec<Value>, SmpError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let kind = element_kind(&[&original, &patch])?.unwrap_or(ElementKind::Scalar);
    if kind == ElementKind::Scalar {
        if delete_list {
            return Ok(original.into_iter().filter(|v| !patch.contains(v)).collect());
        }
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(patch.iter()) {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        let (in_patch, server_only) = partition(merged, &patch, None);
        return Ok(normalize_order(in_patch, server_only, &patch, &original, None));
    }
    let key = merge_key.ok_or_else(|| SmpError::MissingMergeKey {
        field: field.to_string(),
    })?;
    let (original, patch) = apply_list_directives(original, patch, key)?;
    let server_order = original.clone();
    let merged = merge_by_key(original, &patch, key, items)?;
    let (in_patch, server_only) = partition(merged, &patch, Some(key));
    Ok(normalize_order(
        in_patch,
        server_only,
        &patch,
        &server_order,
        Some(key),
    ))
}

/// `mergeSliceWithSpecialElements`: `$patch: delete` elements remove matching originals,
/// `$patch: replace` makes the patch's plain elements the whole list.
fn apply_list_directives(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
) -> Result<(Vec<Value>, Vec<Value>), SmpError> {
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for v in patch {
        let directive = v.get(DIRECTIVE).cloned();
        match directive {
            None => plain.push(v),
            Some(d) => match d.as_str() {
                Some("delete") => match v.get(key) {
                    Some(kv) => original.retain(|o| o.get(key) != Some(kv)),
                    None => return Err(no_merge_key(&v, key)),
                },
                Some("replace") => replace = true,
                Some("merge") => return Err(SmpError::MergeDirectiveInList),
                _ => {
                    return Err(SmpError::BadPatchType {
                        kind: go_fmt(&d),
                        map: go_fmt(&v),
                    })
                }
            },
        }
    }
    if replace {
        Ok((plain, Vec::new()))
    } else {
        Ok((original, plain))
    }
}

/// `mergeSliceWithoutSpecialElements`: patch elements merge into the original element with the
/// same merge-key value, or are appended.
fn merge_by_key(
    mut original: Vec<Value>,
    patch: &[Value],
    key: &str,
    items: Option<Node<'_>>,
) -> Result<Vec<Value>, SmpError> {
    for v in patch {
        let Value::Object(pm) = v else {
            return Err(no_merge_key(v, key));
        };
        let Some(kv) = pm.get(key) else {
            return Err(no_merge_key(v, key));
        };
        match original.iter_mut().find(|o| o.get(key) == Some(kv)) {
            Some(slot) => {
                let o = match slot.take() {
                    Value::Object(o) => o,
                    _ => Map::new(),
                };
                *slot = Value::Object(merge_map(o, pm.clone(), items)?);
            }
            None => original.push(Value::Object(merge_map(Map::new(), pm.clone(), items)?)),
        }
    }
    Ok(original)
}

fn no_merge_key(v: &Value, key: &str) -> SmpError {
    SmpError::NoMergeKey {
        map: go_fmt(v),
        key: key.to_string(),
    }
}

/// Where `item` sits in `list`, by merge-key value for objects or by equality for scalars.
fn position(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    match key {
        Some(k) => {
            let kv = item.get(k)?;
            list.iter().position(|e| e.get(k) == Some(kv))
        }
        None => list.iter().position(|e| e == item),
    }
}

/// Splits `merged` into the items present in `by` and the others, keeping order.
fn partition(merged: Vec<Value>, by: &[Value], key: Option<&str>) -> (Vec<Value>, Vec<Value>) {
    merged.into_iter().partition(|v| position(by, v, key).is_some())
}

/// `normalizeElementOrder`: sort the patch items by `patch_order` and the server-only items by
/// `server_order`, then interleave them by their places in the live list.
fn normalize_order(
    mut in_patch: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    in_patch.sort_by_key(|v| position(patch_order, v, key).unwrap_or(usize::MAX));
    server_only.sort_by_key(|v| position(server_order, v, key).unwrap_or(usize::MAX));
    merge_sorted(server_only, in_patch, server_order, key)
}

/// `mergeSortedSlice`: walks both lists, taking the server-only item first only when both items
/// are in the live list and the server-only one came first there.
fn merge_sorted(
    left: Vec<Value>,
    right: Vec<Value>,
    server_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!(
                (position(server_order, l, key), position(server_order, r, key)),
                (Some(li), Some(ri)) if li < ri
            ),
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

/// `$retainKeys`: drop the original's keys not listed; the patch may only set listed keys.
fn apply_retain_keys(original: &mut Obj, patch: &mut Obj) -> Result<(), SmpError> {
    let Some(list) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(list) = list else {
        return Err(SmpError::RetainKeysFormat);
    };
    let keep: HashSet<&str> = list.iter().filter_map(Value::as_str).collect();
    for (k, v) in patch.iter() {
        if v.is_null() || k.starts_with(DELETE_PRIMITIVE) || k.starts_with(SET_ORDER) {
            continue;
        }
        if !keep.contains(k.as_str()) {
            return Err(SmpError::RetainKeysFormat);
        }
    }
    original.retain(|k, _| keep.contains(k.as_str()));
    Ok(())
}

/// `$setElementOrder/<field>`: merges the field's list (if patched) and puts the result in the
/// order the directive gives, items not named keeping their live places.
fn apply_element_orders(
    original: &mut Obj,
    patch: &mut Obj,
    schema: Option<Node<'_>>,
) -> Result<(), SmpError> {
    let directives: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(&format!("{SET_ORDER}/")))
        .cloned()
        .collect();
    for directive in directives {
        let Some(order) = patch.remove(&directive) else {
            continue;
        };
        let field = &directive[SET_ORDER.len() + 1..];
        let Value::Array(order) = order else {
            return Err(SmpError::SetElementOrderFormat);
        };
        let original_list = match original.get(field) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(_) => return Err(SmpError::SetElementOrderFormat),
        };
        let patch_list = match patch.get(field) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(_) => return Err(SmpError::SetElementOrderFormat),
        };
        let meta = schema.map(|s| s.field_meta(field)).unwrap_or_default();
        let child = schema.and_then(|s| s.field(field));
        let key = meta.merge_key;
        if let Some(p) = &patch_list {
            check_order(p, &order, key)?;
        }
        let merged = match (&original_list, patch_list) {
            (None, None) => continue,
            (Some(o), None) => o.clone(),
            (None, Some(p)) => merge_list_field(Vec::new(), p, &meta, child, false, field)?,
            (Some(o), Some(p)) => merge_list_field(o.clone(), p, &meta, child, false, field)?,
        };
        let (named, server_only) = partition(merged, &order, key);
        let live = original_list.unwrap_or_default();
        let result = normalize_order(named, server_only, &order, &live, key);
        original.insert(field.to_string(), Value::Array(result));
        patch.remove(field);
    }
    Ok(())
}

/// `validatePatchWithSetOrderList`: the patch's (non-delete) items must appear in the order
/// list, in the same relative order.
fn check_order(patch: &[Value], order: &[Value], key: Option<&str>) -> Result<(), SmpError> {
    if patch.is_empty() || order.is_empty() {
        return Ok(());
    }
    let plain: Vec<&Value> = patch
        .iter()
        .filter(|v| key.is_none() || v.get(DIRECTIVE).is_none())
        .collect();
    let (mut pi, mut oi) = (0, 0);
    while pi < plain.len() && oi < order.len() {
        let same = match key {
            Some(k) => {
                let l = plain[pi].get(k).ok_or_else(|| no_merge_key(plain[pi], k))?;
                let r = order[oi].get(k).ok_or_else(|| no_merge_key(&order[oi], k))?;
                l == r
            }
            None => plain[pi] == &order[oi],
        };
        if same {
            pi += 1;
        }
        oi += 1;
    }
    if pi < plain.len() {
        return Err(SmpError::OrderMismatch {
            patch: go_fmt(&Value::Array(patch.to_vec())),
            order: go_fmt(&Value::Array(order.to_vec())),
        });
    }
    Ok(())
}

/// Renders a value the way Go's `%v` prints decoded JSON (`map[a:1 b:[x y]]`), for messages.
fn go_fmt(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(go_fmt).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", m.get(k.as_str()).map(go_fmt).unwrap_or_default()))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
    }
}
