//! NetworkPolicy in the kernel datapath: the control plane's `PolicyTable` (pod IPs, peer
//! address ranges and port numbers, selectors already resolved) as an nftables filter over
//! netlink:
//!
//! ```text
//! table ip keel-policy {
//!   set in_iso { type ipv4_addr; }                    (local pods isolated for ingress)
//!   set eg_iso { type ipv4_addr; }                    (… for egress)
//!   set in0_pods { type ipv4_addr; }  set in0_peers { type ipv4_addr; flags interval; }  …
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     ip saddr @eg_iso jump egress
//!     ip daddr @in_iso jump ingress }
//!   chain input { type filter hook input priority filter; policy accept;
//!     ip saddr @eg_iso jump egress }                  (pods to the node's own addresses)
//!   chain ingress {
//!     ct state established,related accept
//!     ip daddr @in0_pods ip saddr @in0_peers meta l4proto tcp th dport 80 accept   (per port)
//!     … drop }
//!   chain egress {
//!     ct state established,related accept
//!     ip saddr @eg0_pods ip daddr @eg0_peers … return
//!     … drop }
//! }
//! ```
//!
//! Every pod-to-pod packet crosses the forward hook of the nodes of both ends: bridged on one
//! node (bridge netfilter, `bridge-nf-call-iptables`, which PID 1 sets), routed through the
//! VXLAN device between nodes. Each node lists only its own pods, so the sender's node checks
//! egress and the receiver's node ingress. Services are DNATed before (prerouting), so policy
//! sees the endpoint's address. The node's own connections to its pods (probes) leave through
//! the output hook and are never filtered; their answers are established.
//!
//! The table's shape (rules, ports, the sets they name) changes only with the policies; pods
//! coming and going change set elements only. So an update whose shape equals the applied
//! one flushes and refills just the sets that differ, in one atomic batch; any other change, and
//! the periodic resync, replace the whole table atomically.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use keel_proto::PolicyTable;
use tokio::sync::watch;

use super::cidr::Cidr;
use super::nft::*;
use super::nlmsg::{with_ack, Conn, Msg, NLM_F_APPEND, NLM_F_CREATE};

pub const TABLE: &str = "keel-policy";

const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;

const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
/// nft's `ipv4_addr` data type (for `nft list`; the kernel does not look at it).
const TYPE_IPADDR: u32 = 7;
const NFT_REG_VERDICT: u32 = 0;
const NF_DROP: i32 = 0;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
const NFT_CT_STATE: u32 = 0;
const CT_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CMP_GTE: u32 = 5;
const NFT_CMP_LTE: u32 = 3;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_IP_PRI_FILTER: u32 = 0;
/// Elements per set-element message (each message must stay under 64 KiB).
const ELEMENTS_PER_MESSAGE: usize = 1000;

/// How often the whole table is replaced when nothing changed.
const RESYNC: Duration = Duration::from_secs(30);
/// How soon after a failure it is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// A port range of one protocol (`lo == 0 && hi == 65535`: every port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ports {
    pub protocol: u8,
    pub lo: u16,
    pub hi: u16,
}

/// One rule: traffic between `pods` (local) and `peers` to one of `ports` (empty: any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub pods: Vec<Ipv4Addr>,
    /// Sorted, disjoint, non-adjacent inclusive address ranges.
    pub peers: Vec<(u32, u32)>,
    pub ports: Vec<Ports>,
}

/// The node's policy as the datapath needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub ingress_isolated: Vec<Ipv4Addr>,
    pub egress_isolated: Vec<Ipv4Addr>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

/// The addresses of `ADDRESS/PREFIX`, host bits ignored (the API accepts `10.1.2.3/8` as
/// `10.0.0.0/8`, as upstream's sloppy CIDR parsing does).
fn range_of(text: &str) -> Option<(u32, u32)> {
    let (addr, prefix) = text.trim().split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let c = Cidr::new(addr.parse().ok()?, prefix);
    let start = u32::from(c.network);
    Some((start, (u64::from(start) + c.size() - 1) as u32))
}

/// `ranges` without `cut` (inclusive ranges).
fn subtract(ranges: Vec<(u32, u32)>, cut: (u32, u32)) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for (s, e) in ranges {
        if cut.1 < s || cut.0 > e {
            out.push((s, e));
            continue;
        }
        if cut.0 > s {
            out.push((s, cut.0 - 1));
        }
        if cut.1 < e {
            out.push((cut.1 + 1, e));
        }
    }
    out
}

/// Sorts and merges overlapping or adjacent ranges (an interval set refuses overlaps).
fn merge(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if u64::from(s) <= u64::from(last.1) + 1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn protocol_number(p: &str) -> Option<u8> {
    match p {
        "" | "TCP" => Some(libc::IPPROTO_TCP as u8),
        "UDP" => Some(libc::IPPROTO_UDP as u8),
        "SCTP" => Some(libc::IPPROTO_SCTP as u8),
        _ => None,
    }
}

fn rule_from(r: &keel_proto::PolicyRule) -> Result<Rule, String> {
    let bad = |what: &str| format!("{}: {what}", r.policy);
    let pods = r
        .pods
        .iter()
        .map(|p| p.parse().map_err(|_| bad(&format!("pod address {p:?}"))))
        .collect::<Result<Vec<Ipv4Addr>, String>>()?;
    let mut peers = Vec::new();
    for p in &r.peers {
        let range = range_of(&p.cidr).ok_or_else(|| bad(&format!("peer {:?}", p.cidr)))?;
        let mut ranges = vec![range];
        for e in &p.except {
            let cut = range_of(e).ok_or_else(|| bad(&format!("except {e:?}")))?;
            ranges = subtract(ranges, cut);
        }
        peers.extend(ranges);
    }
    let ports = r
        .ports
        .iter()
        .map(|p| {
            let protocol =
                protocol_number(&p.protocol).ok_or_else(|| bad(&format!("protocol {:?}", p.protocol)))?;
            let lo = u16::try_from(p.port).map_err(|_| bad(&format!("port {}", p.port)))?;
            let hi = match (p.port, p.end_port) {
                (0, _) => u16::MAX,
                (_, 0) => lo,
                (_, e) => u16::try_from(e)
                    .map_err(|_| bad(&format!("end port {e}")))?
                    .max(lo),
            };
            Ok(Ports { protocol, lo, hi })
        })
        .collect::<Result<Vec<Ports>, String>>()?;
    Ok(Rule {
        pods,
        peers: merge(peers),
        ports,
    })
}

/// The policy of a control-plane table; rules that do not parse are left out (a left-out rule
/// allows less, never more) and named in the error list.
pub fn from_proto(t: &PolicyTable) -> (Policy, Vec<String>) {
    let mut bad = Vec::new();
    let ips = |list: &[String], bad: &mut Vec<String>| -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = list
            .iter()
            .filter_map(|s| match s.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    bad.push(format!("isolated pod address {s:?}"));
                    None
                }
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let mut rules = |list: &[keel_proto::PolicyRule]| -> Vec<Rule> {
        list.iter()
            .filter_map(|r| rule_from(r).map_err(|e| bad.push(e)).ok())
            .collect()
    };
    let ingress = rules(&t.ingress);
    let egress = rules(&t.egress);
    let policy = Policy {
        ingress_isolated: ips(&t.ingress_isolated, &mut bad),
        egress_isolated: ips(&t.egress_isolated, &mut bad),
        ingress,
        egress,
    };
    (policy, bad)
}

/// A set of the table with its elements.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Set {
    name: String,
    interval: bool,
    /// Inclusive ranges (single addresses are `(a, a)`).
    elements: Vec<(u32, u32)>,
}

/// What decides the table's rules; equal shapes differ only in set elements.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shape {
    ingress: Vec<Vec<Ports>>,
    egress: Vec<Vec<Ports>>,
}

/// The table a policy becomes: its shape and its sets (by name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    shape: Shape,
    sets: BTreeMap<String, Set>,
}

fn plan(p: &Policy) -> Applied {
    let mut sets = BTreeMap::new();
    let mut add = |name: String, interval: bool, elements: Vec<(u32, u32)>| {
        sets.insert(
            name.clone(),
            Set {
                name,
                interval,
                elements,
            },
        );
    };
    let singles = |ips: &[Ipv4Addr]| -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = ips.iter().map(|ip| (u32::from(*ip), u32::from(*ip))).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    add("in_iso".into(), false, singles(&p.ingress_isolated));
    add("eg_iso".into(), false, singles(&p.egress_isolated));
    for (dir, rules) in [("in", &p.ingress), ("eg", &p.egress)] {
        for (i, r) in rules.iter().enumerate() {
            add(format!("{dir}{i}_pods"), false, singles(&r.pods));
            add(format!("{dir}{i}_peers"), true, r.peers.clone());
        }
    }
    Applied {
        shape: Shape {
            ingress: p.ingress.iter().map(|r| r.ports.clone()).collect(),
            egress: p.egress.iter().map(|r| r.ports.clone()).collect(),
        },
        sets,
    }
}

/// `ip saddr|daddr @set`.
fn addr_in(m: Msg, offset: u32, set: &str, ids: &BTreeMap<String, u32>) -> Msg {
    let m = payload(m, NFT_PAYLOAD_NETWORK_HEADER, offset, 4);
    expr(m, "lookup", |m| {
        let m = m.str(NFTA_LOOKUP_SET, set).be32(NFTA_LOOKUP_SREG, NFT_REG_1);
        match ids.get(set) {
            Some(id) => m.be32(NFTA_LOOKUP_SET_ID, *id),
            None => m,
        }
    })
}

fn verdict(m: Msg, code: i32, chain: Option<&str>) -> Msg {
    expr(m, "immediate", |m| {
        let m = m
            .be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
            .begin(NFTA_IMMEDIATE_DATA)
            .begin(NFTA_DATA_VERDICT)
            .be32(NFTA_VERDICT_CODE, code as u32);
        match chain {
            Some(c) => m.str(NFTA_VERDICT_CHAIN, c),
            None => m,
        }
        .end()
        .end()
    })
}

fn rule(chain: &str) -> Msg {
    nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND)
        .str(NFTA_RULE_TABLE, TABLE)
        .str(NFTA_RULE_CHAIN, chain)
        .begin(NFTA_RULE_EXPRESSIONS)
}

/// `ct state established,related accept`.
fn established(chain: &str) -> Msg {
    let m = expr(rule(chain), "ct", |m| {
        m.be32(NFTA_CT_DREG, NFT_REG_1).be32(NFTA_CT_KEY, NFT_CT_STATE)
    });
    let m = expr(m, "bitwise", |m| {
        m.be32(NFTA_BITWISE_SREG, NFT_REG_1)
            .be32(NFTA_BITWISE_DREG, NFT_REG_1)
            .be32(NFTA_BITWISE_LEN, 4)
            .begin(NFTA_BITWISE_MASK)
            .attr(NFTA_DATA_VALUE, &CT_ESTABLISHED_RELATED.to_ne_bytes())
            .end()
            .begin(NFTA_BITWISE_XOR)
            .attr(NFTA_DATA_VALUE, &[0u8; 4])
            .end()
    });
    let m = cmp(m, NFT_CMP_NEQ, &[0u8; 4]);
    verdict(m, NF_ACCEPT as i32, None).end()
}

/// `meta l4proto P [th dport LO-HI]`.
fn match_ports(m: Msg, p: &Ports) -> Msg {
    let m = expr(m, "meta", |m| {
        m.be32(NFTA_META_KEY, NFT_META_L4PROTO)
            .be32(NFTA_META_DREG, NFT_REG_1)
    });
    let m = cmp(m, NFT_CMP_EQ, &[p.protocol]);
    if p.lo == 0 && p.hi == u16::MAX {
        return m;
    }
    let m = payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
    if p.lo == p.hi {
        return cmp(m, NFT_CMP_EQ, &p.lo.to_be_bytes());
    }
    let m = cmp(m, NFT_CMP_GTE, &p.lo.to_be_bytes());
    cmp(m, NFT_CMP_LTE, &p.hi.to_be_bytes())
}

/// The rules of the `ingress` or `egress` chain.
fn policy_rules(chain: &str, dir: &str, rules: &[Vec<Ports>], ids: &BTreeMap<String, u32>) -> Vec<Msg> {
    let (pod_field, peer_field, pass) = if dir == "in" {
        (IPV4_DADDR, IPV4_SADDR, NF_ACCEPT as i32)
    } else {
        (IPV4_SADDR, IPV4_DADDR, NFT_RETURN)
    };
    let mut out = vec![established(chain)];
    for (i, ports) in rules.iter().enumerate() {
        let head = |ids: &BTreeMap<String, u32>| {
            let m = addr_in(rule(chain), pod_field, &format!("{dir}{i}_pods"), ids);
            addr_in(m, peer_field, &format!("{dir}{i}_peers"), ids)
        };
        if ports.is_empty() {
            out.push(verdict(head(ids), pass, None).end());
        }
        for p in ports {
            out.push(verdict(match_ports(head(ids), p), pass, None).end());
        }
    }
    out.push(verdict(rule(chain), NF_DROP, None).end());
    out
}

/// The messages filling `set` (none for an empty set).
fn elements(set: &Set) -> Vec<Msg> {
    let mut keys: Vec<(u32, bool)> = Vec::new();
    for &(s, e) in &set.elements {
        keys.push((s, false));
        if set.interval && e < u32::MAX {
            keys.push((e + 1, true));
        }
    }
    keys.chunks(ELEMENTS_PER_MESSAGE)
        .map(|chunk| {
            let mut m = nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE)
                .str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
                .str(NFTA_SET_ELEM_LIST_SET, &set.name)
                .begin(NFTA_SET_ELEM_LIST_ELEMENTS);
            for &(key, end) in chunk {
                m = m
                    .begin(NFTA_LIST_ELEM)
                    .begin(NFTA_SET_ELEM_KEY)
                    .attr(NFTA_DATA_VALUE, &key.to_be_bytes())
                    .end();
                if end {
                    m = m.be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                }
                m = m.end();
            }
            m.end()
        })
        .collect()
}

/// A batch in which only the last message asks for an ACK: the kernel answers every failing
/// message anyway, and a table of thousands of elements would otherwise flood the socket with
/// ACKs. Sent with [`Conn::send_batch`], which also makes room for its size.
struct Batch {
    bytes: Vec<u8>,
    /// Offset and sequence number of the last message pushed.
    last: Option<(usize, u32)>,
}

impl Batch {
    fn new(conn: &mut Conn) -> Batch {
        let seq = conn.next_seq();
        Batch {
            bytes: batch_marker(NFNL_MSG_BATCH_BEGIN).finish(seq),
            last: None,
        }
    }

    fn push(&mut self, conn: &mut Conn, m: Msg) {
        let seq = conn.next_seq();
        self.last = Some((self.bytes.len(), seq));
        self.bytes.extend(m.finish(seq));
    }

    /// The bytes, and the sequence number whose ACK ends the batch.
    fn finish(mut self, conn: &mut Conn) -> (Vec<u8>, Vec<u32>) {
        let mut acked = Vec::new();
        if let Some((offset, seq)) = self.last {
            let header = with_ack(self.bytes[offset..offset + 16].to_vec());
            self.bytes[offset..offset + 16].copy_from_slice(&header);
            acked.push(seq);
        }
        let seq = conn.next_seq();
        self.bytes.extend(batch_marker(NFNL_MSG_BATCH_END).finish(seq));
        (self.bytes, acked)
    }
}

/// The batch replacing the whole table with `a`.
fn full_batch(conn: &mut Conn, a: &Applied) -> (Vec<u8>, Vec<u32>) {
    let mut b = Batch::new(conn);
    let table = || nft(NFT_MSG_NEWTABLE, NLM_F_CREATE).str(NFTA_TABLE_NAME, TABLE);
    b.push(conn, table());
    b.push(conn, nft(NFT_MSG_DELTABLE, 0).str(NFTA_TABLE_NAME, TABLE));
    b.push(conn, table());
    let ids: BTreeMap<String, u32> = a
        .sets
        .keys()
        .enumerate()
        .map(|(i, n)| (n.clone(), i as u32 + 1))
        .collect();
    for set in a.sets.values() {
        let m = nft(NFT_MSG_NEWSET, NLM_F_CREATE)
            .str(NFTA_SET_TABLE, TABLE)
            .str(NFTA_SET_NAME, &set.name)
            .be32(NFTA_SET_FLAGS, if set.interval { NFT_SET_INTERVAL } else { 0 })
            .be32(NFTA_SET_KEY_TYPE, TYPE_IPADDR)
            .be32(NFTA_SET_KEY_LEN, 4)
            .be32(NFTA_SET_ID, ids[&set.name]);
        b.push(conn, m);
        for m in elements(set) {
            b.push(conn, m);
        }
    }
    for chain in ["ingress", "egress"] {
        b.push(
            conn,
            nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE)
                .str(NFTA_CHAIN_TABLE, TABLE)
                .str(NFTA_CHAIN_NAME, chain),
        );
    }
    for (chain, hook) in [("forward", NF_INET_FORWARD), ("input", NF_INET_LOCAL_IN)] {
        b.push(
            conn,
            nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE)
                .str(NFTA_CHAIN_TABLE, TABLE)
                .str(NFTA_CHAIN_NAME, chain)
                .begin(NFTA_CHAIN_HOOK)
                .be32(NFTA_HOOK_HOOKNUM, hook)
                .be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_FILTER)
                .end()
                .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
                .str(NFTA_CHAIN_TYPE, "filter"),
        );
    }
    for m in policy_rules("ingress", "in", &a.shape.ingress, &ids) {
        b.push(conn, m);
    }
    for m in policy_rules("egress", "eg", &a.shape.egress, &ids) {
        b.push(conn, m);
    }
    for chain in ["forward", "input"] {
        let m = addr_in(rule(chain), IPV4_SADDR, "eg_iso", &ids);
        b.push(conn, verdict(m, NFT_JUMP, Some("egress")).end());
        if chain == "forward" {
            let m = addr_in(rule(chain), IPV4_DADDR, "in_iso", &ids);
            b.push(conn, verdict(m, NFT_JUMP, Some("ingress")).end());
        }
    }
    b.finish(conn)
}

/// The batch turning `old`'s sets into `new`'s (same shape): changed sets are flushed and
/// refilled. `None` when nothing differs.
fn set_batch(conn: &mut Conn, old: &Applied, new: &Applied) -> Option<(Vec<u8>, Vec<u32>)> {
    let changed: Vec<&Set> = new
        .sets
        .values()
        .filter(|s| old.sets.get(&s.name) != Some(*s))
        .collect();
    if changed.is_empty() {
        return None;
    }
    let mut b = Batch::new(conn);
    for set in changed {
        b.push(
            conn,
            nft(NFT_MSG_DELSETELEM, 0)
                .str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
                .str(NFTA_SET_ELEM_LIST_SET, &set.name),
        );
        for m in elements(set) {
            b.push(conn, m);
        }
    }
    Some(b.finish(conn))
}

/// How an [`apply`] went.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Nothing,
    Sets,
    Table,
}

/// Makes the kernel's table `policy`, knowing it was `last` (`None`: unknown, replace it).
pub fn apply(policy: &Policy, last: Option<&Applied>) -> io::Result<(Applied, Change)> {
    let new = plan(policy);
    let mut conn = Conn::open(libc::NETLINK_NETFILTER)?;
    let change = match last.filter(|l| l.shape == new.shape) {
        Some(old) => match set_batch(&mut conn, old, &new) {
            None => Change::Nothing,
            Some((bytes, acked)) => match conn.send_batch(&bytes, &acked) {
                Ok(()) => Change::Sets,
                Err(e) => {
                    // The batch was all or nothing: the old table stands. Replace it instead.
                    eprintln!("keel: network policy: updating sets failed ({e}); replacing the table");
                    let mut conn = Conn::open(libc::NETLINK_NETFILTER)?;
                    let (bytes, acked) = full_batch(&mut conn, &new);
                    conn.send_batch(&bytes, &acked)?;
                    Change::Table
                }
            },
        },
        None => {
            let (bytes, acked) = full_batch(&mut conn, &new);
            conn.send_batch(&bytes, &acked)?;
            Change::Table
        }
    };
    Ok((new, change))
}

/// The newest policy table from the control plane.
static TABLE_RX: LazyLock<watch::Sender<Option<Arc<PolicyTable>>>> =
    LazyLock::new(|| watch::Sender::new(None));

/// The session received a policy table.
pub fn offer(t: PolicyTable) {
    TABLE_RX.send_replace(Some(Arc::new(t)));
}

/// Keeps the kernel's policy table equal to the newest one from the control plane, for as long
/// as the agent runs. Nothing is installed before the first table arrives (a restarted agent
/// leaves the previous table in force until then).
pub async fn serve() {
    let mut rx = TABLE_RX.subscribe();
    let mut last: Option<Applied> = None;
    let mut last_problem = String::new();
    let mut wait = RESYNC;
    // The version last logged: resyncs of the same table stay quiet.
    let mut logged: Option<u64> = None;
    loop {
        let offered = rx.borrow_and_update().clone();
        if let Some(t) = offered {
            let (policy, bad) = from_proto(&t);
            if !bad.is_empty() {
                eprintln!(
                    "keel: network policy: rules left out (malformed): {}",
                    bad.join(", ")
                );
            }
            let started = Instant::now();
            let prev = last.take();
            let result = tokio::task::spawn_blocking(move || apply(&policy, prev.as_ref())).await;
            match result {
                Ok(Ok((applied, change))) => {
                    if change != Change::Nothing && logged != Some(t.version) {
                        logged = Some(t.version);
                        eprintln!(
                            "keel: network policy v{}: {} ingress and {} egress rules, {} and {} pods isolated; {} in {} ms",
                            t.version,
                            applied.shape.ingress.len(),
                            applied.shape.egress.len(),
                            t.ingress_isolated.len(),
                            t.egress_isolated.len(),
                            if change == Change::Table { "table replaced" } else { "sets updated" },
                            started.elapsed().as_millis(),
                        );
                    }
                    last = Some(applied);
                    last_problem.clear();
                    wait = RESYNC;
                }
                Ok(Err(e)) => {
                    let problem = e.to_string();
                    if problem != last_problem {
                        eprintln!("keel: network policy: programming nftables: {problem}");
                        last_problem = problem;
                    }
                    wait = RETRY;
                }
                Err(e) => {
                    eprintln!("keel: network policy: {e}");
                    wait = RETRY;
                }
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {
                // Level-triggered repair: the next pass replaces the whole table.
                last = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::nlmsg::{attr, attrs, replies, NLM_F_ACK};

    fn rule(
        policy: &str,
        pods: &[&str],
        peers: &[(&str, &[&str])],
        ports: &[(&str, u32, u32)],
    ) -> keel_proto::PolicyRule {
        keel_proto::PolicyRule {
            policy: policy.into(),
            pods: pods.iter().map(|s| s.to_string()).collect(),
            peers: peers
                .iter()
                .map(|(c, e)| keel_proto::PolicyPeer {
                    cidr: c.to_string(),
                    except: e.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            ports: ports
                .iter()
                .map(|(p, n, e)| keel_proto::PolicyPort {
                    protocol: p.to_string(),
                    port: *n,
                    end_port: *e,
                })
                .collect(),
        }
    }

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
    }

    #[test]
    fn tables_parse_into_merged_ranges_and_numeric_ports() {
        let t = PolicyTable {
            version: 3,
            ingress_isolated: vec!["10.244.1.3".into(), "10.244.1.2".into(), "10.244.1.3".into()],
            egress_isolated: vec!["nope".into()],
            ingress: vec![
                rule(
                    "default/a",
                    &["10.244.1.2"],
                    &[
                        ("10.244.2.3/32", &[]),
                        ("10.244.2.4/32", &[]),
                        ("192.168.0.0/16", &["192.168.50.0/24", "192.168.255.255/32"]),
                    ],
                    &[("TCP", 80, 0), ("UDP", 5000, 5010), ("SCTP", 0, 0)],
                ),
                rule("default/b", &["10.244.1.3"], &[("0.0.0.0/0", &[])], &[]),
                rule("default/sloppy", &["10.244.1.3"], &[("172.17.3.4/16", &[])], &[]),
                rule("default/bad", &["10.244.1.3"], &[("172.17.0.0/33", &[])], &[]),
                rule(
                    "default/c",
                    &["10.244.1.3"],
                    &[("10.0.0.0/8", &[])],
                    &[("ICMP", 0, 0)],
                ),
            ],
            egress: vec![],
        };
        let (p, bad) = from_proto(&t);
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].starts_with("default/bad: peer"), "{bad:?}");
        assert!(bad[1].starts_with("default/c: protocol"), "{bad:?}");
        assert_eq!(p.ingress_isolated.len(), 2);
        assert!(p.egress_isolated.is_empty());
        assert_eq!(p.ingress.len(), 3);
        assert_eq!(
            p.ingress[2].peers,
            [(ip("172.17.0.0"), ip("172.17.255.255"))],
            "host bits ignored"
        );
        assert_eq!(
            p.ingress[0].peers,
            [
                (ip("10.244.2.3"), ip("10.244.2.4")),
                (ip("192.168.0.0"), ip("192.168.49.255")),
                (ip("192.168.51.0"), ip("192.168.255.254")),
            ]
        );
        assert_eq!(
            p.ingress[0].ports,
            [
                Ports {
                    protocol: 6,
                    lo: 80,
                    hi: 80
                },
                Ports {
                    protocol: 17,
                    lo: 5000,
                    hi: 5010
                },
                Ports {
                    protocol: 132,
                    lo: 0,
                    hi: u16::MAX
                },
            ]
        );
        assert_eq!(p.ingress[1].peers, [(0, u32::MAX)]);
        assert!(p.ingress[1].ports.is_empty());
    }

    fn policy() -> Policy {
        let t = PolicyTable {
            version: 1,
            ingress_isolated: vec!["10.244.1.2".into()],
            egress_isolated: vec!["10.244.1.4".into()],
            ingress: vec![rule(
                "default/a",
                &["10.244.1.2"],
                &[("10.244.2.3/32", &[]), ("0.0.0.0/1", &["10.0.0.0/8"])],
                &[("TCP", 80, 0), ("UDP", 5000, 5010)],
            )],
            egress: vec![rule("default/b", &["10.244.1.4"], &[("0.0.0.0/0", &[])], &[])],
        };
        from_proto(&t).0
    }

    #[test]
    fn the_table_has_its_sets_chains_and_one_rule_per_port() {
        let Ok(mut conn) = Conn::open(libc::NETLINK_NETFILTER) else {
            return; // no netfilter netlink here: nothing to frame against
        };
        let a = plan(&policy());
        let names: Vec<&str> = a.sets.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "eg0_peers",
                "eg0_pods",
                "eg_iso",
                "in0_peers",
                "in0_pods",
                "in_iso"
            ]
        );
        let (bytes, acked) = full_batch(&mut conn, &a);
        let msgs: Vec<(u16, Vec<u8>)> = replies(&bytes).map(|r| (r.ty, r.payload.to_vec())).collect();
        let count = |ty: u16| msgs.iter().filter(|(t, _)| *t == (10 << 8) | ty).count();
        assert_eq!(count(NFT_MSG_NEWSET), 6);
        assert_eq!(count(NFT_MSG_NEWSETELEM), 6, "every set has elements here");
        assert_eq!(count(NFT_MSG_NEWCHAIN), 4);
        // ingress: established + 2 ports + drop; egress: established + 1 + drop; 3 jumps.
        assert_eq!(count(NFT_MSG_NEWRULE), 4 + 3 + 3);
        // Only the last message before the end marker asks for an ACK.
        let acks: Vec<bool> = replies(&bytes).map(|r| r.flags & NLM_F_ACK != 0).collect();
        assert_eq!(acks.iter().filter(|a| **a).count(), 1);
        assert!(
            acks[acks.len() - 2],
            "the last message is not the acknowledged one"
        );
        assert_eq!(acked, [replies(&bytes).nth(msgs.len() - 2).unwrap().seq]);
        let has = |m: &[u8], needle: &[u8]| m.windows(needle.len()).any(|w| w == needle);
        // Interval sets: a start key per range, and an end key (the address after it) unless
        // the range runs to the last address.
        let keys = |name: &str| {
            let (_, m) = msgs
                .iter()
                .find(|(t, m)| *t == (10 << 8) | NFT_MSG_NEWSETELEM && has(m, format!("{name}\0").as_bytes()))
                .unwrap();
            let list = attr(&m[4..], NFTA_SET_ELEM_LIST_ELEMENTS).unwrap();
            attrs(list)
                .map(|(_, e)| {
                    let key = attr(attr(e, NFTA_SET_ELEM_KEY).unwrap(), NFTA_DATA_VALUE).unwrap();
                    (
                        Ipv4Addr::new(key[0], key[1], key[2], key[3]).to_string(),
                        attr(e, NFTA_SET_ELEM_FLAGS).is_some(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let k = |a: &str, end: bool| (a.to_string(), end);
        assert_eq!(keys("eg0_peers"), [k("0.0.0.0", false)]);
        // 0.0.0.0/1 minus 10/8, and the one pod inside the cut.
        assert_eq!(
            keys("in0_peers"),
            [
                k("0.0.0.0", false),
                k("10.0.0.0", true),
                k("10.244.2.3", false),
                k("10.244.2.4", true),
                k("11.0.0.0", false),
                k("128.0.0.0", true)
            ]
        );
        assert_eq!(keys("in_iso"), [k("10.244.1.2", false)]);
        // The hooks jump last: forward to egress then ingress, input to egress.
        let rules: Vec<&Vec<u8>> = msgs
            .iter()
            .filter(|(t, _)| *t == (10 << 8) | NFT_MSG_NEWRULE)
            .map(|(_, m)| m)
            .collect();
        let jump = (NFT_JUMP as u32).to_be_bytes();
        let last3: Vec<(bool, bool, bool)> = rules[rules.len() - 3..]
            .iter()
            .map(|m| (has(m, b"forward\0"), has(m, &jump), has(m, b"egress\0")))
            .collect();
        assert_eq!(
            last3,
            [(true, true, true), (true, true, false), (false, true, true)]
        );
    }

    #[test]
    fn pods_changing_update_only_the_sets_that_differ() {
        let Ok(mut conn) = Conn::open(libc::NETLINK_NETFILTER) else {
            return;
        };
        let old = plan(&policy());
        assert!(set_batch(&mut conn, &old, &old).is_none(), "nothing changed");
        let mut p = policy();
        p.ingress[0].pods.push("10.244.1.9".parse().unwrap());
        p.ingress_isolated.push("10.244.1.9".parse().unwrap());
        let new = plan(&p);
        assert_eq!(new.shape, old.shape);
        let (bytes, _) = set_batch(&mut conn, &old, &new).unwrap();
        let msgs: Vec<(u16, Vec<u8>)> = replies(&bytes).map(|r| (r.ty, r.payload.to_vec())).collect();
        let types: Vec<u16> = msgs.iter().map(|(t, _)| *t).collect();
        let (del, add) = ((10 << 8) | NFT_MSG_DELSETELEM, (10 << 8) | NFT_MSG_NEWSETELEM);
        assert_eq!(
            types,
            [0x10, del, add, del, add, 0x11],
            "flush and refill in_iso and in0_pods"
        );
        // A new port is a new shape.
        p.ingress[0].ports.push(Ports {
            protocol: 6,
            lo: 443,
            hi: 443,
        });
        assert_ne!(plan(&p).shape, old.shape);
    }

    #[test]
    fn ranges_subtract_and_merge() {
        assert_eq!(subtract(vec![(0, 100)], (10, 20)), [(0, 9), (21, 100)]);
        assert_eq!(subtract(vec![(0, 100)], (0, 100)), []);
        assert_eq!(subtract(vec![(5, 10)], (0, 7)), [(8, 10)]);
        assert_eq!(
            subtract(vec![(0, u32::MAX)], (u32::MAX, u32::MAX)),
            [(0, u32::MAX - 1)]
        );
        assert_eq!(
            merge(vec![(10, 20), (0, 5), (6, 8), (15, 30)]),
            [(0, 8), (10, 30)]
        );
        assert_eq!(merge(vec![(0, u32::MAX), (3, 4)]), [(0, u32::MAX)]);
    }
}
