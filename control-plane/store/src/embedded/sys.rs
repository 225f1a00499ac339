//! The two system calls the embedded store needs that `std` does not offer (at our MSRV):
//! an exclusive advisory lock on the data directory, and preallocation of log segments.
//!
//! All `unsafe` of the crate is here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Takes an exclusive `flock` on `file` without waiting; fails with `WouldBlock` if another
/// process (or another open store in this process) holds it. The lock lives as long as the file.
pub(super) fn try_lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reserves disk blocks for `file` up to `len` bytes, so that appends do not have to allocate
/// (and `fdatasync` has less metadata to write). File systems without `fallocate` are fine: the
/// file then simply grows as it is written.
pub(super) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let Ok(len) = libc::off_t::try_from(len) else {
        return Ok(());
    };
    // SAFETY: posix_fallocate only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}
