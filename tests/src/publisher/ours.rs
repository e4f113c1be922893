//! Our own publisher, the `repo` commands of the project's binaries, as a [`Publisher`].
//!
//! This module is the one place the tests invoke our publisher's command line
//! ([`PUBLISHER`]); every other test reaches it through [`OwnRepo`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use super::{Publisher, Role, Scope};
use crate::binary;
use crate::updater_box::{copy_dir, describe, faketime};

/// The binary and the subcommand that hold our publisher's commands (`<binary> <subcommand>
/// init|add-target|resign-timestamp|rotate-key …`).
pub const PUBLISHER: (&str, &str) = ("defect-central", "repo");

/// Runs our publisher with `args` and `env`, and panics with its output on failure.
fn run(args: &[&str], env: &[(String, String)]) -> Output {
    let (program, subcommand) = PUBLISHER;
    let output = Command::new(binary(program))
        .arg(subcommand)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {subcommand}: {e}"));
    assert!(
        output.status.success(),
        "{program} {subcommand} {args:?}: {}",
        describe(&output)
    );
    output
}

/// A repository and its keys, built by our own publisher.
#[derive(Debug)]
pub struct OwnRepo {
    dir: TempDir,
    /// The repository folder (`metadata/`, `targets/`): what the server serves.
    pub repo: PathBuf,
    /// The keys folder.
    pub keys: PathBuf,
}

impl OwnRepo {
    /// `init`: a 2-of-3 root, one key for each other role.
    pub fn init() -> OwnRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        run(
            &[
                "init",
                "--repo",
                &repo.display().to_string(),
                "--keys",
                &keys.display().to_string(),
            ],
            &[],
        );
        OwnRepo { dir, repo, keys }
    }

    /// The folder holding the repository and keys.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The root a box ships with (version 1).
    pub fn first_root(&self) -> PathBuf {
        Publisher::first_root(self)
    }

    /// `add-target` of bundle bytes with extra arguments (`--lines`, `--canary`, …); returns
    /// the bundle's SHA-256.
    pub fn add(&self, bytes: &[u8], extra: &[&str]) -> String {
        let sha = defect_models::bundle::sha256_hex(bytes);
        let file = crate::bundles::write(self.dir.path(), &format!("{sha}.dmb"), bytes);
        let repo = self.repo.display().to_string();
        let keys = self.keys.display().to_string();
        let file = file.display().to_string();
        let mut args = vec![
            "add-target",
            "--repo",
            &repo,
            "--keys",
            &keys,
            "--bundle",
            &file,
        ];
        args.extend_from_slice(extra);
        run(&args, &[]);
        sha
    }

    /// `resign-timestamp` with the timestamp key, extra arguments and environment.
    fn resign_timestamp_with(&self, extra: &[&str], env: &[(String, String)]) {
        let repo = self.repo.display().to_string();
        let key = self.keys.join("timestamp.pk8").display().to_string();
        let mut args = vec!["resign-timestamp", "--repo", &repo, "--key", &key];
        args.extend_from_slice(extra);
        run(&args, env);
    }

    /// `resign-timestamp` with the timestamp key (with extra arguments such as
    /// `--expires-hours`).
    pub fn resign_timestamp(&self, extra: &[&str]) {
        self.resign_timestamp_with(extra, &[]);
    }

    /// `rotate-key --role ROLE` (with extra arguments such as `--revoke`).
    pub fn rotate(&self, role: &str, extra: &[&str]) {
        let repo = self.repo.display().to_string();
        let keys = self.keys.display().to_string();
        let mut args = vec![
            "rotate-key",
            "--repo",
            &repo,
            "--keys",
            &keys,
            "--role",
            role,
        ];
        args.extend_from_slice(extra);
        run(&args, &[]);
    }

    /// Copies the repository folder (metadata and targets) to `to`.
    pub fn snapshot_to(&self, to: &Path) {
        Publisher::snapshot_to(self, to);
    }

    /// The newest `N` of the repository's `N.root.json` files.
    fn newest_root(&self) -> u64 {
        let dir = self.repo.join("metadata");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".root.json")?.parse::<u64>().ok()
            })
            .max()
            .unwrap_or_else(|| panic!("{}: no N.root.json", dir.display()))
    }
}

impl Publisher for OwnRepo {
    const NAME: &'static str = "our publisher";

    fn init() -> Self {
        OwnRepo::init()
    }

    fn repo(&self) -> &Path {
        &self.repo
    }

    fn publish_scoped(&self, bytes: &[u8], scope: Scope<'_>) -> String {
        let lines = scope.lines.join(",");
        let stations = scope.stations.join(",");
        let mut extra = Vec::new();
        if !lines.is_empty() {
            extra.extend(["--lines", lines.as_str()]);
        }
        if !stations.is_empty() {
            extra.extend(["--stations", stations.as_str()]);
        }
        self.add(bytes, &extra)
    }

    fn resign_timestamp(&self) {
        self.resign_timestamp_with(&[], &[]);
    }

    fn resign_timestamp_expired(&self) {
        // The command only writes future expiries; signed two hours in the past with one
        // hour of validity, the timestamp expired an hour ago.
        self.resign_timestamp_with(&["--expires-hours", "1"], &faketime("-2h"));
    }

    fn rotate_key(&self, role: Role) {
        if role == Role::Root {
            // Root has three keys: the rotation names the one it replaces.
            let revoked = self.keys.join("root-2.pk8").display().to_string();
            self.rotate(role.name(), &["--revoke", &revoked]);
        } else {
            self.rotate(role.name(), &[]);
        }
    }

    fn steal(&self) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        copy_dir(&self.repo, &repo);
        copy_dir(&self.keys, &keys);
        OwnRepo { dir, repo, keys }
    }

    fn publish_under_root_below_threshold(&self, bytes: &[u8]) -> String {
        // A valid rotation of the targets key, a bundle signed with the new key, then root
        // N+1 stripped to a single root signature.
        self.rotate(Role::Targets.name(), &[]);
        let sha = self.add(bytes, &[]);
        let newest = self.newest_root();
        let metadata = self.repo.join("metadata");
        let path = metadata.join(format!("{newest}.root.json"));
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut root: serde_json::Value =
            serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let count = root["signatures"].as_array().map_or(0, Vec::len);
        assert!(count >= 2, "{}: {root}", path.display());
        if let Some(signatures) = root["signatures"].as_array_mut() {
            signatures.truncate(1);
        }
        let forged = serde_json::to_vec_pretty(&root).expect("JSON");
        std::fs::write(&path, &forged).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let copy = metadata.join("root.json");
        if copy.exists() {
            std::fs::write(&copy, &forged).unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
        }
        sha
    }
}
