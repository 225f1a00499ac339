//! The pod as the node reads it: small serde structs over the Kubernetes JSON the control plane
//! sends (the node links no Kubernetes types), plus what the control plane resolved for it
//! (the ConfigMaps and Secrets it references), and the pure functions that turn them into a
//! container's command line, environment and limits.
//!
//! Unknown fields are ignored; fields that matter and are malformed make the pod (or the one
//! container) fail with a reason, never the agent.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::runtime::cgroup::Limits;
use crate::runtime::image::ExecConfig;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Pod {
    pub metadata: Meta,
    pub spec: PodSpec,
    /// What the control plane resolved for the pod (a side field of the JSON it sends).
    #[serde(rename = "keelResolved")]
    pub resolved: Resolved,
    /// What the control plane still knows of the status an earlier boot of this node reported.
    #[serde(rename = "keelStatus")]
    pub keel_status: KeelStatus,
}

/// `keelStatus`: restart counts of containers that restarted, and the phase once terminal.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct KeelStatus {
    pub restarts: BTreeMap<String, u32>,
    pub phase: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub deletion_timestamp: Option<String>,
    pub creation_timestamp: Option<String>,
    pub deletion_grace_period_seconds: Option<i64>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    pub containers: Vec<Container>,
    pub init_containers: Vec<Container>,
    pub restart_policy: Option<String>,
    pub termination_grace_period_seconds: Option<i64>,
    pub host_network: bool,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    pub dns_policy: Option<String>,
    pub dns_config: Option<crate::net::dns::PodDnsConfig>,
    pub node_name: Option<String>,
    pub service_account_name: Option<String>,
    pub security_context: Option<SecurityContext>,
    pub image_pull_secrets: Vec<NameRef>,
    pub volumes: Vec<super::volumes::Volume>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub env: Vec<EnvVar>,
    pub env_from: Vec<EnvFrom>,
    pub resources: Resources,
    pub image_pull_policy: Option<String>,
    pub security_context: Option<SecurityContext>,
    pub volume_mounts: Vec<super::volumes::VolumeMount>,
    pub ports: Vec<super::probes::ContainerPort>,
    pub readiness_probe: Option<super::probes::Probe>,
    pub liveness_probe: Option<super::probes::Probe>,
    pub lifecycle: Option<Lifecycle>,
}

/// `postStart` and `preStop` hooks.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Lifecycle {
    pub post_start: Option<Hook>,
    pub pre_stop: Option<Hook>,
}

/// A hook's handler: exec, httpGet (as a probe's) or sleep.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Hook {
    pub exec: Option<serde_json::Value>,
    pub http_get: Option<super::probes::HttpGet>,
    pub sleep: Option<SleepAction>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct SleepAction {
    pub seconds: u64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<EnvSource>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvSource {
    pub config_map_key_ref: Option<KeyRef>,
    pub secret_key_ref: Option<KeyRef>,
    pub field_ref: Option<FieldRef>,
    pub resource_field_ref: Option<ResourceFieldRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceFieldRef {
    pub container_name: Option<String>,
    pub resource: String,
    pub divisor: Option<serde_json::Value>,
}

/// A container's resource for the downward API (`limits.cpu`, `requests.memory`, …) divided by
/// `divisor` and rounded up, as the kubelet does; an unset limit is the node's capacity, an
/// unset request 0 (cpu) or the limit's.
pub fn resource_field(pod: &Pod, container: &str, r: &ResourceFieldRef) -> Result<String, String> {
    let c = pod
        .spec
        .containers
        .iter()
        .chain(&pod.spec.init_containers)
        .find(|c| c.name == container)
        .ok_or_else(|| format!("container {container:?} not found in the pod"))?;
    let get = |m: &BTreeMap<String, serde_json::Value>, k: &str| m.get(k).and_then(quantity);
    let (cpus, memory) = node_capacity();
    let value = match r.resource.as_str() {
        "limits.cpu" => get(&c.resources.limits, "cpu").unwrap_or(cpus),
        "limits.memory" => get(&c.resources.limits, "memory").unwrap_or(memory),
        "requests.cpu" => get(&c.resources.requests, "cpu").unwrap_or(0.0),
        "requests.memory" => get(&c.resources.requests, "memory")
            .or_else(|| get(&c.resources.limits, "memory"))
            .unwrap_or(0.0),
        other => return Err(format!("unsupported container resource : {other:?}")),
    };
    let divisor = r
        .divisor
        .as_ref()
        .and_then(quantity)
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (value / divisor - 1e-9).ceil().max(0.0) as u64))
}

/// (CPUs, memory bytes) of the node.
fn node_capacity() -> (f64, f64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb * 1024.0);
    (cpus, memory)
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
    pub optional: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct FieldRef {
    pub field_path: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvFrom {
    pub prefix: Option<String>,
    pub config_map_ref: Option<NameRef>,
    pub secret_ref: Option<NameRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NameRef {
    pub name: String,
    pub optional: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Resources {
    pub limits: BTreeMap<String, serde_json::Value>,
    pub requests: BTreeMap<String, serde_json::Value>,
}

/// What the control plane resolved for a pod (`keelResolved`, see `DesiredPods.pods_json`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Resolved {
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("pod JSON: {0}")]
    Json(String),
    #[error("pod has no {0}")]
    Missing(&'static str),
}

impl Pod {
    /// Parses and checks what the node cannot do without.
    #[cfg(test)]
    pub fn parse(json: &[u8]) -> Result<Pod, SpecError> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| SpecError::Json(e.to_string()))?;
        Pod::from_value(&v)
    }

    /// Reads and checks what the node cannot do without.
    pub fn from_value(v: &serde_json::Value) -> Result<Pod, SpecError> {
        let mut p = Pod::deserialize(v).map_err(|e| SpecError::Json(e.to_string()))?;
        if p.metadata.uid.is_empty() {
            return Err(SpecError::Missing("metadata.uid"));
        }
        if p.metadata.name.is_empty() {
            return Err(SpecError::Missing("metadata.name"));
        }
        if p.metadata.namespace.is_empty() {
            p.metadata.namespace = "default".into();
        }
        if p.spec.containers.is_empty() {
            return Err(SpecError::Missing("containers"));
        }
        Ok(p)
    }

    pub fn restart_policy(&self) -> RestartPolicy {
        match self.spec.restart_policy.as_deref() {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    /// Seconds between SIGTERM and SIGKILL: the deletion's grace period if it is being deleted,
    /// else the spec's (30 s by default).
    pub fn grace_seconds(&self) -> u64 {
        self.metadata
            .deletion_grace_period_seconds
            .or(self.spec.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64
    }

    pub fn hostname(&self) -> String {
        let h = self
            .spec
            .hostname
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone());
        // The kernel takes 64 bytes; Kubernetes truncates pod names to 63.
        h.chars().take(63).collect()
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// Kubernetes' `command`/`args` over the image's `Entrypoint`/`Cmd`.
pub fn command_line(c: &Container, image: &ExecConfig) -> Vec<String> {
    let entry = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    match (c.command.is_empty(), c.args.is_empty()) {
        (false, false) => c.command.iter().chain(&c.args).cloned().collect(),
        (false, true) => c.command.clone(),
        (true, false) => entry.into_iter().chain(c.args.iter().cloned()).collect(),
        (true, true) => entry.into_iter().chain(cmd).collect(),
    }
}

/// Facts about the pod that the downward API (`fieldRef`) can read.
#[derive(Clone, Debug, Default)]
pub struct Downward {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
}

/// Expands `$(VAR)` references against what is defined so far, as the kubelet does (`$$` is a
/// literal `$`; unknown references stay as written).
pub fn expand(s: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            match r.find(')') {
                Some(end) => {
                    let name = &r[..end];
                    match defined.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &r[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = r;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment: the image's, then `envFrom`, then `env` (later wins), with
/// ConfigMap/Secret keys and downward-API fields resolved. A missing non-optional reference is
/// `CreateContainerConfigError`'s message.
pub fn environment(
    pod: &Pod,
    c: &Container,
    image: &ExecConfig,
    resolved: &Resolved,
    facts: &Downward,
) -> Result<Vec<String>, String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        vars.retain(|(n, _)| n != &k);
        vars.push((k, v));
    };
    for e in image.env.iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            set(&mut vars, k.to_string(), v.to_string());
        }
    }
    if !vars.iter().any(|(k, _)| k == "PATH") {
        set(
            &mut vars,
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    set(&mut vars, "HOSTNAME".into(), pod.hostname());
    for from in &c.env_from {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (map, what, r) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => (resolved.config_maps.get(&r.name), "configmap", r),
            (None, Some(r)) => (resolved.secrets.get(&r.name), "secret", r),
            (None, None) => continue,
        };
        match map {
            Some(m) => {
                for (k, v) in m {
                    set(&mut vars, format!("{prefix}{k}"), v.clone());
                }
            }
            None if r.optional == Some(true) => {}
            None => return Err(format!("{what} \"{}\" not found", r.name)),
        }
    }
    for e in &c.env {
        if e.name.is_empty() {
            continue;
        }
        let value = match &e.value_from {
            None => expand(e.value.as_deref().unwrap_or(""), &vars),
            Some(src) => {
                if let Some(r) = &src.config_map_key_ref {
                    match resolved.config_maps.get(&r.name).and_then(|m| m.get(&r.key)) {
                        Some(v) => v.clone(),
                        None if r.optional == Some(true) => continue,
                        None if resolved.config_maps.contains_key(&r.name) => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key, pod.metadata.namespace, r.name
                            ))
                        }
                        None => return Err(format!("configmap \"{}\" not found", r.name)),
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    match resolved.secrets.get(&r.name).and_then(|m| m.get(&r.key)) {
                        Some(v) => v.clone(),
                        None if r.optional == Some(true) => continue,
                        None if resolved.secrets.contains_key(&r.name) => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key, pod.metadata.namespace, r.name
                            ))
                        }
                        None => return Err(format!("secret \"{}\" not found", r.name)),
                    }
                } else if let Some(f) = &src.field_ref {
                    field(pod, facts, &f.field_path)
                        .ok_or_else(|| format!("unsupported fieldRef {:?}", f.field_path))?
                } else if let Some(r) = &src.resource_field_ref {
                    let name = r
                        .container_name
                        .clone()
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| c.name.clone());
                    resource_field(pod, &name, r)?
                } else {
                    String::new()
                }
            }
        };
        set(&mut vars, e.name.clone(), value);
    }
    Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

pub fn field(pod: &Pod, facts: &Downward, path: &str) -> Option<String> {
    Some(match path {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => pod.spec.service_account_name.clone().unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        "metadata.labels" => key_values(&pod.metadata.labels),
        "metadata.annotations" => key_values(&pod.metadata.annotations),
        p => {
            if let Some(a) = p.strip_prefix("metadata.annotations['") {
                let a = a.strip_suffix("']")?;
                return Some(pod.metadata.annotations.get(a).cloned().unwrap_or_default());
            }
            let label = p.strip_prefix("metadata.labels['")?.strip_suffix("']")?;
            pod.metadata.labels.get(label).cloned().unwrap_or_default()
        }
    })
}

/// Labels or annotations as a downward API file: `key="value"` lines, sorted, values quoted
/// as Go's `%q` would for plain text.
fn key_values(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Registry credentials from the pod's `imagePullSecrets` (`.dockerconfigjson` or the older
/// `.dockercfg`, as resolved by the control plane): (registry host, base64 `user:password`).
pub fn registry_credentials(pod: &Pod) -> Vec<(String, String)> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let mut out = Vec::new();
    for r in &pod.spec.image_pull_secrets {
        let Some(secret) = pod.resolved.secrets.get(&r.name) else {
            continue;
        };
        let entries: BTreeMap<String, Entry> = if let Some(j) = secret.get(".dockerconfigjson") {
            #[derive(Deserialize, Default)]
            #[serde(default)]
            struct Config {
                auths: BTreeMap<String, Entry>,
            }
            serde_json::from_str::<Config>(j)
                .map(|c| c.auths)
                .unwrap_or_default()
        } else if let Some(j) = secret.get(".dockercfg") {
            serde_json::from_str(j).unwrap_or_default()
        } else {
            continue;
        };
        for (host, e) in entries {
            let auth = match (e.auth.filter(|a| !a.is_empty()), e.username, e.password) {
                (Some(a), _, _) => a,
                (None, Some(u), Some(p)) => base64(format!("{u}:{p}").as_bytes()),
                _ => continue,
            };
            out.push((host, auth));
        }
    }
    out
}

/// Standard base64 with padding (HTTP Basic credentials).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A Kubernetes quantity in base units (bytes, cores) as f64: `64Mi`, `1G`, `500m`, `1e3`, `2`.
pub fn quantity(v: &serde_json::Value) -> Option<f64> {
    if let Some(n) = v.as_f64() {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let split = s
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    // `1e3` is an exponent, but `1E` alone is exa: only digits after e/E make it an exponent.
    let (num, suffix) = match num.find(['e', 'E']) {
        Some(i) if num[i + 1..].is_empty() => (&num[..i], &s[i..]),
        _ => (num, suffix),
    };
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    (n >= 0.0).then_some(n * mult)
}

/// The cgroup limits of a container's `resources`.
pub fn limits(c: &Container) -> Limits {
    let get = |m: &BTreeMap<String, serde_json::Value>, k: &str| m.get(k).and_then(quantity);
    Limits {
        memory_max: get(&c.resources.limits, "memory").map(|b| b.ceil() as u64),
        cpu_limit_millis: get(&c.resources.limits, "cpu").map(|c| (c * 1000.0).ceil() as u64),
        cpu_request_millis: get(&c.resources.requests, "cpu")
            .or_else(|| get(&c.resources.limits, "cpu"))
            .map(|c| (c * 1000.0).ceil() as u64),
        pids_max: None,
    }
}

/// uid and gid: the container's securityContext, the pod's, else the image's numeric `User`.
pub fn user(pod: &Pod, c: &Container, image: &ExecConfig) -> (u32, u32) {
    let pick = |f: fn(&SecurityContext) -> Option<i64>| {
        c.security_context
            .as_ref()
            .and_then(f)
            .or_else(|| pod.spec.security_context.as_ref().and_then(f))
    };
    let (img_uid, img_gid) = match image.user.as_deref().unwrap_or("").split_once(':') {
        Some((u, g)) => (u.parse::<u32>().ok(), g.parse::<u32>().ok()),
        None => (image.user.as_deref().and_then(|u| u.parse::<u32>().ok()), None),
    };
    let uid = pick(|s| s.run_as_user)
        .and_then(|u| u32::try_from(u).ok())
        .or(img_uid)
        .unwrap_or(0);
    let gid = pick(|s| s.run_as_group)
        .and_then(|g| u32::try_from(g).ok())
        .or(img_gid)
        .unwrap_or(0);
    (uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        Pod::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    fn basic() -> Pod {
        pod(json!({
            "metadata": {"name": "web", "namespace": "apps", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"containers": [{
                "name": "c", "image": "busybox:1.35",
                "env": [
                    {"name": "A", "value": "x"},
                    {"name": "B", "value": "$(A)-$$(A)-$(NOPE)"},
                    {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
                    {"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
                    {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "x", "optional": true}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}
                ],
                "envFrom": [{"prefix": "P_", "configMapRef": {"name": "cfg"}}],
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "100m"}}
            }], "restartPolicy": "OnFailure", "terminationGracePeriodSeconds": 5}
        }))
    }

    fn resolved() -> Resolved {
        serde_json::from_value(json!({
            "configMaps": {"cfg": {"k": "v", "other": "o"}},
            "secrets": {"sec": {"pw": "hunter2"}}
        }))
        .unwrap()
    }

    #[test]
    fn parses_the_fields_that_matter() {
        let p = basic();
        assert_eq!(p.key(), "apps/web");
        assert_eq!(p.restart_policy(), RestartPolicy::OnFailure);
        assert_eq!(p.grace_seconds(), 5);
        assert_eq!(p.hostname(), "web");
        let c = &p.spec.containers[0];
        assert_eq!(
            limits(c),
            Limits {
                memory_max: Some(64 << 20),
                cpu_limit_millis: Some(500),
                cpu_request_millis: Some(100),
                pids_max: None
            }
        );
        assert!(Pod::parse(b"{").is_err());
        assert!(Pod::parse(br#"{"metadata":{"name":"x","uid":"u"},"spec":{"containers":[]}}"#).is_err());
        assert!(Pod::parse(br#"{"metadata":{"name":"x"},"spec":{"containers":[{"name":"c"}]}}"#).is_err());
        assert!(
            Pod::parse(br#"{"metadata":{"name":"x","uid":"u"},"spec":{"containers":[{"name":7}]}}"#).is_err()
        );
        assert!(Pod::parse(b"[1,2]").is_err());
    }

    #[test]
    fn environment_resolves_references() {
        let p = basic();
        let img = ExecConfig {
            env: Some(vec!["PATH=/bin".into(), "A=image".into()]),
            ..Default::default()
        };
        let facts = Downward {
            pod_ip: "10.0.2.15".into(),
            ..Default::default()
        };
        let env = environment(&p, &p.spec.containers[0], &img, &resolved(), &facts).unwrap();
        for want in [
            "PATH=/bin",
            "HOSTNAME=web",
            "A=x",
            "B=x-$(A)-$(NOPE)",
            "CM=v",
            "S=hunter2",
            "POD=web",
            "IP=10.0.2.15",
            "APP=web",
            "P_k=v",
            "P_other=o",
        ] {
            assert!(env.contains(&want.to_string()), "{want} missing from {env:?}");
        }
        assert!(!env.iter().any(|e| e.starts_with("OPT=")));
        assert_eq!(env.iter().filter(|e| e.starts_with("A=")).count(), 1);

        let mut missing = resolved();
        missing.secrets.clear();
        let e = environment(&p, &p.spec.containers[0], &img, &missing, &facts).unwrap_err();
        assert_eq!(e, "secret \"sec\" not found");
        let mut nokey = resolved();
        nokey.config_maps.get_mut("cfg").unwrap().remove("k");
        let e = environment(&p, &p.spec.containers[0], &img, &nokey, &facts).unwrap_err();
        assert_eq!(e, "couldn't find key k in ConfigMap apps/cfg");
    }

    #[test]
    fn command_and_args_over_entrypoint_and_cmd() {
        let img = ExecConfig {
            entrypoint: Some(vec!["/ep".into()]),
            cmd: Some(vec!["def".into()]),
            ..Default::default()
        };
        let c = |cmd: &[&str], args: &[&str]| Container {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(command_line(&c(&[], &[]), &img), ["/ep", "def"]);
        assert_eq!(command_line(&c(&[], &["a"]), &img), ["/ep", "a"]);
        assert_eq!(command_line(&c(&["sh"], &[]), &img), ["sh"]);
        assert_eq!(command_line(&c(&["sh"], &["-c", "x"]), &img), ["sh", "-c", "x"]);
    }

    #[test]
    fn pull_secrets_become_registry_credentials() {
        let mut p = basic();
        p.spec.image_pull_secrets = vec![
            NameRef {
                name: "hub".into(),
                optional: None,
            },
            NameRef {
                name: "old".into(),
                optional: None,
            },
            NameRef {
                name: "absent".into(),
                optional: None,
            },
        ];
        p.resolved.secrets.insert(
            "hub".into(),
            [(
                ".dockerconfigjson".to_string(),
                r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"quay.io":{"username":"u","password":"p"}}}"#.to_string(),
            )]
            .into(),
        );
        p.resolved.secrets.insert(
            "old".into(),
            [(
                ".dockercfg".to_string(),
                r#"{"10.0.2.100:5000":{"auth":"bGFi"}}"#.to_string(),
            )]
            .into(),
        );
        let creds = registry_credentials(&p);
        assert_eq!(
            creds,
            [
                ("https://index.docker.io/v1/".to_string(), "dTpw".to_string()),
                ("quay.io".to_string(), "dTpw".to_string()),
                ("10.0.2.100:5000".to_string(), "bGFi".to_string()),
            ]
        );
        assert_eq!(base64(b"user:password"), "dXNlcjpwYXNzd29yZA==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn quantities() {
        let q = |s: &str| quantity(&json!(s));
        assert_eq!(q("64Mi"), Some(67108864.0));
        assert_eq!(q("1G"), Some(1e9));
        assert_eq!(q("500m"), Some(0.5));
        assert_eq!(q("2"), Some(2.0));
        assert_eq!(q("1e3"), Some(1000.0));
        assert_eq!(q("1E"), Some(1e18));
        assert_eq!(quantity(&json!(3)), Some(3.0));
        assert_eq!(q("12parsecs"), None);
        assert_eq!(q("-1"), None);
    }

    #[test]
    fn users() {
        let mut p = basic();
        let img = ExecConfig {
            user: Some("1000:50".into()),
            ..Default::default()
        };
        assert_eq!(user(&p, &p.spec.containers[0], &img), (1000, 50));
        p.spec.security_context = Some(SecurityContext {
            run_as_user: Some(7),
            run_as_group: None,
        });
        assert_eq!(user(&p, &p.spec.containers[0], &img), (7, 50));
        assert_eq!(user(&p, &p.spec.containers[0], &ExecConfig::default()), (7, 0));
    }
}
