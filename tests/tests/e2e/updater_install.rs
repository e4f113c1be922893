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
