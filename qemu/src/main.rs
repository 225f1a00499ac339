//! `keel-lab`: the QEMU lab's command line.
//!
//! ```text
//! keel-lab up --dir out/lab            start a lab, wait for Ready nodes, print how to use it
//! keel-lab down --dir out/lab          stop it and remove its state (logs stay)
//! keel-lab status --dir out/lab        what runs, memory, nodes, switch
//! keel-lab switch-ctl [--dir D] cut keel-2 | heal keel-2 | loss keel-2 20 | delay all 50 | status
//! keel-lab images --registry 127.0.0.1:PORT      build and push the test images
//! keel-lab switch --listen 127.0.0.1:0 --control SOCK [--port-file F] [--node NAME=MAC]…
//! keel-lab relay 127.0.0.1 PORT        (QEMU runs this per guest connection)
//! keel-lab registry-gate --listen A --upstream B --user U:P   (a lab with registry credentials)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use keel_lab::lab::{self, Binaries, Lab, LabError, LabOptions};
use keel_lab::proc::Lifetime;
use keel_lab::switch::{self, control, frame::MacAddr};

#[derive(Parser)]
#[command(name = "keel-lab", version, about = "The Keel QEMU lab")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a lab and wait until its nodes are Ready.
    Up {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Shown by status; defaults to the directory's name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        #[arg(long)]
        kernel: Option<PathBuf>,
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// keel-server's --node-grace-period.
        #[arg(long)]
        node_grace_period: Option<String>,
        /// Seconds to wait for Ready nodes.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Stop a lab started by `up`.
    Down {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show what a lab runs.
    Status {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Send a command to a lab's switch: cut|heal <target>, loss <target> <pct>,
    /// delay <target> <ms>, name <name> <mac>, status. A target is all, port:N, a MAC or a node name.
    SwitchCtl {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The control socket (default: <dir>/switch.sock).
        #[arg(long)]
        control: Option<PathBuf>,
        #[arg(required = true, num_args = 1..)]
        words: Vec<String>,
    },
    /// Build the test images and push them to a registry (plain HTTP).
    Images {
        #[arg(long)]
        registry: String,
        #[arg(long, default_value = keel_lab::image::DEFAULT_BUSYBOX)]
        busybox: PathBuf,
    },
    /// Run the lab switch.
    Switch {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        control: PathBuf,
        /// Write the bound port here once listening (for --listen 127.0.0.1:0).
        #[arg(long)]
        port_file: Option<PathBuf>,
        /// NAME=MAC, so that commands can name nodes.
        #[arg(long = "node")]
        nodes: Vec<String>,
    },
    /// Relay stdin/stdout to HOST PORT (QEMU guestfwd cmd:).
    Relay { host: IpAddr, port: u16 },
    /// Serve the registry's credential gate (private/basic/… and private/token/… need
    /// USER:PASSWORD) in front of the registry at --upstream.
    RegistryGate {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        /// USER:PASSWORD
        #[arg(long)]
        user: String,
    },
}

fn default_dir(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| lab::out_dir().join("lab"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The relay's stderr is the guest's TCP stream: it must never log.
    if let Cmd::Relay { host, port } = cli.command {
        return match keel_lab::relay::relay_stdio(SocketAddr::new(host, port)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    let default_level = if matches!(cli.command, Cmd::Switch { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Up {
            dir,
            name,
            nodes,
            kernel,
            initrd,
            node_grace_period,
            timeout,
        } => up(
            default_dir(dir),
            name,
            nodes,
            kernel,
            initrd,
            node_grace_period,
            timeout,
        ),
        Cmd::Down { dir } => {
            let dir = default_dir(dir);
            let report = lab::down(&dir)?;
            if report.stopped.is_empty() {
                println!("nothing was running in {}", dir.display());
            } else {
                println!("stopped {} ({})", report.stopped.join(", "), dir.display());
            }
            if report.relays_killed > 0 {
                println!("killed {} leftover relays", report.relays_killed);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { dir } => {
            let dir = default_dir(dir);
            match lab::status(&dir, &Binaries::discover().kubectl) {
                Ok(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(LabError::NoLab(d)) => {
                    println!("no lab in {} (make qemu-cluster starts one)", d.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(e.into()),
            }
        }
        Cmd::RegistryGate {
            listen,
            upstream,
            user,
        } => {
            let (user, password) = user.split_once(':').context("--user wants USER:PASSWORD")?;
            let gate = keel_lab::registry_gate::Gate {
                upstream,
                user: user.to_string(),
                password: password.to_string(),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                keel_lab::registry_gate::serve(listener, gate).await;
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::SwitchCtl { dir, control, words } => {
            let socket = control.unwrap_or_else(|| default_dir(dir).join("switch.sock"));
            let command: control::Command = words.join(" ").parse()?;
            let answer = control::send(&socket, &command)?;
            if answer.is_empty() {
                println!("ok");
            } else {
                println!("{answer}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Images { registry, busybox } => {
            let start = Instant::now();
            let images = keel_lab::image::lab_images(&busybox)?;
            let uploaded = keel_lab::registry::push_blocking(&registry, &images)?;
            for i in &images {
                println!("{registry}/{} {}", i.reference(), i.manifest_digest());
            }
            println!(
                "{uploaded} blobs uploaded in {:.2}s",
                start.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Switch {
            listen,
            control,
            port_file,
            nodes,
        } => run_switch(listen, control, port_file, nodes),
        Cmd::Relay { .. } => Ok(ExitCode::FAILURE),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run_switch(
    listen: SocketAddr,
    control: PathBuf,
    port_file: Option<PathBuf>,
    nodes: Vec<String>,
) -> Result<ExitCode> {
    let mut names = Vec::new();
    for n in &nodes {
        let Some((name, mac)) = n.split_once('=') else {
            bail!("--node wants NAME=MAC, got {n:?}");
        };
        let mac: MacAddr = mac.parse()?;
        names.push((name.to_owned(), mac));
    }
    let sw = switch::Switch::bind(listen, &control, names).await?;
    let addr = sw.local_addr()?;
    if let Some(f) = &port_file {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", addr.port()))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, f).with_context(|| format!("writing {}", f.display()))?;
    }
    tracing::info!(%addr, control = %control.display(), "switch listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = sw.run() => {}
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
    let _ = std::fs::remove_file(&control);
    if let Some(f) = &port_file {
        let _ = std::fs::remove_file(f);
    }
    Ok(ExitCode::SUCCESS)
}

fn up(
    dir: PathBuf,
    name: Option<String>,
    nodes: u8,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    node_grace_period: Option<String>,
    timeout: u64,
) -> Result<ExitCode> {
    keel_lab::proc::catch_interrupts();
    let started = Instant::now();
    let name = name.unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "lab".into())
    });
    let mut options = LabOptions::with_nodes(nodes);
    options.name = name.clone();
    options.dir = Some(dir.clone());
    options.lifetime = Lifetime::Detachable;
    options.registry = true;
    options.node_grace_period = node_grace_period;
    if let Some(k) = kernel {
        options.kernel = k;
    }
    if let Some(i) = initrd {
        options.initrd = i;
    }
    if let Ok(me) = std::env::current_exe() {
        if std::env::var_os("KEEL_LAB_BIN").is_none() {
            options.binaries.keel_lab = me;
        }
    }
    println!(
        "==> starting lab {name:?} in {} ({} nodes, {})",
        dir.display(),
        nodes,
        if options.kvm { "KVM" } else { "TCG" }
    );
    let lab = match Lab::start(options) {
        Ok(lab) => lab,
        Err(LabError::AlreadyRunning(d)) => {
            println!("a lab is already running in {}; leaving it alone.", d.display());
            if let Ok(text) = lab::status(&d, &Binaries::discover().kubectl) {
                print!("{text}");
            }
            println!(
                "stop it with `{}make qemu-cluster-down`, or start another with KEEL_LAB=<name> make qemu-cluster",
                make_prefix(&name)
            );
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    for (phase, took) in lab.phases() {
        println!("    {phase:<22} {:>6.1}s", took.as_secs_f64());
    }
    let wait_start = Instant::now();
    let ready = lab.wait_nodes_ready(Duration::from_secs(timeout));
    let state_dir = lab.dir().to_owned();
    let kubeconfig = lab.kubeconfig().to_owned();
    let state = lab.state().clone();
    match ready {
        Ok(()) => println!(
            "    {:<22} {:>6.1}s",
            "nodes Ready",
            wait_start.elapsed().as_secs_f64()
        ),
        Err(LabError::Wait(keel_lab::WaitError::Interrupted { .. })) => {
            println!("interrupted: stopping the lab");
            lab.shutdown();
            let _ = lab::down(&state_dir);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            let logs = lab.logs(25);
            let _ = lab.detach();
            eprintln!("{logs}");
            eprintln!("keel-lab: {e}");
            eprintln!(
                "the lab is left running for inspection (logs in {}/logs); `{}make qemu-cluster-down` stops it",
                state_dir.display(),
                make_prefix(&state.name)
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let _ = lab.detach();
    println!(
        "==> {} nodes Ready {:.1}s after start",
        state.nodes.len(),
        started.elapsed().as_secs_f64()
    );
    print_usage(&state_dir, &kubeconfig, &state);
    Ok(ExitCode::SUCCESS)
}

/// `KEEL_LAB=<name> ` for labs other than the default one, so printed commands work as typed.
fn make_prefix(name: &str) -> String {
    if name == "lab" {
        String::new()
    } else {
        format!("KEEL_LAB={name} ")
    }
}

fn rel(p: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| p.display().to_string())
}

fn print_usage(dir: &Path, kubeconfig: &Path, state: &lab::LabState) {
    println!();
    println!("kubeconfig:  {}", rel(kubeconfig));
    println!(
        "use it:      export KUBECONFIG={}; kubectl get nodes",
        kubeconfig.display()
    );
    println!(
        "consoles:    {}/logs/console-<node>.log (server: logs/server.log, switch: logs/switch.log)",
        rel(dir)
    );
    if let Some(p) = state.registry_port {
        println!("registry:    127.0.0.1:{p} (nodes: docker.io mirror; busybox:1.35, keel/echo:latest)");
    }
    println!("NodePorts:   {}/nodeports.json", rel(dir));
    for n in &state.nodes {
        let pairs: Vec<String> = n.nodeports.iter().map(|(g, h)| format!("{g}->{h}")).collect();
        println!("  {:<7} 127.0.0.1: {}", n.name, pairs.join(" "));
    }
    println!(
        "faults:      {} switch-ctl --dir {} cut keel-2 | heal keel-2",
        rel(&std::env::current_exe().unwrap_or_else(|_| PathBuf::from("keel-lab"))),
        rel(dir)
    );
    println!("stop:        {}make qemu-cluster-down", make_prefix(&state.name));
}
