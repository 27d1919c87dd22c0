use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    let mut first = true;
    let report = ue_client::generate_resilient(&endpoints, recovery, model, req, source, |t| {
        metrics.token(t, std::mem::take(&mut first));
        if json || tokenizer.is_eos(t.id) {
            return;
        }
        ids.push(t.id);
        if let Ok(piece) = tokenizer.decode_incremental(&ids, &mut printed) {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        }
    })
    .await
    .context("is the edge server (or the channel emulator) running and reachable?")?;
    for m in &report.migrations {
        metrics.split_change(m);
    }
    if follower.is_some() {
        // The last acknowledgement goes out in the background: give it a moment before exiting.
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
