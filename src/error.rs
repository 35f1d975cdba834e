//! Typed errors for loading checkpoints and running the engine, and their mapping to the runtime's kinds.

use std::path::PathBuf;

use wc_actors::{EngineError, ErrorKind};

/// Everything that can go wrong between a model path and a running engine.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model directory `{0}` does not exist")]
    ModelNotFound(PathBuf),
    /// `looked_in` (absolute cache paths) is for logs: the message never shows it, so that a
    /// client learns nothing about the server's home directory.
    #[error("`{id}` is not a directory and is not in the local Hugging Face cache")]
    HubModelNotCached { id: String, looked_in: Vec<PathBuf> },
    #[error("`{0}` is missing from the checkpoint")]
    MissingFile(PathBuf),
    #[error("`{path}` is {kind}, not a regular file")]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error("`{path}` is {bytes} bytes, more than the {limit} allowed for it")]
    FileTooLarge {
        path: PathBuf,
        bytes: u64,
        limit: u64,
    },
    #[error("`{path}` resolves outside the checkpoint directory")]
    OutsideCheckpoint { path: PathBuf },
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config `{path}`: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("unsupported model_type `{0}`: supported are `opt`, `llama`, `mistral`, `qwen2` and `qwen3`")]
    UnknownModelType(String),
    #[error("this loader runs `{expected}` checkpoints only, and this one is `{found}`")]
    WrongFamily {
        expected: &'static str,
        found: String,
    },
    #[error("corrupt or truncated safetensors file `{path}`: {reason}")]
    CorruptSafetensors { path: PathBuf, reason: String },
    #[error("tensor `{0}` is missing from the checkpoint")]
    MissingTensor(String),
    #[error(
        "the shards disagree on dtype: `{first}` holds {first_dtype}, `{other}` holds \
         {other_dtype}"
    )]
    ShardsDisagree {
        first: PathBuf,
        first_dtype: String,
        other: PathBuf,
        other_dtype: String,
    },
    #[error("tensor `{0}` appears more than once in the checkpoint")]
    DuplicateTensor(String),
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedTensorDtype { name: String, dtype: String },
    #[error("invalid tokenizer `{path}`: {reason}")]
    InvalidTokenizer { path: PathBuf, reason: String },
    #[error("this build has no CUDA support: rebuild with `--features cuda` to use `{0}`")]
    CudaNotCompiled(String),
    #[error("cannot open device `{device}`: {reason}")]
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

impl From<&candle_core::Error> for DeviceError {
    fn from(e: &candle_core::Error) -> Self {
        Self {
            message: e.to_string(),
            fault: crate::cuda::fault_of(e),
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

impl From<candle_core::Error> for LoadError {
    fn from(e: candle_core::Error) -> Self {
        LoadError::Device(DeviceError::from(&e))
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
            LoadError::Device(device) => device.fault.kind(),
            _ => ErrorKind::InvalidModel,
        };
        EngineError::new(kind, e.to_string())
    }
}

/// Failures while generating.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("prompt has {len} tokens but the model's position table holds {max}")]
    PromptTooLong { len: usize, max: usize },
    #[error(
        "this model's context holds {max} tokens, but {prompt} in the prompt and {asked} to \
         generate were asked for: shorten the prompt or lower max_tokens"
    )]
    ContextExceeded {
        prompt: usize,
        asked: usize,
        max: usize,
    },
    #[error(
        "the prompt has more than {limit} characters, more than the model's {max} positions can \
         hold: shorten it"
    )]
    PromptFarTooLong { limit: usize, max: usize },
    #[error("empty prompt: give at least one token")]
    EmptyPrompt,
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("this model has no tokenizer.json: pass token ids instead of text")]
    NoTokenizer,
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    #[error("invalid sampling parameter: {0}")]
    InvalidSampling(String),
    #[error(
        "the request needs {needed} KV-cache tokens (prompt plus max_tokens), more than this \
         engine's budget of {budget} (kv_cache_tokens): shorten the prompt or lower max_tokens"
    )]
    KvBudgetExceeded { needed: usize, budget: usize },
    #[error(transparent)]
    Chat(#[from] crate::models::chat_template::ChatTemplateError),
    #[error("device error: {0}")]
    Device(#[from] candle_core::Error),
}

impl From<GenerateError> for EngineError {
    fn from(e: GenerateError) -> Self {
        let e = match e {
            GenerateError::Chat(chat) => return chat.into(),
            other => other,
        };
        let kind = match &e {
            GenerateError::Device(inner) => crate::cuda::fault_of(inner).kind(),
            GenerateError::Tokenizer(_) => ErrorKind::Internal,
            _ => ErrorKind::InvalidRequest,
        };
        EngineError::new(kind, e.to_string())
    }
}
