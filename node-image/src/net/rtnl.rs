//! The rtnetlink requests of the pod network: bridge, veth and VXLAN links, addresses, routes,
//! neighbours and FDB entries — create-or-replace where the kernel allows it, so that applying
//! the same state twice changes nothing — plus the dumps that let a reconcile remove what is no
//! longer wanted. Everything acts in the calling thread's network namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use super::nlmsg::{attr, attr_u32, Conn, Msg, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_BRPORT_MODE: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_VXLAN_ID: u16 = 1;
const IFLA_VXLAN_LINK: u16 = 3;
const IFLA_VXLAN_LOCAL: u16 = 4;
const IFLA_VXLAN_LEARNING: u16 = 7;
const IFLA_VXLAN_PORT: u16 = 15;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

const AF_BRIDGE: u8 = 7;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTNH_F_ONLINK: u32 = 4;
const NUD_PERMANENT: u16 = 0x80;
const NTF_SELF: u8 = 0x02;

pub type Mac = [u8; 6];

/// What the pod network needs to know about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub mac: Option<Mac>,
    pub kind: Option<String>,
    /// For VXLAN links: (VNI, local address, underlay ifindex).
    pub vxlan: Option<(u32, Option<Ipv4Addr>, u32)>,
}

/// A route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
}

/// A neighbour (ARP) entry or, for AF_BRIDGE, an FDB entry (`ip` = the remote VTEP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neigh {
    pub ifindex: i32,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<Mac>,
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn ndmsg(family: u8, ifindex: i32, state: u16, flags: u8) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = family;
    b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    b[8..10].copy_from_slice(&state.to_ne_bytes());
    b[10] = flags;
    b
}

fn ipv4(d: &[u8]) -> Option<Ipv4Addr> {
    let o: [u8; 4] = d.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

fn mac(d: &[u8]) -> Option<Mac> {
    d.get(..6)?.try_into().ok()
}

fn cstring(d: &[u8]) -> String {
    String::from_utf8_lossy(d.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

fn not_found(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH)
    )
}

fn parse_link(p: &[u8]) -> Option<Link> {
    let index = i32::from_ne_bytes(p.get(4..8)?.try_into().ok()?);
    let flags = u32::from_ne_bytes(p.get(8..12)?.try_into().ok()?);
    let a = p.get(16..)?;
    let info = attr(a, IFLA_LINKINFO);
    let kind = info.and_then(|i| attr(i, IFLA_INFO_KIND)).map(cstring);
    let vxlan = match (kind.as_deref(), info.and_then(|i| attr(i, IFLA_INFO_DATA))) {
        (Some("vxlan"), Some(d)) => Some((
            attr_u32(d, IFLA_VXLAN_ID).unwrap_or(0),
            attr(d, IFLA_VXLAN_LOCAL).and_then(ipv4),
            attr_u32(d, IFLA_VXLAN_LINK).unwrap_or(0),
        )),
        _ => None,
    };
    Some(Link {
        index,
        name: attr(a, IFLA_IFNAME).map(cstring).unwrap_or_default(),
        mtu: attr_u32(a, IFLA_MTU).unwrap_or(0),
        up: flags & libc::IFF_UP as u32 != 0,
        mac: attr(a, IFLA_ADDRESS).and_then(mac),
        kind,
        vxlan,
    })
}

/// An rtnetlink connection in the calling thread's network namespace.
pub struct Rtnl {
    conn: Conn,
}

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        Ok(Rtnl { conn: Conn::route()? })
    }

    // ---- links ----

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let m = Msg::new(RTM_GETLINK, 0)
            .fixed(&ifinfomsg(0, 0, 0))
            .str(IFLA_IFNAME, name);
        match self.conn.dump(m) {
            Ok(r) => Ok(r.first().and_then(|p| parse_link(p))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let m = Msg::new(RTM_GETLINK, NLM_F_DUMP).fixed(&ifinfomsg(0, 0, 0));
        Ok(self.conn.dump(m)?.iter().filter_map(|p| parse_link(p)).collect())
    }

    /// Creates a bridge unless one of that name exists.
    pub fn create_bridge(&mut self, name: &str) -> io::Result<()> {
        let m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
            .fixed(&ifinfomsg(0, 0, 0))
            .str(IFLA_IFNAME, name)
            .begin(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "bridge")
            .end();
        match self.conn.request(m) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Creates a VXLAN link without source-address learning (peers come from the control
    /// plane as static FDB entries).
    pub fn create_vxlan(
        &mut self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        underlay: i32,
        port: u16,
        address: Mac,
    ) -> io::Result<()> {
        let m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
            .fixed(&ifinfomsg(0, 0, 0))
            .str(IFLA_IFNAME, name)
            .attr(IFLA_ADDRESS, &address)
            .begin(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "vxlan")
            .begin(IFLA_INFO_DATA)
            .u32(IFLA_VXLAN_ID, vni)
            .attr(IFLA_VXLAN_LOCAL, &local.octets())
            .u32(IFLA_VXLAN_LINK, underlay as u32)
            .be16(IFLA_VXLAN_PORT, port)
            .u8(IFLA_VXLAN_LEARNING, 0)
            .end()
            .end();
        self.conn.request(m)
    }

    /// Creates a veth pair: `host` here, `peer` (e.g. `eth0`) directly in the network
    /// namespace `netns_fd`.
    pub fn create_veth(&mut self, host: &str, peer: &str, netns_fd: RawFd, mtu: u32) -> io::Result<()> {
        let m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
            .fixed(&ifinfomsg(0, 0, 0))
            .str(IFLA_IFNAME, host)
            .u32(IFLA_MTU, mtu)
            .begin(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "veth")
            .begin(IFLA_INFO_DATA)
            .begin_plain(VETH_INFO_PEER)
            .fixed(&ifinfomsg(0, 0, 0))
            .str(IFLA_IFNAME, peer)
            .u32(IFLA_MTU, mtu)
            .u32(IFLA_NET_NS_FD, netns_fd as u32)
            .end()
            .end()
            .end();
        self.conn.request(m)
    }

    pub fn delete_link(&mut self, index: i32) -> io::Result<()> {
        let m = Msg::new(RTM_DELLINK, 0).fixed(&ifinfomsg(index, 0, 0));
        match self.conn.request(m) {
            Err(e) if not_found(&e) => Ok(()),
            r => r,
        }
    }

    /// Sets a link up with `mtu` (if given) under `master` (if given).
    pub fn set_link(&mut self, index: i32, mtu: Option<u32>, master: Option<i32>) -> io::Result<()> {
        let up = libc::IFF_UP as u32;
        let mut m = Msg::new(RTM_NEWLINK, 0).fixed(&ifinfomsg(index, up, up));
        if let Some(mtu) = mtu {
            m = m.u32(IFLA_MTU, mtu);
        }
        if let Some(master) = master {
            m = m.u32(IFLA_MASTER, master as u32);
        }
        self.conn.request(m)
    }

    /// Hairpin mode on a bridge port: frames may leave by the port they came in by (a pod
    /// reaching itself through its own Service, which bridge netfilter DNATs at bridge level).
    pub fn set_hairpin(&mut self, index: i32) -> io::Result<()> {
        let mut fixed = ifinfomsg(index, 0, 0);
        fixed[0] = AF_BRIDGE;
        let m = Msg::new(RTM_SETLINK, 0)
            .fixed(&fixed)
            .begin(IFLA_PROTINFO)
            .u8(IFLA_BRPORT_MODE, 1)
            .end();
        self.conn.request(m)
    }

    // ---- addresses ----

    /// Adds `addr/prefix` to a link (replacing an equal address).
    pub fn add_addr(&mut self, index: i32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut fixed = vec![libc::AF_INET as u8, prefix, 0, RT_SCOPE_UNIVERSE];
        fixed.extend_from_slice(&(index as u32).to_ne_bytes());
        let m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE)
            .fixed(&fixed)
            .attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        self.conn.request(m)
    }

    /// Every IPv4 address as (ifindex, address, prefix).
    pub fn addrs(&mut self) -> io::Result<Vec<(i32, Ipv4Addr, u8)>> {
        let m = Msg::new(RTM_GETADDR, NLM_F_DUMP).fixed(&[libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0]);
        Ok(self
            .conn
            .dump(m)?
            .iter()
            .filter_map(|p| {
                let prefix = *p.get(1)?;
                let index = u32::from_ne_bytes(p.get(4..8)?.try_into().ok()?) as i32;
                let a = p.get(8..)?;
                let ip = attr(a, IFA_LOCAL)
                    .or_else(|| attr(a, IFA_ADDRESS))
                    .and_then(ipv4)?;
                Some((index, ip, prefix))
            })
            .collect())
    }

    // ---- routes ----

    fn rtmsg(prefix: u8, scope: u8) -> Vec<u8> {
        let mut b = vec![
            libc::AF_INET as u8,
            prefix,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_STATIC,
            scope,
            RTN_UNICAST,
        ];
        b.extend_from_slice(&0u32.to_ne_bytes());
        b
    }

    /// Adds or replaces the route to `dst/prefix` out of `oif`, via `gateway` (on-link: the
    /// gateway need not be in a subnet of the link) or directly.
    pub fn replace_route(
        &mut self,
        dst: Ipv4Addr,
        prefix: u8,
        oif: i32,
        gateway: Option<Ipv4Addr>,
        src: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        let scope = if gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        let mut fixed = Rtnl::rtmsg(prefix, scope);
        if gateway.is_some() {
            fixed[8..12].copy_from_slice(&RTNH_F_ONLINK.to_ne_bytes());
        }
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE)
            .fixed(&fixed)
            .u32(RTA_OIF, oif as u32);
        if prefix > 0 {
            m = m.attr(RTA_DST, &dst.octets());
        }
        if let Some(gw) = gateway {
            m = m.attr(RTA_GATEWAY, &gw.octets());
        }
        if let Some(src) = src {
            m = m.attr(RTA_PREFSRC, &src.octets());
        }
        self.conn.request(m)
    }

    pub fn delete_route(&mut self, r: &Route) -> io::Result<()> {
        let mut m = Msg::new(RTM_DELROUTE, 0)
            .fixed(&Rtnl::rtmsg(r.prefix, RT_SCOPE_UNIVERSE))
            .u32(RTA_OIF, r.oif);
        if r.prefix > 0 {
            m = m.attr(RTA_DST, &r.dst.octets());
        }
        match self.conn.request(m) {
            Err(e) if not_found(&e) => Ok(()),
            r => r,
        }
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route>> {
        let m = Msg::new(RTM_GETROUTE, NLM_F_DUMP).fixed(&[0u8; 12]);
        let mut out = Vec::new();
        for p in self.conn.dump(m)? {
            if p.len() < 12 || p[0] != libc::AF_INET as u8 || p[4] != RT_TABLE_MAIN {
                continue;
            }
            let a = &p[12..];
            out.push(Route {
                dst: attr(a, RTA_DST).and_then(ipv4).unwrap_or(Ipv4Addr::UNSPECIFIED),
                prefix: p[1],
                gateway: attr(a, RTA_GATEWAY).and_then(ipv4),
                oif: attr_u32(a, RTA_OIF).unwrap_or(0),
            });
        }
        Ok(out)
    }

    // ---- neighbours and FDB ----

    /// A permanent ARP entry `ip → mac` on a link.
    pub fn replace_neigh(&mut self, index: i32, ip: Ipv4Addr, mac: Mac) -> io::Result<()> {
        let m = Msg::new(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE)
            .fixed(&ndmsg(libc::AF_INET as u8, index, NUD_PERMANENT, 0))
            .attr(NDA_DST, &ip.octets())
            .attr(NDA_LLADDR, &mac);
        self.conn.request(m)
    }

    /// A permanent FDB entry of a VXLAN link: frames for `mac` go to the VTEP at `remote`.
    pub fn replace_fdb(&mut self, index: i32, mac: Mac, remote: Ipv4Addr) -> io::Result<()> {
        let m = Msg::new(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE)
            .fixed(&ndmsg(AF_BRIDGE, index, NUD_PERMANENT, NTF_SELF))
            .attr(NDA_LLADDR, &mac)
            .attr(NDA_DST, &remote.octets());
        self.conn.request(m)
    }

    /// Deletes an ARP entry (`bridge` false) or an FDB entry (`bridge` true).
    pub fn delete_neigh(&mut self, n: &Neigh, bridge: bool) -> io::Result<()> {
        let (family, flags) = if bridge {
            (AF_BRIDGE, NTF_SELF)
        } else {
            (libc::AF_INET as u8, 0)
        };
        let mut m = Msg::new(RTM_DELNEIGH, 0).fixed(&ndmsg(family, n.ifindex, 0, flags));
        if let Some(mac) = n.mac.filter(|_| bridge) {
            m = m.attr(NDA_LLADDR, &mac);
        }
        if let Some(ip) = n.ip {
            m = m.attr(NDA_DST, &ip.octets());
        }
        match self.conn.request(m) {
            Err(e) if not_found(&e) => Ok(()),
            r => r,
        }
    }

    /// The ARP entries (`bridge` false) or FDB entries (`bridge` true) of link `index`.
    pub fn neighs(&mut self, index: i32, bridge: bool) -> io::Result<Vec<Neigh>> {
        let family = if bridge { AF_BRIDGE } else { libc::AF_INET as u8 };
        let m = Msg::new(RTM_GETNEIGH, NLM_F_DUMP).fixed(&ndmsg(family, 0, 0, 0));
        let mut out = Vec::new();
        for p in self.conn.dump(m)? {
            if p.len() < 12 || p[0] != family {
                continue;
            }
            let ifindex = i32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
            if ifindex != index {
                continue;
            }
            let a = &p[12..];
            out.push(Neigh {
                ifindex,
                ip: attr(a, NDA_DST).and_then(ipv4),
                mac: attr(a, NDA_LLADDR).and_then(mac),
            });
        }
        Ok(out)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let m = parse_mac("0e:4b:c0:a8:32:0b").unwrap();
        assert_eq!(m, [0x0e, 0x4b, 0xc0, 0xa8, 0x32, 0x0b]);
        assert_eq!(mac_string(&m), "0e:4b:c0:a8:32:0b");
        assert_eq!(parse_mac("0e:4b"), None);
        assert_eq!(parse_mac("0e:4b:c0:a8:32:0b:00"), None);
    }
}
