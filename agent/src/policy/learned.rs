//! The learned policy: a small MLP trained offline (by the `rl` crate) and read from a file.
//!
//! The file is a safetensors file: f32 tensors `layer.{i}.weight` (shape `[outputs, inputs]`) and
//! `layer.{i}.bias` (`[outputs]`) for `i = 0..n`, and a [`PolicyMeta`] as JSON in the header's
//! metadata under the key `"splitinfer"`. The metadata says what the network expects: which
//! observation features in which order, how to clamp and normalise them, and the model (and its
//! layer count L) it was trained for; its output is one logit per split `k = 0..=L`.
//!
//! The forward pass is a few hundred multiply-adds, done in plain Rust: the agent stays lean (no
//! candle) and a decision costs microseconds, so it runs inline on the observation path.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::{Policy, Proposal};
use crate::observation::Observation;

/// The `format` of the files this code reads and writes. A change that an old reader would
/// misread gets a new version.
pub const FORMAT: &str = "splitinfer-policy/1";

/// The safetensors metadata key that holds the [`PolicyMeta`] JSON.
pub const METADATA_KEY: &str = "splitinfer";

/// The observation features a policy may use, by name in [`PolicyMeta::features`].
pub const KNOWN_FEATURES: [&str; 5] = ["snr_db", "fading_m", "erasure_p", "loss_rate", "prev_k"];

/// The activations between layers.
pub const ACTIVATIONS: [&str; 2] = ["tanh", "relu"];

/// What the network expects and what it was trained for; stored as JSON in the file's metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicyMeta {
    /// Must equal [`FORMAT`].
    pub format: String,
    /// The training algorithm, e.g. "mb-ppo", "dqn".
    pub algorithm: String,
    /// The model the policy was trained for, by split-core's asset name, e.g. "smollm2-135m".
    pub model: String,
    /// Its decoder layers L; the network has one output per `k = 0..=L`.
    pub n_layers: u32,
    /// The state layout, in input order; names from [`KNOWN_FEATURES`].
    pub features: Vec<String>,
    /// Per feature: raw values are clamped to `[lower, upper]` ...
    pub lower: Vec<f32>,
    pub upper: Vec<f32>,
    /// ... then normalised to `(x - mean) / std`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Between layers (none after the last): "tanh" or "relu".
    pub activation: String,
    /// Free text: the reward, the training run.
    pub description: String,
}

/// One dense layer: `y = weight · x + bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    /// `outputs × inputs`, row-major (row `o` holds the weights into output `o`).
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A policy network with its metadata, as stored in a policy file.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyFile {
    pub meta: PolicyMeta,
    pub layers: Vec<Layer>,
}

/// Why a policy file cannot be read, written or used. Every message names the file when there is
/// one (a [`PolicyFile`] built in memory has none until it is saved or loaded).
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("cannot read policy file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write policy file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    /// Not a safetensors file, or one cut short.
    #[error("policy file {path} is not a safetensors file or is truncated: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    /// A safetensors file, but not a policy: no `"splitinfer"` metadata, or metadata that is not a
    /// `PolicyMeta`.
    #[error("policy file {path}: {what}")]
    Metadata { path: PathBuf, what: String },
    /// A policy that is inconsistent in itself: format, features, vectors, shapes, numbers.
    #[error("{}{what}", in_file(path))]
    Invalid { path: Option<PathBuf>, what: String },
    /// A valid policy for another model than the one deployed; `what` reads after "policy".
    #[error("{}{what}", subject(path))]
    Mismatch { path: Option<PathBuf>, what: String },
}

fn in_file(path: &Option<PathBuf>) -> String {
    path.as_ref().map_or_else(|| "policy: ".to_string(), |p| format!("policy file {}: ", p.display()))
}

fn subject(path: &Option<PathBuf>) -> String {
    path.as_ref().map_or_else(|| "policy ".to_string(), |p| format!("policy file {} ", p.display()))
}

impl PolicyFileError {
    /// Names `path` in an error about a policy's contents (no-op for the others, which have it).
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Invalid { what, .. } => Self::Invalid { path: Some(path.into()), what },
            Self::Mismatch { what, .. } => Self::Mismatch { path: Some(path.into()), what },
            other => other,
        }
    }
}

fn invalid(what: String) -> PolicyFileError {
    PolicyFileError::Invalid { path: None, what }
}

fn weight_name(i: usize) -> String {
    format!("layer.{i}.weight")
}

fn bias_name(i: usize) -> String {
    format!("layer.{i}.bias")
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl PolicyFile {
    /// Validates, then writes `path` (through a sibling temporary file and a rename, so a reader
    /// never sees half a policy).
    pub fn save(&self, path: &Path) -> Result<(), PolicyFileError> {
        self.validate().map_err(|e| e.in_file(path))?;
        let meta = serde_json::to_string(&self.meta).map_err(|e| invalid(format!("cannot encode the metadata as JSON: {e}")).in_file(path))?;
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| [(weight_name(i), vec![l.outputs, l.inputs], le_bytes(&l.weight)), (bias_name(i), vec![l.outputs], le_bytes(&l.bias))])
            .collect();
        let views = data
            .iter()
            .map(|(name, shape, bytes)| TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.as_str(), v)))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|views| safetensors::serialize(views, Some(HashMap::from([(METADATA_KEY.to_string(), meta)]))));
        // Shapes and lengths were validated, so this cannot fail short of a bug in either side.
        let bytes = views.map_err(|e| invalid(format!("cannot encode the tensors: {e}")).in_file(path))?;

        let write = |source| PolicyFileError::Write { path: path.into(), source };
        let file_name = path.file_name().ok_or_else(|| write(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")))?;
        let tmp = path.with_file_name(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
        std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            write(e)
        })
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyFileError> {
        let bytes = std::fs::read(path).map_err(|source| PolicyFileError::Read { path: path.into(), source })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            FromBytes::NotSafetensors(reason) => PolicyFileError::NotSafetensors { path: path.into(), reason },
            FromBytes::Metadata(what) => PolicyFileError::Metadata { path: path.into(), what },
            FromBytes::Policy(e) => e.in_file(path),
        })
    }

    /// Validates `bytes` as a policy file's contents, as [`PolicyFile::load`] does, with the
    /// reason as text (for tools and the fuzzer, which have no path to name).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        Self::from_bytes(bytes).map_err(|e| match e {
            FromBytes::NotSafetensors(reason) => format!("not a safetensors file: {reason}"),
            FromBytes::Metadata(what) | FromBytes::Policy(PolicyFileError::Invalid { what, .. }) => what,
            FromBytes::Policy(e) => e.to_string(),
        })
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, FromBytes> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| FromBytes::NotSafetensors(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| FromBytes::NotSafetensors(e.to_string()))?;
        let Some(json) = header.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)) else {
            return Err(FromBytes::Metadata(format!(
                "no \"{METADATA_KEY}\" key in the safetensors metadata; not a splitinfer policy (policies are written by PolicyFile::save)"
            )));
        };
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| FromBytes::Metadata(format!("the \"{METADATA_KEY}\" metadata is not JSON: {e}")))?;
        // The version first: a newer format may not parse as this one's fields at all.
        if let Some(format) = value.get("format").and_then(|f| f.as_str())
            && format != FORMAT
        {
            return Err(FromBytes::Policy(invalid(format!("format \"{format}\" is not \"{FORMAT}\", the one this agent reads"))));
        }
        let meta: PolicyMeta = serde_json::from_value(value)
            .map_err(|e| FromBytes::Metadata(format!("the \"{METADATA_KEY}\" metadata is not a policy description: {e}")))?;

        let mut layers = Vec::new();
        while let Ok(weight) = st.tensor(&weight_name(layers.len())) {
            let i = layers.len();
            let bias = st.tensor(&bias_name(i)).map_err(|_| FromBytes::Policy(invalid(format!("tensor {} is missing", bias_name(i)))))?;
            let f32s = |name: String, t: &TensorView| -> Result<Vec<f32>, FromBytes> {
                if t.dtype() != Dtype::F32 {
                    return Err(FromBytes::Policy(invalid(format!("tensor {name} is {:?}; policies are F32", t.dtype()))));
                }
                Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            };
            let (&[outputs, inputs], &[bias_len]) = (weight.shape(), bias.shape()) else {
                return Err(FromBytes::Policy(invalid(format!(
                    "layer {i}: weight shape {:?} and bias shape {:?}; expected [outputs, inputs] and [outputs]",
                    weight.shape(),
                    bias.shape()
                ))));
            };
            if bias_len != outputs {
                return Err(FromBytes::Policy(invalid(format!("layer {i} has {outputs} outputs but {bias_len} biases"))));
            }
            layers.push(Layer { inputs, outputs, weight: f32s(weight_name(i), &weight)?, bias: f32s(bias_name(i), &bias)? });
        }
        let expected: Vec<String> = (0..layers.len()).flat_map(|i| [weight_name(i), bias_name(i)]).collect();
        let mut extra: Vec<&str> = st.names().into_iter().filter(|n| !expected.iter().any(|e| e == n)).collect();
        if !extra.is_empty() {
            extra.sort_unstable();
            return Err(FromBytes::Policy(invalid(format!(
                "unexpected tensors {extra:?} after {} layers; a policy holds layer.0.weight, layer.0.bias, layer.1.weight, ... without gaps",
                layers.len()
            ))));
        }
        let file = Self { meta, layers };
        file.validate().map_err(FromBytes::Policy)?;
        Ok(file)
    }

    /// Checks that the policy is consistent in itself, so that every observation gives a `k` in
    /// `0..=n_layers`.
    pub fn validate(&self) -> Result<(), PolicyFileError> {
        let m = &self.meta;
        if m.format != FORMAT {
            return Err(invalid(format!("format \"{}\" is not \"{FORMAT}\", the one this agent reads", m.format)));
        }
        if m.n_layers == 0 {
            return Err(invalid("n_layers is 0; a model has at least one decoder layer".into()));
        }
        if m.features.is_empty() {
            return Err(invalid(format!("the policy has no features; the agent can observe {}", KNOWN_FEATURES.join(", "))));
        }
        for (i, f) in m.features.iter().enumerate() {
            if !KNOWN_FEATURES.contains(&f.as_str()) {
                return Err(invalid(format!("unknown feature \"{f}\"; the agent can observe {}", KNOWN_FEATURES.join(", "))));
            }
            if m.features[..i].contains(f) {
                return Err(invalid(format!("feature \"{f}\" appears twice")));
            }
        }
        let n = m.features.len();
        for (name, v) in [("lower", &m.lower), ("upper", &m.upper), ("mean", &m.mean), ("std", &m.std)] {
            if v.len() != n {
                return Err(invalid(format!("{name} has {} values but the policy has {n} features", v.len())));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(invalid(format!("{name} of {} is {}; bounds and normalisation must be finite", m.features[i], v[i])));
            }
        }
        for i in 0..n {
            let f = &m.features[i];
            if m.std[i] <= 0.0 {
                return Err(invalid(format!("std of {f} is {}; it must be > 0", m.std[i])));
            }
            if m.lower[i] > m.upper[i] {
                return Err(invalid(format!("lower {} of {f} is above its upper {}", m.lower[i], m.upper[i])));
            }
        }
        if !ACTIVATIONS.contains(&m.activation.as_str()) {
            return Err(invalid(format!("unknown activation \"{}\"; known: {}", m.activation, ACTIVATIONS.join(", "))));
        }
        if self.layers.is_empty() {
            return Err(invalid("the policy has no layers".into()));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let (wanted, from) = match i {
                0 => (n, format!("the policy has {n} features")),
                _ => (self.layers[i - 1].outputs, format!("layer {} gives {}", i - 1, self.layers[i - 1].outputs)),
            };
            if l.inputs != wanted {
                return Err(invalid(format!("layer {i} takes {} inputs but {from}", l.inputs)));
            }
            if l.outputs == 0 {
                return Err(invalid(format!("layer {i} has no outputs")));
            }
            if l.weight.len() != l.outputs * l.inputs {
                return Err(invalid(format!("layer {i} has {} weights; {} outputs × {} inputs needs {}", l.weight.len(), l.outputs, l.inputs, l.outputs * l.inputs)));
            }
            if l.bias.len() != l.outputs {
                return Err(invalid(format!("layer {i} has {} biases for {} outputs", l.bias.len(), l.outputs)));
            }
            if l.weight.iter().chain(&l.bias).any(|x| !x.is_finite()) {
                return Err(invalid(format!("layer {i} has a weight or bias that is not finite (NaN or infinite)")));
            }
        }
        let last = self.layers.len() - 1;
        let outputs = self.layers[last].outputs;
        if outputs != m.n_layers as usize + 1 {
            return Err(invalid(format!(
                "the last layer (layer {last}) gives {outputs} outputs but a model of {} layers needs {} (one per k in 0..={})",
                m.n_layers,
                m.n_layers + 1,
                m.n_layers
            )));
        }
        Ok(())
    }

    /// Refuses a policy trained for another model, or for another layer count, than the deployed
    /// `model` with `n_layers` decoder layers.
    pub fn check_deployment(&self, model: &str, n_layers: u32) -> Result<(), PolicyFileError> {
        let mismatch = |what| Err(PolicyFileError::Mismatch { path: None, what });
        if self.meta.model != model {
            return mismatch(format!("was trained for {} but this agent serves {model} (--model)", self.meta.model));
        }
        if self.meta.n_layers != n_layers {
            return mismatch(format!(
                "was trained for {} with {} layers but the deployed model has {n_layers} layers (--n-layers or the edge)",
                self.meta.model, self.meta.n_layers
            ));
        }
        Ok(())
    }

    /// The network's input for `obs` with `current_k` in force, before clamping: one value per
    /// feature, in order. A clean link (infinite SNR) and no fading (m = 0, the limit m → ∞) map
    /// to the feature's `upper`; `prev_k` is 0 before the first decision.
    pub fn raw_features(&self, obs: &Observation, current_k: Option<u32>) -> Vec<f32> {
        let m = &self.meta;
        m.features
            .iter()
            .enumerate()
            .map(|(i, f)| match f.as_str() {
                "snr_db" if obs.snr_db == f64::INFINITY => m.upper[i],
                "snr_db" => obs.snr_db as f32,
                "fading_m" if obs.fading_m <= 0.0 => m.upper[i],
                "fading_m" => obs.fading_m as f32,
                "erasure_p" => obs.erasure_rate as f32,
                "loss_rate" => obs.loss_rate as f32,
                "prev_k" => current_k.unwrap_or(0) as f32,
                // validate() refuses unknown features.
                _ => unreachable!("unknown feature {f:?} in a validated policy"),
            })
            .collect()
    }

    /// Clamps each raw value to `[lower, upper]`, then `(x - mean) / std`. A NaN (which no
    /// `Observation` holds) counts as `lower`.
    pub fn normalize(&self, raw: &[f32]) -> Vec<f32> {
        let m = &self.meta;
        assert_eq!(raw.len(), m.features.len(), "one raw value per feature");
        // max/min rather than clamp: f32::max ignores a NaN operand, clamp would keep it.
        raw.iter().enumerate().map(|(i, &x)| (x.max(m.lower[i]).min(m.upper[i]) - m.mean[i]) / m.std[i]).collect()
    }

    /// The forward pass on a normalised input: one logit per `k = 0..=n_layers`.
    pub fn logits(&self, normalized: &[f32]) -> Vec<f32> {
        let relu = self.meta.activation == "relu";
        let last = self.layers.len() - 1;
        let mut x = normalized.to_vec();
        for (i, l) in self.layers.iter().enumerate() {
            assert_eq!(x.len(), l.inputs, "layer {i} input size");
            let mut y: Vec<f32> = l.weight.chunks_exact(l.inputs).zip(&l.bias).map(|(row, b)| b + row.iter().zip(&x).map(|(w, v)| w * v).sum::<f32>()).collect();
            if i < last {
                for v in &mut y {
                    *v = if relu { v.max(0.0) } else { v.tanh() };
                }
            }
            x = y;
        }
        x
    }

    /// The split for a raw input: argmax of the logits, the lowest `k` on a tie.
    pub fn choose(&self, raw: &[f32]) -> u32 {
        let logits = self.logits(&self.normalize(raw));
        let mut best = 0;
        for (k, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = k;
            }
        }
        best as u32
    }
}

/// `from_bytes` errors, before `load` names the file in them.
enum FromBytes {
    NotSafetensors(String),
    Metadata(String),
    Policy(PolicyFileError),
}

/// The learned policy: a [`PolicyFile`] asked once per observation. Stateless apart from what the
/// agent passes in (`prev_k`).
#[derive(Debug, Clone)]
pub struct Learned {
    file: PolicyFile,
    path: PathBuf,
}

impl Learned {
    /// Loads and validates `path`; [`Learned::check_deployment`] then checks it against the model.
    pub fn load(path: &Path) -> Result<Self, PolicyFileError> {
        Ok(Self { file: PolicyFile::load(path)?, path: path.into() })
    }

    /// [`PolicyFile::check_deployment`], naming this policy's file in the error.
    pub fn check_deployment(&self, model: &str, n_layers: u32) -> Result<(), PolicyFileError> {
        self.file.check_deployment(model, n_layers).map_err(|e| e.in_file(&self.path))
    }

    pub fn file(&self) -> &PolicyFile {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn num(v: f64) -> String {
    if v.is_infinite() { format!("{}inf", if v < 0.0 { "-" } else { "" }) } else { format!("{v:.1}") }
}

impl Policy for Learned {
    fn name(&self) -> &str {
        "learned"
    }

    fn params(&self) -> BTreeMap<String, String> {
        let m = &self.file.meta;
        let mut sizes = vec![m.features.len().to_string()];
        sizes.extend(self.file.layers.iter().map(|l| l.outputs.to_string()));
        BTreeMap::from([
            ("file".to_string(), self.path.display().to_string()),
            ("algorithm".to_string(), m.algorithm.clone()),
            ("model".to_string(), m.model.clone()),
            ("n_layers".to_string(), m.n_layers.to_string()),
            ("features".to_string(), m.features.join(",")),
            ("network".to_string(), format!("{} {}", sizes.join("→"), m.activation)),
            ("description".to_string(), m.description.clone()),
        ])
    }

    fn decide(&mut self, obs: &Observation, current_k: Option<u32>) -> Proposal {
        let k = self.file.choose(&self.file.raw_features(obs, current_k));
        // The observed values of the features the policy reads, before clamping.
        let inputs: Vec<String> = self
            .file
            .meta
            .features
            .iter()
            .map(|f| match f.as_str() {
                "snr_db" => format!("snr {} dB", num(obs.snr_db)),
                "fading_m" if obs.fading_m <= 0.0 => "no fading".into(),
                "fading_m" => format!("m {}", num(obs.fading_m)),
                "erasure_p" => format!("erasure {:.3}", obs.erasure_rate),
                "loss_rate" => format!("loss {:.3}", obs.loss_rate),
                _ => format!("prev k {}", current_k.map_or_else(|| "none".into(), |k| k.to_string())),
            })
            .collect();
        Proposal { k, reason: format!("learned({}): {} -> k {k}", self.file.meta.algorithm, inputs.join(", ")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unique scratch path (no file created).
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("splitinfer-agent-learned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn meta(features: &[&str], n_layers: u32) -> PolicyMeta {
        let n = features.len();
        PolicyMeta {
            format: FORMAT.into(),
            algorithm: "mb-ppo".into(),
            model: "smollm2-135m".into(),
            n_layers,
            features: features.iter().map(|f| f.to_string()).collect(),
            lower: vec![-10.0; n],
            upper: vec![30.0; n],
            mean: vec![10.0; n],
            std: vec![10.0; n],
            activation: "tanh".into(),
            description: "test".into(),
        }
    }

    /// 2 features (snr_db, loss_rate) → 3 hidden (relu) → 3 outputs (n_layers 2), weights chosen
    /// so the logits are easy to work out by hand.
    fn hand_made() -> PolicyFile {
        let mut meta = meta(&["snr_db", "loss_rate"], 2);
        meta.activation = "relu".into();
        meta.lower = vec![-10.0, 0.0];
        meta.upper = vec![30.0, 1.0];
        meta.mean = vec![10.0, 0.0];
        meta.std = vec![10.0, 0.5];
        PolicyFile {
            meta,
            layers: vec![
                Layer { inputs: 2, outputs: 3, weight: vec![1.0, 0.0, /**/ 0.0, 1.0, /**/ -1.0, -1.0], bias: vec![0.0, 0.0, 0.5] },
                Layer { inputs: 3, outputs: 3, weight: vec![1.0, 0.0, 0.0, /**/ 0.0, 1.0, 0.0, /**/ 0.0, 0.0, 1.0], bias: vec![0.0, 0.1, 0.2] },
            ],
        }
    }

    /// A policy of random-ish weights of the given shape (deterministic).
    fn sized(features: &[&str], hidden: &[usize], n_layers: u32) -> PolicyFile {
        let mut sizes = vec![features.len()];
        sizes.extend_from_slice(hidden);
        sizes.push(n_layers as usize + 1);
        let mut seed = 1u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let layers = sizes
            .windows(2)
            .map(|w| Layer { inputs: w[0], outputs: w[1], weight: (0..w[0] * w[1]).map(|_| next()).collect(), bias: (0..w[1]).map(|_| next()).collect() })
            .collect();
        PolicyFile { meta: meta(features, n_layers), layers }
    }

    fn saved(name: &str, p: &PolicyFile) -> PathBuf {
        let path = scratch(name);
        p.save(&path).unwrap();
        path
    }

    fn load_error(path: &Path) -> String {
        PolicyFile::load(path).unwrap_err().to_string()
    }

    /// A tensor for [`raw_file`]: name, shape, values.
    type Tensor = (&'static str, Vec<usize>, Vec<f32>);

    /// Writes a safetensors file by hand: the given tensors and metadata.
    fn raw_file(name: &str, tensors: &[Tensor], metadata: Option<(&str, &str)>) -> PathBuf {
        let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| le_bytes(v)).collect();
        let views: Vec<(&str, TensorView)> =
            tensors.iter().zip(&bytes).map(|((n, s, _), b)| (*n, TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
        let meta = metadata.map(|(k, v)| HashMap::from([(k.to_string(), v.to_string())]));
        let path = scratch(name);
        std::fs::write(&path, safetensors::serialize(views, meta).unwrap()).unwrap();
        path
    }

    #[test]
    fn save_then_load_gives_the_same_policy() {
        let p = sized(&["snr_db", "fading_m", "erasure_p", "loss_rate", "prev_k"], &[16, 8], 30);
        let mut p = p;
        p.meta.description = "reward α=0.7 β=0.3, run 12 \"quoted\"".into();
        p.meta.lower[0] = -1.0e-7;
        p.meta.mean[1] = 1.0 / 3.0;
        let path = saved("roundtrip.safetensors", &p);
        let back = PolicyFile::load(&path).unwrap();
        assert_eq!(back, p);
        // Saving again over the file replaces it.
        let q = sized(&["snr_db"], &[], 24);
        q.save(&path).unwrap();
        assert_eq!(PolicyFile::load(&path).unwrap(), q);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn the_forward_pass_gives_the_hand_computed_logits() {
        let p = hand_made();
        p.validate().unwrap();
        // snr 20 → (20-10)/10 = 1; loss 0.25 → 0.25/0.5 = 0.5.
        assert_eq!(p.normalize(&[20.0, 0.25]), [1.0, 0.5]);
        // Hidden: relu(1) = 1, relu(0.5) = 0.5, relu(-1.5+0.5) = 0; out: 1, 0.6, 0.2.
        assert_eq!(p.logits(&[1.0, 0.5]), [1.0, 0.6, 0.2]);
        assert_eq!(p.choose(&[20.0, 0.25]), 0);
        // snr -10 → -2, loss 0 → 0: hidden 0, 0, relu(2+0.5) = 2.5; out 0, 0.1, 2.7.
        assert_eq!(p.logits(&p.normalize(&[-10.0, 0.0])), [0.0, 0.1, 2.7]);
        assert_eq!(p.choose(&[-10.0, 0.0]), 2);
        // snr 10 → 0, loss 0.5 → 1: hidden 0, 1, 0; out 0, 1.1, 0.2.
        assert_eq!(p.choose(&[10.0, 0.5]), 1);

        let mut tanh = p.clone();
        tanh.meta.activation = "tanh".into();
        let l = tanh.logits(&[1.0, 0.5]);
        let want = [1f32.tanh(), 0.5f32.tanh() + 0.1, (-1.0f32).tanh() + 0.2];
        assert_eq!(l, want);
    }

    #[test]
    fn ties_go_to_the_lowest_k() {
        let mut p = hand_made();
        p.layers[1] = Layer { inputs: 3, outputs: 3, weight: vec![0.0; 9], bias: vec![0.3, 0.7, 0.7] };
        assert_eq!(p.choose(&[0.0, 0.0]), 1);
        p.layers[1].bias = vec![0.5; 3];
        assert_eq!(p.choose(&[0.0, 0.0]), 0);
    }

    #[test]
    fn raw_values_are_clamped_then_normalised() {
        let mut p = sized(&["snr_db", "fading_m", "erasure_p", "loss_rate", "prev_k"], &[4], 30);
        p.meta.lower = vec![-5.0, 0.5, 0.0, 0.0, 0.0];
        p.meta.upper = vec![25.0, 10.0, 0.5, 0.4, 30.0];
        p.meta.mean = vec![10.0, 2.0, 0.1, 0.1, 15.0];
        p.meta.std = vec![5.0, 2.0, 0.1, 0.1, 10.0];
        p.validate().unwrap();

        let mut obs = Observation::with(12.5, 0.3);
        obs.fading_m = 1.5;
        obs.erasure_rate = 0.05;
        assert_eq!(p.raw_features(&obs, Some(12)), [12.5, 1.5, 0.05, 0.3, 12.0]);
        assert_eq!(p.raw_features(&obs, None)[4], 0.0, "prev_k is 0 before the first decision");

        // A clean link: infinite SNR and no fading (m = 0) are the best channel, the upper bounds.
        let clean = Observation { snr_db: f64::INFINITY, fading_m: 0.0, ..Observation::with(0.0, 0.0) };
        assert_eq!(p.raw_features(&clean, Some(1)), [25.0, 10.0, 0.0, 0.0, 1.0]);

        let n = p.normalize(&[12.5, 1.5, 0.05, 0.3, 12.0]);
        let want = [0.5, -0.25, -0.5, 2.0, -0.3];
        assert!(n.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{n:?}");
        // Out of range: clamped first (snr 40 → 25 → 3, m 0.1 → 0.5 → -0.75, loss 0.9 → 0.4 → 3,
        // prev_k 99 → 30 → 1.5); NaN counts as lower.
        let n = p.normalize(&[40.0, 0.1, f32::NAN, 0.9, 99.0]);
        let want = [3.0, -0.75, -1.0, 3.0, 1.5];
        assert!(n.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{n:?}");
        assert_eq!(p.normalize(&[f32::INFINITY, f32::NEG_INFINITY, 0.1, 0.1, 15.0])[..2], [3.0, -0.75]);
    }

    #[test]
    fn as_a_policy_it_proposes_the_argmax_with_its_inputs_in_the_reason() {
        let path = saved("policy.safetensors", &hand_made());
        let mut l = Learned::load(&path).unwrap();
        l.check_deployment("smollm2-135m", 2).unwrap();
        assert_eq!(l.name(), "learned");
        let p = l.decide(&Observation::with(-3.0, 0.0), None);
        assert_eq!(p, Proposal { k: 2, reason: "learned(mb-ppo): snr -3.0 dB, loss 0.000 -> k 2".into() });
        assert_eq!(l.decide(&Observation::with(f64::INFINITY, 0.0), Some(2)).reason, "learned(mb-ppo): snr inf dB, loss 0.000 -> k 0");
        let params = l.params();
        assert_eq!(params["file"], path.display().to_string());
        assert_eq!((params["algorithm"].as_str(), params["model"].as_str(), params["features"].as_str()), ("mb-ppo", "smollm2-135m", "snr_db,loss_rate"));
        assert_eq!((params["network"].as_str(), params["n_layers"].as_str(), params["description"].as_str()), ("2→3→3 relu", "2", "test"));

        let mut all = Learned { file: sized(&["fading_m", "erasure_p", "prev_k"], &[], 3), path };
        let mut obs = Observation::with(1.0, 0.0);
        obs.fading_m = 2.5;
        obs.erasure_rate = 0.125;
        let r = all.decide(&obs, Some(3)).reason;
        assert!(r.starts_with("learned(mb-ppo): m 2.5, erasure 0.125, prev k 3 -> k "), "{r}");
        obs.fading_m = 0.0;
        assert!(all.decide(&obs, None).reason.contains("no fading, erasure 0.125, prev k none -> k "));
    }

    #[test]
    fn a_missing_file_is_named() {
        let path = scratch("absent.safetensors");
        let e = load_error(&path);
        assert_eq!(e, format!("cannot read policy file {}: No such file or directory (os error 2)", path.display()));
    }

    #[test]
    fn corrupt_and_truncated_files_are_not_safetensors() {
        let bytes = std::fs::read(saved("whole.safetensors", &hand_made())).unwrap();
        let cases: [(&str, Vec<u8>, &str); 4] = [
            ("empty", vec![], "header too small"),
            ("text", b"min_snr_db,max_loss_rate,k\n-inf,1,24\n".to_vec(), "header too large"),
            ("cut", bytes[..bytes.len() - 5].to_vec(), "incomplete metadata"),
            ("header-cut", bytes[..40].to_vec(), "invalid header length"),
        ];
        for (name, content, reason) in cases {
            let path = scratch(name);
            std::fs::write(&path, content).unwrap();
            let e = load_error(&path);
            let want = format!("policy file {} is not a safetensors file or is truncated: ", path.display());
            assert!(e.starts_with(&want) && e.contains(reason), "{name}: {e}");
        }
        let mut garbled = bytes.clone();
        garbled[8] = b'[';
        let path = scratch("garbled");
        std::fs::write(&path, garbled).unwrap();
        assert!(load_error(&path).contains("is not a safetensors file or is truncated: invalid JSON in header"), "{}", load_error(&path));
    }

    #[test]
    fn a_safetensors_file_without_policy_metadata_is_refused() {
        let tensors = [("layer.0.weight", vec![3, 1], vec![1.0, 2.0, 3.0]), ("layer.0.bias", vec![3], vec![0.0; 3])];
        let path = raw_file("nometa", &tensors, None);
        assert_eq!(
            load_error(&path),
            format!(
                "policy file {}: no \"splitinfer\" key in the safetensors metadata; not a splitinfer policy (policies are written by PolicyFile::save)",
                path.display()
            )
        );
        let path = raw_file("othermeta", &tensors, Some(("format", "pt")));
        assert!(load_error(&path).contains("no \"splitinfer\" key"));
        let path = raw_file("garbage", &tensors, Some(("splitinfer", "{not json")));
        assert!(load_error(&path).starts_with(&format!("policy file {}: the \"splitinfer\" metadata is not JSON: ", path.display())), "{}", load_error(&path));
        let path = raw_file("fields", &tensors, Some(("splitinfer", r#"{"format":"splitinfer-policy/1","algorithm":"dqn"}"#)));
        let e = load_error(&path);
        assert!(e.starts_with(&format!("policy file {}: the \"splitinfer\" metadata is not a policy description: missing field `model`", path.display())), "{e}");
    }

    #[test]
    fn another_format_version_is_refused_before_its_fields_are_read() {
        let tensors = [("layer.0.weight", vec![3, 1], vec![1.0, 2.0, 3.0]), ("layer.0.bias", vec![3], vec![0.0; 3])];
        let path = raw_file("v2", &tensors, Some(("splitinfer", r#"{"format":"splitinfer-policy/2","inputs":{}}"#)));
        assert_eq!(load_error(&path), format!("policy file {}: format \"splitinfer-policy/2\" is not \"splitinfer-policy/1\", the one this agent reads", path.display()));
        let mut p = hand_made();
        p.meta.format = "splitinfer-policy/0".into();
        assert_eq!(p.validate().unwrap_err().to_string(), "policy: format \"splitinfer-policy/0\" is not \"splitinfer-policy/1\", the one this agent reads");
    }

    #[test]
    fn an_inconsistent_policy_is_refused_by_validate_save_and_load() {
        let base = hand_made();
        type Breakage = Box<dyn Fn(&mut PolicyFile)>;
        let cases: Vec<(Breakage, &str)> = vec![
            (Box::new(|p| p.meta.features[1] = "rssi".into()), "unknown feature \"rssi\"; the agent can observe snr_db, fading_m, erasure_p, loss_rate, prev_k"),
            (Box::new(|p| p.meta.features[1] = "snr_db".into()), "feature \"snr_db\" appears twice"),
            (
                Box::new(|p| {
                    p.meta.features.push("prev_k".into());
                    for v in [&mut p.meta.lower, &mut p.meta.upper, &mut p.meta.mean, &mut p.meta.std] {
                        v.push(1.0);
                    }
                }),
                "layer 0 takes 2 inputs but the policy has 3 features",
            ),
            (Box::new(|p| p.layers[1] = Layer { inputs: 2, outputs: 3, weight: vec![0.0; 6], bias: vec![0.0; 3] }), "layer 1 takes 2 inputs but layer 0 gives 3"),
            (Box::new(|p| p.meta.n_layers = 30), "the last layer (layer 1) gives 3 outputs but a model of 30 layers needs 31 (one per k in 0..=30)"),
            (Box::new(|p| p.meta.mean.truncate(1)), "mean has 1 values but the policy has 2 features"),
            (Box::new(|p| p.meta.std[1] = 0.0), "std of loss_rate is 0; it must be > 0"),
            (Box::new(|p| p.meta.lower[0] = 40.0), "lower 40 of snr_db is above its upper 30"),
            (Box::new(|p| p.meta.upper[0] = f32::INFINITY), "upper of snr_db is inf; bounds and normalisation must be finite"),
            (Box::new(|p| p.layers[0].weight[3] = f32::NAN), "layer 0 has a weight or bias that is not finite (NaN or infinite)"),
            (Box::new(|p| p.layers[0].weight.truncate(5)), "layer 0 has 5 weights; 3 outputs × 2 inputs needs 6"),
            (Box::new(|p| p.layers[1].bias.push(0.0)), "layer 1 has 4 biases for 3 outputs"),
            (Box::new(|p| p.meta.activation = "gelu".into()), "unknown activation \"gelu\"; known: tanh, relu"),
            (Box::new(|p| p.meta.n_layers = 0), "n_layers is 0; a model has at least one decoder layer"),
            (Box::new(|p| p.layers.clear()), "the policy has no layers"),
        ];
        for (i, (break_it, what)) in cases.iter().enumerate() {
            let mut p = base.clone();
            break_it(&mut p);
            assert_eq!(p.validate().unwrap_err().to_string(), format!("policy: {what}"));
            let path = scratch(&format!("bad-{i}.safetensors"));
            assert_eq!(p.save(&path).unwrap_err().to_string(), format!("policy file {}: {what}", path.display()));
            assert!(!path.exists(), "save wrote an invalid policy");
        }
    }

    #[test]
    fn a_file_with_the_wrong_shapes_is_refused_on_load() {
        let meta = serde_json::to_string(&hand_made().meta).unwrap();
        let meta = Some(("splitinfer", meta.as_str()));
        let ok0 = ("layer.0.weight", vec![3, 2], vec![0.0; 6]);
        let ok0b = ("layer.0.bias", vec![3], vec![0.0; 3]);
        let ok1b = ("layer.1.bias", vec![3], vec![0.0; 3]);
        let cases: [(&str, Vec<Tensor>, &str); 5] = [
            ("three-in", vec![("layer.0.weight", vec![3, 3], vec![0.0; 9]), ok0b.clone(), ("layer.1.weight", vec![3, 3], vec![0.0; 9]), ok1b.clone()], "layer 0 takes 3 inputs but the policy has 2 features"),
            ("wide-out", vec![ok0.clone(), ok0b.clone(), ("layer.1.weight", vec![31, 3], vec![0.0; 93]), ("layer.1.bias", vec![31], vec![0.0; 31])], "the last layer (layer 1) gives 31 outputs but a model of 2 layers needs 3"),
            ("no-bias", vec![ok0.clone(), ok0b.clone(), ("layer.1.weight", vec![3, 3], vec![0.0; 9])], "tensor layer.1.bias is missing"),
            ("gap", vec![ok0.clone(), ok0b.clone(), ("layer.2.weight", vec![3, 3], vec![0.0; 9]), ("layer.2.bias", vec![3], vec![0.0; 3])], "unexpected tensors [\"layer.2.bias\", \"layer.2.weight\"] after 1 layers"),
            ("flat", vec![("layer.0.weight", vec![6], vec![0.0; 6]), ok0b.clone()], "layer 0: weight shape [6] and bias shape [3]; expected [outputs, inputs] and [outputs]"),
        ];
        for (name, tensors, what) in cases {
            let path = raw_file(name, &tensors, meta);
            let e = load_error(&path);
            assert!(e.starts_with(&format!("policy file {}: {what}", path.display())), "{name}: {e}");
        }
    }

    #[test]
    fn another_model_or_layer_count_is_refused_naming_both() {
        let mut p = sized(&["snr_db"], &[4], 24);
        p.meta.model = "qwen2.5-coder-0.5b".into();
        p.check_deployment("qwen2.5-coder-0.5b", 24).unwrap();
        assert_eq!(
            p.check_deployment("smollm2-135m", 30).unwrap_err().to_string(),
            "policy was trained for qwen2.5-coder-0.5b but this agent serves smollm2-135m (--model)"
        );
        assert_eq!(
            p.check_deployment("qwen2.5-coder-0.5b", 30).unwrap_err().to_string(),
            "policy was trained for qwen2.5-coder-0.5b with 24 layers but the deployed model has 30 layers (--n-layers or the edge)"
        );
        let path = saved("qwen.safetensors", &p);
        let e = Learned::load(&path).unwrap().check_deployment("smollm2-135m", 30).unwrap_err().to_string();
        assert_eq!(e, format!("policy file {} was trained for qwen2.5-coder-0.5b but this agent serves smollm2-135m (--model)", path.display()));
    }
}
