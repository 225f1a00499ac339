//! The node protocol (`node.proto`): the only language the node binary and the control plane share.
//!
//! See the comments in `node.proto` for the flow: cluster info and join over server-authenticated
//! TLS, then one mutual-TLS session stream per node.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("keel.node.v1");
}

pub use v1::*;
