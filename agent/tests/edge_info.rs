//! Without --n-layers the agent asks the edge (Edge/Info) for the model's layer count, retrying
//! until an edge answers, and checks its policy against it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agent::AgentConfig;
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::agent_client::AgentClient;
use splitinfer_proto::v1::edge_server::{Edge, EdgeServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

/// An edge that only answers Info, refusing the first `refuse` calls (an edge still loading).
struct FakeEdge {
    n_layers: u32,
    refuse: u32,
    calls: Arc<AtomicU32>,
}

#[tonic::async_trait]
impl Edge for FakeEdge {
    type GenerateStream = tokio_stream::Empty<Result<pb::EdgeMessage, Status>>;

    async fn generate(&self, _: Request<Streaming<pb::UeMessage>>) -> Result<Response<Self::GenerateStream>, Status> {
        Err(Status::unimplemented("a fake edge"))
    }

    async fn info(&self, _: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.refuse {
            return Err(Status::unavailable("still loading the model"));
        }
        Ok(Response::new(pb::InfoResponse { model_name: "fake".into(), n_layers: self.n_layers, ..Default::default() }))
    }
}

fn serve_edge(listener: TcpListener, n_layers: u32, refuse: u32) -> (Arc<AtomicU32>, tokio::task::JoinHandle<()>) {
    let calls = Arc::new(AtomicU32::new(0));
    let edge = FakeEdge { n_layers, refuse, calls: calls.clone() };
    (calls, tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(EdgeServer::new(edge))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    }))
}

fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("splitinfer-agent-edge-info-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_count_comes_from_the_edge_once_it_answers() {
    let edge_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_url = format!("http://{}", edge_listener.local_addr().unwrap());
    let (calls, edge) = serve_edge(edge_listener, 24, 2);
    let mut config = AgentConfig::for_tests("http://127.0.0.1:1");
    config.n_layers = None;
    config.edge = edge_url;
    config.k = Some(24);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run(listener, config, async move {
        let _ = rx.await;
    }));

    let status = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(mut c) = AgentClient::connect(url.clone()).await
                && let Ok(s) = c.status(pb::StatusRequest::default()).await
            {
                return s.into_inner();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the agent never served after the edge answered");
    assert_eq!((status.n_layers, status.policy.as_str()), (24, "fixed"));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two refusals, then the answer");
    let _ = stop.send(());
    agent.await.unwrap().unwrap();
    edge.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_beyond_the_edges_model_is_refused_naming_the_line() {
    let edge_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_url = format!("http://{}", edge_listener.local_addr().unwrap());
    let (_, edge) = serve_edge(edge_listener, 24, 0);
    let table = scratch("deep.csv", "min_snr_db,max_loss_rate,k\n10,0.05,2\n-inf,1,27\n");
    let mut config = AgentConfig::for_tests("http://127.0.0.1:1");
    config.policy = agent::config::PolicyKind::Threshold;
    config.k = None;
    config.thresholds = Some(table.clone());
    config.n_layers = None;
    config.edge = edge_url;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(15), agent::run(listener, config, std::future::pending()))
        .await
        .expect("the agent should refuse to start")
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("threshold file {} line 3: k 27 is more than the model's 24 layers (k must be in 0..=24)", table.display()));
    edge.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_policy_for_another_layer_count_than_the_edges_is_refused() {
    use agent::policy::learned::{FORMAT, Layer, PolicyFile, PolicyMeta};
    let edge_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_url = format!("http://{}", edge_listener.local_addr().unwrap());
    let (_, edge) = serve_edge(edge_listener, 24, 0);
    let meta = PolicyMeta {
        format: FORMAT.into(),
        algorithm: "mb-ppo".into(),
        model: "smollm2-135m".into(),
        n_layers: 30,
        features: vec!["snr_db".into()],
        lower: vec![-10.0],
        upper: vec![30.0],
        mean: vec![10.0],
        std: vec![10.0],
        activation: "tanh".into(),
        description: String::new(),
    };
    let path = scratch("thirty.safetensors", "");
    PolicyFile { meta, layers: vec![Layer { inputs: 1, outputs: 31, weight: vec![0.0; 31], bias: vec![0.0; 31] }] }.save(&path).unwrap();
    let mut config = AgentConfig::for_tests("http://127.0.0.1:1");
    config.policy = agent::config::PolicyKind::Learned;
    config.k = None;
    config.policy_file = Some(path.clone());
    config.n_layers = None;
    config.edge = edge_url;
    config.validate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(15), agent::run(listener, config, std::future::pending()))
        .await
        .expect("the agent should refuse to start")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("policy file {} was trained for smollm2-135m with 30 layers but the deployed model has 24 layers (--n-layers or the edge)", path.display())
    );
    edge.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_waiting_for_the_edge_is_clean() {
    let mut config = AgentConfig::for_tests("http://127.0.0.1:1");
    config.n_layers = None;
    config.edge = "http://127.0.0.1:1".into();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), agent::run(listener, config, tokio::time::sleep(Duration::from_millis(300)))).await;
    r.expect("shutdown must end the wait").unwrap();
}
