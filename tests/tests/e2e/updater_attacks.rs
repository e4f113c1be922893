//! Attacks on the update path, against a repository signed by our own publisher and served by
//! a real HTTP server: each is refused loudly, and `current` keeps naming the verified bundle
//! the agent serves. Clock faults run the real updater under libfaketime.

use defect_e2e::bundles;
use defect_e2e::repo_server::{Fault, RepoServer};
use defect_e2e::updater_box::{
    BoxSettings, EdgeLine, OwnRepo, UpdaterBox, copy_dir, describe, faketime, serve_instead, stderr,
};

fn target_file(repo: &OwnRepo, sha: &str) -> std::path::PathBuf {
    std::fs::read_dir(repo.repo.join("targets"))
        .expect("targets")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(sha))
        })
        .expect("published target")
}

#[test]
fn a_tampered_bundle_is_refused_and_current_is_untouched() {
    let repo = OwnRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), &[]);
    let file = target_file(&repo, &sha);
    let mut bytes = std::fs::read(&file).expect("target");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, bytes).expect("tamper");
    let server = RepoServer::start(&repo.repo);
    let edge = UpdaterBox::new(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let before = edge.current();

    let output = edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr(&output).contains(&format!("the signed metadata says {sha}")),
        "{}",
        describe(&output)
    );
    assert_eq!(edge.current(), before);
    assert!(!edge.store().bundle_path(&sha).exists());
    let status = edge.status().expect("status");
    assert_eq!(status["state"], "error", "{status}");
}

#[test]
fn endless_data_past_the_signed_length_is_refused() {
    let repo = OwnRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), &[]);
    let server = RepoServer::start(&repo.repo);
    server
        .faults()
        .add(Fault::EndlessData.always().on_paths_containing("/targets/"));
    let edge = UpdaterBox::new(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let before = edge.current();

    let output = edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr(&output).contains("more than the signed length"),
        "{}",
        describe(&output)
    );
    assert_eq!(edge.current(), before);
    assert!(!edge.store().bundle_path(&sha).exists());
    let partial = edge.state_dir.join("downloads").join(format!("{sha}.part"));
    assert!(!partial.exists(), "the partial download must be discarded");
}

#[test]
fn a_replay_of_older_metadata_is_refused_as_a_rollback() {
    let repo = OwnRepo::init();
    let old = tempfile::tempdir().expect("old copy");
    repo.snapshot_to(old.path());
    repo.resign_timestamp(&[]);
    repo.resign_timestamp(&[]);
    let served = tempfile::tempdir().expect("served");
    copy_dir(&repo.repo, served.path());
    let server = RepoServer::start(served.path());
    let edge = UpdaterBox::new(&BoxSettings::new(&server.url("/"), &repo.first_root()));

    let output = edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(edge.floor().expect("floor")["timestamp"], 3);

    serve_instead(served.path(), old.path());
    let output = edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr(&output).contains("rollback refused: the repository offers timestamp version 1"),
        "{}",
        describe(&output)
    );
}

#[test]
fn metadata_past_its_expiry_is_refused_as_a_freeze() {
    let repo = OwnRepo::init();
    repo.add(&bundles::with_model_version(2), &[]);
    let server = RepoServer::start(&repo.repo);
    let mut edge = UpdaterBox::new(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    // The server keeps serving the same metadata while the box's time moves past the
    // timestamp's one-day expiry.
    edge.env = faketime("+2d");
    let before = edge.current();

    let output = edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr(&output).to_lowercase().contains("expired"),
        "{}",
        describe(&output)
    );
    assert_eq!(edge.current(), before);
    let status = edge.status().expect("status");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("expired")),
        "{status}"
    );
}

#[test]
fn mix_and_match_of_an_old_targets_file_is_refused() {
    let repo = OwnRepo::init();
    repo.add(&bundles::with_model_version(2), &[]);
    let old_targets = std::fs::read(repo.repo.join("metadata/2.targets.json")).expect("targets 2");
    repo.add(&bundles::with_model_version(3), &[]);
    // The attacker serves the old targets file under the name of the new one.
    std::fs::write(repo.repo.join("metadata/3.targets.json"), old_targets).expect("swap");
    let server = RepoServer::start(&repo.repo);
    let edge = UpdaterBox::new(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let before = edge.current();

    let output = edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr(&output).contains("metadata refused"),
        "{}",
        describe(&output)
    );
    assert_eq!(edge.current(), before);
}

#[test]
fn after_a_key_rotation_an_attacker_with_the_revoked_keys_who_hides_the_new_root_is_refused() {
    let repo = OwnRepo::init();
    // The attacker stole the online keys of the first root.
    let stolen = tempfile::tempdir().expect("stolen");
    copy_dir(&repo.keys, &stolen.path().join("keys"));
    copy_dir(&repo.repo, &stolen.path().join("repo"));
    for role in ["targets", "snapshot", "timestamp"] {
        repo.rotate(role, &[]);
    }
    let served = tempfile::tempdir().expect("served");
    copy_dir(&repo.repo, served.path());
    let server = RepoServer::start(served.path());
    let settings = BoxSettings::new(&server.url("/"), &repo.first_root());
    let edge = UpdaterBox::new(&settings);
    let output = edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let rotated_root = edge.floor().expect("floor")["root"].as_u64().expect("root");
    assert!(rotated_root > 1);

    // The attacker's repository: the first root only (no newer root to find), and a model
    // signed with the revoked keys.
    let attacker = OwnRepo::from_folders(stolen.path().join("repo"), stolen.path().join("keys"));
    let evil = attacker.add(&bundles::with_model_version(9), &[]);
    serve_instead(served.path(), &attacker.repo);

    for round in 0..2 {
        let output = edge.check();
        assert_eq!(
            output.status.code(),
            Some(1),
            "round {round}: {}",
            describe(&output)
        );
        assert!(
            stderr(&output).contains("metadata refused"),
            "{}",
            describe(&output)
        );
        assert_ne!(edge.current().0, evil);
        assert!(!edge.store().bundle_path(&evil).exists());
    }

    // Control: a box that never learnt the new root (it starts from the shipped one) falls for
    // it, which shows the attack is real. Its trial times out (no agent), which is how we see
    // that it installed the attacker's model.
    let mut naive = settings.clone();
    naive.trial_timeout_s = 1;
    let naive = UpdaterBox::new(&naive);
    let output = naive.check();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!(
            "reverted surface-classifier model_version 9 ({evil})"
        )),
        "{}",
        describe(&output)
    );
}

#[test]
fn a_clock_at_1970_refuses_to_judge_expiry() {
    let repo = OwnRepo::init();
    repo.add(&bundles::with_model_version(2), &[]);
    let server = RepoServer::start(&repo.repo);
    let mut edge = UpdaterBox::new(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    edge.env = faketime("@1970-01-01 00:00:00");
    let before = edge.current();

    let output = edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr(&output).contains("before this release"),
        "{}",
        describe(&output)
    );
    assert_eq!(edge.current(), before);
    assert!(
        server.requests().is_empty(),
        "nothing is fetched with an implausible clock"
    );
}

#[test]
fn a_clock_in_the_future_then_back_is_a_loud_recoverable_error() {
    let repo = OwnRepo::init();
    repo.add(&bundles::with_model_version(2), &[]);
    let server = RepoServer::start(&repo.repo);
    let mut line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));

    // Years ahead: every metadata file looks expired; loud, nothing installed.
    line.edge.env = faketime("+3y");
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr(&output).to_lowercase().contains("expired"),
        "{}",
        describe(&output)
    );
    assert_eq!(line.edge.current().1, 1);

    // Two hours ahead: still within expiry; the check succeeds and records that time.
    line.edge.env = faketime("+2h");
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(line.edge.current().1, 2);
    line.wait_for_served_version(2);

    // Back to the true time: the step back is reported loudly, and updates go on.
    line.edge.env.clear();
    repo.add(&bundles::with_model_version(3), &[]);
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        stderr(&output).contains("stepped back"),
        "{}",
        describe(&output)
    );
    assert_eq!(line.edge.current().1, 3);
    let status = line.edge.status().expect("status");
    assert!(
        status["clock_warning"]
            .as_str()
            .is_some_and(|w| w.contains("stepped back")),
        "{status}"
    );
    line.wait_for_served_version(3);
}

#[test]
fn a_corrupt_trust_record_followed_by_a_rollback_replay_installs_nothing_older() {
    let repo = OwnRepo::init();
    repo.add(&bundles::with_model_version(2), &[]);
    let old = tempfile::tempdir().expect("old");
    repo.snapshot_to(old.path());
    repo.add(&bundles::with_model_version(3), &[]);
    let served = tempfile::tempdir().expect("served");
    copy_dir(&repo.repo, served.path());
    let server = RepoServer::start(served.path());
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let installed = line.edge.current();
    assert_eq!(installed.1, 3);

    // A torn anti-rollback record, then the attacker replays the older repository state.
    std::fs::write(
        line.edge.state_dir.join("trust/floor.json"),
        b"{\"v\":1,\"root\":",
    )
    .expect("corrupt");
    serve_instead(served.path(), old.path());
    let before = server.requests().len();
    let output = line.edge.check();
    let log = stderr(&output);
    assert!(log.contains("damaged"), "{}", describe(&output));
    assert!(log.contains("never goes down"), "{}", describe(&output));
    assert_eq!(line.edge.current(), installed);
    assert!(
        server.requests()[before..]
            .iter()
            .all(|r| !r.path.starts_with("/targets/")),
        "the older model must not even be downloaded"
    );
    let floor = line.edge.floor().expect("rebuilt floor");
    assert_eq!(floor["model_versions"]["surface-classifier"], 3, "{floor}");
}

#[test]
fn a_flaky_server_still_delivers_a_verified_install() {
    let repo = OwnRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), &[]);
    let server = RepoServer::start(&repo.repo);
    server
        .faults()
        .add(
            Fault::unavailable(None)
                .times(2)
                .on_paths_containing("/targets/"),
        )
        .add(
            Fault::ResetAfter(300_000)
                .times(1)
                .on_paths_containing("/targets/"),
        )
        .add(Fault::IgnoreRange.times(1).on_paths_containing("/targets/"));
    // Four attempts per check (the box's setting): two 503s, a reset mid-body, then a resume
    // that the server answers with the whole file.
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));

    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(line.edge.current(), (sha, 2));
    let target_requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/targets/"))
        .collect();
    let resumed_from = target_requests.iter().find_map(|r| {
        r.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse::<u64>()
            .ok()
    });
    assert!(
        resumed_from.is_some_and(|start| start > 0 && start <= 300_000),
        "resumed with a Range from what had arrived before the reset: {target_requests:#?}"
    );
    line.wait_for_served_version(2);
}
