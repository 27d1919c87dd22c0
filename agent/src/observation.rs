//! The channel as a policy sees it, derived from one `ChannelStats` message of the emulator.

use splitinfer_proto::v1 as pb;

/// The SNR of a link that adds no noise: the emulator is a pass-through (not impaired) or its
/// impairments are paused. Infinite rather than a large number, so that it is above every
/// threshold a table can name; it shows as `inf` in reasons and `Infinity` in JSON.
pub const CLEAN_SNR_DB: f64 = f64::INFINITY;

#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub unix_ms: u64,
    pub scenario: String,
    /// Realized SNR over the emulator's window where noise was added, else the configured mean
    /// SNR; [`CLEAN_SNR_DB`] on a clean link.
    pub snr_db: f64,
    /// Configured Nakagami m (0 = no fading, also on a clean link).
    pub fading_m: f64,
    /// Rates over the emulator's window; 0 on a clean link and when the window holds no packets
    /// yet (no traffic: nothing was lost).
    pub loss_rate: f64,
    pub erasure_rate: f64,
    /// Mean air time plus propagation per message over the window; 0 on a clean link or with no
    /// traffic.
    pub mean_delay_ms: f64,
    /// Whether impairments act on the link now (impaired and not paused).
    pub impaired: bool,
    pub channel_version: u64,
    /// The edge's load at the last poll of its `Info` (through the emulator); `None` when that
    /// poll failed or has not happened.
    pub edge: Option<EdgeLoad>,
}

/// What the edge carries (`InfoResponse`): open sessions, and the layers it runs for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLoad {
    pub sessions: u32,
    pub layers: u32,
}

impl Observation {
    pub fn from_stats(s: &pb::ChannelStats) -> Self {
        let w = s.window.unwrap_or_default();
        let impaired = s.impaired && !s.paused;
        let measured = |v: f64| if v.is_finite() { v } else { 0.0 };
        let (snr_db, fading_m, loss_rate, erasure_rate, mean_delay_ms) = if impaired {
            let snr = if w.realized_snr_db.is_finite() { w.realized_snr_db } else { s.snr_db };
            (snr, measured(s.fading_m), measured(w.loss_rate), measured(w.erasure_rate), measured(w.mean_delay_ms))
        } else {
            (CLEAN_SNR_DB, 0.0, 0.0, 0.0, 0.0)
        };
        Self {
            unix_ms: s.unix_ms,
            scenario: s.scenario.clone(),
            // A configured SNR of NaN cannot come from a valid channel; treat it as clean rather
            // than let it fail every comparison.
            snr_db: if snr_db.is_nan() { CLEAN_SNR_DB } else { snr_db },
            fading_m,
            loss_rate,
            erasure_rate,
            mean_delay_ms,
            impaired,
            channel_version: s.channel_version,
            edge: None,
        }
    }

    pub fn to_proto(&self) -> pb::Observation {
        pb::Observation {
            unix_ms: self.unix_ms,
            scenario: self.scenario.clone(),
            snr_db: self.snr_db,
            fading_m: self.fading_m,
            loss_rate: self.loss_rate,
            erasure_rate: self.erasure_rate,
            mean_delay_ms: self.mean_delay_ms,
            impaired: self.impaired,
            channel_version: self.channel_version,
            edge_load_known: self.edge.is_some(),
            edge_sessions: self.edge.map_or(0, |e| e.sessions),
            edge_layers: self.edge.map_or(0, |e| e.layers),
        }
    }

    /// A synthetic observation (tests, examples).
    pub fn with(snr_db: f64, loss_rate: f64) -> Self {
        Self {
            unix_ms: 0,
            scenario: "test".into(),
            snr_db,
            fading_m: 0.0,
            loss_rate,
            erasure_rate: 0.0,
            mean_delay_ms: 0.0,
            impaired: true,
            channel_version: 0,
            edge: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(impaired: bool, paused: bool, snr_db: f64, realized: f64, loss: f64) -> pb::ChannelStats {
        pb::ChannelStats {
            unix_ms: 7,
            scenario: "bad".into(),
            impaired,
            paused,
            snr_db,
            fading_m: 1.0,
            window: Some(pb::LinkWindow { realized_snr_db: realized, loss_rate: loss, erasure_rate: f64::NAN, mean_delay_ms: 2.5, ..Default::default() }),
            channel_version: 3,
            ..Default::default()
        }
    }

    #[test]
    fn realized_snr_wins_when_noise_was_added() {
        let o = Observation::from_stats(&stats(true, false, 5.0, 4.1, 0.07));
        assert_eq!((o.snr_db, o.loss_rate, o.erasure_rate, o.mean_delay_ms, o.fading_m), (4.1, 0.07, 0.0, 2.5, 1.0));
        assert!(o.impaired);
        assert_eq!((o.channel_version, o.unix_ms, o.scenario.as_str()), (3, 7, "bad"));
    }

    #[test]
    fn configured_snr_without_traffic_and_no_loss_without_packets() {
        let o = Observation::from_stats(&stats(true, false, 5.0, f64::NAN, f64::NAN));
        assert_eq!((o.snr_db, o.loss_rate), (5.0, 0.0));
    }

    #[test]
    fn a_pass_through_or_paused_link_is_clean() {
        for s in [stats(false, false, f64::NAN, f64::NAN, f64::NAN), stats(true, true, 5.0, 4.0, 0.3)] {
            let o = Observation::from_stats(&s);
            assert_eq!((o.snr_db, o.loss_rate, o.mean_delay_ms, o.fading_m), (CLEAN_SNR_DB, 0.0, 0.0, 0.0));
            assert!(!o.impaired);
        }
    }
}
