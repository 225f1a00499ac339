//! The node's identity on disk, under the state directory (`/var/lib/keel`):
//!
//! ```text
//! pki/node.key (0600)  pki/node.crt  pki/ca.crt  identity.json  machine-id
//! ```
//!
//! A restarted agent reuses them and goes straight to its session; it joins again only when
//! they are missing, belong to another server, or the control plane refuses them. The private
//! key is generated here and never leaves the node.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::host;

/// What a joined node holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub node_name: String,
    /// The `keel.server` it joined.
    pub server: String,
    pub ca_pem: String,
    pub cert_pem: String,
    /// PKCS#8 PEM. Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_name", &self.node_name)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    node_name: String,
    server: String,
}

/// A state-directory file operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct StateError {
    action: &'static str,
    path: PathBuf,
    source: io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file atomically with its final mode from the start.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err("creating", &tmp))?;
    f.write_all(data).map_err(err("writing", &tmp))?;
    f.sync_all().map_err(err("syncing", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err("chmod", &tmp))?;
    fs::rename(&tmp, path).map_err(err("renaming", path))
}

fn read_optional(path: &Path) -> Result<Option<String>, StateError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("reading", path)(e)),
    }
}

fn pki_dir(state: &Path) -> PathBuf {
    state.join("pki")
}

impl Identity {
    /// The stored identity, `None` if the node has not joined (or its files are incomplete).
    pub fn load(state: &Path) -> Result<Option<Identity>, StateError> {
        let pki = pki_dir(state);
        let meta = read_optional(&state.join("identity.json"))?;
        let key = read_optional(&pki.join("node.key"))?;
        let cert = read_optional(&pki.join("node.crt"))?;
        let ca = read_optional(&pki.join("ca.crt"))?;
        let (Some(meta), Some(key_pem), Some(cert_pem), Some(ca_pem)) = (meta, key, cert, ca) else {
            return Ok(None);
        };
        let Ok(meta) = serde_json::from_str::<IdentityFile>(&meta) else {
            return Ok(None);
        };
        Ok(Some(Identity {
            node_name: meta.node_name,
            server: meta.server,
            ca_pem,
            cert_pem,
            key_pem,
        }))
    }

    pub fn save(&self, state: &Path) -> Result<(), StateError> {
        let pki = pki_dir(state);
        fs::create_dir_all(&pki).map_err(err("creating", &pki))?;
        fs::set_permissions(&pki, fs::Permissions::from_mode(0o700)).map_err(err("chmod", &pki))?;
        write_file(&pki.join("node.key"), self.key_pem.as_bytes(), 0o600)?;
        write_file(&pki.join("node.crt"), self.cert_pem.as_bytes(), 0o644)?;
        write_file(&pki.join("ca.crt"), self.ca_pem.as_bytes(), 0o644)?;
        let meta = IdentityFile {
            node_name: self.node_name.clone(),
            server: self.server.clone(),
        };
        let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        // Last: its presence marks the identity complete.
        write_file(&state.join("identity.json"), &json, 0o644)
    }

    /// Forgets the identity (the control plane refused it); the next start joins again.
    pub fn remove(state: &Path) -> Result<(), StateError> {
        let path = state.join("identity.json");
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("removing", &path)(e)),
        }
    }
}

/// When (seconds since the Unix epoch) two thirds of the certificate's lifetime are used up:
/// the point where the agent renews it, as the kubelet rotates its client certificate well
/// before expiry. `None` if the certificate cannot be read.
pub fn renewal_at(cert_pem: &str) -> Option<i64> {
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let start = cert.validity().not_before.timestamp();
    let end = cert.validity().not_after.timestamp();
    Some(start + (end - start) * 2 / 3)
}

/// Whether the certificate is past its end at `now` (or unreadable).
pub fn expired(cert_pem: &str, now: i64) -> bool {
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok(der) = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
        return true;
    };
    X509Certificate::from_der(&der).map_or(true, |(_, c)| now >= c.validity().not_after.timestamp())
}

/// Whether the certificate is due for renewal at `now` (or unreadable).
pub fn renewal_due(cert_pem: &str, now: i64) -> bool {
    renewal_at(cert_pem).is_none_or(|at| now >= at)
}

/// The node's machine id: generated once, then the same across restarts and reboots (as long
/// as the state directory persists).
pub fn machine_id(state: &Path) -> Result<String, StateError> {
    let path = state.join("machine-id");
    if let Some(id) = read_optional(&path)? {
        let id = id.trim();
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
    }
    let id: String = host::random_uuid()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    if id.len() != 32 {
        return Err(StateError {
            action: "generating",
            path,
            source: io::Error::other("the kernel did not provide a random UUID"),
        });
    }
    fs::create_dir_all(state).map_err(err("creating", state))?;
    write_file(&path, format!("{id}\n").as_bytes(), 0o644)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_lifetime() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 1, 31); // 30 days
        let pem = params.self_signed(&key).unwrap().pem();
        let day = |d: i64| 1_767_225_600 + d * 86400; // 2026-01-01 + d days
        assert!(!renewal_due(&pem, day(0)));
        assert!(!renewal_due(&pem, day(19)));
        assert!(renewal_due(&pem, day(20)));
        assert!(renewal_due(&pem, day(40)));
        assert!(renewal_due("not a certificate", day(0)));
        assert!(!expired(&pem, day(29)));
        assert!(expired(&pem, day(30)));
        assert!(expired("not a certificate", day(0)));
    }

    #[test]
    fn identity_round_trips_and_hides_the_key() {
        let dir = std::env::temp_dir().join(format!("keel-identity-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(Identity::load(&dir).unwrap(), None);
        let id = Identity {
            node_name: "n1".into(),
            server: "https://127.0.0.1:9443".into(),
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "SECRET-KEY".into(),
        };
        id.save(&dir).unwrap();
        assert_eq!(Identity::load(&dir).unwrap(), Some(id.clone()));
        let mode = fs::metadata(dir.join("pki/node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{id:?}").contains("SECRET"));
        Identity::remove(&dir).unwrap();
        assert_eq!(Identity::load(&dir).unwrap(), None);

        let m1 = machine_id(&dir).unwrap();
        assert_eq!(m1.len(), 32);
        assert_eq!(machine_id(&dir).unwrap(), m1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
