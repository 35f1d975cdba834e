//! Typed failures of the runtime's requests, each with the HTTP status and type name to report.

use serde::Serialize;

use crate::backend::{EngineError, ErrorKind};
use crate::reports::EngineRef;

/// Why an `Attach` failed.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AttachError {
    /// Another engine (or an attach in progress) already has this name.
    #[error("an engine named `{name}` already exists")]
    NameInUse { name: String },
    /// The engine name breaks the naming rule ([`crate::reports::check_engine_name`]).
    #[error("invalid engine name: {reason}")]
    InvalidName { reason: String },
    /// The model is larger than what any matching worker has free when idle.
    #[error(
        "the model needs {needed_bytes} bytes of device memory but the largest matching worker \
         has only {free_bytes} bytes free"
    )]
    DoesNotFit { needed_bytes: u64, free_bytes: u64 },
    /// Every matching worker stayed busy for the whole attach timeout.
    #[error("no free worker became available within {waited_ms} ms")]
    NoFreeWorker { waited_ms: u64 },
    /// Every worker the attach may use failed for good (out of restarts): none will come free.
    #[error(
        "every worker this attach may use has failed for good ({failed} out of restarts): \
         nothing can take it until the server is restarted (see GET /workers)"
    )]
    NoWorkerAlive { failed: usize },
    /// Too many attaches are already waiting for a busy worker; try again later.
    #[error(
        "{waiting} attaches are already waiting for a free worker (the limit); try again later"
    )]
    TooManyWaiting { waiting: usize },
    /// The worker asked for does not exist.
    #[error("there is no worker {worker}")]
    UnknownWorker { worker: usize },
    /// No worker runs on the device asked for (or the worker asked for is on another device).
    #[error("no worker runs on device `{device}`")]
    NoWorkerOnDevice { device: String },
    /// The backend could not load the model (missing, corrupt, out of memory...); the worker is
    /// idle again.
    #[error("loading the model failed: {0}")]
    Load(EngineError),
    /// The worker crashed while loading; it is being restarted.
    #[error("worker {worker} failed while attaching: {reason}")]
    WorkerFailed { worker: usize, reason: String },
    /// The runtime is shutting down.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// The runtime is not running (its actor system stopped).
    #[error("the runtime is unavailable: {reason}")]
    Unavailable { reason: String },
}

impl AttachError {
    /// The HTTP status an API should answer with.
    pub fn status_code(&self) -> u16 {
        match self {
            AttachError::NameInUse { .. } => 409,
            AttachError::InvalidName { .. } => 400,
            AttachError::DoesNotFit { .. } => 507,
            AttachError::NoFreeWorker { .. } | AttachError::TooManyWaiting { .. } => 503,
            AttachError::NoWorkerAlive { .. } => 503,
            AttachError::UnknownWorker { .. } => 404,
            AttachError::NoWorkerOnDevice { .. } => 400,
            AttachError::Load(e) => engine_status(e),
            // The worker is being restarted: the attach may be tried again.
            AttachError::WorkerFailed { .. } => 503,
            AttachError::ShuttingDown | AttachError::Unavailable { .. } => 503,
        }
    }

    /// A stable snake_case name for the failure, for API bodies and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            AttachError::NameInUse { .. } => "name_in_use",
            AttachError::InvalidName { .. } => "invalid_name",
            AttachError::DoesNotFit { .. } => "does_not_fit",
            AttachError::NoFreeWorker { .. } => "no_free_worker",
            AttachError::NoWorkerAlive { .. } => "no_worker_alive",
            AttachError::TooManyWaiting { .. } => "too_many_waiting",
            AttachError::UnknownWorker { .. } => "unknown_worker",
            AttachError::NoWorkerOnDevice { .. } => "no_worker_on_device",
            AttachError::Load(e) => engine_type(e),
            AttachError::WorkerFailed { .. } => "worker_failed",
            AttachError::ShuttingDown => "shutting_down",
            AttachError::Unavailable { .. } => "unavailable",
        }
    }
}

/// Why a `Detach` failed.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DetachError {
    /// No engine has this id or name.
    #[error("no engine {engine}")]
    EngineNotFound { engine: EngineRef },
    /// The engine was lost when its worker failed; there is nothing left to detach.
    #[error("engine {engine} was lost: {reason}")]
    EngineLost { engine: EngineRef, reason: String },
    /// The worker crashed while detaching; the engine is gone and the worker is being restarted.
    #[error("worker {worker} failed while detaching: {reason}")]
    WorkerFailed { worker: usize, reason: String },
    /// The runtime is shutting down.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// The runtime is not running (its actor system stopped).
    #[error("the runtime is unavailable: {reason}")]
    Unavailable { reason: String },
}

impl DetachError {
    /// The HTTP status an API should answer with.
    pub fn status_code(&self) -> u16 {
        match self {
            DetachError::EngineNotFound { .. } => 404,
            DetachError::EngineLost { .. } => 410,
            DetachError::WorkerFailed { .. } => 500,
            DetachError::ShuttingDown | DetachError::Unavailable { .. } => 503,
        }
    }

    /// A stable snake_case name for the failure, for API bodies and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            DetachError::EngineNotFound { .. } => "engine_not_found",
            DetachError::EngineLost { .. } => "engine_lost",
            DetachError::WorkerFailed { .. } => "worker_failed",
            DetachError::ShuttingDown => "shutting_down",
            DetachError::Unavailable { .. } => "unavailable",
        }
    }
}

/// Why a `Generate` failed.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GenerateError {
    /// No engine has this id or name.
    #[error("no engine {engine}")]
    EngineNotFound { engine: EngineRef },
    /// The engine was lost when its worker failed earlier.
    #[error("engine {engine} was lost: {reason}")]
    EngineLost { engine: EngineRef, reason: String },
    /// The engine's worker failed during or before this request; the worker is being restarted.
    #[error("worker {worker} was lost while serving this request: {reason}")]
    WorkerLost { worker: usize, reason: String },
    /// The engine's waiting queue is full; try again later.
    #[error("engine {engine} already has {waiting} requests waiting (the limit); try again later")]
    QueueFull { engine: EngineRef, waiting: usize },
    /// The caller went away before the engine got to this request; nothing was generated.
    #[error("the request was cancelled by its caller before it started")]
    Cancelled,
    /// The engine refused or failed this request; the engine is still usable.
    #[error("generation failed: {0}")]
    Engine(EngineError),
    /// The runtime is shutting down.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// The runtime is not running (its actor system stopped).
    #[error("the runtime is unavailable: {reason}")]
    Unavailable { reason: String },
}

impl GenerateError {
    /// The HTTP status an API should answer with.
    pub fn status_code(&self) -> u16 {
        match self {
            GenerateError::EngineNotFound { .. } => 404,
            GenerateError::EngineLost { .. } => 410,
            // The worker is being restarted: another try soon may well succeed.
            GenerateError::WorkerLost { .. } => 503,
            GenerateError::Engine(e) => engine_status(e),
            GenerateError::ShuttingDown
            | GenerateError::Unavailable { .. }
            | GenerateError::QueueFull { .. } => 503,
            // nginx's "client closed request": nobody is left to read it.
            GenerateError::Cancelled => 499,
        }
    }

    /// A stable snake_case name for the failure, for API bodies and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            GenerateError::EngineNotFound { .. } => "engine_not_found",
            GenerateError::EngineLost { .. } => "engine_lost",
            GenerateError::WorkerLost { .. } => "worker_lost",
            GenerateError::QueueFull { .. } => "queue_full",
            GenerateError::Cancelled => "cancelled",
            GenerateError::Engine(e) => engine_type(e),
            GenerateError::ShuttingDown => "shutting_down",
            GenerateError::Unavailable { .. } => "unavailable",
        }
    }
}

/// The HTTP status for a backend failure of a given kind.
pub fn engine_status(e: &EngineError) -> u16 {
    match e.kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::NotFound => 404,
        ErrorKind::InvalidModel => 422,
        ErrorKind::OutOfMemory => 507,
        ErrorKind::DeviceFatal | ErrorKind::Internal => 500,
    }
}

/// The type name for a backend failure of a given kind.
pub fn engine_type(e: &EngineError) -> &'static str {
    match e.kind {
        ErrorKind::InvalidRequest => "invalid_request",
        ErrorKind::NotFound => "model_not_found",
        ErrorKind::InvalidModel => "invalid_model",
        ErrorKind::OutOfMemory => "out_of_memory",
        ErrorKind::DeviceFatal => "device_fatal",
        ErrorKind::Internal => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn does_not_fit_names_both_numbers_and_maps_to_507() {
        let e = AttachError::DoesNotFit {
            needed_bytes: 1234,
            free_bytes: 99,
        };
        let text = e.to_string();
        assert!(text.contains("1234") && text.contains("99"), "{text}");
        assert_eq!(e.status_code(), 507);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "does_not_fit");
        assert_eq!(json["needed_bytes"], 1234);
    }

    #[test]
    fn load_errors_take_their_status_from_the_engine_kind() {
        let e = AttachError::Load(EngineError::new(ErrorKind::NotFound, "no such model"));
        assert_eq!(e.status_code(), 404);
        assert_eq!(e.error_type(), "model_not_found");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "load");
        assert_eq!(json["kind"], "not_found");
    }
}
