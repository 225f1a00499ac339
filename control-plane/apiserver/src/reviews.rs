//! The review resources: questions to the server that are answered, never stored.
//!
//! `kubectl auth whoami` (SelfSubjectReview), `auth can-i` (SelfSubjectAccessReview, answered by
//! the RBAC authorizer for the requesting, possibly impersonated, user), `auth can-i --list`
//! (SelfSubjectRulesReview: the user's rules in a namespace), and for components TokenReview,
//! SubjectAccessReview (about any user and groups) and LocalSubjectAccessReview (the same,
//! within the namespace of the URL). Who may ask is itself authorized like any request.

use http::{Method, Response, StatusCode};
use keel_api::registry::ResourceType;
use keel_api::status::{ApiError, ApiResult, Cause};
use keel_auth::UserInfo;
use serde_json::{json, Value};

use crate::authz::{self, Authorizer};
use crate::http::Body;
use crate::ApiServer;

pub async fn handle(
    server: &ApiServer,
    authz: &Authorizer,
    rt: &'static ResourceType,
    ns: Option<&str>,
    user: Option<&UserInfo>,
    method: &Method,
    mut body: Value,
) -> ApiResult<Response<Body>> {
    if method != Method::POST {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let user = user.ok_or_else(ApiError::unauthorized)?;
    if !body.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body of the request is not a {} object",
            rt.kind
        )));
    }
    body["apiVersion"] = json!(rt.api_version());
    body["kind"] = json!(rt.kind);
    let user_json = json!({"username": user.name, "uid": user.uid, "groups": user.groups});
    match rt.kind {
        "SelfSubjectReview" => {
            body["status"] = json!({"userInfo": user_json});
        }
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            if rt.kind == "LocalSubjectAccessReview" {
                let ns = ns.ok_or_else(|| ApiError::bad_request("namespace is required on this type: "))?;
                let meta_ns = body
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(ns)
                    .to_string();
                let spec_ns = body
                    .pointer("/spec/resourceAttributes/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(ns)
                    .to_string();
                if meta_ns != ns || spec_ns != ns {
                    return Err(ApiError::bad_request(format!(
                        "spec.resourceAttributes.namespace must match namespace: {ns}"
                    )));
                }
                if body
                    .pointer("/spec/resourceAttributes")
                    .is_some_and(Value::is_object)
                {
                    body["spec"]["resourceAttributes"]["namespace"] = json!(ns);
                }
                match body.get_mut("metadata") {
                    Some(Value::Object(meta)) => {
                        meta.insert("namespace".into(), json!(ns));
                    }
                    _ => body["metadata"] = json!({"namespace": ns}),
                }
            }
            let subject = if rt.kind == "SelfSubjectAccessReview" {
                user.clone()
            } else {
                subject_of(rt, &body)?
            };
            let spec = body.get("spec").cloned().unwrap_or(Value::Null);
            let attrs = authz::review_attributes(subject, &spec).ok_or_else(|| {
                ApiError::invalid(
                    rt,
                    "",
                    vec![Cause::invalid(
                        "spec.resourceAttributes",
                        &json!("null"),
                        "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                    )],
                )
            })?;
            let decision = authz.authorize(&attrs);
            let mut status = json!({"allowed": decision.allowed});
            if !decision.reason.is_empty() {
                status["reason"] = json!(decision.reason);
            }
            body["status"] = status;
        }
        "SelfSubjectRulesReview" => {
            let namespace = body
                .pointer("/spec/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let (rules, errors) = authz.rules_for(user, &namespace);
            let resource_rules: Vec<Value> = rules
                .iter()
                .filter(|r| !r.resources.is_empty())
                .map(|r| {
                    let mut v = r.to_json();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("nonResourceURLs");
                    }
                    v
                })
                .collect();
            let non_resource_rules: Vec<Value> = rules
                .iter()
                .filter(|r| !r.non_resource_urls.is_empty())
                .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
                .collect();
            let mut status = json!({
                "resourceRules": resource_rules,
                "nonResourceRules": non_resource_rules,
                "incomplete": false,
            });
            if !errors.is_empty() {
                status["evaluationError"] = json!(errors.join(", "));
            }
            body["status"] = status;
        }
        "TokenReview" => {
            let token = body
                .pointer("/spec/token")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            body["status"] = match server.authn.bearer(&token).await {
                Some(u) => {
                    json!({"authenticated": true, "user": {"username": u.name, "uid": u.uid, "groups": u.groups}})
                }
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
        }
        _ => return Err(ApiError::no_such_path()),
    }
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, v| k != "creationTimestamp" || !v.is_null());
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp = Response::new(http_body_util::BodyExt::boxed_unsync(
        http_body_util::BodyExt::map_err(http_body_util::Full::new(bytes::Bytes::from(bytes)), |never| {
            match never {}
        }),
    ));
    *resp.status_mut() = StatusCode::CREATED;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The user a SubjectAccessReview asks about: `spec.user`, `spec.groups`, `spec.uid`, taken as
/// given (no `system:authenticated` added, as upstream).
fn subject_of(rt: &ResourceType, body: &Value) -> ApiResult<UserInfo> {
    let spec = body.get("spec").cloned().unwrap_or(Value::Null);
    let name = spec.get("user").and_then(Value::as_str).unwrap_or("").to_string();
    let groups: Vec<String> = spec
        .get("groups")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    if name.is_empty() && groups.is_empty() {
        return Err(ApiError::invalid(
            rt,
            "",
            vec![Cause::invalid(
                "spec.user",
                &json!(""),
                "at least one of user or group must be specified",
            )],
        ));
    }
    Ok(UserInfo {
        name,
        uid: spec.get("uid").and_then(Value::as_str).unwrap_or("").to_string(),
        groups,
    })
}
