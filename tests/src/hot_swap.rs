//! The hot-swap scenario: frames stream into the agent at line rate while the updater installs
//! a new model version.
//!
//! This module owns the scenario shared by the hot-swap test (which asserts that every frame
//! gets a decision and that the model version changes at one frame boundary) and the hot-swap
//! benchmark (which reports the latency percentiles): a box with its agent and updater, a
//! repository offering model_version 2, a steady stream of frames, the update started in the
//! middle of it, and every decision collected.

use std::time::{Duration, Instant};

use crate::agent_process::sample_bytes;
use crate::publisher::OwnRepo;
use crate::repo_server::RepoServer;
use crate::subscriber::Received;
use crate::updater_box::{BoxSettings, EdgeLine};

/// How the scenario runs.
#[derive(Debug, Clone, Copy)]
pub struct SwapPlan {
    /// Frames sent before the update starts (the steady state).
    pub frames_before: u64,
    /// Frames sent after the new version is served.
    pub frames_after: u64,
    /// Time between two frames (line rate).
    pub interval: Duration,
}

/// One frame's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameResult {
    /// Part id (frames are sent in part order).
    pub part: u64,
    /// Result code: 0 pass, 1 reject, 2 no decision.
    pub result: u64,
    /// Model version that decided.
    pub model_version: u64,
    /// The agent's arrival-to-decision latency, ms.
    pub latency_ms: u64,
    /// Whether the frame was sent in the swap window: from the start of the update until one
    /// second after the agent announced the new version.
    pub during_swap: bool,
}

/// What the scenario observed.
#[derive(Debug, Clone)]
pub struct SwapReport {
    /// Every frame sent, in part order, with its decision (`None` if none arrived).
    pub frames: Vec<(u64, Option<FrameResult>)>,
    /// Time from starting the update to the agent announcing the new version.
    pub swap_time: Duration,
}

/// Percentile (nearest rank) of a list of milliseconds.
pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

impl SwapReport {
    /// Latencies of decided frames, split into steady state and during the swap.
    pub fn latencies(&self) -> (Vec<u64>, Vec<u64>) {
        let mut steady = Vec::new();
        let mut swap = Vec::new();
        for result in self.frames.iter().filter_map(|(_, r)| r.as_ref()) {
            if result.during_swap {
                swap.push(result.latency_ms);
            } else {
                steady.push(result.latency_ms);
            }
        }
        (steady, swap)
    }
}

fn decision(m: &Received) -> Option<(u64, u64, u64, u64)> {
    if !m.topic.ends_with("/decision") {
        return None;
    }
    let d = m.json();
    Some((
        d["part"].as_u64()?,
        d["r"].as_u64()?,
        d["mv"].as_u64()?,
        d["lat"].as_u64()?,
    ))
}

/// The last `bytes` of `text`, cut at a character boundary.
fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Runs the scenario.
pub fn run(plan: SwapPlan) -> SwapReport {
    let repo = OwnRepo::init();
    repo.add(&crate::bundles::with_model_version(2), &[]);
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let frame = sample_bytes()[0].0.clone();
    let mut part = 0;
    let mut sent = Vec::new();
    let mut send = |during_swap: bool, part: &mut u64| {
        *part += 1;
        line.agent.drop_frame("cam1", *part, &frame);
        sent.push((*part, during_swap));
    };

    let mut next = Instant::now();
    for _ in 0..plan.frames_before {
        send(false, &mut part);
        next += plan.interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let started = Instant::now();
    let mut updater = line
        .edge
        .spawn("check", &line.edge.path().join("hot-swap-updater.log"));
    let deadline = started + Duration::from_secs(120);
    while line.served_version() != Some(2) {
        assert!(
            Instant::now() < deadline,
            "the new version never served; updater log:\n{}\nagent log (last 4000 bytes):\n{}",
            std::fs::read_to_string(line.edge.path().join("hot-swap-updater.log"))
                .unwrap_or_default(),
            tail(&line.agent.log(), 4000)
        );
        send(true, &mut part);
        next += plan.interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let swap_time = started.elapsed();
    // The swap window goes on for a second after the switch: the old model is released and
    // the updater commits and collects garbage meanwhile.
    let settled = Instant::now() + Duration::from_secs(1);
    while Instant::now() < settled {
        send(true, &mut part);
        next += plan.interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for _ in 0..plan.frames_after {
        send(false, &mut part);
        next += plan.interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let status = updater.wait().expect("updater exit");
    assert!(
        status.success(),
        "updater: {status:?}; {}",
        std::fs::read_to_string(line.edge.path().join("hot-swap-updater.log")).unwrap_or_default()
    );
    let last = part;
    let all_decided = |m: &[Received]| {
        let decided: std::collections::BTreeSet<u64> =
            m.iter().filter_map(decision).map(|d| d.0).collect();
        (1..=last).all(|p| decided.contains(&p))
    };
    let complete = line.plc.wait_until(Duration::from_secs(60), all_decided);
    let messages = line.plc.messages();
    let mut by_part = std::collections::BTreeMap::new();
    for (p, r, mv, lat) in messages.iter().filter_map(decision) {
        by_part.entry(p).or_insert((r, mv, lat));
    }
    if !complete {
        eprintln!("agent log:\n{}", line.agent.log());
    }
    let frames = sent
        .into_iter()
        .map(|(p, during_swap)| {
            let result = by_part
                .get(&p)
                .map(|&(result, model_version, latency_ms)| FrameResult {
                    part: p,
                    result,
                    model_version,
                    latency_ms,
                    during_swap,
                });
            (p, result)
        })
        .collect();
    SwapReport { frames, swap_time }
}
