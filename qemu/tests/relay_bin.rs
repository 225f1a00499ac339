//! `keel-lab relay` as QEMU runs it: one socket as stdin, stdout and stderr, a loopback server
//! behind it. Nothing but the server's bytes may come back (no log lines on stderr).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

#[test]
fn relay_binary_carries_a_conversation_and_exits_when_the_guest_leaves() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut w = conn.try_clone().unwrap();
            for line in BufReader::new(conn).lines().map_while(Result::ok) {
                writeln!(w, "pong {line}").unwrap();
            }
        }
    });

    let (mut guest, relay_end) = UnixStream::pair().unwrap();
    let fd: OwnedFd = relay_end.into();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel-lab"))
        .args(["relay", "127.0.0.1", &port.to_string()])
        .stdin(Stdio::from(fd.try_clone().unwrap()))
        .stdout(Stdio::from(fd.try_clone().unwrap()))
        .stderr(Stdio::from(fd))
        .spawn()
        .unwrap();

    guest.write_all(b"one\ntwo\n").unwrap();
    let mut reader = BufReader::new(guest.try_clone().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert_eq!(first, "pong one\n");
    guest.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "pong two\n", "only the server's bytes may arrive");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn relay_binary_fails_quietly_when_the_target_is_down() {
    let port = keel_lab::ports::free_ports(1).unwrap()[0];
    let (mut guest, relay_end) = UnixStream::pair().unwrap();
    let fd: OwnedFd = relay_end.into();
    let status = Command::new(env!("CARGO_BIN_EXE_keel-lab"))
        .args(["relay", "127.0.0.1", &port.to_string()])
        .stdin(Stdio::from(fd.try_clone().unwrap()))
        .stdout(Stdio::from(fd.try_clone().unwrap()))
        .stderr(Stdio::from(fd))
        .status()
        .unwrap();
    assert!(!status.success());
    let mut got = Vec::new();
    guest.read_to_end(&mut got).unwrap();
    assert!(
        got.is_empty(),
        "relay wrote {:?} to the guest",
        String::from_utf8_lossy(&got)
    );
}
