//! Joining and staying joined, with the real node image in QEMU: a wrong token or a wrong CA
//! pin is refused with a clear console message and no Node object; a node reconnects by itself
//! when the control plane restarts; a node whose VM dies goes NotReady (with the unreachable
//! taints) after the grace period.

mod common;

use std::time::{Duration, Instant};

use common::{boot_kernel, join_args, Server, Vm};

fn node_line(s: &Server, k: &keel_lab::Kubectl, name: &str) -> String {
    let out = k.run(&["get", "node", name, "--no-headers"]).expect("kubectl");
    let _ = s;
    out.stdout.trim().to_string()
}

fn wait_status(s: &Server, k: &keel_lab::Kubectl, vm: &Vm, name: &str, status: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let line = node_line(s, k, name);
        if line.split_whitespace().nth(1) == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {name} not {status} after {timeout:?}: {line:?}\n{}\n--- console ---\n{}",
            s.log_tail(),
            vm.console_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn wrong_token_and_wrong_ca_pin_are_refused_without_a_node() {
    let s = Server::start_with(&["--san", "10.0.2.100"]);
    let k = s.kubectl();
    let (token, pin) = join_args(&s);
    let wrong_token = format!("{}.0000000000000000", &token[..6]);
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let base = "keel.server=https://10.0.2.100:9443";
    let bad_token = boot_kernel(
        s.dir.path(),
        "bad-token",
        s.node_port,
        &format!("{base} keel.token={wrong_token} keel.ca-hash={pin} keel.name=bad-token"),
    );
    let bad_pin = boot_kernel(
        s.dir.path(),
        "bad-pin",
        s.node_port,
        &format!("{base} keel.token={token} keel.ca-hash={wrong_pin} keel.name=bad-pin"),
    );
    bad_token.wait_console(
        "keel: the control plane refused to join this node",
        Duration::from_secs(90),
    );
    bad_pin.wait_console(
        "the cluster CA does not match keel.ca-hash=",
        Duration::from_secs(90),
    );
    let nodes = k.run(&["get", "nodes", "-o", "name"]).expect("kubectl");
    assert_eq!(nodes.stdout.trim(), "", "no Node object may exist: {nodes:?}");
}

#[test]
fn node_reconnects_after_a_control_plane_restart_and_goes_not_ready_when_killed() {
    let mut s = Server::start_with(&["--san", "10.0.2.100", "--node-grace-period", "8s"]);
    let k = s.kubectl();
    let (token, pin) = join_args(&s);
    let mut vm = boot_kernel(
        s.dir.path(),
        "n1",
        s.node_port,
        &format!("keel.server=https://10.0.2.100:9443 keel.token={token} keel.ca-hash={pin} keel.name=n1"),
    );
    wait_status(&s, &k, &vm, "n1", "Ready", Duration::from_secs(90));

    // The control plane goes away (kill -9) and comes back: the node reconnects by itself.
    let connects = vm.console_text().matches("keel: connected to").count();
    s.crash_and_restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.console_text().matches("keel: connected to").count() <= connects {
        assert!(Instant::now() < deadline, "no reconnect:\n{}", vm.console_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_status(&s, &k, &vm, "n1", "Ready", Duration::from_secs(30));

    // The VM dies: NotReady after the grace period, with the unreachable taints.
    vm.kill();
    wait_status(&s, &k, &vm, "n1", "NotReady", Duration::from_secs(60));
    let taints = s.ok(&k, &["get", "node", "n1", "-o", "jsonpath={.spec.taints[*].key}"]);
    assert!(taints.contains("node.kubernetes.io/unreachable"), "{taints}");
}

#[test]
fn pid_1_restarts_a_killed_agent_and_the_node_stays_ready() {
    let s = Server::start_with(&["--san", "10.0.2.100", "--node-grace-period", "20s"]);
    let k = s.kubectl();
    let (token, pin) = join_args(&s);
    let vm = boot_kernel(
        s.dir.path(),
        "n2",
        s.node_port,
        &format!(
            "keel.server=https://10.0.2.100:9443 keel.token={token} keel.ca-hash={pin} keel.name=n2 keel.selftest=kill-agent"
        ),
    );
    vm.wait_console("selftest: killing the agent", Duration::from_secs(90));
    vm.wait_console("agent exited (signal 9)", Duration::from_secs(30));
    // PID 1 starts it again; the new agent reuses the stored identity and reconnects.
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.console_text().matches("keel: connected to").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the agent did not come back:\n{}",
            vm.console_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !vm.console_text()[vm.console_text().find("selftest: killing").unwrap_or(0)..]
            .contains("keel: joined as"),
        "a restarted agent reuses its certificate instead of joining again"
    );
    wait_status(&s, &k, &vm, "n2", "Ready", Duration::from_secs(30));
}
