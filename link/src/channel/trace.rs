//! Channel traces: mean SNR and Nakagami m over time, replayed by the emulator. A CSV file
//! (`t_ms,snr_db,m`, extra columns ignored) or a generated mobility trace: a UE moving at a
//! constant speed back and forth between two distances from the base station, with log-distance
//! path loss and log-normal shadowing correlated over distance (Gudmundson's model). Generation
//! is seeded, so a mobility scenario replays exactly.

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TracePoint {
    pub t_ms: u64,
    pub snr_db: f64,
    /// Nakagami m; `None` for no fading.
    pub m: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Trace {
    pub points: Vec<TracePoint>,
}

impl Trace {
    /// Reads `t_ms,snr_db,m` rows (a header line first). `m` empty or 0 means no fading.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io { what: "cannot read trace", path: path.into(), source: e })?;
        Self::parse(&text).map_err(|e| Error::InvalidArgument(format!("trace {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().ok_or("is empty")?;
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        if cols.len() < 3 || cols[0] != "t_ms" || cols[1] != "snr_db" || cols[2] != "m" {
            return Err("the header is not t_ms,snr_db,m[,...]".into());
        }
        let mut points: Vec<TracePoint> = Vec::new();
        for (i, line) in lines {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            // The line number, never the line: a control API loads traces for remote callers.
            let bad = |what: &str| format!("line {}: {what}", i + 1);
            if f.len() < 3 {
                return Err(bad("fewer than 3 columns"));
            }
            let t_ms: u64 = f[0].parse().map_err(|_| bad("t_ms is not a whole number"))?;
            let snr_db: f64 = f[1].parse().map_err(|_| bad("snr_db is not a number"))?;
            if !(crate::channel::SNR_DB_RANGE).contains(&snr_db) {
                return Err(bad("snr_db is outside -100..=200 dB"));
            }
            let m = match f[2] {
                "" => None,
                s => {
                    let m: f64 = s.parse().map_err(|_| bad("m is not a number"))?;
                    if m == 0.0 {
                        None
                    } else if m >= 0.5 && m.is_finite() {
                        Some(m)
                    } else {
                        return Err(bad("m must be 0 (no fading) or >= 0.5"));
                    }
                }
            };
            if points.last().is_some_and(|p| p.t_ms >= t_ms) {
                return Err(bad("t_ms does not increase"));
            }
            points.push(TracePoint { t_ms, snr_db, m });
        }
        if points.is_empty() {
            return Err("has no rows".into());
        }
        Ok(Self { points })
    }

    /// The point in force at `t_ms` (each holds until the next); the trace loops after its last
    /// point, with the last point's distance from the first as the period's tail.
    pub fn at(&self, t_ms: u64) -> TracePoint {
        let first = self.points[0].t_ms;
        let last = self.points[self.points.len() - 1].t_ms;
        let period = (last - first).max(1) + self.step_hint();
        let t = first + (t_ms.saturating_sub(first)) % period;
        let i = self.points.partition_point(|p| p.t_ms <= t).saturating_sub(1);
        self.points[i]
    }

    fn step_hint(&self) -> u64 {
        match self.points.len() {
            0 | 1 => 1000,
            n => (self.points[n - 1].t_ms - self.points[0].t_ms) / (n as u64 - 1),
        }
    }

    pub fn to_csv(&self) -> String {
        let mut s = String::from("t_ms,snr_db,m\n");
        for p in &self.points {
            s.push_str(&format!("{},{:.3},{}\n", p.t_ms, p.snr_db, p.m.unwrap_or(0.0)));
        }
        s
    }
}

/// A UE moving between `d_min_m` and `d_max_m` at `speed_mps`.
#[derive(Debug, Clone, Copy)]
pub struct Mobility {
    pub speed_mps: f64,
    pub d_min_m: f64,
    pub d_max_m: f64,
    /// SNR at the reference distance of 1 m (transmit power minus noise, minus PL at 1 m).
    pub snr_at_1m_db: f64,
    pub path_loss_exponent: f64,
    pub shadowing_sigma_db: f64,
    /// Distance over which shadowing decorrelates to 1/e.
    pub decorrelation_m: f64,
    pub m: f64,
}

impl Mobility {
    /// Walking speed in a small urban cell.
    pub const PEDESTRIAN: Self = Self {
        speed_mps: 1.4,
        d_min_m: 20.0,
        d_max_m: 250.0,
        snr_at_1m_db: 85.0,
        path_loss_exponent: 3.5,
        shadowing_sigma_db: 6.0,
        decorrelation_m: 20.0,
        m: 1.5,
    };
    /// Urban driving speed, same cell: the channel changes ten times faster.
    pub const VEHICULAR: Self = Self { speed_mps: 14.0, m: 1.0, ..Self::PEDESTRIAN };

    /// `duration_ms` of the scenario sampled every `step_ms`, seeded.
    pub fn trace(&self, duration_ms: u64, step_ms: u64, seed: u64) -> Trace {
        let mut rng = StdRng::seed_from_u64(seed);
        let span = (self.d_max_m - self.d_min_m).max(1e-9);
        let mut shadow = 0.0f64;
        let mut last_d: Option<f64> = None;
        let mut points = Vec::new();
        let mut t = 0;
        while t < duration_ms.max(step_ms) {
            // Back and forth between d_min and d_max.
            let travelled = self.speed_mps * t as f64 / 1e3;
            let phase = travelled % (2.0 * span);
            let d = self.d_min_m + if phase < span { phase } else { 2.0 * span - phase };
            // Gudmundson: AR(1) over distance moved, correlation exp(−Δd / d_corr).
            let rho = last_d.map_or(0.0, |l: f64| (-(d - l).abs() / self.decorrelation_m).exp());
            let z: f64 = StandardNormal.sample(&mut rng);
            shadow = rho * shadow + (1.0 - rho * rho).sqrt() * self.shadowing_sigma_db * z;
            last_d = Some(d);
            let snr_db = self.snr_at_1m_db - 10.0 * self.path_loss_exponent * d.log10() + shadow;
            points.push(TracePoint { t_ms: t, snr_db, m: Some(self.m) });
            t += step_ms.max(1);
        }
        Trace { points }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trips_and_holds_each_point_then_loops() {
        let t = Trace::parse("t_ms,snr_db,m,comment\n0,20,3,a\n100,5,1,b\n200,-3,0,c\n").unwrap();
        assert_eq!(t.points.len(), 3);
        assert_eq!(t.at(50).snr_db, 20.0);
        assert_eq!(t.at(150).m, Some(1.0));
        assert_eq!(t.at(250).m, None);
        assert_eq!(t.at(300).snr_db, 20.0, "loops after one step past the last point");
        assert_eq!(Trace::parse(&t.to_csv()).unwrap(), t);
    }

    #[test]
    fn malformed_traces_are_refused_with_the_line() {
        let e = |s: &str| Trace::parse(s).unwrap_err();
        assert!(e("").contains("is empty"));
        assert_eq!(e("time,snr\n0,1\n"), "the header is not t_ms,snr_db,m[,...]", "no content echoed");
        assert!(e("t_ms,snr_db,m\n").contains("has no rows"));
        assert_eq!(e("t_ms,snr_db,m\n0,secret,1\n"), "line 2: snr_db is not a number", "no content echoed");
        assert!(e("t_ms,snr_db,m\n0,-1e308,1\n").contains("line 2: snr_db is outside"));
        assert!(e("t_ms,snr_db,m\n0,1,0.3\n").contains("m must be 0 (no fading) or >= 0.5"));
        assert!(e("t_ms,snr_db,m\n5,1,1\n5,2,1\n").contains("line 3: t_ms does not increase"));
        assert!(Trace::load(Path::new("/nonexistent/trace.csv")).unwrap_err().to_string().contains("cannot read trace /nonexistent/trace.csv"));
    }

    #[test]
    fn mobility_is_seeded_and_follows_path_loss_and_shadowing() {
        let p = Mobility::PEDESTRIAN;
        let a = p.trace(600_000, 100, 1);
        assert_eq!(a, p.trace(600_000, 100, 1));
        assert_ne!(a, p.trace(600_000, 100, 2));
        // Without shadowing the SNR is the path loss alone, at the ends of the route.
        let flat = Mobility { shadowing_sigma_db: 0.0, ..p }.trace(10_000, 100, 0);
        assert!((flat.points[0].snr_db - (85.0 - 35.0 * 20f64.log10())).abs() < 1e-9);
        // Shadowing residuals have the configured spread (6 dB): over 6000 correlated samples
        // the sample sd is within 25%.
        let resid: Vec<f64> = a
            .points
            .iter()
            .zip(Mobility { shadowing_sigma_db: 0.0, ..p }.trace(600_000, 100, 1).points.iter())
            .map(|(x, y)| x.snr_db - y.snr_db)
            .collect();
        let mean = resid.iter().sum::<f64>() / resid.len() as f64;
        let sd = (resid.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / resid.len() as f64).sqrt();
        assert!((sd - 6.0).abs() < 1.5, "shadowing sd {sd}");
        // Vehicular covers the route ten times faster: more SNR change per second.
        let change = |t: &Trace| t.points.windows(2).map(|w| (w[1].snr_db - w[0].snr_db).abs()).sum::<f64>();
        assert!(change(&Mobility::VEHICULAR.trace(60_000, 100, 1)) > 2.0 * change(&p.trace(60_000, 100, 1)));
    }
}
