//! `edge-server --adapter`: the edge serves low-rank adapters on its layers (Snake Learning's
//! output, docs/snake.md), and refuses an adapter made for another model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use candle_core::{Device, Tensor};
use split_core::adapter::{Adapter, LayerAdapter, LowRank};
use split_core::boundary::CleanWire;
use split_core::model::SplitModel;
use split_core::perplexity::{PplConfig, perplexity};
use split_core::transform::LinkSetup;
use splitinfer_tests::{EdgeProcess, default_model, shared_model, workspace_binary};
use ue_client::score::{ScoreRequest, score};

/// A fixed pseudo-random `[rows, cols]` matrix of amplitude `amp` (the same in every run).
fn fixed(rows: usize, cols: usize, amp: f32, phase: f32) -> Tensor {
    let v: Vec<f32> = (0..rows * cols).map(|i| amp * (i as f32 * 0.618 + phase).sin()).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

/// Adapters on layers 28 and 29 of the default model with B away from zero, so they matter.
fn adapter(sha256: &str) -> Adapter {
    let lr = |out: usize| LowRank { a: fixed(8, 576, 0.05, 0.3), b: fixed(out, 8, 0.5, 1.7), scale: 2.0 };
    let layers = BTreeMap::from([(28, LayerAdapter { q: lr(576), v: lr(192) }), (29, LayerAdapter { q: lr(576), v: lr(192) })]);
    Adapter { model_sha256: sha256.into(), rank: 8, alpha: 16.0, trained_split: 28, layers }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("splitinfer-adapter-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn edge(port: u16, adapter: &Path) -> Command {
    let mut c = Command::new(workspace_binary("edge-server"));
    c.args(["--listen", &format!("127.0.0.1:{port}"), "--model", &default_model().display().to_string(), "--adapter", &adapter.display().to_string()]);
    c.env("RUST_LOG", "info");
    c
}

#[test]
fn an_adapter_for_another_model_is_refused_with_a_clear_error() {
    let dir = scratch("refused");
    let path = dir.join("other.safetensors");
    adapter(&"0f".repeat(32)).save(&path).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = edge(port, &path).stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the edge must exit 1; stderr:\n{err}");
    assert!(err.contains(&format!("adapter {} was trained on the model with sha256 0f0f", path.display())) && err.contains("not on this model"), "{err}");
    // A file that is not an adapter at all is refused too, by name.
    std::fs::write(&path, b"garbage").unwrap();
    let out = edge(port, &path).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not a safetensors file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_its_adapter_the_way_the_in_process_model_computes_it() {
    let model = shared_model();
    let dir = scratch("served");
    let path = dir.join("a.safetensors");
    let a = adapter(&model.sha256);
    a.save(&path).unwrap();
    let path_arg = path.display().to_string();
    let edge = EdgeProcess::start(&["--adapter", &path_arg], &[("RUST_LOG", "info")]).await;
    let url = edge.url();

    let text = std::fs::read_to_string(splitinfer_tests::default_eval_text()).unwrap();
    let mut tokens = model.tokenizer.encode(&text).unwrap();
    tokens.truncate(300);
    let ppl = PplConfig { window: 128, stride: 96 };
    let k = 27;
    let req = ScoreRequest {
        tokens: tokens.clone(),
        split: model.model.split_point(k).unwrap(),
        ppl,
        link: LinkSetup::default(),
        calibration: None,
        client: "adapter-test".into(),
        window_timeout: Duration::from_secs(60),
    };
    let mut client = ue_client::connect(&url, 64 << 20, Duration::from_secs(5)).await.unwrap();
    let served = score(&mut client, model.clone(), &req, &mut |_, _| {}).await.unwrap();

    let split = model.model.split_point(k).unwrap();
    let plain = perplexity(&model.model, &tokens, ppl, split, &mut CleanWire::default(), &mut |_, _| {}).unwrap();
    let mut adapted = SplitModel::load(default_model()).unwrap();
    assert_eq!(adapted.apply_adapter(&a, k).unwrap(), 2);
    let want = perplexity(&adapted, &tokens, ppl, split, &mut CleanWire::default(), &mut |_, _| {}).unwrap();
    eprintln!("ppl: plain {:.4}, adapter in process {:.4}, adapter served {:.4}", plain.ppl, want.ppl, served.ppl);
    assert_eq!(served.mean_nll, want.mean_nll, "the served adapter's NLL differs from the in-process one");
    assert!((served.mean_nll - plain.mean_nll).abs() > 1e-3, "the adapter changed nothing: {} against {}", served.mean_nll, plain.mean_nll);
    std::fs::remove_dir_all(&dir).unwrap();
}
