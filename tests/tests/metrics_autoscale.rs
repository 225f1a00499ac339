//! Resource metrics and autoscaling as a user sees them, on one QEMU node with the lab registry:
//!
//! * `kubectl top node` lists the node with its CPU and memory (the node's usage reports, served
//!   as `metrics.k8s.io`);
//! * a Deployment whose container burns CPU (`busybox sh -c 'while :; do :; done'`, request 50m,
//!   limit 200m) shows up in `kubectl top pod` with the CPU it burns, per container too;
//! * `kubectl autoscale deployment burn --cpu-percent=50 --min=1 --max=3` scales it up to 3
//!   (`kubectl get hpa` shows `cpu: N%/50%`, a `SuccessfulRescale` event says why); once the
//!   containers only sleep it scales back down to 1 (the test shortens the scale-down
//!   stabilization window through the HPA's `behavior`).
//!
//! Figures printed (nodes report usage every 5 s here, `keel.usage-interval=5`): time from the
//! burning pod Ready to its CPU in `kubectl top`, from `kubectl autoscale` (and from the burning
//! pod Ready) to the scale-up, and from the end of the burning to the scale-down.

use std::time::{Duration, Instant};

use keel_e2e::*;

/// `kubectl top` rows without headers, split into columns.
fn top_rows(lab: &Lab, args: &[&str]) -> Result<Vec<Vec<String>>, String> {
    let mut full = vec!["top"];
    full.extend_from_slice(args);
    full.push("--no-headers");
    let out = lab.kubectl(&full).map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(out.stderr.trim().to_string());
    }
    Ok(out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect())
}

/// `250m` → 250.
fn millicores(cell: &str) -> Option<u64> {
    cell.strip_suffix('m')?.parse().ok()
}

/// `123Mi` → 123.
fn mebibytes(cell: &str) -> Option<u64> {
    cell.strip_suffix("Mi")?.parse().ok()
}

const BURN: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: burn
spec:
  replicas: 1
  selector:
    matchLabels: {app: burn}
  template:
    metadata:
      labels: {app: burn}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: busybox:1.35
        command: [sh, -c, 'while :; do :; done']
        resources:
          requests: {cpu: 50m}
          limits: {cpu: 200m}
";

#[test]
fn top_and_autoscale_a_cpu_burning_deployment() {
    // Usage every 5 s instead of 10 s keeps the test short.
    let mut options = LabOptions::with_nodes(1);
    options.extra_kernel_args = format!("{} keel.usage-interval=5", options.extra_kernel_args);
    let lab = lab_with(options);

    // kubectl top node: every node, with CPU and memory, once two reports arrived.
    let rows = wait_for("kubectl top node", Duration::from_secs(120), || {
        match top_rows(&lab, &["node"]) {
            Ok(rows) if !rows.is_empty() => Poll::Ready(rows),
            Ok(_) => Poll::Pending("no rows".into()),
            Err(e) => Poll::Pending(e),
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, lab.node_names(), "{rows:?}");
    for r in &rows {
        // NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%)
        assert_eq!(r.len(), 5, "{r:?}");
        assert!(millicores(&r[1]).is_some(), "CPU {r:?}");
        assert!(r[2].ends_with('%'), "{r:?}");
        let mem = mebibytes(&r[3]).unwrap_or_else(|| panic!("memory {r:?}"));
        assert!((10..512).contains(&mem), "a 512 MiB node uses {mem} Mi: {r:?}");
        assert!(r[4].ends_with('%'), "{r:?}");
    }

    // A pod that burns CPU shows it in kubectl top pod.
    apply(&lab, BURN);
    let ready = lab
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "app=burn",
            "--timeout=180s",
        ])
        .expect("kubectl wait");
    assert!(ready.success(), "burn not Ready: {}", ready.stderr);
    let burning = Instant::now();
    let row = wait_for(
        "kubectl top pod shows the burn",
        Duration::from_secs(90),
        || match top_rows(&lab, &["pod", "-l", "app=burn"]) {
            Ok(rows) => match rows.first() {
                Some(r) if r.len() == 3 && millicores(&r[1]).is_some_and(|m| m >= 100) => {
                    Poll::Ready(r.clone())
                }
                _ => Poll::Pending(format!("{rows:?}")),
            },
            Err(e) => Poll::Pending(e),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let to_top = burning.elapsed();
    assert!(row[0].starts_with("burn-"), "{row:?}");
    let cpu = millicores(&row[1]).unwrap_or(0);
    assert!(cpu <= 260, "the 200m limit holds: {row:?}");
    assert!(mebibytes(&row[2]).is_some(), "{row:?}");
    eprintln!(
        "figure: burning pod Ready -> CPU in kubectl top: {to_top:?} ({} {})",
        row[1], row[2]
    );

    // Per container, across namespaces, and by name.
    let containers = top_rows(&lab, &["pod", "-l", "app=burn", "--containers"]).expect("top --containers");
    assert_eq!(
        containers.first().map(|r| r[1].as_str()),
        Some("burn"),
        "{containers:?}"
    );
    let all = top_rows(&lab, &["pod", "-A"]).expect("top pod -A");
    assert!(all.iter().any(|r| r[0] == "default" && r[1] == row[0]), "{all:?}");
    let one = top_rows(&lab, &["pod", &row[0]]).expect("top pod NAME");
    assert_eq!(one.len(), 1, "{one:?}");
    // The metrics objects themselves, as a Table.
    let got = kubectl_ok(
        &lab,
        &["get", "pods.metrics.k8s.io", "-l", "app=burn", "--no-headers"],
    );
    let cells: Vec<&str> = got.split_whitespace().collect();
    assert_eq!(cells.first().copied(), Some(row[0].as_str()), "{got}");
    assert_eq!(cells.len(), 4, "NAME CPU MEMORY WINDOW: {got}");
    assert!(cells[3].ends_with('s'), "{got}");
    let missing = lab.kubectl(&["top", "pod", "nope"]).expect("kubectl");
    assert!(!missing.success());
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);

    // kubectl autoscale: the burn is 4x its request, far above 50 %: up to the maximum, 3.
    let autoscaled = Instant::now();
    kubectl_ok(
        &lab,
        &[
            "autoscale",
            "deployment",
            "burn",
            "--cpu-percent=50",
            "--min=1",
            "--max=3",
        ],
    );
    wait_replicas(&lab, 3, Duration::from_secs(180));
    let to_scale_up = autoscaled.elapsed();
    eprintln!(
        "figure: kubectl autoscale -> deployment scaled to 3: {to_scale_up:?} (burning pod Ready -> 3: {:?})",
        burning.elapsed()
    );
    wait_event(
        &lab,
        "New size: 3; reason: cpu resource utilization (percentage of request) above target",
    );
    let hpa = kubectl_ok(&lab, &["get", "hpa", "burn", "--no-headers"]);
    // NAME REFERENCE TARGETS MINPODS MAXPODS REPLICAS AGE
    let cols: Vec<&str> = hpa.split_whitespace().collect();
    assert_eq!(cols.get(1).copied(), Some("Deployment/burn"), "{hpa}");
    assert_eq!(cols.get(2).copied(), Some("cpu:"), "{hpa}");
    let current: u32 = cols
        .get(3)
        .and_then(|t| t.strip_suffix("%/50%"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("TARGETS: {hpa}"));
    assert!(current > 100, "{hpa}");
    assert_eq!(&cols[4..6], ["1", "3"], "{hpa}");
    assert_eq!(
        hpa_field(&lab, r#"{.status.conditions[?(@.type=="ScalingActive")].reason}"#),
        "ValidMetricFound"
    );
    assert!(!hpa_field(&lab, "{.status.lastScaleTime}").is_empty());

    // The burning stops (the pods are replaced by ones that sleep); with a short scale-down
    // stabilization window the HPA goes back to the minimum.
    kubectl_ok(
        &lab,
        &[
            "patch",
            "hpa",
            "burn",
            "--type=merge",
            "-p",
            r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":15}}}}"#,
        ],
    );
    let calm = Instant::now();
    kubectl_ok(
        &lab,
        &[
            "patch",
            "deployment",
            "burn",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/template/spec/containers/0/command","value":["sleep","3600"]}]"#,
        ],
    );
    wait_replicas(&lab, 1, Duration::from_secs(360));
    eprintln!(
        "figure: burning stopped -> deployment scaled to 1: {:?}",
        calm.elapsed()
    );
    wait_event(&lab, "New size: 1; reason: All metrics below target");
    let target = hpa_field(
        &lab,
        "{.status.currentMetrics[0].resource.current.averageUtilization}",
    );
    let target: u32 = target
        .parse()
        .unwrap_or_else(|_| panic!("utilization {target:?}"));
    assert!(target < 50, "{target}");
}

fn hpa_field(lab: &Lab, path: &str) -> String {
    kubectl_ok(lab, &["get", "hpa", "burn", "-o", &format!("jsonpath={path}")])
        .trim()
        .to_string()
}

/// Waits until the Deployment `burn` asks for `n` replicas.
fn wait_replicas(lab: &Lab, n: u32, timeout: Duration) {
    wait_for(&format!("burn scaled to {n}"), timeout, || {
        let replicas = kubectl_ok(
            lab,
            &["get", "deployment", "burn", "-o", "jsonpath={.spec.replicas}"],
        );
        if replicas.trim() == n.to_string() {
            Poll::Ready(())
        } else {
            let hpa = lab
                .kubectl(&["get", "hpa", "burn", "--no-headers"])
                .map(|o| o.stdout + &o.stderr)
                .unwrap_or_default();
            let conditions = lab
                .kubectl(&[
                    "get",
                    "hpa",
                    "burn",
                    "-o",
                    "jsonpath={.status.conditions[*].message}",
                ])
                .map(|o| o.stdout)
                .unwrap_or_default();
            Poll::Pending(format!("replicas {replicas}; {} | {conditions}", hpa.trim()))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Waits until an event of the HPA says `message`.
fn wait_event(lab: &Lab, message: &str) {
    wait_for(&format!("event {message:?}"), Duration::from_secs(30), || {
        let out = kubectl_ok(
            lab,
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.kind=HorizontalPodAutoscaler,reason=SuccessfulRescale",
                "-o",
                "jsonpath={.items[*].message}",
            ],
        );
        if out.contains(message) {
            Poll::Ready(())
        } else {
            Poll::Pending(out)
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}
