//! Opening a checkpoint's files beneath its directory: the kernel resolves each path inside the
//! checkpoint's confinement root, so a file or directory swapped for a symlink after any check
//! cannot lead the open out of it.
//!
//! Every path handed here is one a [`Checkpoint`](super::Checkpoint) built: its directory is
//! canonical. The root is that directory, or for a hub snapshot's file
//! (`…/models--org--name/snapshots/<rev>/…`) the repository directory, whose `blobs/` the
//! snapshot's links point into. The root is opened with no symlink allowed on its path; the file
//! is opened relative to it with `openat2(RESOLVE_BENEATH)` (symlinks followed only while they
//! stay beneath the root), then checked on its descriptor: a regular file on the root's device.
//! Where `openat2` is missing (Linux before 5.6, or a seccomp filter that refuses it), the file
//! is opened by path and its descriptor's real path (`/proc/self/fd`) must lie beneath the root.

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path};

/// Why a confined open failed.
#[derive(Debug)]
pub enum ConfinedError {
    /// The path leads out of the root (a symlink out, `..` past it, another file system), or a
    /// symlink now lies on the root's own path.
    Outside,
    /// The open itself failed (missing file, permissions, ...).
    Io(io::Error),
}

/// The directory `file` must stay beneath: [`directory_root`] of the directory it is in.
pub fn confinement_root(file: &Path) -> &Path {
    directory_root(file.parent().unwrap_or(Path::new("/")))
}

/// The directory every file of `dir` must stay beneath: for a directory inside a hub snapshot,
/// its repository directory; else `dir` itself. Read from the path alone, no file system access.
pub fn directory_root(dir: &Path) -> &Path {
    dir.ancestors()
        .find_map(|ancestor| {
            let snapshots = ancestor.parent()?;
            let repo = snapshots.parent()?;
            let is_repo = repo
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("models--"));
            (snapshots.file_name()? == "snapshots" && is_repo).then_some(repo)
        })
        .unwrap_or(dir)
}

/// Opens the regular file `path` for reading, confined beneath [`confinement_root`]`(path)`,
/// with the metadata of the open file.
pub fn open_confined(path: &Path) -> Result<(File, Metadata), ConfinedError> {
    let root = confinement_root(path);
    let relative = path
        .strip_prefix(root)
        .map_err(|_| ConfinedError::Outside)?;
    let plain = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !plain || relative.as_os_str().is_empty() || !root.is_absolute() {
        return Err(ConfinedError::Outside);
    }
    let root_fd = open_root(root)?;
    let file = match open_beneath(&root_fd, relative) {
        Err(ConfinedError::Io(e)) if openat2_unavailable(&e) => open_and_verify(root, path)?,
        other => other?,
    };
    let meta = file.metadata().map_err(ConfinedError::Io)?;
    if meta.dev() != device_of(&root_fd)? {
        return Err(ConfinedError::Outside);
    }
    Ok((file, meta))
}

/// `O_PATH` descriptor of the root directory, refused when any component of its path is a
/// symlink (the path was canonical when the checkpoint was resolved; a link there now is a swap).
fn open_root(root: &Path) -> Result<OwnedFd, ConfinedError> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    match openat2(libc::AT_FDCWD, root, flags, libc::RESOLVE_NO_SYMLINKS) {
        Err(e) if openat2_unavailable(&e) => {
            let canonical = root.canonicalize().map_err(ConfinedError::Io)?;
            if canonical != root {
                return Err(ConfinedError::Outside);
            }
            let dir = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(root)
                .map_err(ConfinedError::Io)?;
            Ok(OwnedFd::from(dir))
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(ConfinedError::Outside),
        other => other.map_err(ConfinedError::Io),
    }
}

/// The file at `relative` beneath `root`, opened without blocking (a FIFO swapped in returns).
fn open_beneath(root: &OwnedFd, relative: &Path) -> Result<File, ConfinedError> {
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    match openat2(root.as_raw_fd(), relative, flags, resolve) {
        Ok(fd) => Ok(File::from(fd)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::ELOOP)) => {
            Err(ConfinedError::Outside)
        }
        Err(e) => Err(ConfinedError::Io(e)),
    }
}

/// The fallback without `openat2`: open by path, then prove where the descriptor points.
fn open_and_verify(root: &Path, path: &Path) -> Result<File, ConfinedError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ConfinedError::Io)?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(ConfinedError::Io)?;
    if real.starts_with(root) {
        Ok(file)
    } else {
        Err(ConfinedError::Outside)
    }
}

/// `openat2(2)`, retried when interrupted or when a concurrent rename made the kernel give up
/// (`EAGAIN`, which `RESOLVE_*` lookups return under rename races).
fn openat2(
    dirfd: libc::c_int,
    path: &Path,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `open_how` is plain data; zero is a valid value of every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    let mut tries = 0;
    loop {
        // SAFETY: `path` is a NUL-terminated string and `how` a live `open_how` whose size is
        // passed with it; the returned descriptor, when non-negative, is ours alone.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor from the kernel, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        }
        let error = io::Error::last_os_error();
        tries += 1;
        let again = matches!(error.raw_os_error(), Some(libc::EINTR | libc::EAGAIN));
        if !again || tries >= 16 {
            return Err(error);
        }
    }
}

/// Whether `openat2` itself is missing or forbidden here (not the open failing).
fn openat2_unavailable(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::EPERM))
}

/// The device of the file behind `fd` (an `O_PATH` descriptor too).
fn device_of(fd: &OwnedFd) -> Result<u64, ConfinedError> {
    // SAFETY: `stat` is plain data, written whole by a successful `fstat` on a live descriptor.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(ConfinedError::Io(io::Error::last_os_error()));
    }
    Ok(stat.st_dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_snapshot_file_is_confined_to_its_repository() {
        let file = Path::new("/c/hub/models--org--name/snapshots/abc/model.safetensors");
        assert_eq!(
            confinement_root(file),
            Path::new("/c/hub/models--org--name")
        );
        let nested = Path::new("/c/hub/models--org--name/snapshots/abc/sub/shard.safetensors");
        assert_eq!(
            confinement_root(nested),
            Path::new("/c/hub/models--org--name")
        );
    }

    #[test]
    fn a_plain_checkpoint_file_is_confined_to_its_directory() {
        let file = Path::new("/models/llama/model.safetensors");
        assert_eq!(confinement_root(file), Path::new("/models/llama"));
        let fake = Path::new("/models/snapshots/abc/model.safetensors");
        assert_eq!(confinement_root(fake), Path::new("/models/snapshots/abc"));
    }
}
