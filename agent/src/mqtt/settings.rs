//! The broker connection's settings: the `[mqtt]` section of the configuration.
//!
//! This module owns the section's fields and their defaults; the MQTT link and session read
//! it, and `config` only aggregates it into the whole file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which MQTT protocol version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// MQTT 5, with message expiry on decisions.
    #[serde(rename = "v5")]
    V5,
    /// MQTT 3.1.1, for older brokers.
    #[serde(rename = "v3.1.1")]
    V311,
}

/// How decision messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// Compact ASCII JSON with short keys and integers only.
    Json,
    /// Comma-separated integers in a fixed order, for PLCs that cannot parse JSON.
    Csv,
}

/// The MQTT broker connection (`[mqtt]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Broker host name or address.
    #[serde(default = "default_mqtt_host")]
    pub host: String,
    /// Broker port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Protocol version: `v5` or `v3.1.1`.
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Client id; empty means `defect-agent-<hostname>`.
    #[serde(default)]
    pub client_id: String,
    /// Topic prefix in the ISA-95 habit, such as `acme/plant1/assembly/line3/vision`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Decision payload format: `json` or `csv`.
    #[serde(default = "default_payload")]
    pub payload: PayloadFormat,
    /// MQTT 5 message expiry of decisions, in seconds (about the line's transit time).
    #[serde(default = "default_decision_expiry_s")]
    pub decision_expiry_s: u32,
    /// Keep-alive interval in seconds (5 or more); the Last Will fires about 1.5 times this after
    /// a crash.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Heartbeat period in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// First reconnect delay in milliseconds; doubles up to `reconnect_max_ms`, with jitter.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay in milliseconds.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// User name for the broker.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the broker password (kept out of the config file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS settings; absent means plain TCP.
    #[serde(default)]
    pub tls: Option<TlsSection>,
}

/// TLS to the broker (`[mqtt.tls]`), shared with the updater.
pub use defect_shared::mqtt_tls::TlsSection;

fn default_mqtt_host() -> String {
    "127.0.0.1".to_owned()
}

const fn default_mqtt_port() -> u16 {
    1883
}

const fn default_protocol() -> Protocol {
    Protocol::V5
}

fn default_topic_prefix() -> String {
    "factory/vision".to_owned()
}

const fn default_payload() -> PayloadFormat {
    PayloadFormat::Json
}

const fn default_decision_expiry_s() -> u32 {
    5
}

const fn default_keep_alive_s() -> u64 {
    5
}

const fn default_heartbeat_ms() -> u64 {
    1000
}

const fn default_reconnect_min_ms() -> u64 {
    200
}

const fn default_reconnect_max_ms() -> u64 {
    10_000
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            host: default_mqtt_host(),
            port: default_mqtt_port(),
            protocol: default_protocol(),
            client_id: String::new(),
            topic_prefix: default_topic_prefix(),
            payload: default_payload(),
            decision_expiry_s: default_decision_expiry_s(),
            keep_alive_s: default_keep_alive_s(),
            heartbeat_ms: default_heartbeat_ms(),
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            username: None,
            password_file: None,
            tls: None,
        }
    }
}
