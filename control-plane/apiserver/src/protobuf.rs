//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), which client-go's
//! typed clients send for `kubectl create <generator>`, `auth can-i`, `certificate approve` and
//! a few more verbs. Decoding is `keel_api::protobuf`'s; responses are always JSON, which every
//! client accepts.

use keel_api::status::ApiResult;
use serde_json::Value;

/// Decodes a protobuf body into the object's JSON.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    keel_api::protobuf::decode(body)
}
