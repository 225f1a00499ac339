//! Runtime processes (container helpers, pod sandboxes) that outlive the agent.
//!
//! The agent starts them as its children; when it dies they are reparented to PID 1 (which
//! reaps them) and keep running. The agent that starts next finds them again from what the pod
//! worker recorded: a pid and the process's start time (`/proc/PID/stat` field 22, clock ticks
//! since boot), which together name one process for the life of the boot — a recycled pid has
//! another start time. An adopted process is not the agent's child, so its end is watched
//! through a pidfd and its exit code read from the file the helper writes before exiting.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use super::sys;

/// One process of this boot: pid and start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    pub pid: i32,
    pub start: u64,
}

impl ProcRef {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: i32) -> Option<ProcRef> {
        let (start, _) = stat(pid)?;
        Some(ProcRef { pid, start })
    }

    /// Whether this very process still runs (exists, same start time, not a zombie).
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((start, state)) if start == self.start && state != 'Z' && state != 'X')
    }
}

/// `/proc/PID/stat`: (start time, state).
fn stat(pid: i32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Fields after the command (which may hold spaces and parentheses): state is the 3rd field of
/// the line, start time the 22nd.
fn parse_stat(text: &str) -> Option<(u64, char)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// This boot's id: records from another boot name processes that are gone.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A runtime process the agent waits for: its own child, or one adopted after a restart.
pub enum Proc {
    Child(tokio::process::Child),
    Adopted {
        pid: i32,
        /// `None` once it is known to have exited.
        fd: Option<AsyncFd<OwnedFd>>,
        /// Where the helper writes its exit code.
        exit_file: Option<PathBuf>,
    },
}

/// The code an adopted process whose exit code nobody recorded is reported with (SIGKILL's).
pub const UNKNOWN_EXIT: i32 = 137;

impl Proc {
    /// Adopts the process `r` if it is still the one recorded; else one that has exited.
    pub fn adopt(r: ProcRef, exit_file: Option<PathBuf>) -> Proc {
        let fd = sys::pidfd_async(r.pid)
            .ok()
            // Opened first, checked second: the pidfd then pins the process we checked.
            .filter(|_| r.alive());
        Proc::Adopted {
            pid: r.pid,
            fd,
            exit_file,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match self {
            Proc::Child(c) => c.id().map(|p| p as i32),
            Proc::Adopted { pid, fd, .. } => fd.as_ref().map(|_| *pid),
        }
    }

    /// Sends `sig` if the process still runs.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            let _ = sys::kill(pid, sig);
        }
    }

    /// Waits for the process to end; its exit code (or 128 + the signal).
    pub async fn wait(&mut self) -> i32 {
        match self {
            Proc::Child(c) => c.wait().await.map(exit_code).unwrap_or(255),
            Proc::Adopted { fd, exit_file, .. } => {
                if let Some(f) = fd.as_ref() {
                    // A pidfd polls readable once its process has exited.
                    let _ = f.readable().await;
                    *fd = None;
                }
                exit_file
                    .as_deref()
                    .and_then(read_exit_file)
                    .unwrap_or(UNKNOWN_EXIT)
            }
        }
    }
}

/// The exit code, or 128 + the signal that ended the process.
pub fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code()
        .or_else(|| s.signal().map(|sig| 128 + sig))
        .unwrap_or(255)
}

/// The exit code a helper recorded, if it did.
pub fn read_exit_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stat_lines_parse_past_odd_command_names() {
        let line = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200";
        assert_eq!(parse_stat(line), Some((98765, 'S')));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_process_is_named_by_pid_and_start_time() {
        let me = ProcRef::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let other = ProcRef {
            start: me.start + 1,
            ..me
        };
        assert!(!other.alive(), "same pid, another start time: another process");
    }

    #[tokio::test]
    async fn adopted_processes_are_waited_for_through_a_pidfd() {
        let dir = tempfile::tempdir().unwrap();
        let exit = dir.path().join("exit");
        let mut child = std::process::Command::new("sh")
            .args(["-c", &format!("sleep 0.3; echo 7 > {}", exit.display())])
            .spawn()
            .unwrap();
        let r = ProcRef::of(child.id() as i32).unwrap();
        let mut p = Proc::adopt(r, Some(exit.clone()));
        assert!(p.pid().is_some());
        // Another thread reaps it, as PID 1 would.
        let reaper = std::thread::spawn(move || child.wait());
        let code = tokio::time::timeout(Duration::from_secs(10), p.wait())
            .await
            .unwrap();
        assert_eq!(code, 7);
        reaper.join().unwrap().unwrap();
        // Gone: adopting it again gives an exited process at once.
        let mut gone = Proc::adopt(r, None);
        assert_eq!(gone.pid(), None);
        assert_eq!(gone.wait().await, UNKNOWN_EXIT);
    }
}
