//! The boundary around backend, device and engine code: panics and fatal errors become values.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::backend::{EngineError, ErrorKind};

/// How a guarded call into backend code went wrong.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The worker cannot go on (a panic, or a `DeviceFatal` error): it must be restarted.
    Fatal(String),
    /// An ordinary error; the worker is fine.
    Engine(EngineError),
}

impl Failure {
    /// The failure as an error: a fatal one keeps its reason as a `DeviceFatal` error, so that a
    /// caller guarding the call around it (see [`call`]) finds it fatal again.
    pub(crate) fn into_error(self) -> EngineError {
        match self {
            Failure::Fatal(reason) => EngineError::new(ErrorKind::DeviceFatal, reason),
            Failure::Engine(e) => e,
        }
    }
}

/// Runs `f` (a call into backend code) so that a panic is caught, and sorts its errors into
/// fatal ones and ordinary ones. `what` says what was being done, for the failure's message.
pub(crate) fn call<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, EngineError>,
) -> Result<T, Failure> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.kind == ErrorKind::DeviceFatal => {
            Err(Failure::Fatal(format!("{what}: fatal device error: {e}")))
        }
        Ok(Err(e)) => Err(Failure::Engine(e)),
        Err(payload) => Err(Failure::Fatal(format!(
            "{what} panicked: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

/// Drops `value` (an engine or a device) with panics caught; returns the panic's message.
pub(crate) fn drop_guarded<T>(what: &str, value: T) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(move || drop(value)))
        .map_err(|p| format!("{what} panicked: {}", panic_message(p.as_ref())))
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_and_device_fatal_errors_are_fatal_other_errors_are_not() {
        let panicked = call::<()>("loading", || panic!("boom"));
        assert!(matches!(panicked, Err(Failure::Fatal(m)) if m.contains("boom")));
        let fatal = call::<()>("loading", || {
            Err(EngineError::new(ErrorKind::DeviceFatal, "ECC error"))
        });
        assert!(matches!(fatal, Err(Failure::Fatal(m)) if m.contains("ECC")));
        let ordinary = call::<()>("loading", || {
            Err(EngineError::new(ErrorKind::NotFound, "missing"))
        });
        assert!(matches!(ordinary, Err(Failure::Engine(e)) if e.kind == ErrorKind::NotFound));
        assert_eq!(call("x", || Ok(3)).ok(), Some(3));
    }
}
