//! python-tuf as a [`Publisher`]: `tests/python/tuf_publisher.py` run in the tests'
//! virtualenv (see [`crate::python_tuf`]).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use super::{Publisher, Role, Scope, manifest_facts};
use crate::bundles;
use crate::python_tuf::publisher_json;
use crate::updater_box::copy_dir;

/// A repository and its keys, built by `tuf_publisher.py` (python-tuf).
#[derive(Debug)]
pub struct PyRepo {
    dir: TempDir,
    /// The repository folder (`metadata/`, `targets/`): what the server serves.
    pub repo: PathBuf,
    /// The keys folder (`*.pem`).
    pub keys: PathBuf,
}

impl PyRepo {
    /// `tuf_publisher.py COMMAND --repo … --keys … EXTRA…`; the JSON it prints.
    pub fn run(&self, command: &str, extra: &[&str]) -> Value {
        let repo = self.repo.display().to_string();
        let keys = self.keys.display().to_string();
        let mut args = vec![command, "--repo", &repo, "--keys", &keys];
        args.extend_from_slice(extra);
        publisher_json(&args)
    }

    /// `add-target` of bundle bytes under target name `name`, claiming `model_version`
    /// whatever the bundle says (python-tuf checks nothing about versions), with extra
    /// arguments (`--lines`, `--stations`); returns the bundle's SHA-256.
    pub fn publish_as(
        &self,
        name: &str,
        bytes: &[u8],
        model_version: u64,
        extra: &[&str],
    ) -> String {
        let (model, _, version) = manifest_facts(bytes);
        let sha = defect_models::bundle::sha256_hex(bytes);
        let file = bundles::write(self.dir.path(), &format!("{sha}.dmb"), bytes);
        let file = file.display().to_string();
        let model_version = model_version.to_string();
        let mut args = vec![
            "--bundle",
            &file,
            "--name",
            name,
            "--model",
            &model,
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

    /// `add-delegated-target`: publishes bundle bytes as `<model>-<model_version>.dmb` in the
    /// delegated targets role `role` (made, with its own key and the paths `paths`, the first
    /// time; `targets.json` then delegates to it); returns the bundle's SHA-256.
    pub fn publish_delegated(&self, role: &str, paths: &str, bytes: &[u8]) -> String {
        let (model, model_version, version) = manifest_facts(bytes);
        let sha = defect_models::bundle::sha256_hex(bytes);
        let file = bundles::write(self.dir.path(), &format!("{sha}.dmb"), bytes);
        let file = file.display().to_string();
        let name = format!("{model}-{model_version}.dmb");
        let model_version = model_version.to_string();
        let added = self.run(
            "add-delegated-target",
            &[
                "--role",
                role,
                "--paths",
                paths,
                "--bundle",
                &file,
                "--name",
                &name,
                "--model",
                &model,
                "--model-version",
                &model_version,
                "--version",
                &version,
            ],
        );
        assert_eq!(added["sha256"], sha.as_str(), "{added}");
        assert_eq!(added["role"], role, "{added}");
        sha
    }

    /// `drop-delegated-role`: a new snapshot without `role`'s metadata, `targets.json` still
    /// delegating to it (what TUF 5.5.5 has clients refuse).
    pub fn drop_delegated_role(&self, role: &str) {
        let dropped = self.run("drop-delegated-role", &["--role", role]);
        assert_eq!(dropped["role"], role, "{dropped}");
    }
}

impl Publisher for PyRepo {
    const NAME: &'static str = "python-tuf";

    fn init() -> Self {
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

    fn repo(&self) -> &Path {
        &self.repo
    }

    fn publish_scoped(&self, bytes: &[u8], scope: Scope<'_>) -> String {
        let (model, model_version, _) = manifest_facts(bytes);
        let lines = scope.lines.join(",");
        let stations = scope.stations.join(",");
        let mut extra = Vec::new();
        if !lines.is_empty() {
            extra.extend(["--lines", lines.as_str()]);
        }
        if !stations.is_empty() {
            extra.extend(["--stations", stations.as_str()]);
        }
        self.publish_as(
            &format!("{model}-{model_version}.dmb"),
            bytes,
            model_version,
            &extra,
        )
    }

    fn resign_timestamp(&self) {
        self.run("resign-timestamp", &[]);
    }

    fn resign_timestamp_expired(&self) {
        self.run("resign-timestamp", &["--expires-seconds", "-60"]);
    }

    fn rotate_key(&self, role: Role) {
        let rotated = match role {
            Role::Root => self.run("rotate-root-key", &[]),
            online => self.run("rotate-key", &["--role", online.name()]),
        };
        assert!(rotated["new_key_id"].is_string(), "{rotated}");
    }

    fn steal(&self) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        copy_dir(&self.repo, &repo);
        copy_dir(&self.keys, &keys);
        PyRepo { dir, repo, keys }
    }

    fn publish_under_root_below_threshold(&self, bytes: &[u8]) -> String {
        let forged = self.run("sign-root-below-threshold", &["--replace-role", "targets"]);
        assert_eq!(
            forged["signed_by"].as_array().map(Vec::len),
            Some(1),
            "{forged}"
        );
        self.publish(bytes)
    }
}
