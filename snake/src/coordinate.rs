//! Driving the node processes: Snake Learning's serpentine turns, federated averaging, and
//! centralized training on one node, each counting the bytes that cross between processes.

use std::ops::Range;
use std::time::Instant;

use prost::Message;
use split_core::adapter::{Adapter, LayerAdapter, LowRank};
use splitinfer_proto::v1 as pb;
use tonic::transport::Channel;

use crate::node::MAX_MESSAGE_BYTES;

/// A node process as the coordinator reaches it.
pub struct NodeClient {
    pub addr: String,
    client: pb::snake_node_client::SnakeNodeClient<Channel>,
}

impl NodeClient {
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let client = pb::snake_node_client::SnakeNodeClient::connect(addr.to_string())
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach node {addr}: {e}"))?
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self { addr: addr.to_string(), client })
    }

    pub async fn train(&mut self, req: pb::TrainRequest) -> anyhow::Result<pb::TrainReply> {
        let addr = self.addr.clone();
        Ok(self.client.train(req).await.map_err(|s| anyhow::anyhow!("node {addr}: {}", s.message()))?.into_inner())
    }

    pub async fn state(&mut self) -> anyhow::Result<pb::AdapterState> {
        Ok(self.client.get_state(pb::GetStateRequest {}).await?.into_inner())
    }
}

/// The edge's layers `range` split into `n` contiguous slices as evenly as possible, the earlier
/// slices taking the extra layer.
pub fn slices(range: Range<usize>, n: usize) -> Vec<Range<usize>> {
    let len = range.len();
    let mut out = Vec::with_capacity(n);
    let mut start = range.start;
    for i in 0..n {
        let size = len / n + usize::from(i < len % n);
        out.push(start..start + size);
        start += size;
    }
    out
}

/// One visit: which node trains which slice for how many steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub round: usize,
    pub node: usize,
    pub layers: Range<usize>,
    pub steps: u32,
}

/// The serpentine order: each round visits the nodes forward, then back (1, 2, 3, 3, 2, 1).
/// Node `i` trains slice `i` for `steps[i]` steps per visit (nodes may differ in compute).
pub fn serpentine(slices: &[Range<usize>], steps: &[u32], rounds: usize) -> Vec<Turn> {
    let n = slices.len();
    let order: Vec<usize> = (0..n).chain((0..n).rev()).collect();
    (0..rounds).flat_map(|round| order.iter().map(move |&node| Turn { round, node, layers: slices[node].clone(), steps: steps[node] })).collect()
}

/// A step of a training run, for the curves.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    pub step: usize,
    pub round: usize,
    pub node: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub channel: bool,
}

/// What a training run cost and produced.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunCost {
    pub rounds: usize,
    /// Bytes of model state that crossed between processes during training (encoded messages).
    pub bytes_total: u64,
    pub bytes_per_round: f64,
    /// Per node: the most trainable state (adapters, gradients, AdamW moments) it held at once.
    pub trainable_state_bytes: Vec<u64>,
    /// Per node: peak resident memory of its process.
    pub peak_rss_bytes: Vec<u64>,
    pub steps: usize,
    pub wall_s: f64,
}

/// A finished run: the adapters and how they were made.
pub struct Run {
    pub adapter: Vec<u8>,
    pub curve: Vec<CurvePoint>,
    pub cost: RunCost,
}

fn record(cost: &mut RunCost, curve: &mut Vec<CurvePoint>, node: usize, round: usize, reply: &pb::TrainReply) {
    cost.trainable_state_bytes[node] = cost.trainable_state_bytes[node].max(reply.trainable_state_bytes);
    cost.peak_rss_bytes[node] = cost.peak_rss_bytes[node].max(reply.peak_rss_bytes);
    for s in &reply.steps {
        curve.push(CurvePoint { step: curve.len(), round, node, loss: s.loss, grad_norm: s.grad_norm, channel: s.channel });
    }
    cost.steps += reply.steps.len();
}

/// Snake Learning: the turns in order; a node that follows another fetches the state from it
/// directly (node to node), a node that follows itself keeps its own. Every node starts from the
/// same seeded adapters, so the first turn needs no transfer. `progress` hears each turn.
pub async fn run_snake(nodes: &mut [NodeClient], turns: &[Turn], progress: &mut dyn FnMut(&str)) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut cost = RunCost { trainable_state_bytes: vec![0; nodes.len()], peak_rss_bytes: vec![0; nodes.len()], ..Default::default() };
    let mut curve = Vec::new();
    let mut previous: Option<usize> = None;
    for (t, turn) in turns.iter().enumerate() {
        let start = match previous {
            Some(p) if p != turn.node => pb::train_request::Start::FromPeer(nodes[p].addr.clone()),
            _ => pb::train_request::Start::Keep(true),
        };
        let req = pb::TrainRequest { start: Some(start), first_layer: turn.layers.start as u32, end_layer: turn.layers.end as u32, steps: turn.steps, return_state: false };
        let reply = nodes[turn.node].train(req).await?;
        cost.bytes_total += reply.fetched_bytes;
        record(&mut cost, &mut curve, turn.node, turn.round, &reply);
        let mean = reply.steps.iter().map(|s| s.loss).sum::<f64>() / reply.steps.len().max(1) as f64;
        progress(&format!(
            "snake: turn {}/{} (round {}, node {}, layers {:?}): mean loss {mean:.3}, {:.0} s, fetched {} bytes",
            t + 1,
            turns.len(),
            turn.round + 1,
            turn.node + 1,
            turn.layers,
            reply.seconds,
            reply.fetched_bytes
        ));
        previous = Some(turn.node);
    }
    let last = previous.ok_or_else(|| anyhow::anyhow!("no turns to run"))?;
    let adapter = nodes[last].state().await?.state.to_vec();
    cost.rounds = turns.iter().map(|t| t.round + 1).max().unwrap_or(0);
    cost.bytes_per_round = cost.bytes_total as f64 / cost.rounds.max(1) as f64;
    cost.wall_s = started.elapsed().as_secs_f64();
    Ok(Run { adapter, curve, cost })
}

/// The element-wise mean of adapters of the same shape.
pub fn average(adapters: &[Adapter]) -> anyhow::Result<Adapter> {
    let first = adapters.first().ok_or_else(|| anyhow::anyhow!("nothing to average"))?;
    let n = adapters.len() as f64;
    let mean = |pick: &dyn Fn(&Adapter) -> &candle_core::Tensor| -> anyhow::Result<candle_core::Tensor> {
        let mut sum = pick(first).clone();
        for a in &adapters[1..] {
            sum = (sum + pick(a))?;
        }
        Ok((sum / n)?)
    };
    let mut out = first.clone();
    for (&i, l) in out.layers.iter_mut() {
        if let Some(j) = adapters.iter().position(|a| !a.layers.contains_key(&i)) {
            anyhow::bail!("adapter {j} lacks layer {i}");
        }
        let q = LowRank { a: mean(&|a| &a.layers[&i].q.a)?, b: mean(&|a| &a.layers[&i].q.b)?, scale: l.q.scale };
        let v = LowRank { a: mean(&|a| &a.layers[&i].v.a)?, b: mean(&|a| &a.layers[&i].v.b)?, scale: l.v.scale };
        *l = LayerAdapter { q, v };
    }
    Ok(out)
}

/// Federated averaging: each round node `i` trains all of `layers` for `steps[i]` steps from the
/// global adapters (sent inline, except in the first round, where every node already holds the
/// same seeded start) and sends its adapters back; the global adapters become their mean.
pub async fn run_fedavg(nodes: &mut [NodeClient], layers: Range<usize>, steps: &[u32], rounds: usize, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut cost = RunCost { trainable_state_bytes: vec![0; nodes.len()], peak_rss_bytes: vec![0; nodes.len()], rounds, ..Default::default() };
    let mut curve = Vec::new();
    let mut global: Option<Vec<u8>> = None;
    for round in 0..rounds {
        let mut locals = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter_mut().enumerate() {
            let start = match &global {
                Some(bytes) => pb::train_request::Start::State(bytes.clone().into()),
                None => pb::train_request::Start::Keep(true),
            };
            let req = pb::TrainRequest { start: Some(start), first_layer: layers.start as u32, end_layer: layers.end as u32, steps: steps[i], return_state: true };
            let sent = if global.is_some() { req.encoded_len() as u64 } else { 0 };
            let reply = node.train(req).await?;
            // Down: the global state to the node; up: the node's state back.
            cost.bytes_total += sent + pb::AdapterState { state: reply.state.clone() }.encoded_len() as u64;
            record(&mut cost, &mut curve, i, round, &reply);
            let mean = reply.steps.iter().map(|s| s.loss).sum::<f64>() / reply.steps.len().max(1) as f64;
            progress(&format!("fedavg: round {}/{rounds}, node {}: mean loss {mean:.3}, {:.0} s", round + 1, i + 1, reply.seconds));
            locals.push(Adapter::from_bytes(&reply.state, &format!("from node {}", i + 1))?);
        }
        global = Some(average(&locals)?.to_bytes()?);
    }
    cost.bytes_per_round = cost.bytes_total as f64 / rounds.max(1) as f64;
    cost.wall_s = started.elapsed().as_secs_f64();
    Ok(Run { adapter: global.ok_or_else(|| anyhow::anyhow!("no rounds to run"))?, curve, cost })
}

/// Centralized fine-tuning: one node (holding every shard) trains all of `layers`, in chunks of
/// `chunk` steps so progress shows.
pub async fn run_central(node: &mut NodeClient, layers: Range<usize>, steps: u32, chunk: u32, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut cost = RunCost { trainable_state_bytes: vec![0], peak_rss_bytes: vec![0], rounds: 1, ..Default::default() };
    let mut curve = Vec::new();
    let mut done = 0;
    while done < steps {
        let n = chunk.min(steps - done);
        let req = pb::TrainRequest { start: Some(pb::train_request::Start::Keep(true)), first_layer: layers.start as u32, end_layer: layers.end as u32, steps: n, return_state: false };
        let reply = node.train(req).await?;
        record(&mut cost, &mut curve, 0, 0, &reply);
        done += n;
        let mean = reply.steps.iter().map(|s| s.loss).sum::<f64>() / reply.steps.len().max(1) as f64;
        progress(&format!("centralized: {done}/{steps} steps: mean loss {mean:.3}, {:.0} s", reply.seconds));
    }
    let adapter = node.state().await?.state.to_vec();
    cost.wall_s = started.elapsed().as_secs_f64();
    Ok(Run { adapter, curve, cost })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_contiguous_and_even() {
        assert_eq!(slices(12..30, 3), [12..18, 18..24, 24..30]);
        assert_eq!(slices(20..30, 3), [20..24, 24..27, 27..30]);
        assert_eq!(slices(28..30, 2), [28..29, 29..30]);
    }

    #[test]
    fn the_average_is_element_wise() {
        use candle_core::{Device, Tensor};
        let make = |x: f32| {
            let t = |r: usize, c: usize| Tensor::full(x, (r, c), &Device::Cpu).unwrap();
            let la = LayerAdapter { q: LowRank { a: t(2, 4), b: t(4, 2), scale: 2.0 }, v: LowRank { a: t(2, 4), b: t(1, 2), scale: 2.0 } };
            Adapter { model_sha256: "x".into(), rank: 2, alpha: 4.0, trained_split: 5, layers: [(5, la)].into() }
        };
        let avg = average(&[make(1.0), make(2.0), make(6.0)]).unwrap();
        assert_eq!(avg.layers[&5].v.b.to_vec2::<f32>().unwrap(), [[3.0, 3.0]]);
        let mut short = make(1.0);
        short.layers.clear();
        assert!(average(&[make(1.0), short]).unwrap_err().to_string().contains("adapter 1 lacks layer 5"));
    }

    #[test]
    fn the_order_is_forward_then_back() {
        let turns = serpentine(&slices(24..30, 3), &[5, 5, 2], 2);
        let nodes: Vec<usize> = turns.iter().map(|t| t.node).collect();
        assert_eq!(nodes, [0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0]);
        assert_eq!(turns[2].layers, 28..30);
        assert_eq!(turns[3].steps, 2);
        assert_eq!(turns[11].round, 1);
    }
}
