//! Pulling images into the node's content-addressed store, and finding them there again.
//!
//! The store, under `/var/lib/keel/images`:
//!
//! ```text
//! blobs/sha256/<hex>   manifests, indexes and configs, exactly as the registry served them
//! layers/<hex>/        each layer unpacked once (named by its compressed digest), shared
//! refs/<hex>           a tag's last known manifest digest (hex of the reference string)
//! ```
//!
//! A pull fetches the manifest (an index is narrowed to linux/amd64), the config and every layer
//! not unpacked yet; every blob's sha256 is checked against its descriptor before it is used.
//! Layers are downloaded to a temporary file while hashing, unpacked into a temporary directory
//! and renamed into place, so a crash never leaves a half layer that looks whole; the compressed
//! blob is then dropped (the store lives in RAM on a diskless node).
//!
//! Endpoints are tried in order (mirrors first, see [`reference::endpoints`]); the first that
//! serves the image wins.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::reference::{self, valid_digest, Reference, ReferenceError};
use super::registry::{Client, RegistryError, Url};
use super::unpack::{self, UnpackError};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const ACCEPT: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: digest mismatch (expected {expected}, got {got})")]
    Digest {
        what: String,
        expected: String,
        got: String,
    },
    #[error("manifest of {0}: {1}")]
    Manifest(String, String),
    #[error("{0} has no linux/amd64 image")]
    NoPlatform(String),
    #[error("image {0} is not present on the node and the pull policy is Never")]
    NeverPull(String),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
}

impl ImageError {
    /// Whether the registry wanted credentials (or refused the ones it got).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ImageError::Registry(
                RegistryError::NeedsCredentials { .. }
                    | RegistryError::Denied { .. }
                    | RegistryError::Token { .. }
            )
        )
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// A manifest document, either kind.
#[derive(Debug, PartialEq, Eq)]
pub enum Manifest {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Parses a manifest or an index (OCI or Docker v2; schema 1 is refused).
pub fn parse_manifest(body: &[u8]) -> Result<Manifest, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        manifests: Option<Vec<Descriptor>>,
        #[serde(default)]
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Option<Vec<Descriptor>>,
    }
    let d: Doc = serde_json::from_slice(body).map_err(|e| format!("not a manifest: {e}"))?;
    if d.schema_version == Some(1) {
        return Err("Docker schema 1 manifests are not supported".into());
    }
    let check = |ds: &[Descriptor]| {
        ds.iter()
            .find(|x| !valid_digest(&x.digest))
            .map_or(Ok(()), |x| Err(format!("unsupported digest {:?}", x.digest)))
    };
    match (d.manifests, d.config, d.layers) {
        (Some(m), _, _) => {
            check(&m)?;
            Ok(Manifest::Index(m))
        }
        (None, Some(config), Some(layers)) => {
            check(std::slice::from_ref(&config))?;
            check(&layers)?;
            Ok(Manifest::Image { config, layers })
        }
        _ => Err("neither an image manifest nor an index".into()),
    }
}

/// The linux/amd64 entry of an index (one without a variant preferred).
pub fn select_platform(index: &[Descriptor]) -> Option<&Descriptor> {
    let fits = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    };
    index
        .iter()
        .filter(fits)
        .min_by_key(|d| d.platform.as_ref().and_then(|p| p.variant.as_ref()).is_some())
}

/// The part of an image config a container uses.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ExecConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    config: Option<ExecConfig>,
}

/// An image ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Normalised reference, `docker.io/library/busybox:1.35`.
    pub reference: String,
    /// `docker.io/library/busybox@sha256:…` (the digest the tag resolved to).
    pub repo_digest: String,
    /// `sha256:<config digest>`.
    pub id: String,
    pub config: ExecConfig,
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The pod's `imagePullPolicy`, defaulted as the API server does (`Always` for `:latest`).
    pub fn of(spec: Option<&str>, r: &Reference) -> PullPolicy {
        match spec {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ if r.digest.is_none() && r.tag.as_deref() == Some("latest") => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// Registry endpoints to use.
#[derive(Clone, Debug, Default)]
pub struct Registries {
    pub mirrors: Vec<(String, String)>,
    pub insecure: Vec<String>,
}

/// What a pull did, for events and figures.
#[derive(Clone, Debug, Default)]
pub struct PullStats {
    pub bytes: u64,
    pub layers_fetched: usize,
    pub millis: u128,
    pub from: String,
}

pub struct Store {
    root: PathBuf,
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    fn layer_path(&self, digest: &str) -> PathBuf {
        self.root.join("layers").join(hex_of(digest))
    }

    fn ref_path(&self, r: &Reference) -> PathBuf {
        self.root.join("refs").join(hex::encode(r.to_string()))
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, bytes).map_err(io_err(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, path).map_err(io_err(format!("renaming {}", tmp.display())))
    }

    /// The blobs (manifests, index, config) and layers an image's top manifest needs.
    fn reachable(&self, top: &str, blobs: &mut BTreeSet<String>, layers: &mut BTreeSet<String>) {
        blobs.insert(hex_of(top).to_string());
        let Some(m) = fs::read(self.blob_path(top))
            .ok()
            .and_then(|b| parse_manifest(&b).ok())
        else {
            return;
        };
        match m {
            Manifest::Index(idx) => {
                for d in idx {
                    self.reachable(&d.digest, blobs, layers);
                }
            }
            Manifest::Image { config, layers: ls } => {
                blobs.insert(hex_of(&config.digest).to_string());
                layers.extend(ls.iter().map(|l| hex_of(&l.digest).to_string()));
            }
        }
    }

    /// Image garbage collection: forgets every tag not in `keep` (normalised references, e.g.
    /// `docker.io/library/busybox:1.35`, the images of the node's pods), then removes the blobs
    /// and unpacked layers no kept image needs. Runs under the pull lock, so no pull is half
    /// done. Returns the number of images and layers removed.
    pub fn collect_garbage(&self, keep: &BTreeSet<String>) -> (usize, usize) {
        let (mut blobs, mut layers) = (BTreeSet::new(), BTreeSet::new());
        let mut images = 0;
        for e in fs::read_dir(self.root.join("refs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let reference = hex::decode(&name)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            if keep.contains(&reference) {
                if let Ok(top) = fs::read_to_string(e.path()) {
                    self.reachable(top.trim(), &mut blobs, &mut layers);
                }
            } else if fs::remove_file(e.path()).is_ok() {
                images += 1;
            }
        }
        // Images named by digest have no tag.
        for r in keep.iter().filter_map(|k| Reference::parse(k).ok()) {
            if let Some(d) = &r.digest {
                self.reachable(d, &mut blobs, &mut layers);
            }
        }
        let is_digest = |n: &str| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit());
        for e in fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_digest(&name) && !blobs.contains(&name) {
                let _ = fs::remove_file(e.path());
            }
        }
        let mut removed_layers = 0;
        for e in fs::read_dir(self.root.join("layers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_digest(&name) && !layers.contains(&name) && fs::remove_dir_all(e.path()).is_ok() {
                removed_layers += 1;
            }
        }
        (images, removed_layers)
    }

    /// The image if everything it needs is in the store.
    pub fn local(&self, r: &Reference) -> Option<Image> {
        let top = match &r.digest {
            Some(d) => d.clone(),
            None => fs::read_to_string(self.ref_path(r)).ok()?.trim().to_string(),
        };
        let body = fs::read(self.blob_path(&top)).ok()?;
        let (config, layers) = match parse_manifest(&body).ok()? {
            Manifest::Index(idx) => {
                let d = select_platform(&idx)?;
                match parse_manifest(&fs::read(self.blob_path(&d.digest)).ok()?).ok()? {
                    Manifest::Image { config, layers } => (config, layers),
                    Manifest::Index(_) => return None,
                }
            }
            Manifest::Image { config, layers } => (config, layers),
        };
        let cfg_body = fs::read(self.blob_path(&config.digest)).ok()?;
        let layer_dirs: Vec<PathBuf> = layers.iter().map(|l| self.layer_path(&l.digest)).collect();
        if !layer_dirs.iter().all(|d| d.is_dir()) {
            return None;
        }
        let doc: ConfigDoc = serde_json::from_slice(&cfg_body).ok()?;
        Some(Image {
            reference: r.to_string(),
            repo_digest: r.with_digest(&top),
            id: config.digest,
            config: doc.config.unwrap_or_default(),
            layers: layer_dirs,
        })
    }

    /// Makes the image available according to the pull policy.
    pub async fn ensure(
        &self,
        client: &mut Client,
        image: &str,
        policy: Option<&str>,
        registries: &Registries,
    ) -> Result<(Image, Option<PullStats>), ImageError> {
        let r = Reference::parse(image)?;
        let policy = PullPolicy::of(policy, &r);
        if policy != PullPolicy::Always {
            if let Some(img) = self.local(&r) {
                return Ok((img, None));
            }
        }
        if policy == PullPolicy::Never {
            return Err(ImageError::NeverPull(r.to_string()));
        }
        let mut last = None;
        for ep in reference::endpoints(&r, &registries.mirrors, &registries.insecure) {
            match self.pull_from(client, &r, &ep.base).await {
                Ok(done) => return Ok(done),
                Err(e) => {
                    if ep.mirror {
                        eprintln!(
                            "keel: pulling {r} from mirror {}: {e}; trying the next endpoint",
                            ep.base
                        );
                    }
                    // An endpoint that refused us says more than one that could not be reached.
                    if !last.as_ref().is_some_and(ImageError::is_auth) {
                        last = Some(e);
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| ImageError::Manifest(r.to_string(), "no endpoint".into())))
    }

    async fn fetch_small(
        &self,
        client: &mut Client,
        url: &str,
        accept: &[&str],
        expected: Option<&str>,
        what: &str,
    ) -> Result<Vec<u8>, ImageError> {
        let url = Url::parse(url)?;
        let (_, body) = client.get_small(&url, accept).await?;
        let got = sha256(&body);
        if let Some(exp) = expected {
            if exp != got {
                return Err(ImageError::Digest {
                    what: what.to_string(),
                    expected: exp.to_string(),
                    got,
                });
            }
        }
        self.write_atomic(&self.blob_path(&got), &body)?;
        Ok(body.to_vec())
    }

    async fn pull_from(
        &self,
        client: &mut Client,
        r: &Reference,
        base: &str,
    ) -> Result<(Image, Option<PullStats>), ImageError> {
        let started = Instant::now();
        let repo_url = format!("{base}/v2/{}", r.repository);
        let top_ref = r.manifest_reference();
        let body = self
            .fetch_small(
                client,
                &format!("{repo_url}/manifests/{top_ref}"),
                ACCEPT,
                r.digest.as_deref(),
                &format!("manifest of {r}"),
            )
            .await?;
        let top_digest = sha256(&body);
        let mut stats = PullStats {
            from: base.to_string(),
            ..Default::default()
        };
        stats.bytes += body.len() as u64;
        let manifest = parse_manifest(&body).map_err(|e| ImageError::Manifest(r.to_string(), e))?;
        let (config, layers) = match manifest {
            Manifest::Image { config, layers } => (config, layers),
            Manifest::Index(idx) => {
                let d = select_platform(&idx).ok_or_else(|| ImageError::NoPlatform(r.to_string()))?;
                let body = self
                    .fetch_small(
                        client,
                        &format!("{repo_url}/manifests/{}", d.digest),
                        ACCEPT,
                        Some(&d.digest),
                        &format!("linux/amd64 manifest of {r}"),
                    )
                    .await?;
                stats.bytes += body.len() as u64;
                match parse_manifest(&body).map_err(|e| ImageError::Manifest(r.to_string(), e))? {
                    Manifest::Image { config, layers } => (config, layers),
                    Manifest::Index(_) => {
                        return Err(ImageError::Manifest(
                            r.to_string(),
                            "an index inside an index".into(),
                        ))
                    }
                }
            }
        };
        let cfg_body = match fs::read(self.blob_path(&config.digest)) {
            Ok(b) if sha256(&b) == config.digest => b,
            _ => {
                let b = self
                    .fetch_small(
                        client,
                        &format!("{repo_url}/blobs/{}", config.digest),
                        &[],
                        Some(&config.digest),
                        &format!("config of {r}"),
                    )
                    .await?;
                stats.bytes += b.len() as u64;
                b
            }
        };
        let doc: ConfigDoc = serde_json::from_slice(&cfg_body)
            .map_err(|e| ImageError::Manifest(r.to_string(), format!("config is not JSON: {e}")))?;
        let mut dirs = Vec::new();
        for layer in &layers {
            let dir = self.layer_path(&layer.digest);
            if !dir.is_dir() {
                stats.bytes += self.fetch_layer(client, &repo_url, layer).await?;
                stats.layers_fetched += 1;
            }
            dirs.push(dir);
        }
        if r.digest.is_none() {
            self.write_atomic(&self.ref_path(r), top_digest.as_bytes())?;
        }
        stats.millis = started.elapsed().as_millis();
        Ok((
            Image {
                reference: r.to_string(),
                repo_digest: r.with_digest(&top_digest),
                id: config.digest,
                config: doc.config.unwrap_or_default(),
                layers: dirs,
            },
            Some(stats),
        ))
    }

    /// Downloads one layer while hashing it, then unpacks it into place. Returns its size.
    async fn fetch_layer(
        &self,
        client: &mut Client,
        repo_url: &str,
        layer: &Descriptor,
    ) -> Result<u64, ImageError> {
        let url = Url::parse(&format!("{repo_url}/blobs/{}", layer.digest))?;
        let tmp_dir = self.root.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(io_err(format!("creating {}", tmp_dir.display())))?;
        let hex = hex_of(&layer.digest).to_string();
        let blob = tmp_dir.join(format!("{hex}.blob"));
        let resp = client.get(&url, &[]).await?;
        let mut body = resp.into_body();
        let mut file = fs::File::create(&blob).map_err(io_err(format!("creating {}", blob.display())))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(frame) = super::registry::next_frame(&mut body, &url).await? {
            let frame = frame.map_err(|e| RegistryError::Http {
                url: url.to_string(),
                detail: e.to_string(),
            })?;
            if let Some(data) = frame.data_ref() {
                size += data.len() as u64;
                if layer.size > 0 && size > layer.size {
                    let _ = fs::remove_file(&blob);
                    return Err(RegistryError::TooLarge(url.to_string()).into());
                }
                hasher.update(data);
                file.write_all(data)
                    .map_err(io_err(format!("writing {}", blob.display())))?;
            }
        }
        drop(file);
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != layer.digest {
            let _ = fs::remove_file(&blob);
            return Err(ImageError::Digest {
                what: format!("layer {}", layer.digest),
                expected: layer.digest.clone(),
                got,
            });
        }
        let unpack_dir = tmp_dir.join(format!("{hex}.unpack"));
        let _ = fs::remove_dir_all(&unpack_dir);
        let (b, u) = (blob.clone(), unpack_dir.clone());
        let result = tokio::task::spawn_blocking(move || unpack::unpack_layer_file(&b, &u))
            .await
            .map_err(|e| ImageError::Io {
                what: "unpacking a layer".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let _ = fs::remove_file(&blob);
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&unpack_dir);
            return Err(e.into());
        }
        let dest = self.layer_path(&layer.digest);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
        }
        fs::rename(&unpack_dir, &dest)
            .map_err(io_err(format!("moving the layer into {}", dest.display())))?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn index_selects_linux_amd64_without_variant() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux","variant":"v3"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"windows"}}}}]}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('e')
        );
        let Manifest::Index(idx) = parse_manifest(index.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(select_platform(&idx).unwrap().digest, d('c'));
        assert_eq!(select_platform(&idx[..2]).unwrap().digest, d('b'));
        assert!(select_platform(&idx[..1]).is_none());
    }

    #[test]
    fn image_manifests_and_bad_documents() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"{}","size":2}},
               "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":3}}]}}"#,
            d('1'),
            d('2')
        );
        match parse_manifest(m.as_bytes()).unwrap() {
            Manifest::Image { config, layers } => {
                assert_eq!(config.digest, d('1'));
                assert_eq!(layers.len(), 1);
                assert_eq!(layers[0].size, 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_manifest(br#"{"schemaVersion":1,"fsLayers":[]}"#).is_err());
        assert!(parse_manifest(b"<html>").is_err());
        assert!(parse_manifest(br#"{"config":{"digest":"md5:x"},"layers":[]}"#).is_err());
    }

    #[test]
    fn pull_policy_defaults() {
        let latest = Reference::parse("busybox").unwrap();
        let pinned = Reference::parse("busybox:1.35").unwrap();
        assert_eq!(PullPolicy::of(None, &latest), PullPolicy::Always);
        assert_eq!(PullPolicy::of(None, &pinned), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::of(Some("Never"), &latest), PullPolicy::Never);
    }

    #[test]
    fn garbage_collection_keeps_what_pods_use_and_shared_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        // Two images sharing layer 1; the second also has layer 2.
        let put = |tag: &str, layers: &[char]| {
            let config = format!(r#"{{"config":{{"Cmd":["{tag}"]}}}}"#);
            let cfg_d = sha256(config.as_bytes());
            store
                .write_atomic(&store.blob_path(&cfg_d), config.as_bytes())
                .unwrap();
            let ls: Vec<String> = layers
                .iter()
                .map(|c| format!(r#"{{"digest":"{}","size":1}}"#, d(*c)))
                .collect();
            let manifest = format!(
                r#"{{"schemaVersion":2,"config":{{"digest":"{cfg_d}","size":1}},"layers":[{}]}}"#,
                ls.join(",")
            );
            let man_d = sha256(manifest.as_bytes());
            store
                .write_atomic(&store.blob_path(&man_d), manifest.as_bytes())
                .unwrap();
            let r = Reference::parse(tag).unwrap();
            store.write_atomic(&store.ref_path(&r), man_d.as_bytes()).unwrap();
            for c in layers {
                fs::create_dir_all(store.layer_path(&d(*c))).unwrap();
            }
            (r, man_d, cfg_d)
        };
        let (a, _, _) = put("a:1", &['1']);
        let (b, b_man, b_cfg) = put("b:1", &['1', '2']);
        assert!(store.local(&a).is_some() && store.local(&b).is_some());
        let keep: BTreeSet<String> = [a.to_string()].into();
        assert_eq!(store.collect_garbage(&keep), (1, 1));
        assert!(store.local(&a).is_some(), "the image in use stays whole");
        assert!(store.local(&b).is_none());
        assert!(store.layer_path(&d('1')).is_dir(), "a shared layer stays");
        assert!(!store.layer_path(&d('2')).exists());
        assert!(!store.blob_path(&b_man).exists() && !store.blob_path(&b_cfg).exists());
        assert_eq!(store.collect_garbage(&keep), (0, 0), "nothing more to do");
    }

    #[test]
    fn local_store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let r = Reference::parse("busybox:1.35").unwrap();
        assert!(store.local(&r).is_none());
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/bin"]}}"#;
        let cfg_d = sha256(config);
        let layer_d = d('9');
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{cfg_d}","size":{}}},"layers":[{{"digest":"{layer_d}","size":1}}]}}"#,
            config.len()
        );
        let man_d = sha256(manifest.as_bytes());
        store.write_atomic(&store.blob_path(&cfg_d), config).unwrap();
        store
            .write_atomic(&store.blob_path(&man_d), manifest.as_bytes())
            .unwrap();
        store.write_atomic(&store.ref_path(&r), man_d.as_bytes()).unwrap();
        assert!(store.local(&r).is_none(), "layer not unpacked yet");
        fs::create_dir_all(store.layer_path(&layer_d)).unwrap();
        let img = store.local(&r).unwrap();
        assert_eq!(img.id, cfg_d);
        assert_eq!(img.repo_digest, format!("docker.io/library/busybox@{man_d}"));
        assert_eq!(img.config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(img.layers, vec![store.layer_path(&layer_d)]);
    }
}
