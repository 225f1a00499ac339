//! Pseudo-terminals for `kubectl exec -it`: the syscalls, each `unsafe` block a direct call
//! with a `SAFETY:` note (the rest of the runtime's syscalls are in [`super::sys`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

/// Opens a new terminal's master on `ptmx` (the container's `/dev/ptmx` once inside its mount
/// namespace), unlocked; returns it with the path of its slave (`/dev/pts/N`).
pub fn open_master() -> io::Result<(File, PathBuf)> {
    let master = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one c_int from the valid pointer we pass.
    check(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) },
        "unlocking the terminal",
    )?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one c_uint to the valid pointer we pass.
    check(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) },
        "finding the terminal's number",
    )?;
    Ok((master, PathBuf::from(format!("/dev/pts/{n}"))))
}

/// In the child: a new session whose controlling terminal is `slave`, which becomes stdin,
/// stdout and stderr.
pub fn become_terminal_session(slave: &std::path::Path) -> io::Result<()> {
    // SAFETY: no arguments; fails only if already a group leader (not after fork).
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    let tty = OpenOptions::new().read(true).write(true).open(slave)?;
    // SAFETY: integer descriptor and argument.
    check(
        unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) },
        "taking the controlling terminal",
    )?;
    for target in 0..3 {
        // SAFETY: integer descriptors; dup2 validates them.
        check(unsafe { libc::dup2(tty.as_raw_fd(), target) }, "dup2")?;
    }
    Ok(())
}

/// TIOCSWINSZ: the terminal's size (zero sizes are ignored, as kubectl sends 0×0 first).
pub fn set_size(master: RawFd, width: u16, height: u16) -> io::Result<()> {
    if width == 0 || height == 0 {
        return Ok(());
    }
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer we pass.
    check(
        unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) },
        "resizing the terminal",
    )
}
