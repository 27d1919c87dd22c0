//! `splitinfer figure3`: the analogue of the paper's Figure 3, perplexity against the split layer
//! under several SNRs (analog noise) and several erasure rates (the reference mode), drawn from
//! a profile CSV with plotters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use split_core::profile::{Condition, Row};

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

/// Mean perplexity over seeds for each (condition, k).
fn curves(rows: &[Row], mode: &str) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut acc: BTreeMap<(String, usize), (f64, usize)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.condition.mode() == mode) {
        let label = match r.condition {
            Condition::Clean => "clean".to_string(),
            Condition::Snr(db) => format!("SNR {db} dB"),
            Condition::Erasure(p) => format!("p = {p}"),
        };
        let e = acc.entry((label, r.k)).or_insert((0.0, 0));
        e.0 += r.ppl;
        e.1 += 1;
    }
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for ((label, k), (sum, n)) in acc {
        out.entry(label).or_default().push((k as f64, sum / n as f64));
    }
    out
}

pub fn draw(rows: &[Row], n_layers: usize, model_name: &str, out: &Path) -> Result<()> {
    let clean = curves(rows, "clean");
    let clean_ppl = clean.values().flatten().map(|p| p.1).fold(f64::NAN, f64::min);
    let all: Vec<f64> = rows.iter().map(|r| r.ppl).filter(|p| p.is_finite()).collect();
    let (lo, hi) = (all.iter().copied().fold(f64::INFINITY, f64::min), all.iter().copied().fold(0.0, f64::max));
    if all.is_empty() {
        return Err(anyhow!("the profile has no finite perplexity to plot"));
    }
    let root = BitMapBackend::new(out, (1400, 560)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("cannot draw {}: {e}", out.display());
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(700);
    let panels = [
        (&left, "snr_db", format!("{model_name}: analog noise (AWGN), no fading")),
        (&right, "erasure_p", "element erasure with probability p (reference mode)".to_string()),
    ];
    for (area, mode, title) in panels {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n_layers as f64, (lo * 0.9..hi * 1.1).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("split layer k (layers on the UE)")
            .y_desc("perplexity (log scale)")
            .x_labels(n_layers / 3 + 1)
            .y_labels(12)
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        if clean_ppl.is_finite() {
            chart
                .draw_series(LineSeries::new([(0.0, clean_ppl), (n_layers as f64, clean_ppl)], BLACK.stroke_width(1)))
                .map_err(err)?
                .label(format!("clean channel ({clean_ppl:.1})"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        }
        for (i, (label, points)) in curves(rows, mode).into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2))).map_err(err)?.label(label).legend(
                move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)),
            );
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
