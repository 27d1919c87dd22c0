//! The proxy: serves `splitinfer.v1.Edge`, opens a stream to the real edge for every session and
//! relays both ways, messages and final status alike.

use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::edge_client::EdgeClient;
use splitinfer_proto::v1::edge_server::Edge;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::hold::Hold;
use crate::link::{self, Clean, Impaired, LinkStats, Uplink};

pub struct Proxy {
    pub(crate) upstream: EdgeClient<Channel>,
    pub(crate) shutdown: CancellationToken,
    /// The current channel (switchable at run time) and the statistics.
    pub(crate) shared: std::sync::Arc<crate::control::Shared>,
    pub(crate) seed: u64,
    /// Sessions so far: session n draws from seed + n, so a run replays exactly.
    pub(crate) sessions: std::sync::atomic::AtomicU64,
    /// The largest message accepted, for the words of a refusal.
    pub(crate) max_message_bytes: usize,
    /// UE streams open now; with `shared_uplink` each gets an equal share of the uplink.
    pub(crate) active: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) shared_uplink: bool,
}

/// Counts a UE stream as open while it lives.
struct Active(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Active {
    fn new(n: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(n.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
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
        let n = self.sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shared = self.shared.clone();
        let down_shared = self.shared.clone();
        // Uplink air time held for the activations since the last token: the downlink stamps it
        // into that token, so the UE hears it from the emulator that measured it.
        let held_up = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let held_up_down = held_up.clone();
        let seed = self.seed;
        let max_message_bytes = self.max_message_bytes;
        let (active, shared_uplink) = (Active::new(&self.active), self.shared_uplink);
        // The link follows the shared channel: rebuilt when its version changes, so a switch
        // takes effect at the session's next message. Seeds stay a function of (seed, session,
        // version), so a run replays.
        let build = move |snap: &crate::control::Snapshot| -> Box<dyn Uplink> {
            match &snap.channel {
                Some(c) if !snap.paused => match splitinfer_link::channel::Channel::new(
                    c.clone(),
                    seed.wrapping_add(n).wrapping_add(snap.version.wrapping_mul(1_000_003)),
                ) {
                    Ok(channel) => Box::new(Impaired { channel }),
                    Err(e) => {
                        tracing::error!(error = %e, "invalid channel; passing through");
                        Box::new(Clean)
                    }
                },
                _ => Box::new(Clean),
            }
        };
        let mut snap = shared.snapshot();
        let mut link = build(&snap);
        let span = tracing::info_span!("relay", %peer, session = n);

        tokio::spawn(
            async move {
                // UE → edge: decode each activation, let the link act on it, forward.
                let uplink = {
                    let to_ue = to_ue.clone();
                    async move {
                        let mut stats = LinkStats::default();
                        let mut hold = Hold::new();
                        loop {
                            match from_ue.message().await {
                                Ok(Some(mut msg)) => {
                                    let now = shared.snapshot();
                                    if now.version != snap.version {
                                        snap = now;
                                        link = build(&snap);
                                    }
                                    if shared_uplink {
                                        link.set_sharers(active.0.load(std::sync::atomic::Ordering::Relaxed));
                                    }
                                    let started = std::time::Instant::now();
                                    let (kind, delay) = match msg.kind.as_mut() {
                                        Some(pb::ue_message::Kind::Activation(a)) => ("activation", link::on_activation(link.as_mut(), &mut stats, a, &shared)),
                                        Some(pb::ue_message::Kind::Migrate(m)) => ("migrate", link::on_migrate(link.as_mut(), &mut stats, m, &shared)),
                                        _ => ("open", std::time::Duration::ZERO),
                                    };
                                    shared.relay.processed(kind, started.elapsed());
                                    if !delay.is_zero() {
                                        // Report what was really held: the timer's overshoot
                                        // is part of the delay.
                                        let held = hold.hold(delay).await;
                                        shared.relay.held("up", held);
                                        if let Some(pb::ue_message::Kind::Activation(a)) = msg.kind.as_mut() {
                                            a.uplink_delay_us = held.as_micros() as u64;
                                            held_up.fetch_add(a.uplink_delay_us, std::sync::atomic::Ordering::Relaxed);
                                        }
                                    }
                                    if to_edge.send(msg).await.is_err() {
                                        break;
                                    }
                                }
                                Ok(None) => break,
                                Err(status) => {
                                    // The UE's stream failed at the proxy (e.g. a message over the
                                    // limit): tell the UE; dropping `to_edge` ends the edge side.
                                    let _ = to_ue.send(Err(from_ue_status(status, max_message_bytes))).await;
                                    break;
                                }
                            }
                        }
                        tracing::info!(
                            activations = stats.activations,
                            bytes = stats.bytes,
                            packets = stats.packets,
                            lost_packets = stats.lost_packets,
                            retransmissions = stats.retransmissions,
                            airtime_ms = stats.airtime.as_secs_f64() * 1e3,
                            "uplink closed"
                        );
                    }
                };
                tokio::spawn(uplink.in_current_span());

                // Edge → UE: relay tokens and the final status.
                let mut from_edge = match upstream.generate(ReceiverStream::new(edge_rx)).await {
                    Ok(r) => r.into_inner(),
                    Err(status) => {
                        let _ = to_ue.send(Err(from_edge_status(status))).await;
                        return;
                    }
                };
                let mut down_hold = Hold::new();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            let _ = to_ue.send(Err(Status::unavailable("channel emulator is shutting down"))).await;
                            break;
                        }
                        m = from_edge.message() => match m {
                            Ok(Some(mut msg)) => {
                                // The downlink is reliable but not instant: token ids take the
                                // channel's propagation delay; moved KV caches (a split change
                                // toward the UE) their serialization time too.
                                let now = down_shared.snapshot();
                                if let Some(c) = now.channel.filter(|_| !now.paused) {
                                    let mut delay = c.link.propagation();
                                    if let Some(pb::edge_message::Kind::Migrated(m)) = &msg.kind {
                                        let bits = (prost::Message::encoded_len(m) * 8) as f64;
                                        delay += std::time::Duration::from_secs_f64(c.link.serialization_s(bits, 10f64.powf(c.snr_db / 10.0)));
                                    }
                                    let held = down_hold.hold(delay).await;
                                    down_shared.relay.held("down", held);
                                    match msg.kind.as_mut() {
                                        Some(pb::edge_message::Kind::Token(t)) => t.downlink_delay_us = held.as_micros() as u64,
                                        Some(pb::edge_message::Kind::Scores(s)) => s.downlink_delay_us = held.as_micros() as u64,
                                        _ => {}
                                    }
                                }
                                let up = || held_up_down.swap(0, std::sync::atomic::Ordering::Relaxed);
                                match msg.kind.as_mut() {
                                    Some(pb::edge_message::Kind::Token(t)) => t.uplink_delay_us = up(),
                                    Some(pb::edge_message::Kind::Scores(s)) => s.uplink_delay_us = up(),
                                    _ => {}
                                }
                                if to_ue.send(Ok(msg)).await.is_err() {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(status) => {
                                let _ = to_ue.send(Err(from_edge_status(status))).await;
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

/// What the UE hears when its own stream fails at the emulator: a message over the limit is
/// RESOURCE_EXHAUSTED, as the edge says it (tonic's decoder calls it OUT_OF_RANGE).
fn from_ue_status(s: Status, limit: usize) -> Status {
    if s.code() == Code::OutOfRange && s.message().contains("too large") {
        Status::resource_exhausted(format!("message exceeds the channel emulator's limit of {limit} bytes (EMU_MAX_MESSAGE_BYTES): {}", s.message()))
    } else {
        s
    }
}

/// What the UE hears when the edge side fails. The edge's own refusals keep their code; a broken
/// connection to the edge (which h2 and hyper report as UNKNOWN, e.g. "h2 protocol error") is a
/// lost link, UNAVAILABLE, so the UE knows to resume or fail over.
fn from_edge_status(s: Status) -> Status {
    match s.code() {
        Code::Unknown | Code::Cancelled => Status::unavailable(format!("the channel emulator lost its link to the edge: {}", s.message())),
        _ => s,
    }
}
