//! The system calls under the pod network: a netlink socket of any protocol (rtnetlink for links,
//! addresses, routes and neighbours; nfnetlink for nftables) with a receive timeout, and running
//! a piece of work inside another network namespace.
//!
//! Only the calls live here, each `unsafe` block with its `SAFETY:` reason; messages are built
//! and parsed in safe code ([`super::nlmsg`]).
//!
//! A network namespace belongs to a thread, not a process, and a socket stays in the namespace
//! it was created in. [`in_netns`] therefore runs its closure on a fresh thread that joins the
//! namespace first and ends afterwards, so no thread of the agent ever changes namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

/// How long one request waits for the kernel's answer.
const RECV_TIMEOUT: Duration = Duration::from_secs(3);

/// A bound netlink socket in the calling thread's network namespace.
pub struct NlSocket {
    fd: OwnedFd,
}

impl NlSocket {
    /// `protocol`: `libc::NETLINK_ROUTE` or `libc::NETLINK_NETFILTER`.
    pub fn open(protocol: libc::c_int) -> io::Result<NlSocket> {
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as _,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a valid timeval and the length matches it.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // Big dumps (every FDB entry of a busy node) need room; failure only means the default.
        let size: libc::c_int = 1 << 20;
        // SAFETY: `size` is a valid c_int and the length matches it.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel assigns one).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `sa` is a valid sockaddr_nl and the length matches it.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NlSocket { fd })
    }

    /// Makes room for sending `bytes` at once (a big nftables batch): the send buffer grows
    /// past `wmem_max` as root (SO_SNDBUFFORCE), else as far as the limit allows.
    pub fn reserve_send(&self, bytes: usize) -> io::Result<()> {
        let size = libc::c_int::try_from(bytes.saturating_add(64 * 1024)).unwrap_or(libc::c_int::MAX);
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
            // SAFETY: `size` is a valid c_int and the length matches it.
            let r = unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                return Ok(());
            }
        }
        Err(io::Error::last_os_error())
    }

    /// Sends one buffer (one message or a batch) to the kernel.
    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_nl addresses the kernel (pid 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` is valid for its length; `sa` is a valid sockaddr_nl of the given size.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one datagram; `TimedOut` when the kernel said nothing for a while.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid and writable for `buf.len()` bytes.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from netlink"))
                }
                _ => return Err(e),
            }
        }
    }
}

/// setns(2) of the calling thread into the network namespace `fd`.
fn setns_net(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns takes an fd and a flag; a wrong fd is an error, not undefined behaviour.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `work` on a new thread inside the network namespace at `netns` (a bind mount, or
/// `/proc/PID/ns/net`, or `/proc/self/fd/N`).
pub fn in_netns<T: Send>(netns: &Path, work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns_net(ns.as_raw_fd())?;
            work()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("network namespace worker panicked")))
    })
}

/// A new, empty network namespace, held open by the returned file (tests and tools).
#[cfg(test)]
pub fn new_netns() -> io::Result<File> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare takes a flag; CLONE_NEWNET affects only this thread, which ends
            // right after opening its new namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
                return Err(io::Error::last_os_error());
            }
            File::open("/proc/thread-self/ns/net")
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("unshare worker panicked")))
    })
}
