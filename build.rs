//! Records the commit the binary is built from (`git describe --always --dirty`) as
//! `WC_GIT_DESCRIBE`, so that benchmark results name it. `WC_GIT_DESCRIBE` in the environment
//! overrides it (e.g. for builds outside a git checkout); without git it is `unknown`.
//!
//! With the `cuda` feature it also compiles our CUDA kernels (`kernels/*.cu`) to PTX with `nvcc`
//! (as candle-kernels does; `$NVCC`, else `nvcc` on the PATH or in `$CUDA_HOME/bin`), for the
//! compute capability in `$CUDA_COMPUTE_CAP` (default 80: Ampere and newer load it), into
//! `$OUT_DIR`, from where the binary embeds it.
use std::path::{Path, PathBuf};
use std::process::Command;

/// Our kernels, each compiled to `$OUT_DIR/<name>.ptx`.
const KERNELS: [&str; 3] = ["decode_attention", "fused", "gemv"];

fn nvcc() -> PathBuf {
    if let Some(nvcc) = std::env::var_os("NVCC") {
        return nvcc.into();
    }
    let on_path = Command::new("nvcc").arg("--version").output();
    if on_path.is_ok_and(|o| o.status.success()) {
        return "nvcc".into();
    }
    let home = std::env::var_os("CUDA_HOME").unwrap_or_else(|| "/usr/local/cuda".into());
    Path::new(&home).join("bin/nvcc")
}

fn compile_kernels() {
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    println!("cargo:rerun-if-changed=kernels/convert.cuh");
    for name in KERNELS {
        let source = format!("kernels/{name}.cu");
        println!("cargo:rerun-if-changed={source}");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(out_dir.join(format!("{name}.ptx")))
            .arg(&source)
            .status()
            .unwrap_or_else(|e| panic!("running {} for {source}: {e} (set NVCC)", nvcc.display()));
        assert!(status.success(), "nvcc failed on {source}");
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_kernels();
    }
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
