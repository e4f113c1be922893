//! The harnesses, one module per kind of input. Each exposes `run(&[u8])`.

pub mod agent_config;
pub mod approval;
pub mod bundle;
pub mod capture_receiver;
pub mod frame_decode;
pub mod line_state;
pub mod manifest;
pub mod trust_state;
pub mod updater_config;
