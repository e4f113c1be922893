//! # defect-central
//!
//! The tools that run on the central server of a fleet of edge boxes, never on a box: the
//! receiver of the frames boxes capture for retraining, and the publisher that creates and
//! signs the model update repository the boxes' `model-updater` reads. Keeping them out of
//! `defect-agent` and `model-updater` means an edge box carries no signing code and no
//! receiver.
//!
//! ## Layout
//!
//! - [`receiver`]: `defect-central capture-server`, the server side of the resumable capture
//!   upload (the client is `defect-agent`'s `capture::upload`).
//! - [`publish`]: `defect-central repo …`, creating, signing and maintaining the TUF
//!   repository. The metadata types and the canary policy it signs come from the
//!   `model-updater` library, the box side that verifies them.

#![forbid(unsafe_code)]

pub mod publish;
pub mod receiver;

/// Version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
