//! A prompt whose encoding runs past the worker's encode timeout ends the worker process: the
//! request is answered 503 `worker_lost` (not a 500, not after the heartbeat timeout), the worker
//! is restarted, and the model serves again.

mod server_common;

use std::time::{Duration, Instant};

use serde_json::json;
use server_common::{fixture, scratch, Server};

/// A copy of tiny-llama whose chat template spends tens of milliseconds (within its fuel) before
/// it renders.
fn slow_template_model() -> std::path::PathBuf {
    let dir = scratch("encode-timeout-model");
    for file in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, dir.join(file.file_name().unwrap())).unwrap();
    }
    let template = std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap();
    let slow = format!(
        "{{% for i in range(600) %}}{{% for j in range(600) %}}{{% endfor %}}{{% endfor %}}{template}"
    );
    std::fs::write(dir.join("chat_template.jinja"), slow).unwrap();
    dir
}

#[test]
fn an_encode_past_its_timeout_is_the_worker_lost_and_the_worker_comes_back() {
    // Every encode still running when the watchdog looks is late (the worker processes this
    // server starts inherit the variable).
    std::env::set_var("WC_ENCODE_TIMEOUT_MS", "0");
    let model = slow_template_model();
    let config = format!(
        "[runtime]\nheartbeat_timeout = \"30s\"\n\n[[workers]]\ndevice = \"cpu\"\n\n\
         [[models]]\nname = \"slow\"\npath = {:?}\nattach_on_start = true\n",
        model.display().to_string()
    );
    let server = Server::start("encode-timeout", &config);
    let chat =
        json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let mut lost = None;
    for _ in 0..40 {
        let started = Instant::now();
        let reply = server.post("/v1/chat/completions", &chat);
        assert!(
            reply.status == 200 || reply.status == 503,
            "only served or the worker lost: {} {}",
            reply.status,
            reply.body
        );
        if reply.status == 503 {
            lost = Some((reply, started.elapsed()));
            break;
        }
    }
    let (reply, took) = lost.expect("no encode was ever caught past a timeout of 0 ms");
    reply.assert_error(503, "worker_lost");
    assert!(
        took < Duration::from_secs(10),
        "answered in {took:?}, not after the heartbeat"
    );

    // The worker restarts, the model is attached again on demand, and a chat is served.
    std::env::set_var("WC_ENCODE_TIMEOUT_MS", "60000");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids = json!({"model": "slow", "prompt": [1, 5, 7], "max_tokens": 2});
        let reply = server.post("/v1/completions", &ids);
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never served again: {}",
            reply.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
