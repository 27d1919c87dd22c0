//! The agent end to end: a real channel emulator (its statistics stream), the real agent with the
//! shipped threshold table, and followers as the UE and the edge use them, over loopback gRPC.
//! Decisions follow the channel, acknowledgements are recorded, overrides need the token, epochs
//! keep growing across an agent restart, and grpcurl works through reflection alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agent::{AgentConfig, Follower};
use split_core::channel::Preset;
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::agent_client::AgentClient;
use splitinfer_proto::v1::emulator_client::EmulatorClient;
use splitinfer_tests::grpcurl;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const TOKEN: &str = "test-token";
/// The shipped table: good → k = 1, bad → k = 27 (30 layers).
const GOOD_K: u32 = 1;
const BAD_K: u32 = 27;

fn thresholds() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/thresholds.csv")
}

/// A service task with its stop switch; stopping re-raises its error or panic.
struct Service {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        match tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("the service did not stop within 10 s") {
            Ok(r) => r.unwrap(),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("service task failed: {e}"),
        }
    }
}

/// The emulator, impaired with `preset`. No edge is needed for its statistics API.
async fn start_emulator(preset: Preset) -> (String, Service) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = channel_emulator::EmulatorConfig::new("http://127.0.0.1:1");
    config.control_token = Some(splitinfer_telemetry::auth::ControlToken::new(splitinfer_tests::CONTROL_TOKEN));
    config.channel = true;
    config.channel_args.preset = preset;
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(channel_emulator::run_with_metrics(listener, None, config, async move {
        let _ = rx.await;
    }));
    (url, Service { stop: Some(stop), task })
}

fn agent_config(emulator: &str) -> AgentConfig {
    let mut c = AgentConfig::for_tests(emulator);
    c.policy = agent::config::PolicyKind::Threshold;
    c.k = None;
    c.thresholds = Some(thresholds());
    c.n_layers = Some(30);
    c.stats_period_ms = 50;
    c.min_dwell_ms = 300;
    c.confirm = 2;
    c.control_token = Some(agent::config::ControlToken::new(TOKEN));
    c
}

async fn start_agent(listener: TcpListener, config: AgentConfig) -> Service {
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(agent::run(listener, config, async move {
        let _ = rx.await;
    }));
    Service { stop: Some(stop), task }
}

async fn set_channel(emulator: &str, preset: &str) {
    let mut c = EmulatorClient::connect(emulator.to_string()).await.unwrap();
    c.set_channel(splitinfer_tests::authorized(pb::SetChannelRequest { preset: preset.into(), ..Default::default() })).await.unwrap();
}

async fn client(url: &str) -> AgentClient<tonic::transport::Channel> {
    AgentClient::connect(url.to_string()).await.unwrap()
}

async fn status(url: &str) -> pb::AgentStatus {
    client(url).await.status(pb::StatusRequest { history: 0 }).await.unwrap().into_inner()
}

fn k(d: &pb::Decision) -> u32 {
    d.split.unwrap().k
}

fn epoch(d: &pb::Decision) -> u64 {
    d.split.unwrap().epoch
}

/// The follower's latest decision once it satisfies `want`.
async fn wait_for(f: &Follower, what: &str, want: impl Fn(&pb::Decision) -> bool) -> pb::Decision {
    let mut rx = f.decisions();
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(d) = rx.borrow_and_update().clone().filter(&want) {
                return d;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no decision {what} within 15 s; latest: {:?}", f.decisions().borrow()))
}

/// Polls the agent's status until `want` holds.
async fn wait_status(url: &str, what: &str, want: impl Fn(&pb::AgentStatus) -> bool) -> pb::AgentStatus {
    for _ in 0..300 {
        let s = status(url).await;
        if want(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("status never showed {what}: {:?}", status(url).await)
}

fn subscriber<'a>(s: &'a pb::AgentStatus, name: &str) -> &'a pb::SubscriberStatus {
    s.subscribers.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("no subscriber {name} in {:?}", s.subscribers))
}

fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        splitinfer_telemetry::init(false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_follow_the_channel_and_both_subscribers_ack_them() {
    init_logs();
    let (emu, emulator) = start_emulator(Preset::Good).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let agent = start_agent(listener, agent_config(&emu)).await;
    let shutdown = CancellationToken::new();
    let ue = Follower::spawn(url.clone(), "ue".into(), pb::Role::Ue, shutdown.clone());
    let edge = Follower::spawn(url.clone(), "edge".into(), pb::Role::Edge, shutdown.clone());

    let both_ack = |d: &pb::Decision| {
        ue.ack(epoch(d), k(d));
        edge.ack(epoch(d), k(d));
    };
    let good = wait_for(&ue, "for the good channel", |d| k(d) == GOOD_K).await;
    let inputs = good.inputs.clone().unwrap();
    assert_eq!((inputs.scenario.as_str(), inputs.snr_db, inputs.impaired), ("good", 20.0, true), "no traffic: the configured SNR");
    assert_eq!(good.policy, "threshold");
    assert!(!good.overridden);
    assert!(good.reason.ends_with("row 1 of thresholds.csv → k=1"), "{}", good.reason);
    assert_eq!(epoch(&wait_for(&edge, "at the edge", |d| epoch(d) == epoch(&good)).await), epoch(&good));
    both_ack(&good);

    set_channel(&emu, "bad").await;
    let bad = wait_for(&ue, "for the bad channel", |d| k(d) == BAD_K).await;
    assert!(epoch(&bad) > epoch(&good));
    let inputs = bad.inputs.clone().unwrap();
    assert_eq!((inputs.scenario.as_str(), inputs.snr_db, inputs.fading_m), ("bad", 5.0, 1.0));
    assert_eq!(bad.reason, "snr 5.0 dB < 10.0 dB: row 3 of thresholds.csv → k=27");
    // Not within the 300 ms dwell (measured on the monotonic clock; a few ms of slack for the
    // wall clock the timestamps come from).
    assert!(bad.unix_ms >= good.unix_ms + 290, "{} ms after the previous decision", bad.unix_ms - good.unix_ms);
    wait_for(&edge, "for the bad channel at the edge", |d| epoch(d) == epoch(&bad)).await;
    both_ack(&bad);

    set_channel(&emu, "good").await;
    let back = wait_for(&ue, "for the good channel again", |d| k(d) == GOOD_K && epoch(d) > epoch(&bad)).await;
    wait_for(&edge, "for the good channel again at the edge", |d| epoch(d) == epoch(&back)).await;
    both_ack(&back);
    assert!(ue.connected() && edge.connected());

    let s = wait_status(&url, "both acks of the last decision", |s| {
        s.subscribers.len() == 2 && s.subscribers.iter().all(|x| x.acked_epoch == epoch(&back))
    })
    .await;
    assert_eq!(s.current.as_ref(), Some(&back));
    assert_eq!((s.policy.as_str(), s.n_layers, s.min_dwell_ms, s.pinned_k), ("threshold", 30, 300, None));
    assert!(s.policy_params["file"].ends_with("thresholds.csv") && s.policy_params["hysteresis_db"] == "1", "{:?}", s.policy_params);
    assert!(s.stats_connected && s.observations >= 3);
    let (u, e) = (subscriber(&s, "ue"), subscriber(&s, "edge"));
    assert_eq!((u.role(), u.connected, u.acked_k), (pb::Role::Ue, true, GOOD_K));
    assert_eq!((e.role(), e.connected, e.acked_k), (pb::Role::Edge, true, GOOD_K));
    assert!(u.acked_unix_ms >= back.unix_ms);
    let history: Vec<(u64, u32)> = s.history.iter().map(|d| (epoch(d), k(d))).collect();
    assert_eq!(history, [(epoch(&good), GOOD_K), (epoch(&bad), BAD_K), (epoch(&back), GOOD_K)]);
    assert_eq!(status_limited(&url, 1).await.history, std::slice::from_ref(&back));

    // An acknowledgement of an epoch not issued yet is refused and changes nothing.
    let mut c = client(&url).await;
    let future = epoch(&back) + 5;
    let e = c.ack(pb::AckRequest { subscriber: "ue".into(), epoch: future, k: GOOD_K }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), format!("subscriber ue acknowledged epoch {future} but the latest decision is epoch {}", epoch(&back)));
    let e = c.ack(pb::AckRequest { subscriber: "ue".into(), epoch: epoch(&bad), k: GOOD_K }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "epoch {} was k={BAD_K}", epoch(&bad));
    let e = c.ack(pb::AckRequest { subscriber: "nobody".into(), epoch: 1, k: 1 }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let s = status(&url).await;
    assert_eq!((subscriber(&s, "ue").acked_epoch, subscriber(&s, "ue").acked_k), (epoch(&back), GOOD_K));

    // The same through grpcurl and reflection alone, as an operator would.
    let target = addr.to_string();
    let services = grpcurl::run(&["-plaintext", &target, "list"]).unwrap();
    // grpcurl 1.8.6 speaks the v1alpha reflection protocol, which the agent serves beside v1.
    for s in ["splitinfer.v1.Agent", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"] {
        assert!(services.lines().any(|l| l == s), "grpcurl list lacks {s}:\n{services}");
    }
    // Only what the agent answers: not the Edge or Emulator services it would refuse.
    let ours: Vec<&str> = services.lines().filter(|l| l.starts_with("splitinfer.")).collect();
    assert_eq!(ours, ["splitinfer.v1.Agent"], "{services}");
    let out = grpcurl::run(&["-plaintext", &target, "splitinfer.v1.Agent/Status"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("grpcurl printed no JSON ({e}):\n{out}"));
    // Proto3 JSON: camelCase names, 64-bit integers as strings.
    assert_eq!(v["current"]["split"]["k"], GOOD_K);
    assert_eq!(v["current"]["split"]["epoch"], epoch(&back).to_string());
    assert_eq!(v["policy"], "threshold");
    assert_eq!(v["nLayers"], 30);
    let ks: Vec<u64> = v["history"].as_array().unwrap().iter().map(|d| d["split"]["k"].as_u64().unwrap()).collect();
    assert_eq!(ks, [u64::from(GOOD_K), u64::from(BAD_K), u64::from(GOOD_K)]);
    let out = grpcurl::run(&["-plaintext", "-d", r#"{"history": 1}"#, &target, "splitinfer.v1.Agent/Status"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["history"].as_array().unwrap().len(), 1);
    for service in ["", "splitinfer.v1.Agent"] {
        let body = format!(r#"{{"service": "{service}"}}"#);
        let out = grpcurl::run(&["-plaintext", "-d", &body, &target, "grpc.health.v1.Health/Check"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], "SERVING", "health of {service:?}: {out}");
    }

    shutdown.cancel();
    agent.stop().await;
    emulator.stop().await;
}

async fn status_limited(url: &str, history: u32) -> pb::AgentStatus {
    client(url).await.status(pb::StatusRequest { history }).await.unwrap().into_inner()
}

fn override_request(action: pb::override_request::Action, token: Option<&str>) -> tonic::Request<pb::OverrideRequest> {
    let mut r = tonic::Request::new(pb::OverrideRequest { action: Some(action), reason: "test".into() });
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_need_the_token_pin_at_once_and_release_to_the_policy() {
    init_logs();
    let (emu, emulator) = start_emulator(Preset::Good).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let agent = start_agent(listener, agent_config(&emu)).await;
    let shutdown = CancellationToken::new();
    let ue = Follower::spawn(url.clone(), "ue".into(), pb::Role::Ue, shutdown.clone());
    let first = wait_for(&ue, "for the good channel", |d| k(d) == GOOD_K).await;
    let mut c = client(&url).await;
    use pb::override_request::Action::{PinK, Release};

    for (token, code, needle) in [
        (None, Code::Unauthenticated, "authorization: Bearer"),
        (Some("wrong"), Code::PermissionDenied, "wrong control token"),
    ] {
        let e = c.r#override(override_request(PinK(5), token)).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(needle), "{}", e.message());
    }
    let e = c.r#override(override_request(PinK(31), Some(TOKEN))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "pin_k 31 is outside 0..=30 (the model has 30 layers)");
    let s = status(&url).await;
    assert_eq!((s.pinned_k, s.current.as_ref().map(epoch)), (None, Some(epoch(&first))), "refused overrides change nothing");

    let pinned = c.r#override(override_request(PinK(5), Some(TOKEN))).await.unwrap().into_inner().decision.unwrap();
    assert_eq!((k(&pinned), epoch(&pinned), pinned.overridden), (5, epoch(&first) + 1, true));
    assert_eq!((pinned.reason.as_str(), pinned.policy.as_str()), ("override: test", "override"));
    assert_eq!(wait_for(&ue, "pinned", |d| epoch(d) == epoch(&pinned)).await, pinned);
    // Pinned: a channel change does not move k.
    set_channel(&emu, "bad").await;
    let s = wait_status(&url, "observations of the bad channel", |s| s.observation.as_ref().is_some_and(|o| o.scenario == "bad")).await;
    let seen = s.observations;
    wait_status(&url, "more observations", |s| s.observations >= seen + 5).await;
    let s = status(&url).await;
    assert_eq!((s.pinned_k, s.current.as_ref()), (Some(5), Some(&pinned)));

    // Released: the policy decides at the next observation, without waiting for the dwell.
    let in_force = c.r#override(override_request(Release(true), Some(TOKEN))).await.unwrap().into_inner().decision;
    assert_eq!(in_force.as_ref(), Some(&pinned), "release returns the decision in force");
    let after = wait_for(&ue, "from the policy after release", |d| epoch(d) > epoch(&pinned)).await;
    assert_eq!((k(&after), after.overridden, after.policy.as_str()), (BAD_K, false, "threshold"));
    assert!(after.reason.starts_with("override released; "), "{}", after.reason);
    assert_eq!(status(&url).await.pinned_k, None);

    // An agent without a control token refuses every override and says how to enable them.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = agent_config(&emu);
    config.control_token = None;
    let open = start_agent(listener, config).await;
    let e = client(&open_url).await.r#override(override_request(PinK(5), Some(TOKEN))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("--control-token") && e.message().contains("AGENT_CONTROL_TOKEN"), "{}", e.message());

    shutdown.cancel();
    open.stop().await;
    agent.stop().await;
    emulator.stop().await;
}

/// Binds `addr` again once the previous listener is gone.
async fn rebind(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("cannot bind {addr} again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_reconnect_to_a_restarted_agent_and_epochs_keep_growing() {
    init_logs();
    let (emu, emulator) = start_emulator(Preset::Good).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let agent = start_agent(listener, agent_config(&emu)).await;
    let shutdown = CancellationToken::new();
    let ue = Follower::spawn(url.clone(), "ue".into(), pb::Role::Ue, shutdown.clone());
    let edge = Follower::spawn(url.clone(), "edge".into(), pb::Role::Edge, shutdown.clone());

    let good = wait_for(&ue, "for the good channel", |d| k(d) == GOOD_K).await;
    set_channel(&emu, "bad").await;
    let bad = wait_for(&ue, "for the bad channel", |d| k(d) == BAD_K).await;
    wait_for(&edge, "for the bad channel at the edge", |d| epoch(d) == epoch(&bad)).await;
    ue.ack(epoch(&bad), k(&bad));
    edge.ack(epoch(&bad), k(&bad));
    wait_status(&url, "both acks", |s| s.subscribers.iter().filter(|x| x.acked_epoch == epoch(&bad)).count() == 2).await;
    assert!(epoch(&bad) > epoch(&good));

    agent.stop().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while ue.connected() || edge.connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the followers never noticed the agent was gone");
    assert_eq!(ue.decisions().borrow().as_ref(), Some(&bad), "the last decision stays while the agent is away");

    // A new agent on the same address, knowing nothing of the old epochs.
    let agent = start_agent(rebind(addr).await, agent_config(&emu)).await;
    let renewed = wait_for(&ue, "from the restarted agent", |d| epoch(d) > epoch(&bad)).await;
    assert_eq!(k(&renewed), BAD_K, "the channel is still bad");
    wait_for(&edge, "from the restarted agent at the edge", |d| epoch(d) == epoch(&renewed)).await;
    assert!(ue.connected() && edge.connected());
    ue.ack(epoch(&renewed), k(&renewed));
    edge.ack(epoch(&renewed), k(&renewed));
    let s = wait_status(&url, "acks to the restarted agent", |s| {
        s.subscribers.len() == 2 && s.subscribers.iter().all(|x| x.connected && x.acked_epoch == epoch(&renewed))
    })
    .await;
    assert_eq!(s.current.as_ref(), Some(&renewed));

    set_channel(&emu, "good").await;
    let next = wait_for(&ue, "for the good channel after the restart", |d| k(d) == GOOD_K).await;
    assert!(epoch(&next) > epoch(&renewed));
    wait_for(&edge, "for the good channel at the edge", |d| epoch(d) == epoch(&next)).await;

    shutdown.cancel();
    agent.stop().await;
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_stays_while_statistics_are_down_and_resumes_after() {
    init_logs();
    let (emu, emulator) = start_emulator(Preset::Good).await;
    let emu_addr: SocketAddr = emu.trim_start_matches("http://").parse().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let agent = start_agent(listener, agent_config(&emu)).await;
    let shutdown = CancellationToken::new();
    let ue = Follower::spawn(url.clone(), "ue".into(), pb::Role::Ue, shutdown.clone());
    let good = wait_for(&ue, "for the good channel", |d| k(d) == GOOD_K).await;

    emulator.stop().await;
    let down = wait_status(&url, "the statistics stream down", |s| !s.stats_connected).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = status(&url).await;
    assert_eq!((s.current.as_ref(), s.observations, s.history.len()), (Some(&good), down.observations, 1), "no observations, no new decisions");

    // The emulator comes back (on the same address) with a bad channel: observations resume.
    let listener = rebind(emu_addr).await;
    let mut config = channel_emulator::EmulatorConfig::new("http://127.0.0.1:1");
    config.control_token = Some(splitinfer_telemetry::auth::ControlToken::new(splitinfer_tests::CONTROL_TOKEN));
    config.channel = true;
    config.channel_args.preset = Preset::Bad;
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(channel_emulator::run_with_metrics(listener, None, config, async move {
        let _ = rx.await;
    }));
    let emulator = Service { stop: Some(stop), task };
    let bad = wait_for(&ue, "after the statistics came back", |d| k(d) == BAD_K).await;
    assert_eq!(epoch(&bad), epoch(&good) + 1);
    assert!(status(&url).await.stats_connected);

    shutdown.cancel();
    agent.stop().await;
    emulator.stop().await;
}

/// The policy `splitinfer rl report` trained (docs/rl/smollm2-135m), run live by the agent: every
/// decision it pushes as the emulator's channel changes is the file's choice for that
/// decision's inputs and the split in force before it.
#[tokio::test(flavor = "multi_thread")]
async fn the_policy_the_report_trained_decides_live() {
    use agent::policy::learned::PolicyFile;
    init_logs();
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/rl/smollm2-135m/policy-mb-ppo.safetensors");
    let policy = PolicyFile::load(&file).unwrap();
    let (emu, emulator) = start_emulator(Preset::Good).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut c = AgentConfig::for_tests(&emu);
    c.policy = agent::config::PolicyKind::Learned;
    c.k = None;
    c.policy_file = Some(file.clone());
    c.stats_period_ms = 50;
    c.min_dwell_ms = 0;
    c.confirm = 1;
    let agent = start_agent(listener, c).await;

    let mut settled = Vec::new();
    for preset in ["good", "bad", "good"] {
        set_channel(&emu, preset).await;
        let before = status(&url).await.observations;
        // Ten observations of this channel: enough for the policy to act and settle.
        let s = wait_status(&url, preset, |s| s.observation.as_ref().is_some_and(|o| o.scenario == preset) && s.observations >= before + 10).await;
        let current = s.current.clone().unwrap();
        assert_eq!(current.policy, "learned");
        assert!(current.reason.starts_with("learned(mb-ppo): "), "{}", current.reason);
        settled.push((preset, k(&current)));
    }
    let history = status_limited(&url, 64).await.history;
    assert!(!history.is_empty());
    let mut prev: Option<u32> = None;
    for d in &history {
        let i = d.inputs.clone().unwrap();
        let obs = agent::observation::Observation {
            unix_ms: i.unix_ms,
            scenario: i.scenario.clone(),
            snr_db: i.snr_db,
            fading_m: i.fading_m,
            loss_rate: i.loss_rate,
            erasure_rate: i.erasure_rate,
            mean_delay_ms: i.mean_delay_ms,
            impaired: i.impaired,
            channel_version: i.channel_version,
            edge: i.edge_load_known.then_some(agent::observation::EdgeLoad { sessions: i.edge_sessions, layers: i.edge_layers }),
        };
        let want = policy.choose(&policy.raw_features(&obs, prev));
        assert_eq!(k(d), want, "decision {:?} with k {prev:?} in force", d.reason);
        prev = Some(k(d));
    }
    println!("settled splits: {settled:?}; {} decisions, each the policy file's choice", history.len());
    agent.stop().await;
    emulator.stop().await;
}
