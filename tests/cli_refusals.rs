//! The command line refuses what would quietly go wrong (overwriting a checkpoint, an empty bench, an empty stop string) and finds its bundled files from the binary, not only from the repository root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixture, scratch};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker-controller"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn make_model(out: &Path, extra: &[&str]) -> Output {
    let mut command = bin();
    command
        .args(["make-model", "--preset", "tiny", "--dtype", "f16", "--out"])
        .arg(out)
        .args(extra);
    // SAFETY: umask(2) is async-signal-safe and only changes the child's own mask.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o002);
            Ok(())
        });
    }
    command.output().unwrap()
}

#[test]
fn make_model_refuses_a_non_empty_directory_unless_forced_and_follows_the_umask() {
    let dir = scratch("make-model-force");
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let out = make_model(&dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(!dir.join("model.safetensors").exists(), "nothing written");

    let out = make_model(&dir, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );
    for file in ["model.safetensors", "config.json"] {
        let mode = std::fs::metadata(dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o664, "{file}: 0666 under a umask of 002");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_with_zero_runs_or_rounds_is_refused_before_writing_anything() {
    let out_dir = scratch("bench-zero").join("out");
    for flag in ["--runs", "--rounds"] {
        let out = bin()
            .args(["bench", "--no-peer", flag, "0", "--out"])
            .arg(&out_dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        assert!(stderr(&out).contains("at least 1"), "{}", stderr(&out));
        assert!(!out_dir.exists(), "{flag} 0 wrote {}", out_dir.display());
    }
}

#[test]
fn bench_on_a_cpu_this_process_may_not_use_is_refused_up_front() {
    let out_dir = scratch("bench-cpus").join("out");
    let out = bin()
        .args([
            "bench",
            "--no-peer",
            "--runs",
            "1",
            "--worker-cpus",
            "999999",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("--worker-cpus") && text.contains("999999") && !text.contains("within 0 ms"),
        "{text}"
    );
    assert!(!out_dir.exists(), "nothing written");
}

#[test]
fn an_empty_stop_string_is_refused() {
    let out = bin()
        .args(["generate", "--stop", "", "--model"])
        .arg(fixture("tiny-opt-prenorm"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--stop"), "{}", stderr(&out));
}

/// The binary as installed under `root/bin/`, away from the repository and its target dir.
fn install(name: &str, with_fixture: bool) -> PathBuf {
    // Outside the repository, so the search up from the binary cannot find its fixtures.
    let root = std::env::temp_dir().join(format!("wc-install-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let exe = root.join("bin/worker-controller");
    let original = Path::new(env!("CARGO_BIN_EXE_worker-controller"));
    if std::fs::hard_link(original, &exe).is_err() {
        std::fs::copy(original, &exe).unwrap();
    }
    if with_fixture {
        let model = root.join("tests/fixtures/tiny-opt-prenorm");
        std::fs::create_dir_all(&model).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(fixture("tiny-opt-prenorm").join(file), model.join(file)).unwrap();
        }
    }
    root
}

fn generate_json(exe: &Path, cwd: &Path, model: Option<&Path>) -> Output {
    let mut command = Command::new(exe);
    command.current_dir(cwd).args([
        "generate",
        "--json",
        "--ignore-eos",
        "--max-new-tokens",
        "5",
    ]);
    if let Some(model) = model {
        command.arg("--model").arg(model);
    }
    command.output().unwrap()
}

#[test]
fn the_default_model_is_found_next_to_the_installed_binary() {
    let root = install("found", true);
    let elsewhere = scratch("cwd-found");
    let out = generate_json(&root.join("bin/worker-controller"), &elsewhere, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let model = report["model"].as_str().unwrap();
    assert!(model.starts_with(root.to_str().unwrap()), "{model}");
    let reference = generate_json(
        Path::new(env!("CARGO_BIN_EXE_worker-controller")),
        &elsewhere,
        Some(&fixture("tiny-opt-prenorm")),
    );
    let reference: serde_json::Value = serde_json::from_slice(&reference.stdout).unwrap();
    assert_eq!(report["new_tokens"], reference["new_tokens"]);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn missing_defaults_name_the_flag_that_gives_them() {
    let root = install("missing", false);
    let exe = root.join("bin/worker-controller");
    let elsewhere = scratch("cwd-missing");
    let out = generate_json(&exe, &elsewhere, None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("tests/fixtures/tiny-opt-prenorm") && err.contains("pass --model"),
        "{err}"
    );
    let out = Command::new(&exe)
        .current_dir(&elsewhere)
        .args(["bench", "--no-peer", "--runs", "1", "--out", "out"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("pass --models"), "{}", stderr(&out));
    assert!(!elsewhere.join("out").exists());
    let out = bin()
        .args(["bench", "--peer-script", "/no/such/peer.py", "--out"])
        .arg(elsewhere.join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--peer-script /no/such/peer.py"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn help_says_where_defaults_come_from() {
    for (command, flags) in [
        ("generate", &["--model", "next to the binary", "--stop"][..]),
        (
            "bench",
            &["--models", "--peer-script", "next to the binary"][..],
        ),
        ("make-model", &["--force", "not empty"][..]),
    ] {
        let out = bin().args([command, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in flags {
            assert!(help.contains(flag), "{command}: {flag} in\n{help}");
        }
    }
}
