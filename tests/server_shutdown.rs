//! Ctrl-C and SIGTERM: `/ready` turns 503 first, in-flight streams finish, the process exits 0;
//! a second Ctrl-C exits at once.

mod server_common;

use std::time::{Duration, Instant};

use serde_json::json;
use server_common::{model_entry, request, stream_text, EventStream, Server};

const PRENORM: &str = "tiny-opt-prenorm";

fn config(drain_delay: &str, deadline: &str) -> String {
    format!(
        "[server]\ndrain_delay = \"{drain_delay}\"\nshutdown_deadline = \"{deadline}\"\n\n\
         [[workers]]\ndevice = \"cpu\"\n\n{}",
        model_entry(PRENORM, PRENORM, true, "5m")
    )
}

#[test]
fn sigint_during_a_stream_lets_it_finish_and_exits_zero() {
    let mut server = Server::spawn("sigint-stream", &config("500ms", "10s"), &[]);
    let body = json!({"model": PRENORM, "prompt": [2, 506, 79, 268, 277, 276], "max_tokens": 100,
                      "temperature": 0, "ignore_eos": true, "stream": true});
    let mut stream = EventStream::open(&server.addr, "/v1/completions", &body);
    assert_eq!(stream.status, 200);
    let first = stream.next_data().expect("a first chunk");
    let signalled = Instant::now();
    server.signal(libc::SIGINT);
    // During the drain delay the listener is still open and says not ready.
    std::thread::sleep(Duration::from_millis(100));
    request(&server.addr, "GET", "/ready", &[], None).assert_error(503, "draining");
    let mut chunks: Vec<serde_json::Value> = vec![serde_json::from_str(&first).unwrap()];
    let mut done = false;
    while let Some(data) = stream.next_data() {
        if data == "[DONE]" {
            done = true;
        } else {
            chunks.push(serde_json::from_str(&data).unwrap());
        }
    }
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
        .wait_exit(Duration::from_secs(12))
        .expect("exits within the deadline");
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(signalled.elapsed() < Duration::from_secs(11));
    let log = server.log();
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("engine detached"), "{log}");
    assert!(log.contains("every worker released"), "{log}");
}

#[test]
fn sigterm_turns_ready_503_before_closing_and_exits_zero() {
    let mut server = Server::spawn("sigterm", &config("600ms", "5s"), &[]);
    assert_eq!(server.get("/ready").status, 200);
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(150));
    request(&server.addr, "GET", "/ready", &[], None).assert_error(503, "draining");
    request(&server.addr, "GET", "/v2/health/ready", &[], None).assert_error(503, "draining");
    assert_eq!(
        request(&server.addr, "GET", "/health", &[], None).status,
        200,
        "still alive"
    );
    let status = server.wait_exit(Duration::from_secs(6)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    let mut server = Server::spawn("double-ctrl-c", &config("60s", "60s"), &[]);
    server.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    let second = Instant::now();
    server.signal(libc::SIGINT);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exits at once");
    assert!(second.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Some(130));
}
