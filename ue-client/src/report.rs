//! Per-token timings as the UE sees them, and their summary.

use serde::Serialize;

/// One generated token and what it cost. The network share is the round trip minus the edge's
/// own queue and compute time. It splits into uplink and downlink: each direction's emulated air
/// time as the emulator reports it, plus half of the rest (serialization, transport, the proxy's
/// own work), which one clock cannot attribute to a direction.
#[derive(Debug, Clone, Serialize)]
pub struct TokenEvent {
    pub id: u32,
    pub logprob: f32,
    /// Rows the step carried (the prompt length for the first token, then 1).
    pub rows: usize,
    /// Split the step ran at, and its epoch.
    pub k: usize,
    pub epoch: u64,
    pub ue_compute_us: u64,
    pub network_us: u64,
    pub uplink_us: u64,
    pub downlink_us: u64,
    pub edge_queue_us: u64,
    pub edge_compute_us: u64,
    /// Sessions the edge ran this decode step together with (1 = alone).
    pub edge_batch: u32,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// One live split change and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationEvent {
    /// Tokens generated before the change.
    pub at_token: usize,
    pub position: usize,
    pub from: usize,
    pub to: usize,
    pub epoch: u64,
    /// "transfer" or "recompute", and the cost model's estimates of both.
    pub method: String,
    pub transfer_est_ms: f64,
    pub recompute_est_ms: f64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub ue_compute_us: u64,
    pub edge_compute_us: u64,
    pub took_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationReport {
    pub session_id: String,
    /// The split the session opened with, and the one it ended at.
    pub split: usize,
    pub final_split: usize,
    pub wire: String,
    pub prompt_tokens: usize,
    pub tokens: Vec<TokenEvent>,
    pub migrations: Vec<MigrationEvent>,
    pub stopped_at_eos: bool,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Times the link broke and the session was resumed, or replayed into a new one.
    pub resumes: usize,
    pub replays: usize,
    /// Time spent replaying past steps into new sessions (0 without a replay).
    pub replay_ms: f64,
    pub elapsed_ms: f64,
}

impl GenerationReport {
    pub fn token_ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }

    /// A small table: prefill (first token) and decode (the rest), mean and p50/p95 per part.
    pub fn breakdown(&self) -> String {
        let mut out = String::new();
        let (prefill, decode) = match self.tokens.split_first() {
            Some((p, d)) => (p, d),
            None => return "no tokens generated\n".into(),
        };
        out.push_str(&format!(
            "split k={}{} wire {} | {} prompt tokens, {} generated in {:.0} ms | {} bytes up ({:.0} per decode token)\n",
            self.tokens.first().map_or(self.split, |t| t.k),
            if self.migrations.is_empty() { String::new() } else { format!(" → {} ({} changes)", self.final_split, self.migrations.len()) },
            self.wire,
            self.prompt_tokens,
            self.tokens.len(),
            self.elapsed_ms,
            self.bytes_up,
            if decode.is_empty() { 0.0 } else { decode.iter().map(|t| t.bytes_up as f64).sum::<f64>() / decode.len() as f64 }
        ));
        out.push_str("phase    part          mean ms    p50 ms    p95 ms\n");
        type Part = (&'static str, fn(&TokenEvent) -> u64);
        let parts: [Part; 5] = [
            ("ue compute", |t| t.ue_compute_us),
            ("uplink", |t| t.uplink_us),
            ("edge queue", |t| t.edge_queue_us),
            ("edge compute", |t| t.edge_compute_us),
            ("downlink", |t| t.downlink_us),
        ];
        for (phase, events) in [("prefill", std::slice::from_ref(prefill)), ("decode", decode)] {
            if events.is_empty() {
                continue;
            }
            for (name, f) in parts {
                let mut v: Vec<u64> = events.iter().map(f).collect();
                v.sort_unstable();
                let mean = v.iter().sum::<u64>() as f64 / v.len() as f64 / 1e3;
                let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
                out.push_str(&format!("{phase:<8} {name:<13} {mean:>8.2}  {:>8.2}  {:>8.2}\n", pct(0.5), pct(0.95)));
            }
        }
        for m in &self.migrations {
            out.push_str(&format!(
                "split    {:>2} -> {:<2} epoch {} after token {} by {} in {:.1} ms ({} B up, {} B down; est. transfer {:.1} ms, recompute {:.1} ms)\n",
                m.from, m.to, m.epoch, m.at_token, m.method, m.took_ms, m.bytes_up, m.bytes_down, m.transfer_est_ms, m.recompute_est_ms
            ));
        }
        if decode.len() > 1 {
            let total_us: u64 = decode.iter().map(|t| t.ue_compute_us + t.network_us + t.edge_queue_us + t.edge_compute_us).sum();
            out.push_str(&format!("decode   {:.1} tokens/s\n", decode.len() as f64 / (total_us as f64 / 1e6)));
        }
        out
    }
}
