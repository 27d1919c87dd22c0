//! Teacher-forced scoring through the networked pipeline (`Open.scoring`): the UE sends windows of
//! a given text through the emulator, the edge returns each next token's log-probability. On a
//! clean link it gives exactly `splitinfer ppl`'s NLL in process; bad scoring input is refused
//! with a clear status.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use split_core::boundary::ChannelBoundary;
use split_core::calibration::Calibration;
use split_core::channel::{Channel, ChannelConfig};
use split_core::perplexity::PplConfig;
use split_core::transform::{Concealment, LinkSetup, Normalization};
use split_core::wire::WireDType;
use splitinfer_proto::v1 as pb;
use splitinfer_tests::{Testbed, shared_model};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use ue_client::score::{ScoreRequest, score};

fn calibration_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../calibration/smollm2-135m.json")
}

fn tokens(n: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(splitinfer_tests::default_eval_text()).unwrap();
    let mut t = shared_model().tokenizer.encode(&text).unwrap();
    t.truncate(n);
    t
}

/// Windows of 128 every 96 tokens: strided, so every window but the first scores only its last
/// 96 targets, as `ppl` does.
const PPL: PplConfig = PplConfig { window: 128, stride: 96 };

fn request(k: usize, link: LinkSetup, calibration: Option<Arc<Calibration>>) -> ScoreRequest {
    ScoreRequest {
        tokens: tokens(400),
        split: shared_model().model.split_point(k).unwrap(),
        ppl: PPL,
        link,
        calibration,
        client: "scoring-test".into(),
        window_timeout: Duration::from_secs(60),
    }
}

fn in_process(req: &ScoreRequest) -> split_core::perplexity::PplReport {
    let model = shared_model();
    let mut b = ChannelBoundary::new(Channel::new(ChannelConfig::default(), 0).unwrap(), req.link, req.calibration.as_deref(), req.split.k()).unwrap();
    split_core::perplexity::perplexity(&model.model, &req.tokens, req.ppl, req.split, &mut b, &mut |_, _| {}).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_through_the_emulator_gives_exactly_the_in_process_nll() {
    let mut edge = edge_server::EdgeConfig::for_tests();
    edge.calibration = Some(calibration_path());
    let bed = Testbed::start_with(edge).await;
    let calibration = Arc::new(Calibration::load(&calibration_path(), Some(&shared_model().sha256)).unwrap());
    let identity = LinkSetup::default();
    let allocate = LinkSetup { dtype: WireDType::F32, normalization: Normalization::Allocate, concealment: Concealment::Mean };
    let int8 = LinkSetup { dtype: WireDType::I8, normalization: Normalization::Standardize, concealment: Concealment::Mean };
    for (k, link) in [(0, identity), (9, identity), (30, identity), (30, allocate), (15, int8)] {
        let req = request(k, link, link.needs_calibration().then(|| calibration.clone()));
        let want = in_process(&req);
        let mut client = ue_client::connect(&bed.emulator_url, 64 << 20, Duration::from_secs(5)).await.unwrap();
        let got = score(&mut client, shared_model(), &req, &mut |_, _| {}).await.unwrap();
        assert_eq!((got.scored_tokens, got.windows), (want.scored_tokens, want.windows), "k={k}");
        assert_eq!(got.mean_nll, want.mean_nll, "k={k} {link:?}: networked NLL {} against in-process {}", got.mean_nll, want.mean_nll);
        assert!(got.bytes_up > 0 && got.ue_compute_ms > 0.0 && got.edge_compute_ms > 0.0, "{got:?}");
        eprintln!("k={k} {:?}/{}: ppl {:.4} over {} tokens, networked = in process", link.dtype, link.normalization, got.ppl, got.scored_tokens);
    }
    bed.shutdown().await;
}

/// Sends `open` and then `activation` on one stream straight to the edge; returns the status the
/// stream ended with (after an `Opened`).
async fn refusal(url: &str, open: pb::Open, activation: pb::Activation) -> tonic::Status {
    let mut client = ue_client::connect(url, 64 << 20, Duration::from_secs(5)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::UeMessage { kind: Some(pb::ue_message::Kind::Open(open)) }).await.unwrap();
    tx.send(pb::UeMessage { kind: Some(pb::ue_message::Kind::Activation(activation)) }).await.unwrap();
    let mut inbound = match client.generate(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return s,
    };
    loop {
        match inbound.message().await {
            Ok(Some(pb::EdgeMessage { kind: Some(pb::edge_message::Kind::Opened(_)) })) => continue,
            Ok(other) => panic!("expected a refusal, got {other:?}"),
            Err(s) => return s,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_refuses_bad_scoring_input_with_a_clear_status() {
    let bed = Testbed::start().await;
    let model = shared_model();
    let (hidden, vocab) = (model.model.config().hidden_size, model.model.config().vocab_size as u32);
    let open = |scoring: bool, max_new_tokens: u32, prompt_tokens: u32| pb::Open {
        model_sha256: model.sha256.clone(),
        split: Some(pb::Split { k: 10, epoch: 0 }),
        scoring,
        max_new_tokens,
        prompt_tokens,
        ..Default::default()
    };
    let window = |rows: usize, position: u64, targets: Vec<u32>, first: u32| pb::Activation {
        position,
        split: Some(pb::Split { k: 10, epoch: 0 }),
        hidden: Some(split_core::wire::WireTensor::from_f32(WireDType::F32, vec![1, rows, hidden], &vec![0.5; rows * hidden]).unwrap().into()),
        targets,
        first_scored_row: first,
        ..Default::default()
    };
    let cases = [
        (open(true, 0, 0), window(4, 0, vec![1, 2, 3, 4, 5], 0), "5 targets from row 0 do not fit a window of 4 rows"),
        (open(true, 0, 0), window(4, 0, vec![1, 2], 3), "2 targets from row 3 do not fit a window of 4 rows"),
        (open(true, 0, 0), window(4, 0, vec![], 0), "0 targets from row 0 do not fit"),
        (open(true, 0, 0), window(4, 0, vec![1, vocab], 0), &format!("target 1 is token id {vocab}, outside the vocabulary of {vocab}")),
        (open(true, 0, 0), window(4, 7, vec![1], 0), "a scoring window starts at position 0 (from an empty cache), not 7"),
        (open(false, 4, 4), window(4, 0, vec![1, 2, 3], 0), "activation carries targets, but this session was opened to generate"),
        (open(true, 4, 0), window(4, 0, vec![1], 0), "prompt_tokens (0) and max_new_tokens (4) must be 0"),
    ];
    for (o, a, want) in cases {
        let status = refusal(&bed.edge_url, o, a).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{want}: {status:?}");
        assert!(status.message().contains(want), "expected {want:?} in {:?}", status.message());
    }
    bed.shutdown().await;
}
