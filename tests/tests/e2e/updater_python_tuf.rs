//! The update client against repositories built by python-tuf 7 (an independent TUF
//! implementation, `tests/python/tuf_publisher.py`) rather than by our own publisher: the real
//! `model-updater check` binary fetches from a real HTTP server, the real agent tries what gets
//! installed, and the attacks of `updater_attacks.rs` are refused the same way when the
//! metadata was written by someone else's code.

use std::path::PathBuf;

use defect_e2e::bundles;
use defect_e2e::python_tuf::publisher_json;
use defect_e2e::repo_server::{Fault, RepoServer};
use defect_e2e::updater_box::{
    BoxSettings, EdgeLine, UpdaterBox, copy_dir, describe, no_target_download_since, serve_instead,
    stderr,
};
use serde_json::Value;

/// The model the box runs and the repository publishes.
const MODEL: &str = "surface-classifier";

/// A repository and its keys, built by `tuf_publisher.py` (python-tuf).
struct PyRepo {
    dir: tempfile::TempDir,
    /// The repository folder (`metadata/`, `targets/`): what the server serves.
    repo: PathBuf,
    /// The keys folder (`*.pem`).
    keys: PathBuf,
}

impl PyRepo {
    /// `init`: a 2-of-3 root, one key for each other role, an empty targets version 1.
    fn init() -> PyRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = PyRepo {
            repo: dir.path().join("repo"),
            keys: dir.path().join("keys"),
            dir,
        };
        let init = repo.run("init", &[]);
        assert_eq!(init["versions"]["root"], 1, "{init}");
        repo
    }

    /// `tuf_publisher.py COMMAND --repo … --keys … EXTRA…`; the JSON it prints.
    fn run(&self, command: &str, extra: &[&str]) -> Value {
        let repo = self.repo.display().to_string();
        let keys = self.keys.display().to_string();
        let mut args = vec![command, "--repo", &repo, "--keys", &keys];
        args.extend_from_slice(extra);
        publisher_json(&args)
    }

    /// `add-target` of bundle bytes as `surface-classifier-<model_version>.dmb` claiming
    /// `model_version`; returns the bundle's SHA-256.
    fn add(&self, bytes: &[u8], model_version: u64, extra: &[&str]) -> String {
        self.publish(
            &format!("{MODEL}-{model_version}.dmb"),
            bytes,
            model_version,
            extra,
        )
    }

    /// `add-target` of bundle bytes under target name `name` with custom `model_version`
    /// (python-tuf checks nothing about versions); returns the bundle's SHA-256.
    fn publish(&self, name: &str, bytes: &[u8], model_version: u64, extra: &[&str]) -> String {
        let sha = defect_models::bundle::sha256_hex(bytes);
        let file = bundles::write(self.dir.path(), &format!("{sha}.dmb"), bytes);
        let file = file.display().to_string();
        let model_version = model_version.to_string();
        let version = format!("{model_version}.0.0");
        let mut args = vec![
            "--bundle",
            &file,
            "--name",
            name,
            "--model",
            MODEL,
            "--model-version",
            &model_version,
            "--version",
            &version,
        ];
        args.extend_from_slice(extra);
        let added = self.run("add-target", &args);
        assert_eq!(added["sha256"], sha.as_str(), "{added}");
        sha
    }

    /// The root a box ships with (version 1).
    fn first_root(&self) -> PathBuf {
        self.repo.join("metadata/1.root.json")
    }

    /// Where python-tuf stored the target file of `name` with digest `sha`.
    fn target_file(&self, sha: &str, name: &str) -> PathBuf {
        self.repo.join("targets").join(format!("{sha}.{name}"))
    }
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_python_tuf_repository_model_is_installed_tried_by_the_agent_and_committed() {
    let repo = PyRepo::init();
    let sha = repo.add(
        &bundles::with_model_version(2),
        2,
        &["--lines", "line3", "--stations", "cam1,cam2"],
    );
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));

    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        stdout(&output).contains(&format!("installed {MODEL} model_version 2 ({sha})")),
        "{}",
        describe(&output)
    );
    assert_eq!(line.edge.current(), (sha.clone(), 2));
    line.wait_for_served_version(2);

    let status = line.edge.status().expect("status");
    assert_eq!(status["state"], "idle", "{status}");
    assert_eq!(status["current"]["sha256"], sha.as_str(), "{status}");
    assert_eq!(status["last_error"], Value::Null, "{status}");
    let floor = line.edge.floor().expect("floor");
    assert_eq!(floor["model_versions"][MODEL], 2, "{floor}");
    assert_eq!(floor["timestamp"], 2, "{floor}");
    let state = line.edge.state().expect("state");
    assert_eq!(state["trial"], Value::Null, "{state}");
}

#[test]
fn after_a_python_tuf_root_key_rotation_the_box_follows_root_1_to_2_and_still_installs() {
    let repo = PyRepo::init();
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(line.edge.floor().expect("floor")["root"], 1);

    let rotated = repo.run("rotate-root-key", &[]);
    assert_eq!(rotated["versions"]["root"], 2, "{rotated}");
    let sha = repo.add(&bundles::with_model_version(2), 2, &[]);

    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let floor = line.edge.floor().expect("floor");
    assert_eq!(floor["root"], 2, "{floor}");
    assert!(
        line.edge
            .state_dir
            .join("trust/roots/2.root.json")
            .is_file(),
        "the rotated root joins the box's root history"
    );
    assert_eq!(line.edge.current(), (sha, 2));
    line.wait_for_served_version(2);
}

#[test]
fn a_tampered_bundle_in_a_python_tuf_repository_is_refused_and_current_is_untouched() {
    let repo = PyRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), 2, &[]);
    let file = repo.target_file(&sha, &format!("{MODEL}-2.dmb"));
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
fn endless_data_past_the_python_tuf_signed_length_is_refused() {
    let repo = PyRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), 2, &[]);
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
fn a_replay_of_older_python_tuf_metadata_is_refused_as_a_rollback() {
    let repo = PyRepo::init();
    let old = tempfile::tempdir().expect("old copy");
    copy_dir(&repo.repo, old.path());
    repo.run("resign-timestamp", &[]);
    let resigned = repo.run("resign-timestamp", &[]);
    assert_eq!(resigned["versions"]["timestamp"], 3, "{resigned}");
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
    assert_eq!(edge.floor().expect("floor")["timestamp"], 3);
}

#[test]
fn a_validly_signed_python_tuf_target_with_a_lower_model_version_is_never_installed() {
    let repo = PyRepo::init();
    let name = format!("{MODEL}-3.dmb");
    let sha3 = repo.publish(&name, &bundles::with_model_version(3), 3, &[]);
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(line.edge.current(), (sha3.clone(), 3));
    line.wait_for_served_version(3);

    // Whoever holds the targets key republishes the release with a model_version 2 bundle
    // (python-tuf checks nothing about versions): validly signed, newer metadata, but the
    // newest model it offers is below what this box has installed.
    let sha2 = repo.publish(&name, &bundles::with_model_version(2), 2, &[]);
    let before = server.requests().len();
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        stderr(&output).contains("never goes down"),
        "{}",
        describe(&output)
    );
    assert_eq!(line.edge.current(), (sha3, 3));
    assert!(!line.edge.store().bundle_path(&sha2).exists());
    assert!(
        no_target_download_since(&server, before),
        "the lower model_version must not even be downloaded"
    );
    assert_eq!(
        line.edge.floor().expect("floor")["model_versions"][MODEL],
        3
    );
    assert_eq!(line.served_version(), Some(3));
}

#[test]
fn an_expired_python_tuf_timestamp_is_refused_as_a_freeze() {
    let repo = PyRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), 2, &[]);
    repo.run("resign-timestamp", &["--expires-seconds", "-60"]);
    let server = RepoServer::start(&repo.repo);
    let edge = UpdaterBox::new(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let before = edge.current();

    let output = edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr(&output).contains("metadata refused: timestamp metadata is expired"),
        "{}",
        describe(&output)
    );
    assert_eq!(edge.current(), before);
    assert!(!edge.store().bundle_path(&sha).exists());
    let status = edge.status().expect("status");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("expired")),
        "{status}"
    );
}

#[test]
fn mix_and_match_of_an_old_python_tuf_targets_file_is_refused() {
    let repo = PyRepo::init();
    repo.add(&bundles::with_model_version(2), 2, &[]);
    let old_targets = std::fs::read(repo.repo.join("metadata/2.targets.json")).expect("targets 2");
    let sha3 = repo.add(&bundles::with_model_version(3), 3, &[]);
    // The attacker serves the old targets file under the name of the new one.
    std::fs::write(repo.repo.join("metadata/3.targets.json"), old_targets).expect("swap");
    let server = RepoServer::start(&repo.repo);
    let edge = UpdaterBox::new(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let before = edge.current();

    let output = edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let log = stderr(&output);
    assert!(log.contains("metadata refused"), "{}", describe(&output));
    assert!(
        log.contains("Hash mismatch for") && log.contains("/metadata/3.targets.json"),
        "{}",
        describe(&output)
    );
    assert_eq!(edge.current(), before);
    assert!(!edge.store().bundle_path(&sha3).exists());
    assert!(no_target_download_since(&server, 0));
}

#[test]
fn a_python_tuf_root_signed_below_threshold_is_refused_and_the_root_floor_stays_1() {
    let repo = PyRepo::init();
    let server = RepoServer::start(&repo.repo);
    let edge = UpdaterBox::new(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let output = edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(edge.floor().expect("floor")["root"], 1);
    let before = edge.current();

    // Root 2, signed by one root key of the 2-of-3 threshold, hands the targets role to a
    // forged key; the attacker then publishes a model signed with that key.
    let forged = repo.run("sign-root-below-threshold", &["--replace-role", "targets"]);
    assert_eq!(forged["versions"]["root"], 2, "{forged}");
    let evil = repo.add(&bundles::with_model_version(9), 9, &[]);
    let requests = server.requests().len();

    let output = edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr(&output).contains(
            "metadata refused: Failed to verify root metadata: \
             Signature threshold of 2 not met for role root"
        ),
        "{}",
        describe(&output)
    );
    let floor = edge.floor().expect("floor");
    assert_eq!(floor["root"], 1, "{floor}");
    assert!(!edge.state_dir.join("trust/roots/2.root.json").exists());
    assert_eq!(edge.current(), before);
    assert!(!edge.store().bundle_path(&evil).exists());
    assert!(no_target_download_since(&server, requests));
}

#[test]
fn a_python_tuf_bundle_the_agent_refuses_is_reverted_marked_bad_and_never_downloaded_again() {
    let repo = PyRepo::init();
    let bad_sha = repo.add(&bundles::failing_gate(2), 2, &[]);
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let (factory_sha, _) = line.edge.current();

    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        stdout(&output).contains(&format!("reverted {MODEL} model_version 2 ({bad_sha})")),
        "{}",
        describe(&output)
    );
    assert_eq!(line.edge.current(), (factory_sha.clone(), 1));
    let state = line.edge.state().expect("state");
    assert!(
        state["bad"][&bad_sha]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused")),
        "{state}"
    );
    assert!(!line.edge.store().bundle_path(&bad_sha).exists());
    assert!(line.agent.log().contains("refused"));

    let before = server.requests().len();
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        stderr(&output).contains("marked bad"),
        "{}",
        describe(&output)
    );
    assert!(
        no_target_download_since(&server, before),
        "a bad version must not be downloaded again"
    );
    assert_eq!(line.edge.current(), (factory_sha, 1));
}
