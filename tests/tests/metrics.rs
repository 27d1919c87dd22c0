//! Every service's Prometheus endpoint, scraped while real traffic flows: the text parses, the key
//! series are there, and they move by what the traffic did. And the UE's per-token breakdown
//! splits the network time into uplink and downlink, and the Grafana dashboard reads only series
//! the services export.

use std::process::Stdio;
use std::time::Duration;

use splitinfer_tests::{Testbed, default_model, find_sample, generate_via, greedy_request, sample, scrape, workspace_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_and_emulator_metrics_move_with_traffic() {
    let bed = Testbed::start().await;
    let before = scrape(&bed.edge_metrics).await;
    assert_eq!(sample(&before, "splitinfer_edge_streams", &[]), 0.0);
    let emu_before = scrape(&bed.emulator_metrics).await;

    let report = generate_via(&bed.emulator_url, greedy_request("The capital of France is", 10, 8)).await.unwrap();
    let n = report.tokens.len() as f64;
    let after = scrape(&bed.edge_metrics).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        let was = find_sample(&before, name, labels).unwrap_or(0.0);
        sample(&after, name, labels) - was
    };
    assert_eq!(moved("splitinfer_edge_tokens_total", &[]), n);
    assert_eq!(moved("splitinfer_edge_steps_total", &[("phase", "decode")]), n - 1.0);
    assert_eq!(moved("splitinfer_edge_steps_total", &[("phase", "prefill")]), 1.0);
    assert_eq!(moved("splitinfer_edge_compute_seconds_count", &[("phase", "decode")]), n - 1.0);
    assert!(moved("splitinfer_edge_compute_seconds_sum", &[("phase", "decode")]) > 0.0);
    // Every decode activation is 1 × 576 f32 values plus framing, up; a token is a few bytes down.
    let up = moved("splitinfer_edge_bytes_total", &[("direction", "up")]);
    assert!(up >= (n - 1.0) * 576.0 * 4.0, "{up}");
    assert!(moved("splitinfer_edge_bytes_total", &[("direction", "down")]) > 0.0);
    assert_eq!(sample(&after, "splitinfer_edge_streams", &[]), 0.0, "the stream closed");
    assert_eq!(moved("splitinfer_edge_decode_batch_count", &[]), n - 1.0);

    let emu_after = scrape(&bed.emulator_metrics).await;
    let emu_moved = |name: &str, labels: &[(&str, &str)]| {
        let was = find_sample(&emu_before, name, labels).unwrap_or(0.0);
        sample(&emu_after, name, labels) - was
    };
    assert_eq!(emu_moved("splitinfer_emulator_messages_total", &[]), n);
    assert_eq!(emu_moved("splitinfer_emulator_processing_seconds_count", &[("kind", "activation")]), n);

    // A refused session counts under its code.
    let bad = generate_via(&bed.emulator_url, greedy_request("The capital of France is", 10, 100_000)).await.unwrap_err();
    assert_eq!(bad.status().unwrap().code(), tonic::Code::ResourceExhausted);
    let errs = scrape(&bed.edge_metrics).await;
    assert_eq!(sample(&errs, "splitinfer_edge_errors_total", &[("code", "ResourceExhausted")]), 1.0);
    bed.shutdown().await;
}

/// The real `ue-client` process serves its per-token breakdown as histograms while it runs, and
/// prints the breakdown with uplink and downlink rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ue_client_breakdown_and_metrics() {
    let bed = Testbed::start_full(edge_server::EdgeConfig::for_tests(), |e| {
        // Impaired with air time, so the uplink and downlink shares are not just loopback.
        e.channel = true;
        e.channel_args.preset = split_core::channel::Preset::Good;
    })
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let child = tokio::process::Command::new(workspace_binary("ue-client"))
        .args(["--edge", &bed.emulator_url, "--model", default_model().to_str().unwrap(), "--split", "6"])
        .args(["--prompt", "The capital of France is", "-n", "200", "--ignore-eos", "--json", "--metrics-listen", &metrics_addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Scrape twice while it generates: the series exist and move.
    let mut scrapes = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if tokio::net::TcpStream::connect(&metrics_addr).await.is_err() {
            continue;
        }
        let s = scrape(&metrics_addr).await;
        if s.iter().any(|x| x.name == "splitinfer_ue_tokens_total" && x.value >= 2.0) {
            scrapes.push(s);
        }
        if scrapes.len() == 2 {
            break;
        }
    }
    assert_eq!(scrapes.len(), 2, "could not scrape the UE twice while it generated");
    let count = |s: &[splitinfer_telemetry::metrics::Sample], part: &str| {
        sample(s, "splitinfer_ue_token_part_seconds_count", &[("part", part), ("phase", "decode")])
    };
    for part in ["ue_compute", "uplink", "edge_queue", "edge_compute", "downlink"] {
        assert!(count(&scrapes[1], part) > count(&scrapes[0], part), "{part} did not move");
    }
    assert_eq!(sample(&scrapes[1], "splitinfer_ue_split", &[]), 6.0);
    assert!(sample(&scrapes[1], "splitinfer_ue_bytes_total", &[("direction", "up")]) > 0.0);

    // The Grafana dashboard reads only series these services export: the UE's (scraped above),
    // the edge's and the emulator's, and an agent's watching this emulator.
    let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut agent_config = agent::AgentConfig::for_tests(bed.emulator_url.clone());
    agent_config.metrics_listen = Some(agent_metrics);
    let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent::run(agent_listener, agent_config, async move {
        let _ = stopped.await;
    }));
    // A refused session, so the edge's error counter has a series to show.
    generate_via(&bed.emulator_url, greedy_request("The capital of France is", 10, 100_000)).await.unwrap_err();
    let mut exported: std::collections::BTreeSet<String> = scrapes[1].iter().map(|x| x.name.clone()).collect();
    exported.extend(scrape(&bed.edge_metrics).await.into_iter().map(|x| x.name));
    exported.extend(scrape(&bed.emulator_metrics).await.into_iter().map(|x| x.name));
    let mut agent_samples = Vec::new();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(agent_metrics).await.is_ok() {
            agent_samples = scrape(&agent_metrics.to_string()).await;
            if agent_samples.iter().any(|x| x.name == "splitinfer_agent_observation_snr_db") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    exported.extend(agent_samples.into_iter().map(|x| x.name));
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/splitinfer.json")).unwrap()).unwrap();
    let mut referenced = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for (i, _) in expr.match_indices("splitinfer_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                referenced.insert(name);
            }
        }
    }
    assert!(referenced.len() >= 10, "the dashboard references only {referenced:?}");
    let missing: Vec<&String> = referenced.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "the Grafana dashboard reads series no service exports: {missing:?}");
    let _ = stop_agent.send(());
    agent_task.await.unwrap().unwrap();

    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens = v["tokens"].as_array().unwrap();
    // With the good channel's air time, each decode token's uplink share includes the air time of
    // 2.3 kB, so it exceeds the downlink's (a few bytes).
    let decode = &tokens[1..];
    let mean = |key: &str| decode.iter().map(|t| t[key].as_u64().unwrap() as f64).sum::<f64>() / decode.len() as f64;
    assert!(mean("uplink_us") > mean("downlink_us"), "uplink {} vs downlink {}", mean("uplink_us"), mean("downlink_us"));
    for t in decode {
        let parts = t["uplink_us"].as_u64().unwrap() + t["downlink_us"].as_u64().unwrap();
        assert_eq!(parts, t["network_us"].as_u64().unwrap(), "uplink + downlink is the network time: {t}");
    }
    bed.shutdown().await;
}
