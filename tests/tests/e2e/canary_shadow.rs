//! The canary's shadow mode in the real `defect-agent run` against a real Mosquitto: a
//! candidate named by the model store's `candidate` pointer runs beside the model in service
//! on the same frames, never deciding a live one, and its evidence goes retained to
//! `P/canary`, to the metrics and to `canary.json`.

use std::time::Duration;

use defect_e2e::agent_process::{AgentProcess, AgentSettings, sample_bytes};
use defect_e2e::broker::{Mosquitto, free_port};
use defect_e2e::bundles;
use defect_e2e::scrape::{self, Samples, promtool_check};
use defect_e2e::subscriber::{Received, Subscriber, Version, count_on};
use defect_models::store::{Pointer, Store};

const WAIT: Duration = Duration::from_secs(90);

struct Line {
    agent: AgentProcess,
    watcher: Subscriber,
    metrics: String,
    _store: tempfile::TempDir,
    _broker: Mosquitto,
}

/// An agent serving the shipped classifier (model_version 1) from a store whose `candidate`
/// is `candidate`; waits until the candidate runs in shadow.
fn start(candidate: &[u8], extra: &str) -> Line {
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(store_dir.path()).expect("store");
    let current = store.add(&bundles::with_model_version(1)).expect("add");
    store.activate(&current).expect("activate");
    let candidate = store.add(candidate).expect("add candidate");
    store
        .set_pointer(Pointer::Candidate, &candidate)
        .expect("candidate pointer");

    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    let metrics = format!("127.0.0.1:{}", free_port());
    settings.metrics = Some(metrics.clone());
    settings.model_store = Some(store_dir.path().to_owned());
    settings.extra_toml = format!("[monitor]\ncamera_quiet_s = 0\n{extra}");
    let watcher = Subscriber::start(broker.port, &format!("{}/#", settings.prefix), Version::V5);
    let agent = AgentProcess::start(settings);
    let line = Line {
        agent,
        watcher,
        metrics,
        _store: store_dir,
        _broker: broker,
    };
    assert!(
        line.watcher
            .wait_until(WAIT, |m| last_canary(m).is_some_and(|c| c["state"]
                == "shadow"
                && c["candidate_sha256"] == candidate.as_str())),
        "the candidate never ran in shadow; agent log:\n{}",
        line.agent.log()
    );
    line
}

fn last_canary(messages: &[Received]) -> Option<serde_json::Value> {
    messages
        .iter()
        .rev()
        .find(|m| m.topic.ends_with("/canary"))
        .map(Received::json)
}

impl Line {
    /// Drops the frames one at a time, each once the previous one was decided and run in
    /// shadow (the canary counters show it): the box is never busy, so every frame runs in
    /// shadow too.
    fn feed_one_by_one(&self, first: u64, frames: &[Vec<u8>]) {
        let shadowed = |r: &scrape::Response| {
            let samples = Samples::parse(&r.body);
            let count = |name| samples.sum(name, &[]).unwrap_or(0.0);
            count("defect_agent_canary_frames_total") + count("defect_agent_canary_skipped_total")
        };
        for (i, bytes) in frames.iter().enumerate() {
            let before = shadowed(&scrape::get(&self.metrics, "/metrics", None).expect("scrape"));
            self.agent.drop_frame("cam1", first + i as u64, bytes);
            scrape::wait_for(&self.metrics, "/metrics", WAIT, |r| shadowed(r) > before);
        }
    }

    /// Waits until the published evidence has compared `frames` frames (plus `skipped`).
    fn evidence_after(&self, frames: u64) -> serde_json::Value {
        assert!(
            self.watcher
                .wait_until(WAIT, |m| last_canary(m).is_some_and(|c| c["frames"]
                    .as_u64()
                    .unwrap_or(0)
                    + c["skipped"].as_u64().unwrap_or(0)
                    >= frames)),
            "evidence missing; last {:?}",
            last_canary(&self.watcher.messages())
        );
        last_canary(&self.watcher.messages()).expect("evidence")
    }

    /// Every live decision so far: (r, mv).
    fn decisions(&self) -> Vec<(u64, u64)> {
        self.watcher
            .on("decision")
            .iter()
            .map(|m| {
                let d = m.json();
                (d["r"].as_u64().expect("r"), d["mv"].as_u64().expect("mv"))
            })
            .collect()
    }
}

fn frames() -> Vec<Vec<u8>> {
    sample_bytes().into_iter().map(|(bytes, _)| bytes).collect()
}

#[test]
fn a_candidate_identical_in_behaviour_agrees_on_every_frame_and_its_evidence_survives_a_kill() {
    let mut line = start(&bundles::with_model_version(2), "");
    let frames = frames();
    line.feed_one_by_one(1, &frames[..20]);
    let evidence = line.evidence_after(20);
    assert_eq!(evidence["frames"], 20, "{evidence}");
    assert_eq!(evidence["agree"], 20, "{evidence}");
    assert_eq!(evidence["reject_to_pass"], 0);
    assert_eq!(evidence["pass_to_reject"], 0);
    assert_eq!(evidence["skipped"], 0);
    assert_eq!(evidence["candidate_model_version"], 2);
    assert!(
        evidence["candidate_ms_p50"].as_f64() > Some(0.0),
        "{evidence}"
    );
    assert!(
        line.decisions().iter().all(|d| d.1 == 1),
        "a live decision by the candidate"
    );

    // Killed mid-shadow: the next agent resumes the same candidate's evidence from the file.
    let file = line.agent.state_dir().join("canary.json");
    let started = evidence["started_ms"].clone();
    let until = std::time::Instant::now() + WAIT;
    while std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_none_or(|e| e["frames"] != 20)
    {
        assert!(
            std::time::Instant::now() < until,
            "canary.json never held 20 frames"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    line.agent.kill9();
    line.agent.restart();
    // Frames only once the candidate runs in shadow again.
    scrape::wait_for(&line.metrics, "/metrics", WAIT, |r| {
        Samples::parse(&r.body).sum("defect_agent_canary_candidate_model_version", &[]) == Some(2.0)
    });
    line.feed_one_by_one(21, &frames[20..]);
    let evidence = line.evidence_after(30);
    assert_eq!(evidence["frames"], 30, "{evidence}");
    assert_eq!(evidence["agree"], 30);
    assert_eq!(
        evidence["started_ms"], started,
        "the canary restarted instead of resuming"
    );
    assert!(line.decisions().iter().all(|d| d.1 == 1));

    let response = scrape::get(&line.metrics, "/metrics", None).expect("scrape");
    let samples = Samples::parse(&response.body);
    assert_eq!(
        samples.sum("defect_agent_canary_frames_total", &[]),
        Some(30.0)
    );
    assert_eq!(
        samples.sum("defect_agent_canary_agreement_ratio", &[]),
        Some(1.0)
    );
    assert_eq!(
        samples.sum("defect_agent_canary_candidate_model_version", &[]),
        Some(2.0)
    );
    if let Err(complaints) = promtool_check(&response.body) {
        panic!("{complaints}\nexposition:\n{}", response.body);
    }
}

#[test]
fn a_candidate_that_lets_defects_through_is_counted_and_never_decides_a_live_frame() {
    let lenient = bundles::lets_defects_through(2);
    let line = start(
        &lenient,
        "[capture]\nenabled = true\nuncertain_margin = 0.0\nrandom_fraction = 0.0\n",
    );
    let samples = sample_bytes();
    let frames: Vec<Vec<u8>> = samples.iter().map(|(b, _)| b.clone()).collect();
    line.feed_one_by_one(1, &frames);
    let evidence = line.evidence_after(30);
    let let_through = samples
        .iter()
        .filter(|(_, label)| ["scratch", "crack", "stain"].contains(&label.as_str()))
        .count();
    assert_eq!(evidence["reject_to_pass"], let_through as u64, "{evidence}");
    assert_eq!(evidence["pass_to_reject"], 0);
    assert_eq!(evidence["agree"], 30 - let_through as u64);
    // It calls a scratch a scratch, but not a defect.
    assert_eq!(
        evidence["flips"]["reject:scratch->pass:scratch"], 6,
        "{evidence}"
    );
    // Every live decision is the model in service's: every defect rejected.
    let decisions = line.decisions();
    assert_eq!(decisions.len(), 30);
    assert!(decisions.iter().all(|d| d.1 == 1));
    assert_eq!(decisions.iter().filter(|d| d.0 == 1).count(), 24);

    // The frames it would let through are captured with both models' decisions.
    let store = line.agent.state_dir().join("capture");
    let until = std::time::Instant::now() + WAIT;
    let captured = loop {
        let metas: Vec<serde_json::Value> = std::fs::read_dir(&store)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        if metas.len() >= let_through {
            break metas;
        }
        assert!(
            std::time::Instant::now() < until,
            "{} captured",
            metas.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(captured.len(), let_through);
    for meta in &captured {
        assert_eq!(meta["reason"], "canary", "{meta}");
        assert_eq!(meta["result"], "reject");
        assert_eq!(meta["candidate"]["result"], "pass", "{meta}");
        assert_eq!(meta["candidate"]["model_version"], 2);
        assert_eq!(
            meta["candidate"]["scores"].as_array().map(Vec::len),
            Some(5)
        );
    }
}

#[test]
fn under_saturation_live_decisions_keep_their_deadlines_and_shadow_runs_are_skipped_and_counted() {
    let line = start(&bundles::with_model_version(2), "");
    // Two bursts of the 30 samples at once (the queue holds 64): frames wait for the two
    // workers.
    let frames = frames();
    for burst in 0..2u64 {
        for (i, bytes) in frames.iter().enumerate() {
            line.agent
                .drop_frame("cam1", burst * 100 + i as u64 + 1, bytes);
        }
    }
    assert!(
        line.watcher
            .wait_until(WAIT, |m| count_on(m, "decision") >= 60),
        "decisions missing; agent log:\n{}",
        line.agent.log()
    );
    let decisions = line.decisions();
    assert_eq!(decisions.len(), 60);
    assert!(
        decisions.iter().all(|d| d.0 != 2 && d.1 == 1),
        "a no-decision or a candidate's decision: {decisions:?}"
    );
    let evidence = line.evidence_after(60);
    let (frames, skipped) = (
        evidence["frames"].as_u64().expect("frames"),
        evidence["skipped"].as_u64().expect("skipped"),
    );
    assert_eq!(frames + skipped, 60, "{evidence}");
    assert!(
        skipped > 0,
        "no shadow run was skipped in a burst: {evidence}"
    );
    assert_eq!(evidence["agree"], frames);
    eprintln!("bursts of 60: {frames} compared, {skipped} skipped");
}
