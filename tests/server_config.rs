//! `serve`'s configuration as a user meets it: bad files are refused with file, line and reason;
//! flags override the file; `--help` explains.

mod server_common;

use std::process::Command;

use server_common::{scratch, Server};

fn serve_with(test: &str, config: &str) -> (bool, String) {
    let dir = scratch(test);
    let path = dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_worker-controller"))
        .args(["serve", "--port", "0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_are_refused_with_file_line_and_reason() {
    for (config, line, words) in [
        ("[server]\nport = 1\nprot = 2\n", 3, "unknown field `prot`"),
        ("[[workers]]\ndevice = \"tpu\"\n", 2, "unknown device"),
        ("[server]\nport = \"eighty\"\n", 2, "invalid type"),
        (
            "[[models]]\nname = \"m\"\npath = \"/no/such/model\"\n",
            3,
            "is not a directory",
        ),
        (
            "[[models]]\nname = \"m\"\nhub = \"a/b\"\nkeep_alive = \"soon\"\n",
            4,
            "invalid duration",
        ),
        (
            "[prewarm]\nmemory_limit = \"lots\"\n",
            2,
            "invalid byte size",
        ),
    ] {
        let (ok, stderr) = serve_with("bad-config", config);
        assert!(!ok, "{config}");
        assert!(
            stderr.contains(&format!("bad.toml:{line}:")),
            "{config}\n{stderr}"
        );
        assert!(stderr.contains(words), "{config}\n{stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_worker-controller"))
        .args(["serve", "--config", "/no/such/config.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/config.toml"));
}

#[test]
fn min_ready_workers_outside_one_to_the_worker_count_is_refused() {
    for wanted in [0, 3] {
        let config = format!(
            "[server]\nmin_ready_workers = {wanted}\n\n[[workers]]\ndevice = \"cpu\"\ncount = 2\n"
        );
        let (ok, stderr) = serve_with("min-ready", &config);
        assert!(!ok, "{config}");
        let reason = format!("min_ready_workers = {wanted} is out of range: 1 to the 2 worker(s)");
        assert!(stderr.contains(&reason), "{config}\n{stderr}");
    }
}

#[test]
fn flags_override_the_file() {
    let server = Server::spawn(
        "flags",
        "[server]\nport = 1\n\n[[workers]]\ndevice = \"cpu\"\ncount = 1\n",
        &["--workers", "3", "--device", "cpu"],
    );
    let workers = server.get("/workers").json();
    assert_eq!(workers["workers"].as_array().unwrap().len(), 3);
    assert!(!server.addr.ends_with(":1"), "--port 0 won over port = 1");
}

#[test]
fn help_explains_the_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_worker-controller"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--host",
        "--port",
        "--api-key",
        "--workers",
        "--device",
        "--log-format",
        "POST /v1/completions",
    ] {
        assert!(help.contains(flag), "{flag} in\n{help}");
    }
}

#[test]
fn a_start_up_model_that_cannot_attach_fails_the_start_at_once_naming_its_line() {
    let fixture = server_common::fixture("tiny-opt-prenorm");
    let config = format!(
        "[prewarm]\nmemory_limit = \"100KiB\"\n\n[[workers]]\ndevice = \"cpu\"\n\n\
         [[models]]\nname = \"big\"\npath = {:?}\nattach_on_start = true\n",
        fixture.display().to_string()
    );
    let started = std::time::Instant::now();
    let (ok, stderr) = serve_with("start-fails", &config);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("bad.toml:8"), "{stderr}");
    assert!(
        stderr.contains("does not fit") || stderr.contains("needs"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "failed only after {:?}",
        started.elapsed()
    );
}
