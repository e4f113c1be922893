//! An MQTT subscriber that records what a PLC or SCADA client would see.
//!
//! It speaks MQTT 3.1.1 or 5 with rumqttc's blocking client on a thread of its own, records
//! every message with its arrival instant, and lets a test wait for a condition on what it has
//! seen (events, not sleeps).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One received message.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic it came on.
    pub topic: String,
    /// Payload as text.
    pub text: String,
    /// Whether the broker delivered it as a retained message.
    pub retain: bool,
    /// MQTT 5 message expiry the broker forwarded (None over 3.1.1 or without expiry).
    pub expiry_s: Option<u32>,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The payload parsed as JSON (panics with the payload when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON on {}: {:?}: {e}", self.topic, self.text))
    }
}

/// Which protocol the subscriber speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.
    V5,
}

#[derive(Default)]
struct Seen {
    messages: Vec<Received>,
    subscribed: bool,
}

/// A running subscriber.
pub struct Subscriber {
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl Subscriber {
    /// Connects to the broker on `port` and subscribes to `filter` with QoS 1 (again after
    /// every reconnect); returns once the subscription is acknowledged.
    pub fn start(port: u16, filter: &str, version: Version) -> Subscriber {
        let id = format!(
            "test-sub-{}-{}",
            std::process::id(),
            crate::broker::free_port()
        );
        Subscriber::connect(port, filter, version, id, true)
    }

    /// Like [`Subscriber::start`] with a persistent session under `id` (clean session off), so
    /// the broker queues QoS 1 messages for it while it is away.
    pub fn persistent(port: u16, filter: &str, version: Version, id: &str) -> Subscriber {
        Subscriber::connect(port, filter, version, id.to_owned(), false)
    }

    fn connect(port: u16, filter: &str, version: Version, id: String, clean: bool) -> Subscriber {
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let shared = Arc::clone(&seen);
        let filter = filter.to_owned();
        match version {
            Version::V311 => {
                let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
                options
                    .set_keep_alive(Duration::from_secs(5))
                    .set_clean_session(clean);
                let (client, mut connection) = rumqttc::Client::new(options, 64);
                std::thread::spawn(move || {
                    for event in connection.iter() {
                        match event {
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                                let _ =
                                    client.try_subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce);
                            }
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                                record_subscribed(&shared)
                            }
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => record(
                                &shared,
                                Received {
                                    topic: p.topic.clone(),
                                    text: String::from_utf8_lossy(&p.payload).into_owned(),
                                    retain: p.retain,
                                    expiry_s: None,
                                    at: Instant::now(),
                                },
                            ),
                            Ok(_) => {}
                            Err(_) => std::thread::sleep(Duration::from_millis(100)),
                        }
                    }
                });
            }
            Version::V5 => {
                let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
                options
                    .set_keep_alive(Duration::from_secs(5))
                    .set_clean_start(clean);
                if !clean {
                    options.set_session_expiry_interval(Some(3600));
                }
                let (client, mut connection) = rumqttc::v5::Client::new(options, 64);
                std::thread::spawn(move || {
                    use rumqttc::v5::mqttbytes::v5::Packet;
                    for event in connection.iter() {
                        match event {
                            Ok(rumqttc::v5::Event::Incoming(Packet::ConnAck(_))) => {
                                let _ = client.try_subscribe(
                                    filter.clone(),
                                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                                );
                            }
                            Ok(rumqttc::v5::Event::Incoming(Packet::SubAck(_))) => {
                                record_subscribed(&shared)
                            }
                            Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => record(
                                &shared,
                                Received {
                                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                    text: String::from_utf8_lossy(&p.payload).into_owned(),
                                    retain: p.retain,
                                    expiry_s: p
                                        .properties
                                        .as_ref()
                                        .and_then(|pr| pr.message_expiry_interval),
                                    at: Instant::now(),
                                },
                            ),
                            Ok(_) => {}
                            Err(_) => std::thread::sleep(Duration::from_millis(100)),
                        }
                    }
                });
            }
        }
        let subscriber = Subscriber { seen };
        assert!(
            subscriber.wait_state(Duration::from_secs(10), |s| s.subscribed),
            "subscription to the broker on {port} was not acknowledged"
        );
        subscriber
    }

    fn wait_state(&self, timeout: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let (lock, wake) = &*self.seen;
        let until = Instant::now() + timeout;
        let mut seen = lock.lock().expect("lock");
        loop {
            if done(&seen) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            seen = wake.wait_timeout(seen, until - now).expect("lock").0;
        }
    }

    /// Waits until `done` holds for the messages seen so far; false on timeout.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        self.wait_state(timeout, |s| done(&s.messages))
    }

    /// Every message seen so far.
    pub fn messages(&self) -> Vec<Received> {
        self.seen.0.lock().expect("lock").messages.clone()
    }

    /// Messages seen so far on topics ending with `/<suffix>`.
    pub fn on(&self, suffix: &str) -> Vec<Received> {
        let end = format!("/{suffix}");
        self.messages()
            .into_iter()
            .filter(|m| m.topic.ends_with(&end))
            .collect()
    }
}

fn record_subscribed(shared: &Arc<(Mutex<Seen>, Condvar)>) {
    let (lock, wake) = &**shared;
    lock.lock().expect("lock").subscribed = true;
    wake.notify_all();
}

fn record(shared: &Arc<(Mutex<Seen>, Condvar)>, message: Received) {
    let (lock, wake) = &**shared;
    lock.lock().expect("lock").messages.push(message);
    wake.notify_all();
}

/// Count of messages on topics ending with `/<suffix>`.
pub fn count_on(messages: &[Received], suffix: &str) -> usize {
    let end = format!("/{suffix}");
    messages.iter().filter(|m| m.topic.ends_with(&end)).count()
}

/// Publishes one QoS 1 message over MQTT 3.1.1 and returns once the broker acknowledged it.
pub fn publish_once(port: u16, topic: &str, payload: &[u8]) {
    let id = format!("test-publisher-{}", std::process::id());
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
        .expect("queue publish");
    for event in connection.iter() {
        match event {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("publish to {topic}: {e}"),
        }
    }
    let _ = client.disconnect();
}
