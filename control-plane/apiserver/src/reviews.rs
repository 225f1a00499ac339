//! The review resources: questions to the server that are answered, never stored.
//!
//! `kubectl auth whoami` (SelfSubjectReview), `auth can-i` (SelfSubjectAccessReview,
//! SelfSubjectRulesReview), and TokenReview / SubjectAccessReview for components. Until RBAC is
//! enforced every authenticated user may do everything, and the answers say so.

use http::{Method, Response, StatusCode};
use keel_api::registry::ResourceType;
use keel_api::status::{ApiError, ApiResult};
use keel_auth::UserInfo;
use serde_json::{json, Value};

use crate::http::Body;
use crate::ApiServer;

pub async fn handle(
    server: &ApiServer,
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
    body["apiVersion"] = json!(rt.api_version());
    body["kind"] = json!(rt.kind);
    let user_json = json!({"username": user.name, "uid": user.uid, "groups": user.groups});
    match rt.kind {
        "SelfSubjectReview" => {
            body["status"] = json!({"userInfo": user_json});
        }
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            if rt.kind == "LocalSubjectAccessReview" {
                if let Some(ns) = ns {
                    body["spec"]["resourceAttributes"]["namespace"] = json!(ns);
                }
            }
            body["status"] = json!({"allowed": true, "reason": "authorization is not enforced yet: every authenticated user may do everything"});
        }
        "SelfSubjectRulesReview" => {
            body["status"] = json!({
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                "incomplete": false,
            });
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
