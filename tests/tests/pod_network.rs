//! The cluster network with two QEMU nodes on the lab switch, as a user sees it:
//!
//! * each node gets its own `/24` of `10.244.0.0/16` (`spec.podCIDR`, `spec.podCIDRs`);
//! * each reports `NetworkUnavailable=False` once its bridge, VXLAN device and masquerade are
//!   up, and its overlay endpoint (NIC 1, `keel.ip2`) lands on its Node;
//! * each learns the other as its overlay peer (console);
//! * pods talk across the overlay: a pod on keel-1 fetches from the echo pod on keel-2 by its
//!   pod IP, and the server sees the client pod's own address;
//! * a Service's ClusterIP works from keel-1 (nftables DNAT, then the overlay), and its name
//!   resolves at the node's cluster DNS (10.96.0.10);
//! * a deleted Node's pod CIDR is free again and leaves the other node's peer set.

use std::time::Duration;

use keel_e2e::*;

fn jsonpath(lab: &Lab, args: &[&str]) -> String {
    kubectl_ok(lab, args).trim().to_string()
}

fn node_field(lab: &Lab, node: &str, path: &str) -> String {
    jsonpath(lab, &["get", "node", node, "-o", &format!("jsonpath={path}")])
}

fn network_unavailable(lab: &Lab, node: &str) -> String {
    node_field(
        lab,
        node,
        r#"{.status.conditions[?(@.type=="NetworkUnavailable")].status}"#,
    )
}

fn wait_console(lab: &Lab, node: &str, needle: &str, timeout: Duration) {
    wait_for(&format!("{node} console: {needle}"), timeout, || {
        let text = lab.console(node).unwrap_or_default();
        if text.contains(needle) {
            Poll::Ready(())
        } else {
            Poll::Pending(text.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn two_nodes_get_pod_cidrs_an_overlay_and_traffic_across_it() {
    let lab = lab_with_ready_nodes(2);

    // IPAM: two different /24s of the cluster range, podCIDRs = [podCIDR].
    let cidrs = wait_for("pod CIDRs on both nodes", Duration::from_secs(60), || {
        let out = jsonpath(&lab, &["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]);
        let cidrs: Vec<String> = out.split_whitespace().map(str::to_string).collect();
        if cidrs.len() == 2 {
            Poll::Ready(cidrs)
        } else {
            Poll::Pending(out)
        }
    })
    .unwrap();
    assert_ne!(cidrs[0], cidrs[1]);
    for c in &cidrs {
        assert!(c.starts_with("10.244.") && c.ends_with(".0/24"), "{cidrs:?}");
    }
    for node in ["keel-1", "keel-2"] {
        let one = node_field(&lab, node, "{.spec.podCIDR}");
        assert_eq!(node_field(&lab, node, "{.spec.podCIDRs[*]}"), one);
    }

    // The pod network comes up on both: NetworkUnavailable False, endpoint on NIC 1.
    for node in ["keel-1", "keel-2"] {
        wait_for(
            &format!("{node} NetworkUnavailable=False"),
            Duration::from_secs(90),
            || match network_unavailable(&lab, node).as_str() {
                "False" => Poll::Ready(()),
                other => Poll::Pending(other.to_string()),
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.console(node).unwrap_or_default()));
    }
    let addr1 = node_field(
        &lab,
        "keel-1",
        r#"{.metadata.annotations.keel\.dev/overlay-address}"#,
    );
    let addr2 = node_field(
        &lab,
        "keel-2",
        r#"{.metadata.annotations.keel\.dev/overlay-address}"#,
    );
    assert_eq!(addr1, "192.168.50.11");
    assert_eq!(addr2, "192.168.50.12");
    let nodes = jsonpath(
        &lab,
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.addresses[*].address}",
        ],
    );
    assert!(
        !nodes.contains("10.244."),
        "pod-network addresses are not node addresses: {nodes}"
    );

    // Each node learned the other as its overlay peer.
    wait_console(&lab, "keel-1", "overlay peers: keel-2", Duration::from_secs(60));
    wait_console(&lab, "keel-2", "overlay peers: keel-1", Duration::from_secs(60));

    // Pod to pod across the overlay: a pod on keel-1 fetches from the echo pod on keel-2 by its
    // pod IP, and the echo server sees the client's own pod address (no masquerade inside the
    // cluster range).
    let cidr1 = node_field(&lab, "keel-1", "{.spec.podCIDR}");
    let cidr2 = node_field(&lab, "keel-2", "{.spec.podCIDR}");
    apply(
        &lab,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: echo\n  labels: {app: echo}\nspec:\n  nodeName: keel-2\n  \
         containers:\n  - name: echo\n    image: keel/echo:latest\n    ports:\n    - containerPort: 8080\n",
    );
    wait_pod_ready(&lab, "default", "echo");
    let echo_ip = jsonpath(&lab, &["get", "pod", "echo", "-o", "jsonpath={.status.podIP}"]);
    let net2 = cidr2.trim_end_matches("0/24");
    assert!(
        echo_ip.starts_with(net2),
        "echo's IP {echo_ip} is not from keel-2's {cidr2}"
    );
    let client_net = cidr1.trim_end_matches("0/24");
    fetch_from(&lab, "fetch", &format!("{echo_ip}:8080"), client_net);
    let fetch_ip = jsonpath(&lab, &["get", "pod", "fetch", "-o", "jsonpath={.status.podIP}"]);
    assert!(
        fetch_ip.is_empty() || fetch_ip.starts_with(client_net),
        "{fetch_ip}"
    );

    // A Service in front of the echo pod: its ClusterIP works from keel-1 (nftables DNAT on
    // keel-1, then the overlay), and the echo server still sees the client pod's address.
    apply(
        &lab,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\nspec:\n  selector: {app: echo}\n  \
         ports:\n  - port: 80\n    targetPort: 8080\n",
    );
    let cluster_ip = jsonpath(
        &lab,
        &["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"],
    );
    let octets: Vec<u8> = cluster_ip.split('.').filter_map(|o| o.parse().ok()).collect();
    assert!(
        octets.len() == 4 && octets[0] == 10 && (96..=111).contains(&octets[1]),
        "{cluster_ip} is not in 10.96.0.0/12"
    );
    fetch_from(&lab, "fetch-svc", &format!("{cluster_ip}:80"), client_net);

    // Cluster DNS on the node: the Service's name resolves to its ClusterIP at 10.96.0.10.
    let lookup = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: lookup\nspec:\n  nodeName: keel-1\n  \
         restartPolicy: Never\n  containers:\n  - name: lookup\n    image: busybox:1.35\n    \
         command: [\"sh\", \"-c\", \"for i in $(seq 30); do nslookup echo.default.svc.cluster.local 10.96.0.10 | \
         grep -q 'Address.*{cluster_ip}' && exit 0; sleep 1; done; exit 1\"]\n"
    );
    apply(&lab, &lookup);
    let phase = wait_for("the lookup pod to finish", POD_READY_TIMEOUT, || match jsonpath(
        &lab,
        &["get", "pod", "lookup", "-o", "jsonpath={.status.phase}"],
    )
    .as_str()
    {
        p @ ("Succeeded" | "Failed") => Poll::Ready(p.to_string()),
        other => Poll::Pending(other.to_string()),
    })
    .unwrap();
    assert_eq!(
        phase,
        "Succeeded",
        "echo.default.svc.cluster.local did not resolve to {cluster_ip}\n--- keel-1 ---\n{}",
        lab.console("keel-1").unwrap_or_default()
    );

    // Deleting keel-2's Node frees its pod CIDR and takes it out of keel-1's peers.
    kubectl_ok(&lab, &["delete", "node", "keel-2", "--wait=false"]);
    wait_console(&lab, "keel-1", "overlay peers: none", Duration::from_secs(60));
}

/// Runs a `restartPolicy: Never` busybox pod on keel-1 that fetches `http://{target}/` until the
/// echo server answers that the client came from `client_net`; panics unless it Succeeded.
fn fetch_from(lab: &Lab, name: &str, target: &str, client_net: &str) {
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: keel-1\n  \
         restartPolicy: Never\n  containers:\n  - name: fetch\n    image: busybox:1.35\n    \
         command: [\"sh\", \"-c\", \"for i in $(seq 60); do wget -q -O- http://{target}/ | \
         grep -q 'client={client_net}' && exit 0; sleep 1; done; exit 1\"]\n"
    );
    apply(lab, &pod);
    let phase = wait_for(
        &format!("{name} to finish"),
        POD_READY_TIMEOUT,
        || match jsonpath(lab, &["get", "pod", name, "-o", "jsonpath={.status.phase}"]).as_str() {
            p @ ("Succeeded" | "Failed") => Poll::Ready(p.to_string()),
            other => Poll::Pending(other.to_string()),
        },
    )
    .unwrap();
    assert_eq!(
        phase,
        "Succeeded",
        "{name} on keel-1 could not fetch from {target}\n--- keel-1 ---\n{}\n--- keel-2 ---\n{}",
        lab.console("keel-1").unwrap_or_default(),
        lab.console("keel-2").unwrap_or_default()
    );
}
