//! Errors as Kubernetes `Status` objects, with upstream's wording.
//!
//! kubectl prints `Error from server (<reason>): <message>` and, for `Invalid`, one line per
//! cause; users know these texts, so the constructors here reproduce upstream's messages exactly.

use serde_json::{json, Value};

use crate::registry::ResourceType;

/// One cause of an `Invalid` (422) or conflict error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueDuplicate`,
    /// `FieldValueForbidden`, `FieldManagerConflict`, …
    pub reason: String,
    pub message: String,
    pub field: String,
}

impl Cause {
    pub fn new(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause {
            reason: reason.to_string(),
            message: message.into(),
            field: field.into(),
        }
    }

    /// `spec.containers[0].image: Required value`
    pub fn required(field: impl Into<String>) -> Self {
        Cause::new("FieldValueRequired", field, "Required value")
    }

    /// `metadata.name: Invalid value: "Bad": <detail>`
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {}: {detail}", render_value(value)),
        )
    }

    /// `spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "Never"`
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list = supported
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        Cause::new(
            "FieldValueNotSupported",
            field,
            format!(
                "Unsupported value: {}: supported values: {list}",
                render_value(value)
            ),
        )
    }

    /// `spec.selector: Invalid value: …: field is immutable`
    pub fn immutable(field: impl Into<String>, value: &Value) -> Self {
        Cause::invalid(field, value, "field is immutable")
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Cause::new(
            "FieldValueForbidden",
            field,
            format!("Forbidden: {}", detail.into()),
        )
    }

    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Cause::new(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {}", render_value(value)),
        )
    }
}

/// How upstream's field errors render a value: strings quoted, numbers bare, objects as Go would.
fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// An API error: HTTP code, reason and message, as a `Status` object.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details.name`, `details.group`, `details.kind` and `details.causes`.
    pub details: Option<Box<Details>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Details {
    pub name: String,
    pub group: String,
    pub kind: String,
    pub causes: Vec<Cause>,
    pub retry_after_seconds: Option<u32>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, d: Details) -> Self {
        self.details = Some(Box::new(d));
        self
    }

    fn resource_details(r: &ResourceType, name: &str) -> Details {
        Details {
            name: name.into(),
            group: r.group.into(),
            kind: r.plural.into(),
            ..Default::default()
        }
    }

    /// `pods "nope" not found`
    pub fn not_found(r: &ResourceType, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", r.qualified_plural()),
        )
        .with_details(Self::resource_details(r, name))
    }

    /// `the server could not find the requested resource` (unknown path).
    pub fn no_such_path() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(Details::default())
    }

    /// `pods "pod2" already exists`
    pub fn already_exists(r: &ResourceType, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", r.qualified_plural()),
        )
        .with_details(Self::resource_details(r, name))
    }

    /// Optimistic-concurrency failure.
    pub fn conflict(r: &ResourceType, name: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                r.qualified_plural()
            ),
        )
        .with_details(Self::resource_details(r, name))
    }

    /// A conflict with a custom explanation (`… "x": <why>`).
    pub fn conflict_because(r: &ResourceType, name: &str, why: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                r.qualified_plural()
            ),
        )
        .with_details(Self::resource_details(r, name))
    }

    /// `The Pod "invalid" is invalid: spec.containers[0].image: Required value` (422).
    pub fn invalid(r: &ResourceType, name: &str, causes: Vec<Cause>) -> Self {
        let list = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let kind_group = if r.group.is_empty() {
            r.kind.to_string()
        } else {
            format!("{}.{}", r.kind, r.group)
        };
        ApiError::new(
            422,
            "Invalid",
            format!("{kind_group} {name:?} is invalid: {joined}"),
        )
        .with_details(Details {
            name: name.into(),
            group: r.group.into(),
            kind: r.kind.into(),
            causes,
            ..Default::default()
        })
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// `pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "x"`
    pub fn forbidden(r: &ResourceType, name: &str, message: impl Into<String>) -> Self {
        ApiError::new(403, "Forbidden", message).with_details(Self::resource_details(r, name))
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"))
    }

    pub fn not_acceptable(accept: &str) -> Self {
        ApiError::new(406, "NotAcceptable", format!("only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io (got {accept:?})"))
    }

    /// `too old resource version: 5 (100)` (410, for watches and continue tokens).
    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    pub fn too_many_requests(message: impl Into<String>, causes: Vec<Cause>) -> Self {
        ApiError::new(429, "TooManyRequests", message).with_details(Details {
            causes,
            retry_after_seconds: Some(10),
            ..Default::default()
        })
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    /// The `Status` object as JSON.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut det = serde_json::Map::new();
            if !d.name.is_empty() {
                det.insert("name".into(), json!(d.name));
            }
            if !d.group.is_empty() {
                det.insert("group".into(), json!(d.group));
            }
            if !d.kind.is_empty() {
                det.insert("kind".into(), json!(d.kind));
            }
            if !d.causes.is_empty() {
                det.insert(
                    "causes".into(),
                    d.causes
                        .iter()
                        .map(|c| {
                            let mut o = json!({"reason": c.reason, "message": c.message});
                            if !c.field.is_empty() {
                                o["field"] = json!(c.field);
                            }
                            o
                        })
                        .collect(),
                );
            }
            if let Some(r) = d.retry_after_seconds {
                det.insert("retryAfterSeconds".into(), json!(r));
            }
            s["details"] = Value::Object(det);
        }
        s
    }
}

/// The `Status` a successful delete of a non-returning kind answers with.
pub fn success_status(r: &ResourceType, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": r.group, "kind": r.plural, "uid": uid}
    })
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    #[test]
    fn messages_read_as_upstream() {
        let pods = find("", "v1", "pods").unwrap();
        let deps = find("apps", "v1", "deployments").unwrap();
        assert_eq!(
            ApiError::not_found(pods, "nope").message,
            "pods \"nope\" not found"
        );
        assert_eq!(
            ApiError::already_exists(deps, "web").message,
            "deployments.apps \"web\" already exists"
        );
        let e = ApiError::invalid(pods, "invalid", vec![Cause::required("spec.containers[0].image")]);
        assert_eq!(
            e.message,
            "Pod \"invalid\" is invalid: spec.containers[0].image: Required value"
        );
        assert_eq!(
            e.to_status()["details"]["causes"][0]["reason"],
            "FieldValueRequired"
        );
        assert_eq!(e.code, 422);
    }
}
