//! `splitinfer snake run` with two real node processes on a small budget: a serpentine round over
//! gRPC, the bytes and memory it measured, the adapter file and the report.

use std::process::Command;

use split_core::adapter::Adapter;
use splitinfer_tests::{default_eval_text, default_model};

#[test]
fn two_node_processes_complete_a_serpentine_round_and_write_the_report() {
    let model = default_model();
    default_eval_text();
    let out = std::env::temp_dir().join(format!("splitinfer-snake-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let calibration = concat!(env!("CARGO_MANIFEST_DIR"), "/../calibration/smollm2-135m.json");
    let args = [
        "snake", "run", "--out", out.to_str().unwrap(), "--calibration", calibration, "--split", "28", "--shards", "editorial,hobbies",
        "--rounds", "1", "--steps", "3,2", "--window", "16", "--methods", "snake,fedavg", "--eval-tokens", "48", "--seeds", "1",
    ];
    let o = Command::new(env!("CARGO_BIN_EXE_splitinfer")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "snake run failed:\n{stderr}");
    assert!(stderr.contains("snake: turn 4/4 (round 1, node 1, layers 28..29)"), "{stderr}");

    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("snake.json")).unwrap()).unwrap();
    // Turns 1, 2, 2, 1 with 3 and 2 steps: 10 steps, two node-to-node transfers of the state.
    let curve = meta["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 10);
    let nodes: Vec<u64> = curve.iter().map(|p| p["node"].as_u64().unwrap()).collect();
    assert_eq!(nodes, [0, 0, 0, 1, 1, 1, 1, 0, 0, 0]);
    assert!(curve.iter().all(|p| p["loss"].as_f64().unwrap().is_finite()));
    let cost = &meta["cost"];
    let sha = split_core::assets::sha256_file(&model).unwrap();
    let adapter_bytes = std::fs::read(out.join("snake.safetensors")).unwrap();
    let transfer = cost["bytes_total"].as_u64().unwrap();
    assert!(transfer >= 2 * adapter_bytes.len() as u64 && transfer < 2 * adapter_bytes.len() as u64 + 64, "2 transfers of {} bytes, counted {transfer}", adapter_bytes.len());
    // Each node held one layer's adapters: 4 f32 per parameter (value, gradient, 2 moments).
    let one_layer = (8 * 576 * 2 + 576 * 8 + 192 * 8) * 16;
    assert_eq!(cost["trainable_state_bytes"], serde_json::json!([one_layer, one_layer]));
    assert!(cost["peak_rss_bytes"].as_array().unwrap().iter().all(|b| b.as_u64().unwrap() > 100 << 20));
    // FedAvg's nodes each held both layers, and every round moved the state both ways.
    let fed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("fedavg.json")).unwrap()).unwrap();
    assert_eq!(fed["cost"]["trainable_state_bytes"], serde_json::json!([2 * one_layer, 2 * one_layer]));

    // Both slices were trained (B starts at zero), and the file is for this model only.
    let a = Adapter::load(&out.join("snake.safetensors"), &sha).unwrap();
    assert_eq!(a.layers.keys().copied().collect::<Vec<_>>(), [28, 29]);
    for (i, l) in &a.layers {
        let b = l.q.b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(b > 0.0, "layer {i} was not trained");
    }
    assert!(Adapter::load(&out.join("snake.safetensors"), &"00".repeat(32)).is_err());

    let eval = std::fs::read_to_string(out.join("eval.csv")).unwrap();
    for m in ["none", "snake", "fedavg"] {
        for ch in ["clean", "bad", "vehicular"] {
            assert!(eval.contains(&format!("\n{m},{ch},0,")), "eval.csv lacks {m} {ch}:\n{eval}");
        }
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| snake | 1 |") && report.contains("Robustness gained under the bad preset"), "{report}");
    assert!(out.join("curves.png").is_file());

    // Run again: every stage is reused, nothing is retrained.
    let o = Command::new(env!("CARGO_BIN_EXE_splitinfer")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && stderr.contains("snake: snake already trained") && !stderr.contains("turn 1/4"), "{stderr}");

    // Other settings into the same directory would mix results: refused, nothing touched.
    let mut other = args.to_vec();
    let at = other.iter().position(|a| *a == "--window").unwrap();
    other[at + 1] = "32";
    let before = std::fs::read(out.join("snake.safetensors")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_splitinfer")).args(&other).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds results made with other settings") && stderr.contains("\"window\":32"), "{stderr}");
    assert_eq!(std::fs::read(out.join("snake.safetensors")).unwrap(), before);
    std::fs::remove_dir_all(&out).unwrap();
}
