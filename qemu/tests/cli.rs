//! `keel-lab up|status|down` as `make qemu-cluster` uses them, with zero nodes so it runs
//! without the node image: the lab must outlive `up`, refuse a second `up`, show itself in
//! `status`, and after `down` leave no process, listener or state file behind.
//!
//! Needs a built keel-server (`cargo build -p keel-server`, or KEEL_SERVER_BIN).

use std::path::Path;
use std::process::{Command, Output};

use keel_lab::lab::{running_processes, Binaries, LabState};

fn keel_lab(args: &[&str], dir: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-lab"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("KEEL_SERVER_BIN", Binaries::discover().keel_server)
        .output()
        .unwrap();
    eprintln!(
        "keel-lab {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Stops the lab even when an assertion fails half-way.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = keel_lab::lab::down(self.0);
    }
}

#[test]
fn up_detaches_refuses_a_second_up_and_down_leaves_nothing() {
    let server = Binaries::discover().keel_server;
    assert!(
        server.exists(),
        "keel-server is not built ({}): cargo build -p keel-server",
        server.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let _down = Down(&dir);

    let up = keel_lab(&["up", "--nodes", "0", "--name", "cli-test"], &dir);
    assert!(up.status.success());
    let text = String::from_utf8_lossy(&up.stdout);
    assert!(text.contains("kubeconfig:"), "{text}");
    assert!(
        text.contains("control plane ready"),
        "phase times missing: {text}"
    );

    let state = LabState::read(&dir).unwrap();
    let running = running_processes(&dir);
    let names: Vec<&str> = running.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["registry", "server"], "{running:?}");
    assert!(listening(state.api_port));
    let registry_port = state.registry_port.unwrap();
    assert!(listening(registry_port));
    assert!(
        keel_lab::registry::manifest(&format!("127.0.0.1:{registry_port}"), "library/busybox", "1.35")
            .is_ok()
    );
    let config = std::fs::read_to_string(dir.join("registry.yml")).unwrap();
    assert!(
        config.contains(&format!("addr: 127.0.0.1:{registry_port}")),
        "registry must listen on loopback only: {config}"
    );

    let again = keel_lab(&["up", "--nodes", "0"], &dir);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already running"));
    assert_eq!(
        running_processes(&dir),
        running,
        "the second up must not touch the first"
    );

    let status = keel_lab(&["status"], &dir);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("cli-test") && text.contains("server") && text.contains("total rss"),
        "{text}"
    );

    let down = keel_lab(&["down"], &dir);
    assert!(down.status.success());
    assert!(running_processes(&dir).is_empty());
    for (_, rec) in &running {
        assert!(!rec.running(), "pid {} survived down", rec.pid);
    }
    assert!(!listening(state.api_port) && !listening(registry_port));
    for gone in [
        "lab.json",
        "kubeconfig",
        "pids",
        "server",
        "registry-data",
        "switch.sock",
        "start.lock",
    ] {
        assert!(!dir.join(gone).exists(), "{gone} left behind");
    }
    assert!(
        dir.join("logs/server.log").exists(),
        "logs stay for a post-mortem"
    );

    let status = keel_lab(&["status"], &dir);
    assert!(String::from_utf8_lossy(&status.stdout).contains("no lab"));
}
