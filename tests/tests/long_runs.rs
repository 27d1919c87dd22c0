//! The fuzzer and the soak harness still run, in a short form: the long runs (docs/survive.md)
//! are these binaries with bigger numbers.

use std::process::Command;

use splitinfer_tests::workspace_binary;

#[test]
fn the_fuzzer_runs_every_target_without_a_crash() {
    let crashes = std::env::temp_dir().join(format!("splitinfer-fuzz-{}", std::process::id()));
    let out = Command::new(workspace_binary("fuzz")).args(["--seconds", "1", "--crashes"]).arg(&crashes).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fuzz failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for target in ["ue-message", "wire", "edge-message", "control", "trace", "thresholds", "policy"] {
        let line = stdout.lines().find(|l| l.starts_with(&format!("{target},"))).unwrap_or_else(|| panic!("no line for {target}:\n{stdout}"));
        let f: Vec<&str> = line.split(',').collect();
        let (execs, refused): (u64, u64) = (f[1].parse().unwrap(), f[4].parse().unwrap());
        assert!(execs >= 1_000, "{target}: only {execs} executions in a second");
        // Mutated inputs must reach both outcomes, or the target tests nothing.
        assert!(refused > 0 && refused < execs, "{target}: {refused} of {execs} refused");
        assert_eq!(f[5], "0", "{target} crashed");
    }
    assert!(!crashes.exists(), "a crash input was saved");
    // A bad flag is refused with the list of targets.
    let out = Command::new(workspace_binary("fuzz")).args(["--target", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ue-message"));
}

#[test]
fn a_short_soak_finishes_without_errors() {
    let out = Command::new(workspace_binary("soak")).args(["--sessions", "3", "--minutes", "0.25", "--tokens", "16"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "soak failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let tokens: u64 = stdout.lines().find_map(|l| l.strip_prefix("| tokens | ")).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
    assert!(tokens >= 3 * 16, "{stdout}");
    assert!(stdout.contains("| errors | 0 "), "{stdout}");
}
