//! The agent's live dashboard in a real headless browser: the real edge, emulator (alternating
//! good and bad every 1.5 s), agent (threshold policy, `--dashboard-listen`) and a generating UE
//! as processes on loopback, and Chromium watching the page while the text is generated. The
//! split the page shows must change while it watches, the SNR, rate and latency plots must have
//! points, the text must arrive, and the page must load nothing from elsewhere. A screenshot is
//! saved (`SPLITINFER_DASHBOARD_PNG`, else the test's scratch directory).
//!
//! Needs Chromium (Debian's package `chromium`, or `$CHROMIUM`); where there is none the test says
//! so and skips, as the compose test does without Docker.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use splitinfer_tests::browser::{Browser, chromium};
use splitinfer_tests::{default_model, workspace_binary};

/// The processes of the test, killed on drop (panics included).
struct Processes(Vec<(&'static str, Child)>);

impl Processes {
    fn spawn(&mut self, name: &'static str, args: &[&str]) {
        let child = Command::new(workspace_binary(name))
            .args(args)
            .env("RUST_LOG", "warn")
            // Edge and UE share the machine's cores (docs/performance.md, "Thread settings").
            .env("RAYON_NUM_THREADS", "1")
            .env("CANDLE_BARRIER_POOL_SPIN_LIMIT", "2000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.0.push((name, child));
    }

    /// Panics naming any process that has exited.
    fn check_running(&mut self) {
        for (name, child) in &mut self.0 {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{name} exited early ({status}); its log is above");
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A port that was free a moment ago (the services bind their own addresses from flags).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, what: &str, procs: &mut Processes) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        procs.check_running();
        assert!(Instant::now() < deadline, "{what} is not listening on 127.0.0.1:{port} after 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the page shows, from the data-* attributes it writes and its resource list; `null` until
/// the page has loaded.
const PROBE: &str = r#"(() => {
  const q = (s) => document.querySelector(s);
  if (document.readyState !== 'complete' || !q('#split')) return null;
  const points = (id) => Number(q('#' + id).dataset.points);
  const texts = [...document.querySelectorAll('.ue pre')].map((p) => p.textContent);
  return {
    events: Number(document.body.dataset.events),
    k: q('#split').dataset.k,
    ks: q('#split').dataset.ks,
    live_changes: Number(q('#split').dataset.liveChanges),
    split_text: q('#split-k').textContent,
    snr: points('plot-snr'), loss: points('plot-loss'), split: points('plot-split'),
    rate: points('plot-rate'), latency: points('plot-latency'),
    decisions: Number(q('#decisions').dataset.rows),
    text: texts.join(''),
    foreign: performance.getEntriesByType('resource').map((e) => e.name).filter((n) => !n.startsWith(location.origin)),
  };
})()"#;

#[test]
fn the_dashboard_shows_the_split_moving_while_a_ue_generates() {
    let browser = match chromium() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("dashboard: skipped: {why}");
            return;
        }
    };
    let model = default_model();
    let model = model.to_str().unwrap();
    let thresholds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/thresholds.csv");
    let [edge, emulator, agent, dashboard] = [free_port(), free_port(), free_port(), free_port()];
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let mut procs = Processes(Vec::new());
    procs.spawn("edge-server", &["--listen", &format!("127.0.0.1:{edge}"), "--model", model, "--agent", &url(agent)]);
    procs.spawn(
        "channel-emulator",
        &["--listen", &format!("127.0.0.1:{emulator}"), "--edge", &url(edge), "--alternate-ms", "1500", "--stats-window", "8"],
    );
    procs.spawn(
        "agent",
        &[
            "--listen", &format!("127.0.0.1:{agent}"), "--emulator", &url(emulator), "--policy", "threshold",
            "--thresholds", thresholds.to_str().unwrap(), "--n-layers", "30", "--stats-period-ms", "200",
            "--min-dwell-ms", "500", "--dashboard-listen", &format!("127.0.0.1:{dashboard}"),
        ],
    );
    wait_port(edge, "the edge", &mut procs);
    wait_port(dashboard, "the agent's dashboard", &mut procs);
    procs.spawn(
        "ue-client",
        &[
            "--edge", &url(emulator), "--agent", &url(agent), "--model", model, "--name", "ue-1", "-n", "2000", "--ignore-eos",
            "--prompt", "The history of the old harbour town begins with the fishermen who",
        ],
    );

    let page = format!("{}/", url(dashboard));
    let mut b = Browser::open(&browser, &page, 1400, 1060).unwrap_or_else(|e| panic!("{}: {e}", browser.display()));
    // Watch until the page has shown at least two values of k, one of them arrived live, and
    // every plot and the text have data.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut shown = Vec::<String>::new();
    let last = loop {
        procs.check_running();
        let p: Value = b.eval(PROBE).unwrap();
        if let Some(k) = p["k"].as_str().filter(|k| !k.is_empty())
            && shown.last().is_none_or(|l| l != k)
        {
            eprintln!("dashboard: the page shows {} after {} events", p["split_text"], p["events"]);
            shown.push(k.to_string());
        }
        let n = |f: &str| p[f].as_f64().unwrap_or(0.0);
        let text_len = p["text"].as_str().map_or(0, |t| t.trim().len());
        // (At least 20 s of watching, so that the screenshot has a story to tell.)
        if n("events") >= 40.0 && shown.len() >= 3 && n("live_changes") >= 2.0 && n("snr") > 10.0 && n("loss") > 10.0 && n("rate") >= 3.0 && n("latency") >= 3.0 && text_len > 40 {
            break p;
        }
        assert!(Instant::now() < deadline, "after 120 s the dashboard still lacks something; it shows: {p:#}\n(the split values seen: {shown:?})");
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("dashboard: split values shown {shown:?}; the page: {last:#}");
    let ks: Vec<&str> = last["ks"].as_str().unwrap().split(',').collect();
    assert!(ks.len() >= 3 && ks.windows(2).all(|w| w[0] != w[1]), "the page's split history: {ks:?}");
    assert!(ks.iter().all(|k| ["1", "24", "27"].contains(k)), "every k is a row of deploy/thresholds.csv: {ks:?}");
    assert!(last["decisions"].as_f64().unwrap() >= 3.0 && last["split"].as_f64().unwrap() >= 3.0, "{last:#}");
    assert_eq!(last["foreign"], Value::Array(vec![]), "the page loaded something from elsewhere");

    let png = b.screenshot().unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000, "not a screenshot of a full page: {} bytes", png.len());
    let path = std::env::var_os("SPLITINFER_DASHBOARD_PNG").map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"), PathBuf::from);
    std::fs::write(&path, &png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    eprintln!("dashboard: screenshot saved to {}", path.display());
}
