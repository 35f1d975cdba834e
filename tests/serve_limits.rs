//! `serve` refuses what would panic, hang or quietly weaken it: out-of-range durations (file and JSON), empty API keys, more start-up models than workers, and says a missing file's error once.

mod server_common;

use std::process::{Command, Output};

use serde_json::json;
use server_common::{scratch, Server};

/// Runs `serve --port 0` on `config` with extra `args` and `env`; it is expected to exit.
fn serve(test: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let dir = scratch(test);
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_worker-controller"))
        .args(["serve", "--port", "0", "--config"])
        .arg(&path)
        .args(args)
        .env_remove("WC_API_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

#[test]
fn a_huge_keep_alive_in_an_attach_request_is_a_400_and_the_server_lives_on() {
    // The binary, so that its log (stderr and stdout) is there to read.
    let server = Server::spawn("keep-alive-json", "[[workers]]\ndevice = \"cpu\"\n", &[]);
    for keep_alive in [json!(1e300), json!(18446744073709551615u64), json!(-7)] {
        let reply = server.post(
            "/engines",
            &json!({"model": "x", "name": "x", "keep_alive": keep_alive}),
        );
        assert_eq!(reply.status, 400, "keep_alive {keep_alive}: {}", reply.body);
        assert!(reply.body.contains("keep_alive"), "{}", reply.body);
    }
    assert_eq!(server.get("/health").status, 200);
    let log = server.log();
    assert!(log.contains("listening on"), "the log is read: {log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_huge_duration_in_the_file_is_a_line_error_not_a_crash() {
    for config in [
        "[[models]]\nname = \"m\"\nhub = \"a/b\"\nkeep_alive = 1e300\n",
        "[[models]]\nname = \"m\"\nhub = \"a/b\"\nkeep_alive = nan\n",
        "[runtime]\nrestart_backoff = \"1\"\nattach_timeout = 1e300\n",
    ] {
        let (out, stderr) = serve("huge-duration", config, &[], &[]);
        assert_eq!(out.status.code(), Some(1), "{config}\n{stderr}");
        assert!(stderr.contains("config.toml:"), "{config}\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn empty_api_keys_are_refused_from_flag_environment_and_file() {
    let config = "[[workers]]\ndevice = \"cpu\"\n";
    let (out, stderr) = serve("empty-key-flag", config, &["--api-key", ""], &[]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--api-key") && stderr.contains("empty"),
        "{stderr}"
    );
    let (out, stderr) = serve("empty-key-env", config, &[], &[("WC_API_KEY", "")]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("WC_API_KEY") && stderr.contains("empty"),
        "{stderr}"
    );
    let (out, stderr) = serve("empty-key-file", "[server]\napi_key = \"\"\n", &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("config.toml:2:"), "{stderr}");
}

#[test]
fn zero_body_limits_and_too_many_workers_are_refused() {
    let (out, stderr) = serve("tiny-body", "[server]\nmax_body_bytes = \"0\"\n", &[], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("config.toml:2:"), "{stderr}");
    let (out, stderr) = serve("many-workers", "", &["--workers", "1000"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("--workers") && stderr.contains("1 to 64"),
        "{stderr}"
    );
}

#[test]
fn more_models_at_start_than_workers_fails_before_any_attach() {
    let fixture = server_common::fixture("tiny-opt-prenorm");
    let model = |name: &str| {
        format!(
            "[[models]]\nname = \"{name}\"\npath = {:?}\nattach_on_start = true\n",
            fixture.display().to_string()
        )
    };
    let config = format!(
        "[[workers]]\ndevice = \"cpu\"\ncount = 1\n{}{}",
        model("a"),
        model("b")
    );
    let (out, stderr) = serve("start-models", &config, &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("2 models attach at start (a, b)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("engine attached"),
        "refused before attaching:\n{stderr}"
    );
    // One more worker and the same file starts (stopped as soon as it is ready).
    let server = Server::spawn("start-models-ok", &config, &["--workers", "2"]);
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn a_missing_config_file_names_it_and_its_os_error_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_worker-controller"))
        .args(["serve", "--config", "/no/such/config.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/no/such/config.toml"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}
