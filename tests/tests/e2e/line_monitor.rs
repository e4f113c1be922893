//! Line monitoring in the real `defect-agent run` against a real Mosquitto: the alarms on
//! `P/S/alarms/<alarm>` (no-decision and invalid-input rates, reject-rate band, camera gone
//! quiet while the line runs) and data drift on `P/S/drift`, with the metrics behind them
//! checked by `promtool`.
//!
//! Frames go through the hot folder: the 30 sample frames, unreadable files, and the sample
//! frames darkened as under poor lighting (every pixel times 0.55, JPEG again).

use std::io::Cursor;
use std::time::Duration;

use defect_e2e::agent_process::{AgentProcess, AgentSettings, sample_bytes};
use defect_e2e::broker::{Mosquitto, free_port};
use defect_e2e::bundles;
use defect_e2e::scrape::{self, Samples, promtool_check};
use defect_e2e::subscriber::{Received, Subscriber, Version, count_on, publish_once};
use defect_models::store::Store;

const WAIT: Duration = Duration::from_secs(60);

/// The alarm states seen on `alarms/<alarm>` after the cleared state the agent publishes at
/// start, oldest first, as (active, value).
fn alarm_states(messages: &[Received], alarm: &str) -> Vec<(bool, u64)> {
    let end = format!("/alarms/{alarm}");
    messages
        .iter()
        .filter(|m| m.topic.ends_with(&end))
        .skip(1)
        .map(|m| {
            let json = m.json();
            assert_eq!(json["alarm"], alarm, "{}", m.text);
            (
                json["active"] == 1,
                json["value"].as_u64().expect("integer value"),
            )
        })
        .collect()
}

fn is_raised(messages: &[Received], alarm: &str) -> bool {
    alarm_states(messages, alarm).last().is_some_and(|s| s.0)
}

fn is_cleared_after_raise(messages: &[Received], alarm: &str) -> bool {
    let states = alarm_states(messages, alarm);
    states.iter().any(|s| s.0) && states.last().is_some_and(|s| !s.0)
}

/// An agent with the hot folder of `cam1`, metrics, and `extra` TOML; with the subscriber
/// that sees everything under its prefix.
fn start(
    broker: &Mosquitto,
    extra: &str,
    store: Option<&std::path::Path>,
) -> (AgentProcess, Subscriber, String) {
    let mut settings = AgentSettings::new(broker.port);
    let metrics = format!("127.0.0.1:{}", free_port());
    settings.metrics = Some(metrics.clone());
    settings.extra_toml = extra.to_owned();
    settings.model_store = store.map(std::path::Path::to_path_buf);
    let watcher = Subscriber::start(broker.port, &format!("{}/#", settings.prefix), Version::V5);
    let agent = AgentProcess::start(settings);
    scrape::wait_for(&metrics, "/readyz", WAIT, |r| r.status == 200);
    (agent, watcher, metrics)
}

/// Drops `frames` into `cam1`'s hot folder as parts `first..` and waits until each got its
/// decision.
fn feed(agent: &AgentProcess, watcher: &Subscriber, first: u64, frames: &[Vec<u8>]) -> u64 {
    let before = count_on(&watcher.messages(), "decision");
    for (i, bytes) in frames.iter().enumerate() {
        agent.drop_frame("cam1", first + i as u64, bytes);
    }
    let want = before + frames.len();
    assert!(
        watcher.wait_until(WAIT, |m| count_on(m, "decision") >= want),
        "decisions missing; agent log:\n{}",
        agent.log()
    );
    first + frames.len() as u64
}

fn samples() -> Vec<Vec<u8>> {
    sample_bytes().into_iter().map(|(bytes, _)| bytes).collect()
}

/// A sample frame as under poor lighting: every pixel times 0.55, encoded as JPEG again.
fn darkened(jpeg: &[u8]) -> Vec<u8> {
    let image = image::load_from_memory(jpeg)
        .expect("sample decodes")
        .to_luma8();
    let dark = image::GrayImage::from_fn(image.width(), image.height(), |x, y| {
        let v = f32::from(image.get_pixel(x, y).0[0]) * 0.55;
        image::Luma([v.round().clamp(0.0, 255.0) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
        .encode_image(&dark)
        .expect("encode");
    out.into_inner()
}

#[test]
fn unreadable_frames_raise_the_invalid_input_and_no_decision_alarms_and_good_frames_clear_them() {
    let broker = Mosquitto::start();
    let extra = "[monitor]\nwindow_frames = 20\nno_decision_max = 0.05\ninvalid_input_max = 0.05\ncamera_quiet_s = 0\n[drift]\nenabled = false\n";
    let (agent, watcher, metrics) = start(&broker, extra, None);
    let good = samples();
    let mut part = feed(&agent, &watcher, 1, &good[..20]);
    let messages = watcher.messages();
    assert!(
        alarm_states(&messages, "invalid_input_rate").is_empty(),
        "a full window of good frames raised an alarm: {:?}",
        watcher.on("invalid_input_rate")
    );

    // 2 unreadable of 20 is 10 %, over the 5 % limits.
    let unreadable = vec![b"not a JPEG at all".to_vec(), Vec::new()];
    part = feed(&agent, &watcher, part, &unreadable);
    assert!(
        watcher.wait_until(WAIT, |m| is_raised(m, "invalid_input_rate")
            && is_raised(m, "no_decision_rate")),
        "alarms not raised; seen {:?}; agent log:\n{}",
        watcher
            .messages()
            .iter()
            .filter(|m| m.topic.contains("/alarms/"))
            .collect::<Vec<_>>(),
        agent.log()
    );
    let raised = alarm_states(&watcher.messages(), "invalid_input_rate");
    assert_eq!(
        raised,
        vec![(true, 100)],
        "value in per-mille of the window"
    );
    let topic = format!("{}/cam1/alarms/invalid_input_rate", agent.settings.prefix);
    assert!(
        watcher
            .on("invalid_input_rate")
            .iter()
            .all(|m| m.topic == topic)
    );

    let scraped = scrape::get(&metrics, "/metrics", None).expect("scrape");
    let samples = Samples::parse(&scraped.body);
    let active = |alarm: &str| {
        samples
            .sum(
                "defect_agent_alarm_active",
                &[("station", "cam1"), ("alarm", alarm)],
            )
            .unwrap_or_else(|| panic!("alarm_active {alarm} missing:\n{}", scraped.body))
    };
    assert_eq!(active("invalid_input_rate"), 1.0);
    assert_eq!(active("no_decision_rate"), 1.0);
    assert_eq!(active("camera_quiet"), 0.0);
    assert_eq!(
        samples.sum("defect_agent_invalid_input_ratio", &[("station", "cam1")]),
        Some(0.1)
    );
    assert_eq!(
        samples.sum(
            "defect_agent_alarms_raised_total",
            &[("alarm", "invalid_input_rate")]
        ),
        Some(1.0)
    );
    if let Err(complaints) = promtool_check(&scraped.body) {
        panic!("{complaints}\nexposition:\n{}", scraped.body);
    }

    // Good frames push the unreadable ones out of the window; the alarms clear once the
    // share is below 3.75 % (the limit less its margin), not at the limit.
    feed(&agent, &watcher, part, &good[..20]);
    assert!(
        watcher.wait_until(WAIT, |m| is_cleared_after_raise(m, "invalid_input_rate")
            && is_cleared_after_raise(m, "no_decision_rate")),
        "alarms not cleared; seen {:?}",
        watcher.on("invalid_input_rate")
    );
    let states = alarm_states(&watcher.messages(), "invalid_input_rate");
    assert_eq!(states.len(), 2, "raised once, cleared once: {states:?}");
    assert_eq!(states[1], (false, 0));
}

#[test]
fn a_reject_rate_outside_its_expected_band_raises_the_reject_rate_alarm() {
    let broker = Mosquitto::start();
    // The sample frames are 80 % defects; this line expects at most 30 % rejects.
    let extra = "[monitor]\nwindow_frames = 30\nreject_rate_band = [0.0, 0.3]\ncamera_quiet_s = 0\n[drift]\nenabled = false\n";
    let (agent, watcher, _) = start(&broker, extra, None);
    feed(&agent, &watcher, 1, &samples());
    assert!(
        watcher.wait_until(WAIT, |m| is_raised(m, "reject_rate")),
        "reject_rate not raised; agent log:\n{}",
        agent.log()
    );
    let states = alarm_states(&watcher.messages(), "reject_rate");
    assert_eq!(states, vec![(true, 800)], "24 of 30 rejected");
    let alarm = watcher
        .on("alarms/reject_rate")
        .last()
        .expect("raised")
        .json();
    assert_eq!(alarm["limit"], 300);
    assert_eq!(alarm["unit"], "permille");
    assert_eq!(alarm["n"], 30);
}

#[test]
fn a_camera_gone_quiet_while_the_line_runs_raises_an_alarm_and_its_next_frame_clears_it() {
    let broker = Mosquitto::start();
    let extra = "[monitor]\ncamera_quiet_s = 2\nline_state = \"mqtt\"\n[drift]\nenabled = false\n";
    let (agent, watcher, metrics) = start(&broker, extra, None);
    let line = format!("{}/cam1/line", agent.settings.prefix);
    // The agent subscribes on connect, before it publishes its alarms' start states.
    assert!(watcher.wait_until(WAIT, |m| count_on(m, "camera_quiet") >= 1));
    let start = watcher.on("alarms/camera_quiet")[0].json();
    assert_eq!(
        (start["active"].as_u64(), start["limit"].as_u64()),
        (Some(0), Some(2))
    );

    // A stopped line is not judged, however long its camera is quiet.
    publish_once(broker.port, &line, b"stopped");
    scrape::wait_for(&metrics, "/metrics", WAIT, |r| {
        Samples::parse(&r.body).sum("defect_agent_line_running", &[("station", "cam1")])
            == Some(0.0)
    });
    // Twice the limit of quiet on a stopped line: no alarm.
    assert!(
        !watcher.wait_until(Duration::from_secs(4), |m| !alarm_states(m, "camera_quiet")
            .is_empty()),
        "camera_quiet raised on a stopped line"
    );

    publish_once(broker.port, &line, b"{\"running\":1}");
    let running_at = std::time::Instant::now();
    assert!(
        watcher.wait_until(WAIT, |m| is_raised(m, "camera_quiet")),
        "camera_quiet not raised; agent log:\n{}",
        agent.log()
    );
    let quiet_for = running_at.elapsed();
    assert!(
        quiet_for >= Duration::from_millis(1900) && quiet_for < Duration::from_secs(10),
        "raised {quiet_for:?} after the line started (limit 2 s, judged every second)"
    );
    let raised = watcher
        .on("alarms/camera_quiet")
        .iter()
        .map(Received::json)
        .find(|j| j["active"] == 1)
        .expect("the raised state");
    assert_eq!(raised["unit"], "s");
    assert_eq!(raised["limit"], 2);

    feed(&agent, &watcher, 1, &samples()[..1]);
    assert!(
        watcher.wait_until(WAIT, |m| is_cleared_after_raise(m, "camera_quiet")),
        "camera_quiet not cleared by a frame"
    );

    // The state is retained: a SCADA client connecting now sees the cleared alarm.
    let filter = format!("{}/cam1/alarms/#", agent.settings.prefix);
    let late = Subscriber::start(broker.port, &filter, Version::V311);
    assert!(
        late.wait_until(WAIT, |m| m.iter().any(|r| r.retain
            && r.topic.ends_with("/alarms/camera_quiet")
            && r.json()["active"] == 0)),
        "no retained cleared state: {:?}",
        late.messages()
    );
}

/// The 30 sample frames' model-input statistics (from `defect-agent classify --json`), as a
/// `[baseline]` section with the shipped bins: the baseline of a line that sees them.
fn baseline_of_the_samples() -> String {
    let defects = ["scratch", "dent", "crack", "stain"];
    let (mut brightness, mut contrast, mut score) =
        (vec![0u64; 32], vec![0u64; 32], vec![0u64; 20]);
    let mut rejected = 0;
    let bin =
        |value: f64, max: f64, bins: usize| ((value / max * bins as f64) as usize).min(bins - 1);
    for json in defect_e2e::classify_samples() {
        let input = &json["input"];
        brightness[bin(input["brightness"].as_f64().expect("brightness"), 256.0, 32)] += 1;
        contrast[bin(input["contrast"].as_f64().expect("contrast"), 128.0, 32)] += 1;
        let top = defects
            .iter()
            .map(|d| json["scores"][*d].as_f64().expect("score"))
            .fold(0.0, f64::max);
        score[bin(top, 1.0, 20)] += 1;
        rejected += u64::from(json["result"] == "reject");
    }
    let list = |counts: &[u64]| {
        counts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[baseline]\nframes = 30\nbrightness = {{ min = 0.0, max = 256.0, counts = [{}] }}\ncontrast = {{ min = 0.0, max = 128.0, counts = [{}] }}\ndefect_score = {{ min = 0.0, max = 1.0, counts = [{}] }}\nreject_rate = {}\n",
        list(&brightness),
        list(&contrast),
        list(&score),
        rejected as f64 / 30.0
    )
}

#[test]
fn frames_darkened_as_under_poor_lighting_raise_drift_within_20_frames_and_normal_frames_clear_it()
{
    // The shipped classifier with the baseline of a line that sees the sample frames.
    let baseline = baseline_of_the_samples();
    let bundle = bundles::shipped_variant(|text| {
        let start = text.find("[baseline]").expect("baseline section");
        let end = text.find("[provenance]").expect("provenance section");
        format!("{}{baseline}\n{}", &text[..start], &text[end..])
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let sha = store.add(&bundle).expect("add");
    store.activate(&sha).expect("activate");

    let broker = Mosquitto::start();
    // Every frame decided while the station drifts is captured for retraining, no other.
    let extra = "[monitor]\ncamera_quiet_s = 0\n[drift]\nwindow_frames = 60\nevery_frames = 10\npsi_alarm = 0.25\npsi_clear = 0.1\n[capture]\nenabled = true\nuncertain_margin = 0.0\nrandom_fraction = 0.0\ndrift_fraction = 1.0\n";
    let (agent, watcher, metrics) = start(&broker, extra, Some(dir.path()));
    let normal = samples();
    let dark: Vec<Vec<u8>> = normal.iter().map(|f| darkened(f)).collect();

    // 120 normal frames: 7 evaluations of a full window, none drifting.
    let mut part = 1;
    for _ in 0..4 {
        part = feed(&agent, &watcher, part, &normal);
    }
    let seen_120 = |m: &[Received]| {
        m.iter()
            .any(|r| r.topic.ends_with("/drift") && r.json()["seen"] == 120)
    };
    assert!(
        watcher.wait_until(WAIT, seen_120),
        "drift evaluations {:?}; agent log:\n{}",
        watcher.on("cam1/drift"),
        agent.log()
    );
    let evaluations = watcher.on("cam1/drift");
    assert_eq!(evaluations.len(), 7, "{evaluations:?}");
    for evaluation in &evaluations {
        let json = evaluation.json();
        assert_eq!(json["drifting"], 0, "{}", evaluation.text);
        assert_eq!(json["n"], 60);
    }
    assert!(alarm_states(&watcher.messages(), "drift").is_empty());

    // Poor lighting: dark frames until drift is raised.
    part = feed(&agent, &watcher, part, &dark[..30]);
    assert!(
        watcher.wait_until(WAIT, |m| is_raised(m, "drift")),
        "drift not raised by 30 dark frames; drift evaluations {:?}",
        watcher.on("cam1/drift")
    );
    let first_drifting = watcher
        .on("cam1/drift")
        .into_iter()
        .map(|r| r.json())
        .find(|j| j["drifting"] == 1)
        .expect("a drifting evaluation");
    let dark_frames = first_drifting["seen"].as_u64().expect("seen") - 120;
    assert!(
        dark_frames <= 20,
        "drift raised after {dark_frames} dark frames: {first_drifting}"
    );
    eprintln!("drift raised after {dark_frames} dark frames: {first_drifting}");
    let worst = first_drifting["worst"].as_str().unwrap_or_default();
    assert!(
        worst == "brightness" || worst == "contrast",
        "{first_drifting}"
    );
    let scraped = scrape::get(&metrics, "/metrics", None).expect("scrape");
    let psi = Samples::parse(&scraped.body)
        .sum(
            "defect_agent_drift_psi",
            &[("station", "cam1"), ("feature", "brightness")],
        )
        .expect("drift_psi");
    assert!(psi >= 0.25, "{psi}");
    if let Err(complaints) = promtool_check(&scraped.body) {
        panic!("{complaints}\nexposition:\n{}", scraped.body);
    }

    // Lighting restored: drift clears once the window is back to normal frames.
    for _ in 0..3 {
        part = feed(&agent, &watcher, part, &normal);
    }
    assert!(
        watcher.wait_until(WAIT, |m| is_cleared_after_raise(m, "drift")),
        "drift not cleared by 90 normal frames; evaluations {:?}",
        watcher.on("cam1/drift")
    );
    let cleared = watcher
        .on("cam1/drift")
        .into_iter()
        .map(|r| r.json())
        .filter(|j| j["seen"].as_u64() > Some(150))
        .find(|j| j["drifting"] == 0)
        .expect("a cleared evaluation");
    let normal_frames = cleared["seen"].as_u64().expect("seen") - 150;
    eprintln!("drift cleared after {normal_frames} normal frames: {cleared}");
    assert!(
        normal_frames <= 70,
        "cleared after {normal_frames} normal frames (window 60)"
    );

    // Captured: the frames decided while drifting, the normal ones included up to the clear;
    // none from before the dark frames (parts 1-120). The last two or three before the clear
    // race it: their capture runs after their outcome went out, and the outcome that clears
    // drift may be judged first (two workers).
    let drifting_until = 150 + normal_frames - 3;
    let scraped = scrape::wait_for(&metrics, "/metrics", WAIT, |r| {
        Samples::parse(&r.body).sum("defect_agent_captured_frames_total", &[("reason", "drift")])
            >= Some(50.0)
    });
    let captured = Samples::parse(&scraped.body);
    assert_eq!(
        captured.sum("defect_agent_captured_frames_total", &[]),
        captured.sum("defect_agent_captured_frames_total", &[("reason", "drift")]),
        "only drift captures"
    );
    // The counter moves when a frame is captured; its files are written just after, by the
    // capture writer: read the store until the normal frames' files are all there.
    let store = agent.state_dir().join("capture");
    let stored = || -> Vec<u64> {
        std::fs::read_dir(&store)
            .expect("capture store")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .map(|e| {
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("JSON");
                assert_eq!(meta["reason"], "drift", "{meta}");
                meta["part"].as_u64().expect("part")
            })
            .collect()
    };
    let until = std::time::Instant::now() + WAIT;
    let mut parts = stored();
    while !(151..=drifting_until).all(|p| parts.contains(&p)) && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        parts = stored();
    }
    assert!(
        parts.iter().all(|p| *p > 120),
        "captured before the drift: {parts:?}"
    );
    assert!(
        (151..=drifting_until).all(|p| parts.contains(&p)),
        "normal frames 151 to {drifting_until} decided while drifting, not all captured: {parts:?}"
    );
}
