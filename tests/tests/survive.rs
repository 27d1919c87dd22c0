//! A session that survives its link: the real edge and emulator binaries are killed (SIGKILL),
//! frozen (SIGSTOP) and restarted mid-generation, and the in-process UE resumes or replays. Every
//! token id is checked against an uninterrupted run (f32, greedy).

use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use splitinfer_proto::v1 as pb;
use splitinfer_tests::{default_model, greedy_request, shared_model, workspace_binary};
use ue_client::{Endpoints, Recovery};

const PROMPT: &str = "The history of the old harbour town begins with the fishermen who";
const TOKENS: usize = 80;
/// The token after which the link is broken.
const BREAK_AT: usize = 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server binary on a fixed loopback port, so a restart comes back at the same address.
struct Server {
    name: &'static str,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn edge(port: u16, extra: &[&str]) -> Self {
        let mut args = vec!["--listen".to_string(), format!("127.0.0.1:{port}"), "--model".into(), default_model().display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self { name: "edge-server", args, port, child: None }.start()
    }

    fn emulator(port: u16, edge_port: u16) -> Self {
        let args = vec!["--listen".to_string(), format!("127.0.0.1:{port}"), "--edge".into(), format!("http://127.0.0.1:{edge_port}")];
        Self { name: "channel-emulator", args, port, child: None }.start()
    }

    fn start(mut self) -> Self {
        self.restart();
        self
    }

    fn restart(&mut self) {
        let child = Command::new(workspace_binary(self.name)).args(&self.args).env("RUST_LOG", "warn").spawn().unwrap();
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    /// Waits until the server answers Edge/Info (the emulator forwards it to its edge). The
    /// future holds no borrow of the server, so a shared one is not kept locked meanwhile.
    fn ready(&self) -> impl Future<Output = ()> + use<> {
        let (name, port, url) = (self.name, self.port, self.url());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(mut c) = pb::edge_client::EdgeClient::connect(url.clone()).await
                    && c.info(pb::InfoRequest {}).await.is_ok()
                {
                    return;
                }
                assert!(Instant::now() < deadline, "{name} on port {port} never came up");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen process must be thawed to die cleanly.
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}

type Shared = Arc<Mutex<Server>>;

fn shared(s: Server) -> Shared {
    Arc::new(Mutex::new(s))
}

fn endpoints(urls: &[String]) -> Endpoints {
    Endpoints { urls: urls.to_vec(), tls: Default::default(), max_message_bytes: 64 << 20, connect_timeout: Duration::from_secs(2) }
}

fn request() -> ue_client::GenerateRequest {
    let mut req = greedy_request(PROMPT, 15, TOKENS);
    // A prefill in three chunks, so a replay must rebuild them as they were first sent.
    req.prefill_chunk = 5;
    req
}

/// Generates through `urls`, calling `at_break` once after token [`BREAK_AT`].
async fn generate(urls: &[String], recovery: Recovery, at_break: impl FnOnce() + Send) -> Result<ue_client::GenerationReport, ue_client::UeError> {
    let mut seen = 0usize;
    let mut at_break = Some(at_break);
    ue_client::generate_resilient(&endpoints(urls), recovery, shared_model(), request(), &ue_client::FixedSplit, |_| {
        seen += 1;
        if seen == BREAK_AT {
            (at_break.take().unwrap())();
        }
    })
    .await
}

/// The uninterrupted run through `urls`: the same request, chunks and code path, nothing broken.
/// (The monolithic model prefills in one piece, which rounds differently from 5-row chunks.)
async fn reference(urls: &[String]) -> Vec<u32> {
    let want = generate(urls, Recovery::NONE, || {}).await.unwrap().token_ids();
    assert!(want.len() > BREAK_AT + 10, "the reference must run well past the break ({} tokens)", want.len());
    want
}

fn recovery() -> Recovery {
    Recovery::new(Duration::from_secs(30), Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_emulator_restarted_on_its_port_is_resumed_through() {
    let edge = Server::edge(free_port(), &[]);
    let emu = shared(Server::emulator(free_port(), edge.port));
    edge.ready().await;
    let ready = emu.lock().unwrap().ready();
    ready.await;
    let url = emu.lock().unwrap().url();
    let want = reference(std::slice::from_ref(&url)).await;
    let e = emu.clone();
    let report = generate(&[url], recovery(), move || {
        let mut e = e.lock().unwrap();
        e.kill();
        e.restart();
    })
    .await
    .unwrap();
    assert_eq!(report.token_ids(), want);
    assert!(report.resumes >= 1 && report.replays == 0, "resumed, not replayed: {} resumes, {} replays", report.resumes, report.replays);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_edge_restarted_behind_the_emulator_is_replayed_into() {
    let edge = shared(Server::edge(free_port(), &[]));
    let edge_port = edge.lock().unwrap().port;
    let emu = Server::emulator(free_port(), edge_port);
    emu.ready().await;
    let want = reference(&[emu.url()]).await;
    let e = edge.clone();
    let report = generate(&[emu.url()], recovery(), move || {
        let mut e = e.lock().unwrap();
        e.kill();
        e.restart();
    })
    .await
    .unwrap();
    assert_eq!(report.token_ids(), want);
    assert_eq!(report.replays, 1, "the restarted edge has no session: one replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_edge_fails_over_to_the_next_one() {
    let a = shared(Server::edge(free_port(), &[]));
    let b = Server::edge(free_port(), &[]);
    let ready = a.lock().unwrap().ready();
    ready.await;
    b.ready().await;
    let urls = [a.lock().unwrap().url(), b.url()];
    let want = reference(&urls).await;
    assert_eq!(reference(&urls[1..]).await, want, "both edges compute the same");
    let solo = generate(&urls[1..], Recovery::NONE, || {}).await.unwrap();
    let victim = a.clone();
    let report = generate(&urls, recovery(), move || victim.lock().unwrap().kill()).await.unwrap();
    assert_eq!(report.token_ids(), want);
    assert_eq!(report.replays, 1);
    // What the replay cost: the prompt's chunks and every generated token so far, again.
    let positions = report.prompt_tokens + BREAK_AT;
    assert!(report.replay_ms > 0.0 && report.replay_ms < report.elapsed_ms, "{} of {} ms", report.replay_ms, report.elapsed_ms);
    eprintln!(
        "failover: the replay of {positions} positions ({} prompt rows in 5-row chunks, then {BREAK_AT} one-row steps) took {:.0} ms; the whole {TOKENS}-token generation {:.0} ms, against {:.0} ms uninterrupted",
        report.prompt_tokens, report.replay_ms, report.elapsed_ms, solo.elapsed_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_the_edge_idle_timeout_falls_back_to_replay() {
    let edge = Server::edge(free_port(), &["--idle-timeout-ms", "300"]);
    let emu = shared(Server::emulator(free_port(), edge.port));
    edge.ready().await;
    let ready = emu.lock().unwrap().ready();
    ready.await;
    let url = emu.lock().unwrap().url();
    let want = reference(std::slice::from_ref(&url)).await;
    let e = emu.clone();
    let report = generate(&[url], recovery(), move || {
        e.lock().unwrap().kill();
        // Back only after the edge dropped the detached session.
        let e = e.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            e.lock().unwrap().restart();
        });
    })
    .await
    .unwrap();
    assert_eq!(report.token_ids(), want);
    assert_eq!((report.resumes, report.replays), (0, 1), "the session had expired: replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ue_gives_up_with_a_clear_message_after_its_deadline() {
    let edge = Server::edge(free_port(), &[]);
    let emu = shared(Server::emulator(free_port(), edge.port));
    edge.ready().await;
    let ready = emu.lock().unwrap().ready();
    ready.await;
    let url = emu.lock().unwrap().url();
    let e = emu.clone();
    let broke = Arc::new(Mutex::new(None::<Instant>));
    let b = broke.clone();
    let err = generate(&[url], Recovery::new(Duration::from_secs(2), Duration::from_secs(10)), move || {
        e.lock().unwrap().kill();
        *b.lock().unwrap() = Some(Instant::now());
    })
    .await
    .unwrap_err();
    let took = broke.lock().unwrap().unwrap().elapsed();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert!(err.to_string().contains("did not come back within 2000 ms (resume deadline)"), "{err}");
    assert!(took < Duration::from_secs(6), "gave up {took:?} after the link broke");
}

/// A frozen emulator (SIGSTOP: its sockets stay open, nothing answers) is found by the step
/// timeout. Before, the UE hung silently for as long as the emulator was stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_emulator_is_detected_within_the_deadline() {
    let edge = Server::edge(free_port(), &[]);
    let emu = shared(Server::emulator(free_port(), edge.port));
    edge.ready().await;
    let ready = emu.lock().unwrap().ready();
    ready.await;
    let url = emu.lock().unwrap().url();
    let e = emu.clone();
    let frozen = Arc::new(Mutex::new(None::<Instant>));
    let f = frozen.clone();
    let err = generate(&[url], Recovery::new(Duration::from_secs(2), Duration::from_secs(1)), move || {
        e.lock().unwrap().signal("-STOP");
        *f.lock().unwrap() = Some(Instant::now());
    })
    .await
    .unwrap_err();
    let took = frozen.lock().unwrap().unwrap().elapsed();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert!(err.to_string().contains("did not come back within 2000 ms (resume deadline)"), "{err}");
    // Step timeout (1 s), then reconnecting until the deadline (2 s); the rest is slack for CI.
    assert!(took < Duration::from_secs(8), "detected {took:?} after the freeze");
}

/// An edge that dies behind the emulator is a lost link to the UE, UNAVAILABLE with words that
/// say so, not the UNKNOWN "h2 protocol error" the broken connection gives the emulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_edge_behind_the_emulator_reaches_the_ue_as_unavailable() {
    let edge = shared(Server::edge(free_port(), &[]));
    let edge_port = edge.lock().unwrap().port;
    let emu = Server::emulator(free_port(), edge_port);
    emu.ready().await;
    let e = edge.clone();
    let err = generate(&[emu.url()], Recovery::NONE, move || e.lock().unwrap().kill()).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert!(err.to_string().contains("lost its link to the edge"), "{err}");
}
