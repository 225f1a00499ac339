//! `pods/exec` and `pods/attach` over a WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`).

use futures::{SinkExt, StreamExt};
use http::Response;
use keel_api::status::{ApiError, ApiResult};
use keel_api::streams::{Down, ExecOptions, NodeStream, StreamOp, Up};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::websocket::{self, ClientMessage};
use super::{container_of, container_status, pods, target, StreamRequest};
use crate::http::Body;
use crate::Objects;

/// Exec (`attach == false`) or attach.
pub(crate) async fn open(
    objects: &Objects,
    ns: &str,
    name: &str,
    r: &StreamRequest<'_>,
    attach: bool,
) -> ApiResult<Response<Body>> {
    let Some(upgrade) = r.upgrade else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let pod = objects.get(pods()?, Some(ns), name).await?;
    let container = container_of(&pod, name, r.q("container"))?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        let what = if attach { "attach a" } else { "exec into a" };
        return Err(ApiError::bad_request(format!(
            "cannot {what} container in a completed pod; current phase is {phase}"
        )));
    }
    let opts = ExecOptions {
        command: if attach { Vec::new() } else { r.all("command") },
        stdin: r.flag("stdin"),
        stdout: r.flag("stdout"),
        stderr: r.flag("stderr"),
        tty: r.flag("tty"),
    };
    if !attach && opts.command.is_empty() {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let running = container_status(&pod, &container)
        .and_then(|s| s.pointer("/state/running"))
        .is_some();
    if !running {
        return Err(ApiError::bad_request(format!(
            "container not found ({container:?})"
        )));
    }
    let Some(protocol) = websocket::choose(&upgrade.protocols, &[websocket::V5, websocket::V4]) else {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade: none of the offered subprotocols {:?} is supported (want {} or {})",
            upgrade.protocols,
            websocket::V5,
            websocket::V4
        )));
    };
    let target = target(&pod, ns, name, container)?;
    let op = if attach {
        StreamOp::Attach(opts.clone())
    } else {
        StreamOp::Exec(opts.clone())
    };
    let stream = r.streams()?.open(target, op).await?;
    let on_upgrade = upgrade
        .take()
        .ok_or_else(|| ApiError::internal("the connection cannot be upgraded"))?;
    let resp = upgrade.switching(protocol)?;
    let v5 = protocol == websocket::V5;
    tokio::spawn(async move {
        if let Some(ws) = websocket::accept(on_upgrade).await {
            session(ws, stream, v5, &opts.command).await;
        }
    });
    Ok(resp)
}

/// Pumps between the client's WebSocket and the node's stream until the command ends (its
/// Status goes on the error channel, then a normal close) or the client goes away.
async fn session(ws: websocket::Ws, stream: NodeStream, v5: bool, command: &[String]) {
    let (mut sink, mut source) = ws.split();
    let NodeStream { mut up, mut down } = stream;
    loop {
        tokio::select! {
            m = source.next() => match m {
                // The Python client sends text stdin as text messages; same framing.
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                    let b = m.into_data();
                    let up_msg = match websocket::parse_client(&b, v5) {
                        ClientMessage::Stdin(d) => Up::Data(websocket::STDIN, d),
                        ClientMessage::Resize { width, height } => Up::Resize { width, height },
                        ClientMessage::CloseChannel(c) => Up::Close(c),
                        ClientMessage::Ignored => continue,
                    };
                    if up.send(up_msg).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            d = down.next() => {
                let (msg, done) = match d {
                    Some(Down::Data(channel, data)) => (websocket::channel_message(channel, &data), false),
                    Some(Down::Close(_)) => continue,
                    Some(Down::End(end)) => {
                        let status = match (end.error, end.exit_code) {
                            (Some(e), _) => e.to_status(),
                            (None, code) => websocket::exit_status(command, code.unwrap_or(0)),
                        };
                        (websocket::channel_message(websocket::ERROR, status.to_string().as_bytes()), true)
                    }
                    None => {
                        let e = ApiError::internal("the node closed the stream");
                        (websocket::channel_message(websocket::ERROR, e.to_status().to_string().as_bytes()), true)
                    }
                };
                if sink.send(msg).await.is_err() {
                    break;
                }
                if done {
                    let _ = sink.send(websocket::normal_close()).await;
                    // Drain until the client answers the close (or goes away).
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                        while let Some(Ok(m)) = source.next().await {
                            if matches!(m, Message::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                    break;
                }
            }
        }
    }
}
