//! # model-updater
//!
//! The separate process that brings signed model versions from the central server onto an
//! edge box and swaps them in atomically. This crate will hold the TUF client, the resumable
//! downloader, the install/trial/rollback state machine and the ops-side publishing commands.

#![forbid(unsafe_code)]

/// Version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
