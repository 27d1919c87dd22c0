//! Two hosts on one machine: the edge (with the channel emulator in front of it) in one network
//! namespace, the UE in another, joined by a veth pair; the real binaries, real TCP between
//! real addresses. Needs root and iproute2; where they are missing the test says so and skips.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use splitinfer_tests::{default_model, greedy_request, monolithic, workspace_binary};

const EDGE_IP: &str = "10.231.0.1";
const UE_IP: &str = "10.231.0.2";

/// Namespaces and processes of the test; torn down on drop, panics included.
struct Hosts {
    edge_ns: String,
    ue_ns: String,
    children: Vec<Child>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.edge_ns, &self.ue_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

fn setup() -> Result<Hosts, String> {
    let id = std::process::id();
    let hosts = Hosts { edge_ns: format!("si-edge-{id}"), ue_ns: format!("si-ue-{id}"), children: vec![] };
    let (e, u) = (hosts.edge_ns.as_str(), hosts.ue_ns.as_str());
    let (ve, vu) = (format!("sie{id}"), format!("siu{id}"));
    ip(&["netns", "add", e])?;
    ip(&["netns", "add", u])?;
    ip(&["link", "add", &ve, "type", "veth", "peer", "name", &vu])?;
    ip(&["link", "set", &ve, "netns", e])?;
    ip(&["link", "set", &vu, "netns", u])?;
    ip(&["-n", e, "addr", "add", &format!("{EDGE_IP}/24"), "dev", &ve])?;
    ip(&["-n", u, "addr", "add", &format!("{UE_IP}/24"), "dev", &vu])?;
    for (ns, dev) in [(e, &ve), (u, &vu)] {
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok(hosts)
}

fn spawn_in(ns: &str, bin: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(workspace_binary(bin))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits until something accepts TCP on `addr` inside `ns`.
fn wait_for_port(ns: &str, addr: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let probe = format!("import socket; socket.create_connection(('{addr}', {port}), 1)");
    while Instant::now() < deadline {
        let ok = Command::new("ip").args(["netns", "exec", ns, "python3", "-c", &probe]).stderr(Stdio::null()).status();
        if ok.is_ok_and(|s| s.success()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("nothing listens on {addr}:{port} in {ns} after 60 s");
}

#[test]
fn ue_and_edge_on_two_hosts_generate_the_monolithic_tokens() {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        eprintln!("SKIPPED ue_and_edge_on_two_hosts: network namespaces need root, and this test runs as another user");
        return;
    }
    let mut hosts = match setup() {
        Ok(h) => h,
        Err(reason) => {
            eprintln!("SKIPPED ue_and_edge_on_two_hosts: this environment cannot make network namespaces: {reason}");
            return;
        }
    };
    let model = default_model();
    let m = model.to_str().unwrap();
    let edge_ns = hosts.edge_ns.clone();
    let ue_ns = hosts.ue_ns.clone();
    // Edge host: the edge on its loopback, the emulator on the veth address in front of it.
    hosts.children.push(spawn_in(&edge_ns, "edge-server", &["--listen", "127.0.0.1:50051", "--model", m]));
    hosts.children.push(spawn_in(&edge_ns, "channel-emulator", &["--listen", &format!("{EDGE_IP}:50052"), "--edge", "http://127.0.0.1:50051"]));
    wait_for_port(&edge_ns, "127.0.0.1", 50051);
    wait_for_port(&ue_ns, EDGE_IP, 50052);

    let prompt = "The capital of France is";
    let out = Command::new("ip")
        .args(["netns", "exec", &ue_ns])
        .arg(workspace_binary("ue-client"))
        .args(["--edge", &format!("http://{EDGE_IP}:50052"), "--model", m, "--split", "15", "-n", "12", "--json", "--prompt", prompt])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "ue-client failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<u32> = v["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let want: Vec<u32> = monolithic(&greedy_request(prompt, 15, 12)).into_iter().map(|t| t.0).collect();
    assert_eq!(got, want);
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");

    // And the UE host cannot see the edge's own port: only the emulator is exposed.
    let direct = Command::new("ip")
        .args(["netns", "exec", &ue_ns, "python3", "-c", &format!("import socket; socket.create_connection(('{EDGE_IP}', 50051), 1)")])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!direct.success(), "the edge's loopback port should not be reachable from the UE host");
}
