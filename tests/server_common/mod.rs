//! Helpers for the server tests: a server in this process or the real binary, on a free port; a
//! tiny HTTP/1.1 client; SSE.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use worker_controller::config::Config;

#[path = "../common/mod.rs"]
mod common;
pub use common::{fixture, scratch};

/// The fixture's reference cases: `(prompt, input_ids, greedy_text)`.
pub fn reference(name: &str) -> Vec<(String, Vec<u32>, String)> {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).expect("reference");
    let json: Value = serde_json::from_str(&text).expect("reference json");
    json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let ids = c["input_ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect();
            (
                c["prompt"].as_str().expect("prompt").to_owned(),
                ids,
                c["greedy_text"].as_str().expect("text").to_owned(),
            )
        })
        .collect()
}

/// A random-weight OPT big enough that a long generation takes seconds on a CPU worker
/// ([`common::slow_model`]), written into `dir`.
pub fn slow_model(dir: &std::path::Path) -> PathBuf {
    common::slow_model(dir)
}

/// The Python the tests drive (`WC_PYTHON`, else `python3`) when it can import `module`.
pub fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("WC_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

/// Whether a test that needs a Python package must fail rather than skip without it: in CI
/// (`CI` set to anything but `0`/`false`, or `WC_REQUIRE_PYTHON_TESTS` likewise, which
/// `.ci/python-deps.sh` sets), so that CI can never pass by skipping.
pub fn python_tests_required() -> bool {
    let set = |name: &str| {
        std::env::var(name)
            .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
    };
    set("CI") || set("WC_REQUIRE_PYTHON_TESTS")
}

/// Skips (with `note` on stderr) a test whose Python package is missing, or fails it where
/// Python tests are required ([`python_tests_required`]).
pub fn skip_without_python(note: &str) {
    assert!(
        !python_tests_required(),
        "required here (CI or WC_REQUIRE_PYTHON_TESTS), not skipped: {note}"
    );
    eprintln!("SKIPPED: {note}");
}

/// A `[[models]]` entry for a bundled fixture.
pub fn model_entry(
    name: &str,
    fixture_name: &str,
    attach_on_start: bool,
    keep_alive: &str,
) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\npath = {:?}\nattach_on_start = {attach_on_start}\nkeep_alive = \"{keep_alive}\"\n\n",
        fixture(fixture_name).display().to_string()
    )
}

/// A running server: in this process ([`Server::start`]) or a `worker-controller serve`
/// child ([`Server::spawn`]); stopped when dropped.
pub struct Server {
    running: Running,
    pub addr: String,
    /// Everything the child wrote to stderr and stdout so far (empty in process).
    pub log: Arc<Mutex<String>>,
    pub dir: PathBuf,
}

enum Running {
    Child(Child),
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    },
}

impl Server {
    /// Runs `worker_controller::server::run` with `config` in this process, on a free loopback
    /// port, and waits until it is ready.
    pub fn start(test: &str, config: &str) -> Server {
        let dir = scratch(test);
        let path = dir.join("config.toml");
        std::fs::write(&path, config).expect("write config");
        let mut parsed = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
        parsed.server.host = "127.0.0.1".into();
        // Workers run as processes of the real binary (the default isolation), not of this test.
        parsed.runtime.worker_exe = Some(env!("CARGO_BIN_EXE_worker-controller").into());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(worker_controller::server::run(
                parsed,
                listener,
                async move {
                    let _ = stopped.await;
                },
            ))
        });
        let server = Server {
            running: Running::InProcess {
                stop: Some(stop),
                thread: Some(thread),
            },
            addr,
            log: Arc::default(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.get("/ready").status != 200 {
            assert!(Instant::now() < deadline, "the server never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Stops an in-process server the way a signal does (drain, detach, stop) and returns
    /// what `run` returned.
    pub fn stop(mut self) -> anyhow::Result<()> {
        match &mut self.running {
            Running::InProcess { stop, thread } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                let thread = thread.take().expect("not stopped yet");
                thread.join().expect("server thread")
            }
            Running::Child(_) => panic!("stop() is for in-process servers"),
        }
    }

    /// Writes `config` to a scratch file and starts the binary on a free loopback port.
    pub fn spawn(test: &str, config: &str, args: &[&str]) -> Server {
        Self::spawn_with_env(test, config, args, &[])
    }

    /// [`Self::spawn`] with environment variables set for the server (and so for its worker
    /// processes), `RUST_LOG` among them if wanted.
    pub fn spawn_with_env(test: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = scratch(test);
        let path = dir.join("config.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker-controller"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn server");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for pipe in [
            Box::new(child.stderr.take().expect("stderr")) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = bound_address(&line) {
                        break addr;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("server never became ready:\n{}", log.lock().unwrap());
                }
            }
        };
        Server {
            running: Running::Child(child),
            addr,
            log,
            dir,
        }
    }

    fn child(&mut self) -> &mut Child {
        match &mut self.running {
            Running::Child(child) => child,
            Running::InProcess { .. } => panic!("this is for servers started with spawn()"),
        }
    }

    /// Sends a request and reads the whole reply.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        request(
            &self.addr,
            method,
            path,
            &[],
            body.map(|b| b.to_string()).as_deref(),
        )
    }

    /// Sends a request with extra headers and a raw body.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Response {
        request(&self.addr, method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(body))
    }

    /// Sends SIGINT (as Ctrl-C does) or SIGTERM.
    pub fn signal(&mut self, signal: i32) {
        let pid = self.child().id() as i32;
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        unsafe { libc::kill(pid, signal) };
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child().try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        assert!(
            matches!(self.running, Running::Child(_)),
            "an in-process server writes no log here: start it with spawn()"
        );
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::InProcess { stop, thread } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `host:port` in the server's ready line (`... listening on http://127.0.0.1:PORT ...`).
fn bound_address(line: &str) -> Option<String> {
    let rest = &line[line.find("listening on http://")? + "listening on http://".len()..];
    let end = rest
        .find(|c: char| {
            !(c.is_ascii_alphanumeric() || c == '.' || c == ':' || c == '[' || c == ']')
        })
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// One HTTP reply.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an error reply in the API's shape with this status and type.
    pub fn assert_error(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        let body = self.json();
        assert_eq!(body["error"]["type"], kind, "{}", self.body);
        assert_eq!(body["error"]["code"], status, "{}", self.body);
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    stream
}

fn send(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    head.push_str("Connection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    if let Some(body) = body {
        // The server may answer (413) and close before reading a large body: ignore errors.
        let _ = stream.write_all(body.as_bytes());
    }
}

/// Reads the status line and headers.
fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line `{line}`"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    (status, headers)
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
}

/// Reads one chunk of a chunked body; `None` at the end.
fn read_chunk(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).ok()?;
    chunk.truncate(size);
    Some(chunk)
}

/// Sends one request on a fresh connection and reads the whole reply.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    let mut stream = connect(addr);
    send(&mut stream, method, path, headers, body);
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let mut bytes = Vec::new();
    if method == "HEAD" {
        // No body follows, whatever Content-Length says.
    } else if is_chunked(&headers) {
        while let Some(chunk) = read_chunk(&mut reader) {
            bytes.extend(chunk);
        }
    } else if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        bytes.resize(len, 0);
        reader.read_exact(&mut bytes).expect("body");
    } else {
        let _ = reader.read_to_end(&mut bytes);
    }
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Sends one request on a fresh connection and reads nothing: the reply (if any) waits in the
/// socket. Dropping the connection is a client going away mid-request.
pub fn send_only(addr: &str, path: &str, body: &Value) -> TcpStream {
    let mut stream = connect(addr);
    send(&mut stream, "POST", path, &[], Some(&body.to_string()));
    stream
}

/// A server-sent event stream being read as it arrives.
pub struct EventStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    buffer: String,
}

impl EventStream {
    /// Posts `body` and reads the reply head; events are then read one by one.
    pub fn open(addr: &str, path: &str, body: &Value) -> EventStream {
        let mut stream = connect(addr);
        send(&mut stream, "POST", path, &[], Some(&body.to_string()));
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader);
        let chunked = is_chunked(&headers);
        EventStream {
            status,
            headers,
            reader,
            chunked,
            buffer: String::new(),
        }
    }

    /// The next event's `data:` payload; `None` when the stream ended.
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
                continue;
            }
            let more = if self.chunked {
                read_chunk(&mut self.reader)?
            } else {
                let mut buf = vec![0; 4096];
                let n = self.reader.read(&mut buf).ok()?;
                if n == 0 {
                    return None;
                }
                buf.truncate(n);
                buf
            };
            self.buffer.push_str(&String::from_utf8_lossy(&more));
        }
    }

    /// Reads every event to the end: the JSON chunks, and whether `[DONE]` came last.
    pub fn collect(mut self) -> (Vec<Value>, bool) {
        let mut chunks = Vec::new();
        let mut done = false;
        while let Some(data) = self.next_data() {
            // `[DONE]` ends the stream: it is the last event, and there is only one.
            assert!(!done, "an event after [DONE]: {data}");
            if data == "[DONE]" {
                done = true;
                continue;
            }
            chunks.push(serde_json::from_str(&data).expect("chunk JSON"));
        }
        (chunks, done)
    }
}

/// The text of a stream's chunks, concatenated.
pub fn stream_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect()
}
