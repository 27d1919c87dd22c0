//! The agent in the loop with the real edge, emulator and UE: decisions follow the channel and
//! move the split of a running generation; both sides acknowledge; the agent can die and come
//! back without the generation noticing more than a pause in decisions.

use std::path::PathBuf;
use std::time::Duration;

use agent::config::PolicyKind;
use agent::follow::Follower;
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::agent_client::AgentClient;
use splitinfer_proto::v1::emulator_client::EmulatorClient;
use splitinfer_tests::{Testbed, greedy_request, monolithic, shared_model, workspace_binary};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PROMPT: &str = "The history of the old harbour town begins with the fishermen who";

fn thresholds() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/thresholds.csv")
}

async fn set_preset(emulator: &str, preset: &str) {
    let mut c = EmulatorClient::connect(emulator.to_string()).await.unwrap();
    c.set_channel(splitinfer_tests::authorized(pb::SetChannelRequest { preset: preset.into(), ..Default::default() })).await.unwrap();
}

async fn status(agent: &str) -> pb::AgentStatus {
    let mut c = AgentClient::connect(agent.to_string()).await.unwrap();
    c.status(pb::StatusRequest { history: 0 }).await.unwrap().into_inner()
}

/// Waits until `follower` holds a decision for which `f` holds.
async fn decision_where(follower: &Follower, f: impl Fn(&pb::Split) -> bool) -> pb::Split {
    let mut rx = follower.decisions();
    let d = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|d| d.as_ref().and_then(|d| d.split).is_some_and(|s| f(&s))))
        .await
        .expect("no such decision within 20 s")
        .unwrap();
    d.as_ref().unwrap().split.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decisions_follow_the_channel_and_both_sides_acknowledge() {
    let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_url = format!("http://{}", agent_listener.local_addr().unwrap());
    let mut edge = edge_server::EdgeConfig::for_tests();
    edge.agent = Some(agent_url.clone());
    // A short statistics window, so the realized SNR reflects a switch within a few messages.
    let bed = Testbed::start_full(edge, |e| e.stats_window = 8).await;
    set_preset(&bed.emulator_url, "good").await;

    let mut config = agent::AgentConfig::for_tests(bed.emulator_url.clone());
    config.policy = PolicyKind::Threshold;
    config.k = None;
    config.thresholds = Some(thresholds());
    config.min_dwell_ms = 300;
    // (A port picked then released: the agent binds its metrics listener from its configuration.)
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    config.metrics_listen = Some(metrics_addr);
    let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent::run(agent_listener, config, async move {
        let _ = stopped.await;
    }));

    let stop = CancellationToken::new();
    let ue = Follower::spawn(agent_url.clone(), "ue".into(), pb::Role::Ue, stop.clone());
    let first = decision_where(&ue, |_| true).await;
    assert_eq!(first.k, 1, "a good channel maps to row 1 of deploy/thresholds.csv");

    // The scenario: good for 30 tokens, then bad, then good again from token 100.
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let emulator = bed.emulator_url.clone();
    let switcher = tokio::spawn(async move {
        count_rx.wait_for(|&n| n >= 30).await.unwrap();
        set_preset(&emulator, "bad").await;
        count_rx.wait_for(|&n| n >= 100).await.unwrap();
        set_preset(&emulator, "good").await;
    });
    let mut client = ue_client::connect(&bed.emulator_url, 64 << 20, Duration::from_secs(5)).await.unwrap();
    let mut req = greedy_request(PROMPT, 15, 180);
    // The noise of the bad channel changes the text, and where depends on when decisions land; go
    // on past an end-of-text token so the channel always recovers while the generation runs.
    req.ignore_eos = true;
    let report = ue_client::generate_adaptive(&mut client, shared_model(), req, &ue, |_| {
        count_tx.send_modify(|n| *n += 1);
    })
    .await
    .unwrap();
    switcher.await.unwrap();
    eprint!("{}", report.breakdown());

    assert_eq!(report.split, 15);
    assert_eq!(report.tokens[0].k, 1, "the session opens at the agent's decision, not the request's split");
    let deeper = report.migrations.iter().find(|m| m.to == 27).expect("no move to the bad channel's split k=27");
    // (From k = 1, or from the middle row's 24 if a window saw a loss while the channel was good.)
    assert!(deeper.at_token >= 30 && deeper.from < 27, "{deeper:?}");
    let back = report.migrations.iter().rev().find(|m| m.to == 1).expect("no move back to k=1 after the channel recovered");
    assert!(back.at_token >= 100 && back.epoch > deeper.epoch, "{back:?}");
    assert_eq!(report.final_split, 1);

    // Both sides acknowledged the last decision; the history tells the story.
    let last_epoch = back.epoch;
    let mut st = status(&agent_url).await;
    for _ in 0..50 {
        if st.subscribers.iter().filter(|s| s.acked_epoch >= last_epoch).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        st = status(&agent_url).await;
    }
    let acked = |name: &str, role: pb::Role| {
        let s = st.subscribers.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name} is not a subscriber: {:?}", st.subscribers));
        assert_eq!(s.role, role as i32);
        assert!(s.connected, "{s:?}");
        assert_eq!((s.acked_epoch, s.acked_k), (last_epoch, 1), "{name}: {s:?}");
    };
    acked("ue", pb::Role::Ue);
    acked("edge", pb::Role::Edge);
    let ks: Vec<u32> = st.history.iter().map(|d| d.split.unwrap().k).collect();
    let epochs: Vec<u64> = st.history.iter().map(|d| d.split.unwrap().epoch).collect();
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "epochs must increase: {epochs:?}");
    let mut want = [1u32, 27, 1].into_iter().peekable();
    for k in &ks {
        if want.peek() == Some(k) {
            want.next();
        }
    }
    assert!(want.next().is_none(), "history {ks:?} does not go 1 → 27 → 1");
    let bad = st.history.iter().find(|d| d.split.unwrap().k == 27).unwrap();
    let inputs = bad.inputs.as_ref().unwrap();
    assert!(inputs.snr_db < 10.0 && bad.reason.contains("k=27"), "decision for the bad channel: {bad:?}");
    assert_eq!(st.policy, "threshold");
    // The agent's metrics say the same.
    let m = splitinfer_tests::scrape(&metrics_addr.to_string()).await;
    let sample = |name: &str, labels: &[(&str, &str)]| splitinfer_tests::sample(&m, name, labels);
    assert_eq!(sample("splitinfer_agent_split", &[]), 1.0);
    assert_eq!(sample("splitinfer_agent_epoch", &[]), st.current.as_ref().unwrap().split.unwrap().epoch as f64);
    assert_eq!(sample("splitinfer_agent_subscriber_acked_epoch", &[("subscriber", "ue")]), last_epoch as f64);
    assert_eq!(sample("splitinfer_agent_subscriber_connected", &[("subscriber", "edge"), ("role", "edge")]), 1.0);
    assert!(sample("splitinfer_agent_observations_total", &[]) > 10.0);

    stop.cancel();
    let _ = stop_agent.send(());
    agent_task.await.unwrap().unwrap();
    bed.shutdown().await;
}

/// A real agent process, killed with SIGKILL mid-generation and started again on its port.
struct AgentProcess(std::process::Child);

impl AgentProcess {
    fn start(port: u16, emulator: &str, k: u32) -> Self {
        let child = std::process::Command::new(workspace_binary("agent"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--emulator", emulator, "--policy", "fixed"])
            .args(["--k", &k.to_string(), "--n-layers", "30", "--stats-period-ms", "100"])
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        Self(child)
    }

    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_agent_does_not_disturb_generation_and_a_restart_resumes_decisions() {
    let bed = Testbed::start().await;
    // The agent must come back on the same address, so its port is chosen here.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let agent_url = format!("http://127.0.0.1:{port}");
    let first_agent = std::sync::Arc::new(std::sync::Mutex::new(Some(AgentProcess::start(port, &bed.emulator_url, 4))));

    let stop = CancellationToken::new();
    let ue = Follower::spawn(agent_url.clone(), "ue".into(), pb::Role::Ue, stop.clone());
    let first = decision_where(&ue, |_| true).await;
    assert_eq!(first.k, 4);

    let req = greedy_request(PROMPT, 15, 260);
    let reference = monolithic(&req);
    let second_agent = std::sync::Arc::new(std::sync::Mutex::new(None::<AgentProcess>));
    let (emulator, a1, a2) = (bed.emulator_url.clone(), first_agent.clone(), second_agent.clone());
    let mut seen = 0usize;
    let mut connected_after_kill = None;
    let mut client = ue_client::connect(&bed.emulator_url, 64 << 20, Duration::from_secs(5)).await.unwrap();
    let report = ue_client::generate_adaptive(&mut client, shared_model(), req, &ue, |_| {
        seen += 1;
        if seen == 30 {
            a1.lock().unwrap().take().unwrap().kill();
        }
        if seen == 60 {
            connected_after_kill = Some(ue.connected());
            *a2.lock().unwrap() = Some(AgentProcess::start(port, &emulator, 20));
        }
    })
    .await
    .unwrap();
    eprint!("{}", report.breakdown());

    assert_eq!(connected_after_kill, Some(false), "the follower should have noticed the agent was gone");
    // Nothing was lost or corrupted: exactly the monolithic tokens, split changes and all.
    let got: Vec<(u32, f32)> = report.tokens.iter().map(|t| (t.id, t.logprob)).collect();
    assert_eq!(got, reference);
    assert_eq!(report.tokens[0].k, 4);
    assert_eq!(report.migrations.len(), 1, "{:?}", report.migrations);
    let m = &report.migrations[0];
    assert_eq!((m.from, m.to), (4, 20));
    assert!(m.at_token > 60 && m.epoch > first.epoch, "the restarted agent's decision must come later with a higher epoch: {m:?}");
    // The restarted agent heard the acknowledgement.
    let mut st = status(&agent_url).await;
    for _ in 0..50 {
        if st.subscribers.iter().any(|s| s.name == "ue" && s.acked_epoch == m.epoch) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        st = status(&agent_url).await;
    }
    assert!(st.subscribers.iter().any(|s| s.name == "ue" && s.acked_epoch == m.epoch && s.acked_k == 20), "{:?}", st.subscribers);

    stop.cancel();
    drop(second_agent.lock().unwrap().take());
    bed.shutdown().await;
}

/// The agent sees the edge's load: each observation carries the sessions the edge has open and
/// the layers it runs for them (its Info, polled through the emulator once a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observations_carry_the_edges_load() {
    let bed = Testbed::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_url = format!("http://{}", listener.local_addr().unwrap());
    let config = agent::AgentConfig::for_tests(bed.emulator_url.clone());
    let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let load = |s: &pb::AgentStatus| s.observation.as_ref().filter(|o| o.edge_load_known).map(|o| (o.edge_sessions, o.edge_layers));
    let idle = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(mut c) = AgentClient::connect(agent_url.clone()).await
                && let Ok(s) = c.status(pb::StatusRequest { history: 0 }).await
                && let Some(l) = load(&s.into_inner())
            {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("no observation with the edge's load within 20 s");
    assert_eq!(idle, (0, 0), "an idle edge");
    // A generation at k = 10 while the agent watches: the edge runs 30 − 10 = 20 layers for it.
    let (emulator, seen) = (bed.emulator_url.clone(), std::sync::Arc::new(std::sync::Mutex::new(Vec::new())));
    let mut req = greedy_request(PROMPT, 10, 400);
    req.ignore_eos = true;
    let (u, s2) = (agent_url.clone(), seen.clone());
    let watcher = tokio::spawn(async move {
        let mut c = AgentClient::connect(u).await.unwrap();
        loop {
            let st = c.status(pb::StatusRequest { history: 0 }).await.unwrap().into_inner();
            if let Some(l) = load(&st) {
                s2.lock().unwrap().push(l);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut client = ue_client::connect(&emulator, 64 << 20, Duration::from_secs(5)).await.unwrap();
    ue_client::generate(&mut client, shared_model(), req, |_| {}).await.unwrap();
    watcher.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&(1, 20)), "the agent never saw the session's load: {seen:?}");
    let _ = stop_agent.send(());
    agent_task.await.unwrap().unwrap();
    bed.shutdown().await;
}
