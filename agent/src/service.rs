//! The `splitinfer.v1.Agent` gRPC service: subscriptions (one task per stream), acknowledgements,
//! status, overrides and the UEs' progress reports, all on the shared
//! [`AgentState`](crate::state::AgentState).

use std::sync::Arc;
use std::time::Instant;

use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::agent_server::Agent;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::ControlToken;
use crate::error::AgentError;
use crate::state::{Shared, decision_epoch};

pub struct AgentService {
    pub(crate) state: Arc<Shared>,
    /// `None`: overrides are disabled.
    pub(crate) control_token: Option<ControlToken>,
    pub(crate) shutdown: CancellationToken,
}

impl AgentService {
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        splitinfer_telemetry::auth::check(self.control_token.as_ref(), request.metadata())
            .map_err(|d| d.status("Override", "--control-token (AGENT_CONTROL_TOKEN)"))
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    type SubscribeStream = ReceiverStream<Result<pb::Decision, Status>>;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = request.into_inner();
        let role = pb::Role::try_from(req.role).unwrap_or(pb::Role::Unspecified);
        let sub = self.state.lock().subscribe(&req.subscriber, role, req.last_epoch)?;
        tracing::info!(subscriber = %req.subscriber, role = role.as_str_name(), last_epoch = req.last_epoch, "subscribed");
        let (tx, rx) = mpsc::channel(4);
        let (state, shutdown, name) = (self.state.clone(), self.shutdown.clone(), req.subscriber);
        tokio::spawn(async move {
            let mut decisions = sub.decisions;
            let mut next = sub.current;
            let ending = loop {
                if let Some(d) = next.take() {
                    tokio::select! {
                        r = tx.send(Ok(d)) => {
                            if r.is_err() {
                                break None;
                            }
                        }
                        () = shutdown.cancelled() => break Some(Status::unavailable("the agent is shutting down")),
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => break Some(Status::unavailable("the agent is shutting down")),
                    () = sub.replaced.cancelled() => break Some(Status::aborted(format!("subscription {name:?} was replaced by a newer one under the same name"))),
                    () = tx.closed() => break None,
                    r = decisions.changed() => match r {
                        Ok(()) => next = decisions.borrow_and_update().clone(),
                        Err(_) => break None,
                    },
                }
            };
            if let Some(status) = ending {
                // Best effort: a client that stopped reading does not hold the shutdown up.
                let _ = tx.try_send(Err(status));
            }
            state.lock().disconnect(&name, sub.generation);
            tracing::info!(subscriber = %name, "subscription ended");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let req = request.into_inner();
        self.state.lock().ack(&req.subscriber, req.epoch, req.k)?;
        Ok(Response::new(pb::AckResponse {}))
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::AgentStatus>, Status> {
        Ok(Response::new(self.state.lock().status(request.into_inner().history)))
    }

    async fn r#override(&self, request: Request<pb::OverrideRequest>) -> Result<Response<pb::OverrideResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let mut state = self.state.lock();
        let decision = match req.action {
            Some(pb::override_request::Action::PinK(k)) => {
                let d = state.pin(k, req.reason.trim(), Instant::now())?;
                tracing::info!(k, epoch = decision_epoch(&d), reason = %req.reason, "override: k pinned");
                Some(d)
            }
            Some(pb::override_request::Action::Release(true)) => state.release(),
            Some(pb::override_request::Action::Release(false)) | None => {
                return Err(AgentError::InvalidArgument("give an action: pin_k (0..=L) or release: true".into()).into());
            }
        };
        Ok(Response::new(pb::OverrideResponse { decision }))
    }

    async fn report(&self, request: Request<pb::ReportRequest>) -> Result<Response<pb::ReportResponse>, Status> {
        let now = crate::state::unix_ms();
        self.state.lock().timeline_mut().report(request.into_inner(), now)?;
        Ok(Response::new(pb::ReportResponse {}))
    }
}
