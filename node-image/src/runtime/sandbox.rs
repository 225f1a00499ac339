//! The pod sandbox: a tiny process that holds the pod's UTS and IPC namespaces (and, when the
//! pod has its own network, its network namespace with loopback up), like Kubernetes' pause
//! container. Containers join its namespaces through `/proc/<pid>/ns/*`.
//!
//! It is `keel-node sandbox HOSTNAME [--netns]`: unshares, sets the hostname (the pod's name),
//! prints `ready` on stdout so the agent knows the namespaces exist, then sleeps until a signal.
//! It outlives the agent, like the containers: the next agent adopts it by pid and start time
//! ([`super::process`]).

use std::io::{self, Write};
use std::process::{ExitCode, Stdio};

use tokio::io::AsyncBufReadExt;

use super::process::{Proc, ProcRef};
use super::sys;

/// `keel-node sandbox HOSTNAME [--netns]`.
pub fn helper_main(args: &[String]) -> ExitCode {
    let Some(hostname) = args.first() else {
        eprintln!("usage: keel-node sandbox HOSTNAME [--netns]");
        return ExitCode::from(2);
    };
    let netns = args.iter().any(|a| a == "--netns");
    match setup(hostname, netns) {
        Ok(()) => {
            let mut out = io::stdout();
            if writeln!(out, "ready").and_then(|_| out.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            loop {
                sys::pause();
            }
        }
        Err(e) => {
            eprintln!("keel: pod sandbox: {e}");
            ExitCode::FAILURE
        }
    }
}

fn setup(hostname: &str, netns: bool) -> io::Result<()> {
    let mut flags = libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if netns {
        flags |= libc::CLONE_NEWNET;
    }
    sys::unshare(flags)?;
    sys::sethostname(hostname)?;
    if netns {
        sys::loopback_up()?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("starting the pod sandbox: {0}")]
    Spawn(#[source] io::Error),
    #[error("the pod sandbox did not come up: {0}")]
    NotReady(String),
}

/// A running sandbox process.
pub struct Sandbox {
    pub proc: Proc,
    pub pid: i32,
    pub netns: bool,
}

impl Sandbox {
    /// Starts the sandbox and waits for its `ready`.
    pub async fn start(hostname: &str, netns: bool) -> Result<Sandbox, SandboxError> {
        let exe = std::env::current_exe().map_err(SandboxError::Spawn)?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("sandbox").arg(hostname);
        if netns {
            cmd.arg("--netns");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .spawn()
            .map_err(SandboxError::Spawn)?;
        let pid = child
            .id()
            .map(|p| p as i32)
            .ok_or_else(|| SandboxError::NotReady("exited at once".into()))?;
        let Some(stdout) = child.stdout.take() else {
            return Err(SandboxError::NotReady("no stdout".into()));
        };
        let mut line = String::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        if !matches!(read, Ok(Ok(_))) || line.trim() != "ready" {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), e.read_to_string(&mut err)).await;
            }
            let _ = child.start_kill();
            return Err(SandboxError::NotReady(err.trim().to_string()));
        }
        Ok(Sandbox {
            proc: Proc::Child(child),
            pid,
            netns,
        })
    }

    /// The sandbox an earlier agent started, if it still runs.
    pub fn adopt(r: ProcRef, netns: bool) -> Option<Sandbox> {
        let proc = Proc::adopt(r, None);
        proc.pid().map(|pid| Sandbox { proc, pid, netns })
    }

    /// Ends the sandbox.
    pub async fn stop(mut self) {
        self.proc.signal(libc::SIGKILL);
        let _ = self.proc.wait().await;
    }
}
