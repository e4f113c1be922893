//! The publishing operations: init, add a target, re-sign the timestamp, rotate a key.
//!
//! This module owns what each operation changes in a repository. Every operation first builds
//! all new files in memory (so a missing key or a refused bundle leaves the repository and the
//! keys folder untouched), then writes them in dependency order — root, targets, snapshot and
//! last the unversioned `timestamp.json` — so that a client reading at any instant sees either
//! the old or the new publication.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use defect_models::bundle::Bundle;
use jiff::SignedDuration;
use tough::TargetName;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    Hashes, RoleKeys, RoleType, Root, Signed, Snapshot, Target, Targets, Timestamp,
};

use super::keys::{KeyRing, SigningKey, UnsavedKey, create_keys_dir, key_file_name, next_key_path};
use super::metadata::{
    MetaFileInfo, RepoLayout, RepoState, SPEC_VERSION, TargetCustom, atomic_write, expires_after,
    load_newest_root, next_version, read_metadata, render_metadata, sign_metadata, sync_dir,
};
use super::{PublishError, ROLES};

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiries {
    /// Root metadata.
    pub root: SignedDuration,
    /// Targets metadata.
    pub targets: SignedDuration,
    /// Snapshot metadata.
    pub snapshot: SignedDuration,
    /// Timestamp metadata.
    pub timestamp: SignedDuration,
}

impl Default for Expiries {
    /// Root 365 days, targets 90 days, snapshot 90 days, timestamp 1 day.
    fn default() -> Self {
        Self {
            root: SignedDuration::from_hours(365 * 24),
            targets: SignedDuration::from_hours(90 * 24),
            snapshot: SignedDuration::from_hours(90 * 24),
            timestamp: SignedDuration::from_hours(24),
        }
    }
}

/// Options of [`init`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// How many root keys to generate.
    pub root_keys: u32,
    /// How many root signatures a root version needs.
    pub root_threshold: u64,
    /// Expiry of each role's first version.
    pub expiries: Expiries,
}

impl Default for InitOptions {
    /// Three root keys, threshold two, default expiries.
    fn default() -> Self {
        Self {
            root_keys: 3,
            root_threshold: 2,
            expiries: Expiries::default(),
        }
    }
}

/// The versions of the four roles after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    /// Newest root version.
    pub root: u64,
    /// Current targets version.
    pub targets: u64,
    /// Current snapshot version.
    pub snapshot: u64,
    /// Current timestamp version.
    pub timestamp: u64,
}

/// What [`init`] created.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// Key ids of each role (`"root"`, `"targets"`, `"snapshot"`, `"timestamp"`).
    pub key_ids: BTreeMap<String, Vec<String>>,
    /// The key files written.
    pub key_files: Vec<PathBuf>,
    /// The first versions (all 1).
    pub versions: Versions,
}

/// Options of [`add_target`].
#[derive(Debug, Clone, Default)]
pub struct TargetOptions {
    /// Target name; `<model name>-<model_version>.dmb` when absent.
    pub name: Option<String>,
    /// Stations allowed to install it; empty means every station.
    pub stations: Vec<String>,
    /// Lines allowed to install it; empty means every line.
    pub lines: Vec<String>,
    /// Its canary policy, overriding the boxes' `[canary]`.
    pub canary: Option<model_updater::canary::CanaryOverrides>,
    /// Expiries of the targets, snapshot and timestamp versions written.
    pub expiries: Expiries,
}

/// What [`add_target`] published.
#[derive(Debug, Clone)]
pub struct AddedTarget {
    /// The target name.
    pub name: String,
    /// SHA-256 of the bundle, lowercase hex.
    pub sha256: String,
    /// Length of the bundle in bytes.
    pub length: u64,
    /// The target's custom fields.
    pub custom: TargetCustom,
    /// Where the bundle was stored.
    pub file: PathBuf,
    /// Versions after publishing.
    pub versions: Versions,
}

/// What [`rotate_key`] changed.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The role whose key was replaced.
    pub role: RoleType,
    /// Key id of the new key.
    pub new_key_id: String,
    /// File of the new key.
    pub new_key_file: PathBuf,
    /// Key id of the key removed from the role.
    pub revoked_key_id: String,
    /// Versions after the rotation.
    pub versions: Versions,
}

/// Files to write, in order, once everything is built and signed.
type Plan = Vec<(PathBuf, Vec<u8>)>;

fn commit(plan: Plan) -> Result<(), PublishError> {
    for (path, bytes) in plan {
        atomic_write(&path, &bytes)?;
    }
    Ok(())
}

fn plan_signed<T: serde::Serialize>(
    plan: &mut Plan,
    path: PathBuf,
    signed: &Signed<T>,
) -> Result<MetaFileInfo, PublishError> {
    let bytes = render_metadata(&path, signed)?;
    let info = MetaFileInfo::of(&bytes);
    plan.push((path, bytes));
    Ok(info)
}

fn create_dir(path: &Path) -> Result<(), PublishError> {
    fs::create_dir_all(path).map_err(|source| PublishError::Io {
        path: path.to_owned(),
        source,
    })
}

fn dir_has_entries(path: &Path) -> Result<bool, PublishError> {
    match fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(PublishError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn key_id_bytes(key: &SigningKey) -> Result<Decoded<Hex>, PublishError> {
    hex::decode(key.key_id())
        .map(Decoded::from)
        .map_err(|source| PublishError::Hex {
            what: format!("key id of {}", key.path().display()),
            source,
        })
}

fn non_zero(value: u64, what: &str) -> Result<NonZeroU64, PublishError> {
    NonZeroU64::new(value)
        .ok_or_else(|| PublishError::InvalidOptions(format!("{what} must be > 0")))
}

/// Creates a repository in `repo` and its keys in `keys`: root (threshold of root keys),
/// targets, snapshot and timestamp keys; `1.root.json` signed by every root key; empty targets
/// version 1, snapshot 1 and timestamp 1.
///
/// Refuses a `repo` whose `metadata/` or `targets/` folder is not empty and a `keys` folder
/// that already holds one of the key files.
pub fn init(repo: &Path, keys: &Path, options: &InitOptions) -> Result<InitReport, PublishError> {
    if options.root_keys == 0 || options.root_keys > 255 {
        return Err(PublishError::InvalidOptions(format!(
            "--root-keys {} must be between 1 and 255",
            options.root_keys
        )));
    }
    if options.root_threshold == 0 || options.root_threshold > u64::from(options.root_keys) {
        return Err(PublishError::InvalidOptions(format!(
            "--root-threshold {} must be between 1 and --root-keys {}",
            options.root_threshold, options.root_keys
        )));
    }
    let layout = RepoLayout::new(repo);
    for dir in [layout.metadata_dir(), layout.targets_dir()] {
        if dir_has_entries(&dir)? {
            return Err(PublishError::RepoExists { path: dir });
        }
    }
    let mut files: Vec<(RoleType, PathBuf)> = (1..=options.root_keys)
        .map(|n| (RoleType::Root, keys.join(key_file_name(RoleType::Root, n))))
        .collect();
    for role in [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp] {
        files.push((role, keys.join(key_file_name(role, 1))));
    }
    if let Some((_, existing)) = files.iter().find(|(_, path)| path.exists()) {
        return Err(PublishError::KeyExists {
            path: existing.clone(),
        });
    }

    let mut generated: Vec<(RoleType, UnsavedKey)> = Vec::with_capacity(files.len());
    for (role, path) in &files {
        generated.push((*role, UnsavedKey::generate(*role, path)?));
    }
    let expiries = &options.expiries;
    let one = non_zero(1, "version")?;
    let mut root = Root {
        spec_version: SPEC_VERSION.to_owned(),
        consistent_snapshot: true,
        version: one,
        expires: expires_after(expiries.root)?,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    let mut key_ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (role, unsaved) in &generated {
        let key = unsaved.key();
        let id = key_id_bytes(key)?;
        root.keys.insert(id.clone(), key.tuf_key().clone());
        let threshold = if *role == RoleType::Root {
            non_zero(options.root_threshold, "--root-threshold")?
        } else {
            one
        };
        root.roles
            .entry(*role)
            .or_insert_with(|| RoleKeys {
                keyids: Vec::new(),
                threshold,
                _extra: HashMap::new(),
            })
            .keyids
            .push(id);
        key_ids
            .entry(role.to_string())
            .or_default()
            .push(key.key_id().to_owned());
    }
    let signers_of = |wanted: RoleType| -> Vec<&SigningKey> {
        generated
            .iter()
            .filter(|(role, _)| *role == wanted)
            .map(|(_, unsaved)| unsaved.key())
            .collect()
    };

    let mut plan = Plan::new();
    let signed_root = sign_metadata(root, &signers_of(RoleType::Root))?;
    plan_signed(&mut plan, layout.root_file(1), &signed_root)?;
    plan_signed(&mut plan, layout.root_copy(), &signed_root)?;
    let targets = Targets {
        spec_version: SPEC_VERSION.to_owned(),
        version: one,
        expires: expires_after(expiries.targets)?,
        targets: HashMap::new(),
        delegations: None,
        _extra: HashMap::new(),
    };
    let signed_targets = sign_metadata(targets, &signers_of(RoleType::Targets))?;
    let targets_info = plan_signed(&mut plan, layout.targets_file(1), &signed_targets)?;
    let mut snapshot = Snapshot::new(
        SPEC_VERSION.to_owned(),
        one,
        expires_after(expiries.snapshot)?,
    );
    snapshot
        .meta
        .insert("targets.json".into(), targets_info.metafile(one)?);
    let signed_snapshot = sign_metadata(snapshot, &signers_of(RoleType::Snapshot))?;
    let snapshot_info = plan_signed(&mut plan, layout.snapshot_file(1), &signed_snapshot)?;
    let mut timestamp = Timestamp::new(
        SPEC_VERSION.to_owned(),
        one,
        expires_after(expiries.timestamp)?,
    );
    timestamp
        .meta
        .insert("snapshot.json".into(), snapshot_info.metafile(one)?);
    let signed_timestamp = sign_metadata(timestamp, &signers_of(RoleType::Timestamp))?;
    plan_signed(&mut plan, layout.timestamp_file(), &signed_timestamp)?;

    create_keys_dir(keys)?;
    let mut key_files = Vec::with_capacity(generated.len());
    for (_, unsaved) in generated {
        key_files.push(unsaved.save()?.path().to_owned());
    }
    create_dir(&layout.metadata_dir())?;
    create_dir(&layout.targets_dir())?;
    commit(plan)?;
    sync_dir(repo)?;
    Ok(InitReport {
        key_ids,
        key_files,
        versions: Versions {
            root: 1,
            targets: 1,
            snapshot: 1,
            timestamp: 1,
        },
    })
}

/// Checks that a target name fits the flat layout: ASCII letters, digits, `.`, `_` and `-`,
/// not starting with a dot, at most 200 characters.
fn check_target_name(name: &str) -> Result<TargetName, PublishError> {
    let bad = |reason: &str| PublishError::BadTargetName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() || name.len() > 200 {
        return Err(bad("must be 1 to 200 characters"));
    }
    if name.starts_with('.') {
        return Err(bad("must not start with a dot"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(bad(
            "only ASCII letters, digits, '.', '_' and '-' (target names are flat, no '/')",
        ));
    }
    TargetName::new(name).map_err(|source| PublishError::TargetNameRefused {
        name: name.to_owned(),
        source: Box::new(source),
    })
}

fn clean_list(values: &[String], what: &str) -> Result<Vec<String>, PublishError> {
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for value in values {
        let value = value.trim();
        if value.is_empty() {
            return Err(PublishError::InvalidOptions(format!(
                "{what}: empty name in the list"
            )));
        }
        if !out.iter().any(|v| v == value) {
            out.push(value.to_owned());
        }
    }
    Ok(out)
}

/// Publishes a bundle as a new target: stores it as `targets/<sha256>.<name>` and writes
/// targets, snapshot and timestamp version N+1, each signed with its role's keys found in
/// `keys`.
///
/// Refuses a bundle whose `model_version` is not greater than every published target of the
/// same model, and a name that is already published.
pub fn add_target(
    repo: &Path,
    keys: &Path,
    bundle_path: &Path,
    options: &TargetOptions,
) -> Result<AddedTarget, PublishError> {
    let bundle = Bundle::open(bundle_path).map_err(|source| PublishError::Bundle {
        path: bundle_path.to_owned(),
        source,
    })?;
    let manifest = bundle.manifest();
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}.dmb", manifest.name, manifest.model_version));
    let target_name = check_target_name(&name)?;
    let custom = TargetCustom {
        model: manifest.name.clone(),
        model_version: manifest.model_version,
        version: manifest.version.clone(),
        stations: clean_list(&options.stations, "--stations")?,
        lines: clean_list(&options.lines, "--lines")?,
        canary: options.canary.clone(),
    };

    let layout = RepoLayout::new(repo);
    let state = RepoState::load(&layout)?;
    let targets_version = state.targets.signed.version.get();
    // The highest published model_version of the same model, and the target holding it.
    let mut newest: Option<(u64, String)> = None;
    for (existing, target) in &state.targets.signed.targets {
        if existing.raw() == name {
            return Err(PublishError::TargetExists {
                name,
                targets_version,
            });
        }
        let same_model = target
            .custom
            .get("model")
            .and_then(|m| m.as_str())
            .is_some_and(|m| m == custom.model);
        if !same_model {
            continue;
        }
        let published = TargetCustom::from_custom(existing.raw(), &target.custom)?;
        if newest
            .as_ref()
            .is_none_or(|(version, _)| published.model_version > *version)
        {
            newest = Some((published.model_version, existing.raw().to_owned()));
        }
    }
    if let Some((published, target)) = newest
        && custom.model_version <= published
    {
        return Err(PublishError::NotNewer {
            model: custom.model,
            model_version: custom.model_version,
            published,
            target,
        });
    }

    let ring = KeyRing::load(keys)?;
    let sha256 = bundle.digest().to_owned();
    let length = bundle.bytes().len() as u64;
    let target = Target {
        length,
        hashes: Hashes {
            sha256: hex::decode(&sha256).map(Decoded::from).map_err(|source| {
                PublishError::Hex {
                    what: format!("bundle digest of {}", bundle_path.display()),
                    source,
                }
            })?,
            _extra: HashMap::new(),
        },
        custom: custom.to_custom()?,
        _extra: HashMap::new(),
    };
    let mut targets = state.targets.signed.clone();
    targets.targets.insert(target_name, target);

    let mut plan = Plan::new();
    let chain = Chain {
        layout: &layout,
        state: &state,
        root: &state.root.signed,
        ring: &ring,
        extra: &[],
        expiries: &options.expiries,
    };
    let versions = chain.plan(&mut plan, Start::NewTargets(Box::new(targets)))?;

    let file = layout.target_file(&sha256, &name);
    store_target(&file, bundle.bytes(), &sha256)?;
    commit(plan)?;
    Ok(AddedTarget {
        name,
        sha256,
        length,
        custom,
        file,
        versions,
    })
}

/// Writes an immutable target file, or checks the one already there.
fn store_target(file: &Path, bytes: &[u8], sha256: &str) -> Result<(), PublishError> {
    match fs::read(file) {
        Ok(existing) => {
            if MetaFileInfo::of(&existing).sha256 == sha256 {
                Ok(())
            } else {
                Err(PublishError::BadRepo {
                    path: file.to_owned(),
                    reason: "target file exists with other content".into(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => atomic_write(file, bytes),
        Err(source) => Err(PublishError::Io {
            path: file.to_owned(),
            source,
        }),
    }
}

/// Where a re-signed chain starts.
enum Start {
    /// New targets content (its version and expiry are set here): targets, snapshot, timestamp.
    NewTargets(Box<Targets>),
    /// The current content of this role as a new version, and every role below it:
    /// [`RoleType::Targets`], [`RoleType::Snapshot`] or [`RoleType::Timestamp`].
    Resign(RoleType),
}

/// What re-signing the roles below a changed one needs.
struct Chain<'a> {
    layout: &'a RepoLayout,
    /// The current metadata, on top of which new versions are made.
    state: &'a RepoState,
    /// The root that will be current once the plan is written (it lists the signing keys).
    root: &'a Root,
    ring: &'a KeyRing,
    /// Keys not in the ring yet (a key being rotated in); preferred when the root lists them.
    extra: &'a [&'a SigningKey],
    expiries: &'a Expiries,
}

impl Chain<'_> {
    /// Builds the new targets (if any), snapshot and timestamp versions into `plan`, after
    /// finding every key needed; returns the versions once the plan is written.
    fn plan(&self, plan: &mut Plan, start: Start) -> Result<Versions, PublishError> {
        let state = self.state;
        let (from, new_targets) = match start {
            Start::NewTargets(targets) => (RoleType::Targets, Some(*targets)),
            Start::Resign(role) => (role, None),
        };
        let resign_targets = from == RoleType::Targets;
        let resign_snapshot = matches!(from, RoleType::Targets | RoleType::Snapshot);
        let prefer: Vec<&str> = self.extra.iter().map(|k| k.key_id()).collect();
        let signers = |role: RoleType| {
            self.ring
                .signers_for(self.root, role, self.extra, &prefer, &[])
        };
        // Every key needed is found before anything is signed.
        let targets_signers = if resign_targets {
            signers(RoleType::Targets)?
        } else {
            Vec::new()
        };
        let snapshot_signers = if resign_snapshot {
            signers(RoleType::Snapshot)?
        } else {
            Vec::new()
        };
        let timestamp_signers = signers(RoleType::Timestamp)?;

        let mut versions = Versions {
            root: self.root.version.get(),
            targets: state.targets.signed.version.get(),
            snapshot: state.snapshot.signed.version.get(),
            timestamp: state.timestamp.signed.version.get(),
        };
        let mut targets_info = None;
        if resign_targets {
            let mut targets = new_targets.unwrap_or_else(|| state.targets.signed.clone());
            targets.version = next_version(state.targets.signed.version, RoleType::Targets)?;
            targets.expires = expires_after(self.expiries.targets)?;
            let version = targets.version;
            let signed = sign_metadata(targets, &targets_signers)?;
            let info = plan_signed(plan, self.layout.targets_file(version.get()), &signed)?;
            versions.targets = version.get();
            targets_info = Some((version, info));
        }
        let (snapshot_version, snapshot_info) = if resign_snapshot {
            let mut snapshot = state.snapshot.signed.clone();
            snapshot.version = next_version(snapshot.version, RoleType::Snapshot)?;
            snapshot.expires = expires_after(self.expiries.snapshot)?;
            if let Some((version, info)) = targets_info {
                snapshot
                    .meta
                    .insert("targets.json".into(), info.metafile(version)?);
            }
            let version = snapshot.version;
            let signed = sign_metadata(snapshot, &snapshot_signers)?;
            let info = plan_signed(plan, self.layout.snapshot_file(version.get()), &signed)?;
            versions.snapshot = version.get();
            (version, info)
        } else {
            current_snapshot_meta(self.layout, &state.timestamp.signed)?
        };
        let mut timestamp = state.timestamp.signed.clone();
        timestamp.version = next_version(timestamp.version, RoleType::Timestamp)?;
        timestamp.expires = expires_after(self.expiries.timestamp)?;
        timestamp.meta = HashMap::from([(
            "snapshot.json".to_owned(),
            snapshot_info.metafile(snapshot_version)?,
        )]);
        versions.timestamp = timestamp.version.get();
        let signed = sign_metadata(timestamp, &timestamp_signers)?;
        plan_signed(plan, self.layout.timestamp_file(), &signed)?;
        Ok(versions)
    }
}

/// The snapshot version a timestamp names, with the length and hash of that file as it is on
/// disk.
fn current_snapshot_meta(
    layout: &RepoLayout,
    timestamp: &Timestamp,
) -> Result<(NonZeroU64, MetaFileInfo), PublishError> {
    let version = timestamp
        .meta
        .get("snapshot.json")
        .map(|m| m.version)
        .ok_or_else(|| PublishError::BadRepo {
            path: layout.timestamp_file(),
            reason: "timestamp does not list snapshot.json".into(),
        })?;
    let path = layout.snapshot_file(version.get());
    let bytes = fs::read(&path).map_err(|source| PublishError::Io { path, source })?;
    Ok((version, MetaFileInfo::of(&bytes)))
}

/// Writes a new timestamp version pointing at the snapshot the current timestamp names,
/// signed with the single key in `key_file` (meant for a server timer; no other key needed).
///
/// Returns the new timestamp version. Refuses a key the newest root does not list for the
/// timestamp role.
pub fn resign_timestamp(
    repo: &Path,
    key_file: &Path,
    expires_in: SignedDuration,
) -> Result<u64, PublishError> {
    let key = SigningKey::load(key_file)?;
    let layout = RepoLayout::new(repo);
    let root = load_newest_root(&layout)?;
    let role_keys =
        root.signed
            .roles
            .get(&RoleType::Timestamp)
            .ok_or_else(|| PublishError::BadRepo {
                path: layout.root_file(root.signed.version.get()),
                reason: "root has no timestamp role".into(),
            })?;
    if !role_keys
        .keyids
        .iter()
        .any(|id| hex::encode(id) == key.key_id())
    {
        return Err(PublishError::WrongKey {
            path: key_file.to_owned(),
            key_id: key.key_id().to_owned(),
            role: RoleType::Timestamp,
            root_version: root.signed.version.get(),
        });
    }
    if role_keys.threshold.get() > 1 {
        return Err(PublishError::NotEnoughKeys {
            role: RoleType::Timestamp,
            threshold: role_keys.threshold.get(),
            available: 1,
            listed: role_keys
                .keyids
                .iter()
                .map(hex::encode)
                .collect::<Vec<_>>()
                .join(", "),
            keys: key_file.to_owned(),
        });
    }
    let current: Signed<Timestamp> = read_metadata(&layout.timestamp_file(), RoleType::Timestamp)?;
    let (snapshot_version, snapshot_info) = current_snapshot_meta(&layout, &current.signed)?;
    let mut timestamp = current.signed;
    timestamp.version = next_version(timestamp.version, RoleType::Timestamp)?;
    timestamp.expires = expires_after(expires_in)?;
    timestamp.meta = HashMap::from([(
        "snapshot.json".to_owned(),
        snapshot_info.metafile(snapshot_version)?,
    )]);
    let version = timestamp.version.get();
    let signed = sign_metadata(timestamp, &[&key])?;
    let mut plan = Plan::new();
    plan_signed(&mut plan, layout.timestamp_file(), &signed)?;
    commit(plan)?;
    Ok(version)
}

/// Finds the key id to revoke: a key id the role lists, or a key file whose key the role lists;
/// with `None`, the role's only key.
fn resolve_revoke(
    role: RoleType,
    listed: &[String],
    revoke: Option<&str>,
) -> Result<String, PublishError> {
    let refuse = |reason: String| PublishError::Revoke { role, reason };
    match revoke {
        None => match listed {
            [only] => Ok(only.clone()),
            _ => Err(refuse(format!(
                "the role has {} keys; name the one to replace with --revoke KEYID_OR_FILE",
                listed.len()
            ))),
        },
        Some(text) => {
            let lower = text.to_ascii_lowercase();
            if listed.contains(&lower) {
                return Ok(lower);
            }
            let path = Path::new(text);
            if path.is_file() {
                let key = SigningKey::load(path)?;
                if listed.iter().any(|id| id == key.key_id()) {
                    return Ok(key.key_id().to_owned());
                }
                return Err(refuse(format!(
                    "key {} in {} is not one of the role's keys ({})",
                    key.key_id(),
                    path.display(),
                    listed.join(", ")
                )));
            }
            Err(refuse(format!(
                "{text:?} is neither one of the role's key ids ({}) nor a key file",
                listed.join(", ")
            )))
        }
    }
}

/// Replaces one key of `role` with a newly generated one (written to the next free key file
/// name in `keys`) in root version N+1.
///
/// A new root is signed by a threshold of the old root's root keys (the revoked key only if
/// needed) and a threshold of the new root's root keys. For the other roles, the role and every
/// role below it are re-signed with the new key: targets → targets, snapshot, timestamp;
/// snapshot → snapshot, timestamp; timestamp → timestamp.
pub fn rotate_key(
    repo: &Path,
    keys: &Path,
    role: RoleType,
    revoke: Option<&str>,
    expiries: &Expiries,
) -> Result<Rotation, PublishError> {
    if !ROLES.contains(&role) {
        return Err(PublishError::InvalidOptions(format!(
            "cannot rotate keys of role {role}"
        )));
    }
    let layout = RepoLayout::new(repo);
    let state = RepoState::load(&layout)?;
    let old_root = &state.root.signed;
    let listed: Vec<String> = old_root
        .roles
        .get(&role)
        .map(|r| r.keyids.iter().map(hex::encode).collect())
        .unwrap_or_default();
    let revoked = resolve_revoke(role, &listed, revoke)?;
    let revoked_bytes = hex::decode(&revoked)
        .map(Decoded::<Hex>::from)
        .map_err(|source| PublishError::Hex {
            what: format!("{role} key id {revoked}"),
            source,
        })?;
    let ring = KeyRing::load(keys)?;
    let unsaved = UnsavedKey::generate(role, &next_key_path(keys, role))?;
    let new_key = unsaved.key();
    let new_id = key_id_bytes(new_key)?;

    let mut root = old_root.clone();
    root.version = next_version(old_root.version, RoleType::Root)?;
    root.expires = expires_after(expiries.root)?;
    root.keys.insert(new_id.clone(), new_key.tuf_key().clone());
    if let Some(role_keys) = root.roles.get_mut(&role) {
        for id in &mut role_keys.keyids {
            if *id == revoked_bytes {
                *id = new_id.clone();
            }
        }
    }
    let still_used = root
        .roles
        .values()
        .any(|r| r.keyids.contains(&revoked_bytes));
    if !still_used {
        root.keys.remove(&revoked_bytes);
    }

    let old_signers = ring.signers_for(old_root, RoleType::Root, &[], &[], &[revoked.as_str()])?;
    let new_signers =
        ring.signers_for(&root, RoleType::Root, &[new_key], &[new_key.key_id()], &[])?;
    let mut signers = old_signers;
    for key in new_signers {
        if !signers.iter().any(|k| k.key_id() == key.key_id()) {
            signers.push(key);
        }
    }
    let root_version = root.version.get();
    let signed_root = sign_metadata(root, &signers)?;

    let mut plan = Plan::new();
    plan_signed(&mut plan, layout.root_file(root_version), &signed_root)?;
    plan_signed(&mut plan, layout.root_copy(), &signed_root)?;
    let versions = if role == RoleType::Root {
        Versions {
            root: root_version,
            targets: state.targets.signed.version.get(),
            snapshot: state.snapshot.signed.version.get(),
            timestamp: state.timestamp.signed.version.get(),
        }
    } else {
        let chain = Chain {
            layout: &layout,
            state: &state,
            root: &signed_root.signed,
            ring: &ring,
            extra: &[new_key],
            expiries,
        };
        chain.plan(&mut plan, Start::Resign(role))?
    };

    let new_key_id = new_key.key_id().to_owned();
    let saved = unsaved.save()?;
    commit(plan)?;
    Ok(Rotation {
        role,
        new_key_id,
        new_key_file: saved.path().to_owned(),
        revoked_key_id: revoked,
        versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_are_flat() {
        assert!(check_target_name("surface-classifier-2.dmb").is_ok());
        for bad in ["", "a/b.dmb", "../x", ".hidden", "a b", "é.dmb"] {
            assert!(check_target_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn revoke_needs_a_name_when_a_role_has_several_keys() {
        let listed = vec!["aa".repeat(32), "bb".repeat(32)];
        assert!(resolve_revoke(RoleType::Root, &listed, None).is_err());
        assert_eq!(
            resolve_revoke(RoleType::Root, &listed, Some(&"BB".repeat(32))).expect("by id"),
            "bb".repeat(32)
        );
        assert_eq!(
            resolve_revoke(RoleType::Targets, &listed[..1], None).expect("only key"),
            "aa".repeat(32)
        );
        assert!(resolve_revoke(RoleType::Root, &listed, Some("cc")).is_err());
    }

    #[test]
    fn init_refuses_an_existing_repository_and_existing_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        init(&repo, &keys, &InitOptions::default()).expect("init");
        let err = init(&repo, &dir.path().join("keys2"), &InitOptions::default())
            .expect_err("overwrote repo");
        assert!(matches!(err, PublishError::RepoExists { .. }), "{err}");
        let err = init(&dir.path().join("repo2"), &keys, &InitOptions::default())
            .expect_err("overwrote keys");
        assert!(matches!(err, PublishError::KeyExists { .. }), "{err}");
        assert!(!dir.path().join("repo2").exists());
    }
}
