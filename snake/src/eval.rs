//! Held-out perplexity through the serving model (`split_core`), with an adapter on the edge's
//! layers, on a clean link, the bad preset, or a mobility trace.

use candle_core::Tensor;
use split_core::boundary::{Boundary, ChannelBoundary};
use split_core::channel::trace::{Mobility, Trace};
use split_core::channel::{Channel, ChannelConfig};
use split_core::model::SplitModel;
use split_core::perplexity::{PplConfig, PplReport, perplexity};

use crate::train::TrainLink;

/// The channels the report evaluates on (docs/snake.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum EvalChannel {
    Clean,
    Bad,
    /// The vehicular mobility trace (seed 0): window `i` takes point `i` for its mean SNR and m,
    /// the rest of the channel as the bad preset.
    Vehicular,
}

impl EvalChannel {
    pub const ALL: [Self; 3] = [Self::Clean, Self::Bad, Self::Vehicular];

    pub fn name(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Bad => "bad",
            Self::Vehicular => "vehicular",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Whether channel seeds matter (a clean link gives one value).
    pub fn is_random(self) -> bool {
        self != Self::Clean
    }
}

/// The link with the channel changing every window along a trace.
struct TraceBoundary {
    base: ChannelConfig,
    trace: Trace,
    link: TrainLink,
    k: usize,
    seed: u64,
    windows: u64,
}

impl Boundary for TraceBoundary {
    fn transmit(&mut self, hidden: &Tensor, position: usize) -> split_core::Result<Tensor> {
        let point = self.trace.points[(self.windows as usize) % self.trace.points.len()];
        let channel = ChannelConfig { snr_db: point.snr_db, fading_m: point.m, ..self.base.clone() };
        let seed = self.seed.wrapping_mul(1_000_003).wrapping_add(self.windows);
        self.windows += 1;
        let mut b = ChannelBoundary::new(Channel::new(channel, seed)?, self.link.setup, self.link.calibration.as_ref(), self.k)?;
        b.transmit(hidden, position)
    }

    fn describe(&self) -> String {
        format!("vehicular trace over {:?}", self.base)
    }
}

/// The trace the vehicular evaluation replays: one point a second for ten minutes, seed 0.
pub fn vehicular_trace() -> Trace {
    Mobility::VEHICULAR.trace(600_000, 1000, 0)
}

/// Perplexity of `tokens` with the split at `k` over `channel` (channel seed `seed`). `model`
/// carries whatever adapter is being evaluated. `link.channel` is the bad preset.
pub fn evaluate(model: &SplitModel, tokens: &[u32], k: usize, cfg: PplConfig, link: &TrainLink, channel: EvalChannel, seed: u64) -> anyhow::Result<PplReport> {
    let split = model.split_point(k)?;
    let mut boundary: Box<dyn Boundary> = match channel {
        EvalChannel::Clean => Box::new(ChannelBoundary::new(Channel::new(ChannelConfig::default(), 0)?, link.setup, link.calibration.as_ref(), k)?),
        EvalChannel::Bad => Box::new(ChannelBoundary::new(Channel::new(link.channel.clone(), seed)?, link.setup, link.calibration.as_ref(), k)?),
        EvalChannel::Vehicular => Box::new(TraceBoundary { base: link.channel.clone(), trace: vehicular_trace(), link: link.clone(), k, seed, windows: 0 }),
    };
    Ok(perplexity(model, tokens, cfg, split, boundary.as_mut(), &mut |_, _| {})?)
}
