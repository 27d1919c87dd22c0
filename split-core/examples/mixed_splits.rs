//! The edge's decode pass for sessions at different splits: one pass in which each session joins
//! at its own layer (what the edge does now), against one pass per split (what it did before).
//! Not a test: it prints numbers. Both ways give every session the same bits; this checks it.
//!
//! ```sh
//! cargo run --release -p split-core --example mixed_splits -- MODEL.gguf [SESSIONS] [STEPS] [ROUNDS]
//! ```
//!
//! SESSIONS (16) sessions sit at 8 splits spread over `0..L` (session `i` at `k = (i mod 8) · L / 8`,
//! so two sessions share each split at 16). Each is prefilled
//! alone; then STEPS (24) greedy decode steps per round are timed, the UE's layers untimed, in
//! ROUNDS (6) rounds that alternate between the two ways, so a burst of other load hits both.
//! Prints each round's aggregate tokens/s and the median per-round ratio.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use split_core::model::{KvCache, SplitModel};
use split_core::tokenizer::Tokenizer;

const PROMPTS: &[&str] = &["The capital of France is", "Once upon a time, in a small village by the sea,", "def fibonacci(n):", "In 1969, the first humans"];

struct Session {
    ue: KvCache,
    edge: KvCache,
    next: u32,
}

fn argmax(v: &[f32]) -> u32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    v.iter().position(|&x| x == max).unwrap_or(0) as u32
}

/// One decode step of the edge for `x[i]` of `sessions[i]`: in one pass, or one pass per split.
/// Returns each session's logits.
fn step(model: &SplitModel, sessions: &mut [Session], x: &[Tensor], one_pass: bool) -> Result<Vec<Vec<f32>>> {
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, s) in sessions.iter().enumerate() {
        groups.entry(if one_pass { 0 } else { s.edge.range().start }).or_default().push(i);
    }
    let mut logits = vec![Vec::new(); sessions.len()];
    let mut caches: Vec<Option<&mut KvCache>> = sessions.iter_mut().map(|s| Some(&mut s.edge)).collect();
    for members in groups.values() {
        let xs: Vec<Tensor> = members.iter().map(|&i| x[i].clone()).collect();
        let mut group: Vec<&mut KvCache> = members.iter().map(|&i| caches[i].take().expect("one group each")).collect();
        let h = model.run_layers_batch(&xs, &mut group)?;
        for (&i, l) in members.iter().zip(model.head_last_batch(&h)?) {
            logits[i] = l.to_vec1::<f32>()?;
        }
    }
    Ok(logits)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().context("usage: mixed_splits MODEL.gguf [SESSIONS] [STEPS] [ROUNDS]")?;
    let arg = |i: usize, default: usize| args.get(i).map_or(Ok(default), |v| v.parse::<usize>().context("a count"));
    let (n, steps, rounds) = (arg(1, 16)?, arg(2, 24)?, arg(3, 6)?);
    let model = SplitModel::load(path)?;
    let tok = Tokenizer::from_gguf_file(path)?;
    let l = model.n_layers();
    let start = || -> Result<Vec<Session>> {
        (0..n)
            .map(|i| {
                let k = (i % 8) * l / 8;
                let prompt = tok.encode(&PROMPTS[i % PROMPTS.len()].repeat(1 + i / PROMPTS.len()))?;
                let (mut ue, mut edge) = (KvCache::new(0..k), KvCache::new(k..l));
                let x = model.run_layers(&model.embed(&prompt)?, &mut ue)?;
                let h = model.run_layers(&x, &mut edge)?;
                Ok(Session { ue, edge, next: argmax(&model.head_last(&h)?.to_vec1::<f32>()?) })
            })
            .collect()
    };
    let mut ways = [start()?, start()?];
    let splits: Vec<usize> = ways[0].iter().map(|s| s.edge.range().start).collect();
    println!("{n} sessions at splits {splits:?}, {steps} steps per round, {rounds} rounds");
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let mut rate = [0f64; 2];
        let mut out: [Vec<Vec<Vec<f32>>>; 2] = [Vec::new(), Vec::new()];
        // Alternate which way goes first.
        for w in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            let sessions = &mut ways[w];
            let mut timed = 0f64;
            for _ in 0..steps {
                let x: Vec<Tensor> = sessions.iter_mut().map(|s| model.run_layers(&model.embed(&[s.next])?, &mut s.ue).map_err(Into::into)).collect::<Result<_>>()?;
                let t = Instant::now();
                let logits = step(&model, sessions, &x, w == 0)?;
                timed += t.elapsed().as_secs_f64();
                for (s, l) in sessions.iter_mut().zip(&logits) {
                    s.next = argmax(l);
                }
                out[w].push(logits);
            }
            rate[w] = (n * steps) as f64 / timed;
        }
        let same = out[0].iter().flatten().zip(out[1].iter().flatten()).all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        anyhow::ensure!(same, "round {round}: one pass and per-split passes gave different logits");
        ratios.push(rate[0] / rate[1]);
        println!("round {round}: one pass {:.1} tok/s, one pass per split {:.1} tok/s, ratio {:.2}", rate[0], rate[1], rate[0] / rate[1]);
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio (one pass / per split): {:.2}; the logits were identical bit for bit", ratios[ratios.len() / 2]);
    Ok(())
}
