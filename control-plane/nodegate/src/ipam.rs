//! Pod CIDRs for nodes (what kube-controller-manager's node IPAM does with
//! `--allocate-node-cidrs`): each node gets the lowest free `/24` (by default) of the cluster CIDR
//! (`10.244.0.0/16`, flannel's and kubeadm's default) when it registers, written to
//! `spec.podCIDR` and `spec.podCIDRs` and told to the node in its Welcome.
//!
//! Allocation reads which ranges the Nodes already hold, so it needs no state of its own and
//! survives restarts; allocations within this process are serialised by the gate.

use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The range node pod CIDRs are cut from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodCidrs {
    base: u32,
    prefix: u8,
    node_prefix: u8,
}

/// Why a cluster CIDR cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid cluster CIDR {cidr:?}: {reason}")]
pub struct CidrError {
    cidr: String,
    reason: &'static str,
}

impl PodCidrs {
    /// `cidr` like `10.244.0.0/16`, cut into blocks of `/node_prefix` (e.g. 24).
    pub fn parse(cidr: &str, node_prefix: u8) -> Result<PodCidrs, CidrError> {
        let err = |reason| CidrError {
            cidr: cidr.to_string(),
            reason,
        };
        let (addr, len) = cidr
            .split_once('/')
            .ok_or_else(|| err("expected ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err("not an IPv4 address"))?;
        let prefix: u8 = len.parse().map_err(|_| err("bad prefix length"))?;
        if prefix > 30 || node_prefix > 30 || node_prefix < prefix {
            return Err(err(
                "the node prefix must be longer than the cluster prefix, both ≤ 30",
            ));
        }
        let base = u32::from(addr);
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        if base & !mask != 0 {
            return Err(err("host bits set"));
        }
        Ok(PodCidrs {
            base,
            prefix,
            node_prefix,
        })
    }

    /// The default: `10.244.0.0/16` in `/24`s.
    pub fn flannel_default() -> PodCidrs {
        PodCidrs {
            base: u32::from(Ipv4Addr::new(10, 244, 0, 0)),
            prefix: 16,
            node_prefix: 24,
        }
    }

    fn blocks(&self) -> u64 {
        1u64 << (self.node_prefix - self.prefix)
    }

    fn block(&self, i: u64) -> String {
        let start = self.base + ((i as u32) << (32 - self.node_prefix));
        format!("{}/{}", Ipv4Addr::from(start), self.node_prefix)
    }

    /// The lowest block not in `used`.
    pub(crate) fn first_free(&self, used: &HashSet<String>) -> Option<String> {
        (0..self.blocks())
            .map(|i| self.block(i))
            .find(|b| !used.contains(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_the_cluster_range_in_order() {
        let c = PodCidrs::parse("10.244.0.0/16", 24).unwrap();
        assert_eq!(c, PodCidrs::flannel_default());
        let mut used = HashSet::new();
        assert_eq!(c.first_free(&used).unwrap(), "10.244.0.0/24");
        used.insert("10.244.0.0/24".to_string());
        used.insert("10.244.2.0/24".to_string());
        assert_eq!(c.first_free(&used).unwrap(), "10.244.1.0/24");
        let small = PodCidrs::parse("192.168.0.0/23", 24).unwrap();
        let full: HashSet<String> = ["192.168.0.0/24", "192.168.1.0/24"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(small.first_free(&full), None);
    }

    #[test]
    fn rejects_bad_ranges() {
        assert!(PodCidrs::parse("10.244.0.1/16", 24).is_err());
        assert!(PodCidrs::parse("10.244.0.0/24", 16).is_err());
        assert!(PodCidrs::parse("10.244.0.0", 24).is_err());
        assert!(PodCidrs::parse("nope/16", 24).is_err());
    }
}
