//! The node agent: joins the control plane, keeps the session, reports the node.
//!
//! It runs as a child of PID 1 (which restarts it if it dies) on a single-threaded tokio
//! runtime. The flow is a small state machine, each state with its own module:
//!
//! ```text
//! config ──▶ identity on disk? ──no──▶ join (join.rs) ──▶ save (identity.rs)
//!                 │ yes                                        │
//!                 ▼                                            ▼
//!              session (session.rs) ◀──────────────────────────┘
//!                 │ broken: reconnect with back-off (100 ms … 5 s)
//!                 │ certificate refused: forget the identity, join again
//! ```
//!
//! Console lines (stderr, which PID 1 connects to the console) start with `keel:` and say what
//! happened in words an operator can act on; the token is never printed.
//!
//! For tests on a host: `keel-node agent --config FILE --state-dir DIR`. For measuring the control
//! plane at scale: `keel-node hollow` ([`hollow`]), many simulated nodes over this same code.

pub mod hollow;
mod host;
mod identity;
mod join;
mod link;
mod report;
mod session;
mod tls;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{NodeConfig, NODE_CONFIG_PATH, STATE_DIR};
use identity::Identity;
use link::SessionLink;
use report::Reporter;
use session::Ended;
use tls::ServerAddr;

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
const JOIN_RETRY_MIN: Duration = Duration::from_secs(1);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(30);
const CONFIG_POLL: Duration = Duration::from_secs(5);

struct Options {
    config: PathBuf,
    state_dir: PathBuf,
    /// `--no-workloads`: join and keep the session only; run no pods and leave the machine's
    /// network alone (for running the agent on a development host, as the tests do).
    no_workloads: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            config: PathBuf::from(NODE_CONFIG_PATH),
            state_dir: PathBuf::from(STATE_DIR),
            no_workloads: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
            match a.as_str() {
                "--config" => o.config = PathBuf::from(value("--config")?),
                "--state-dir" => o.state_dir = PathBuf::from(value("--state-dir")?),
                "--no-workloads" => o.no_workloads = true,
                other => {
                    return Err(format!(
                    "unknown argument {other:?} (usage: keel-node agent [--config FILE] [--state-dir DIR] [--no-workloads])"
                ))
                }
            }
        }
        Ok(o)
    }
}

pub fn main(args: &[String]) -> ExitCode {
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("keel-node agent: {msg}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel: agent cannot start its runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(opts))
}

/// Grows a delay geometrically up to a cap.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff { next: min, min, max }
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}

/// Reads the config; `None` while the file is missing or unreadable (said once).
fn read_config(path: &Path, said: &mut bool) -> Option<NodeConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            if !*said {
                eprintln!("keel: waiting for the node configuration {}: {e}", path.display());
                *said = true;
            }
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(c) => Some(c),
        Err(e) => {
            if !*said {
                eprintln!(
                    "keel: the node configuration {} is not valid: {e}",
                    path.display()
                );
                *said = true;
            }
            None
        }
    }
}

fn node_name(cfg: &NodeConfig) -> String {
    if let Some(n) = cfg.name.as_deref().filter(|n| !n.is_empty()) {
        return n.to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keel-node".to_string())
}

async fn run(opts: Options) -> ExitCode {
    let mut said = false;
    let cfg = loop {
        if let Some(c) = read_config(&opts.config, &mut said) {
            break c;
        }
        tokio::time::sleep(CONFIG_POLL).await;
    };
    let name = node_name(&cfg);
    let machine_id = match identity::machine_id(&opts.state_dir) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("keel: cannot keep node state: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reporter = Reporter {
        node_name: name.clone(),
        storage_path: opts.state_dir.clone(),
        machine_id,
        preferred_ip: cfg.static_ip2.as_ref().map(|s| s.address),
        boot_phases: cfg
            .boot_phases
            .iter()
            .map(|p| keel_proto::BootPhase {
                name: p.name.clone(),
                millis_since_boot: (p.at * 1000.0).max(0.0) as u64,
            })
            .collect(),
        simulated: None,
    };

    // The pod manager (crate::pods) takes the pod end and outlives sessions; the console also
    // shows what this node is assigned.
    let (mut session_link, pod_link) = link::pair();
    if opts.no_workloads {
        eprintln!("keel: --no-workloads: this agent runs no pods and leaves the network alone");
    } else {
        // The pod network (bridge, VXLAN overlay, masquerade) follows the pod CIDR and peers.
        tokio::spawn(crate::net::network_agent::serve(
            crate::net::network_agent::Settings {
                preferred_ip: cfg.static_ip2.as_ref().map(|s| s.address),
                state_dir: opts.state_dir.clone(),
                node_name: name.clone(),
            },
            pod_link.pod_cidr.clone(),
            pod_link.peers.clone(),
            pod_link.overlay.clone(),
        ));
        let pod_settings = crate::pods::Settings::from_config(&cfg, &name, &opts.state_dir);
        crate::streams::configure(crate::streams::Paths {
            pods_dir: pod_settings.pods_dir.clone(),
            log_dir: pod_settings.log_dir.clone(),
        });
        // Usage for `kubectl top` and the HPA, sampled from the pods' cgroups.
        tokio::spawn(crate::pods::usage::serve(
            pod_settings.cgroup_root.clone(),
            cfg.usage_interval_seconds
                .map_or(crate::pods::usage::INTERVAL, |s| {
                    Duration::from_secs(u64::from(s))
                }),
            pod_link.desired.clone(),
            pod_link.up.clone(),
        ));
        tokio::spawn(crate::pods::manager::serve(
            pod_settings,
            pod_link.desired.clone(),
            pod_link.up.clone(),
            pod_link.sessions.clone(),
        ));
    }
    tokio::spawn(link::announce_assignments(pod_link));

    loop {
        let id = match usable_identity(&opts.state_dir, &cfg, &name) {
            Some(id) => id,
            None => join_until_done(&cfg, &name, &opts.state_dir).await,
        };
        let Some(addr) = ServerAddr::parse(&id.server) else {
            eprintln!(
                "keel: stored server {} is not a valid URL; joining again",
                id.server
            );
            let _ = Identity::remove(&opts.state_dir);
            continue;
        };
        let reason = keep_session(&id, &opts.state_dir, &addr, &reporter, &mut session_link).await;
        eprintln!(
            "keel: this node and the control plane no longer trust each other ({reason}); joining again"
        );
        if let Err(e) = Identity::remove(&opts.state_dir) {
            eprintln!("keel: {e}");
        }
    }
}

/// The stored identity, if it is for this node and (when configured) this server.
fn usable_identity(state: &Path, cfg: &NodeConfig, name: &str) -> Option<Identity> {
    let id = match Identity::load(state) {
        Ok(id) => id?,
        Err(e) => {
            eprintln!("keel: {e}");
            return None;
        }
    };
    let same_server = cfg.server.as_deref().is_none_or(|s| s == id.server);
    (id.node_name == name && same_server).then_some(id)
}

/// Joins, retrying with back-off, until it works; then stores the identity.
async fn join_until_done(cfg: &NodeConfig, name: &str, state: &Path) -> Identity {
    let (Some(server), Some(token)) = (cfg.server.as_deref(), cfg.token.as_deref()) else {
        eprintln!(
            "keel: not joined to a cluster; boot with keel.server=https://<control plane>:9443 \
             keel.token=<bootstrap token> keel.ca-hash=sha256:<CA hash>"
        );
        return std::future::pending().await;
    };
    let Some(ca_hash) = cfg.ca_hash.as_deref() else {
        eprintln!(
            "keel: keel.ca-hash= is missing; refusing to trust {server} without the cluster CA's pin \
             (`keel-server` prints it)"
        );
        return std::future::pending().await;
    };
    let params = join::JoinParams {
        server,
        token,
        ca_hash,
        node_name: name,
    };
    let mut backoff = Backoff::new(JOIN_RETRY_MIN, JOIN_RETRY_MAX);
    let mut last_message = String::new();
    loop {
        match join::join(&params).await {
            Ok(id) => {
                if let Err(e) = id.save(state) {
                    eprintln!("keel: joined, but cannot store the node's certificate: {e}");
                }
                eprintln!("keel: joined as {}", id.node_name);
                return id;
            }
            Err(e) => {
                let line = match &e {
                    join::JoinError::Refused(m) => {
                        format!("keel: the control plane refused to join this node: {m}")
                    }
                    other => format!("keel: {other}"),
                };
                // Say it once per distinct problem, not once per retry.
                if line != last_message {
                    eprintln!("{line}");
                    last_message = line;
                }
                if e.is_transient() {
                    backoff.wait().await;
                } else {
                    // A wrong token or pin may be fixed on the control plane (a new token
                    // created): keep trying, slowly.
                    backoff.next = backoff.max.min(backoff.next.max(Duration::from_secs(5)));
                    backoff.wait().await;
                }
            }
        }
    }
}

/// Keeps a session up, reconnecting with back-off; returns only if the certificate is refused.
/// The certificate is renewed (and the session restarted with it) once two thirds of its
/// lifetime are used up.
async fn keep_session(
    id: &Identity,
    state: &Path,
    addr: &ServerAddr,
    reporter: &Reporter,
    link: &mut SessionLink,
) -> String {
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut down_since_said = false;
    let server = id.server.clone();
    let mut id = id.clone();
    let mut renewer = join::Renewer::default();
    loop {
        let until_renewal = renewer.check(&mut id, state).await;
        let session = session::run(&id, addr, reporter, link, || {
            eprintln!("keel: connected to {server}");
        });
        let ended = tokio::select! {
            ended = session => ended,
            _ = tokio::time::sleep(until_renewal) => continue,
        };
        match ended {
            Ended::Rejected(reason) => return reason,
            Ended::Broken { reason, established } => {
                if established {
                    backoff.reset();
                    down_since_said = false;
                }
                if !down_since_said {
                    eprintln!("keel: lost the control plane at {server} ({reason}); reconnecting");
                    down_since_said = true;
                }
                // Reports queued while away are stale; the pod manager sends fresh ones when
                // the next session starts.
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = discard(&mut link.up) => {}
                }
            }
        }
    }
}

/// Drops whatever arrives; never completes.
async fn discard<T>(rx: &mut tokio::sync::mpsc::Receiver<T>) {
    while rx.recv().await.is_some() {}
    std::future::pending::<()>().await
}

impl crate::pods::manager::Snapshot for link::DesiredSet {
    fn version(&self) -> u64 {
        self.version
    }
    fn pods(&self) -> &[serde_json::Value] {
        &self.pods
    }
}
