//! How much a linear analog code that mixes dimensions could lower the NLL-weighted noise at
//! `k = L` (`split_core::rotation`), against plain standardization, the shipped transmit gains of
//! `Normalization::Allocate` and the best per-dimension allocation, in two metrics:
//! - `head`: the logits' squared change, `diag(γ)·WᵀW·diag(γ)` (`SplitModel::head_metric`), the
//!   metric the transmit gains are built on;
//! - `fisher`: the next token's Fisher information (`rotation::fisher`), the NLL's own.
//!
//! Not a test: it prints the figures (docs/link.md). About 90 s here.
//!
//! ```sh
//! cargo run --release -p split-core --example rotation_bound -- [--tokens 4096]
//! ```

use anyhow::{Context, Result};
use split_core::calibration::Calibration;
use split_core::model::SplitModel;
use split_core::rotation;
use split_core::tokenizer::Tokenizer;

fn main() -> Result<()> {
    let mut tokens_wanted = 4096usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--tokens" => tokens_wanted = it.next().context("--tokens needs a value")?.parse()?,
            other => anyhow::bail!("unknown flag {other}; flags: --tokens N"),
        }
    }
    let path = split_core::assets::ensure_model(&split_core::assets::SMOLLM2_135M, &mut |m| eprintln!("fetch: {m}"))?;
    let model = SplitModel::load(&path)?;
    let tok = Tokenizer::from_gguf_file(&path)?;
    let sha = split_core::assets::sha256_file(&path)?;
    let cal = Calibration::load(std::path::Path::new("calibration/smollm2-135m.json"), Some(&sha))?;
    let (l, n) = (model.n_layers(), model.config().hidden_size);
    let stats = cal.boundary(l)?;
    let (text, label) = split_core::assets::calibration_text(&mut |m| eprintln!("{m}"))?;
    let mut ids = tok.encode(&text)?;
    ids.truncate(tokens_wanted);
    println!("{} tokens of {label} at k = {l}, hidden {n}", ids.len());
    let cov = rotation::correlation(&model, &ids, stats)?;
    let head: Vec<f64> = model.head_metric()?.iter().map(|&v| f64::from(v)).collect();
    let fisher = rotation::fisher(&model, &ids)?;
    let db = |x: f64| 10.0 * x.log10();
    for (name, metric) in [("head", head), ("fisher", fisher)] {
        let b = rotation::bounds(&metric, &cov, &stats.std, &stats.gain, n);
        println!("metric {name}: gains over plain standardization");
        if let Some(g) = b.gains {
            println!("  the shipped gains (allocate):  {:.2} dB", db(b.plain / g));
        }
        println!("  best per-dimension allocation: {:.2} dB", db(b.plain / b.allocation));
        println!("  best linear code (rotation):   {:.2} dB", db(b.plain / b.rotation));
    }
    Ok(())
}
