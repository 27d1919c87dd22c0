//! `splitinfer figure3`: the analogue of the paper's Figure 3 for the link as a radio carries it.
//! Perplexity against the split layer in three modes (raw analog, analog with the receiver,
//! digital int8 with HARQ) under Rayleigh fading at several SNRs, measured into a resumable CSV
//! ([`splitinfer_rl::link_profile`]), drawn with plotters, and summarized in a report with the
//! checks the link must pass.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use split_core::calibration::Calibration;
use splitinfer_rl::link_profile::{Block, ChannelSpec, Row, mean_ci};

/// The font for labels: `$SPLITINFER_FONT`, else DejaVu Sans (Debian's fonts-dejavu-core).
pub fn load_font(explicit: Option<&Path>) -> Result<()> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => vec![
            PathBuf::from("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
            PathBuf::from("/usr/share/fonts/TTF/DejaVuSans.ttf"),
            PathBuf::from("/Library/Fonts/Arial.ttf"),
        ],
    };
    let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "no font for the figure's labels: tried {}; install Debian's fonts-dejavu-core or pass --font FILE.ttf",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path).with_context(|| format!("cannot read font {}", path.display()))?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| anyhow!("{} is not a usable TrueType font", path.display()))?;
    Ok(())
}

/// The plan behind the committed figures, must-show cells first, so an interrupted run has
/// measured what matters most.
pub fn default_plan(ks: &[usize], seeds: u64) -> Vec<Block> {
    let b = |modes: &[&str], channels: &[&str]| Block {
        modes: modes.iter().map(|s| s.to_string()).collect(),
        channels: channels.iter().map(|s| s.to_string()).collect(),
        ks: ks.to_vec(),
        seeds,
        first_seed: 0,
    };
    vec![
        b(&["rx"], &["rayleigh:30"]),
        b(&["rx"], &["awgn:20"]),
        b(&["int8"], &["rayleigh:20", "clean"]),
        b(&["raw", "rx"], &["erasure:0.1"]),
        b(&["rx"], &["rayleigh:20", "rayleigh:25"]),
        b(&["raw"], &["rayleigh:20", "rayleigh:25", "rayleigh:30"]),
        b(&["int4", "int4-outlier", "int8-outlier", "int8-id", "int4-id"], &["clean"]),
        b(&["raw", "rx", "int8"], &["rayleigh:0", "rayleigh:10", "rayleigh:40"]),
        b(&["int8"], &["rayleigh:25", "rayleigh:30", "rayleigh:5"]),
        b(&["rx", "raw"], &["rayleigh:5", "rayleigh:15"]),
    ]
}

/// Perplexities of each (mode, channel, k) over its seeds.
type Cells = BTreeMap<(String, String, usize), Vec<f64>>;

fn cells(rows: &[Row]) -> Cells {
    let mut c: Cells = BTreeMap::new();
    for r in rows {
        c.entry((r.mode.clone(), r.channel.clone(), r.k)).or_default().push(r.ppl());
    }
    c
}

/// Mean perplexity over seeds, and the CI half-width, of one cell.
fn cell(c: &Cells, mode: &str, channel: &str, k: usize) -> Option<(f64, f64, usize)> {
    c.get(&(mode.to_string(), channel.to_string(), k)).map(|v| {
        let (m, _, hw) = mean_ci(v);
        (m, hw, v.len())
    })
}

/// Panels: one per mode, a curve per Rayleigh SNR, the clean f32 line for reference.
pub fn draw(rows: &[Row], clean_ppl: f64, n_layers: usize, model_name: &str, out: &Path) -> Result<()> {
    let c = cells(rows);
    let panels = [
        ("raw", "raw analog: no equalizer, zero-fill"),
        ("rx", "analog + ZF equalizer, standardize (+ gains at k = L), mean-fill"),
        ("int8", "digital int8 (standardized), HARQ x3, mean-fill"),
    ];
    let finite: Vec<f64> = rows.iter().map(Row::ppl).filter(|p| p.is_finite()).collect();
    if finite.is_empty() {
        return Err(anyhow!("the profile has no finite perplexity to plot"));
    }
    let lo = finite.iter().copied().fold(clean_ppl, f64::min) * 0.9;
    let hi = finite.iter().copied().fold(clean_ppl, f64::max).min(clean_ppl * 1e4) * 1.2;
    let root = BitMapBackend::new(out, (1800, 600)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("cannot draw {}: {e}", out.display());
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, 3));
    for (area, (mode, title)) in areas.iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{model_name}: {title}"), ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n_layers as f64, (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("split layer k (layers on the UE)")
            .y_desc("perplexity (log scale)")
            .x_labels(n_layers / 3 + 1)
            .y_labels(12)
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new([(0.0, clean_ppl), (n_layers as f64, clean_ppl)], BLACK.stroke_width(1)))
            .map_err(err)?
            .label(format!("clean f32 ({clean_ppl:.1})"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        let mut snrs: Vec<(f64, String)> = c
            .keys()
            .filter(|(m, ch, _)| m == mode && ch.starts_with("rayleigh:"))
            .filter_map(|(_, ch, _)| ChannelSpec::parse(ch).ok().and_then(|s| s.snr_db()).map(|v| (v, ch.clone())))
            .collect();
        snrs.sort_by(|a, b| a.0.total_cmp(&b.0));
        snrs.dedup();
        for (i, (db, ch)) in snrs.iter().enumerate() {
            let points: Vec<(f64, f64)> =
                (0..=n_layers).filter_map(|k| cell(&c, mode, ch, k).map(|(m, _, _)| (k as f64, m.clamp(lo, hi)))).collect();
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(format!("Rayleigh {db} dB"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn fmt_cell(v: Option<(f64, f64, usize)>) -> String {
    match v {
        Some((m, hw, n)) if n > 1 => format!("{m:.2} ± {hw:.2}"),
        Some((m, _, _)) => format!("{m:.2}"),
        None => "—".into(),
    }
}

/// Within `tol` of `base` (relative), with the CI's upper end: "yes", "no", or "—" if missing.
fn within(v: Option<(f64, f64, usize)>, base: f64, tol: f64) -> (&'static str, bool) {
    match v {
        Some((m, _, _)) if m <= base * (1.0 + tol) => ("yes", true),
        Some(_) => ("**no**", false),
        None => ("—", false),
    }
}

/// The report: what was measured, how, and every check of the link issue, passed or not.
pub fn report(rows: &[Row], clean_ppl: f64, n_layers: usize, model_name: &str, calibration: Option<&Calibration>, how: &str) -> String {
    let c = cells(rows);
    let ks: Vec<usize> = (0..=n_layers).filter(|&k| c.keys().any(|(_, _, kk)| *kk == k)).collect();
    let mut s = String::new();
    let _ = writeln!(s, "# Link profile: {model_name}\n");
    let _ = writeln!(s, "Generated by `splitinfer figure3` from `profile.csv` ({} evaluations). {how}\n", rows.len());
    let _ = writeln!(s, "Clean f32 perplexity (identity, any k, bit-exact): **{clean_ppl:.3}**. Cells are the mean over channel seeds ± the half-width of its 95% t confidence interval; a cell with one seed shows its value. The modes and channels are defined in `rl/src/link_profile.rs`.\n");
    let count = |checks: &[bool]| format!("{} of {}", checks.iter().filter(|&&b| b).count(), checks.len());

    let _ = writeln!(s, "## Analog with equalization, normalization and concealment (`rx`) against raw analog (`raw`)\n");
    let _ = writeln!(s, "| k | rx Rayleigh 30 dB | ≤ 3% | rx AWGN 20 dB | ≤ 3% | rx Rayleigh 20 | rx Rayleigh 25 | raw Rayleigh 20 | raw Rayleigh 25 | raw Rayleigh 30 |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for &k in &ks {
        let r30 = cell(&c, "rx", "rayleigh:30", k);
        let a20 = cell(&c, "rx", "awgn:20", k);
        let (w30, p30) = within(r30, clean_ppl, 0.03);
        let (w20, p20) = within(a20, clean_ppl, 0.03);
        if r30.is_some() {
            a.push(p30);
        }
        if a20.is_some() {
            b.push(p20);
        }
        let _ = writeln!(
            s,
            "| {k} | {} | {w30} | {} | {w20} | {} | {} | {} | {} | {} |",
            fmt_cell(r30),
            fmt_cell(a20),
            fmt_cell(cell(&c, "rx", "rayleigh:20", k)),
            fmt_cell(cell(&c, "rx", "rayleigh:25", k)),
            fmt_cell(cell(&c, "raw", "rayleigh:20", k)),
            fmt_cell(cell(&c, "raw", "rayleigh:25", k)),
            fmt_cell(cell(&c, "raw", "rayleigh:30", k)),
        );
    }
    let _ = writeln!(s, "\nWithin 3% of clean: Rayleigh 30 dB at {} splits measured; AWGN 20 dB at {}.\n", count(&a), count(&b));

    let _ = writeln!(s, "## Digital link\n");
    let _ = writeln!(s, "| k | int8 clean | ≤ 1% of f32 | int8 Rayleigh 20 dB, HARQ | ≤ 3% | int4 clean | int4-outlier clean | int8-outlier clean | int8 unnormalized clean | int4 unnormalized clean |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    let (mut d1, mut d2) = (Vec::new(), Vec::new());
    for &k in &ks {
        let clean8 = cell(&c, "int8", "clean", k);
        let r20 = cell(&c, "int8", "rayleigh:20", k);
        let (w1, p1) = within(clean8, clean_ppl, 0.01);
        let (w2, p2) = within(r20, clean_ppl, 0.03);
        if clean8.is_some() {
            d1.push(p1);
        }
        if r20.is_some() {
            d2.push(p2);
        }
        let _ = writeln!(
            s,
            "| {k} | {} | {w1} | {} | {w2} | {} | {} | {} | {} | {} |",
            fmt_cell(clean8),
            fmt_cell(r20),
            fmt_cell(cell(&c, "int4", "clean", k)),
            fmt_cell(cell(&c, "int4-outlier", "clean", k)),
            fmt_cell(cell(&c, "int8-outlier", "clean", k)),
            fmt_cell(cell(&c, "int8-id", "clean", k)),
            fmt_cell(cell(&c, "int4-id", "clean", k)),
        );
    }
    let _ = writeln!(s, "\nint8 clean within 1% of f32 at {}; int8 with HARQ at Rayleigh 20 dB within 3% at {}.\n", count(&d1), count(&d2));

    let _ = writeln!(s, "## Perplexity against SNR (Rayleigh), per mode and k\n");
    let _ = writeln!(s, "A rise is flagged when a higher SNR's mean exceeds a lower one's by more than the two confidence half-widths together.\n");
    for mode in ["raw", "rx", "int8"] {
        let mut flagged = Vec::new();
        let mut checked = 0;
        for &k in &ks {
            let mut pts: Vec<(f64, (f64, f64, usize))> = c
                .keys()
                .filter(|(m, ch, kk)| m == mode && *kk == k && ch.starts_with("rayleigh:"))
                .filter_map(|(_, ch, _)| Some((ChannelSpec::parse(ch).ok()?.snr_db()?, cell(&c, mode, ch, k)?)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if pts.len() < 2 {
                continue;
            }
            checked += 1;
            for w in pts.windows(2) {
                let ((s0, (m0, h0, _)), (s1, (m1, h1, _))) = (w[0], w[1]);
                if m1 - m0 > h0 + h1 {
                    flagged.push(format!("k={k}: {m0:.2} at {s0} dB → {m1:.2} at {s1} dB"));
                }
            }
        }
        let _ = writeln!(
            s,
            "- `{mode}`: {checked} splits with two or more SNRs; {}",
            if flagged.is_empty() { "no rise beyond the intervals.".to_string() } else { format!("rises: {}.", flagged.join("; ")) }
        );
    }

    let _ = writeln!(s, "\n## Erasure p = 0.1: zero-fill (`raw`) against mean-fill (`rx`), and what the statistics say\n");
    let _ = writeln!(s, "Zero-fill MSE per erased element is the mean over dimensions of μ_d² + σ_d², mean-fill's of σ_d² (calibration statistics at boundary k).\n");
    let _ = writeln!(s, "| k | zero-fill | mean-fill | top-8 power share | kurtosis | zero-fill MSE | mean-fill MSE | ratio |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for &k in &ks {
        let (share, kurt, zmse, mmse) = match calibration.and_then(|cal| cal.boundary(k).ok()) {
            Some(b) => {
                let (z, m) = b.fill_mse();
                (format!("{:.3}", b.top_share), format!("{:.0}", b.kurtosis), z, m)
            }
            None => ("—".into(), "—".into(), f64::NAN, f64::NAN),
        };
        let _ = writeln!(
            s,
            "| {k} | {} | {} | {share} | {kurt} | {zmse:.3} | {mmse:.3} | {:.1} |",
            fmt_cell(cell(&c, "raw", "erasure:0.1", k)),
            fmt_cell(cell(&c, "rx", "erasure:0.1", k)),
            zmse / mmse
        );
    }
    s
}
