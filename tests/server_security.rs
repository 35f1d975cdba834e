//! The server as an attacker meets it, over real HTTP: the key on every route and path spelling,
//! Host and content-type checks, CORS, model paths confined to the roots, engine names, bounded
//! queues, and a failed attach that evicts nothing.

#[path = "server_security/limits.rs"]
mod limits;
mod server_common;

use std::collections::BTreeMap;

use serde_json::json;
use server_common::{fixture, model_entry, scratch, Response, Server};
use worker_controller::server::routes::{endpoints, Access};

const PRENORM: &str = "tiny-opt-prenorm";
const KEY: &str = "s3cret";

fn keyed_config(extra: &str) -> String {
    format!(
        "[server]\napi_key = \"{KEY}\"\n{extra}\n[runtime]\nattach_timeout = \"300ms\"\n\n\
         [[workers]]\ndevice = \"cpu\"\ncount = 2\n\n{}",
        model_entry(PRENORM, PRENORM, true, "5m"),
    )
}

/// The spellings of a path that the router treats as the same route (and one it does not).
fn spellings(path: &str) -> Vec<(String, bool)> {
    let first = path.as_bytes()[1];
    let encoded = format!("/%{first:02x}{}", &path[2..]);
    let mut variants = vec![
        (path.to_owned(), true),
        (encoded, true),
        (format!("{path}/"), true),
        (format!("/{path}"), true),
        (path.to_ascii_uppercase(), false),
    ];
    if let Some(rest) = path.strip_prefix("/v1/") {
        variants.push((format!("/v%31/{rest}"), true));
    }
    variants
}

fn send(server: &Server, method: &str, path: &str, key: Option<&str>) -> Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let body = (method == "POST").then_some("{}");
    server.raw(method, path, &headers, body)
}

#[test]
fn every_route_and_spelling_needs_exactly_the_key_its_class_says() {
    let server = Server::start("auth-matrix", &keyed_config(""));
    // What each route answers with the right key, spelled plainly: the reference.
    let mut checked = 0;
    for endpoint in endpoints() {
        let path = endpoint.path.replace("{id}", "999");
        for method in &endpoint.methods {
            let method = method.as_str();
            let reference = send(&server, method, &path, Some(KEY)).status;
            assert!(
                reference != 401 && reference != 403 && reference < 500,
                "{method} {path} with the key: {reference}"
            );
            for (spelled, same_route) in spellings(&path) {
                for key in [None, Some("wrong"), Some(KEY)] {
                    let got = send(&server, method, &spelled, key).status;
                    let expected = match (same_route, key == Some(KEY), endpoint.access) {
                        (true, _, Access::Public) => reference,
                        (true, true, _) => reference,
                        (true, false, _) => 401,
                        // Not a route: closed without the key, 404 (or 405) with it.
                        (false, false, _) => 401,
                        (false, true, _) => 404,
                    };
                    assert_eq!(got, expected, "{method} {spelled} key={key:?}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} requests checked");
    // A path no endpoint declares is closed by default.
    send(&server, "GET", "/admin", None).assert_error(401, "unauthorized");
    send(&server, "GET", "/admin", Some(KEY)).assert_error(404, "not_found");
    let refused = send(&server, "GET", "/engines", None);
    assert!(
        refused
            .header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer")),
        "{:?}",
        refused.headers
    );
    let lower = server.raw(
        "GET",
        "/engines",
        &[("Authorization", "bearer s3cret")],
        None,
    );
    assert_eq!(lower.status, 200, "the scheme is case-insensitive");
}

#[test]
fn open_inference_leaves_only_v1_open() {
    let server = Server::start("open-inference", &keyed_config("open_inference = true\n"));
    assert_eq!(send(&server, "GET", "/v1/models", None).status, 200);
    send(&server, "GET", "/engines", None).assert_error(401, "unauthorized");
    send(&server, "GET", "/%77orkers", None).assert_error(401, "unauthorized");
}

#[test]
fn bodies_must_be_json_hosts_must_be_loopback_and_cors_is_off_by_default() {
    let server = Server::start("browser", &keyed_config(""));
    let auth = format!("Bearer {KEY}");
    let body = json!({"model": PRENORM, "prompt": "x", "max_tokens": 2}).to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        server
            .raw(
                "POST",
                "/v1/completions",
                &[("Authorization", &auth), ("Content-Type", content_type)],
                Some(&body),
            )
            .assert_error(415, "unsupported_media_type");
    }
    let ok = server.raw(
        "POST",
        "/v1/completions",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        Some(&body),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);

    for host in [
        "evil.example",
        "evil.example:8000",
        "127.0.0.1.nip.io",
        "10.1.2.3",
    ] {
        server
            .raw("GET", "/health", &[("Host", host)], None)
            .assert_error(403, "host_not_allowed");
    }
    for host in ["localhost:1234", "127.0.0.1", "[::1]:8000"] {
        let reply = server.raw("GET", "/health", &[("Host", host)], None);
        assert_eq!(reply.status, 200, "{host}");
    }

    let from_page = server.raw(
        "GET",
        "/health",
        &[("Origin", "https://evil.example")],
        None,
    );
    assert_eq!(from_page.status, 200);
    assert!(
        !from_page
            .headers
            .iter()
            .any(|(n, _)| n.starts_with("access-control-")),
        "{:?}",
        from_page.headers
    );
}

#[test]
fn configured_cors_origins_get_cors_headers_and_others_do_not() {
    let server = Server::start(
        "cors",
        &keyed_config("cors_allow_origins = [\"https://app.example\"]\n"),
    );
    let allowed = server.raw("GET", "/health", &[("Origin", "https://app.example")], None);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let preflight = server.raw(
        "OPTIONS",
        "/v1/completions",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        None,
    );
    assert_eq!(preflight.status, 200, "{:?}", preflight.headers);
    let other = server.raw(
        "GET",
        "/health",
        &[("Origin", "https://evil.example")],
        None,
    );
    assert!(other.header("access-control-allow-origin").is_none());
}

#[test]
fn head_is_served_on_the_probes() {
    let server = Server::start("head", &keyed_config(""));
    for probe in ["/health", "/ready", "/v2/health/ready", "/metrics"] {
        let reply = server.raw("HEAD", probe, &[], None);
        assert_eq!(reply.status, 200, "{probe}");
    }
}

#[test]
fn model_paths_outside_the_roots_are_refused_alike_whether_or_not_they_exist() {
    let outside = scratch("roots-outside");
    std::fs::create_dir_all(outside.join("secret")).unwrap();
    let root = scratch("roots-root");
    std::os::unix::fs::symlink(outside.join("secret"), root.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("nothing"), root.join("dangling")).unwrap();
    let config = keyed_config(&format!(
        "model_roots = [{:?}, {:?}]\n",
        root.display().to_string(),
        fixture("").display().to_string()
    ));
    let server = Server::start("roots", &config);
    let attach = |model: &str| {
        server.raw(
            "POST",
            "/engines",
            &[("Authorization", &format!("Bearer {KEY}"))],
            Some(&json!({"model": model, "name": "probe"}).to_string()),
        )
    };
    let message = |reply: &Response, model: &str| {
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .replace(model, "MODEL")
    };
    let existing = outside.join("secret").display().to_string();
    let missing = outside.join("no-such-dir").display().to_string();
    let traversal = format!("{}/../roots-outside/secret", root.display());
    let mut messages = BTreeMap::new();
    for model in [
        "/etc",
        "/",
        existing.as_str(),
        missing.as_str(),
        traversal.as_str(),
        "../../../../etc",
    ] {
        let reply = attach(model);
        reply.assert_error(403, "model_not_allowed");
        messages.insert(message(&reply, model), model.to_owned());
    }
    assert_eq!(
        messages.len(),
        1,
        "refusals must read the same whether the path exists: {messages:?}"
    );
    for link in ["escape", "dangling"] {
        let path = root.join(link).display().to_string();
        let reply = attach(&path);
        reply.assert_error(403, "model_not_allowed");
        assert!(
            !reply.body.contains(&*outside.to_string_lossy()),
            "{}",
            reply.body
        );
    }
    // Under a root: allowed, and replies name the checkpoint relative to its root.
    let good = fixture("tiny-opt-postnorm-proj").display().to_string();
    let reply = attach(&good);
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.json()["model"], "fixtures/tiny-opt-postnorm-proj");
    let models = server.raw(
        "GET",
        "/v1/models",
        &[("Authorization", &format!("Bearer {KEY}"))],
        None,
    );
    assert!(
        !models.body.contains(env!("CARGO_MANIFEST_DIR")),
        "{}",
        models.body
    );
}

#[test]
fn engine_names_follow_one_rule_and_may_not_shadow_configured_models() {
    let roots = format!("model_roots = [{:?}]\n", fixture("").display().to_string());
    let server = Server::start("names", &keyed_config(&roots));
    let auth = format!("Bearer {KEY}");
    let attach = |body: serde_json::Value| {
        server.raw(
            "POST",
            "/engines",
            &[("Authorization", &auth)],
            Some(&body.to_string()),
        )
    };
    let path = fixture("tiny-opt-postnorm-proj").display().to_string();
    let long = "x".repeat(10_000);
    for bad in ["", "1", "007", "a/b", "a b", "..", "é", long.as_str()] {
        attach(json!({"model": path, "name": bad})).assert_error(400, "invalid_request");
    }
    attach(json!({"model": path, "name": PRENORM})).assert_error(409, "name_reserved");
    let reply = attach(json!({"model": path, "name": "post.v2_b-1"}));
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = reply.json()["engine_id"].as_u64().unwrap();
    // An id in the path is an id, a name is a name.
    let by_id = server.raw(
        "GET",
        &format!("/engines/{id}"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(by_id.json()["name"], "post.v2_b-1");
    let by_name = server.raw(
        "GET",
        "/engines/post.v2_b-1",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(by_name.json()["engine_id"], id);
}

#[test]
fn a_failing_attach_evicts_no_engine() {
    // One worker, held by an engine that may be evicted at once.
    let broken = scratch("evict-broken");
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture(PRENORM).join(file), broken.join(file)).unwrap();
    }
    std::fs::write(broken.join("model.safetensors"), b"\x08\0\0\0\0\0\0\0{}").unwrap();
    let config = format!(
        "[server]\nmodel_roots = [{:?}, {:?}]\n\n[[workers]]\ndevice = \"cpu\"\n\n{}",
        broken.display().to_string(),
        fixture("").display().to_string(),
        model_entry("idle", PRENORM, true, "0s"),
    );
    let server = Server::start("evict", &config);
    for model in [
        broken.display().to_string(),
        fixture("no-such").display().to_string(),
    ] {
        let reply = server.post("/engines", &json!({"model": model}));
        assert!(reply.status == 422 || reply.status == 404, "{}", reply.body);
        let engines = server.get("/engines").json();
        let names: Vec<_> = engines["engines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["idle"], "the idle engine is still attached");
    }
}

#[test]
fn a_full_engine_queue_answers_503_with_retry_after() {
    let config = format!(
        "[runtime]\nmax_waiting_requests = 0\n\n[[workers]]\ndevice = \"cpu\"\n\n{}",
        model_entry(PRENORM, PRENORM, true, "5m"),
    );
    let server = Server::start("queue", &config);
    let body =
        json!({"model": PRENORM, "prompt": [2, 5, 7], "max_tokens": 120, "ignore_eos": true});
    let mut refused = None;
    for _ in 0..20 {
        let replies: Vec<Response> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..12)
                .map(|_| s.spawn(|| server.post("/v1/completions", &body)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for reply in &replies {
            assert!(reply.status == 200 || reply.status == 503, "{}", reply.body);
        }
        if let Some(reply) = replies.into_iter().find(|r| r.status == 503) {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("a burst of 12 on a queue of 0 was never refused");
    refused.assert_error(503, "queue_full");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(server.get("/ready").status, 200);
}

#[test]
fn slow_heads_and_bodies_get_408_and_huge_headers_431() {
    use std::io::{Read, Write};
    let config = format!(
        "[server]\nclient_request_timeout = \"1s\"\n\n[[workers]]\ndevice = \"cpu\"\n\n{}",
        model_entry(PRENORM, PRENORM, true, "5m"),
    );
    let server = Server::start("slowloris", &config);
    let reply_to = |bytes: &[u8]| {
        let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let _ = stream.write_all(bytes);
        let started = std::time::Instant::now();
        let mut reply = vec![0u8; 64];
        let n = stream.read(&mut reply).unwrap_or(0);
        (
            String::from_utf8_lossy(&reply[..n]).into_owned(),
            started.elapsed(),
        )
    };
    let (head, waited) = reply_to(b"GET /health HTTP/1.1\r\nHost: local");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(waited < std::time::Duration::from_secs(10));
    let (body, waited) = reply_to(
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"model\"",
    );
    assert!(body.starts_with("HTTP/1.1 408"), "{body}");
    assert!(waited < std::time::Duration::from_secs(10));
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(300_000)
    );
    let (big, _) = reply_to(huge.as_bytes());
    assert!(big.starts_with("HTTP/1.1 431"), "{big}");
    assert_eq!(server.get("/health").status, 200, "still serving");
}

#[test]
fn null_means_absent_in_completion_parameters() {
    let config = format!(
        "[[workers]]\ndevice = \"cpu\"\n\n{}",
        model_entry(PRENORM, PRENORM, true, "5m"),
    );
    let server = Server::start("nulls", &config);
    let reply = server.post(
        "/v1/completions",
        &json!({"model": PRENORM, "prompt": [2, 5], "max_tokens": 3, "stream": null,
                "stop": null, "n": null, "seed": null, "ignore_eos": null, "stream_options": null}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["object"], "text_completion");
}

#[test]
fn a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized() {
    let config = format!(
        "[server]\nmax_body_bytes = \"4MiB\"\n\n[[workers]]\ndevice = \"cpu\"\n\n{}",
        model_entry(PRENORM, PRENORM, true, "5m"),
    );
    let server = Server::start("huge-prompt", &config);
    let huge = "Beautiful is better than ugly. ".repeat(35_000);
    let replies: Vec<Response> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    server.post(
                        "/v1/completions",
                        &json!({"model": PRENORM, "prompt": huge, "max_tokens": 4}),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for reply in replies {
        reply.assert_error(400, "invalid_request");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains("characters"),
            "refused by its length: {message}"
        );
    }
    // Asking for more tokens than the context has room for is refused, not cut short.
    let reply = server.post(
        "/v1/completions",
        &json!({"model": PRENORM, "prompt": vec![5; 100], "max_tokens": 64}),
    );
    reply.assert_error(400, "invalid_request");
    assert!(
        reply.body.contains("context holds 128 tokens"),
        "{}",
        reply.body
    );
    let ok = server.post(
        "/v1/completions",
        &json!({"model": PRENORM, "prompt": "Beautiful is better than", "max_tokens": 4}),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
}
