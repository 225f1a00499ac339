//! Processes the lab starts, and how it finds and stops them again.
//!
//! Every lab process runs in a session (and process group) of its own, so a Ctrl-C in the
//! terminal does not reach it, it survives `keel-lab up` exiting, and one `kill(-pgid)` stops it
//! with anything it spawned in its group. Each writes a pid file `<pid> <start time>`: the start
//! time (field 22 of `/proc/<pid>/stat`) tells our process from an unrelated one that got the
//! same pid later, so `down` never signals a stranger.
//!
//! This is one of the two modules with `unsafe` (the other is the relay): `setsid` between fork
//! and exec, and `kill`.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Errors starting or stopping lab processes.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long a lab process may live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Until stopped, even after the starting process exits (`keel-lab up`).
    Detachable,
    /// Until the thread that started it ends, at the latest (tests).
    Owner,
}

/// A process the lab started. Dropping it stops its process group unless it was
/// [`detach`](Supervised::detach)ed.
pub struct Supervised {
    name: String,
    child: Option<Child>,
    pid: u32,
    pid_file: PathBuf,
}

impl Supervised {
    /// Starts `cmd` in a new session with stdout and stderr appended to `log`, and records its
    /// pid in `pid_file`. With [`Lifetime::Owner`] the kernel kills the process when the thread
    /// that started it ends (tests: nothing outlives a killed test binary).
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        pid_file: &Path,
        lifetime: Lifetime,
    ) -> Result<Supervised, ProcError> {
        let file_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ProcError::File { path, source }
        };
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(file_err(parent))?;
        }
        if let Some(parent) = pid_file.parent() {
            std::fs::create_dir_all(parent).map_err(file_err(parent))?;
        }
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(file_err(log))?;
        let err = out.try_clone().map_err(file_err(log))?;
        cmd.stdout(out).stderr(err);
        let tied = lifetime == Lifetime::Owner;
        // SAFETY: the closure runs between fork and exec and calls only setsid(2) and prctl(2),
        // which are async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if tied && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ProcError::Spawn {
            name: name.to_owned(),
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        let pid = child.id();
        let start = start_time(pid).unwrap_or(0);
        std::fs::write(pid_file, format!("{pid} {start}\n")).map_err(file_err(pid_file))?;
        tracing::debug!(name, pid, "started");
        Ok(Supervised {
            name: name.to_owned(),
            child: Some(child),
            pid,
            pid_file: pid_file.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the process has exited (a zombie counts as exited).
    pub fn has_exited(&self) -> bool {
        self.child.is_some() && !alive(self.pid)
    }

    /// Whether the process has exited, reaping it if so.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM to the group, then SIGKILL after `grace`; waits for the process and removes the
    /// pid file.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal_group(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    signal_group(self.pid, libc::SIGKILL);
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // Members of the group that outlived the leader.
        signal_group(self.pid, libc::SIGKILL);
        let _ = std::fs::remove_file(&self.pid_file);
        tracing::debug!(name = %self.name, pid = self.pid, "stopped");
    }

    /// SIGKILL to the group at once (a node losing power).
    pub fn kill(&mut self) {
        self.stop(Duration::ZERO);
    }

    /// Leaves the process running after this handle is gone (`keel-lab up`).
    pub fn detach(mut self) {
        self.child = None;
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn signal_group(pgid: u32, sig: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields(&stat).is_some_and(|f| f.first() != Some(&"Z")),
        Err(_) => false,
    }
}

/// Fields of `/proc/<pid>/stat` after the command name (which may contain spaces and parens),
/// so index 0 is the state (field 3).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

/// The process's start time in clock ticks since boot (field 22 of its stat).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.get(19)?.parse().ok()
}

/// Resident memory of a process in KiB (`VmRSS`), if it exists.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A pid recorded in a pid file, checked against its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub pid: u32,
    start: u64,
}

impl Recorded {
    pub fn read(pid_file: &Path) -> Option<Recorded> {
        let text = std::fs::read_to_string(pid_file).ok()?;
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        Some(Recorded { pid, start })
    }

    /// Whether the recorded process still runs (and is the same process).
    pub fn running(&self) -> bool {
        alive(self.pid) && start_time(self.pid) == Some(self.start)
    }

    /// Stops the recorded process group: SIGTERM, then SIGKILL after `grace`. Returns whether
    /// there was anything to stop.
    pub fn stop(&self, grace: Duration) -> bool {
        if !self.running() {
            return false;
        }
        signal_group(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.running() {
            signal_group(self.pid, libc::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        true
    }
}

/// Processes whose command line is `<anything ending in keel-lab> relay 127.0.0.1 <port>` for
/// one of `ports`: the guestfwd relays of a lab (libslirp starts them in sessions of their own).
pub fn find_relays(ports: &[u16]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if let [bin, b"relay", _host, port, ..] = args.as_slice() {
            let port = std::str::from_utf8(port).ok().and_then(|p| p.parse::<u16>().ok());
            if bin.ends_with(b"keel-lab") && port.is_some_and(|p| ports.contains(&p)) && alive(pid) {
                found.push(pid);
            }
        }
    }
    found
}

/// Sends SIGKILL to one process.
pub fn kill_pid(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 1 {
            // SAFETY: kill(2) on a single pid; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag that [`interrupted`] reads, so long waits can stop and
/// clean up instead of leaving half a lab behind.
pub fn catch_interrupts() {
    let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervised_process_is_recorded_and_its_group_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pids/sleeper.pid");
        let log = dir.path().join("logs/sleeper.log");
        let mut cmd = Command::new("/bin/sh");
        // A child of the child, in the same group: stopping the group must take it too.
        cmd.args(["-c", "echo started; sleep 300 & echo $! > \"$0\"; wait"])
            .arg(dir.path().join("grandchild"));
        let mut p = Supervised::spawn("sleeper", cmd, &log, &pid_file, Lifetime::Owner).unwrap();
        let recorded = Recorded::read(&pid_file).unwrap();
        assert_eq!(recorded.pid, p.pid());
        assert!(recorded.running());
        let grandchild =
            crate::wait::wait_for(
                "grandchild pid",
                Duration::from_secs(10),
                || match std::fs::read_to_string(dir.path().join("grandchild")) {
                    Ok(s) if s.ends_with('\n') => crate::wait::Poll::Ready(s.trim().parse::<u32>().unwrap()),
                    _ => crate::wait::Poll::Pending("not written yet".into()),
                },
            )
            .unwrap();
        assert!(alive(grandchild));
        p.stop(Duration::from_secs(5));
        assert!(!recorded.running());
        crate::wait::wait_for("grandchild to die", Duration::from_secs(5), || {
            if alive(grandchild) {
                crate::wait::Poll::Pending("alive".into())
            } else {
                crate::wait::Poll::Ready(())
            }
        })
        .unwrap();
        assert!(!pid_file.exists());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "started\n");
    }

    #[test]
    fn a_reused_pid_is_not_ours() {
        let me = std::process::id();
        let real = Recorded {
            pid: me,
            start: start_time(me).unwrap(),
        };
        assert!(real.running());
        let impostor = Recorded {
            pid: me,
            start: real.start + 1,
        };
        assert!(!impostor.running());
        assert!(
            !impostor.stop(Duration::ZERO),
            "must not signal a process it did not start"
        );
    }
}
