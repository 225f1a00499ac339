//! The verbs on stored objects: get, list, create, update, patch, delete, watch.
//!
//! This is the one place where Kubernetes object semantics meet the store: metadata bookkeeping
//! (`uid`, `resourceVersion` = the store's revision, `generation`, `creationTimestamp`,
//! `deletionTimestamp`), status/spec separation for subresources, optimistic concurrency,
//! finalizers, graceful deletion, cascading deletes and consistent paginated lists. HTTP handlers
//! and the in-process client both call [`Objects`], so controllers get exactly the behaviour
//! `kubectl` gets.
//!
//! Objects are stored as the JSON of their storage version *without* `metadata.resourceVersion`:
//! the version is the store's `mod_revision` and is filled in on every read.

use std::num::NonZeroUsize;
use std::sync::Arc;

pub use crate::machinery::FieldValidation;
use crate::machinery::{FieldSelector, LabelSelector};
use bytes::Bytes;
use futures::StreamExt;
use keel_api::client::{BoxStream, ListParams, Patch, WatchEvent, WatchEventKind};
use keel_api::registry::{self, ResourceType};
use keel_api::status::{ApiError, ApiResult, Cause};
use keel_api::time;
use keel_store::{KeyValue, ListOptions, Store, StoreError};
use serde_json::{json, Map, Value};

use crate::strategy;
use crate::watch;

/// How a write is made: by whom, recorded how, checked how.
#[derive(Clone, Debug, Default)]
pub struct WriteCtx {
    pub field_manager: Option<String>,
    pub dry_run: bool,
    pub validation: FieldValidation,
    /// Warnings collected while handling the request (`Warning:` headers).
    pub warnings: Vec<String>,
    /// The client's User-Agent, which names the field manager when the request does not.
    pub user_agent: Option<String>,
    /// Set while a server-side apply is being written: ownership was already recorded.
    pub(crate) applying: bool,
}

impl WriteCtx {
    /// The field manager of this write: `fieldManager`, else the User-Agent's program name
    /// (`kubectl/v1.32.4 (linux/amd64)` → `kubectl`), as upstream names it.
    pub fn manager(&self) -> String {
        if let Some(m) = self.field_manager.as_deref().filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        match self
            .user_agent
            .as_deref()
            .and_then(|ua| ua.split('/').next())
            .filter(|p| !p.is_empty())
        {
            Some(p) => p.to_string(),
            None => "keel-control-plane".to_string(),
        }
    }
}

/// One page of a list.
pub struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

/// What a delete answers.
pub enum Deleted {
    /// The object is gone; here is its last state.
    Gone(Value),
    /// The object is being deleted (finalizers or a grace period); here is its current state.
    Pending(Value),
}

/// The object verbs, over one store.
pub struct Objects {
    store: Arc<dyn Store>,
    pub(crate) config: Arc<crate::Config>,
    pub(crate) alloc: crate::alloc::Allocators,
    /// Where deletions are reported for cascading (see [`crate::gc`]).
    pub(crate) gc: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<crate::gc::GcEvent>>,
}

const MAX_PATCH_RETRIES: usize = 5;

impl Objects {
    pub fn new(store: Arc<dyn Store>, config: Arc<crate::Config>) -> Self {
        Objects {
            store,
            config,
            alloc: crate::alloc::Allocators::default(),
            gc: std::sync::OnceLock::new(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    // ---------------------------------------------------------------------------------- reads

    pub async fn get(&self, rt: &'static ResourceType, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let key = rt.key(ns, name);
        match self.store.get(&key).await.map_err(store_error)? {
            Some(kv) => decode(rt, &kv),
            None => Err(ApiError::not_found(rt, name)),
        }
    }

    /// The object and its store revision, for read-modify-write.
    async fn get_kv(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<(Value, u64)> {
        let key = rt.key(ns, name);
        match self.store.get(&key).await.map_err(store_error)? {
            Some(kv) => Ok((decode_stored(rt, &kv)?, kv.mod_revision)),
            None => Err(ApiError::not_found(rt, name)),
        }
    }

    /// A list as JSON bytes spliced from the stored objects, for the common case of no
    /// selectors and no version conversion: no object is parsed or re-serialised, which keeps
    /// listing 10,000 pods fast and light. `None` when the request needs the general path.
    pub async fn list_raw(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        params: &ListParams,
    ) -> ApiResult<Option<Vec<u8>>> {
        let selective = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.trim().is_empty());
        if selective(&params.label_selector)
            || selective(&params.field_selector)
            || rt.version != rt.storage_version
        {
            return Ok(None);
        }
        let prefix = rt.namespace_prefix(ns);
        let limit = params.limit.filter(|l| *l > 0).map(|l| l as usize);
        let (mut start_after, mut revision) = (None, None);
        if let Some(token) = params.continue_token.as_deref().filter(|t| !t.is_empty()) {
            let (rv, start) = watch::decode_continue(token)?;
            revision = Some(rv);
            start_after = Some(format!("{prefix}{start}"));
        }
        let page = self
            .store
            .list(
                &prefix,
                ListOptions {
                    revision,
                    start_after,
                    limit: limit.and_then(NonZeroUsize::new),
                },
            )
            .await
            .map_err(list_error)?;
        let mut meta = json!({"resourceVersion": page.revision.to_string()});
        if page.more {
            if let Some(last) = page.items.last() {
                meta["continue"] = json!(watch::encode_continue(
                    page.revision,
                    last.key.strip_prefix(prefix.as_str()).unwrap_or(&last.key)
                ));
            }
        }
        let total: usize = page.items.iter().map(|kv| kv.value.len() + 32).sum();
        let mut out = Vec::with_capacity(total + 256);
        out.extend_from_slice(
            format!(
                "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{meta},\"items\":[",
                rt.kind,
                rt.api_version()
            )
            .as_bytes(),
        );
        for (i, kv) in page.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match splice_resource_version(&kv.value, kv.mod_revision) {
                Some(bytes) => out.extend_from_slice(&bytes),
                None => out.extend_from_slice(
                    &serde_json::to_vec(&decode(rt, kv)?).map_err(|e| ApiError::internal(e.to_string()))?,
                ),
            }
        }
        out.extend_from_slice(b"]}");
        Ok(Some(out))
    }

    pub async fn list(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        params: &ListParams,
    ) -> ApiResult<ListResult> {
        let mut items = Vec::new();
        let (resource_version, continue_token) = self.scan(rt, ns, params, |obj| items.push(obj)).await?;
        Ok(ListResult {
            items,
            resource_version,
            continue_token,
            remaining: None,
        })
    }

    /// A list as a server-side Table, written row by row: each object is decoded, printed and
    /// dropped, so a Table of 10,000 pods never holds them all (nor copies of their metadata).
    pub async fn list_table(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        params: &ListParams,
        options: keel_api::table::TableOptions,
    ) -> ApiResult<Vec<u8>> {
        let mut table = keel_api::table::TableWriter::new(rt, options);
        let (resource_version, continue_token) = self.scan(rt, ns, params, |obj| table.push(&obj)).await?;
        Ok(table.finish(&keel_api::table::ListMeta {
            resource_version: resource_version.to_string(),
            continue_token: continue_token.unwrap_or_default(),
            remaining_item_count: None,
        }))
    }

    /// Reads a list (selectors, limit, continue token) and hands each matching object to
    /// `each`, in key order; returns the list's revision and continue token.
    async fn scan(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        params: &ListParams,
        mut each: impl FnMut(Value),
    ) -> ApiResult<(u64, Option<String>)> {
        let labels = LabelSelector::parse(params.label_selector.as_deref().unwrap_or(""))?;
        let fields = FieldSelector::parse(rt, params.field_selector.as_deref().unwrap_or(""))?;
        let prefix = rt.namespace_prefix(ns);
        let limit = params.limit.filter(|l| *l > 0).map(|l| l as usize);

        let (mut start_after, mut revision) = (None, None);
        if let Some(token) = params.continue_token.as_deref().filter(|t| !t.is_empty()) {
            let (rv, start) = watch::decode_continue(token)?;
            revision = Some(rv);
            start_after = Some(format!("{prefix}{start}"));
        }

        let mut taken = 0usize;
        let mut last_key: Option<String> = None;
        let mut more = false;
        'pages: loop {
            // Read in batches, filtering as we go, until the page is full or the range ends.
            let batch = limit.map(|l| (l - taken).max(64));
            let page = self
                .store
                .list(
                    &prefix,
                    ListOptions {
                        revision,
                        start_after: start_after.clone(),
                        limit: batch.and_then(NonZeroUsize::new),
                    },
                )
                .await
                .map_err(list_error)?;
            revision = Some(page.revision);
            for kv in &page.items {
                if limit.is_some_and(|l| taken >= l) {
                    more = true;
                    break 'pages;
                }
                last_key = Some(kv.key.to_string());
                let obj = decode(rt, kv)?;
                if labels.matches_object(&obj) && fields.matches(&obj) {
                    taken += 1;
                    each(obj);
                }
            }
            if !page.more {
                break;
            }
            start_after = last_key.clone();
        }
        let read_revision = revision.unwrap_or(0);

        let continue_token = match (more, &last_key) {
            (true, Some(k)) => Some(watch::encode_continue(
                read_revision,
                k.strip_prefix(&prefix).unwrap_or(k),
            )),
            _ => None,
        };
        Ok((read_revision, continue_token))
    }

    // --------------------------------------------------------------------------------- writes

    /// Creates an object (POST).
    pub async fn create(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        obj: Value,
        ctx: &mut WriteCtx,
    ) -> ApiResult<Value> {
        served(rt, self.create_stored(rt, ns, obj, ctx).await?)
    }

    /// Replaces an object (PUT), or one of its subresources (`status`, `finalize`, `approval`).
    pub async fn update(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        subresource: Option<&str>,
        ctx: &mut WriteCtx,
    ) -> ApiResult<Value> {
        served(rt, self.update_stored(rt, ns, name, obj, subresource, ctx).await?)
    }

    /// PATCH: JSON, merge, strategic merge or server-side apply. Returns the object and whether
    /// it was created (apply on a missing object).
    pub async fn patch(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        patch: &Patch,
        subresource: Option<&str>,
        ctx: &mut WriteCtx,
    ) -> ApiResult<(Value, bool)> {
        let (obj, created) = self.patch_stored(rt, ns, name, patch, subresource, ctx).await?;
        Ok((served(rt, obj)?, created))
    }

    /// DELETE, with preconditions, grace period and propagation policy from `options`.
    pub async fn delete(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        options: &Value,
        ctx: &mut WriteCtx,
    ) -> ApiResult<Deleted> {
        Ok(match self.delete_stored(rt, ns, name, options, ctx).await? {
            Deleted::Gone(o) => Deleted::Gone(served(rt, o)?),
            Deleted::Pending(o) => Deleted::Pending(served(rt, o)?),
        })
    }

    async fn create_stored(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        ctx: &mut WriteCtx,
    ) -> ApiResult<Value> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be an object"));
        }
        if !ctx.applying {
            // An apply intent was checked in the version the client sent, before conversion.
            strategy::check_unknown_fields(rt, &mut obj, ctx)?;
        }
        set_type_meta(rt, &mut obj)?;
        let meta = meta_mut(&mut obj);
        // Namespace: from the URL; a different one in the body is an error.
        if rt.namespaced {
            let ns =
                ns.ok_or_else(|| ApiError::bad_request("a namespace is required for a namespaced resource"))?;
            match meta.get("namespace").and_then(Value::as_str) {
                Some(body_ns) if !body_ns.is_empty() && body_ns != ns => return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                )),
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        if meta.get("name").and_then(Value::as_str).unwrap_or("").is_empty() {
            if let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
            {
                let name = format!("{prefix}{}", random_suffix());
                meta.insert("name".into(), json!(name));
            }
        }
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(k);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(time::now_rfc3339()));
        if strategy::has_generation(rt, &obj) {
            meta_mut(&mut obj).insert("generation".into(), json!(1));
        }
        strategy::prepare_for_create(rt, &mut obj);
        crate::machinery::apply_create_defaults(rt, &mut obj, &self.config);
        self.alloc.allocate_on_create(self, rt, &mut obj).await?;
        let name = object_name(&obj).to_string();
        crate::machinery::validate_create(rt, &obj)?;
        if !ctx.applying {
            keel_api::managed::record_update(rt, None, &mut obj, &ctx.manager(), None, &time::now_rfc3339());
        }
        if rt.namespaced {
            self.check_namespace_open(ns.unwrap_or_default(), rt, &name)
                .await?;
        }
        if ctx.dry_run {
            return Ok(obj);
        }
        let key = rt.key(ns, &name);
        let kv = match self.store.create(&key, encode(&obj)?).await {
            Ok(kv) => kv,
            Err(StoreError::AlreadyExists { .. }) => {
                self.alloc.release(rt, &obj);
                return Err(ApiError::already_exists(rt, &name));
            }
            Err(e) => {
                self.alloc.release(rt, &obj);
                return Err(store_error(e));
            }
        };
        set_resource_version(&mut obj, kv.mod_revision);
        Ok(obj)
    }

    /// Replaces an object (PUT), or one of its subresources (`status`, `finalize`, `approval`).
    async fn update_stored(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        subresource: Option<&str>,
        ctx: &mut WriteCtx,
    ) -> ApiResult<Value> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be an object"));
        }
        strategy::check_unknown_fields(rt, &mut obj, ctx)?;
        set_type_meta(rt, &mut obj)?;
        let body_name = object_name(&obj);
        if body_name.is_empty() {
            meta_mut(&mut obj).insert("name".into(), json!(name));
        } else if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let precondition = resource_version_of(&obj)?;
        let (old, old_rev) = match self.get_kv(rt, ns, name).await {
            Ok(found) => found,
            Err(e) if e.code == 404 && subresource.is_none() && strategy::allows_create_on_update(rt) => {
                meta_mut(&mut obj).remove("resourceVersion");
                return self.create_stored(rt, ns, obj, ctx).await;
            }
            Err(e) => return Err(e),
        };
        if let Some(rv) = precondition {
            if rv != old_rev {
                return Err(ApiError::conflict(rt, name));
            }
        }
        self.write_update(rt, ns, name, old, old_rev, obj, subresource, ctx)
            .await
    }

    /// The shared tail of update and patch: merge with the old object by the subresource's
    /// rules, default, validate and compare-and-swap.
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        old: Value,
        old_rev: u64,
        new: Value,
        subresource: Option<&str>,
        ctx: &mut WriteCtx,
    ) -> ApiResult<Value> {
        let mut obj = strategy::prepare_for_update(rt, subresource, new, &old)?;
        if subresource.is_none() {
            crate::machinery::apply_update_defaults(rt, &mut obj, &old, &self.config);
            self.alloc.allocate_on_update(self, rt, &mut obj, &old).await?;
        }
        crate::machinery::validate_update(rt, &obj, &old)?;
        if !ctx.applying {
            keel_api::managed::record_update(
                rt,
                Some(&old),
                &mut obj,
                &ctx.manager(),
                subresource,
                &time::now_rfc3339(),
            );
        }
        meta_mut(&mut obj).remove("resourceVersion");
        if ctx.dry_run {
            set_resource_version(&mut obj, old_rev);
            return Ok(obj);
        }
        // A deleted object whose last finalizer is gone disappears now.
        if is_being_deleted(&obj) && finalizers_empty(rt, &obj) {
            let key = rt.key(ns, name);
            return match self.store.delete(&key, Some(old_rev)).await {
                Ok(d) => {
                    set_resource_version(&mut obj, d.revision);
                    self.after_delete(rt, &obj);
                    Ok(obj)
                }
                Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(rt, name)),
                Err(e) => Err(store_error(e)),
            };
        }
        if obj == with_rv(old.clone(), None) {
            // Nothing changed: upstream does not write (and does not bump the version).
            set_resource_version(&mut obj, old_rev);
            return Ok(obj);
        }
        let key = rt.key(ns, name);
        match self.store.update(&key, encode(&obj)?, Some(old_rev)).await {
            Ok(kv) => {
                set_resource_version(&mut obj, kv.mod_revision);
                self.alloc.release_replaced(rt, &old, &obj);
                Ok(obj)
            }
            Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(rt, name)),
            Err(StoreError::NotFound { .. }) => Err(ApiError::not_found(rt, name)),
            Err(e) => Err(store_error(e)),
        }
    }

    /// PATCH: JSON, merge, strategic merge or server-side apply. Returns the object and whether
    /// it was created (apply on a missing object).
    #[allow(clippy::too_many_arguments)]
    async fn patch_stored(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        patch: &Patch,
        subresource: Option<&str>,
        ctx: &mut WriteCtx,
    ) -> ApiResult<(Value, bool)> {
        for attempt in 0..MAX_PATCH_RETRIES {
            let (old, old_rev) = match self.get_kv(rt, ns, name).await {
                Ok(found) => found,
                Err(e) if e.code == 404 && subresource.is_none() => {
                    if let Patch::Apply { body, force } = patch {
                        let mut intent = body.clone();
                        let meta = meta_mut(&mut intent);
                        if meta.get("name").and_then(Value::as_str).unwrap_or("").is_empty() {
                            meta.insert("name".into(), json!(name));
                        }
                        strategy::check_unknown_fields(rt, &mut intent, ctx)?;
                        set_type_meta(rt, &mut intent)?;
                        let obj = keel_api::managed::apply(
                            rt,
                            None,
                            &intent,
                            &ctx.manager(),
                            *force,
                            &time::now_rfc3339(),
                        )?;
                        ctx.applying = true;
                        let created = self.create_stored(rt, ns, obj, ctx).await;
                        ctx.applying = false;
                        return created.map(|c| (c, true));
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            let old_with_rv = served(rt, with_rv(old.clone(), Some(old_rev)))?;
            let patched = stored(
                rt,
                strategy::apply_patch(rt, subresource, &old_with_rv, patch, ctx)?,
            )?;
            // A resourceVersion the patch itself sets is a precondition (kubectl apply and diff
            // send one); without one, a patch retries on conflicts with other writers.
            let precondition = if patch_sets_resource_version(patch) {
                resource_version_of(&patched)?
            } else {
                None
            };
            if let Some(rv) = precondition {
                if rv != old_rev {
                    return Err(ApiError::conflict(rt, name));
                }
            }
            if object_name(&patched) != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    object_name(&patched)
                )));
            }
            ctx.applying = matches!(patch, Patch::Apply { .. });
            let written = self
                .write_update(rt, ns, name, old, old_rev, patched, subresource, ctx)
                .await;
            ctx.applying = false;
            match written {
                Err(e)
                    if e.reason == "Conflict"
                        && precondition.is_none()
                        && attempt + 1 < MAX_PATCH_RETRIES =>
                {
                    continue;
                }
                other => return other.map(|o| (o, false)),
            }
        }
        Err(ApiError::conflict(rt, name))
    }

    /// Read-modify-write with retries on conflict, for in-process callers.
    pub async fn modify<F>(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        mut f: F,
    ) -> ApiResult<Value>
    where
        F: FnMut(&mut Value) -> ApiResult<()>,
    {
        for _ in 0..MAX_PATCH_RETRIES {
            let (old, old_rev) = self.get_kv(rt, ns, name).await?;
            let mut new = old.clone();
            f(&mut new)?;
            let mut ctx = WriteCtx::default();
            match self
                .write_update(rt, ns, name, old, old_rev, new, None, &mut ctx)
                .await
            {
                Err(e) if e.reason == "Conflict" => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(rt, name))
    }

    async fn delete_stored(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        options: &Value,
        ctx: &mut WriteCtx,
    ) -> ApiResult<Deleted> {
        let (mut obj, rev) = self.get_kv(rt, ns, name).await?;
        let pre = options.get("preconditions");
        if let Some(uid) = pre.and_then(|p| p.get("uid")).and_then(Value::as_str) {
            if uid != object_uid(&obj) {
                return Err(ApiError::conflict_because(
                    rt,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        object_uid(&obj)
                    ),
                ));
            }
        }
        if let Some(rv) = pre.and_then(|p| p.get("resourceVersion")).and_then(Value::as_str) {
            if rv != rev.to_string() {
                return Err(ApiError::conflict_because(
                    rt,
                    name,
                    &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {rev}"),
                ));
            }
        }
        if let Some(dry) = options.get("dryRun").and_then(Value::as_array) {
            if dry.iter().any(|d| d == "All") {
                ctx.dry_run = true;
            }
        }
        let propagation = propagation_policy(rt, options)?;
        let grace = strategy::grace_period(rt, &obj, options);

        let already = is_being_deleted(&obj);
        let mut finalizers: Vec<String> = meta_finalizers(&obj);
        match propagation {
            Propagation::Foreground if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
                finalizers.push("foregroundDeletion".into())
            }
            Propagation::Orphan if !finalizers.iter().any(|f| f == "orphan") => {
                finalizers.push("orphan".into())
            }
            _ => {}
        }
        let namespace_finalizers = rt.kind == "Namespace";
        let graceful = grace.is_some_and(|g| g > 0);
        if finalizers.is_empty() && !graceful && !namespace_finalizers {
            if ctx.dry_run {
                return Ok(Deleted::Gone(with_rv(obj, Some(rev))));
            }
            let key = rt.key(ns, name);
            let d = match self.store.delete(&key, Some(rev)).await {
                Ok(d) => d,
                Err(StoreError::Conflict { .. }) => return Err(ApiError::conflict(rt, name)),
                Err(StoreError::NotFound { .. }) => return Err(ApiError::not_found(rt, name)),
                Err(e) => return Err(store_error(e)),
            };
            set_resource_version(&mut obj, d.revision);
            self.alloc.release(rt, &obj);
            self.after_delete(rt, &obj);
            return Ok(Deleted::Gone(obj));
        }
        if already && !graceful {
            // A second delete of an object already being deleted changes nothing but a shorter grace.
            if let Some(0) = grace {
                return self.finish_pod_deletion(rt, ns, name, obj, rev).await;
            }
            return Ok(Deleted::Pending(with_rv(obj, Some(rev))));
        }
        // Mark for deletion; finalizers, the namespace controller or the node finish it.
        let mut new = obj.clone();
        let meta = meta_mut(&mut new);
        if !already {
            meta.insert("deletionTimestamp".into(), json!(time::now_rfc3339()));
        }
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace.unwrap_or(0)));
        if !finalizers.is_empty() {
            meta.insert("finalizers".into(), json!(finalizers));
        }
        if namespace_finalizers {
            new["status"]["phase"] = json!("Terminating");
        }
        if ctx.dry_run {
            return Ok(Deleted::Pending(with_rv(new, Some(rev))));
        }
        meta_mut(&mut new).remove("resourceVersion");
        let key = rt.key(ns, name);
        let kv = match self.store.update(&key, encode(&new)?, Some(rev)).await {
            Ok(kv) => kv,
            Err(StoreError::Conflict { .. }) => return Err(ApiError::conflict(rt, name)),
            Err(e) => return Err(store_error(e)),
        };
        set_resource_version(&mut new, kv.mod_revision);
        self.after_mark_deleted(rt, &new, propagation);
        Ok(Deleted::Pending(new))
    }

    async fn finish_pod_deletion(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        rev: u64,
    ) -> ApiResult<Deleted> {
        let key = rt.key(ns, name);
        match self.store.delete(&key, Some(rev)).await {
            Ok(d) => {
                set_resource_version(&mut obj, d.revision);
                self.after_delete(rt, &obj);
                Ok(Deleted::Gone(obj))
            }
            Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(rt, name)),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Background work after an object is gone: its dependents go too (or are orphaned).
    fn after_delete(&self, rt: &'static ResourceType, obj: &Value) {
        if let Some(tx) = self.gc.get() {
            let _ = tx.send(crate::gc::GcEvent::Deleted { rt, obj: obj.clone() });
        }
    }

    fn after_mark_deleted(&self, rt: &'static ResourceType, obj: &Value, propagation: Propagation) {
        if let Some(tx) = self.gc.get() {
            let _ = tx.send(crate::gc::GcEvent::MarkedForDeletion {
                rt,
                obj: obj.clone(),
                propagation,
            });
        }
    }

    async fn check_namespace_open(&self, ns: &str, rt: &'static ResourceType, name: &str) -> ApiResult<()> {
        let nsrt =
            registry::find("", "v1", "namespaces").ok_or_else(|| ApiError::internal("no namespaces"))?;
        match self.get(nsrt, None, ns).await {
            Ok(n) if is_being_deleted(&n) => Err(ApiError::forbidden(
                rt,
                name,
                format!("{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated", rt.qualified_plural()),
            )),
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Err(ApiError::not_found(nsrt, ns)),
            Err(e) => Err(e),
        }
    }

    // ---------------------------------------------------------------------------------- watch

    pub async fn watch(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        params: &ListParams,
    ) -> ApiResult<BoxStream<ApiResult<WatchEvent>>> {
        let labels = LabelSelector::parse(params.label_selector.as_deref().unwrap_or(""))?;
        let fields = FieldSelector::parse(rt, params.field_selector.as_deref().unwrap_or(""))?;
        let prefix = rt.namespace_prefix(ns);
        // No version (or "0"): start with the current state as ADDED events, then follow.
        let rv = match params.resource_version.as_deref() {
            None | Some("") | Some("0") => None,
            Some(s) => Some(
                s.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))?,
            ),
        };
        let sel = Arc::new((labels, fields));
        // The current state is read as stored bytes and each object decoded only when the
        // watcher takes it: a watch of 10,000 pods does not hold 10,000 decoded objects.
        let (initial, from): (BoxStream<ApiResult<WatchEvent>>, u64) = match rv {
            Some(rv) => (Box::pin(futures::stream::empty()), rv),
            None => {
                let page = self
                    .store
                    .list(&prefix, ListOptions::default())
                    .await
                    .map_err(list_error)?;
                let sel = sel.clone();
                let added = futures::stream::iter(page.items).filter_map(move |kv| {
                    let sel = sel.clone();
                    async move {
                        match decode(rt, &kv) {
                            Ok(object) if sel.0.matches_object(&object) && sel.1.matches(&object) => {
                                Some(Ok(WatchEvent {
                                    kind: WatchEventKind::Added,
                                    object,
                                }))
                            }
                            Ok(_) => None,
                            Err(e) => Some(Err(e)),
                        }
                    }
                });
                (Box::pin(added), page.revision)
            }
        };
        let stream = self.store.watch(&prefix, from).await.map_err(|e| match e {
            StoreError::Compacted { .. } => ApiError::expired(format!("too old resource version: {from}")),
            other => store_error(other),
        })?;
        let events = stream.filter_map(move |ev| {
            let sel = sel.clone();
            async move {
                match ev {
                    Ok(ev) => watch::translate(rt, &ev, &sel.0, &sel.1).transpose(),
                    Err(StoreError::Compacted { .. }) => {
                        Some(Err(ApiError::expired("too old resource version")))
                    }
                    // A watcher that fell behind is cut off; the client lists again and resumes.
                    Err(StoreError::WatchLagged { last_revision }) => Some(Err(ApiError::expired(format!(
                        "the watch fell behind at resource version {last_revision}; list and watch again"
                    )))),
                    Err(e) => Some(Err(store_error(e))),
                }
            }
        });
        Ok(Box::pin(initial.chain(events)))
    }
}

/// How dependents are treated when their owner is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

fn propagation_policy(rt: &ResourceType, options: &Value) -> ApiResult<Propagation> {
    match options.get("propagationPolicy").and_then(Value::as_str) {
        Some("Background") => Ok(Propagation::Background),
        Some("Foreground") => Ok(Propagation::Foreground),
        Some("Orphan") => Ok(Propagation::Orphan),
        Some(other) => Err(ApiError::invalid(
            rt,
            "",
            vec![Cause::not_supported(
                "propagationPolicy",
                &json!(other),
                &["Foreground", "Background", "Orphan"],
            )],
        )),
        None => match options.get("orphanDependents").and_then(Value::as_bool) {
            Some(true) => Ok(Propagation::Orphan),
            _ => Ok(Propagation::Background),
        },
    }
}

// ------------------------------------------------------------------------------ object helpers

/// An object as stored (storage version), with its resourceVersion.
fn decode_stored(rt: &ResourceType, kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored {} at {} is not JSON: {e}", rt.kind, kv.key)))?;
    set_resource_version(&mut v, kv.mod_revision);
    Ok(v)
}

/// An object as clients of `rt`'s version see it.
pub(crate) fn decode(rt: &ResourceType, kv: &KeyValue) -> ApiResult<Value> {
    served(rt, decode_stored(rt, kv)?)
}

/// Converts a storage-version object to the version `rt` serves (a no-op for most kinds).
pub(crate) fn served(rt: &ResourceType, mut obj: Value) -> ApiResult<Value> {
    if rt.version != rt.storage_version {
        strategy::convert(rt, &mut obj, &rt.api_version())?;
    }
    Ok(obj)
}

/// Converts an object of `rt`'s version to the storage version.
fn stored(rt: &ResourceType, mut obj: Value) -> ApiResult<Value> {
    if rt.version != rt.storage_version {
        let storage = if rt.group.is_empty() {
            rt.storage_version.to_string()
        } else {
            format!("{}/{}", rt.group, rt.storage_version)
        };
        strategy::convert(rt, &mut obj, &storage)?;
    }
    Ok(obj)
}

/// The stored form: JSON with `apiVersion`, `kind` and `metadata` first, so that list
/// responses can splice stored bytes (see [`splice_resource_version`]).
pub(crate) fn encode(obj: &Value) -> ApiResult<Bytes> {
    let bytes = match obj.as_object() {
        Some(m)
            if m.keys()
                .take(3)
                .all(|k| matches!(k.as_str(), "apiVersion" | "kind" | "metadata")) =>
        {
            serde_json::to_vec(obj)
        }
        Some(m) => {
            let mut ordered = Map::with_capacity(m.len());
            for k in ["apiVersion", "kind", "metadata"] {
                if let Some(v) = m.get(k) {
                    ordered.insert(k.to_string(), v.clone());
                }
            }
            for (k, v) in m {
                if !ordered.contains_key(k) {
                    ordered.insert(k.clone(), v.clone());
                }
            }
            serde_json::to_vec(&Value::Object(ordered))
        }
        None => serde_json::to_vec(obj),
    };
    bytes
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// A stored object's bytes with its resourceVersion put into its top-level metadata, without
/// parsing it: `None` if the bytes are not in the stored form (then the caller decodes).
pub(crate) fn splice_resource_version(stored: &[u8], rev: u64) -> Option<Vec<u8>> {
    const MARKER: &[u8] = b"\"metadata\":{";
    let at = stored.windows(MARKER.len()).position(|w| w == MARKER)?;
    // Top level only: the root object's brace is the only one before the marker (apiVersion
    // and kind are strings, whose quotes inside are escaped).
    if stored[..at].iter().filter(|b| **b == b'{').count() != 1 {
        return None;
    }
    let insert = at + MARKER.len();
    let empty_meta = stored.get(insert) == Some(&b'}');
    let field = format!(
        "\"resourceVersion\":\"{rev}\"{}",
        if empty_meta { "" } else { "," }
    );
    let mut out = Vec::with_capacity(stored.len() + field.len());
    out.extend_from_slice(&stored[..insert]);
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(&stored[insert..]);
    Some(out)
}

/// A list read's store error: reading at a compacted revision means the continue token expired.
fn list_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Compacted { .. } => ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."),
        other => store_error(other),
    }
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    ApiError::internal(e.to_string())
}

pub fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// `metadata` as a mutable map, created if missing or not an object.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

pub fn object_name(obj: &Value) -> &str {
    meta(obj)
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn object_namespace(obj: &Value) -> &str {
    meta(obj)
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn object_uid(obj: &Value) -> &str {
    meta(obj)
        .and_then(|m| m.get("uid"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn is_being_deleted(obj: &Value) -> bool {
    meta(obj).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|v| !v.is_null()))
}

fn meta_finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn finalizers_empty(rt: &ResourceType, obj: &Value) -> bool {
    let spec_finalizers = rt.kind == "Namespace"
        && obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
    meta_finalizers(obj).is_empty() && !spec_finalizers
}

pub fn set_resource_version(obj: &mut Value, rev: u64) {
    meta_mut(obj).insert("resourceVersion".into(), json!(rev.to_string()));
}

fn with_rv(mut obj: Value, rev: Option<u64>) -> Value {
    match rev {
        Some(r) => set_resource_version(&mut obj, r),
        None => {
            meta_mut(&mut obj).remove("resourceVersion");
        }
    }
    obj
}

/// Whether a patch names `metadata.resourceVersion` (and so makes it a precondition).
fn patch_sets_resource_version(patch: &Patch) -> bool {
    match patch {
        Patch::Json(ops) => ops.as_array().is_some_and(|ops| {
            ops.iter()
                .any(|op| op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion"))
        }),
        Patch::Merge(p) | Patch::Strategic(p) | Patch::Apply { body: p, .. } => p
            .pointer("/metadata/resourceVersion")
            .is_some_and(|v| !v.is_null()),
    }
}

/// `metadata.resourceVersion` of a request body as a precondition.
fn resource_version_of(obj: &Value) -> ApiResult<Option<u64>> {
    match meta(obj).and_then(|m| m.get("resourceVersion")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}: must be an integer"))),
        Some(other) => Err(ApiError::bad_request(format!("invalid resourceVersion {other}"))),
    }
}

/// Fills in or checks `apiVersion` and `kind`.
fn set_type_meta(rt: &ResourceType, obj: &mut Value) -> ApiResult<()> {
    let api_version = rt.api_version();
    let storage_av = if rt.group.is_empty() {
        rt.storage_version.to_string()
    } else {
        format!("{}/{}", rt.group, rt.storage_version)
    };
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(rt.kind),
        Some(k) if k == rt.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "{k} in version {:?} cannot be handled as a {}: the kind {k:?} does not match the resource kind {:?}",
                rt.version, rt.kind, rt.kind
            )))
        }
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = json!(api_version),
        Some(av) if av == api_version || av == storage_av => {}
        Some(av) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({api_version})"
            )))
        }
    }
    // Objects are stored in the storage version.
    if api_version != storage_av {
        strategy::convert(rt, obj, &storage_av)?;
    }
    Ok(())
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bytes_take_their_resource_version_without_parsing() {
        let obj = json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}}}}, "metadata": {"name": "x"}, "kind": "Pod", "apiVersion": "v1"});
        let stored = encode(&obj).unwrap();
        assert!(
            stored.starts_with(b"{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\""),
            "{}",
            String::from_utf8_lossy(&stored)
        );
        let spliced = splice_resource_version(&stored, 42).unwrap();
        let v: Value = serde_json::from_slice(&spliced).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "x");
        assert!(v["spec"]["template"]["metadata"].get("resourceVersion").is_none());
        let empty = splice_resource_version(br#"{"kind":"X","metadata":{}}"#, 7).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&empty).unwrap()["metadata"]["resourceVersion"],
            "7"
        );
        assert!(
            splice_resource_version(br#"{"spec":{"metadata":{}}}"#, 1).is_none(),
            "nested metadata is not the object's"
        );
    }
}
