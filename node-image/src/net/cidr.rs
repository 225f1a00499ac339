//! IPv4 ranges as the pod network uses them: the cluster range (`10.244.0.0/16`), a node's pod
//! range (`10.244.3.0/24`), and the addresses inside one.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// `address/prefix` with the host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

/// Why a text is not a CIDR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{text:?} is not an IPv4 CIDR ({why})")]
pub struct CidrError {
    text: String,
    why: &'static str,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Cidr {
        let prefix = prefix.min(32);
        Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// The `n`th address of the range (0 = the network address), if it is inside.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    /// How many addresses the range holds.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The netmask as an address (`255.255.0.0`).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = |why| CidrError {
            text: s.to_string(),
            why,
        };
        let (a, p) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| err("expected ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err("not an IPv4 address"))?;
        let prefix: u8 = p.parse().map_err(|_| err("bad prefix length"))?;
        if prefix > 32 {
            return Err(err("prefix longer than 32"));
        }
        if u32::from(addr) & !mask(prefix) != 0 {
            return Err(err("host bits set"));
        }
        Ok(Cidr::new(addr, prefix))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let c: Cidr = "10.244.3.0/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.3.0/24");
        assert_eq!(c.nth(1), Some(Ipv4Addr::new(10, 244, 3, 1)));
        assert_eq!(c.nth(255), Some(Ipv4Addr::new(10, 244, 3, 255)));
        assert_eq!(c.nth(256), None);
        assert_eq!(c.size(), 256);
        assert!(c.contains(Ipv4Addr::new(10, 244, 3, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 4, 1)));
        let cluster: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(cluster.contains(Ipv4Addr::new(10, 244, 200, 9)));
        assert_eq!(cluster.netmask(), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().size(), 1 << 32);
    }

    #[test]
    fn refuses_what_is_not_a_range() {
        for bad in [
            "10.244.3.1/24",
            "10.244.3.0",
            "10.244.3.0/33",
            "x/8",
            "10.244.3.0/a",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
