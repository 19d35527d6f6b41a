//! Headless Chromium for integration tests, driven through chromedriver's WebDriver HTTP API.
//!
//! WebDriver (W3C) is plain HTTP + JSON, so this is a small synchronous client over
//! `std::net::TcpStream` and `serde_json`: no WebSocket, no async runtime, no extra crates.
//! Each [`Browser`] owns one `chromedriver` process on a free port, one session and a fresh
//! profile directory; dropping it (also while a test panics) ends the session, kills chromedriver
//! and its process group, and removes the profile. A watchdog shell ends the group too if the test
//! process itself is killed, so no Chromium outlives its test.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`, `/usr/bin/chromedriver`);
//! `$CHROMIUM` and `$CHROMEDRIVER` point elsewhere.
//!
//! ```ignore
//! let browser = Browser::launch()?;
//! browser.goto(&format!("http://{addr}/"))?;
//! browser.wait_dataset("cells", Duration::from_secs(5), |n| n != "0")?;
//! browser.click("#shard-rows tr[data-shard='1']")?;
//! assert_eq!(browser.dataset()?["selected"], "1");
//! ```

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::watchdog;

/// Where Debian installs the browser; `$CHROMIUM` overrides.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian installs the driver; `$CHROMEDRIVER` overrides.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long chromedriver may take to answer `/status`, and Chromium to start a session: generous,
/// because CI machines here have two busy cores.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const SESSION_TIMEOUT: Duration = Duration::from_secs(90);
/// Any one WebDriver command (navigation waits for the page's load event).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `Drop` waits for chromedriver to close Chromium before killing the lot.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`Browser::wait_until`] re-runs its script.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Most bytes read from one HTTP answer (a full-page screenshot is a few MB of base64).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The element key of the W3C WebDriver spec.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What went wrong, worded for a test's failure message (`Debug` prints the same sentence, so an
/// `unwrap` or `expect` explains itself).
#[derive(thiserror::Error)]
pub enum WebDriverError {
    #[error(
        "{what} not found at {path} (set ${env} to use another): install Debian's chromium and \
         chromium-driver (apt-get install -y chromium chromium-driver)"
    )]
    Missing {
        what: &'static str,
        path: PathBuf,
        env: &'static str,
    },
    #[error("could not start {what}: {source}")]
    Spawn {
        what: &'static str,
        source: io::Error,
    },
    #[error("chromedriver did not become ready within {waited:?}; its log ends:\n{log}")]
    NotReady { waited: Duration, log: String },
    #[error("HTTP {method} {path} to {addr}: {source}")]
    Http {
        method: String,
        path: String,
        addr: String,
        source: io::Error,
    },
    #[error("malformed answer to {method} {path}: {detail}")]
    Protocol {
        method: String,
        path: String,
        detail: String,
    },
    /// The browser answered a command with a WebDriver error (a script threw, no such element…).
    #[error("WebDriver {command}: {error}: {message}")]
    Command {
        command: String,
        error: String,
        message: String,
    },
    /// [`Browser::wait_until`] ran out of time; `last` is what the script returned last.
    #[error("timed out after {waited:?} waiting for {what}; last value: {last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: Value,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl std::fmt::Debug for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

pub type Result<T, E = WebDriverError> = std::result::Result<T, E>;

/// How to start the browser. `Default` is a 1400×1000 headless window.
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    /// Viewport (and so screenshot) size in CSS pixels. Chromium gets it as `--window-size`, and
    /// the window is then grown by whatever the headless window keeps for its invisible toolbar
    /// (about 140 px of height), so pages see exactly this `innerWidth` × `innerHeight`.
    pub window: (u32, u32),
    /// Extra Chromium switches, after the defaults.
    pub extra_args: Vec<String>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self {
            window: (1400, 1000),
            extra_args: Vec::new(),
        }
    }
}

/// One headless Chromium under one chromedriver, with one WebDriver session.
pub struct Browser {
    session: String,
    driver: Driver,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with [`LaunchOptions::default`].
    pub fn launch() -> Result<Self> {
        Self::launch_with(&LaunchOptions::default())
    }

    pub fn launch_with(opts: &LaunchOptions) -> Result<Self> {
        let chromium = binary("chromium", "CHROMIUM", CHROMIUM)?;
        let chromedriver = binary("chromedriver", "CHROMEDRIVER", CHROMEDRIVER)?;
        let driver = Driver::start(&chromedriver)?;
        let profile = driver.dir.join("profile");
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--window-size={},{}", opts.window.0, opts.window.1));
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(opts.extra_args.iter().cloned());
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": {
                        "binary": chromium.to_string_lossy(),
                        "args": args,
                    },
                    // Console messages and uncaught errors, for `Browser::console`.
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let value = driver.command("POST", "/session", Some(&caps), SESSION_TIMEOUT)?;
        let Some(session) = value["sessionId"].as_str().map(str::to_owned) else {
            return Err(WebDriverError::Protocol {
                method: "POST".into(),
                path: "/session".into(),
                detail: format!("no sessionId in {value}"),
            });
        };
        let browser = Self { session, driver };
        browser.session_command(
            "POST",
            "/timeouts",
            Some(&json!({ "script": 30_000, "pageLoad": 30_000, "implicit": 0 })),
        )?;
        browser.fit_viewport(opts.window)?;
        Ok(browser)
    }

    fn fit_viewport(&self, (width, height): (u32, u32)) -> Result<()> {
        let size = self.eval("return [innerWidth, innerHeight, outerWidth, outerHeight];")?;
        let n = |i: usize| size[i].as_i64().unwrap_or(0);
        let (dw, dh) = (i64::from(width) - n(0), i64::from(height) - n(1));
        if dw == 0 && dh == 0 {
            return Ok(());
        }
        let rect = json!({ "width": n(2) + dw, "height": n(3) + dh });
        self.session_command("POST", "/window/rect", Some(&rect))
            .map(drop)
    }

    /// Navigates and waits for the page's load event.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.session_command("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// Runs `script` as the body of a function in the page and returns what it `return`s as JSON
    /// (DOM nodes come back as element references). A script that throws is a
    /// [`WebDriverError::Command`] with the JavaScript message.
    pub fn eval(&self, script: &str) -> Result<Value> {
        self.eval_with(script, &[])
    }

    /// [`Self::eval`] with `arguments[0..]` bound to `args`.
    pub fn eval_with(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.session_command(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Re-runs `script` every 100 ms until `done` holds for its value, and returns that value; after
    /// `timeout`, a [`WebDriverError::Timeout`] naming `what` and carrying the last value (or the
    /// last script error), so an `expect` on it explains itself. Script errors count as "not yet".
    pub fn wait_until(
        &self,
        what: &str,
        script: &str,
        timeout: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let start = Instant::now();
        loop {
            let last = match self.eval(script) {
                Ok(v) if done(&v) => return Ok(v),
                Ok(v) => v,
                Err(WebDriverError::Command { error, message, .. }) => {
                    json!({ "script error": error, "message": message })
                }
                Err(e) => return Err(e),
            };
            if start.elapsed() >= timeout {
                return Err(WebDriverError::Timeout {
                    what: what.to_owned(),
                    waited: start.elapsed(),
                    last,
                });
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// `document.body.dataset` as a JSON object of strings (the dashboard's test hooks).
    pub fn dataset(&self) -> Result<Value> {
        self.eval("return Object.assign({}, document.body.dataset);")
    }

    /// Waits until `document.body.dataset[key]` is present and `done` holds for it; returns it.
    /// The dashboard's test hooks are such keys (`cells`, `epoch`, `updates`, `selected`…).
    pub fn wait_dataset(
        &self,
        key: &str,
        timeout: Duration,
        mut done: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let script = format!(
            "return document.body.dataset[{}] ?? null;",
            Value::from(key)
        );
        let what = format!("body.dataset.{key}");
        let v = self.wait_until(&what, &script, timeout, |v| {
            v.as_str().is_some_and(&mut done)
        })?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Clicks the first element matching the CSS `selector` the way a user would (scrolled into
    /// view, at its centre); fails if none matches or it is covered.
    pub fn click(&self, selector: &str) -> Result<()> {
        let found = self.session_command(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": selector })),
        )?;
        let Some(id) = found[ELEMENT_KEY].as_str() else {
            return Err(WebDriverError::Protocol {
                method: "POST".into(),
                path: "/element".into(),
                detail: format!("no element reference in {found}"),
            });
        };
        self.session_command("POST", &format!("/element/{id}/click"), Some(&json!({})))
            .map(drop)
    }

    /// Clicks at viewport coordinates (CSS pixels) with a real pointer: for canvases.
    pub fn click_at(&self, x: f64, y: f64) -> Result<()> {
        // WebDriver wants whole pixels; any viewport coordinate fits an i64.
        let (x, y) = (x.round() as i64, y.round() as i64);
        let actions = json!({ "actions": [{
            "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
            "actions": [
                { "type": "pointerMove", "duration": 0, "origin": "viewport", "x": x, "y": y },
                { "type": "pointerDown", "button": 0 },
                { "type": "pointerUp", "button": 0 },
            ],
        }]});
        self.session_command("POST", "/actions", Some(&actions))
            .map(drop)
    }

    /// Saves a PNG of the viewport to `path` (parent folders are created).
    pub fn screenshot(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let value = self.session_command("GET", "/screenshot", None)?;
        let png =
            value
                .as_str()
                .and_then(base64_decode)
                .ok_or_else(|| WebDriverError::Protocol {
                    method: "GET".into(),
                    path: "/screenshot".into(),
                    detail: "not a base64 string".into(),
                })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| WebDriverError::Io {
                what: "creating",
                path: dir.to_owned(),
                source,
            })?;
        }
        std::fs::write(path, png).map_err(|source| WebDriverError::Io {
            what: "writing",
            path: path.to_owned(),
            source,
        })
    }

    /// Browser console entries since the last call (`{level, message, timestamp}`), uncaught
    /// exceptions and failed loads included as `SEVERE`.
    pub fn console(&self) -> Result<Vec<Value>> {
        let v = self.session_command("POST", "/se/log", Some(&json!({ "type": "browser" })))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Any WebDriver command of this session: `path` is relative to `/session/{id}`.
    pub fn session_command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.driver.command(
            method,
            &format!("/session/{}{path}", self.session),
            body,
            COMMAND_TIMEOUT,
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask chromedriver to close Chromium cleanly; `Driver::drop` then kills whatever is left.
        let path = format!("/session/{}", self.session);
        let _ = self.driver.command("DELETE", &path, None, QUIT_TIMEOUT);
    }
}

/// A chromedriver process in its own process group, with the folder holding its log and profile.
struct Driver {
    child: Child,
    watchdog: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Driver {
    fn start(chromedriver: &Path) -> Result<Self> {
        // A free port can be taken between our probe and chromedriver's bind: try a few.
        let mut last_err = None;
        for _ in 0..3 {
            let dir = fresh_dir()?;
            let log = dir.join("chromedriver.log");
            let port = free_port().map_err(|source| WebDriverError::Io {
                what: "finding a free port for chromedriver, logging to",
                path: log.clone(),
                source,
            })?;
            let child = Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own group, so one signal reaches chromedriver, Chromium and their helpers.
                .process_group(0)
                .spawn()
                .map_err(|source| WebDriverError::Spawn {
                    what: "chromedriver",
                    source,
                })?;
            let mut driver = Self {
                watchdog: None,
                child,
                port,
                dir,
            };
            driver.watchdog = watchdog::spawn(driver.child.id(), "KILL", 1, &driver.dir);
            match driver.wait_ready() {
                Ok(()) => return Ok(driver),
                Err(e) => last_err = Some(e), // dropping `driver` kills it and removes its folder
            }
        }
        Err(last_err.unwrap_or_else(|| WebDriverError::NotReady {
            waited: READY_TIMEOUT,
            log: String::new(),
        }))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            if let Ok(Some(_)) = self.child.try_wait() {
                break; // exited: the log says why (port taken, bad flag…)
            }
            if let Ok(v) = self.command("GET", "/status", None, Duration::from_secs(2))
                && v["ready"] == Value::Bool(true)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(WebDriverError::NotReady {
            waited: start.elapsed(),
            log: tail(&self.dir.join("chromedriver.log"), 2000),
        })
    }

    /// One WebDriver command: the `value` of a success, or the WebDriver error it carried.
    fn command(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let addr = format!("127.0.0.1:{}", self.port);
        let body_text = body.map(Value::to_string);
        let (status, text) = http(&addr, method, path, body_text.as_deref(), timeout)?;
        let mut answer: Value =
            serde_json::from_str(&text).map_err(|e| WebDriverError::Protocol {
                method: method.into(),
                path: path.into(),
                detail: format!("HTTP {status}, not JSON ({e}): {}", clip(&text, 300)),
            })?;
        let value = answer["value"].take();
        // W3C WebDriver: success is a 2xx; an error is a 4xx/5xx whose value names it.
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(WebDriverError::Command {
            command: format!("{method} {path}"),
            error: value["error"]
                .as_str()
                .unwrap_or("unknown error")
                .to_owned(),
            message: value["message"]
                .as_str()
                .map_or_else(|| clip(&value.to_string(), 500), |m| clip(m, 2000)),
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = self.child.id();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium and its helpers are in chromedriver's group unless they left it; end them too.
        kill_group(group);
        // Until nothing of the group runs any more (SIGKILL is delivered asynchronously), so a
        // test that checks for leftover browsers right after finds none.
        for _ in 0..40 {
            if !group_alive(group) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        watchdog::stop(self.watchdog.take());
        // Chromium may still be flushing its profile for a moment after the kill.
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn kill_group(group: u32) {
    let _ = Command::new("/bin/sh")
        .args(["-c", &format!("kill -s KILL -- -{group} 2>/dev/null")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether a live process (not a zombie waiting for init to reap it) is left in process group
/// `group`, from `/proc/PID/stat`: `pid (comm) state ppid pgrp ...`.
fn group_alive(group: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
            return false;
        };
        // `comm` may hold spaces and parentheses: the fields start after the last ')'.
        let mut fields = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
        pgrp == Some(group) && state.is_some_and(|s| s != "Z" && s != "X")
    })
}

/// A plain HTTP/1.1 exchange with `addr` (`host:port`), for chromedriver and for tests that poke
/// the server under test: `(status, body)`. Sends `Connection: close`; JSON bodies are labelled
/// as such.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let err = |source: io::Error| WebDriverError::Http {
        method: method.into(),
        path: path.into(),
        addr: addr.into(),
        source,
    };
    let sock = addr
        .to_socket_addrs()
        .map_err(err)?
        .next()
        .ok_or_else(|| err(io::Error::new(io::ErrorKind::NotFound, "no address")))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout).map_err(err)?;
    stream.set_read_timeout(Some(timeout)).map_err(err)?;
    stream.set_write_timeout(Some(timeout)).map_err(err)?;
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" {
        let _ = write!(
            req,
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).map_err(err)?;
    let raw = read_answer(&mut stream).map_err(err)?;
    let bad = |detail: &str| WebDriverError::Protocol {
        method: method.into(),
        path: path.into(),
        detail: detail.into(),
    };
    let head_end = find(&raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut content = raw[head_end + 4..].to_vec();
    if header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        content = dechunk(&content).ok_or_else(|| bad("bad chunked body"))?;
    } else if let Some(len) = header(&head, "content-length").and_then(|v| v.parse().ok()) {
        content.truncate(len);
    }
    Ok((status, String::from_utf8_lossy(&content).into_owned()))
}

/// Reads one answer: to the end of its `Content-Length`, to the last chunk, or to EOF.
fn read_answer(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(4096);
    let mut buf = [0u8; 16384];
    loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]);
            if let Some(len) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok())
                && raw.len() >= end + 4 + len
            {
                return Ok(raw);
            }
            if header(&head, "transfer-encoding").is_some() && raw.ends_with(b"0\r\n\r\n") {
                return Ok(raw);
            }
        }
        if raw.len() > MAX_ANSWER_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer too large",
            ));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8); // the low 8 bits: truncation is the point
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn binary(what: &'static str, env: &'static str, default: &str) -> Result<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(WebDriverError::Missing { what, path, env })
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A new, empty folder under the system temp dir, unique to this process and call.
fn fresh_dir() -> Result<PathBuf> {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "zonescaler-browser-{}-{}-{nanos}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|source| WebDriverError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    text[start..].to_owned()
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let end = (0..=max)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_the_rfc_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                base64_decode(enc).as_deref(),
                Some(plain.as_bytes()),
                "{enc}"
            );
        }
        assert_eq!(
            base64_decode("Zm9v!"),
            None,
            "a byte outside the alphabet is refused"
        );
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n").as_deref(),
            Some(&b"Wikipedia"[..])
        );
        assert_eq!(
            dechunk(b"9\r\nshort\r\n"),
            None,
            "a chunk past the end is refused"
        );
    }
}
