//! TLS on every link, with the real binaries and certificates from `splitinfer certs`: the UE,
//! the emulator, the edge and the agent talk over TLS and the text is the monolithic model's; a
//! client without the CA, or speaking plaintext, is refused; with mutual TLS a client without a
//! certificate from the CA is refused; grpcurl with the CA lists the agent's services.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use splitinfer_proto::v1 as pb;
use splitinfer_telemetry::{Tls, TlsArgs};
use splitinfer_tests::{default_model, greedy_request, monolithic, shared_model, workspace_binary};
use ue_client::{Endpoints, Recovery};

const PROMPT: &str = "The lighthouse keeper wrote in his log that the storm";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh directory of certificates made by the real `splitinfer certs`.
fn certs(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("splitinfer-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(workspace_binary("splitinfer")).args(["certs", "--out"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "splitinfer certs failed: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn tls_args(dir: &Path, identity: Option<&str>) -> TlsArgs {
    TlsArgs {
        tls_ca: Some(dir.join("ca.pem")),
        tls_cert: identity.map(|n| dir.join(format!("{n}.pem"))),
        tls_key: identity.map(|n| dir.join(format!("{n}.key"))),
        tls_require_client_cert: false,
    }
}

/// The flags that give a service `name`'s certificate and the CA.
fn tls_flags(dir: &Path, name: &str, mutual: bool) -> Vec<String> {
    let mut v = vec![
        "--tls-ca".to_string(),
        dir.join("ca.pem").display().to_string(),
        "--tls-cert".into(),
        dir.join(format!("{name}.pem")).display().to_string(),
        "--tls-key".into(),
        dir.join(format!("{name}.key")).display().to_string(),
    ];
    if mutual {
        v.push("--tls-require-client-cert".into());
    }
    v
}

struct Proc(Child);

impl Proc {
    fn start(binary: &str, args: &[String]) -> Self {
        Self(Command::new(workspace_binary(binary)).args(args).env("RUST_LOG", "warn").spawn().unwrap())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the health service at `url` answers over `tls`.
async fn ready(url: &str, tls: &Tls) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = tls.endpoint(url).unwrap().connect().await
            && tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether an Info call to the edge (or the emulator) at `url` over `tls` succeeds; the error
/// text if not.
async fn info(url: &str, tls: &Tls) -> Result<pb::InfoResponse, String> {
    let channel = tls.endpoint(url).map_err(|e| e.to_string())?.connect_timeout(Duration::from_secs(5)).connect().await.map_err(|e| format!("{e:?}"))?;
    let reply = pb::edge_client::EdgeClient::new(channel).info(pb::InfoRequest {}).await.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    Ok(reply.into_inner())
}

async fn generate(url: &str, tls: Tls, tokens: usize) -> Vec<u32> {
    let endpoints = Endpoints { urls: vec![url.to_string()], tls, max_message_bytes: 64 << 20, connect_timeout: Duration::from_secs(5) };
    let report = ue_client::generate_resilient(&endpoints, Recovery::NONE, shared_model(), greedy_request(PROMPT, 12, tokens), &ue_client::FixedSplit, |_| {})
        .await
        .unwrap();
    report.token_ids()
}

fn want(tokens: usize) -> Vec<u32> {
    monolithic(&greedy_request(PROMPT, 12, tokens)).into_iter().map(|(id, _)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ue_emulator_edge_and_agent_talk_over_tls_and_refuse_plaintext_and_strangers() {
    let dir = certs("all");
    let rogue = certs("rogue");
    let (edge_port, emu_port, agent_port) = (free_port(), free_port(), free_port());
    let (edge_url, emu_url, agent_url) =
        (format!("https://127.0.0.1:{edge_port}"), format!("https://127.0.0.1:{emu_port}"), format!("https://localhost:{agent_port}"));
    let model = default_model().display().to_string();
    let mut args = vec!["--listen".into(), format!("127.0.0.1:{edge_port}"), "--model".into(), model, "--agent".into(), agent_url.clone()];
    args.extend(tls_flags(&dir, "edge", false));
    let _edge = Proc::start("edge-server", &args);
    let mut args = vec!["--listen".into(), format!("127.0.0.1:{emu_port}"), "--edge".into(), edge_url.clone()];
    args.extend(tls_flags(&dir, "emulator", false));
    let _emu = Proc::start("channel-emulator", &args);
    let mut args = vec![
        "--listen".into(),
        format!("127.0.0.1:{agent_port}"),
        "--emulator".into(),
        emu_url.clone(),
        "--policy".into(),
        "fixed".into(),
        "--k".into(),
        "12".into(),
        "--n-layers".into(),
        "30".into(),
        "--stats-period-ms".into(),
        "100".into(),
    ];
    args.extend(tls_flags(&dir, "agent", false));
    let _agent = Proc::start("agent", &args);
    let ue_tls = Tls::load(&tls_args(&dir, Some("ue"))).unwrap();
    for url in [&edge_url, &emu_url, &agent_url] {
        ready(url, &ue_tls).await;
    }

    // The text through the emulator (UE → emulator → edge, both hops TLS) is the monolithic model's.
    let tokens = 24;
    assert_eq!(generate(&emu_url, ue_tls.clone(), tokens).await, want(tokens));

    // The agent reads the emulator's statistics and the edge follows the agent, both over TLS.
    let ue = agent::Follower::spawn_tls(agent_url.clone(), ue_tls.clone(), "ue".into(), pb::Role::Ue, tokio_util::sync::CancellationToken::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let channel = ue_tls.endpoint(&agent_url).unwrap().connect().await.unwrap();
        let s = pb::agent_client::AgentClient::new(channel).status(pb::StatusRequest { history: 0 }).await.unwrap().into_inner();
        let names: Vec<&str> = s.subscribers.iter().map(|x| x.name.as_str()).collect();
        if s.stats_connected && s.observations > 0 && names.contains(&"edge") && names.contains(&"ue") && ue.connected() {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent's TLS links never came up: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.current.and_then(|d| d.split).map(|s| s.k), Some(12));

    // grpcurl with the CA lists the agent's services; without it the certificate is refused.
    let ca = dir.join("ca.pem").display().to_string();
    let target = format!("localhost:{agent_port}");
    let (c, t) = (ca.clone(), target.clone());
    let list = tokio::task::spawn_blocking(move || splitinfer_tests::grpcurl::run(&["-cacert", &c, &t, "list"])).await.unwrap().unwrap();
    assert!(list.lines().any(|l| l == "splitinfer.v1.Agent"), "{list}");
    let t = target.clone();
    let e = tokio::task::spawn_blocking(move || splitinfer_tests::grpcurl::run(&[&t, "list"])).await.unwrap().unwrap_err();
    assert!(e.contains("certificate"), "grpcurl without the CA: {e}");
    let t = target.clone();
    let e = tokio::task::spawn_blocking(move || splitinfer_tests::grpcurl::run(&["-plaintext", &t, "list"])).await.unwrap().unwrap_err();
    assert!(!e.is_empty(), "plaintext against a TLS port must fail");

    // A client that trusts another CA is refused by every server; so is plaintext.
    let stranger = Tls::load(&tls_args(&rogue, Some("ue"))).unwrap();
    for url in [&edge_url, &emu_url] {
        let e = info(url, &stranger).await.unwrap_err();
        assert!(e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"), "{url} with another CA: {e}");
        let plain = url.replacen("https://", "http://", 1);
        assert!(info(&plain, &Tls::default()).await.is_err(), "{plain} answered plaintext");
    }
    // And our own client will not dial plaintext once it has a CA, nor https without one.
    assert!(ue_tls.endpoint(&emu_url.replacen("https://", "http://", 1)).is_err());
    assert!(Tls::default().endpoint(&emu_url).is_err());

    for d in [dir, rogue] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_a_client_without_a_certificate_from_the_ca_is_refused() {
    let dir = certs("mtls");
    let rogue = certs("mtls-rogue");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut args = vec!["--listen".into(), format!("127.0.0.1:{port}"), "--model".into(), default_model().display().to_string()];
    args.extend(tls_flags(&dir, "edge", true));
    let _edge = Proc::start("edge-server", &args);
    let ue_tls = Tls::load(&tls_args(&dir, Some("ue"))).unwrap();
    ready(&url, &ue_tls).await;

    // With its certificate the UE generates as usual.
    let tokens = 8;
    assert_eq!(generate(&url, ue_tls.clone(), tokens).await, want(tokens));
    assert_eq!(info(&url, &ue_tls).await.unwrap().n_layers, 30);

    // The CA alone is not enough, nor a certificate from another CA.
    let anonymous = Tls::load(&tls_args(&dir, None)).unwrap();
    let e = info(&url, &anonymous).await.unwrap_err();
    assert!(!e.is_empty());
    let mut forged = tls_args(&dir, None);
    forged.tls_cert = Some(rogue.join("ue.pem"));
    forged.tls_key = Some(rogue.join("ue.key"));
    assert!(info(&url, &Tls::load(&forged).unwrap()).await.is_err(), "a certificate from another CA was accepted");

    // The same through `splitinfer health`, as a container's health check would run it.
    let health = |extra: &[String]| {
        let mut cmd = Command::new(workspace_binary("splitinfer"));
        cmd.args(["health", "--url", &url, "--timeout-ms", "5000"]).args(extra);
        cmd.output().unwrap()
    };
    let ca = ["--tls-ca".to_string(), dir.join("ca.pem").display().to_string()];
    let out = health(&ca);
    assert!(!out.status.success(), "health without a client certificate passed");
    let mut with_cert = ca.to_vec();
    with_cert.extend(["--tls-cert".into(), dir.join("ue.pem").display().to_string(), "--tls-key".into(), dir.join("ue.key").display().to_string()]);
    let out = health(&with_cert);
    assert!(out.status.success(), "health with the UE's certificate failed: {}", String::from_utf8_lossy(&out.stderr));

    for d in [dir, rogue] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A bad TLS flag stops a service at startup with the file's name, not at its first connection.
#[test]
fn a_service_with_an_unreadable_certificate_refuses_to_start() {
    let dir = certs("bad");
    std::fs::write(dir.join("broken.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let port = free_port();
    let cases: [(&str, Vec<String>, &str); 3] = [
        (
            "channel-emulator",
            vec!["--tls-cert".into(), dir.join("gone.pem").display().to_string(), "--tls-key".into(), dir.join("emulator.key").display().to_string()],
            "gone.pem",
        ),
        (
            "channel-emulator",
            vec!["--tls-cert".into(), dir.join("broken.pem").display().to_string(), "--tls-key".into(), dir.join("emulator.key").display().to_string()],
            "TLS",
        ),
        ("channel-emulator", vec!["--tls-cert".into(), dir.join("emulator.pem").display().to_string()], "--tls-key"),
    ];
    for (binary, extra, says) in cases {
        let out = Command::new(workspace_binary(binary))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--edge", "http://127.0.0.1:1"])
            .args(&extra)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{binary} {extra:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
