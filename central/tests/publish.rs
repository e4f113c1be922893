//! The ops publishing commands produce repositories that tough 0.24 loads, rotate keys the way
//! TUF requires, and refuse what must not be published.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use defect_central::publish::{
    self, Expiries, InitOptions, PublishError, RepoLayout, RepoState, SigningKey, TargetOptions,
};
use defect_models::bundle::Bundle;
use tough::schema::RoleType;
use tough::{IntoVec, RepositoryLoader, TargetName};
use url::Url;

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped")
}

fn shipped_bundle() -> PathBuf {
    shipped_dir().join("surface-classifier.dmb")
}

/// Builds the shipped model as a bundle with another `model_version`.
fn bundle_with_model_version(dir: &Path, model_version: u64) -> PathBuf {
    let work = dir.join(format!("bundle-v{model_version}"));
    fs::create_dir_all(&work).expect("bundle folder");
    let manifest = fs::read_to_string(shipped_dir().join("manifest.toml")).expect("manifest");
    assert!(
        manifest.contains("\nmodel_version = 1\n"),
        "manifest layout changed"
    );
    let manifest = manifest.replace(
        "\nmodel_version = 1\n",
        &format!("\nmodel_version = {model_version}\n"),
    );
    let manifest_path = work.join("manifest.toml");
    fs::write(&manifest_path, manifest).expect("write manifest");
    let golden = work.join("golden");
    if !golden.exists() {
        std::os::unix::fs::symlink(shipped_dir().join("golden"), &golden).expect("symlink");
    }
    let bundle = Bundle::create_from_files(
        &manifest_path,
        &shipped_dir().join("surface-classifier.onnx"),
    )
    .expect("create bundle");
    let path = dir.join(format!("surface-classifier-v{model_version}.dmb"));
    bundle.write_to(&path).expect("write bundle");
    path
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    keys: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        Self {
            repo: root.join("repo"),
            keys: root.join("keys"),
            root,
            _dir: dir,
        }
    }

    fn layout(&self) -> RepoLayout {
        RepoLayout::new(&self.repo)
    }

    fn init(&self) -> publish::InitReport {
        publish::init(&self.repo, &self.keys, &InitOptions::default()).expect("init")
    }

    fn add(&self, bundle: &Path, name: Option<&str>) -> Result<publish::AddedTarget, PublishError> {
        publish::add_target(
            &self.repo,
            &self.keys,
            bundle,
            &TargetOptions {
                name: name.map(str::to_owned),
                stations: vec!["st-1".into(), "st-2".into()],
                lines: vec!["line-a".into()],
                canary: None,
                expiries: Expiries::default(),
            },
        )
    }

    fn root_v1(&self) -> Vec<u8> {
        fs::read(self.layout().root_file(1)).expect("1.root.json")
    }

    fn state(&self) -> RepoState {
        RepoState::load(&self.layout()).expect("state")
    }

    async fn load(&self) -> Result<publish::LoadedRepo, PublishError> {
        publish::load_with_tough(&self.root_v1(), &self.repo).await
    }
}

fn dir_url(path: &Path) -> Url {
    Url::from_directory_path(path.canonicalize().expect("canonical")).expect("url")
}

#[tokio::test]
async fn init_and_add_target_give_a_repository_tough_loads() {
    let f = Fixture::new();
    let report = f.init();
    for name in [
        "root-1.pk8",
        "root-2.pk8",
        "root-3.pk8",
        "targets.pk8",
        "snapshot.pk8",
        "timestamp.pk8",
    ] {
        let mode = fs::metadata(f.keys.join(name))
            .expect(name)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    assert_eq!(report.key_ids["root"].len(), 3);

    let added = f.add(&shipped_bundle(), None).expect("add target");
    assert_eq!(added.name, "surface-classifier-1.dmb");
    let shipped = fs::read(shipped_bundle()).expect("shipped bundle");
    let layout = f.layout();
    for path in [
        layout.root_file(1),
        layout.root_copy(),
        layout.timestamp_file(),
        layout.snapshot_file(1),
        layout.snapshot_file(2),
        layout.targets_file(1),
        layout.targets_file(2),
        layout.target_file(&added.sha256, &added.name),
    ] {
        assert!(path.is_file(), "{} missing", path.display());
    }
    assert_eq!(
        fs::read(layout.target_file(&added.sha256, &added.name)).expect("target"),
        shipped
    );

    // tough itself, as the box will use it.
    let root = f.root_v1();
    let repo = RepositoryLoader::new(
        &root,
        dir_url(&layout.metadata_dir()),
        dir_url(&layout.targets_dir()),
    )
    .load()
    .await
    .expect("tough loads the repository");
    assert_eq!(repo.timestamp().signed.version.get(), 2);
    let targets: Vec<_> = repo.all_targets().collect();
    assert_eq!(targets.len(), 1);
    let (name, target) = targets[0];
    assert_eq!(name.raw(), "surface-classifier-1.dmb");
    assert_eq!(target.length, shipped.len() as u64);
    let custom = &target.custom;
    assert_eq!(custom["model"], serde_json::json!("surface-classifier"));
    assert_eq!(custom["model_version"], serde_json::json!(1));
    assert_eq!(custom["version"], serde_json::json!("1.0.0"));
    assert_eq!(custom["stations"], serde_json::json!(["st-1", "st-2"]));
    assert_eq!(custom["lines"], serde_json::json!(["line-a"]));
    let bytes = repo
        .read_target(&TargetName::new("surface-classifier-1.dmb").expect("name"))
        .await
        .expect("read target")
        .expect("target listed")
        .into_vec()
        .await
        .expect("target bytes");
    assert_eq!(bytes, shipped);

    // Key ids listed are the ones init reported, and tough recomputed them on load.
    let loaded = f.load().await.expect("load");
    for (role, ids) in &report.key_ids {
        let mut ids = ids.clone();
        ids.sort();
        assert_eq!(&loaded.role_key_ids[role], &ids, "{role}");
    }
}

#[tokio::test]
async fn a_model_version_that_does_not_increase_is_refused() {
    let f = Fixture::new();
    f.init();
    f.add(&shipped_bundle(), None).expect("v1");
    let before = f.state();

    let err = f
        .add(&shipped_bundle(), Some("again.dmb"))
        .expect_err("same model_version published twice");
    assert!(
        matches!(
            err,
            PublishError::NotNewer {
                model_version: 1,
                published: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("surface-classifier-1.dmb"),
        "{err}"
    );

    let v2 = bundle_with_model_version(&f.root, 2);
    let err = f
        .add(&v2, Some("surface-classifier-1.dmb"))
        .expect_err("name reused");
    assert!(matches!(err, PublishError::TargetExists { .. }), "{err}");
    let after = f.state();
    assert_eq!(
        after.timestamp.signed.version,
        before.timestamp.signed.version
    );
    assert_eq!(after.targets.signed.version, before.targets.signed.version);

    let added = f.add(&v2, None).expect("v2 publishes");
    assert_eq!(added.name, "surface-classifier-2.dmb");
    assert_eq!(added.versions.targets, 3);
    let err = f
        .add(&shipped_bundle(), Some("surface-classifier-1b.dmb"))
        .expect_err("older version after newer");
    assert!(
        matches!(err, PublishError::NotNewer { published: 2, .. }),
        "{err}"
    );

    let loaded = f.load().await.expect("load");
    let names: Vec<&str> = loaded.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["surface-classifier-1.dmb", "surface-classifier-2.dmb"]
    );
    let v2_target = loaded.target("surface-classifier-2.dmb").expect("v2");
    assert_eq!(v2_target.parsed_custom().expect("custom").model_version, 2);
    assert_eq!(v2_target.bytes, fs::read(&v2).expect("v2 bytes"));
}

#[tokio::test]
async fn resign_timestamp_bumps_only_the_timestamp() {
    let f = Fixture::new();
    f.init();
    f.add(&shipped_bundle(), None).expect("add");
    let before = f.state();
    let snapshot_file = fs::read(f.layout().snapshot_file(2)).expect("snapshot");

    let version = publish::resign_timestamp(
        &f.repo,
        &f.keys.join("timestamp.pk8"),
        jiff::SignedDuration::from_hours(24),
    )
    .expect("resign");
    assert_eq!(version, 3);
    let after = f.state();
    assert_eq!(after.timestamp.signed.version.get(), 3);
    assert_eq!(
        after.snapshot.signed.version,
        before.snapshot.signed.version
    );
    assert_eq!(after.targets.signed.version, before.targets.signed.version);
    assert_eq!(after.root.signed.version, before.root.signed.version);
    assert!(!f.layout().snapshot_file(3).exists());
    assert_eq!(
        fs::read(f.layout().snapshot_file(2)).expect("snapshot"),
        snapshot_file
    );
    let loaded = f.load().await.expect("load");
    assert_eq!(loaded.timestamp_version, 3);
    assert_eq!(loaded.snapshot_version, 2);

    let err = publish::resign_timestamp(
        &f.repo,
        &f.keys.join("targets.pk8"),
        jiff::SignedDuration::from_hours(24),
    )
    .expect_err("targets key signed the timestamp");
    assert!(
        matches!(
            err,
            PublishError::WrongKey {
                role: RoleType::Timestamp,
                ..
            }
        ),
        "{err}"
    );

    // An already expired timestamp is written, and tough refuses it.
    publish::resign_timestamp(
        &f.repo,
        &f.keys.join("timestamp.pk8"),
        jiff::SignedDuration::from_secs(-60),
    )
    .expect("expired resign");
    let err = f.load().await.expect_err("expired timestamp accepted");
    assert!(
        defect_shared::error_chain::chain(&err).contains("timestamp metadata is expired"),
        "{err}"
    );
}

#[tokio::test]
async fn rotating_a_root_key_keeps_old_roots_trusting_the_new_one() {
    let f = Fixture::new();
    let report = f.init();
    f.add(&shipped_bundle(), None).expect("add");

    let revoked_file = f.keys.join("root-1.pk8");
    let revoked = SigningKey::load(&revoked_file).expect("root-1");
    let rotation = publish::rotate_key(
        &f.repo,
        &f.keys,
        RoleType::Root,
        Some(revoked_file.to_str().expect("utf-8 path")),
        &Expiries::default(),
    )
    .expect("rotate root");
    assert_eq!(rotation.revoked_key_id, revoked.key_id());
    assert_eq!(rotation.new_key_file, f.keys.join("root-4.pk8"));
    assert!(revoked_file.exists(), "old key files are never deleted");
    assert_eq!(rotation.versions.root, 2);
    assert_eq!(
        rotation.versions.timestamp, 2,
        "root rotation re-signs nothing else"
    );
    assert_eq!(
        fs::read(f.layout().root_copy()).expect("root.json"),
        fs::read(f.layout().root_file(2)).expect("2.root.json")
    );
    let root2 = &f.state().root;
    assert!(
        !root2
            .signed
            .keys
            .keys()
            .any(|id| hex::encode(id) == revoked.key_id())
    );

    // A box that only trusts 1.root.json walks to 2.root.json.
    let loaded = f.load().await.expect("load from the old root");
    assert_eq!(loaded.root_version, 2);
    let root_ids = &loaded.role_key_ids["root"];
    assert!(root_ids.contains(&rotation.new_key_id));
    assert!(!root_ids.contains(&revoked.key_id().to_owned()));
    assert_eq!(loaded.targets.len(), 1);

    // The revoked key can be named by id too; the new root is signed by both thresholds.
    let second = publish::rotate_key(
        &f.repo,
        &f.keys,
        RoleType::Root,
        Some(&report.key_ids["root"][1]),
        &Expiries::default(),
    )
    .expect("second rotation");
    assert_eq!(second.versions.root, 3);
    assert_eq!(f.load().await.expect("walks 1 → 3").root_version, 3);
}

#[tokio::test]
async fn rotating_a_targets_key_re_signs_targets_snapshot_and_timestamp() {
    let f = Fixture::new();
    let report = f.init();
    f.add(&shipped_bundle(), None).expect("add");
    let before = f.state();

    let rotation = publish::rotate_key(
        &f.repo,
        &f.keys,
        RoleType::Targets,
        None,
        &Expiries::default(),
    )
    .expect("rotate targets");
    assert_eq!(rotation.new_key_file, f.keys.join("targets-2.pk8"));
    assert_eq!(rotation.revoked_key_id, report.key_ids["targets"][0]);
    let after = f.state();
    assert_eq!(after.root.signed.version.get(), 2);
    assert_eq!(
        after.targets.signed.version.get(),
        before.targets.signed.version.get() + 1
    );
    assert_eq!(
        after.snapshot.signed.version.get(),
        before.snapshot.signed.version.get() + 1
    );
    assert_eq!(
        after.timestamp.signed.version.get(),
        before.timestamp.signed.version.get() + 1
    );
    assert_eq!(after.targets.signed.targets, before.targets.signed.targets);
    let loaded = f.load().await.expect("load");
    assert_eq!(
        loaded.role_key_ids["targets"],
        std::slice::from_ref(&rotation.new_key_id)
    );

    // Later publications use the new key.
    let v2 = bundle_with_model_version(&f.root, 2);
    f.add(&v2, None).expect("publish with the new targets key");
    assert_eq!(f.load().await.expect("load").targets.len(), 2);

    // A timestamp rotation writes only root and timestamp.
    let ts = publish::rotate_key(
        &f.repo,
        &f.keys,
        RoleType::Timestamp,
        None,
        &Expiries::default(),
    )
    .expect("rotate timestamp");
    let state = f.state();
    assert_eq!(ts.versions.snapshot, state.snapshot.signed.version.get());
    assert_eq!(ts.versions.root, 3);
    f.load().await.expect("load after timestamp rotation");
    let err = publish::resign_timestamp(
        &f.repo,
        &f.keys.join("timestamp.pk8"),
        jiff::SignedDuration::from_hours(1),
    )
    .expect_err("revoked timestamp key still signs");
    assert!(matches!(err, PublishError::WrongKey { .. }), "{err}");
    publish::resign_timestamp(
        &f.repo,
        &ts.new_key_file,
        jiff::SignedDuration::from_hours(1),
    )
    .expect("new timestamp key signs");
}

#[tokio::test]
async fn a_rotation_without_enough_root_keys_changes_nothing() {
    let f = Fixture::new();
    f.init();
    fs::remove_file(f.keys.join("root-2.pk8")).expect("remove");
    fs::remove_file(f.keys.join("root-3.pk8")).expect("remove");
    let err = publish::rotate_key(
        &f.repo,
        &f.keys,
        RoleType::Snapshot,
        None,
        &Expiries::default(),
    )
    .expect_err("rotated with one root key of threshold 2");
    assert!(
        matches!(
            err,
            PublishError::NotEnoughKeys {
                role: RoleType::Root,
                threshold: 2,
                available: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(!f.keys.join("snapshot-2.pk8").exists());
    assert!(!f.layout().root_file(2).exists());
    f.load().await.expect("repository unchanged");
}

#[tokio::test]
async fn forged_metadata_signed_by_the_wrong_role_is_refused_by_tough() {
    let f = Fixture::new();
    f.init();
    f.add(&shipped_bundle(), None).expect("add");
    let state = f.state();

    // Targets N+1 with a raised model_version, signed with the snapshot key instead of the
    // targets key, then a correct snapshot and timestamp pointing at it.
    let mut targets = state.targets.signed.clone();
    targets.version = targets.version.checked_add(1).expect("version");
    for target in targets.targets.values_mut() {
        target
            .custom
            .insert("model_version".into(), serde_json::json!(99));
    }
    let snapshot_key = SigningKey::load(&f.keys.join("snapshot.pk8")).expect("key");
    let timestamp_key = SigningKey::load(&f.keys.join("timestamp.pk8")).expect("key");
    let layout = f.layout();
    let forged = publish::sign_metadata(targets, &[&snapshot_key]).expect("sign");
    let targets_info =
        publish::write_metadata(&layout.targets_file(3), &forged).expect("write targets");
    let mut snapshot = state.snapshot.signed.clone();
    snapshot.version = snapshot.version.checked_add(1).expect("version");
    snapshot.meta.insert(
        "targets.json".into(),
        targets_info
            .metafile(forged.signed.version)
            .expect("metafile"),
    );
    let snapshot_version = snapshot.version;
    let snapshot = publish::sign_metadata(snapshot, &[&snapshot_key]).expect("sign");
    let snapshot_info =
        publish::write_metadata(&layout.snapshot_file(3), &snapshot).expect("write snapshot");
    let mut timestamp = state.timestamp.signed.clone();
    timestamp.version = timestamp.version.checked_add(1).expect("version");
    timestamp.meta.insert(
        "snapshot.json".into(),
        snapshot_info.metafile(snapshot_version).expect("metafile"),
    );
    let timestamp = publish::sign_metadata(timestamp, &[&timestamp_key]).expect("sign");
    publish::write_metadata(&layout.timestamp_file(), &timestamp).expect("write timestamp");

    let err = f.load().await.expect_err("forged targets accepted");
    assert!(
        defect_shared::error_chain::chain(&err)
            .contains("Signature threshold of 1 not met for role targets"),
        "{err}"
    );
}
