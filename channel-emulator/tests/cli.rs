//! The `channel-emulator` binary's configuration errors.

use std::process::Command;

#[test]
fn a_malformed_edge_address_is_refused_at_start() {
    let o = Command::new(env!("CARGO_BIN_EXE_channel-emulator"))
        .args(["--listen", "127.0.0.1:0", "--edge", "not a url"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.to_lowercase().contains("invalid"), "{e}");
}

#[test]
fn help_lists_the_environment_variables() {
    let o = Command::new(env!("CARGO_BIN_EXE_channel-emulator")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for v in ["EMU_LISTEN", "EMU_EDGE", "EMU_MAX_MESSAGE_BYTES"] {
        assert!(help.contains(v), "--help lacks {v}:\n{help}");
    }
}
