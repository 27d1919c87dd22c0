//! Activation statistics per layer boundary, measured on calibration text that is never scored
//! (`splitinfer calibrate`), and the small versioned JSON file that carries them.
//!
//! For every boundary `k` (the hidden state after layer `k`, `k = 0` the embeddings): each
//! dimension's mean and standard deviation, the largest |x|, the share of the power E[x²] held by
//! the [`TOP`] strongest dimensions, and the kurtosis of all elements pooled. The transmitter
//! standardizes with the means and deviations ([`crate::transform`]) and the receiver fills lost
//! elements with the means. From the same numbers follows what an erased element costs: zero-fill
//! errs by E[x_d²] = μ_d² + σ_d², mean-fill by σ_d² ([`BoundaryStats::fill_mse`]).
//!
//! Position 0 gets statistics of its own ([`BoundaryStats::first`]). In the middle of the
//! network the first token carries "massive activations" (Sun et al. 2024; SmolLM2-135M: over
//! 27,000 in two dimensions at k ≥ 12, against a typical |x| of 1): it is the model's attention
//! sink. Pooled with every other position its value would be diluted a few hundred times, and a
//! mean-fill of it would be as wrong as a zero-fill. The means, deviations and MSEs of the other
//! fields are over positions ≥ 1; `max_abs`, `top_share` and `kurtosis` over every row.
//!
//! The last boundary (`k = L`, the state that goes straight into the final norm and the head)
//! also carries transmit gains for [`crate::transform::Normalization::Allocate`]
//! ([`BoundaryStats::gain`], from [`allocation_gains`]).

use std::path::Path;

use crate::error::{Error, Result};

/// The file format's name and version; a reader refuses any other.
pub const FORMAT: &str = "splitinfer-calibration/2";
/// Dimensions counted in [`BoundaryStats::top_share`].
pub const TOP: usize = 8;
/// Floor of a standard deviation used to standardize, so a constant dimension does not divide by 0.
pub const STD_FLOOR: f32 = 1e-6;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BoundaryStats {
    pub k: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub max_abs: f32,
    /// Σ of the [`TOP`] largest E[x_d²] over Σ_d E[x_d²].
    pub top_share: f64,
    /// Those dimensions, strongest first.
    pub top_dims: Vec<usize>,
    /// E[(x − x̄)⁴] / Var(x)² over every element of every row (3 for a Gaussian).
    pub kurtosis: f64,
    /// The statistics of position 0 alone (the sequence's first token).
    pub first: RowStats,
    /// Transmit amplitude gain per dimension after standardization, mean square 1 (see
    /// [`allocation_gains`]); empty where no sensitivity is known, which means 1 everywhere.
    /// `splitinfer calibrate` fills it at `k = L` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gain: Vec<f32>,
    /// The sidecar file of [`crate::transform::Normalization::Rotate`]'s transmit rotation, next
    /// to the calibration file, and its sha256 (so the calibration's own sha256, which UE and edge
    /// compare in `Open`, pins it). `splitinfer calibrate --rotation` writes it at `k = L` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_file: Option<RotationFile>,
    /// The rotation itself, read from [`Self::rotation_file`] by [`Calibration::load`].
    #[serde(skip)]
    pub rotation: Option<std::sync::Arc<Rotation>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RotationFile {
    pub file: String,
    pub sha256: String,
}

/// A linear analog code across dimensions: the transmitter sends `s = T·z` for the standardized
/// row `z`, the receiver takes `z = T⁻¹·s`. Both `n × n`, row-major. The mean power of `s` is
/// that of `z` (n per row).
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub n: usize,
    pub forward: Vec<f32>,
    pub inverse: Vec<f32>,
}

/// The first bytes of a rotation file.
const ROTATION_MAGIC: &[u8; 8] = b"SIROT01\0";

impl Rotation {
    /// `[magic][n: u32 LE][forward: n² f32 LE][inverse: n² f32 LE]`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + 8 * self.n * self.n);
        b.extend_from_slice(ROTATION_MAGIC);
        b.extend_from_slice(&(self.n as u32).to_le_bytes());
        for v in self.forward.iter().chain(&self.inverse) {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn from_bytes(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() < 12 || &b[..8] != ROTATION_MAGIC {
            return Err("not a rotation file (bad magic)".into());
        }
        let n = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
        let want = n.checked_mul(n).and_then(|m| m.checked_mul(8)).and_then(|m| m.checked_add(12));
        if want != Some(b.len()) {
            return Err(format!("{} bytes for a rotation of size {n}", b.len()));
        }
        let values: Vec<f32> = b[12..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if values.iter().any(|v| !v.is_finite()) {
            return Err("a value is not finite".into());
        }
        let (forward, inverse) = values.split_at(n * n);
        Ok(Self { n, forward: forward.to_vec(), inverse: inverse.to_vec() })
    }

    /// `out = M·x` for each row of `x` (`forward` or `inverse` as `m`).
    pub fn apply(m: &[f32], n: usize, x: &mut [f32]) {
        let mut tmp = vec![0f32; n];
        for row in x.chunks_exact_mut(n) {
            for (i, t) in tmp.iter_mut().enumerate() {
                *t = m[i * n..(i + 1) * n].iter().zip(row.iter()).map(|(a, b)| a * b).sum();
            }
            row.copy_from_slice(&tmp);
        }
    }
}

/// Power allocation across dimensions for an analog link (the transmit gains of
/// [`crate::transform::Normalization::Allocate`]).
///
/// The standardized value `s_d = (y_d − μ_d)/σ_d` is sent as `a_d·s_d`, and the receiver divides by
/// `a_d`. With noise of power N₀ on every symbol, dimension `d` then errs by `σ_d²·N₀/a_d²` in
/// the model's units. If the model's output moves by `w_d` per unit squared error in `d` (the
/// `sensitivity`), the expected damage is `N₀·Σ_d w_d·σ_d²/a_d²`. Under the power constraint
/// `Σ_d a_d² = n` it is smallest at `a_d² ∝ σ_d·√w_d` (Lagrange: `w_d·σ_d²/a_d⁴` is constant),
/// which beats plain standardization (`a_d = 1`) by the factor `n·Σc_d² / (Σc_d)²` with
/// `c_d = σ_d·√w_d` ([`allocation_advantage`]). The same holds inside every packet of a channel
/// that normalizes each packet's power, since the gains are fixed per dimension.
///
/// Returns the amplitudes `a_d`, scaled so that their mean square is 1; all 1 if the products
/// are all zero.
pub fn allocation_gains(std: &[f32], sensitivity: &[f32]) -> Vec<f32> {
    let c: Vec<f64> = std.iter().zip(sensitivity).map(|(&s, &w)| f64::from(s.max(STD_FLOOR)) * f64::from(w.max(0.0)).sqrt()).collect();
    let mean = c.iter().sum::<f64>() / c.len().max(1) as f64;
    if !(mean > 0.0 && mean.is_finite()) {
        return vec![1.0; std.len()];
    }
    c.iter().map(|&c| (c / mean).sqrt() as f32).collect()
}

/// The factor by which the gains of [`allocation_gains`] lower the sensitivity-weighted noise
/// against plain standardization: `n·Σc_d² / (Σc_d)²` (≥ 1; 1 when every `c_d` is equal).
pub fn allocation_advantage(std: &[f32], sensitivity: &[f32]) -> f64 {
    let c: Vec<f64> = std.iter().zip(sensitivity).map(|(&s, &w)| f64::from(s.max(STD_FLOOR)) * f64::from(w.max(0.0)).sqrt()).collect();
    let sum: f64 = c.iter().sum();
    if sum > 0.0 { c.len() as f64 * c.iter().map(|c| c * c).sum::<f64>() / (sum * sum) } else { 1.0 }
}

/// Per-dimension mean and deviation of one class of rows.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct RowStats {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub max_abs: f32,
    /// The dimensions of the largest E[x²], strongest first.
    pub top_dims: Vec<usize>,
}

fn fill_mse(mean: &[f32], std: &[f32]) -> (f64, f64) {
    let n = mean.len().max(1) as f64;
    let var: f64 = std.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / n;
    let mu2: f64 = mean.iter().map(|&m| f64::from(m).powi(2)).sum::<f64>() / n;
    (mu2 + var, var)
}

impl BoundaryStats {
    /// Mean squared error per erased element of zero-fill and of mean-fill at positions ≥ 1,
    /// averaged over the dimensions: (mean of μ_d² + σ_d², mean of σ_d²).
    pub fn fill_mse(&self) -> (f64, f64) {
        fill_mse(&self.mean, &self.std)
    }

    /// [`Self::fill_mse`] at position 0, with position 0's own statistics.
    pub fn first_fill_mse(&self) -> (f64, f64) {
        fill_mse(&self.first.mean, &self.first.std)
    }

    /// Mean and deviation per dimension for a row at absolute position `position`.
    pub fn row(&self, position: usize) -> (&[f32], &[f32]) {
        if position == 0 && self.first.mean.len() == self.mean.len() { (&self.first.mean, &self.first.std) } else { (&self.mean, &self.std) }
    }
}

/// A model's calibration: which model and text it was measured on, and one entry per boundary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    pub format: String,
    pub model: String,
    pub model_sha256: String,
    /// What text, e.g. "brown cj01-cj20 (learned)"; never the evaluation text.
    pub text: String,
    pub tokens: usize,
    pub hidden: usize,
    pub boundaries: Vec<BoundaryStats>,
    /// sha256 of the file this was loaded from (empty when not loaded from a file): the identity
    /// UE and edge compare in `Open`.
    #[serde(skip)]
    pub file_sha256: String,
}

impl Calibration {
    /// The statistics at boundary `k`.
    pub fn boundary(&self, k: usize) -> Result<&BoundaryStats> {
        self.boundaries.get(k).filter(|b| b.k == k).ok_or_else(|| {
            Error::InvalidArgument(format!("calibration of {} has no boundary {k} (it has 0..={})", self.model, self.boundaries.len().saturating_sub(1)))
        })
    }

    /// Reads and checks a calibration file; `model_sha256` (when given) must be the file's model.
    pub fn load(path: &Path, model_sha256: Option<&str>) -> Result<Self> {
        let bad = |reason: String| Error::Calibration { path: path.into(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => bad("no such file; make one with `splitinfer calibrate --model ... --out FILE`".into()),
            _ => bad(format!("cannot read it: {e}")),
        })?;
        let mut c: Calibration = serde_json::from_str(&text).map_err(|e| bad(format!("not a calibration file: {e}")))?;
        c.file_sha256 = sha256_hex(text.as_bytes());
        if c.format != FORMAT {
            return Err(bad(format!("format {:?}, expected {FORMAT:?}", c.format)));
        }
        if let Some(want) = model_sha256
            && !c.model_sha256.eq_ignore_ascii_case(want)
        {
            return Err(bad(format!(
                "it belongs to model {} (sha256 {}), not to the model in use (sha256 {want}); calibrate this model with `splitinfer calibrate`",
                c.model, c.model_sha256
            )));
        }
        for (i, b) in c.boundaries.iter().enumerate() {
            if b.k != i || b.mean.len() != c.hidden || b.std.len() != c.hidden {
                return Err(bad(format!("boundary entry {i} has k {} and {} / {} values for hidden size {}", b.k, b.mean.len(), b.std.len(), c.hidden)));
            }
            if b.first.mean.len() != c.hidden || b.first.std.len() != c.hidden {
                return Err(bad(format!("boundary {i} has {} / {} position-0 values for hidden size {}", b.first.mean.len(), b.first.std.len(), c.hidden)));
            }
            let values = b.mean.iter().chain(&b.std).chain(&b.first.mean).chain(&b.first.std);
            if values.clone().any(|v| !v.is_finite()) || b.std.iter().chain(&b.first.std).any(|&s| s < 0.0) {
                return Err(bad(format!("boundary {i} has a non-finite mean or a negative or non-finite deviation")));
            }
            if !b.gain.is_empty() && (b.gain.len() != c.hidden || b.gain.iter().any(|g| !(g.is_finite() && *g > 0.0))) {
                return Err(bad(format!("boundary {i} has {} transmit gains for hidden size {}, or one that is not positive and finite", b.gain.len(), c.hidden)));
            }
        }
        let hidden = c.hidden;
        for b in &mut c.boundaries {
            let Some(r) = &b.rotation_file else { continue };
            let file = path.parent().unwrap_or(Path::new(".")).join(&r.file);
            let bytes = std::fs::read(&file).map_err(|e| bad(format!("boundary {} names the rotation {}, which cannot be read: {e}", b.k, file.display())))?;
            if !sha256_hex(&bytes).eq_ignore_ascii_case(&r.sha256) {
                return Err(bad(format!("the rotation {} does not have the sha256 the calibration names", file.display())));
            }
            let rot = Rotation::from_bytes(&bytes).map_err(|e| bad(format!("rotation {}: {e}", file.display())))?;
            if rot.n != hidden {
                return Err(bad(format!("rotation {} is {}×{0}, the hidden size {hidden}", file.display(), rot.n)));
            }
            b.rotation = Some(std::sync::Arc::new(rot));
        }
        Ok(c)
    }

    /// Writes the file, its values rounded to 6 significant digits (half the bytes of f32's
    /// shortest form, far below the statistics' own sampling error).
    pub fn save(&self, path: &Path) -> Result<()> {
        let round = |v: &mut Vec<f32>| v.iter_mut().for_each(|x| *x = format!("{x:.5e}").parse().unwrap_or(*x));
        let mut c = self.clone();
        for b in &mut c.boundaries {
            round(&mut b.mean);
            round(&mut b.std);
            round(&mut b.first.mean);
            round(&mut b.first.std);
            round(&mut b.gain);
        }
        let json = serde_json::to_string(&c).map_err(|e| Error::InvalidArgument(format!("cannot serialize calibration: {e}")))?;
        std::fs::write(path, json).map_err(|e| Error::Io { what: "cannot write calibration", path: path.into(), source: e })
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Accumulates one boundary's statistics over rows of `hidden` values (in f64).
#[derive(Debug, Clone)]
pub struct Accumulator {
    hidden: usize,
    rows: u64,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    max_abs: f32,
    /// Pooled power sums Σx, Σx², Σx³, Σx⁴ over all elements, for the kurtosis.
    pooled: [f64; 4],
}

impl Accumulator {
    pub fn new(hidden: usize) -> Self {
        Self { hidden, rows: 0, sum: vec![0.0; hidden], sum_sq: vec![0.0; hidden], max_abs: 0.0, pooled: [0.0; 4] }
    }

    /// Adds rows (`values.len()` a multiple of the hidden size).
    pub fn add(&mut self, values: &[f32]) {
        for row in values.chunks_exact(self.hidden) {
            self.rows += 1;
            for (d, &v) in row.iter().enumerate() {
                let x = f64::from(v);
                self.sum[d] += x;
                self.sum_sq[d] += x * x;
                self.max_abs = self.max_abs.max(v.abs());
                self.pooled[0] += x;
                self.pooled[1] += x * x;
                self.pooled[2] += x * x * x;
                self.pooled[3] += x * x * x * x;
            }
        }
    }

    /// Per-dimension mean, deviation, max |x| and strongest dimensions.
    pub fn rows_stats(&self) -> RowStats {
        let n = self.rows.max(1) as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let ms: Vec<f64> = self.sum_sq.iter().map(|s| s / n).collect();
        // n − 1 in the variance: position 0 has only one row per calibration window.
        let bessel = if self.rows > 1 { n / (n - 1.0) } else { 1.0 };
        let std = mean.iter().zip(&ms).map(|(m, q)| ((q - m * m).max(0.0) * bessel).sqrt() as f32).collect();
        RowStats { mean: mean.iter().map(|&m| m as f32).collect(), std, max_abs: self.max_abs, top_dims: self.order().into_iter().take(TOP).collect() }
    }

    fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.hidden).collect();
        order.sort_by(|&a, &b| self.sum_sq[b].total_cmp(&self.sum_sq[a]).then(a.cmp(&b)));
        order
    }

    /// The boundary's statistics from three accumulators over the same rows: `all` of them, the
    /// `rest` (positions ≥ 1) and the `first` (position 0).
    pub fn finish(k: usize, all: &Self, rest: &Self, first: &Self) -> BoundaryStats {
        let RowStats { mean, std, .. } = rest.rows_stats();
        let n = all.rows.max(1) as f64;
        let ms: Vec<f64> = all.sum_sq.iter().map(|s| s / n).collect();
        let total: f64 = ms.iter().sum();
        let top_dims: Vec<usize> = all.order().into_iter().take(TOP).collect();
        let top_share = if total > 0.0 { top_dims.iter().map(|&d| ms[d]).sum::<f64>() / total } else { 0.0 };
        let this = all;
        let count = n * this.hidden as f64;
        let [s1, s2, s3, s4] = this.pooled.map(|s| s / count);
        let var = s2 - s1 * s1;
        let m4 = s4 - 4.0 * s1 * s3 + 6.0 * s1 * s1 * s2 - 3.0 * s1.powi(4);
        BoundaryStats {
            k,
            mean,
            std,
            max_abs: this.max_abs,
            top_share,
            top_dims,
            kurtosis: if var > 0.0 { m4 / (var * var) } else { 0.0 },
            first: first.rows_stats(),
            gain: Vec::new(),
            rotation_file: None,
            rotation: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    fn gaussian_stats(massive: bool) -> BoundaryStats {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut acc = Accumulator::new(64);
        let rows: Vec<f32> = (0..64 * 4000)
            .map(|i| {
                let z: f32 = StandardNormal.sample(&mut rng);
                if massive && i % 64 == 7 { 100.0 + z } else { 2.0 + 0.5 * z }
            })
            .collect();
        acc.add(&rows);
        Accumulator::finish(3, &acc, &acc, &acc)
    }

    /// Means, deviations and the kurtosis of Gaussian data within a few standard errors; a
    /// massive dimension shows in the top-8 share and in what zero-fill costs.
    #[test]
    fn a_rotation_round_trips_its_file_and_a_wrong_or_missing_file_is_refused() {
        let r = Rotation { n: 2, forward: vec![0.0, 1.0, 1.0, 0.0], inverse: vec![0.0, 1.0, 1.0, 0.0] };
        assert_eq!(Rotation::from_bytes(&r.to_bytes()).unwrap(), r);
        assert!(Rotation::from_bytes(&r.to_bytes()[..20]).unwrap_err().contains("bytes for a rotation of size 2"));
        assert!(Rotation::from_bytes(b"SIROT00\0\x02\0\0\0").unwrap_err().contains("bad magic"));
        let mut nan = r.to_bytes();
        nan[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Rotation::from_bytes(&nan).unwrap_err().contains("not finite"));
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0];
        Rotation::apply(&r.forward, 2, &mut x);
        assert_eq!(x, [2.0, 1.0, 4.0, 3.0]);

        let dir = std::env::temp_dir().join(format!("splitinfer-rotation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Calibration {
            format: FORMAT.into(),
            model: "m".into(),
            model_sha256: "00".into(),
            text: "t".into(),
            tokens: 1,
            hidden: 2,
            boundaries: vec![BoundaryStats { k: 0, ..gaussian_stats(false) }],
            file_sha256: String::new(),
        };
        c.hidden = c.boundaries[0].mean.len();
        let n = c.hidden;
        let big = Rotation { n, forward: vec![1.0; n * n], inverse: vec![1.0; n * n] };
        std::fs::write(dir.join("m.rotation.bin"), big.to_bytes()).unwrap();
        c.boundaries[0].rotation_file = Some(RotationFile { file: "m.rotation.bin".into(), sha256: sha256_hex(&big.to_bytes()) });
        c.save(&dir.join("m.json")).unwrap();
        let loaded = Calibration::load(&dir.join("m.json"), None).unwrap();
        assert_eq!(loaded.boundaries[0].rotation.as_deref(), Some(&big));
        std::fs::write(dir.join("m.rotation.bin"), r.to_bytes()).unwrap();
        let e = Calibration::load(&dir.join("m.json"), None).unwrap_err().to_string();
        assert!(e.contains("does not have the sha256"), "{e}");
        std::fs::remove_file(dir.join("m.rotation.bin")).unwrap();
        let e = Calibration::load(&dir.join("m.json"), None).unwrap_err().to_string();
        assert!(e.contains("cannot be read"), "{e}");
    }

    #[test]
    fn statistics_of_known_data() {
        let s = gaussian_stats(false);
        // Standard error of a mean over 4000 rows of sd 0.5: 0.0079; 5 of them ≈ 0.04.
        assert!(s.mean.iter().all(|m| (m - 2.0).abs() < 0.04), "{:?}", &s.mean[..4]);
        assert!(s.std.iter().all(|v| (v - 0.5).abs() < 0.03), "{:?}", &s.std[..4]);
        // Pooled values are N(2, 0.25): kurtosis 3 with standard error √(24/N) ≈ 0.019.
        assert!((s.kurtosis - 3.0).abs() < 0.1, "{}", s.kurtosis);
        assert!((s.top_share - 8.0 / 64.0).abs() < 0.01, "{}", s.top_share);
        let m = gaussian_stats(true);
        assert_eq!(m.top_dims[0], 7);
        assert!(m.top_share > 0.9, "{}", m.top_share);
        assert!(m.kurtosis > 20.0, "{}", m.kurtosis);
        let (zero, mean) = m.fill_mse();
        // E[x²] per dimension: 100² + 1 for the massive one, 2² + 0.25 for the others.
        let want_zero = (10_001.0 + 63.0 * 4.25) / 64.0;
        let want_mean = (1.0 + 63.0 * 0.25) / 64.0;
        assert!((zero / want_zero - 1.0).abs() < 0.02 && (mean / want_mean - 1.0).abs() < 0.05, "zero-fill {zero} against mean-fill {mean}");
    }

    /// The gains of `allocation_gains` have mean square 1, follow a_d² ∝ σ_d·√w_d, and no other
    /// allocation of the same power does better on the weighted noise Σ w_d·σ_d²/a_d².
    #[test]
    fn allocation_gains_minimize_the_weighted_noise() {
        let std = [0.5f32, 1.0, 2.0, 4.0, 1e-9];
        let w = [1.0f32, 9.0, 0.25, 1.0, 0.0];
        let a = allocation_gains(&std, &w);
        let ms = a.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((ms - 1.0).abs() < 1e-6, "{ms}");
        // c = σ·√w = 0.5, 3, 1, 4, 0: a² ∝ c.
        let c = [0.5, 3.0, 1.0, 4.0];
        for d in 0..4 {
            assert!((f64::from(a[d]).powi(2) / f64::from(a[0]).powi(2) - c[d] / c[0]).abs() < 1e-5, "{a:?}");
        }
        let noise = |a: &[f64]| (0..4).map(|d| f64::from(w[d]) * f64::from(std[d]).powi(2) / (a[d] * a[d])).sum::<f64>();
        let best: Vec<f64> = a[..4].iter().map(|&x| f64::from(x)).collect();
        let uniform = vec![1.0; 4];
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for _ in 0..1000 {
            // A random perturbation, rescaled to the same total power.
            let mut p: Vec<f64> = best
                .iter()
                .map(|&x| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    x * (1.0 + 0.3 * z).abs().max(0.05)
                })
                .collect();
            let scale = (best.iter().map(|x| x * x).sum::<f64>() / p.iter().map(|x| x * x).sum::<f64>()).sqrt();
            p.iter_mut().for_each(|x| *x *= scale);
            assert!(noise(&p) >= noise(&best) * (1.0 - 1e-9));
        }
        // Plain standardization (the same power: 4 gains of 1 against these 4, whose mean square
        // is 5/4 because the fifth dimension got none) loses by the stated advantage.
        let adv = allocation_advantage(&std[..4], &w[..4]);
        let scaled: Vec<f64> = best.iter().map(|x| x / (best.iter().map(|x| x * x).sum::<f64>() / 4.0).sqrt()).collect();
        assert!((noise(&uniform) / noise(&scaled) - adv).abs() < 1e-9, "{adv}");
        assert_eq!(allocation_gains(&[1.0, 2.0], &[0.0, 0.0]), vec![1.0, 1.0]);
    }

    fn sample_file(dir: &Path, sha: &str) -> std::path::PathBuf {
        let c = Calibration {
            format: FORMAT.into(),
            model: "tiny".into(),
            model_sha256: sha.into(),
            text: "test".into(),
            tokens: 4000,
            hidden: 64,
            boundaries: vec![BoundaryStats { k: 0, ..gaussian_stats(false) }],
            file_sha256: String::new(),
        };
        let p = dir.join("tiny.json");
        c.save(&p).unwrap();
        p
    }

    #[test]
    fn a_missing_or_foreign_calibration_is_refused_clearly() {
        let dir = std::env::temp_dir().join(format!("splitinfer-calib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = sample_file(&dir, "abc123");
        let loaded = Calibration::load(&p, Some("ABC123")).unwrap();
        assert_eq!(loaded.boundaries.len(), 1);
        assert_eq!(loaded.file_sha256.len(), 64);
        let e = Calibration::load(&p, Some("def456")).unwrap_err().to_string();
        assert!(e.contains("belongs to model tiny (sha256 abc123), not to the model in use (sha256 def456)"), "{e}");
        let e = Calibration::load(&dir.join("nope.json"), None).unwrap_err().to_string();
        assert!(e.contains("nope.json: no such file; make one with `splitinfer calibrate"), "{e}");
        std::fs::write(dir.join("old.json"), r#"{"format":"splitinfer-calibration/0","model":"x","model_sha256":"","text":"","tokens":0,"hidden":0,"boundaries":[]}"#).unwrap();
        let e = Calibration::load(&dir.join("old.json"), None).unwrap_err().to_string();
        assert!(e.contains("format \"splitinfer-calibration/0\", expected \"splitinfer-calibration/2\""), "{e}");
        std::fs::write(dir.join("junk.json"), "k,mean\n").unwrap();
        assert!(Calibration::load(&dir.join("junk.json"), None).unwrap_err().to_string().contains("not a calibration file"));
        let c = Calibration::load(&p, None).unwrap();
        assert!(c.boundary(1).unwrap_err().to_string().contains("has no boundary 1 (it has 0..=0)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
