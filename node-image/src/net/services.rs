//! Services in the kernel datapath: ClusterIP and NodePort → endpoints as nftables DNAT rules
//! over netlink, kube-proxy's iptables mode redone in nftables without maps:
//!
//! ```text
//! table ip keel-services {
//!   chain prerouting { type nat hook prerouting priority dstnat; … }   (from pods and peers)
//!   chain output     { type nat hook output priority dstnat; … }       (from the node itself)
//!   # per service port, per endpoint i of n:
//!   ip daddr 10.96.0.20 meta l4proto tcp th dport 80 numgen random mod (n-i) 0 dnat to EP_i
//!   # (the last endpoint without the numgen test); in prerouting, first, per endpoint:
//!   ip daddr 10.96.0.20 meta l4proto tcp th dport 80 ip saddr EP_i meta mark set 0x4000
//!   # NodePorts (prerouting only: any address of the node, from outside or from pods):
//!   fib daddr type local meta l4proto tcp th dport 30000 meta mark set 0x4000   (policy Cluster)
//!   fib daddr type local meta l4proto tcp th dport 30000 numgen … dnat to EP_i
//! }
//! ```
//!
//! Rule i is tried only when rules 0..i did not match, and matches with probability 1/(n-i), so
//! every endpoint gets 1/n of new connections; conntrack keeps established ones where they
//! are. NodePort connections with `externalTrafficPolicy: Cluster` are marked and so
//! masqueraded on the way out ([`super::masquerade`]): the endpoint may be on another node, and
//! its replies must come back through this one. With `Local` only this node's endpoints serve
//! the NodePort and the client's address is kept. The whole table is replaced in one atomic
//! batch whenever the service table changes.

use std::io;
use std::net::Ipv4Addr;

use super::nft::*;
use super::nlmsg::{with_ack, Conn, Msg, NLM_F_APPEND, NLM_F_CREATE};

const NFTA_META_SREG: u16 = 3;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_IP_PRI_NAT_DST: i32 = -100;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFT_NG_RANDOM: u32 = 1;
const NFT_NAT_DNAT: u32 = 1;
const NFT_REG_2: u32 = 2;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;
/// The packet mark of hairpin connections (kube-proxy's masquerade bit).
pub const HAIRPIN_MARK: u32 = 0x4000;

pub const TABLE: &str = "keel-services";

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        }
    }

    /// `TCP`/`UDP` as Kubernetes spells them; anything else (SCTP) is not served.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "" | "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// One port of a Service's ClusterIP with the endpoints behind it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    pub cluster_ip: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
    /// Ready endpoints: (pod IP, target port).
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    /// The NodePort, 0 for none.
    pub node_port: u16,
    /// `externalTrafficPolicy: Local`: the NodePort serves only [`Self::local_endpoints`],
    /// without masquerade.
    pub external_local: bool,
    /// The endpoints on this node.
    pub local_endpoints: Vec<(Ipv4Addr, u16)>,
}

impl ServicePort {
    /// A ClusterIP-only port.
    #[cfg(test)]
    pub fn cluster_ip(
        cluster_ip: Ipv4Addr,
        protocol: Protocol,
        port: u16,
        endpoints: Vec<(Ipv4Addr, u16)>,
    ) -> ServicePort {
        ServicePort {
            cluster_ip,
            protocol,
            port,
            endpoints,
            node_port: 0,
            external_local: false,
            local_endpoints: Vec::new(),
        }
    }

    /// The endpoints behind the NodePort.
    fn node_port_endpoints(&self) -> &[(Ipv4Addr, u16)] {
        if self.external_local {
            &self.local_endpoints
        } else {
            &self.endpoints
        }
    }
}

/// What a rule's packets are addressed to.
#[derive(Clone, Copy)]
enum Dest {
    ClusterIp,
    NodePort,
}

fn expr(m: Msg, name: &str, body: impl FnOnce(Msg) -> Msg) -> Msg {
    body(
        m.begin(NFTA_LIST_ELEM)
            .str(NFTA_EXPR_NAME, name)
            .begin(NFTA_EXPR_DATA),
    )
    .end()
    .end()
}

fn cmp_eq(m: Msg, value: &[u8]) -> Msg {
    expr(m, "cmp", |m| {
        m.be32(NFTA_CMP_SREG, NFT_REG_1)
            .be32(NFTA_CMP_OP, NFT_CMP_EQ)
            .begin(NFTA_CMP_DATA)
            .attr(NFTA_DATA_VALUE, value)
            .end()
    })
}

fn payload(m: Msg, base: u32, offset: u32, len: u32) -> Msg {
    expr(m, "payload", |m| {
        m.be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
            .be32(NFTA_PAYLOAD_BASE, base)
            .be32(NFTA_PAYLOAD_OFFSET, offset)
            .be32(NFTA_PAYLOAD_LEN, len)
    })
}

fn immediate(m: Msg, reg: u32, value: &[u8]) -> Msg {
    expr(m, "immediate", |m| {
        m.be32(NFTA_IMMEDIATE_DREG, reg)
            .begin(NFTA_IMMEDIATE_DATA)
            .attr(NFTA_DATA_VALUE, value)
            .end()
    })
}

/// `ip daddr CLUSTER_IP meta l4proto P th dport PORT` (or, for the NodePort,
/// `fib daddr type local meta l4proto P th dport NODE_PORT`), the start of every rule of `p`.
fn match_service(chain: &str, p: &ServicePort, dest: Dest) -> Msg {
    let m = nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND)
        .str(NFTA_RULE_TABLE, TABLE)
        .str(NFTA_RULE_CHAIN, chain)
        .begin(NFTA_RULE_EXPRESSIONS);
    let (m, port) = match dest {
        Dest::ClusterIp => {
            let m = payload(m, NFT_PAYLOAD_NETWORK_HEADER, IPV4_DADDR, 4);
            (cmp_eq(m, &p.cluster_ip.octets()), p.port)
        }
        Dest::NodePort => {
            let m = expr(m, "fib", |m| {
                m.be32(NFTA_FIB_DREG, NFT_REG_1)
                    .be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
                    .be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR)
            });
            (cmp_eq(m, &RTN_LOCAL.to_ne_bytes()), p.node_port)
        }
    };
    let m = expr(m, "meta", |m| {
        m.be32(NFTA_META_KEY, NFT_META_L4PROTO)
            .be32(NFTA_META_DREG, NFT_REG_1)
    });
    let m = cmp_eq(m, &[p.protocol.number()]);
    let m = payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
    cmp_eq(m, &port.to_be_bytes())
}

/// `… meta mark set 0x4000`: the rest of the rule's connection is masqueraded.
fn set_mark(m: Msg) -> Msg {
    let m = immediate(m, NFT_REG_1, &HAIRPIN_MARK.to_ne_bytes());
    expr(m, "meta", |m| {
        m.be32(NFTA_META_KEY, NFT_META_MARK)
            .be32(NFTA_META_SREG, NFT_REG_1)
    })
}

/// Hairpin: a connection from endpoint `i` of `p` to its own Service is marked, and
/// masqueraded on the way out ([`super::masquerade`]), or the endpoint would get a packet
/// from itself and answer it directly.
fn hairpin_rule(chain: &str, p: &ServicePort, i: usize) -> Msg {
    let m = match_service(chain, p, Dest::ClusterIp);
    let m = payload(m, NFT_PAYLOAD_NETWORK_HEADER, IPV4_SADDR, 4);
    let m = cmp_eq(m, &p.endpoints[i].0.octets());
    set_mark(m).end()
}

/// NodePort connections (policy Cluster) are marked for masquerade.
fn node_port_mark_rule(chain: &str, p: &ServicePort) -> Msg {
    set_mark(match_service(chain, p, Dest::NodePort)).end()
}

/// The rule sending endpoint `i` of `endpoints` its share of new connections to `p` at `dest`.
fn endpoint_rule(chain: &str, p: &ServicePort, dest: Dest, endpoints: &[(Ipv4Addr, u16)], i: usize) -> Msg {
    let n = endpoints.len();
    let (ip, port) = endpoints[i];
    let mut m = match_service(chain, p, dest);
    if i + 1 < n {
        m = expr(m, "numgen", |m| {
            m.be32(NFTA_NG_DREG, NFT_REG_1)
                .be32(NFTA_NG_MODULUS, (n - i) as u32)
                .be32(NFTA_NG_TYPE, NFT_NG_RANDOM)
        });
        m = cmp_eq(m, &0u32.to_ne_bytes());
    }
    let m = immediate(m, NFT_REG_1, &ip.octets());
    let m = immediate(m, NFT_REG_2, &port.to_be_bytes());
    let m = expr(m, "nat", |m| {
        m.be32(NFTA_NAT_TYPE, NFT_NAT_DNAT)
            .be32(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV4))
            .be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1)
            .be32(NFTA_NAT_REG_PROTO_MIN, NFT_REG_2)
    });
    m.end()
}

fn batch(conn: &mut Conn, ports: &[ServicePort]) -> (Vec<u8>, Vec<u32>) {
    let mut bytes = Vec::new();
    let mut acked = Vec::new();
    let mut push = |conn: &mut Conn, m: Msg, ack: bool| {
        let seq = conn.next_seq();
        let b = m.finish(seq);
        if ack {
            acked.push(seq);
            bytes.extend(with_ack(b));
        } else {
            bytes.extend(b);
        }
    };
    push(conn, batch_marker(NFNL_MSG_BATCH_BEGIN), false);
    push(
        conn,
        nft(NFT_MSG_NEWTABLE, NLM_F_CREATE).str(NFTA_TABLE_NAME, TABLE),
        true,
    );
    push(conn, nft(NFT_MSG_DELTABLE, 0).str(NFTA_TABLE_NAME, TABLE), true);
    push(
        conn,
        nft(NFT_MSG_NEWTABLE, NLM_F_CREATE).str(NFTA_TABLE_NAME, TABLE),
        true,
    );
    for (chain, hook) in [("prerouting", NF_INET_PRE_ROUTING), ("output", NF_INET_LOCAL_OUT)] {
        let c = nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE)
            .str(NFTA_CHAIN_TABLE, TABLE)
            .str(NFTA_CHAIN_NAME, chain)
            .begin(NFTA_CHAIN_HOOK)
            .be32(NFTA_HOOK_HOOKNUM, hook)
            .be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_DST as u32)
            .end()
            .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
            .str(NFTA_CHAIN_TYPE, "nat");
        push(conn, c, true);
        for p in ports {
            if chain == "prerouting" {
                for i in 0..p.endpoints.len() {
                    push(conn, hairpin_rule(chain, p, i), true);
                }
            }
            for i in 0..p.endpoints.len() {
                push(
                    conn,
                    endpoint_rule(chain, p, Dest::ClusterIp, &p.endpoints, i),
                    true,
                );
            }
        }
        if chain == "prerouting" {
            for p in ports.iter().filter(|p| p.node_port != 0) {
                let eps = p.node_port_endpoints();
                if eps.is_empty() {
                    continue;
                }
                if !p.external_local {
                    push(conn, node_port_mark_rule(chain, p), true);
                }
                for i in 0..eps.len() {
                    push(conn, endpoint_rule(chain, p, Dest::NodePort, eps, i), true);
                }
            }
        }
    }
    push(conn, batch_marker(NFNL_MSG_BATCH_END), false);
    (bytes, acked)
}

/// Replaces the node's service rules with `ports` (ports without endpoints get no rule).
pub fn apply(ports: &[ServicePort]) -> io::Result<()> {
    let mut conn = Conn::open(libc::NETLINK_NETFILTER)?;
    let (bytes, acked) = batch(&mut conn, ports);
    conn.send_and_wait(&bytes, &acked)
}

/// The service ports of a control-plane table as node `node` serves them (headless and
/// ExternalName services have none); malformed entries are named in the error list.
pub fn from_proto(t: &keel_proto::ServiceTable, node: &str) -> (Vec<ServicePort>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for s in t
        .services
        .iter()
        .filter(|s| !s.headless && !s.cluster_ip.is_empty())
    {
        for p in &s.ports {
            let parsed = (|| {
                let endpoint =
                    |e: &keel_proto::ServiceEndpoint| Some((e.ip.parse().ok()?, u16::try_from(e.port).ok()?));
                Some(ServicePort {
                    cluster_ip: s.cluster_ip.parse().ok()?,
                    protocol: Protocol::parse(&p.protocol)?,
                    port: u16::try_from(p.port).ok()?,
                    endpoints: p.endpoints.iter().map(endpoint).collect::<Option<Vec<_>>>()?,
                    node_port: u16::try_from(p.node_port).ok()?,
                    external_local: s.external_traffic_local,
                    local_endpoints: p
                        .endpoints
                        .iter()
                        .filter(|e| e.node_name == node)
                        .map(endpoint)
                        .collect::<Option<Vec<_>>>()?,
                })
            })();
            match parsed {
                Some(sp) => ok.push(sp),
                None => bad.push(format!("{}/{}:{}", s.namespace, s.name, p.port)),
            }
        }
    }
    ok.sort();
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::nlmsg::replies;

    fn port(n: usize) -> ServicePort {
        ServicePort::cluster_ip(
            Ipv4Addr::new(10, 96, 0, 20),
            Protocol::Tcp,
            80,
            (0..n)
                .map(|i| (Ipv4Addr::new(10, 244, 1, 2 + i as u8), 8080))
                .collect(),
        )
    }

    fn has(m: &[u8], needle: &[u8]) -> bool {
        m.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn one_rule_per_endpoint_per_chain_and_numgen_on_all_but_the_last() {
        let Ok(mut conn) = Conn::open(libc::NETLINK_NETFILTER) else {
            return;
        };
        let (bytes, acked) = batch(&mut conn, &[port(3), port(0)]);
        let msgs: Vec<Vec<u8>> = replies(&bytes).map(|r| r.payload.to_vec()).collect();
        // begin, table, delete, table, prerouting (chain, 3 hairpin marks, 3 rules),
        // output (chain, 3 rules), end
        assert_eq!(msgs.len(), 4 + 7 + 4 + 1);
        assert_eq!(acked.len(), msgs.len() - 2);
        assert!(msgs[5..8].iter().all(|m| !has(m, b"nat\0") && has(m, b"meta\0")));
        let rules: Vec<&Vec<u8>> = msgs[8..11].iter().collect();
        assert!(has(rules[0], b"numgen\0") && has(rules[1], b"numgen\0"));
        assert!(!has(rules[2], b"numgen\0"));
        assert!(has(rules[2], &[10, 244, 1, 4]));
        // Moduli 3 then 2: uniform shares.
        assert!(has(rules[0], &3u32.to_be_bytes()) && has(rules[1], &2u32.to_be_bytes()));
    }

    #[test]
    fn node_ports_are_marked_for_masquerade_unless_local() {
        let Ok(mut conn) = Conn::open(libc::NETLINK_NETFILTER) else {
            return;
        };
        let mut cluster = port(2);
        cluster.node_port = 30001;
        let mut local = port(2);
        local.cluster_ip = Ipv4Addr::new(10, 96, 0, 21);
        local.node_port = 30002;
        local.external_local = true;
        local.local_endpoints = vec![(Ipv4Addr::new(10, 244, 1, 3), 8080)];
        let (bytes, _) = batch(&mut conn, &[cluster, local]);
        let msgs: Vec<Vec<u8>> = replies(&bytes).map(|r| r.payload.to_vec()).collect();
        let fib: Vec<&Vec<u8>> = msgs.iter().filter(|m| has(m, b"fib\0")).collect();
        // Cluster: a mark rule and two endpoint rules; Local: one endpoint rule, no mark.
        assert_eq!(fib.len(), 4);
        assert!(fib.iter().all(|m| has(m, b"prerouting\0")));
        assert!(has(fib[0], &30001u16.to_be_bytes()) && !has(fib[0], b"nat\0"));
        assert!(has(fib[1], b"nat\0") && has(fib[2], b"nat\0"));
        assert!(has(fib[3], &30002u16.to_be_bytes()) && has(fib[3], &[10, 244, 1, 3]));
        assert!(!has(fib[3], b"numgen\0"));
    }

    #[test]
    fn control_plane_tables_are_checked() {
        let ep = |ip: &str, node: &str| keel_proto::ServiceEndpoint {
            ip: ip.into(),
            port: 8080,
            node_name: node.into(),
            hostname: String::new(),
        };
        let t = keel_proto::ServiceTable {
            version: 1,
            services: vec![
                keel_proto::ClusterService {
                    namespace: "default".into(),
                    name: "web".into(),
                    cluster_ip: "10.96.0.20".into(),
                    external_traffic_local: true,
                    ports: vec![
                        keel_proto::ClusterServicePort {
                            protocol: "TCP".into(),
                            port: 80,
                            node_port: 30001,
                            endpoints: vec![ep("10.244.1.2", "keel-1"), ep("10.244.2.2", "keel-2")],
                            ..Default::default()
                        },
                        keel_proto::ClusterServicePort {
                            protocol: "SCTP".into(),
                            port: 9,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                keel_proto::ClusterService {
                    namespace: "default".into(),
                    name: "headless".into(),
                    headless: true,
                    ports: vec![keel_proto::ClusterServicePort {
                        protocol: "TCP".into(),
                        port: 80,
                        endpoints: vec![ep("10.244.1.9", "keel-1")],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        };
        let (ok, bad) = from_proto(&t, "keel-1");
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].endpoints.len(), 2);
        assert_eq!(ok[0].local_endpoints, vec![(Ipv4Addr::new(10, 244, 1, 2), 8080)]);
        assert_eq!((ok[0].node_port, ok[0].external_local), (30001, true));
        assert_eq!(bad, ["default/web:9"]);
    }
}
