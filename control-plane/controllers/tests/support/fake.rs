//! An in-memory [`ApiClient`] for policy tests: objects keyed like the store, one global
//! resourceVersion, uids and generations, `status` subresource semantics, optimistic
//! concurrency, merge patches (strategic ones are treated as merge patches, enough for the
//! controllers' writes), and watches (initial `ADDED` events, then live ones from a broadcast).
//! Deletion is immediate and does not cascade: no garbage collector, no grace periods.

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

pub struct FakeApi {
    state: Mutex<State>,
    events: broadcast::Sender<(String, u64, WatchEvent)>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    revision: u64,
}

fn merge(target: &mut Value, patch: &Value) {
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
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn without(obj: &Value, fields: &[&str]) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for f in fields {
            m.remove(*f);
        }
    }
    o
}

impl Default for FakeApi {
    fn default() -> Self {
        FakeApi {
            state: Mutex::new(State::default()),
            events: broadcast::channel(65536).0,
        }
    }
}

impl FakeApi {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `obj` under `key` with a new revision and announces it.
    fn commit(&self, s: &mut State, key: String, mut obj: Value, kind: WatchEventKind) -> Value {
        s.revision += 1;
        obj["metadata"]["resourceVersion"] = json!(s.revision.to_string());
        if kind == WatchEventKind::Deleted {
            s.objects.remove(&key);
        } else {
            s.objects.insert(key.clone(), obj.clone());
        }
        let _ = self.events.send((
            key,
            s.revision,
            WatchEvent {
                kind,
                object: obj.clone(),
            },
        ));
        obj
    }

    fn do_create(&self, rt: &ResourceType, ns: Option<String>, mut obj: Value) -> ApiResult<Value> {
        let mut s = self.lock();
        let mut name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let base = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or("obj-");
            name = format!("{base}{}", s.revision + 1);
        }
        let ns = ns.filter(|_| rt.namespaced);
        let key = rt.key(ns.as_deref(), &name);
        if s.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if let Some(ns) = &ns {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!("uid-{}-{}", rt.plural, s.revision + 1));
        meta["creationTimestamp"] = json!(keel_api::time::now_rfc3339());
        if obj.get("spec").is_some() && rt.subresource("status").is_some() {
            obj["metadata"]["generation"] = json!(1);
        }
        if rt.subresource("status").is_some() {
            obj["status"] = if rt.kind == "Pod" {
                json!({"phase": "Pending"})
            } else {
                json!({})
            };
        }
        Ok(self.commit(&mut s, key, obj, WatchEventKind::Added))
    }

    fn write(
        &self,
        rt: &ResourceType,
        ns: Option<String>,
        name: &str,
        subresource: Option<&str>,
        change: impl FnOnce(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Value> {
        let mut s = self.lock();
        let key = rt.key(ns.as_deref(), name);
        let old = s
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let new = change(&old)?;
        if let Some(rv) = new.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            if Some(rv) != old.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                return Err(ApiError::conflict(rt, name));
            }
        }
        let mut obj = match subresource {
            Some("status") => {
                let mut o = old.clone();
                o["status"] = new.get("status").cloned().unwrap_or(json!({}));
                o
            }
            _ => {
                let mut o = new;
                if rt.subresource("status").is_some() {
                    o["status"] = old.get("status").cloned().unwrap_or(json!({}));
                }
                for k in ["uid", "creationTimestamp", "name", "namespace"] {
                    if let Some(v) = old.pointer(&format!("/metadata/{k}")) {
                        o["metadata"][k] = v.clone();
                    }
                }
                if old.pointer("/metadata/generation").is_some() {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    let changed =
                        without(&o, &["metadata", "status"]) != without(&old, &["metadata", "status"]);
                    o["metadata"]["generation"] = json!(if changed { g + 1 } else { g });
                }
                o
            }
        };
        obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if obj == old {
            return Ok(old);
        }
        Ok(self.commit(&mut s, key, obj, WatchEventKind::Modified))
    }
}

impl ApiClient for FakeApi {
    fn get(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move {
            self.lock()
                .objects
                .get(&rt.key(ns.as_deref(), &name))
                .cloned()
                .ok_or_else(|| ApiError::not_found(rt, &name))
        })
    }

    fn list(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        _params: ListParams,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move {
            let s = self.lock();
            let prefix = rt.namespace_prefix(ns.as_deref());
            let items: Vec<Value> = s
                .objects
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| v.clone())
                .collect();
            Ok(
                json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                      "metadata": {"resourceVersion": s.revision.to_string()}, "items": items}),
            )
        })
    }

    fn create(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        obj: Value,
        _opts: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move { self.do_create(rt, ns, obj) })
    }

    fn update(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        obj: Value,
        subresource: Option<String>,
        _opts: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            self.write(rt, ns, &name, subresource.as_deref(), |_| Ok(obj))
        })
    }

    fn patch(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
        patch: Patch,
        subresource: Option<String>,
        _opts: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move {
            let p = match patch {
                Patch::Merge(p) | Patch::Strategic(p) => p,
                _ => return Err(ApiError::bad_request("the fake API takes merge patches only")),
            };
            self.write(rt, ns, &name, subresource.as_deref(), |old| {
                let mut new = old.clone();
                if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                merge(&mut new, &p);
                Ok(new)
            })
        })
    }

    fn delete(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
        _options: Value,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move {
            let mut s = self.lock();
            let key = rt.key(ns.as_deref(), &name);
            let obj = s
                .objects
                .get(&key)
                .cloned()
                .ok_or_else(|| ApiError::not_found(rt, &name))?;
            Ok(self.commit(&mut s, key, obj, WatchEventKind::Deleted))
        })
    }

    fn watch(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        params: ListParams,
    ) -> BoxFuture<'_, ApiResult<BoxStream<ApiResult<WatchEvent>>>> {
        Box::pin(async move {
            let prefix = rt.namespace_prefix(ns.as_deref());
            let rx = self.events.subscribe();
            let (initial, from) = match params
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(rv) => (Vec::new(), rv),
                None => {
                    let s = self.lock();
                    let items: Vec<ApiResult<WatchEvent>> = s
                        .objects
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(&prefix))
                        .map(|(_, v)| {
                            Ok(WatchEvent {
                                kind: WatchEventKind::Added,
                                object: v.clone(),
                            })
                        })
                        .collect();
                    (items, s.revision)
                }
            };
            let live = futures::stream::unfold(rx, move |mut rx| {
                let prefix = prefix.clone();
                async move {
                    loop {
                        match rx.recv().await {
                            Ok((key, rev, ev)) => {
                                if key.starts_with(&prefix) && rev > from {
                                    return Some((Ok(ev), rx));
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                return Some((Err(ApiError::expired("the fake watch lagged")), rx));
                            }
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            });
            Ok(futures::stream::iter(initial).chain(live).boxed())
        })
    }
}
