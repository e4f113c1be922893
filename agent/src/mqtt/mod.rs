//! MQTT output: the topic contract, the connection, and the publishing session.
//!
//! - `payload`: topic names and message bytes (the wire contract PLCs rely on).
//! - `link`: one rumqttc connection (MQTT 5 or 3.1.1) with reconnect backoff.
//! - `session`: what is published when: birth/Will status, model, heartbeat, live
//!   decisions and the store-and-forward `results` topic.
//! - `reports`: the session as the sink of outcomes and the reporter of line monitoring.
//! - `settings`: the `[mqtt]` section of the configuration.
//! - `metrics`: the session's publish and end-to-end latency metrics.

pub mod link;
pub mod metrics;
pub mod payload;
mod reports;
pub mod session;
pub mod settings;

pub use session::{Publisher, start};
