//! # defect-shared
//!
//! What both daemons (`defect-agent` and `model-updater`) and the `model-bundle` tool would
//! otherwise each write for themselves. Each module has one job:
//!
//! - [`atomic`]: crash-safe replacement of small files (temporary file, fsync, rename, fsync of
//!   the folder).
//! - [`config_report`]: a configuration's problems, each by key, and the exit code 78.
//! - [`error_chain`]: an error and its causes on one line, each cause once.
//! - [`forward`]: the deprecated command names (`defect-agent capture-server`,
//!   `model-updater repo`) running `defect-central` in their place, for one release.
//! - [`logging`] (feature `logging`): the `tracing` set-up of the binaries.
//! - [`output`]: command output that ends quietly when its reader goes away
//!   (`model-updater status | head`), and the `outln!` macro.
//! - [`path_check`]: whether the files and folders a configuration names are there and usable
//!   by the user running `check-config`.
//! - [`exposition`] (feature `metrics`): what `GET /metrics` answers, OpenMetrics or the
//!   classic Prometheus text by content negotiation.
//! - [`metrics_listener`] (feature `metrics`): the `[metrics]` listener, `/metrics`, `/healthz`
//!   and `/readyz`.
//! - [`mqtt_tls`] (feature `mqtt-tls`): the `[mqtt.tls]` section and the broker transport
//!   built from it.
//!
//! It owns no metric, no configuration key and no error type of the daemons: those stay with
//! the daemon they describe. `defect-models` uses it without features (only [`atomic`]).

#![forbid(unsafe_code)]

pub mod atomic;
pub mod config_report;
pub mod error_chain;
#[cfg(feature = "metrics")]
pub mod exposition;
pub mod forward;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "metrics")]
pub mod metrics_listener;
#[cfg(feature = "mqtt-tls")]
pub mod mqtt_tls;
pub mod output;
pub mod path_check;
