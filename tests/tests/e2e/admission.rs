//! Deadline-aware admission with the real agent: a burst of frames renamed into the hot folder
//! at once, as after a camera's FTP reconnect. A frame waits for a worker unless the frames
//! ahead of it, at the measured time per frame, could not decide it before its deadline; only
//! then is it refused at once. `queue_capacity` (the default, 64) only bounds memory.

use std::collections::BTreeMap;
use std::time::Duration;

use defect_e2e::agent_process::{AgentProcess, AgentSettings, sample_bytes};
use defect_e2e::broker::Mosquitto;
use defect_e2e::subscriber::{Subscriber, Version, count_on};

const WAIT: Duration = Duration::from_secs(120);
const BURST: u64 = 50;
const WARM_UP: u64 = 4;

/// What one burst got: the live decisions by part, and every logged outcome by part (from
/// `results`, which carries every outcome, published live or not).
struct Burst {
    by_part: BTreeMap<u64, serde_json::Value>,
    logged: BTreeMap<u64, serde_json::Value>,
    log: String,
}

impl Burst {
    fn latencies(&self, keep: impl Fn(&serde_json::Value) -> bool) -> Vec<u64> {
        let mut latencies: Vec<u64> = self
            .by_part
            .values()
            .filter(|d| keep(d))
            .map(|d| d["lat"].as_u64().expect("lat"))
            .collect();
        latencies.sort_unstable();
        latencies
    }
}

/// Starts an agent with 2 workers and `deadline_ms`, warms it up with a few frames one at a
/// time (so that it has measured its service time, as on a running line), then renames
/// [`BURST`] frames into its hot folder at once and collects their live decisions.
fn burst(deadline_ms: u64) -> Burst {
    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    settings.workers = 2;
    settings.queue_capacity = 64;
    settings.deadline_ms = deadline_ms;
    let plc = Subscriber::start(
        broker.port,
        &format!("{}/+/decision", settings.prefix),
        Version::V5,
    );
    let trace = Subscriber::start(
        broker.port,
        &format!("{}/+/results", settings.prefix),
        Version::V5,
    );
    let agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    for part in 1..=WARM_UP {
        agent.drop_frame("cam1", part, &samples[part as usize % samples.len()].0);
        assert!(
            trace.wait_until(WAIT, |m| count_on(m, "results") >= part as usize),
            "warm-up part {part} was not logged; log:\n{}",
            agent.log()
        );
    }
    // Written beside the hot folder first, then renamed in as fast as possible.
    let staging = agent.dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging folder");
    let parts: Vec<u64> = (1..=BURST).map(|i| 1000 + i).collect();
    for part in &parts {
        let bytes = &samples[*part as usize % samples.len()].0;
        std::fs::write(staging.join(format!("part-{part}.jpg")), bytes).expect("stage frame");
    }
    for part in &parts {
        let name = format!("part-{part}.jpg");
        std::fs::rename(staging.join(&name), agent.hot_folder("cam1").join(&name))
            .expect("rename into the hot folder");
    }
    let total = (WARM_UP + BURST) as usize;
    // `results` also carries the late records of model results that came after their frame's
    // live outcome: count parts with a live outcome.
    let live_parts = |m: &[defect_e2e::subscriber::Received]| {
        m.iter()
            .filter(|r| r.topic.ends_with("/results"))
            .map(|r| r.json())
            .filter(|j| j["late"] != true)
            .filter_map(|j| j["part"].as_u64())
            .collect::<std::collections::BTreeSet<u64>>()
            .len()
    };
    assert!(
        trace.wait_until(WAIT, |m| live_parts(m) >= total),
        "the burst did not get an outcome per frame; log:\n{}",
        agent.log()
    );
    // Live decisions are published before the outcome reaches `results`; the last ones may
    // still be on their way to this subscriber.
    let live_decisions = |m: &[defect_e2e::subscriber::Received]| count_on(m, "decision");
    plc.wait_until(Duration::from_secs(2), |m| live_decisions(m) >= total);
    let mut logged = BTreeMap::new();
    for message in trace.on("results") {
        let json = message.json();
        if json["late"] != true {
            logged.insert(json["part"].as_u64().expect("part"), json);
        }
    }
    logged.retain(|part, _| *part > 1000);
    assert_eq!(logged.len(), BURST as usize);
    let mut by_part = BTreeMap::new();
    for message in plc.on("decision") {
        let json = message.json();
        let part = json["part"].as_u64().expect("part");
        assert!(
            by_part.insert(part, json).is_none(),
            "part {part} got two decisions"
        );
    }
    by_part.retain(|part, _| *part > 1000);
    Burst {
        by_part,
        logged,
        log: agent.log(),
    }
}

#[test]
fn a_burst_of_50_frames_with_a_3_s_deadline_is_decided_in_full() {
    let burst = burst(3000);
    assert_eq!(
        burst.by_part.len(),
        BURST as usize,
        "every frame of the burst gets its live decision; log:\n{}",
        burst.log
    );
    let refused: Vec<_> = burst.by_part.iter().filter(|(_, d)| d["r"] == 2).collect();
    assert!(
        refused.is_empty(),
        "with 3 s for each, every frame of the burst must be decided: {refused:?}; log:\n{}",
        burst.log
    );
    let latencies = burst.latencies(|_| true);
    println!(
        "burst of {BURST}, 3000 ms deadline: {} decided, median latency {} ms, highest {} ms",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

#[test]
fn a_burst_with_a_40_ms_deadline_refuses_at_once_what_cannot_make_it_and_nothing_is_late() {
    let deadline = 40;
    let burst = burst(deadline);
    let decided = burst.latencies(|d| d["r"] != 2);
    let no_decision: Vec<&serde_json::Value> =
        burst.by_part.values().filter(|d| d["r"] == 2).collect();
    for d in &no_decision {
        assert_eq!(d["why"], 5, "only the deadline refuses here: {d}");
    }
    // A pass or reject is published only within its deadline.
    assert!(
        decided.iter().all(|lat| *lat <= deadline),
        "a decision was published after the {deadline} ms deadline: {decided:?}"
    );
    let at_once = burst.latencies(|d| d["r"] == 2 && d["lat"].as_u64() < Some(deadline / 2));
    let at_deadline = burst.latencies(|d| d["r"] == 2 && d["lat"].as_u64() >= Some(deadline / 2));
    // Decided in time by a worker, then too late for the broker: logged, never published.
    let not_published: Vec<u64> = burst
        .logged
        .keys()
        .filter(|part| !burst.by_part.contains_key(part))
        .copied()
        .collect();
    println!(
        "burst of {BURST}, {deadline} ms deadline: {} decided and published in time, {} refused on arrival, {} answered at the deadline, {} decided but too late to publish",
        decided.len(),
        at_once.len(),
        at_deadline.len(),
        not_published.len()
    );
    // Two workers cannot decide 50 frames in 40 ms: most are refused, and at once.
    assert!(
        at_once.len() >= (BURST as usize) / 2,
        "refused on arrival: {}, at the deadline: {}; log:\n{}",
        at_once.len(),
        at_deadline.len(),
        burst.log
    );
    assert!(
        at_deadline.len() + not_published.len() <= 6,
        "admission let in frames that then missed their deadline: {} answered at the deadline, {} not published; log:\n{}",
        at_deadline.len(),
        not_published.len(),
        burst.log
    );
}
