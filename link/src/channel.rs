//! The channel models, one implementation shared by the emulator proxy and the offline tools
//! (`ppl`, `figure3`, the profiler), so both see exactly the same perturbations.
//!
//! A message's payload is cut into packets of `packet_bytes`. Each packet passes a chain of
//! [`Impairment`]s, one file each: [`fading`] (Nakagami-m block gain), [`loss`] (outage below
//! γ_th, with HARQ retransmissions within a latency budget), [`awgn`] (ŷ = h·y + n at the
//! target SNR, then the receiver's [`Equalizer`]: zero-forcing by default, MMSE, or none),
//! [`erasure`] (lost packets' elements are erased; the reference element-wise erasure with
//! probability p); [`airtime`] turns attempts into delay. Every element the channel erased is
//! marked in [`Transmission::erased`], for the receiver's concealment
//! ([`crate::transform`]). Every draw comes from one seeded RNG: the same seed and config give
//! the same perturbations. [`trace`] holds time-varying channels; [`preset`] the named ones.
//!
//! Value dtypes (f32, f16, bf16) form the analog link: noise perturbs the numbers. Quantized
//! dtypes form the digital link: a packet of codes arrives intact or is lost, analog noise does
//! not apply (it acts through the outage threshold), and the side information is sent
//! protected, counted in air time but never lost.

pub mod airtime;
pub mod awgn;
pub mod erasure;
pub mod fading;
pub mod loss;
pub mod math;
pub mod preset;
pub mod trace;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::error::{Error, Result};
use crate::wire::WireTensor;
pub use airtime::LinkModel;
pub use preset::{Preset, parse_preset, preset};

/// One packet on its way through the chain.
#[derive(Debug)]
pub struct Packet<'a> {
    pub values: &'a mut [f32],
    /// Power gain g of the attempt that got through (1 without fading).
    pub gain: f64,
    pub lost: bool,
    pub attempts: u32,
    /// Indices (within the packet) of the elements the channel erased.
    pub erased: Vec<usize>,
    pub signal_energy: f64,
    pub noise_energy: f64,
}

impl<'a> Packet<'a> {
    pub fn new(values: &'a mut [f32], gain: f64) -> Self {
        Self { values, gain, lost: false, attempts: 1, erased: Vec::new(), signal_energy: 0.0, noise_energy: 0.0 }
    }
}

/// One stage of the channel, acting on a packet.
pub trait Impairment: Send {
    fn name(&self) -> &'static str;
    fn apply(&mut self, p: &mut Packet<'_>, rng: &mut StdRng);
}

/// The receiver's equalizer for the analog link's y = h·x + n.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Equalizer {
    /// Leave the gain in: x̂ = y (what the channel did before there was a receiver).
    None,
    /// x̂ = y / h.
    #[default]
    ZeroForcing,
    /// x̂ = h·y / (h² + 1/γ̄): the linear MMSE estimate for a zero-mean signal of the packet's
    /// power; it shrinks deep fades toward 0 (the mean, after standardization).
    Mmse,
}

impl fmt::Display for Equalizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::ZeroForcing => "zf",
            Self::Mmse => "mmse",
        })
    }
}

impl FromStr for Equalizer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "off" => Ok(Self::None),
            "zf" | "zero-forcing" => Ok(Self::ZeroForcing),
            "mmse" => Ok(Self::Mmse),
            _ => Err(Error::InvalidArgument(format!("unknown equalizer {s:?}; expected none, zf or mmse"))),
        }
    }
}

/// Digital loss settings: target rate R on bandwidth B sets γ_th = 2^(R/B) − 1.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossConfig {
    pub rate_bps: f64,
    pub bandwidth_hz: f64,
    /// HARQ: attempts after the first before a packet is given up (0 = give up at once).
    pub retransmissions: u32,
    /// HARQ latency budget per packet: no attempt starts whose air time would end past it.
    #[serde(default)]
    pub budget_ms: Option<f64>,
}

/// Mean SNRs a channel may have. Wider than any radio (and than the profiles), narrow enough that
/// 10^(snr/10) and the noise it scales stay finite: −1e308 dB would make every message NaN.
pub const SNR_DB_RANGE: std::ops::RangeInclusive<f64> = -100.0..=200.0;

/// A channel, as the emulator and `ppl` take it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChannelConfig {
    /// Mean SNR γ̄ in dB.
    pub snr_db: f64,
    /// Nakagami m (≥ 0.5); `None` is no fading.
    pub fading_m: Option<f64>,
    pub coherence_packets: usize,
    /// Analog noise on the values at `snr_db` (value dtypes only).
    pub noise: bool,
    #[serde(default)]
    pub equalizer: Equalizer,
    pub packet_bytes: usize,
    pub loss: Option<LossConfig>,
    /// The reference element-wise erasure probability.
    pub erasure_p: Option<f64>,
    pub link: LinkModel,
}

impl Default for ChannelConfig {
    /// A clean channel: no fading, noise, loss or erasure; zero-forcing; 1 ms propagation at
    /// 100 Mb/s.
    fn default() -> Self {
        Self {
            snr_db: 30.0,
            fading_m: None,
            coherence_packets: 1,
            noise: false,
            equalizer: Equalizer::ZeroForcing,
            packet_bytes: 1024,
            loss: None,
            erasure_p: None,
            link: LinkModel { rate_bps: Some(100e6), bandwidth_hz: 20e6, propagation_ms: 1.0 },
        }
    }
}

impl ChannelConfig {
    /// Checks every value; the message names the bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !SNR_DB_RANGE.contains(&self.snr_db) {
            return bad(format!("snr {} dB is outside {}..={} dB", self.snr_db, SNR_DB_RANGE.start(), SNR_DB_RANGE.end()));
        }
        if let Some(m) = self.fading_m
            && !(m >= 0.5 && m.is_finite())
        {
            return bad(format!("Nakagami m {m} must be a finite number >= 0.5"));
        }
        if self.coherence_packets == 0 {
            return bad("coherence of 0 packets; use at least 1".into());
        }
        if self.packet_bytes == 0 {
            return bad("packet size of 0 bytes; use at least one element".into());
        }
        if let Some(p) = self.erasure_p
            && !(0.0..=1.0).contains(&p)
        {
            return bad(format!("erasure probability {p} is outside [0, 1]"));
        }
        let positive = |what: &str, v: f64| {
            if v > 0.0 && v.is_finite() { Ok(()) } else { Err(Error::InvalidArgument(format!("{what} {v} must be positive"))) }
        };
        if let Some(l) = &self.loss {
            positive("loss rate_bps", l.rate_bps)?;
            positive("loss bandwidth_hz", l.bandwidth_hz)?;
            if let Some(b) = l.budget_ms {
                positive("harq budget_ms", b)?;
            }
        }
        positive("link bandwidth_hz", self.link.bandwidth_hz)?;
        if let Some(r) = self.link.rate_bps {
            positive("link rate_bps", r)?;
        }
        if !(self.link.propagation_ms >= 0.0 && self.link.propagation_ms.is_finite()) {
            return bad(format!("propagation delay {} ms must be >= 0", self.link.propagation_ms));
        }
        Ok(())
    }

    /// True when the channel changes no value (air time may still apply).
    pub fn is_clean(&self) -> bool {
        self.fading_m.is_none() && !self.noise && self.loss.is_none() && self.erasure_p.is_none()
    }
}

/// Sets element `i` of a bitset (LSB first).
pub fn set_bit(mask: &mut [u8], i: usize) {
    mask[i / 8] |= 1 << (i % 8);
}

/// Whether element `i` of a bitset (LSB first) is set; an empty mask has none.
pub fn bit(mask: &[u8], i: usize) -> bool {
    mask.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// What one message went through.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Transmission {
    /// Elements the message carried.
    pub elements: usize,
    pub packets: usize,
    pub lost_packets: usize,
    pub retransmissions: u64,
    pub erased_elements: usize,
    /// One bit per packet (LSB first): 1 = lost.
    pub erasure_mask: Vec<u8>,
    /// One bit per element (LSB first): 1 = erased by the channel (its packet lost, or the
    /// reference erasure hit it), for the receiver to conceal. Empty when nothing was erased.
    pub erased: Vec<u8>,
    /// Sum of power gains of packets that got through, for the fading statistics.
    pub gain_sum: f64,
    pub gain_sq_sum: f64,
    pub signal_energy: f64,
    pub noise_energy: f64,
    /// Bits sent, every attempt of every packet and the side information included.
    pub bits_sent: u64,
    pub airtime: Duration,
}

/// A seeded channel instance: the impairment chain and its RNG.
pub struct Channel {
    config: ChannelConfig,
    rng: StdRng,
    fading: Option<fading::Fading>,
    loss: Option<loss::OutageLoss>,
    awgn: Option<awgn::Awgn>,
    erasure: Option<erasure::ElementErasure>,
    /// UEs sharing the uplink's bandwidth (or fixed rate) evenly, this one among them: each gets
    /// (B/N)·log2(1 + γ). 1 unless the owner says otherwise ([`Channel::set_sharers`]).
    sharers: usize,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Channel {
    pub fn new(config: ChannelConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let fading = config.fading_m.map(|m| fading::Fading::new(m, config.coherence_packets));
        let loss = config
            .loss
            .map(|l| loss::OutageLoss::new(config.snr_db, l.rate_bps, l.bandwidth_hz, l.retransmissions, fading.clone()));
        let awgn = config.noise.then(|| awgn::Awgn::new(config.snr_db, config.equalizer));
        let erasure = config.erasure_p.map(erasure::ElementErasure::new);
        Ok(Self { rng: StdRng::seed_from_u64(seed), config, fading, loss, awgn, erasure, sharers: 1 })
    }

    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }

    /// Shares the uplink evenly among `n` UEs (at least 1) from the next message on: the link
    /// rate, fixed or Shannon's, is divided by `n`, so every air time is `n` times as long.
    pub fn set_sharers(&mut self, n: usize) {
        self.sharers = n.max(1);
    }

    /// Seconds to send `bits` once at linear SNR `snr`, at this UE's share of the link.
    pub fn serialization_s(&self, bits: f64, snr: f64) -> f64 {
        self.config.link.serialization_s(bits, snr) * self.sharers as f64
    }

    /// Perturbs `values` (elements of `elem_bits` each on the wire) in place, as the analog link.
    pub fn transmit(&mut self, values: &mut [f32], elem_bits: usize) -> Transmission {
        self.transmit_packets(values, elem_bits, true)
    }

    fn transmit_packets(&mut self, values: &mut [f32], elem_bits: usize, analog: bool) -> Transmission {
        let elem_bits = elem_bits.max(1);
        let per_packet = (self.config.packet_bytes * 8 / elem_bits).max(1);
        let mean_snr = 10f64.powf(self.config.snr_db / 10.0);
        let mut t = Transmission { elements: values.len(), ..Transmission::default() };
        let mut erased = vec![0u8; values.len().div_ceil(8)];
        let mut airtime_s = 0.0;
        for (i, chunk) in values.chunks_mut(per_packet).enumerate() {
            let len = chunk.len();
            let bits = (len * elem_bits) as f64;
            let mut p = Packet::new(chunk, 1.0);
            if let Some(f) = &mut self.fading {
                f.apply(&mut p, &mut self.rng);
            }
            let first_gain = p.gain;
            if let Some(l) = &mut self.loss {
                // HARQ's latency budget caps the attempts: each takes this packet's air time at
                // the mean SNR (the fixed rate, or Shannon's at γ̄).
                if let Some(budget_ms) = self.config.loss.and_then(|c| c.budget_ms) {
                    let attempt_s = self.config.link.serialization_s(bits, mean_snr) * self.sharers as f64;
                    let fit = (budget_ms / 1e3 / attempt_s).floor().max(1.0);
                    l.limit = Some((fit as u32).saturating_sub(1));
                }
                l.apply(&mut p, &mut self.rng);
            }
            if analog && let Some(a) = &mut self.awgn {
                a.apply(&mut p, &mut self.rng);
            }
            erasure::EraseLost.apply(&mut p, &mut self.rng);
            if let Some(e) = &mut self.erasure {
                e.apply(&mut p, &mut self.rng);
            }
            // Failed attempts ran at the first draw's rate; the last at the gain that got through.
            airtime_s += f64::from(p.attempts - 1) * self.serialization_s(bits, first_gain * mean_snr) + self.serialization_s(bits, p.gain * mean_snr);
            t.bits_sent += u64::from(p.attempts) * bits as u64;
            if i % 8 == 0 {
                t.erasure_mask.push(0);
            }
            if p.lost {
                t.lost_packets += 1;
                *t.erasure_mask.last_mut().expect("pushed above") |= 1 << (i % 8);
            } else {
                t.gain_sum += p.gain;
                t.gain_sq_sum += p.gain * p.gain;
            }
            t.packets += 1;
            t.retransmissions += u64::from(p.attempts - 1);
            t.erased_elements += p.erased.len();
            for &e in &p.erased {
                set_bit(&mut erased, i * per_packet + e);
            }
            t.signal_energy += p.signal_energy;
            t.noise_energy += p.noise_energy;
        }
        if t.erased_elements > 0 {
            t.erased = erased;
        }
        t.airtime = Duration::from_secs_f64(airtime_s.min(3600.0)) + self.config.link.propagation();
        t
    }

    /// Sends a wire tensor, keeping its dtype; returns what arrived and what happened. Value
    /// dtypes take the analog link (erased elements arrive as 0). Quantized dtypes take the
    /// digital link: packets of codes are delivered intact or lost (their codes zeroed), and the
    /// protected side information adds its bits to the air time at the mean SNR's rate.
    pub fn transmit_wire(&mut self, tensor: &WireTensor) -> Result<(WireTensor, Transmission)> {
        let dtype = tensor.dtype();
        if dtype.is_value() {
            let mut values = tensor.to_f32_vec();
            let t = self.transmit_packets(&mut values, dtype.bits(), true);
            let out = WireTensor::from_f32(dtype, tensor.shape().to_vec(), &values)?;
            return Ok((out, t));
        }
        // Only which elements are lost matters here; the codes themselves are not perturbed.
        let mut shadow = vec![0f32; tensor.elements()];
        let mut t = self.transmit_packets(&mut shadow, dtype.bits(), false);
        let side_bits = (tensor.side_len() * 8) as f64;
        let mean_snr = 10f64.powf(self.config.snr_db / 10.0);
        t.airtime += Duration::from_secs_f64(self.serialization_s(side_bits, mean_snr).min(3600.0));
        t.bits_sent += side_bits as u64;
        let mut out = tensor.clone();
        out.zero_elements(&t.erased);
        Ok((out, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy() -> ChannelConfig {
        ChannelConfig {
            snr_db: 10.0,
            fading_m: Some(1.0),
            noise: true,
            loss: Some(LossConfig { rate_bps: 2e6, bandwidth_hz: 1e6, retransmissions: 1, budget_ms: None }),
            erasure_p: Some(0.05),
            packet_bytes: 64,
            ..ChannelConfig::default()
        }
    }

    fn input() -> Vec<f32> {
        (0..4096).map(|i| ((i as f32) * 0.11).cos()).collect()
    }

    #[test]
    fn same_seed_same_perturbation_different_seed_differs() {
        let run = |seed| {
            let mut v = input();
            let t = Channel::new(noisy(), seed).unwrap().transmit(&mut v, 32);
            (v, t)
        };
        let (a, ta) = run(1);
        let (b, tb) = run(1);
        assert_eq!(a, b);
        assert_eq!(ta, tb);
        let (c, _) = run(2);
        assert_ne!(a, c);
        assert_ne!(a, input(), "the channel must change something");
    }

    #[test]
    fn clean_channel_changes_no_value_but_takes_air_time() {
        let mut v = input();
        let t = Channel::new(ChannelConfig::default(), 0).unwrap().transmit(&mut v, 32);
        assert_eq!(v, input());
        // 16 KiB at 100 Mb/s is 1.31 ms, plus 1 ms propagation.
        let want = 4096.0 * 32.0 / 100e6 + 1e-3;
        assert!((t.airtime.as_secs_f64() - want).abs() < 1e-6, "{:?}", t.airtime);
        assert_eq!((t.packets, t.lost_packets), (16, 0));
    }

    #[test]
    fn lost_packets_are_zero_filled_and_marked() {
        // γ̄ = 0 dB far below γ_th = 3: every packet is lost.
        let cfg = ChannelConfig { snr_db: 0.0, loss: Some(LossConfig { rate_bps: 2e6, bandwidth_hz: 1e6, retransmissions: 0, budget_ms: None }), packet_bytes: 64, ..ChannelConfig::default() };
        let mut v = input();
        let t = Channel::new(cfg, 0).unwrap().transmit(&mut v, 32);
        assert!(v.iter().all(|&x| x == 0.0));
        assert_eq!(t.lost_packets, 256);
        assert!(t.erasure_mask.iter().all(|&b| b == 0xff));
    }

    /// The digital link on an int8 tensor: the residual packet-loss rate with HARQ is q^(K+1),
    /// q = P(m, m·γ_th/γ̄) the outage of one attempt, within 5 binomial standard errors; the mean
    /// attempts are 1 + q + … + q^K; lost packets' elements, and only theirs, are marked erased
    /// and arrive as 0; delivered codes are bit-exact.
    #[test]
    fn digital_packet_loss_matches_the_outage_formula_with_harq() {
        use crate::wire::{WireDType, WireTensor};
        let (rows, n) = (400, 576);
        let x: Vec<f32> = (0..rows * n).map(|i| ((i as f32) * 0.37).sin() + 0.01).collect();
        let w = WireTensor::from_f32(WireDType::I8, vec![1, rows, n], &x).unwrap();
        let per_packet = 64; // 64 one-byte codes per packet
        for (snr_db, retx) in [(8.0, 0u32), (8.0, 2), (3.0, 3)] {
            let cfg = ChannelConfig {
                snr_db,
                fading_m: Some(1.0),
                packet_bytes: per_packet,
                loss: Some(LossConfig { rate_bps: 2e6, bandwidth_hz: 1e6, retransmissions: retx, budget_ms: None }),
                ..ChannelConfig::default()
            };
            let mut ch = Channel::new(cfg, 21).unwrap();
            let (mut lost, mut packets, mut attempts) = (0usize, 0usize, 0u64);
            for _ in 0..10 {
                let (out, t) = ch.transmit_wire(&w).unwrap();
                let got = out.to_f32_vec();
                let sent = w.to_f32_vec();
                for e in 0..rows * n {
                    if bit(&t.erased, e) {
                        assert_eq!(got[e], 0.0);
                        assert!(bit(&t.erasure_mask, e / per_packet), "element {e} erased, its packet not lost");
                    } else {
                        assert_eq!(got[e], sent[e], "a delivered code changed");
                    }
                }
                lost += t.lost_packets;
                packets += t.packets;
                attempts += t.packets as u64 + t.retransmissions;
            }
            let q = loss::outage_probability(Some(1.0), snr_db, 2e6, 1e6);
            let want = q.powi(retx as i32 + 1);
            let se = (want * (1.0 - want) / packets as f64).sqrt();
            let rate = lost as f64 / packets as f64;
            assert!((rate - want).abs() < 5.0 * se, "{snr_db} dB, K={retx}: loss {rate:.5}, formula {want:.5} ± {:.5}", 5.0 * se);
            let want_attempts: f64 = (0..=retx).map(|j| q.powi(j as i32)).sum();
            let mean_attempts = attempts as f64 / packets as f64;
            assert!((mean_attempts - want_attempts).abs() < 0.02 * want_attempts, "attempts {mean_attempts} against {want_attempts}");
        }
    }

    /// HARQ stops at the latency budget: with room for two attempts, K = 5 acts as K = 1.
    #[test]
    fn a_shared_uplink_divides_the_rate_among_its_ues() {
        let config = ChannelConfig { link: LinkModel { rate_bps: None, bandwidth_hz: 1e6, propagation_ms: 0.0 }, snr_db: 10.0, ..ChannelConfig::default() };
        let mut alone = Channel::new(config.clone(), 1).unwrap();
        let mut shared = Channel::new(config, 1).unwrap();
        shared.set_sharers(4);
        let values = vec![1.0f32; 576];
        let (a, b) = (alone.transmit(&mut values.clone(), 32), shared.transmit(&mut values.clone(), 32));
        // 576 × 32 bits at 1 MHz · log2(11): 5.33 ms alone, four times that at a quarter share.
        let want = 576.0 * 32.0 / (1e6 * 11f64.log2());
        assert!((a.airtime.as_secs_f64() - want).abs() < 1e-6, "{:?}", a.airtime);
        assert!((b.airtime.as_secs_f64() - 4.0 * want).abs() < 1e-6, "{:?}", b.airtime);
        shared.set_sharers(0);
        assert!((shared.transmit(&mut values.clone(), 32).airtime.as_secs_f64() - want).abs() < 1e-6, "0 UEs counts as 1");
    }

    #[test]
    fn harq_budget_caps_the_attempts() {
        let loss = |budget_ms| LossConfig { rate_bps: 2e6, bandwidth_hz: 1e6, retransmissions: 5, budget_ms };
        // 64-byte packets at the default 100 Mb/s take 5.12 µs an attempt: 11 µs fits two.
        let cfg = |b| ChannelConfig { snr_db: 3.0, fading_m: Some(1.0), packet_bytes: 64, loss: Some(loss(b)), ..ChannelConfig::default() };
        let run = |c| {
            let mut v = input();
            Channel::new(c, 4).unwrap().transmit(&mut v, 8)
        };
        let capped = run(cfg(Some(0.011)));
        let free = run(cfg(None));
        assert!(capped.retransmissions <= capped.packets as u64, "{} retransmissions for {} packets", capped.retransmissions, capped.packets);
        assert!(free.retransmissions > capped.retransmissions && free.lost_packets < capped.lost_packets);
    }

    #[test]
    fn bad_configuration_is_refused_with_the_value() {
        let e = |c: ChannelConfig| Channel::new(c, 0).unwrap_err().to_string();
        assert!(e(ChannelConfig { fading_m: Some(0.3), ..ChannelConfig::default() }).contains("Nakagami m 0.3 must be"));
        assert!(e(ChannelConfig { erasure_p: Some(1.5), ..ChannelConfig::default() }).contains("erasure probability 1.5 is outside [0, 1]"));
        let neg = ChannelConfig { link: LinkModel { bandwidth_hz: -1.0, ..ChannelConfig::default().link }, ..ChannelConfig::default() };
        assert!(e(neg).contains("link bandwidth_hz -1 must be positive"));
        let neg_loss = ChannelConfig { loss: Some(LossConfig { rate_bps: 1e6, bandwidth_hz: -5.0, retransmissions: 0, budget_ms: None }), ..ChannelConfig::default() };
        assert!(e(neg_loss).contains("loss bandwidth_hz -5 must be positive"));
    }
}
