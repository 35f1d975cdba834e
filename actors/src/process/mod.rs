//! Workers in their own processes: one engine's crash, abort or device fault costs only that
//! worker's process, never the server or the other workers of its GPU.
//!
//! [`ProcessBackend`] is a [`crate::Backend`] whose devices are child processes
//! (`worker-controller worker`), each with its own device context. The parent's worker thread
//! talks to its child over the child's stdin/stdout in length-prefixed bincode frames
//! ([`frame`], [`protocol`]); the child runs [`serve_worker`] around the real backend. Every
//! other part of the runtime (supervision, restarts with backoff, timing anchors, reports) is
//! the same as with workers on threads: a child that exits, is killed or stops sending its
//! heartbeat turns into a `DeviceFatal` error, which fails the worker and restarts it.
//!
//! A batching engine's process runs its steps on its own and streams their events, so decoding
//! costs no round trip per step (`parent.rs` says why this design).

mod child;
pub mod frame;
mod ledger;
mod link;
mod liveness;
mod parent;
pub mod protocol;

pub use child::serve_worker;
pub use parent::{ProcessBackend, WorkerCommand};
