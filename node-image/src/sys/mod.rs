//! Thin, safe wrappers over the Linux system calls PID 1 needs and `std` does not offer.
//!
//! Every `unsafe` block of PID 1 lives in this module tree (plus [`vmware`] for the hypervisor
//! backdoor), each with a `SAFETY:` comment. The wrappers take Rust types, return
//! `std::io::Result` with `errno` preserved, and do nothing clever, so the callers in `init/` and
//! `net/` stay plain safe code.

#![allow(dead_code)] // a few wrappers are only used by the agent later or in tests

pub mod socket;
pub mod vmware;

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// mount(2). `source`/`fstype`/`data` may be absent (bind, move and remount mounts).
pub fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null (allowed by mount(2) for these arguments) or points
    // to a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(ret).map(drop)
}

/// umount2(2).
pub fn umount(target: &str, flags: libc::c_int) -> io::Result<()> {
    let target = cstr(target)?;
    // SAFETY: `target` is a valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// chroot(2).
pub fn chroot(path: &str) -> io::Result<()> {
    let path = cstr(path)?;
    // SAFETY: `path` is a valid NUL-terminated string.
    check(unsafe { libc::chroot(path.as_ptr()) }).map(drop)
}

/// finit_module(2): loads the module in `file` with no parameters.
pub fn finit_module(file: &File, params: &str) -> io::Result<()> {
    let params = cstr(params)?;
    // SAFETY: the fd is open for reading for the duration of the call and `params` is a valid
    // NUL-terminated string; the syscall does not keep either.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What to do when the node stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

/// reboot(2). Only returns on failure.
pub fn reboot(action: PowerAction) -> io::Error {
    let cmd = match action {
        PowerAction::PowerOff => libc::RB_POWER_OFF,
        PowerAction::Reboot => libc::RB_AUTOBOOT,
    };
    // SAFETY: reboot(2) takes no pointers; the caller has synced file systems.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

/// Makes the kernel send SIGINT to PID 1 on Ctrl-Alt-Del instead of rebooting at once.
pub fn disable_ctrl_alt_del() -> io::Result<()> {
    // SAFETY: reboot(2) with RB_DISABLE_CAD only flips a kernel flag.
    check(unsafe { libc::reboot(libc::RB_DISABLE_CAD) }).map(drop)
}

/// sync(2).
pub fn sync() {
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// Time since the kernel started (CLOCK_BOOTTIME), the same clock as the kernel log's stamps.
pub fn since_boot() -> Duration {
    clock(libc::CLOCK_BOOTTIME)
}

/// CLOCK_MONOTONIC, for deadlines.
pub fn monotonic() -> Duration {
    clock(libc::CLOCK_MONOTONIC)
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Sets CLOCK_REALTIME to `secs` seconds (and `nanos`) after the Unix epoch.
pub fn set_realtime(secs: i64, nanos: u32) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs as _,
        tv_nsec: nanos.min(999_999_999) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec for the duration of the call.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// The broken-down time an RTC reports (UTC by convention on Linux guests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcTime {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Reads the real-time clock behind `rtc` (an open /dev/rtcN) with RTC_RD_TIME.
pub fn rtc_read(rtc: &File) -> io::Result<RtcTime> {
    // RTC_RD_TIME = _IOR('p', 0x09, struct rtc_time), struct rtc_time = 9 ints.
    const RTC_RD_TIME: libc::c_ulong = 0x8024_7009;
    let mut tm = [0 as libc::c_int; 9];
    // SAFETY: the ioctl writes exactly one struct rtc_time (9 ints) into `tm`, which is that size.
    check(unsafe { libc::ioctl(rtc.as_raw_fd(), RTC_RD_TIME as _, tm.as_mut_ptr()) })?;
    let u = |v: libc::c_int| u32::try_from(v).unwrap_or(0);
    Ok(RtcTime {
        second: u(tm[0]),
        minute: u(tm[1]),
        hour: u(tm[2]),
        day: u(tm[3]),
        month: u(tm[4]) + 1,
        year: tm[5] + 1900,
    })
}

/// True when the kernel's CRNG is initialised (getrandom would not block).
pub fn crng_ready() -> bool {
    let mut b = [0u8; 1];
    // SAFETY: the buffer is valid and writable for its length.
    let r = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 1, libc::GRND_NONBLOCK) };
    r == 1
}

/// Adds `data` to the kernel's entropy pool through `random` (an open /dev/urandom), crediting
/// `bits` of entropy (RNDADDENTROPY; needs CAP_SYS_ADMIN).
pub fn add_entropy(random: &File, data: &[u8], bits: u32) -> io::Result<()> {
    // RNDADDENTROPY = _IOW('R', 0x03, int[2]); struct rand_pool_info { int entropy_count;
    // int buf_size; __u32 buf[]; }
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    let mut buf = Vec::with_capacity(8 + data.len());
    buf.extend_from_slice(&(bits as i32).to_ne_bytes());
    buf.extend_from_slice(&(data.len() as i32).to_ne_bytes());
    buf.extend_from_slice(data);
    // SAFETY: `buf` holds a complete rand_pool_info whose buf_size matches the bytes that follow.
    check(unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, buf.as_ptr()) }).map(drop)
}

/// A set of signals, blocked in PID 1 and read synchronously through a signalfd.
pub struct SignalFd {
    fd: std::os::fd::OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` for the calling thread and opens a signalfd for them.
    pub fn new(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        // SAFETY: an all-zero sigset_t is valid storage; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is valid, writable sigset storage for these calls.
        unsafe {
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
        }
        // SAFETY: `set` is initialised; the old mask is not requested.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: `set` is initialised; -1 asks for a new fd.
        let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
        // SAFETY: `fd` was just returned by signalfd and is owned by nobody else.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(SignalFd { fd })
    }

    /// The next pending signal, if any.
    pub fn read(&self) -> Option<libc::c_int> {
        // SAFETY: an all-zero signalfd_siginfo is valid storage.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is writable storage of exactly `size` bytes.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n as usize == size {
            i32::try_from(info.ssi_signo).ok()
        } else {
            None
        }
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Makes `cmd`'s child start with no blocked signals. `std` passes the parent's signal mask on
/// to children, and PID 1 blocks the signals it reads from its signalfd (SIGTERM among them),
/// which would make the agent deaf to SIGTERM.
pub fn clear_signal_mask_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // sigemptyset/pthread_sigmask on a local set, which are async-signal-safe and allocate nothing.
    unsafe {
        cmd.pre_exec(|| {
            unblock_all_signals();
            Ok(())
        });
    }
}

/// Unblocks every signal in the calling thread (children inherit the mask through fork).
pub fn unblock_all_signals() {
    // SAFETY: an all-zero sigset_t is valid storage; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid and initialised.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// poll(2) for readability on `fds`; returns which became readable (or hung up).
pub fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect())
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// Reaps one exited child without blocking: `Ok(None)` when none is waiting to be reaped.
pub fn reap_one() -> io::Result<Option<(i32, ExitStatus)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is valid writable storage for waitpid's status word.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        return Ok(None);
    }
    let st = if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    };
    Ok(Some((pid, st)))
}

/// kill(2).
pub fn kill(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) takes no pointers.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// ioperm(2): grants this process access to `count` I/O ports from `from`.
pub fn ioperm(from: u64, count: u64) -> io::Result<()> {
    // SAFETY: ioperm(2) takes no pointers; it only changes this process's I/O bitmap.
    check(unsafe { libc::ioperm(from as _, count as _, 1) }).map(drop)
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> io::Result<String> {
    // SAFETY: an all-zero utsname is valid storage.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is valid, writable utsname storage.
    check(unsafe { libc::uname(&mut u) })?;
    // SAFETY: uname(2) NUL-terminates `release` within the array.
    let rel = unsafe { CStr::from_ptr(u.release.as_ptr()) };
    Ok(rel.to_string_lossy().into_owned())
}

/// dup2(2).
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2(2) takes no pointers; replacing `to` is the purpose of the call.
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

/// The device number of the terminal behind `tty` (for /dev/console: the real console device),
/// in the encoding `stat` uses for `st_rdev`.
pub fn tty_device(tty: &File) -> io::Result<u64> {
    const TIOCGDEV: libc::c_ulong = 0x8004_5432;
    let mut dev: libc::c_uint = 0;
    // SAFETY: TIOCGDEV writes one unsigned int into `dev`.
    check(unsafe { libc::ioctl(tty.as_raw_fd(), TIOCGDEV as _, &mut dev) })?;
    Ok(u64::from(dev))
}

/// execv(2) of `path` with `args` (argv[0] included). Only returns on failure.
pub fn exec(path: &str, args: &[&str]) -> io::Error {
    let Ok(path) = cstr(path) else {
        return io::Error::new(io::ErrorKind::InvalidInput, "NUL in path");
    };
    let args: Vec<CString> = args.iter().filter_map(|a| cstr(a).ok()).collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: `path` and every argv entry are NUL-terminated strings alive for the call, and
    // argv is NULL-terminated.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    io::Error::last_os_error()
}

/// unshare(2).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare(2) takes no pointers.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// pivot_root(2).
pub fn pivot_root(new_root: &str, put_old: &str) -> io::Result<()> {
    let new_root = cstr(new_root)?;
    let put_old = cstr(put_old)?;
    // SAFETY: both arguments are valid NUL-terminated strings for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
