//! The proxy: serves `splitinfer.v1.Edge`, opens a stream to the real edge for every session and
//! relays both ways, messages and final status alike.

use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::edge_client::EdgeClient;
use splitinfer_proto::v1::edge_server::Edge;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::link::{self, Clean, LinkStats};

pub struct Proxy {
    pub(crate) upstream: EdgeClient<Channel>,
    pub(crate) shutdown: CancellationToken,
}

type Reply = Result<pb::EdgeMessage, Status>;

#[tonic::async_trait]
impl Edge for Proxy {
    type GenerateStream = ReceiverStream<Reply>;

    async fn generate(&self, request: Request<Streaming<pb::UeMessage>>) -> Result<Response<Self::GenerateStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut from_ue = request.into_inner();
        let (to_edge, edge_rx) = mpsc::channel::<pb::UeMessage>(8);
        let (to_ue, ue_rx) = mpsc::channel::<Reply>(16);
        let mut upstream = self.upstream.clone();
        let shutdown = self.shutdown.clone();
        let span = tracing::info_span!("relay", %peer);

        tokio::spawn(
            async move {
                // UE → edge: decode each activation, let the link act on it, forward.
                let uplink = {
                    let to_ue = to_ue.clone();
                    async move {
                        let mut link = Clean;
                        let mut stats = LinkStats::default();
                        loop {
                            match from_ue.message().await {
                                Ok(Some(mut msg)) => {
                                    if let Some(pb::ue_message::Kind::Activation(a)) = msg.kind.as_mut() {
                                        link::on_activation(&mut link, &mut stats, a);
                                    }
                                    if to_edge.send(msg).await.is_err() {
                                        break;
                                    }
                                }
                                Ok(None) => break,
                                Err(status) => {
                                    // The UE's stream failed at the proxy (e.g. a message over the
                                    // limit): tell the UE; dropping `to_edge` ends the edge side.
                                    let _ = to_ue.send(Err(status)).await;
                                    break;
                                }
                            }
                        }
                        tracing::debug!(activations = stats.activations, bytes = stats.bytes, "uplink closed");
                    }
                };
                tokio::spawn(uplink.in_current_span());

                // Edge → UE: relay tokens and the final status.
                let mut from_edge = match upstream.generate(ReceiverStream::new(edge_rx)).await {
                    Ok(r) => r.into_inner(),
                    Err(status) => {
                        let _ = to_ue.send(Err(status)).await;
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            let _ = to_ue.send(Err(Status::unavailable("channel emulator is shutting down"))).await;
                            break;
                        }
                        m = from_edge.message() => match m {
                            Ok(Some(msg)) => {
                                if to_ue.send(Ok(msg)).await.is_err() {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(status) => {
                                let _ = to_ue.send(Err(status)).await;
                                break;
                            }
                        }
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(ue_rx)))
    }

    async fn info(&self, request: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        self.upstream.clone().info(request.into_inner()).await
    }
}
