//! NetworkPolicy in the kernel, between two "nodes" on this host (network namespaces of the
//! test's own joined by a veth segment, as in `pod_network_netns_test`): node a runs pods `a`
//! (the server) and `c`, node b runs pod `b`. Each node programs only its own pods' policy, as
//! the control plane sends it. Checked: a default-deny isolates `a` from the bridge (same node)
//! and the overlay (other node) while the node itself still reaches it; an allow rule lets its
//! peer in on its port only; a peer change updates set elements only; egress isolation blocks a
//! pod's new connections but not the answers to connections made to it; an empty table lets
//! everything through again. And a figure: a big table at once, then a pod change as a set update.
//! Needs root; without it the tests say so and pass vacuously.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use keel_proto::{PolicyPeer, PolicyPort, PolicyRule, PolicyTable};

use super::cidr::Cidr;
use super::netpol::{self, Applied, Change};
use super::nlsock::{in_netns, new_netns};
use super::overlay::{self, Peer};
use super::pod_network::{find_underlay, NodeNet};
use super::rtnl::Rtnl;

/// How long a connection that policy drops is given before it counts as blocked.
const BLOCKED_AFTER: Duration = Duration::from_millis(700);

struct Ns {
    _file: File,
    path: PathBuf,
}

fn ns() -> io::Result<Ns> {
    let f = new_netns()?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    Ok(Ns { _file: f, path })
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn segment(a: &Ns, b: &Ns) -> io::Result<()> {
    let b_path = b.path.clone();
    let up = |r: &mut Rtnl, name: &str, addr: Ipv4Addr| -> io::Result<()> {
        let l = r.link(name)?.ok_or_else(|| io::Error::other("link missing"))?;
        r.add_addr(l.index, addr, 24)?;
        r.set_link(l.index, None, None)?;
        let lo = r.link("lo")?.ok_or_else(|| io::Error::other("lo missing"))?;
        r.set_link(lo.index, None, None)
    };
    in_netns(&a.path, || {
        let mut r = Rtnl::open()?;
        let b_ns = File::open(&b_path)?;
        r.create_veth("seg", "seg", b_ns.as_raw_fd(), 1500)?;
        up(&mut r, "seg", ip("192.168.60.11"))
    })?;
    in_netns(&b.path, || up(&mut Rtnl::open()?, "seg", ip("192.168.60.12")))
}

fn node(name: &str, netns: &Ns, segment_ip: &str, pod_cidr: &str, dir: &std::path::Path) -> NodeNet {
    let cluster: Cidr = "10.244.0.0/16".parse().unwrap();
    let underlay = in_netns(&netns.path, || {
        find_underlay(Some(ip(segment_ip)), cluster).map_err(io::Error::other)
    })
    .expect("underlay");
    NodeNet {
        cluster,
        pod_cidr: pod_cidr.parse().unwrap(),
        underlay,
        ipam_root: dir.join(name),
    }
}

fn peer_of(name: &str, n: &NodeNet) -> Peer {
    Peer {
        name: name.into(),
        endpoint: n.underlay.address,
        vtep_mac: overlay::vtep_mac(n.underlay.address),
        pod_cidr: n.pod_cidr,
    }
}

/// Accepts forever in `netns` on `addr`, answering each connection with "ok".
fn serve(netns: &Ns, addr: SocketAddr) {
    let listener = in_netns(&netns.path, || TcpListener::bind(addr)).expect("listen");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.write_all(b"ok");
        }
    });
}

/// Whether a connection from `netns` to `to` gets its "ok" within [`BLOCKED_AFTER`].
fn reaches(netns: &Ns, to: SocketAddr) -> bool {
    in_netns(&netns.path, || {
        let mut s = TcpStream::connect_timeout(&to, BLOCKED_AFTER)?;
        s.set_read_timeout(Some(BLOCKED_AFTER))?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text == "ok")
    })
    .unwrap_or(false)
}

fn rule(pods: &[Ipv4Addr], peers: &[&str], ports: &[u32]) -> PolicyRule {
    PolicyRule {
        policy: "default/test".into(),
        pods: pods.iter().map(|p| p.to_string()).collect(),
        peers: peers
            .iter()
            .map(|c| PolicyPeer {
                cidr: c.to_string(),
                except: vec![],
            })
            .collect(),
        ports: ports
            .iter()
            .map(|p| PolicyPort {
                protocol: "TCP".into(),
                port: *p,
                end_port: 0,
            })
            .collect(),
    }
}

fn apply(netns: &Ns, t: &PolicyTable, last: Option<&Applied>) -> (Applied, Change) {
    let (policy, bad) = netpol::from_proto(t);
    assert!(bad.is_empty(), "{bad:?}");
    in_netns(&netns.path, || netpol::apply(&policy, last)).expect("applying the policy")
}

#[test]
fn policies_filter_bridged_and_overlay_traffic() {
    let (node_a, node_b, pod_a, pod_b, pod_c) = match (ns(), ns(), ns(), ns(), ns()) {
        (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e)) => (a, b, c, d, e),
        _ => {
            eprintln!("skipped: creating network namespaces needs root");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    segment(&node_a, &node_b).expect("segment");
    let a = node("a", &node_a, "192.168.60.11", "10.244.1.0/24", dir.path());
    let b = node("b", &node_b, "192.168.60.12", "10.244.2.0/24", dir.path());
    in_netns(&node_a.path, || {
        a.apply(&[peer_of("b", &b)]).map_err(io::Error::other)
    })
    .expect("node a");
    in_netns(&node_b.path, || {
        b.apply(&[peer_of("a", &a)]).map_err(io::Error::other)
    })
    .expect("node b");
    let attach = |n: &NodeNet, node: &Ns, pod: &Ns, uid: &str| {
        in_netns(&node.path, || n.attach(&pod.path, uid).map_err(io::Error::other))
            .expect("attach")
            .ip
    };
    let (ip_a, ip_c, ip_b) = (
        attach(&a, &node_a, &pod_a, "uid-a"),
        attach(&a, &node_a, &pod_c, "uid-c"),
        attach(&b, &node_b, &pod_b, "uid-b"),
    );
    let web = SocketAddr::from((ip_a, 7000));
    let admin = SocketAddr::from((ip_a, 7001));
    serve(&pod_a, web);
    serve(&pod_a, admin);
    serve(&pod_c, SocketAddr::from((ip_c, 7000)));
    serve(&pod_b, SocketAddr::from((ip_b, 7000)));
    assert!(
        reaches(&pod_b, web) && reaches(&pod_c, web),
        "open before any policy"
    );

    // Default deny for pod a: neither the overlay nor the bridge gets through; the node does.
    let deny = PolicyTable {
        version: 1,
        ingress_isolated: vec![ip_a.to_string()],
        ..Default::default()
    };
    let (applied, change) = apply(&node_a, &deny, None);
    assert_eq!(change, Change::Table);
    assert!(
        !reaches(&pod_b, web),
        "pod b (other node) still reaches a denied pod"
    );
    assert!(
        !reaches(&pod_c, web),
        "pod c (same node) still reaches a denied pod"
    );
    assert!(reaches(&node_a, web), "the node itself is cut off from its pod");

    // Allow pod b on port 7000 only.
    let allow_b = PolicyTable {
        version: 2,
        ingress_isolated: vec![ip_a.to_string()],
        ingress: vec![rule(&[ip_a], &[&format!("{ip_b}/32")], &[7000])],
        ..Default::default()
    };
    let (applied, change) = apply(&node_a, &allow_b, Some(&applied));
    assert_eq!(change, Change::Table, "a new rule is a new shape");
    assert!(reaches(&pod_b, web), "the allowed peer is refused");
    assert!(
        !reaches(&pod_b, admin),
        "the allowed peer reaches a port not allowed"
    );
    assert!(!reaches(&pod_c, web), "a peer not allowed gets through");

    // The allowed peer becomes pod c: set elements only.
    let allow_c = PolicyTable {
        version: 3,
        ingress_isolated: vec![ip_a.to_string()],
        ingress: vec![rule(&[ip_a], &[&format!("{ip_c}/32")], &[7000])],
        ..Default::default()
    };
    let (applied, change) = apply(&node_a, &allow_c, Some(&applied));
    assert_eq!(change, Change::Sets);
    assert!(
        reaches(&pod_c, web) && !reaches(&pod_b, web),
        "after the peer changed"
    );
    let (applied, change) = apply(&node_a, &allow_c, Some(&applied));
    assert_eq!(change, Change::Nothing);

    // Egress: pod c may not open connections, but answers those made to it.
    let egress = PolicyTable {
        version: 4,
        egress_isolated: vec![ip_c.to_string()],
        ..Default::default()
    };
    let (applied, _) = apply(&node_a, &egress, Some(&applied));
    assert!(!reaches(&pod_c, web), "egress-isolated pod c reaches pod a");
    assert!(!reaches(&pod_c, SocketAddr::from((ip_b, 7000))), "… or pod b");
    assert!(
        reaches(&pod_b, SocketAddr::from((ip_c, 7000))),
        "pod c's answers are dropped"
    );
    assert!(reaches(&pod_b, web), "pod a is no longer isolated");
    // Egress allowed to pod b only: a `return` to the ingress checks, which pass.
    let egress_b = PolicyTable {
        version: 5,
        egress_isolated: vec![ip_c.to_string()],
        egress: vec![rule(&[ip_c], &[&format!("{ip_b}/32")], &[])],
        ..Default::default()
    };
    let (applied, _) = apply(&node_a, &egress_b, Some(&applied));
    assert!(
        reaches(&pod_c, SocketAddr::from((ip_b, 7000))),
        "allowed egress refused"
    );
    assert!(!reaches(&pod_c, web), "egress not allowed gets through");

    // No policy: open again.
    let (_, change) = apply(&node_a, &PolicyTable::default(), Some(&applied));
    assert_eq!(change, Change::Table);
    assert!(reaches(&pod_c, web) && reaches(&pod_b, web));
}

/// The figure: a big table (100 policies' rules over 100 peers each, 10,000 peer addresses) is
/// programmed at once, and a pod change updates set elements only, both well under a second.
#[test]
fn a_big_table_is_programmed_at_once_and_updated_by_its_sets() {
    let Ok(node) = ns() else {
        eprintln!("skipped: creating network namespaces needs root");
        return;
    };
    let pod = |i: u32| Ipv4Addr::from(u32::from(ip("10.244.1.0")) + i);
    // Peers two apart, so no two merge into one range: 10,000 ranges, 20,000 interval keys.
    let peer = |r: u32, j: u32| {
        format!(
            "{}/32",
            Ipv4Addr::from(u32::from(ip("10.245.0.0")) + 2 * (r * 100 + j))
        )
    };
    let table = |extra: bool| PolicyTable {
        version: 1,
        ingress_isolated: (2..102).map(|i| pod(i).to_string()).collect(),
        ingress: (0..100)
            .map(|r| {
                let peers: Vec<String> = (0..100).map(|j| peer(r, j)).collect();
                let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
                let mut pods = vec![pod(2 + r)];
                if extra && r == 0 {
                    pods.push(pod(200));
                }
                rule(&pods, &peers, &[80, 443])
            })
            .collect(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let (applied, change) = apply(&node, &table(false), None);
    let full = started.elapsed();
    assert_eq!(change, Change::Table);
    let started = std::time::Instant::now();
    let (_, change) = apply(&node, &table(true), Some(&applied));
    let update = started.elapsed();
    assert_eq!(change, Change::Sets);
    eprintln!(
        "netpol: 100 rules × 100 peers × 2 ports programmed in {} ms; one pod added to a rule in {} ms",
        full.as_millis(),
        update.as_millis()
    );
    assert!(
        full < Duration::from_secs(2) && update < Duration::from_millis(500),
        "{full:?} {update:?}"
    );
}
