//! A checkpoint file swapped for a symlink out of the checkpoint while it is checked and loaded:
//! no check or load ever reads the file outside, and no message carries a byte of it.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{copy_fixture, cpu_worker, scratch, spec};
use wc_actors::{Timeline, WorkerDevice};
use worker_controller::backend::inspect;
use worker_controller::load::LoadError;

/// The outside file's first 8 bytes, as a little-endian header length would read them.
const SECRET: &[u8; 16] = b"SECRET-BYTES-123";

/// Swaps `model.safetensors` in `dir` between the real file and a symlink to `outside`, by
/// atomic renames, until `stop` is set; returns how many swaps it made.
fn swap_until(dir: &Path, outside: &Path, stop: &AtomicBool) -> usize {
    let target = dir.join("model.safetensors");
    let keep = dir.join("real.keep");
    std::fs::hard_link(&target, &keep).unwrap();
    let mut swaps = 0;
    while !stop.load(Ordering::Relaxed) {
        let link = dir.join("link.tmp");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(outside, &link).unwrap();
        std::fs::rename(&link, &target).unwrap();
        let real = dir.join("real.tmp");
        let _ = std::fs::remove_file(&real);
        std::fs::hard_link(&keep, &real).unwrap();
        std::fs::rename(&real, &target).unwrap();
        swaps += 2;
    }
    swaps
}

/// A file outside the checkpoint that is not safetensors: following the link would report
/// its first bytes as a header length.
fn outside_file(test: &str) -> std::path::PathBuf {
    let outside = scratch(&format!("{test}-outside")).join("secret");
    std::fs::write(&outside, SECRET.repeat(64)).unwrap();
    outside
}

/// What a message would show of the secret if a reader followed the link.
fn leaks_secret(message: &str) -> bool {
    let as_length = u64::from_le_bytes(SECRET[..8].try_into().unwrap()).to_string();
    message.contains(&as_length) || message.contains("SECRET")
}

/// Runs `attempt` while another thread swaps the weights, for a bounded time, and returns the
/// errors seen and the number of attempts.
fn under_swaps<T>(
    test: &str,
    attempts: usize,
    mut attempt: impl FnMut(&Path) -> Result<T, String>,
) -> (Vec<String>, usize) {
    let dir = copy_fixture("tiny-opt-prenorm", test);
    let outside = outside_file(test);
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || swap_until(&dir, &outside, &stop))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut errors = Vec::new();
    let mut made = 0;
    while made < attempts && Instant::now() < deadline {
        if let Err(message) = attempt(&dir) {
            errors.push(message);
        }
        made += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 100, "the swapper ran ({swaps} swaps)");
    (errors, made)
}

#[test]
fn a_check_never_reads_a_weight_file_swapped_for_a_link_out() {
    let (errors, made) = under_swaps("swap-check", 20000, |dir| {
        inspect(&spec(dir)).map(|_| ()).map_err(|e| match e {
            // Refused as outside, or caught by the early path check: both keep the file closed.
            LoadError::OutsideCheckpoint { .. } | LoadError::MissingFile(_) => String::new(),
            other => format!("{other:?}: {other}"),
        })
    });
    let followed: Vec<&String> = errors.iter().filter(|e| !e.is_empty()).collect();
    assert!(
        followed.is_empty(),
        "{} of {made} checks read the file outside the checkpoint, e.g. {}",
        followed.len(),
        followed[0]
    );
    assert!(errors.iter().all(|e| !leaks_secret(e)));
}

#[test]
fn a_load_never_reads_a_weight_file_swapped_for_a_link_out() {
    let mut device = cpu_worker();
    let (errors, made) = under_swaps("swap-load", 400, |dir| {
        device
            .load(
                &spec(dir),
                &wc_actors::Handoff::default(),
                &mut Timeline::default(),
            )
            .map(|_| ())
            .map_err(|e| e.message)
    });
    for message in &errors {
        assert!(
            !leaks_secret(message),
            "a message leaks the file: {message}"
        );
        assert!(
            message.contains("outside the checkpoint") || message.contains("not found"),
            "a load read the file outside the checkpoint ({} errors of {made}): {message}",
            errors.len()
        );
    }
}

#[test]
fn a_hub_snapshot_still_loads_through_its_links_into_blobs() {
    let repo = scratch("swap-hub").join("models--org--tiny");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    let source = common::fixture("tiny-opt-prenorm");
    for (i, file) in ["config.json", "model.safetensors", "tokenizer.json"]
        .into_iter()
        .enumerate()
    {
        let blob = repo.join(format!("blobs/blob{i}"));
        std::fs::copy(source.join(file), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), snapshot.join(file)).unwrap();
    }
    let mut device = cpu_worker();
    let (mut engine, _) = device
        .load(
            &spec(&snapshot),
            &wc_actors::Handoff::default(),
            &mut Timeline::default(),
        )
        .expect("a hub snapshot loads through its blob links");
    engine.warm_up().expect("and runs");

    // A link in the snapshot that leaves the repository is refused, not followed.
    let outside = outside_file("swap-hub");
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(&outside, snapshot.join("model.safetensors")).unwrap();
    let err = inspect(&spec(&snapshot)).expect_err("refused");
    assert!(
        matches!(err, LoadError::OutsideCheckpoint { .. }),
        "{err:?}"
    );
}

#[test]
fn an_admitted_directory_swapped_for_a_link_out_is_refused() {
    let admitted = copy_fixture("tiny-opt-prenorm", "swap-dir")
        .canonicalize()
        .unwrap();
    let canonical = |dir: &Path| wc_actors::ModelSpec {
        canonical: true,
        park: None,
        ..spec(dir)
    };
    inspect(&canonical(&admitted)).expect("the admitted directory checks");

    // The directory becomes a link to a checkpoint outside the model roots.
    let outside = copy_fixture("tiny-opt-prenorm", "swap-dir-outside");
    let moved = admitted.with_extension("moved");
    std::fs::rename(&admitted, &moved).unwrap();
    std::os::unix::fs::symlink(&outside, &admitted).unwrap();
    let err = inspect(&canonical(&admitted)).expect_err("refused");
    assert!(
        matches!(err, LoadError::OutsideCheckpoint { .. }),
        "{err:?}"
    );
    let mut device = cpu_worker();
    let refused = device
        .load(
            &canonical(&admitted),
            &wc_actors::Handoff::default(),
            &mut Timeline::default(),
        )
        .err()
        .expect("a load is refused too");
    assert!(refused.message.contains("outside"), "{}", refused.message);

    // A path given by hand (not admitted) may still lead through links.
    inspect(&spec(&admitted)).expect("a user's own symlinked path resolves");
}
