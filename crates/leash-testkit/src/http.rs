//! A small blocking HTTP/1.1 client for tests of leashd's API (one request
//! per connection), and a headless Chromium driven over WebDriver.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Sends one request to `addr` (`127.0.0.1:port`): `headers` as given (add
/// `Host` yourself to test it; it defaults to `addr`).
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    // Read the head, then exactly the body (some servers keep the
    // connection open whatever the request said).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "the connection closed before a header block");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))).collect();
    let mut body = raw[split + 4..].to_vec();
    let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    loop {
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done || method == "HEAD" || status == 204 || status == 304 {
            break;
        }
        let n = s.read(&mut buf).expect("read body");
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    if chunked {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
    out
}

/// A headless Debian Chromium under chromedriver, driven over WebDriver.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// Whether this machine has Chromium and chromedriver; in CI their absence
/// fails the test, elsewhere it skips with the reason printed.
pub fn require_chromium(test: &str) -> bool {
    let have = Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists();
    if !have {
        assert!(!crate::must_run(), "{test}: chromium and chromedriver are required in CI (scripts/setup.sh)");
        #[allow(clippy::print_stderr, reason = "the skip is reported where test output goes")]
        {
            eprintln!(
                "SKIP {test}: /usr/bin/chromium or /usr/bin/chromedriver missing (apt-get install chromium chromium-driver)"
            );
        }
    }
    have
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (the flags this machine
    /// needs: no sandbox as root, no background networking).
    pub fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        crate::eventually(Duration::from_secs(15), "chromedriver to listen", || TcpStream::connect(&addr).ok());
        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
        ];
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = serde_json::json!({
            "capabilities": { "alwaysMatch": { "browserName": "chrome",
                "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": all } } }
        });
        let r =
            request(&addr, "POST", "/session", &[("Content-Type", "application/json")], caps.to_string().as_bytes());
        let v = r.json();
        let session =
            v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {}", r.text())).to_owned();
        Browser { driver, port, session, _profile: profile }
    }

    fn call(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        match self.try_call(method, path, body) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// A WebDriver command; its value, or what went wrong (with the error's name first).
    fn try_call(&self, method: &str, path: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        let addr = format!("127.0.0.1:{}", self.port);
        let path = format!("/session/{}{path}", self.session);
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let r = request(&addr, method, &path, &[("Content-Type", "application/json")], body.as_bytes());
        let v = r.json();
        if r.status != 200 {
            return Err(format!("{}: WebDriver {method} {path}: {} {}", v["value"]["error"], r.status, r.text()));
        }
        Ok(v["value"].clone())
    }

    /// Navigates to `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", serde_json::json!({ "url": url }));
    }

    /// Runs JavaScript in the page (`arguments[0]`… are `args`); its result.
    pub fn js(&self, script: &str, args: serde_json::Value) -> serde_json::Value {
        self.call("POST", "/execute/sync", serde_json::json!({ "script": script, "args": args }))
    }

    /// The WebDriver id of the element `css`.
    fn element(&self, css: &str) -> String {
        let el = self.call("POST", "/element", serde_json::json!({ "using": "css selector", "value": css }));
        el.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_str()).expect("element id").to_owned()
    }

    /// Types text into the element `css` through real key events.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/value"), serde_json::json!({ "text": text }));
    }

    /// Clicks the element `css`. A live page may draw it again between
    /// finding and clicking it (a row of the event list as events arrive):
    /// then it is found again, a few times.
    pub fn click(&self, css: &str) {
        for _ in 0..5 {
            let id = self.element(css);
            match self.try_call("POST", &format!("/element/{id}/click"), serde_json::json!({})) {
                Ok(_) => return,
                Err(e) if e.starts_with("\"stale element reference\"") => {}
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{css}: drawn again at every click");
    }

    /// Waits until `script` returns something truthy (not null/false/""); that value.
    pub fn wait_for(&self, limit: Duration, what: &str, script: &str) -> serde_json::Value {
        crate::eventually(limit, what, || {
            let v = self.js(script, serde_json::json!([]));
            let truthy = !(v.is_null() || v == false || v == "" || v == 0);
            truthy.then_some(v)
        })
    }

    /// Saves a screenshot (PNG) to `path`.
    pub fn screenshot(&self, path: &Path) -> PathBuf {
        self.js("window.scrollTo(0, 0)", serde_json::json!([]));
        let v = self.call("GET", "/screenshot", serde_json::Value::Null);
        let png = base64_decode(v.as_str().expect("base64 PNG"));
        std::fs::write(path, png).expect("write screenshot");
        path.to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let addr = format!("127.0.0.1:{}", self.port);
        if TcpStream::connect(&addr).is_ok() {
            let _ =
                std::panic::catch_unwind(|| request(&addr, "DELETE", &format!("/session/{}", self.session), &[], b""));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).map(val).collect();
    bytes
        .chunks(4)
        .flat_map(|c| {
            let n = c.iter().enumerate().fold(0u32, |n, (i, v)| n | (u32::from(*v) << (18 - 6 * i)));
            let out = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.into_iter().take(c.len().saturating_sub(1))
        })
        .collect()
}
