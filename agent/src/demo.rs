//! `defect-agent demo`: the whole product on a fresh machine, with nothing installed.
//!
//! This module owns the demonstration: it starts an embedded MQTT broker (rumqttd, MQTT 3.1.1)
//! on a free loopback port, runs the daemon with the shipped bundle and a temporary hot folder,
//! subscribes to the decisions as a line PLC would, drops the sample frames into the hot folder
//! the way a camera does (write under a temporary name, then rename), prints every decision it
//! receives, and ends with a summary: counts, agreement with the sample labels, latency
//! percentiles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::{Config, HotFolderSection, Protocol, StationSection};
use crate::serving::ModelSource;

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Folder with the sample frames and their `labels.csv`.
    pub samples: PathBuf,
    /// How long to wait for all decisions.
    pub timeout: Duration,
}

/// The sample folder shipped in the repository.
pub fn default_samples() -> PathBuf {
    let relative = PathBuf::from("models/samples");
    if relative.join("labels.csv").is_file() {
        relative
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples")
    }
}

const PREFIX: &str = "demo/plant1/assembly/line1/vision";
const STATION: &str = "cam1";

/// One decision as the PLC saw it.
struct Seen {
    result: u64,
    class: u64,
    latency_ms: u64,
    end_to_end: Duration,
}

/// Runs the demo and prints to standard output. Fails if a frame got no decision message.
pub async fn run(options: DemoOptions) -> Result<()> {
    let samples = read_labels(&options.samples)?;
    let labels = crate::embedded::shipped_bundle()
        .context("shipped bundle")?
        .manifest()
        .output
        .labels
        .clone();
    let port = free_port()?;
    start_broker(port)?;
    println!("embedded MQTT broker (3.1.1) on 127.0.0.1:{port}");

    let work = tempfile_dir()?;
    let hot = work.join("hot");
    std::fs::create_dir_all(&hot).context("hot folder")?;
    let mut config: Config = toml::from_str("").context("default config")?;
    config.agent.state_dir = work.join("state");
    config.agent.decision_deadline_ms = 2000;
    config.agent.queue_capacity = 64;
    config.mqtt.port = port;
    config.mqtt.protocol = Protocol::V311;
    config.mqtt.topic_prefix = PREFIX.into();
    config.mqtt.client_id = "defect-agent-demo".into();
    config.stations = vec![StationSection {
        id: STATION.into(),
        hot_folder: Some(HotFolderSection {
            path: hot.clone(),
            part_id_pattern: r"part-(?P<part>\d+)".into(),
            after: crate::config::AfterDecision::Delete,
            move_to: None,
        }),
    }];

    let (mut decisions, _plc) = subscribe(port).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(crate::daemon::run(
        config,
        ModelSource::Shipped,
        async move {
            let _ = stopped.await;
        },
        Some(started_tx),
    ));
    started
        .await
        .context("the agent did not start; see the log above")?;
    println!(
        "agent running with the shipped model; dropping {} sample frames into {}",
        samples.len(),
        hot.display()
    );

    let mut sent_at = BTreeMap::new();
    for (index, (file, _)) in samples.iter().enumerate() {
        let part = index as u64 + 1;
        let bytes = std::fs::read(file).with_context(|| file.display().to_string())?;
        let temporary = hot.join(format!(".part-{part:06}.jpg.tmp"));
        std::fs::write(&temporary, bytes).context("write frame")?;
        sent_at.insert(part, Instant::now());
        std::fs::rename(&temporary, hot.join(format!("part-{part:06}.jpg")))
            .context("rename frame")?;
        // A camera at about 20 parts per second.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut seen: BTreeMap<u64, Seen> = BTreeMap::new();
    let give_up = tokio::time::Instant::now() + options.timeout;
    while seen.len() < samples.len() {
        let message = tokio::time::timeout_at(give_up, decisions.recv()).await;
        let Ok(Some((payload, received))) = message else {
            break;
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&payload) else {
            println!("unparsable decision: {}", String::from_utf8_lossy(&payload));
            continue;
        };
        let field = |k: &str| {
            value
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        let part = field("part");
        let Some(at) = sent_at.get(&part) else {
            continue;
        };
        let entry = Seen {
            result: field("r"),
            class: field("c"),
            latency_ms: field("lat"),
            end_to_end: received.saturating_duration_since(*at),
        };
        let index = usize::try_from(part.saturating_sub(1)).unwrap_or(usize::MAX);
        let (file, label) = samples
            .get(index)
            .map(|(f, l)| {
                (
                    f.file_name().unwrap_or_default().to_string_lossy(),
                    l.as_str(),
                )
            })
            .unwrap_or_default();
        println!(
            "part {part:>3}  {file:<18} labelled {label:<8} -> {:<11} {:<8} conf {:>4}‰  agent {:>4} ms  file-to-PLC {:>5.1} ms   {}",
            result_name(entry.result),
            labels
                .get(usize::try_from(entry.class).unwrap_or(0))
                .map_or("?", String::as_str),
            field("conf"),
            entry.latency_ms,
            entry.end_to_end.as_secs_f64() * 1000.0,
            String::from_utf8_lossy(&payload)
        );
        seen.insert(part, entry);
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), daemon).await;
    let _ = std::fs::remove_dir_all(&work);
    summary(&samples, &seen, &labels);
    if seen.len() < samples.len() {
        bail!(
            "{} of {} frames got no decision message",
            samples.len() - seen.len(),
            samples.len()
        );
    }
    Ok(())
}

fn result_name(code: u64) -> &'static str {
    match code {
        0 => "PASS",
        1 => "REJECT",
        _ => "NO DECISION",
    }
}

fn summary(samples: &[(PathBuf, String)], seen: &BTreeMap<u64, Seen>, labels: &[String]) {
    let count = |r: u64| seen.values().filter(|s| s.result == r).count();
    let mut agree = 0;
    let mut class_agree = 0;
    for (index, (_, label)) in samples.iter().enumerate() {
        let Some(s) = seen.get(&(index as u64 + 1)) else {
            continue;
        };
        let expected = if label == "good" { 0 } else { 1 };
        if s.result == expected {
            agree += 1;
        }
        let class = labels.get(usize::try_from(s.class).unwrap_or(0));
        if s.result != 2 && class.is_some_and(|c| c == label) {
            class_agree += 1;
        }
    }
    let mut agent: Vec<f64> = seen.values().map(|s| s.latency_ms as f64).collect();
    let mut end_to_end: Vec<f64> = seen
        .values()
        .map(|s| s.end_to_end.as_secs_f64() * 1000.0)
        .collect();
    println!();
    println!(
        "summary: {} frames, {} decisions received: {} pass, {} reject, {} no decision",
        samples.len(),
        seen.len(),
        count(0),
        count(1),
        count(2)
    );
    println!(
        "agreement with the sample labels: pass/reject {agree}/{}, class {class_agree}/{}",
        samples.len(),
        samples.len()
    );
    println!(
        "agent latency (arrival to decision) p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        percentile(&mut agent, 0.5),
        percentile(&mut agent, 0.9),
        percentile(&mut agent, 1.0)
    );
    println!(
        "file renamed into the hot folder to decision at the PLC: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        percentile(&mut end_to_end, 0.5),
        percentile(&mut end_to_end, 0.9),
        percentile(&mut end_to_end, 1.0)
    );
}

/// The `q` quantile (nearest rank) of `values`; 0 when empty.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64) * q).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn read_labels(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let csv = dir.join("labels.csv");
    let text = std::fs::read_to_string(&csv).with_context(|| csv.display().to_string())?;
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let Some((file, label)) = line.split_once(',') else {
            bail!("{}:{}: expected file,label", csv.display(), number + 1);
        };
        samples.push((dir.join(file.trim()), label.trim().to_owned()));
    }
    if samples.is_empty() {
        bail!("{} lists no frames", csv.display());
    }
    Ok(samples)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("defect-agent-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    Ok(dir)
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(listener.local_addr().context("local address")?.port())
}

/// Starts rumqttd on `port` in a thread of its own and waits until it accepts connections.
fn start_broker(port: u16) -> Result<()> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 100
max_outgoing_packet_count = 200
max_segment_size = 10485760
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 20480
max_inflight_count = 100
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text).context("broker config")?;
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(error) = broker.start() {
                eprintln!("embedded broker stopped: {error}");
            }
        })
        .context("broker thread")?;
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > until {
            bail!("the embedded broker did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Subscribes to every station's decisions as a PLC would; returns their payloads with the
/// instant each arrived.
async fn subscribe(
    port: u16,
) -> Result<(
    tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, Instant)>,
    rumqttc::AsyncClient,
)> {
    let mut options = rumqttc::MqttOptions::new("demo-plc", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    client
        .subscribe(format!("{PREFIX}/+/decision"), rumqttc::QoS::AtLeastOnce)
        .await
        .context("subscribe")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if tx.send((p.payload.to_vec(), Instant::now())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .context("the PLC subscriber was not acknowledged")?
        .context("subscriber stopped")?;
    Ok((rx, client))
}
