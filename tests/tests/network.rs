//! UE → channel emulator → edge over real gRPC on 127.0.0.1, against the monolithic model.

use splitinfer_tests::{Testbed, generate_via, greedy_request, monolithic, shared_model};

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f32_wire_through_the_emulator_gives_the_monolithic_tokens_exactly() {
    let bed = Testbed::start().await;
    let l = shared_model().model.n_layers();
    for prompt in PROMPTS {
        let want = monolithic(&greedy_request(prompt, 0, 12));
        for k in [0, 1, l / 2, l] {
            let report = generate_via(&bed.emulator_url, greedy_request(prompt, k, 12)).await.unwrap();
            let got: Vec<(u32, f32)> = report.tokens.iter().map(|t| (t.id, t.logprob)).collect();
            assert_eq!(got, want, "{prompt:?} k={k}");
        }
    }
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f16_wire_agreement_is_reported() {
    let bed = Testbed::start().await;
    let l = shared_model().model.n_layers();
    let (mut same, mut total) = (0usize, 0usize);
    for prompt in PROMPTS {
        let want: Vec<u32> = monolithic(&greedy_request(prompt, 0, 24)).into_iter().map(|t| t.0).collect();
        for k in [1, l / 2] {
            let mut req = greedy_request(prompt, k, 24);
            req.wire = split_core::wire::WireDType::F16;
            let got = generate_via(&bed.emulator_url, req).await.unwrap().token_ids();
            // Tokens after the first difference continue a different text; count the common prefix.
            let prefix = want.iter().zip(&got).take_while(|(a, b)| a == b).count();
            eprintln!("f16 wire, k={k}, {prompt:?}: {prefix}/{} tokens before the first difference", want.len());
            same += prefix;
            total += want.len();
        }
    }
    eprintln!("f16 wire: {same}/{total} tokens match the f32 run before the first divergence");
    // f16 keeps 11 significant bits; a divergence needs a near-tie, so most tokens agree.
    assert!(same * 2 >= total, "only {same}/{total} tokens agree with f16 on the wire");
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_sessions_match_their_sequential_runs() {
    let bed = Testbed::start().await;
    let l = shared_model().model.n_layers();
    let mut reqs = vec![
        greedy_request(PROMPTS[0], 0, 10),
        greedy_request(PROMPTS[1], 7, 10),
        greedy_request(PROMPTS[2], l / 2, 10),
        greedy_request("The weather today is", l, 10),
    ];
    // One sampled session: its seeded sampler lives on the edge and must not see other sessions.
    reqs[1].sampling = split_core::sampling::SamplingConfig { temperature: 0.9, top_k: Some(40), top_p: Some(0.95), seed: 11 };
    let mut sequential = Vec::new();
    for r in &reqs {
        sequential.push(generate_via(&bed.emulator_url, r.clone()).await.unwrap().token_ids());
    }
    let concurrent = futures_join(&bed.emulator_url, &reqs).await;
    assert_eq!(concurrent, sequential);
    bed.shutdown().await;
}

async fn futures_join(url: &str, reqs: &[ue_client::GenerateRequest]) -> Vec<Vec<u32>> {
    let handles: Vec<_> = reqs
        .iter()
        .cloned()
        .map(|r| {
            let url = url.to_string();
            tokio::spawn(async move { generate_via(&url, r).await.unwrap().token_ids() })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_prefill_gives_the_same_tokens() {
    let bed = Testbed::start().await;
    let want = generate_via(&bed.edge_url, greedy_request(PROMPTS[1], 10, 8)).await.unwrap().token_ids();
    let mut req = greedy_request(PROMPTS[1], 10, 8);
    req.prefill_chunk = 4;
    let report = generate_via(&bed.emulator_url, req).await.unwrap();
    assert_eq!(report.token_ids()[0], want[0], "first token after a chunked prefill");
    bed.shutdown().await;
}
