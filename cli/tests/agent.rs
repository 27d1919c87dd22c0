//! `splitinfer agent status|override` against a real agent served in this process.

use std::process::Output;

use agent::AgentConfig;
use tokio::net::TcpListener;

const TOKEN: &str = "cli-token";

async fn splitinfer(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_splitinfer"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("AGENT_CONTROL_TOKEN")
        .env_remove("SPLITINFER_AGENT")
        .output()
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_fails_with(o: &Output, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected exit 1; stderr: {e}");
    assert!(e.contains(needle), "stderr does not say {needle:?}:\n{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_override_from_the_command_line() {
    // No emulator: the agent serves status and overrides without statistics (and decides nothing).
    let mut config = AgentConfig::for_tests("http://127.0.0.1:1");
    config.control_token = Some(agent::config::ControlToken::new(TOKEN));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(agent::run(listener, config, async move {
        let _ = rx.await;
    }));

    let o = splitinfer(&["agent", "status", "--agent", &url]).await;
    assert!(o.status.success(), "{o:?}");
    let table = stdout(&o);
    for line in ["current      none yet", "pinned       no", "statistics   NOT connected", "policy       fixed (k=1); L=30, min dwell 2000 ms"] {
        assert!(table.contains(line), "status lacks {line:?}:\n{table}");
    }

    assert_fails_with(&splitinfer(&["agent", "override", "--agent", &url, "--k", "5"]).await, "answered UNAUTHENTICATED: Override needs the metadata");
    assert_fails_with(&splitinfer(&["agent", "override", "--agent", &url, "--k", "5", "--token", "nope"]).await, "answered PERMISSION_DENIED: wrong control token");
    assert_fails_with(
        &splitinfer(&["agent", "override", "--agent", &url, "--k", "31", "--token", TOKEN]).await,
        "answered INVALID_ARGUMENT: pin_k 31 is outside 0..=30",
    );
    let o = splitinfer(&["agent", "override", "--agent", &url]).await;
    assert_eq!(o.status.code(), Some(2), "neither --k nor --release is a usage error");

    let o = splitinfer(&["agent", "override", "--agent", &url, "--k", "5", "--token", TOKEN, "--reason", "from the cli"]).await;
    assert!(o.status.success(), "{o:?}");
    // The first decision of this agent run: its epoch base (start time in ms × 10⁶) plus one.
    let out = stdout(&o);
    let epoch: u64 = out.strip_prefix("in force: k=5 epoch=").and_then(|r| r.split(' ').next()).and_then(|e| e.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(epoch % 1_000_000, 1, "{out}");
    assert!(out.contains(" (override, "), "{out}");
    assert!(stdout(&o).trim_end().ends_with("): override: from the cli"), "{}", stdout(&o));

    let o = splitinfer(&["agent", "status", "--agent", &url, "--json"]).await;
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((v["current"]["split"]["k"].as_u64(), v["current"]["split"]["epoch"].as_u64()), (Some(5), Some(epoch)));
    assert_eq!((v["current"]["overridden"].as_bool(), v["pinned_k"].as_u64(), v["n_layers"].as_u64()), (Some(true), Some(5), Some(30)));
    assert_eq!(v["policy_params"]["k"], "1");
    assert_eq!(v["history"].as_array().unwrap().len(), 1);
    let table = stdout(&splitinfer(&["agent", "status", "--agent", &url]).await);
    assert!(table.contains("pinned       k=5 (override)") && table.contains("override    override: from the cli"), "{table}");

    let o = splitinfer(&["agent", "override", "--agent", &url, "--release", "--token", TOKEN]).await;
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&splitinfer(&["agent", "status", "--agent", &url, "--json"]).await)).unwrap();
    assert!(v["pinned_k"].is_null(), "{v}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    assert_fails_with(&splitinfer(&["agent", "status", "--agent", &url]).await, &format!("cannot reach the agent at {url}"));
}
