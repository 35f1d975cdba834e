//! CUDA pieces behind one API in every build: the real ones with feature `cuda`, a stub with the
//! same names without it, so that the loader has no `#[cfg]` branches of its own and every build
//! compiles all of it.
//!
//! The real module: device memory queries, device errors classified by driver code, the pinned
//! staging ring and host cache ([`PinnedPool`]), and the upload of any checkpoint through them.

#[cfg(feature = "cuda")]
mod real;
#[cfg(feature = "cuda")]
pub use real::*;

#[cfg(not(feature = "cuda"))]
mod stub;
#[cfg(not(feature = "cuda"))]
pub use stub::*;
