//! A small DHCPv4 client (RFC 2131) for PID 1: DISCOVER → OFFER → REQUEST → ACK, and renewal.
//!
//! It runs before the interface has an address, so it speaks through an AF_PACKET socket
//! ([`crate::sys::socket::PacketSocket`]) and builds the IPv4 and UDP headers itself; replies
//! are requested as broadcasts (the BROADCAST flag) and filtered by port and transaction id.
//! Only the options a node uses are read: subnet mask, router, DNS, host and domain name, NTP
//! servers, lease time and server id. The packet format is hand-written (it is ~100 lines and
//! keeps the static binary small).

use crate::sys::socket::PacketSocket;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;

/// DHCP message types (option 53).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Ack = 5,
    Nak = 6,
}

impl MsgType {
    fn from_u8(v: u8) -> Option<MsgType> {
        Some(match v {
            1 => MsgType::Discover,
            2 => MsgType::Offer,
            3 => MsgType::Request,
            5 => MsgType::Ack,
            6 => MsgType::Nak,
            _ => return None,
        })
    }
}

/// What a server handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub ntp: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    pub server_id: Option<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("opening a packet socket: {0}")]
    Socket(std::io::Error),
    #[error("sending: {0}")]
    Send(std::io::Error),
    #[error("no answer from a DHCP server within {0:?}")]
    Timeout(Duration),
    #[error("the server refused the request (NAK)")]
    Nak,
}

/// A message from the client.
pub struct Request<'a> {
    pub ty: MsgType,
    pub xid: u32,
    pub mac: [u8; 6],
    pub ciaddr: Ipv4Addr,
    pub requested: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub hostname: Option<&'a str>,
}

/// Encodes a BOOTP/DHCP request payload.
pub fn encode(r: &Request) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = BOOTREQUEST;
    p[1] = 1; // htype ethernet
    p[2] = 6; // hlen
    p[4..8].copy_from_slice(&r.xid.to_be_bytes());
    p[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // flags: BROADCAST
    p[12..16].copy_from_slice(&r.ciaddr.octets());
    p[28..34].copy_from_slice(&r.mac);
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[53, 1, r.ty as u8]);
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&r.mac);
    push_opt(&mut p, 61, &client_id);
    if let Some(a) = r.requested {
        push_opt(&mut p, 50, &a.octets());
    }
    if let Some(s) = r.server_id {
        push_opt(&mut p, 54, &s.octets());
    }
    if let Some(h) = r.hostname {
        push_opt(&mut p, 12, &h.as_bytes()[..h.len().min(63)]);
    }
    push_opt(&mut p, 57, &1500u16.to_be_bytes());
    // subnet, router, DNS, host name, domain, NTP, lease, server id, T1, T2
    push_opt(&mut p, 55, &[1, 3, 6, 12, 15, 42, 51, 54, 58, 59]);
    p.push(255);
    while p.len() < 300 {
        p.push(0);
    }
    p
}

fn push_opt(p: &mut Vec<u8>, code: u8, data: &[u8]) {
    p.push(code);
    p.push(data.len() as u8);
    p.extend_from_slice(data);
}

/// A decoded server reply.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub ty: MsgType,
    pub xid: u32,
    pub lease: Lease,
}

fn addrs(data: &[u8]) -> Vec<Ipv4Addr> {
    data.chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect()
}

fn text(data: &[u8]) -> Option<String> {
    let s: String = String::from_utf8_lossy(data).trim_end_matches('\0').to_string();
    (!s.is_empty() && !s.chars().any(char::is_control)).then_some(s)
}

/// Decodes a BOOTP/DHCP reply payload addressed to `mac`.
pub fn decode(p: &[u8], mac: &[u8; 6]) -> Option<Reply> {
    if p.len() < 240 || p[0] != BOOTREPLY || &p[28..34] != mac || p[236..240] != MAGIC {
        return None;
    }
    let xid = u32::from_be_bytes(p[4..8].try_into().ok()?);
    let yiaddr = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let mut lease = Lease {
        address: yiaddr,
        prefix_len: 24,
        router: None,
        dns: Vec::new(),
        hostname: None,
        domain: None,
        ntp: Vec::new(),
        lease_secs: 3600,
        server_id: None,
    };
    let mut ty = None;
    let mut i = 240;
    while i < p.len() {
        let code = p[i];
        if code == 0 {
            i += 1;
            continue;
        }
        if code == 255 || i + 1 >= p.len() {
            break;
        }
        let len = p[i + 1] as usize;
        let data = p.get(i + 2..i + 2 + len)?;
        match code {
            53 => ty = data.first().and_then(|&t| MsgType::from_u8(t)),
            1 if len == 4 => {
                lease.prefix_len = u32::from_be_bytes(data.try_into().ok()?).leading_ones() as u8
            }
            3 => lease.router = addrs(data).first().copied(),
            6 => lease.dns = addrs(data),
            12 => lease.hostname = text(data),
            15 => lease.domain = text(data),
            42 => lease.ntp = addrs(data),
            51 if len == 4 => lease.lease_secs = u32::from_be_bytes(data.try_into().ok()?),
            54 => lease.server_id = addrs(data).first().copied(),
            _ => {}
        }
        i += 2 + len;
    }
    Some(Reply { ty: ty?, xid, lease })
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Wraps a UDP payload into an IPv4 packet (UDP checksum left 0, allowed for IPv4).
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0x10]); // version 4, IHL 5, TOS low delay
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]); // id, flags, fragment offset
    p.extend_from_slice(&[64, 17, 0, 0]); // TTL, UDP, checksum placeholder
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// The UDP payload of an IPv4 packet sent to `dport`, if that is what it is.
pub fn udp_payload(packet: &[u8], dport: u16) -> Option<&[u8]> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || ihl < 20 || *packet.get(9)? != 17 {
        return None;
    }
    let udp = packet.get(ihl..)?;
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != dport {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    udp.get(8..len.max(8))
}

/// A DHCP client for one interface. The packet socket is opened per exchange and closed after
/// it: an open AF_PACKET socket would get a copy of every IPv4 packet on the NIC.
pub struct Client {
    ifindex: i32,
    mac: [u8; 6],
    hostname: Option<String>,
}

impl Client {
    pub fn new(ifindex: i32, mac: [u8; 6], hostname: Option<String>) -> Result<Client, DhcpError> {
        // Fail early (and once) if packet sockets are unavailable.
        drop(PacketSocket::open(ifindex).map_err(DhcpError::Socket)?);
        Ok(Client {
            ifindex,
            mac,
            hostname,
        })
    }

    fn xid(&self) -> u32 {
        let t = crate::sys::monotonic().subsec_nanos();
        u32::from_be_bytes([self.mac[2], self.mac[3], self.mac[4], self.mac[5]]) ^ t
    }

    fn send(sock: &PacketSocket, req: &Request) -> Result<(), DhcpError> {
        let payload = encode(req);
        let src = req.ciaddr;
        let packet = ipv4_udp(src, Ipv4Addr::BROADCAST, CLIENT_PORT, SERVER_PORT, &payload);
        sock.send_broadcast(&packet).map_err(DhcpError::Send)
    }

    /// Sends `req` and waits for a reply of one of `want` types, retransmitting with back-off
    /// (0.5 s, 1 s, 2 s, 4 s…) until `deadline`.
    fn exchange(&self, req: &Request, want: &[MsgType], deadline: Instant) -> Result<Reply, DhcpError> {
        let sock = PacketSocket::open(self.ifindex).map_err(DhcpError::Socket)?;
        let start = Instant::now();
        let mut wait = Duration::from_millis(500);
        let mut buf = vec![0u8; 1600];
        loop {
            Self::send(&sock, req)?;
            let resend_at = Instant::now() + wait;
            loop {
                let now = Instant::now();
                let until = resend_at.min(deadline);
                if now >= until {
                    break;
                }
                let n = match sock.recv(&mut buf, until - now) {
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                    // A socket error would repeat at once: wait for the next retransmission.
                    Err(_) => {
                        std::thread::sleep(resend_at.min(deadline).saturating_duration_since(Instant::now()));
                        break;
                    }
                };
                let Some(payload) = udp_payload(&buf[..n], CLIENT_PORT) else {
                    continue;
                };
                let Some(reply) = decode(payload, &self.mac) else {
                    continue;
                };
                if reply.xid != req.xid {
                    continue;
                }
                if reply.ty == MsgType::Nak {
                    return Err(DhcpError::Nak);
                }
                if want.contains(&reply.ty) {
                    return Ok(reply);
                }
            }
            if Instant::now() >= deadline {
                return Err(DhcpError::Timeout(start.elapsed()));
            }
            wait = (wait * 2).min(Duration::from_secs(8));
        }
    }

    /// DISCOVER → OFFER → REQUEST → ACK.
    pub fn obtain(&self, timeout: Duration) -> Result<Lease, DhcpError> {
        let deadline = Instant::now() + timeout;
        let xid = self.xid();
        let mut req = Request {
            ty: MsgType::Discover,
            xid,
            mac: self.mac,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            requested: None,
            server_id: None,
            hostname: self.hostname.as_deref(),
        };
        let offer = self.exchange(&req, &[MsgType::Offer], deadline)?;
        req.ty = MsgType::Request;
        req.requested = Some(offer.lease.address);
        req.server_id = offer.lease.server_id;
        let ack = self.exchange(&req, &[MsgType::Ack], deadline)?;
        Ok(ack.lease)
    }

    /// Renews `lease` (a REQUEST with ciaddr set, broadcast, so it also works as a rebind).
    pub fn renew(&self, lease: &Lease, timeout: Duration) -> Result<Lease, DhcpError> {
        let req = Request {
            ty: MsgType::Request,
            xid: self.xid(),
            mac: self.mac,
            ciaddr: lease.address,
            requested: None,
            server_id: None,
            hostname: self.hostname.as_deref(),
        };
        Ok(self
            .exchange(&req, &[MsgType::Ack], Instant::now() + timeout)?
            .lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// Builds a server reply the way a DHCP server would.
    fn server_reply(ty: u8, xid: u32, opts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut p = vec![0u8; 236];
        p[0] = BOOTREPLY;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p[28..34].copy_from_slice(&MAC);
        p.extend_from_slice(&MAGIC);
        push_opt(&mut p, 53, &[ty]);
        for (c, d) in opts {
            push_opt(&mut p, *c, d);
        }
        p.push(255);
        p
    }

    #[test]
    fn discover_encoding() {
        let p = encode(&Request {
            ty: MsgType::Discover,
            xid: 0xdeadbeef,
            mac: MAC,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            requested: None,
            server_id: None,
            hostname: Some("node-1"),
        });
        assert_eq!(p[0], BOOTREQUEST);
        assert_eq!(&p[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&p[28..34], &MAC);
        assert_eq!(&p[236..240], &MAGIC);
        assert_eq!(&p[240..243], &[53, 1, 1]);
        assert!(p
            .windows(8)
            .any(|w| w == [12, 6, b'n', b'o', b'd', b'e', b'-', b'1']));
        assert!(p.len() >= 300);
    }

    #[test]
    fn ack_decoding() {
        let p = server_reply(
            5,
            7,
            &[
                (1, &[255, 255, 255, 0]),
                (3, &[10, 0, 2, 2]),
                (6, &[10, 0, 2, 3, 1, 1, 1, 1]),
                (12, b"worker-7"),
                (42, &[10, 0, 2, 4]),
                (51, &86400u32.to_be_bytes()),
                (54, &[10, 0, 2, 2]),
            ],
        );
        let r = decode(&p, &MAC).unwrap();
        assert_eq!(r.ty, MsgType::Ack);
        assert_eq!(r.xid, 7);
        assert_eq!(r.lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.lease.prefix_len, 24);
        assert_eq!(r.lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            r.lease.dns,
            vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert_eq!(r.lease.hostname.as_deref(), Some("worker-7"));
        assert_eq!(r.lease.ntp, vec![Ipv4Addr::new(10, 0, 2, 4)]);
        assert_eq!(r.lease.lease_secs, 86400);
        // Someone else's reply or a truncated one is ignored.
        assert!(decode(&p, &[0; 6]).is_none());
        assert!(decode(&p[..200], &MAC).is_none());
    }

    #[test]
    fn ip_udp_round_trip_and_checksum() {
        let pkt = ipv4_udp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, b"hello");
        assert_eq!(checksum(&pkt[..20]), 0, "a valid header sums to zero");
        assert_eq!(udp_payload(&pkt, 67), Some(&b"hello"[..]));
        assert_eq!(udp_payload(&pkt, 68), None);
        // RFC 1071 example words
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }
}
