//! A headless Chromium for the dashboard's browser test, driven over the
//! Chrome DevTools Protocol (CDP) without a driver or a crate for it.
//!
//! Chromium's `--remote-debugging-pipe` speaks CDP on two inherited file
//! descriptors: it reads commands from fd 3 and writes replies and events
//! to fd 4, each message one JSON text followed by a NUL byte. std's
//! `Command` cannot place a pipe on fd 3 or 4 without `unsafe`, which the
//! workspace forbids, so Chromium is started through `sh`, whose
//! redirections `3<&0 4>&1` move our stdin and stdout pipes there before
//! `exec` (after which the PID we hold is Chromium's own).
//!
//! A reader thread splits the replies and hands each to the call waiting
//! for its `id`; console messages, uncaught exceptions and browser log
//! entries (Content-Security-Policy violations among them) are kept for
//! [`Browser::problems`]. Every call has a deadline, and dropping the
//! [`Browser`] kills Chromium by its PID.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Where Debian's `chromium` package puts the browser (`.ci/run` installs
/// it). `LEVEE_CHROMIUM` overrides it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one protocol call may take. Generous: a cold Chromium on a
/// busy two-core machine is slow to start and to render.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`Browser::wait_for`] evaluates its condition.
const POLL: Duration = Duration::from_millis(100);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Browser {
    child: Child,
    stdin: Mutex<ChildStdin>,
    next_id: AtomicU64,
    pending: Pending,
    problems: Arc<Mutex<Vec<String>>>,
    /// The page's session, from `Target.attachToTarget` with `flatten`.
    session: String,
    reader: Option<JoinHandle<()>>,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts a headless Chromium with a fresh profile and attaches to its
    /// blank page, with a `width` × `height` viewport.
    ///
    /// Fails with a message that says what to install when Chromium is
    /// missing: the browser test must fail, not skip, where it cannot run.
    pub async fn launch(width: u32, height: u32) -> anyhow::Result<Browser> {
        let chromium = std::env::var_os("LEVEE_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(CHROMIUM));
        if !chromium.exists() {
            bail!(
                "{} not found: the dashboard's browser test needs Chromium \
                 (Debian: apt-get install chromium; .ci/run installs it)",
                chromium.display()
            );
        }
        let profile = tempfile::tempdir().context("temp dir for the Chromium profile")?;
        let log = std::fs::File::create(profile.path().join("chromium.log"))?;
        let script = "exec \"$0\" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
             --no-default-browser-check --disable-background-networking --disable-component-update \
             --disable-sync --disable-extensions --disable-default-apps --mute-audio --hide-scrollbars \
             --force-color-profile=srgb --user-data-dir=\"$1\" --remote-debugging-pipe about:blank \
             3<&0 4>&1 0</dev/null 1>/dev/null";
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&chromium)
            .arg(profile.path().join("profile"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", chromium.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("chromium's pipes were not set up");
        };
        let pending: Pending = Arc::default();
        let problems: Arc<Mutex<Vec<String>>> = Arc::default();
        let reader = {
            let pending = pending.clone();
            let problems = problems.clone();
            std::thread::Builder::new()
                .name("cdp-reader".into())
                .spawn(move || read_messages(stdout, &pending, &problems))?
        };
        let mut browser = Browser {
            child,
            stdin: Mutex::new(stdin),
            next_id: AtomicU64::new(1),
            pending,
            problems,
            session: String::new(),
            reader: Some(reader),
            profile,
        };
        let targets = browser.call_browser("Target.getTargets", json!({})).await?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .ok_or_else(|| anyhow!("chromium has no page target: {targets}"))?
            .to_string();
        let attached = browser
            .call_browser(
                "Target.attachToTarget",
                json!({"targetId": page, "flatten": true}),
            )
            .await?;
        browser.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {attached}"))?
            .to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({})).await?;
        }
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await?;
        Ok(browser)
    }

    /// Chromium's stderr, for a failing test to print.
    pub fn log_path(&self) -> PathBuf {
        self.profile.path().join("chromium.log")
    }

    /// Calls a method on the page's session and returns its `result`.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.send(method, params, Some(&self.session)).await
    }

    async fn call_browser(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.send(method, params, None).await
    }

    async fn send(&self, method: &str, params: Value, session: Option<&str>) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session.filter(|s| !s.is_empty()) {
            message["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        // Commands are a few hundred bytes and Chromium reads its pipe
        // continuously: this write does not wait in practice.
        let written = {
            let mut stdin = lock(&self.stdin);
            stdin.write_all(&bytes).and_then(|()| stdin.flush())
        };
        if let Err(e) = written {
            lock(&self.pending).remove(&id);
            bail!(
                "{method}: cannot write to chromium (did it exit? see {:?}): {e}",
                self.log_path()
            );
        }
        let reply = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => bail!("{method}: chromium exited (see {:?})", self.log_path()),
            Err(_) => {
                lock(&self.pending).remove(&id);
                bail!("{method}: no reply from chromium within {CALL_TIMEOUT:?}");
            }
        };
        if let Some(error) = reply.get("error") {
            bail!("{method}: {error}");
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Opens `url` and waits until the document has loaded.
    pub async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        let r = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            bail!("navigating to {url}: {e}");
        }
        self.wait_for("document.readyState === 'complete'", CALL_TIMEOUT)
            .await
            .with_context(|| format!("loading {url}"))?;
        Ok(())
    }

    /// Evaluates a JavaScript expression in the page (awaiting it when it
    /// is a promise) and returns its value as JSON (`null` for undefined).
    pub async fn evaluate(&self, expression: &str) -> anyhow::Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            let text = e["exception"]["description"]
                .as_str()
                .or_else(|| e["text"].as_str())
                .unwrap_or("exception");
            bail!("evaluating `{expression}`: {text}");
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluates `expression` until it is truthy, and returns that value.
    ///
    /// # Errors
    /// After `deadline`, naming the expression, its last value and what the
    /// page logged.
    pub async fn wait_for(&self, expression: &str, deadline: Duration) -> anyhow::Result<Value> {
        let end = Instant::now() + deadline;
        loop {
            let value = self.evaluate(expression).await;
            match &value {
                Ok(v) if truthy(v) => return Ok(v.clone()),
                _ if Instant::now() >= end => {
                    let last = match value {
                        Ok(v) => v.to_string(),
                        Err(e) => format!("{e:#}"),
                    };
                    let problems = self.problems();
                    let recent = &problems[problems.len().saturating_sub(8)..];
                    bail!(
                        "timed out after {deadline:?} waiting for `{expression}` (last: {last}); \
                         the page's last problems: {recent:?}"
                    );
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// A PNG of the whole page, beyond the viewport if it is taller.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = &metrics["cssContentSize"];
        let (w, h) = (size["width"].as_f64(), size["height"].as_f64());
        let mut params = json!({"format": "png"});
        if let (Some(w), Some(h)) = (w, h) {
            params["captureBeyondViewport"] = json!(true);
            params["clip"] = json!({"x": 0, "y": 0, "width": w.ceil(), "height": h.ceil(), "scale": 1});
        }
        let shot = self.call("Page.captureScreenshot", params).await?;
        let data = shot["data"]
            .as_str()
            .ok_or_else(|| anyhow!("no data in the screenshot reply"))?;
        base64_decode(data).context("decoding the screenshot")
    }

    /// Writes [`screenshot`](Self::screenshot) to `path`.
    pub async fn save_screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self.screenshot().await?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Console errors and warnings, uncaught exceptions and browser log
    /// entries (failed loads, Content-Security-Policy violations) so far.
    pub fn problems(&self) -> Vec<String> {
        lock(&self.problems).clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SIGKILL by PID: Chromium's helper processes notice that their
        // parent is gone and exit.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader ends at end of file, once every holder of the pipe is
        // gone; wait for it, but not forever if a helper lingers.
        if let Some(reader) = self.reader.take() {
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while !reader.is_finished() && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }
}

/// Splits the NUL-terminated messages on `from` and dispatches them, until
/// end of file. Dropping the pending senders then tells every waiting call
/// that Chromium is gone.
fn read_messages(mut from: impl Read, pending: &Pending, problems: &Mutex<Vec<String>>) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(end) = buf[start..].iter().position(|&b| b == 0) {
            if let Ok(message) = serde_json::from_slice::<Value>(&buf[start..start + end]) {
                dispatch(message, pending, problems);
            }
            start += end + 1;
        }
        buf.drain(..start);
    }
    lock(pending).clear();
}

fn dispatch(message: Value, pending: &Pending, problems: &Mutex<Vec<String>>) {
    if let Some(id) = message.get("id").and_then(Value::as_u64) {
        if let Some(tx) = lock(pending).remove(&id) {
            let _ = tx.send(message);
        }
        return;
    }
    let params = &message["params"];
    let problem = match message["method"].as_str() {
        Some("Runtime.exceptionThrown") => {
            let d = &params["exceptionDetails"];
            Some(format!(
                "exception: {}",
                d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("?")
            ))
        }
        Some("Runtime.consoleAPICalled") if matches!(params["type"].as_str(), Some("error" | "warning")) => {
            let args: Vec<String> = params["args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| {
                            v["value"]
                                .as_str()
                                .map_or_else(|| v["description"].to_string(), String::from)
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(format!(
                "console.{}: {}",
                params["type"].as_str().unwrap_or("?"),
                args.join(" ")
            ))
        }
        Some("Log.entryAdded") => {
            let e = &params["entry"];
            matches!(e["level"].as_str(), Some("error" | "warning")).then(|| {
                format!(
                    "{} {}: {} {}",
                    e["source"].as_str().unwrap_or("?"),
                    e["level"].as_str().unwrap_or("?"),
                    e["text"].as_str().unwrap_or(""),
                    e["url"].as_str().unwrap_or("")
                )
            })
        }
        _ => None,
    };
    if let Some(p) = problem {
        lock(problems).push(p);
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Decodes standard base64 (RFC 4648, with padding), as CDP sends binary
/// data. Whitespace is not expected and is an error.
pub fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    if !text.len().is_multiple_of(4) || text.len() - bytes.len() > 2 {
        bail!("base64 of length {} with bad padding", text.len());
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for group in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in group.iter().enumerate() {
            let v = value(c).ok_or_else(|| anyhow!("invalid base64 byte {c:#04x}"))?;
            n |= v << (18 - 6 * i);
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // 2, 3 or 4 characters carry 1, 2 or 3 bytes.
        let take = group.len() - 1;
        if take == 0 {
            bail!("base64 ends with a lone character");
        }
        out.extend_from_slice(&decoded[..take]);
    }
    Ok(out)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_rfc4648_vectors() {
        for (encoded, plain) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes(), "{encoded}");
        }
        assert_eq!(base64_decode("/+/+").unwrap(), [0xff, 0xef, 0xfe]);
        for bad in ["Zg=", "Z===", "Zm9v!A==", "Zg==Zg=="] {
            assert!(base64_decode(bad).is_err(), "{bad} is refused");
        }
    }

    /// The whole round trip against the real browser: Chromium must be
    /// installed (see [`CHROMIUM`]), as for the dashboard test.
    #[tokio::test]
    async fn drives_a_real_chromium() {
        let browser = Browser::launch(400, 300).await.unwrap();
        browser
            .navigate("data:text/html,<title>t</title><p id=p>hello</p>")
            .await
            .unwrap();
        assert_eq!(
            browser
                .evaluate("document.getElementById('p').textContent")
                .await
                .unwrap(),
            "hello"
        );
        assert_eq!(
            browser.evaluate("Promise.resolve({a: [1, 2]})").await.unwrap(),
            json!({"a": [1, 2]})
        );
        assert!(
            browser
                .evaluate("nope()")
                .await
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
        let err = browser
            .wait_for("false", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        let png = browser.screenshot().await.unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let pid = browser.child.id();
        drop(browser);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z")),
            "chromium {pid} is gone"
        );
    }

    #[test]
    fn messages_are_split_on_nul_and_matched_by_id() {
        let pending: Pending = Arc::default();
        let problems = Mutex::new(Vec::new());
        let (tx, mut rx) = oneshot::channel();
        lock(&pending).insert(7, tx);
        let stream = b"{\"method\":\"Log.entryAdded\",\"params\":{\"entry\":{\"source\":\"security\",\"level\":\"error\",\"text\":\"csp\"}}}\0{\"id\":7,\"result\":{\"ok\":true}}\0";
        read_messages(&stream[..], &pending, &problems);
        assert_eq!(rx.try_recv().unwrap()["result"]["ok"], true);
        assert_eq!(lock(&problems).as_slice(), ["security error: csp "]);
    }
}
