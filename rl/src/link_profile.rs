//! The link profile behind Figure 3: perplexity against the split layer for each way of sending
//! the hidden state (a [`Mode`]: raw analog, analog with the receiver, a digital codec) under
//! each channel ([`ChannelSpec`]), with several channel seeds. Rows go to a CSV as they are
//! measured, and a rerun skips the rows there, so a long grid is stopped and resumed at will.
//!
//! The modes and channels are fixed here, in code, before any result is looked at:
//! - `raw`: f32 values as they are, no equalizer, lost elements zero-filled (the link before
//!   there was a receiver);
//! - `rx`: f32 values standardized per dimension and sent with the boundary's transmit gains
//!   (normalization `allocate`: a power allocation towards the dimensions the head is most
//!   sensitive to, at k = L only; plain standardization at every k < L), zero-forcing
//!   equalizer, mean concealment; `rx-mmse` the same with the MMSE equalizer; `rx-std` the same
//!   as `rx` with plain standardization at every k (what `rx` was before the gains, commit
//!   5fe7e01 and earlier); `rx-rot` the same as `rx` with the boundary's transmit rotation
//!   (normalization `rotate`, a code across dimensions, at k = L only) instead of the gains;
//! - a codec name (`int8`, `int4`, `int8-outlier`, `int4-outlier`, `f16`): the digital link,
//!   standardized, mean concealment; with `-id` appended, identity normalization.
//!
//! - `rayleigh:DB`: Rayleigh block fading (m = 1) at mean SNR DB. Analog: noise, and outage at
//!   γ_th = 0 dB (R/B = 1) with one retransmission (the presets' loss). Digital: outage at
//!   γ_th = 4.8 dB (R/B = 2 bit/s/Hz, a 16-QAM rate-1/2 class MCS) with HARQ of 3 retransmissions.
//! - `awgn:DB`: no fading. Analog: noise. Digital: the same outage threshold (a static channel
//!   above it loses nothing).
//! - `erasure:P`: the reference element-wise erasure, concealed as the mode says.
//! - `clean`.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use split_core::calibration::Calibration;
use split_core::channel::{ChannelConfig, Equalizer, LossConfig};
use split_core::transform::{Concealment, LinkSetup, Normalization};
use split_core::wire::WireDType;

use crate::real::RealEnv;

/// How the hidden state is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mode {
    pub name: String,
    pub setup: LinkSetup,
    pub equalizer: Equalizer,
}

impl Mode {
    pub fn parse(name: &str) -> Result<Self> {
        let rx = LinkSetup { dtype: WireDType::F32, normalization: Normalization::Allocate, concealment: Concealment::Mean };
        let (setup, equalizer) = match name {
            "raw" => (LinkSetup::default(), Equalizer::None),
            "rx" => (rx, Equalizer::ZeroForcing),
            "rx-mmse" => (rx, Equalizer::Mmse),
            "rx-std" => (LinkSetup { normalization: Normalization::Standardize, ..rx }, Equalizer::ZeroForcing),
            "rx-rot" => (LinkSetup { normalization: Normalization::Rotate, ..rx }, Equalizer::ZeroForcing),
            other => {
                let (codec, normalization) = match other.strip_suffix("-id") {
                    Some(c) => (c, Normalization::Identity),
                    None => (other, Normalization::Standardize),
                };
                let dtype: WireDType = codec.parse().with_context(|| format!("mode {name:?} is not raw, rx, rx-mmse, rx-std, rx-rot or a codec"))?;
                (LinkSetup { dtype, normalization, concealment: Concealment::Mean }, Equalizer::ZeroForcing)
            }
        };
        Ok(Self { name: name.to_string(), setup, equalizer })
    }

    /// Whether this mode sends quantized codes (the digital link).
    pub fn digital(&self) -> bool {
        !self.setup.dtype.is_value()
    }
}

/// A channel of the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChannelSpec {
    Clean,
    Rayleigh(f64),
    Awgn(f64),
    Erasure(f64),
}

impl ChannelSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let value = |v: &str| v.parse::<f64>().with_context(|| format!("channel {s:?}: {v:?} is not a number"));
        Ok(match s.split_once(':') {
            None if s == "clean" => Self::Clean,
            Some(("rayleigh", v)) => Self::Rayleigh(value(v)?),
            Some(("awgn", v)) => Self::Awgn(value(v)?),
            Some(("erasure", v)) => Self::Erasure(value(v)?),
            _ => bail!("channel {s:?} is not clean, rayleigh:DB, awgn:DB or erasure:P"),
        })
    }

    pub fn name(&self) -> String {
        match self {
            Self::Clean => "clean".into(),
            Self::Rayleigh(v) => format!("rayleigh:{v}"),
            Self::Awgn(v) => format!("awgn:{v}"),
            Self::Erasure(v) => format!("erasure:{v}"),
        }
    }

    /// Draws nothing at random: one seed says everything.
    pub fn deterministic(&self) -> bool {
        matches!(self, Self::Clean)
    }

    /// The SNR of a noise channel.
    pub fn snr_db(&self) -> Option<f64> {
        match *self {
            Self::Rayleigh(v) | Self::Awgn(v) => Some(v),
            _ => None,
        }
    }

    /// The channel as the emulator would run it for `mode`.
    pub fn config(&self, mode: &Mode) -> ChannelConfig {
        let base = ChannelConfig { equalizer: mode.equalizer, ..ChannelConfig::default() };
        let analog_loss = LossConfig { rate_bps: 1e6, bandwidth_hz: 1e6, retransmissions: 1, budget_ms: None };
        let digital_loss = LossConfig { rate_bps: 2e6, bandwidth_hz: 1e6, retransmissions: 3, budget_ms: None };
        match (*self, mode.digital()) {
            (Self::Clean, _) => base,
            (Self::Rayleigh(db), false) => ChannelConfig { snr_db: db, fading_m: Some(1.0), noise: true, loss: Some(analog_loss), ..base },
            (Self::Rayleigh(db), true) => ChannelConfig { snr_db: db, fading_m: Some(1.0), loss: Some(digital_loss), ..base },
            (Self::Awgn(db), false) => ChannelConfig { snr_db: db, noise: true, ..base },
            (Self::Awgn(db), true) => ChannelConfig { snr_db: db, loss: Some(digital_loss), ..base },
            (Self::Erasure(p), _) => ChannelConfig { erasure_p: Some(p), ..base },
        }
    }
}

/// One evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub k: usize,
    pub mode: String,
    pub channel: String,
    pub seed: u64,
    pub nll: f64,
    pub tokens: usize,
    pub seconds: f64,
}

impl Row {
    pub fn ppl(&self) -> f64 {
        self.nll.exp()
    }
}

pub const CSV_HEADER: &str = "k,mode,channel,seed,nll,ppl,tokens,seconds";

fn key(k: usize, mode: &str, channel: &str, seed: u64) -> String {
    format!("{k},{mode},{channel},{seed}")
}

/// Rows already in `csv` (a missing file has none); a malformed line is refused by its text.
pub fn read_rows(csv: &Path) -> Result<Vec<Row>> {
    let text = match std::fs::read_to_string(csv) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read profile {}", csv.display())),
    };
    let mut lines = text.lines();
    if let Some(h) = lines.next()
        && h != CSV_HEADER
    {
        bail!("profile {} starts with {h:?}, not the header {CSV_HEADER:?}", csv.display());
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let bad = || anyhow::anyhow!("profile {} has a malformed row {line:?}", csv.display());
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 8 {
                return Err(bad());
            }
            Ok(Row {
                k: f[0].parse().map_err(|_| bad())?,
                mode: f[1].to_string(),
                channel: f[2].to_string(),
                seed: f[3].parse().map_err(|_| bad())?,
                nll: f[4].parse().map_err(|_| bad())?,
                tokens: f[6].parse().map_err(|_| bad())?,
                seconds: f[7].parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

/// A block of the plan: every mode × channel × k, with `seeds` seeds each, counted from
/// `first_seed` (one seed, `first_seed`, for a channel that draws nothing).
#[derive(Debug, Clone)]
pub struct Block {
    pub modes: Vec<String>,
    pub channels: Vec<String>,
    pub ks: Vec<usize>,
    pub seeds: u64,
    pub first_seed: u64,
}

/// The evaluations of `plan` not yet in `done`, in plan order (the must-show cells first).
pub fn todo(plan: &[Block], done: &[Row]) -> Result<Vec<(usize, Mode, ChannelSpec, u64)>> {
    let have: HashSet<String> = done.iter().map(|r| key(r.k, &r.mode, &r.channel, r.seed)).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for b in plan {
        for m in &b.modes {
            let mode = Mode::parse(m)?;
            for c in &b.channels {
                let ch = ChannelSpec::parse(c)?;
                let seeds = if ch.deterministic() { 1 } else { b.seeds.max(1) };
                for &k in &b.ks {
                    for seed in b.first_seed..b.first_seed + seeds {
                        let key = key(k, m, &ch.name(), seed);
                        if !have.contains(&key) && seen.insert(key) {
                            out.push((k, mode.clone(), ch, seed));
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Evaluates the points of `plan` not yet in `csv` (at most `budget` of them, in plan order),
/// appending each row as it completes; `progress(done, total, row)` after each.
pub fn run(
    env: &mut RealEnv,
    calibration: Option<&Calibration>,
    plan: &[Block],
    budget: usize,
    csv: &Path,
    progress: &mut dyn FnMut(usize, usize, Option<&Row>),
) -> Result<Vec<Row>> {
    let mut rows = read_rows(csv)?;
    let mut work = todo(plan, &rows)?;
    work.truncate(budget);
    for (k, ..) in &work {
        anyhow::ensure!(*k <= env.n_layers(), "split {k} is outside 0..={}", env.n_layers());
    }
    let new_file = !csv.exists();
    let mut out = OpenOptions::new().create(true).append(true).open(csv).with_context(|| format!("cannot write profile {}", csv.display()))?;
    if new_file {
        writeln!(out, "{CSV_HEADER}")?;
    }
    let total = work.len();
    progress(0, total, None);
    for (i, (k, mode, ch, seed)) in work.into_iter().enumerate() {
        let started = std::time::Instant::now();
        let nll = env
            .nll_link(k, &ch.config(&mode), mode.setup, calibration, seed)
            .with_context(|| format!("k={k} mode {} channel {}", mode.name, ch.name()))?;
        let row = Row { k, mode: mode.name.clone(), channel: ch.name(), seed, nll, tokens: env.scored_tokens(), seconds: started.elapsed().as_secs_f64() };
        writeln!(out, "{},{},{},{},{:.8},{:.6},{},{:.2}", row.k, row.mode, row.channel, row.seed, row.nll, row.ppl(), row.tokens, row.seconds)?;
        out.flush()?;
        progress(i + 1, total, Some(&row));
        rows.push(row);
    }
    Ok(rows)
}

/// Mean, sample standard deviation and the half-width of the 95% t confidence interval of the
/// mean, over `xs`; the half-width is infinite for a single value.
pub fn mean_ci(xs: &[f64]) -> (f64, f64, f64) {
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return (mean, 0.0, f64::INFINITY);
    }
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    // t quantiles at 0.975 for 1..=9 degrees of freedom, then the normal's.
    const T: [f64; 9] = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262];
    let t = T.get(n - 2).copied().unwrap_or(1.96);
    (mean, sd, t * sd / (n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_channels_parse_to_what_the_docs_say() {
        let raw = Mode::parse("raw").unwrap();
        assert_eq!((raw.setup, raw.equalizer), (LinkSetup::default(), Equalizer::None));
        let int8 = Mode::parse("int8").unwrap();
        assert!(int8.digital() && int8.setup.normalization == Normalization::Standardize);
        assert_eq!(Mode::parse("int4-outlier-id").unwrap().setup.normalization, Normalization::Identity);
        assert!(Mode::parse("fm").is_err());
        let r = ChannelSpec::parse("rayleigh:20").unwrap();
        let analog = r.config(&Mode::parse("rx").unwrap());
        assert!(analog.noise && analog.fading_m == Some(1.0) && analog.loss.unwrap().retransmissions == 1);
        let digital = r.config(&int8);
        assert!(!digital.noise && digital.loss.unwrap().rate_bps == 2e6 && digital.loss.unwrap().retransmissions == 3);
        assert!(ChannelSpec::parse("rician:3").is_err() && ChannelSpec::parse("awgn:x").is_err());
        assert_eq!(ChannelSpec::parse("erasure:0.1").unwrap().name(), "erasure:0.1");
    }

    #[test]
    fn todo_skips_done_rows_and_duplicates_and_keeps_plan_order() {
        let plan = vec![
            Block { modes: vec!["rx".into()], channels: vec!["rayleigh:30".into(), "clean".into()], ks: vec![1, 2], seeds: 2, first_seed: 0 },
            Block { modes: vec!["rx".into()], channels: vec!["rayleigh:30".into()], ks: vec![2, 3], seeds: 2, first_seed: 0 },
            Block { modes: vec!["rx".into()], channels: vec!["rayleigh:30".into()], ks: vec![3], seeds: 2, first_seed: 100 },
        ];
        let done = vec![Row { k: 1, mode: "rx".into(), channel: "rayleigh:30".into(), seed: 0, nll: 1.0, tokens: 1, seconds: 0.0 }];
        let t = todo(&plan, &done).unwrap();
        let names: Vec<String> = t.iter().map(|(k, m, c, s)| format!("{k}/{}/{}/{s}", m.name, c.name())).collect();
        assert_eq!(names, ["1/rx/rayleigh:30/1", "2/rx/rayleigh:30/0", "2/rx/rayleigh:30/1", "1/rx/clean/0", "2/rx/clean/0", "3/rx/rayleigh:30/0", "3/rx/rayleigh:30/1", "3/rx/rayleigh:30/100", "3/rx/rayleigh:30/101"]);
    }

    #[test]
    fn confidence_interval_of_known_values() {
        let (m, sd, hw) = mean_ci(&[1.0, 2.0, 3.0]);
        assert_eq!((m, sd), (2.0, 1.0));
        assert!((hw - 4.303 / 3f64.sqrt()).abs() < 1e-9);
        assert!(mean_ci(&[5.0]).2.is_infinite());
    }
}
