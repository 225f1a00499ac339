//! Running a command inside a running container (exec probes and `kubectl exec`).
//!
//! `keel-node exec [--tty] PID -- CMD ARGS…` joins the container whose PID 1 has host PID `PID`: its
//! cgroup, then its IPC, UTS, network, PID, cgroup and mount namespaces (the mount namespace
//! last: joining it moves the root into the container), forks so that the child is inside the
//! PID namespace, and execs the command there with the container's environment (read from
//! `/proc/PID/environ`). The helper exits with the command's status. The agent side,
//! [`run`], starts the helper with a deadline and collects its output; `kubectl exec` runs it
//! with the stream's pipes (`crate::streams::exec`). With `--tty` the command gets a terminal of
//! the container's own devpts as its controlling terminal, and the helper relays between it and
//! its stdin/stdout, reading input and resizes as frames ([`tty_input`], [`resize_message`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use super::container::resolve;
use super::sys;

/// `keel-node exec [--tty] PID -- CMD…`.
pub fn helper_main(args: &[String]) -> ExitCode {
    let (tty, args) = match args.split_first() {
        Some((flag, rest)) if flag == "--tty" => (true, rest),
        _ => (false, args),
    };
    let (Some(pid), Some(sep)) = (args.first().and_then(|p| p.parse::<i32>().ok()), args.get(1)) else {
        eprintln!("usage: keel-node exec PID -- CMD [ARGS…]");
        return ExitCode::from(2);
    };
    if sep != "--" || args.len() < 3 {
        eprintln!("usage: keel-node exec PID -- CMD [ARGS…]");
        return ExitCode::from(2);
    }
    match enter_and_run(pid, &args[2..], tty) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("keel: exec in the container: {e}");
            ExitCode::from(126)
        }
    }
}

fn enter_and_run(pid: i32, cmd: &[String], tty: bool) -> io::Result<i32> {
    sys::set_parent_death_signal(libc::SIGKILL)?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let env: Vec<String> = fs::read(proc_dir.join("environ"))?
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect();
    // Its cgroup (cgroup v2: one line `0::/path`), so limits and kills reach the command too.
    if let Some(path) = fs::read_to_string(proc_dir.join("cgroup"))?
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
    {
        let procs = Path::new(super::cgroup::CGROUP_ROOT)
            .join(path.trim_start_matches('/'))
            .join("cgroup.procs");
        let _ = fs::write(procs, std::process::id().to_string());
    }
    let ns = proc_dir.join("ns");
    for (name, flag) in [
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        sys::setns(&ns.join(name), flag)?;
    }
    // With --tty, a terminal of the container's own devpts (opened once inside its mounts).
    let terminal = if tty {
        Some(super::pty::open_master()?)
    } else {
        None
    };
    match sys::fork()? {
        sys::Fork::Child => {
            sys::reset_signals();
            if let Some((master, slave)) = terminal {
                drop(master);
                if let Err(e) = super::pty::become_terminal_session(&slave) {
                    eprintln!("keel: exec: {e}");
                    std::process::exit(126);
                }
            }
            let _ = std::env::set_current_dir("/");
            let path_var = env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .to_string();
            let e = match resolve(&cmd[0], &path_var) {
                Some(exe) => sys::execve(&exe, cmd, &env),
                None => io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{:?}: executable file not found in $PATH", cmd[0]),
                ),
            };
            eprintln!("keel: exec: {e}");
            std::process::exit(127);
        }
        sys::Fork::Parent(child) => {
            sys::forward_signals_to(child);
            if let Some((master, _)) = terminal {
                pump_terminal(master);
            }
            Ok(sys::exit_code(sys::wait_pid(child)?))
        }
    }
}

// ---- --tty: the helper's stdin carries frames, so that resizes travel with the input ---------
//
// `[0, len_hi, len_lo, bytes…]` is input for the terminal, `[1, 0, 4, w_hi, w_lo, h_hi, h_lo]`
// a new size; the helper copies the terminal's output to its stdout as it comes.

const TTY_INPUT: u8 = 0;
const TTY_RESIZE: u8 = 1;

/// Input for the terminal, framed for `keel-node exec --tty`.
pub fn tty_input(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 3 * (data.len() / 0xffff + 1));
    for chunk in data.chunks(0xffff) {
        out.push(TTY_INPUT);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A terminal size, framed for `keel-node exec --tty`.
pub fn resize_message(width: u32, height: u32) -> Vec<u8> {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX).to_be_bytes();
    let mut out = vec![TTY_RESIZE, 0, 4];
    out.extend_from_slice(&clamp(width));
    out.extend_from_slice(&clamp(height));
    out
}

/// Splits complete frames off the front of `buf`: (kind, payload).
fn take_frames(buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 3 {
        let len = usize::from(u16::from_be_bytes([buf[at + 1], buf[at + 2]]));
        if buf.len() - at - 3 < len {
            break;
        }
        frames.push((buf[at], buf[at + 3..at + 3 + len].to_vec()));
        at += 3 + len;
    }
    buf.drain(..at);
    frames
}

/// Copies framed stdin to the terminal and its output to stdout until the terminal closes
/// (every process holding it has exited).
fn pump_terminal(master: fs::File) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    let mut term = &master;
    let mut pending = Vec::new();
    let mut stdin_open = true;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let fds: &[i32] = if stdin_open {
            &[master.as_raw_fd(), 0]
        } else {
            &[master.as_raw_fd()]
        };
        let Ok(ready) = sys::poll_in(fds) else { return };
        if ready[0] {
            match term.read(&mut buf) {
                Ok(0) | Err(_) => return, // EIO: no process holds the terminal any more
                Ok(n) => {
                    if stdout.write_all(&buf[..n]).and_then(|_| stdout.flush()).is_err() {
                        return;
                    }
                }
            }
        }
        if stdin_open && ready.get(1).copied().unwrap_or(false) {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    for (kind, payload) in take_frames(&mut pending) {
                        match kind {
                            TTY_INPUT => {
                                let _ = term.write_all(&payload);
                            }
                            TTY_RESIZE if payload.len() == 4 => {
                                let w = u16::from_be_bytes([payload[0], payload[1]]);
                                let h = u16::from_be_bytes([payload[2], payload[3]]);
                                let _ = super::pty::set_size(master.as_raw_fd(), w, h);
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tty_tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_reads() {
        let mut wire = tty_input(b"ls\r");
        wire.extend(resize_message(80, 24));
        let mut pending = wire[..4].to_vec();
        assert!(take_frames(&mut pending).is_empty());
        pending.extend_from_slice(&wire[4..]);
        let frames = take_frames(&mut pending);
        assert_eq!(frames, vec![(0, b"ls\r".to_vec()), (1, vec![0, 80, 0, 24])]);
        assert!(pending.is_empty());
    }
}

/// What a command run in a container did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    /// stdout and stderr, stdout first.
    pub output: Vec<u8>,
}

/// Runs `cmd` in the container whose PID 1 is `pid`; killed after `timeout`.
pub async fn run(pid: i32, cmd: &[String], timeout: Duration) -> io::Result<Output> {
    let exe = std::env::current_exe()?;
    let child = tokio::process::Command::new(exe)
        .arg("exec")
        .arg(pid.to_string())
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .kill_on_drop(true)
        .spawn()?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(o)) => {
            use std::os::unix::process::ExitStatusExt;
            let code = o
                .status
                .code()
                .or_else(|| o.status.signal().map(|s| 128 + s))
                .unwrap_or(255);
            let mut output = o.stdout;
            output.extend_from_slice(&o.stderr);
            Ok(Output { code, output })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("command timed out after {timeout:?}"),
        )),
    }
}
