//! The syscalls the runtime needs that std does not wrap: mounts, pivot_root, namespaces, device
//! nodes, extended attributes, fork/exec/wait and signals.
//!
//! Every `unsafe` block of the runtime lives here, each one a direct call with C strings we own,
//! checked for its error return. Callers get `io::Result`s.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a path or argument"))
}

fn cpath(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str())
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

/// mount(2). `data` is the filesystem's option string.
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = source.map(|s| cstr(OsStr::new(s))).transpose()?;
    let tgt = cpath(target)?;
    let fst = fstype.map(|s| cstr(OsStr::new(s))).transpose()?;
    let dat = data.map(|s| cstr(OsStr::new(s))).transpose()?;
    // SAFETY: every pointer is either null or a NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            tgt.as_ptr(),
            fst.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            flags,
            dat.as_ref().map_or(std::ptr::null(), |c| c.as_ptr().cast()),
        )
    };
    check(
        r,
        &format!(
            "mount {} on {}",
            source.or(fstype).unwrap_or("-"),
            target.display()
        ),
    )
}

pub fn umount_detach(target: &Path) -> io::Result<()> {
    let t = cpath(target)?;
    // SAFETY: `t` is a valid C string for the duration of the call.
    check(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) }, "umount2")
}

/// pivot_root(2) with new and old root both `.`: the usual trick that needs no directory.
pub fn pivot_root_here() -> io::Result<()> {
    let dot = cstr(OsStr::new("."))?;
    // SAFETY: raw syscall with two valid C strings.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    check(r as libc::c_int, "pivot_root")
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(flags) }, "unshare")
}

/// Joins the namespace behind `path` (`/proc/<pid>/ns/uts`).
pub fn setns(path: &Path, nstype: libc::c_int) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call.
    check(
        unsafe { libc::setns(f.as_raw_fd(), nstype) },
        &format!("setns {}", path.display()),
    )
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`'s bytes.
    check(
        unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) },
        "sethostname",
    )
}

/// A character device node (`0, 0` is overlayfs' whiteout).
pub fn mknod_char(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let p = cpath(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: valid C string; mode and dev are plain integers.
    check(
        unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | mode, dev) },
        &format!("mknod {}", path.display()),
    )
}

pub fn setxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let n = cstr(OsStr::new(name))?;
    // SAFETY: valid C strings; the value pointer and length describe `value`.
    let r = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    check(r, &format!("setxattr {name} on {}", path.display()))
}

/// This process gets `sig` when its parent (thread) dies.
pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) },
        "prctl",
    )
}

pub enum Fork {
    Parent(libc::pid_t),
    Child,
}

/// fork(2). Only for the single-threaded runtime helpers (`keel-node container|sandbox`).
pub fn fork() -> io::Result<Fork> {
    // SAFETY: called from a single-threaded helper process, so the child owns a consistent copy
    // of every lock and allocation.
    let pid = unsafe { libc::fork() };
    match pid {
        p if p < 0 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        p => Ok(Fork::Parent(p)),
    }
}

/// waitpid(2) for one child, retried on EINTR. Returns the raw status.
pub fn wait_pid(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// The exit code a shell would show for a wait status: the code, or 128 + the signal.
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes integers only.
    check(unsafe { libc::kill(pid, sig) }, "kill")
}

static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = FORWARD_TO.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Forwards the usual termination signals this process receives to `pid`.
pub fn forward_signals_to(pid: libc::pid_t) {
    FORWARD_TO.store(pid, std::sync::atomic::Ordering::Relaxed);
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: `forward` only calls the async-signal-safe kill(2).
        unsafe {
            libc::signal(sig, forward as *const () as libc::sighandler_t);
        }
    }
}

/// Waits for any signal; used by the sandbox process, which has nothing else to do.
pub fn pause() {
    // SAFETY: pause takes no arguments.
    unsafe {
        libc::pause();
    }
}

/// Resets the signal mask and dispositions a child inherits (the agent's tokio runtime blocks
/// nothing, but a helper's handlers must not leak into the container).
pub fn reset_signals() {
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: restoring the default disposition of a valid signal number.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    // SAFETY: an empty set, initialised by sigemptyset, passed by valid pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// execve(2): returns only on failure.
pub fn execve(path: &Path, argv: &[String], env: &[String]) -> io::Error {
    let conv = |v: &[String]| -> io::Result<Vec<CString>> { v.iter().map(|s| cstr(OsStr::new(s))).collect() };
    let (p, a, e) = match (cpath(path), conv(argv), conv(env)) {
        (Ok(p), Ok(a), Ok(e)) => (p, a, e),
        (Err(x), _, _) | (_, Err(x), _) | (_, _, Err(x)) => return x,
    };
    let mut ap: Vec<*const libc::c_char> = a.iter().map(|c| c.as_ptr()).collect();
    ap.push(std::ptr::null());
    let mut ep: Vec<*const libc::c_char> = e.iter().map(|c| c.as_ptr()).collect();
    ep.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe {
        libc::execve(p.as_ptr(), ap.as_ptr(), ep.as_ptr());
    }
    io::Error::last_os_error()
}

/// Brings `lo` up in the current network namespace (SIOCSIFFLAGS).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value. The name fits (3 bytes + NUL).
    let r = unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr);
        }
        let e = io::Error::last_os_error();
        libc::close(fd);
        if r < 0 {
            Err(e)
        } else {
            Ok(())
        }
    };
    r
}

/// Reads an extended attribute (tests check what the unpacker wrote).
#[cfg(test)]
pub fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let p = cpath(path)?;
    let n = cstr(OsStr::new(name))?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings; the buffer pointer and length describe `buf`.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// Drops to `uid:gid` with no supplementary groups.
pub fn set_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: integer arguments; an empty group list is a null pointer with length 0.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, "setgroups")?;
    // SAFETY: integer argument.
    check(unsafe { libc::setgid(gid) }, "setgid")?;
    // SAFETY: integer argument.
    check(unsafe { libc::setuid(uid) }, "setuid")
}

/// A pipe, both ends close-on-exec: (read, write).
pub fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, "pipe2")?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// dup2(2): `fd` becomes `target` (without close-on-exec).
pub fn dup2(fd: std::os::fd::RawFd, target: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: integer descriptors; dup2 validates them.
    check(unsafe { libc::dup2(fd, target) }, "dup2")
}

/// poll(2) for input on `fds`, without timeout: which of them are readable (or closed).
pub fn poll_in(fds: &[std::os::fd::RawFd]) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: *fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a valid array of `p.len()` pollfd structures.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, -1) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// pidfd_open(2): a descriptor that becomes readable when the process `pid` exits, whoever its
/// parent is (the agent watches containers it adopted after a restart this way).
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: integer arguments; the kernel returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open succeeded, so `fd` is an open descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// A pidfd registered with tokio, to await the process's exit as readability.
pub fn pidfd_async(pid: libc::pid_t) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let fd = pidfd_open(pid)?;
    // SAFETY: the AsyncFd owns the descriptor, so it stays open (and is the same file) for as
    // long as it is registered; nothing else closes it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// statvfs(2): (total bytes, available bytes) of the filesystem holding `path`.
pub fn fs_space(path: &Path) -> io::Result<(u64, u64)> {
    let p = cpath(path)?;
    // SAFETY: zeroed statvfs is a valid out-parameter; `p` is NUL-terminated and outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statvfs writes only into `st`.
    check(unsafe { libc::statvfs(p.as_ptr(), &mut st) }, "statvfs")?;
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}
