//! Ctrl-C and SIGTERM: `/ready` turns 503 while requests are still served, then the listener
//! closes, in-flight generations finish, the process exits 0; a second Ctrl-C exits at once.

mod server_common;

use std::time::{Duration, Instant};

use serde_json::json;
use server_common::{model_entry, request, slow_model, stream_text, EventStream, Server};

const PRENORM: &str = "tiny-opt-prenorm";

fn config(drain_delay: &str, deadline: &str) -> String {
    format!(
        "[server]\ndrain_delay = \"{drain_delay}\"\nshutdown_deadline = \"{deadline}\"\n\n\
         [[workers]]\ndevice = \"cpu\"\n\n{}",
        model_entry(PRENORM, PRENORM, true, "5m")
    )
}

/// The status `path` answers with; `None` when the server refuses the connection or drops it
/// before answering (a listener that closes between the connect and the reply).
fn status_of(addr: &str, path: &str) -> Option<u16> {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `path` until it answers `status` (or the connection is refused or dropped, for `None`).
fn wait_for(addr: &str, path: &str, status: Option<u16>, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let got = status_of(addr, path);
        if got == status {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {status:?} (last: {got:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigint_lets_a_generation_that_outlasts_the_listener_finish_and_exits_zero() {
    let dir = server_common::scratch("sigint-slow-model");
    let slow = slow_model(&dir);
    let config = format!(
        "[server]\ndrain_delay = \"3s\"\nshutdown_deadline = \"60s\"\nmax_tokens = 4000\n\n\
         [[workers]]\ndevice = \"cpu\"\ncount = 2\n\n\
         [[models]]\nname = \"slow\"\npath = {:?}\nattach_on_start = true\n\n{}",
        slow.display().to_string(),
        model_entry(PRENORM, PRENORM, true, "5m")
    );
    let mut server = Server::spawn("sigint-stream", &config, &[]);
    // Longer than the 3 s drain delay (a 1 s one left too little time for the request sent
    // during it on a busy box).
    let body = json!({"model": "slow", "prompt": [2, 506, 79], "max_tokens": 1000,
                      "temperature": 0, "ignore_eos": true, "stream": true});
    let mut stream = EventStream::open(&server.addr, "/v1/completions", &body);
    assert_eq!(stream.status, 200);
    let first = stream.next_data().expect("a first chunk");
    // Read the stream to its end on another thread, noting when it ended.
    let reader = std::thread::spawn(move || {
        let mut chunks: Vec<serde_json::Value> = vec![serde_json::from_str(&first).unwrap()];
        let mut done = false;
        while let Some(data) = stream.next_data() {
            if data == "[DONE]" {
                done = true;
            } else {
                chunks.push(serde_json::from_str(&data).unwrap());
            }
        }
        (chunks, done, Instant::now())
    });
    server.signal(libc::SIGINT);
    // During the drain delay: not ready, yet new requests are still served.
    wait_for(&server.addr, "/ready", Some(503), Duration::from_secs(5));
    let during = request(
        &server.addr,
        "POST",
        "/v1/completions",
        &[],
        Some(&json!({"model": PRENORM, "prompt": [2, 5], "max_tokens": 4}).to_string()),
    );
    assert_eq!(during.status, 200, "served while draining: {}", during.body);
    // Then the listener closes while the long generation is still running.
    let closed = wait_for(&server.addr, "/health", None, Duration::from_secs(10));
    let (chunks, done, ended) = reader.join().expect("reader");
    assert!(
        closed < ended,
        "the generation outlasted the listener: {}",
        server.log()
    );
    assert!(done, "the in-flight stream finished with [DONE]");
    assert_eq!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["finish_reason"] == "length")
            .count(),
        1
    );
    assert!(!stream_text(&chunks).is_empty());
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("exits within the deadline");
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("engine detached"), "{log}");
    assert!(log.contains("every worker released"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_turns_ready_503_while_still_serving_and_exits_zero() {
    // A drain delay far longer than the checks below take, however busy the box.
    let mut server = Server::spawn("sigterm", &config("10s", "15s"), &[]);
    assert_eq!(server.get("/ready").status, 200);
    server.signal(libc::SIGTERM);
    wait_for(&server.addr, "/ready", Some(503), Duration::from_secs(10));
    request(&server.addr, "GET", "/ready", &[], None).assert_error(503, "draining");
    request(&server.addr, "GET", "/v2/health/ready", &[], None).assert_error(503, "draining");
    let health = request(&server.addr, "GET", "/health", &[], None);
    assert_eq!(health.status, 200, "still alive");
    assert!(health.header("retry-after").is_none());
    let status = server.wait_exit(Duration::from_secs(60)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    let mut server = Server::spawn("double-ctrl-c", &config("60s", "60s"), &[]);
    server.signal(libc::SIGINT);
    wait_for(&server.addr, "/ready", Some(503), Duration::from_secs(5));
    let second = Instant::now();
    server.signal(libc::SIGINT);
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("exits at once");
    // At once: far sooner than the 60 s drain delay the first Ctrl-C started.
    assert!(second.elapsed() < Duration::from_secs(30));
    assert_eq!(status.code(), Some(130));
}
