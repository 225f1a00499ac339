//! The `NodeGate` gRPC service: thin glue from RPCs to [`crate::join`] and [`crate::session`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_proto::node_gate_server::NodeGate;
use keel_proto::{
    stream_frame, ClusterInfo, ClusterInfoRequest, ControlMessage, JoinRequest, JoinResponse, NodeMessage,
    RenewRequest, StreamFrame,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::gate::Gate;
use crate::tls::PeerInfo;
use crate::{join, session};

pub(crate) struct Service {
    pub gate: Arc<Gate>,
}

/// The node name of the request's client certificate.
fn node_identity<T>(req: &Request<T>) -> Result<String, Status> {
    let cert = req
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.client_cert.as_ref())
        .ok_or_else(|| Status::unauthenticated("a node session needs the node's client certificate"))?;
    let user = keel_auth::authenticate_cert(cert)
        .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
    user.node_name().map(str::to_string).ok_or_else(|| {
        Status::permission_denied(format!(
            "{} is not a node identity (want CN system:node:<name>, O system:nodes)",
            user.name
        ))
    })
}

#[tonic::async_trait]
impl NodeGate for Service {
    async fn get_cluster_info(
        &self,
        _req: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        Ok(Response::new(ClusterInfo {
            ca_pem: self.gate.pki.ca_pem().to_string(),
            cluster_name: self.gate.cluster_name.clone(),
        }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        join::join(&self.gate, req.into_inner()).await.map(Response::new)
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<JoinResponse>, Status> {
        let node = node_identity(&req)?;
        let csr = req.into_inner().csr_der;
        let issued = self.gate.pki.sign_node_csr(&csr, &node).map_err(|e| {
            tracing::info!(node = %node, error = %e, "renewal refused");
            Status::invalid_argument(format!("renewal refused: {e}"))
        })?;
        tracing::info!(node = %node, "renewed node client certificate");
        let user = keel_auth::UserInfo::authenticated(
            format!("{}{node}", keel_auth::NODE_USER_PREFIX),
            String::new(),
            vec![keel_auth::GROUP_NODES.to_string()],
        );
        join::record_csr(
            &self.gate,
            &node,
            &csr,
            &user,
            &issued.pem,
            join::Approval::Renewal,
        )
        .await;
        Ok(Response::new(JoinResponse {
            certificate_pem: issued.pem,
            ca_pem: self.gate.pki.ca_pem().to_string(),
            node_name: node,
        }))
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<StreamFrame, Status>> + Send + 'static>>;

    /// A node answers a `StreamRequest` of its session: the first frame names the request.
    async fn stream(
        &self,
        req: Request<Streaming<StreamFrame>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let node = node_identity(&req)?;
        let mut inbound = req.into_inner();
        let id = match tokio::time::timeout(crate::streams::ANSWER_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(StreamFrame {
                frame: Some(stream_frame::Frame::Open(id)),
            }))) => id,
            Ok(Err(s)) => return Err(s),
            _ => return Err(Status::invalid_argument("a stream starts with `open`")),
        };
        let (tx, rx) = mpsc::channel(16);
        self.gate.streams.answer(&node, &id, inbound, tx)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type SessionStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send + 'static>>;

    async fn session(
        &self,
        req: Request<Streaming<NodeMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let node = node_identity(&req)?;
        let (tx, rx) = mpsc::channel(16);
        let (welcome, told_cidr) = session::welcome(&self.gate, &node).await;
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::internal("session closed before it started"))?;
        tokio::spawn(session::run(
            self.gate.clone(),
            node,
            told_cidr,
            req.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
