//! Microbenchmark of the per-pod decision cost alone (filter and score over 1,000 nodes, no
//! API): `cargo run --release -p keel-scheduler --example decide_bench`.

use keel_scheduler::filter::{NodeInfo, PodInfo};
use serde_json::json;
fn main() {
    let mut nodes: Vec<NodeInfo> = Vec::new();
    for i in 0..1000 {
        let name = format!("node-{i:04}");
        let mut n = NodeInfo::placeholder(&name);
        n.set_node(&json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}, "spec": {"taints": []},
            "status": {"allocatable": {"cpu": "32", "memory": "8Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}}));
        nodes.push(n);
    }
    let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m"}}}]}});
    let t = std::time::Instant::now();
    let mut start = 0;
    for _ in 0..3000 {
        let info = PodInfo::new(&pod);
        let mut feasible = Vec::new();
        let mut visited = 0;
        for i in 0..1000 {
            visited += 1;
            let n = &nodes[(start + i) % 1000];
            if n.fits(&info).is_ok() {
                feasible.push(n);
                if feasible.len() >= 420 {
                    break;
                }
            }
        }
        start = (start + visited) % 1000;
        let best = feasible
            .iter()
            .max_by_key(|n| n.least_allocated(&info))
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let best = nodes.iter().position(|n| n.name == best).unwrap_or(0);
        let info2 = info.clone();
        if let Some(n) = nodes.get_mut(best) {
            n.add_pod(&info2);
        }
    }
    println!("{:?} per pod", t.elapsed() / 3000);
}
