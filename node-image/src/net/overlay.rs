//! The overlay between nodes: one VXLAN device (VNI 1, UDP 4789, no learning) on the node's
//! overlay NIC, and per peer node the three static entries flannel's `vxlan` backend uses:
//!
//! ```text
//! route  10.244.M.0/24 via 10.244.M.0 dev keel.1 onlink     (the peer's pod range)
//! neigh  10.244.M.0 lladdr <peer VTEP MAC> dev keel.1       (its gateway → its VTEP MAC)
//! fdb    <peer VTEP MAC> dev keel.1 dst <peer address>      (its VTEP MAC → its node)
//! ```
//!
//! The device itself holds `10.244.N.0/32`, so traffic the node sends to remote pods leaves with
//! an address of its own range. The peer set comes from the control plane as a whole
//! (`OverlayPeers`); [`sync_peers`] makes the kernel match it exactly — missing entries are
//! added, changed ones replaced, and entries of peers that left are removed — reading the
//! kernel's tables rather than remembering what it did, so an agent restart changes nothing.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;

use super::cidr::Cidr;
use super::rtnl::{parse_mac, Mac, Neigh, Route, Rtnl};

/// The VXLAN device (flannel calls its `flannel.1`).
pub const DEVICE: &str = "keel.1";
pub const VNI: u32 = 1;
pub const PORT: u16 = 4789;
/// VXLAN over IPv4 costs 50 bytes of the underlay's MTU.
pub const OVERHEAD: u32 = 50;

/// One other node, as the control plane describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub endpoint: Ipv4Addr,
    pub vtep_mac: Mac,
    pub pod_cidr: Cidr,
}

/// The NIC VXLAN packets leave by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub ifindex: i32,
    pub address: Ipv4Addr,
    pub mtu: u32,
}

/// The VXLAN device's MAC for a node whose overlay address is `endpoint`: locally administered
/// (`0e:4b:` then the address), so it stays the same across reboots and agent restarts.
pub fn vtep_mac(endpoint: Ipv4Addr) -> Mac {
    let o = endpoint.octets();
    [0x0e, 0x4b, o[0], o[1], o[2], o[3]]
}

/// The usable peers of a control-plane message; the rest are named in the error list.
pub fn peers_from(
    msg: &keel_proto::OverlayPeers,
    own_endpoint: Option<Ipv4Addr>,
) -> (Vec<Peer>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for p in &msg.peers {
        let peer = (|| {
            Some(Peer {
                name: p.node_name.clone(),
                endpoint: p.address.parse().ok()?,
                vtep_mac: parse_mac(&p.vtep_mac)?,
                pod_cidr: p.pod_cidr.parse().ok()?,
            })
        })();
        match peer {
            Some(peer) if Some(peer.endpoint) == own_endpoint => {}
            Some(peer) => ok.push(peer),
            None => bad.push(p.node_name.clone()),
        }
    }
    ok.sort_by(|a, b| a.name.cmp(&b.name));
    (ok, bad)
}

/// Creates (or re-creates, if its settings differ) the VXLAN device and gives it `own`'s
/// network address; returns its ifindex.
pub fn ensure_device(rtnl: &mut Rtnl, underlay: &Underlay, own: Cidr) -> io::Result<i32> {
    let mac = vtep_mac(underlay.address);
    let want = (VNI, Some(underlay.address), underlay.ifindex as u32);
    if let Some(l) = rtnl.link(DEVICE)? {
        if l.vxlan.as_ref() != Some(&want) || l.mac != Some(mac) {
            rtnl.delete_link(l.index)?;
        }
    }
    let link = match rtnl.link(DEVICE)? {
        Some(l) => l,
        None => {
            rtnl.create_vxlan(DEVICE, VNI, underlay.address, underlay.ifindex, PORT, mac)?;
            rtnl.link(DEVICE)?
                .ok_or_else(|| io::Error::other(format!("{DEVICE} vanished after creation")))?
        }
    };
    rtnl.set_link(link.index, Some(underlay.mtu.saturating_sub(OVERHEAD)), None)?;
    rtnl.add_addr(link.index, own.network, 32)?;
    Ok(link.index)
}

/// What to remove so that the kernel holds exactly the entries of `peers`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stale {
    pub routes: Vec<Route>,
    pub neighs: Vec<Neigh>,
    pub fdb: Vec<Neigh>,
}

/// Compares the device's current routes, neighbours and FDB entries with `peers` (pure, so the
/// diffing is testable without a kernel). Only routes out of the device into `cluster` count.
pub fn stale(
    dev: i32,
    cluster: Cidr,
    peers: &[Peer],
    routes: &[Route],
    neighs: &[Neigh],
    fdb: &[Neigh],
) -> Stale {
    let want_routes: BTreeMap<Cidr, Ipv4Addr> =
        peers.iter().map(|p| (p.pod_cidr, p.pod_cidr.network)).collect();
    let want_neigh: BTreeMap<Ipv4Addr, Mac> =
        peers.iter().map(|p| (p.pod_cidr.network, p.vtep_mac)).collect();
    let want_fdb: BTreeMap<Mac, Ipv4Addr> = peers.iter().map(|p| (p.vtep_mac, p.endpoint)).collect();
    Stale {
        routes: routes
            .iter()
            .filter(|r| r.oif == dev as u32 && cluster.contains(r.dst) && r.prefix >= cluster.prefix)
            .filter(|r| want_routes.get(&Cidr::new(r.dst, r.prefix)) != r.gateway.as_ref())
            .cloned()
            .collect(),
        neighs: neighs
            .iter()
            .filter(|n| n.ifindex == dev)
            .filter(|n| match (n.ip, n.mac) {
                (Some(ip), Some(mac)) => want_neigh.get(&ip) != Some(&mac),
                _ => true,
            })
            .cloned()
            .collect(),
        fdb: fdb
            .iter()
            .filter(|n| n.ifindex == dev)
            .filter(|n| match (n.mac, n.ip) {
                (Some(mac), Some(ip)) => want_fdb.get(&mac) != Some(&ip),
                // Entries without a remote are the device's own (its address): keep them.
                _ => false,
            })
            .cloned()
            .collect(),
    }
}

/// Makes the device's entries match `peers`; returns how many stale entries it removed.
pub fn sync_peers(rtnl: &mut Rtnl, dev: i32, cluster: Cidr, peers: &[Peer]) -> io::Result<usize> {
    let routes = rtnl.routes()?;
    let neighs = rtnl.neighs(dev, false)?;
    let fdb = rtnl.neighs(dev, true)?;
    let old = stale(dev, cluster, peers, &routes, &neighs, &fdb);
    let removed = old.routes.len() + old.neighs.len() + old.fdb.len();
    for r in &old.routes {
        rtnl.delete_route(r)?;
    }
    for n in &old.neighs {
        rtnl.delete_neigh(n, false)?;
    }
    for n in &old.fdb {
        rtnl.delete_neigh(n, true)?;
    }
    for p in peers {
        rtnl.replace_fdb(dev, p.vtep_mac, p.endpoint)?;
        rtnl.replace_neigh(dev, p.pod_cidr.network, p.vtep_mac)?;
        rtnl.replace_route(
            p.pod_cidr.network,
            p.pod_cidr.prefix,
            dev,
            Some(p.pod_cidr.network),
            None,
        )?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> Peer {
        let endpoint = Ipv4Addr::new(192, 168, 50, 10 + n);
        Peer {
            name: format!("node-{n}"),
            endpoint,
            vtep_mac: vtep_mac(endpoint),
            pod_cidr: Cidr::new(Ipv4Addr::new(10, 244, n, 0), 24),
        }
    }

    fn route(n: u8, oif: u32) -> Route {
        Route {
            dst: Ipv4Addr::new(10, 244, n, 0),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 244, n, 0)),
            oif,
        }
    }

    #[test]
    fn control_plane_peers_are_checked() {
        let msg = keel_proto::OverlayPeers {
            version: 3,
            peers: vec![
                keel_proto::OverlayPeer {
                    node_name: "b".into(),
                    address: "192.168.50.12".into(),
                    vtep_mac: "0e:4b:c0:a8:32:0c".into(),
                    pod_cidr: "10.244.2.0/24".into(),
                },
                keel_proto::OverlayPeer {
                    node_name: "broken".into(),
                    address: "nope".into(),
                    ..Default::default()
                },
                keel_proto::OverlayPeer {
                    node_name: "me".into(),
                    address: "192.168.50.11".into(),
                    vtep_mac: "0e:4b:c0:a8:32:0b".into(),
                    pod_cidr: "10.244.1.0/24".into(),
                },
            ],
        };
        let (ok, bad) = peers_from(&msg, Some(Ipv4Addr::new(192, 168, 50, 11)));
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].pod_cidr.to_string(), "10.244.2.0/24");
        assert_eq!(ok[0].vtep_mac, vtep_mac(ok[0].endpoint));
        assert_eq!(bad, ["broken"]);
    }

    #[test]
    fn diff_removes_only_what_left_or_changed() {
        let cluster: Cidr = "10.244.0.0/16".parse().unwrap();
        let dev = 7;
        let (p2, p3) = (peer(2), peer(3));
        let mut moved = peer(4);
        moved.endpoint = Ipv4Addr::new(192, 168, 50, 99);
        let routes = vec![
            route(2, 7),
            route(5, 7), // peer 5 left
            route(6, 9), // another device: not ours
            Route {
                dst: Ipv4Addr::new(10, 96, 0, 0),
                prefix: 12,
                gateway: None,
                oif: 7,
            }, // outside the cluster range: not ours
        ];
        let neighs = vec![
            Neigh {
                ifindex: 7,
                ip: Some(p2.pod_cidr.network),
                mac: Some(p2.vtep_mac),
            },
            Neigh {
                ifindex: 7,
                ip: Some(p3.pod_cidr.network),
                mac: Some([2, 0, 0, 0, 0, 1]), // p3's MAC changed
            },
        ];
        let fdb = vec![
            Neigh {
                ifindex: 7,
                ip: Some(peer(4).endpoint), // peer 4 moved to another address
                mac: Some(moved.vtep_mac),
            },
            Neigh {
                ifindex: 7,
                ip: None,
                mac: Some([0x0e, 0x4b, 0, 0, 0, 1]), // the device's own
            },
        ];
        let s = stale(dev, cluster, &[p2, p3, moved], &routes, &neighs, &fdb);
        assert_eq!(s.routes, vec![route(5, 7)]);
        assert_eq!(s.neighs.len(), 1);
        assert_eq!(s.neighs[0].mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(s.fdb.len(), 1);
        assert_eq!(s.fdb[0].ip, Some(peer(4).endpoint));
        // The same peers again: nothing stale.
        let none = stale(dev, cluster, &[peer(2)], &[route(2, 7)], &neighs[..1], &[]);
        assert_eq!(none, Stale::default());
    }
}
