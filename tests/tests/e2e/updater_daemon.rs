//! `model-updater run` as a daemon: the retained MQTT `updater` status, a check at once when
//! an update is announced, `model-updater status`, and the stopped status on SIGTERM.

use std::time::Duration;

use defect_e2e::bundles;
use defect_e2e::publisher::OwnRepo;
use defect_e2e::repo_server::RepoServer;
use defect_e2e::subscriber::{Received, publish_once};
use defect_e2e::updater_box::{BoxSettings, EdgeLine, describe};

const WAIT: Duration = Duration::from_secs(60);
const PREFIX: &str = "acme/plant1/assembly/line3/vision";

fn last_status(messages: &[Received]) -> Option<serde_json::Value> {
    messages
        .iter()
        .rev()
        .find(|m| m.topic == format!("{PREFIX}/updater"))
        .map(Received::json)
}

#[test]
fn the_daemon_reports_its_status_retained_and_installs_at_once_when_an_update_is_announced() {
    let repo = OwnRepo::init();
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    line.edge.append_config(&format!(
        "[mqtt]\nport = {}\nclient_id = \"updater-test\"\ntopic_prefix = \"{PREFIX}\"\n",
        line.broker.port
    ));
    let log = line.edge.path().join("daemon.log");
    let mut daemon = line.edge.spawn("run", &log);
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // The first check runs at start: nothing newer, idle, retained.
    let idle_at_1 = |m: &[Received]| {
        last_status(m).is_some_and(|s| {
            s["state"] == "idle"
                && s["current"]["model_version"] == 1
                && s["last_success_ms"].is_u64()
        })
    };
    assert!(
        line.plc.wait_until(WAIT, idle_at_1),
        "log:\n{}",
        daemon_log()
    );

    // Ops publish and announce; the poll interval is an hour, so only the announcement can
    // explain a prompt install.
    let sha = repo.add(&bundles::with_model_version(2), &[]);
    publish_once(
        line.broker.port,
        &format!("{PREFIX}/updater/announce"),
        b"{}",
    );
    let idle_at_2 = |m: &[Received]| {
        last_status(m).is_some_and(|s| s["state"] == "idle" && s["current"]["model_version"] == 2)
    };
    assert!(
        line.plc.wait_until(WAIT, idle_at_2),
        "log:\n{}",
        daemon_log()
    );
    line.wait_for_served_version(2);
    let seen: Vec<String> = line
        .plc
        .messages()
        .iter()
        .filter(|m| m.topic == format!("{PREFIX}/updater"))
        .filter_map(|m| m.json()["state"].as_str().map(str::to_owned))
        .collect();
    for phase in ["checking", "downloading", "trial"] {
        assert!(
            seen.iter().any(|s| s == phase),
            "{phase} missing from {seen:?}"
        );
    }

    // `model-updater status` tells the same story.
    let config = line.edge.config.display().to_string();
    let output = line
        .edge
        .command(&["status", "--config", &config])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        text.contains(&sha) && text.contains("model_version 2"),
        "{text}"
    );

    // SIGTERM: the retained status says stopped.
    let pid = daemon.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = daemon.wait().expect("daemon exit");
    assert!(exit.success(), "{exit:?}; log:\n{}", daemon_log());
    assert!(
        line.plc.wait_until(WAIT, |m| last_status(m)
            .is_some_and(|s| s["state"] == "stopped")),
        "log:\n{}",
        daemon_log()
    );
}

#[test]
fn systemd_hears_ready_then_watchdog_pings_and_stopping_on_sigterm_from_the_updater() {
    use std::os::unix::net::UnixDatagram;
    let repo = OwnRepo::init();
    let server = RepoServer::start(&repo.repo);
    let edge = defect_e2e::updater_box::UpdaterBox::new(&BoxSettings::new(
        &server.url("/"),
        &repo.first_root(),
    ));
    let socket_path = edge.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    let config = edge.path().join("model-updater.toml");
    let log = std::fs::File::create(edge.path().join("daemon.log")).expect("log");
    // As systemd starts it: WATCHDOG_PID names the daemon itself (`exec` keeps the shell's
    // pid), and a 300 ms watchdog is pinged about every 150 ms.
    let updater = edge.command(&[]).get_program().to_owned();
    let mut daemon = std::process::Command::new("sh")
        .arg("-c")
        .arg("export WATCHDOG_PID=$$ WATCHDOG_USEC=300000; exec \"$0\" \"$@\"")
        .arg(updater)
        .args(["run", "--config", &config.display().to_string()])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn model-updater run");
    let daemon_log = || std::fs::read_to_string(edge.path().join("daemon.log")).unwrap_or_default();
    let mut buffer = [0u8; 512];
    let mut read = || {
        let n = socket.recv(&mut buffer).unwrap_or_else(|e| {
            panic!(
                "no notification from the updater: {e}; log:\n{}",
                daemon_log()
            )
        });
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    let first = read();
    assert!(first.contains("READY=1"), "{first}");
    let pings = (0..3)
        .map(|_| read())
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    assert_eq!(
        pings,
        3,
        "the updater did not ping the watchdog; log:\n{}",
        daemon_log()
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut stopping = false;
    for _ in 0..50 {
        if read().contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    let exit = daemon.wait().expect("wait");
    assert!(
        stopping,
        "no STOPPING=1 after SIGTERM; log:\n{}",
        daemon_log()
    );
    assert!(exit.success(), "{exit:?}; log:\n{}", daemon_log());
}
