//! 32 clients against two engines at once: every request answered with its own prompt's
//! reference text (none lost or mixed up), and the server healthy afterwards.

mod server_common;

use std::time::{Duration, Instant};

use serde_json::json;
use server_common::{model_entry, reference, stream_text, EventStream, Server};

const MODELS: [&str; 2] = ["tiny-opt-prenorm", "tiny-opt-postnorm-proj"];
const CLIENTS: usize = 32;
const RUN_FOR: Duration = Duration::from_secs(4);

#[test]
fn thirty_two_clients_on_two_engines_each_get_their_own_reference_text() {
    let config = format!(
        "[[workers]]\ndevice = \"cpu\"\ncount = 2\n\n{}{}",
        model_entry(MODELS[0], MODELS[0], true, "5m"),
        model_entry(MODELS[1], MODELS[1], true, "5m"),
    );
    let server = Server::start("load", &config);
    let cases: Vec<_> = MODELS
        .iter()
        .flat_map(|m| reference(m).into_iter().map(move |c| (*m, c)))
        .collect();
    let started = Instant::now();
    let answered: Vec<usize> =
        std::thread::scope(|s| {
            let clients: Vec<_> =
                (0..CLIENTS)
                    .map(|client| {
                        let (server, cases) = (&server, &cases);
                        s.spawn(move || {
                    let mut n = 0;
                    while started.elapsed() < RUN_FOR {
                        let (model, (prompt, ids, greedy)) = &cases[(client + n) % cases.len()];
                        let stream = (client + n) % 3 == 0;
                        // Alternate text and token-id prompts.
                        let prompt = if n % 2 == 0 { json!(prompt) } else { json!(ids) };
                        let body = json!({"model": model, "prompt": prompt, "max_tokens": 24,
                                          "temperature": 0, "ignore_eos": true, "stream": stream});
                        let text = if stream {
                            let events = EventStream::open(&server.addr, "/v1/completions", &body);
                            assert_eq!(events.status, 200);
                            let (chunks, done) = events.collect();
                            assert!(done);
                            assert!(chunks.iter().all(|c| c["model"] == *model));
                            stream_text(&chunks)
                        } else {
                            let reply = server.post("/v1/completions", &body);
                            assert_eq!(reply.status, 200, "{}", reply.body);
                            let reply = reply.json();
                            assert_eq!(reply["model"], *model);
                            reply["choices"][0]["text"].as_str().unwrap().to_owned()
                        };
                        assert_eq!(&text, greedy, "client {client} request {n}: {model}");
                        n += 1;
                    }
                    n
                })
                    })
                    .collect();
            clients.into_iter().map(|c| c.join().unwrap()).collect()
        });
    let total: usize = answered.iter().sum();
    assert!(
        answered.iter().all(|n| *n > 0),
        "every client was served: {answered:?}"
    );
    assert_eq!(server.get("/ready").status, 200);
    let metrics = server.get("/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "wc_pod_num_requests_running 0"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "wc_pod_num_requests_waiting 0"),
        "{metrics}"
    );
    let completed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("wc_completions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        completed as usize, total,
        "every answered request was counted once"
    );
    eprintln!(
        "{total} completions from {CLIENTS} clients in {:?}",
        started.elapsed()
    );
}
