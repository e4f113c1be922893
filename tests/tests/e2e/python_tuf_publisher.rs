//! Interop: repositories published by python-tuf 7 (an independent TUF implementation, see
//! `tests/python/tuf_publisher.py`) load in tough 0.24 as the box loads them, with the target
//! custom fields and key ids intact; the publisher's attack helpers produce what tough must
//! refuse; and python-tuf verifies what our own publisher writes.

use std::fs;
use std::path::{Path, PathBuf};

use defect_central::publish::{
    self, Expiries, InitOptions, KeyRole, LoadedRepo, TargetOptions, load_with_tough,
};
use defect_e2e::python_tuf::{publisher, publisher_json};
use defect_e2e::shipped_bundle;
use serde_json::{Value, json};

struct PyRepo {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    keys: PathBuf,
}

impl PyRepo {
    /// `init` then `add-target` of the shipped bundle; returns the repo and init's key ids.
    fn with_shipped_bundle() -> (Self, Value) {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        let py = Self {
            _dir: dir,
            repo,
            keys,
        };
        let init = publisher_json(&py.args("init", &[]));
        let bundle = shipped_bundle();
        let added = publisher_json(&py.args(
            "add-target",
            &[
                "--bundle",
                path_str(&bundle),
                "--name",
                "surface-classifier-1.dmb",
                "--model",
                "surface-classifier",
                "--model-version",
                "1",
                "--version",
                "1.0.0",
                "--stations",
                "st-1,st-2",
                "--lines",
                "line-a",
            ],
        ));
        assert_eq!(added["versions"]["timestamp"], json!(2), "{added}");
        (py, init["key_ids"].clone())
    }

    fn args<'a>(&'a self, command: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            command,
            "--repo",
            path_str(&self.repo),
            "--keys",
            path_str(&self.keys),
        ];
        args.extend_from_slice(extra);
        args
    }

    fn first_root(&self) -> Vec<u8> {
        fs::read(self.repo.join("metadata/1.root.json")).expect("1.root.json")
    }

    async fn load(&self) -> Result<LoadedRepo, defect_central::publish::PublishError> {
        load_with_tough(&self.first_root(), &self.repo).await
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary path")
}

fn key_ids(value: &Value) -> std::collections::BTreeMap<String, Vec<String>> {
    serde_json::from_value(value.clone()).expect("key ids by role")
}

#[tokio::test]
async fn tough_loads_a_python_tuf_repository_with_custom_fields_and_key_ids() {
    let (py, ids) = PyRepo::with_shipped_bundle();
    let loaded = py
        .load()
        .await
        .expect("tough loads the python-tuf repository");
    assert_eq!(loaded.root_version, 1);
    assert_eq!(loaded.targets_version, 2);
    assert_eq!(loaded.snapshot_version, 2);
    assert_eq!(loaded.timestamp_version, 2);
    // tough recomputes every key id on load; python-tuf's are the same.
    assert_eq!(loaded.role_key_ids, key_ids(&ids));

    assert_eq!(loaded.targets.len(), 1);
    let target = loaded
        .target("surface-classifier-1.dmb")
        .expect("target listed");
    let shipped = fs::read(shipped_bundle()).expect("shipped bundle");
    assert_eq!(target.bytes, shipped);
    assert_eq!(target.length, shipped.len() as u64);
    assert_eq!(target.sha256, defect_models::bundle::sha256_hex(&shipped));
    assert_eq!(target.custom["model"], json!("surface-classifier"));
    assert_eq!(target.custom["model_version"], json!(1));
    assert_eq!(target.custom["version"], json!("1.0.0"));
    assert_eq!(target.custom["stations"], json!(["st-1", "st-2"]));
    assert_eq!(target.custom["lines"], json!(["line-a"]));
    let custom = target.parsed_custom().expect("custom fields parse");
    assert_eq!(custom.model_version, 1);
    assert!(
        py.repo
            .join("targets")
            .join(format!("{}.surface-classifier-1.dmb", target.sha256))
            .is_file()
    );
}

#[tokio::test]
async fn python_tuf_root_rotation_loads_and_its_attack_helpers_are_refused_by_tough() {
    let (py, _) = PyRepo::with_shipped_bundle();

    // Root rotation signed by old and new thresholds: tough walks 1 → 2.
    let rotated = publisher_json(&py.args("rotate-root-key", &[]));
    let loaded = py.load().await.expect("load after root rotation");
    assert_eq!(loaded.root_version, 2);
    assert_eq!(loaded.role_key_ids, key_ids(&rotated["key_ids"]));

    // A validly signed lower model_version: TUF accepts it; refusing it is the client's job.
    publisher(&py.args(
        "set-targets-custom",
        &[
            "--target",
            "surface-classifier-1.dmb",
            "--field",
            "model_version",
            "--value",
            "0",
        ],
    ));
    let loaded = py.load().await.expect("load after custom change");
    let target = loaded.target("surface-classifier-1.dmb").expect("target");
    assert_eq!(target.custom["model_version"], json!(0));

    // An expired timestamp is refused, a fresh one accepted again.
    publisher(&py.args("resign-timestamp", &["--expires-seconds", "-60"]));
    let err = py.load().await.expect_err("expired timestamp accepted");
    assert!(
        defect_shared::error_chain::chain(&err).contains("timestamp metadata is expired"),
        "{err}"
    );
    publisher(&py.args("resign-timestamp", &[]));
    py.load().await.expect("fresh timestamp");

    // A root signed by one root key of a 2-of-3 threshold is refused.
    publisher(&py.args("sign-root-below-threshold", &["--replace-role", "targets"]));
    let err = py.load().await.expect_err("root below threshold accepted");
    assert!(
        defect_shared::error_chain::chain(&err)
            .contains("Signature threshold of 2 not met for role root"),
        "{err}"
    );
}

#[tokio::test]
async fn python_tuf_verifies_a_repository_our_publisher_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let keys = dir.path().join("keys");
    publish::init(&repo, &keys, &InitOptions::default()).expect("init");
    publish::add_target(
        &repo,
        &keys,
        &shipped_bundle(),
        &TargetOptions {
            stations: vec!["st-1".into()],
            ..TargetOptions::default()
        },
    )
    .expect("add target");
    let revoke = keys.join("root-2.pk8");
    publish::rotate_key(
        &repo,
        &keys,
        KeyRole::Root.into(),
        Some(path_str(&revoke)),
        &Expiries::default(),
    )
    .expect("rotate root key");
    publish::rotate_key(
        &repo,
        &keys,
        KeyRole::Targets.into(),
        None,
        &Expiries::default(),
    )
    .expect("rotate targets key");

    let verified = publisher_json(&["verify", "--repo", path_str(&repo)]);
    assert_eq!(verified["spec_version"], json!("1.0.31"));
    assert_eq!(
        verified["versions"],
        json!({"root": 3, "targets": 3, "snapshot": 3, "timestamp": 3})
    );
    assert_eq!(
        verified["targets"]["surface-classifier-1.dmb"],
        json!({
            "model": "surface-classifier",
            "model_version": 1,
            "version": "1.0.0",
            "stations": ["st-1"],
            "lines": [],
        })
    );
    let root = fs::read(repo.join("metadata/1.root.json")).expect("1.root.json");
    let loaded = load_with_tough(&root, &repo)
        .await
        .expect("tough loads it too");
    assert_eq!(loaded.role_key_ids, key_ids(&verified["key_ids"]));
}
