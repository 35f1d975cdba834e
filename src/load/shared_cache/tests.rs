//! The shared cache's bookkeeping and its CPU reads, on real files and a real `memfd` region.

use std::path::Path;
use std::sync::Arc;

use super::*;

/// A safetensors file with one `U8` tensor of `len` bytes, counting up from `first`.
fn write_weights(path: &Path, first: u8, len: usize) -> InspectedFile {
    let header = format!(r#"{{"t":{{"dtype":"U8","shape":[{len}],"data_offsets":[0,{len}]}}}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend((0..len).map(|i| first.wrapping_add(i as u8)));
    std::fs::write(path, bytes).unwrap();
    InspectedFile::read(path).unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wc-shared-cache-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_file_filled_by_an_attach_that_succeeded_is_read_back_from_the_blocks() {
    let dir = scratch("fill");
    let file = write_weights(&dir.join("a.safetensors"), 7, 3 * BLOCK_BYTES / 2);
    let cache = SharedCache::create(4 * BLOCK_BYTES as u64).unwrap();
    let plan = cache.plan(std::slice::from_ref(&file)).unwrap();
    assert!(matches!(plan.action(&file.key), CacheAction::Fill(b) if b.len() == 2));
    let (read, hit) = cache.read_file(&plan, &file).unwrap();
    assert!(!hit);
    cache.finish(plan.ticket, true);
    let report = cache.report();
    assert_eq!(report.contents.used_bytes, 2 * BLOCK_BYTES as u64);
    assert_eq!(report.counts, HitCounts { hits: 0, misses: 1 });
    // A second process's view (the worker's) of the same memory reads the same bytes.
    let worker = SharedCache::open(cache.region.fd()).unwrap();
    let plan = cache.plan(std::slice::from_ref(&file)).unwrap();
    assert!(matches!(plan.action(&file.key), CacheAction::Cached(_)));
    let (again, hit) = worker.read_file(&plan, &file).unwrap();
    assert!(hit, "from the blocks, not the disk");
    assert!(again.data == read.data, "the cached bytes are the file's");
    cache.finish(plan.ticket, true);
    assert_eq!(cache.report().counts, HitCounts { hits: 1, misses: 1 });
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn fills_of_a_failed_or_unsealed_attach_never_become_entries() {
    let dir = scratch("unsealed");
    let file = write_weights(&dir.join("a.safetensors"), 1, 1000);
    let cache = SharedCache::create(2 * BLOCK_BYTES as u64).unwrap();
    // The worker read it but the attach failed.
    let plan = cache.plan(std::slice::from_ref(&file)).unwrap();
    cache.read_file(&plan, &file).unwrap();
    cache.finish(plan.ticket, false);
    assert_eq!(cache.report().contents.used_bytes, 0);
    // The attach "succeeded" without filling (its worker died before sealing, or used parked
    // weights): the half-written blocks stay unseen.
    let plan = cache.plan(std::slice::from_ref(&file)).unwrap();
    let CacheAction::Fill(blocks) = plan.action(&file.key).clone() else {
        panic!("not cached: filled again");
    };
    cache.region.write_in(&blocks, &[0xAA; 400], |_| {});
    cache.finish(plan.ticket, true);
    assert_eq!(cache.report().contents.used_bytes, 0);
    let plan = cache.plan(std::slice::from_ref(&file)).unwrap();
    assert!(matches!(plan.action(&file.key), CacheAction::Fill(_)));
    cache.finish(plan.ticket, false);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_entry_an_attach_reads_is_not_evicted_until_that_attach_ends() {
    let dir = scratch("in-use");
    let a = write_weights(&dir.join("a.safetensors"), 1, 1000);
    let b = write_weights(&dir.join("b.safetensors"), 2, 1000);
    let cache = SharedCache::create(BLOCK_BYTES as u64).unwrap();
    let plan = cache.plan(std::slice::from_ref(&a)).unwrap();
    cache.read_file(&plan, &a).unwrap();
    cache.finish(plan.ticket, true);
    // One attach reads `a`; another wants `b`, which only fits by evicting `a`: not cached.
    let reading = cache.plan(std::slice::from_ref(&a)).unwrap();
    assert!(matches!(reading.action(&a.key), CacheAction::Cached(_)));
    let other = cache.plan(std::slice::from_ref(&b)).unwrap();
    assert_eq!(other.action(&b.key), &CacheAction::Uncached);
    cache.finish(other.ticket, true);
    cache.finish(reading.ticket, true);
    // Once it ended, `b` may take `a`'s place.
    let other = cache.plan(std::slice::from_ref(&b)).unwrap();
    assert!(matches!(other.action(&b.key), CacheAction::Fill(_)));
    cache.read_file(&other, &b).unwrap();
    cache.finish(other.ticket, true);
    let files = cache.report().contents.files;
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0, b.key.path);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn registration_runs_in_the_background_slab_by_slab() {
    use std::sync::mpsc;
    // 2.5 slabs of small blocks: three registrations, the last one short.
    let block = 1 << 20;
    let region = Arc::new(
        SharedRegion::create_with_blocks(5 * region::SLAB_BYTES as u64 / 2, block).unwrap(),
    );
    let (go, wait) = mpsc::channel::<()>();
    let wait = std::sync::Mutex::new(wait);
    let (seen, lens) = mpsc::channel();
    region.register_in_background(
        move |_, len| {
            wait.lock().unwrap().recv().unwrap();
            seen.send(len).unwrap();
            Ok(())
        },
        0,
    );
    assert_eq!(
        region.registered_bytes(),
        0,
        "nothing waits for registration"
    );
    assert!(!region.registered(0));
    go.send(()).unwrap();
    assert_eq!(lens.recv().unwrap(), region::SLAB_BYTES);
    go.send(()).unwrap();
    go.send(()).unwrap();
    assert_eq!(lens.recv().unwrap(), region::SLAB_BYTES);
    assert_eq!(lens.recv().unwrap(), region::SLAB_BYTES / 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while region.registered_bytes() < region.bytes() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::yield_now();
    }
    assert!(region.registered(0) && region.registered(region.blocks() - 1));
}

#[test]
fn two_attaches_filling_the_same_file_at_once_leave_one_entry() {
    let dir = scratch("twice");
    let file = write_weights(&dir.join("a.safetensors"), 3, 1000);
    let cache = SharedCache::create(4 * BLOCK_BYTES as u64).unwrap();
    let first = cache.plan(std::slice::from_ref(&file)).unwrap();
    let second = cache.plan(std::slice::from_ref(&file)).unwrap();
    assert!(matches!(second.action(&file.key), CacheAction::Fill(_)));
    cache.read_file(&first, &file).unwrap();
    cache.read_file(&second, &file).unwrap();
    cache.finish(first.ticket, true);
    cache.finish(second.ticket, true);
    let report = cache.report();
    assert_eq!(report.contents.files.len(), 1);
    assert_eq!(
        report.contents.used_bytes, BLOCK_BYTES as u64,
        "the second copy went back"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_new_version_does_not_replace_an_entry_an_attach_still_reads() {
    let dir = scratch("version");
    let path = dir.join("a.safetensors");
    let old = write_weights(&path, 1, 1000);
    let cache = SharedCache::create(2 * BLOCK_BYTES as u64).unwrap();
    let plan = cache.plan(std::slice::from_ref(&old)).unwrap();
    cache.read_file(&plan, &old).unwrap();
    cache.finish(plan.ticket, true);
    let reading = cache.plan(std::slice::from_ref(&old)).unwrap();
    // Rewritten (another inode): its fill may not free the blocks `reading` copies from.
    std::fs::remove_file(&path).unwrap();
    let new = write_weights(&path, 9, 1000);
    assert_ne!(new.key, old.key);
    let filling = cache.plan(std::slice::from_ref(&new)).unwrap();
    let (read, _) = cache.read_file(&filling, &new).unwrap();
    cache.finish(filling.ticket, true);
    // Another file takes whatever block is free: never one `reading` copies from.
    let other = write_weights(&dir.join("b.safetensors"), 7, 1000);
    let plan = cache.plan(std::slice::from_ref(&other)).unwrap();
    cache.read_file(&plan, &other).unwrap();
    cache.finish(plan.ticket, true);
    let (still, hit) = cache.read_file(&reading, &old).unwrap();
    assert!(hit && still.data[0] == 1, "the entry being read is intact");
    cache.finish(reading.ticket, true);
    // Now the new version is filled and kept, in place of the old one.
    let again = cache.plan(std::slice::from_ref(&new)).unwrap();
    assert!(matches!(again.action(&new.key), CacheAction::Fill(_)));
    cache.read_file(&again, &new).unwrap();
    cache.finish(again.ticket, true);
    let plan = cache.plan(std::slice::from_ref(&new)).unwrap();
    let (cached, hit) = cache.read_file(&plan, &new).unwrap();
    assert!(hit && cached.data == read.data);
    let files = cache.report().contents.files;
    assert!(
        files.iter().filter(|(p, _)| *p == path).count() == 1,
        "{files:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
