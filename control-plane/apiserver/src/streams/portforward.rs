//! `pods/portforward` over a WebSocket, in its two forms:
//!
//! * `SPDY/3.1+portforward.k8s.io` (kubectl ≥ 1.31): the messages carry SPDY/3.1 frames
//!   ([`super::spdy`]). Per local connection the client opens two streams with headers
//!   `streamtype: error|data`, `port`, `requestid`; once both are there, the pair is one
//!   connection to the port inside the pod: the data stream's bytes go both ways, a failure is
//!   written on the error stream.
//! * `portforward.k8s.io` / `v4.channel.k8s.io` with `?ports=80,1234` (other clients): one
//!   connection per port, channels `2i` (data) and `2i+1` (error), each announced by the server
//!   with the port number as two little-endian bytes.

use std::collections::HashMap;

use futures::channel::mpsc as fmpsc;
use futures::{SinkExt, StreamExt};
use http::Response;
use keel_api::status::{ApiError, ApiResult};
use keel_api::streams::{Down, NodeStream, PodStreams, StreamOp, StreamTarget, Up};
use serde_json::Value;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;

use super::spdy::{self, Frame};
use super::websocket;
use super::{pods, target, StreamRequest};
use crate::http::Body;
use crate::Objects;

const SPDY_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
const CHANNEL_PROTOCOLS: [&str; 3] = ["portforward.k8s.io", websocket::V4, websocket::V5];

pub(crate) async fn open(
    objects: &Objects,
    ns: &str,
    name: &str,
    r: &StreamRequest<'_>,
) -> ApiResult<Response<Body>> {
    let Some(upgrade) = r.upgrade else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let pod = objects.get(pods()?, Some(ns), name).await?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if phase != "Running" {
        return Err(ApiError::bad_request(format!(
            "unable to forward ports: pod {name} is not running (phase {phase:?})"
        )));
    }
    let target = target(&pod, ns, name, String::new())?;
    let streams = r.streams()?.clone();
    let mut preferred = vec![SPDY_PROTOCOL];
    preferred.extend(CHANNEL_PROTOCOLS);
    let Some(protocol) = websocket::choose(&upgrade.protocols, &preferred) else {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade: none of the offered subprotocols {:?} is supported (want {SPDY_PROTOCOL} or portforward.k8s.io)",
            upgrade.protocols
        )));
    };
    let ports = if protocol == SPDY_PROTOCOL {
        Vec::new()
    } else {
        let ports = ports(&r.all("ports"))?;
        if ports.is_empty() {
            return Err(ApiError::bad_request(
                "at least 1 port must be specified (query parameter ports)",
            ));
        }
        // Two channels per port, numbered by one byte.
        if ports.len() > 127 {
            return Err(ApiError::bad_request(
                "at most 127 ports can be forwarded over one connection",
            ));
        }
        ports
    };
    let on_upgrade = upgrade
        .take()
        .ok_or_else(|| ApiError::internal("the connection cannot be upgraded"))?;
    let resp = upgrade.switching(protocol)?;
    let spdy_form = protocol == SPDY_PROTOCOL;
    tokio::spawn(async move {
        let Some(ws) = websocket::accept(on_upgrade).await else {
            return;
        };
        if spdy_form {
            spdy_session(ws, streams, target).await;
        } else {
            channel_session(ws, streams, target, ports).await;
        }
    });
    Ok(resp)
}

/// `ports=80,8080&ports=9090` → [80, 8080, 9090].
fn ports(values: &[String]) -> ApiResult<Vec<u16>> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "unable to parse {p:?} as a port number"
            ))),
        })
        .collect()
}

/// What a forwarded connection reports to the session loop.
enum Event {
    /// Bytes from the pod for this connection.
    Data(u32, Vec<u8>),
    /// The pod's side ended; with an error message if it failed.
    Ended(u32, Option<String>),
}

async fn connect(
    streams: &Arc<dyn PodStreams>,
    target: &StreamTarget,
    port: u16,
) -> Result<NodeStream, String> {
    streams
        .open(target.clone(), StreamOp::PortForward { port })
        .await
        .map_err(|e| e.message)
}

/// Pumps one connection's node stream into `events` under `key`.
fn pump_down(mut down: fmpsc::Receiver<Down>, key: u32, mut events: fmpsc::Sender<Event>) {
    tokio::spawn(async move {
        let mut error = None;
        while let Some(d) = down.next().await {
            match d {
                Down::Data(_, data) => {
                    if events.send(Event::Data(key, data)).await.is_err() {
                        return;
                    }
                }
                Down::Close(_) => {}
                Down::End(end) => {
                    error = end.error.map(|e| e.message);
                    break;
                }
            }
        }
        let _ = events.send(Event::Ended(key, error)).await;
    });
}

/// One forwarded connection of the SPDY form.
struct Pair {
    port: u16,
    error_stream: Option<u32>,
    data_stream: Option<u32>,
    up: Option<fmpsc::Sender<Up>>,
    /// What the client sent before the node's connection was open.
    pending: Vec<Up>,
    started: bool,
}

impl Pair {
    async fn send(&mut self, msg: Up) {
        match self.up.as_mut() {
            Some(up) => {
                let _ = up.send(msg).await;
            }
            None => self.pending.push(msg),
        }
    }
}

async fn spdy_session(ws: websocket::Ws, streams: Arc<dyn PodStreams>, target: StreamTarget) {
    let (mut sink, mut source) = ws.split();
    let (events_tx, mut events) = fmpsc::channel::<Event>(64);
    let (opened_tx, mut opened) = fmpsc::channel::<(String, Result<NodeStream, String>)>(16);
    let mut reader = spdy::Reader::default();
    let mut deflater = spdy::HeaderDeflater::default();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Data stream id → request id, for frames from the client.
    let mut by_stream: HashMap<u32, String> = HashMap::new();
    loop {
        let mut out: Vec<Vec<u8>> = Vec::new();
        tokio::select! {
            m = source.next() => {
                let bytes = match m {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                reader.push(&bytes);
                loop {
                    let frame = match reader.next_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "port-forward: bad SPDY from the client");
                            let _ = sink.send(websocket::normal_close()).await;
                            return;
                        }
                    };
                    match frame {
                        Frame::SynStream { stream_id, headers, .. } => {
                            let h = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                            let (Some(kind), Some(port)) = (h("streamtype"), h("port")) else {
                                out.push(spdy::rst_stream(stream_id, spdy::PROTOCOL_ERROR));
                                continue;
                            };
                            let Ok(port) = port.parse::<u16>() else {
                                out.push(spdy::rst_stream(stream_id, spdy::PROTOCOL_ERROR));
                                continue;
                            };
                            out.push(spdy::syn_reply(stream_id, &mut deflater));
                            let request = h("requestid").unwrap_or_default();
                            let pair = pairs.entry(request.clone()).or_insert(Pair {
                                port,
                                error_stream: None,
                                data_stream: None,
                                up: None,
                                pending: Vec::new(),
                                started: false,
                            });
                            match kind.as_str() {
                                "error" => pair.error_stream = Some(stream_id),
                                "data" => {
                                    pair.data_stream = Some(stream_id);
                                    by_stream.insert(stream_id, request.clone());
                                }
                                _ => {
                                    out.push(spdy::rst_stream(stream_id, spdy::PROTOCOL_ERROR));
                                    continue;
                                }
                            }
                            if pair.error_stream.is_some() && pair.data_stream.is_some() && !pair.started {
                                pair.started = true;
                                let (streams, target, mut opened_tx) = (streams.clone(), target.clone(), opened_tx.clone());
                                tokio::spawn(async move {
                                    let r = connect(&streams, &target, port).await;
                                    let _ = opened_tx.send((request, r)).await;
                                });
                            }
                        }
                        Frame::Data { stream_id, fin, data } => {
                            if let Some(pair) = by_stream.get(&stream_id).and_then(|r| pairs.get_mut(r)) {
                                if !data.is_empty() {
                                    out.push(spdy::window_update(stream_id, data.len() as u32));
                                    pair.send(Up::Data(0, data)).await;
                                }
                                if fin {
                                    pair.send(Up::Close(0)).await;
                                }
                            }
                        }
                        Frame::RstStream { stream_id, .. } => {
                            if let Some(r) = by_stream.remove(&stream_id) {
                                pairs.remove(&r); // dropping `up` ends the node's connection
                            }
                        }
                        Frame::Ping(id) => out.push(spdy::ping(id)),
                        Frame::GoAway => break,
                        Frame::SynReply { .. } | Frame::Ignored => {}
                    }
                }
            }
            Some((request, result)) = opened.next() => {
                let Some(pair) = pairs.get_mut(&request) else { continue };
                let (Some(data_sid), Some(err_sid)) = (pair.data_stream, pair.error_stream) else { continue };
                match result {
                    Ok(stream) => {
                        let mut up = stream.up;
                        for msg in pair.pending.drain(..) {
                            let _ = up.send(msg).await;
                        }
                        pair.up = Some(up);
                        pump_down(stream.down, data_sid, events_tx.clone());
                    }
                    Err(message) => {
                        let text = format!("error forwarding port {} to pod {}: {message}", pair.port, target.pod);
                        out.push(spdy::data(err_sid, true, text.as_bytes()));
                        out.push(spdy::data(data_sid, true, b""));
                        by_stream.remove(&data_sid);
                        pairs.remove(&request);
                    }
                }
            }
            Some(event) = events.next() => match event {
                Event::Data(sid, data) => {
                    for chunk in data.chunks(32 * 1024) {
                        out.push(spdy::data(sid, false, chunk));
                    }
                }
                Event::Ended(sid, error) => {
                    if let Some(request) = by_stream.remove(&sid) {
                        if let Some(pair) = pairs.remove(&request) {
                            if let (Some(message), Some(err_sid)) = (error, pair.error_stream) {
                                let text = format!("error forwarding port {} to pod {}: {message}", pair.port, target.pod);
                                out.push(spdy::data(err_sid, false, text.as_bytes()));
                            }
                            if let Some(err_sid) = pair.error_stream {
                                out.push(spdy::data(err_sid, true, b""));
                            }
                        }
                    }
                    out.push(spdy::data(sid, true, b""));
                }
            },
        }
        for frame in out {
            if sink.send(Message::Binary(frame.into())).await.is_err() {
                return;
            }
        }
    }
    let _ = sink.send(websocket::normal_close()).await;
}

async fn channel_session(
    ws: websocket::Ws,
    streams: Arc<dyn PodStreams>,
    target: StreamTarget,
    ports: Vec<u16>,
) {
    let (mut sink, mut source) = ws.split();
    let (events_tx, mut events) = fmpsc::channel::<Event>(64);
    // Announce every channel with its port, as the kubelet does.
    for (i, port) in ports.iter().enumerate() {
        for channel in [2 * i, 2 * i + 1] {
            let msg = websocket::channel_message(channel as u8, &port.to_le_bytes());
            if sink.send(msg).await.is_err() {
                return;
            }
        }
    }
    let mut ups: Vec<Option<fmpsc::Sender<Up>>> = Vec::new();
    let mut open = 0;
    for (i, port) in ports.iter().enumerate() {
        match connect(&streams, &target, *port).await {
            Ok(stream) => {
                ups.push(Some(stream.up));
                pump_down(stream.down, i as u32, events_tx.clone());
                open += 1;
            }
            Err(message) => {
                ups.push(None);
                let text = format!("error forwarding port {port} to pod {}: {message}", target.pod);
                let _ = sink
                    .send(websocket::channel_message((2 * i + 1) as u8, text.as_bytes()))
                    .await;
            }
        }
    }
    drop(events_tx);
    while open > 0 {
        tokio::select! {
            m = source.next() => match m {
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                    let b = m.into_data();
                    let Some((&channel, data)) = b.split_first() else { continue };
                    let i = usize::from(channel / 2);
                    if channel % 2 == 0 && !data.is_empty() {
                        if let Some(Some(up)) = ups.get_mut(i) {
                            let _ = up.send(Up::Data(0, data.to_vec())).await;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            e = events.next() => match e {
                Some(Event::Data(i, data)) => {
                    if sink.send(websocket::channel_message((2 * i) as u8, &data)).await.is_err() {
                        return;
                    }
                }
                Some(Event::Ended(i, error)) => {
                    open -= 1;
                    if let Some(message) = error {
                        let port = ports.get(i as usize).copied().unwrap_or_default();
                        let text = format!("error forwarding port {port} to pod {}: {message}", target.pod);
                        let _ = sink.send(websocket::channel_message((2 * i + 1) as u8, text.as_bytes())).await;
                    }
                    if let Some(slot) = ups.get_mut(i as usize) {
                        *slot = None;
                    }
                }
                None => break,
            },
        }
    }
    let _ = sink.send(websocket::normal_close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_like_the_kubelet() {
        assert_eq!(
            ports(&["80,8080".into(), "9090".into()]).unwrap(),
            vec![80, 8080, 9090]
        );
        assert!(ports(&["0".into()]).is_err());
        assert!(ports(&["http".into()]).is_err());
        assert!(ports(&[]).unwrap().is_empty());
    }
}
