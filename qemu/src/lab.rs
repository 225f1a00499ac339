//! A whole lab: control plane, registry, switch and QEMU nodes, started together, inspected and
//! faulted by tests, and stopped without leaving anything behind.
//!
//! Two users share this code. `keel-lab up` (behind `make qemu-cluster`) starts a lab in a fixed
//! directory (`out/lab`) and [detaches](Lab::detach) it; `keel-lab down` finds it again through
//! its state file and pid files ([`down`], [`status`]). Tests start a lab in a fresh temporary
//! directory with free ports; dropping the [`Lab`] stops it, and when the test panicked the drop
//! prints every log (server, registry, switch, consoles) into the test's output and keeps the
//! directory.
//!
//! A lab directory:
//!
//! ```text
//! lab.json          what runs here: ports, nodes, paths (read by down/status)
//! kubeconfig        the admin kubeconfig (a copy of server/admin.kubeconfig)
//! nodeports.json    {"keel-1": {"30000": "127.0.0.1:<port>", …}, …}
//! logs/             server.log, registry.log, switch.log, qemu-<node>.log, console-<node>.log
//! pids/             one `<pid> <start time>` file per process
//! server/           keel-server's data directory
//! registry-data/    the registry's storage; registry.yml its config
//! switch.sock       the switch's control socket
//! ```
//!
//! QEMU nodes are heavy on a 2-core machine, so labs with nodes started by tests take a
//! machine-wide lock: they run one at a time, whatever test binary they come from.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::kubectl::{node_readiness, Kubectl, KubectlError, KubectlOutput};
use crate::node::{qemu_command, NodeEnvironment, NodeSpec, NODEPORTS};
use crate::proc::{Lifetime, ProcError, Recorded, Supervised};
use crate::switch::control::{self, Command as SwitchCommand, ControlError, Target};
use crate::wait::{wait_for, Poll, WaitError};

/// Errors of the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{what} {path} is missing: {hint}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a lab is already running in {0} (stop it with `keel-lab down --dir {0}`)")]
    AlreadyRunning(PathBuf),
    #[error("no lab in {0} (no lab.json)")]
    NoLab(PathBuf),
    #[error("keel-server: {0}")]
    Server(String),
    #[error("the lab in {dir} did not start: {source}\n{logs}")]
    StartFailed {
        dir: PathBuf,
        logs: String,
        #[source]
        source: Box<LabError>,
    },
    #[error("no node named {0:?} in this lab")]
    UnknownNode(String),
    #[error("this lab has no {0}")]
    NoComponent(&'static str),
    #[error(transparent)]
    Process(#[from] ProcError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error(transparent)]
    Kubectl(#[from] KubectlError),
    #[error(transparent)]
    Switch(#[from] ControlError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// The programs a lab runs. [`Binaries::discover`] fills it from the environment and the
/// workspace; fields can be overridden before starting.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub keel_server: PathBuf,
    pub keel_lab: PathBuf,
    pub qemu: PathBuf,
    pub docker_registry: PathBuf,
    pub kubectl: PathBuf,
    pub busybox: PathBuf,
}

/// The workspace this crate was built in.
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// `out/` of the workspace, or `KEEL_OUT`.
pub fn out_dir() -> PathBuf {
    std::env::var_os("KEEL_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("out"))
}

/// The newest of `target/{debug,release}/<name>` (a stale release binary must not win over a
/// fresh debug one, nor the other way round).
fn built_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"));
    let candidates = [target.join("debug").join(name), target.join("release").join(name)];
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| candidates[1].clone())
}

impl Binaries {
    /// `KEEL_SERVER_BIN`, `KEEL_LAB_BIN`, `QEMU`, `DOCKER_REGISTRY`, `KUBECTL` and `BUSYBOX`
    /// override; otherwise the workspace's `target/` and the Debian paths.
    pub fn discover() -> Binaries {
        let env = |var: &str, default: PathBuf| std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
        Binaries {
            keel_server: env("KEEL_SERVER_BIN", built_binary("keel-server")),
            keel_lab: env("KEEL_LAB_BIN", built_binary("keel-lab")),
            qemu: env("QEMU", "qemu-system-x86_64".into()),
            docker_registry: env("DOCKER_REGISTRY", "docker-registry".into()),
            kubectl: env("KUBECTL", "kubectl".into()),
            busybox: env("BUSYBOX", crate::image::DEFAULT_BUSYBOX.into()),
        }
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Shown by `status`; the directory name of a `make qemu-cluster` lab.
    pub name: String,
    /// `None`: a fresh temporary directory, removed on drop (kept when a test failed).
    pub dir: Option<PathBuf>,
    /// QEMU nodes `keel-1` … `keel-N`; 0 starts the control plane alone.
    pub nodes: u8,
    /// Start the registry and push the test images.
    pub registry: bool,
    /// `KEEL_KVM=1`.
    pub kvm: bool,
    /// Guest memory (`KEEL_NODE_MEMORY`, default 512).
    pub node_memory_mb: u32,
    /// `--node-grace-period` for keel-server (e.g. `"10s"`); `None` keeps its default.
    pub node_grace_period: Option<String>,
    /// Extra `keel-server` arguments (e.g. `--default-unreachable-toleration-seconds=20`).
    pub server_args: Vec<String>,
    /// How many of the last nodes are not booted at start ([`Lab::start_node`] boots them
    /// later: nodes that join a running cluster).
    pub held_nodes: u8,
    /// Extra kernel arguments for every node (`KEEL_KERNEL_ARGS`).
    pub extra_kernel_args: String,
    /// `Some((user, password))`: the registry's repositories `private/basic/…` and
    /// `private/token/…` require these credentials (HTTP Basic, bearer token) through the
    /// [`crate::registry_gate`], and hold copies of `busybox:1.35`.
    pub registry_auth: Option<(String, String)>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub binaries: Binaries,
    /// Whether processes outlive the starting thread ([`Lab::detach`]); tests leave this at
    /// [`Lifetime::Owner`].
    pub lifetime: Lifetime,
}

impl LabOptions {
    /// `nodes` QEMU nodes with the registry, in a temporary directory, for a test.
    pub fn with_nodes(nodes: u8) -> LabOptions {
        let out = out_dir();
        LabOptions {
            name: "test".into(),
            dir: None,
            nodes,
            registry: nodes > 0,
            kvm: std::env::var("KEEL_KVM").is_ok_and(|v| v == "1"),
            node_memory_mb: std::env::var("KEEL_NODE_MEMORY")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(512),
            node_grace_period: None,
            server_args: Vec::new(),
            held_nodes: 0,
            extra_kernel_args: std::env::var("KEEL_KERNEL_ARGS").unwrap_or_default(),
            registry_auth: None,
            kernel: out.join("vmlinux"),
            initrd: out.join("initramfs"),
            binaries: Binaries::discover(),
            lifetime: Lifetime::Owner,
        }
    }

    /// Only keel-server, for API tests.
    pub fn control_plane_only() -> LabOptions {
        LabOptions::with_nodes(0)
    }
}

/// What `lab.json` records: enough for `down` and `status` to find everything again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub dir: PathBuf,
    pub api_port: u16,
    pub gate_port: u16,
    pub registry_port: Option<u16>,
    /// The registry itself when a credential gate listens on `registry_port`.
    #[serde(default)]
    pub registry_upstream_port: Option<u16>,
    pub switch_port: Option<u16>,
    pub kubeconfig: PathBuf,
    pub nodes: Vec<NodeSpec>,
}

impl LabState {
    pub fn read(dir: &Path) -> Result<LabState, LabError> {
        let path = dir.join("lab.json");
        let text = std::fs::read_to_string(&path).map_err(|_| LabError::NoLab(dir.to_owned()))?;
        serde_json::from_str(&text).map_err(|e| LabError::Io {
            what: format!("cannot parse {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    fn write(&self) -> Result<(), LabError> {
        let path = self.dir.join("lab.json");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        write_atomic(&path, &text)
    }

    /// `{"<node>": {"30000": "127.0.0.1:<port>", …}, …}`
    pub fn nodeports_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .nodes
            .iter()
            .map(|n| {
                let ports: serde_json::Map<String, serde_json::Value> = n
                    .nodeports
                    .iter()
                    .map(|(g, h)| (g.to_string(), format!("127.0.0.1:{h}").into()))
                    .collect();
                (n.name.clone(), ports.into())
            })
            .collect();
        map.into()
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), LabError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io(format!("cannot write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("cannot write {}", path.display())))
}

/// Files of a lab directory.
struct Layout<'a>(&'a Path);

impl Layout<'_> {
    fn log(&self, name: &str) -> PathBuf {
        self.0.join("logs").join(format!("{name}.log"))
    }
    fn pid(&self, name: &str) -> PathBuf {
        self.0.join("pids").join(format!("{name}.pid"))
    }
    fn console(&self, node: &str) -> PathBuf {
        self.log(&format!("console-{node}"))
    }
    fn server_data(&self) -> PathBuf {
        self.0.join("server")
    }
    fn switch_socket(&self) -> PathBuf {
        self.0.join("switch.sock")
    }
    fn switch_port_file(&self) -> PathBuf {
        self.0.join("switch.port")
    }
}

/// Files `down` removes (logs stay for a post-mortem).
const STATE_FILES: &[&str] = &[
    "lab.json",
    "kubeconfig",
    "nodeports.json",
    "switch.sock",
    "switch.port",
    "registry.yml",
    "lab.json.tmp",
];
const STATE_DIRS: &[&str] = &["pids", "server", "registry-data", "home"];

/// A running lab.
pub struct Lab {
    options: LabOptions,
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    state: LabState,
    server: Option<Supervised>,
    registry: Option<Supervised>,
    /// The credential gate in front of the registry (`LabOptions::registry_auth`).
    registry_gate: Option<Supervised>,
    switch: Option<Supervised>,
    nodes: BTreeMap<String, Option<Supervised>>,
    boots: BTreeMap<String, u32>,
    node_env: Option<NodeEnvironment>,
    kubectl: Kubectl,
    phases: Vec<(String, Duration)>,
    detached: bool,
    _qemu_lock: Option<File>,
}

/// Holds the machine-wide lock that serialises test labs with QEMU nodes.
pub fn qemu_lock() -> Result<File, LabError> {
    // In the build's target directory when there is one, so nothing is left in /tmp.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"));
    let dir = if target.is_dir() {
        target
    } else {
        std::env::temp_dir()
    };
    let path = dir.join("keel-lab-qemu.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("cannot open {}", path.display())))?;
    lock_file(&file).map_err(io(format!("cannot lock {}", path.display())))?;
    Ok(file)
}

fn lock_file(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock(2) on an fd we own for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Takes an exclusive lock without waiting; false when someone else holds it.
fn try_lock_file(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on an fd we own for the duration of the call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Whether any process recorded in `dir/pids` still runs.
pub fn running_processes(dir: &Path) -> Vec<(String, Recorded)> {
    let Ok(entries) = std::fs::read_dir(dir.join("pids")) else {
        return Vec::new();
    };
    let mut found: Vec<(String, Recorded)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().strip_suffix(".pid")?.to_owned();
            let rec = Recorded::read(&e.path())?;
            rec.running().then_some((name, rec))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

impl Lab {
    /// Starts a lab: control plane first, then switch, nodes and registry. Returns once the
    /// control plane answers and the nodes are booting; use [`Lab::wait_nodes_ready`] to wait
    /// for them.
    pub fn start(options: LabOptions) -> Result<Lab, LabError> {
        let qemu_lock = if options.nodes > 0 && options.lifetime == Lifetime::Owner {
            Some(qemu_lock()?)
        } else {
            None
        };
        preflight(&options)?;
        let mut start_guard: Option<File> = None;
        let (dir, temp) = match &options.dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io(format!("cannot create {}", d.display())))?;
                let d = d
                    .canonicalize()
                    .map_err(io(format!("cannot resolve {}", d.display())))?;
                // Two `up`s at the same moment: the second finds the start lock taken.
                let start_lock = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(d.join("start.lock"))
                    .map_err(io(format!("cannot open {}/start.lock", d.display())))?;
                if !try_lock_file(&start_lock) || !running_processes(&d).is_empty() {
                    return Err(LabError::AlreadyRunning(d));
                }
                clean_dir(&d, true);
                start_guard = Some(start_lock);
                (d, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("keel-lab-")
                    .tempdir()
                    .map_err(io("cannot create a temporary lab directory"))?;
                (t.path().to_owned(), Some(t))
            }
        };
        for sub in ["logs", "pids"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(io(format!("cannot create {}/{sub}", dir.display())))?;
        }
        let gated = options.registry && options.registry_auth.is_some();
        let ports =
            crate::ports::free_ports(3 + usize::from(options.nodes) * NODEPORTS.len() + usize::from(gated))
                .map_err(io("cannot find free loopback ports"))?;
        let nodes: Vec<NodeSpec> = (1..=options.nodes)
            .map(|i| {
                let at = 3 + usize::from(i - 1) * NODEPORTS.len();
                NodeSpec::new(i, &ports[at..at + NODEPORTS.len()])
            })
            .collect();
        let state = LabState {
            name: options.name.clone(),
            dir: dir.clone(),
            api_port: ports[0],
            gate_port: ports[1],
            registry_port: options.registry.then_some(ports[2]),
            registry_upstream_port: gated.then(|| ports[ports.len() - 1]),
            switch_port: None,
            kubeconfig: dir.join("kubeconfig"),
            nodes,
        };
        state.write()?;
        let kubectl = Kubectl::new(&options.binaries.kubectl, &state.kubeconfig)?;
        let mut lab = Lab {
            dir,
            temp,
            nodes: state.nodes.iter().map(|n| (n.name.clone(), None)).collect(),
            boots: BTreeMap::new(),
            state,
            server: None,
            registry: None,
            registry_gate: None,
            switch: None,
            node_env: None,
            kubectl,
            phases: Vec::new(),
            detached: false,
            _qemu_lock: qemu_lock,
            options,
        };
        let started = lab.bring_up();
        drop(start_guard);
        if let Err(e) = started {
            let logs = lab.logs(30);
            lab.stop_all();
            if let Some(t) = lab.temp.take() {
                let _ = t.keep();
            }
            return Err(LabError::StartFailed {
                dir: lab.dir.clone(),
                logs,
                source: Box::new(e),
            });
        }
        Ok(lab)
    }

    /// A lab with only the control plane (API tests).
    pub fn control_plane_only() -> Result<Lab, LabError> {
        Lab::start(LabOptions::control_plane_only())
    }

    /// A lab of `nodes` nodes, waiting until all are Ready.
    pub fn with_ready_nodes(nodes: u8, timeout: Duration) -> Result<Lab, LabError> {
        let lab = Lab::start(LabOptions::with_nodes(nodes))?;
        lab.wait_nodes_ready(timeout)?;
        Ok(lab)
    }

    fn layout(&self) -> Layout<'_> {
        Layout(&self.dir)
    }

    fn phase<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Lab) -> Result<T, LabError>,
    ) -> Result<T, LabError> {
        let start = Instant::now();
        let out = f(self)?;
        let took = start.elapsed();
        tracing::info!(phase = name, seconds = took.as_secs_f64(), "phase done");
        self.phases.push((name.to_owned(), took));
        Ok(out)
    }

    fn bring_up(&mut self) -> Result<(), LabError> {
        // Start everything that does not depend on the control plane at once, then wait.
        self.spawn_server()?;
        if self.options.registry {
            let port = self
                .state
                .registry_port
                .ok_or(LabError::NoComponent("registry"))?;
            // With credentials, the registry listens behind the gate.
            let registry_port = self.state.registry_upstream_port.unwrap_or(port);
            let p = crate::registry::spawn(
                &self.options.binaries.docker_registry,
                &self.dir,
                SocketAddr::from(([127, 0, 0, 1], registry_port)),
                &self.layout().log("registry"),
                &self.layout().pid("registry"),
                self.options.lifetime,
            )?;
            self.registry = Some(p);
            if let (Some((user, password)), true) = (&self.options.registry_auth, registry_port != port) {
                let mut cmd = Command::new(&self.options.binaries.keel_lab);
                cmd.args(["registry-gate", "--listen"])
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--upstream")
                    .arg(format!("127.0.0.1:{registry_port}"))
                    .arg("--user")
                    .arg(format!("{user}:{password}"))
                    .stdin(Stdio::null());
                self.registry_gate = Some(Supervised::spawn(
                    "registry-gate",
                    cmd,
                    &self.layout().log("registry-gate"),
                    &self.layout().pid("registry-gate"),
                    self.options.lifetime,
                )?);
            }
        }
        if self.options.nodes > 0 {
            self.spawn_switch()?;
        }
        self.phase("control plane ready", |lab| lab.wait_server_ready())?;
        if self.options.nodes > 0 {
            self.phase("nodes started", |lab| {
                let switch_port = lab.wait_switch_port()?;
                lab.state.switch_port = Some(switch_port);
                lab.state.write()?;
                lab.node_env = Some(lab.node_environment(switch_port)?);
                let names: Vec<String> = lab.nodes.keys().cloned().collect();
                let boot = names.len().saturating_sub(usize::from(lab.options.held_nodes));
                for name in names.into_iter().take(boot) {
                    lab.start_node(&name)?;
                }
                Ok(())
            })?;
        }
        if self.options.registry {
            self.phase("registry and images", |lab| lab.fill_registry())?;
        }
        let nodeports = serde_json::to_string_pretty(&self.state.nodeports_json()).unwrap_or_default();
        write_atomic(&self.dir.join("nodeports.json"), &nodeports)?;
        Ok(())
    }

    fn spawn_server(&mut self) -> Result<(), LabError> {
        let data = self.layout().server_data();
        std::fs::create_dir_all(&data).map_err(io(format!("cannot create {}", data.display())))?;
        let mut cmd = Command::new(&self.options.binaries.keel_server);
        cmd.arg("--data-dir")
            .arg(&data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.state.api_port))
            .arg("--node-listen")
            .arg(format!("127.0.0.1:{}", self.state.gate_port))
            .args(["--san", crate::node::HOST_ALIAS])
            // Every NodePort the server allocates is one the lab forwards to the host.
            .arg("--service-node-port-range")
            .arg(format!("{}-{}", NODEPORTS.start(), NODEPORTS.end()))
            .stdin(Stdio::null());
        if let Some(grace) = &self.options.node_grace_period {
            cmd.args(["--node-grace-period", grace]);
        }
        cmd.args(&self.options.server_args);
        let log = self.layout().log("server");
        let pid = self.layout().pid("server");
        self.server = Some(Supervised::spawn(
            "keel-server",
            cmd,
            &log,
            &pid,
            self.options.lifetime,
        )?);
        Ok(())
    }

    fn wait_server_ready(&mut self) -> Result<(), LabError> {
        let admin = self.layout().server_data().join("admin.kubeconfig");
        let log = self.layout().log("server");
        let server = self
            .server
            .as_ref()
            .ok_or(LabError::NoComponent("control plane"))?;
        let kubectl = &self.kubectl;
        let kubeconfig = &self.state.kubeconfig;
        wait_for("keel-server to answer /readyz", Duration::from_secs(60), || {
            if server.has_exited() {
                return Poll::Failed(format!(
                    "keel-server exited; see {}:\n{}",
                    log.display(),
                    tail(&log, 20)
                ));
            }
            if !kubeconfig.exists() {
                if !admin.exists() {
                    return Poll::Pending(format!("{} not written yet", admin.display()));
                }
                if let Err(e) = std::fs::copy(&admin, kubeconfig) {
                    return Poll::Pending(format!("cannot copy the admin kubeconfig yet: {e}"));
                }
            }
            match kubectl.run(&["get", "--raw", "/readyz"]) {
                Ok(out) if out.success() && out.stdout.trim() == "ok" => Poll::Ready(()),
                Ok(out) => Poll::Pending(format!("readyz: {}{}", out.stdout.trim(), out.stderr.trim())),
                Err(e) => Poll::Failed(e.to_string()),
            }
        })?;
        Ok(())
    }

    fn server_cli(&self, args: &[&str]) -> Result<String, LabError> {
        let out = Command::new(&self.options.binaries.keel_server)
            .args(args)
            .arg("--data-dir")
            .arg(self.layout().server_data())
            .stdin(Stdio::null())
            .output()
            .map_err(io(format!(
                "cannot run {}",
                self.options.binaries.keel_server.display()
            )))?;
        if !out.status.success() {
            return Err(LabError::Server(format!(
                "`keel-server {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| LabError::Server(format!("`keel-server {}` printed nothing", args.join(" "))))
    }

    fn node_environment(&self, switch_port: u16) -> Result<NodeEnvironment, LabError> {
        let api = format!("127.0.0.1:{}", self.state.api_port);
        let token = self.server_cli(&["token", "create", "--ttl", "24h", "--server", &api])?;
        if !is_bootstrap_token(&token) {
            return Err(LabError::Server(format!(
                "`token create` printed {token:?}, not a bootstrap token"
            )));
        }
        let ca_hash = self.server_cli(&["ca-hash"])?;
        if !ca_hash.starts_with("sha256:") {
            return Err(LabError::Server(format!(
                "`ca-hash` printed {ca_hash:?}, not sha256:<hex>"
            )));
        }
        let relay_bin = self
            .options
            .binaries
            .keel_lab
            .canonicalize()
            .unwrap_or_else(|_| self.options.binaries.keel_lab.clone());
        Ok(NodeEnvironment {
            qemu: self.options.binaries.qemu.clone(),
            kernel: self.options.kernel.clone(),
            initrd: self.options.initrd.clone(),
            relay_bin,
            gate_port: self.state.gate_port,
            api_port: self.state.api_port,
            registry_port: self.state.registry_port.unwrap_or(self.state.api_port),
            switch_port,
            token,
            ca_hash,
            memory_mb: self.options.node_memory_mb,
            kvm: self.options.kvm,
            extra_args: self.options.extra_kernel_args.clone(),
        })
    }

    fn spawn_switch(&mut self) -> Result<(), LabError> {
        let mut cmd = Command::new(&self.options.binaries.keel_lab);
        cmd.args(["switch", "--listen", "127.0.0.1:0", "--control"])
            .arg(self.layout().switch_socket())
            .arg("--port-file")
            .arg(self.layout().switch_port_file())
            .stdin(Stdio::null());
        for n in &self.state.nodes {
            cmd.arg("--node").arg(format!("{}={}", n.name, n.l2_mac));
        }
        let log = self.layout().log("switch");
        let pid = self.layout().pid("switch");
        self.switch = Some(Supervised::spawn(
            "switch",
            cmd,
            &log,
            &pid,
            self.options.lifetime,
        )?);
        Ok(())
    }

    fn wait_switch_port(&self) -> Result<u16, LabError> {
        let file = self.layout().switch_port_file();
        let log = self.layout().log("switch");
        let switch = self.switch.as_ref().ok_or(LabError::NoComponent("switch"))?;
        Ok(wait_for("the switch to listen", Duration::from_secs(20), || {
            if switch.has_exited() {
                return Poll::Failed(format!("the switch exited:\n{}", tail(&log, 20)));
            }
            match std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
            {
                Some(p) => Poll::Ready(p),
                None => Poll::Pending(format!("{} not written yet", file.display())),
            }
        })?)
    }

    fn fill_registry(&mut self) -> Result<(), LabError> {
        let port = self
            .state
            .registry_port
            .ok_or(LabError::NoComponent("registry"))?;
        let upstream = self.state.registry_upstream_port.unwrap_or(port);
        let addr = SocketAddr::from(([127, 0, 0, 1], upstream));
        let process = self.registry.as_ref().ok_or(LabError::NoComponent("registry"))?;
        crate::registry::wait_up(process, addr, &self.layout().log("registry"))?;
        let mut images = crate::image::lab_images(&self.options.binaries.busybox)?;
        if upstream != port {
            // Copies of busybox in the repositories that need credentials, pushed past the gate.
            let busybox = images
                .iter()
                .find(|i| i.repository == "library/busybox")
                .cloned()
                .ok_or(LabError::NoComponent("busybox image"))?;
            for prefix in [
                crate::registry_gate::BASIC_PREFIX,
                crate::registry_gate::TOKEN_PREFIX,
            ] {
                let mut copy = busybox.clone();
                copy.repository = format!("{prefix}busybox");
                images.push(copy);
            }
            let gate = self
                .registry_gate
                .as_ref()
                .ok_or(LabError::NoComponent("registry gate"))?;
            crate::registry::wait_up(
                gate,
                SocketAddr::from(([127, 0, 0, 1], port)),
                &self.layout().log("registry-gate"),
            )?;
        }
        crate::registry::push_blocking(&addr.to_string(), &images)?;
        Ok(())
    }

    // ---- what tests use ------------------------------------------------------------------

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.state.kubeconfig
    }

    /// Where the API server listens, e.g. `127.0.0.1:41234`.
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.state.api_port))
    }

    /// The registry (`host:port`), if this lab has one.
    pub fn registry_addr(&self) -> Option<SocketAddr> {
        self.state
            .registry_port
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
    }

    /// keel-server's data directory.
    pub fn server_data_dir(&self) -> PathBuf {
        self.layout().server_data()
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// Names of the lab's nodes, `keel-1` first.
    pub fn node_names(&self) -> Vec<String> {
        self.state.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The host address that reaches `nodeport` (30000–30009) of `node`.
    pub fn nodeport(&self, node: &str, nodeport: u16) -> Option<SocketAddr> {
        let spec = self.state.nodes.iter().find(|n| n.name == node)?;
        spec.nodeports
            .get(&nodeport)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
    }

    /// How long each start-up phase took.
    pub fn phases(&self) -> &[(String, Duration)] {
        &self.phases
    }

    /// The kubectl bound to this lab (its own HOME).
    pub fn kubectl_client(&self) -> &Kubectl {
        &self.kubectl
    }

    /// Runs `kubectl <args>` against the lab.
    pub fn kubectl(&self, args: &[&str]) -> Result<KubectlOutput, LabError> {
        Ok(self.kubectl.run(args)?)
    }

    /// Runs kubectl with `input` on stdin (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<KubectlOutput, LabError> {
        Ok(self.kubectl.run_with_stdin(args, Some(input))?)
    }

    /// Node name → Ready, as the API reports it.
    pub fn node_readiness(&self) -> Result<Vec<(String, bool)>, LabError> {
        let json = self.kubectl.ok(&["get", "nodes", "-o", "json"])?;
        node_readiness(&json).ok_or_else(|| LabError::Server(format!("unreadable node list: {json}")))
    }

    /// Fails at once when a node's QEMU died (instead of waiting out the deadline).
    fn dead_node(&self) -> Option<String> {
        self.nodes.iter().find_map(|(name, p)| {
            let p = p.as_ref()?;
            p.has_exited().then(|| {
                format!(
                    "the QEMU of {name} exited; its console ends with:\n{}\nand QEMU said:\n{}",
                    tail(&self.layout().console(name), 30),
                    tail(&self.layout().log(&format!("qemu-{name}")), 10)
                )
            })
        })
    }

    /// Waits until every node of the lab is registered and Ready.
    pub fn wait_nodes_ready(&self, timeout: Duration) -> Result<(), LabError> {
        let want = self.node_names();
        wait_for(&format!("{} nodes to be Ready", want.len()), timeout, || {
            if let Some(dead) = self.dead_node() {
                return Poll::Failed(dead);
            }
            match self.node_readiness() {
                Ok(seen) => {
                    let ready = want
                        .iter()
                        .filter(|n| seen.iter().any(|(s, r)| s == *n && *r))
                        .count();
                    if ready == want.len() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(format!("{ready}/{} Ready: {seen:?}", want.len()))
                    }
                }
                Err(e) => Poll::Pending(e.to_string()),
            }
        })?;
        Ok(())
    }

    /// Waits until `node`'s Ready condition is `ready` (true: Ready; false: anything else).
    pub fn wait_node_ready(&self, node: &str, ready: bool, timeout: Duration) -> Result<(), LabError> {
        let what = format!("{node} to be {}", if ready { "Ready" } else { "NotReady" });
        wait_for(&what, timeout, || match self.node_readiness() {
            Ok(seen) => {
                let now = seen.iter().find(|(n, _)| n == node).map(|(_, r)| *r);
                match now {
                    Some(r) if r == ready => Poll::Ready(()),
                    other => Poll::Pending(format!("{node}: {other:?}")),
                }
            }
            Err(e) => Poll::Pending(e.to_string()),
        })?;
        Ok(())
    }

    /// Everything `node` wrote to its serial console during its current boot.
    pub fn console(&self, node: &str) -> Result<String, LabError> {
        self.spec(node)?;
        let path = self.layout().console(node);
        Ok(String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned())
    }

    fn spec(&self, node: &str) -> Result<&NodeSpec, LabError> {
        self.state
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| LabError::UnknownNode(node.to_owned()))
    }

    /// Boots `node` (again). A previous console is kept as `console-<node>.<boot>.log`.
    pub fn start_node(&mut self, node: &str) -> Result<(), LabError> {
        let spec = self.spec(node)?.clone();
        let env = self
            .node_env
            .clone()
            .ok_or(LabError::NoComponent("node environment"))?;
        if let Some(Some(mut old)) = self.nodes.remove(node) {
            old.kill();
        }
        let boot = {
            let b = self.boots.entry(node.to_owned()).or_insert(0);
            *b += 1;
            *b
        };
        let console = self.layout().console(node);
        if boot > 1 && console.exists() {
            let kept = self.layout().log(&format!("console-{node}.{}", boot - 1));
            let _ = std::fs::rename(&console, kept);
        }
        let cmd = qemu_command(&spec, &env, &console);
        let log = self.layout().log(&format!("qemu-{node}"));
        let pid = self.layout().pid(&format!("qemu-{node}"));
        let p = Supervised::spawn(&format!("qemu {node}"), cmd, &log, &pid, self.options.lifetime)?;
        self.nodes.insert(node.to_owned(), Some(p));
        Ok(())
    }

    /// Pulls the plug on `node` (SIGKILL to its QEMU).
    pub fn kill_node(&mut self, node: &str) -> Result<(), LabError> {
        self.spec(node)?;
        if let Some(Some(mut p)) = self.nodes.insert(node.to_owned(), None) {
            p.kill();
        }
        Ok(())
    }

    /// Kills `node` and boots it again.
    pub fn restart_node(&mut self, node: &str) -> Result<(), LabError> {
        self.kill_node(node)?;
        self.start_node(node)
    }

    /// Sends one command to the lab switch.
    pub fn switch_command(&self, command: &SwitchCommand) -> Result<String, LabError> {
        if self.switch.is_none() {
            return Err(LabError::NoComponent("switch"));
        }
        Ok(control::send(&self.layout().switch_socket(), command)?)
    }

    /// Cuts `node` off the lab segment (its frames and frames to it are dropped).
    pub fn cut_node(&self, node: &str) -> Result<(), LabError> {
        self.spec(node)?;
        self.switch_command(&SwitchCommand::Cut(Target::Name(node.to_owned())))?;
        Ok(())
    }

    /// Removes every fault on `node`.
    pub fn heal_node(&self, node: &str) -> Result<(), LabError> {
        self.spec(node)?;
        self.switch_command(&SwitchCommand::Heal(Target::Name(node.to_owned())))?;
        Ok(())
    }

    /// The switch's view: ports, learned MACs, counters, faults.
    pub fn switch_status(&self) -> Result<serde_json::Value, LabError> {
        let text = self.switch_command(&SwitchCommand::Status)?;
        serde_json::from_str(&text).map_err(|e| LabError::Io {
            what: "unreadable switch status".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Stops keel-server (SIGTERM) and starts it again on the same ports and data.
    pub fn restart_control_plane(&mut self) -> Result<(), LabError> {
        if let Some(mut s) = self.server.take() {
            s.stop(Duration::from_secs(10));
        }
        self.spawn_server()?;
        self.wait_server_ready()
    }

    /// The last `lines` lines of every log of the lab (server, registry, switch, QEMU,
    /// consoles), each under a header: what a failed test prints.
    pub fn logs(&self, lines: usize) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("logs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        let mut out = String::new();
        for f in files {
            out.push_str(&format!("===== {} =====\n{}\n", f.display(), tail(&f, lines)));
        }
        out
    }

    /// Stops everything now (what dropping does).
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for p in self.nodes.values_mut().filter_map(Option::take) {
            drop(p); // SIGTERM, then SIGKILL after the grace period
        }
        self.switch.take();
        self.registry_gate.take();
        self.registry.take();
        if let Some(mut s) = self.server.take() {
            s.stop(Duration::from_secs(10));
        }
        let mut ports = vec![self.state.api_port, self.state.gate_port];
        ports.extend(self.state.registry_port);
        stop_relays(&ports);
    }

    /// Leaves every process running and returns the state `down` will use to stop them.
    pub fn detach(mut self) -> LabState {
        self.detached = true;
        for p in self.nodes.values_mut().filter_map(Option::take) {
            p.detach();
        }
        for p in [
            self.switch.take(),
            self.registry_gate.take(),
            self.registry.take(),
            self.server.take(),
        ]
        .into_iter()
        .flatten()
        {
            p.detach();
        }
        self.state.clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        let failed = std::thread::panicking();
        if failed {
            // eprintln! goes through the test harness's capture, so this lands in the failing
            // test's output.
            eprintln!(
                "\n===== keel lab {} (kept for inspection) =====",
                self.dir.display()
            );
            for (name, took) in &self.phases {
                eprintln!("phase {name}: {:.1}s", took.as_secs_f64());
            }
            eprintln!("{}", self.logs(200));
        }
        self.stop_all();
        if failed {
            if let Some(t) = self.temp.take() {
                let _ = t.keep();
            }
        }
    }
}

fn is_bootstrap_token(t: &str) -> bool {
    let ok =
        |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    matches!(t.split_once('.'), Some((a, b)) if ok(a, 6) && ok(b, 16))
}

fn preflight(options: &LabOptions) -> Result<(), LabError> {
    let b = &options.binaries;
    if !b.keel_server.exists() {
        return Err(LabError::Missing {
            what: "keel-server",
            path: b.keel_server.clone(),
            hint: "build it (`cargo build -p keel-server`) or set KEEL_SERVER_BIN",
        });
    }
    if options.nodes > 0 {
        if !b.keel_lab.exists() {
            return Err(LabError::Missing {
                what: "keel-lab",
                path: b.keel_lab.clone(),
                hint: "build it (`cargo build -p keel-lab`) or set KEEL_LAB_BIN",
            });
        }
        if options.kvm && !Path::new("/dev/kvm").exists() {
            return Err(LabError::Missing {
                what: "KVM",
                path: "/dev/kvm".into(),
                hint: "KEEL_KVM=1 needs /dev/kvm; unset it to use TCG",
            });
        }
        for (what, path) in [
            ("the node kernel", &options.kernel),
            ("the node initramfs", &options.initrd),
        ] {
            if !path.exists() {
                return Err(LabError::Missing {
                    what,
                    path: path.clone(),
                    hint: "build the node image with `make image` (or set KEEL_OUT)",
                });
            }
        }
    }
    Ok(())
}

/// The last `lines` lines of a file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(f) = File::open(path) else {
        return String::new();
    };
    let all: Vec<String> = BufReader::new(f)
        .split(b'\n')
        .map_while(Result::ok)
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Relays exit by themselves when QEMU goes; give them a moment, then make sure.
fn stop_relays(ports: &[u16]) -> usize {
    let _ = wait_for("relays to exit", Duration::from_secs(2), || {
        if crate::proc::find_relays(ports).is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending("relays still running".into())
        }
    });
    let left = crate::proc::find_relays(ports);
    for pid in &left {
        crate::proc::kill_pid(*pid);
    }
    left.len()
}

/// Removes a lab's state (not its logs). With `fresh_logs` the old logs go too.
fn clean_dir(dir: &Path, fresh_logs: bool) {
    for f in STATE_FILES {
        let _ = std::fs::remove_file(dir.join(f));
    }
    for d in STATE_DIRS {
        let _ = std::fs::remove_dir_all(dir.join(d));
    }
    if fresh_logs {
        let _ = std::fs::remove_dir_all(dir.join("logs"));
    }
}

/// What [`down`] did.
#[derive(Debug, Default)]
pub struct DownReport {
    pub stopped: Vec<String>,
    pub relays_killed: usize,
}

/// Stops the lab in `dir` (nodes first, then switch, registry, control plane) and removes its
/// state files; logs stay in `dir/logs`.
pub fn down(dir: &Path) -> Result<DownReport, LabError> {
    let state = LabState::read(dir).ok();
    let mut running = running_processes(dir);
    // Nodes first, so nothing reconnects to a stopping control plane; the server last.
    let rank = |n: &str| match n {
        n if n.starts_with("qemu-") => 0,
        "switch" => 1,
        "registry" => 2,
        _ => 3,
    };
    running.sort_by_key(|(n, _)| rank(n));
    let mut report = DownReport::default();
    for (name, rec) in running {
        if rec.stop(Duration::from_secs(10)) {
            report.stopped.push(name);
        }
    }
    if let Some(s) = &state {
        let mut ports = vec![s.api_port, s.gate_port];
        ports.extend(s.registry_port);
        report.relays_killed = stop_relays(&ports);
    }
    clean_dir(dir, false);
    // Not in clean_dir: `up` cleans while holding this lock, and must keep holding the same file.
    let _ = std::fs::remove_file(dir.join("start.lock"));
    Ok(report)
}

/// A human-readable account of the lab in `dir`: processes, memory, nodes, switch.
pub fn status(dir: &Path, kubectl: &Path) -> Result<String, LabError> {
    let state = LabState::read(dir)?;
    let running = running_processes(dir);
    let mut out = format!("lab {:?} in {}\n", state.name, dir.display());
    if running.is_empty() {
        out.push_str("nothing is running (stale state; `keel-lab down` cleans it)\n");
        return Ok(out);
    }
    let mut total_kib = 0;
    for (name, rec) in &running {
        let rss = crate::proc::rss_kib(rec.pid).unwrap_or(0);
        total_kib += rss;
        out.push_str(&format!(
            "  {name:<16} pid {:<8} rss {:>7.1} MiB\n",
            rec.pid,
            rss as f64 / 1024.0
        ));
    }
    let mut ports = vec![state.api_port, state.gate_port];
    ports.extend(state.registry_port);
    let relays = crate::proc::find_relays(&ports);
    let relay_kib: u64 = relays.iter().filter_map(|p| crate::proc::rss_kib(*p)).sum();
    total_kib += relay_kib;
    out.push_str(&format!(
        "  {:<16} {:<12} rss {:>7.1} MiB\n  total rss {:.1} MiB\n",
        "relays",
        relays.len(),
        relay_kib as f64 / 1024.0,
        total_kib as f64 / 1024.0
    ));
    out.push_str(&format!(
        "API: https://127.0.0.1:{}  kubeconfig: {}\n",
        state.api_port,
        state.kubeconfig.display()
    ));
    if let Some(p) = state.registry_port {
        out.push_str(&format!("registry: 127.0.0.1:{p}\n"));
    }
    if state.kubeconfig.exists() {
        let k = Kubectl::new(kubectl, &state.kubeconfig)?;
        match k.run(&["get", "nodes", "-o", "wide"]) {
            Ok(o) if o.success() => out.push_str(&o.stdout),
            Ok(o) => out.push_str(&format!("kubectl get nodes failed: {}\n", o.stderr.trim())),
            Err(e) => out.push_str(&format!("kubectl: {e}\n")),
        }
    }
    let sock = Layout(dir).switch_socket();
    if sock.exists() {
        match control::send(&sock, &SwitchCommand::Status) {
            Ok(json) => out.push_str(&format!("switch: {}\n", summarize_switch(&json))),
            Err(e) => out.push_str(&format!("switch: {e}\n")),
        }
    }
    Ok(out)
}

fn summarize_switch(json: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return json.to_owned();
    };
    let ports = v["ports"].as_array().map(|p| p.len()).unwrap_or(0);
    let faults = v["faults"].as_array().map(|f| f.len()).unwrap_or(0);
    let names: Vec<String> = v["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{}(rx {} tx {}{})",
                p["names"].get(0).and_then(|n| n.as_str()).unwrap_or("?"),
                p["rx"],
                p["tx"],
                if p["cut"].as_bool() == Some(true) {
                    ", cut"
                } else {
                    ""
                }
            )
        })
        .collect();
    format!("{ports} ports, {faults} faults: {}", names.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tokens_are_recognised() {
        assert!(is_bootstrap_token("abcdef.0123456789abcdef"));
        assert!(!is_bootstrap_token("abcdef.0123456789abcde"));
        assert!(!is_bootstrap_token("ABCDEF.0123456789abcdef"));
        assert!(!is_bootstrap_token("token created"));
    }

    #[test]
    fn nodeports_json_has_the_promised_shape() {
        let state = LabState {
            name: "t".into(),
            dir: "/x".into(),
            api_port: 1,
            gate_port: 2,
            registry_port: None,
            registry_upstream_port: None,
            switch_port: None,
            kubeconfig: "/x/kubeconfig".into(),
            nodes: vec![NodeSpec::new(1, &(40000..40010).collect::<Vec<_>>())],
        };
        let v = state.nodeports_json();
        assert_eq!(v["keel-1"]["30000"], "127.0.0.1:40000");
        assert_eq!(v["keel-1"]["30009"], "127.0.0.1:40009");
    }

    #[test]
    fn missing_server_binary_is_reported_with_a_hint() {
        let mut o = LabOptions::control_plane_only();
        o.binaries.keel_server = "/nonexistent/keel-server".into();
        let err = Lab::start(o).err().expect("must fail").to_string();
        assert!(
            err.contains("/nonexistent/keel-server") && err.contains("KEEL_SERVER_BIN"),
            "{err}"
        );
    }
}
