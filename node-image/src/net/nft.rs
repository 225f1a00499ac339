//! The nftables netlink vocabulary the node's rule sets share (egress masquerade, Services):
//! message types, attribute numbers, the two message builders every batch starts with, and the
//! expression builders rules are made of.
//! Kept in one place so both rule sets speak the same dialect.

use super::nlmsg::Msg;

pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(super) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(super) const NFT_MSG_NEWTABLE: u16 = 0;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
pub(super) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(super) const NFT_MSG_NEWRULE: u16 = 6;
pub(super) const NFPROTO_IPV4: u8 = 2;
pub(super) const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFTA_CHAIN_HOOK: u16 = 4;
pub(super) const NFTA_CHAIN_POLICY: u16 = 5;
pub(super) const NFTA_CHAIN_TYPE: u16 = 7;
pub(super) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(super) const NFTA_HOOK_PRIORITY: u16 = 2;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(super) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(super) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(super) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(super) const NFTA_CMP_SREG: u16 = 1;
pub(super) const NFTA_CMP_OP: u16 = 2;
pub(super) const NFTA_CMP_DATA: u16 = 3;
pub(super) const NFTA_META_DREG: u16 = 1;
pub(super) const NFTA_META_KEY: u16 = 2;
pub(super) const NFT_META_MARK: u32 = 3;
pub(super) const NF_ACCEPT: u32 = 1;
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_REG_1: u32 = 1;
pub(super) const NFT_CMP_EQ: u32 = 0;
pub(super) const IPV4_SADDR: u32 = 12;
pub(super) const IPV4_DADDR: u32 = 16;

pub(super) fn nft(cmd: u16, flags: u16) -> Msg {
    Msg::new((NFNL_SUBSYS_NFTABLES << 8) | cmd, flags).fixed(&[NFPROTO_IPV4, 0, 0, 0])
}

pub(super) fn batch_marker(ty: u16) -> Msg {
    let mut nfgen = [0u8, 0, 0, 0];
    nfgen[2..4].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    Msg::new(ty, 0).fixed(&nfgen)
}

/// One expression of a rule: `name` with the attributes `body` adds.
pub(super) fn expr(m: Msg, name: &str, body: impl FnOnce(Msg) -> Msg) -> Msg {
    body(
        m.begin(NFTA_LIST_ELEM)
            .str(NFTA_EXPR_NAME, name)
            .begin(NFTA_EXPR_DATA),
    )
    .end()
    .end()
}

/// Compares register 1 with `value` (`op`: `NFT_CMP_EQ`, …).
pub(super) fn cmp(m: Msg, op: u32, value: &[u8]) -> Msg {
    expr(m, "cmp", |m| {
        m.be32(NFTA_CMP_SREG, NFT_REG_1)
            .be32(NFTA_CMP_OP, op)
            .begin(NFTA_CMP_DATA)
            .attr(NFTA_DATA_VALUE, value)
            .end()
    })
}

/// Loads `len` bytes at `offset` of header `base` into register 1.
pub(super) fn payload(m: Msg, base: u32, offset: u32, len: u32) -> Msg {
    expr(m, "payload", |m| {
        m.be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
            .be32(NFTA_PAYLOAD_BASE, base)
            .be32(NFTA_PAYLOAD_OFFSET, offset)
            .be32(NFTA_PAYLOAD_LEN, len)
    })
}
