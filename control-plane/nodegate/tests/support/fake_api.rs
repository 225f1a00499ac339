//! An in-memory `ApiClient` for the node gate's tests: objects keyed like the store, a global
//! resourceVersion, `status` subresource semantics (create drops status; updates of the main
//! resource keep it; `status` writes change only it), optimistic concurrency on updates, and
//! RFC 7386 merge patches. Enough of the API server's behaviour to make the gate's writes
//! meaningful, and nothing more.

// `ApiError`'s size is the `ApiClient` trait's choice, not this fake's.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::StreamExt;
use keel_api::client::{
    ApiClient, BoxFuture, BoxStream, ListParams, Patch, WatchEvent, WatchEventKind, WriteOptions,
};
use keel_api::registry::ResourceType;
use keel_api::status::{ApiError, ApiResult};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

pub struct FakeApi {
    state: Mutex<State>,
    /// Every write, with the key it was stored under, for watches.
    events: broadcast::Sender<(u64, String, WatchEvent)>,
}

impl Default for FakeApi {
    fn default() -> Self {
        FakeApi {
            state: Mutex::default(),
            events: broadcast::channel(1024).0,
        }
    }
}

/// The fake understands the one field selector the gate uses: `spec.nodeName=<name>`.
fn field_matches(obj: &Value, selector: Option<&str>) -> bool {
    match selector {
        None | Some("") => true,
        Some(sel) => {
            let want = sel
                .strip_prefix("spec.nodeName=")
                .unwrap_or_else(|| panic!("fake: unsupported field selector {sel:?}"));
            obj.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                == want
        }
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    revision: u64,
    /// Every write since the start, for watches from a resourceVersion.
    log: Vec<(u64, String, WatchEvent)>,
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
    pub fn seed(&self, rt: &ResourceType, ns: Option<&str>, obj: Value) {
        let key = rt.key(ns, &name_of(&obj).unwrap());
        let mut s = self.state.lock().unwrap();
        self.store(&mut s, key, obj);
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

    /// Writes an object under the lock and tells watchers.
    fn store(&self, s: &mut State, key: String, mut obj: Value) -> Value {
        s.revision += 1;
        obj["metadata"]["resourceVersion"] = json!(s.revision.to_string());
        let kind = if s.objects.contains_key(&key) {
            WatchEventKind::Modified
        } else {
            WatchEventKind::Added
        };
        s.objects.insert(key.clone(), obj.clone());
        self.emit(s, key, kind, obj.clone());
        obj
    }

    fn emit(&self, s: &mut State, key: String, kind: WatchEventKind, object: Value) {
        let ev = WatchEvent { kind, object };
        s.log.push((s.revision, key.clone(), ev.clone()));
        let _ = self.events.send((s.revision, key, ev));
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
        params: ListParams,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        let s = self.state.lock().unwrap();
        let prefix = rt.namespace_prefix(ns.as_deref());
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|(k, v)| k.starts_with(&prefix) && field_matches(v, params.field_selector.as_deref()))
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
            Ok(self.store(&mut s, key, obj))
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
            Ok(self.store(&mut s, key, new))
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
            Ok(self.store(&mut s, key, new))
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
        let key = rt.key(ns.as_deref(), &name);
        let mut s = self.state.lock().unwrap();
        let r = match s.objects.remove(&key) {
            Some(obj) => {
                s.revision += 1;
                self.emit(&mut s, key, WatchEventKind::Deleted, obj.clone());
                Ok(obj)
            }
            None => Err(ApiError::not_found(rt, &name)),
        };
        Box::pin(async move { r })
    }

    fn watch(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        params: ListParams,
    ) -> BoxFuture<'_, ApiResult<BoxStream<ApiResult<WatchEvent>>>> {
        let prefix = rt.namespace_prefix(ns.as_deref());
        let from: u64 = params
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let selector = params.field_selector.clone();
        // Backlog and subscription under one lock: no write falls between them.
        let s = self.state.lock().unwrap();
        let live = self.events.subscribe();
        let backlog: Vec<(u64, String, WatchEvent)> =
            s.log.iter().filter(|(rev, _, _)| *rev > from).cloned().collect();
        drop(s);
        let wanted = move |(rev, key, ev): &(u64, String, WatchEvent)| {
            *rev > from && key.starts_with(&prefix) && field_matches(&ev.object, selector.as_deref())
        };
        let wanted2 = wanted.clone();
        let backlog = futures::stream::iter(backlog.into_iter().filter(wanted));
        let live = BroadcastStream::new(live).filter_map(move |item| {
            let keep = item.ok().filter(&wanted2);
            async move { keep }
        });
        let stream: BoxStream<ApiResult<WatchEvent>> = Box::pin(backlog.chain(live).map(|(_, _, ev)| Ok(ev)));
        Box::pin(async move { Ok(stream) })
    }
}
