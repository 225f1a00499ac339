//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), which client-go's
//! typed clients send for `kubectl create <generator>`, `auth can-i`, `certificate approve` and
//! a few more verbs.

use keel_api::status::{ApiError, ApiResult};
use serde_json::Value;

/// Decodes a protobuf body into the object's JSON.
pub fn decode(_body: &[u8]) -> ApiResult<Value> {
    Err(ApiError::unsupported_media_type(
        "application/vnd.kubernetes.protobuf",
    ))
}
