//! Attaches still waiting for a worker when the server is asked to stop are answered 503
//! `shutting_down` at once, not left without an answer until the process ends.

mod server_common;

use std::time::{Duration, Instant};

use serde_json::json;
use server_common::{fixture, model_entry, request, Server};

const PRENORM: &str = "tiny-opt-prenorm";
const POSTNORM: &str = "tiny-opt-postnorm-proj";

#[test]
fn attaches_waiting_at_shutdown_are_answered_shutting_down() {
    // One worker, held by an engine that may not be evicted: every other attach waits.
    let config = format!(
        "[runtime]\nattach_timeout = \"60s\"\n\n[server]\ndrain_delay = \"0s\"\n\
         shutdown_deadline = \"20s\"\nmodel_roots = [{:?}]\n\n[[workers]]\ndevice = \"cpu\"\n\n{}",
        fixture("").display().to_string(),
        model_entry(PRENORM, PRENORM, true, "5m")
    );
    let mut server = Server::spawn("shutdown-attach", &config, &[]);
    let addr = server.addr.clone();
    let waiters: Vec<_> = (0..2)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let body = json!({"model": fixture(POSTNORM).display().to_string(),
                                  "name": format!("waiting-{i}")});
                let sent = Instant::now();
                let reply = request(&addr, "POST", "/engines", &[], Some(&body.to_string()));
                (reply, sent.elapsed())
            })
        })
        .collect();
    // Both reach the runtime's queue and wait there.
    std::thread::sleep(Duration::from_millis(1500));
    server.signal(libc::SIGTERM);
    for waiter in waiters {
        let (reply, took) = waiter.join().unwrap();
        reply.assert_error(503, "shutting_down");
        assert!(took < Duration::from_secs(15), "answered after {took:?}");
    }
    let status = server.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", server.log());
}
