//! The trainable edge stack against the serving model, on the real default model.

use candle_core::{DType, Device, Tensor};
use split_core::assets;
use split_core::model::{KvCache, SplitModel};
use split_core::tokenizer::Tokenizer;
use splitinfer_snake::model::{AdapterSpec, EdgeStack};
use splitinfer_snake::train::{Shard, TrainConfig, TrainLink, Trainer, ue_state};

const TEXT: &str = "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced no evidence that any irregularities took place.";

fn model_path() -> std::path::PathBuf {
    assets::ensure_model(&assets::SMOLLM2_135M, &mut |m| eprintln!("fetch: {m}")).expect("the default model")
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn the_edge_stack_computes_what_the_serving_model_computes_with_the_same_adapter() {
    let path = model_path();
    let mut model = SplitModel::load(&path).unwrap();
    let tokens = Tokenizer::from_gguf_file(&path).unwrap().encode(TEXT).unwrap();
    let k = 26;
    let stack = EdgeStack::load(&path, model.config(), k, AdapterSpec::default(), 64).unwrap();
    // A trained-looking adapter: B away from zero, so the adapter changes the output.
    for l in &stack.layers {
        for lora in [&l.lora_q, &l.lora_v] {
            lora.b.set(&Tensor::randn(0f32, 0.05, lora.b.dims(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    let sha = assets::sha256_file(&path).unwrap();
    let adapter = stack.adapter(&sha).unwrap();
    assert_eq!(adapter.layers.keys().copied().collect::<Vec<_>>(), [26, 27, 28, 29]);

    let h = ue_state(&model, &tokens, k).unwrap();
    let serve = |model: &SplitModel| {
        let mut cache = KvCache::new(k..model.n_layers());
        model.head(&model.run_layers(&h, &mut cache).unwrap()).unwrap().squeeze(0).unwrap().to_dtype(DType::F32).unwrap()
    };
    let plain = serve(&model);
    assert_eq!(model.apply_adapter(&adapter, k).unwrap(), 4);
    let served = serve(&model);
    let trained = stack.logits(&h.squeeze(0).unwrap()).unwrap();
    let scale = max_abs(&served);
    let diff = max_abs(&(&served - &trained).unwrap());
    let effect = max_abs(&(&served - &plain).unwrap());
    eprintln!("logits up to {scale:.2}; snake vs served differ by {diff:.2e}; the adapter moves them by {effect:.3}");
    assert!(diff <= 1e-4 * scale, "snake's f32 stack and the served model differ by {diff} (logits up to {scale})");
    assert!(effect > 100.0 * diff, "the adapter moved the served logits by only {effect}");
}

#[test]
fn an_adapter_applied_only_on_the_edge_side() {
    let path = model_path();
    let mut model = SplitModel::load(&path).unwrap();
    let stack = EdgeStack::load(&path, model.config(), 27, AdapterSpec::default(), 8).unwrap();
    let adapter = stack.adapter(&"00".repeat(32)).unwrap();
    // A split deeper than the adapter's first layer leaves the UE's layers alone.
    assert_eq!(model.apply_adapter(&adapter, 29).unwrap(), 1);
    assert_eq!(model.apply_adapter(&adapter, 0).unwrap(), 3);
}

#[test]
fn training_steps_lower_the_loss_on_a_window() {
    let path = model_path();
    let model = SplitModel::load(&path).unwrap();
    let tokens = Tokenizer::from_gguf_file(&path).unwrap().encode(TEXT).unwrap();
    let window = tokens.len() - 2;
    let shard = Shard { name: "one window".into(), tokens };
    let stack = EdgeStack::load(&path, model.config(), 27, AdapterSpec::default(), window).unwrap();
    let cfg = TrainConfig { lr: 1e-2, window, p_channel: 0.0, ..TrainConfig::default() };
    let link = TrainLink { channel: Default::default(), setup: Default::default(), calibration: None };
    let mut trainer = Trainer::new(&stack, 27..30, cfg, 0).unwrap();
    let losses: Vec<f64> = (0..8).map(|_| trainer.step(&stack, &model, &link, &[&shard]).unwrap().loss).collect();
    eprintln!("losses {losses:?}");
    assert!(losses[7] < losses[0] - 0.05, "8 steps on one window did not lower its loss: {losses:?}");
    // Only the adapters of the trained layers (27..30) hold state: 3 layers of q and v.
    let per_layer = 8 * 576 * 2 + 576 * 8 + 192 * 8;
    assert_eq!(trainer.state_bytes(), 3 * per_layer * 16);
}
