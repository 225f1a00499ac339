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
    pub fn start() -> Server {
        Self::start_with(&[])
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
