//! The node ISO as a user meets it: `keel-server node-iso` bakes the cluster's join data into a
//! copy of `out/keel-node.iso`; the ISO boots under BIOS and under UEFI (OVMF) in QEMU and the
//! node shows up Ready in `kubectl get nodes -o wide` with the columns a user reads.
//!
//! QEMU's user network is restricted (`restrict=on`): the node reaches only the node gate,
//! through `guestfwd` and the lab's relay.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{boot_iso, out_dir, server_binary, Server, Vm};

fn node_iso(s: &Server, out: &Path) {
    let base = out_dir().join("keel-node.iso");
    assert!(
        base.exists(),
        "{} is missing: run `make iso` (make test does)",
        base.display()
    );
    let status = Command::new(server_binary())
        .arg("--data-dir")
        .arg(s.data_dir())
        .args(["node-iso", "--server", "https://10.0.2.100:9443", "--api"])
        .arg(format!("127.0.0.1:{}", s.port))
        .arg("--base")
        .arg(&base)
        .arg("--out")
        .arg(out)
        .status()
        .expect("keel-server node-iso");
    assert!(status.success(), "keel-server node-iso failed:\n{}", s.log_tail());
}

fn wait_ready(s: &Server, k: &keel_lab::Kubectl, vm: &Vm, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let out = k.run(&["get", "nodes", "-o", "wide"]).expect("kubectl");
        if out
            .stdout
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("Ready"))
        {
            return out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "no Ready node after {timeout:?}:\n{}\n{}\n--- console ---\n{}",
            out.stdout,
            s.log_tail(),
            std::fs::read_to_string(&vm.console).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn boots_and_joins(uefi: bool) {
    let s = Server::start_with(&["--san", "10.0.2.100"]);
    let node_port = s.node_port;
    let k = s.kubectl();
    let iso = s.dir.path().join("node.iso");
    node_iso(&s, &iso);
    let vm = boot_iso(&iso, s.dir.path(), node_port, uefi);
    let wide = wait_ready(&s, &k, &vm, Duration::from_secs(120));
    let header = wide.lines().next().unwrap_or("");
    for col in ["INTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"] {
        assert!(header.contains(col), "{wide}");
    }
    let row = wide.lines().nth(1).unwrap_or("");
    assert!(
        row.contains("10.0.2.15") && row.contains("Keel ") && row.contains("keel://"),
        "{wide}"
    );
    let kernel = std::fs::read_to_string(out_dir().join("kernel-version")).unwrap_or_default();
    let release = kernel.split_whitespace().next().unwrap_or("");
    assert!(
        !release.is_empty() && row.contains(release),
        "kernel {release:?} not in {row}"
    );
    let name = row.split_whitespace().next().unwrap_or("");
    let describe = s.ok(&k, &["describe", "node", name]);
    for part in [
        "Capacity:",
        "Allocatable:",
        "KubeletReady",
        "HolderIdentity:",
        "Kernel Version:",
    ] {
        assert!(describe.contains(part), "{part} missing in describe:\n{describe}");
    }
}

#[test]
fn configured_iso_boots_under_bios_and_joins() {
    boots_and_joins(false);
}

#[test]
fn configured_iso_boots_under_uefi_and_joins() {
    boots_and_joins(true);
}
