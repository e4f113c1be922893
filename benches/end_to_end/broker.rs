//! The benchmark's own Mosquitto on a free loopback port, and the one subscriber that timestamps
//! every decision, whichever pipeline published it.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use super::Result;
use super::process::stop_child;

/// A Mosquitto instance listening on 127.0.0.1 only; stopped when dropped.
pub struct Broker {
    /// The broker process.
    child: Child,
    /// Its loopback port.
    pub port: u16,
}

impl Broker {
    /// Starts `mosquitto` with a configuration written into `dir`; waits until it accepts.
    pub fn start(mosquitto: &Path, dir: &Path) -> Result<Broker> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .map_err(|e| format!("write {}: {e}", config.display()))?;
        let log = std::fs::File::create(dir.join("mosquitto.log"))
            .map_err(|e| format!("mosquitto log: {e}"))?;
        let child = Command::new(mosquitto)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", mosquitto.display()))?;
        let broker = Broker { child, port };
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > until {
                return Err(format!("mosquitto does not listen on 127.0.0.1:{port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop_child(&mut self.child, "mosquitto");
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

/// A decision as the subscriber saw it.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// When the subscriber's event loop handed the message over.
    pub at: Instant,
    /// Result code: 0 pass, 1 reject, 2 no decision.
    pub result: u64,
}

/// A subscriber to `<prefix>/+/decision` at QoS 1.
pub struct Subscriber {
    /// Keeps the connection open.
    _client: Client,
    /// Decisions as they arrive: station, part, what was received.
    decisions: mpsc::Receiver<(String, u64, Received)>,
    /// Set when the benchmark is done, so the end of the connection is not reported.
    closing: Arc<AtomicBool>,
}

impl Subscriber {
    /// Connects, subscribes and waits for the broker's acknowledgement.
    pub fn connect(port: u16, prefix: &str) -> Result<Subscriber> {
        let mut options = MqttOptions::new("end-to-end-bench", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = Client::new(options, 256);
        client
            .subscribe(format!("{prefix}/+/decision"), QoS::AtLeastOnce)
            .map_err(|e| format!("subscribe: {e}"))?;
        let (tx, decisions) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let prefix = format!("{prefix}/");
        let closing = Arc::new(AtomicBool::new(false));
        let closed = Arc::clone(&closing);
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let at = Instant::now();
                        let Some(station) = publish
                            .topic
                            .strip_prefix(&prefix)
                            .and_then(|t| t.strip_suffix("/decision"))
                        else {
                            continue;
                        };
                        let Ok(json) =
                            serde_json::from_slice::<serde_json::Value>(&publish.payload)
                        else {
                            eprintln!("subscriber: payload is not JSON on {}", publish.topic);
                            continue;
                        };
                        let (Some(part), Some(result)) =
                            (json["part"].as_u64(), json["r"].as_u64())
                        else {
                            eprintln!("subscriber: decision without part or r: {json}");
                            continue;
                        };
                        if tx
                            .send((station.to_owned(), part, Received { at, result }))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        if !closed.load(Ordering::Relaxed) {
                            eprintln!("subscriber: connection lost: {error}");
                        }
                        return;
                    }
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the broker did not acknowledge the subscription".to_owned())?;
        Ok(Subscriber {
            _client: client,
            decisions,
            closing,
        })
    }

    /// Waits until every part in `parts` has a decision from `station`, or `timeout` passes;
    /// decisions for other parts (late warm-ups) are dropped.
    pub fn wait_for(
        &self,
        station: &str,
        parts: &[u64],
        timeout: Duration,
    ) -> Result<HashMap<u64, Received>> {
        let until = Instant::now() + timeout;
        let mut got = HashMap::with_capacity(parts.len());
        while got.len() < parts.len() {
            let left = until.saturating_duration_since(Instant::now());
            match self.decisions.recv_timeout(left) {
                Ok((from, part, received)) => {
                    if from == station && parts.contains(&part) {
                        got.entry(part).or_insert(received);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{station}: {} of {} decisions within {timeout:?}",
                        got.len(),
                        parts.len()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the subscriber lost its connection".to_owned());
                }
            }
        }
        Ok(got)
    }
}
