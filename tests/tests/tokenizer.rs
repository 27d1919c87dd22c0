//! The tokenizer rebuilt from the GGUF metadata.

use split_core::tokenizer::Tokenizer;
use splitinfer_tests::{default_eval_text, default_model};

#[test]
fn evaluation_text_round_trips_exactly() {
    let tok = Tokenizer::from_gguf_file(default_model()).unwrap();
    let text = std::fs::read_to_string(default_eval_text()).unwrap();
    assert!(text.len() > 400_000, "news slice is only {} bytes", text.len());
    let ids = tok.encode(&text).unwrap();
    // English prose is about 4-5 bytes a token in a 49k BPE vocabulary; a broken merge table
    // would fall back to bytes and give ~1.
    let bytes_per_token = text.len() as f64 / ids.len() as f64;
    assert!((3.5..6.0).contains(&bytes_per_token), "{bytes_per_token} bytes/token");
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

#[test]
fn unicode_whitespace_and_specials_round_trip() {
    let tok = Tokenizer::from_gguf_file(default_model()).unwrap();
    for s in ["naïve café — 東京 🚀", "  two  spaces\n\n\ttab", "<|im_start|>user\nhi<|im_end|>\n"] {
        assert_eq!(tok.decode(&tok.encode(s).unwrap()).unwrap(), s);
    }
}

#[test]
fn special_tokens_and_digits_tokenize_like_the_model_expects() {
    let tok = Tokenizer::from_gguf_file(default_model()).unwrap();
    // ChatML markers are single control tokens (ids from the GGUF's own token list).
    assert_eq!(tok.encode("<|im_start|>").unwrap(), vec![1]);
    assert_eq!(tok.encode("<|im_end|>").unwrap(), vec![2]);
    assert!(tok.is_eos(2) && tok.is_eos(0) && !tok.is_eos(1));
    // SmolLM's pre-tokenizer ("smollm") splits numbers into single digits.
    assert_eq!(tok.encode("2024").unwrap().len(), 4);
    assert_eq!(tok.encode(" Paris").unwrap().len(), 1);
}
