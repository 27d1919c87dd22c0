//! The end-to-end test harness of splitinfer: the real assets (fetched if need be), a testbed
//! that runs the real edge and emulator servers on loopback ports, and helpers to drive the UE.
//! The tests themselves live in `tests/`.

pub mod browser;
pub mod grpcurl;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use split_core::assets;
use split_core::bundle::LoadedModel;

/// The default model, fetched into the cache on first use. A test that cannot get it fails with
/// the reason and the command that fetches it by hand; it never passes silently.
pub fn default_model() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetch_model(&assets::SMOLLM2_135M)).clone()
}

/// A known model, fetched into the cache if missing (see [`default_model`]).
pub fn fetch_model(asset: &assets::ModelAsset) -> PathBuf {
    assets::ensure_model(asset, &mut |m| eprintln!("fetch: {m}")).unwrap_or_else(|e| {
        panic!(
            "model {} is needed and could not be fetched: {e}\n(run `cargo run --release -p splitinfer -- fetch-assets --model {}`)",
            asset.name, asset.name
        )
    })
}

/// The default evaluation text (Brown news, ca01–ca44), converted into the cache on first use.
pub fn default_eval_text() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        assets::ensure_corpus(&mut |m| eprintln!("fetch: {m}")).unwrap_or_else(|e| {
            panic!("the Brown corpus is needed and could not be prepared: {e}\n(run `cargo run --release -p splitinfer -- fetch-assets`)")
        })
    })
    .clone()
}

/// The default model loaded once per test process, shared by in-process edges and UEs.
pub fn shared_model() -> Arc<LoadedModel> {
    static M: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    M.get_or_init(|| Arc::new(LoadedModel::load(&default_model()).unwrap())).clone()
}

/// The control token of every emulator the harness starts (SetChannel needs one).
pub const CONTROL_TOKEN: &str = "splitinfer-test-token";

/// `msg` as a request that carries [`CONTROL_TOKEN`], for SetChannel.
pub fn authorized<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {CONTROL_TOKEN}").parse().expect("ASCII"));
    r
}

/// An edge and a channel emulator in front of it, each the real `run(..)` on its own
/// 127.0.0.1:0 listener with real gRPC between them; stopped when dropped.
pub struct Testbed {
    pub edge_url: String,
    /// host:port of the edge's Prometheus endpoint.
    pub edge_metrics: String,
    pub emulator_url: String,
    /// host:port of the emulator's Prometheus endpoint.
    pub emulator_metrics: String,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Testbed {
    pub async fn start() -> Self {
        Self::start_with(edge_server::EdgeConfig::for_tests()).await
    }

    pub async fn start_with(edge_config: edge_server::EdgeConfig) -> Self {
        Self::start_full(edge_config, |_| {}).await
    }

    /// Like [`Testbed::start_with`], letting `emulator` adjust the emulator's configuration
    /// (its channel, for instance).
    pub async fn start_full(edge_config: edge_server::EdgeConfig, emulator: impl FnOnce(&mut channel_emulator::EmulatorConfig)) -> Self {
        let model = shared_model();
        let (edge_stop, edge_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let edge_url = format!("http://{}", listener.local_addr().unwrap());
        let edge_metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let edge_metrics = edge_metrics_listener.local_addr().unwrap().to_string();
        let edge = tokio::spawn(edge_server::run_with_metrics(listener, Some(edge_metrics_listener), edge_config, model, async move {
            let _ = edge_rx.await;
        }));
        let (emu_stop, emu_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emulator_url = format!("http://{}", listener.local_addr().unwrap());
        let mut config = channel_emulator::EmulatorConfig::new(edge_url.clone());
        config.control_token = Some(splitinfer_telemetry::auth::ControlToken::new(CONTROL_TOKEN));
        emulator(&mut config);
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emulator_metrics = metrics.local_addr().unwrap().to_string();
        let emu = tokio::spawn(channel_emulator::run_with_metrics(listener, Some(metrics), config, async move {
            let _ = emu_rx.await;
        }));
        Self { edge_url, edge_metrics, emulator_url, emulator_metrics, stop: vec![edge_stop, emu_stop], tasks: vec![edge, emu] }
    }

    /// Stops both services and re-raises any error or panic they ended with.
    pub async fn shutdown(mut self) {
        for s in self.stop.drain(..) {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..) {
            match t.await {
                Ok(r) => r.unwrap(),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("service task failed: {e}"),
            }
        }
    }
}

/// A UE request for greedy generation with an f32 wire.
pub fn greedy_request(prompt: &str, k: usize, max_new_tokens: usize) -> ue_client::GenerateRequest {
    let model = shared_model();
    ue_client::GenerateRequest {
        prompt: model.tokenizer.encode(prompt).unwrap(),
        split: model.model.split_point(k).unwrap(),
        wire: split_core::wire::WireDType::F32,
        max_new_tokens,
        ignore_eos: false,
        sampling: split_core::sampling::SamplingConfig::GREEDY,
        prefill_chunk: 0,
        client: "test".into(),
        migration: split_core::migrate::MigrationMode::Auto,
        link_mbps: 100.0,
        edge_speedup: 1.0,
        normalization: Default::default(),
        concealment: Default::default(),
        calibration: None,
    }
}

/// Generates through `url` (edge or emulator) with the in-process UE.
pub async fn generate_via(url: &str, req: ue_client::GenerateRequest) -> Result<ue_client::GenerationReport, ue_client::UeError> {
    let mut client = ue_client::connect(url, 64 << 20, std::time::Duration::from_secs(5)).await?;
    ue_client::generate(&mut client, shared_model(), req, |_| {}).await
}

/// The tokens and log-probabilities the monolithic in-process model produces for `req`.
pub fn monolithic(req: &ue_client::GenerateRequest) -> Vec<(u32, f32)> {
    let model = shared_model();
    let mut f = split_core::pipeline::Monolithic::new(&model.model);
    let mut sampler = split_core::sampling::Sampler::new(req.sampling).unwrap();
    let out = split_core::pipeline::generate(&mut f, &model.tokenizer, &req.prompt, req.max_new_tokens, &mut sampler, true, &mut |_| Ok(())).unwrap();
    out.tokens.iter().map(|t| (t.id, t.logprob)).collect()
}

/// A real `edge-server` process on a free loopback port, serving the default model; killed when
/// dropped.
pub struct EdgeProcess {
    child: std::process::Child,
    pub port: u16,
}

impl EdgeProcess {
    /// Starts `edge-server --listen 127.0.0.1:PORT --model DEFAULT` plus `args`, with `env` set,
    /// and waits until it answers `Info` (failing the test after 60 s).
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(workspace_binary("edge-server"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--model", &default_model().display().to_string()])
            .args(args)
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        let edge = Self { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(mut c) = splitinfer_proto::v1::edge_client::EdgeClient::connect(edge.url()).await
                && c.info(splitinfer_proto::v1::InfoRequest {}).await.is_ok()
            {
                return edge;
            }
            assert!(std::time::Instant::now() < deadline, "the edge never came up");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of a workspace binary built next to the running test (same profile and target dir).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace binaries first (`cargo test --workspace --release` does, or `cargo build --release --workspace`)",
        bin.display()
    );
    bin
}

/// Scrapes a Prometheus endpoint at `addr` (host:port) and parses every sample; panics with the
/// reason if the answer is not `200 OK` OpenMetrics text or a line does not parse.
pub async fn scrape(addr: &str) -> Vec<splitinfer_telemetry::metrics::Sample> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let (head, text) = body.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains(splitinfer_telemetry::metrics::CONTENT_TYPE), "{head}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF: {text}");
    splitinfer_telemetry::metrics::parse(text).unwrap_or_else(|e| panic!("{addr}: {e}\n{text}"))
}

/// The value of the sample `name` whose labels include every pair of `labels`; panics naming the
/// series if there is none.
pub fn sample(samples: &[splitinfer_telemetry::metrics::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find_sample(samples, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

/// The value of the sample `name` whose labels include every pair of `labels`, if any.
pub fn find_sample(samples: &[splitinfer_telemetry::metrics::Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v)))
        .map(|s| s.value)
}
