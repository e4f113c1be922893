//! Data capture in the real `defect-agent run` against a real Mosquitto and the real
//! `defect-central capture-server`: which frames are kept and with what metadata, the export
//! for training scripts, the size cap, the privacy switch, and the upload: resumed after the
//! server is killed mid-upload, rate-limited, and never sent twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use defect_e2e::agent_process::{AgentProcess, AgentSettings, sample_bytes};
use defect_e2e::broker::{Mosquitto, free_port};
use defect_e2e::capture_server::CaptureServer;
use defect_e2e::scrape::{self, Samples, promtool_check};
use defect_e2e::subscriber::{Subscriber, Version, count_on};

const WAIT: Duration = Duration::from_secs(90);

struct Line {
    agent: AgentProcess,
    decisions: Subscriber,
    metrics: String,
    _broker: Mosquitto,
}

fn start(capture: &str) -> Line {
    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    let metrics = format!("127.0.0.1:{}", free_port());
    settings.metrics = Some(metrics.clone());
    settings.extra_toml = format!("[monitor]\ncamera_quiet_s = 0\n{capture}");
    let decisions = Subscriber::start(
        broker.port,
        &format!("{}/+/decision", settings.prefix),
        Version::V5,
    );
    let agent = AgentProcess::start(settings);
    scrape::wait_for(&metrics, "/readyz", WAIT, |r| r.status == 200);
    Line {
        agent,
        decisions,
        metrics,
        _broker: broker,
    }
}

impl Line {
    /// Drops frames as parts `1..` and waits for their decisions.
    fn feed(&self, frames: &[Vec<u8>]) {
        let before = count_on(&self.decisions.messages(), "decision");
        for (i, bytes) in frames.iter().enumerate() {
            self.agent.drop_frame("cam1", i as u64 + 1, bytes);
        }
        let want = before + frames.len();
        assert!(
            self.decisions
                .wait_until(WAIT, |m| count_on(m, "decision") >= want),
            "decisions missing; agent log:\n{}",
            self.agent.log()
        );
    }

    /// Drops frames as parts `1..` one at a time: each after the previous one's decision and,
    /// when `chosen` says the sampler keeps it, after the capture writer has dealt with it
    /// (kept or dropped). At most one capture then waits for the writer, so none is dropped as
    /// `busy` however slow the disk (the writer's queue is bounded and a full queue drops the
    /// capture rather than delay a decision, which is what a burst on a loaded machine hits).
    /// Fails at once if a capture was dropped.
    fn feed_paced(&self, frames: &[Vec<u8>], chosen: impl Fn(usize) -> bool) {
        let mut offered = self.capture_outcomes();
        for (i, bytes) in frames.iter().enumerate() {
            self.feed_part(i as u64 + 1, bytes);
            if chosen(i) {
                offered += 1.0;
                scrape::wait_for(&self.metrics, "/metrics", WAIT, |r| {
                    let samples = Samples::parse(&r.body);
                    let kept = samples.sum("defect_agent_captured_frames_total", &[]);
                    let dropped = samples.sum("defect_agent_capture_dropped_frames_total", &[]);
                    kept.unwrap_or(0.0) + dropped.unwrap_or(0.0) >= offered
                });
            }
        }
        assert_eq!(
            self.metric("defect_agent_capture_dropped_frames_total"),
            0.0,
            "captures dropped; agent log:\n{}",
            self.agent.log()
        );
    }

    /// Captures kept or dropped so far.
    fn capture_outcomes(&self) -> f64 {
        self.metric("defect_agent_captured_frames_total")
            + self.metric("defect_agent_capture_dropped_frames_total")
    }

    /// Drops one frame as `part` and waits for its decision.
    fn feed_part(&self, part: u64, bytes: &[u8]) {
        let want = count_on(&self.decisions.messages(), "decision") + 1;
        self.agent.drop_frame("cam1", part, bytes);
        assert!(
            self.decisions
                .wait_until(WAIT, |m| count_on(m, "decision") >= want),
            "no decision for part {part}; agent log:\n{}",
            self.agent.log()
        );
    }

    /// Waits until the metric `name` (summed over labels) satisfies `done`; returns the scrape.
    fn wait_metric(&self, name: &str, done: impl Fn(f64) -> bool) -> Samples {
        let response = scrape::wait_for(&self.metrics, "/metrics", WAIT, |r| {
            Samples::parse(&r.body).sum(name, &[]).is_some_and(&done)
        });
        Samples::parse(&response.body)
    }

    fn metric(&self, name: &str) -> f64 {
        let response = scrape::get(&self.metrics, "/metrics", None).expect("scrape");
        Samples::parse(&response.body)
            .sum(name, &[])
            .unwrap_or_else(|| panic!("{name} missing:\n{}", response.body))
    }

    fn store(&self) -> std::path::PathBuf {
        self.agent.state_dir().join("capture")
    }

    /// The metadata of every captured item in the store.
    fn captured(&self) -> Vec<serde_json::Value> {
        let mut items: Vec<serde_json::Value> = std::fs::read_dir(self.store())
            .expect("capture store")
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.ends_with(".json") && !name.starts_with('.')
            })
            .map(|e| serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("JSON"))
            .collect();
        items.sort_by_key(|m| m["part"].as_u64());
        items
    }
}

/// The decision and per-label scores `defect-agent classify` gives each sample frame.
fn sample_scores() -> Vec<(String, BTreeMap<String, f64>)> {
    defect_e2e::classify_samples()
        .into_iter()
        .map(|json| {
            let scores = json["scores"]
                .as_object()
                .expect("scores")
                .iter()
                .map(|(label, score)| (label.clone(), score.as_f64().expect("score")))
                .collect();
            (
                json["result"].as_str().unwrap_or_default().to_owned(),
                scores,
            )
        })
        .collect()
}

fn frames() -> Vec<Vec<u8>> {
    sample_bytes().into_iter().map(|(bytes, _)| bytes).collect()
}

#[test]
fn rejects_and_frames_near_the_threshold_are_captured_with_their_metadata_and_exported_as_class_folders()
 {
    let line = start(
        "[capture]\nenabled = true\nuncertain_margin = 0.3\nrandom_fraction = 0.0\ndrift_fraction = 0.0\nevery_reject = true\n",
    );
    let frames = frames();
    // What must be kept: every reject, and a pass with a defect score within 0.3 of the 0.4
    // threshold.
    let expected: BTreeMap<u64, &str> = sample_scores()
        .iter()
        .enumerate()
        .filter_map(|(i, (result, scores))| {
            let part = i as u64 + 1;
            if result == "reject" {
                return Some((part, "reject"));
            }
            let near = scores
                .iter()
                .any(|(label, s)| label != "good" && (s - 0.4).abs() <= 0.3);
            near.then_some((part, "uncertain"))
        })
        .collect();
    assert!(expected.values().any(|r| *r == "uncertain"), "{expected:?}");
    line.feed_paced(&frames, |i| expected.contains_key(&(i as u64 + 1)));
    let total = expected.len() as f64;
    let samples = line.wait_metric("defect_agent_captured_frames_total", |v| v >= total);
    assert_eq!(
        samples.sum(
            "defect_agent_captured_frames_total",
            &[("reason", "reject")]
        ),
        Some(expected.values().filter(|r| **r == "reject").count() as f64)
    );

    let items = line.captured();
    let parts: BTreeMap<u64, String> = items
        .iter()
        .map(|m| {
            (
                m["part"].as_u64().expect("part"),
                m["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect();
    let want: BTreeMap<u64, String> = expected
        .iter()
        .map(|(p, r)| (*p, (*r).to_owned()))
        .collect();
    assert_eq!(parts, want);
    for meta in &items {
        let part = meta["part"].as_u64().expect("part") as usize;
        let image = std::fs::read(line.store().join(meta["image"].as_str().expect("image")))
            .expect("image file");
        assert_eq!(
            image,
            frames[part - 1],
            "part {part}: not the bytes received"
        );
        use sha2::Digest;
        assert_eq!(meta["sha256"], hex(&sha2::Sha256::digest(&image)));
        assert_eq!(meta["station"], "cam1");
        assert_eq!(meta["model"], "surface-classifier");
        assert_eq!(meta["model_version"], 1);
        assert_eq!(meta["scores"].as_array().expect("scores").len(), 5);
        assert!(meta["captured_ms"].as_u64() >= meta["acquired_ms"].as_u64());
    }

    // The export, while the agent runs.
    let out = tempfile::tempdir().expect("tempdir");
    let to = out.path().join("export");
    let config = line.agent.config_path();
    let output = defect_e2e::run(
        "defect-agent",
        &[
            "capture-export",
            "--config",
            config.to_str().expect("utf-8"),
            "--to",
            to.to_str().expect("utf-8"),
        ],
    );
    assert!(output.status.success(), "{}", defect_e2e::stderr(&output));
    let csv = std::fs::read_to_string(to.join("captured.csv")).expect("captured.csv");
    let mut rows = csv.lines();
    let header = rows.next().expect("header");
    assert!(
        header.starts_with("file,id,station,part,reason,result,label,"),
        "{header}"
    );
    assert!(header.ends_with(",score_good,score_scratch,score_dent,score_crack,score_stain"));
    let rows: Vec<&str> = rows.collect();
    assert_eq!(rows.len(), items.len());
    for row in rows {
        let file = row.split(',').next().expect("file column");
        let (label, _) = file.split_once('/').expect("label folder");
        assert!(
            ["good", "scratch", "dent", "crack", "stain"].contains(&label),
            "{row}"
        );
        assert!(to.join(file).is_file(), "{file} missing");
    }
    // Into a folder that is not empty: refused, naming it.
    let again = defect_e2e::run(
        "defect-agent",
        &[
            "capture-export",
            "--config",
            config.to_str().expect("utf-8"),
            "--to",
            to.to_str().expect("utf-8"),
        ],
    );
    assert!(!again.status.success());
    assert!(defect_e2e::stderr(&again).contains("is not empty"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn with_the_privacy_switch_nothing_leaves_the_box_and_the_size_cap_evicts_the_oldest() {
    let server = CaptureServer::start();
    let line = start(&format!(
        "[capture]\nenabled = true\nmax_bytes = 1048576\nevery_reject = true\nrandom_fraction = 0.0\nkeep_on_device = true\n[capture.upload]\nurl = {:?}\ninterval_s = 0.1\n",
        server.url()
    ));
    let frames = frames();
    let results = sample_scores();
    line.feed_paced(&frames, |i| results[i].0 == "reject");
    let captured = results.iter().filter(|(r, _)| r == "reject").count() as f64;
    line.wait_metric("defect_agent_captured_frames_total", |v| v >= captured);
    let items = line.metric("defect_agent_capture_store_items");
    let bytes = line.metric("defect_agent_capture_store_bytes");
    let evicted = line.metric("defect_agent_capture_evicted_items_total");
    assert!(bytes <= 1_048_576.0, "{bytes} bytes held over the cap");
    assert_eq!(
        items + evicted,
        captured,
        "every capture is held or evicted"
    );
    assert!(evicted >= 1.0, "a 1 MiB cap holds 4 frames of about 220 kB");
    assert_eq!(line.captured().len() as f64, items);

    // Ten upload intervals later the server has still seen nothing.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        server.files("cam1").is_empty(),
        "{:?}",
        server.files("cam1").len()
    );
    assert!(!server.log().contains("stored"), "{}", server.log());
    assert_eq!(line.metric("defect_agent_capture_upload_bytes_total"), 0.0);
    let response = scrape::get(&line.metrics, "/metrics", None).expect("scrape");
    if let Err(complaints) = promtool_check(&response.body) {
        panic!("{complaints}\nexposition:\n{}", response.body);
    }
}

#[test]
fn an_upload_cut_by_a_killed_server_resumes_where_it_stopped_and_nothing_is_sent_twice() {
    let mut server = CaptureServer::start();
    let rate = 200_000.0;
    let config = format!(
        "[capture]\nenabled = true\nevery_reject = true\nuncertain_margin = 0.0\nrandom_fraction = 0.0\n[capture.upload]\nurl = {:?}\ninterval_s = 0.2\nmax_bytes_per_second = {rate}\n",
        server.url()
    );
    let mut line = start(&config);
    // Three defect frames: about 660 kB, over 3 s at 200 kB/s.
    let rejects: Vec<Vec<u8>> = sample_bytes()
        .into_iter()
        .filter(|(_, label)| label != "good")
        .take(3)
        .map(|(bytes, _)| bytes)
        .collect();
    let total: usize = rejects.iter().map(Vec::len).sum();
    let started = Instant::now();
    line.feed(&rejects);

    // Kill the server as soon as it holds part of an image.
    let folder = server.store().join("cam1");
    let until = Instant::now() + WAIT;
    loop {
        let partial = std::fs::read_dir(&folder)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name().to_string_lossy().ends_with(".part")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            });
        if partial {
            break;
        }
        assert!(
            Instant::now() < until,
            "no upload started; agent log:\n{}",
            line.agent.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9();
    server.restart();

    line.wait_metric("defect_agent_capture_uploaded_items_total", |v| v >= 3.0);
    let elapsed = started.elapsed();
    assert_eq!(line.metric("defect_agent_capture_pending_items"), 0.0);
    assert!(
        line.agent.log().contains("resuming a cut upload"),
        "no resume; agent log:\n{}",
        line.agent.log()
    );
    let sent = line.metric("defect_agent_capture_upload_bytes_total");
    let json_bytes: usize = line
        .captured()
        .iter()
        .map(|m| serde_json::to_vec_pretty(m).map_or(0, |v| v.len()))
        .sum();
    eprintln!(
        "uploaded {total} image and {json_bytes} metadata bytes in {elapsed:?} at {rate} B/s with the server killed once: {sent} bytes sent"
    );
    assert!(
        sent < (total + json_bytes) as f64 * 1.3,
        "{sent} bytes sent for {total} image bytes: the cut upload started over"
    );
    assert!(
        elapsed.as_secs_f64() >= total as f64 / rate * 0.9,
        "{total} bytes uploaded in {elapsed:?}, faster than {rate} B/s"
    );

    // The server holds each image and its metadata exactly once, complete and verified.
    let held = server.files("cam1");
    assert_eq!(
        held.len(),
        6,
        "{:?}",
        held.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for meta in line.captured() {
        let image = meta["image"].as_str().expect("image");
        let on_server = held
            .iter()
            .find(|(name, _)| name == image)
            .expect("image held");
        let part = meta["part"].as_u64().expect("part") as usize;
        assert_eq!(on_server.1, rejects[part - 1]);
    }
    let stored = server.log().matches(" stored").count();
    assert_eq!(stored, 6, "server log:\n{}", server.log());

    // A box that crashed before recording the uploads asks, and sends nothing again.
    line.agent.terminate(Duration::from_secs(30));
    for entry in std::fs::read_dir(line.store()).expect("store").flatten() {
        if entry.file_name().to_string_lossy().ends_with(".uploaded") {
            std::fs::remove_file(entry.path()).expect("remove marker");
        }
    }
    line.agent.restart();
    line.wait_metric("defect_agent_capture_uploaded_items_total", |v| v >= 3.0);
    assert_eq!(line.metric("defect_agent_capture_upload_bytes_total"), 0.0);
    assert_eq!(line.metric("defect_agent_capture_pending_items"), 0.0);
    assert_eq!(server.log().matches(" stored").count(), 6);
}
