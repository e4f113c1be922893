//! # defect-agent
//!
//! The edge inference daemon: camera frames in, a pass/reject decision for every part out.
//!
//! ## Layout
//!
//! - [`config`]: the configuration file, its defaults and its validation.
//! - [`daemon`]: `defect-agent run`: start-up order, systemd readiness and watchdog, drain on
//!   SIGTERM.
//! - [`sources`]: where frames come from (`FrameSource`): hot folders and HTTP upload.
//! - [`pipeline`]: bounded queue, deadlines, inference worker threads and the hooks they call
//!   on decided frames, and the output stage (log, then the outcome sinks, then complete).
//! - [`serving`]: the model in service, validated before it serves, swapped between frames.
//! - [`mqtt`]: the topic contract, the broker connection and what is published when.
//! - [`result_log`]: the local result log (sled) every outcome is written to first.
//! - [`health`]: the `ready` flag and the counters behind it.
//! - [`metrics`]: the Prometheus listener (`/metrics`, `/healthz`, `/readyz`); each component
//!   registers its own metrics.
//! - [`monitor`]: line monitoring: alarms (no-decision and invalid-input rates, reject rate
//!   band, camera quiet, frames held in quarantine) and data drift against the bundle's baseline.
//! - [`outcome`]: what was decided about one part (a decision or none, and why).
//! - [`embedded`]: the default model bundle compiled into the binary, served when no model
//!   store is configured.
//! - `fault` (feature `fault-injection`, for tests only): frame markers that make a worker
//!   panic or abort, to test panic isolation.
//! - [`canary`]: a candidate bundle run in shadow beside the model in service (a frame hook),
//!   and the evidence it earns (agreement, flips by direction, latency, skipped runs).
//! - [`capture`]: frames kept for retraining: sampling, the bounded store, the resumable
//!   upload to the central server, the export for training scripts.
//! - [`classify`]: the one-shot `defect-agent classify FILE...` command.
//! - [`demo`]: `defect-agent demo`: the whole path on a fresh machine, with an embedded broker.
//!
//! Model packaging, loading and inference live in the `defect-models` crate. The central
//! receiver of captured frames lives in the `defect-central` crate, so an edge box does not
//! carry it.

#![forbid(unsafe_code)]

pub(crate) mod canary;
pub mod capture;
pub mod classify;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod embedded;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod health;
pub(crate) mod metrics;
pub mod monitor;
pub(crate) mod mqtt;
pub mod outcome;
pub(crate) mod pipeline;
pub mod result_log;
pub mod serving;
pub(crate) mod sources;
