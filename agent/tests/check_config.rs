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

#[test]
fn the_sample_config_in_deploy_is_valid() {
    let sample = repo_root().join("deploy/defect-agent.toml");
    let out = run(&["check-config", "--config", sample.to_str().expect("path")]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("2 station(s)"), "{}", stdout(&out));
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
