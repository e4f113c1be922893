//! `defect-agent check-config`: the sample config stays valid, and a config with several
//! mistakes has all of them reported in one run, by key, with exit code 78.
//!
//! Being an integration test of this package also makes `cargo test --workspace` build the
//! `defect-agent` binary that the end-to-end tests in `tests/` run.

use std::path::PathBuf;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_defect-agent"))
        .args(args)
        .output()
        .expect("run defect-agent")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The sample configuration with its folders under `root` instead of `/var/lib`.
fn sample_under(root: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("deploy/defect-agent.toml"))
        .expect("sample config");
    let moved = root.join("var/lib/defect-agent");
    let config = root.join("defect-agent.toml");
    std::fs::write(
        &config,
        text.replace("/var/lib/defect-agent", &moved.display().to_string()),
    )
    .expect("write config");
    config
}

#[test]
fn the_sample_config_in_deploy_is_valid_on_a_box_with_its_folders() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = sample_under(root.path());
    let lib = root.path().join("var/lib/defect-agent");
    for folder in ["incoming/cam1", "models", "state"] {
        std::fs::create_dir_all(lib.join(folder)).expect("folder");
    }
    let out = run(&["check-config", "--config", config.to_str().expect("path")]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("2 station(s)"), "{}", stdout(&out));
}

#[test]
fn folders_and_files_that_are_missing_or_unusable_are_reported_by_key() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = sample_under(root.path());
    let lib = root.path().join("var/lib/defect-agent");
    // The hot folder is missing; the model store is a file; TLS names a CA file that is not
    // there; the state folder's parent cannot hold it (a file).
    std::fs::create_dir_all(&lib).expect("lib");
    std::fs::write(lib.join("models"), b"not a folder").expect("models as a file");
    std::fs::write(lib.join("state"), b"not a folder").expect("state as a file");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text = text.replace(
        "# [mqtt.tls]\n# ca_file = \"/etc/defect-agent/broker-ca.pem\"",
        &format!("[mqtt.tls]\nca_file = {:?}", root.path().join("no-ca.pem")),
    );
    std::fs::write(&config, text).expect("config");
    let out = run(&["check-config", "--config", config.to_str().expect("path")]);
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    for expected in [
        "station[0].hot_folder.path: ",
        "incoming/cam1: does not exist",
        "agent.model_store: ",
        "models is not a folder",
        "agent.state_dir: ",
        "mqtt.tls.ca_file: ",
        "no-ca.pem: does not exist",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
}

#[test]
fn a_config_with_several_mistakes_has_all_of_them_reported_in_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        r#"
[agent]
queue_capacity = 0
decision_deadline_ms = 1
[mqtt]
topic_prefix = "acme/#"
decision_expiry_s = 0
[http]
listen = "not an address"
[[station]]
id = "Cam One"
[station.hot_folder]
path = "/srv/frames"
part_id_pattern = "([0-9]+"
after = "move"
"#,
    )
    .expect("write");
    let out = run(&["check-config", "--config", config.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    let text = stderr(&out);
    for key in [
        "agent.queue_capacity",
        "agent.decision_deadline_ms",
        "mqtt.topic_prefix",
        "mqtt.decision_expiry_s",
        "http.listen",
        "station[0].id",
        "station[0].hot_folder.part_id_pattern",
        "station[0].hot_folder.move_to",
    ] {
        assert!(text.contains(key), "{key} not reported:\n{text}");
    }
    assert!(text.contains("bad.toml"), "the file is not named:\n{text}");
    // `run` refuses the same file before starting anything.
    let out = run(&["run", "--config", config.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
}

#[test]
fn a_typo_in_a_key_is_reported_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("typo.toml");
    std::fs::write(
        &config,
        "[agent]\nqueue_capacty = 4\n[[station]]\nid = \"a\"\n",
    )
    .expect("write");
    let out = run(&["check-config", "--config", config.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(78));
    let text = stderr(&out);
    assert!(
        text.contains("queue_capacty") && text.contains("line 2"),
        "{text}"
    );
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = sample_under(root.path());
    let lib = root.path().join("var/lib/defect-agent");
    for folder in ["incoming/cam1", "models", "state"] {
        std::fs::create_dir_all(lib.join(folder)).expect("folder");
    }
    // As `defect-agent check-config … | head -0`: the reader is gone before the first write.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_defect-agent"))
        .args(["check-config", "--config", config.to_str().expect("path")])
        .stdout(writer)
        .output()
        .expect("run defect-agent");
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}
