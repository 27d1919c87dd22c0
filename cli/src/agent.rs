//! `splitinfer agent status|override`: a client of a running agent's gRPC API.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use serde_json::{Value, json};
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Show the agent's current split and why, the observation it is based on, the policy and
    /// its parameters, any override, the subscribers with their acknowledged epochs and the
    /// recent decisions.
    Status {
        /// The agent's gRPC address.
        #[arg(long, env = "SPLITINFER_AGENT", default_value = "http://127.0.0.1:50053")]
        agent: String,
        /// Print the status as one JSON object (field names as in the .proto, snake_case; enums by
        /// name; non-finite numbers as the strings "Infinity", "-Infinity", "NaN").
        #[arg(long)]
        json: bool,
        /// Most recent decisions to show (0 = all the agent keeps).
        #[arg(long, default_value_t = 10)]
        history: u32,
        #[command(flatten)]
        tls: splitinfer_telemetry::TlsArgs,
    },
    /// Pin k for experiments (--k N), or hand control back to the policy (--release).
    Override {
        #[arg(long, env = "SPLITINFER_AGENT", default_value = "http://127.0.0.1:50053")]
        agent: String,
        /// Pin this split (0..=L) until released; a decision is issued at once.
        #[arg(long, required_unless_present = "release", conflicts_with = "release")]
        k: Option<u32>,
        /// Return control to the policy; it decides at its next observation.
        #[arg(long)]
        release: bool,
        /// Why, recorded in the decision ("override: <reason>").
        #[arg(long, default_value = "")]
        reason: String,
        /// The agent's control token (its --control-token).
        #[arg(long, env = "AGENT_CONTROL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        tls: splitinfer_telemetry::TlsArgs,
    },
}

pub fn run(command: AgentCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        match command {
            AgentCommand::Status { agent, json, history, tls } => {
                let mut client = connect(&agent, &tls).await?;
                let status = client.status(pb::StatusRequest { history }).await.map_err(|s| refused(&agent, &s))?.into_inner();
                if json {
                    println!("{}", serde_json::to_string_pretty(&status_json(&status))?);
                } else {
                    print!("{}", status_table(&agent, &status));
                }
                Ok(())
            }
            AgentCommand::Override { agent, k, release, reason, token, tls } => {
                let mut client = connect(&agent, &tls).await?;
                let action = match k {
                    Some(k) => pb::override_request::Action::PinK(k),
                    None => pb::override_request::Action::Release(release),
                };
                let mut request = tonic::Request::new(pb::OverrideRequest { action: Some(action), reason });
                if let Some(t) = token {
                    let value = format!("Bearer {t}").parse().map_err(|_| anyhow!("the control token must be printable ASCII"))?;
                    request.metadata_mut().insert("authorization", value);
                }
                let response = client.r#override(request).await.map_err(|s| refused(&agent, &s))?.into_inner();
                match response.decision {
                    Some(d) => println!("in force: {}", decision_line(&d)),
                    None => println!("released; no decision yet"),
                }
                Ok(())
            }
        }
    })
}

async fn connect(url: &str, tls: &splitinfer_telemetry::TlsArgs) -> Result<AgentClient<Channel>> {
    let endpoint = splitinfer_telemetry::Tls::load(tls)?.endpoint(url).context("--agent")?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot reach the agent at {url}"))?;
    Ok(AgentClient::new(channel))
}

fn refused(url: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow!("the agent at {url} answered {}: {}", code_name(s.code()), s.message())
}

/// The canonical gRPC name of a status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// UTC `YYYY-MM-DD HH:MM:SS.mmm` of a Unix time in milliseconds.
fn utc(unix_ms: u64) -> String {
    let (days, ms_of_day) = ((unix_ms / 86_400_000) as i64, unix_ms % 86_400_000);
    // Civil date from days since 1970-01-01 (proleptic Gregorian, eras of 400 years).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{ms:03}")
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("NaN")
    } else if v > 0.0 {
        json!("Infinity")
    } else {
        json!("-Infinity")
    }
}

fn observation_json(o: &pb::Observation) -> Value {
    json!({
        "unix_ms": o.unix_ms,
        "scenario": o.scenario,
        "snr_db": num(o.snr_db),
        "fading_m": num(o.fading_m),
        "loss_rate": num(o.loss_rate),
        "erasure_rate": num(o.erasure_rate),
        "mean_delay_ms": num(o.mean_delay_ms),
        "impaired": o.impaired,
        "channel_version": o.channel_version,
    })
}

fn decision_json(d: &pb::Decision) -> Value {
    let split = d.split.unwrap_or_default();
    json!({
        "split": { "k": split.k, "epoch": split.epoch },
        "reason": d.reason,
        "inputs": d.inputs.as_ref().map(observation_json),
        "policy": d.policy,
        "unix_ms": d.unix_ms,
        "overridden": d.overridden,
    })
}

fn status_json(s: &pb::AgentStatus) -> Value {
    let params: serde_json::Map<String, Value> = sorted_params(s).into_iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    json!({
        "current": s.current.as_ref().map(decision_json),
        "observation": s.observation.as_ref().map(observation_json),
        "policy": s.policy,
        "policy_params": params,
        "subscribers": s.subscribers.iter().map(|x| json!({
            "name": x.name,
            "role": role_name(x.role),
            "connected": x.connected,
            "acked_epoch": x.acked_epoch,
            "acked_k": x.acked_k,
            "acked_unix_ms": x.acked_unix_ms,
        })).collect::<Vec<_>>(),
        "history": s.history.iter().map(decision_json).collect::<Vec<_>>(),
        "n_layers": s.n_layers,
        "pinned_k": s.pinned_k,
        "stats_connected": s.stats_connected,
        "observations": s.observations,
        "min_dwell_ms": s.min_dwell_ms,
    })
}

fn sorted_params(s: &pb::AgentStatus) -> Vec<(&String, &String)> {
    let mut params: Vec<_> = s.policy_params.iter().collect();
    params.sort();
    params
}

fn role_name(role: i32) -> &'static str {
    pb::Role::try_from(role).map_or("ROLE_UNKNOWN", |r| r.as_str_name())
}

fn db(v: f64) -> String {
    if v.is_finite() { format!("{v:.1} dB") } else { format!("{v} dB") }
}

fn decision_line(d: &pb::Decision) -> String {
    let split = d.split.unwrap_or_default();
    let by = if d.overridden { "override".to_string() } else { format!("policy {}", d.policy) };
    format!("k={} epoch={} ({by}, {} UTC): {}", split.k, split.epoch, utc(d.unix_ms), d.reason)
}

fn observation_line(o: &pb::Observation) -> String {
    format!(
        "{} ({}), snr {}, m {}, loss {:.4}, erasure {:.4}, delay {:.1} ms, channel v{}, at {} UTC",
        o.scenario,
        if o.impaired { "impaired" } else { "clean" },
        db(o.snr_db),
        o.fading_m,
        o.loss_rate,
        o.erasure_rate,
        o.mean_delay_ms,
        o.channel_version,
        utc(o.unix_ms)
    )
}

fn status_table(url: &str, s: &pb::AgentStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let params: Vec<String> = sorted_params(s).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "agent        {url}");
    let _ = writeln!(out, "policy       {} ({}); L={}, min dwell {} ms", s.policy, params.join(", "), s.n_layers, s.min_dwell_ms);
    let _ = writeln!(out, "current      {}", s.current.as_ref().map_or("none yet".into(), decision_line));
    let _ = writeln!(out, "pinned       {}", s.pinned_k.map_or("no".into(), |k| format!("k={k} (override)")));
    let _ = writeln!(
        out,
        "statistics   {}, {} observations",
        if s.stats_connected { "connected" } else { "NOT connected (keeping the decision in force)" },
        s.observations
    );
    let _ = writeln!(out, "observation  {}", s.observation.as_ref().map_or("none yet".into(), observation_line));
    let _ = writeln!(out, "\nsubscribers");
    if s.subscribers.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let _ = writeln!(out, "  {:<16} {:<10} {:<10} {:>11} {:>7}  ACKED AT (UTC)", "NAME", "ROLE", "CONNECTED", "ACKED EPOCH", "ACKED K");
        for x in &s.subscribers {
            let role = role_name(x.role).trim_start_matches("ROLE_");
            let (epoch, k, at) = if x.acked_epoch == 0 { ("-".into(), "-".into(), "-".into()) } else { (x.acked_epoch.to_string(), x.acked_k.to_string(), utc(x.acked_unix_ms)) };
            let _ = writeln!(out, "  {:<16} {:<10} {:<10} {:>11} {:>7}  {}", x.name, role, if x.connected { "yes" } else { "no" }, epoch, k, at);
        }
    }
    let _ = writeln!(out, "\nhistory (oldest first)");
    if s.history.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let _ = writeln!(out, "  {:>6} {:>4}  {:<23}  {:<10}  REASON", "EPOCH", "K", "TIME (UTC)", "BY");
        for d in &s.history {
            let split = d.split.unwrap_or_default();
            let by = if d.overridden { "override" } else { d.policy.as_str() };
            let _ = writeln!(out, "  {:>6} {:>4}  {:<23}  {:<10}  {}", split.epoch, split.k, utc(d.unix_ms), by, d.reason);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20.123");
        assert_eq!(utc(4_102_444_799_999), "2099-12-31 23:59:59.999");
    }

    #[test]
    fn json_keeps_non_finite_numbers_as_strings() {
        let o = pb::Observation { snr_db: f64::INFINITY, loss_rate: f64::NAN, ..Default::default() };
        let v = observation_json(&o);
        assert_eq!((v["snr_db"].as_str(), v["loss_rate"].as_str()), (Some("Infinity"), Some("NaN")));
    }

    #[test]
    fn the_table_shows_decisions_and_subscribers() {
        let d = pb::Decision { split: Some(pb::Split { k: 27, epoch: 4 }), reason: "snr 5.0 dB < 10.0 dB: row 3 of t.csv → k=27".into(), policy: "threshold".into(), ..Default::default() };
        let s = pb::AgentStatus {
            current: Some(d.clone()),
            history: vec![d],
            policy: "threshold".into(),
            subscribers: vec![pb::SubscriberStatus { name: "ue".into(), role: pb::Role::Ue.into(), connected: true, acked_epoch: 4, acked_k: 27, acked_unix_ms: 0 }],
            n_layers: 30,
            ..Default::default()
        };
        let t = status_table("http://x", &s);
        assert!(t.contains("current      k=27 epoch=4 (policy threshold, 1970-01-01 00:00:00.000 UTC): snr 5.0 dB"), "{t}");
        assert!(t.contains("  ue               UE         yes                  4      27  1970-01-01"), "{t}");
        assert!(t.contains("       4   27  1970-01-01 00:00:00.000  threshold   snr 5.0"), "{t}");
    }
}
