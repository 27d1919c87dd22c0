//! Bad input gets a clear gRPC status, and a healthy session running at the same time completes
//! with the right tokens. Most cases go through the emulator, which must relay the edge's status.

use std::time::Duration;

use bytes::Bytes;
use splitinfer_proto::v1 as pb;
use splitinfer_tests::{Testbed, generate_via, greedy_request, monolithic, shared_model};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

const HIDDEN: usize = 576;

fn open(k: u32, prompt_tokens: u32) -> pb::UeMessage {
    pb::UeMessage {
        kind: Some(pb::ue_message::Kind::Open(pb::Open {
            model_sha256: shared_model().sha256.clone(),
            split: Some(pb::Split { k, epoch: 0 }),
            sampling: None,
            max_new_tokens: 4,
            prompt_tokens,
            client: "bad-input-test".into(),
            resume_session_id: String::new(),
            ignore_eos: false,
            ..Default::default()
        })),
    }
}

fn resume(id: &str, secret: &str) -> pb::UeMessage {
    let mut m = open(10, 4);
    if let Some(pb::ue_message::Kind::Open(o)) = m.kind.as_mut() {
        o.resume_session_id = id.into();
        o.resume_secret = secret.into();
    }
    m
}

/// The session id and resume secret of an `Opened`.
fn opened(m: Option<pb::EdgeMessage>) -> (String, String) {
    match m.and_then(|m| m.kind) {
        Some(pb::edge_message::Kind::Opened(o)) => (o.session_id, o.resume_secret),
        other => panic!("expected opened, got {other:?}"),
    }
}

fn tensor(shape: &[u64], data: Vec<u8>) -> pb::Tensor {
    pb::Tensor { dtype: pb::DType::DtypeF32 as i32, shape: shape.to_vec(), data: Bytes::from(data) }
}

fn rows(n: usize, hidden: usize) -> pb::Tensor {
    tensor(&[1, n as u64, hidden as u64], vec![0u8; n * hidden * 4])
}

fn activation(position: u64, k: u32, hidden: pb::Tensor) -> pb::UeMessage {
    pb::UeMessage {
        kind: Some(pb::ue_message::Kind::Activation(pb::Activation {
            position,
            split: Some(pb::Split { k, epoch: 0 }),
            hidden: Some(hidden),
            ue_compute_us: 0,
            ..Default::default()
        })),
    }
}

async fn client(url: &str) -> pb::edge_client::EdgeClient<tonic::transport::Channel> {
    pb::edge_client::EdgeClient::connect(url.to_string())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20)
}

/// Sends `msgs` on one stream (closing it afterwards if `close`) and returns the status it ends with.
async fn session_status(url: &str, msgs: Vec<pb::UeMessage>, close: bool) -> Status {
    let (tx, rx) = mpsc::channel(16);
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    let keep = if close {
        drop(tx);
        None
    } else {
        Some(tx)
    };
    let mut c = client(url).await;
    let mut inbound = match c.generate(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return s,
    };
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without an error status"),
                Err(s) => return s,
            }
        }
    })
    .await
    .expect("no status within 60 s");
    drop(keep);
    outcome
}

/// Runs the bad session next to a healthy one; asserts the status and the healthy tokens.
async fn assert_refused(url: &str, msgs: Vec<pb::UeMessage>, close: bool, code: Code, needle: &str) {
    let healthy_req = greedy_request("The capital of France is", 12, 6);
    let want: Vec<u32> = monolithic(&healthy_req).into_iter().map(|t| t.0).collect();
    eprintln!("case: expecting {code:?} {needle:?} via {url}");
    let (status, healthy) = tokio::join!(session_status(url, msgs, close), generate_via(url, healthy_req));
    assert_eq!(status.code(), code, "wrong code; message: {}", status.message());
    assert!(status.message().contains(needle), "message {:?} does not say {needle:?}", status.message());
    assert_eq!(healthy.expect("the healthy session failed").token_ids(), want, "healthy session disturbed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_activations_are_refused_and_others_keep_going() {
    let bed = Testbed::start().await;
    let url = bed.emulator_url.clone();
    assert_refused(&url, vec![open(10, 2), activation(0, 10, tensor(&[1, 2, 576], vec![0; 100]))], false,
        Code::InvalidArgument, "tensor of shape [1, 2, 576] and dtype f32 needs 4608 bytes, got 100").await;
    assert_refused(&url, vec![open(10, 2), activation(0, 10, rows(2, 100))], false,
        Code::InvalidArgument, "hidden size 100 differs from the model's 576").await;
    let mut nan = vec![0u8; 2 * HIDDEN * 4];
    nan[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_refused(&url, vec![open(10, 2), activation(0, 10, tensor(&[1, 2, 576], nan))], false,
        Code::InvalidArgument, "non-finite value NaN at element 5").await;
    let mut inf = vec![0u8; 2 * HIDDEN * 4];
    inf[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    assert_refused(&url, vec![open(10, 2), activation(0, 10, tensor(&[1, 2, 576], inf))], false,
        Code::InvalidArgument, "non-finite value inf at element 0").await;
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sessions_and_steps_are_refused_and_others_keep_going() {
    let bed = Testbed::start().await;
    let url = bed.emulator_url.clone();
    assert_refused(&url, vec![open(31, 2)], false, Code::InvalidArgument, "split point 31 is outside 0..=30").await;
    assert_refused(&url, vec![activation(0, 10, rows(1, HIDDEN))], false,
        Code::InvalidArgument, "the first message of a stream must be open").await;
    let mut other_model = open(10, 2);
    if let Some(pb::ue_message::Kind::Open(o)) = other_model.kind.as_mut() {
        o.model_sha256 = "0".repeat(64);
    }
    assert_refused(&url, vec![other_model], false, Code::FailedPrecondition, "but this edge serves b179c952").await;
    // Prefill of 2 rows (→ a token), then a step that skips ahead, or one that repeats.
    assert_refused(&url, vec![open(10, 2), activation(0, 10, rows(2, HIDDEN)), activation(5, 10, rows(1, HIDDEN))], false,
        Code::InvalidArgument, "activation at position 5 is out of order: session").await;
    assert_refused(&url, vec![open(10, 2), activation(0, 10, rows(2, HIDDEN)), activation(0, 10, rows(1, HIDDEN))], false,
        Code::InvalidArgument, "activation at position 0 repeats").await;
    for u in [bed.edge_url.clone(), url.clone()] {
        assert_refused(&u, vec![open(10, 6), activation(0, 10, rows(3, HIDDEN))], true,
            Code::InvalidArgument, "stream ended mid-prefill: 3 of 6 prompt rows received").await;
    }
    assert_refused(&url, vec![resume("s00000000deadbeef", "")], false, Code::NotFound, "unknown session s00000000deadbeef").await;
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_and_expired_sessions_are_refused() {
    let mut config = edge_server::EdgeConfig::for_tests();
    config.max_message_bytes = 1 << 20;
    config.idle_timeout_ms = 300;
    let bed = Testbed::start_with(config).await;
    // 500 rows of f32 is 1.15 MB, over the edge's 1 MiB (sent to the edge directly: the emulator
    // in front allows 64 MiB and would pass it on, which the second call checks).
    for url in [bed.edge_url.clone(), bed.emulator_url.clone()] {
        assert_refused(&url, vec![open(10, 500), activation(0, 10, rows(500, HIDDEN))], false,
            Code::ResourceExhausted, "exceeds the edge's limit of 1048576 bytes").await;
    }

    // The emulator's own limit is RESOURCE_EXHAUSTED too, in its own words.
    let small = splitinfer_tests::Testbed::start_full(edge_server::EdgeConfig::for_tests(), |e| e.max_message_bytes = 1 << 20).await;
    assert_refused(&small.emulator_url, vec![open(10, 500), activation(0, 10, rows(500, HIDDEN))], false,
        Code::ResourceExhausted, "exceeds the channel emulator's limit of 1048576 bytes (EMU_MAX_MESSAGE_BYTES)").await;
    small.shutdown().await;

    // A stream whose link is cut mid-prefill leaves its session for a resume, until it idles out.
    let (link_url, cut) = cuttable_link(&bed.edge_url).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(open(10, 4)).await.unwrap();
    let mut inbound = client(&link_url).await.generate(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let (id, secret) = opened(inbound.message().await.unwrap());
    tx.send(activation(0, 10, rows(2, HIDDEN))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    cut.abort();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Under load the edge may notice the reset late; until then the session counts as attached.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while session_status(&bed.edge_url, vec![resume(&id, &secret)], false).await.code() == Code::FailedPrecondition {
        assert!(std::time::Instant::now() < deadline, "the edge never noticed the cut link");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_refused(&bed.edge_url, vec![resume(&id, &secret)], false, Code::NotFound, &format!("session {id} expired")).await;
    drop(tx);
    bed.shutdown().await;
}

fn migrate(from: u32, to: u32, to_epoch: u64, position: u64, method: pb::Migration) -> pb::Migrate {
    pb::Migrate {
        from: Some(pb::Split { k: from, epoch: 0 }),
        to: Some(pb::Split { k: to, epoch: to_epoch }),
        position,
        method: method as i32,
        ..Default::default()
    }
}

fn kv(layer: u32, positions: u64) -> pb::LayerKv {
    let t = tensor(&[1, 3, positions, 64], vec![0u8; 3 * positions as usize * 64 * 4]);
    pb::LayerKv { layer, k: Some(t.clone()), v: Some(t) }
}

fn msg(m: pb::Migrate) -> pb::UeMessage {
    pb::UeMessage { kind: Some(pb::ue_message::Kind::Migrate(m)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_split_changes_are_refused_and_others_keep_going() {
    use pb::Migration::{Recompute, Transfer};
    let bed = Testbed::start().await;
    let url = bed.emulator_url.clone();
    // Every case: a 2-row prefill at k=10 (→ a token), then the bad migrate.
    let after_prefill = |m: pb::Migrate| vec![open(10, 2), activation(0, 10, rows(2, HIDDEN)), msg(m)];
    assert_refused(&url, after_prefill(migrate(12, 5, 1, 2, Transfer)), false,
        Code::FailedPrecondition, "migrate from split k=12 but session").await;
    assert_refused(&url, after_prefill(migrate(10, 31, 1, 2, Transfer)), false,
        Code::InvalidArgument, "split point 31 is outside 0..=30").await;
    assert_refused(&url, after_prefill(migrate(10, 10, 1, 2, Transfer)), false,
        Code::InvalidArgument, "migrate to the split session").await;
    assert_refused(&url, after_prefill(migrate(10, 20, 1, 1, Transfer)), false,
        Code::InvalidArgument, "migrate at position 1 but session").await;
    assert_refused(&url, after_prefill(pb::Migrate { method: 0, ..migrate(10, 20, 1, 2, Transfer) }), false,
        Code::InvalidArgument, "migrate names no known method (0)").await;
    // Toward the edge by transfer: entries of the wrong layers, or of the wrong shape.
    let mut wrong_layers = migrate(10, 8, 1, 2, Transfer);
    wrong_layers.kv = vec![kv(8, 2), kv(10, 2)];
    assert_refused(&url, after_prefill(wrong_layers), false,
        Code::InvalidArgument, "migrate carries entries of layers [8, 10]; moving the split from 10 to 8 needs layers [8, 9]").await;
    let mut wrong_shape = migrate(10, 9, 1, 2, Transfer);
    wrong_shape.kv = vec![kv(9, 3)];
    assert_refused(&url, after_prefill(wrong_shape), false,
        Code::InvalidArgument, "keys of layer 9 have shape [1, 3, 3, 64], expected [1, 3, 2, 64]").await;
    // Toward the edge by recompute: no states, or chunks that do not add up.
    assert_refused(&url, after_prefill(migrate(10, 8, 1, 2, Recompute)), false,
        Code::InvalidArgument, "recompute migration carries no replay states").await;
    let mut bad_chunks = migrate(10, 8, 1, 2, Recompute);
    bad_chunks.replay = Some(rows(2, HIDDEN));
    bad_chunks.replay_chunks = vec![1, 2];
    assert_refused(&url, after_prefill(bad_chunks), false,
        Code::InvalidArgument, "replay chunks [1, 2] do not split the 2 positions").await;
    // A stale epoch after a good migration (10 → 12 at epoch 3) is refused.
    let mut stale = vec![open(10, 2), activation(0, 10, rows(2, HIDDEN)), msg(migrate(10, 12, 3, 2, Transfer))];
    let mut old = activation(2, 12, rows(1, HIDDEN));
    if let Some(pb::ue_message::Kind::Activation(a)) = old.kind.as_mut() {
        a.split = Some(pb::Split { k: 12, epoch: 2 });
    }
    stale.push(old);
    assert_refused(&url, stale, false, Code::InvalidArgument, "activation names split epoch 2 but session").await;
    // Non-finite values in moved caches or replay states (accepted before, poisoning the caches).
    let mut nan_kv = migrate(10, 9, 1, 2, Transfer);
    let mut bad = kv(9, 2);
    let mut data = bad.v.as_ref().unwrap().data.to_vec();
    data[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    bad.v.as_mut().unwrap().data = Bytes::from(data);
    nan_kv.kv = vec![bad];
    assert_refused(&url, after_prefill(nan_kv), false, Code::InvalidArgument, "migrate: values of layer 9 hold a non-finite value NaN at element 1").await;
    let mut inf_replay = migrate(10, 8, 1, 2, Recompute);
    let mut data = vec![0u8; 2 * HIDDEN * 4];
    data[8..12].copy_from_slice(&f32::INFINITY.to_le_bytes());
    inf_replay.replay = Some(tensor(&[1, 2, HIDDEN as u64], data));
    inf_replay.replay_chunks = vec![2];
    assert_refused(&url, after_prefill(inf_replay), false, Code::InvalidArgument, "migrate: replay states hold a non-finite value inf at element 2").await;
    bed.shutdown().await;
}

/// A session opened and never used expires, so silent clients cannot hold --max-sessions.
/// Before, an attached session that never sent an activation lived as long as its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_started_sessions_expire() {
    let mut config = edge_server::EdgeConfig::for_tests();
    config.step_timeout_ms = 1500;
    config.max_sessions = 2;
    let bed = Testbed::start_with(config).await;
    let info = || async { client(&bed.edge_url).await.info(pb::InfoRequest {}).await.unwrap().into_inner().active_sessions };
    let mut silent = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = mpsc::channel(4);
        tx.send(open(10, 4)).await.unwrap();
        let mut inbound = client(&bed.edge_url).await.generate(ReceiverStream::new(rx)).await.unwrap().into_inner();
        opened(inbound.message().await.unwrap());
        silent.push((tx, inbound));
    }
    assert_eq!(info().await, 2);
    let st = session_status(&bed.edge_url, vec![open(10, 4)], false).await;
    assert_eq!(st.code(), Code::ResourceExhausted, "full while the silent sessions hold it: {}", st.message());
    let started = std::time::Instant::now();
    for (_tx, inbound) in &mut silent {
        let st = inbound.message().await.unwrap_err();
        assert_eq!(st.code(), Code::DeadlineExceeded, "{}", st.message());
        assert!(st.message().contains("no activation within 1500 ms of open (EDGE_STEP_TIMEOUT_MS); session closed"), "{}", st.message());
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while info().await != 0 {
        assert!(std::time::Instant::now() < deadline, "the silent sessions were never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Room again for a real session.
    let req = greedy_request("The capital of France is", 12, 6);
    let want: Vec<u32> = monolithic(&req).into_iter().map(|t| t.0).collect();
    assert_eq!(generate_via(&bed.edge_url, req).await.unwrap().token_ids(), want);
    bed.shutdown().await;
}

/// Reads the next message, which must be a token; returns its id.
async fn next_token(inbound: &mut tonic::Streaming<pb::EdgeMessage>) -> u32 {
    match inbound.message().await.unwrap().unwrap().kind {
        Some(pb::edge_message::Kind::Token(t)) => t.id,
        other => panic!("expected a token, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_resumes_where_it_stopped() {
    let bed = Testbed::start().await;
    let step = |pos: u64, n: usize| {
        // Distinct, finite rows so every step changes the state.
        let data: Vec<u8> = (0..n * HIDDEN).flat_map(|i| (((i as u64 + pos * 7) % 13) as f32 * 0.1).to_le_bytes()).collect();
        activation(pos, 10, tensor(&[1, n as u64, HIDDEN as u64], data))
    };
    let start = |msgs: Vec<pb::UeMessage>| {
        let url = bed.edge_url.clone();
        async move {
            let (tx, rx) = mpsc::channel(8);
            for m in msgs {
                tx.send(m).await.unwrap();
            }
            let inbound = client(&url).await.generate(ReceiverStream::new(rx)).await.unwrap().into_inner();
            (tx, inbound)
        }
    };
    // Uninterrupted: prefill of 4 rows, then two decode steps.
    let (_keep, mut whole) = start(vec![open(10, 4), step(0, 4), step(4, 1), step(5, 1)]).await;
    whole.message().await.unwrap().unwrap();
    let want = [next_token(&mut whole).await, next_token(&mut whole).await, next_token(&mut whole).await];

    // Broken after the first decode step (the TCP link under the stream is cut), then resumed on
    // a new stream.
    let (link_url, cut) = cuttable_link(&bed.edge_url).await;
    let (tx, rx) = mpsc::channel(8);
    for m in [open(10, 4), step(0, 4), step(4, 1)] {
        tx.send(m).await.unwrap();
    }
    let mut first = client(&link_url).await.generate(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let (id, secret) = opened(first.message().await.unwrap());
    assert!(id.len() == 33 && secret.len() == 32, "128 random bits each: {id} {secret}");
    let got0 = next_token(&mut first).await;
    let got1 = next_token(&mut first).await;
    cut.abort();
    assert!(first.message().await.is_err(), "the UE side must see the link go down");
    // The edge notices the reset on its own schedule; until then it reports the session attached.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (_tx2, mut second) = loop {
        // Before: ids were a counter times a constant XOR a salt, predictable from two probe
        // sessions, and a resume needed nothing else. A resume without the secret, or with
        // another session's, now reads as an unknown session; one whose parameters differ is
        // refused.
        for wrong in ["", "0123456789abcdef0123456789abcdef", &secret[..31]] {
            let st = session_status(&bed.edge_url, vec![resume(&id, wrong)], false).await;
            assert_eq!(st.code(), Code::NotFound, "secret {wrong:?}: {}", st.message());
            assert!(st.message().contains(&format!("unknown session {id}")), "{}", st.message());
        }
        let mut other = resume(&id, &secret);
        if let Some(pb::ue_message::Kind::Open(o)) = other.kind.as_mut() {
            o.max_new_tokens = 40;
        }
        let st = session_status(&bed.edge_url, vec![other], false).await;
        if st.code() != Code::FailedPrecondition {
            assert_eq!(st.code(), Code::InvalidArgument, "{}", st.message());
            assert!(st.message().contains("with another max_new_tokens than it was opened with"), "{}", st.message());
        }
        let (tx2, mut inbound) = start(vec![resume(&id, &secret), step(5, 1)]).await;
        match inbound.message().await {
            Ok(Some(pb::EdgeMessage { kind: Some(pb::edge_message::Kind::Opened(o)) })) => {
                assert_eq!(o.session_id, id);
                assert_eq!(o.position, 5, "the resumed session continues at position 5");
                let last = o.last_token.expect("the token of the last completed step, for a UE that lost it");
                assert_eq!((last.position, last.id), (5, got1), "{last:?}");
                // With the edge's timings of that step, as it measured them.
                assert!(last.edge_compute_us > 0 && last.batch >= 1, "{last:?}");
                break (tx2, inbound);
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("resume failed: {other:?}"),
        }
    };
    let got2 = next_token(&mut second).await;
    assert_eq!([got0, got1, got2], want);
    drop(tx);
    bed.shutdown().await;
}

/// A TCP forwarder to `url`'s host:port that can be cut, as a radio link can: returns its URL and
/// the task to abort. Aborting drops both sockets, so each end sees the connection reset.
async fn cuttable_link(url: &str) -> (String, tokio::task::JoinHandle<()>) {
    let target = url.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut inbound, _) = listener.accept().await.unwrap();
        let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    (format!("http://{addr}"), task)
}

/// Sessions are admitted by the memory their caches may grow to, not only by their number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_admitted_by_the_kv_budget() {
    let mut config = edge_server::EdgeConfig::for_tests();
    // 1 MiB holds 22 SmolLM2 positions (30 layers x 2 x 3 heads x 64 x 4 B = 46,080 B each).
    config.kv_budget_mib = 1;
    let bed = Testbed::start_with(config).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(open(10, 8)).await.unwrap();
    let mut first = client(&bed.edge_url).await.generate(ReceiverStream::new(rx)).await.unwrap().into_inner();
    opened(first.message().await.unwrap());
    // 12 more positions would pass the budget; 8 more fit beside the first session's 12.
    let st = session_status(&bed.edge_url, vec![open(10, 8)], false).await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
    assert!(
        st.message().contains("could need 0.5 MiB of KV cache (12 positions)") && st.message().contains("EDGE_KV_BUDGET_MIB") && st.message().contains("committed to 1 sessions"),
        "{}",
        st.message()
    );
    let (tx2, rx2) = mpsc::channel(4);
    tx2.send(open(10, 4)).await.unwrap();
    let mut second = client(&bed.edge_url).await.generate(ReceiverStream::new(rx2)).await.unwrap().into_inner();
    opened(second.message().await.unwrap());
    drop((tx, tx2, first, second));
    bed.shutdown().await;
}
