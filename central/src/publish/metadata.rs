//! Repository metadata on disk: the layout, signing, atomic writes and reading the current state.
//!
//! This module owns where each metadata and target file lives, the canonical-JSON signing of a
//! role, writing a signed role atomically, and finding the current root, timestamp, snapshot and
//! targets of a repository folder. It also owns the `custom` fields every target carries.

use std::collections::HashMap;
use std::fs;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use olpc_cjson::CanonicalFormatter;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Hashes, Metafile, RoleType, Root, Signature, Signed, Snapshot, Targets};

use super::PublishError;
use super::keys::SigningKey;

/// TUF specification version written into every role (the one python-tuf 7 writes; tough
/// accepts it).
pub const SPEC_VERSION: &str = "1.0.31";

/// Where each file of a repository folder lives.
#[derive(Debug, Clone)]
pub struct RepoLayout {
    dir: PathBuf,
}

impl RepoLayout {
    /// The layout of the repository in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The repository folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<repo>/metadata`, served as the metadata base URL.
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// `<repo>/targets`, served as the targets base URL.
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }

    /// `<repo>/metadata/<version>.root.json`.
    pub fn root_file(&self, version: u64) -> PathBuf {
        self.metadata_dir().join(format!("{version}.root.json"))
    }

    /// `<repo>/metadata/root.json`, a copy of the newest root.
    pub fn root_copy(&self) -> PathBuf {
        self.metadata_dir().join("root.json")
    }

    /// `<repo>/metadata/timestamp.json`.
    pub fn timestamp_file(&self) -> PathBuf {
        self.metadata_dir().join("timestamp.json")
    }

    /// `<repo>/metadata/<version>.snapshot.json`.
    pub fn snapshot_file(&self, version: u64) -> PathBuf {
        self.metadata_dir().join(format!("{version}.snapshot.json"))
    }

    /// `<repo>/metadata/<version>.targets.json`.
    pub fn targets_file(&self, version: u64) -> PathBuf {
        self.metadata_dir().join(format!("{version}.targets.json"))
    }

    /// `<repo>/targets/<sha256hex>.<name>`.
    pub fn target_file(&self, sha256_hex: &str, name: &str) -> PathBuf {
        self.targets_dir().join(format!("{sha256_hex}.{name}"))
    }

    /// The highest `N` of the `N.root.json` files, if any.
    pub fn newest_root_version(&self) -> Result<Option<u64>, PublishError> {
        let dir = self.metadata_dir();
        let io = |source| PublishError::Io {
            path: dir.clone(),
            source,
        };
        let mut newest = None;
        for entry in fs::read_dir(&dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let version = name
                .to_str()
                .and_then(|n| n.strip_suffix(".root.json"))
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(v) = version {
                newest = newest.max(Some(v));
            }
        }
        Ok(newest)
    }
}

/// The current signed metadata of a repository folder.
#[derive(Debug, Clone)]
pub struct RepoState {
    /// The newest `N.root.json`.
    pub root: Signed<Root>,
    /// `timestamp.json`.
    pub timestamp: Signed<tough::schema::Timestamp>,
    /// The snapshot `timestamp.json` names.
    pub snapshot: Signed<Snapshot>,
    /// The targets the snapshot names.
    pub targets: Signed<Targets>,
}

impl RepoState {
    /// Reads the current metadata: the newest root, the timestamp, and the snapshot and targets
    /// versions they point to.
    pub fn load(layout: &RepoLayout) -> Result<Self, PublishError> {
        let root = load_newest_root(layout)?;
        let timestamp: Signed<tough::schema::Timestamp> =
            read_metadata(&layout.timestamp_file(), RoleType::Timestamp)?;
        let snapshot_version = timestamp
            .signed
            .meta
            .get("snapshot.json")
            .map(|m| m.version.get())
            .ok_or_else(|| PublishError::BadRepo {
                path: layout.timestamp_file(),
                reason: "timestamp does not list snapshot.json".into(),
            })?;
        let snapshot_path = layout.snapshot_file(snapshot_version);
        let snapshot: Signed<Snapshot> = read_metadata(&snapshot_path, RoleType::Snapshot)?;
        let targets_version = snapshot
            .signed
            .meta
            .get("targets.json")
            .map(|m| m.version.get())
            .ok_or_else(|| PublishError::BadRepo {
                path: snapshot_path,
                reason: "snapshot does not list targets.json".into(),
            })?;
        let targets: Signed<Targets> =
            read_metadata(&layout.targets_file(targets_version), RoleType::Targets)?;
        Ok(Self {
            root,
            timestamp,
            snapshot,
            targets,
        })
    }
}

/// Reads the newest `N.root.json` of a repository.
pub(super) fn load_newest_root(layout: &RepoLayout) -> Result<Signed<Root>, PublishError> {
    let version = layout
        .newest_root_version()?
        .ok_or_else(|| PublishError::BadRepo {
            path: layout.metadata_dir(),
            reason: "no N.root.json: not a repository (run `repo init` first)".into(),
        })?;
    let path = layout.root_file(version);
    let root: Signed<Root> = read_metadata(&path, RoleType::Root)?;
    if root.signed.version.get() != version {
        return Err(PublishError::BadRepo {
            path,
            reason: format!("holds root version {}", root.signed.version),
        });
    }
    Ok(root)
}

/// Reads and parses one metadata file.
pub(super) fn read_metadata<T: DeserializeOwned>(
    path: &Path,
    role: RoleType,
) -> Result<T, PublishError> {
    let bytes = fs::read(path).map_err(|source| PublishError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| PublishError::ParseMetadata {
        path: path.to_owned(),
        role,
        source,
    })
}

/// The `custom` fields of every target: which model it is and where it may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCustom {
    /// The bundle manifest's `name`.
    pub model: String,
    /// The bundle manifest's `model_version`; only ever increases for a model.
    pub model_version: u64,
    /// The bundle manifest's human-readable `version`.
    pub version: String,
    /// Stations allowed to install it; empty means every station.
    #[serde(default)]
    pub stations: Vec<String>,
    /// Lines allowed to install it; empty means every line.
    #[serde(default)]
    pub lines: Vec<String>,
    /// Its canary policy, overriding the boxes' `[canary]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<model_updater::canary::CanaryOverrides>,
}

impl TargetCustom {
    /// The fields as a target's `custom` map.
    pub fn to_custom(&self) -> Result<HashMap<String, serde_json::Value>, PublishError> {
        let value = serde_json::to_value(self).map_err(|source| PublishError::Serialize {
            what: "target custom fields".into(),
            source,
        })?;
        match value {
            serde_json::Value::Object(map) => Ok(map.into_iter().collect()),
            _ => Err(PublishError::InvalidOptions(
                "target custom fields did not serialise to an object".into(),
            )),
        }
    }

    /// Reads the fields from a target's `custom` map; `target` names it in errors.
    pub fn from_custom(
        target: &str,
        custom: &HashMap<String, serde_json::Value>,
    ) -> Result<Self, PublishError> {
        let map: serde_json::Map<String, serde_json::Value> =
            custom.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        serde_json::from_value(serde_json::Value::Object(map)).map_err(|source| {
            PublishError::BadCustom {
                target: target.to_owned(),
                source,
            }
        })
    }
}

/// The canonical JSON (OLPC form, as TUF signs) of `value`.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, PublishError> {
    let mut out = Vec::new();
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut out, CanonicalFormatter::new());
    value
        .serialize(&mut serializer)
        .map_err(|source| PublishError::Serialize {
            what: "canonical JSON".into(),
            source,
        })?;
    Ok(out)
}

/// Signs `signed` with each key (duplicates once): the signature covers the canonical JSON of
/// `signed`.
///
/// `signed` may be a tough role ([`Root`], [`Targets`], [`Snapshot`],
/// [`tough::schema::Timestamp`]) or any serialisable value, e.g. a `serde_json::Value` forged by
/// a test; nothing checks that the keys are the ones the root lists for the role.
pub fn sign_metadata<T: Serialize>(
    signed: T,
    keys: &[&SigningKey],
) -> Result<Signed<T>, PublishError> {
    let message = canonical_json(&signed)?;
    let mut signatures: Vec<Signature> = Vec::with_capacity(keys.len());
    for key in keys {
        let key_id = hex_bytes(key.key_id())?;
        if signatures.iter().any(|s| s.keyid == key_id) {
            continue;
        }
        signatures.push(Signature {
            keyid: key_id,
            sig: key.sign(&message).into(),
        });
    }
    Ok(Signed { signed, signatures })
}

fn hex_bytes(hex_text: &str) -> Result<Decoded<Hex>, PublishError> {
    hex::decode(hex_text)
        .map(Decoded::from)
        .map_err(|source| PublishError::Hex {
            what: format!("key id {hex_text:?}"),
            source,
        })
}

/// Length and sha256 of a written metadata file, as snapshot and timestamp list them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaFileInfo {
    /// Length of the file in bytes.
    pub length: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
}

impl MetaFileInfo {
    /// Of these exact bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            length: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The entry for a snapshot's or timestamp's `meta` map.
    pub fn metafile(&self, version: NonZeroU64) -> Result<Metafile, PublishError> {
        Ok(Metafile {
            length: Some(self.length),
            hashes: Some(Hashes {
                sha256: hex_bytes(&self.sha256)?,
                _extra: HashMap::new(),
            }),
            version,
            _extra: HashMap::new(),
        })
    }
}

/// Writes signed metadata to `path` atomically, pretty-printed with sorted keys, and returns the
/// length and hash of the bytes written.
pub fn write_metadata<T: Serialize>(
    path: &Path,
    signed: &Signed<T>,
) -> Result<MetaFileInfo, PublishError> {
    let bytes = render_metadata(path, signed)?;
    atomic_write(path, &bytes)?;
    Ok(MetaFileInfo::of(&bytes))
}

/// The bytes [`write_metadata`] writes: pretty JSON with sorted keys and a final newline;
/// `path` only names the file in errors.
pub(super) fn render_metadata<T: Serialize>(
    path: &Path,
    signed: &Signed<T>,
) -> Result<Vec<u8>, PublishError> {
    let serialize = |source| PublishError::Serialize {
        what: path.display().to_string(),
        source,
    };
    // Through a Value so that maps come out sorted and the files are stable to read and diff.
    let value = serde_json::to_value(signed).map_err(serialize)?;
    let mut bytes = serde_json::to_vec_pretty(&value).map_err(serialize)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Replaces `path` with `bytes` crash-safely ([`defect_shared::atomic::write`]).
pub(super) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    defect_shared::atomic::write(path, bytes).map_err(|source| PublishError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Fsyncs a folder so that new entries and renames in it survive a power cut.
pub(super) fn sync_dir(dir: &Path) -> Result<(), PublishError> {
    defect_shared::atomic::sync_dir(dir).map_err(|source| PublishError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Now plus `after`, in whole seconds (python-tuf reads only `YYYY-MM-DDTHH:MM:SSZ`).
pub fn expires_after(after: jiff::SignedDuration) -> Result<jiff::Timestamp, PublishError> {
    let overflow = || PublishError::Overflow {
        what: format!("expiry now + {after:?}"),
    };
    let seconds = jiff::Timestamp::now()
        .as_second()
        .checked_add(after.as_secs())
        .ok_or_else(overflow)?;
    jiff::Timestamp::from_second(seconds).map_err(|_| overflow())
}

/// `version + 1`.
pub(super) fn next_version(
    version: NonZeroU64,
    role: RoleType,
) -> Result<NonZeroU64, PublishError> {
    version
        .checked_add(1)
        .ok_or_else(|| PublishError::Overflow {
            what: format!("{role} version {version}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_fields_round_trip_flat() {
        let custom = TargetCustom {
            model: "surface-classifier".into(),
            model_version: 3,
            version: "1.2.0".into(),
            stations: vec!["st-1".into()],
            lines: vec![],
            canary: None,
        };
        let map = custom.to_custom().expect("to custom");
        assert_eq!(map["model_version"], serde_json::json!(3));
        assert_eq!(map["lines"], serde_json::json!([]));
        assert_eq!(TargetCustom::from_custom("t", &map).expect("back"), custom);
        let mut bad = map;
        bad.insert("model_version".into(), serde_json::json!("3"));
        let err = TargetCustom::from_custom("t", &bad).expect_err("accepted");
        assert!(matches!(err, PublishError::BadCustom { .. }), "{err}");
    }

    #[test]
    fn expiries_are_whole_seconds() {
        let at = expires_after(jiff::SignedDuration::from_hours(1)).expect("expiry");
        assert_eq!(at.subsec_nanosecond(), 0);
        assert!(at > jiff::Timestamp::now());
    }
}
