//! The link as a radio carries it, on the live stream: the UE standardizes and quantizes, the
//! emulator carries bits, the edge decodes, undoes the normalization and conceals, with the
//! same functions `ppl` runs in process; and a session that needs calibration statistics the
//! edge lacks, or other ones, is refused with the reason.

use std::path::PathBuf;
use std::sync::Arc;

use split_core::boundary::ChannelBoundary;
use split_core::calibration::Calibration;
use split_core::channel::{Channel, ChannelConfig};
use split_core::pipeline::{InProcessSplit, generate};
use split_core::sampling::Sampler;
use split_core::transform::{Concealment, Normalization};
use split_core::wire::WireDType;
use splitinfer_tests::{Testbed, generate_via, greedy_request, monolithic, shared_model};
use tonic::Code;

fn calibration_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../calibration/smollm2-135m.json")
}

fn calibration() -> Arc<Calibration> {
    Arc::new(Calibration::load(&calibration_path(), Some(&shared_model().sha256)).unwrap())
}

const PROMPT: &str = "The capital of France is";

/// Greedy tokens of the in-process split with the link setup on a clean channel.
fn in_process(k: usize, req: &ue_client::GenerateRequest) -> Vec<u32> {
    let model = shared_model();
    let setup = split_core::transform::LinkSetup { dtype: req.wire, normalization: req.normalization, concealment: req.concealment };
    let boundary = ChannelBoundary::new(Channel::new(ChannelConfig::default(), 0).unwrap(), setup, req.calibration.as_deref(), k).unwrap();
    let mut run = InProcessSplit::new(&model.model, model.model.split_point(k).unwrap(), Box::new(boundary));
    let mut sampler = Sampler::new(req.sampling).unwrap();
    let out = generate(&mut run, &model.tokenizer, &req.prompt, req.max_new_tokens, &mut sampler, true, &mut |_| Ok(())).unwrap();
    out.tokens.iter().map(|t| t.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standardized_int8_through_the_emulator_equals_the_in_process_link() {
    let mut edge = edge_server::EdgeConfig::for_tests();
    edge.calibration = Some(calibration_path());
    let bed = Testbed::start_with(edge).await;
    // k = 30 = L with allocate: the calibration's transmit gains on the way and off again; with
    // rotate, its transmit rotation (the sidecar file beside the calibration, read by both ends).
    let cases = [
        (15, WireDType::I8, Normalization::Standardize),
        (3, WireDType::I4Outlier, Normalization::Standardize),
        (12, WireDType::F32, Normalization::Standardize),
        (30, WireDType::F32, Normalization::Allocate),
        (30, WireDType::F32, Normalization::Rotate),
    ];
    for (k, wire, normalization) in cases {
        let mut req = greedy_request(PROMPT, k, 12);
        req.wire = wire;
        req.normalization = normalization;
        req.concealment = Concealment::Mean;
        req.calibration = Some(calibration());
        let want = in_process(k, &req);
        let got = generate_via(&bed.emulator_url, req.clone()).await.unwrap();
        assert_eq!(got.token_ids(), want, "k={k} {wire} {normalization}: the live link differs from the in-process one");
        eprintln!("k={k} {wire}: {} of {} tokens equal the monolithic ones", {
            let mono = monolithic(&req);
            mono.iter().zip(&want).filter(|(m, w)| m.0 == **w).count()
        }, want.len());
    }
    // Identity on f32 stays bit-exact to the monolithic model.
    let req = greedy_request(PROMPT, 9, 12);
    let mono: Vec<u32> = monolithic(&req).into_iter().map(|t| t.0).collect();
    assert_eq!(generate_via(&bed.emulator_url, req).await.unwrap().token_ids(), mono);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_needing_calibration_the_edge_lacks_or_holds_otherwise_are_refused() {
    let bed = Testbed::start().await;
    let mut req = greedy_request(PROMPT, 10, 4);
    req.normalization = Normalization::Standardize;
    req.calibration = Some(calibration());
    let e = generate_via(&bed.edge_url, req.clone()).await.unwrap_err();
    let status = e.status().expect("a status from the edge");
    assert_eq!(status.code(), Code::FailedPrecondition, "{e}");
    assert!(status.message().contains("this edge has none (EDGE_CALIBRATION)"), "{e}");
    bed.shutdown().await;

    let mut edge = edge_server::EdgeConfig::for_tests();
    edge.calibration = Some(calibration_path());
    let bed = Testbed::start_with(edge).await;
    let mut other = (*calibration()).clone();
    other.file_sha256 = "0".repeat(64);
    req.calibration = Some(Arc::new(other));
    let e = generate_via(&bed.edge_url, req.clone()).await.unwrap_err();
    let status = e.status().expect("a status from the edge");
    assert_eq!(status.code(), Code::FailedPrecondition, "{e}");
    assert!(status.message().contains("the UE normalizes with calibration sha256 \"0000"), "{e}");
    // The UE itself refuses to normalize without statistics, before it connects anything.
    req.calibration = None;
    let e = generate_via(&bed.edge_url, req).await.unwrap_err();
    assert!(e.to_string().contains("need calibration statistics (--calibration FILE)"), "{e}");
    bed.shutdown().await;
}

#[test]
fn a_calibration_for_another_model_or_none_at_all_is_refused_by_the_edge_at_start() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |path: PathBuf| {
        rt.block_on(async {
            let mut edge = edge_server::EdgeConfig::for_tests();
            edge.calibration = Some(path);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            edge_server::run_with_metrics(listener, None, edge, shared_model(), async {}).await.unwrap_err().to_string()
        })
    };
    let dir = std::env::temp_dir().join(format!("si-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = run(dir.join("missing.json"));
    assert!(e.contains("missing.json: no such file; make one with `splitinfer calibrate"), "{e}");
    let foreign = dir.join("foreign.json");
    let text = std::fs::read_to_string(calibration_path()).unwrap().replacen("b179c9523d0e6a0f", "ffffffffffffffff", 1);
    std::fs::write(&foreign, text).unwrap();
    let e = run(foreign);
    assert!(e.contains("it belongs to model smollm2-135m (sha256 ffffffffffffffff"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
