//! Cluster DNS, served by every node itself at `10.96.0.10:53` (UDP), from the service table
//! the control plane pushes, with CoreDNS's `kubernetes` plugin's names:
//!
//! * `<svc>.<ns>.svc.cluster.local` A → the ClusterIP, or for a headless Service every ready
//!   endpoint's IP; ExternalName Services → a CNAME;
//! * `<hostname>.<svc>.<ns>.svc.cluster.local` A for endpoints with a hostname (StatefulSet pods
//!   through their headless Service) and `<a-b-c-d>.<svc>.<ns>.svc.cluster.local` for every
//!   endpoint of a headless Service;
//! * `_<port>._<proto>.<svc>.<ns>.svc.cluster.local` SRV for named ports;
//! * `<a-b-c-d>.<ns>.pod.cluster.local` A → a.b.c.d.
//!
//! Names outside `cluster.local` are relayed to the node's own resolvers (`/etc/resolv.conf`);
//! names inside it that do not exist are NXDOMAIN, names that exist without records of the asked
//! type get an empty answer. [`pod_resolv_conf`] writes pods' `/etc/resolv.conf` per dnsPolicy.
//!
//! The address lives on the node's loopback device, so pods reach it through their gateway
//! like any address of the node, with no Service rule and no extra hop. The codec is the few
//! bytes of RFC 1035 a stub resolver uses: one question; A, SRV and CNAME answers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use keel_proto::ServiceTable;
use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::rtnl::Rtnl;

/// The cluster DNS address (kubeadm's default `clusterDNS`).
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const DOMAIN: &str = "cluster.local";
const TTL: u32 = 5;
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_SRV: u16 = 33;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_SERVFAIL: u8 = 2;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// A parsed query: its id, flags, the question's name (lower case, no trailing dot), type and
/// class, and where the question section ends.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub rd: bool,
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    question_end: usize,
}

/// Parses a query with exactly one question; `None` for anything else.
pub fn parse_query(b: &[u8]) -> Option<Query> {
    if b.len() < 12 || b[2] & 0x80 != 0 || u16::from_be_bytes([b[4], b[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *b.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression pointers do not occur in a question
        }
        labels.push(String::from_utf8_lossy(b.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*b.get(i + 2)?, *b.get(i + 3)?]);
    Some(Query {
        id: u16::from_be_bytes([b[0], b[1]]),
        rd: b[2] & 0x01 != 0,
        name: labels.join("."),
        qtype,
        qclass,
        question_end: i + 4,
    })
}

/// One resource record's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    A(Ipv4Addr),
    Srv { port: u16, target: String },
    Cname(String),
}

impl Record {
    fn rtype(&self) -> u16 {
        match self {
            Record::A(_) => TYPE_A,
            Record::Srv { .. } => TYPE_SRV,
            Record::Cname(_) => TYPE_CNAME,
        }
    }
}

/// `name` as DNS labels (no compression).
fn push_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let l = &label.as_bytes()[..label.len().min(63)];
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
}

/// The answer to `q` (whose bytes are `raw`): `records` for the question's name, or `rcode`.
pub fn answer(raw: &[u8], q: &Query, records: &[Record], rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.question_end + 32 * records.len());
    out.extend_from_slice(&q.id.to_be_bytes());
    out.push(0x84 | u8::from(q.rd)); // QR, AA, RD as asked
    out.push(0x80 | (rcode & 0x0f)); // RA
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&raw[12..q.question_end]);
    for r in records {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name of the question
        out.extend_from_slice(&r.rtype().to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        let mut data = Vec::new();
        match r {
            Record::A(ip) => data.extend_from_slice(&ip.octets()),
            Record::Srv { port, target } => {
                data.extend_from_slice(&0u16.to_be_bytes()); // priority
                data.extend_from_slice(&100u16.to_be_bytes()); // weight
                data.extend_from_slice(&port.to_be_bytes());
                push_name(&mut data, target);
            }
            Record::Cname(target) => push_name(&mut data, target),
        }
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// `10.244.1.7` → `10-244-1-7`.
fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// Every cluster name of the table with its records.
pub fn records(t: &ServiceTable) -> HashMap<String, Vec<Record>> {
    let mut out: HashMap<String, Vec<Record>> = HashMap::new();
    let mut empty = Vec::new();
    let mut add = |name: String, r: Record| {
        let v = out.entry(name).or_default();
        if !v.contains(&r) {
            v.push(r);
        }
    };
    for s in &t.services {
        let base = format!("{}.{}.svc.{DOMAIN}", s.name, s.namespace);
        if !s.external_name.is_empty() {
            add(base, Record::Cname(s.external_name.clone()));
            continue;
        }
        if s.headless {
            let mut any = false;
            for e in &s.addresses {
                let Ok(ip) = e.ip.parse::<Ipv4Addr>() else {
                    continue;
                };
                any = true;
                add(base.clone(), Record::A(ip));
                add(format!("{}.{base}", dashed(ip)), Record::A(ip));
                if !e.hostname.is_empty() {
                    add(
                        format!("{}.{base}", e.hostname.to_ascii_lowercase()),
                        Record::A(ip),
                    );
                }
            }
            if !any {
                empty.push(base.clone()); // exists, no addresses yet
            }
        } else if let Ok(ip) = s.cluster_ip.parse::<Ipv4Addr>() {
            add(base.clone(), Record::A(ip));
        } else {
            continue;
        }
        for p in s.ports.iter().filter(|p| !p.name.is_empty()) {
            let srv = format!(
                "_{}._{}.{base}",
                p.name.to_ascii_lowercase(),
                p.protocol.to_ascii_lowercase()
            );
            if s.headless {
                for e in &p.endpoints {
                    let Ok(ip) = e.ip.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    let host = if e.hostname.is_empty() {
                        dashed(ip)
                    } else {
                        e.hostname.to_ascii_lowercase()
                    };
                    let port = u16::try_from(e.port).unwrap_or(0);
                    add(
                        srv.clone(),
                        Record::Srv {
                            port,
                            target: format!("{host}.{base}"),
                        },
                    );
                }
            } else {
                let port = u16::try_from(p.port).unwrap_or(0);
                add(
                    srv,
                    Record::Srv {
                        port,
                        target: base.clone(),
                    },
                );
            }
        }
    }
    for name in empty {
        out.entry(name).or_default();
    }
    out
}

/// `a-b-c-d.<ns>.pod.cluster.local` → a.b.c.d.
fn pod_name_address(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(&format!(".pod.{DOMAIN}"))?;
    let (ip, ns) = rest.split_once('.')?;
    if ns.is_empty() || ns.contains('.') {
        return None;
    }
    ip.replace('-', ".").parse().ok()
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    Answer(Vec<Record>, u8),
    Relay,
}

/// Resolves `q` from `records`: cluster names are answered (empty for types they have no
/// records of, NXDOMAIN for unknown names), everything else is relayed.
pub fn resolve(q: &Query, records: &HashMap<String, Vec<Record>>) -> Resolution {
    if q.name != DOMAIN && !q.name.ends_with(&format!(".{DOMAIN}")) {
        return Resolution::Relay;
    }
    let pod;
    let found = match records.get(&q.name) {
        Some(r) => r,
        None => match pod_name_address(&q.name) {
            Some(ip) => {
                pod = vec![Record::A(ip)];
                &pod
            }
            None => return Resolution::Answer(vec![], RCODE_NXDOMAIN),
        },
    };
    if q.qclass != CLASS_IN {
        return Resolution::Answer(vec![], 0);
    }
    let wanted = found
        .iter()
        .filter(|r| q.qtype == TYPE_ANY || r.rtype() == q.qtype || r.rtype() == TYPE_CNAME)
        .cloned()
        .collect();
    Resolution::Answer(wanted, 0)
}

/// A pod's `spec.dnsConfig`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PodDnsConfig {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<PodDnsOption>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PodDnsOption {
    pub name: String,
    pub value: Option<String>,
}

/// A pod's `/etc/resolv.conf` as the kubelet writes it, from its `dnsPolicy` (default
/// ClusterFirst), `dnsConfig`, namespace and hostNetwork, and the node's own resolv.conf:
/// ClusterFirst → the cluster DNS with the namespace's search path and `ndots:5` (the node's
/// resolvers for hostNetwork pods, unless ClusterFirstWithHostNet); Default → the node's;
/// None → only `dnsConfig`, which the other policies merge in (nameservers and searches
/// appended, options by name).
pub fn pod_resolv_conf(
    policy: Option<&str>,
    config: Option<&PodDnsConfig>,
    namespace: &str,
    host_network: bool,
    node_resolv_conf: &str,
) -> String {
    let mut node_servers = Vec::new();
    let mut node_searches = Vec::new();
    let mut node_options: Vec<(String, Option<String>)> = Vec::new();
    for line in node_resolv_conf.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => node_servers.extend(words.next().map(str::to_string)),
            Some("search" | "domain") => {
                node_searches = words.map(str::to_string).collect();
            }
            Some("options") => node_options.extend(words.map(|w| match w.split_once(':') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (w.to_string(), None),
            })),
            _ => {}
        }
    }
    let policy = policy.unwrap_or("ClusterFirst");
    let cluster = policy == "ClusterFirstWithHostNet" || (policy == "ClusterFirst" && !host_network);
    let (mut servers, mut searches, mut options) = match policy {
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        _ if cluster => {
            let mut searches = vec![
                format!("{namespace}.svc.{DOMAIN}"),
                format!("svc.{DOMAIN}"),
                DOMAIN.to_string(),
            ];
            searches.extend(node_searches);
            (
                vec![DNS_IP.to_string()],
                searches,
                vec![("ndots".to_string(), Some("5".to_string()))],
            )
        }
        _ => (node_servers, node_searches, node_options),
    };
    if let Some(c) = config {
        for s in &c.nameservers {
            if !servers.contains(s) {
                servers.push(s.clone());
            }
        }
        for s in &c.searches {
            if !searches.contains(s) {
                searches.push(s.clone());
            }
        }
        for o in &c.options {
            match options.iter_mut().find(|(k, _)| *k == o.name) {
                Some(existing) => existing.1 = o.value.clone(),
                None => options.push((o.name.clone(), o.value.clone())),
            }
        }
    }
    servers.truncate(3);
    searches.truncate(32);
    let mut out = String::new();
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        let opts: Vec<String> = options
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}:{v}"),
                None => k.clone(),
            })
            .collect();
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

/// The node's upstream resolvers, from `/etc/resolv.conf` (never the cluster DNS itself).
fn upstreams() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| *a != DNS_IP)
        .map(|a| SocketAddr::from((a, 53)))
        .collect()
}

async fn relay(raw: Vec<u8>, q: Query, reply_to: SocketAddr, sock: Arc<UdpSocket>) {
    for up in upstreams() {
        let Ok(s) = UdpSocket::bind("0.0.0.0:0").await else {
            return;
        };
        if s.send_to(&raw, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(UPSTREAM_TIMEOUT, s.recv(&mut buf)).await {
            let _ = sock.send_to(&buf[..n], reply_to).await;
            return;
        }
    }
    let _ = sock
        .send_to(&answer(&raw, &q, &[], RCODE_SERVFAIL), reply_to)
        .await;
}

/// Puts [`DNS_IP`] on the loopback device (idempotent).
pub fn ensure_address() -> std::io::Result<()> {
    let mut r = Rtnl::open()?;
    let lo = r
        .link("lo")?
        .ok_or_else(|| std::io::Error::other("no loopback device"))?;
    r.add_addr(lo.index, DNS_IP, 32)
}

/// Serves cluster DNS on `sock` with the newest table of `tables` until the socket fails.
pub async fn serve(
    sock: UdpSocket,
    mut tables: watch::Receiver<Option<Arc<ServiceTable>>>,
) -> std::io::Result<()> {
    let sock = Arc::new(sock);
    let mut recs = HashMap::new();
    let mut buf = vec![0u8; 1500];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let (n, from) = r?;
                let raw = buf[..n].to_vec();
                let Some(q) = parse_query(&raw) else { continue };
                match resolve(&q, &recs) {
                    Resolution::Answer(recs, rcode) => {
                        let _ = sock.send_to(&answer(&raw, &q, &recs, rcode), from).await;
                    }
                    Resolution::Relay => {
                        tokio::spawn(relay(raw, q, from, sock.clone()));
                    }
                }
            }
            r = tables.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                recs = tables.borrow_and_update().as_deref().map(records).unwrap_or_default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut b = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            b.push(l.len() as u8);
            b.extend_from_slice(l.as_bytes());
        }
        b.push(0);
        b.extend_from_slice(&qtype.to_be_bytes());
        b.extend_from_slice(&CLASS_IN.to_be_bytes());
        b
    }

    fn ep(ip: &str, port: u32, hostname: &str) -> keel_proto::ServiceEndpoint {
        keel_proto::ServiceEndpoint {
            ip: ip.into(),
            port,
            hostname: hostname.into(),
            ..Default::default()
        }
    }

    fn table() -> HashMap<String, Vec<Record>> {
        records(&ServiceTable {
            version: 1,
            services: vec![
                keel_proto::ClusterService {
                    namespace: "default".into(),
                    name: "echo".into(),
                    cluster_ip: "10.96.0.20".into(),
                    ports: vec![keel_proto::ClusterServicePort {
                        name: "http".into(),
                        protocol: "TCP".into(),
                        port: 80,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                keel_proto::ClusterService {
                    namespace: "default".into(),
                    name: "db".into(),
                    headless: true,
                    addresses: vec![ep("10.244.1.5", 0, "db-0"), ep("10.244.2.5", 0, "")],
                    ports: vec![keel_proto::ClusterServicePort {
                        name: "sql".into(),
                        protocol: "TCP".into(),
                        port: 5432,
                        endpoints: vec![ep("10.244.1.5", 5432, "db-0"), ep("10.244.2.5", 5432, "")],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                keel_proto::ClusterService {
                    namespace: "default".into(),
                    name: "empty".into(),
                    headless: true,
                    ..Default::default()
                },
                keel_proto::ClusterService {
                    namespace: "default".into(),
                    name: "ext".into(),
                    external_name: "example.org".into(),
                    ..Default::default()
                },
            ],
        })
    }

    fn ask(name: &str, qtype: u16) -> Resolution {
        resolve(&parse_query(&query(name, qtype)).unwrap(), &table())
    }

    fn a(ips: &[&str]) -> Resolution {
        Resolution::Answer(ips.iter().map(|i| Record::A(i.parse().unwrap())).collect(), 0)
    }

    #[test]
    fn answers_services_and_refuses_unknown_cluster_names() {
        let raw = query("Echo.default.svc.cluster.local", TYPE_A);
        let q = parse_query(&raw).unwrap();
        assert_eq!(q.name, "echo.default.svc.cluster.local");
        assert!(q.rd);
        let Resolution::Answer(recs, 0) = resolve(&q, &table()) else {
            panic!("not answered")
        };
        let a_ = answer(&raw, &q, &recs, 0);
        assert_eq!(&a_[0..2], &[0x12, 0x34]);
        assert_eq!(a_[2] & 0x80, 0x80, "a response");
        assert_eq!(u16::from_be_bytes([a_[6], a_[7]]), 1, "one answer");
        assert_eq!(&a_[a_.len() - 4..], &[10, 96, 0, 20]);

        let raw = query("nope.default.svc.cluster.local", TYPE_A);
        let q = parse_query(&raw).unwrap();
        assert_eq!(resolve(&q, &table()), Resolution::Answer(vec![], RCODE_NXDOMAIN));
        let a_ = answer(&raw, &q, &[], RCODE_NXDOMAIN);
        assert_eq!(a_[3] & 0x0f, RCODE_NXDOMAIN);

        // AAAA for a service: no error, no answer.
        assert_eq!(
            ask("echo.default.svc.cluster.local", 28),
            Resolution::Answer(vec![], 0)
        );
        // Outside the cluster domain: relayed.
        assert_eq!(ask("example.org", TYPE_A), Resolution::Relay);
    }

    #[test]
    fn headless_services_pods_srv_and_external_names() {
        assert_eq!(
            ask("db.default.svc.cluster.local", TYPE_A),
            a(&["10.244.1.5", "10.244.2.5"])
        );
        assert_eq!(
            ask("db-0.db.default.svc.cluster.local", TYPE_A),
            a(&["10.244.1.5"])
        );
        assert_eq!(
            ask("10-244-2-5.db.default.svc.cluster.local", TYPE_A),
            a(&["10.244.2.5"])
        );
        assert_eq!(
            ask("db-9.db.default.svc.cluster.local", TYPE_A),
            Resolution::Answer(vec![], RCODE_NXDOMAIN)
        );
        // A headless service without ready endpoints exists, with no addresses.
        assert_eq!(
            ask("empty.default.svc.cluster.local", TYPE_A),
            Resolution::Answer(vec![], 0)
        );
        assert_eq!(
            ask("10-244-3-4.default.pod.cluster.local", TYPE_A),
            a(&["10.244.3.4"])
        );
        assert_eq!(
            ask("_http._tcp.echo.default.svc.cluster.local", TYPE_SRV),
            Resolution::Answer(
                vec![Record::Srv {
                    port: 80,
                    target: "echo.default.svc.cluster.local".into()
                }],
                0
            )
        );
        assert_eq!(
            ask("_sql._tcp.db.default.svc.cluster.local", TYPE_SRV),
            Resolution::Answer(
                vec![
                    Record::Srv {
                        port: 5432,
                        target: "db-0.db.default.svc.cluster.local".into()
                    },
                    Record::Srv {
                        port: 5432,
                        target: "10-244-2-5.db.default.svc.cluster.local".into()
                    },
                ],
                0
            )
        );
        assert_eq!(
            ask("ext.default.svc.cluster.local", TYPE_A),
            Resolution::Answer(vec![Record::Cname("example.org".into())], 0)
        );
        // The SRV record's wire form: priority, weight, port, then the target's labels.
        let raw = query("_http._tcp.echo.default.svc.cluster.local", TYPE_SRV);
        let q = parse_query(&raw).unwrap();
        let Resolution::Answer(recs, 0) = resolve(&q, &table()) else {
            panic!()
        };
        let wire = answer(&raw, &q, &recs, 0);
        let mut target = Vec::new();
        push_name(&mut target, "echo.default.svc.cluster.local");
        assert!(wire.ends_with(&target));
        let rdata = &wire[wire.len() - target.len() - 6..];
        assert_eq!(&rdata[4..6], &80u16.to_be_bytes());
    }

    #[test]
    fn pods_resolv_conf_follows_dns_policy() {
        let node = "nameserver 10.0.2.3\nsearch lab.example\n";
        assert_eq!(
            pod_resolv_conf(None, None, "apps", false, node),
            "nameserver 10.96.0.10\nsearch apps.svc.cluster.local svc.cluster.local cluster.local lab.example\noptions ndots:5\n"
        );
        // hostNetwork with ClusterFirst falls back to the node's; WithHostNet keeps the cluster's.
        assert_eq!(
            pod_resolv_conf(Some("ClusterFirst"), None, "apps", true, node),
            node
        );
        assert!(
            pod_resolv_conf(Some("ClusterFirstWithHostNet"), None, "a", true, node)
                .starts_with("nameserver 10.96.0.10\n")
        );
        assert_eq!(pod_resolv_conf(Some("Default"), None, "apps", false, node), node);
        let config = PodDnsConfig {
            nameservers: vec!["1.2.3.4".into()],
            searches: vec!["my.dns.search.suffix".into()],
            options: vec![
                PodDnsOption {
                    name: "ndots".into(),
                    value: Some("2".into()),
                },
                PodDnsOption {
                    name: "edns0".into(),
                    value: None,
                },
            ],
        };
        assert_eq!(
            pod_resolv_conf(Some("None"), Some(&config), "apps", false, node),
            "nameserver 1.2.3.4\nsearch my.dns.search.suffix\noptions ndots:2 edns0\n"
        );
        assert_eq!(
            pod_resolv_conf(None, Some(&config), "default", false, ""),
            "nameserver 10.96.0.10\nnameserver 1.2.3.4\nsearch default.svc.cluster.local svc.cluster.local cluster.local my.dns.search.suffix\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn garbage_is_not_a_query() {
        assert!(parse_query(&[0u8; 5]).is_none());
        let mut r = query("a.b", TYPE_A);
        r[2] |= 0x80; // a response, not a query
        assert!(parse_query(&r).is_none());
        let r = query("a.b", TYPE_A);
        assert!(parse_query(&r[..r.len() - 2]).is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_over_udp() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let (tx, rx) = watch::channel(None);
        tokio::spawn(serve(sock, rx));
        tx.send_replace(Some(Arc::new(ServiceTable {
            version: 1,
            services: vec![keel_proto::ClusterService {
                namespace: "kube-system".into(),
                name: "web".into(),
                cluster_ip: "10.96.7.7".into(),
                ports: vec![],
                ..Default::default()
            }],
        })));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 512];
        // The table may land just after the first query: ask until answered (deadline 5 s).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            client
                .send_to(&query("web.kube-system.svc.cluster.local", TYPE_A), addr)
                .await
                .unwrap();
            let n = tokio::time::timeout(Duration::from_secs(1), client.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            if buf[3] & 0x0f == 0 {
                assert_eq!(&buf[n - 4..n], &[10, 96, 7, 7]);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
