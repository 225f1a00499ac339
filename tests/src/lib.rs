//! Helpers shared by the end-to-end tests: the lab library (re-exported from `keel-lab`) plus
//! the few steps every test repeats, each one line, so a test reads like the user's day:
//!
//! ```no_run
//! use keel_e2e::*;
//! let lab = lab_with_ready_nodes(3);                 // three QEMU nodes, all Ready
//! let out = lab.kubectl(&["get", "nodes"]).unwrap(); // the real kubectl, isolated HOME
//! apply(&lab, "apiVersion: v1\nkind: Pod\n...");
//! let page = http_get(lab.nodeport("keel-1", 30000).unwrap(), "/").unwrap();
//! ```
//!
//! Every [`Lab`] has its own directory, ports and kubectl HOME; dropping it stops everything,
//! and a failing test prints every log of its lab (server, registry, switch, consoles). Labs
//! with QEMU nodes take a machine-wide lock and run one at a time.
//!
//! Binaries: `KEEL_SERVER_BIN` / `KEEL_LAB_BIN`, else the newest of
//! `target/{debug,release}/`; the node image: `KEEL_OUT` (default `out/`) `vmlinux` and
//! `initramfs`. `make test` builds all of them first.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub use keel_lab;
pub use keel_lab::lab::{Binaries, Lab, LabError, LabOptions, LabState};
pub use keel_lab::switch::control::{Command as SwitchCommand, Target};
pub use keel_lab::{wait_for, Kubectl, KubectlOutput, Poll, WaitError};

/// How long a node may take from QEMU start to Ready under TCG with other VMs booting.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(240);

/// How long a pod may take to be Ready (image pull from the lab registry included).
pub const POD_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A lab of `nodes` QEMU nodes, all Ready, or a panic that says what went wrong.
pub fn lab_with_ready_nodes(nodes: u8) -> Lab {
    lab_with(LabOptions::with_nodes(nodes))
}

/// A lab from `options`, with every node Ready.
pub fn lab_with(options: LabOptions) -> Lab {
    let lab = match Lab::start(options) {
        Ok(lab) => lab,
        Err(e) => panic!("the lab did not start: {e}"),
    };
    if let Err(e) = lab.wait_nodes_ready(NODE_READY_TIMEOUT) {
        panic!("nodes not Ready: {e}");
    }
    lab
}

/// A lab with only the control plane (API tests).
pub fn control_plane() -> Lab {
    match Lab::control_plane_only() {
        Ok(lab) => lab,
        Err(e) => panic!("the control plane did not start: {e}"),
    }
}

/// `kubectl apply -f -` with `manifest`; panics with kubectl's stderr when it fails.
pub fn apply(lab: &Lab, manifest: &str) -> String {
    let out = lab
        .kubectl_stdin(&["apply", "-f", "-"], manifest)
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
    assert!(out.success(), "kubectl apply failed: {}\n{manifest}", out.stderr);
    out.stdout
}

/// `kubectl <args>` that must succeed; returns stdout.
pub fn kubectl_ok(lab: &Lab, args: &[&str]) -> String {
    let out = lab
        .kubectl(args)
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")));
    assert!(out.success(), "kubectl {} failed: {}", args.join(" "), out.stderr);
    out.stdout
}

/// Waits until `kubectl wait --for=condition=Ready pod/<name>` succeeds.
pub fn wait_pod_ready(lab: &Lab, namespace: &str, name: &str) {
    let timeout = format!("--timeout={}s", POD_READY_TIMEOUT.as_secs());
    let target = format!("pod/{name}");
    let out = lab
        .kubectl(&[
            "-n",
            namespace,
            "wait",
            "--for=condition=Ready",
            &target,
            &timeout,
        ])
        .unwrap_or_else(|e| panic!("kubectl wait: {e}"));
    if !out.success() {
        let describe = lab
            .kubectl(&["-n", namespace, "describe", &target])
            .map(|o| o.stdout + &o.stderr)
            .unwrap_or_default();
        panic!("{target} not Ready: {}\n{describe}", out.stderr);
    }
}

/// One plain HTTP/1.0 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `addr` with HTTP/1.0 (the server closes the connection after answering);
/// for NodePorts and port-forwards. Times out after 10 s.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let timeout = Duration::from_secs(10);
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    // One write: `write!` on an unbuffered stream sends each formatted piece separately.
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not HTTP: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok(HttpResponse {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn http_get_reads_status_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "connection closed mid-request");
                request.extend_from_slice(&buf[..n]);
            }
            assert!(String::from_utf8_lossy(&request).starts_with("GET /x HTTP/1.0\r\n"));
            c.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope\n")
                .unwrap();
        });
        let r = http_get(addr, "/x").unwrap();
        assert_eq!(
            r,
            HttpResponse {
                status: 404,
                body: "nope\n".into()
            }
        );
    }
}
