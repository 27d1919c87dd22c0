//! The report's figures, drawn with plotters (a "sans-serif" font must be registered first; the
//! command line does that).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::pipeline::Results;
use crate::profile::Cell;
use crate::real::ChannelState;

/// One line of a chart: label, points, and whether to mark the points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub markers: bool,
    pub dashed: bool,
    /// Markers only, no line.
    pub scatter: bool,
}

impl Series {
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { label: label.into(), points, markers: false, dashed: false, scatter: false }
    }
}

pub struct Panel<'a> {
    pub title: String,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// Distinct colors, in order of series.
const COLORS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(60, 60, 60),
];

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 { format!("{v:.0}") } else { format!("{v:.2}") }
}

fn bounds(series: &[Series], log: bool) -> ((f64, f64), (f64, f64)) {
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite() && (!log || p.1 > 0.0));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = if log { 0.0 } else { (y1 - y0) * 0.05 };
    ((x0, x1), (y0 - pad, y1 + pad))
}

fn draw_panel(area: &DrawingArea<BitMapBackend, Shift>, p: &Panel) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("cannot draw {}: {e}", p.title);
    let ((x0, x1), (y0, y1)) = bounds(&p.series, p.log_y);
    let mut builder = ChartBuilder::on(area);
    builder.caption(&p.title, ("sans-serif", 17)).margin(12).x_label_area_size(40).y_label_area_size(60);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(p.x_desc)
                .y_desc(p.y_desc)
                .label_style(("sans-serif", 14))
                .x_label_formatter(&|x| tick(*x))
                .y_label_formatter(&|y| tick(*y))
                .draw()
                .map_err(err)?;
            for (i, s) in p.series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()].to_rgba();
                let style = color.stroke_width(2);
                let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|q| q.1.is_finite() && (!p.log_y || q.1 > 0.0)).collect();
                if s.scatter {
                    chart
                        .draw_series(pts.iter().map(|&q| Circle::new(q, 5, color.filled())))
                        .map_err(err)?
                        .label(s.label.clone())
                        .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
                    continue;
                }
                if s.dashed {
                    chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style)).map_err(err)?
                } else {
                    chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(err)?
                }
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                if s.markers {
                    chart.draw_series(pts.iter().map(|&q| Circle::new(q, 3, color.filled()))).map_err(err)?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }};
    }
    if p.log_y {
        body!(builder.build_cartesian_2d(x0..x1, (y0 * 0.9..y1 * 1.1).log_scale()).map_err(err)?);
    } else {
        body!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?);
    }
    Ok(())
}

/// Panels side by side (and in rows of `per_row`), 700 × 520 pixels each.
pub fn draw(out: &Path, panels: &[Panel], per_row: usize) -> Result<()> {
    let cols = per_row.min(panels.len()).max(1);
    let rows = panels.len().div_ceil(cols);
    let root = BitMapBackend::new(out, (700 * cols as u32, 520 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("cannot draw {}: {e}", out.display()))?;
    for (area, p) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(area, p)?;
    }
    root.present().map_err(|e| anyhow!("cannot write {}: {e}", out.display()))?;
    Ok(())
}

/// Held-out score against training effort: learners on the surrogate by transitions, model-free
/// PPO by real evaluations.
pub fn training(r: &Results, out: &Path) -> Result<()> {
    let mut left = Vec::new();
    for l in r.learners.iter() {
        let first_seed = r.learners.iter().find(|x| x.algorithm == l.algorithm).map(|x| x.seed);
        if Some(l.seed) == first_seed {
            left.push(Series::line(format!("{} (seed {})", l.algorithm, l.seed), l.curve.iter().map(|c| (c.env_steps as f64, 100.0 * c.score)).collect()));
        }
    }
    let mf = &r.model_free;
    let mb_mean = 100.0 * r.learners.iter().filter(|l| l.algorithm == "MB-PPO").map(|l| l.score).sum::<f64>() / r.learners.iter().filter(|l| l.algorithm == "MB-PPO").count().max(1) as f64;
    let xmax = mf.curve.last().map_or(1.0, |c| c.real_evaluations as f64).max(r.profile_evaluations as f64);
    let right = vec![
        Series { markers: true, ..Series::line("MF-PPO on the real environment", mf.curve.iter().map(|c| (c.real_evaluations as f64, 100.0 * c.score)).collect()) },
        Series { dashed: true, ..Series::line(format!("MB-PPO after {} real evaluations (profile)", r.profile_evaluations), vec![(0.0, mb_mean), (xmax, mb_mean)]) },
        Series { dashed: true, ..Series::line("95% of the oracle", vec![(0.0, 95.0), (xmax, 95.0)]) },
    ];
    draw(
        out,
        &[
            Panel { title: format!("{}: learners on the surrogate", r.model), x_desc: "transitions on the surrogate", y_desc: "held-out reward, % of oracle", log_y: false, series: left },
            Panel { title: "model-free PPO on the real environment".into(), x_desc: "real evaluations", y_desc: "held-out reward, % of oracle", log_y: false, series: right },
        ],
        2,
    )
}

/// The split each policy settles on across SNR, with the oracle's choices on the held-out traces.
pub fn k_vs_snr(r: &Results, out: &Path) -> Result<()> {
    let mut panels = Vec::new();
    for m in [1.0, 3.0] {
        let mut series: Vec<Series> = r
            .k_vs_snr
            .iter()
            .filter(|(_, mm, _)| *mm == m)
            .map(|(name, _, ks)| Series::line(name.clone(), ks.iter().map(|&(s, k)| (s, k as f64)).collect()))
            .collect();
        let mut oracle: Vec<(f64, f64)> = Vec::new();
        for (ti, (_, states)) in r.traces.iter().enumerate() {
            for (t, &(snr, mm)) in states.iter().enumerate() {
                if (mm - m).abs() <= 0.5 {
                    oracle.push((snr.clamp(-5.0, 40.0), r.oracle.ks[ti][t] as f64));
                }
            }
        }
        oracle.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !oracle.is_empty() {
            series.push(Series { scatter: true, ..Series::line(format!("oracle on held-out states (m within 0.5 of {m})"), oracle) });
        }
        panels.push(Panel { title: format!("{}: chosen split, Nakagami m = {m}", r.model), x_desc: "mean SNR (dB)", y_desc: "k (layers on the UE)", log_y: false, series });
    }
    draw(out, &panels, 2)
}

/// The Figure-3 analogue: perplexity against the split under fading at several SNRs and under
/// the reference erasure, one column per model.
pub fn ppl_vs_split(models: &[(String, f64, Vec<Cell>)], out: &Path) -> Result<()> {
    let mut panels = Vec::new();
    for (name, clean, cells) in models {
        let mut fading: Vec<Series> = Vec::new();
        let mut erasure: Vec<Series> = Vec::new();
        let mut keys: Vec<(String, bool)> = Vec::new();
        for c in cells {
            let (label, is_fading) = match c.state {
                ChannelState::Fading { snr_db, m: 1.0 } => (format!("{snr_db} dB, Rayleigh"), true),
                ChannelState::Fading { .. } => continue,
                ChannelState::Erasure { p } => (format!("p = {p}"), false),
            };
            if !keys.contains(&(label.clone(), is_fading)) {
                keys.push((label.clone(), is_fading));
            }
        }
        for (label, is_fading) in keys {
            let mut pts: Vec<(f64, f64)> = cells
                .iter()
                .filter(|c| {
                    let l = match c.state {
                        ChannelState::Fading { snr_db, m: 1.0 } => format!("{snr_db} dB, Rayleigh"),
                        ChannelState::Fading { .. } => String::new(),
                        ChannelState::Erasure { p } => format!("p = {p}"),
                    };
                    l == label
                })
                .map(|c| (c.k as f64, c.mean))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let s = Series { markers: true, ..Series::line(label, pts) };
            if is_fading { fading.push(s) } else { erasure.push(s) }
        }
        let n = cells.iter().map(|c| c.k).max().unwrap_or(1) as f64;
        for set in [&mut fading, &mut erasure] {
            set.push(Series { dashed: true, ..Series::line(format!("clean ({clean:.1})"), vec![(0.0, *clean), (n, *clean)]) });
        }
        panels.push(Panel { title: format!("{name}: fading + noise + outage"), x_desc: "split k (layers on the UE)", y_desc: "perplexity (log)", log_y: true, series: fading });
        panels.push(Panel { title: format!("{name}: element erasure (reference mode)"), x_desc: "split k (layers on the UE)", y_desc: "perplexity (log)", log_y: true, series: erasure });
    }
    draw(out, &panels, 2)
}
