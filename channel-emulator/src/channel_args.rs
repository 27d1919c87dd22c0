//! Command-line form of a channel. The emulator owns these flags (`EMU_*`: its channel is the
//! reference); `splitinfer ppl` and `figure3` reuse them, so offline and live runs take the same
//! flags and environment variables.

use splitinfer_link::Result;
use splitinfer_link::channel::{ChannelConfig, Equalizer, LinkModel, LossConfig, Preset, parse_preset, preset};

#[derive(Debug, Clone, clap::Args)]
pub struct ChannelArgs {
    /// Start from a named channel: static (the flags), good (case L: 20 dB, m = 3, noise, outage
    /// at γ_th = 0 dB with one retransmission) or bad (case H: 5 dB, Rayleigh, the same). Flags
    /// given explicitly override it.
    #[arg(long, env = "EMU_PRESET", value_parser = parse_preset, default_value = "static")]
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
    /// The receiver's equalizer after the noise: zf (zero-forcing, x̂ = y/h), mmse
    /// (x̂ = h·y/(h² + 1/γ̄)) or none (the gain stays in, as before there was a receiver).
    #[arg(long, env = "EMU_EQUALIZER", value_parser = parse_equalizer)]
    pub equalizer: Option<Equalizer>,
    /// Packet size in bytes (of the wire dtype's elements).
    #[arg(long, env = "EMU_PACKET_BYTES")]
    pub packet_bytes: Option<usize>,
    /// Digital loss: packets whose SNR falls below γ_th = 2^(R/B) − 1 are lost. Target rate R.
    #[arg(long, allow_negative_numbers = true, env = "EMU_LOSS_RATE_BPS")]
    pub loss_rate_bps: Option<f64>,
    /// Bandwidth B for the loss threshold.
    #[arg(long, allow_negative_numbers = true, env = "EMU_LOSS_BANDWIDTH_HZ", default_value_t = 1e6)]
    pub loss_bandwidth_hz: f64,
    /// HARQ: retransmissions before a lost packet is given up (its elements erased).
    #[arg(long, env = "EMU_RETRANSMISSIONS")]
    pub retransmissions: Option<u32>,
    /// HARQ latency budget per packet: no attempt starts that would end after it.
    #[arg(long, allow_negative_numbers = true, env = "EMU_HARQ_BUDGET_MS")]
    pub harq_budget_ms: Option<f64>,
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
        if let Some(e) = self.equalizer {
            c.equalizer = e;
        }
        if let Some(v) = self.packet_bytes {
            c.packet_bytes = v;
        }
        if let Some(rate) = self.loss_rate_bps {
            c.loss = Some(LossConfig {
                rate_bps: rate,
                bandwidth_hz: self.loss_bandwidth_hz,
                retransmissions: self.retransmissions.unwrap_or(0),
                budget_ms: self.harq_budget_ms,
            });
        } else if let Some(l) = c.loss.as_mut() {
            if let Some(r) = self.retransmissions {
                l.retransmissions = r;
            }
            if self.harq_budget_ms.is_some() {
                l.budget_ms = self.harq_budget_ms;
            }
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

fn parse_equalizer(s: &str) -> Result<Equalizer> {
    s.parse()
}
