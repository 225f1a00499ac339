//! `make bench-net`: the cluster network's figures on a two-node lab, each printed against its
//! goal (ignored by `cargo test`; run with `--ignored --nocapture`):
//!
//! * pod-to-pod across nodes vs node-to-node on the underlay, in the same run: throughput of one
//!   64 MiB HTTP download (busybox `wget` from busybox `httpd`), ratio goal ≥ 0.8; latency of
//!   100 sequential small HTTP requests, added latency goal ≤ 10 % (each request is a new
//!   `wget` process, so both sides carry the same process start-up);
//! * DNS answers from a pod: 200 `nslookup`s of a Service, each timed with `adjtimex`'s
//!   microseconds minus the cost of reading the clock, and each paired with the same `nslookup`
//!   refused by the pod's own loopback (process start-up, no server): p50/p99 of both and of
//!   their difference, the server's share (goal p99 ≤ 5 ms);
//! * an endpoint change in effect on every node after the pod turns ready: a Service whose
//!   only pod flips ready (exec probe on a file, toggled with `kubectl exec`); from the moment
//!   the API shows the pod Ready (a `kubectl get -w` on the host) until every node's NodePort
//!   answers from it, 10 rounds, p50/max (goal p99 ≤ 500 ms).
//!
//! The node datapath's own figure (1,000 Services × 10 endpoints programmed) is the ignored
//! unit benchmark `bench_programs_1000_services_of_10_endpoints` in keel-node, also run by
//! `make bench-net`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_e2e::*;

fn jsonpath(lab: &Lab, args: &[&str]) -> String {
    kubectl_ok(lab, args).trim().to_string()
}

/// `kubectl exec POD -- sh -c SCRIPT`, stdout.
fn exec(lab: &Lab, pod: &str, script: &str) -> String {
    kubectl_ok(lab, &["exec", pod, "--", "sh", "-c", script])
}

/// `exec`, retried for a while (a container that just started may not take exec yet).
fn exec_retry(lab: &Lab, pod: &str, script: &str) {
    wait_for(
        &format!("kubectl exec {pod} -- {script}"),
        Duration::from_secs(30),
        || match lab.kubectl(&["exec", pod, "--", "sh", "-c", script]) {
            Ok(o) if o.success() => Poll::Ready(()),
            Ok(o) => Poll::Pending(o.stderr),
            Err(e) => Poll::Pending(e.to_string()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

fn pod(name: &str, node: &str, host_network: bool, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  nodeName: {node}\n  \
         hostNetwork: {host_network}\n  containers:\n  - name: c\n    image: busybox:1.35\n    \
         command: [\"sh\", \"-c\", \"{script}\"]\n"
    )
}

/// Seconds from busybox `time -p` output (`real 1.23`).
fn real_seconds(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix("real "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[test]
#[ignore]
fn bench_net() {
    let lab = lab_with_ready_nodes(2);
    // Servers on keel-2 (a pod, and one in the node's own network namespace), clients on keel-1.
    let serve = |port: u16| {
        format!(
            "mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/big bs=1048576 count=64 2>/dev/null && \
             echo ok > /tmp/www/small && exec httpd -f -p {port} -h /tmp/www"
        )
    };
    apply(&lab, &pod("pod-srv", "keel-2", false, &serve(8080)));
    apply(&lab, &pod("host-srv", "keel-2", true, &serve(18080)));
    apply(&lab, &pod("pod-cli", "keel-1", false, "exec sleep 100000"));
    apply(&lab, &pod("host-cli", "keel-1", true, "exec sleep 100000"));
    for p in ["pod-srv", "host-srv", "pod-cli", "host-cli"] {
        wait_pod_ready(&lab, "default", p);
    }
    let pod_ip = jsonpath(&lab, &["get", "pod", "pod-srv", "-o", "jsonpath={.status.podIP}"]);
    let node_ip = "192.168.50.12"; // keel-2 on the lab segment, where the overlay runs too
    let pod_url = format!("http://{pod_ip}:8080");
    let node_url = format!("http://{node_ip}:18080");
    // Both servers answer before anything is timed.
    for (cli, url) in [("pod-cli", &pod_url), ("host-cli", &node_url)] {
        wait_for(&format!("{cli} reaching {url}"), Duration::from_secs(60), || {
            let out = lab
                .kubectl(&["exec", cli, "--", "wget", "-q", "-O-", &format!("{url}/small")])
                .map(|o| o.stdout)
                .unwrap_or_default();
            if out.trim() == "ok" {
                Poll::Ready(())
            } else {
                Poll::Pending(out)
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    // Throughput and latency, alternating pod and node runs so that both see the same load.
    let mut bulk = (Vec::new(), Vec::new());
    let mut rr = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (i, (cli, url)) in [("pod-cli", &pod_url), ("host-cli", &node_url)]
            .into_iter()
            .enumerate()
        {
            let t = real_seconds(&exec(
                &lab,
                cli,
                &format!("time -p wget -q -O /dev/null {url}/big 2>&1"),
            ));
            let r = real_seconds(&exec(
                &lab,
                cli,
                &format!(
                    "time -p sh -c 'for i in $(seq 100); do wget -q -O /dev/null {url}/small; done' 2>&1"
                ),
            ));
            if i == 0 {
                bulk.0.push(t);
                rr.0.push(r);
            } else {
                bulk.1.push(t);
                rr.1.push(r);
            }
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (pod_mibs, node_mibs) = (64.0 / best(&bulk.0), 64.0 / best(&bulk.1));
    let ratio = pod_mibs / node_mibs;
    let (pod_rr_ms, node_rr_ms) = (best(&rr.0) * 10.0, best(&rr.1) * 10.0);
    let added = (pod_rr_ms - node_rr_ms) / node_rr_ms * 100.0;
    println!(
        "bench-net: throughput pod-to-pod {pod_mibs:.1} MiB/s, node-to-node {node_mibs:.1} MiB/s: ratio {ratio:.2} (goal >= 0.80) {}",
        if ratio >= 0.8 { "ok" } else { "MISSED" }
    );
    println!(
        "bench-net: request/response pod-to-pod {pod_rr_ms:.2} ms, node-to-node {node_rr_ms:.2} ms: added latency {added:.1} % (goal <= 10 %) {}",
        if added <= 10.0 { "ok" } else { "MISSED" }
    );

    // DNS from a pod.
    apply(
        &lab,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: pod-srv}\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    );
    wait_for("web resolving from pod-cli", Duration::from_secs(60), || {
        let out = lab
            .kubectl(&[
                "exec",
                "pod-cli",
                "--",
                "nslookup",
                "web.default.svc.cluster.local",
            ])
            .map(|o| o.stdout)
            .unwrap_or_default();
        if out.contains("Name:") {
            Poll::Ready(())
        } else {
            Poll::Pending(out)
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Each lookup is paired with the same nslookup against the pod's own loopback, where nothing
    // listens (refused at once): that one is process start-up and a local round trip, and the
    // difference is what the node's DNS server adds.
    let out = exec(
        &lab,
        "pod-cli",
        "t() { adjtimex | awk '/tv_sec/{s=$2} /tv_usec/{u=$2} END{printf \"%.0f\\n\", s*1000000+u}'; }; \
         n=web.default.svc.cluster.local; \
         for i in $(seq 200); do a=$(t); nslookup $n >/dev/null 2>&1; b=$(t); nslookup $n 127.0.0.1 >/dev/null 2>&1; \
         c=$(t); d=$(t); echo $((b - a - (d - c))) $((c - b - (d - c))); done",
    );
    let pairs: Vec<(f64, f64)> = out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().map(|x| x.parse::<f64>().ok());
            Some((w.next()?? / 1000.0, w.next()?? / 1000.0))
        })
        .collect();
    let mut dns: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let mut server: Vec<f64> = pairs.iter().map(|p| (p.0 - p.1).max(0.0)).collect();
    dns.sort_by(f64::total_cmp);
    server.sort_by(f64::total_cmp);
    let server_p99 = percentile(&server, 0.99);
    println!(
        "bench-net: DNS from a pod ({} lookups): nslookup p50 {:.2} ms, p99 {:.2} ms with process start-up; \
         minus the same nslookup refused locally: p50 {:.2} ms, p99 {server_p99:.2} ms (goal p99 <= 5 ms) {}",
        pairs.len(),
        percentile(&dns, 0.5),
        percentile(&dns, 0.99),
        percentile(&server, 0.5),
        if server_p99 <= 5.0 { "ok" } else { "MISSED" }
    );

    // Endpoint change on every node after the pod turns ready.
    apply(
        &lab,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: late\n  labels: {app: late}\nspec:\n  nodeName: keel-2\n  \
         containers:\n  - name: c\n    image: busybox:1.35\n    command: [\"sh\", \"-c\", \"mkdir -p /tmp/www && echo late > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www\"]\n    \
         readinessProbe:\n      exec:\n        command: [\"test\", \"-f\", \"/tmp/ready\"]\n      periodSeconds: 1\n      failureThreshold: 1\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: late\nspec:\n  type: NodePort\n  selector: {app: late}\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    );
    // Running (not ready: no /tmp/ready yet) before anything is exec'd in it.
    wait_for("late running", POD_READY_TIMEOUT, || {
        match jsonpath(&lab, &["get", "pod", "late", "-o", "jsonpath={.status.phase}"]).as_str() {
            "Running" => Poll::Ready(()),
            other => Poll::Pending(other.to_string()),
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let node_port: u16 = jsonpath(
        &lab,
        &[
            "get",
            "service",
            "late",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
    )
    .parse()
    .expect("late has a nodePort");
    let addrs: Vec<_> = ["keel-1", "keel-2"]
        .iter()
        .map(|n| lab.nodeport(n, node_port).expect("forwarded"))
        .collect();
    let answers = |addr| matches!(http_get(addr, "/"), Ok(r) if r.status == 200 && r.body.contains("late"));
    // Ready transitions as the API shows them, timestamped on arrival.
    let mut watch = Command::new(lab.kubectl_client().binary())
        .env("HOME", lab.kubectl_client().home())
        .args(["--kubeconfig"])
        .arg(lab.kubeconfig())
        .args([
            "get",
            "pod",
            "late",
            "-w",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}{"\n"}"#,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let stdout = watch.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line.trim().to_string())).is_err() {
                return;
            }
        }
    });
    let mut delays = Vec::new();
    for round in 0..10 {
        // Not ready, and out of every node's rotation.
        exec_retry(&lab, "late", "rm -f /tmp/ready");
        wait_for("late out of the rotation", Duration::from_secs(60), || {
            if addrs.iter().all(|a| !answers(*a)) {
                Poll::Ready(())
            } else {
                Poll::Pending(String::new())
            }
        })
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        while rx.try_recv().is_ok() {}
        exec_retry(&lab, "late", "touch /tmp/ready");
        let ready_at = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok((at, status)) if status == "True" => break at,
                Ok(_) => continue,
                Err(e) => panic!("round {round}: no Ready=True from the watch: {e}"),
            }
        };
        let mut pending: Vec<_> = addrs.clone();
        let mut last = ready_at;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "round {round}: late never answered everywhere"
            );
            pending.retain(|a| {
                if answers(*a) {
                    last = Instant::now();
                    false
                } else {
                    true
                }
            });
        }
        delays.push(last.saturating_duration_since(ready_at).as_secs_f64() * 1000.0);
    }
    let _ = watch.kill();
    let _ = watch.wait();
    delays.sort_by(f64::total_cmp);
    let max = percentile(&delays, 1.0);
    println!(
        "bench-net: endpoint change in effect on both nodes after the pod turned ready ({} rounds): p50 {:.0} ms, max {max:.0} ms (goal p99 <= 500 ms) {}",
        delays.len(),
        percentile(&delays, 0.5),
        if max <= 500.0 { "ok" } else { "MISSED" }
    );
}
