//! The session protocol's messages as domain values: what the UE and the edge say to each other on
//! a generation stream (`splitinfer.v1.Edge/Generate`, docs/protocol.md). Both ends use these.
//! A message is checked once, where it enters a program (`TryFrom` the generated type), and turned
//! back into the generated type where it leaves (`From`); nothing past the service boundary sees
//! a generated type. What only the receiver can check (the model's identity and depth, the
//! session's position) is checked there.
//!
//! - UE → edge: [`Open`], then [`Step`]s (an activation: a prefill chunk, a decode step or a
//!   scoring window) and [`Migrate`]s (a live split change).
//! - Edge → UE: [`Opened`], then a [`Token`] per completed step and a [`Migrated`] per split change.
//!
//! Times are stamped by whoever measured them: the UE its compute, the edge its queue and
//! compute, the channel emulator the air time it held each direction for.

use std::time::Duration;

use splitinfer_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::migrate::Method;
use crate::sampling::SamplingConfig;
use crate::split::Split;
use crate::transform::LinkSetup;
use crate::wire::{WireDType, WireTensor};

/// The longest strings an [`Open`] may carry, in bytes.
const MAX_CLIENT_BYTES: usize = 256;
const MAX_SHA256_BYTES: usize = 64;
const MAX_SESSION_ID_BYTES: usize = 64;

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

/// A session's first message: what to run, where the split is, and how the link is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    pub model_sha256: String,
    pub split: Split,
    pub sampling: SamplingConfig,
    pub max_new_tokens: usize,
    pub prompt_tokens: usize,
    /// Generation goes on past end-of-sequence tokens until `max_new_tokens`.
    pub ignore_eos: bool,
    pub client: String,
    /// A broken session to take up again, with the secret its [`Opened`] carried.
    pub resume: Option<Resume>,
    /// Normalization and concealment; the dtype comes with each activation, so it reads f32 here.
    pub link: LinkSetup,
    /// The calibration file the UE normalizes with; the edge must hold the same one.
    pub calibration_sha256: String,
    /// Teacher-forced scoring windows instead of generation.
    pub scoring: bool,
}

/// Which session a resume takes up, and the proof that it is the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub session_id: String,
    pub secret: String,
}

impl TryFrom<pb::Open> for Open {
    type Error = Error;

    fn try_from(o: pb::Open) -> Result<Self> {
        for (field, value, max) in [
            ("client", &o.client, MAX_CLIENT_BYTES),
            ("calibration_sha256", &o.calibration_sha256, MAX_SHA256_BYTES),
            ("resume_secret", &o.resume_secret, MAX_SHA256_BYTES),
            ("resume_session_id", &o.resume_session_id, MAX_SESSION_ID_BYTES),
        ] {
            if value.len() > max {
                return Err(invalid(format!("open: {field} is {} bytes; at most {max}", value.len())));
            }
        }
        let split = o.split.ok_or_else(|| invalid("open carries no split"))?;
        let sampling = o.sampling.map(SamplingConfig::try_from).transpose()?.unwrap_or(SamplingConfig::GREEDY);
        let resume = (!o.resume_session_id.is_empty()).then_some(Resume { session_id: o.resume_session_id, secret: o.resume_secret });
        Ok(Self {
            model_sha256: o.model_sha256,
            split: split.into(),
            sampling,
            max_new_tokens: o.max_new_tokens as usize,
            prompt_tokens: o.prompt_tokens as usize,
            ignore_eos: o.ignore_eos,
            client: o.client,
            resume,
            link: LinkSetup::from_open(WireDType::F32, o.normalization, o.concealment)?,
            calibration_sha256: o.calibration_sha256,
            scoring: o.scoring,
        })
    }
}

impl From<Open> for pb::Open {
    fn from(o: Open) -> Self {
        let (resume_session_id, resume_secret) = o.resume.map(|r| (r.session_id, r.secret)).unwrap_or_default();
        Self {
            model_sha256: o.model_sha256,
            split: Some(o.split.into()),
            sampling: Some(o.sampling.into()),
            max_new_tokens: o.max_new_tokens.try_into().unwrap_or(u32::MAX),
            prompt_tokens: o.prompt_tokens.try_into().unwrap_or(u32::MAX),
            client: o.client,
            resume_session_id,
            ignore_eos: o.ignore_eos,
            normalization: pb::Normalization::from(o.link.normalization) as i32,
            concealment: pb::Concealment::from(o.link.concealment) as i32,
            calibration_sha256: o.calibration_sha256,
            resume_secret,
            scoring: o.scoring,
        }
    }
}

/// The edge's answer to an [`Open`]: the session and where it stands (0 for a new one).
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub session_id: String,
    pub n_layers: usize,
    pub hidden_size: usize,
    /// Positions the edge has completed; a resume resends from here.
    pub position: usize,
    /// What a resume of this session must present.
    pub resume_secret: String,
    /// On a resume: the token of the last completed step, in case the broken stream lost it.
    pub last_token: Option<Token>,
    pub scoring: bool,
}

impl TryFrom<pb::Opened> for Opened {
    type Error = Error;

    fn try_from(o: pb::Opened) -> Result<Self> {
        Ok(Self {
            session_id: o.session_id,
            n_layers: o.n_layers as usize,
            hidden_size: o.hidden_size as usize,
            position: usize::try_from(o.position).map_err(|_| invalid(format!("opened at position {}", o.position)))?,
            resume_secret: o.resume_secret,
            last_token: o.last_token.map(Token::try_from).transpose()?,
            scoring: o.scoring,
        })
    }
}

impl From<Opened> for pb::Opened {
    fn from(o: Opened) -> Self {
        Self {
            session_id: o.session_id,
            n_layers: o.n_layers as u32,
            hidden_size: o.hidden_size as u32,
            position: o.position as u64,
            resume_secret: o.resume_secret,
            last_token: o.last_token.map(Into::into),
            scoring: o.scoring,
        }
    }
}

/// One activation: the hidden state after the UE's layers for the rows starting at `position`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub position: usize,
    /// The split the UE computed this activation at.
    pub split: Split,
    pub hidden: WireTensor,
    /// One bit per element the channel erased (LSB first), for concealment; empty: none.
    pub erased: Vec<u8>,
    /// The UE's compute for these rows (its own clock).
    pub ue_compute: Duration,
    /// A scoring window's next-token targets, one per scored row (empty when generating).
    pub targets: Vec<u32>,
    /// The first row of the window that is scored.
    pub first_scored_row: usize,
}

impl Step {
    /// A generation step (no targets).
    pub fn generate(position: usize, split: Split, hidden: WireTensor, ue_compute: Duration) -> Self {
        Self { position, split, hidden, erased: Vec::new(), ue_compute, targets: Vec::new(), first_scored_row: 0 }
    }
}

impl TryFrom<pb::Activation> for Step {
    type Error = Error;

    fn try_from(a: pb::Activation) -> Result<Self> {
        let split = a.split.ok_or_else(|| invalid("activation carries no split"))?;
        let hidden = a.hidden.ok_or_else(|| invalid("activation carries no hidden state"))?;
        Ok(Self {
            position: usize::try_from(a.position).map_err(|_| invalid(format!("activation at position {}", a.position)))?,
            split: split.into(),
            hidden: WireTensor::try_from(hidden)?,
            erased: a.erased.to_vec(),
            ue_compute: Duration::from_micros(a.ue_compute_us),
            targets: a.targets,
            first_scored_row: a.first_scored_row as usize,
        })
    }
}

impl From<Step> for pb::Activation {
    fn from(s: Step) -> Self {
        Self {
            position: s.position as u64,
            split: Some(s.split.into()),
            hidden: Some(s.hidden.into()),
            ue_compute_us: micros(s.ue_compute),
            erased: s.erased.into(),
            targets: s.targets,
            first_scored_row: s.first_scored_row.try_into().unwrap_or(u32::MAX),
            // The channel emulator, which holds the message, stamps the air time and the mask.
            ..Default::default()
        }
    }
}

/// The keys and values of one layer, every position, on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerEntries {
    pub layer: usize,
    pub k: WireTensor,
    pub v: WireTensor,
}

impl TryFrom<pb::LayerKv> for LayerEntries {
    type Error = Error;

    fn try_from(e: pb::LayerKv) -> Result<Self> {
        let k = e.k.ok_or_else(|| invalid(format!("entries of layer {} carry no keys", e.layer)))?;
        let v = e.v.ok_or_else(|| invalid(format!("entries of layer {} carry no values", e.layer)))?;
        let entries = Self { layer: e.layer as usize, k: WireTensor::try_from(k)?, v: WireTensor::try_from(v)? };
        // Non-finite values would poison the caches (and every later token) without an error.
        finite(&entries.k, &format!("keys of layer {}", e.layer))?;
        finite(&entries.v, &format!("values of layer {}", e.layer))?;
        Ok(entries)
    }
}

impl From<LayerEntries> for pb::LayerKv {
    fn from(e: LayerEntries) -> Self {
        Self { layer: e.layer as u32, k: Some(e.k.into()), v: Some(e.v.into()) }
    }
}

/// Refuses a moved tensor with a NaN or infinite element.
fn finite(t: &WireTensor, what: &str) -> Result<()> {
    match t.to_f32_vec().iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((i, v)) => Err(invalid(format!("migrate: {what} hold a non-finite value {v} at element {i}"))),
        None => Ok(()),
    }
}

/// The boundary hidden states a recompute replays, in the row chunks they were first computed in.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub states: WireTensor,
    pub chunks: Vec<usize>,
}

/// A live split change at a token boundary (see [`crate::migrate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Migrate {
    pub from: Split,
    pub to: Split,
    pub position: usize,
    pub method: Method,
    /// TRANSFER toward the edge: the moved layers' entries.
    pub kv: Vec<LayerEntries>,
    /// RECOMPUTE toward the edge: what the edge replays through the layers it takes.
    pub replay: Option<Replay>,
    pub ue_compute: Duration,
}

impl TryFrom<pb::Migrate> for Migrate {
    type Error = Error;

    fn try_from(m: pb::Migrate) -> Result<Self> {
        let from = m.from.ok_or_else(|| invalid("migrate carries no from split"))?;
        let to = m.to.ok_or_else(|| invalid("migrate carries no to split"))?;
        let method = match pb::Migration::try_from(m.method) {
            Ok(pb::Migration::Transfer) => Method::Transfer,
            Ok(pb::Migration::Recompute) => Method::Recompute,
            _ => return Err(invalid(format!("migrate names no known method ({})", m.method))),
        };
        let kv = m.kv.into_iter().map(LayerEntries::try_from).collect::<Result<Vec<_>>>()?;
        let replay = match m.replay {
            Some(t) => {
                let states = WireTensor::try_from(t)?;
                finite(&states, "replay states")?;
                Some(Replay { states, chunks: m.replay_chunks.iter().map(|&c| c as usize).collect() })
            }
            None => None,
        };
        Ok(Self {
            from: from.into(),
            to: to.into(),
            position: usize::try_from(m.position).map_err(|_| invalid(format!("migrate at position {}", m.position)))?,
            method,
            kv,
            replay,
            ue_compute: Duration::from_micros(m.ue_compute_us),
        })
    }
}

impl From<Migrate> for pb::Migrate {
    fn from(m: Migrate) -> Self {
        let (replay, replay_chunks) = match m.replay {
            Some(r) => (Some(r.states.into()), r.chunks.into_iter().map(|c| c as u32).collect()),
            None => (None, Vec::new()),
        };
        Self {
            from: Some(m.from.into()),
            to: Some(m.to.into()),
            position: m.position as u64,
            method: match m.method {
                Method::Transfer => pb::Migration::Transfer,
                Method::Recompute => pb::Migration::Recompute,
            } as i32,
            kv: m.kv.into_iter().map(Into::into).collect(),
            replay,
            replay_chunks,
            ue_compute_us: micros(m.ue_compute),
        }
    }
}

/// The edge's answer to a [`Migrate`]: the split now in force and, for a transfer toward the UE,
/// the entries of the layers the UE takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Migrated {
    pub split: Split,
    pub position: usize,
    pub kv: Vec<LayerEntries>,
    pub edge_compute: Duration,
}

impl TryFrom<pb::Migrated> for Migrated {
    type Error = Error;

    fn try_from(m: pb::Migrated) -> Result<Self> {
        Ok(Self {
            split: m.split.ok_or_else(|| invalid("migrated carries no split"))?.into(),
            position: usize::try_from(m.position).map_err(|_| invalid(format!("migrated at position {}", m.position)))?,
            kv: m.kv.into_iter().map(LayerEntries::try_from).collect::<Result<Vec<_>>>()?,
            edge_compute: Duration::from_micros(m.edge_compute_us),
        })
    }
}

impl From<Migrated> for pb::Migrated {
    fn from(m: Migrated) -> Self {
        Self {
            split: Some(m.split.into()),
            position: m.position as u64,
            kv: m.kv.into_iter().map(Into::into).collect(),
            edge_compute_us: micros(m.edge_compute),
        }
    }
}

impl From<Open> for pb::ue_message::Kind {
    fn from(o: Open) -> Self {
        Self::Open(o.into())
    }
}

impl From<Step> for pb::ue_message::Kind {
    fn from(s: Step) -> Self {
        Self::Activation(s.into())
    }
}

impl From<Migrate> for pb::ue_message::Kind {
    fn from(m: Migrate) -> Self {
        Self::Migrate(m.into())
    }
}

/// The token a completed step produced, with where its time went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Token {
    /// Position after the step (the exclusive end of the rows it consumed).
    pub position: usize,
    pub id: u32,
    pub logprob: f32,
    pub eos: bool,
    /// How many sessions' steps shared the forward pass that produced it (1 if alone).
    pub batch: usize,
    /// Stamped by the edge.
    pub edge_queue: Duration,
    pub edge_compute: Duration,
    /// Stamped by the channel emulator (zero without one).
    pub uplink_delay: Duration,
    pub downlink_delay: Duration,
}

impl TryFrom<pb::Token> for Token {
    type Error = Error;

    fn try_from(t: pb::Token) -> Result<Self> {
        Ok(Self {
            position: usize::try_from(t.position).map_err(|_| invalid(format!("token at position {}", t.position)))?,
            id: t.id,
            logprob: t.logprob,
            eos: t.eos,
            batch: (t.batch as usize).max(1),
            edge_queue: Duration::from_micros(t.edge_queue_us),
            edge_compute: Duration::from_micros(t.edge_compute_us),
            uplink_delay: Duration::from_micros(t.uplink_delay_us),
            downlink_delay: Duration::from_micros(t.downlink_delay_us),
        })
    }
}

impl From<Token> for pb::Token {
    fn from(t: Token) -> Self {
        Self {
            position: t.position as u64,
            id: t.id,
            logprob: t.logprob,
            edge_queue_us: micros(t.edge_queue),
            edge_compute_us: micros(t.edge_compute),
            eos: t.eos,
            uplink_delay_us: micros(t.uplink_delay),
            downlink_delay_us: micros(t.downlink_delay),
            batch: t.batch.try_into().unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::Epoch;
    use crate::transform::{Concealment, Normalization};

    fn tensor(values: &[f32]) -> WireTensor {
        WireTensor::from_f32(WireDType::F32, vec![1, 1, values.len()], values).unwrap()
    }

    #[test]
    fn every_message_round_trips_through_its_generated_type() {
        let split = Split { k: 7, epoch: Epoch(3) };
        let open = Open {
            model_sha256: "ab".repeat(32),
            split,
            sampling: SamplingConfig { temperature: 0.7, top_k: Some(40), top_p: Some(0.9), seed: 5 },
            max_new_tokens: 64,
            prompt_tokens: 12,
            ignore_eos: true,
            client: "test".into(),
            resume: Some(Resume { session_id: "s-1".into(), secret: "c".repeat(32) }),
            link: LinkSetup { dtype: WireDType::F32, normalization: Normalization::Standardize, concealment: Concealment::Mean },
            calibration_sha256: "cd".repeat(32),
            scoring: false,
        };
        assert_eq!(Open::try_from(pb::Open::from(open.clone())).unwrap(), open);

        let token = Token {
            position: 13,
            id: 42,
            logprob: -1.5,
            eos: false,
            batch: 3,
            edge_queue: Duration::from_micros(11),
            edge_compute: Duration::from_micros(900),
            uplink_delay: Duration::from_micros(1_050),
            downlink_delay: Duration::from_micros(1_000),
        };
        assert_eq!(Token::try_from(pb::Token::from(token)).unwrap(), token);
        let opened = Opened { session_id: "s-1".into(), n_layers: 30, hidden_size: 576, position: 13, resume_secret: "x".into(), last_token: Some(token), scoring: false };
        assert_eq!(Opened::try_from(pb::Opened::from(opened.clone())).unwrap(), opened);

        let step = Step { erased: vec![0b101], targets: vec![1, 2], first_scored_row: 1, ..Step::generate(12, split, tensor(&[1.0, -2.0]), Duration::from_micros(640)) };
        assert_eq!(Step::try_from(pb::Activation::from(step.clone())).unwrap(), step);

        let entries = LayerEntries { layer: 7, k: tensor(&[0.5]), v: tensor(&[-0.5]) };
        let migrate = Migrate {
            from: split,
            to: Split { k: 9, epoch: Epoch(4) },
            position: 13,
            method: Method::Recompute,
            kv: vec![entries.clone()],
            replay: Some(Replay { states: tensor(&[1.0, 2.0, 3.0]), chunks: vec![1] }),
            ue_compute: Duration::from_micros(77),
        };
        assert_eq!(Migrate::try_from(pb::Migrate::from(migrate.clone())).unwrap(), migrate);
        let migrated = Migrated { split, position: 13, kv: vec![entries], edge_compute: Duration::from_micros(5) };
        assert_eq!(Migrated::try_from(pb::Migrated::from(migrated.clone())).unwrap(), migrated);
    }

    #[test]
    fn a_missing_or_malformed_field_is_refused_by_name() {
        let err = |r: Result<_>| -> String { r.map(|_: ()| ()).unwrap_err().to_string() };
        let e = err(Open::try_from(pb::Open::default()).map(drop));
        assert!(e.contains("open carries no split"), "{e}");
        let long = pb::Open { client: "x".repeat(300), split: Some(pb::Split::default()), ..Default::default() };
        let e = err(Open::try_from(long).map(drop));
        assert!(e.contains("client is 300 bytes; at most 256"), "{e}");
        let e = err(Open::try_from(pb::Open { split: Some(pb::Split::default()), normalization: 9, ..Default::default() }).map(drop));
        assert!(e.contains("normalization 9"), "{e}");

        let e = err(Step::try_from(pb::Activation { split: Some(pb::Split::default()), ..Default::default() }).map(drop));
        assert!(e.contains("no hidden state"), "{e}");
        let e = err(Step::try_from(pb::Activation { hidden: Some(tensor(&[1.0]).into()), ..Default::default() }).map(drop));
        assert!(e.contains("no split"), "{e}");

        let split = Some(pb::Split::default());
        let e = err(Migrate::try_from(pb::Migrate { from: split, to: split, method: 7, ..Default::default() }).map(drop));
        assert!(e.contains("no known method (7)"), "{e}");
        let nan = pb::LayerKv { layer: 2, k: Some(tensor(&[f32::NAN]).into()), v: Some(tensor(&[0.0]).into()) };
        let transfer = pb::Migration::Transfer as i32;
        let e = err(Migrate::try_from(pb::Migrate { from: split, to: split, method: transfer, kv: vec![nan], ..Default::default() }).map(drop));
        assert!(e.contains("keys of layer 2 hold a non-finite value NaN at element 0"), "{e}");
        let inf = Some(tensor(&[0.0, f32::INFINITY]).into());
        let e = err(Migrate::try_from(pb::Migrate { from: split, to: split, method: transfer, replay: inf, replay_chunks: vec![1], ..Default::default() }).map(drop));
        assert!(e.contains("replay states hold a non-finite value inf at element 1"), "{e}");
        let e = err(Migrated::try_from(pb::Migrated::default()).map(drop));
        assert!(e.contains("migrated carries no split"), "{e}");
    }
}
