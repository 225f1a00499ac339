//! One QEMU node of the lab: its identity and the QEMU command line that boots it.
//!
//! NIC 0 is QEMU user networking with `restrict=on`: the guest reaches nothing but the three
//! `guestfwd` openings at 10.0.2.100 (node gate 9443, API 6443, registry 5000), each served by a
//! `keel-lab relay` per connection; `hostfwd` maps the node's NodePorts 30000–30009 to loopback
//! ports of the host. NIC 1 joins the lab switch. The node learns its name, its NIC-1 address,
//! its join data and its registry mirror from the kernel command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::switch::frame::MacAddr;

/// The address the guest uses for everything on the host.
pub const HOST_ALIAS: &str = "10.0.2.100";
/// Guest-side ports of the openings at [`HOST_ALIAS`].
pub const GUEST_GATE_PORT: u16 = 9443;
pub const GUEST_API_PORT: u16 = 6443;
pub const GUEST_REGISTRY_PORT: u16 = 5000;
/// NodePorts forwarded to the host for every node.
pub const NODEPORTS: std::ops::RangeInclusive<u16> = 30000..=30009;

/// Who a node is; fixed for the life of the lab (a restarted node keeps all of it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeSpec {
    /// `keel-1`, `keel-2`, …
    pub name: String,
    /// 1-based.
    pub index: u8,
    /// NIC 1 (lab segment) address, `52:54:00:aa:00:0N`.
    pub l2_mac: String,
    /// NIC 1 address with prefix, `192.168.50.1N/24`.
    pub ip2: String,
    /// Guest NodePort → host loopback port.
    pub nodeports: BTreeMap<u16, u16>,
}

impl NodeSpec {
    /// The spec of node `index` (1-based), with host ports taken from `host_ports` (one per
    /// forwarded NodePort).
    pub fn new(index: u8, host_ports: &[u16]) -> NodeSpec {
        NodeSpec {
            name: format!("keel-{index}"),
            index,
            l2_mac: format!("52:54:00:aa:00:{index:02x}"),
            ip2: format!("192.168.50.{}/24", 10 + u16::from(index)),
            nodeports: NODEPORTS.zip(host_ports.iter().copied()).collect(),
        }
    }

    pub fn mac(&self) -> Option<MacAddr> {
        self.l2_mac.parse().ok()
    }

    /// NIC 0 gets a MAC of its own so the two NICs never share one.
    fn user_mac(&self) -> String {
        format!("52:54:00:00:00:{:02x}", self.index)
    }
}

/// Host-side endpoints and join data every node of one lab shares.
#[derive(Clone, Debug)]
pub struct NodeEnvironment {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The `keel-lab` binary QEMU runs as the relay.
    pub relay_bin: PathBuf,
    pub gate_port: u16,
    pub api_port: u16,
    pub registry_port: u16,
    pub switch_port: u16,
    pub token: String,
    pub ca_hash: String,
    pub memory_mb: u32,
    pub kvm: bool,
    /// Extra kernel arguments (`KEEL_KERNEL_ARGS`), appended last.
    pub extra_args: String,
}

/// The kernel command line of a node.
pub fn kernel_args(spec: &NodeSpec, env: &NodeEnvironment) -> String {
    let mut args = format!(
        "console=ttyS0 panic=-1 keel.server=https://{HOST_ALIAS}:{GUEST_GATE_PORT} keel.token={} \
         keel.ca-hash={} keel.name={} keel.ip2={} \
         keel.registry-mirror=docker.io=http://{HOST_ALIAS}:{GUEST_REGISTRY_PORT}",
        env.token, env.ca_hash, spec.name, spec.ip2
    );
    if !env.extra_args.trim().is_empty() {
        args.push(' ');
        args.push_str(env.extra_args.trim());
    }
    args
}

/// QEMU's option syntax: a comma inside a value is written twice.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// libslirp splits the `cmd:` string like a shell would, so quote the binary's path.
fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The QEMU command that boots `spec`, with its console written to `console`.
pub fn qemu_command(spec: &NodeSpec, env: &NodeEnvironment, console: &Path) -> Command {
    let relay = |port: u16| {
        format!(
            "cmd:{} relay 127.0.0.1 {port}",
            shell_quote(&env.relay_bin.to_string_lossy())
        )
    };
    let mut user = format!(
        "user,id=u0,restrict=on,\
         guestfwd=tcp:{HOST_ALIAS}:{GUEST_GATE_PORT}-{},\
         guestfwd=tcp:{HOST_ALIAS}:{GUEST_API_PORT}-{},\
         guestfwd=tcp:{HOST_ALIAS}:{GUEST_REGISTRY_PORT}-{}",
        qemu_escape(&relay(env.gate_port)),
        qemu_escape(&relay(env.api_port)),
        qemu_escape(&relay(env.registry_port)),
    );
    for (guest, host) in &spec.nodeports {
        user.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    let mut cmd = Command::new(&env.qemu);
    if env.kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg,tb-size=64"]);
    }
    cmd.arg("-m")
        .arg(env.memory_mb.to_string())
        .args(["-smp", "1", "-kernel"])
        .arg(&env.kernel)
        .arg("-initrd")
        .arg(&env.initrd)
        .arg("-append")
        .arg(kernel_args(spec, env))
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-device", "virtio-rng-pci", "-netdev"])
        .arg(user)
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=u0,mac={}", spec.user_mac()))
        .arg("-netdev")
        .arg(format!("socket,id=l2,connect=127.0.0.1:{}", env.switch_port))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=l2,mac={}", spec.l2_mac))
        .stdin(std::process::Stdio::null());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> NodeEnvironment {
        NodeEnvironment {
            qemu: "qemu-system-x86_64".into(),
            kernel: "/lab/out/vmlinux".into(),
            initrd: "/lab/out/initramfs".into(),
            relay_bin: "/work/my lab,1/keel-lab".into(),
            gate_port: 41001,
            api_port: 41002,
            registry_port: 41003,
            switch_port: 41004,
            token: "abcdef.0123456789abcdef".into(),
            ca_hash: "sha256:00ff".into(),
            memory_mb: 512,
            kvm: false,
            extra_args: String::new(),
        }
    }

    #[test]
    fn spec_follows_the_lab_plan() {
        let spec = NodeSpec::new(2, &(50000..50010).collect::<Vec<_>>());
        assert_eq!(spec.name, "keel-2");
        assert_eq!(spec.l2_mac, "52:54:00:aa:00:02");
        assert_eq!(spec.ip2, "192.168.50.12/24");
        assert_eq!(spec.nodeports.len(), 10);
        assert_eq!(spec.nodeports[&30000], 50000);
        assert_eq!(spec.nodeports[&30009], 50009);
        assert!(spec.mac().is_some());
    }

    #[test]
    fn command_line_carries_the_contract() {
        let spec = NodeSpec::new(1, &(50000..50010).collect::<Vec<_>>());
        let cmd = qemu_command(&spec, &env(), Path::new("/lab/console-keel-1.log"));
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let after = |flag: &str| -> Vec<&String> {
            args.windows(2).filter(|w| w[0] == flag).map(|w| &w[1]).collect()
        };
        assert_eq!(after("-accel"), [&"tcg,tb-size=64".to_string()]);
        let append = after("-append")[0];
        for part in [
            "console=ttyS0",
            "keel.server=https://10.0.2.100:9443",
            "keel.token=abcdef.0123456789abcdef",
            "keel.ca-hash=sha256:00ff",
            "keel.name=keel-1",
            "keel.ip2=192.168.50.11/24",
            "keel.registry-mirror=docker.io=http://10.0.2.100:5000",
        ] {
            assert!(
                append.split(' ').any(|w| w == part),
                "{part} missing from {append}"
            );
        }
        let netdevs = after("-netdev");
        let user = netdevs[0];
        assert!(user.starts_with("user,id=u0,restrict=on,"), "{user}");
        // The path with a space is quoted for libslirp, and its comma doubled for QEMU.
        assert!(
            user.contains(
                "guestfwd=tcp:10.0.2.100:9443-cmd:'/work/my lab,,1/keel-lab' relay 127.0.0.1 41001,"
            ),
            "{user}"
        );
        assert!(user.contains("guestfwd=tcp:10.0.2.100:6443-cmd:"), "{user}");
        assert!(user.contains("relay 127.0.0.1 41003"), "{user}");
        assert!(user.contains("hostfwd=tcp:127.0.0.1:50000-:30000"), "{user}");
        assert!(user.ends_with("hostfwd=tcp:127.0.0.1:50009-:30009"), "{user}");
        assert_eq!(netdevs[1], "socket,id=l2,connect=127.0.0.1:41004");
        assert!(after("-device").contains(&&"virtio-net-pci,netdev=l2,mac=52:54:00:aa:00:01".to_string()));
        assert!(after("-device").contains(&&"virtio-rng-pci".to_string()));
        assert_eq!(after("-serial")[0], "file:/lab/console-keel-1.log");
    }
}
