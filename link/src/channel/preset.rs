//! Named channels: the paper's training cases as we define them, plus `static` (the flags).

use std::str::FromStr;

use super::{ChannelConfig, LossConfig};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Preset {
    /// Exactly what the flags say.
    Static,
    /// Case L, a good channel: 20 dB mean SNR, Nakagami m = 3, analog noise, outage loss at
    /// γ_th = 0 dB (R/B = 1) with one retransmission.
    Good,
    /// Case H, a bad channel: 5 dB, Rayleigh (m = 1), analog noise, outage loss at γ_th = 0 dB
    /// with one retransmission.
    Bad,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Good => "good",
            Self::Bad => "bad",
        }
    }
}

impl FromStr for Preset {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "static" => Ok(Self::Static),
            "good" => Ok(Self::Good),
            "bad" => Ok(Self::Bad),
            _ => Err(Error::InvalidArgument(format!("unknown scenario {name:?}; known: static, good, bad"))),
        }
    }
}

/// The channel a preset names; `Static` is `base` (what the flags said).
pub fn preset(p: Preset, base: &ChannelConfig) -> ChannelConfig {
    match p {
        Preset::Static => base.clone(),
        Preset::Good => preset_config(20.0, 3.0),
        Preset::Bad => preset_config(5.0, 1.0),
    }
}

fn preset_config(snr_db: f64, m: f64) -> ChannelConfig {
    ChannelConfig {
        snr_db,
        fading_m: Some(m),
        noise: true,
        loss: Some(LossConfig { rate_bps: 1e6, bandwidth_hz: 1e6, retransmissions: 1, budget_ms: None }),
        ..ChannelConfig::default()
    }
}

/// Parses a preset name for the control API and config files.
pub fn parse_preset(name: &str) -> Result<Preset> {
    name.parse()
}
