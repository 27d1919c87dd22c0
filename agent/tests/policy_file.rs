//! The agent binary refuses a bad learned policy before it listens: a non-zero exit and a message
//! that names the file and what is wrong.

use std::path::PathBuf;
use std::process::{Command, Output};

use agent::policy::learned::{FORMAT, Layer, PolicyFile, PolicyMeta};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("splitinfer-agent-policy-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["--listen", "127.0.0.1:0", "--emulator", "http://127.0.0.1:1", "--edge", "http://127.0.0.1:1"])
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("AGENT_POLICY")
        .env_remove("AGENT_POLICY_FILE")
        .env_remove("AGENT_MODEL")
        .output()
        .unwrap()
}

fn assert_refused(o: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the agent started; stderr:\n{stderr}");
    assert!(stderr.contains(message), "expected {message:?} in stderr:\n{stderr}");
}

#[test]
fn a_corrupt_policy_file_stops_the_agent_naming_the_file() {
    let path = scratch("corrupt.safetensors");
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let p = path.to_str().unwrap();
    // Without --n-layers the agent would wait for the edge; the file is checked before that.
    for n_layers in [&[][..], &["--n-layers", "30"]] {
        let o = agent(&[&["--policy", "learned", "--policy-file", p][..], n_layers].concat());
        assert_refused(&o, &format!("error: policy file {p} is not a safetensors file or is truncated: "));
    }
}

#[test]
fn a_policy_for_another_model_stops_the_agent_naming_both() {
    let outputs = 25;
    let file = PolicyFile {
        meta: PolicyMeta {
            format: FORMAT.into(),
            algorithm: "dqn".into(),
            model: "qwen2.5-coder-0.5b".into(),
            n_layers: 24,
            features: vec!["loss_rate".into(), "prev_k".into()],
            lower: vec![0.0, 0.0],
            upper: vec![1.0, 24.0],
            mean: vec![0.1, 12.0],
            std: vec![0.1, 7.0],
            activation: "relu".into(),
            description: "binary test".into(),
        },
        layers: vec![Layer { inputs: 2, outputs, weight: vec![0.5; 2 * outputs], bias: vec![0.0; outputs] }],
    };
    let path = scratch("qwen.safetensors");
    file.save(&path).unwrap();
    let p = path.to_str().unwrap();
    let o = agent(&["--policy", "learned", "--policy-file", p]);
    assert_refused(&o, &format!("error: policy file {p} was trained for qwen2.5-coder-0.5b but this agent serves smollm2-135m (--model)"));
    let o = agent(&["--policy", "learned", "--policy-file", p, "--model", "qwen2.5-coder-0.5b", "--n-layers", "30"]);
    assert_refused(&o, "was trained for qwen2.5-coder-0.5b with 24 layers but the deployed model has 30 layers");
}

/// Compose sets AGENT_THRESHOLDS for the default threshold policy; a learned agent started with
/// it in its environment runs (and says it ignores it), while the flag on the command line is
/// still refused.
#[test]
fn a_threshold_table_from_the_environment_does_not_stop_a_learned_agent() {
    let outputs = 25;
    let file = PolicyFile {
        meta: PolicyMeta {
            format: FORMAT.into(),
            algorithm: "mb-ppo".into(),
            model: "qwen2.5-coder-0.5b".into(),
            n_layers: 24,
            features: vec!["snr_db".into(), "prev_k".into()],
            lower: vec![-5.0, 0.0],
            upper: vec![40.0, 24.0],
            mean: vec![17.5, 12.0],
            std: vec![22.5, 12.0],
            activation: "tanh".into(),
            description: "compose test".into(),
        },
        layers: vec![Layer { inputs: 2, outputs, weight: vec![0.1; 2 * outputs], bias: vec![0.0; outputs] }],
    };
    let path = scratch("compose.safetensors");
    file.save(&path).unwrap();
    let p = path.to_str().unwrap();
    let args = ["--listen", "127.0.0.1:0", "--emulator", "http://127.0.0.1:1", "--policy", "learned", "--policy-file", p, "--model", "qwen2.5-coder-0.5b", "--n-layers", "24"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("AGENT_THRESHOLDS", "/etc/splitinfer/thresholds.csv")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(running, "the agent exited:\n{stderr}");
    assert!(stderr.contains("AGENT_THRESHOLDS is set but applies to --policy threshold only; ignored"), "{stderr}");
    let o = agent(&[&args[4..], &["--thresholds", "/etc/splitinfer/thresholds.csv"][..]].concat());
    assert_refused(&o, "--thresholds /etc/splitinfer/thresholds.csv applies to --policy threshold only");
}
