//! The client interface that in-process components (controllers, scheduler, node gate) use.
//!
//! It is the same set of verbs an out-of-process client has over HTTP, on purpose: anything
//! written against [`ApiClient`] can move out of process without a rewrite. The API server
//! implements it in-process (same validation, defaulting and admission as HTTP requests, minus
//! the wire formats); tests may implement it with a fake.

use std::future::Future;
use std::pin::Pin;

use futures::Stream;
use serde_json::Value;

use crate::registry::ResourceType;
use crate::status::ApiResult;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// Options of a list or watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<u64>,
    pub continue_token: Option<String>,
    /// For watch: start after this version. For list: "0" = any, else at least this fresh.
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
}

/// The kinds of patch a client can send.
#[derive(Clone, Debug, PartialEq)]
pub enum Patch {
    /// RFC 6902.
    Json(Value),
    /// RFC 7386.
    Merge(Value),
    /// Kubernetes strategic merge patch.
    Strategic(Value),
    /// Server-side apply with a field manager and the force flag.
    Apply { body: Value, force: bool },
}

/// Who is asking, and how a write is recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    pub field_manager: Option<String>,
    pub dry_run: bool,
}

/// One event of a watch: `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR` with its object.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchEvent {
    pub kind: WatchEventKind,
    pub object: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventKind {
    Added,
    Modified,
    Deleted,
    Bookmark,
    Error,
}

impl WatchEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchEventKind::Added => "ADDED",
            WatchEventKind::Modified => "MODIFIED",
            WatchEventKind::Deleted => "DELETED",
            WatchEventKind::Bookmark => "BOOKMARK",
            WatchEventKind::Error => "ERROR",
        }
    }
}

/// The verbs of the Kubernetes API on JSON objects.
pub trait ApiClient: Send + Sync + 'static {
    fn get(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
    ) -> BoxFuture<'_, ApiResult<Value>>;

    /// Returns the `<Kind>List` object.
    fn list(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        params: ListParams,
    ) -> BoxFuture<'_, ApiResult<Value>>;

    fn create(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        obj: Value,
        opts: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>>;

    /// PUT of the whole object (or of a subresource such as `status`).
    fn update(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        obj: Value,
        subresource: Option<String>,
        opts: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>>;

    fn patch(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
        patch: Patch,
        subresource: Option<String>,
        opts: WriteOptions,
    ) -> BoxFuture<'_, ApiResult<Value>>;

    /// `options` is a `DeleteOptions` object (may be `null`).
    fn delete(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
        options: Value,
    ) -> BoxFuture<'_, ApiResult<Value>>;

    fn watch(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        params: ListParams,
    ) -> BoxFuture<'_, ApiResult<BoxStream<ApiResult<WatchEvent>>>>;

    /// POST of `body` to a subresource of one object that only answers a POST
    /// (`pods/binding`), returning the server's answer. Clients that cannot express it answer
    /// 405.
    fn create_subresource(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        name: String,
        subresource: String,
        body: Value,
    ) -> BoxFuture<'_, ApiResult<Value>> {
        let _ = (rt, ns, name, body);
        Box::pin(async move {
            Err(crate::status::ApiError::method_not_allowed(format!(
                "create on subresource {subresource} is not supported by this client"
            )))
        })
    }
}
