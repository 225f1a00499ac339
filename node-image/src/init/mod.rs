//! PID 1: brings the node up, then supervises the agent. It must never panic or exit (either
//! would panic the kernel), so every step reports its error on the console and boot continues
//! where it can; [`main`] wraps everything in `catch_unwind` as a last resort.
//!
//! The boot, in order, each phase printed with its time since power-on:
//!
//! 1. stage 1 (on the initramfs): /dev, /proc, /sys, console, copy the image into a tmpfs and
//!    re-exec there ([`mounts`]);
//! 2. stage 2: cgroup2, devpts, tmpfs on /run /tmp /var, `/` read-only;
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
//! Kernel switches for PID 1 itself: `keel.selftest=poweroff` powers off once the agent has been
//! started (boot tests); `keel.nic=none` skips network setup.

pub mod clock;
pub mod console;
pub mod modules;
pub mod mounts;
pub mod sources;
pub mod supervise;

use crate::config::{Interface, NodeConfig, NODE_CONFIG_PATH};
use crate::net::{self, dhcp, netlink::Rtnl, Nic};
use crate::say;
use crate::sys::{self, PowerAction};
use console::phase;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub use modules::modprobe_main;

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

/// How long boot waits for a DHCP lease before going on without an address (the supervision
/// loop keeps asking).
const DHCP_BOOT_TIMEOUT: Duration = Duration::from_secs(10);

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
    let stage2 = std::env::args().any(|a| a == mounts::STAGE2_ARG);
    if !stage2 {
        let errors = mounts::mount_kernel_fs();
        if let Err(e) = console::open_console() {
            // Nowhere to print it but the kernel log.
            let _ = std::fs::write("/dev/kmsg", format!("keel: opening /dev/console: {e}\n"));
        }
        for e in errors {
            say!("{e}");
        }
        say!("stage 1: moving the image into a tmpfs root");
        let e = mounts::switch_to_tmpfs_root();
        say!("switching to a tmpfs root failed: {e}; continuing on the initramfs (writable)");
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

/// Keeps NIC 0's DHCP lease from the supervision loop: renews it at half its lifetime, or, when
/// boot went on without one, keeps asking for one every 30 s.
struct LeaseTimer {
    client: dhcp::Client,
    nic: Nic,
    lease: Option<dhcp::Lease>,
    next: Instant,
}

const DHCP_RETRY: Duration = Duration::from_secs(30);

fn half_life(lease: &dhcp::Lease) -> Instant {
    Instant::now() + Duration::from_secs(u64::from(lease.lease_secs.max(60) / 2))
}

/// Puts a lease on the interface: address, default route, resolv.conf.
fn apply_lease(rtnl: &mut Rtnl, nic: &Nic, lease: &dhcp::Lease) -> std::io::Result<()> {
    rtnl.add_addr(nic.ifindex, lease.address, lease.prefix_len)?;
    if let Some(gw) = lease.router {
        let onlink = !net::in_subnet(lease.address, lease.prefix_len, gw);
        rtnl.default_route(nic.ifindex, gw, lease.address, onlink, true)?;
    }
    Ok(())
}

impl LeaseTimer {
    fn new(client: dhcp::Client, nic: Nic, lease: Option<dhcp::Lease>) -> LeaseTimer {
        let next = lease.as_ref().map_or(Instant::now() + DHCP_RETRY, half_life);
        LeaseTimer {
            client,
            nic,
            lease,
            next,
        }
    }
}

impl supervise::Timer for LeaseTimer {
    fn due(&self) -> Option<Instant> {
        Some(self.next)
    }

    fn fire(&mut self) {
        let result = match &self.lease {
            Some(old) => self.client.renew(old, Duration::from_secs(5)),
            None => self.client.obtain(Duration::from_secs(5)),
        };
        match result {
            Ok(lease) => {
                let changed = self.lease.as_ref().map(|l| l.address) != Some(lease.address);
                if changed {
                    let applied = Rtnl::open().and_then(|mut rtnl| apply_lease(&mut rtnl, &self.nic, &lease));
                    match applied {
                        Ok(()) => say!(
                            "network up: {} {}/{} via DHCP",
                            self.nic.name,
                            lease.address,
                            lease.prefix_len
                        ),
                        Err(e) => say!("network: applying the DHCP lease on {}: {e}", self.nic.name),
                    }
                    if let Err(e) = net::write_resolv_conf(&lease.dns, lease.domain.as_deref()) {
                        say!("/run/resolv.conf: {e}");
                    }
                }
                self.next = half_life(&lease);
                self.lease = Some(lease);
            }
            Err(e) => {
                if self.lease.is_some() {
                    say!(
                        "DHCP renewal on {}: {e}; retrying in {DHCP_RETRY:?}",
                        self.nic.name
                    );
                }
                self.next = Instant::now() + DHCP_RETRY;
            }
        }
    }
}

fn iface(nic: &Nic, ipv4: Option<String>, gateway: Option<Ipv4Addr>, method: &str) -> Interface {
    Interface {
        name: nic.name.clone(),
        mac: nic.mac_string(),
        ipv4,
        gateway,
        method: method.into(),
    }
}

/// What network setup found out.
#[derive(Default)]
struct NetResult {
    lease: Option<LeaseTimer>,
    /// The name to use when none is configured: DHCP's host name, else from NIC 0's MAC.
    fallback_name: Option<String>,
}

/// Loopback, NIC 0 (static or DHCP), NIC 1 (`keel.ip2`), the rest up. Fills `cfg.interfaces`
/// and writes resolv.conf.
fn bring_up_network(cfg: &mut NodeConfig) -> NetResult {
    let mut result = NetResult::default();
    let mut rtnl = match Rtnl::open() {
        Ok(r) => r,
        Err(e) => {
            say!("network: rtnetlink: {e}");
            return result;
        }
    };
    if let Some(lo) = net::loopback_index() {
        if let Err(e) = rtnl.link_up(lo) {
            say!("network: lo up: {e}");
        }
    }
    let nics = net::nics();
    for nic in &nics {
        if let Err(e) = rtnl.link_up(nic.ifindex) {
            say!("network: {} up: {e}", nic.name);
        }
    }
    let Some(nic0) = nics.first().cloned() else {
        say!("network: no Ethernet interface found");
        return result;
    };
    let mut timer = None;
    let mut dns = Vec::new();
    let mut domain = None;
    if let Some(ip) = cfg.static_ip.clone() {
        match net::apply_static(&mut rtnl, &nic0, &ip) {
            Ok(()) => {
                cfg.interfaces.push(iface(
                    &nic0,
                    Some(format!("{}/{}", ip.address, ip.prefix_len)),
                    ip.gateway,
                    "static",
                ));
                dns = ip.dns.clone();
            }
            Err(e) => {
                say!(
                    "network: {} static {}/{}: {e}",
                    nic0.name,
                    ip.address,
                    ip.prefix_len
                );
                cfg.interfaces.push(iface(&nic0, None, None, "static"));
            }
        }
    } else {
        match dhcp::Client::new(nic0.ifindex, nic0.mac, cfg.name.clone()) {
            Err(e) => {
                say!("network: DHCP on {}: {e}", nic0.name);
                cfg.interfaces.push(iface(&nic0, None, None, "dhcp"));
            }
            Ok(client) => match client.obtain(DHCP_BOOT_TIMEOUT) {
                Ok(lease) => {
                    if let Err(e) = apply_lease(&mut rtnl, &nic0, &lease) {
                        say!("network: applying the DHCP lease on {}: {e}", nic0.name);
                    }
                    phase(
                        "network",
                        &format!(
                            "network up: {} {}/{} via DHCP (gateway {})",
                            nic0.name,
                            lease.address,
                            lease.prefix_len,
                            lease.router.map_or("none".into(), |g| g.to_string())
                        ),
                    );
                    cfg.interfaces.push(iface(
                        &nic0,
                        Some(format!("{}/{}", lease.address, lease.prefix_len)),
                        lease.router,
                        "dhcp",
                    ));
                    dns = lease.dns.clone();
                    domain = lease.domain.clone();
                    result.fallback_name = lease
                        .hostname
                        .as_deref()
                        .map(|h| h.split('.').next().unwrap_or(h).to_ascii_lowercase())
                        .filter(|h| NodeConfig::default().set("name", h).is_ok());
                    timer = Some(LeaseTimer::new(client, nic0.clone(), Some(lease)));
                }
                Err(e) => {
                    say!(
                        "network: DHCP on {}: {e}; going on without an address, retrying every {DHCP_RETRY:?}",
                        nic0.name
                    );
                    cfg.interfaces.push(iface(&nic0, None, None, "dhcp"));
                    timer = Some(LeaseTimer::new(client, nic0.clone(), None));
                }
            },
        }
    }
    if let (Some(_), Some(i)) = (
        &cfg.static_ip,
        cfg.interfaces.first().and_then(|i| i.ipv4.clone()),
    ) {
        phase("network", &format!("network up: {} {i} (static)", nic0.name));
    }
    for (n, nic) in nics.iter().enumerate().skip(1) {
        match (n, cfg.static_ip2.clone()) {
            (1, Some(ip)) => match net::apply_static(&mut rtnl, nic, &ip) {
                Ok(()) => cfg.interfaces.push(iface(
                    nic,
                    Some(format!("{}/{}", ip.address, ip.prefix_len)),
                    ip.gateway,
                    "static",
                )),
                Err(e) => {
                    say!(
                        "network: {} static {}/{}: {e}",
                        nic.name,
                        ip.address,
                        ip.prefix_len
                    );
                    cfg.interfaces.push(iface(nic, None, None, "static"));
                }
            },
            _ => cfg.interfaces.push(iface(nic, None, None, "none")),
        }
    }
    if result.fallback_name.is_none() {
        result.fallback_name = Some(net::default_hostname(&nic0.mac));
    }
    if let Err(e) = net::write_resolv_conf(&dns, domain.as_deref()) {
        say!("/run/resolv.conf: {e}");
    }
    result.lease = timer;
    result
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

/// Merges a config disk found after the network came up. Its static addresses are applied now
/// unless a higher-ranked source already configured that NIC.
fn apply_late_config(cfg: &mut NodeConfig, disk: NodeConfig) {
    if disk.is_empty() {
        return;
    }
    let had_ip = cfg.static_ip.is_some();
    let had_ip2 = cfg.static_ip2.is_some();
    let (ip, ip2) = (disk.static_ip.clone(), disk.static_ip2.clone());
    cfg.sources.push("disk".into());
    cfg.fill_from(disk);
    let nics = net::nics();
    let Ok(mut rtnl) = Rtnl::open() else { return };
    for (slot, ip, had) in [(0usize, ip, had_ip), (1, ip2, had_ip2)] {
        let (Some(ip), false, Some(nic)) = (ip, had, nics.get(slot)) else {
            continue;
        };
        match net::apply_static(&mut rtnl, nic, &ip) {
            Ok(()) => {
                say!(
                    "config disk: {} {}/{} (static)",
                    nic.name,
                    ip.address,
                    ip.prefix_len
                );
                if let Some(i) = cfg.interfaces.get_mut(slot) {
                    i.ipv4 = Some(format!("{}/{}", ip.address, ip.prefix_len));
                    i.gateway = ip.gateway;
                    i.method = "static".into();
                }
                if slot == 0 && !ip.dns.is_empty() {
                    let _ = net::write_resolv_conf(&ip.dns, None);
                }
            }
            Err(e) => say!(
                "config disk: {} static {}/{}: {e}",
                nic.name,
                ip.address,
                ip.prefix_len
            ),
        }
    }
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
