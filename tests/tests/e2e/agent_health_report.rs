//! The model health report (`agent.model_health_file`): the real agent tells the model updater
//! what it did with the model store's `current` bundle. A valid bundle is reported serving with
//! its digest and model version; one that fails the golden samples is reported refused with
//! the gate's reason while the old model keeps deciding; a bundle an earlier agent died while
//! loading is reported as a second attempt; a bundle refused at start-up is reported once while
//! the shipped bundle serves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use defect_e2e::agent_process::{AgentProcess, AgentSettings, sample_bytes};
use defect_e2e::broker::Mosquitto;
use defect_e2e::bundles::shipped_variant;
use defect_e2e::subscriber::{Received, Subscriber, Version};
use defect_models::health::{self, HealthState, ModelHealth};
use defect_models::store::Store;

const WAIT: Duration = Duration::from_secs(60);

/// A bundle whose golden expectations the model does not meet: the gate refuses it.
fn failing_variant() -> Vec<u8> {
    shipped_variant(|t| {
        t.replace("model_version = 1", "model_version = 3")
            .replacen("expected = [", "expected = [0.5, 0.5, 0.0, 0.0, 0.0] #", 1)
    })
}

/// Adds a bundle to the store, makes it `current` (as the updater does) and returns its digest.
fn install(store: &Path, bytes: &[u8]) -> String {
    let store = Store::open(store).expect("store");
    let sha = store.add(bytes).expect("add");
    store.activate(&sha).expect("activate");
    sha
}

fn shipped_bytes() -> Vec<u8> {
    std::fs::read(defect_e2e::shipped_bundle()).expect("shipped")
}

/// A model store and a state folder for the report, outside the agent's own folder so that
/// they can be prepared before it starts.
struct Folders {
    store: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Folders {
    fn new() -> Folders {
        Folders {
            store: tempfile::tempdir().expect("store tempdir"),
            state: tempfile::tempdir().expect("state tempdir"),
        }
    }

    fn report(&self) -> PathBuf {
        self.state.path().join("model-health.json")
    }

    fn settings(&self, broker: &Mosquitto) -> AgentSettings {
        let mut settings = AgentSettings::new(broker.port);
        settings.model_store = Some(self.store.path().to_owned());
        settings.model_health_file = Some(self.report());
        settings
    }
}

/// Polls the report until `done` holds (every read must be a whole report: the agent replaces
/// it atomically), failing after [`WAIT`].
fn wait_report(
    path: &Path,
    agent: &AgentProcess,
    done: impl Fn(&ModelHealth) -> bool,
) -> ModelHealth {
    let until = Instant::now() + WAIT;
    loop {
        let report = health::read(path).unwrap_or_else(|e| panic!("{e}\nlog:\n{}", agent.log()));
        match report {
            Some(r) if done(&r) => return r,
            last => assert!(
                Instant::now() < until,
                "the expected report did not come within {WAIT:?}; last: {last:?}\nlog:\n{}",
                agent.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn decision_of(messages: &[Received], part: u64) -> Option<serde_json::Value> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with("/decision"))
        .map(Received::json)
        .find(|d| d["part"] == part)
}

/// Drops a sample frame and returns the `mv` of the model that decided it.
fn decided_by(agent: &AgentProcess, plc: &Subscriber, part: u64) -> serde_json::Value {
    agent.drop_frame("cam1", part, &sample_bytes()[0].0);
    assert!(
        plc.wait_until(WAIT, |m| decision_of(m, part).is_some()),
        "part {part} not decided\nlog:\n{}",
        agent.log()
    );
    decision_of(&plc.messages(), part).expect("decision")["mv"].clone()
}

#[test]
fn a_valid_bundle_activated_in_the_store_is_reported_serving_with_its_sha_and_model_version() {
    let broker = Mosquitto::start();
    let folders = Folders::new();
    let first = install(folders.store.path(), &shipped_bytes());
    let settings = folders.settings(&broker);
    let plc = Subscriber::start(broker.port, &format!("{}/#", settings.prefix), Version::V5);
    let agent = AgentProcess::start(settings);
    let pid = agent.pid().expect("agent pid");

    let report = wait_report(&folders.report(), &agent, |r| {
        r.sha256 == first && r.state == HealthState::Serving
    });
    assert_eq!(report.v, health::VERSION);
    assert_eq!(report.model_version, Some(1));
    assert_eq!(report.attempt, 1);
    assert_eq!(report.error, None);
    assert_eq!(report.agent_pid, pid);
    assert!(report.at_ms > 0);

    let second = install(
        folders.store.path(),
        &shipped_variant(|t| t.replace("model_version = 1", "model_version = 2")),
    );
    let report = wait_report(&folders.report(), &agent, |r| {
        r.sha256 == second && r.state == HealthState::Serving
    });
    assert_eq!(report.model_version, Some(2));
    assert_eq!(report.attempt, 1);
    assert_eq!(report.error, None);
    assert_eq!(report.agent_pid, pid);
    // The report tells the truth: the new model decides.
    assert_eq!(decided_by(&agent, &plc, 1), 2);
}

#[test]
fn a_bundle_failing_the_golden_samples_is_reported_refused_and_the_old_model_keeps_deciding() {
    let broker = Mosquitto::start();
    let folders = Folders::new();
    let good = install(folders.store.path(), &shipped_bytes());
    let settings = folders.settings(&broker);
    let plc = Subscriber::start(broker.port, &format!("{}/#", settings.prefix), Version::V5);
    let mut agent = AgentProcess::start(settings);
    wait_report(&folders.report(), &agent, |r| {
        r.sha256 == good && r.state == HealthState::Serving
    });

    let broken = install(folders.store.path(), &failing_variant());
    let report = wait_report(&folders.report(), &agent, |r| {
        r.sha256 == broken && r.state != HealthState::Loading
    });
    assert_eq!(report.state, HealthState::Refused, "{report:?}");
    assert_eq!(
        report.refusal,
        Some(health::Refusal::Rejected),
        "golden samples that do not match are no matter of load: {report:?}"
    );
    assert_eq!(report.model_version, Some(3));
    assert_eq!(report.attempt, 1);
    let error = report.error.clone().expect("a refusal has its reason");
    assert!(error.contains("golden sample"), "{error}");
    assert_eq!(Some(report.agent_pid), agent.pid());

    assert_eq!(
        decided_by(&agent, &plc, 1),
        1,
        "the old model must keep deciding"
    );
    assert!(agent.is_running());
    // The refused bundle is not tried again while it stays current.
    assert_eq!(health::read(&folders.report()).expect("read"), Some(report));
}

#[test]
fn a_restart_after_dying_while_loading_reports_the_second_attempt() {
    let broker = Mosquitto::start();
    let folders = Folders::new();
    let sha = install(folders.store.path(), &shipped_bytes());
    // What an agent that died while validating this bundle leaves behind.
    health::write(
        &folders.report(),
        &ModelHealth {
            v: health::VERSION,
            sha256: sha.clone(),
            state: HealthState::Loading,
            attempt: 1,
            model_version: None,
            error: None,
            refusal: None,
            agent_pid: 1,
            at_ms: 1,
        },
    )
    .expect("write the report of the dead agent");

    let agent = AgentProcess::start(folders.settings(&broker));
    let report = wait_report(&folders.report(), &agent, |r| {
        r.sha256 == sha && r.state == HealthState::Serving
    });
    assert_eq!(report.attempt, 2, "{report:?}");
    assert_eq!(report.model_version, Some(1));
    assert_eq!(Some(report.agent_pid), agent.pid());
    assert!(
        agent.log().contains("died while loading"),
        "log:\n{}",
        agent.log()
    );
}

#[test]
fn a_current_bundle_refused_at_start_up_is_reported_and_the_shipped_bundle_serves() {
    let broker = Mosquitto::start();
    let folders = Folders::new();
    install(folders.store.path(), &shipped_bytes());
    let broken = install(folders.store.path(), &failing_variant());
    let settings = folders.settings(&broker);
    let plc = Subscriber::start(broker.port, &format!("{}/#", settings.prefix), Version::V5);
    let mut agent = AgentProcess::start(settings);

    let report = wait_report(&folders.report(), &agent, |r| {
        r.sha256 == broken && r.state != HealthState::Loading
    });
    assert_eq!(report.state, HealthState::Refused, "{report:?}");
    assert_eq!(report.attempt, 1);
    assert_eq!(report.model_version, Some(3));
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("golden sample")),
        "{report:?}"
    );

    // As before the report existed: the shipped bundle serves and the status says why.
    assert_eq!(decided_by(&agent, &plc, 1), 1);
    assert!(agent.is_running());
    let refused_on_status = |m: &[Received]| {
        m.iter()
            .rev()
            .find(|m| m.topic.ends_with("/status"))
            .map(Received::json)
            .is_some_and(|s| {
                s["model_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("refused"))
            })
    };
    assert!(
        plc.wait_until(WAIT, refused_on_status),
        "log:\n{}",
        agent.log()
    );
    // The watcher does not validate the refused bundle a second time.
    assert!(
        !agent.log().contains("new model refused"),
        "log:\n{}",
        agent.log()
    );
    assert_eq!(health::read(&folders.report()).expect("read"), Some(report));
}
