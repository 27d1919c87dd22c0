//! Command-line form of a channel, shared by the emulator and `splitinfer ppl` so both take the
//! same flags and environment variables (`EMU_*`: the emulator's channel is the reference).

use super::{ChannelConfig, LinkModel, LossConfig};
use crate::error::{Error, Result};

/// Named channels: the paper's training cases as we define them, plus `static` (the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, clap::Args)]
pub struct ChannelArgs {
    /// Start from a named channel (good = case L, bad = case H); flags given explicitly override it.
    #[arg(long, env = "EMU_PRESET", value_enum, default_value = "static")]
    pub preset: Preset,
    /// Mean SNR γ̄ in dB.
    #[arg(long, allow_negative_numbers = true, env = "EMU_SNR_DB")]
    pub snr_db: Option<f64>,
    /// Nakagami-m block fading with this m (>= 0.5; 1 = Rayleigh). Omit for no fading.
    #[arg(long, allow_negative_numbers = true, env = "EMU_FADING_M")]
    pub fading_m: Option<f64>,
    /// Packets per fading block.
    #[arg(long, env = "EMU_COHERENCE_PACKETS")]
    pub coherence_packets: Option<usize>,
    /// Analog noise on the values: ŷ = h·y + n at --snr-db.
    #[arg(long, env = "EMU_NOISE")]
    pub noise: bool,
    /// Zero-forcing equalization (divide by h) after the noise.
    #[arg(long, env = "EMU_EQUALIZE")]
    pub equalize: bool,
    /// Packet size in bytes (of the wire dtype's elements).
    #[arg(long, env = "EMU_PACKET_BYTES")]
    pub packet_bytes: Option<usize>,
    /// Digital loss: packets whose SNR falls below γ_th = 2^(R/B) − 1 are lost. Target rate R.
    #[arg(long, allow_negative_numbers = true, env = "EMU_LOSS_RATE_BPS")]
    pub loss_rate_bps: Option<f64>,
    /// Bandwidth B for the loss threshold.
    #[arg(long, allow_negative_numbers = true, env = "EMU_LOSS_BANDWIDTH_HZ", default_value_t = 1e6)]
    pub loss_bandwidth_hz: f64,
    /// Retransmissions before a lost packet is erased (zero-filled).
    #[arg(long, env = "EMU_RETRANSMISSIONS")]
    pub retransmissions: Option<u32>,
    /// Reference mode: every element zeroed with this probability (the authors' p in [0.01, 0.30]).
    #[arg(long, allow_negative_numbers = true, env = "EMU_ERASURE_P")]
    pub erasure_p: Option<f64>,
    /// Fixed link rate for air time.
    #[arg(long, allow_negative_numbers = true, env = "EMU_LINK_RATE_BPS", default_value_t = 100e6)]
    pub link_rate_bps: f64,
    /// Use Shannon's rate B·log2(1 + γ) on --link-bandwidth-hz instead of the fixed rate.
    #[arg(long, env = "EMU_SHANNON")]
    pub shannon: bool,
    #[arg(long, allow_negative_numbers = true, env = "EMU_LINK_BANDWIDTH_HZ", default_value_t = 20e6)]
    pub link_bandwidth_hz: f64,
    /// One-way propagation and processing delay per message.
    #[arg(long, allow_negative_numbers = true, env = "EMU_PROPAGATION_MS", default_value_t = 1.0)]
    pub propagation_ms: f64,
    /// Seed of every channel draw.
    #[arg(long, env = "EMU_SEED", default_value_t = 0)]
    pub channel_seed: u64,
}

impl ChannelArgs {
    pub fn to_config(&self) -> Result<ChannelConfig> {
        let mut c = preset(self.preset, &ChannelConfig::default());
        if let Some(v) = self.snr_db {
            c.snr_db = v;
        }
        if self.fading_m.is_some() {
            c.fading_m = self.fading_m;
        }
        if let Some(v) = self.coherence_packets {
            c.coherence_packets = v;
        }
        c.noise |= self.noise;
        c.equalize |= self.equalize;
        if let Some(v) = self.packet_bytes {
            c.packet_bytes = v;
        }
        if let Some(rate) = self.loss_rate_bps {
            c.loss = Some(LossConfig { rate_bps: rate, bandwidth_hz: self.loss_bandwidth_hz, retransmissions: self.retransmissions.unwrap_or(0) });
        } else if let (Some(l), Some(r)) = (c.loss.as_mut(), self.retransmissions) {
            l.retransmissions = r;
        }
        if self.erasure_p.is_some() {
            c.erasure_p = self.erasure_p;
        }
        c.link = LinkModel {
            rate_bps: (!self.shannon).then_some(self.link_rate_bps),
            bandwidth_hz: self.link_bandwidth_hz,
            propagation_ms: self.propagation_ms,
        };
        c.validate()?;
        Ok(c)
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

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Good => "good",
            Self::Bad => "bad",
        }
    }
}

fn preset_config(snr_db: f64, m: f64) -> ChannelConfig {
    ChannelConfig {
        snr_db,
        fading_m: Some(m),
        noise: true,
        loss: Some(LossConfig { rate_bps: 1e6, bandwidth_hz: 1e6, retransmissions: 1 }),
        ..ChannelConfig::default()
    }
}

/// Parses a preset name for the control API and config files.
pub fn parse_preset(name: &str) -> Result<Preset> {
    <Preset as clap::ValueEnum>::from_str(name, true)
        .map_err(|_| Error::InvalidArgument(format!("unknown scenario {name:?}; known: static, good, bad")))
}
