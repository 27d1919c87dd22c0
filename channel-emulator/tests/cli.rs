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

#[test]
fn a_bad_channel_is_refused_at_start_not_mid_stream() {
    for (flags, needle) in [
        (vec!["--fading-m", "0.2"], "Nakagami m 0.2 must be"),
        (vec!["--erasure-p", "-0.1"], "erasure probability -0.1 is outside [0, 1]"),
        (vec!["--loss-rate-bps", "1e6", "--loss-bandwidth-hz", "-1"], "loss bandwidth_hz -1 must be positive"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_channel-emulator"))
            .args(["--listen", "127.0.0.1:0", "--channel"])
            .args(&flags)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{flags:?} was accepted");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(needle), "{flags:?}: {e}");
    }
}

#[test]
fn an_unreadable_trace_is_refused_at_start() {
    let o = Command::new(env!("CARGO_BIN_EXE_channel-emulator"))
        .args(["--listen", "127.0.0.1:0", "--trace", "/nonexistent/trace.csv"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("cannot read trace /nonexistent/trace.csv"), "{e}");
}
