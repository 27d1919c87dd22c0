//! `splitinfer privacy`: how many input tokens an eavesdropper recovers from the hidden state
//! after layer k ([`split_core::privacy`]), at every k, and the privacy floor `k_min` that
//! follows from a target recovery rate. The probe is fitted on the calibration text; the attacks
//! are scored on other text (by default the news files). Per-window results go to a CSV as they
//! come, so an interrupted run goes on where it stopped.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use split_core::assets;
use split_core::calibration::Calibration;
use split_core::privacy::{self, RIDGE};

#[derive(Debug, Args)]
pub struct PrivacyArgs {
    #[command(flatten)]
    pub model: crate::ModelArgs,
    /// Text the attacks are scored on. Default: the Brown news files ca01-ca44.
    #[arg(long, env = "SPLITINFER_TEXT")]
    pub text: Option<PathBuf>,
    /// Tokens of it to score.
    #[arg(long, default_value_t = 10_240)]
    pub tokens: usize,
    /// Text the linear probe is fitted on. Default: the calibration text (Brown "learned"
    /// cj01-cj20), which must not be the scored text.
    #[arg(long, env = "SPLITINFER_CALIBRATION_TEXT")]
    pub fit_text: Option<PathBuf>,
    /// Tokens of the fitting text to use.
    #[arg(long, default_value_t = 16_384)]
    pub fit_tokens: usize,
    /// Tokens per window; each starts from an empty cache, as the scored windows of `ppl` do.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// The recovery rate a split must stay at or below (upper 95% bound, stronger attack) at
    /// every k ≥ k_min.
    #[arg(long, default_value_t = 0.10)]
    pub target: f64,
    /// Calibration statistics the probe standardizes with (default: calibration/<model name>.json).
    #[arg(long, env = "SPLITINFER_CALIBRATION")]
    pub calibration: Option<PathBuf>,
    /// Directory for recovery.csv (resumable) and report.md. Default: docs/privacy/<model name>.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

const HEADER: &str = "window,k,rows,nearest,probe";

pub fn run(args: PrivacyArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.target) {
        bail!("--target {} is a recovery rate and must be in 0..=1", args.target);
    }
    let path = split_core::bundle::resolve_model(args.model.model.as_deref(), &args.model.model_name)?;
    let sha = assets::sha256_file(&path)?;
    let name = assets::MODELS.iter().find(|m| m.sha256 == sha).map_or(args.model.model_name.clone(), |m| m.name.to_string());
    let calibration_path = args.calibration.clone().unwrap_or_else(|| PathBuf::from("calibration").join(format!("{name}.json")));
    let calibration = Calibration::load(&calibration_path, Some(&sha))
        .with_context(|| format!("the probe needs this model's calibration statistics (make them with `splitinfer calibrate --model-name {name}`)"))?;
    let (fit_text, fit_label) = match &args.fit_text {
        Some(p) => (std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?, p.display().to_string()),
        None => assets::calibration_text(&mut |m| eprintln!("privacy: {m}"))?,
    };
    let text_path = match &args.text {
        Some(p) => p.clone(),
        None => assets::ensure_corpus(&mut |m| eprintln!("privacy: {m}"))?,
    };
    let text = std::fs::read_to_string(&text_path).with_context(|| format!("cannot read {}", text_path.display()))?;
    if text == fit_text {
        bail!("the scored text and the fitting text are the same; the probe would be scored on what it was fitted on");
    }
    let (model, tokenizer) = crate::load(&args.model)?;
    let mut fit = tokenizer.encode(&fit_text)?;
    fit.truncate(args.fit_tokens);
    let mut scored = tokenizer.encode(&text)?;
    scored.truncate(args.tokens);
    let windows: Vec<&[u32]> = scored.chunks(args.window).filter(|w| w.len() >= 2).collect();

    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("docs/privacy").join(&name));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let csv = dir.join("recovery.csv");
    let mut rows = read_rows(&csv)?;
    let done: std::collections::BTreeSet<usize> = rows.iter().map(|r| r.0).collect();
    let todo: Vec<usize> = (0..windows.len()).filter(|w| !done.contains(w)).collect();
    let started = Instant::now();
    if !todo.is_empty() {
        eprintln!("privacy: fitting {} probes on {} tokens of {fit_label}", model.n_layers() + 1, fit.len());
        let probes = privacy::fit_probes(&model, &calibration, &fit, args.window, &mut |d, t| {
            eprintln!("privacy: fit window {d}/{t}, {:.0}s", started.elapsed().as_secs_f64());
        })?;
        let unit = privacy::unit_embeddings(&model)?;
        let new = !csv.is_file();
        let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&csv).with_context(|| format!("cannot open {}", csv.display()))?;
        if new {
            writeln!(out, "{HEADER}")?;
        }
        for (i, &w) in todo.iter().enumerate() {
            let t = Instant::now();
            let hits = privacy::attack_window(&model, &calibration, &probes, &unit, windows[w])?;
            for (k, (nearest, probe)) in hits.into_iter().enumerate() {
                writeln!(out, "{w},{k},{},{nearest},{probe}", windows[w].len())?;
                rows.push((w, k, windows[w].len(), nearest, probe));
            }
            out.flush()?;
            eprintln!("privacy: window {}/{} scored at every k ({:.1}s); {:.0}s elapsed", i + 1, todo.len(), t.elapsed().as_secs_f64(), started.elapsed().as_secs_f64());
        }
    }
    // The file's name, not this machine's path to it.
    let label = text_path.file_name().map_or_else(|| text_path.display().to_string(), |n| n.to_string_lossy().to_string());
    let report = report(&rows, model.n_layers(), &name, &label, &fit_label, fit.len(), args.target);
    std::fs::write(dir.join("report.md"), &report)?;
    println!("{report}");
    println!("privacy: {} and {}", csv.display(), dir.join("report.md").display());
    Ok(())
}

/// One row of the CSV: (window, k, rows, nearest hits, probe hits).
type Row = (usize, usize, usize, usize, usize);

/// The rows already in `csv`.
fn read_rows(csv: &std::path::Path) -> Result<Vec<Row>> {
    if !csv.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(csv)?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        bail!("{} does not start with {HEADER:?}; move it away to start over", csv.display());
    }
    lines
        .enumerate()
        .map(|(i, l)| {
            let v: Vec<usize> = l.split(',').map(str::parse).collect::<Result<_, _>>().with_context(|| format!("{} line {}: {l:?}", csv.display(), i + 2))?;
            match v[..] {
                [w, k, r, n, p] => Ok((w, k, r, n, p)),
                _ => bail!("{} line {}: expected 5 fields, got {l:?}", csv.display(), i + 2),
            }
        })
        .collect()
}

fn report(rows: &[(usize, usize, usize, usize, usize)], n_layers: usize, model: &str, text: &str, fit: &str, fit_tokens: usize, target: f64) -> String {
    let mut per_k = vec![(0usize, 0usize, 0usize); n_layers + 1];
    for &(_, k, r, n, p) in rows {
        if let Some(c) = per_k.get_mut(k) {
            c.0 += r;
            c.1 += n;
            c.2 += p;
        }
    }
    let mut s = String::new();
    let _ = writeln!(s, "# Privacy: token recovery from the hidden state after layer k, {model}\n");
    let _ = writeln!(
        s,
        "Generated by `splitinfer privacy` (`split_core::privacy`). {} tokens of {text} scored at every k, in windows that each start from an empty cache. The linear probe was fitted on {fit_tokens} tokens of {fit} (ridge, λ = {RIDGE} per row, on features standardized with the calibration statistics). Rates are exact-token recoveries; the interval is Wilson's 95% over positions, which treats positions as independent (they are not quite: they share windows).\n",
        per_k[0].0
    );
    let _ = writeln!(s, "| k | nearest embedding | 95% CI | linear probe | 95% CI |\n|---|---|---|---|---|");
    let mut upper = Vec::new();
    for (k, &(n, near, probe)) in per_k.iter().enumerate() {
        let (nl, nh) = privacy::wilson(near, n);
        let (pl, ph) = privacy::wilson(probe, n);
        upper.push(nh.max(ph));
        let rate = |h: usize| if n == 0 { f64::NAN } else { h as f64 / n as f64 };
        let _ = writeln!(s, "| {k} | {:.4} | {nl:.4}–{nh:.4} | {:.4} | {pl:.4}–{ph:.4} |", rate(near), rate(probe));
    }
    let _ = writeln!(s);
    match privacy::k_min(&upper, target) {
        Some(k) => {
            let _ = writeln!(s, "**k_min = {k}** for a target recovery rate of {target}: from k = {k} on, the stronger attack's upper 95% bound stays at or below the target at every split.");
        }
        None => {
            let _ = writeln!(s, "**No split meets a target recovery rate of {target}**: the stronger attack's upper 95% bound is above it at k = {n_layers}.");
        }
    }
    s
}
