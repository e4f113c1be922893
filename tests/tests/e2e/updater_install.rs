//! The update path end to end: a repository signed by `defect-central repo`, served over real
//! HTTP; the real `model-updater` verifies, downloads, installs and tries each version; the real
//! `defect-agent` validates it and reports its verdict; the updater commits or reverts.

use defect_e2e::bundles;
use defect_e2e::repo_server::RepoServer;
use defect_e2e::updater_box::{BoxSettings, EdgeLine, OwnRepo, copy_dir, describe};

#[test]
fn a_published_model_is_verified_downloaded_tried_by_the_agent_and_committed() {
    let repo = OwnRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), &["--lines", "line3"]);
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));

    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(line.edge.current(), (sha.clone(), 1 + 1));
    line.wait_for_served_version(2);

    let status = line.edge.status().expect("status");
    assert_eq!(status["state"], "idle", "{status}");
    assert_eq!(status["current"]["sha256"], sha.as_str());
    assert_eq!(status["last_error"], serde_json::Value::Null);
    let floor = line.edge.floor().expect("floor");
    assert_eq!(floor["model_versions"]["surface-classifier"], 2, "{floor}");
    let state = line.edge.state().expect("state");
    assert_eq!(state["trial"], serde_json::Value::Null, "{state}");

    // Nothing newer: a second check downloads nothing.
    let before = server.requests().len();
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        server.requests()[before..]
            .iter()
            .all(|r| !r.path.starts_with("/targets/")),
        "no target download expected"
    );
}

#[test]
fn a_bundle_the_agent_refuses_is_reverted_marked_bad_and_never_retried() {
    let repo = OwnRepo::init();
    let bad_sha = repo.add(&bundles::failing_gate(2), &[]);
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let (factory_sha, _) = line.edge.current();

    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert_eq!(line.edge.current(), (factory_sha.clone(), 1));
    let state = line.edge.state().expect("state");
    assert!(
        state["bad"][&bad_sha]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused")),
        "{state}"
    );
    assert!(
        line.edge.status().expect("status")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("reverted"))
    );
    assert!(!line.edge.store().bundle_path(&bad_sha).exists());
    assert!(line.agent.log().contains("refused"));

    // Never retried: the next check does not download it again.
    let before = server.requests().len();
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("marked bad"),
        "{}",
        describe(&output)
    );
    assert!(
        server.requests()[before..]
            .iter()
            .all(|r| !r.path.starts_with("/targets/")),
        "a bad version must not be downloaded again"
    );
    assert_eq!(line.edge.current(), (factory_sha, 1));
}

#[test]
fn a_repository_copied_to_a_usb_stick_installs_with_the_same_verification() {
    let repo = OwnRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), &[]);
    let usb = tempfile::tempdir().expect("usb");
    copy_dir(&repo.repo, usb.path());
    let tampered = tempfile::tempdir().expect("tampered usb");
    copy_dir(&repo.repo, tampered.path());
    let target = tampered
        .path()
        .join("targets")
        .join(format!("{sha}.surface-classifier-2.dmb"));
    let mut bytes = std::fs::read(&target).expect("target on the copy");
    let last = bytes.len() - 100;
    bytes[last] ^= 0x55;
    std::fs::write(&target, bytes).expect("tamper");

    let line = EdgeLine::start(&BoxSettings::new("http://127.0.0.1:9/", &repo.first_root()));
    let (factory_sha, _) = line.edge.current();

    let output = line.edge.install_from(tampered.path());
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("sha256"),
        "{}",
        describe(&output)
    );
    assert_eq!(line.edge.current(), (factory_sha, 1));

    let output = line.edge.install_from(usb.path());
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(line.edge.current(), (sha, 2));
    line.wait_for_served_version(2);
}

#[test]
fn an_unreachable_server_is_reported_quietly_as_offline() {
    let repo = OwnRepo::init();
    let server = RepoServer::start(&repo.repo);
    let url = server.url("/");
    drop(server);
    let edge =
        defect_e2e::updater_box::UpdaterBox::new(&BoxSettings::new(&url, &repo.first_root()));

    let output = edge.check();
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("ERROR"),
        "offline is not an error: {stderr}"
    );
    let status = edge.status().expect("status");
    assert_eq!(status["state"], "offline", "{status}");
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
    assert_eq!(edge.current().1, 1);
}
