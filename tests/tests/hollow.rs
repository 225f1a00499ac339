//! Hollow nodes (`keel-node hollow`) against a whole control plane: 20 simulated nodes join over
//! the real node protocol (bootstrap token, CA pin, CSR, mutual-TLS sessions), show Ready in
//! `kubectl get nodes`, and run a 50-replica Deployment spread across them; deleting it removes
//! every pod (the nodes answer `gone`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

const NODES: usize = 20;
const REPLICAS: usize = 50;

/// The host-built `keel-node` next to this test's profile, built on first use.
fn keel_node_binary() -> PathBuf {
    static BUILT: Once = Once::new();
    let exe = std::env::current_exe().expect("test executable");
    // tests run from target/<profile>/deps/
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .expect("profile directory");
    let bin = profile_dir.join("keel-node");
    BUILT.call_once(|| {
        if std::env::var_os("KEEL_SKIP_NODE_BUILD").is_some() && bin.exists() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "keel-node"])
            .current_dir(common::workspace_root())
            .status()
            .expect("running cargo build -p keel-node");
        assert!(status.success(), "cargo build -p keel-node failed");
    });
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// A `keel-node hollow` process, killed when dropped.
struct Hollow {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Hollow {
    fn start(s: &Server, count: usize) -> Hollow {
        let server_cmd = |args: &[&str]| {
            wait_until(&format!("keel-server {args:?}"), Duration::from_secs(20), || {
                let out = Command::new(common::server_binary())
                    .arg("--data-dir")
                    .arg(s.data_dir())
                    .args(args)
                    .output()
                    .map_err(|e| e.to_string())?;
                if out.status.success() {
                    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).to_string())
                }
            })
        };
        let token = server_cmd(&["token", "create", "--server", &format!("127.0.0.1:{}", s.port)]);
        let ca_hash = server_cmd(&["ca-hash"]);
        let mut child = Command::new(keel_node_binary())
            .args([
                "hollow",
                "--server",
                &format!("https://127.0.0.1:{}", s.node_port),
            ])
            .args(["--token", &token, "--ca-hash", &ca_hash])
            .args(["--count", &count.to_string(), "--pod-delay-ms", "200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keel-node hollow");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        Hollow { child, lines }
    }

    fn output(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for Hollow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- keel-node hollow ---\n{}", self.output());
        }
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what` and the last value.
fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => panic!("timed out waiting for {what}; last: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn items(json: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn hollow_nodes_join_and_run_a_deployment() {
    let s = Server::start_full(&[]);
    let k = s.kubectl();
    let hollow = Hollow::start(&s, NODES);

    // Every hollow node registers and is Ready, with its own address and pod CIDR.
    let nodes = wait_until("20 Ready hollow nodes", Duration::from_secs(90), || {
        let out = k
            .run(&["get", "nodes", "-o", "json"])
            .map_err(|e| e.to_string())?;
        let nodes = items(&out.stdout);
        let ready = nodes
            .iter()
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    && n["spec"]["podCIDR"].as_str().is_some_and(|c| !c.is_empty())
            })
            .count();
        if ready == NODES {
            Ok(nodes)
        } else {
            Err(format!(
                "{ready}/{NODES} Ready with a pod CIDR; hollow: {}",
                hollow.output()
            ))
        }
    });
    let names: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("hollow-")), "{names:?}");
    let table = s.ok(&k, &["get", "nodes"]);
    assert_eq!(
        table.lines().filter(|l| l.contains(" Ready ")).count(),
        NODES,
        "kubectl get nodes:\n{table}"
    );
    let lease = s.ok(
        &k,
        &[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "hollow-0007",
            "-o",
            "json",
        ],
    );
    assert!(lease.contains("\"holderIdentity\": \"hollow-0007\""), "{lease}");

    // A Deployment of 50 replicas: every pod Running and ready, spread over the nodes, each
    // with an address from its node's pod CIDR.
    s.ok(
        &k,
        &[
            "create",
            "deployment",
            "spread",
            "--image=registry.k8s.io/pause:3.10",
            &format!("--replicas={REPLICAS}"),
        ],
    );
    let pods = wait_until("50 Running pods", Duration::from_secs(120), || {
        let out = k
            .run(&["get", "pods", "-l", "app=spread", "-o", "json"])
            .map_err(|e| e.to_string())?;
        let pods = items(&out.stdout);
        let running = pods
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Running"
                    && p["status"]["containerStatuses"][0]["ready"] == true
                    && p["status"]["podIP"].as_str().is_some()
            })
            .count();
        if running == REPLICAS && pods.len() == REPLICAS {
            Ok(pods)
        } else {
            Err(format!("{running} Running of {}", pods.len()))
        }
    });
    let cidr_of = |node: &str| {
        nodes
            .iter()
            .find(|n| n["metadata"]["name"] == node)
            .and_then(|n| n["spec"]["podCIDR"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let mut used = std::collections::BTreeMap::<String, usize>::new();
    let mut ips = std::collections::BTreeSet::new();
    for p in &pods {
        let node = p["spec"]["nodeName"].as_str().unwrap_or_default().to_string();
        let ip = p["status"]["podIP"].as_str().unwrap_or_default().to_string();
        let cidr = cidr_of(&node);
        // The /24s of the default cluster CIDR: same first three octets.
        let prefix = cidr
            .rsplit_once('.')
            .map(|(a, _)| format!("{a}."))
            .unwrap_or_default();
        assert!(
            !prefix.is_empty() && ip.starts_with(&prefix),
            "pod IP {ip} on {node} is not in {cidr}"
        );
        assert!(ips.insert(ip.clone()), "pod IP {ip} given twice");
        *used.entry(node).or_default() += 1;
    }
    assert!(
        used.len() >= NODES / 2 && used.values().all(|&n| n <= 6),
        "pods not spread across the hollow nodes: {used:?}"
    );
    let deploy = s.ok(&k, &["get", "deployment", "spread"]);
    assert!(deploy.contains("50/50"), "{deploy}");

    // Deleting the Deployment: the nodes answer `gone` and every pod disappears.
    s.ok(&k, &["delete", "deployment", "spread"]);
    wait_until("the pods to be gone", Duration::from_secs(120), || {
        let out = k
            .run(&["get", "pods", "-l", "app=spread", "-o", "json"])
            .map_err(|e| e.to_string())?;
        let left = items(&out.stdout).len();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} pods left"))
        }
    });
    // The hollow nodes stayed connected throughout.
    let out = hollow.output();
    assert!(out.contains("all 20 hollow nodes are connected"), "{out}");
    assert!(!out.contains("lost its session"), "{out}");
}
