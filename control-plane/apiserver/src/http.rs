//! HTTPS serving: TLS, HTTP/1.1 and HTTP/2, authentication, content negotiation, request bodies
//! and streaming watches.
//!
//! This is the only module that knows wire formats. A request is authenticated once per TLS
//! connection (client certificate) or per request (bearer token), routed by [`crate::route`],
//! and answered in the format the client asked for: JSON, YAML, or a server-side Table (which
//! is what `kubectl get` shows). Errors are always `Status` objects with the matching HTTP code.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_api::client::{ListParams, Patch, WatchEventKind};
use keel_api::registry::{ResourceType, Verbs};
use keel_api::status::{ApiError, ApiResult};
use keel_api::{discovery, openapi, table};
use keel_auth::UserInfo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::objects::{object_name, object_uid, Deleted, FieldValidation, WriteCtx};
use crate::route::{self, ResourcePath, Route};
use crate::{strategy, ApiServer};

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    server: Arc<ApiServer>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let authz = crate::authz::Authorizer::start(server.objects.clone()).await; // RBAC (crate::authz)
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let server = server.clone();
        let authz = authz.clone(); // RBAC
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| crate::authn::from_certificate(der.as_ref()));
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                let authz = authz.clone(); // RBAC
                let user = cert_user.clone();
                async move { Ok::<_, Infallible>(handle(server, authz, user, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Everything about a request the handlers need, parsed once.
struct Req {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    accept: String,
    content_type: String,
    user_agent: String,
    user: Option<UserInfo>,
    /// The RBAC authorizer (access reviews answer from it).
    authz: Arc<crate::authz::Authorizer>,
    body: Bytes,
    /// A WebSocket upgrade (exec, attach, port-forward), taken before the body was read.
    upgrade: Option<crate::streams::Upgrade>,
}

impl Req {
    fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.q(name), Some("true" | "1"))
    }

    fn write_ctx(&self) -> ApiResult<WriteCtx> {
        Ok(WriteCtx {
            field_manager: self.q("fieldManager").map(str::to_string),
            dry_run: self.query.iter().any(|(k, v)| k == "dryRun" && v == "All"),
            validation: FieldValidation::parse(self.q("fieldValidation"))?,
            warnings: Vec::new(),
            user_agent: (!self.user_agent.is_empty()).then(|| self.user_agent.clone()),
            ..WriteCtx::default()
        })
    }

    fn list_params(&self) -> ListParams {
        ListParams {
            label_selector: self.q("labelSelector").map(str::to_string),
            field_selector: self.q("fieldSelector").map(str::to_string),
            limit: self.q("limit").and_then(|l| l.parse().ok()),
            continue_token: self.q("continue").map(str::to_string),
            resource_version: self.q("resourceVersion").map(str::to_string),
            timeout_seconds: self.q("timeoutSeconds").and_then(|t| t.parse().ok()),
            allow_bookmarks: self.flag("allowWatchBookmarks"),
        }
    }

    fn streams<'a>(&'a self, server: &'a ApiServer) -> crate::streams::StreamRequest<'a> {
        crate::streams::StreamRequest {
            streams: server.streams.as_ref(),
            query: &self.query,
            upgrade: self.upgrade.as_ref(),
        }
    }

    fn wants(&self) -> Format {
        Format::from_accept(&self.accept)
    }
}

/// The response format a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
    Table,
}

impl Format {
    fn from_accept(accept: &str) -> Format {
        for part in accept.split(',') {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or("");
            let rest: Vec<&str> = params.collect();
            if media == "application/json" && rest.contains(&"as=Table") {
                return Format::Table;
            }
            if media == "application/yaml" {
                return Format::Yaml;
            }
            if media == "application/json" || media == "*/*" {
                return Format::Json;
            }
        }
        Format::Json
    }
}

async fn handle(
    server: Arc<ApiServer>,
    authz: Arc<crate::authz::Authorizer>,
    cert_user: Option<UserInfo>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let header = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let accept = header(header::ACCEPT);
    let content_type = header(header::CONTENT_TYPE);
    let authorization = header(header::AUTHORIZATION);
    let user_agent = header(header::USER_AGENT);
    let query = parse_query(req.uri().query().unwrap_or(""));

    let user = match cert_user {
        Some(u) => Some(u),
        None => match authorization
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            Some(token) => match server.authn.bearer(token).await {
                Some(u) => Some(u),
                None => return error_response(&ApiError::unauthorized()),
            },
            None => None,
        },
    };
    let route = route::parse(&path);
    let public = matches!(route, Route::Version | Route::Health(_));
    if user.is_none() && !public {
        return error_response(&ApiError::unauthorized());
    }
    // RBAC (crate::authz): impersonation headers, then authorization of the request.
    let user = match user.map(|u| authz.admit(u, req.method(), &path, &query, req.headers())) {
        Some(Ok(u)) => Some(u),
        Some(Err(e)) => return error_response(&e),
        None => None,
    };
    let upgrade = crate::streams::Upgrade::of(&mut req);
    let body = match http_body_util::Limited::new(req.into_body(), 8 << 20)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                "the request body is too large",
            ))
        }
    };
    let r = Req {
        method,
        path,
        query,
        accept,
        content_type,
        user_agent,
        user,
        authz,
        body,
        upgrade,
    };
    let resp = match dispatch(&server, route, &r).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    };
    if resp.status().is_success() {
        // RBAC (crate::authz): a policy write is answered once the authorizer has it.
        r.authz.written(&server.objects, &r.method, &r.path).await;
    }
    tracing::debug!(method = %r.method, path = %r.path, status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    resp
}

async fn dispatch(server: &ApiServer, route: Route, r: &Req) -> ApiResult<Response<Body>> {
    let get_only = |r: &Req| -> ApiResult<()> {
        if r.method == Method::GET || r.method == Method::HEAD {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ))
        }
    };
    let metrics = server.objects.config.metrics.is_some();
    match route {
        Route::Version => {
            get_only(r)?;
            Ok(json_response(StatusCode::OK, &version(), &[]))
        }
        Route::Health(_) => Ok(text_response(StatusCode::OK, "ok")),
        Route::DiscoveryRoot { core } => {
            get_only(r)?;
            if r.accept.contains("as=APIGroupDiscoveryList") {
                let doc = if core {
                    discovery::aggregated_core()
                } else {
                    discovery::aggregated_groups(metrics)
                };
                Ok(bytes_response(
                    StatusCode::OK,
                    discovery::AGGREGATED_CONTENT_TYPE,
                    to_bytes(&doc),
                    &[],
                ))
            } else if core {
                Ok(json_response(StatusCode::OK, &discovery::api_versions(None), &[]))
            } else {
                Ok(json_response(
                    StatusCode::OK,
                    &discovery::api_group_list(metrics),
                    &[],
                ))
            }
        }
        Route::DiscoveryGroup { group } => {
            get_only(r)?;
            let doc = discovery::api_group(&group, metrics).ok_or_else(ApiError::no_such_path)?;
            Ok(json_response(StatusCode::OK, &doc, &[]))
        }
        Route::DiscoveryGroupVersion { group, version } => {
            get_only(r)?;
            let doc =
                discovery::api_resource_list(&group, &version, metrics).ok_or_else(ApiError::no_such_path)?;
            Ok(json_response(StatusCode::OK, &doc, &[]))
        }
        Route::OpenApiV2 => {
            // Every served kind is described by the v3 documents; the v2 document only tells
            // kubectl's fallback (kinds nobody serves, such as removed API versions) that there
            // is nothing more, so that it reports "no matches for kind" as upstream does.
            get_only(r)?;
            Ok(bytes_response(
                StatusCode::OK,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                Bytes::new(),
                &[],
            ))
        }
        Route::OpenApiV3Index => {
            get_only(r)?;
            Ok(json_response(StatusCode::OK, &openapi::index(), &[]))
        }
        Route::OpenApiV3Document { group, version } => {
            get_only(r)?;
            let doc = openapi::group_version_document(&group, &version).ok_or_else(ApiError::no_such_path)?;
            let mut resp = bytes_response(
                StatusCode::OK,
                "application/json",
                Bytes::from(doc.bytes.clone()),
                &[],
            );
            resp.headers_mut().insert(header::ETAG, etag(&doc.hash));
            if r.q("hash").is_some() {
                resp.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, immutable"),
                );
            }
            Ok(resp)
        }
        Route::Metrics {
            namespace,
            plural,
            name,
        } => {
            get_only(r)?;
            let source = server.objects.config.metrics.as_deref().ok_or_else(|| {
                ApiError::service_unavailable(
                    "the server is currently unable to handle the request (metrics are not available yet)",
                )
            })?;
            let params = r.list_params();
            match crate::metrics::get(
                &server.objects,
                source,
                namespace.as_deref(),
                &plural,
                name.as_deref(),
                &params,
            )
            .await?
            {
                crate::metrics::Answer::Object(rt, obj) => object_response(rt, StatusCode::OK, &obj, r, &[]),
                crate::metrics::Answer::List(rt, items) => list_response(
                    rt,
                    crate::objects::ListResult {
                        items,
                        resource_version: 0,
                        continue_token: None,
                        remaining: None,
                    },
                    r,
                ),
            }
        }
        Route::Resource(p) => resource(server, p, r).await,
        Route::NotFound => Err(ApiError::no_such_path()),
    }
}

fn etag(hash: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{hash}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0-keel.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "keel",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

async fn resource(server: &ApiServer, p: ResourcePath, r: &Req) -> ApiResult<Response<Body>> {
    let objects = &server.objects;
    let rt = p.rt;
    let ns = p.namespace.as_deref();
    if rt.verbs == Verbs::ReadOnly {
        return computed(rt, p.name.as_deref(), r);
    }
    if rt.verbs == Verbs::CreateOnly {
        return crate::reviews::handle(
            server,
            &r.authz,
            rt,
            ns,
            r.user.as_ref(),
            &r.method,
            body_json(r)?,
        )
        .await;
    }
    if rt.namespaced && p.name.is_some() && ns.is_none() {
        return Err(ApiError::no_such_path());
    }
    // RBAC (crate::authz::escalation): roles and bindings grant no more than their writer holds.
    let escalating = |u: &&UserInfo| crate::authz::escalation::applies(rt, &r.method, &p, u);
    if let Some(user) = r.user.as_ref().filter(escalating) {
        let obj = match (&r.method, p.name.as_deref()) {
            (&Method::PATCH, Some(name)) => {
                let mut ctx = WriteCtx {
                    dry_run: true,
                    ..r.write_ctx()?
                };
                objects
                    .patch(rt, ns, name, &patch_of(r)?, None, &mut ctx)
                    .await?
                    .0
            }
            _ => body_json(r)?,
        };
        crate::authz::escalation::check(&r.authz, user, rt, ns, &obj)?;
    }
    match (p.name.as_deref(), p.subresource.as_deref()) {
        (None, _) => match r.method {
            Method::GET if r.flag("watch") => watch_response(server, rt, ns, r).await,
            Method::GET => {
                let params = r.list_params();
                if r.wants() == Format::Json {
                    if let Some(bytes) = objects.list_raw(rt, ns, &params).await? {
                        return Ok(bytes_response(
                            StatusCode::OK,
                            "application/json",
                            Bytes::from(bytes),
                            &[],
                        ));
                    }
                }
                if r.wants() == Format::Table {
                    let table = objects
                        .list_table(rt, ns, &params, table::TableOptions::default())
                        .await?;
                    return Ok(bytes_response(
                        StatusCode::OK,
                        "application/json;as=Table;v=v1;g=meta.k8s.io",
                        Bytes::from(table),
                        &[],
                    ));
                }
                let list = objects.list(rt, ns, &params).await?;
                list_response(rt, list, r)
            }
            Method::POST => {
                let ns = require_ns(rt, ns)?;
                let mut ctx = r.write_ctx()?;
                let obj = objects.create(rt, ns, body_json(r)?, &mut ctx).await?;
                object_response(rt, StatusCode::CREATED, &obj, r, &ctx.warnings)
            }
            Method::DELETE => {
                // deletecollection
                let params = r.list_params();
                let options = delete_options(r)?;
                let list = objects.list(rt, ns, &params).await?;
                let mut ctx = r.write_ctx()?;
                let mut items = Vec::new();
                for o in list.items {
                    let name = object_name(&o).to_string();
                    let ons = crate::objects::object_namespace(&o).to_string();
                    let ons = (!ons.is_empty()).then_some(ons);
                    match objects
                        .delete(rt, ons.as_deref(), &name, &options, &mut ctx)
                        .await
                    {
                        Ok(Deleted::Gone(o) | Deleted::Pending(o)) => items.push(o),
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
                let list = json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {}, "items": items});
                Ok(json_response(StatusCode::OK, &list, &ctx.warnings))
            }
            _ => Err(method_not_allowed()),
        },
        (Some(name), None) => match r.method {
            Method::GET => {
                let obj = objects.get(rt, ns, name).await?;
                object_response(rt, StatusCode::OK, &obj, r, &[])
            }
            Method::PUT => {
                let mut ctx = r.write_ctx()?;
                let existed = objects.get(rt, ns, name).await.is_ok();
                let obj = objects
                    .update(rt, ns, name, body_json(r)?, None, &mut ctx)
                    .await?;
                let code = if existed {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                };
                object_response(rt, code, &obj, r, &ctx.warnings)
            }
            Method::PATCH => {
                let mut ctx = r.write_ctx()?;
                let patch = patch_of(r)?;
                let (obj, created) = objects.patch(rt, ns, name, &patch, None, &mut ctx).await?;
                let code = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                object_response(rt, code, &obj, r, &ctx.warnings)
            }
            Method::DELETE => {
                let mut ctx = r.write_ctx()?;
                let options = delete_options(r)?;
                match objects.delete(rt, ns, name, &options, &mut ctx).await? {
                    Deleted::Gone(obj) if rt.kind != "Pod" && rt.kind != "Service" => {
                        let status = keel_api::status::success_status(rt, name, object_uid(&obj));
                        Ok(json_response(StatusCode::OK, &status, &ctx.warnings))
                    }
                    Deleted::Gone(obj) => object_response(rt, StatusCode::OK, &obj, r, &ctx.warnings),
                    Deleted::Pending(obj) => object_response(rt, StatusCode::OK, &obj, r, &ctx.warnings),
                }
            }
            _ => Err(method_not_allowed()),
        },
        (Some(name), Some(sub)) => subresource(server, rt, ns, name, sub, r).await,
    }
}

async fn subresource(
    server: &ApiServer,
    rt: &'static ResourceType,
    ns: Option<&str>,
    name: &str,
    sub: &str,
    r: &Req,
) -> ApiResult<Response<Body>> {
    let objects = &server.objects;
    if rt.subresource(sub).is_none() {
        return Err(ApiError::no_such_path());
    }
    match (sub, &r.method) {
        ("status" | "finalize" | "approval" | "ephemeralcontainers", &Method::GET) => {
            let obj = objects.get(rt, ns, name).await?;
            object_response(rt, StatusCode::OK, &obj, r, &[])
        }
        ("status" | "finalize" | "approval" | "ephemeralcontainers", &Method::PUT) => {
            let mut ctx = r.write_ctx()?;
            let obj = objects
                .update(rt, ns, name, body_json(r)?, Some(sub), &mut ctx)
                .await?;
            object_response(rt, StatusCode::OK, &obj, r, &ctx.warnings)
        }
        ("status" | "approval" | "ephemeralcontainers", &Method::PATCH) => {
            let mut ctx = r.write_ctx()?;
            let patch = patch_of(r)?;
            let (obj, _) = objects.patch(rt, ns, name, &patch, Some(sub), &mut ctx).await?;
            object_response(rt, StatusCode::OK, &obj, r, &ctx.warnings)
        }
        ("scale", &Method::GET) => {
            let obj = objects.get(rt, ns, name).await?;
            Ok(json_response(StatusCode::OK, &strategy::scale_of(rt, &obj), &[]))
        }
        ("scale", &Method::PUT) | ("scale", &Method::PATCH) => {
            let current = objects.get(rt, ns, name).await?;
            let scale = strategy::scale_of(rt, &current);
            let new_scale = if r.method == Method::PUT {
                body_json(r)?
            } else {
                let mut ctx = r.write_ctx()?;
                ctx.validation = FieldValidation::Ignore;
                strategy::apply_patch(rt, Some("scale"), &scale, &patch_of(r)?, &mut ctx)?
            };
            if let Some(rv) = new_scale
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                if !rv.is_empty()
                    && Some(rv)
                        != current
                            .pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                {
                    return Err(ApiError::conflict(rt, name));
                }
            }
            let replicas = new_scale
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    vec![keel_api::status::Cause::invalid(
                        "spec.replicas",
                        &json!(replicas),
                        "must be greater than or equal to 0",
                    )],
                ));
            }
            let mut ctx = r.write_ctx()?;
            let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
            let (obj, _) = objects.patch(rt, ns, name, &patch, None, &mut ctx).await?;
            Ok(json_response(
                StatusCode::OK,
                &strategy::scale_of(rt, &obj),
                &ctx.warnings,
            ))
        }
        ("binding", &Method::POST) => {
            let binding = body_json(r)?;
            crate::binding::bind(objects, rt, ns, name, &binding).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &crate::binding::success(),
                &[],
            ))
        }
        ("eviction", &Method::POST) => {
            let eviction = body_json(r)?;
            let mut ctx = r.write_ctx()?;
            crate::eviction::evict(objects, rt, ns.unwrap_or_default(), name, &eviction, &mut ctx).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                &[],
            ))
        }
        // Streams to the pod's node (crate::streams).
        ("log", &Method::GET) if rt.group.is_empty() && rt.plural == "pods" => {
            crate::streams::logs::get(objects, ns.unwrap_or_default(), name, &r.streams(server)).await
        }
        ("exec" | "attach", &Method::GET | &Method::POST) if rt.group.is_empty() && rt.plural == "pods" => {
            let attach = sub == "attach";
            crate::streams::remote::open(objects, ns.unwrap_or_default(), name, &r.streams(server), attach)
                .await
        }
        ("portforward", &Method::GET | &Method::POST) if rt.group.is_empty() && rt.plural == "pods" => {
            crate::streams::portforward::open(objects, ns.unwrap_or_default(), name, &r.streams(server)).await
        }
        ("log" | "exec" | "attach" | "portforward" | "proxy" | "token", _) => {
            Err(ApiError::service_unavailable(format!(
                "{sub} is not available yet for {}",
                rt.qualified_plural()
            )))
        }
        _ => Err(method_not_allowed()),
    }
}

/// Resources the server computes rather than stores: ComponentStatus (deprecated upstream, still
/// asked for by `kubectl get cs`): the scheduler, the controllers and the store answer for the
/// process they live in, so they are healthy whenever this answers.
fn computed(rt: &'static ResourceType, name: Option<&str>, r: &Req) -> ApiResult<Response<Body>> {
    if r.method != Method::GET {
        return Err(method_not_allowed());
    }
    let component = |n: &str| {
        json!({
            "kind": "ComponentStatus",
            "apiVersion": "v1",
            "metadata": {"name": n},
            "conditions": [{"type": "Healthy", "status": "True", "message": "ok"}],
        })
    };
    let names = ["controller-manager", "etcd-0", "scheduler"];
    let warning = vec!["v1 ComponentStatus is deprecated in v1.19+".to_string()];
    match name {
        Some(n) if names.contains(&n) => {
            let mut resp = object_response(rt, StatusCode::OK, &component(n), r, &[])?;
            add_warnings(&mut resp, &warning);
            Ok(resp)
        }
        Some(n) => Err(ApiError::not_found(rt, n)),
        None => {
            let items: Vec<Value> = names.iter().map(|n| component(n)).collect();
            let list = crate::objects::ListResult {
                items,
                resource_version: 0,
                continue_token: None,
                remaining: None,
            };
            let mut resp = list_response(rt, list, r)?;
            add_warnings(&mut resp, &warning);
            Ok(resp)
        }
    }
}

fn add_warnings(resp: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {w:?}")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
}

fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed("the server does not allow this method on the requested resource")
}

fn require_ns<'a>(rt: &ResourceType, ns: Option<&'a str>) -> ApiResult<Option<&'a str>> {
    if rt.namespaced && ns.is_none() {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    Ok(ns)
}

// ------------------------------------------------------------------------------------ bodies

fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Decodes an object body: JSON (also when no Content-Type is sent, as kubectl's scale PUT
/// does), YAML, or Kubernetes protobuf.
fn body_json(r: &Req) -> ApiResult<Value> {
    if r.body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match media_type(&r.content_type) {
        "" | "application/json" | "*/*" => serde_json::from_slice(&r.body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        }),
        "application/yaml" => yaml_to_json(&r.body),
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(&r.body),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn yaml_to_json(body: &[u8]) -> ApiResult<Value> {
    serde_yaml_ng::from_slice::<Value>(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as YAML: {e}"
        ))
    })
}

fn patch_of(r: &Req) -> ApiResult<Patch> {
    let parse = || -> ApiResult<Value> {
        serde_json::from_slice(&r.body)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))
    };
    match media_type(&r.content_type) {
        "application/json-patch+json" => Ok(Patch::Json(parse()?)),
        "application/merge-patch+json" => Ok(Patch::Merge(parse()?)),
        "application/strategic-merge-patch+json" => Ok(Patch::Strategic(parse()?)),
        "application/apply-patch+yaml" => {
            let body = yaml_to_json(&r.body)?;
            if r.q("fieldManager").unwrap_or("").is_empty() {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            Ok(Patch::Apply {
                body,
                force: r.flag("force"),
            })
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn delete_options(r: &Req) -> ApiResult<Value> {
    let mut options = if r.body.is_empty() {
        json!({})
    } else {
        match media_type(&r.content_type) {
            "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(&r.body)?,
            _ => serde_json::from_slice(&r.body)
                .map_err(|e| ApiError::bad_request(format!("DeleteOptions could not be decoded: {e}")))?,
        }
    };
    if let Some(g) = r.q("gracePeriodSeconds").and_then(|g| g.parse::<i64>().ok()) {
        options["gracePeriodSeconds"] = json!(g);
    }
    if let Some(p) = r.q("propagationPolicy") {
        options["propagationPolicy"] = json!(p);
    }
    if r.flag("orphanDependents") {
        options["orphanDependents"] = json!(true);
    }
    if r.query.iter().any(|(k, v)| k == "dryRun" && v == "All") {
        options["dryRun"] = json!(["All"]);
    }
    Ok(options)
}

// --------------------------------------------------------------------------------- responses

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

pub(crate) fn empty_body() -> Body {
    full(Bytes::new())
}

fn full(b: Bytes) -> Body {
    Full::new(b)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn bytes_response(code: StatusCode, content_type: &str, body: Bytes, warnings: &[String]) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = code;
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response<Body> {
    bytes_response(code, "application/json", to_bytes(v), warnings)
}

fn text_response(code: StatusCode, text: &'static str) -> Response<Body> {
    bytes_response(
        code,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
        &[],
    )
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.to_status(), &[])
}

fn formatted(v: &Value, format: Format, code: StatusCode, warnings: &[String]) -> Response<Body> {
    match format {
        Format::Yaml => match serde_yaml_ng::to_string(v) {
            Ok(y) => bytes_response(code, "application/yaml", Bytes::from(y), warnings),
            Err(e) => error_response(&ApiError::internal(e.to_string())),
        },
        _ => json_response(code, v, warnings),
    }
}

fn object_response(
    rt: &ResourceType,
    code: StatusCode,
    obj: &Value,
    r: &Req,
    warnings: &[String],
) -> ApiResult<Response<Body>> {
    match r.wants() {
        Format::Table => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let t = table::table(
                rt,
                std::slice::from_ref(obj),
                &table::ListMeta {
                    resource_version: rv,
                    continue_token: String::new(),
                    remaining_item_count: None,
                },
            );
            Ok(bytes_response(
                code,
                "application/json;as=Table;v=v1;g=meta.k8s.io",
                to_bytes(&t),
                warnings,
            ))
        }
        f => Ok(formatted(obj, f, code, warnings)),
    }
}

fn list_response(rt: &ResourceType, list: crate::objects::ListResult, r: &Req) -> ApiResult<Response<Body>> {
    let rv = list.resource_version.to_string();
    match r.wants() {
        Format::Table => {
            let meta = table::ListMeta {
                resource_version: rv,
                continue_token: list.continue_token.unwrap_or_default(),
                remaining_item_count: None,
            };
            let t = table::table(rt, &list.items, &meta);
            Ok(bytes_response(
                StatusCode::OK,
                "application/json;as=Table;v=v1;g=meta.k8s.io",
                to_bytes(&t),
                &[],
            ))
        }
        f => {
            let mut meta = json!({"resourceVersion": rv});
            if let Some(c) = list.continue_token {
                meta["continue"] = json!(c);
            }
            let v = json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": list.items});
            Ok(formatted(&v, f, StatusCode::OK, &[]))
        }
    }
}

async fn watch_response(
    server: &ApiServer,
    rt: &'static ResourceType,
    ns: Option<&str>,
    r: &Req,
) -> ApiResult<Response<Body>> {
    let params = r.list_params();
    let events = server.objects.watch(rt, ns, &params).await?;
    let format = r.wants();
    let timeout = params.timeout_seconds.map(Duration::from_secs);
    let mut first_table = true;
    let lines = events.map(move |ev| {
        let line = match ev {
            Ok(ev) => {
                let object = if format == Format::Table && ev.kind != WatchEventKind::Bookmark {
                    let rv = ev
                        .object
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let mut t = table::table(
                        rt,
                        std::slice::from_ref(&ev.object),
                        &table::ListMeta {
                            resource_version: rv,
                            continue_token: String::new(),
                            remaining_item_count: None,
                        },
                    );
                    if !first_table {
                        if let Some(o) = t.as_object_mut() {
                            o.insert("columnDefinitions".into(), json!([]));
                        }
                    }
                    first_table = false;
                    t
                } else {
                    ev.object
                };
                json!({"type": ev.kind.as_str(), "object": object})
            }
            Err(e) => json!({"type": "ERROR", "object": e.to_status()}),
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(bytes)))
    });
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send>> =
        match timeout {
            Some(t) => Box::pin(lines.take_until(tokio::time::sleep(t))),
            None => Box::pin(lines),
        };
    let content_type = match format {
        Format::Table => "application/json;as=Table;v=v1;g=meta.k8s.io",
        _ => "application/json",
    };
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

// ------------------------------------------------------------------------------------- query

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let q = parse_query("labelSelector=app%3Dweb%2Ctier%21%3Ddb&limit=500&x=a+b&bad=%zz");
        assert_eq!(q[0], ("labelSelector".into(), "app=web,tier!=db".into()));
        assert_eq!(q[2].1, "a b");
        assert_eq!(q[3].1, "%zz");
    }

    #[test]
    fn accept_negotiation() {
        assert_eq!(
            Format::from_accept("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"),
            Format::Table
        );
        assert_eq!(Format::from_accept("application/yaml"), Format::Yaml);
        assert_eq!(
            Format::from_accept("application/vnd.kubernetes.protobuf,application/json"),
            Format::Json
        );
    }
}
