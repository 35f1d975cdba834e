//! `serve` configured the way a container is: `worker-controller serve` and nothing but `WC_*`
//! environment variables (no flags, no config file), serving a bundled fixture by `WC_MODEL`.

mod server_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use server_common::{reference, request, scratch};
use worker_controller::config::Config;

/// The repository root: `./config.toml` is there, and must be left unread when `WC_MODEL` is set
/// (it configures `tiny-opt-prenorm` too, which would be a duplicate name).
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `worker-controller serve` in the repository root with `env` and no inherited `WC_*`.
fn serve(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker-controller"));
    cmd.arg("serve").current_dir(ROOT).env("RUST_LOG", "info");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WC_") {
            cmd.env_remove(key);
        }
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

/// The address in the `ready: listening on http://ADDR` line.
fn bound_address(line: &str) -> Option<String> {
    let rest = &line[line.find("listening on http://")? + "listening on http://".len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// A started server, killed when dropped.
struct Running {
    child: Child,
    addr: String,
    /// The log lines up to the ready line (later ones keep arriving on `_rest`).
    lines: Vec<String>,
    _rest: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server and waits for its ready line.
fn start(env: &[(&str, &str)]) -> Running {
    let mut child = serve(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker-controller serve");
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                let addr = bound_address(&line);
                lines.push(line);
                if let Some(addr) = addr {
                    return Running {
                        child,
                        addr,
                        lines,
                        _rest: rx,
                    };
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server never became ready:\n{}", lines.join("\n"));
            }
        }
    }
}

#[test]
fn serve_with_only_wc_env_answers_a_completion() {
    let key = "deploy-env-test-key";
    let mut server = start(&[
        ("WC_MODEL", "tests/fixtures/tiny-opt-prenorm"),
        ("WC_SERVED_MODEL_NAME", "tiny"),
        ("WC_DTYPE", "f32"),
        ("WC_HOST", "127.0.0.1"),
        ("WC_PORT", "0"),
        ("WC_API_KEY", key),
        ("WC_DEVICE", "cpu"),
        ("WC_WORKERS", "1"),
        ("WC_LOG_FORMAT", "json"),
    ]);
    let (addr, ready) = (server.addr.clone(), server.lines.last().unwrap().clone());
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap_or_else(|e| {
        panic!("WC_LOG_FORMAT=json, yet the ready line is not JSON ({e}): {ready}")
    });
    assert_eq!(ready["workers"], 1, "{ready}");
    assert_eq!(ready["models"], 1, "{ready}");
    assert_eq!(ready["auth"], true, "{ready}");

    let bearer = format!("Bearer {key}");
    let auth = [("Authorization", bearer.as_str())];
    // Attached at start under its served name, and only it: ./config.toml was not read.
    let models = request(&addr, "GET", "/v1/models", &auth, None);
    assert_eq!(models.status, 200, "{}", models.body);
    let ids: Vec<String> = models.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["tiny"]);

    let (prompt, ids, greedy) = reference("tiny-opt-prenorm").remove(0);
    let body = json!({
        "model": "tiny",
        "prompt": prompt,
        "max_tokens": 24,
        "temperature": 0,
        "ignore_eos": true,
    })
    .to_string();
    let refused = request(&addr, "POST", "/v1/completions", &[], Some(&body));
    assert_eq!(
        refused.status, 401,
        "WC_API_KEY guards /v1: {}",
        refused.body
    );
    let reply = request(&addr, "POST", "/v1/completions", &auth, Some(&body));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = reply.json();
    assert_eq!(reply["model"], "tiny");
    assert_eq!(reply["choices"][0]["text"], greedy.as_str());
    assert_eq!(reply["usage"]["prompt_tokens"], ids.len());

    // SIGTERM drains and exits 0, as a container stop does.
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn wc_open_inference_reads_a_boolean_and_the_default_name_is_the_directory() {
    let server = start(&[
        ("WC_MODEL", "tests/fixtures/tiny-opt-prenorm"),
        ("WC_HOST", "127.0.0.1"),
        ("WC_PORT", "0"),
        ("WC_API_KEY", "another-key"),
        ("WC_OPEN_INFERENCE", "1"),
    ]);
    // Open inference, closed control; the default name is the directory's last component.
    let models = request(&server.addr, "GET", "/v1/models", &[], None);
    assert_eq!(models.status, 200, "{}", models.body);
    assert_eq!(models.json()["data"][0]["id"], "tiny-opt-prenorm");
    assert_eq!(
        request(&server.addr, "GET", "/engines", &[], None).status,
        401
    );
}

fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
    serve(env)
        .args(args)
        .output()
        .expect("run worker-controller serve")
}

#[test]
fn bad_wc_values_are_refused_naming_the_flag_or_variable() {
    let refused = |env: &[(&str, &str)], words: &str| {
        let out = run(env, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} was accepted");
        assert!(
            stderr.contains(words),
            "{env:?}: expected `{words}` in:\n{stderr}"
        );
    };
    refused(&[("WC_PORT", "eighty")], "--port");
    refused(&[("WC_DEVICE", "tpu")], "--device");
    refused(&[("WC_WORKERS", "0")], "--workers");
    refused(&[("WC_API_KEY", "")], "WC_API_KEY");
    refused(&[("WC_DTYPE", "f16")], "applies to --model entries");
    refused(
        &[
            ("WC_MODEL", "tests/fixtures/tiny-opt-prenorm"),
            ("WC_SERVED_MODEL_NAME", "a,b"),
        ],
        "one name per model",
    );
    refused(
        &[(
            "WC_MODEL",
            "tests/fixtures/tiny-opt-prenorm,tests/fixtures/tiny-opt-prenorm",
        )],
        "used twice",
    );
    refused(
        &[
            ("WC_MODEL", "tests/fixtures/tiny-opt-prenorm"),
            ("WC_SERVED_MODEL_NAME", "bad name"),
        ],
        "invalid model name",
    );
    refused(&[("WC_MODEL", "no/such/dir/at/all")], "nor a hub id");
    refused(
        &[("WC_CONFIG", "/no/such/config.toml")],
        "/no/such/config.toml",
    );
}

#[test]
fn help_names_every_wc_variable() {
    let out = run(&[], &["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "WC_CONFIG",
        "WC_MODEL",
        "WC_SERVED_MODEL_NAME",
        "WC_DTYPE",
        "WC_HOST",
        "WC_PORT",
        "WC_API_KEY",
        "WC_OPEN_INFERENCE",
        "WC_WORKERS",
        "WC_DEVICE",
        "WC_LOG_FORMAT",
    ] {
        assert!(
            help.contains(&format!("[env: {var}")),
            "{var} missing from:\n{help}"
        );
    }
}

#[test]
fn the_container_images_config_files_are_valid() {
    for file in [
        "deploy/docker/config.cuda.toml",
        "deploy/docker/config.cpu.toml",
    ] {
        let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
        // /models is the image's volume; here a scratch directory stands in for it.
        let models = scratch("image-config");
        let text = text.replace(
            "\"/models\"",
            &format!("{:?}", models.display().to_string()),
        );
        let config =
            Config::parse(&text, Path::new(file), &models).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.check().is_ok(), "{file}");
        assert_eq!(config.server.model_roots.len(), 1, "{file}");
        let _ = std::fs::remove_dir_all(&models);
    }
}
