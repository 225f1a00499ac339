//! The node's session: one mutual-TLS stream to the node gate for as long as both are up.
//!
//! A report goes first, then heartbeats every `heartbeat_seconds` of the Welcome; every few
//! heartbeats the report is rebuilt and sent again if anything in it changed. The session ends
//! when the stream breaks (the caller reconnects with back-off) or when the control plane
//! refuses the node's certificate (the caller joins again).

use std::time::Duration;

use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::node_gate_client::NodeGateClient;
use keel_proto::node_message::Msg as NodeMsg;
use keel_proto::{ControlMessage, Heartbeat, NodeMessage, NodeReport};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::identity::{self, Identity};
use super::join::error_chain;
use super::link::{DesiredSet, SessionLink};
use super::report::Reporter;
use super::tls::{self, CertRejected, ServerAddr, Trust};

/// Reports are rebuilt every this many heartbeats.
const REPORT_EVERY: u32 = 6;

/// How a session ended.
#[derive(Debug)]
pub enum Ended {
    /// The stream broke or never came up; `established` says whether it reached the Welcome.
    Broken { reason: String, established: bool },
    /// The control plane refused this node's certificate: join again.
    Rejected(String),
}

fn msg(m: NodeMsg) -> NodeMessage {
    NodeMessage { msg: Some(m) }
}

/// Runs one session, passing pods and reports through `link`. `on_welcome` is called once the
/// control plane has accepted it.
pub async fn run(
    id: &Identity,
    addr: &ServerAddr,
    reporter: &Reporter,
    link: &mut SessionLink,
    mut on_welcome: impl FnMut(),
) -> Ended {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if identity::expired(&id.cert_pem, now) {
        return Ended::Rejected("the node certificate has expired".into());
    }
    let cfg = match tls::client_config(Trust::Mutual {
        ca_pem: &id.ca_pem,
        cert_pem: &id.cert_pem,
        key_pem: &id.key_pem,
    }) {
        Ok(c) => c,
        Err(e) => return Ended::Rejected(format!("stored identity is unusable: {e}")),
    };
    let rejected = CertRejected::default();
    let channel = match tls::channel(addr, cfg, rejected.clone()).await {
        Ok(c) => c,
        Err(e) if rejected.get() || tls::refused_certificate(&e) => return Ended::Rejected(error_chain(&e)),
        Err(e) => {
            return Ended::Broken {
                reason: error_chain(&e),
                established: false,
            }
        }
    };
    let (tx, rx) = mpsc::channel::<NodeMessage>(8);
    let mut last_report: NodeReport = report_now(reporter, link);
    if tx.send(msg(NodeMsg::Report(last_report.clone()))).await.is_err() {
        return Ended::Broken {
            reason: "session channel closed".into(),
            established: false,
        };
    }
    let streams_channel = channel.clone();
    let mut inbound = match NodeGateClient::new(channel)
        .session(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return classify(s, false),
    };

    // The first message is the Welcome.
    let heartbeat = match inbound.message().await {
        Ok(Some(m)) => match m.msg {
            Some(ControlMsg::Welcome(w)) => {
                link.set_pod_cidr(&w.pod_cidr);
                Duration::from_secs(u64::from(w.heartbeat_seconds.max(1)))
            }
            _ => {
                return Ended::Broken {
                    reason: "the control plane did not start with a Welcome".into(),
                    established: false,
                }
            }
        },
        Ok(None) => {
            return Ended::Broken {
                reason: "the control plane closed the session".into(),
                established: false,
            }
        }
        Err(s) => return classify(s, false),
    };
    on_welcome();
    link.sessions.send_modify(|n| *n += 1);

    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the report just went out
    let mut beats: u32 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                beats = beats.wrapping_add(1);
                if beats.is_multiple_of(REPORT_EVERY) {
                    let report = report_now(reporter, link);
                    if report != last_report {
                        last_report = report.clone();
                        if tx.send(msg(NodeMsg::Report(report))).await.is_err() {
                            break;
                        }
                    }
                }
                if tx.send(msg(NodeMsg::Heartbeat(Heartbeat {}))).await.is_err() {
                    break;
                }
            }
            m = inbound.message() => match m {
                Ok(Some(ControlMessage { msg: Some(ControlMsg::Pods(p)) })) => {
                    let (set, bad) = DesiredSet::decode(&p);
                    if bad > 0 {
                        eprintln!("keel: {bad} pods of desired set v{} are not valid JSON; skipped", p.version);
                    }
                    link.desired.send_replace(Some(std::sync::Arc::new(set)));
                }
                Ok(Some(ControlMessage { msg: Some(ControlMsg::Welcome(w)) })) => link.set_pod_cidr(&w.pod_cidr),
                // logs / exec / attach / port-forward: answered on a Stream of their own.
                Ok(Some(ControlMessage { msg: Some(ControlMsg::StreamRequest(r)) })) => crate::streams::spawn(streams_channel.clone(), r),
                Ok(Some(ControlMessage { msg: Some(ControlMsg::Services(t)) })) => crate::net::network_agent::offer_services(t),
                Ok(Some(ControlMessage { msg: Some(ControlMsg::Policies(t)) })) => crate::net::netpol::offer(t),
                Ok(Some(ControlMessage { msg: Some(ControlMsg::Peers(p)) })) => {
                    link.peers.send_replace(Some(std::sync::Arc::new(p)));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ended::Broken { reason: "the control plane closed the session".into(), established: true },
                Err(s) => return classify(s, true),
            },
            // The pod network learned (or changed) its overlay endpoint: report at once.
            Ok(()) = link.overlay.changed() => {
                let report = report_now(reporter, link);
                if report != last_report {
                    last_report = report.clone();
                    if tx.send(msg(NodeMsg::Report(report))).await.is_err() {
                        break;
                    }
                }
            }
            Some(up) = link.up.recv() => {
                if tx.send(msg(up)).await.is_err() {
                    break;
                }
            }
        }
    }
    Ended::Broken {
        reason: "the session's send side closed".into(),
        established: true,
    }
}

/// The machine's facts plus what the pod network says about its overlay endpoint.
fn report_now(reporter: &Reporter, link: &mut SessionLink) -> NodeReport {
    let mut r = reporter.report();
    r.overlay = link.overlay.borrow_and_update().clone();
    r
}

fn classify(s: tonic::Status, established: bool) -> Ended {
    if tls::refused_certificate(&s) {
        return Ended::Rejected(format!("certificate refused: {}", error_chain(&s)));
    }
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => Ended::Rejected(s.message().to_string()),
        _ => Ended::Broken {
            reason: format!("{}: {}", s.code(), s.message()),
            established,
        },
    }
}
