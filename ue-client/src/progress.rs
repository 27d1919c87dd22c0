//! The UE's progress as the agent's dashboard shows it: tokens per second and per-token latency
//! since the previous report, and the end of the generated text, at most every [`PERIOD`] and
//! once at the end (sent by [`agent::Follower::report`]).

use std::time::{Duration, Instant};

use splitinfer_proto::v1 as pb;

use crate::report::TokenEvent;

/// The shortest time between two reports.
pub const PERIOD: Duration = Duration::from_millis(250);
/// The most text a report carries (the agent refuses more).
pub const MAX_TEXT_BYTES: usize = 4096;

pub struct Progress {
    name: String,
    since: Instant,
    split: pb::Split,
    tokens: u32,
    /// Since the previous report: tokens, and the decode steps' summed latency and count.
    interval_tokens: u32,
    decode_us: u64,
    decode_steps: u32,
    text: String,
}

impl Progress {
    /// A generation starting at `now`, reported under the UE's subscriber name.
    pub fn new(name: String, now: Instant) -> Self {
        Self { name, since: now, split: pb::Split::default(), tokens: 0, interval_tokens: 0, decode_us: 0, decode_steps: 0, text: String::new() }
    }

    /// One token and the text it added; a report when one is due.
    pub fn token(&mut self, t: &TokenEvent, piece: &str, now: Instant) -> Option<pb::ReportRequest> {
        self.tokens += 1;
        self.interval_tokens += 1;
        self.split = pb::Split { k: t.k as u32, epoch: t.epoch };
        // The prefill's step carries the whole prompt: it is no token's latency.
        if t.rows == 1 {
            self.decode_us += t.ue_compute_us + t.network_us + t.edge_queue_us + t.edge_compute_us;
            self.decode_steps += 1;
        }
        self.text.push_str(piece);
        (now.duration_since(self.since) >= PERIOD).then(|| self.report(now, false))
    }

    /// The last report, when the generation has ended.
    pub fn finish(&mut self, now: Instant) -> pb::ReportRequest {
        self.report(now, true)
    }

    fn report(&mut self, now: Instant, finished: bool) -> pb::ReportRequest {
        let elapsed = now.duration_since(self.since).as_secs_f64();
        let r = pb::ReportRequest {
            subscriber: self.name.clone(),
            split: Some(self.split),
            tokens: self.tokens,
            tokens_per_s: if elapsed > 0.0 { f64::from(self.interval_tokens) / elapsed } else { 0.0 },
            token_latency_ms: if self.decode_steps > 0 { self.decode_us as f64 / 1e3 / f64::from(self.decode_steps) } else { 0.0 },
            text: tail(&self.text, MAX_TEXT_BYTES).to_string(),
            finished,
        };
        (self.since, self.interval_tokens, self.decode_us, self.decode_steps) = (now, 0, 0, 0);
        r
    }
}

/// The last `max` bytes of `s` or fewer, starting at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(rows: usize, k: usize, latency_us: u64) -> TokenEvent {
        TokenEvent {
            id: 1,
            logprob: 0.0,
            rows,
            k,
            epoch: 9,
            ue_compute_us: latency_us / 2,
            network_us: latency_us / 4,
            uplink_us: 0,
            downlink_us: 0,
            edge_queue_us: 0,
            edge_compute_us: latency_us / 4,
            edge_batch: 1,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    #[test]
    fn reports_come_at_most_every_period_and_cover_the_interval() {
        let t0 = Instant::now();
        let mut p = Progress::new("ue-1".into(), t0);
        assert!(p.token(&token(12, 1, 80_000), "The", t0 + Duration::from_millis(100)).is_none());
        assert!(p.token(&token(1, 1, 20_000), " cat", t0 + Duration::from_millis(120)).is_none());
        let r = p.token(&token(1, 27, 40_000), " sat", t0 + Duration::from_millis(500)).unwrap();
        assert_eq!((r.subscriber.as_str(), r.tokens, r.text.as_str(), r.split, r.finished), ("ue-1", 3, "The cat sat", Some(pb::Split { k: 27, epoch: 9 }), false));
        assert!((r.tokens_per_s - 6.0).abs() < 1e-9, "3 tokens in 0.5 s: {}", r.tokens_per_s);
        assert!((r.token_latency_ms - 30.0).abs() < 1e-9, "the decode steps' mean, not the prefill's: {}", r.token_latency_ms);
        let r = p.finish(t0 + Duration::from_millis(1500));
        assert_eq!((r.tokens, r.tokens_per_s, r.token_latency_ms, r.finished), (3, 0.0, 0.0, true));
    }

    #[test]
    fn the_text_is_cut_at_a_character_boundary() {
        let s = format!("ab{}", "é".repeat(MAX_TEXT_BYTES / 2));
        let t = tail(&s, MAX_TEXT_BYTES);
        assert_eq!(t.len(), MAX_TEXT_BYTES);
        assert!(t.starts_with('é'));
        assert_eq!(tail("é", 1), "");
        assert_eq!(tail("short", MAX_TEXT_BYTES), "short");
    }
}
