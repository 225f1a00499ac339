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

use std::collections::BTreeMap;
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
const NFT_MSG_NEWSET: u16 = 9;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
/// nft's `ipv4_addr` datatype (for `nft list` to print the set).
const NFT_TYPE_IPADDR: u32 = 7;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_DYNSET_SET_NAME: u16 = 1;
const NFTA_DYNSET_OP: u16 = 3;
const NFTA_DYNSET_SREG_KEY: u16 = 4;
const NFTA_DYNSET_TIMEOUT: u16 = 6;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_DELSET: u16 = 11;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const NFT_REG_VERDICT: u32 = 0;
/// A full rebuild at least this often, whatever changed (a table someone deleted comes back).
const FULL_REBUILD: std::time::Duration = std::time::Duration::from_secs(600);
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
    /// `sessionAffinity: ClientIP`: seconds a client keeps its endpoint (0: no affinity).
    pub affinity_seconds: u32,
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
            affinity_seconds: 0,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    ClusterIp,
    NodePort,
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
            (cmp(m, NFT_CMP_EQ, &p.cluster_ip.octets()), p.port)
        }
        Dest::NodePort => {
            let m = expr(m, "fib", |m| {
                m.be32(NFTA_FIB_DREG, NFT_REG_1)
                    .be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
                    .be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR)
            });
            (cmp(m, NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes()), p.node_port)
        }
    };
    let m = expr(m, "meta", |m| {
        m.be32(NFTA_META_KEY, NFT_META_L4PROTO)
            .be32(NFTA_META_DREG, NFT_REG_1)
    });
    let m = cmp(m, NFT_CMP_EQ, &[p.protocol.number()]);
    let m = payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
    cmp(m, NFT_CMP_EQ, &port.to_be_bytes())
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
    let m = cmp(m, NFT_CMP_EQ, &p.endpoints[i].0.octets());
    set_mark(m).end()
}

/// NodePort connections (policy Cluster) are marked for masquerade.
fn node_port_mark_rule(chain: &str, p: &ServicePort) -> Msg {
    set_mark(match_service(chain, p, Dest::NodePort)).end()
}

/// The set of clients that stick to endpoint `ep` of the service port keyed `k` (its
/// ClusterIP and NodePort share it).
fn affinity_set(k: &str, ep: (Ipv4Addr, u16)) -> String {
    format!("aff-{k}-{:08x}-{}", u32::from(ep.0), ep.1)
}

/// Affinity: `… ip saddr @affinity-… dnat to EP`, before the shares: a client seen within the
/// timeout goes back to its endpoint.
fn affinity_rule(chain: &str, p: &ServicePort, dest: Dest, k: &str, ep: (Ipv4Addr, u16)) -> Msg {
    let m = match_service(chain, p, dest);
    let m = payload(m, NFT_PAYLOAD_NETWORK_HEADER, IPV4_SADDR, 4);
    let m = expr(m, "lookup", |m| {
        m.str(NFTA_LOOKUP_SET, &affinity_set(k, ep))
            .be32(NFTA_LOOKUP_SREG, NFT_REG_1)
    });
    dnat(m, ep).end()
}

/// `… dnat to IP:PORT`.
fn dnat(m: Msg, (ip, port): (Ipv4Addr, u16)) -> Msg {
    let m = immediate(m, NFT_REG_1, &ip.octets());
    let m = immediate(m, NFT_REG_2, &port.to_be_bytes());
    expr(m, "nat", |m| {
        m.be32(NFTA_NAT_TYPE, NFT_NAT_DNAT)
            .be32(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV4))
            .be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1)
            .be32(NFTA_NAT_REG_PROTO_MIN, NFT_REG_2)
    })
}

/// The rule sending endpoint `i` of `endpoints` its share of new connections to `p` at `dest`;
/// with affinity (`Some(k)`, the port's key), the client is remembered for the endpoint.
fn endpoint_rule(
    chain: &str,
    p: &ServicePort,
    dest: Dest,
    endpoints: &[(Ipv4Addr, u16)],
    i: usize,
    affinity: Option<&str>,
) -> Msg {
    let n = endpoints.len();
    let mut m = match_service(chain, p, dest);
    if i + 1 < n {
        m = expr(m, "numgen", |m| {
            m.be32(NFTA_NG_DREG, NFT_REG_1)
                .be32(NFTA_NG_MODULUS, (n - i) as u32)
                .be32(NFTA_NG_TYPE, NFT_NG_RANDOM)
        });
        m = cmp(m, NFT_CMP_EQ, &0u32.to_ne_bytes());
    }
    if let Some(k) = affinity {
        m = payload(m, NFT_PAYLOAD_NETWORK_HEADER, IPV4_SADDR, 4);
        m = expr(m, "dynset", |m| {
            m.str(NFTA_DYNSET_SET_NAME, &affinity_set(k, endpoints[i]))
                .be32(NFTA_DYNSET_OP, NFT_DYNSET_OP_UPDATE)
                .be32(NFTA_DYNSET_SREG_KEY, NFT_REG_1)
                .attr(
                    NFTA_DYNSET_TIMEOUT,
                    &(u64::from(p.affinity_seconds) * 1000).to_be_bytes(),
                )
        });
    }
    dnat(m, endpoints[i]).end()
}

/// The key of a service port in chain and set names: ClusterIP, protocol, port.
fn port_key(p: &ServicePort) -> String {
    let proto = match p.protocol {
        Protocol::Tcp => "t",
        Protocol::Udp => "u",
    };
    format!("{:08x}-{proto}{}", u32::from(p.cluster_ip), p.port)
}

/// What one regular chain holds: the rules of one service port's ClusterIP (`svc-KEY`) or
/// NodePort (`np-KEY`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ChainSpec {
    dest: Dest,
    port: ServicePort,
}

/// The whole rule set as chains, dispatch rules and affinity sets, so that two can be diffed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Program {
    chains: BTreeMap<String, ChainSpec>,
    /// (base chain, dispatched chain, the port whose match leads there), in order.
    dispatch: Vec<(&'static str, String, Dest, ServicePort)>,
    /// Affinity set name → timeout seconds.
    sets: BTreeMap<String, u32>,
}

impl Program {
    fn of(ports: &[ServicePort]) -> Program {
        let mut prog = Program::default();
        for p in ports {
            let key = port_key(p);
            // Dispatch keys on the address, not the endpoints: an endpoint change touches only
            // the service's own chain.
            let mut bare = p.clone();
            bare.endpoints.clear();
            bare.local_endpoints.clear();
            let svc = format!("svc-{key}");
            prog.chains.insert(
                svc.clone(),
                ChainSpec {
                    dest: Dest::ClusterIp,
                    port: p.clone(),
                },
            );
            for base in ["prerouting", "output"] {
                prog.dispatch
                    .push((base, svc.clone(), Dest::ClusterIp, bare.clone()));
            }
            if p.node_port != 0 {
                let np = format!("np-{key}");
                prog.chains.insert(
                    np.clone(),
                    ChainSpec {
                        dest: Dest::NodePort,
                        port: p.clone(),
                    },
                );
                prog.dispatch
                    .push(("prerouting", np, Dest::NodePort, bare.clone()));
            }
            if p.affinity_seconds > 0 {
                for ep in &p.endpoints {
                    prog.sets.insert(affinity_set(&key, *ep), p.affinity_seconds);
                }
            }
        }
        prog
    }
}

/// `… jump CHAIN`.
fn jump(m: Msg, chain: &str) -> Msg {
    expr(m, "immediate", |m| {
        m.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
            .begin(NFTA_IMMEDIATE_DATA)
            .begin(NFTA_DATA_VERDICT)
            .be32(NFTA_VERDICT_CODE, NFT_JUMP as u32)
            .str(NFTA_VERDICT_CHAIN, chain)
            .end()
            .end()
    })
}

/// One batch under construction: bytes, and the sequence numbers that asked for an ACK.
struct Batch<'a> {
    conn: &'a mut Conn,
    bytes: Vec<u8>,
    acked: Vec<u32>,
    set_id: u32,
}

impl Batch<'_> {
    fn push(&mut self, m: Msg, ack: bool) {
        let seq = self.conn.next_seq();
        let b = m.finish(seq);
        if ack {
            self.acked.push(seq);
            self.bytes.extend(with_ack(b));
        } else {
            self.bytes.extend(b);
        }
    }

    fn new_chain(&mut self, name: &str) {
        self.push(
            nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE)
                .str(NFTA_CHAIN_TABLE, TABLE)
                .str(NFTA_CHAIN_NAME, name),
            true,
        );
    }

    /// Deletes every rule of `chain`.
    fn flush_chain(&mut self, chain: &str) {
        self.push(
            nft(NFT_MSG_DELRULE, 0)
                .str(NFTA_RULE_TABLE, TABLE)
                .str(NFTA_RULE_CHAIN, chain),
            true,
        );
    }

    fn new_set(&mut self, name: &str, seconds: u32) {
        self.set_id += 1;
        let m = nft(NFT_MSG_NEWSET, NLM_F_CREATE)
            .str(NFTA_SET_TABLE, TABLE)
            .str(NFTA_SET_NAME, name)
            .be32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL)
            .be32(NFTA_SET_KEY_TYPE, NFT_TYPE_IPADDR)
            .be32(NFTA_SET_KEY_LEN, 4)
            .be32(NFTA_SET_ID, self.set_id)
            .attr(NFTA_SET_TIMEOUT, &(u64::from(seconds) * 1000).to_be_bytes());
        self.push(m, true);
    }

    /// The rules of one service port's chain (none ask for an ACK: tens of thousands would
    /// flood the socket, and a failing one is answered anyway).
    fn chain_rules(&mut self, chain: &str, spec: &ChainSpec) {
        let p = &spec.port;
        let key = port_key(p);
        let affinity = (p.affinity_seconds > 0).then_some(key.as_str());
        let eps = match spec.dest {
            Dest::ClusterIp => {
                for i in 0..p.endpoints.len() {
                    self.push(hairpin_rule(chain, p, i), false);
                }
                &p.endpoints
            }
            Dest::NodePort => {
                let eps = p.node_port_endpoints();
                if !p.external_local && !eps.is_empty() {
                    self.push(node_port_mark_rule(chain, p), false);
                }
                eps
            }
        };
        if let Some(k) = affinity {
            for ep in eps {
                self.push(affinity_rule(chain, p, spec.dest, k, *ep), false);
            }
        }
        for i in 0..eps.len() {
            self.push(endpoint_rule(chain, p, spec.dest, eps, i, affinity), false);
        }
    }

    fn dispatch(&mut self, prog: &Program) {
        for (base, chain, dest, port) in &prog.dispatch {
            let m = match_service(base, port, *dest);
            self.push(jump(m, chain).end(), false);
        }
    }

    /// Ends the batch with an acknowledged no-op: the batch is done when it is.
    fn finish(mut self) -> (Vec<u8>, Vec<u32>) {
        self.push(
            nft(NFT_MSG_NEWTABLE, NLM_F_CREATE).str(NFTA_TABLE_NAME, TABLE),
            true,
        );
        self.push(batch_marker(NFNL_MSG_BATCH_END), false);
        (self.bytes, self.acked)
    }
}

fn begin(conn: &mut Conn) -> Batch<'_> {
    let mut b = Batch {
        conn,
        bytes: Vec::new(),
        acked: Vec::new(),
        set_id: 0,
    };
    b.push(batch_marker(NFNL_MSG_BATCH_BEGIN), false);
    b
}

/// The batch that replaces the whole table with `prog`.
fn full_batch(conn: &mut Conn, prog: &Program) -> (Vec<u8>, Vec<u32>) {
    let mut b = begin(conn);
    let table = || nft(NFT_MSG_NEWTABLE, NLM_F_CREATE).str(NFTA_TABLE_NAME, TABLE);
    b.push(table(), true);
    b.push(nft(NFT_MSG_DELTABLE, 0).str(NFTA_TABLE_NAME, TABLE), true);
    b.push(table(), true);
    for (name, seconds) in &prog.sets {
        b.new_set(name, *seconds);
    }
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
        b.push(c, true);
    }
    for (name, spec) in &prog.chains {
        b.new_chain(name);
        b.chain_rules(name, spec);
    }
    b.dispatch(prog);
    b.finish()
}

/// The batch that turns `old` into `new`: only the chains whose service port changed are
/// rewritten; the dispatch rules only when the set of addresses changed. `None` when nothing
/// changed.
fn diff_batch(conn: &mut Conn, old: &Program, new: &Program) -> Option<(Vec<u8>, Vec<u32>)> {
    if old == new {
        return None;
    }
    let mut b = begin(conn);
    for (name, seconds) in new.sets.iter().filter(|(n, _)| !old.sets.contains_key(*n)) {
        b.new_set(name, *seconds);
    }
    for (name, spec) in &new.chains {
        match old.chains.get(name) {
            Some(o) if o == spec => continue,
            Some(_) => b.flush_chain(name),
            None => b.new_chain(name),
        }
        b.chain_rules(name, spec);
    }
    if old.dispatch != new.dispatch {
        b.flush_chain("prerouting");
        b.flush_chain("output");
        b.dispatch(new);
    }
    for name in old.chains.keys().filter(|n| !new.chains.contains_key(*n)) {
        b.push(
            nft(NFT_MSG_DELCHAIN, 0)
                .str(NFTA_CHAIN_TABLE, TABLE)
                .str(NFTA_CHAIN_NAME, name),
            true,
        );
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        b.push(
            nft(NFT_MSG_DELSET, 0)
                .str(NFTA_SET_TABLE, TABLE)
                .str(NFTA_SET_NAME, name),
            true,
        );
    }
    Some(b.finish())
}

/// Programs the node's Services and remembers what it programmed, so that the next table is
/// applied as a diff (the first one, one after a failure, and one every [`FULL_REBUILD`]
/// replace the whole table in one atomic batch).
#[derive(Default)]
pub struct Programmer {
    applied: Option<(Program, std::time::Instant)>,
}

impl Programmer {
    /// Makes the node's service rules `ports` (ports without endpoints get no rule).
    pub fn apply(&mut self, ports: &[ServicePort]) -> io::Result<()> {
        let new = Program::of(ports);
        let mut conn = Conn::open(libc::NETLINK_NETFILTER)?;
        let (batch, full) = match &self.applied {
            Some((old, at)) if at.elapsed() < FULL_REBUILD => match diff_batch(&mut conn, old, &new) {
                Some(b) => (b, false),
                None => return Ok(()),
            },
            _ => (full_batch(&mut conn, &new), true),
        };
        let since = match (&self.applied, full) {
            (Some((_, at)), false) => *at,
            _ => std::time::Instant::now(),
        };
        self.applied = None;
        conn.send_batch(&batch.0, &batch.1)?;
        self.applied = Some((new, since));
        Ok(())
    }
}

/// Replaces the node's service rules with `ports` in one batch (no memory of earlier ones).
#[cfg(test)]
pub fn apply(ports: &[ServicePort]) -> io::Result<()> {
    Programmer::default().apply(ports)
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
                    affinity_seconds: s.affinity_timeout_seconds,
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

    fn other(n: usize) -> ServicePort {
        let mut p = port(n);
        p.cluster_ip = Ipv4Addr::new(10, 96, 0, 21);
        p
    }

    fn messages(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        replies(bytes).map(|r| (r.ty, r.payload.to_vec())).collect()
    }

    #[test]
    fn one_chain_per_service_port_with_a_rule_per_endpoint_and_numgen_on_all_but_the_last() {
        let Ok(mut conn) = Conn::open(libc::NETLINK_NETFILTER) else {
            return;
        };
        let (bytes, acked) = full_batch(&mut conn, &Program::of(&[port(3), other(0)]));
        let msgs = messages(&bytes);
        // begin, table, delete, table, prerouting, output, svc chain of port(3) (3 hairpin
        // marks, 3 rules), svc chain of other(0) (empty), 4 dispatch jumps, table again, end.
        assert_eq!(msgs.len(), 6 + 7 + 1 + 4 + 2);
        assert_eq!(
            acked.len(),
            3 + 2 + 2 + 1,
            "tables, base chains, chains and the last message"
        );
        let rules: Vec<&Vec<u8>> = msgs[7..13].iter().map(|(_, m)| m).collect();
        assert!(rules[..3].iter().all(|m| !has(m, b"nat\0") && has(m, b"meta\0")));
        assert!(has(rules[3], b"numgen\0") && has(rules[4], b"numgen\0"));
        assert!(!has(rules[5], b"numgen\0"));
        assert!(has(rules[5], &[10, 244, 1, 4]));
        // Moduli 3 then 2: uniform shares.
        assert!(has(rules[3], &3u32.to_be_bytes()) && has(rules[4], &2u32.to_be_bytes()));
        let jumps = msgs
            .iter()
            .filter(|(_, m)| has(m, b"prerouting\0") && has(m, b"svc-"))
            .count();
        assert_eq!(jumps, 2, "one jump per service port from prerouting");
    }

    #[test]
    fn an_endpoint_change_rewrites_only_that_service_chain() {
        let Ok(mut conn) = Conn::open(libc::NETLINK_NETFILTER) else {
            return;
        };
        let old = Program::of(&[port(3), other(2)]);
        assert!(diff_batch(&mut conn, &old, &old.clone()).is_none());
        let mut changed = other(2);
        changed.endpoints[1].0 = Ipv4Addr::new(10, 244, 9, 9);
        let new = Program::of(&[port(3), changed]);
        let (bytes, _) = diff_batch(&mut conn, &old, &new).expect("a change");
        let msgs = messages(&bytes);
        // begin, flush of the one chain, its 2 hairpin marks and 2 rules, table, end.
        assert_eq!(msgs.len(), 1 + 1 + 4 + 2, "{msgs:?}");
        assert_eq!(msgs[1].0 & 0xff, NFT_MSG_DELRULE);
        assert!(has(
            &msgs[1].1,
            format!("svc-{}\0", port_key(&other(0))).as_bytes()
        ));
        assert!(
            msgs.iter().all(|(_, m)| !has(m, &[10, 96, 0, 20])),
            "the other service is untouched"
        );
        assert!(msgs.iter().any(|(_, m)| has(m, &[10, 244, 9, 9])));
        // A service that goes away: its chain is deleted after the dispatch rules are redone.
        let gone = Program::of(&[port(3)]);
        let (bytes, _) = diff_batch(&mut conn, &old, &gone).expect("a change");
        let types: Vec<u16> = messages(&bytes).iter().map(|(t, _)| t & 0xff).collect();
        let del_chain = types
            .iter()
            .position(|t| *t == NFT_MSG_DELCHAIN)
            .expect("chain deleted");
        let flushes = types.iter().filter(|t| **t == NFT_MSG_DELRULE).count();
        assert_eq!(flushes, 2, "prerouting and output flushed: {types:?}");
        assert!(types.iter().rposition(|t| *t == NFT_MSG_NEWRULE).unwrap() < del_chain);
    }

    #[test]
    fn node_ports_are_marked_for_masquerade_unless_local() {
        let Ok(mut conn) = Conn::open(libc::NETLINK_NETFILTER) else {
            return;
        };
        let mut cluster = port(2);
        cluster.node_port = 30001;
        let mut local = other(2);
        local.node_port = 30002;
        local.external_local = true;
        local.local_endpoints = vec![(Ipv4Addr::new(10, 244, 1, 3), 8080)];
        let (bytes, _) = full_batch(&mut conn, &Program::of(&[cluster, local]));
        let msgs = messages(&bytes);
        let np_rules: Vec<&Vec<u8>> = msgs
            .iter()
            .map(|(_, m)| m)
            .filter(|m| has(m, b"fib\0") && has(m, b"np-"))
            .collect();
        // Rules inside the np- chains, then the two jumps from prerouting.
        let inside: Vec<&&Vec<u8>> = np_rules.iter().filter(|m| !has(m, b"prerouting\0")).collect();
        // Cluster: a mark rule and two endpoint rules; Local: one endpoint rule, no mark.
        assert_eq!(inside.len(), 4, "{}", np_rules.len());
        assert!(has(inside[0], &30001u16.to_be_bytes()) && !has(inside[0], b"nat\0"));
        assert!(has(inside[1], b"nat\0") && has(inside[2], b"nat\0"));
        assert!(has(inside[3], &30002u16.to_be_bytes()) && has(inside[3], &[10, 244, 1, 3]));
        assert!(!has(inside[3], b"numgen\0"));
        assert_eq!(np_rules.iter().filter(|m| has(m, b"prerouting\0")).count(), 2);
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
    /// `make bench-net`, datapath part: 1,000 Services × 10 endpoints programmed into a fresh
    /// network namespace (goal ≤ 1 s), then the same table with one endpoint changed.
    #[test]
    #[ignore]
    fn bench_programs_1000_services_of_10_endpoints() {
        use std::os::fd::AsRawFd;
        let Ok(ns) = crate::net::nlsock::new_netns() else {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        };
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd()));
        let mut ports: Vec<ServicePort> = (0..1000u32)
            .map(|s| {
                let mut p = ServicePort::cluster_ip(
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 16, 0)) + s),
                    Protocol::Tcp,
                    80,
                    (0..10u32)
                        .map(|e| {
                            (
                                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + s * 10 + e),
                                8080,
                            )
                        })
                        .collect(),
                );
                p.node_port = if s < 100 { 30000 + s as u16 } else { 0 };
                p
            })
            .collect();
        let mut programmer = Programmer::default();
        let mut run = |ports: &[ServicePort]| {
            let start = std::time::Instant::now();
            crate::net::nlsock::in_netns(&path, || programmer.apply(ports))
                .expect("programming the services");
            start.elapsed()
        };
        let first = run(&ports);
        ports[500].endpoints[3].0 = Ipv4Addr::new(10, 245, 0, 1);
        let change = run(&ports);
        let rules = crate::net::nlsock::in_netns(&path, || {
            let out = std::process::Command::new("nft")
                .args(["list", "table", "ip", TABLE])
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).matches("dnat").count())
        })
        .unwrap_or(0);
        println!(
            "bench-net: 1,000 services x 10 endpoints programmed in {:.0} ms (goal <= 1000 ms); \
             one endpoint changed: {:.1} ms (one chain rewritten); {rules} dnat rules listed by nft",
            first.as_secs_f64() * 1e3,
            change.as_secs_f64() * 1e3,
        );
    }
}
