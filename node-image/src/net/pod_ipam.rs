//! Pod IPs from the node's pod CIDR, one per pod sandbox, kept on disk so that an agent restart
//! (containers keep running) never hands out an address a live pod holds.
//!
//! The layout is the CNI `host-local` plugin's: one directory per range under
//! `/var/lib/keel/ipam` (`10.244.3.0_24/`), one file per allocated address named after it and
//! holding the pod's uid. Creating the file with `O_EXCL` is the allocation, so two callers can
//! never take the same address. `.0` is the network, `.1` the bridge (the pods' gateway), and the
//! last address the broadcast; the rest are handed out lowest first.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::cidr::Cidr;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free pod IP left in {0}")]
    Exhausted(Cidr),
    #[error("pod IP allocations under {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The allocations of one pod CIDR.
pub struct PodIpam {
    dir: PathBuf,
    cidr: Cidr,
}

impl PodIpam {
    /// The allocations of `cidr` under `root` (created if missing).
    pub fn open(root: &Path, cidr: Cidr) -> Result<PodIpam, IpamError> {
        let dir = root.join(format!("{}_{}", cidr.network, cidr.prefix));
        fs::create_dir_all(&dir).map_err(|source| IpamError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(PodIpam { dir, cidr })
    }

    fn io(&self, source: io::Error) -> IpamError {
        IpamError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    /// Every (address, pod uid) allocated.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(|e| self.io(e))? {
            let e = e.map_err(|e| self.io(e))?;
            let Ok(ip) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            if !self.cidr.contains(ip) {
                continue;
            }
            let uid = fs::read_to_string(e.path()).unwrap_or_default();
            out.push((ip, uid.trim().to_string()));
        }
        out.sort();
        Ok(out)
    }

    /// The address of pod `uid`: the one it holds already, else the lowest free one.
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr, IpamError> {
        let held = self.allocations()?;
        if let Some((ip, _)) = held.iter().find(|(_, u)| u == uid) {
            return Ok(*ip);
        }
        let last = self.cidr.size().saturating_sub(1).min(u64::from(u32::MAX)) as u32;
        for n in 2..last {
            let Some(ip) = self.cidr.nth(n) else { break };
            if held.iter().any(|(h, _)| *h == ip) {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(uid.as_bytes()).map_err(|e| self.io(e))?;
                    return Ok(ip);
                }
                // Taken since the listing: try the next.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.io(e)),
            }
        }
        Err(IpamError::Exhausted(self.cidr))
    }

    /// Frees the address of pod `uid`; returns it, or `None` if the pod held none.
    pub fn release(&self, uid: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let mut freed = None;
        for (ip, u) in self.allocations()? {
            if u == uid {
                match fs::remove_file(self.dir.join(ip.to_string())) {
                    Ok(()) => freed = Some(ip),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io(e)),
                }
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_lowest_free_and_keeps_it_per_pod() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = PodIpam::open(dir.path(), "10.244.3.0/24".parse().unwrap()).unwrap();
        assert_eq!(ipam.allocate("pod-a").unwrap(), ip("10.244.3.2"));
        assert_eq!(ipam.allocate("pod-b").unwrap(), ip("10.244.3.3"));
        // The same pod asking again (a sandbox re-attached) keeps its address.
        assert_eq!(ipam.allocate("pod-a").unwrap(), ip("10.244.3.2"));
        assert_eq!(ipam.release("pod-a").unwrap(), Some(ip("10.244.3.2")));
        assert_eq!(ipam.release("pod-a").unwrap(), None);
        assert_eq!(ipam.allocate("pod-c").unwrap(), ip("10.244.3.2"));
    }

    #[test]
    fn survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: Cidr = "10.244.7.0/24".parse().unwrap();
        {
            let ipam = PodIpam::open(dir.path(), cidr).unwrap();
            ipam.allocate("pod-a").unwrap();
            ipam.allocate("pod-b").unwrap();
        }
        let again = PodIpam::open(dir.path(), cidr).unwrap();
        assert_eq!(
            again.allocations().unwrap(),
            vec![
                (ip("10.244.7.2"), "pod-a".to_string()),
                (ip("10.244.7.3"), "pod-b".to_string())
            ]
        );
        assert_eq!(again.allocate("pod-c").unwrap(), ip("10.244.7.4"));
        assert!(dir.path().join("10.244.7.0_24/10.244.7.4").exists());
    }

    #[test]
    fn runs_out_and_never_hands_out_network_gateway_or_broadcast() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = PodIpam::open(dir.path(), "10.1.0.0/29".parse().unwrap()).unwrap();
        let got: Vec<Ipv4Addr> = (0..5).map(|i| ipam.allocate(&format!("p{i}")).unwrap()).collect();
        assert_eq!(got.first(), Some(&ip("10.1.0.2")));
        assert_eq!(got.last(), Some(&ip("10.1.0.6")));
        assert!(matches!(ipam.allocate("p9"), Err(IpamError::Exhausted(_))));
    }
}
