//! The end-to-end tests: the real `defect-agent`, `model-updater`, `defect-central` and
//! `model-bundle` binaries against a real Mosquitto broker, real HTTP servers, real model files and real processes
//! killed at random instants.
//!
//! One test binary with a module per area, so the suite links tract, tokio, rustls and sled
//! once. Build the binaries under test first (`cargo build --workspace --bins`; see
//! `defect_e2e::binary`), then run one area with `cargo test -p defect-e2e --test e2e --
//! updater_`. Tests that need root are ignored unless asked for: `-- --ignored needs_root`.

mod admission;
mod agent_crash;
mod agent_daemon;
mod agent_health_report;
mod agent_models;
mod agent_tls;
mod bundle_cli;
mod canary_shadow;
mod classify_cli;
mod data_capture;
mod demo;
mod deploy_units;
mod deprecated_commands;
mod line_monitor;
mod metrics;
mod poison_frames;
mod python_tuf_publisher;
mod result_log_crash;
mod updater_attacks;
mod updater_canary;
mod updater_crash;
mod updater_daemon;
mod updater_disk;
mod updater_download;
mod updater_hot_swap;
mod updater_install;
