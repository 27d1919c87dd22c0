//! Agent configuration: every option is a flag and an `AGENT_*` environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ConfigError;
use crate::policy::threshold::Table;
use crate::policy::{Fixed, Learned, Policy, Threshold};

/// The split policies the agent can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyKind {
    /// Always --k.
    Fixed,
    /// The table in --thresholds: SNR and loss thresholds → k, with hysteresis.
    Threshold,
    /// The network in --policy-file, trained offline by RL for --model.
    Learned,
}

pub use splitinfer_telemetry::auth::ControlToken;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "agent",
    version,
    about = "splitinfer agent: watches the channel emulator's statistics, runs a split policy and pushes split decisions (k, epoch) to the UE and the edge over gRPC"
)]
pub struct AgentConfig {
    /// Address to listen on. Loopback by default; give an interface's address (or 0.0.0.0) to
    /// serve other hosts.
    #[arg(long, env = "AGENT_LISTEN", default_value = "127.0.0.1:50053")]
    pub listen: SocketAddr,
    /// The channel emulator whose statistics stream (Emulator/WatchStats) the policy reads.
    #[arg(long, env = "AGENT_EMULATOR", default_value = "http://127.0.0.1:50052")]
    pub emulator: String,
    /// Period of the statistics stream; one observation (and policy step) per message.
    #[arg(long, env = "AGENT_STATS_PERIOD_MS", default_value_t = 500)]
    pub stats_period_ms: u32,
    /// The split policy.
    #[arg(long, env = "AGENT_POLICY", value_enum, default_value_t = PolicyKind::Threshold)]
    pub policy: PolicyKind,
    /// The split of --policy fixed (0..=L).
    #[arg(long, env = "AGENT_K")]
    pub k: Option<u32>,
    /// The CSV table of --policy threshold: header `min_snr_db,max_loss_rate,k`, first matching
    /// row wins, the last row a catch-all `-inf,1,k` (see deploy/thresholds.csv).
    #[arg(long, env = "AGENT_THRESHOLDS")]
    pub thresholds: Option<PathBuf>,
    /// The policy file of --policy learned (splitinfer-policy/1: safetensors with the network's
    /// weights and, in its metadata, the features it reads and the model it was trained for).
    #[arg(long, env = "AGENT_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
    /// The model the UE and the edge serve, by its asset name (smollm2-135m, qwen2.5-coder-0.5b).
    /// A learned policy must have been trained for it.
    #[arg(long, env = "AGENT_MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Decoder layers L of the model the UE and the edge run. Without it the agent asks the edge
    /// (Edge/Info at --edge), retrying until it answers.
    #[arg(long, env = "AGENT_N_LAYERS")]
    pub n_layers: Option<u32>,
    /// The edge server, asked for L when --n-layers is not given.
    #[arg(long, env = "AGENT_EDGE", default_value = "http://127.0.0.1:50051")]
    pub edge: String,
    /// No policy-driven change of k sooner than this after the previous decision.
    #[arg(long, env = "AGENT_MIN_DWELL_MS", default_value_t = 2_000)]
    pub min_dwell_ms: u64,
    /// A proposal must be the same on this many consecutive observations to become a decision.
    #[arg(long, env = "AGENT_CONFIRM", default_value_t = 2)]
    pub confirm: u32,
    /// Threshold policy: moving to a better row needs its min_snr_db plus this margin.
    #[arg(long, env = "AGENT_HYSTERESIS_DB", default_value_t = 1.0, allow_negative_numbers = true)]
    pub hysteresis_db: f64,
    /// Bearer token that authorizes Override (metadata `authorization: Bearer <token>`).
    /// Without it, overrides are refused.
    #[arg(long, env = "AGENT_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<ControlToken>,
    /// Decisions kept for the status API.
    #[arg(long, env = "AGENT_HISTORY", default_value_t = 256)]
    pub history: usize,
    /// Serve Prometheus metrics (OpenMetrics text) on this address, e.g. 0.0.0.0:9103.
    #[arg(long, env = "AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the live dashboard (one web page: channel, decisions, each UE's rate, latency and
    /// text, updated by server-sent events) on this address, e.g. 127.0.0.1:8053. It has no
    /// authentication: keep it on loopback or a private network.
    #[arg(long, env = "AGENT_DASHBOARD_LISTEN")]
    pub dashboard_listen: Option<SocketAddr>,
    /// Log as JSON lines.
    #[arg(long, env = "AGENT_LOG_JSON")]
    pub log_json: bool,
    #[command(flatten)]
    pub tls: splitinfer_telemetry::TlsArgs,
}

impl AgentConfig {
    /// The threshold table's path, if one is given.
    pub fn thresholds(&self) -> Option<&Path> {
        self.thresholds.as_deref()
    }

    /// For tests and embedding: the fixed policy at k = 1 on a 30-layer model (so no edge is
    /// needed), statistics from `emulator` every 100 ms, the production dwell and confirmation
    /// rules, no control token. The listen address is the caller's business.
    pub fn for_tests(emulator: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            emulator: emulator.into(),
            stats_period_ms: 100,
            policy: PolicyKind::Fixed,
            k: Some(1),
            thresholds: None,
            policy_file: None,
            model: "smollm2-135m".into(),
            n_layers: Some(30),
            edge: "http://127.0.0.1:50051".into(),
            min_dwell_ms: 2_000,
            confirm: 2,
            hysteresis_db: 1.0,
            control_token: None,
            history: 256,
            metrics_listen: None,
            dashboard_listen: None,
            log_json: false,
            tls: Default::default(),
        }
    }

    /// Checks everything that can be checked before L is known (and, when --n-layers is given,
    /// the policy against it), so `main` can refuse a bad configuration before serving.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.stats_period_ms == 0 {
            return invalid("--stats-period-ms must be at least 1".into());
        }
        if self.confirm == 0 {
            return invalid("--confirm must be at least 1 (1 = act on the first observation)".into());
        }
        if self.history == 0 {
            return invalid("--history must be at least 1".into());
        }
        if !(self.hysteresis_db.is_finite() && self.hysteresis_db >= 0.0) {
            return invalid(format!("--hysteresis-db {} must be a finite number >= 0", self.hysteresis_db));
        }
        if self.n_layers == Some(0) {
            return invalid("--n-layers must be at least 1".into());
        }
        let tls = splitinfer_telemetry::Tls::load(&self.tls).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        // --edge is only dialed to learn L when --n-layers is not given.
        let edge = self.n_layers.is_none().then_some(("--edge", &self.edge));
        for (flag, url) in [("--emulator", &self.emulator)].into_iter().chain(edge) {
            if let Err(e) = tls.endpoint(url) {
                return invalid(format!("{flag}: {e}"));
            }
        }
        if self.model.trim().is_empty() {
            return invalid("--model must name the model the UE and the edge serve, e.g. smollm2-135m".into());
        }
        match self.policy {
            PolicyKind::Fixed if self.k.is_none() => return invalid("--policy fixed needs --k N (or AGENT_K)".into()),
            PolicyKind::Threshold if self.thresholds().is_none() => {
                return invalid("--policy threshold needs --thresholds FILE (or AGENT_THRESHOLDS); deploy/thresholds.csv is an example".into());
            }
            PolicyKind::Learned if self.policy_file.is_none() => {
                return invalid(format!("--policy learned needs --policy-file FILE (or AGENT_POLICY_FILE), a policy trained for --model {}", self.model));
            }
            _ => {}
        }
        // Each policy's own option with another policy is a mistake, not something to ignore.
        if let Some(k) = self.k.filter(|_| self.policy != PolicyKind::Fixed) {
            return invalid(format!("--k {k} applies to --policy fixed only"));
        }
        if let Some(p) = self.thresholds().filter(|_| self.policy != PolicyKind::Threshold) {
            return invalid(format!("--thresholds {} applies to --policy threshold only", p.display()));
        }
        if let Some(p) = self.policy_file.as_ref().filter(|_| self.policy != PolicyKind::Learned) {
            return invalid(format!("--policy-file {} applies to --policy learned only", p.display()));
        }
        match (self.n_layers, self.policy) {
            (Some(n), _) => self.policy(n).map(drop),
            // L comes from the edge later; check what can be checked without it now.
            (None, PolicyKind::Threshold) => self.thresholds().map_or(Ok(()), |p| Table::load(p).map(drop)),
            (None, PolicyKind::Learned) => match self.policy_file.as_deref() {
                Some(p) => {
                    let learned = Learned::load(p)?;
                    // The model now (its own layer count stands in for L); L once the edge tells.
                    learned.check_deployment(&self.model, learned.file().meta.n_layers).map_err(ConfigError::from)
                }
                None => Ok(()),
            },
            (None, PolicyKind::Fixed) => Ok(()),
        }
    }

    /// The configured policy for a model of `n_layers` decoder layers.
    pub fn policy(&self, n_layers: u32) -> Result<Box<dyn Policy>, ConfigError> {
        match self.policy {
            PolicyKind::Fixed => {
                let k = self.k.ok_or_else(|| ConfigError::Invalid("--policy fixed needs --k N (or AGENT_K)".into()))?;
                if k > n_layers {
                    return Err(ConfigError::Invalid(format!("--k {k} is outside 0..={n_layers} (the model has {n_layers} layers)")));
                }
                Ok(Box::new(Fixed::new(k)))
            }
            PolicyKind::Threshold => {
                let path = self.thresholds().ok_or_else(|| ConfigError::Invalid("--policy threshold needs --thresholds FILE".into()))?;
                let table = Table::load(path)?;
                table.check_layers(n_layers)?;
                Ok(Box::new(Threshold::new(table, self.hysteresis_db)))
            }
            PolicyKind::Learned => {
                let path = self.policy_file.as_deref().ok_or_else(|| ConfigError::Invalid("--policy learned needs --policy-file FILE".into()))?;
                let learned = Learned::load(path)?;
                learned.check_deployment(&self.model, n_layers)?;
                Ok(Box::new(learned))
            }
        }
    }

    pub fn min_dwell(&self) -> Duration {
        Duration::from_millis(self.min_dwell_ms)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<AgentConfig, clap::Error> {
        AgentConfig::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
    }

    fn scratch(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("splitinfer-agent-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A valid learned policy file: 1 feature (snr_db) → n_layers + 1 outputs, for `model`.
    fn learned_file(name: &str, model: &str, n_layers: u32) -> PathBuf {
        use crate::policy::learned::{FORMAT, Layer, PolicyFile, PolicyMeta};
        let outputs = n_layers as usize + 1;
        let meta = PolicyMeta {
            format: FORMAT.into(),
            algorithm: "mb-ppo".into(),
            model: model.into(),
            n_layers,
            features: vec!["snr_db".into()],
            lower: vec![-10.0],
            upper: vec![30.0],
            mean: vec![10.0],
            std: vec![10.0],
            activation: "tanh".into(),
            description: "config test".into(),
        };
        // Logit k = -k · snr: a better channel (higher snr) favours a smaller k.
        let layer = Layer { inputs: 1, outputs, weight: (0..outputs).map(|k| -(k as f32)).collect(), bias: vec![0.0; outputs] };
        let path = scratch(name, "");
        PolicyFile { meta, layers: vec![layer] }.save(&path).unwrap();
        path
    }

    #[test]
    fn an_unknown_policy_is_a_clap_error_listing_the_choices() {
        let e = parse(&["--policy", "oracle"]).unwrap_err().to_string();
        assert!(e.contains("invalid value 'oracle' for '--policy <POLICY>'") && e.contains("[possible values: fixed, threshold, learned]"), "{e}");
    }

    #[test]
    fn the_learned_policy_needs_a_valid_file_for_the_served_model() {
        let good = learned_file("smol.safetensors", "smollm2-135m", 30);
        let good = good.to_str().unwrap();
        let qwen = learned_file("qwen.safetensors", "qwen2.5-coder-0.5b", 24);
        let qwen = qwen.to_str().unwrap();
        let corrupt = scratch("corrupt.safetensors", "not a policy at all");
        let corrupt = corrupt.to_str().unwrap();
        let err = |args: &[&str]| parse(args).unwrap().validate().unwrap_err().to_string();

        assert_eq!(err(&["--policy", "learned"]), "--policy learned needs --policy-file FILE (or AGENT_POLICY_FILE), a policy trained for --model smollm2-135m");
        assert_eq!(err(&["--policy", "threshold", "--thresholds", "t.csv", "--policy-file", good]), format!("--policy-file {good} applies to --policy learned only"));
        assert_eq!(err(&["--policy", "fixed", "--k", "3", "--policy-file", good]), format!("--policy-file {good} applies to --policy learned only"));
        assert_eq!(err(&["--policy", "learned", "--policy-file", good, "--k", "3"]), "--k 3 applies to --policy fixed only");
        assert!(err(&["--policy", "learned", "--policy-file", good, "--thresholds", "t.csv"]).ends_with("applies to --policy threshold only"));
        assert!(err(&["--policy", "learned", "--policy-file", good, "--model", " "]).starts_with("--model must name the model"));
        // With and without --n-layers (L from the edge later): the file is read at once.
        for n_layers in [None, Some("30")] {
            let learned = |file: &str| {
                let mut args = vec!["--policy", "learned", "--policy-file", file];
                args.extend(n_layers.map(|n| ["--n-layers", n]).iter().flatten());
                parse(&args).unwrap().validate().map_or_else(|e| e.to_string(), |()| "valid".into())
            };
            let e = learned(corrupt);
            assert!(e.starts_with(&format!("policy file {corrupt} is not a safetensors file or is truncated: ")), "{e}");
            let e = learned("/nonexistent.safetensors");
            assert!(e.starts_with("cannot read policy file /nonexistent.safetensors: "), "{e}");
            assert_eq!(learned(qwen), format!("policy file {qwen} was trained for qwen2.5-coder-0.5b but this agent serves smollm2-135m (--model)"));
            assert_eq!(learned(good), "valid");
        }
        assert_eq!(
            err(&["--policy", "learned", "--policy-file", qwen, "--model", "qwen2.5-coder-0.5b", "--n-layers", "30"]),
            format!("policy file {qwen} was trained for qwen2.5-coder-0.5b with 24 layers but the deployed model has 30 layers (--n-layers or the edge)")
        );
        let c = parse(&["--policy", "learned", "--policy-file", qwen, "--model", "qwen2.5-coder-0.5b", "--n-layers", "24"]).unwrap();
        c.validate().unwrap();
        let mut policy = c.policy(24).unwrap();
        assert_eq!((policy.name(), policy.params()["model"].as_str()), ("learned", "qwen2.5-coder-0.5b"));
        assert_eq!(policy.decide(&crate::observation::Observation::with(20.0, 0.0), None).k, 0);
        assert_eq!(policy.decide(&crate::observation::Observation::with(-8.0, 0.0), None).k, 24);
        // L from the edge: the same check when run() builds the policy.
        assert!(c.policy(30).err().unwrap().to_string().ends_with("with 24 layers but the deployed model has 30 layers (--n-layers or the edge)"));
    }

    #[test]
    fn combinations_are_checked() {
        let t = scratch("ok.csv", "min_snr_db,max_loss_rate,k\n10,0.05,2\n-inf,1,24\n");
        let t = t.to_str().unwrap();
        let err = |args: &[&str]| parse(args).unwrap().validate().unwrap_err().to_string();
        assert_eq!(err(&["--policy", "fixed"]), "--policy fixed needs --k N (or AGENT_K)");
        assert_eq!(err(&["--policy", "fixed", "--k", "31", "--n-layers", "30"]), "--k 31 is outside 0..=30 (the model has 30 layers)");
        assert!(err(&["--policy", "fixed", "--k", "3", "--thresholds", t]).contains("applies to --policy threshold only"));
        assert!(err(&[]).starts_with("--policy threshold needs --thresholds FILE"));
        assert_eq!(err(&["--thresholds", t, "--k", "3"]), "--k 3 applies to --policy fixed only");
        assert!(err(&["--thresholds", t, "--n-layers", "20"]).ends_with("line 3: k 24 is more than the model's 20 layers (k must be in 0..=20)"));
        assert!(err(&["--thresholds", "/nonexistent.csv"]).starts_with("cannot read threshold file /nonexistent.csv"));
        assert_eq!(err(&["--policy", "fixed", "--k", "3", "--confirm", "0"]), "--confirm must be at least 1 (1 = act on the first observation)");
        assert!(err(&["--policy", "fixed", "--k", "3", "--hysteresis-db", "-1"]).contains("must be a finite number >= 0"));
        assert!(err(&["--policy", "fixed", "--k", "3", "--emulator", "not a url"]).starts_with("--emulator: \"not a url\" is not a URL"));

        parse(&["--thresholds", t, "--n-layers", "30"]).unwrap().validate().unwrap();
        parse(&["--thresholds", t]).unwrap().validate().unwrap();
        parse(&["--policy", "fixed", "--k", "30", "--n-layers", "30"]).unwrap().validate().unwrap();
        AgentConfig::for_tests("http://127.0.0.1:1").validate().unwrap();
    }

    #[test]
    fn the_token_is_never_printed_and_compares_exactly() {
        let c = parse(&["--policy", "fixed", "--k", "1", "--control-token", "s3cret"]).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let t = c.control_token.unwrap();
        assert!(t.matches("s3cret") && !t.matches("s3cre") && !t.matches("s3cret!") && !t.matches(""));
    }
}
