//! `splitinfer rl report` end to end on the real model, with a grid and budgets small enough for
//! CI: the profile, surrogate, learners, model-free PPO, baselines, oracle, figures, report and
//! the policy file the agent loads, then a rerun that reuses every costly stage.

use std::path::Path;
use std::process::{Command, Output};

use agent::policy::learned::PolicyFile;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_png(p: &Path) -> bool {
    std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn report_trains_scores_and_exports_a_policy_the_agent_loads() {
    let dir = std::env::temp_dir().join(format!("splitinfer-rl-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let thresholds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/thresholds.csv");
    let args = [
        "rl", "report", "--max-tokens", "64", "--window", "64", "--stride", "64", "--ks", "0,15,30", "--snr-dbs", "0,20", "--ms", "1",
        "--erasure-ps", "0.1", "--seeds", "1", "--heldout-per-trace", "1", "--surrogate-steps", "3000", "--fit-steps", "200",
        "--train-seeds", "0", "--mf-budget", "8", "--out-dir", dir.to_str().unwrap(), "--thresholds", thresholds.to_str().unwrap(),
    ];
    let run = || Command::new(env!("CARGO_BIN_EXE_splitinfer")).args(args).env("RUST_LOG", "warn").output().unwrap();
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));

    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for needle in ["## Policies on the held-out traces", "| oracle (exhaustive real evaluation) | 100% |", "MB-PPO", "MB-A2C", "MB-DQN", "MF-PPO", "greedy on surrogate", "threshold (thresholds.csv)", "## Model-based against model-free", "## Chosen split against the channel"] {
        assert!(report.contains(needle), "report lacks {needle:?}:\n{report}");
    }
    for png in ["training.png", "k_vs_snr.png", "ppl_vs_split.png"] {
        assert!(is_png(&dir.join(png)), "{png} is not a PNG");
    }

    // The oracle is optimal on the table every policy is scored on.
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    let oracle = r["oracle"]["mean_reward"].as_f64().unwrap();
    let others: Vec<f64> = r["baselines"]
        .as_array()
        .unwrap()
        .iter()
        .chain(r["learners"].as_array().unwrap().iter().map(|l| &l["outcome"]))
        .chain([&r["model_free"]["outcome"]])
        .map(|o| o["mean_reward"].as_f64().unwrap())
        .collect();
    // random, fixed 0, greedy, threshold (+ the best fixed split if not 0); 3 learners; MF-PPO.
    assert!((8..=9).contains(&others.len()), "{r}");
    assert!(others.iter().all(|&x| x <= oracle + 1e-9), "a policy beat the oracle: {oracle} vs {others:?}");
    // 3 held-out states × 31 splits, each a real evaluation.
    assert_eq!(r["oracle_evaluations"].as_u64(), Some(93));
    assert_eq!(std::fs::read_to_string(dir.join("oracle.csv")).unwrap().lines().count(), 1 + 93);
    assert!(r["model_free"]["real_evaluations"].as_u64().unwrap() >= 8);

    // The policy file is what the agent reads, for this model only.
    let policy = PolicyFile::load(&dir.join("policy-mb-ppo.safetensors")).unwrap();
    assert_eq!(policy.meta.features, ["snr_db", "fading_m", "prev_k"]);
    policy.check_deployment("smollm2-135m", 30).unwrap();
    let e = policy.check_deployment("qwen2.5-coder-0.5b", 24).unwrap_err().to_string();
    assert!(e.contains("was trained for smollm2-135m"), "{e}");
    assert_eq!(r["policy_agrees"][0], r["policy_agrees"][1], "the agent's forward pass disagrees with the network");

    // A rerun evaluates nothing again: profile, oracle table and model-free run come from files.
    let profile = std::fs::read_to_string(dir.join("profile.csv")).unwrap();
    let table = std::fs::read_to_string(dir.join("oracle.csv")).unwrap();
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("model-free PPO: reusing"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(dir.join("profile.csv")).unwrap(), profile);
    assert_eq!(std::fs::read_to_string(dir.join("oracle.csv")).unwrap(), table);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_report_arguments_are_refused_before_any_work() {
    let o = Command::new(env!("CARGO_BIN_EXE_splitinfer")).args(["rl", "profile", "--ms", "0.2", "--out", "/tmp/never.csv"]).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Nakagami m 0.2 must be at least 0.5"), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_splitinfer")).args(["rl", "report", "--reward", "best"]).output().unwrap();
    assert!(stderr(&o).contains("invalid value 'best' for '--reward <REWARD>'"), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_splitinfer")).args(["rl", "report", "--compare", "/nonexistent/profile.csv", "--out-dir", "/tmp/never"]).output().unwrap();
    assert!(stderr(&o).contains("no profile there"), "{}", stderr(&o));
}
