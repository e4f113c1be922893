//! The update path under attack, written once and run against repositories signed by each
//! publisher (`ours`: our own publisher; `python_tuf`: python-tuf 7, an independent TUF
//! implementation). The real `model-updater check` fetches from a real HTTP server and the real
//! agent tries what gets installed; every attack is refused loudly and `current` keeps naming
//! the verified bundle the agent serves. Clock faults run the real updater under libfaketime.
//!
//! Run one publisher's scenarios with `updater_attacks::ours::` or
//! `updater_attacks::python_tuf::`.

use defect_e2e::bundles;
use defect_e2e::publisher::{OwnRepo, Publisher, PyRepo, Role, Scope};
use defect_e2e::repo_server::{Fault, RepoServer};
use defect_e2e::updater_box::{
    BoxSettings, EdgeLine, UpdaterBox, copy_dir, describe, faketime, no_target_download_since,
    serve_instead, stderr,
};
use serde_json::Value;

/// The model the box runs and the repositories publish.
const MODEL: &str = "surface-classifier";

/// One `#[test]` per scenario in a module per publisher.
macro_rules! for_each_publisher {
    ($($scenario:ident),* $(,)?) => {
        /// Every scenario against repositories signed by our own publisher.
        mod ours {
            $(#[test]
            fn $scenario() {
                super::$scenario::<super::OwnRepo>();
            })*
        }
        /// Every scenario against repositories signed by python-tuf.
        mod python_tuf {
            $(#[test]
            fn $scenario() {
                super::$scenario::<super::PyRepo>();
            })*
        }
    };
}

for_each_publisher!(
    a_published_model_is_installed_tried_by_the_agent_and_committed,
    a_bundle_the_agent_refuses_is_reverted_marked_bad_and_never_downloaded_again,
    after_a_root_key_rotation_the_box_follows_root_1_to_2_and_still_installs,
    a_tampered_bundle_is_refused_and_current_is_untouched,
    endless_data_past_the_signed_length_is_refused,
    a_replay_of_older_metadata_is_refused_as_a_rollback,
    metadata_past_its_expiry_on_the_box_clock_is_refused_as_a_freeze,
    an_expired_timestamp_is_refused_as_a_freeze,
    mix_and_match_of_an_old_targets_file_is_refused,
    after_a_key_rotation_an_attacker_with_the_revoked_keys_who_hides_the_new_root_is_refused,
    a_root_signed_below_threshold_is_refused_and_the_root_floor_stays_1,
    a_clock_at_1970_refuses_to_judge_expiry,
    a_clock_in_the_future_then_back_is_a_loud_recoverable_error,
    a_corrupt_trust_record_followed_by_a_rollback_replay_installs_nothing_older,
    a_flaky_server_still_delivers_a_verified_install,
);

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A box for `repo` served by `server`.
fn settings<P: Publisher>(repo: &P, server: &RepoServer) -> BoxSettings {
    BoxSettings::new(&server.url("/"), &repo.first_root())
}

fn a_published_model_is_installed_tried_by_the_agent_and_committed<P: Publisher>() {
    let repo = P::init();
    let sha = repo.publish_scoped(
        &bundles::with_model_version(2),
        Scope {
            lines: &["line3"],
            stations: &["cam1", "cam2"],
        },
    );
    let server = repo.serve();
    let line = EdgeLine::start(&settings(&repo, &server));

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

    // Nothing newer: a second check downloads nothing.
    let before = server.requests().len();
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        no_target_download_since(&server, before),
        "no target download expected"
    );
}

fn a_bundle_the_agent_refuses_is_reverted_marked_bad_and_never_downloaded_again<P: Publisher>() {
    let repo = P::init();
    let bad_sha = repo.publish(&bundles::failing_gate(2));
    let server = repo.serve();
    let line = EdgeLine::start(&settings(&repo, &server));
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
    let status = line.edge.status().expect("status");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("reverted")),
        "{status}"
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

fn after_a_root_key_rotation_the_box_follows_root_1_to_2_and_still_installs<P: Publisher>() {
    let repo = P::init();
    let server = repo.serve();
    let line = EdgeLine::start(&settings(&repo, &server));
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(line.edge.floor().expect("floor")["root"], 1);

    repo.rotate_key(Role::Root);
    let sha = repo.publish(&bundles::with_model_version(2));

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

fn a_tampered_bundle_is_refused_and_current_is_untouched<P: Publisher>() {
    let repo = P::init();
    let sha = repo.publish(&bundles::with_model_version(2));
    let file = repo.target_file(&sha);
    let mut bytes = std::fs::read(&file).expect("target");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, bytes).expect("tamper");
    let server = repo.serve();
    let edge = UpdaterBox::new(&settings(&repo, &server));
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

fn endless_data_past_the_signed_length_is_refused<P: Publisher>() {
    let repo = P::init();
    let sha = repo.publish(&bundles::with_model_version(2));
    let server = repo.serve();
    server
        .faults()
        .add(Fault::EndlessData.always().on_paths_containing("/targets/"));
    let edge = UpdaterBox::new(&settings(&repo, &server));
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

fn a_replay_of_older_metadata_is_refused_as_a_rollback<P: Publisher>() {
    let repo = P::init();
    let old = tempfile::tempdir().expect("old copy");
    repo.snapshot_to(old.path());
    repo.resign_timestamp();
    repo.resign_timestamp();
    let served = tempfile::tempdir().expect("served");
    copy_dir(repo.repo(), served.path());
    let server = RepoServer::start(served.path());
    let edge = UpdaterBox::new(&settings(&repo, &server));

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

fn metadata_past_its_expiry_on_the_box_clock_is_refused_as_a_freeze<P: Publisher>() {
    let repo = P::init();
    repo.publish(&bundles::with_model_version(2));
    let server = repo.serve();
    let mut edge = UpdaterBox::new(&settings(&repo, &server));
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
    assert_expired_status(&edge);
}

fn an_expired_timestamp_is_refused_as_a_freeze<P: Publisher>() {
    let repo = P::init();
    let sha = repo.publish(&bundles::with_model_version(2));
    repo.resign_timestamp_expired();
    let server = repo.serve();
    let edge = UpdaterBox::new(&settings(&repo, &server));
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
    assert_expired_status(&edge);
}

/// The status document names the expiry as the last error.
fn assert_expired_status(edge: &UpdaterBox) {
    let status = edge.status().expect("status");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("expired")),
        "{status}"
    );
}

fn mix_and_match_of_an_old_targets_file_is_refused<P: Publisher>() {
    let repo = P::init();
    repo.publish(&bundles::with_model_version(2));
    let metadata = repo.repo().join("metadata");
    let old_targets = std::fs::read(metadata.join("2.targets.json")).expect("targets 2");
    let sha3 = repo.publish(&bundles::with_model_version(3));
    // The attacker serves the old targets file under the name of the new one.
    std::fs::write(metadata.join("3.targets.json"), old_targets).expect("swap");
    let server = repo.serve();
    let edge = UpdaterBox::new(&settings(&repo, &server));
    let before = edge.current();

    let output = edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr(&output).contains("metadata refused"),
        "{}",
        describe(&output)
    );
    assert_eq!(edge.current(), before);
    assert!(!edge.store().bundle_path(&sha3).exists());
    assert!(no_target_download_since(&server, 0));
}

fn after_a_key_rotation_an_attacker_with_the_revoked_keys_who_hides_the_new_root_is_refused<
    P: Publisher,
>() {
    let repo = P::init();
    // The attacker stole the online keys of the first root.
    let attacker = repo.steal();
    for role in [Role::Targets, Role::Snapshot, Role::Timestamp] {
        repo.rotate_key(role);
    }
    let served = tempfile::tempdir().expect("served");
    copy_dir(repo.repo(), served.path());
    let server = RepoServer::start(served.path());
    let settings = settings(&repo, &server);
    let edge = UpdaterBox::new(&settings);
    let output = edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let rotated_root = edge.floor().expect("floor")["root"].as_u64().expect("root");
    assert!(rotated_root > 1);

    // The attacker's repository: the first root only (no newer root to find), and a model
    // signed with the revoked keys.
    let evil = attacker.publish(&bundles::with_model_version(9));
    serve_instead(served.path(), attacker.repo());

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
        stdout(&output).contains(&format!("reverted {MODEL} model_version 9 ({evil})")),
        "{}",
        describe(&output)
    );
}

fn a_root_signed_below_threshold_is_refused_and_the_root_floor_stays_1<P: Publisher>() {
    let repo = P::init();
    let server = repo.serve();
    let edge = UpdaterBox::new(&settings(&repo, &server));
    let output = edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(edge.floor().expect("floor")["root"], 1);
    let before = edge.current();

    // Root 2, signed by one root key of the 2-of-3 threshold, hands the targets role to a
    // forged key; the attacker publishes a model signed with that key.
    let evil = repo.publish_under_root_below_threshold(&bundles::with_model_version(9));
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

fn a_clock_at_1970_refuses_to_judge_expiry<P: Publisher>() {
    let repo = P::init();
    repo.publish(&bundles::with_model_version(2));
    let server = repo.serve();
    let mut edge = UpdaterBox::new(&settings(&repo, &server));
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

fn a_clock_in_the_future_then_back_is_a_loud_recoverable_error<P: Publisher>() {
    let repo = P::init();
    repo.publish(&bundles::with_model_version(2));
    let server = repo.serve();
    let mut line = EdgeLine::start(&settings(&repo, &server));

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
    repo.publish(&bundles::with_model_version(3));
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

fn a_corrupt_trust_record_followed_by_a_rollback_replay_installs_nothing_older<P: Publisher>() {
    let repo = P::init();
    repo.publish(&bundles::with_model_version(2));
    let old = tempfile::tempdir().expect("old");
    repo.snapshot_to(old.path());
    repo.publish(&bundles::with_model_version(3));
    let newest = tempfile::tempdir().expect("newest");
    copy_dir(repo.repo(), newest.path());
    let served = tempfile::tempdir().expect("served");
    copy_dir(repo.repo(), served.path());
    let server = RepoServer::start(served.path());
    let line = EdgeLine::start(&settings(&repo, &server));
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let installed = line.edge.current();
    assert_eq!(installed.1, 3);
    let floor = line.edge.floor().expect("floor");

    // Each copy of the anti-rollback record torn, then deleted, in turn; each time the attacker
    // replays the older repository state, and each time nothing older is accepted.
    let trust = line.edge.state_dir.join("trust");
    for (file, torn) in [
        ("floor.json", true),
        ("floor.json", false),
        ("floor.copy.json", true),
        ("floor.copy.json", false),
    ] {
        let what = format!("{file} {}", if torn { "torn" } else { "deleted" });
        if torn {
            std::fs::write(trust.join(file), b"{\"v\":1,\"root\":").expect("tear");
        } else {
            std::fs::remove_file(trust.join(file)).expect("delete");
        }
        serve_instead(served.path(), old.path());
        let before = server.requests().len();
        let output = line.edge.check();
        let log = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{what}: {}",
            describe(&output)
        );
        assert!(
            log.contains("a copy of the anti-rollback record"),
            "{what}: {}",
            describe(&output)
        );
        assert!(
            log.contains("rollback refused: the repository offers timestamp version"),
            "{what}: {}",
            describe(&output)
        );
        assert_eq!(line.edge.current(), installed, "{what}");
        assert!(
            no_target_download_since(&server, before),
            "{what}: the older model must not even be downloaded"
        );
        // The next good check writes both copies again, at the same versions.
        serve_instead(served.path(), newest.path());
        let output = line.edge.check();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{what}: {}",
            describe(&output)
        );
        let rewritten = line.edge.floor().expect("floor rewritten");
        for role in ["root", "timestamp", "snapshot", "targets"] {
            assert_eq!(rewritten[role], floor[role], "{what}: {role}");
        }
        assert_eq!(rewritten["model_versions"][MODEL], 3, "{what}: {rewritten}");
        assert!(trust.join("floor.copy.json").exists(), "{what}");
    }
}

fn a_flaky_server_still_delivers_a_verified_install<P: Publisher>() {
    let repo = P::init();
    let sha = repo.publish(&bundles::with_model_version(2));
    let server = repo.serve();
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
    let line = EdgeLine::start(&settings(&repo, &server));

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

/// Whoever holds python-tuf's targets key republishes a release with a lower model_version
/// bundle (python-tuf checks nothing about versions; our publisher refuses to sign it, so
/// this scenario has no `ours` twin): validly signed, newer metadata, but the newest model it
/// offers is below what the box has installed.
#[test]
fn python_tuf_a_validly_signed_target_with_a_lower_model_version_is_never_installed() {
    let repo = PyRepo::init();
    let name = format!("{MODEL}-3.dmb");
    let sha3 = repo.publish_as(&name, &bundles::with_model_version(3), 3, &[]);
    let server = repo.serve();
    let line = EdgeLine::start(&settings(&repo, &server));
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(line.edge.current(), (sha3.clone(), 3));
    line.wait_for_served_version(3);

    let sha2 = repo.publish_as(&name, &bundles::with_model_version(2), 2, &[]);
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

/// Whoever holds python-tuf's targets key delegates the model's target names to a role of its
/// own, `factory-a`, which signs model_version 3 (our publisher never delegates, so this
/// scenario has no `ours` twin). The box supports only the top-level targets role: `check`
/// refuses the repository naming the role and its paths, downloads and installs nothing, and
/// leaves the anti-rollback record as the last accepted repository left it. The next
/// repository drops the role from the snapshot while `targets.json` still delegates to it
/// (python-tuf's client refuses that, TUF 5.5.5): refused the same way, by `check` and by the
/// daemon, which logs it as an error and keeps running.
#[test]
fn python_tuf_a_delegated_targets_role_is_refused_and_so_is_the_snapshot_that_drops_it() {
    let repo = PyRepo::init();
    let sha2 = repo.publish(&bundles::with_model_version(2));
    let server = repo.serve();
    let line = EdgeLine::start(&settings(&repo, &server));
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(line.edge.current(), (sha2.clone(), 2));
    line.wait_for_served_version(2);
    let floor = line.edge.floor().expect("floor");

    let refused = format!(
        "repository metadata refused: targets.json delegates to role(s) `factory-a` (paths \
         `{MODEL}-*.dmb`); this updater supports only the top-level targets role: publish \
         models from targets.json"
    );
    let sha3 = repo.publish_delegated(
        "factory-a",
        &format!("{MODEL}-*.dmb"),
        &bundles::with_model_version(3),
    );
    let assert_refused = |output: &std::process::Output, requests: usize| {
        assert_eq!(output.status.code(), Some(1), "{}", describe(output));
        assert!(stderr(output).contains(&refused), "{}", describe(output));
        assert_eq!(line.edge.current(), (sha2.clone(), 2));
        assert!(!line.edge.store().bundle_path(&sha3).exists());
        assert!(no_target_download_since(&server, requests));
        assert_eq!(line.edge.floor().expect("floor"), floor);
        let status = line.edge.status().expect("status");
        assert_eq!(status["state"], "error", "{status}");
        assert_eq!(status["last_error"], refused.as_str(), "{status}");
    };
    let requests = server.requests().len();
    assert_refused(&line.edge.check(), requests);

    repo.drop_delegated_role("factory-a");
    let requests = server.requests().len();
    assert_refused(&line.edge.check(), requests);

    let log = line.edge.path().join("daemon.log");
    let mut daemon = line.edge.spawn("run", &log);
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !daemon_log().contains("update check failed") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let logged = daemon_log();
    let failed = logged
        .lines()
        .find(|l| l.contains("update check failed"))
        .unwrap_or_else(|| panic!("the daemon logged no failed check:\n{logged}"));
    assert!(
        failed.contains("ERROR") && failed.contains(&refused),
        "{logged}"
    );
    assert!(
        daemon.try_wait().expect("daemon status").is_none(),
        "the daemon must keep running:\n{logged}"
    );
    daemon.kill().expect("stop the daemon");
    daemon.wait().expect("daemon exit");
    assert_eq!(line.edge.current(), (sha2, 2));
    assert!(!line.edge.store().bundle_path(&sha3).exists());
    assert_eq!(line.edge.floor().expect("floor"), floor);
    assert_eq!(line.served_version(), Some(2));
}
