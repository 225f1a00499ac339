//! The node image boots: the real kernel and initramfs under QEMU (TCG), watched on the serial
//! console. A node that nobody configured must load its modules, get an address by DHCP, name
//! itself, refuse writes to `/`, show how to join it and power off cleanly when asked; a node
//! configured on the kernel command line, by an archive appended to the initramfs, or by a
//! config disk must take those settings in that order of precedence; and the ISO must boot under
//! both BIOS and UEFI.
//!
//! The image comes from `KEEL_OUT` (the Makefile exports it) or `<workspace>/out`; `make image`
//! (and `make iso` for the ISO tests) build it. Boots take the lab's machine-wide QEMU lock so
//! they never compete with other VMs for the two cores.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Generous for TCG on a busy machine; a healthy boot needs a few seconds.
const BOOT_DEADLINE: Duration = Duration::from_secs(90);
/// BIOS/UEFI firmware and GRUB add their own time under TCG.
const ISO_DEADLINE: Duration = Duration::from_secs(180);

const TOKEN: &str = "abcdef.0123456789abcdef";
const CA_HASH: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn out_dir() -> PathBuf {
    match std::env::var_os("KEEL_OUT") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../out"),
    }
}

/// An image file, or a failure that says how to build it.
fn image(name: &str, make_target: &str) -> PathBuf {
    let path = out_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make {make_target}` first (tests never pass without the image)",
        path.display()
    );
    path
}

/// A QEMU process whose console is collected as it arrives.
struct Vm {
    child: Child,
    console: Arc<(Mutex<String>, Condvar)>,
    started: Instant,
    _lock: std::fs::File,
}

impl Vm {
    fn start(args: &[String]) -> Vm {
        let lock = keel_e2e::keel_lab::lab::qemu_lock().expect("the machine-wide QEMU lock");
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg,tb-size=64", "-m", "512", "-smp", "1"])
            .args(["-nographic", "-no-reboot", "-device", "virtio-rng-pci"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 runs (scripts/ensure-deps.sh installs it)");
        let started = Instant::now();
        let console = Arc::new((Mutex::new(String::new()), Condvar::new()));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = console.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let (text, cv) = &*console;
                    text.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                    cv.notify_all();
                }
                // EOF: wake waiters so they notice the end.
                console.1.notify_all();
            });
        }
        Vm {
            child,
            console,
            started,
            _lock: lock,
        }
    }

    fn text(&self) -> String {
        self.console.0.lock().unwrap().clone()
    }

    /// Waits until the console shows `needle`; returns the time since QEMU started.
    fn wait_for(&mut self, needle: &str, deadline: Duration) -> Duration {
        let (text, cv) = &*self.console;
        let mut guard = text.lock().unwrap();
        loop {
            if guard.contains(needle) {
                return self.started.elapsed();
            }
            let left = deadline.saturating_sub(self.started.elapsed());
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if left.is_zero() || exited {
                let console = guard.clone();
                drop(guard);
                panic!(
                    "console never showed {needle:?} ({}); console:\n{console}",
                    if exited { "QEMU exited" } else { "deadline passed" }
                );
            }
            guard = cv
                .wait_timeout(guard, left.min(Duration::from_millis(500)))
                .unwrap()
                .0;
        }
    }

    /// Waits for QEMU to exit (the guest powered off; `-no-reboot` also ends a reboot).
    fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if self.started.elapsed() >= deadline {
                panic!("QEMU still runs after {deadline:?}; console:\n{}", self.text());
            }
            let (text, cv) = &*self.console;
            let guard = text.lock().unwrap();
            let _ = cv.wait_timeout(guard, Duration::from_millis(200)).unwrap();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QEMU arguments for a direct PVH boot of the image with `append` after the defaults.
fn direct_boot(initrd: &Path, append: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "-kernel",
        &image("vmlinux", "image").to_string_lossy(),
        "-initrd",
        &initrd.to_string_lossy(),
        "-netdev",
        "user,id=u0,restrict=on",
        "-device",
        "virtio-net-pci,netdev=u0,mac=52:54:00:12:34:56",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("-append".into());
    args.push(format!(
        "console=ttyS0 panic=-1 quiet keel.selftest=poweroff {append}"
    ));
    args
}

/// A cpio "newc" archive of regular files (directories are created for their parents), as
/// `keel-server node-iso` appends to the initramfs.
fn newc_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let header = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    let mut ino = 1;
    let mut dirs: Vec<String> = Vec::new();
    for (path, data) in files {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            if !dirs.contains(&dir) {
                entry(&mut out, ino, &dir, 0o040755, &[]);
                ino += 1;
                dirs.push(dir);
            }
        }
        entry(&mut out, ino, path, 0o100644, data);
        ino += 1;
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// The ISO with `archive` written into its 64 KiB `/boot/config.cpio` slot, as
/// `keel-server node-iso` does (boot/README.md).
fn patch_iso_config(iso: &[u8], archive: &[u8]) -> Vec<u8> {
    const SLOT: usize = 65536;
    assert!(archive.len() <= SLOT, "config archive over 64 KiB");
    let at = (0..iso.len().saturating_sub(SLOT))
        .step_by(2048)
        .find(|&o| &iso[o..o + 6] == b"070701" && &iso[o + 110..o + 126] == b"keel-config-slot")
        .expect("the ISO has a config slot (boot/build-iso.sh)");
    let mut out = iso.to_vec();
    out[at..at + SLOT].fill(0);
    out[at..at + archive.len()].copy_from_slice(archive);
    out
}

/// The initramfs with `archive` appended (padded to 4 bytes first), in `dir`.
fn initramfs_with(dir: &Path, archive: &[u8]) -> PathBuf {
    let mut bytes = std::fs::read(image("initramfs", "image")).unwrap();
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    bytes.extend_from_slice(archive);
    let path = dir.join("initramfs-configured");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn unconfigured_node_boots_shows_how_to_join_and_powers_off() {
    let initrd = image("initramfs", "image");
    let mut vm = Vm::start(&direct_boot(&initrd, ""));
    let init = vm.wait_for("keel: init started", BOOT_DEADLINE);
    vm.wait_for("keel: entropy:", BOOT_DEADLINE);
    let net = vm.wait_for("keel: network up: eth0 10.0.2.15/24 via DHCP", BOOT_DEADLINE);
    let modules = vm.wait_for("keel: modules loaded (", BOOT_DEADLINE);
    vm.wait_for("keel: hostname keel-123456", BOOT_DEADLINE);
    vm.wait_for("keel: rootfs read-only: ok", BOOT_DEADLINE);
    vm.wait_for("keel: pivot_root: ok", BOOT_DEADLINE);
    vm.wait_for("not configured to join a cluster", BOOT_DEADLINE);
    vm.wait_for("keel-server token create", BOOT_DEADLINE);
    vm.wait_for("keel.server=https://", BOOT_DEADLINE);
    vm.wait_for("keel: agent started", BOOT_DEADLINE);
    vm.wait_for("keel: powering off", BOOT_DEADLINE);
    let status = vm.wait_exit(BOOT_DEADLINE);
    let console = vm.text();
    assert!(status.success(), "QEMU exit {status:?}; console:\n{console}");
    assert!(
        console.contains("reboot: Power down"),
        "no clean poweroff:\n{console}"
    );
    for bad in ["Kernel panic", "FAILED", "panicked"] {
        assert!(!console.contains(bad), "console shows {bad:?}:\n{console}");
    }
    // More than a handful of modules: drivers, overlay, bridge, nf_tables, ip_vs…
    let count: usize = console
        .split("modules loaded (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(count >= 40, "only {count} modules loaded:\n{console}");
    eprintln!("QEMU start → init {init:?}, → network up {net:?}, → modules loaded {modules:?}");
}

/// Boots the unconfigured image with a QEMU monitor, waits for the end of the boot, sends
/// `command` to the monitor and returns the VM and the monitor connection (QEMU may drop a
/// command whose connection closes at once).
fn boot_then_monitor(dir: &Path, command: &str) -> (Vm, std::os::unix::net::UnixStream) {
    let monitor = dir.join("monitor.sock");
    let mut args = direct_boot(&image("initramfs", "image"), "");
    // No self-test: the node stays up until told otherwise.
    if let Some(append) = args.last_mut() {
        *append = append.replace("keel.selftest=poweroff", "");
    }
    args.extend(["-monitor", &format!("unix:{},server,nowait", monitor.display())].map(String::from));
    let mut vm = Vm::start(&args);
    vm.wait_for("keel: pivot_root: ok", BOOT_DEADLINE);
    let mut mon = std::os::unix::net::UnixStream::connect(&monitor).expect("QEMU monitor socket");
    std::io::Write::write_all(&mut mon, format!("{command}\n").as_bytes()).unwrap();
    (vm, mon)
}

#[test]
fn acpi_power_button_powers_off_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, _monitor) = boot_then_monitor(dir.path(), "system_powerdown");
    vm.wait_for("keel: power button pressed: powering off", BOOT_DEADLINE);
    vm.wait_for("reboot: Power down", BOOT_DEADLINE);
    assert!(vm.wait_exit(BOOT_DEADLINE).success());
}

#[test]
fn ctrl_alt_del_reboots_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, _monitor) = boot_then_monitor(dir.path(), "sendkey ctrl-alt-delete");
    vm.wait_for("keel: SIGINT received: rebooting", BOOT_DEADLINE);
    vm.wait_for("keel: rebooting", BOOT_DEADLINE);
    // -no-reboot turns the guest's reboot into QEMU's exit.
    assert!(vm.wait_exit(BOOT_DEADLINE).success());
}

#[test]
fn cmdline_wins_over_appended_archive_and_static_addresses_apply() {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "# from keel-server node-iso\nserver=https://10.0.2.100:9443\ntoken={TOKEN}\n\
         ca-hash={CA_HASH}\nname=from-archive\nregistry-mirror=docker.io=http://10.0.2.100:5000\n"
    );
    let initrd = initramfs_with(
        dir.path(),
        &newc_archive(&[("etc/keel/node.conf", conf.as_bytes())]),
    );
    let mut args = direct_boot(
        &initrd,
        "keel.name=from-cmdline keel.ip=10.0.2.50/24 keel.gw=10.0.2.2 keel.dns=10.0.2.3 keel.ip2=192.168.50.7/24",
    );
    args.extend(
        [
            "-netdev",
            "user,id=u1,restrict=on",
            "-device",
            "virtio-net-pci,netdev=u1,mac=52:54:00:aa:00:07",
        ]
        .map(String::from),
    );
    let mut vm = Vm::start(&args);
    vm.wait_for("keel: network up: eth0 10.0.2.50/24 (static)", BOOT_DEADLINE);
    vm.wait_for("keel: hostname from-cmdline", BOOT_DEADLINE);
    vm.wait_for("eth1 52:54:00:aa:00:07 192.168.50.7/24", BOOT_DEADLINE);
    vm.wait_for(
        "keel: joining https://10.0.2.100:9443 (configured from cmdline, archive)",
        BOOT_DEADLINE,
    );
    vm.wait_for("keel: rootfs read-only: ok", BOOT_DEADLINE);
    vm.wait_for("keel: powering off", BOOT_DEADLINE);
    let status = vm.wait_exit(BOOT_DEADLINE);
    let console = vm.text();
    assert!(status.success(), "QEMU exit {status:?}; console:\n{console}");
    assert!(!console.contains("not configured to join"), "{console}");
    assert!(!console.contains("config (cmdline): ignored"), "{console}");
}

#[test]
fn config_disk_labelled_keelcfg_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("cfg.img");
    let conf = dir.path().join("node.conf");
    std::fs::write(
        &conf,
        format!("name=from-disk\nserver=https://10.0.2.100:9443\ntoken={TOKEN}\nca-hash={CA_HASH}\n"),
    )
    .unwrap();
    let run = |cmd: &str, args: &[&str]| {
        let st = Command::new(cmd)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("{cmd}: {e} (mtools)"));
        assert!(st.success(), "{cmd} {args:?} failed");
    };
    let img_s = img.to_string_lossy().to_string();
    run(
        "mformat",
        &["-C", "-f", "1440", "-v", "KEELCFG", "-i", &img_s, "::"],
    );
    run("mmd", &["-i", &img_s, "::keel"]);
    run(
        "mcopy",
        &["-i", &img_s, &conf.to_string_lossy(), "::keel/node.conf"],
    );
    let mut args = direct_boot(&image("initramfs", "image"), "");
    args.extend(
        [
            "-drive",
            &format!("file={img_s},if=virtio,format=raw,readonly=on"),
        ]
        .map(String::from),
    );
    let mut vm = Vm::start(&args);
    vm.wait_for("keel: config disk /dev/vda (vfat, KEELCFG)", BOOT_DEADLINE);
    vm.wait_for("keel: hostname from-disk", BOOT_DEADLINE);
    vm.wait_for("(configured from disk)", BOOT_DEADLINE);
    vm.wait_for("keel: powering off", BOOT_DEADLINE);
    assert!(vm.wait_exit(BOOT_DEADLINE).success());
}

#[test]
fn config_cdrom_iso9660_is_read_after_the_storage_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree/keel");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(
        tree.join("node.conf"),
        format!("name=from-cdrom\nserver=https://10.0.2.100:9443\ntoken={TOKEN}\nca-hash={CA_HASH}\n"),
    )
    .unwrap();
    let iso = dir.path().join("cfg.iso");
    let st = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "KEELCFG", "-o"])
        .arg(&iso)
        .arg(dir.path().join("tree"))
        .status()
        .expect("xorriso runs");
    assert!(st.success(), "xorriso failed");
    let mut args = direct_boot(&image("initramfs", "image"), "");
    // An IDE CD-ROM: found only once ata_piix and sr_mod are loaded, after the network.
    args.extend(
        [
            "-drive",
            &format!("file={},if=ide,media=cdrom,readonly=on", iso.display()),
        ]
        .map(String::from),
    );
    let mut vm = Vm::start(&args);
    vm.wait_for("keel: config disk /dev/sr0 (iso9660, KEELCFG)", BOOT_DEADLINE);
    vm.wait_for("keel: hostname from-cdrom", BOOT_DEADLINE);
    vm.wait_for("(configured from disk)", BOOT_DEADLINE);
    vm.wait_for("keel: powering off", BOOT_DEADLINE);
    assert!(vm.wait_exit(BOOT_DEADLINE).success());
}

#[test]
fn iso_with_patched_config_boots_under_bios() {
    let base = image("keel-node.iso", "iso");
    let size = std::fs::metadata(&base).unwrap().len();
    assert!(size <= 25 * 1024 * 1024, "the ISO is {size} bytes, over 25 MiB");
    let dir = tempfile::tempdir().unwrap();
    let conf = format!("server=https://10.0.2.100:9443\ntoken={TOKEN}\nca-hash={CA_HASH}\nname=iso-node\n");
    let archive = newc_archive(&[("etc/keel/node.conf", conf.as_bytes())]);
    let iso = dir.path().join("node-cluster.iso");
    std::fs::write(&iso, patch_iso_config(&std::fs::read(&base).unwrap(), &archive)).unwrap();
    let args: Vec<String> = [
        "-cdrom",
        &iso.to_string_lossy(),
        "-netdev",
        "user,id=u0,restrict=on",
        "-device",
        "virtio-net-pci,netdev=u0",
    ]
    .map(String::from)
    .to_vec();
    let mut vm = Vm::start(&args);
    let init = vm.wait_for("keel: init started", ISO_DEADLINE);
    vm.wait_for("keel: rootfs read-only: ok", ISO_DEADLINE);
    vm.wait_for("keel: hostname iso-node", ISO_DEADLINE);
    vm.wait_for(
        "keel: joining https://10.0.2.100:9443 (configured from archive)",
        ISO_DEADLINE,
    );
    eprintln!("BIOS ISO: QEMU start → init {init:?}");
}

#[test]
fn iso_boots_under_uefi() {
    let iso = image("keel-node.iso", "iso");
    let code = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
    let vars_src = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
    assert!(
        code.is_file() && vars_src.is_file(),
        "OVMF missing (apt-get install ovmf)"
    );
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("OVMF_VARS_4M.fd");
    std::fs::copy(vars_src, &vars).unwrap();
    let args: Vec<String> = [
        "-machine",
        "q35",
        "-drive",
        &format!("if=pflash,format=raw,readonly=on,file={}", code.display()),
        "-drive",
        &format!("if=pflash,format=raw,file={}", vars.display()),
        "-cdrom",
        &iso.to_string_lossy(),
        "-netdev",
        "user,id=u0,restrict=on",
        "-device",
        "virtio-net-pci,netdev=u0",
    ]
    .map(String::from)
    .to_vec();
    let mut vm = Vm::start(&args);
    let init = vm.wait_for("keel: init started", ISO_DEADLINE);
    vm.wait_for("keel: rootfs read-only: ok", ISO_DEADLINE);
    eprintln!("UEFI ISO: QEMU start → init {init:?}");
}
