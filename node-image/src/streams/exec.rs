//! `kubectl exec`: the `keel-node exec` helper (`crate::runtime::exec`) run inside the
//! container with the stream's stdin, stdout and stderr as pipes; its exit status ends the
//! stream.

use std::process::Stdio;

use keel_proto::stream_frame::Frame;
use keel_proto::{ExecOp, StreamEnd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Io, Paths, PodRef};

pub async fn serve(paths: &Paths, pod: &PodRef, container: &str, op: &ExecOp, io: &mut Io) {
    let Some((_, pid)) = pod.running_pid(paths, container) else {
        io.fail(400, "BadRequest", format!("container not found ({container:?})"))
            .await;
        return;
    };
    if op.command.is_empty() {
        io.fail(
            400,
            "BadRequest",
            "you must specify at least one command for the container",
        )
        .await;
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            io.fail(500, "InternalError", format!("cannot find keel-node: {e}"))
                .await;
            return;
        }
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("exec");
    if op.tty {
        cmd.arg("--tty");
    }
    cmd.arg(pid.to_string())
        .arg("--")
        .args(&op.command)
        .stdin(if op.stdin || op.tty {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            io.fail(500, "InternalError", format!("cannot start the exec helper: {e}"))
                .await;
            return;
        }
    };
    let mut stdin = child.stdin.take();
    // Output of both pipes funnels into one queue: (channel, bytes); empty bytes = EOF.
    let (out_tx, mut out_rx) = mpsc::channel::<(u32, Vec<u8>)>(16);
    for (channel, pipe) in [
        (
            1u32,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ),
        (
            2u32,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let tx = out_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((channel, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send((channel, Vec::new())).await;
        });
    }
    drop(out_tx);
    let mut open_pipes = 2;
    let mut client_gone = false;
    while open_pipes > 0 {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some((_, data)) if data.is_empty() => open_pipes -= 1,
                // Without a tty the kubelet keeps stderr apart; with one, stderr is the terminal.
                Some((channel, data)) => {
                    let wanted = (channel == 1 && (op.stdout || op.tty)) || (channel == 2 && op.stderr);
                    let channel = if op.tty { 1 } else { channel };
                    if wanted && !io.data(channel, data).await {
                        client_gone = true;
                        break;
                    }
                }
                None => break,
            },
            f = io.next(), if !client_gone => match f {
                Some(Frame::Data(d)) if d.channel == 0 => {
                    if let Some(s) = stdin.as_mut() {
                        let data = if op.tty { crate::runtime::exec::tty_input(&d.data) } else { d.data };
                        if s.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                // With a tty, stdin EOF is the terminal's business (^D), as with the kubelet.
                Some(Frame::Close(0)) if !op.tty => stdin = None,
                Some(Frame::Resize(r)) => {
                    if let Some(s) = stdin.as_mut() {
                        resize(s, r.width, r.height, op.tty).await;
                    }
                }
                Some(_) => {}
                None => {
                    client_gone = true;
                    break;
                }
            },
        }
    }
    if client_gone {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return;
    }
    drop(stdin);
    let code = match child.wait().await {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(255)
        }
        Err(e) => {
            io.fail(500, "InternalError", format!("waiting for the command: {e}"))
                .await;
            return;
        }
    };
    io.end(StreamEnd {
        exit_code: Some(code),
        ..Default::default()
    })
    .await;
}

/// With a tty, the helper reads resizes in-band: see `crate::runtime::exec` (`--tty`).
async fn resize(stdin: &mut tokio::process::ChildStdin, width: u32, height: u32, tty: bool) {
    if !tty {
        return;
    }
    let _ = stdin
        .write_all(&crate::runtime::exec::resize_message(width, height))
        .await;
}
