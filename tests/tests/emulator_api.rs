//! The emulator's own API: statistics (status call, stream for the agent, Prometheus text) and
//! switching the channel at run time, with bad requests refused and nothing else disturbed.

use std::time::Duration;

use split_core::channel::Preset;
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::emulator_client::EmulatorClient;
use splitinfer_tests::{Testbed, generate_via, greedy_request, monolithic};

async fn api(bed: &Testbed) -> EmulatorClient<tonic::transport::Channel> {
    EmulatorClient::connect(bed.emulator_url.clone()).await.unwrap()
}

async fn scrape(addr: &str) -> std::collections::HashMap<String, f64> {
    // Unlabelled series by name (the emulator's statistics have no labels).
    splitinfer_tests::scrape(addr).await.into_iter().filter(|s| s.labels.is_empty()).map(|s| (s.name, s.value)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_follow_the_channel_and_are_exported() {
    let bed = Testbed::start_full(edge_server::EdgeConfig::for_tests(), |c| {
        c.channel = true;
        c.channel_args.preset = Preset::Bad;
        c.channel_args.channel_seed = 3;
    })
    .await;
    let mut client = api(&bed).await;
    let mut watch = client.watch_stats(pb::WatchStatsRequest { period_ms: 50 }).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.scenario, "bad");
    assert!(first.impaired && !first.paused);
    let before = scrape(&bed.emulator_metrics).await;
    for key in ["splitinfer_emulator_messages_total", "splitinfer_emulator_lost_packets_total", "splitinfer_emulator_window_loss_rate", "splitinfer_emulator_channel_snr_db"] {
        assert!(before.contains_key(key), "metrics lack {key}");
    }

    let report = generate_via(&bed.emulator_url, greedy_request("The capital of France is", 8, 24)).await.unwrap();
    let stats = client.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    let total = stats.total.unwrap();
    assert_eq!(total.messages as usize, report.tokens.len(), "one activation per token");
    // Case H: 5 dB, Rayleigh, γ_th = 1, one retransmission: loss = (1 − e^(−1/γ̄))² ≈ 0.0734.
    let q = 1.0 - (-1.0 / 10f64.powf(0.5)).exp();
    let want = q * q;
    let se = (want * (1.0 - want) / total.packets as f64).sqrt();
    assert!((total.loss_rate - want).abs() < 5.0 * se, "loss {} vs {want} over {} packets", total.loss_rate, total.packets);
    assert!(total.retransmissions > 0);
    // The noise is set for 5 dB on the packet's power; received packets passed the outage test,
    // so their gains (and the realized SNR) sit somewhat above the mean.
    assert!((3.0..10.0).contains(&total.realized_snr_db), "realized {} dB", total.realized_snr_db);
    assert!(total.mean_delay_ms >= 1.0, "air time + 1 ms propagation per message");

    let after = scrape(&bed.emulator_metrics).await;
    assert_eq!(after["splitinfer_emulator_messages_total"], total.messages as f64);
    assert!(after["splitinfer_emulator_messages_total"] > before["splitinfer_emulator_messages_total"]);
    assert!(after["splitinfer_emulator_packets_total"] > 0.0);

    // The stream keeps coming (older messages may be buffered) and catches up with the traffic.
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = watch.message().await.unwrap().unwrap();
            if s.total.as_ref().unwrap().messages == total.messages {
                return;
            }
        }
    })
    .await
    .expect("the stats stream never showed the new traffic");
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_switches_and_pauses_at_run_time_and_bad_requests_are_refused() {
    let bed = Testbed::start().await; // pass-through until told otherwise
    let mut client = api(&bed).await;
    let clean: Vec<u32> = monolithic(&greedy_request("The capital of France is", 8, 12)).into_iter().map(|t| t.0).collect();

    for (req, needle) in [
        (pb::SetChannelRequest { preset: "stormy".into(), ..Default::default() }, "unknown scenario \"stormy\""),
        (pb::SetChannelRequest { fading_m: Some(0.3), ..Default::default() }, "Nakagami m 0.3 must be"),
        (pb::SetChannelRequest { erasure_p: Some(2.0), ..Default::default() }, "erasure probability 2 is outside [0, 1]"),
    ] {
        let e = client.set_channel(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(needle), "{}", e.message());
    }
    let s = client.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert!(!s.impaired && s.channel_version == 0, "refused requests must change nothing");
    let tokens = generate_via(&bed.emulator_url, greedy_request("The capital of France is", 8, 12)).await.unwrap().token_ids();
    assert_eq!(tokens, clean);

    // Heavy erasure on: the text changes. Paused: the clean text again. Resumed: changed again.
    let set = |req: pb::SetChannelRequest| {
        let mut c = client.clone();
        async move { c.set_channel(req).await.unwrap().into_inner().stats.unwrap() }
    };
    let s = set(pb::SetChannelRequest { erasure_p: Some(0.3), ..Default::default() }).await;
    assert!(s.impaired && s.channel_version == 1);
    let impaired = generate_via(&bed.emulator_url, greedy_request("The capital of France is", 8, 12)).await.unwrap().token_ids();
    assert_ne!(impaired, clean);
    let s = set(pb::SetChannelRequest { paused: Some(true), ..Default::default() }).await;
    assert!(s.paused);
    assert_eq!(generate_via(&bed.emulator_url, greedy_request("The capital of France is", 8, 12)).await.unwrap().token_ids(), clean);
    set(pb::SetChannelRequest { paused: Some(false), preset: "good".into(), ..Default::default() }).await;
    let s = client.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert_eq!((s.scenario.as_str(), s.paused, s.snr_db), ("good", false, 20.0));
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_a_alternates_between_good_and_bad_and_generation_completes() {
    let bed = Testbed::start_full(edge_server::EdgeConfig::for_tests(), |c| c.alternate_ms = 150).await;
    let mut client = api(&bed).await;
    let mut watch = client.watch_stats(pb::WatchStatsRequest { period_ms: 20 }).await.unwrap().into_inner();
    let mut seen = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while seen.len() < 2 {
            let s = watch.message().await.unwrap().unwrap();
            assert!(s.impaired);
            seen.insert(s.scenario);
        }
    })
    .await
    .expect("the channel did not alternate");
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["bad", "good"]);
    let report = generate_via(&bed.emulator_url, greedy_request("Once upon a time", 8, 16)).await.unwrap();
    assert!(report.tokens.len() == 16 || report.stopped_at_eos);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mobility_and_trace_scenarios_replay_and_generation_completes() {
    // Generated mobility, vehicular.
    let bed = Testbed::start_full(edge_server::EdgeConfig::for_tests(), |c| {
        c.mobility = Some("vehicular".into());
        c.channel_args.noise = true;
    })
    .await;
    let mut client = api(&bed).await;
    let s = client.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(s.scenario, "mobility-vehicular");
    assert!(s.impaired && s.fading_m == 1.0);
    let report = generate_via(&bed.emulator_url, greedy_request("Once upon a time", 8, 16)).await.unwrap();
    assert!(report.tokens.len() == 16 || report.stopped_at_eos);

    // A CSV trace switched in at run time: 30 dB for 80 ms, then 0 dB, looping.
    let dir = std::env::temp_dir().join(format!("splitinfer-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.csv");
    std::fs::write(&path, "t_ms,snr_db,m\n0,30,0\n80,0,2\n").unwrap();
    client.set_channel(pb::SetChannelRequest { trace_path: path.to_string_lossy().into(), ..Default::default() }).await.unwrap();
    let mut watch = client.watch_stats(pb::WatchStatsRequest { period_ms: 10 }).await.unwrap().into_inner();
    let mut snrs = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while snrs.len() < 2 {
            let s = watch.message().await.unwrap().unwrap();
            assert!(s.scenario.starts_with("trace "), "{}", s.scenario);
            snrs.insert(s.snr_db as i64);
        }
    })
    .await
    .expect("the trace did not replay");
    assert_eq!(snrs.into_iter().collect::<Vec<_>>(), [0, 30]);
    let report = generate_via(&bed.emulator_url, greedy_request("Once upon a time", 8, 16)).await.unwrap();
    assert!(report.tokens.len() == 16 || report.stopped_at_eos);

    // Unreadable or malformed traces and unknown mobility are refused; the replay goes on.
    for (req, needle) in [
        (pb::SetChannelRequest { trace_path: "/nonexistent/t.csv".into(), ..Default::default() }, "cannot read trace /nonexistent/t.csv"),
        (pb::SetChannelRequest { mobility: "flying".into(), ..Default::default() }, "unknown mobility \"flying\""),
    ] {
        let e = client.set_channel(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(needle), "{}", e.message());
    }
    std::fs::write(&path, "t_ms,snr_db,m\n0,abc,1\n").unwrap();
    let e = client.set_channel(pb::SetChannelRequest { trace_path: path.to_string_lossy().into(), ..Default::default() }).await.unwrap_err();
    assert!(e.message().contains("line 2: snr_db is not a number"), "{}", e.message());
    let s = client.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert!(s.scenario.starts_with("trace "), "a refused request must not stop the replay: {}", s.scenario);
    bed.shutdown().await;
}

/// The edge and the emulator answer a gRPC client that is not ours through reflection alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_and_emulator_answer_grpcurl_through_reflection() {
    let bed = splitinfer_tests::Testbed::start().await;
    for (url, service) in [(&bed.edge_url, "splitinfer.v1.Edge"), (&bed.emulator_url, "splitinfer.v1.Emulator")] {
        let addr = url.trim_start_matches("http://").to_string();
        let a = addr.clone();
        let list = tokio::task::spawn_blocking(move || splitinfer_tests::grpcurl::run(&["-plaintext", &a, "list"])).await.unwrap().unwrap();
        assert!(list.lines().any(|l| l == service) && list.lines().any(|l| l == "grpc.health.v1.Health"), "{addr}: {list}");
        let a = addr.clone();
        let health = tokio::task::spawn_blocking(move || splitinfer_tests::grpcurl::run(&["-plaintext", &a, "grpc.health.v1.Health/Check"]))
            .await
            .unwrap()
            .unwrap();
        assert!(health.contains("SERVING"), "{addr}: {health}");
    }
    let a = bed.edge_url.trim_start_matches("http://").to_string();
    let info = tokio::task::spawn_blocking(move || splitinfer_tests::grpcurl::run(&["-plaintext", &a, "splitinfer.v1.Edge/Info"])).await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["nLayers"], 30, "{info}");
    bed.shutdown().await;
}
