//! # model-updater
//!
//! The separate process that brings signed model versions from the central server onto an
//! edge box and swaps them in atomically. Creating and signing the repository it reads is the
//! central server's job, in the `defect-central` crate, which uses this crate's metadata
//! checks and canary policy types; an edge box carries no signing code.
//!
//! ## Layout
//!
//! Box side, in the order an update flows through them:
//! - [`config`]: the TOML configuration, every problem reported by key.
//! - [`clock`]: when the wall clock may judge metadata expiry (1970, steps back).
//! - [`trust`]: the box's own root history and crash-safe anti-rollback floor.
//! - [`transport`]: how `tough` fetches metadata (HTTP or local files).
//! - [`verify`]: one verified check of the repository, with our safeguards on top of TUF.
//! - [`delegation`]: refusing a repository that delegates to targets roles besides the top one.
//! - [`select`]: which release this box installs.
//! - [`download`]: the resumable, rate-limited, length-bounded bundle downloader.
//! - [`install`]: staging into the model store, pointer switches, revert, garbage collection.
//! - [`canary`]: when a candidate running in shadow is promoted or rejected.
//! - [`trial`]: the verdict on a new bundle from the agent's model health report.
//! - [`state`]: the write-ahead record of trials and bad versions.
//! - [`json_file`]: reading the state, status and floor files, and what a failed read says.
//! - [`status`], [`mqtt`]: the status document, its file and its retained MQTT topic.
//! - [`metrics`]: Prometheus metrics read from the status board (served by
//!   `defect_shared::metrics_listener`).
//! - [`service`]: one update cycle and the daemon loop.

#![forbid(unsafe_code)]

pub mod canary;
pub mod clock;
pub mod config;
pub mod delegation;
pub mod download;
pub mod install;
pub mod json_file;
pub mod metrics;
pub mod mqtt;
pub mod select;
pub mod service;
pub mod state;
pub mod status;
pub mod transport;
pub mod trial;
pub mod trust;
pub mod verify;

/// Version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
