//! Resource metrics (`metrics.k8s.io/v1beta1`): what `kubectl top` and the HPA read.
//!
//! Upstream serves this group from metrics-server, an aggregated API server that scrapes every
//! kubelet and keeps the last two samples. Keel's nodes push their cumulative counters up the
//! node session instead, and whoever keeps those samples (the node gate) implements
//! [`MetricsSource`]; the API server and the HPA controller read through the trait, so neither
//! depends on the gate. This module holds the pure parts: the usage types, the rate computation
//! between two samples, and the `NodeMetrics`/`PodMetrics` objects as metrics-server writes them
//! (CPU in canonical decimal units from nanocores, memory in binary units from bytes, `window` as
//! a Go duration).

use std::fmt::Debug;

use serde_json::{json, Map, Value};

/// The API version of the metrics objects.
pub const API_VERSION: &str = "metrics.k8s.io/v1beta1";

/// CPU and memory of one thing over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Average CPU over the window, in nanocores (1e9 = one core).
    pub cpu_nanocores: u64,
    /// Memory working set at the end of the window, bytes.
    pub memory_bytes: u64,
}

/// A node's usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeUsage {
    pub name: String,
    /// End of the window (Unix milliseconds, the node's clock).
    pub timestamp_unix_millis: i64,
    pub window_millis: u64,
    pub usage: Usage,
}

/// One container's usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerUsage {
    pub name: String,
    pub usage: Usage,
}

/// A pod's usage, per container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub timestamp_unix_millis: i64,
    pub window_millis: u64,
    pub containers: Vec<ContainerUsage>,
}

impl PodUsage {
    /// The sum over the pod's containers.
    pub fn total(&self) -> Usage {
        self.containers.iter().fold(Usage::default(), |a, c| Usage {
            cpu_nanocores: a.cpu_nanocores + c.usage.cpu_nanocores,
            memory_bytes: a.memory_bytes + c.usage.memory_bytes,
        })
    }
}

/// Whoever keeps the latest usage samples. Only nodes and pods with two samples (a rate) are
/// returned.
pub trait MetricsSource: Send + Sync + Debug + 'static {
    fn nodes(&self) -> Vec<NodeUsage>;
    /// Pods of one namespace, or of all.
    fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage>;
}

/// A cumulative counter read at a time: what a node reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// Monotonic milliseconds (the node's clock since boot).
    pub monotonic_millis: u64,
    /// Cumulative CPU time, nanoseconds.
    pub cpu_usage_nanos: u64,
}

/// The average CPU between two samples, in nanocores, and the window in milliseconds; `None`
/// when no time passed or the counter went backwards (a restart: a new window begins).
pub fn cpu_rate(older: CpuSample, newer: CpuSample) -> Option<(u64, u64)> {
    let window = newer.monotonic_millis.checked_sub(older.monotonic_millis)?;
    let used = newer.cpu_usage_nanos.checked_sub(older.cpu_usage_nanos)?;
    if window == 0 {
        return None;
    }
    // nanoseconds of CPU per millisecond of wall time × 1000 = nanocores.
    let nanocores = (u128::from(used) * 1000 / u128::from(window)).min(u128::from(u64::MAX)) as u64;
    Some((nanocores, window))
}

/// CPU as metrics-server prints it: nanocores in the largest exact decimal unit (`250m`,
/// `1`, `123456n`).
pub fn cpu_quantity(nanocores: u64) -> String {
    if nanocores == 0 {
        return "0".to_string();
    }
    for (div, suffix) in [(1_000_000_000, ""), (1_000_000, "m"), (1_000, "u")] {
        if nanocores.is_multiple_of(div) {
            return format!("{}{suffix}", nanocores / div);
        }
    }
    format!("{nanocores}n")
}

/// Memory as metrics-server prints it: bytes in the largest exact binary unit (`1Mi`,
/// `2052Ki`, `1000`).
pub fn memory_quantity(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    let mut v = bytes;
    let mut unit = 0;
    const UNITS: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    while v.is_multiple_of(1024) && unit + 1 < UNITS.len() {
        v /= 1024;
        unit += 1;
    }
    format!("{v}{}", UNITS[unit])
}

/// A window as Go's `time.Duration.String()` prints it (`10.039s`, `500ms`).
pub fn go_duration(millis: u64) -> String {
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let (s, ms) = (millis / 1000, millis % 1000);
    let (m, s) = (s / 60, s % 60);
    let (h, m) = (m / 60, m % 60);
    let frac = if ms == 0 {
        String::new()
    } else {
        format!(".{ms:03}").trim_end_matches('0').to_string()
    };
    match (h, m) {
        (0, 0) => format!("{s}{frac}s"),
        (0, m) => format!("{m}m{s}{frac}s"),
        (h, m) => format!("{h}h{m}m{s}{frac}s"),
    }
}

fn timestamp(unix_millis: i64) -> String {
    jiff::Timestamp::from_millisecond(unix_millis)
        .map(crate::time::format_rfc3339)
        .unwrap_or_else(|_| crate::time::now_rfc3339())
}

fn usage_json(u: Usage) -> Value {
    json!({"cpu": cpu_quantity(u.cpu_nanocores), "memory": memory_quantity(u.memory_bytes)})
}

/// The metadata metrics-server gives a metrics object: the object's name, namespace, labels and
/// the time of the answer as `creationTimestamp`.
fn metadata(obj: &Value) -> Value {
    let mut m = Map::new();
    for k in ["name", "namespace"] {
        if let Some(v) = obj.pointer(&format!("/metadata/{k}")) {
            m.insert(k.to_string(), v.clone());
        }
    }
    m.insert("creationTimestamp".into(), json!(crate::time::now_rfc3339()));
    if let Some(l) = obj.pointer("/metadata/labels").filter(|l| l.is_object()) {
        m.insert("labels".into(), l.clone());
    }
    Value::Object(m)
}

/// The `NodeMetrics` of a Node object.
pub fn node_metrics(node: &Value, usage: &NodeUsage) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": API_VERSION,
        "metadata": metadata(node),
        "timestamp": timestamp(usage.timestamp_unix_millis),
        "window": go_duration(usage.window_millis),
        "usage": usage_json(usage.usage),
    })
}

/// The `PodMetrics` of a Pod object.
pub fn pod_metrics(pod: &Value, usage: &PodUsage) -> Value {
    let containers: Vec<Value> = usage
        .containers
        .iter()
        .map(|c| json!({"name": c.name, "usage": usage_json(c.usage)}))
        .collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": API_VERSION,
        "metadata": metadata(pod),
        "timestamp": timestamp(usage.timestamp_unix_millis),
        "window": go_duration(usage.window_millis),
        "containers": containers,
    })
}

/// A `NodeMetricsList` or `PodMetricsList`.
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": API_VERSION,
        "metadata": {},
        "items": items,
    })
}

/// A resource quantity (`250m`, `1.5`, `128Mi`, `1e3`, `2k`) in thousandths of its unit,
/// rounded up as upstream's `MilliValue`; `None` if it is not a quantity.
pub fn quantity_milli(s: &str) -> Option<i128> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() {
        return None;
    }
    // Exponent suffixes (`1e3`, `1E3`) are decimal exponents.
    let (num, exp10, mul): (&str, i32, i128) = match suffix {
        "" => (num, 0, 1),
        "n" => (num, -9, 1),
        "u" => (num, -6, 1),
        "m" => (num, -3, 1),
        "k" => (num, 3, 1),
        "M" => (num, 6, 1),
        "G" => (num, 9, 1),
        "T" => (num, 12, 1),
        "P" => (num, 15, 1),
        "E" => (num, 18, 1),
        "Ki" => (num, 0, 1 << 10),
        "Mi" => (num, 0, 1 << 20),
        "Gi" => (num, 0, 1 << 30),
        "Ti" => (num, 0, 1 << 40),
        "Pi" => (num, 0, 1 << 50),
        "Ei" => (num, 0, 1 << 60),
        e if e.starts_with(['e', 'E']) => (num, e[1..].parse::<i32>().ok()?, 1),
        _ => return None,
    };
    let negative = num.starts_with('-');
    let digits = num.trim_start_matches(['+', '-']);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    // value = int.frac × 10^exp10 × mul × 1000, as a fraction mantissa / 10^den.
    let mantissa: i128 = format!("{int}{frac}").parse::<i128>().ok().unwrap_or(0);
    let mut exp = exp10 + 3 - frac.len() as i32;
    let mut value = mantissa.checked_mul(mul)?;
    while exp > 0 {
        value = value.checked_mul(10)?;
        exp -= 1;
    }
    if exp < 0 {
        let div = 10i128.checked_pow((-exp) as u32)?;
        value = (value + div - 1) / div;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let s = |t, c| CpuSample {
            monotonic_millis: t,
            cpu_usage_nanos: c,
        };
        // Half a core for 10 s.
        assert_eq!(
            cpu_rate(s(1_000, 0), s(11_000, 5_000_000_000)),
            Some((500_000_000, 10_000))
        );
        // Two cores busy for 2.5 s.
        assert_eq!(
            cpu_rate(s(0, 1), s(2_500, 5_000_000_001)),
            Some((2_000_000_000, 2_500))
        );
        // Idle.
        assert_eq!(cpu_rate(s(0, 7), s(10_000, 7)), Some((0, 10_000)));
        // No time, time backwards, counter reset.
        assert_eq!(cpu_rate(s(5, 0), s(5, 10)), None);
        assert_eq!(cpu_rate(s(6, 0), s(5, 10)), None);
        assert_eq!(cpu_rate(s(0, 10), s(10_000, 5)), None);
    }

    #[test]
    fn quantities_as_metrics_server() {
        for (n, q) in [
            (0, "0"),
            (1_000_000_000, "1"),
            (250_000_000, "250m"),
            (1_500_000_000, "1500m"),
            (123_000, "123u"),
            (123_456, "123456n"),
        ] {
            assert_eq!(cpu_quantity(n), q, "{n}");
        }
        for (b, q) in [
            (0, "0"),
            (1000, "1000"),
            (1024, "1Ki"),
            (2_101_248, "2052Ki"),
            (1 << 20, "1Mi"),
        ] {
            assert_eq!(memory_quantity(b), q, "{b}");
        }
        for (ms, d) in [
            (500, "500ms"),
            (10_000, "10s"),
            (10_039, "10.039s"),
            (10_500, "10.5s"),
            (61_000, "1m1s"),
            (3_600_000, "1h0m0s"),
        ] {
            assert_eq!(go_duration(ms), d, "{ms}");
        }
    }

    #[test]
    fn quantity_parsing() {
        for (q, m) in [
            ("50m", Some(50)),
            ("1", Some(1000)),
            ("0.5", Some(500)),
            ("1.5", Some(1500)),
            ("100n", Some(1)),
            ("128Mi", Some(128 * 1024 * 1024 * 1000)),
            ("1k", Some(1_000_000)),
            ("1e3", Some(1_000_000)),
            ("2Gi", Some(2 * (1i128 << 30) * 1000)),
            ("-1", Some(-1000)),
            ("", None),
            ("m", None),
            ("12x", None),
            ("1.2.3", None),
        ] {
            assert_eq!(quantity_milli(q), m, "{q:?}");
        }
    }

    #[test]
    fn objects_as_metrics_server() {
        let node = json!({"metadata": {"name": "n1", "labels": {"a": "b"}, "uid": "x"}});
        let u = NodeUsage {
            name: "n1".into(),
            timestamp_unix_millis: 1_700_000_000_000,
            window_millis: 10_039,
            usage: Usage {
                cpu_nanocores: 250_000_000,
                memory_bytes: 2_101_248,
            },
        };
        let m = node_metrics(&node, &u);
        assert_eq!(m["kind"], "NodeMetrics");
        assert_eq!(m["metadata"]["name"], "n1");
        assert_eq!(m["metadata"]["labels"]["a"], "b");
        assert!(m["metadata"].get("uid").is_none());
        assert_eq!(m["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(m["window"], "10.039s");
        assert_eq!(m["usage"], json!({"cpu": "250m", "memory": "2052Ki"}));

        let pod = json!({"metadata": {"name": "p", "namespace": "default"}});
        let pu = PodUsage {
            namespace: "default".into(),
            name: "p".into(),
            uid: "u".into(),
            timestamp_unix_millis: 1_700_000_000_000,
            window_millis: 10_000,
            containers: vec![
                ContainerUsage {
                    name: "a".into(),
                    usage: Usage {
                        cpu_nanocores: 1,
                        memory_bytes: 1024,
                    },
                },
                ContainerUsage {
                    name: "b".into(),
                    usage: Usage {
                        cpu_nanocores: 2,
                        memory_bytes: 1024,
                    },
                },
            ],
        };
        let m = pod_metrics(&pod, &pu);
        assert_eq!(m["metadata"]["namespace"], "default");
        assert_eq!(
            m["containers"][1],
            json!({"name": "b", "usage": {"cpu": "2n", "memory": "1Ki"}})
        );
        assert_eq!(pu.total().cpu_nanocores, 3);
        assert_eq!(list("PodMetrics", vec![m])["kind"], "PodMetricsList");
    }
}
