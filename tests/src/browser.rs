//! A headless Chromium driven over the DevTools protocol, for tests of the agent's dashboard: open
//! a page, evaluate JavaScript in it while it runs, take a screenshot.
//!
//! `--dump-dom` and `--screenshot` cannot wait for a page that keeps a server-sent event stream
//! open (`--virtual-time-budget` waits for the network to go idle, which it never does), so the
//! browser is asked over its DevTools WebSocket instead. The WebSocket client is the minimum of
//! RFC 6455 the browser's endpoint needs: one connection, text frames, no extensions.
//!
//! The browser is `$CHROMIUM`, else the first of `chromium`, `chromium-browser`, `google-chrome`
//! on `PATH` (Debian's package `chromium`; `.ci/run` installs it where missing).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The browser binary, or why there is none.
pub fn chromium() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("CHROMIUM={} is not a file", p.display())) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(p) = std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()) {
            return Ok(p);
        }
    }
    Err("no chromium, chromium-browser or google-chrome on PATH and no $CHROMIUM (Debian: apt-get install chromium)".into())
}

/// One headless browser showing one page; killed on drop.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    ws: TcpStream,
    next_id: u64,
}

impl Browser {
    /// Starts `binary` headless on `url` with a window of `width`×`height` and connects to the
    /// page's DevTools endpoint.
    pub fn open(binary: &Path, url: &str, width: u32, height: u32) -> Result<Self, String> {
        static OPENED: AtomicU32 = AtomicU32::new(0);
        let profile = std::env::temp_dir().join(format!("si-chromium-{}-{}", std::process::id(), OPENED.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&profile).map_err(|e| format!("cannot create {}: {e}", profile.display()))?;
        let child = Command::new(binary)
            .args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars"])
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size={width},{height}"))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        // The browser writes its DevTools port here once it listens.
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file).ok().and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u16>().ok())) {
                break port;
            }
            if Instant::now() > deadline {
                return Err(format!("{} wrote no {} within 30 s", binary.display(), port_file.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let page = page_endpoint(port, url, deadline)?;
        let ws = websocket(port, &page)?;
        let mut browser = Self { child, profile, ws, next_id: 1 };
        // The window's size includes what a headless window has of a frame: set the page's own.
        let metrics = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        browser.call("Emulation.setDeviceMetricsOverride", metrics)?;
        Ok(browser)
    }

    /// Evaluates `expression` in the page; its value (which must be JSON-serializable).
    pub fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }))?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!("{expression:?} threw: {e}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// A PNG of the page as it is now.
    pub fn screenshot(&mut self) -> Result<Vec<u8>, String> {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        base64(r["data"].as_str().ok_or("captureScreenshot returned no data")?)
    }

    /// One DevTools command and its result (events that come meanwhile are skipped).
    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        send_text(&mut self.ws, &json!({ "id": id, "method": method, "params": params }).to_string())?;
        loop {
            let m: Value = serde_json::from_str(&read_message(&mut self.ws)?).map_err(|e| format!("DevTools sent no JSON: {e}"))?;
            if m["id"] == id {
                if let Some(e) = m.get("error") {
                    return Err(format!("{method} failed: {e}"));
                }
                return Ok(m["result"].clone());
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The path of the DevTools WebSocket of the page showing `url`.
fn page_endpoint(port: u16, url: &str, deadline: Instant) -> Result<String, String> {
    loop {
        let list = http_get(port, "/json/list")?;
        let pages: Value = serde_json::from_str(&list).map_err(|e| format!("/json/list is not JSON ({e}): {list}"))?;
        let page = pages.as_array().into_iter().flatten().find(|p| p["type"] == "page" && p["url"].as_str().is_some_and(|u| u.starts_with(url)));
        if let Some(ws) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
            let path = ws.split_once("/devtools/").map(|(_, p)| format!("/devtools/{p}"));
            return path.ok_or_else(|| format!("unexpected webSocketDebuggerUrl {ws}"));
        }
        if Instant::now() > deadline {
            return Err(format!("no page showing {url} in /json/list: {list}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connect(port: u16) -> Result<TcpStream, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("cannot connect to DevTools on port {port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    Ok(s)
}

/// The head of a response up to its blank line.
fn read_head(r: &mut BufReader<&TcpStream>) -> Result<String, String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).map_err(|e| format!("DevTools: {e}"))? == 0 || line == "\r\n" {
            return Ok(head);
        }
        head.push_str(&line);
    }
}

fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = connect(port)?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut r = BufReader::new(&s);
    let head = read_head(&mut r)?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("DevTools {path}: {head}"));
    }
    // The browser keeps the connection open whatever the request says: read Content-Length bytes.
    let length = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.trim().parse::<usize>().ok()))
        .ok_or_else(|| format!("DevTools {path}: no Content-Length in {head}"))?;
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).map_err(|e| format!("DevTools {path}: {e}"))?;
    String::from_utf8(body).map_err(|e| format!("DevTools {path}: {e}"))
}

fn websocket(port: u16, path: &str) -> Result<TcpStream, String> {
    let mut s = connect(port)?;
    // Any 16 bytes in base64 serve as the key; the answer's accept value is not checked.
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c3BsaXRpbmZlci10ZXN0cyE=\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let head = read_head(&mut BufReader::new(&s))?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("DevTools refused the WebSocket: {head}"));
    }
    Ok(s)
}

/// One masked text frame (a client must mask; any key will do).
fn send_text(s: &mut TcpStream, text: &str) -> Result<(), String> {
    let payload = text.as_bytes();
    let mut frame = vec![0x81u8];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x5a, 0x17, 0xc3, 0x2e];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).map_err(|e| format!("DevTools: {e}"))
}

/// The next text message, its fragments joined (the server does not mask).
fn read_message(s: &mut TcpStream) -> Result<String, String> {
    let mut message = Vec::new();
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).map_err(|e| format!("DevTools: {e}"))?;
        let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).map_err(|e| e.to_string())?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).map_err(|e| e.to_string())?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).map_err(|e| format!("DevTools: {e}"))?;
        match opcode {
            0x8 => return Err("DevTools closed the WebSocket".into()),
            // Ping and pong: a browser does not ping its DevTools clients; skip them anyway.
            0x9 | 0xa => continue,
            _ => message.extend_from_slice(&payload),
        }
        if fin {
            return String::from_utf8(message).map_err(|e| format!("DevTools sent invalid UTF-8: {e}"));
        }
    }
}

/// Standard base64 (RFC 4648) with padding, as DevTools encodes screenshots.
fn base64(text: &str) -> Result<Vec<u8>, String> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Ok(c - b'A'),
        b'a'..=b'z' => Ok(c - b'a' + 26),
        b'0'..=b'9' => Ok(c - b'0' + 52),
        b'+' => Ok(62),
        b'/' => Ok(63),
        _ => Err(format!("{:?} is not base64", c as char)),
    };
    let digits = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)?) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_every_padding() {
        assert_eq!(super::base64("").unwrap(), b"");
        assert_eq!(super::base64("Zg==").unwrap(), b"f");
        assert_eq!(super::base64("Zm8=").unwrap(), b"fo");
        assert_eq!(super::base64("Zm9v").unwrap(), b"foo");
        assert_eq!(super::base64("Zm9vYmFy+/8=").unwrap(), b"foobar\xfb\xff");
        assert!(super::base64("Zm9v!").is_err());
    }
}
