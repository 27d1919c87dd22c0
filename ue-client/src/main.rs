use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use split_core::bundle::{LoadedModel, resolve_model};
use split_core::sampling::SamplingConfig;
use ue_client::{GenerateRequest, UeConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let config = UeConfig::parse();
    splitinfer_telemetry::init(config.log_json);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: UeConfig) -> anyhow::Result<()> {
    let sampling = SamplingConfig { temperature: config.temperature, top_k: config.top_k, top_p: config.top_p, seed: config.seed };
    sampling.validate()?;
    let path = resolve_model(config.model.as_deref(), &config.model_name)?;
    let model = Arc::new(tokio::task::spawn_blocking(move || LoadedModel::load(&path)).await??);
    let split = model.model.split_point(config.split)?;
    let calibration = match &config.calibration {
        Some(p) => Some(Arc::new(split_core::calibration::Calibration::load(p, Some(&model.sha256))?)),
        None => None,
    };
    if let Some(path) = &config.score {
        return score(&config, model, calibration, path).await;
    }
    let prompt = if config.chat {
        format!("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", config.prompt)
    } else {
        config.prompt.clone()
    };
    let prompt_ids = model.tokenizer.encode(&prompt)?;
    let tls = splitinfer_telemetry::Tls::load(&config.tls)?;
    for url in &config.edge {
        tls.endpoint(url).map_err(|e| anyhow::anyhow!("--edge: {e}"))?;
    }
    let endpoints = ue_client::Endpoints {
        urls: config.edge.clone(),
        tls: tls.clone(),
        max_message_bytes: config.max_message_bytes,
        connect_timeout: Duration::from_millis(config.connect_timeout_ms),
    };
    let recovery = ue_client::Recovery::new(Duration::from_millis(config.resume_deadline_ms), Duration::from_millis(config.step_timeout_ms.max(1)));
    let req = GenerateRequest {
        prompt: prompt_ids,
        split,
        wire: config.wire_dtype,
        max_new_tokens: config.max_new_tokens,
        ignore_eos: config.ignore_eos,
        sampling,
        prefill_chunk: config.prefill_chunk,
        client: config.name.clone(),
        migration: config.migration,
        link_mbps: config.link_mbps,
        edge_speedup: config.edge_speedup,
        normalization: config.normalization,
        concealment: config.concealment,
        calibration,
    };
    let tokenizer = model.tokenizer.clone();
    let mut ids = Vec::new();
    let mut printed = 0usize;
    if !config.json {
        print!("{}{}", config.prompt, if config.chat { "\n" } else { "" });
        let _ = std::io::stdout().flush();
    }
    let json = config.json;
    // The agent, if any, is followed in the background; decisions apply at token boundaries.
    let stop = tokio_util::sync::CancellationToken::new();
    let follower = config
        .agent
        .clone()
        .map(|url| agent::follow::Follower::spawn_tls(url, tls.clone(), config.name.clone(), splitinfer_proto::v1::Role::Ue, stop.clone()));
    if let Some(f) = &follower {
        // A running agent hands over its current decision at once: open the session at that split
        // if it comes within a second; otherwise start at --split and follow when it comes.
        let mut rx = f.decisions();
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|d| d.is_some())).await;
    }
    let source: &dyn ue_client::SplitSource = match &follower {
        Some(f) => f,
        None => &ue_client::FixedSplit,
    };
    let metrics = ue_client::metrics::UeMetrics::new();
    if let Some(addr) = config.metrics_listen {
        let m = metrics.clone();
        splitinfer_telemetry::metrics::start(Some(addr), std::sync::Arc::new(move || m.text()), stop.clone())
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    // What the agent's dashboard shows of this generation, when there is an agent.
    let mut progress = follower.as_ref().map(|_| ue_client::progress::Progress::new(config.name.clone(), Instant::now()));
    let mut first = true;
    let report = ue_client::generate_resilient(&endpoints, recovery, model, req, source, |t| {
        metrics.token(t, std::mem::take(&mut first));
        let mut piece = String::new();
        if !tokenizer.is_eos(t.id) && (!json || progress.is_some()) {
            ids.push(t.id);
            piece = tokenizer.decode_incremental(&ids, &mut printed).unwrap_or_default();
        }
        if !json && !piece.is_empty() {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        }
        if let (Some(p), Some(f)) = (progress.as_mut(), &follower)
            && let Some(r) = p.token(t, &piece, Instant::now())
        {
            f.report(r);
        }
    })
    .await
    .context("is the edge server (or the channel emulator) running and reachable?")?;
    for m in &report.migrations {
        metrics.split_change(m);
    }
    if let (Some(p), Some(f)) = (progress.as_mut(), &follower) {
        f.report(p.finish(Instant::now()));
    }
    if follower.is_some() {
        // The last acknowledgement and report go out in the background: give them a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let text_ids: Vec<u32> = report.token_ids().into_iter().filter(|&id| !tokenizer.is_eos(id)).collect();
    if config.json {
        let mut v = serde_json::to_value(&report)?;
        v["text"] = serde_json::Value::String(tokenizer.decode(&text_ids)?);
        v["token_ids"] = serde_json::to_value(report.token_ids())?;
        println!("{v}");
    } else {
        println!();
        eprint!("{}", report.breakdown());
    }
    Ok(())
}

/// `--score FILE`: the text's perplexity through the link, at the first `--edge`.
async fn score(
    config: &UeConfig,
    model: Arc<LoadedModel>,
    calibration: Option<Arc<split_core::calibration::Calibration>>,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut tokens = model.tokenizer.encode(&text)?;
    if config.max_tokens > 0 {
        tokens.truncate(config.max_tokens);
    }
    let tls = splitinfer_telemetry::Tls::load(&config.tls)?;
    let url = config.edge.first().context("--edge names no server")?;
    let mut client = ue_client::connect_tls(url, &tls, config.max_message_bytes, Duration::from_millis(config.connect_timeout_ms)).await?;
    let req = ue_client::score::ScoreRequest {
        tokens,
        split: model.model.split_point(config.split)?,
        ppl: split_core::perplexity::PplConfig { window: config.window, stride: config.stride },
        link: split_core::transform::LinkSetup { dtype: config.wire_dtype, normalization: config.normalization, concealment: config.concealment },
        calibration,
        client: config.name.clone(),
        window_timeout: Duration::from_millis(config.step_timeout_ms.max(1)),
    };
    let json = config.json;
    let report = ue_client::score::score(&mut client, model, &req, &mut |done, total| {
        if !json {
            eprintln!("score: window {done}/{total}");
        }
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "ppl {:.4} (mean NLL {:.6}) over {} tokens in {} windows at k={} through {url}, {:.1}s (UE layers {:.0} ms, uplink air time {:.0} ms, edge {:.0} ms)",
            report.ppl, report.mean_nll, report.scored_tokens, report.windows, report.k, report.seconds, report.ue_compute_ms, report.uplink_ms, report.edge_compute_ms
        );
    }
    Ok(())
}
