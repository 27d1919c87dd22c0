//! How long the units of a chunked prefill take: the edge interleaves other sessions' decode
//! steps between them, so the longest unit is what such a step can wait behind
//! (docs/survive.md, "One long prompt cannot starve the others"). Not a test: it prints numbers.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p split-core --example prefill_units -- MODEL.gguf [CHUNK_ROWS [ROWS]]
//! ```
//!
//! Prefills ROWS (default 4,096) synthetic token ids in chunks of CHUNK_ROWS (default 32) through
//! every layer, a unit at a time (`SplitModel::run_next_block`), and prints for every 1,024th
//! position and the last chunk: the chunk's time, its units, and their mean, p95 and longest
//! time; then the whole prefill's time and rate.

use std::time::Instant;

use anyhow::{Context, Result};
use split_core::model::{KvCache, SplitModel};

const ROWS: usize = 4096;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().context("usage: prefill_units MODEL.gguf [CHUNK_ROWS [ROWS]]")?;
    let chunk: usize = args.next().map(|s| s.parse()).transpose().context("CHUNK_ROWS must be a number")?.unwrap_or(32).max(1);
    let rows: usize = args.next().map(|s| s.parse()).transpose().context("ROWS must be a number")?.unwrap_or(ROWS).max(1);
    let model = SplitModel::load(&path)?;
    let vocab = model.config().vocab_size as u32;
    let ids: Vec<u32> = (0..rows as u32).map(|i| (i * 7919) % (vocab - 100) + 100).collect();
    let x = model.embed(&ids)?;
    let mut cache = KvCache::new(0..model.n_layers());
    let mut done = 0;
    let whole = Instant::now();
    while done < rows {
        let n = chunk.min(rows - done);
        let mut run = model.start_layers(&x.narrow(1, done, n)?, &cache)?;
        let mut units = Vec::new();
        let started = Instant::now();
        loop {
            let t = Instant::now();
            let finished = model.run_next_block(&mut run, &mut cache)?;
            units.push(t.elapsed().as_secs_f64() * 1e3);
            if finished {
                break;
            }
        }
        let total = started.elapsed().as_secs_f64() * 1e3;
        if done % 1024 == 0 || done + n >= rows {
            units.sort_by(f64::total_cmp);
            let p95 = units[(units.len() * 95 / 100).min(units.len() - 1)];
            println!(
                "position {done}: chunk {total:.1} ms in {} units, mean {:.2} p95 {p95:.2} longest {:.2} ms",
                units.len(),
                total / units.len() as f64,
                units[units.len() - 1]
            );
        }
        done += n;
    }
    let s = whole.elapsed().as_secs_f64();
    println!("{rows} rows in chunks of {chunk}: {:.1} ms, {:.1} rows/s", s * 1e3, rows as f64 / s);
    Ok(())
}
