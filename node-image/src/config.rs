//! The node's configuration: what PID 1 gathers at boot and hands to the agent as
//! `/run/keel/node.json` (this type, serialised with serde_json).
//!
//! Every source speaks the same `key=value` language, so one parser serves them all:
//!
//! | source | how a key is written |
//! |---|---|
//! | kernel command line | `keel.server=https://10.0.2.100:9443` (only `keel.*` words are read) |
//! | config archive appended to the initramfs | `/etc/keel/node.conf`, one `key=value` per line |
//! | config disk (iso9660 or vfat, label `KEELCFG`) | `/keel/node.conf`, same format |
//! | VMware guestinfo | `guestinfo.keel.server = "…"` in the .vmx / vSphere advanced settings |
//!
//! In `node.conf`, `#` starts a comment line, blank lines are ignored, and keys may be written
//! with or without the `keel.` prefix. The keys:
//!
//! | key | meaning |
//! |---|---|
//! | `server` | control plane node-gate URL, e.g. `https://10.0.2.100:9443` |
//! | `token` | bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}` |
//! | `ca-hash` | `sha256:<hex>` of the cluster CA's public key |
//! | `name` | node name (default: DHCP host name, else `keel-<last 3 MAC bytes>`) |
//! | `registry-mirror` | `docker.io=http://10.0.2.100:5000` (repeatable) |
//! | `insecure-registry` | `10.0.2.100:5000` (repeatable) |
//! | `ip`, `gw`, `dns` | static address of the first NIC: `10.0.0.5/24`, gateway, DNS servers (`,`-separated or repeated) |
//! | `ip2` | static address of the second NIC (the lab's node-to-node segment): `192.168.50.3/24` |
//! | `ntp` | NTP server(s) to set the clock from (besides DHCP's option 42) |
//! | `usage-interval` | seconds between usage reports for `kubectl top` and the HPA (default 10) |
//!
//! Sources are ranked in the order of the table above: a field set by the kernel command line
//! wins over the archive, which wins over the disk, which wins over guestinfo. List fields are
//! taken whole from the highest source that has any. Unknown keys are reported and ignored, so a
//! newer control plane can hand an older node a config it partly understands.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Where PID 1 writes the configuration for the agent.
pub const NODE_CONFIG_PATH: &str = "/run/keel/node.json";

/// Where the agent keeps its key, certificate and state (on the writable /var).
pub const STATE_DIR: &str = "/var/lib/keel";

/// Everything a node needs to join and run. Fields are optional where a node can run without
/// them (a node with no `server` shows how to join it and waits).
///
/// In `/run/keel/node.json`, `name` is always set (PID 1 resolves it), and `interfaces` and
/// `boot_phases` describe what PID 1 did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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
    /// `keel.ip2=`: static addressing of the second NIC (node-to-node segment in the lab).
    pub static_ip2: Option<StaticIp>,
    /// `keel.ntp=`: NTP servers to try besides those from DHCP.
    pub ntp: Vec<Ipv4Addr>,
    /// `keel.registry-mirror=docker.io=http://10.0.2.100:5000` (repeatable) and `keel.insecure-registry=`.
    pub registry_mirrors: Vec<(String, String)>,
    pub insecure_registries: Vec<String>,
    /// `keel.usage-interval=`: seconds between usage reports (default 10).
    pub usage_interval_seconds: Option<u32>,
    /// Filled by PID 1: the NICs in kernel order (the first is the DHCP/default-route NIC).
    pub interfaces: Vec<Interface>,
    /// Filled by PID 1: boot phases and their time since power-on, for the Node's events.
    pub boot_phases: Vec<BootPhase>,
    /// Filled by PID 1: which sources contributed (`cmdline`, `archive`, `disk`, `guestinfo`).
    pub sources: Vec<String>,
}

/// A static IPv4 configuration for one NIC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticIp {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

/// A network interface as PID 1 left it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// `10.0.2.15/24`, if the NIC has an address.
    pub ipv4: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    /// `dhcp`, `static` or `none`.
    pub method: String,
}

/// One timed boot step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootPhase {
    pub name: String,
    /// Seconds since the kernel started.
    pub at: f64,
}

impl Eq for BootPhase {}

/// A `key=value` that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("{key}: invalid value {value:?}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: &'static str,
    },
}

fn invalid(key: &str, value: &str, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    }
}

/// Parses `10.0.0.5/24`.
fn parse_cidr(key: &str, value: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let (addr, len) = value
        .split_once('/')
        .ok_or_else(|| invalid(key, value, "expected ADDRESS/PREFIX, e.g. 10.0.0.5/24"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| invalid(key, value, "not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| invalid(key, value, "prefix length must be 0..=32"))?;
    Ok((addr, len))
}

fn parse_addrs(key: &str, value: &str) -> Result<Vec<Ipv4Addr>, ConfigError> {
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| invalid(key, value, "not an IPv4 address"))
        })
        .collect()
}

/// Values are written into the console, a JSON file and HTTP requests: no control characters.
fn clean(key: &str, value: &str) -> Result<String, ConfigError> {
    if value.is_empty() {
        return Err(invalid(key, value, "empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(key, value, "control characters"));
    }
    Ok(value.to_string())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl NodeConfig {
    /// Applies one setting. `key` may carry the `keel.` prefix.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let key = key.trim();
        let value = value.trim().trim_matches('"');
        let bare = key.strip_prefix("keel.").unwrap_or(key);
        match bare {
            "server" => self.server = Some(clean(key, value)?),
            "token" => {
                let ok = value.len() == 23
                    && value.as_bytes()[6] == b'.'
                    && value
                        .bytes()
                        .enumerate()
                        .all(|(i, b)| i == 6 || b.is_ascii_lowercase() || b.is_ascii_digit());
                if !ok {
                    return Err(invalid(key, value, "expected [a-z0-9]{6}.[a-z0-9]{16}"));
                }
                self.token = Some(value.to_string());
            }
            "ca-hash" => {
                let hex = value
                    .strip_prefix("sha256:")
                    .ok_or_else(|| invalid(key, value, "expected sha256:<64 hex digits>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(key, value, "expected sha256:<64 hex digits>"));
                }
                self.ca_hash = Some(value.to_ascii_lowercase());
            }
            "name" => {
                let name = value.to_ascii_lowercase();
                if !valid_name(&name) {
                    return Err(invalid(key, value, "not a DNS label ([a-z0-9-], at most 63)"));
                }
                self.name = Some(name);
            }
            "ip" | "ip2" => {
                let (address, prefix_len) = parse_cidr(key, value)?;
                let slot = if bare == "ip" {
                    &mut self.static_ip
                } else {
                    &mut self.static_ip2
                };
                let s = slot.get_or_insert(StaticIp {
                    address,
                    prefix_len,
                    gateway: None,
                    dns: Vec::new(),
                });
                s.address = address;
                s.prefix_len = prefix_len;
            }
            "gw" | "dns" => {
                let Some(s) = self.static_ip.as_mut() else {
                    return Err(invalid(key, value, "needs keel.ip= first"));
                };
                let addrs = parse_addrs(key, value)?;
                if bare == "gw" {
                    if addrs.len() != 1 {
                        return Err(invalid(key, value, "exactly one gateway"));
                    }
                    s.gateway = addrs.first().copied();
                } else {
                    s.dns.extend(addrs);
                }
            }
            "ntp" => self.ntp.extend(parse_addrs(key, value)?),
            "registry-mirror" => {
                let (registry, mirror) = value
                    .split_once('=')
                    .filter(|(r, m)| !r.is_empty() && !m.is_empty())
                    .ok_or_else(|| invalid(key, value, "expected REGISTRY=MIRROR_URL"))?;
                let entry = (clean(key, registry)?, clean(key, mirror)?);
                self.registry_mirrors.push(entry);
            }
            "insecure-registry" => self.insecure_registries.push(clean(key, value)?),
            "usage-interval" => {
                let secs = value
                    .parse::<u32>()
                    .ok()
                    .filter(|s| (1..=3600).contains(s))
                    .ok_or_else(|| invalid(key, value, "seconds, 1 to 3600"))?;
                self.usage_interval_seconds = Some(secs);
            }
            _ => return Err(ConfigError::UnknownKey(key.to_string())),
        }
        Ok(())
    }

    /// Reads the `keel.*` words of a kernel command line. Returns the config and the settings
    /// that could not be used (to be reported on the console).
    pub fn from_cmdline(cmdline: &str) -> (NodeConfig, Vec<ConfigError>) {
        let mut cfg = NodeConfig::default();
        let mut errors = Vec::new();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            // Boot-time switches that are not node configuration.
            if !key.starts_with("keel.") || key == "keel.selftest" || key == "keel.nic" {
                continue;
            }
            if let Err(e) = cfg.set(key, value) {
                errors.push(e);
            }
        }
        (cfg, errors)
    }

    /// Reads a `node.conf` file (`key=value` lines, `#` comments).
    pub fn from_conf(text: &str) -> (NodeConfig, Vec<ConfigError>) {
        let mut cfg = NodeConfig::default();
        let mut errors = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some((k, v)) => {
                    if let Err(e) = cfg.set(k, v) {
                        errors.push(e);
                    }
                }
                None => errors.push(invalid(line, "", "expected key=value")),
            }
        }
        (cfg, errors)
    }

    /// True when no setting is present (the node-level fields filled by PID 1 do not count).
    pub fn is_empty(&self) -> bool {
        self.server.is_none()
            && self.token.is_none()
            && self.ca_hash.is_none()
            && self.name.is_none()
            && self.static_ip.is_none()
            && self.static_ip2.is_none()
            && self.ntp.is_empty()
            && self.registry_mirrors.is_empty()
            && self.insecure_registries.is_empty()
            && self.usage_interval_seconds.is_none()
    }

    /// Fills every field still unset in `self` from `lower` (a lower-ranked source).
    pub fn fill_from(&mut self, lower: NodeConfig) {
        fn opt<T>(a: &mut Option<T>, b: Option<T>) {
            if a.is_none() {
                *a = b;
            }
        }
        fn list<T>(a: &mut Vec<T>, b: Vec<T>) {
            if a.is_empty() {
                *a = b;
            }
        }
        opt(&mut self.server, lower.server);
        opt(&mut self.token, lower.token);
        opt(&mut self.ca_hash, lower.ca_hash);
        opt(&mut self.name, lower.name);
        opt(&mut self.static_ip, lower.static_ip);
        opt(&mut self.static_ip2, lower.static_ip2);
        list(&mut self.ntp, lower.ntp);
        list(&mut self.registry_mirrors, lower.registry_mirrors);
        list(&mut self.insecure_registries, lower.insecure_registries);
        opt(&mut self.usage_interval_seconds, lower.usage_interval_seconds);
    }

    /// True when the node has what it needs to join a control plane.
    pub fn can_join(&self) -> bool {
        self.server.is_some() && self.token.is_some() && self.ca_hash.is_some()
    }
}

/// The keys a node reads, as written in `node.conf` (also the `guestinfo.keel.<key>` names).
pub const KEYS: &[&str] = &[
    "server",
    "token",
    "ca-hash",
    "name",
    "ip",
    "gw",
    "dns",
    "ip2",
    "ntp",
    "registry-mirror",
    "insecure-registry",
    "usage-interval",
];

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "abcdef.0123456789abcdef";
    const HASH: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn cmdline_reads_only_keel_words() {
        let (cfg, errs) = NodeConfig::from_cmdline(&format!(
            "console=ttyS0 panic=-1 keel.server=https://10.0.2.100:9443 keel.token={TOKEN} \
             keel.ca-hash={HASH} keel.name=Node-1 keel.ip=10.0.0.5/24 keel.gw=10.0.0.1 \
             keel.dns=1.1.1.1,8.8.8.8 keel.ip2=192.168.50.3/24 keel.selftest=poweroff \
             keel.registry-mirror=docker.io=http://10.0.2.100:5000 \
             keel.registry-mirror=quay.io=http://10.0.2.100:5001 root=/dev/sda"
        ));
        assert_eq!(errs, vec![]);
        assert_eq!(cfg.server.as_deref(), Some("https://10.0.2.100:9443"));
        assert_eq!(cfg.token.as_deref(), Some(TOKEN));
        assert_eq!(cfg.ca_hash.as_deref(), Some(HASH));
        assert_eq!(cfg.name.as_deref(), Some("node-1"));
        let ip = cfg.static_ip.clone().unwrap();
        assert_eq!(ip.address, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(ip.prefix_len, 24);
        assert_eq!(ip.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(ip.dns, vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)]);
        assert_eq!(
            cfg.static_ip2.as_ref().unwrap().address,
            Ipv4Addr::new(192, 168, 50, 3)
        );
        assert_eq!(cfg.registry_mirrors.len(), 2);
        assert_eq!(
            cfg.registry_mirrors[0],
            ("docker.io".into(), "http://10.0.2.100:5000".into())
        );
        assert!(cfg.can_join());
    }

    #[test]
    fn bad_values_are_reported_not_applied() {
        let (cfg, errs) = NodeConfig::from_cmdline(
            "keel.token=short keel.ca-hash=md5:00 keel.ip=10.0.0.5 keel.gw=10.0.0.1 keel.name=-x keel.what=1",
        );
        assert!(cfg.is_empty(), "{cfg:?}");
        assert_eq!(errs.len(), 6, "{errs:?}");
        assert_eq!(errs[5], ConfigError::UnknownKey("keel.what".into()));
    }

    #[test]
    fn conf_file_with_and_without_prefix() {
        let (cfg, errs) = NodeConfig::from_conf(&format!(
            "# written by keel-server node-iso\n\nserver=https://cp:9443\nkeel.token = {TOKEN}\n\
             ca-hash=\"{HASH}\"\ninsecure-registry=10.0.2.100:5000\nnonsense\n"
        ));
        assert_eq!(errs.len(), 1);
        assert_eq!(cfg.server.as_deref(), Some("https://cp:9443"));
        assert_eq!(cfg.token.as_deref(), Some(TOKEN));
        assert_eq!(cfg.ca_hash.as_deref(), Some(HASH));
        assert_eq!(cfg.insecure_registries, vec!["10.0.2.100:5000".to_string()]);
    }

    #[test]
    fn higher_source_wins_field_by_field() {
        let (mut top, _) = NodeConfig::from_cmdline("keel.name=a keel.server=https://top");
        let (low, _) = NodeConfig::from_conf(&format!(
            "name=b\nserver=https://low\ntoken={TOKEN}\nregistry-mirror=docker.io=http://m"
        ));
        top.fill_from(low);
        assert_eq!(top.name.as_deref(), Some("a"));
        assert_eq!(top.server.as_deref(), Some("https://top"));
        assert_eq!(top.token.as_deref(), Some(TOKEN));
        assert_eq!(top.registry_mirrors.len(), 1);
    }

    #[test]
    fn json_round_trip() {
        let (mut cfg, _) = NodeConfig::from_cmdline("keel.name=n1 keel.ip=10.0.0.5/24 keel.gw=10.0.0.1");
        cfg.interfaces.push(Interface {
            name: "eth0".into(),
            mac: "52:54:00:12:34:56".into(),
            ipv4: Some("10.0.0.5/24".into()),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            method: "static".into(),
        });
        cfg.boot_phases.push(BootPhase {
            name: "modules".into(),
            at: 1.5,
        });
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains("\"10.0.0.5\""), "{json}");
        let back: NodeConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
        // Older or partial files still parse.
        let partial: NodeConfig = serde_json::from_str(r#"{"name":"x"}"#).unwrap();
        assert_eq!(partial.name.as_deref(), Some("x"));
    }

    #[test]
    fn usage_interval_is_seconds_within_bounds() {
        let (cfg, errs) = NodeConfig::from_cmdline("keel.usage-interval=5");
        assert_eq!(errs, vec![]);
        assert_eq!(cfg.usage_interval_seconds, Some(5));
        assert!(!cfg.is_empty());
        for bad in ["0", "3601", "10s", "-1"] {
            let (cfg, errs) = NodeConfig::from_cmdline(&format!("keel.usage-interval={bad}"));
            assert_eq!(errs.len(), 1, "{bad}");
            assert_eq!(cfg.usage_interval_seconds, None);
        }
        let mut top = NodeConfig::default();
        top.fill_from(NodeConfig::from_cmdline("keel.usage-interval=30").0);
        assert_eq!(top.usage_interval_seconds, Some(30));
        assert!(KEYS.contains(&"usage-interval"));
    }
}
