//! Pod volumes, first slice: `emptyDir`, `configMap` and `secret` (from what the control plane
//! resolved, `keelResolved`), mounted into containers by `volumeMounts` (with `readOnly` and
//! `subPath`).
//!
//! Each volume is a directory under the pod's directory (`/var/lib/keel/pods/<uid>/volumes/
//! <name>`), so an `emptyDir` lives as long as the pod and is shared by its containers and kept
//! across restarts. ConfigMap and Secret volumes are written again before every container start
//! (`items` and `defaultMode`/`mode` honoured), so a container restarted after its ConfigMap
//! changed sees the new data. A missing, non-optional ConfigMap or Secret is the container's
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

fn write_projection(dir: &Path, data: &BTreeMap<String, String>, p: &Projection) -> Result<(), String> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let files: Vec<(String, String, Option<u32>)> = if p.items.is_empty() {
        data.keys().map(|k| (k.clone(), k.clone(), None)).collect()
    } else {
        p.items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone(), i.mode))
            .collect()
    };
    for (key, rel, mode) in files {
        let Some(value) = data.get(&key) else {
            if p.optional == Some(true) {
                continue;
            }
            return Err(format!("key {key} not found"));
        };
        let rel = safe_relative(&rel).ok_or_else(|| format!("invalid path {rel:?} for key {key}"))?;
        let file = dir.join(rel);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        fs::write(&file, value).map_err(|e| format!("writing {}: {e}", file.display()))?;
        let mode = mode.or(p.default_mode).unwrap_or(0o644) & 0o777;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", file.display()))?;
    }
    Ok(())
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
        let dir = pod_dir.join("volumes").join(&v.name);
        if let Some(p) = &v.config_map {
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
        } else if v.empty_dir.is_some() {
            fs::create_dir_all(&dir).map_err(|e| format!("emptyDir {}: {e}", v.name))?;
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o777));
        } else {
            return Err(format!(
                "volume {:?}: only emptyDir, configMap and secret volumes are supported",
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
            read_only: m.read_only || v.config_map.is_some() || v.secret.is_some(),
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
