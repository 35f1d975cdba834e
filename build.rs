//! Records the commit the binary is built from (`git describe --always --dirty`) as
//! `WC_GIT_DESCRIBE`, so that benchmark results name it. `WC_GIT_DESCRIBE` in the environment
//! overrides it (e.g. for builds outside a git checkout); without git it is `unknown`.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=WC_GIT_DESCRIBE");
    let describe = std::env::var("WC_GIT_DESCRIBE")
        .ok()
        .or_else(|| git(&["describe", "--always", "--dirty", "--abbrev=10"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WC_GIT_DESCRIBE={describe}");
    // Re-run when the commit or the sources change (so `-dirty` stays true), not on every build.
    for path in [
        "build.rs",
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "actors/src",
        "actors/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    let head_ref = git(&["rev-parse", "--symbolic-full-name", "HEAD"]);
    for name in ["HEAD", "index"]
        .into_iter()
        .map(String::from)
        .chain(head_ref)
    {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
