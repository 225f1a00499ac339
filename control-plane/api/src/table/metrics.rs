//! Tables of `metrics.k8s.io` objects, as metrics-server prints them (`kubectl get
//! nodes.metrics.k8s.io`, `kubectl get pods.metrics.k8s.io`): name, CPU, memory and window, a
//! pod's usage summed over its containers.

use serde_json::{json, Value};

use super::{Column, Printer};
use crate::metrics::{cpu_quantity, memory_quantity};

pub(super) const METRICS: &[Column] = &[
    Column {
        name: "Name",
        kind: "string",
        format: "name",
        priority: 0,
        description: "Name of the resource",
    },
    Column {
        name: "CPU",
        kind: "string",
        format: "",
        priority: 0,
        description: "CPU usage",
    },
    Column {
        name: "Memory",
        kind: "string",
        format: "",
        priority: 0,
        description: "Memory usage",
    },
    Column {
        name: "Window",
        kind: "string",
        format: "",
        priority: 0,
        description: "Time window for metrics",
    },
];

/// A quantity in units of 10^-9 (CPU) or exactly (memory) from the strings metrics objects hold.
fn scaled(q: &str, nano: bool) -> u128 {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: u128 = num.parse().unwrap_or(0);
    let mul: u128 = match (nano, suffix) {
        (true, "n") => 1,
        (true, "u") => 1_000,
        (true, "m") => 1_000_000,
        (true, "") => 1_000_000_000,
        (false, "") => 1,
        (false, "Ki") => 1 << 10,
        (false, "Mi") => 1 << 20,
        (false, "Gi") => 1 << 30,
        (false, "Ti") => 1 << 40,
        (false, "k") => 1_000,
        (false, "M") => 1_000_000,
        (false, "G") => 1_000_000_000,
        _ => 0,
    };
    n * mul
}

fn row(name: &Value, usages: &[&Value], window: &Value) -> Vec<Value> {
    let sum = |key: &str, nano: bool| -> u64 {
        let total: u128 = usages
            .iter()
            .filter_map(|u| u.get(key).and_then(Value::as_str))
            .map(|q| scaled(q, nano))
            .sum();
        total.min(u128::from(u64::MAX)) as u64
    };
    vec![
        name.clone(),
        json!(cpu_quantity(sum("cpu", true))),
        json!(memory_quantity(sum("memory", false))),
        window.clone(),
    ]
}

pub(super) fn node_metrics(_: &Printer, m: &Value) -> Vec<Value> {
    let usage = m.get("usage").unwrap_or(&Value::Null);
    row(
        m.pointer("/metadata/name").unwrap_or(&Value::Null),
        &[usage],
        m.get("window").unwrap_or(&Value::Null),
    )
}

pub(super) fn pod_metrics(_: &Printer, m: &Value) -> Vec<Value> {
    let usages: Vec<&Value> = m
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("usage"))
        .collect();
    row(
        m.pointer("/metadata/name").unwrap_or(&Value::Null),
        &usages,
        m.get("window").unwrap_or(&Value::Null),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::METRICS_RESOURCES;
    use crate::table::{table, ListMeta};

    #[test]
    fn rows_as_metrics_server() {
        let pod = json!({"kind": "PodMetrics", "metadata": {"name": "web", "namespace": "default"},
            "window": "10.039s", "containers": [
                {"name": "a", "usage": {"cpu": "250m", "memory": "1Mi"}},
                {"name": "b", "usage": {"cpu": "123456n", "memory": "1024Ki"}}]});
        let node = json!({"kind": "NodeMetrics", "metadata": {"name": "n1"}, "window": "10s",
            "usage": {"cpu": "1", "memory": "2052Ki"}});
        let rt = |kind: &str| {
            METRICS_RESOURCES
                .iter()
                .find(|r| r.kind == kind)
                .expect("metrics rt")
        };
        let t = table(rt("PodMetrics"), &[pod], &ListMeta::default());
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["Name", "CPU", "Memory", "Window"]);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["web", "250123456n", "2Mi", "10.039s"])
        );
        let t = table(rt("NodeMetrics"), &[node], &ListMeta::default());
        assert_eq!(t["rows"][0]["cells"], json!(["n1", "1", "2052Ki", "10s"]));
    }
}
