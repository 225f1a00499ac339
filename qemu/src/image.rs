//! The lab's test images, built here from Debian packages with no network and no Docker:
//!
//! * `library/busybox:1.35`: Debian's static busybox (`busybox-static`) with its applets linked
//!   in, so `sh`, `httpd`, `wget`, `nc` and the usual tools are there;
//! * `keel/echo:latest`: the same layer plus a small one with a busybox `httpd` CGI that answers
//!   `GET /` with `pod=<name> ip=<pod IP> client=<client address>`; it listens on port 8080
//!   (`PORT` overrides) and takes `POD_NAME` / `POD_IP` from the environment when the pod sets
//!   them (downward API), else the hostname and the first global IPv4 address.
//!
//! Images are OCI (`application/vnd.oci.image.manifest.v1+json`, gzip layers) and reproducible:
//! fixed timestamps and owners, sorted entries, and a gzip header without a time, so the same
//! busybox gives the same digests on every run and pushing again uploads nothing. The echo image
//! shares the busybox layer, which also exercises the node's layer sharing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Where Debian's `busybox-static` puts its binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// The port `keel/echo` listens on unless `PORT` is set.
pub const ECHO_PORT: u16 = 8080;

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list the applets of {path} (is it Debian's busybox-static?): {detail}")]
    Applets { path: PathBuf, detail: String },
    #[error("cannot write a layer: {0}")]
    Tar(#[source] std::io::Error),
}

/// `sha256:<hex>` of some bytes: the digest form the registry API uses.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One filesystem entry of a layer.
#[derive(Clone, Debug)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

/// Collects entries by path and writes them as a reproducible gzip tar.
#[derive(Default)]
struct LayerBuilder {
    entries: BTreeMap<String, Entry>,
}

impl LayerBuilder {
    fn dir(&mut self, path: &str, mode: u32) {
        self.entries.insert(path.to_owned(), Entry::Dir { mode });
    }

    /// Adds a file and every missing parent directory (mode 0755).
    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.parents(path);
        self.entries.insert(path.to_owned(), Entry::File { mode, data });
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entries.insert(
            path.to_owned(),
            Entry::Symlink {
                target: target.to_owned(),
            },
        );
    }

    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries
                .entry(prefix.clone())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
    }

    fn finish(self) -> Result<Layer, ImageError> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_ustar();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            let data: &[u8] = match entry {
                Entry::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    &[]
                }
                Entry::File { mode, data } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    data
                }
                Entry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    header.set_link_name(target).map_err(ImageError::Tar)?;
                    &[]
                }
            };
            let name = match entry {
                Entry::Dir { .. } => format!("{path}/"),
                _ => path.clone(),
            };
            tar.append_data(&mut header, name, data)
                .map_err(ImageError::Tar)?;
        }
        let raw = tar.into_inner().map_err(ImageError::Tar)?;
        let diff_id = digest(&raw);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&raw).map_err(ImageError::Tar)?;
        let blob = gz.finish().map_err(ImageError::Tar)?;
        Ok(Layer {
            digest: digest(&blob),
            diff_id,
            blob,
        })
    }
}

/// A compressed layer and the two digests an image needs of it.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The gzip tar as pushed.
    pub blob: Vec<u8>,
    /// `sha256:` of `blob`: how the manifest and the registry name it.
    pub digest: String,
    /// `sha256:` of the uncompressed tar: how the config's `rootfs.diff_ids` names it.
    pub diff_id: String,
}

/// A complete image, ready to push.
#[derive(Clone, Debug)]
pub struct Image {
    /// Repository in the registry, e.g. `library/busybox`.
    pub repository: String,
    pub tag: String,
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
    pub manifest: Vec<u8>,
}

impl Image {
    fn new(
        repository: &str,
        tag: &str,
        layers: Vec<Layer>,
        env: &[&str],
        cmd: &[&str],
        exposed: &[u16],
    ) -> Image {
        let exposed: serde_json::Map<String, serde_json::Value> = exposed
            .iter()
            .map(|p| (format!("{p}/tcp"), serde_json::json!({})))
            .collect();
        let config = serde_json::json!({
            "created": "1970-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": env,
                "Cmd": cmd,
                "WorkingDir": "/",
                "ExposedPorts": exposed,
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
            },
            "history": layers.iter().map(|_| serde_json::json!({"created_by": "keel-lab images"})).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": digest(&config),
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": l.digest,
                "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        Image {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            config,
            layers,
            manifest,
        }
    }

    /// `repository:tag`, as a user writes it after the registry host.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// The manifest's digest (what `image@sha256:…` pins).
    pub fn manifest_digest(&self) -> String {
        digest(&self.manifest)
    }
}

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The busybox base layer: the binary, its applet links, a minimal /etc and the usual empty
/// directories.
fn busybox_layer(busybox: &Path) -> Result<Layer, ImageError> {
    let binary = std::fs::read(busybox).map_err(|source| ImageError::Read {
        path: busybox.to_owned(),
        source,
    })?;
    let applets = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| ImageError::Applets {
            path: busybox.to_owned(),
            detail: e.to_string(),
        })?;
    if !applets.status.success() {
        return Err(ImageError::Applets {
            path: busybox.to_owned(),
            detail: String::from_utf8_lossy(&applets.stderr).into_owned(),
        });
    }
    let applets = String::from_utf8_lossy(&applets.stdout).into_owned();
    let mut layer = LayerBuilder::default();
    for dir in [
        "bin", "dev", "etc", "home", "proc", "root", "run", "sbin", "sys", "usr", "usr/bin", "usr/sbin",
        "var", "var/run",
    ] {
        layer.dir(dir, 0o755);
    }
    layer.dir("root", 0o700);
    layer.dir("tmp", 0o1777);
    layer.dir("var/tmp", 0o1777);
    layer.file("bin/busybox", 0o755, binary);
    let mut linked = 0;
    for applet in applets.lines().map(str::trim) {
        let valid = !applet.is_empty()
            && !applet.starts_with('/')
            && !applet.split('/').any(|p| p.is_empty() || p == "." || p == "..");
        if valid && applet != "bin/busybox" {
            layer.symlink(applet, "/bin/busybox");
            linked += 1;
        }
    }
    if linked == 0 {
        return Err(ImageError::Applets {
            path: busybox.to_owned(),
            detail: "it lists no applets".into(),
        });
    }
    layer.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n".to_vec(),
    );
    layer.file("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n".to_vec());
    layer.finish()
}

const ECHO_SERVE: &str = r#"#!/bin/sh
# keel/echo: an HTTP server that answers with the pod's name and IP and the client's address.
port="${PORT:-8080}"
echo "keel/echo listening on :$port"
exec httpd -f -vv -p "$port" -h /echo/www
"#;

const ECHO_CGI: &str = r#"#!/bin/sh
# Answers GET / (busybox httpd runs cgi-bin/index.cgi for a directory without index.html).
name="${POD_NAME:-$(hostname)}"
ip="${POD_IP:-$(ip -o -4 addr show scope global 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')}"
client="${REMOTE_ADDR#[}"
client="${client%]}"
client="${client#::ffff:}"
printf 'Content-Type: text/plain\r\n\r\n'
printf 'pod=%s ip=%s client=%s\n' "$name" "$ip" "$client"
"#;

fn echo_layer() -> Result<Layer, ImageError> {
    let mut layer = LayerBuilder::default();
    layer.file("echo/serve", 0o755, ECHO_SERVE.as_bytes().to_vec());
    layer.file("echo/www/cgi-bin/index.cgi", 0o755, ECHO_CGI.as_bytes().to_vec());
    layer.finish()
}

/// The images every lab registry holds, built from the busybox binary at `busybox`.
pub fn lab_images(busybox: &Path) -> Result<Vec<Image>, ImageError> {
    let base = busybox_layer(busybox)?;
    let busybox_image = Image::new(
        "library/busybox",
        "1.35",
        vec![base.clone()],
        &[PATH_ENV],
        &["sh"],
        &[],
    );
    let echo = Image::new(
        "keel/echo",
        "latest",
        vec![base, echo_layer()?],
        &[PATH_ENV],
        &["/echo/serve"],
        &[ECHO_PORT],
    );
    Ok(vec![busybox_image, echo])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Path, type, mode, contents, link target.
    type Row = (String, tar::EntryType, u32, Vec<u8>, Option<String>);

    fn entries(layer: &Layer) -> Vec<Row> {
        let raw = {
            let mut d = flate2::read::GzDecoder::new(&layer.blob[..]);
            let mut v = Vec::new();
            d.read_to_end(&mut v).unwrap();
            v
        };
        assert_eq!(digest(&raw), layer.diff_id);
        let mut archive = tar::Archive::new(&raw[..]);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    data,
                    h.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn builds_are_reproducible_and_layers_shared() {
        let a = lab_images(Path::new(DEFAULT_BUSYBOX)).unwrap();
        let b = lab_images(Path::new(DEFAULT_BUSYBOX)).unwrap();
        assert_eq!(a[0].manifest_digest(), b[0].manifest_digest());
        assert_eq!(a[1].manifest_digest(), b[1].manifest_digest());
        assert_eq!(a[0].layers[0].digest, a[1].layers[0].digest);
        assert_eq!(a[0].reference(), "library/busybox:1.35");
        assert_eq!(a[1].reference(), "keel/echo:latest");
    }

    #[test]
    fn busybox_layer_has_the_binary_and_the_applets_the_tests_use() {
        let images = lab_images(Path::new(DEFAULT_BUSYBOX)).unwrap();
        let es = entries(&images[0].layers[0]);
        let find = |p: &str| {
            es.iter()
                .find(|e| e.0 == p)
                .unwrap_or_else(|| panic!("{p} missing"))
        };
        let bin = find("bin/busybox");
        assert_eq!(bin.1, tar::EntryType::Regular);
        assert_eq!(bin.2, 0o755);
        assert_eq!(bin.3, std::fs::read(DEFAULT_BUSYBOX).unwrap());
        for applet in ["bin/sh", "usr/bin/wget", "usr/sbin/httpd"] {
            let (_, kind, _, _, link) = find(applet);
            assert_eq!(*kind, tar::EntryType::Symlink, "{applet}");
            assert_eq!(link.as_deref(), Some("/bin/busybox"), "{applet}");
        }
        assert!(es.iter().any(|e| e.0.ends_with("/nc")), "nc missing");
        assert_eq!(find("tmp/").2, 0o1777);
        // Parents come before children, so an unpacker never meets a file before its directory.
        let pos = |p: &str| es.iter().position(|e| e.0 == p).unwrap();
        assert!(pos("usr/") < pos("usr/bin/") && pos("usr/bin/") < pos("usr/bin/wget"));
    }

    #[test]
    fn config_and_manifest_agree_with_the_layers() {
        let images = lab_images(Path::new(DEFAULT_BUSYBOX)).unwrap();
        let echo = &images[1];
        let config: serde_json::Value = serde_json::from_slice(&echo.config).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&echo.manifest).unwrap();
        assert_eq!(manifest["config"]["digest"], digest(&echo.config));
        assert_eq!(manifest["config"]["size"], echo.config.len());
        for (i, layer) in echo.layers.iter().enumerate() {
            assert_eq!(manifest["layers"][i]["digest"], layer.digest);
            assert_eq!(manifest["layers"][i]["size"], layer.blob.len());
            assert_eq!(config["rootfs"]["diff_ids"][i], layer.diff_id);
        }
        assert_eq!(config["config"]["Cmd"][0], "/echo/serve");
        assert!(config["config"]["ExposedPorts"]["8080/tcp"].is_object());
    }

    /// Runs the echo CGI with the host's busybox the way httpd would and checks its answer.
    #[test]
    fn echo_cgi_answers_with_pod_and_client() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("index.cgi");
        std::fs::write(&script, ECHO_CGI).unwrap();
        let out = Command::new(DEFAULT_BUSYBOX)
            .arg("sh")
            .arg(&script)
            .env("POD_NAME", "echo-7d9f")
            .env("POD_IP", "10.244.1.7")
            .env("REMOTE_ADDR", "[::ffff:10.244.2.9]")
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with("Content-Type: text/plain\r\n\r\n"), "{text:?}");
        assert!(
            text.ends_with("pod=echo-7d9f ip=10.244.1.7 client=10.244.2.9\n"),
            "{text:?}"
        );
    }
}
