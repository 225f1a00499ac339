//! A `keel-server` of one's own for API tests: fresh data directory, free port, killed (and its
//! log printed if the test failed) when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_lab::Kubectl;

pub struct Server {
    child: Child,
    pub dir: tempfile::TempDir,
    /// The Kubernetes API's port.
    pub port: u16,
    /// The node gate's port.
    pub node_port: u16,
    /// The extra command-line arguments, kept for restarts.
    extra: Vec<String>,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("KEEL_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("keel-server");
        if p.exists() {
            return p;
        }
    }
    panic!("keel-server is not built: run `cargo build -p keel-server` (make test does)");
}

impl Server {
    /// The API server and node gate alone (`--no-controllers`): API tests drive every object
    /// themselves, as the "objects whose status is set by the test" asks.
    pub fn start() -> Server {
        Self::start_with(&["--no-controllers"])
    }

    /// The whole control plane: API, node gate, scheduler and controllers.
    pub fn start_full(extra: &[&str]) -> Server {
        Self::start_with(extra)
    }

    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("keel-api-test-")
            .tempdir()
            .expect("temp dir");
        let ports = keel_lab::ports::free_ports(2).expect("free ports");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let child = Command::new(server_binary())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", ports[0]))
            .arg("--node-listen")
            .arg(format!("127.0.0.1:{}", ports[1]))
            .args(extra)
            .env("KEEL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start keel-server");
        let mut s = Server {
            child,
            dir,
            port: ports[0],
            node_port: ports[1],
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let kubeconfig = self.kubeconfig();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("keel-server exited ({status}) during start:\n{}", self.log());
            }
            if kubeconfig.exists() && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "keel-server did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data").join("admin.kubeconfig")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn kubectl(&self) -> Kubectl {
        let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
        Kubectl::new(Path::new(&bin), &self.kubeconfig()).expect("kubectl")
    }

    /// Runs kubectl and returns stdout; panics with stderr and the server log if it fails.
    pub fn ok(&self, k: &Kubectl, args: &[&str]) -> String {
        match k.run(args) {
            Ok(out) if out.success() => out.stdout,
            Ok(out) => panic!(
                "kubectl {} failed:\n{}\n{}",
                args.join(" "),
                out.stderr,
                self.log_tail()
            ),
            Err(e) => panic!("kubectl {}: {e}", args.join(" ")),
        }
    }

    /// `kubectl apply -f -` with `manifest`; returns stdout.
    pub fn apply(&self, k: &Kubectl, manifest: &str) -> String {
        match k.run_with_stdin(&["apply", "-f", "-"], Some(manifest)) {
            Ok(out) if out.success() => out.stdout,
            Ok(out) => panic!("kubectl apply failed:\n{}\n{}", out.stderr, self.log_tail()),
            Err(e) => panic!("kubectl apply: {e}"),
        }
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!("--- server log (tail) ---\n{}", lines[start..].join("\n"))
    }

    /// Starts a long-running kubectl (a watch) whose output lines can be awaited.
    pub fn kubectl_spawn(&self, k: &Kubectl, args: &[&str]) -> Spawned {
        let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let mut child = Command::new(bin)
            .arg("--kubeconfig")
            .arg(k.kubeconfig())
            .args(args)
            .env("HOME", k.home())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Spawned {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Kills the server without warning (kill -9) and starts it again on the same data.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log");
        self.child = Command::new(server_binary())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--node-listen")
            .arg(format!("127.0.0.1:{}", self.node_port))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("restart keel-server");
        self.wait_ready();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

pub struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Spawned {
    pub fn wait_for_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no matching line; output so far:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------ QEMU nodes

/// `out/` (or `$KEEL_OUT`): the node image `make image` / `make iso` builds.
pub fn out_dir() -> PathBuf {
    std::env::var_os("KEEL_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("out"))
}

pub fn lab_binary() -> PathBuf {
    if let Ok(p) = std::env::var("KEEL_LAB_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("keel-lab"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("keel-lab is not built: run `cargo build -p keel-lab` (make test does)"))
}

/// A QEMU node; killed (and its console printed if the test failed) when dropped.
pub struct Vm {
    child: Child,
    pub console: PathBuf,
}

impl Vm {
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits until the console shows a line containing `needle`.
    pub fn wait_console(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.console_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not on the console after {timeout:?}:\n{}",
                self.console_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- console {} ---\n{}",
                self.console.display(),
                self.console_text()
            );
        }
    }
}

/// QEMU (TCG) with a restricted user network whose only opening is the node gate at
/// 10.0.2.100:9443, relayed to `node_port` on the host.
fn qemu(console: &Path, node_port: u16) -> Command {
    let relay = format!("{} relay 127.0.0.1 {node_port}", lab_binary().display());
    let netdev = format!("user,id=u0,restrict=on,guestfwd=tcp:10.0.2.100:9443-cmd:{relay}");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg,tb-size=64",
        "-m",
        "512",
        "-smp",
        "1",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .args([
        "-device",
        "virtio-rng-pci",
        "-netdev",
        &netdev,
        "-device",
        "virtio-net-pci,netdev=u0",
    ]);
    cmd
}

fn spawn(mut cmd: Command, console: PathBuf) -> Vm {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    Vm { child, console }
}

/// Boots an ISO under BIOS or UEFI (OVMF).
pub fn boot_iso(iso: &Path, dir: &Path, node_port: u16, uefi: bool) -> Vm {
    let console = dir.join(if uefi {
        "console-uefi.log"
    } else {
        "console-bios.log"
    });
    let mut cmd = qemu(&console, node_port);
    cmd.arg("-cdrom").arg(iso);
    if uefi {
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).expect("OVMF vars (apt-get install ovmf)");
        cmd.args(["-machine", "q35"])
            .arg("-drive")
            .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    spawn(cmd, console)
}

/// Boots `out/vmlinux` + `out/initramfs` (the fast PVH path) with extra kernel arguments.
pub fn boot_kernel(dir: &Path, name: &str, node_port: u16, args: &str) -> Vm {
    let out = out_dir();
    let (kernel, initrd) = (out.join("vmlinux"), out.join("initramfs"));
    assert!(
        kernel.exists() && initrd.exists(),
        "{} is missing the node image: run `make image`",
        out.display()
    );
    let console = dir.join(format!("console-{name}.log"));
    let mut cmd = qemu(&console, node_port);
    cmd.arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 {args}"));
    spawn(cmd, console)
}

/// The join arguments of this server: a fresh bootstrap token and the CA pin.
pub fn join_args(s: &Server) -> (String, String) {
    let run = |args: &[&str]| {
        let out = Command::new(server_binary())
            .arg("--data-dir")
            .arg(s.data_dir())
            .args(args)
            .output()
            .expect("keel-server");
        assert!(
            out.status.success(),
            "keel-server {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let token = run(&["token", "create", "--server", &format!("127.0.0.1:{}", s.port)]);
    (token, run(&["ca-hash"]))
}
