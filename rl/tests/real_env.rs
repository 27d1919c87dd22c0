//! The real environment on the real model: its cached-boundary evaluation is the perplexity the
//! split model gives through the same channel with the same seed, and it counts what it does.

use split_core::bundle::LoadedModel;
use split_core::boundary::ChannelBoundary;
use split_core::channel::Channel;
use split_core::perplexity::{PplConfig, perplexity};
use split_core::wire::WireDType;
use splitinfer_rl::real::{ChannelState, RealEnv};
use splitinfer_tests::{default_eval_text, default_model};

#[test]
fn cached_boundaries_give_the_split_models_perplexity_and_every_evaluation_is_counted() {
    let loaded = LoadedModel::load(&default_model()).unwrap();
    let text = std::fs::read_to_string(default_eval_text()).unwrap();
    let mut tokens = loaded.tokenizer.encode(&text).unwrap();
    tokens.truncate(160);
    // Two windows, so the channel's draws run on across windows as in `perplexity`.
    let cfg = PplConfig { window: 80, stride: 80 };
    let reference = LoadedModel::load(&default_model()).unwrap().model;
    let mut env = RealEnv::new(loaded.model, tokens.clone(), cfg, WireDType::F32).unwrap();
    let states = [ChannelState::Fading { snr_db: 5.0, m: 1.0 }, ChannelState::Erasure { p: 0.1 }];
    for (i, (k, state)) in [(0, states[0]), (7, states[0]), (30, states[1]), (19, states[1])].into_iter().enumerate() {
        let mut boundary = ChannelBoundary::plain(Channel::new(state.channel(), 11).unwrap(), WireDType::F32);
        let want = perplexity(&reference, &tokens, cfg, reference.split_point(k).unwrap(), &mut boundary, &mut |_, _| {}).unwrap();
        let got = env.ppl(k, state, 11).unwrap();
        assert_eq!(got, want.ppl, "k {k} through {state}");
        assert_eq!(env.evaluations(), 3 * i + 1);
        // The same seed is the same channel; another seed is another.
        assert_eq!(env.ppl(k, state, 11).unwrap(), got);
        assert_ne!(env.ppl(k, state, 12).unwrap(), got);
        assert_eq!(env.evaluations(), 3 * i + 3);
    }
    let clean = perplexity(&reference, &tokens, cfg, reference.split_point(0).unwrap(), &mut split_core::boundary::CleanWire { dtype: WireDType::F32 }, &mut |_, _| {}).unwrap();
    assert!((env.clean_ppl() - clean.ppl).abs() < 1e-9 * clean.ppl, "{} vs {}", env.clean_ppl(), clean.ppl);
    assert!(env.seconds() > 0.0);
    assert!(env.ppl(31, states[0], 0).unwrap_err().to_string().contains("split 31 is outside 0..=30"));
}
