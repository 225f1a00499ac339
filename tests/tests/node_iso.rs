//! The node ISO as a user meets it: `keel-server node-iso` bakes the cluster's join data into a
//! copy of `out/keel-node.iso`; the ISO boots under BIOS and under UEFI (OVMF) in QEMU and the
//! node shows up Ready in `kubectl get nodes -o wide` with the columns a user reads.
//!
//! QEMU's user network is restricted (`restrict=on`): the node reaches only the node gate,
//! through `guestfwd` and the lab's relay.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{server_binary, workspace_root, Server};

fn out_dir() -> PathBuf {
    std::env::var_os("KEEL_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("out"))
}

fn lab_binary() -> PathBuf {
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

struct Vm {
    child: Child,
    console: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            eprintln!("--- console ---\n{text}");
        }
    }
}

fn boot(iso: &Path, dir: &Path, node_port: u16, uefi: bool) -> Vm {
    let console = dir.join(if uefi {
        "console-uefi.log"
    } else {
        "console-bios.log"
    });
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
    ])
    .arg("-cdrom")
    .arg(iso);
    if uefi {
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).expect("OVMF vars (apt-get install ovmf)");
        cmd.args(["-machine", "q35"])
            .arg("-drive")
            .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    Vm { child, console }
}

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
    let vm = boot(&iso, s.dir.path(), node_port, uefi);
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
