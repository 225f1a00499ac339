//! PID 1's network bring-up at boot and the DHCP lease it keeps afterwards (the mechanics live
//! in [`crate::net`]; this file decides which NIC gets what).

use super::console::phase;
use super::supervise;
use crate::config::{Interface, NodeConfig};
use crate::net::{self, dhcp, netlink::Rtnl, Nic};
use crate::say;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// How long boot waits for a DHCP lease before going on without an address (the supervision
/// loop keeps asking).
const DHCP_BOOT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps NIC 0's DHCP lease from the supervision loop: renews it at half its lifetime, or, when
/// boot went on without one, keeps asking for one every 30 s.
pub(super) struct LeaseTimer {
    client: dhcp::Client,
    nic: Nic,
    pub(super) lease: Option<dhcp::Lease>,
    next: Instant,
}

const DHCP_RETRY: Duration = Duration::from_secs(30);

fn half_life(lease: &dhcp::Lease) -> Instant {
    Instant::now() + Duration::from_secs(u64::from(lease.lease_secs.max(60) / 2))
}

/// Puts a lease on the interface: address, default route, resolv.conf.
fn apply_lease(rtnl: &mut Rtnl, nic: &Nic, lease: &dhcp::Lease) -> std::io::Result<()> {
    rtnl.add_addr(nic.ifindex, lease.address, lease.prefix_len)?;
    if let Some(gw) = lease.router {
        let onlink = !net::in_subnet(lease.address, lease.prefix_len, gw);
        rtnl.default_route(nic.ifindex, gw, lease.address, onlink, true)?;
    }
    Ok(())
}

impl LeaseTimer {
    fn new(client: dhcp::Client, nic: Nic, lease: Option<dhcp::Lease>) -> LeaseTimer {
        let next = lease.as_ref().map_or(Instant::now() + DHCP_RETRY, half_life);
        LeaseTimer {
            client,
            nic,
            lease,
            next,
        }
    }
}

impl supervise::Timer for LeaseTimer {
    fn due(&self) -> Option<Instant> {
        Some(self.next)
    }

    fn fire(&mut self) {
        let result = match &self.lease {
            Some(old) => self.client.renew(old, Duration::from_secs(5)),
            None => self.client.obtain(Duration::from_secs(5)),
        };
        match result {
            Ok(lease) => {
                let changed = self.lease.as_ref().map(|l| l.address) != Some(lease.address);
                if changed {
                    let applied = Rtnl::open().and_then(|mut rtnl| apply_lease(&mut rtnl, &self.nic, &lease));
                    match applied {
                        Ok(()) => say!(
                            "network up: {} {}/{} via DHCP",
                            self.nic.name,
                            lease.address,
                            lease.prefix_len
                        ),
                        Err(e) => say!("network: applying the DHCP lease on {}: {e}", self.nic.name),
                    }
                    if let Err(e) = net::write_resolv_conf(&lease.dns, lease.domain.as_deref()) {
                        say!("/run/resolv.conf: {e}");
                    }
                }
                self.next = half_life(&lease);
                self.lease = Some(lease);
            }
            Err(e) => {
                if self.lease.is_some() {
                    say!(
                        "DHCP renewal on {}: {e}; retrying in {DHCP_RETRY:?}",
                        self.nic.name
                    );
                }
                self.next = Instant::now() + DHCP_RETRY;
            }
        }
    }
}

fn iface(nic: &Nic, ipv4: Option<String>, gateway: Option<Ipv4Addr>, method: &str) -> Interface {
    Interface {
        name: nic.name.clone(),
        mac: nic.mac_string(),
        ipv4,
        gateway,
        method: method.into(),
    }
}

/// What network setup found out.
#[derive(Default)]
pub(super) struct NetResult {
    pub(super) lease: Option<LeaseTimer>,
    /// The name to use when none is configured: DHCP's host name, else from NIC 0's MAC.
    pub(super) fallback_name: Option<String>,
}

/// Loopback, NIC 0 (static or DHCP), NIC 1 (`keel.ip2`), the rest up. Fills `cfg.interfaces`
/// and writes resolv.conf.
pub(super) fn bring_up_network(cfg: &mut NodeConfig) -> NetResult {
    let mut result = NetResult::default();
    let mut rtnl = match Rtnl::open() {
        Ok(r) => r,
        Err(e) => {
            say!("network: rtnetlink: {e}");
            return result;
        }
    };
    if let Some(lo) = net::loopback_index() {
        if let Err(e) = rtnl.link_up(lo) {
            say!("network: lo up: {e}");
        }
    }
    let nics = net::nics();
    for nic in &nics {
        if let Err(e) = rtnl.link_up(nic.ifindex) {
            say!("network: {} up: {e}", nic.name);
        }
    }
    let Some(nic0) = nics.first().cloned() else {
        say!("network: no Ethernet interface found");
        return result;
    };
    let mut timer = None;
    let mut dns = Vec::new();
    let mut domain = None;
    if let Some(ip) = cfg.static_ip.clone() {
        match net::apply_static(&mut rtnl, &nic0, &ip) {
            Ok(()) => {
                cfg.interfaces.push(iface(
                    &nic0,
                    Some(format!("{}/{}", ip.address, ip.prefix_len)),
                    ip.gateway,
                    "static",
                ));
                dns = ip.dns.clone();
            }
            Err(e) => {
                say!(
                    "network: {} static {}/{}: {e}",
                    nic0.name,
                    ip.address,
                    ip.prefix_len
                );
                cfg.interfaces.push(iface(&nic0, None, None, "static"));
            }
        }
    } else {
        match dhcp::Client::new(nic0.ifindex, nic0.mac, cfg.name.clone()) {
            Err(e) => {
                say!("network: DHCP on {}: {e}", nic0.name);
                cfg.interfaces.push(iface(&nic0, None, None, "dhcp"));
            }
            Ok(client) => match client.obtain(DHCP_BOOT_TIMEOUT) {
                Ok(lease) => {
                    if let Err(e) = apply_lease(&mut rtnl, &nic0, &lease) {
                        say!("network: applying the DHCP lease on {}: {e}", nic0.name);
                    }
                    phase(
                        "network",
                        &format!(
                            "network up: {} {}/{} via DHCP (gateway {})",
                            nic0.name,
                            lease.address,
                            lease.prefix_len,
                            lease.router.map_or("none".into(), |g| g.to_string())
                        ),
                    );
                    cfg.interfaces.push(iface(
                        &nic0,
                        Some(format!("{}/{}", lease.address, lease.prefix_len)),
                        lease.router,
                        "dhcp",
                    ));
                    dns = lease.dns.clone();
                    domain = lease.domain.clone();
                    result.fallback_name = lease
                        .hostname
                        .as_deref()
                        .map(|h| h.split('.').next().unwrap_or(h).to_ascii_lowercase())
                        .filter(|h| NodeConfig::default().set("name", h).is_ok());
                    timer = Some(LeaseTimer::new(client, nic0.clone(), Some(lease)));
                }
                Err(e) => {
                    say!(
                        "network: DHCP on {}: {e}; going on without an address, retrying every {DHCP_RETRY:?}",
                        nic0.name
                    );
                    cfg.interfaces.push(iface(&nic0, None, None, "dhcp"));
                    timer = Some(LeaseTimer::new(client, nic0.clone(), None));
                }
            },
        }
    }
    if let (Some(_), Some(i)) = (
        &cfg.static_ip,
        cfg.interfaces.first().and_then(|i| i.ipv4.clone()),
    ) {
        phase("network", &format!("network up: {} {i} (static)", nic0.name));
    }
    for (n, nic) in nics.iter().enumerate().skip(1) {
        match (n, cfg.static_ip2.clone()) {
            (1, Some(ip)) => match net::apply_static(&mut rtnl, nic, &ip) {
                Ok(()) => cfg.interfaces.push(iface(
                    nic,
                    Some(format!("{}/{}", ip.address, ip.prefix_len)),
                    ip.gateway,
                    "static",
                )),
                Err(e) => {
                    say!(
                        "network: {} static {}/{}: {e}",
                        nic.name,
                        ip.address,
                        ip.prefix_len
                    );
                    cfg.interfaces.push(iface(nic, None, None, "static"));
                }
            },
            _ => cfg.interfaces.push(iface(nic, None, None, "none")),
        }
    }
    if result.fallback_name.is_none() {
        result.fallback_name = Some(net::default_hostname(&nic0.mac));
    }
    if let Err(e) = net::write_resolv_conf(&dns, domain.as_deref()) {
        say!("/run/resolv.conf: {e}");
    }
    result.lease = timer;
    result
}

/// Merges a config disk found after the network came up. Its static addresses are applied now
/// unless a higher-ranked source already configured that NIC.
pub(super) fn apply_late_config(cfg: &mut NodeConfig, disk: NodeConfig) {
    if disk.is_empty() {
        return;
    }
    let had_ip = cfg.static_ip.is_some();
    let had_ip2 = cfg.static_ip2.is_some();
    let (ip, ip2) = (disk.static_ip.clone(), disk.static_ip2.clone());
    cfg.sources.push("disk".into());
    cfg.fill_from(disk);
    let nics = net::nics();
    let Ok(mut rtnl) = Rtnl::open() else { return };
    for (slot, ip, had) in [(0usize, ip, had_ip), (1, ip2, had_ip2)] {
        let (Some(ip), false, Some(nic)) = (ip, had, nics.get(slot)) else {
            continue;
        };
        match net::apply_static(&mut rtnl, nic, &ip) {
            Ok(()) => {
                say!(
                    "config disk: {} {}/{} (static)",
                    nic.name,
                    ip.address,
                    ip.prefix_len
                );
                if let Some(i) = cfg.interfaces.get_mut(slot) {
                    i.ipv4 = Some(format!("{}/{}", ip.address, ip.prefix_len));
                    i.gateway = ip.gateway;
                    i.method = "static".into();
                }
                if slot == 0 && !ip.dns.is_empty() {
                    let _ = net::write_resolv_conf(&ip.dns, None);
                }
            }
            Err(e) => say!(
                "config disk: {} static {}/{}: {e}",
                nic.name,
                ip.address,
                ip.prefix_len
            ),
        }
    }
}
