//! The `ue-client` binary's own failure modes.

use std::process::Command;

#[test]
fn an_unreachable_edge_is_a_clear_error_not_a_hang() {
    let model = splitinfer_tests::default_model();
    // Port 9 on loopback (discard) has no listener here: connection refused at once.
    let o = Command::new(env!("CARGO_BIN_EXE_ue-client"))
        .args(["--edge", "http://127.0.0.1:9", "--prompt", "hi", "--connect-timeout-ms", "2000", "--model"])
        .arg(&model)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("cannot connect to the edge at http://127.0.0.1:9"), "{e}");
    assert!(e.contains("is the edge server (or the channel emulator) running and reachable?"), "{e}");
}

#[test]
fn help_lists_the_environment_variables() {
    let o = Command::new(env!("CARGO_BIN_EXE_ue-client")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for v in ["UE_EDGE", "UE_SPLIT", "UE_WIRE_DTYPE", "UE_MAX_NEW_TOKENS", "UE_PREFILL_CHUNK"] {
        assert!(help.contains(v), "--help lacks {v}:\n{help}");
    }
}
