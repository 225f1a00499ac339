//! Netlink messages without a library: a builder with nested attributes, a parser for answers,
//! and a connection that numbers requests, waits for their ACKs and collects dumps.
//!
//! A netlink library (rtnetlink + netlink-packet-route) would cost several hundred KB of the
//! node binary for the dozen message shapes the pod network sends; PID 1's own
//! `net::netlink` made the same choice for its three.

use std::io;

use super::nlsock::NlSocket;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A netlink message under construction: header, fixed part, attributes (nestable).
pub struct Msg {
    buf: Vec<u8>,
    open: Vec<usize>,
}

impl Msg {
    /// A request of type `ty`; `NLM_F_REQUEST` is always set.
    pub fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, patched in finish()
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        Msg {
            buf,
            open: Vec::new(),
        }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// The fixed part after the header (ifinfomsg, rtmsg, …).
    pub fn fixed(mut self, b: &[u8]) -> Msg {
        self.buf.extend_from_slice(b);
        self.pad();
        self
    }

    pub fn attr(mut self, ty: u16, data: &[u8]) -> Msg {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    pub fn u8(self, ty: u16, v: u8) -> Msg {
        self.attr(ty, &[v])
    }
    pub fn u32(self, ty: u16, v: u32) -> Msg {
        self.attr(ty, &v.to_ne_bytes())
    }
    pub fn be16(self, ty: u16, v: u16) -> Msg {
        self.attr(ty, &v.to_be_bytes())
    }
    pub fn be32(self, ty: u16, v: u32) -> Msg {
        self.attr(ty, &v.to_be_bytes())
    }
    /// A NUL-terminated string.
    pub fn str(self, ty: u16, s: &str) -> Msg {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.attr(ty, &b)
    }

    /// Opens a nested attribute; close it with [`Msg::end`].
    pub fn begin(mut self, ty: u16) -> Msg {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Opens a nested attribute whose type is not flagged NLA_F_NESTED (veth's peer, whose
    /// content starts with a fixed ifinfomsg).
    pub fn begin_plain(mut self, ty: u16) -> Msg {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self
    }

    pub fn end(mut self) -> Msg {
        if let Some(start) = self.open.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// The finished bytes with sequence number `seq`.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        while self.open.pop().is_some() {}
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// One message of an answer.
pub struct Reply<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// The messages in one datagram.
pub fn replies(buf: &[u8]) -> impl Iterator<Item = Reply<'_>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 16 > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let r = Reply {
            ty: u16::from_ne_bytes(buf[off + 4..off + 6].try_into().ok()?),
            flags: u16::from_ne_bytes(buf[off + 6..off + 8].try_into().ok()?),
            seq: u32::from_ne_bytes(buf[off + 8..off + 12].try_into().ok()?),
            payload: &buf[off + 16..off + len],
        };
        off += (len + 3) & !3;
        Some(r)
    })
}

/// The attributes in `buf` (which starts right after a fixed part), as (type, data).
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & NLA_TYPE_MASK;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let data = &buf[off + 4..off + len];
        off += (len + 3) & !3;
        Some((ty, data))
    })
}

/// The first attribute of type `ty`.
pub fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, d)| d)
}

pub fn attr_u32(buf: &[u8], ty: u16) -> Option<u32> {
    Some(u32::from_ne_bytes(attr(buf, ty)?.get(..4)?.try_into().ok()?))
}

/// The errno of an NLMSG_ERROR payload (0 = ACK).
fn error_code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

/// A netlink connection that numbers its requests.
pub struct Conn {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(protocol: libc::c_int) -> io::Result<Conn> {
        Ok(Conn {
            sock: NlSocket::open(protocol)?,
            seq: 0,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Route netlink (links, addresses, routes, neighbours).
    pub fn route() -> io::Result<Conn> {
        Conn::open(libc::NETLINK_ROUTE)
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `msg` asking for an ACK; `Ok` for the ACK, the errno otherwise.
    pub fn request(&mut self, msg: Msg) -> io::Result<()> {
        let seq = self.next_seq();
        let bytes = msg.finish(seq);
        self.sock.send(&with_ack(bytes))?;
        self.wait_acks(&[seq])
    }

    /// Sends prepared bytes (a batch) and waits for the ACK of each of `seqs`: the first error
    /// wins.
    pub fn send_and_wait(&mut self, bytes: &[u8], seqs: &[u32]) -> io::Result<()> {
        self.sock.send(bytes)?;
        self.wait_acks(seqs)
    }

    /// Sends a big nftables batch in which only some messages ask for an ACK (`acked`, the last
    /// one among them); the kernel answers every failing message anyway. Waits for the last ACK
    /// and fails with the first error of any message.
    pub fn send_batch(&mut self, bytes: &[u8], acked: &[u32]) -> io::Result<()> {
        self.sock.reserve_send(bytes.len())?;
        self.sock.send(bytes)?;
        let Some(&last) = acked.last() else {
            return Ok(());
        };
        let mut first_err: Option<io::Error> = None;
        loop {
            let n = match self.sock.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) => return Err(first_err.unwrap_or(e)),
            };
            let mut done = false;
            for r in replies(&self.buf[..n]) {
                if r.ty != NLMSG_ERROR {
                    continue;
                }
                match error_code(r.payload) {
                    Some(0) => {}
                    Some(e) => {
                        first_err.get_or_insert(io::Error::from_raw_os_error(-e));
                    }
                    None => {
                        first_err.get_or_insert(io::Error::other("short netlink error"));
                    }
                }
                done |= r.seq == last;
            }
            if done {
                return first_err.map_or(Ok(()), Err);
            }
        }
    }

    fn wait_acks(&mut self, seqs: &[u32]) -> io::Result<()> {
        let mut pending: Vec<u32> = seqs.to_vec();
        let mut first_err: Option<io::Error> = None;
        while !pending.is_empty() {
            // A failed batch might leave some messages unanswered: then its error is the answer.
            let n = match self.sock.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) => return Err(first_err.unwrap_or(e)),
            };
            for r in replies(&self.buf[..n]) {
                if r.ty != NLMSG_ERROR {
                    continue;
                }
                if let Some(i) = pending.iter().position(|s| *s == r.seq) {
                    pending.swap_remove(i);
                    match error_code(r.payload) {
                        Some(0) => {}
                        Some(e) => {
                            first_err.get_or_insert(io::Error::from_raw_os_error(-e));
                        }
                        None => {
                            first_err.get_or_insert(io::Error::other("short netlink error"));
                        }
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sends a dump request and returns every answering message's payload.
    pub fn dump(&mut self, msg: Msg) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.next_seq();
        self.sock.send(&msg.finish(seq))?;
        let mut out = Vec::new();
        loop {
            let n = self.sock.recv(&mut self.buf)?;
            for r in replies(&self.buf[..n]) {
                if r.seq != seq {
                    continue;
                }
                match r.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        return match error_code(r.payload) {
                            Some(0) => Ok(out),
                            Some(e) => Err(io::Error::from_raw_os_error(-e)),
                            None => Err(io::Error::other("short netlink error")),
                        }
                    }
                    _ => out.push(r.payload.to_vec()),
                }
                if r.flags & NLM_F_MULTI == 0 {
                    return Ok(out);
                }
            }
        }
    }
}

/// Sets NLM_F_ACK in a finished message's header.
pub fn with_ack(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() >= 8 {
        let flags = u16::from_ne_bytes([bytes[6], bytes[7]]) | NLM_F_ACK;
        bytes[6..8].copy_from_slice(&flags.to_ne_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_have_their_lengths() {
        let m = Msg::new(16, NLM_F_CREATE)
            .fixed(&[0u8; 16])
            .str(3, "cni0")
            .begin(18)
            .str(1, "bridge")
            .end()
            .finish(5);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 5);
        let body = &m[32..];
        let a: Vec<(u16, Vec<u8>)> = attrs(body).map(|(t, d)| (t, d.to_vec())).collect();
        assert_eq!(a[0], (3, b"cni0\0".to_vec()));
        assert_eq!(a[1].0, 18);
        assert_eq!(attr(&a[1].1, 1), Some(&b"bridge\0"[..]));
        // The nested flag is stripped when parsing but present on the wire.
        assert_eq!(u16::from_ne_bytes([body[14], body[15]]), 18 | NLA_F_NESTED);
    }

    #[test]
    fn replies_split_a_datagram() {
        let a = Msg::new(NLMSG_ERROR, 0).fixed(&0i32.to_ne_bytes()).finish(1);
        let b = Msg::new(NLMSG_DONE, 0).fixed(&[0u8; 4]).finish(2);
        let both = [a, b].concat();
        let r: Vec<(u16, u32)> = replies(&both).map(|r| (r.ty, r.seq)).collect();
        assert_eq!(r, [(NLMSG_ERROR, 1), (NLMSG_DONE, 2)]);
        assert_eq!(replies(&both[..10]).count(), 0);
    }
}
