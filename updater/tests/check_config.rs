//! `model-updater check-config`: the files and folders the configuration names, and the paths
//! it must share with the agent's configuration, are checked as the running user sees them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn check_config(config: &Path, agent: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_model-updater"));
    command.arg("check-config").arg("--config").arg(config);
    if let Some(agent) = agent {
        command.arg("--agent-config").arg(agent);
    }
    command.output().expect("run model-updater")
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A box's folders under `root`: the updater's config (air-gapped when `urls` is false) and
/// the agent's, naming `health` and `store` as its health report and model store.
fn write_box(root: &Path, urls: bool, health: &str, store: &str) -> (PathBuf, PathBuf) {
    let repository = if urls {
        "metadata_url = \"https://updates.example.com/metadata/\"\ntargets_url = \"https://updates.example.com/targets/\"\n"
    } else {
        ""
    };
    let updater = root.join("model-updater.toml");
    std::fs::write(
        &updater,
        format!(
            "[repository]\n{repository}trusted_root = {root_json:?}\n[box]\nmodel = \"m\"\n\
             [paths]\nstate_dir = {state:?}\nmodel_store = {store_dir:?}\n\
             [trial]\nhealth_file = {health_file:?}\n",
            root_json = root.join("root.json"),
            state = root.join("updater-state"),
            store_dir = root.join("models"),
            health_file = root.join("agent/model-health.json"),
        ),
    )
    .expect("updater config");
    let agent = root.join("defect-agent.toml");
    std::fs::write(
        &agent,
        format!(
            "[agent]\nmodel_store = {:?}\nmodel_health_file = {:?}\n",
            root.join(store),
            root.join(health)
        ),
    )
    .expect("agent config");
    (updater, agent)
}

#[test]
fn an_air_gapped_box_with_its_files_and_the_agent_in_agreement_is_ok() {
    let root = tempfile::tempdir().expect("tempdir");
    let (updater, agent) = write_box(root.path(), false, "agent/model-health.json", "models");
    std::fs::write(root.path().join("root.json"), b"{}").expect("root");
    std::fs::create_dir_all(root.path().join("agent")).expect("agent folder");
    let out = check_config(&updater, Some(&agent));
    assert!(out.status.success(), "{}", said(&out));
}

#[test]
fn a_missing_root_of_trust_and_an_agent_reporting_elsewhere_are_each_named() {
    let root = tempfile::tempdir().expect("tempdir");
    let (updater, agent) = write_box(root.path(), true, "state/health.json", "other-models");
    let out = check_config(&updater, Some(&agent));
    assert_eq!(out.status.code(), Some(78), "{}", said(&out));
    let text = said(&out);
    for expected in [
        "repository.trusted_root: ",
        "root.json: does not exist",
        "trial.health_file: ",
        "is not the agent's agent.model_health_file",
        "paths.model_store: ",
        "is not the agent's agent.model_store",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
}

#[test]
fn an_agent_without_a_health_report_is_named() {
    let root = tempfile::tempdir().expect("tempdir");
    let (updater, agent) = write_box(root.path(), true, "agent/model-health.json", "models");
    std::fs::write(root.path().join("root.json"), b"{}").expect("root");
    std::fs::create_dir_all(root.path().join("agent")).expect("agent folder");
    std::fs::write(&agent, "[agent]\n").expect("agent config without the report");
    let out = check_config(&updater, Some(&agent));
    assert_eq!(out.status.code(), Some(78), "{}", said(&out));
    assert!(
        said(&out).contains("sets no agent.model_health_file"),
        "{}",
        said(&out)
    );
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let root = tempfile::tempdir().expect("tempdir");
    let (updater, agent) = write_box(root.path(), false, "agent/model-health.json", "models");
    std::fs::write(root.path().join("root.json"), b"{}").expect("root");
    std::fs::create_dir_all(root.path().join("agent")).expect("agent folder");
    // As `model-updater check-config … | head -0`: the reader is gone before the first write.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_model-updater"))
        .arg("check-config")
        .arg("--config")
        .arg(&updater)
        .arg("--agent-config")
        .arg(&agent)
        .stdout(writer)
        .output()
        .expect("run model-updater");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}
