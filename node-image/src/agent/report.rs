//! The node's report: addresses, capacity, system info and conditions, gathered from the
//! machine each time (cheap: a few small /proc files and two syscalls) so that a change — a new
//! address from DHCP, a resized /var — reaches the control plane with the next report.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use keel_proto::{BootPhase, Condition, NodeAddress, NodeReport, Resources, SystemInfo};

use super::host;

pub const KUBELET_VERSION: &str = "v1.32.0-keel";
pub const RUNTIME_VERSION: &str = concat!("keel://", env!("CARGO_PKG_VERSION"));
const OS_IMAGE: &str = concat!("Keel ", env!("CARGO_PKG_VERSION"));
const MAX_PODS: u32 = 110;
/// The kubelet's default hard eviction threshold for memory (100Mi) is held back from pods.
const MEMORY_RESERVE: u64 = 100 * 1024 * 1024;
/// … and 10 % of the node's filesystem (`nodefs.available<10%`).
const STORAGE_RESERVE_PERCENT: u64 = 10;

/// Everything needed to build reports for one node.
pub struct Reporter {
    pub node_name: String,
    /// The filesystem whose size is the node's ephemeral storage (/var).
    pub storage_path: PathBuf,
    pub machine_id: String,
    /// Listed first among the InternalIPs (the node-to-node address, if configured).
    pub preferred_ip: Option<Ipv4Addr>,
    pub boot_phases: Vec<BootPhase>,
    /// A hollow node's report (`keel-node hollow`): sent as is instead of this machine's facts.
    pub simulated: Option<NodeReport>,
}

impl Reporter {
    pub fn report(&self) -> NodeReport {
        if let Some(r) = &self.simulated {
            return r.clone();
        }
        let mut ips: Vec<Ipv4Addr> = host::ipv4_addresses()
            .into_iter()
            .filter(|a| !crate::net::pod_network::is_pod_interface(&a.interface))
            .map(|a| a.address)
            .collect();
        ips.dedup();
        if let Some(p) = self.preferred_ip {
            if let Some(i) = ips.iter().position(|a| *a == p) {
                ips.remove(i);
                ips.insert(0, p);
            }
        }
        let mut addresses: Vec<NodeAddress> = ips
            .iter()
            .map(|a| NodeAddress {
                r#type: "InternalIP".into(),
                address: a.to_string(),
            })
            .collect();
        addresses.push(NodeAddress {
            r#type: "Hostname".into(),
            address: self.node_name.clone(),
        });

        let memory = host::memory_total().unwrap_or(0);
        let storage = host::filesystem_size(&self.storage_path).unwrap_or(0);
        let cpu_millis = host::cpus() * 1000;
        let capacity = Resources {
            cpu_millis,
            memory_bytes: memory,
            ephemeral_storage_bytes: storage,
            pods: MAX_PODS,
        };
        let allocatable = Resources {
            cpu_millis,
            memory_bytes: memory.saturating_sub(MEMORY_RESERVE),
            // Whole KiB, so the quantity prints as `NNNKi` like the kubelet's.
            ephemeral_storage_bytes: (storage / 100 * (100 - STORAGE_RESERVE_PERCENT)) / 1024 * 1024,
            pods: MAX_PODS,
        };

        let machine_id = self.machine_id.clone();
        let system_uuid = host::system_uuid().unwrap_or_else(|| uuid_form(&machine_id));
        let system_info = SystemInfo {
            machine_id,
            system_uuid,
            boot_id: host::boot_id(),
            kernel_version: host::kernel_release(),
            os_image: host::os_pretty_name().unwrap_or_else(|| OS_IMAGE.to_string()),
            container_runtime_version: RUNTIME_VERSION.into(),
            kubelet_version: KUBELET_VERSION.into(),
            operating_system: "linux".into(),
            architecture: host::kube_arch().into(),
        };
        let cond = |t: &str, s: &str| Condition {
            r#type: t.into(),
            status: s.into(),
            reason: String::new(),
            message: String::new(),
        };
        NodeReport {
            addresses,
            capacity: Some(capacity),
            allocatable: Some(allocatable),
            system_info: Some(system_info),
            conditions: vec![
                crate::net::network_agent::network_condition(),
                cond("MemoryPressure", "False"),
                cond("DiskPressure", "False"),
                cond("PIDPressure", "False"),
                cond("Ready", "True"),
            ],
            boot_phases: self.boot_phases.clone(),
            overlay: None,
        }
    }
}

/// `0123…` (32 hex) as `01234567-89ab-cdef-0123-456789abcdef`.
fn uuid_form(hex32: &str) -> String {
    if hex32.len() != 32 || !hex32.is_ascii() {
        return hex32.to_string();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex32[0..8],
        &hex32[8..12],
        &hex32[12..16],
        &hex32[16..20],
        &hex32[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_this_machine() {
        let r = Reporter {
            node_name: "n1".into(),
            storage_path: "/".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            preferred_ip: None,
            boot_phases: vec![],
            simulated: None,
        }
        .report();
        assert_eq!(r.addresses.last().unwrap().address, "n1");
        let cap = r.capacity.unwrap();
        let alloc = r.allocatable.unwrap();
        assert!(cap.memory_bytes > alloc.memory_bytes);
        assert!(cap.ephemeral_storage_bytes > alloc.ephemeral_storage_bytes);
        assert_eq!(alloc.ephemeral_storage_bytes % 1024, 0);
        assert_eq!(cap.cpu_millis % 1000, 0);
        let si = r.system_info.unwrap();
        assert_eq!(si.kubelet_version, "v1.32.0-keel");
        assert!(si.system_uuid.len() == 36);
        assert_eq!(
            r.conditions.iter().find(|c| c.r#type == "Ready").unwrap().status,
            "True"
        );
    }

    #[test]
    fn uuid_formatting() {
        assert_eq!(
            uuid_form("0123456789abcdef0123456789abcdef"),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
    }
}
