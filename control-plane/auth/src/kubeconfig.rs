//! Kubeconfig files with embedded credentials, as `kubeadm` writes `admin.conf`.
//!
//! Written by hand rather than through a YAML library: the shape is fixed and every value is
//! base64 or a JSON-quoted string, so the output is stable and byte-for-byte predictable
//! (the PKI compares it on restart to decide whether to rewrite it).

use base64::Engine as _;

use crate::ClientCredentials;

/// The name of the cluster, context and user entries.
pub const KUBECONFIG_NAME: &str = "keel";

/// A kubeconfig for `server` (e.g. `https://127.0.0.1:6443`) trusting `ca_pem`, logging in
/// with `creds`. Contains a private key: write it 0600.
pub fn render_kubeconfig(server: &str, ca_pem: &str, creds: &ClientCredentials) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let server = serde_json::Value::String(server.to_string()).to_string();
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: {n}\n\
         contexts:\n\
         - context:\n    cluster: {n}\n    user: {n}\n  name: {n}\n\
         current-context: {n}\n\
         preferences: {{}}\n\
         users:\n\
         - name: {n}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = b64(ca_pem),
        cert = b64(&creds.cert_pem),
        key = b64(creds.key_pem()),
        n = KUBECONFIG_NAME,
    )
}

/// The value of the first `key: value` line of a kubeconfig written by [`render_kubeconfig`].
pub(crate) fn field<'a>(kubeconfig: &'a str, key: &str) -> Option<&'a str> {
    kubeconfig
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(key))
        .find_map(|rest| rest.strip_prefix(": "))
}

/// Decodes a base64 field of a kubeconfig.
pub(crate) fn data_field(kubeconfig: &str, key: &str) -> Option<String> {
    let v = field(kubeconfig, key)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    String::from_utf8(bytes).ok()
}
