//! Perplexity over a grid of split points × channel conditions, the measurement behind the
//! paper's Figure 3 and the agent's profile. Results go to a CSV, one row per evaluation, and a
//! rerun skips the rows already there, so a long grid can be stopped and resumed.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use crate::channel::{Channel, ChannelBoundary, ChannelConfig};
use crate::error::{Error, Result};
use crate::model::SplitModel;
use crate::perplexity::{PplConfig, perplexity};
use crate::wire::WireDType;

/// A channel condition of the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// No impairment.
    Clean,
    /// Analog noise at this mean SNR (dB), no fading.
    Snr(f64),
    /// The reference element-wise erasure with this probability.
    Erasure(f64),
}

impl Condition {
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Snr(_) => "snr_db",
            Self::Erasure(_) => "erasure_p",
        }
    }

    pub fn value(&self) -> f64 {
        match *self {
            Self::Clean => 0.0,
            Self::Snr(v) | Self::Erasure(v) => v,
        }
    }

    pub fn channel(&self) -> ChannelConfig {
        let base = ChannelConfig::default();
        match *self {
            Self::Clean => base,
            Self::Snr(db) => ChannelConfig { snr_db: db, noise: true, ..base },
            Self::Erasure(p) => ChannelConfig { erasure_p: Some(p), ..base },
        }
    }
}

/// One evaluation's result, as a CSV row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub k: usize,
    pub condition: Condition,
    pub seed: u64,
    pub ppl: f64,
    pub tokens: usize,
}

pub const CSV_HEADER: &str = "k,mode,value,seed,ppl,tokens";

fn key(k: usize, c: &Condition, seed: u64) -> String {
    format!("{k},{},{},{seed}", c.mode(), c.value())
}

/// Rows already in `csv` (a missing file has none).
pub fn read_rows(csv: &Path) -> Result<Vec<Row>> {
    let text = match std::fs::read_to_string(csv) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Io { what: "cannot read profile", path: csv.into(), source: e }),
    };
    let bad = |line: &str| Error::InvalidArgument(format!("profile {} has a malformed row {line:?}", csv.display()));
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 6 {
                return Err(bad(line));
            }
            let value: f64 = f[2].parse().map_err(|_| bad(line))?;
            let condition = match f[1] {
                "clean" => Condition::Clean,
                "snr_db" => Condition::Snr(value),
                "erasure_p" => Condition::Erasure(value),
                _ => return Err(bad(line)),
            };
            Ok(Row {
                k: f[0].parse().map_err(|_| bad(line))?,
                condition,
                seed: f[3].parse().map_err(|_| bad(line))?,
                ppl: f[4].parse().map_err(|_| bad(line))?,
                tokens: f[5].parse().map_err(|_| bad(line))?,
            })
        })
        .collect()
}

/// Evaluates every (k, condition, seed) of the grid not yet in `csv`, appending each row as it
/// completes. `progress(done, total, row)` is called after each evaluation.
#[allow(clippy::too_many_arguments)]
pub fn run_grid(
    model: &SplitModel,
    tokens: &[u32],
    ppl: PplConfig,
    ks: &[usize],
    conditions: &[Condition],
    seeds: &[u64],
    csv: &Path,
    progress: &mut dyn FnMut(usize, usize, Option<&Row>),
) -> Result<Vec<Row>> {
    let mut rows = read_rows(csv)?;
    let done: HashSet<String> = rows.iter().map(|r| key(r.k, &r.condition, r.seed)).collect();
    let mut todo = Vec::new();
    for &k in ks {
        model.split_point(k)?;
        for c in conditions {
            // A clean channel is deterministic: one seed is enough.
            let seeds = if *c == Condition::Clean { &seeds[..1] } else { seeds };
            for &seed in seeds {
                if !done.contains(&key(k, c, seed)) {
                    todo.push((k, *c, seed));
                }
            }
        }
    }
    let new_file = !csv.exists();
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(csv)
        .map_err(|e| Error::Io { what: "cannot write profile", path: csv.into(), source: e })?;
    let io = |e| Error::Io { what: "cannot write profile", path: csv.into(), source: e };
    if new_file {
        writeln!(out, "{CSV_HEADER}").map_err(io)?;
    }
    let total = todo.len();
    progress(0, total, None);
    for (i, (k, c, seed)) in todo.into_iter().enumerate() {
        let mut boundary = ChannelBoundary { channel: Channel::new(c.channel(), seed)?, dtype: WireDType::F32, last: Default::default() };
        let report = perplexity(model, tokens, ppl, model.split_point(k)?, &mut boundary, &mut |_, _| {})?;
        let row = Row { k, condition: c, seed, ppl: report.ppl, tokens: report.scored_tokens };
        writeln!(out, "{},{},{},{},{:.6},{}", k, c.mode(), c.value(), seed, row.ppl, row.tokens).map_err(io)?;
        out.flush().map_err(io)?;
        progress(i + 1, total, Some(&row));
        rows.push(row);
    }
    Ok(rows)
}
