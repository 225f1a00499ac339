//! WebSocket plumbing shared by exec, attach and port-forward: the upgraded connection as a
//! message stream (RFC 6455 framing by `tungstenite`, without its HTTP handshake, which hyper
//! and [`super::Upgrade`] do), and the remote-command channel protocols.
//!
//! In `channel.k8s.io` protocols every binary message starts with its channel byte: 0 stdin,
//! 1 stdout, 2 stderr, 3 error (a `Status` once, at the end), 4 resize (`{"Width":…,"Height":…}`).
//! `v5.channel.k8s.io` adds channel 255, "close": `[255, channel]` says the sender closed that
//! channel (kubectl sends `ff 00` at stdin EOF). `v4.channel.k8s.io` is the same without 255.

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub(crate) type Ws = WebSocketStream<TokioIo<Upgraded>>;

pub(crate) const V5: &str = "v5.channel.k8s.io";
pub(crate) const V4: &str = "v4.channel.k8s.io";

pub(crate) const STDIN: u8 = 0;
pub(crate) const ERROR: u8 = 3;
pub(crate) const RESIZE: u8 = 4;
pub(crate) const CLOSE: u8 = 255;

/// The WebSocket over the connection hyper hands over once the 101 went out.
pub(crate) async fn accept(on: OnUpgrade) -> Option<Ws> {
    match on.await {
        Ok(upgraded) => {
            Some(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await)
        }
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            None
        }
    }
}

/// The first of `preferred` the client offered.
pub(crate) fn choose<'a>(offered: &[String], preferred: &[&'a str]) -> Option<&'a str> {
    preferred
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .copied()
}

/// A message on `channel`.
pub(crate) fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

pub(crate) fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// A message from the client of a remote-command protocol.
#[derive(Debug, PartialEq)]
pub(crate) enum ClientMessage {
    Stdin(Vec<u8>),
    Resize {
        width: u16,
        height: u16,
    },
    /// v5: the client closed a channel (stdin EOF).
    CloseChannel(u8),
    Ignored,
}

pub(crate) fn parse_client(data: &[u8], v5: bool) -> ClientMessage {
    let Some((&channel, rest)) = data.split_first() else {
        return ClientMessage::Ignored;
    };
    match channel {
        STDIN => ClientMessage::Stdin(rest.to_vec()),
        RESIZE => match serde_json::from_slice::<Value>(rest) {
            Ok(v) => {
                let dim = |k: &str| {
                    v.get(k)
                        .and_then(Value::as_u64)
                        .and_then(|n| u16::try_from(n).ok())
                        .unwrap_or(0)
                };
                ClientMessage::Resize {
                    width: dim("Width"),
                    height: dim("Height"),
                }
            }
            Err(_) => ClientMessage::Ignored,
        },
        CLOSE if v5 => match rest.first() {
            Some(&c) => ClientMessage::CloseChannel(c),
            None => ClientMessage::Ignored,
        },
        _ => ClientMessage::Ignored,
    }
}

/// The Status sent on the error channel when a command ended, as the kubelet sends it.
pub(crate) fn exit_status(command: &[String], exit_code: i32) -> Value {
    if exit_code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {exit_code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": exit_code.to_string()}]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        assert_eq!(
            parse_client(b"\x00abc\n", true),
            ClientMessage::Stdin(b"abc\n".to_vec())
        );
        assert_eq!(
            parse_client(b"\x04{\"Width\":80,\"Height\":24}", true),
            ClientMessage::Resize {
                width: 80,
                height: 24
            }
        );
        assert_eq!(parse_client(b"\xff\x00", true), ClientMessage::CloseChannel(0));
        assert_eq!(parse_client(b"\xff\x00", false), ClientMessage::Ignored);
        assert_eq!(parse_client(b"", true), ClientMessage::Ignored);
    }

    #[test]
    fn framing_prefixes_the_channel() {
        let Message::Binary(b) = channel_message(2, b"oops") else {
            panic!("not binary")
        };
        assert_eq!(&b[..], b"\x02oops");
    }

    #[test]
    fn exit_codes_as_kubectl_reads_them() {
        let s = exit_status(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(&[], 0)["status"], "Success");
        assert_eq!(
            choose(&["v4.channel.k8s.io".into(), V5.into()], &[V5, V4]),
            Some(V5)
        );
        assert_eq!(choose(&["channel.k8s.io".into()], &[V5, V4]), None);
    }
}
