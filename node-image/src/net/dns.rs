//! Cluster DNS, served by every node itself at `10.96.0.10:53` (UDP): A records
//! `<service>.<namespace>.svc.cluster.local` → the Service's ClusterIP, from the service table
//! the control plane pushes. Names outside `cluster.local` are relayed to the node's own
//! resolvers (`/etc/resolv.conf`); names inside it that do not exist are NXDOMAIN.
//!
//! The address lives on the node's loopback device, so pods reach it through their gateway
//! like any address of the node, with no Service rule and no extra hop. The codec is the few
//! bytes of RFC 1035 a stub resolver uses: one question, A answers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use keel_proto::ServiceTable;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::rtnl::Rtnl;

/// The cluster DNS address (kubeadm's default `clusterDNS`).
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const DOMAIN: &str = "cluster.local";
const TTL: u32 = 5;
const TYPE_A: u16 = 1;
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

/// The answer to `q` (whose bytes are `raw`): `answers` as A records, or `rcode`.
pub fn answer(raw: &[u8], q: &Query, answers: &[Ipv4Addr], rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.question_end + 16 * answers.len());
    out.extend_from_slice(&q.id.to_be_bytes());
    out.push(0x84 | u8::from(q.rd)); // QR, AA, RD as asked
    out.push(0x80 | (rcode & 0x0f)); // RA
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&raw[12..q.question_end]);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name of the question
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// `name.namespace.svc.cluster.local` → ClusterIP.
pub fn records(t: &ServiceTable) -> HashMap<String, Ipv4Addr> {
    t.services
        .iter()
        .filter_map(|s| {
            let ip = s.cluster_ip.parse().ok()?;
            Some((format!("{}.{}.svc.{DOMAIN}", s.name, s.namespace), ip))
        })
        .collect()
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    Answer(Vec<Ipv4Addr>, u8),
    Relay,
}

/// Resolves `q` from `records`: cluster names are answered (empty for other types, NXDOMAIN
/// for unknown names), everything else is relayed.
pub fn resolve(q: &Query, records: &HashMap<String, Ipv4Addr>) -> Resolution {
    if q.name != DOMAIN && !q.name.ends_with(&format!(".{DOMAIN}")) {
        return Resolution::Relay;
    }
    match records.get(&q.name) {
        Some(ip) if q.qtype == TYPE_A && q.qclass == CLASS_IN => Resolution::Answer(vec![*ip], 0),
        Some(_) => Resolution::Answer(vec![], 0),
        None => Resolution::Answer(vec![], RCODE_NXDOMAIN),
    }
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
                    Resolution::Answer(ips, rcode) => {
                        let _ = sock.send_to(&answer(&raw, &q, &ips, rcode), from).await;
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

    fn table() -> HashMap<String, Ipv4Addr> {
        records(&ServiceTable {
            version: 1,
            services: vec![keel_proto::ClusterService {
                namespace: "default".into(),
                name: "echo".into(),
                cluster_ip: "10.96.0.20".into(),
                ports: vec![],
            }],
        })
    }

    #[test]
    fn answers_services_and_refuses_unknown_cluster_names() {
        let raw = query("Echo.default.svc.cluster.local", TYPE_A);
        let q = parse_query(&raw).unwrap();
        assert_eq!(q.name, "echo.default.svc.cluster.local");
        assert!(q.rd);
        let Resolution::Answer(ips, 0) = resolve(&q, &table()) else {
            panic!("not answered")
        };
        let a = answer(&raw, &q, &ips, 0);
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one answer");
        assert_eq!(&a[a.len() - 4..], &[10, 96, 0, 20]);

        let raw = query("nope.default.svc.cluster.local", TYPE_A);
        let q = parse_query(&raw).unwrap();
        assert_eq!(resolve(&q, &table()), Resolution::Answer(vec![], RCODE_NXDOMAIN));
        let a = answer(&raw, &q, &[], RCODE_NXDOMAIN);
        assert_eq!(a[3] & 0x0f, RCODE_NXDOMAIN);

        // AAAA for a service: no error, no answer.
        let q = parse_query(&query("echo.default.svc.cluster.local", 28)).unwrap();
        assert_eq!(resolve(&q, &table()), Resolution::Answer(vec![], 0));
        // Outside the cluster domain: relayed.
        let q = parse_query(&query("example.org", TYPE_A)).unwrap();
        assert_eq!(resolve(&q, &table()), Resolution::Relay);
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
