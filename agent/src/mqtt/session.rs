//! The agent's MQTT session: what is published when, over one [`Link`].
//!
//! This module owns the publishing rules of the topic contract: the retained `online` birth
//! on every connect and `offline` on clean shutdown (the Last Will covers crashes); the
//! retained `model` description; the periodic `heartbeat` with its `ready` flag; live
//! `decision`s, sent only while they can still meet their deadline and never replayed late;
//! and the `results` topic, fed in order from the result log with a window of QoS 1
//! publishes, advancing the log's delivered cursor only on the broker's acknowledgements.
//! It runs as one task; other components talk to it through a cloneable [`Publisher`].

use defect_shared::error_chain::Chain;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::link::{Link, LinkError, LinkEvent, LinkSettings, Message};
use super::metrics::SessionMetrics;
use super::payload::{self, ModelInfo, Topics};
use crate::health::Health;
use crate::mqtt::settings::MqttSection;
use crate::outcome::{DecisionResult, FrameTimes, Outcome, unix_ms};
use crate::result_log::ResultLog;

/// Results published and not yet acknowledged at most.
const RESULTS_WINDOW: usize = 32;

/// While the broker stays unreachable, a warning this often; the attempts between are debug.
const UNREACHABLE_WARN_EVERY: Duration = Duration::from_secs(60);

/// How long a clean shutdown waits for the broker to take the `offline` status.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long after its frame's deadline a "no decision" may still be published live.
const NO_DECISION_GRACE: Duration = Duration::from_secs(1);

enum Command {
    Decision(Box<Outcome>, Instant, FrameTimes),
    ResultsAvailable,
    Model(ModelInfo),
    ModelError(Option<String>),
    Retained(Message),
    Shutdown(oneshot::Sender<()>),
}

/// Cloneable handle to the MQTT session task.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Command>,
    topics: Topics,
}

impl crate::serving::ModelAnnouncer for Publisher {
    fn model(&self, info: ModelInfo) {
        Publisher::model(self, info);
    }

    fn model_error(&self, error: Option<String>) {
        Publisher::model_error(self, error);
    }
}

impl Publisher {
    /// The topic names of this session's prefix.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Publishes a live decision if it can reach the broker before `deadline`; otherwise it is
    /// dropped (it is in the result log and goes out on `results`). `times` feed the publish
    /// and end-to-end latency metrics.
    pub fn decision(&self, outcome: &Outcome, deadline: Instant, times: FrameTimes) {
        let _ = self.tx.send(Command::Decision(
            Box::new(outcome.clone()),
            deadline,
            times,
        ));
    }

    /// Tells the session that new outcomes are in the result log.
    pub fn results_available(&self) {
        let _ = self.tx.send(Command::ResultsAvailable);
    }

    /// Sets the retained model description.
    pub fn model(&self, info: ModelInfo) {
        let _ = self.tx.send(Command::Model(info));
    }

    /// Sets or clears the model error shown on the retained status.
    pub fn model_error(&self, error: Option<String>) {
        let _ = self.tx.send(Command::ModelError(error));
    }

    /// Publishes a retained state (an alarm, a drift evaluation) now when connected, and again
    /// on every connect until the topic gets a newer state.
    pub fn retained(&self, topic: String, payload: Vec<u8>) {
        let _ = self.tx.send(Command::Retained(Message {
            topic,
            payload,
            at_least_once: true,
            retain: true,
            expiry_s: None,
        }));
    }

    /// Publishes `offline`, disconnects cleanly and waits until done (or a short grace).
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Shutdown(done)).is_ok() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, wait).await;
        }
    }
}

/// What a queued publish was, to match the broker's acknowledgements.
#[derive(Debug, Clone, Copy)]
enum Tag {
    Other,
    Result(u64),
}

/// Messages the session receives: what it subscribes to, and where it forwards them.
#[derive(Debug)]
pub struct Inbox {
    /// Topic filters subscribed on every connect.
    pub filters: Vec<String>,
    /// Receives `(topic, payload)` of every message that arrives.
    pub forward: mpsc::UnboundedSender<(String, Vec<u8>)>,
}

/// Starts the session task; `inbox` subscribes and forwards incoming messages.
pub fn start(
    mqtt: &MqttSection,
    client_id: String,
    log: ResultLog,
    health: Arc<Health>,
    metrics: SessionMetrics,
    inbox: Option<Inbox>,
) -> Result<Publisher, LinkError> {
    let topics = Topics::new(&mqtt.topic_prefix);
    let settings = LinkSettings {
        mqtt: mqtt.clone(),
        client_id,
        will: Some((topics.status(), payload::status(false, None))),
    };
    let (link, events) = Link::start(&settings)?;
    let (tx, commands) = mpsc::unbounded_channel();
    let session = Session {
        link,
        topics: topics.clone(),
        mqtt: mqtt.clone(),
        log,
        health,
        metrics,
        connected: false,
        held: VecDeque::new(),
        expect: VecDeque::new(),
        inflight: HashMap::new(),
        outstanding: BTreeSet::new(),
        last_queued: 0,
        model: None,
        model_error: None,
        retained: BTreeMap::new(),
        inbox,
        heartbeats: 0,
        shutdown: None,
        unreachable_since_warned: None,
    };
    tokio::spawn(session.run(commands, events));
    Ok(Publisher { tx, topics })
}

struct Session {
    link: Link,
    topics: Topics,
    mqtt: MqttSection,
    log: ResultLog,
    health: Arc<Health>,
    /// Publish and end-to-end latencies of live decisions.
    metrics: SessionMetrics,
    /// Connected to the broker (a ConnAck since the last error).
    connected: bool,
    /// Live decisions waiting for a connection, with their deadlines and frame times.
    held: VecDeque<(Message, Instant, FrameTimes)>,
    /// Publishes queued on this connection and not yet seen leaving, in order.
    expect: VecDeque<Tag>,
    /// Result sequence number of each unacknowledged QoS 1 packet id.
    inflight: HashMap<u16, u64>,
    /// Result sequence numbers queued on this connection and not yet acknowledged.
    outstanding: BTreeSet<u64>,
    /// Highest result sequence number queued on this connection.
    last_queued: u64,
    /// The model in service, re-published on every connect.
    model: Option<ModelInfo>,
    /// The last model error, shown on the status.
    model_error: Option<String>,
    /// Retained states by topic, re-published on every connect.
    retained: BTreeMap<String, Message>,
    /// Subscriptions and where their messages go.
    inbox: Option<Inbox>,
    /// Heartbeats sent.
    heartbeats: u64,
    /// Set when a clean shutdown is under way.
    shutdown: Option<oneshot::Sender<()>>,
    /// When a failure to reach the broker was last logged as a warning.
    unreachable_since_warned: Option<Instant>,
}

impl Session {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<LinkEvent>,
    ) {
        let mut heartbeat = tokio::time::interval(Duration::from_millis(self.mqtt.heartbeat_ms));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown_deadline: Option<Instant> = None;
        loop {
            let grace = async {
                match shutdown_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv(), if self.shutdown.is_none() => match command {
                    Some(Command::Shutdown(done)) => {
                        self.begin_shutdown(done);
                        shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
                    }
                    Some(command) => self.handle(command),
                    None => return,
                },
                event = events.recv() => match event {
                    Some(LinkEvent::Closed) | None => break,
                    Some(event) => self.on_event(event),
                },
                _ = heartbeat.tick(), if self.shutdown.is_none() => self.heartbeat(),
                () = grace => {
                    tracing::warn!("broker did not confirm the offline status in time");
                    break;
                }
            }
        }
        if let Some(done) = self.shutdown.take() {
            let _ = done.send(());
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Decision(outcome, deadline, times) => {
                // A "no decision" is made at the deadline at the latest (by the deadline timer),
                // so it may go out a little after it: it is fail-safe (the PLC rejects the part
                // either way) and tells the PLC at once instead of leaving it to time out. A pass
                // or reject is never published after the deadline.
                let deadline = if outcome.result() == DecisionResult::NoDecision {
                    deadline + NO_DECISION_GRACE
                } else {
                    deadline
                };
                let message = Message {
                    topic: self.topics.decision(&outcome.station),
                    payload: payload::decision(&outcome, self.mqtt.payload),
                    at_least_once: true,
                    retain: false,
                    expiry_s: Some(self.mqtt.decision_expiry_s),
                };
                if self.connected {
                    self.send_decision(message, deadline, times);
                } else {
                    self.held.push_back((message, deadline, times));
                    self.drop_expired_held();
                }
            }
            Command::ResultsAvailable => self.fill_results(),
            Command::Retained(message) => {
                if self.connected {
                    self.publish(message.clone(), Tag::Other);
                }
                self.retained.insert(message.topic.clone(), message);
            }
            Command::Model(info) => {
                self.model = Some(info);
                self.publish_model();
            }
            Command::ModelError(error) => {
                if self.model_error != error {
                    self.model_error = error;
                    self.publish_status();
                }
            }
            Command::Shutdown(_) => {}
        }
    }

    fn begin_shutdown(&mut self, done: oneshot::Sender<()>) {
        self.shutdown = Some(done);
        if self.connected {
            self.publish(
                Message {
                    topic: self.topics.status(),
                    payload: payload::status(false, None),
                    at_least_once: true,
                    retain: true,
                    expiry_s: None,
                },
                Tag::Other,
            );
            self.link.try_disconnect();
        } else if let Some(done) = self.shutdown.take() {
            let _ = done.send(());
        }
    }

    fn on_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected => {
                tracing::info!(host = %self.mqtt.host, port = self.mqtt.port, "connected to broker");
                self.connected = true;
                self.health.set_broker_connected(true);
                self.reset_connection_state();
                self.publish_status();
                self.publish_model();
                self.subscribe();
                let states: Vec<Message> = self.retained.values().cloned().collect();
                for message in states {
                    self.publish(message, Tag::Other);
                }
                let held = std::mem::take(&mut self.held);
                for (message, deadline, times) in held {
                    self.send_decision(message, deadline, times);
                }
                self.fill_results();
            }
            LinkEvent::Disconnected(error) => {
                let now = Instant::now();
                if self.connected {
                    tracing::warn!(host = %self.mqtt.host, port = self.mqtt.port, %error, "lost the broker; reconnecting");
                    self.unreachable_since_warned = Some(now);
                } else if self
                    .unreachable_since_warned
                    .is_none_or(|at| now.duration_since(at) >= UNREACHABLE_WARN_EVERY)
                {
                    tracing::warn!(host = %self.mqtt.host, port = self.mqtt.port, %error, "cannot reach the broker; retrying");
                    self.unreachable_since_warned = Some(now);
                } else {
                    tracing::debug!(%error, "broker still unreachable");
                }
                self.connected = false;
                self.health.set_broker_connected(false);
                self.reset_connection_state();
                if let Some(done) = self.shutdown.take() {
                    let _ = done.send(());
                }
            }
            LinkEvent::Sent(pkid) => match self.expect.pop_front() {
                Some(Tag::Result(seq)) => {
                    self.inflight.insert(pkid, seq);
                }
                Some(Tag::Other) | None => {}
            },
            LinkEvent::Acked(pkid) => {
                if let Some(seq) = self.inflight.remove(&pkid) {
                    self.outstanding.remove(&seq);
                    self.advance_delivered();
                    self.fill_results();
                }
            }
            LinkEvent::Received { topic, payload } => {
                if let Some(inbox) = &self.inbox {
                    let _ = inbox.forward.send((topic, payload));
                }
            }
            LinkEvent::Closed => {}
        }
    }

    /// Subscribes the inbox's filters (every connection is a clean session).
    fn subscribe(&mut self) {
        let Some(inbox) = &self.inbox else { return };
        for filter in &inbox.filters {
            if let Err(error) = self.link.try_subscribe(filter) {
                tracing::warn!(error = %Chain(&error), "subscription not queued");
            }
        }
    }

    /// Forgets everything tied to the previous connection; unacknowledged results are sent
    /// again from the log's delivered cursor.
    fn reset_connection_state(&mut self) {
        self.expect.clear();
        self.inflight.clear();
        self.outstanding.clear();
        self.last_queued = 0;
    }

    fn send_decision(&mut self, message: Message, deadline: Instant, times: FrameTimes) {
        if Instant::now() >= deadline {
            self.health.count_decision_not_sent();
            tracing::debug!(topic = %message.topic, "decision past its deadline; not published");
            return;
        }
        if self.publish(message, Tag::Other) {
            self.metrics.published(times);
        }
    }

    fn drop_expired_held(&mut self) {
        let now = Instant::now();
        let before = self.held.len();
        self.held.retain(|(_, deadline, _)| *deadline > now);
        for _ in self.held.len()..before {
            self.health.count_decision_not_sent();
        }
    }

    fn publish(&mut self, message: Message, tag: Tag) -> bool {
        match self.link.try_publish(&message) {
            Ok(()) => {
                self.expect.push_back(tag);
                true
            }
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "publish not queued");
                false
            }
        }
    }

    fn publish_status(&mut self) {
        if !self.connected {
            return;
        }
        let message = Message {
            topic: self.topics.status(),
            payload: payload::status(true, self.model_error.as_deref()),
            at_least_once: true,
            retain: true,
            expiry_s: None,
        };
        self.publish(message, Tag::Other);
    }

    fn publish_model(&mut self) {
        let Some(info) = &self.model else { return };
        if !self.connected {
            return;
        }
        let message = Message {
            topic: self.topics.model(),
            payload: payload::model(info),
            at_least_once: true,
            retain: true,
            expiry_s: None,
        };
        self.publish(message, Tag::Other);
    }

    fn heartbeat(&mut self) {
        self.drop_expired_held();
        if !self.connected {
            return;
        }
        self.heartbeats += 1;
        let ready = self.health.ready();
        let message = Message {
            topic: self.topics.heartbeat(),
            payload: payload::heartbeat(self.heartbeats, ready, unix_ms()),
            at_least_once: false,
            retain: false,
            expiry_s: Some(self.mqtt.keep_alive_s.try_into().unwrap_or(u32::MAX)),
        };
        self.publish(message, Tag::Other);
        // A retry in case a notification was missed while the window was full.
        self.fill_results();
    }

    /// Queues undelivered results, oldest first, up to the window.
    fn fill_results(&mut self) {
        if !self.connected || self.shutdown.is_some() || self.outstanding.len() >= RESULTS_WINDOW {
            return;
        }
        let pending = match self.log.undelivered(RESULTS_WINDOW * 2) {
            Ok(pending) => pending,
            Err(error) => {
                tracing::error!(error = %Chain(&error), "cannot read the result log; results are not forwarded");
                return;
            }
        };
        for outcome in pending {
            if self.outstanding.len() >= RESULTS_WINDOW {
                break;
            }
            if outcome.seq <= self.last_queued {
                continue;
            }
            let message = Message {
                topic: self.topics.results(&outcome.station),
                payload: payload::result(&outcome),
                at_least_once: true,
                retain: false,
                expiry_s: None,
            };
            if !self.publish(message, Tag::Result(outcome.seq)) {
                break;
            }
            self.outstanding.insert(outcome.seq);
            self.last_queued = outcome.seq;
        }
    }

    /// Moves the log's delivered cursor to just below the oldest unacknowledged result.
    fn advance_delivered(&mut self) {
        let delivered = match self.outstanding.first() {
            Some(oldest) => oldest.saturating_sub(1),
            None => self.last_queued,
        };
        if delivered == 0 {
            return;
        }
        if let Err(error) = self.log.mark_delivered(delivered) {
            tracing::error!(error = %Chain(&error), seq = delivered, "cannot record delivered results");
        }
    }
}
