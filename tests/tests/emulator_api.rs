//! The emulator's own API: statistics (status call, stream for the agent, Prometheus text) and
//! switching the channel at run time, with bad requests refused and nothing else disturbed.

use std::time::Duration;

use split_core::channel::Preset;
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::emulator_client::EmulatorClient;
use splitinfer_tests::{Testbed, authorized, generate_via, greedy_request, monolithic};

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
        let e = client.set_channel(authorized(req)).await.unwrap_err();
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
        async move { c.set_channel(authorized(req)).await.unwrap().into_inner().stats.unwrap() }
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
    // Traces for SetChannel live in the emulator's --trace-dir.
    let dir = std::env::temp_dir().join(format!("splitinfer-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("trace.csv"), "t_ms,snr_db,m\n0,30,0\n80,0,2\n").unwrap();
    let trace_dir = dir.clone();
    // Generated mobility, vehicular.
    let bed = Testbed::start_full(edge_server::EdgeConfig::for_tests(), |c| {
        c.mobility = Some("vehicular".into());
        c.channel_args.noise = true;
        c.trace_dir = Some(trace_dir);
    })
    .await;
    let mut client = api(&bed).await;
    let s = client.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(s.scenario, "mobility-vehicular");
    assert!(s.impaired && s.fading_m == 1.0);
    let report = generate_via(&bed.emulator_url, greedy_request("Once upon a time", 8, 16)).await.unwrap();
    assert!(report.tokens.len() == 16 || report.stopped_at_eos);

    // A CSV trace switched in at run time: 30 dB for 80 ms, then 0 dB, looping.
    client.set_channel(authorized(pb::SetChannelRequest { trace_path: "trace.csv".into(), ..Default::default() })).await.unwrap();
    let mut watch = client.watch_stats(pb::WatchStatsRequest { period_ms: 10 }).await.unwrap().into_inner();
    let mut snrs = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while snrs.len() < 2 {
            let s = watch.message().await.unwrap().unwrap();
            assert_eq!(s.scenario, "trace trace.csv");
            snrs.insert(s.snr_db as i64);
        }
    })
    .await
    .expect("the trace did not replay");
    assert_eq!(snrs.into_iter().collect::<Vec<_>>(), [0, 30]);
    let report = generate_via(&bed.emulator_url, greedy_request("Once upon a time", 8, 16)).await.unwrap();
    assert!(report.tokens.len() == 16 || report.stopped_at_eos);

    // Paths outside the trace directory, files that are not traces and unknown mobility are
    // refused, without quoting any file; the replay goes on. Before, `trace_path` opened any
    // file on the emulator's machine and echoed its first line (and /dev/zero grew memory).
    std::fs::write(dir.join("bad.csv"), "t_ms,snr_db,m\n0,hunter2,1\n").unwrap();
    std::fs::write(dir.join("secret-header.csv"), "password=hunter2\n").unwrap();
    let _ = std::os::unix::fs::symlink("/etc/hostname", dir.join("escape.csv"));
    let _ = std::os::unix::fs::symlink("/dev/zero", dir.join("zero.csv"));
    use tonic::Code;
    for (path, code, needle) in [
        ("/etc/passwd", Code::InvalidArgument, "must be a relative path inside the trace directory"),
        ("../trace.csv", Code::InvalidArgument, "must be a relative path inside the trace directory"),
        ("missing.csv", Code::NotFound, "no trace \"missing.csv\" in the trace directory"),
        ("escape.csv", Code::NotFound, "no trace \"escape.csv\""),
        ("zero.csv", Code::NotFound, "no trace \"zero.csv\""),
        ("bad.csv", Code::InvalidArgument, "trace \"bad.csv\": line 2: snr_db is not a number"),
        ("secret-header.csv", Code::InvalidArgument, "trace \"secret-header.csv\": the header is not t_ms,snr_db,m"),
    ] {
        let e = client.set_channel(authorized(pb::SetChannelRequest { trace_path: path.into(), ..Default::default() })).await.unwrap_err();
        assert_eq!(e.code(), code, "{path}: {}", e.message());
        assert!(e.message().contains(needle), "{path}: {}", e.message());
        assert!(!e.message().contains("hunter2") && !e.message().contains("root:"), "{path}: file content echoed: {}", e.message());
    }
    let e = client.set_channel(authorized(pb::SetChannelRequest { mobility: "flying".into(), ..Default::default() })).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("unknown mobility \"flying\""), "{}", e.message());
    let s = client.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(s.scenario, "trace trace.csv", "a refused request must not stop the replay");
    bed.shutdown().await;

    // Without --trace-dir, no trace is read at all.
    let bed = Testbed::start().await;
    let e = api(&bed).await.set_channel(authorized(pb::SetChannelRequest { trace_path: "trace.csv".into(), ..Default::default() })).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("--trace-dir"), "{}", e.message());
    bed.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An invalid request during a replay changes nothing: the replay goes on, the channel stays.
/// Before, a request with a preset stopped the replay before it was checked, and −1e308 dB
/// (finite) was accepted and made every session fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_set_channel_during_a_replay_changes_nothing() {
    let bed = Testbed::start_full(edge_server::EdgeConfig::for_tests(), |c| c.mobility = Some("pedestrian".into())).await;
    let mut client = api(&bed).await;
    let before = client.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(before.scenario, "mobility-pedestrian");
    for (req, needle) in [
        (pb::SetChannelRequest { preset: "good".into(), snr_db: Some(-1e308), noise: Some(true), ..Default::default() }, "dB is outside -100..=200 dB"),
        (pb::SetChannelRequest { preset: "stormy".into(), ..Default::default() }, "unknown scenario \"stormy\""),
        (pb::SetChannelRequest { preset: "bad".into(), fading_m: Some(f64::NAN), ..Default::default() }, "Nakagami m NaN"),
    ] {
        let e = client.set_channel(authorized(req)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(needle), "{}", e.message());
    }
    // The replay still moves the channel (100 ms steps), under its own name.
    let later = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = client.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
            if s.channel_version > before.channel_version + 2 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the replay stopped after a refused request");
    assert_eq!(later.scenario, "mobility-pedestrian");
    assert!(later.snr_db.is_finite() && later.snr_db > -100.0, "{}", later.snr_db);
    let report = generate_via(&bed.emulator_url, greedy_request("Once upon a time", 8, 8)).await.unwrap();
    assert!(report.tokens.len() == 8 || report.stopped_at_eos);
    bed.shutdown().await;
}

/// SetChannel changes the channel every session sees, so it needs the control token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_channel_needs_the_control_token() {
    use tonic::Code;
    let bed = Testbed::start().await;
    let mut client = api(&bed).await;
    let req = || pb::SetChannelRequest { preset: "bad".into(), ..Default::default() };
    let e = client.set_channel(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    assert!(e.message().contains("authorization: Bearer"), "{}", e.message());
    let mut wrong = tonic::Request::new(req());
    wrong.metadata_mut().insert("authorization", "Bearer guess".parse().unwrap());
    let e = client.set_channel(wrong).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::PermissionDenied, "wrong control token for SetChannel"));
    let s = client.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert!(!s.impaired && s.channel_version == 0 && s.scenario == "static", "refused calls change nothing: {s:?}");
    assert_eq!(client.set_channel(authorized(req())).await.unwrap().into_inner().stats.unwrap().scenario, "bad");
    bed.shutdown().await;

    // An emulator started without a token refuses SetChannel and says how to enable it.
    let bed = Testbed::start_full(edge_server::EdgeConfig::for_tests(), |c| c.control_token = None).await;
    let e = api(&bed).await.set_channel(authorized(req())).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(e.message().contains("EMU_CONTROL_TOKEN"), "{}", e.message());
    bed.shutdown().await;
}

/// The edge and the emulator answer a gRPC client that is not ours through reflection alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_and_emulator_answer_grpcurl_through_reflection() {
    let bed = splitinfer_tests::Testbed::start().await;
    // Each lists what it serves and nothing it would answer with UNIMPLEMENTED.
    let edge_lists = ["splitinfer.v1.Edge"];
    let emulator_lists = ["splitinfer.v1.Edge", "splitinfer.v1.Emulator"];
    for (url, served) in [(&bed.edge_url, &edge_lists[..]), (&bed.emulator_url, &emulator_lists[..])] {
        let addr = url.trim_start_matches("http://").to_string();
        let a = addr.clone();
        let list = tokio::task::spawn_blocking(move || splitinfer_tests::grpcurl::run(&["-plaintext", &a, "list"])).await.unwrap().unwrap();
        let ours: Vec<&str> = list.lines().filter(|l| l.starts_with("splitinfer.")).collect();
        assert_eq!(ours, served, "{addr}: {list}");
        assert!(list.lines().any(|l| l == "grpc.health.v1.Health"), "{addr}: {list}");
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
