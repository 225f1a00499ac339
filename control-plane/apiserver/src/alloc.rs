//! Cluster IPs and node ports for Services.
//!
//! Upstream keeps allocation bitmaps in etcd; here the allocated sets are rebuilt from the stored
//! Services the first time they are needed and kept in memory, guarded by one lock that also
//! serialises allocations (Service writes are rare). A failed write releases what it took.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use keel_api::client::ListParams;
use keel_api::registry::ResourceType;
use keel_api::status::{ApiError, ApiResult, Cause};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::objects::{object_name, Objects};

/// An IPv4 range `base/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, len) = s.split_once('/')?;
        let base: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = len.parse().ok().filter(|p| *p <= 30)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Some(Cidr {
            base: Ipv4Addr::from(u32::from(base) & mask),
            prefix,
        })
    }

    pub fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let off = u32::from(ip).wrapping_sub(u32::from(self.base));
        off < self.size()
    }

    /// The `n`-th address of the range.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + n)
    }
}

#[derive(Default)]
struct Sets {
    ips: HashSet<Ipv4Addr>,
    ports: HashSet<u16>,
}

#[derive(Default)]
pub struct Allocators {
    sets: Mutex<Option<Sets>>,
}

fn is_service(rt: &ResourceType) -> bool {
    rt.kind == "Service" && rt.group.is_empty()
}

fn wants_cluster_ip(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName")
        && svc.pointer("/spec/clusterIP").and_then(Value::as_str) != Some("None")
}

fn wants_node_ports(svc: &Value) -> bool {
    matches!(
        svc.pointer("/spec/type").and_then(Value::as_str),
        Some("NodePort" | "LoadBalancer")
    )
}

fn ips_of(svc: &Value) -> Vec<Ipv4Addr> {
    svc.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .into_iter()
        .collect()
}

/// `type: LoadBalancer` with `externalTrafficPolicy: Local` gets a `healthCheckNodePort`.
fn wants_health_check_port(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
        && svc.pointer("/spec/externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
}

fn health_check_port(svc: &Value) -> Option<u16> {
    svc.pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// Every node port the Service holds: its ports' and its health check's.
fn ports_of(svc: &Value) -> Vec<u16> {
    let mut out: Vec<u16> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                .filter_map(|p| u16::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default();
    out.extend(health_check_port(svc));
    out
}

impl Allocators {
    async fn load(
        &self,
        objects: &Objects,
        rt: &'static ResourceType,
    ) -> ApiResult<tokio::sync::MutexGuard<'_, Option<Sets>>> {
        let mut guard = self.sets.lock().await;
        if guard.is_none() {
            let list = objects.list(rt, None, &ListParams::default()).await?;
            let mut sets = Sets::default();
            for svc in &list.items {
                sets.ips.extend(ips_of(svc));
                sets.ports.extend(ports_of(svc));
            }
            *guard = Some(sets);
        }
        Ok(guard)
    }

    pub async fn allocate_on_create(
        &self,
        objects: &Objects,
        rt: &'static ResourceType,
        svc: &mut Value,
    ) -> ApiResult<()> {
        if !is_service(rt) {
            return Ok(());
        }
        let mut guard = self.load(objects, rt).await?;
        let Some(sets) = guard.as_mut() else { return Ok(()) };
        self.assign(objects, rt, sets, svc, None)
    }

    pub async fn allocate_on_update(
        &self,
        objects: &Objects,
        rt: &'static ResourceType,
        svc: &mut Value,
        old: &Value,
    ) -> ApiResult<()> {
        if !is_service(rt) {
            return Ok(());
        }
        let mut guard = self.load(objects, rt).await?;
        let Some(sets) = guard.as_mut() else { return Ok(()) };
        self.assign(objects, rt, sets, svc, Some(old))
    }

    fn assign(
        &self,
        objects: &Objects,
        rt: &ResourceType,
        sets: &mut Sets,
        svc: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<()> {
        let name = object_name(svc).to_string();
        let cfg = &objects.config;
        let old_ips: Vec<Ipv4Addr> = old.map(ips_of).unwrap_or_default();
        let old_ports: Vec<u16> = old.map(ports_of).unwrap_or_default();
        let mut taken_ips = Vec::new();
        let mut taken_ports = Vec::new();
        let fail = |sets: &mut Sets, taken_ips: &[Ipv4Addr], taken_ports: &[u16], e: ApiError| {
            for ip in taken_ips {
                sets.ips.remove(ip);
            }
            for p in taken_ports {
                sets.ports.remove(p);
            }
            Err(e)
        };

        if wants_cluster_ip(svc) {
            let requested = svc
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if requested.is_empty() {
                // An update keeps the old address (clusterIP is immutable once set).
                let ip = match old_ips.first() {
                    Some(ip) => *ip,
                    None => match random_free_ip(cfg.service_cidr, &sets.ips) {
                        Some(ip) => ip,
                        None => {
                            return fail(
                                sets,
                                &taken_ips,
                                &taken_ports,
                                ApiError::internal("failed to allocate a serviceIP: range is full"),
                            )
                        }
                    },
                };
                if !old_ips.contains(&ip) {
                    sets.ips.insert(ip);
                    taken_ips.push(ip);
                }
                svc["spec"]["clusterIP"] = json!(ip.to_string());
            } else {
                let Ok(ip) = requested.parse::<Ipv4Addr>() else {
                    let e = ApiError::invalid(
                        rt,
                        &name,
                        vec![Cause::invalid(
                            "spec.clusterIPs[0]",
                            &json!(requested),
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        )],
                    );
                    return fail(sets, &taken_ips, &taken_ports, e);
                };
                if !old_ips.contains(&ip) {
                    if !cfg.service_cidr.contains(ip) {
                        let e = ApiError::invalid(rt, &name, vec![Cause::invalid(
                            "spec.clusterIPs",
                            &json!([requested]),
                            &format!("failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}/{}", cfg.service_cidr.base, cfg.service_cidr.prefix),
                        )]);
                        return fail(sets, &taken_ips, &taken_ports, e);
                    }
                    if !sets.ips.insert(ip) {
                        let e = ApiError::invalid(
                            rt,
                            &name,
                            vec![Cause::invalid(
                                "spec.clusterIPs",
                                &json!([requested]),
                                &format!(
                                    "failed to allocate IP {requested}: provided IP is already allocated"
                                ),
                            )],
                        );
                        return fail(sets, &taken_ips, &taken_ports, e);
                    }
                    taken_ips.push(ip);
                }
            }
            svc["spec"]["clusterIPs"] = json!([svc["spec"]["clusterIP"].clone()]);
        }

        if wants_node_ports(svc) {
            let (lo, hi) = cfg.node_port_range;
            let n = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(0);
            for i in 0..n {
                let requested = svc["spec"]["ports"][i]
                    .get("nodePort")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                // Keep the old port of the same service port on update.
                let port = svc["spec"]["ports"][i].get("port").cloned();
                let reuse = old
                    .and_then(|o| o.pointer("/spec/ports"))
                    .and_then(Value::as_array)
                    .and_then(|ps| {
                        ps.iter()
                            .find(|p| p.get("port") == port.as_ref())
                            .and_then(|p| p.get("nodePort"))
                            .and_then(Value::as_u64)
                    });
                let reuse = reuse.and_then(|p| u16::try_from(p).ok());
                let field = format!("spec.ports[{i}].nodePort");
                let want = NodePortRequest {
                    requested,
                    reuse,
                    field,
                    range: (lo, hi),
                };
                match claim_node_port(sets, &mut taken_ports, &old_ports, want, rt, &name) {
                    Ok(p) => svc["spec"]["ports"][i]["nodePort"] = json!(p),
                    Err(e) => return fail(sets, &taken_ips, &taken_ports, e),
                }
            }
        } else if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports {
                if let Some(o) = p.as_object_mut() {
                    o.remove("nodePort");
                }
            }
        }

        if wants_health_check_port(svc) {
            let (lo, hi) = cfg.node_port_range;
            let requested = svc
                .pointer("/spec/healthCheckNodePort")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let reuse = old.and_then(health_check_port);
            let field = "spec.healthCheckNodePort".to_string();
            let want = NodePortRequest {
                requested,
                reuse,
                field,
                range: (lo, hi),
            };
            match claim_node_port(sets, &mut taken_ports, &old_ports, want, rt, &name) {
                Ok(p) => svc["spec"]["healthCheckNodePort"] = json!(p),
                Err(e) => return fail(sets, &taken_ips, &taken_ports, e),
            }
        } else if let Some(spec) = svc.pointer_mut("/spec").and_then(Value::as_object_mut) {
            spec.remove("healthCheckNodePort");
        }
        Ok(())
    }

    /// Gives back what a deleted (or failed) Service held.
    pub fn release(&self, rt: &ResourceType, svc: &Value) {
        if !is_service(rt) {
            return;
        }
        if let Ok(mut guard) = self.sets.try_lock() {
            if let Some(sets) = guard.as_mut() {
                for ip in ips_of(svc) {
                    sets.ips.remove(&ip);
                }
                for p in ports_of(svc) {
                    sets.ports.remove(&p);
                }
            }
        } else {
            // Busy: forget the cache; it is rebuilt from the store on next use.
            let sets = &self.sets;
            if let Ok(mut g) = sets.try_lock() {
                *g = None;
            }
        }
    }

    /// After an update: release what the old version held and the new one does not.
    pub fn release_replaced(&self, rt: &ResourceType, old: &Value, new: &Value) {
        if !is_service(rt) {
            return;
        }
        let keep_ips = ips_of(new);
        let keep_ports = ports_of(new);
        if let Ok(mut guard) = self.sets.try_lock() {
            if let Some(sets) = guard.as_mut() {
                for ip in ips_of(old).into_iter().filter(|i| !keep_ips.contains(i)) {
                    sets.ips.remove(&ip);
                }
                for p in ports_of(old).into_iter().filter(|p| !keep_ports.contains(p)) {
                    sets.ports.remove(&p);
                }
            }
        }
    }
}

fn random_free_ip(cidr: Cidr, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    // .0 is the network, .1 belongs to the `kubernetes` service, the last is broadcast.
    let size = cidr.size();
    if size < 4 {
        return None;
    }
    let mut rng = rand::rng();
    for _ in 0..64 {
        let ip = cidr.nth(rng.random_range(2..size - 1));
        if !used.contains(&ip) {
            return Some(ip);
        }
    }
    (2..size - 1).map(|n| cidr.nth(n)).find(|ip| !used.contains(ip))
}

/// A node port a Service asks for (`spec.ports[i].nodePort` or `spec.healthCheckNodePort`).
struct NodePortRequest {
    /// What the object says; 0 = allocate one.
    requested: i64,
    /// The port the object had before this update, kept when it asks for none.
    reuse: Option<u16>,
    field: String,
    range: (u16, u16),
}

/// Claims the port of `want`: the requested one (checked against the range and the ports
/// already allocated, with upstream's messages), else the old one, else a random free one.
/// Ports newly claimed are recorded in `sets.ports` and `taken` so a failure can release them.
fn claim_node_port(
    sets: &mut Sets,
    taken: &mut Vec<u16>,
    old_ports: &[u16],
    want: NodePortRequest,
    rt: &ResourceType,
    name: &str,
) -> ApiResult<u16> {
    let (lo, hi) = want.range;
    if want.requested == 0 {
        if let Some(p) = want.reuse {
            return Ok(p);
        }
        let p = random_free_port(lo, hi, &sets.ports)
            .ok_or_else(|| ApiError::internal("failed to allocate a nodePort: range is full"))?;
        sets.ports.insert(p);
        taken.push(p);
        return Ok(p);
    }
    let invalid = |detail: &str| {
        ApiError::invalid(
            rt,
            name,
            vec![Cause::invalid(want.field.clone(), &json!(want.requested), detail)],
        )
    };
    if want.requested < i64::from(lo) || want.requested > i64::from(hi) {
        return Err(invalid(&format!(
            "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
        )));
    }
    let p = want.requested as u16;
    if !old_ports.contains(&p) && !taken.contains(&p) {
        if !sets.ports.insert(p) {
            return Err(invalid("provided port is already allocated"));
        }
        taken.push(p);
    }
    Ok(p)
}

fn random_free_port(lo: u16, hi: u16, used: &HashSet<u16>) -> Option<u16> {
    let mut rng = rand::rng();
    for _ in 0..64 {
        let p = rng.random_range(lo..=hi);
        if !used.contains(&p) {
            return Some(p);
        }
    }
    (lo..=hi).find(|p| !used.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let c = Cidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(c.size(), 1 << 20);
        assert!(c.contains("10.96.0.1".parse().unwrap()));
        assert!(c.contains("10.111.255.255".parse().unwrap()));
        assert!(!c.contains("10.112.0.0".parse().unwrap()));
        assert_eq!(c.nth(1), "10.96.0.1".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn node_ports_are_claimed_checked_kept_and_released_by_the_caller() {
        let rt = keel_api::registry::find("", "v1", "services").unwrap();
        let mut sets = Sets {
            ips: HashSet::new(),
            ports: HashSet::new(),
        };
        let mut taken = Vec::new();
        let want = |requested: i64, reuse: Option<u16>| NodePortRequest {
            requested,
            reuse,
            field: "spec.ports[0].nodePort".to_string(),
            range: (30000, 30002),
        };
        // Requested in range: claimed and recorded.
        assert_eq!(
            claim_node_port(&mut sets, &mut taken, &[], want(30001, None), rt, "s").unwrap(),
            30001
        );
        assert_eq!(taken, vec![30001]);
        // The same port again, by another Service: upstream's message.
        let e = claim_node_port(&mut sets, &mut Vec::new(), &[], want(30001, None), rt, "t").unwrap_err();
        assert!(
            e.to_string()
                .contains("spec.ports[0].nodePort: Invalid value: 30001: provided port is already allocated"),
            "{e}"
        );
        // An update keeping its own port is no conflict, and claims nothing new.
        let mut none = Vec::new();
        assert_eq!(
            claim_node_port(&mut sets, &mut none, &[30001], want(30001, None), rt, "s").unwrap(),
            30001
        );
        assert!(none.is_empty());
        // Out of range.
        let e = claim_node_port(&mut sets, &mut Vec::new(), &[], want(3333, None), rt, "s").unwrap_err();
        assert!(
            e.to_string()
                .contains("provided port is not in the valid range. The range of valid ports is 30000-30002"),
            "{e}"
        );
        // None asked for: the old one is kept, else a free one is picked until the range is full.
        assert_eq!(
            claim_node_port(&mut sets, &mut Vec::new(), &[], want(0, Some(30001)), rt, "s").unwrap(),
            30001
        );
        let a = claim_node_port(&mut sets, &mut taken, &[], want(0, None), rt, "u").unwrap();
        let b = claim_node_port(&mut sets, &mut taken, &[], want(0, None), rt, "v").unwrap();
        let mut all = vec![30001, a, b];
        all.sort_unstable();
        assert_eq!(all, vec![30000, 30001, 30002]);
        let e = claim_node_port(&mut sets, &mut taken, &[], want(0, None), rt, "w").unwrap_err();
        assert!(e.to_string().contains("range is full"), "{e}");
    }
}
