//! Frames that crash the decoder: the real agent isolates a panic to the one frame it happened
//! on, gives that part "no decision" (`why` 7, internal error) and decides the next frames with
//! freshly built model state.
//!
//! The panic comes from the agent's test-only trigger (`agent/src/fault.rs`, built into the
//! test binaries with the `fault-injection` feature and armed by an environment variable): a
//! frame that starts with the panic marker panics inside the isolated decode, the way a bug in
//! an image decoder or in the inference runtime would. A frame that aborts the whole agent
//! twice is quarantined, and its station's `quarantined_frames` alarm stays raised, across
//! restarts, until an operator empties the quarantine folder.

use std::collections::BTreeMap;
use std::time::Duration;

use defect_agent::fault;
use defect_e2e::agent_process::{AgentProcess, AgentSettings, label_index, sample_bytes};
use defect_e2e::broker::{Mosquitto, free_port};
use defect_e2e::scrape::{self, Samples, promtool_check};
use defect_e2e::subscriber::{Received, Subscriber, Version, count_on};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_frame_that_panics_the_decoder_gets_an_internal_error_and_the_line_goes_on() {
    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    // One worker: the frames after a panic run on the very thread that panicked.
    settings.workers = 1;
    settings.env = vec![(fault::ENABLE_VAR.to_owned(), "1".to_owned())];
    let plc = Subscriber::start(
        broker.port,
        &format!("{}/+/decision", settings.prefix),
        Version::V5,
    );
    let mut agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    let poisoned = [3_u64, 7];
    let parts = 1..=10_u64;
    let mut expected = BTreeMap::new();
    for part in parts.clone() {
        if poisoned.contains(&part) {
            let mut bytes = fault::PANIC_MARKER.to_vec();
            bytes.extend_from_slice(b" and then anything");
            agent.drop_frame("cam1", part, &bytes);
        } else {
            let (bytes, label) = &samples[part as usize % samples.len()];
            expected.insert(part, label_index(label));
            agent.drop_frame("cam1", part, bytes);
        }
        // In order, so that a good frame follows each poisoned one on the same worker.
        assert!(
            plc.wait_until(WAIT, |m| count_on(m, "decision") >= part as usize),
            "part {part} got no decision; log:\n{}",
            agent.log()
        );
    }
    let mut by_part = BTreeMap::new();
    for message in plc.on("decision") {
        let json = message.json();
        let part = json["part"].as_u64().expect("part");
        assert!(
            by_part.insert(part, json).is_none(),
            "part {part} got two decisions"
        );
    }
    for part in poisoned {
        let decision = &by_part[&part];
        assert_eq!(decision["r"], 2, "part {part}: {decision}");
        assert_eq!(decision["why"], 7, "part {part}: {decision}");
    }
    for (part, class) in expected {
        let decision = &by_part[&part];
        assert_ne!(decision["r"], 2, "part {part} after a panic: {decision}");
        assert_eq!(decision["c"], class, "part {part}: {decision}");
    }
    assert!(agent.is_running(), "log:\n{}", agent.log());
    let log = agent.log();
    assert_eq!(
        log.matches("decoding or inference panicked on this frame")
            .count(),
        2,
        "one error line per poisoned frame; log:\n{log}"
    );
    // The agent reports the panic as its own no-decision reason in the result log too.
    let stopped = agent.terminate(Duration::from_secs(20));
    assert!(stopped.success(), "exit {stopped:?}; log:\n{}", agent.log());
}

#[test]
fn without_the_test_switch_a_marked_frame_is_only_an_unreadable_image() {
    let broker = Mosquitto::start();
    let settings = AgentSettings::new(broker.port);
    let plc = Subscriber::start(
        broker.port,
        &format!("{}/+/decision", settings.prefix),
        Version::V5,
    );
    let agent = AgentProcess::start(settings);
    agent.drop_frame("cam1", 1, fault::PANIC_MARKER);
    assert!(
        plc.wait_until(WAIT, |m| count_on(m, "decision") >= 1),
        "log:\n{}",
        agent.log()
    );
    let decision = plc.on("decision")[0].json();
    assert_eq!(decision["r"], 2, "{decision}");
    assert_eq!(decision["why"], 3, "{decision}");
}

/// The agent unit's restart policy, read from the packaged unit: `RestartSec=` and
/// `StartLimitBurst=` (within `StartLimitIntervalSec=10min`).
fn unit_restart_policy() -> (Duration, u32) {
    let unit = std::fs::read_to_string(
        defect_e2e::repo_root().join("deploy/systemd/defect-agent.service"),
    )
    .expect("agent unit");
    let value = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} missing from the unit"))
            .trim()
            .to_owned()
    };
    let restart_sec: u64 = value("RestartSec=")
        .trim_end_matches('s')
        .parse()
        .expect("RestartSec in seconds");
    let burst: u32 = value("StartLimitBurst=").parse().expect("StartLimitBurst");
    assert_eq!(value("Restart="), "always");
    assert_eq!(value("StartLimitIntervalSec="), "10min");
    (Duration::from_secs(restart_sec), burst)
}

/// The states published on `alarms/quarantined_frames`, oldest first, as (active, value),
/// each checked against the alarm payload's fixed fields.
fn quarantine_states(messages: &[Received]) -> Vec<(bool, u64)> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with("/cam1/alarms/quarantined_frames"))
        .map(|m| {
            let json = m.json();
            assert_eq!(json["v"], 1, "{}", m.text);
            assert_eq!(json["alarm"], "quarantined_frames", "{}", m.text);
            assert_eq!(json["unit"], "frames", "{}", m.text);
            assert_eq!(json["limit"], 0, "{}", m.text);
            assert_eq!(json["n"], 0, "{}", m.text);
            assert!(json["ts"].is_u64(), "{}", m.text);
            (
                json["active"] == 1,
                json["value"].as_u64().expect("integer value"),
            )
        })
        .collect()
}

/// `defect_agent_quarantined_frames{station="cam1"}` in a scrape answer.
fn quarantined_gauge(response: &scrape::Response) -> Option<f64> {
    Samples::parse(&response.body).sum("defect_agent_quarantined_frames", &[("station", "cam1")])
}

#[test]
fn a_frame_that_aborts_the_agent_twice_is_quarantined_and_the_line_keeps_its_decisions() {
    let (restart_after, start_limit) = unit_restart_policy();
    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    settings.env = vec![(fault::ENABLE_VAR.to_owned(), "1".to_owned())];
    let metrics = format!("127.0.0.1:{}", free_port());
    settings.metrics = Some(metrics.clone());
    let plc = Subscriber::start(
        broker.port,
        &format!("{}/+/decision", settings.prefix),
        Version::V5,
    );
    let alarm_topic = format!("{}/cam1/alarms/quarantined_frames", settings.prefix);
    let scada = Subscriber::start(broker.port, &alarm_topic, Version::V5);
    let mut agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    let good = |part: u64| samples[part as usize % samples.len()].0.clone();
    for part in 1..=3 {
        agent.drop_frame("cam1", part, &good(part));
    }
    assert!(
        plc.wait_until(WAIT, |m| count_on(m, "decision") >= 3),
        "log:\n{}",
        agent.log()
    );
    // The poisoned frame, then good frames behind it.
    let mut poison = fault::ABORT_MARKER.to_vec();
    poison.extend_from_slice(b" and the rest of a file");
    let poisoned = agent.drop_frame("cam1", 10, &poison);
    for part in 11..=15 {
        agent.drop_frame("cam1", part, &good(part));
    }
    // Supervise the agent as systemd would with the unit's policy.
    let mut starts = 1;
    let everything_decided = |m: &[defect_e2e::subscriber::Received]| count_on(m, "decision") >= 9;
    let until = std::time::Instant::now() + Duration::from_secs(180);
    while !plc.wait_until(Duration::from_millis(200), everything_decided) {
        assert!(
            std::time::Instant::now() < until,
            "not every part decided; decisions: {:?}; log:\n{}",
            plc.on("decision")
                .iter()
                .map(|m| m.json())
                .collect::<Vec<_>>(),
            agent.log()
        );
        if !agent.is_running() {
            agent.reap();
            assert!(
                starts < start_limit,
                "the agent died {starts} times: systemd would give up on the unit; log:\n{}",
                agent.log()
            );
            std::thread::sleep(restart_after);
            agent.restart();
            starts += 1;
        }
    }
    let mut by_part = BTreeMap::new();
    for message in plc.on("decision") {
        let json = message.json();
        let part = json["part"].as_u64().expect("part");
        assert!(
            by_part.insert(part, json).is_none(),
            "part {part} got two decisions"
        );
    }
    let quarantined = &by_part[&10];
    assert_eq!(quarantined["r"], 2, "{quarantined}");
    assert_eq!(quarantined["why"], 8, "{quarantined}");
    for part in (1..=3).chain(11..=15) {
        assert_ne!(by_part[&part]["r"], 2, "part {part}: {}", by_part[&part]);
    }
    // Died on the frame twice (two aborts), the third start quarantined it.
    assert_eq!(starts, 3, "log:\n{}", agent.log());
    assert!(!poisoned.exists(), "the poisoned file left the hot folder");
    let kept = agent.state_dir().join("quarantine/cam1/part-10.jpg");
    assert_eq!(
        std::fs::read(&kept).expect("the poisoned file is kept in quarantine"),
        poison
    );
    assert!(agent.is_running(), "log:\n{}", agent.log());

    // The quarantine raised its own alarm with the count, after every start had published it
    // cleared.
    assert!(
        scada.wait_until(WAIT, |m| quarantine_states(m).last() == Some(&(true, 1))),
        "quarantined_frames not raised: {:?}; log:\n{}",
        quarantine_states(&scada.messages()),
        agent.log()
    );
    let states = quarantine_states(&scada.messages());
    // A start the poisoned frame killed may have died before it reached the broker.
    let (cleared, raised) = states.split_at(states.len() - 1);
    assert!(
        !cleared.is_empty() && cleared.iter().all(|s| *s == (false, 0)),
        "published cleared at start, until raised: {states:?}"
    );
    assert_eq!(raised, [(true, 1)]);
    // Retained: a SCADA client connecting now is told at once.
    let late = Subscriber::start(broker.port, &alarm_topic, Version::V5);
    assert!(late.wait_until(WAIT, |m| !m.is_empty()));
    let retained = &late.messages()[0];
    assert!(retained.retain, "{retained:?}");
    assert_eq!(quarantine_states(&late.messages())[0], (true, 1));
    let log = agent.log();
    let folder = agent.state_dir().join("quarantine/cam1");
    assert!(
        log.lines().any(|line| line.contains("ERROR")
            && line.contains("quarantined_frames")
            && line.contains(&folder.display().to_string())
            && line.contains("part-10.jpg")),
        "no error line names the alarm, the folder and the file; log:\n{log}"
    );
    let held = scrape::wait_for(&metrics, "/metrics", WAIT, |r| {
        quarantined_gauge(r) == Some(1.0)
    });
    if let Err(complaints) = promtool_check(&held.body) {
        panic!("{complaints}\nexposition:\n{}", held.body);
    }

    // A restart does not forget the file: the alarm is raised again at start, never cleared.
    let stopped = agent.terminate(Duration::from_secs(20));
    assert!(stopped.success(), "exit {stopped:?}; log:\n{}", agent.log());
    let before = quarantine_states(&scada.messages()).len();
    agent.restart();
    assert!(
        scada.wait_until(WAIT, |m| quarantine_states(m).len() > before),
        "nothing on quarantined_frames after the restart; log:\n{}",
        agent.log()
    );
    scrape::wait_for(&metrics, "/metrics", WAIT, |r| {
        quarantined_gauge(r) == Some(1.0)
    });

    // The operator takes the file out of the quarantine folder: the alarm clears.
    std::fs::remove_file(&kept).expect("the operator removes the quarantined file");
    assert!(
        scada.wait_until(WAIT, |m| quarantine_states(m).last() == Some(&(false, 0))),
        "quarantined_frames not cleared: {:?}; log:\n{}",
        quarantine_states(&scada.messages()),
        agent.log()
    );
    let states = quarantine_states(&scada.messages());
    let after_restart = &states[before..states.len() - 1];
    assert!(
        !after_restart.is_empty() && after_restart.iter().all(|s| *s == (true, 1)),
        "after the restart, raised until the folder was emptied: {states:?}"
    );
    scrape::wait_for(&metrics, "/metrics", WAIT, |r| {
        quarantined_gauge(r) == Some(0.0)
    });
    assert!(agent.is_running(), "log:\n{}", agent.log());
}
