//! Workers in their own processes (the default): a worker killed, aborting or hung mid-stream or
//! mid-attach costs only its own requests, which get a typed error; the worker comes back
//! re-prewarmed; the engine on the other worker answers every request sent meanwhile; nothing
//! is left running after shutdown.
//!
//! The abort, hang and mid-attach faults are asked of the worker (a stop string, an environment
//! variable), which honours them only in debug builds or with the `fault-injection` feature: in
//! other builds those tests are ignored, as the worker would ignore the fault.

mod server_common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server_common::{fixture, model_entry, scratch, slow_model, EventStream, Server};

const PRENORM: &str = "tiny-opt-prenorm";
const FAULT_ON_LOAD: &str = "wc-fault-on-load";

/// Two workers: `slow` (long generations) and the tiny fixture, each attached at start.
fn config(dir: &std::path::Path, heartbeat: &str) -> String {
    let slow = slow_model(dir);
    format!(
        "[server]\nmax_tokens = 4000\nmodel_roots = [{:?}, {:?}]\n\n\
         [runtime]\nheartbeat_timeout = \"{heartbeat}\"\nrestart_backoff = \"50ms\"\n\n\
         [[workers]]\ndevice = \"cpu\"\ncount = 2\n\n\
         [[models]]\nname = \"slow\"\npath = {:?}\nattach_on_start = true\n\n{}",
        dir.display().to_string(),
        fixture("").display().to_string(),
        slow.display().to_string(),
        model_entry(PRENORM, PRENORM, true, "-1"),
    )
}

fn workers(server: &Server) -> Vec<Value> {
    server.get("/workers").json()["workers"]
        .as_array()
        .unwrap()
        .clone()
}

/// The worker process and index serving engine `name`.
fn worker_of(server: &Server, name: &str) -> (usize, i32) {
    let engines = server.get("/engines").json();
    let worker = engines["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no engine {name}: {engines}"))["worker"]
        .as_u64()
        .unwrap() as usize;
    let pid = workers(server)[worker]["prewarm"]["pid"]
        .as_i64()
        .expect("workers run in processes") as i32;
    (worker, pid)
}

/// Sends completions to the tiny engine until `stop` is set; every one must answer 200.
fn keep_asking(server: &Server, stop: &std::sync::atomic::AtomicBool) -> usize {
    let mut answered = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let reply = server.post(
            "/v1/completions",
            &json!({"model": PRENORM, "prompt": [2, 5, 7], "max_tokens": 8}),
        );
        assert_eq!(reply.status, 200, "the other engine failed: {}", reply.body);
        answered += 1;
    }
    answered
}

/// Waits until worker `index` is idle or serving again after `restarts_before` restarts.
fn wait_restarted(server: &Server, index: usize, restarts_before: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let worker = workers(server)[index].clone();
        let restarts = worker["restarts"].as_u64().unwrap_or(0);
        let state = worker["state"].as_str().unwrap_or("").to_owned();
        if restarts > restarts_before && (state == "idle" || state == "serving") {
            return worker;
        }
        assert!(Instant::now() < deadline, "never came back: {worker}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The worker processes of `server`, as `/workers` reports them.
fn worker_pids(server: &Server) -> Vec<i32> {
    workers(server)
        .iter()
        .filter_map(|w| w["prewarm"]["pid"].as_i64())
        .map(|pid| pid as i32)
        .collect()
}

/// Whether a process is still running (not gone, not a zombie).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

/// Stops the server and checks that none of its worker processes outlives it.
fn stop_leaving_no_orphans(server: Server) {
    let pids = worker_pids(&server);
    assert!(!pids.is_empty());
    server.stop().expect("a clean stop");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|&pid| running(pid)) {
        assert!(Instant::now() < deadline, "orphans among {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sets its flag when dropped, also while unwinding from a failed assertion.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// These tests time how fast a fault is reported: they run one at a time, not beside each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// The faults a worker process meets.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL mid-stream.
    Kill,
    /// The process aborts at the start of a request.
    Abort,
    /// The process hangs after a stream's first token.
    Hang,
}

/// One fault in the slow engine's worker while the tiny engine on the other is kept busy.
fn survive(test: &str, heartbeat: &str, fault: Fault) {
    let _alone = one_at_a_time();
    let dir = scratch(&format!("{test}-models"));
    let server = Server::start(test, &config(&dir, heartbeat));
    let (index, pid) = worker_of(&server, "slow");
    let restarts_before = workers(&server)[index]["restarts"].as_u64().unwrap_or(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let asking = s.spawn(|| keep_asking(&server, &stop));
        // A failed assertion below must stop the other engine's client too, or the scope waits
        // for it for ever.
        let _stop_on_exit = StopOnDrop(&stop);
        let stream_body = |fault_stop: &[&str]| {
            json!({"model": "slow", "prompt": [2, 506, 79], "max_tokens": 3000,
                   "ignore_eos": true, "stream": true, "stop": fault_stop})
        };
        match fault {
            Fault::Kill => {
                let mut stream =
                    EventStream::open(&server.addr, "/v1/completions", &stream_body(&[]));
                assert_eq!(stream.status, 200);
                let first = stream.next_data().expect("a first chunk");
                // SAFETY: kill(2) on a worker process this test's server started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                assert_lost(first, &mut stream);
            }
            Fault::Hang => {
                let body = stream_body(&["\u{0}wc-fault:hang"]);
                let mut stream = EventStream::open(&server.addr, "/v1/completions", &body);
                assert_eq!(stream.status, 200);
                // The worker hangs after its first token; when that token had no text of its own
                // the first event is already the error.
                let first = stream.next_data().expect("a first event");
                // Found out by the heartbeat (1 s of silence after 1 s without a beat).
                assert_lost(first, &mut stream);
            }
            Fault::Abort => {
                let reply = server.post(
                    "/v1/completions",
                    &json!({"model": "slow", "prompt": [2, 5], "max_tokens": 4,
                            "stop": ["\u{0}wc-fault:abort"]}),
                );
                reply.assert_error(503, "worker_lost");
                assert!(reply.header("retry-after").is_some());
            }
        }
        let worker = wait_restarted(&server, index, restarts_before);
        let last_error = worker["last_error"].as_str().unwrap_or_default();
        assert!(last_error.contains("worker process"), "{worker}");
        // Found out by what happened, not by a clock: a killed or aborted process by its exit
        // (the heartbeat here is 30 s, and would say so), a hung one by the heartbeat.
        assert_eq!(
            last_error.contains("no heartbeat"),
            fault == Fault::Hang,
            "{worker}"
        );
        assert_ne!(
            worker["prewarm"]["pid"].as_i64(),
            Some(pid as i64),
            "a new process"
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let answered = asking.join().expect("the other engine's requests");
        assert!(answered > 0);
    });
    // The slow model attaches again on demand on the restarted worker.
    let again = server.post(
        "/v1/completions",
        &json!({"model": "slow", "prompt": [2, 5], "max_tokens": 4}),
    );
    assert_eq!(again.status, 200, "{}", again.body);
    stop_leaving_no_orphans(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads the stream to its end (after `first`, already read); its last event must be a typed
/// `worker_lost` error. (How the loss was found is checked on the worker's `last_error`; the
/// stream ends either way, at the latest at the heartbeat.)
fn assert_lost(first: String, stream: &mut EventStream) {
    let mut events = vec![first];
    while let Some(data) = stream.next_data() {
        events.push(data);
    }
    let last = events
        .iter()
        .rev()
        .find(|e| *e != "[DONE]")
        .unwrap_or_else(|| panic!("no event but [DONE]: {events:?}"));
    let last: Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["error"]["type"], "worker_lost", "{last}");
}

#[test]
fn sigkill_mid_stream_costs_only_that_stream() {
    survive("kill-stream", "30s", Fault::Kill);
}

#[test]
#[cfg_attr(
    not(any(debug_assertions, feature = "fault-injection")),
    ignore = "needs fault injection: a debug build or --features fault-injection"
)]
fn an_abort_costs_only_that_request() {
    survive("abort", "30s", Fault::Abort);
}

#[test]
#[cfg_attr(
    not(any(debug_assertions, feature = "fault-injection")),
    ignore = "needs fault injection: a debug build or --features fault-injection"
)]
fn a_hung_worker_is_killed_by_its_heartbeat() {
    survive("hang", "1s", Fault::Hang);
}

#[test]
#[cfg_attr(
    not(any(debug_assertions, feature = "fault-injection")),
    ignore = "needs fault injection: a debug build or --features fault-injection"
)]
fn a_worker_killed_mid_attach_fails_only_that_attach() {
    let _alone = one_at_a_time();
    let dir = scratch("kill-attach-models");
    let victim = dir.join(FAULT_ON_LOAD);
    std::fs::create_dir_all(&victim).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture(PRENORM).join(file), victim.join(file)).unwrap();
    }
    // Only a load of a path with this text aborts (with fault injection, see above).
    std::env::set_var("WC_WORKER_FAULT_ON_LOAD", FAULT_ON_LOAD);
    let config = format!(
        "[server]\nmodel_roots = [{:?}]\n\n[runtime]\nrestart_backoff = \"50ms\"\n\n\
         [[workers]]\ndevice = \"cpu\"\ncount = 2\n\n{}",
        dir.display().to_string(),
        model_entry(PRENORM, PRENORM, true, "-1"),
    );
    let server = Server::start("kill-attach", &config);
    let reply = server.post(
        "/engines",
        &json!({"model": victim.display().to_string(), "name": "victim"}),
    );
    reply.assert_error(503, "worker_failed");
    // Failed by the process's exit, not by a heartbeat or the attach timeout.
    assert!(
        !reply.body.contains("heartbeat") && !reply.body.contains("timed out"),
        "{}",
        reply.body
    );
    let ok = server.post(
        "/v1/completions",
        &json!({"model": PRENORM, "prompt": [2, 5], "max_tokens": 4}),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !workers(&server)
        .iter()
        .all(|w| w["state"] == "idle" || w["state"] == "serving")
    {
        assert!(Instant::now() < deadline, "{:?}", workers(&server));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop_leaving_no_orphans(server);
    let _ = std::fs::remove_dir_all(&dir);
}
