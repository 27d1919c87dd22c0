//! The docker-compose testbed (`deploy/`): the image built with no registry from the release
//! binaries next to this test, the four services up under the alternating scenario, a UE that
//! completes a generation with live split changes, the agent's decisions read over gRPC from
//! outside the containers, and a UE that survives the edge container being stopped and started
//! under it, finishing with the text of an uninterrupted run. Needs a Docker engine and docker-compose; where either is missing the test says so
//! and skips. The other tests here check the compose file and the emulator's entrypoint without
//! Docker.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use splitinfer_proto::v1 as pb;
use splitinfer_tests::{default_model, workspace_binary};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Why this machine cannot run the testbed, if it cannot.
fn docker_missing() -> Option<String> {
    match Command::new("docker-compose").arg("version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Some(format!("`docker-compose version` failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => return Some(format!("docker-compose is not installed ({e})")),
    }
    match Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("no Docker engine answers `docker info`: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("the docker command is not installed ({e})")),
    }
}

/// Runs `cmd` to completion within `limit`, killing it and failing the test otherwise.
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One compose project; `down -v` on drop, panics included, after printing the services' logs
/// when the test is failing.
struct Testbed {
    project: String,
    env: Vec<(&'static str, String)>,
    /// With `docker-compose.tls.yml` on top.
    tls: bool,
}

impl Testbed {
    fn compose(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("-f").arg(deploy_dir().join("docker-compose.yml"));
        if self.tls {
            c.arg("-f").arg(deploy_dir().join("docker-compose.tls.yml"));
        }
        c.args(["-p", &self.project, "--ansi", "never"]);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// `docker-compose ARGS`, which must succeed within `limit`; its stdout.
    fn ok(&self, args: &[&str], limit: Duration) -> String {
        let o = output_within(self.compose().args(args), limit);
        assert!(o.status.success(), "docker-compose {} failed:\n{}{}", args.join(" "), text(&o.stdout), text(&o.stderr));
        text(&o.stdout)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(o) = self.compose().args(["logs", "--no-color", "--tail", "40"]).output()
        {
            eprintln!("--- testbed logs (last 40 lines per service) ---\n{}{}", text(&o.stdout), text(&o.stderr));
        }
        let _ = self.compose().args(["down", "-v", "--remove-orphans", "-t", "3"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn docker(args: &[&str], limit: Duration) -> Output {
    output_within(Command::new("docker").args(args), limit)
}

/// `docker wait`: the container's exit code once it has stopped.
fn exit_code(container: &str, limit: Duration) -> i64 {
    let o = docker(&["wait", container], limit);
    assert!(o.status.success(), "docker wait {container}: {}", text(&o.stderr));
    text(&o.stdout).trim().parse().unwrap()
}

/// The image, built once per test process from the binaries next to this test (cargo holds the
/// build lock while tests run, so the script must not call cargo).
fn build_image(started: Instant) {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return;
    }
    let bin_dir = workspace_binary("edge-server").parent().unwrap().to_path_buf();
    for b in ["channel-emulator", "agent", "ue-client", "splitinfer"] {
        workspace_binary(b);
    }
    let o = output_within(
        Command::new(deploy_dir().join("build-images.sh")).args(["--no-cargo", "--bin-dir"]).arg(&bin_dir),
        Duration::from_secs(300),
    );
    assert!(o.status.success(), "deploy/build-images.sh failed:\n{}{}", text(&o.stdout), text(&o.stderr));
    eprint!("{}", text(&o.stderr));
    eprintln!("compose: image ready after {:.1} s", started.elapsed().as_secs_f64());
    *built = true;
}

/// A testbed under the alternating scenario whose UE generates `tokens` tokens as JSON.
fn testbed(name: &str, tokens: usize, tls: bool, extra: Vec<(&'static str, String)>) -> Testbed {
    let model = default_model();
    let cache = model.parent().and_then(Path::parent).unwrap();
    let model_file = model.strip_prefix(cache).unwrap().to_str().unwrap().to_string();
    let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let mut env = vec![
        ("SPLITINFER_CACHE", cache.to_str().unwrap().to_string()),
        ("MODEL_FILE", model_file),
        ("SCENARIO", "alternating".into()),
        ("EMU_ALTERNATE_MS", "1000".into()),
        // Any free port on 127.0.0.1: several testbeds (and the demo scripts) can coexist.
        ("EMU_PORT", "0".into()),
        ("EMU_METRICS_PORT", "0".into()),
        ("AGENT_PORT", "0".into()),
        ("DASHBOARD_PORT", "0".into()),
        ("UE_MAX_NEW_TOKENS", tokens.to_string()),
        ("UE_JSON", "true".into()),
    ];
    env.extend(extra);
    Testbed { project: format!("si-{name}-{}-{unix_ms}", std::process::id()), env, tls }
}

/// Waits for the one-shot UE of `tb` and returns its JSON report, checking it generated.
fn ue_report(tb: &Testbed, tokens: usize) -> serde_json::Value {
    let ue = tb.ok(&["ps", "-q", "ue"], Duration::from_secs(30)).trim().to_string();
    assert!(!ue.is_empty(), "no ue container");
    let code = exit_code(&ue, Duration::from_secs(180));
    let logs = docker(&["logs", &ue], Duration::from_secs(30));
    assert_eq!(code, 0, "the UE failed:\n{}{}", text(&logs.stdout), text(&logs.stderr));
    let report: serde_json::Value = serde_json::from_slice(&logs.stdout)
        .unwrap_or_else(|e| panic!("the UE's stdout is not its JSON report ({e}):\n{}", text(&logs.stdout)));
    let generated = report["tokens"].as_array().unwrap().len();
    assert!(generated == tokens || report["stopped_at_eos"] == true, "{generated} tokens of {tokens}: {report}");
    assert!(!report["text"].as_str().unwrap().trim().is_empty(), "{report}");
    report
}

#[test]
fn compose_testbed_runs_with_tls_on_every_link() {
    if let Some(reason) = docker_missing() {
        eprintln!("SKIPPED compose_testbed_runs_with_tls_on_every_link: {reason}");
        return;
    }
    let started = Instant::now();
    build_image(started);
    // One certificate for every service name, as deploy/README.md says. The containers run as
    // uid 10001 and the key is written 0600: hand it to that user, as a deployment would.
    let certs = std::env::temp_dir().join(format!("si-compose-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&certs);
    let o = Command::new(workspace_binary("splitinfer"))
        .args(["certs", "--out"])
        .arg(&certs)
        .args(["--name", "testbed", "--san", "edge,emulator,agent"])
        .output()
        .unwrap();
    assert!(o.status.success(), "splitinfer certs: {}", text(&o.stderr));
    let key = certs.join("testbed.key");
    if let Err(e) = std::os::unix::fs::chown(&key, Some(10001), Some(10001)) {
        eprintln!("compose: cannot chown the key to the containers' uid ({e}); making this throwaway key readable instead");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let tokens = 60;
    let tb = testbed("compose-tls", tokens, true, vec![("CERTS_DIR", certs.display().to_string()), ("SCHEME", "https".into()), ("TLS_REQUIRE_CLIENT_CERT", "true".into())]);
    // Every service healthy over TLS (the health checks dial https://), then the UE through the
    // emulator, following the agent: every link is TLS, with client certificates required.
    tb.ok(&["up", "-d"], Duration::from_secs(240));
    let report = ue_report(&tb, tokens);
    eprintln!("compose-tls: {} tokens over TLS after {:.1} s", report["tokens"].as_array().unwrap().len(), started.elapsed().as_secs_f64());

    // From the host: the agent answers a client with the CA and a certificate, and refuses one
    // without a certificate and a plaintext one.
    let port = tb.ok(&["port", "agent", "50053"], Duration::from_secs(30)).trim().to_string();
    let url = format!("https://{port}");
    let args = |cert: bool| splitinfer_telemetry::TlsArgs {
        tls_ca: Some(certs.join("ca.pem")),
        tls_cert: cert.then(|| certs.join("testbed.pem")),
        tls_key: cert.then(|| key.clone()),
        tls_require_client_cert: false,
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let status = |tls: splitinfer_telemetry::Tls| {
            let url = url.clone();
            async move {
                let channel = tls.endpoint(&url).map_err(|e| e.to_string())?.connect().await.map_err(|e| format!("{e:?}"))?;
                pb::agent_client::AgentClient::new(channel).status(pb::StatusRequest { history: 0 }).await.map(|r| r.into_inner()).map_err(|s| format!("{s:?}"))
            }
        };
        let s = status(splitinfer_telemetry::Tls::load(&args(true)).unwrap()).await.unwrap();
        assert!(s.stats_connected, "the agent reads the emulator's statistics over TLS: {s:?}");
        assert!(s.subscribers.iter().any(|x| x.role == pb::Role::Edge as i32 && x.connected), "the edge follows the agent over TLS: {:?}", s.subscribers);
        assert!(status(splitinfer_telemetry::Tls::load(&args(false)).unwrap()).await.is_err(), "a client without a certificate was served");
        let plain = format!("http://{port}");
        let refused = async {
            let channel = tonic::transport::Endpoint::from_shared(plain).unwrap().connect().await.map_err(|e| e.to_string())?;
            pb::agent_client::AgentClient::new(channel).status(pb::StatusRequest { history: 0 }).await.map_err(|s| s.to_string())
        };
        assert!(refused.await.is_err(), "plaintext was served");
    });
    drop(tb);
    let _ = std::fs::remove_dir_all(&certs);
    eprintln!("compose-tls: done in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn compose_testbed_adapts_the_split_and_survives_an_edge_restart() {
    if let Some(reason) = docker_missing() {
        eprintln!("SKIPPED compose_testbed: {reason}");
        return;
    }
    let started = Instant::now();
    build_image(started);
    let tokens = 150;
    let tb = testbed("compose", tokens, false, Vec::new());

    // Up: edge, emulator, agent (each healthy before the next), then the UE.
    tb.ok(&["up", "-d"], Duration::from_secs(240));
    eprintln!("compose: testbed up after {:.1} s", started.elapsed().as_secs_f64());
    let report = ue_report(&tb, tokens);
    let generated = report["tokens"].as_array().unwrap().len();
    eprintln!("compose: UE done after {:.1} s", started.elapsed().as_secs_f64());
    let migrations: Vec<(u64, u64)> = report["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["to"].as_u64().unwrap(), m["epoch"].as_u64().unwrap()))
        .collect();
    assert!(!migrations.is_empty(), "no split change under the alternating scenario: {report}");
    eprintln!("compose: {generated} tokens, split changes (k, epoch): {migrations:?}");

    // The agent's status, over gRPC through the port published on 127.0.0.1.
    let port = tb.ok(&["port", "agent", "50053"], Duration::from_secs(30)).trim().to_string();
    assert!(port.starts_with("127.0.0.1:"), "the agent's port is published on {port:?}, not on 127.0.0.1 only");
    let status = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut client = pb::agent_client::AgentClient::connect(format!("http://{port}")).await.unwrap();
        client.status(pb::StatusRequest { history: 0 }).await.unwrap().into_inner()
    });
    let history: Vec<(u64, u64)> =
        status.history.iter().map(|d| d.split.map(|s| (u64::from(s.k), s.epoch)).unwrap()).collect();
    assert!(history.windows(2).all(|w| w[0].1 < w[1].1), "epochs do not increase: {history:?}");
    let ks: BTreeSet<u64> = history.iter().map(|h| h.0).collect();
    assert!(ks.len() >= 2, "the agent never changed k under the alternating scenario: {history:?}");
    for m in &migrations {
        assert!(history.contains(m), "the UE moved to k={} at epoch {}, which the agent's history lacks: {history:?}", m.0, m.1);
    }
    let edge = status.subscribers.iter().find(|s| s.role == pb::Role::Edge as i32);
    assert!(edge.is_some_and(|e| e.connected && e.acked_epoch > 0), "the edge does not follow the agent: {:?}", status.subscribers);
    let ue_sub = status.subscribers.iter().find(|s| s.role == pb::Role::Ue as i32);
    assert!(ue_sub.is_some_and(|u| u.acked_epoch >= migrations.last().unwrap().1), "the UE's acks are missing: {:?}", status.subscribers);
    eprintln!("compose: agent history (k, epoch): {history:?}");

    // The agent's dashboard, published on 127.0.0.1 only, holds the UE's reports (the last one,
    // sent as the UE exits, is best effort like its last acknowledgement).
    let dashboard = tb.ok(&["port", "agent", "8053"], Duration::from_secs(30)).trim().to_string();
    assert!(dashboard.starts_with("127.0.0.1:"), "the dashboard is published on {dashboard:?}, not on 127.0.0.1 only");
    let event = first_dashboard_event(&dashboard);
    let ues = event["ues"].as_array().unwrap();
    assert!(ues.iter().any(|u| u["name"] == "ue" && u["tokens"].as_u64().is_some_and(|n| n > 0)), "no report from the UE: {ues:?}");

    // Another UE, straight to the edge (f32, greedy, a fixed length: its text is exact), once
    // uninterrupted for reference, then again with the edge container stopped mid-generation
    // (SIGTERM: sessions end with UNAVAILABLE) and started again. The UE reconnects, finds its
    // session gone with the old edge process, replays it into a new one and finishes with the
    // same text. Before, it failed within seconds of the stop.
    let prompt_len = "The history of the old harbour town begins with the fishermen who".len();
    // Long enough that the stop lands mid-generation. The edge's container is stopped through
    // the engine's own CLI (found before the UE starts), which takes a fraction of a second.
    let ue_args = ["run", "-d", "-e", "UE_EDGE=http://edge:50051", "-e", "UE_JSON=false", "-e", "UE_IGNORE_EOS=true", "-e", "UE_MAX_NEW_TOKENS=1000", "-e", "UE_RUST_LOG=info", "ue"];
    let edge_container = tb.ok(&["ps", "-q", "edge"], Duration::from_secs(30)).trim().to_string();
    assert!(!edge_container.is_empty(), "docker-compose ps -q edge names no container");
    let reference = tb.ok(&ue_args, Duration::from_secs(60)).lines().last().unwrap().trim().to_string();
    assert_eq!(exit_code(&reference, Duration::from_secs(180)), 0, "the reference UE failed");
    let want = text(&docker(&["logs", &reference], Duration::from_secs(30)).stdout);
    let launch = Instant::now();
    let ue2 = tb.ok(&ue_args, Duration::from_secs(60)).lines().last().unwrap().trim().to_string();
    eprintln!("compose: second UE {ue2} started in {:.1} s", launch.elapsed().as_secs_f64());
    // When to stop the edge: once the UE's text shows in its log, or 3 s after its start. On
    // some engines `docker logs` of a `docker-compose run` container shows nothing until it
    // exits; 3 s is after the model load and far before the end of 1,000 tokens (about 10 s
    // here). A stop that came too late fails the assertion below, not silently.
    loop {
        let o = docker(&["logs", &ue2], Duration::from_secs(30));
        if o.stdout.len() > prompt_len + 40 || launch.elapsed() >= Duration::from_secs(3) {
            eprintln!("compose: {} bytes of the second UE's text in its log, {:.1} s after its start; stopping the edge", o.stdout.len(), launch.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopping = Instant::now();
    let stopped = docker(&["stop", &edge_container], Duration::from_secs(60));
    assert!(stopped.status.success(), "docker stop of the edge failed: {}", text(&stopped.stderr));
    let took = stopping.elapsed();
    let running = text(&docker(&["inspect", "-f", "{{.State.Running}}", &ue2], Duration::from_secs(30)).stdout);
    if running.trim() != "true" {
        let logs = docker(&["logs", &ue2], Duration::from_secs(30));
        let state = text(&docker(&["inspect", "-f", "{{.State.ExitCode}} {{.State.FinishedAt}}", &ue2], Duration::from_secs(30)).stdout);
        panic!(
            "the UE must still be waiting for the edge after the stop (which took {took:?}); it is not running (exit code, finished at: {}):\n{}{}",
            state.trim(),
            text(&logs.stdout),
            text(&logs.stderr)
        );
    }
    tb.ok(&["start", "edge"], Duration::from_secs(60));
    let code = exit_code(&ue2, Duration::from_secs(180));
    let logs = docker(&["logs", &ue2], Duration::from_secs(30));
    let err = text(&logs.stderr);
    assert_eq!(code, 0, "the UE did not survive the edge restart:\n{}{err}", text(&logs.stdout));
    assert_eq!(text(&logs.stdout), want, "the text differs from the uninterrupted run");
    assert!(err.contains("link to the edge broken; reconnecting"), "the UE's log does not show the break:\n{err}");
    eprintln!("compose: the edge stopped and started under a UE; same text after {:.1} s", stopping.elapsed().as_secs_f64());
    drop(tb);
    eprintln!("compose: done in {:.1} s", started.elapsed().as_secs_f64());
}

/// The first server-sent event of the dashboard at `addr` (host:port), as JSON.
fn first_dashboard_event(addr: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to the dashboard at {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // HTTP/1.0: the stream comes unchunked, one event per line of data.
    write!(s, "GET /events HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let data = BufReader::new(s).lines().map(|l| l.unwrap()).find_map(|l| l.strip_prefix("data: ").map(str::to_string));
    serde_json::from_str(&data.expect("no event from the dashboard")).unwrap()
}

/// Every option of every service is an environment variable of the compose file, apart from the
/// ones the testbed sets from its own variables.
#[test]
fn every_option_is_a_compose_variable() {
    let compose = std::fs::read_to_string(deploy_dir().join("docker-compose.yml")).unwrap();
    let keys: BTreeSet<&str> = compose.lines().filter_map(|l| l.trim().split_once(':').map(|(k, _)| k)).collect();
    // MODEL_FILE picks the file for both the edge and the UE (EDGE_MODEL, UE_MODEL).
    let by_the_testbed = ["EDGE_MODEL_NAME", "UE_MODEL_NAME"];
    let mut missing = Vec::new();
    for bin in ["edge-server", "channel-emulator", "agent", "ue-client"] {
        let help = Command::new(workspace_binary(bin)).arg("--help").output().unwrap();
        let help = text(&help.stdout);
        let vars: Vec<&str> = help.split("[env: ").skip(1).map(|s| s.split(['=', ']']).next().unwrap()).collect();
        assert!(vars.len() >= 5, "no [env: ...] in {bin} --help:\n{help}");
        missing.extend(vars.into_iter().filter(|v| !keys.contains(v) && !by_the_testbed.contains(v)).map(|v| format!("{bin}: {v}")));
    }
    assert!(missing.is_empty(), "options missing from deploy/docker-compose.yml: {missing:?}");
}

/// The emulator's entrypoint turns SCENARIO into the emulator's flags, and only that scenario's.
#[test]
fn the_emulator_entrypoint_maps_each_scenario() {
    let dir = std::env::temp_dir().join(format!("si-entrypoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A stand-in emulator that prints its flags and the scenario variables it was given.
    let fake = dir.join("channel-emulator");
    std::fs::write(&fake, "#!/bin/sh\necho \"$* | ${EMU_ALTERNATE_MS-} ${EMU_MOBILITY-} ${EMU_TRACE-}\"\n").unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&fake).status().unwrap().success());
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let run = |scenario: &str| {
        let o = Command::new("sh")
            .arg(deploy_dir().join("emulator-entrypoint.sh"))
            .arg("--stats-window")
            .arg("8")
            .env("PATH", &path)
            .env("SCENARIO", scenario)
            .env("EMU_ALTERNATE_MS", "900")
            .env("EMU_MOBILITY", "vehicular")
            .env("EMU_TRACE", "/t.csv")
            .output()
            .unwrap();
        (o.status.code(), text(&o.stdout).trim().to_string(), text(&o.stderr))
    };
    assert_eq!(run("clean").1, "--stats-window 8 |");
    assert_eq!(run("good").1, "--channel --preset good --stats-window 8 |");
    assert_eq!(run("bad").1, "--channel --preset bad --stats-window 8 |");
    assert_eq!(run("alternating").1, "--alternate-ms 900 --stats-window 8 |");
    assert_eq!(run("mobility").1, "--preset good --mobility vehicular --stats-window 8 |");
    assert_eq!(run("trace").1, "--preset good --trace /t.csv --stats-window 8 |");
    let (code, _, err) = run("storm");
    assert_eq!(code, Some(2));
    assert!(err.contains("SCENARIO=storm is not one of"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
