//! The errors of this crate: each says what was being done and to which file or object.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("generating {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("certificate signing request rejected: {0}")]
    CsrRejected(String),
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName { name: String, reason: &'static str },
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("token file {path} line {line}: {message}")]
    TokenFile {
        path: PathBuf,
        line: usize,
        message: String,
    },
}
