//! `kubectl logs / exec / attach / port-forward / cp` reaching containers through the control
//! plane, as a user sees it:
//! one QEMU node, the lab's registry, the real kubectl. The node dials out; every stream here is
//! a `StreamRequest` down its session answered by a `Stream` it opens (see `proto/node.proto`).
//!
//! * logs: plain, `-c`, `--tail`, `--timestamps`, `--limit-bytes`, `--since`/`--since-time`,
//!   `--previous` after a restart, `-f` that picks up new lines and ends with the container,
//!   `--all-containers --prefix`, and upstream's errors (unknown container, container waiting
//!   to start, no previous run);
//! * exec: output, stderr apart, exit codes (`sh -c 'exit 3'` → kubectl exits 3), stdin (`-i`),
//!   8 MB of output intact; exec and logs Forbidden to a user who may only read pods;
//! * exec `-it` under a real terminal (`script`): `tty` names a `/dev/pts` terminal and the
//!   size kubectl sends is what `stty size` reads inside;
//! * cp both ways (tar over exec);
//! * port-forward (SPDY/3.1 inside a WebSocket) fetching HTTP from the `keel/echo` image, two
//!   connections over one tunnel, then a 3 MB response;
//! * attach: the output of a running container as it comes;
//! * the official Python client: exec (output, exit code, stdin; v5 and v4.channel.k8s.io) and
//!   port-forward in the plain channel WebSocket form (`ports=`).
//!
//! Figures (`figure:` lines with `--nocapture`): an exec round trip, exec and port-forward
//! throughput.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_e2e::*;

const NODE: &str = "keel-1";

fn pod(name: &str, restart: &str, containers: &[(&str, &str, &str)]) -> String {
    let mut m = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {NODE}\n  \
         restartPolicy: {restart}\n  terminationGracePeriodSeconds: 1\n  containers:\n"
    );
    for (c, image, script) in containers {
        let script = script.replace('\\', "\\\\").replace('"', "\\\"");
        m.push_str(&format!(
            "  - name: {c}\n    image: {image}\n    command: [\"sh\", \"-c\", \"{script}\"]\n"
        ));
    }
    m
}

/// kubectl as the lab runs it (its kubeconfig and HOME), for runs the helpers do not cover.
fn kubectl_command(lab: &Lab) -> Command {
    let mut cmd = Command::new(Binaries::discover().kubectl);
    cmd.arg("--kubeconfig")
        .arg(lab.kubeconfig())
        .env("HOME", lab.kubectl_client().home());
    cmd
}

fn kubectl(lab: &Lab, args: &[&str]) -> KubectlOutput {
    lab.kubectl(args)
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
}

fn jsonpath(lab: &Lab, pod: &str, path: &str) -> String {
    kubectl_ok(lab, &["get", "pod", pod, "-o", &format!("jsonpath={path}")])
        .trim()
        .to_string()
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<(), String>) {
    if let Err(e) = wait_for(what, timeout, || match check() {
        Ok(()) => Poll::Ready(()),
        Err(seen) => Poll::Pending(seen),
    }) {
        panic!("{e}");
    }
}

/// Runs `cmd` with `input` on stdin, then closes it (or, with `keep_open`, only once the command
/// exited); (status, stdout, stderr).
fn run_with_input(
    mut cmd: Command,
    input: &[u8],
    keep_open: bool,
    timeout: Duration,
) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    let stdin = keep_open.then_some(stdin);
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
            panic!("{cmd:?} did not end within {timeout:?}; output so far: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let out = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    (status.code(), out, err)
}

#[test]
fn logs_exec_and_cp_through_the_control_plane() {
    let lab = lab_with_ready_nodes(1);
    apply(
        &lab,
        &pod(
            "talker",
            "Always",
            &[
                (
                    "main",
                    "busybox:1.35",
                    "for i in 0 1 2; do echo line-$i; done; echo oops >&2; exec sleep 3600",
                ),
                ("side", "busybox:1.35", "echo side-says-hi; exec sleep 3600"),
            ],
        ),
    );
    apply(
        &lab,
        &pod(
            "restarter",
            "Always",
            &[("main", "busybox:1.35", "echo run-$(date +%s%N); sleep 1; exit 1")],
        ),
    );
    apply(
        &lab,
        &pod("stuck", "Always", &[("main", "keel/missing:1", "true")]),
    );
    apply(
        &lab,
        &pod(
            "web",
            "Always",
            &[("echo", "keel/echo:latest", "exec /echo/serve")],
        ),
    );
    apply(
        &lab,
        &pod(
            "chatter",
            "Always",
            &[(
                "main",
                "busybox:1.35",
                "i=0; while true; do echo chat-$i; i=$((i+1)); sleep 1; done",
            )],
        ),
    );
    wait_pod_ready(&lab, "default", "talker");

    logs(&lab);
    follow(&lab);
    exec(&lab);
    exec_tty(&lab);
    cp(&lab);
    previous(&lab);
    wait_pod_ready(&lab, "default", "web");
    port_forward(&lab);
    attach(&lab);
    python(&lab);
}

fn logs(lab: &Lab) {
    // Running containers may not have written their first lines yet: wait for them.
    for (container, want) in [
        ("main", "line-0\nline-1\nline-2\noops\n"),
        ("side", "side-says-hi\n"),
    ] {
        wait_until(
            &format!("talker's {container} log"),
            Duration::from_secs(30),
            || {
                let out = kubectl(lab, &["logs", "talker", "-c", container]);
                (out.stdout == want).then_some(()).ok_or(format!("{out:?}"))
            },
        );
    }
    assert_eq!(
        kubectl_ok(lab, &["logs", "talker", "-c", "main", "--tail=2"]),
        "line-2\noops\n"
    );
    assert_eq!(
        kubectl_ok(lab, &["logs", "talker", "-c", "main", "--limit-bytes=8"]),
        "line-0\nl"
    );
    assert_eq!(
        kubectl_ok(lab, &["logs", "talker", "-c", "main", "--since=1h"]),
        "line-0\nline-1\nline-2\noops\n"
    );
    assert_eq!(
        kubectl_ok(
            lab,
            &[
                "logs",
                "talker",
                "-c",
                "main",
                "--since-time=2099-01-01T00:00:00Z"
            ]
        ),
        ""
    );
    let stamped = kubectl_ok(lab, &["logs", "talker", "-c", "main", "--timestamps"]);
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 4, "{stamped}");
    for (line, text) in lines.iter().zip(["line-0", "line-1", "line-2", "oops"]) {
        let (ts, rest) = line.split_once(' ').unwrap_or_default();
        assert_eq!(rest, text, "{stamped}");
        assert!(
            ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "not an RFC 3339 nanosecond timestamp: {ts:?}"
        );
    }
    let all = kubectl_ok(lab, &["logs", "talker", "--all-containers", "--prefix"]);
    assert!(
        all.contains("[pod/talker/main] line-2\n") && all.contains("[pod/talker/side] side-says-hi\n"),
        "{all}"
    );
    let bad = kubectl(lab, &["logs", "talker", "-c", "nope"]);
    assert!(!bad.success());
    assert!(
        bad.stderr.contains("container nope is not valid for pod talker"),
        "{}",
        bad.stderr
    );
    let waiting = kubectl(lab, &["logs", "stuck"]);
    assert!(!waiting.success());
    assert!(
        waiting.stderr.contains(
            "Error from server (BadRequest): container \"main\" in pod \"stuck\" is waiting to start"
        ),
        "{}",
        waiting.stderr
    );
}

fn follow(lab: &Lab) {
    apply(
        lab,
        &pod(
            "ticker",
            "Never",
            &[(
                "main",
                "busybox:1.35",
                "sleep 2; for i in 1 2 3 4 5 6; do echo tick-$i; sleep 1; done",
            )],
        ),
    );
    wait_until("ticker running", Duration::from_secs(120), || {
        let s = jsonpath(
            lab,
            "ticker",
            "{.status.containerStatuses[0].state.running.startedAt}",
        );
        (!s.is_empty()).then_some(()).ok_or(s)
    });
    let started = Instant::now();
    let mut cmd = kubectl_command(lab);
    cmd.args(["logs", "-f", "ticker"]);
    let (code, out, err) = run_with_input(cmd, b"", false, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    let want: String = (1..=6).map(|i| format!("tick-{i}\n")).collect();
    assert_eq!(out, want, "{err}");
    // It followed: the command ended only once the container had written its last line.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "kubectl logs -f returned after {:?}",
        started.elapsed()
    );
}

fn exec(lab: &Lab) {
    assert_eq!(
        kubectl_ok(lab, &["exec", "talker", "-c", "main", "--", "echo", "hi"]),
        "hi\n"
    );
    let both = kubectl(
        lab,
        &[
            "exec",
            "talker",
            "-c",
            "side",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ],
    );
    assert!(both.success(), "{both:?}");
    assert_eq!(both.stdout, "out\n");
    assert_eq!(both.stderr, "err\n");
    let three = kubectl(lab, &["exec", "talker", "-c", "main", "--", "sh", "-c", "exit 3"]);
    assert_eq!(three.status.code(), Some(3), "{three:?}");
    assert!(
        three.stderr.contains("command terminated with exit code 3"),
        "{three:?}"
    );
    // Round trips and a bulk transfer through the whole path (kubectl, API server, node gate,
    // node, container), for the figures.
    let mut took: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            kubectl_ok(lab, &["exec", "talker", "-c", "main", "--", "true"]);
            t.elapsed()
        })
        .collect();
    took.sort();
    eprintln!("figure: kubectl exec -- true, median of 5: {:?}", took[2]);
    let t = Instant::now();
    let bulk = kubectl_ok(
        lab,
        &[
            "exec",
            "talker",
            "-c",
            "main",
            "--",
            "head",
            "-c",
            "8000000",
            "/dev/zero",
        ],
    );
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(bulk.len(), 8_000_000);
    eprintln!(
        "figure: 8 MB of exec stdout in {secs:.2} s ({:.1} MB/s)",
        8.0 / secs
    );
    // Authorized as upstream: exec is `create pods/exec`, logs `get pods/log`; a user who may
    // read pods may do neither.
    apply(
        lab,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pod-reader}\n\
         rules:\n- apiGroups: [\"\"]\n  resources: [pods]\n  verbs: [get, list]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: pod-reader}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}\n\
         subjects:\n- {kind: ServiceAccount, name: default, namespace: default}\n",
    );
    let sa = "--as=system:serviceaccount:default:default";
    let denied = kubectl(lab, &[sa, "exec", "talker", "-c", "main", "--", "true"]);
    assert!(
        !denied.success()
            && denied
                .stderr
                .contains("cannot create resource \"pods/exec\" in API group \"\""),
        "{denied:?}"
    );
    let denied = kubectl(lab, &[sa, "logs", "talker", "-c", "main"]);
    assert!(
        !denied.success()
            && denied
                .stderr
                .contains("cannot get resource \"pods/log\" in API group \"\""),
        "{denied:?}"
    );
    let missing = kubectl(lab, &["exec", "talker", "-c", "main", "--", "no-such-command"]);
    assert!(!missing.success(), "{missing:?}");
    let mut cmd = kubectl_command(lab);
    cmd.args([
        "exec",
        "-i",
        "talker",
        "-c",
        "main",
        "--",
        "sh",
        "-c",
        "cat; echo done",
    ]);
    // kubectl forwards stdin's end (v5 close of channel 0): cat ends.
    let (code, out, err) = run_with_input(cmd, b"abc\n", false, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "abc\ndone\n", "{err}");
}

/// `kubectl exec -it` inside `script`'s terminal, sized 100×30 before kubectl starts.
fn exec_tty(lab: &Lab) {
    let kubectl = Binaries::discover().kubectl;
    let inner = format!(
        "stty cols 100 rows 30; {} --kubeconfig {} exec -it talker -c main -- sh",
        kubectl.display(),
        lab.kubeconfig().display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &inner, "/dev/null"])
        .env("HOME", lab.kubectl_client().home());
    let (code, out, err) = run_with_input(
        cmd,
        b"tty; sleep 1; stty size; echo marker-$((6*7)); exit 5\n",
        true,
        Duration::from_secs(60),
    );
    assert!(out.contains("marker-42"), "the shell did not run: {out:?} {err}");
    let tty_line = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("/dev/pts/"))
        .unwrap_or_else(|| panic!("`tty` printed no /dev/pts terminal: {out:?}"));
    assert!(
        tty_line["/dev/pts/".len()..].parse::<u32>().is_ok(),
        "{tty_line:?}"
    );
    assert!(
        out.lines().any(|l| l.trim() == "30 100"),
        "stty size inside did not see 30 rows × 100 columns: {out:?}"
    );
    assert_eq!(code, Some(5), "{out:?} {err}");
}

fn cp(lab: &Lab) {
    let dir = tempfile::tempdir().expect("tempdir");
    let local: PathBuf = dir.path().join("up.txt");
    let content: String = (0..2000).map(|i| format!("line {i} of the file\n")).collect();
    std::fs::write(&local, &content).expect("write");
    kubectl_ok(lab, &["cp", path(&local), "talker:/tmp/up.txt", "-c", "main"]);
    assert_eq!(
        kubectl_ok(
            lab,
            &["exec", "talker", "-c", "main", "--", "wc", "-c", "/tmp/up.txt"]
        )
        .split_whitespace()
        .next(),
        Some(content.len().to_string().as_str())
    );
    let back = dir.path().join("down.txt");
    kubectl_ok(lab, &["cp", "talker:/tmp/up.txt", path(&back), "-c", "main"]);
    assert_eq!(std::fs::read_to_string(&back).expect("read"), content);
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn previous(lab: &Lab) {
    wait_until("restarter restarted", Duration::from_secs(120), || {
        let n = jsonpath(lab, "restarter", "{.status.containerStatuses[0].restartCount}");
        (n.parse::<u32>().unwrap_or(0) >= 1).then_some(()).ok_or(n)
    });
    let prev = kubectl_ok(lab, &["logs", "restarter", "--previous"]);
    assert!(prev.starts_with("run-") && prev.lines().count() == 1, "{prev:?}");
    let none = kubectl(lab, &["logs", "talker", "-c", "main", "--previous"]);
    assert!(
        none.stderr
            .contains("previous terminated container \"main\" in pod \"talker\" not found"),
        "{none:?}"
    );
}

/// Reads `child`'s stdout lines into a shared buffer, in the background.
fn collect_lines(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("stdout");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
    lines
}

fn port_forward(lab: &Lab) {
    let mut child = kubectl_command(lab)
        .args(["port-forward", "pod/web", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let lines = collect_lines(&mut child);
    let port: u16 = match wait_for("kubectl port-forward to listen", Duration::from_secs(30), || {
        let seen = lines.lock().map(|l| l.clone()).unwrap_or_default();
        // "Forwarding from 127.0.0.1:41235 -> 8080"
        match seen.iter().find_map(|l| {
            l.strip_prefix("Forwarding from 127.0.0.1:")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse().ok())
        }) {
            Some(p) => Poll::Ready(p),
            None => Poll::Pending(format!("{seen:?}")),
        }
    }) {
        Ok(p) => p,
        Err(e) => {
            let _ = child.kill();
            panic!("{e}");
        }
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // Two connections over the one tunnel.
    for _ in 0..2 {
        match http_get(addr, "/") {
            Ok(r) if r.status == 200 && r.body.contains("pod=web") => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("GET / through port-forward: {other:?}\n{err}");
            }
        }
    }
    // A large response: many SPDY data frames (and window updates) on one stream.
    kubectl_ok(
        lab,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "head -c 3000000 /dev/zero | tr '\\0' x > /echo/www/big",
        ],
    );
    let t = Instant::now();
    let big = http_get(addr, "/big");
    let secs = t.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    let big = big.expect("GET /big through port-forward");
    assert_eq!((big.status, big.body.len()), (200, 3_000_000));
    assert!(big.body.bytes().all(|b| b == b'x'));
    eprintln!(
        "figure: 3 MB through kubectl port-forward in {secs:.2} s ({:.1} MB/s)",
        3.0 / secs
    );
}

fn attach(lab: &Lab) {
    let mut child = kubectl_command(lab)
        .args(["attach", "chatter"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl attach");
    let lines = collect_lines(&mut child);
    let seen = wait_for(
        "two lines through kubectl attach",
        Duration::from_secs(60),
        || {
            let seen = lines.lock().map(|l| l.clone()).unwrap_or_default();
            let chats: Vec<String> = seen.iter().filter(|l| l.starts_with("chat-")).cloned().collect();
            if chats.len() >= 2 {
                Poll::Ready(chats)
            } else {
                Poll::Pending(format!("{seen:?}"))
            }
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    let chats = seen.unwrap_or_else(|e| panic!("{e}"));
    // Consecutive lines of the running container, as it writes them.
    let n: Vec<u64> = chats
        .iter()
        .filter_map(|l| l["chat-".len()..].parse().ok())
        .collect();
    assert!(n.len() >= 2 && n[1] == n[0] + 1, "{chats:?}");
}

fn python(lab: &Lab) {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = keel_lab::lab::workspace_dir().join("tests/python/lab_streams.py");
    let mut cmd = Command::new(&python);
    cmd.arg("-u")
        .arg(&script)
        .args(["talker", "main", "web", "8080"])
        .env("KUBECONFIG", lab.kubeconfig())
        .env("HOME", lab.kubectl_client().home())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (code, stdout, stderr) = run_with_input(cmd, b"", false, Duration::from_secs(120));
    assert_eq!(code, Some(0), "python client:\n{stdout}\n{stderr}");
    for step in [
        "exec output ok",
        "exec exit code ok",
        "exec v4 ok",
        "exec stdin ok",
        "port-forward ok",
    ] {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }
}
