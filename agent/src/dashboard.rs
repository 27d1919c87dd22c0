//! The live dashboard on `--dashboard-listen`: one web page, its script and its style, all
//! compiled into the binary (no CDN, nothing fetched from elsewhere: the page's Content Security
//! Policy forbids it), and `/events`, a server-sent event stream of the agent's
//! [`Timeline`](crate::timeline::Timeline).
//!
//! Each event is one JSON object: the state in force (split, epoch, policy, statistics link, every
//! UE's latest report with its text) and the timeline's points since the previous event, all of
//! the window's points in the first. The page plots them with its own small script (SVG).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::state::{Shared, decision_epoch, unix_ms};
use crate::timeline::{Entry, UeProgress, WINDOW_MS};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");
/// Everything the page uses comes from this server; inline scripts and styles are refused too.
const CSP: &str = "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How often each open page gets an event.
const PERIOD: Duration = Duration::from_millis(500);

#[derive(Clone)]
struct Dashboard {
    state: Arc<Shared>,
    shutdown: CancellationToken,
}

/// Binds `addr` and serves the dashboard there in the background until `shutdown`; returns the
/// bound address.
pub async fn start(addr: SocketAddr, state: Arc<Shared>, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(url = %format!("http://{local}/"), "dashboard listening");
    if !local.ip().is_loopback() {
        tracing::warn!(addr = %local, "the dashboard has no authentication and shows the generated text: anyone who can reach this address can read it");
    }
    let app = router(state, shutdown.clone());
    tokio::spawn(async move {
        let stop = shutdown.clone();
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await {
            tracing::warn!(error = %e, "the dashboard stopped");
        }
    });
    Ok(local)
}

fn router(state: Arc<Shared>, shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", PAGE) }))
        .route("/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/dashboard.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/events", get(events))
        .with_state(Dashboard { state, shutdown })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CONTENT_SECURITY_POLICY, CSP), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// One event every [`PERIOD`] until the page goes away or the agent stops (an open stream would
/// otherwise hold the server's graceful shutdown).
async fn events(State(d): State<Dashboard>) -> impl IntoResponse {
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(2);
    tokio::spawn(async move {
        let mut next = 0;
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = d.shutdown.cancelled() => break,
                () = tx.closed() => break,
                _ = tick.tick() => {}
            }
            let (json, seq) = update(&d.state, next);
            next = seq;
            if tx.send(Ok(Event::default().event("update").data(json))).await.is_err() {
                break;
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

#[derive(Serialize)]
struct Update<'a> {
    now_ms: u64,
    window_ms: u64,
    n_layers: u32,
    policy: String,
    stats_connected: bool,
    pinned_k: Option<u32>,
    observations: u64,
    current: Option<Current>,
    ues: Vec<&'a UeProgress>,
    points: Vec<&'a Entry>,
}

#[derive(Serialize)]
struct Current {
    k: u32,
    epoch: String,
    policy: String,
    reason: String,
    unix_ms: u64,
}

/// The event for a page that has the points before `seq`, and the `seq` of the next one.
fn update(state: &Shared, seq: u64) -> (String, u64) {
    let s = state.lock();
    let status = s.status(1);
    let current = status.current.map(|d| Current {
        k: d.split.map_or(0, |s| s.k),
        epoch: decision_epoch(&d).to_string(),
        policy: d.policy,
        reason: d.reason,
        unix_ms: d.unix_ms,
    });
    let timeline = s.timeline();
    let u = Update {
        now_ms: unix_ms(),
        window_ms: WINDOW_MS,
        n_layers: status.n_layers,
        policy: status.policy,
        stats_connected: status.stats_connected,
        pinned_k: status.pinned_k,
        observations: status.observations,
        current,
        ues: timeline.ues().collect(),
        points: timeline.since(seq).collect(),
    };
    // Plain data with string keys: serializing cannot fail.
    (serde_json::to_string(&u).unwrap_or_default(), timeline.next_seq())
}
