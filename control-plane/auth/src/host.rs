//! The host's own identity for the serving certificate: its interface addresses (from
//! `getifaddrs(3)`, no external commands) and its hostname.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every address configured on an interface of this host that a client could dial: IPv4 and
/// global/unique-local IPv6. IPv6 link-local addresses are left out (they need a zone to dial).
pub(crate) fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a pointer to a list it allocated into `head`; we only read it
    // if the call succeeded and free it exactly once below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "getifaddrs failed; the serving certificate names only the configured addresses"
        );
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null and points to a sockaddr whose family field tells
            // which concrete sockaddr type it is; we cast only to the type the family names.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            let addr = match family {
                libc::AF_INET => {
                    // SAFETY: family is AF_INET, so this is a sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
                }
                libc::AF_INET6 => {
                    // SAFETY: family is AF_INET6, so this is a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            };
            if let Some(a) = addr {
                if !is_link_local_v6(&a) && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

fn is_link_local_v6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The host's name, if it is set and is a valid DNS name.
pub(crate) fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its full length, which we pass.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    valid.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_among_the_host_addresses() {
        let addrs = host_addresses();
        assert!(addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{addrs:?}");
        assert!(addrs.iter().all(|a| !is_link_local_v6(a)));
    }
}
