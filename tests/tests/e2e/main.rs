//! The end-to-end tests: the real `defect-agent`, `model-updater`, `defect-central` and
//! `model-bundle` binaries against a real Mosquitto broker, real HTTP servers, real model files and real processes
//! killed at random instants.
//!
//! One test binary with a module per area, so the suite links tract, tokio, rustls and sled
//! once. The binaries under test are built by the same `cargo test --workspace` (see
//! `defect_e2e::binary`). Run one area with `cargo test --workspace --test e2e -- updater_`.

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
mod updater_python_tuf;
