//! Typed errors of the load floor (a checkpoint's files to tensors on a device), their mapping to
//! the runtime's kinds, and the quoting rule every message built from file or request content follows.

use std::path::PathBuf;

use wc_actors::{EngineError, ErrorKind};

/// The most characters of file or request content a message or log line quotes.
pub const QUOTE_CHARS: usize = 200;

/// `text` cut to its first [`QUOTE_CHARS`] characters (on a char boundary), saying how many
/// bytes were cut, for messages and log lines built from file or request content.
pub fn shorten(text: &str) -> std::borrow::Cow<'_, str> {
    shorten_to(text, QUOTE_CHARS)
}

/// A candle error's message without the backtrace candle captures under `RUST_BACKTRACE`
/// (never for a reply or a log line), shortened.
pub fn candle_message(e: &candle_core::Error) -> String {
    fn bare(e: &candle_core::Error) -> String {
        match e {
            candle_core::Error::WithBacktrace { inner, .. } => bare(inner),
            candle_core::Error::Context { inner, context } => format!("{context}: {}", bare(inner)),
            candle_core::Error::WithPath { inner, path } => {
                format!("{}: {}", path.display(), bare(inner))
            }
            other => other.to_string(),
        }
    }
    shorten(&bare(e)).into_owned()
}

/// `text` cut to its first `max` characters, saying how many bytes were cut.
pub fn shorten_to(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}... ({} more bytes)", &text[..cut], text.len() - cut).into(),
        None => text.into(),
    }
}

/// Everything that can go wrong between a model path and a running engine.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model directory `{}` does not exist", shorten(&.0.display().to_string()))]
    ModelNotFound(PathBuf),
    /// `looked_in` (absolute cache paths) is for logs: the message never shows it, so that a
    /// client learns nothing about the server's home directory.
    #[error("`{}` is not a directory and is not in the local Hugging Face cache", shorten(.id))]
    HubModelNotCached { id: String, looked_in: Vec<PathBuf> },
    #[error("`{}` is missing from the checkpoint", shorten(&.0.display().to_string()))]
    MissingFile(PathBuf),
    #[error("`{path}` is {kind}, not a regular file")]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error("`{path}` is {bytes} bytes, more than the {limit} allowed for it")]
    FileTooLarge {
        path: PathBuf,
        bytes: u64,
        limit: u64,
    },
    #[error("`{}` resolves outside the checkpoint directory", shorten(&.path.display().to_string()))]
    OutsideCheckpoint { path: PathBuf },
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config `{path}`: {}", shorten(.reason))]
    InvalidConfig { path: PathBuf, reason: String },
    /// `supported` lists the model types the family table has, as a message names them.
    #[error("unsupported model_type `{}`: supported are {supported}", shorten(.found))]
    UnknownModelType { found: String, supported: String },
    #[error("this loader runs `{expected}` checkpoints only, and this one is `{}`", shorten(.found))]
    WrongFamily {
        expected: &'static str,
        found: String,
    },
    #[error("corrupt or truncated safetensors file `{path}`: {}", shorten(.reason))]
    CorruptSafetensors { path: PathBuf, reason: String },
    #[error("the inspection handed to this attach cannot be read: {}", shorten(.reason))]
    InvalidHandoff { reason: String },
    #[error("tensor `{}` is missing from the checkpoint", shorten(.0))]
    MissingTensor(String),
    #[error(
        "the shards disagree on dtype: `{first}` holds {}, `{other}` holds {}",
        shorten(.first_dtype),
        shorten(.other_dtype)
    )]
    ShardsDisagree {
        first: PathBuf,
        first_dtype: String,
        other: PathBuf,
        other_dtype: String,
    },
    #[error("tensor `{}` appears more than once in the checkpoint", shorten(.0))]
    DuplicateTensor(String),
    #[error("tensor `{}` has shape {found:?}, expected {expected:?}", shorten(.name))]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{}` has unsupported dtype {}", shorten(.name), shorten(.dtype))]
    UnsupportedTensorDtype { name: String, dtype: String },
    /// A copy of another worker's resident weights failed part-way (its device failed, or its
    /// weights went): only this attach fails, and what it had copied is freed.
    #[error("copying the weights from worker {worker}'s device failed: {}", shorten(.reason))]
    PeerCopy { worker: usize, reason: String },
    #[error("invalid tokenizer `{path}`: {}", shorten(.reason))]
    InvalidTokenizer { path: PathBuf, reason: String },
    #[error("this build has no CUDA support: rebuild with `--features cuda` to use `{0}`")]
    CudaNotCompiled(String),
    #[error("cannot open device `{}`: {}", shorten(.device), shorten(.reason))]
    DeviceUnavailable { device: String, reason: String },
    #[error(
        "the model does not fit: it needs {needed_bytes} bytes of device memory (weights and KV \
         cache), the worker has {free_bytes} free"
    )]
    DoesNotFit { needed_bytes: u64, free_bytes: u64 },
    #[error("device error: {0}")]
    Device(DeviceError),
}

/// What a device error means for the worker, read from the driver's error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceFault {
    /// The device (or pinned host memory) has no room: the request may fit elsewhere or later.
    OutOfMemory,
    /// A sticky error: the context is unusable and the worker must be restarted.
    Fatal,
    /// Anything else.
    Other,
}

/// A failure of the device or its driver, with its meaning for the worker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeviceError {
    pub message: String,
    pub fault: DeviceFault,
}

impl DeviceError {
    /// A device failure that is neither out-of-memory nor fatal.
    pub fn other(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            fault: DeviceFault::Other,
        }
    }
}

impl LoadError {
    /// The same error with the file it names made relative to the checkpoint directory `dir`,
    /// so that messages name `model.safetensors`, not where the server keeps it.
    pub fn relative_to(self, dir: &std::path::Path) -> Self {
        let rel = |path: PathBuf| match path.strip_prefix(dir) {
            Ok(inner) if !inner.as_os_str().is_empty() => inner.to_path_buf(),
            _ => path,
        };
        match self {
            LoadError::MissingFile(path) => LoadError::MissingFile(rel(path)),
            LoadError::NotRegularFile { path, kind } => LoadError::NotRegularFile {
                path: rel(path),
                kind,
            },
            LoadError::FileTooLarge { path, bytes, limit } => LoadError::FileTooLarge {
                path: rel(path),
                bytes,
                limit,
            },
            LoadError::OutsideCheckpoint { path } => {
                LoadError::OutsideCheckpoint { path: rel(path) }
            }
            LoadError::Io { path, source } => LoadError::Io {
                path: rel(path),
                source,
            },
            LoadError::InvalidConfig { path, reason } => LoadError::InvalidConfig {
                path: rel(path),
                reason,
            },
            LoadError::ShardsDisagree {
                first,
                first_dtype,
                other,
                other_dtype,
            } => LoadError::ShardsDisagree {
                first: rel(first),
                first_dtype,
                other: rel(other),
                other_dtype,
            },
            LoadError::CorruptSafetensors { path, reason } => LoadError::CorruptSafetensors {
                path: rel(path),
                reason,
            },
            LoadError::InvalidTokenizer { path, reason } => LoadError::InvalidTokenizer {
                path: rel(path),
                reason,
            },
            other => other,
        }
    }
}

impl DeviceFault {
    /// The runtime's kind for a failure of this sort.
    pub fn kind(self) -> ErrorKind {
        match self {
            DeviceFault::OutOfMemory => ErrorKind::OutOfMemory,
            DeviceFault::Fatal => ErrorKind::DeviceFatal,
            DeviceFault::Other => ErrorKind::Internal,
        }
    }
}

impl From<LoadError> for EngineError {
    fn from(e: LoadError) -> Self {
        let kind = match &e {
            LoadError::ModelNotFound(_)
            | LoadError::HubModelNotCached { .. }
            | LoadError::MissingFile(_) => ErrorKind::NotFound,
            LoadError::CudaNotCompiled(_) | LoadError::DeviceUnavailable { .. } => {
                ErrorKind::InvalidRequest
            }
            LoadError::DoesNotFit { .. } => ErrorKind::OutOfMemory,
            LoadError::PeerCopy { .. } => ErrorKind::Internal,
            LoadError::Device(device) => device.fault.kind(),
            _ => ErrorKind::InvalidModel,
        };
        EngineError::new(kind, e.to_string())
    }
}
