//! What the dashboard shows: the last few minutes ([`WINDOW`]) of channel statistics, decisions
//! and UE reports, each numbered so that a viewer asks only for what is new, and the latest
//! report of each UE with the end of its text.
//!
//! Times are the agent's wall clock when each point was recorded, so every series shares one time
//! axis even when the emulator or a UE runs on another host with another clock.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use splitinfer_proto::v1 as pb;

use crate::error::AgentError;
use crate::state::MAX_NAME_BYTES;

/// How far back the timeline reaches.
pub const WINDOW_MS: u64 = 5 * 60 * 1000;
/// Points kept at most, whatever the rates (5 minutes of statistics every 10 ms and reports).
const MAX_POINTS: usize = 40_000;
/// UEs kept at most; the one that reported least recently goes first.
const MAX_UES: usize = 64;
/// The longest text a report may carry (the UE sends the end of its text).
pub const MAX_TEXT_BYTES: usize = 4096;

/// One point of a series.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Point {
    /// One statistics message of the emulator. Non-finite values (a clean link's SNR, a window
    /// without noise or packets) are `null` in JSON, a gap in the plot.
    Channel {
        scenario: String,
        impaired: bool,
        /// The configured mean SNR; not a number when the link is clean or paused.
        mean_snr_db: f64,
        /// The SNR of the noise actually added over the emulator's window; not a number without
        /// noise.
        realized_snr_db: f64,
        loss_rate: f64,
        erasure_rate: f64,
    },
    Decision {
        k: u32,
        /// As a string: epochs are above 2⁵³, where a JavaScript number loses digits.
        epoch: String,
        policy: String,
        reason: String,
        overridden: bool,
    },
    Ue {
        name: String,
        k: u32,
        tokens: u32,
        tokens_per_s: f64,
        token_latency_ms: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub seq: u64,
    pub unix_ms: u64,
    #[serde(flatten)]
    pub point: Point,
}

/// A UE's latest report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UeProgress {
    pub name: String,
    pub k: u32,
    pub epoch: String,
    pub tokens: u32,
    pub tokens_per_s: f64,
    pub token_latency_ms: f64,
    pub text: String,
    pub finished: bool,
    /// When the agent received it.
    pub unix_ms: u64,
}

#[derive(Debug, Default)]
pub struct Timeline {
    entries: VecDeque<Entry>,
    next_seq: u64,
    ues: BTreeMap<String, UeProgress>,
}

impl Timeline {
    pub fn channel(&mut self, s: &pb::ChannelStats, unix_ms: u64) {
        let w = s.window.unwrap_or_default();
        let active = s.impaired && !s.paused;
        let (loss_rate, erasure_rate) = if active { (w.loss_rate, w.erasure_rate) } else { (0.0, 0.0) };
        self.push(
            unix_ms,
            Point::Channel {
                scenario: s.scenario.clone(),
                impaired: active,
                mean_snr_db: if active { s.snr_db } else { f64::NAN },
                realized_snr_db: if active { w.realized_snr_db } else { f64::NAN },
                loss_rate,
                erasure_rate,
            },
        );
    }

    pub fn decision(&mut self, d: &pb::Decision) {
        let split = d.split.unwrap_or_default();
        self.push(
            d.unix_ms,
            Point::Decision { k: split.k, epoch: split.epoch.to_string(), policy: d.policy.clone(), reason: d.reason.clone(), overridden: d.overridden },
        );
    }

    /// Records a UE's report; refuses one that is not a UE's (no name) or carries too much.
    pub fn report(&mut self, r: pb::ReportRequest, unix_ms: u64) -> Result<(), AgentError> {
        let name = r.subscriber;
        if name.is_empty() {
            return Err(AgentError::InvalidArgument("report without a subscriber name; give the UE's name, as it subscribed".into()));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(AgentError::InvalidArgument(format!("subscriber name is {} bytes; at most {MAX_NAME_BYTES}", name.len())));
        }
        if r.text.len() > MAX_TEXT_BYTES {
            return Err(AgentError::InvalidArgument(format!("report text is {} bytes; send at most the last {MAX_TEXT_BYTES}", r.text.len())));
        }
        let split = r.split.unwrap_or_default();
        self.push(
            unix_ms,
            Point::Ue { name: name.clone(), k: split.k, tokens: r.tokens, tokens_per_s: r.tokens_per_s, token_latency_ms: r.token_latency_ms },
        );
        let progress = UeProgress {
            name: name.clone(),
            k: split.k,
            epoch: split.epoch.to_string(),
            tokens: r.tokens,
            tokens_per_s: r.tokens_per_s,
            token_latency_ms: r.token_latency_ms,
            text: r.text,
            finished: r.finished,
            unix_ms,
        };
        self.ues.insert(name, progress);
        if self.ues.len() > MAX_UES
            && let Some(oldest) = self.ues.values().min_by_key(|u| u.unix_ms).map(|u| u.name.clone())
        {
            self.ues.remove(&oldest);
        }
        Ok(())
    }

    /// The points numbered `seq` and above that are still in the window.
    pub fn since(&self, seq: u64) -> impl Iterator<Item = &Entry> {
        let start = self.entries.partition_point(|e| e.seq < seq);
        self.entries.range(start..)
    }

    /// The number the next point will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The latest report of each UE that reported within the window, by name.
    pub fn ues(&self) -> impl Iterator<Item = &UeProgress> {
        self.ues.values()
    }

    fn push(&mut self, unix_ms: u64, point: Point) {
        self.entries.push_back(Entry { seq: self.next_seq, unix_ms, point });
        self.next_seq += 1;
        let oldest = unix_ms.saturating_sub(WINDOW_MS);
        while self.entries.front().is_some_and(|e| e.unix_ms < oldest) || self.entries.len() > MAX_POINTS {
            self.entries.pop_front();
        }
        self.ues.retain(|_, u| u.unix_ms >= oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, tokens: u32, text: &str) -> pb::ReportRequest {
        pb::ReportRequest { subscriber: name.into(), tokens, text: text.into(), split: Some(pb::Split { k: 3, epoch: 7 }), ..Default::default() }
    }

    #[test]
    fn points_are_numbered_and_fall_out_of_the_window() {
        let mut t = Timeline::default();
        let stats = pb::ChannelStats { impaired: true, snr_db: 5.0, window: Some(pb::LinkWindow { realized_snr_db: 4.5, loss_rate: 0.1, ..Default::default() }), ..Default::default() };
        t.channel(&stats, 1_000);
        t.decision(&pb::Decision { split: Some(pb::Split { k: 27, epoch: u64::MAX - 1 }), unix_ms: 2_000, ..Default::default() });
        t.report(report("ue", 5, "hello"), 3_000).unwrap();
        assert_eq!(t.since(0).map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(t.since(2).count(), 1);
        assert_eq!(t.next_seq(), 3);
        // Epochs travel as strings, every digit intact; NaN is null.
        let json = serde_json::to_string(&t.since(1).next().unwrap()).unwrap();
        assert!(json.contains(r#""epoch":"18446744073709551614""#) && json.contains(r#""kind":"decision""#), "{json}");
        let paused = pb::ChannelStats { paused: true, ..stats.clone() };
        t.channel(&paused, 4_000);
        let json = serde_json::to_string(&t.since(3).next().unwrap()).unwrap();
        assert!(json.contains(r#""mean_snr_db":null"#) && json.contains(r#""loss_rate":0.0"#), "{json}");
        // Five minutes later only the newest point and no UE is left.
        t.channel(&stats, 4_000 + WINDOW_MS + 1);
        assert_eq!(t.since(0).map(|e| e.seq).collect::<Vec<_>>(), [4]);
        assert_eq!(t.ues().count(), 0);
    }

    #[test]
    fn reports_keep_the_latest_per_ue_and_refuse_bad_ones() {
        let mut t = Timeline::default();
        t.report(report("ue-1", 1, "a"), 10).unwrap();
        t.report(report("ue-2", 1, "x"), 11).unwrap();
        t.report(report("ue-1", 2, "ab"), 12).unwrap();
        let ues: Vec<_> = t.ues().map(|u| (u.name.as_str(), u.tokens, u.text.as_str(), u.epoch.as_str())).collect();
        assert_eq!(ues, [("ue-1", 2, "ab", "7"), ("ue-2", 1, "x", "7")]);
        let e = t.report(report("", 1, ""), 13).unwrap_err().to_string();
        assert!(e.contains("without a subscriber name"), "{e}");
        let e = t.report(report("ue", 1, &"x".repeat(MAX_TEXT_BYTES + 1)), 13).unwrap_err().to_string();
        assert!(e.contains("4097 bytes; send at most the last 4096"), "{e}");
        assert_eq!(t.since(0).count(), 3, "a refused report records nothing");
    }
}
