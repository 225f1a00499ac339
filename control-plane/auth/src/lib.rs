//! PKI and authentication.
