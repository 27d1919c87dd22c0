//! The real `edge-server` process: SIGTERM ends open sessions with a clear status and the process
//! exits within its grace period.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use splitinfer_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Starts the binary on 127.0.0.1:0 and reads the bound address from its JSON log.
fn start_edge(grace_ms: u64) -> (std::process::Child, String, std::thread::JoinHandle<Vec<String>>) {
    let model = splitinfer_tests::default_model();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-server"))
        .args(["--listen", "127.0.0.1:0", "--model"])
        .arg(&model)
        .env("EDGE_GRACE_PERIOD_MS", grace_ms.to_string())
        .env("EDGE_LOG_JSON", "true")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("edge exited before listening").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "edge server listening" {
            break v["fields"]["addr"].as_str().unwrap().to_string();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe; hand the rest back.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect());
    (child, format!("http://{addr}"), rest)
}

#[tokio::test]
async fn sigterm_ends_open_sessions_with_unavailable_and_exits_within_grace() {
    let model = splitinfer_tests::shared_model();
    let (mut child, url, log) = start_edge(3_000);

    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::UeMessage {
        kind: Some(pb::ue_message::Kind::Open(pb::Open {
            model_sha256: model.sha256.clone(),
            split: Some(pb::Split { k: 10, epoch: 0 }),
            max_new_tokens: 100,
            prompt_tokens: 2,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    tx.send(pb::UeMessage {
        kind: Some(pb::ue_message::Kind::Activation(pb::Activation {
            position: 0,
            split: Some(pb::Split { k: 10, epoch: 0 }),
            hidden: Some(pb::Tensor { dtype: 1, shape: vec![1, 2, 576], data: Bytes::from(vec![0u8; 2 * 576 * 4]) }),
            ue_compute_us: 0,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut client = pb::edge_client::EdgeClient::connect(url).await.unwrap();
    let mut inbound = client.generate(ReceiverStream::new(rx)).await.unwrap().into_inner();
    // Opened, then the prefill's token: the session is live and waiting for the next step.
    for _ in 0..2 {
        inbound.message().await.unwrap().unwrap();
    }

    let sent = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("no status after SIGTERM")
        .expect_err("the session should end with an error status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{}", status.message());
    assert!(status.message().starts_with("edge server is shutting down; session s"), "{}", status.message());

    let exited = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(sent.elapsed() < Duration::from_secs(5), "edge still running 5 s after SIGTERM (grace 3 s)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exited.success(), "edge exited with {exited}");
    drop(tx);
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("SIGTERM received") && log.contains("edge server stopped"), "{log}");
}
