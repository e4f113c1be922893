//! The update path end to end from other sources than a healthy HTTP server: a repository
//! copied to a USB stick and an unreachable server. Installing from a served repository,
//! trying and committing or reverting is in `updater_attacks.rs`, for each publisher.

use defect_e2e::bundles;
use defect_e2e::publisher::OwnRepo;
use defect_e2e::repo_server::RepoServer;
use defect_e2e::updater_box::{BoxSettings, EdgeLine, copy_dir, describe};

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
fn a_version_marked_bad_is_installed_again_after_forget_bad() {
    let repo = OwnRepo::init();
    let bad_sha = repo.add(&bundles::failing_gate(2), &[]);
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let config = line.edge.path().join("model-updater.toml");
    let config = config.display().to_string();

    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let state = line.edge.state().expect("state");
    assert!(state["bad"][&bad_sha].is_object(), "{state}");
    // Marked bad: the next check does not even download it.
    let before = server.requests().len();
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(defect_e2e::updater_box::no_target_download_since(
        &server, before
    ));

    let output = line
        .edge
        .command(&["forget-bad", "3", "--config", &config])
        .output()
        .expect("run forget-bad");
    assert_eq!(
        output.status.code(),
        Some(1),
        "nothing matches 3: {}",
        describe(&output)
    );
    let output = line
        .edge
        .command(&["forget-bad", &bad_sha[..12], "--config", &config])
        .output()
        .expect("run forget-bad");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains(&format!("forgetting model_version 2 ({bad_sha})")),
        "{}",
        describe(&output)
    );
    // Forgotten: the next check downloads and tries it again (and the gate refuses it again).
    let before = server.requests().len();
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(!defect_e2e::updater_box::no_target_download_since(
        &server, before
    ));
}

#[test]
fn a_usb_path_without_a_repository_says_so_and_exits_as_offline() {
    let repo = OwnRepo::init();
    let edge = defect_e2e::updater_box::UpdaterBox::new(&BoxSettings::new(
        "http://127.0.0.1:9/",
        &repo.first_root(),
    ));
    let empty = tempfile::tempdir().expect("an empty stick");
    for (path, what) in [
        (empty.path().join("not-mounted"), "does not exist"),
        (empty.path().to_owned(), "has no metadata/ folder"),
    ] {
        let output = edge.install_from(&path);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
        assert!(
            stderr.contains(&format!("no repository at {}", path.display()))
                && stderr.contains(what),
            "{}",
            describe(&output)
        );
        assert!(
            !stderr.contains("refused"),
            "not a security refusal: {stderr}"
        );
    }
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
