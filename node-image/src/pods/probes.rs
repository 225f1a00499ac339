//! Readiness and liveness probes: `tcpSocket`, `httpGet` and `exec` (through the
//! `keel-node exec` helper, [`crate::runtime::exec`]).
//!
//! While a container runs, [`run`] probes it from the agent (the host's network namespace
//! reaches every pod address through `cni0`) with the kubelet's timing: `initialDelaySeconds`,
//! then every `periodSeconds`, each try bounded by `timeoutSeconds`, `successThreshold` /
//! `failureThreshold` consecutive results to change state. It reports changes over a channel:
//! readiness flips (the container's `ready`, hence the pod's Ready condition and the Service
//! endpoints) and liveness failures (the container is killed and restarted by its policy).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::runtime::exec;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Probe {
    pub exec: Option<Value>,
    pub http_get: Option<HttpGet>,
    pub tcp_socket: Option<TcpSocket>,
    pub initial_delay_seconds: Option<u64>,
    pub period_seconds: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub success_threshold: Option<u32>,
    pub failure_threshold: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpGet {
    pub path: Option<String>,
    pub port: Value,
    pub host: Option<String>,
    pub scheme: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpSocket {
    pub port: Value,
    pub host: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
}

/// What the prober tells the container's loop.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeEvent {
    Ready(bool),
    /// Liveness failed `failureThreshold` times; the message says how.
    Unhealthy(String),
}

/// A port given by number or by the name of one of the container's ports.
pub fn resolve_port(port: &Value, ports: &[ContainerPort]) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(s) => s.parse().ok().or_else(|| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(s))
                .map(|p| p.container_port)
        }),
        _ => None,
    }
}

/// One try. `Ok(())` is success; the error says what failed, in the kubelet's words.
pub async fn check(p: &Probe, pod_ip: &str, ports: &[ContainerPort], pid_file: &Path) -> Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1));
    if let Some(t) = &p.tcp_socket {
        let port = resolve_port(&t.port, ports).ok_or_else(|| format!("invalid port {}", t.port))?;
        let host = t
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        return match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(h) = &p.http_get {
        let port = resolve_port(&h.port, ports).ok_or_else(|| format!("invalid port {}", h.port))?;
        let host = h
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return Err("HTTPS probes are not supported yet".into());
        }
        let path = h
            .path
            .clone()
            .filter(|p| p.starts_with('/'))
            .unwrap_or_else(|| "/".into());
        let url = format!("http://{host}:{port}{path}");
        let attempt = async {
            let mut s = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| e.to_string())?;
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut head = vec![0u8; 64];
            let n = s.read(&mut head).await.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&head[..n]);
            line.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| "malformed HTTP response".to_string())
        };
        return match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
            Err(_) => Err(format!("Get \"{url}\": context deadline exceeded")),
        };
    }
    if let Some(e) = &p.exec {
        let cmd: Vec<String> = e
            .get("command")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if cmd.is_empty() {
            return Err("exec probe without a command".into());
        }
        let pid: i32 = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| "the container is not running".to_string())?;
        return match exec::run(pid, &cmd, timeout).await {
            Ok(o) if o.code == 0 => Ok(()),
            Ok(o) => Err(format!(
                "command {cmd:?} exited with {}: {}",
                o.code,
                String::from_utf8_lossy(&o.output).trim()
            )),
            Err(e) => Err(format!("command {cmd:?}: {e}")),
        };
    }
    Err("the probe has no handler".into())
}

/// Consecutive results turned into state changes.
#[derive(Debug)]
pub struct Tracker {
    pub state: bool,
    successes: u32,
    failures: u32,
    success_threshold: u32,
    failure_threshold: u32,
}

impl Tracker {
    pub fn new(p: &Probe, initial: bool) -> Tracker {
        Tracker {
            state: initial,
            successes: 0,
            failures: 0,
            success_threshold: p.success_threshold.unwrap_or(1).max(1),
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1),
        }
    }

    /// Records one result; returns the new state if it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            if !self.state && self.successes >= self.success_threshold {
                self.state = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.state && self.failures >= self.failure_threshold {
                self.state = false;
                return Some(false);
            }
        }
        None
    }
}

/// Probes a running container until the receiver goes away.
pub async fn run(
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    pod_ip: String,
    ports: Vec<ContainerPort>,
    pid_file: PathBuf,
    tx: mpsc::Sender<ProbeEvent>,
) {
    let mut jobs = Vec::new();
    if let Some(p) = readiness {
        let (tx, ip, ports, pid_file) = (tx.clone(), pod_ip.clone(), ports.clone(), pid_file.clone());
        jobs.push(tokio::spawn(async move {
            let mut t = Tracker::new(&p, false);
            tokio::time::sleep(Duration::from_secs(p.initial_delay_seconds.unwrap_or(0))).await;
            loop {
                let ok = check(&p, &ip, &ports, &pid_file).await.is_ok();
                if let Some(state) = t.record(ok) {
                    if tx.send(ProbeEvent::Ready(state)).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(p.period_seconds.unwrap_or(10).max(1))).await;
            }
        }));
    }
    if let Some(p) = liveness {
        let (tx, ip, ports) = (tx.clone(), pod_ip, ports);
        jobs.push(tokio::spawn(async move {
            let mut t = Tracker::new(&p, true);
            tokio::time::sleep(Duration::from_secs(p.initial_delay_seconds.unwrap_or(0))).await;
            loop {
                let result = check(&p, &ip, &ports, &pid_file).await;
                if t.record(result.is_ok()) == Some(false) {
                    let msg = result.err().unwrap_or_default();
                    let _ = tx.send(ProbeEvent::Unhealthy(msg)).await;
                    return;
                }
                tokio::time::sleep(Duration::from_secs(p.period_seconds.unwrap_or(10).max(1))).await;
            }
        }));
    }
    // Dropping the caller's receiver ends the jobs through their failed sends; make sure they
    // also end when this future is dropped.
    struct Abort(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            for j in &self.0 {
                j.abort();
            }
        }
    }
    let _guard = Abort(jobs);
    tx.closed().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thresholds() {
        let p: Probe = serde_json::from_value(json!({"successThreshold": 2, "failureThreshold": 2})).unwrap();
        let mut t = Tracker::new(&p, false);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
    }

    #[test]
    fn named_ports() {
        let ports = vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
        }];
        assert_eq!(resolve_port(&json!(80), &ports), Some(80));
        assert_eq!(resolve_port(&json!("http"), &ports), Some(8080));
        assert_eq!(resolve_port(&json!("81"), &ports), Some(81));
        assert_eq!(resolve_port(&json!("nope"), &ports), None);
        assert_eq!(resolve_port(&json!(70000), &ports), None);
    }

    #[tokio::test]
    async fn tcp_and_http_checks_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if req.starts_with("GET /healthz ") {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let probe = |v: Value| -> Probe { serde_json::from_value(v).unwrap() };
        let tcp = probe(json!({"tcpSocket": {"port": port}}));
        assert_eq!(
            check(&tcp, "127.0.0.1", &[], Path::new("/nonexistent")).await,
            Ok(())
        );
        let ok = probe(json!({"httpGet": {"path": "/healthz", "port": port}}));
        assert_eq!(
            check(&ok, "127.0.0.1", &[], Path::new("/nonexistent")).await,
            Ok(())
        );
        let bad = probe(json!({"httpGet": {"path": "/other", "port": port}}));
        assert_eq!(
            check(&bad, "127.0.0.1", &[], Path::new("/nonexistent")).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        // A closed port: connection refused.
        drop(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        let closed = probe(json!({"tcpSocket": {"port": 1}}));
        assert!(check(&closed, "127.0.0.1", &[], Path::new("/nonexistent"))
            .await
            .is_err());
        let exec = probe(json!({"exec": {"command": ["true"]}}));
        assert_eq!(
            check(&exec, "127.0.0.1", &[], Path::new("/nonexistent")).await,
            Err("the container is not running".into())
        );
    }
}
