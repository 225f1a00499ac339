//! The in-process [`ApiClient`]: the same verbs over HTTP, minus the wire.
//!
//! Controllers, the scheduler and the node gate use it; it goes through [`Objects`] exactly as
//! an HTTP request does (defaults, validation, allocation, finalizers), acting as the control
//! plane itself.

use std::sync::Arc;

use keel_api::client::{ApiClient, BoxFuture, BoxStream, ListParams, Patch, WatchEvent, WriteOptions};
use keel_api::registry::ResourceType;
use keel_api::status::ApiResult;
use serde_json::{json, Value};

use crate::objects::{Deleted, FieldValidation, Objects, WriteCtx};

#[derive(Clone)]
pub struct InProcessClient {
    objects: Arc<Objects>,
}

impl InProcessClient {
    pub fn new(objects: Arc<Objects>) -> Self {
        InProcessClient { objects }
    }
}

fn ctx(opts: &WriteOptions) -> WriteCtx {
    WriteCtx {
        field_manager: opts.field_manager.clone(),
        dry_run: opts.dry_run,
        validation: FieldValidation::Ignore,
        warnings: Vec::new(),
        user_agent: None,
        applying: false,
    }
}

fn list_object(rt: &ResourceType, list: crate::objects::ListResult) -> Value {
    let mut meta = json!({"resourceVersion": list.resource_version.to_string()});
    if let Some(c) = list.continue_token {
        meta["continue"] = json!(c);
    }
    let mut out =
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta});
    // Moved in, not through `json!` (which would copy every item by serializing it).
    out["items"] = Value::Array(list.items);
    out
}

impl ApiClient for InProcessClient {
    fn get(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move { self.objects.get(rt, ns.as_deref(), &name).await })
    }

    fn list(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        params: ListParams,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move {
            Ok(list_object(
                rt,
                self.objects.list(rt, ns.as_deref(), &params).await?,
            ))
        })
    }

    fn create(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        obj: Value,
        opts: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move { self.objects.create(rt, ns.as_deref(), obj, &mut ctx(&opts)).await })
    }

    fn update(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        obj: Value,
        subresource: Option<String>,
        opts: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move {
            let name = crate::objects::object_name(&obj).to_string();
            self.objects
                .update(
                    rt,
                    ns.as_deref(),
                    &name,
                    obj,
                    subresource.as_deref(),
                    &mut ctx(&opts),
                )
                .await
        })
    }

    fn patch(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
        patch: Patch,
        subresource: Option<String>,
        opts: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move {
            let (obj, _) = self
                .objects
                .patch(
                    rt,
                    ns.as_deref(),
                    &name,
                    &patch,
                    subresource.as_deref(),
                    &mut ctx(&opts),
                )
                .await?;
            Ok(obj)
        })
    }

    fn delete(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
        options: Value,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move {
            let options = if options.is_null() { json!({}) } else { options };
            match self
                .objects
                .delete(rt, ns.as_deref(), &name, &options, &mut WriteCtx::default())
                .await?
            {
                Deleted::Gone(o) | Deleted::Pending(o) => Ok(o),
            }
        })
    }

    fn watch(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        params: ListParams,
    ) -> BoxFuture<'_, ApiResult<BoxStream<ApiResult<WatchEvent>>>> {
        Box::pin(async move { self.objects.watch(rt, ns.as_deref(), &params).await })
    }

    fn create_subresource(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
        subresource: String,
        body: Value,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        Box::pin(async move {
            match subresource.as_str() {
                "binding" if rt.group.is_empty() && rt.plural == "pods" => {
                    crate::binding::bind(&self.objects, rt, ns.as_deref(), &name, &body).await?;
                    Ok(crate::binding::success())
                }
                other => Err(keel_api::status::ApiError::method_not_allowed(format!(
                    "create on {}/{other} is not supported in process",
                    rt.plural
                ))),
            }
        })
    }
}
