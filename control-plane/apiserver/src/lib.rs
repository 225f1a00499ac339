//! The Kubernetes REST API over HTTPS.
