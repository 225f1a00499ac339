//! Resource amounts as the scheduler counts them: CPU in millicores, memory and ephemeral
//! storage in bytes, and pods; parsed from Kubernetes quantities (`500m`, `1Gi`, `2`, `1e3`).
//!
//! A pod's request is upstream's: the sum over its containers, at least the largest init
//! container, plus `spec.overhead`. For scoring, containers that request nothing count as
//! 100m CPU and 200Mi memory (upstream's non-zero defaults), so best-effort pods still spread.

use serde_json::Value;

/// Amounts of the resources the scheduler fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
    }

    fn max(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
    }

    /// From a `{cpu: .., memory: .., pods: ..}` map (requests, allocatable, capacity).
    pub fn from_map(map: Option<&Value>) -> Resources {
        let get = |k: &str| map.and_then(|m| m.get(k));
        Resources {
            milli_cpu: get("cpu").and_then(|v| parse_scaled(v, 1000)).unwrap_or(0),
            memory: get("memory").and_then(|v| parse_scaled(v, 1)).unwrap_or(0),
            ephemeral_storage: get("ephemeral-storage")
                .and_then(|v| parse_scaled(v, 1))
                .unwrap_or(0),
            pods: get("pods").and_then(|v| parse_scaled(v, 1)).unwrap_or(0),
        }
    }
}

/// Default requests for scoring containers that request nothing (upstream's
/// `DefaultMilliCPURequest` and `DefaultMemoryRequest`).
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// What a pod asks for: exact requests for fitting, non-zero ones for scoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodRequest {
    pub fit: Resources,
    pub score: Resources,
}

/// A pod's request (one pod slot included).
pub fn pod_request(pod: &Value) -> PodRequest {
    let mut fit = Resources::default();
    let mut score = Resources::default();
    let containers = pod.pointer("/spec/containers").and_then(Value::as_array);
    for c in containers.into_iter().flatten() {
        let r = Resources::from_map(c.pointer("/resources/requests"));
        fit.add(&r);
        score.add(&Resources {
            milli_cpu: if c.pointer("/resources/requests/cpu").is_some() {
                r.milli_cpu
            } else {
                DEFAULT_MILLI_CPU
            },
            memory: if c.pointer("/resources/requests/memory").is_some() {
                r.memory
            } else {
                DEFAULT_MEMORY
            },
            ..r
        });
    }
    let inits = pod.pointer("/spec/initContainers").and_then(Value::as_array);
    for c in inits.into_iter().flatten() {
        let r = Resources::from_map(c.pointer("/resources/requests"));
        fit.max(&r);
        score.max(&r);
    }
    let overhead = Resources::from_map(pod.pointer("/spec/overhead"));
    fit.add(&overhead);
    score.add(&overhead);
    fit.pods = 1;
    score.pods = 1;
    PodRequest { fit, score }
}

/// Parses a quantity and returns it multiplied by `scale`, rounded up to an integer
/// (`scale` 1000 turns cores into millicores).
pub fn parse_scaled(v: &Value, scale: i64) -> Option<i64> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        other => {
            let e: i32 = other.strip_prefix(['e', 'E'])?.parse().ok()?;
            10f64.powi(e)
        }
    };
    let x = n * mult * scale as f64;
    // Round up, but forgive floating-point noise (0.1 * 1000 = 100.00000000000001).
    let rounded = x.round();
    Some(if (x - rounded).abs() < 1e-6 {
        rounded as i64
    } else {
        x.ceil() as i64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_scale_and_round_up() {
        assert_eq!(parse_scaled(&json!("500m"), 1000), Some(500));
        assert_eq!(parse_scaled(&json!("2"), 1000), Some(2000));
        assert_eq!(parse_scaled(&json!("0.1"), 1000), Some(100));
        assert_eq!(parse_scaled(&json!("1Gi"), 1), Some(1 << 30));
        assert_eq!(parse_scaled(&json!("1e3"), 1), Some(1000));
        assert_eq!(parse_scaled(&json!("1.5m"), 1000), Some(2));
        assert_eq!(parse_scaled(&json!(110), 1), Some(110));
        assert_eq!(parse_scaled(&json!("x"), 1), None);
    }

    #[test]
    fn pod_request_sums_containers_and_takes_the_largest_init() {
        let pod = json!({"spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"resources": {"requests": {"cpu": "250m"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "1"}}}],
            "overhead": {"memory": "1Mi"},
        }});
        let r = pod_request(&pod);
        assert_eq!(r.fit.milli_cpu, 1000);
        assert_eq!(r.fit.memory, 65 << 20);
        assert_eq!(r.fit.pods, 1);
        // The second container asks for no memory: scored as 200Mi.
        assert_eq!(r.score.memory, (64 << 20) + DEFAULT_MEMORY + (1 << 20));
    }
}
