//! Pods run on nodes, as a user sees it: a real `keel-server`, the lab's registry with
//! `busybox:1.35` (built from Debian's busybox-static) as the node's docker.io mirror, and one
//! QEMU node booted from `out/vmlinux` + `out/initramfs`. Pods are created with `spec.nodeName`
//! set (no scheduler involved), then:
//!
//! * `busybox sh -c 'echo hello; sleep 3600'` shows `Running`, `1/1`, with a pod IP;
//! * a `restartPolicy: Never` pod that exits 0 shows `Completed`;
//! * a pod whose image does not exist shows `ErrImagePull` / `ImagePullBackOff`;
//! * `kubectl delete pod` returns once the node has stopped the pod.
//!
//! The node's network is QEMU's restricted user network: its only openings are the node gate
//! (10.0.2.100:9443) and the registry (10.0.2.100:5000), each through the lab's relay.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{join_args, lab_binary, out_dir, Server};
use keel_lab::proc::{Lifetime, Supervised};

const NODE: &str = "pods-1";

struct Vm {
    child: Child,
    console: std::path::PathBuf,
}

impl Vm {
    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- console ---\n{}", self.console_text());
        }
    }
}

fn start_registry(dir: &Path) -> (Supervised, SocketAddr) {
    let port = keel_lab::ports::free_ports(1).expect("free port")[0];
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let dir = dir.join("registry");
    std::fs::create_dir_all(&dir).expect("registry dir");
    let log = dir.join("registry.log");
    let process = keel_lab::registry::spawn(
        Path::new("/usr/bin/docker-registry"),
        &dir,
        listen,
        &log,
        &dir.join("registry.pid"),
        Lifetime::Owner,
    )
    .expect("docker-registry (apt-get install docker-registry)");
    keel_lab::registry::wait_up(&process, listen, &log).expect("registry up");
    let images = keel_lab::image::lab_images(Path::new(keel_lab::image::DEFAULT_BUSYBOX))
        .expect("lab images (apt-get install busybox-static)");
    keel_lab::registry::push_blocking(&listen.to_string(), &images).expect("push the lab images");
    (process, listen)
}

fn boot(dir: &Path, node_port: u16, registry_port: u16, args: &str) -> Vm {
    let out = out_dir();
    let (kernel, initrd) = (out.join("vmlinux"), out.join("initramfs"));
    assert!(
        kernel.exists() && initrd.exists(),
        "{} is missing the node image: run `make image`",
        out.display()
    );
    let relay = |port: u16| format!("cmd:{} relay 127.0.0.1 {port}", lab_binary().display());
    let netdev = format!(
        "user,id=u0,restrict=on,guestfwd=tcp:10.0.2.100:9443-{},guestfwd=tcp:10.0.2.100:5000-{}",
        relay(node_port),
        relay(registry_port)
    );
    let console = dir.join(format!("console-{NODE}.log"));
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,tb-size=64", "-m", "512", "-smp", "1"])
        .args(["-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-device", "virtio-rng-pci", "-netdev", &netdev])
        .args(["-device", "virtio-net-pci,netdev=u0"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 {args}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    Vm { child, console }
}

/// The `kubectl get pod NAME -o wide` row, split into columns.
fn pod_row(k: &keel_lab::Kubectl, name: &str) -> Vec<String> {
    let out = k
        .run(&["get", "pod", name, "-o", "wide", "--no-headers"])
        .expect("kubectl");
    out.stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Waits until `pred` accepts the pod's row (NAME READY STATUS RESTARTS AGE IP NODE …).
fn wait_pod(
    s: &Server,
    k: &keel_lab::Kubectl,
    vm: &Vm,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let row = pod_row(k, name);
        if pred(&row) {
            return row;
        }
        if Instant::now() >= deadline {
            let describe = k
                .run(&["describe", "pod", name])
                .map(|o| o.stdout)
                .unwrap_or_default();
            panic!(
                "pod {name} not {what} after {timeout:?}: {row:?}\n{describe}\n{}\n--- console ---\n{}",
                s.log_tail(),
                vm.console_text()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn pod_manifest(name: &str, image: &str, script: &str, restart: &str) -> String {
    let mut pod: serde_json::Value =
        serde_json::from_str(&pod_json(name, image, script, restart)).expect("pod JSON");
    let c = &mut pod["spec"]["containers"][0];
    if name == "hello" {
        // Ready only once an exec probe ran in the container (its env, its PATH).
        c["readinessProbe"] = serde_json::json!({"exec": {"command": ["sh", "-c", "test $GREETING = hello"]},
            "periodSeconds": 1});
    }
    if name == "web" {
        c["ports"] = serde_json::json!([{"name": "http", "containerPort": 8080}]);
        c["readinessProbe"] =
            serde_json::json!({"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1});
        c["livenessProbe"] = serde_json::json!({"tcpSocket": {"port": 8080}, "periodSeconds": 2});
    }
    if name == "unready" {
        c["readinessProbe"] = serde_json::json!({"tcpSocket": {"port": 9999}, "periodSeconds": 1});
        c["livenessProbe"] = serde_json::json!({"httpGet": {"port": 9999}, "periodSeconds": 1,
            "initialDelaySeconds": 2, "failureThreshold": 2});
    }
    if name == "once" {
        // Volumes and ConfigMap-sourced env for the in-container checks.
        pod["spec"]["volumes"] = serde_json::json!([
            {"name": "cfg", "configMap": {"name": "app-config"}},
            {"name": "scratch", "emptyDir": {}}
        ]);
        pod["spec"]["initContainers"] = serde_json::json!([{
            "name": "prepare", "image": "busybox:1.35",
            "command": ["sh", "-c", "echo from-init > /scratch/init"],
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]
        }]);
        let c = &mut pod["spec"]["containers"][0];
        c["volumeMounts"] = serde_json::json!([
            {"name": "cfg", "mountPath": "/etc/app"},
            {"name": "scratch", "mountPath": "/scratch"}
        ]);
        if let Some(env) = c["env"].as_array_mut() {
            env.push(serde_json::json!({"name": "CM_GREETING",
                "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "greeting"}}}));
        }
    }
    pod.to_string()
}

fn pod_json(name: &str, image: &str, script: &str, restart: &str) -> String {
    let script = serde_json::to_string(script).expect("JSON string");
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod",
            "metadata": {{"name": "{name}", "labels": {{"test": "pods-run"}}}},
            "spec": {{"nodeName": "{NODE}", "restartPolicy": "{restart}",
                      "terminationGracePeriodSeconds": 5,
                      "containers": [{{"name": "main", "image": "{image}",
                                       "command": ["sh", "-c", {script}],
                                       "env": [{{"name": "GREETING", "value": "hello"}},
                                               {{"name": "POD_IP", "valueFrom": {{"fieldRef": {{"fieldPath": "status.podIP"}}}}}}],
                                       "resources": {{"limits": {{"memory": "64Mi", "cpu": "500m"}}}}}}]}}}}"#
    )
}

/// A figure the agent printed on the console: the number after `prefix` up to `suffix`.
fn console_figure(console: &str, prefix: &str, suffix: &str) -> Option<u64> {
    console.lines().find_map(|l| {
        let rest = &l[l.find(prefix)? + prefix.len()..];
        rest[..rest.find(suffix)?].trim().parse().ok()
    })
}

#[test]
fn pods_bound_to_a_node_run_complete_fail_to_pull_and_delete() {
    let s = Server::start_with(&["--san", "10.0.2.100"]);
    let k = s.kubectl();
    let (_registry, registry_addr) = start_registry(s.dir.path());
    let (token, pin) = join_args(&s);
    let vm = boot(
        s.dir.path(),
        s.node_port,
        registry_addr.port(),
        &format!(
            "keel.server=https://10.0.2.100:9443 keel.token={token} keel.ca-hash={pin} keel.name={NODE} \
             keel.registry-mirror=docker.io=http://10.0.2.100:5000"
        ),
    );

    // The node joins and is Ready.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = k.run(&["get", "node", NODE, "--no-headers"]).expect("kubectl");
        if out.stdout.split_whitespace().nth(1) == Some("Ready") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node not Ready: {}\n{}\n--- console ---\n{}",
            out.stdout,
            s.log_tail(),
            vm.console_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // A long-running pod: pulled from the mirror, Running 1/1 (its exec readiness probe passed)
    // with an IP.
    let created = Instant::now();
    s.apply(
        &k,
        &pod_manifest("hello", "busybox:1.35", "echo $GREETING; sleep 3600", "Always"),
    );
    let row = wait_pod(
        &s,
        &k,
        &vm,
        "hello",
        "Running 1/1",
        Duration::from_secs(120),
        |r| r.get(1).map(String::as_str) == Some("1/1") && r.get(2).map(String::as_str) == Some("Running"),
    );
    let to_running = created.elapsed();
    let ip = row.get(5).cloned().unwrap_or_default();
    assert!(
        ip.starts_with("10.244.") && ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "pod IP from the node's pod CIDR in {row:?}"
    );
    assert_eq!(row.get(6).map(String::as_str), Some(NODE), "{row:?}");
    let status = s.ok(&k, &["get", "pod", "hello", "-o", "json"]);
    let pod: serde_json::Value = serde_json::from_str(&status).expect("pod JSON");
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], true, "{status}");
    assert_eq!(cs["restartCount"], 0, "{status}");
    assert_eq!(cs["image"], "docker.io/library/busybox:1.35", "{status}");
    assert!(
        cs["imageID"]
            .as_str()
            .unwrap_or("")
            .starts_with("docker.io/library/busybox@sha256:"),
        "{status}"
    );
    assert!(
        pod["status"]["hostIP"].is_string() && pod["status"]["startTime"].is_string(),
        "{status}"
    );
    let conditions = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for kind in ["Initialized", "Ready", "ContainersReady", "PodScheduled"] {
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == kind && c["status"] == "True"),
            "{kind} not True: {status}"
        );
    }

    // Run to completion with restartPolicy Never: Completed (the image is now on the node).
    // It exits 0 only if the container is what it should be: its env, the pod's hostname,
    // PID 1 of its own PID namespace (`$$$$` is `$$` once Kubernetes expanded it), the pod's
    // /etc/hosts, a /dev/null, / as working dir, its cgroup limits (memory.max, cpu.max), its
    // own eth0 on the pod network with the address the downward API gives it, a ConfigMap as
    // a read-only volume and as env, a writable emptyDir that its init container wrote to first.
    let checks = "test $GREETING = hello && test $(hostname) = once && test $$$$ = 1 && \
                  grep -q once /etc/hosts && echo ok > /dev/null && test $(pwd) = / && \
                  test $(cat /sys/fs/cgroup/memory.max) = 67108864 && \
                  ip -4 addr show eth0 | grep -q \"inet $POD_IP/24\" && \
                  test $(cat /etc/app/greeting) = hello-from-cm && test $CM_GREETING = hello-from-cm && \
                  touch /scratch/x && ! touch /etc/app/x 2>/dev/null && \
                  test $(cat /scratch/init) = from-init && \
                  test \"$(cat /sys/fs/cgroup/cpu.max)\" = \"50000 100000\" && echo done";
    s.ok(
        &k,
        &[
            "create",
            "configmap",
            "app-config",
            "--from-literal=greeting=hello-from-cm",
        ],
    );
    s.apply(&k, &pod_manifest("once", "busybox:1.35", checks, "Never"));
    wait_pod(&s, &k, &vm, "once", "Completed", Duration::from_secs(90), |r| {
        r.get(2).map(String::as_str) == Some("Completed") && r.get(1).map(String::as_str) == Some("0/1")
    });
    let once = s.ok(&k, &["get", "pod", "once", "-o", "json"]);
    let once: serde_json::Value = serde_json::from_str(&once).expect("pod JSON");
    assert_eq!(
        once["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed",
        "{once}"
    );
    assert_eq!(once["status"]["phase"], "Succeeded", "{once}");

    // A container that keeps failing is restarted with back-off: CrashLoopBackOff, restarts.
    s.apply(
        &k,
        &pod_manifest("crash", "busybox:1.35", "echo bye; exit 3", "Always"),
    );

    // Probes: an HTTP server becomes ready through its readiness probe; a container whose
    // probes can never pass stays unready and is restarted by its liveness probe.
    s.apply(
        &k,
        &pod_manifest(
            "web",
            "busybox:1.35",
            "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www",
            "Always",
        ),
    );
    s.apply(
        &k,
        &pod_manifest("unready", "busybox:1.35", "sleep 3600", "Always"),
    );

    // An image that does not exist.
    s.apply(
        &k,
        &pod_manifest("missing", "busybox:no-such-tag", "true", "Always"),
    );
    wait_pod(
        &s,
        &k,
        &vm,
        "missing",
        "ErrImagePull/ImagePullBackOff",
        Duration::from_secs(90),
        |r| {
            matches!(
                r.get(2).map(String::as_str),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        },
    );
    let events = s.ok(
        &k,
        &["get", "events", "--field-selector", "involvedObject.name=missing"],
    );
    assert!(events.contains("Failed"), "{events}");

    wait_pod(
        &s,
        &k,
        &vm,
        "web",
        "Running 1/1 (readiness probe)",
        Duration::from_secs(60),
        |r| r.get(1).map(String::as_str) == Some("1/1") && r.get(2).map(String::as_str) == Some("Running"),
    );
    // A new image for a running pod's container: the container is restarted with it.
    s.ok(&k, &["set", "image", "pod/web", "main=keel/echo:latest"]);
    wait_pod(
        &s,
        &k,
        &vm,
        "web",
        "restarted with the new image",
        Duration::from_secs(60),
        |r| r.get(1).map(String::as_str) == Some("1/1") && r.get(3).is_some_and(|n| n.starts_with('1')),
    );
    let web = s.ok(
        &k,
        &[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.status.containerStatuses[0].image}",
        ],
    );
    assert_eq!(web, "docker.io/keel/echo:latest");
    let row = wait_pod(
        &s,
        &k,
        &vm,
        "unready",
        "restarted by its liveness probe",
        Duration::from_secs(90),
        |r| r.get(3).is_some_and(|n| n != "0"),
    );
    assert_eq!(row.get(1).map(String::as_str), Some("0/1"), "{row:?}");
    let events = s.ok(
        &k,
        &["get", "events", "--field-selector", "involvedObject.name=unready"],
    );
    assert!(events.contains("Liveness probe failed"), "{events}");

    // The long-running pod is still up, never restarted.
    let row = pod_row(&k, "hello");
    assert_eq!(
        (
            row.get(1).map(String::as_str),
            row.get(2).map(String::as_str),
            row.get(3).map(String::as_str)
        ),
        (Some("1/1"), Some("Running"), Some("0")),
        "{row:?}\n--- console ---\n{}",
        vm.console_text()
    );

    let row = wait_pod(&s, &k, &vm, "crash", "restarted", Duration::from_secs(90), |r| {
        r.get(3).is_some_and(|n| n != "0") && r.get(2).map(String::as_str) != Some("Running")
    });
    assert!(
        matches!(row.get(2).map(String::as_str), Some("CrashLoopBackOff" | "Error")),
        "{row:?}"
    );
    let crash = s.ok(&k, &["get", "pod", "crash", "-o", "json"]);
    let crash: serde_json::Value = serde_json::from_str(&crash).expect("pod JSON");
    assert_eq!(
        crash["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 3,
        "{crash}"
    );

    // kubectl delete waits for the node to stop the pod; it must return.
    let started = Instant::now();
    for name in ["hello", "missing", "once", "crash", "web", "unready"] {
        let out = k
            .run(&["delete", "pod", name, "--timeout=90s"])
            .expect("kubectl delete");
        assert!(
            out.success(),
            "delete {name}: {}\n{}\n--- console ---\n{}",
            out.stderr,
            s.log_tail(),
            vm.console_text()
        );
    }
    let deleted_in = started.elapsed();
    let left = s.ok(&k, &["get", "pods", "-l", "test=pods-run", "--no-headers"]);
    assert!(left.trim().is_empty(), "pods left: {left}");

    let console = vm.console_text();
    for line in console
        .lines()
        .filter(|l| l.contains("pulled") || l.contains("desired pods v"))
    {
        eprintln!("{line}");
    }
    eprintln!(
        "figures: pod created → Running 1/1 in {} ms (first pull included); busybox pull {} ms; \
         six deletes in {} ms; agent RSS {} KiB",
        to_running.as_millis(),
        console_figure(&console, "from http://10.0.2.100:5000 in ", " ms")
            .map_or("?".to_string(), |v| v.to_string()),
        deleted_in.as_millis(),
        console_figure(&console, "agent RSS ", " KiB").map_or("?".to_string(), |v| v.to_string()),
    );
}
