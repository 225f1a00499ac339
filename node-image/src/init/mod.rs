//! PID 1: brings the node up, then supervises the agent. It must never panic or exit (either
//! would panic the kernel), so every step reports its error on the console and boot continues
//! where it can; [`main`] wraps everything in `catch_unwind` as a last resort.
//!
//! The boot, in order, each phase printed with its time since power-on:
//!
//! 1. /dev, /proc, /sys, the console, and the root switched to a bind mount of the initramfs
//!    ([`mounts`]);
//! 2. cgroup2, devpts, tmpfs on /run /tmp /var, `/` read-only;
//! 3. network drivers by coldplug (PCI network/virtio modaliases), entropy from virtio-rng;
//! 4. configuration ([`sources`]): kernel command line, appended archive, config disk, guestinfo;
//! 5. network ([`crate::net`]): loopback, NIC 0 by DHCP or static, NIC 1 `keel.ip2`, others up;
//! 6. storage drivers (before the agent only when the node cannot join yet: a config disk may
//!    sit behind them);
//! 7. hostname, /etc/hosts, resolv.conf, clock (RTC, SNTP), `/run/keel/node.json`, the summary
//!    or the how-to-join text;
//! 8. the agent starts (it can join while the rest loads);
//! 9. the remaining modules (`/etc/keel/modules`), sysctls, [`MODULES_READY`], the read-only
//!    self-check;
//! 10. the agent, supervised ([`supervise`]) until poweroff or reboot.
//!
//! Kernel switches for PID 1 itself: `keel.selftest=kill-agent` kills the agent once when it
//! first connects (tests watch PID 1 restart it); `keel.selftest=kill-agent-on-request` kills it
//! whenever it asks (a pod annotated `keel.dev/selftest-kill-agent`, once per value);
//! `keel.selftest=poweroff` powers off once the agent has been started (boot tests);
//! `keel.nic=none` skips network setup.

pub mod clock;
pub mod console;
pub mod modules;
pub mod mounts;
mod network;
pub mod sources;
pub mod supervise;

use crate::config::{NodeConfig, NODE_CONFIG_PATH};
use crate::net;
use crate::say;
use crate::sys::{self, PowerAction};
use console::phase;
use network::{apply_late_config, bring_up_network, LeaseTimer, NetResult};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

pub use modules::modprobe_main;
pub use sources::guestinfo_main;

/// `/init selfcheck pivot`: the pivot_root check, run by PID 1 in a child process so its own
/// mount namespace stays untouched. Exit code 0 when pivot_root works.
pub fn selfcheck_main(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("pivot") => match mounts::pivot_root_check() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pivot_root check: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: keel-node selfcheck pivot");
            ExitCode::from(2)
        }
    }
}

/// Created once every module of `/etc/keel/modules` is loaded and the sysctls are set (the agent
/// starts before that and waits for it before it builds the pod network).
pub const MODULES_READY: &str = "/run/keel/modules.ready";

pub fn main() -> ExitCode {
    if std::process::id() != 1 {
        eprintln!("keel-node init: must run as PID 1 (the kernel's /init)");
        return ExitCode::from(2);
    }
    let action = match std::panic::catch_unwind(boot_and_supervise) {
        Ok(a) => a,
        Err(_) => {
            say!("PID 1 caught a panic; rebooting in 10 s");
            std::thread::sleep(Duration::from_secs(10));
            PowerAction::Reboot
        }
    };
    sys::sync();
    let e = sys::reboot(action);
    say!("reboot(2) failed: {e}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn boot_and_supervise() -> PowerAction {
    let errors = mounts::mount_kernel_fs();
    if let Err(e) = console::open_console() {
        // Nowhere to print it but the kernel log.
        let _ = std::fs::write("/dev/kmsg", format!("keel: opening /dev/console: {e}\n"));
    }
    for e in errors {
        say!("{e}");
    }
    if let Err(e) = mounts::switch_root() {
        say!("switching the root failed: {e}; continuing on the initramfs (writable, no pivot_root)");
    }
    console::open_mirrors();
    let _ = sys::disable_ctrl_alt_del();
    for e in mounts::mount_runtime_fs() {
        say!("{e}");
    }
    phase("init", &format!("init started ({})", os_version()));

    // Drivers for the hardware present, then entropy (virtio-rng is among them).
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let idx = match modules::Index::load_running() {
        Ok(mut idx) => {
            idx.verbose = cmdline.split_whitespace().any(|w| w == "keel.debug");
            Some(idx)
        }
        Err(e) => {
            say!("module index: {e}");
            None
        }
    };
    let mut loaded = 0;
    if let Some(idx) = &idx {
        let _ = std::fs::write("/proc/sys/kernel/modprobe", "/sbin/modprobe");
        loaded += modules::coldplug(idx, "pci", modules::Pass::Network);
        loaded += modules::coldplug(idx, "virtio", modules::Pass::Network);
        phase("drivers", &format!("network drivers loaded ({loaded})"));
    } else {
        phase("drivers", "no module index: no drivers loaded");
    }
    seed_entropy();

    let empty = modules::Index::default();
    let mut cfg = sources::gather(&cmdline, idx.as_ref().unwrap_or(&empty));
    let want_net = !cmdline.split_whitespace().any(|w| w == "keel.nic=none");
    let mut net_result = NetResult::default();
    if want_net {
        net_result = bring_up_network(&mut cfg);
    }
    let mut lease_timer = net_result.lease;

    // Storage controllers probe slowly under emulation, so they load after the network, and
    // after the agent starts when the node already knows how to join (a config disk on them
    // can then only add lower-ranked settings, which a configured node does not wait for).
    let mut storage_done = false;
    if let (Some(idx), false) = (&idx, cfg.can_join()) {
        loaded += load_storage(idx, &mut cfg);
        storage_done = true;
    }

    let primary = cfg.interfaces.first().cloned();
    let name = cfg
        .name
        .clone()
        .or(net_result.fallback_name)
        .unwrap_or_else(|| "keel".into());
    cfg.name = Some(name.clone());
    if let Err(e) = sys::sethostname(&name) {
        say!("sethostname {name}: {e}");
    }
    let _ = std::fs::write("/run/hostname", format!("{name}\n"));
    let addr = primary
        .as_ref()
        .and_then(|i| i.ipv4.as_deref())
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse::<Ipv4Addr>().ok());
    if let Err(e) = net::write_hosts(&name, addr) {
        say!("/run/hosts: {e}");
    }
    phase("hostname", &format!("hostname {name}"));
    say!("{}", clock::from_rtc());
    let ntp: Vec<Ipv4Addr> = cfg
        .ntp
        .iter()
        .copied()
        .chain(
            lease_timer
                .as_ref()
                .and_then(|l: &LeaseTimer| l.lease.as_ref().map(|l| l.ntp.clone()))
                .unwrap_or_default(),
        )
        .collect();
    if !ntp.is_empty() {
        match clock::sntp(&ntp) {
            Ok(s) => phase("clock", &format!("clock set by SNTP from {s}")),
            Err(e) => say!("SNTP: {e}"),
        }
    }
    cfg.boot_phases = console::phases();
    write_node_config(&cfg);
    print_summary(&cfg);

    let selftest = cmdline.split_whitespace().any(|w| w == "keel.selftest=poweroff");
    let mut sup = match supervise::Supervisor::new(NODE_CONFIG_PATH) {
        Ok(s) => s,
        Err(e) => {
            say!("cannot supervise ({e}); the node stays up without an agent");
            loop {
                while let Ok(Some(_)) = sys::reap_one() {}
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    if cmdline
        .split_whitespace()
        .any(|w| w == "keel.selftest=kill-agent")
    {
        sup.kill_agent_once_connected();
    }
    if cmdline
        .split_whitespace()
        .any(|w| w == "keel.selftest=kill-agent-on-request")
    {
        sup.kill_agent_on_request();
    }

    // The agent starts joining now; the datapath modules load meanwhile (anything it needs
    // sooner is autoloaded through /sbin/modprobe), then MODULES_READY tells it they are in.
    phase("agent", "starting the agent");
    sup.start_agent();

    if let Some(idx) = &idx {
        if !storage_done {
            loaded += load_storage(idx, &mut cfg);
        }
        let list = std::fs::read_to_string("/etc/keel/modules").unwrap_or_default();
        for name in list.split_whitespace() {
            match idx.modprobe(name) {
                Ok(n) => loaded += n,
                Err(modules::ModuleError::Load { source, .. })
                    if source.raw_os_error() == Some(libc::ENODEV) => {}
                Err(e) => say!("module {e}"),
            }
        }
        phase("modules", &format!("modules loaded ({loaded})"));
    }
    set_sysctls();
    sup.watch_power_buttons();
    if let Err(e) = std::fs::write(MODULES_READY, b"") {
        say!("{MODULES_READY}: {e}");
    }
    cfg.boot_phases = console::phases();
    write_node_config(&cfg);

    match mounts::root_is_read_only() {
        Ok(()) => say!("rootfs read-only: ok"),
        Err(e) => say!("rootfs read-only: FAILED: {e}"),
    }
    // Waits for this one child only; the agent's exit, if any, is reaped by the loop.
    let pivot = std::process::Command::new("/init")
        .args(["selfcheck", "pivot"])
        .status();
    match pivot {
        Ok(st) if st.success() => say!("pivot_root: ok"),
        Ok(st) => say!("pivot_root: FAILED ({st}); containers will not start"),
        Err(e) => say!("pivot_root: FAILED to run the check: {e}"),
    }
    let action = match lease_timer.as_mut() {
        Some(t) => sup.run(&mut [t], selftest),
        None => sup.run(&mut [], selftest),
    };
    // The self-test only proves the boot; it does not wait long for an agent that ignores SIGTERM.
    let grace = if selftest {
        Duration::from_secs(3)
    } else {
        supervise::STOP_GRACE
    };
    sup.shutdown(action, grace)
}

fn os_version() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| format!("Keel {}", env!("CARGO_PKG_VERSION")))
}

/// Makes sure getrandom will not block: if the CRNG is not ready after virtio-rng loaded, feed
/// it from /dev/hwrng directly.
fn seed_entropy() {
    if sys::crng_ready() {
        phase("entropy", "entropy: ready");
        return;
    }
    let fed = (|| -> std::io::Result<()> {
        use std::io::Read;
        let mut buf = [0u8; 64];
        std::fs::File::open("/dev/hwrng")?.read_exact(&mut buf)?;
        let random = std::fs::OpenOptions::new().write(true).open("/dev/urandom")?;
        sys::add_entropy(&random, &buf, 512)
    })();
    match fed {
        Ok(()) if sys::crng_ready() => phase("entropy", "entropy: seeded from the hardware RNG"),
        Ok(()) => say!("entropy: fed the hardware RNG, CRNG not ready yet"),
        Err(e) => say!("entropy: no hardware RNG ({e}); getrandom may block until the kernel gathers enough"),
    }
}

fn set_sysctls() {
    for (key, value) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/bridge/bridge-nf-call-iptables", "1"),
        ("net/bridge/bridge-nf-call-ip6tables", "1"),
    ] {
        if let Err(e) = std::fs::write(format!("/proc/sys/{key}"), value) {
            say!("sysctl {}={value}: {e}", key.replace('/', "."));
        }
    }
}

/// Storage controller drivers (PCI coldplug, second pass), SCSI disk/CD-ROM drivers, and a config
/// disk that only appears on them. Returns how many modules were loaded.
fn load_storage(idx: &modules::Index, cfg: &mut NodeConfig) -> usize {
    let mut loaded = modules::coldplug(idx, "pci", modules::Pass::Rest);
    if std::fs::read_dir("/sys/class/scsi_host").is_ok_and(|mut d| d.next().is_some()) {
        for m in ["sd_mod", "sr_mod"] {
            loaded += idx.modprobe(m).unwrap_or(0);
        }
    }
    if !cfg.sources.iter().any(|s| s == "disk") {
        if let Some(disk) = sources::late_disk(idx) {
            apply_late_config(cfg, disk);
        }
    }
    loaded
}

fn write_node_config(cfg: &NodeConfig) {
    let r = serde_json::to_vec_pretty(cfg)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            std::fs::create_dir_all("/run/keel")?;
            let tmp = format!("{NODE_CONFIG_PATH}.tmp");
            std::fs::write(&tmp, json)?;
            std::fs::rename(&tmp, NODE_CONFIG_PATH)
        });
    if let Err(e) = r {
        say!("writing {NODE_CONFIG_PATH}: {e}");
    }
}

fn print_summary(cfg: &NodeConfig) {
    let mut s = format!("node {}", cfg.name.as_deref().unwrap_or("?"));
    for i in &cfg.interfaces {
        s.push_str(&format!(
            "\n  {} {} {}",
            i.name,
            i.mac,
            i.ipv4.as_deref().unwrap_or("(no address)")
        ));
    }
    say!("{s}");
    if cfg.can_join() {
        say!(
            "joining {} (configured from {})",
            cfg.server.as_deref().unwrap_or("?"),
            cfg.sources.join(", ")
        );
        return;
    }
    let addr = cfg
        .interfaces
        .iter()
        .find_map(|i| i.ipv4.clone())
        .unwrap_or_else(|| "(no address yet)".into());
    say!(
        "this node is not configured to join a cluster. To join it:\n\
         1. on the control plane: keel-server token create\n\
         2. boot this node with the kernel arguments\n\
         \x20    keel.server=https://<control-plane>:<port>\n\
         \x20    keel.token=<token> keel.ca-hash=sha256:<hash>\n\
         \x20  or put them (without `keel.`) in keel/node.conf on a\n\
         \x20  disk labelled KEELCFG, or in VMware guestinfo.keel.*,\n\
         \x20  or boot an ISO made by `keel-server node-iso`.\n\
         Node address: {addr}. Waiting."
    );
}
