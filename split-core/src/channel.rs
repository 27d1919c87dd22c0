//! The channel models, one implementation shared by the emulator proxy and the offline tools
//! (`ppl --snr-db ...`, the agent's profiler), so both see exactly the same perturbations.
//!
//! A message's values are cut into packets of `packet_bytes` (at the wire dtype's element size).
//! Each packet passes a chain of [`Impairment`]s, one file each: [`fading`] (Nakagami-m block
//! gain), [`loss`] (outage below γ_th, with retransmissions), [`awgn`] (ŷ = h·y + n at the
//! target SNR, optional equalization), [`erasure`] (zero-fill of lost packets; the reference
//! element-wise erasure with probability p); [`airtime`] turns attempts into delay. Every draw
//! comes from one seeded RNG: the same seed and config give the same perturbations. [`trace`]
//! holds time-varying channels: CSV traces and generated mobility.

pub mod airtime;
pub mod args;
pub mod awgn;
pub mod erasure;
pub mod fading;
pub mod loss;
pub mod math;
pub mod trace;

use std::time::Duration;

use candle_core::Tensor;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::boundary::Boundary;
use crate::error::{Error, Result};
use crate::wire::{WireDType, WireTensor};
pub use airtime::LinkModel;

/// One packet on its way through the chain.
#[derive(Debug)]
pub struct Packet<'a> {
    pub values: &'a mut [f32],
    /// Power gain g of the attempt that got through (1 without fading).
    pub gain: f64,
    pub lost: bool,
    pub attempts: u32,
    pub erased_elements: usize,
    pub signal_energy: f64,
    pub noise_energy: f64,
}

impl<'a> Packet<'a> {
    pub fn new(values: &'a mut [f32], gain: f64) -> Self {
        Self { values, gain, lost: false, attempts: 1, erased_elements: 0, signal_energy: 0.0, noise_energy: 0.0 }
    }
}

/// One stage of the channel, acting on a packet.
pub trait Impairment: Send {
    fn name(&self) -> &'static str;
    fn apply(&mut self, p: &mut Packet<'_>, rng: &mut StdRng);
}

/// Digital loss settings: target rate R on bandwidth B sets γ_th = 2^(R/B) − 1.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossConfig {
    pub rate_bps: f64,
    pub bandwidth_hz: f64,
    /// Attempts after the first before a packet is erased (0 = erase at once).
    pub retransmissions: u32,
}

/// A channel, as the emulator and `ppl` take it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChannelConfig {
    /// Mean SNR γ̄ in dB.
    pub snr_db: f64,
    /// Nakagami m (≥ 0.5); `None` is no fading.
    pub fading_m: Option<f64>,
    pub coherence_packets: usize,
    /// Analog noise on the values at `snr_db`.
    pub noise: bool,
    pub equalize: bool,
    pub packet_bytes: usize,
    pub loss: Option<LossConfig>,
    /// The reference element-wise erasure probability.
    pub erasure_p: Option<f64>,
    pub link: LinkModel,
}

impl Default for ChannelConfig {
    /// A clean channel: no fading, noise, loss or erasure; 1 ms propagation at 100 Mb/s.
    fn default() -> Self {
        Self {
            snr_db: 30.0,
            fading_m: None,
            coherence_packets: 1,
            noise: false,
            equalize: false,
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
        if !self.snr_db.is_finite() {
            return bad(format!("snr {} dB is not a finite number", self.snr_db));
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

/// What one message went through.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Transmission {
    /// Elements the message carried.
    pub elements: usize,
    pub packets: usize,
    pub lost_packets: usize,
    pub retransmissions: u64,
    pub erased_elements: usize,
    /// One bit per packet (LSB first): 1 = lost and zero-filled.
    pub erasure_mask: Vec<u8>,
    /// Sum of power gains of packets that got through, for the fading statistics.
    pub gain_sum: f64,
    pub gain_sq_sum: f64,
    pub signal_energy: f64,
    pub noise_energy: f64,
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
        let awgn = config.noise.then(|| awgn::Awgn::new(config.snr_db, config.equalize));
        let erasure = config.erasure_p.map(erasure::ElementErasure::new);
        Ok(Self { rng: StdRng::seed_from_u64(seed), config, fading, loss, awgn, erasure })
    }

    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }

    /// Perturbs `values` (elements of `elem_bytes` each on the wire) in place.
    pub fn transmit(&mut self, values: &mut [f32], elem_bytes: usize) -> Transmission {
        let per_packet = (self.config.packet_bytes / elem_bytes.max(1)).max(1);
        let mean_snr = 10f64.powf(self.config.snr_db / 10.0);
        let mut t = Transmission { elements: values.len(), ..Transmission::default() };
        let mut airtime_s = 0.0;
        for (i, chunk) in values.chunks_mut(per_packet).enumerate() {
            let bits = (chunk.len() * elem_bytes * 8) as f64;
            let mut p = Packet::new(chunk, 1.0);
            if let Some(f) = &mut self.fading {
                f.apply(&mut p, &mut self.rng);
            }
            let first_gain = p.gain;
            if let Some(l) = &mut self.loss {
                l.apply(&mut p, &mut self.rng);
            }
            if let Some(a) = &mut self.awgn {
                a.apply(&mut p, &mut self.rng);
            }
            erasure::EraseLost.apply(&mut p, &mut self.rng);
            if let Some(e) = &mut self.erasure {
                e.apply(&mut p, &mut self.rng);
            }
            // Failed attempts ran at the first draw's rate; the last at the gain that got through.
            airtime_s += f64::from(p.attempts - 1) * self.config.link.serialization_s(bits, first_gain * mean_snr)
                + self.config.link.serialization_s(bits, p.gain * mean_snr);
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
            t.erased_elements += p.erased_elements;
            t.signal_energy += p.signal_energy;
            t.noise_energy += p.noise_energy;
        }
        t.airtime = Duration::from_secs_f64(airtime_s.min(3600.0)) + self.config.link.propagation();
        t
    }

    /// Perturbs a wire tensor, keeping its dtype; returns the new tensor and what happened.
    pub fn transmit_wire(&mut self, tensor: &WireTensor) -> Result<(WireTensor, Transmission)> {
        let mut values = tensor.to_f32_vec();
        let t = self.transmit(&mut values, tensor.dtype().size());
        let out = WireTensor::from_f32(tensor.dtype(), tensor.shape().to_vec(), &values)?;
        Ok((out, t))
    }
}

/// The channel at the split boundary in process, for `ppl` and the profiler: the hidden state is
/// encoded in the wire dtype, perturbed, and decoded, exactly as through the emulator.
pub struct ChannelBoundary {
    pub channel: Channel,
    pub dtype: WireDType,
    pub last: Transmission,
}

impl Boundary for ChannelBoundary {
    fn transmit(&mut self, hidden: &Tensor) -> Result<Tensor> {
        let wire = WireTensor::from_tensor(hidden, self.dtype)?;
        let (out, t) = self.channel.transmit_wire(&wire)?;
        self.last = t;
        out.to_tensor(hidden.device())
    }

    fn describe(&self) -> String {
        format!("channel {:?}, wire {}", self.channel.config(), self.dtype)
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
            loss: Some(LossConfig { rate_bps: 2e6, bandwidth_hz: 1e6, retransmissions: 1 }),
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
            let t = Channel::new(noisy(), seed).unwrap().transmit(&mut v, 4);
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
        let t = Channel::new(ChannelConfig::default(), 0).unwrap().transmit(&mut v, 4);
        assert_eq!(v, input());
        // 16 KiB at 100 Mb/s is 1.31 ms, plus 1 ms propagation.
        let want = 4096.0 * 32.0 / 100e6 + 1e-3;
        assert!((t.airtime.as_secs_f64() - want).abs() < 1e-6, "{:?}", t.airtime);
        assert_eq!((t.packets, t.lost_packets), (16, 0));
    }

    #[test]
    fn lost_packets_are_zero_filled_and_marked() {
        // γ̄ = 0 dB far below γ_th = 3: every packet is lost.
        let cfg = ChannelConfig { snr_db: 0.0, loss: Some(LossConfig { rate_bps: 2e6, bandwidth_hz: 1e6, retransmissions: 0 }), packet_bytes: 64, ..ChannelConfig::default() };
        let mut v = input();
        let t = Channel::new(cfg, 0).unwrap().transmit(&mut v, 4);
        assert!(v.iter().all(|&x| x == 0.0));
        assert_eq!(t.lost_packets, 256);
        assert!(t.erasure_mask.iter().all(|&b| b == 0xff));
    }

    #[test]
    fn bad_configuration_is_refused_with_the_value() {
        let e = |c: ChannelConfig| Channel::new(c, 0).unwrap_err().to_string();
        assert!(e(ChannelConfig { fading_m: Some(0.3), ..ChannelConfig::default() }).contains("Nakagami m 0.3 must be"));
        assert!(e(ChannelConfig { erasure_p: Some(1.5), ..ChannelConfig::default() }).contains("erasure probability 1.5 is outside [0, 1]"));
        let neg = ChannelConfig { link: LinkModel { bandwidth_hz: -1.0, ..ChannelConfig::default().link }, ..ChannelConfig::default() };
        assert!(e(neg).contains("link bandwidth_hz -1 must be positive"));
        let neg_loss = ChannelConfig { loss: Some(LossConfig { rate_bps: 1e6, bandwidth_hz: -5.0, retransmissions: 0 }), ..ChannelConfig::default() };
        assert!(e(neg_loss).contains("loss bandwidth_hz -5 must be positive"));
    }
}
