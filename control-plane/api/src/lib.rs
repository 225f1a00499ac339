//! Kubernetes API machinery without I/O.
//!
//! Everything the API server needs to know about Kubernetes *formats and rules* lives here, as
//! pure functions over `serde_json::Value`: which kinds exist ([`registry`]), how discovery and
//! OpenAPI documents look ([`discovery`], [`openapi`]), how objects are checked against the
//! v1.32 schemas ([`schema`]), patched ([`patch`]), selected ([`selector`]), defaulted and validated
//! ([`defaults`], [`validation`]), printed as server-side Tables ([`table`]), and how errors read
//! ([`status`]). Nothing here touches the network or the store, so all of it is unit-testable
//! with table-driven fixtures.
//!
//! Objects are kept as JSON values rather than typed structs on purpose: the server must preserve
//! every field a client sent (including ones of newer API versions it prunes only on request),
//! and one generic path for all kinds is smaller than one per kind.

pub mod client;
pub mod defaults;
pub mod discovery;
pub mod managed;
pub mod metrics;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod status;
pub mod streams;
pub mod table;
pub mod time;
pub mod validation;
