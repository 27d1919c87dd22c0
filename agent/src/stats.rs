//! The statistics client: follows the emulator's `WatchStats` stream and turns each message into
//! an observation, reconnecting with backoff when the stream breaks or stalls. While it is down
//! the decision in force stays; nothing is decided without observations. At most once a second it
//! also asks the edge for its load (`Info`, which the emulator forwards), and each observation
//! carries the last answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::edge_client::EdgeClient;
use splitinfer_proto::v1::emulator_client::EmulatorClient;
use tokio_util::sync::CancellationToken;
use splitinfer_telemetry::Tls;
use tonic::transport::Endpoint;

use crate::backoff::Backoff;
use crate::observation::{EdgeLoad, Observation};
use crate::state::Shared;

/// How often the edge's load is asked for, and how long an answer may take.
const EDGE_POLL: Duration = Duration::from_secs(1);
const EDGE_POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs until `shutdown`.
pub async fn watch(url: String, tls: Tls, period_ms: u32, state: Arc<Shared>, shutdown: CancellationToken) {
    let endpoint = match tls.endpoint(&url) {
        Ok(e) => e.connect_timeout(Duration::from_secs(2)),
        Err(e) => {
            // The configuration is validated before serving; this is a programming error.
            tracing::error!(emulator = %url, error = %e, "invalid emulator URL; no statistics");
            return;
        }
    };
    // A stream that delivers nothing for this long is treated as broken: the emulator's host may
    // have vanished without closing the connection.
    let stall = (Duration::from_millis(u64::from(period_ms)) * 5).max(Duration::from_secs(2));
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            r = follow(&endpoint, period_ms, stall, &state, &mut backoff) => r,
        };
        let was_up = {
            let mut s = state.lock();
            let up = s.stats_connected();
            s.set_stats_connected(false);
            up
        };
        failures = if was_up { 1 } else { failures + 1 };
        if was_up {
            tracing::warn!(emulator = %url, reason = %result, "statistics stream lost; keeping the decision in force and reconnecting");
        } else if failures == 1 {
            tracing::warn!(emulator = %url, reason = %result, "cannot get statistics from the emulator yet; retrying");
        } else {
            tracing::debug!(emulator = %url, reason = %result, "statistics retry failed");
        }
        if !backoff.wait(&shutdown).await {
            break;
        }
    }
    state.lock().set_stats_connected(false);
}

/// One connection: observations until the stream ends, fails or stalls; returns why.
async fn follow(endpoint: &Endpoint, period_ms: u32, stall: Duration, state: &Shared, backoff: &mut Backoff) -> String {
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return format!("cannot connect: {e}"),
    };
    let mut edge = EdgeClient::new(channel.clone());
    let mut stream = match EmulatorClient::new(channel).watch_stats(pb::WatchStatsRequest { period_ms }).await {
        Ok(r) => r.into_inner(),
        Err(s) => return format!("WatchStats refused: {}: {}", s.code(), s.message()),
    };
    let (mut load, mut polled): (Option<EdgeLoad>, Option<Instant>) = (None, None);
    loop {
        let message = match tokio::time::timeout(stall, stream.message()).await {
            Err(_) => return format!("no statistics for {} ms", stall.as_millis()),
            Ok(Err(s)) => return format!("stream failed: {}: {}", s.code(), s.message()),
            Ok(Ok(None)) => return "stream ended".into(),
            Ok(Ok(Some(m))) => m,
        };
        if polled.is_none_or(|t| t.elapsed() >= EDGE_POLL) {
            polled = Some(Instant::now());
            load = match tokio::time::timeout(EDGE_POLL_TIMEOUT, edge.info(pb::InfoRequest {})).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    Some(EdgeLoad { sessions: r.active_sessions, layers: r.edge_layers })
                }
                _ => None,
            };
        }
        let obs = Observation { edge: load, ..Observation::from_stats(&message) };
        let mut s = state.lock();
        s.timeline_mut().channel(&message, crate::state::unix_ms());
        if !s.stats_connected() {
            s.set_stats_connected(true);
            backoff.reset();
            tracing::info!(endpoint = %endpoint.uri(), "statistics stream up");
        }
        tracing::trace!(snr_db = obs.snr_db, loss_rate = obs.loss_rate, scenario = %obs.scenario, "observation");
        s.observe(obs, Instant::now());
    }
}
