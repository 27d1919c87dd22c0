//! `splitinfer calibrate`: the model's activation statistics at every layer boundary, on text
//! that no evaluation scores, written as a versioned JSON file ([`split_core::calibration`]) and
//! drawn as the top-8 power share and the kurtosis against k.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use plotters::prelude::*;
use split_core::assets;
use split_core::calibration::{Calibration, TOP};

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: crate::ModelArgs,
    /// Calibration text. Default: the Brown "learned" files cj01-cj20 (the evaluation text is the
    /// news files; never calibrate on the text you score).
    #[arg(long, env = "SPLITINFER_CALIBRATION_TEXT")]
    pub text: Option<PathBuf>,
    /// Tokens of the text to use.
    #[arg(long, default_value_t = 16_384)]
    pub max_tokens: usize,
    /// Tokens per window (each starts from an empty cache, as the scored windows do).
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// The file to write. Default: calibration/<model name>.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The PNG of the top-8 power share and kurtosis against k. Default: beside --out.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// TrueType font for the plot's labels (default: DejaVu Sans from fonts-dejavu-core).
    #[arg(long, env = "SPLITINFER_FONT")]
    pub font: Option<PathBuf>,
    /// Instead of measuring the statistics again, add the transmit rotation of
    /// `--normalization rotate` at k = L to the existing file (--out): it measures the
    /// correlation and the next token's Fisher information on this many tokens of the
    /// calibration text (a minute or two per 4096), and writes <out>.rotation.bin beside it.
    #[arg(long, value_name = "TOKENS")]
    pub rotation: Option<usize>,
}

/// Adds the k = L transmit rotation to the calibration at `out` (see [`CalibrateArgs::rotation`]).
fn add_rotation(model: &split_core::model::SplitModel, tokens: &[u32], sha: &str, out: &Path) -> Result<()> {
    use split_core::calibration::{RotationFile, sha256_hex};
    let mut c = Calibration::load(out, Some(sha)).with_context(|| format!("--rotation adds to an existing calibration; make {} first", out.display()))?;
    let (l, n) = (model.n_layers(), model.config().hidden_size);
    let started = Instant::now();
    eprintln!("calibrate: the correlation of the standardized state at k = {l} over {} tokens", tokens.len());
    let cov = split_core::rotation::correlation(model, tokens, c.boundary(l)?)?;
    eprintln!("calibrate: the next token's Fisher information ({:.0}s so far)", started.elapsed().as_secs_f64());
    let fisher = split_core::rotation::fisher(model, tokens)?;
    eprintln!("calibrate: the code ({:.0}s so far)", started.elapsed().as_secs_f64());
    let stats = c.boundary(l)?;
    let rotation = split_core::rotation::design(&cov, &fisher, &stats.std, n);
    let b = split_core::rotation::bounds(&fisher, &cov, &stats.std, &stats.gain, n);
    let bytes = rotation.to_bytes();
    let file = out.with_extension("rotation.bin");
    std::fs::write(&file, &bytes).with_context(|| format!("cannot write {}", file.display()))?;
    let name = file.file_name().map(|f| f.to_string_lossy().to_string()).context("the rotation file has no name")?;
    c.boundaries[l].rotation_file = Some(RotationFile { file: name, sha256: sha256_hex(&bytes) });
    c.save(out)?;
    let db = |x: f64| 10.0 * x.log10();
    println!(
        "rotation {} ({n}×{n}) added to {} in {:.0}s; predicted NLL-weighted noise against plain standardization: the code {:.2} dB lower, the best per-dimension allocation {:.2} dB",
        file.display(),
        out.display(),
        started.elapsed().as_secs_f64(),
        db(b.plain / b.rotation),
        db(b.plain / b.allocation)
    );
    Ok(())
}

pub fn run(args: CalibrateArgs) -> Result<()> {
    crate::figure::load_font(args.font.as_deref())?;
    let path = split_core::bundle::resolve_model(args.model.model.as_deref(), &args.model.model_name)?;
    let sha = assets::sha256_file(&path)?;
    let name = assets::MODELS.iter().find(|m| m.sha256 == sha).map_or_else(
        || path.file_stem().map_or("model".into(), |s| s.to_string_lossy().to_string()),
        |m| m.name.to_string(),
    );
    let (text, label) = match &args.text {
        Some(p) => (std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?, p.display().to_string()),
        None => assets::calibration_text(&mut |m| eprintln!("calibrate: {m}"))?,
    };
    let (model, tokenizer) = crate::load(&args.model)?;
    let mut tokens = tokenizer.encode(&text)?;
    if args.max_tokens > 0 {
        tokens.truncate(args.max_tokens);
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("calibration").join(format!("{name}.json")));
    if let Some(n) = args.rotation {
        tokens.truncate(n.max(2));
        return add_rotation(&model, &tokens, &sha, &out);
    }
    let plot = args.plot.clone().unwrap_or_else(|| out.with_extension("png"));
    let started = Instant::now();
    eprintln!("calibrate: {} tokens of {label} through {} boundaries of {name}", tokens.len(), model.n_layers() + 1);
    let c = split_core::calibrate::calibrate(&model, &name, &sha, &label, &tokens, args.window, &mut |done, total| {
        eprintln!("calibrate: window {done}/{total}, {:.0}s", started.elapsed().as_secs_f64());
    })?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    c.save(&out)?;
    draw(&c, &plot)?;
    println!("{}", table(&c));
    if let Some(last) = c.boundaries.last().filter(|b| !b.gain.is_empty()) {
        // a_d² ∝ c_d, so the advantage n·Σc²/(Σc)² follows from the gains alone.
        let (s2, s4) = last.gain.iter().fold((0.0, 0.0), |(s2, s4), &a| (s2 + f64::from(a).powi(2), s4 + f64::from(a).powi(4)));
        let advantage = last.gain.len() as f64 * s4 / (s2 * s2);
        let max = last.gain.iter().copied().fold(0.0f32, f32::max);
        println!(
            "transmit gains at k = {} (normalization allocate): largest {max:.2}, head-weighted noise {advantage:.2}x ({:.1} dB) below plain standardization",
            last.k,
            10.0 * advantage.log10()
        );
    }
    println!("calibration {} and plot {} ({} tokens, {:.0}s)", out.display(), plot.display(), c.tokens, started.elapsed().as_secs_f64());
    Ok(())
}

/// One row per boundary: max |x|, the top-8 share, kurtosis, and the per-element MSE of
/// zero-fill against mean-fill.
pub fn table(c: &Calibration) -> String {
    let mut s = format!(
        "| k | max abs | top-{TOP} power share | top dims | kurtosis | zero-fill MSE | mean-fill MSE | ratio | position 0: max abs | its top dims | zero-fill MSE | mean-fill MSE |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for b in &c.boundaries {
        let (zero, mean) = b.fill_mse();
        let dims: Vec<String> = b.top_dims.iter().take(3).map(|d| d.to_string()).collect();
        let (fz, fm) = b.first_fill_mse();
        let fdims: Vec<String> = b.first.top_dims.iter().take(3).map(|d| d.to_string()).collect();
        s.push_str(&format!(
            "| {} | {:.1} | {:.3} | {} | {:.0} | {:.3} | {:.3} | {:.1} | {:.1} | {} | {:.1} | {:.3} |\n",
            b.k,
            b.max_abs,
            b.top_share,
            dims.join(", "),
            b.kurtosis,
            zero,
            mean,
            zero / mean.max(f64::MIN_POSITIVE),
            b.first.max_abs,
            fdims.join(", "),
            fz,
            fm
        ));
    }
    s
}

fn draw(c: &Calibration, out: &Path) -> Result<()> {
    let root = BitMapBackend::new(out, (1200, 480)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("cannot draw {}: {e}", out.display());
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(600);
    let n = c.boundaries.len().saturating_sub(1) as f64;
    let share: Vec<(f64, f64)> = c.boundaries.iter().map(|b| (b.k as f64, b.top_share)).collect();
    let kurt: Vec<(f64, f64)> = c.boundaries.iter().map(|b| (b.k as f64, b.kurtosis.max(1.0))).collect();
    let kmax = kurt.iter().map(|p| p.1).fold(10.0, f64::max);
    {
        let mut chart = ChartBuilder::on(&left)
            .caption(format!("{}: power in the top {TOP} of {} dimensions", c.model, c.hidden), ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..n, 0f64..1f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("boundary k (after layer k)")
            .y_desc("share of E[x²]")
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        chart.draw_series(LineSeries::new(share.clone(), BLUE.stroke_width(2))).map_err(err)?;
        chart.draw_series(share.iter().map(|&p| Circle::new(p, 3, BLUE.filled()))).map_err(err)?;
    }
    let mut chart = ChartBuilder::on(&right)
        .caption("kurtosis of all elements (Gaussian = 3)", ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..n, (1f64..kmax * 1.5).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("boundary k (after layer k)")
        .y_desc("kurtosis (log scale)")
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    chart.draw_series(LineSeries::new(kurt.clone(), RED.stroke_width(2))).map_err(err)?;
    chart.draw_series(kurt.iter().map(|&p| Circle::new(p, 3, RED.filled()))).map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
