//! The channel models on the live stream: generation completes under every scenario, the
//! emulator's perturbations are seeded, and the offline `ppl` sees the same channel.

use split_core::channel::args::Preset;
use splitinfer_tests::{Testbed, generate_via, greedy_request, monolithic};

async fn run_under(preset: Preset, erasure_p: Option<f64>, seed: u64) -> Vec<u32> {
    let bed = Testbed::start_full(edge_server::EdgeConfig::for_tests(), |c| {
        c.channel = true;
        c.channel_args.preset = preset;
        c.channel_args.erasure_p = erasure_p;
        c.channel_args.channel_seed = seed;
    })
    .await;
    let report = generate_via(&bed.emulator_url, greedy_request("The capital of France is", 8, 16)).await.unwrap();
    // Complete: all 16 tokens, or an end-of-sequence token the perturbed model chose earlier.
    assert!(report.tokens.len() == 16 || report.stopped_at_eos, "{preset:?}: generation stopped after {}", report.tokens.len());
    // Air time is on the path: at least the 1 ms propagation per step shows up as network time.
    assert!(report.tokens.iter().all(|t| t.network_us >= 1_000), "{preset:?}: no air time on the path");
    bed.shutdown().await;
    report.token_ids()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_completes_under_every_scenario_and_replays_by_seed() {
    let clean: Vec<u32> = monolithic(&greedy_request("The capital of France is", 8, 16)).into_iter().map(|t| t.0).collect();
    // A clean channel with air time only: the tokens are the monolithic ones.
    assert_eq!(run_under(Preset::Static, None, 0).await, clean);
    for preset in [Preset::Good, Preset::Bad] {
        let a = run_under(preset, None, 5).await;
        assert_eq!(a, run_under(preset, None, 5).await, "{preset:?}: same seed, different tokens");
        eprintln!("{preset:?}: {} of {} tokens equal the clean run's", a.iter().zip(&clean).filter(|(x, y)| x == y).count(), a.len());
    }
    // The paper's reference mode at a heavy operating point changes the text.
    let erased = run_under(Preset::Static, Some(0.3), 1).await;
    assert_ne!(erased, clean, "30% element erasure at k=8 should change the greedy text");
}
