//! The few rtnetlink requests PID 1 needs: set a link up, add an IPv4 address, add a default
//! route. Hand-built messages over [`crate::sys::socket::Netlink`] (a netlink library would cost
//! far more binary than these ~150 lines); each request asks for an ACK and returns its errno.

use crate::sys::socket::Netlink;
use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const RTA_PREFSRC: u16 = 7;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTPROT_DHCP: u8 = 16;
const RTN_UNICAST: u8 = 1;
const RTNH_F_ONLINK: u32 = 4;

/// A netlink message under construction: header, fixed struct, attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32) -> Msg {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        Msg { buf }
    }

    fn bytes(mut self, b: &[u8]) -> Msg {
        self.buf.extend_from_slice(b);
        self.pad();
        self
    }

    fn attr(mut self, ty: u16, data: &[u8]) -> Msg {
        let len = 4 + data.len() as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn ifinfomsg(ifindex: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    // family AF_UNSPEC (0), pad, type 0
    b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// `RTM_NEWLINK` setting IFF_UP.
pub fn link_up_msg(ifindex: i32, seq: u32) -> Vec<u8> {
    let up = libc::IFF_UP as u32;
    Msg::new(RTM_NEWLINK, 0, seq)
        .bytes(&ifinfomsg(ifindex, up, up))
        .finish()
}

/// `RTM_NEWADDR` for `addr/prefix` on `ifindex` (replacing an existing equal address).
pub fn add_addr_msg(ifindex: i32, addr: Ipv4Addr, prefix: u8, seq: u32) -> Vec<u8> {
    let ifa = [
        libc::AF_INET as u8,
        prefix,
        0, // flags
        0, // scope: universe
    ];
    let mut fixed = ifa.to_vec();
    fixed.extend_from_slice(&(ifindex as u32).to_ne_bytes());
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    let brd = Ipv4Addr::from(u32::from(addr) | !mask);
    let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq)
        .bytes(&fixed)
        .attr(IFA_LOCAL, &addr.octets())
        .attr(IFA_ADDRESS, &addr.octets());
    if prefix < 31 {
        m = m.attr(IFA_BROADCAST, &brd.octets());
    }
    m.finish()
}

/// `RTM_NEWROUTE` for the default route via `gateway` out of `ifindex`.
pub fn default_route_msg(
    ifindex: i32,
    gateway: Ipv4Addr,
    src: Ipv4Addr,
    onlink: bool,
    dhcp: bool,
    seq: u32,
) -> Vec<u8> {
    let rtm = [
        libc::AF_INET as u8,
        0, // dst_len: default route
        0, // src_len
        0, // tos
        RT_TABLE_MAIN,
        if dhcp { RTPROT_DHCP } else { RTPROT_BOOT },
        0, // scope: universe
        RTN_UNICAST,
    ];
    let mut fixed = rtm.to_vec();
    let flags: u32 = if onlink { RTNH_F_ONLINK } else { 0 };
    fixed.extend_from_slice(&flags.to_ne_bytes());
    Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq)
        .bytes(&fixed)
        .attr(RTA_GATEWAY, &gateway.octets())
        .attr(RTA_OIF, &(ifindex as u32).to_ne_bytes())
        .attr(RTA_PREFSRC, &src.octets())
        .finish()
}

/// Reads the kernel's answer to request `seq`: `Ok` for an ACK, the errno otherwise.
fn parse_ack(buf: &[u8], seq: u32) -> Option<io::Result<()>> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().ok()?);
        let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().ok()?);
        if len < 16 || off + len > buf.len() {
            return None;
        }
        if ty == NLMSG_ERROR && mseq == seq && len >= 20 {
            let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().ok()?);
            return Some(if err == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-err))
            });
        }
        off += (len + 3) & !3;
    }
    None
}

/// An rtnetlink connection that numbers its requests.
pub struct Rtnl {
    sock: Netlink,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        Ok(Rtnl {
            sock: Netlink::open()?,
            seq: 1,
        })
    }

    fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.sock.send(&build(seq))?;
        let mut buf = vec![0u8; 8192];
        loop {
            let Some(n) = self.sock.recv(&mut buf, Duration::from_secs(2))? else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from rtnetlink",
                ));
            };
            if let Some(r) = parse_ack(&buf[..n], seq) {
                return r;
            }
        }
    }

    pub fn link_up(&mut self, ifindex: i32) -> io::Result<()> {
        self.request(|seq| link_up_msg(ifindex, seq))
    }

    pub fn add_addr(&mut self, ifindex: i32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        self.request(|seq| add_addr_msg(ifindex, addr, prefix, seq))
    }

    /// Adds (or replaces) the default route. `onlink` for gateways outside the subnet.
    pub fn default_route(
        &mut self,
        ifindex: i32,
        gateway: Ipv4Addr,
        src: Ipv4Addr,
        onlink: bool,
        dhcp: bool,
    ) -> io::Result<()> {
        self.request(|seq| default_route_msg(ifindex, gateway, src, onlink, dhcp, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_message_layout() {
        let m = add_addr_msg(2, Ipv4Addr::new(10, 0, 2, 15), 24, 7);
        assert_eq!(m.len() as u32, u32::from_ne_bytes(m[0..4].try_into().unwrap()));
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWADDR);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 24);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 2);
        // three attributes of 8 bytes each: local, address, broadcast 10.0.2.255
        assert_eq!(m.len(), 24 + 3 * 8);
        assert_eq!(&m[m.len() - 4..], &[10, 0, 2, 255]);
    }

    #[test]
    fn ack_and_error() {
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&9u32.to_ne_bytes());
        assert!(parse_ack(&ack, 9).unwrap().is_ok());
        assert!(parse_ack(&ack, 8).is_none());
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        let e = parse_ack(&ack, 9).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    }
}
