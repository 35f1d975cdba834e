//! Files that ship with the repository (fixture models, the bench's transformers peer script), found from the current directory or the installed binary.

use std::path::{Path, PathBuf};

/// Where a bundled file is looked for, in order: the current directory, then the binary's
/// directory and each directory above it (`target/release/` sits two below the repository
/// root; an install may put `bin/` next to `tests/` and `bench/`).
fn roots() -> (Option<PathBuf>, Option<PathBuf>) {
    let cwd = std::env::current_dir().ok();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    (cwd, exe_dir)
}

/// The first `root/relative` that exists, or an error naming the flag that gives it instead.
pub fn find(relative: &str, what: &str, flag: &str) -> anyhow::Result<PathBuf> {
    let (cwd, exe_dir) = roots();
    let candidates = cwd.iter().cloned().chain(
        exe_dir
            .iter()
            .flat_map(|d| d.ancestors().map(Path::to_path_buf)),
    );
    if let Some(found) = candidates
        .map(|root| root.join(relative))
        .find(|p| p.exists())
    {
        return Ok(found);
    }
    let shown = |p: &Option<PathBuf>| p.as_ref().map_or("?".into(), |p| p.display().to_string());
    anyhow::bail!(
        "{what} `{relative}` was not found in the current directory ({}) nor next to the \
         binary ({} or a directory above it): pass {flag}",
        shown(&cwd),
        shown(&exe_dir)
    )
}

/// The umask's complement applied to 0666: the mode `open(2)` gives a new file.
pub fn default_file_mode() -> u32 {
    // SAFETY: umask(2) cannot fail; the first call reads the mask and the second restores it.
    let mask = unsafe {
        let mask = libc::umask(0o022);
        libc::umask(mask);
        mask
    };
    0o666 & !(mask as u32)
}
