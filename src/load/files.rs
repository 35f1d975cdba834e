//! Opening a checkpoint's files: confined beneath the checkpoint, regular files only (a FIFO,
//! socket or device is refused), small ones read within a size limit.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::confined::{open_confined, ConfinedError};
use super::LoadError;

/// What a file that is not a regular file is, for messages.
fn file_kind(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

/// `Ok` when `meta` (symlinks followed) describes a regular file.
pub fn ensure_regular(path: &Path, meta: &Metadata) -> Result<(), LoadError> {
    if meta.file_type().is_file() {
        Ok(())
    } else {
        Err(LoadError::NotRegularFile {
            path: path.to_path_buf(),
            kind: file_kind(meta.file_type()),
        })
    }
}

/// Opens `path`, a file of a checkpoint, for reading if it is a regular file, with its metadata.
///
/// The open is confined beneath the checkpoint ([`open_confined`]): a symlink swapped in at any
/// moment cannot lead it out, and the type is checked on the open descriptor (opening never
/// blocks: a FIFO opens without waiting and is then refused).
pub fn open_regular(path: &Path) -> Result<(File, Metadata), LoadError> {
    let (file, meta) = open_confined(path).map_err(|e| match e {
        ConfinedError::Outside => LoadError::OutsideCheckpoint {
            path: path.to_path_buf(),
        },
        // Opening a socket fails with ENXIO.
        ConfinedError::Io(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            LoadError::NotRegularFile {
                path: path.to_path_buf(),
                kind: "a socket",
            }
        }
        ConfinedError::Io(e) => io_error(path, e),
    })?;
    ensure_regular(path, &meta)?;
    Ok((file, meta))
}

/// The whole of a small file, refused when it is longer than `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    let (file, meta) = open_regular(path)?;
    let too_large = |bytes| LoadError::FileTooLarge {
        path: path.to_path_buf(),
        bytes,
        limit,
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The typed error of an io failure on `path`: a missing file is [`LoadError::MissingFile`].
pub fn io_error(path: &Path, source: std::io::Error) -> LoadError {
    match source.kind() {
        std::io::ErrorKind::NotFound => LoadError::MissingFile(path.to_path_buf()),
        _ => LoadError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Identifies a file's contents without reading it: a file replaced by another (even one of the
/// same size with the same modification time, as `cp -p` makes) has another key, because its
/// inode or its change time differs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileKey {
    pub path: PathBuf,
    pub device: u64,
    pub inode: u64,
    pub len: u64,
    /// Modification time, seconds and nanoseconds since the epoch.
    pub modified: (i64, i64),
    /// Status change time (set by the kernel on every write, rename or `utimensat`).
    pub changed: (i64, i64),
}

impl FileKey {
    /// The key of the regular file at `path`, a checkpoint's file (opened confined beneath
    /// the checkpoint, as every read of it is).
    pub fn of(path: &Path) -> Result<Self, LoadError> {
        let (_, meta) = open_regular(path)?;
        Ok(Self::from_metadata(path, &meta))
    }

    /// The key of a file from metadata already taken (e.g. of the open file).
    pub fn from_metadata(path: &Path, meta: &Metadata) -> Self {
        Self {
            path: path.to_path_buf(),
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.size(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}
