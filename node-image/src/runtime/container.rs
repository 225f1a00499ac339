//! Starting a container: our own namespaces code (no runc, no libcontainer).
//!
//! The agent is a tokio process and must not fork-and-continue itself, so it starts each
//! container through a helper, `keel-node container <bundle>/config.json`, a fresh
//! single-threaded process (like `runc init`). The helper:
//!
//! 1. stays when the agent dies (it is reparented to PID 1; the next agent adopts it, see
//!    [`super::process`]);
//! 2. moves itself into the container's cgroup (so everything it forks is counted and limited);
//! 3. joins the pod sandbox's UTS and IPC namespaces (and network namespace if it has one);
//! 4. unshares a mount and a PID namespace, makes `/` private, mounts the overlayfs root
//!    (image layers read-only below, a per-container upper directory);
//! 5. forks: the child is PID 1 of the new PID namespace; it mounts `/proc`, a minimal `/dev`
//!    (null, zero, full, random, urandom, tty, pts, shm), `/sys` and its own cgroup (a cgroup
//!    namespace rooted at the container's cgroup) read-only, binds the pod's
//!    `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, pivot_roots into the overlay,
//!    changes to the working directory and execs the command with the environment;
//! 6. the helper stays as the container's parent: it forwards SIGTERM and friends to it and
//!    exits with its status (the exit code, or 128 + the signal), which the agent reads as the
//!    container's; it also writes that code into `<bundle>/exit` ([`EXIT_FILE`]) for an agent
//!    that adopted it and so cannot wait for it.
//!
//! The container's stdout and stderr are pipes the helper copies into the container's log file
//! (the helper's stdout, opened by the agent) in the CRI format `kubectl logs` reads
//! ([`super::logs`]). Killing for good is the cgroup's `cgroup.kill`.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::logs::{rfc3339_nanos, CriWriter, Stream};
use super::sys;

/// Everything the helper needs, written by the agent as `<bundle>/config.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerConfig {
    /// Image layers, bottom first.
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub rootfs: PathBuf,
    /// argv, `args[0]` resolved through `PATH` in the container if it has no `/`.
    pub args: Vec<String>,
    /// `NAME=value`.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub cgroup: Option<PathBuf>,
    /// The pod sandbox process whose namespaces the container joins.
    pub sandbox_pid: Option<i32>,
    pub join_net: bool,
    /// Files bind-mounted over `/etc/<name>` (hosts, hostname, resolv.conf).
    pub etc_files: Vec<(String, PathBuf)>,
    /// Volumes, bind-mounted in order.
    pub mounts: Vec<Mount>,
}

/// A bind mount of a host directory (or file) into the container.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("preparing {what}: {source}")]
    Prepare {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("starting the container helper: {0}")]
    Spawn(#[source] io::Error),
}

/// Writes the bundle and starts the helper with stdout and stderr appended to `log`.
pub fn spawn(
    cfg: &ContainerConfig,
    bundle: &Path,
    log: &Path,
) -> Result<tokio::process::Child, ContainerError> {
    let prep = |what: String| move |source| ContainerError::Prepare { what, source };
    for d in [bundle, &cfg.upper, &cfg.work, &cfg.rootfs] {
        fs::create_dir_all(d).map_err(prep(format!("{}", d.display())))?;
    }
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent).map_err(prep(format!("{}", parent.display())))?;
    }
    let json = serde_json::to_vec(cfg).map_err(|e| ContainerError::Prepare {
        what: "the container config".into(),
        source: io::Error::other(e),
    })?;
    let config_path = bundle.join("config.json");
    fs::write(&config_path, json).map_err(prep(format!("{}", config_path.display())))?;
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(prep(format!("log {}", log.display())))?;
    let err = out.try_clone().map_err(prep("log".into()))?;
    let exe = std::env::current_exe().map_err(ContainerError::Spawn)?;
    tokio::process::Command::new(exe)
        .arg("container")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env_clear()
        .spawn()
        .map_err(ContainerError::Spawn)
}

/// `keel-node container CONFIG`: the helper. Never returns while the container runs.
pub fn helper_main(args: &[String]) -> ExitCode {
    let Some(path) = args.first() else {
        eprintln!("usage: keel-node container CONFIG");
        return ExitCode::from(2);
    };
    let cfg: ContainerConfig = match fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel: container config {path}: {e}");
            return ExitCode::from(125);
        }
    };
    // Both files are opened here, in the node's root: once the container pivots into its root,
    // so does this helper (pivot_root moves every process of the mount namespace), and paths
    // of the node no longer resolve.
    let open = |name: &str| {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(Path::new(path).with_file_name(name))
    };
    let (pid_file, mut exit_file) = match (open(PID_FILE), open(EXIT_FILE)) {
        (Ok(p), Ok(e)) => (p, e),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("keel: container bundle {path}: {e}");
            return ExitCode::from(125);
        }
    };
    match run(&cfg, pid_file) {
        Ok(code) => {
            let _ = std::io::Write::write_all(&mut exit_file, code.to_string().as_bytes());
            ExitCode::from(u8::try_from(code).unwrap_or(255))
        }
        Err(e) => {
            // The log is in CRI format; so is this last word.
            println!(
                "{} stderr F keel: cannot start the container: {e}",
                rfc3339_nanos(SystemTime::now())
            );
            ExitCode::from(125)
        }
    }
}

/// In the bundle: the host PID of the container's PID 1 (for `keel-node exec`).
pub const PID_FILE: &str = "pid";
/// In the bundle: the container's exit code, written by the helper as it exits.
pub const EXIT_FILE: &str = "exit";

fn run(cfg: &ContainerConfig, mut pid_file: fs::File) -> io::Result<i32> {
    if let Some(cg) = &cfg.cgroup {
        fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("joining cgroup {}: {e}", cg.display())))?;
    }
    if let Some(pid) = cfg.sandbox_pid {
        let ns = PathBuf::from(format!("/proc/{pid}/ns"));
        sys::setns(&ns.join("uts"), libc::CLONE_NEWUTS)?;
        sys::setns(&ns.join("ipc"), libc::CLONE_NEWIPC)?;
        if cfg.join_net {
            sys::setns(&ns.join("net"), libc::CLONE_NEWNET)?;
        }
    }
    // The cgroup namespace is rooted at the container's cgroup (joined above), so the
    // container's /sys/fs/cgroup shows its own limits, as with runc.
    let cgroupns = if cfg.cgroup.is_some() {
        libc::CLONE_NEWCGROUP
    } else {
        0
    };
    sys::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID | cgroupns)?;
    sys::mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let lower = cfg
        .layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        cfg.upper.display(),
        cfg.work.display()
    );
    sys::mount(Some("overlay"), &cfg.rootfs, Some("overlay"), 0, Some(&opts))?;
    let (out_r, out_w) = sys::pipe()?;
    let (err_r, err_w) = sys::pipe()?;
    match sys::fork()? {
        sys::Fork::Child => {
            let redirected = sys::dup2(out_w.as_raw_fd(), 1).and_then(|_| sys::dup2(err_w.as_raw_fd(), 2));
            drop((out_r, out_w, err_r, err_w));
            let e = match redirected {
                Ok(()) => child(cfg),
                Err(e) => e,
            };
            eprintln!("keel: container setup: {e}");
            std::process::exit(127);
        }
        sys::Fork::Parent(pid) => {
            drop((out_w, err_w));
            sys::forward_signals_to(pid);
            let _ = std::io::Write::write_all(&mut pid_file, pid.to_string().as_bytes());
            drop(pid_file);
            pump_logs(out_r, err_r);
            let status = sys::wait_pid(pid)?;
            Ok(sys::exit_code(status))
        }
    }
}

/// Copies the container's stdout and stderr into the log (this process's stdout) as CRI lines,
/// until both pipes close (the container's PID 1 exited and took its namespace along).
fn pump_logs(out: OwnedFd, err: OwnedFd) {
    let mut pipes = [
        Some((Stream::Stdout, fs::File::from(out))),
        Some((Stream::Stderr, fs::File::from(err))),
    ];
    let mut log = CriWriter::new(io::stdout());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let open: Vec<(usize, RawFd)> = pipes
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|(_, f)| (i, f.as_raw_fd())))
            .collect();
        if open.is_empty() {
            return;
        }
        let ready = match sys::poll_in(&open.iter().map(|(_, fd)| *fd).collect::<Vec<_>>()) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for ((i, _), ready) in open.iter().zip(ready) {
            if !ready {
                continue;
            }
            let Some((stream, file)) = pipes[*i].as_mut() else {
                continue;
            };
            let stream = *stream;
            match file.read(&mut buf) {
                Ok(0) => {
                    let _ = log.finish(stream, SystemTime::now());
                    pipes[*i] = None;
                }
                Ok(n) => {
                    let _ = log.feed(stream, &buf[..n], SystemTime::now());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let _ = log.finish(stream, SystemTime::now());
                    pipes[*i] = None;
                }
            }
        }
    }
}

/// In the new PID namespace: finish the root, pivot into it and exec. Returns only on failure.
fn child(cfg: &ContainerConfig) -> io::Error {
    if let Err(e) = sys::set_parent_death_signal(libc::SIGKILL) {
        return e;
    }
    sys::reset_signals();
    if let Err(e) = prepare_root(cfg) {
        return e;
    }
    if let Err(e) = enter_root(&cfg.rootfs) {
        return e;
    }
    let cwd = if cfg.cwd.is_empty() { "/" } else { cfg.cwd.as_str() };
    let _ = fs::create_dir_all(cwd);
    if let Err(e) = std::env::set_current_dir(cwd) {
        return io::Error::new(e.kind(), format!("working directory {cwd}: {e}"));
    }
    if cfg.gid != 0 || cfg.uid != 0 {
        if let Err(e) = sys::set_ids(cfg.uid, cfg.gid) {
            return e;
        }
    }
    let Some(arg0) = cfg.args.first() else {
        return io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command: the pod and the image name none",
        );
    };
    let path_var = cfg
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let exe = match resolve(arg0, path_var) {
        Some(p) => p,
        None => {
            return io::Error::new(
                io::ErrorKind::NotFound,
                format!("exec: {arg0:?}: executable file not found in $PATH"),
            )
        }
    };
    let e = sys::execve(&exe, &cfg.args, &cfg.env);
    io::Error::new(e.kind(), format!("exec {}: {e}", exe.display()))
}

/// `args[0]` as a path: itself if it has a `/`, else the first executable file on `PATH`.
pub fn resolve(arg0: &str, path_var: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if arg0.contains('/') {
        return Some(PathBuf::from(arg0));
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(arg0))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn prepare_root(cfg: &ContainerConfig) -> io::Result<()> {
    let root = &cfg.rootfs;
    let dir = |p: &str| -> io::Result<PathBuf> {
        let d = root.join(p);
        fs::create_dir_all(&d)?;
        Ok(d)
    };
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount(Some("proc"), &dir("proc")?, Some("proc"), nosuid, None)?;
    let dev = dir("dev")?;
    sys::mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        sys::mknod_char(&dev.join(name), 0o666, major, minor)?;
        // mknod honours the umask; the nodes must be usable by any user.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dev.join(name), fs::Permissions::from_mode(0o666))?;
    }
    let pts = dir("dev/pts")?;
    sys::mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dir("dev/shm")?;
    sys::mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nosuid,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    // /sys read-only; a node without sysfs in the namespace still runs the container.
    if let Ok(sysdir) = dir("sys") {
        if let Err(e) = sys::mount(
            Some("sysfs"),
            &sysdir,
            Some("sysfs"),
            nosuid | libc::MS_RDONLY,
            None,
        ) {
            eprintln!("keel: container /sys not mounted: {e}");
        } else if cfg.cgroup.is_some() {
            let cg = sysdir.join("fs/cgroup");
            if let Err(e) = sys::mount(
                Some("cgroup2"),
                &cg,
                Some("cgroup2"),
                nosuid | libc::MS_RDONLY,
                None,
            ) {
                eprintln!("keel: container /sys/fs/cgroup not mounted: {e}");
            }
        }
    }
    let etc = dir("etc")?;
    for (name, source) in &cfg.etc_files {
        let target = etc.join(name);
        if fs::symlink_metadata(&target)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            fs::remove_file(&target)?;
        }
        if !target.exists() {
            fs::write(&target, b"")?;
        }
        sys::mount(
            Some(&source.to_string_lossy()),
            &target,
            None,
            libc::MS_BIND,
            None,
        )?;
    }
    for m in &cfg.mounts {
        let target = root.join(m.target.trim_start_matches('/'));
        if m.source.is_dir() {
            fs::create_dir_all(&target)?;
        } else if !target.exists() {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&target, b"")?;
        }
        let src = m.source.to_string_lossy();
        sys::mount(Some(&src), &target, None, libc::MS_BIND | libc::MS_REC, None)?;
        if m.read_only {
            let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
            sys::mount(None, &target, None, flags, None)?;
        }
    }
    Ok(())
}

fn enter_root(root: &Path) -> io::Result<()> {
    std::env::set_current_dir(root)?;
    sys::pivot_root_here()?;
    sys::umount_detach(Path::new("."))?;
    std::env::set_current_dir("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_resolve_through_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::write(bin.join("tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(bin.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(bin.join("data"), b"x").unwrap();
        let path = format!("/nonexistent:{}", bin.display());
        assert_eq!(resolve("tool", &path), Some(bin.join("tool")));
        assert_eq!(resolve("data", &path), None, "not executable");
        assert_eq!(resolve("/abs/x", &path), Some(PathBuf::from("/abs/x")));
        assert_eq!(resolve("missing", &path), None);
    }

    #[test]
    fn config_round_trips_as_json() {
        let c = ContainerConfig {
            layers: vec!["/l/1".into(), "/l/2".into()],
            args: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into()],
            sandbox_pid: Some(42),
            etc_files: vec![("hosts".into(), "/p/hosts".into())],
            ..Default::default()
        };
        let back: ContainerConfig = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
