//! A Snake Learning node: a gRPC server (`splitinfer.v1.SnakeNode`) holding the model, its own
//! text and its own optimizer state, that trains whichever layer slice it is asked to from the
//! state it is given or fetches from a peer.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prost::Message;
use split_core::model::SplitModel;
use splitinfer_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::model::EdgeStack;
use crate::train::{Shard, TrainConfig, TrainLink, Trainer};

/// The largest message a node sends or takes: a whole model's adapters are a few MB.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// What a node holds.
pub struct NodeState {
    pub model: SplitModel,
    pub stack: EdgeStack,
    pub model_sha256: String,
    pub shards: Vec<Shard>,
    pub link: TrainLink,
    pub cfg: TrainConfig,
    /// Seeds this node's example streams (one per layer slice it trains).
    pub seed: u64,
    trainers: HashMap<(usize, usize), Trainer>,
}

impl NodeState {
    pub fn new(model: SplitModel, stack: EdgeStack, model_sha256: String, shards: Vec<Shard>, link: TrainLink, cfg: TrainConfig, seed: u64) -> Self {
        Self { model, stack, model_sha256, shards, link, cfg, seed, trainers: HashMap::new() }
    }

    /// The current adapters as a file's bytes.
    pub fn state(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.stack.adapter(&self.model_sha256)?.to_bytes()?)
    }

    /// Replaces the adapters with the state in `bytes`, which must be for this model.
    pub fn set_state(&self, bytes: &[u8]) -> anyhow::Result<()> {
        let adapter = split_core::adapter::Adapter::from_bytes(bytes, "from the coordinator or a peer")?;
        anyhow::ensure!(adapter.model_sha256 == self.model_sha256, "the state is for the model with sha256 {}, this node runs {}", adapter.model_sha256, self.model_sha256);
        self.stack.set_adapter(&adapter)
    }

    /// `steps` optimizer steps on layers `layers`, keeping that slice's optimizer state for the
    /// next call on the same slice. Returns the step logs and the bytes of trainable state held.
    pub fn train(&mut self, layers: Range<usize>, steps: usize) -> anyhow::Result<(Vec<crate::train::StepLog>, usize)> {
        let key = (layers.start, layers.end);
        if !self.trainers.contains_key(&key) {
            // Each slice has its own example stream, seeded by the node's seed and the slice.
            let seed = self.seed.wrapping_mul(1_000_003).wrapping_add((layers.start * 1000 + layers.end) as u64);
            self.trainers.insert(key, Trainer::new(&self.stack, layers.clone(), self.cfg, seed)?);
        }
        let trainer = self.trainers.get_mut(&key).expect("inserted above");
        let shards: Vec<&Shard> = self.shards.iter().collect();
        let mut logs = Vec::with_capacity(steps);
        for _ in 0..steps {
            logs.push(trainer.step(&self.stack, &self.model, &self.link, &shards)?);
        }
        Ok((logs, trainer.state_bytes()))
    }
}

/// The service.
#[derive(Clone)]
pub struct Node {
    state: Arc<Mutex<NodeState>>,
}

impl Node {
    pub fn new(state: NodeState) -> Self {
        Self { state: Arc::new(Mutex::new(state)) }
    }

    pub fn server(self) -> pb::snake_node_server::SnakeNodeServer<Self> {
        pb::snake_node_server::SnakeNodeServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// The node process's peak resident memory (VmHWM), in bytes; 0 where /proc has none.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl pb::snake_node_server::SnakeNode for Node {
    async fn train(&self, request: Request<pb::TrainRequest>) -> Result<Response<pb::TrainReply>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let (first, end) = (req.first_layer as usize, req.end_layer as usize);
        if first >= end || req.steps == 0 || req.steps > 100_000 {
            return Err(Status::invalid_argument(format!("layers {first}..{end} and {} steps: need a non-empty slice and 1..=100000 steps", req.steps)));
        }
        let mut fetched_bytes = 0u64;
        let incoming: Option<Vec<u8>> = match req.start {
            Some(pb::train_request::Start::State(bytes)) => Some(bytes.to_vec()),
            Some(pb::train_request::Start::FromPeer(peer)) => {
                let mut client = pb::snake_node_client::SnakeNodeClient::connect(peer.clone())
                    .await
                    .map_err(|e| Status::unavailable(format!("cannot reach peer {peer}: {e}")))?
                    .max_decoding_message_size(MAX_MESSAGE_BYTES);
                let reply = client.get_state(pb::GetStateRequest {}).await?.into_inner();
                fetched_bytes = reply.encoded_len() as u64;
                Some(reply.state.to_vec())
            }
            Some(pb::train_request::Start::Keep(_)) | None => None,
        };
        let state = self.state.clone();
        let return_state = req.return_state;
        let steps = req.steps as usize;
        let (logs, held, out) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut s = state.lock().map_err(|_| anyhow::anyhow!("a previous training call panicked"))?;
            anyhow::ensure!(
                (s.stack.first..s.stack.n_layers()).contains(&first) && end <= s.stack.n_layers(),
                "layers {first}..{end} are not within this node's edge layers {}..{}",
                s.stack.first,
                s.stack.n_layers()
            );
            if let Some(bytes) = &incoming {
                s.set_state(bytes)?;
            }
            let (logs, held) = s.train(first..end, steps)?;
            let out = if return_state { s.state()? } else { Vec::new() };
            Ok((logs, held, out))
        })
        .await
        .map_err(internal)?
        .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(pb::TrainReply {
            steps: logs.iter().map(|l| pb::StepLog { loss: l.loss, grad_norm: l.grad_norm, channel: l.channel, seconds: l.seconds }).collect(),
            state: out.into(),
            fetched_bytes,
            trainable_state_bytes: held as u64,
            peak_rss_bytes: peak_rss_bytes(),
            seconds: started.elapsed().as_secs_f64(),
        }))
    }

    async fn get_state(&self, _request: Request<pb::GetStateRequest>) -> Result<Response<pb::AdapterState>, Status> {
        let state = self.state.clone();
        let bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            state.lock().map_err(|_| anyhow::anyhow!("a previous training call panicked"))?.state()
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        Ok(Response::new(pb::AdapterState { state: bytes.into() }))
    }
}
