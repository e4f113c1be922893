//! One connection to the broker, over MQTT 5 or 3.1.1, with reconnects.
//!
//! This module owns the rumqttc client and its event loop: it hides which protocol version is
//! spoken, polls the event loop on a task of its own (the loop must be polled continuously or
//! nothing is sent), reconnects with exponential backoff and jitter (rumqttc retries at once
//! by itself), and reports what matters to the session as [`LinkEvent`]s. Every connection is
//! a clean session: whatever was not sent when the link dropped is discarded, never replayed
//! late; the session above decides what to send again.

use std::time::Duration;

use rand::Rng;
use rumqttc::v5::mqttbytes::v5 as v5b;
use tokio::sync::mpsc;

use crate::mqtt::settings::{MqttSection, Protocol};

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Message {
    /// Full topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// QoS 1 when true, QoS 0 otherwise.
    pub at_least_once: bool,
    /// Retained on the broker.
    pub retain: bool,
    /// MQTT 5 message expiry in seconds; ignored over 3.1.1.
    pub expiry_s: Option<u32>,
}

/// What the link reports to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The broker accepted the connection (a new clean session).
    Connected,
    /// The connection failed or dropped; the link reconnects by itself.
    Disconnected(String),
    /// A publish left for the broker with this packet id (0 for QoS 0).
    Sent(u16),
    /// The broker acknowledged the QoS 1 publish with this packet id.
    Acked(u16),
    /// A message arrived on a subscribed topic.
    Received {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// The link was closed on request and stops.
    Closed,
}

/// Why the link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A TLS or credential file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file named in the configuration.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The request could not be queued (the link is closed or its queue is full).
    #[error("publish to {topic} not queued: {reason}")]
    NotQueued {
        /// The topic.
        topic: String,
        /// rumqttc's reason.
        reason: String,
    },
}

/// Connection settings derived from the configuration.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// The `[mqtt]` section.
    pub mqtt: MqttSection,
    /// Client id to connect with.
    pub client_id: String,
    /// Last Will: topic and payload, published retained by the broker on an unclean drop.
    pub will: Option<(String, Vec<u8>)>,
}

enum Client {
    V5(rumqttc::v5::AsyncClient),
    V4(rumqttc::AsyncClient),
}

/// Handle to publish on the link; the event loop runs on its own task.
pub struct Link {
    client: Client,
}

/// How long a clean disconnect waits for the broker to close the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Requests that may wait in rumqttc's channel; the session never queues more than this.
const REQUEST_CAPACITY: usize = 256;

impl Link {
    /// Starts the link: returns the handle and the stream of its events. Must be called
    /// within a tokio runtime.
    pub fn start(
        settings: &LinkSettings,
    ) -> Result<(Link, mpsc::UnboundedReceiver<LinkEvent>), LinkError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let m = &settings.mqtt;
        let backoff = Backoff::new(
            Duration::from_millis(m.reconnect_min_ms),
            Duration::from_millis(m.reconnect_max_ms),
        );
        let credentials = credentials(m)?;
        let transport = transport(m)?;
        let client = match m.protocol {
            Protocol::V5 => {
                let mut options =
                    rumqttc::v5::MqttOptions::new(&settings.client_id, &m.host, m.port);
                options
                    .set_keep_alive(Duration::from_secs(m.keep_alive_s))
                    .set_clean_start(true)
                    .set_transport(transport);
                if let Some((user, password)) = credentials {
                    options.set_credentials(user, password);
                }
                if let Some((topic, payload)) = &settings.will {
                    options.set_last_will(v5b::LastWill::new(
                        topic,
                        payload.clone(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        true,
                        None,
                    ));
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, REQUEST_CAPACITY);
                tokio::spawn(drive(eventloop, tx, backoff));
                Client::V5(client)
            }
            Protocol::V311 => {
                let mut options = rumqttc::MqttOptions::new(&settings.client_id, &m.host, m.port);
                options
                    .set_keep_alive(Duration::from_secs(m.keep_alive_s))
                    .set_clean_session(true)
                    .set_transport(transport);
                if let Some((user, password)) = credentials {
                    options.set_credentials(user, password);
                }
                if let Some((topic, payload)) = &settings.will {
                    options.set_last_will(rumqttc::LastWill::new(
                        topic,
                        payload.clone(),
                        rumqttc::QoS::AtLeastOnce,
                        true,
                    ));
                }
                let (client, eventloop) = rumqttc::AsyncClient::new(options, REQUEST_CAPACITY);
                tokio::spawn(drive(eventloop, tx, backoff));
                Client::V4(client)
            }
        };
        Ok((Link { client }, rx))
    }

    /// Queues a publish without waiting; fails when the request channel is full or closed.
    pub fn try_publish(&self, message: &Message) -> Result<(), LinkError> {
        let not_queued = |reason: String| LinkError::NotQueued {
            topic: message.topic.clone(),
            reason,
        };
        match &self.client {
            Client::V5(client) => {
                let qos = if message.at_least_once {
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                } else {
                    rumqttc::v5::mqttbytes::QoS::AtMostOnce
                };
                let properties = v5b::PublishProperties {
                    message_expiry_interval: message.expiry_s,
                    ..Default::default()
                };
                client
                    .try_publish_with_properties(
                        message.topic.clone(),
                        qos,
                        message.retain,
                        message.payload.clone(),
                        properties,
                    )
                    .map_err(|e| not_queued(e.to_string()))
            }
            Client::V4(client) => {
                let qos = if message.at_least_once {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                client
                    .try_publish(
                        message.topic.clone(),
                        qos,
                        message.retain,
                        message.payload.clone(),
                    )
                    .map_err(|e| not_queued(e.to_string()))
            }
        }
    }

    /// Queues a QoS 1 subscription without waiting (the event loop must keep running, so it
    /// is never awaited from it).
    pub fn try_subscribe(&self, filter: &str) -> Result<(), LinkError> {
        let result = match &self.client {
            Client::V5(client) => client
                .try_subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V4(client) => client
                .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        };
        result.map_err(|reason| LinkError::NotQueued {
            topic: filter.to_owned(),
            reason,
        })
    }

    /// Asks for a clean MQTT disconnect (the broker then does not publish the Last Will).
    pub fn try_disconnect(&self) {
        let result = match &self.client {
            Client::V5(client) => client.try_disconnect().map_err(|e| e.to_string()),
            Client::V4(client) => client.try_disconnect().map_err(|e| e.to_string()),
        };
        if let Err(error) = result {
            tracing::debug!(%error, "disconnect request not queued");
        }
    }
}

fn credentials(m: &MqttSection) -> Result<Option<(String, String)>, LinkError> {
    let Some(user) = &m.username else {
        return Ok(None);
    };
    let password = match &m.password_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|source| LinkError::ReadFile {
                path: path.clone(),
                source,
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        None => String::new(),
    };
    Ok(Some((user.clone(), password)))
}

fn transport(m: &MqttSection) -> Result<rumqttc::Transport, LinkError> {
    defect_shared::mqtt_tls::transport(m.tls.as_ref()).map_err(|e| LinkError::ReadFile {
        path: e.path,
        source: e.source,
    })
}

/// Exponential reconnect delay with full jitter in its upper half.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay to wait now; doubles the next one up to the maximum.
    fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = base / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis().max(1));
        half + Duration::from_millis(u64::try_from(jitter_ms).unwrap_or(0))
    }
}

/// What one poll of either protocol's event loop meant to the link.
enum Polled {
    ConnAck,
    Sent(u16),
    Acked(u16),
    Message(String, Vec<u8>),
    Disconnected,
    Other,
}

/// The two rumqttc event loops seen alike.
trait EventSource: Send + 'static {
    fn next(&mut self) -> impl std::future::Future<Output = Result<Polled, String>> + Send;
    fn clean(&mut self);
}

impl EventSource for rumqttc::v5::EventLoop {
    async fn next(&mut self) -> Result<Polled, String> {
        use rumqttc::Outgoing;
        use rumqttc::v5::Event;
        Ok(match self.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(v5b::Packet::ConnAck(_)) => Polled::ConnAck,
            Event::Incoming(v5b::Packet::PubAck(ack)) => Polled::Acked(ack.pkid),
            Event::Incoming(v5b::Packet::Publish(publish)) => Polled::Message(
                String::from_utf8_lossy(&publish.topic).into_owned(),
                publish.payload.to_vec(),
            ),
            Event::Outgoing(Outgoing::Publish(pkid)) => Polled::Sent(pkid),
            Event::Outgoing(Outgoing::Disconnect) => Polled::Disconnected,
            _ => Polled::Other,
        })
    }

    fn clean(&mut self) {
        rumqttc::v5::EventLoop::clean(self);
    }
}

impl EventSource for rumqttc::EventLoop {
    async fn next(&mut self) -> Result<Polled, String> {
        use rumqttc::{Event, Outgoing, Packet};
        Ok(match self.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::ConnAck(_)) => Polled::ConnAck,
            Event::Incoming(Packet::PubAck(ack)) => Polled::Acked(ack.pkid),
            Event::Incoming(Packet::Publish(publish)) => {
                Polled::Message(publish.topic, publish.payload.to_vec())
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => Polled::Sent(pkid),
            Event::Outgoing(Outgoing::Disconnect) => Polled::Disconnected,
            _ => Polled::Other,
        })
    }

    fn clean(&mut self) {
        rumqttc::EventLoop::clean(self);
    }
}

/// Polls the event loop for as long as the session listens, reconnecting with backoff.
async fn drive(
    mut eventloop: impl EventSource,
    tx: mpsc::UnboundedSender<LinkEvent>,
    mut backoff: Backoff,
) {
    // Set once DISCONNECT is written: the broker now reads what came before it and closes the
    // connection. Closing our end first, with its acknowledgements unread, would reset the
    // connection and could lose the last publishes.
    let mut closing_since: Option<tokio::time::Instant> = None;
    loop {
        let polled = match closing_since {
            Some(since) => {
                match tokio::time::timeout_at(since + CLOSE_GRACE, eventloop.next()).await {
                    Ok(Ok(polled)) => Ok(polled),
                    Ok(Err(_)) | Err(_) => {
                        let _ = tx.send(LinkEvent::Closed);
                        return;
                    }
                }
            }
            None => eventloop.next().await,
        };
        let event = match polled {
            Ok(Polled::ConnAck) => {
                backoff.reset();
                LinkEvent::Connected
            }
            Ok(Polled::Acked(pkid)) => LinkEvent::Acked(pkid),
            Ok(Polled::Sent(pkid)) => LinkEvent::Sent(pkid),
            Ok(Polled::Message(topic, payload)) => LinkEvent::Received { topic, payload },
            Ok(Polled::Disconnected) => {
                closing_since = Some(tokio::time::Instant::now());
                continue;
            }
            Ok(Polled::Other) => continue,
            Err(error) => {
                if tx.send(LinkEvent::Disconnected(error)).is_err() {
                    return;
                }
                tokio::time::sleep(backoff.delay()).await;
                // Requests queued while disconnected are dropped with the clean session.
                eventloop.clean();
                continue;
            }
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<Duration> = (0..6).map(|_| b.delay()).collect();
        for (delay, base) in delays.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            assert!(
                *delay >= Duration::from_millis(base / 2) && *delay <= Duration::from_millis(base),
                "{delay:?} not within the jitter band of {base} ms"
            );
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}
