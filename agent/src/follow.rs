//! The subscriber side, for the UE and the edge: follow an agent's decisions and acknowledge the
//! ones applied, over reconnections and agent restarts.
//!
//! The follower never fails: while the agent is absent there are simply no new decisions, and
//! the last one received stays the latest (docs/design.md, Online agent: the UE and the edge keep the last split
//! they had). Epochs only ever increase here; a decision whose epoch is not above the latest is
//! dropped.
//!
//! A UE also hands the follower its progress ([`Follower::report`]), which goes to the agent's
//! `Report` for the dashboard; an agent that predates `Report` is asked once.
//!
//! On every (re)subscription the follower reports as `last_epoch` the highest epoch it has
//! acknowledged or received. The agent only logs it when it is above its own counter: a restarted
//! agent numbers above its previous run from the wall clock (`state::epoch_base`), never from
//! what a subscriber says.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::agent_client::AgentClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use splitinfer_telemetry::Tls;
use tonic::transport::{Channel, Endpoint};

use crate::backoff::Backoff;
use crate::state::decision_epoch;

/// A subscription to the agent, kept up in the background. Cheap to clone.
#[derive(Clone)]
pub struct Follower {
    inner: Arc<Inner>,
}

struct Inner {
    decisions: watch::Sender<Option<pb::Decision>>,
    /// The highest (epoch, k) applied, to acknowledge.
    applied: watch::Sender<Option<(u64, u32)>>,
    /// The latest progress report not sent yet.
    progress: watch::Sender<Option<pb::ReportRequest>>,
    /// The agent answered `Report` with UNIMPLEMENTED: it predates it.
    reports_refused: AtomicBool,
    connected: AtomicBool,
}

impl Follower {
    /// Subscribes to the agent at `url` as `name` with `role`; reconnects with backoff (200 ms
    /// doubling to 5 s) forever until `shutdown` is cancelled, resubscribing with the highest epoch
    /// acknowledged or received so far as `last_epoch`. Never fails: an absent agent just means no
    /// decisions. Must be called within a Tokio runtime.
    pub fn spawn(url: String, name: String, role: pb::Role, shutdown: CancellationToken) -> Self {
        Self::spawn_tls(url, Tls::default(), name, role, shutdown)
    }

    /// [`Follower::spawn`] dialing with `tls` (an `https://` URL needs its CA).
    pub fn spawn_tls(url: String, tls: Tls, name: String, role: pb::Role, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            decisions: watch::channel(None).0,
            applied: watch::channel(None).0,
            progress: watch::channel(None).0,
            reports_refused: AtomicBool::new(false),
            connected: AtomicBool::new(false),
        });
        tokio::spawn(follow(inner.clone(), url, tls, name, role, shutdown));
        Self { inner }
    }

    /// The latest decision received (epochs only ever increase here: an older or equal epoch is
    /// dropped). If there is one already, the receiver reports it as changed, so a loop on
    /// `changed()` sees it first.
    pub fn decisions(&self) -> watch::Receiver<Option<pb::Decision>> {
        let mut rx = self.inner.decisions.subscribe();
        if rx.borrow().is_some() {
            rx.mark_changed();
        }
        rx
    }

    /// The latest decision received, without subscribing to changes.
    pub fn latest(&self) -> Option<pb::Decision> {
        self.inner.decisions.borrow().clone()
    }

    /// Records that `epoch` with `k` was applied and acknowledges it to the agent in the
    /// background; if the agent is unreachable, the acknowledgement is sent after reconnecting.
    /// Only the highest epoch counts: acknowledging an older one after a newer one does nothing.
    /// Non-blocking.
    pub fn ack(&self, epoch: u64, k: u32) {
        self.inner.applied.send_if_modified(|a| {
            let newer = a.is_none_or(|(e, _)| epoch > e);
            if newer {
                *a = Some((epoch, k));
            }
            newer
        });
    }

    /// Sends a UE's progress to the agent in the background (the latest one only, if several come
    /// while one is on its way or the agent is unreachable). Nothing is sent once the agent has
    /// answered that it does not know `Report`. Non-blocking.
    pub fn report(&self, report: pb::ReportRequest) {
        if !self.inner.reports_refused.load(Ordering::Relaxed) {
            self.inner.progress.send_replace(Some(report));
        }
    }

    /// Whether the subscription stream to the agent is up.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }
}

async fn follow(inner: Arc<Inner>, url: String, tls: Tls, name: String, role: pb::Role, shutdown: CancellationToken) {
    let endpoint = match tls.endpoint(&url) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(2))
            // Finds an agent whose host vanished without closing the connection.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true),
        Err(e) => {
            tracing::error!(agent = %url, error = %e, "cannot dial the agent; following no agent");
            return;
        }
    };
    let mut applied = inner.applied.subscribe();
    let mut progress = inner.progress.subscribe();
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    loop {
        let why = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            why = session(&inner, &endpoint, &name, role, &mut applied, &mut progress, &mut backoff) => why,
        };
        if inner.connected.swap(false, Ordering::Relaxed) {
            failures = 1;
            tracing::info!(agent = %url, subscriber = %name, reason = %why, "disconnected from the agent; keeping the last decision, reconnecting");
        } else {
            failures += 1;
            if failures == 1 {
                tracing::info!(agent = %url, subscriber = %name, reason = %why, "agent not reachable; retrying with backoff");
            } else {
                tracing::debug!(agent = %url, subscriber = %name, reason = %why, "agent retry failed");
            }
        }
        if !backoff.wait(&shutdown).await {
            break;
        }
    }
    inner.connected.store(false, Ordering::Relaxed);
}

/// One subscription: decisions in, acknowledgements out, until something breaks; returns what.
async fn session(
    inner: &Arc<Inner>,
    endpoint: &Endpoint,
    name: &str,
    role: pb::Role,
    applied: &mut watch::Receiver<Option<(u64, u32)>>,
    progress: &mut watch::Receiver<Option<pb::ReportRequest>>,
    backoff: &mut Backoff,
) -> String {
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return format!("cannot connect: {e}"),
    };
    let mut client = AgentClient::new(channel);
    let received = inner.decisions.borrow().as_ref().map_or(0, decision_epoch);
    let last_epoch = applied.borrow().map_or(0, |a| a.0).max(received);
    let request = pb::SubscribeRequest { subscriber: name.to_string(), role: role.into(), last_epoch };
    let mut stream = match client.subscribe(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return format!("Subscribe refused: {:?}: {}", s.code(), s.message()),
    };
    inner.connected.store(true, Ordering::Relaxed);
    backoff.reset();
    tracing::info!(agent = %endpoint.uri(), subscriber = name, last_epoch, "subscribed to the agent");
    // Whatever was applied is (re)acknowledged to this agent, which may be a restarted one.
    applied.mark_changed();
    // And the latest progress, which may predate the connection (the dashboard wants the latest).
    if progress.borrow().is_some() {
        progress.mark_changed();
    }
    let mut acked_here = 0u64;
    loop {
        tokio::select! {
            m = stream.message() => match m {
                Ok(Some(d)) => receive(inner, d),
                Ok(None) => return "the agent ended the stream".into(),
                Err(s) => return format!("stream broke: {:?}: {}", s.code(), s.message()),
            },
            r = applied.changed() => {
                if r.is_err() {
                    return "follower dropped".into();
                }
                let latest = *applied.borrow_and_update();
                if let Some((epoch, k)) = latest.filter(|a| a.0 > acked_here) {
                    match send_ack(&mut client, name, epoch, k).await {
                        Ok(()) => acked_here = epoch,
                        Err(why) => return why,
                    }
                }
            }
            r = progress.changed() => {
                if r.is_err() {
                    return "follower dropped".into();
                }
                let report = progress.borrow_and_update().clone();
                if let Some(report) = report {
                    // In a task of its own: a report never holds up a decision.
                    tokio::spawn(send_report(inner.clone(), client.clone(), report));
                }
            }
        }
    }
}

fn receive(inner: &Inner, d: pb::Decision) {
    let epoch = decision_epoch(&d);
    let k = d.split.map_or(0, |s| s.k);
    inner.decisions.send_if_modified(|cur| {
        let newer = cur.as_ref().is_none_or(|c| decision_epoch(c) < epoch);
        if newer {
            tracing::info!(epoch, k, reason = %d.reason, "split decision received");
            *cur = Some(d);
        } else {
            tracing::debug!(epoch, latest = cur.as_ref().map_or(0, decision_epoch), "dropped a decision not newer than the latest");
        }
        newer
    });
}

/// One progress report; a failure is only logged (the next report replaces this one).
async fn send_report(inner: Arc<Inner>, mut client: AgentClient<Channel>, report: pb::ReportRequest) {
    match tokio::time::timeout(Duration::from_secs(5), client.report(report)).await {
        Ok(Ok(_)) => {}
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
            if !inner.reports_refused.swap(true, Ordering::Relaxed) {
                tracing::info!("the agent predates progress reports (Agent/Report); not sending them");
            }
        }
        Ok(Err(s)) => tracing::debug!(code = ?s.code(), error = s.message(), "progress report failed"),
        Err(_) => tracing::debug!("progress report timed out"),
    }
}

/// Ok when delivered or refused for good (logged); Err(why) when the connection should be
/// re-established and the acknowledgement sent again.
async fn send_ack(client: &mut AgentClient<Channel>, name: &str, epoch: u64, k: u32) -> Result<(), String> {
    let request = pb::AckRequest { subscriber: name.to_string(), epoch, k };
    match tokio::time::timeout(Duration::from_secs(5), client.ack(request)).await {
        Ok(Ok(_)) => {
            tracing::debug!(epoch, k, "acknowledged");
            Ok(())
        }
        Ok(Err(s)) if s.code() == tonic::Code::InvalidArgument => {
            // Retrying cannot help: the agent says this (epoch, k) is not one of its decisions.
            tracing::warn!(epoch, k, error = s.message(), "the agent refused the acknowledgement");
            Ok(())
        }
        Ok(Err(s)) => Err(format!("Ack failed: {:?}: {}", s.code(), s.message())),
        Err(_) => Err("Ack timed out".into()),
    }
}
