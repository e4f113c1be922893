//! The model in service and systemd: the agent serves the model store's `current` bundle,
//! swaps in a new one between frames, refuses one that fails validation (the old one keeps
//! serving and the status says why), and tells systemd when it is ready and when it stops.

use std::path::Path;
use std::time::Duration;

use defect_e2e::agent_process::{AgentProcess, AgentSettings, sample_bytes};
use defect_e2e::broker::Mosquitto;
use defect_e2e::bundles::shipped_variant;
use defect_e2e::subscriber::{Received, Subscriber, Version};
use defect_models::store::Store;

const WAIT: Duration = Duration::from_secs(60);

fn install(store: &Path, bytes: &[u8]) {
    let store = Store::open(store).expect("store");
    let sha = store.add(bytes).expect("add");
    store.activate(&sha).expect("activate");
}

fn last_json(messages: &[Received], suffix: &str) -> Option<serde_json::Value> {
    messages
        .iter()
        .rev()
        .find(|m| m.topic.ends_with(suffix))
        .map(Received::json)
}

fn decision_of(messages: &[Received], part: u64) -> Option<serde_json::Value> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with("/decision"))
        .map(Received::json)
        .find(|d| d["part"] == part)
}

#[test]
fn a_new_current_bundle_is_swapped_in_and_one_failing_validation_is_refused() {
    let broker = Mosquitto::start();
    let store_dir = tempfile::tempdir().expect("tempdir");
    install(
        store_dir.path(),
        &std::fs::read(defect_e2e::shipped_bundle()).expect("shipped"),
    );
    let mut settings = AgentSettings::new(broker.port);
    settings.model_store = Some(store_dir.path().to_owned());
    let plc = Subscriber::start(broker.port, &format!("{}/#", settings.prefix), Version::V5);
    let mut agent = AgentProcess::start(settings);
    let frame = &sample_bytes()[0].0;
    let model_version = |m: &[Received]| last_json(m, "/model").map(|v| v["mv"].clone());

    assert!(
        plc.wait_until(WAIT, |m| model_version(m) == Some(1.into())),
        "log:\n{}",
        agent.log()
    );
    agent.drop_frame("cam1", 1, frame);
    assert!(plc.wait_until(WAIT, |m| decision_of(m, 1).is_some()));
    assert_eq!(decision_of(&plc.messages(), 1).expect("decision")["mv"], 1);

    let newer = shipped_variant(|t| t.replace("model_version = 1", "model_version = 2"));
    install(store_dir.path(), &newer);
    assert!(
        plc.wait_until(WAIT, |m| model_version(m) == Some(2.into())),
        "log:\n{}",
        agent.log()
    );
    agent.drop_frame("cam1", 2, frame);
    assert!(plc.wait_until(WAIT, |m| decision_of(m, 2).is_some()));
    assert_eq!(decision_of(&plc.messages(), 2).expect("decision")["mv"], 2);

    // Golden expectations that the model does not meet: the gate refuses the bundle.
    let broken = shipped_variant(|t| {
        t.replace("model_version = 1", "model_version = 3")
            .replacen("expected = [", "expected = [0.5, 0.5, 0.0, 0.0, 0.0] #", 1)
    });
    install(store_dir.path(), &broken);
    let refused = |m: &[Received]| {
        last_json(m, "/status").is_some_and(|s| {
            s["state"] == "online"
                && s["model_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("refused"))
        })
    };
    assert!(plc.wait_until(WAIT, refused), "log:\n{}", agent.log());
    agent.drop_frame("cam1", 3, frame);
    assert!(plc.wait_until(WAIT, |m| decision_of(m, 3).is_some()));
    assert_eq!(decision_of(&plc.messages(), 3).expect("decision")["mv"], 2);
    assert!(agent.is_running());
    assert!(agent.log().contains("refused"), "log:\n{}", agent.log());
}

#[test]
fn systemd_hears_ready_once_the_model_is_loaded_then_watchdog_pings_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut settings = AgentSettings::new(broker.port);
    settings
        .env
        .push(("NOTIFY_SOCKET".into(), socket_path.display().to_string()));
    // A 300 ms watchdog: an idle, healthy pipeline pings about every 100 ms.
    settings.watchdog_usec = Some(300_000);
    let mut agent = AgentProcess::start(settings);
    let mut buffer = [0u8; 512];
    let mut read = || {
        let n = socket
            .recv(&mut buffer)
            .expect("a notification from the agent");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    let first = read();
    assert!(first.contains("READY=1"), "{first}");
    assert!(
        agent.log().contains("model validated"),
        "READY before the model was validated:\n{}",
        agent.log()
    );
    let pings = (0..3)
        .map(|_| read())
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    assert_eq!(pings, 3, "the idle agent did not ping the watchdog");
    let status = agent.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let mut stopping = false;
    for _ in 0..20 {
        if read().contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
}
