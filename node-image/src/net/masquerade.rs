//! Egress masquerade for pods, in nftables over netlink (no `nft` binary, no iptables):
//!
//! ```text
//! table ip keel-pods {
//!   chain egress {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade
//!     meta mark & 0x4000 != 0 masquerade      (hairpin: a pod through its own Service)
//!   }
//! }
//! ```
//!
//! Pod ↔ pod traffic keeps its addresses (across nodes it rides VXLAN inside the cluster
//! range); anything leaving the cluster range leaves with the node's address. The table is
//! replaced whole in one atomic batch (add, delete, add again, then chain and rule), so applying
//! it again on every reconcile is cheap and never leaves a window without the rule.

use std::io;

use super::cidr::Cidr;
use super::nft::*;
use super::nlmsg::{with_ack, Conn, Msg, NLM_F_CREATE};
use super::services::HAIRPIN_MARK;

const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;

const NF_INET_POST_ROUTING: u32 = 4;
const NF_IP_PRI_NAT_SRC: i32 = 100;
const NFT_CMP_NEQ: u32 = 1;

pub const TABLE: &str = "keel-pods";
const CHAIN: &str = "egress";

/// `[payload load 4b @ network + offset => reg 1] [bitwise reg 1 & mask] [cmp op reg 1 net]`.
fn match_addr(m: Msg, offset: u32, range: Cidr, op: u32) -> Msg {
    m.begin(NFTA_LIST_ELEM)
        .str(NFTA_EXPR_NAME, "payload")
        .begin(NFTA_EXPR_DATA)
        .be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
        .be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER)
        .be32(NFTA_PAYLOAD_OFFSET, offset)
        .be32(NFTA_PAYLOAD_LEN, 4)
        .end()
        .end()
        .begin(NFTA_LIST_ELEM)
        .str(NFTA_EXPR_NAME, "bitwise")
        .begin(NFTA_EXPR_DATA)
        .be32(NFTA_BITWISE_SREG, NFT_REG_1)
        .be32(NFTA_BITWISE_DREG, NFT_REG_1)
        .be32(NFTA_BITWISE_LEN, 4)
        .begin(NFTA_BITWISE_MASK)
        .attr(NFTA_DATA_VALUE, &range.netmask().octets())
        .end()
        .begin(NFTA_BITWISE_XOR)
        .attr(NFTA_DATA_VALUE, &[0u8; 4])
        .end()
        .end()
        .end()
        .begin(NFTA_LIST_ELEM)
        .str(NFTA_EXPR_NAME, "cmp")
        .begin(NFTA_EXPR_DATA)
        .be32(NFTA_CMP_SREG, NFT_REG_1)
        .be32(NFTA_CMP_OP, op)
        .begin(NFTA_CMP_DATA)
        .attr(NFTA_DATA_VALUE, &range.network.octets())
        .end()
        .end()
        .end()
}

/// The batch that (re)creates the table; returns the bytes and the sequence numbers that
/// expect an ACK.
fn batch(conn: &mut Conn, cluster: Cidr) -> (Vec<u8>, Vec<u32>) {
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
    let chain = nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE)
        .str(NFTA_CHAIN_TABLE, TABLE)
        .str(NFTA_CHAIN_NAME, CHAIN)
        .begin(NFTA_CHAIN_HOOK)
        .be32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING)
        .be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_SRC as u32)
        .end()
        .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
        .str(NFTA_CHAIN_TYPE, "nat");
    push(conn, chain, true);
    let rule = nft(NFT_MSG_NEWRULE, NLM_F_CREATE | super::nlmsg::NLM_F_APPEND)
        .str(NFTA_RULE_TABLE, TABLE)
        .str(NFTA_RULE_CHAIN, CHAIN)
        .begin(NFTA_RULE_EXPRESSIONS);
    let rule = match_addr(rule, IPV4_SADDR, cluster, NFT_CMP_EQ);
    let rule = match_addr(rule, IPV4_DADDR, cluster, NFT_CMP_NEQ);
    let rule = rule.begin(NFTA_LIST_ELEM).str(NFTA_EXPR_NAME, "masq").end().end();
    push(conn, rule, true);
    let hairpin = nft(NFT_MSG_NEWRULE, NLM_F_CREATE | super::nlmsg::NLM_F_APPEND)
        .str(NFTA_RULE_TABLE, TABLE)
        .str(NFTA_RULE_CHAIN, CHAIN)
        .begin(NFTA_RULE_EXPRESSIONS)
        .begin(NFTA_LIST_ELEM)
        .str(NFTA_EXPR_NAME, "meta")
        .begin(NFTA_EXPR_DATA)
        .be32(NFTA_META_KEY, NFT_META_MARK)
        .be32(NFTA_META_DREG, NFT_REG_1)
        .end()
        .end()
        .begin(NFTA_LIST_ELEM)
        .str(NFTA_EXPR_NAME, "bitwise")
        .begin(NFTA_EXPR_DATA)
        .be32(NFTA_BITWISE_SREG, NFT_REG_1)
        .be32(NFTA_BITWISE_DREG, NFT_REG_1)
        .be32(NFTA_BITWISE_LEN, 4)
        .begin(NFTA_BITWISE_MASK)
        .attr(NFTA_DATA_VALUE, &HAIRPIN_MARK.to_ne_bytes())
        .end()
        .begin(NFTA_BITWISE_XOR)
        .attr(NFTA_DATA_VALUE, &[0u8; 4])
        .end()
        .end()
        .end()
        .begin(NFTA_LIST_ELEM)
        .str(NFTA_EXPR_NAME, "cmp")
        .begin(NFTA_EXPR_DATA)
        .be32(NFTA_CMP_SREG, NFT_REG_1)
        .be32(NFTA_CMP_OP, NFT_CMP_NEQ)
        .begin(NFTA_CMP_DATA)
        .attr(NFTA_DATA_VALUE, &[0u8; 4])
        .end()
        .end()
        .end()
        .begin(NFTA_LIST_ELEM)
        .str(NFTA_EXPR_NAME, "masq")
        .end()
        .end();
    push(conn, hairpin, true);
    push(conn, batch_marker(NFNL_MSG_BATCH_END), false);
    (bytes, acked)
}

/// Installs (or re-installs) the masquerade of traffic leaving `cluster`.
pub fn apply(cluster: Cidr) -> io::Result<()> {
    let mut conn = Conn::open(libc::NETLINK_NETFILTER)?;
    let (bytes, acked) = batch(&mut conn, cluster);
    conn.send_and_wait(&bytes, &acked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::nlmsg::replies;

    #[test]
    fn the_batch_is_framed_and_acked() {
        let Ok(mut conn) = Conn::open(libc::NETLINK_NETFILTER) else {
            return; // no netfilter netlink here: nothing to frame against
        };
        let (bytes, acked) = batch(&mut conn, "10.244.0.0/16".parse().unwrap());
        let types: Vec<u16> = replies(&bytes).map(|r| r.ty).collect();
        assert_eq!(
            types,
            [0x10, 0x0a00, 0x0a02, 0x0a00, 0x0a03, 0x0a06, 0x0a06, 0x11],
            "begin, table, delete, table, chain, egress rule, hairpin rule, end"
        );
        assert_eq!(acked.len(), 6);
        // The rule carries both address matches: the cluster network twice, its mask twice.
        let rule = replies(&bytes).nth(5).unwrap().payload.to_vec();
        let count = |needle: &[u8]| rule.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(&[10, 244, 0, 0]), 2);
        assert_eq!(count(&[255, 255, 0, 0]), 2);
    }
}
