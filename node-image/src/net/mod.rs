//! The node's own network, as PID 1 sets it up at boot (pods and services are the agent's).
//!
//! * loopback up;
//! * NIC 0 (the first Ethernet device by kernel order): static from `keel.ip=` or DHCP;
//! * NIC 1: static from `keel.ip2=` (the lab's node-to-node segment) or just up;
//! * any further NICs: up, unaddressed.
//!
//! No external client binary: [`dhcp`] is our own DHCPv4 client, [`netlink`] our own rtnetlink
//! requests. `/etc/resolv.conf` and `/etc/hosts` are symlinks in the image to files under /run
//! that [`write_resolv_conf`] and [`write_hosts`] write.

pub mod dhcp;
pub mod netlink;

// The pod network (the agent's; see `pod_network` and `network_agent`).
pub mod cidr;
pub mod dns;
pub mod masquerade;
pub mod netpol;
#[cfg(test)]
mod netpol_netns_test;
pub mod network_agent;
mod nft;
pub mod nlmsg;
pub mod nlsock;
pub mod overlay;
pub mod pod_ipam;
pub mod pod_network;
#[cfg(test)]
mod pod_network_netns_test;
pub mod rtnl;
pub mod services;

use crate::config::StaticIp;
use std::fs;
use std::net::Ipv4Addr;

/// An Ethernet interface the kernel knows.
#[derive(Clone, Debug)]
pub struct Nic {
    pub name: String,
    pub ifindex: i32,
    pub mac: [u8; 6],
}

impl Nic {
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The physical Ethernet NICs, in kernel (ifindex) order.
pub fn nics() -> Vec<Nic> {
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut nics: Vec<Nic> = entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            // Physical devices only (a `device` link), of type Ethernet (ARPHRD_ETHER = 1).
            if !dir.join("device").exists() {
                return None;
            }
            if fs::read_to_string(dir.join("type")).ok()?.trim() != "1" {
                return None;
            }
            let ifindex = fs::read_to_string(dir.join("ifindex"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let mac = parse_mac(&fs::read_to_string(dir.join("address")).ok()?)?;
            Some(Nic { name, ifindex, mac })
        })
        .collect();
    nics.sort_by_key(|n| n.ifindex);
    nics
}

/// The loopback interface's index.
pub fn loopback_index() -> Option<i32> {
    fs::read_to_string("/sys/class/net/lo/ifindex")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// True when `gw` lies inside `addr/prefix`.
pub fn in_subnet(addr: Ipv4Addr, prefix: u8, gw: Ipv4Addr) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(prefix.min(32)));
    (u32::from(addr) & mask) == (u32::from(gw) & mask)
}

/// Applies a static configuration to `nic`.
pub fn apply_static(rtnl: &mut netlink::Rtnl, nic: &Nic, ip: &StaticIp) -> std::io::Result<()> {
    rtnl.add_addr(nic.ifindex, ip.address, ip.prefix_len)?;
    if let Some(gw) = ip.gateway {
        let onlink = !in_subnet(ip.address, ip.prefix_len, gw);
        rtnl.default_route(nic.ifindex, gw, ip.address, onlink, false)?;
    }
    Ok(())
}

/// Writes `/run/resolv.conf`.
pub fn write_resolv_conf(dns: &[Ipv4Addr], domain: Option<&str>) -> std::io::Result<()> {
    let mut s = String::from("# written by keel PID 1\n");
    if let Some(d) = domain {
        s.push_str(&format!("search {d}\n"));
    }
    for d in dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    fs::write("/run/resolv.conf", s)
}

/// Writes `/run/hosts`.
pub fn write_hosts(hostname: &str, addr: Option<Ipv4Addr>) -> std::io::Result<()> {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match addr {
        Some(a) => s.push_str(&format!("{a}\t{hostname}\n")),
        None => s.push_str(&format!("127.0.1.1\t{hostname}\n")),
    }
    fs::write("/run/hosts", s)
}

/// `keel-<last three MAC bytes>`, the name of a node nobody named.
pub fn default_hostname(mac: &[u8; 6]) -> String {
    format!("keel-{:02x}{:02x}{:02x}", mac[3], mac[4], mac[5])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_names() {
        let mac = parse_mac("52:54:00:ab:cd:ef\n").unwrap();
        assert_eq!(mac, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(parse_mac("52:54:00"), None);
        assert_eq!(default_hostname(&mac), "keel-abcdef");
    }

    #[test]
    fn subnets() {
        let a = Ipv4Addr::new(10, 0, 2, 15);
        assert!(in_subnet(a, 24, Ipv4Addr::new(10, 0, 2, 2)));
        assert!(!in_subnet(a, 24, Ipv4Addr::new(10, 0, 3, 1)));
        assert!(in_subnet(a, 0, Ipv4Addr::new(1, 2, 3, 4)));
        assert!(!in_subnet(a, 32, Ipv4Addr::new(10, 0, 2, 2)));
    }
}
