//! Peer copies through `serve` with worker processes (its default isolation): a model serving
//! on one worker and asked for on another is read from the host there, the attach report says
//! why no peer copy was planned (one between processes needs CUDA IPC, not built), and
//! `GET /workers` lists each pair of workers with its link and the same reason.

mod server_common;

use serde_json::json;
use server_common::{fixture, Server};

#[test]
fn between_worker_processes_an_attach_reads_from_the_host_and_says_why() {
    let model = fixture("tiny-llama").display().to_string();
    let config = format!(
        "[server]\nmodel_roots = [{:?}]\n\n[prewarm]\nkv_cache_tokens = 256\n\n\
         [[workers]]\ndevice = \"cpu\"\ncount = 2\n",
        fixture("").display().to_string()
    );
    let server = Server::start("peer-copy", &config);
    let attach = |worker: usize, name: &str| {
        let body = json!({"model": model, "name": name, "worker": worker});
        let reply = server.post("/engines", &body);
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.json()
    };
    let first = attach(0, "first");
    assert_eq!(first["source"], "host", "{first}");
    assert!(first["source_fallback"].is_null(), "{first}");

    let second = attach(1, "second");
    assert_eq!(second["source"], "host", "{second}");
    let reason = second["source_fallback"].as_str().unwrap_or_default();
    assert!(
        reason.contains("worker 0") && reason.contains("CUDA IPC"),
        "{second}"
    );
    assert!(second["bytes_moved"].as_u64().unwrap() > 0);

    let workers = server.get("/workers").json();
    let peers = &workers["workers"][1]["peers"];
    assert_eq!(peers.as_array().map(Vec::len), Some(1), "{workers}");
    assert_eq!(peers[0]["peer"], 0);
    assert_eq!(peers[0]["link"], "none");
    assert_eq!(peers[0]["copy"], false);
    assert!(peers[0]["reason"]
        .as_str()
        .unwrap()
        .contains("own processes"));
}
