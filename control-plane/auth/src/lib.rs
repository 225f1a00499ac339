//! PKI and authentication for the control plane.
//!
//! * [`Pki`]: the cluster CA and everything signed by it — the serving certificate of the API
//!   server and node gate, the admin kubeconfig, client certificates, node certificates from
//!   CSRs. Created on first start under `<data dir>/pki/`, reused afterwards.
//! * Authentication, three ways, all ending in a [`UserInfo`]:
//!   client certificates ([`authenticate_cert`]), static bearer tokens from a token file
//!   ([`TokenAuthenticator`]), and kubeadm-style bootstrap tokens ([`BootstrapToken`]) checked
//!   against their `bootstrap-token-<id>` Secret.
//!
//! The crate does no network I/O and knows nothing about the store: callers fetch Secrets through
//! their API client and hand them in. That keeps every rule here unit-testable.

mod bootstrap;
mod error;
mod files;
mod host;
mod kubeconfig;
mod pki;
mod tokenfile;
mod user;

pub use bootstrap::{BootstrapToken, BootstrapTokenError, BOOTSTRAP_TOKEN_SECRET_TYPE};
pub use error::Error;
pub use kubeconfig::render_kubeconfig;
pub use pki::{ClientCredentials, IssuedCertificate, Pki, PkiOptions};
pub use tokenfile::TokenAuthenticator;
pub use user::{authenticate_cert, UserInfo, GROUP_AUTHENTICATED, GROUP_NODES, NODE_USER_PREFIX};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Compares two byte strings in time that depends only on their lengths, so that a token
/// check does not leak how many leading bytes matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}
