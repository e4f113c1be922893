//! The metrics endpoints of the real daemons: `defect-agent run` fed the sample frames and a
//! corrupt file, against a real Mosquitto; `model-updater run` against a repository made by
//! `defect-central repo`. Every count is checked against what happened, and every exposition
//! with `promtool check metrics` (a missing promtool fails the test: `apt-get install -y
//! prometheus`).

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::Duration;

use defect_e2e::agent_process::{AgentProcess, AgentSettings, sample_bytes};
use defect_e2e::broker::{Mosquitto, free_port};
use defect_e2e::publisher::OwnRepo;
use defect_e2e::repo_server::RepoServer;
use defect_e2e::scrape::{self, Response, Samples, promtool_check};
use defect_e2e::subscriber::{Subscriber, Version, count_on};
use defect_e2e::updater_box::{BoxSettings, UpdaterBox};

const WAIT: Duration = Duration::from_secs(60);

/// What a scrape in the classic text format holds, with a failure message naming the sample.
struct Scraped {
    response: Response,
    samples: Samples,
}

impl Scraped {
    fn from(response: Response) -> Scraped {
        let samples = Samples::parse(&response.body);
        Scraped { response, samples }
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .sum(name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} missing from:\n{}", self.response.body))
    }

    fn assert_promtool_accepts(&self) {
        assert!(
            self.response
                .content_type
                .starts_with("text/plain; version=0.0.4"),
            "{}",
            self.response.content_type
        );
        if let Err(complaints) = promtool_check(&self.response.body) {
            panic!("{complaints}\nexposition:\n{}", self.response.body);
        }
    }
}

/// A metric value read from a scrape answer, for waiting on it.
fn sample(response: &Response, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    Samples::parse(&response.body).sum(name, labels)
}

#[test]
fn the_agent_counts_every_frame_decision_and_unreadable_image_it_was_sent() {
    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    let address = format!("127.0.0.1:{}", free_port());
    settings.metrics = Some(address.clone());
    let plc = Subscriber::start(
        broker.port,
        &format!("{}/+/decision", settings.prefix),
        Version::V5,
    );
    let agent = AgentProcess::start(settings);
    scrape::wait_for(&address, "/readyz", WAIT, |r| r.status == 200);
    let health = scrape::get(&address, "/healthz", None).expect("GET /healthz");
    assert_eq!(health.status, 200, "{health:?}");

    let samples = sample_bytes();
    for (index, (bytes, _)) in samples.iter().enumerate() {
        agent.drop_frame("cam1", index as u64 + 1, bytes);
    }
    let corrupt = format!("part-{}.jpg", samples.len() + 1);
    agent.write_file("cam1", &corrupt, b"this is not a JPEG\n");
    let frames = samples.len() + 1;
    assert!(
        plc.wait_until(WAIT, |m| count_on(m, "decision") >= frames),
        "decisions missing; agent log:\n{}",
        agent.log()
    );

    let frames = frames as f64;
    let decided = samples.len() as f64;
    // The session records a decision's latencies once it handed the decision to the MQTT
    // client, which may deliver it to the PLC a moment before that.
    let published = |r: &Response| {
        let publish = [("stage", "publish")];
        sample(r, "defect_agent_stage_duration_seconds_count", &publish) == Some(frames)
            && sample(r, "defect_agent_end_to_end_latency_seconds_count", &[]) == Some(frames)
    };
    let scraped = Scraped::from(scrape::wait_for(&address, "/metrics", WAIT, published));
    assert_eq!(
        scraped.value("defect_agent_frames_received_total", &[("station", "cam1")]),
        frames
    );
    let mut by_label: BTreeMap<&str, f64> = BTreeMap::new();
    for (_, label) in &samples {
        *by_label.entry(label.as_str()).or_default() += 1.0;
    }
    let passes = by_label.get("good").copied().unwrap_or_default();
    assert_eq!(
        scraped.value("defect_agent_decisions_total", &[("result", "pass")]),
        passes
    );
    assert_eq!(
        scraped.value("defect_agent_decisions_total", &[("result", "reject")]),
        decided - passes
    );
    for (label, count) in &by_label {
        let labels = [("station", "cam1"), ("class", *label)];
        assert_eq!(
            scraped.value("defect_agent_decisions_total", &labels),
            *count,
            "class {label}"
        );
    }
    for reason in [
        "queue_full",
        "no_model",
        "unreadable_image",
        "inference_error",
        "deadline",
        "shutting_down",
        "internal_error",
        "quarantined",
    ] {
        let expected = if reason == "unreadable_image" {
            1.0
        } else {
            0.0
        };
        let labels = [("station", "cam1"), ("reason", reason)];
        assert_eq!(
            scraped.value("defect_agent_no_decisions_total", &labels),
            expected,
            "reason {reason}"
        );
    }
    // The model ran on every sample frame, not on the corrupt file; every frame's decision
    // was published.
    for (stage, count) in [
        ("decode", decided),
        ("preprocess", decided),
        ("inference", decided),
        ("publish", frames),
    ] {
        let labels = [("stage", stage)];
        assert_eq!(
            scraped.value("defect_agent_stage_duration_seconds_count", &labels),
            count,
            "stage {stage}"
        );
        let inf = [("stage", stage), ("le", "+Inf")];
        assert_eq!(
            scraped.value("defect_agent_stage_duration_seconds_bucket", &inf),
            count
        );
        assert!(scraped.value("defect_agent_stage_duration_seconds_sum", &labels) > 0.0);
    }
    assert_eq!(
        scraped.value("defect_agent_end_to_end_latency_seconds_count", &[]),
        frames
    );
    assert_eq!(scraped.value("defect_agent_queue_depth_frames", &[]), 0.0);
    assert_eq!(scraped.value("defect_agent_model_version", &[]), 1.0);
    assert_eq!(
        scraped.value(
            "defect_agent_model_info",
            &[("name", "surface-classifier"), ("version", "1.0.0")]
        ),
        1.0
    );
    assert_eq!(scraped.value("defect_agent_broker_connected", &[]), 1.0);
    assert_eq!(scraped.value("defect_agent_ready", &[]), 1.0);
    assert!(scraped.value("defect_agent_result_log_backlog_entries", &[]) <= frames);
    assert_eq!(
        scraped.value("defect_agent_result_log_dropped_entries_total", &[]),
        0.0
    );
    assert_eq!(
        scraped.value("defect_agent_decisions_not_sent_total", &[]),
        0.0
    );
    assert_eq!(scraped.value("defect_agent_late_results_total", &[]), 0.0);
    assert_eq!(
        scraped.value("defect_agent_quarantined_frames", &[("station", "cam1")]),
        0.0
    );
    scraped.assert_promtool_accepts();

    // Prometheus asks for OpenMetrics and gets it.
    let openmetrics = scrape::get(
        &address,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .expect("GET /metrics as OpenMetrics");
    assert!(
        openmetrics
            .content_type
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{openmetrics:?}"
    );
    assert!(
        openmetrics.body.ends_with("# EOF\n"),
        "{}",
        openmetrics.body
    );
    assert!(
        openmetrics
            .body
            .contains("# TYPE defect_agent_frames_received counter\n"),
        "{}",
        openmetrics.body
    );
}

#[test]
fn readyz_is_503_while_the_broker_is_unreachable_and_healthz_still_answers() {
    // Nothing listens on this port: the agent serves its model but never reaches a broker.
    let mut settings = AgentSettings::new(free_port());
    let address = format!("127.0.0.1:{}", free_port());
    settings.metrics = Some(address.clone());
    let agent = AgentProcess::start(settings);
    let response = scrape::wait_for(&address, "/metrics", WAIT, |r| {
        sample(r, "defect_agent_model_version", &[]) == Some(1.0)
    });
    let scraped = Scraped::from(response);
    assert_eq!(scraped.value("defect_agent_broker_connected", &[]), 0.0);
    assert_eq!(scraped.value("defect_agent_ready", &[]), 0.0);
    let ready = scrape::get(&address, "/readyz", None).expect("GET /readyz");
    assert_eq!(ready.status, 503, "{ready:?}; log:\n{}", agent.log());
    let health = scrape::get(&address, "/healthz", None).expect("GET /healthz");
    assert_eq!(health.status, 200, "{health:?}");
    scraped.assert_promtool_accepts();
}

/// The updater daemon, killed if the test fails before stopping it.
struct Daemon(Option<Child>);

impl Daemon {
    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("daemon running");
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(term.success());
        child.wait().expect("daemon exit")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_updater_daemon_reports_idle_and_one_up_to_date_check_after_its_first_check() {
    let repo = OwnRepo::init();
    let server = RepoServer::start(&repo.repo);
    let edge = UpdaterBox::new(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let address = format!("127.0.0.1:{}", free_port());
    edge.append_config(&format!("[metrics]\nlisten = {address:?}\n"));
    let log = edge.path().join("daemon.log");
    let mut daemon = Daemon(Some(edge.spawn("run", &log)));

    // The first check runs at start; the next is an hour away.
    let response = scrape::wait_for(&address, "/metrics", WAIT, |r| {
        sample(
            r,
            "model_updater_checks_total",
            &[("outcome", "up_to_date")],
        ) == Some(1.0)
    });
    let scraped = Scraped::from(response);
    assert_eq!(
        scraped.value("model_updater_state", &[("state", "idle")]),
        1.0
    );
    assert_eq!(
        scraped.value("model_updater_state", &[]),
        1.0,
        "one phase at a time"
    );
    for outcome in ["installed", "reverted", "offline", "error"] {
        assert_eq!(
            scraped.value("model_updater_checks_total", &[("outcome", outcome)]),
            0.0,
            "outcome {outcome}"
        );
    }
    assert_eq!(scraped.value("model_updater_model_version", &[]), 1.0);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    for name in [
        "model_updater_last_check_timestamp_seconds",
        "model_updater_last_success_timestamp_seconds",
    ] {
        let at = scraped.value(name, &[]);
        assert!(
            at > now_s - 600.0 && at <= now_s + 1.0,
            "{name} {at}, now {now_s}"
        );
    }
    assert_eq!(scraped.value("model_updater_bad_versions", &[]), 0.0);
    assert_eq!(
        scraped.value("model_updater_downloaded_bytes_total", &[]),
        0.0
    );
    scraped.assert_promtool_accepts();
    let health = scrape::get(&address, "/healthz", None).expect("GET /healthz");
    assert_eq!(health.status, 200, "{health:?}");

    let exit = daemon.terminate();
    assert!(
        exit.success(),
        "{exit:?}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
