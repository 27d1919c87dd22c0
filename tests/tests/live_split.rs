//! Live split changes during a generation, through the real emulator and edge over gRPC: with a
//! clean channel and f32 on the wire, moving the split up and down (to 0 and to L included) must
//! not change a single token or log-probability, whichever way the caches move.

use split_core::migrate::MigrationMode;
use splitinfer_tests::{Testbed, greedy_request, monolithic, shared_model};
use tokio::sync::watch;
use split_core::split::Split;
use ue_client::{GenerateRequest, GenerationReport};

const PROMPT: &str = "The history of the old harbour town begins with the fishermen who";

/// After the given number of tokens, the split moves to k: up and down, through 0 and L = 30.
const SCHEDULE: &[(usize, usize)] = &[(8, 0), (20, 30), (37, 5), (52, 22), (70, 0), (88, 13), (104, 30), (120, 3)];

/// Generates through a fresh testbed's emulator, publishing a new decision (epoch + 1) after each
/// scheduled token count; it takes effect at the next token boundary.
async fn run_schedule(req: GenerateRequest, schedule: &[(usize, usize)]) -> GenerationReport {
    let bed = Testbed::start().await;
    let (tx, rx) = watch::channel(None::<Split>);
    let mut client = ue_client::connect(&bed.emulator_url, 64 << 20, std::time::Duration::from_secs(5)).await.unwrap();
    let mut seen = 0usize;
    let mut epoch = 0u64;
    let report = ue_client::generate_adaptive(&mut client, shared_model(), req, &rx, |_| {
        seen += 1;
        if let Some(&(_, k)) = schedule.iter().find(|(after, _)| *after == seen) {
            epoch += 1;
            tx.send_replace(Some(Split::new(k, epoch)));
        }
    })
    .await
    .unwrap();
    bed.shutdown().await;
    report
}

fn assert_exact(report: &GenerationReport, reference: &[(u32, f32)], what: &str) {
    let got: Vec<(u32, f32)> = report.tokens.iter().map(|t| (t.id, t.logprob)).collect();
    assert_eq!(got.len(), reference.len(), "{what}: token count");
    for (i, (g, r)) in got.iter().zip(reference).enumerate() {
        assert!(
            g.0 == r.0 && g.1.to_bits() == r.1.to_bits(),
            "{what}: token {i} is {g:?}, the monolithic run has {r:?} (split k={} epoch {})",
            report.tokens[i].k,
            report.tokens[i].epoch
        );
    }
}

fn assert_schedule_followed(report: &GenerationReport, what: &str) {
    let moves: Vec<(usize, usize, usize)> = report.migrations.iter().map(|m| (m.at_token, m.from, m.to)).collect();
    let mut k = report.split;
    let want: Vec<(usize, usize, usize)> = SCHEDULE
        .iter()
        .map(|&(after, to)| {
            let m = (after, k, to);
            k = to;
            m
        })
        .collect();
    assert_eq!(moves, want, "{what}: the split changes made");
    assert_eq!(report.final_split, 3);
    // Every token names the split it was computed at.
    assert_eq!(report.tokens[8].k, 0, "{what}");
    assert_eq!(report.tokens[20].k, 30, "{what}");
    assert_eq!(report.tokens[20].epoch, 2, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_split_while_generating_keeps_every_token() {
    let mut req = greedy_request(PROMPT, 15, 136);
    let reference = monolithic(&req);
    assert_eq!(reference.len(), 136, "the reference run must not stop at end-of-sequence early");

    for mode in [MigrationMode::Transfer, MigrationMode::Recompute, MigrationMode::Auto] {
        req.migration = mode;
        let report = run_schedule(req.clone(), SCHEDULE).await;
        let what = format!("migration {mode}");
        assert_schedule_followed(&report, &what);
        assert_exact(&report, &reference, &what);
        let methods: Vec<&str> = report.migrations.iter().map(|m| m.method.as_str()).collect();
        match mode {
            MigrationMode::Transfer => assert!(methods.iter().all(|m| *m == "transfer"), "{methods:?}"),
            MigrationMode::Recompute => assert!(methods.iter().all(|m| *m == "recompute"), "{methods:?}"),
            MigrationMode::Auto => {}
        }
        eprintln!("{what}: {} changes, methods {methods:?}", report.migrations.len());
        for m in &report.migrations {
            assert!(m.took_ms > 0.0 && m.transfer_est_ms > 0.0 && m.recompute_est_ms > 0.0, "{m:?}");
        }
    }
}

/// A prefill sent in chunks is replayed in those chunks: the recompute stays exact against the
/// same request at a fixed split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recompute_replays_a_chunked_prefill_exactly() {
    let mut req = greedy_request(PROMPT, 10, 24);
    req.prefill_chunk = 5;
    let fixed = splitinfer_tests::generate_via(&Testbed::start().await.emulator_url, req.clone()).await.unwrap();
    req.migration = MigrationMode::Recompute;
    let schedule = [(1, 20), (4, 2), (9, 30), (15, 0), (18, 11)];
    let report = run_schedule(req, &schedule).await;
    assert_eq!(report.migrations.len(), 5);
    assert!(report.migrations.iter().all(|m| m.method == "recompute"));
    let reference: Vec<(u32, f32)> = fixed.tokens.iter().map(|t| (t.id, t.logprob)).collect();
    assert_exact(&report, &reference, "chunked prefill, recompute");
}

/// The edge refuses an activation at a split it was not told about, and names both splits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unannounced_split_change_is_refused() {
    use splitinfer_proto::v1 as pb;
    let bed = Testbed::start().await;
    let model = shared_model();
    let mut client = ue_client::connect(&bed.edge_url, 64 << 20, std::time::Duration::from_secs(5)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let open = pb::Open {
        model_sha256: model.sha256.clone(),
        split: Some(pb::Split { k: 4, epoch: 0 }),
        max_new_tokens: 4,
        prompt_tokens: 2,
        ..Default::default()
    };
    tx.send(pb::UeMessage { kind: Some(pb::ue_message::Kind::Open(open)) }).await.unwrap();
    let mut inbound = client.generate(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    inbound.message().await.unwrap().unwrap();
    let hidden = split_core::wire::WireTensor::from_f32(split_core::wire::WireDType::F32, vec![1, 2, 576], &[0.5; 2 * 576]).unwrap();
    let a = pb::Activation { position: 0, split: Some(pb::Split { k: 6, epoch: 1 }), hidden: Some(hidden.into()), ..Default::default() };
    tx.send(pb::UeMessage { kind: Some(pb::ue_message::Kind::Activation(a)) }).await.unwrap();
    let status = inbound.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("k=6 but session") && status.message().contains("runs k=4"), "{}", status.message());
    bed.shutdown().await;
}
