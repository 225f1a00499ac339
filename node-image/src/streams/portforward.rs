//! `kubectl port-forward`: one TCP connection to a port inside the pod's network namespace per
//! stream. The socket is created by a short-lived thread that joined the namespace (a socket
//! stays in the namespace it was created in), so `localhost` means the pod's loopback, as with
//! the kubelet.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use keel_proto::stream_frame::Frame;
use keel_proto::StreamEnd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Io, Paths, PodRef};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `127.0.0.1:port` in the network namespace of process `pid`.
async fn connect_in(pid: i32, port: u16) -> std::io::Result<TcpStream> {
    let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || {
            let r = crate::runtime::sys::setns(&netns, libc::CLONE_NEWNET).and_then(|()| {
                TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), CONNECT_TIMEOUT)
            });
            let _ = tx.send(r);
        })?;
    rx.await
        .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread died")))
}

pub async fn serve(paths: &Paths, pod: &PodRef, port: u32, io: &mut Io) {
    let Ok(port) = u16::try_from(port) else {
        io.fail(400, "BadRequest", format!("invalid port {port}")).await;
        return;
    };
    let Some(pid) = pod.any_running_pid(paths) else {
        io.fail(
            400,
            "BadRequest",
            format!("pod {} has no running container", pod.name),
        )
        .await;
        return;
    };
    let std_stream = match connect_in(pid, port).await {
        Ok(s) => s,
        Err(e) => {
            io.fail(
                500,
                "InternalError",
                format!(
                    "failed to connect to localhost:{port} inside namespace of pod {}: {e}",
                    pod.name
                ),
            )
            .await;
            return;
        }
    };
    let tcp = match std_stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(std_stream))
    {
        Ok(t) => t,
        Err(e) => {
            io.fail(500, "InternalError", format!("port-forward socket: {e}"))
                .await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let mut buf = vec![0u8; 64 * 1024];
    let mut write_open = true;
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !io.data(1, buf[..n].to_vec()).await {
                        return;
                    }
                }
            },
            f = io.next() => match f {
                Some(Frame::Data(d)) if write_open => {
                    if wr.write_all(&d.data).await.is_err() {
                        write_open = false;
                    }
                }
                Some(Frame::Close(_)) => {
                    write_open = false;
                    let _ = wr.shutdown().await;
                }
                Some(_) => {}
                None => return, // the client went away: dropping the socket closes it
            },
        }
    }
    io.end(StreamEnd::default()).await;
}
