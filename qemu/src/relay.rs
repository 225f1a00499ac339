//! The guestfwd relay: `keel-lab relay 127.0.0.1 PORT`.
//!
//! QEMU's user networking runs with `restrict=on`, so a node can reach only what `guestfwd`
//! opens. The `tcp:` form of guestfwd is one chardev connected once: it serves the first guest
//! connection only (recipes §8). The `cmd:` form starts a program per guest connection with that
//! connection on its stdin and stdout; this module is that program. It connects to the target
//! on the host's loopback and copies bytes both ways.
//!
//! Rules that come from how libslirp starts us:
//! * stdin, stdout **and stderr** are the same socket to the guest, so the relay never writes a
//!   log line: any byte on stderr would corrupt the guest's stream.
//! * the relay runs in its own session, outside QEMU's process group, so it must notice by
//!   itself when QEMU goes away: a hang-up on the guest side ends it at once, even when the
//!   host side is an idle gRPC stream.
//! * half-closes are passed on (`shutdown(SHUT_WR)`), so request/response protocols that close
//!   their sending side still get their answer.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// Why a relay ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("poll failed: {0}")]
    Poll(#[source] std::io::Error),
}

/// Relays the process's stdin/stdout to `target` until both directions are done or the guest
/// side hangs up.
pub fn relay_stdio(target: SocketAddr) -> Result<(), RelayError> {
    // SAFETY: fds 0 and 1 stay open for the life of the process; we only borrow them here.
    let (input, output) = unsafe { (BorrowedFd::borrow_raw(0), BorrowedFd::borrow_raw(1)) };
    relay(input, output, target)
}

/// Relays `input` → `target` and `target` → `output`. `input` and `output` may be the same
/// socket (that is how QEMU hands a connection over).
pub fn relay(input: BorrowedFd<'_>, output: BorrowedFd<'_>, target: SocketAddr) -> Result<(), RelayError> {
    let mut upstream = TcpStream::connect(target).map_err(|source| RelayError::Connect { target, source })?;
    let _ = upstream.set_nodelay(true);
    let mut input_open = true;
    let mut upstream_open = true;
    let mut buf = vec![0u8; 64 * 1024];
    let same = input.as_raw_fd() == output.as_raw_fd();
    while input_open || upstream_open {
        let mut fds = vec![
            pollfd(input.as_raw_fd(), input_open),
            pollfd(upstream.as_raw_fd(), upstream_open),
        ];
        if !same {
            fds.push(pollfd(output.as_raw_fd(), false));
        }
        poll(&mut fds)?;
        let guest_hung_up = |f: &libc::pollfd| f.revents & (libc::POLLHUP | libc::POLLERR) != 0;

        if input_open && fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match read_fd(input.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => {
                    input_open = false;
                    let _ = upstream.shutdown(Shutdown::Write);
                }
                Ok(n) => {
                    if upstream.write_all(&buf[..n]).is_err() {
                        return Ok(());
                    }
                }
            }
        } else if !input_open && guest_hung_up(&fds[0]) {
            return Ok(());
        }
        if !same && guest_hung_up(&fds[2]) {
            return Ok(());
        }

        if upstream_open && fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match upstream.read(&mut buf) {
                Ok(0) | Err(_) => {
                    upstream_open = false;
                    shutdown_write(output.as_raw_fd());
                }
                Ok(n) => {
                    if write_all_fd(output.as_raw_fd(), &buf[..n]).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

fn pollfd(fd: RawFd, want_input: bool) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: if want_input { libc::POLLIN } else { 0 },
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd]) -> Result<(), RelayError> {
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the whole call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(RelayError::Poll(err));
        }
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `fd` is open (borrowed).
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn write_all_fd(fd: RawFd, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for reads of `data.len()` bytes; `fd` is open (borrowed).
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Passes an end-of-stream on to the guest. Only sockets can be half-closed; on a pipe (tests,
/// manual use) there is nothing to do until the process exits.
fn shutdown_write(fd: RawFd) {
    // SAFETY: shutdown on a borrowed, open fd; failure (ENOTSOCK) is harmless and ignored.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// An echo server on loopback that upper-cases nothing: it answers each line with "echo: "
    /// and the line, and closes after its client half-closes.
    fn echo_server() -> (SocketAddr, std::thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut served = 0;
            for conn in listener.incoming() {
                let conn = conn.unwrap();
                let mut writer = conn.try_clone().unwrap();
                let mut lines = std::io::BufReader::new(conn).lines();
                while let Some(Ok(line)) = lines.next() {
                    if line == "quit-server" {
                        return served;
                    }
                    writeln!(writer, "echo: {line}").unwrap();
                }
                served += 1;
            }
            served
        });
        (addr, handle)
    }

    #[test]
    fn relays_both_ways_and_passes_half_close() {
        let (addr, _server) = echo_server();
        // The guest side: one socket used as both stdin and stdout, as libslirp does it.
        let (mut guest, relay_end) = UnixStream::pair().unwrap();
        let relay_thread = std::thread::spawn(move || relay(relay_end.as_fd(), relay_end.as_fd(), addr));
        guest.write_all(b"hello\nworld\n").unwrap();
        guest.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        guest.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "echo: hello\necho: world\n");
        relay_thread.join().unwrap().unwrap();
    }

    #[test]
    fn serves_many_parallel_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut writer = conn.try_clone().unwrap();
                    for line in std::io::BufReader::new(conn).lines().map_while(Result::ok) {
                        writeln!(writer, "{}", line.len()).unwrap();
                    }
                });
            }
        });
        let clients: Vec<_> = (0..5)
            .map(|i| {
                std::thread::spawn(move || {
                    let (mut guest, relay_end) = UnixStream::pair().unwrap();
                    let t = std::thread::spawn(move || relay(relay_end.as_fd(), relay_end.as_fd(), addr));
                    let line = "x".repeat(1000 * (i + 1));
                    writeln!(guest, "{line}").unwrap();
                    let mut reader = std::io::BufReader::new(guest.try_clone().unwrap());
                    let mut got = String::new();
                    reader.read_line(&mut got).unwrap();
                    drop(reader);
                    drop(guest);
                    t.join().unwrap().unwrap();
                    got.trim().parse::<usize>().unwrap()
                })
            })
            .collect();
        let lens: Vec<usize> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        assert_eq!(lens, vec![1000, 2000, 3000, 4000, 5000]);
    }

    #[test]
    fn guest_hang_up_ends_the_relay_while_the_server_idles() {
        // The server accepts and then never sends or closes, like an idle gRPC stream.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let conn = listener.accept().unwrap().0;
            accepted_tx.send(()).unwrap();
            std::thread::park();
            drop(conn);
        });
        let (guest, relay_end) = UnixStream::pair().unwrap();
        let relay_thread = std::thread::spawn(move || relay(relay_end.as_fd(), relay_end.as_fd(), addr));
        accepted_rx.recv().unwrap();
        drop(guest); // QEMU died
        relay_thread.join().unwrap().unwrap();
    }

    #[test]
    fn unreachable_target_is_an_error_naming_it() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (_guest, relay_end) = UnixStream::pair().unwrap();
        let err = relay(relay_end.as_fd(), relay_end.as_fd(), target).unwrap_err();
        assert!(err.to_string().contains(&port.to_string()), "{err}");
    }
}
