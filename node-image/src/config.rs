//! The node's configuration: what PID 1 gathers at boot (kernel command line, the config archive
#![allow(dead_code)] // shared by init and agent, which are being built
//! appended to the initramfs, a config disk, VMware guestinfo) and hands to the agent as
//! `/run/keel/node.json`.

use std::net::Ipv4Addr;

/// Where PID 1 writes the configuration for the agent.
pub const NODE_CONFIG_PATH: &str = "/run/keel/node.json";

/// Where the agent keeps its key, certificate and state (on the writable /var).
pub const STATE_DIR: &str = "/var/lib/keel";

/// Everything a node needs to join and run. Fields are optional where a node can run without
/// them (a node with no `server` shows how to join it and waits).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// `keel.server=`: the control plane's node-gate URL, e.g. `https://10.0.2.100:9443`.
    pub server: Option<String>,
    /// `keel.token=`: a bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub token: Option<String>,
    /// `keel.ca-hash=`: `sha256:<hex>` of the cluster CA's public key.
    pub ca_hash: Option<String>,
    /// `keel.name=`: the node's name (else the hostname from DHCP, else derived from the MAC).
    pub name: Option<String>,
    /// Static addressing of the first NIC (else DHCP).
    pub static_ip: Option<StaticIp>,
    /// `keel.registry-mirror=docker.io=http://10.0.2.100:5000` (repeatable) and `keel.insecure-registry=`.
    pub registry_mirrors: Vec<(String, String)>,
    pub insecure_registries: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticIp {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}
