//! The updater's MQTT link: the retained status topic and update announcements.
//!
//! This module owns one MQTT 3.1.1 connection (clean session, reconnect with backoff and
//! jitter). It publishes the [`Status`] retained on `<prefix>/updater` at every change and
//! again after every reconnect, leaves `{"state":"stopped"}` as its Last Will, and turns any
//! message on the announcement topic into a "check now" signal. MQTT is optional: without it
//! the updater polls on its interval and writes its status file only.

use std::time::Duration;

use defect_shared::error_chain::Chain;
use rand::Rng;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{Notify, watch};

use crate::config::MqttSection;
use crate::status::{Phase, Status};

/// Payload of the Last Will and of a clean stop.
pub fn stopped_payload(last: &Status) -> Vec<u8> {
    let mut stopped = last.clone();
    stopped.state = Phase::Stopped;
    serde_json::to_vec(&stopped).unwrap_or_else(|_| b"{\"v\":1,\"state\":\"stopped\"}".to_vec())
}

/// A running link; dropping it stops nothing, call [`Link::close`].
#[derive(Debug)]
pub struct Link {
    client: AsyncClient,
    topic: String,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Connects (in the background) and starts publishing `status` changes; `announce` is
    /// notified on every announcement.
    pub fn start(
        settings: &MqttSection,
        mut status: watch::Receiver<Status>,
        announce: std::sync::Arc<Notify>,
        approval: std::path::PathBuf,
    ) -> Result<Link, defect_shared::mqtt_tls::TlsFileError> {
        let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
        options.set_transport(defect_shared::mqtt_tls::transport(settings.tls.as_ref())?);
        options.set_keep_alive(Duration::from_secs(settings.keep_alive_s.max(5)));
        options.set_clean_session(true);
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            options.set_credentials(user, password);
        }
        let topic = settings.status_topic();
        let will = stopped_payload(&Status::default());
        options.set_last_will(LastWill::new(&topic, will, QoS::AtLeastOnce, true));
        let (client, mut events) = AsyncClient::new(options, 64);
        let announce_topic = settings.announce_topic();
        let approve_topic = settings.approve_topic();
        let publisher = client.clone();
        let status_topic = topic.clone();
        let task = tokio::spawn(async move {
            let mut failures: u32 = 0;
            loop {
                tokio::select! {
                    event = events.poll() => match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            failures = 0;
                            tracing::info!("MQTT connected");
                            let _ = publisher.subscribe(&announce_topic, QoS::AtLeastOnce).await;
                            let _ = publisher.subscribe(&approve_topic, QoS::AtLeastOnce).await;
                            let body = serde_json::to_vec(&*status.borrow()).unwrap_or_default();
                            let _ = publisher.publish(&status_topic, QoS::AtLeastOnce, true, body).await;
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) if p.topic == approve_topic => {
                            record_approval(&approval, &p.payload);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) if p.topic == announce_topic => {
                            tracing::info!(topic = %p.topic, "update announced");
                            announce.notify_one();
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(error) => {
                            failures = failures.saturating_add(1);
                            let cap = Duration::from_millis(500u64 << failures.min(6));
                            let delay = rand::rng().random_range(Duration::from_millis(100)..=cap);
                            tracing::debug!(error = %Chain(&error), ?delay, "MQTT connection failed; retrying");
                            tokio::time::sleep(delay).await;
                        }
                    },
                    changed = status.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let body = serde_json::to_vec(&*status.borrow_and_update()).unwrap_or_default();
                        let _ = publisher.try_publish(&status_topic, QoS::AtLeastOnce, true, body);
                    }
                }
            }
        });
        Ok(Link {
            client,
            topic,
            task,
        })
    }

    /// Publishes the stopped status retained and disconnects, waiting briefly for the broker.
    pub async fn close(self, last: &Status) {
        let _ = self
            .client
            .publish(&self.topic, QoS::AtLeastOnce, true, stopped_payload(last))
            .await;
        let _ = self.client.disconnect().await;
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}
/// The approval an approve-topic payload carries: a SHA-256 or a `model_version`, that is 1 to
/// 64 ASCII letters and digits once trimmed; `None` for anything else.
pub fn approval_text(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    let plain =
        !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric());
    plain.then(|| text.to_owned())
}

/// Records an approval from the approve topic: the canary candidate's SHA-256 or
/// `model_version`, as `model-updater approve` does; anything else is logged and ignored.
fn record_approval(path: &std::path::Path, payload: &[u8]) {
    let Some(text) = approval_text(payload) else {
        tracing::warn!(payload = %String::from_utf8_lossy(payload), "approval ignored: expected a SHA-256 or a model_version");
        return;
    };
    match defect_shared::atomic::write(path, text.as_bytes()) {
        Ok(()) => tracing::info!(approved = %text, "canary approval received"),
        Err(error) => tracing::error!(error = %Chain(&error), "cannot record the canary approval"),
    }
}
