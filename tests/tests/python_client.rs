//! The Kubernetes API as a Python program sees it: the official `kubernetes` client from PyPI
//! (tests/python/test_api.py, run with pytest) against a real `keel-server`.
//!
//! `scripts/ensure-deps.sh` (run by `make test`) installs the client and pytest when missing.

mod common;

use std::process::Command;

use common::{workspace_root, Server};

#[test]
fn official_python_client_passes_its_suite() {
    let s = Server::start();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let root = workspace_root();
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/python"])
        .current_dir(&root)
        .env("KUBECONFIG", s.kubeconfig())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {python} -m pytest: {e} (make deps installs it)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pytest tests/python failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        s.log_tail()
    );
    // The suite must actually have run (pytest exits 5 when it collects nothing, but be explicit).
    assert!(stdout.contains(" passed"), "no tests ran:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("skipped"), "skipped tests:\n{stdout}");
    // pytest's closing line (e.g. "7 passed in 3.21s"), for the test log.
    eprintln!("pytest: {}", stdout.lines().last().unwrap_or_default());
}
