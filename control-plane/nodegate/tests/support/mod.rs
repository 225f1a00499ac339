//! The harness of the node gate's end-to-end tests: a gate with a fake API on a loopback port
//! (restartable on the same port), and the real `keel-node agent` as a child process whose
//! console lines the test can wait for.

#![allow(dead_code)] // each test file uses its own part

pub mod fake_api;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use fake_api::FakeApi;
use keel_api::registry::{self, ResourceType};
use keel_auth::{BootstrapToken, Pki, PkiOptions};
use keel_nodegate::NodeGateConfig;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn rt(group: &str, version: &str, plural: &str) -> &'static ResourceType {
    registry::find(group, version, plural).unwrap()
}
pub fn nodes() -> &'static ResourceType {
    rt("", "v1", "nodes")
}
pub fn leases() -> &'static ResourceType {
    rt("coordination.k8s.io", "v1", "leases")
}
pub fn secrets() -> &'static ResourceType {
    rt("", "v1", "secrets")
}
pub fn pods() -> &'static ResourceType {
    rt("", "v1", "pods")
}
pub fn events() -> &'static ResourceType {
    rt("", "v1", "events")
}
pub fn csrs() -> &'static ResourceType {
    rt("certificates.k8s.io", "v1", "certificatesigningrequests")
}

pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "keel_nodegate=info".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// Waits until `f` returns `Some`, polling, failing the test with `what` after [`DEADLINE`].
pub async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gate on a fixed loopback port, with its PKI and fake API.
pub struct Gate {
    pub dir: tempfile::TempDir,
    pub pki: Arc<Pki>,
    pub api: Arc<FakeApi>,
    pub addr: SocketAddr,
    pub grace: Duration,
    pub heartbeat: u32,
    /// Where the gate keeps nodes' usage reports.
    pub usage: Arc<keel_nodegate::UsageStore>,
    /// The gate's stream broker (logs, exec, attach, port-forward).
    pub streams: Arc<keel_nodegate::Streams>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), keel_nodegate::Error>>>,
}

impl Gate {
    pub async fn start(grace: Duration, heartbeat: u32) -> Gate {
        Self::start_on("127.0.0.1:0".parse().unwrap(), grace, heartbeat).await
    }

    /// A gate with a PKI of its own on a given address (a reinstalled control plane).
    pub async fn start_on(addr: SocketAddr, grace: Duration, heartbeat: u32) -> Gate {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let pki = Arc::new(Pki::load_or_create(dir.path(), &PkiOptions::default()).unwrap());
        let mut g = Gate {
            dir,
            pki,
            api: Arc::new(FakeApi::new()),
            addr,
            grace,
            heartbeat,
            usage: Arc::default(),
            streams: keel_nodegate::Streams::with_answer_timeout(Duration::from_secs(2)),
            stop: None,
            task: None,
        };
        g.run().await;
        g
    }

    async fn run(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let mut cfg = NodeGateConfig::new(
            self.pki.server_tls_config(&[b"h2"]),
            self.pki.clone(),
            self.api.clone(),
        );
        cfg.grace_period = self.grace;
        cfg.heartbeat_seconds = self.heartbeat;
        cfg.usage = self.usage.clone();
        cfg.streams = self.streams.clone();
        let (tx, rx) = oneshot::channel();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(keel_nodegate::serve(listener, cfg, async move {
            let _ = rx.await;
        })));
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(DEADLINE, t)
                .await
                .expect("gate did not stop")
                .unwrap()
                .unwrap();
        }
    }

    /// Stops the gate and starts a new one on the same port (a control-plane restart).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.run().await;
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Creates a bootstrap token (valid one hour) and returns it.
    pub fn new_token(&self) -> BootstrapToken {
        let t = BootstrapToken::generate();
        let secret = t.to_secret(Some(SystemTime::now() + Duration::from_secs(3600)), "test");
        self.api.seed(secrets(), Some("kube-system"), secret);
        t
    }

    /// A gRPC channel to the gate over TLS, with `identity`'s client certificate if any.
    pub async fn channel(
        &self,
        identity: Option<&keel_auth::ClientCredentials>,
    ) -> tonic::transport::Channel {
        use rustls::pki_types::ServerName;
        let mut cfg = (*self.pki.client_tls_config(identity).unwrap()).clone();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let cfg = Arc::new(cfg);
        let addr = self.addr;
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let cfg = cfg.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::IpAddress(addr.ip().into());
                let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector(connector)
            .await
            .unwrap()
    }

    /// A channel with `node`'s own client certificate (`system:node:<node>`).
    pub async fn node_channel(&self, node: &str) -> tonic::transport::Channel {
        let creds = self
            .pki
            .issue_client_certificate(
                &format!("system:node:{node}"),
                &["system:nodes"],
                Duration::from_secs(600),
            )
            .unwrap();
        self.channel(Some(&creds)).await
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.api.object(nodes(), None, name)
    }

    pub fn lease(&self, name: &str) -> Option<Value> {
        self.api.object(leases(), Some("kube-node-lease"), name)
    }
}

/// The host-built `keel-node`, built on first use.
fn keel_node_binary() -> PathBuf {
    static BUILT: Once = Once::new();
    // tests run from target/<profile>/deps/
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let bin = profile_dir.join("keel-node");
    BUILT.call_once(|| {
        if std::env::var_os("KEEL_SKIP_NODE_BUILD").is_some() && bin.exists() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "keel-node"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build -p keel-node");
        assert!(status.success(), "cargo build -p keel-node failed");
    });
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// A running `keel-node agent` and the lines it printed.
pub struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub state_dir: PathBuf,
}

impl Agent {
    /// Writes `config` (node.json) next to `state_dir` and starts the agent.
    pub fn start(name: &str, state_dir: &Path, config: &Value) -> Agent {
        std::fs::create_dir_all(state_dir).unwrap();
        let config_path = state_dir.with_extension("node.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let mut child = Command::new(keel_node_binary())
            .arg("agent")
            .arg("--config")
            .arg(&config_path)
            .arg("--state-dir")
            .arg(state_dir)
            // On a development host: no pods, and hands off the host's network.
            .arg("--no-workloads")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        let tag = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent {tag}] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Agent {
            child,
            lines,
            state_dir: state_dir.to_path_buf(),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until the agent has printed `n` lines containing `needle`.
    pub async fn wait_line(&self, needle: &str, n: usize) {
        wait_for(&format!("{n}× {needle:?} from the agent"), || {
            (self.count(needle) >= n).then_some(())
        })
        .await;
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn node_config(server: &str, token: &str, ca_hash: &str, name: &str) -> Value {
    serde_json::json!({
        "server": server,
        "token": token,
        "ca_hash": ca_hash,
        "name": name,
        "boot_phases": [{"name": "kernel", "at": 0.0}, {"name": "agent", "at": 1.5}],
    })
}

/// The condition of a type in a Node object.
pub fn condition<'a>(node: &'a Value, kind: &str) -> Option<&'a Value> {
    node.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}
