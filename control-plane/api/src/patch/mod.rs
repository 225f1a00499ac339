//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch.
//!
//! The apiserver picks the patch type from the request's Content-Type
//! ([`PatchType::from_content_type`]) and calls [`apply`] with the stored object and the raw body;
//! the answer is the patched object or an [`ApiError`] worded as upstream's apiserver words it
//! (kubectl users know these texts). Server-side apply (`application/apply-patch+yaml`) is not a
//! patch in this sense and is handled by the field manager, not here.
//!
//! JSON and merge patches delegate to the `json-patch` crate. Strategic merge patch needs the
//! kind's schema (patch strategies and merge keys) and lives in [`strategic`]; kinds without a
//! built-in schema (custom resources) reject it with 415 as upstream does.

// `ApiError` (the crate's error, a full `Status`) is large; answering with it by value is the
// crate-wide convention.
#![allow(clippy::result_large_err)]

pub mod strategic;

use serde_json::Value;

use crate::schema::{self, Gvk};
use crate::status::ApiError;
use strategic::SmpErrorClass;

/// A patch format the server applies itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

impl PatchType {
    /// The patch type of a Content-Type header (parameters ignored); `None` for anything else,
    /// including `application/apply-patch+yaml` (server-side apply, handled elsewhere).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media.to_ascii_lowercase().as_str() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::Strategic => "application/strategic-merge-patch+json",
        }
    }
}

/// The 415 answer to a PATCH whose Content-Type is no patch type the kind accepts. `strategic` says whether
/// the kind accepts strategic merge patches (built-in kinds do, custom resources do not).
pub fn unsupported_patch_type(strategic: bool) -> ApiError {
    let mut accepted = vec![
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    ];
    if strategic {
        accepted.push("application/strategic-merge-patch+json");
    }
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            accepted.join(", ")
        ),
    )
    .with_empty_details()
}

/// Applies a PATCH body of type `patch_type` to `original`, an object of kind `gvk`.
pub fn apply(patch_type: PatchType, original: &Value, body: &[u8], gvk: Gvk<'_>) -> Result<Value, ApiError> {
    match patch_type {
        PatchType::Json => json_patch(original, body),
        PatchType::Merge => merge_patch(original, body),
        PatchType::Strategic => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(decode_message(body, &e, "map[string]interface {}")))?;
            strategic_merge_patch(original, &patch, gvk)
        }
    }
}

/// RFC 6902. A malformed body is 400; an operation that does not apply (a failed `test`, a
/// missing path) is upstream's 422 "the server rejected our request due to an error in our
/// request" (upstream drops the detail from the answer; so do we, to read the same).
pub fn json_patch(original: &Value, body: &[u8]) -> Result<Value, ApiError> {
    let patch: json_patch::Patch = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(decode_message(body, &e, "jsonpatch.Patch")))?;
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &patch.0).map_err(|_| rejected())?;
    Ok(doc)
}

/// RFC 7386. The body must be a JSON object.
pub fn merge_patch(original: &Value, body: &[u8]) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(decode_message(body, &e, "map[string]interface {}")))?;
    if !patch.is_object() {
        return Err(ApiError::bad_request("Invalid JSON Patch"));
    }
    let mut doc = original.clone();
    json_patch::merge(&mut doc, &patch);
    Ok(doc)
}

/// Strategic merge patch of an already decoded `patch` onto `original` (both JSON objects),
/// driven by the schema of `gvk`. Kinds without a built-in schema answer 415.
pub fn strategic_merge_patch(original: &Value, patch: &Value, gvk: Gvk<'_>) -> Result<Value, ApiError> {
    let Some(root) = schema::schemas().root(gvk) else {
        return Err(unsupported_patch_type(false));
    };
    let Value::Object(p) = patch else {
        return Err(ApiError::bad_request(format!(
            "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            go_type(patch)
        )));
    };
    let o = match original {
        Value::Object(o) => o.clone(),
        _ => serde_json::Map::new(),
    };
    strategic::merge_objects(o, p.clone(), Some(root))
        .map(Value::Object)
        .map_err(|e| match e.class() {
            SmpErrorClass::BadRequest => ApiError::bad_request(e.to_string()),
            SmpErrorClass::Unprocessable => rejected(),
            SmpErrorClass::Internal => ApiError::internal(e.to_string()),
        })
}

/// Upstream's generic 422 for a patch that is well-formed but cannot be applied.
fn rejected() -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
    )
    .with_empty_details()
}

/// Go's `encoding/json` message for a body of the wrong JSON type, or the parser's message.
fn decode_message(body: &[u8], err: &serde_json::Error, go_target: &str) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => format!(
            "json: cannot unmarshal {} into Go value of type {go_target}",
            go_type(&v)
        ),
        Err(_) => err.to_string(),
    }
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

trait EmptyDetails {
    fn with_empty_details(self) -> Self;
}

impl EmptyDetails for ApiError {
    fn with_empty_details(mut self) -> Self {
        self.details = Some(Box::default());
        self
    }
}

#[cfg(test)]
mod tests;
