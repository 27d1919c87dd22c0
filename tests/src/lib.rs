//! The end-to-end test harness of splitinfer: finding (and if need be fetching) the real assets.
//! The tests themselves live in `tests/`.

use std::path::PathBuf;
use std::sync::OnceLock;

use split_core::assets;

/// The default model, fetched into the cache on first use. A test that cannot get it fails with
/// the reason and the command that fetches it by hand; it never passes silently.
pub fn default_model() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetch_model(&assets::SMOLLM2_135M)).clone()
}

/// A known model, fetched into the cache if missing (see [`default_model`]).
pub fn fetch_model(asset: &assets::ModelAsset) -> PathBuf {
    assets::ensure_model(asset, &mut |m| eprintln!("fetch: {m}")).unwrap_or_else(|e| {
        panic!(
            "model {} is needed and could not be fetched: {e}\n(run `cargo run --release -p splitinfer -- fetch-assets --model {}`)",
            asset.name, asset.name
        )
    })
}

/// The default evaluation text (Brown news, ca01–ca44), converted into the cache on first use.
pub fn default_eval_text() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        assets::ensure_corpus(&mut |m| eprintln!("fetch: {m}")).unwrap_or_else(|e| {
            panic!("the Brown corpus is needed and could not be prepared: {e}\n(run `cargo run --release -p splitinfer -- fetch-assets`)")
        })
    })
    .clone()
}
