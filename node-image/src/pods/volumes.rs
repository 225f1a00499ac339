//! Pod volumes, first slice: `emptyDir`, `configMap` and `secret` (from what the control plane
//! resolved, `keelResolved`), `downwardAPI` and `hostPath` (with its `type` checks), mounted into containers by
//! `volumeMounts` (with `readOnly` and `subPath`).
//!
//! Each volume is a directory under the pod's directory (`/var/lib/keel/pods/<uid>/volumes/
//! <name>`), so an `emptyDir` lives as long as the pod and is shared by its containers and kept
//! across restarts. ConfigMap, Secret and downward API volumes are written in place (`items` and
//! `defaultMode`/`mode` honoured) before every container start and whenever what they project
//! changes, so running containers see updates, as with the kubelet. An `emptyDir` with `medium: Memory` is a tmpfs of its `sizeLimit`.
//! A missing, non-optional ConfigMap or Secret is the container's
//! `CreateContainerConfigError`, retried with back-off like the kubelet does.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::spec::{Container, Pod};
use crate::runtime::container::Mount;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Volume {
    pub name: String,
    pub empty_dir: Option<serde_json::Value>,
    pub config_map: Option<Projection>,
    pub secret: Option<Projection>,
    pub host_path: Option<HostPath>,
    #[serde(rename = "downwardAPI")]
    pub downward_api: Option<DownwardApi>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DownwardApi {
    pub items: Vec<DownwardFile>,
    pub default_mode: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DownwardFile {
    pub path: String,
    pub field_ref: Option<super::spec::FieldRef>,
    pub resource_field_ref: Option<super::spec::ResourceFieldRef>,
    pub mode: Option<u32>,
}

/// A downwardAPI volume's files: metadata fields (labels and annotations as `key="value"`
/// lines) and container resources.
fn downward_files(
    pod: &Pod,
    c: &Container,
    d: &DownwardApi,
) -> Result<(BTreeMap<String, String>, Projection), String> {
    let mut data = BTreeMap::new();
    let mut items = Vec::new();
    for (i, f) in d.items.iter().enumerate() {
        let value = if let Some(r) = &f.field_ref {
            if !r.field_path.starts_with("metadata.") {
                return Err(format!(
                    "downwardAPI: unsupported fieldRef {:?} in a volume",
                    r.field_path
                ));
            }
            super::spec::field(pod, &Default::default(), &r.field_path)
                .ok_or_else(|| format!("downwardAPI: unsupported fieldRef {:?}", r.field_path))?
        } else if let Some(r) = &f.resource_field_ref {
            let name = r
                .container_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| c.name.clone());
            super::spec::resource_field(pod, &name, r)?
        } else {
            continue;
        };
        let key = format!("item-{i}");
        data.insert(key.clone(), value);
        items.push(KeyToPath {
            key,
            path: f.path.clone(),
            mode: f.mode,
        });
    }
    let p = Projection {
        items,
        default_mode: d.default_mode,
        ..Default::default()
    };
    Ok((data, p))
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HostPath {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// A hostPath volume's directory or file on the node, checked (or created) by its `type` as
/// the kubelet does; the error is the kubelet's `hostPath type check failed` wording.
fn host_path(h: &HostPath) -> Result<PathBuf, String> {
    use std::os::unix::fs::FileTypeExt;
    let path = PathBuf::from(&h.path);
    if !path.is_absolute() {
        return Err(format!("hostPath {:?} is not an absolute path", h.path));
    }
    let meta = fs::metadata(&path);
    let failed = |what: &str| format!("hostPath type check failed: {} is not {what}", h.path);
    match h.kind.as_deref().unwrap_or("") {
        "" => {}
        "DirectoryOrCreate" => {
            if meta.is_err() {
                fs::create_dir_all(&path).map_err(|e| format!("creating hostPath {}: {e}", h.path))?;
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o755));
            } else if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
                return Err(failed("a directory"));
            }
        }
        "Directory" => {
            if !meta.is_ok_and(|m| m.is_dir()) {
                return Err(failed("a directory"));
            }
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
                }
                fs::write(&path, b"").map_err(|e| format!("creating hostPath {}: {e}", h.path))?;
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o644));
            } else if !meta.as_ref().is_ok_and(|m| m.is_file()) {
                return Err(failed("a file"));
            }
        }
        "File" => {
            if !meta.is_ok_and(|m| m.is_file()) {
                return Err(failed("a file"));
            }
        }
        "Socket" => {
            if !meta.is_ok_and(|m| m.file_type().is_socket()) {
                return Err(failed("a socket file"));
            }
        }
        "CharDevice" => {
            if !meta.is_ok_and(|m| m.file_type().is_char_device()) {
                return Err(failed("a character device"));
            }
        }
        "BlockDevice" => {
            if !meta.is_ok_and(|m| m.file_type().is_block_device()) {
                return Err(failed("a block device"));
            }
        }
        other => return Err(format!("hostPath {}: unknown type {other:?}", h.path)),
    }
    Ok(path)
}

/// The shape ConfigMap and Secret volumes share (`name` vs `secretName`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Projection {
    pub name: Option<String>,
    pub secret_name: Option<String>,
    pub items: Vec<KeyToPath>,
    pub default_mode: Option<u32>,
    pub optional: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    pub mode: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    pub read_only: bool,
    pub sub_path: Option<String>,
}

/// A relative path with no `..`, no root: where a key or a subPath may go.
fn safe_relative(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    if p.is_empty() || path.is_absolute() {
        return None;
    }
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| path.to_path_buf())
}

/// Writes a ConfigMap, Secret or downward API volume in place: each file through a temporary
/// file renamed over it, files no longer projected removed. The directory itself stays (running
/// containers have it bind-mounted), so an update reaches them.
fn write_projection(dir: &Path, data: &BTreeMap<String, String>, p: &Projection) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let files: Vec<(String, String, Option<u32>)> = if p.items.is_empty() {
        data.keys().map(|k| (k.clone(), k.clone(), None)).collect()
    } else {
        p.items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone(), i.mode))
            .collect()
    };
    let mut wanted = std::collections::BTreeSet::new();
    for (key, rel, mode) in files {
        let Some(value) = data.get(&key) else {
            if p.optional == Some(true) {
                continue;
            }
            return Err(format!("key {key} not found"));
        };
        let rel = safe_relative(&rel).ok_or_else(|| format!("invalid path {rel:?} for key {key}"))?;
        let file = dir.join(&rel);
        let parent = file.parent().unwrap_or(dir);
        fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        let tmp = parent.join(format!(
            "..keel-{}.tmp",
            file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        ));
        fs::write(&tmp, value).map_err(|e| format!("writing {}: {e}", file.display()))?;
        let mode = mode.or(p.default_mode).unwrap_or(0o644) & 0o777;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", file.display()))?;
        fs::rename(&tmp, &file).map_err(|e| format!("writing {}: {e}", file.display()))?;
        wanted.insert(file);
    }
    remove_unwanted(dir, &wanted);
    Ok(())
}

/// Removes the files under `dir` not in `wanted`, and directories left empty.
fn remove_unwanted(dir: &Path, wanted: &std::collections::BTreeSet<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                remove_unwanted(&path, wanted);
                let _ = fs::remove_dir(&path);
            }
            _ if !wanted.contains(&path) => {
                let _ = fs::remove_file(&path);
            }
            _ => {}
        }
    }
}

/// Writes the ConfigMap, Secret and downward API volumes of a running pod again (its
/// ConfigMaps, Secrets, labels or annotations changed), for every container that mounts them.
pub fn refresh(pod: &Pod, pod_dir: &Path) {
    for c in &pod.spec.containers {
        for m in &c.volume_mounts {
            let Some(v) = pod.spec.volumes.iter().find(|v| v.name == m.name) else {
                continue;
            };
            let dir = pod_dir.join("volumes").join(&v.name);
            if !dir.is_dir() {
                continue;
            }
            let r = if let Some(p) = &v.config_map {
                let name = p.name.clone().unwrap_or_default();
                pod.resolved
                    .config_maps
                    .get(&name)
                    .map_or(Ok(()), |data| write_projection(&dir, data, p))
            } else if let Some(p) = &v.secret {
                let name = p.secret_name.clone().unwrap_or_default();
                pod.resolved
                    .secrets
                    .get(&name)
                    .map_or(Ok(()), |data| write_projection(&dir, data, p))
            } else if let Some(d) = &v.downward_api {
                downward_files(pod, c, d).and_then(|(data, p)| write_projection(&dir, &data, &p))
            } else {
                Ok(())
            };
            if let Err(e) = r {
                eprintln!("keel: pod {}: updating volume {}: {e}", pod.key(), v.name);
            }
        }
    }
}

/// Whether `dir` is the root of a mount (another device than its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(dir), dir.parent().map(fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Unmounts the pod's memory-backed volumes (before its directory is removed).
pub fn unmount_all(pod_dir: &Path) {
    let Ok(entries) = fs::read_dir(pod_dir.join("volumes")) else {
        return;
    };
    for e in entries.flatten() {
        if is_mount_point(&e.path()) {
            if let Err(err) = crate::runtime::sys::umount_detach(&e.path()) {
                eprintln!("keel: unmounting {}: {err}", e.path().display());
            }
        }
    }
}

/// Materialises the volumes `c` mounts under `pod_dir` and returns its mounts.
pub fn prepare(pod: &Pod, c: &Container, pod_dir: &Path) -> Result<Vec<Mount>, String> {
    let mut mounts = Vec::new();
    for m in &c.volume_mounts {
        let v = pod
            .spec
            .volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| format!("volume {:?} is not defined in the pod", m.name))?;
        let mut dir = pod_dir.join("volumes").join(&v.name);
        if let Some(h) = &v.host_path {
            dir = host_path(h)
                .map_err(|e| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name))?;
        } else if let Some(p) = &v.config_map {
            let name = p.name.clone().unwrap_or_default();
            match pod.resolved.config_maps.get(&name) {
                Some(data) => {
                    write_projection(&dir, data, p).map_err(|e| format!("configmap {name:?}: {e}"))?
                }
                None if p.optional == Some(true) => write_projection(&dir, &BTreeMap::new(), p)?,
                None => return Err(format!("configmap \"{name}\" not found")),
            }
        } else if let Some(p) = &v.secret {
            let name = p.secret_name.clone().unwrap_or_default();
            match pod.resolved.secrets.get(&name) {
                Some(data) => write_projection(&dir, data, p).map_err(|e| format!("secret {name:?}: {e}"))?,
                None if p.optional == Some(true) => write_projection(&dir, &BTreeMap::new(), p)?,
                None => return Err(format!("secret \"{name}\" not found")),
            }
        } else if let Some(d) = &v.downward_api {
            let (data, p) = downward_files(pod, c, d)?;
            write_projection(&dir, &data, &p)?;
        } else if let Some(e) = &v.empty_dir {
            fs::create_dir_all(&dir).map_err(|e| format!("emptyDir {}: {e}", v.name))?;
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o777));
            if e["medium"] == "Memory" && !is_mount_point(&dir) {
                // A tmpfs of `sizeLimit` (else the kernel's default, half the node's memory);
                // its pages are charged to the containers that write them.
                let size = e
                    .get("sizeLimit")
                    .and_then(super::spec::quantity)
                    .map(|b| format!(",size={}", b.ceil() as u64))
                    .unwrap_or_default();
                crate::runtime::sys::mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    Some(&format!("mode=1777{size}")),
                )
                .map_err(|err| format!("emptyDir {} (medium Memory): {err}", v.name))?;
            }
        } else {
            return Err(format!(
                "volume {:?}: only emptyDir, hostPath, configMap, secret and downwardAPI volumes are supported",
                v.name
            ));
        }
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let rel = safe_relative(sub).ok_or_else(|| format!("invalid subPath {sub:?}"))?;
                let s = dir.join(rel);
                if !s.exists() {
                    fs::create_dir_all(&s).map_err(|e| format!("subPath {sub}: {e}"))?;
                }
                s
            }
            None => dir,
        };
        let target = m.mount_path.trim_start_matches('/');
        if safe_relative(target).is_none() {
            return Err(format!("invalid mountPath {:?}", m.mount_path));
        }
        mounts.push(Mount {
            source,
            target: format!("/{target}"),
            read_only: m.read_only
                || v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some(),
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        Pod::from_value(&json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {
                "containers": [{"name": "c", "image": "busybox", "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/app"},
                    {"name": "sec", "mountPath": "/secret", "readOnly": true},
                    {"name": "scratch", "mountPath": "/data", "subPath": "c1"}
                ]}],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "app", "items": [{"key": "conf", "path": "sub/app.conf", "mode": 384}]}},
                    {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 256}},
                    {"name": "scratch", "emptyDir": {}}
                ]
            },
            "keelResolved": {
                "configMaps": {"app": {"conf": "x=1", "other": "o"}},
                "secrets": {"creds": {"user": "u", "pw": "p"}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn volumes_are_written_and_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let p = pod();
        let mounts = prepare(&p, &p.spec.containers[0], dir.path()).unwrap();
        let vols = dir.path().join("volumes");
        assert_eq!(fs::read_to_string(vols.join("cfg/sub/app.conf")).unwrap(), "x=1");
        assert!(!vols.join("cfg/other").exists(), "items select keys");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&vols.join("cfg/sub/app.conf")), 0o600);
        assert_eq!(fs::read_to_string(vols.join("sec/pw")).unwrap(), "p");
        assert_eq!(mode(&vols.join("sec/user")), 0o400);
        assert!(vols.join("scratch/c1").is_dir());
        assert_eq!(
            mounts,
            vec![
                Mount {
                    source: vols.join("cfg"),
                    target: "/etc/app".into(),
                    read_only: true
                },
                Mount {
                    source: vols.join("sec"),
                    target: "/secret".into(),
                    read_only: true
                },
                Mount {
                    source: vols.join("scratch/c1"),
                    target: "/data".into(),
                    read_only: false
                },
            ]
        );
    }

    #[test]
    fn downward_api_volumes_hold_metadata_and_resources() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pod::from_value(&json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u",
                         "labels": {"b": "2", "a": "x\"y"}, "annotations": {"note": "hi"}},
            "spec": {
                "containers": [{"name": "c", "image": "busybox",
                    "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}},
                    "volumeMounts": [{"name": "info", "mountPath": "/info"}]}],
                "volumes": [{"name": "info", "downwardAPI": {"items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "note", "fieldRef": {"fieldPath": "metadata.annotations['note']"}},
                    {"path": "mem", "resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
                    {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}}
                ]}}]
            }
        }))
        .unwrap();
        let mounts = prepare(&p, &p.spec.containers[0], dir.path()).unwrap();
        assert!(mounts[0].read_only);
        let read = |f: &str| fs::read_to_string(dir.path().join("volumes/info").join(f)).unwrap();
        assert_eq!(read("name"), "p");
        assert_eq!(read("labels"), "a=\"x\\\"y\"\nb=\"2\"");
        assert_eq!(read("note"), "hi");
        assert_eq!(read("mem"), "64");
        assert_eq!(read("cpu"), "250");
    }

    #[test]
    fn projections_update_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("v");
        let data = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        write_projection(&vol, &data(&[("a", "1"), ("b", "2")]), &Projection::default()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let inode = fs::metadata(&vol).unwrap().ino();
        write_projection(&vol, &data(&[("a", "3")]), &Projection::default()).unwrap();
        assert_eq!(fs::read_to_string(vol.join("a")).unwrap(), "3");
        assert!(!vol.join("b").exists(), "keys gone from the source are removed");
        assert_eq!(
            fs::metadata(&vol).unwrap().ino(),
            inode,
            "same directory (bind mounts keep it)"
        );
        let names: Vec<_> = fs::read_dir(&vol)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary files left: {names:?}");
    }

    #[test]
    fn host_paths_are_checked_and_created_by_type() {
        let dir = tempfile::tempdir().unwrap();
        let hp = |p: &Path, kind: &str| HostPath {
            path: p.display().to_string(),
            kind: Some(kind.to_string()),
        };
        let d = dir.path().join("made/here");
        assert_eq!(host_path(&hp(&d, "DirectoryOrCreate")).unwrap(), d);
        assert!(d.is_dir());
        let f = dir.path().join("f/file");
        host_path(&hp(&f, "FileOrCreate")).unwrap();
        assert!(f.is_file());
        assert!(host_path(&hp(&f, "File")).is_ok());
        assert_eq!(
            host_path(&hp(&f, "Directory")).unwrap_err(),
            format!("hostPath type check failed: {} is not a directory", f.display())
        );
        assert!(host_path(&hp(&dir.path().join("none"), "Directory")).is_err());
        assert!(host_path(&hp(&dir.path().join("none"), "")).is_ok());
        assert!(host_path(&HostPath {
            path: "rel".into(),
            kind: None
        })
        .is_err());
    }

    #[test]
    fn missing_sources_and_bad_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = pod();
        p.resolved.secrets.clear();
        let e = prepare(&p, &p.spec.containers[0], dir.path()).unwrap_err();
        assert_eq!(e, "secret \"creds\" not found");
        let mut p = pod();
        p.spec.containers[0].volume_mounts[2].sub_path = Some("../escape".into());
        assert!(prepare(&p, &p.spec.containers[0], dir.path())
            .unwrap_err()
            .contains("subPath"));
        let mut p = pod();
        p.spec.containers[0].volume_mounts[0].name = "nope".into();
        assert!(prepare(&p, &p.spec.containers[0], dir.path()).is_err());
        assert!(safe_relative("a/../b").is_none());
        assert!(safe_relative("/abs").is_none());
        assert_eq!(safe_relative("./a/b"), Some(PathBuf::from("./a/b")));
    }
}
