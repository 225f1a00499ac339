//! The pod network between two "nodes" on this host, each a network namespace of the test's own
//! joined by a veth "segment" (192.168.50.11/.12), each with a "pod" namespace attached: TCP
//! from pod to pod across VXLAN keeps the pod's address; TCP from a pod to the other node's
//! segment address is masqueraded; a ClusterIP reaches the pod behind it (across nodes, on the
//! same node, and from the pod itself through hairpin); a peer that leaves takes its route
//! along; a detached pod's veth and address go. Needs root (namespaces are created with unshare
//! and vanish with the test); without it the test says so and passes vacuously.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::cidr::Cidr;
use super::nlsock::{in_netns, new_netns};
use super::overlay::{self, Peer};
use super::pod_network::{find_underlay, veth_name, NodeNet};
use super::rtnl::Rtnl;
use super::services;

const DEADLINE: Duration = Duration::from_secs(10);

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

/// In namespace `a`: a veth `seg` whose other end, also `seg`, is in `b`; addresses and up.
fn segment(a: &Ns, b: &Ns, ip_a: Ipv4Addr, ip_b: Ipv4Addr) -> io::Result<()> {
    let b_path = b.path.clone();
    in_netns(&a.path, || {
        let mut r = Rtnl::open()?;
        let b_ns = File::open(&b_path)?;
        r.create_veth("seg", "seg", b_ns.as_raw_fd(), 1500)?;
        let l = r.link("seg")?.ok_or_else(|| io::Error::other("seg missing"))?;
        r.add_addr(l.index, ip_a, 24)?;
        r.set_link(l.index, None, None)?;
        let lo = r.link("lo")?.ok_or_else(|| io::Error::other("lo missing"))?;
        r.set_link(lo.index, None, None)
    })?;
    in_netns(&b.path, || {
        let mut r = Rtnl::open()?;
        let l = r
            .link("seg")?
            .ok_or_else(|| io::Error::other("seg missing in b"))?;
        r.add_addr(l.index, ip_b, 24)?;
        r.set_link(l.index, None, None)?;
        let lo = r.link("lo")?.ok_or_else(|| io::Error::other("lo missing"))?;
        r.set_link(lo.index, None, None)
    })
}

/// Listens in `netns` on `addr`; the returned receiver yields (peer address, what it sent).
fn serve_once(netns: &Ns, addr: SocketAddr) -> mpsc::Receiver<io::Result<(SocketAddr, String)>> {
    let listener = in_netns(&netns.path, || TcpListener::bind(addr)).expect("listen");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = (|| {
            let (mut s, peer) = listener.accept()?;
            s.set_read_timeout(Some(DEADLINE))?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok((peer, text))
        })();
        let _ = tx.send(r);
    });
    rx
}

fn send_from(netns: &Ns, to: SocketAddr, text: &'static str) -> io::Result<()> {
    in_netns(&netns.path, || {
        let mut s = TcpStream::connect_timeout(&to, DEADLINE)?;
        s.write_all(text.as_bytes())
    })
}

fn node(name: &str, netns: &Ns, segment_ip: Ipv4Addr, pod_cidr: &str, dir: &std::path::Path) -> NodeNet {
    let cluster: Cidr = "10.244.0.0/16".parse().unwrap();
    let underlay = in_netns(&netns.path, || {
        find_underlay(Some(segment_ip), cluster).map_err(io::Error::other)
    })
    .expect("underlay");
    assert_eq!(underlay.address, segment_ip);
    NodeNet {
        cluster,
        pod_cidr: pod_cidr.parse().unwrap(),
        underlay,
        ipam_root: dir.join(name),
    }
}

fn as_peer(name: &str, n: &NodeNet) -> Peer {
    Peer {
        name: name.into(),
        endpoint: n.underlay.address,
        vtep_mac: overlay::vtep_mac(n.underlay.address),
        pod_cidr: n.pod_cidr,
    }
}

fn apply(netns: &Ns, n: &NodeNet, peers: &[Peer]) {
    in_netns(&netns.path, || n.apply(peers).map_err(io::Error::other))
        .unwrap_or_else(|e| panic!("applying {}: {e}", n.pod_cidr));
}

#[test]
fn two_nodes_pods_talk_over_vxlan_and_leave_masqueraded() {
    let (node_a, node_b, pod_a, pod_b) = match (ns(), ns(), ns(), ns()) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => {
            eprintln!("skipped: creating network namespaces needs root");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    segment(&node_a, &node_b, ip("192.168.50.11"), ip("192.168.50.12")).expect("segment");
    let a = node("a", &node_a, ip("192.168.50.11"), "10.244.1.0/24", dir.path());
    let b = node("b", &node_b, ip("192.168.50.12"), "10.244.2.0/24", dir.path());
    // Twice each: the second pass must find everything in place (same devices, not rebuilt).
    let devices = |netns: &Ns| {
        in_netns(&netns.path, || {
            let mut r = Rtnl::open()?;
            let index = |l: Option<super::rtnl::Link>| l.map(|l| l.index);
            Ok((index(r.link(overlay::DEVICE)?), index(r.link("cni0")?)))
        })
        .unwrap()
    };
    apply(&node_a, &a, &[as_peer("b", &b)]);
    apply(&node_b, &b, &[as_peer("a", &a)]);
    let first = devices(&node_a);
    assert!(first.0.is_some() && first.1.is_some(), "{first:?}");
    apply(&node_a, &a, &[as_peer("b", &b)]);
    apply(&node_b, &b, &[as_peer("a", &a)]);
    assert_eq!(devices(&node_a), first, "a second apply rebuilt a device");

    let ip_a = in_netns(&node_a.path, || {
        a.attach(&pod_a.path, "uid-a").map_err(io::Error::other)
    })
    .expect("attach a");
    let ip_b = in_netns(&node_b.path, || {
        b.attach(&pod_b.path, "uid-b").map_err(io::Error::other)
    })
    .expect("attach b");
    assert_eq!(ip_a.ip, ip("10.244.1.2"));
    assert_eq!(ip_a.gateway, ip("10.244.1.1"));
    assert_eq!(ip_b.ip, ip("10.244.2.2"));
    // Attaching again keeps the address.
    let again = in_netns(&node_a.path, || {
        a.attach(&pod_a.path, "uid-a").map_err(io::Error::other)
    })
    .expect("re-attach a");
    assert_eq!(again.ip, ip_a.ip);

    // Pod to pod across the overlay: the server sees the pod's own address.
    let rx = serve_once(&pod_b, SocketAddr::from((ip_b.ip, 7777)));
    send_from(&pod_a, SocketAddr::from((ip_b.ip, 7777)), "hello over vxlan").expect("pod a → pod b");
    let (peer, text) = rx
        .recv_timeout(DEADLINE)
        .expect("pod b answered")
        .expect("pod b read");
    assert_eq!(text, "hello over vxlan");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(ip_a.ip));

    // And back, from b to a.
    let rx = serve_once(&pod_a, SocketAddr::from((ip_a.ip, 7778)));
    send_from(&pod_b, SocketAddr::from((ip_a.ip, 7778)), "and back").expect("pod b → pod a");
    let (peer, _) = rx
        .recv_timeout(DEADLINE)
        .expect("pod a answered")
        .expect("pod a read");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(ip_b.ip));

    // Out of the cluster range (node b's segment address): masqueraded to node a's address.
    let rx = serve_once(&node_b, SocketAddr::from((ip("192.168.50.12"), 7779)));
    send_from(&pod_a, SocketAddr::from((ip("192.168.50.12"), 7779)), "egress").expect("pod a → node b");
    let (peer, text) = rx
        .recv_timeout(DEADLINE)
        .expect("node b answered")
        .expect("node b read");
    assert_eq!(text, "egress");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(ip("192.168.50.11")),
        "masqueraded"
    );

    // A Service on node a: ClusterIP 10.96.0.20:80 → pod b's 7780, from pod a and from node a.
    let web = services::ServicePort::cluster_ip(
        ip("10.96.0.20"),
        services::Protocol::Tcp,
        80,
        vec![(ip_b.ip, 7780)],
    );
    in_netns(&node_a.path, || {
        services::apply(std::slice::from_ref(&web))?;
        // The node's own connections need a route for the ClusterIP before the output hook
        // rewrites it, as on a real node: a default route (here via node b).
        let mut r = Rtnl::open()?;
        let seg = r.link("seg")?.ok_or_else(|| io::Error::other("seg missing"))?;
        r.replace_route(
            Ipv4Addr::UNSPECIFIED,
            0,
            seg.index,
            Some(ip("192.168.50.12")),
            None,
        )
    })
    .expect("services");
    let rx = serve_once(&pod_b, SocketAddr::from((ip_b.ip, 7780)));
    send_from(
        &pod_a,
        SocketAddr::from((ip("10.96.0.20"), 80)),
        "via the service",
    )
    .expect("pod a → service");
    let (peer, text) = rx
        .recv_timeout(DEADLINE)
        .expect("service answered")
        .expect("read");
    assert_eq!(text, "via the service");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(ip_a.ip));
    let rx = serve_once(&pod_b, SocketAddr::from((ip_b.ip, 7780)));
    send_from(&node_a, SocketAddr::from((ip("10.96.0.20"), 80)), "from the node").expect("node a → service");
    let (_, text) = rx
        .recv_timeout(DEADLINE)
        .expect("service answered the node")
        .expect("read");
    assert_eq!(text, "from the node");
    // Same node: a second pod on node a reaches pod a over the bridge, directly and through a
    // Service (the reply is bridged back and un-NATed by conntrack: bridge netfilter).
    let pod_a2 = ns().expect("pod a2");
    let ip_a2 = in_netns(&node_a.path, || {
        a.attach(&pod_a2.path, "uid-a2").map_err(io::Error::other)
    })
    .expect("attach a2");
    assert_eq!(ip_a2.ip, ip("10.244.1.3"));
    let rx = serve_once(&pod_a, SocketAddr::from((ip_a.ip, 7781)));
    send_from(&pod_a2, SocketAddr::from((ip_a.ip, 7781)), "neighbour").expect("pod a2 → pod a");
    let (peer, _) = rx.recv_timeout(DEADLINE).expect("pod a answered").expect("read");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(ip_a2.ip));
    let local = services::ServicePort::cluster_ip(
        ip("10.96.0.21"),
        services::Protocol::Tcp,
        81,
        vec![(ip_a.ip, 7782)],
    );
    in_netns(&node_a.path, || services::apply(&[web.clone(), local])).expect("services");
    let rx = serve_once(&pod_a, SocketAddr::from((ip_a.ip, 7782)));
    send_from(&pod_a2, SocketAddr::from((ip("10.96.0.21"), 81)), "same node")
        .expect("pod a2 → service → pod a");
    let (peer, text) = rx
        .recv_timeout(DEADLINE)
        .expect("local service answered")
        .expect("read");
    assert_eq!(text, "same node");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(ip_a2.ip));

    // Hairpin: pod a through a Service whose endpoint is pod a itself (masqueraded, so the
    // answer comes back through the node).
    let rx = serve_once(&pod_a, SocketAddr::from((ip_a.ip, 7782)));
    send_from(&pod_a, SocketAddr::from((ip("10.96.0.21"), 81)), "hairpin").expect("pod a → service → pod a");
    let (peer, text) = rx
        .recv_timeout(DEADLINE)
        .expect("hairpin answered")
        .expect("read");
    assert_eq!(text, "hairpin");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(a.gateway()),
        "hairpin traffic is masqueraded"
    );

    // NodePorts on node a, reached from node b at node a's segment address: policy Cluster
    // sends to pod b (on node b) masqueraded as node a's overlay address, so the reply comes
    // back through node a; policy Local sends to pod a (on node a) and keeps the client's
    // address.
    let mut np_cluster = web.clone();
    np_cluster.node_port = 30080;
    let mut np_local = services::ServicePort::cluster_ip(
        ip("10.96.0.22"),
        services::Protocol::Tcp,
        82,
        vec![(ip_a.ip, 7783), (ip_b.ip, 7783)],
    );
    np_local.node_port = 30081;
    np_local.external_local = true;
    np_local.local_endpoints = vec![(ip_a.ip, 7783)];
    in_netns(&node_a.path, || services::apply(&[np_cluster, np_local])).expect("node ports");
    let rx = serve_once(&pod_b, SocketAddr::from((ip_b.ip, 7780)));
    send_from(
        &node_b,
        SocketAddr::from((ip("192.168.50.11"), 30080)),
        "nodeport",
    )
    .expect("node b → node a's NodePort → pod b");
    let (peer, text) = rx
        .recv_timeout(DEADLINE)
        .expect("NodePort answered")
        .expect("read");
    assert_eq!(text, "nodeport");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(a.pod_cidr.network),
        "NodePort traffic (policy Cluster) is masqueraded to the overlay address"
    );
    let rx = serve_once(&pod_a, SocketAddr::from((ip_a.ip, 7783)));
    send_from(&node_b, SocketAddr::from((ip("192.168.50.11"), 30081)), "local")
        .expect("node b → node a's Local NodePort → pod a");
    let (peer, text) = rx
        .recv_timeout(DEADLINE)
        .expect("Local NodePort answered")
        .expect("read");
    assert_eq!(text, "local");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(ip("192.168.50.12")),
        "policy Local keeps the client's address"
    );

    // sessionAffinity ClientIP: pod a2's connections to a Service of pods a and b all go to the
    // endpoint the first one got (eight in a row by chance: 1 in 128).
    let mut sticky = services::ServicePort::cluster_ip(
        ip("10.96.0.23"),
        services::Protocol::Tcp,
        90,
        vec![(ip_a.ip, 7790), (ip_b.ip, 7790)],
    );
    sticky.affinity_seconds = 60;
    in_netns(&node_a.path, || services::apply(&[sticky])).expect("affinity service");
    let counts: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    for (i, (netns, addr)) in [(&pod_a, ip_a.ip), (&pod_b, ip_b.ip)].into_iter().enumerate() {
        let listener = in_netns(&netns.path, || TcpListener::bind((addr, 7790))).expect("listen");
        let counts = counts.clone();
        std::thread::spawn(move || {
            while let Ok((mut c, _)) = listener.accept() {
                let _ = c.set_read_timeout(Some(DEADLINE));
                let mut sink = Vec::new();
                let _ = c.read_to_end(&mut sink);
                counts[i].fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let total = || counts[0].load(Ordering::SeqCst) + counts[1].load(Ordering::SeqCst);
    for n in 1..=8 {
        send_from(&pod_a2, SocketAddr::from((ip("10.96.0.23"), 90)), "sticky")
            .expect("pod a2 → sticky service");
        let start = std::time::Instant::now();
        while total() < n {
            assert!(start.elapsed() < DEADLINE, "connection {n} never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let (to_a, to_b) = (counts[0].load(Ordering::SeqCst), counts[1].load(Ordering::SeqCst));
    assert!(
        to_a == 8 || to_b == 8,
        "affinity: {to_a} to pod a, {to_b} to pod b"
    );

    // No endpoints: the rule goes, and the ClusterIP answers nothing.
    in_netns(&node_a.path, || services::apply(&[])).expect("services emptied");

    // Peer b leaves: node a drops its route, neighbour and FDB entry.
    apply(&node_a, &a, &[]);
    let (routes, neighs, fdb) = in_netns(&node_a.path, || {
        let mut r = Rtnl::open()?;
        let vx = r
            .link(overlay::DEVICE)?
            .ok_or_else(|| io::Error::other("no vxlan"))?;
        Ok((r.routes()?, r.neighs(vx.index, false)?, r.neighs(vx.index, true)?))
    })
    .unwrap();
    assert!(!routes.iter().any(|r| r.dst == ip("10.244.2.0")), "{routes:?}");
    assert!(neighs.is_empty(), "{neighs:?}");
    assert!(fdb.iter().all(|n| n.ip.is_none()), "{fdb:?}");

    // Detach: the veth goes and the address is free again.
    let freed = in_netns(&node_a.path, || a.detach("uid-a").map_err(io::Error::other)).unwrap();
    assert_eq!(freed, Some(ip_a.ip));
    let gone = in_netns(&node_a.path, || Rtnl::open()?.link(&veth_name("uid-a"))).unwrap();
    assert!(gone.is_none());
    assert!(in_netns(&pod_a.path, || Rtnl::open()?.link("eth0"))
        .unwrap()
        .is_none());
}
