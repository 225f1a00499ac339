//! The node protocol end to end: the real `keel-node agent` (host build) against the gate
//! with a fake API. Each test reads as what an operator would see.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::{condition, csrs, events, node_config, pods, wait_for, Agent, Gate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_registers_heartbeats_survives_restarts_and_goes_unreachable() {
    let mut gate = Gate::start(Duration::from_secs(3), 1).await;
    let token = gate.new_token();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("node-a");
    let cfg = node_config(&gate.url(), &token.expose(), &gate.pki.ca_pin(), "node-a");

    // Join and register.
    let mut agent = Agent::start("node-a", &state_dir, &cfg);
    agent.wait_line("keel: joined as node-a", 1).await;
    agent
        .wait_line(&format!("keel: connected to {}", gate.url()), 1)
        .await;
    let node = wait_for("the Node object", || gate.node("node-a")).await;

    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], "node-a");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["kubernetes.io/arch"], "amd64");
    assert_eq!(labels["beta.kubernetes.io/os"], "linux");
    let node = wait_for("the Node's status", || {
        gate.node("node-a").filter(|n| condition(n, "Ready").is_some())
    })
    .await;
    let status = &node["status"];
    let ready = condition(&node, "Ready").unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], "KubeletReady");
    assert_eq!(ready["message"], "kubelet is posting ready status");
    assert_eq!(
        condition(&node, "MemoryPressure").unwrap()["reason"],
        "KubeletHasSufficientMemory"
    );
    // The pod network is not run here (--no-workloads), so the node says so.
    let network = condition(&node, "NetworkUnavailable").unwrap();
    assert_eq!(network["status"], "True");
    assert_eq!(network["reason"], "KeelNetworkNotReady");
    let memory = status["capacity"]["memory"].as_str().unwrap();
    assert!(memory.ends_with("Ki") && memory.len() > 3, "{memory}");
    assert_eq!(status["capacity"]["pods"], "110");
    assert!(
        status["capacity"]["cpu"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    assert!(status["allocatable"]["ephemeral-storage"]
        .as_str()
        .unwrap()
        .ends_with("Ki"));
    let info = &status["nodeInfo"];
    assert_eq!(info["kubeletVersion"], "v1.32.0-keel");
    assert_eq!(info["containerRuntimeVersion"], "keel://0.1.0");
    assert_eq!(info["operatingSystem"], "linux");
    assert_eq!(info["architecture"], "amd64");
    assert_eq!(info["machineID"].as_str().unwrap().len(), 32);
    assert_eq!(info["bootID"].as_str().unwrap().len(), 36);
    assert!(!info["kernelVersion"].as_str().unwrap().is_empty());
    let addresses = status["addresses"].as_array().unwrap();
    assert!(addresses.iter().any(|a| a["type"] == "InternalIP"));
    assert!(addresses
        .iter()
        .any(|a| a["type"] == "Hostname" && a["address"] == "node-a"));

    // The node got the first pod range, and was told.
    agent.wait_line("keel: pod network 10.244.0.0/24", 1).await;
    let node = gate.node("node-a").unwrap();
    assert_eq!(node["spec"]["podCIDR"], "10.244.0.0/24");
    assert_eq!(node["spec"]["podCIDRs"], serde_json::json!(["10.244.0.0/24"]));

    // The boot is announced as the kubelet does, with the phases PID 1 timed.
    let node = wait_for("the boot-phases annotation", || {
        gate.node("node-a")
            .filter(|n| !n["metadata"]["annotations"]["keel.dev/boot-phases"].is_null())
    })
    .await;
    assert_eq!(
        node["metadata"]["annotations"]["keel.dev/boot-phases"],
        "kernel=0.00s, agent=1.50s"
    );
    let starting = gate
        .api
        .all(events())
        .into_iter()
        .find(|e| e["reason"] == "Starting")
        .expect("a Starting event");
    assert_eq!(starting["involvedObject"]["kind"], "Node");
    assert_eq!(starting["involvedObject"]["name"], "node-a");
    assert_eq!(starting["metadata"]["namespace"], "default");

    // The issuance is on record, approved, and the key stayed on the node.
    let csr = wait_for("the CSR record", || gate.api.all(csrs()).into_iter().next()).await;
    assert_eq!(
        csr["spec"]["username"],
        format!("system:bootstrap:{}", token.id())
    );
    assert_eq!(csr["status"]["conditions"][0]["type"], "Approved");
    let key = state_dir.join("pki/node.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The Lease is held by the node and renewed.
    let lease = wait_for("the Lease", || gate.lease("node-a")).await;
    assert_eq!(lease["spec"]["holderIdentity"], "node-a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    let first = lease["spec"]["renewTime"].as_str().unwrap().to_string();
    assert!(first.ends_with('Z') && first.contains('.'), "MicroTime: {first}");
    wait_for("a Lease renewal", || {
        let l = gate.lease("node-a")?;
        (l["spec"]["renewTime"].as_str()? != first).then_some(())
    })
    .await;

    // The node is told which pods are its own: a fresh snapshot on every change.
    agent.wait_line("keel: desired pods", 1).await;
    assert!(
        agent.lines().iter().any(|l| l.contains("(0 pods)")),
        "{:?}",
        agent.lines()
    );
    let pod = |name: &str, node: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
    };
    gate.api.seed(pods(), Some("default"), pod("elsewhere", "node-z"));
    gate.api.seed(pods(), Some("default"), pod("mine-1", "node-a"));
    agent.wait_line("(1 pods)", 1).await;
    gate.api.seed(pods(), Some("default"), pod("mine-2", "node-a"));
    agent.wait_line("(2 pods)", 1).await;

    // The control plane restarts: the node reconnects by itself.
    gate.restart().await;
    agent
        .wait_line(&format!("keel: connected to {}", gate.url()), 2)
        .await;
    let before = gate.lease("node-a").unwrap()["spec"]["renewTime"].clone();
    wait_for("a renewal after the restart", || {
        (gate.lease("node-a")?["spec"]["renewTime"] != before).then_some(())
    })
    .await;

    // The node dies: after the grace period it is NotReady (Unknown) and tainted.
    agent.kill();
    let node = wait_for("the node to be marked unreachable", || {
        let n = gate.node("node-a")?;
        let tainted = n["spec"]["taints"].as_array().is_some_and(|ts| ts.len() == 2);
        (condition(&n, "Ready")?["status"] == "Unknown" && tainted).then_some(n)
    })
    .await;
    let ready = condition(&node, "Ready").unwrap();
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    assert_eq!(condition(&node, "MemoryPressure").unwrap()["status"], "Unknown");
    let taints = node["spec"]["taints"].as_array().unwrap();
    for effect in ["NoSchedule", "NoExecute"] {
        assert!(taints
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == effect));
    }

    // It comes back with its stored identity (no new join): Ready again, taints gone.
    let agent2 = Agent::start("node-a", &state_dir, &cfg);
    agent2.wait_line("keel: connected to", 1).await;
    assert_eq!(agent2.count("joined as"), 0, "{:?}", agent2.lines());
    wait_for("the node to be Ready and untainted", || {
        let n = gate.node("node-a")?;
        let untainted = n["spec"]["taints"].as_array().is_none_or(|ts| ts.is_empty());
        (condition(&n, "Ready")?["status"] == "True" && untainted).then_some(())
    })
    .await;
    assert_eq!(gate.api.all(csrs()).len(), 1);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_and_creates_no_node() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    let real = gate.new_token();
    // Same id, wrong secret; and an id with no Secret at all.
    let forged = format!("{}.{}", real.id(), "0000000000000000");
    let state = tempfile::tempdir().unwrap();
    let cfg = node_config(&gate.url(), &forged, &gate.pki.ca_pin(), "node-b");
    let agent = Agent::start("node-b", &state.path().join("b"), &cfg);
    agent
        .wait_line("keel: the control plane refused to join this node", 1)
        .await;
    assert!(agent
        .lines()
        .iter()
        .any(|l| l.contains("does not match its secret")));
    assert!(
        !agent.lines().iter().any(|l| l.contains("0000000000000000")),
        "token printed"
    );

    let cfg = node_config(
        &gate.url(),
        "zzzzzz.0123456789abcdef",
        &gate.pki.ca_pin(),
        "node-c",
    );
    let agent2 = Agent::start("node-c", &state.path().join("c"), &cfg);
    agent2.wait_line("does not exist", 1).await;

    assert!(gate.node("node-b").is_none() && gate.node("node-c").is_none());
    assert!(gate.api.all(csrs()).is_empty());
    assert!(!state.path().join("b/identity.json").exists());
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_pin_is_refused_before_the_token_is_sent() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    let token = gate.new_token();
    let other = tempfile::tempdir().unwrap();
    let other_pki = keel_auth::Pki::load_or_create(other.path(), &Default::default()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let cfg = node_config(&gate.url(), &token.expose(), &other_pki.ca_pin(), "node-d");
    let agent = Agent::start("node-d", &state.path().join("d"), &cfg);
    agent
        .wait_line(
            &format!(
                "the cluster CA does not match keel.ca-hash={}",
                other_pki.ca_pin()
            ),
            1,
        )
        .await;
    assert!(gate.node("node-d").is_none());
    assert!(gate.api.all(csrs()).is_empty(), "the gate signed a CSR");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_renews_its_certificate_before_it_expires() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    // A node that joined long ago: its certificate is past two thirds of its lifetime.
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("node-r");
    std::fs::create_dir_all(dir.join("pki")).unwrap();
    let old = gate
        .pki
        // Valid 150 s after a 5-minute backdate: two thirds of the lifetime are already gone.
        .issue_client_certificate("system:node:node-r", &["system:nodes"], Duration::from_secs(150))
        .unwrap();
    std::fs::write(dir.join("pki/node.crt"), &old.cert_pem).unwrap();
    std::fs::write(dir.join("pki/node.key"), old.key_pem()).unwrap();
    std::fs::write(dir.join("pki/ca.crt"), gate.pki.ca_pem()).unwrap();
    let identity = serde_json::json!({"node_name": "node-r", "server": gate.url()});
    std::fs::write(dir.join("identity.json"), identity.to_string()).unwrap();

    // No token: it must not need to join again.
    let cfg = serde_json::json!({"server": gate.url(), "name": "node-r"});
    let agent = Agent::start("node-r", &dir, &cfg);
    agent
        .wait_line("keel: renewed the node certificate of node-r", 1)
        .await;
    agent.wait_line("keel: connected to", 1).await;
    let renewed = std::fs::read_to_string(dir.join("pki/node.crt")).unwrap();
    assert_ne!(renewed, old.cert_pem);
    assert_ne!(
        std::fs::read_to_string(dir.join("pki/node.key")).unwrap(),
        old.key_pem()
    );
    let csr = wait_for("the renewal record", || gate.api.all(csrs()).into_iter().next()).await;
    assert_eq!(csr["status"]["conditions"][0]["reason"], "AutoApprovedRenewal");
    assert_eq!(csr["spec"]["username"], "system:node:node-r");
    wait_for("the node to register", || gate.node("node-r")).await;
    assert_eq!(agent.count("joined as"), 0);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_an_expired_certificate_joins_again() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    let token = gate.new_token();
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("node-e");
    std::fs::create_dir_all(dir.join("pki")).unwrap();
    // Issued "now" with a validity shorter than the 5-minute backdate: already expired.
    let old = gate
        .pki
        .issue_client_certificate("system:node:node-e", &["system:nodes"], Duration::ZERO)
        .unwrap();
    std::fs::write(dir.join("pki/node.crt"), &old.cert_pem).unwrap();
    std::fs::write(dir.join("pki/node.key"), old.key_pem()).unwrap();
    std::fs::write(dir.join("pki/ca.crt"), gate.pki.ca_pem()).unwrap();
    let identity = serde_json::json!({"node_name": "node-e", "server": gate.url()});
    std::fs::write(dir.join("identity.json"), identity.to_string()).unwrap();

    let cfg = node_config(&gate.url(), &token.expose(), &gate.pki.ca_pin(), "node-e");
    let agent = Agent::start("node-e", &dir, &cfg);
    agent.wait_line("keel: joined as node-e", 1).await;
    agent.wait_line("keel: connected to", 1).await;
    assert!(
        agent.lines().iter().any(|l| l.contains("expired")),
        "{:?}",
        agent.lines()
    );
    wait_for("the node to register", || gate.node("node-e")).await;
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_notices_a_reinstalled_control_plane_and_refuses_its_new_ca() {
    let mut old = Gate::start(Duration::from_secs(40), 1).await;
    let token = old.new_token();
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("node-n");
    let cfg = node_config(&old.url(), &token.expose(), &old.pki.ca_pin(), "node-n");
    let agent = Agent::start("node-n", &dir, &cfg);
    agent.wait_line("keel: connected to", 1).await;

    // The control plane is reinstalled on the same address: new CA, new serving certificate.
    old.stop().await;
    let mut new = Gate::start_on(old.addr, Duration::from_secs(40), 1).await;
    // The node no longer trusts the server, drops its identity and tries to join again, which
    // its configured pin (the old CA) refuses.
    agent.wait_line("no longer trust each other", 1).await;
    agent
        .wait_line("the cluster CA does not match keel.ca-hash=", 1)
        .await;
    assert!(!dir.join("identity.json").exists());
    assert!(new.node("node-n").is_none());
    new.stop().await;
}
