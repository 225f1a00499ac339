//! An in-memory `ApiClient` for the node gate's tests: objects keyed like the store, a global
//! resourceVersion, `status` subresource semantics (create drops status; updates of the main
//! resource keep it; `status` writes change only it), optimistic concurrency on updates, and
//! RFC 7386 merge patches. Enough of the API server's behaviour to make the gate's writes
//! meaningful, and nothing more.

// `ApiError`'s size is the `ApiClient` trait's choice, not this fake's.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::stream;
use keel_api::client::{ApiClient, BoxFuture, BoxStream, ListParams, Patch, WatchEvent, WriteOptions};
use keel_api::registry::ResourceType;
use keel_api::status::{ApiError, ApiResult};
use serde_json::{json, Value};

#[derive(Default)]
pub struct FakeApi {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    revision: u64,
}

fn has_status(rt: &ResourceType) -> bool {
    rt.subresource("status").is_some()
}

fn name_of(obj: &Value) -> Option<String> {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl FakeApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores an object as is (test setup), assigning a resourceVersion.
    pub fn seed(&self, rt: &ResourceType, ns: Option<&str>, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.revision += 1;
        obj["metadata"]["resourceVersion"] = json!(s.revision.to_string());
        let key = rt.key(ns, &name_of(&obj).unwrap());
        s.objects.insert(key, obj);
    }

    pub fn object(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(&rt.key(ns, name)).cloned()
    }

    pub fn all(&self, rt: &ResourceType) -> Vec<Value> {
        let prefix = rt.key_prefix();
        self.state
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn store(s: &mut State, key: String, mut obj: Value) -> Value {
        s.revision += 1;
        obj["metadata"]["resourceVersion"] = json!(s.revision.to_string());
        s.objects.insert(key, obj.clone());
        obj
    }
}

impl ApiClient for FakeApi {
    fn get(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        let r = self
            .object(rt, ns.as_deref(), &name)
            .ok_or_else(|| ApiError::not_found(rt, &name));
        Box::pin(async move { r })
    }

    fn list(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        _params: ListParams,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        let s = self.state.lock().unwrap();
        let prefix = rt.namespace_prefix(ns.as_deref());
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect();
        let list = json!({
            "apiVersion": rt.api_version(),
            "kind": format!("{}List", rt.kind),
            "metadata": {"resourceVersion": s.revision.to_string()},
            "items": items,
        });
        Box::pin(async move { Ok(list) })
    }

    fn create(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        mut obj: Value,
        _o: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        let r = (|| {
            let name = name_of(&obj).ok_or_else(|| ApiError::bad_request("name is required"))?;
            let key = rt.key(ns.as_deref(), &name);
            let mut s = self.state.lock().unwrap();
            if s.objects.contains_key(&key) {
                return Err(ApiError::already_exists(rt, &name));
            }
            if has_status(rt) {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
            let uid = format!("uid-{}", s.revision + 1);
            obj["metadata"]["uid"] = json!(uid);
            obj["metadata"]["creationTimestamp"] = json!(keel_api::time::now_rfc3339());
            if let Some(ns) = &ns {
                obj["metadata"]["namespace"] = json!(ns);
            }
            Ok(Self::store(&mut s, key, obj))
        })();
        Box::pin(async move { r })
    }

    fn update(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        obj: Value,
        sub: Option<String>,
        _o: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        let r = (|| {
            let name = name_of(&obj).ok_or_else(|| ApiError::bad_request("name is required"))?;
            let key = rt.key(ns.as_deref(), &name);
            let mut s = self.state.lock().unwrap();
            let existing = s
                .objects
                .get(&key)
                .cloned()
                .ok_or_else(|| ApiError::not_found(rt, &name))?;
            if let Some(rv) = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                if Some(rv)
                    != existing
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                {
                    return Err(ApiError::conflict(rt, &name));
                }
            }
            let new = if sub.as_deref() == Some("status") {
                let mut e = existing.clone();
                e["status"] = obj["status"].clone();
                e
            } else {
                let mut o = obj.clone();
                o["metadata"]["uid"] = existing["metadata"]["uid"].clone();
                o["metadata"]["creationTimestamp"] = existing["metadata"]["creationTimestamp"].clone();
                if has_status(rt) {
                    o["status"] = existing["status"].clone();
                }
                o
            };
            Ok(Self::store(&mut s, key, new))
        })();
        Box::pin(async move { r })
    }

    fn patch(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
        patch: Patch,
        sub: Option<String>,
        _o: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        let r = (|| {
            let Patch::Merge(p) = patch else {
                return Err(ApiError::unsupported_media_type(
                    "the fake supports merge patches only",
                ));
            };
            let key = rt.key(ns.as_deref(), &name);
            let mut s = self.state.lock().unwrap();
            let existing = s
                .objects
                .get(&key)
                .cloned()
                .ok_or_else(|| ApiError::not_found(rt, &name))?;
            let mut patched = existing.clone();
            merge_patch(&mut patched, &p);
            let new = if sub.as_deref() == Some("status") {
                let mut e = existing.clone();
                e["status"] = patched["status"].clone();
                e
            } else {
                if has_status(rt) {
                    patched["status"] = existing["status"].clone();
                }
                patched
            };
            Ok(Self::store(&mut s, key, new))
        })();
        Box::pin(async move { r })
    }

    fn delete(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
        _options: Value,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        let r = self
            .state
            .lock()
            .unwrap()
            .objects
            .remove(&rt.key(ns.as_deref(), &name))
            .ok_or_else(|| ApiError::not_found(rt, &name));
        Box::pin(async move { r })
    }

    fn watch(
        &self,
        _rt: &'static ResourceType,
        _ns: Option<String>,
        _params: ListParams,
    ) -> BoxFuture<'_, ApiResult<BoxStream<ApiResult<WatchEvent>>>> {
        Box::pin(async move {
            let s: BoxStream<ApiResult<WatchEvent>> = Box::pin(stream::empty());
            Ok(s)
        })
    }
}
