//! The profile: perplexity over a grid of split points × channel states, with repeats over
//! channel seeds, from the real environment. One CSV row per evaluation, appended as it
//! completes; a rerun evaluates only what is missing, so a long grid can be stopped and resumed.
//! [`summarize`] turns the rows into mean and spread per grid point.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::real::{ChannelState, RealEnv};

pub const HEADER: &str = "k,mode,snr_db,m,p,seed,ppl,tokens,seconds";

/// One evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub k: usize,
    pub state: ChannelState,
    pub seed: u64,
    pub ppl: f64,
    pub tokens: usize,
    pub seconds: f64,
}

/// The clean perplexity is stored as `mode = clean` (one row, k = 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub clean_ppl: f64,
    pub samples: Vec<Sample>,
}

fn fields(state: &ChannelState) -> (f64, f64, f64) {
    match *state {
        ChannelState::Fading { snr_db, m } => (snr_db, m, 0.0),
        ChannelState::Erasure { p } => (0.0, 0.0, p),
    }
}

fn key(k: usize, state: &ChannelState, seed: u64) -> String {
    let (s, m, p) = fields(state);
    format!("{k},{},{s},{m},{p},{seed}", state.mode())
}

/// Reads a profile CSV (a missing file is an empty profile with no clean perplexity yet: NaN).
pub fn read(csv: &Path) -> Result<Profile> {
    let text = match std::fs::read_to_string(csv) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Profile { clean_ppl: f64::NAN, samples: Vec::new() }),
        Err(e) => return Err(e).with_context(|| format!("cannot read profile {}", csv.display())),
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == HEADER => {}
        other => bail!("profile {} does not start with the header {HEADER:?} (found {:?})", csv.display(), other.map(|o| o.1).unwrap_or("")),
    }
    let mut profile = Profile { clean_ppl: f64::NAN, samples: Vec::new() };
    for (i, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |what: &str| anyhow::anyhow!("profile {} line {}: {what}: {line:?}", csv.display(), i + 1);
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 9 {
            return Err(bad("expected 9 fields"));
        }
        let num = |j: usize| f[j].parse::<f64>().map_err(|_| bad("not a number"));
        let state = match f[1] {
            "clean" => {
                profile.clean_ppl = num(6)?;
                continue;
            }
            "fading" => ChannelState::Fading { snr_db: num(2)?, m: num(3)? },
            "erasure" => ChannelState::Erasure { p: num(4)? },
            _ => return Err(bad("mode must be clean, fading or erasure")),
        };
        profile.samples.push(Sample {
            k: f[0].parse().map_err(|_| bad("k is not a layer count"))?,
            state,
            seed: f[5].parse().map_err(|_| bad("seed is not an integer"))?,
            ppl: num(6)?,
            tokens: f[7].parse().map_err(|_| bad("tokens is not an integer"))?,
            seconds: num(8)?,
        });
    }
    Ok(profile)
}

/// Progress of a grid: `(done, total, last sample)`.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, Option<&Sample>);

/// Evaluates every `(k, state, seed)` not yet in `csv` and appends it; returns the whole profile.
pub fn run_grid(env: &mut RealEnv, ks: &[usize], states: &[ChannelState], seeds: &[u64], csv: &Path, progress: Progress<'_>) -> Result<Profile> {
    let mut profile = read(csv)?;
    let done: HashSet<String> = profile.samples.iter().map(|s| key(s.k, &s.state, s.seed)).collect();
    let n = env.n_layers();
    if let Some(&k) = ks.iter().find(|&&k| k > n) {
        bail!("split {k} is outside 0..={n}");
    }
    let todo: Vec<(usize, ChannelState, u64)> = ks
        .iter()
        .flat_map(|&k| states.iter().flat_map(move |s| seeds.iter().map(move |&seed| (k, *s, seed))))
        .filter(|(k, s, seed)| !done.contains(&key(*k, s, *seed)))
        .collect();
    if let Some(dir) = csv.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let new_file = !csv.exists();
    let mut out = OpenOptions::new().create(true).append(true).open(csv).with_context(|| format!("cannot write profile {}", csv.display()))?;
    let tokens = env.scored_tokens();
    if new_file {
        writeln!(out, "{HEADER}")?;
    }
    if profile.clean_ppl.is_nan() {
        writeln!(out, "0,clean,0,0,0,0,{:.6},{tokens},0", env.clean_ppl())?;
        profile.clean_ppl = env.clean_ppl();
    } else if (profile.clean_ppl - env.clean_ppl()).abs() > 1e-3 * profile.clean_ppl {
        bail!(
            "profile {} was measured with a clean perplexity of {:.4}, this model and text give {:.4}: another model, text or token budget; use another --out",
            csv.display(),
            profile.clean_ppl,
            env.clean_ppl()
        );
    }
    let total = todo.len();
    progress(0, total, None);
    for (i, (k, state, seed)) in todo.into_iter().enumerate() {
        let before = env.seconds();
        let ppl = env.ppl(k, state, seed)?;
        let s = Sample { k, state, seed, ppl, tokens, seconds: env.seconds() - before };
        let (snr, m, p) = fields(&state);
        writeln!(out, "{k},{},{snr},{m},{p},{seed},{ppl:.6},{tokens},{:.4}", state.mode(), s.seconds)?;
        out.flush()?;
        progress(i + 1, total, Some(&s));
        profile.samples.push(s);
    }
    Ok(profile)
}

/// Mean and sample standard deviation of the perplexity at one grid point.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub k: usize,
    pub state: ChannelState,
    pub n: usize,
    pub mean: f64,
    pub sd: f64,
}

pub const SUMMARY_HEADER: &str = "k,mode,snr_db,m,p,n,ppl_mean,ppl_sd";

/// One cell per `(k, state)`, in key order.
pub fn summarize(samples: &[Sample]) -> Vec<Cell> {
    let mut acc: BTreeMap<String, (usize, ChannelState, Vec<f64>)> = BTreeMap::new();
    for s in samples {
        let (snr, m, p) = fields(&s.state);
        let key = format!("{}|{:>10.4}|{:>8.4}|{:>8.4}|{:03}", s.state.mode(), snr, m, p, s.k);
        acc.entry(key).or_insert((s.k, s.state, Vec::new())).2.push(s.ppl);
    }
    acc.into_values()
        .map(|(k, state, v)| {
            let n = v.len();
            let mean = v.iter().sum::<f64>() / n as f64;
            let sd = if n > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
            Cell { k, state, n, mean, sd }
        })
        .collect()
}

pub fn summary_csv(cells: &[Cell]) -> String {
    let mut s = format!("{SUMMARY_HEADER}\n");
    for c in cells {
        let (snr, m, p) = fields(&c.state);
        s.push_str(&format!("{},{},{snr},{m},{p},{},{:.4},{:.4}\n", c.k, c.state.mode(), c.n, c.mean, c.sd));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_has_mean_and_sample_spread_per_point() {
        let f = ChannelState::Fading { snr_db: 5.0, m: 1.0 };
        let e = ChannelState::Erasure { p: 0.1 };
        let s = |k, state, seed, ppl| Sample { k, state, seed, ppl, tokens: 10, seconds: 0.1 };
        let cells = summarize(&[s(3, f, 0, 10.0), s(3, f, 1, 14.0), s(3, e, 0, 7.0), s(4, f, 0, 9.0)]);
        assert_eq!(cells.len(), 3);
        let c = cells.iter().find(|c| c.k == 3 && c.state == f).unwrap();
        assert_eq!((c.n, c.mean), (2, 12.0));
        assert!((c.sd - 8f64.sqrt()).abs() < 1e-12);
        assert_eq!(cells.iter().find(|c| c.state == e).unwrap().sd, 0.0);
    }

    #[test]
    fn malformed_profiles_name_the_line() {
        let dir = std::env::temp_dir().join(format!("splitinfer-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("p.csv");
        std::fs::write(&p, format!("{HEADER}\n0,clean,0,0,0,0,30,10,0\n1,fading,5,x,0,0,40,10,1\n")).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("line 3: not a number"), "{e}");
        std::fs::write(&p, "k,ppl\n").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("does not start with the header"));
        std::fs::write(&p, format!("{HEADER}\n0,clean,0,0,0,0,30,10,0\n2,fading,5,1,0,3,40.5,10,1\n")).unwrap();
        let ok = read(&p).unwrap();
        assert_eq!(ok.clean_ppl, 30.0);
        assert_eq!(ok.samples[0].state, ChannelState::Fading { snr_db: 5.0, m: 1.0 });
        assert!(read(&dir.join("missing.csv")).unwrap().clean_ppl.is_nan());
    }
}
