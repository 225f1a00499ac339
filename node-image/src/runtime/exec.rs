//! Running a command inside a running container (exec probes today, `kubectl exec` later).
//!
//! `keel-node exec PID -- CMD ARGS…` joins the container whose PID 1 has host PID `PID`: its
//! cgroup, then its IPC, UTS, network, PID, cgroup and mount namespaces (the mount namespace
//! last: joining it moves the root into the container), forks so that the child is inside the
//! PID namespace, and execs the command there with the container's environment (read from
//! `/proc/PID/environ`). The helper exits with the command's status. The agent side,
//! [`run`], starts the helper with a deadline and collects its output.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use super::container::resolve;
use super::sys;

/// `keel-node exec PID -- CMD…`.
pub fn helper_main(args: &[String]) -> ExitCode {
    let (Some(pid), Some(sep)) = (args.first().and_then(|p| p.parse::<i32>().ok()), args.get(1)) else {
        eprintln!("usage: keel-node exec PID -- CMD [ARGS…]");
        return ExitCode::from(2);
    };
    if sep != "--" || args.len() < 3 {
        eprintln!("usage: keel-node exec PID -- CMD [ARGS…]");
        return ExitCode::from(2);
    }
    match enter_and_run(pid, &args[2..]) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("keel: exec in the container: {e}");
            ExitCode::from(126)
        }
    }
}

fn enter_and_run(pid: i32, cmd: &[String]) -> io::Result<i32> {
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
    match sys::fork()? {
        sys::Fork::Child => {
            sys::reset_signals();
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
            Ok(sys::exit_code(sys::wait_pid(child)?))
        }
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
