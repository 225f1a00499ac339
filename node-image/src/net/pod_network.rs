//! The node's pod network, flannel-shaped: a bridge `cni0` holding the first address of the
//! node's pod CIDR (every pod's gateway), the VXLAN overlay to the other nodes
//! ([`super::overlay`]), egress masquerade ([`super::masquerade`]), forwarding sysctls — and,
//! per pod sandbox, a veth pair from the bridge into the pod's network namespace
//! ([`NodeNet::attach`] / [`NodeNet::detach`]).
//!
//! Everything here is synchronous netlink in the calling thread's network namespace and
//! idempotent: [`NodeNet::apply`] is run again on every peer change and periodically, and after
//! an agent restart it finds the devices in place and changes nothing. Pod addresses live on
//! disk ([`super::pod_ipam`]), so a restarted agent neither loses nor reuses them.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::cidr::Cidr;
use super::masquerade;
use super::nlsock::in_netns;
use super::overlay::{self, Peer, Underlay};
use super::pod_ipam::{IpamError, PodIpam};
use super::rtnl::Rtnl;

/// The bridge every pod's veth hangs off.
pub const BRIDGE: &str = "cni0";
/// The pod's end of its veth pair.
pub const POD_INTERFACE: &str = "eth0";
/// Host ends of pod veths are `veth` + 8 hex digits of a hash of the pod uid.
const VETH_PREFIX: &str = "veth";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the pod network is not up yet (no pod CIDR from the control plane, or setting it up failed)")]
    NotReady,
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("no IPv4 address to carry the overlay{0}")]
    NoUnderlay(String),
}

/// Wraps an io error with what was being done.
pub(crate) trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, NetError>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, NetError> {
        self.map_err(|source| NetError::Netlink { what: what(), source })
    }
}

/// A pod's place on the network, for its status (`podIP`) and its containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIp {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// The host end of the pod's veth pair.
    pub host_veth: String,
}

/// One node's network settings.
#[derive(Clone, Debug)]
pub struct NodeNet {
    /// Every pod of the cluster (`10.244.0.0/16`): not masqueraded among themselves.
    pub cluster: Cidr,
    /// This node's pod range (`10.244.N.0/24`).
    pub pod_cidr: Cidr,
    pub underlay: Underlay,
    /// Where pod IP allocations are kept (`/var/lib/keel/ipam`).
    pub ipam_root: PathBuf,
}

/// True for the interfaces the pod network creates (not the node's own addresses).
pub fn is_pod_interface(name: &str) -> bool {
    name == BRIDGE || name == overlay::DEVICE || name.starts_with(VETH_PREFIX)
}

/// The host end's name for pod `uid`: FNV-1a, so it is the same after an agent restart.
pub fn veth_name(uid: &str) -> String {
    let h = uid.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{VETH_PREFIX}{h:08x}")
}

/// The NIC and address VXLAN should use: the one holding `preferred` if given and present,
/// else the first IPv4 address (in interface order) outside the pod network.
pub fn find_underlay(preferred: Option<Ipv4Addr>, cluster: Cidr) -> Result<Underlay, NetError> {
    let mut rtnl = Rtnl::open().ctx(|| "opening rtnetlink".into())?;
    let links = rtnl.links().ctx(|| "listing links".into())?;
    let mut addrs = rtnl.addrs().ctx(|| "listing addresses".into())?;
    addrs.sort_by_key(|(index, _, _)| *index);
    let usable = |index: i32, ip: Ipv4Addr| {
        let link = links.iter().find(|l| l.index == index)?;
        let ok = !ip.is_loopback() && !cluster.contains(ip) && !is_pod_interface(&link.name);
        ok.then_some(Underlay {
            ifindex: index,
            address: ip,
            mtu: if link.mtu == 0 { 1500 } else { link.mtu },
        })
    };
    let pick = preferred
        .and_then(|p| addrs.iter().find(|(_, ip, _)| *ip == p))
        .and_then(|(i, ip, _)| usable(*i, *ip))
        .or_else(|| addrs.iter().find_map(|(i, ip, _)| usable(*i, *ip)));
    pick.ok_or_else(|| NetError::NoUnderlay(preferred.map(|p| format!(" (wanted {p})")).unwrap_or_default()))
}

/// Writes a sysctl; a missing one (bridge netfilter not loaded) is not an error.
fn sysctl(key: &str, value: &str) -> io::Result<()> {
    match std::fs::write(Path::new("/proc/sys").join(key), value) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl NodeNet {
    /// MTU of the bridge and pod veths: what fits in a VXLAN packet on the underlay.
    pub fn pod_mtu(&self) -> u32 {
        self.underlay.mtu.saturating_sub(overlay::OVERHEAD)
    }

    /// The bridge's (gateway's) address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.pod_cidr.nth(1).unwrap_or(self.pod_cidr.network)
    }

    /// Brings the node's side up and makes the overlay match `peers`. Safe to repeat.
    pub fn apply(&self, peers: &[Peer]) -> Result<(), NetError> {
        sysctl("net/ipv4/ip_forward", "1").ctx(|| "enabling IPv4 forwarding".into())?;
        // Bridged pod traffic through the IP hooks (Services on the same node need it).
        let _ = sysctl("net/bridge/bridge-nf-call-iptables", "1");
        let mut rtnl = Rtnl::open().ctx(|| "opening rtnetlink".into())?;

        rtnl.create_bridge(BRIDGE)
            .ctx(|| format!("creating bridge {BRIDGE}"))?;
        let br = rtnl
            .link(BRIDGE)
            .ctx(|| format!("looking up {BRIDGE}"))?
            .ok_or(NetError::NotReady)?;
        rtnl.set_link(br.index, Some(self.pod_mtu()), None)
            .ctx(|| format!("setting {BRIDGE} up"))?;
        rtnl.add_addr(br.index, self.gateway(), self.pod_cidr.prefix)
            .ctx(|| format!("giving {BRIDGE} {}/{}", self.gateway(), self.pod_cidr.prefix))?;

        let vx = overlay::ensure_device(&mut rtnl, &self.underlay, self.pod_cidr)
            .ctx(|| format!("setting up VXLAN device {}", overlay::DEVICE))?;
        masquerade::apply(self.cluster).ctx(|| "installing the egress masquerade (nftables)".into())?;
        overlay::sync_peers(&mut rtnl, vx, self.cluster, peers)
            .ctx(|| format!("routing to {} peer nodes", peers.len()))?;
        Ok(())
    }

    fn ipam(&self) -> Result<PodIpam, NetError> {
        Ok(PodIpam::open(&self.ipam_root, self.pod_cidr)?)
    }

    /// Gives the pod with `uid` an address and a veth pair from the bridge into the network
    /// namespace at `netns` (`/proc/PID/ns/net` of its sandbox): `eth0` with the address and a
    /// default route via the bridge. Attaching an attached pod again rebuilds its veth and keeps
    /// its address.
    pub fn attach(&self, netns: &Path, uid: &str) -> Result<PodIp, NetError> {
        let ip = self.ipam()?.allocate(uid)?;
        let host = veth_name(uid);
        let ns = File::open(netns).ctx(|| format!("opening network namespace {}", netns.display()))?;
        let mut rtnl = Rtnl::open().ctx(|| "opening rtnetlink".into())?;
        let br = rtnl
            .link(BRIDGE)
            .ctx(|| format!("looking up {BRIDGE}"))?
            .ok_or(NetError::NotReady)?;
        if let Some(old) = rtnl.link(&host).ctx(|| format!("looking up {host}"))? {
            rtnl.delete_link(old.index)
                .ctx(|| format!("removing the old {host}"))?;
        }
        rtnl.create_veth(&host, POD_INTERFACE, ns.as_raw_fd(), self.pod_mtu())
            .ctx(|| format!("creating veth {host} into {}", netns.display()))?;
        let link = rtnl
            .link(&host)
            .ctx(|| format!("looking up {host}"))?
            .ok_or(NetError::NotReady)?;
        rtnl.set_link(link.index, None, Some(br.index))
            .ctx(|| format!("attaching {host} to {BRIDGE}"))?;
        rtnl.set_hairpin(link.index)
            .ctx(|| format!("hairpin mode on {host}"))?;

        let (prefix, gateway) = (self.pod_cidr.prefix, self.gateway());
        in_netns(netns, move || {
            let mut r = Rtnl::open()?;
            if let Some(lo) = r.link("lo")? {
                r.set_link(lo.index, None, None)?;
            }
            let eth = r
                .link(POD_INTERFACE)?
                .ok_or_else(|| io::Error::other("eth0 missing in the pod"))?;
            r.add_addr(eth.index, ip, prefix)?;
            r.set_link(eth.index, None, None)?;
            r.replace_route(Ipv4Addr::UNSPECIFIED, 0, eth.index, Some(gateway), None)
        })
        .ctx(|| format!("configuring {POD_INTERFACE} in {}", netns.display()))?;
        Ok(PodIp {
            ip,
            prefix,
            gateway,
            host_veth: host,
        })
    }

    /// Removes the pod's veth (if the sandbox has not taken it along already) and frees its
    /// address. Detaching twice is fine.
    pub fn detach(&self, uid: &str) -> Result<Option<Ipv4Addr>, NetError> {
        let host = veth_name(uid);
        let mut rtnl = Rtnl::open().ctx(|| "opening rtnetlink".into())?;
        if let Some(l) = rtnl.link(&host).ctx(|| format!("looking up {host}"))? {
            rtnl.delete_link(l.index).ctx(|| format!("removing {host}"))?;
        }
        Ok(self.ipam()?.release(uid)?)
    }

    /// Frees the addresses of every pod not in `live` (pods that went away while the agent was
    /// down); returns how many.
    #[allow(dead_code)] // for the pod manager when it re-adopts its pods after a restart
    pub fn release_all_but(&self, live: &[&str]) -> Result<usize, NetError> {
        let ipam = self.ipam()?;
        let mut n = 0;
        for (_, uid) in ipam.allocations()? {
            if !live.contains(&uid.as_str()) {
                self.detach(&uid)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_are_stable() {
        let a = veth_name("0b1c2d3e-aaaa-bbbb-cccc-123456789abc");
        assert_eq!(a.len(), 12);
        assert!(a.len() < 16, "IFNAMSIZ");
        assert_eq!(a, veth_name("0b1c2d3e-aaaa-bbbb-cccc-123456789abc"));
        assert_ne!(a, veth_name("0b1c2d3e-aaaa-bbbb-cccc-123456789abd"));
        assert!(is_pod_interface(&a));
        assert!(is_pod_interface("cni0") && is_pod_interface("keel.1"));
        assert!(!is_pod_interface("eth1"));
    }
}
