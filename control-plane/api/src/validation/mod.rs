//! Upstream validation of objects (`k8s.io/kubernetes/pkg/apis/*/validation`), with upstream's
//! messages.

pub mod names;
pub mod quantity;
